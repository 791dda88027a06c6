/*
 * ledger_store_pg — the PostgreSQL backend of ledger_store.h (libpq).
 *
 * Transactions are READ COMMITTED for writes (rows are locked by the
 * statements: FOR UPDATE, conditional UPDATEs, advisory locks) and
 * REPEATABLE READ READ ONLY for reads (one snapshot). Statements are
 * prepared lazily on the connection, once per connection generation: after a
 * lost connection, begin resets it and every statement is prepared again.
 * Parameters go as text (integers, text) or binary (bytea); results come
 * back binary, so bytea needs no unescaping. Issuance runs its write
 * transaction in libpq pipeline mode (ledger_store_pipeline, below).
 */
#if NUSEC_HAVE_LIBPQ
#include <errno.h>
#include <fcntl.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ledger_store_int.h"
#include "nu_err.h"
#include "nu_log.h"

#define LSP_PARAMS_MAX 32
#define LSP_PASSWORD_MAX 256

/* Type OIDs of pg_type.h (stable since PostgreSQL 7). */
#define LSP_BOOLOID 16
#define LSP_INT8OID 20
#define LSP_INT2OID 21
#define LSP_INT4OID 23
#define LSP_BYTEAOID 17

struct lsp_store {
    struct ledger_store base;
    PGconn *conn;
    unsigned gen;   /* bumped on every reconnect: statements re-prepare */
    unsigned names; /* statement name counter */
    char err[256];
    /* A RELEASE SAVEPOINT not sent yet: it rides in the same round trip as
     * the next simple command (the next request's SAVEPOINT, the COMMIT),
     * else goes alone before any other statement (lsp__flush). */
    char deferred[64];
    /* Pipeline mode (ledger_store_pipeline, write transactions only): what
     * was sent and not read back yet, oldest first. A failure read back is
     * kept in `perr` until the transaction (or savepoint) is rolled back. */
    int pipe;
    struct lsp_pend *q;
    size_t qhead, qlen, qcap;
    int unsynced; /* something sent since the last Sync */
    int perr;
};

/* One command sent in pipeline mode: its result goes to `st` (a read that
 * will be stepped), or is only checked (a queued write: the row count must
 * equal `expect` when >= 0; a transaction command; a Sync). */
enum lsp_pend_kind { LSP_P_QUERY, LSP_P_SYNC, LSP_P_COMMIT };
struct lsp_pend {
    struct lsp_stmt *st;
    int64_t expect;
    enum lsp_pend_kind kind;
};

struct lsp_stmt {
    struct ledger_store_stmt base;
    char *sql; /* with $N placeholders */
    char name[24];
    unsigned gen; /* the connection generation it was prepared on, 0 = never */
    int nparams;
    char *val[LSP_PARAMS_MAX];
    int len[LSP_PARAMS_MAX];
    int fmt[LSP_PARAMS_MAX];
    PGresult *res;
    int row;    /* the current row, -1 before the first step */
    int nrows;
    uint64_t changes;
    int sent;  /* pipeline mode: sent, its result not read back yet */
    int rc;    /* pipeline mode: the outcome read back for it */
};

static struct lsp_store *lsp__s(const struct ledger_store *s)
{
    return (struct lsp_store *)s;
}

static void lsp__msg(struct lsp_store *s, const char *m)
{
    snprintf(s->err, sizeof s->err, "%s", m ? m : "");
    size_t n = strlen(s->err);
    while (n && (s->err[n - 1] == '\n' || s->err[n - 1] == ' '))
        s->err[--n] = '\0';
}

/* Map a failed result (or a dead connection) at the boundary; log it. */
static int lsp__err(struct lsp_store *s, const PGresult *res, const char *what)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    int rc = NU_ERR_DB;

    lsp__msg(s, res ? PQresultErrorMessage(res) : PQerrorMessage(s->conn));
    if (PQstatus(s->conn) != CONNECTION_OK || !state)
        rc = NU_ERR_CONNECTION;
    else if (!strncmp(state, "08", 2) || !strcmp(state, "57P01") || !strcmp(state, "57P02") ||
             !strcmp(state, "57P03") || !strcmp(state, "25006"))
        rc = NU_ERR_CONNECTION; /* gone, shutting down, or now a read-only standby */
    else if (!strcmp(state, "40001") || !strcmp(state, "40P01") || !strcmp(state, "55P03"))
        rc = NU_ERR_BUSY;
    else if (!strcmp(state, "23505"))
        rc = NU_ERR_EXISTS;
    else if (!strcmp(state, "42501") || !strncmp(state, "28", 2))
        rc = NU_ERR_PERMISSION;
    else if (!strcmp(state, "53200"))
        rc = NU_ERR_NOMEM;
    nu_log(rc == NU_ERR_BUSY ? NU_LOG_DEBUG : NU_LOG_WARN, "ledger store: %s: %s (sqlstate %s)",
           what, s->err, state ? state : "none");
    return rc;
}

/* Run one parameterless command; COMMAND_OK or TUPLES_OK is success. */
static int lsp__unpipe(struct lsp_store *s);

static int lsp__exec_now(struct lsp_store *s, const char *sql)
{
    if (s->pipe) {
        int prc = lsp__unpipe(s); /* plain calls are refused in pipeline mode */
        if (prc != NU_OK)
            return prc;
    }
    PGresult *res = PQexec(s->conn, sql);
    ExecStatusType st = PQresultStatus(res);
    int rc = st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK
                 ? NU_OK
                 : lsp__err(s, res, strlen(sql) > 80 ? "schema statement" : sql);
    PQclear(res);
    return rc;
}

/* Send a deferred RELEASE alone, before a statement that cannot carry it. */
static int lsp__flush(struct lsp_store *s)
{
    char sql[sizeof s->deferred];
    if (!s->deferred[0])
        return NU_OK;
    memcpy(sql, s->deferred, sizeof sql);
    s->deferred[0] = '\0';
    return lsp__exec_now(s, sql);
}

/* ------------------------------------------------------------ pipeline mode
 *
 * Inside a write transaction the ledger may switch the connection to libpq's
 * pipeline mode: statements go out without waiting for their answers, and a
 * Sync + the answers are read only when a result is needed (a step of a
 * read, a flush, the commit). A batch of issuance then costs a few round
 * trips instead of one per statement. The server runs the commands in the
 * order sent, so a read sees every write queued before it; after a failure
 * it skips the rest up to the next Sync (PGRES_PIPELINE_ABORTED) and the
 * transaction is aborted: the first failure is kept in `perr`.
 */

/* Room for one more pending command (before sending it, so a failed
 * allocation never leaves a command on the wire without its entry). */
static int lsp__reserve(struct lsp_store *s)
{
    if (s->qhead + s->qlen < s->qcap)
        return NU_OK;
    if (s->qhead) {
        memmove(s->q, s->q + s->qhead, s->qlen * sizeof *s->q);
        s->qhead = 0;
        return NU_OK;
    }
    size_t cap = s->qcap ? s->qcap * 2 : 64;
    struct lsp_pend *q = realloc(s->q, cap * sizeof *q);
    if (!q)
        return NU_ERR_NOMEM;
    s->q = q;
    s->qcap = cap;
    return NU_OK;
}

static void lsp__push(struct lsp_store *s, struct lsp_stmt *st, int64_t expect,
                      enum lsp_pend_kind kind)
{
    s->q[s->qhead + s->qlen++] = (struct lsp_pend){st, expect, kind};
    if (st) {
        st->sent = 1;
        st->rc = NU_OK;
    }
    s->unsynced = kind != LSP_P_SYNC;
}

static int lsp__fail(struct lsp_store *s, int rc)
{
    if (!s->perr)
        s->perr = rc;
    return rc;
}

/* Forget everything pending (the connection is gone). */
static void lsp__abandon(struct lsp_store *s)
{
    for (size_t i = 0; i < s->qlen; i++) {
        struct lsp_stmt *st = s->q[s->qhead + i].st;
        if (st) {
            st->sent = 0;
            st->rc = NU_ERR_CONNECTION;
        }
    }
    s->qhead = s->qlen = 0;
    s->unsynced = 0;
    s->pipe = 0;
}

/* Send a parameterless command (BEGIN-less transaction control, savepoints)
 * or one with text parameters, its result only checked. */
static int lsp__send_cmd(struct lsp_store *s, const char *sql, int n, const char *const *vals,
                         enum lsp_pend_kind kind)
{
    if (s->perr)
        return s->perr;
    if (lsp__reserve(s) != NU_OK)
        return lsp__fail(s, NU_ERR_NOMEM);
    if (!PQsendQueryParams(s->conn, sql, n, NULL, vals, NULL, NULL, 0))
        return lsp__fail(s, lsp__err(s, NULL, sql));
    lsp__push(s, NULL, -1, kind);
    return NU_OK;
}

/* Send a prepared statement; `keep`: its result is read by a later step,
 * else it is only checked (row count `expect` when >= 0). */
static int lsp__send_stmt(struct lsp_store *s, struct lsp_stmt *st, int keep, int64_t expect)
{
    if (s->perr)
        return s->perr;
    if (st->gen != s->gen) {
        if (lsp__reserve(s) != NU_OK)
            return lsp__fail(s, NU_ERR_NOMEM);
        if (!PQsendPrepare(s->conn, st->name, st->sql, st->nparams, NULL))
            return lsp__fail(s, lsp__err(s, NULL, "prepare"));
        lsp__push(s, NULL, -1, LSP_P_QUERY);
        st->gen = s->gen;
    }
    if (lsp__reserve(s) != NU_OK)
        return lsp__fail(s, NU_ERR_NOMEM);
    if (!PQsendQueryPrepared(s->conn, st->name, st->nparams, (const char *const *)st->val,
                             st->len, st->fmt, 1))
        return lsp__fail(s, lsp__err(s, NULL, "send"));
    lsp__push(s, keep ? st : NULL, expect, LSP_P_QUERY);
    return NU_OK;
}

static int lsp__sync(struct lsp_store *s)
{
    if (!s->unsynced)
        return NU_OK;
    if (lsp__reserve(s) != NU_OK)
        return lsp__fail(s, NU_ERR_NOMEM);
    if (!PQpipelineSync(s->conn)) {
        int rc = lsp__err(s, NULL, "pipeline sync");
        lsp__abandon(s);
        s->pipe = 1; /* still in pipeline mode as far as libpq knows */
        return lsp__fail(s, rc);
    }
    lsp__push(s, NULL, -1, LSP_P_SYNC);
    return NU_OK;
}

/* The outcome of one answered command: NU_OK or the mapped error. */
static int lsp__answer(struct lsp_store *s, const struct lsp_pend *p, PGresult *res)
{
    ExecStatusType es = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
    uint64_t changes;

    if (p->kind == LSP_P_SYNC)
        return es == PGRES_PIPELINE_SYNC ? NU_OK : lsp__err(s, res, "pipeline sync");
    if (es == PGRES_PIPELINE_ABORTED)
        return s->perr ? s->perr : NU_ERR_DB;
    if (es != PGRES_TUPLES_OK && es != PGRES_COMMAND_OK)
        return lsp__err(s, res, "pipelined statement");
    changes = strtoull(PQcmdTuples(res), NULL, 10);
    if (p->kind == LSP_P_COMMIT && strcmp(PQcmdStatus(res), "COMMIT") != 0) {
        lsp__msg(s, "commit of a failed transaction");
        return NU_ERR_DB;
    }
    if (p->expect >= 0 && changes != (uint64_t)p->expect) {
        snprintf(s->err, sizeof s->err, "a queued statement changed %llu rows, not %lld",
                 (unsigned long long)changes, (long long)p->expect);
        nu_warn("ledger store: %s", s->err);
        return NU_ERR_INTERNAL;
    }
    if (p->st) {
        p->st->nrows = es == PGRES_TUPLES_OK ? PQntuples(res) : 0;
        p->st->changes = changes;
    }
    return NU_OK;
}

/* Read back the oldest pending command. */
static void lsp__recv_one(struct lsp_store *s)
{
    struct lsp_pend p = s->q[s->qhead];
    PGresult *res, *more;
    int rc;

    s->qhead++;
    if (!--s->qlen)
        s->qhead = 0;
    if (PQstatus(s->conn) != CONNECTION_OK) {
        rc = lsp__err(s, NULL, "pipeline");
    } else {
        res = PQgetResult(s->conn);
        rc = lsp__answer(s, &p, res);
        /* Every command's results end with NULL; a Sync's has none. */
        if (res && p.kind != LSP_P_SYNC)
            while ((more = PQgetResult(s->conn)))
                PQclear(more);
        if (p.st && rc == NU_OK)
            p.st->res = res;
        else
            PQclear(res);
    }
    if (p.st) {
        p.st->sent = 0;
        p.st->rc = rc;
    }
    if (rc != NU_OK)
        lsp__fail(s, rc);
}

/* Wait for `st`'s answer (NULL: for everything sent). Returns its outcome,
 * or for NULL the first failure of the transaction. */
static int lsp__wait(struct lsp_store *s, struct lsp_stmt *st)
{
    int rc = lsp__sync(s);
    if (rc != NU_OK && !s->qlen)
        return rc;
    while (s->qlen && (!st || st->sent))
        lsp__recv_one(s);
    if (PQstatus(s->conn) != CONNECTION_OK)
        lsp__abandon(s);
    return st ? st->rc : s->perr;
}

/* Leave pipeline mode: wait for every answer, then back to plain calls.
 * Returns the first failure of the pipelined part (kept until rollback). */
static int lsp__unpipe(struct lsp_store *s)
{
    int rc;
    if (!s->pipe)
        return NU_OK;
    rc = lsp__wait(s, NULL);
    if (s->pipe && PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF && !PQexitPipelineMode(s->conn))
        rc = lsp__fail(s, lsp__err(s, NULL, "exit pipeline mode"));
    s->pipe = 0;
    return rc;
}

static int lsp__pipeline(struct ledger_store *bs, int on)
{
    struct lsp_store *s = lsp__s(bs);
    int rc;
    if (!on)
        return lsp__unpipe(s);
    if (s->pipe)
        return NU_OK;
    if (PQtransactionStatus(s->conn) != PQTRANS_INTRANS)
        return NU_ERR_INVALID_ARG; /* only inside a healthy transaction */
    if ((rc = lsp__flush(s)) != NU_OK)
        return rc;
    if (!PQenterPipelineMode(s->conn))
        return lsp__err(s, NULL, "enter pipeline mode");
    s->pipe = 1;
    s->perr = NU_OK;
    return NU_OK;
}

static int lsp__send(struct ledger_store_stmt *bst)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    struct lsp_store *s = lsp__s(bst->store);
    if (!s->pipe || st->sent || st->res)
        return NU_OK;
    return lsp__send_stmt(s, st, 1, -1);
}

/* A write nobody reads rows of: sent now, checked at the next wait. */
static int lsp__queue(struct ledger_store_stmt *bst, int64_t expect)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    struct lsp_store *s = lsp__s(bst->store);
    return lsp__send_stmt(s, st, 0, expect);
}

static int lsp__flush_pipe(struct ledger_store *bs)
{
    struct lsp_store *s = lsp__s(bs);
    return s->pipe ? lsp__wait(s, NULL) : NU_OK;
}

static int lsp__piped(const struct ledger_store *bs)
{
    return lsp__s(bs)->pipe;
}

static int lsp__exec(struct ledger_store *bs, const char *sql)
{
    struct lsp_store *s = lsp__s(bs);
    size_t n = strlen(sql), d = strlen(s->deferred);
    if (s->pipe && !strncmp(sql, "ROLLBACK TO ", 12)) {
        /* Read up to a Sync past the failure, then undo to the savepoint:
         * the transaction is usable again. */
        (void)lsp__wait(s, NULL);
        s->perr = NU_OK;
        int rc = lsp__send_cmd(s, sql, 0, NULL, LSP_P_QUERY);
        return rc == NU_OK ? lsp__wait(s, NULL) : rc;
    }
    if (s->pipe && strcmp(sql, "ROLLBACK") != 0 && !strchr(sql, ';'))
        return lsp__send_cmd(s, sql, 0, NULL, LSP_P_QUERY);
    if (!strncmp(sql, "RELEASE SAVEPOINT ", 18) && !d && n < sizeof s->deferred &&
        PQtransactionStatus(s->conn) == PQTRANS_INTRANS) {
        memcpy(s->deferred, sql, n + 1);
        return NU_OK;
    }
    if (!d || !strcmp(sql, "ROLLBACK")) { /* ROLLBACK drops a pending release with the rest */
        s->deferred[0] = '\0';
        return lsp__exec_now(s, sql);
    }
    /* "RELEASE SAVEPOINT a; SQL": one round trip; a failure stops at once. */
    char *both = malloc(d + 2 + n + 1);
    if (!both)
        return NU_ERR_NOMEM;
    memcpy(both, s->deferred, d);
    memcpy(both + d, "; ", 2);
    memcpy(both + d + 2, sql, n + 1);
    s->deferred[0] = '\0';
    int rc = lsp__exec_now(s, both);
    free(both);
    return rc;
}

/* The password from a 0600 (or stricter) regular file, first line. */
static int lsp__read_password(const char *path, char *out, size_t cap)
{
    struct stat sb;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    ssize_t n;

    if (fd < 0) {
        nu_error("ledger store: cannot open password file %s: %s", path, strerror(errno));
        return NU_ERR_IO;
    }
    if (fstat(fd, &sb) != 0 || !S_ISREG(sb.st_mode) || (sb.st_mode & 077)) {
        nu_error("ledger store: password file %s must be a regular file of mode 0600", path);
        close(fd);
        return NU_ERR_PERMISSION;
    }
    n = read(fd, out, cap - 1);
    close(fd);
    if (n <= 0)
        return NU_ERR_CONFIG;
    out[n] = '\0';
    out[strcspn(out, "\r\n")] = '\0';
    return out[0] ? NU_OK : NU_ERR_CONFIG;
}

/* A password written into the URI would sit in cloud.conf: refused. */
static int lsp__uri_check(const char *uri)
{
    char *errmsg = NULL;
    PQconninfoOption *opts = PQconninfoParse(uri, &errmsg);
    int rc = NU_OK;

    if (!opts) {
        nu_error("ledger store: bad PostgreSQL URI: %s", errmsg ? errmsg : "out of memory");
        PQfreemem(errmsg);
        return NU_ERR_INVALID_ARG;
    }
    for (PQconninfoOption *o = opts; o->keyword; o++)
        if (!strcmp(o->keyword, "password") && o->val && *o->val) {
            nu_error("ledger store: the URI holds a password; use ledger_password_file or "
                     "PGPASSFILE (a 0600 file) instead");
            rc = NU_ERR_INVALID_ARG;
        }
    PQconninfoFree(opts);
    return rc;
}

static int lsp__connect_err(struct lsp_store *s)
{
    const char *m = PQerrorMessage(s->conn);
    lsp__msg(s, m);
    if (PQconnectionNeedsPassword(s->conn) || strstr(m, "password authentication failed") ||
        strstr(m, "no password supplied") || strstr(m, "role \"")) {
        nu_error("ledger store: PostgreSQL refused the credentials: %s", s->err);
        return NU_ERR_PERMISSION;
    }
    nu_error("ledger store: cannot reach PostgreSQL: %s", s->err);
    return NU_ERR_CONNECTION;
}

static void lsp__close(struct ledger_store *bs)
{
    struct lsp_store *s = lsp__s(bs);
    PQfinish(s->conn);
    free(s->q);
    free(s);
}

static int lsp__open(const char *uri, const char *password_file, struct ledger_store **out)
{
    char pw[LSP_PASSWORD_MAX];
    const char *keys[4] = {"dbname", "application_name", NULL, NULL};
    const char *vals[4] = {uri, "nusec-cloud", NULL, NULL};
    struct lsp_store *s;
    int rc = lsp__uri_check(uri);

    if (rc != NU_OK)
        return rc;
    if (password_file && *password_file) {
        if ((rc = lsp__read_password(password_file, pw, sizeof pw)) != NU_OK)
            return rc;
        keys[2] = "password";
        vals[2] = pw;
    }
    if (!(s = calloc(1, sizeof *s))) {
        explicit_bzero(pw, sizeof pw);
        return NU_ERR_NOMEM;
    }
    s->base.ops = &ledger_store_pg_ops;
    s->gen = 1;
    s->conn = PQconnectdbParams(keys, vals, 1);
    explicit_bzero(pw, sizeof pw);
    if (!s->conn) {
        free(s);
        return NU_ERR_NOMEM;
    }
    if (PQstatus(s->conn) != CONNECTION_OK) {
        rc = lsp__connect_err(s);
        lsp__close(&s->base);
        return rc;
    }
    /* Timestamps are ours (passed in); keep the session's own settings plain. */
    rc = lsp__exec(&s->base, "SET client_min_messages = warning");
    if (rc != NU_OK) {
        lsp__close(&s->base);
        return rc;
    }
    *out = &s->base;
    return NU_OK;
}

static const char *lsp__errmsg(const struct ledger_store *bs)
{
    return lsp__s(bs)->err;
}

static int lsp__in_txn(const struct ledger_store *bs)
{
    PGTransactionStatusType t = PQtransactionStatus(lsp__s(bs)->conn);
    return t == PQTRANS_INTRANS || t == PQTRANS_INERROR || t == PQTRANS_ACTIVE;
}

/* A lost connection is re-established here, between transactions only. */
static int lsp__ensure(struct lsp_store *s)
{
    if (PQstatus(s->conn) == CONNECTION_OK)
        return NU_OK;
    lsp__abandon(s);
    s->perr = NU_OK;
    PQreset(s->conn);
    if (PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF)
        (void)PQexitPipelineMode(s->conn);
    s->gen++;
    s->deferred[0] = '\0'; /* its transaction died with the connection */
    if (PQstatus(s->conn) != CONNECTION_OK)
        return lsp__connect_err(s);
    nu_info("ledger store: reconnected to PostgreSQL");
    return NU_OK;
}

static int lsp__begin(struct ledger_store *bs, int write)
{
    int rc = lsp__ensure(lsp__s(bs));
    if (rc != NU_OK)
        return rc;
    return lsp__exec(bs, write ? "BEGIN ISOLATION LEVEL READ COMMITTED"
                               : "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
}

static void lsp__rollback(struct ledger_store *bs)
{
    struct lsp_store *s = lsp__s(bs);
    (void)lsp__unpipe(s);
    s->perr = NU_OK;
    (void)lsp__exec(bs, "ROLLBACK");
}

static int lsp__commit(struct ledger_store *bs)
{
    struct lsp_store *s = lsp__s(bs);
    PGresult *res;
    int rc;

    if (s->pipe) {
        /* COMMIT rides behind everything queued; its answer is the last. */
        rc = s->perr ? s->perr : lsp__send_cmd(s, "COMMIT", 0, NULL, LSP_P_COMMIT);
        int w = lsp__unpipe(s);
        rc = rc != NU_OK ? rc : w;
        s->perr = NU_OK;
        if (rc != NU_OK && PQtransactionStatus(s->conn) == PQTRANS_INERROR)
            lsp__rollback(bs);
        return rc;
    }
    /* COMMIT of an aborted transaction "succeeds" as ROLLBACK: refuse it. */
    if (PQtransactionStatus(s->conn) == PQTRANS_INERROR) {
        lsp__rollback(bs);
        lsp__msg(s, "commit of a failed transaction");
        return NU_ERR_DB;
    }
    char sql[sizeof s->deferred + 16];
    snprintf(sql, sizeof sql, "%s%sCOMMIT", s->deferred, s->deferred[0] ? "; " : "");
    s->deferred[0] = '\0';
    res = PQexec(s->conn, sql);
    if (PQresultStatus(res) != PGRES_COMMAND_OK)
        rc = lsp__err(s, res, "COMMIT"); /* CONNECTION: in doubt; the caller sends nothing */
    else if (strcmp(PQcmdStatus(res), "COMMIT") != 0)
        rc = NU_ERR_DB;
    else
        rc = NU_OK;
    PQclear(res);
    return rc;
}

static int lsp__lock_query(struct lsp_store *s, const char *sql, int64_t id, int *out_bool)
{
    char v[24];
    const char *vals[1] = {v};
    PGresult *res;
    int rc = s->pipe ? lsp__unpipe(s) : NU_OK;

    if (rc == NU_OK)
        rc = lsp__flush(s);
    if (rc != NU_OK)
        return rc;

    snprintf(v, sizeof v, "%lld", (long long)id);
    res = PQexecParams(s->conn, sql, 1, NULL, vals, NULL, NULL, 0);
    if (PQresultStatus(res) != PGRES_TUPLES_OK)
        rc = lsp__err(s, res, sql);
    else if (out_bool)
        *out_bool = PQntuples(res) == 1 && !strcmp(PQgetvalue(res, 0, 0), "t");
    PQclear(res);
    return rc;
}

static int lsp__xact_lock(struct ledger_store *bs, int64_t id)
{
    struct lsp_store *s = lsp__s(bs);
    if (s->pipe) { /* queued: the lock is held before anything sent after it runs */
        char v[24];
        const char *vals[1] = {v};
        snprintf(v, sizeof v, "%lld", (long long)id);
        return lsp__send_cmd(s, "SELECT pg_advisory_xact_lock($1::bigint)", 1, vals,
                             LSP_P_QUERY);
    }
    return lsp__lock_query(lsp__s(bs), "SELECT pg_advisory_xact_lock($1::bigint)", id, NULL);
}

static int lsp__session_lock(struct ledger_store *bs, int64_t id, int *out_held)
{
    struct lsp_store *s = lsp__s(bs);
    int rc = lsp__ensure(s);
    if (rc != NU_OK)
        return rc;
    /* Confirm before taking: pg_try_advisory_lock on a lock this session
     * already holds stacks another count, and after a silent reconnect
     * (lsp__ensure) the lock is gone; pg_locks tells the truth either way.
     * CASE evaluates the try only when the lock is not ours. */
    return lsp__lock_query(s,
                           "SELECT CASE WHEN EXISTS (SELECT 1 FROM pg_locks"
                           " WHERE locktype = 'advisory' AND pid = pg_backend_pid() AND granted"
                           " AND objsubid = 1 AND ((classid::bigint << 32) | objid::bigint)"
                           " = $1::bigint) THEN true ELSE pg_try_advisory_lock($1::bigint) END",
                           id, out_held);
}

/* ?N -> $N outside string literals; returns the highest N or -1. */
static int lsp__rewrite(const char *in, char *out)
{
    int max = 0, quoted = 0;
    for (; *in; in++) {
        if (*in == '\'')
            quoted = !quoted;
        if (!quoted && *in == '?' && in[1] >= '1' && in[1] <= '9') {
            int n = (int)strtol(in + 1, NULL, 10);
            if (n > LSP_PARAMS_MAX)
                return -1;
            max = n > max ? n : max;
            *out++ = '$';
            continue;
        }
        if (!quoted && *in == '?')
            return -1; /* bare ? is not in our SQL subset */
        *out++ = *in;
    }
    *out = '\0';
    return max;
}

static int lsp__prepare(struct ledger_store *bs, const char *sql, struct ledger_store_stmt **out)
{
    struct lsp_store *s = lsp__s(bs);
    struct lsp_stmt *st = calloc(1, sizeof *st);

    if (!st || !(st->sql = malloc(strlen(sql) + 1))) {
        free(st);
        return NU_ERR_NOMEM;
    }
    st->nparams = lsp__rewrite(sql, st->sql);
    if (st->nparams < 0) {
        nu_warn("ledger store: unsupported placeholder in: %s", sql);
        free(st->sql);
        free(st);
        return NU_ERR_INVALID_ARG;
    }
    snprintf(st->name, sizeof st->name, "nu%u", ++s->names);
    st->row = -1;
    ledger_store__adopt(bs, &st->base);
    *out = &st->base;
    return NU_OK;
}

static void lsp__reset(struct ledger_store_stmt *bst)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    struct lsp_store *s = lsp__s(bst->store);
    /* Sent and not read back: its answer will be read and dropped. */
    for (size_t i = 0; st->sent && i < s->qlen; i++)
        if (s->q[s->qhead + i].st == st)
            s->q[s->qhead + i].st = NULL;
    st->sent = 0;
    st->rc = NU_OK;
    PQclear(st->res);
    st->res = NULL;
    st->row = -1;
    st->nrows = 0;
    for (int i = 0; i < st->nparams; i++) {
        free(st->val[i]);
        st->val[i] = NULL;
        st->len[i] = 0;
        st->fmt[i] = 0;
    }
}

static void lsp__finalize(struct ledger_store_stmt *bst)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    lsp__reset(bst);
    free(st->sql);
    free(st);
}

static int lsp__bind(struct ledger_store_stmt *bst, int i, enum ledger_store_vtype t, int64_t v,
                     const void *p, size_t n)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    char num[24];

    if (i < 1 || i > st->nparams)
        return NU_ERR_INVALID_ARG;
    if (n > INT32_MAX / 2)
        return NU_ERR_TOO_LARGE;
    free(st->val[i - 1]);
    st->val[i - 1] = NULL;
    st->len[i - 1] = 0;
    st->fmt[i - 1] = t == LSV_BLOB;
    if (t == LSV_NULL)
        return NU_OK;
    if (t == LSV_I64) {
        n = (size_t)snprintf(num, sizeof num, "%lld", (long long)v);
        p = num;
    }
    if (!(st->val[i - 1] = malloc(n + 1)))
        return NU_ERR_NOMEM;
    if (n)
        memcpy(st->val[i - 1], p, n);
    st->val[i - 1][n] = '\0';
    st->len[i - 1] = (int)n;
    return NU_OK;
}

static int lsp__run(struct lsp_stmt *st)
{
    struct lsp_store *s = lsp__s(st->base.store);
    PGresult *res;
    ExecStatusType es;
    int frc = lsp__flush(s);

    if (frc != NU_OK)
        return frc;
    if (st->gen != s->gen) {
        res = PQprepare(s->conn, st->name, st->sql, st->nparams, NULL);
        if (PQresultStatus(res) != PGRES_COMMAND_OK) {
            int rc = lsp__err(s, res, "prepare");
            PQclear(res);
            return rc;
        }
        PQclear(res);
        st->gen = s->gen;
    }
    st->res = PQexecPrepared(s->conn, st->name, st->nparams, (const char *const *)st->val,
                             st->len, st->fmt, 1);
    es = PQresultStatus(st->res);
    if (es == PGRES_TUPLES_OK) {
        st->nrows = PQntuples(st->res);
        st->changes = strtoull(PQcmdTuples(st->res), NULL, 10);
        return NU_OK;
    }
    if (es == PGRES_COMMAND_OK) {
        st->nrows = 0;
        st->changes = strtoull(PQcmdTuples(st->res), NULL, 10);
        return NU_OK;
    }
    return lsp__err(s, st->res, "step");
}

static int lsp__step(struct ledger_store_stmt *bst, int *out_row)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    struct lsp_store *s = lsp__s(bst->store);
    int rc;
    if (st->rc != NU_OK)
        return st->rc; /* its pipelined answer was a failure */
    if (!st->res && s->pipe) {
        if (!st->sent && (rc = lsp__send_stmt(s, st, 1, -1)) != NU_OK)
            return rc;
        if ((rc = lsp__wait(s, st)) != NU_OK)
            return rc;
    } else if (!st->res && (rc = lsp__run(st)) != NU_OK) {
        return rc;
    }
    if (st->row + 1 < st->nrows) {
        st->row++;
        *out_row = 1;
    }
    return NU_OK;
}

static uint64_t lsp__changes(const struct ledger_store_stmt *bst)
{
    return ((const struct lsp_stmt *)bst)->changes;
}

static int lsp__col_ok(struct lsp_stmt *st, int i)
{
    return st->res && st->row >= 0 && st->row < st->nrows && i >= 0 && i < PQnfields(st->res);
}

static int lsp__col_is_null(struct ledger_store_stmt *bst, int i)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    return !lsp__col_ok(st, i) || PQgetisnull(st->res, st->row, i);
}

static enum ledger_store_type lsp__col_type(struct ledger_store_stmt *bst, int i)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    if (lsp__col_is_null(bst, i))
        return LEDGER_STORE_NULL;
    switch (PQftype(st->res, i)) {
    case LSP_INT8OID:
    case LSP_INT4OID:
    case LSP_INT2OID: return LEDGER_STORE_INTEGER;
    case LSP_BYTEAOID: return LEDGER_STORE_BLOB;
    case 25:   /* text */
    case 1043: /* varchar */
        return LEDGER_STORE_TEXT;
    default: return LEDGER_STORE_OTHER;
    }
}

static int64_t lsp__col_i64(struct ledger_store_stmt *bst, int i)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    const unsigned char *p;
    int n, len;
    uint64_t v = 0;

    if (lsp__col_is_null(bst, i))
        return 0;
    p = (const unsigned char *)PQgetvalue(st->res, st->row, i);
    len = PQgetlength(st->res, st->row, i);
    switch (PQftype(st->res, i)) {
    case LSP_INT8OID: n = 8; break;
    case LSP_INT4OID: n = 4; break;
    case LSP_INT2OID: n = 2; break;
    case LSP_BOOLOID: n = 1; break;
    default:
        nu_warn("ledger store: column %d has type oid %u, not an integer", i,
                (unsigned)PQftype(st->res, i));
        return 0;
    }
    if (len != n)
        return 0;
    for (int k = 0; k < n; k++)
        v = v << 8 | p[k];
    if (n == 4)
        return (int32_t)(uint32_t)v;
    if (n == 2)
        return (int16_t)(uint16_t)v;
    return (int64_t)v;
}

static const void *lsp__col_bytes(struct ledger_store_stmt *bst, int i, int text, size_t *out_len)
{
    struct lsp_stmt *st = (struct lsp_stmt *)bst;
    (void)text;
    *out_len = 0;
    if (lsp__col_is_null(bst, i))
        return NULL;
    *out_len = (size_t)PQgetlength(st->res, st->row, i);
    return PQgetvalue(st->res, st->row, i);
}

const struct ledger_store_ops ledger_store_pg_ops = {
    .kind = LEDGER_STORE_POSTGRESQL,
    .open = lsp__open,
    .close = lsp__close,
    .errmsg = lsp__errmsg,
    .exec = lsp__exec,
    .begin = lsp__begin,
    .commit = lsp__commit,
    .rollback = lsp__rollback,
    .in_txn = lsp__in_txn,
    .xact_lock = lsp__xact_lock,
    .session_lock = lsp__session_lock,
    .prepare = lsp__prepare,
    .finalize = lsp__finalize,
    .bind = lsp__bind,
    .step = lsp__step,
    .changes = lsp__changes,
    .reset = lsp__reset,
    .col_is_null = lsp__col_is_null,
    .col_type = lsp__col_type,
    .col_i64 = lsp__col_i64,
    .col_bytes = lsp__col_bytes,
    .pipeline = lsp__pipeline,
    .send = lsp__send,
    .queue = lsp__queue,
    .flush = lsp__flush_pipe,
    .piped = lsp__piped,
};
#endif /* NUSEC_HAVE_LIBPQ */
