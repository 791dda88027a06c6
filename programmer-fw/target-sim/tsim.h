/*
 * tsim — a simulated target MCU, as the programmer's target link sees it.
 *
 * Each simulated chip lives in DIR/targets/<UID hex>/ (UID as 32 lower-case
 * hex digits):
 *   state        text "key=value" lines, the chip's non-volatile state (below)
 *   pubkey.pem   public half of the device key, once generated (readable back)
 *   image.bin    the chip's firmware flash (readable back)
 *   cert.pem     device certificate written by the programmer (readable back)
 *   secret/      chip-internal storage no link command reads (0700): the device
 *                private key, secret/key.pem (SEC1 PEM, 0600)
 * The device key is generated "on chip" (tsim_keygen_csr) and never leaves
 * secret/; the programmer only ever sees the CSR, the public key and
 * signatures. The private key's bytes are written nowhere else.
 *
 * The `state` file (what a link's status read and an auditor see):
 *   state=blank|otp_written|keyed|programmed|booted|boot_failed|locked
 *   uid=<32 hex>
 *   otp_rotpk_hash=<64 hex, or empty while the OTP is blank>
 *   otp_security_counter=<decimal, OTP anti-rollback floor>
 *   pubkey=<130 hex: 04||X||Y of the device key, or empty>
 *   boot_key=<130 hex: the boot key slot, or empty>
 *   programmed=0|1   something was written to flash / boot key / cert slot
 *   boot=none|ok|failed   result of the last secure boot since the last write
 *   locked=0|1
 *   updated_ms=<Unix ms of the last change>
 * `state=` is derived from the other lines (tsim_open refuses a file where it
 * disagrees). Unknown keys are ignored, so lines may be added later. The
 * chip does not know its certificate serial: read it from cert.pem.
 *
 * Persistence: every state change is committed by rewriting `state`
 * atomically and durably. Like an EEPROM emulation's two pages, the new text
 * goes to the hidden file .state.next (the state before the last commit),
 * is fdatasync'ed, and rename(RENAME_EXCHANGE) swaps the two names in one
 * step before the folder is fsync'ed: `state` is always whole, and a commit
 * creates no new inode (a plain rename when the filesystem cannot exchange).
 * Files a change makes valid are written before the state that refers to them
 * (key.pem before keyed; their bytes synced, their names with the folder's
 * sync); a change that invalidates the last boot is committed before the data
 * is written. A new chip's folder becomes durable with its first commit (the
 * OTP write): a power cut before that may lose the blank chip or leave a
 * folder tsim_open() refuses, never a chip that claims more than blank. So a chip reopened with
 * tsim_open() after a crash of the programmer is always in a state it could have been in: writes in
 * flight are lost or half done (like a real flash), never accepted as booted. Flash data goes to
 * image.bin with plain positioned writes (a programmed flash page), fdatasync'ed at reset.
 *
 * Life of a chip: BLANK -> OTP written (ROTPK hash, once) -> KEYED (key pair +
 * CSR) -> PROGRAMMED (firmware + boot key + certificate) -> reset: secure
 * boot verifies the MCUboot image (boot key hash == OTP hash, image KEYHASH
 * and signature valid for that key, security counter >= the OTP floor) ->
 * BOOTED -> attest (sign a nonce) -> LOCKED (no more writes, debug closed).
 * Any programming write (flash, boot key, certificate) after a boot puts the
 * chip back to PROGRAMMED: only a reset makes it BOOTED again, so what was
 * verified is what gets locked. Secure boot needs the image and the boot key;
 * whether a certificate was written is the programmer's business.
 *
 * Everything the programmer sends is untrusted by the chip: sizes are bounded
 * (image <= TSIM_IMAGE_MAX, certificate <= TSIM_CERT_MAX, CN <= 63 bytes),
 * offsets are checked for overflow, a refused command changes nothing.
 *
 * Thread-safety: one struct tsim is used by one socket worker at a time
 * (different chips may be used concurrently); the feeder is thread-safe. All
 * functions return NU_OK or NU_ERR_* (nu_err.h). With TSIM_FAULT_LINK or
 * TSIM_FAULT_FLAKY every link command may answer NU_ERR_TARGET instead.
 */
#ifndef TSIM_H
#define TSIM_H

#include <stddef.h>
#include <stdint.h>

#define TSIM_UID_LEN 16
#define TSIM_IMAGE_MAX (4u * 1024u * 1024u)
#define TSIM_CERT_MAX 8192u /* certificate slot, DER bytes */
#define TSIM_CN_MAX 63u     /* CSR subject CN, bytes without NUL */
/* One link command in this many fails under TSIM_FAULT_FLAKY (1/4). */
#define TSIM_FLAKY_ONE_IN 4u

enum tsim_state {
    TSIM_BLANK = 0,
    TSIM_OTP_WRITTEN = 1,
    TSIM_KEYED = 2,
    TSIM_PROGRAMMED = 3,
    TSIM_BOOTED = 4,
    TSIM_BOOT_FAILED = 5,
    TSIM_LOCKED = 6,
};

/* Faults a test can inject into one chip (bit flags). */
enum tsim_fault {
    TSIM_FAULT_NONE = 0,
    TSIM_FAULT_KEYGEN = 1u << 0,        /* keygen/CSR fails (NU_ERR_TARGET) */
    TSIM_FAULT_FLASH_CORRUPT = 1u << 1, /* a bad flash cell: the byte at the middle
                                           of the first chunk written at offset 0
                                           flips (one bit) each time it is written */
    TSIM_FAULT_NOT_BLANK = 1u << 2,     /* chip arrives already used: OTP holds a
                                           foreign ROTPK hash and a key exists (KEYED) */
    TSIM_FAULT_LINK = 1u << 3,          /* dead chip: every link command fails
                                           (NU_ERR_TARGET) */
    TSIM_FAULT_BAD_ATTEST = 1u << 4,    /* attestation signed with a wrong key */
    TSIM_FAULT_FLAKY = 1u << 5,         /* flaky link: each command fails with
                                           NU_ERR_TARGET, 1 in TSIM_FLAKY_ONE_IN, before
                                           doing anything (a retry may succeed) */
    TSIM_FAULT_CSR_WRONG_KEY = 1u << 6, /* the CSR is signed by (and names) a key the
                                           chip does not hold; tsim_read_pubkey and
                                           tsim_attest use the real one */
    TSIM_FAULT_FAKE_BOOT = 1u << 7,     /* reset claims success without verifying.
                                           As on a chip whose device key is released
                                           only to verified firmware (DICE-like), its
                                           attestations then do not verify with the
                                           device key: the programmer's attestation
                                           check is what catches it. */
};

struct tsim_opts {
    uint32_t flash_us_per_kib; /* simulated programming time, 0 = instant */
    unsigned faults;           /* enum tsim_fault bits */
    int no_sync;               /* 1: never fsync/fdatasync. Writes, their order and
                                  the atomic swaps are the same, so a chip survives a
                                  crash of the programmer as before, but not a power
                                  cut of the host (a real chip's NVM costs its
                                  programmer no disk flush: for benchmarks). */
};

struct tsim;

/* Create a blank chip with `uid` under targets_dir (created if missing).
 * opts may be NULL (no faults, instant flash). The folder appears atomically
 * (built aside, then renamed), so a crash of the programmer never leaves a
 * half-made chip; nothing is synced until the chip's first commit (see
 * Persistence above).
 * *out_t is freed with tsim_destroy().
 * Errors: INVALID_ARG, EXISTS (that UID exists), TOO_LARGE (path), IO,
 * PERMISSION, CRYPTO/NOMEM (TSIM_FAULT_NOT_BLANK's key). */
int tsim_create(const char *targets_dir, const uint8_t uid[TSIM_UID_LEN],
                const struct tsim_opts *opts, struct tsim **out_t);

/* Reopen an existing chip from its folder (after a programmer restart).
 * opts may be NULL; faults are not persisted, pass them again.
 * Errors: INVALID_ARG, NOT_FOUND (no chip with that UID), DECODE (state file
 * damaged or inconsistent with secret/, image.bin or the UID), IO, NOMEM. */
int tsim_open(const char *targets_dir, const uint8_t uid[TSIM_UID_LEN],
              const struct tsim_opts *opts, struct tsim **out_t);

/* Free the handle (the chip stays on disk). NULL is a no-op. */
void tsim_destroy(struct tsim *t);

/* The chip's folder (DIR/targets/<UID hex>), owned by t. Not a link command. */
const char *tsim_path(const struct tsim *t);

/* Errors: INVALID_ARG, TARGET (link fault). */
int tsim_read_uid(const struct tsim *t, uint8_t out_uid[TSIM_UID_LEN]);
/* Errors: INVALID_ARG, TARGET (link fault). */
int tsim_get_state(const struct tsim *t, enum tsim_state *out_state);

/* OTP: write-once. Same value again is NU_OK; a different value NU_ERR_STATE.
 * Errors: INVALID_ARG, STATE (different value, or LOCKED), TARGET, IO. */
int tsim_otp_write_rotpk_hash(struct tsim *t, const uint8_t hash[32]);

/* Read the OTP ROTPK hash back (it is public: the hash of the boot key).
 * Errors: INVALID_ARG, NOT_FOUND (OTP blank), TARGET. */
int tsim_otp_read_rotpk_hash(const struct tsim *t, uint8_t out_hash[32]);

/* OTP anti-rollback floor: fuses only add bits, so the counter can only go
 * up; a lower value than the current one is NU_ERR_STATE, equal is NU_OK.
 * Secure boot refuses an image whose security counter is below it, and
 * raises it to the counter of an image it accepts.
 * Errors: INVALID_ARG, STATE (lower value, or LOCKED), TARGET, IO. */
int tsim_otp_write_security_counter(struct tsim *t, uint32_t counter);

/* Generate the device key pair on chip and a CSR (CN = cn, no OU/O) signed by
 * it, DER into out_csr[cap]. The private key goes to secret/key.pem only.
 * Refused (NU_ERR_STATE) unless OTP is written and no key exists yet.
 * Errors: INVALID_ARG (NULL, empty CN or a character outside the identity
 * alphabet [A-Za-z0-9._:@-]), TOO_LARGE (CN > TSIM_CN_MAX, or cap too small: nothing is
 * generated then), STATE, TARGET (link or TSIM_FAULT_KEYGEN), IO, CRYPTO. */
int tsim_keygen_csr(struct tsim *t, const char *cn, uint8_t *out_csr, size_t cap, size_t *out_len);

/* A fresh CSR for the key the chip already holds (a programmer that crashed
 * after keygen asks again). Allowed from KEYED until LOCKED.
 * Errors: as tsim_keygen_csr(); STATE when there is no key or the chip is locked. */
int tsim_csr(struct tsim *t, const char *cn, uint8_t *out_csr, size_t cap, size_t *out_len);

/* The device public key (65 bytes, 04||X||Y). Errors: INVALID_ARG, STATE (no
 * key yet), TARGET. */
int tsim_read_pubkey(const struct tsim *t, uint8_t out_pub[65]);

/* Flash the firmware image (whole, or in order by offset); the secure-boot
 * public key goes to the boot key slot. Refused when LOCKED (NU_ERR_STATE).
 * All three need a key on chip (KEYED or later; STATE before) and put the
 * chip in PROGRAMMED (boot=none).
 *
 * tsim_flash_write: offset 0 erases the flash first (starts a new image);
 * otherwise offset must not leave a gap (offset <= bytes written so far).
 * Takes flash_us_per_kib per KiB. Errors: INVALID_ARG (NULL, len 0, gap),
 * TOO_LARGE (offset + len > TSIM_IMAGE_MAX), STATE, TARGET, IO.
 * tsim_write_boot_key: errors INVALID_ARG, DECODE (not a valid P-256 point),
 * STATE, TARGET, IO.
 * tsim_write_cert: the DER is stored as given (cert.pem); several DER
 * certificates back to back (leaf first, then its issuers: an offline-lease
 * chip's chain) are stored as one PEM file in that order (tsim_read_cert
 * reads the first). The chip does not judge it. Errors: INVALID_ARG (NULL, len 0), TOO_LARGE (> TSIM_CERT_MAX),
 * STATE, TARGET, IO, NOMEM. */
int tsim_flash_write(struct tsim *t, uint32_t offset, const uint8_t *data, size_t len);
int tsim_write_boot_key(struct tsim *t, const uint8_t pub[65]);
int tsim_write_cert(struct tsim *t, const uint8_t *der, size_t len);

/* The certificate in the chip's certificate slot (DER into out_der[cap]).
 * Errors: INVALID_ARG, NOT_FOUND (none written), TOO_LARGE (cap), DECODE,
 * TARGET, IO. */
int tsim_read_cert(const struct tsim *t, uint8_t *out_der, size_t cap, size_t *out_len);

/* Reset: the chip's secure boot runs. NU_OK and state BOOTED if the image
 * verifies against the OTP hash; NU_ERR_BOOT_FAILED (state BOOT_FAILED)
 * otherwise: no image, no boot key, boot key hash != OTP hash, image
 * malformed/truncated, KEYHASH or signature wrong, security counter below
 * the OTP floor. A locked chip may be reset too (it stays LOCKED; boot=ok or
 * failed). Errors: INVALID_ARG, STATE (no key yet: nothing to boot), TARGET,
 * BOOT_FAILED, IO. */
int tsim_reset(struct tsim *t);

/* Sign SHA-256("nusec/v1 attest" || uid || nonce) with the device key (DER
 * ECDSA into out_sig[cap], NU_P256_SIG_MAX = 72 is enough). Only after a
 * successful boot (BOOTED, or LOCKED with boot=ok).
 * Errors: INVALID_ARG, STATE, TOO_LARGE (cap), TARGET, CRYPTO. */
int tsim_attest(struct tsim *t, const uint8_t nonce[32], uint8_t *out_sig, size_t cap,
                size_t *out_len);

/* Close debug and flash for good. Only from BOOTED; NU_OK again when already
 * LOCKED (a programmer retrying after a crash). Errors: INVALID_ARG, STATE,
 * TARGET, IO. */
int tsim_lock(struct tsim *t);

/* The digest tsim_attest signs, for the verifier's side. Errors: INVALID_ARG, CRYPTO. */
int tsim_attest_digest(const uint8_t uid[TSIM_UID_LEN], const uint8_t nonce[32],
                       uint8_t out_digest[32]);

/*
 * The line feeder: hands out `total` new blank chips to the sockets that ask,
 * then NU_ERR_NOT_FOUND ("tray empty"). UIDs are random (nu_random); chips are
 * created on disk lazily, by tsim_feeder_next(). opts (may be NULL) applies to
 * every chip. Thread-safe. Errors of create: INVALID_ARG, NOMEM, IO, TOO_LARGE.
 * tsim_feeder_next: *out_t is the caller's (tsim_destroy); errors NOT_FOUND
 * (tray empty), and tsim_create's (the chip goes back to the tray then).
 */
struct tsim_feeder;
int tsim_feeder_create(const char *targets_dir, uint32_t total, const struct tsim_opts *opts,
                       struct tsim_feeder **out_f);
int tsim_feeder_next(struct tsim_feeder *f, struct tsim **out_t);
uint32_t tsim_feeder_remaining(const struct tsim_feeder *f);
void tsim_feeder_destroy(struct tsim_feeder *f);

/* Add `faults` to every `every`-th chip handed out (the every-th, 2*every-th,
 * ...; 1 = all, 0 = off), on top of opts->faults. Call before the first
 * tsim_feeder_next(). Errors: INVALID_ARG. */
int tsim_feeder_set_fault_every(struct tsim_feeder *f, uint32_t every, unsigned faults);

#endif
