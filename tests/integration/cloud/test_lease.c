/*
 * test_lease — issue 15 part 2, the cloud's side of the offline lease, on
 * the real stack (cloud_fixture: pki init, Mosquitto + nusec_auth,
 * nusec-cloud with SoftHSM2, SQLite).
 *
 * The test plays the programmer: its line-CA key is a software key here
 * (on a programmer it is the KeyStore's), it issues device certificates
 * with nu_x509 as the programmer's port does, and uploads them. Asserts
 * what a user or attacker sees: the line-CA certificate (Device CA issued,
 * pathLen 0, programmer and job in its subject, validity = the lease), the
 * quota reservation (online issuance and a second lease cannot over-commit),
 * device certificates that `openssl verify` against Root -> Device CA ->
 * line CA, the upload recorded once (replay), and refusals with their typed
 * error and audit event: a certificate beyond the lease, one signed by
 * another key, one issued outside the lease, a forged upload (another
 * programmer), an unknown lease; the OEM's write-off of an ended lease
 * (`nusec job write-off`); return gives unused units back; audit verify
 * passes at the end.
 */
#include "cloud_fixture.h"

#include "ledger.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_pki.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define JOB "job-lease"
#define UNITS 3

static struct cf F;
static struct cf_client oem, station, c1, c2;
static struct cf_programmer p1, p2;
static struct nu_p256_key *line_key, *line_key2;
static char lease_id[64], lease_id2[64];
static uint8_t line_der2[4096];
static size_t line_len2;
static uint8_t line_der[4096];
static size_t line_len;
static uint8_t *offline_der[UNITS + 1];
static size_t offline_len[UNITS + 1];
static uint8_t offline_uid[UNITS + 1][8];

static int setup(void)
{
    if (cf_setup(&F, "lease") || cf_client_open(&F, "oem", NULL, NULL, &oem) ||
        cf_client_open(&F, "station", NULL, NULL, &station))
        return -1;
    if (cf_programmer_make(&F, &oem, &station, "prog-1", &p1) ||
        cf_programmer_make(&F, &oem, &station, "prog-2", &p2))
        return -1;
    if (cf_client_open(&F, "prog-1", p1.cert, p1.key, &c1) ||
        cf_client_open(&F, "prog-2", p2.cert, p2.key, &c2))
        return -1;
    return nu_p256_key_generate(&line_key) ? -1 : 0;
}

static int teardown(void)
{
    for (size_t i = 0; i <= UNITS; i++)
        free(offline_der[i]);
    cf_client_close(&c1);
    cf_client_close(&c2);
    cf_client_close(&oem);
    cf_client_close(&station);
    cf_programmer_free(&p1);
    cf_programmer_free(&p2);
    nu_p256_key_destroy(line_key);
    nu_p256_key_destroy(line_key2);
    cf_teardown(&F);
    return 0;
}

static struct cloud_ledger *ledger_open(void)
{
    struct cloud_ledger *l = NULL;
    CU_ASSERT_EQUAL(cloud_ledger_open(F.ledger, &l), NU_OK);
    return l;
}

static int sql_count(const char *where)
{
    char cmd[CF_PATH_MAX + 256], out[64] = "";
    snprintf(cmd, sizeof(cmd), "sqlite3 -cmd '.timeout 5000' %s \"SELECT COUNT(*) FROM %s\"",
             F.ledger, where);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    if (!fgets(out, sizeof(out), p))
        out[0] = 0;
    pclose(p);
    return out[0] ? atoi(out) : -1;
}

/* lease.grant as `c` with a CSR of `key` named cn. Returns the code. */
static int grant(struct cf_client *c, struct nu_p256_key *key, const char *cn,
                 Nusec__V1__Envelope **out)
{
    struct nu_signer s;
    uint8_t *csr = NULL;
    size_t csr_len = 0;
    int rc = nu_p256_key_signer(key, &s);
    if (!rc)
        rc = nu_x509_csr_make(&s, cn, NULL, NU_PKI_ORGANIZATION, &csr, &csr_len);
    if (rc)
        return rc;
    Nusec__V1__LeaseGrantRequest r = NUSEC__V1__LEASE_GRANT_REQUEST__INIT;
    r.job_id = JOB;
    r.line_ca_csr_der.data = csr;
    r.line_ca_csr_der.len = csr_len;
    rc = cf_call(c, "lease.grant", &r.base, NULL, 0, out, NULL, 0);
    free(csr);
    return rc;
}

/* A device certificate the way the programmer issues one offline. */
static int offline_issue(struct nu_p256_key *issuer, const uint8_t *issuer_der, size_t issuer_len,
                         const uint8_t uid[8], int64_t at, uint8_t **der, size_t *len)
{
    struct nu_p256_key *dev = NULL;
    struct nu_signer s;
    char cn[17];
    nu_hex_encode(uid, 8, cn, sizeof(cn));
    int rc = nu_p256_key_generate(&dev);
    struct nu_x509_issue_req ir = {
        .cn = cn,
        .ou = "device",
        .o = NU_PKI_ORGANIZATION,
        .not_before = at - 3600,
        .not_after = at + 20LL * 365 * 24 * 3600,
        .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        .ext_key_usage = NU_X509_EKU_CLIENT_AUTH,
    };
    if (!rc) {
        nu_p256_key_pub(dev, ir.pub);
        rc = nu_p256_key_signer(issuer, &s);
    }
    if (!rc)
        rc = nu_x509_issue(&ir, &s, issuer_der, issuer_len, der, len);
    nu_p256_key_destroy(dev);
    return rc;
}

static int upload(struct cf_client *c, const char *lease, const size_t *which, size_t n,
                  const uint32_t *counters, int final, Nusec__V1__Envelope **out)
{
    Nusec__V1__LeaseIssued items[8], *ptrs[8];
    Nusec__V1__LeaseUploadRequest r = NUSEC__V1__LEASE_UPLOAD_REQUEST__INIT;
    for (size_t i = 0; i < n; i++) {
        nusec__v1__lease_issued__init(&items[i]);
        items[i].device_uid.data = offline_uid[which[i]];
        items[i].device_uid.len = 8;
        items[i].certificate_der.data = offline_der[which[i]];
        items[i].certificate_der.len = offline_len[which[i]];
        items[i].counter = counters[i];
        ptrs[i] = &items[i];
    }
    r.lease_id = (char *)lease;
    r.n_issued = n;
    r.issued = ptrs;
    r.final = final;
    return cf_call(c, "lease.upload", &r.base, NULL, 0, out, NULL, 0);
}

/* ---------------------------------------------------------------- cases */

static void test_job_without_lease_refuses(void)
{
    const char *progs[] = {"prog-1", "prog-2"};
    const uint32_t limits[] = {6, 4};
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(cf_job_create(&F, JOB, 10, progs, limits, 2), NU_OK);
    CU_ASSERT_EQUAL(grant(&c1, line_key, "prog-1", &r), NU_ERR_NOT_AUTHORIZED);
    nu_envelope_free(r);
    struct cloud_ledger *l = ledger_open();
    CU_ASSERT_EQUAL(cloud_ledger_lease_policy_set(l, JOB, UNITS, 2, "oem", nu_time_ms()), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_lease_policy_set(l, JOB, UNITS, 2, "oem", nu_time_ms()),
                    NU_ERR_EXISTS);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.policy'"), 1);
}

static void test_grant_line_ca_certificate(void)
{
    Nusec__V1__Envelope *r = NULL;
    struct nu_p256_key *other = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&other), NU_OK);
    /* The CSR must name the requester. */
    CU_ASSERT_EQUAL(grant(&c1, other, "prog-2", &r), NU_ERR_BAD_CSR);
    nu_envelope_free(r);
    r = NULL;
    CU_ASSERT_EQUAL_FATAL(grant(&c1, line_key, "prog-1", &r), NU_OK);
    const Nusec__V1__LeaseGrant *g = r->lease_grant;
    CU_ASSERT_EQUAL(g->units, UNITS);
    CU_ASSERT_STRING_EQUAL(g->job_id, JOB);
    CU_ASSERT(g->not_after_ms - g->not_before_ms == 2u * 3600u * 1000u);
    snprintf(lease_id, sizeof(lease_id), "%s", g->lease_id);
    memcpy(line_der, g->line_ca_cert_der.data, g->line_ca_cert_der.len);
    line_len = g->line_ca_cert_der.len;
    nu_envelope_free(r);
    r = NULL;

    struct nu_x509_cert_info info;
    uint8_t pub[NU_P256_PUB_LEN];
    CU_ASSERT_EQUAL_FATAL(nu_x509_cert_info(line_der, line_len, &info), NU_OK);
    nu_p256_key_pub(line_key, pub);
    CU_ASSERT(info.is_ca);
    CU_ASSERT_STRING_EQUAL(info.cn, "prog-1");
    CU_ASSERT_STRING_EQUAL(info.ou, JOB);
    CU_ASSERT_EQUAL(memcmp(info.pub, pub, sizeof(pub)), 0);
    CU_ASSERT(info.not_after - info.not_before <= 2 * 3600);
    char path[CF_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/line-ca.pem", F.tmp);
    CU_ASSERT_EQUAL_FATAL(cf_write_cert_pem(path, line_der, line_len), NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("openssl verify -CAfile %s/pki/root-ca.pem -untrusted "
                               "%s/pki/device-ca.pem %s >/dev/null",
                               F.dir, F.dir, path),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl x509 -in %s -noout -text | grep -q 'CA:TRUE, pathlen:0'",
                               path),
                    0);

    /* Asked again with the same key (its answer lost): the same lease. */
    CU_ASSERT_EQUAL_FATAL(grant(&c1, line_key, "prog-1", &r), NU_OK);
    CU_ASSERT_STRING_EQUAL(r->lease_grant->lease_id, lease_id);
    nu_envelope_free(r);
    r = NULL;
    /* A second lease while one is out: refused, audited. */
    CU_ASSERT_EQUAL(grant(&c1, other, "prog-1", &r), NU_ERR_STATE);
    nu_envelope_free(r);
    nu_p256_key_destroy(other);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.granted'"), 1);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.refused'"), 1);
}

static void test_reservation_bounds_online_and_other_leases(void)
{
    /* quota 10: prog-1 holds 3 of its 6. prog-2 (limit 4) asks for 3 of the
     * 7 left: fine. Online, prog-1 can then get 3 more certificates, not 4. */
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&line_key2), NU_OK);
    CU_ASSERT_EQUAL_FATAL(grant(&c2, line_key2, "prog-2", &r), NU_OK);
    snprintf(lease_id2, sizeof(lease_id2), "%s", r->lease_grant->lease_id);
    memcpy(line_der2, r->lease_grant->line_ca_cert_der.data, r->lease_grant->line_ca_cert_der.len);
    line_len2 = r->lease_grant->line_ca_cert_der.len;
    nu_envelope_free(r);
    r = NULL;
    uint32_t reserved = 0;
    struct cloud_ledger *l = ledger_open();
    CU_ASSERT_EQUAL(cloud_ledger_lease_reserved(l, JOB, &reserved), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(reserved, 2 * UNITS);
    for (int i = 0; i < 4; i++) {
        struct nu_p256_key *dev = NULL;
        uint8_t *csr = NULL, uid[4] = {0x77, 0, 0, (uint8_t)i};
        size_t csr_len = 0;
        CU_ASSERT_EQUAL_FATAL(cf_device_csr(&dev, &csr, &csr_len), NU_OK);
        int rc = cf_cert_request(&c1, JOB, uid, sizeof(uid), csr, csr_len, NULL, 0, &r);
        CU_ASSERT_EQUAL(rc, i < 3 ? NU_OK : NU_ERR_QUOTA_EXHAUSTED);
        nu_envelope_free(r);
        r = NULL;
        free(csr);
        nu_p256_key_destroy(dev);
    }
    CU_ASSERT_EQUAL(sql_count("certificates WHERE job_id = '" JOB "'"), 3);
}

/* One offline certificate of prog-2's lease for `uid`, uploaded; *out the answer. */
static int upload2(const uint8_t uid[8], const uint8_t *supersedes, uint32_t counter,
                   Nusec__V1__Envelope **out)
{
    uint8_t *der = NULL;
    size_t len = 0;
    int rc = offline_issue(line_key2, line_der2, line_len2, uid, time(NULL), &der, &len);
    Nusec__V1__LeaseIssued it = NUSEC__V1__LEASE_ISSUED__INIT, *p = &it;
    Nusec__V1__LeaseUploadRequest r = NUSEC__V1__LEASE_UPLOAD_REQUEST__INIT;
    it.device_uid.data = (uint8_t *)uid;
    it.device_uid.len = 8;
    it.certificate_der.data = der;
    it.certificate_der.len = len;
    it.counter = counter;
    it.supersedes_idempotency_key.data = (uint8_t *)supersedes;
    it.supersedes_idempotency_key.len = supersedes ? 16 : 0;
    r.lease_id = lease_id2;
    r.n_issued = 1;
    r.issued = &p;
    if (!rc)
        rc = cf_call(&c2, "lease.upload", &r.base, NULL, 0, out, NULL, 0);
    free(der);
    return rc;
}

/*
 * A fast line at a WAN cut: prog-2's cert.request for a chip was issued
 * online but its answer never crossed; prog-2 abandoned it and certified
 * the chip offline. Its upload names the request's idempotency key: the
 * online certificate is revoked (device CRL, audited) and its unit refunded
 * (the offline one takes it), then the offline one is recorded. Named by
 * the wrong key, or for another programmer's chip, or without the key: an
 * incident, nothing changes.
 */
static void test_upload_supersedes_the_abandoned_request(void)
{
    Nusec__V1__Envelope *r = NULL;
    struct nu_p256_key *dev = NULL;
    uint8_t *csr = NULL, key[16], wrong[16];
    size_t csr_len = 0;
    const uint8_t uid[8] = {0x5e, 0xed, 0, 0, 0, 0, 0, 1};
    memset(key, 0xa5, sizeof(key));
    memset(wrong, 0x5a, sizeof(wrong));
    CU_ASSERT_EQUAL_FATAL(cf_device_csr(&dev, &csr, &csr_len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_cert_request(&c2, JOB, uid, sizeof(uid), csr, csr_len, key,
                                          sizeof(key), &r),
                          NU_OK);
    char online[CLOUD_LEDGER_SERIAL_MAX + 1];
    snprintf(online, sizeof(online), "%s", r->certificate_issued->serial);
    nu_envelope_free(r);
    r = NULL;
    free(csr);
    nu_p256_key_destroy(dev);
    int issued = sql_count("certificates WHERE job_id = '" JOB "' AND state <> 'revoked'");
    int incidents = sql_count("audit_events WHERE kind = 'lease.incident'");

    /* Without the key, or with another request's: the online one is live. */
    CU_ASSERT_EQUAL_FATAL(upload2(uid, NULL, 1, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    r = NULL;
    CU_ASSERT_EQUAL_FATAL(upload2(uid, wrong, 1, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    r = NULL;
    /* Another programmer's chip cannot be superseded (prog-1's, recorded above). */
    CU_ASSERT_EQUAL_FATAL(upload2(offline_uid[0], key, 1, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    r = NULL;
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.incident'"), incidents + 3);
    CU_ASSERT_EQUAL(sql_count("cert_superseded"), 0);

    /* The abandoned request's key: superseded, recorded. */
    CU_ASSERT_EQUAL_FATAL(upload2(uid, key, 1, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->recorded, 1);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 0);
    CU_ASSERT_EQUAL(r->lease_upload_response->used, 1);
    nu_envelope_free(r);
    r = NULL;
    char where[256];
    snprintf(where, sizeof(where),
             "certificates WHERE serial = '%s' AND state = 'revoked' AND revoke_reason = "
             "'superseded'", online);
    CU_ASSERT_EQUAL(sql_count(where), 1);
    CU_ASSERT_EQUAL(sql_count("cert_superseded"), 1);
    /* One live certificate for the chip, one unit for it: the online one's. */
    CU_ASSERT_EQUAL(sql_count("certificates WHERE job_id = '" JOB "' AND state <> 'revoked'"),
                    issued);
    CU_ASSERT_EQUAL(sql_count("certificates WHERE device_uid = x'5eed000000000001'"
                              " AND state <> 'revoked'"),
                    1);
    CU_ASSERT_EQUAL(sql_count("job_allocations WHERE programmer_id = 'prog-2' AND issued = 1"),
                    1);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.superseded'"), 1);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'cert.revoked' AND payload LIKE "
                              "'%superseded%'"),
                    1);
    /* The request's idempotency entry is forgotten: a late copy of it
     * cannot replay the revoked certificate. */
    CU_ASSERT_EQUAL(sql_count("requests WHERE requester = 'prog-2' AND idempotency_key = "
                              "x'a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5a5' AND code = 0"),
                    0);
    /* It is on the device CRL. */
    CU_ASSERT_EQUAL(nu_test_sh("openssl crl -in %s/pki/device-crl.pem -noout -text | "
                               "tr 'A-F' 'a-f' | tr -d ':' | grep -q %s",
                               F.dir, online),
                    0);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'cert.revoked'"), 1);

    /* A certificate reported delivered (provisioned) is never superseded,
     * even for the request it was issued for. */
    const uint8_t uid2[8] = {0x5e, 0xed, 0, 0, 0, 0, 0, 2};
    uint8_t key2[16];
    memset(key2, 0xb6, sizeof(key2));
    CU_ASSERT_EQUAL_FATAL(cf_device_csr(&dev, &csr, &csr_len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_cert_request(&c2, JOB, uid2, sizeof(uid2), csr, csr_len, key2,
                                          sizeof(key2), &r),
                          NU_OK);
    nu_envelope_free(r);
    r = NULL;
    free(csr);
    nu_p256_key_destroy(dev);
    struct cloud_ledger *l = ledger_open();
    struct cloud_ledger_cert_ref ref = {NULL, JOB, uid2, sizeof(uid2)};
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &ref, 1, "", "prog-2", nu_time_ms()), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL_FATAL(upload2(uid2, key2, 2, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(sql_count("certificates WHERE device_uid = x'5eed000000000002'"), 1);
    CU_ASSERT_EQUAL(sql_count("certificates WHERE device_uid = x'5eed000000000002'"
                              " AND state = 'provisioned'"),
                    1);
    CU_ASSERT_EQUAL(sql_count("cert_superseded"), 1);

    /* Only an online certificate is superseded: an offline one's idempotency
     * key is computable (SHA-256("nusec/v1 lease" 0 lease 0 counter)), and an
     * upload naming it recorded a supersession that never happened. */
    const uint8_t uid3[8] = {0x5e, 0xed, 0, 0, 0, 0, 0, 3};
    CU_ASSERT_EQUAL_FATAL(upload2(uid3, NULL, 3, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->recorded, 1);
    nu_envelope_free(r);
    r = NULL;
    uint8_t h[NU_SHA256_LEN], offline_key[16], be[4] = {0, 0, 0, 3};
    struct nu_sha256_ctx sc;
    CU_ASSERT_EQUAL_FATAL(nu_sha256_init(&sc), NU_OK);
    nu_sha256_update(&sc, "nusec/v1 lease", sizeof("nusec/v1 lease"));
    nu_sha256_update(&sc, lease_id2, strlen(lease_id2) + 1);
    nu_sha256_update(&sc, be, 4);
    nu_sha256_final(&sc, h);
    memcpy(offline_key, h, 16);
    incidents = sql_count("audit_events WHERE kind = 'lease.incident'");
    CU_ASSERT_EQUAL_FATAL(upload2(uid3, offline_key, 2, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.incident' AND payload LIKE "
                              "'%supersedes an offline certificate%'"),
                    1);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.incident'"), incidents + 1);
    CU_ASSERT_EQUAL(sql_count("certificates WHERE device_uid = x'5eed000000000003'"
                              " AND state <> 'revoked'"),
                    1);
    CU_ASSERT_EQUAL(sql_count("cert_superseded"), 1);
}

static void test_offline_certificates_verify(void)
{
    int64_t now = (int64_t)time(NULL);
    char path[CF_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/line-ca.pem", F.tmp);
    for (size_t i = 0; i <= UNITS; i++) {
        uint8_t uid[8] = {0x0f, 0xf1, 0x1e, 0, 0, 0, 0, (uint8_t)i};
        memcpy(offline_uid[i], uid, 8);
        CU_ASSERT_EQUAL_FATAL(offline_issue(line_key, line_der, line_len, uid, now,
                                            &offline_der[i], &offline_len[i]),
                              NU_OK);
    }
    char dev[CF_PATH_MAX + 32];
    snprintf(dev, sizeof(dev), "%s/offline-0.pem", F.tmp);
    CU_ASSERT_EQUAL_FATAL(cf_write_cert_pem(dev, offline_der[0], offline_len[0]), NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("cat %s/pki/device-ca.pem %s > %s/untrusted.pem && "
                               "openssl verify -CAfile %s/pki/root-ca.pem -untrusted "
                               "%s/untrusted.pem %s >/dev/null",
                               F.dir, path, F.tmp, F.dir, F.tmp, dev),
                    0);
    /* Without the line CA it does not verify: the chain is what vouches. */
    CU_ASSERT_NOT_EQUAL(nu_test_sh("openssl verify -CAfile %s/pki/root-ca.pem -untrusted "
                                   "%s/pki/device-ca.pem %s >/dev/null 2>&1",
                                   F.dir, F.dir, dev),
                        0);
}

static void test_upload_records_once(void)
{
    Nusec__V1__Envelope *r = NULL;
    const size_t which[] = {0, 1};
    const uint32_t counters[] = {1, 2};
    int before = sql_count("certificates WHERE job_id = '" JOB "'");
    CU_ASSERT_EQUAL_FATAL(upload(&c1, lease_id, which, 2, counters, 0, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->recorded, 2);
    CU_ASSERT_EQUAL(r->lease_upload_response->used, 2);
    nu_envelope_free(r);
    r = NULL;
    /* Replayed: known, nothing twice. */
    CU_ASSERT_EQUAL_FATAL(upload(&c1, lease_id, which, 2, counters, 0, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->recorded, 0);
    CU_ASSERT_EQUAL(r->lease_upload_response->known, 2);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(sql_count("certificates WHERE job_id = '" JOB "'"), before + 2);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.recorded'"), 2);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'cert.issued' AND job_id = '" JOB "'"),
                    before + 2);
}

static void test_uncovered_and_forged_uploads_refused(void)
{
    Nusec__V1__Envelope *r = NULL;
    int certs = sql_count("certificates");
    int incidents = sql_count("audit_events WHERE kind = 'lease.incident'");
    /* Counter reused (a second certificate for unit 2). */
    const size_t w2[] = {2};
    const uint32_t reused[] = {2}, beyond[] = {UNITS + 1};
    CU_ASSERT_EQUAL_FATAL(upload(&c1, lease_id, w2, 1, reused, 0, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    r = NULL;
    /* Beyond the lease's units. */
    CU_ASSERT_EQUAL_FATAL(upload(&c1, lease_id, w2, 1, beyond, 0, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    r = NULL;
    /* Signed by a key that is not the lease's line CA (self-made issuer). */
    struct nu_p256_key *rogue = NULL;
    uint8_t *fake = NULL;
    size_t fake_len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&rogue), NU_OK);
    struct nu_signer s;
    nu_p256_key_signer(rogue, &s);
    struct nu_x509_issue_req ca = {.cn = "prog-1", .ou = JOB, .o = NU_PKI_ORGANIZATION,
                                   .not_before = time(NULL) - 60, .not_after = time(NULL) + 3600,
                                   .is_ca = 1, .path_len = 0,
                                   .key_usage = NU_X509_KU_KEY_CERT_SIGN};
    nu_p256_key_pub(rogue, ca.pub);
    CU_ASSERT_EQUAL_FATAL(nu_x509_issue(&ca, &s, NULL, 0, &fake, &fake_len), NU_OK);
    free(offline_der[2]);
    offline_der[2] = NULL;
    CU_ASSERT_EQUAL_FATAL(offline_issue(rogue, fake, fake_len, offline_uid[2], time(NULL),
                                        &offline_der[2], &offline_len[2]),
                          NU_OK);
    const uint32_t three[] = {3};
    CU_ASSERT_EQUAL_FATAL(upload(&c1, lease_id, w2, 1, three, 0, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    r = NULL;
    free(fake);
    nu_p256_key_destroy(rogue);
    /* Issued by the line CA but dated outside the lease. */
    free(offline_der[3]);
    offline_der[3] = NULL;
    CU_ASSERT_EQUAL_FATAL(offline_issue(line_key, line_der, line_len, offline_uid[3],
                                        time(NULL) + 5 * 3600, &offline_der[3], &offline_len[3]),
                          NU_OK);
    const size_t w3[] = {3};
    CU_ASSERT_EQUAL_FATAL(upload(&c1, lease_id, w3, 1, three, 0, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    nu_envelope_free(r);
    r = NULL;
    /* Forged: prog-2 uploads under prog-1's lease; and an unknown lease. */
    const size_t w0[] = {0};
    const uint32_t one[] = {1};
    CU_ASSERT_EQUAL(upload(&c2, lease_id, w0, 1, one, 0, &r), NU_ERR_LEASE_UNKNOWN);
    nu_envelope_free(r);
    r = NULL;
    CU_ASSERT_EQUAL(upload(&c1, "lease-0000000000000000", w0, 1, one, 0, &r),
                    NU_ERR_LEASE_UNKNOWN);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(sql_count("certificates"), certs);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.incident'"), incidents + 6);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.incident' AND payload LIKE "
                              "'%LEASE_NOT_COVERED%'"),
                    incidents + 4);
}

/*
 * The OEM writes off prog-2's lease with `nusec job write-off`: refused while
 * the lease runs (nothing changes); once it has ended (an hour ago), its
 * unused units come back to the quota, audited as lease.written_off by the
 * oem, once however often asked, and a later upload of that lease is an
 * incident, nothing recorded.
 */
#define WRITE_OFF_SH                                                                               \
    "%s/bin/nusec job write-off " JOB " --programmer prog-2 --dir %s >%s/write-off.out 2>&1"

static void test_write_off_an_ended_lease(void)
{
    uint32_t before = 0, after = 0;
    struct cloud_ledger_lease lease;
    Nusec__V1__Envelope *r = NULL;
    struct cloud_ledger *l = ledger_open();
    CU_ASSERT_EQUAL(cloud_ledger_lease_reserved(l, JOB, &before), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_lease_get(l, lease_id2, "prog-2", &lease), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(nu_test_sh(WRITE_OFF_SH, NUSEC_BINARY_DIR, F.dir, F.tmp), 1);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'may still use it' %s/write-off.out", F.tmp), 0);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.written_off'"), 0);
    /* Its hours pass, and one more: the lease moved 2 h back, as time would move on. */
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh(
            "sqlite3 -cmd '.timeout 5000' %s \"UPDATE leases SET"
            " not_before_ms = not_before_ms - 7200000, not_after_ms = not_before_ms - 7199999"
            " WHERE lease_id = '%s'\"",
            F.ledger, lease_id2),
        0);
    CU_ASSERT_EQUAL(nu_test_sh(WRITE_OFF_SH, NUSEC_BINARY_DIR, F.dir, F.tmp), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'written off' %s/write-off.out", F.tmp), 0);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.written_off' AND actor = 'oem'"),
                    1);
    l = ledger_open();
    CU_ASSERT_EQUAL(cloud_ledger_lease_reserved(l, JOB, &after), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(before - after, lease.units - lease.used);
    /* Once: asked again (a retry), the same answer, nothing more released. */
    CU_ASSERT_EQUAL(nu_test_sh(WRITE_OFF_SH, NUSEC_BINARY_DIR, F.dir, F.tmp), 0);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.written_off'"), 1);
    l = ledger_open();
    CU_ASSERT_EQUAL(cloud_ledger_lease_reserved(l, JOB, &after), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(before - after, lease.units - lease.used);
    CU_ASSERT_EQUAL(nu_test_sh("%s/bin/nusec job write-off " JOB " --programmer prog-1 --dir %s"
                               " 2>&1 | grep -q 'can be written off in'",
                               NUSEC_BINARY_DIR, F.dir),
                    0); /* prog-1's lease still runs */
    int incidents = sql_count("audit_events WHERE kind = 'lease.incident'");
    const uint8_t uid[8] = {0x57, 0x0f, 0, 0, 0, 0, 0, 9};
    CU_ASSERT_EQUAL_FATAL(upload2(uid, NULL, lease.used + 1, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused, 1);
    CU_ASSERT_EQUAL(r->lease_upload_response->recorded, 0);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.incident'"), incidents + 1);
}

static void test_return_gives_units_back_and_audit_verifies(void)
{
    Nusec__V1__Envelope *r = NULL;
    uint32_t before = 0, after = 0;
    struct cloud_ledger *l = ledger_open();
    CU_ASSERT_EQUAL(cloud_ledger_lease_reserved(l, JOB, &before), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL_FATAL(upload(&c1, lease_id, NULL, 0, NULL, 1, &r), NU_OK);
    CU_ASSERT(r->lease_upload_response->returned);
    CU_ASSERT_EQUAL(r->lease_upload_response->used, 2);
    nu_envelope_free(r);
    l = ledger_open();
    CU_ASSERT_EQUAL(cloud_ledger_lease_reserved(l, JOB, &after), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(before - after, UNITS - 2); /* the unused unit came back */
    CU_ASSERT_EQUAL(sql_count("audit_events WHERE kind = 'lease.returned'"), 1);
    /* After return, the lease covers nothing more. */
    const size_t w0[] = {0};
    const uint32_t three[] = {3};
    r = NULL;
    CU_ASSERT_EQUAL_FATAL(upload(&c1, lease_id, w0, 1, three, 0, &r), NU_OK);
    CU_ASSERT_EQUAL(r->lease_upload_response->refused + r->lease_upload_response->known, 1);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(nu_test_sh("%s/bin/nusec audit verify --dir %s >%s/verify.out 2>&1",
                               NUSEC_BINARY_DIR, F.dir, F.tmp),
                    0);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"a job without a lease policy grants none", test_job_without_lease_refuses},
        {"grant: line-CA certificate, repeat, one lease at a time", test_grant_line_ca_certificate},
        {"the reservation bounds online issuance and other leases",
         test_reservation_bounds_online_and_other_leases},
        {"offline certificates verify Root -> Device CA -> line CA",
         test_offline_certificates_verify},
        {"upload records each once; a replay changes nothing", test_upload_records_once},
        {"an upload superseding an abandoned request revokes and refunds its certificate",
         test_upload_supersedes_the_abandoned_request},
        {"uncovered, foreign, out-of-time and forged uploads refused and audited",
         test_uncovered_and_forged_uploads_refused},
        {"an ended lease is written off once; a later upload of it is an incident",
         test_write_off_an_ended_lease},
        {"return gives unused units back; audit verify passes",
         test_return_gives_units_back_and_audit_verifies},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"offline lease", setup, teardown, cases},
                                                  {NULL}};
    return nu_test_run("test_lease", suites);
}
