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

const struct nu_test_case device_cases[] = {
    {"report, list, revoke", test_cert_report_list_revoke},
    {NULL, NULL},
};
