/*
 * ledger issuance: what an issue records, the decision table, idempotency,
 * quota and allocation limits, resends, rollback on sign failure, bad input,
 * refusal TTL, batches.
 */
#include "test_ledger_fix.h"

/* --------------------------------------------------------------- issuance */

static void test_issue_records_everything(void)
{
    char path[512], expect[1024], uidh[17], keyh[33], pkh[65], pemh[65], sql[256];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;
    struct cloud_ledger_cert c;
    struct cloud_ledger_cert_ref ref = {0};
    uint8_t pem_sha[32];
    struct evscan ev;

    std_setup(l, 10, 4);
    mkreq(&t, "prog-1", "job-1", 7, 1, T0 + 3);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.code, NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 0);
    CU_ASSERT_EQUAL(res.resent, 0);
    CU_ASSERT_EQUAL(res.issued, 1);
    CU_ASSERT_EQUAL(res.quota, 10);
    CU_ASSERT_EQUAL(s.calls, 1);
    CU_ASSERT_EQUAL(s.last_issued, 1); /* the callback knows the count it will commit */
    CU_ASSERT_EQUAL(strlen(res.serial), 16);
    snprintf(expect, sizeof(expect), "reply:%s:1/10", res.serial);
    CU_ASSERT_EQUAL(res.response_len, strlen(expect));
    CU_ASSERT_EQUAL(memcmp(res.response, expect, res.response_len), 0);

    ref.serial = res.serial;
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_cert_get(l, &ref, &c), NU_OK);
    CU_ASSERT_STRING_EQUAL(c.job_id, "job-1");
    CU_ASSERT_STRING_EQUAL(c.programmer_id, "prog-1");
    CU_ASSERT_EQUAL(c.device_uid_len, 8);
    CU_ASSERT_EQUAL(memcmp(c.device_uid, t.uid, 8), 0);
    CU_ASSERT_EQUAL(memcmp(c.pubkey_hash, t.r.pubkey_hash, 32), 0);
    CU_ASSERT_EQUAL(memcmp(c.idempotency_key, t.key, 16), 0);
    CU_ASSERT_STRING_EQUAL(c.pem, PEM_TEXT);
    CU_ASSERT_EQUAL(c.state, CLOUD_LEDGER_CERT_ISSUED);
    CU_ASSERT_EQUAL(c.issued_at_ms, T0 + 3);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);
    CU_ASSERT_EQUAL(alloc_issued(l, "job-1", "prog-1"), 1);

    /* The event, byte for byte as ledger.h documents it. */
    hex(t.uid, 8, uidh);
    hex(t.key, 16, keyh);
    hex(t.r.pubkey_hash, 32, pkh);
    nu_sha256(PEM_TEXT, strlen(PEM_TEXT), pem_sha);
    hex(pem_sha, 32, pemh);
    snprintf(expect, sizeof(expect),
             "{\"serial\":\"%s\",\"device_uid\":\"%s\",\"pubkey_hash\":\"%s\",\"programmer\":"
             "\"prog-1\",\"idempotency_key\":\"%s\",\"pem_sha256\":\"%s\"}",
             res.serial, uidh, pkh, keyh, pemh);
    ev = events(l, "cert.issued");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, expect);
    CU_ASSERT_STRING_EQUAL(ev.last_job, "job-1");
    CU_ASSERT_EQUAL(ev.last_ts, T0 + 3);
    /* The idempotency row holds the reply. */
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM requests WHERE requester = 'prog-1' AND code"
             " = 0 AND op = 'cert.request' AND serial = '%s' AND length(response)"
             " = %zu",
             res.serial, res.response_len);
    CU_ASSERT_EQUAL(sql_int(path, sql), 1);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* A refusal: the code, no quota used, counted on the job, audited, and the
 * same key answered the same way without a second event. */
static void expect_refusal(struct cloud_ledger *l, struct treq *t, int code, const char *job_seen)
{
    struct signer s = {0};
    struct cloud_ledger_issue_result res;
    struct cloud_ledger_job before, after;
    char want[64];
    int have_job = job_seen != NULL;
    uint64_t seq;
    struct evscan ev;

    if (have_job)
        before = job_of(l, job_seen);
    seq = head_seq(l);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t->r, dummy_sign, &s, &res), code);
    CU_ASSERT_EQUAL(res.code, code);
    CU_ASSERT_EQUAL(res.replayed, 0);
    CU_ASSERT_EQUAL(res.response_len, 0);
    CU_ASSERT_EQUAL(s.calls, 0); /* nothing was signed */
    CU_ASSERT_EQUAL(head_seq(l), seq + 1);
    ev = events(l, "cert.refused");
    CU_ASSERT_EQUAL(ev.last_seq, seq + 1);
    snprintf(want, sizeof(want), "\"code\":\"%s\"}", nu_err_name(code));
    CU_ASSERT_PTR_NOT_NULL(strstr(ev.last_payload, want));
    CU_ASSERT_STRING_EQUAL(ev.last_job, t->job);
    if (have_job) {
        after = job_of(l, job_seen);
        CU_ASSERT_EQUAL(after.issued, before.issued);
        CU_ASSERT_EQUAL(after.refused, before.refused + 1);
        CU_ASSERT_EQUAL(res.issued, after.issued);
    }
    /* Redelivery: same answer, nothing new. A conflict cannot be cached
     * (the key's entry is taken): each attempt is refused and audited anew. */
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t->r, dummy_sign, &s, &res), code);
    CU_ASSERT_EQUAL(s.calls, 0);
    if (code == NU_ERR_IDEMPOTENCY_CONFLICT) {
        CU_ASSERT_EQUAL(res.replayed, 0);
        CU_ASSERT_EQUAL(head_seq(l), seq + 2);
        return;
    }
    CU_ASSERT_EQUAL(res.replayed, 1);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1);
    if (have_job)
        CU_ASSERT_EQUAL(job_of(l, job_seen).refused, before.refused + 1);
}

static void test_issue_decision_table(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc a[2] = {alloc_of("prog-1", 2), alloc_of("prog-b", 2)};
    struct cloud_ledger_alloc a3 = alloc_of("prog-3", 1);
    struct signer s = {0};
    struct cloud_ledger_issue_result res;
    struct treq t;

    CU_ASSERT_EQUAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-2"), NU_OK); /* enrolled, but no allocation */
    CU_ASSERT_EQUAL(enroll(l, "prog-3"), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-1", 10, 0, a, 2), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-p", 10, 0, a, 1), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-c", 10, 0, a, 1), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-e", 10, T0 + 1000, a, 1), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-3", 10, 0, &a3, 1), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-3", NULL, "oem-1", T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-p", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, NULL),
                    NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-c", CLOUD_LEDGER_JOB_CLOSE, "oem-1", T0, NULL),
                    NU_OK);

    mkreq(&t, "ghost", "job-1", 1, 1, T0);
    expect_refusal(l, &t, NU_ERR_NOT_AUTHORIZED, "job-1");
    mkreq(&t, "prog-3", "job-3", 1, 1, T0);
    expect_refusal(l, &t, NU_ERR_REVOKED, "job-3");
    mkreq(&t, "prog-1", "job-9", 1, 1, T0);
    expect_refusal(l, &t, NU_ERR_NOT_FOUND, NULL);
    mkreq(&t, "prog-1", "job-p", 1, 1, T0);
    expect_refusal(l, &t, NU_ERR_JOB_NOT_ACTIVE, "job-p");
    mkreq(&t, "prog-1", "job-c", 1, 1, T0);
    expect_refusal(l, &t, NU_ERR_JOB_NOT_ACTIVE, "job-c");
    mkreq(&t, "prog-1", "job-e", 1, 1, T0 + 1000);
    expect_refusal(l, &t, NU_ERR_EXPIRED, "job-e");
    mkreq(&t, "prog-2", "job-1", 1, 1, T0);
    expect_refusal(l, &t, NU_ERR_NOT_AUTHORIZED, "job-1");

    /* Allocation limit (2 for prog-1). */
    for (unsigned d = 10; d < 12; d++) {
        mkreq(&t, "prog-1", "job-1", d, 1, T0);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    }
    mkreq(&t, "prog-1", "job-1", 12, 1, T0);
    expect_refusal(l, &t, NU_ERR_QUOTA_EXHAUSTED, "job-1");
    /* The same UID with another key, from another programmer (its own
     * idempotency key): a cloned or swapped chip. */
    mkreq(&t, "prog-b", "job-1", 10, 2, T0);
    expect_refusal(l, &t, NU_ERR_DUPLICATE_DEVICE, "job-1");
    /* The same UID with another key from the same programmer hits the
     * idempotency cache first: the key is derived from (job, UID). */
    mkreq(&t, "prog-1", "job-1", 10, 2, T0);
    expect_refusal(l, &t, NU_ERR_IDEMPOTENCY_CONFLICT, "job-1");

    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 2);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM certificates"), 2);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_idempotent_replay(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result r1, r2;
    uint64_t seq;

    std_setup(l, 10, 10);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &r1), NU_OK);
    seq = head_seq(l);
    t.r.now_ms = T0 + 86400000ull * 365; /* successes replay for ever */
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &r2), NU_OK);
    CU_ASSERT_EQUAL(r2.replayed, 1);
    CU_ASSERT_STRING_EQUAL(r1.serial, r2.serial);
    CU_ASSERT_EQUAL(r1.response_len, r2.response_len);
    CU_ASSERT_EQUAL(memcmp(r1.response, r2.response, r1.response_len), 0);
    CU_ASSERT_EQUAL(s.calls, 1);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM certificates"), 1);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM requests"), 1);
    cloud_ledger_close(l);
}

static void test_idempotency_conflict(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result r1, r2;

    std_setup(l, 10, 10);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &r1), NU_OK);
    t.r.request_hash[0] ^= 1; /* same key, another CSR */
    expect_refusal(l, &t, NU_ERR_IDEMPOTENCY_CONFLICT, "job-1");
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);
    /* The original answer is intact. */
    t.r.request_hash[0] ^= 1;
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &r2), NU_OK);
    CU_ASSERT_EQUAL(r2.replayed, 1);
    CU_ASSERT_STRING_EQUAL(r1.serial, r2.serial);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_quota_exhausts_job(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc a[2] = {alloc_of("prog-a", 2), alloc_of("prog-b", 1)};
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;
    const char *who[3] = {"prog-a", "prog-a", "prog-b"};
    struct evscan ev;

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-1", 3, 0, a, 2), NU_OK);
    for (unsigned i = 0; i < 3; i++) {
        mkreq(&t, who[i], "job-1", i, 1, T0);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
        CU_ASSERT_EQUAL(res.issued, i + 1);
        CU_ASSERT_EQUAL(job_of(l, "job-1").status,
                        i < 2 ? CLOUD_LEDGER_JOB_ACTIVE : CLOUD_LEDGER_JOB_EXHAUSTED);
    }
    ev = events(l, "job.exhausted");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"issued\":3,\"quota\":3}");
    mkreq(&t, "prog-b", "job-1", 50, 1, T0);
    expect_refusal(l, &t, NU_ERR_QUOTA_EXHAUSTED, "job-1");
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 3);
    CU_ASSERT_EQUAL(
        cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_RESUME, "oem-1", T0, NULL),
        NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_CLOSE, "oem-1", T0, NULL),
                    NU_OK);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_allocation_limit(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc a[2] = {alloc_of("prog-a", 2), alloc_of("prog-b", 3)};
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-1", 10, 0, a, 2), NU_OK);
    for (unsigned i = 0; i < 2; i++) {
        mkreq(&t, "prog-a", "job-1", i, 1, T0);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    }
    mkreq(&t, "prog-a", "job-1", 2, 1, T0);
    expect_refusal(l, &t, NU_ERR_QUOTA_EXHAUSTED, "job-1");
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_ACTIVE);
    for (unsigned i = 10; i < 13; i++) {
        mkreq(&t, "prog-b", "job-1", i, 1, T0);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    }
    mkreq(&t, "prog-b", "job-1", 13, 1, T0);
    expect_refusal(l, &t, NU_ERR_QUOTA_EXHAUSTED, "job-1");
    CU_ASSERT_EQUAL(alloc_issued(l, "job-1", "prog-a"), 2);
    CU_ASSERT_EQUAL(alloc_issued(l, "job-1", "prog-b"), 3);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 5);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_resend_same_device_same_key(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc a[2] = {alloc_of("prog-a", 1), alloc_of("prog-b", 1)};
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result r1, r2;
    struct cloud_ledger_cert_ref ref = {0};
    uint64_t seq;

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-1", 2, 0, a, 2), NU_OK);
    mkreq(&t, "prog-a", "job-1", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &r1), NU_OK);
    /* prog-a's allocation is used up, yet its own lost reply can be resent
     * from prog-b's socket (another requester, so another cache entry). */
    mkreq(&t, "prog-b", "job-1", 1, 1, T0 + 10);
    seq = head_seq(l);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &r2), NU_OK);
    CU_ASSERT_EQUAL(r2.resent, 1);
    CU_ASSERT_EQUAL(r2.replayed, 0);
    CU_ASSERT_STRING_EQUAL(r2.serial, r1.serial);
    CU_ASSERT_EQUAL(s.calls, 2);
    CU_ASSERT_EQUAL(s.resends, 1);
    CU_ASSERT_TRUE(r2.response_len > 0);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);
    CU_ASSERT_EQUAL(alloc_issued(l, "job-1", "prog-b"), 0);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1);
    CU_ASSERT_EQUAL(events(l, "cert.resent").count, 1);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &r2), NU_OK);
    CU_ASSERT_EQUAL(r2.replayed, 1);
    CU_ASSERT_EQUAL(s.calls, 2);
    /* A revoked certificate is never resent. */
    ref.serial = r1.serial;
    CU_ASSERT_EQUAL(cloud_ledger_cert_revoke(l, &ref, "recalled", "oem-1", T0 + 20), NU_OK);
    mkreq(&t, "prog-b", "job-1", 1, 1, T0 + 30);
    t.key[0] ^= 0xff; /* a fresh cache key */
    expect_refusal(l, &t, NU_ERR_DUPLICATE_DEVICE, "job-1");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_sign_failure_rolls_back(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;
    enum sign_mode bad[4] = {SIGN_FAIL, SIGN_BAD_SERIAL, SIGN_BAD_PEM, SIGN_BIG_REPLY};
    int want[4] = {NU_ERR_HSM, NU_ERR_INTERNAL, NU_ERR_INTERNAL, NU_ERR_INTERNAL};
    uint64_t seq;

    std_setup(l, 10, 10);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0);
    seq = head_seq(l);
    for (int i = 0; i < 4; i++) {
        s.mode = bad[i];
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), want[i]);
        CU_ASSERT_EQUAL(res.code, want[i]);
        CU_ASSERT_EQUAL(res.response_len, 0);
        CU_ASSERT_EQUAL(head_seq(l), seq);
        CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 0);
        CU_ASSERT_EQUAL(job_of(l, "job-1").refused, 0);
        CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM requests"), 0);
        CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM certificates"), 0);
    }
    s.mode = SIGN_OK;
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 0);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_issue_bad_input(void)
{
    char path[512], long_id[80];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;
    uint8_t big[65] = {0};
    uint64_t seq;

    std_setup(l, 10, 10);
    seq = head_seq(l);
    memset(long_id, 'p', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
#define BAD(mutate, want)                                                                          \
    do {                                                                                           \
        mkreq(&t, "prog-1", "job-1", 1, 1, T0);                                                    \
        mutate;                                                                                    \
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), want);                  \
        CU_ASSERT_EQUAL(res.code, want);                                                           \
    } while (0)
    BAD(t.r.device_uid = big; t.r.device_uid_len = 65, NU_ERR_TOO_LARGE);
    BAD(t.r.device_uid_len = 0, NU_ERR_INVALID_ARG);
    BAD(t.r.device_uid = NULL, NU_ERR_INVALID_ARG);
    BAD(t.r.idempotency_key = big; t.r.idempotency_key_len = 65, NU_ERR_TOO_LARGE);
    BAD(t.r.idempotency_key_len = 0, NU_ERR_INVALID_ARG);
    BAD(t.r.requester = "prog/1", NU_ERR_INVALID_ARG);
    BAD(t.r.requester = long_id, NU_ERR_TOO_LARGE);
    BAD(t.r.requester = NULL, NU_ERR_INVALID_ARG);
    BAD(t.r.job_id = "job\n1", NU_ERR_INVALID_ARG);
    BAD(t.r.job_id = NULL, NU_ERR_INVALID_ARG);
    BAD(t.r.now_ms = UINT64_MAX, NU_ERR_INVALID_ARG);
#undef BAD
    mkreq(&t, "prog-1", "job-1", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, NULL, &s, &res), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, NULL, dummy_sign, &s, &res), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_issue(NULL, &t.r, dummy_sign, &s, &res), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(s.calls, 0);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(job_of(l, "job-1").refused, 0);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM requests"), 0);
    cloud_ledger_close(l);
}

static void test_refusal_ttl(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;

    std_setup(l, 10, 10);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, NULL),
                    NU_OK);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0);
    expect_refusal(l, &t, NU_ERR_JOB_NOT_ACTIVE, "job-1");
    /* Within the redelivery window, the job still paused, the refusal stands... */
    t.r.now_ms = T0 + CLOUD_LEDGER_REFUSAL_TTL_MS - 1;
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_ERR_JOB_NOT_ACTIVE);
    CU_ASSERT_EQUAL(res.replayed, 1);
    /* ...after it the device is decided afresh (its key is (job, UID)-bound). */
    t.r.now_ms = T0 + CLOUD_LEDGER_REFUSAL_TTL_MS;
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_ERR_JOB_NOT_ACTIVE);
    CU_ASSERT_EQUAL(res.replayed, 0);
    /* The job resumed: at once, within the window, the cause is gone. */
    CU_ASSERT_EQUAL(
        cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_RESUME, "oem-1", t.r.now_ms, NULL),
        NU_OK);
    t.r.now_ms += 1;
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 1);
    CU_ASSERT_EQUAL(s.calls, 1);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM requests"), 1);
    /* TTL 0: refusals are not replayed at all. */
    cloud_ledger_set_refusal_ttl(l, 0);
    mkreq(&t, "prog-1", "job-9", 2, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(res.replayed, 0);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/*
 * QUOTA_EXHAUSTED stands while the quota is used up, and not once a refund
 * made room: a lease returned with units unused. The held chip that asks
 * again with the same key is then certified, within the redelivery window.
 */
static void test_quota_refusal_after_a_refund(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;
    struct cloud_ledger_lease got;

    std_setup(l, 10, 3);
    CU_ASSERT_EQUAL_FATAL(grant_std_lease(l, 2), NU_OK);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0 + 1);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    mkreq(&t, "prog-1", "job-1", 2, 1, T0 + 2); /* 1 issued + 2 leased: the allocation of 3 */
    expect_refusal(l, &t, NU_ERR_QUOTA_EXHAUSTED, "job-1");
    CU_ASSERT_EQUAL(cloud_ledger_lease_return(l, "lease-1", "prog-1", T0 + 3, &got), NU_OK);
    t.r.now_ms = T0 + 4;
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 0);
    CU_ASSERT_EQUAL(alloc_issued(l, "job-1", "prog-1"), 2);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 1); /* and the success replays as ever */
    CU_ASSERT_EQUAL(s.calls, 2);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/*
 * A lease holds its units out of the quota until its programmer returns it
 * or the OEM writes it off, with no time limit: the chips it certified exist
 * whether or not they were uploaded, so days after the lease the same units
 * are still not issued online, and its late upload is recorded. A write-off
 * is refused while the lease runs and for an hour after, gives the unused
 * units back once (audited; a repeat is told so), and makes a later upload of
 * the lease an incident.
 */
static void test_lease_holds_until_returned_or_written_off(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t, t2, t3;
    struct cloud_ledger_issue_result res;
    struct cloud_ledger_lease got;
    uint32_t reserved = 0;
    int known = 0;
    const uint64_t days = T0 + 100ull * 3600000u; /* the lease ended at T0 + 1 h */

    std_setup(l, 3, 3);
    CU_ASSERT_EQUAL_FATAL(grant_std_lease(l, 2), NU_OK);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0 + 1);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    mkreq(&t, "prog-1", "job-1", 2, 1, days);
    expect_refusal(l, &t, NU_ERR_QUOTA_EXHAUSTED, "job-1");

    mkreq(&t2, "prog-1", "job-1", 3, 1, T0 + 5);
    struct cloud_ledger_lease_cert off = {
        .lease_id = "lease-1",
        .programmer_id = "prog-1",
        .serial = "0ff1e0000001",
        .device_uid = t2.uid,
        .device_uid_len = sizeof(t2.uid),
        .pem = PEM_TEXT,
        .counter = 1,
        .issued_at_ms = T0 + 5,
    };
    memcpy(off.pubkey_hash, t2.r.pubkey_hash, sizeof(off.pubkey_hash));
    CU_ASSERT_EQUAL(cloud_ledger_lease_record(l, &off, days, &known), NU_OK);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 2);
    CU_ASSERT_EQUAL(cloud_ledger_lease_reserved(l, "job-1", &reserved), NU_OK);
    CU_ASSERT_EQUAL(reserved, 1);

    CU_ASSERT_EQUAL(cloud_ledger_lease_write_off(l, "job-1", "prog-1", "oem-1", T0 + 60000, &got),
                    NU_ERR_STATE);
    /* Ended, but its last uploads may still be on their way for an hour. */
    CU_ASSERT_EQUAL(
        cloud_ledger_lease_write_off(l, "job-1", "prog-1", "oem-1", T0 + 3600000u + 60000u, &got),
        NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_lease_write_off(l, "job-1", "prog-2", "oem-1", days, &got),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(events(l, "lease.written_off").count, 0);
    CU_ASSERT_EQUAL(cloud_ledger_lease_write_off(l, "job-1", "prog-1", "oem-1", days, &got), NU_OK);
    CU_ASSERT_STRING_EQUAL(got.state, "expired");
    struct evscan ev = events(l, "lease.written_off");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(ev.last_payload, "\"released\":1"));
    CU_ASSERT_EQUAL(cloud_ledger_lease_reserved(l, "job-1", &reserved), NU_OK);
    CU_ASSERT_EQUAL(reserved, 0);
    CU_ASSERT_EQUAL(cloud_ledger_lease_write_off(l, "job-1", "prog-1", "oem-1", days + 1, &got),
                    NU_ERR_EXISTS); /* a repeat: written off once */
    CU_ASSERT_EQUAL(events(l, "lease.written_off").count, 1);

    t.r.now_ms = days + 2; /* the unit is quota again */
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    mkreq(&t3, "prog-1", "job-1", 4, 1, T0 + 6);
    off.serial = "0ff1e0000002";
    off.counter = 2;
    off.device_uid = t3.uid;
    memcpy(off.pubkey_hash, t3.r.pubkey_hash, sizeof(off.pubkey_hash));
    CU_ASSERT_EQUAL(cloud_ledger_lease_record(l, &off, days + 3, &known), NU_ERR_LEASE_NOT_COVERED);
    CU_ASSERT_EQUAL(events(l, "lease.incident").count, 1);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 3);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_batch_outcomes(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t[9];
    struct cloud_ledger_issue_req reqs[9];
    struct cloud_ledger_issue_result *res = calloc(9, sizeof(*res));

    CU_ASSERT_PTR_NOT_NULL_FATAL(res);
    std_setup(l, 10, 10);
    for (unsigned i = 0; i < 5; i++)
        mkreq(&t[i], "prog-1", "job-1", i + 1, 1, T0);
    mkreq(&t[5], "prog-1", "job-1", 1, 1, T0); /* the first again: a replay */
    mkreq(&t[6], "prog-1", "job-9", 7, 1, T0); /* NOT_FOUND */
    mkreq(&t[7], "prog-1", "job-1", 8, 1, T0);
    t[7].r.device_uid_len = 65; /* invalid: never reaches the database */
    mkreq(&t[8], "prog-1", "job-1", 0x99, 1, T0);
    s.fail_dev_byte = 0x99; /* its signing fails: rolled back alone */
    for (unsigned i = 0; i < 9; i++)
        reqs[i] = t[i].r;
    CU_ASSERT_EQUAL(cloud_ledger_issue_batch(l, reqs, 9, dummy_sign, &s, res), NU_OK);
    for (unsigned i = 0; i < 5; i++) {
        CU_ASSERT_EQUAL(res[i].code, NU_OK);
        CU_ASSERT_EQUAL(res[i].replayed, 0);
        CU_ASSERT_EQUAL(res[i].issued, i + 1);
    }
    CU_ASSERT_EQUAL(res[5].code, NU_OK);
    CU_ASSERT_EQUAL(res[5].replayed, 1);
    CU_ASSERT_STRING_EQUAL(res[5].serial, res[0].serial);
    CU_ASSERT_EQUAL(res[6].code, NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(res[7].code, NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(res[8].code, NU_ERR_HSM);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 5);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM certificates"), 5);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM requests"), 6);
    CU_ASSERT_EQUAL(cloud_ledger_issue_batch(l, reqs, 0, dummy_sign, &s, res), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(
        cloud_ledger_issue_batch(l, reqs, CLOUD_LEDGER_BATCH_MAX + 1, dummy_sign, &s, res),
        NU_ERR_INVALID_ARG);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
    free(res);
}

/* A signer that hands out one serial twice (the device whose UID ends in
 * 0x77 gets the serial of the certificate signed just before): its insert
 * fails in the database, after the decision, as a faulty HSM could make it. */
struct dup_signer {
    struct signer s;
    char last[CLOUD_LEDGER_SERIAL_MAX + 1];
};

static int dup_sign(void *ctx, const struct cloud_ledger_issue_req *req,
                    const struct cloud_ledger_sign_info *info, struct cloud_ledger_sign_out *out)
{
    struct dup_signer *d = ctx;
    int rc = dummy_sign(&d->s, req, info, out);
    if (rc == NU_OK && !info->resend && req->device_uid[req->device_uid_len - 1] == 0x77)
        snprintf(out->serial, sizeof(out->serial), "%s", d->last);
    else if (rc == NU_OK && !info->resend)
        snprintf(d->last, sizeof(d->last), "%s", out->serial);
    return rc;
}

static void run_batch(struct cloud_ledger *l, struct treq *t, size_t n, cloud_ledger_sign_fn fn,
                      void *ctx, struct cloud_ledger_issue_result *res)
{
    struct cloud_ledger_issue_req reqs[8];
    for (size_t i = 0; i < n; i++)
        reqs[i] = t[i].r;
    CU_ASSERT_EQUAL(cloud_ledger_issue_batch(l, reqs, n, fn, ctx, res), NU_OK);
}

/*
 * Later requests of one batch see what earlier ones did (PostgreSQL reads a
 * batch ahead and keeps the job and allocation rows in memory): a resend and
 * a duplicate device after the first certificate, the allocation limit and
 * the job quota reached mid-batch, and a request whose write fails in the
 * database undone alone while the others commit.
 */
static void test_batch_sees_itself(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc a = alloc_of("prog-1", 2), a3 = alloc_of("prog-1", 10);
    struct dup_signer ds;
    struct treq t[8];
    struct cloud_ledger_issue_result res[8];

    memset(&ds, 0, sizeof(ds));
    std_setup(l, 10, 3); /* job-1: prog-1 may issue 3 */
    mkreq(&t[0], "prog-1", "job-1", 1, 1, T0);
    mkreq(&t[1], "prog-1", "job-1", 1, 1, T0); /* same device and key pair, other key */
    t[1].key[0] ^= 1;
    mkreq(&t[2], "prog-1", "job-1", 1, 2, T0); /* same device, another key pair */
    t[2].key[0] ^= 2;
    mkreq(&t[3], "prog-1", "job-1", 2, 1, T0);
    mkreq(&t[4], "prog-1", "job-1", 3, 1, T0);
    mkreq(&t[5], "prog-1", "job-1", 4, 1, T0); /* past the allocation */
    run_batch(l, t, 6, dummy_sign, &ds.s, res);
    CU_ASSERT_EQUAL(res[0].code, NU_OK);
    CU_ASSERT_EQUAL(res[1].code, NU_OK);
    CU_ASSERT_EQUAL(res[1].resent, 1);
    CU_ASSERT_STRING_EQUAL(res[1].serial, res[0].serial);
    CU_ASSERT_EQUAL(res[2].code, NU_ERR_DUPLICATE_DEVICE);
    CU_ASSERT_EQUAL(res[3].code, NU_OK);
    CU_ASSERT_EQUAL(res[4].code, NU_OK);
    CU_ASSERT_EQUAL(res[4].issued, 3);
    CU_ASSERT_EQUAL(res[5].code, NU_ERR_QUOTA_EXHAUSTED);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 3);
    CU_ASSERT_EQUAL(alloc_issued(l, "job-1", "prog-1"), 3);

    /* job-2: quota 2 reached by the second request of the batch. */
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-2", 2, 0, &a, 1), NU_OK);
    for (unsigned i = 0; i < 3; i++)
        mkreq(&t[i], "prog-1", "job-2", 10 + i, 1, T0);
    run_batch(l, t, 3, dummy_sign, &ds.s, res);
    CU_ASSERT_EQUAL(res[0].code, NU_OK);
    CU_ASSERT_EQUAL(res[1].code, NU_OK);
    CU_ASSERT_EQUAL(res[2].code, NU_ERR_QUOTA_EXHAUSTED);
    CU_ASSERT_EQUAL(job_of(l, "job-2").issued, 2);
    CU_ASSERT_EQUAL(job_of(l, "job-2").status, CLOUD_LEDGER_JOB_EXHAUSTED);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM audit_events WHERE kind ="
                                  " 'job.exhausted' AND job_id = 'job-2'"), 1);

    /* job-3: the third certificate reuses the first serial: it alone fails. */
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-3", 10, 0, &a3, 1), NU_OK);
    mkreq(&t[0], "prog-1", "job-3", 0x71, 1, T0);
    mkreq(&t[1], "prog-1", "job-3", 0x72, 1, T0);
    mkreq(&t[2], "prog-1", "job-3", 0x77, 1, T0);
    mkreq(&t[3], "prog-1", "job-3", 0x73, 1, T0);
    run_batch(l, t, 4, dup_sign, &ds, res);
    CU_ASSERT_EQUAL(res[0].code, NU_OK);
    CU_ASSERT_EQUAL(res[1].code, NU_OK);
    CU_ASSERT_EQUAL(res[2].code, NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(res[3].code, NU_OK);
    CU_ASSERT_EQUAL(res[3].issued, 3);
    CU_ASSERT_EQUAL(job_of(l, "job-3").issued, 3);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM certificates WHERE job_id = 'job-3'"), 3);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM requests"), 12);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

const struct nu_test_case issue_cases[] = {
    {"issue records cert, counters, event, reply", test_issue_records_everything},
    {"decision table: every refusal code", test_issue_decision_table},
    {"same key twice: same serial, issued once", test_idempotent_replay},
    {"same key, other request: conflict", test_idempotency_conflict},
    {"quota reached: exhausted", test_quota_exhausts_job},
    {"per-programmer allocation limit", test_allocation_limit},
    {"same device and key: resent, no quota", test_resend_same_device_same_key},
    {"sign callback failure rolls back", test_sign_failure_rolls_back},
    {"bad input changes nothing", test_issue_bad_input},
    {"stored refusals expire after the TTL, or once their cause is gone", test_refusal_ttl},
    {"a lease holds its units until returned or written off, however late",
     test_lease_holds_until_returned_or_written_off},
    {"QUOTA_EXHAUSTED is decided afresh once a refund made room",
     test_quota_refusal_after_a_refund},
    {"batch: one commit, own outcomes", test_batch_outcomes},
    {"batch: later requests see earlier ones", test_batch_sees_itself},
    {NULL, NULL},
};
