/*
 * nu_mcuboot — MCUboot image signing and strict verification. The format and
 * the rules are in nu_mcuboot.h; hashing, DER and ECDSA come from nu_crypto.
 *
 * There is one verification path: nu_mcuboot_verify() feeds the whole image
 * to the streaming verifier, so the one-shot and the chunked programmer
 * download cannot disagree about what is a valid image.
 */
#include "nu_mcuboot.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MCUBOOT__TLV_HDR 4u                                           /* u16 type, u16 len */
#define MCUBOOT__INFO_LEN 4u                                          /* u16 magic, u16 total */
#define MCUBOOT__PROT_LEN (MCUBOOT__INFO_LEN + MCUBOOT__TLV_HDR + 4u) /* info + SEC_CNT */
#define MCUBOOT__SIG_MIN 8u /* smallest DER ECDSA-Sig-Value */

/* The TLVs a verified trailer must hold (pointers into the stream's buffer). */
struct mcuboot__tlvs {
    int have_sec_cnt;
    uint32_t sec_cnt;
    const uint8_t *sha;
    const uint8_t *keyhash;
    const uint8_t *sig;
    size_t sig_len;
};

static uint16_t mcuboot__le16(const uint8_t *p)
{
    return (uint16_t)(p[0] | (p[1] << 8));
}

static uint32_t mcuboot__le32(const uint8_t *p)
{
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void mcuboot__put16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void mcuboot__put32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* ------------------------------------------------------------ key hash */

int nu_mcuboot_rotpk_hash(const uint8_t pub[NU_P256_PUB_LEN], uint8_t out_hash[NU_SHA256_LEN])
{
    if (!pub || !out_hash)
        return NU_ERR_INVALID_ARG;
    uint8_t der[NU_P256_PUB_DER_LEN];
    size_t der_len = 0;
    int rc = nu_p256_pub_to_der(pub, der, sizeof(der), &der_len);
    if (rc != NU_OK)
        return rc;
    return nu_sha256(der, der_len, out_hash);
}

/* ----------------------------------------------------------- versions */

/* One decimal field: 1..10 digits, no leading zero, value <= max. */
static int mcuboot__num(const char **pp, uint32_t max, uint32_t *out)
{
    const char *p = *pp;
    uint64_t v = 0;
    size_t n = 0;
    while (p[n] >= '0' && p[n] <= '9') {
        if (n == 10)
            return NU_ERR_DECODE;
        v = v * 10u + (uint64_t)(p[n] - '0');
        n++;
    }
    if (n == 0 || (n > 1 && p[0] == '0') || v > max)
        return NU_ERR_DECODE;
    *out = (uint32_t)v;
    *pp = p + n;
    return NU_OK;
}

int nu_mcuboot_version_parse(const char *text, struct nu_mcuboot_version *out)
{
    if (!text || !out)
        return NU_ERR_INVALID_ARG;
    uint32_t major, minor, rev, build = 0;
    const char *p = text;
    if (mcuboot__num(&p, 0xff, &major) != NU_OK || *p++ != '.' ||
        mcuboot__num(&p, 0xff, &minor) != NU_OK || *p++ != '.' ||
        mcuboot__num(&p, 0xffff, &rev) != NU_OK)
        return NU_ERR_DECODE;
    if (*p == '+') {
        p++;
        if (mcuboot__num(&p, UINT32_MAX, &build) != NU_OK)
            return NU_ERR_DECODE;
    }
    if (*p != '\0')
        return NU_ERR_DECODE;
    out->major = (uint8_t)major;
    out->minor = (uint8_t)minor;
    out->revision = (uint16_t)rev;
    out->build = build;
    return NU_OK;
}

int nu_mcuboot_version_format(const struct nu_mcuboot_version *ver, char *out, size_t cap)
{
    if (!ver || !out || cap == 0)
        return NU_ERR_INVALID_ARG;
    int n = snprintf(out, cap, "%u.%u.%u+%lu", (unsigned)ver->major, (unsigned)ver->minor,
                     (unsigned)ver->revision, (unsigned long)ver->build);
    if (n < 0 || (size_t)n >= cap) {
        out[0] = '\0';
        return NU_ERR_TOO_LARGE;
    }
    return NU_OK;
}

/* ------------------------------------------------------------ TLV walk */

/* One TLV of the protected (prot=1) or unprotected area; enforces the allowed set. */
static int mcuboot__take(struct mcuboot__tlvs *t, int prot, uint16_t type, const uint8_t *v,
                         uint16_t len)
{
    if (prot) {
        if (type != NU_MCUBOOT_TLV_SEC_CNT || len != 4 || t->have_sec_cnt)
            return NU_ERR_DECODE;
        t->have_sec_cnt = 1;
        t->sec_cnt = mcuboot__le32(v);
        return NU_OK;
    }
    switch (type) {
    case NU_MCUBOOT_TLV_SHA256:
        if (len != NU_SHA256_LEN || t->sha)
            return NU_ERR_DECODE;
        t->sha = v;
        return NU_OK;
    case NU_MCUBOOT_TLV_KEYHASH:
        if (len != NU_SHA256_LEN || t->keyhash)
            return NU_ERR_DECODE;
        t->keyhash = v;
        return NU_OK;
    case NU_MCUBOOT_TLV_ECDSA_SIG:
        /* MCUboot binds a signature to the KEYHASH before it. */
        if (len < MCUBOOT__SIG_MIN || len > NU_P256_SIG_MAX || t->sig || !t->keyhash)
            return NU_ERR_DECODE;
        t->sig = v;
        t->sig_len = len;
        return NU_OK;
    default:
        return NU_ERR_DECODE; /* unknown, or SEC_CNT outside the protected area */
    }
}

/* Walk area[tot] (info header included, tot already checked >= 4 and in bounds). */
static int mcuboot__walk(const uint8_t *area, size_t tot, int prot, struct mcuboot__tlvs *t)
{
    size_t off = MCUBOOT__INFO_LEN;
    while (off < tot) {
        if (tot - off < MCUBOOT__TLV_HDR)
            return NU_ERR_DECODE;
        uint16_t type = mcuboot__le16(area + off);
        uint16_t len = mcuboot__le16(area + off + 2);
        off += MCUBOOT__TLV_HDR;
        if (len > tot - off)
            return NU_ERR_DECODE;
        int rc = mcuboot__take(t, prot, type, area + off, len);
        if (rc != NU_OK)
            return rc;
        off += len;
    }
    return NU_OK;
}

/* Parse the whole trailer buf[len]: protected area of prot_size bytes, then
 * the unprotected area, which must end exactly at len. */
static int mcuboot__trailer(const uint8_t *buf, size_t len, size_t prot_size,
                            struct mcuboot__tlvs *t)
{
    memset(t, 0, sizeof(*t));
    if (len < prot_size + MCUBOOT__INFO_LEN)
        return NU_ERR_DECODE;
    if (prot_size) {
        if (mcuboot__le16(buf) != NU_MCUBOOT_TLV_PROT_INFO_MAGIC ||
            mcuboot__le16(buf + 2) != prot_size)
            return NU_ERR_DECODE;
        int rc = mcuboot__walk(buf, prot_size, 1, t);
        if (rc != NU_OK)
            return rc;
    }
    const uint8_t *u = buf + prot_size;
    size_t tot = mcuboot__le16(u + 2);
    if (mcuboot__le16(u) != NU_MCUBOOT_TLV_INFO_MAGIC || tot < MCUBOOT__INFO_LEN ||
        tot != len - prot_size)
        return NU_ERR_DECODE;
    int rc = mcuboot__walk(u, tot, 0, t);
    if (rc != NU_OK)
        return rc;
    if (!t->have_sec_cnt || !t->sha || !t->keyhash || !t->sig)
        return NU_ERR_DECODE;
    return NU_OK;
}

/* ------------------------------------------------------------ streaming */

int nu_mcuboot_stream_init(struct nu_mcuboot_stream *s)
{
    if (!s)
        return NU_ERR_INVALID_ARG;
    memset(s, 0, sizeof(*s));
    s->hash_end = UINT64_MAX; /* everything is hashed until the header says where to stop */
    int rc = nu_sha256_init(&s->sha);
    if (rc != NU_OK)
        return rc;
    s->live = 1;
    return NU_OK;
}

void nu_mcuboot_stream_abort(struct nu_mcuboot_stream *s)
{
    if (!s)
        return;
    if (s->live)
        nu_sha256_abort(&s->sha);
    nu_zero(s, sizeof(*s));
}

/* The 32 header bytes are in: check them and fix where hashing stops. */
static int mcuboot__header(struct nu_mcuboot_stream *s)
{
    const uint8_t *h = s->hdr;
    uint32_t hdr_size = mcuboot__le16(h + 8);
    uint32_t prot_size = mcuboot__le16(h + 10);
    uint32_t img_size = mcuboot__le32(h + 12);
    uint32_t flags = mcuboot__le32(h + 16);
    if (mcuboot__le32(h) != NU_MCUBOOT_IMAGE_MAGIC || hdr_size < NU_MCUBOOT_HDR_SIZE)
        return NU_ERR_DECODE;
    if (prot_size != 0 && prot_size < MCUBOOT__INFO_LEN)
        return NU_ERR_DECODE;
    if (img_size > NU_MCUBOOT_MAX_PAYLOAD ||
        prot_size + MCUBOOT__INFO_LEN > NU_MCUBOOT_TLV_AREA_MAX)
        return NU_ERR_TOO_LARGE;
    if (flags & (NU_MCUBOOT_F_ENCRYPTED_AES128 | NU_MCUBOOT_F_ENCRYPTED_AES256))
        return NU_ERR_NOT_SUPPORTED; /* its SHA256 is over the plaintext we do not have */
    s->tlv_off = (uint64_t)hdr_size + img_size;
    s->hash_end = s->tlv_off + prot_size;
    return NU_OK;
}

/* Hash p[n] (the part before hash_end) and keep the part at or after tlv_off. */
static int mcuboot__body(struct nu_mcuboot_stream *s, const uint8_t *p, size_t n)
{
    if (s->pos < s->hash_end) {
        uint64_t left = s->hash_end - s->pos;
        size_t hn = left < n ? (size_t)left : n;
        int rc = nu_sha256_update(&s->sha, p, hn);
        if (rc != NU_OK)
            return rc;
    }
    uint64_t end = s->pos + n;
    if (end > s->tlv_off) {
        uint64_t from = s->pos > s->tlv_off ? s->pos : s->tlv_off;
        size_t kn = (size_t)(end - from);
        if (kn > sizeof(s->tlv) - s->tlv_len)
            return NU_ERR_TOO_LARGE;
        memcpy(s->tlv + s->tlv_len, p + (from - s->pos), kn);
        s->tlv_len += kn;
    }
    s->pos = end;
    return NU_OK;
}

static int mcuboot__update(struct nu_mcuboot_stream *s, const uint8_t *p, size_t len)
{
    if (len > NU_MCUBOOT_MAX_IMAGE || s->pos + len > NU_MCUBOOT_MAX_IMAGE)
        return NU_ERR_TOO_LARGE;
    if (s->pos < NU_MCUBOOT_HDR_SIZE) {
        size_t n = NU_MCUBOOT_HDR_SIZE - (size_t)s->pos;
        if (n > len)
            n = len;
        memcpy(s->hdr + s->pos, p, n);
        int rc = nu_sha256_update(&s->sha, p, n); /* hdr_size >= 32: always hashed */
        if (rc != NU_OK)
            return rc;
        s->pos += n;
        p += n;
        len -= n;
        if (s->pos < NU_MCUBOOT_HDR_SIZE)
            return NU_OK;
        rc = mcuboot__header(s);
        if (rc != NU_OK)
            return rc;
    }
    return len ? mcuboot__body(s, p, len) : NU_OK;
}

int nu_mcuboot_stream_update(struct nu_mcuboot_stream *s, const void *data, size_t len)
{
    if (!s || !s->live || (!data && len))
        return NU_ERR_INVALID_ARG;
    if (s->err == NU_OK)
        s->err = mcuboot__update(s, data, len);
    return s->err;
}

/* The key the caller trusts must be the one the ROTPK hash names. */
static int mcuboot__check_pub(const uint8_t pub[NU_P256_PUB_LEN],
                              const uint8_t rotpk_hash[NU_SHA256_LEN])
{
    uint8_t h[NU_SHA256_LEN];
    int rc = nu_mcuboot_rotpk_hash(pub, h);
    if (rc != NU_OK)
        return rc;
    return nu_memeq_ct(h, rotpk_hash, sizeof(h)) == 0 ? NU_OK : NU_ERR_BAD_FIRMWARE;
}

static void mcuboot__info(const struct nu_mcuboot_stream *s, const struct mcuboot__tlvs *t,
                          const uint8_t digest[NU_SHA256_LEN], struct nu_mcuboot_info *out)
{
    const uint8_t *h = s->hdr;
    memset(out, 0, sizeof(*out));
    out->load_addr = mcuboot__le32(h + 4);
    out->payload_off = mcuboot__le16(h + 8);
    out->payload_len = mcuboot__le32(h + 12);
    out->flags = mcuboot__le32(h + 16);
    out->version.major = h[20];
    out->version.minor = h[21];
    out->version.revision = mcuboot__le16(h + 22);
    out->version.build = mcuboot__le32(h + 24);
    out->security_counter = t->sec_cnt;
    out->image_len = (uint32_t)s->pos;
    memcpy(out->digest, digest, NU_SHA256_LEN);
}

/* Structure, then digest, then key hash, then signature. */
static int mcuboot__final(struct nu_mcuboot_stream *s, const uint8_t *pub,
                          const uint8_t *rotpk_hash, uint8_t digest[NU_SHA256_LEN],
                          struct mcuboot__tlvs *t)
{
    int rc = mcuboot__check_pub(pub, rotpk_hash);
    if (rc != NU_OK)
        return rc;
    if (s->err != NU_OK)
        return s->err;
    if (s->pos < NU_MCUBOOT_HDR_SIZE || s->pos < s->hash_end)
        return NU_ERR_DECODE; /* truncated before the end of the hashed region */
    rc = mcuboot__trailer(s->tlv, s->tlv_len, (size_t)(s->hash_end - s->tlv_off), t);
    if (rc != NU_OK)
        return rc;
    rc = nu_sha256_final(&s->sha, digest);
    s->live = 0;
    if (rc != NU_OK)
        return rc;
    if (nu_memeq_ct(digest, t->sha, NU_SHA256_LEN) != 0 ||
        nu_memeq_ct(t->keyhash, rotpk_hash, NU_SHA256_LEN) != 0)
        return NU_ERR_BAD_FIRMWARE;
    rc = nu_p256_verify(pub, digest, t->sig, t->sig_len);
    if (rc == NU_ERR_DECODE)
        rc = NU_ERR_BAD_SIGNATURE; /* malformed DER in a well-formed image */
    return rc;
}

int nu_mcuboot_stream_final(struct nu_mcuboot_stream *s, const uint8_t pub[NU_P256_PUB_LEN],
                            const uint8_t rotpk_hash[NU_SHA256_LEN],
                            struct nu_mcuboot_info *out_info)
{
    if (!s)
        return NU_ERR_INVALID_ARG;
    int rc = NU_ERR_INVALID_ARG;
    uint8_t digest[NU_SHA256_LEN];
    struct mcuboot__tlvs t;
    if (!s->live || !pub || !rotpk_hash)
        goto out;
    rc = mcuboot__final(s, pub, rotpk_hash, digest, &t);
    if (rc == NU_OK && out_info)
        mcuboot__info(s, &t, digest, out_info);
out:
    if (rc != NU_OK)
        nu_debug("mcuboot: image refused: %s", nu_err_name(rc));
    nu_mcuboot_stream_abort(s);
    return rc;
}

int nu_mcuboot_verify(const uint8_t *img, size_t len, const uint8_t pub[NU_P256_PUB_LEN],
                      const uint8_t rotpk_hash[NU_SHA256_LEN], struct nu_mcuboot_info *out_info)
{
    if ((!img && len) || !pub || !rotpk_hash)
        return NU_ERR_INVALID_ARG;
    if (len > NU_MCUBOOT_MAX_IMAGE)
        return NU_ERR_TOO_LARGE;
    struct nu_mcuboot_stream s;
    int rc = nu_mcuboot_stream_init(&s);
    if (rc != NU_OK)
        return rc;
    /* An update error is sticky and reported by final, after the key check. */
    (void)nu_mcuboot_stream_update(&s, img, len);
    return nu_mcuboot_stream_final(&s, pub, rotpk_hash, out_info);
}

/* -------------------------------------------------------------- signing */

static void mcuboot__build_header(uint8_t h[NU_MCUBOOT_HDR_SIZE], size_t len,
                                  const struct nu_mcuboot_version *ver, uint32_t load_addr)
{
    memset(h, 0, NU_MCUBOOT_HDR_SIZE);
    mcuboot__put32(h, NU_MCUBOOT_IMAGE_MAGIC);
    mcuboot__put32(h + 4, load_addr);
    mcuboot__put16(h + 8, NU_MCUBOOT_HDR_SIZE);
    mcuboot__put16(h + 10, MCUBOOT__PROT_LEN);
    mcuboot__put32(h + 12, (uint32_t)len);
    mcuboot__put32(h + 16, load_addr ? NU_MCUBOOT_F_RAM_LOAD : 0); /* as imgtool --load-addr */
    h[20] = ver->major;
    h[21] = ver->minor;
    mcuboot__put16(h + 22, ver->revision);
    mcuboot__put32(h + 24, ver->build);
    /* h[28..31]: _pad, zero */
}

static void mcuboot__build_prot(uint8_t p[MCUBOOT__PROT_LEN], uint32_t security_counter)
{
    mcuboot__put16(p, NU_MCUBOOT_TLV_PROT_INFO_MAGIC);
    mcuboot__put16(p + 2, MCUBOOT__PROT_LEN);
    mcuboot__put16(p + 4, NU_MCUBOOT_TLV_SEC_CNT);
    mcuboot__put16(p + 6, 4);
    mcuboot__put32(p + 8, security_counter);
}

static uint8_t *mcuboot__put_tlv(uint8_t *p, uint16_t type, const uint8_t *v, uint16_t len)
{
    mcuboot__put16(p, type);
    mcuboot__put16(p + 2, len);
    memcpy(p + MCUBOOT__TLV_HDR, v, len);
    return p + MCUBOOT__TLV_HDR + len;
}

/* SHA-256 over header || payload || protected TLVs, without copying the payload. */
static int mcuboot__digest(const uint8_t *hdr, const uint8_t *payload, size_t len,
                           const uint8_t *prot, uint8_t out[NU_SHA256_LEN])
{
    struct nu_sha256_ctx ctx;
    int rc = nu_sha256_init(&ctx);
    if (rc != NU_OK)
        return rc;
    rc = nu_sha256_update(&ctx, hdr, NU_MCUBOOT_HDR_SIZE);
    if (rc == NU_OK)
        rc = nu_sha256_update(&ctx, payload, len);
    if (rc == NU_OK)
        rc = nu_sha256_update(&ctx, prot, MCUBOOT__PROT_LEN);
    if (rc != NU_OK) {
        nu_sha256_abort(&ctx);
        return rc;
    }
    return nu_sha256_final(&ctx, out);
}

/* Lay out the signed image (all parts ready) into a fresh heap buffer. */
static int mcuboot__assemble(const uint8_t *hdr, const uint8_t *payload, size_t len,
                             const uint8_t *prot, const uint8_t *digest, const uint8_t *keyhash,
                             const uint8_t *sig, size_t sig_len, uint8_t **out_img, size_t *out_len)
{
    size_t unprot =
        MCUBOOT__INFO_LEN + 2 * (MCUBOOT__TLV_HDR + NU_SHA256_LEN) + MCUBOOT__TLV_HDR + sig_len;
    size_t total = NU_MCUBOOT_HDR_SIZE + len + MCUBOOT__PROT_LEN + unprot;
    uint8_t *img = malloc(total);
    if (!img)
        return NU_ERR_NOMEM;
    uint8_t *p = img;
    memcpy(p, hdr, NU_MCUBOOT_HDR_SIZE);
    memcpy(p += NU_MCUBOOT_HDR_SIZE, payload, len);
    memcpy(p += len, prot, MCUBOOT__PROT_LEN);
    p += MCUBOOT__PROT_LEN;
    mcuboot__put16(p, NU_MCUBOOT_TLV_INFO_MAGIC);
    mcuboot__put16(p + 2, (uint16_t)unprot);
    p = mcuboot__put_tlv(p + MCUBOOT__INFO_LEN, NU_MCUBOOT_TLV_SHA256, digest, NU_SHA256_LEN);
    p = mcuboot__put_tlv(p, NU_MCUBOOT_TLV_KEYHASH, keyhash, NU_SHA256_LEN);
    mcuboot__put_tlv(p, NU_MCUBOOT_TLV_ECDSA_SIG, sig, (uint16_t)sig_len);
    *out_img = img;
    *out_len = total;
    return NU_OK;
}

int nu_mcuboot_sign(const uint8_t *payload, size_t len, const struct nu_mcuboot_version *ver,
                    uint32_t security_counter, uint32_t load_addr, const struct nu_signer *key,
                    uint8_t **out_img, size_t *out_len)
{
    if (!payload || !ver || !key || !key->sign_digest || !out_img || !out_len || len == 0)
        return NU_ERR_INVALID_ARG;
    *out_img = NULL;
    *out_len = 0;
    if (len > NU_MCUBOOT_MAX_PAYLOAD)
        return NU_ERR_TOO_LARGE;
    uint8_t hdr[NU_MCUBOOT_HDR_SIZE], prot[MCUBOOT__PROT_LEN];
    uint8_t keyhash[NU_SHA256_LEN], digest[NU_SHA256_LEN], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    uint8_t *img = NULL;
    size_t img_len = 0;
    int rc = nu_mcuboot_rotpk_hash(key->pub, keyhash);
    if (rc != NU_OK)
        goto out;
    mcuboot__build_header(hdr, len, ver, load_addr);
    mcuboot__build_prot(prot, security_counter);
    rc = mcuboot__digest(hdr, payload, len, prot, digest);
    if (rc != NU_OK)
        goto out;
    rc = key->sign_digest(key->ctx, digest, sig, &sig_len);
    if (rc != NU_OK)
        goto out;
    if (sig_len < MCUBOOT__SIG_MIN || sig_len > sizeof(sig)) {
        rc = NU_ERR_CRYPTO;
        goto out;
    }
    rc = mcuboot__assemble(hdr, payload, len, prot, digest, keyhash, sig, sig_len, &img, &img_len);
    if (rc != NU_OK)
        goto out;
    /* Never hand out an image our own secure boot would refuse. */
    rc = nu_mcuboot_verify(img, img_len, key->pub, keyhash, NULL);
    if (rc != NU_OK) {
        nu_error("mcuboot: freshly signed image does not verify (%s)", nu_err_name(rc));
        rc = NU_ERR_CRYPTO;
        goto out;
    }
    *out_img = img;
    *out_len = img_len;
    img = NULL;
out:
    free(img);
    return rc;
}
