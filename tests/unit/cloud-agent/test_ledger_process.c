/*
 * ledger processes: a 4-process quota race, a crash inside the
 * transaction, BUSY when the write lock is held elsewhere, and the printed
 * issuance rate.
 */
#include "test_ledger_fix.h"

/* ------------------------------------------------------------ concurrency */

/* 4 processes, 100 distinct devices each, one job with quota 50. */
static void test_race_four_processes(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    pid_t pids[4];
    int total = 0;

    std_setup(l, 50, 50);
    cloud_ledger_close(l); /* never carry a connection across fork() */
    for (int p = 0; p < 4; p++) {
        pids[p] = fork();
        CU_ASSERT_FATAL(pids[p] >= 0);
        if (pids[p] == 0) {
            struct cloud_ledger *cl = NULL;
            struct signer s = {0};
            struct treq t;
            struct cloud_ledger_issue_result *res = malloc(sizeof(*res));
            int ok = 0;
            if (!res || cloud_ledger_open(path, &cl) != NU_OK)
                _exit(255);
            for (unsigned i = 0; i < 100; i++) {
                int rc;
                mkreq(&t, "prog-1", "job-1", (unsigned)p * 1000 + i, 1, T0 + i);
                rc = cloud_ledger_issue(cl, &t.r, dummy_sign, &s, res);
                if (rc == NU_OK)
                    ok++;
                else if (rc != NU_ERR_QUOTA_EXHAUSTED)
                    _exit(254);
            }
            cloud_ledger_close(cl);
            free(res);
            _exit(ok);
        }
    }
    for (int p = 0; p < 4; p++) {
        int st = 0;
        CU_ASSERT_EQUAL(waitpid(pids[p], &st, 0), pids[p]);
        CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) <= 100);
        if (WIFEXITED(st) && WEXITSTATUS(st) <= 100)
            total += WEXITSTATUS(st);
    }
    CU_ASSERT_EQUAL(total, 50);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM certificates"), 50);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 50);
    CU_ASSERT_EQUAL(job_of(l, "job-1").refused, 350);
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_EXHAUSTED);
    CU_ASSERT_EQUAL(events(l, "cert.issued").count, 50);
    CU_ASSERT_EQUAL(events(l, "cert.refused").count, 350);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* The process dies inside the sign callback, i.e. inside BEGIN IMMEDIATE. */
static void test_crash_inside_transaction(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_issue_result res;
    struct signer s = {0};
    struct treq t;
    uint64_t seq;
    pid_t pid;
    int st = 0;

    std_setup(l, 5, 5);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    seq = head_seq(l);
    cloud_ledger_close(l);

    mkreq(&t, "prog-1", "job-1", 2, 1, T0 + 1);
    pid = fork();
    CU_ASSERT_FATAL(pid >= 0);
    if (pid == 0) {
        struct cloud_ledger *cl = NULL;
        struct signer killer = {.mode = SIGN_KILL};
        struct cloud_ledger_issue_result *r = malloc(sizeof(*r));
        if (r && cloud_ledger_open(path, &cl) == NU_OK)
            cloud_ledger_issue(cl, &t.r, dummy_sign, &killer, r);
        _exit(0); /* not reached when the callback runs */
    }
    CU_ASSERT_EQUAL(waitpid(pid, &st, 0), pid);
    CU_ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);

    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);
    CU_ASSERT_EQUAL(alloc_issued(l, "job-1", "prog-1"), 1);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM certificates"), 1);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM requests"), 1);
    CU_ASSERT_TRUE(verify_ok(l));
    /* The same idempotency key now succeeds, exactly once. */
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 0);
    CU_ASSERT_EQUAL(res.issued, 2);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 1);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 2);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* Another agent holds the write lock past our busy timeout. */
static void test_busy_is_typed_and_harmless(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_issue_result res[2];
    struct cloud_ledger_issue_req reqs[2];
    struct signer s = {0};
    struct treq t[2];
    sqlite3 *other = NULL;
    uint64_t seq;

    std_setup(l, 10, 10);
    seq = head_seq(l);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &other), SQLITE_OK);
    CU_ASSERT_EQUAL_FATAL(sqlite3_exec(other, "BEGIN IMMEDIATE", NULL, NULL, NULL), SQLITE_OK);
    CU_ASSERT_EQUAL(cloud_ledger_set_busy_timeout(l, 50), NU_OK);
    mkreq(&t[0], "prog-1", "job-1", 1, 1, T0);
    mkreq(&t[1], "prog-1", "job-1", 2, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t[0].r, dummy_sign, &s, &res[0]), NU_ERR_BUSY);
    CU_ASSERT_EQUAL(res[0].code, NU_ERR_BUSY);
    reqs[0] = t[0].r;
    reqs[1] = t[1].r;
    CU_ASSERT_EQUAL(cloud_ledger_issue_batch(l, reqs, 2, dummy_sign, &s, res), NU_ERR_BUSY);
    CU_ASSERT_EQUAL(res[0].code, NU_ERR_BUSY);
    CU_ASSERT_EQUAL(res[1].code, NU_ERR_BUSY);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, NULL),
                    NU_ERR_BUSY);
    CU_ASSERT_EQUAL(s.calls, 0);
    /* Readers are not blocked by a writer in WAL mode. */
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_ACTIVE);
    CU_ASSERT_EQUAL(sqlite3_exec(other, "ROLLBACK", NULL, NULL, NULL), SQLITE_OK);
    sqlite3_close(other);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t[0].r, dummy_sign, &s, &res[0]), NU_OK);
    CU_ASSERT_EQUAL(res[0].replayed, 0);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* ------------------------------------------------------------------ bench */

static void test_bench_issue_rate(void)
{
    enum { SINGLE = 200, BATCHED = 2048, BATCH = 64 };
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq *t = calloc(BATCH, sizeof(*t));
    struct cloud_ledger_issue_req *reqs = calloc(BATCH, sizeof(*reqs));
    struct cloud_ledger_issue_result *res = calloc(BATCH, sizeof(*res));
    uint64_t t0, ms_single, ms_batch;
    unsigned ok = 0;

    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_PTR_NOT_NULL_FATAL(reqs);
    CU_ASSERT_PTR_NOT_NULL_FATAL(res);
    std_setup(l, 1000000, 1000000);
    t0 = nu_mono_ms();
    for (unsigned i = 0; i < SINGLE; i++) {
        mkreq(&t[0], "prog-1", "job-1", i, 1, T0);
        ok += cloud_ledger_issue(l, &t[0].r, dummy_sign, &s, &res[0]) == NU_OK;
    }
    ms_single = nu_mono_ms() - t0 + 1;
    CU_ASSERT_EQUAL(ok, SINGLE);
    t0 = nu_mono_ms();
    for (unsigned b = 0; b < BATCHED / BATCH; b++) {
        for (unsigned i = 0; i < BATCH; i++) {
            mkreq(&t[i], "prog-1", "job-1", 100000 + b * BATCH + i, 1, T0);
            reqs[i] = t[i].r;
        }
        CU_ASSERT_EQUAL(cloud_ledger_issue_batch(l, reqs, BATCH, dummy_sign, &s, res), NU_OK);
        for (unsigned i = 0; i < BATCH; i++)
            ok += res[i].code == NU_OK;
    }
    ms_batch = nu_mono_ms() - t0 + 1;
    CU_ASSERT_EQUAL(ok, SINGLE + BATCHED);
    printf("\nledger bench (synchronous=FULL, WAL, dummy signer, %s):\n"
           "  one transaction per issue: %u issues in %llu ms = %.0f/s\n"
           "  group commit, %u per txn:  %u issues in %llu ms = %.0f/s\n",
           tmp, SINGLE, (unsigned long long)ms_single, SINGLE * 1000.0 / (double)ms_single, BATCH,
           BATCHED, (unsigned long long)ms_batch, BATCHED * 1000.0 / (double)ms_batch);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
    free(res);
    free(reqs);
    free(t);
}

const struct nu_test_case process_cases[] = {
    {"race: 4 processes, quota 50, 400 devices", test_race_four_processes},
    {"crash inside the transaction", test_crash_inside_transaction},
    {"write lock held elsewhere: BUSY, nothing recorded", test_busy_is_typed_and_harmless},
    {"issuance rate (printed)", test_bench_issue_rate},
    {NULL, NULL},
};
