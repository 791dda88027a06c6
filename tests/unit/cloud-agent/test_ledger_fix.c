/*
 * test_ledger_fix — the ledger suite's shared fixture: a temporary folder,
 * fresh ledgers, enrolled programmers and jobs, certificate requests, a dummy
 * signer, and audit/verify shortcuts (see test_ledger_fix.h).
 */
#include "test_ledger_fix.h"

#include "ledger_store.h"
#include "pg_fixture.h"

char tmp[256];
int ledger_on_pg;
static struct pg_fixture ledger_pg;
static unsigned db_counter;
uint8_t pkg_pub[CLOUD_LEDGER_PUBKEY_LEN]; /* a valid P-256 point */

const char *const PEM_TEXT = "-----BEGIN CERTIFICATE-----\n"
                                    "MIIBszCCAVmgAwIBAgIUZmFrZSBjZXJ0aWZpY2F0ZSBmb3IgdGVzdHM=\n"
                                    "-----END CERTIFICATE-----\n";

int setup(void)
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

int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

/* ------------------------------------------------------------ helpers */

void fresh_path(char *out, size_t cap)
{
    nu_path_fmt(out, cap, "%s/ledger-%u.db", tmp, ++db_counter);
}

int ledger_pg_start(void)
{
    ledger_on_pg = 1;
    return pg_fixture_start(&ledger_pg);
}

void ledger_pg_stop(void)
{
    pg_fixture_stop(&ledger_pg);
}

int sqlite_only(void)
{
    if (!ledger_on_pg)
        return 0;
    printf("(SQLite only: skipped) ");
    return 1;
}

/*
 * PostgreSQL: CREATE DATABASE per fresh ledger was most of the suite's time
 * (~1 s each on a loaded machine), so databases are slots reused across
 * cases: a case's first fresh ledger takes slot 0, its next ones slots 1, 2,
 * ... (a case may hold several ledgers at once), each emptied on reuse
 * (pg_fixture_db_reset); a slot is created once per process.
 */
static void fresh_pg(char *path, size_t cap)
{
    static CU_pTest slot_case; /* the case that took the slots in use */
    static unsigned slot_next, slots_made;
    char name[64];
    if (CU_get_current_test() != slot_case) {
        slot_case = CU_get_current_test();
        slot_next = 0;
    }
    unsigned slot = slot_next++;
    snprintf(name, sizeof(name), "ledger_%u_%u", (unsigned)getpid(), slot);
    if (slot < slots_made) {
        CU_ASSERT_EQUAL_FATAL(pg_fixture_db_reset(&ledger_pg, name, path, cap), 0);
        return;
    }
    CU_ASSERT_EQUAL_FATAL(pg_fixture_db(&ledger_pg, name, path, cap), 0);
    slots_made = slot + 1;
}

/* On PostgreSQL `path` receives the owner's URI of a fresh (emptied)
 * database, so the ledger creates its schema there as in a fresh file. */
struct cloud_ledger *open_fresh(char *path, size_t cap)
{
    struct cloud_ledger *l = NULL;
    if (ledger_on_pg) {
        fresh_pg(path, cap);
    } else {
        fresh_path(path, cap);
    }
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    return l;
}

/* PostgreSQL: one query's first column through a connection of our own. */
static int pg_query(const char *uri, const char *sql, long long *out_i, char *out_s, size_t cap)
{
    struct ledger_store *s = NULL;
    struct ledger_store_stmt *st = NULL;
    int row = 0;
    int rc = ledger_store_open(uri, NULL, &s);
    if (rc == NU_OK && !out_i && !out_s)
        rc = ledger_store_exec(s, sql);
    else if (rc == NU_OK && (rc = ledger_store_prepare(s, sql, &st)) == NU_OK &&
             (rc = ledger_store_step(st, &row)) == NU_OK && row) {
        if (out_i)
            *out_i = ledger_store_col_i64(st, 0);
        if (out_s) {
            const char *t = ledger_store_col_text(st, 0, NULL);
            snprintf(out_s, cap, "%s", t ? t : "");
        }
    } else if (rc == NU_OK) {
        rc = NU_ERR_NOT_FOUND;
    }
    ledger_store_close(s);
    return rc;
}

/* Raw access, as an auditor or an attacker with the file (or the database
 * owner's role) would have. Answers SQLite codes on both backends. */
int sql_exec(const char *path, const char *sql)
{
    if (ledger_on_pg)
        return pg_query(path, sql, NULL, NULL, 0) == NU_OK ? SQLITE_OK : SQLITE_ERROR;
    sqlite3 *db = NULL;
    int rc = sqlite3_open(path, &db);
    if (rc == SQLITE_OK) {
        sqlite3_busy_timeout(db, 5000);
        rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    }
    sqlite3_close(db);
    return rc;
}

long long sql_int(const char *path, const char *sql)
{
    long long pv = -1;
    if (ledger_on_pg)
        return pg_query(path, sql, &pv, NULL, 0) == NU_OK ? pv : -1;
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

void sql_text(const char *path, const char *sql, char *out, size_t cap)
{
    if (ledger_on_pg) {
        if (cap)
            out[0] = '\0';
        (void)pg_query(path, sql, NULL, out, cap);
        return;
    }
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

int enroll(struct cloud_ledger *l, const char *id)
{
    struct cloud_ledger_enrollment e = {id, "0a0b0c", PEM_TEXT, pkg_pub, "station-1",
                                        T0, NULL,     NULL,     NULL};
    return cloud_ledger_programmer_upsert(l, &e);
}

struct cloud_ledger_alloc alloc_of(const char *id, uint32_t limit)
{
    struct cloud_ledger_alloc a;
    memset(&a, 0, sizeof(a));
    snprintf(a.programmer_id, sizeof(a.programmer_id), "%s", id);
    a.limit = limit;
    return a;
}

int mk_job(struct cloud_ledger *l, const char *job, uint32_t quota, uint64_t expires,
           const struct cloud_ledger_alloc *a, size_t n)
{
    struct cloud_ledger_job_spec s = {job, "app-1.0.0", "CN={uid}", quota, expires,
                                      a,   n,           "oem-1",    T0,    NULL};
    return cloud_ledger_job_create(l, &s);
}

/* One job "job-1" (quota) with programmer "prog-1" (limit). */
void std_setup(struct cloud_ledger *l, uint32_t quota, uint32_t limit)
{
    struct cloud_ledger_alloc a = alloc_of("prog-1", limit);
    CU_ASSERT_EQUAL_FATAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL_FATAL(mk_job(l, "job-1", quota, 0, &a, 1), NU_OK);
}


void mkreq(struct treq *t, const char *requester, const char *job, unsigned dev,
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


int dummy_sign(void *ctx, const struct cloud_ledger_issue_req *req,
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

struct evscan events(struct cloud_ledger *l, const char *kind)
{
    struct evscan s;
    memset(&s, 0, sizeof(s));
    s.kind = kind;
    CU_ASSERT_EQUAL(cloud_ledger_audit_list(l, 0, evscan_visit, &s), NU_OK);
    return s;
}

uint64_t head_seq(struct cloud_ledger *l)
{
    uint64_t seq = 0;
    uint8_t h[32];
    CU_ASSERT_EQUAL(cloud_ledger_audit_head(l, &seq, h), NU_OK);
    return seq;
}

struct cloud_ledger_job job_of(struct cloud_ledger *l, const char *id)
{
    struct cloud_ledger_job j;
    memset(&j, 0, sizeof(j));
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, id, &j, NULL, 0, NULL), NU_OK);
    return j;
}

uint32_t alloc_issued(struct cloud_ledger *l, const char *job, const char *prog)
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

int verify_ok(struct cloud_ledger *l)
{
    struct cloud_ledger_verify_report r;
    int rc = cloud_ledger_verify(l, &r);
    if (rc != NU_OK)
        fprintf(stderr, "verify: %s: %s\n", nu_err_name(rc), r.first_problem);
    return rc == NU_OK && r.chain_ok && r.certs_ok && r.counts_ok && r.schema_ok;
}

void hex(const uint8_t *b, size_t n, char *out)
{
    nu_hex_encode(b, n, out, 2 * n + 1);
}

int grant_std_lease(struct cloud_ledger *l, uint32_t units)
{
    struct cloud_ledger_lease want, got;
    int existing = 0;
    int rc = cloud_ledger_lease_policy_set(l, "job-1", units, 1, "oem-1", T0);
    if (rc != NU_OK)
        return rc;
    memset(&want, 0, sizeof(want));
    snprintf(want.lease_id, sizeof(want.lease_id), "lease-1");
    snprintf(want.job_id, sizeof(want.job_id), "job-1");
    snprintf(want.programmer_id, sizeof(want.programmer_id), "prog-1");
    want.units = units;
    want.not_before_ms = T0;
    want.not_after_ms = T0 + 3600000u;
    memset(want.line_pub_hash, 7, sizeof(want.line_pub_hash));
    want.cert_len = 3;
    memcpy(want.cert_der, "der", 3);
    return cloud_ledger_lease_grant(l, &want, T0, &got, &existing);
}
