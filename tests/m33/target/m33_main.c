/*
 * The programmer core on the emulated Cortex-M33, driven by the host bench.
 *
 * Test-only image: the core (programmer-fw/core, unchanged, -Os -Werror) with
 * a HAL whose every op is forwarded to the host (m33_rpc.h), a cooperative
 * scheduler for the socket workers (sched.c) and a server for the core API
 * calls the host's tests make. struct pg_core is static, as on the NuLink3.
 */
#include "m33_rpc.h"
#include "m33_target.h"
#include "pg_core.h"

#include <stdio.h>
#include <string.h>

static struct pg_core t__core;

int m33_seal_vector(const struct pg_hal *hal, struct rpc_msg *in, struct rpc_msg *out);
static int t__exit = -1;
static unsigned t__base; /* rpc depth while the workers run */

/* Give the CPU to the next socket before an op that would block on a board,
 * unless a call is already in flight (the link carries one call at a time). */
static void t__yield(void)
{
    if (sched_in_task() && rpc_depth() == t__base)
        sched_yield();
}

static int t__go(struct rpc_msg *m, struct rpc_msg **r)
{
    return rpc_call(m, r);
}

/* The answer's next bytes field into out[cap] (nothing if it does not fit). */
static void t__out(struct rpc_msg *r, void *out, size_t cap, size_t *out_len)
{
    size_t n = 0;
    if (rpc_get_into(r, out, cap, &n) != 0)
        n = 0;
    if (out_len)
        *out_len = n;
}

static int t__simple(uint32_t op, uint32_t a)
{
    struct rpc_msg *m = rpc_begin(op), *r;
    rpc_put_u32(m, a);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

/* ---- keystore ---------------------------------------------------------------- */

static int ks_keys_generate(void *ctx)
{
    (void)ctx;
    t__yield();
    return t__simple(OP_KS_KEYS_GENERATE, 0);
}

static int ks_pubkey(void *ctx, enum pg_key key, uint8_t out[PG_P256_PUB_LEN])
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_KS_PUBKEY), *r;
    rpc_put_u32(m, (uint32_t)key);
    int rc = t__go(m, &r);
    t__out(r, out, PG_P256_PUB_LEN, NULL);
    rpc_done();
    return rc;
}

static int ks_sign(void *ctx, enum pg_key key, const uint8_t digest[32], uint8_t *sig,
                   size_t *sig_len)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_KS_SIGN), *r;
    rpc_put_u32(m, (uint32_t)key);
    rpc_put_bytes(m, digest, 32);
    rpc_put_u32(m, (uint32_t)*sig_len);
    int rc = t__go(m, &r);
    t__out(r, sig, *sig_len, sig_len);
    rpc_done();
    return rc;
}

static int ks_ecdh(void *ctx, enum pg_key key, const uint8_t peer[PG_P256_PUB_LEN], uint8_t out[32])
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_KS_ECDH), *r;
    rpc_put_u32(m, (uint32_t)key);
    rpc_put_bytes(m, peer, PG_P256_PUB_LEN);
    int rc = t__go(m, &r);
    t__out(r, out, 32, NULL);
    rpc_done();
    return rc;
}

static int ks_counter_read(void *ctx, const char *job, uint32_t *out)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_KS_COUNTER_READ), *r;
    rpc_put_str(m, job);
    int rc = t__go(m, &r);
    *out = rpc_get_u32(r);
    rpc_done();
    return rc;
}

static int ks_counter_inc(void *ctx, const char *job, uint32_t limit, uint32_t *out)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_KS_COUNTER_INC), *r;
    rpc_put_str(m, job);
    rpc_put_u32(m, limit);
    int rc = t__go(m, &r);
    *out = rpc_get_u32(r);
    rpc_done();
    return rc;
}

static int ks_blob_get(void *ctx, const char *name, uint8_t *buf, size_t cap, size_t *out_len)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_KS_BLOB_GET), *r;
    rpc_put_str(m, name);
    rpc_put_u32(m, (uint32_t)cap);
    int rc = t__go(m, &r);
    uint32_t n = rpc_get_u32(r);
    t__out(r, buf, cap, NULL);
    if (out_len)
        *out_len = n;
    rpc_done();
    return rc;
}

static int ks_blob_put(void *ctx, const char *name, const uint8_t *data, size_t len)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_KS_BLOB_PUT), *r;
    rpc_put_str(m, name);
    rpc_put_bytes(m, data, len);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

static int ks_attest(void *ctx, const uint8_t nonce[PG_ATTEST_NONCE_LEN],
                     struct pg_attestation *out)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_KS_ATTEST), *r;
    rpc_put_bytes(m, nonce, PG_ATTEST_NONCE_LEN);
    int rc = t__go(m, &r);
    if (rc == NU_OK && (rpc_get_into(r, out->stmt, sizeof(out->stmt), &out->stmt_len) != 0 ||
                        rpc_get_into(r, out->sig, sizeof(out->sig), &out->sig_len) != 0 ||
                        rpc_get_into(r, out->cert, sizeof(out->cert), &out->cert_len) != 0))
        rc = NU_ERR_TOO_LARGE;
    rpc_done();
    return rc;
}

static int ks_line_key_generate(void *ctx)
{
    (void)ctx;
    t__yield();
    return t__simple(OP_KS_LINE_KEY_GENERATE, 0);
}

static const struct pg_keystore_ops t_ks = {
    PG_HAL_VERSION,       ks_keys_generate, ks_pubkey,   ks_sign,     ks_ecdh,
    ks_counter_read,      ks_counter_inc,   ks_blob_get, ks_blob_put, ks_attest,
    ks_line_key_generate,
};

/* ---- flash -------------------------------------------------------------------- */

static int fl_size(void *ctx, enum pg_flash_area a, uint32_t *out)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_FL_SIZE), *r;
    rpc_put_u32(m, (uint32_t)a);
    int rc = t__go(m, &r);
    *out = rpc_get_u32(r);
    rpc_done();
    return rc;
}

static int fl_read(void *ctx, enum pg_flash_area a, uint32_t off, uint8_t *buf, size_t len)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_FL_READ), *r;
    rpc_put_u32(m, (uint32_t)a);
    rpc_put_u32(m, off);
    rpc_put_u32(m, (uint32_t)len);
    int rc = t__go(m, &r);
    t__out(r, buf, len, NULL);
    rpc_done();
    return rc;
}

static int fl_write(void *ctx, enum pg_flash_area a, uint32_t off, const uint8_t *data, size_t len)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_FL_WRITE), *r;
    rpc_put_u32(m, (uint32_t)a);
    rpc_put_u32(m, off);
    rpc_put_bytes(m, data, len);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

static int fl_erase(void *ctx, enum pg_flash_area a)
{
    (void)ctx;
    t__yield();
    return t__simple(OP_FL_ERASE, (uint32_t)a);
}

static const struct pg_flash_ops t_flash = {PG_HAL_VERSION, fl_size, fl_read, fl_write, fl_erase};

/* ---- transport ------------------------------------------------------------------ */

#define T_SUBS 4
static struct {
    pg_msg_cb cb;
    void *ctx;
} t__subs[T_SUBS];

static int tp_publish(void *ctx, const char *topic, const uint8_t *p, size_t len, int qos,
                      int retain)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_TP_PUBLISH), *r;
    rpc_put_str(m, topic);
    rpc_put_bytes(m, p, len);
    rpc_put_u32(m, (uint32_t)qos);
    rpc_put_u32(m, (uint32_t)retain);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

static int tp_request(void *ctx, const char *topic, const uint8_t *p, size_t len,
                      uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_TP_REQUEST), *r;
    rpc_put_str(m, topic);
    rpc_put_bytes(m, p, len);
    rpc_put_u32(m, timeout_ms);
    rpc_put_u32(m, (uint32_t)cap);
    int rc = t__go(m, &r);
    uint32_t n = rpc_get_u32(r);
    t__out(r, resp, cap, NULL);
    if (out_len)
        *out_len = n;
    rpc_done();
    return rc;
}

static void t__str(struct rpc_msg *r, char *out, size_t cap)
{
    const char *s = rpc_get_str(r);
    size_t n = s ? strlen(s) : 0;
    if (n >= cap)
        n = 0; /* too long: "" (the core refuses it) */
    if (n)
        memcpy(out, s, n);
    out[n] = '\0';
}

static int tp_request_signed(void *ctx, const char *topic, const uint8_t *p, size_t len,
                             uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len,
                             char *reply_topic, size_t topic_cap, char *sig, size_t sig_cap)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_TP_REQUEST_SIGNED), *r;
    rpc_put_str(m, topic);
    rpc_put_bytes(m, p, len);
    rpc_put_u32(m, timeout_ms);
    rpc_put_u32(m, (uint32_t)cap);
    int rc = t__go(m, &r);
    uint32_t n = rpc_get_u32(r);
    t__out(r, resp, cap, NULL);
    t__str(r, reply_topic, topic_cap);
    t__str(r, sig, sig_cap);
    if (out_len)
        *out_len = n;
    rpc_done();
    return rc;
}

static int tp_subscribe(void *ctx, const char *filter, pg_msg_cb cb, void *cb_ctx)
{
    (void)ctx;
    unsigned i = 0;
    while (i < T_SUBS && t__subs[i].cb && !(t__subs[i].cb == cb && t__subs[i].ctx == cb_ctx))
        i++;
    if (i == T_SUBS)
        return NU_ERR_NOMEM;
    t__subs[i].cb = cb;
    t__subs[i].ctx = cb_ctx;
    struct rpc_msg *m = rpc_begin(OP_TP_SUBSCRIBE), *r;
    rpc_put_str(m, filter);
    rpc_put_u32(m, i);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

static const struct pg_transport_ops t_tp = {
    PG_HAL_VERSION, tp_publish, tp_request, tp_subscribe, tp_request_signed,
};

/* ---- target link ------------------------------------------------------------------ */

static int tg_sock(uint32_t op, unsigned sock)
{
    t__yield();
    return t__simple(op, sock);
}

static int tg_insert(void *ctx, unsigned s)
{
    (void)ctx;
    return tg_sock(OP_TG_INSERT, s);
}
static int tg_remove(void *ctx, unsigned s)
{
    (void)ctx;
    return tg_sock(OP_TG_REMOVE, s);
}
static int tg_blank(void *ctx, unsigned s)
{
    (void)ctx;
    return tg_sock(OP_TG_BLANK, s);
}
static int tg_reset(void *ctx, unsigned s)
{
    (void)ctx;
    return tg_sock(OP_TG_RESET, s);
}
static int tg_lock(void *ctx, unsigned s)
{
    (void)ctx;
    return tg_sock(OP_TG_LOCK, s);
}

/* sock + one bytes field in, status out */
static int tg_put(uint32_t op, unsigned sock, const void *p, size_t len)
{
    t__yield();
    struct rpc_msg *m = rpc_begin(op), *r;
    rpc_put_u32(m, sock);
    rpc_put_bytes(m, p, len);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

static int tg_otp(void *ctx, unsigned s, const uint8_t h[32])
{
    (void)ctx;
    return tg_put(OP_TG_OTP, s, h, 32);
}

static int tg_boot_key(void *ctx, unsigned s, const uint8_t pub[PG_P256_PUB_LEN])
{
    (void)ctx;
    return tg_put(OP_TG_BOOT_KEY, s, pub, PG_P256_PUB_LEN);
}

static int tg_write_cert(void *ctx, unsigned s, const uint8_t *der, size_t len)
{
    (void)ctx;
    return tg_put(OP_TG_WRITE_CERT, s, der, len);
}

static int tg_flash_write(void *ctx, unsigned s, uint32_t off, const uint8_t *data, size_t len)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_TG_FLASH_WRITE), *r;
    rpc_put_u32(m, s);
    rpc_put_u32(m, off);
    rpc_put_bytes(m, data, len);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

/* sock + optional input + capacity in, bytes out */
static int tg_get(uint32_t op, unsigned sock, const void *in, size_t in_len, uint8_t *out,
                  size_t cap, size_t *out_len)
{
    t__yield();
    struct rpc_msg *m = rpc_begin(op), *r;
    rpc_put_u32(m, sock);
    rpc_put_bytes(m, in, in_len);
    rpc_put_u32(m, (uint32_t)cap);
    int rc = t__go(m, &r);
    t__out(r, out, cap, out_len);
    rpc_done();
    return rc;
}

static int tg_read_uid(void *ctx, unsigned s, uint8_t *out, size_t cap, size_t *out_len)
{
    (void)ctx;
    return tg_get(OP_TG_READ_UID, s, NULL, 0, out, cap, out_len);
}

static int tg_keygen_csr(void *ctx, unsigned s, const char *cn, uint8_t *out, size_t cap,
                         size_t *out_len)
{
    (void)ctx;
    return tg_get(OP_TG_KEYGEN_CSR, s, cn, strlen(cn) + 1, out, cap, out_len);
}

static int tg_read_pub(void *ctx, unsigned s, uint8_t out[PG_P256_PUB_LEN])
{
    (void)ctx;
    return tg_get(OP_TG_READ_PUB, s, NULL, 0, out, PG_P256_PUB_LEN, NULL);
}

static int tg_attest(void *ctx, unsigned s, const uint8_t nonce[32], uint8_t *sig, size_t cap,
                     size_t *out_len)
{
    (void)ctx;
    return tg_get(OP_TG_ATTEST, s, nonce, 32, sig, cap, out_len);
}

static int tg_state(void *ctx, unsigned s, enum pg_chip_state *out_state)
{
    (void)ctx;
    t__yield();
    struct rpc_msg *m = rpc_begin(OP_TG_STATE), *r;
    rpc_put_u32(m, s);
    int rc = t__go(m, &r);
    *out_state = (enum pg_chip_state)rpc_get_u32(r);
    rpc_done();
    return rc;
}

static int tg_otp_read(void *ctx, unsigned s, uint8_t out[32])
{
    (void)ctx;
    return tg_get(OP_TG_OTP_READ, s, NULL, 0, out, 32, NULL);
}

static int tg_csr(void *ctx, unsigned s, const char *cn, uint8_t *out, size_t cap, size_t *out_len)
{
    (void)ctx;
    return tg_get(OP_TG_CSR, s, cn, strlen(cn) + 1, out, cap, out_len);
}

static int tg_read_cert(void *ctx, unsigned s, uint8_t *out, size_t cap, size_t *out_len)
{
    (void)ctx;
    return tg_get(OP_TG_READ_CERT, s, NULL, 0, out, cap, out_len);
}

static const struct pg_target_ops t_tgt = {
    PG_HAL_VERSION, tg_insert,   tg_remove,      tg_read_uid, tg_blank,      tg_otp,
    tg_keygen_csr,  tg_read_pub, tg_flash_write, tg_boot_key, tg_write_cert, tg_reset,
    tg_attest,      tg_lock,     tg_state,       tg_otp_read, tg_csr,        tg_read_cert,
};

/* ---- crypto (on the host: wolfCrypt through the POSIX port) ------------------------ */

static int cr_sha(uint32_t op, struct pg_sha256 *s, const void *data, size_t len, uint8_t *out)
{
    struct rpc_msg *m = rpc_begin(op), *r;
    rpc_put_bytes(m, s->opaque, sizeof(s->opaque));
    rpc_put_bytes(m, data, len);
    int rc = t__go(m, &r);
    t__out(r, s->opaque, sizeof(s->opaque), NULL);
    if (out)
        t__out(r, out, 32, NULL);
    rpc_done();
    return rc;
}

static int cr_sha_init(void *ctx, struct pg_sha256 *s)
{
    (void)ctx;
    return cr_sha(OP_CR_SHA_INIT, s, NULL, 0, NULL);
}

static int cr_sha_update(void *ctx, struct pg_sha256 *s, const void *d, size_t len)
{
    (void)ctx;
    return cr_sha(OP_CR_SHA_UPDATE, s, d, len, NULL);
}

static int cr_sha_final(void *ctx, struct pg_sha256 *s, uint8_t out[32])
{
    (void)ctx;
    return cr_sha(OP_CR_SHA_FINAL, s, NULL, 0, out);
}

static int cr_verify(void *ctx, const uint8_t pub[PG_P256_PUB_LEN], const uint8_t digest[32],
                     const uint8_t *sig, size_t sig_len)
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_VERIFY), *r;
    rpc_put_bytes(m, pub, PG_P256_PUB_LEN);
    rpc_put_bytes(m, digest, 32);
    rpc_put_bytes(m, sig, sig_len);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

static int cr_gcm(void *ctx, const uint8_t key[32], const uint8_t nonce[12], const uint8_t *aad,
                  size_t aad_len, const uint8_t *in, size_t len, uint8_t *out,
                  const uint8_t tag[16])
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_GCM_DECRYPT), *r;
    rpc_put_bytes(m, key, 32);
    rpc_put_bytes(m, nonce, 12);
    rpc_put_bytes(m, aad, aad_len);
    rpc_put_bytes(m, in, len);
    rpc_put_bytes(m, tag, 16);
    int rc = t__go(m, &r);
    t__out(r, out, len, NULL);
    rpc_done();
    return rc;
}

static int cr_seal_open(void *ctx, pg_ecdh_fn ecdh, void *ectx, const uint8_t rpub[PG_P256_PUB_LEN],
                        const uint8_t *aad, size_t aad_len, const uint8_t *box, size_t box_len,
                        uint8_t *out, size_t cap, size_t *out_len)
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_SEAL_OPEN), *r;
    rpc_put_u32(m, (uint32_t)(uintptr_t)ecdh);
    rpc_put_u32(m, (uint32_t)(uintptr_t)ectx);
    rpc_put_bytes(m, rpub, PG_P256_PUB_LEN);
    rpc_put_bytes(m, aad, aad_len);
    rpc_put_bytes(m, box, box_len);
    rpc_put_u32(m, (uint32_t)cap);
    int rc = t__go(m, &r);
    t__out(r, out, cap, out_len);
    rpc_done();
    return rc;
}

static int cr_csr_make(void *ctx, pg_sign_fn sign, void *sctx, const uint8_t pub[PG_P256_PUB_LEN],
                       const char *cn, const char *ou, const char *o, uint8_t *out, size_t cap,
                       size_t *out_len)
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_CSR_MAKE), *r;
    rpc_put_u32(m, (uint32_t)(uintptr_t)sign);
    rpc_put_u32(m, (uint32_t)(uintptr_t)sctx);
    rpc_put_bytes(m, pub, PG_P256_PUB_LEN);
    rpc_put_str(m, cn);
    rpc_put_str(m, ou);
    rpc_put_str(m, o);
    rpc_put_u32(m, (uint32_t)cap);
    int rc = t__go(m, &r);
    t__out(r, out, cap, out_len);
    rpc_done();
    return rc;
}

static int cr_csr_check(void *ctx, const uint8_t *der, size_t len, const char *cn,
                        uint8_t out_pub[PG_P256_PUB_LEN])
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_CSR_CHECK), *r;
    rpc_put_bytes(m, der, len);
    rpc_put_str(m, cn);
    int rc = t__go(m, &r);
    t__out(r, out_pub, PG_P256_PUB_LEN, NULL);
    rpc_done();
    return rc;
}

static int cr_cert_check(void *ctx, const uint8_t *leaf, size_t leaf_len,
                         const struct pg_der *chain, size_t n, struct pg_cert_facts *out)
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_CERT_CHECK), *r;
    rpc_put_bytes(m, leaf, leaf_len);
    rpc_put_u32(m, (uint32_t)n);
    for (size_t i = 0; i < n; i++)
        rpc_put_bytes(m, chain[i].der, chain[i].len);
    int rc = t__go(m, &r);
    if (out) {
        t__out(r, out->pub, sizeof(out->pub), NULL);
        t__out(r, out->serial_hex, sizeof(out->serial_hex), NULL);
        t__out(r, out->cn, sizeof(out->cn), NULL);
    }
    rpc_done();
    return rc;
}

static int cr_pubkey_parse(void *ctx, const uint8_t *in, size_t len, uint8_t out[PG_P256_PUB_LEN])
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_PUBKEY_PARSE), *r;
    rpc_put_bytes(m, in, len);
    int rc = t__go(m, &r);
    t__out(r, out, PG_P256_PUB_LEN, NULL);
    rpc_done();
    return rc;
}

static int cr_image_verify(void *ctx, pg_read_fn read, void *rctx, uint32_t size,
                           const uint8_t rotpk[PG_P256_PUB_LEN], const uint8_t rotpk_hash[32])
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_IMAGE_VERIFY), *r;
    rpc_put_u32(m, (uint32_t)(uintptr_t)read);
    rpc_put_u32(m, (uint32_t)(uintptr_t)rctx);
    rpc_put_u32(m, size);
    rpc_put_bytes(m, rotpk, PG_P256_PUB_LEN);
    rpc_put_bytes(m, rotpk_hash, 32);
    int rc = t__go(m, &r);
    rpc_done();
    return rc;
}

/* The certificate is built on the host; its signature is made here, by the
 * core's signer (the KeyStore's line-CA key), through OP_CB_SIGN. */
static int cr_cert_issue(void *ctx, pg_sign_fn sign, void *sctx, const uint8_t *issuer,
                         size_t issuer_len, const uint8_t pub[PG_P256_PUB_LEN], const char *cn,
                         uint64_t now_s, uint8_t *out, size_t cap, size_t *out_len)
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_CR_CERT_ISSUE), *r;
    rpc_put_u32(m, (uint32_t)(uintptr_t)sign);
    rpc_put_u32(m, (uint32_t)(uintptr_t)sctx);
    rpc_put_bytes(m, issuer, issuer_len);
    rpc_put_bytes(m, pub, PG_P256_PUB_LEN);
    rpc_put_str(m, cn);
    rpc_put_u64(m, now_s);
    rpc_put_u32(m, (uint32_t)cap);
    int rc = t__go(m, &r);
    t__out(r, out, cap, out_len);
    rpc_done();
    return rc;
}

static const struct pg_crypto_ops t_cry = {
    PG_HAL_VERSION,  cr_sha_init,     cr_sha_update, cr_sha_final, cr_verify,
    cr_gcm,          cr_seal_open,    cr_csr_make,   cr_csr_check, cr_cert_check,
    cr_pubkey_parse, cr_image_verify, cr_cert_issue,
};

/* ---- clock, rng, log ------------------------------------------------------------------ */

static uint64_t t__clock(uint32_t op)
{
    struct rpc_msg *m = rpc_begin(op), *r;
    t__go(m, &r);
    uint64_t v = rpc_get_u64(r);
    rpc_done();
    return v;
}

static uint64_t clk_now(void *ctx)
{
    (void)ctx;
    return t__clock(OP_CLK_NOW);
}

static uint64_t clk_mono(void *ctx)
{
    (void)ctx;
    return t__clock(OP_CLK_MONO);
}

static void clk_sleep(void *ctx, uint32_t ms)
{
    (void)ctx;
    t__yield();
    t__simple(OP_CLK_SLEEP, ms);
}

static const struct pg_clock_ops t_clk = {PG_HAL_VERSION, clk_now, clk_mono, clk_sleep};

static int rng_fill(void *ctx, void *buf, size_t len)
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_RNG_FILL), *r;
    rpc_put_u32(m, (uint32_t)len);
    int rc = t__go(m, &r);
    t__out(r, buf, len, NULL);
    rpc_done();
    return rc;
}

static const struct pg_rng_ops t_rng = {PG_HAL_VERSION, rng_fill};

static void log_write(void *ctx, enum pg_log_level level, const char *line)
{
    (void)ctx;
    struct rpc_msg *m = rpc_begin(OP_LOG_WRITE), *r;
    rpc_put_u32(m, (uint32_t)level);
    rpc_put_str(m, line);
    t__go(m, &r);
    rpc_done();
}

static const struct pg_log_ops t_log = {PG_HAL_VERSION, log_write};

static const struct pg_hal t__hal = {
    .version = PG_HAL_VERSION,
    .ks = &t_ks,
    .flash = &t_flash,
    .tp = &t_tp,
    .tgt = &t_tgt,
    .cry = &t_cry,
    .clk = &t_clk,
    .rng = &t_rng,
    .log = &t_log,
};

/* ---- the core's API and callbacks, for the host ------------------------------------ */

static char t__id[PG_ID_MAX + 1], t__fwv[64];

static int t__init(struct rpc_msg *in)
{
    const char *id = rpc_get_str(in), *fwv;
    struct pg_config cfg = {.programmer_id = t__id};
    snprintf(t__id, sizeof(t__id), "%s", id ? id : "");
    cfg.n_sockets = rpc_get_u32(in);
    cfg.request_timeout_ms = rpc_get_u32(in);
    cfg.retries = rpc_get_u32(in);
    cfg.retry_delay_ms = rpc_get_u32(in);
    fwv = rpc_get_str(in);
    if (fwv) {
        snprintf(t__fwv, sizeof(t__fwv), "%s", fwv);
        cfg.firmware_version = t__fwv;
    }
    return pg_core_init(&t__core, &t__hal, &cfg);
}

static void t__worker(unsigned sock)
{
    struct pg_result res;
    while (pg_socket_run(&t__core, sock, &res) == NU_OK) {
    }
}

static int t__socket_run(struct rpc_msg *in, struct rpc_msg *out)
{
    struct pg_result res;
    memset(&res, 0, sizeof(res));
    int rc = pg_socket_run(&t__core, rpc_get_u32(in), &res);
    rpc_put_bytes(out, res.uid, res.uid_len);
    rpc_put_u32(out, (uint32_t)res.provisioned);
    rpc_put_u32(out, (uint32_t)res.resumed);
    rpc_put_u32(out, (uint32_t)res.already_done);
    rpc_put_u32(out, (uint32_t)res.held);
    rpc_put_u32(out, (uint32_t)res.error);
    rpc_put_str(out, res.step);
    rpc_put_str(out, res.serial);
    return rc;
}

static void t__report(struct rpc_msg *out)
{
    rpc_put_u32(out, (uint32_t)sizeof(struct pg_core));
    rpc_put_u32(out, (uint32_t)m33_control_peak());
    rpc_put_u32(out, (uint32_t)m33_control_size());
    rpc_put_u32(out, SCHED_STACK);
    rpc_put_u32(out, SCHED_MAX);
    for (unsigned i = 0; i < SCHED_MAX; i++)
        rpc_put_u32(out, (uint32_t)sched_peak(i));
    rpc_put_u32(out, (uint32_t)sched_switches());
    sh_printf("m33: control stack peak %u of %u bytes; worker stack peaks",
              (unsigned)m33_control_peak(), (unsigned)m33_control_size());
    for (unsigned i = 0; i < SCHED_MAX; i++)
        sh_printf(" %u", (unsigned)sched_peak(i));
    sh_printf(" of %u; %lu task switches\n", SCHED_STACK, sched_switches());
}

/* Callbacks the core gave a HAL op, called back by the host. The pointers
 * are the ones this image sent with the op. */
static int t__callback(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    uintptr_t fn = rpc_get_u32(in), ctx = rpc_get_u32(in);
    size_t n = 0;
    const uint8_t *p = NULL;
    int rc = NU_ERR_INVALID_ARG;
    if (op == OP_CB_ECDH) {
        uint8_t peer[PG_P256_PUB_LEN], z[32];
        if (rpc_get_into(in, peer, sizeof(peer), &n) == 0 && n == sizeof(peer))
            rc = ((pg_ecdh_fn)fn)((void *)ctx, peer, z);
        rpc_put_bytes(out, z, rc == NU_OK ? 32 : 0);
    } else if (op == OP_CB_SIGN) {
        uint8_t d[32], sig[PG_SIG_MAX + 8];
        size_t sl = rpc_get_u32(in);
        if (sl > sizeof(sig))
            sl = sizeof(sig);
        if (rpc_get_into(in, d, sizeof(d), &n) == 0 && n == 32)
            rc = ((pg_sign_fn)fn)((void *)ctx, d, sig, &sl);
        rpc_put_bytes(out, sig, rc == NU_OK ? sl : 0);
    } else if (op == OP_CB_READ) {
        static uint8_t buf[RPC_MAX - 64];
        uint32_t off = rpc_get_u32(in), len = rpc_get_u32(in);
        rc = len <= sizeof(buf) ? ((pg_read_fn)fn)((void *)ctx, off, buf, len) : NU_ERR_TOO_LARGE;
        rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
    } else if (op == OP_CB_MSG) {
        /* fn = subscription slot */
        const char *topic = rpc_get_str(in);
        p = rpc_get_bytes(in, &n);
        if (fn < T_SUBS && t__subs[fn].cb && topic) {
            t__subs[fn].cb(t__subs[fn].ctx, topic, p, n);
            rc = NU_OK;
        }
        (void)ctx;
    }
    return rc;
}

/* The rest of pg_core.h (m33_host.c forwards all of it). */
static int t__api_rest(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    static uint8_t buf[PG_PACKAGE_MAX];
    uint32_t a = rpc_get_u32(in), cap;
    size_t n = 0;
    int rc = NU_OK;
    switch (op) {
    case OP_C_IDENTITY_CERT:
        rc = pg_core_identity_cert(&t__core, buf, a < sizeof(buf) ? a : sizeof(buf), &n);
        rpc_put_u32(out, (uint32_t)n);
        rpc_put_bytes(out, buf, rc == NU_OK ? n : 0);
        return rc;
    case OP_C_STOP:
        pg_core_stop(&t__core, (enum pg_stop)a);
        return NU_OK;
    case OP_C_ON_MESSAGE: {
        in->pos -= 4; /* no leading u32: topic, payload */
        const char *topic = rpc_get_str(in);
        const uint8_t *p = rpc_get_bytes(in, &n);
        pg_core_on_message(&t__core, topic ? topic : "", p, n);
        return NU_OK;
    }
    case OP_C_STATUS_PUBLISH:
        return pg_core_status_publish(&t__core, (enum pg_prog_state)a);
    case OP_C_STATUS_ENCODE:
        cap = rpc_get_u32(in);
        rc = pg_core_status_encode(&t__core, (enum pg_prog_state)a, buf,
                                   cap < sizeof(buf) ? cap : sizeof(buf), &n);
        rpc_put_bytes(out, buf, rc == NU_OK ? n : 0);
        return rc;
    case OP_C_TOPIC_STATUS:
        rc = pg_core_topic_status(&t__core, (char *)buf, a < sizeof(buf) ? a : sizeof(buf));
        rpc_put_bytes(out, buf, rc == NU_OK ? strlen((char *)buf) + 1 : 0);
        return rc;
    }
    return NU_ERR_NOT_SUPPORTED;
}

int m33_dispatch(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    int rc = NU_OK, action = 0;
    uint32_t a = 0, b = 0;
    switch (op) {
    case OP_C_INIT:
        return t__init(in);
    case OP_C_DEINIT:
        pg_core_deinit(&t__core);
        return NU_OK;
    case OP_C_ENROLLED:
        return pg_core_enrolled(&t__core);
    case OP_C_JOURNAL_FLUSH:
        return pg_core_journal_flush(&t__core);
    case OP_C_UNITS_KEPT:
        rpc_put_u32(out, pg_core_units_kept(&t__core));
        return NU_OK;
    case OP_C_LEASE_COUNTS: {
        struct pg_lease_counts lc;
        pg_core_lease_counts(&t__core, &lc);
        rpc_put_u32(out, lc.issued);
        rpc_put_u32(out, lc.uploaded);
        rpc_put_u32(out, lc.pending);
        rpc_put_u32(out, lc.units);
        return NU_OK;
    }
    case OP_C_LEASE_SYNC:
        return pg_core_lease_sync(&t__core);
    case OP_C_LINK_NOTE:
        pg_core_link_note(&t__core, (int)rpc_get_u32(in));
        return NU_OK;
    case OP_C_ENROLL: {
        const char *relay = rpc_get_str(in), *token = rpc_get_str(in);
        size_t n = 0;
        const uint8_t *h = rpc_get_bytes(in, &n);
        size_t mlen = 0;
        const uint8_t *manifest = rpc_get_bytes(in, &mlen);
        return pg_core_enroll(&t__core, relay, token, n == 32 ? h : NULL, mlen ? manifest : NULL,
                              mlen);
    }
    case OP_C_PACKAGE_LOAD: {
        size_t n = 0;
        const uint8_t *p = rpc_get_bytes(in, &n);
        return pg_core_package_load(&t__core, p, n);
    }
    case OP_C_JOB_ID:
        rpc_put_str(out, pg_core_job_id(&t__core));
        return NU_OK;
    case OP_C_FW_FETCH:
        return pg_core_firmware_fetch(&t__core);
    case OP_C_FW_READY:
        return pg_core_firmware_ready(&t__core);
    case OP_C_PROD_BEGIN:
        return pg_core_production_begin(&t__core);
    case OP_C_SOCKET_RUN:
        return t__socket_run(in, out);
    case OP_C_PROD_END:
        return (int)pg_core_production_end(&t__core);
    case OP_C_COUNTS:
        pg_core_counts(&t__core, &a, &b);
        rpc_put_u32(out, a);
        rpc_put_u32(out, b);
        return NU_OK;
    case OP_C_SUBSCRIBE:
        return pg_core_subscribe(&t__core);
    case OP_C_POLL:
        rc = pg_core_poll(&t__core, &action);
        rpc_put_u32(out, (uint32_t)action);
        return rc;
    case OP_C_RUN_WORKERS:
        t__base = rpc_depth();
        sched_run(rpc_get_u32(in), t__worker);
        return NU_OK;
    case OP_C_IDENTITY_CERT:
    case OP_C_STOP:
    case OP_C_ON_MESSAGE:
    case OP_C_STATUS_PUBLISH:
    case OP_C_STATUS_ENCODE:
    case OP_C_TOPIC_STATUS:
        return t__api_rest(op, in, out);
    case OP_CB_ECDH:
    case OP_CB_SIGN:
    case OP_CB_READ:
    case OP_CB_MSG:
        return t__callback(op, in, out);
    case OP_T_REPORT:
        t__report(out);
        return NU_OK;
    case OP_T_VECTORS:
        return m33_seal_vector(&t__hal, in, out);
    case OP_T_EXIT:
        t__exit = (int)rpc_get_u32(in);
        return NU_OK;
    default:
        return NU_ERR_NOT_SUPPORTED;
    }
}

/* ---- link: two host FIFOs opened through semihosting ----------------------------------- */

static int t__up = -1, t__down = -1;

int m33_link_send(const void *p, size_t len)
{
    return sh_write(t__up, p, len);
}

int m33_link_recv(void *p, size_t len)
{
    uint8_t *b = p;
    while (len) {
        int n = sh_read(t__down, b, len);
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

void rpc_fatal(const char *why)
{
    sh_printf("m33: rpc: %s\n", why);
    sh_exit(4);
}

int main(void)
{
    /* The bench made both FIFOs in qemu's working directory. */
    t__up = sh_open("m33.up", 5);     /* "wb" */
    t__down = sh_open("m33.down", 1); /* "rb" */
    if (t__up < 0 || t__down < 0) {
        sh_puts("m33: cannot open the link FIFOs (m33.up, m33.down)\n");
        return 2;
    }
    sh_printf("m33: programmer core up (struct pg_core %u bytes, %u sockets max)\n",
              (unsigned)sizeof(struct pg_core), (unsigned)PG_MAX_SOCKETS);
    while (t__exit < 0)
        rpc_serve_one();
    return t__exit;
}
