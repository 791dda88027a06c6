/*
 * hal.h — the hardware abstraction layer of the NuLink3 programmer core.
 *
 * The core (programmer-fw/core/) is portable C11: no OS call, no heap, no
 * crypto of its own. Everything it needs from the world comes through the
 * const tables of function pointers below, one per service, each with a
 * version field (Zephyr flash_driver_api, SQLite sqlite3_io_methods):
 *
 *   keystore   identity + package keys that never leave it, signing, ECDH,
 *              monotonic production counters per job, sealed small blobs
 *   flash      the firmware cache, its progress record, the current package
 *   transport  publish, request with timeout, subscription callback
 *   target     the target link, per socket (one chip per socket at a time)
 *   crypto     SHA-256, ECDSA P-256 verify, AES-256-GCM, sealed boxes,
 *              X.509/CSR checks, MCUboot image verification
 *   clock, rng, log
 *
 * A port fills one struct pg_hal with {ops, ctx} pairs. A NULL ops table or
 * a NULL member means "not supported": the pg_hal_* wrappers at the end then
 * return NU_ERR_NOT_SUPPORTED, so a port can leave out what it lacks (a
 * headless board without a log, a keystore without blobs) and the core says
 * so with a typed error instead of crashing.
 *
 * Why crypto is a HAL and not a library the core links: on the host the
 * POSIX port implements it with libnusec (wolfCrypt, protobuf-c, wolfSSL
 * X.509); on the NuLink3 (Cortex-M33) the same operations come from the
 * chip's crypto engine / PSA Crypto service or an embedded wolfCrypt build.
 * Keeping them behind this table is what lets the core build with
 * arm-none-eabi-gcc with no third-party code and the HAL left as link-time
 * symbols (see programmer-fw/README.md, "Cross build").
 *
 * Threads: the core calls these from several socket workers at once. Every
 * op must therefore be safe to call concurrently, except the target ops,
 * which are called for one socket by one worker at a time (different sockets
 * concurrently). The transport's subscription callback may run on any thread.
 *
 * All ops return NU_OK or an NU_ERR_* code from libnusec/nu_err.h (header
 * only: the core uses the enum, never libnusec code).
 */
#ifndef PG_HAL_H
#define PG_HAL_H

#include "nu_err.h"

#include <stddef.h>
#include <stdint.h>

/* 2: target ops state, otp_read_rotpk_hash, csr, read_cert appended (resume of
 * interrupted chips). A version-1 target table still works: the core then
 * cannot resume and treats every used chip as not blank. */
#define PG_HAL_VERSION 2u

#define PG_P256_PUB_LEN 65 /* uncompressed point 04||X||Y */
#define PG_SIG_MAX 72      /* DER ECDSA signature, P-256 */
#define PG_SHA256_LEN 32

/* ------------------------------------------------------------- keystore */

/* The two private keys a programmer's KeyStore holds. */
enum pg_key {
    PG_KEY_IDENTITY = 0, /* mTLS client identity; signs (CSR, TLS) only */
    PG_KEY_PACKAGE = 1,  /* package decryption; ECDH only */
    PG_KEY_LINE_CA = 2,  /* offline lease line CA (issue 15); signs device certificates only */
};

/* What a KeyStore attestation produces (caller-allocated). */
#define PG_ATTEST_NONCE_LEN 32
#define PG_ATTEST_STMT_MAX 512
#define PG_ATTEST_CERT_MAX 1024
struct pg_attestation {
    uint8_t stmt[PG_ATTEST_STMT_MAX]; /* serialized nusec.v1.AttestationStatement */
    size_t stmt_len;
    uint8_t sig[PG_SIG_MAX]; /* DER ECDSA, attestation key (libnusec nu_attest.h) */
    size_t sig_len;
    uint8_t cert[PG_ATTEST_CERT_MAX]; /* attestation key certificate, vendor CA, DER */
    size_t cert_len;
};

struct pg_keystore_ops {
    uint32_t version;
    /* Make both key pairs inside the KeyStore. EXISTS if they exist already. */
    int (*keys_generate)(void *ctx);
    /* Public key of `key`. NOT_FOUND before keys_generate. */
    int (*pubkey)(void *ctx, enum pg_key key, uint8_t out_pub[PG_P256_PUB_LEN]);
    /* DER ECDSA over a 32-byte digest into sig[*sig_len] (in: capacity,
     * out: length). PERMISSION for a key that may not sign (PG_KEY_PACKAGE). */
    int (*sign_digest)(void *ctx, enum pg_key key, const uint8_t digest[32], uint8_t *sig,
                       size_t *sig_len);
    /* X coordinate of d * peer (peer already validated by the caller's
     * crypto). PERMISSION for a key that may not do ECDH (PG_KEY_IDENTITY). */
    int (*ecdh)(void *ctx, enum pg_key key, const uint8_t peer[PG_P256_PUB_LEN],
                uint8_t out_secret[32]);
    /* Production counter of `job_id` (0 when never incremented). */
    int (*counter_read)(void *ctx, const char *job_id, uint32_t *out_value);
    /* Atomically: if counter < limit, counter += 1, made durable, and
     * *out_value = the new value; else NU_ERR_LIMIT and nothing changes.
     * It never goes down, across power loss. A port may make several units
     * durable at once (a reservation): after a power loss the counter then
     * comes back at the reservation, higher than the units used, never lower
     * and never past the limit. */
    int (*counter_increment)(void *ctx, const char *job_id, uint32_t limit, uint32_t *out_value);
    /* Sealed storage of small named blobs (certificate, pinned keys, job
     * records). get: NOT_FOUND if absent, TOO_LARGE if cap is short.
     * put: durable before it returns; len 0 deletes. */
    int (*blob_get)(void *ctx, const char *name, uint8_t *buf, size_t cap, size_t *out_len);
    int (*blob_put)(void *ctx, const char *name, const uint8_t *data, size_t len);
    /* Attestation, by the KeyStore itself: it builds the statement from what
     * it holds (its identity and package public keys, generated inside and not
     * exportable; the firmware measurement its secure boot recorded; its
     * vendor serial; the programmer id) plus `nonce`, and signs it with the
     * vendor attestation key provisioned at manufacturing, which signs
     * nothing else. NOT_FOUND before keys_generate or without a vendor key
     * (programmer not factory-initialised); STATE without a measurement.
     * Appended: a KeyStore that cannot attest leaves it NULL (NOT_SUPPORTED). */
    int (*attest)(void *ctx, const uint8_t nonce[PG_ATTEST_NONCE_LEN], struct pg_attestation *out);
    /* Offline lease (issue 15), appended: make a fresh PG_KEY_LINE_CA key
     * pair inside the KeyStore, replacing the previous one (a new lease, a
     * new key; the old one is destroyed). Never exportable; it signs only
     * (sign_digest), no ECDH. NULL: the KeyStore has no line CA (NOT_SUPPORTED). */
    int (*line_key_generate)(void *ctx);
};

/* ----------------------------------------------------------------- flash */

/* Flash areas of the programmer (MCUboot flash_area style). */
enum pg_flash_area {
    PG_FLASH_IMAGE = 0,   /* firmware cache: the plaintext MCUboot image */
    PG_FLASH_META = 1,    /* download progress record */
    PG_FLASH_PACKAGE = 2, /* the current sealed package (sealed: no secret in clear) */
    PG_FLASH_JOURNAL = 3, /* device reports not yet confirmed by the cloud: one slot of
                             PG_JOURNAL_SLOT bytes per socket, rewritten whole (a NOR
                             port keeps it as a record log, like META). No secret. */
};
#define PG_JOURNAL_SLOT 1024u

struct pg_flash_ops {
    uint32_t version;
    int (*size)(void *ctx, enum pg_flash_area area, uint32_t *out_size);
    /* Reads beyond what was written return erased bytes (0xff). */
    int (*read)(void *ctx, enum pg_flash_area area, uint32_t off, uint8_t *buf, size_t len);
    /* Program bytes at off. A port whose flash needs erase-before-write
     * keeps META as a record log; the core only ever rewrites META whole. */
    int (*write)(void *ctx, enum pg_flash_area area, uint32_t off, const uint8_t *data, size_t len);
    int (*erase)(void *ctx, enum pg_flash_area area);
};

/* ------------------------------------------------------------- transport */

/* A message on a subscribed topic; payload valid during the call only. */
typedef void (*pg_msg_cb)(void *cb_ctx, const char *topic, const uint8_t *payload, size_t len);

struct pg_transport_ops {
    uint32_t version;
    /* qos 0/1; QoS 1 returns once the broker accepted it. */
    int (*publish)(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos,
                   int retain);
    /* Request/response: publish on topic, wait up to timeout_ms for the
     * answer, copy it into resp[cap]. TOO_LARGE if the answer exceeds cap;
     * TIMEOUT, CONNECTION, NOT_FOUND (nobody serves the topic). */
    int (*request)(void *ctx, const char *topic, const uint8_t *payload, size_t len,
                   uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len);
    /* Deliver messages on `filter` to cb (on any thread, possibly
     * concurrently with everything else; cb must not block). */
    int (*subscribe)(void *ctx, const char *filter, pg_msg_cb cb, void *cb_ctx);
    /* Appended (NULL: NOT_SUPPORTED, and the core then refuses every answer
     * it would have to verify): `request`, plus the answer's end-to-end
     * signature as it came (hex DER of the MQTT 5 user property "nusec-sig",
     * "" when absent) into sig[sig_cap] and the topic the answer arrived on
     * into reply_topic[topic_cap]. Both untrusted: the core verifies them
     * (pg_reply.c). TOO_LARGE when the topic does not fit. */
    int (*request_signed)(void *ctx, const char *topic, const uint8_t *payload, size_t len,
                          uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len,
                          char *reply_topic, size_t topic_cap, char *sig, size_t sig_cap);
};

/* ---------------------------------------------------------------- target */

/* Life of a chip as its link reports it (target op `state`). */
enum pg_chip_state {
    PG_CHIP_BLANK = 0,
    PG_CHIP_OTP_WRITTEN = 1, /* ROTPK hash in OTP, no key yet */
    PG_CHIP_KEYED = 2,       /* device key on chip */
    PG_CHIP_PROGRAMMED = 3,  /* flash / boot key / certificate written, not booted */
    PG_CHIP_BOOTED = 4,
    PG_CHIP_BOOT_FAILED = 5,
    PG_CHIP_LOCKED = 6,
};

struct pg_target_ops {
    uint32_t version;
    /* Bring the next chip into `sock` (handler / tray). NOT_FOUND: no more chips. */
    int (*insert)(void *ctx, unsigned sock);
    /* Take the chip out of `sock` (done, good or bad). */
    int (*remove)(void *ctx, unsigned sock);
    int (*read_uid)(void *ctx, unsigned sock, uint8_t *out_uid, size_t cap, size_t *out_len);
    /* NU_OK if the chip is blank, NOT_BLANK otherwise. */
    int (*blank_check)(void *ctx, unsigned sock);
    int (*otp_write_rotpk_hash)(void *ctx, unsigned sock, const uint8_t hash[32]);
    /* On-chip key pair + CSR with subject CN = cn. */
    int (*keygen_csr)(void *ctx, unsigned sock, const char *cn, uint8_t *out_csr, size_t cap,
                      size_t *out_len);
    int (*read_pubkey)(void *ctx, unsigned sock, uint8_t out_pub[PG_P256_PUB_LEN]);
    int (*flash_write)(void *ctx, unsigned sock, uint32_t off, const uint8_t *data, size_t len);
    int (*write_boot_key)(void *ctx, unsigned sock, const uint8_t pub[PG_P256_PUB_LEN]);
    int (*write_cert)(void *ctx, unsigned sock, const uint8_t *der, size_t len);
    /* Reset; NU_OK only if the chip's secure boot accepted the image. */
    int (*reset)(void *ctx, unsigned sock);
    /* DER ECDSA by the device key over SHA-256("nusec/v1 attest" || uid || nonce). */
    int (*attest)(void *ctx, unsigned sock, const uint8_t nonce[32], uint8_t *out_sig, size_t cap,
                  size_t *out_len);
    int (*lock)(void *ctx, unsigned sock);
    /* ---- version 2: resuming a chip an earlier run left half done ---- */
    int (*state)(void *ctx, unsigned sock, enum pg_chip_state *out_state);
    /* NOT_FOUND while the OTP is blank. */
    int (*otp_read_rotpk_hash)(void *ctx, unsigned sock, uint8_t out_hash[32]);
    /* A fresh CSR (CN = cn) for the key the chip already holds; STATE if none. */
    int (*csr)(void *ctx, unsigned sock, const char *cn, uint8_t *out_csr, size_t cap,
               size_t *out_len);
    /* The certificate the chip holds (DER); NOT_FOUND if none. */
    int (*read_cert)(void *ctx, unsigned sock, uint8_t *out_der, size_t cap, size_t *out_len);
};

/* ---------------------------------------------------------------- crypto */

/* Caller-allocated SHA-256 state (stack is fine); opaque to the core. */
struct pg_sha256 {
    _Alignas(16) uint8_t opaque[256];
};

/* A DER blob, borrowed. */
struct pg_der {
    const uint8_t *der;
    size_t len;
};

/* Reader over the cached image, for verification without holding it in RAM. */
typedef int (*pg_read_fn)(void *rctx, uint32_t off, uint8_t *buf, size_t len);
/* A signer / ECDH provider handed to crypto ops (the KeyStore behind it). */
typedef int (*pg_sign_fn)(void *sctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len);
typedef int (*pg_ecdh_fn)(void *ectx, const uint8_t peer[PG_P256_PUB_LEN], uint8_t out_secret[32]);

/* What a certificate check learned (serial as lower-case hex). */
struct pg_cert_facts {
    uint8_t pub[PG_P256_PUB_LEN];
    char serial_hex[41];
    char cn[64];
};

struct pg_crypto_ops {
    uint32_t version;
    int (*sha256_init)(void *ctx, struct pg_sha256 *s);
    int (*sha256_update)(void *ctx, struct pg_sha256 *s, const void *data, size_t len);
    int (*sha256_final)(void *ctx, struct pg_sha256 *s, uint8_t out[32]);
    /* NU_OK, BAD_SIGNATURE, DECODE (malformed sig or key). */
    int (*p256_verify)(void *ctx, const uint8_t pub[PG_P256_PUB_LEN], const uint8_t digest[32],
                       const uint8_t *sig, size_t sig_len);
    /* TAMPERED on authentication failure (out zeroed). out may equal in. */
    int (*aes256gcm_decrypt)(void *ctx, const uint8_t key[32], const uint8_t nonce[12],
                             const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
                             uint8_t *out, const uint8_t tag[16]);
    /* Open a serialized SealedBox (libnusec nu_seal format) for the holder of
     * recipient_pub, whose ECDH is `ecdh`. Plaintext into out[cap].
     * TAMPERED, DECODE, TOO_LARGE (cap). */
    int (*seal_open)(void *ctx, pg_ecdh_fn ecdh, void *ectx,
                     const uint8_t recipient_pub[PG_P256_PUB_LEN], const uint8_t *aad,
                     size_t aad_len, const uint8_t *box, size_t box_len, uint8_t *out, size_t cap,
                     size_t *out_len);
    /* Make a PKCS#10 CSR for pub, signed through `sign`. */
    int (*csr_make)(void *ctx, pg_sign_fn sign, void *sctx, const uint8_t pub[PG_P256_PUB_LEN],
                    const char *cn, const char *ou, const char *o, uint8_t *out, size_t cap,
                    size_t *out_len);
    /* Verify an untrusted CSR's self-signature; its CN must equal cn.
     * BAD_CSR otherwise. */
    int (*csr_check)(void *ctx, const uint8_t *der, size_t len, const char *cn,
                     uint8_t out_pub[PG_P256_PUB_LEN]);
    /* Verify leaf against chain[0..n) (issuer-most last; chain[n-1] is the
     * trust anchor) at the current time; facts of the leaf on success.
     * BAD_CERT, EXPIRED. */
    int (*cert_check)(void *ctx, const uint8_t *leaf, size_t leaf_len, const struct pg_der *chain,
                      size_t n, struct pg_cert_facts *out);
    /* A public key in any encoding the cloud uses (raw point, DER SPKI, PEM)
     * to a validated raw point. DECODE. */
    int (*pubkey_parse)(void *ctx, const uint8_t *in, size_t len, uint8_t out_pub[PG_P256_PUB_LEN]);
    /* Verify an MCUboot image of `size` bytes read through `read`: hash TLV,
     * KEYHASH == rotpk_hash == hash of rotpk, ECDSA signature by rotpk.
     * BAD_FIRMWARE (or BAD_SIGNATURE / TAMPERED) otherwise. */
    int (*image_verify)(void *ctx, pg_read_fn read, void *rctx, uint32_t size,
                        const uint8_t rotpk[PG_P256_PUB_LEN], const uint8_t rotpk_hash[32]);
    /* Appended (issue 15): a device certificate for `pub`, issued by the
     * certificate issuer[issuer_len] (the lease's line CA) and signed through
     * `sign` (the KeyStore's line-CA key): the cloud's device profile (CN =
     * cn, OU = device, O = NuSEC, digitalSignature, clientAuth, CA:FALSE,
     * random serial), valid from now_s - 1 h for 20 years. INVALID_ARG (the
     * issuer is not a CA for that key), TOO_LARGE (cap), CRYPTO. */
    int (*cert_issue)(void *ctx, pg_sign_fn sign, void *sctx, const uint8_t *issuer,
                      size_t issuer_len, const uint8_t pub[PG_P256_PUB_LEN], const char *cn,
                      uint64_t now_s, uint8_t *out, size_t cap, size_t *out_len);
};

/* ------------------------------------------------------- clock, rng, log */

struct pg_clock_ops {
    uint32_t version;
    uint64_t (*now_ms)(void *ctx);  /* wall clock, Unix ms (package expiry, headers) */
    uint64_t (*mono_ms)(void *ctx); /* monotonic ms (timeouts, durations) */
    void (*sleep_ms)(void *ctx, uint32_t ms);
};

struct pg_rng_ops {
    uint32_t version;
    int (*fill)(void *ctx, void *buf, size_t len); /* CSPRNG */
};

enum pg_log_level { PG_LOG_DEBUG = 0, PG_LOG_INFO = 1, PG_LOG_WARN = 2, PG_LOG_ERROR = 3 };

struct pg_log_ops {
    uint32_t version;
    void (*write)(void *ctx, enum pg_log_level level, const char *line);
};

/* ------------------------------------------------------------ the bundle */

struct pg_hal {
    uint32_t version; /* PG_HAL_VERSION */
    const struct pg_keystore_ops *ks;
    void *ks_ctx;
    const struct pg_flash_ops *flash;
    void *flash_ctx;
    const struct pg_transport_ops *tp;
    void *tp_ctx;
    const struct pg_target_ops *tgt;
    void *tgt_ctx;
    const struct pg_crypto_ops *cry;
    void *cry_ctx;
    const struct pg_clock_ops *clk;
    void *clk_ctx;
    const struct pg_rng_ops *rng;
    void *rng_ctx;
    const struct pg_log_ops *log;
    void *log_ctx;
};

/* -------------------------------------------------------------- wrappers */
/* Thin wrappers: NOT_SUPPORTED when the table or the op is missing. */

#define PG__HAL_CALL(h, tbl, op, ...)                                                              \
    ((h) && (h)->tbl && (h)->tbl->op ? (h)->tbl->op((h)->tbl##_ctx, __VA_ARGS__)                   \
                                     : NU_ERR_NOT_SUPPORTED)
#define PG__HAL_CALL0(h, tbl, op)                                                                  \
    ((h) && (h)->tbl && (h)->tbl->op ? (h)->tbl->op((h)->tbl##_ctx) : NU_ERR_NOT_SUPPORTED)

static inline int pg_ks_keys_generate(const struct pg_hal *h)
{
    return PG__HAL_CALL0(h, ks, keys_generate);
}
static inline int pg_ks_pubkey(const struct pg_hal *h, enum pg_key k, uint8_t out[65])
{
    return PG__HAL_CALL(h, ks, pubkey, k, out);
}
static inline int pg_ks_sign(const struct pg_hal *h, enum pg_key k, const uint8_t d[32],
                             uint8_t *sig, size_t *sig_len)
{
    return PG__HAL_CALL(h, ks, sign_digest, k, d, sig, sig_len);
}
static inline int pg_ks_ecdh(const struct pg_hal *h, enum pg_key k, const uint8_t peer[65],
                             uint8_t out[32])
{
    return PG__HAL_CALL(h, ks, ecdh, k, peer, out);
}
static inline int pg_ks_counter_read(const struct pg_hal *h, const char *job, uint32_t *out)
{
    return PG__HAL_CALL(h, ks, counter_read, job, out);
}
static inline int pg_ks_counter_inc(const struct pg_hal *h, const char *job, uint32_t limit,
                                    uint32_t *out)
{
    return PG__HAL_CALL(h, ks, counter_increment, job, limit, out);
}
static inline int pg_ks_blob_get(const struct pg_hal *h, const char *name, uint8_t *buf, size_t cap,
                                 size_t *out_len)
{
    return PG__HAL_CALL(h, ks, blob_get, name, buf, cap, out_len);
}
static inline int pg_ks_attest(const struct pg_hal *h, const uint8_t nonce[PG_ATTEST_NONCE_LEN],
                               struct pg_attestation *out)
{
    return PG__HAL_CALL(h, ks, attest, nonce, out);
}
static inline int pg_ks_line_key_generate(const struct pg_hal *h)
{
    return PG__HAL_CALL0(h, ks, line_key_generate);
}
static inline int pg_ks_blob_put(const struct pg_hal *h, const char *name, const uint8_t *data,
                                 size_t len)
{
    return PG__HAL_CALL(h, ks, blob_put, name, data, len);
}

static inline int pg_flash_size(const struct pg_hal *h, enum pg_flash_area a, uint32_t *out)
{
    return PG__HAL_CALL(h, flash, size, a, out);
}
static inline int pg_flash_read(const struct pg_hal *h, enum pg_flash_area a, uint32_t off,
                                uint8_t *buf, size_t len)
{
    return PG__HAL_CALL(h, flash, read, a, off, buf, len);
}
static inline int pg_flash_write(const struct pg_hal *h, enum pg_flash_area a, uint32_t off,
                                 const uint8_t *data, size_t len)
{
    return PG__HAL_CALL(h, flash, write, a, off, data, len);
}
static inline int pg_flash_erase(const struct pg_hal *h, enum pg_flash_area a)
{
    return PG__HAL_CALL(h, flash, erase, a);
}

static inline int pg_tp_publish(const struct pg_hal *h, const char *topic, const uint8_t *p,
                                size_t len, int qos, int retain)
{
    return PG__HAL_CALL(h, tp, publish, topic, p, len, qos, retain);
}
static inline int pg_tp_request(const struct pg_hal *h, const char *topic, const uint8_t *p,
                                size_t len, uint32_t timeout_ms, uint8_t *resp, size_t cap,
                                size_t *out_len)
{
    return PG__HAL_CALL(h, tp, request, topic, p, len, timeout_ms, resp, cap, out_len);
}
static inline int pg_tp_request_signed(const struct pg_hal *h, const char *topic, const uint8_t *p,
                                       size_t len, uint32_t timeout_ms, uint8_t *resp, size_t cap,
                                       size_t *out_len, char *reply_topic, size_t topic_cap,
                                       char *sig, size_t sig_cap)
{
    return PG__HAL_CALL(h, tp, request_signed, topic, p, len, timeout_ms, resp, cap, out_len,
                        reply_topic, topic_cap, sig, sig_cap);
}
static inline int pg_tp_subscribe(const struct pg_hal *h, const char *filter, pg_msg_cb cb,
                                  void *cb_ctx)
{
    return PG__HAL_CALL(h, tp, subscribe, filter, cb, cb_ctx);
}

static inline int pg_tgt_insert(const struct pg_hal *h, unsigned s)
{
    return PG__HAL_CALL(h, tgt, insert, s);
}
static inline int pg_tgt_remove(const struct pg_hal *h, unsigned s)
{
    return PG__HAL_CALL(h, tgt, remove, s);
}
static inline int pg_tgt_read_uid(const struct pg_hal *h, unsigned s, uint8_t *uid, size_t cap,
                                  size_t *out_len)
{
    return PG__HAL_CALL(h, tgt, read_uid, s, uid, cap, out_len);
}
static inline int pg_tgt_blank_check(const struct pg_hal *h, unsigned s)
{
    return PG__HAL_CALL(h, tgt, blank_check, s);
}
static inline int pg_tgt_otp_rotpk(const struct pg_hal *h, unsigned s, const uint8_t hash[32])
{
    return PG__HAL_CALL(h, tgt, otp_write_rotpk_hash, s, hash);
}
static inline int pg_tgt_keygen_csr(const struct pg_hal *h, unsigned s, const char *cn,
                                    uint8_t *csr, size_t cap, size_t *out_len)
{
    return PG__HAL_CALL(h, tgt, keygen_csr, s, cn, csr, cap, out_len);
}
static inline int pg_tgt_read_pubkey(const struct pg_hal *h, unsigned s, uint8_t pub[65])
{
    return PG__HAL_CALL(h, tgt, read_pubkey, s, pub);
}
static inline int pg_tgt_flash_write(const struct pg_hal *h, unsigned s, uint32_t off,
                                     const uint8_t *d, size_t len)
{
    return PG__HAL_CALL(h, tgt, flash_write, s, off, d, len);
}
static inline int pg_tgt_write_boot_key(const struct pg_hal *h, unsigned s, const uint8_t pub[65])
{
    return PG__HAL_CALL(h, tgt, write_boot_key, s, pub);
}
static inline int pg_tgt_write_cert(const struct pg_hal *h, unsigned s, const uint8_t *der,
                                    size_t len)
{
    return PG__HAL_CALL(h, tgt, write_cert, s, der, len);
}
static inline int pg_tgt_reset(const struct pg_hal *h, unsigned s)
{
    return PG__HAL_CALL(h, tgt, reset, s);
}
static inline int pg_tgt_attest(const struct pg_hal *h, unsigned s, const uint8_t nonce[32],
                                uint8_t *sig, size_t cap, size_t *out_len)
{
    return PG__HAL_CALL(h, tgt, attest, s, nonce, sig, cap, out_len);
}
static inline int pg_tgt_lock(const struct pg_hal *h, unsigned s)
{
    return PG__HAL_CALL(h, tgt, lock, s);
}

/* Version-2 target ops: NOT_SUPPORTED from an older table (shorter struct). */
#define PG__TGT_V2(h) ((h) && (h)->tgt && (h)->tgt->version >= 2u)
static inline int pg_tgt_state(const struct pg_hal *h, unsigned s, enum pg_chip_state *out)
{
    return PG__TGT_V2(h) ? PG__HAL_CALL(h, tgt, state, s, out) : NU_ERR_NOT_SUPPORTED;
}
static inline int pg_tgt_otp_read(const struct pg_hal *h, unsigned s, uint8_t out[32])
{
    return PG__TGT_V2(h) ? PG__HAL_CALL(h, tgt, otp_read_rotpk_hash, s, out) : NU_ERR_NOT_SUPPORTED;
}
static inline int pg_tgt_csr(const struct pg_hal *h, unsigned s, const char *cn, uint8_t *csr,
                             size_t cap, size_t *out_len)
{
    return PG__TGT_V2(h) ? PG__HAL_CALL(h, tgt, csr, s, cn, csr, cap, out_len)
                         : NU_ERR_NOT_SUPPORTED;
}
static inline int pg_tgt_read_cert(const struct pg_hal *h, unsigned s, uint8_t *der, size_t cap,
                                   size_t *out_len)
{
    return PG__TGT_V2(h) ? PG__HAL_CALL(h, tgt, read_cert, s, der, cap, out_len)
                         : NU_ERR_NOT_SUPPORTED;
}

static inline int pg_sha256_init(const struct pg_hal *h, struct pg_sha256 *s)
{
    return PG__HAL_CALL(h, cry, sha256_init, s);
}
static inline int pg_sha256_update(const struct pg_hal *h, struct pg_sha256 *s, const void *d,
                                   size_t len)
{
    return PG__HAL_CALL(h, cry, sha256_update, s, d, len);
}
static inline int pg_sha256_final(const struct pg_hal *h, struct pg_sha256 *s, uint8_t out[32])
{
    return PG__HAL_CALL(h, cry, sha256_final, s, out);
}
static inline int pg_p256_verify(const struct pg_hal *h, const uint8_t pub[65],
                                 const uint8_t digest[32], const uint8_t *sig, size_t sig_len)
{
    return PG__HAL_CALL(h, cry, p256_verify, pub, digest, sig, sig_len);
}
static inline int pg_gcm_decrypt(const struct pg_hal *h, const uint8_t key[32],
                                 const uint8_t nonce[12], const uint8_t *aad, size_t aad_len,
                                 const uint8_t *in, size_t len, uint8_t *out, const uint8_t tag[16])
{
    return PG__HAL_CALL(h, cry, aes256gcm_decrypt, key, nonce, aad, aad_len, in, len, out, tag);
}
static inline int pg_seal_open(const struct pg_hal *h, pg_ecdh_fn ecdh, void *ectx,
                               const uint8_t rpub[65], const uint8_t *aad, size_t aad_len,
                               const uint8_t *box, size_t box_len, uint8_t *out, size_t cap,
                               size_t *out_len)
{
    return PG__HAL_CALL(h, cry, seal_open, ecdh, ectx, rpub, aad, aad_len, box, box_len, out, cap,
                        out_len);
}
static inline int pg_csr_make(const struct pg_hal *h, pg_sign_fn sign, void *sctx,
                              const uint8_t pub[65], const char *cn, const char *ou, const char *o,
                              uint8_t *out, size_t cap, size_t *out_len)
{
    return PG__HAL_CALL(h, cry, csr_make, sign, sctx, pub, cn, ou, o, out, cap, out_len);
}
static inline int pg_csr_check(const struct pg_hal *h, const uint8_t *der, size_t len,
                               const char *cn, uint8_t out_pub[65])
{
    return PG__HAL_CALL(h, cry, csr_check, der, len, cn, out_pub);
}
static inline int pg_cert_check(const struct pg_hal *h, const uint8_t *leaf, size_t leaf_len,
                                const struct pg_der *chain, size_t n, struct pg_cert_facts *out)
{
    return PG__HAL_CALL(h, cry, cert_check, leaf, leaf_len, chain, n, out);
}
static inline int pg_pubkey_parse(const struct pg_hal *h, const uint8_t *in, size_t len,
                                  uint8_t out[65])
{
    return PG__HAL_CALL(h, cry, pubkey_parse, in, len, out);
}
static inline int pg_image_verify(const struct pg_hal *h, pg_read_fn read, void *rctx,
                                  uint32_t size, const uint8_t rotpk[65],
                                  const uint8_t rotpk_hash[32])
{
    return PG__HAL_CALL(h, cry, image_verify, read, rctx, size, rotpk, rotpk_hash);
}
static inline int pg_cert_issue(const struct pg_hal *h, pg_sign_fn sign, void *sctx,
                                const uint8_t *issuer, size_t issuer_len,
                                const uint8_t pub[PG_P256_PUB_LEN], const char *cn, uint64_t now_s,
                                uint8_t *out, size_t cap, size_t *out_len)
{
    return PG__HAL_CALL(h, cry, cert_issue, sign, sctx, issuer, issuer_len, pub, cn, now_s, out,
                        cap, out_len);
}

static inline int pg_rng_fill(const struct pg_hal *h, void *buf, size_t len)
{
    return PG__HAL_CALL(h, rng, fill, buf, len);
}
/* Clock without a port reads 0; the core refuses packages then (no expiry check possible). */
static inline uint64_t pg_now_ms(const struct pg_hal *h)
{
    return h && h->clk && h->clk->now_ms ? h->clk->now_ms(h->clk_ctx) : 0;
}
static inline uint64_t pg_mono_ms(const struct pg_hal *h)
{
    return h && h->clk && h->clk->mono_ms ? h->clk->mono_ms(h->clk_ctx) : 0;
}
static inline void pg_sleep_ms(const struct pg_hal *h, uint32_t ms)
{
    if (h && h->clk && h->clk->sleep_ms)
        h->clk->sleep_ms(h->clk_ctx, ms);
}

#endif
