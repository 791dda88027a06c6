/*
 * ledger: the cloud's SQLite ledger, on real files in a temporary folder.
 * Issuance decision table, idempotency, quota under a 4-process race, crash
 * inside the transaction, audit chain (with an independent Python auditor),
 * tamper detection, and a printed issuance rate with synchronous=FULL.
 */
#include "ledger.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define T0 1700000000000ull /* "now" of every test, Unix ms */

static char tmp[256];
static unsigned db_counter;
static uint8_t pkg_pub[CLOUD_LEDGER_PUBKEY_LEN]; /* a valid P-256 point */

static const char *const PEM_TEXT = "-----BEGIN CERTIFICATE-----\n"
                                    "MIIBszCCAVmgAwIBAgIUZmFrZSBjZXJ0aWZpY2F0ZSBmb3IgdGVzdHM=\n"
                                    "-----END CERTIFICATE-----\n";

static int setup(void)
{
    struct nu_p256_key *k = NULL;
    int rc;

    if (nu_test_tmpdir("ledger", tmp, sizeof(tmp)) != 0)
        return -1;
    rc = nu_p256_key_generate(&k);
    if (rc == NU_OK)
        rc = nu_p256_key_pub(k, pkg_pub);
    nu_p256_key_destroy(k);
    return rc == NU_OK ? 0 : -1;
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

/* ------------------------------------------------------------ helpers */

static void fresh_path(char *out, size_t cap)
{
    nu_path_fmt(out, cap, "%s/ledger-%u.db", tmp, ++db_counter);
}

static struct cloud_ledger *open_fresh(char *path, size_t cap)
{
    struct cloud_ledger *l = NULL;
    fresh_path(path, cap);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    return l;
}

/* Raw SQLite access, as an auditor or an attacker with the file would have. */
static int sql_exec(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
    sqlite3_close(db);
    return rc;
}

static long long sql_int(const char *path, const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    long long v = -1;
    if (sqlite3_open(path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW)
        v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void sql_text(const char *path, const char *sql, char *out, size_t cap)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    if (sqlite3_open(path, &db) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &st, NULL) == SQLITE_OK && sqlite3_step(st) == SQLITE_ROW &&
        sqlite3_column_text(st, 0))
        snprintf(out, cap, "%s", (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    sqlite3_close(db);
}

static int enroll(struct cloud_ledger *l, const char *id)
{
    struct cloud_ledger_enrollment e = {id, "0a0b0c", PEM_TEXT, pkg_pub, "station-1",
                                        T0, NULL,     NULL,     NULL};
    return cloud_ledger_programmer_upsert(l, &e);
}

static struct cloud_ledger_alloc alloc_of(const char *id, uint32_t limit)
{
    struct cloud_ledger_alloc a;
    memset(&a, 0, sizeof(a));
    snprintf(a.programmer_id, sizeof(a.programmer_id), "%s", id);
    a.limit = limit;
    return a;
}

static int mk_job(struct cloud_ledger *l, const char *job, uint32_t quota, uint64_t expires,
                  const struct cloud_ledger_alloc *a, size_t n)
{
    struct cloud_ledger_job_spec s = {job, "app-1.0.0", "CN={uid}", quota, expires,
                                      a,   n,           "oem-1",    T0,    NULL};
    return cloud_ledger_job_create(l, &s);
}

/* One job "job-1" (quota) with programmer "prog-1" (limit). */
static void std_setup(struct cloud_ledger *l, uint32_t quota, uint32_t limit)
{
    struct cloud_ledger_alloc a = alloc_of("prog-1", limit);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-1", quota, 0, &a, 1), NU_OK);
}

/* A certificate request with its own buffers. The idempotency key follows
 * proto/README: SHA-256("nusec/v1 cert" || job || UID)[0..16]. */
struct treq {
    struct cloud_ledger_issue_req r;
    char job[CLOUD_LEDGER_ID_MAX + 1];
    char requester[CLOUD_LEDGER_ID_MAX + 1];
    uint8_t uid[8];
    uint8_t key[16];
};

static void mkreq(struct treq *t, const char *requester, const char *job, unsigned dev,
                  unsigned keyver, uint64_t now)
{
    uint8_t buf[256], digest[32];
    size_t n;

    memset(t, 0, sizeof(*t));
    snprintf(t->job, sizeof(t->job), "%s", job);
    snprintf(t->requester, sizeof(t->requester), "%s", requester);
    memcpy(t->uid, "UID", 3);
    t->uid[3] = 0;
    t->uid[4] = (uint8_t)(dev >> 24);
    t->uid[5] = (uint8_t)(dev >> 16);
    t->uid[6] = (uint8_t)(dev >> 8);
    t->uid[7] = (uint8_t)dev;
    n = (size_t)snprintf((char *)buf, sizeof(buf), "nusec/v1 cert%s", job);
    memcpy(buf + n, t->uid, sizeof(t->uid));
    nu_sha256(buf, n + sizeof(t->uid), digest);
    memcpy(t->key, digest, sizeof(t->key));
    n = (size_t)snprintf((char *)buf, sizeof(buf), "devkey-%u-%u", dev, keyver);
    nu_sha256(buf, n, t->r.pubkey_hash);
    memcpy(buf, t->uid, sizeof(t->uid));
    memcpy(buf + sizeof(t->uid), t->r.pubkey_hash, 32);
    n = sizeof(t->uid) + 32 + (size_t)snprintf((char *)buf + sizeof(t->uid) + 32, 100, "%s", job);
    nu_sha256(buf, n, t->r.request_hash);
    t->r.requester = t->requester;
    t->r.idempotency_key = t->key;
    t->r.idempotency_key_len = sizeof(t->key);
    t->r.job_id = t->job;
    t->r.device_uid = t->uid;
    t->r.device_uid_len = sizeof(t->uid);
    t->r.now_ms = now;
}

/* The dummy certificate maker. */
enum sign_mode { SIGN_OK, SIGN_FAIL, SIGN_KILL, SIGN_BAD_SERIAL, SIGN_BAD_PEM, SIGN_BIG_REPLY };

struct signer {
    enum sign_mode mode;
    unsigned calls;
    unsigned resends;
    unsigned next_serial;
    unsigned fail_dev_byte; /* SIGN_OK: fail requests whose UID ends in this byte (0: none) */
    unsigned last_issued;
};

static int dummy_sign(void *ctx, const struct cloud_ledger_issue_req *req,
                      const struct cloud_ledger_sign_info *info, struct cloud_ledger_sign_out *out)
{
    struct signer *s = ctx;
    const char *serial;

    s->calls++;
    if (s->mode == SIGN_FAIL ||
        (s->fail_dev_byte && req->device_uid[req->device_uid_len - 1] == s->fail_dev_byte))
        return NU_ERR_HSM;
    if (s->mode == SIGN_KILL)
        raise(SIGKILL); /* a crash half-way through the transaction */
    if (info->resend) {
        s->resends++;
        serial = info->serial;
    } else {
        snprintf(out->serial, sizeof(out->serial), "%08x%08x", (unsigned)getpid(),
                 ++s->next_serial);
        snprintf(out->pem, sizeof(out->pem), "%s", PEM_TEXT);
        serial = out->serial;
    }
    s->last_issued = info->issued;
    if (s->mode == SIGN_BAD_SERIAL)
        snprintf(out->serial, sizeof(out->serial), "NOT-HEX");
    if (s->mode == SIGN_BAD_PEM)
        snprintf(out->pem, sizeof(out->pem), "garbage\x01");
    out->response_len = (size_t)snprintf((char *)out->response, out->response_cap, "reply:%s:%u/%u",
                                         serial, info->issued, info->quota);
    if (s->mode == SIGN_BIG_REPLY)
        out->response_len = out->response_cap + 1;
    return NU_OK;
}

/* Audit walking. */
struct evscan {
    const char *kind;
    unsigned count;
    uint64_t last_seq;
    char last_payload[CLOUD_LEDGER_PAYLOAD_MAX + 1];
    char last_job[CLOUD_LEDGER_ID_MAX + 1];
    uint64_t last_ts;
};

static int evscan_visit(void *ctx, const struct cloud_ledger_event *ev)
{
    struct evscan *s = ctx;
    if (s->kind && strcmp(ev->kind, s->kind) != 0)
        return 0;
    s->count++;
    s->last_seq = ev->seq;
    s->last_ts = ev->ts_ms;
    snprintf(s->last_payload, sizeof(s->last_payload), "%.*s", (int)ev->payload_len, ev->payload);
    snprintf(s->last_job, sizeof(s->last_job), "%s", ev->job_id);
    return 0;
}

static struct evscan events(struct cloud_ledger *l, const char *kind)
{
    struct evscan s;
    memset(&s, 0, sizeof(s));
    s.kind = kind;
    CU_ASSERT_EQUAL(cloud_ledger_audit_list(l, 0, evscan_visit, &s), NU_OK);
    return s;
}

static uint64_t head_seq(struct cloud_ledger *l)
{
    uint64_t seq = 0;
    uint8_t h[32];
    CU_ASSERT_EQUAL(cloud_ledger_audit_head(l, &seq, h), NU_OK);
    return seq;
}

static struct cloud_ledger_job job_of(struct cloud_ledger *l, const char *id)
{
    struct cloud_ledger_job j;
    memset(&j, 0, sizeof(j));
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, id, &j, NULL, 0, NULL), NU_OK);
    return j;
}

static uint32_t alloc_issued(struct cloud_ledger *l, const char *job, const char *prog)
{
    struct cloud_ledger_job j;
    struct cloud_ledger_alloc a[8];
    size_t n = 0;
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, job, &j, a, 8, &n), NU_OK);
    for (size_t i = 0; i < n && i < 8; i++) {
        if (strcmp(a[i].programmer_id, prog) == 0)
            return a[i].issued;
    }
    return UINT32_MAX;
}

static int verify_ok(struct cloud_ledger *l)
{
    struct cloud_ledger_verify_report r;
    int rc = cloud_ledger_verify(l, &r);
    if (rc != NU_OK)
        fprintf(stderr, "verify: %s: %s\n", nu_err_name(rc), r.first_problem);
    return rc == NU_OK && r.chain_ok && r.certs_ok && r.counts_ok && r.schema_ok;
}

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

/* ------------------------------------------------------------------ jobs */

struct joblist {
    unsigned n;
    size_t allocs;
};

static int job_visit(void *ctx, const struct cloud_ledger_job *job,
                     const struct cloud_ledger_alloc *a, size_t n)
{
    struct joblist *jl = ctx;
    (void)job;
    (void)a;
    jl->n++;
    jl->allocs += n;
    return 0;
}

static int job_visit_stop(void *ctx, const struct cloud_ledger_job *job,
                          const struct cloud_ledger_alloc *a, size_t n)
{
    (void)ctx;
    (void)job;
    (void)a;
    (void)n;
    return 77;
}

static void test_job_create_get_list(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc a[2] = {alloc_of("prog-b", 4), alloc_of("prog-a", 6)};
    struct cloud_ledger_alloc out[4];
    struct cloud_ledger_job j;
    struct joblist jl = {0};
    size_t n = 0;
    struct evscan ev;

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-1", 10, T0 + 86400000, a, 2), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-2", 10, 0, a, 1), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-1", &j, out, 4, &n), NU_OK);
    CU_ASSERT_STRING_EQUAL(j.job_id, "job-1");
    CU_ASSERT_STRING_EQUAL(j.firmware, "app-1.0.0");
    CU_ASSERT_STRING_EQUAL(j.subject_template, "CN={uid}");
    CU_ASSERT_STRING_EQUAL(j.created_by, "oem-1");
    CU_ASSERT_EQUAL(j.status, CLOUD_LEDGER_JOB_ACTIVE);
    CU_ASSERT_EQUAL(j.quota, 10);
    CU_ASSERT_EQUAL(j.issued, 0);
    CU_ASSERT_EQUAL(j.created_at_ms, T0);
    CU_ASSERT_EQUAL(j.expires_at_ms, T0 + 86400000);
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT_STRING_EQUAL(out[0].programmer_id, "prog-a"); /* ordered by id */
    CU_ASSERT_EQUAL(out[0].limit, 6);
    CU_ASSERT_STRING_EQUAL(out[1].programmer_id, "prog-b");
    /* A short allocation buffer still reports the full count. */
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-1", &j, out, 1, &n), NU_OK);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-9", &j, NULL, 0, NULL), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_job_list(l, job_visit, &jl), NU_OK);
    CU_ASSERT_EQUAL(jl.n, 2);
    CU_ASSERT_EQUAL(jl.allocs, 3);
    CU_ASSERT_EQUAL(cloud_ledger_job_list(l, job_visit_stop, NULL), 77);
    /* Still usable after a visitor stopped the walk. */
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-2", &j, NULL, 0, NULL), NU_OK);

    ev = events(l, "job.created");
    CU_ASSERT_EQUAL(ev.count, 2);
    CU_ASSERT_STRING_EQUAL(ev.last_job, "job-2");
    CU_ASSERT_STRING_EQUAL(ev.last_payload,
                           "{\"firmware\":\"app-1.0.0\",\"quota\":10,\"expires_at_ms\":0,"
                           "\"subject_template\":\"CN={uid}\",\"allocations\":[{\"programmer\":"
                           "\"prog-b\",\"limit\":4}]}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_job_create_refusals(void)
{
    char path[512], long_id[100];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc ok = alloc_of("prog-1", 5);
    struct cloud_ledger_alloc two[2] = {alloc_of("prog-1", 6), alloc_of("prog-2", 5)};
    struct cloud_ledger_alloc dup[2] = {alloc_of("prog-1", 1), alloc_of("prog-1", 1)};
    struct cloud_ledger_alloc ghost = alloc_of("ghost", 1);
    struct cloud_ledger_alloc gone = alloc_of("prog-x", 1);
    struct cloud_ledger_alloc zero = alloc_of("prog-1", 0);
    struct cloud_ledger_job_spec s = {"job-t", "app-1.0.0", "bad\x01template", 5,  0,
                                      &ok,     1,           "oem-1",           T0, NULL};
    uint64_t seq;

    CU_ASSERT_EQUAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-2"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-x"), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-x", "lost", "oem-1", T0), NU_OK);
    seq = head_seq(l);

    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, two, 2), NU_ERR_INVALID_ARG); /* 11 > 10 */
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, dup, 2), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, &ghost, 1), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, &gone, 1), NU_ERR_REVOKED);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, &zero, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 0, 0, &ok, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, T0, &ok, 1), NU_ERR_INVALID_ARG); /* expired */
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, &ok, 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "job/a", 10, 0, &ok, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "", 10, 0, &ok, 1), NU_ERR_INVALID_ARG);
    memset(long_id, 'j', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    CU_ASSERT_EQUAL(mk_job(l, long_id, 10, 0, &ok, 1), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, NULL), NU_ERR_INVALID_ARG);
    /* Nothing was written, not even an event. */
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM jobs"), 0);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM job_allocations"), 0);

    CU_ASSERT_EQUAL(mk_job(l, "job-a", 11, 0, two, 2), NU_OK); /* sum == quota is fine */
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 11, 0, two, 2), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1);
    cloud_ledger_close(l);
}

static void test_job_control_transitions(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_job j;
    struct evscan ev;

    std_setup(l, 10, 10);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_RESUME, "oem-1", T0, &j),
                    NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, &j),
                    NU_OK);
    CU_ASSERT_EQUAL(j.status, CLOUD_LEDGER_JOB_PAUSED);
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_PAUSED);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, NULL),
                    NU_ERR_STATE);
    CU_ASSERT_EQUAL(
        cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_RESUME, "oem-1", T0, NULL), NU_OK);
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_ACTIVE);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_CLOSE, "oem-1", T0, NULL),
                    NU_OK);
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_CLOSED);
    for (int a = CLOUD_LEDGER_JOB_PAUSE; a <= CLOUD_LEDGER_JOB_CLOSE; a++)
        CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", (enum cloud_ledger_job_action)a,
                                                 "oem-1", T0, NULL),
                        NU_ERR_STATE); /* closed is final */
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-9", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, NULL),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(
        cloud_ledger_job_control(l, "job-1", (enum cloud_ledger_job_action)9, "oem-1", T0, NULL),
        NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(events(l, "job.paused").count, 1);
    CU_ASSERT_EQUAL(events(l, "job.resumed").count, 1);
    ev = events(l, "job.closed");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"from\":\"active\",\"to\":\"closed\"}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* ----------------------------------------------------------- programmers */

static int prog_count(void *ctx, const struct cloud_ledger_programmer *p)
{
    (void)p;
    (*(unsigned *)ctx)++;
    return 0;
}

static void test_programmer_lifecycle(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_programmer p;
    struct cloud_ledger_enrollment e = {"prog-1", "1234abcd", PEM_TEXT, pkg_pub, "station-1",
                                        T0,       NULL,       NULL,     NULL};
    uint8_t bad_pub[CLOUD_LEDGER_PUBKEY_LEN] = {0x04};
    unsigned n = 0;
    struct evscan ev;

    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_EQUAL(p.state, CLOUD_LEDGER_PROGRAMMER_ENROLLED);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, "1234abcd");
    CU_ASSERT_STRING_EQUAL(p.cert_pem, PEM_TEXT);
    CU_ASSERT_EQUAL(memcmp(p.package_pubkey, pkg_pub, sizeof(pkg_pub)), 0);
    CU_ASSERT_EQUAL(p.enrolled_at_ms, T0);
    /* Re-enrollment replaces the identity and records the previous serial. */
    e.cert_serial = "5678";
    e.now_ms = T0 + 5;
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, "5678");
    ev = events(l, "programmer.enrolled");
    CU_ASSERT_EQUAL(ev.count, 2);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"programmer\":\"prog-1\",\"serial\":\"5678\","
                                            "\"previous_serial\":\"1234abcd\"}");
    CU_ASSERT_EQUAL(enroll(l, "prog-2"), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_list(l, prog_count, &n), NU_OK);
    CU_ASSERT_EQUAL(n, 2);

    /* Bad input. */
    e.package_pubkey = bad_pub;
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    e.package_pubkey = pkg_pub;
    e.cert_serial = "ABCD"; /* upper case is not how we store serials */
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    e.cert_serial = "abcd";
    e.cert_pem = "not a pem";
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    e.cert_pem = PEM_TEXT;
    e.programmer_id = "prog 1";
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    e.programmer_id = "prog-1";
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "nobody", &p), NU_ERR_NOT_FOUND);

    /* Revocation is final. */
    CU_ASSERT_EQUAL(
        cloud_ledger_programmer_revoke(l, "prog-1", "KeyStore \"lost\"", "oem-1", T0 + 9), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_EQUAL(p.state, CLOUD_LEDGER_PROGRAMMER_REVOKED);
    CU_ASSERT_EQUAL(p.revoked_at_ms, T0 + 9);
    CU_ASSERT_STRING_EQUAL(p.revoke_reason, "KeyStore \"lost\"");
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-1", NULL, "oem-1", T0), NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_REVOKED);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "nobody", NULL, "oem-1", T0),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-2", "tab\there", "oem-1", T0),
                    NU_ERR_INVALID_ARG);
    ev = events(l, "programmer.revoked");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload,
                           "{\"programmer\":\"prog-1\",\"reason\":\"KeyStore \\\"lost\\\"\"}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static const uint8_t TOKEN[32] = "0123456789abcdef0123456789ABCDEF";

static int file_contains(const char *path, const uint8_t *needle, size_t n)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int found = 0;

    if (nu_file_read(path, NU_FILE_MAX, &buf, &len) != NU_OK)
        return 0;
    for (size_t i = 0; i + n <= len && !found; i++)
        found = memcmp(buf + i, needle, n) == 0;
    free(buf);
    return found;
}

static void test_tokens_one_time(void)
{
    char path[512], wal[600];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    uint8_t tok2[20] = "another-token-bytes";
    uint8_t hash[32];
    struct evscan ev;

    CU_ASSERT_EQUAL(
        cloud_ledger_token_add(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000, "oem-1", T0), NU_OK);
    CU_ASSERT_EQUAL(
        cloud_ledger_token_add(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000, "oem-1", T0),
        NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, TOKEN, 8, "prog-1", T0 + 1000, "oem-1", T0),
                    NU_ERR_INVALID_ARG); /* too short to be a secret */
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, tok2, sizeof(tok2), "prog-2", T0, "oem-1", T0),
                    NU_ERR_INVALID_ARG); /* already expired */
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN, sizeof(TOKEN), "prog-2", T0 + 1),
                    NU_ERR_TOKEN); /* bound to prog-1 */
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000),
                    NU_ERR_TOKEN); /* expired */
    CU_ASSERT_EQUAL(cloud_ledger_token_consume(l, tok2, sizeof(tok2), "prog-1", "st-1", T0 + 1),
                    NU_ERR_TOKEN); /* unknown */
    CU_ASSERT_EQUAL(cloud_ledger_token_consume(l, TOKEN, sizeof(TOKEN), "prog-1", "st-1", T0 + 1),
                    NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_consume(l, TOKEN, sizeof(TOKEN), "prog-1", "st-1", T0 + 2),
                    NU_ERR_TOKEN); /* one time */
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 2),
                    NU_ERR_TOKEN);

    /* Expiry on consume. */
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, tok2, sizeof(tok2), "prog-2", T0 + 10, "oem-1", T0),
                    NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_consume(l, tok2, sizeof(tok2), "prog-2", "st-1", T0 + 10),
                    NU_ERR_TOKEN);
    /* A revoked programmer cannot get or use tokens. */
    CU_ASSERT_EQUAL(enroll(l, "prog-3"), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-3", NULL, "oem-1", T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, tok2 + 1, 16, "prog-3", T0 + 10, "oem-1", T0),
                    NU_ERR_REVOKED);

    CU_ASSERT_EQUAL(events(l, "enroll.token.added").count, 2);
    CU_ASSERT_EQUAL(events(l, "enroll.token.used").count, 1);
    ev = events(l, "enroll.refused");
    CU_ASSERT_EQUAL(ev.count, 3);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"programmer\":\"prog-2\",\"code\":\"TOKEN\"}");

    /* Only the hash is stored: the token bytes appear in no file. */
    CU_ASSERT_EQUAL(nu_sha256(TOKEN, sizeof(TOKEN), hash), NU_OK);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM enroll_tokens"), 2);
    cloud_ledger_close(l);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    CU_ASSERT_EQUAL(sqlite3_open(path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_prepare_v2(db,
                                       "SELECT count(*) FROM enroll_tokens WHERE"
                                       " token_hash = ?1 AND used_at_ms IS NOT NULL",
                                       -1, &st, NULL),
                    SQLITE_OK);
    sqlite3_bind_blob(st, 1, hash, 32, SQLITE_STATIC);
    CU_ASSERT_EQUAL(sqlite3_step(st), SQLITE_ROW);
    CU_ASSERT_EQUAL(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    CU_ASSERT_FALSE(file_contains(path, TOKEN, sizeof(TOKEN)));
    nu_path_fmt(wal, sizeof(wal), "%s-wal", path);
    CU_ASSERT_FALSE(file_contains(wal, TOKEN, sizeof(TOKEN)));
}

static void test_enroll_is_atomic(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_enrollment e = {"prog-1", "abcd", PEM_TEXT, pkg_pub, "station-1",
                                        T0,       NULL,   NULL,     NULL};
    struct cloud_ledger_programmer p;
    uint64_t seq;

    CU_ASSERT_EQUAL(
        cloud_ledger_token_add(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000, "oem-1", T0), NU_OK);
    seq = head_seq(l);
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN) - 1, &e), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1); /* only enroll.refused */
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, "abcd");
    e.cert_serial = "ef01";
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, "abcd"); /* unchanged */
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* The challenge nonce: bound to one programmer, single-use, expiring; used up
 * with the token in the enrollment's transaction; the attestation recorded. */
static void test_enroll_nonce_and_attestation(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    static const char meas[] = "c10df17801000000000000000000000000000000000000000000000000000000";
    uint8_t nonce[32], other[32];
    struct cloud_ledger_enrollment e = {
        "prog-1", "abcd", PEM_TEXT, pkg_pub, "oem-1", T0 + 10, "NL3-0123456789ab", meas, nonce};
    struct cloud_ledger_programmer p;
    uint64_t seq;

    memset(nonce, 0x42, sizeof(nonce));
    memset(other, 0x43, sizeof(other));
    CU_ASSERT_EQUAL(cloud_ledger_nonce_add(l, nonce, "prog-1", T0 + 100, T0), NU_OK);
    CU_ASSERT_NOT_EQUAL(cloud_ledger_nonce_add(l, nonce, "prog-1", T0 + 100, T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_add(l, other, "prog-2", T0 + 100, T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_add(l, other, "prog-2", T0, T0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_check(l, nonce, "prog-1", T0 + 10), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_check(l, nonce, "prog-2", T0 + 10), NU_ERR_NONCE_REPLAYED);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_check(l, nonce, "prog-1", T0 + 100), NU_ERR_NONCE_EXPIRED);
    CU_ASSERT_EQUAL(
        cloud_ledger_token_add(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000, "oem-1", T0), NU_OK);
    /* another programmer's nonce: refused, audited, nothing used up */
    e.nonce = other;
    seq = head_seq(l);
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_ERR_NONCE_REPLAYED);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1); /* enroll.refused */
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_ERR_NOT_FOUND);
    /* expired */
    e.nonce = nonce;
    e.now_ms = T0 + 100;
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_ERR_NONCE_EXPIRED);
    /* in time: enrolled, the attestation recorded, nonce and token used */
    e.now_ms = T0 + 10;
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.vendor_serial, "NL3-0123456789ab");
    CU_ASSERT_STRING_EQUAL(p.firmware_measurement, meas);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_check(l, nonce, "prog-1", T0 + 11), NU_ERR_NONCE_REPLAYED);
    CU_ASSERT_STRING_EQUAL(
        events(l, "programmer.enrolled").last_payload,
        "{\"programmer\":\"prog-1\",\"serial\":\"abcd\",\"previous_serial\":\"\","
        "\"vendor_serial\":\"NL3-0123456789ab\",\"firmware_measurement\":\"c10df178"
        "01000000000000000000000000000000000000000000000000000000\"}");
    /* a measurement that is not 64 hex characters is not recorded */
    e.firmware_measurement = "abc";
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* --------------------------------------------------------------- issuance */

static void hex(const uint8_t *b, size_t n, char *out)
{
    nu_hex_encode(b, n, out, 2 * n + 1);
}

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
    CU_ASSERT_EQUAL(
        cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_RESUME, "oem-1", T0, NULL), NU_OK);
    /* Within the redelivery window the refusal stands... */
    t.r.now_ms = T0 + CLOUD_LEDGER_REFUSAL_TTL_MS - 1;
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_ERR_JOB_NOT_ACTIVE);
    CU_ASSERT_EQUAL(res.replayed, 1);
    /* ...after it the device is decided afresh (its key is (job, UID)-bound). */
    t.r.now_ms = T0 + CLOUD_LEDGER_REFUSAL_TTL_MS;
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

/* ------------------------------------------------------------------ audit */

static void test_audit_append_limits(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    char *big = malloc(CLOUD_LEDGER_PAYLOAD_MAX + 1);
    struct cloud_ledger_event ev = {0};
    uint64_t seq = 0, before;
    struct evscan scan;

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'x', CLOUD_LEDGER_PAYLOAD_MAX + 1);
    memcpy(big, "{\"x\":\"", 6); /* a JSON object of the largest size: verify checks it */
    memcpy(big + CLOUD_LEDGER_PAYLOAD_MAX - 2, "\"}", 2);
    ev.ts_ms = T0;
    ev.kind = "device.provisioned";
    ev.actor = "prog-1";
    ev.job_id = "job-1";
    ev.payload = "{\"uid\":\"caf\xc3\xa9\"}\n";
    ev.payload_len = strlen(ev.payload);
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &ev, &seq), NU_OK);
    CU_ASSERT_EQUAL(seq, 2);
    scan = events(l, "device.provisioned");
    CU_ASSERT_STRING_EQUAL(scan.last_payload, ev.payload);
    CU_ASSERT_STRING_EQUAL(scan.last_job, "job-1");
    ev.job_id = NULL;
    ev.payload = big;
    ev.payload_len = CLOUD_LEDGER_PAYLOAD_MAX;
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &ev, &seq), NU_OK);
    CU_ASSERT_EQUAL(seq, 3);
    before = head_seq(l);

#define BAD(mutate, want)                                                                          \
    do {                                                                                           \
        struct cloud_ledger_event e2 = {0};                                                        \
        e2.ts_ms = T0;                                                                             \
        e2.kind = "device.failed";                                                                 \
        e2.actor = "prog-1";                                                                       \
        e2.payload = "{}";                                                                         \
        e2.payload_len = 2;                                                                        \
        mutate;                                                                                    \
        CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &e2, NULL), want);                            \
    } while (0)
    BAD(e2.payload = big; e2.payload_len = CLOUD_LEDGER_PAYLOAD_MAX + 1, NU_ERR_TOO_LARGE);
    BAD(e2.payload = "\xc0\x80"; e2.payload_len = 2, NU_ERR_INVALID_ARG);     /* overlong NUL */
    BAD(e2.payload = "\xed\xa0\x80"; e2.payload_len = 3, NU_ERR_INVALID_ARG); /* surrogate */
    BAD(e2.payload = "a\0b"; e2.payload_len = 3, NU_ERR_INVALID_ARG);
    BAD(e2.payload = "\xe2\x82"; e2.payload_len = 2, NU_ERR_INVALID_ARG); /* truncated */
    BAD(e2.payload = "\x1b[31m"; e2.payload_len = 5, NU_ERR_INVALID_ARG); /* terminal escape */
    BAD(e2.payload = NULL; e2.payload_len = 3, NU_ERR_INVALID_ARG);
    BAD(e2.kind = "cert.issued", NU_ERR_INVALID_ARG); /* reserved for the ledger */
    BAD(e2.kind = "job.exhausted", NU_ERR_INVALID_ARG);
    BAD(e2.kind = "Device.Failed", NU_ERR_INVALID_ARG);
    BAD(e2.kind = "", NU_ERR_INVALID_ARG);
    BAD(e2.kind = NULL, NU_ERR_INVALID_ARG);
    BAD(e2.kind = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
        NU_ERR_TOO_LARGE);
    BAD(e2.actor = "a b", NU_ERR_INVALID_ARG);
    BAD(e2.job_id = "job;drop", NU_ERR_INVALID_ARG);
    BAD(e2.ts_ms = UINT64_MAX, NU_ERR_INVALID_ARG);
#undef BAD
    CU_ASSERT_EQUAL(head_seq(l), before);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
    free(big);
}

static void test_event_hash_vector(void)
{
    /* Computed independently with Python's hashlib + struct (ledger.h). */
    static const char *const v1 =
        "e8086b5c1d9dae380949411d59858c97b22bbca3d388148ad9472027897636a3";
    static const char *const v2 =
        "ab86f44e3632ee1206cb95680decb2432276a56e7b43c56616e4a9eeb7935441";
    uint8_t zero[32] = {0}, h1[32], h2[32];
    char hx[65];

    CU_ASSERT_EQUAL(cloud_ledger_event_hash(zero, 1, 1700000000000ull, "cert.issued", 11, "prog-1",
                                            6, "job-1", 5, "{\"a\":1}", 7, h1),
                    NU_OK);
    hex(h1, 32, hx);
    CU_ASSERT_STRING_EQUAL(hx, v1);
    CU_ASSERT_EQUAL(cloud_ledger_event_hash(h1, 2, 1700000000001ull, "device.provisioned", 18,
                                            "prog-1", 6, "", 0, "caf\xc3\xa9\n", 6, h2),
                    NU_OK);
    hex(h2, 32, hx);
    CU_ASSERT_STRING_EQUAL(hx, v2);
    CU_ASSERT_EQUAL(cloud_ledger_event_hash(NULL, 1, 1, "k", 1, "a", 1, "", 0, "", 0, h1),
                    NU_ERR_INVALID_ARG);
}

/* An auditor's re-implementation of ledger.h, in Python, on our file. */
static const char PY_AUDITOR[] =
    "import hashlib, json, sqlite3, struct, sys\n"
    "db = sqlite3.connect('file:%s?mode=ro' % sys.argv[1], uri=True)\n"
    "prev, expect, issued = b'\\0' * 32, 1, {}\n"
    "for seq, ts, kind, actor, job, payload, ph, h in db.execute(\n"
    "        'SELECT seq, ts, kind, actor, job_id, payload, prev_hash, hash'\n"
    "        ' FROM audit_events ORDER BY seq'):\n"
    "    assert seq == expect and ph == prev, seq\n"
    "    row = struct.pack('>QQ', seq, ts) + b''.join(\n"
    "        struct.pack('>I', len(b)) + b\n"
    "        for b in (kind.encode(), actor.encode(), job.encode(), payload.encode()))\n"
    "    assert hashlib.sha256(ph + row).digest() == h, seq\n"
    "    prev, expect = h, expect + 1\n"
    "    if kind == 'cert.issued':\n"
    "        issued[json.loads(payload)['serial']] = (job, ts, payload)\n"
    "assert db.execute('SELECT seq, hash FROM audit_head').fetchone() == (expect - 1, prev)\n"
    "n = 0\n"
    "for serial, job, uid, pkh, pem, prog, key, at in db.execute(\n"
    "        'SELECT serial, job_id, device_uid, pubkey_hash, pem, programmer_id,'\n"
    "        ' idempotency_key, issued_at_ms FROM certificates'):\n"
    "    want = ('{\"serial\":\"%s\",\"device_uid\":\"%s\",\"pubkey_hash\":\"%s\",'\n"
    "            '\"programmer\":\"%s\",\"idempotency_key\":\"%s\",\"pem_sha256\":\"%s\"}'\n"
    "            % (serial, uid.hex(), pkh.hex(), prog, key.hex(),\n"
    "               hashlib.sha256(pem.encode()).hexdigest()))\n"
    "    assert issued.pop(serial) == (job, at, want), serial\n"
    "    n += 1\n"
    "assert not issued\n"
    "print('python auditor: %d events, %d certificates: ok' % (expect - 1, n))\n";

static void test_python_auditor_agrees(void)
{
    char path[512], script[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;
    struct cloud_ledger_event ev = {0};

    std_setup(l, 10, 10);
    for (unsigned i = 0; i < 4; i++) {
        mkreq(&t, "prog-1", "job-1", i, 1, T0 + i);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    }
    mkreq(&t, "prog-1", "job-9", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_ERR_NOT_FOUND);
    ev.ts_ms = T0;
    ev.kind = "device.provisioned";
    ev.actor = "prog-1";
    ev.payload = "{\"detail\":\"na\xc3\xafve \\\"quoted\\\"\"}";
    ev.payload_len = strlen(ev.payload);
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &ev, NULL), NU_OK);
    cloud_ledger_close(l);
    nu_path_fmt(script, sizeof(script), "%s/auditor.py", tmp);
    CU_ASSERT_EQUAL_FATAL(nu_file_write_atomic(script, PY_AUDITOR, strlen(PY_AUDITOR), 0600),
                          NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("python3 '%s' '%s'", script, path), 0);
}

/* ----------------------------------------------------------------- tamper */

/* A ledger with some history, closed; returns the serial of the 2nd cert. */
static void tamper_fixture(char *path, size_t cap, char *serial2)
{
    struct cloud_ledger *l = open_fresh(path, cap);
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;

    std_setup(l, 10, 10);
    for (unsigned i = 0; i < 3; i++) {
        mkreq(&t, "prog-1", "job-1", i, 1, T0 + i);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
        if (i == 1)
            snprintf(serial2, CLOUD_LEDGER_SERIAL_MAX + 1, "%s", res.serial);
    }
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static const char DROP_TRIGGERS[] = "DROP TRIGGER audit_events_no_update;"
                                    "DROP TRIGGER audit_events_no_delete;"
                                    "DROP TRIGGER audit_events_seq;"
                                    "DROP TRIGGER certificates_no_delete;"
                                    "DROP TRIGGER certificates_fixed;";

/* Tamper with triggers dropped, put the triggers back (so only the edit is
 * left), and return what verify says, through the handle and the path. */
static int tamper(const char *path, const char *sql, struct cloud_ledger_verify_report *r)
{
    char *saved = NULL, *restore = NULL;
    struct cloud_ledger_verify_report r2;
    struct cloud_ledger *l = NULL;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    size_t len = 0, cap = 8192;
    int rc;

    restore = calloc(1, cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(restore);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_master WHERE type = 'trigger'",
                                       -1, &st, NULL),
                    SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
        len += (size_t)snprintf(restore + len, cap - len, "%s;",
                                (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    CU_ASSERT_EQUAL(sqlite3_exec(db, DROP_TRIGGERS, NULL, NULL, &saved), SQLITE_OK);
    rc = sqlite3_exec(db, sql, NULL, NULL, &saved);
    if (rc != SQLITE_OK)
        fprintf(stderr, "tamper sql failed: %s\n", saved ? saved : "?");
    CU_ASSERT_EQUAL(rc, SQLITE_OK);
    sqlite3_free(saved);
    saved = NULL;
    /* Triggers back (those never dropped answer "already exists"). */
    for (char *p = restore, *e; (e = strstr(p, "END;")) != NULL; p = e + 4) {
        char one[2048];
        snprintf(one, sizeof(one), "%.*s", (int)(e + 4 - p), p);
        sqlite3_exec(db, one, NULL, NULL, NULL);
    }
    sqlite3_close(db);
    free(restore);

    rc = cloud_ledger_verify_path(path, r);
    CU_ASSERT_EQUAL(cloud_ledger_open(path, &l), NU_OK);
    if (l) {
        CU_ASSERT_EQUAL(cloud_ledger_verify(l, &r2), rc);
        CU_ASSERT_EQUAL(r2.problems, r->problems);
        cloud_ledger_close(l);
    }
    CU_ASSERT_EQUAL(r->schema_ok, 1); /* the triggers are back: only the edit is left */
    return rc;
}

static void test_tamper_audit_payload(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path,
                           "UPDATE audit_events SET payload = replace(payload, 'prog-1',"
                           " 'prog-2') WHERE seq = 5",
                           &r),
                    NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 0);
    CU_ASSERT_EQUAL(r.first_bad_seq, 5);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "seq 5"));
}

static void test_tamper_audit_rehashed_row(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1], hx[65], sql[256];
    struct cloud_ledger_verify_report r;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    uint8_t h[32];

    /* An edited row given a correct hash of its own still breaks the next link. */
    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL_FATAL(sqlite3_prepare_v2(db,
                                             "SELECT ts, kind, actor, job_id, payload,"
                                             " prev_hash FROM audit_events WHERE seq = 4",
                                             -1, &st, NULL),
                          SQLITE_OK);
    CU_ASSERT_EQUAL_FATAL(sqlite3_step(st), SQLITE_ROW);
    CU_ASSERT_EQUAL(
        cloud_ledger_event_hash(
            sqlite3_column_blob(st, 5), 4, (uint64_t)sqlite3_column_int64(st, 0) + 1,
            (const char *)sqlite3_column_text(st, 1), (size_t)sqlite3_column_bytes(st, 1),
            (const char *)sqlite3_column_text(st, 2), (size_t)sqlite3_column_bytes(st, 2),
            (const char *)sqlite3_column_text(st, 3), (size_t)sqlite3_column_bytes(st, 3),
            (const char *)sqlite3_column_text(st, 4), (size_t)sqlite3_column_bytes(st, 4), h),
        NU_OK);
    sqlite3_finalize(st);
    sqlite3_close(db);
    hex(h, 32, hx);
    snprintf(sql, sizeof(sql), "UPDATE audit_events SET ts = ts + 1, hash = x'%s' WHERE seq = 4",
             hx);
    CU_ASSERT_EQUAL(tamper(path, sql, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 0);
    CU_ASSERT_EQUAL(r.first_bad_seq, 5);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "seq 5: prev_hash"));
}

static void test_tamper_audit_deleted_row(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path, "DELETE FROM audit_events WHERE seq = 3", &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 0);
    CU_ASSERT_EQUAL(r.first_bad_seq, 3);
}

static void test_tamper_audit_tail_cut(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    /* The last event is a cert.issued: the cut shows in the head and the pairing. */
    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path,
                           "DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM"
                           " audit_events)",
                           &r),
                    NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 0);
    CU_ASSERT_EQUAL(r.certs_ok, 0);
}

static void test_tamper_certificate_deleted(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1], sql[256];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    snprintf(sql, sizeof(sql), "DELETE FROM certificates WHERE serial = '%s'", serial);
    CU_ASSERT_EQUAL(tamper(path, sql, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.certs_ok, 0);
    CU_ASSERT_EQUAL(r.counts_ok, 0);
    CU_ASSERT_EQUAL(r.certificates, 2);
}

static void test_tamper_certificate_forged(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    /* A forger who also bumps both counters still lacks the chained event. */
    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path,
                           "INSERT INTO certificates (serial, job_id, device_uid,"
                           " pubkey_hash, pem, programmer_id, idempotency_key,"
                           " issued_at_ms, state) VALUES ('dead', 'job-1', x'0102',"
                           " zeroblob(32), 'pem', 'prog-1', x'00', 1, 'issued');"
                           "UPDATE jobs SET issued = issued + 1;"
                           "UPDATE job_allocations SET issued = issued + 1",
                           &r),
                    NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.counts_ok, 1);
    CU_ASSERT_EQUAL(r.certs_ok, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "dead"));
}

static void test_tamper_finding_is_sanitized(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path,
                           "INSERT INTO certificates (serial, job_id, device_uid,"
                           " pubkey_hash, pem, programmer_id, idempotency_key,"
                           " issued_at_ms, state) VALUES ('ab' || char(27) || '[2J',"
                           " 'job-1', x'0102', zeroblob(32), 'pem', 'prog-1', x'00', 1,"
                           " 'issued')",
                           &r),
                    NU_ERR_TAMPERED);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "ab?[2J"));
    CU_ASSERT_PTR_NULL(strchr(r.first_problem, 27));
}

static void test_tamper_certificate_edited(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1], sql[256];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    snprintf(sql, sizeof(sql),
             "UPDATE certificates SET pubkey_hash = zeroblob(32) WHERE serial"
             " = '%s'",
             serial);
    CU_ASSERT_EQUAL(tamper(path, sql, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.certs_ok, 0);
}

static void test_tamper_jobs_issued(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path, "UPDATE jobs SET issued = 1", &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.certs_ok, 1);
    CU_ASSERT_EQUAL(r.counts_ok, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "job-1"));
}

static void test_tamper_triggers_dropped(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(sql_exec(path, "DROP TRIGGER certificates_no_delete"), SQLITE_OK);
    CU_ASSERT_EQUAL(cloud_ledger_verify_path(path, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.schema_ok, 0);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.events, 6); /* created, enrolled, job.created, 3 x cert.issued */
}

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

/* ------------------------------------------- firmware delivery (schema 2) */

static void fill(uint8_t *b, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(seed + 7 * i);
}

/* A job "job-fw" with programmers ids[0..n) (enrolled here), one package
 * and token each; tokens[i] = "token-<i>". */
struct fwjob {
    struct cloud_ledger_alloc alloc[3];
    struct cloud_ledger_job_package pkg[3];
    uint8_t bytes[3][100];
    struct cloud_ledger_job_secrets sec;
    struct cloud_ledger_job_spec spec;
};

static void fwjob_make(struct fwjob *f, const char *job, const char *const *ids, size_t n)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < n; i++) {
        char token[32];
        f->alloc[i] = alloc_of(ids[i], 2);
        snprintf(token, sizeof(token), "token-%u", (unsigned)i);
        nu_sha256(token, strlen(token), f->pkg[i].token_hash);
        fill(f->bytes[i], sizeof(f->bytes[i]), (uint8_t)(i + 1));
        f->pkg[i].package = f->bytes[i];
        f->pkg[i].package_len = sizeof(f->bytes[i]);
    }
    fill(f->sec.firmware_key, sizeof(f->sec.firmware_key), 0x40);
    fill(f->sec.image_digest, sizeof(f->sec.image_digest), 0x80);
    fill(f->sec.request_hash, sizeof(f->sec.request_hash), 0xc0);
    f->sec.image_size = 1234;
    f->sec.packages = f->pkg;
    f->spec = (struct cloud_ledger_job_spec){
        .job_id = job,
        .firmware = "app-1.0.0",
        .subject_template = "CN={uid}",
        .quota = 10,
        .alloc = f->alloc,
        .n_alloc = n,
        .actor = "oem",
        .now_ms = T0,
        .secrets = &f->sec,
    };
}

struct pkglist {
    unsigned n;
    char ids[4][CLOUD_LEDGER_ID_MAX + 1];
    size_t lens[4];
    uint8_t first[4];
};

static int pkglist_visit(void *ctx, const char *id, const uint8_t *b, size_t len)
{
    struct pkglist *p = ctx;
    if (p->n < 4) {
        snprintf(p->ids[p->n], sizeof(p->ids[p->n]), "%s", id);
        p->lens[p->n] = len;
        p->first[p->n] = b[0];
    }
    p->n++;
    return 0;
}

static int access_rc(struct cloud_ledger *l, const char *job, const char *prog, const char *token)
{
    struct cloud_ledger_job j;
    struct cloud_ledger_job_keys k;
    return cloud_ledger_firmware_access(l, job, prog, (const uint8_t *)token, strlen(token), &j,
                                        &k);
}

static void test_fw_schema_v2(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    static const char *const cols[][9] = {
        {"firmware_images", "name", "image_digest", "image_size", "security_counter",
         "request_hash", "signed_by", "signed_at_ms", NULL},
        {"job_keys", "job_id", "firmware_key", "image_digest", "image_size", "request_hash",
         "created_at_ms", NULL},
        {"job_packages", "job_id", "programmer_id", "position", "token_hash", "package", NULL},
        {"programmers", "vendor_serial", "firmware_measurement", NULL},
        {"enroll_nonces", "nonce", "programmer_id", "created_at_ms", "expires_at_ms", "used_at_ms",
         NULL},
    };

    CU_ASSERT_EQUAL(CLOUD_LEDGER_SCHEMA_VERSION, 3);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 3);
    for (size_t t = 0; t < sizeof(cols) / sizeof(cols[0]); t++) {
        for (size_t c = 1; cols[t][c]; c++) {
            char sql[256];
            snprintf(sql, sizeof(sql),
                     "SELECT count(*) FROM pragma_table_info('%s') WHERE name = '%s'", cols[t][0],
                     cols[t][c]);
            CU_ASSERT_EQUAL(sql_int(path, sql), 1);
        }
    }
    /* A fresh file is created at once at version 3: no migration event. */
    CU_ASSERT_EQUAL(events(l, "ledger.migrated").count, 0);
    CU_ASSERT_STRING_EQUAL(events(l, "ledger.created").last_payload, "{\"schema\":3}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* Turn a version-3 file back into what version 1 wrote. */
static const char *const DOWNGRADE_TO_V1 =
    "DROP TABLE enroll_nonces; ALTER TABLE programmers DROP COLUMN vendor_serial;"
    "ALTER TABLE programmers DROP COLUMN firmware_measurement;"
    "DROP TRIGGER firmware_images_fixed; DROP TRIGGER firmware_images_no_delete;"
    "DROP TRIGGER job_keys_fixed; DROP TRIGGER job_keys_no_delete;"
    "DROP TRIGGER job_packages_fixed; DROP TRIGGER job_packages_no_delete;"
    "DROP TABLE job_packages; DROP TABLE job_keys; DROP TABLE firmware_images;"
    "PRAGMA user_version = 1;";

static void test_fw_migrate_from_v1(void)
{
    char path[512];
    struct cloud_ledger_verify_report r;
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    uint64_t seq;

    std_setup(l, 10, 5);
    seq = head_seq(l);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL_FATAL(sql_exec(path, DOWNGRADE_TO_V1), SQLITE_OK);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 1);
    /* An auditor can check a version-1 file before any cloud upgraded it. */
    CU_ASSERT_EQUAL(cloud_ledger_verify_path(path, &r), NU_OK);
    CU_ASSERT_EQUAL(r.schema_ok, 1);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 1); /* read-only: not migrated */

    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 3);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM job_keys"), 0);
    CU_ASSERT_EQUAL(job_of(l, "job-1").quota, 10); /* data kept */
    struct evscan ev = events(l, "ledger.migrated");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_EQUAL(ev.last_seq, seq + 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"from\":1,\"to\":3}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
    /* Opening again migrates nothing. */
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_EQUAL(events(l, "ledger.migrated").count, 1);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1);
    cloud_ledger_close(l);
}

static void test_fw_job_secrets(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    static const char *const ids[] = {"prog-b", "prog-a"}; /* not sorted: order is kept */
    struct cloud_ledger_job_keys k;
    struct cloud_ledger_job j;
    struct pkglist pl = {0};
    struct fwjob f;
    struct cloud_ledger_alloc a = alloc_of("prog-a", 1);
    uint8_t big[CLOUD_LEDGER_FW_TOKEN_MAX + 1];

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-c"), NU_OK);
    fwjob_make(&f, "job-fw", ids, 2);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_job_create(l, &f.spec), NU_OK);

    CU_ASSERT_EQUAL(cloud_ledger_job_keys_get(l, "job-fw", &k), NU_OK);
    CU_ASSERT_EQUAL(memcmp(k.firmware_key, f.sec.firmware_key, 32), 0);
    CU_ASSERT_EQUAL(memcmp(k.image_digest, f.sec.image_digest, 32), 0);
    CU_ASSERT_EQUAL(memcmp(k.request_hash, f.sec.request_hash, 32), 0);
    CU_ASSERT_EQUAL(k.image_size, 1234);
    CU_ASSERT_EQUAL(cloud_ledger_job_packages(l, "job-fw", pkglist_visit, &pl), NU_OK);
    CU_ASSERT_EQUAL(pl.n, 2);
    CU_ASSERT_STRING_EQUAL(pl.ids[0], "prog-b");
    CU_ASSERT_STRING_EQUAL(pl.ids[1], "prog-a");
    CU_ASSERT_EQUAL(pl.lens[0], 100);
    CU_ASSERT_EQUAL(pl.first[0], 1);
    CU_ASSERT_EQUAL(pl.first[1], 2);
    /* The token itself is nowhere in the file, only its hash. */
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM job_packages WHERE"
                                  " instr(token_hash, CAST('token-0' AS BLOB)) > 0"),
                    0);

    /* Event: digest, size, and per package the token id and package hash. */
    struct evscan ev = events(l, "job.packages");
    char want[160], hex[65];
    uint8_t h[32];
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_job, "job-fw");
    nu_hex_encode(f.sec.image_digest, 32, hex, sizeof(hex));
    snprintf(want, sizeof(want), "{\"image_digest\":\"%s\",\"image_size\":1234,\"packages\":[",
             hex);
    CU_ASSERT_EQUAL(strncmp(ev.last_payload, want, strlen(want)), 0);
    nu_hex_encode(f.pkg[0].token_hash, 8, hex, sizeof(hex));
    snprintf(want, sizeof(want), "{\"programmer\":\"prog-b\",\"token_id\":\"%s\"", hex);
    CU_ASSERT_PTR_NOT_NULL(strstr(ev.last_payload, want));
    nu_sha256(f.bytes[1], sizeof(f.bytes[1]), h);
    nu_hex_encode(h, 32, hex, sizeof(hex));
    CU_ASSERT_PTR_NOT_NULL(strstr(ev.last_payload, hex));

    /* Access decisions. */
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-b", "token-0"), NU_OK);
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-a", "token-1"), NU_OK);
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-a", "token-0"), NU_ERR_TOKEN); /* b's token */
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-a", "token-1x"), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-c", "token-0"), NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(access_rc(l, "job-none", "prog-a", "token-1"), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(access_rc(l, "bad id!", "prog-a", "token-1"), NU_ERR_INVALID_ARG);
    memset(big, 'x', sizeof(big));
    CU_ASSERT_EQUAL(cloud_ledger_firmware_access(l, "job-fw", "prog-a", big, sizeof(big), &j, &k),
                    NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_access(l, "job-fw", "prog-a", big, 0, &j, &k),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(
        cloud_ledger_firmware_access(l, "job-fw", "prog-a", (const uint8_t *)"token-1", 7, &j, &k),
        NU_OK);
    CU_ASSERT_STRING_EQUAL(j.job_id, "job-fw");
    CU_ASSERT_EQUAL(j.status, CLOUD_LEDGER_JOB_ACTIVE);
    CU_ASSERT_EQUAL(memcmp(k.firmware_key, f.sec.firmware_key, 32), 0);
    /* The status is the caller's business: a closed job still resolves. */
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-fw", CLOUD_LEDGER_JOB_CLOSE, "oem", T0, NULL),
                    NU_OK);
    CU_ASSERT_EQUAL(
        cloud_ledger_firmware_access(l, "job-fw", "prog-a", (const uint8_t *)"token-1", 7, &j, &k),
        NU_OK);
    CU_ASSERT_EQUAL(j.status, CLOUD_LEDGER_JOB_CLOSED);

    /* A job created without secrets has none. */
    CU_ASSERT_EQUAL(mk_job(l, "job-plain", 3, 0, &a, 1), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_job_keys_get(l, "job-plain", &k), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(access_rc(l, "job-plain", "prog-a", "token-1"), NU_ERR_NOT_AUTHORIZED);
    pl.n = 0;
    CU_ASSERT_EQUAL(cloud_ledger_job_packages(l, "job-plain", pkglist_visit, &pl), NU_OK);
    CU_ASSERT_EQUAL(pl.n, 0);
    CU_ASSERT_EQUAL(events(l, "job.packages").count, 1);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_fw_job_secrets_atomic(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    static const char *const ids[] = {"prog-a", "prog-b"};
    struct cloud_ledger_job_keys k;
    struct cloud_ledger_job j;
    struct fwjob f;
    uint64_t seq;
    uint8_t huge_byte = 0;

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    seq = head_seq(l);
    fwjob_make(&f, "job-x", ids, 2);
    f.pkg[1].package_len = 0;
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_INVALID_ARG);
    f.pkg[1].package_len = CLOUD_LEDGER_PACKAGE_MAX + 1;
    f.pkg[1].package = &huge_byte; /* never read: refused on the length */
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_TOO_LARGE);
    f.pkg[1].package = NULL;
    f.pkg[1].package_len = 10;
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_INVALID_ARG);
    fwjob_make(&f, "job-x", ids, 2);
    f.sec.image_size = 0;
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-x", &j, NULL, 0, NULL), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(head_seq(l), seq);

    /* A failure after the job row (revoked programmer) leaves no key either. */
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-b", "lost", "oem", T0), NU_OK);
    seq = head_seq(l);
    fwjob_make(&f, "job-x", ids, 2);
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_REVOKED);
    CU_ASSERT_EQUAL(cloud_ledger_job_keys_get(l, "job-x", &k), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM job_packages"), 0);
    CU_ASSERT_EQUAL(head_seq(l), seq);

    /* The same id twice: EXISTS, the first job's key stays. */
    fwjob_make(&f, "job-x", ids, 1);
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_OK);
    seq = head_seq(l);
    f.sec.firmware_key[0] ^= 0xff;
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(cloud_ledger_job_keys_get(l, "job-x", &k), NU_OK);
    CU_ASSERT_EQUAL(k.firmware_key[0], 0x40);

    /* Stored secrets do not change, and are not deleted (defense in depth). */
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE job_keys SET firmware_key = zeroblob(32)"),
                        SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM job_keys"), SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE job_packages SET token_hash = zeroblob(32)"),
                        SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM job_packages"), SQLITE_OK);
    CU_ASSERT_EQUAL(access_rc(l, "job-x", "prog-a", "token-0"), NU_OK);
    CU_ASSERT_TRUE(verify_ok(l));
    /* A dropped trigger is a verify finding. */
    CU_ASSERT_EQUAL(sql_exec(path, "DROP TRIGGER job_keys_fixed"), SQLITE_OK);
    struct cloud_ledger_verify_report r;
    CU_ASSERT_EQUAL(cloud_ledger_verify(l, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.schema_ok, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "job_keys_fixed"));
    cloud_ledger_close(l);
}

static void test_fw_firmware_records(void)
{
    char path[512], hex[65], want[256];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_firmware fw, got;
    uint64_t seq;

    memset(&fw, 0, sizeof(fw));
    snprintf(fw.name, sizeof(fw.name), "blinky-1.2.3");
    fill(fw.image_digest, 32, 3);
    fill(fw.request_hash, 32, 9);
    fw.image_size = 1048960;
    fw.security_counter = 7;
    snprintf(fw.signed_by, sizeof(fw.signed_by), "oem");
    fw.signed_at_ms = T0 + 5;
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "blinky-1.2.3", &got), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "blinky-1.2.3", &got), NU_OK);
    CU_ASSERT_EQUAL(memcmp(&got, &fw, sizeof(fw)), 0);

    struct evscan ev = events(l, "firmware.signed");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_EQUAL(ev.last_ts, T0 + 5);
    nu_hex_encode(fw.image_digest, 32, hex, sizeof(hex));
    snprintf(want, sizeof(want),
             "{\"name\":\"blinky-1.2.3\",\"digest\":\"%s\",\"size\":1048960,"
             "\"security_counter\":7}",
             hex);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, want);

    /* A version is recorded once. */
    seq = head_seq(l);
    fw.image_digest[0] ^= 1;
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "blinky-1.2.3", &got), NU_OK);
    CU_ASSERT_NOT_EQUAL(got.image_digest[0], fw.image_digest[0]);
    /* Bad input changes nothing. */
    snprintf(fw.name, sizeof(fw.name), "bad/name");
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_INVALID_ARG);
    snprintf(fw.name, sizeof(fw.name), "ok-1.0.0");
    fw.image_size = 0;
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_INVALID_ARG);
    fw.image_size = 1;
    fw.signed_by[0] = '\0';
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_INVALID_ARG);
    memset(fw.signed_by, 'a', sizeof(fw.signed_by)); /* not terminated */
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "no such!", &got), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    /* The kinds the ledger writes cannot be forged from outside. */
    struct cloud_ledger_event fake = {
        .kind = "firmware.signed", .actor = "oem", .payload = "{}", .payload_len = 2, .ts_ms = T0};
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &fake, NULL), NU_ERR_INVALID_ARG);
    fake.kind = "job.packages";
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &fake, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE firmware_images SET image_size = 1"), SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM firmware_images"), SQLITE_OK);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* ----------------------------------------------------------------- runner */

static const struct nu_test_case schema_cases[] = {
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

static const struct nu_test_case job_cases[] = {
    {"create, get, list", test_job_create_get_list},
    {"create refusals change nothing", test_job_create_refusals},
    {"control transitions", test_job_control_transitions},
    {NULL, NULL},
};

static const struct nu_test_case prog_cases[] = {
    {"programmer upsert, get, list, revoke", test_programmer_lifecycle},
    {"tokens are one-time, expire, stored hashed", test_tokens_one_time},
    {"enroll is atomic", test_enroll_is_atomic},
    {"enroll: challenge nonce and attestation record", test_enroll_nonce_and_attestation},
    {NULL, NULL},
};

static const struct nu_test_case issue_cases[] = {
    {"issue records cert, counters, event, reply", test_issue_records_everything},
    {"decision table: every refusal code", test_issue_decision_table},
    {"same key twice: same serial, issued once", test_idempotent_replay},
    {"same key, other request: conflict", test_idempotency_conflict},
    {"quota reached: exhausted", test_quota_exhausts_job},
    {"per-programmer allocation limit", test_allocation_limit},
    {"same device and key: resent, no quota", test_resend_same_device_same_key},
    {"sign callback failure rolls back", test_sign_failure_rolls_back},
    {"bad input changes nothing", test_issue_bad_input},
    {"stored refusals expire after the TTL", test_refusal_ttl},
    {"batch: one commit, own outcomes", test_batch_outcomes},
    {NULL, NULL},
};

static const struct nu_test_case fw_cases[] = {
    {"schema 2 tables on a fresh file", test_fw_schema_v2},
    {"version 1 file: verifiable, then migrated with an event", test_fw_migrate_from_v1},
    {"job secrets: stored, listed, access decisions", test_fw_job_secrets},
    {"job secrets are atomic and immutable", test_fw_job_secrets_atomic},
    {"signed image records", test_fw_firmware_records},
    {NULL, NULL},
};

static const struct nu_test_case device_cases[] = {
    {"report, list, revoke", test_cert_report_list_revoke},
    {NULL, NULL},
};

static const struct nu_test_case audit_cases[] = {
    {"append and its limits", test_audit_append_limits},
    {"canonical hash vector", test_event_hash_vector},
    {"independent Python auditor agrees", test_python_auditor_agrees},
    {NULL, NULL},
};

static const struct nu_test_case tamper_cases[] = {
    {"audit payload updated", test_tamper_audit_payload},
    {"audit row edited and rehashed", test_tamper_audit_rehashed_row},
    {"audit row deleted", test_tamper_audit_deleted_row},
    {"audit tail cut", test_tamper_audit_tail_cut},
    {"certificate deleted", test_tamper_certificate_deleted},
    {"certificate forged", test_tamper_certificate_forged},
    {"findings never carry control bytes", test_tamper_finding_is_sanitized},
    {"certificate key hash edited", test_tamper_certificate_edited},
    {"jobs.issued edited", test_tamper_jobs_issued},
    {"triggers dropped", test_tamper_triggers_dropped},
    {NULL, NULL},
};

static const struct nu_test_case process_cases[] = {
    {"race: 4 processes, quota 50, 400 devices", test_race_four_processes},
    {"crash inside the transaction", test_crash_inside_transaction},
    {"write lock held elsewhere: BUSY, nothing recorded", test_busy_is_typed_and_harmless},
    {"issuance rate (printed)", test_bench_issue_rate},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"ledger schema", setup, teardown, schema_cases},
    {"ledger jobs", setup, teardown, job_cases},
    {"ledger programmers", setup, teardown, prog_cases},
    {"ledger issuance", setup, teardown, issue_cases},
    {"ledger firmware delivery", setup, teardown, fw_cases},
    {"ledger devices", setup, teardown, device_cases},
    {"ledger audit", setup, teardown, audit_cases},
    {"ledger tamper", setup, teardown, tamper_cases},
    {"ledger processes", setup, teardown, process_cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    return nu_test_run("cloud_test_ledger", suites);
}
