/*
 * ledger schema: creation, version and foreign-file refusals, reopen,
 * protective triggers, concurrent first open, locks, WAL checkpoints.
 */
#include "test_ledger_fix.h"

/* ---------------------------------------------------------------- schema */

static void test_schema_created(void)
{
    char path[512], mode[32];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct stat st;
    static const char *const cols[][14] = {
        {"jobs", "job_id", "firmware", "quota", "issued", "refused", "status", "created_at_ms",
         "expires_at_ms", "subject_template", NULL},
        {"job_allocations", "job_id", "programmer_id", "quota_limit", "issued", NULL},
        {"programmers", "programmer_id", "state", "cert_serial", "cert_pem", "package_pubkey",
         "enrolled_at_ms", "revoked_at_ms", "revoke_reason", NULL},
        {"enroll_tokens", "token_hash", "programmer_id", "expires_at_ms", "used_at_ms", NULL},
        {"certificates", "serial", "job_id", "device_uid", "pubkey_hash", "pem", "programmer_id",
         "idempotency_key", "issued_at_ms", "state", "revoked_at_ms", "revoke_reason", NULL},
        {"requests", "idempotency_key", "requester", "op", "request_hash", "response", "code",
         "created_at_ms", NULL},
        {"audit_events", "seq", "ts", "kind", "actor", "job_id", "payload", "prev_hash", "hash",
         NULL},
    };

    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), CLOUD_LEDGER_SCHEMA_VERSION);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA application_id"), CLOUD_LEDGER_APPLICATION_ID);
    sql_text(path, "PRAGMA journal_mode", mode, sizeof(mode));
    CU_ASSERT_STRING_EQUAL(mode, "wal");
    for (size_t t = 0; t < sizeof(cols) / sizeof(cols[0]); t++) {
        for (size_t c = 1; cols[t][c]; c++) {
            char sql[256];
            snprintf(sql, sizeof(sql),
                     "SELECT count(*) FROM pragma_table_info('%s') WHERE name = '%s'", cols[t][0],
                     cols[t][c]);
            if (sql_int(path, sql) != 1)
                fprintf(stderr, "missing column %s.%s\n", cols[t][0], cols[t][c]);
            CU_ASSERT_EQUAL(sql_int(path, sql), 1);
        }
    }
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    /* The chain starts with ledger.created; a fresh ledger verifies. */
    CU_ASSERT_EQUAL(head_seq(l), 1);
    CU_ASSERT_EQUAL(events(l, "ledger.created").count, 1);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_schema_newer_refused(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_verify_report r;

    cloud_ledger_close(l);
    CU_ASSERT_EQUAL(sql_exec(path, "PRAGMA user_version = 99"), SQLITE_OK);
    l = NULL;
    CU_ASSERT_EQUAL(cloud_ledger_open(path, &l), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_PTR_NULL(l);
    CU_ASSERT_EQUAL(cloud_ledger_verify_path(path, &r), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 99); /* left alone */
}

static void test_schema_foreign_file_refused(void)
{
    char path[512], mode[32];
    struct cloud_ledger *l = NULL;
    struct cloud_ledger_verify_report r;

    fresh_path(path, sizeof(path));
    CU_ASSERT_EQUAL(sql_exec(path, "CREATE TABLE station (x)"), SQLITE_OK);
    CU_ASSERT_EQUAL(cloud_ledger_open(path, &l), NU_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(l);
    sql_text(path, "PRAGMA journal_mode", mode, sizeof(mode));
    CU_ASSERT_STRING_EQUAL(mode, "delete"); /* not converted to WAL */
    CU_ASSERT_EQUAL(cloud_ledger_verify_path(path, &r), NU_ERR_CONFIG);
    nu_path_fmt(path, sizeof(path), "%s/does-not-exist.db", tmp);
    CU_ASSERT_EQUAL(cloud_ledger_verify_path(path, &r), NU_ERR_NOT_FOUND);
    CU_ASSERT_FALSE(nu_path_exists(path));
    CU_ASSERT_EQUAL(cloud_ledger_open(NULL, &l), NU_ERR_INVALID_ARG);
}

static void test_reopen_keeps_everything(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;
    struct cloud_ledger_cert c;
    struct cloud_ledger_cert_ref ref = {0};
    struct cloud_ledger_verify_report r;
    uint8_t h1[32], h2[32];
    uint64_t seq1, seq2;

    std_setup(l, 10, 10);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_audit_head(l, &seq1, h1), NU_OK);
    /* A read-only verifier sees what is still only in the WAL. */
    CU_ASSERT_EQUAL(cloud_ledger_verify_path(path, &r), NU_OK);
    CU_ASSERT_EQUAL(r.certificates, 1);
    CU_ASSERT_EQUAL(r.events, seq1);
    cloud_ledger_close(l);

    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_audit_head(l, &seq2, h2), NU_OK);
    CU_ASSERT_EQUAL(seq1, seq2);
    CU_ASSERT_EQUAL(memcmp(h1, h2, 32), 0);
    CU_ASSERT_EQUAL(job_of(l, "job-1").issued, 1);
    ref.serial = res.serial;
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &ref, &c), NU_OK);
    CU_ASSERT_EQUAL(events(l, "ledger.created").count, 1); /* not re-created */
    /* The idempotency cache survives too. */
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    CU_ASSERT_EQUAL(res.replayed, 1);
    CU_ASSERT_EQUAL(s.calls, 1);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_triggers_refuse_edits(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;

    std_setup(l, 10, 10);
    mkreq(&t, "prog-1", "job-1", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM audit_events WHERE seq = 2"), SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE audit_events SET payload = '{}' WHERE seq = 2"),
                        SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "INSERT INTO audit_events VALUES (100, 1, 'x', 'y', '',"
                                       " '', zeroblob(32), zeroblob(32))"),
                        SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM certificates"), SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE certificates SET pubkey_hash = zeroblob(32)"),
                        SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM jobs"), SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE jobs SET issued = 11"), SQLITE_OK); /* > quota */
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM certificates"), 1);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* Several processes opening one fresh file at once create the schema once
 * (and all get WAL: the switch races too). A few rounds, as it is a race. */
static void test_concurrent_first_open(void)
{
    for (int round = 0; round < 5; round++) {
        char path[512];
        struct cloud_ledger *l = NULL;
        pid_t pids[4];

        fresh_path(path, sizeof(path));
        for (int i = 0; i < 4; i++) {
            pids[i] = fork();
            CU_ASSERT_FATAL(pids[i] >= 0);
            if (pids[i] == 0) {
                struct cloud_ledger *cl = NULL;
                int rc = cloud_ledger_open(path, &cl);
                cloud_ledger_close(cl);
                _exit(rc);
            }
        }
        for (int i = 0; i < 4; i++) {
            int st = 0;
            CU_ASSERT_EQUAL(waitpid(pids[i], &st, 0), pids[i]);
            if (!WIFEXITED(st) || WEXITSTATUS(st) != NU_OK)
                fprintf(stderr, "round %d: open answered %s\n", round,
                        WIFEXITED(st) ? nu_err_name(WEXITSTATUS(st)) : "(killed)");
            CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == NU_OK);
        }
        CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
        CU_ASSERT_EQUAL(events(l, "ledger.created").count, 1);
        CU_ASSERT_TRUE(verify_ok(l));
        cloud_ledger_close(l);
    }
}

/* Another program (the sqlite3 shell: a separate process with its own
 * SQLite) counts programmer `id`, opening and closing the file. -1 on error. */
static long long outside_count(const char *path, const char *id)
{
    char cmd[1024];
    long long n = -1;
    snprintf(cmd, sizeof(cmd),
             "sqlite3 '%s' \"SELECT count(*) FROM programmers WHERE programmer_id='%s'\"", path,
             id);
    FILE *p = popen(cmd, "r");
    if (!p)
        return -1;
    if (fscanf(p, "%lld", &n) != 1)
        n = -1;
    pclose(p);
    return n;
}

/* A process that opens the ledger a second time (every cloud worker does)
 * must keep its first connection's locks: POSIX locks belong to the process
 * and die with ANY close() of the file. Lost, another process closing its
 * connection believes it is the last one, checkpoints and deletes the WAL
 * under us, and our later commits go to an unlinked file nobody else sees. */
static void test_second_open_keeps_locks(void)
{
    char path[512];
    struct cloud_ledger *l1 = open_fresh(path, sizeof(path)), *l2 = NULL;
    CU_ASSERT_EQUAL(enroll(l1, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l2), NU_OK);
    CU_ASSERT_EQUAL(outside_count(path, "prog-1"), 1); /* it closes: "the last one"? */
    CU_ASSERT_EQUAL(enroll(l1, "prog-2"), NU_OK);
    CU_ASSERT_EQUAL(outside_count(path, "prog-2"), 1);
    CU_ASSERT_EQUAL(enroll(l2, "prog-3"), NU_OK);
    CU_ASSERT_EQUAL(outside_count(path, "prog-3"), 1);
    cloud_ledger_close(l2);
    cloud_ledger_close(l1);
    CU_ASSERT_EQUAL(outside_count(path, "prog-3"), 1);
}

/* Workers commit without checkpointing; the main thread's tick copies the
 * WAL into the file: until then the main file does not grow, after it it
 * holds the rows (and a reader still sees everything either way). */
static void test_wal_checkpoint_off_the_commit_path(void)
{
    char path[512];
    struct stat before, after;
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    CU_ASSERT_EQUAL(cloud_ledger_wal_checkpoint(l), NU_OK); /* start from a flushed file */
    CU_ASSERT_EQUAL(cloud_ledger_wal_autocheckpoint(l, 0), NU_OK);
    CU_ASSERT_EQUAL_FATAL(stat(path, &before), 0);
    char payload[2048];
    memset(payload, 'x', sizeof(payload) - 1);
    payload[sizeof(payload) - 1] = '\0';
    memcpy(payload, "{\"x\":\"", 6); /* a JSON object: verify checks payloads */
    memcpy(payload + sizeof(payload) - 3, "\"}", 2);
    struct cloud_ledger_event ev = {.ts_ms = T0,
                                    .kind = "test.bulk",
                                    .actor = "tester",
                                    .payload = payload,
                                    .payload_len = strlen(payload)};
    for (int i = 0; i < 2500; i++) /* ~5 MB: past the default 1000-page autocheckpoint */
        CU_ASSERT_EQUAL_FATAL(cloud_ledger_audit_append(l, &ev, NULL), NU_OK);
    CU_ASSERT_EQUAL_FATAL(stat(path, &after), 0);
    CU_ASSERT_EQUAL(after.st_size, before.st_size);
    CU_ASSERT_EQUAL(cloud_ledger_wal_checkpoint(l), NU_OK);
    CU_ASSERT_EQUAL_FATAL(stat(path, &after), 0);
    CU_ASSERT(after.st_size > before.st_size + 4 * 1024 * 1024);
    CU_ASSERT_TRUE(verify_ok(l));
    CU_ASSERT_EQUAL(cloud_ledger_wal_autocheckpoint(NULL, 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_wal_checkpoint(NULL), NU_ERR_INVALID_ARG);
    cloud_ledger_close(l);
}

const struct nu_test_case schema_cases[] = {
    {"created with WAL, version, tables, mode 0600", test_schema_created},
    {"newer schema version refused", test_schema_newer_refused},
    {"foreign database refused and left alone", test_schema_foreign_file_refused},
    {"reopen keeps everything", test_reopen_keeps_everything},
    {"triggers refuse edits", test_triggers_refuse_edits},
    {"concurrent first open creates once", test_concurrent_first_open},
    {"a second open keeps the first one's locks", test_second_open_keeps_locks},
    {"WAL checkpoints can leave the commit path", test_wal_checkpoint_off_the_commit_path},
    {NULL, NULL},
};
