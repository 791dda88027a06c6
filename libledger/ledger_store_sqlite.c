/*
 * ledger_store_sqlite — the embedded backend of ledger_store.h: one SQLite
 * file, WAL, synchronous=FULL, foreign keys, a busy timeout. Several
 * processes may open the file; a write transaction is BEGIN IMMEDIATE, so
 * writers queue on SQLite's one write lock.
 *
 * Within one process, writers first queue on a mutex per file (the writer
 * gate below): SQLite's busy handler sleeps and polls, so threads of one
 * agent that met at the write lock would wake late; on the mutex the next one
 * runs as soon as the holder ends its transaction. Other processes still meet
 * at SQLite's lock.
 */
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sqlite3.h>
#include <sys/stat.h>
#include <time.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "ledger_store_int.h"
#include "nu_err.h"
#include "nu_log.h"

#define LSS_BUSY_TIMEOUT_MS 10000

/* One per file this process has open (by device and inode). */
struct lss_gate {
    dev_t dev;
    ino_t ino;
    unsigned refs;
    pthread_mutex_t mu;
    struct lss_gate *next;
};

struct lss_store {
    struct ledger_store base;
    sqlite3 *db;
    struct lss_gate *gate; /* NULL when the file has no inode (":memory:") */
    int gate_held;         /* this connection's write transaction holds it */
    unsigned lock_ms;      /* how long a writer waits, at the gate and in SQLite */
};

/*
 * The gates of the process. Process-wide on purpose: SQLite's own POSIX locks
 * belong to the process and file, not to a connection, and every connection
 * of this process to the file must queue on the same gate.
 */
static pthread_mutex_t lss__gates_mu = PTHREAD_MUTEX_INITIALIZER;
static struct lss_gate *lss__gates;

static void lss__gate_attach(struct lss_store *s)
{
    const char *path = sqlite3_db_filename(s->db, "main");
    struct stat sb;

    s->lock_ms = LSS_BUSY_TIMEOUT_MS;
    if (!path || !*path || stat(path, &sb) != 0)
        return;
    pthread_mutex_lock(&lss__gates_mu);
    struct lss_gate *g = lss__gates;
    while (g && (g->dev != sb.st_dev || g->ino != sb.st_ino))
        g = g->next;
    if (!g && (g = calloc(1, sizeof *g)) != NULL) {
        g->dev = sb.st_dev;
        g->ino = sb.st_ino;
        pthread_mutex_init(&g->mu, NULL);
        g->next = lss__gates;
        lss__gates = g;
    }
    if (g)
        g->refs++;
    s->gate = g; /* no memory: no gate, SQLite's lock still serializes */
    pthread_mutex_unlock(&lss__gates_mu);
}

static void lss__gate_detach(struct lss_store *s)
{
    if (!s->gate)
        return;
    pthread_mutex_lock(&lss__gates_mu);
    if (--s->gate->refs == 0) {
        struct lss_gate **pp = &lss__gates;
        while (*pp != s->gate)
            pp = &(*pp)->next;
        *pp = s->gate->next;
        pthread_mutex_destroy(&s->gate->mu);
        free(s->gate);
    }
    pthread_mutex_unlock(&lss__gates_mu);
    s->gate = NULL;
}

/* Wait for the gate at most lock_ms, as SQLite would for its lock: BUSY after. */
static int lss__gate_take(struct lss_store *s)
{
    struct timespec until;

    if (!s->gate || s->gate_held)
        return NU_OK;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += (time_t)(s->lock_ms / 1000u);
    until.tv_nsec += (long)(s->lock_ms % 1000u) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    int rc = pthread_mutex_timedlock(&s->gate->mu, &until);
    if (rc == ETIMEDOUT) {
        nu_debug("ledger store: another writer of this process held the file %u ms", s->lock_ms);
        return NU_ERR_BUSY;
    }
    if (rc != 0)
        return NU_ERR_DB;
    s->gate_held = 1;
    return NU_OK;
}

static void lss__gate_drop(struct lss_store *s)
{
    if (s->gate_held && sqlite3_get_autocommit(s->db)) {
        s->gate_held = 0;
        pthread_mutex_unlock(&s->gate->mu);
    }
}

struct lss_stmt {
    struct ledger_store_stmt base;
    sqlite3_stmt *st;
    uint64_t changes;
};

static sqlite3 *lss__db(const struct ledger_store *s)
{
    return ((const struct lss_store *)s)->db;
}

/* Map an SQLite result at the boundary and log the original. */
static int lss__err(sqlite3 *db, int rc, const char *what)
{
    int ext = db ? sqlite3_extended_errcode(db) : rc;
    enum nu_log_level level = (rc & 0xff) == SQLITE_BUSY ? NU_LOG_DEBUG : NU_LOG_WARN;

    nu_log(level, "ledger store: %s: %s (sqlite %d)", what,
           db ? sqlite3_errmsg(db) : sqlite3_errstr(rc), ext);
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
    case SQLITE_AUTH:
    case SQLITE_PERM:
        return NU_ERR_PERMISSION;
    case SQLITE_CONSTRAINT:
        if (ext == SQLITE_CONSTRAINT_PRIMARYKEY || ext == SQLITE_CONSTRAINT_UNIQUE)
            return NU_ERR_EXISTS;
        return NU_ERR_DB;
    default:
        return NU_ERR_DB;
    }
}

static int lss__exec(struct ledger_store *s, const char *sql)
{
    int rc = sqlite3_exec(lss__db(s), sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? NU_OK : lss__err(lss__db(s), rc, sql);
}

static void lss__close(struct ledger_store *bs)
{
    struct lss_store *s = (struct lss_store *)bs;
    if (s->gate_held) {
        s->gate_held = 0;
        pthread_mutex_unlock(&s->gate->mu);
    }
    lss__gate_detach(s);
    sqlite3_close(s->db);
    free(s);
}

static int lss__open(const char *path, const char *password_file, struct ledger_store **out)
{
    struct lss_store *s = calloc(1, sizeof *s);
    int rc;

    (void)password_file;
    if (!s)
        return NU_ERR_NOMEM;
    s->base.ops = &ledger_store_sqlite_ops;
    /* Created 0600 before SQLite sees it: SQLite would use the umask. */
    int fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) {
        nu_warn("ledger store: cannot open %s", path);
        free(s);
        return NU_ERR_IO;
    }
    close(fd);
    rc = sqlite3_open_v2(path, &s->db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_FULLMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = lss__err(s->db, rc, "open");
        sqlite3_close(s->db);
        free(s);
        return rc;
    }
    sqlite3_busy_timeout(s->db, LSS_BUSY_TIMEOUT_MS);
    lss__gate_attach(s);
    rc = lss__exec(&s->base, "PRAGMA journal_mode=WAL; PRAGMA synchronous=FULL;"
                             " PRAGMA foreign_keys=ON;");
    if (rc != NU_OK) {
        lss__close(&s->base);
        return rc;
    }
    *out = &s->base;
    return NU_OK;
}

static const char *lss__errmsg(const struct ledger_store *s)
{
    return sqlite3_errmsg(lss__db(s));
}

static int lss__begin(struct ledger_store *bs, int write)
{
    struct lss_store *s = (struct lss_store *)bs;
    int rc = write ? lss__gate_take(s) : NU_OK;
    if (rc == NU_OK)
        rc = lss__exec(bs, write ? "BEGIN IMMEDIATE" : "BEGIN");
    lss__gate_drop(s); /* only when no transaction is open (BEGIN failed) */
    return rc;
}

static int lss__in_txn(const struct ledger_store *s)
{
    return !sqlite3_get_autocommit(lss__db(s));
}

static void lss__rollback(struct ledger_store *s)
{
    if (lss__in_txn(s))
        (void)lss__exec(s, "ROLLBACK");
    lss__gate_drop((struct lss_store *)s);
}

static int lss__commit(struct ledger_store *s)
{
    int rc = lss__exec(s, "COMMIT");
    if (rc != NU_OK && lss__in_txn(s))
        lss__rollback(s);
    lss__gate_drop((struct lss_store *)s);
    return rc;
}

/* SQLite's busy timeout and the gate's wait, together. */
static int lss__set_lock_timeout(struct ledger_store *bs, unsigned ms)
{
    struct lss_store *s = (struct lss_store *)bs;
    if (ms > INT32_MAX)
        return NU_ERR_INVALID_ARG;
    sqlite3_busy_timeout(s->db, (int)ms);
    s->lock_ms = ms;
    return NU_OK;
}

/* Copy the WAL into the main file without waiting for anyone (PASSIVE:
 * writers and readers go on). */
static int lss__maintain(struct ledger_store *s)
{
    int rc = sqlite3_wal_checkpoint_v2(lss__db(s), NULL, SQLITE_CHECKPOINT_PASSIVE, NULL, NULL);
    return rc == SQLITE_OK ? NU_OK : lss__err(lss__db(s), rc, "wal checkpoint");
}

/* A commit that fills the WAL past 1000 pages (SQLite's default) checkpoints
 * it, making that one request wait; off, only lss__maintain does. */
static int lss__set_inline_maintenance(struct ledger_store *s, int on)
{
    int rc = sqlite3_wal_autocheckpoint(lss__db(s), on ? 1000 : 0);
    return rc == SQLITE_OK ? NU_OK : lss__err(lss__db(s), rc, "wal autocheckpoint");
}

/* One file, one write lock: BEGIN IMMEDIATE already serializes writers. */
static int lss__xact_lock(struct ledger_store *s, int64_t id)
{
    (void)s;
    (void)id;
    return NU_OK;
}

static int lss__session_lock(struct ledger_store *s, int64_t id, int *out_held)
{
    (void)s;
    (void)id;
    *out_held = 1;
    return NU_OK;
}

static int lss__prepare(struct ledger_store *s, const char *sql, struct ledger_store_stmt **out)
{
    struct lss_stmt *st = calloc(1, sizeof *st);
    if (!st)
        return NU_ERR_NOMEM;
    /* A trailing row-lock clause is PostgreSQL's; one writer holds the file here. */
    const char *lock = strstr(sql, " FOR UPDATE");
    int len = lock && !strchr(lock, ';') ? (int)(lock - sql) : -1;
    int rc = sqlite3_prepare_v3(lss__db(s), sql, len, SQLITE_PREPARE_PERSISTENT, &st->st, NULL);
    if (rc != SQLITE_OK) {
        free(st);
        return lss__err(lss__db(s), rc, "prepare");
    }
    ledger_store__adopt(s, &st->base);
    *out = &st->base;
    return NU_OK;
}

static void lss__finalize(struct ledger_store_stmt *st)
{
    sqlite3_finalize(((struct lss_stmt *)st)->st);
    free(st);
}

static int lss__bind(struct ledger_store_stmt *bst, int i, enum ledger_store_vtype t, int64_t v,
                     const void *p, size_t n)
{
    sqlite3_stmt *st = ((struct lss_stmt *)bst)->st;
    int rc;

    if (n > INT32_MAX)
        return NU_ERR_TOO_LARGE;
    switch (t) {
    case LSV_I64: rc = sqlite3_bind_int64(st, i, v); break;
    case LSV_TEXT: rc = sqlite3_bind_text(st, i, p, (int)n, SQLITE_TRANSIENT); break;
    case LSV_BLOB: rc = sqlite3_bind_blob(st, i, n ? p : "", (int)n, SQLITE_TRANSIENT); break;
    default: rc = sqlite3_bind_null(st, i); break;
    }
    if (rc == SQLITE_RANGE)
        return NU_ERR_INVALID_ARG;
    return rc == SQLITE_OK ? NU_OK : lss__err(lss__db(bst->store), rc, "bind");
}

static int lss__step(struct ledger_store_stmt *bst, int *out_row)
{
    struct lss_stmt *st = (struct lss_stmt *)bst;
    int rc = sqlite3_step(st->st);
    if (rc == SQLITE_ROW) {
        *out_row = 1;
        return NU_OK;
    }
    if (rc == SQLITE_DONE) {
        st->changes = (uint64_t)sqlite3_changes64(lss__db(bst->store));
        return NU_OK;
    }
    return lss__err(lss__db(bst->store), rc, "step");
}

static uint64_t lss__changes(const struct ledger_store_stmt *bst)
{
    return ((const struct lss_stmt *)bst)->changes;
}

static void lss__reset(struct ledger_store_stmt *bst)
{
    struct lss_stmt *st = (struct lss_stmt *)bst;
    sqlite3_reset(st->st);
    sqlite3_clear_bindings(st->st);
}

static int lss__col_is_null(struct ledger_store_stmt *bst, int i)
{
    return sqlite3_column_type(((struct lss_stmt *)bst)->st, i) == SQLITE_NULL;
}

static enum ledger_store_type lss__col_type(struct ledger_store_stmt *bst, int i)
{
    switch (sqlite3_column_type(((struct lss_stmt *)bst)->st, i)) {
    case SQLITE_NULL: return LEDGER_STORE_NULL;
    case SQLITE_INTEGER: return LEDGER_STORE_INTEGER;
    case SQLITE_TEXT: return LEDGER_STORE_TEXT;
    case SQLITE_BLOB: return LEDGER_STORE_BLOB;
    default: return LEDGER_STORE_OTHER;
    }
}

static int64_t lss__col_i64(struct ledger_store_stmt *bst, int i)
{
    return sqlite3_column_int64(((struct lss_stmt *)bst)->st, i);
}

static const void *lss__col_bytes(struct ledger_store_stmt *bst, int i, int text, size_t *out_len)
{
    sqlite3_stmt *st = ((struct lss_stmt *)bst)->st;
    const void *p = text ? (const void *)sqlite3_column_text(st, i) : sqlite3_column_blob(st, i);
    int n = sqlite3_column_bytes(st, i);
    *out_len = p && n > 0 ? (size_t)n : 0;
    return p;
}

int ledger_store_sqlite_wrap(void *sqlite3_db, struct ledger_store **out_store)
{
    struct lss_store *s;
    if (!sqlite3_db || !out_store)
        return NU_ERR_INVALID_ARG;
    if (!(s = calloc(1, sizeof *s)))
        return NU_ERR_NOMEM;
    s->base.ops = &ledger_store_sqlite_ops;
    s->db = sqlite3_db;
    lss__gate_attach(s);
    *out_store = &s->base;
    return NU_OK;
}

void *ledger_store_sqlite_db(struct ledger_store *store)
{
    if (!store || store->ops != &ledger_store_sqlite_ops)
        return NULL;
    return lss__db(store);
}

const struct ledger_store_ops ledger_store_sqlite_ops = {
    .kind = LEDGER_STORE_SQLITE,
    .open = lss__open,
    .close = lss__close,
    .errmsg = lss__errmsg,
    .exec = lss__exec,
    .begin = lss__begin,
    .commit = lss__commit,
    .rollback = lss__rollback,
    .in_txn = lss__in_txn,
    .xact_lock = lss__xact_lock,
    .session_lock = lss__session_lock,
    .prepare = lss__prepare,
    .finalize = lss__finalize,
    .bind = lss__bind,
    .step = lss__step,
    .changes = lss__changes,
    .reset = lss__reset,
    .col_is_null = lss__col_is_null,
    .col_type = lss__col_type,
    .col_i64 = lss__col_i64,
    .col_bytes = lss__col_bytes,
    .set_lock_timeout = lss__set_lock_timeout,
    .maintain = lss__maintain,
    .set_inline_maintenance = lss__set_inline_maintenance,
};
