/*
 * nu_x509_pem — the PEM half of nu_x509 (nu_x509.h): DER to PEM and back for
 * certificates and CSRs. Its own file because it shares nothing with the
 * certificate code of nu_x509.c but the header: no DecodedCert, no signer.
 */
#include "nu_x509.h"

#include "nu_err.h"
#include "nu_log.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>

#include <wolfssl/ssl.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/error-crypt.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* -------------------------------------------------------------------- PEM */

static const char *x509__pem_label(enum nu_x509_pem_kind kind)
{
    return kind == NU_X509_PEM_CSR ? "CERTIFICATE REQUEST" : "CERTIFICATE";
}

int nu_x509_der_to_pem(const uint8_t *der, size_t der_len, enum nu_x509_pem_kind kind,
                       char **out_pem, size_t *out_len)
{
    if (!out_pem || !out_len)
        return NU_ERR_INVALID_ARG;
    *out_pem = NULL;
    *out_len = 0;
    if (!der || der_len == 0 || (kind != NU_X509_PEM_CERT && kind != NU_X509_PEM_CSR))
        return NU_ERR_INVALID_ARG;
    if (der_len > NU_X509_CERT_MAX)
        return NU_ERR_TOO_LARGE;
    /* base64 (4/3) with a newline every 64 characters, plus the armour lines. */
    size_t cap = der_len * 2 + 128;
    char *pem = malloc(cap);
    if (!pem)
        return NU_ERR_NOMEM;
    int wtype = kind == NU_X509_PEM_CSR ? CERTREQ_TYPE : CERT_TYPE;
    int n = wc_DerToPem(der, (word32)der_len, (byte *)pem, (word32)cap - 1, wtype);
    if (n <= 0) {
        free(pem);
        return NU_ERR_CRYPTO;
    }
    pem[n] = '\0';
    *out_pem = pem;
    *out_len = (size_t)n;
    return NU_OK;
}

/* First occurrence of needle[n] in hay[len], or NULL (hay need not be a string). */
static const char *x509__find(const char *hay, size_t len, const char *needle)
{
    size_t n = strlen(needle);
    for (size_t i = 0; i + n <= len; i++) {
        if (memcmp(hay + i, needle, n) == 0)
            return hay + i;
    }
    return NULL;
}

/* One armoured object pem[0..len) (BEGIN to END line) -> DER, with wolfSSL's
 * PEM decoder on a NUL-terminated copy (it scans for strings). */
static int x509__pem_object(const char *pem, size_t len, int wtype, uint8_t **out_der,
                            size_t *out_len)
{
    char *copy = malloc(len + 1);
    uint8_t *der = malloc(len);
    int rc = NU_OK;
    if (!copy || !der) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    memcpy(copy, pem, len);
    copy[len] = '\0';
    int n = wc_CertPemToDer((const unsigned char *)copy, (int)len, der, (int)len, wtype);
    if (n <= 0) {
        nu_debug("x509: PEM: wolfSSL %d (%s)", n, wc_GetErrorString(n));
        rc = NU_ERR_DECODE;
        goto out;
    }
    *out_der = der;
    *out_len = (size_t)n;
    der = NULL;
out:
    free(der);
    free(copy);
    return rc;
}

int nu_x509_pem_to_der(const char *pem, size_t pem_len, enum nu_x509_pem_kind kind,
                       uint8_t **out_der, size_t *out_len, size_t *out_consumed)
{
    char begin[64], end[64];
    if (!out_der || !out_len)
        return NU_ERR_INVALID_ARG;
    *out_der = NULL;
    *out_len = 0;
    if (!pem || (kind != NU_X509_PEM_CERT && kind != NU_X509_PEM_CSR))
        return NU_ERR_INVALID_ARG;
    if (pem_len > NU_X509_PEM_MAX)
        return NU_ERR_TOO_LARGE;
    snprintf(begin, sizeof(begin), "-----BEGIN %s-----", x509__pem_label(kind));
    snprintf(end, sizeof(end), "-----END %s-----", x509__pem_label(kind));
    const char *b = x509__find(pem, pem_len, begin);
    if (!b)
        return NU_ERR_NOT_FOUND;
    const char *body = b + strlen(begin);
    const char *e = x509__find(body, pem_len - (size_t)(body - pem), end);
    if (!e)
        return NU_ERR_DECODE;
    const char *stop = e + strlen(end);
    int rc = x509__pem_object(b, (size_t)(stop - b),
                              kind == NU_X509_PEM_CSR ? CERTREQ_TYPE : CERT_TYPE, out_der, out_len);
    if (rc == NU_OK && *out_len > NU_X509_CERT_MAX) {
        free(*out_der);
        *out_der = NULL;
        *out_len = 0;
        rc = NU_ERR_TOO_LARGE;
    }
    if (rc == NU_OK && out_consumed) {
        const char *after = stop;
        size_t left = pem_len - (size_t)(after - pem);
        if (left > 0 && after[0] == '\r')
            after++, left--;
        if (left > 0 && after[0] == '\n')
            after++;
        *out_consumed = (size_t)(after - pem);
    }
    return rc;
}
