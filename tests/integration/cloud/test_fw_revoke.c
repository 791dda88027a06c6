/*
 * The OEM revokes a programmer firmware (issue 9), on the real stack: an
 * enrolled programmer whose attested measurement is revoked is revoked
 * itself (ledger, broker list, disconnected); a new enrollment attested with
 * that measurement is refused MEASUREMENT and audited; bad requests change
 * nothing. Its own stack: the revocation would refuse every later
 * enrollment of the other cloud tests (they share one programmer firmware).
 */
#include "cloud_fixture.h"

#include "ledger.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static struct cf F;
static struct cf_client oem, station, ca; /* ca: prog-a on the bus */
static struct cf_programmer pa, pb;
static char measurement[65];

static int setup(void)
{
    if (cf_setup(&F, "fw-revoke") || cf_client_open(&F, "oem", NULL, NULL, &oem) ||
        cf_client_open(&F, "station", NULL, NULL, &station))
        return -1;
    return 0;
}

static int teardown(void)
{
    cf_client_close(&ca);
    cf_client_close(&oem);
    cf_client_close(&station);
    cf_programmer_free(&pa);
    cf_programmer_free(&pb);
    cf_teardown(&F);
    return 0;
}

static int programmer_get(const char *id, struct cloud_ledger_programmer *out)
{
    struct cloud_ledger *l = NULL;
    int rc = cloud_ledger_open(F.ledger, &l);
    if (!rc)
        rc = cloud_ledger_programmer_get(l, id, out);
    cloud_ledger_close(l);
    return rc;
}

struct scan {
    const char *kind, *want;
    unsigned n;
};

static int scan_visit(void *ctx, const struct cloud_ledger_event *ev)
{
    struct scan *s = ctx;
    if (strcmp(ev->kind, s->kind) == 0 && (!s->want || strstr(ev->payload, s->want)))
        s->n++;
    return 0;
}

/* Audit rows of `kind` whose payload contains `want` (NULL: any). */
static unsigned audit_rows(const char *kind, const char *want)
{
    struct scan s = {kind, want, 0};
    struct cloud_ledger *l = NULL;
    if (cloud_ledger_open(F.ledger, &l) == NU_OK)
        (void)cloud_ledger_audit_list(l, 1, scan_visit, &s);
    cloud_ledger_close(l);
    return s.n;
}

static int revoke_fw(struct cf_client *c, const char *hex, const char *reason,
                     Nusec__V1__Envelope **out)
{
    Nusec__V1__ProgrammerFirmwareRevokeRequest req =
        NUSEC__V1__PROGRAMMER_FIRMWARE_REVOKE_REQUEST__INIT;
    req.measurement = (char *)hex;
    req.reason = (char *)reason;
    return cf_call(c, "programmer.firmware_revoke", &req.base, NULL, 0, out, NULL, 0);
}

/* Whether the ledger lists m as revoked (-1: cannot tell). */
static int revoked_in_ledger(const char *m)
{
    struct cloud_ledger *l = NULL;
    int revoked = -1;
    if (cloud_ledger_open(F.ledger, &l) != NU_OK ||
        cloud_ledger_firmware_revoked(l, m, &revoked) != NU_OK)
        revoked = -1;
    cloud_ledger_close(l);
    return revoked;
}

static int count_revocations(void *ctx, const struct cloud_ledger_fw_revocation *r)
{
    (void)r;
    (*(unsigned *)ctx)++;
    return NU_OK;
}

static unsigned revocations(void)
{
    struct cloud_ledger *l = NULL;
    unsigned n = 0;
    if (cloud_ledger_open(F.ledger, &l) == NU_OK)
        (void)cloud_ledger_firmware_revocations(l, count_revocations, &n);
    cloud_ledger_close(l);
    return n;
}

static void test_enrolled_with_measurement(void)
{
    struct cloud_ledger_programmer p;
    CU_ASSERT_EQUAL_FATAL(cf_programmer_make(&F, &oem, &station, "prog-a", &pa), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, "prog-a", pa.cert, pa.key, &ca), NU_OK);
    CU_ASSERT_EQUAL_FATAL(programmer_get("prog-a", &p), NU_OK);
    CU_ASSERT_EQUAL_FATAL(strlen(p.firmware_measurement), 64);
    snprintf(measurement, sizeof(measurement), "%s", p.firmware_measurement);
}

/* Refused, typed, and nothing changes: not hex, wrong length, not the OEM. */
static void test_bad_requests_change_nothing(void)
{
    Nusec__V1__Envelope *r = NULL;
    struct cloud_ledger_programmer p;
    char upper[65];
    CU_ASSERT_EQUAL(revoke_fw(&oem, "zz", "x", &r), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(revoke_fw(&oem, "", "x", &r), NU_ERR_INVALID_ARG);
    snprintf(upper, sizeof(upper), "%.63sg", measurement);
    CU_ASSERT_EQUAL(revoke_fw(&oem, upper, "x", &r), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(revoke_fw(&station, measurement, "x", &r), NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(revoke_fw(&ca, measurement, "x", &r), NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(programmer_get("prog-a", &p), NU_OK);
    CU_ASSERT_EQUAL(p.state, CLOUD_LEDGER_PROGRAMMER_ENROLLED);
    CU_ASSERT_EQUAL(audit_rows("programmer.firmware_revoked", NULL), 0);
    CU_ASSERT_EQUAL(revocations(), 0);
    CU_ASSERT_EQUAL(nu_test_sh("! grep -qx prog-a %s/broker/revoked", F.dir), 0);
    CU_ASSERT_TRUE(nu_mqtt_is_connected(ca.m));
}

static void test_revoke_revokes_enrolled_programmers(void)
{
    Nusec__V1__Envelope *r = NULL;
    struct cloud_ledger_programmer p;
    char upper[65];
    /* Upper case is the same measurement. */
    for (size_t i = 0; i < 64; i++)
        upper[i] = (char)(measurement[i] >= 'a' ? measurement[i] - 32 : measurement[i]);
    upper[64] = 0;
    CU_ASSERT_EQUAL_FATAL(revoke_fw(&oem, upper, "CVE in the programmer firmware", &r), NU_OK);
    CU_ASSERT_EQUAL_FATAL(r->body_case, NUSEC__V1__ENVELOPE__BODY_ACK);
    CU_ASSERT_PTR_NOT_NULL(strstr(r->ack->detail, "1 programmers revoked"));
    nu_envelope_free(r);
    r = NULL;
    CU_ASSERT_EQUAL(programmer_get("prog-a", &p), NU_OK);
    CU_ASSERT_EQUAL(p.state, CLOUD_LEDGER_PROGRAMMER_REVOKED);
    CU_ASSERT_PTR_NOT_NULL(strstr(p.revoke_reason, "CVE in the programmer firmware"));
    CU_ASSERT_EQUAL(audit_rows("programmer.firmware_revoked", measurement), 1);
    CU_ASSERT_EQUAL(audit_rows("programmer.revoked", "prog-a"), 1);
    /* In the ledger, where every agent on every host reads it; no file. */
    CU_ASSERT_EQUAL(revoked_in_ledger(measurement), 1);
    CU_ASSERT_NOT_EQUAL(nu_test_sh("test -e %s/cloud/revoked-measurements", F.dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -qx prog-a %s/broker/revoked", F.dir), 0);
    /* The broker disconnects it and refuses it from now on. */
    int gone = 0;
    for (int t = 0; t < 100 && !gone; t++, usleep(20 * 1000))
        gone = !nu_mqtt_is_connected(ca.m);
    CU_ASSERT_TRUE(gone);
    cf_client_close(&ca);
    CU_ASSERT_NOT_EQUAL(cf_client_open(&F, "prog-a", pa.cert, pa.key, &ca), NU_OK);
    /* Again: nothing left to do, still answered (a retry after a failure). */
    CU_ASSERT_EQUAL(revoke_fw(&oem, measurement, "again", &r), NU_OK);
    if (r)
        CU_ASSERT_PTR_NOT_NULL(strstr(r->ack->detail, "0 programmers revoked"));
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(revocations(), 1);
    CU_ASSERT_EQUAL(audit_rows("programmer.firmware_revoked", measurement), 1);
}

/* A list file left by a cloud before schema 5 is moved into the ledger at
 * start (then renamed), so no revocation is forgotten by the upgrade. */
static void test_old_list_file_moved_into_ledger(void)
{
    static const char old[] = "0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b0b";
    CU_ASSERT_EQUAL_FATAL(cf_cloud_stop(&F), 0);
    CU_ASSERT_EQUAL(nu_test_sh("printf '# old list\\n%s\\n%s\\n' > %s/cloud/revoked-measurements",
                               old, measurement, F.dir),
                    0);
    CU_ASSERT_EQUAL(revoked_in_ledger(old), 0);
    CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
    CU_ASSERT_EQUAL(revoked_in_ledger(old), 1);
    CU_ASSERT_EQUAL(revocations(), 2);
    CU_ASSERT_NOT_EQUAL(nu_test_sh("test -e %s/cloud/revoked-measurements", F.dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh("test -e %s/cloud/revoked-measurements.imported", F.dir), 0);
    CU_ASSERT_EQUAL(audit_rows("programmer.firmware_revoked", old), 1);
}

/* A genuine programmer running the revoked firmware cannot enroll. */
static void test_enrollment_with_revoked_measurement_refused(void)
{
    struct cloud_ledger_programmer p;
    unsigned before = audit_rows("request.refused", "\"code\":\"MEASUREMENT\"");
    CU_ASSERT_EQUAL(cf_programmer_make(&F, &oem, &station, "prog-b", &pb), NU_ERR_MEASUREMENT);
    CU_ASSERT_EQUAL(programmer_get("prog-b", &p), NU_ERR_NOT_FOUND);
    /* Refusals reach the ledger coalesced, at the agent's next flush. */
    unsigned after = before;
    for (int t = 0; t < 50 && after == before; t++, usleep(100 * 1000))
        after = audit_rows("request.refused", "\"code\":\"MEASUREMENT\"");
    CU_ASSERT_EQUAL(after, before + 1);
    CU_ASSERT_EQUAL(nu_test_sh("! grep -q '^prog-b ' %s/broker/serials", F.dir), 0);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"a programmer enrolled with a measurement", test_enrolled_with_measurement},
        {"bad revocation requests change nothing", test_bad_requests_change_nothing},
        {"revoking the firmware revokes its programmers", test_revoke_revokes_enrolled_programmers},
        {"enrollment with a revoked measurement is refused",
         test_enrollment_with_revoked_measurement_refused},
        {"an old revoked-measurements file is moved into the ledger",
         test_old_list_file_moved_into_ledger},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"programmer firmware revocation", setup, teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("integration_fw_revoke", suites);
}
