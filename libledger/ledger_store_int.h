/*
 * ledger_store_int — what the two storage backends share with
 * ledger_store.c (private to those three files): the table of functions a
 * backend provides and the common head of its structs.
 */
#ifndef CLOUD_LEDGER_STORE_INT_H
#define CLOUD_LEDGER_STORE_INT_H

#include "ledger_store.h"

enum ledger_store_vtype { LSV_NULL, LSV_I64, LSV_TEXT, LSV_BLOB };

struct ledger_store_ops {
    enum ledger_store_kind kind;
    int (*open)(const char *target, const char *password_file, struct ledger_store **out);
    void (*close)(struct ledger_store *s);
    const char *(*errmsg)(const struct ledger_store *s);
    int (*exec)(struct ledger_store *s, const char *sql);
    int (*begin)(struct ledger_store *s, int write);
    int (*commit)(struct ledger_store *s);
    void (*rollback)(struct ledger_store *s);
    int (*in_txn)(const struct ledger_store *s);
    int (*xact_lock)(struct ledger_store *s, int64_t id);
    int (*session_lock)(struct ledger_store *s, int64_t id, int *out_held);
    int (*prepare)(struct ledger_store *s, const char *sql, struct ledger_store_stmt **out);
    void (*finalize)(struct ledger_store_stmt *st);
    /* p is copied by the backend (or bound as SQLITE_TRANSIENT). */
    int (*bind)(struct ledger_store_stmt *st, int i, enum ledger_store_vtype t, int64_t v,
                const void *p, size_t n);
    int (*step)(struct ledger_store_stmt *st, int *out_row);
    uint64_t (*changes)(const struct ledger_store_stmt *st);
    void (*reset)(struct ledger_store_stmt *st);
    int (*col_is_null)(struct ledger_store_stmt *st, int i);
    enum ledger_store_type (*col_type)(struct ledger_store_stmt *st, int i);
    int64_t (*col_i64)(struct ledger_store_stmt *st, int i);
    const void *(*col_bytes)(struct ledger_store_stmt *st, int i, int text, size_t *out_len);
    /* Optional: NULL where the engine has nothing to do (see ledger_store.h). */
    int (*set_lock_timeout)(struct ledger_store *s, unsigned ms);
    int (*maintain)(struct ledger_store *s);
    int (*set_inline_maintenance)(struct ledger_store *s, int on);
    /* Optional pipelining (ledger_store_pipeline); NULL: run at once. */
    int (*pipeline)(struct ledger_store *s, int on);
    int (*send)(struct ledger_store_stmt *st);
    int (*queue)(struct ledger_store_stmt *st, int64_t expect);
    int (*flush)(struct ledger_store *s);
    int (*piped)(const struct ledger_store *s);
};

/* The first member of every backend's connection struct. */
struct ledger_store {
    const struct ledger_store_ops *ops;
    struct ledger_store_stmt *stmts; /* every prepared statement, for close */
};

/* The first member of every backend's statement struct. */
struct ledger_store_stmt {
    struct ledger_store *store;
    struct ledger_store_stmt *next;
};

extern const struct ledger_store_ops ledger_store_sqlite_ops;
#if NUSEC_HAVE_LIBPQ
extern const struct ledger_store_ops ledger_store_pg_ops;
#endif

/* Link a new statement into its store's list (backends call it in prepare). */
void ledger_store__adopt(struct ledger_store *s, struct ledger_store_stmt *st);

#endif
