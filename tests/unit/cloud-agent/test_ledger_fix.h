/*
 * test_ledger_fix — what the files of the ledger unit suite (test_ledger*.c)
 * share: the fixture helpers, request/signer/audit-scan types, and each
 * file's table of cases for the runner in test_ledger.c.
 */
#ifndef TEST_LEDGER_FIX_H
#define TEST_LEDGER_FIX_H

#include "ledger.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <signal.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define T0 1700000000000ull /* "now" of every test, Unix ms */

/* A certificate request with its own buffers. The idempotency key follows
 * proto/README: SHA-256("nusec/v1 cert" || job || UID)[0..16]. */
struct treq {
    struct cloud_ledger_issue_req r;
    char job[CLOUD_LEDGER_ID_MAX + 1];
    char requester[CLOUD_LEDGER_ID_MAX + 1];
    uint8_t uid[8];
    uint8_t key[16];
};

/* The dummy certificate maker. */
enum sign_mode { SIGN_OK, SIGN_FAIL, SIGN_KILL, SIGN_BAD_SERIAL, SIGN_BAD_PEM, SIGN_BIG_REPLY };

struct signer {
    enum sign_mode mode;
    unsigned calls;
    unsigned resends;
    unsigned next_serial;
    unsigned fail_dev_byte; /* SIGN_OK: fail requests whose UID ends in this byte (0: none) */
    unsigned last_issued;
};

/* Audit walking. */
struct evscan {
    const char *kind;
    unsigned count;
    uint64_t last_seq;
    char last_payload[CLOUD_LEDGER_PAYLOAD_MAX + 1];
    char last_job[CLOUD_LEDGER_ID_MAX + 1];
    uint64_t last_ts;
};

extern char tmp[256];

/* 1 when this run's ledgers live on PostgreSQL (cloud_test_ledger
 * --backend=postgresql), 0 for SQLite files. */
extern int ledger_on_pg;

/* Join (or start) the test PostgreSQL and switch open_fresh to it; 0 or -1. */
int ledger_pg_start(void);
void ledger_pg_stop(void);

/* In a case that checks what only SQLite has (files, PRAGMAs, its trigger
 * syntax): 1 on PostgreSQL (the caller returns), after saying so. */
int sqlite_only(void);

extern uint8_t pkg_pub[CLOUD_LEDGER_PUBKEY_LEN];

extern const char *const PEM_TEXT;

int setup(void);

int teardown(void);

void fresh_path(char *out, size_t cap);

struct cloud_ledger *open_fresh(char *path, size_t cap);

/* Raw SQLite access, as an auditor or an attacker with the file would have. */
int sql_exec(const char *path, const char *sql);

long long sql_int(const char *path, const char *sql);

void sql_text(const char *path, const char *sql, char *out, size_t cap);

int enroll(struct cloud_ledger *l, const char *id);

struct cloud_ledger_alloc alloc_of(const char *id, uint32_t limit);

int mk_job(struct cloud_ledger *l, const char *job, uint32_t quota, uint64_t expires,
           const struct cloud_ledger_alloc *a, size_t n);

/* One job "job-1" (quota) with programmer "prog-1" (limit). */
void std_setup(struct cloud_ledger *l, uint32_t quota, uint32_t limit);

/* A lease policy of `units` on "job-1" and lease "lease-1" of that many
 * units granted to "prog-1" at T0, valid 1 h. */
int grant_std_lease(struct cloud_ledger *l, uint32_t units);

void mkreq(struct treq *t, const char *requester, const char *job, unsigned dev,
           unsigned keyver, uint64_t now);

int dummy_sign(void *ctx, const struct cloud_ledger_issue_req *req,
               const struct cloud_ledger_sign_info *info, struct cloud_ledger_sign_out *out);

struct evscan events(struct cloud_ledger *l, const char *kind);

uint64_t head_seq(struct cloud_ledger *l);

struct cloud_ledger_job job_of(struct cloud_ledger *l, const char *id);

uint32_t alloc_issued(struct cloud_ledger *l, const char *job, const char *prog);

int verify_ok(struct cloud_ledger *l);

void hex(const uint8_t *b, size_t n, char *out);

extern const struct nu_test_case schema_cases[];

extern const struct nu_test_case job_cases[];

extern const struct nu_test_case fw_cases[];

extern const struct nu_test_case prog_cases[];

extern const struct nu_test_case issue_cases[];

extern const struct nu_test_case device_cases[];

extern const struct nu_test_case audit_cases[];

extern const struct nu_test_case tamper_cases[];

extern const struct nu_test_case process_cases[];

extern const struct nu_test_case shared_cases[];

#endif
