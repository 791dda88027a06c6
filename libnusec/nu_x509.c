/*
 * nu_x509 — certificates and CSRs on wolfSSL. See nu_x509.h for the contract.
 *
 * How a nu_signer signs: wolfSSL builds the to-be-signed body
 * (wc_MakeCert_ex / wc_MakeCertReq_ex), we hash it and hand the digest to the
 * signer, and AddSignature() appends algorithm and signature; this is exactly
 * what wc_SignCert_ex does inside, minus the key. We do not use a crypto
 * callback device (wc_CryptoCb_RegisterDevice) because in wolfSSL 5.5.4 its
 * table is a fixed global array of 8 entries without a lock, which a later
 * wolfCrypt_Init() after a wolfCrypt_Cleanup() silently empties: signing would
 * then depend on process-wide state that other code can clobber. This way
 * there is no shared state at all and any number of threads issue at once.
 *
 * Names and keys of untrusted inputs are read from wolfSSL's DecodedCert after
 * ParseCert(NO_VERIFY); signatures are checked here, explicitly.
 */
#include "nu_x509.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>

#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/random.h>

#include <arpa/inet.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* AddSignature, ParseCert and DecodedCert are exported only in these builds. */
#if !defined(OPENSSL_EXTRA) && !defined(WOLFSSL_PUBLIC_ASN) && !defined(WOLFSSL_TEST_CERT) &&      \
    !defined(OPENSSL_EXTRA_X509_SMALL)
#error "nu_x509 needs wolfSSL built with OPENSSL_EXTRA or WOLFSSL_PUBLIC_ASN"
#endif

/* Room AddSignature needs after the body: AlgorithmIdentifier, BIT STRING
 * header, the signature, and the outer SEQUENCE header it prepends. */
#define X509__SIG_OVERHEAD (NU_P256_SIG_MAX + 32)

static const uint8_t x509__oid_cn[] = {0x06, 0x03, 0x55, 0x04, 0x03};
static const uint8_t x509__oid_ou[] = {0x06, 0x03, 0x55, 0x04, 0x0b};

/* ------------------------------------------------------------------ names */

/* Printable ASCII, 1..NU_X509_NAME_MAX: what we put in certificates we issue. */
static int x509__name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > NU_X509_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < 0x20 || s[i] > 0x7e)
            return 0;
    }
    return 1;
}

/* The identity alphabet: CN and OU become MQTT topic levels and ACL keys, so
 * no '/', '+', '#', spaces, quotes or control characters. */
static int x509__ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == ':' || c == '@' || c == '-';
}

/* Copy a (not NUL-terminated) name from a parsed certificate into out[64].
 * strict: identity alphabet; otherwise printable ASCII. Absent is "". */
static int x509__copy_name(const char *src, int len, int strict, char out[NU_X509_NAME_MAX + 1])
{
    out[0] = '\0';
    if (!src || len <= 0)
        return NU_OK;
    if (len > NU_X509_NAME_MAX)
        return NU_ERR_DECODE;
    for (int i = 0; i < len; i++) {
        if (strict ? !x509__ident_char(src[i]) : (src[i] < 0x20 || src[i] > 0x7e))
            return NU_ERR_DECODE;
    }
    memcpy(out, src, (size_t)len);
    out[len] = '\0';
    return NU_OK;
}

static void x509__set_field(char *dst, char *enc, const char *value)
{
    if (!value || !*value)
        return;
    strncpy(dst, value, CTC_NAME_SIZE - 1);
    dst[CTC_NAME_SIZE - 1] = '\0';
    *enc = CTC_UTF8;
}

static void x509__set_name(CertName *n, const char *cn, const char *ou, const char *o)
{
    x509__set_field(n->commonName, &n->commonNameEnc, cn);
    x509__set_field(n->unit, &n->unitEnc, ou);
    x509__set_field(n->org, &n->orgEnc, o);
}

static size_t x509__count(const uint8_t *hay, size_t hay_len, const uint8_t *needle, size_t n)
{
    size_t count = 0;
    for (size_t i = 0; i + n <= hay_len; i++)
        count += memcmp(hay + i, needle, n) == 0;
    return count;
}

/* --------------------------------------------------------------- encoding */

/* RFC 5280 4.1.2.5: UTCTime through 2049, GeneralizedTime from 2050, always Z. */
static int x509__time_der(int64_t t, byte out[CTC_DATE_SIZE], int *out_len)
{
    time_t tt = (time_t)t;
    struct tm tm;
    char text[20];
    if ((int64_t)tt != t || !gmtime_r(&tt, &tm))
        return NU_ERR_INVALID_ARG;
    int year = tm.tm_year + 1900;
    if (year < 1950 || year > 9999)
        return NU_ERR_INVALID_ARG;
    int n;
    if (year < 2050) {
        out[0] = ASN_UTC_TIME;
        n = snprintf(text, sizeof(text), "%02d%02d%02d%02d%02d%02dZ", year % 100, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    } else {
        out[0] = ASN_GENERALIZED_TIME;
        n = snprintf(text, sizeof(text), "%04d%02d%02d%02d%02d%02dZ", year, tm.tm_mon + 1,
                     tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec);
    }
    out[1] = (byte)n;
    memcpy(out + 2, text, (size_t)n);
    *out_len = n + 2;
    return NU_OK;
}

/* 16 random bytes, first byte 0x01..0x7f: a positive INTEGER that DER encodes
 * in exactly 16 bytes (no sign padding, no leading zero), ~127 bits random. */
static int x509__serial(Cert *cert)
{
    int rc = nu_random(cert->serial, NU_X509_SERIAL_LEN);
    if (rc != NU_OK)
        return rc;
    cert->serial[0] &= 0x7f;
    if (cert->serial[0] == 0)
        cert->serial[0] = 0x01;
    cert->serialSz = NU_X509_SERIAL_LEN;
    return NU_OK;
}

static int x509__import_pub(const uint8_t pub[NU_P256_PUB_LEN], ecc_key *key)
{
    int rc = nu_p256_pub_check(pub);
    if (rc != NU_OK)
        return rc;
    if (wc_ecc_import_x963_ex(pub, NU_P256_PUB_LEN, key, ECC_SECP256R1) != 0)
        return NU_ERR_DECODE;
    return NU_OK;
}

/* ------------------------------------------ basicConstraints criticality */

/*
 * RFC 5280 4.2.1.9 wants basicConstraints critical in CA certificates (and we
 * mark it so in leaves too); wolfSSL 5.5.4 (non-template ASN) writes it
 * non-critical and has no switch for it. So the TBSCertificate it made is
 * re-encoded here with BOOLEAN TRUE inserted after the extension's OID, every
 * enclosing length fixed up. Only our own fresh wolfSSL output goes through
 * this (never untrusted input), and the result is re-parsed by the signer's
 * caller and by openssl in the tests.
 */
struct x509__tlv {
    size_t off; /* of the tag */
    size_t hdr; /* tag + length bytes */
    size_t len; /* content bytes */
};

static int x509__tlv_read(const uint8_t *buf, size_t off, size_t end, struct x509__tlv *t)
{
    if (off + 2 > end)
        return -1;
    size_t n = buf[off + 1], h = 2;
    if (n & 0x80) {
        size_t k = n & 0x7f;
        if (k == 0 || k > 2 || off + 2 + k > end)
            return -1;
        n = 0;
        for (size_t i = 0; i < k; i++)
            n = (n << 8) | buf[off + 2 + i];
        h += k;
    }
    if (off + h + n > end)
        return -1;
    t->off = off;
    t->hdr = h;
    t->len = n;
    return 0;
}

static size_t x509__hdr_len(size_t len)
{
    return len < 0x80 ? 2 : len < 0x100 ? 3 : 4;
}

static size_t x509__put_hdr(uint8_t *out, uint8_t tag, size_t len)
{
    out[0] = tag;
    if (len < 0x80) {
        out[1] = (uint8_t)len;
        return 2;
    }
    if (len < 0x100) {
        out[1] = 0x81;
        out[2] = (uint8_t)len;
        return 3;
    }
    out[1] = 0x82;
    out[2] = (uint8_t)(len >> 8);
    out[3] = (uint8_t)len;
    return 4;
}

/* Find the [3] extensions and, inside, the basicConstraints Extension. */
static int x509__find_bc(const uint8_t *tbs, size_t len, struct x509__tlv *top,
                         struct x509__tlv *a3, struct x509__tlv *exts, struct x509__tlv *ext)
{
    static const uint8_t bc_oid[] = {0x06, 0x03, 0x55, 0x1d, 0x13};
    if (x509__tlv_read(tbs, 0, len, top) != 0 || tbs[0] != 0x30 || top->hdr + top->len != len)
        return -1;
    size_t off = top->hdr;
    for (;;) {
        if (x509__tlv_read(tbs, off, len, a3) != 0)
            return -1;
        if (tbs[off] == 0xa3)
            break;
        off += a3->hdr + a3->len;
    }
    if (a3->off + a3->hdr + a3->len != len ||
        x509__tlv_read(tbs, a3->off + a3->hdr, len, exts) != 0 || tbs[exts->off] != 0x30 ||
        exts->hdr + exts->len != a3->len)
        return -1;
    size_t end = exts->off + exts->hdr + exts->len;
    for (off = exts->off + exts->hdr; off < end; off += ext->hdr + ext->len) {
        if (x509__tlv_read(tbs, off, end, ext) != 0)
            return -1;
        size_t c = off + ext->hdr;
        if (ext->len > sizeof(bc_oid) + 2 && memcmp(tbs + c, bc_oid, sizeof(bc_oid)) == 0)
            return tbs[c + sizeof(bc_oid)] == 0x01 ? 1 : 0; /* 1: already critical */
    }
    return -1;
}

static int x509__bc_critical(uint8_t *buf, size_t *body_len, size_t cap)
{
    static const uint8_t crit[] = {0x01, 0x01, 0xff};
    struct x509__tlv top, a3, exts, ext;
    int found = x509__find_bc(buf, *body_len, &top, &a3, &exts, &ext);
    if (found == 1)
        return NU_OK;
    if (found != 0)
        return NU_ERR_CRYPTO;
    size_t ext_c = ext.len + sizeof(crit);
    size_t exts_c = exts.len + x509__hdr_len(ext_c) + ext_c - (ext.hdr + ext.len);
    size_t a3_c = x509__hdr_len(exts_c) + exts_c;
    size_t top_c = (a3.off - top.hdr) + x509__hdr_len(a3_c) + a3_c;
    size_t total = x509__hdr_len(top_c) + top_c;
    if (total + X509__SIG_OVERHEAD > cap)
        return NU_ERR_CRYPTO;
    uint8_t *out = malloc(total);
    if (!out)
        return NU_ERR_NOMEM;
    size_t o = x509__put_hdr(out, 0x30, top_c);
    memcpy(out + o, buf + top.hdr, a3.off - top.hdr);
    o += a3.off - top.hdr;
    o += x509__put_hdr(out + o, 0xa3, a3_c);
    o += x509__put_hdr(out + o, 0x30, exts_c);
    size_t before = ext.off - (exts.off + exts.hdr);
    memcpy(out + o, buf + exts.off + exts.hdr, before);
    o += before;
    o += x509__put_hdr(out + o, 0x30, ext_c);
    memcpy(out + o, buf + ext.off + ext.hdr, 5); /* the OID */
    o += 5;
    memcpy(out + o, crit, sizeof(crit));
    o += sizeof(crit);
    memcpy(out + o, buf + ext.off + ext.hdr + 5, ext.len - 5);
    o += ext.len - 5;
    size_t after_off = ext.off + ext.hdr + ext.len;
    memcpy(out + o, buf + after_off, *body_len - after_off);
    o += *body_len - after_off;
    memcpy(buf, out, o);
    free(out);
    *body_len = o;
    return o == total ? NU_OK : NU_ERR_INTERNAL;
}

/* ------------------------------------------------------ subjectAltName */

static int x509__dns_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > NU_X509_DNS_NAME_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '.'))
            return 0;
    }
    return 1;
}

/* Append one GeneralName (context tag, value) to out[*o..cap). */
static int x509__put_general_name(uint8_t *out, size_t *o, size_t cap, uint8_t tag,
                                  const void *value, size_t len)
{
    if (*o + 4 + len > cap)
        return NU_ERR_INVALID_ARG;
    out[(*o)++] = tag;
    if (len < 0x80) {
        out[(*o)++] = (uint8_t)len;
    } else {
        out[(*o)++] = 0x81;
        out[(*o)++] = (uint8_t)len;
    }
    memcpy(out + *o, value, len);
    *o += len;
    return NU_OK;
}

/*
 * GeneralNames SEQUENCE into cert->altNames (wolfSSL wraps it into the
 * extension): dNSName [2] IA5String, iPAddress [7] OCTET STRING.
 */
static int x509__san(Cert *cert, const struct nu_x509_issue_req *req)
{
    uint8_t names[NU_X509_SAN_MAX * 2 * (NU_X509_DNS_NAME_MAX + 4)];
    size_t o = 0;
    int rc = NU_OK;
    if (req->n_san_dns == 0 && req->n_san_ip == 0)
        return NU_OK;
    if (req->n_san_dns > NU_X509_SAN_MAX || req->n_san_ip > NU_X509_SAN_MAX ||
        (req->n_san_dns && !req->san_dns) || (req->n_san_ip && !req->san_ip))
        return NU_ERR_INVALID_ARG;
    for (size_t i = 0; rc == NU_OK && i < req->n_san_dns; i++) {
        const char *d = req->san_dns[i];
        rc = x509__dns_ok(d) ? x509__put_general_name(names, &o, sizeof(names), 0x82, d, strlen(d))
                             : NU_ERR_INVALID_ARG;
    }
    for (size_t i = 0; rc == NU_OK && i < req->n_san_ip; i++) {
        uint8_t ip[16];
        const char *a = req->san_ip[i];
        if (a && inet_pton(AF_INET, a, ip) == 1)
            rc = x509__put_general_name(names, &o, sizeof(names), 0x87, ip, 4);
        else if (a && inet_pton(AF_INET6, a, ip) == 1)
            rc = x509__put_general_name(names, &o, sizeof(names), 0x87, ip, 16);
        else
            rc = NU_ERR_INVALID_ARG;
    }
    if (rc != NU_OK)
        return rc;
    if (x509__hdr_len(o) + o > sizeof(cert->altNames))
        return NU_ERR_INVALID_ARG;
    size_t hdr = x509__put_hdr(cert->altNames, 0x30, o);
    memcpy(cert->altNames + hdr, names, o);
    cert->altNamesSz = (int)(hdr + o);
    return NU_OK;
}

/*
 * Sign the body buf[0..body_len) with the signer and complete it in place
 * into a certificate / CSR (buf has cap bytes). The result is verified with
 * the signer's public key: a signer that answers garbage never yields a
 * certificate.
 */
static int x509__sign(uint8_t *buf, int body_len, size_t cap, const struct nu_signer *signer,
                      size_t *out_len)
{
    uint8_t digest[NU_SHA256_LEN], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    if (body_len <= 0 || (size_t)body_len + X509__SIG_OVERHEAD > cap)
        return NU_ERR_CRYPTO;
    int rc = nu_sha256(buf, (size_t)body_len, digest);
    if (rc != NU_OK)
        return rc;
    rc = signer->sign_digest(signer->ctx, digest, sig, &sig_len);
    if (rc != NU_OK)
        return rc;
    if (sig_len == 0 || sig_len > NU_P256_SIG_MAX)
        return NU_ERR_CRYPTO;
    if (!signer->self_verified && nu_p256_verify(signer->pub, digest, sig, sig_len) != NU_OK) {
        nu_error("x509: the signer returned a signature that does not verify");
        return NU_ERR_CRYPTO;
    }
    int n = AddSignature(buf, body_len, sig, (int)sig_len, CTC_SHA256wECDSA);
    if (n <= 0 || (size_t)n > cap)
        return NU_ERR_CRYPTO;
    *out_len = (size_t)n;
    return NU_OK;
}

/* ---------------------------------------------------------------- parsing */

size_t nu_x509_der_len(const uint8_t *der, size_t len)
{
    if (!der || len < 2 || der[0] != 0x30)
        return 0;
    size_t n = der[1], hdr = 2;
    if (n & 0x80) {
        size_t k = n & 0x7f;
        if (k == 0 || k > 3 || len < 2 + k)
            return 0;
        n = 0;
        for (size_t i = 0; i < k; i++)
            n = (n << 8) | der[2 + i];
        hdr += k;
    }
    return hdr + n <= len ? hdr + n : 0;
}

/*
 * ParseCert without signature verification, refusing trailing bytes. On
 * NU_OK the caller frees dc with wc_FreeDecodedCert(); on error it is freed.
 */
static int x509__parse(const uint8_t *der, size_t len, int type, DecodedCert *dc)
{
    if (nu_x509_der_len(der, len) != len)
        return NU_ERR_DECODE;
    wc_InitDecodedCert(dc, der, (word32)len, NULL);
    int wc = wc_ParseCert(dc, type, NO_VERIFY, NULL);
    if (wc != 0) {
        nu_debug("x509: ParseCert: wolfSSL %d (%s)", wc, wc_GetErrorString(wc));
        wc_FreeDecodedCert(dc);
        return NU_ERR_DECODE;
    }
    return NU_OK;
}

/* The subject key of a parsed certificate / CSR, which must be P-256. */
static int x509__dc_pub(DecodedCert *dc, uint8_t out[NU_P256_PUB_LEN])
{
    uint8_t spki[NU_DER_IN_MAX];
    word32 spki_len = sizeof(spki);
    if (dc->keyOID != ECDSAk || dc->pkCurveOID != ECC_SECP256R1_OID)
        return NU_ERR_NOT_SUPPORTED;
    if (wc_GetPubKeyDerFromCert(dc, spki, &spki_len) != 0)
        return NU_ERR_DECODE;
    return nu_p256_pub_from_der(spki, spki_len, out);
}

/* CN, OU, O of a parsed subject; each of CN and OU at most once. */
static int x509__dc_names(DecodedCert *dc, int strict, char *cn, char *ou, char *o)
{
    const uint8_t *raw = dc->subjectRaw;
    size_t raw_len = dc->subjectRawLen > 0 ? (size_t)dc->subjectRawLen : 0;
    /* wolfSSL keeps one value per attribute: a second CN or OU would be
     * invisible here yet seen by other parsers, so refuse the ambiguity. */
    if (raw && (x509__count(raw, raw_len, x509__oid_cn, sizeof(x509__oid_cn)) > 1 ||
                x509__count(raw, raw_len, x509__oid_ou, sizeof(x509__oid_ou)) > 1))
        return NU_ERR_DECODE;
    int rc = x509__copy_name(dc->subjectCN, dc->subjectCNLen, strict, cn);
    if (rc == NU_OK)
        rc = x509__copy_name(dc->subjectOU, dc->subjectOULen, strict, ou);
    if (rc == NU_OK)
        rc = x509__copy_name(dc->subjectO, dc->subjectOLen, 0, o);
    return rc;
}

/* ECDSA-SHA256 signature of a parsed object, checked with pub. */
static int x509__dc_check_sig(DecodedCert *dc, const uint8_t pub[NU_P256_PUB_LEN])
{
    uint8_t digest[NU_SHA256_LEN];
    if (dc->signatureOID != CTC_SHA256wECDSA)
        return NU_ERR_NOT_SUPPORTED;
    if (dc->certBegin >= dc->sigIndex || dc->sigIndex > dc->maxIdx || !dc->signature)
        return NU_ERR_DECODE;
    int rc = nu_sha256(dc->source + dc->certBegin, dc->sigIndex - dc->certBegin, digest);
    if (rc == NU_OK)
        rc = nu_p256_verify(pub, digest, dc->signature, dc->sigLength);
    return rc;
}

static int x509__date(const byte *raw, int raw_len, int64_t *out)
{
    const byte *date = NULL;
    byte format = 0;
    int len = 0;
    struct tm tm;
    memset(&tm, 0, sizeof(tm));
    if (!raw || wc_GetDateInfo(raw, raw_len, &date, &format, &len) != 0 ||
        wc_GetDateAsCalendarTime(date, len, format, &tm) != 0)
        return NU_ERR_DECODE;
    *out = (int64_t)timegm(&tm);
    return NU_OK;
}

/* ------------------------------------------------------------------ issue */

static int x509__req_ok(const struct nu_x509_issue_req *req, const struct nu_signer *key)
{
    if (!req || !key || !key->sign_digest)
        return 0;
    if (!x509__name_ok(req->cn) || (req->ou && *req->ou && !x509__name_ok(req->ou)) ||
        (req->o && *req->o && !x509__name_ok(req->o)))
        return 0;
    if (req->not_after <= req->not_before || req->key_usage == 0 || (req->key_usage & ~0xfu) ||
        (req->ext_key_usage & ~0x3u))
        return 0;
    /* A leaf that could sign certificates would be a CA in disguise. */
    if (!req->is_ca && (req->key_usage & (NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN)))
        return 0;
    return !req->is_ca || req->path_len <= 255;
}

/* The issuer certificate must be a CA whose key is the signer's. */
static int x509__check_issuer(const uint8_t *der, size_t len, const struct nu_signer *key)
{
    DecodedCert dc;
    uint8_t pub[NU_P256_PUB_LEN];
    if (len > NU_X509_CERT_MAX)
        return NU_ERR_TOO_LARGE;
    if (x509__parse(der, len, CERT_TYPE, &dc) != NU_OK)
        return NU_ERR_BAD_CERT;
    int rc = x509__dc_pub(&dc, pub) == NU_OK ? NU_OK : NU_ERR_BAD_CERT;
    if (rc == NU_OK && !dc.isCA) {
        nu_error("x509: issuer certificate is not a CA");
        rc = NU_ERR_BAD_CERT;
    }
    if (rc == NU_OK && nu_memeq_ct(pub, key->pub, NU_P256_PUB_LEN) != 0) {
        nu_error("x509: the signing key is not the issuer certificate's key");
        rc = NU_ERR_INVALID_ARG;
    }
    wc_FreeDecodedCert(&dc);
    return rc;
}

static word16 x509__wolf_ku(unsigned ku)
{
    word16 out = 0;
    if (ku & NU_X509_KU_DIGITAL_SIGNATURE)
        out |= KEYUSE_DIGITAL_SIG;
    if (ku & NU_X509_KU_KEY_AGREEMENT)
        out |= KEYUSE_KEY_AGREE;
    if (ku & NU_X509_KU_KEY_CERT_SIGN)
        out |= KEYUSE_KEY_CERT_SIGN;
    if (ku & NU_X509_KU_CRL_SIGN)
        out |= KEYUSE_CRL_SIGN;
    return out;
}

/* Subject, validity, serial, constraints and usages of the new certificate. */
static int x509__fill(Cert *cert, const struct nu_x509_issue_req *req)
{
    cert->sigType = CTC_SHA256wECDSA;
    x509__set_name(&cert->subject, req->cn, req->ou, req->o);
    int rc = x509__time_der(req->not_before, cert->beforeDate, &cert->beforeDateSz);
    if (rc == NU_OK)
        rc = x509__time_der(req->not_after, cert->afterDate, &cert->afterDateSz);
    if (rc == NU_OK)
        rc = x509__serial(cert);
    if (rc != NU_OK)
        return rc;
    cert->isCA = req->is_ca ? 1 : 0;
    cert->basicConstSet = 1; /* leaves say CA:FALSE explicitly */
    if (req->is_ca && req->path_len >= 0) {
        cert->pathLen = (byte)req->path_len;
        cert->pathLenSet = 1;
    }
    cert->keyUsage = x509__wolf_ku(req->key_usage);
    if (req->ext_key_usage & NU_X509_EKU_SERVER_AUTH)
        cert->extKeyUsage |= EXTKEYUSE_SERVER_AUTH;
    if (req->ext_key_usage & NU_X509_EKU_CLIENT_AUTH)
        cert->extKeyUsage |= EXTKEYUSE_CLIENT_AUTH;
    return x509__san(cert, req);
}

/* Issuer name and key identifiers: from the issuer certificate, or ours. */
static int x509__link_issuer(Cert *cert, ecc_key *subject, const uint8_t *issuer_der,
                             size_t issuer_len)
{
    if (wc_SetSubjectKeyIdFromPublicKey_ex(cert, ECC_TYPE, subject) != 0)
        return NU_ERR_CRYPTO;
    if (!issuer_der) {
        cert->selfSigned = 1;
        return wc_SetAuthKeyIdFromPublicKey_ex(cert, ECC_TYPE, subject) == 0 ? NU_OK
                                                                             : NU_ERR_CRYPTO;
    }
    cert->selfSigned = 0;
    if (wc_SetIssuerBuffer(cert, issuer_der, (int)issuer_len) != 0 ||
        wc_SetAuthKeyIdFromCert(cert, issuer_der, (int)issuer_len) != 0)
        return NU_ERR_BAD_CERT;
    return NU_OK;
}

int nu_x509_issue(const struct nu_x509_issue_req *req, const struct nu_signer *issuer_key,
                  const uint8_t *issuer_der, size_t issuer_len, uint8_t **out_der, size_t *out_len)
{
    if (!out_der || !out_len)
        return NU_ERR_INVALID_ARG;
    *out_der = NULL;
    *out_len = 0;
    if (!x509__req_ok(req, issuer_key) || (issuer_der && issuer_len == 0))
        return NU_ERR_INVALID_ARG;
    if (!issuer_der && memcmp(req->pub, issuer_key->pub, NU_P256_PUB_LEN) != 0)
        return NU_ERR_INVALID_ARG; /* self-signed means signed by the subject key */
    int rc = issuer_der ? x509__check_issuer(issuer_der, issuer_len, issuer_key) : NU_OK;
    if (rc != NU_OK)
        return rc;

    Cert *cert = malloc(sizeof(*cert));
    uint8_t *buf = malloc(NU_X509_CERT_MAX);
    WC_RNG rng;
    ecc_key subject;
    int rng_ok = 0, key_ok = 0;
    if (!cert || !buf) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    if (wc_InitCert(cert) != 0 || wc_InitRng(&rng) != 0) {
        rc = NU_ERR_CRYPTO;
        goto out;
    }
    rng_ok = 1;
    if (wc_ecc_init(&subject) != 0) {
        rc = NU_ERR_CRYPTO;
        goto out;
    }
    key_ok = 1;
    rc = x509__import_pub(req->pub, &subject);
    if (rc == NU_OK)
        rc = x509__fill(cert, req);
    if (rc == NU_OK)
        rc = x509__link_issuer(cert, &subject, issuer_der, issuer_len);
    if (rc != NU_OK)
        goto out;
    int body = wc_MakeCert_ex(cert, buf, NU_X509_CERT_MAX, ECC_TYPE, &subject, &rng);
    if (body <= 0) {
        nu_error("x509: MakeCert: wolfSSL %d (%s)", body, wc_GetErrorString(body));
        rc = NU_ERR_CRYPTO;
        goto out;
    }
    size_t body_len = (size_t)body;
    rc = x509__bc_critical(buf, &body_len, NU_X509_CERT_MAX);
    if (rc == NU_OK)
        rc = x509__sign(buf, (int)body_len, NU_X509_CERT_MAX, issuer_key, out_len);
out:
    if (key_ok)
        wc_ecc_free(&subject);
    if (rng_ok)
        wc_FreeRng(&rng);
    free(cert);
    if (rc != NU_OK) {
        free(buf);
        *out_len = 0;
        return rc;
    }
    *out_der = buf;
    return NU_OK;
}

/* -------------------------------------------------------------------- CSR */

int nu_x509_csr_make(const struct nu_signer *key, const char *cn, const char *ou, const char *o,
                     uint8_t **out_der, size_t *out_len)
{
    if (!out_der || !out_len)
        return NU_ERR_INVALID_ARG;
    *out_der = NULL;
    *out_len = 0;
    if (!key || !key->sign_digest || !x509__name_ok(cn) || (ou && *ou && !x509__name_ok(ou)) ||
        (o && *o && !x509__name_ok(o)))
        return NU_ERR_INVALID_ARG;
    Cert *cert = malloc(sizeof(*cert));
    uint8_t *buf = malloc(NU_X509_CSR_MAX);
    ecc_key pub;
    int key_ok = 0, rc = NU_OK;
    if (!cert || !buf) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    if (wc_InitCert(cert) != 0 || wc_ecc_init(&pub) != 0) {
        rc = NU_ERR_CRYPTO;
        goto out;
    }
    key_ok = 1;
    rc = x509__import_pub(key->pub, &pub);
    if (rc != NU_OK)
        goto out;
    cert->version = 0; /* PKCS#10 CertificationRequestInfo version is v1 (0) */
    cert->sigType = CTC_SHA256wECDSA;
    x509__set_name(&cert->subject, cn, ou, o);
    int body = wc_MakeCertReq_ex(cert, buf, NU_X509_CSR_MAX, ECC_TYPE, &pub);
    if (body <= 0) {
        nu_error("x509: MakeCertReq: wolfSSL %d (%s)", body, wc_GetErrorString(body));
        rc = NU_ERR_CRYPTO;
        goto out;
    }
    rc = x509__sign(buf, body, NU_X509_CSR_MAX, key, out_len);
out:
    if (key_ok)
        wc_ecc_free(&pub);
    free(cert);
    if (rc != NU_OK) {
        free(buf);
        *out_len = 0;
        return rc;
    }
    *out_der = buf;
    return NU_OK;
}

int nu_x509_csr_parse_verify(const uint8_t *der, size_t len, struct nu_x509_csr_info *out)
{
    if (!out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    if (!der)
        return NU_ERR_INVALID_ARG;
    if (len > NU_X509_CSR_MAX)
        return NU_ERR_TOO_LARGE;
    DecodedCert dc;
    if (x509__parse(der, len, CERTREQ_TYPE, &dc) != NU_OK)
        return NU_ERR_BAD_CSR;
    const char *why = NULL;
    if (!dc.isCSR)
        why = "not a CSR";
    else if (x509__dc_pub(&dc, out->pub) != NU_OK)
        why = "key is not ECDSA P-256";
    else if (x509__dc_check_sig(&dc, out->pub) != NU_OK)
        why = "self-signature does not verify (or is not ecdsa-with-SHA256)";
    else if (x509__dc_names(&dc, 1, out->cn, out->ou, out->o) != NU_OK)
        why = "subject names outside the identity alphabet, too long or repeated";
    else if (out->cn[0] == '\0')
        why = "no CN";
    wc_FreeDecodedCert(&dc);
    if (why) {
        nu_warn("x509: CSR refused: %s", why);
        memset(out, 0, sizeof(*out));
        return NU_ERR_BAD_CSR;
    }
    return NU_OK;
}

/* ------------------------------------------------------------------- info */

static int x509__info_fill(DecodedCert *dc, struct nu_x509_cert_info *out)
{
    if (dc->serialSz <= 0 || dc->serialSz > 20 ||
        nu_hex_encode(dc->serial, (size_t)dc->serialSz, out->serial_hex, sizeof(out->serial_hex)) !=
            NU_OK)
        return NU_ERR_DECODE;
    int rc = x509__dc_names(dc, 0, out->cn, out->ou, out->o);
    if (rc == NU_OK && dc->issuerRaw) {
        /* wolfSSL keeps the issuer only as text ("/O=../CN=.."): the CN is read from
         * there, for display; a CN holding "/" is cut short, never trusted. */
        const char *p = strstr(dc->issuer, "/CN=");
        if (p) {
            p += 4;
            size_t n = strcspn(p, "/");
            rc = x509__copy_name(p, (int)(n > NU_X509_NAME_MAX ? NU_X509_NAME_MAX + 1 : n), 0,
                                 out->issuer_cn);
        }
    }
    if (rc == NU_OK)
        rc = x509__date(dc->beforeDate, dc->beforeDateLen, &out->not_before);
    if (rc == NU_OK)
        rc = x509__date(dc->afterDate, dc->afterDateLen, &out->not_after);
    if (rc == NU_OK)
        rc = x509__dc_pub(dc, out->pub);
    out->is_ca = dc->isCA ? 1 : 0;
    return rc;
}

int nu_x509_cert_info(const uint8_t *der, size_t len, struct nu_x509_cert_info *out)
{
    if (!out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    if (!der)
        return NU_ERR_INVALID_ARG;
    if (len > NU_X509_CERT_MAX)
        return NU_ERR_TOO_LARGE;
    DecodedCert dc;
    if (x509__parse(der, len, CERT_TYPE, &dc) != NU_OK)
        return NU_ERR_BAD_CERT;
    int rc = x509__info_fill(&dc, out);
    wc_FreeDecodedCert(&dc);
    if (rc != NU_OK) {
        memset(out, 0, sizeof(*out));
        return NU_ERR_BAD_CERT;
    }
    return NU_OK;
}

/* ------------------------------------------------------------------ chain */

/* A certificate of the path being verified. */
struct x509__node {
    const uint8_t *der;
    size_t len;
    DecodedCert dc;
    int parsed;
    int used;
};

static int x509__same(const byte *a, int a_len, const byte *b, int b_len)
{
    return a && b && a_len == b_len && memcmp(a, b, (size_t)a_len) == 0;
}

static int x509__node_parse(struct x509__node *n, const uint8_t *der, size_t len)
{
    n->der = der;
    n->len = len;
    if (!der || len == 0)
        return NU_ERR_INVALID_ARG;
    if (len > NU_X509_CERT_MAX)
        return NU_ERR_TOO_LARGE;
    if (x509__parse(der, len, CERT_TYPE, &n->dc) != NU_OK)
        return NU_ERR_BAD_CERT;
    n->parsed = 1;
    return NU_OK;
}

/* A certificate that vouches for others: CA:TRUE, keyCertSign when keyUsage
 * is present, and no more CAs below it than its pathLenConstraint allows. */
static int x509__ca_ok(const DecodedCert *dc, size_t cas_below)
{
    if (!dc->isCA)
        return 0;
    if (dc->extKeyUsageSet && !(dc->extKeyUsage & KEYUSE_KEY_CERT_SIGN))
        return 0;
    return !dc->pathLengthSet || cas_below <= dc->pathLength;
}

/*
 * Order the path leaf -> ... -> root by names: path[0] is the leaf, then the
 * intermediate that issued it, and so on; *out_n counts the intermediates.
 */
static int x509__build_path(struct x509__node *leaf, struct x509__node *inter, size_t n_inter,
                            struct x509__node *root, struct x509__node **path, size_t *out_n)
{
    struct x509__node *cur = leaf;
    size_t n = 0;
    while (!x509__same(cur->dc.issuerRaw, cur->dc.issuerRawLen, root->dc.subjectRaw,
                       root->dc.subjectRawLen)) {
        struct x509__node *next = NULL;
        for (size_t i = 0; i < n_inter && !next; i++) {
            if (!inter[i].used && x509__same(cur->dc.issuerRaw, cur->dc.issuerRawLen,
                                             inter[i].dc.subjectRaw, inter[i].dc.subjectRawLen))
                next = &inter[i];
        }
        if (!next) {
            nu_warn("x509: no issuer for a certificate of the chain");
            return NU_ERR_BAD_CERT;
        }
        next->used = 1;
        path[n++] = next;
        cur = next;
    }
    *out_n = n;
    for (size_t i = 0; i < n; i++) {
        if (!x509__ca_ok(&path[i]->dc, i)) {
            nu_warn("x509: an intermediate of the chain may not issue certificates");
            return NU_ERR_BAD_CERT;
        }
    }
    if (!x509__ca_ok(&root->dc, n)) {
        nu_warn("x509: the root may not issue this chain");
        return NU_ERR_BAD_CERT;
    }
    return NU_OK;
}

static int x509__cm_status(int wc, const char *what)
{
    if (wc == WOLFSSL_SUCCESS)
        return NU_OK;
    nu_warn("x509: %s: wolfSSL %d (%s)", what, wc, wc_GetErrorString(wc));
    switch (wc) {
    case ASN_AFTER_DATE_E:
    case ASN_BEFORE_DATE_E:
        return NU_ERR_EXPIRED;
    case MEMORY_E:
        return NU_ERR_NOMEM;
    default:
        return NU_ERR_BAD_CERT;
    }
}

/*
 * wolfSSL_Init() once per process. wolfSSL_CertManagerLoadCABuffer makes a
 * temporary WOLFSSL_CTX, and wolfSSL_CTX_new calls wolfSSL_Init() while the
 * library's reference count is 0; in 5.5.4 that check and the init of its
 * count mutex are not atomic, so the first chain checks of several threads at
 * once (a programmer's sockets starting) could fail with -1. Initialised here
 * first, the count is never 0 again (nothing calls wolfSSL_Cleanup).
 */
static pthread_once_t x509__ssl_once = PTHREAD_ONCE_INIT;
static int x509__ssl_status;

static void x509__ssl_init_once(void)
{
    x509__ssl_status = wolfSSL_Init();
}

/* Verify the ordered path with a certificate manager, root first, each CA
 * trusted only after it verified itself. */
static int x509__cm_verify(struct x509__node *leaf, struct x509__node **path, size_t n,
                           struct x509__node *root)
{
    if (pthread_once(&x509__ssl_once, x509__ssl_init_once) != 0 ||
        x509__ssl_status != WOLFSSL_SUCCESS)
        return NU_ERR_CRYPTO;
    /* The signature checks fill this thread's ECC cache: freed at its exit
     * (a thread that only checked chains leaked it, ~1.6 MB, under LSan). */
    int arm = nu_crypto_thread_arm();
    if (arm != NU_OK)
        return arm;
    WOLFSSL_CERT_MANAGER *cm = wolfSSL_CertManagerNew();
    if (!cm)
        return NU_ERR_NOMEM;
    int rc = x509__cm_status(
        wolfSSL_CertManagerLoadCABuffer(cm, root->der, (long)root->len, WOLFSSL_FILETYPE_ASN1),
        "load root");
    if (rc == NU_OK)
        rc = x509__cm_status(
            wolfSSL_CertManagerVerifyBuffer(cm, root->der, (long)root->len, WOLFSSL_FILETYPE_ASN1),
            "verify root");
    for (size_t i = n; rc == NU_OK && i-- > 0;) {
        const struct x509__node *c = path[i];
        rc = x509__cm_status(
            wolfSSL_CertManagerVerifyBuffer(cm, c->der, (long)c->len, WOLFSSL_FILETYPE_ASN1),
            "verify intermediate");
        if (rc == NU_OK)
            rc = x509__cm_status(
                wolfSSL_CertManagerLoadCABuffer(cm, c->der, (long)c->len, WOLFSSL_FILETYPE_ASN1),
                "load intermediate");
    }
    if (rc == NU_OK)
        rc = x509__cm_status(
            wolfSSL_CertManagerVerifyBuffer(cm, leaf->der, (long)leaf->len, WOLFSSL_FILETYPE_ASN1),
            "verify leaf");
    wolfSSL_CertManagerFree(cm);
    return rc;
}

int nu_x509_verify_chain(const uint8_t *leaf, size_t leaf_len, const struct nu_x509_der *chain,
                         size_t n_chain, const uint8_t *root, size_t root_len)
{
    struct x509__node nodes[NU_X509_CHAIN_MAX + 2];
    struct x509__node *path[NU_X509_CHAIN_MAX];
    struct x509__node *lf = &nodes[0], *rt = &nodes[1], *inter = &nodes[2];
    size_t n_path = 0;
    if (n_chain > 0 && !chain)
        return NU_ERR_INVALID_ARG;
    if (n_chain > NU_X509_CHAIN_MAX)
        return NU_ERR_TOO_LARGE;
    memset(nodes, 0, sizeof(nodes));
    int rc = x509__node_parse(lf, leaf, leaf_len);
    if (rc == NU_OK)
        rc = x509__node_parse(rt, root, root_len);
    for (size_t i = 0; rc == NU_OK && i < n_chain; i++)
        rc = x509__node_parse(&inter[i], chain[i].der, chain[i].len);
    if (rc == NU_OK)
        rc = x509__build_path(lf, inter, n_chain, rt, path, &n_path);
    if (rc == NU_OK)
        rc = x509__cm_verify(lf, path, n_path, rt);
    for (size_t i = 0; i < n_chain + 2; i++) {
        if (nodes[i].parsed)
            wc_FreeDecodedCert(&nodes[i].dc);
    }
    return rc;
}
