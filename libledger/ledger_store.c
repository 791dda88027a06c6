/* ledger_store — dispatch to the backend a target names (ledger_store.h). */
#include "ledger_store.h"

#include <stdio.h>
#include <string.h>

#include "ledger_store_int.h"
#include "nu_err.h"
#include "nu_crypto.h"

int ledger_store_target_is_pg(const char *target)
{
    return target && (!strncmp(target, "postgresql://", 13) || !strncmp(target, "postgres://", 11));
}

int ledger_store_open(const char *target, const char *password_file,
                      struct ledger_store **out_store)
{
    if (!target || !*target || !out_store)
        return NU_ERR_INVALID_ARG;
    *out_store = NULL;
    if (ledger_store_target_is_pg(target)) {
#if NUSEC_HAVE_LIBPQ
        return ledger_store_pg_ops.open(target, password_file, out_store);
#else
        return NU_ERR_NOT_SUPPORTED;
#endif
    }
    if (!strncmp(target, "sqlite:", 7))
        target += 7;
    return ledger_store_sqlite_ops.open(target, password_file, out_store);
}

void ledger_store__adopt(struct ledger_store *s, struct ledger_store_stmt *st)
{
    st->store = s;
    st->next = s->stmts;
    s->stmts = st;
}

void ledger_store_close(struct ledger_store *store)
{
    if (!store)
        return;
    struct ledger_store_stmt *st = store->stmts;
    while (st) {
        struct ledger_store_stmt *next = st->next;
        store->ops->finalize(st);
        st = next;
    }
    store->stmts = NULL;
    store->ops->close(store);
}

enum ledger_store_kind ledger_store_kind(const struct ledger_store *store)
{
    return store->ops->kind;
}

const char *ledger_store_errmsg(const struct ledger_store *store)
{
    const char *m = store ? store->ops->errmsg(store) : NULL;
    return m ? m : "";
}

int ledger_store_exec(struct ledger_store *store, const char *sql)
{
    return store && sql ? store->ops->exec(store, sql) : NU_ERR_INVALID_ARG;
}

int ledger_store_begin(struct ledger_store *store, int write)
{
    return store ? store->ops->begin(store, write) : NU_ERR_INVALID_ARG;
}

int ledger_store_commit(struct ledger_store *store)
{
    return store ? store->ops->commit(store) : NU_ERR_INVALID_ARG;
}

void ledger_store_rollback(struct ledger_store *store)
{
    if (store && store->ops->in_txn(store))
        store->ops->rollback(store);
}

int ledger_store_in_txn(const struct ledger_store *store)
{
    return store && store->ops->in_txn(store);
}

static int ledger_store__name_ok(const char *name)
{
    if (!name || !*name || strlen(name) > 32)
        return 0;
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || *p == '_'))
            return 0;
    return 1;
}

static int ledger_store__sp(struct ledger_store *store, const char *verb, const char *name)
{
    char sql[64];
    if (!store || !ledger_store__name_ok(name))
        return NU_ERR_INVALID_ARG;
    snprintf(sql, sizeof sql, "%s %s", verb, name);
    return store->ops->exec(store, sql);
}

int ledger_store_savepoint(struct ledger_store *store, const char *name)
{
    return ledger_store__sp(store, "SAVEPOINT", name);
}

int ledger_store_release(struct ledger_store *store, const char *name)
{
    return ledger_store__sp(store, "RELEASE SAVEPOINT", name);
}

int ledger_store_rollback_to(struct ledger_store *store, const char *name)
{
    return ledger_store__sp(store, "ROLLBACK TO SAVEPOINT", name);
}

int ledger_store_xact_lock(struct ledger_store *store, uint32_t ns, const void *key, size_t len)
{
    uint8_t buf[4 + 256];
    uint8_t digest[NU_SHA256_LEN];
    uint64_t id = 0;

    if (!store || (!key && len))
        return NU_ERR_INVALID_ARG;
    if (len > sizeof buf - 4)
        return NU_ERR_TOO_LARGE;
    buf[0] = (uint8_t)(ns >> 24);
    buf[1] = (uint8_t)(ns >> 16);
    buf[2] = (uint8_t)(ns >> 8);
    buf[3] = (uint8_t)ns;
    if (len)
        memcpy(buf + 4, key, len);
    /* 64 bits of SHA-256(ns || key): a collision only serializes two
     * unrelated keys, it never merges their decisions. */
    if (nu_sha256(buf, 4 + len, digest) != NU_OK)
        return NU_ERR_CRYPTO;
    for (int i = 0; i < 8; i++)
        id = id << 8 | digest[i];
    return store->ops->xact_lock(store, (int64_t)id);
}

int ledger_store_session_lock(struct ledger_store *store, int64_t id, int *out_held)
{
    if (!store || !out_held)
        return NU_ERR_INVALID_ARG;
    *out_held = 0;
    return store->ops->session_lock(store, id, out_held);
}

int ledger_store_serializes_writers(const struct ledger_store *store)
{
    return store && store->ops->kind == LEDGER_STORE_SQLITE;
}

int ledger_store_set_lock_timeout(struct ledger_store *store, unsigned ms)
{
    char sql[64];

    if (!store || ms > INT32_MAX)
        return NU_ERR_INVALID_ARG;
    if (store->ops->set_lock_timeout)
        return store->ops->set_lock_timeout(store, ms);
    /* PostgreSQL: a session setting, no backend code needed. */
    snprintf(sql, sizeof sql, "SET lock_timeout = %u", ms);
    return store->ops->exec(store, sql);
}

int ledger_store_maintain(struct ledger_store *store)
{
    if (!store)
        return NU_ERR_INVALID_ARG;
    return store->ops->maintain ? store->ops->maintain(store) : NU_OK;
}

int ledger_store_set_inline_maintenance(struct ledger_store *store, int on)
{
    if (!store)
        return NU_ERR_INVALID_ARG;
    return store->ops->set_inline_maintenance ? store->ops->set_inline_maintenance(store, on)
                                              : NU_OK;
}

int ledger_store_pipeline(struct ledger_store *store, int on)
{
    if (!store)
        return NU_ERR_INVALID_ARG;
    return store->ops->pipeline ? store->ops->pipeline(store, on) : NU_OK;
}

int ledger_store_piped(const struct ledger_store *store)
{
    return store && store->ops->piped && store->ops->piped(store);
}

int ledger_store_send(struct ledger_store_stmt *st)
{
    if (!st)
        return NU_ERR_INVALID_ARG;
    return st->store->ops->send ? st->store->ops->send(st) : NU_OK;
}

int ledger_store_queue(struct ledger_store_stmt *st, int64_t expect_changes)
{
    const struct ledger_store_ops *ops;
    int row = 0, rc;

    if (!st)
        return NU_ERR_INVALID_ARG;
    ops = st->store->ops;
    if (ops->queue && ledger_store_piped(st->store)) {
        rc = ops->queue(st, expect_changes);
    } else {
        rc = ops->step(st, &row);
        if (rc == NU_OK && expect_changes >= 0 && ops->changes(st) != (uint64_t)expect_changes)
            rc = NU_ERR_INTERNAL;
    }
    ops->reset(st);
    return rc;
}

int ledger_store_flush(struct ledger_store *store)
{
    if (!store)
        return NU_ERR_INVALID_ARG;
    return store->ops->flush ? store->ops->flush(store) : NU_OK;
}

int ledger_store_prepare(struct ledger_store *store, const char *sql,
                         struct ledger_store_stmt **out_stmt)
{
    if (!store || !sql || !out_stmt)
        return NU_ERR_INVALID_ARG;
    *out_stmt = NULL;
    return store->ops->prepare(store, sql, out_stmt);
}

int ledger_store_bind_text(struct ledger_store_stmt *st, int i, const char *s)
{
    if (!s)
        s = "";
    return st->store->ops->bind(st, i, LSV_TEXT, 0, s, strlen(s));
}

int ledger_store_bind_blob(struct ledger_store_stmt *st, int i, const void *p, size_t n)
{
    if (!p)
        return st->store->ops->bind(st, i, LSV_NULL, 0, NULL, 0);
    return st->store->ops->bind(st, i, LSV_BLOB, 0, p, n);
}

int ledger_store_bind_i64(struct ledger_store_stmt *st, int i, int64_t v)
{
    return st->store->ops->bind(st, i, LSV_I64, v, NULL, 0);
}

int ledger_store_bind_null(struct ledger_store_stmt *st, int i)
{
    return st->store->ops->bind(st, i, LSV_NULL, 0, NULL, 0);
}

int ledger_store_step(struct ledger_store_stmt *st, int *out_row)
{
    if (!st || !out_row)
        return NU_ERR_INVALID_ARG;
    *out_row = 0;
    return st->store->ops->step(st, out_row);
}

uint64_t ledger_store_changes(const struct ledger_store_stmt *st)
{
    return st->store->ops->changes(st);
}

void ledger_store_finalize(struct ledger_store_stmt *st)
{
    if (!st)
        return;
    for (struct ledger_store_stmt **pp = &st->store->stmts; *pp; pp = &(*pp)->next)
        if (*pp == st) {
            *pp = st->next;
            break;
        }
    st->store->ops->finalize(st);
}

void ledger_store_reset(struct ledger_store_stmt *st)
{
    if (st)
        st->store->ops->reset(st);
}

int ledger_store_col_is_null(struct ledger_store_stmt *st, int i)
{
    return st->store->ops->col_is_null(st, i);
}

enum ledger_store_type ledger_store_col_type(struct ledger_store_stmt *st, int i)
{
    return st->store->ops->col_type(st, i);
}

int64_t ledger_store_col_i64(struct ledger_store_stmt *st, int i)
{
    return st->store->ops->col_i64(st, i);
}

const char *ledger_store_col_text(struct ledger_store_stmt *st, int i, size_t *out_len)
{
    return st->store->ops->col_bytes(st, i, 1, out_len);
}

const void *ledger_store_col_blob(struct ledger_store_stmt *st, int i, size_t *out_len)
{
    return st->store->ops->col_bytes(st, i, 0, out_len);
}
