/* nu_attest: the statement a programmer KeyStore signs at enrollment, its
 * verification against the pinned vendor CA, and the stand-in vendor CA. */
#include "nu_attest.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char tmp[256], vdir[300], other[300];
static uint8_t *ca, *ca_other;
static size_t ca_len, ca_other_len;

static int setup(void)
{
    if (nu_test_tmpdir("attest", tmp, sizeof(tmp)))
        return -1;
    snprintf(vdir, sizeof(vdir), "%s/vendor", tmp);
    snprintf(other, sizeof(other), "%s/other", tmp);
    if (nu_attest_vendor_ca_init(vdir) || nu_attest_vendor_ca_init(other))
        return -1;
    return nu_attest_vendor_ca_cert(vdir, &ca, &ca_len) ||
                   nu_attest_vendor_ca_cert(other, &ca_other, &ca_other_len)
               ? -1
               : 0;
}

static int teardown(void)
{
    free(ca);
    free(ca_other);
    nu_test_rmtree(tmp);
    return 0;
}

/* A device of vendor `dir`: its attestation key and certificate. */
static void device(const char *dir, struct nu_p256_key **key, char serial[64], uint8_t **cert,
                   size_t *cert_len)
{
    uint8_t pub[NU_P256_PUB_LEN];
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(key), NU_OK);
    nu_p256_key_pub(*key, pub);
    CU_ASSERT_EQUAL_FATAL(nu_attest_vendor_issue(dir, pub, serial, cert, cert_len), NU_OK);
}

static void claims(struct nu_attest_claims *c, const char *serial)
{
    struct nu_p256_key *k = NULL;
    memset(c, 0, sizeof(*c));
    nu_p256_key_generate(&k);
    nu_p256_key_pub(k, c->identity_pub);
    nu_p256_key_pub(k, c->package_pub);
    nu_p256_key_destroy(k);
    c->package_pub[64] ^= 0; /* same point is fine for the codec */
    c->keys_generated_in_keystore = c->keys_non_exportable = 1;
    memset(c->measurement, 0x11, sizeof(c->measurement));
    memset(c->nonce, 0x22, sizeof(c->nonce));
    snprintf(c->vendor_serial, sizeof(c->vendor_serial), "%s", serial);
    snprintf(c->programmer_id, sizeof(c->programmer_id), "prog-1");
}

static void sign(struct nu_p256_key *k, const uint8_t *stmt, size_t len, uint8_t *sig,
                 size_t *sig_len)
{
    uint8_t d[32];
    *sig_len = NU_P256_SIG_MAX;
    CU_ASSERT_EQUAL(nu_attest_digest(stmt, len, d), NU_OK);
    CU_ASSERT_EQUAL(nu_p256_key_sign_digest(k, d, sig, sig_len), NU_OK);
}

static void test_codec_roundtrip_and_canonical(void)
{
    struct nu_attest_claims c, back;
    uint8_t stmt[NU_ATTEST_STMT_MAX], copy[NU_ATTEST_STMT_MAX + 8];
    size_t len = 0;
    claims(&c, "NL3-000000000001");
    CU_ASSERT_EQUAL_FATAL(nu_attest_encode(&c, stmt, sizeof(stmt), &len), NU_OK);
    CU_ASSERT_EQUAL(nu_attest_decode(stmt, len, &back), NU_OK);
    CU_ASSERT_EQUAL(memcmp(&c, &back, sizeof(c)), 0);
    /* An unknown field appended: another encoding of the same claims, refused. */
    memcpy(copy, stmt, len);
    copy[len] = 0x58, copy[len + 1] = 0x01; /* field 11, varint 1 */
    CU_ASSERT_EQUAL(nu_attest_decode(copy, len + 2, &back), NU_ERR_DECODE);
    /* No anchor: the field is absent, and decodes as none. */
    CU_ASSERT_EQUAL(back.anchored, 0);
    /* An anchor's hash is covered: it round-trips; any other length is refused. */
    struct nu_attest_claims a = c;
    uint8_t anchored[NU_ATTEST_STMT_MAX];
    size_t alen = 0;
    a.anchored = 1;
    memset(a.anchor_sha256, 0x33, sizeof(a.anchor_sha256));
    CU_ASSERT_EQUAL_FATAL(nu_attest_encode(&a, anchored, sizeof(anchored), &alen), NU_OK);
    CU_ASSERT_EQUAL(alen, len + 2 + 32);
    CU_ASSERT_EQUAL(nu_attest_decode(anchored, alen, &back), NU_OK);
    CU_ASSERT_EQUAL(memcmp(&a, &back, sizeof(a)), 0);
    memcpy(copy, stmt, len);
    copy[len] = 0x52, copy[len + 1] = 0x01, copy[len + 2] = 0x33; /* field 10, 1 byte */
    CU_ASSERT_EQUAL(nu_attest_decode(copy, len + 3, &back), NU_ERR_DECODE);
    /* Every truncation refused. */
    for (size_t n = 0; n < len; n++)
        CU_ASSERT_NOT_EQUAL(nu_attest_decode(stmt, n, &back), NU_OK);
    /* Bad claims do not encode. */
    c.vendor_serial[0] = 0;
    CU_ASSERT_EQUAL(nu_attest_encode(&c, stmt, sizeof(stmt), &len), NU_ERR_INVALID_ARG);
    claims(&c, "NL3 with spaces");
    CU_ASSERT_EQUAL(nu_attest_encode(&c, stmt, sizeof(stmt), &len), NU_ERR_INVALID_ARG);
    claims(&c, "NL3-1");
    CU_ASSERT_EQUAL(nu_attest_encode(&c, stmt, 16, &len), NU_ERR_TOO_LARGE);
}

static void test_verify(void)
{
    struct nu_p256_key *k = NULL, *ko = NULL;
    char serial[64], serial_o[64];
    uint8_t *cert = NULL, *cert_o = NULL, stmt[NU_ATTEST_STMT_MAX], sig[NU_P256_SIG_MAX];
    size_t cert_len = 0, cert_o_len = 0, len = 0, sig_len = 0;
    struct nu_attest_claims c, out;
    device(vdir, &k, serial, &cert, &cert_len);
    device(other, &ko, serial_o, &cert_o, &cert_o_len);
    CU_ASSERT_EQUAL(strncmp(serial, "NL3-", 4), 0);
    CU_ASSERT_EQUAL(strlen(serial), 16);
    claims(&c, serial);
    CU_ASSERT_EQUAL_FATAL(nu_attest_encode(&c, stmt, sizeof(stmt), &len), NU_OK);
    sign(k, stmt, len, sig, &sig_len);
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, cert, cert_len, stmt, len, sig, sig_len, &out),
                    NU_OK);
    CU_ASSERT_EQUAL(memcmp(&c, &out, sizeof(c)), 0);
    /* Missing parts. */
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, NULL, 0, stmt, len, sig, sig_len, &out),
                    NU_ERR_ATTESTATION_MISSING);
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, cert, cert_len, stmt, 0, sig, sig_len, &out),
                    NU_ERR_ATTESTATION_MISSING);
    /* Another vendor's CA pinned, or another vendor's device. */
    CU_ASSERT_EQUAL(
        nu_attest_verify(ca_other, ca_other_len, cert, cert_len, stmt, len, sig, sig_len, &out),
        NU_ERR_ATTESTATION_UNTRUSTED);
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, cert_o, cert_o_len, stmt, len, sig, sig_len, &out),
                    NU_ERR_ATTESTATION_UNTRUSTED);
    /* The vendor CA itself is no device. */
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, ca, ca_len, stmt, len, sig, sig_len, &out),
                    NU_ERR_ATTESTATION_UNTRUSTED);
    /* A signature by another key, a flipped statement byte, a bad signature. */
    uint8_t sig_o[NU_P256_SIG_MAX];
    size_t sig_o_len = 0;
    sign(ko, stmt, len, sig_o, &sig_o_len);
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, cert, cert_len, stmt, len, sig_o, sig_o_len, &out),
                    NU_ERR_ATTESTATION_SIGNATURE);
    stmt[len - 1] ^= 1;
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, cert, cert_len, stmt, len, sig, sig_len, &out),
                    NU_ERR_ATTESTATION_SIGNATURE);
    stmt[len - 1] ^= 1;
    sig[sig_len - 1] ^= 1;
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, cert, cert_len, stmt, len, sig, sig_len, &out),
                    NU_ERR_ATTESTATION_SIGNATURE);
    /* Signed without the domain prefix: not an attestation. */
    uint8_t raw[32];
    size_t raw_len = sizeof(sig);
    nu_sha256(stmt, len, raw);
    CU_ASSERT_EQUAL(nu_p256_key_sign_digest(k, raw, sig, &raw_len), NU_OK);
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, cert, cert_len, stmt, len, sig, raw_len, &out),
                    NU_ERR_ATTESTATION_SIGNATURE);
    /* A genuine device's signature over a statement naming another serial. */
    claims(&c, serial_o);
    CU_ASSERT_EQUAL_FATAL(nu_attest_encode(&c, stmt, sizeof(stmt), &len), NU_OK);
    sign(k, stmt, len, sig, &sig_len);
    CU_ASSERT_EQUAL(nu_attest_verify(ca, ca_len, cert, cert_len, stmt, len, sig, sig_len, &out),
                    NU_ERR_ATTESTATION_UNTRUSTED);
    nu_p256_key_destroy(k);
    nu_p256_key_destroy(ko);
    free(cert);
    free(cert_o);
}

static void test_vendor_ca_once(void)
{
    CU_ASSERT_EQUAL(nu_attest_vendor_ca_init(vdir), NU_ERR_EXISTS);
    char key[320];
    snprintf(key, sizeof(key), "%s/" NU_ATTEST_VENDOR_KEY, vdir);
    CU_ASSERT_EQUAL(nu_test_sh("test \"$(stat -c %%a %s)\" = 600", key), 0);
    char empty[300];
    uint8_t pub[NU_P256_PUB_LEN] = {0x04}, *der = NULL;
    size_t len = 0;
    char serial[64];
    snprintf(empty, sizeof(empty), "%s/none", tmp);
    CU_ASSERT_NOT_EQUAL(nu_attest_vendor_issue(empty, pub, serial, &der, &len), NU_OK);
    CU_ASSERT_PTR_NULL(der);
}

static const struct nu_test_case cases[] = {
    {"statement codec: roundtrip, one encoding only", test_codec_roundtrip_and_canonical},
    {"verify: chain, signature, domain, serial", test_verify},
    {"stand-in vendor CA: made once, key 0600", test_vendor_ca_once},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"nu_attest", setup, teardown, cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    return nu_test_run("libnusec_test_attest", suites);
}
