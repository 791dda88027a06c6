/*
 * ledger devices: certificate report, list and revoke.
 */
#include "test_ledger_fix.h"

/* ---------------------------------------------------------------- devices */

struct certscan {
    unsigned n;
    char first[CLOUD_LEDGER_SERIAL_MAX + 1];
};

static int cert_visit(void *ctx, const struct cloud_ledger_cert *c)
{
    struct certscan *cs = ctx;
    if (cs->n++ == 0)
        snprintf(cs->first, sizeof(cs->first), "%s", c->serial);
    return 0;
}

static void test_cert_report_list_revoke(void)
{
    char path[512], upper[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t[3];
    struct cloud_ledger_issue_result res[3];
    struct cloud_ledger_cert c;
    struct cloud_ledger_cert_ref by_serial = {0}, by_uid = {0}, none = {0};
    struct certscan cs = {0};
    uint64_t seq;

    std_setup(l, 10, 10);
    CU_ASSERT_EQUAL(enroll(l, "prog-x"), NU_OK);
    for (unsigned i = 0; i < 3; i++) {
        mkreq(&t[i], "prog-1", "job-1", i, 1, T0 + i);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t[i].r, dummy_sign, &s, &res[i]), NU_OK);
    }
    /* Serials are accepted in either case. */
    for (size_t i = 0; i <= strlen(res[0].serial); i++)
        upper[i] = (char)(res[0].serial[i] >= 'a' ? res[0].serial[i] - 32 : res[0].serial[i]);
    by_serial.serial = upper;
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &by_serial, 1, "ok", "prog-1", T0 + 50), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &by_serial, &c), NU_OK);
    CU_ASSERT_EQUAL(c.state, CLOUD_LEDGER_CERT_PROVISIONED);
    CU_ASSERT_EQUAL(c.state_at_ms, T0 + 50);
    seq = head_seq(l);
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &by_serial, 1, "ok", "prog-1", T0 + 51), NU_OK);
    CU_ASSERT_EQUAL(head_seq(l), seq); /* redelivered report records nothing */
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &by_serial, 0, "late", "prog-1", T0 + 52),
                    NU_ERR_STATE);
    by_uid.job_id = "job-1";
    by_uid.device_uid = t[1].uid;
    by_uid.device_uid_len = sizeof(t[1].uid);
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &by_uid, 0, "boot failed", "prog-1", T0 + 60),
                    NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &by_uid, &c), NU_OK);
    CU_ASSERT_EQUAL(c.state, CLOUD_LEDGER_CERT_FAILED);
    CU_ASSERT_STRING_EQUAL(c.detail, "boot failed");
    CU_ASSERT_STRING_EQUAL(c.serial, res[1].serial);
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &by_uid, 1, "retry ok", "prog-1", T0 + 61), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &by_uid, 1, NULL, "prog-x", T0 + 62),
                    NU_ERR_NOT_AUTHORIZED); /* no allocation in this job */
    none.serial = "abcdef";
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &none, 1, NULL, "prog-1", T0), NU_ERR_NOT_FOUND);
    none.serial = "xyz";
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &none, 1, NULL, "prog-1", T0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, NULL, 1, NULL, "prog-1", T0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(events(l, "cert.provisioned").count, 2);
    CU_ASSERT_EQUAL(events(l, "cert.failed").count, 1);

    CU_ASSERT_EQUAL(cloud_ledger_cert_list(l, "job-1", NULL, 0, cert_visit, &cs), NU_OK);
    CU_ASSERT_EQUAL(cs.n, 3);
    CU_ASSERT_STRING_EQUAL(cs.first, res[0].serial); /* by issue time */
    memset(&cs, 0, sizeof(cs));
    CU_ASSERT_EQUAL(cloud_ledger_cert_list(l, NULL, t[2].uid, sizeof(t[2].uid), cert_visit, &cs),
                    NU_OK);
    CU_ASSERT_EQUAL(cs.n, 1);
    CU_ASSERT_STRING_EQUAL(cs.first, res[2].serial);
    memset(&cs, 0, sizeof(cs));
    CU_ASSERT_EQUAL(cloud_ledger_cert_list(l, "job-1", t[2].uid, sizeof(t[2].uid), cert_visit, &cs),
                    NU_OK);
    CU_ASSERT_EQUAL(cs.n, 1);
    CU_ASSERT_EQUAL(cloud_ledger_cert_list(l, NULL, NULL, 0, cert_visit, &cs), NU_ERR_INVALID_ARG);

    CU_ASSERT_EQUAL(cloud_ledger_cert_revoke(l, &by_uid, "returned", "oem-1", T0 + 70), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &by_uid, &c), NU_OK);
    CU_ASSERT_EQUAL(c.state, CLOUD_LEDGER_CERT_REVOKED);
    CU_ASSERT_EQUAL(c.revoked_at_ms, T0 + 70);
    CU_ASSERT_STRING_EQUAL(c.revoke_reason, "returned");
    CU_ASSERT_EQUAL(cloud_ledger_cert_revoke(l, &by_uid, "again", "oem-1", T0 + 71), NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &by_uid, 1, NULL, "prog-1", T0 + 72), NU_ERR_STATE);
    CU_ASSERT_EQUAL(events(l, "cert.revoked").count, 1);
    /* What the device CRL is built from: exactly the revoked one. */
    cs.n = 0;
    CU_ASSERT_EQUAL(cloud_ledger_cert_list_revoked(l, cert_visit, &cs), NU_OK);
    CU_ASSERT_EQUAL(cs.n, 1);
    CU_ASSERT_STRING_EQUAL(cs.first, c.serial);
    CU_ASSERT_EQUAL(cloud_ledger_cert_list_revoked(l, NULL, &cs), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 3); /* quota is not given back */
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/*
 * Issue 15, a fast line: the online certificate issued for a request the
 * programmer abandoned is superseded by the offline one its upload names
 * it with: revoked (on the CRL list), its unit taken over (issued counted
 * once), the request's cache entry no longer replayed (the same request
 * again gets the offline certificate by RESEND), verify passes. A
 * certificate reported provisioned, or another request's key: refused.
 */
static void test_cert_superseded_by_offline(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t, t2;
    struct cloud_ledger_issue_result res, again;
    struct cloud_ledger_cert c;
    struct certscan cs = {0};
    int known = 0;

    std_setup(l, 10, 10);
    CU_ASSERT_EQUAL_FATAL(grant_std_lease(l, 3), NU_OK);

    mkreq(&t, "prog-1", "job-1", 1, 1, T0 + 1);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    struct cloud_ledger_lease_cert off = {
        .lease_id = "lease-1", .programmer_id = "prog-1", .serial = "0ff1e0000001",
        .device_uid = t.uid, .device_uid_len = sizeof(t.uid), .pem = PEM_TEXT, .counter = 1,
        .issued_at_ms = T0 + 2, .supersedes_key = t.key, .supersedes_key_len = sizeof(t.key),
    };
    memcpy(off.pubkey_hash, t.r.pubkey_hash, sizeof(off.pubkey_hash));
    uint8_t wrong[16] = {1};
    off.supersedes_key = wrong; /* another request's key: an incident */
    CU_ASSERT_EQUAL(cloud_ledger_lease_record(l, &off, T0 + 3, &known), NU_ERR_LEASE_NOT_COVERED);
    off.supersedes_key = t.key;
    CU_ASSERT_EQUAL(cloud_ledger_lease_record(l, &off, T0 + 3, &known), NU_OK);
    CU_ASSERT_EQUAL(known, 0);
    struct cloud_ledger_cert_ref online = {res.serial, NULL, NULL, 0};
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &online, &c), NU_OK);
    CU_ASSERT_EQUAL(c.state, CLOUD_LEDGER_CERT_REVOKED);
    CU_ASSERT_STRING_EQUAL(c.revoke_reason, "superseded");
    struct cloud_ledger_cert_ref by_uid = {NULL, "job-1", t.uid, sizeof(t.uid)};
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &by_uid, &c), NU_OK);
    CU_ASSERT_STRING_EQUAL(c.serial, "0ff1e0000001"); /* the live one */
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);     /* one unit for the chip */
    CU_ASSERT_EQUAL(alloc_issued(l, "job-1", "prog-1"), 1);
    CU_ASSERT_EQUAL(events(l, "lease.superseded").count, 1);
    CU_ASSERT_EQUAL(cloud_ledger_cert_list_revoked(l, cert_visit, &cs), NU_OK);
    CU_ASSERT_EQUAL(cs.n, 1);
    CU_ASSERT_STRING_EQUAL(cs.first, res.serial);
    /* Uploaded again: known, nothing twice. */
    CU_ASSERT_EQUAL(cloud_ledger_lease_record(l, &off, T0 + 4, &known), NU_OK);
    CU_ASSERT_EQUAL(known, 1);
    CU_ASSERT_EQUAL(events(l, "cert.revoked").count, 1);
    /* A late copy of the abandoned request: the offline certificate, no unit. */
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &again), NU_OK);
    CU_ASSERT(again.resent);
    CU_ASSERT_STRING_EQUAL(again.serial, "0ff1e0000001");
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);

    /* Delivered (reported provisioned): never superseded. */
    mkreq(&t2, "prog-1", "job-1", 2, 1, T0 + 10);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_issue(l, &t2.r, dummy_sign, &s, &res), NU_OK);
    struct cloud_ledger_cert_ref by_uid2 = {NULL, "job-1", t2.uid, sizeof(t2.uid)};
    CU_ASSERT_EQUAL(cloud_ledger_cert_report(l, &by_uid2, 1, "ok", "prog-1", T0 + 11), NU_OK);
    off.serial = "0ff1e0000002";
    off.device_uid = t2.uid;
    off.counter = 2;
    off.supersedes_key = t2.key;
    memcpy(off.pubkey_hash, t2.r.pubkey_hash, sizeof(off.pubkey_hash));
    CU_ASSERT_EQUAL(cloud_ledger_lease_record(l, &off, T0 + 12, &known), NU_ERR_LEASE_NOT_COVERED);
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &by_uid2, &c), NU_OK);
    CU_ASSERT_EQUAL(c.state, CLOUD_LEDGER_CERT_PROVISIONED);
    CU_ASSERT_EQUAL(events(l, "lease.superseded").count, 1);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/*
 * An upload whose serial another certificate has is an incident, nothing
 * recorded (a failed insert took the rest of the upload down); the same
 * certificate with its own serial is recorded.
 */
static void test_clashing_upload_refused(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t, t2;
    struct cloud_ledger_issue_result res;
    int known = 0;

    std_setup(l, 10, 10);
    CU_ASSERT_EQUAL_FATAL(grant_std_lease(l, 3), NU_OK); /* valid T0 .. T0 + 1 h */
    mkreq(&t, "prog-1", "job-1", 1, 1, T0 + 1);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);

    mkreq(&t2, "prog-1", "job-1", 2, 1, T0 + 2);
    struct cloud_ledger_lease_cert off = {
        .lease_id = "lease-1",
        .programmer_id = "prog-1",
        .serial = res.serial,
        .device_uid = t2.uid,
        .device_uid_len = sizeof(t2.uid),
        .pem = PEM_TEXT,
        .counter = 1,
        .issued_at_ms = T0 + 3,
    };
    memcpy(off.pubkey_hash, t2.r.pubkey_hash, sizeof(off.pubkey_hash));
    /* The online certificate's serial. */
    CU_ASSERT_EQUAL(cloud_ledger_lease_record(l, &off, T0 + 4, &known), NU_ERR_LEASE_NOT_COVERED);
    off.serial = "0ff1e0000003";
    CU_ASSERT_EQUAL(events(l, "lease.incident").count, 1);
    CU_ASSERT_EQUAL(events(l, "lease.recorded").count, 0);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);
    struct cloud_ledger_cert c;
    struct cloud_ledger_cert_ref by_uid2 = {NULL, "job-1", t2.uid, sizeof(t2.uid)};
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &by_uid2, &c), NU_ERR_NOT_FOUND);
    /* In time and with its own serial: recorded. */
    CU_ASSERT_EQUAL(cloud_ledger_lease_record(l, &off, T0 + 5, &known), NU_OK);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 2);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

const struct nu_test_case device_cases[] = {
    {"report, list, revoke", test_cert_report_list_revoke},
    {"an offline certificate supersedes an undelivered online one",
     test_cert_superseded_by_offline},
    {"a lease upload with another certificate's serial is an incident",
     test_clashing_upload_refused},
    {NULL, NULL},
};
