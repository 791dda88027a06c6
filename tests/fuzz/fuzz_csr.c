/*
 * fuzz_csr — libFuzzer target for the X.509 parsers of outside input:
 * nu_x509_csr_parse_verify (CSRs from chips, programmers and `nusec`
 * users), nu_x509_cert_info (certificates in packages and answers) and
 * nu_x509_pem_to_der (PEM files an operator hands over).
 *
 * Input: byte 0 selects the parser (mod 4), the rest is its input.
 *
 * Properties:
 *   - typed errors only, *out zeroed on error;
 *   - an accepted CSR has a valid P-256 key, a CN of 1..63 characters of
 *     [A-Za-z0-9._:@-] and names without control characters, and a CSR
 *     made for the same names by nu_x509_csr_make parses to the same names
 *     (round trip);
 *   - certificate facts hold printable names and a valid P-256 key;
 *   - PEM: the DER found, written back as PEM, reads back to the same DER.
 */
#include "fuzz_common.h"
#include "nu_crypto.h"
#include "nu_x509.h"

#include <string.h>

static struct nu_p256_key *key;
static struct nu_signer signer;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    if (nu_p256_key_generate(&key) || nu_p256_key_signer(key, &signer))
        FUZZ_DIE("setup");
    return 0;
}

static void fuzz__name(const char *s, const char *what)
{
    size_t n = strnlen(s, NU_X509_NAME_MAX + 1);
    if (n > NU_X509_NAME_MAX)
        FUZZ_DIE("%s longer than %d", what, NU_X509_NAME_MAX);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c < 0x20 || c == 0x7f)
            FUZZ_DIE("%s holds control character 0x%02x", what, c);
    }
}

static int fuzz__cn_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
           strchr("._:@-", c) != NULL;
}

static void fuzz__csr(const uint8_t *d, size_t n)
{
    static const int refusals[] = {NU_ERR_BAD_CSR, NU_ERR_TOO_LARGE, -1};
    static const struct nu_x509_csr_info zero;
    struct nu_x509_csr_info info, again;
    int rc = nu_x509_csr_parse_verify(d, n, &info);
    if (rc != NU_OK) {
        fuzz_expect("csr_parse_verify", rc, refusals);
        if (memcmp(&info, &zero, sizeof(info)) != 0)
            FUZZ_DIE("refused CSR left facts behind");
        return;
    }
    size_t cn = strlen(info.cn);
    if (cn < 1 || cn > 63)
        FUZZ_DIE("CN of %zu characters accepted", cn);
    for (size_t i = 0; i < cn; i++) {
        if (!fuzz__cn_char(info.cn[i]))
            FUZZ_DIE("CN character 0x%02x accepted", (unsigned char)info.cn[i]);
    }
    fuzz__name(info.ou, "OU");
    fuzz__name(info.o, "O");
    if (nu_p256_pub_check(info.pub) != NU_OK)
        FUZZ_DIE("CSR key is not a P-256 point");
    uint8_t *der = NULL;
    size_t len = 0;
    rc = nu_x509_csr_make(&signer, info.cn, info.ou[0] ? info.ou : NULL,
                          info.o[0] ? info.o : NULL, &der, &len);
    if (rc == NU_OK) {
        rc = nu_x509_csr_parse_verify(der, len, &again);
        if (rc != NU_OK || strcmp(again.cn, info.cn) || strcmp(again.ou, info.ou) ||
            strcmp(again.o, info.o))
            FUZZ_DIE("CSR names do not round-trip: %s", nu_err_name(rc));
    }
    /* csr_make may refuse an O that parse accepted (it is stricter): no verdict then. */
    free(der);
}

static void fuzz__cert(const uint8_t *d, size_t n)
{
    static const int refusals[] = {NU_ERR_BAD_CERT, NU_ERR_TOO_LARGE, -1};
    struct nu_x509_cert_info info;
    int rc = nu_x509_cert_info(d, n, &info);
    if (rc != NU_OK) {
        fuzz_expect("cert_info", rc, refusals);
        return;
    }
    fuzz__name(info.cn, "CN");
    fuzz__name(info.ou, "OU");
    fuzz__name(info.o, "O");
    fuzz__name(info.issuer_cn, "issuer CN");
    if (strnlen(info.serial_hex, sizeof(info.serial_hex)) == sizeof(info.serial_hex))
        FUZZ_DIE("serial not terminated");
    if (nu_p256_pub_check(info.pub) != NU_OK)
        FUZZ_DIE("certificate key is not a P-256 point");
}

static void fuzz__pem(const uint8_t *d, size_t n, enum nu_x509_pem_kind kind)
{
    static const int refusals[] = {NU_ERR_TOO_LARGE, NU_ERR_NOT_FOUND, NU_ERR_DECODE, -1};
    uint8_t *der = NULL, *der2 = NULL;
    size_t len = 0, len2 = 0, used = 0;
    char *pem = NULL;
    size_t pem_len = 0;
    int rc = nu_x509_pem_to_der((const char *)d, n, kind, &der, &len, &used);
    if (rc != NU_OK) {
        fuzz_expect("pem_to_der", rc, refusals);
        return;
    }
    if (used > n || !der)
        FUZZ_DIE("consumed %zu of %zu", used, n);
    rc = nu_x509_der_to_pem(der, len, kind, &pem, &pem_len);
    if (rc == NU_OK) {
        rc = nu_x509_pem_to_der(pem, pem_len, kind, &der2, &len2, NULL);
        if (rc != NU_OK || len2 != len || memcmp(der, der2, len) != 0)
            FUZZ_DIE("PEM round trip: %s", nu_err_name(rc));
    } else if (rc != NU_ERR_TOO_LARGE && rc != NU_ERR_INVALID_ARG) {
        FUZZ_DIE("der_to_pem: %s", nu_err_name(rc));
    }
    free(der2);
    free(pem);
    free(der);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const uint8_t *d = data + 1;
    size_t n = size - 1;
    switch (data[0] & 3) {
    case 0: fuzz__csr(d, n); break;
    case 1: fuzz__cert(d, n); break;
    case 2: fuzz__pem(d, n, NU_X509_PEM_CSR); break;
    default: fuzz__pem(d, n, NU_X509_PEM_CERT); break;
    }
    return 0;
}
