/*
 * tsim — a simulated target MCU, as the programmer's target link sees it.
 *
 * Each simulated chip lives in DIR/targets/<UID hex>/:
 *   cert.pem     device certificate written by the programmer (readable back)
 *   image.bin    firmware image in the chip's flash (readable back)
 *   pubkey.pem   public half of the device key (readable back)
 *   state        text "key=value" lines: state, otp_rotpk_hash, boot, locked...
 *   secret/      chip-internal storage no API reads: the device private key
 *                (secret/key.pem, 0600) and the OTP/boot-key area
 * The device key is generated "on chip" (tsim_keygen_csr) and never leaves
 * secret/; the programmer only ever sees the CSR, the public key and
 * signatures.
 *
 * Life of a chip: BLANK -> OTP written (ROTPK hash, once) -> KEYED (key pair +
 * CSR) -> PROGRAMMED (firmware + boot key + certificate) -> reset: secure
 * boot verifies the MCUboot image (KEYHASH == OTP hash == hash of the boot
 * key, signature valid) -> BOOTED -> attest (sign a nonce) -> LOCKED (no
 * more writes, debug closed).
 *
 * Thread-safety: one struct tsim is used by one socket worker at a time; the
 * feeder is thread-safe. All functions return NU_OK or NU_ERR_* (nu_err.h).
 */
#ifndef TSIM_H
#define TSIM_H

#include <stddef.h>
#include <stdint.h>

#define TSIM_UID_LEN 16
#define TSIM_IMAGE_MAX (4u * 1024u * 1024u)

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
    TSIM_FAULT_KEYGEN = 1u << 0,      /* keygen/CSR fails (NU_ERR_TARGET) */
    TSIM_FAULT_FLASH_CORRUPT = 1u << 1, /* one flash byte flips while written */
    TSIM_FAULT_NOT_BLANK = 1u << 2,   /* chip arrives already programmed */
    TSIM_FAULT_LINK = 1u << 3,        /* every link operation fails (NU_ERR_TARGET) */
    TSIM_FAULT_BAD_ATTEST = 1u << 4,  /* attestation signed with a wrong key */
};

struct tsim_opts {
    uint32_t flash_us_per_kib; /* simulated programming time, 0 = instant */
    unsigned faults;           /* enum tsim_fault bits */
};

struct tsim;

/* Create a blank chip with `uid` under targets_dir (created if missing).
 * Errors: INVALID_ARG, EXISTS (that UID exists), IO. */
int tsim_create(const char *targets_dir, const uint8_t uid[TSIM_UID_LEN],
                const struct tsim_opts *opts, struct tsim **out_t);

/* Reopen an existing chip from its folder (after a programmer restart).
 * Errors: NOT_FOUND, DECODE (state file damaged), IO. */
int tsim_open(const char *targets_dir, const uint8_t uid[TSIM_UID_LEN],
              const struct tsim_opts *opts, struct tsim **out_t);

void tsim_destroy(struct tsim *t);

int tsim_read_uid(const struct tsim *t, uint8_t out_uid[TSIM_UID_LEN]);
int tsim_get_state(const struct tsim *t, enum tsim_state *out_state);

/* OTP: write-once. Same value again is NU_OK; a different value NU_ERR_STATE. */
int tsim_otp_write_rotpk_hash(struct tsim *t, const uint8_t hash[32]);

/* Generate the device key pair on chip and a CSR (CN = cn) signed by it.
 * Refused (NU_ERR_STATE) unless OTP is written and no key exists yet. */
int tsim_keygen_csr(struct tsim *t, const char *cn, uint8_t *out_csr, size_t cap,
                    size_t *out_len);

int tsim_read_pubkey(const struct tsim *t, uint8_t out_pub[65]);

/* Flash the firmware image (whole, or in order by offset); the secure-boot
 * public key goes to the boot key slot. Refused when LOCKED (NU_ERR_STATE). */
int tsim_flash_write(struct tsim *t, uint32_t offset, const uint8_t *data, size_t len);
int tsim_write_boot_key(struct tsim *t, const uint8_t pub[65]);
int tsim_write_cert(struct tsim *t, const uint8_t *der, size_t len);

/* Reset: the chip's secure boot runs. NU_OK and state BOOTED if the image
 * verifies against the OTP hash; NU_ERR_BOOT_FAILED (state BOOT_FAILED)
 * otherwise. */
int tsim_reset(struct tsim *t);

/* Sign SHA-256("nusec/v1 attest" || uid || nonce) with the device key (DER
 * ECDSA). Only after a successful boot. */
int tsim_attest(struct tsim *t, const uint8_t nonce[32], uint8_t *out_sig, size_t cap,
                size_t *out_len);

/* Close debug and flash for good. Only from BOOTED. */
int tsim_lock(struct tsim *t);

/* The digest tsim_attest signs, for the verifier's side. */
int tsim_attest_digest(const uint8_t uid[TSIM_UID_LEN], const uint8_t nonce[32],
                       uint8_t out_digest[32]);

/*
 * The line feeder: hands out `total` new blank chips to the sockets that ask,
 * then NU_ERR_NOT_FOUND ("tray empty"). UIDs are random. Thread-safe.
 */
struct tsim_feeder;
int tsim_feeder_create(const char *targets_dir, uint32_t total, const struct tsim_opts *opts,
                       struct tsim_feeder **out_f);
int tsim_feeder_next(struct tsim_feeder *f, struct tsim **out_t);
uint32_t tsim_feeder_remaining(const struct tsim_feeder *f);
void tsim_feeder_destroy(struct tsim_feeder *f);

#endif
