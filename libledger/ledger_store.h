/*
 * ledger_store — the ledger's narrow storage interface (internal to
 * cloud-agent; nothing above ledger.h may include it).
 *
 * Two implementations behind one table of functions, chosen by the target
 * string at open (curl's vtls pattern):
 *   ledger_store_sqlite.c  "sqlite:PATH" or a plain PATH: one file, WAL,
 *                          synchronous=FULL, foreign keys, a busy timeout;
 *                          a write transaction is BEGIN IMMEDIATE.
 *   ledger_store_pg.c      "postgresql://..." / "postgres://..." (a libpq URI,
 *                          multi-host with target_session_attrs=read-write
 *                          works): READ COMMITTED transactions, statements
 *                          prepared once per connection, binary parameters and
 *                          results.
 *
 * The shape mirrors SQLite's statement API so the ledger's decision code
 * reads the same on both: prepare once, bind by 1-based index, step row by
 * row, read columns by 0-based index, reset. SQL is written once with `?N`
 * placeholders in the portable subset both engines accept (the PostgreSQL
 * backend rewrites `?N` to `$N`); schema DDL differs and lives with each
 * backend's schema file.
 *
 * ERRORS (nu_err codes, mapped at this boundary, the engine's own message
 * logged): CONNECTION — the server is unreachable or the connection was lost
 * (transient: retry on a new transaction; the next begin reconnects);
 * BUSY — a lock wait, deadlock or serialization failure (transient);
 * EXISTS — a unique/primary key violation; PERMISSION — the role lacks a
 * privilege, or authentication failed; IO — the file cannot be opened or
 * written; NOMEM; DB — everything else (constraint, syntax, corrupt data).
 *
 * OWNERSHIP: a store owns its statements; ledger_store_close() finalizes
 * them. Column pointers are valid until the next step/reset of that statement.
 * THREADS: one thread at a time per store (one connection).
 */
#ifndef CLOUD_LEDGER_STORE_H
#define CLOUD_LEDGER_STORE_H

#include <stddef.h>
#include <stdint.h>

struct ledger_store;      /* opaque: one connection */
struct ledger_store_stmt; /* opaque: one prepared statement of a store */

enum ledger_store_kind {
    LEDGER_STORE_SQLITE = 1,
    LEDGER_STORE_POSTGRESQL = 2,
};

/* Whether `target` names a PostgreSQL database (a libpq URI). */
int ledger_store_target_is_pg(const char *target);

/*
 * Open a connection to `target` (see above). For PostgreSQL, the password,
 * when one is needed, comes from libpq's PGPASSFILE or from
 * `password_file` (may be NULL): a file that must be a regular file of mode
 * 0600 or stricter holding the password on its first line — a password in
 * the URI itself is refused (INVALID_ARG), so it never sits in cloud.conf.
 * Errors: INVALID_ARG, NOMEM, IO, CONNECTION, PERMISSION (authentication or
 * a password file readable by others), NOT_SUPPORTED (backend not built),
 * DB. *out_store is released with ledger_store_close().
 */
int ledger_store_open(const char *target, const char *password_file,
                      struct ledger_store **out_store);

/* Close, finalizing every statement. NULL is a no-op. */
void ledger_store_close(struct ledger_store *store);

enum ledger_store_kind ledger_store_kind(const struct ledger_store *store);

/* The engine's last error message (for logs; never NULL). */
const char *ledger_store_errmsg(const struct ledger_store *store);

/* Run SQL without parameters or results (DDL, several statements allowed). */
int ledger_store_exec(struct ledger_store *store, const char *sql);

/*
 * Transactions. write = 1 takes the engine's write intent at once (SQLite
 * BEGIN IMMEDIATE; PostgreSQL BEGIN ISOLATION LEVEL READ COMMITTED, rows are
 * locked by the statements). A read transaction is one snapshot (SQLite
 * BEGIN; PostgreSQL REPEATABLE READ READ ONLY). When the connection was lost,
 * begin first reconnects (CONNECTION when it cannot).
 * rollback is a no-op outside a transaction.
 */
int ledger_store_begin(struct ledger_store *store, int write);
int ledger_store_commit(struct ledger_store *store);
void ledger_store_rollback(struct ledger_store *store);
int ledger_store_in_txn(const struct ledger_store *store);

/* Savepoints inside a transaction (name: [a-z_]+). */
int ledger_store_savepoint(struct ledger_store *store, const char *name);
int ledger_store_release(struct ledger_store *store, const char *name);
int ledger_store_rollback_to(struct ledger_store *store, const char *name);

/*
 * Whether a write transaction already excludes every other writer (SQLite:
 * BEGIN IMMEDIATE takes the file's one write lock), so row and key locks
 * have nothing to add; 0 on PostgreSQL, where writers meet only at the rows
 * they lock.
 */
int ledger_store_serializes_writers(const struct ledger_store *store);

/*
 * Serialize writers of one key until the transaction ends (PostgreSQL
 * pg_advisory_xact_lock on a 64-bit digest of ns || key; SQLite: a no-op,
 * BEGIN IMMEDIATE already serializes every writer). Errors: CONNECTION, BUSY, DB.
 */
int ledger_store_xact_lock(struct ledger_store *store, uint32_t ns, const void *key, size_t len);

/*
 * Try to take a lock held for as long as this connection lives (PostgreSQL
 * pg_try_advisory_lock; it moves to another connection when this one dies).
 * *out_held = 1 when this connection holds it. Asking again while held
 * confirms it (no count stacks up); after a reconnect the answer is the
 * server's, so a lock lost with its session reads as not held. SQLite:
 * always held (one host, one file). Errors: CONNECTION, DB.
 */
int ledger_store_session_lock(struct ledger_store *store, int64_t id, int *out_held);

/*
 * How long a write waits for a lock another connection holds before BUSY
 * (default 10 s). SQLite: its busy timeout, and the same wait at the
 * process's writer gate. PostgreSQL: lock_timeout for this session (a
 * reconnect returns to the server's setting). Errors: INVALID_ARG, DB.
 */
int ledger_store_set_lock_timeout(struct ledger_store *store, unsigned ms);

/*
 * Housekeeping best kept off the request path. SQLite: copy the WAL into the
 * main file without waiting for anyone (a PASSIVE checkpoint; BUSY when
 * another checkpoint runs). PostgreSQL: NU_OK, the server's checkpointer and
 * autovacuum do it.
 */
int ledger_store_maintain(struct ledger_store *store);

/* Whether commits may do that housekeeping themselves (on: SQLite's default,
 * a commit checkpoints a WAL past 1000 pages; off: only ledger_store_maintain
 * does). PostgreSQL: NU_OK. */
int ledger_store_set_inline_maintenance(struct ledger_store *store, int on);

/*
 * Pipelining inside one write transaction (PostgreSQL: libpq pipeline mode;
 * SQLite, in-process: every call runs at once and these are no-ops).
 * on = 1 right after ledger_store_begin(store, 1): from then on statements
 * are sent without waiting for their answers; a step of a read, a flush or
 * the commit sends one Sync and reads the answers back in order. The server
 * runs them in the order sent, so a read sees the writes queued before it.
 * A failure of any queued command aborts the transaction: it is returned by
 * the next step/flush/commit (and by every later send) until ROLLBACK TO a
 * savepoint or the rollback. Commit and rollback end pipelining; so does any
 * call that needs a plain round trip (session lock, DDL). Errors: INVALID_ARG
 * (no open transaction), CONNECTION, DB.
 */
int ledger_store_pipeline(struct ledger_store *store, int on);

/* Whether statements are being pipelined now. */
int ledger_store_piped(const struct ledger_store *store);

/*
 * Send a bound statement now (several reads then travel in one round trip);
 * its later step reads the answer instead of running it again, whatever was
 * bound since. Not pipelining: a no-op, the step runs it.
 */
int ledger_store_send(struct ledger_store_stmt *st);

/*
 * Run a write whose rows nobody reads, and reset it. Pipelining: only sent;
 * its failure, or a row count other than expect_changes (when >= 0, then
 * INTERNAL), comes back from a later step/flush/commit. Otherwise it runs at
 * once and returns that outcome.
 */
int ledger_store_queue(struct ledger_store_stmt *st, int64_t expect_changes);

/* Wait for every answer sent so far: NU_OK, or the transaction's first failure. */
int ledger_store_flush(struct ledger_store *store);

/* ------------------------------------------------------------ statements */

/* Prepare `sql` (placeholders ?1..?N). The statement belongs to the store.
 * A trailing "FOR UPDATE [OF t]" locks the rows read on PostgreSQL; the
 * SQLite store drops it (see ledger_store_serializes_writers). */
int ledger_store_prepare(struct ledger_store *store, const char *sql,
                         struct ledger_store_stmt **out_stmt);

/* Bind parameter i (1-based). Text and blobs are copied. A NULL blob binds
 * SQL NULL. Errors: INVALID_ARG (index), NOMEM, TOO_LARGE. */
int ledger_store_bind_text(struct ledger_store_stmt *st, int i, const char *s);
int ledger_store_bind_blob(struct ledger_store_stmt *st, int i, const void *p, size_t n);
int ledger_store_bind_i64(struct ledger_store_stmt *st, int i, int64_t v);
int ledger_store_bind_null(struct ledger_store_stmt *st, int i);

/*
 * Run (first call) or advance. *out_row = 1 with a row to read, 0 when done.
 * Errors: as the module's list; the statement must then be reset.
 */
int ledger_store_step(struct ledger_store_stmt *st, int *out_row);

/* Rows the last INSERT/UPDATE/DELETE of this statement changed. */
uint64_t ledger_store_changes(const struct ledger_store_stmt *st);

/* Finalize one statement now (else the store does at close). NULL: no-op. */
void ledger_store_finalize(struct ledger_store_stmt *st);

/* Forget results and bindings; the statement can run again. */
void ledger_store_reset(struct ledger_store_stmt *st);

/* The storage class of a value (SQLite's dynamic type; on PostgreSQL the
 * column's declared type). */
enum ledger_store_type {
    LEDGER_STORE_NULL = 0,
    LEDGER_STORE_INTEGER = 1,
    LEDGER_STORE_TEXT = 2,
    LEDGER_STORE_BLOB = 3,
    LEDGER_STORE_OTHER = 4,
};

/* Column accessors (0-based) on the current row. */
enum ledger_store_type ledger_store_col_type(struct ledger_store_stmt *st, int i);
int ledger_store_col_is_null(struct ledger_store_stmt *st, int i);
int64_t ledger_store_col_i64(struct ledger_store_stmt *st, int i);
/* Text and blobs: bytes + length, NUL-terminated after the length on both
 * engines (libpq terminates every value); SQL NULL -> (NULL, 0). */
const char *ledger_store_col_text(struct ledger_store_stmt *st, int i, size_t *out_len);
const void *ledger_store_col_blob(struct ledger_store_stmt *st, int i, size_t *out_len);

/*
 * The SQLite backend around a handle the caller opened and configured (the
 * ledger identifies and migrates the file with SQLite's pragmas first); the
 * store takes ownership and closes it. ledger_store_sqlite_db() hands it
 * back for SQLite-only duties (WAL checkpoints); NULL on PostgreSQL.
 * Both are declared with void * so this header needs no sqlite3.h.
 */
int ledger_store_sqlite_wrap(void *sqlite3_db, struct ledger_store **out_store);
void *ledger_store_sqlite_db(struct ledger_store *store);

#endif
