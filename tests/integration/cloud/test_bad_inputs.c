/*
 * The bad-input catalogue: every input an attacker on the bus can send that
 * the system must refuse, one named case each, on the real stack (mosquitto +
 * nusec_auth, the nusec-cloud binary with SoftHSM2, SQLite).
 *
 * Every case asserts the same three things:
 *   1. the typed error the sender gets (an Error body with its code; for the
 *      broker's own refusals, the PUBACK's code);
 *   2. the audit event: a new row in the ledger's chain by the sender with
 *      that code (for the broker's refusals, its log line), and every new
 *      payload is strict JSON with no key twice;
 *   3. no state change: jobs (quota, issued, status), allocations,
 *      certificates, programmers, tokens, firmware and packages are as before.
 * The last cases check the whole ledger with `nusec audit verify` and the
 * independent Python auditor. The count of cases is printed.
 */
#include "cloud_fixture.h"

#include "ledger.h"
#include "nu_client.h"
#include "nu_err.h"
#include "nu_json.h"
#include "nu_msgsig.h"
#include "nu_test.h"
#include "nu_util.h"

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Refusals per (identity, code) audited one by one in this catalogue's
 * configuration; the flood case sends more than that. */
#define BURST 60

static struct cf F;
static struct cf_client oem, station, c1, c2;
static struct cf_programmer p1, p2;
static struct nu_p256_key *dev_key;
static uint8_t *dev_csr;
static size_t dev_csr_len;
static const uint8_t UID_OK[] = {0xca, 0x7a, 0x10, 0x01};
static const uint8_t UID_NEW[] = {0xca, 0x7a, 0x10, 0x02};
static uint64_t expired_at_ms;

/* ---------------------------------------------------------------- state */

static int snap_row(void *ctx, int n, char **v, char **col)
{
    (void)col;
    char **s = ctx;
    for (int i = 0; i < n; i++) {
        size_t have = *s ? strlen(*s) : 0, add = (v[i] ? strlen(v[i]) : 4) + 2;
        char *grown = realloc(*s, have + add + 1);
        if (!grown)
            return 1;
        snprintf(grown + have, add + 1, "%s%c", v[i] ? v[i] : "NULL", i + 1 == n ? '\n' : '|');
        *s = grown;
    }
    return 0;
}

/* Everything a refusal must not change, as text (audit rows and the refusal
 * counters excluded: a refusal is supposed to add to those). */
static char *state_snapshot(void)
{
    static const char sql[] =
        "SELECT job_id, quota, issued, status, expires_at_ms FROM jobs ORDER BY job_id;"
        "SELECT * FROM job_allocations ORDER BY 1, 2;"
        "SELECT job_id, hex(device_uid), serial, state FROM certificates ORDER BY serial;"
        "SELECT programmer_id, state, cert_serial FROM programmers ORDER BY 1;"
        "SELECT hex(token_hash), programmer_id, used_at_ms FROM enroll_tokens ORDER BY 1;"
        "SELECT name FROM firmware_images ORDER BY 1;"
        "SELECT count(*) FROM job_keys; SELECT count(*) FROM job_packages;";
    sqlite3 *db = NULL;
    char *s = strdup("");
    if (sqlite3_open_v2(F.ledger, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK ||
        sqlite3_exec(db, sql, snap_row, &s, NULL) != SQLITE_OK) {
        free(s);
        s = strdup(sqlite3_errmsg(db));
    }
    sqlite3_close(db);
    return s;
}

static uint64_t audit_head(void)
{
    struct cloud_ledger *l = NULL;
    uint64_t seq = 0;
    uint8_t h[CLOUD_LEDGER_HASH_LEN];
    if (cloud_ledger_open(F.ledger, &l) == NU_OK)
        (void)cloud_ledger_audit_head(l, &seq, h);
    cloud_ledger_close(l);
    return seq;
}

struct audit_scan {
    const char *actor;
    char want[64]; /* "code":"NAME" */
    unsigned matched, rows, bad_json;
    uint64_t count_sum; /* "count" of coalesced rows */
};

static int audit_visit(void *ctx, const struct cloud_ledger_event *ev)
{
    struct audit_scan *a = ctx;
    a->rows++;
    if (nu_json_check(ev->payload, ev->payload_len, NULL) != NU_OK)
        a->bad_json++;
    if (strcmp(ev->actor, a->actor) == 0 && strstr(ev->payload, a->want)) {
        a->matched++;
        const char *c = strstr(ev->payload, "\"count\":");
        if (c)
            a->count_sum += strtoull(c + 8, NULL, 10);
    }
    return 0;
}

/* Rows after `after` by `actor` with `code`; waits up to 5 s for the first. */
static struct audit_scan audit_after(uint64_t after, const char *actor, int code, int wait)
{
    struct audit_scan a = {.actor = actor};
    snprintf(a.want, sizeof(a.want), "\"code\":\"%s\"", nu_err_name(code));
    for (int i = 0; i < (wait ? 50 : 1); i++) {
        struct cloud_ledger *l = NULL;
        struct audit_scan s = a;
        if (cloud_ledger_open(F.ledger, &l) == NU_OK)
            (void)cloud_ledger_audit_list(l, after + 1, audit_visit, &s);
        cloud_ledger_close(l);
        if (s.matched || i == 49 || !wait)
            return s;
        usleep(100 * 1000);
    }
    return a;
}

/* ------------------------------------------------------------ the frame */

static uint64_t case_seq;
static char *case_state;
static unsigned cases_run;

static void case_begin(void)
{
    free(case_state);
    case_state = state_snapshot();
    case_seq = audit_head();
}

/* The three assertions of every case. */
static void case_end(int got, int want, const char *actor)
{
    cases_run++;
    if (got != want)
        printf("\n    got %s, want %s ", nu_err_name(got), nu_err_name(want));
    CU_ASSERT_EQUAL(got, want);
    struct audit_scan a = audit_after(case_seq, actor, want, 1);
    if (!a.matched)
        printf("\n    no audit row by %s with %s ", actor, a.want);
    CU_ASSERT(a.matched >= 1);
    CU_ASSERT_EQUAL(a.bad_json, 0);
    char *now = state_snapshot();
    CU_ASSERT_STRING_EQUAL(now, case_state);
    free(now);
}

/* A request with any op level and any payload; the answer's code. */
static int raw(struct cf_client *c, const char *id, const char *op, const void *payload,
               size_t len)
{
    char topic[1024];
    uint8_t *ans = NULL;
    size_t ans_len = 0;
    Nusec__V1__Envelope *reply = NULL;
    snprintf(topic, sizeof(topic), "nusec/v1/cloud/req/%s/%s", id, op);
    int rc = nu_mqtt_request(c->m, topic, payload, len, 5000, &ans, &ans_len);
    if (rc == NU_OK)
        rc = nu_envelope_unpack(ans, ans_len, &reply, NULL);
    if (rc == NU_OK)
        rc = reply->body_case == NUSEC__V1__ENVELOPE__BODY_ERROR ? (int)reply->error->code : NU_OK;
    nu_envelope_free(reply);
    free(ans);
    return rc;
}

/* A valid envelope from `sender` with `body` (free()). */
static uint8_t *envelope(struct nu_envelope_sender *sender, ProtobufCMessage *body, size_t *len)
{
    struct nu_envelope_frame fr;
    uint8_t *out = NULL, key[16] = {1, 2, 3};
    if (nu_envelope_frame_init(&fr, sender, body) ||
        nu_envelope_frame_set_idempotency_key(&fr, key, sizeof(key)) ||
        nu_envelope_pack(&fr.env, &out, len, NULL))
        return NULL;
    return out;
}

/* op level `op` with a well-formed job.list body, as station. */
static int station_op(const char *op)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    size_t len = 0;
    uint8_t *env = envelope(station.sender, &req.base, &len);
    int rc = env ? raw(&station, "station", op, env, len) : NU_ERR_NOMEM;
    free(env);
    return rc;
}

static int call(struct cf_client *c, const char *op, ProtobufCMessage *body)
{
    Nusec__V1__Envelope *r = NULL;
    int rc = cf_call(c, op, body, NULL, 0, &r, NULL, 0);
    nu_envelope_free(r);
    return rc;
}

/* One case: `op` with `body` from client c, refused with `code`, audited as `actor`. */
static void call_case(struct cf_client *c, const char *op, ProtobufCMessage *body, int code,
                      const char *actor)
{
    case_begin();
    case_end(call(c, op, body), code, actor);
}

static int cert_req(struct cf_client *c, const char *job, const uint8_t *uid, size_t uid_len,
                    const uint8_t *csr, size_t csr_len)
{
    Nusec__V1__Envelope *r = NULL;
    int rc = cf_cert_request(c, job, uid, uid_len, csr, csr_len, NULL, 0, &r);
    nu_envelope_free(r);
    return rc;
}

/* ---------------------------------------------------------------- setup */

static int write_conf(void)
{
    char path[CF_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/cloud/cloud.conf", F.dir);
    FILE *fp = fopen(path, "a");
    if (!fp)
        return -1;
    fprintf(fp, "\nrefusal_audit_burst = %d\nrefusal_audit_window_ms = 3600000\n", BURST);
    return fclose(fp);
}

static int setup(void)
{
    const char *progs[] = {"cat-p1"};
    const uint32_t limits[] = {1};
    const uint32_t many[] = {5};
    Nusec__V1__Envelope *r = NULL;
    if (cf_setup(&F, "catalogue") || write_conf() || cf_cloud_stop(&F) != 0 ||
        cf_cloud_start(&F))
        return -1;
    if (cf_client_open(&F, "oem", NULL, NULL, &oem) ||
        cf_client_open(&F, "station", NULL, NULL, &station) ||
        cf_programmer_make(&F, &oem, &station, "cat-p1", &p1) ||
        cf_programmer_make(&F, &oem, &station, "cat-p2", &p2) ||
        cf_client_open(&F, "cat-p1", p1.cert, p1.key, &c1) ||
        cf_client_open(&F, "cat-p2", p2.cert, p2.key, &c2) ||
        cf_device_csr(&dev_key, &dev_csr, &dev_csr_len))
        return -1;
    /* active (p1: 5), full (p1 used its 1), paused, expired; p2 is in none */
    /* expires during the setup's own requests (a past expiry is refused) */
    expired_at_ms = nu_time_ms() + 1500;
    if (cf_job_create(&F, "cat-active", 5, progs, many, 1) ||
        cf_job_create(&F, "cat-full", 1, progs, limits, 1) ||
        cf_job_create(&F, "cat-paused", 5, progs, many, 1) ||
        cf_job_create_ex(&F, "cat-expired", 5, progs, many, 1, expired_at_ms, NULL) ||
        cf_job_control(&F, "cat-paused", 1)) {
        printf("catalogue setup: cannot create the jobs\n");
        return -1;
    }
    int rc = cf_cert_request(&c1, "cat-active", UID_OK, sizeof(UID_OK), dev_csr, dev_csr_len, NULL,
                             0, &r);
    nu_envelope_free(r);
    r = NULL;
    if (!rc)
        rc = cf_cert_request(&c1, "cat-full", UID_OK, sizeof(UID_OK), dev_csr, dev_csr_len, NULL,
                             0, &r);
    nu_envelope_free(r);
    if (rc)
        printf("catalogue setup: cert.request %s\n", nu_err_name(rc));
    while (!rc && nu_time_ms() <= expired_at_ms)
        usleep(100 * 1000);
    return rc ? -1 : 0;
}

static int teardown(void)
{
    printf("\nbad-input catalogue: %u cases\n", cases_run);
    free(case_state);
    cf_client_close(&c1);
    cf_client_close(&c2);
    cf_client_close(&oem);
    cf_client_close(&station);
    cf_programmer_free(&p1);
    cf_programmer_free(&p2);
    nu_p256_key_destroy(dev_key);
    free(dev_csr);
    cf_teardown(&F);
    return 0;
}

/* cert.request for UID_NEW with the good CSR, from CLIENT for JOB: refused
 * with CODE and audited as ACTOR. */
#define CERT_CASE(fn, client, job, code, actor)                                                    \
    static void fn(void)                                                                           \
    {                                                                                              \
        case_begin();                                                                              \
        case_end(cert_req(client, job, UID_NEW, sizeof(UID_NEW), dev_csr, dev_csr_len), code,      \
                 actor);                                                                           \
    }

/* ------------------------------------------------- op names and payloads */

#define OP_CASE(fn, op)                                                                            \
    static void fn(void)                                                                           \
    {                                                                                              \
        case_begin();                                                                              \
        case_end(station_op(op), NU_ERR_NOT_SUPPORTED, "station");                                 \
    }
OP_CASE(op_quote, "job\"list")
OP_CASE(op_space, "job list")
OP_CASE(op_umlaut, "j\xc3\xb6" "b.list")
OP_CASE(op_dollar, "job$list")
OP_CASE(op_backslash, "job\\list")
OP_CASE(op_tilde_percent, "job~%list")
OP_CASE(op_emoji, "job\xf0\x9f\x92\xa3list")
OP_CASE(op_33_chars, "job.list.job.list.job.list.job.li")
OP_CASE(op_200_chars, "jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj"
                      "jjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjjj"
                      "jjjjjjjjjjjjjjjjjj")
OP_CASE(op_unknown, "job.delete")

/* Longer than any topic the cloud keeps: answered with the name cut. */
static void op_400_chars(void)
{
    char op[401];
    memset(op, 'k', sizeof(op) - 1);
    op[sizeof(op) - 1] = 0;
    case_begin();
    case_end(station_op(op), NU_ERR_NOT_SUPPORTED, "station");
}

/* The injection: the row must still be strict JSON, its op the string sent. */
static void json_injection(const char *op)
{
    case_begin();
    case_end(station_op(op), NU_ERR_NOT_SUPPORTED, "station");
    struct audit_scan a = audit_after(case_seq, "station", NU_ERR_NOT_SUPPORTED, 0);
    CU_ASSERT_EQUAL(a.bad_json, 0);
    CU_ASSERT_EQUAL(audit_after(case_seq, "station", NU_ERR_OK, 0).matched, 0); /* no "code":"OK" */
}
static void op_json_injection(void)
{
    json_injection("x\",\"code\":\"OK");
}
static void op_json_backslash(void)
{
    json_injection("x\\");
}
static void op_json_brace(void)
{
    json_injection("x\"}{\"op\":\"y");
}

static void garbage(size_t len, int want, struct cf_client *c, const char *id, const char *op)
{
    uint8_t *junk = malloc(len ? len : 1);
    for (size_t i = 0; i < len; i++)
        junk[i] = (uint8_t)(i * 131u + 7u);
    case_begin();
    case_end(raw(c, id, op, junk, len), want, id);
    free(junk);
}
static void payload_garbage(void)
{
    garbage(1024, NU_ERR_DECODE, &station, "station", "job.list");
}
static void payload_empty(void)
{
    garbage(0, NU_ERR_DECODE, &station, "station", "job.list");
}
static void payload_truncated(void)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    req.job_id = "cat-active";
    size_t len = 0;
    uint8_t *env = envelope(station.sender, &req.base, &len);
    case_begin();
    case_end(raw(&station, "station", "job.list", env, len - 3), NU_ERR_DECODE, "station");
    free(env);
}

/* Over each op's limit (64 KiB), under the broker's payload_max (80 KiB):
 * refused by the cloud before decoding. */
static void oversize_job_list(void)
{
    garbage(79 * 1024, NU_ERR_TOO_LARGE, &station, "station", "job.list");
}
static void oversize_cert_request(void)
{
    garbage(72 * 1024, NU_ERR_TOO_LARGE, &c1, "cat-p1", "cert.request");
}
static void oversize_enroll(void)
{
    garbage(70 * 1024, NU_ERR_TOO_LARGE, &station, "station", "enroll");
}
static void oversize_firmware_sign_not_oem(void)
{
    garbage(76 * 1024, NU_ERR_TOO_LARGE, &station, "station", "firmware.sign");
}
static void oversize_unknown_op(void)
{
    garbage(72 * 1024, NU_ERR_TOO_LARGE, &c2, "cat-p2", "no.such.op");
}

/* `len` bytes from `c` to `topic`, over the broker's limit for it: PUBACK
 * 0x87, the broker's log line naming the identity and `why`, nothing reaches
 * the cloud (no audit row), no state change. */
static void refused_at_broker(struct cf_client *c, const char *id, const char *topic, size_t len,
                              const char *why)
{
    uint8_t *junk = calloc(1, len);
    case_begin();
    int rc = nu_mqtt_publish(c->m, topic, junk, len, 1, 0);
    cases_run++;
    CU_ASSERT_EQUAL(rc, NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(nu_test_sh("grep -F \"'%s' for %s \" %s/broker/mosquitto.log | grep -qF \"%s\"",
                               topic, id, F.dir, why),
                    0);
    CU_ASSERT_EQUAL(audit_head(), case_seq); /* it never reached the cloud */
    char *now = state_snapshot();
    CU_ASSERT_STRING_EQUAL(now, case_state);
    free(now);
    free(junk);
}

/* Over the broker's payload_max (80 KiB) for a non-OEM role. */
static void oversize_at_broker(void)
{
    refused_at_broker(&station, "station", "nusec/v1/cloud/req/station/job.list", 1024 * 1024,
                      "payload over its role's size limit");
}

/* 4 MiB is for an OEM's firmware.sign only: per role... (a programmer: the
 * broker logs each identity's first refusal of an interval in full, and the
 * station's was the case above) */
static void oversize_firmware_sign_at_broker(void)
{
    refused_at_broker(&c1, "cat-p1", "nusec/v1/cloud/req/cat-p1/firmware.sign", 1024 * 1024,
                      "payload over its role's size limit");
}

/* ...and per operation. */
static void oversize_oem_job_create_at_broker(void)
{
    refused_at_broker(&oem, "oem", "nusec/v1/cloud/req/oem/job.create", 1024 * 1024,
                      "payload over its role's size limit");
}

/* One identity sends the largest payload it may, as fast as the broker
 * acknowledges: past its byte burst (8 MiB) the broker refuses (PUBACK
 * 0x87) and logs it once for the interval; nothing changes. The monitor
 * identity, so that no other case's identity has an empty bucket. */
static void byte_rate_flood_at_broker(void)
{
    struct cf_client mon = {0};
    size_t len = 80 * 1024;
    uint8_t *junk = calloc(1, len);
    int rc = NU_OK, sent = 0;
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, "monitor", NULL, NULL, &mon), NU_OK);
    case_begin();
    while (rc == NU_OK && sent < 2000) {
        rc = nu_mqtt_publish(mon.m, "nusec/v1/events/monitor/monitor/flood", junk, len, 1, 0);
        sent++;
    }
    cases_run++;
    printf("\n    refused after %d publishes of 80 KiB ", sent);
    CU_ASSERT_EQUAL(rc, NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT(sent > (8 * 1024) / 80); /* the burst went through */
    CU_ASSERT_EQUAL(nu_test_sh("grep -F \"for monitor (monitor): over its identity's byte rate\" "
                               "%s/broker/mosquitto.log | grep -qF \"counted for 10 s\"",
                               F.dir),
                    0);
    char *now = state_snapshot();
    CU_ASSERT_STRING_EQUAL(now, case_state);
    free(now);
    free(junk);
    cf_client_close(&mon);
}

/* -------------------------------------------------------------- framing */

static void sender_differs(void)
{
    struct nu_envelope_sender *liar = NULL;
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_sender_create("oem", 1, &liar), NU_OK);
    uint8_t *env = envelope(liar, &req.base, &len);
    case_begin();
    case_end(raw(&station, "station", "job.list", env, len), NU_ERR_NOT_AUTHORIZED, "station");
    free(env);
    nu_envelope_sender_destroy(liar);
}

/* No response topic at all: nothing to answer on, but audited. */
static void no_response_topic(void)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    size_t len = 0;
    uint8_t *env = envelope(station.sender, &req.base, &len);
    case_begin();
    int rc = nu_mqtt_publish(station.m, "nusec/v1/cloud/req/station/job.list", env, len, 1, 0);
    CU_ASSERT_EQUAL(rc, NU_OK);
    case_end(NU_ERR_NOT_AUTHORIZED, NU_ERR_NOT_AUTHORIZED, "station"); /* no answer possible */
    free(env);
}

static void body_does_not_fit_op(void)
{
    Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    req.job_id = "cat-active";
    req.device_uid.data = (uint8_t *)UID_NEW;
    req.device_uid.len = sizeof(UID_NEW);
    req.csr_der.data = dev_csr;
    req.csr_der.len = dev_csr_len;
    size_t len = 0;
    uint8_t *env = envelope(station.sender, &req.base, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    case_begin();
    case_end(raw(&station, "station", "job.list", env, len), NU_ERR_INVALID_ARG, "station");
    free(env);
}

/* ---------------------------------------------------------------- roles */

static void role_station_job_create(void)
{
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    req.firmware = "fw-1.0.0";
    req.quota = 10;
    call_case(&station, "job.create", &req.base, NU_ERR_NOT_AUTHORIZED, "station");
}
static void role_programmer_device_revoke(void)
{
    Nusec__V1__DeviceRevokeRequest req = NUSEC__V1__DEVICE_REVOKE_REQUEST__INIT;
    req.job_id = "cat-active";
    req.device_uid.data = (uint8_t *)UID_OK;
    req.device_uid.len = sizeof(UID_OK);
    call_case(&c1, "device.revoke", &req.base, NU_ERR_NOT_AUTHORIZED, "cat-p1");
}
static void role_programmer_enroll_token(void)
{
    Nusec__V1__EnrollTokenRequest req = NUSEC__V1__ENROLL_TOKEN_REQUEST__INIT;
    req.programmer_id = "cat-p9";
    req.ttl_s = 60;
    call_case(&c2, "enroll.token", &req.base, NU_ERR_NOT_AUTHORIZED, "cat-p2");
}
CERT_CASE(role_station_cert_request, &station, "cat-active", NU_ERR_NOT_AUTHORIZED, "station")
CERT_CASE(role_oem_cert_request, &oem, "cat-active", NU_ERR_NOT_AUTHORIZED, "oem")
static void role_station_firmware_sign(void)
{
    Nusec__V1__FirmwareSignRequest req = NUSEC__V1__FIRMWARE_SIGN_REQUEST__INIT;
    uint8_t img[64] = {0};
    req.name = "evil";
    req.version = "1.0.0";
    req.payload.data = img;
    req.payload.len = sizeof(img);
    call_case(&station, "firmware.sign", &req.base, NU_ERR_NOT_AUTHORIZED, "station");
}
static void role_programmer_job_list(void)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    call_case(&c1, "job.list", &req.base, NU_ERR_NOT_AUTHORIZED, "cat-p1");
}

/* ------------------------------------------------------------- issuance */

CERT_CASE(job_unknown, &c1, "cat-nothing", NU_ERR_NOT_FOUND, "cat-p1")
CERT_CASE(no_allocation, &c2, "cat-active", NU_ERR_NOT_AUTHORIZED, "cat-p2")
/* Authorization first: p2 must not learn that these jobs are full or paused. */
CERT_CASE(no_allocation_in_exhausted_job, &c2, "cat-full", NU_ERR_NOT_AUTHORIZED, "cat-p2")
CERT_CASE(no_allocation_in_paused_job, &c2, "cat-paused", NU_ERR_NOT_AUTHORIZED, "cat-p2")
CERT_CASE(no_allocation_in_expired_job, &c2, "cat-expired", NU_ERR_NOT_AUTHORIZED, "cat-p2")
CERT_CASE(job_paused, &c1, "cat-paused", NU_ERR_JOB_NOT_ACTIVE, "cat-p1")
CERT_CASE(job_expired, &c1, "cat-expired", NU_ERR_EXPIRED, "cat-p1")
CERT_CASE(job_exhausted, &c1, "cat-full", NU_ERR_QUOTA_EXHAUSTED, "cat-p1")

/* The idempotency key of UID_OK's issued request, with another device's CSR. */
static void idempotency_key_replayed_other_csr(void)
{
    struct nu_p256_key *k = NULL;
    uint8_t *csr = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(cf_device_csr(&k, &csr, &len), NU_OK);
    case_begin();
    case_end(cert_req(&c1, "cat-active", UID_OK, sizeof(UID_OK), csr, len),
             NU_ERR_IDEMPOTENCY_CONFLICT, "cat-p1");
    free(csr);
    nu_p256_key_destroy(k);
}

/* Same device, another key, another idempotency key: one device, one key. */
static void duplicate_device_other_key(void)
{
    struct nu_p256_key *k = NULL;
    uint8_t *csr = NULL, key[16] = {9, 9, 9};
    size_t len = 0;
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(cf_device_csr(&k, &csr, &len), NU_OK);
    case_begin();
    case_end(cf_cert_request(&c1, "cat-active", UID_OK, sizeof(UID_OK), csr, len, key, sizeof(key),
                             &r),
             NU_ERR_DUPLICATE_DEVICE, "cat-p1");
    nu_envelope_free(r);
    free(csr);
    nu_p256_key_destroy(k);
}

/* A CSR whose signature was not made by its key. */
static void csr_for_wrong_key(void)
{
    uint8_t *bad = malloc(dev_csr_len);
    memcpy(bad, dev_csr, dev_csr_len);
    bad[dev_csr_len - 3] ^= 0x01;
    case_begin();
    case_end(cert_req(&c1, "cat-active", UID_NEW, sizeof(UID_NEW), bad, dev_csr_len),
             NU_ERR_BAD_CSR, "cat-p1");
    free(bad);
}
static void csr_garbage(void)
{
    uint8_t junk[64];
    memset(junk, 0x30, sizeof(junk));
    case_begin();
    case_end(cert_req(&c1, "cat-active", UID_NEW, sizeof(UID_NEW), junk, sizeof(junk)),
             NU_ERR_BAD_CSR, "cat-p1");
}
static void csr_truncated(void)
{
    case_begin();
    case_end(cert_req(&c1, "cat-active", UID_NEW, sizeof(UID_NEW), dev_csr, dev_csr_len / 2),
             NU_ERR_BAD_CSR, "cat-p1");
}
static void cert_request_without_idempotency_key(void)
{
    Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    req.job_id = "cat-active";
    req.device_uid.data = (uint8_t *)UID_NEW;
    req.device_uid.len = sizeof(UID_NEW);
    req.csr_der.data = dev_csr;
    req.csr_der.len = dev_csr_len;
    struct nu_envelope_frame fr;
    uint8_t *out = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&fr, c1.sender, &req.base), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_envelope_pack(&fr.env, &out, &len, NULL), NU_OK);
    case_begin();
    case_end(raw(&c1, "cat-p1", "cert.request", out, len), NU_ERR_INVALID_ARG, "cat-p1");
    free(out);
}

/* ------------------------------------------------ enrollment, OEM, firmware */

static void enroll_bad_token(void)
{
    struct nu_p256_key *id = NULL, *pkg = NULL;
    uint8_t pub[65];
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&id), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&pkg), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_pub(pkg, pub), NU_OK);
    case_begin();
    int rc = cf_enroll_raw(&station, "cat-p9", "00112233445566778899aabbccddeeff", id, "cat-p9",
                           "programmer", pub, &r);
    case_end(rc, NU_ERR_TOKEN, "station");
    nu_envelope_free(r);
    nu_p256_key_destroy(id);
    nu_p256_key_destroy(pkg);
}
/* A genuine KeyStore's statement relayed at the CM, but no OEM anchor in it:
 * nothing would make the relayed answer the OEM's. */
static void enroll_relayed_unanchored(void)
{
    struct nu_p256_key *id = NULL, *pkg = NULL;
    uint8_t pub[65], nonce[32];
    char token[160];
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&id), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&pkg), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_pub(pkg, pub), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_token(&oem, "cat-p10", 0, token, sizeof(token)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_challenge(&station, "cat-p10", token, nonce), NU_OK);
    struct cf_attest bare = {.unanchored = 1, .nonce = nonce};
    case_begin();
    int rc =
        cf_enroll_attested(&station, "cat-p10", token, id, "cat-p10", "programmer", pub, &bare, &r);
    case_end(rc, NU_ERR_NOT_AUTHORIZED, "station");
    nu_envelope_free(r);
    nu_p256_key_destroy(id);
    nu_p256_key_destroy(pkg);
}
static void token_for_role_name(void)
{
    Nusec__V1__EnrollTokenRequest req = NUSEC__V1__ENROLL_TOKEN_REQUEST__INIT;
    req.programmer_id = "station";
    req.ttl_s = 60;
    call_case(&oem, "enroll.token", &req.base, NU_ERR_INVALID_ARG, "oem");
}
static void job_control_unknown_job(void)
{
    Nusec__V1__JobControlRequest req = NUSEC__V1__JOB_CONTROL_REQUEST__INIT;
    req.job_id = "cat-nothing";
    req.action = NUSEC__V1__JOB_ACTION__JOB_ACTION_PAUSE;
    call_case(&oem, "job.control", &req.base, NU_ERR_NOT_FOUND, "oem");
}
static void job_create_zero_quota(void)
{
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    req.firmware = "fw-1.0.0";
    req.quota = 0;
    call_case(&oem, "job.create", &req.base, NU_ERR_INVALID_ARG, "oem");
}
static void device_revoke_unknown(void)
{
    Nusec__V1__DeviceRevokeRequest req = NUSEC__V1__DEVICE_REVOKE_REQUEST__INIT;
    req.job_id = "cat-active";
    req.device_uid.data = (uint8_t *)UID_NEW;
    req.device_uid.len = sizeof(UID_NEW);
    call_case(&oem, "device.revoke", &req.base, NU_ERR_NOT_FOUND, "oem");
}
static void programmer_revoke_unknown(void)
{
    Nusec__V1__ProgrammerRevokeRequest req = NUSEC__V1__PROGRAMMER_REVOKE_REQUEST__INIT;
    req.programmer_id = "cat-nobody";
    call_case(&oem, "programmer.revoke", &req.base, NU_ERR_NOT_FOUND, "oem");
}
static void firmware_manifest_bad_token(void)
{
    Nusec__V1__FirmwareManifestRequest req = NUSEC__V1__FIRMWARE_MANIFEST_REQUEST__INIT;
    uint8_t tok[32] = {0};
    req.job_id = "cat-active";
    req.token.data = tok;
    req.token.len = sizeof(tok);
    call_case(&c1, "firmware.manifest", &req.base, NU_ERR_NOT_AUTHORIZED, "cat-p1");
}
static void firmware_chunk_unknown_job(void)
{
    Nusec__V1__FirmwareChunkRequest req = NUSEC__V1__FIRMWARE_CHUNK_REQUEST__INIT;
    uint8_t tok[32] = {0};
    req.job_id = "cat-nothing";
    req.token.data = tok;
    req.token.len = sizeof(tok);
    call_case(&c1, "firmware.chunk", &req.base, NU_ERR_NOT_FOUND, "cat-p1");
}

/* ----------------------------------------------------- bounded refusals */

/* 4 x BURST garbage requests from one identity: each answered, at most BURST
 * rows in the window, the rest counted into one row (written at the stop). */
static void refusal_flood_is_coalesced(void)
{
    enum { N = 4 * BURST };
    uint8_t junk[512];
    memset(junk, 0xee, sizeof(junk));
    case_begin();
    int answered = 0;
    for (int i = 0; i < N; i++)
        answered += raw(&c2, "cat-p2", "job.list", junk, sizeof(junk)) == NU_ERR_DECODE;
    cases_run++;
    CU_ASSERT_EQUAL(answered, N);
    struct audit_scan a = audit_after(case_seq, "cat-p2", NU_ERR_DECODE, 1);
    CU_ASSERT(a.matched >= 1 && a.matched <= BURST);
    CU_ASSERT(a.rows <= BURST + 2);
    CU_ASSERT_EQUAL(cf_cloud_stop(&F), 0); /* flushes the counts */
    a = audit_after(case_seq, "cat-p2", NU_ERR_DECODE, 0);
    CU_ASSERT_EQUAL(a.count_sum + (a.matched - 1), (uint64_t)N);
    CU_ASSERT_EQUAL(a.bad_json, 0);
    CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
    char *now = state_snapshot();
    CU_ASSERT_STRING_EQUAL(now, case_state);
    free(now);
}

/* --------------------------------------------------------------- audit */

static void auditors_pass(void)
{
    CU_ASSERT_EQUAL(nu_test_sh("%s/bin/nusec audit verify --dir %s >/dev/null", NUSEC_BINARY_DIR,
                               F.dir),
                    0);
    CU_ASSERT_EQUAL(
        nu_test_sh("python3 %s/tests/tools/audit_verify.py %s", NUSEC_SOURCE_DIR, F.ledger), 0);
}

static int last_refusal_visit(void *ctx, const struct cloud_ledger_event *ev)
{
    if (strcmp(ev->kind, "request.refused") == 0)
        *(uint64_t *)ctx = ev->seq;
    return 0;
}

static uint64_t last_refusal_seq(void)
{
    struct cloud_ledger *l = NULL;
    uint64_t seq = 0;
    if (cloud_ledger_open(F.ledger, &l) == NU_OK)
        (void)cloud_ledger_audit_list(l, 1, last_refusal_visit, &seq);
    cloud_ledger_close(l);
    return seq;
}

/* An injected duplicate key, written behind the cloud's back with the hash
 * chain recomputed: both auditors must refuse the ledger. */
static void auditors_refuse_a_duplicate_key(void)
{
    CU_ASSERT_EQUAL_FATAL(cf_cloud_stop(&F), 0);
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("python3 %s/tests/tools/ledger_rewrite.py %s --from-seq %llu "
                   "--replace '\"code\":' '\"code\":\"OK\",\"code\":' >/dev/null",
                   NUSEC_SOURCE_DIR, F.ledger, (unsigned long long)last_refusal_seq()),
        0);
    CU_ASSERT_EQUAL(nu_test_sh("%s/bin/nusec audit verify --dir %s >/dev/null 2>&1",
                               NUSEC_BINARY_DIR, F.dir),
                    1);
    CU_ASSERT_EQUAL(nu_test_sh("%s/bin/nusec audit verify --dir %s 2>/dev/null | grep -q "
                               "'payloads *FAILED'",
                               NUSEC_BINARY_DIR, F.dir),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("python3 %s/tests/tools/audit_verify.py %s | grep -q 'duplicate key'",
                               NUSEC_SOURCE_DIR, F.ledger),
                    0);
}

/* ---------------------------------------- end-to-end signatures (issue 14) */

/* A second session as cat-p1 (as a hostile site broker would inject: the
 * broker's TLS identity is right, the signature is not the programmer's). */
static struct cf_client as_p1(void)
{
    struct cf_client x = {0};
    /* its own client id: the same as c1's would take c1's session over */
    struct nu_client_opts o = {.dir = F.dir,
                               .identity = "cat-p1",
                               .cert_file = p1.cert,
                               .key_file = p1.key,
                               .client_id = "cat-p1:site",
                               .clean_start = 1};
    CU_ASSERT_EQUAL(nu_envelope_sender_create("cat-p1", NU_ENVELOPE_SEQ_FROM_CLOCK, &x.sender),
                    NU_OK);
    CU_ASSERT_EQUAL(nu_client_connect(&o, &x.m), NU_OK);
    return x;
}

static void sig_unsigned(void)
{
    struct cf_client x = as_p1();
    CU_ASSERT_EQUAL_FATAL(nu_mqtt_set_signer(x.m, NULL), NU_OK);
    case_begin();
    case_end(cert_req(&x, "cat-active", UID_NEW, sizeof(UID_NEW), dev_csr, dev_csr_len),
             NU_ERR_BAD_SIGNATURE, "cat-p1");
    cf_client_close(&x);
}

static void sig_cm_held_key(void)
{
    struct cf_client x = as_p1();
    struct nu_p256_key *cm = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&cm), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_mqtt_sign_with_key(x.m, cm), NU_OK);
    case_begin();
    case_end(cert_req(&x, "cat-active", UID_NEW, sizeof(UID_NEW), dev_csr, dev_csr_len),
             NU_ERR_BAD_SIGNATURE, "cat-p1");
    cf_client_close(&x);
}

/* A signer that answers one fixed signature, whatever it is asked to sign:
 * a genuine signature lifted off the wire and put on other bytes. */
struct fixed_sig {
    uint8_t sig[NU_P256_SIG_MAX];
    size_t len;
};

static int fixed_sign(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    const struct fixed_sig *f = ctx;
    (void)digest;
    memcpy(sig, f->sig, f->len);
    *sig_len = f->len;
    return NU_OK;
}

static void sig_replayed_with_new_csr(void)
{
    /* The genuine request: cat-p1's key over its topic and bytes. */
    Nusec__V1__CertificateRequest cr = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    cr.job_id = "cat-active";
    cr.device_uid = (ProtobufCBinaryData){sizeof(UID_NEW), (uint8_t *)UID_NEW};
    cr.csr_der = (ProtobufCBinaryData){dev_csr_len, dev_csr};
    size_t len = 0;
    uint8_t *env = envelope(c1.sender, &cr.base, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    uint8_t d[32];
    struct fixed_sig f = {.len = sizeof(f.sig)};
    CU_ASSERT_EQUAL(nu_msgsig_digest("nusec/v1/cloud/req/cat-p1/cert.request", env, len, d), NU_OK);
    CU_ASSERT_EQUAL(nu_p256_key_sign_digest(p1.identity, d, f.sig, &f.len), NU_OK);
    free(env);
    /* Replayed by the site with another CSR (a key the CM holds). */
    struct nu_p256_key *k = NULL;
    uint8_t *csr = NULL;
    size_t csr_len = 0;
    CU_ASSERT_EQUAL_FATAL(cf_device_csr(&k, &csr, &csr_len), NU_OK);
    struct cf_client x = as_p1();
    struct nu_signer s = {.ctx = &f, .sign_digest = fixed_sign};
    CU_ASSERT_EQUAL_FATAL(nu_mqtt_set_signer(x.m, &s), NU_OK);
    case_begin();
    case_end(cert_req(&x, "cat-active", UID_NEW, sizeof(UID_NEW), csr, csr_len),
             NU_ERR_BAD_SIGNATURE, "cat-p1");
    cf_client_close(&x);
    nu_p256_key_destroy(k);
    free(csr);
}

static void sig_replayed_same_bytes(void)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    size_t len = 0;
    uint8_t *env = envelope(station.sender, &req.base, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_EQUAL(raw(&station, "station", "job.list", env, len), NU_OK);
    case_begin();
    case_end(raw(&station, "station", "job.list", env, len), NU_ERR_REPLAY, "station");
    free(env);
}

static void sig_stale(void)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    struct nu_envelope_frame fr;
    uint8_t *env = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&fr, station.sender, &req.base), NU_OK);
    fr.header.sent_at_ms = nu_time_ms() - 301 * 1000; /* sig_window_s = 300 */
    CU_ASSERT_EQUAL_FATAL(nu_envelope_pack(&fr.env, &env, &len, NULL), NU_OK);
    case_begin();
    case_end(raw(&station, "station", "job.list", env, len), NU_ERR_REPLAY, "station");
    free(env);
}

static void sig_forged_device_report(void)
{
    struct cf_client x = as_p1();
    struct nu_p256_key *cm = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&cm), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_mqtt_sign_with_key(x.m, cm), NU_OK);
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = "device.provisioned";
    ev.job_id = "cat-active";
    size_t len = 0;
    uint8_t *env = envelope(x.sender, &ev.base, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    case_begin();
    /* An event has no answer: the refusal shows in the audit only. */
    CU_ASSERT_EQUAL(nu_mqtt_publish(x.m, "nusec/v1/events/programmer/cat-p1/device.provisioned",
                                    env, len, 1, 0),
                    NU_OK);
    case_end(NU_ERR_BAD_SIGNATURE, NU_ERR_BAD_SIGNATURE, "cat-p1");
    free(env);
    cf_client_close(&x);
}

static void sig_forged_device_report_request(void)
{
    struct cf_client x = as_p1();
    struct nu_p256_key *cm = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&cm), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_mqtt_sign_with_key(x.m, cm), NU_OK);
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = "device.provisioned";
    ev.job_id = "cat-active";
    size_t len = 0;
    uint8_t *env = envelope(x.sender, &ev.base, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    case_begin();
    case_end(raw(&x, "cat-p1", "device.report", env, len), NU_ERR_BAD_SIGNATURE, "cat-p1");
    free(env);
    cf_client_close(&x);
}

/* ------------------------------------ hostile client sweep (fault review) */

/* A publish on a topic the sender's role may not write (retained or not):
 * the broker refuses it (PUBACK 0x87) and logs the identity and why; the
 * cloud never sees it (no audit row), nothing changes. */
static void denied_at_broker(struct cf_client *c, const char *id, const char *topic, int retain,
                             const char *why)
{
    uint8_t junk[64];
    memset(junk, 0x5a, sizeof(junk));
    case_begin();
    int rc = nu_mqtt_publish(c->m, topic, junk, sizeof(junk), 1, retain);
    cases_run++;
    CU_ASSERT_EQUAL(rc, NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(nu_test_sh("grep -F \"denied write '%s' for %s \" %s/broker/mosquitto.log | "
                               "grep -qF \"%s\"",
                               topic, id, F.dir, why),
                    0);
    CU_ASSERT_EQUAL(audit_head(), case_seq);
    char *now = state_snapshot();
    CU_ASSERT_STRING_EQUAL(now, case_state);
    free(now);
}
static void topic_programmer_on_station_req(void)
{
    denied_at_broker(&c1, "cat-p1", "nusec/v1/cloud/req/station/job.list", 0, "not allowed");
}
static void topic_programmer_on_other_programmer_req(void)
{
    denied_at_broker(&c1, "cat-p1", "nusec/v1/cloud/req/cat-p2/cert.request", 0, "not allowed");
}
static void topic_programmer_report_as_other(void)
{
    denied_at_broker(&c1, "cat-p1", "nusec/v1/events/programmer/cat-p2/device.provisioned", 0,
                     "not allowed");
}
static void topic_programmer_event_as_station(void)
{
    denied_at_broker(&c1, "cat-p1", "nusec/v1/events/station/cat-p1/job.started", 0,
                     "not allowed");
}
static void topic_programmer_own_cmd(void)
{
    denied_at_broker(&c1, "cat-p1", "nusec/v1/prog/cat-p1/cmd", 0, "not allowed");
}
static void topic_programmer_other_status(void)
{
    denied_at_broker(&c1, "cat-p1", "nusec/v1/prog/cat-p2/status", 1, "not allowed (retained)");
}
static void topic_programmer_crl(void)
{
    denied_at_broker(&c1, "cat-p1", "nusec/v1/crl/device", 1, "not allowed (retained)");
}
static void topic_programmer_revoked_list(void)
{
    denied_at_broker(&c1, "cat-p1", "nusec/v1/broker/revoked", 1, "not allowed (retained)");
}
static void topic_station_reply_to_programmer(void)
{
    denied_at_broker(&station, "station", "nusec/v1/reply/cat-p1/forged", 0, "not allowed");
}
static void topic_station_job_state(void)
{
    denied_at_broker(&station, "station", "nusec/v1/jobs/cat-active", 1, "not allowed (retained)");
}
static void topic_station_cmd_unowned(void)
{
    denied_at_broker(&station, "station", "nusec/v1/prog/nobody-9/cmd", 0, "not allowed");
}

/* Every request a programmer may send, with an empty payload, 1 KiB of
 * garbage and a well-formed envelope cut short: DECODE each time, audited,
 * nothing changes. (cat-p1: cat-p2's DECODE refusals are coalesced by the
 * flood case; these stay under the per-identity burst.) */
static void prog_op_sweep(const char *op)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    size_t len = 0;
    uint8_t junk[1024], *env = envelope(c1.sender, &req.base, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 193u + 11u);
    case_begin();
    case_end(raw(&c1, "cat-p1", op, junk, 0), NU_ERR_DECODE, "cat-p1");
    case_begin();
    case_end(raw(&c1, "cat-p1", op, junk, sizeof(junk)), NU_ERR_DECODE, "cat-p1");
    case_begin();
    case_end(raw(&c1, "cat-p1", op, env, len / 2), NU_ERR_DECODE, "cat-p1");
    cases_run -= 2; /* one named case */
    free(env);
}
#define SWEEP_CASE(fn, op)                                                                         \
    static void fn(void)                                                                           \
    {                                                                                              \
        prog_op_sweep(op);                                                                         \
    }
SWEEP_CASE(sweep_cert_request, "cert.request")
SWEEP_CASE(sweep_device_report, "device.report")
SWEEP_CASE(sweep_firmware_manifest, "firmware.manifest")
SWEEP_CASE(sweep_firmware_chunk, "firmware.chunk")
SWEEP_CASE(sweep_lease_grant, "lease.grant")
SWEEP_CASE(sweep_lease_upload, "lease.upload")
SWEEP_CASE(sweep_enroll_challenge, "enroll.challenge")
SWEEP_CASE(sweep_enroll, "enroll")

/* A well-formed station job.list envelope with `tail` appended: protobuf
 * that no decoder may accept. */
static void malformed_tail(const uint8_t *tail, size_t tail_len)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    size_t len = 0;
    uint8_t *env = envelope(station.sender, &req.base, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    uint8_t *bad = malloc(len + tail_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(bad);
    memcpy(bad, env, len);
    memcpy(bad + len, tail, tail_len);
    case_begin();
    case_end(raw(&station, "station", "job.list", bad, len + tail_len), NU_ERR_DECODE, "station");
    free(bad);
    free(env);
}
static void pb_length_past_end(void)
{
    /* field 15, length-delimited, 2^31 - 1 bytes announced */
    static const uint8_t t[] = {0x7a, 0xff, 0xff, 0xff, 0xff, 0x07, 0x00};
    malformed_tail(t, sizeof(t));
}
static void pb_varint_too_long(void)
{
    /* unknown field 2000 as a varint of 11 bytes */
    static const uint8_t t[] = {0x80, 0x7d, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
                                0xff, 0xff, 0xff, 0xff, 0x01};
    malformed_tail(t, sizeof(t));
}
static void pb_start_group(void)
{
    /* wire type 3 (start group, never closed) */
    static const uint8_t t[] = {0x83, 0x7d, 0x08, 0x01};
    malformed_tail(t, sizeof(t));
}
static void pb_tag_zero(void)
{
    static const uint8_t t[] = {0x00, 0x01};
    malformed_tail(t, sizeof(t));
}

/* An envelope packed without our encoder's checks (a hostile client's): the
 * decoder's bounds are what refuses it. free() the result. */
static uint8_t *envelope_unchecked(struct nu_envelope_sender *sender, ProtobufCMessage *body,
                                   size_t *len)
{
    struct nu_envelope_frame fr;
    uint8_t key[16] = {1, 2, 3}, *out = NULL;
    if (nu_envelope_frame_init(&fr, sender, body) ||
        nu_envelope_frame_set_idempotency_key(&fr, key, sizeof(key)))
        return NULL;
    *len = protobuf_c_message_get_packed_size(&fr.env.base);
    if ((out = malloc(*len)))
        protobuf_c_message_pack(&fr.env.base, out);
    return out;
}

/* `body` from client c as op, packed unchecked: refused with `code`. */
static void unchecked_case(struct cf_client *c, const char *id, const char *op,
                           ProtobufCMessage *body, int code)
{
    size_t len = 0;
    uint8_t *env = envelope_unchecked(c->sender, body, &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    case_begin();
    case_end(raw(c, id, op, env, len), code, id);
    free(env);
}

/* Huge repeated fields inside the payload limits: refused before any work
 * (our own encoder would not even pack them). */
static void job_create_2000_allocations(void)
{
    enum { N = 2000 };
    Nusec__V1__ProgrammerAllocation a = NUSEC__V1__PROGRAMMER_ALLOCATION__INIT;
    Nusec__V1__ProgrammerAllocation **all = calloc(N, sizeof(*all));
    CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    a.programmer_id = "cat-p1";
    a.limit = 1;
    for (size_t i = 0; i < N; i++)
        all[i] = &a;
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    req.firmware = "fw-1.0.0";
    req.quota = N;
    req.n_allocations = N;
    req.allocations = all;
    unchecked_case(&oem, "oem", "job.create", &req.base, NU_ERR_TOO_LARGE);
    free(all);
}
static void lease_upload_1000_certificates(void)
{
    enum { N = 1000 };
    static const uint8_t uid[] = {0xca, 0x7a, 0x10, 0x09};
    Nusec__V1__LeaseIssued one = NUSEC__V1__LEASE_ISSUED__INIT;
    Nusec__V1__LeaseIssued **all = calloc(N, sizeof(*all));
    CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    one.device_uid.data = (uint8_t *)uid;
    one.device_uid.len = sizeof(uid);
    one.counter = 1;
    for (size_t i = 0; i < N; i++)
        all[i] = &one;
    Nusec__V1__LeaseUploadRequest req = NUSEC__V1__LEASE_UPLOAD_REQUEST__INIT;
    req.lease_id = "lease-cat-none";
    req.n_issued = N;
    req.issued = all;
    unchecked_case(&c1, "cat-p1", "lease.upload", &req.base, NU_ERR_TOO_LARGE);
    free(all);
}

/* Garbage as a device report on the programmer's own event topic: the
 * broker lets it through (the topic is the programmer's), the cloud drops
 * it with an audit row; no answer exists for an event. */
static void event_report_garbage(void)
{
    uint8_t junk[512];
    for (size_t i = 0; i < sizeof(junk); i++)
        junk[i] = (uint8_t)(i * 37u + 3u);
    case_begin();
    CU_ASSERT_EQUAL(nu_mqtt_publish(c1.m, "nusec/v1/events/programmer/cat-p1/device.provisioned",
                                    junk, sizeof(junk), 1, 0),
                    NU_OK);
    case_end(NU_ERR_DECODE, NU_ERR_DECODE, "cat-p1");
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"op name with a quote: NOT_SUPPORTED", op_quote},
        {"op name with a space", op_space},
        {"op name with non-ASCII", op_umlaut},
        {"op name with a dollar", op_dollar},
        {"op name with a backslash", op_backslash},
        {"op name with ~ and %", op_tilde_percent},
        {"op name with a 4-byte character", op_emoji},
        {"op name of 33 characters", op_33_chars},
        {"op name of 200 characters", op_200_chars},
        {"op name of 400 characters (past the cloud's topic buffer)", op_400_chars},
        {"unknown op name", op_unknown},
        {"JSON injection in the op: no forged key", op_json_injection},
        {"JSON injection: trailing backslash", op_json_backslash},
        {"JSON injection: closing brace", op_json_brace},
        {"garbage payload", payload_garbage},
        {"empty payload", payload_empty},
        {"truncated envelope", payload_truncated},
        {"oversize job.list (79 KiB)", oversize_job_list},
        {"oversize cert.request (72 KiB)", oversize_cert_request},
        {"oversize enroll (70 KiB)", oversize_enroll},
        {"oversize firmware.sign from a non-OEM", oversize_firmware_sign_not_oem},
        {"oversize to an unknown op", oversize_unknown_op},
        {"1 MiB from a station: refused at the broker", oversize_at_broker},
        {"1 MiB firmware.sign from a programmer: refused at the broker",
         oversize_firmware_sign_at_broker},
        {"1 MiB job.create from the OEM: refused at the broker (firmware.sign only)",
         oversize_oem_job_create_at_broker},
        {"byte-rate flood from one identity: refused at the broker", byte_rate_flood_at_broker},
        {"header sender differs from the identity", sender_differs},
        {"no response topic", no_response_topic},
        {"body does not fit the op", body_does_not_fit_op},
        {"station may not job.create", role_station_job_create},
        {"programmer may not device.revoke", role_programmer_device_revoke},
        {"programmer may not enroll.token", role_programmer_enroll_token},
        {"station may not cert.request", role_station_cert_request},
        {"oem may not cert.request", role_oem_cert_request},
        {"station may not firmware.sign", role_station_firmware_sign},
        {"programmer may not job.list", role_programmer_job_list},
        {"unknown job", job_unknown},
        {"no allocation", no_allocation},
        {"no allocation in an exhausted job: NOT_AUTHORIZED first", no_allocation_in_exhausted_job},
        {"no allocation in a paused job: NOT_AUTHORIZED first", no_allocation_in_paused_job},
        {"no allocation in an expired job: NOT_AUTHORIZED first", no_allocation_in_expired_job},
        {"paused job", job_paused},
        {"expired job", job_expired},
        {"exhausted job", job_exhausted},
        {"idempotency key replayed with another CSR", idempotency_key_replayed_other_csr},
        {"same device, another key", duplicate_device_other_key},
        {"CSR signature not by its key", csr_for_wrong_key},
        {"CSR garbage", csr_garbage},
        {"CSR truncated", csr_truncated},
        {"cert.request without idempotency key", cert_request_without_idempotency_key},
        {"enroll with a wrong token", enroll_bad_token},
        {"enroll relayed by a station, no OEM anchor", enroll_relayed_unanchored},
        {"enroll.token for a role name", token_for_role_name},
        {"job.control of an unknown job", job_control_unknown_job},
        {"job.create with quota 0", job_create_zero_quota},
        {"device.revoke of an unknown device", device_revoke_unknown},
        {"programmer.revoke of an unknown programmer", programmer_revoke_unknown},
        {"firmware.manifest with a wrong token", firmware_manifest_bad_token},
        {"firmware.chunk of an unknown job", firmware_chunk_unknown_job},
        {"a refusal flood is coalesced in the audit", refusal_flood_is_coalesced},
        {"unsigned request (injected at a site broker)", sig_unsigned},
        {"cert.request signed with a CM-held key", sig_cm_held_key},
        {"genuine signature replayed with a new CSR", sig_replayed_with_new_csr},
        {"genuine signed request replayed as is", sig_replayed_same_bytes},
        {"signed request older than the window", sig_stale},
        {"forged device report", sig_forged_device_report},
        {"forged device.report request", sig_forged_device_report_request},
        {"programmer on the station's request topic: refused at the broker",
         topic_programmer_on_station_req},
        {"programmer on another programmer's request topic: refused at the broker",
         topic_programmer_on_other_programmer_req},
        {"device report in another programmer's name: refused at the broker",
         topic_programmer_report_as_other},
        {"programmer event under the station role: refused at the broker",
         topic_programmer_event_as_station},
        {"programmer writing its own command topic: refused at the broker",
         topic_programmer_own_cmd},
        {"programmer retaining another's status: refused at the broker",
         topic_programmer_other_status},
        {"programmer retaining a device CRL: refused at the broker", topic_programmer_crl},
        {"programmer retaining the revocation list: refused at the broker",
         topic_programmer_revoked_list},
        {"station publishing a reply to a programmer: refused at the broker",
         topic_station_reply_to_programmer},
        {"station retaining a job state: refused at the broker", topic_station_job_state},
        {"station commanding a programmer it does not own: refused at the broker",
         topic_station_cmd_unowned},
        {"empty/garbage/cut payloads to cert.request", sweep_cert_request},
        {"empty/garbage/cut payloads to device.report", sweep_device_report},
        {"empty/garbage/cut payloads to firmware.manifest", sweep_firmware_manifest},
        {"empty/garbage/cut payloads to firmware.chunk", sweep_firmware_chunk},
        {"empty/garbage/cut payloads to lease.grant", sweep_lease_grant},
        {"empty/garbage/cut payloads to lease.upload", sweep_lease_upload},
        {"empty/garbage/cut payloads to enroll.challenge", sweep_enroll_challenge},
        {"empty/garbage/cut payloads to enroll", sweep_enroll},
        {"protobuf length prefix past the end", pb_length_past_end},
        {"protobuf varint of 11 bytes", pb_varint_too_long},
        {"protobuf start group never closed", pb_start_group},
        {"protobuf field number 0", pb_tag_zero},
        {"job.create with 2,000 allocations", job_create_2000_allocations},
        {"lease.upload with 1,000 certificates", lease_upload_1000_certificates},
        {"garbage device report on the programmer's event topic", event_report_garbage},
        {"nusec audit verify and the Python auditor pass", auditors_pass},
        {"both auditors refuse an injected duplicate key", auditors_refuse_a_duplicate_key},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"bad-input catalogue", setup, teardown, cases}, {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_bad_inputs", suites);
}
