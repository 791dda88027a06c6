/*
 * cloud_crl: the device CRL as outside verifiers see it. A root CA and a
 * Device CA (software P-256 keys through struct nu_signer), two device
 * certificates; CRLs built here are checked with the openssl CLI (`crl`,
 * `verify -crl_check`), with wolfSSL's certificate manager (what the
 * programmers use), and signed once by a real SoftHSM2 key. Then a lying
 * signer, bad arguments and hostile CA certificates.
 *
 * No OpenSSL header here: wolfSSL's OpenSSL compatibility typedefs (pulled in
 * by <wolfssl/ssl.h>) clash with OpenSSL's own. The one libcrypto
 * function used to check the thread's error queue is declared by hand below.
 */
#include "cloud_crl.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_log.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <wolfssl/options.h>
#include <wolfssl/ssl.h>
#include <wolfssl/error-ssl.h>

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* libcrypto's (OpenSSL 3), see above; not wolfSSL's macro of the same name. */
#undef ERR_peek_error
unsigned long ERR_peek_error(void);

#define DAY_MS (86400ull * 1000ull)
#define T_2026 1767225600000ull /* 2026-01-01T00:00:00Z */
#define T_2051 2556144000000ull /* 2051-01-01T00:00:00Z: GeneralizedTime */
#define LARGE_N 5000

static char tmp[256];
static struct nu_p256_key *root_key, *ca_key;
static struct nu_signer root_signer, ca_signer;
static uint8_t *root_der, *ca_der, *rev_der, *ok_der;
static size_t root_len, ca_len, rev_len, ok_len;
static uint8_t rev_serial[20], ok_serial[20];
static size_t rev_serial_len, ok_serial_len;

/* ------------------------------------------------------------- helpers */

static int64_t now_s(void)
{
    return (int64_t)(nu_time_ms() / 1000);
}

/* No CUnit assertions here: the suite setup uses them too. Returns 0 or -1. */
static int write_file(const char *name, const void *data, size_t len)
{
    char path[512];
    if (nu_path_fmt(path, sizeof(path), "%s/%s", tmp, name) != NU_OK ||
        nu_file_write_atomic(path, data, len, 0644) != NU_OK)
        return -1;
    return 0;
}

static int write_cert_pem(const char *name, const uint8_t *der, size_t len)
{
    char *pem = NULL;
    size_t pem_len = 0;
    int rc = -1;
    if (nu_x509_der_to_pem(der, len, NU_X509_PEM_CERT, &pem, &pem_len) == NU_OK)
        rc = write_file(name, pem, pem_len);
    free(pem);
    return rc;
}

/* name.der and name.pem (through the module's PEM helper). */
static void save_crl(const char *name, const uint8_t *der, size_t len)
{
    char file[128], *pem = NULL;
    size_t pem_len = 0;
    snprintf(file, sizeof(file), "%s.der", name);
    CU_ASSERT_EQUAL(write_file(file, der, len), 0);
    CU_ASSERT_EQUAL_FATAL(cloud_crl_der_to_pem(der, len, &pem, &pem_len), NU_OK);
    CU_ASSERT_EQUAL(strlen(pem), pem_len);
    CU_ASSERT_PTR_NOT_NULL(strstr(pem, "-----BEGIN X509 CRL-----"));
    snprintf(file, sizeof(file), "%s.pem", name);
    CU_ASSERT_EQUAL(write_file(file, pem, pem_len), 0);
    free(pem);
}

/* Run a shell command in tmp; its stdout+stderr into *out (free()). Returns the exit status. */
static int run(char **out, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int run(char **out, const char *fmt, ...)
{
    char cmd[2048], path[512];
    uint8_t *buf = NULL;
    size_t len = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(cmd, sizeof(cmd), fmt, ap);
    va_end(ap);
    nu_path_fmt(path, sizeof(path), "%s/out.txt", tmp);
    int st = nu_test_sh("cd '%s' && (%s) >'%s' 2>&1", tmp, cmd, path);
    CU_ASSERT_EQUAL(nu_file_read(path, NU_FILE_MAX, &buf, &len), NU_OK);
    *out = (char *)buf;
    return st;
}

static size_t count(const char *hay, const char *needle)
{
    size_t n = 0;
    for (const char *p = hay; p != NULL && (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* "Serial Number: HEX" as openssl prints it (upper case, value's bytes). */
static void serial_line(const uint8_t *serial, size_t len, char *out, size_t cap)
{
    size_t off = (size_t)snprintf(out, cap, "Serial Number: ");
    while (len > 1 && serial[0] == 0) {
        serial++;
        len--;
    }
    for (size_t i = 0; i < len && off + 3 <= cap; i++)
        off += (size_t)snprintf(out + off, cap - off, "%02X", serial[i]);
}

static int build(const struct cloud_crl_entry *e, size_t n, uint64_t number, uint64_t this_ms,
                 uint64_t next_ms, uint8_t **der, size_t *len)
{
    return cloud_crl_build(&ca_signer, ca_der, ca_len, e, n, number, this_ms, next_ms, der, len);
}

/* A CRL that is current now, revoking the given entries. */
static void build_current(const struct cloud_crl_entry *e, size_t n, const char *name)
{
    uint8_t *der = NULL;
    size_t len = 0;
    uint64_t now = nu_time_ms();
    CU_ASSERT_EQUAL_FATAL(build(e, n, 7, now - 60000, now + DAY_MS, &der, &len), NU_OK);
    save_crl(name, der, len);
    free(der);
}

/* What out_der holds before a call that must reset it. */
static uint8_t stale[1];

/* Assert a failed build: code, nothing handed out, no OpenSSL error left
 * behind. Takes the out-params by address: they are read after the call. */
static void expect_fail(int got, int want, uint8_t **der, size_t *len)
{
    CU_ASSERT_EQUAL(got, want);
    CU_ASSERT_PTR_NULL(*der);
    CU_ASSERT_EQUAL(*len, 0);
    CU_ASSERT_EQUAL(ERR_peek_error(), 0);
    if (*der != stale)
        free(*der);
    *der = NULL;
}

static struct nu_x509_issue_req cert_req(const char *cn, const char *ou, const uint8_t pub[65],
                                         int is_ca, unsigned ku)
{
    struct nu_x509_issue_req r = {.cn = cn,
                                  .ou = ou,
                                  .o = "NuSEC Test OEM",
                                  .not_before = now_s() - 3600,
                                  .not_after = now_s() + 365 * 86400,
                                  .is_ca = is_ca,
                                  .path_len = is_ca ? 0 : -1,
                                  .key_usage = ku};
    memcpy(r.pub, pub, 65);
    return r;
}

static int leaf_serial(const uint8_t *der, size_t len, uint8_t *out, size_t *out_len)
{
    struct nu_x509_cert_info info;
    if (nu_x509_cert_info(der, len, &info) != NU_OK)
        return -1;
    return nu_hex_decode(info.serial_hex, out, 20, out_len) == NU_OK ? 0 : -1;
}

/* Root CA, Device CA (issued by root), two device certificates. */
static int suite_setup(void)
{
    struct nu_p256_key *dev = NULL;
    uint8_t pub[65];
    const unsigned ca_ku = NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN;
    int rc = 1;

    if (nu_test_tmpdir("crl", tmp, sizeof(tmp)) != 0 || nu_p256_key_generate(&root_key) != NU_OK ||
        nu_p256_key_generate(&ca_key) != NU_OK || nu_p256_key_generate(&dev) != NU_OK ||
        nu_p256_key_signer(root_key, &root_signer) != NU_OK ||
        nu_p256_key_signer(ca_key, &ca_signer) != NU_OK)
        goto out;
    struct nu_x509_issue_req r = cert_req("NuSEC Root CA", "pki", root_signer.pub, 1, ca_ku);
    r.path_len = 1;
    if (nu_x509_issue(&r, &root_signer, NULL, 0, &root_der, &root_len) != NU_OK)
        goto out;
    r = cert_req("NuSEC Device CA", "pki", ca_signer.pub, 1, ca_ku);
    if (nu_x509_issue(&r, &root_signer, root_der, root_len, &ca_der, &ca_len) != NU_OK ||
        nu_p256_key_pub(dev, pub) != NU_OK)
        goto out;
    r = cert_req("dev-0001", "device", pub, 0, NU_X509_KU_DIGITAL_SIGNATURE);
    if (nu_x509_issue(&r, &ca_signer, ca_der, ca_len, &rev_der, &rev_len) != NU_OK)
        goto out;
    r.cn = "dev-0002";
    if (nu_x509_issue(&r, &ca_signer, ca_der, ca_len, &ok_der, &ok_len) != NU_OK ||
        leaf_serial(rev_der, rev_len, rev_serial, &rev_serial_len) != 0 ||
        leaf_serial(ok_der, ok_len, ok_serial, &ok_serial_len) != 0)
        goto out;
    if (write_cert_pem("root.pem", root_der, root_len) != 0 ||
        write_cert_pem("ca.pem", ca_der, ca_len) != 0 ||
        write_cert_pem("revoked.pem", rev_der, rev_len) != 0 ||
        write_cert_pem("good.pem", ok_der, ok_len) != 0 ||
        nu_test_sh("cat '%s/root.pem' '%s/ca.pem' >'%s/chain.pem'", tmp, tmp, tmp) != 0)
        goto out;
    rc = 0;
out:
    nu_p256_key_destroy(dev);
    return rc;
}

static int suite_teardown(void)
{
    free(root_der);
    free(ca_der);
    free(rev_der);
    free(ok_der);
    nu_p256_key_destroy(root_key);
    nu_p256_key_destroy(ca_key);
    nu_test_rmtree(tmp);
    return 0;
}

/* --------------------------------------------------------------- tests */

static void test_reason_codes(void)
{
    CU_ASSERT_EQUAL(cloud_crl_reason_code("keyCompromise"), 1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("key-compromise"), 1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("KEY_COMPROMISE"), 1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("key compromise: left on the bench"), 1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("cACompromise"), 2);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("affiliationChanged"), 3);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("Superseded"), 4);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("cessation-of-operation"), 5);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("privilegeWithdrawn"), 9);
    /* RFC 5280: unspecified is expressed by leaving reasonCode out. */
    CU_ASSERT_EQUAL(cloud_crl_reason_code("unspecified"), -1);
    /* Not for final device revocation, or not for end-entity certificates. */
    CU_ASSERT_EQUAL(cloud_crl_reason_code("certificateHold"), -1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("removeFromCRL"), -1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("aACompromise"), -1);
    /* Free text, near misses, nothing. */
    CU_ASSERT_EQUAL(cloud_crl_reason_code("dropped on the floor"), -1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("the key was compromised"), -1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code("keyCompromised"), -1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code(""), -1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code(":keyCompromise"), -1);
    CU_ASSERT_EQUAL(cloud_crl_reason_code(NULL), -1);
    char longtext[4096];
    memset(longtext, 'k', sizeof(longtext) - 1);
    longtext[sizeof(longtext) - 1] = '\0';
    CU_ASSERT_EQUAL(cloud_crl_reason_code(longtext), -1);
}

/* Everything `openssl crl -text` shows: signature, issuer, dates, entries, reasons, extensions. */
static void test_crl_contents(void)
{
    static const uint8_t s_free[] = {0x41, 0x02, 0x03, 0x04, 0x05};
    static const uint8_t s_zero_lead[] = {0x00, 0x00, 0x12, 0x34};
    static const uint8_t s_max[20] = {0x7f, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    const struct cloud_crl_entry e[] = {
        {rev_serial, rev_serial_len, T_2026 - DAY_MS / 2, "keyCompromise"},
        {s_free, sizeof(s_free), T_2026 - DAY_MS, "returned by the CM, line 3 scrapped"},
        {s_zero_lead, sizeof(s_zero_lead), T_2026 - 1000, "superseded"},
        {s_max, sizeof(s_max), T_2026 - 2000, NULL},
        {ok_serial, ok_serial_len, T_2026 - 3000, "unspecified"},
    };
    uint8_t *der = NULL;
    size_t len = 0;
    char *out = NULL, line[96];

    CU_ASSERT_EQUAL_FATAL(build(e, 5, 42, T_2026, T_2051, &der, &len), NU_OK);
    CU_ASSERT_EQUAL(ERR_peek_error(), 0);
    save_crl("contents", der, len);
    free(der);

    CU_ASSERT_EQUAL(run(&out, "openssl crl -in contents.der -inform DER -CAfile chain.pem -noout"),
                    0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "verify OK"));
    free(out);
    /* The PEM helper's output is the same CRL. */
    CU_ASSERT_EQUAL(run(&out, "openssl crl -in contents.pem -outform DER | cmp - contents.der"), 0);
    free(out);

    CU_ASSERT_EQUAL(run(&out, "openssl crl -in contents.der -inform DER -noout -text"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Version 2 (0x1)"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Signature Algorithm: ecdsa-with-SHA256"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "CN = NuSEC Device CA"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Last Update: Jan  1 00:00:00 2026 GMT"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Next Update: Jan  1 00:00:00 2051 GMT"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "X509v3 CRL Number: \n                42\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "X509v3 Authority Key Identifier"));
    CU_ASSERT_EQUAL(count(out, "Serial Number: "), 5);
    serial_line(rev_serial, rev_serial_len, line, sizeof(line));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    serial_line(ok_serial, ok_serial_len, line, sizeof(line));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, line));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Serial Number: 4102030405\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Serial Number: 1234\n"));
    CU_ASSERT_PTR_NOT_NULL(
        strstr(out, "Serial Number: 7F0102030405060708090A0B0C0D0E0F10000000\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "Revocation Date: Dec 31 12:00:00 2025 GMT"));
    /* Reasons only where the text names one: free text, NULL and "unspecified" get none. */
    CU_ASSERT_EQUAL(count(out, "X509v3 CRL Reason Code"), 2);
    CU_ASSERT_EQUAL(count(out, "Key Compromise"), 1);
    CU_ASSERT_EQUAL(count(out, "Superseded"), 1);
    CU_ASSERT_PTR_NULL(strstr(out, "Unspecified"));
    CU_ASSERT_PTR_NULL(strstr(out, "line 3"));
    free(out);

    /* Entries sorted by serial (1234 < 4102030405 < the 16-byte ones < 7F01...). */
    CU_ASSERT_EQUAL(run(&out, "openssl crl -in contents.der -inform DER -noout -text | "
                              "grep 'Serial Number' | head -2 | tr -d ' \\n'"),
                    0);
    CU_ASSERT_STRING_EQUAL(out, "SerialNumber:1234SerialNumber:4102030405");
    free(out);

    /* authorityKeyIdentifier is the Device CA's subjectKeyIdentifier. */
    CU_ASSERT_EQUAL(run(&out, "ski=$(openssl x509 -in ca.pem -noout -ext subjectKeyIdentifier | "
                              "tail -1 | tr -d ' ') && test -n \"$ski\" && "
                              "openssl crl -in contents.der -inform DER -noout -text | "
                              "tr -d ' ' | grep -F \"$ski\""),
                    0);
    free(out);
}

static void test_crl_number_range(void)
{
    uint8_t *der = NULL;
    size_t len = 0;
    char *out = NULL;
    CU_ASSERT_EQUAL_FATAL(build(NULL, 0, UINT64_MAX, T_2026, T_2026 + DAY_MS, &der, &len), NU_OK);
    save_crl("bignum", der, len);
    free(der);
    CU_ASSERT_EQUAL(run(&out, "openssl crl -in bignum.der -inform DER -noout -crlnumber"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "crlNumber=0xFFFFFFFFFFFFFFFF"));
    free(out);
    CU_ASSERT_EQUAL_FATAL(build(NULL, 0, 0, T_2026, T_2026 + DAY_MS, &der, &len), NU_OK);
    save_crl("zero", der, len);
    free(der);
    CU_ASSERT_EQUAL(run(&out, "openssl crl -in zero.der -inform DER -noout -crlnumber"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "crlNumber=0x00"));
    free(out);
}

/* `openssl verify -crl_check`: the revoked device fails, the other passes. */
static void test_openssl_verify_revoked(void)
{
    const struct cloud_crl_entry e[] = {
        {rev_serial, rev_serial_len, nu_time_ms() - 30000, "key-compromise"},
    };
    char *out = NULL;
    build_current(e, 1, "current");

    CU_ASSERT_NOT_EQUAL(run(&out, "openssl verify -crl_check -CRLfile current.pem -CAfile "
                                  "chain.pem revoked.pem"),
                        0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "certificate revoked"));
    free(out);
    CU_ASSERT_EQUAL(
        run(&out, "openssl verify -crl_check -CRLfile current.pem -CAfile chain.pem good.pem"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "good.pem: OK"));
    free(out);
    /* Control: without the CRL the revoked certificate itself is fine. */
    CU_ASSERT_EQUAL(run(&out, "openssl verify -CAfile chain.pem revoked.pem"), 0);
    free(out);
}

static int cm_verify(const uint8_t *crl, size_t crl_len, const uint8_t *leaf, size_t leaf_len)
{
    WOLFSSL_CERT_MANAGER *cm = wolfSSL_CertManagerNew();
    int rc = -1;
    if (cm == NULL)
        return rc;
    if (wolfSSL_CertManagerLoadCABuffer(cm, root_der, (long)root_len, WOLFSSL_FILETYPE_ASN1) ==
            WOLFSSL_SUCCESS &&
        wolfSSL_CertManagerLoadCABuffer(cm, ca_der, (long)ca_len, WOLFSSL_FILETYPE_ASN1) ==
            WOLFSSL_SUCCESS &&
        wolfSSL_CertManagerEnableCRL(cm, 0) == WOLFSSL_SUCCESS &&
        wolfSSL_CertManagerLoadCRLBuffer(cm, crl, (long)crl_len, WOLFSSL_FILETYPE_ASN1) ==
            WOLFSSL_SUCCESS)
        rc = wolfSSL_CertManagerVerifyBuffer(cm, leaf, (long)leaf_len, WOLFSSL_FILETYPE_ASN1);
    wolfSSL_CertManagerFree(cm);
    return rc;
}

/* wolfSSL (the programmers' library) reads the CRL and refuses the revoked device. */
static void test_wolfssl_reads_crl(void)
{
    const struct cloud_crl_entry e[] = {
        {rev_serial, rev_serial_len, nu_time_ms() - 30000, "keyCompromise"},
    };
    uint8_t *der = NULL;
    size_t len = 0;
    uint64_t now = nu_time_ms();
    CU_ASSERT_EQUAL_FATAL(build(e, 1, 8, now - 60000, now + DAY_MS, &der, &len), NU_OK);
    CU_ASSERT_EQUAL(cm_verify(der, len, rev_der, rev_len), CRL_CERT_REVOKED);
    CU_ASSERT_EQUAL(cm_verify(der, len, ok_der, ok_len), WOLFSSL_SUCCESS);
    /* A tampered CRL is not loaded (its signature fails). */
    der[len - 40] ^= 0x01;
    CU_ASSERT_NOT_EQUAL(cm_verify(der, len, ok_der, ok_len), WOLFSSL_SUCCESS);
    free(der);
}

/* n = 0: a valid CRL that revokes nothing. */
static void test_empty_crl(void)
{
    char *out = NULL;
    build_current(NULL, 0, "empty");
    CU_ASSERT_EQUAL(run(&out, "openssl crl -in empty.der -inform DER -CAfile chain.pem -noout"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "verify OK"));
    free(out);
    CU_ASSERT_EQUAL(run(&out, "openssl crl -in empty.pem -noout -text"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "No Revoked Certificates."));
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "X509v3 CRL Number: \n                7\n"));
    free(out);
    CU_ASSERT_EQUAL(
        run(&out, "openssl verify -crl_check -CRLfile empty.pem -CAfile chain.pem revoked.pem"), 0);
    free(out);
}

/* Thousands of entries: all listed, still verifies; prints the time and size taken. */
static void test_large_crl(void)
{
    struct cloud_crl_entry *e = calloc(LARGE_N, sizeof(*e));
    uint8_t(*serials)[16] = calloc(LARGE_N, 16);
    uint8_t *der = NULL;
    size_t len = 0;
    char *out = NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(e);
    CU_ASSERT_PTR_NOT_NULL_FATAL(serials);
    for (size_t i = 0; i < LARGE_N; i++) {
        CU_ASSERT_EQUAL(nu_random(serials[i], 16), NU_OK);
        serials[i][0] = (uint8_t)((serials[i][0] & 0x7f) | 0x01); /* like ours: positive */
        e[i] = (struct cloud_crl_entry){serials[i], 16, T_2026 - i * 1000,
                                        (i % 2) ? "keyCompromise" : "operator note"};
    }
    uint64_t t0 = nu_mono_ms();
    CU_ASSERT_EQUAL_FATAL(build(e, LARGE_N, 9, T_2026, T_2026 + DAY_MS, &der, &len), NU_OK);
    printf("\n    %d entries: %zu bytes DER, built+signed+verified in %llu ms\n", LARGE_N, len,
           (unsigned long long)(nu_mono_ms() - t0));
    save_crl("large", der, len);
    free(der);
    CU_ASSERT_EQUAL(run(&out, "openssl crl -in large.der -inform DER -CAfile chain.pem -noout"), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(out, "verify OK"));
    free(out);
    CU_ASSERT_EQUAL(run(&out, "openssl crl -in large.der -inform DER -noout -text | "
                              "grep -c 'Serial Number'"),
                    0);
    CU_ASSERT_EQUAL(strtol(out, NULL, 10), LARGE_N);
    free(out);
    free(serials);
    free(e);
}

/* ------------------------------------------------------ lying signers */

enum lie { LIE_FLIP_S, LIE_GARBAGE, LIE_FAIL, LIE_EMPTY, LIE_TRAILING };

struct liar {
    enum lie how;
    struct nu_signer inner;
};

static int liar_sign(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    struct liar *l = ctx;
    size_t cap = *sig_len;
    int rc;
    switch (l->how) {
    case LIE_FAIL:
        return NU_ERR_HSM;
    case LIE_GARBAGE:
        memset(sig, 0x30, 8);
        *sig_len = 8;
        return NU_OK;
    case LIE_EMPTY:
        *sig_len = 0;
        return NU_OK;
    default:
        break;
    }
    /* For LIE_TRAILING a byte must fit after the signature: a P-256 DER
     * signature is 70..72 bytes, so sign again (fresh nonce) until it is short. */
    for (int tries = 0; tries < 64; tries++) {
        *sig_len = cap;
        rc = l->inner.sign_digest(l->inner.ctx, digest, sig, sig_len);
        if (rc != NU_OK || l->how != LIE_TRAILING || *sig_len < cap)
            break;
    }
    if (rc != NU_OK)
        return rc;
    if (l->how == LIE_FLIP_S)
        sig[*sig_len - 1] ^= 0x01; /* well-formed DER, wrong s: SoftHSM2 issue #901 */
    else if (*sig_len < cap)
        sig[(*sig_len)++] = 0x00; /* LIE_TRAILING */
    return NU_OK;
}

static int build_with_liar(enum lie how, uint8_t **der, size_t *len)
{
    struct liar l = {.how = how, .inner = ca_signer};
    struct nu_signer s = {.ctx = &l, .sign_digest = liar_sign};
    memcpy(s.pub, ca_signer.pub, sizeof(s.pub));
    const struct cloud_crl_entry e[] = {{rev_serial, rev_serial_len, T_2026, "keyCompromise"}};
    return cloud_crl_build(&s, ca_der, ca_len, e, 1, 1, T_2026, T_2026 + DAY_MS, der, len);
}

static void test_bad_signer(void)
{
    static const struct {
        enum lie how;
        int want;
    } cases[] = {
        {LIE_FLIP_S, NU_ERR_CRYPTO},   {LIE_GARBAGE, NU_ERR_CRYPTO}, {LIE_EMPTY, NU_ERR_CRYPTO},
        {LIE_TRAILING, NU_ERR_CRYPTO}, {LIE_FAIL, NU_ERR_HSM}, /* the signer's own code comes back
                                                                  (HSM down, logged out...) */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        uint8_t *der = stale; /* must be reset, not left pointing anywhere */
        size_t len = 99;
        expect_fail(build_with_liar(cases[i].how, &der, &len), cases[i].want, &der, &len);
    }
}

/* ------------------------------------------------------ bad arguments */

static void test_bad_args(void)
{
    static const uint8_t s1[] = {0x01};
    static const uint8_t s21[21] = {0x01};
    static const uint8_t s0[3] = {0};
    static const uint8_t s_dup[] = {0x00, 0x01};
    const uint64_t t = T_2026, nx = T_2026 + DAY_MS;
    const struct cloud_crl_entry good = {s1, 1, t, NULL};
    struct cloud_crl_entry e[2] = {good, good};
    uint8_t *der = NULL;
    size_t len = 0;

    expect_fail(cloud_crl_build(NULL, ca_der, ca_len, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_INVALID_ARG, &der, &len);
    expect_fail(cloud_crl_build(&ca_signer, NULL, ca_len, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_INVALID_ARG, &der, &len);
    expect_fail(cloud_crl_build(&ca_signer, ca_der, 0, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_INVALID_ARG, &der, &len);
    CU_ASSERT_EQUAL(cloud_crl_build(&ca_signer, ca_der, ca_len, &good, 1, 1, t, nx, NULL, &len),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_crl_build(&ca_signer, ca_der, ca_len, &good, 1, 1, t, nx, &der, NULL),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(der);
    struct nu_signer nosign = ca_signer;
    nosign.sign_digest = NULL;
    expect_fail(cloud_crl_build(&nosign, ca_der, ca_len, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_INVALID_ARG, &der, &len);
    /* Entries. */
    expect_fail(build(NULL, 1, 1, t, nx, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    expect_fail(build(&good, CLOUD_CRL_ENTRIES_MAX + 1, 1, t, nx, &der, &len), NU_ERR_TOO_LARGE,
                &der, &len);
    e[1].serial_len = 0;
    expect_fail(build(e, 2, 1, t, nx, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    e[1] = (struct cloud_crl_entry){s21, sizeof(s21), t, NULL};
    expect_fail(build(e, 2, 1, t, nx, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    e[1] = (struct cloud_crl_entry){s21, 20, t, NULL}; /* 20 is the limit: fine */
    CU_ASSERT_EQUAL(build(e, 2, 1, t, nx, &der, &len), NU_OK);
    free(der);
    der = NULL;
    e[1] = (struct cloud_crl_entry){NULL, 1, t, NULL};
    expect_fail(build(e, 2, 1, t, nx, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    e[1] = (struct cloud_crl_entry){s0, sizeof(s0), t, NULL}; /* serial zero */
    expect_fail(build(e, 2, 1, t, nx, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    e[1] = (struct cloud_crl_entry){s_dup, sizeof(s_dup), t, "superseded"}; /* 00 01 == 01 */
    expect_fail(build(e, 2, 1, t, nx, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    e[1] = (struct cloud_crl_entry){s21, 2, 253402300800000ull, NULL}; /* year 10000 */
    expect_fail(build(e, 2, 1, t, nx, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    /* Times. */
    expect_fail(build(&good, 1, 1, t, t, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    expect_fail(build(&good, 1, 1, t, t - 1, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    expect_fail(build(&good, 1, 1, t, t + 999, &der, &len), NU_ERR_INVALID_ARG, &der, &len);
    expect_fail(build(&good, 1, 1, t, 253402300800000ull, &der, &len), NU_ERR_INVALID_ARG, &der,
                &len);
    CU_ASSERT_EQUAL(build(&good, 1, 1, t, 253402300799000ull, &der, &len), NU_OK);
    free(der);
}

/* Hostile or unsuitable CA certificates. */
static void test_bad_ca(void)
{
    static const struct cloud_crl_entry good = {(const uint8_t *)"\x01", 1, T_2026, NULL};
    const uint64_t t = T_2026, nx = T_2026 + DAY_MS;
    uint8_t garbage[300], *big = calloc(1, NU_X509_CERT_MAX + 1), *der = NULL, *tail = NULL;
    size_t len = 0;
    struct nu_p256_key *k = NULL;
    struct nu_signer ks;

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(garbage, 0x5a, sizeof(garbage));
    expect_fail(
        cloud_crl_build(&ca_signer, garbage, sizeof(garbage), &good, 1, 1, t, nx, &der, &len),
        NU_ERR_DECODE, &der, &len);
    expect_fail(cloud_crl_build(&ca_signer, ca_der, ca_len - 1, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_DECODE, &der, &len);
    expect_fail(cloud_crl_build(&ca_signer, ca_der, ca_len / 2, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_DECODE, &der, &len);
    tail = malloc(ca_len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(tail);
    memcpy(tail, ca_der, ca_len);
    tail[ca_len] = 0;
    expect_fail(cloud_crl_build(&ca_signer, tail, ca_len + 1, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_DECODE, &der, &len);
    expect_fail(
        cloud_crl_build(&ca_signer, big, NU_X509_CERT_MAX + 1, &good, 1, 1, t, nx, &der, &len),
        NU_ERR_TOO_LARGE, &der, &len);
    /* A device certificate is no CA. */
    expect_fail(cloud_crl_build(&ca_signer, rev_der, rev_len, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_BAD_CERT, &der, &len);
    /* The root's certificate with the Device CA's key: nobody could verify that CRL. */
    expect_fail(cloud_crl_build(&ca_signer, root_der, root_len, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_INVALID_ARG, &der, &len);
    /* A CA whose keyUsage lacks cRLSign. */
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_signer(k, &ks), NU_OK);
    struct nu_x509_issue_req r = cert_req("No CRL CA", "pki", ks.pub, 1, NU_X509_KU_KEY_CERT_SIGN);
    uint8_t *nocrl = NULL;
    size_t nocrl_len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_x509_issue(&r, &root_signer, root_der, root_len, &nocrl, &nocrl_len),
                          NU_OK);
    expect_fail(cloud_crl_build(&ks, nocrl, nocrl_len, &good, 1, 1, t, nx, &der, &len),
                NU_ERR_BAD_CERT, &der, &len);
    free(nocrl);
    nu_p256_key_destroy(k);
    free(tail);
    free(big);
}

static void test_pem_helper_errors(void)
{
    uint8_t junk[64], *der = NULL;
    size_t len = 0, pem_len = 9;
    char *pem = (char *)"x";
    memset(junk, 0x30, sizeof(junk));
    CU_ASSERT_EQUAL(cloud_crl_der_to_pem(NULL, 10, &pem, &pem_len), NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(pem);
    CU_ASSERT_EQUAL(cloud_crl_der_to_pem(junk, 0, &pem, &pem_len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_crl_der_to_pem(junk, sizeof(junk), NULL, &pem_len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_crl_der_to_pem(junk, CLOUD_CRL_DER_MAX + 1, &pem, &pem_len),
                    NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(cloud_crl_der_to_pem(junk, sizeof(junk), &pem, &pem_len), NU_ERR_DECODE);
    CU_ASSERT_PTR_NULL(pem);
    CU_ASSERT_EQUAL(pem_len, 0);
    CU_ASSERT_EQUAL(ERR_peek_error(), 0);
    /* A certificate is not a CRL. */
    CU_ASSERT_EQUAL(cloud_crl_der_to_pem(ca_der, ca_len, &pem, &pem_len), NU_ERR_DECODE);
    /* A real CRL, truncated or with a trailing byte. */
    CU_ASSERT_EQUAL_FATAL(build(NULL, 0, 1, T_2026, T_2026 + DAY_MS, &der, &len), NU_OK);
    CU_ASSERT_EQUAL(cloud_crl_der_to_pem(der, len - 1, &pem, &pem_len), NU_ERR_DECODE);
    uint8_t *longer = malloc(len + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longer);
    memcpy(longer, der, len);
    longer[len] = 0;
    CU_ASSERT_EQUAL(cloud_crl_der_to_pem(longer, len + 1, &pem, &pem_len), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(ERR_peek_error(), 0);
    free(longer);
    free(der);
}

/* ---------------------------------------------------- a real HSM key */

/* The Device CA key in a SoftHSM2 token, as in production: non-extractable,
 * signing through PKCS#11. */
static void test_hsm_signer(void)
{
    char conf[512], dir[256], *out = NULL;
    struct nu_hsm *hsm = NULL;
    struct nu_hsm_key *key = NULL;
    uint8_t pub[65], *cert = NULL, *der = NULL;
    size_t cert_len = 0, len = 0;
    uint64_t now = nu_time_ms();
    const struct cloud_crl_entry e[] = {{ok_serial, ok_serial_len, now - 1000, "superseded"}};

    CU_ASSERT_EQUAL_FATAL(nu_path_fmt(dir, sizeof(dir), "%s/hsm", tmp), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_mkdirs(dir, 0700), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_softhsm_write_conf(dir, conf, sizeof(conf)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(setenv("SOFTHSM2_CONF", conf, 1), 0);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_init_token(NULL, "nusec-crl", "so-pin-c", "user-pin-c"), NU_OK);
    struct nu_hsm_opts o = {.token_label = "nusec-crl", .pin = "user-pin-c"};
    CU_ASSERT_EQUAL_FATAL(nu_hsm_open(&o, &hsm), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_keygen_p256(hsm, "device-ca", pub), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_key_open(hsm, "device-ca", &key), NU_OK);
    if (key != NULL) {
        const struct nu_signer *s = nu_hsm_key_signer(key);
        struct nu_x509_issue_req r = cert_req("NuSEC Device CA", "pki", pub, 1,
                                              NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN);
        CU_ASSERT_EQUAL(nu_x509_issue(&r, &root_signer, root_der, root_len, &cert, &cert_len),
                        NU_OK);
        CU_ASSERT_EQUAL(
            cloud_crl_build(s, cert, cert_len, e, 1, 3, now - 60000, now + DAY_MS, &der, &len),
            NU_OK);
    }
    if (der != NULL) {
        CU_ASSERT_EQUAL(write_cert_pem("hsm-ca.pem", cert, cert_len), 0);
        save_crl("hsm", der, len);
        CU_ASSERT_EQUAL(run(&out, "cat root.pem hsm-ca.pem >hsm-chain.pem && openssl crl -in "
                                  "hsm.der -inform DER -CAfile hsm-chain.pem -noout"),
                        0);
        CU_ASSERT_PTR_NOT_NULL(strstr(out, "verify OK"));
        free(out);
    }
    free(der);
    free(cert);
    nu_hsm_key_close(key);
    nu_hsm_close(hsm);
}

static const struct nu_test_case cases[] = {
    {"reason codes", test_reason_codes},
    {"CRL contents as openssl reads them", test_crl_contents},
    {"CRL number 0 and 2^64-1", test_crl_number_range},
    {"openssl verify -crl_check refuses the revoked device", test_openssl_verify_revoked},
    {"wolfSSL cert manager refuses the revoked device", test_wolfssl_reads_crl},
    {"empty CRL", test_empty_crl},
    {"large CRL", test_large_crl},
    {"lying or failing signer", test_bad_signer},
    {"bad arguments", test_bad_args},
    {"bad CA certificate", test_bad_ca},
    {"PEM helper", test_pem_helper_errors},
    {"Device CA key in SoftHSM2", test_hsm_signer},
    {NULL, NULL},
};

int main(void)
{
    nu_log_init("test_crl", NU_LOG_ERROR, NULL); /* refusals are expected here */
    static const struct nu_test_suite suites[] = {
        {"cloud_crl", suite_setup, suite_teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("test_crl", suites);
}
