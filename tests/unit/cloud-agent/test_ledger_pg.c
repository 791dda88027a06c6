/*
 * ledger on PostgreSQL: the ledger.h contract on a real cluster started by
 * the test (pg_fixture). Schema created by the owner role, agents on a
 * least-privilege role over TCP with a 0600 password file; an absent or
 * unknown schema refused with a message; issuance, replay and refusals;
 * the quota exact with several agent processes racing in batches; the chain
 * and the certificates verified by cloud_ledger_verify and by an
 * independent Python auditor (psycopg2); the agent role unable to rewrite
 * the chain or a certificate's identity.
 */
#include "ledger.h"
#include "ledger_store.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"
#include "pg_fixture.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define T0 1700000000000ull

static char tmp[256];
static struct pg_fixture pg;
static char pwfile[300];
static uint8_t pkg_pub[CLOUD_LEDGER_PUBKEY_LEN];

static const char *const PEM_TEXT = "-----BEGIN CERTIFICATE-----\n"
                                    "MIIBszCCAVmgAwIBAgIUZmFrZSBjZXJ0aWZpY2F0ZSBmb3IgdGVzdHM=\n"
                                    "-----END CERTIFICATE-----\n";

static int setup(void)
{
    struct nu_p256_key *k = NULL;
    int fd, rc;

    if (nu_test_tmpdir("ledger-pg", tmp, sizeof tmp) != 0 || pg_fixture_start(&pg) != 0)
        return -1;
    rc = nu_p256_key_generate(&k);
    if (rc == NU_OK)
        rc = nu_p256_key_pub(k, pkg_pub);
    nu_p256_key_destroy(k);
    snprintf(pwfile, sizeof pwfile, "%s/agent.pw", tmp);
    fd = open(pwfile, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    if (fd < 0 || write(fd, "agent-pw-1\n", 11) != 11)
        return -1;
    close(fd);
    setenv("PGPASSFILE", "/nonexistent", 1);
    if (pg_fixture_psql(&pg, "postgres",
                        "DO \\$\\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname ="
                        " 'nusec_agent') THEN CREATE ROLE nusec_agent LOGIN PASSWORD"
                        " 'agent-pw-1'; END IF; END \\$\\$") != 0)
        return -1;
    return rc == NU_OK ? 0 : -1;
}

static int teardown(void)
{
    pg_fixture_stop(&pg);
    nu_test_rmtree(tmp);
    return 0;
}

/* A fresh database with the schema made by the owner; *agent_uri for agents. */
static void fresh_db(const char *name, char *agent_uri, size_t cap)
{
    char owner[1100];
    CU_ASSERT_EQUAL_FATAL(pg_fixture_db(&pg, name, owner, sizeof owner), 0);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_init(owner, NULL, "nusec_agent"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_init(owner, NULL, "nusec_agent"), NU_OK); /* idempotent */
    snprintf(agent_uri, cap, "postgresql://nusec_agent@127.0.0.1:%d/%s?connect_timeout=5", pg.port,
             name);
}

static struct cloud_ledger *agent(const char *uri)
{
    struct cloud_ledger *l = NULL;
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_connect(uri, pwfile, 0, &l), NU_OK);
    return l;
}

static int enroll(struct cloud_ledger *l, const char *id)
{
    struct cloud_ledger_enrollment e = {id, "0a0b0c", PEM_TEXT, pkg_pub, "station-1", T0, NULL, NULL, NULL};
    return cloud_ledger_programmer_upsert(l, &e);
}

struct treq {
    struct cloud_ledger_issue_req r;
    char job[CLOUD_LEDGER_ID_MAX + 1];
    char requester[CLOUD_LEDGER_ID_MAX + 1];
    uint8_t uid[8];
    uint8_t key[16];
};

static void mkreq(struct treq *t, const char *requester, const char *job, unsigned dev,
                  uint64_t now)
{
    uint8_t buf[128];
    size_t n;

    memset(t, 0, sizeof(*t));
    snprintf(t->job, sizeof(t->job), "%s", job);
    snprintf(t->requester, sizeof(t->requester), "%s", requester);
    memcpy(t->uid, "UID", 4);
    for (int i = 0; i < 4; i++)
        t->uid[4 + i] = (uint8_t)(dev >> (24 - 8 * i));
    n = (size_t)snprintf((char *)buf, sizeof buf, "key/%s/%u", job, dev);
    nu_sha256(buf, n, buf + 64);
    memcpy(t->key, buf + 64, sizeof t->key);
    n = (size_t)snprintf((char *)buf, sizeof buf, "devkey-%u", dev);
    nu_sha256(buf, n, t->r.pubkey_hash);
    nu_sha256(t->r.pubkey_hash, 32, t->r.request_hash);
    t->r.requester = t->requester;
    t->r.idempotency_key = t->key;
    t->r.idempotency_key_len = sizeof t->key;
    t->r.job_id = t->job;
    t->r.device_uid = t->uid;
    t->r.device_uid_len = sizeof t->uid;
    t->r.now_ms = now;
}

static int sign(void *ctx, const struct cloud_ledger_issue_req *req,
                const struct cloud_ledger_sign_info *info, struct cloud_ledger_sign_out *out)
{
    unsigned *next = ctx;
    (void)req;
    if (!info->resend) {
        snprintf(out->serial, sizeof out->serial, "%08x%08x", (unsigned)getpid(), ++*next);
        snprintf(out->pem, sizeof out->pem, "%s", PEM_TEXT);
    }
    out->response_len = (size_t)snprintf((char *)out->response, out->response_cap, "reply:%u/%u",
                                         info->issued, info->quota);
    return NU_OK;
}

static int mk_job(struct cloud_ledger *l, const char *job, uint32_t quota,
                  const struct cloud_ledger_alloc *a, size_t n)
{
    struct cloud_ledger_job_spec s = {job, "app-1.0.0", "CN={uid}", quota, 0,
                                      a,   n,           "oem-1",    T0,    NULL};
    return cloud_ledger_job_create(l, &s);
}

static struct cloud_ledger_alloc alloc_of(const char *id, uint32_t limit)
{
    struct cloud_ledger_alloc a;
    memset(&a, 0, sizeof a);
    snprintf(a.programmer_id, sizeof a.programmer_id, "%s", id);
    a.limit = limit;
    return a;
}

static int verify_ok(const char *uri)
{
    struct cloud_ledger_verify_report r;
    int rc = cloud_ledger_verify_target(uri, pwfile, NULL, &r);
    if (rc != NU_OK)
        fprintf(stderr, "verify: %s: %s\n", nu_err_name(rc), r.first_problem);
    return rc == NU_OK && r.chain_ok && r.certs_ok && r.counts_ok && r.schema_ok;
}

/* ------------------------------------------------------------------ tests */

/* No schema, or one from the future: the agent refuses, naming the problem. */
static void test_schema_refused(void)
{
    char owner[1100], uri[1100];
    struct cloud_ledger *l = NULL;

    CU_ASSERT_EQUAL_FATAL(pg_fixture_db(&pg, "lpg_none", owner, sizeof owner), 0);
    CU_ASSERT_EQUAL(cloud_ledger_connect(owner, NULL, 0, &l), NU_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(l);
    fresh_db("lpg_future", uri, sizeof uri);
    CU_ASSERT_EQUAL_FATAL(pg_fixture_psql(&pg, "lpg_future",
                                          "UPDATE ledger_meta SET version = 99"), 0);
    CU_ASSERT_EQUAL(cloud_ledger_connect(uri, pwfile, 0, &l), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_PTR_NULL(l);
    /* Wrong password file contents: PERMISSION, not a hang or a crash. */
    snprintf(owner, sizeof owner, "%s/bad.pw", tmp);
    CU_ASSERT_EQUAL(nu_file_write_atomic(owner, "nope\n", 5, 0600), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_connect(uri, owner, 0, &l), NU_ERR_PERMISSION);
}

/* Issue, replay, refusals and verify, as on SQLite. */
static void test_issue_replay_verify(void)
{
    char uri[1100];
    struct cloud_ledger *l;
    struct cloud_ledger_alloc a = alloc_of("prog-1", 3);
    struct cloud_ledger_issue_result res;
    struct treq t;
    unsigned next = 0;

    fresh_db("lpg_issue", uri, sizeof uri);
    l = agent(uri);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-1", 3, &a, 1), NU_OK);
    for (unsigned d = 1; d <= 3; d++) {
        mkreq(&t, "prog-1", "job-1", d, T0 + d);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, sign, &next, &res), NU_OK);
        CU_ASSERT_EQUAL(res.issued, d);
        CU_ASSERT_FALSE(res.replayed);
    }
    mkreq(&t, "prog-1", "job-1", 2, T0 + 9);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, sign, &next, &res), NU_OK);
    CU_ASSERT_TRUE(res.replayed);
    CU_ASSERT_EQUAL(next, 3);
    mkreq(&t, "prog-1", "job-1", 4, T0 + 10);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, sign, &next, &res), NU_ERR_QUOTA_EXHAUSTED);
    mkreq(&t, "prog-2", "job-1", 5, T0 + 11);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, sign, &next, &res), NU_ERR_NOT_AUTHORIZED);
    cloud_ledger_close(l);
    CU_ASSERT_TRUE(verify_ok(uri));
}

/* The agent role cannot rewrite history, even with SQL of its own. */
static void test_least_privilege(void)
{
    char uri[1100];
    struct cloud_ledger *l;
    struct ledger_store *s = NULL;
    struct cloud_ledger_alloc a = alloc_of("prog-1", 5);
    struct cloud_ledger_issue_result res;
    struct treq t;
    unsigned next = 0;

    fresh_db("lpg_priv", uri, sizeof uri);
    l = agent(uri);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-1", 5, &a, 1), NU_OK);
    mkreq(&t, "prog-1", "job-1", 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, sign, &next, &res), NU_OK);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL_FATAL(ledger_store_open(uri, pwfile, &s), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_exec(s, "UPDATE audit_events SET ts = 0"), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(ledger_store_exec(s, "DELETE FROM audit_events"), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(ledger_store_exec(s, "UPDATE certificates SET pem = 'x'"), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(ledger_store_exec(s, "UPDATE certificates SET programmer_id = 'p'"),
                    NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(ledger_store_exec(s, "DELETE FROM certificates"), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(ledger_store_exec(s, "UPDATE ledger_meta SET version = 1"), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(ledger_store_exec(s, "DROP TABLE audit_events"), NU_ERR_PERMISSION);
    /* What it may do (state columns) still works. */
    CU_ASSERT_EQUAL(ledger_store_exec(s, "UPDATE certificates SET detail = detail"), NU_OK);
    ledger_store_close(s);
    CU_ASSERT_TRUE(verify_ok(uri));
}

#define RACE_AGENTS 4
#define RACE_EACH 40
#define RACE_BATCH 8
#define RACE_QUOTA 70

/* One agent process: RACE_EACH requests (devices shared with the others, so
 * keys collide across agents), in batches; exit 0 unless something failed
 * that is not a refusal. */
static int race_child(const char *uri, int who)
{
    struct cloud_ledger *l = NULL;
    struct treq t[RACE_BATCH];
    struct cloud_ledger_issue_req r[RACE_BATCH];
    struct cloud_ledger_issue_result *res = calloc(RACE_BATCH, sizeof *res);
    unsigned next = 0;
    int bad = 0;

    if (!res || cloud_ledger_connect(uri, pwfile, 0, &l) != NU_OK)
        return 2;
    for (int i = 0; i < RACE_EACH; i += RACE_BATCH) {
        for (int k = 0; k < RACE_BATCH; k++) {
            unsigned dev = (unsigned)((who * 29 + i + k) % 120);
            mkreq(&t[k], who % 2 ? "prog-1" : "prog-2", "job-1", dev, T0 + (unsigned)i);
            r[k] = t[k].r;
        }
        int rc = cloud_ledger_issue_batch(l, r, RACE_BATCH, sign, &next, res);
        if (rc == NU_ERR_BUSY)
            continue; /* a deadlock victim would land here: counted below by the parent */
        if (rc != NU_OK)
            bad = 3;
        for (int k = 0; k < RACE_BATCH; k++)
            if (res[k].code != NU_OK && res[k].code != NU_ERR_QUOTA_EXHAUSTED &&
                res[k].code != NU_ERR_JOB_NOT_ACTIVE)
                bad = 4;
    }
    cloud_ledger_close(l);
    free(res);
    return bad;
}

/* N agent processes, one database, batches racing for one quota: exactly the
 * quota is issued, the counters agree, the chain verifies. */
static void test_quota_race(void)
{
    char uri[1100];
    struct cloud_ledger *l;
    struct cloud_ledger_alloc a[2] = {alloc_of("prog-1", 40), alloc_of("prog-2", 30)};
    struct cloud_ledger_job job;
    pid_t pids[RACE_AGENTS];
    int failed = 0;

    fresh_db("lpg_race", uri, sizeof uri);
    l = agent(uri);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-2"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-1", RACE_QUOTA, a, 2), NU_OK);
    cloud_ledger_close(l);
    for (int i = 0; i < RACE_AGENTS; i++) {
        pids[i] = fork();
        CU_ASSERT_FATAL(pids[i] >= 0);
        if (pids[i] == 0)
            _exit(race_child(uri, i));
    }
    for (int i = 0; i < RACE_AGENTS; i++) {
        int st = 0;
        waitpid(pids[i], &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
            fprintf(stderr, "race agent %d: status %d\n", i, st);
            failed++;
        }
    }
    CU_ASSERT_EQUAL(failed, 0);
    l = agent(uri);
    memset(&job, 0, sizeof job);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-1", &job, NULL, 0, NULL), NU_OK);
    CU_ASSERT_EQUAL(job.issued, RACE_QUOTA);
    CU_ASSERT_EQUAL(job.status, CLOUD_LEDGER_JOB_EXHAUSTED);
    cloud_ledger_close(l);
    CU_ASSERT_TRUE(verify_ok(uri));
}

/* A signer that kills its own process at its `kill_at`-th call: an agent
 * dying mid-batch, inside the transaction, after the HSM signed some. */
struct killer {
    unsigned next;
    unsigned calls;
    unsigned kill_at;
};

static int kill_sign(void *ctx, const struct cloud_ledger_issue_req *req,
                     const struct cloud_ledger_sign_info *info, struct cloud_ledger_sign_out *out)
{
    struct killer *k = ctx;
    if (k->kill_at && ++k->calls == k->kill_at)
        raise(SIGKILL);
    return sign(&k->next, req, info, out);
}

#define KILL_ROUNDS 6
#define KILL_BATCH 8

/* Every round a fresh agent process commits one batch (acknowledged: its
 * serials go to shared memory) and dies in the middle of the next. In the
 * end: every acknowledged certificate is there, nothing of a killed batch
 * is, the killed batches' keys then issue afresh (not replays), nothing twice,
 * the chain verifies. */
static void test_sigkill_mid_batch(void)
{
    char uri[1100];
    struct cloud_ledger *l;
    struct cloud_ledger_alloc a = alloc_of("prog-1", 1000);
    char(*acked)[CLOUD_LEDGER_SERIAL_MAX + 1] =
        mmap(NULL, KILL_ROUNDS * KILL_BATCH * (CLOUD_LEDGER_SERIAL_MAX + 1),
             PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    struct cloud_ledger_issue_result *res = calloc(KILL_BATCH, sizeof *res);
    struct treq t[KILL_BATCH];
    struct cloud_ledger_issue_req r[KILL_BATCH];
    struct cloud_ledger_job job;
    unsigned acks = 0;

    CU_ASSERT_FATAL(acked != MAP_FAILED && res);
    fresh_db("lpg_kill", uri, sizeof uri);
    l = agent(uri);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-1", 1000, &a, 1), NU_OK);
    cloud_ledger_close(l);
    for (unsigned round = 0; round < KILL_ROUNDS; round++) {
        pid_t pid = fork();
        CU_ASSERT_FATAL(pid >= 0);
        if (pid == 0) {
            struct killer k = {0};
            struct cloud_ledger *cl = NULL;
            if (cloud_ledger_connect(uri, pwfile, 0, &cl) != NU_OK)
                _exit(2);
            for (int half = 0; half < 2; half++) {
                for (unsigned i = 0; i < KILL_BATCH; i++) {
                    mkreq(&t[i], "prog-1", "job-1", 1000 * round + 100 * (unsigned)half + i, T0);
                    r[i] = t[i].r;
                }
                k.calls = 0;
                k.kill_at = half ? 1 + round % KILL_BATCH : 0;
                if (cloud_ledger_issue_batch(cl, r, KILL_BATCH, kill_sign, &k, res) != NU_OK)
                    _exit(3);
                for (unsigned i = 0; i < KILL_BATCH; i++)
                    if (res[i].code == NU_OK)
                        snprintf(acked[round * KILL_BATCH + i], CLOUD_LEDGER_SERIAL_MAX + 1, "%s",
                                 res[i].serial);
            }
            _exit(4); /* not reached: the second batch kills us */
        }
        int st = 0;
        waitpid(pid, &st, 0);
        CU_ASSERT_TRUE(WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL);
    }
    l = agent(uri);
    for (unsigned i = 0; i < KILL_ROUNDS * KILL_BATCH; i++) {
        struct cloud_ledger_cert c;
        struct cloud_ledger_cert_ref ref = {acked[i], NULL, NULL, 0};
        CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &ref, &c), NU_OK);
        acks += acked[i][0] != 0;
    }
    CU_ASSERT_EQUAL(acks, KILL_ROUNDS * KILL_BATCH);
    memset(&job, 0, sizeof job);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-1", &job, NULL, 0, NULL), NU_OK);
    CU_ASSERT_EQUAL(job.issued, acks); /* nothing of a killed batch */
    /* The killed batches' devices: issued now, fresh, each once (one
     * signer for all rounds: its serials must not repeat). */
    struct killer k = {0};
    for (unsigned round = 0; round < KILL_ROUNDS; round++) {
        for (unsigned i = 0; i < KILL_BATCH; i++) {
            mkreq(&t[i], "prog-1", "job-1", 1000 * round + 100 + i, T0);
            r[i] = t[i].r;
        }
        CU_ASSERT_EQUAL(cloud_ledger_issue_batch(l, r, KILL_BATCH, kill_sign, &k, res), NU_OK);
        for (unsigned i = 0; i < KILL_BATCH; i++) {
            CU_ASSERT_EQUAL(res[i].code, NU_OK);
            CU_ASSERT_FALSE(res[i].replayed);
        }
    }
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-1", &job, NULL, 0, NULL), NU_OK);
    CU_ASSERT_EQUAL(job.issued, 2 * KILL_ROUNDS * KILL_BATCH);
    cloud_ledger_close(l);
    free(res);
    munmap(acked, KILL_ROUNDS * KILL_BATCH * (CLOUD_LEDGER_SERIAL_MAX + 1));
    CU_ASSERT_TRUE(verify_ok(uri));
}

/* The auditor of ledger.h, in Python with psycopg2, on the PostgreSQL rows. */
static const char PY_AUDITOR_PG[] =
    "import hashlib, json, struct, sys, psycopg2\n"
    "db = psycopg2.connect(sys.argv[1]); c = db.cursor()\n"
    "c.execute('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY')\n"
    "prev, expect, issued = b'\\0' * 32, 1, {}\n"
    "c.execute('SELECT seq, ts, kind, actor, job_id, payload, prev_hash, hash'\n"
    "          ' FROM audit_events ORDER BY seq')\n"
    "for seq, ts, kind, actor, job, payload, ph, h in c.fetchall():\n"
    "    ph, h = bytes(ph), bytes(h)\n"
    "    assert seq == expect and ph == prev, seq\n"
    "    row = struct.pack('>QQ', seq, ts) + b''.join(\n"
    "        struct.pack('>I', len(b)) + b\n"
    "        for b in (kind.encode(), actor.encode(), job.encode(), payload.encode()))\n"
    "    assert hashlib.sha256(ph + row).digest() == h, seq\n"
    "    prev, expect = h, expect + 1\n"
    "    if kind == 'cert.issued':\n"
    "        issued[json.loads(payload)['serial']] = (job, ts, payload)\n"
    "c.execute('SELECT seq, hash FROM audit_head')\n"
    "s, hh = c.fetchone(); assert (s, bytes(hh)) == (expect - 1, prev)\n"
    "n = 0\n"
    "c.execute('SELECT serial, job_id, device_uid, pubkey_hash, pem, programmer_id,'\n"
    "          ' idempotency_key, issued_at_ms FROM certificates')\n"
    "for serial, job, uid, pkh, pem, prog, key, at in c.fetchall():\n"
    "    want = ('{\"serial\":\"%s\",\"device_uid\":\"%s\",\"pubkey_hash\":\"%s\",'\n"
    "            '\"programmer\":\"%s\",\"idempotency_key\":\"%s\",\"pem_sha256\":\"%s\"}'\n"
    "            % (serial, bytes(uid).hex(), bytes(pkh).hex(), prog, bytes(key).hex(),\n"
    "               hashlib.sha256(pem.encode()).hexdigest()))\n"
    "    assert issued.pop(serial) == (job, at, want), serial\n"
    "    n += 1\n"
    "assert not issued\n"
    "print('python auditor (postgresql): %d events, %d certificates: ok' % (expect - 1, n))\n";

/*
 * Read-then-write races (READ COMMITTED): a psql session holds the job row
 * for a while, so the racers queue behind it in a fixed order. Whoever
 * wins, the state decided on must be the one overwritten.
 */
static pid_t hold_job_row(const char *db, unsigned seconds)
{
    char sql[200];
    snprintf(sql, sizeof sql,
             "BEGIN; SELECT job_id FROM jobs WHERE job_id = 'job-1' FOR UPDATE;"
             " SELECT pg_sleep(%u); COMMIT;",
             seconds);
    pid_t p = fork();
    if (p == 0)
        _exit(pg_fixture_psql(&pg, db, sql) != 0);
    usleep(400 * 1000); /* it holds the row from here */
    return p;
}

/* A child that runs one ledger call on its own connection; exit 0 when rc is allowed. */
enum race_call { RACE_REPORT, RACE_PAUSE };

static pid_t racer(const char *uri, enum race_call call, const uint8_t *uid)
{
    pid_t p = fork();
    if (p != 0)
        return p;
    struct cloud_ledger *l = NULL;
    struct cloud_ledger_cert_ref ref = {NULL, "job-1", uid, 8};
    int rc = cloud_ledger_connect(uri, pwfile, 0, &l);
    if (rc == NU_OK && call == RACE_REPORT)
        rc = cloud_ledger_cert_report(l, &ref, 1, "ok", "prog-1", T0 + 10);
    else if (rc == NU_OK)
        rc = cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0 + 10, NULL);
    cloud_ledger_close(l);
    _exit(rc == NU_OK || rc == NU_ERR_STATE ? 0 : 1);
}

static int child_ok(pid_t p)
{
    int st = 0;
    return waitpid(p, &st, 0) == p && WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

/* A device.report delayed behind the job row and the OEM's revocation
 * committed meanwhile: the certificate stays revoked (it was written
 * "provisioned" over it, and left off the next CRL). */
static void test_report_never_undoes_a_revocation(void)
{
    char uri[1100];
    struct cloud_ledger_alloc a[1] = {alloc_of("prog-1", 10)};
    struct cloud_ledger_issue_result res;
    struct cloud_ledger_cert c;
    struct treq t;
    unsigned next = 0;
    fresh_db("lpg_rr", uri, sizeof uri);
    struct cloud_ledger *l = agent(uri);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-1", 10, a, 1), NU_OK);
    mkreq(&t, "prog-1", "job-1", 1, T0 + 1);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_issue(l, &t.r, sign, &next, &res), NU_OK);
    struct cloud_ledger_cert_ref ref = {NULL, "job-1", t.uid, sizeof t.uid};
    pid_t holder = hold_job_row("lpg_rr", 2);
    pid_t report = racer(uri, RACE_REPORT, t.uid);
    usleep(400 * 1000);
    CU_ASSERT_EQUAL(cloud_ledger_cert_revoke(l, &ref, "key-compromise", "oem-1", T0 + 20), NU_OK);
    CU_ASSERT(child_ok(report));
    CU_ASSERT(child_ok(holder));
    CU_ASSERT_EQUAL(cloud_ledger_cert_get(l, &ref, &c), NU_OK);
    CU_ASSERT_EQUAL(c.state, CLOUD_LEDGER_CERT_REVOKED);
    CU_ASSERT_STRING_EQUAL(c.revoke_reason, "key-compromise");
    cloud_ledger_close(l);
    CU_ASSERT_TRUE(verify_ok(uri));
}

/* A close and a pause racing: the close is final (a closed job was left
 * paused, then resumable, and issued again). */
static void test_close_is_final_under_a_race(void)
{
    char uri[1100];
    struct cloud_ledger_alloc a[1] = {alloc_of("prog-1", 10)};
    struct cloud_ledger_job job;
    fresh_db("lpg_cp", uri, sizeof uri);
    struct cloud_ledger *l = agent(uri);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-1", 10, a, 1), NU_OK);
    pid_t holder = hold_job_row("lpg_cp", 2);
    pid_t closer = fork();
    if (closer == 0) {
        struct cloud_ledger *l2 = NULL;
        int rc = cloud_ledger_connect(uri, pwfile, 0, &l2);
        if (rc == NU_OK)
            rc = cloud_ledger_job_control(l2, "job-1", CLOUD_LEDGER_JOB_CLOSE, "oem-1", T0 + 5,
                                          NULL);
        cloud_ledger_close(l2);
        _exit(rc == NU_OK ? 0 : 1);
    }
    usleep(400 * 1000);
    pid_t pauser = racer(uri, RACE_PAUSE, NULL);
    CU_ASSERT(child_ok(closer));
    CU_ASSERT(child_ok(pauser));
    CU_ASSERT(child_ok(holder));
    memset(&job, 0, sizeof job);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-1", &job, NULL, 0, NULL), NU_OK);
    CU_ASSERT_EQUAL(job.status, CLOUD_LEDGER_JOB_CLOSED);
    CU_ASSERT_EQUAL(
        cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_RESUME, "oem-1", T0 + 30, NULL),
        NU_ERR_STATE);
    cloud_ledger_close(l);
    CU_ASSERT_TRUE(verify_ok(uri));
}

static void test_python_auditor_pg(void)
{
    char script[512];
    CU_ASSERT_EQUAL_FATAL(nu_path_fmt(script, sizeof script, "%s/auditor_pg.py", tmp), NU_OK);
    CU_ASSERT_EQUAL_FATAL(
        nu_file_write_atomic(script, PY_AUDITOR_PG, strlen(PY_AUDITOR_PG), 0600), NU_OK);
    /* lpg_race holds the busiest chain of this suite. Debian's python3 has psycopg2. */
    CU_ASSERT_EQUAL(nu_test_sh("/usr/bin/python3 '%s' 'postgresql://nusec_owner@/lpg_race?host=%s"
                               "&port=%d'",
                               script, pg.host, pg.port),
                    0);
}

static const struct nu_test_case pg_cases[] = {
    {"absent, future schema and bad credentials refused", test_schema_refused},
    {"issue, replay, refusals, verify", test_issue_replay_verify},
    {"agent role cannot rewrite history", test_least_privilege},
    {"quota exact with agents racing in batches", test_quota_race},
    {"agent SIGKILLed mid-batch in a loop: nothing lost, nothing twice", test_sigkill_mid_batch},
    {"a delayed device.report never undoes a revocation", test_report_never_undoes_a_revocation},
    {"a job's close is final when a pause races it", test_close_is_final_under_a_race},
    {"independent Python auditor (psycopg2) agrees", test_python_auditor_pg},
    {NULL, NULL},
};

int main(void)
{
    static const struct nu_test_suite suites[] = {
        {"ledger_pg", setup, teardown, pg_cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("ledger_pg", suites);
}
