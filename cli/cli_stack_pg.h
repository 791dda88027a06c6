/*
 * cli_stack_pg — `nusec stack up --ledger postgresql`: a throwaway
 * PostgreSQL 15 cluster under DIR/postgres for the local stack (issue 13).
 */
#ifndef CLI_STACK_PG_H
#define CLI_STACK_PG_H

/*
 * Create (initdb, once) and start (pg_ctl) the cluster in DIR/postgres as an
 * unprivileged user (the `postgres` account when run as root), listening on
 * a unix socket in DIR/postgres/run only; create the database `nusec` with
 * the ledger schema (owner role nusec_owner) and the agents' role
 * nusec_agent with its grants; point DIR/cloud/cloud.conf at it
 * (`ledger = postgresql://nusec_agent@/nusec?host=…`). Idempotent.
 * Errors: NOT_FOUND (no PostgreSQL installed), CONFIG (DIR unusable in a
 * shell command), IO, and those of cloud_ledger_init.
 */
int stack_pg_up(const char *dir);

/* Whether `ledger` is a libpq URI (postgresql:// or postgres://). */
int stack_pg_is_uri(const char *ledger);

/*
 * Point DIR/cloud/cloud.conf at an existing PostgreSQL ledger `uri` (its
 * schema made by `nusec ledger init`; e.g. a Patroni cluster through a
 * multi-host URI with target_session_attrs=read-write). Nothing is started
 * or stopped. Errors: INVALID_ARG (a password in the URI: it belongs in a
 * 0600 file), IO, NOMEM.
 */
int stack_pg_point(const char *dir, const char *uri);

/* Stop the cluster of DIR/postgres if it runs (pg_ctl stop -m fast). */
int stack_pg_down(const char *dir);

/* Whether DIR/postgres holds a cluster. */
int stack_pg_exists(const char *dir);

#endif
