/*
 * cloud_crl — the device CRL on OpenSSL 3 libcrypto, signed through a nu_signer.
 *
 * OpenSSL builds and encodes the whole CRL (no DER is written by hand here).
 * Its signing step wants an EVP_PKEY; ours is an EC_KEY whose EC_KEY_METHOD
 * sends the digest to the nu_signer (the HSM). That is how PKCS#11 engines
 * (libp11) plug a hardware key into OpenSSL: OpenSSL 3 marks such an EC_KEY
 * "foreign" and signs through the legacy path that calls our method. The
 * EC_KEY_METHOD API is deprecated in OpenSSL 3; the non-deprecated
 * alternative is a whole provider (key manager plus signature operation),
 * far more code for the same effect. So the deprecation warnings, and only
 * them, are silenced for this one file.
 */
#define OPENSSL_SUPPRESS_DEPRECATED 1

#include "cloud_crl.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_x509.h"

#include <openssl/asn1.h>
#include <openssl/bio.h>
#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/obj_mac.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* 9999-12-31T23:59:59Z: the last second an X.509 time can express. */
#define CRL__TIME_MAX_S 253402300799ull
#define CRL__REASON_TEXT_MAX 32

/* What the EC_KEY_METHOD callback needs: the signer, and where to leave its
 * error so the caller can return the signer's own code (HSM, PERMISSION...). */
struct crl__sign_ctx {
    const struct nu_signer *signer;
    int rc;
};

/* ------------------------------------------------------------ reasons */

int cloud_crl_reason_code(const char *reason)
{
    static const struct {
        const char *name; /* lower case, no separators */
        int code;
    } table[] = {
        {"unspecified", -1}, /* RFC 5280 5.3.1: SHOULD be absent instead */
        {"keycompromise", 1}, {"cacompromise", 2},         {"affiliationchanged", 3},
        {"superseded", 4},    {"cessationofoperation", 5}, {"privilegewithdrawn", 9},
    };
    char norm[CRL__REASON_TEXT_MAX];
    size_t n = 0;

    if (reason == NULL)
        return -1;
    for (const char *p = reason; *p != '\0' && *p != ':'; p++) {
        if (*p == '-' || *p == '_' || *p == ' ' || *p == '\t')
            continue;
        if (n + 1 >= sizeof(norm))
            return -1;
        norm[n++] = (char)tolower((unsigned char)*p);
    }
    norm[n] = '\0';
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strcmp(norm, table[i].name) == 0)
            return table[i].code;
    return -1;
}

/* ------------------------------------------------------------ checks */

static int crl__check_times(uint64_t this_update_ms, uint64_t next_update_ms)
{
    if (next_update_ms / 1000 <= this_update_ms / 1000 || next_update_ms / 1000 > CRL__TIME_MAX_S)
        return NU_ERR_INVALID_ARG;
    return NU_OK;
}

/* Everything about the entries that needs no OpenSSL, before any work. */
static int crl__check_entries(const struct cloud_crl_entry *entries, size_t n)
{
    if (n > CLOUD_CRL_ENTRIES_MAX)
        return NU_ERR_TOO_LARGE;
    if (n > 0 && entries == NULL)
        return NU_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++) {
        const struct cloud_crl_entry *e = &entries[i];
        size_t nonzero = 0;
        if (e->serial == NULL || e->serial_len == 0 || e->serial_len > CLOUD_CRL_SERIAL_MAX ||
            e->revoked_at_ms / 1000 > CRL__TIME_MAX_S)
            return NU_ERR_INVALID_ARG;
        for (size_t j = 0; j < e->serial_len; j++)
            nonzero |= e->serial[j];
        if (nonzero == 0) /* RFC 5280: serials are positive */
            return NU_ERR_INVALID_ARG;
    }
    return NU_OK;
}

/*
 * Parse the CA certificate and check that `ca` can sign for it: a P-256 CA
 * certificate whose key is the signer's and whose keyUsage (if any) has
 * cRLSign, so verifiers will accept what it signs.
 */
static int crl__ca_load(const struct nu_signer *ca, const uint8_t *der, size_t len, X509 **out_ca)
{
    struct nu_x509_cert_info info;
    const unsigned char *p = der;
    X509 *cert = NULL;
    int rc;

    *out_ca = NULL;
    if (len > NU_X509_CERT_MAX) {
        rc = NU_ERR_TOO_LARGE;
        goto out;
    }
    cert = d2i_X509(NULL, &p, (long)len);
    if (cert == NULL || p != der + len) {
        rc = NU_ERR_DECODE;
        goto out;
    }
    /* nu_x509 gives the key as the signer holds it (65-byte point, P-256 only). */
    rc = nu_x509_cert_info(der, len, &info);
    if (rc != NU_OK || !info.is_ca || X509_check_ca(cert) == 0 ||
        (X509_get_key_usage(cert) & KU_CRL_SIGN) == 0) {
        rc = NU_ERR_BAD_CERT;
        goto out;
    }
    if (memcmp(info.pub, ca->pub, NU_P256_PUB_LEN) != 0) {
        rc = NU_ERR_INVALID_ARG; /* wrong key: nobody could verify the CRL */
        goto out;
    }
    *out_ca = cert;
    cert = NULL;
out:
    X509_free(cert);
    return rc;
}

/* ------------------------------------------------------- CRL contents */

/* Unix ms -> a new ASN1_TIME (UTCTime or GeneralizedTime as RFC 5280 wants). */
static ASN1_TIME *crl__time(uint64_t ms)
{
    return ASN1_TIME_set(NULL, (time_t)(ms / 1000));
}

static int crl__add_entry(X509_CRL *crl, const struct cloud_crl_entry *e)
{
    X509_REVOKED *rev = X509_REVOKED_new();
    BIGNUM *bn = BN_bin2bn(e->serial, (int)e->serial_len, NULL);
    ASN1_INTEGER *serial = NULL;
    ASN1_TIME *when = crl__time(e->revoked_at_ms);
    ASN1_ENUMERATED *reason = NULL;
    int code = cloud_crl_reason_code(e->reason);
    int rc = NU_ERR_NOMEM;

    if (rev == NULL || bn == NULL || when == NULL ||
        (serial = BN_to_ASN1_INTEGER(bn, NULL)) == NULL)
        goto out;
    if (code >= 0 &&
        ((reason = ASN1_ENUMERATED_new()) == NULL || ASN1_ENUMERATED_set(reason, code) != 1))
        goto out;
    rc = NU_ERR_CRYPTO;
    if (X509_REVOKED_set_serialNumber(rev, serial) != 1 ||
        X509_REVOKED_set_revocationDate(rev, when) != 1 ||
        (reason != NULL && X509_REVOKED_add1_ext_i2d(rev, NID_crl_reason, reason, 0, 0) != 1) ||
        X509_CRL_add0_revoked(crl, rev) != 1)
        goto out;
    rev = NULL; /* the CRL owns it now */
    rc = NU_OK;
out:
    ASN1_ENUMERATED_free(reason);
    ASN1_TIME_free(when);
    ASN1_INTEGER_free(serial);
    BN_free(bn);
    X509_REVOKED_free(rev);
    return rc;
}

/* Sort the entries by serial (verifiers search them) and refuse a serial
 * listed twice: two entries for one certificate means the caller's list is
 * wrong, and guessing which revocation date is right is not ours to do. */
static int crl__sort_unique(X509_CRL *crl)
{
    STACK_OF(X509_REVOKED) * revs;

    if (X509_CRL_sort(crl) != 1)
        return NU_ERR_CRYPTO;
    revs = X509_CRL_get_REVOKED(crl);
    for (int i = 1; i < sk_X509_REVOKED_num(revs); i++) {
        const ASN1_INTEGER *a = X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revs, i - 1));
        const ASN1_INTEGER *b = X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revs, i));
        if (ASN1_INTEGER_cmp(a, b) == 0)
            return NU_ERR_INVALID_ARG;
    }
    return NU_OK;
}

/* cRLNumber and authorityKeyIdentifier (keyIdentifier = the CA's SKI). */
static int crl__add_extensions(X509_CRL *crl, X509 *ca, uint64_t crl_number)
{
    ASN1_INTEGER *num = ASN1_INTEGER_new();
    AUTHORITY_KEYID *akid = NULL;
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(ca);
    int rc = NU_ERR_NOMEM;

    if (num == NULL || ASN1_INTEGER_set_uint64(num, crl_number) != 1)
        goto out;
    if (ski != NULL && ((akid = AUTHORITY_KEYID_new()) == NULL ||
                        (akid->keyid = ASN1_OCTET_STRING_dup(ski)) == NULL))
        goto out;
    rc = NU_ERR_CRYPTO;
    if (X509_CRL_add1_ext_i2d(crl, NID_crl_number, num, 0, 0) != 1 ||
        (akid != NULL && X509_CRL_add1_ext_i2d(crl, NID_authority_key_identifier, akid, 0, 0) != 1))
        goto out;
    rc = NU_OK;
out:
    AUTHORITY_KEYID_free(akid);
    ASN1_INTEGER_free(num);
    return rc;
}

/* The unsigned CRL: version, issuer, dates, entries, extensions. */
static int crl__make(X509 *ca, const struct cloud_crl_entry *entries, size_t n, uint64_t crl_number,
                     uint64_t this_update_ms, uint64_t next_update_ms, X509_CRL **out_crl)
{
    X509_CRL *crl = X509_CRL_new();
    ASN1_TIME *last = crl__time(this_update_ms);
    ASN1_TIME *next = crl__time(next_update_ms);
    int rc = NU_ERR_NOMEM;

    if (crl == NULL || last == NULL || next == NULL)
        goto out;
    rc = NU_ERR_CRYPTO;
    if (X509_CRL_set_version(crl, 1) != 1 || /* 1 = v2, needed for extensions */
        X509_CRL_set_issuer_name(crl, X509_get_subject_name(ca)) != 1 ||
        X509_CRL_set1_lastUpdate(crl, last) != 1 || X509_CRL_set1_nextUpdate(crl, next) != 1)
        goto out;
    rc = NU_OK;
    for (size_t i = 0; i < n && rc == NU_OK; i++)
        rc = crl__add_entry(crl, &entries[i]);
    if (rc == NU_OK)
        rc = crl__sort_unique(crl);
    if (rc == NU_OK)
        rc = crl__add_extensions(crl, ca, crl_number);
    if (rc == NU_OK) {
        *out_crl = crl;
        crl = NULL;
    }
out:
    ASN1_TIME_free(next);
    ASN1_TIME_free(last);
    X509_CRL_free(crl);
    return rc;
}

/* ------------------------------------------------------------ signing */

/*
 * EC_KEY_METHOD sign_sig: OpenSSL hands over the SHA-256 digest of the
 * TBSCertList; the nu_signer signs it and we give back the parsed signature.
 * Nonce handling is the signer's, so kinv and r (precomputed values) are
 * never used.
 */
static ECDSA_SIG *crl__sign_sig(const unsigned char *dgst, int dgst_len, const BIGNUM *kinv,
                                const BIGNUM *r, EC_KEY *key)
{
    /* Index 0 is the application-data slot OpenSSL reserves in every
     * ex_data class, so no process-wide index has to be allocated. */
    struct crl__sign_ctx *c = EC_KEY_get_ex_data(key, 0);
    uint8_t sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    const unsigned char *p = sig;
    ECDSA_SIG *s = NULL;

    (void)kinv;
    (void)r;
    if (c == NULL)
        return NULL;
    if (dgst_len != 32) {
        c->rc = NU_ERR_INTERNAL;
        return NULL;
    }
    c->rc = c->signer->sign_digest(c->signer->ctx, dgst, sig, &sig_len);
    if (c->rc != NU_OK)
        return NULL;
    if (sig_len <= sizeof(sig))
        s = d2i_ECDSA_SIG(NULL, &p, (long)sig_len);
    if (s == NULL || p != sig + sig_len) {
        ECDSA_SIG_free(s);
        c->rc = NU_ERR_CRYPTO;
        return NULL;
    }
    return s;
}

/*
 * An EVP_PKEY for the signer's public key whose signing calls crl__sign_sig
 * with *sctx. The method must outlive the key: free the key first.
 */
static int crl__signing_key(struct crl__sign_ctx *sctx, EC_KEY_METHOD **out_meth,
                            EVP_PKEY **out_pkey)
{
    EC_KEY_METHOD *meth = EC_KEY_METHOD_new(EC_KEY_OpenSSL());
    EC_KEY *ec = EC_KEY_new_by_curve_name(NID_X9_62_prime256v1);
    EVP_PKEY *pkey = EVP_PKEY_new();
    int (*sign)(int, const unsigned char *, int, unsigned char *, unsigned int *, const BIGNUM *,
                const BIGNUM *, EC_KEY *) = NULL;
    int rc = NU_ERR_NOMEM;

    if (meth == NULL || ec == NULL || pkey == NULL)
        goto out;
    /* Keep OpenSSL's DER wrapper `sign`; it calls sign_sig, which is ours. */
    EC_KEY_METHOD_get_sign(EC_KEY_OpenSSL(), &sign, NULL, NULL);
    EC_KEY_METHOD_set_sign(meth, sign, NULL, crl__sign_sig);
    rc = NU_ERR_CRYPTO;
    if (EC_KEY_set_method(ec, meth) != 1 ||
        EC_KEY_oct2key(ec, sctx->signer->pub, NU_P256_PUB_LEN, NULL) != 1 ||
        EC_KEY_set_ex_data(ec, 0, sctx) != 1 || EVP_PKEY_assign_EC_KEY(pkey, ec) != 1)
        goto out;
    ec = NULL; /* pkey owns it */
    *out_meth = meth;
    *out_pkey = pkey;
    meth = NULL;
    pkey = NULL;
    rc = NU_OK;
out:
    EVP_PKEY_free(pkey);
    EC_KEY_free(ec);
    if (meth != NULL) /* OpenSSL 3.0's EC_KEY_METHOD_free does not accept NULL */
        EC_KEY_METHOD_free(meth);
    return rc;
}

/* Sign with the nu_signer, then verify with the CA certificate's key. */
static int crl__sign_verify(X509_CRL *crl, const struct nu_signer *ca, X509 *ca_cert)
{
    struct crl__sign_ctx sctx = {.signer = ca, .rc = NU_OK};
    EC_KEY_METHOD *meth = NULL;
    EVP_PKEY *pkey = NULL;
    int rc = crl__signing_key(&sctx, &meth, &pkey);

    if (rc != NU_OK)
        goto out;
    if (X509_CRL_sign(crl, pkey, EVP_sha256()) <= 0) {
        rc = sctx.rc != NU_OK ? sctx.rc : NU_ERR_CRYPTO;
        goto out;
    }
    if (X509_CRL_verify(crl, X509_get0_pubkey(ca_cert)) != 1) {
        nu_warn("crl: the CA key made a signature that does not verify");
        rc = NU_ERR_CRYPTO;
        goto out;
    }
    rc = NU_OK;
out:
    EVP_PKEY_free(pkey);
    if (meth != NULL)
        EC_KEY_METHOD_free(meth);
    return rc;
}

/* i2d into a malloc() buffer (OpenSSL's own allocation would need OPENSSL_free). */
static int crl__to_der(X509_CRL *crl, uint8_t **out_der, size_t *out_len)
{
    int len = i2d_X509_CRL(crl, NULL);
    uint8_t *buf = NULL;
    unsigned char *p;

    if (len <= 0)
        return NU_ERR_CRYPTO;
    buf = malloc((size_t)len);
    if (buf == NULL)
        return NU_ERR_NOMEM;
    p = buf;
    if (i2d_X509_CRL(crl, &p) != len) {
        free(buf);
        return NU_ERR_CRYPTO;
    }
    *out_der = buf;
    *out_len = (size_t)len;
    return NU_OK;
}

/* Log what OpenSSL said (debug: the status code carries the meaning), then
 * drop everything it queued since `mark`, leaving the caller's queue as it was. */
static void crl__errors_pop(const char *what, int rc)
{
    unsigned long e = ERR_peek_last_error();
    if (rc != NU_OK && e != 0) {
        char buf[256];
        ERR_error_string_n(e, buf, sizeof(buf));
        nu_debug("crl: %s: %s (%s)", what, nu_err_name(rc), buf);
    }
    ERR_pop_to_mark();
}

/* ------------------------------------------------------------ public */

int cloud_crl_build(const struct nu_signer *ca, const uint8_t *ca_cert_der, size_t ca_cert_len,
                    const struct cloud_crl_entry *entries, size_t n, uint64_t crl_number,
                    uint64_t this_update_ms, uint64_t next_update_ms, uint8_t **out_der,
                    size_t *out_len)
{
    X509 *cert = NULL;
    X509_CRL *crl = NULL;
    int rc;

    if (out_der != NULL)
        *out_der = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (ca == NULL || ca->sign_digest == NULL || ca_cert_der == NULL || ca_cert_len == 0 ||
        out_der == NULL || out_len == NULL)
        return NU_ERR_INVALID_ARG;
    rc = crl__check_times(this_update_ms, next_update_ms);
    if (rc == NU_OK)
        rc = crl__check_entries(entries, n);
    if (rc != NU_OK)
        return rc;

    ERR_set_mark();
    rc = crl__ca_load(ca, ca_cert_der, ca_cert_len, &cert);
    if (rc == NU_OK)
        rc = crl__make(cert, entries, n, crl_number, this_update_ms, next_update_ms, &crl);
    if (rc == NU_OK)
        rc = crl__sign_verify(crl, ca, cert);
    if (rc == NU_OK)
        rc = crl__to_der(crl, out_der, out_len);
    crl__errors_pop("build", rc);
    X509_CRL_free(crl);
    X509_free(cert);
    return rc;
}

int cloud_crl_der_to_pem(const uint8_t *der, size_t der_len, char **out_pem, size_t *out_len)
{
    const unsigned char *p = der;
    X509_CRL *crl = NULL;
    BIO *bio = NULL;
    BUF_MEM *mem = NULL;
    char *pem = NULL;
    int rc;

    if (out_pem != NULL)
        *out_pem = NULL;
    if (out_len != NULL)
        *out_len = 0;
    if (der == NULL || der_len == 0 || out_pem == NULL || out_len == NULL)
        return NU_ERR_INVALID_ARG;
    if (der_len > CLOUD_CRL_DER_MAX)
        return NU_ERR_TOO_LARGE;

    ERR_set_mark();
    crl = d2i_X509_CRL(NULL, &p, (long)der_len);
    if (crl == NULL || p != der + der_len) {
        rc = NU_ERR_DECODE;
        goto out;
    }
    rc = NU_ERR_NOMEM;
    if ((bio = BIO_new(BIO_s_mem())) == NULL)
        goto out;
    rc = NU_ERR_CRYPTO;
    if (PEM_write_bio_X509_CRL(bio, crl) != 1 || BIO_get_mem_ptr(bio, &mem) != 1 || mem == NULL)
        goto out;
    rc = NU_ERR_NOMEM;
    if ((pem = malloc(mem->length + 1)) == NULL)
        goto out;
    memcpy(pem, mem->data, mem->length);
    pem[mem->length] = '\0';
    *out_pem = pem;
    *out_len = mem->length;
    rc = NU_OK;
out:
    crl__errors_pop("to PEM", rc);
    BIO_free(bio);
    X509_CRL_free(crl);
    return rc;
}
