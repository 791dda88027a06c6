/*
 * nusec-cloud identity and certificate operations on the real stack: `nusec
 * pki init`, mosquitto + nusec_auth, the nusec-cloud binary with SoftHSM2,
 * SQLite. What the tests look at is what users and attackers see: answers on
 * the bus, certificates checked with the openssl command line, the ledger
 * file, the broker's lists, the CLI's output and exit status.
 *
 * The cases run in order on one stack (each builds on the state before).
 */
#include "cloud_fixture.h"

#include "ledger.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct cf F;
static struct cf_client oem, station;
static struct cf_programmer p1, p2;
static struct cf_client c1, c2; /* p1, p2 on the bus */
static char p1_token_used[160];

static const uint8_t UID1[] = {0x10, 0x20, 0x30, 0x40, 0x50, 0x60, 0x70, 0x80};
static const uint8_t UID2[] = {0xaa, 0xbb, 0xcc, 0x01};
static const uint8_t UID3[] = {0xaa, 0xbb, 0xcc, 0x02};
static const uint8_t UID4[] = {0xaa, 0xbb, 0xcc, 0x03};
static struct nu_p256_key *dev1;
static uint8_t *csr1;
static size_t csr1_len;
static char serial1[80];
static uint8_t *der1;
static size_t der1_len;

static int setup(void)
{
    if (cf_setup(&F, "cloud"))
        return -1;
    if (cf_client_open(&F, "oem", NULL, NULL, &oem) ||
        cf_client_open(&F, "station", NULL, NULL, &station))
        return -1;
    return cf_device_csr(&dev1, &csr1, &csr1_len) ? -1 : 0;
}

static int teardown(void)
{
    cf_client_close(&c1);
    cf_client_close(&c2);
    cf_client_close(&oem);
    cf_client_close(&station);
    cf_programmer_free(&p1);
    cf_programmer_free(&p2);
    nu_p256_key_destroy(dev1);
    free(csr1);
    free(der1);
    cf_teardown(&F);
    return 0;
}

static struct cloud_ledger *ledger_open(void)
{
    struct cloud_ledger *l = NULL;
    CU_ASSERT_EQUAL(cloud_ledger_open(F.ledger, &l), NU_OK);
    return l;
}

static int job_counts(const char *job, uint32_t *issued, uint32_t *quota)
{
    struct cloud_ledger *l = ledger_open();
    struct cloud_ledger_job j;
    int rc = l ? cloud_ledger_job_get(l, job, &j, NULL, 0, NULL) : NU_ERR_DB;
    cloud_ledger_close(l);
    *issued = rc ? 0 : j.issued;
    *quota = rc ? 0 : j.quota;
    return rc;
}

/* openssl verify of DER `der` against DIR/pki/<chain>. 0 = verified. */
static int openssl_verify(const uint8_t *der, size_t len, const char *chain)
{
    char path[CF_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/check.pem", F.tmp);
    if (cf_write_cert_pem(path, der, len))
        return -1;
    return nu_test_sh("openssl verify -CAfile %s/pki/%s %s >/dev/null", F.dir, chain, path);
}

/* ------------------------------------------------------------ enrollment */

static void test_enroll_through_station(void)
{
    char token[160];
    uint8_t pkg[NU_P256_PUB_LEN];
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&p1.identity), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&p1.package), NU_OK);
    nu_p256_key_pub(p1.package, pkg);
    snprintf(p1.id, sizeof(p1.id), "prog-1");
    snprintf(p1.cert, sizeof(p1.cert), "%s/prog-1.crt", F.tmp);
    snprintf(p1.key, sizeof(p1.key), "%s/prog-1.key", F.tmp);

    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-1", 3600, token, sizeof(token)), NU_OK);
    CU_ASSERT_EQUAL(strlen(token), 64);
    CU_ASSERT_EQUAL_FATAL(
        cf_enroll_raw(&station, "prog-1", token, p1.identity, "prog-1", "programmer", pkg, &r),
        NU_OK);
    const Nusec__V1__EnrollResponse *er = r->enroll_response;
    struct nu_x509_cert_info info;
    uint8_t id_pub[NU_P256_PUB_LEN], *rotpk = NULL, *pkgkey = NULL;
    size_t n = 0;
    nu_p256_key_pub(p1.identity, id_pub);
    CU_ASSERT_EQUAL(nu_x509_cert_info(er->certificate_der.data, er->certificate_der.len, &info),
                    NU_OK);
    CU_ASSERT_STRING_EQUAL(info.cn, "prog-1");
    CU_ASSERT_STRING_EQUAL(info.ou, "programmer");
    CU_ASSERT_STRING_EQUAL(info.o, "NuSEC");
    CU_ASSERT_STRING_EQUAL(info.issuer_cn, "NuSEC Fleet CA");
    CU_ASSERT_EQUAL(memcmp(info.pub, id_pub, sizeof(id_pub)), 0);
    CU_ASSERT_EQUAL(er->n_chain_der, 2);
    /* openssl, independently: the identity chains to the Root through the Fleet CA */
    CU_ASSERT_EQUAL(openssl_verify(er->certificate_der.data, er->certificate_der.len, "chain.pem"),
                    0);
    CU_ASSERT_EQUAL(
        openssl_verify(er->certificate_der.data, er->certificate_der.len, "device-chain.pem") == 0,
        0);
    /* pins: the package key and the secure-boot key of this PKI */
    char path[CF_PATH_MAX + 32];
    uint8_t *pem = NULL;
    snprintf(path, sizeof(path), "%s/pki/package-key.pem", F.dir);
    CU_ASSERT_EQUAL(nu_file_read(path, 16384, &pem, &n), NU_OK);
    pkgkey = malloc(NU_P256_PUB_LEN);
    CU_ASSERT_EQUAL(nu_p256_pub_from_pem((char *)pem, n, pkgkey), NU_OK);
    free(pem);
    CU_ASSERT_EQUAL(er->package_signing_pubkey.len, NU_P256_PUB_LEN);
    CU_ASSERT_EQUAL(memcmp(er->package_signing_pubkey.data, pkgkey, NU_P256_PUB_LEN), 0);
    snprintf(path, sizeof(path), "%s/firmware/rotpk.pem", F.dir);
    pem = NULL;
    CU_ASSERT_EQUAL(nu_file_read(path, 16384, &pem, &n), NU_OK);
    rotpk = malloc(NU_P256_PUB_LEN);
    CU_ASSERT_EQUAL(nu_p256_pub_from_pem((char *)pem, n, rotpk), NU_OK);
    free(pem);
    CU_ASSERT_EQUAL(er->rotpk.len, NU_P256_PUB_LEN);
    CU_ASSERT_EQUAL(memcmp(er->rotpk.data, rotpk, NU_P256_PUB_LEN), 0);
    free(rotpk);
    free(pkgkey);
    CU_ASSERT_EQUAL(cf_write_cert_pem(p1.cert, er->certificate_der.data, er->certificate_der.len),
                    NU_OK);
    CU_ASSERT_EQUAL(nu_p256_key_save_pem(p1.identity, p1.key), NU_OK);
    nu_envelope_free(r);
    snprintf(p1_token_used, sizeof(p1_token_used), "%s", token);

    /* the ledger has it, the broker knows the station owns it */
    struct cloud_ledger *l = ledger_open();
    struct cloud_ledger_programmer p;
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_EQUAL(p.state, CLOUD_LEDGER_PROGRAMMER_ENROLLED);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, info.serial_hex);
    CU_ASSERT_EQUAL(memcmp(p.package_pubkey, pkg, sizeof(pkg)), 0);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(nu_test_sh("grep -qx 'station prog-1' %s/broker/owners", F.dir), 0);
    /* the token was never written to the log */
    CU_ASSERT_NOT_EQUAL(nu_test_sh("grep -q %s %s", token, F.log), 0);
}

static void test_token_is_one_time(void)
{
    uint8_t pkg[NU_P256_PUB_LEN];
    Nusec__V1__Envelope *r = NULL;
    nu_p256_key_pub(p1.package, pkg);
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-1", p1_token_used, p1.identity, "prog-1",
                                  "programmer", pkg, &r),
                    NU_ERR_TOKEN);
    CU_ASSERT_PTR_NULL(r);
}

static void test_token_bound_to_its_programmer(void)
{
    char token[160];
    uint8_t pkg[NU_P256_PUB_LEN];
    struct nu_p256_key *k = NULL;
    Nusec__V1__Envelope *r = NULL;
    nu_p256_key_pub(p1.package, pkg);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-x", 0, token, sizeof(token)), NU_OK);
    /* another id with prog-x's token */
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-y", token, k, "prog-y", "programmer", pkg, &r),
                    NU_ERR_TOKEN);
    /* the CSR must name the programmer, with OU programmer */
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-x", token, k, "prog-y", "programmer", pkg, &r),
                    NU_ERR_BAD_CSR);
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-x", token, k, "prog-x", "oem", pkg, &r),
                    NU_ERR_BAD_CSR);
    /* the package key must be a point */
    uint8_t bad[NU_P256_PUB_LEN];
    memcpy(bad, pkg, sizeof(bad));
    bad[64] ^= 1;
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-x", token, k, "prog-x", "programmer", bad, &r),
                    NU_ERR_INVALID_ARG);
    /* a garbage token */
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-x", "zz", k, "prog-x", "programmer", pkg, &r),
                    NU_ERR_TOKEN);
    /* none of that used the token up */
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-x", token, k, "prog-x", "programmer", pkg, &r),
                    NU_OK);
    nu_envelope_free(r);
    nu_p256_key_destroy(k);
}

static void test_token_refuses_role_names_and_others(void)
{
    char token[160];
    static const char *const names[] = {"oem",     "station", "cloud",
                                        "monitor", "broker",  "programmer"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        CU_ASSERT_NOT_EQUAL(cf_token(&oem, names[i], 0, token, sizeof(token)), NU_OK);
    /* ttl over 30 days */
    CU_ASSERT_EQUAL(cf_token(&oem, "prog-z", 31u * 86400u, token, sizeof(token)),
                    NU_ERR_INVALID_ARG);
    /* an expired token */
    uint8_t pkg[NU_P256_PUB_LEN];
    struct nu_p256_key *k = NULL;
    Nusec__V1__Envelope *r = NULL;
    nu_p256_key_pub(p1.package, pkg);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-e", 1, token, sizeof(token)), NU_OK);
    usleep(1100 * 1000);
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-e", token, k, "prog-e", "programmer", pkg, &r),
                    NU_ERR_TOKEN);
    nu_p256_key_destroy(k);
    /* only the oem mints tokens; the station may not */
    CU_ASSERT_EQUAL(cf_token(&station, "prog-z", 0, token, sizeof(token)), NU_ERR_NOT_AUTHORIZED);
}

static void test_programmer_list(void)
{
    Nusec__V1__ProgrammerListRequest req = NUSEC__V1__PROGRAMMER_LIST_REQUEST__INIT;
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(cf_call(&oem, "programmer.list", &req.base, NULL, 0, &r, NULL, 0), NU_OK);
    CU_ASSERT_EQUAL_FATAL(r->body_case, NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_LIST);
    CU_ASSERT_EQUAL(r->programmer_list->n_programmers, 2);
    int seen = 0;
    for (size_t i = 0; i < r->programmer_list->n_programmers; i++) {
        const Nusec__V1__ProgrammerInfo *p = r->programmer_list->programmers[i];
        if (!strcmp(p->programmer_id, "prog-1")) {
            seen = 1;
            CU_ASSERT_STRING_EQUAL(p->state, "enrolled");
            CU_ASSERT_EQUAL(strlen(p->certificate_serial), 32);
        }
    }
    CU_ASSERT(seen);
    nu_envelope_free(r);
    /* a station cannot list */
    CU_ASSERT_EQUAL(cf_call(&station, "programmer.list", &req.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_NOT_AUTHORIZED);
}

/* ------------------------------------------------------------ issuance */

static void test_issue_device_certificate(void)
{
    Nusec__V1__Envelope *r = NULL;
    const char *progs[] = {"prog-1"};
    const uint32_t limits[] = {3};
    uint32_t issued = 0, quota = 0;
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, "prog-1", p1.cert, p1.key, &c1), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_job_create(&F, "job-a", 3, progs, limits, 1), NU_OK);
    CU_ASSERT_EQUAL_FATAL(
        cf_cert_request(&c1, "job-a", UID1, sizeof(UID1), csr1, csr1_len, NULL, 0, &r), NU_OK);
    const Nusec__V1__CertificateIssued *ci = r->certificate_issued;
    struct nu_x509_cert_info info;
    uint8_t pub[NU_P256_PUB_LEN];
    nu_p256_key_pub(dev1, pub);
    CU_ASSERT_EQUAL(nu_x509_cert_info(ci->certificate_der.data, ci->certificate_der.len, &info),
                    NU_OK);
    CU_ASSERT_STRING_EQUAL(info.cn, "1020304050607080");
    CU_ASSERT_STRING_EQUAL(info.ou, "device");
    CU_ASSERT_STRING_EQUAL(info.o, "NuSEC");
    CU_ASSERT_STRING_EQUAL(info.issuer_cn, "NuSEC Device CA");
    CU_ASSERT_FALSE(info.is_ca);
    CU_ASSERT_EQUAL(memcmp(info.pub, pub, sizeof(pub)), 0);
    CU_ASSERT_STRING_EQUAL(info.serial_hex, ci->serial);
    CU_ASSERT_EQUAL(ci->issued, 1);
    CU_ASSERT_EQUAL(ci->quota, 3);
    CU_ASSERT_EQUAL(
        openssl_verify(ci->certificate_der.data, ci->certificate_der.len, "device-chain.pem"), 0);
    /* not a fleet identity */
    CU_ASSERT_NOT_EQUAL(
        openssl_verify(ci->certificate_der.data, ci->certificate_der.len, "chain.pem"), 0);
    snprintf(serial1, sizeof(serial1), "%s", ci->serial);
    der1 = malloc(ci->certificate_der.len);
    memcpy(der1, ci->certificate_der.data, ci->certificate_der.len);
    der1_len = ci->certificate_der.len;
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(job_counts("job-a", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 1);
}

static void test_same_key_same_certificate(void)
{
    Nusec__V1__Envelope *r = NULL;
    uint32_t issued = 0, quota = 0;
    /* redelivery of the very same request */
    CU_ASSERT_EQUAL_FATAL(
        cf_cert_request(&c1, "job-a", UID1, sizeof(UID1), csr1, csr1_len, NULL, 0, &r), NU_OK);
    CU_ASSERT_STRING_EQUAL(r->certificate_issued->serial, serial1);
    CU_ASSERT_EQUAL(r->certificate_issued->certificate_der.len, der1_len);
    CU_ASSERT_EQUAL(memcmp(r->certificate_issued->certificate_der.data, der1, der1_len), 0);
    nu_envelope_free(r);
    /* a regenerated CSR of the same key (new signature bytes): still the same answer */
    struct nu_signer s;
    uint8_t *csr = NULL;
    size_t len = 0;
    nu_p256_key_signer(dev1, &s);
    CU_ASSERT_EQUAL_FATAL(nu_x509_csr_make(&s, "again", NULL, NULL, &csr, &len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_cert_request(&c1, "job-a", UID1, sizeof(UID1), csr, len, NULL, 0, &r),
                          NU_OK);
    CU_ASSERT_STRING_EQUAL(r->certificate_issued->serial, serial1);
    nu_envelope_free(r);
    free(csr);
    /* the same key for another device key: conflict */
    struct nu_p256_key *other = NULL;
    CU_ASSERT_EQUAL_FATAL(cf_device_csr(&other, &csr, &len), NU_OK);
    CU_ASSERT_EQUAL(cf_cert_request(&c1, "job-a", UID1, sizeof(UID1), csr, len, NULL, 0, &r),
                    NU_ERR_IDEMPOTENCY_CONFLICT);
    /* a fresh key for the same UID with another device key: the UID is taken */
    uint8_t fresh[16] = {1, 2, 3};
    CU_ASSERT_EQUAL(
        cf_cert_request(&c1, "job-a", UID1, sizeof(UID1), csr, len, fresh, sizeof(fresh), &r),
        NU_ERR_DUPLICATE_DEVICE);
    free(csr);
    nu_p256_key_destroy(other);
    CU_ASSERT_EQUAL(job_counts("job-a", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 1);
}

static void test_idempotency_key_required(void)
{
    /* built by hand: nu_client always adds a key */
    Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    req.job_id = "job-a";
    req.device_uid.data = (uint8_t *)UID2;
    req.device_uid.len = sizeof(UID2);
    req.csr_der.data = csr1;
    req.csr_der.len = csr1_len;
    struct nu_envelope_frame fr;
    uint8_t *out = NULL, *ans = NULL;
    size_t len = 0, ans_len = 0;
    Nusec__V1__Envelope *reply = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&fr, c1.sender, &req.base), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_envelope_pack(&fr.env, &out, &len, NULL), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_mqtt_request(c1.m, "nusec/v1/cloud/req/prog-1/cert.request", out, len,
                                          CF_TIMEOUT_MS, &ans, &ans_len),
                          NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_envelope_unpack(ans, ans_len, &reply, NULL), NU_OK);
    CU_ASSERT_EQUAL(reply->body_case, NUSEC__V1__ENVELOPE__BODY_ERROR);
    if (reply->body_case == NUSEC__V1__ENVELOPE__BODY_ERROR)
        CU_ASSERT_EQUAL(reply->error->code, NU_ERR_INVALID_ARG);
    nu_envelope_free(reply);
    free(ans);
    free(out);
}

static void test_bad_csrs_are_typed_errors(void)
{
    Nusec__V1__Envelope *r = NULL;
    uint32_t issued = 0, quota = 0;
    uint8_t garbage[64];
    memset(garbage, 0x30, sizeof(garbage));
    CU_ASSERT_EQUAL(
        cf_cert_request(&c1, "job-a", UID2, sizeof(UID2), garbage, sizeof(garbage), NULL, 0, &r),
        NU_ERR_BAD_CSR);
    /* a good CSR with one signature bit flipped */
    uint8_t *bad = malloc(csr1_len);
    memcpy(bad, csr1, csr1_len);
    bad[csr1_len - 3] ^= 0x01;
    CU_ASSERT_EQUAL(cf_cert_request(&c1, "job-a", UID2, sizeof(UID2), bad, csr1_len, NULL, 0, &r),
                    NU_ERR_BAD_CSR);
    /* truncated */
    CU_ASSERT_EQUAL(
        cf_cert_request(&c1, "job-a", UID2, sizeof(UID2), csr1, csr1_len / 2, NULL, 0, &r),
        NU_ERR_BAD_CSR);
    free(bad);
    /* RSA and P-384 CSRs made by openssl */
    static const char *const algs[] = {"-newkey rsa:2048",
                                       "-newkey ec -pkeyopt ec_paramgen_curve:P-384"};
    for (int i = 0; i < 2; i++) {
        char path[CF_PATH_MAX + 32];
        uint8_t *der = NULL;
        size_t len = 0;
        snprintf(path, sizeof(path), "%s/other.csr", F.tmp);
        CU_ASSERT_EQUAL_FATAL(nu_test_sh("openssl req -new %s -nodes -keyout %s/other.key "
                                         "-subj /CN=dev -outform DER -out %s 2>/dev/null",
                                         algs[i], F.tmp, path),
                              0);
        CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 8192, &der, &len), NU_OK);
        CU_ASSERT_EQUAL(cf_cert_request(&c1, "job-a", UID2, sizeof(UID2), der, len, NULL, 0, &r),
                        NU_ERR_BAD_CSR);
        free(der);
    }
    CU_ASSERT_EQUAL(job_counts("job-a", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 1);
}

static void test_quota_exhausted(void)
{
    Nusec__V1__Envelope *r = NULL;
    const uint8_t *uids[] = {UID2, UID3};
    uint32_t issued = 0, quota = 0;
    for (int i = 0; i < 2; i++) {
        struct nu_p256_key *k = NULL;
        uint8_t *csr = NULL;
        size_t len = 0;
        CU_ASSERT_EQUAL_FATAL(cf_device_csr(&k, &csr, &len), NU_OK);
        CU_ASSERT_EQUAL(cf_cert_request(&c1, "job-a", uids[i], 4, csr, len, NULL, 0, &r), NU_OK);
        if (r)
            CU_ASSERT_EQUAL(r->certificate_issued->issued, (uint32_t)i + 2);
        nu_envelope_free(r);
        r = NULL;
        free(csr);
        nu_p256_key_destroy(k);
    }
    struct nu_p256_key *k = NULL;
    uint8_t *csr = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(cf_device_csr(&k, &csr, &len), NU_OK);
    CU_ASSERT_EQUAL(cf_cert_request(&c1, "job-a", UID4, sizeof(UID4), csr, len, NULL, 0, &r),
                    NU_ERR_QUOTA_EXHAUSTED);
    free(csr);
    nu_p256_key_destroy(k);
    CU_ASSERT_EQUAL(job_counts("job-a", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 3);
    CU_ASSERT_EQUAL(quota, 3);
    /* an already issued device is still answered (its certificate, no quota) */
    CU_ASSERT_EQUAL(cf_cert_request(&c1, "job-a", UID1, sizeof(UID1), csr1, csr1_len, NULL, 0, &r),
                    NU_OK);
    if (r)
        CU_ASSERT_STRING_EQUAL(r->certificate_issued->serial, serial1);
    nu_envelope_free(r);
}

static void test_unassigned_programmer_and_unknown_job(void)
{
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(cf_programmer_make(&F, &oem, &station, "prog-2", &p2), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, "prog-2", p2.cert, p2.key, &c2), NU_OK);
    const char *progs[] = {"prog-1"};
    const uint32_t limits[] = {2};
    uint32_t issued = 0, quota = 0;
    CU_ASSERT_EQUAL_FATAL(cf_job_create(&F, "job-b", 2, progs, limits, 1), NU_OK);
    CU_ASSERT_EQUAL(cf_cert_request(&c2, "job-b", UID4, sizeof(UID4), csr1, csr1_len, NULL, 0, &r),
                    NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(job_counts("job-b", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 0);
    CU_ASSERT_EQUAL(
        cf_cert_request(&c2, "no-such-job", UID4, sizeof(UID4), csr1, csr1_len, NULL, 0, &r),
        NU_ERR_NOT_FOUND);
    /* a programmer cannot run OEM operations */
    Nusec__V1__ProgrammerListRequest req = NUSEC__V1__PROGRAMMER_LIST_REQUEST__INIT;
    CU_ASSERT_EQUAL(cf_call(&c2, "programmer.list", &req.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_NOT_AUTHORIZED);
}

/* A fresh device's CSR, requested by c for job; returns the code (CN into cn). */
static int request_new(struct cf_client *c, const char *job, const uint8_t *uid, size_t uid_len,
                       char *cn, size_t cap);

static void test_programmer_renews_only_itself(void)
{
    char token[160];
    uint8_t pkg[NU_P256_PUB_LEN];
    struct nu_p256_key *k = NULL;
    Nusec__V1__Envelope *r = NULL;
    struct cloud_ledger_programmer before, after;
    struct cloud_ledger *l = ledger_open();
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_programmer_get(l, "prog-2", &before), NU_OK);
    nu_p256_key_pub(p2.package, pkg);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    /* prog-2 renews its own identity (new key), over its current connection */
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-2", 0, token, sizeof(token)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_enroll_raw(&c2, "prog-2", token, k, "prog-2", "programmer", pkg, &r),
                          NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-2", &after), NU_OK);
    CU_ASSERT_STRING_NOT_EQUAL(after.cert_serial, before.cert_serial);
    /* At once means at once: the old connection's very next publish, sent as
     * soon as the answer is in (no waiting for the broker's tick and kick),
     * is refused, or finds the connection already gone. */
    CU_ASSERT_NOT_EQUAL(nu_mqtt_publish(c2.m, "nusec/v1/events/programmer/prog-2/probe", "x", 1,
                                        1, 0),
                        NU_OK);
    /* The previous certificate stops working at once: the broker pins the
     * new serial (DIR/broker/serials), kicks the old session, refuses it. */
    char old_crt[CF_PATH_MAX + 16], old_key[CF_PATH_MAX + 16];
    snprintf(old_crt, sizeof(old_crt), "%s/prog-2-old.crt", F.tmp);
    snprintf(old_key, sizeof(old_key), "%s/prog-2-old.key", F.tmp);
    CU_ASSERT_EQUAL(nu_test_sh("cp %s %s && cp %s %s", p2.cert, old_crt, p2.key, old_key), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -qx 'prog-2 %s' %s/broker/serials", after.cert_serial, F.dir),
                    0);
    int gone = 0;
    for (int t = 0; t < 300 && !gone; t++, usleep(20 * 1000)) /* the grace: 1.5 s */
        gone = !nu_mqtt_is_connected(c2.m);
    CU_ASSERT_TRUE(gone);
    cf_client_close(&c2);
    struct cf_client stale;
    CU_ASSERT_NOT_EQUAL(cf_client_open(&F, "prog-2", old_crt, old_key, &stale), NU_OK);
    cf_client_close(&stale);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'prog-2.*re-enrolled' %s/broker/mosquitto.log", F.dir), 0);
    /* The new one works. */
    CU_ASSERT_EQUAL(cf_write_cert_pem(p2.cert, r->enroll_response->certificate_der.data,
                                      r->enroll_response->certificate_der.len),
                    NU_OK);
    CU_ASSERT_EQUAL(nu_p256_key_save_pem(k, p2.key), NU_OK);
    nu_envelope_free(r);
    r = NULL;
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, "prog-2", p2.cert, p2.key, &c2), NU_OK);
    /* ... but cannot enroll anyone else, even with that one's token */
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-q", 0, token, sizeof(token)), NU_OK);
    CU_ASSERT_EQUAL(cf_enroll_raw(&c2, "prog-q", token, k, "prog-q", "programmer", pkg, &r),
                    NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-q", &after), NU_ERR_NOT_FOUND);
    cloud_ledger_close(l);
    nu_p256_key_destroy(k);
}

static void test_malformed_enrollments(void)
{
    char token[160];
    uint8_t pkg[NU_P256_PUB_LEN];
    Nusec__V1__Envelope *r = NULL;
    nu_p256_key_pub(p1.package, pkg);
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-m", 0, token, sizeof(token)), NU_OK);
    Nusec__V1__EnrollRequest req = NUSEC__V1__ENROLL_REQUEST__INIT;
    req.programmer_id = "prog-m";
    req.token = token;
    req.package_pubkey.data = pkg;
    req.package_pubkey.len = sizeof(pkg);
    /* no CSR, no token: the envelope rules refuse them before they leave
     * (INVALID_ARG), or the cloud does (its own code) */
    int rc = cf_call(&station, "enroll", &req.base, NULL, 0, &r, NULL, 0);
    CU_ASSERT(rc == NU_ERR_BAD_CSR || rc == NU_ERR_INVALID_ARG);
    /* a device CSR (no OU) */
    req.csr_der.data = csr1;
    req.csr_der.len = csr1_len;
    CU_ASSERT_EQUAL(cf_call(&station, "enroll", &req.base, NULL, 0, &r, NULL, 0), NU_ERR_BAD_CSR);
    /* a package key of the wrong length */
    req.package_pubkey.len = 33;
    CU_ASSERT_EQUAL(cf_call(&station, "enroll", &req.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_INVALID_ARG);
    /* no token */
    req.package_pubkey.len = sizeof(pkg);
    req.token = "";
    rc = cf_call(&station, "enroll", &req.base, NULL, 0, &r, NULL, 0);
    CU_ASSERT(rc == NU_ERR_TOKEN || rc == NU_ERR_INVALID_ARG);
    struct nu_p256_key *k = NULL;
    struct nu_signer sg;
    uint8_t *csr = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    nu_p256_key_signer(k, &sg);
    CU_ASSERT_EQUAL_FATAL(nu_x509_csr_make(&sg, "prog-m", "programmer", "NuSEC", &csr, &len),
                          NU_OK);
    req.csr_der.data = csr;
    req.csr_der.len = len;
    /* a token of the right form that was never minted */
    req.token = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    int tok = cf_call(&station, "enroll", &req.base, NULL, 0, &r, NULL, 0);
    CU_ASSERT(tok == NU_ERR_TOKEN || tok == NU_ERR_ATTESTATION_MISSING);
    /* the real token with a CSR made outside any KeyStore: refused */
    req.token = token;
    CU_ASSERT_EQUAL(cf_call(&station, "enroll", &req.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_ATTESTATION_MISSING);
    /* and the real one still works after all that, attested */
    CU_ASSERT_EQUAL(cf_enroll_raw(&station, "prog-m", token, k, "prog-m", "programmer", pkg, &r),
                    NU_OK);
    nu_envelope_free(r);
    r = NULL;
    free(csr);
    nu_p256_key_destroy(k);
    /* the wrong body for the op */
    Nusec__V1__ProgrammerListRequest other = NUSEC__V1__PROGRAMMER_LIST_REQUEST__INIT;
    CU_ASSERT_EQUAL(cf_call(&station, "enroll", &other.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_INVALID_ARG);
    /* an unknown op */
    CU_ASSERT_EQUAL(cf_call(&station, "enroll.now", &other.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_NOT_SUPPORTED);
}

/* ------------------------------------------------------------ attested enrollment */

/* A number the sqlite3 shell prints for `sql` on the ledger; -1 on failure. */
static long sql_count(const char *sql)
{
    char cmd[2048];
    long n = -1;
    int len = snprintf(cmd, sizeof(cmd), "sqlite3 %s \"%s\"", F.ledger, sql);
    if (len < 0 || (size_t)len >= sizeof(cmd))
        return -1;
    FILE *p = popen(cmd, "r");
    if (p && fscanf(p, "%ld", &n) != 1)
        n = -1;
    if (p)
        pclose(p);
    return n;
}

/* request.refused events of `enroll` with code NAME. */
static long refused(const char *code)
{
    char sql[512];
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM audit_events WHERE kind IN ('request.refused','enroll.refused')"
             " AND payload LIKE '%%\\\"code\\\":\\\"%s\\\"%%'",
             code);
    return sql_count(sql);
}

struct att_case {
    const char *why;
    struct cf_attest a;
    int want;
};

/*
 * Each refusal: its typed error, its audit event, and nothing recorded (no
 * programmer row, the token still unused: a genuine enrollment with it
 * works afterwards).
 */
static void attest_refused(const char *id, const char *token, struct cf_attest *a, int want)
{
    uint8_t pkg[NU_P256_PUB_LEN];
    struct nu_p256_key *k = NULL;
    Nusec__V1__Envelope *r = NULL;
    char sql[256];
    long before = refused(nu_err_name(want));
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    nu_p256_key_pub(p1.package, pkg);
    int rc = cf_enroll_attested(&station, id, token, k, id, "programmer", pkg, a, &r);
    if (rc != want)
        fprintf(stderr, "\n    %s: got %s, want %s\n", id, nu_err_name(rc), nu_err_name(want));
    CU_ASSERT_EQUAL(rc, want);
    CU_ASSERT_PTR_NULL(r);
    nu_envelope_free(r);
    /* The audit row is written right after the answer is sent: wait for it. */
    long now = refused(nu_err_name(want));
    for (int t = 0; t < 100 && now < before + 1; t++, usleep(20 * 1000))
        now = refused(nu_err_name(want));
    CU_ASSERT_EQUAL(now, before + 1);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM programmers WHERE programmer_id = '%s'", id);
    CU_ASSERT_EQUAL(sql_count(sql), 0);
    nu_p256_key_destroy(k);
}

static void test_attested_enrollment_refusals(void)
{
    char token[160], sql[256];
    uint8_t pkg[NU_P256_PUB_LEN], other_pub[NU_P256_PUB_LEN], nonce[32], wrong[32];
    struct nu_p256_key *k = NULL, *other = NULL;
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&other), NU_OK);
    nu_p256_key_pub(other, other_pub);
    nu_p256_key_pub(p1.package, pkg);
    memset(wrong, 0x5a, sizeof(wrong));
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-att", 0, token, sizeof(token)), NU_OK);

    /* The attack of issue 9: a valid token, a CSR made by a script, no KeyStore. */
    struct cf_attest script = {.none = 1};
    attest_refused("prog-att", token, &script, NU_ERR_ATTESTATION_MISSING);
    struct cf_attest vendor = {.other_vendor = 1};
    attest_refused("prog-att", token, &vendor, NU_ERR_ATTESTATION_UNTRUSTED);
    struct cf_attest badsig = {.bad_signature = 1};
    attest_refused("prog-att", token, &badsig, NU_ERR_ATTESTATION_SIGNATURE);
    struct cf_attest key = {.identity_pub = other_pub};
    attest_refused("prog-att", token, &key, NU_ERR_KEY_NOT_ATTESTED);
    struct cf_attest meas = {.measurement = wrong};
    attest_refused("prog-att", token, &meas, NU_ERR_MEASUREMENT);
    struct cf_attest nomanifest = {.no_manifest = 1};
    attest_refused("prog-att", token, &nomanifest, NU_ERR_MEASUREMENT);
    /* Relayed at the CM, the answer is the OEM's only through the anchor: a
     * KeyStore without one, or anchored to a key the CM could hold, is
     * refused whatever the programmer's own firmware would have done. */
    struct cf_attest bare = {.unanchored = 1};
    attest_refused("prog-att", token, &bare, NU_ERR_NOT_AUTHORIZED);
    struct cf_attest foreign = {.anchor_sha256 = wrong};
    attest_refused("prog-att", token, &foreign, NU_ERR_KEY_NOT_ATTESTED);
    struct cf_attest unknown = {.nonce = wrong};
    attest_refused("prog-att", token, &unknown, NU_ERR_NONCE_REPLAYED);
    /* a challenge bound to another programmer */
    char token_b[160];
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-attb", 0, token_b, sizeof(token_b)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_challenge(&station, "prog-attb", token_b, nonce), NU_OK);
    struct cf_attest theirs = {.nonce = nonce};
    attest_refused("prog-att", token, &theirs, NU_ERR_NONCE_REPLAYED);
    /* no challenge without a valid token */
    CU_ASSERT_EQUAL(cf_challenge(&station, "prog-att", token_b, nonce), NU_ERR_TOKEN);

    /* After all that, the genuine programmer enrolls with the same token... */
    struct cf_attest genuine = {0};
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    CU_ASSERT_EQUAL(cf_enroll_attested(&station, "prog-att", token, k, "prog-att", "programmer",
                                       pkg, &genuine, &r),
                    NU_OK);
    nu_envelope_free(r);
    r = NULL;
    /* ... and the ledger records what its KeyStore attested. */
    struct cloud_ledger *l = ledger_open();
    struct cloud_ledger_programmer p;
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-att", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.vendor_serial, cf_vendor_serial());
    CU_ASSERT_STRING_EQUAL(p.firmware_measurement,
                           "c10df17801000000000000000000000000000000000000000000000000000000");
    cloud_ledger_close(l);
    /* The nonce is single-use: replayed with a fresh token, refused. */
    char token2[160];
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-att", 0, token2, sizeof(token2)), NU_OK);
    struct cf_attest replay = {.nonce = genuine.used_nonce};
    long serials = sql_count("SELECT count(*) FROM programmers");
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM programmers WHERE programmer_id = 'prog-att' AND cert_serial = "
             "'%s'",
             p.cert_serial);
    uint8_t pkg2[NU_P256_PUB_LEN];
    nu_p256_key_pub(p1.package, pkg2);
    CU_ASSERT_EQUAL(cf_enroll_attested(&station, "prog-att", token2, other, "prog-att",
                                       "programmer", pkg2, &replay, &r),
                    NU_ERR_NONCE_REPLAYED);
    CU_ASSERT_EQUAL(sql_count(sql), 1); /* the enrolled identity is unchanged */
    CU_ASSERT_EQUAL(sql_count("SELECT count(*) FROM programmers"), serials);
    /* At the OEM (the default relay) the answer never crosses the CM: a
     * KeyStore without an anchor enrolls. */
    char token3[160];
    struct cf_attest at_oem = {.unanchored = 1};
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-att-oem", 0, token3, sizeof(token3)), NU_OK);
    CU_ASSERT_EQUAL(cf_enroll_attested(&oem, "prog-att-oem", token3, other, "prog-att-oem",
                                       "programmer", pkg2, &at_oem, &r),
                    NU_OK);
    nu_envelope_free(r);
    nu_p256_key_destroy(k);
    nu_p256_key_destroy(other);
}

/* Configuration the cloud reads at start: restart it with `conf` (NULL = none). */
static void cloud_restart_with(const char *conf)
{
    char path[CF_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/cloud/cloud.conf", F.dir);
    CU_ASSERT_EQUAL(cf_cloud_stop(&F), 0);
    if (conf) {
        CU_ASSERT_EQUAL(nu_file_write_atomic(path, conf, strlen(conf), 0644), NU_OK);
    } else {
        unlink(path);
    }
    CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
}

static void test_challenge_expiry_restart_and_serial_allow_list(void)
{
    char token[160], token_e[160], token_s[160], conf[CF_PATH_MAX * 2 + 128];
    char list[CF_PATH_MAX + 32], line[80];
    uint8_t pkg[NU_P256_PUB_LEN], nonce[32];
    struct nu_p256_key *k = NULL;
    Nusec__V1__Envelope *r = NULL;
    nu_p256_key_pub(p1.package, pkg);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-rst", 0, token, sizeof(token)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-exp", 0, token_e, sizeof(token_e)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "prog-ser", 0, token_s, sizeof(token_s)), NU_OK);
    /* A challenge taken before a restart is still good after it (the ledger keeps it). */
    CU_ASSERT_EQUAL_FATAL(cf_challenge(&station, "prog-rst", token, nonce), NU_OK);
    snprintf(list, sizeof(list), "%s/serials.txt", F.tmp);
    snprintf(line, sizeof(line), "# bought\n%s\n", cf_vendor_serial());
    CU_ASSERT_EQUAL(nu_file_write_atomic(list, line, strlen(line), 0644), NU_OK);
    snprintf(conf, sizeof(conf), "enroll_challenge_ttl_s = 1\nprogrammer_serials = %s\n", list);
    cloud_restart_with(conf);
    CU_ASSERT_EQUAL(station.m != NULL, 1);
    struct cf_attest carried = {.nonce = nonce};
    CU_ASSERT_EQUAL(cf_enroll_attested(&station, "prog-rst", token, k, "prog-rst", "programmer",
                                       pkg, &carried, &r),
                    NU_OK);
    nu_envelope_free(r);
    r = NULL;
    /* An expired challenge (ttl 1 s). */
    CU_ASSERT_EQUAL_FATAL(cf_challenge(&station, "prog-exp", token_e, nonce), NU_OK);
    usleep(1300 * 1000);
    struct cf_attest late = {.nonce = nonce};
    attest_refused("prog-exp", token_e, &late, NU_ERR_NONCE_EXPIRED);
    /* A serial the OEM did not buy. */
    CU_ASSERT_EQUAL(nu_file_write_atomic(list, "NL3-000000000000\n", 17, 0644), NU_OK);
    attest_refused("prog-ser", token_s, NULL, NU_ERR_SERIAL_NOT_ALLOWED);
    /* An unreadable list allows nobody (fail closed). */
    unlink(list);
    attest_refused("prog-ser", token_s, NULL, NU_ERR_SERIAL_NOT_ALLOWED);
    cloud_restart_with(NULL);
    nu_p256_key_destroy(k);
}

/* The cloud refuses a revoked programmer by itself, before the broker knows. */
static void test_cloud_refuses_revoked_before_the_broker(void)
{
    struct cf_programmer p3;
    struct cf_client c3;
    struct cloud_ledger *l = ledger_open();
    CU_ASSERT_EQUAL_FATAL(cf_programmer_make(&F, &oem, &station, "prog-3", &p3), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, "prog-3", p3.cert, p3.key, &c3), NU_OK);
    /* revoked in the ledger only: DIR/broker/revoked does not name it yet */
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-3", "test", "oem", nu_time_ms()),
                    NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(request_new(&c3, "job-b", UID4, sizeof(UID4), NULL, 0), NU_ERR_REVOKED);
    CU_ASSERT(nu_mqtt_is_connected(c3.m));
    CU_ASSERT_NOT_EQUAL(nu_test_sh("grep -qx prog-3 %s/broker/revoked", F.dir), 0);
    cf_client_close(&c3);
    cf_programmer_free(&p3);
}

/* A fresh device's CSR, requested by c for job; returns the code (CN into cn). */
static int request_new(struct cf_client *c, const char *job, const uint8_t *uid, size_t uid_len,
                       char *cn, size_t cap)
{
    struct nu_p256_key *k = NULL;
    uint8_t *csr = NULL;
    size_t len = 0;
    Nusec__V1__Envelope *r = NULL;
    int rc = cf_device_csr(&k, &csr, &len);
    if (!rc)
        rc = cf_cert_request(c, job, uid, uid_len, csr, len, NULL, 0, &r);
    if (!rc && cn) {
        struct nu_x509_cert_info info;
        rc = nu_x509_cert_info(r->certificate_issued->certificate_der.data,
                               r->certificate_issued->certificate_der.len, &info);
        snprintf(cn, cap, "%s", info.cn);
    }
    nu_envelope_free(r);
    free(csr);
    nu_p256_key_destroy(k);
    return rc;
}

static void test_paused_expired_and_templates(void)
{
    static const uint8_t u5[] = {0xaa, 0xbb, 0xcc, 0x05}, u6[] = {0xaa, 0xbb, 0xcc, 0x06};
    static const uint8_t long_uid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};
    const char *progs[] = {"prog-1"};
    const uint32_t limits[] = {2};
    uint32_t issued = 0, quota = 0;
    char cn[80];
    /* paused: refused, typed; resumed: issued */
    CU_ASSERT_EQUAL(cf_job_control(&F, "job-b", 1), NU_OK);
    CU_ASSERT_EQUAL(request_new(&c1, "job-b", u5, sizeof(u5), NULL, 0), NU_ERR_JOB_NOT_ACTIVE);
    CU_ASSERT_EQUAL(cf_job_control(&F, "job-b", 2), NU_OK);
    CU_ASSERT_EQUAL(request_new(&c1, "job-b", u6, sizeof(u6), NULL, 0), NU_OK);
    CU_ASSERT_EQUAL(job_counts("job-b", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 1);
    /* expired */
    CU_ASSERT_EQUAL_FATAL(
        cf_job_create_ex(&F, "job-e", 2, progs, limits, 1, nu_time_ms() + 300, NULL), NU_OK);
    usleep(400 * 1000);
    CU_ASSERT_EQUAL(request_new(&c1, "job-e", u5, sizeof(u5), NULL, 0), NU_ERR_EXPIRED);
    CU_ASSERT_EQUAL(job_counts("job-e", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 0);
    /* subject template */
    CU_ASSERT_EQUAL_FATAL(cf_job_create_ex(&F, "job-t", 2, progs, limits, 1, 0, "dev-{UID}.{job}"),
                          NU_OK);
    CU_ASSERT_EQUAL(request_new(&c1, "job-t", u5, sizeof(u5), cn, sizeof(cn)), NU_OK);
    CU_ASSERT_STRING_EQUAL(cn, "dev-AABBCC05.job-t");
    /* a CN that cannot fit (3 x 32 hex) and an unknown placeholder: refused, nothing counted */
    CU_ASSERT_EQUAL_FATAL(cf_job_create_ex(&F, "job-u", 2, progs, limits, 1, 0, "{uid}{uid}{uid}"),
                          NU_OK);
    CU_ASSERT_EQUAL(request_new(&c1, "job-u", long_uid, sizeof(long_uid), NULL, 0),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL_FATAL(cf_job_create_ex(&F, "job-v", 2, progs, limits, 1, 0, "{serial}"), NU_OK);
    CU_ASSERT_EQUAL(request_new(&c1, "job-v", u5, sizeof(u5), NULL, 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(job_counts("job-u", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 0);
    CU_ASSERT_EQUAL(job_counts("job-v", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, 0);
    /* the default CN is the UID in hex, even for a 16-byte UID */
    CU_ASSERT_EQUAL(request_new(&c1, "job-t", long_uid, sizeof(long_uid), cn, sizeof(cn)), NU_OK);
    CU_ASSERT_STRING_EQUAL(cn, "dev-0102030405060708090A0B0C0D0E0F10.job-t");
}

/* Wait for the ledger to show `want` for the job's UID1 certificate. */
static int wait_cert_state(const uint8_t *uid, size_t uid_len, enum cloud_ledger_cert_state want)
{
    struct cloud_ledger_cert *c = malloc(sizeof(*c));
    struct cloud_ledger_cert_ref ref = {
        .job_id = "job-a", .device_uid = uid, .device_uid_len = uid_len};
    int state = 0;
    for (int i = 0; i < 100 && state != (int)want; i++) {
        struct cloud_ledger *l = ledger_open();
        if (l && !cloud_ledger_cert_get(l, &ref, c))
            state = (int)c->state;
        cloud_ledger_close(l);
        if (state != (int)want)
            usleep(30000);
    }
    free(c);
    return state;
}

static int publish_report(struct cf_client *c, const char *id, const char *kind, const uint8_t *uid,
                          size_t uid_len)
{
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    Nusec__V1__DeviceReport rep = NUSEC__V1__DEVICE_REPORT__INIT;
    rep.job_id = "job-a";
    rep.device_uid.data = (uint8_t *)uid;
    rep.device_uid.len = uid_len;
    rep.outcome = strcmp(kind, "device.provisioned") == 0
                      ? NUSEC__V1__DEVICE_OUTCOME__DEVICE_OUTCOME_PROVISIONED
                      : NUSEC__V1__DEVICE_OUTCOME__DEVICE_OUTCOME_FAILED;
    rep.detail = "socket 0";
    ev.kind = (char *)kind;
    ev.job_id = "job-a";
    ev.data_case = NUSEC__V1__EVENT__DATA_DEVICE;
    ev.device = &rep;
    struct nu_envelope_frame fr;
    uint8_t *out = NULL;
    size_t len = 0;
    char topic[256];
    snprintf(topic, sizeof(topic), "nusec/v1/events/programmer/%s/%s", id, kind);
    int rc = nu_envelope_frame_init(&fr, c->sender, &ev.base);
    if (!rc)
        rc = nu_envelope_pack(&fr.env, &out, &len, NULL);
    if (!rc)
        rc = nu_mqtt_publish(c->m, topic, out, len, 1, 0);
    free(out);
    return rc;
}

static void test_device_reports(void)
{
    /* prog-2 did not issue UID2's certificate: its report is ignored */
    CU_ASSERT_EQUAL(publish_report(&c2, "prog-2", "device.failed", UID2, sizeof(UID2)), NU_OK);
    CU_ASSERT_EQUAL(publish_report(&c1, "prog-1", "device.provisioned", UID1, sizeof(UID1)), NU_OK);
    CU_ASSERT_EQUAL(wait_cert_state(UID1, sizeof(UID1), CLOUD_LEDGER_CERT_PROVISIONED),
                    CLOUD_LEDGER_CERT_PROVISIONED);
    CU_ASSERT_EQUAL(publish_report(&c1, "prog-1", "device.failed", UID3, sizeof(UID3)), NU_OK);
    CU_ASSERT_EQUAL(wait_cert_state(UID3, sizeof(UID3), CLOUD_LEDGER_CERT_FAILED),
                    CLOUD_LEDGER_CERT_FAILED);
    /* by then prog-2's earlier report was processed too, and changed nothing */
    CU_ASSERT_EQUAL(wait_cert_state(UID2, sizeof(UID2), CLOUD_LEDGER_CERT_ISSUED),
                    CLOUD_LEDGER_CERT_ISSUED);
}

static void test_device_list_and_revoke(void)
{
    Nusec__V1__DeviceListRequest req = NUSEC__V1__DEVICE_LIST_REQUEST__INIT;
    Nusec__V1__Envelope *r = NULL;
    req.job_id = "job-a";
    CU_ASSERT_EQUAL_FATAL(cf_call(&oem, "device.list", &req.base, NULL, 0, &r, NULL, 0), NU_OK);
    CU_ASSERT_EQUAL_FATAL(r->body_case, NUSEC__V1__ENVELOPE__BODY_DEVICE_LIST);
    CU_ASSERT_EQUAL(r->device_list->n_devices, 3);
    for (size_t i = 0; i < r->device_list->n_devices; i++) {
        const Nusec__V1__DeviceCertificate *d = r->device_list->devices[i];
        CU_ASSERT(d->certificate_der.len > 0);
        if (d->device_uid.len == sizeof(UID1) && !memcmp(d->device_uid.data, UID1, sizeof(UID1))) {
            CU_ASSERT_STRING_EQUAL(d->state, "provisioned");
            CU_ASSERT_STRING_EQUAL(d->serial, serial1);
        }
    }
    nu_envelope_free(r);
    /* by UID across jobs */
    req.job_id = "";
    req.device_uid.data = (uint8_t *)UID2;
    req.device_uid.len = sizeof(UID2);
    CU_ASSERT_EQUAL_FATAL(cf_call(&oem, "device.list", &req.base, NULL, 0, &r, NULL, 0), NU_OK);
    CU_ASSERT_EQUAL(r->device_list->n_devices, 1);
    nu_envelope_free(r);
    /* neither: refused */
    req.device_uid.len = 0;
    CU_ASSERT_EQUAL(cf_call(&oem, "device.list", &req.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_INVALID_ARG);
    /* Pages of one: every device once, then no next page; a forged cursor is refused. */
    char after[128] = "", seen[3][CLOUD_LEDGER_SERIAL_MAX + 1] = {{0}};
    size_t pages = 0;
    req.job_id = "job-a";
    req.page_size = 1;
    do {
        req.page_after = after;
        CU_ASSERT_EQUAL_FATAL(cf_call(&oem, "device.list", &req.base, NULL, 0, &r, NULL, 0), NU_OK);
        CU_ASSERT_EQUAL(r->device_list->n_devices, 1);
        if (pages < 3 && r->device_list->n_devices == 1)
            snprintf(seen[pages], sizeof(seen[pages]), "%s", r->device_list->devices[0]->serial);
        snprintf(after, sizeof(after), "%s", r->device_list->next_page);
        nu_envelope_free(r);
        pages++;
    } while (after[0] && pages < 10);
    CU_ASSERT_EQUAL(pages, 3);
    CU_ASSERT(strcmp(seen[0], seen[1]) && strcmp(seen[1], seen[2]) && strcmp(seen[0], seen[2]));
    req.page_after = "not-a-cursor";
    CU_ASSERT_EQUAL(cf_call(&oem, "device.list", &req.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_INVALID_ARG);
    req.page_after = "";
    req.page_size = 0;

    Nusec__V1__DeviceRevokeRequest rv = NUSEC__V1__DEVICE_REVOKE_REQUEST__INIT;
    rv.job_id = "job-a";
    rv.device_uid.data = (uint8_t *)UID3;
    rv.device_uid.len = sizeof(UID3);
    rv.reason = "key compromise";
    CU_ASSERT_EQUAL(cf_call(&oem, "device.revoke", &rv.base, NULL, 0, &r, NULL, 0), NU_OK);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(wait_cert_state(UID3, sizeof(UID3), CLOUD_LEDGER_CERT_REVOKED),
                    CLOUD_LEDGER_CERT_REVOKED);
    CU_ASSERT_EQUAL(cf_call(&oem, "device.revoke", &rv.base, NULL, 0, &r, NULL, 0), NU_ERR_STATE);
    rv.job_id = "job-zz";
    CU_ASSERT_EQUAL(cf_call(&oem, "device.revoke", &rv.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_NOT_FOUND);
}

struct inbox {
    pthread_mutex_t lock;
    uint8_t *last;
    size_t len;
};

static void on_job(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    (void)m;
    struct inbox *in = ud;
    pthread_mutex_lock(&in->lock);
    free(in->last);
    in->last = malloc(msg->len ? msg->len : 1);
    memcpy(in->last, msg->payload, msg->len);
    in->len = msg->len;
    pthread_mutex_unlock(&in->lock);
}

/* The retained message of `topic` as `identity` reads it (within ~2 s), unpacked. */
static int read_retained(const char *identity, const char *topic, Nusec__V1__Envelope **out)
{
    struct cf_client mon;
    struct inbox in = {.lock = PTHREAD_MUTEX_INITIALIZER};
    int rc = cf_client_open(&F, identity, NULL, NULL, &mon);
    if (rc != NU_OK)
        return rc;
    rc = nu_mqtt_subscribe(mon.m, topic, 1, on_job, &in);
    for (int i = 0; rc == NU_OK && i < 100; i++) {
        pthread_mutex_lock(&in.lock);
        size_t n = in.len;
        pthread_mutex_unlock(&in.lock);
        if (n)
            break;
        usleep(20000);
    }
    cf_client_close(&mon);
    if (rc == NU_OK)
        rc = in.len ? nu_envelope_unpack(in.last, in.len, out, NULL) : NU_ERR_TIMEOUT;
    free(in.last);
    return rc;
}

static void test_retained_job_state(void)
{
    Nusec__V1__Envelope *env = NULL;
    CU_ASSERT_EQUAL_FATAL(read_retained("monitor", "nusec/v1/jobs/job-a", &env), NU_OK);
    CU_ASSERT_EQUAL_FATAL(env->body_case, NUSEC__V1__ENVELOPE__BODY_JOB_STATE);
    const Nusec__V1__JobState *st = env->job_state;
    CU_ASSERT_STRING_EQUAL(st->job_id, "job-a");
    CU_ASSERT_EQUAL(st->issued, 3);
    CU_ASSERT_EQUAL(st->quota, 3);
    CU_ASSERT_EQUAL(st->status, NUSEC__V1__JOB_STATUS__JOB_STATUS_EXHAUSTED);
    CU_ASSERT_EQUAL(st->n_allocations, 1);
    CU_ASSERT_EQUAL(st->n_issued_per_programmer, 1);
    if (st->n_issued_per_programmer)
        CU_ASSERT_EQUAL(st->issued_per_programmer[0], 3);
    nu_envelope_free(env);
}

/* The device certificate of `uid` in job-a, written as PEM to `path`. */
static int device_cert_pem(const uint8_t *uid, size_t uid_len, const char *path)
{
    Nusec__V1__DeviceListRequest req = NUSEC__V1__DEVICE_LIST_REQUEST__INIT;
    Nusec__V1__Envelope *r = NULL;
    req.job_id = "job-a";
    req.device_uid = (ProtobufCBinaryData){uid_len, (uint8_t *)uid};
    int rc = cf_call(&oem, "device.list", &req.base, NULL, 0, &r, NULL, 0);
    if (rc == NU_OK && r->device_list->n_devices != 1)
        rc = NU_ERR_NOT_FOUND;
    if (rc == NU_OK)
        rc = cf_write_cert_pem(path, r->device_list->devices[0]->certificate_der.data,
                               r->device_list->devices[0]->certificate_der.len);
    nu_envelope_free(r);
    return rc;
}

/* After device.revoke (UID3): a CRL signed by the Device CA in the HSM, in
 * DIR/pki/device-crl.pem and retained on nusec/v1/crl/device, that openssl
 * verifies and that revokes exactly that device. */
static void test_device_crl(void)
{
    char revoked[CF_PATH_MAX + 32], good[CF_PATH_MAX + 32], der_path[CF_PATH_MAX + 32];
    snprintf(revoked, sizeof(revoked), "%s/revoked.pem", F.tmp);
    snprintf(good, sizeof(good), "%s/good.pem", F.tmp);
    snprintf(der_path, sizeof(der_path), "%s/crl.der", F.tmp);
    CU_ASSERT_EQUAL_FATAL(device_cert_pem(UID3, sizeof(UID3), revoked), NU_OK);
    CU_ASSERT_EQUAL_FATAL(device_cert_pem(UID1, sizeof(UID1), good), NU_OK);
    CU_ASSERT_EQUAL(
        nu_test_sh("openssl crl -in %s/pki/device-crl.pem -CAfile %s/pki/device-chain.pem "
                   "-noout 2>&1 | grep -q 'verify OK'",
                   F.dir, F.dir),
        0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl verify -crl_check -CRLfile %s/pki/device-crl.pem -CAfile "
                               "%s/pki/device-chain.pem %s 2>&1 | grep -q 'certificate revoked'",
                               F.dir, F.dir, revoked),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl verify -crl_check -CRLfile %s/pki/device-crl.pem -CAfile "
                               "%s/pki/device-chain.pem %s >/dev/null 2>&1",
                               F.dir, F.dir, good),
                    0);
    /* "key compromise" names a CRLReason: the entry carries it. */
    CU_ASSERT_EQUAL(nu_test_sh("openssl crl -in %s/pki/device-crl.pem -noout -text | "
                               "grep -q 'Key Compromise'",
                               F.dir),
                    0);
    /* The same CRL, retained for programmers and OEM tools on the bus. */
    Nusec__V1__Envelope *env = NULL;
    CU_ASSERT_EQUAL_FATAL(read_retained("oem", "nusec/v1/crl/device", &env), NU_OK);
    CU_ASSERT_EQUAL_FATAL(env->body_case, NUSEC__V1__ENVELOPE__BODY_DEVICE_CRL);
    CU_ASSERT(env->device_crl->this_update_ms > 0);
    CU_ASSERT_EQUAL(nu_file_write_atomic(der_path, env->device_crl->crl_der.data,
                                         env->device_crl->crl_der.len, 0644),
                    NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("openssl crl -inform DER -in %s -CAfile %s/pki/device-chain.pem "
                               "-noout 2>&1 | grep -q 'verify OK' && "
                               "test \"$(openssl crl -inform DER -in %s -noout -text | "
                               "grep -c 'Serial Number')\" = 1",
                               der_path, F.dir, der_path),
                    0);
    nu_envelope_free(env);
}

/* ------------------------------------------------------------ concurrency */

#define CONC_PROGS 8
#define CONC_LIMIT 3
#define CONC_TRIES 5

struct conc {
    struct cf_client c;
    char id[16];
    int ok, exhausted, other;
};

static void *conc_run(void *arg)
{
    struct conc *w = arg;
    for (int i = 0; i < CONC_TRIES; i++) {
        struct nu_p256_key *k = NULL;
        uint8_t *csr = NULL, uid[8] = {0xc0, (uint8_t)w->id[2], (uint8_t)i};
        size_t len = 0;
        Nusec__V1__Envelope *r = NULL;
        int rc = cf_device_csr(&k, &csr, &len);
        if (!rc)
            rc = cf_cert_request(&w->c, "job-c", uid, sizeof(uid), csr, len, NULL, 0, &r);
        if (rc == NU_OK)
            w->ok++;
        else if (rc == NU_ERR_QUOTA_EXHAUSTED)
            w->exhausted++;
        else
            w->other++;
        nu_envelope_free(r);
        free(csr);
        nu_p256_key_destroy(k);
    }
    return NULL;
}

static void test_concurrent_programmers_never_overshoot(void)
{
    static struct conc w[CONC_PROGS];
    struct cf_programmer p[CONC_PROGS];
    const char *ids[CONC_PROGS];
    uint32_t limits[CONC_PROGS];
    pthread_t t[CONC_PROGS];
    for (int i = 0; i < CONC_PROGS; i++) {
        snprintf(w[i].id, sizeof(w[i].id), "c-%c", 'a' + i);
        ids[i] = w[i].id;
        limits[i] = CONC_LIMIT;
        CU_ASSERT_EQUAL_FATAL(cf_programmer_make(&F, &oem, &station, w[i].id, &p[i]), NU_OK);
        CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, w[i].id, p[i].cert, p[i].key, &w[i].c), NU_OK);
    }
    CU_ASSERT_EQUAL_FATAL(
        cf_job_create(&F, "job-c", CONC_PROGS * CONC_LIMIT, ids, limits, CONC_PROGS), NU_OK);
    for (int i = 0; i < CONC_PROGS; i++)
        pthread_create(&t[i], NULL, conc_run, &w[i]);
    int ok = 0;
    for (int i = 0; i < CONC_PROGS; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(w[i].ok, CONC_LIMIT);
        CU_ASSERT_EQUAL(w[i].exhausted, CONC_TRIES - CONC_LIMIT);
        CU_ASSERT_EQUAL(w[i].other, 0);
        ok += w[i].ok;
        cf_client_close(&w[i].c);
        cf_programmer_free(&p[i]);
    }
    uint32_t issued = 0, quota = 0;
    CU_ASSERT_EQUAL(job_counts("job-c", &issued, &quota), NU_OK);
    CU_ASSERT_EQUAL(issued, (uint32_t)ok);
    CU_ASSERT_EQUAL(issued, quota);
}

/* ------------------------------------------------------------ crash */

#define KILL_ROUNDS 3
#define KILL_DEVS 10

struct killer {
    struct cf_client *c;
    const char *job;
    uint8_t uid[KILL_DEVS][6];
    uint8_t *csr[KILL_DEVS];
    size_t len[KILL_DEVS];
    char serial[KILL_DEVS][80]; /* answered before the crash, "" if not */
};

static void *kill_run(void *arg)
{
    struct killer *k = arg;
    for (int i = 0; i < KILL_DEVS; i++) {
        Nusec__V1__Envelope *r = NULL;
        int rc = cf_cert_request(k->c, k->job, k->uid[i], sizeof(k->uid[i]), k->csr[i], k->len[i],
                                 NULL, 0, &r);
        if (!rc)
            snprintf(k->serial[i], sizeof(k->serial[i]), "%s", r->certificate_issued->serial);
        nu_envelope_free(r);
        if (rc)
            break; /* the cloud is gone; retried after the restart */
    }
    return NULL;
}

/* kill -9 while two programmers are being served, restart, retry everything:
 * every device gets one certificate (the one it may already have seen), the
 * counts match, the chain verifies. */
static void test_kill9_leaves_a_consistent_ledger(void)
{
    static struct killer k[2];
    struct cf_client *clients[2] = {&c1, &c2};
    const char *progs[] = {"prog-1", "prog-2"};
    const uint32_t limits[] = {KILL_ROUNDS * KILL_DEVS, KILL_ROUNDS * KILL_DEVS};
    CU_ASSERT_EQUAL_FATAL(cf_job_create(&F, "job-k", 2 * KILL_ROUNDS * KILL_DEVS, progs, limits, 2),
                          NU_OK);
    for (int round = 0; round < KILL_ROUNDS; round++) {
        pthread_t t[2];
        for (int w = 0; w < 2; w++) {
            memset(k[w].serial, 0, sizeof(k[w].serial));
            k[w].c = clients[w];
            k[w].job = "job-k";
            clients[w]->timeout_ms = 700;
            for (int i = 0; i < KILL_DEVS; i++) {
                struct nu_p256_key *key = NULL;
                uint8_t uid[6] = {0x4b, (uint8_t)round, (uint8_t)w, (uint8_t)i};
                memcpy(k[w].uid[i], uid, sizeof(uid));
                CU_ASSERT_EQUAL_FATAL(cf_device_csr(&key, &k[w].csr[i], &k[w].len[i]), NU_OK);
                nu_p256_key_destroy(key);
            }
            pthread_create(&t[w], NULL, kill_run, &k[w]);
        }
        usleep((useconds_t)(40000 + 60000 * round));
        cf_cloud_kill(&F);
        for (int w = 0; w < 2; w++)
            pthread_join(t[w], NULL);
        CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
        for (int w = 0; w < 2; w++) {
            clients[w]->timeout_ms = 0;
            for (int i = 0; i < KILL_DEVS; i++) {
                Nusec__V1__Envelope *r = NULL;
                CU_ASSERT_EQUAL(cf_cert_request(clients[w], "job-k", k[w].uid[i],
                                                sizeof(k[w].uid[i]), k[w].csr[i], k[w].len[i], NULL,
                                                0, &r),
                                NU_OK);
                if (r && k[w].serial[i][0])
                    CU_ASSERT_STRING_EQUAL(r->certificate_issued->serial, k[w].serial[i]);
                nu_envelope_free(r);
                free(k[w].csr[i]);
            }
        }
        uint32_t issued = 0, quota = 0;
        CU_ASSERT_EQUAL(job_counts("job-k", &issued, &quota), NU_OK);
        CU_ASSERT_EQUAL(issued, (uint32_t)((round + 1) * 2 * KILL_DEVS));
        struct cloud_ledger_verify_report rep;
        CU_ASSERT_EQUAL(cloud_ledger_verify_target(F.ledger, NULL, NULL, &rep), NU_OK);
    }
}

/* ------------------------------------------------------------ restart, revoke */

/* The last audit event is a checkpoint after seq `after` (within ~5 s). */
static int checkpoint_after(long long after)
{
    return nu_test_sh("for i in $(seq 50); do "
                      "last=$(sqlite3 %s 'select seq || \" \" || kind from audit_events "
                      "order by seq desc limit 1'); "
                      "[ \"${last#* }\" = audit.checkpoint ] && [ \"${last%% *}\" -gt %lld ] "
                      "&& exit 0; sleep 0.1; done; exit 1",
                      F.ledger, after);
}

static long long last_seq(void)
{
    char out[CF_PATH_MAX + 32];
    long long seq = -1;
    snprintf(out, sizeof(out), "%s/seq.out", F.tmp);
    if (nu_test_sh("sqlite3 %s 'select max(seq) from audit_events' > %s", F.ledger, out) == 0) {
        FILE *f = fopen(out, "r");
        if (f && fscanf(f, "%lld", &seq) != 1)
            seq = -1;
        if (f)
            fclose(f);
    }
    return seq;
}

static void test_restart_answers_the_same(void)
{
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL(cf_cloud_stop(&F), 0); /* SIGTERM: clean exit (and no leak under ASan) */
    /* A clean stop signs what it leaves. */
    CU_ASSERT_EQUAL(checkpoint_after(0), 0);
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("echo 'checkpoint_interval_s = 1' > %s/cloud/cloud.conf", F.dir), 0);
    CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
    nu_test_sh("rm -f %s/cloud/cloud.conf", F.dir); /* read at start: later restarts default */
    /* Anything new (here an audited refusal) is signed within the interval. */
    long long before = last_seq();
    CU_ASSERT(before > 0);
    CU_ASSERT_EQUAL(
        cf_cert_request(&c1, "job-nosuch", UID1, sizeof(UID1), csr1, csr1_len, NULL, 0, &r),
        NU_ERR_NOT_FOUND);
    nu_envelope_free(r);
    r = NULL;
    CU_ASSERT_EQUAL(checkpoint_after(before + 1), 0);
    /* start-up repaired the broker's list from the ledger (prog-3) */
    CU_ASSERT_EQUAL(nu_test_sh("grep -qx prog-3 %s/broker/revoked", F.dir), 0);
    CU_ASSERT_EQUAL_FATAL(
        cf_cert_request(&c1, "job-a", UID1, sizeof(UID1), csr1, csr1_len, NULL, 0, &r), NU_OK);
    CU_ASSERT_STRING_EQUAL(r->certificate_issued->serial, serial1);
    CU_ASSERT_EQUAL(memcmp(r->certificate_issued->certificate_der.data, der1, der1_len), 0);
    nu_envelope_free(r);
}

static void test_revoked_programmer_is_refused(void)
{
    Nusec__V1__ProgrammerRevokeRequest rv = NUSEC__V1__PROGRAMMER_REVOKE_REQUEST__INIT;
    Nusec__V1__Envelope *r = NULL;
    rv.programmer_id = "prog-1";
    rv.reason = "stolen";
    CU_ASSERT_EQUAL(cf_call(&oem, "programmer.revoke", &rv.base, NULL, 0, &r, NULL, 0), NU_OK);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(nu_test_sh("grep -qx prog-1 %s/broker/revoked", F.dir), 0);
    /* the next request fails: kicked by the broker, or refused by the cloud */
    int rc = cf_cert_request(&c1, "job-a", UID1, sizeof(UID1), csr1, csr1_len, NULL, 0, &r);
    CU_ASSERT(rc == NU_ERR_REVOKED || rc == NU_ERR_NOT_AUTHORIZED || rc == NU_ERR_CONNECTION ||
              rc == NU_ERR_STATE || rc == NU_ERR_TIMEOUT);
    nu_envelope_free(r);
    for (int i = 0; i < 100 && nu_mqtt_is_connected(c1.m); i++)
        usleep(20000);
    CU_ASSERT_FALSE(nu_mqtt_is_connected(c1.m));
    /* and it cannot come back: no reconnect, no new token, no second revoke */
    struct cf_client again;
    CU_ASSERT_EQUAL(cf_client_open(&F, "prog-1", p1.cert, p1.key, &again), NU_ERR_NOT_AUTHORIZED);
    char token[160];
    CU_ASSERT_EQUAL(cf_token(&oem, "prog-1", 0, token, sizeof(token)), NU_ERR_REVOKED);
    CU_ASSERT_EQUAL(cf_call(&oem, "programmer.revoke", &rv.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_STATE);
    /* the others are unaffected */
    CU_ASSERT_EQUAL(nu_test_sh("grep -qx prog-2 %s/broker/revoked", F.dir) == 0, 0);
    CU_ASSERT(nu_mqtt_is_connected(c2.m));
}

/* ------------------------------------------------------------ CLI, audit */

static void test_cli(void)
{
    const char *nusec = NUSEC_BINARY_DIR "/bin/nusec";
    char out[CF_PATH_MAX + 32];
    snprintf(out, sizeof(out), "%s/cli.out", F.tmp);
    /* The CLI connects with client id "oem": our own oem session would be
     * taken over (and take it back) at every command. */
    cf_client_close(&oem);
    CU_ASSERT_EQUAL(
        nu_test_sh("%s programmer token --dir %s --name prog-9 --ttl 2h > %s", nusec, F.dir, out),
        0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -Eqx '[0-9a-f]{64}' %s", out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s programmer list --dir %s --json > %s", nusec, F.dir, out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q '\"id\":\"prog-1\",\"state\":\"revoked\"' %s", out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s device list --dir %s --job job-a > %s", nusec, F.dir, out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q '^1020304050607080 .*provisioned' %s", out), 0);
    /* Paged (one device per answer here): the same list, in the same order. */
    CU_ASSERT_EQUAL(nu_test_sh("%s device list --dir %s --job job-a --page-size 1 > %s.paged && "
                               "cmp -s %s %s.paged && test $(wc -l < %s) -ge 4",
                               nusec, F.dir, out, out, out, out),
                    0);
    CU_ASSERT_EQUAL(
        nu_test_sh("%s device list --dir %s --job job-a --page-size 0 2>/dev/null", nusec, F.dir),
        2);
    /* export: the PEM files verify against the device chain */
    CU_ASSERT_EQUAL(nu_test_sh("%s device list --dir %s --job job-a --certs %s/export >/dev/null",
                               nusec, F.dir, F.tmp),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl verify -CAfile %s/pki/device-chain.pem "
                               "%s/export/job-a-1020304050607080.pem >/dev/null",
                               F.dir, F.tmp),
                    0);
    CU_ASSERT_EQUAL(
        nu_test_sh("%s device list --dir %s --uid aabbcc01 --json > %s", nusec, F.dir, out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q '\"uid\":\"aabbcc01\"' %s", out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s device revoke aabbcc01 --dir %s --job job-a --reason rma "
                               ">/dev/null",
                               nusec, F.dir),
                    0);
    /* refusals: exit 1 and the error name on stderr */
    CU_ASSERT_EQUAL(
        nu_test_sh("%s device revoke aabbcc01 --dir %s --job job-a 2> %s", nusec, F.dir, out), 1);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q STATE %s", out), 0);
    CU_ASSERT_EQUAL(
        nu_test_sh("%s programmer revoke prog-2 --dir %s --reason test >/dev/null", nusec, F.dir),
        0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -qx prog-2 %s/broker/revoked", F.dir), 0);
    /* without --job: the UID's only certificate */
    CU_ASSERT_EQUAL(nu_test_sh("%s device revoke aabbcc06 --dir %s > %s", nusec, F.dir, out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'of job job-b revoked' %s", out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s device revoke 00ff00ff --dir %s 2>/dev/null", nusec, F.dir), 1);
    /* usage errors: 2 */
    CU_ASSERT_EQUAL(nu_test_sh("%s device revoke --dir %s 2>/dev/null", nusec, F.dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s programmer token --dir %s 2>/dev/null", nusec, F.dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s device list --dir %s --uid xyz 2>/dev/null", nusec, F.dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s programmer list --help >/dev/null", nusec), 0);
}

static void test_audit_verify_detects_edits(void)
{
    const char *nusec = NUSEC_BINARY_DIR "/bin/nusec";
    char out[CF_PATH_MAX + 32];
    snprintf(out, sizeof(out), "%s/audit.out", F.tmp);
    CU_ASSERT_EQUAL(cf_cloud_stop(&F), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s audit verify --dir %s > %s", nusec, F.dir, out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'chain *ok' %s", out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s audit verify --dir %s --json > %s", nusec, F.dir, out), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q '\"ok\":true' %s", out), 0);
    /* an edit made with the sqlite3 shell, protective triggers dropped first */
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("sqlite3 %s \"SELECT 'DROP TRIGGER ' || name || ';' FROM sqlite_master "
                   "WHERE type='trigger'\" | sqlite3 %s && sqlite3 %s \"UPDATE audit_events SET "
                   "actor='mallory' WHERE kind='cert.issued' AND seq=(SELECT MIN(seq) FROM "
                   "audit_events WHERE kind='cert.issued')\"",
                   F.ledger, F.ledger, F.ledger),
        0);
    CU_ASSERT_EQUAL(nu_test_sh("%s audit verify --dir %s > %s 2>&1", nusec, F.dir, out), 1);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'first bad seq' %s", out), 0);
    /* a missing ledger is a failure too, not a pass */
    CU_ASSERT_EQUAL(nu_test_sh("%s audit verify --dir %s/nothing 2>/dev/null", nusec, F.tmp), 1);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"token + enroll through the station", test_enroll_through_station},
        {"an enrollment token is one-time", test_token_is_one_time},
        {"a token enrolls only its programmer, with a right CSR",
         test_token_bound_to_its_programmer},
        {"tokens: role names, ttl, oem only", test_token_refuses_role_names_and_others},
        {"programmer.list", test_programmer_list},
        {"issue a device certificate", test_issue_device_certificate},
        {"same idempotency key, same certificate", test_same_key_same_certificate},
        {"cert.request needs an idempotency key", test_idempotency_key_required},
        {"bad CSRs are typed errors", test_bad_csrs_are_typed_errors},
        {"quota exhausted", test_quota_exhausted},
        {"unassigned programmer, unknown job", test_unassigned_programmer_and_unknown_job},
        {"a programmer renews only itself", test_programmer_renews_only_itself},
        {"malformed enrollments are typed errors", test_malformed_enrollments},
        {"attested enrollment: every forgery refused, audited, not recorded",
         test_attested_enrollment_refusals},
        {"challenges: expiry, restart; the serial allow-list",
         test_challenge_expiry_restart_and_serial_allow_list},
        {"the cloud refuses a revoked programmer itself",
         test_cloud_refuses_revoked_before_the_broker},
        {"paused and expired jobs, subject templates", test_paused_expired_and_templates},
        {"device reports", test_device_reports},
        {"device.list and device.revoke", test_device_list_and_revoke},
        {"retained job state", test_retained_job_state},
        {"device CRL: signed, retained, revokes the device", test_device_crl},
        {"8 concurrent programmers never overshoot", test_concurrent_programmers_never_overshoot},
        {"kill -9 while issuing leaves a consistent ledger", test_kill9_leaves_a_consistent_ledger},
        {"a restart answers the same certificate", test_restart_answers_the_same},
        {"a revoked programmer is refused", test_revoked_programmer_is_refused},
        {"CLI: programmer, device", test_cli},
        {"audit verify detects an edit", test_audit_verify_detects_edits},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"cloud stack", setup, teardown, cases}, {NULL}};
    return nu_test_run("test_cloud", suites);
}
