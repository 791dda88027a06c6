/*
 * ledger: the cloud's SQLite ledger, on real files in a temporary folder.
 * Issuance decision table, idempotency, quota under a 4-process race, crash
 * inside the transaction, audit chain (with an independent Python auditor),
 * tamper detection, and a printed issuance rate with synchronous=FULL.
 *
 * This file is the runner; the cases live in test_ledger_*.c by seam (the
 * same seams as cloud-agent/ledger_*.c), the fixture in test_ledger_fix.c.
 */
#include "test_ledger_fix.h"

/* ----------------------------------------------------------------- runner */

static const struct nu_test_suite suites[] = {
    {"ledger schema", setup, teardown, schema_cases},
    {"ledger jobs", setup, teardown, job_cases},
    {"ledger programmers", setup, teardown, prog_cases},
    {"ledger issuance", setup, teardown, issue_cases},
    {"ledger firmware delivery", setup, teardown, fw_cases},
    {"ledger devices", setup, teardown, device_cases},
    {"ledger audit", setup, teardown, audit_cases},
    {"ledger tamper", setup, teardown, tamper_cases},
    {"ledger processes", setup, teardown, process_cases},
    {"ledger shared state", setup, teardown, shared_cases},
    {NULL, NULL, NULL, NULL},
};

/* The same cases on PostgreSQL (issue 13: the unit suite runs against both
 * backends); schema, tamper and process cases are about SQLite's file,
 * PRAGMAs and locks (test_ledger_pg.c covers PostgreSQL's). */
static const struct nu_test_suite pg_suites[] = {
    {"ledger jobs (PostgreSQL)", setup, teardown, job_cases},
    {"ledger programmers (PostgreSQL)", setup, teardown, prog_cases},
    {"ledger issuance (PostgreSQL)", setup, teardown, issue_cases},
    {"ledger firmware delivery (PostgreSQL)", setup, teardown, fw_cases},
    {"ledger devices (PostgreSQL)", setup, teardown, device_cases},
    {"ledger audit (PostgreSQL)", setup, teardown, audit_cases},
    {"ledger shared state (PostgreSQL)", setup, teardown, shared_cases},
    {NULL, NULL, NULL, NULL},
};

/* Usage: cloud_test_ledger [--backend=sqlite|--backend=postgresql] */
int main(int argc, char **argv)
{
    if (argc > 1 && strcmp(argv[1], "--backend=postgresql") == 0) {
        if (ledger_pg_start() != 0) {
            fprintf(stderr, "cloud_test_ledger: no PostgreSQL for the tests\n");
            return 1;
        }
        int rc = nu_test_run("cloud_test_ledger --backend=postgresql", pg_suites);
        ledger_pg_stop();
        return rc;
    }
    if (argc > 1 && strcmp(argv[1], "--backend=sqlite") != 0) {
        fprintf(stderr, "cloud_test_ledger: usage: cloud_test_ledger [--backend=sqlite|postgresql]\n");
        return 2;
    }
    return nu_test_run("cloud_test_ledger", suites);
}
