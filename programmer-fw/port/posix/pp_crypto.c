/*
 * pp_crypto: the core's crypto ops on libnusec (wolfCrypt / wolfSSL). The port
 * may allocate (the core may not): libnusec returns heap buffers, copied into
 * the core's bounded buffers here and wiped.
 */
#include "pp_port.h"

#include "nu_crypto.h"
#include "nu_seal.h"
#include "nu_util.h"
#include "nu_x509.h"
#if NUSEC_HAVE_MCUBOOT
#include "nu_mcuboot.h"
#endif

#include <stdio.h>
#include <stdlib.h>
#include <pthread.h>
#include <string.h>

_Static_assert(sizeof(struct nu_sha256_ctx) <= sizeof(struct pg_sha256),
               "pg_sha256 must hold a nu_sha256_ctx");
_Static_assert(_Alignof(struct nu_sha256_ctx) <= _Alignof(struct pg_sha256), "pg_sha256 alignment");

static struct nu_sha256_ctx *cry__sha(struct pg_sha256 *s)
{
    return (struct nu_sha256_ctx *)(void *)s->opaque;
}

static int cry__sha_init(void *ctx, struct pg_sha256 *s)
{
    (void)ctx;
    return nu_sha256_init(cry__sha(s));
}

static int cry__sha_update(void *ctx, struct pg_sha256 *s, const void *d, size_t len)
{
    (void)ctx;
    return nu_sha256_update(cry__sha(s), d, len);
}

static int cry__sha_final(void *ctx, struct pg_sha256 *s, uint8_t out[32])
{
    (void)ctx;
    return nu_sha256_final(cry__sha(s), out);
}

static int cry__verify(void *ctx, const uint8_t pub[65], const uint8_t digest[32],
                       const uint8_t *sig, size_t sig_len)
{
    (void)ctx;
    if (!sig || sig_len == 0 || sig_len > NU_P256_SIG_MAX)
        return NU_ERR_DECODE;
    return nu_p256_verify(pub, digest, sig, sig_len);
}

static int cry__gcm_decrypt(void *ctx, const uint8_t key[32], const uint8_t nonce[12],
                            const uint8_t *aad, size_t aad_len, const uint8_t *in, size_t len,
                            uint8_t *out, const uint8_t tag[16])
{
    (void)ctx;
    return nu_aes256gcm_decrypt(key, nonce, aad, aad_len, in, len, out, tag);
}

static int cry__seal_open(void *ctx, pg_ecdh_fn ecdh, void *ectx, const uint8_t rpub[65],
                          const uint8_t *aad, size_t aad_len, const uint8_t *box, size_t box_len,
                          uint8_t *out, size_t cap, size_t *out_len)
{
    (void)ctx;
    struct nu_seal_recipient r = {.ctx = ectx, .ecdh = ecdh};
    memcpy(r.pub, rpub, sizeof(r.pub));
    uint8_t *plain = NULL;
    size_t len = 0;
    int rc = nu_seal_open(&r, aad, aad_len, box, box_len, &plain, &len);
    if (rc == NU_OK && len > cap)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK) {
        memcpy(out, plain, len);
        *out_len = len;
    }
    nu_seal_free(plain, len);
    return rc;
}

/* The core's buffers are its own (no heap in its loop): copy what libnusec
 * made into out[cap] when rc is NU_OK and it fits, and free it either way. */
static int cry__der_out(int rc, uint8_t *der, size_t len, uint8_t *out, size_t cap, size_t *out_len)
{
    if (rc == NU_OK && len > cap)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK) {
        memcpy(out, der, len);
        *out_len = len;
    }
    free(der);
    return rc;
}

static int cry__csr_make(void *ctx, pg_sign_fn sign, void *sctx, const uint8_t pub[65],
                         const char *cn, const char *ou, const char *o, uint8_t *out, size_t cap,
                         size_t *out_len)
{
    (void)ctx;
    struct nu_signer s = {.ctx = sctx, .sign_digest = sign};
    memcpy(s.pub, pub, sizeof(s.pub));
    uint8_t *der = NULL;
    size_t len = 0;
    int rc = nu_x509_csr_make(&s, cn, ou, o, &der, &len);
    return cry__der_out(rc, der, len, out, cap, out_len);
}

/* The cloud's device profile (cloud_cert.c), issued by the lease's line CA:
 * the signer's public key is the issuer certificate's, which nu_x509_issue
 * checks (a wrong key would make a certificate nobody can verify). */
static int cry__cert_issue(void *ctx, pg_sign_fn sign, void *sctx, const uint8_t *issuer,
                           size_t issuer_len, const uint8_t pub[65], const char *cn, uint64_t now_s,
                           uint8_t *out, size_t cap, size_t *out_len)
{
    (void)ctx;
    struct nu_x509_cert_info ca;
    struct nu_signer s = {.ctx = sctx, .sign_digest = sign};
    struct nu_x509_issue_req ir = {
        .cn = cn,
        .ou = "device",
        .o = "NuSEC",
        .not_before = (int64_t)now_s - 3600,
        .not_after = (int64_t)now_s + 20LL * 365 * 24 * 3600 + 5 * 24 * 3600,
        .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        .ext_key_usage = NU_X509_EKU_CLIENT_AUTH,
    };
    uint8_t *der = NULL;
    size_t len = 0;
    int rc = nu_x509_cert_info(issuer, issuer_len, &ca);
    if (rc == NU_OK && !ca.is_ca)
        rc = NU_ERR_INVALID_ARG;
    if (rc == NU_OK) {
        memcpy(s.pub, ca.pub, sizeof(s.pub));
        memcpy(ir.pub, pub, sizeof(ir.pub));
        rc = nu_x509_issue(&ir, &s, issuer, issuer_len, &der, &len);
    }
    return cry__der_out(rc, der, len, out, cap, out_len);
}

struct cry__csr_job {
    const uint8_t *der;
    size_t len;
    struct nu_x509_csr_info info;
    int rc;
};

static void *cry__csr_verify_main(void *arg)
{
    struct cry__csr_job *j = arg;
    j->rc = nu_x509_csr_parse_verify(j->der, j->len, &j->info);
    return NULL;
}

/*
 * The device key is verified twice on a socket's thread (this CSR check and
 * the attestation), and wolfSSL's per-thread fixed-point cache builds a
 * lookup table (~4-5 ms here) for any key a thread uses twice: a table that
 * is never used again, since every device has a new key. The CSR signature is
 * therefore checked on a short-lived thread of its own (its cache starts and
 * ends empty; ~0.1 ms to start); the socket thread then sees the key once.
 */
static int cry__csr_parse_verify(const uint8_t *der, size_t len, struct nu_x509_csr_info *out)
{
    struct cry__csr_job j = {.der = der, .len = len, .rc = NU_ERR_INTERNAL};
    pthread_t t;
    if (pthread_create(&t, NULL, cry__csr_verify_main, &j) != 0)
        return nu_x509_csr_parse_verify(der, len, out); /* no thread: same answer, slower */
    pthread_join(t, NULL);
    *out = j.info;
    return j.rc;
}

static int cry__csr_result(int rc, const struct nu_x509_csr_info *info, const char *cn,
                           uint8_t out_pub[65])
{
    if (rc == NU_OK && strcmp(info->cn, cn) != 0)
        rc = NU_ERR_BAD_CSR;
    if (rc == NU_OK)
        memcpy(out_pub, info->pub, sizeof(info->pub));
    return rc == NU_ERR_TOO_LARGE || rc == NU_ERR_INVALID_ARG ? NU_ERR_BAD_CSR : rc;
}

static int cry__csr_check(void *ctx, const uint8_t *der, size_t len, const char *cn,
                          uint8_t out_pub[65])
{
    (void)ctx;
    struct nu_x509_csr_info info;
    return cry__csr_result(cry__csr_parse_verify(der, len, &info), &info, cn, out_pub);
}

int pp_crypto_csr_check_here(void *ctx, const uint8_t *der, size_t len, const char *cn,
                             uint8_t out_pub[65])
{
    (void)ctx;
    struct nu_x509_csr_info info;
    return cry__csr_result(nu_x509_csr_parse_verify(der, len, &info), &info, cn, out_pub);
}

static int cry__cert_check(void *ctx, const uint8_t *leaf, size_t leaf_len,
                           const struct pg_der *chain, size_t n, struct pg_cert_facts *out)
{
    (void)ctx;
    struct nu_x509_der mid[NU_X509_CHAIN_MAX];
    struct nu_x509_cert_info info;
    if (n == 0 || n - 1 > NU_X509_CHAIN_MAX)
        return NU_ERR_BAD_CERT;
    for (size_t i = 0; i + 1 < n; i++) {
        mid[i].der = chain[i].der;
        mid[i].len = chain[i].len;
    }
    int rc = nu_x509_verify_chain(leaf, leaf_len, mid, n - 1, chain[n - 1].der, chain[n - 1].len);
    if (rc == NU_OK)
        rc = nu_x509_cert_info(leaf, leaf_len, &info);
    if (rc == NU_OK && info.is_ca)
        rc = NU_ERR_BAD_CERT;
    if (rc != NU_OK)
        return rc == NU_ERR_EXPIRED ? rc : NU_ERR_BAD_CERT;
    memset(out, 0, sizeof(*out));
    memcpy(out->pub, info.pub, sizeof(out->pub));
    snprintf(out->serial_hex, sizeof(out->serial_hex), "%s", info.serial_hex);
    snprintf(out->cn, sizeof(out->cn), "%s", info.cn);
    return NU_OK;
}

static int cry__pubkey_parse(void *ctx, const uint8_t *in, size_t len, uint8_t out[65])
{
    (void)ctx;
    int rc;
    if (!in || len == 0)
        return NU_ERR_DECODE;
    if (len == NU_P256_PUB_LEN && in[0] == 0x04) {
        rc = nu_p256_pub_check(in);
        if (rc == NU_OK)
            memcpy(out, in, NU_P256_PUB_LEN);
    } else if (len > 10 && memcmp(in, "-----", 5) == 0) {
        rc = nu_p256_pub_from_pem((const char *)in, len, out);
    } else {
        rc = nu_p256_pub_from_der(in, len, out);
    }
    return rc == NU_OK ? NU_OK : NU_ERR_DECODE;
}

static int cry__image_verify(void *ctx, pg_read_fn read, void *rctx, uint32_t size,
                             const uint8_t rotpk[65], const uint8_t rotpk_hash[32])
{
    (void)ctx;
#if NUSEC_HAVE_MCUBOOT
    /* Streamed: the image is never held in RAM whole, as on the NuLink3. */
    struct nu_mcuboot_stream st;
    uint8_t buf[4096];
    int rc = nu_mcuboot_stream_init(&st);
    for (uint32_t off = 0; rc == NU_OK && off < size;) {
        size_t n = size - off < sizeof(buf) ? size - off : sizeof(buf);
        rc = read(rctx, off, buf, n);
        if (rc == NU_OK)
            rc = nu_mcuboot_stream_update(&st, buf, n);
        off += (uint32_t)n;
    }
    if (rc == NU_OK)
        return nu_mcuboot_stream_final(&st, rotpk, rotpk_hash, NULL);
    nu_mcuboot_stream_abort(&st);
    return rc;
#else
    (void)read, (void)rctx, (void)size, (void)rotpk, (void)rotpk_hash;
    return NU_ERR_NOT_SUPPORTED;
#endif
}

const struct pg_crypto_ops pp_crypto_ops = {
    .version = PG_HAL_VERSION,
    .sha256_init = cry__sha_init,
    .sha256_update = cry__sha_update,
    .sha256_final = cry__sha_final,
    .p256_verify = cry__verify,
    .aes256gcm_decrypt = cry__gcm_decrypt,
    .seal_open = cry__seal_open,
    .csr_make = cry__csr_make,
    .csr_check = cry__csr_check,
    .cert_check = cry__cert_check,
    .pubkey_parse = cry__pubkey_parse,
    .image_verify = cry__image_verify,
    .cert_issue = cry__cert_issue,
};
