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
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    return nu_test_run("cloud_test_ledger", suites);
}
