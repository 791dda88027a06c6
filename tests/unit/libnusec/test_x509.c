/*
 * nu_x509: a CA hierarchy in a real SoftHSM2 token, cross-checked with the
 * openssl CLI; CSRs made here and by openssl; malformed and hostile inputs.
 */
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_log.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/random.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define TOKEN "nusec-x509"
#define DAY 86400

static char tmp[256];
static struct nu_hsm *hsm;
static struct nu_hsm_key *root_key, *fleet_key;
static uint8_t *root_der, *fleet_der;
static size_t root_len, fleet_len;

/* ---------------------------------------------------- a test-local signer */

/* A software P-256 key with wolfSSL directly: a third nu_signer
 * implementation next to nu_hsm and nu_crypto, to keep the interface honest. */
struct soft_key {
    ecc_key k;
    WC_RNG rng;
    struct nu_signer signer;
};

static int soft_sign(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    struct soft_key *s = ctx;
    word32 len = (word32)*sig_len;
    if (wc_ecc_sign_hash(digest, 32, sig, &len, &s->rng, &s->k) != 0)
        return NU_ERR_CRYPTO;
    *sig_len = len;
    return NU_OK;
}

static struct soft_key *soft_new(void)
{
    struct soft_key *s = calloc(1, sizeof(*s));
    word32 len = NU_P256_PUB_LEN;
    CU_ASSERT_PTR_NOT_NULL_FATAL(s);
    CU_ASSERT_EQUAL_FATAL(wc_InitRng(&s->rng), 0);
    CU_ASSERT_EQUAL_FATAL(wc_ecc_init(&s->k), 0);
    CU_ASSERT_EQUAL_FATAL(wc_ecc_make_key_ex(&s->rng, 32, &s->k, ECC_SECP256R1), 0);
    CU_ASSERT_EQUAL_FATAL(wc_ecc_export_x963(&s->k, s->signer.pub, &len), 0);
    s->signer.ctx = s;
    s->signer.sign_digest = soft_sign;
    return s;
}

static void soft_free(struct soft_key *s)
{
    wc_ecc_free(&s->k);
    wc_FreeRng(&s->rng);
    free(s);
}

/* ------------------------------------------------------------- helpers */

static void write_pem(const char *name, const uint8_t *der, size_t len, enum nu_x509_pem_kind k)
{
    char path[512], *pem = NULL;
    size_t pem_len = 0;
    nu_path_fmt(path, sizeof(path), "%s/%s", tmp, name);
    CU_ASSERT_EQUAL_FATAL(nu_x509_der_to_pem(der, len, k, &pem, &pem_len), NU_OK);
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, pem, pem_len, 0644), NU_OK);
    free(pem);
}

static int64_t now_s(void)
{
    return (int64_t)(nu_time_ms() / 1000);
}

static struct nu_x509_issue_req ca_req(const char *cn, const uint8_t pub[65], int path_len)
{
    struct nu_x509_issue_req r = {.cn = cn,
                                  .ou = "pki",
                                  .o = "NuSEC Test OEM",
                                  .not_before = now_s() - 60,
                                  .not_after = now_s() + 3650 * DAY,
                                  .is_ca = 1,
                                  .path_len = path_len,
                                  .key_usage = NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN};
    memcpy(r.pub, pub, 65);
    return r;
}

static struct nu_x509_issue_req leaf_req(const char *cn, const char *ou, const uint8_t pub[65],
                                         unsigned eku)
{
    struct nu_x509_issue_req r = {.cn = cn,
                                  .ou = ou,
                                  .o = "NuSEC Test OEM",
                                  .not_before = now_s() - 60,
                                  .not_after = now_s() + 365 * DAY,
                                  .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
                                  .ext_key_usage = eku};
    memcpy(r.pub, pub, 65);
    return r;
}

static uint8_t *issue_leaf(const struct nu_x509_issue_req *r, size_t *out_len)
{
    uint8_t *der = NULL;
    CU_ASSERT_EQUAL(
        nu_x509_issue(r, nu_hsm_key_signer(fleet_key), fleet_der, fleet_len, &der, out_len), NU_OK);
    return der;
}

/* Token with root and fleet CA keys, root self-signed, fleet CA issued: once for the suite. */
static int suite_setup(void)
{
    char conf[512];
    uint8_t root_pub[65], fleet_pub[65];
    if (nu_test_tmpdir("x509", tmp, sizeof(tmp)) != 0 ||
        nu_hsm_softhsm_write_conf(tmp, conf, sizeof(conf)) != NU_OK ||
        setenv("SOFTHSM2_CONF", conf, 1) != 0 ||
        nu_hsm_init_token(NULL, TOKEN, "so-pin-x", "user-pin-x") != NU_OK)
        return 1;
    struct nu_hsm_opts o = {.token_label = TOKEN, .pin = "user-pin-x"};
    if (nu_hsm_open(&o, &hsm) != NU_OK || nu_hsm_keygen_p256(hsm, "root-ca", root_pub) != NU_OK ||
        nu_hsm_keygen_p256(hsm, "fleet-ca", fleet_pub) != NU_OK ||
        nu_hsm_key_open(hsm, "root-ca", &root_key) != NU_OK ||
        nu_hsm_key_open(hsm, "fleet-ca", &fleet_key) != NU_OK)
        return 1;
    struct nu_x509_issue_req r = ca_req("NuSEC Root CA", root_pub, 1);
    if (nu_x509_issue(&r, nu_hsm_key_signer(root_key), NULL, 0, &root_der, &root_len) != NU_OK)
        return 1;
    r = ca_req("NuSEC Fleet CA", fleet_pub, 0);
    return nu_x509_issue(&r, nu_hsm_key_signer(root_key), root_der, root_len, &fleet_der,
                         &fleet_len) != NU_OK;
}

static int suite_teardown(void)
{
    free(root_der);
    free(fleet_der);
    nu_hsm_key_close(root_key);
    nu_hsm_key_close(fleet_key);
    nu_hsm_close(hsm);
    nu_test_rmtree(tmp);
    return 0;
}

/* ---------------------------------------------------------------- issue */

static void test_hierarchy_openssl_verifies(void)
{
    struct soft_key *k = soft_new();
    size_t leaf_len = 0;
    struct nu_x509_issue_req r =
        leaf_req("broker", "broker", k->signer.pub, NU_X509_EKU_SERVER_AUTH);
    const char *dns[] = {"localhost", "broker.nusec.test"}, *ips[] = {"127.0.0.1", "::1"};
    r.san_dns = dns, r.n_san_dns = 2, r.san_ip = ips, r.n_san_ip = 2;
    uint8_t *leaf = issue_leaf(&r, &leaf_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(leaf);
    write_pem("root.pem", root_der, root_len, NU_X509_PEM_CERT);
    write_pem("inter.pem", fleet_der, fleet_len, NU_X509_PEM_CERT);
    write_pem("leaf.pem", leaf, leaf_len, NU_X509_PEM_CERT);

    struct nu_x509_der chain = {fleet_der, fleet_len};
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, leaf_len, &chain, 1, root_der, root_len), NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("cd '%s' && openssl verify -CAfile root.pem -untrusted inter.pem "
                               "leaf.pem",
                               tmp),
                    0);
    /* Also with the purpose the broker will check. */
    CU_ASSERT_EQUAL(nu_test_sh("cd '%s' && openssl verify -purpose sslserver -CAfile root.pem "
                               "-untrusted inter.pem leaf.pem >/dev/null",
                               tmp),
                    0);
    CU_ASSERT_NOT_EQUAL(nu_test_sh("cd '%s' && openssl verify -purpose sslclient -CAfile root.pem "
                                   "-untrusted inter.pem leaf.pem >/dev/null 2>&1",
                                   tmp),
                        0);
    /* TLS clients check the broker by name or address: the SAN answers. */
    CU_ASSERT_EQUAL(
        nu_test_sh("cd '%s' && openssl verify -verify_hostname localhost -CAfile "
                   "root.pem -untrusted inter.pem leaf.pem >/dev/null && openssl verify "
                   "-verify_ip 127.0.0.1 -CAfile root.pem -untrusted inter.pem leaf.pem "
                   ">/dev/null && openssl verify -verify_ip ::1 -CAfile root.pem "
                   "-untrusted inter.pem leaf.pem >/dev/null",
                   tmp),
        0);
    CU_ASSERT_NOT_EQUAL(nu_test_sh("cd '%s' && openssl verify -verify_hostname evil.example "
                                   "-CAfile root.pem -untrusted inter.pem leaf.pem >/dev/null 2>&1",
                                   tmp),
                        0);
    /* Without the intermediate the leaf does not chain. */
    CU_ASSERT_NOT_EQUAL(
        nu_test_sh("cd '%s' && openssl verify -CAfile root.pem leaf.pem >/dev/null 2>&1", tmp), 0);
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, leaf_len, NULL, 0, root_der, root_len),
                    NU_ERR_BAD_CERT);
    free(leaf);
    soft_free(k);
}

static void test_extensions_as_openssl_sees_them(void)
{
    struct soft_key *k = soft_new();
    size_t leaf_len = 0;
    struct nu_x509_issue_req r =
        leaf_req("station-01", "station", k->signer.pub, NU_X509_EKU_CLIENT_AUTH);
    uint8_t *leaf = issue_leaf(&r, &leaf_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(leaf);
    write_pem("root.pem", root_der, root_len, NU_X509_PEM_CERT);
    write_pem("inter.pem", fleet_der, fleet_len, NU_X509_PEM_CERT);
    write_pem("client.pem", leaf, leaf_len, NU_X509_PEM_CERT);
    const char *d = tmp;

    /* Intermediate: CA:TRUE pathlen 0, critical; keyCertSign+cRLSign critical; SKI, AKI. */
#define X(file) "openssl x509 -in '%s/" file "' -noout -text"
    CU_ASSERT_EQUAL(nu_test_sh(X("inter.pem") " | grep -A1 'Basic Constraints: critical' | grep -q "
                                              "'CA:TRUE, pathlen:0'",
                               d),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh(X("inter.pem") " | grep -A1 'Key Usage: critical' | grep -q "
                                              "'Certificate Sign, CRL Sign'",
                               d),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh(X("inter.pem") " | grep -q 'Subject Key Identifier'", d), 0);
    CU_ASSERT_EQUAL(nu_test_sh(X("inter.pem") " | grep -q 'Authority Key Identifier'", d), 0);
    CU_ASSERT_EQUAL(nu_test_sh(X("inter.pem") " | grep -q 'ecdsa-with-SHA256'", d), 0);
    CU_ASSERT_EQUAL(nu_test_sh(X("root.pem") " | grep -A1 'Basic Constraints: critical' | grep -q "
                                             "'CA:TRUE, pathlen:1'",
                               d),
                    0);
    /* Leaf: CA:FALSE critical, digitalSignature critical, clientAuth, SKI, AKI; names. */
    CU_ASSERT_EQUAL(
        nu_test_sh(X("client.pem") " | grep -A1 'Basic Constraints: critical' | grep -q "
                                   "'CA:FALSE'",
                   d),
        0);
    CU_ASSERT_EQUAL(nu_test_sh(X("client.pem") " | grep -A1 'Key Usage: critical' | grep -q "
                                               "'Digital Signature'",
                               d),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh(X("client.pem") " | grep -A1 'Extended Key Usage' | grep -q "
                                               "'TLS Web Client Authentication'",
                               d),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl x509 -in '%s/client.pem' -noout -subject -nameopt RFC2253 "
                               "| grep -qx 'subject=CN=station-01,OU=station,O=NuSEC Test OEM'",
                               d),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl x509 -in '%s/client.pem' -noout -issuer -nameopt RFC2253 "
                               "| grep -qx 'issuer=CN=NuSEC Fleet CA,OU=pki,O=NuSEC Test OEM'",
                               d),
                    0);
    /* The leaf's AKI is the intermediate's SKI; the intermediate's AKI the root's SKI. */
    CU_ASSERT_EQUAL(
        nu_test_sh(
            "a=$(openssl x509 -in '%s/client.pem' -noout -ext authorityKeyIdentifier | tail "
            "-1 | tr -d ' ' | sed 's/^keyid://'); s=$(openssl x509 -in '%s/inter.pem' -noout "
            "-ext subjectKeyIdentifier | tail -1 | tr -d ' '); test -n \"$s\" && test \"$a\" = "
            "\"$s\"",
            d, d),
        0);
    CU_ASSERT_EQUAL(
        nu_test_sh(
            "a=$(openssl x509 -in '%s/inter.pem' -noout -ext authorityKeyIdentifier | tail "
            "-1 | tr -d ' ' | sed 's/^keyid://'); s=$(openssl x509 -in '%s/root.pem' -noout "
            "-ext subjectKeyIdentifier | tail -1 | tr -d ' '); test -n \"$s\" && test \"$a\" = "
            "\"$s\"",
            d, d),
        0);
    /* Serial: 16 bytes (32 hex digits), the same that nu_x509_cert_info reports. */
    struct nu_x509_cert_info info;
    CU_ASSERT_EQUAL_FATAL(nu_x509_cert_info(leaf, leaf_len, &info), NU_OK);
    CU_ASSERT_EQUAL(strlen(info.serial_hex), 32);
    CU_ASSERT_EQUAL(nu_test_sh("openssl x509 -in '%s/client.pem' -noout -serial | tr A-F a-f | "
                               "grep -qx 'serial=%s'",
                               d, info.serial_hex),
                    0);
#undef X
    free(leaf);
    soft_free(k);
}

/* Every name length and usage mix: lengths that cross DER length-form
 * boundaries all give certificates that parse and verify. */
static void test_name_lengths_and_usages(void)
{
    struct soft_key *k = soft_new();
    char cn[NU_X509_NAME_MAX + 1];
    struct nu_x509_der chain = {fleet_der, fleet_len};
    int bad = 0;
    for (int n = 1; n <= NU_X509_NAME_MAX; n++) {
        memset(cn, 'a' + n % 26, (size_t)n);
        cn[n] = '\0';
        for (unsigned eku = 0; eku < 4; eku++) {
            size_t len = 0;
            struct nu_x509_issue_req r = leaf_req(cn, n % 2 ? "station" : NULL, k->signer.pub, eku);
            r.o = n % 3 ? "NuSEC Test OEM" : NULL;
            r.key_usage = eku & 1 ? NU_X509_KU_DIGITAL_SIGNATURE
                                  : NU_X509_KU_DIGITAL_SIGNATURE | NU_X509_KU_KEY_AGREEMENT;
            uint8_t *der = issue_leaf(&r, &len);
            struct nu_x509_cert_info info;
            if (!der || nu_x509_verify_chain(der, len, &chain, 1, root_der, root_len) != NU_OK ||
                nu_x509_cert_info(der, len, &info) != NU_OK || strcmp(info.cn, cn) != 0)
                bad++;
            free(der);
        }
    }
    CU_ASSERT_EQUAL(bad, 0);
    soft_free(k);
}

static void test_serials_differ(void)
{
    struct soft_key *k = soft_new();
    size_t l1 = 0, l2 = 0;
    struct nu_x509_issue_req r =
        leaf_req("monitor-1", "monitor", k->signer.pub, NU_X509_EKU_CLIENT_AUTH);
    uint8_t *a = issue_leaf(&r, &l1), *b = issue_leaf(&r, &l2);
    struct nu_x509_cert_info ia, ib;
    CU_ASSERT_EQUAL_FATAL(nu_x509_cert_info(a, l1, &ia), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_x509_cert_info(b, l2, &ib), NU_OK);
    CU_ASSERT_EQUAL(strlen(ia.serial_hex), 32);
    CU_ASSERT_EQUAL(strlen(ib.serial_hex), 32);
    CU_ASSERT_STRING_NOT_EQUAL(ia.serial_hex, ib.serial_hex);
    CU_ASSERT_TRUE(ia.serial_hex[0] <= '7'); /* positive INTEGER */
    free(a);
    free(b);
    soft_free(k);
}

static void test_cert_info_fields(void)
{
    struct soft_key *k = soft_new();
    size_t len = 0;
    struct nu_x509_issue_req r = leaf_req("cloud-a", "cloud", k->signer.pub,
                                          NU_X509_EKU_CLIENT_AUTH | NU_X509_EKU_SERVER_AUTH);
    r.not_before = 1700000000;
    r.not_after = 2650000000LL; /* year 2053: GeneralizedTime */
    uint8_t *der = issue_leaf(&r, &len);
    struct nu_x509_cert_info info;
    CU_ASSERT_EQUAL_FATAL(nu_x509_cert_info(der, len, &info), NU_OK);
    CU_ASSERT_STRING_EQUAL(info.cn, "cloud-a");
    CU_ASSERT_STRING_EQUAL(info.ou, "cloud");
    CU_ASSERT_STRING_EQUAL(info.o, "NuSEC Test OEM");
    CU_ASSERT_STRING_EQUAL(info.issuer_cn, "NuSEC Fleet CA");
    CU_ASSERT_EQUAL(info.not_before, 1700000000);
    CU_ASSERT_EQUAL(info.not_after, 2650000000LL);
    CU_ASSERT_FALSE(info.is_ca);
    CU_ASSERT_EQUAL(memcmp(info.pub, k->signer.pub, 65), 0);
    write_pem("far.pem", der, len, NU_X509_PEM_CERT);
    CU_ASSERT_EQUAL(nu_test_sh("openssl x509 -in '%s/far.pem' -noout -enddate | grep -q 2053", tmp),
                    0);

    CU_ASSERT_EQUAL_FATAL(nu_x509_cert_info(fleet_der, fleet_len, &info), NU_OK);
    CU_ASSERT_TRUE(info.is_ca);
    CU_ASSERT_STRING_EQUAL(info.issuer_cn, "NuSEC Root CA");
    uint8_t fleet_pub[65];
    CU_ASSERT_EQUAL(nu_hsm_find_key(hsm, "fleet-ca", fleet_pub), NU_OK);
    CU_ASSERT_EQUAL(memcmp(info.pub, fleet_pub, 65), 0);
    free(der);
    soft_free(k);
}

static void test_tampered_leaf_refused(void)
{
    struct soft_key *k = soft_new();
    size_t len = 0;
    struct nu_x509_issue_req r = leaf_req("oem-1", "oem", k->signer.pub, NU_X509_EKU_CLIENT_AUTH);
    uint8_t *der = issue_leaf(&r, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(der);
    struct nu_x509_der chain = {fleet_der, fleet_len};
    uint8_t *bad = malloc(len);
    /* One flipped byte, anywhere: never a valid chain, never a crash. */
    int accepted = 0;
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, der, len);
        bad[i] ^= 0x01;
        accepted += nu_x509_verify_chain(bad, len, &chain, 1, root_der, root_len) == NU_OK;
    }
    CU_ASSERT_EQUAL(accepted, 0);
    /* The flip that openssl also sees: a byte of the subject CN. */
    memcpy(bad, der, len);
    uint8_t *cn = NULL;
    for (size_t i = 0; i + 5 <= len && !cn; i++)
        cn = memcmp(bad + i, "oem-1", 5) == 0 ? bad + i : NULL;
    CU_ASSERT_PTR_NOT_NULL_FATAL(cn);
    cn[0] ^= 0x01;
    CU_ASSERT_EQUAL(nu_x509_verify_chain(bad, len, &chain, 1, root_der, root_len), NU_ERR_BAD_CERT);
    write_pem("root.pem", root_der, root_len, NU_X509_PEM_CERT);
    write_pem("inter.pem", fleet_der, fleet_len, NU_X509_PEM_CERT);
    write_pem("bad.pem", bad, len, NU_X509_PEM_CERT);
    CU_ASSERT_NOT_EQUAL(nu_test_sh("cd '%s' && openssl verify -CAfile root.pem -untrusted "
                                   "inter.pem bad.pem >/dev/null 2>&1",
                                   tmp),
                        0);
    /* Truncations: typed errors. */
    for (size_t n = 0; n < len; n++)
        CU_ASSERT_NOT_EQUAL(nu_x509_verify_chain(der, n, &chain, 1, root_der, root_len), NU_OK);
    free(bad);
    free(der);
    soft_free(k);
}

static void test_expired_and_not_yet_valid(void)
{
    struct soft_key *k = soft_new();
    size_t len = 0;
    struct nu_x509_der chain = {fleet_der, fleet_len};
    struct nu_x509_issue_req r = leaf_req("old", "station", k->signer.pub, 0);
    r.not_before = now_s() - 10 * DAY;
    r.not_after = now_s() - DAY;
    uint8_t *der = issue_leaf(&r, &len);
    CU_ASSERT_EQUAL(nu_x509_verify_chain(der, len, &chain, 1, root_der, root_len), NU_ERR_EXPIRED);
    free(der);
    r.not_before = now_s() + DAY;
    r.not_after = now_s() + 10 * DAY;
    der = issue_leaf(&r, &len);
    CU_ASSERT_EQUAL(nu_x509_verify_chain(der, len, &chain, 1, root_der, root_len), NU_ERR_EXPIRED);
    free(der);

    /* An expired intermediate expires its leaves. */
    uint8_t *old_ca = NULL, *leaf = NULL;
    size_t old_ca_len = 0, leaf_len = 0;
    struct nu_x509_issue_req c = ca_req("NuSEC Fleet CA", nu_hsm_key_signer(fleet_key)->pub, 0);
    c.not_before = now_s() - 10 * DAY;
    c.not_after = now_s() - DAY;
    CU_ASSERT_EQUAL_FATAL(
        nu_x509_issue(&c, nu_hsm_key_signer(root_key), root_der, root_len, &old_ca, &old_ca_len),
        NU_OK);
    r = leaf_req("x", "station", k->signer.pub, 0);
    CU_ASSERT_EQUAL(
        nu_x509_issue(&r, nu_hsm_key_signer(fleet_key), old_ca, old_ca_len, &leaf, &leaf_len),
        NU_OK);
    struct nu_x509_der old_chain = {old_ca, old_ca_len};
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, leaf_len, &old_chain, 1, root_der, root_len),
                    NU_ERR_EXPIRED);
    free(leaf);
    free(old_ca);
    soft_free(k);
}

static void test_chain_rules(void)
{
    struct soft_key *k = soft_new(), *k2 = soft_new();
    size_t len = 0, leaf2_len = 0, sub_len = 0, deep_len = 0;
    struct nu_x509_der chain = {fleet_der, fleet_len};
    struct nu_x509_issue_req r = leaf_req("p-1", "programmer", k->signer.pub, 0);
    uint8_t *leaf = issue_leaf(&r, &len);

    /* A leaf is no CA: nu_x509_issue refuses it as issuer... */
    uint8_t *x = NULL;
    size_t x_len = 0;
    struct nu_x509_issue_req r2 = leaf_req("p-2", "programmer", k2->signer.pub, 0);
    CU_ASSERT_EQUAL(nu_x509_issue(&r2, &k->signer, leaf, len, &x, &x_len), NU_ERR_BAD_CERT);
    CU_ASSERT_PTR_NULL(x);
    /* ...and a leaf-signed certificate does not verify even if built by hand. Fake it
     * with a CA-shaped cert issued to k, signed by the fleet key: path length 0 of
     * the fleet CA forbids it. */
    struct nu_x509_issue_req sub = ca_req("Rogue Sub CA", k->signer.pub, -1);
    uint8_t *sub_der = NULL, *deep = NULL;
    CU_ASSERT_EQUAL_FATAL(
        nu_x509_issue(&sub, nu_hsm_key_signer(fleet_key), fleet_der, fleet_len, &sub_der, &sub_len),
        NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_x509_issue(&r2, &k->signer, sub_der, sub_len, &deep, &deep_len),
                          NU_OK);
    struct nu_x509_der two[2] = {{sub_der, sub_len}, {fleet_der, fleet_len}};
    CU_ASSERT_EQUAL(nu_x509_verify_chain(deep, deep_len, two, 2, root_der, root_len),
                    NU_ERR_BAD_CERT);
    write_pem("root.pem", root_der, root_len, NU_X509_PEM_CERT);
    write_pem("inter.pem", fleet_der, fleet_len, NU_X509_PEM_CERT);
    write_pem("sub.pem", sub_der, sub_len, NU_X509_PEM_CERT);
    write_pem("deep.pem", deep, deep_len, NU_X509_PEM_CERT);
    CU_ASSERT_NOT_EQUAL(nu_test_sh("cd '%s' && cat inter.pem sub.pem > both.pem && openssl verify "
                                   "-CAfile root.pem -untrusted both.pem deep.pem >/dev/null 2>&1",
                                   tmp),
                        0);

    /* A leaf verified against the wrong root / with a wrong intermediate. */
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, len, &chain, 1, fleet_der, fleet_len),
                    NU_ERR_BAD_CERT);
    struct nu_x509_der wrong = {sub_der, sub_len};
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, len, &wrong, 1, root_der, root_len),
                    NU_ERR_BAD_CERT);
    /* The intermediates may come in any order. */
    struct nu_x509_der order[2] = {{sub_der, sub_len}, {fleet_der, fleet_len}};
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, len, order, 2, root_der, root_len), NU_OK);
    /* Root alone verifies against itself. */
    CU_ASSERT_EQUAL(nu_x509_verify_chain(root_der, root_len, NULL, 0, root_der, root_len), NU_OK);
    /* Garbage in any position. */
    uint8_t junk[64];
    memset(junk, 0x30, sizeof(junk));
    struct nu_x509_der jc = {junk, sizeof(junk)};
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, len, &jc, 1, root_der, root_len), NU_ERR_BAD_CERT);
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, len, &chain, 1, junk, sizeof(junk)),
                    NU_ERR_BAD_CERT);
    CU_ASSERT_EQUAL(nu_x509_verify_chain(NULL, 0, &chain, 1, root_der, root_len),
                    NU_ERR_INVALID_ARG);
    struct nu_x509_der many[NU_X509_CHAIN_MAX + 1];
    for (int i = 0; i <= NU_X509_CHAIN_MAX; i++)
        many[i] = chain;
    CU_ASSERT_EQUAL(
        nu_x509_verify_chain(leaf, len, many, NU_X509_CHAIN_MAX + 1, root_der, root_len),
        NU_ERR_TOO_LARGE);
    free(deep);
    free(sub_der);
    free(leaf);
    soft_free(k);
    soft_free(k2);
    (void)leaf2_len;
}

static void test_issue_refuses_bad_requests(void)
{
    struct soft_key *k = soft_new();
    uint8_t *der = NULL;
    size_t len = 0;
    const struct nu_signer *fleet = nu_hsm_key_signer(fleet_key);
    struct nu_x509_issue_req ok = leaf_req("good", "station", k->signer.pub, 0), r;
#define REFUSED(req, signer, idr, idl, code)                                                       \
    do {                                                                                           \
        CU_ASSERT_EQUAL(nu_x509_issue(&(req), (signer), (idr), (idl), &der, &len), (code));        \
        CU_ASSERT_PTR_NULL(der);                                                                   \
    } while (0)
    /* Signing key that is not the issuer certificate's. */
    REFUSED(ok, nu_hsm_key_signer(root_key), fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    /* Self-signed must be signed by the subject key. */
    REFUSED(ok, fleet, NULL, 0, NU_ERR_INVALID_ARG);
    r = ok, r.cn = NULL;
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.cn = "";
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.cn = "tab\there";
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.cn = "0123456789012345678901234567890123456789012345678901234567890123"; /* 64 */
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.not_after = r.not_before;
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.key_usage = 0;
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.key_usage |= NU_X509_KU_KEY_CERT_SIGN; /* leaf that could sign certs */
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.pub[10] ^= 1; /* not a point on the curve */
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_DECODE);
    const char *bad_dns[] = {"bad name"}, *bad_ip[] = {"300.1.1.1"}, *nul[] = {NULL};
    r = ok, r.san_dns = bad_dns, r.n_san_dns = 1;
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.san_ip = bad_ip, r.n_san_ip = 1;
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.san_ip = nul, r.n_san_ip = 1;
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.san_dns = NULL, r.n_san_dns = 2;
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    r = ok, r.san_dns = bad_dns, r.n_san_dns = NU_X509_SAN_MAX + 1;
    REFUSED(r, fleet, fleet_der, fleet_len, NU_ERR_INVALID_ARG);
    uint8_t junk[100] = {0x30, 0x62};
    REFUSED(ok, fleet, junk, sizeof(junk), NU_ERR_BAD_CERT);
    /* The limit of 63 characters itself is fine. */
    r = ok, r.cn = "012345678901234567890123456789012345678901234567890123456789012";
    CU_ASSERT_EQUAL(nu_x509_issue(&r, fleet, fleet_der, fleet_len, &der, &len), NU_OK);
    free(der);
#undef REFUSED
    soft_free(k);
}

/* A signer that lies: its signatures do not verify. No certificate comes out. */
static int lying_sign(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    struct soft_key *s = ctx;
    uint8_t other[32];
    memcpy(other, digest, 32);
    other[0] ^= 0xff;
    return soft_sign(s, other, sig, sig_len);
}

static void test_bad_signer_yields_nothing(void)
{
    struct soft_key *k = soft_new();
    struct nu_signer liar = k->signer;
    liar.sign_digest = lying_sign;
    uint8_t *der = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL(nu_x509_csr_make(&liar, "dev", NULL, NULL, &der, &len), NU_ERR_CRYPTO);
    CU_ASSERT_PTR_NULL(der);
    struct nu_x509_issue_req r = ca_req("Liar Root", k->signer.pub, 0);
    CU_ASSERT_EQUAL(nu_x509_issue(&r, &liar, NULL, 0, &der, &len), NU_ERR_CRYPTO);
    CU_ASSERT_PTR_NULL(der);
    soft_free(k);
}

/* ------------------------------------------------------------------- CSR */

static void test_csr_roundtrip_and_openssl(void)
{
    struct soft_key *k = soft_new();
    uint8_t *csr = NULL;
    size_t len = 0;
    struct nu_x509_csr_info info;
    CU_ASSERT_EQUAL_FATAL(
        nu_x509_csr_make(&k->signer, "0011aabbccdd", "device", "Acme", &csr, &len), NU_OK);
    CU_ASSERT_TRUE(len < NU_X509_CSR_MAX);
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(csr, len, &info), NU_OK);
    CU_ASSERT_STRING_EQUAL(info.cn, "0011aabbccdd");
    CU_ASSERT_STRING_EQUAL(info.ou, "device");
    CU_ASSERT_STRING_EQUAL(info.o, "Acme");
    CU_ASSERT_EQUAL(memcmp(info.pub, k->signer.pub, 65), 0);
    write_pem("dev.csr", csr, len, NU_X509_PEM_CSR);
    CU_ASSERT_EQUAL(nu_test_sh("openssl req -in '%s/dev.csr' -noout -verify", tmp), 0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl req -in '%s/dev.csr' -noout -subject -nameopt RFC2253 | "
                               "grep -qx 'subject=CN=0011aabbccdd,OU=device,O=Acme'",
                               tmp),
                    0);
    free(csr);

    /* A CSR from an HSM key, CN only. */
    CU_ASSERT_EQUAL_FATAL(
        nu_x509_csr_make(nu_hsm_key_signer(fleet_key), "fleet", NULL, NULL, &csr, &len), NU_OK);
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(csr, len, &info), NU_OK);
    CU_ASSERT_STRING_EQUAL(info.ou, "");
    CU_ASSERT_EQUAL(memcmp(info.pub, nu_hsm_key_signer(fleet_key)->pub, 65), 0);
    free(csr);

    /* Names outside the identity alphabet are not even made. */
    CU_ASSERT_EQUAL(nu_x509_csr_make(&k->signer, "", NULL, NULL, &csr, &len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_x509_csr_make(NULL, "x", NULL, NULL, &csr, &len), NU_ERR_INVALID_ARG);
    soft_free(k);
}

static uint8_t *read_file(const char *name, size_t *len)
{
    char path[512];
    uint8_t *buf = NULL;
    nu_path_fmt(path, sizeof(path), "%s/%s", tmp, name);
    if (nu_file_read(path, 1 << 20, &buf, len) != NU_OK)
        return NULL;
    return buf;
}

/* openssl makes a CSR; returns its DER (caller frees) or NULL. */
static uint8_t *openssl_csr(const char *name, const char *newkey, const char *subj,
                            const char *extra, size_t *len)
{
    if (nu_test_sh("cd '%s' && openssl req -new -newkey %s -nodes -keyout /dev/null -subj '%s' %s "
                   "-outform DER -out %s 2>/dev/null",
                   tmp, newkey, subj, extra, name) != 0)
        return NULL;
    return read_file(name, len);
}

static void test_csr_from_openssl(void)
{
    struct nu_x509_csr_info info;
    size_t len = 0;
    const char *p256 = "ec -pkeyopt ec_paramgen_curve:prime256v1";
    uint8_t *der = openssl_csr("ok.der", p256, "/CN=dev-0001/OU=device", "", &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(der);
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(der, len, &info), NU_OK);
    CU_ASSERT_STRING_EQUAL(info.cn, "dev-0001");
    CU_ASSERT_STRING_EQUAL(info.ou, "device");
    free(der);

    struct {
        const char *what, *key, *subj, *extra;
    } bad[] = {
        {"RSA 2048", "rsa:2048", "/CN=dev-rsa", ""},
        {"secp384r1", "ec -pkeyopt ec_paramgen_curve:secp384r1", "/CN=dev-384", ""},
        {"P-256 signed with SHA-384", p256, "/CN=dev-sha384", "-sha384"},
        {"two CNs", p256, "/CN=a/CN=b", ""},
        {"two OUs", p256, "/CN=a/OU=device/OU=oem", ""},
        {"slash in CN", p256, "/CN=a\\/b", ""},
        {"MQTT wildcard in CN", p256, "/CN=dev\\+1", ""},
        {"space in CN", p256, "/CN=dev 1", ""},
        {"no CN", p256, "/OU=device", ""},
        {"CN of 64 chars", p256,
         "/CN=0123456789012345678901234567890123456789012345678901234567890123", ""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        der = openssl_csr("bad.der", bad[i].key, bad[i].subj, bad[i].extra, &len);
        CU_ASSERT_PTR_NOT_NULL(der);
        if (!der)
            continue;
        int rc = nu_x509_csr_parse_verify(der, len, &info);
        if (rc != NU_ERR_BAD_CSR)
            fprintf(stderr, "CSR case '%s' gave %s\n", bad[i].what, nu_err_name(rc));
        CU_ASSERT_EQUAL(rc, NU_ERR_BAD_CSR);
        CU_ASSERT_STRING_EQUAL(info.cn, ""); /* nothing half-filled */
        free(der);
    }
}

static void test_csr_malformed(void)
{
    struct soft_key *k = soft_new();
    uint8_t *csr = NULL;
    size_t len = 0;
    struct nu_x509_csr_info info;
    CU_ASSERT_EQUAL_FATAL(nu_x509_csr_make(&k->signer, "dev-7", "device", NULL, &csr, &len), NU_OK);
    uint8_t *bad = malloc(NU_X509_CSR_MAX + 1);
    /* Truncated at every length. */
    int accepted = 0;
    for (size_t n = 0; n < len; n++) {
        memcpy(bad, csr, n);
        accepted += nu_x509_csr_parse_verify(bad, n, &info) != NU_ERR_BAD_CSR;
    }
    CU_ASSERT_EQUAL(accepted, 0);
    /* Trailing garbage. */
    memcpy(bad, csr, len);
    bad[len] = 0;
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(bad, len + 1, &info), NU_ERR_BAD_CSR);
    /* Every single flipped bit of one byte, at every position: never accepted. */
    accepted = 0;
    for (size_t i = 0; i < len; i++) {
        memcpy(bad, csr, len);
        bad[i] ^= 0x01;
        accepted += nu_x509_csr_parse_verify(bad, len, &info) == NU_OK;
    }
    CU_ASSERT_EQUAL(accepted, 0);
    /* One bit of the signature's last byte: parsed fine, signature refused. */
    memcpy(bad, csr, len);
    bad[len - 1] ^= 0x80;
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(bad, len, &info), NU_ERR_BAD_CSR);
    /* Oversize. */
    memset(bad, 0x30, NU_X509_CSR_MAX + 1);
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(bad, NU_X509_CSR_MAX + 1, &info), NU_ERR_TOO_LARGE);
    /* Random garbage, some with a plausible SEQUENCE header. */
    srand(1234);
    accepted = 0;
    for (int i = 0; i < 2000; i++) {
        size_t n = (size_t)(rand() % 600);
        for (size_t j = 0; j < n; j++)
            bad[j] = (uint8_t)rand();
        if (n > 4 && (i & 1)) {
            bad[0] = 0x30;
            bad[1] = 0x82;
            bad[2] = (uint8_t)((n - 4) >> 8);
            bad[3] = (uint8_t)(n - 4);
        }
        accepted += nu_x509_csr_parse_verify(bad, n, &info) == NU_OK;
    }
    CU_ASSERT_EQUAL(accepted, 0);
    /* A certificate is not a CSR. */
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(fleet_der, fleet_len, &info), NU_ERR_BAD_CSR);
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(NULL, 10, &info), NU_ERR_INVALID_ARG);
    free(bad);
    free(csr);
    soft_free(k);
}

static void test_cert_info_malformed(void)
{
    struct nu_x509_cert_info info;
    uint8_t *bad = malloc(fleet_len + 1);
    int accepted = 0;
    for (size_t n = 0; n < fleet_len; n++)
        accepted += nu_x509_cert_info(fleet_der, n, &info) == NU_OK;
    CU_ASSERT_EQUAL(accepted, 0);
    memcpy(bad, fleet_der, fleet_len);
    bad[fleet_len] = 0;
    CU_ASSERT_EQUAL(nu_x509_cert_info(bad, fleet_len + 1, &info), NU_ERR_BAD_CERT);
    /* Flips never crash (they may still parse: info does not verify signatures). */
    for (size_t i = 0; i < fleet_len; i++) {
        memcpy(bad, fleet_der, fleet_len);
        bad[i] ^= 0xff;
        (void)nu_x509_cert_info(bad, fleet_len, &info);
    }
    /* An RSA certificate is refused (P-256 only). */
    CU_ASSERT_EQUAL(nu_test_sh("cd '%s' && openssl req -x509 -newkey rsa:2048 -nodes -keyout "
                               "/dev/null -subj /CN=rsa -days 1 -outform DER -out rsa.der "
                               "2>/dev/null",
                               tmp),
                    0);
    size_t len = 0;
    uint8_t *rsa = read_file("rsa.der", &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(rsa);
    CU_ASSERT_EQUAL(nu_x509_cert_info(rsa, len, &info), NU_ERR_BAD_CERT);
    free(rsa);
    free(bad);
}

/* A chain written back to back is cut at each certificate's own length; a
 * cut one, or one that is not a SEQUENCE, gives 0 (the target simulator's
 * chain PEM relies on it). */
static void test_der_len_cuts_chains(void)
{
    size_t both = fleet_len + root_len;
    uint8_t *chain = malloc(both);
    CU_ASSERT_PTR_NOT_NULL_FATAL(chain);
    memcpy(chain, fleet_der, fleet_len);
    memcpy(chain + fleet_len, root_der, root_len);
    CU_ASSERT_EQUAL(nu_x509_der_len(chain, both), fleet_len);
    CU_ASSERT_EQUAL(nu_x509_der_len(chain + fleet_len, root_len), root_len);
    CU_ASSERT_EQUAL(nu_x509_der_len(chain, fleet_len - 1), 0);
    CU_ASSERT_EQUAL(nu_x509_der_len(chain, 1), 0);
    CU_ASSERT_EQUAL(nu_x509_der_len(NULL, both), 0);
    chain[0] = 0x31; /* a SET, not a SEQUENCE */
    CU_ASSERT_EQUAL(nu_x509_der_len(chain, both), 0);
    static const uint8_t short_form[] = {0x30, 0x02, 0x05, 0x00, 0xff};
    CU_ASSERT_EQUAL(nu_x509_der_len(short_form, sizeof(short_form)), 4);
    static const uint8_t zero_length_bytes[] = {0x30, 0x80, 0x00, 0x00};
    CU_ASSERT_EQUAL(nu_x509_der_len(zero_length_bytes, sizeof(zero_length_bytes)), 0);
    free(chain);
}

/* ------------------------------------------------------------------- PEM */

static void test_pem_roundtrip_and_chains(void)
{
    char *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0, consumed = 0, len = 0;
    uint8_t *der = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_x509_der_to_pem(fleet_der, fleet_len, NU_X509_PEM_CERT, &a, &alen),
                          NU_OK);
    CU_ASSERT_EQUAL(strncmp(a, "-----BEGIN CERTIFICATE-----\n", 28), 0);
    CU_ASSERT_EQUAL(strlen(a), alen);
    CU_ASSERT_EQUAL_FATAL(nu_x509_der_to_pem(root_der, root_len, NU_X509_PEM_CERT, &b, &blen),
                          NU_OK);
    /* A chain file: fleet then root, with comments around. */
    size_t cap = alen + blen + 64;
    char *chain = malloc(cap);
    int n = snprintf(chain, cap, "# fleet\n%s# root\n%s", a, b);
    CU_ASSERT_EQUAL_FATAL(
        nu_x509_pem_to_der(chain, (size_t)n, NU_X509_PEM_CERT, &der, &len, &consumed), NU_OK);
    CU_ASSERT_EQUAL(len, fleet_len);
    CU_ASSERT_EQUAL(memcmp(der, fleet_der, len), 0);
    free(der);
    CU_ASSERT_EQUAL_FATAL(nu_x509_pem_to_der(chain + consumed, (size_t)n - consumed,
                                             NU_X509_PEM_CERT, &der, &len, &consumed),
                          NU_OK);
    CU_ASSERT_EQUAL(len, root_len);
    CU_ASSERT_EQUAL(memcmp(der, root_der, len), 0);
    free(der);
    /* Wrong kind, no object, broken base64, truncated armour, oversize. */
    CU_ASSERT_EQUAL(nu_x509_pem_to_der(a, alen, NU_X509_PEM_CSR, &der, &len, NULL),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(nu_x509_pem_to_der("hello", 5, NU_X509_PEM_CERT, &der, &len, NULL),
                    NU_ERR_NOT_FOUND);
    char *broken = strdup(a);
    broken[40] = '*';
    CU_ASSERT_EQUAL(nu_x509_pem_to_der(broken, alen, NU_X509_PEM_CERT, &der, &len, NULL),
                    NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_x509_pem_to_der(a, alen - 10, NU_X509_PEM_CERT, &der, &len, NULL),
                    NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_x509_pem_to_der(a, NU_X509_PEM_MAX + 1, NU_X509_PEM_CERT, &der, &len, NULL),
                    NU_ERR_TOO_LARGE);
    CU_ASSERT_PTR_NULL(der);
    /* Truncated anywhere: a typed error, never a crash. */
    for (size_t i = 0; i < alen; i++) {
        if (nu_x509_pem_to_der(a, i, NU_X509_PEM_CERT, &der, &len, NULL) == NU_OK)
            free(der), der = NULL;
    }
    free(broken);
    free(chain);
    free(a);
    free(b);
}

/* ------------------------------------------------------- threads, measure */

struct issuer_worker {
    int n, ok;
};

static void *issue_worker(void *arg)
{
    struct issuer_worker *w = arg;
    struct soft_key *k = soft_new();
    struct nu_x509_der chain = {fleet_der, fleet_len};
    for (int i = 0; i < w->n; i++) {
        size_t len = 0;
        uint8_t *der = NULL;
        struct nu_x509_issue_req r = leaf_req("dev", "device", k->signer.pub, 0);
        if (nu_x509_issue(&r, nu_hsm_key_signer(fleet_key), fleet_der, fleet_len, &der, &len) ==
                NU_OK &&
            nu_x509_verify_chain(der, len, &chain, 1, root_der, root_len) == NU_OK)
            w->ok++;
        free(der);
    }
    soft_free(k);
    wc_ecc_fp_free(); /* wolfSSL's per-thread FP_ECC cache */
    return NULL;
}

static void test_threads_issue_concurrently(void)
{
    pthread_t t[4];
    struct issuer_worker w[4];
    for (int i = 0; i < 4; i++) {
        w[i] = (struct issuer_worker){.n = 40};
        CU_ASSERT_EQUAL(pthread_create(&t[i], NULL, issue_worker, &w[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(w[i].ok, 40);
    }
}

static void test_measure_issue_rate(void)
{
    struct soft_key *k = soft_new();
    struct nu_x509_issue_req r = leaf_req("dev", "device", k->signer.pub, 0);
    const int n = 300;
    int ok = 0;
    uint64_t t0 = nu_mono_ms();
    for (int i = 0; i < n; i++) {
        uint8_t *der = NULL;
        size_t len = 0;
        ok += nu_x509_issue(&r, nu_hsm_key_signer(fleet_key), fleet_der, fleet_len, &der, &len) ==
              NU_OK;
        free(der);
    }
    uint64_t ms = nu_mono_ms() - t0;
    CU_ASSERT_EQUAL(ok, n);
    printf("\n  MEASURE x509 issue (HSM-signed device cert, this build): %d in %llu ms = %.0f/s\n",
           n, (unsigned long long)ms, ms ? n * 1000.0 / (double)ms : 0.0);
    soft_free(k);
}

static const struct nu_test_case cases[] = {
    {"root -> fleet CA (HSM) -> leaf: openssl verify", test_hierarchy_openssl_verifies},
    {"extensions, names, AKI=SKI, 16-byte serial (openssl)", test_extensions_as_openssl_sees_them},
    {"two leaves, two serials", test_serials_differ},
    {"every name length and usage mix", test_name_lengths_and_usages},
    {"cert_info fields and GeneralizedTime", test_cert_info_fields},
    {"one flipped byte or truncation: refused", test_tampered_leaf_refused},
    {"expired / not yet valid: EXPIRED", test_expired_and_not_yet_valid},
    {"chain rules: not a CA, path length, wrong issuer", test_chain_rules},
    {"issue refuses bad requests", test_issue_refuses_bad_requests},
    {"a lying signer yields nothing", test_bad_signer_yields_nothing},
    {"CSR make -> parse_verify -> openssl req -verify", test_csr_roundtrip_and_openssl},
    {"CSR from openssl: P-256 ok; RSA, P-384, names refused", test_csr_from_openssl},
    {"CSR truncated, flipped, garbage, oversize", test_csr_malformed},
    {"cert_info on malformed input", test_cert_info_malformed},
    {"DER length cuts a chain; cut or not a SEQUENCE: 0", test_der_len_cuts_chains},
    {"PEM round trip, chains, malformed", test_pem_roundtrip_and_chains},
    {"4 threads issue concurrently", test_threads_issue_concurrently},
    {"measure: issue rate", test_measure_issue_rate},
    {NULL, NULL},
};

int main(void)
{
    nu_log_init("test_x509", NU_LOG_ERROR, NULL); /* refusals are expected here */
    static const struct nu_test_suite suites[] = {
        {"nu_x509", suite_setup, suite_teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("test_x509", suites);
}
