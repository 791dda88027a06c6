/*
 * ledger_schema_pg — the ledger's schema on PostgreSQL (internal to the
 * ledger): the same tables and column names as the SQLite file (ledger.h,
 * TABLES), typed BIGINT/TEXT/BYTEA, the same protective triggers, plus what
 * SQLite cannot do: an agent role with least privilege. The owner role runs
 * these; agents only read and write rows.
 */
#ifndef CLOUD_LEDGER_SCHEMA_PG_H
#define CLOUD_LEDGER_SCHEMA_PG_H

/* ledger_schema_pg_migrations[i] takes the schema from version i to i + 1. */
extern const char *const ledger_schema_pg_migrations[];
extern const unsigned ledger_schema_pg_count;

/*
 * The GRANTs of the agent role (a format: %1$s = its quoted name): SELECT
 * and INSERT on every table; UPDATE only of the columns the agent moves
 * (counters, states, the chain head, the idempotency cache); no UPDATE nor
 * DELETE of audit_events, and of a certificate only its state columns, never
 * its issued identity; nothing on ledger_meta but SELECT.
 */
#define LEDGER_SCHEMA_PG_GRANTS                                                                    \
    "GRANT USAGE ON SCHEMA public TO %1$s;"                                                        \
    "REVOKE ALL ON ALL TABLES IN SCHEMA public FROM %1$s;"                                         \
    "GRANT SELECT, INSERT ON ALL TABLES IN SCHEMA public TO %1$s;"                                 \
    "REVOKE INSERT ON ledger_meta FROM %1$s;"                                                      \
    "GRANT UPDATE (issued, refused, status, updated_at_ms) ON jobs TO %1$s;"                       \
    "GRANT UPDATE (issued) ON job_allocations TO %1$s;"                                            \
    "GRANT UPDATE (cert_serial, cert_pem, package_pubkey, enrolled_at_ms, state, revoked_at_ms,"   \
    " revoke_reason, vendor_serial, firmware_measurement) ON programmers TO %1$s;"                 \
    "GRANT UPDATE (used_at_ms), DELETE ON enroll_nonces TO %1$s;"                                  \
    "GRANT UPDATE (used_at_ms) ON enroll_tokens TO %1$s;"                                          \
    "GRANT UPDATE (state, state_at_ms, detail, revoked_at_ms, revoke_reason) ON certificates"      \
    " TO %1$s;"                                                                                    \
    "GRANT UPDATE ON requests TO %1$s;"                                                            \
    "GRANT UPDATE (seq, hash) ON audit_head TO %1$s;"                                              \
    "GRANT UPDATE (used, state, closed_at_ms) ON leases TO %1$s;"                                 \
    "GRANT UPDATE (crl_number, der) ON device_crl TO %1$s;"

#endif
