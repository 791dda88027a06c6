/*
 * pg_fixture — a real PostgreSQL for the tests (tests/integration/pg).
 *
 * When NUSEC_PG_OWNER_URI is set (the CTest fixture `pg` started one cluster
 * for every test that needs it), that cluster is used; otherwise the test
 * starts its own with pg_cluster.sh in a temporary folder and stops it in
 * pg_fixture_stop(). Each test takes a fresh database (pg_fixture_db), so
 * tests sharing one cluster never see each other's rows.
 */
#ifndef NU_PG_FIXTURE_H
#define NU_PG_FIXTURE_H

#include <stddef.h>

struct pg_fixture {
    char dir[512];  /* the cluster's folder when this process started it, else "" */
    char host[600]; /* socket folder */
    int port;
    char owner_uri[1024]; /* the superuser (owner) role, database postgres */
};

/* Start or join a cluster. Returns 0 or -1 (the reason is logged). */
int pg_fixture_start(struct pg_fixture *f);

/* Stop the cluster if this process started it. */
void pg_fixture_stop(struct pg_fixture *f);

/*
 * Create a fresh database `name` ([a-z0-9_]) owned by nusec_owner (dropped
 * first if it exists) and write the owner's URI to it into out[cap].
 * Returns 0 or -1.
 */
int pg_fixture_db(struct pg_fixture *f, const char *name, char *out, size_t cap);

/*
 * Empty the database `name` made by pg_fixture_db (its schema public dropped
 * with everything in it and made again; the ledger grants USAGE itself) and
 * write the owner's URI to it into out[cap]: a fresh ledger without the
 * cost of CREATE DATABASE. Its connections must be closed or idle.
 * Returns 0 or -1.
 */
int pg_fixture_db_reset(struct pg_fixture *f, const char *name, char *out, size_t cap);

/* Run SQL as the owner on database `db` through psql; returns its status. */
int pg_fixture_psql(struct pg_fixture *f, const char *db, const char *sql);

#endif
