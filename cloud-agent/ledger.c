/*
 * ledger — the cloud's SQLite ledger (see ledger.h for the contract).
 *
 * Layout of this file: schema and statements, small helpers (errors,
 * statements, transactions, validation, JSON), the audit chain, then one
 * section per table family, issuance, and verify.
 */
#include "ledger.h"
#include "ledger_schema_pg.h"
#include "ledger_store.h"

#include "nu_crypto.h"
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_json.h"
#include "nu_log.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sqlite3.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* Internal events (job.created with 256 allocations) may exceed the 4 KiB
 * limit that applies to events received from outside. */
#define LEDGER_PAYLOAD_INTERNAL_MAX (64u * 1024u)
#define LEDGER_ACTOR_SELF "ledger"

/* ------------------------------------------------------------------ schema */

/* ledger__migrations[i] takes user_version i to i + 1, in one transaction. */
static const char *const ledger__migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE jobs ("
    " job_id TEXT PRIMARY KEY NOT NULL CHECK (typeof(job_id) = 'text'),"
    " firmware TEXT NOT NULL,"
    " quota INTEGER NOT NULL CHECK (typeof(quota) = 'integer' AND quota >= 1),"
    " issued INTEGER NOT NULL DEFAULT 0"
    "  CHECK (typeof(issued) = 'integer' AND issued >= 0 AND issued <= quota),"
    " refused INTEGER NOT NULL DEFAULT 0 CHECK (refused >= 0),"
    " status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'closed', 'exhausted')),"
    " created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL DEFAULT 0,"
    " subject_template TEXT NOT NULL DEFAULT '',"
    " created_by TEXT NOT NULL,"
    " updated_at_ms INTEGER NOT NULL);"
    "CREATE TABLE programmers ("
    " programmer_id TEXT PRIMARY KEY NOT NULL CHECK (typeof(programmer_id) = 'text'),"
    " state TEXT NOT NULL CHECK (state IN ('enrolled', 'revoked')),"
    " cert_serial TEXT NOT NULL,"
    " cert_pem TEXT NOT NULL,"
    " package_pubkey BLOB NOT NULL CHECK (length(package_pubkey) = 65),"
    " enrolled_at_ms INTEGER NOT NULL,"
    " revoked_at_ms INTEGER,"
    " revoke_reason TEXT);"
    "CREATE TABLE job_allocations ("
    " job_id TEXT NOT NULL REFERENCES jobs (job_id),"
    " programmer_id TEXT NOT NULL REFERENCES programmers (programmer_id),"
    " quota_limit INTEGER NOT NULL CHECK (typeof(quota_limit) = 'integer' AND quota_limit >= 1),"
    " issued INTEGER NOT NULL DEFAULT 0"
    "  CHECK (typeof(issued) = 'integer' AND issued >= 0 AND issued <= quota_limit),"
    " PRIMARY KEY (job_id, programmer_id)) WITHOUT ROWID;"
    /* No foreign key to programmers: a token is minted before its
     * programmer exists. */
    "CREATE TABLE enroll_tokens ("
    " token_hash BLOB PRIMARY KEY NOT NULL CHECK (length(token_hash) = 32),"
    " programmer_id TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL,"
    " used_at_ms INTEGER) WITHOUT ROWID;"
    "CREATE TABLE certificates ("
    " serial TEXT PRIMARY KEY NOT NULL CHECK (typeof(serial) = 'text'),"
    " job_id TEXT NOT NULL REFERENCES jobs (job_id),"
    " device_uid BLOB NOT NULL CHECK (typeof(device_uid) = 'blob'"
    "  AND length(device_uid) BETWEEN 1 AND 64),"
    " pubkey_hash BLOB NOT NULL CHECK (typeof(pubkey_hash) = 'blob' AND length(pubkey_hash) = 32),"
    " pem TEXT NOT NULL,"
    " programmer_id TEXT NOT NULL,"
    " idempotency_key BLOB NOT NULL,"
    " issued_at_ms INTEGER NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('issued', 'provisioned', 'failed', 'revoked')),"
    " state_at_ms INTEGER NOT NULL DEFAULT 0,"
    " detail TEXT NOT NULL DEFAULT '',"
    " revoked_at_ms INTEGER,"
    " revoke_reason TEXT,"
    " UNIQUE (job_id, device_uid));"
    "CREATE INDEX certificates_by_uid ON certificates (device_uid);"
    "CREATE TABLE requests ("
    " idempotency_key BLOB NOT NULL,"
    " requester TEXT NOT NULL,"
    " op TEXT NOT NULL,"
    " request_hash BLOB NOT NULL,"
    " response BLOB,"
    " code INTEGER NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " serial TEXT,"
    " PRIMARY KEY (requester, idempotency_key)) WITHOUT ROWID;"
    "CREATE TABLE audit_events ("
    " seq INTEGER PRIMARY KEY,"
    " ts INTEGER NOT NULL CHECK (typeof(ts) = 'integer' AND ts >= 0),"
    " kind TEXT NOT NULL CHECK (typeof(kind) = 'text'),"
    " actor TEXT NOT NULL CHECK (typeof(actor) = 'text'),"
    " job_id TEXT NOT NULL DEFAULT '' CHECK (typeof(job_id) = 'text'),"
    " payload TEXT NOT NULL CHECK (typeof(payload) = 'text'),"
    " prev_hash BLOB NOT NULL CHECK (typeof(prev_hash) = 'blob' AND length(prev_hash) = 32),"
    " hash BLOB NOT NULL CHECK (typeof(hash) = 'blob' AND length(hash) = 32));"
    "CREATE INDEX audit_events_by_job ON audit_events (job_id, seq);"
    "CREATE TABLE audit_head ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " seq INTEGER NOT NULL,"
    " hash BLOB NOT NULL CHECK (length(hash) = 32));"
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));"
    /* Defense in depth; verify does not rely on these. */
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events"
    " BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;"
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events"
    " BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;"
    "CREATE TRIGGER audit_events_seq BEFORE INSERT ON audit_events"
    " WHEN NEW.seq IS NOT (SELECT seq + 1 FROM audit_head WHERE id = 1)"
    " BEGIN SELECT RAISE(ABORT, 'audit_events: seq must follow the chain head'); END;"
    "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head"
    " BEGIN SELECT RAISE(ABORT, 'audit_head is permanent'); END;"
    "CREATE TRIGGER certificates_no_delete BEFORE DELETE ON certificates"
    " BEGIN SELECT RAISE(ABORT, 'certificates are never deleted'); END;"
    "CREATE TRIGGER certificates_fixed BEFORE UPDATE OF serial, job_id, device_uid, pubkey_hash,"
    " pem, programmer_id, idempotency_key, issued_at_ms ON certificates"
    " BEGIN SELECT RAISE(ABORT, 'an issued certificate does not change'); END;"
    "CREATE TRIGGER jobs_no_delete BEFORE DELETE ON jobs"
    " BEGIN SELECT RAISE(ABORT, 'jobs are never deleted'); END;"
    "CREATE TRIGGER programmers_no_delete BEFORE DELETE ON programmers"
    " BEGIN SELECT RAISE(ABORT, 'programmers are never deleted'); END;",
    /* 1 -> 2: firmware delivery. Signed images, each job's firmware key and
     * its sealed packages with the hashes of their firmware tokens. Nothing
     * here changes once written. */
    "CREATE TABLE firmware_images ("
    " name TEXT PRIMARY KEY NOT NULL CHECK (typeof(name) = 'text'),"
    " image_digest BLOB NOT NULL CHECK (typeof(image_digest) = 'blob'"
    "  AND length(image_digest) = 32),"
    " image_size INTEGER NOT NULL CHECK (typeof(image_size) = 'integer' AND image_size >= 1),"
    " security_counter INTEGER NOT NULL CHECK (security_counter >= 0),"
    " request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),"
    " signed_by TEXT NOT NULL,"
    " signed_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE job_keys ("
    " job_id TEXT PRIMARY KEY NOT NULL REFERENCES jobs (job_id),"
    " firmware_key BLOB NOT NULL CHECK (typeof(firmware_key) = 'blob'"
    "  AND length(firmware_key) = 32),"
    " image_digest BLOB NOT NULL CHECK (typeof(image_digest) = 'blob'"
    "  AND length(image_digest) = 32),"
    " image_size INTEGER NOT NULL CHECK (typeof(image_size) = 'integer' AND image_size >= 1),"
    " request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),"
    " created_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE job_packages ("
    " job_id TEXT NOT NULL,"
    " programmer_id TEXT NOT NULL,"
    " position INTEGER NOT NULL CHECK (typeof(position) = 'integer' AND position >= 0),"
    " token_hash BLOB NOT NULL CHECK (typeof(token_hash) = 'blob' AND length(token_hash) = 32),"
    " package BLOB NOT NULL CHECK (typeof(package) = 'blob'"
    "  AND length(package) BETWEEN 1 AND 65536),"
    " PRIMARY KEY (job_id, programmer_id),"
    " UNIQUE (job_id, position),"
    " FOREIGN KEY (job_id, programmer_id) REFERENCES job_allocations (job_id, programmer_id))"
    " WITHOUT ROWID;"
    "CREATE TRIGGER firmware_images_fixed BEFORE UPDATE ON firmware_images"
    " BEGIN SELECT RAISE(ABORT, 'a signed image record does not change'); END;"
    "CREATE TRIGGER firmware_images_no_delete BEFORE DELETE ON firmware_images"
    " BEGIN SELECT RAISE(ABORT, 'signed image records are never deleted'); END;"
    "CREATE TRIGGER job_keys_fixed BEFORE UPDATE ON job_keys"
    " BEGIN SELECT RAISE(ABORT, 'a job key does not change'); END;"
    "CREATE TRIGGER job_keys_no_delete BEFORE DELETE ON job_keys"
    " BEGIN SELECT RAISE(ABORT, 'job keys are never deleted'); END;"
    "CREATE TRIGGER job_packages_fixed BEFORE UPDATE ON job_packages"
    " BEGIN SELECT RAISE(ABORT, 'a sealed package does not change'); END;"
    "CREATE TRIGGER job_packages_no_delete BEFORE DELETE ON job_packages"
    " BEGIN SELECT RAISE(ABORT, 'sealed packages are never deleted'); END;",
    /* 2 -> 3: attested enrollment. What each programmer's KeyStore attested
     * (vendor serial, firmware measurement; '' for programmers enrolled
     * before) and the single-use enrollment challenges. Challenges live here,
     * not in memory, so they survive a restart and work when several agents
     * share the file (the challenge and the enroll may reach different ones). */
    "ALTER TABLE programmers ADD COLUMN vendor_serial TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE programmers ADD COLUMN firmware_measurement TEXT NOT NULL DEFAULT '';"
    "CREATE TABLE enroll_nonces ("
    " nonce BLOB PRIMARY KEY NOT NULL CHECK (typeof(nonce) = 'blob' AND length(nonce) = 32),"
    " programmer_id TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL,"
    " used_at_ms INTEGER) WITHOUT ROWID;",
};

#define LEDGER_N_MIGRATIONS (sizeof(ledger__migrations) / sizeof(ledger__migrations[0]))
_Static_assert(LEDGER_N_MIGRATIONS == CLOUD_LEDGER_SCHEMA_VERSION, "one migration per version");

/* The protective triggers and the schema version that brought each. */
static const struct {
    const char *name;
    int since;
} ledger__triggers[] = {
    {"audit_events_no_update", 1}, {"audit_events_no_delete", 1},
    {"audit_events_seq", 1},       {"audit_head_no_delete", 1},
    {"certificates_no_delete", 1}, {"certificates_fixed", 1},
    {"jobs_no_delete", 1},         {"programmers_no_delete", 1},
    {"firmware_images_fixed", 2},  {"firmware_images_no_delete", 2},
    {"job_keys_fixed", 2},         {"job_keys_no_delete", 2},
    {"job_packages_fixed", 2},     {"job_packages_no_delete", 2},
};

/* Kinds only the ledger writes; verify trusts cert.issued events. */
static const char *const ledger__reserved_kinds[] = {
    "ledger.created",     "job.created",       "job.paused",          "job.resumed",
    "job.closed",         "job.exhausted",     "programmer.enrolled", "programmer.revoked",
    "enroll.token.added", "enroll.token.used", "enroll.refused",      "cert.issued",
    "cert.resent",        "cert.refused",      "cert.provisioned",    "cert.failed",
    "cert.revoked",       "ledger.migrated",   "firmware.signed",     "job.packages",
    "audit.checkpoint",
};

/* --------------------------------------------------------------- statements */

#define LEDGER_CERT_COLS                                                                           \
    "serial, job_id, device_uid, pubkey_hash, programmer_id, idempotency_key, pem, state, "        \
    "issued_at_ms, state_at_ms, detail, revoked_at_ms, revoke_reason"
#define LEDGER_JOB_COLS                                                                            \
    "job_id, firmware, subject_template, created_by, status, quota, issued, refused, "             \
    "created_at_ms, expires_at_ms"
#define LEDGER_PROG_COLS                                                                           \
    "programmer_id, state, cert_serial, cert_pem, package_pubkey, enrolled_at_ms, "                \
    "revoked_at_ms, revoke_reason, vendor_serial, firmware_measurement"

#define LEDGER_SQL(X)                                                                              \
    X(BEGIN_W, "BEGIN IMMEDIATE")                                                                  \
    X(BEGIN_R, "BEGIN")                                                                            \
    X(COMMIT, "COMMIT")                                                                            \
    X(ROLLBACK, "ROLLBACK")                                                                        \
    X(SP, "SAVEPOINT ledger_req")                                                                  \
    X(SP_RELEASE, "RELEASE ledger_req")                                                            \
    X(SP_ROLLBACK, "ROLLBACK TO ledger_req")                                                       \
    X(HEAD_GET, "SELECT seq, hash FROM audit_head WHERE id = 1")                                   \
    X(HEAD_READ, "SELECT seq, hash FROM audit_head WHERE id = 1")                                  \
    X(HEAD_KIND, "SELECT h.seq, h.hash, e.kind FROM audit_head h"                                  \
                 " JOIN audit_events e ON e.seq = h.seq WHERE h.id = 1")                           \
    X(HEAD_SET, "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")                          \
    X(EV_INSERT, "INSERT INTO audit_events (seq, ts, kind, actor, job_id, payload, prev_hash,"     \
                 " hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")                                 \
    X(EV_LIST, "SELECT seq, ts, kind, actor, job_id, payload, prev_hash, hash"                     \
               " FROM audit_events WHERE seq >= ?1 ORDER BY seq")                                  \
    X(REQ_GET, "SELECT op, request_hash, response, code, created_at_ms, serial FROM requests"      \
               " WHERE requester = ?1 AND idempotency_key = ?2")                                   \
    X(REQ_PUT, "INSERT INTO requests (idempotency_key, requester, op, request_hash, response,"     \
               " code, created_at_ms, serial) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)"             \
               " ON CONFLICT (requester, idempotency_key) DO UPDATE SET op = excluded.op,"         \
               " request_hash = excluded.request_hash, response = excluded.response,"              \
               " code = excluded.code, created_at_ms = excluded.created_at_ms,"                    \
               " serial = excluded.serial")                                                        \
    X(PROG_STATE, "SELECT state, cert_serial FROM programmers WHERE programmer_id = ?1")           \
    X(PROG_GET, "SELECT " LEDGER_PROG_COLS " FROM programmers WHERE programmer_id = ?1")           \
    X(PROG_LIST, "SELECT " LEDGER_PROG_COLS " FROM programmers ORDER BY programmer_id")            \
    X(PROG_UPSERT, "INSERT INTO programmers (programmer_id, state, cert_serial, cert_pem,"         \
                   " package_pubkey, enrolled_at_ms, vendor_serial, firmware_measurement)"         \
                   " VALUES (?1, 'enrolled', ?2, ?3, ?4, ?5, ?6, ?7)"                              \
                   " ON CONFLICT (programmer_id) DO UPDATE SET cert_serial ="                      \
                   " excluded.cert_serial, cert_pem = excluded.cert_pem, package_pubkey ="         \
                   " excluded.package_pubkey, enrolled_at_ms = excluded.enrolled_at_ms,"           \
                   " vendor_serial = excluded.vendor_serial,"                                      \
                   " firmware_measurement = excluded.firmware_measurement"                         \
                   " WHERE programmers.state = 'enrolled'")                                        \
    X(NONCE_ADD, "INSERT INTO enroll_nonces (nonce, programmer_id, created_at_ms, expires_at_ms)"  \
                 " VALUES (?1, ?2, ?3, ?4)")                                                       \
    X(NONCE_PURGE, "DELETE FROM enroll_nonces WHERE expires_at_ms < ?1")                           \
    X(NONCE_GET, "SELECT programmer_id, expires_at_ms, used_at_ms FROM enroll_nonces"              \
                 " WHERE nonce = ?1")                                                              \
    X(NONCE_USE, "UPDATE enroll_nonces SET used_at_ms = ?2 WHERE nonce = ?1"                       \
                 " AND used_at_ms IS NULL")                                                        \
    X(PROG_REVOKE, "UPDATE programmers SET state = 'revoked', revoked_at_ms = ?2,"                 \
                   " revoke_reason = ?3 WHERE programmer_id = ?1 AND state = 'enrolled'")          \
    X(TOKEN_ADD, "INSERT INTO enroll_tokens (token_hash, programmer_id, created_at_ms,"            \
                 " expires_at_ms) VALUES (?1, ?2, ?3, ?4)")                                        \
    X(TOKEN_GET, "SELECT programmer_id, expires_at_ms, used_at_ms FROM enroll_tokens"              \
                 " WHERE token_hash = ?1")                                                         \
    X(TOKEN_USE, "UPDATE enroll_tokens SET used_at_ms = ?2 WHERE token_hash = ?1"                  \
                 " AND used_at_ms IS NULL")                                                        \
    X(JOB_GET, "SELECT " LEDGER_JOB_COLS " FROM jobs WHERE job_id = ?1")                           \
    X(JOB_LIST, "SELECT " LEDGER_JOB_COLS " FROM jobs ORDER BY job_id")                            \
    X(JOB_INSERT, "INSERT INTO jobs (job_id, firmware, quota, status, created_at_ms,"              \
                  " expires_at_ms, subject_template, created_by, updated_at_ms)"                   \
                  " VALUES (?1, ?2, ?3, 'active', ?4, ?5, ?6, ?7, ?4)")                            \
    X(JOB_STATUS, "UPDATE jobs SET status = ?2, updated_at_ms = ?3 WHERE job_id = ?1")             \
    X(JOB_ISSUED, "UPDATE jobs SET issued = issued + 1, status = CASE WHEN issued + 1 >="          \
                  " quota THEN 'exhausted' ELSE status END, updated_at_ms = ?2"                    \
                  " WHERE job_id = ?1 AND status = 'active' AND issued < quota")                   \
    X(JOB_LOCK, "SELECT job_id FROM jobs WHERE job_id = ?1")                                      \
    X(JOB_REFUSED, "UPDATE jobs SET refused = refused + 1 WHERE job_id = ?1")                      \
    X(ALLOC_GET, "SELECT quota_limit, issued FROM job_allocations"                                 \
                 " WHERE job_id = ?1 AND programmer_id = ?2")                                      \
    X(ALLOC_LIST, "SELECT programmer_id, quota_limit, issued FROM job_allocations"                 \
                  " WHERE job_id = ?1 ORDER BY programmer_id")                                     \
    X(ALLOC_INSERT, "INSERT INTO job_allocations (job_id, programmer_id, quota_limit)"             \
                    " VALUES (?1, ?2, ?3)")                                                        \
    X(ALLOC_ISSUED, "UPDATE job_allocations SET issued = issued + 1 WHERE job_id = ?1"             \
                    " AND programmer_id = ?2 AND issued < quota_limit")                            \
    X(CERT_INSERT, "INSERT INTO certificates (serial, job_id, device_uid, pubkey_hash, pem,"       \
                   " programmer_id, idempotency_key, issued_at_ms, state)"                         \
                   " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'issued')")                           \
    X(CERT_BY_SERIAL, "SELECT " LEDGER_CERT_COLS " FROM certificates WHERE serial = ?1")           \
    X(CERT_BY_JOB_UID, "SELECT " LEDGER_CERT_COLS " FROM certificates"                             \
                       " WHERE job_id = ?1 AND device_uid = ?2")                                   \
    X(CERT_LIST_JOB, "SELECT " LEDGER_CERT_COLS " FROM certificates WHERE job_id = ?1"             \
                     " AND (issued_at_ms > ?2 OR (issued_at_ms = ?2 AND serial > ?3))"             \
                     " ORDER BY issued_at_ms, serial")                                             \
    X(CERT_LIST_REVOKED, "SELECT " LEDGER_CERT_COLS " FROM certificates"                           \
                         " WHERE state = 'revoked' ORDER BY revoked_at_ms, serial")                \
    X(CERT_LIST_UID, "SELECT " LEDGER_CERT_COLS " FROM certificates WHERE device_uid = ?1"         \
                     " AND (issued_at_ms > ?2 OR (issued_at_ms = ?2 AND serial > ?3))"             \
                     " ORDER BY issued_at_ms, serial")                                             \
    X(CERT_STATE, "UPDATE certificates SET state = ?2, state_at_ms = ?3, detail = ?4"              \
                  " WHERE serial = ?1")                                                            \
    X(CERT_REVOKE, "UPDATE certificates SET state = 'revoked', state_at_ms = ?2,"                  \
                   " revoked_at_ms = ?2, revoke_reason = ?3 WHERE serial = ?1")                    \
    X(FW_INSERT, "INSERT INTO firmware_images (name, image_digest, image_size,"                    \
                 " security_counter, request_hash, signed_by, signed_at_ms)"                       \
                 " VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)")                                           \
    X(FW_GET, "SELECT name, image_digest, image_size, security_counter, request_hash,"             \
              " signed_by, signed_at_ms FROM firmware_images WHERE name = ?1")                     \
    X(KEYS_INSERT, "INSERT INTO job_keys (job_id, firmware_key, image_digest, image_size,"         \
                   " request_hash, created_at_ms) VALUES (?1, ?2, ?3, ?4, ?5, ?6)")                \
    X(KEYS_GET, "SELECT firmware_key, image_digest, image_size, request_hash FROM job_keys"        \
                " WHERE job_id = ?1")                                                              \
    X(PKG_INSERT, "INSERT INTO job_packages (job_id, programmer_id, position, token_hash,"         \
                  " package) VALUES (?1, ?2, ?3, ?4, ?5)")                                         \
    X(PKG_TOKEN, "SELECT token_hash FROM job_packages WHERE job_id = ?1 AND programmer_id = ?2")   \
    X(PKG_LIST, "SELECT programmer_id, package FROM job_packages WHERE job_id = ?1"                \
                " ORDER BY position")

enum ledger_stmt {
#define LEDGER__ENUM(name, sql) ST_##name,
    LEDGER_SQL(LEDGER__ENUM)
#undef LEDGER__ENUM
        ST__COUNT
};

static const char *const ledger__sql[ST__COUNT] = {
#define LEDGER__TEXT(name, sql) sql,
    LEDGER_SQL(LEDGER__TEXT)
#undef LEDGER__TEXT
};

/*
 * PostgreSQL's text where it differs (NULL = the same). Reads that decide
 * under a write lock take row locks there, since READ COMMITTED writers do
 * not queue on one file lock: the job and allocation rows FOR UPDATE (in that
 * order, jobs sorted in a batch), the chain head last, so seq order is
 * commit order.
 */
static const char *ledger__sql_pg[ST__COUNT] = {
    [ST_HEAD_GET] = "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE",
    [ST_HEAD_KIND] = "SELECT h.seq, h.hash, e.kind FROM audit_head h"
                     " JOIN audit_events e ON e.seq = h.seq WHERE h.id = 1 FOR UPDATE OF h",
    [ST_JOB_LOCK] = "SELECT job_id FROM jobs WHERE job_id = ?1 FOR UPDATE",
    [ST_ALLOC_GET] = "SELECT quota_limit, issued FROM job_allocations"
                     " WHERE job_id = ?1 AND programmer_id = ?2 FOR UPDATE",
};

struct cloud_ledger {
    struct ledger_store *store;          /* the connection, either backend */
    sqlite3 *db;                         /* the same connection on SQLite, else NULL */
    struct ledger_store_stmt *st[ST__COUNT]; /* prepared on first use, kept until close */
    uint64_t refusal_ttl_ms;
    /* Scratch owned by the handle, so the request path does not allocate. */
    struct cloud_ledger_sign_out *sign_out;
    struct cloud_ledger_cert *cert;
    struct cloud_ledger_programmer *prog;
    struct cloud_ledger_alloc *alloc; /* CLOUD_LEDGER_ALLOC_MAX entries */
    char *payload;                    /* LEDGER_PAYLOAD_INTERNAL_MAX bytes */
};

/* ------------------------------------------------------------ SQLite glue */

/* Map an SQLite result at the boundary and log the original (open and
 * schema only: statements go through ledger_store, which maps its own). */
static int ledger__dberr(sqlite3 *db, int rc, const char *what)
{
    int ext = db ? sqlite3_extended_errcode(db) : rc;
    /* BUSY is the normal answer while another agent writes: not a warning. */
    enum nu_log_level level = (rc & 0xff) == SQLITE_BUSY ? NU_LOG_DEBUG : NU_LOG_WARN;

    nu_log(level, "ledger: %s: %s (sqlite %d)", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc),
           ext);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return NU_ERR_BUSY;
    case SQLITE_NOMEM:
        return NU_ERR_NOMEM;
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
        return NU_ERR_IO;
    case SQLITE_CONSTRAINT:
        if (ext == SQLITE_CONSTRAINT_PRIMARYKEY || ext == SQLITE_CONSTRAINT_UNIQUE)
            return NU_ERR_EXISTS;
        return NU_ERR_DB;
    default:
        return NU_ERR_DB;
    }
}

static int ledger__is_pg(const struct cloud_ledger *l)
{
    return ledger_store_kind(l->store) == LEDGER_STORE_POSTGRESQL;
}

static int ledger__stmt(struct cloud_ledger *l, enum ledger_stmt id,
                        struct ledger_store_stmt **out_st)
{
    *out_st = NULL;
    if (!l->st[id]) {
        const char *sql = ledger__is_pg(l) && ledger__sql_pg[id] ? ledger__sql_pg[id]
                                                                 : ledger__sql[id];
        int rc = ledger_store_prepare(l->store, sql, &l->st[id]);
        if (rc != NU_OK)
            return rc;
    }
    *out_st = l->st[id];
    return NU_OK;
}

static void ledger__reset(struct ledger_store_stmt *st)
{
    ledger_store_reset(st);
}

/* Step: 1 with a row; 0 when done (*rc = NU_OK) or failed (*rc = the error). */
static int ledger__row(struct ledger_store_stmt *st, int *rc)
{
    int row = 0;
    *rc = ledger_store_step(st, &row);
    return *rc == NU_OK && row;
}

/* Step a statement that returns no rows, then reset it. */
static int ledger__run(struct cloud_ledger *l, struct ledger_store_stmt *st, const char *what)
{
    int row = 0;
    int ret = ledger_store_step(st, &row);
    (void)l;
    (void)what;
    ledger__reset(st);
    return ret;
}

/* Run a parameterless transaction statement (BEGIN, COMMIT, SAVEPOINT...). */
static int ledger__exec(struct cloud_ledger *l, enum ledger_stmt id)
{
    switch (id) {
    case ST_BEGIN_W: return ledger_store_begin(l->store, 1);
    case ST_BEGIN_R: return ledger_store_begin(l->store, 0);
    case ST_COMMIT: return ledger_store_commit(l->store);
    case ST_ROLLBACK: ledger_store_rollback(l->store); return NU_OK;
    case ST_SP: return ledger_store_savepoint(l->store, "ledger_req");
    case ST_SP_RELEASE: return ledger_store_release(l->store, "ledger_req");
    case ST_SP_ROLLBACK: return ledger_store_rollback_to(l->store, "ledger_req");
    default: break;
    }
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, id, &st);
    if (rc != NU_OK)
        return rc;
    return ledger__run(l, st, ledger__sql[id]);
}

static int ledger__bind_text(struct ledger_store_stmt *st, int i, const char *s)
{
    return ledger_store_bind_text(st, i, s ? s : "");
}

static int ledger__bind_blob(struct ledger_store_stmt *st, int i, const void *p, size_t n)
{
    return ledger_store_bind_blob(st, i, p, n);
}

/* Text with a length (payloads): bound as text, NUL or not after it. */
static int ledger__bind_blob_text(struct ledger_store_stmt *st, int i, const char *p, size_t n)
{
    char *copy = malloc(n + 1);
    int rc;
    if (!copy)
        return NU_ERR_NOMEM;
    memcpy(copy, p, n);
    copy[n] = '\0';
    rc = ledger_store_bind_text(st, i, copy);
    free(copy);
    return rc;
}

static int ledger__bind_u64(struct ledger_store_stmt *st, int i, uint64_t v)
{
    return ledger_store_bind_i64(st, i, (int64_t)v);
}

static uint64_t ledger__col_u64(struct ledger_store_stmt *st, int i)
{
    int64_t v = ledger_store_col_i64(st, i);
    return v < 0 ? 0 : (uint64_t)v;
}

static uint32_t ledger__col_u32(struct ledger_store_stmt *st, int i)
{
    uint64_t v = ledger__col_u64(st, i);
    return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* The text of a column as a C string (NULL for SQL NULL). */
static const unsigned char *ledger__col_text(struct ledger_store_stmt *st, int i)
{
    size_t n;
    return (const unsigned char *)ledger_store_col_text(st, i, &n);
}

static int ledger__col_bytes(struct ledger_store_stmt *st, int i)
{
    size_t n;
    (void)ledger_store_col_blob(st, i, &n);
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

static const void *ledger__col_blobp(struct ledger_store_stmt *st, int i)
{
    size_t n;
    return ledger_store_col_blob(st, i, &n);
}

/* Copy a TEXT column into out[cap]. A value longer than anything we write
 * means the row was not written by us: DB. NULL reads as "". */
static int ledger__col_str(struct ledger_store_stmt *st, int i, char *out, size_t cap)
{
    size_t n = 0;
    const char *t = ledger_store_col_text(st, i, &n);

    out[0] = '\0';
    if (!t)
        return NU_OK;
    if (n >= cap) {
        nu_warn("ledger: column %d holds %zu bytes, more than the %zu allowed", i, n, cap - 1);
        return NU_ERR_DB;
    }
    memcpy(out, t, n);
    out[n] = '\0';
    return NU_OK;
}

static int ledger__col_blob(struct ledger_store_stmt *st, int i, uint8_t *out, size_t cap,
                            size_t *out_len)
{
    size_t n = 0;
    const void *b = ledger_store_col_blob(st, i, &n);

    *out_len = 0;
    if (n > cap) {
        nu_warn("ledger: column %d holds %zu bytes, more than the %zu allowed", i, n, cap);
        return NU_ERR_DB;
    }
    if (b && n)
        memcpy(out, b, n);
    *out_len = n;
    return NU_OK;
}

/* Exactly `len` bytes, else DB (e.g. a 32-byte hash column). */
static int ledger__col_fixed(struct ledger_store_stmt *st, int i, uint8_t *out, size_t len)
{
    size_t n;
    int rc = ledger__col_blob(st, i, out, len, &n);
    if (rc == NU_OK && n != len) {
        nu_warn("ledger: column %d holds %zu bytes, expected %zu", i, n, len);
        rc = NU_ERR_DB;
    }
    return rc;
}

/* --------------------------------------------------------- transactions */

static int ledger__begin(struct cloud_ledger *l, int write)
{
    return ledger__exec(l, write ? ST_BEGIN_W : ST_BEGIN_R);
}

/* Roll back whatever is open (no-op after a COMMIT). */
static void ledger__rollback(struct cloud_ledger *l)
{
    ledger_store_rollback(l->store);
}

static int ledger__commit(struct cloud_ledger *l)
{
    int rc = ledger__exec(l, ST_COMMIT);
    if (rc != NU_OK)
        ledger__rollback(l);
    return rc;
}

/* ------------------------------------------------------------- validation */

static int ledger__time_ok(uint64_t t)
{
    return t <= (uint64_t)INT64_MAX;
}

/* An identifier as on the wire; the strnlen bound keeps hostile input cheap. */
static int ledger__id_check(const char *id)
{
    if (!id)
        return NU_ERR_INVALID_ARG;
    if (strnlen(id, CLOUD_LEDGER_ID_MAX + 1) > CLOUD_LEDGER_ID_MAX)
        return NU_ERR_TOO_LARGE;
    return nu_envelope_id_check(id);
}

/* NULL or "" (none), else an id. */
static int ledger__opt_id_check(const char *id)
{
    if (!id || !*id)
        return NU_OK;
    return ledger__id_check(id);
}

/*
 * Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), no
 * NUL, no C0 control or DEL except tab/CR/LF when allow_newlines.
 */
static int ledger__utf8_ok(const uint8_t *s, size_t n, int allow_newlines)
{
    size_t i = 0;

    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint8_t lo = 0x80, hi = 0xbf;

        if (c < 0x80) {
            int nl = c == '\n' || c == '\r' || c == '\t';
            if ((c < 0x20 && !(nl && allow_newlines)) || c == 0x7f)
                return 0;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            len = 2;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4;
        else
            return 0;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
        else if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k < len; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return 0;
        }
        i += len;
    }
    return 1;
}

/* Optional one-line text (reasons, details, subject template). */
static int ledger__text_check(const char *s, size_t max)
{
    size_t n;

    if (!s)
        return NU_OK;
    n = strnlen(s, max + 1);
    if (n > max)
        return NU_ERR_TOO_LARGE;
    return ledger__utf8_ok((const uint8_t *)s, n, 0) ? NU_OK : NU_ERR_INVALID_ARG;
}

/* A serial as we store it: 1..64 lower-case hex digits. */
static int ledger__serial_ok(const char *s)
{
    size_t n = strnlen(s, CLOUD_LEDGER_SERIAL_MAX + 1);

    if (n == 0 || n > CLOUD_LEDGER_SERIAL_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return 1;
}

/* Serials from outside may come in either case; we store lower case. */
static int ledger__serial_norm(const char *in, char out[CLOUD_LEDGER_SERIAL_MAX + 1])
{
    size_t n;

    if (!in)
        return NU_ERR_INVALID_ARG;
    n = strnlen(in, CLOUD_LEDGER_SERIAL_MAX + 1);
    if (n > CLOUD_LEDGER_SERIAL_MAX)
        return NU_ERR_TOO_LARGE;
    for (size_t i = 0; i <= n; i++)
        out[i] = (in[i] >= 'A' && in[i] <= 'F') ? (char)(in[i] - 'A' + 'a') : in[i];
    return ledger__serial_ok(out) ? NU_OK : NU_ERR_INVALID_ARG;
}

/* PEM text: ASCII armour, bounded. */
static int ledger__pem_ok(const char *pem, size_t *out_len)
{
    size_t n = strnlen(pem, CLOUD_LEDGER_PEM_MAX + 1);

    if (n == 0 || n > CLOUD_LEDGER_PEM_MAX || strncmp(pem, "-----BEGIN ", 11) != 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)pem[i];
        if (!(c == '\n' || c == '\r' || (c >= 0x20 && c < 0x7f)))
            return 0;
    }
    *out_len = n;
    return 1;
}

static int ledger__kind_check(const char *kind)
{
    size_t n;

    if (!kind)
        return NU_ERR_INVALID_ARG;
    n = strnlen(kind, CLOUD_LEDGER_KIND_MAX + 1);
    if (n > CLOUD_LEDGER_KIND_MAX)
        return NU_ERR_TOO_LARGE;
    if (n == 0)
        return NU_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++) {
        char c = kind[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return NU_ERR_INVALID_ARG;
    }
    return NU_OK;
}

/* -------------------------------------------------------------------- JSON */

/* Every audit payload goes through libnusec's one escaping writer (nu_json.h);
 * the short lj_ names are kept so the payload builders below read as before. */
#define ledger_json nu_json
#define lj_init nu_json_init
#define lj_raw nu_json_raw
#define lj_puts nu_json_puts
#define lj_key nu_json_key
#define lj_str nu_json_str
#define lj_hex nu_json_hex
#define lj_u64 nu_json_u64

/* ------------------------------------------------------------ audit chain */

static void ledger__be64(uint8_t out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

static void ledger__be32(uint8_t out[4], uint32_t v)
{
    for (int i = 3; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

static int ledger__hash_field(struct nu_sha256_ctx *ctx, const char *s, size_t n)
{
    uint8_t len[4];
    int rc;

    if (n > UINT32_MAX)
        return NU_ERR_INVALID_ARG;
    ledger__be32(len, (uint32_t)n);
    rc = nu_sha256_update(ctx, len, sizeof(len));
    if (rc == NU_OK)
        rc = nu_sha256_update(ctx, s, n);
    return rc;
}

int cloud_ledger_event_hash(const uint8_t prev_hash[CLOUD_LEDGER_HASH_LEN], uint64_t seq,
                            uint64_t ts, const char *kind, size_t kind_len, const char *actor,
                            size_t actor_len, const char *job_id, size_t job_id_len,
                            const char *payload, size_t payload_len,
                            uint8_t out[CLOUD_LEDGER_HASH_LEN])
{
    struct nu_sha256_ctx ctx;
    uint8_t nums[16];
    int rc;

    if (!prev_hash || !out || (!kind && kind_len) || (!actor && actor_len) ||
        (!job_id && job_id_len) || (!payload && payload_len))
        return NU_ERR_INVALID_ARG;
    ledger__be64(nums, seq);
    ledger__be64(nums + 8, ts);
    rc = nu_sha256_init(&ctx);
    if (rc != NU_OK)
        return rc;
    rc = nu_sha256_update(&ctx, prev_hash, CLOUD_LEDGER_HASH_LEN);
    if (rc == NU_OK)
        rc = nu_sha256_update(&ctx, nums, sizeof(nums));
    if (rc == NU_OK)
        rc = ledger__hash_field(&ctx, kind, kind_len);
    if (rc == NU_OK)
        rc = ledger__hash_field(&ctx, actor, actor_len);
    if (rc == NU_OK)
        rc = ledger__hash_field(&ctx, job_id, job_id_len);
    if (rc == NU_OK)
        rc = ledger__hash_field(&ctx, payload, payload_len);
    if (rc == NU_OK)
        return nu_sha256_final(&ctx, out);
    nu_sha256_abort(&ctx);
    return rc;
}

/* Append one event inside the caller's write transaction. */
static int ledger__append(struct cloud_ledger *l, uint64_t ts, const char *kind, const char *actor,
                          const char *job_id, const char *payload, size_t payload_len,
                          uint64_t *out_seq)
{
    struct ledger_store_stmt *st = NULL;
    uint8_t prev[CLOUD_LEDGER_HASH_LEN], hash[CLOUD_LEDGER_HASH_LEN];
    uint64_t seq;
    int rc;

    job_id = job_id ? job_id : "";
    rc = ledger__stmt(l, ST_HEAD_GET, &st);
    if (rc != NU_OK)
        return rc;
    if (!ledger__row(st, &rc)) {
        rc = rc == NU_OK ? NU_ERR_DB : rc;
        ledger__reset(st);
        return rc;
    }
    seq = ledger__col_u64(st, 0) + 1;
    rc = ledger__col_fixed(st, 1, prev, sizeof(prev));
    ledger__reset(st);
    if (rc != NU_OK)
        return rc;

    rc = cloud_ledger_event_hash(prev, seq, ts, kind, strlen(kind), actor, strlen(actor), job_id,
                                 strlen(job_id), payload, payload_len, hash);
    if (rc != NU_OK)
        return rc;

    rc = ledger__stmt(l, ST_EV_INSERT, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_u64(st, 1, seq);
    ledger__bind_u64(st, 2, ts);
    ledger__bind_text(st, 3, kind);
    ledger__bind_text(st, 4, actor);
    ledger__bind_text(st, 5, job_id);
    ledger__bind_blob_text(st, 6, payload, payload_len);
    ledger__bind_blob(st, 7, prev, sizeof(prev));
    ledger__bind_blob(st, 8, hash, sizeof(hash));
    rc = ledger__run(l, st, "audit insert");
    if (rc != NU_OK)
        return rc;

    rc = ledger__stmt(l, ST_HEAD_SET, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_u64(st, 1, seq);
    ledger__bind_blob(st, 2, hash, sizeof(hash));
    rc = ledger__run(l, st, "audit head update");
    if (rc == NU_OK && out_seq)
        *out_seq = seq;
    return rc;
}

/* Append the event whose payload was built in l->payload. */
static int ledger__append_json(struct cloud_ledger *l, struct ledger_json *j, uint64_t ts,
                               const char *kind, const char *actor, const char *job_id)
{
    if (j->overflow) {
        nu_error("ledger: %s payload exceeds %zu bytes", kind, j->cap);
        return NU_ERR_INTERNAL;
    }
    return ledger__append(l, ts, kind, actor, job_id, j->buf, j->len, NULL);
}

/* ---------------------------------------------------------------- open */

static int ledger__pragma_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc != SQLITE_OK)
        return ledger__dberr(db, rc, sql);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = NU_OK;
    } else {
        rc = ledger__dberr(db, rc, sql);
    }
    sqlite3_finalize(st);
    return rc;
}

static int ledger__exec_sql(sqlite3 *db, const char *sql)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? NU_OK : ledger__dberr(db, rc, "schema");
}

/* Run a pragma that answers one text value; DB unless it is `want`. */
static int ledger__pragma_text(sqlite3 *db, const char *sql, const char *want)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *v;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc != SQLITE_OK)
        return ledger__dberr(db, rc, sql);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        rc = ledger__dberr(db, rc, sql);
    } else {
        v = sqlite3_column_text(st, 0);
        rc = v && strcmp((const char *)v, want) == 0 ? NU_OK : NU_ERR_DB;
        if (rc != NU_OK)
            nu_error("ledger: %s answered %s, need %s", sql, v ? (const char *)v : "null", want);
    }
    sqlite3_finalize(st);
    return rc;
}

/*
 * Is this our kind of file? A fresh file (no schema, version 0) is fine.
 * Errors: CONFIG (some other database), NOT_SUPPORTED (newer schema).
 */
static int ledger__identify(sqlite3 *db, int64_t *out_version)
{
    int64_t app = 0, version = 0, objects = 0;
    /* One snapshot for the three reads: another process may commit the
     * schema between them (app 0 with version 1 would look foreign). */
    int own = sqlite3_get_autocommit(db);
    int rc = own ? ledger__exec_sql(db, "BEGIN") : NU_OK;

    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "PRAGMA application_id", &app);
    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "PRAGMA user_version", &version);
    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "SELECT count(*) FROM sqlite_master", &objects);
    if (own && !sqlite3_get_autocommit(db))
        (void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    if (rc != NU_OK)
        return rc;
    if (app != CLOUD_LEDGER_APPLICATION_ID && (app != 0 || version != 0 || objects != 0)) {
        nu_error("ledger: not a NuSEC ledger (application_id %lld, user_version %lld)",
                 (long long)app, (long long)version);
        return NU_ERR_CONFIG;
    }
    if (version > CLOUD_LEDGER_SCHEMA_VERSION || version < 0) {
        nu_error("ledger: schema version %lld is newer than this program's %d", (long long)version,
                 CLOUD_LEDGER_SCHEMA_VERSION);
        return NU_ERR_NOT_SUPPORTED;
    }
    *out_version = version;
    return NU_OK;
}

/* One integer from a parameterless query on a store (1 row), else DB. */
static int ledger__store_int(struct ledger_store *store, const char *sql, int64_t *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger_store_prepare(store, sql, &st);
    if (rc == NU_OK && ledger__row(st, &rc))
        *out = ledger_store_col_i64(st, 0);
    else if (rc == NU_OK)
        rc = NU_ERR_DB;
    ledger_store_finalize(st);
    return rc;
}

/*
 * PostgreSQL's ledger_identify: version 0 when the database has no ledger
 * yet. Errors: CONFIG (ledger_meta of some other program), NOT_SUPPORTED
 * (newer schema), CONNECTION, DB.
 */
static int ledger__pg_identify(struct ledger_store *store, int64_t *out_version)
{
    int64_t exists = 0, app = 0, version = 0;
    int rc = ledger__store_int(store, "SELECT count(*) FROM pg_class c JOIN pg_namespace n"
                                      " ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
                                      " AND c.relname = 'ledger_meta'",
                               &exists);
    if (rc == NU_OK && exists)
        rc = ledger__store_int(store, "SELECT application_id FROM ledger_meta WHERE id = 1", &app);
    if (rc == NU_OK && exists)
        rc = ledger__store_int(store, "SELECT version FROM ledger_meta WHERE id = 1", &version);
    if (rc != NU_OK)
        return rc;
    if (exists && app != CLOUD_LEDGER_APPLICATION_ID) {
        nu_error("ledger: this PostgreSQL database holds some other ledger_meta"
                 " (application_id %lld)", (long long)app);
        return NU_ERR_CONFIG;
    }
    if (version > CLOUD_LEDGER_SCHEMA_VERSION || version < 0) {
        nu_error("ledger: the database's schema version %lld is newer than this program's %d;"
                 " upgrade the agent", (long long)version, CLOUD_LEDGER_SCHEMA_VERSION);
        return NU_ERR_NOT_SUPPORTED;
    }
    *out_version = version;
    return NU_OK;
}

/* Bring the schema to our version under the write lock (SQLite) or an
 * advisory lock (PostgreSQL), so two processes do not both create it. */
static int ledger__migrate(struct cloud_ledger *l)
{
    int pg = ledger__is_pg(l);
    int64_t version = 0;
    char sql[128];
    int rc = ledger__begin(l, 1);

    if (rc == NU_OK && pg)
        rc = ledger_store_xact_lock(l->store, 0, "schema", 6);
    if (rc != NU_OK) {
        ledger__rollback(l);
        return rc;
    }
    rc = pg ? ledger__pg_identify(l->store, &version) : ledger__identify(l->db, &version);
    for (int64_t v = version; rc == NU_OK && v < CLOUD_LEDGER_SCHEMA_VERSION; v++) {
        nu_info("ledger: migrating schema %lld -> %lld", (long long)v, (long long)v + 1);
        rc = pg ? ledger_store_exec(l->store, ledger_schema_pg_migrations[v])
                : ledger__exec_sql(l->db, ledger__migrations[v]);
    }
    if (rc == NU_OK && version == 0) {
        struct ledger_json j;
        lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
        lj_raw(&j, "{", 1);
        lj_u64(&j, "schema", CLOUD_LEDGER_SCHEMA_VERSION);
        lj_raw(&j, "}", 1);
        rc = ledger__append_json(l, &j, nu_time_ms(), "ledger.created", LEDGER_ACTOR_SELF, "");
    } else if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION) {
        /* An upgrade is a change of what the file holds: it is in the chain. */
        struct ledger_json j;
        lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
        lj_raw(&j, "{", 1);
        lj_u64(&j, "from", (uint64_t)version);
        lj_u64(&j, "to", CLOUD_LEDGER_SCHEMA_VERSION);
        lj_raw(&j, "}", 1);
        rc = ledger__append_json(l, &j, nu_time_ms(), "ledger.migrated", LEDGER_ACTOR_SELF, "");
    }
    if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION && pg) {
        snprintf(sql, sizeof(sql), "INSERT INTO ledger_meta (id, application_id, version)"
                 " VALUES (1, %d, %d) ON CONFLICT (id) DO UPDATE SET version = %d",
                 CLOUD_LEDGER_APPLICATION_ID, CLOUD_LEDGER_SCHEMA_VERSION,
                 CLOUD_LEDGER_SCHEMA_VERSION);
        rc = ledger_store_exec(l->store, sql);
    } else if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION) {
        snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d",
                 CLOUD_LEDGER_APPLICATION_ID, CLOUD_LEDGER_SCHEMA_VERSION);
        rc = ledger__exec_sql(l->db, sql);
    }
    if (rc == NU_OK)
        return ledger__commit(l);
    ledger__rollback(l);
    return rc;
}

/* Create the file 0600 ourselves: SQLite would use the umask, and the WAL
 * and shm files copy the main file's mode. */
/* Create the file 0600 if it is new; never open an existing one here: POSIX
 * locks belong to the process, so closing ANY descriptor of the file drops
 * the locks of this process's other connections (SQLite then lets another
 * process delete the WAL under them). O_EXCL leaves no descriptor to close. */
static int ledger__create_file(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 && errno == EEXIST)
        return NU_OK;
    if (fd < 0) {
        nu_error("ledger: cannot create %s", path);
        return NU_ERR_IO;
    }
    close(fd);
    return NU_OK;
}

/*
 * Switch to WAL. The switch upgrades a shared lock to an exclusive one, and
 * when two processes do that at once on a fresh file SQLite answers BUSY at
 * once instead of calling the busy handler (that wait could deadlock), so
 * retry, bounded by the busy timeout. journal_mode answers the mode it ended
 * in, which may not be WAL (a file system without shared memory): the
 * durability claims rest on it, so anything else is an error.
 */
static int ledger__wal_on(sqlite3 *db)
{
    uint64_t deadline = nu_mono_ms() + CLOUD_LEDGER_BUSY_TIMEOUT_MS;
    int rc;

    for (;;) {
        rc = ledger__pragma_text(db, "PRAGMA journal_mode = WAL", "wal");
        if (rc != NU_ERR_BUSY || nu_mono_ms() >= deadline)
            return rc;
        /* A few ms, different per process, so the contenders fall out of step. */
        usleep(1000u * (2u + (unsigned)getpid() % 13u));
    }
}

static int ledger__configure(sqlite3 *db, int write)
{
    int on = 1, off = 0;
    int64_t v;
    int rc;

    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, CLOUD_LEDGER_BUSY_TIMEOUT_MS);
    /* No writable_schema / journal tricks from SQL; schema code not trusted. */
    sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, &on);
    sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, &off);
    if (!write)
        return NU_OK;
    rc = ledger__wal_on(db);
    if (rc == NU_OK)
        rc = ledger__exec_sql(db, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
                                  /* 16 MiB instead of 2: at a million certificates the
                                   * bench measured ~10% more issuance (64 MiB: no more) */
                                  " PRAGMA cache_size = -16384");
    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "PRAGMA synchronous", &v);
    if (rc == NU_OK && v != 2) /* FULL */
        rc = NU_ERR_DB;
    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "PRAGMA foreign_keys", &v);
    if (rc == NU_OK && v != 1)
        rc = NU_ERR_DB;
    return rc;
}

static int ledger__alloc_scratch(struct cloud_ledger *l)
{
    l->sign_out = calloc(1, sizeof(*l->sign_out));
    l->cert = calloc(1, sizeof(*l->cert));
    l->prog = calloc(1, sizeof(*l->prog));
    l->alloc = calloc(CLOUD_LEDGER_ALLOC_MAX, sizeof(*l->alloc));
    l->payload = malloc(LEDGER_PAYLOAD_INTERNAL_MAX);
    if (!l->sign_out || !l->cert || !l->prog || !l->alloc || !l->payload)
        return NU_ERR_NOMEM;
    return NU_OK;
}

static int ledger__new(struct cloud_ledger **out)
{
    struct cloud_ledger *l = calloc(1, sizeof(*l));
    int rc;

    *out = NULL;
    if (!l)
        return NU_ERR_NOMEM;
    l->refusal_ttl_ms = CLOUD_LEDGER_REFUSAL_TTL_MS;
    rc = ledger__alloc_scratch(l);
    if (rc != NU_OK) {
        cloud_ledger_close(l);
        return rc;
    }
    *out = l;
    return NU_OK;
}

/*
 * PostgreSQL: connect, then the schema must be ours and current; an agent
 * does not create nor migrate it unless `migrate` (the owner runs
 * `nusec ledger init|migrate`).
 */
static int ledger__pg_open(const char *uri, const char *password_file, int migrate,
                           struct cloud_ledger **out_ledger)
{
    struct cloud_ledger *l = NULL;
    int64_t version = 0;
    int rc = ledger__new(&l);

    if (rc == NU_OK)
        rc = ledger_store_open(uri, password_file, &l->store);
    if (rc == NU_OK)
        rc = ledger__pg_identify(l->store, &version);
    if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION) {
        if (migrate) {
            rc = ledger__migrate(l);
        } else {
            nu_error("ledger: the PostgreSQL database has %s (schema %lld, this agent needs %d):"
                     " run `nusec ledger %s --ledger URI` as the owner role",
                     version ? "an older ledger" : "no ledger", (long long)version,
                     CLOUD_LEDGER_SCHEMA_VERSION, version ? "migrate" : "init");
            rc = NU_ERR_CONFIG;
        }
    }
    if (rc != NU_OK) {
        cloud_ledger_close(l);
        return rc;
    }
    *out_ledger = l;
    return NU_OK;
}

int cloud_ledger_connect(const char *target, const char *password_file, int migrate,
                         struct cloud_ledger **out_ledger)
{
    if (!target || !*target || !out_ledger)
        return NU_ERR_INVALID_ARG;
    *out_ledger = NULL;
    if (ledger_store_target_is_pg(target))
        return ledger__pg_open(target, password_file, migrate, out_ledger);
    if (!strncmp(target, "sqlite:", 7))
        target += 7;
    return cloud_ledger_open(target, out_ledger);
}

int cloud_ledger_init(const char *target, const char *password_file, const char *agent_role)
{
    struct cloud_ledger *l = NULL;
    char sql[4096], quoted[2 * CLOUD_LEDGER_ID_MAX + 3];
    int rc;

    if (agent_role && ledger__id_check(agent_role) != NU_OK)
        return NU_ERR_INVALID_ARG;
    rc = cloud_ledger_connect(target, password_file, 1, &l);
    if (rc == NU_OK && agent_role && ledger__is_pg(l)) {
        /* An id is [A-Za-z0-9._-]: quoting it as an identifier is enough. */
        snprintf(quoted, sizeof quoted, "\"%s\"", agent_role);
        snprintf(sql, sizeof sql, LEDGER_SCHEMA_PG_GRANTS, quoted);
        rc = ledger_store_exec(l->store, sql);
    }
    cloud_ledger_close(l);
    return rc;
}

int cloud_ledger_open(const char *path, struct cloud_ledger **out_ledger)
{
    struct cloud_ledger *l = NULL;
    int64_t version = 0;
    int rc;

    if (!path || !*path || !out_ledger)
        return NU_ERR_INVALID_ARG;
    *out_ledger = NULL;
    if (ledger_store_target_is_pg(path))
        return ledger__pg_open(path, NULL, 0, out_ledger);
    rc = ledger__create_file(path);
    if (rc != NU_OK)
        return rc;
    rc = ledger__new(&l);
    if (rc != NU_OK)
        return rc;
    rc = sqlite3_open_v2(path, &l->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW, NULL);
    if (rc != SQLITE_OK) {
        rc = ledger__dberr(l->db, rc, "open");
        goto out;
    }
    /* Identify before switching to WAL, so a foreign file is left as it was. */
    sqlite3_busy_timeout(l->db, CLOUD_LEDGER_BUSY_TIMEOUT_MS);
    rc = ledger__identify(l->db, &version);
    if (rc == NU_OK)
        rc = ledger__configure(l->db, 1);
    if (rc == NU_OK)
        rc = ledger_store_sqlite_wrap(l->db, &l->store); /* it closes the handle now */
    if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION)
        rc = ledger__migrate(l);
out:
    if (rc != NU_OK) {
        cloud_ledger_close(l);
        return rc;
    }
    *out_ledger = l;
    return NU_OK;
}

void cloud_ledger_close(struct cloud_ledger *ledger)
{
    if (!ledger)
        return;
    if (ledger->store)
        ledger_store_close(ledger->store); /* its statements, and the SQLite handle */
    else if (ledger->db)
        sqlite3_close(ledger->db);
    free(ledger->payload);
    free(ledger->alloc);
    free(ledger->prog);
    free(ledger->cert);
    free(ledger->sign_out);
    free(ledger);
}

int cloud_ledger_set_busy_timeout(struct cloud_ledger *ledger, unsigned ms)
{
    if (!ledger || ms > INT32_MAX)
        return NU_ERR_INVALID_ARG;
    if (ledger->db) /* PostgreSQL: row locks wait until the holder commits */
        sqlite3_busy_timeout(ledger->db, (int)ms);
    return NU_OK;
}

void cloud_ledger_set_refusal_ttl(struct cloud_ledger *ledger, uint64_t ms)
{
    if (ledger)
        ledger->refusal_ttl_ms = ms;
}

/* ------------------------------------------------------------ row readers */

static const char *const ledger__job_status_names[] = {
    [CLOUD_LEDGER_JOB_ACTIVE] = "active",
    [CLOUD_LEDGER_JOB_PAUSED] = "paused",
    [CLOUD_LEDGER_JOB_CLOSED] = "closed",
    [CLOUD_LEDGER_JOB_EXHAUSTED] = "exhausted",
};

static const char *const ledger__cert_state_names[] = {
    [CLOUD_LEDGER_CERT_ISSUED] = "issued",
    [CLOUD_LEDGER_CERT_PROVISIONED] = "provisioned",
    [CLOUD_LEDGER_CERT_FAILED] = "failed",
    [CLOUD_LEDGER_CERT_REVOKED] = "revoked",
};

/* Index of `name` in a names table (entry 0 unused), 0 when absent. */
static int ledger__name_index(const char *const *names, int n, const unsigned char *name)
{
    for (int i = 1; name && i < n; i++) {
        if (strcmp(names[i], (const char *)name) == 0)
            return i;
    }
    return 0;
}

static int ledger__job_row(struct ledger_store_stmt *st, struct cloud_ledger_job *job)
{
    int rc;

    memset(job, 0, sizeof(*job));
    rc = ledger__col_str(st, 0, job->job_id, sizeof(job->job_id));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 1, job->firmware, sizeof(job->firmware));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 2, job->subject_template, sizeof(job->subject_template));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 3, job->created_by, sizeof(job->created_by));
    job->status = (enum cloud_ledger_job_status)ledger__name_index(ledger__job_status_names, 5,
                                                                   ledger__col_text(st, 4));
    job->quota = ledger__col_u32(st, 5);
    job->issued = ledger__col_u32(st, 6);
    job->refused = ledger__col_u32(st, 7);
    job->created_at_ms = ledger__col_u64(st, 8);
    job->expires_at_ms = ledger__col_u64(st, 9);
    if (rc == NU_OK && job->status == 0)
        rc = NU_ERR_DB;
    return rc;
}

static int ledger__prog_row(struct ledger_store_stmt *st, struct cloud_ledger_programmer *p)
{
    size_t n = 0;
    const unsigned char *state;
    int rc;

    memset(p, 0, sizeof(*p));
    rc = ledger__col_str(st, 0, p->programmer_id, sizeof(p->programmer_id));
    state = ledger__col_text(st, 1);
    p->state = state && strcmp((const char *)state, "revoked") == 0
                   ? CLOUD_LEDGER_PROGRAMMER_REVOKED
                   : CLOUD_LEDGER_PROGRAMMER_ENROLLED;
    if (rc == NU_OK)
        rc = ledger__col_str(st, 2, p->cert_serial, sizeof(p->cert_serial));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 3, p->cert_pem, sizeof(p->cert_pem));
    if (rc == NU_OK)
        rc = ledger__col_blob(st, 4, p->package_pubkey, sizeof(p->package_pubkey), &n);
    p->enrolled_at_ms = ledger__col_u64(st, 5);
    p->revoked_at_ms = ledger__col_u64(st, 6);
    if (rc == NU_OK)
        rc = ledger__col_str(st, 7, p->revoke_reason, sizeof(p->revoke_reason));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 8, p->vendor_serial, sizeof(p->vendor_serial));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 9, p->firmware_measurement, sizeof(p->firmware_measurement));
    return rc;
}

static int ledger__cert_row(struct ledger_store_stmt *st, struct cloud_ledger_cert *c)
{
    int rc;

    memset(c, 0, sizeof(*c));
    rc = ledger__col_str(st, 0, c->serial, sizeof(c->serial));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 1, c->job_id, sizeof(c->job_id));
    if (rc == NU_OK)
        rc = ledger__col_blob(st, 2, c->device_uid, sizeof(c->device_uid), &c->device_uid_len);
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 3, c->pubkey_hash, sizeof(c->pubkey_hash));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 4, c->programmer_id, sizeof(c->programmer_id));
    if (rc == NU_OK)
        rc = ledger__col_blob(st, 5, c->idempotency_key, sizeof(c->idempotency_key),
                              &c->idempotency_key_len);
    if (rc == NU_OK)
        rc = ledger__col_str(st, 6, c->pem, sizeof(c->pem));
    c->state = (enum cloud_ledger_cert_state)ledger__name_index(ledger__cert_state_names, 5,
                                                                ledger__col_text(st, 7));
    c->issued_at_ms = ledger__col_u64(st, 8);
    c->state_at_ms = ledger__col_u64(st, 9);
    if (rc == NU_OK)
        rc = ledger__col_str(st, 10, c->detail, sizeof(c->detail));
    c->revoked_at_ms = ledger__col_u64(st, 11);
    if (rc == NU_OK)
        rc = ledger__col_str(st, 12, c->revoke_reason, sizeof(c->revoke_reason));
    if (rc == NU_OK && c->state == 0)
        rc = NU_ERR_DB;
    return rc;
}

/* Run a one-row lookup: NU_OK with the row ready (caller resets),
 * NOT_FOUND (statement already reset), or a database error. */
static int ledger__step_one(struct cloud_ledger *l, struct ledger_store_stmt *st, const char *what)
{
    int rc;

    (void)l;
    (void)what;
    if (ledger__row(st, &rc))
        return NU_OK;
    rc = rc == NU_OK ? NU_ERR_NOT_FOUND : rc;
    ledger__reset(st);
    return rc;
}

/* Step statement `id` (one text parameter, `key`) to its one row: NU_OK with
 * *out_st on the row (caller resets), NOT_FOUND, or a database error. */
static int ledger__row_by_key(struct cloud_ledger *l, enum ledger_stmt id, const char *key,
                              const char *what, struct ledger_store_stmt **out_st)
{
    int rc = ledger__stmt(l, id, out_st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(*out_st, 1, key);
    return ledger__step_one(l, *out_st, what);
}

static int ledger__job_read(struct cloud_ledger *l, const char *job_id,
                            struct cloud_ledger_job *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__row_by_key(l, ST_JOB_GET, job_id, "job get", &st);
    if (rc != NU_OK)
        return rc;
    rc = ledger__job_row(st, out);
    ledger__reset(st);
    return rc;
}

/* A programmer's state: NU_OK (enrolled), REVOKED, NOT_FOUND, or a DB error.
 * out_serial (may be NULL) receives its certificate serial. */
static int ledger__prog_state(struct cloud_ledger *l, const char *programmer_id,
                              char out_serial[CLOUD_LEDGER_SERIAL_MAX + 1])
{
    struct ledger_store_stmt *st = NULL;
    const unsigned char *state;
    int rc = ledger__row_by_key(l, ST_PROG_STATE, programmer_id, "programmer state", &st);
    if (rc != NU_OK)
        return rc;
    state = ledger__col_text(st, 0);
    if (out_serial)
        rc = ledger__col_str(st, 1, out_serial, CLOUD_LEDGER_SERIAL_MAX + 1);
    if (rc == NU_OK && !(state && strcmp((const char *)state, "enrolled") == 0))
        rc = NU_ERR_REVOKED;
    ledger__reset(st);
    return rc;
}

/* The requester's allocation in a job: NU_OK, NOT_FOUND, or a DB error. */
static int ledger__alloc_read(struct cloud_ledger *l, const char *job_id, const char *programmer_id,
                              uint32_t *out_limit, uint32_t *out_issued)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_ALLOC_GET, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, job_id);
    ledger__bind_text(st, 2, programmer_id);
    rc = ledger__step_one(l, st, "allocation get");
    if (rc != NU_OK)
        return rc;
    *out_limit = ledger__col_u32(st, 0);
    *out_issued = ledger__col_u32(st, 1);
    ledger__reset(st);
    return NU_OK;
}

/* Allocations of a job into out[cap]; *out_n is the full count. */
static int ledger__alloc_list(struct cloud_ledger *l, const char *job_id,
                              struct cloud_ledger_alloc *out, size_t cap, size_t *out_n)
{
    struct ledger_store_stmt *st = NULL;
    size_t n = 0;
    int rc = ledger__stmt(l, ST_ALLOC_LIST, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, job_id);
    while (ledger__row(st, &rc)) {
        if (n < cap) {
            memset(&out[n], 0, sizeof(out[n]));
            if (ledger__col_str(st, 0, out[n].programmer_id, sizeof(out[n].programmer_id)) !=
                NU_OK) {
                ledger__reset(st);
                return NU_ERR_DB;
            }
            out[n].limit = ledger__col_u32(st, 1);
            out[n].issued = ledger__col_u32(st, 2);
        }
        n++;
    }
    ledger__reset(st);
    if (out_n)
        *out_n = n;
    return rc;
}

/* Resolve a certificate reference into *out. */
static int ledger__cert_find(struct cloud_ledger *l, const struct cloud_ledger_cert_ref *ref,
                             struct cloud_ledger_cert *out)
{
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (ref->serial) {
        rc = ledger__serial_norm(ref->serial, serial);
        if (rc == NU_OK)
            rc = ledger__stmt(l, ST_CERT_BY_SERIAL, &st);
        if (rc != NU_OK)
            return rc;
        ledger__bind_text(st, 1, serial);
    } else {
        rc = ledger__stmt(l, ST_CERT_BY_JOB_UID, &st);
        if (rc != NU_OK)
            return rc;
        ledger__bind_text(st, 1, ref->job_id);
        ledger__bind_blob(st, 2, ref->device_uid, ref->device_uid_len);
    }
    rc = ledger__step_one(l, st, "certificate get");
    if (rc != NU_OK)
        return rc;
    rc = ledger__cert_row(st, out);
    ledger__reset(st);
    return rc;
}

static int ledger__cert_ref_check(const struct cloud_ledger_cert_ref *ref)
{
    int rc;

    if (!ref)
        return NU_ERR_INVALID_ARG;
    if (ref->serial) {
        char tmp[CLOUD_LEDGER_SERIAL_MAX + 1];
        return ledger__serial_norm(ref->serial, tmp);
    }
    rc = ledger__id_check(ref->job_id);
    if (rc != NU_OK)
        return rc;
    if (!ref->device_uid || ref->device_uid_len == 0)
        return NU_ERR_INVALID_ARG;
    return ref->device_uid_len > CLOUD_LEDGER_UID_MAX ? NU_ERR_TOO_LARGE : NU_OK;
}

/* Walk a cached statement's rows: decode each with `row` into `item` and
 * hand it to `visit`. Returns NU_OK, a DB error, or the visitor's value. */
static int ledger__walk(struct cloud_ledger *l, struct ledger_store_stmt *st,
                        int (*row)(struct ledger_store_stmt *, void *), void *item,
                        int (*visit)(void *, const void *), void *ctx)
{
    int rc;

    (void)l;
    while (ledger__row(st, &rc)) {
        rc = row(st, item);
        if (rc == NU_OK)
            rc = visit(ctx, item);
        if (rc != NU_OK)
            goto out;
    }
out:
    ledger__reset(st);
    return rc;
}

/* Adapters between the typed rows/visitors and ledger__walk. */
struct ledger_visit {
    void *fn;
    void *ctx;
};

/* A whole listing of statement `id` (no parameters) in one read transaction. */
static int ledger__list_all(struct cloud_ledger *l, enum ledger_stmt id,
                            int (*row)(struct ledger_store_stmt *, void *), void *item,
                            int (*visit)(void *, const void *), void *ctx)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__begin(l, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(l, id, &st);
    if (rc == NU_OK)
        rc = ledger__walk(l, st, row, item, visit, ctx);
    ledger__rollback(l);
    return rc;
}

/* ------------------------------------------------------------------- jobs */

static void ledger__token_id(struct ledger_json *j, const uint8_t hash[NU_SHA256_LEN]);

static int ledger__secrets_check(const struct cloud_ledger_job_secrets *x, size_t n)
{
    if (!x->packages || x->image_size == 0)
        return NU_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++) {
        if (!x->packages[i].package || x->packages[i].package_len == 0)
            return NU_ERR_INVALID_ARG;
        if (x->packages[i].package_len > CLOUD_LEDGER_PACKAGE_MAX)
            return NU_ERR_TOO_LARGE;
    }
    return NU_OK;
}

static int ledger__job_spec_check(const struct cloud_ledger_job_spec *s)
{
    uint64_t sum = 0;
    int rc;

    if (!s || !s->alloc || s->n_alloc == 0 || s->quota == 0 || !ledger__time_ok(s->now_ms) ||
        !ledger__time_ok(s->expires_at_ms) || (s->expires_at_ms && s->expires_at_ms <= s->now_ms))
        return NU_ERR_INVALID_ARG;
    if (s->n_alloc > CLOUD_LEDGER_ALLOC_MAX)
        return NU_ERR_TOO_LARGE;
    rc = ledger__id_check(s->job_id);
    if (rc == NU_OK)
        rc = ledger__id_check(s->firmware);
    if (rc == NU_OK)
        rc = ledger__id_check(s->actor);
    if (rc == NU_OK)
        rc = ledger__text_check(s->subject_template, CLOUD_LEDGER_TEXT_MAX);
    for (size_t i = 0; rc == NU_OK && i < s->n_alloc; i++) {
        const struct cloud_ledger_alloc *a = &s->alloc[i];
        if (memchr(a->programmer_id, '\0', sizeof(a->programmer_id)) == NULL)
            return NU_ERR_INVALID_ARG;
        rc = ledger__id_check(a->programmer_id);
        if (rc == NU_OK && a->limit == 0)
            rc = NU_ERR_INVALID_ARG;
        for (size_t k = 0; rc == NU_OK && k < i; k++) {
            if (strcmp(s->alloc[k].programmer_id, a->programmer_id) == 0)
                rc = NU_ERR_INVALID_ARG;
        }
        sum += a->limit;
    }
    if (rc == NU_OK && sum > s->quota)
        rc = NU_ERR_INVALID_ARG;
    if (rc == NU_OK && s->secrets)
        rc = ledger__secrets_check(s->secrets, s->n_alloc);
    return rc;
}

static int ledger__job_created_event(struct cloud_ledger *l, const struct cloud_ledger_job_spec *s)
{
    struct ledger_json j;

    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "firmware", s->firmware);
    lj_u64(&j, "quota", s->quota);
    lj_u64(&j, "expires_at_ms", s->expires_at_ms);
    lj_str(&j, "subject_template", s->subject_template);
    lj_key(&j, "allocations");
    lj_raw(&j, "[", 1);
    for (size_t i = 0; i < s->n_alloc; i++) {
        lj_key(&j, NULL);
        lj_raw(&j, "{", 1);
        lj_str(&j, "programmer", s->alloc[i].programmer_id);
        lj_u64(&j, "limit", s->alloc[i].limit);
        lj_raw(&j, "}", 1);
    }
    lj_raw(&j, "]}", 2);
    return ledger__append_json(l, &j, s->now_ms, "job.created", s->actor, s->job_id);
}

/* Firmware key, packages and their event, inside job_create's transaction. */
static int ledger__job_secrets_put(struct cloud_ledger *l, const struct cloud_ledger_job_spec *s)
{
    const struct cloud_ledger_job_secrets *x = s->secrets;
    uint8_t pkg_hash[NU_SHA256_LEN];
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_KEYS_INSERT, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, s->job_id);
    ledger__bind_blob(st, 2, x->firmware_key, sizeof(x->firmware_key));
    ledger__bind_blob(st, 3, x->image_digest, sizeof(x->image_digest));
    ledger__bind_u64(st, 4, x->image_size);
    ledger__bind_blob(st, 5, x->request_hash, sizeof(x->request_hash));
    ledger__bind_u64(st, 6, s->now_ms);
    rc = ledger__run(l, st, "job keys insert");
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_hex(&j, "image_digest", x->image_digest, sizeof(x->image_digest));
    lj_u64(&j, "image_size", x->image_size);
    lj_key(&j, "packages");
    lj_raw(&j, "[", 1);
    for (size_t i = 0; rc == NU_OK && i < s->n_alloc; i++) {
        const struct cloud_ledger_job_package *p = &x->packages[i];
        rc = ledger__stmt(l, ST_PKG_INSERT, &st);
        if (rc != NU_OK)
            break;
        ledger__bind_text(st, 1, s->job_id);
        ledger__bind_text(st, 2, s->alloc[i].programmer_id);
        ledger__bind_u64(st, 3, i);
        ledger__bind_blob(st, 4, p->token_hash, sizeof(p->token_hash));
        ledger__bind_blob(st, 5, p->package, p->package_len);
        rc = ledger__run(l, st, "package insert");
        if (rc == NU_OK)
            rc = nu_sha256(p->package, p->package_len, pkg_hash);
        lj_key(&j, NULL);
        lj_raw(&j, "{", 1);
        lj_str(&j, "programmer", s->alloc[i].programmer_id);
        ledger__token_id(&j, p->token_hash);
        lj_hex(&j, "package_sha256", pkg_hash, sizeof(pkg_hash));
        lj_raw(&j, "}", 1);
    }
    lj_raw(&j, "]}", 2);
    if (rc == NU_OK)
        rc = ledger__append_json(l, &j, s->now_ms, "job.packages", s->actor, s->job_id);
    return rc;
}

int cloud_ledger_job_create(struct cloud_ledger *ledger, const struct cloud_ledger_job_spec *spec)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__job_spec_check(spec);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc != NU_OK)
        return rc;
    for (size_t i = 0; rc == NU_OK && i < spec->n_alloc; i++)
        rc = ledger__prog_state(ledger, spec->alloc[i].programmer_id, NULL);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_JOB_INSERT, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, spec->job_id);
    ledger__bind_text(st, 2, spec->firmware);
    ledger__bind_u64(st, 3, spec->quota);
    ledger__bind_u64(st, 4, spec->now_ms);
    ledger__bind_u64(st, 5, spec->expires_at_ms);
    ledger__bind_text(st, 6, spec->subject_template);
    ledger__bind_text(st, 7, spec->actor);
    rc = ledger__run(ledger, st, "job insert");
    for (size_t i = 0; rc == NU_OK && i < spec->n_alloc; i++) {
        rc = ledger__stmt(ledger, ST_ALLOC_INSERT, &st);
        if (rc != NU_OK)
            break;
        ledger__bind_text(st, 1, spec->job_id);
        ledger__bind_text(st, 2, spec->alloc[i].programmer_id);
        ledger__bind_u64(st, 3, spec->alloc[i].limit);
        rc = ledger__run(ledger, st, "allocation insert");
    }
    if (rc == NU_OK)
        rc = ledger__job_created_event(ledger, spec);
    if (rc == NU_OK && spec->secrets)
        rc = ledger__job_secrets_put(ledger, spec);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_job_get(struct cloud_ledger *ledger, const char *job_id,
                         struct cloud_ledger_job *out_job, struct cloud_ledger_alloc *out_alloc,
                         size_t alloc_cap, size_t *out_n_alloc)
{
    int rc;

    if (!ledger || !out_job || (!out_alloc && alloc_cap))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 0);
    if (rc != NU_OK)
        return rc;
    rc = ledger__job_read(ledger, job_id, out_job);
    if (rc == NU_OK)
        rc = ledger__alloc_list(ledger, job_id, out_alloc, alloc_cap, out_n_alloc);
    ledger__rollback(ledger); /* read-only: nothing to commit */
    return rc;
}

/* A job row plus its allocations, for ledger__walk. */
struct ledger_job_item {
    struct cloud_ledger *l;
    cloud_ledger_job_visit_fn visit;
    void *ctx;
    struct cloud_ledger_job job;
    size_t n_alloc;
};

static int ledger__job_row_v(struct ledger_store_stmt *st, void *item)
{
    struct ledger_job_item *it = item;
    int rc = ledger__job_row(st, &it->job);

    if (rc == NU_OK)
        rc = ledger__alloc_list(it->l, it->job.job_id, it->l->alloc, CLOUD_LEDGER_ALLOC_MAX,
                                &it->n_alloc);
    if (it->n_alloc > CLOUD_LEDGER_ALLOC_MAX)
        it->n_alloc = CLOUD_LEDGER_ALLOC_MAX;
    return rc;
}

static int ledger__job_visit_v(void *ctx, const void *item)
{
    const struct ledger_job_item *it = item;
    (void)ctx;
    return it->visit(it->ctx, &it->job, it->l->alloc, it->n_alloc);
}

int cloud_ledger_job_list(struct cloud_ledger *ledger, cloud_ledger_job_visit_fn visit, void *ctx)
{
    struct ledger_job_item it = {.l = ledger, .visit = visit, .ctx = ctx};
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_JOB_LIST, &st);
    if (rc == NU_OK)
        rc = ledger__walk(ledger, st, ledger__job_row_v, &it, ledger__job_visit_v, NULL);
    ledger__rollback(ledger);
    return rc;
}

/* The status an action leads to from `from`, 0 when not allowed. */
static enum cloud_ledger_job_status ledger__job_next(enum cloud_ledger_job_status from,
                                                     enum cloud_ledger_job_action action)
{
    switch (action) {
    case CLOUD_LEDGER_JOB_PAUSE:
        return from == CLOUD_LEDGER_JOB_ACTIVE ? CLOUD_LEDGER_JOB_PAUSED : 0;
    case CLOUD_LEDGER_JOB_RESUME:
        return from == CLOUD_LEDGER_JOB_PAUSED ? CLOUD_LEDGER_JOB_ACTIVE : 0;
    case CLOUD_LEDGER_JOB_CLOSE:
        return from == CLOUD_LEDGER_JOB_CLOSED ? 0 : CLOUD_LEDGER_JOB_CLOSED;
    }
    return 0;
}

int cloud_ledger_job_control(struct cloud_ledger *ledger, const char *job_id,
                             enum cloud_ledger_job_action action, const char *actor,
                             uint64_t now_ms, struct cloud_ledger_job *out_job)
{
    static const char *const kinds[] = {NULL, "job.paused", "job.resumed", "job.closed"};
    struct cloud_ledger_job job;
    enum cloud_ledger_job_status next;
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || action < CLOUD_LEDGER_JOB_PAUSE || action > CLOUD_LEDGER_JOB_CLOSE ||
        !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__job_read(ledger, job_id, &job);
    if (rc != NU_OK)
        goto out;
    next = ledger__job_next(job.status, action);
    if (next == 0) {
        rc = NU_ERR_STATE;
        goto out;
    }
    rc = ledger__stmt(ledger, ST_JOB_STATUS, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, job_id);
    ledger__bind_text(st, 2, ledger__job_status_names[next]);
    ledger__bind_u64(st, 3, now_ms);
    rc = ledger__run(ledger, st, "job status");
    if (rc != NU_OK)
        goto out;
    lj_init(&j, ledger->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "from", ledger__job_status_names[job.status]);
    lj_str(&j, "to", ledger__job_status_names[next]);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(ledger, &j, now_ms, kinds[action], actor, job_id);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    if (rc == NU_OK && out_job) {
        job.status = next;
        *out_job = job;
    }
out:
    ledger__rollback(ledger);
    return rc;
}

/* -------------------------------------------------------- firmware delivery */

static int ledger__keys_read(struct cloud_ledger *l, const char *job_id,
                             struct cloud_ledger_job_keys *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__row_by_key(l, ST_KEYS_GET, job_id, "job keys get", &st);
    if (rc != NU_OK)
        return rc;
    rc = ledger__col_fixed(st, 0, out->firmware_key, sizeof(out->firmware_key));
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 1, out->image_digest, sizeof(out->image_digest));
    out->image_size = ledger__col_u32(st, 2);
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 3, out->request_hash, sizeof(out->request_hash));
    ledger__reset(st);
    if (rc != NU_OK)
        nu_zero(out, sizeof(*out));
    return rc;
}

int cloud_ledger_job_keys_get(struct cloud_ledger *ledger, const char *job_id,
                              struct cloud_ledger_job_keys *out_keys)
{
    int rc;

    if (!ledger || !out_keys)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__keys_read(ledger, job_id, out_keys);
    ledger__rollback(ledger);
    return rc;
}

/* The stored token hash of (job, programmer) into out: NU_OK, NOT_FOUND, DB. */
static int ledger__token_hash_read(struct cloud_ledger *l, const char *job_id,
                                   const char *programmer_id, uint8_t out[NU_SHA256_LEN])
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_PKG_TOKEN, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, job_id);
    ledger__bind_text(st, 2, programmer_id);
    rc = ledger__step_one(l, st, "package token get");
    if (rc != NU_OK)
        return rc;
    rc = ledger__col_fixed(st, 0, out, NU_SHA256_LEN);
    ledger__reset(st);
    return rc;
}

int cloud_ledger_firmware_access(struct cloud_ledger *ledger, const char *job_id,
                                 const char *programmer_id, const uint8_t *token, size_t token_len,
                                 struct cloud_ledger_job *out_job,
                                 struct cloud_ledger_job_keys *out_keys)
{
    uint8_t given[NU_SHA256_LEN], stored[NU_SHA256_LEN];
    struct cloud_ledger_job job;
    int rc;

    if (!ledger || !token || token_len == 0 || !out_job || !out_keys)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc == NU_OK)
        rc = ledger__id_check(programmer_id);
    if (rc != NU_OK)
        return rc;
    if (token_len > CLOUD_LEDGER_FW_TOKEN_MAX)
        return NU_ERR_TOKEN;
    rc = nu_sha256(token, token_len, given);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__job_read(ledger, job_id, &job);
    if (rc == NU_OK) {
        rc = ledger__token_hash_read(ledger, job_id, programmer_id, stored);
        if (rc == NU_ERR_NOT_FOUND)
            rc = NU_ERR_NOT_AUTHORIZED;
    }
    /* Compare hashes in constant time: the hash of a guess says nothing
     * useful, but the compare should not either. */
    if (rc == NU_OK && nu_memeq_ct(given, stored, sizeof(given)) != 0)
        rc = NU_ERR_TOKEN;
    if (rc == NU_OK)
        rc = ledger__keys_read(ledger, job_id, out_keys);
    ledger__rollback(ledger);
    if (rc == NU_OK)
        *out_job = job;
    nu_zero(given, sizeof(given));
    nu_zero(stored, sizeof(stored));
    return rc;
}

int cloud_ledger_job_packages(struct cloud_ledger *ledger, const char *job_id,
                              cloud_ledger_package_visit_fn visit, void *ctx)
{
    char prog[CLOUD_LEDGER_ID_MAX + 1];
    struct ledger_store_stmt *st = NULL;
    int step = NU_OK;
    int rc;

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_PKG_LIST, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, job_id);
    while (rc == NU_OK && ledger__row(st, &step)) {
        const void *b = ledger__col_blobp(st, 1);
        int n = ledger__col_bytes(st, 1);
        rc = ledger__col_str(st, 0, prog, sizeof(prog));
        if (rc == NU_OK && (!b || n <= 0 || (size_t)n > CLOUD_LEDGER_PACKAGE_MAX))
            rc = NU_ERR_DB;
        if (rc == NU_OK)
            rc = visit(ctx, prog, b, (size_t)n);
    }
    if (rc == NU_OK && step != NU_OK)
        rc = step;
    ledger__reset(st);
out:
    ledger__rollback(ledger);
    return rc;
}

static int ledger__firmware_check(const struct cloud_ledger_firmware *fw)
{
    int rc;

    if (!fw || fw->image_size == 0 || !ledger__time_ok(fw->signed_at_ms) ||
        !memchr(fw->name, '\0', sizeof(fw->name)) ||
        !memchr(fw->signed_by, '\0', sizeof(fw->signed_by)))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(fw->name);
    if (rc == NU_OK)
        rc = ledger__id_check(fw->signed_by);
    return rc;
}

int cloud_ledger_firmware_add(struct cloud_ledger *ledger, const struct cloud_ledger_firmware *fw)
{
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__firmware_check(fw);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_FW_INSERT, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, fw->name);
    ledger__bind_blob(st, 2, fw->image_digest, sizeof(fw->image_digest));
    ledger__bind_u64(st, 3, fw->image_size);
    ledger__bind_u64(st, 4, fw->security_counter);
    ledger__bind_blob(st, 5, fw->request_hash, sizeof(fw->request_hash));
    ledger__bind_text(st, 6, fw->signed_by);
    ledger__bind_u64(st, 7, fw->signed_at_ms);
    rc = ledger__run(ledger, st, "firmware insert");
    if (rc != NU_OK)
        goto out;
    lj_init(&j, ledger->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "name", fw->name);
    lj_hex(&j, "digest", fw->image_digest, sizeof(fw->image_digest));
    lj_u64(&j, "size", fw->image_size);
    lj_u64(&j, "security_counter", fw->security_counter);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(ledger, &j, fw->signed_at_ms, "firmware.signed", fw->signed_by, "");
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_firmware_get(struct cloud_ledger *ledger, const char *name,
                              struct cloud_ledger_firmware *out_fw)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !out_fw)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(name);
    if (rc == NU_OK)
        rc = ledger__row_by_key(ledger, ST_FW_GET, name, "firmware get", &st);
    if (rc != NU_OK)
        return rc;
    memset(out_fw, 0, sizeof(*out_fw));
    rc = ledger__col_str(st, 0, out_fw->name, sizeof(out_fw->name));
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 1, out_fw->image_digest, sizeof(out_fw->image_digest));
    out_fw->image_size = ledger__col_u32(st, 2);
    out_fw->security_counter = ledger__col_u32(st, 3);
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 4, out_fw->request_hash, sizeof(out_fw->request_hash));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 5, out_fw->signed_by, sizeof(out_fw->signed_by));
    out_fw->signed_at_ms = ledger__col_u64(st, 6);
    ledger__reset(st);
    return rc;
}

/* ------------------------------------------------------------ programmers */

static int ledger__enrollment_check(const struct cloud_ledger_enrollment *e, size_t *out_pem_len)
{
    int rc;

    if (!e || !e->cert_serial || !e->cert_pem || !e->package_pubkey || !ledger__time_ok(e->now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(e->programmer_id);
    if (rc == NU_OK)
        rc = ledger__id_check(e->actor);
    if (rc != NU_OK)
        return rc;
    if (strnlen(e->cert_pem, CLOUD_LEDGER_PEM_MAX + 1) > CLOUD_LEDGER_PEM_MAX)
        return NU_ERR_TOO_LARGE;
    if (!ledger__serial_ok(e->cert_serial) || !ledger__pem_ok(e->cert_pem, out_pem_len))
        return NU_ERR_INVALID_ARG;
    /* The key every package for this programmer will be sealed to. */
    if (nu_p256_pub_check(e->package_pubkey) != NU_OK)
        return NU_ERR_INVALID_ARG;
    if ((e->vendor_serial && ledger__id_check(e->vendor_serial) != NU_OK) ||
        (e->firmware_measurement && strlen(e->firmware_measurement) != 2 * CLOUD_LEDGER_HASH_LEN))
        return NU_ERR_INVALID_ARG;
    return NU_OK;
}

/* The upsert itself, inside the caller's write transaction. */
static int ledger__upsert_in_txn(struct cloud_ledger *l, const struct cloud_ledger_enrollment *e,
                                 size_t pem_len)
{
    char previous[CLOUD_LEDGER_SERIAL_MAX + 1] = "";
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__prog_state(l, e->programmer_id, previous);

    if (rc == NU_ERR_NOT_FOUND) {
        previous[0] = '\0';
        rc = NU_OK;
    }
    if (rc != NU_OK)
        return rc; /* REVOKED: revocation is final for an id */
    rc = ledger__stmt(l, ST_PROG_UPSERT, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, e->programmer_id);
    ledger__bind_text(st, 2, e->cert_serial);
    ledger_store_bind_text(st, 3, e->cert_pem);
    ledger__bind_blob(st, 4, e->package_pubkey, CLOUD_LEDGER_PUBKEY_LEN);
    ledger__bind_u64(st, 5, e->now_ms);
    ledger__bind_text(st, 6, e->vendor_serial ? e->vendor_serial : "");
    ledger__bind_text(st, 7, e->firmware_measurement ? e->firmware_measurement : "");
    rc = ledger__run(l, st, "programmer upsert");
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", e->programmer_id);
    lj_str(&j, "serial", e->cert_serial);
    lj_str(&j, "previous_serial", previous);
    if (e->vendor_serial && e->vendor_serial[0]) {
        lj_str(&j, "vendor_serial", e->vendor_serial);
        lj_str(&j, "firmware_measurement", e->firmware_measurement ? e->firmware_measurement : "");
    }
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, e->now_ms, "programmer.enrolled", e->actor, "");
}

int cloud_ledger_programmer_upsert(struct cloud_ledger *ledger,
                                   const struct cloud_ledger_enrollment *enrollment)
{
    size_t pem_len = 0;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__enrollment_check(enrollment, &pem_len);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__upsert_in_txn(ledger, enrollment, pem_len);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_programmer_get(struct cloud_ledger *ledger, const char *programmer_id,
                                struct cloud_ledger_programmer *out_programmer)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !out_programmer)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__row_by_key(ledger, ST_PROG_GET, programmer_id, "programmer get", &st);
    if (rc != NU_OK)
        return rc;
    rc = ledger__prog_row(st, out_programmer);
    ledger__reset(st);
    return rc;
}

static int ledger__prog_row_v(struct ledger_store_stmt *st, void *item)
{
    return ledger__prog_row(st, item);
}

static int ledger__prog_visit_v(void *v, const void *item)
{
    struct ledger_visit *lv = v;
    return ((cloud_ledger_programmer_visit_fn)lv->fn)(lv->ctx, item);
}

int cloud_ledger_programmer_list(struct cloud_ledger *ledger,
                                 cloud_ledger_programmer_visit_fn visit, void *ctx)
{
    struct ledger_visit lv = {(void *)visit, ctx};

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    return ledger__list_all(ledger, ST_PROG_LIST, ledger__prog_row_v, ledger->prog,
                            ledger__prog_visit_v, &lv);
}

int cloud_ledger_programmer_revoke(struct cloud_ledger *ledger, const char *programmer_id,
                                   const char *reason, const char *actor, uint64_t now_ms)
{
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc == NU_OK)
        rc = ledger__text_check(reason, CLOUD_LEDGER_TEXT_MAX);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__prog_state(ledger, programmer_id, NULL);
    if (rc == NU_ERR_REVOKED)
        rc = NU_ERR_STATE;
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_PROG_REVOKE, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, programmer_id);
    ledger__bind_u64(st, 2, now_ms);
    ledger__bind_text(st, 3, reason);
    rc = ledger__run(ledger, st, "programmer revoke");
    if (rc != NU_OK)
        goto out;
    lj_init(&j, ledger->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", programmer_id);
    lj_str(&j, "reason", reason);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(ledger, &j, now_ms, "programmer.revoked", actor, "");
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

/* ------------------------------------------------------- enrollment tokens */

static int ledger__token_hash(const uint8_t *token, size_t len, uint8_t out[NU_SHA256_LEN])
{
    if (!token || len < CLOUD_LEDGER_TOKEN_MIN || len > CLOUD_LEDGER_TOKEN_MAX)
        return NU_ERR_INVALID_ARG;
    return nu_sha256(token, len, out);
}

/* Would the token (by hash) enroll programmer_id at now? Read inside the
 * caller's transaction. NU_OK, TOKEN, REVOKED, or a DB error. */
static int ledger__token_decide(struct cloud_ledger *l, const uint8_t hash[NU_SHA256_LEN],
                                const char *programmer_id, uint64_t now_ms)
{
    char bound[CLOUD_LEDGER_ID_MAX + 1];
    struct ledger_store_stmt *st = NULL;
    uint64_t expires;
    int used;
    int rc = ledger__stmt(l, ST_TOKEN_GET, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_blob(st, 1, hash, NU_SHA256_LEN);
    rc = ledger__step_one(l, st, "token get");
    if (rc == NU_ERR_NOT_FOUND)
        return NU_ERR_TOKEN;
    if (rc != NU_OK)
        return rc;
    rc = ledger__col_str(st, 0, bound, sizeof(bound));
    expires = ledger__col_u64(st, 1);
    used = !ledger_store_col_is_null(st, 2);
    ledger__reset(st);
    if (rc != NU_OK)
        return rc;
    if (strcmp(bound, programmer_id) != 0 || used || now_ms >= expires)
        return NU_ERR_TOKEN;
    rc = ledger__prog_state(l, programmer_id, NULL);
    return rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
}

static void ledger__token_id(struct ledger_json *j, const uint8_t hash[NU_SHA256_LEN])
{
    lj_hex(j, "token_id", hash, 8);
}

/* Audit a refused token in its own transaction (the caller's was rolled
 * back): repeated guessing shows in the chain. */
static void ledger__token_refused(struct cloud_ledger *l, const char *programmer_id,
                                  const char *actor, uint64_t now_ms, int code)
{
    struct ledger_json j;
    int rc;

    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", programmer_id);
    lj_str(&j, "code", nu_err_name(code));
    lj_raw(&j, "}", 1);
    rc = ledger__begin(l, 1);
    if (rc == NU_OK)
        rc = ledger__append_json(l, &j, now_ms, "enroll.refused", actor, "");
    if (rc == NU_OK)
        rc = ledger__commit(l);
    ledger__rollback(l);
    if (rc != NU_OK)
        nu_warn("ledger: could not audit a refused enrollment of %s: %s", programmer_id,
                nu_err_name(rc));
}

int cloud_ledger_token_add(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                           const char *programmer_id, uint64_t expires_at_ms, const char *actor,
                           uint64_t now_ms)
{
    uint8_t hash[NU_SHA256_LEN];
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !ledger__time_ok(now_ms) || !ledger__time_ok(expires_at_ms) ||
        expires_at_ms <= now_ms)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc == NU_OK)
        rc = ledger__token_hash(token, token_len, hash);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__prog_state(ledger, programmer_id, NULL);
    if (rc == NU_ERR_NOT_FOUND)
        rc = NU_OK;
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_TOKEN_ADD, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_blob(st, 1, hash, sizeof(hash));
    ledger__bind_text(st, 2, programmer_id);
    ledger__bind_u64(st, 3, now_ms);
    ledger__bind_u64(st, 4, expires_at_ms);
    rc = ledger__run(ledger, st, "token add");
    if (rc != NU_OK)
        goto out;
    lj_init(&j, ledger->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", programmer_id);
    ledger__token_id(&j, hash);
    lj_u64(&j, "expires_at_ms", expires_at_ms);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(ledger, &j, now_ms, "enroll.token.added", actor, "");
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    nu_zero(hash, sizeof(hash));
    return rc;
}

int cloud_ledger_token_check(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                             const char *programmer_id, uint64_t now_ms)
{
    uint8_t hash[NU_SHA256_LEN];
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__token_hash(token, token_len, hash);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__token_decide(ledger, hash, programmer_id, now_ms);
    ledger__rollback(ledger);
    nu_zero(hash, sizeof(hash));
    return rc;
}

/* ------------------------------------------------------ enrollment nonces */

/* Is the challenge nonce usable by programmer_id at now? Read inside the
 * caller's transaction. NU_OK, NONCE_REPLAYED (unknown, used, or another
 * programmer's), NONCE_EXPIRED, or a DB error. */
static int ledger__nonce_decide(struct cloud_ledger *l, const uint8_t nonce[32],
                                const char *programmer_id, uint64_t now_ms)
{
    char bound[CLOUD_LEDGER_ID_MAX + 1];
    struct ledger_store_stmt *st = NULL;
    uint64_t expires;
    int used;
    int rc = ledger__stmt(l, ST_NONCE_GET, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_blob(st, 1, nonce, CLOUD_LEDGER_NONCE_LEN);
    rc = ledger__step_one(l, st, "nonce get");
    if (rc == NU_ERR_NOT_FOUND)
        return NU_ERR_NONCE_REPLAYED;
    if (rc != NU_OK)
        return rc;
    rc = ledger__col_str(st, 0, bound, sizeof(bound));
    expires = ledger__col_u64(st, 1);
    used = !ledger_store_col_is_null(st, 2);
    ledger__reset(st);
    if (rc != NU_OK)
        return rc;
    if (used || strcmp(bound, programmer_id) != 0)
        return NU_ERR_NONCE_REPLAYED;
    return now_ms >= expires ? NU_ERR_NONCE_EXPIRED : NU_OK;
}

/* Decide, then mark used, inside the caller's write transaction. */
static int ledger__nonce_use(struct cloud_ledger *l, const uint8_t nonce[32],
                             const char *programmer_id, uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__nonce_decide(l, nonce, programmer_id, now_ms);

    if (rc == NU_OK)
        rc = ledger__stmt(l, ST_NONCE_USE, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_blob(st, 1, nonce, CLOUD_LEDGER_NONCE_LEN);
    ledger__bind_u64(st, 2, now_ms);
    rc = ledger__run(l, st, "nonce use");
    if (rc == NU_OK && ledger_store_changes(st) != 1)
        rc = NU_ERR_INTERNAL; /* decided unused under the same write lock */
    return rc;
}

int cloud_ledger_nonce_add(struct cloud_ledger *ledger, const uint8_t nonce[32],
                           const char *programmer_id, uint64_t expires_at_ms, uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !nonce || !ledger__time_ok(now_ms) || expires_at_ms <= now_ms)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 1);
    /* Challenges expired for a day are of no use to anyone: they go. */
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_NONCE_PURGE, &st);
    if (rc == NU_OK) {
        ledger__bind_u64(st, 1, now_ms > 86400000u ? now_ms - 86400000u : 0);
        rc = ledger__run(ledger, st, "nonce purge");
    }
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_NONCE_ADD, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_blob(st, 1, nonce, CLOUD_LEDGER_NONCE_LEN);
    ledger__bind_text(st, 2, programmer_id);
    ledger__bind_u64(st, 3, now_ms);
    ledger__bind_u64(st, 4, expires_at_ms);
    rc = ledger__run(ledger, st, "nonce add");
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_nonce_check(struct cloud_ledger *ledger, const uint8_t nonce[32],
                             const char *programmer_id, uint64_t now_ms)
{
    int rc;

    if (!ledger || !nonce || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__nonce_decide(ledger, nonce, programmer_id, now_ms);
    ledger__rollback(ledger);
    return rc;
}

/* Consume (and, when e is not NULL, enroll) in one transaction. */
static int ledger__consume(struct cloud_ledger *l, const uint8_t *token, size_t token_len,
                           const char *programmer_id, const char *actor, uint64_t now_ms,
                           const struct cloud_ledger_enrollment *e, size_t pem_len)
{
    uint8_t hash[NU_SHA256_LEN];
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__token_hash(token, token_len, hash);

    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(l, 1);
    if (rc == NU_OK)
        rc = ledger__token_decide(l, hash, programmer_id, now_ms);
    if (rc == NU_ERR_TOKEN || rc == NU_ERR_REVOKED) {
        int refusal = rc;
        ledger__rollback(l);
        ledger__token_refused(l, programmer_id, actor, now_ms, refusal);
        rc = refusal;
        goto out;
    }
    if (rc == NU_OK && e && e->nonce) {
        rc = ledger__nonce_use(l, e->nonce, programmer_id, now_ms);
        if (rc == NU_ERR_NONCE_REPLAYED || rc == NU_ERR_NONCE_EXPIRED) {
            int refusal = rc;
            ledger__rollback(l);
            ledger__token_refused(l, programmer_id, actor, now_ms, refusal);
            rc = refusal;
            goto out;
        }
    }
    if (rc == NU_OK)
        rc = ledger__stmt(l, ST_TOKEN_USE, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_blob(st, 1, hash, sizeof(hash));
    ledger__bind_u64(st, 2, now_ms);
    rc = ledger__run(l, st, "token use");
    if (rc == NU_OK && ledger_store_changes(st) != 1)
        rc = NU_ERR_INTERNAL; /* decided unused under the same write lock */
    if (rc != NU_OK)
        goto out;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", programmer_id);
    ledger__token_id(&j, hash);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(l, &j, now_ms, "enroll.token.used", actor, "");
    if (rc == NU_OK && e)
        rc = ledger__upsert_in_txn(l, e, pem_len);
    if (rc == NU_OK)
        rc = ledger__commit(l);
out:
    ledger__rollback(l);
    nu_zero(hash, sizeof(hash));
    return rc;
}

int cloud_ledger_token_consume(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                               const char *programmer_id, const char *actor, uint64_t now_ms)
{
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc != NU_OK)
        return rc;
    return ledger__consume(ledger, token, token_len, programmer_id, actor, now_ms, NULL, 0);
}

int cloud_ledger_enroll(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                        const struct cloud_ledger_enrollment *enrollment)
{
    size_t pem_len = 0;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__enrollment_check(enrollment, &pem_len);
    if (rc != NU_OK)
        return rc;
    return ledger__consume(ledger, token, token_len, enrollment->programmer_id, enrollment->actor,
                           enrollment->now_ms, enrollment, pem_len);
}

/* --------------------------------------------------------------- issuance */

static int ledger__issue_req_check(const struct cloud_ledger_issue_req *r)
{
    int rc;

    if (!r || !r->idempotency_key || r->idempotency_key_len == 0 || !r->device_uid ||
        r->device_uid_len == 0 || !ledger__time_ok(r->now_ms))
        return NU_ERR_INVALID_ARG;
    if (r->idempotency_key_len > CLOUD_LEDGER_KEY_MAX || r->device_uid_len > CLOUD_LEDGER_UID_MAX)
        return NU_ERR_TOO_LARGE;
    rc = ledger__id_check(r->requester);
    if (rc == NU_OK)
        rc = ledger__id_check(r->job_id);
    return rc;
}

static void ledger__result_clear(struct cloud_ledger_issue_result *out, int code)
{
    out->code = code;
    out->replayed = 0;
    out->resent = 0;
    out->serial[0] = '\0';
    out->issued = 0;
    out->quota = 0;
    out->response_len = 0;
}

/* What the idempotency cache holds for (requester, key). */
struct ledger_cached {
    int found;
    int same;  /* same op and request hash */
    int stale; /* a refusal older than the refusal TTL */
    int code;
};

/* Look the request up; on a usable hit the stored answer is copied to out. */
static int ledger__cache_get(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             struct ledger_cached *c, struct cloud_ledger_issue_result *out)
{
    uint8_t hash[CLOUD_LEDGER_HASH_LEN];
    const unsigned char *op;
    uint64_t created;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_REQ_GET, &st);

    memset(c, 0, sizeof(*c));
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, req->requester);
    ledger__bind_blob(st, 2, req->idempotency_key, req->idempotency_key_len);
    rc = ledger__step_one(l, st, "request get");
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK;
    if (rc != NU_OK)
        return rc;
    c->found = 1;
    op = ledger__col_text(st, 0);
    rc = ledger__col_fixed(st, 1, hash, sizeof(hash));
    c->code = (int)ledger_store_col_i64(st, 3);
    created = ledger__col_u64(st, 4);
    c->same = rc == NU_OK && op && strcmp((const char *)op, CLOUD_LEDGER_OP_CERT) == 0 &&
              memcmp(hash, req->request_hash, sizeof(hash)) == 0;
    c->stale = c->code != NU_OK &&
               (l->refusal_ttl_ms == 0 ||
                (req->now_ms >= created && req->now_ms - created >= l->refusal_ttl_ms));
    if (rc == NU_OK && c->same && !c->stale) {
        rc = ledger__col_blob(st, 2, out->response, sizeof(out->response), &out->response_len);
        if (rc == NU_OK)
            rc = ledger__col_str(st, 5, out->serial, sizeof(out->serial));
    }
    ledger__reset(st);
    return rc;
}

static int ledger__cache_put(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             int code, const uint8_t *response, size_t response_len,
                             const char *serial)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_REQ_PUT, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_blob(st, 1, req->idempotency_key, req->idempotency_key_len);
    ledger__bind_text(st, 2, req->requester);
    ledger__bind_text(st, 3, CLOUD_LEDGER_OP_CERT);
    ledger__bind_blob(st, 4, req->request_hash, sizeof(req->request_hash));
    ledger__bind_blob(st, 5, response, response_len);
    ledger_store_bind_i64(st, 6, code);
    ledger__bind_u64(st, 7, req->now_ms);
    if (serial)
        ledger__bind_text(st, 8, serial);
    return ledger__run(l, st, "request put");
}

/* Everything one decision needs, read under the write lock. */
struct ledger_decision {
    int job_found;
    struct cloud_ledger_job job;
    int have_alloc;
    uint32_t alloc_limit;
    uint32_t alloc_issued;
    int have_cert; /* l->cert holds the job's certificate for this UID */
};

static void ledger__counters(const struct ledger_decision *d, struct cloud_ledger_issue_result *out)
{
    if (d->job_found) {
        out->issued = d->job.issued;
        out->quota = d->job.quota;
    }
}

/* Commit a refusal: counted on the job, audited, cached when `store`. */
static int ledger__refuse(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                          struct ledger_decision *d, int code, int store,
                          struct cloud_ledger_issue_result *out)
{
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = NU_OK;

    if (d->job_found) {
        rc = ledger__stmt(l, ST_JOB_REFUSED, &st);
        if (rc != NU_OK)
            return rc;
        ledger__bind_text(st, 1, req->job_id);
        rc = ledger__run(l, st, "job refused");
        d->job.refused++;
    }
    if (rc == NU_OK && store)
        rc = ledger__cache_put(l, req, code, NULL, 0, NULL);
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_hex(&j, "device_uid", req->device_uid, req->device_uid_len);
    lj_str(&j, "programmer", req->requester);
    lj_hex(&j, "idempotency_key", req->idempotency_key, req->idempotency_key_len);
    lj_str(&j, "code", nu_err_name(code));
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(l, &j, req->now_ms, "cert.refused", req->requester, req->job_id);
    if (rc != NU_OK)
        return rc;
    ledger__result_clear(out, code);
    ledger__counters(d, out);
    return NU_OK;
}

/* The caller's callback output, checked before anything is written. */
static int ledger__sign_out_ok(const struct cloud_ledger_sign_out *so, int resend, size_t *pem_len)
{
    if (so->response_len > so->response_cap)
        return 0;
    if (resend)
        return 1;
    if (!memchr(so->serial, '\0', sizeof(so->serial)) || !memchr(so->pem, '\0', sizeof(so->pem)))
        return 0;
    return ledger__serial_ok(so->serial) && ledger__pem_ok(so->pem, pem_len);
}

static int ledger__call_sign(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             const struct ledger_decision *d, int resend, cloud_ledger_sign_fn sign,
                             void *sign_ctx, struct cloud_ledger_issue_result *out,
                             size_t *out_pem_len)
{
    struct cloud_ledger_sign_out *so = l->sign_out;
    struct cloud_ledger_sign_info info = {
        .resend = resend,
        .serial = resend ? l->cert->serial : NULL,
        .pem = resend ? l->cert->pem : NULL,
        .firmware = d->job.firmware,
        .subject_template = d->job.subject_template,
        .quota = d->job.quota,
        .issued = d->job.issued + (resend ? 0 : 1),
    };
    int rc;

    so->serial[0] = '\0';
    so->pem[0] = '\0';
    so->response = out->response;
    so->response_cap = sizeof(out->response);
    so->response_len = 0;
    rc = sign(sign_ctx, req, &info, so);
    if (rc != NU_OK)
        return rc;
    if (!ledger__sign_out_ok(so, resend, out_pem_len)) {
        nu_error("ledger: the sign callback returned an unusable certificate or reply");
        return NU_ERR_INTERNAL;
    }
    return NU_OK;
}

/* Same device, same key, certificate already issued: answer it again. */
static int ledger__resend(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                          struct ledger_decision *d, cloud_ledger_sign_fn sign, void *sign_ctx,
                          struct cloud_ledger_issue_result *out)
{
    struct ledger_json j;
    size_t pem_len = 0;
    int rc = ledger__call_sign(l, req, d, 1, sign, sign_ctx, out, &pem_len);

    if (rc == NU_OK)
        rc = ledger__cache_put(l, req, NU_OK, out->response, l->sign_out->response_len,
                               l->cert->serial);
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "serial", l->cert->serial);
    lj_hex(&j, "device_uid", req->device_uid, req->device_uid_len);
    lj_str(&j, "programmer", req->requester);
    lj_hex(&j, "idempotency_key", req->idempotency_key, req->idempotency_key_len);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(l, &j, req->now_ms, "cert.resent", req->requester, req->job_id);
    if (rc != NU_OK)
        return rc;
    out->code = NU_OK;
    out->resent = 1;
    out->response_len = l->sign_out->response_len;
    snprintf(out->serial, sizeof(out->serial), "%s", l->cert->serial);
    ledger__counters(d, out);
    return NU_OK;
}

/* The cert.issued payload: everything derives from the certificate row, so
 * verify can rebuild it (see ledger.h). */
static void ledger__cert_issued_json(struct ledger_json *j, const char *serial, const uint8_t *uid,
                                     size_t uid_len,
                                     const uint8_t pubkey_hash[CLOUD_LEDGER_HASH_LEN],
                                     const char *programmer, const uint8_t *key, size_t key_len,
                                     const uint8_t pem_sha256[CLOUD_LEDGER_HASH_LEN])
{
    lj_raw(j, "{", 1);
    lj_str(j, "serial", serial);
    lj_hex(j, "device_uid", uid, uid_len);
    lj_hex(j, "pubkey_hash", pubkey_hash, CLOUD_LEDGER_HASH_LEN);
    lj_str(j, "programmer", programmer);
    lj_hex(j, "idempotency_key", key, key_len);
    lj_hex(j, "pem_sha256", pem_sha256, CLOUD_LEDGER_HASH_LEN);
    lj_raw(j, "}", 1);
}

static int ledger__count_issue(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_JOB_ISSUED, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, req->job_id);
    ledger__bind_u64(st, 2, req->now_ms);
    rc = ledger__run(l, st, "job issued");
    if (rc == NU_OK && ledger_store_changes(st) != 1)
        return NU_ERR_INTERNAL; /* checked under the same lock: cannot happen */
    if (rc == NU_OK)
        rc = ledger__stmt(l, ST_ALLOC_ISSUED, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, req->job_id);
    ledger__bind_text(st, 2, req->requester);
    rc = ledger__run(l, st, "allocation issued");
    if (rc == NU_OK && ledger_store_changes(st) != 1)
        return NU_ERR_INTERNAL;
    return rc;
}

static int ledger__insert_cert(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                               size_t pem_len)
{
    struct cloud_ledger_sign_out *so = l->sign_out;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_CERT_INSERT, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, so->serial);
    ledger__bind_text(st, 2, req->job_id);
    ledger__bind_blob(st, 3, req->device_uid, req->device_uid_len);
    ledger__bind_blob(st, 4, req->pubkey_hash, sizeof(req->pubkey_hash));
    ledger_store_bind_text(st, 5, so->pem);
    ledger__bind_text(st, 6, req->requester);
    ledger__bind_blob(st, 7, req->idempotency_key, req->idempotency_key_len);
    ledger__bind_u64(st, 8, req->now_ms);
    return ledger__run(l, st, "certificate insert");
}

static int ledger__issue_new(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             struct ledger_decision *d, cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out)
{
    struct cloud_ledger_sign_out *so = l->sign_out;
    uint8_t pem_sha[NU_SHA256_LEN];
    struct ledger_json j;
    size_t pem_len = 0;
    int rc = ledger__call_sign(l, req, d, 0, sign, sign_ctx, out, &pem_len);

    if (rc == NU_OK)
        rc = ledger__insert_cert(l, req, pem_len);
    if (rc == NU_OK)
        rc = ledger__count_issue(l, req);
    if (rc == NU_OK)
        rc = ledger__cache_put(l, req, NU_OK, out->response, so->response_len, so->serial);
    if (rc == NU_OK)
        rc = nu_sha256(so->pem, pem_len, pem_sha);
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    ledger__cert_issued_json(&j, so->serial, req->device_uid, req->device_uid_len, req->pubkey_hash,
                             req->requester, req->idempotency_key, req->idempotency_key_len,
                             pem_sha);
    rc = ledger__append_json(l, &j, req->now_ms, "cert.issued", req->requester, req->job_id);
    d->job.issued++;
    if (rc == NU_OK && d->job.issued >= d->job.quota) {
        lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
        lj_raw(&j, "{", 1);
        lj_u64(&j, "issued", d->job.issued);
        lj_u64(&j, "quota", d->job.quota);
        lj_raw(&j, "}", 1);
        rc = ledger__append_json(l, &j, req->now_ms, "job.exhausted", req->requester, req->job_id);
    }
    if (rc != NU_OK)
        return rc;
    out->code = NU_OK;
    out->response_len = so->response_len;
    snprintf(out->serial, sizeof(out->serial), "%s", so->serial);
    ledger__counters(d, out);
    return NU_OK;
}

/* Read what the decision depends on. */
static int ledger__decision_read(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                                 struct ledger_decision *d)
{
    struct cloud_ledger_cert_ref ref = {NULL, req->job_id, req->device_uid, req->device_uid_len};
    int rc;

    memset(d, 0, sizeof(*d));
    rc = ledger__job_read(l, req->job_id, &d->job);
    d->job_found = rc == NU_OK;
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK;
    if (rc == NU_OK)
        rc = ledger__alloc_read(l, req->job_id, req->requester, &d->alloc_limit, &d->alloc_issued);
    d->have_alloc = rc == NU_OK;
    if (rc == NU_ERR_NOT_FOUND)
        rc = NU_OK;
    if (rc == NU_OK)
        rc = ledger__cert_find(l, &ref, l->cert);
    d->have_cert = rc == NU_OK;
    return rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
}

/* The refusal code for a request past the cache, or NU_OK to issue; sets
 * *resend when the existing certificate is to be answered again. */
static int ledger__decide(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                          const struct ledger_decision *d, int prog, int *resend)
{
    const struct cloud_ledger_cert *c = l->cert;

    *resend = 0;
    if (prog == NU_ERR_NOT_FOUND)
        return NU_ERR_NOT_AUTHORIZED;
    if (prog != NU_OK)
        return prog; /* REVOKED */
    if (!d->job_found)
        return NU_ERR_NOT_FOUND;
    /* Authorization before any state: a programmer with no allocation must
     * not learn whether the job is exhausted, paused or expired. */
    if (!d->have_alloc)
        return NU_ERR_NOT_AUTHORIZED;
    if (d->have_cert && d->have_alloc && c->state != CLOUD_LEDGER_CERT_REVOKED &&
        memcmp(c->pubkey_hash, req->pubkey_hash, CLOUD_LEDGER_HASH_LEN) == 0) {
        *resend = 1;
        return NU_OK;
    }
    if (d->job.status == CLOUD_LEDGER_JOB_EXHAUSTED)
        return NU_ERR_QUOTA_EXHAUSTED;
    if (d->job.status != CLOUD_LEDGER_JOB_ACTIVE)
        return NU_ERR_JOB_NOT_ACTIVE;
    if (d->job.expires_at_ms && req->now_ms >= d->job.expires_at_ms)
        return NU_ERR_EXPIRED;
    if (d->alloc_issued >= d->alloc_limit || d->job.issued >= d->job.quota)
        return NU_ERR_QUOTA_EXHAUSTED;
    if (d->have_cert)
        return NU_ERR_DUPLICATE_DEVICE;
    return NU_OK;
}

/*
 * One request inside the batch's transaction. Returns NU_OK when its outcome
 * (in out->code) is to be committed, or an error to roll this request back.
 */
static int ledger__issue_one(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out)
{
    struct ledger_decision d;
    struct ledger_cached c;
    int prog, code, resend;
    int rc = ledger__cache_get(l, req, &c, out);

    if (rc == NU_OK)
        rc = ledger__decision_read(l, req, &d);
    if (rc != NU_OK)
        return rc;
    if (c.found && !c.stale) {
        if (!c.same)
            return ledger__refuse(l, req, &d, NU_ERR_IDEMPOTENCY_CONFLICT, 0, out);
        out->code = c.code;
        out->replayed = 1;
        ledger__counters(&d, out);
        return NU_OK;
    }
    prog = ledger__prog_state(l, req->requester, NULL);
    if (prog != NU_OK && prog != NU_ERR_NOT_FOUND && prog != NU_ERR_REVOKED)
        return prog;
    code = ledger__decide(l, req, &d, prog, &resend);
    if (code != NU_OK)
        return ledger__refuse(l, req, &d, code, 1, out);
    if (resend)
        return ledger__resend(l, req, &d, sign, sign_ctx, out);
    return ledger__issue_new(l, req, &d, sign, sign_ctx, out);
}

/* Orders for the batch's up-front locks (PostgreSQL). */
static int ledger__cmp_key(const void *a, const void *b)
{
    const struct cloud_ledger_issue_req *x = *(const struct cloud_ledger_issue_req *const *)a;
    const struct cloud_ledger_issue_req *y = *(const struct cloud_ledger_issue_req *const *)b;
    int c = strcmp(x->requester, y->requester);
    size_t n = x->idempotency_key_len < y->idempotency_key_len ? x->idempotency_key_len
                                                                : y->idempotency_key_len;
    if (c == 0)
        c = memcmp(x->idempotency_key, y->idempotency_key, n);
    if (c == 0)
        c = (x->idempotency_key_len > n) - (y->idempotency_key_len > n);
    return c;
}

static int ledger__cmp_job(const void *a, const void *b)
{
    const struct cloud_ledger_issue_req *x = *(const struct cloud_ledger_issue_req *const *)a;
    const struct cloud_ledger_issue_req *y = *(const struct cloud_ledger_issue_req *const *)b;
    int c = strcmp(x->job_id, y->job_id);
    return c ? c : strcmp(x->requester, y->requester);
}

/* Lock one row with a FOR UPDATE statement (two text keys; absent is fine). */
static int ledger__lock_row(struct cloud_ledger *l, enum ledger_stmt id, const char *a,
                            const char *b)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, id, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, a);
    if (b)
        ledger__bind_text(st, 2, b);
    while (ledger__row(st, &rc))
        ;
    ledger__reset(st);
    return rc;
}

/*
 * PostgreSQL: take every lock the batch will need before deciding anything,
 * each kind in one global order, so agents running batches side by side
 * queue instead of deadlocking: advisory locks on (requester, idempotency
 * key) sorted by key, then the job rows sorted by job, then the allocation
 * rows sorted by (job, programmer); the chain head comes last, at the first
 * event. SQLite: BEGIN IMMEDIATE already holds the one write lock.
 */
static int ledger__batch_lock(struct cloud_ledger *l, const struct cloud_ledger_issue_req *reqs,
                              size_t n, const struct cloud_ledger_issue_result *out)
{
    const struct cloud_ledger_issue_req *v[CLOUD_LEDGER_BATCH_MAX];
    uint8_t key[CLOUD_LEDGER_ID_MAX + 1 + CLOUD_LEDGER_KEY_MAX];
    size_t m = 0;
    int rc = NU_OK;

    if (!ledger__is_pg(l))
        return NU_OK;
    for (size_t i = 0; i < n; i++)
        if (out[i].code == -1)
            v[m++] = &reqs[i];
    qsort(v, m, sizeof(v[0]), ledger__cmp_key);
    for (size_t i = 0; rc == NU_OK && i < m; i++) {
        size_t rl = strlen(v[i]->requester);
        memcpy(key, v[i]->requester, rl + 1);
        memcpy(key + rl + 1, v[i]->idempotency_key, v[i]->idempotency_key_len);
        rc = ledger_store_xact_lock(l->store, 1, key, rl + 1 + v[i]->idempotency_key_len);
    }
    qsort(v, m, sizeof(v[0]), ledger__cmp_job);
    for (size_t i = 0; rc == NU_OK && i < m; i++)
        if (i == 0 || strcmp(v[i]->job_id, v[i - 1]->job_id) != 0)
            rc = ledger__lock_row(l, ST_JOB_LOCK, v[i]->job_id, NULL);
    for (size_t i = 0; rc == NU_OK && i < m; i++)
        if (i == 0 || ledger__cmp_job(&v[i], &v[i - 1]) != 0)
            rc = ledger__lock_row(l, ST_ALLOC_GET, v[i]->job_id, v[i]->requester);
    return rc;
}

/* Decide every pending request (code -1) under one open transaction. */
static int ledger__batch_run(struct cloud_ledger *l, const struct cloud_ledger_issue_req *reqs,
                             size_t n, cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out)
{
    for (size_t i = 0; i < n; i++) {
        int rc;
        if (out[i].code != -1)
            continue;
        rc = ledger__exec(l, ST_SP);
        if (rc != NU_OK)
            return rc;
        rc = ledger__issue_one(l, &reqs[i], sign, sign_ctx, &out[i]);
        if (rc != NU_OK) {
            ledger__result_clear(&out[i], rc);
            rc = ledger__exec(l, ST_SP_ROLLBACK);
            if (rc != NU_OK)
                return rc;
        }
        rc = ledger__exec(l, ST_SP_RELEASE);
        if (rc != NU_OK)
            return rc;
    }
    return NU_OK;
}

int cloud_ledger_issue_batch(struct cloud_ledger *ledger, const struct cloud_ledger_issue_req *reqs,
                             size_t n, cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out)
{
    size_t pending = 0;
    int rc;

    /* With n itself out of range the size of out is unknown: leave it alone. */
    if (!out || n == 0 || n > CLOUD_LEDGER_BATCH_MAX)
        return NU_ERR_INVALID_ARG;
    if (!ledger || !reqs || !sign) {
        for (size_t i = 0; i < n; i++)
            ledger__result_clear(&out[i], NU_ERR_INVALID_ARG);
        return NU_ERR_INVALID_ARG;
    }
    for (size_t i = 0; i < n; i++) {
        rc = ledger__issue_req_check(&reqs[i]);
        ledger__result_clear(&out[i], rc == NU_OK ? -1 : rc);
        pending += rc == NU_OK;
    }
    if (pending == 0)
        return NU_OK;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__batch_lock(ledger, reqs, n, out);
    if (rc == NU_OK)
        rc = ledger__batch_run(ledger, reqs, n, sign, sign_ctx, out);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    if (rc != NU_OK) {
        ledger__rollback(ledger);
        /* Nothing of the batch is recorded: no request may be answered as done. */
        for (size_t i = 0; i < n; i++) {
            if (ledger__issue_req_check(&reqs[i]) == NU_OK)
                ledger__result_clear(&out[i], rc);
        }
    }
    return rc;
}

int cloud_ledger_issue(struct cloud_ledger *ledger, const struct cloud_ledger_issue_req *req,
                       cloud_ledger_sign_fn sign, void *sign_ctx,
                       struct cloud_ledger_issue_result *out)
{
    int rc = cloud_ledger_issue_batch(ledger, req, 1, sign, sign_ctx, out);
    return rc != NU_OK ? rc : out->code;
}

/* ----------------------------------------------------------- certificates */

int cloud_ledger_cert_get(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                          struct cloud_ledger_cert *out_cert)
{
    int rc;

    if (!ledger || !out_cert)
        return NU_ERR_INVALID_ARG;
    rc = ledger__cert_ref_check(ref);
    if (rc == NU_OK)
        rc = ledger__cert_find(ledger, ref, out_cert);
    return rc;
}

static int ledger__cert_row_v(struct ledger_store_stmt *st, void *item)
{
    return ledger__cert_row(st, item);
}

static int ledger__cert_visit_v(void *v, const void *item)
{
    struct ledger_visit *lv = v;
    return ((cloud_ledger_cert_visit_fn)lv->fn)(lv->ctx, item);
}

int cloud_ledger_cert_list(struct cloud_ledger *ledger, const char *job_id, const uint8_t *uid,
                           size_t uid_len, cloud_ledger_cert_visit_fn visit, void *ctx)
{
    return cloud_ledger_cert_list_after(ledger, job_id, uid, uid_len, NULL, visit, ctx);
}

int cloud_ledger_cert_list_after(struct cloud_ledger *ledger, const char *job_id,
                                 const uint8_t *uid, size_t uid_len,
                                 const struct cloud_ledger_cert_cursor *after,
                                 cloud_ledger_cert_visit_fn visit, void *ctx)
{
    struct ledger_visit lv = {(void *)visit, ctx};
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !visit || (!job_id && !uid) || (uid && uid_len == 0))
        return NU_ERR_INVALID_ARG;
    if (after && (!ledger__time_ok(after->issued_at_ms) ||
                  strnlen(after->serial, sizeof(after->serial)) == sizeof(after->serial)))
        return NU_ERR_INVALID_ARG;
    if (uid && uid_len > CLOUD_LEDGER_UID_MAX)
        return NU_ERR_TOO_LARGE;
    if (job_id && (rc = ledger__id_check(job_id)) != NU_OK)
        return rc;
    if (job_id && uid) {
        /* At most one per (job, UID): one page. */
        struct cloud_ledger_cert_ref ref = {NULL, job_id, uid, uid_len};
        if (after)
            return NU_OK;
        rc = ledger__cert_find(ledger, &ref, ledger->cert);
        if (rc == NU_ERR_NOT_FOUND)
            return NU_OK;
        return rc == NU_OK ? visit(ctx, ledger->cert) : rc;
    }
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, job_id ? ST_CERT_LIST_JOB : ST_CERT_LIST_UID, &st);
    if (rc != NU_OK)
        goto out;
    if (job_id)
        ledger__bind_text(st, 1, job_id);
    else
        ledger__bind_blob(st, 1, uid, uid_len);
    /* No cursor: before every row (issue times are >= 0). */
    ledger_store_bind_i64(st, 2, after ? (int64_t)after->issued_at_ms : -1);
    ledger__bind_text(st, 3, after ? after->serial : "");
    rc = ledger__walk(ledger, st, ledger__cert_row_v, ledger->cert, ledger__cert_visit_v, &lv);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_cert_list_revoked(struct cloud_ledger *ledger, cloud_ledger_cert_visit_fn visit,
                                   void *ctx)
{
    struct ledger_visit lv = {(void *)visit, ctx};

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    /* Revocations are rare and the CRL is rebuilt only then: a scan is fine. */
    return ledger__list_all(ledger, ST_CERT_LIST_REVOKED, ledger__cert_row_v, ledger->cert,
                            ledger__cert_visit_v, &lv);
}

static int ledger__cert_event(struct cloud_ledger *l, const struct cloud_ledger_cert *c,
                              const char *kind, const char *who_key, const char *who,
                              const char *text_key, const char *text, const char *actor,
                              uint64_t now_ms)
{
    struct ledger_json j;

    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "serial", c->serial);
    lj_hex(&j, "device_uid", c->device_uid, c->device_uid_len);
    if (who_key)
        lj_str(&j, who_key, who);
    lj_str(&j, text_key, text);
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, now_ms, kind, actor, c->job_id);
}

/* NU_OK to record the report, STATE to refuse, or NU_ERR_EXISTS for a
 * repeated provisioned report that records nothing. */
static int ledger__report_transition(enum cloud_ledger_cert_state from, int provisioned)
{
    if (from == CLOUD_LEDGER_CERT_REVOKED)
        return NU_ERR_STATE;
    if (from == CLOUD_LEDGER_CERT_PROVISIONED)
        return provisioned ? NU_ERR_EXISTS : NU_ERR_STATE;
    return NU_OK;
}

int cloud_ledger_cert_report(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                             int provisioned, const char *detail, const char *reporter,
                             uint64_t now_ms)
{
    struct cloud_ledger_cert *c;
    uint32_t limit, issued;
    struct ledger_store_stmt *st = NULL;
    enum cloud_ledger_cert_state next;
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    c = ledger->cert;
    rc = ledger__cert_ref_check(ref);
    if (rc == NU_OK)
        rc = ledger__id_check(reporter);
    if (rc == NU_OK)
        rc = ledger__text_check(detail, CLOUD_LEDGER_TEXT_MAX);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__cert_find(ledger, ref, c);
    /* PostgreSQL: the job row before the allocation row, as issuance does. */
    if (rc == NU_OK && ledger__is_pg(ledger))
        rc = ledger__lock_row(ledger, ST_JOB_LOCK, c->job_id, NULL);
    if (rc == NU_OK) {
        rc = ledger__alloc_read(ledger, c->job_id, reporter, &limit, &issued);
        if (rc == NU_ERR_NOT_FOUND)
            rc = NU_ERR_NOT_AUTHORIZED;
    }
    if (rc == NU_OK)
        rc = ledger__report_transition(c->state, provisioned);
    if (rc == NU_OK && c->state == CLOUD_LEDGER_CERT_FAILED && !provisioned &&
        strcmp(c->detail, detail) == 0)
        rc = NU_ERR_EXISTS; /* the same failure again (device.report resent) */
    if (rc == NU_ERR_EXISTS) {
        rc = NU_OK; /* redelivered report: already recorded */
        goto out;
    }
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_CERT_STATE, &st);
    if (rc != NU_OK)
        goto out;
    next = provisioned ? CLOUD_LEDGER_CERT_PROVISIONED : CLOUD_LEDGER_CERT_FAILED;
    ledger__bind_text(st, 1, c->serial);
    ledger__bind_text(st, 2, ledger__cert_state_names[next]);
    ledger__bind_u64(st, 3, now_ms);
    ledger__bind_text(st, 4, detail);
    rc = ledger__run(ledger, st, "certificate state");
    if (rc == NU_OK)
        rc = ledger__cert_event(ledger, c, provisioned ? "cert.provisioned" : "cert.failed",
                                "reporter", reporter, "detail", detail, reporter, now_ms);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_cert_revoke(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                             const char *reason, const char *actor, uint64_t now_ms)
{
    struct cloud_ledger_cert *c;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    c = ledger->cert;
    rc = ledger__cert_ref_check(ref);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc == NU_OK)
        rc = ledger__text_check(reason, CLOUD_LEDGER_TEXT_MAX);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__cert_find(ledger, ref, c);
    if (rc == NU_OK && c->state == CLOUD_LEDGER_CERT_REVOKED)
        rc = NU_ERR_STATE;
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_CERT_REVOKE, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, c->serial);
    ledger__bind_u64(st, 2, now_ms);
    ledger__bind_text(st, 3, reason);
    rc = ledger__run(ledger, st, "certificate revoke");
    if (rc == NU_OK)
        rc = ledger__cert_event(ledger, c, "cert.revoked", NULL, NULL, "reason", reason, actor,
                                now_ms);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

/* ------------------------------------------------------------------ audit */

static int ledger__kind_reserved(const char *kind)
{
    for (size_t i = 0; i < sizeof(ledger__reserved_kinds) / sizeof(ledger__reserved_kinds[0]);
         i++) {
        if (strcmp(kind, ledger__reserved_kinds[i]) == 0)
            return 1;
    }
    return 0;
}

static int ledger__event_check(const struct cloud_ledger_event *ev)
{
    int rc;

    if (!ev || (!ev->payload && ev->payload_len) || !ledger__time_ok(ev->ts_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__kind_check(ev->kind);
    if (rc == NU_OK)
        rc = ledger__id_check(ev->actor);
    if (rc == NU_OK)
        rc = ledger__opt_id_check(ev->job_id);
    if (rc != NU_OK)
        return rc;
    if (ledger__kind_reserved(ev->kind))
        return NU_ERR_INVALID_ARG;
    if (ev->payload_len > CLOUD_LEDGER_PAYLOAD_MAX)
        return NU_ERR_TOO_LARGE;
    if (ev->payload_len && !ledger__utf8_ok((const uint8_t *)ev->payload, ev->payload_len, 1))
        return NU_ERR_INVALID_ARG;
    return NU_OK;
}

int cloud_ledger_audit_append(struct cloud_ledger *ledger, const struct cloud_ledger_event *event,
                              uint64_t *out_seq)
{
    uint64_t seq = 0;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__event_check(event);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__append(ledger, event->ts_ms, event->kind, event->actor, event->job_id,
                            event->payload_len ? event->payload : "", event->payload_len, &seq);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    if (rc == NU_OK && out_seq)
        *out_seq = seq;
    return rc;
}

static const char *ledger__col_cstr(struct ledger_store_stmt *st, int i)
{
    const unsigned char *t = ledger__col_text(st, i);
    return t ? (const char *)t : "";
}

static int ledger__event_row(struct ledger_store_stmt *st, void *item)
{
    struct cloud_ledger_event *ev = item;
    int rc;

    ev->seq = ledger__col_u64(st, 0);
    ev->ts_ms = ledger__col_u64(st, 1);
    ev->kind = ledger__col_cstr(st, 2);
    ev->actor = ledger__col_cstr(st, 3);
    ev->job_id = ledger__col_cstr(st, 4);
    ev->payload = ledger__col_cstr(st, 5);
    ev->payload_len = (size_t)ledger__col_bytes(st, 5);
    rc = ledger__col_fixed(st, 6, ev->prev_hash, sizeof(ev->prev_hash));
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 7, ev->hash, sizeof(ev->hash));
    return rc;
}

static int ledger__event_visit_v(void *v, const void *item)
{
    struct ledger_visit *lv = v;
    return ((cloud_ledger_event_visit_fn)lv->fn)(lv->ctx, item);
}

int cloud_ledger_audit_list(struct cloud_ledger *ledger, uint64_t from_seq,
                            cloud_ledger_event_visit_fn visit, void *ctx)
{
    struct ledger_visit lv = {(void *)visit, ctx};
    struct cloud_ledger_event ev;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !visit || !ledger__time_ok(from_seq))
        return NU_ERR_INVALID_ARG;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_EV_LIST, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_u64(st, 1, from_seq);
    rc = ledger__walk(ledger, st, ledger__event_row, &ev, ledger__event_visit_v, &lv);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_audit_head(struct cloud_ledger *ledger, uint64_t *out_seq,
                            uint8_t out_hash[CLOUD_LEDGER_HASH_LEN])
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !out_seq || !out_hash)
        return NU_ERR_INVALID_ARG;
    rc = ledger__stmt(ledger, ST_HEAD_READ, &st);
    if (rc != NU_OK)
        return rc;
    rc = ledger__step_one(ledger, st, "audit head");
    if (rc == NU_ERR_NOT_FOUND)
        return NU_ERR_DB;
    if (rc != NU_OK)
        return rc;
    *out_seq = ledger__col_u64(st, 0);
    rc = ledger__col_fixed(st, 1, out_hash, CLOUD_LEDGER_HASH_LEN);
    ledger__reset(st);
    return rc;
}

/* -------------------------------------------------------------------- WAL */

int cloud_ledger_wal_autocheckpoint(struct cloud_ledger *ledger, unsigned pages)
{
    if (!ledger || pages > INT_MAX)
        return NU_ERR_INVALID_ARG;
    if (!ledger->db)
        return NU_OK; /* PostgreSQL checkpoints by itself */
    int rc = sqlite3_wal_autocheckpoint(ledger->db, (int)pages);
    return rc == SQLITE_OK ? NU_OK : ledger__dberr(ledger->db, rc, "wal autocheckpoint");
}

int cloud_ledger_wal_checkpoint(struct cloud_ledger *ledger)
{
    if (!ledger)
        return NU_ERR_INVALID_ARG;
    if (!ledger->db)
        return NU_OK;
    int rc = sqlite3_wal_checkpoint_v2(ledger->db, NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return rc == SQLITE_OK ? NU_OK : ledger__dberr(ledger->db, rc, "wal checkpoint");
}

/* ------------------------------------------------------------ checkpoints */

#define LEDGER__CHECKPOINT_KIND "audit.checkpoint"

int cloud_ledger_checkpoint(struct cloud_ledger *ledger, uint64_t now_ms, const char *actor,
                            cloud_ledger_checkpoint_fn make, void *ctx, uint64_t *out_seq)
{
    char payload[CLOUD_LEDGER_PAYLOAD_MAX + 1];
    uint8_t head[CLOUD_LEDGER_HASH_LEN];
    struct ledger_store_stmt *st = NULL;
    uint64_t head_seq = 0, seq = 0;
    size_t len = 0;
    int rc, sealed = 0;

    if (!ledger || !make || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(actor);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_HEAD_KIND, &st);
    if (rc == NU_OK)
        rc = ledger__step_one(ledger, st, "audit head");
    if (rc == NU_ERR_NOT_FOUND)
        rc = NU_ERR_DB; /* a ledger always has its first event */
    if (rc != NU_OK)
        goto out;
    head_seq = ledger__col_u64(st, 0);
    rc = ledger__col_fixed(st, 1, head, sizeof(head));
    sealed = strcmp(ledger__col_cstr(st, 2), LEDGER__CHECKPOINT_KIND) == 0;
    ledger__reset(st);
    if (rc != NU_OK || sealed)
        goto out;
    rc = make(ctx, head_seq, head, payload, sizeof(payload), &len);
    if (rc == NU_OK && len > CLOUD_LEDGER_PAYLOAD_MAX)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK && !ledger__utf8_ok((const uint8_t *)payload, len, 1))
        rc = NU_ERR_INVALID_ARG;
    if (rc == NU_OK)
        rc = ledger__append(ledger, now_ms, LEDGER__CHECKPOINT_KIND, actor, NULL, payload, len,
                            &seq);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    if (out_seq)
        *out_seq = rc == NU_OK ? seq : 0;
    return rc;
}

/* ----------------------------------------------------------------- verify */

/* A certificate or a cert.issued event, reduced to what pairs them. */
struct ledger_pair {
    uint8_t digest[NU_SHA256_LEN];
    int64_t id; /* event seq, or certificate rowid */
};

struct ledger_pairs {
    struct ledger_pair *v;
    size_t n, cap;
};

struct ledger_verify {
    struct ledger_store *store;
    sqlite3 *db; /* the same connection on SQLite (pragmas), else NULL */
    struct cloud_ledger_verify_report *r;
    const struct cloud_ledger_verify_opts *opts;
    struct ledger_pairs events; /* cert.issued events */
    struct ledger_pairs certs;
};

static void ledger__finding(struct ledger_verify *v, int *flag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ledger__finding(struct ledger_verify *v, int *flag, const char *fmt, ...)
{
    char text[sizeof(v->r->first_problem)];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    /* Findings quote rows an attacker may have written: no control bytes
     * reach a terminal or a log line. */
    for (char *p = text; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    }
    *flag = 0;
    if (v->r->problems++ == 0)
        snprintf(v->r->first_problem, sizeof(v->r->first_problem), "%s", text);
    if (v->r->problems <= 20)
        nu_warn("ledger verify: %s", text);
}

static int ledger__pair_add(struct ledger_pairs *p, const uint8_t digest[NU_SHA256_LEN], int64_t id)
{
    if (p->n == p->cap) {
        size_t cap = p->cap ? p->cap * 2 : 256;
        struct ledger_pair *nv = realloc(p->v, cap * sizeof(*nv));
        if (!nv)
            return NU_ERR_NOMEM;
        p->v = nv;
        p->cap = cap;
    }
    memcpy(p->v[p->n].digest, digest, NU_SHA256_LEN);
    p->v[p->n].id = id;
    p->n++;
    return NU_OK;
}

static int ledger__pair_cmp(const void *a, const void *b)
{
    return memcmp(((const struct ledger_pair *)a)->digest, ((const struct ledger_pair *)b)->digest,
                  NU_SHA256_LEN);
}

/* The pairing digest: SHA-256(u32be(len job) || job || u64be(ts) || payload). */
static int ledger__pair_digest(const char *job_id, size_t job_len, uint64_t ts, const char *payload,
                               size_t payload_len, uint8_t out[NU_SHA256_LEN])
{
    struct nu_sha256_ctx ctx;
    uint8_t ts_be[8];
    int rc = nu_sha256_init(&ctx);

    if (rc != NU_OK)
        return rc;
    ledger__be64(ts_be, ts);
    rc = ledger__hash_field(&ctx, job_id, job_len);
    if (rc == NU_OK)
        rc = nu_sha256_update(&ctx, ts_be, sizeof(ts_be));
    if (rc == NU_OK)
        rc = nu_sha256_update(&ctx, payload, payload_len);
    if (rc == NU_OK)
        return nu_sha256_final(&ctx, out);
    nu_sha256_abort(&ctx);
    return rc;
}

static int ledger__is_text(struct ledger_store_stmt *st, int i)
{
    return ledger_store_col_type(st, i) == LEDGER_STORE_TEXT;
}

static int ledger__is_hash(struct ledger_store_stmt *st, int i)
{
    return ledger_store_col_type(st, i) == LEDGER_STORE_BLOB &&
           ledger__col_bytes(st, i) == CLOUD_LEDGER_HASH_LEN;
}

/* A one-off statement of verify (finalized by the caller). */
static int ledger__vprep(struct ledger_verify *v, const char *sql, struct ledger_store_stmt **out)
{
    return ledger_store_prepare(v->store, sql, out);
}

/* count(*) and the like: one integer. */
static int ledger__vint(struct ledger_verify *v, const char *sql, int64_t *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__vprep(v, sql, &st);
    if (rc == NU_OK && ledger__row(st, &rc))
        *out = ledger_store_col_i64(st, 0);
    else if (rc == NU_OK)
        rc = NU_ERR_DB;
    ledger_store_finalize(st);
    return rc;
}

/* A checkpoint row signs the head before it: seq - 1 and the row's prev_hash. */
static void ledger__verify_checkpoint(struct ledger_verify *v, uint64_t seq, const uint8_t *prev,
                                      const char *payload, size_t len)
{
    struct cloud_ledger_verify_report *r = v->r;
    r->checkpoints++;
    r->last_checkpoint_seq = seq;
    r->last_checkpoint_head_seq = seq - 1;
    memcpy(r->last_checkpoint_head, prev, CLOUD_LEDGER_HASH_LEN);
    if (!v->opts || !v->opts->check_checkpoint)
        return;
    int rc = v->opts->check_checkpoint(v->opts->ctx, seq - 1, prev, payload, len);
    if (rc != NU_OK) {
        if (!r->first_bad_seq)
            r->first_bad_seq = seq;
        ledger__finding(
            v, &r->checkpoints_ok, "audit seq %llu: checkpoint %s", (unsigned long long)seq,
            rc == NU_ERR_TAMPERED        ? "signs another head: the events before it were "
                                           "rewritten"
            : rc == NU_ERR_BAD_SIGNATURE ? "signature does not verify with the audit key"
                                         : "is malformed");
    }
}

/* Every payload parses as one strict JSON object with no repeated key: an
 * injected `"code":"OK"` or a cut escape shows even with a sound chain. */
static void ledger__verify_payload(struct ledger_verify *v, uint64_t seq, const char *payload,
                                   size_t len)
{
    const char *why = NULL;
    if (nu_json_check(payload, len, &why) == NU_OK)
        return;
    if (!v->r->first_bad_seq)
        v->r->first_bad_seq = seq;
    ledger__finding(v, &v->r->payloads_ok, "audit seq %llu: payload is not strict JSON (%s)",
                    (unsigned long long)seq, why ? why : "?");
}

/* Check one audit row against the running chain state. */
static int ledger__verify_event(struct ledger_verify *v, struct ledger_store_stmt *st, uint64_t *expect,
                                uint8_t prev[NU_SHA256_LEN])
{
    struct cloud_ledger_verify_report *r = v->r;
    /* Types first: reading a value may convert it and void column_type. */
    int typed = ledger_store_col_type(st, 1) == LEDGER_STORE_INTEGER && ledger__is_text(st, 2) &&
                ledger__is_text(st, 3) && ledger__is_text(st, 4) && ledger__is_text(st, 5) &&
                ledger__is_hash(st, 6) && ledger__is_hash(st, 7);
    uint64_t seq = ledger__col_u64(st, 0), ts = ledger__col_u64(st, 1);
    uint8_t hash[NU_SHA256_LEN];
    const char *f[4];
    size_t fl[4];
    int rc;

    r->events++;
    if (seq != *expect) {
        if (!r->first_bad_seq)
            r->first_bad_seq = *expect;
        ledger__finding(v, &r->chain_ok, "audit seq %llu missing (next row is seq %llu)",
                        (unsigned long long)*expect, (unsigned long long)seq);
    }
    *expect = seq + 1;
    if (!typed) {
        if (!r->first_bad_seq)
            r->first_bad_seq = seq;
        ledger__finding(v, &r->chain_ok, "audit seq %llu: a field has the wrong type",
                        (unsigned long long)seq);
        memset(prev, 0xff, NU_SHA256_LEN); /* the next link cannot match either */
        return NU_OK;
    }
    for (int i = 0; i < 4; i++) {
        f[i] = (const char *)ledger__col_text(st, 2 + i);
        fl[i] = (size_t)ledger__col_bytes(st, 2 + i);
    }
    if (memcmp(ledger__col_blobp(st, 6), prev, NU_SHA256_LEN) != 0) {
        if (!r->first_bad_seq)
            r->first_bad_seq = seq;
        ledger__finding(v, &r->chain_ok, "audit seq %llu: prev_hash does not link to seq %llu",
                        (unsigned long long)seq, (unsigned long long)seq - 1);
    }
    rc = cloud_ledger_event_hash(ledger__col_blobp(st, 6), seq, ts, f[0], fl[0], f[1], fl[1],
                                 f[2], fl[2], f[3], fl[3], hash);
    if (rc != NU_OK)
        return rc;
    if (memcmp(hash, ledger__col_blobp(st, 7), NU_SHA256_LEN) != 0) {
        if (!r->first_bad_seq)
            r->first_bad_seq = seq;
        ledger__finding(v, &r->chain_ok, "audit seq %llu: hash mismatch (row edited)",
                        (unsigned long long)seq);
    }
    ledger__verify_payload(v, seq, f[3], fl[3]);
    if (fl[0] == sizeof(LEDGER__CHECKPOINT_KIND) - 1 &&
        memcmp(f[0], LEDGER__CHECKPOINT_KIND, fl[0]) == 0)
        ledger__verify_checkpoint(v, seq, ledger__col_blobp(st, 6), f[3], fl[3]);
    memcpy(prev, ledger__col_blobp(st, 7), NU_SHA256_LEN);
    if (fl[0] == 11 && memcmp(f[0], "cert.issued", 11) == 0) {
        rc = ledger__pair_digest(f[2], fl[2], ts, f[3], fl[3], hash);
        if (rc == NU_OK)
            rc = ledger__pair_add(&v->events, hash, (int64_t)seq);
    }
    return rc;
}

static int ledger__verify_chain(struct ledger_verify *v)
{
    struct cloud_ledger_verify_report *r = v->r;
    uint8_t prev[NU_SHA256_LEN] = {0};
    uint64_t expect = 1;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__vprep(v,
                           "SELECT seq, ts, kind, actor, job_id, payload, prev_hash, hash"
                           " FROM audit_events ORDER BY seq",
                           &st);

    if (rc != NU_OK)
        return rc;
    while (ledger__row(st, &rc)) {
        rc = ledger__verify_event(v, st, &expect, prev);
        if (rc != NU_OK)
            goto out;
    }
    ledger_store_finalize(st);
    st = NULL;
    if (rc != NU_OK)
        return rc;
    if (r->events == 0)
        ledger__finding(v, &r->chain_ok, "audit chain is empty (ledger.created missing)");
    /* The head is written with every event: a cut tail shows here. */
    rc = ledger__vprep(v, "SELECT seq, hash FROM audit_head WHERE id = 1", &st);
    if (rc != NU_OK)
        return rc;
    if (!ledger__row(st, &rc)) {
        if (rc != NU_OK)
            goto out;
    }
    if (ledger_store_col_type(st, 0) == LEDGER_STORE_NULL || ledger__col_u64(st, 0) != expect - 1 || !ledger__is_hash(st, 1) ||
        memcmp(ledger__col_blobp(st, 1), prev, NU_SHA256_LEN) != 0) {
        if (!r->first_bad_seq)
            r->first_bad_seq = expect;
        ledger__finding(v, &r->chain_ok, "audit head does not match the last event (seq %llu)",
                        (unsigned long long)expect - 1);
    }
    rc = NU_OK;
out:
    ledger_store_finalize(st);
    return rc;
}

/* Rebuild each certificate's cert.issued pairing digest. */
static int ledger__verify_cert_row(struct ledger_verify *v, struct ledger_store_stmt *st)
{
    char payload[1024];
    struct ledger_json j;
    uint8_t pem_sha[NU_SHA256_LEN], digest[NU_SHA256_LEN];
    const char *serial = (const char *)ledger__col_text(st, 1);
    const char *job = (const char *)ledger__col_text(st, 2);
    const char *pem = (const char *)ledger__col_text(st, 5);
    const char *prog = (const char *)ledger__col_text(st, 6);
    int uid_len = ledger__col_bytes(st, 3), key_len = ledger__col_bytes(st, 7);
    int rc;

    v->r->certificates++;
    if (!serial || !job || !pem || !prog || !ledger__is_hash(st, 4) || uid_len > 64 ||
        key_len > 64) {
        ledger__finding(v, &v->r->certs_ok, "certificate %s: malformed row",
                        serial ? serial : "(null)");
        return NU_OK;
    }
    rc = nu_sha256(pem, (size_t)ledger__col_bytes(st, 5), pem_sha);
    if (rc != NU_OK)
        return rc;
    lj_init(&j, payload, sizeof(payload));
    ledger__cert_issued_json(&j, serial, ledger__col_blobp(st, 3), (size_t)uid_len,
                             ledger__col_blobp(st, 4), prog, ledger__col_blobp(st, 7),
                             (size_t)key_len, pem_sha);
    if (j.overflow) {
        ledger__finding(v, &v->r->certs_ok, "certificate %s: malformed row", serial);
        return NU_OK;
    }
    rc = ledger__pair_digest(job, (size_t)ledger__col_bytes(st, 2), ledger__col_u64(st, 8),
                             j.buf, j.len, digest);
    if (rc == NU_OK)
        rc = ledger__pair_add(&v->certs, digest, ledger_store_col_i64(st, 0));
    return rc;
}

static void ledger__verify_unpaired_cert(struct ledger_verify *v, int64_t rowid)
{
    struct ledger_store_stmt *st = NULL;
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1] = "?";

    int rc;

    /* PostgreSQL has no rowid: certificates are numbered by serial there. */
    if (ledger__vprep(v, v->db ? "SELECT serial FROM certificates WHERE rowid = ?1"
                               : "SELECT serial FROM (SELECT serial, row_number() OVER"
                                 " (ORDER BY serial) AS n FROM certificates) x WHERE n = ?1",
                      &st) == NU_OK) {
        ledger_store_bind_i64(st, 1, rowid);
        if (ledger__row(st, &rc))
            (void)ledger__col_str(st, 0, serial, sizeof(serial));
    }
    ledger_store_finalize(st);
    ledger__finding(v, &v->r->certs_ok,
                    "certificate %s has no matching cert.issued event (forged or edited)", serial);
}

/* Certificates and cert.issued events must pair one to one (as multisets). */
static int ledger__verify_certs(struct ledger_verify *v)
{
    struct ledger_store_stmt *st = NULL;
    size_t i = 0, k = 0;
    int rc = ledger__vprep(v,
                           v->db ? "SELECT rowid, serial, job_id, device_uid, pubkey_hash, pem,"
                                   " programmer_id, idempotency_key, issued_at_ms FROM certificates"
                                 : "SELECT row_number() OVER (ORDER BY serial), serial, job_id,"
                                   " device_uid, pubkey_hash, pem, programmer_id, idempotency_key,"
                                   " issued_at_ms FROM certificates",
                           &st);

    if (rc != NU_OK)
        return rc;
    while (ledger__row(st, &rc)) {
        rc = ledger__verify_cert_row(v, st);
        if (rc != NU_OK) {
            ledger_store_finalize(st);
            return rc;
        }
    }
    ledger_store_finalize(st);
    if (rc != NU_OK)
        return rc;
    if (v->events.n)
        qsort(v->events.v, v->events.n, sizeof(struct ledger_pair), ledger__pair_cmp);
    if (v->certs.n)
        qsort(v->certs.v, v->certs.n, sizeof(struct ledger_pair), ledger__pair_cmp);
    while (i < v->events.n || k < v->certs.n) {
        int c = i == v->events.n  ? 1
                : k == v->certs.n ? -1
                                  : ledger__pair_cmp(&v->events.v[i], &v->certs.v[k]);
        if (c == 0) {
            i++;
            k++;
        } else if (c < 0) {
            ledger__finding(v, &v->r->certs_ok,
                            "audit seq %lld: cert.issued without its certificate (deleted or "
                            "edited)",
                            (long long)v->events.v[i++].id);
        } else {
            ledger__verify_unpaired_cert(v, v->certs.v[k++].id);
        }
    }
    return NU_OK;
}

/* Run a query whose every row is a finding described by column 0. */
static int ledger__verify_query(struct ledger_verify *v, const char *sql, int *flag,
                                const char *what)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__vprep(v, sql, &st);

    if (rc != NU_OK)
        return rc;
    while (ledger__row(st, &rc))
        ledger__finding(v, flag, "%s: %s", what, ledger__col_cstr(st, 0));
    ledger_store_finalize(st);
    return rc;
}

static int ledger__verify_counts(struct ledger_verify *v)
{
    int64_t jobs = 0;
    int pg = v->db == NULL;
    int rc = ledger__verify_query(
        v,
        pg ? "SELECT format('job %s: issued %s, certificates %s, allocations %s, quota %s',"
             " j.job_id, j.issued, coalesce(c.n, 0), coalesce(a.s, 0), j.quota) FROM jobs j"
             " LEFT JOIN (SELECT job_id, count(*) AS n FROM certificates GROUP BY job_id) c"
             "  ON c.job_id = j.job_id"
             " LEFT JOIN (SELECT job_id, sum(issued) AS s FROM job_allocations GROUP BY job_id) a"
             "  ON a.job_id = j.job_id"
             " WHERE j.issued != coalesce(c.n, 0) OR j.issued != coalesce(a.s, 0)"
             "  OR j.issued > j.quota" :
        "SELECT printf('job %s: issued %d, certificates %d, allocations %d, quota %d',"
        " j.job_id, j.issued, coalesce(c.n, 0), coalesce(a.s, 0), j.quota) FROM jobs j"
        " LEFT JOIN (SELECT job_id, count(*) AS n FROM certificates GROUP BY job_id) c"
        "  ON c.job_id = j.job_id"
        " LEFT JOIN (SELECT job_id, sum(issued) AS s FROM job_allocations GROUP BY job_id) a"
        "  ON a.job_id = j.job_id"
        " WHERE typeof(j.issued) != 'integer' OR j.issued != coalesce(c.n, 0)"
        "  OR j.issued != coalesce(a.s, 0) OR j.issued > j.quota",
        &v->r->counts_ok, "quota counters");

    if (rc == NU_OK)
        rc = ledger__verify_query(
            v,
            pg ? "SELECT format('job %s, programmer %s: issued %s, certificates %s, limit %s',"
                 " a.job_id, a.programmer_id, a.issued, coalesce(c.n, 0), a.quota_limit)"
                 " FROM job_allocations a LEFT JOIN (SELECT job_id, programmer_id, count(*) AS n"
                 "  FROM certificates GROUP BY job_id, programmer_id) c"
                 "  ON c.job_id = a.job_id AND c.programmer_id = a.programmer_id"
                 " WHERE a.issued != coalesce(c.n, 0) OR a.issued > a.quota_limit" :
            "SELECT printf('job %s, programmer %s: issued %d, certificates %d, limit %d',"
            " a.job_id, a.programmer_id, a.issued, coalesce(c.n, 0), a.quota_limit)"
            " FROM job_allocations a LEFT JOIN (SELECT job_id, programmer_id, count(*) AS n"
            "  FROM certificates GROUP BY job_id, programmer_id) c"
            "  ON c.job_id = a.job_id AND c.programmer_id = a.programmer_id"
            " WHERE a.issued != coalesce(c.n, 0) OR a.issued > a.quota_limit",
            &v->r->counts_ok, "allocation counters");
    if (rc == NU_OK)
        rc = ledger__verify_query(
            v,
            pg ? "SELECT format('certificate %s: no allocation for %s in job %s', c.serial,"
                 " c.programmer_id, c.job_id) FROM certificates c WHERE NOT EXISTS (SELECT 1"
                 " FROM job_allocations a WHERE a.job_id = c.job_id"
                 " AND a.programmer_id = c.programmer_id)" :
            "SELECT printf('certificate %s: no allocation for %s in job %s', c.serial,"
            " c.programmer_id, c.job_id) FROM certificates c WHERE NOT EXISTS (SELECT 1"
            " FROM job_allocations a WHERE a.job_id = c.job_id"
            " AND a.programmer_id = c.programmer_id)",
            &v->r->counts_ok, "certificate without allocation");
    if (rc == NU_OK)
        rc = ledger__vint(v, "SELECT count(*) FROM jobs", &jobs);
    v->r->jobs = (uint64_t)jobs;
    return rc;
}

static int ledger__verify_schema(struct ledger_verify *v)
{
    struct ledger_store_stmt *st = NULL;
    int64_t version = 0;
    int rc = v->db ? ledger__pragma_int(v->db, "PRAGMA user_version", &version)
                   : ledger__vint(v, "SELECT version FROM ledger_meta WHERE id = 1", &version);

    if (rc != NU_OK)
        return rc;
    /* An older file (not yet opened by this version, so not migrated) is
     * checked against what its own version promises. */
    if (version < 1 || version > CLOUD_LEDGER_SCHEMA_VERSION)
        ledger__finding(v, &v->r->schema_ok, "schema version %lld, expected 1..%d",
                        (long long)version, CLOUD_LEDGER_SCHEMA_VERSION);
    rc = ledger__vprep(v, v->db ? "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?1"
                                : "SELECT 1 FROM pg_trigger WHERE tgname = ?1 AND NOT tgisinternal",
                       &st);
    if (rc != NU_OK)
        return rc;
    for (size_t i = 0; i < sizeof(ledger__triggers) / sizeof(ledger__triggers[0]); i++) {
        int found;
        if (ledger__triggers[i].since > version)
            continue;
        ledger_store_bind_text(st, 1, ledger__triggers[i].name);
        found = ledger__row(st, &rc);
        ledger_store_reset(st);
        if (rc != NU_OK) {
            ledger_store_finalize(st);
            return rc;
        }
        if (!found)
            ledger__finding(v, &v->r->schema_ok, "trigger %s is missing", ledger__triggers[i].name);
    }
    ledger_store_finalize(st);
    return NU_OK;
}

/* Verify over a connection (not inside a transaction). */
static int ledger__verify_db(struct ledger_store *store, sqlite3 *db,
                             const struct cloud_ledger_verify_opts *opts,
                             struct cloud_ledger_verify_report *r)
{
    struct ledger_verify v = {.store = store, .db = db, .r = r, .opts = opts};
    int rc;

    memset(r, 0, sizeof(*r));
    r->chain_ok = r->certs_ok = r->counts_ok = r->schema_ok = r->checkpoints_ok = 1;
    r->payloads_ok = 1;
    r->checkpoints_checked = opts && opts->check_checkpoint;
    /* One read transaction: a consistent snapshot while other agents write. */
    rc = ledger_store_begin(store, 0);
    if (rc != NU_OK)
        return rc;
    rc = ledger__verify_schema(&v);
    if (rc == NU_OK)
        rc = ledger__verify_chain(&v);
    if (rc == NU_OK)
        rc = ledger__verify_certs(&v);
    if (rc == NU_OK)
        rc = ledger__verify_counts(&v);
    ledger_store_rollback(store);
    free(v.events.v);
    free(v.certs.v);
    if (rc != NU_OK)
        return rc;
    return r->problems ? NU_ERR_TAMPERED : NU_OK;
}

int cloud_ledger_verify(struct cloud_ledger *ledger, struct cloud_ledger_verify_report *out_report)
{
    if (!ledger || !out_report)
        return NU_ERR_INVALID_ARG;
    return ledger__verify_db(ledger->store, ledger->db, NULL, out_report);
}

int cloud_ledger_verify_path(const char *path, struct cloud_ledger_verify_report *out_report)
{
    return cloud_ledger_verify_path_opts(path, NULL, out_report);
}

int cloud_ledger_verify_path_opts(const char *path, const struct cloud_ledger_verify_opts *opts,
                                  struct cloud_ledger_verify_report *out_report)
{
    return cloud_ledger_verify_target(path, NULL, opts, out_report);
}

int cloud_ledger_verify_target(const char *target, const char *password_file,
                               const struct cloud_ledger_verify_opts *opts,
                               struct cloud_ledger_verify_report *out_report)
{
    struct ledger_store *store = NULL;
    sqlite3 *db = NULL;
    int64_t version = 0;
    int rc;

    if (!target || !out_report)
        return NU_ERR_INVALID_ARG;
    memset(out_report, 0, sizeof(*out_report));
    if (ledger_store_target_is_pg(target)) {
        rc = ledger_store_open(target, password_file, &store);
        if (rc == NU_OK)
            rc = ledger__pg_identify(store, &version);
        if (rc == NU_OK && version == 0)
            rc = NU_ERR_CONFIG;
        if (rc == NU_OK)
            rc = ledger__verify_db(store, NULL, opts, out_report);
        ledger_store_close(store);
        return rc;
    }
    if (!strncmp(target, "sqlite:", 7))
        target += 7;
    if (!nu_path_exists(target))
        return NU_ERR_NOT_FOUND;
    rc = sqlite3_open_v2(target, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = ledger__dberr(db, rc, "open for verify");
        sqlite3_close(db);
        return rc;
    }
    rc = ledger__configure(db, 0);
    if (rc == NU_OK)
        rc = ledger__identify(db, &version);
    if (rc == NU_OK && version == 0)
        rc = NU_ERR_CONFIG; /* identify already refused newer versions */
    if (rc == NU_OK)
        rc = ledger_store_sqlite_wrap(db, &store);
    if (rc != NU_OK) {
        sqlite3_close(db);
        return rc;
    }
    rc = ledger__verify_db(store, db, opts, out_report);
    ledger_store_close(store);
    return rc;
}
