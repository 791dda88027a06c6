/*
 * ledger_int — what the parts of the ledger (ledger.c and ledger_*.c) share:
 * the statement table, the handle's struct, and the helpers each part calls
 * in another. Private to those files; nothing outside libledger/ledger*.c
 * includes it. Names stay `ledger__*` (internal), they are just not static.
 */
#ifndef CLOUD_LEDGER_INT_H
#define CLOUD_LEDGER_INT_H

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

/* --------------------------------------------------------------- statements */

/*
 * Reads that decide under a write lock end in FOR UPDATE: on PostgreSQL
 * READ COMMITTED writers do not queue on one file lock, so they take row
 * locks (the job and allocation rows in that order, jobs sorted in a batch),
 * the chain head last so seq order is commit order. The SQLite store drops
 * the clause: BEGIN IMMEDIATE already holds the whole file (ledger_store.h).
 */

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
    X(HEAD_GET, "SELECT seq, hash FROM audit_head WHERE id = 1 FOR UPDATE")                        \
    X(HEAD_READ, "SELECT seq, hash FROM audit_head WHERE id = 1")                                  \
    X(HEAD_KIND, "SELECT h.seq, h.hash, e.kind FROM audit_head h"                                  \
                 " JOIN audit_events e ON e.seq = h.seq WHERE h.id = 1 FOR UPDATE OF h")           \
    X(HEAD_SET, "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1")                          \
    X(EV_INSERT, "INSERT INTO audit_events (seq, ts, kind, actor, job_id, payload, prev_hash,"     \
                 " hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")                                 \
    /* PostgreSQL only (ledger__sql_pg): the insert and the head move in one                       \
     * round trip; SQLite has no data-modifying WITH and runs the two. */                          \
    X(EV_APPEND, "SELECT 1")                                                                       \
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
    X(JOB_LOCK, "SELECT job_id FROM jobs WHERE job_id = ?1 FOR UPDATE")                            \
    X(CERT_LOCK, "SELECT serial FROM certificates WHERE serial = ?1 FOR UPDATE")                   \
    X(JOB_REFUSED, "UPDATE jobs SET refused = refused + 1 WHERE job_id = ?1")                      \
    X(ALLOC_GET, "SELECT quota_limit, issued FROM job_allocations"                                 \
                 " WHERE job_id = ?1 AND programmer_id = ?2 FOR UPDATE")                           \
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
                       " WHERE job_id = ?1 AND device_uid = ?2"                                    \
                       " ORDER BY state = 'revoked', issued_at_ms DESC LIMIT 1")                   \
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
    X(CERT_SUPERSEDE, "UPDATE certificates SET state = 'revoked', state_at_ms = ?2,"               \
                      " revoked_at_ms = ?2, revoke_reason = ?3 WHERE serial = ?1"                  \
                      " AND state = 'issued'")                                                     \
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
                " ORDER BY position")                                                              \
    LEDGER_LEASE_SQL(X)                                                                            \
    LEDGER_SHARED_SQL(X)

/* Offline leases (ledger_lease.c, schema 4). */
#define LEDGER_LEASE_COLS                                                                          \
    "lease_id, job_id, programmer_id, units, used, line_pub_hash, cert_der, granted_at_ms,"        \
    " not_before_ms, not_after_ms, state"
#define LEDGER_LEASE_SQL(X)                                                                        \
    X(LEASE_RESERVED, "SELECT CAST(coalesce(sum(units - used), 0) AS BIGINT),"                     \
                      " CAST(coalesce(sum(CASE WHEN programmer_id = ?2 THEN units - used"          \
                      " ELSE 0 END), 0) AS BIGINT) FROM leases WHERE job_id = ?1"                  \
                      " AND state = 'active'")                                                     \
    X(LEASE_POLICY_GET, "SELECT units, hours FROM lease_policies WHERE job_id = ?1")               \
    X(LEASE_POLICY_PUT, "INSERT INTO lease_policies (job_id, units, hours, set_by, set_at_ms)"     \
                        " VALUES (?1, ?2, ?3, ?4, ?5)")                                            \
    X(LEASE_GET, "SELECT " LEDGER_LEASE_COLS " FROM leases WHERE lease_id = ?1")                   \
    X(LEASE_ACTIVE_OF, "SELECT " LEDGER_LEASE_COLS " FROM leases WHERE job_id = ?1"                \
                       " AND programmer_id = ?2 AND state = 'active'")                             \
    X(LEASE_LAST_OF, "SELECT " LEDGER_LEASE_COLS " FROM leases WHERE job_id = ?1"                  \
                     " AND programmer_id = ?2 ORDER BY granted_at_ms DESC, lease_id LIMIT 1")      \
    X(LEASE_INSERT, "INSERT INTO leases (lease_id, job_id, programmer_id, units, used,"            \
                    " line_pub_hash, cert_der, granted_at_ms, not_before_ms, not_after_ms, state)" \
                    " VALUES (?1, ?2, ?3, ?4, 0, ?5, ?6, ?7, ?8, ?9, 'active')")                   \
    X(LEASE_USED, "UPDATE leases SET used = used + 1 WHERE lease_id = ?1 AND used < units"         \
                  " AND state = 'active'")                                                         \
    X(LEASE_CLOSE, "UPDATE leases SET state = ?2, closed_at_ms = ?3 WHERE lease_id = ?1"           \
                   " AND state = 'active'")                                                        \
    X(LCERT_GET, "SELECT lease_id, counter FROM lease_certs WHERE serial = ?1")                    \
    X(LCERT_COUNTER, "SELECT serial FROM lease_certs WHERE lease_id = ?1 AND counter = ?2")        \
    X(LCERT_INSERT, "INSERT INTO lease_certs (serial, lease_id, counter, recorded_at_ms)"          \
                    " VALUES (?1, ?2, ?3, ?4)")                                                    \
    X(LJOB_ISSUED, "UPDATE jobs SET issued = issued + 1, status = CASE WHEN issued + 1 >= quota"   \
                   " AND status = 'active' THEN 'exhausted' ELSE status END, updated_at_ms = ?2"   \
                   " WHERE job_id = ?1 AND issued < quota")                                        \
    X(LSUP_INSERT, "INSERT INTO cert_superseded (serial, job_id, by_serial, lease_id,"             \
                   " superseded_at_ms) VALUES (?1, ?2, ?3, ?4, ?5)")                               \
    X(REQ_FORGET, "UPDATE requests SET code = ?3, created_at_ms = 0"                               \
                  " WHERE requester = ?1 AND idempotency_key = ?2")

/* State every agent shares (ledger_shared.c, schema 5). */
#define LEDGER_SHARED_SQL(X)                                                                       \
    X(RMEAS_GET, "SELECT measurement FROM revoked_measurements WHERE measurement = ?1")            \
    X(RMEAS_INSERT, "INSERT INTO revoked_measurements (measurement, reason, revoked_by,"           \
                    " revoked_at_ms) VALUES (?1, ?2, ?3, ?4)")                                     \
    X(RMEAS_LIST, "SELECT measurement, reason, revoked_by, revoked_at_ms"                          \
                  " FROM revoked_measurements ORDER BY measurement")                               \
    X(PROG_BY_MEAS, "SELECT programmer_id FROM programmers WHERE state = 'enrolled'"               \
                    " AND firmware_measurement = ?1 ORDER BY programmer_id")                       \
    X(BLOB_INSERT, "INSERT INTO firmware_blobs (name, image) VALUES (?1, ?2)")                     \
    X(BLOB_GET, "SELECT b.image, f.image_digest, f.image_size FROM firmware_blobs b"               \
                " JOIN firmware_images f ON f.name = b.name WHERE b.name = ?1")                    \
    X(BLOB_HAS, "SELECT 1 FROM firmware_blobs WHERE name = ?1")                                    \
    X(FW_LIST, "SELECT name, image_digest, image_size, security_counter, request_hash,"            \
               " signed_by, signed_at_ms FROM firmware_images ORDER BY name")                      \
    X(CRL_PUT, "INSERT INTO device_crl (id, crl_number, der) VALUES (1, ?1, ?2)"                   \
               " ON CONFLICT (id) DO UPDATE SET crl_number = excluded.crl_number,"                 \
               " der = excluded.der WHERE device_crl.crl_number < excluded.crl_number")            \
    X(CRL_GET, "SELECT crl_number, der FROM device_crl WHERE id = 1")

enum ledger_stmt {
#define LEDGER__ENUM(name, sql) ST_##name,
    LEDGER_SQL(LEDGER__ENUM)
#undef LEDGER__ENUM
        ST__COUNT
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
    /* The chain head as this write transaction left it (ledger__append), so
     * the next event skips re-reading a row it already holds locked: valid
     * from the first append to the end of the transaction; `head_sp` is the
     * value at the request savepoint, put back by ROLLBACK TO (which also
     * drops a lock taken after it). ledger__exec keeps both in step. */
    struct ledger_head {
        int valid;
        uint64_t seq;
        uint8_t hash[CLOUD_LEDGER_HASH_LEN];
    } head, head_sp;
    /* Writes run or queued by this handle (ledger__run): issuance tells from
     * it whether a failed request left anything to undo. */
    unsigned long writes;
    /* PostgreSQL issuance (ledger_issue.c): a handle of its own per request
     * slot and read, so a whole batch's reads go out in one round trip, and
     * the batch's view of its job and allocation rows (NULL outside it). */
    struct ledger_store_stmt *pool[CLOUD_LEDGER_BATCH_MAX][6];
    struct ledger_view *view;
};

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

/* Adapters between the typed rows/visitors and ledger__walk. */
struct ledger_visit {
    void *fn;
    void *ctx;
};

/* Status and state names as stored (entry 0 unused). */
extern const char *const ledger__job_status_names[];
extern const char *const ledger__cert_state_names[];

/* -------- open, schema (ledger.c) */

/* Map an SQLite result at the boundary and log the original (open and
 * schema only: statements go through ledger_store, which maps its own). */
int ledger__dberr(sqlite3 *db, int rc, const char *what);

int ledger__pragma_int(sqlite3 *db, const char *sql, int64_t *out);

/*
 * Is this our kind of file? A fresh file (no schema, version 0) is fine.
 * Errors: CONFIG (some other database), NOT_SUPPORTED (newer schema).
 */
int ledger__identify(sqlite3 *db, int64_t *out_version);

/*
 * PostgreSQL's ledger_identify: version 0 when the database has no ledger
 * yet. Errors: CONFIG (ledger_meta of some other program), NOT_SUPPORTED
 * (newer schema), CONNECTION, DB.
 */
int ledger__pg_identify(struct ledger_store *store, int64_t *out_version);

int ledger__configure(sqlite3 *db, int write);

/* -------- statements, rows, transactions, validation (ledger_util.c) */

int ledger__is_pg(const struct cloud_ledger *l);

int ledger__stmt(struct cloud_ledger *l, enum ledger_stmt id,
                 struct ledger_store_stmt **out_st);

/* Prepare another handle on statement `id` (owned by the store). */
int ledger__stmt_new(struct cloud_ledger *l, enum ledger_stmt id,
                     struct ledger_store_stmt **out_st);

void ledger__reset(struct ledger_store_stmt *st);

/* Step: 1 with a row; 0 when done (*rc = NU_OK) or failed (*rc = the error). */
int ledger__row(struct ledger_store_stmt *st, int *rc);

/* Step a statement that returns no rows, then reset it. */
int ledger__run(struct cloud_ledger *l, struct ledger_store_stmt *st, const char *what);

/* The same, and the statement must change exactly `expect` rows (>= 0; -1:
 * any), else INTERNAL. Pipelined (PostgreSQL issuance), the check comes back
 * with the next step/flush/commit (ledger_store_queue). Counts l->writes. */
int ledger__run_expect(struct cloud_ledger *l, struct ledger_store_stmt *st, int64_t expect,
                       const char *what);

/* Run a parameterless transaction statement (BEGIN, COMMIT, SAVEPOINT...). */
int ledger__exec(struct cloud_ledger *l, enum ledger_stmt id);

int ledger__bind_text(struct ledger_store_stmt *st, int i, const char *s);

int ledger__bind_blob(struct ledger_store_stmt *st, int i, const void *p, size_t n);

/* Text with a length (payloads): bound as text, NUL or not after it. */
int ledger__bind_blob_text(struct ledger_store_stmt *st, int i, const char *p, size_t n);

int ledger__bind_u64(struct ledger_store_stmt *st, int i, uint64_t v);

uint64_t ledger__col_u64(struct ledger_store_stmt *st, int i);

uint32_t ledger__col_u32(struct ledger_store_stmt *st, int i);

/* The text of a column as a C string (NULL for SQL NULL). */
const unsigned char *ledger__col_text(struct ledger_store_stmt *st, int i);

int ledger__col_bytes(struct ledger_store_stmt *st, int i);

const void *ledger__col_blobp(struct ledger_store_stmt *st, int i);

/* Copy a TEXT column into out[cap]. A value longer than anything we write
 * means the row was not written by us: DB. NULL reads as "". */
int ledger__col_str(struct ledger_store_stmt *st, int i, char *out, size_t cap);

int ledger__col_blob(struct ledger_store_stmt *st, int i, uint8_t *out, size_t cap,
                     size_t *out_len);

/* Exactly `len` bytes, else DB (e.g. a 32-byte hash column). */
int ledger__col_fixed(struct ledger_store_stmt *st, int i, uint8_t *out, size_t len);

int ledger__begin(struct cloud_ledger *l, int write);

/* Roll back whatever is open (no-op after a COMMIT). */
void ledger__rollback(struct cloud_ledger *l);

int ledger__commit(struct cloud_ledger *l);

int ledger__time_ok(uint64_t t);

/* An identifier as on the wire; the strnlen bound keeps hostile input cheap. */
int ledger__id_check(const char *id);

/* NULL or "" (none), else an id. */
int ledger__opt_id_check(const char *id);

/*
 * Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), no
 * NUL, no C0 control or DEL except tab/CR/LF when allow_newlines.
 */
int ledger__utf8_ok(const uint8_t *s, size_t n, int allow_newlines);

/* Optional one-line text (reasons, details, subject template). */
int ledger__text_check(const char *s, size_t max);

/* A serial as we store it: 1..64 lower-case hex digits. */
int ledger__serial_ok(const char *s);

/* PEM text: ASCII armour, bounded. */
int ledger__pem_ok(const char *pem, size_t *out_len);

int ledger__kind_check(const char *kind);

int ledger__job_row(struct ledger_store_stmt *st, struct cloud_ledger_job *job);

int ledger__prog_row(struct ledger_store_stmt *st, struct cloud_ledger_programmer *p);

int ledger__cert_row(struct ledger_store_stmt *st, struct cloud_ledger_cert *c);

/* Run a one-row lookup: NU_OK with the row ready (caller resets),
 * NOT_FOUND (statement already reset), or a database error. */
int ledger__step_one(struct cloud_ledger *l, struct ledger_store_stmt *st, const char *what);

/* Step statement `id` (one text parameter, `key`) to its one row: NU_OK with
 * *out_st on the row (caller resets), NOT_FOUND, or a database error. */
int ledger__row_by_key(struct cloud_ledger *l, enum ledger_stmt id, const char *key,
                       const char *what, struct ledger_store_stmt **out_st);

int ledger__job_read(struct cloud_ledger *l, const char *job_id,
                     struct cloud_ledger_job *out);

/* A programmer's state: NU_OK (enrolled), REVOKED, NOT_FOUND, or a DB error.
 * out_serial (may be NULL) receives its certificate serial. */
int ledger__prog_state(struct cloud_ledger *l, const char *programmer_id,
                       char out_serial[CLOUD_LEDGER_SERIAL_MAX + 1]);

/* The requester's allocation in a job: NU_OK, NOT_FOUND, or a DB error. */
int ledger__alloc_read(struct cloud_ledger *l, const char *job_id, const char *programmer_id,
                       uint32_t *out_limit, uint32_t *out_issued);

/* Allocations of a job into out[cap]; *out_n is the full count. */
int ledger__alloc_list(struct cloud_ledger *l, const char *job_id,
                       struct cloud_ledger_alloc *out, size_t cap, size_t *out_n);

/* Resolve a certificate reference into *out. */
int ledger__cert_find(struct cloud_ledger *l, const struct cloud_ledger_cert_ref *ref,
                      struct cloud_ledger_cert *out);

int ledger__cert_ref_check(const struct cloud_ledger_cert_ref *ref);

/* Walk a cached statement's rows: decode each with `row` into `item` and
 * hand it to `visit`. Returns NU_OK, a DB error, or the visitor's value. */
int ledger__walk(struct cloud_ledger *l, struct ledger_store_stmt *st,
                 int (*row)(struct ledger_store_stmt *, void *), void *item,
                 int (*visit)(void *, const void *), void *ctx);

/* A whole listing of statement `id` (no parameters) in one read transaction. */
int ledger__list_all(struct cloud_ledger *l, enum ledger_stmt id,
                     int (*row)(struct ledger_store_stmt *, void *), void *item,
                     int (*visit)(void *, const void *), void *ctx);

/* -------- audit chain (ledger_audit.c) */

/* Append the event whose payload was built in l->payload. */
int ledger__append_json(struct cloud_ledger *l, struct ledger_json *j, uint64_t ts,
                        const char *kind, const char *actor, const char *job_id);

/* -------- programmers and enrollment (ledger_programmer.c) */

void ledger__token_id(struct ledger_json *j, const uint8_t hash[NU_SHA256_LEN]);

/* -------- shared agent state (ledger_shared.c) */

/* Is `measurement` revoked? Inside the caller's write transaction, after
 * the lock cloud_ledger_firmware_revoke takes on it: NU_OK, MEASUREMENT
 * (revoked), or a DB error. */
int ledger__measurement_decide(struct cloud_ledger *l, const char *measurement);

/* Revoke one enrolled programmer inside the caller's write transaction
 * (event programmer.revoked). NU_OK, STATE (already revoked), NOT_FOUND, DB. */
int ledger__prog_revoke_in_txn(struct cloud_ledger *l, const char *programmer_id,
                               const char *reason, const char *actor, uint64_t now_ms);

/* The firmware.signed record and event inside the caller's write
 * transaction (ledger_job.c). */
int ledger__firmware_add_in_txn(struct cloud_ledger *l, const struct cloud_ledger_firmware *fw);

/* -------- issuance (ledger_issue.c) */

/* The cert.issued payload: everything derives from the certificate row, so
 * verify can rebuild it (see ledger.h). */
void ledger__cert_issued_json(struct ledger_json *j, const char *serial, const uint8_t *uid,
                              size_t uid_len,
                              const uint8_t pubkey_hash[CLOUD_LEDGER_HASH_LEN],
                              const char *programmer, const uint8_t *key, size_t key_len,
                              const uint8_t pem_sha256[CLOUD_LEDGER_HASH_LEN]);

/* -------- offline leases (ledger_lease.c) */

/* Units the job's active leases hold back (units - used), all and the
 * programmer's. */
int ledger__lease_reserved(struct cloud_ledger *l, const char *job_id, const char *programmer_id,
                           uint32_t *out_job, uint32_t *out_prog);

/* ST_LEASE_RESERVED bound as ledger__lease_reserved binds it (issuance
 * sends it ahead of the step when pipelining). */
int ledger__lease_reserved_bind(struct cloud_ledger *l, const char *job_id,
                                const char *programmer_id, struct ledger_store_stmt **out_st);

/* Lock one row with a FOR UPDATE statement (two text keys; absent is fine). */
int ledger__lock_row(struct cloud_ledger *l, enum ledger_stmt id, const char *a,
                     const char *b);

#endif
