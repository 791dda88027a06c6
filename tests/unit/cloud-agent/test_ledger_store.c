/*
 * ledger_store: the ledger's storage interface, the same cases on both
 * backends — an SQLite file and a real PostgreSQL started by the test
 * (pg_fixture) — plus what only PostgreSQL has: credentials from a 0600
 * file and never from the URI, a connection killed mid-transaction
 * answering CONNECTION and the next transaction reconnecting, and a session
 * lock that moves to another connection when its holder goes.
 */
#include "ledger_store.h"
#include "nu_err.h"
#include "nu_test.h"
#include "pg_fixture.h"

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static char tmp[256];
static struct pg_fixture pg;
static int pg_up;
static char target[1100];

static int setup(void)
{
    if (nu_test_tmpdir("store", tmp, sizeof tmp) != 0)
        return -1;
    pg_up = pg_fixture_start(&pg) == 0;
    return pg_up ? 0 : -1;
}

static int teardown(void)
{
    pg_fixture_stop(&pg);
    nu_test_rmtree(tmp);
    return 0;
}

static struct ledger_store *open_target(int postgres, const char *name)
{
    struct ledger_store *s = NULL;
    if (postgres) {
        CU_ASSERT_EQUAL_FATAL(pg_fixture_db(&pg, name, target, sizeof target), 0);
    } else {
        snprintf(target, sizeof target, "%s/%s.db", tmp, name);
    }
    CU_ASSERT_EQUAL_FATAL(ledger_store_open(target, NULL, &s), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_kind(s), postgres ? LEDGER_STORE_POSTGRESQL : LEDGER_STORE_SQLITE);
    return s;
}

static const char *const DDL_SQLITE =
    "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BLOB, n INTEGER)";
static const char *const DDL_PG =
    "CREATE TABLE t (id BIGINT PRIMARY KEY, name TEXT NOT NULL UNIQUE, data BYTEA, n BIGINT)";

static int insert(struct ledger_store_stmt *ins, int64_t id, const char *name, const void *data,
                  size_t len, int64_t n)
{
    int row = 0, rc;
    ledger_store_bind_i64(ins, 1, id);
    ledger_store_bind_text(ins, 2, name);
    ledger_store_bind_blob(ins, 3, data, len);
    ledger_store_bind_i64(ins, 4, n);
    rc = ledger_store_step(ins, &row);
    ledger_store_reset(ins);
    return rc;
}

/* Typed values round-trip; a unique violation is EXISTS; rollback and
 * savepoints undo exactly what they should. */
static void roundtrip(int postgres)
{
    struct ledger_store *s = open_target(postgres, postgres ? "store_rt" : "rt");
    struct ledger_store_stmt *ins = NULL, *sel = NULL;
    static const uint8_t bin[5] = {0, 1, 0xff, 0x7f, 0};
    size_t len = 0;
    int row = 0;

    CU_ASSERT_EQUAL_FATAL(ledger_store_exec(s, postgres ? DDL_PG : DDL_SQLITE), NU_OK);
    CU_ASSERT_EQUAL_FATAL(ledger_store_prepare(s, "INSERT INTO t (id, name, data, n)"
                                                  " VALUES (?1, ?2, ?3, ?4)", &ins), NU_OK);
    CU_ASSERT_EQUAL_FATAL(ledger_store_prepare(s, "SELECT name, data, n, id FROM t WHERE id = ?1"
                                                  " AND name <> 'it''s ?2'", &sel), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_begin(s, 1), NU_OK);
    CU_ASSERT_EQUAL(insert(ins, 1, "one", bin, sizeof bin, -5000000000ll), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_changes(ins), 1);
    CU_ASSERT_EQUAL(insert(ins, 2, "two", NULL, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_commit(s), NU_OK);

    ledger_store_bind_i64(sel, 1, 1);
    CU_ASSERT_EQUAL(ledger_store_step(sel, &row), NU_OK);
    CU_ASSERT_EQUAL_FATAL(row, 1);
    const char *name = ledger_store_col_text(sel, 0, &len);
    CU_ASSERT(len == 3 && !memcmp(name, "one", 3));
    const uint8_t *data = ledger_store_col_blob(sel, 1, &len);
    CU_ASSERT(len == sizeof bin && !memcmp(data, bin, sizeof bin));
    CU_ASSERT_EQUAL(ledger_store_col_i64(sel, 2), -5000000000ll);
    CU_ASSERT_EQUAL(ledger_store_col_i64(sel, 3), 1);
    CU_ASSERT_EQUAL(ledger_store_step(sel, &row), NU_OK);
    CU_ASSERT_EQUAL(row, 0);
    ledger_store_reset(sel);
    ledger_store_bind_i64(sel, 1, 2);
    CU_ASSERT_EQUAL(ledger_store_step(sel, &row), NU_OK);
    CU_ASSERT_EQUAL_FATAL(row, 1);
    CU_ASSERT(ledger_store_col_is_null(sel, 1));
    ledger_store_reset(sel);

    /* Unique name: EXISTS, and the transaction's earlier row goes with it. */
    CU_ASSERT_EQUAL(ledger_store_begin(s, 1), NU_OK);
    CU_ASSERT_EQUAL(insert(ins, 3, "three", NULL, 0, 3), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_savepoint(s, "req"), NU_OK);
    CU_ASSERT_EQUAL(insert(ins, 4, "one", NULL, 0, 4), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(ledger_store_rollback_to(s, "req"), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_release(s, "req"), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_commit(s), NU_OK); /* row 3 stays */
    CU_ASSERT_EQUAL(ledger_store_begin(s, 1), NU_OK);
    CU_ASSERT_EQUAL(insert(ins, 5, "five", NULL, 0, 5), NU_OK);
    ledger_store_rollback(s);
    CU_ASSERT_FALSE(ledger_store_in_txn(s));
    for (int64_t id = 3; id <= 5; id++) {
        ledger_store_bind_i64(sel, 1, id);
        CU_ASSERT_EQUAL(ledger_store_step(sel, &row), NU_OK);
        CU_ASSERT_EQUAL(row, id == 3); /* 4 refused, 5 rolled back */
        ledger_store_reset(sel);
    }
    /* Bad placeholders and indexes are refused, not sent. */
    CU_ASSERT_EQUAL(ledger_store_bind_i64(sel, 7, 1), NU_ERR_INVALID_ARG);
    ledger_store_close(s);
}

static void test_roundtrip_sqlite(void) { roundtrip(0); }
static void test_roundtrip_pg(void) { roundtrip(1); }

static void write_file(const char *path, const char *text, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    CU_ASSERT_FATAL(fd >= 0);
    CU_ASSERT((size_t)write(fd, text, strlen(text)) == strlen(text));
    close(fd);
    chmod(path, mode);
}

/* The password comes from a 0600 file, never from the URI; a wrong one or a
 * loose file is PERMISSION, a dead server CONNECTION. Over TCP (scram). */
static void test_pg_credentials(void)
{
    struct ledger_store *s = NULL;
    char uri[300], pw[300], bad[300];

    CU_ASSERT_EQUAL_FATAL(pg_fixture_psql(&pg, "postgres",
        "DROP ROLE IF EXISTS nusec_store_t; CREATE ROLE nusec_store_t LOGIN PASSWORD 's3cret-t'"), 0);
    snprintf(uri, sizeof uri, "postgresql://nusec_store_t@127.0.0.1:%d/postgres", pg.port);
    snprintf(pw, sizeof pw, "%s/pw", tmp);
    snprintf(bad, sizeof bad, "%s/pw-bad", tmp);
    write_file(pw, "s3cret-t\n", 0600);
    write_file(bad, "wrong\n", 0600);
    setenv("PGPASSFILE", "/nonexistent", 1); /* no ~/.pgpass fallback in this test */
    CU_ASSERT_EQUAL(ledger_store_open(uri, pw, &s), NU_OK);
    ledger_store_close(s);
    s = NULL;
    CU_ASSERT_EQUAL(ledger_store_open(uri, bad, &s), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(ledger_store_open(uri, NULL, &s), NU_ERR_PERMISSION);
    chmod(pw, 0644);
    CU_ASSERT_EQUAL(ledger_store_open(uri, pw, &s), NU_ERR_PERMISSION);
    snprintf(uri, sizeof uri, "postgresql://nusec_store_t:s3cret-t@127.0.0.1:%d/postgres", pg.port);
    CU_ASSERT_EQUAL(ledger_store_open(uri, NULL, &s), NU_ERR_INVALID_ARG);
    /* Nobody listens on port 1. */
    CU_ASSERT_EQUAL(ledger_store_open("postgresql://x@127.0.0.1:1/postgres?connect_timeout=2",
                                      NULL, &s), NU_ERR_CONNECTION);
    CU_ASSERT_PTR_NULL(s);
    unsetenv("PGPASSFILE");
}

/* The server ends our backend mid-transaction: the statement answers
 * CONNECTION, nothing of the transaction is kept, and the next transaction
 * reconnects and re-prepares by itself. */
static void test_pg_connection_lost(void)
{
    struct ledger_store *s = open_target(1, "store_lost");
    struct ledger_store_stmt *ins = NULL, *cnt = NULL;
    int row = 0;

    CU_ASSERT_EQUAL_FATAL(ledger_store_exec(s, DDL_PG), NU_OK);
    CU_ASSERT_EQUAL_FATAL(ledger_store_prepare(s, "INSERT INTO t (id, name, data, n)"
                                                  " VALUES (?1, ?2, ?3, ?4)", &ins), NU_OK);
    CU_ASSERT_EQUAL_FATAL(ledger_store_prepare(s, "SELECT count(*) FROM t", &cnt), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_begin(s, 1), NU_OK);
    CU_ASSERT_EQUAL(insert(ins, 1, "one", NULL, 0, 1), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_fixture_psql(&pg, "postgres",
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = 'store_lost'"
        " AND application_name = 'nusec-cloud'"), 0);
    CU_ASSERT_EQUAL(insert(ins, 2, "two", NULL, 0, 2), NU_ERR_CONNECTION);
    CU_ASSERT_NOT_EQUAL(ledger_store_commit(s), NU_OK);
    ledger_store_rollback(s);
    CU_ASSERT_EQUAL(ledger_store_begin(s, 0), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_step(cnt, &row), NU_OK);
    CU_ASSERT_EQUAL(row, 1);
    CU_ASSERT_EQUAL(ledger_store_col_i64(cnt, 0), 0);
    ledger_store_reset(cnt);
    ledger_store_rollback(s);
    ledger_store_close(s);
}

/* One holder of a session lock at a time; it moves when the holder goes. */
static void test_pg_session_lock(void)
{
    struct ledger_store *a = open_target(1, "store_lock"), *b = NULL;
    int held = -1;

    CU_ASSERT_EQUAL_FATAL(ledger_store_open(target, NULL, &b), NU_OK);
    CU_ASSERT_EQUAL(ledger_store_session_lock(a, 42, &held), NU_OK);
    CU_ASSERT_EQUAL(held, 1);
    CU_ASSERT_EQUAL(ledger_store_session_lock(b, 42, &held), NU_OK);
    CU_ASSERT_EQUAL(held, 0);
    ledger_store_close(a);
    for (int i = 0; i < 50 && held != 1; i++) {
        CU_ASSERT_EQUAL(ledger_store_session_lock(b, 42, &held), NU_OK);
        if (held != 1)
            usleep(100 * 1000);
    }
    CU_ASSERT_EQUAL(held, 1);
    ledger_store_close(b);
}

static const struct nu_test_case store_cases[] = {
    {"values, EXISTS, rollback, savepoints (SQLite)", test_roundtrip_sqlite},
    {"values, EXISTS, rollback, savepoints (PostgreSQL)", test_roundtrip_pg},
    {"PostgreSQL credentials: 0600 file only", test_pg_credentials},
    {"PostgreSQL connection lost mid-transaction", test_pg_connection_lost},
    {"PostgreSQL session lock moves", test_pg_session_lock},
    {NULL, NULL},
};

int main(void)
{
    static const struct nu_test_suite suites[] = {
        {"ledger_store", setup, teardown, store_cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("ledger_store", suites);
}
