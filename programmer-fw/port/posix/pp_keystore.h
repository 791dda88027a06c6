/*
 * pp_keystore — the POSIX port's KeyStore: a file sealed under a
 * per-programmer hardware-unique key. It stands in for the NuLink3's KeyStore
 * hardware (a secure element / TrustZone-protected key storage with
 * monotonic counters), which a real port would call instead.
 *
 * Files, in DIR/programmers/NAME/:
 *   huk           32 random bytes, mode 0600: the "hardware-unique key". On a
 *                 NuLink3 it is fused in the chip and never readable by
 *                 software; here it is a file only this user can read.
 *   keystore.bin  "NKS1" || salt(32) || nonce(12) || AES-256-GCM(K, records) || tag(16)
 *                 K = HKDF-SHA256(IKM = HUK, salt, info = "nusec/v1 keystore"),
 *                 AAD = "NKS1" || NAME; a fresh salt and nonce on every write, so
 *                 no (key, nonce) pair is ever reused.
 * Records: the identity and package private scalars, the vendor attestation
 * key and its certificate and serial (written once by the programmer factory,
 * --factory-init; see README "Threat model"), the production counters
 * (per job) and the sealed blobs (identity certificate, pinned keys, job
 * records). The file is rewritten atomically (temp + fsync + rename) on every
 * change, before the change is reported done: a crash leaves the old or the
 * new store, never a torn one, and a counter never goes back by itself.
 * A counter's record holds the units reserved: limit/64 of them (1 below a
 * limit of 128, at most 16) are written at once, before the first is handed
 * out, so a unit is always durable before use while the store is written once
 * per reservation, not per device. After a power cut the whole reservation
 * counts as spent (at most 1/64 of the limit wasted; never more than the
 * limit); pp_ks_close() gives the unused units back (blob writes keep the
 * reservation: the core writes one per chip, its in-flight record).
 *
 * What the stand-in cannot do: a file cannot be monotonic. Someone who
 * copies keystore.bin aside and puts it back later rolls the counters back;
 * the NuLink3 hardware counters (and the cloud's ledger, the second quota
 * check) are what stops that in production. Private keys are in this
 * process's memory while it runs; nothing here ever writes them outside
 * keystore.bin.
 *
 * Errors: a keystore that fails authentication (edited file, wrong HUK,
 * another programmer's file) is refused with NU_ERR_TAMPERED; a HUK readable
 * by group/others with NU_ERR_PERMISSION.
 *
 * Thread-safe: every operation holds the store's mutex.
 */
#ifndef PP_KEYSTORE_H
#define PP_KEYSTORE_H

#include "hal.h"

#include <stddef.h>
#include <stdint.h>

#define PP_KS_HUK_LEN 32
#define PP_KS_FILE_MAX (256u * 1024u)

struct pp_ks;

/*
 * Open the KeyStore of programmer `name` in folder `pdir`
 * (DIR/programmers/NAME). create = 1 makes the HUK (0600) when missing; a
 * missing keystore.bin is an empty store (written at the first change). A
 * keystore.bin without its HUK is refused (NOT_FOUND), never re-keyed.
 * Errors: INVALID_ARG, NOT_FOUND, PERMISSION (HUK mode), TAMPERED, DECODE,
 * TOO_LARGE, IO, NOMEM.
 */
int pp_ks_open(const char *pdir, const char *name, int create, struct pp_ks **out_ks);

/* Give unused reserved counter units back (one write, if any), wipe and free
 * (NULL is a no-op). */
void pp_ks_close(struct pp_ks *ks);

/* The ops table; ctx is the struct pp_ks. */
extern const struct pg_keystore_ops pp_ks_ops;

/*
 * The identity private key as PEM into out[cap], for the TLS stack only
 * (libmosquitto takes it through a sealed memfd, see nu_mqtt key_pem). The
 * one place the stand-in lets a key out of the KeyStore, into this process's
 * memory; a NuLink3 does the TLS signature in the KeyStore instead. The
 * caller wipes out with nu_zero. Errors: NOT_FOUND, TOO_LARGE, CRYPTO.
 */
int pp_ks_identity_pem_for_tls(struct pp_ks *ks, char *out, size_t cap, size_t *out_len);

/*
 * Programmer factory (nusec-programmer --factory-init): make the vendor
 * attestation key inside the KeyStore (never exported; it signs attestation
 * statements only) and give its public key in out_pub. EXISTS (and out_pub)
 * when it exists already. Errors: INVALID_ARG, CRYPTO, IO, TOO_LARGE.
 */
int pp_ks_attest_key_create(struct pp_ks *ks, uint8_t out_pub[PG_P256_PUB_LEN]);

/*
 * Store the attestation key's certificate (DER, from the vendor CA) and the
 * vendor serial it names, once. Errors: INVALID_ARG, EXISTS (already set),
 * NOT_FOUND (no attestation key), IO.
 */
int pp_ks_attest_cert_set(struct pp_ks *ks, const char *serial, const uint8_t *der, size_t len);

/* The vendor serial into out[cap]. Errors: INVALID_ARG, NOT_FOUND, TOO_LARGE. */
int pp_ks_attest_serial(struct pp_ks *ks, char *out, size_t cap);

/*
 * What the boot stage measured: SHA-256 of the programmer binary it started
 * (on a NuLink3, the boot ROM writes this register; here main() does, before
 * the core runs). Set once per run: a different value later is STATE. The
 * attest op refuses (STATE) until it is set.
 */
int pp_ks_set_measurement(struct pp_ks *ks, const uint8_t measurement[32]);

/* Path of keystore.bin (for tests and messages). */
const char *pp_ks_path(const struct pp_ks *ks);

#endif
