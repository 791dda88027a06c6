/*
 * ledger audit: append limits, the canonical hash vector, an independent
 * Python auditor, and tamper detection by verify.
 */
#include "test_ledger_fix.h"

/* ------------------------------------------------------------------ audit */

static void test_audit_append_limits(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    char *big = malloc(CLOUD_LEDGER_PAYLOAD_MAX + 1);
    struct cloud_ledger_event ev = {0};
    uint64_t seq = 0, before;
    struct evscan scan;

    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'x', CLOUD_LEDGER_PAYLOAD_MAX + 1);
    memcpy(big, "{\"x\":\"", 6); /* a JSON object of the largest size: verify checks it */
    memcpy(big + CLOUD_LEDGER_PAYLOAD_MAX - 2, "\"}", 2);
    ev.ts_ms = T0;
    ev.kind = "device.provisioned";
    ev.actor = "prog-1";
    ev.job_id = "job-1";
    ev.payload = "{\"uid\":\"caf\xc3\xa9\"}\n";
    ev.payload_len = strlen(ev.payload);
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &ev, &seq), NU_OK);
    CU_ASSERT_EQUAL(seq, 2);
    scan = events(l, "device.provisioned");
    CU_ASSERT_STRING_EQUAL(scan.last_payload, ev.payload);
    CU_ASSERT_STRING_EQUAL(scan.last_job, "job-1");
    ev.job_id = NULL;
    ev.payload = big;
    ev.payload_len = CLOUD_LEDGER_PAYLOAD_MAX;
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &ev, &seq), NU_OK);
    CU_ASSERT_EQUAL(seq, 3);
    before = head_seq(l);

#define BAD(mutate, want)                                                                          \
    do {                                                                                           \
        struct cloud_ledger_event e2 = {0};                                                        \
        e2.ts_ms = T0;                                                                             \
        e2.kind = "device.failed";                                                                 \
        e2.actor = "prog-1";                                                                       \
        e2.payload = "{}";                                                                         \
        e2.payload_len = 2;                                                                        \
        mutate;                                                                                    \
        CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &e2, NULL), want);                            \
    } while (0)
    BAD(e2.payload = big; e2.payload_len = CLOUD_LEDGER_PAYLOAD_MAX + 1, NU_ERR_TOO_LARGE);
    BAD(e2.payload = "\xc0\x80"; e2.payload_len = 2, NU_ERR_INVALID_ARG);     /* overlong NUL */
    BAD(e2.payload = "\xed\xa0\x80"; e2.payload_len = 3, NU_ERR_INVALID_ARG); /* surrogate */
    BAD(e2.payload = "a\0b"; e2.payload_len = 3, NU_ERR_INVALID_ARG);
    BAD(e2.payload = "\xe2\x82"; e2.payload_len = 2, NU_ERR_INVALID_ARG); /* truncated */
    BAD(e2.payload = "\x1b[31m"; e2.payload_len = 5, NU_ERR_INVALID_ARG); /* terminal escape */
    BAD(e2.payload = NULL; e2.payload_len = 3, NU_ERR_INVALID_ARG);
    BAD(e2.kind = "cert.issued", NU_ERR_INVALID_ARG); /* reserved for the ledger */
    BAD(e2.kind = "job.exhausted", NU_ERR_INVALID_ARG);
    BAD(e2.kind = "Device.Failed", NU_ERR_INVALID_ARG);
    BAD(e2.kind = "", NU_ERR_INVALID_ARG);
    BAD(e2.kind = NULL, NU_ERR_INVALID_ARG);
    BAD(e2.kind = "kkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkkk",
        NU_ERR_TOO_LARGE);
    BAD(e2.actor = "a b", NU_ERR_INVALID_ARG);
    BAD(e2.job_id = "job;drop", NU_ERR_INVALID_ARG);
    BAD(e2.ts_ms = UINT64_MAX, NU_ERR_INVALID_ARG);
#undef BAD
    CU_ASSERT_EQUAL(head_seq(l), before);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
    free(big);
}

static void test_event_hash_vector(void)
{
    /* Computed independently with Python's hashlib + struct (ledger.h). */
    static const char *const v1 =
        "e8086b5c1d9dae380949411d59858c97b22bbca3d388148ad9472027897636a3";
    static const char *const v2 =
        "ab86f44e3632ee1206cb95680decb2432276a56e7b43c56616e4a9eeb7935441";
    uint8_t zero[32] = {0}, h1[32], h2[32];
    char hx[65];

    CU_ASSERT_EQUAL(cloud_ledger_event_hash(zero, 1, 1700000000000ull, "cert.issued", 11, "prog-1",
                                            6, "job-1", 5, "{\"a\":1}", 7, h1),
                    NU_OK);
    hex(h1, 32, hx);
    CU_ASSERT_STRING_EQUAL(hx, v1);
    CU_ASSERT_EQUAL(cloud_ledger_event_hash(h1, 2, 1700000000001ull, "device.provisioned", 18,
                                            "prog-1", 6, "", 0, "caf\xc3\xa9\n", 6, h2),
                    NU_OK);
    hex(h2, 32, hx);
    CU_ASSERT_STRING_EQUAL(hx, v2);
    CU_ASSERT_EQUAL(cloud_ledger_event_hash(NULL, 1, 1, "k", 1, "a", 1, "", 0, "", 0, h1),
                    NU_ERR_INVALID_ARG);
}

/* An auditor's re-implementation of ledger.h, in Python, on our file. */
static const char PY_AUDITOR[] =
    "import hashlib, json, sqlite3, struct, sys\n"
    "db = sqlite3.connect('file:%s?mode=ro' % sys.argv[1], uri=True)\n"
    "prev, expect, issued = b'\\0' * 32, 1, {}\n"
    "for seq, ts, kind, actor, job, payload, ph, h in db.execute(\n"
    "        'SELECT seq, ts, kind, actor, job_id, payload, prev_hash, hash'\n"
    "        ' FROM audit_events ORDER BY seq'):\n"
    "    assert seq == expect and ph == prev, seq\n"
    "    row = struct.pack('>QQ', seq, ts) + b''.join(\n"
    "        struct.pack('>I', len(b)) + b\n"
    "        for b in (kind.encode(), actor.encode(), job.encode(), payload.encode()))\n"
    "    assert hashlib.sha256(ph + row).digest() == h, seq\n"
    "    prev, expect = h, expect + 1\n"
    "    if kind == 'cert.issued':\n"
    "        issued[json.loads(payload)['serial']] = (job, ts, payload)\n"
    "assert db.execute('SELECT seq, hash FROM audit_head').fetchone() == (expect - 1, prev)\n"
    "n = 0\n"
    "for serial, job, uid, pkh, pem, prog, key, at in db.execute(\n"
    "        'SELECT serial, job_id, device_uid, pubkey_hash, pem, programmer_id,'\n"
    "        ' idempotency_key, issued_at_ms FROM certificates'):\n"
    "    want = ('{\"serial\":\"%s\",\"device_uid\":\"%s\",\"pubkey_hash\":\"%s\",'\n"
    "            '\"programmer\":\"%s\",\"idempotency_key\":\"%s\",\"pem_sha256\":\"%s\"}'\n"
    "            % (serial, uid.hex(), pkh.hex(), prog, key.hex(),\n"
    "               hashlib.sha256(pem.encode()).hexdigest()))\n"
    "    assert issued.pop(serial) == (job, at, want), serial\n"
    "    n += 1\n"
    "assert not issued\n"
    "print('python auditor: %d events, %d certificates: ok' % (expect - 1, n))\n";

static void test_python_auditor_agrees(void)
{
    char path[512], script[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;
    struct cloud_ledger_event ev = {0};

    std_setup(l, 10, 10);
    for (unsigned i = 0; i < 4; i++) {
        mkreq(&t, "prog-1", "job-1", i, 1, T0 + i);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
    }
    mkreq(&t, "prog-1", "job-9", 1, 1, T0);
    CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_ERR_NOT_FOUND);
    ev.ts_ms = T0;
    ev.kind = "device.provisioned";
    ev.actor = "prog-1";
    ev.payload = "{\"detail\":\"na\xc3\xafve \\\"quoted\\\"\"}";
    ev.payload_len = strlen(ev.payload);
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &ev, NULL), NU_OK);
    cloud_ledger_close(l);
    nu_path_fmt(script, sizeof(script), "%s/auditor.py", tmp);
    CU_ASSERT_EQUAL_FATAL(nu_file_write_atomic(script, PY_AUDITOR, strlen(PY_AUDITOR), 0600),
                          NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("python3 '%s' '%s'", script, path), 0);
}

/* ----------------------------------------------------------------- tamper */

/* A ledger with some history, closed; returns the serial of the 2nd cert. */
static void tamper_fixture(char *path, size_t cap, char *serial2)
{
    struct cloud_ledger *l = open_fresh(path, cap);
    struct signer s = {0};
    struct treq t;
    struct cloud_ledger_issue_result res;

    std_setup(l, 10, 10);
    for (unsigned i = 0; i < 3; i++) {
        mkreq(&t, "prog-1", "job-1", i, 1, T0 + i);
        CU_ASSERT_EQUAL(cloud_ledger_issue(l, &t.r, dummy_sign, &s, &res), NU_OK);
        if (i == 1)
            snprintf(serial2, CLOUD_LEDGER_SERIAL_MAX + 1, "%s", res.serial);
    }
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static const char DROP_TRIGGERS[] = "DROP TRIGGER audit_events_no_update;"
                                    "DROP TRIGGER audit_events_no_delete;"
                                    "DROP TRIGGER audit_events_seq;"
                                    "DROP TRIGGER certificates_no_delete;"
                                    "DROP TRIGGER certificates_fixed;";

/* Tamper with triggers dropped, put the triggers back (so only the edit is
 * left), and return what verify says, through the handle and the path. */
static int tamper(const char *path, const char *sql, struct cloud_ledger_verify_report *r)
{
    char *saved = NULL, *restore = NULL;
    struct cloud_ledger_verify_report r2;
    struct cloud_ledger *l = NULL;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    size_t len = 0, cap = 8192;
    int rc;

    restore = calloc(1, cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(restore);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_prepare_v2(db, "SELECT sql FROM sqlite_master WHERE type = 'trigger'",
                                       -1, &st, NULL),
                    SQLITE_OK);
    while (sqlite3_step(st) == SQLITE_ROW)
        len += (size_t)snprintf(restore + len, cap - len, "%s;",
                                (const char *)sqlite3_column_text(st, 0));
    sqlite3_finalize(st);
    CU_ASSERT_EQUAL(sqlite3_exec(db, DROP_TRIGGERS, NULL, NULL, &saved), SQLITE_OK);
    rc = sqlite3_exec(db, sql, NULL, NULL, &saved);
    if (rc != SQLITE_OK)
        fprintf(stderr, "tamper sql failed: %s\n", saved ? saved : "?");
    CU_ASSERT_EQUAL(rc, SQLITE_OK);
    sqlite3_free(saved);
    saved = NULL;
    /* Triggers back (those never dropped answer "already exists"). */
    for (char *p = restore, *e; (e = strstr(p, "END;")) != NULL; p = e + 4) {
        char one[2048];
        snprintf(one, sizeof(one), "%.*s", (int)(e + 4 - p), p);
        sqlite3_exec(db, one, NULL, NULL, NULL);
    }
    sqlite3_close(db);
    free(restore);

    rc = cloud_ledger_verify_path(path, r);
    CU_ASSERT_EQUAL(cloud_ledger_open(path, &l), NU_OK);
    if (l) {
        CU_ASSERT_EQUAL(cloud_ledger_verify(l, &r2), rc);
        CU_ASSERT_EQUAL(r2.problems, r->problems);
        cloud_ledger_close(l);
    }
    CU_ASSERT_EQUAL(r->schema_ok, 1); /* the triggers are back: only the edit is left */
    return rc;
}

static void test_tamper_audit_payload(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path,
                           "UPDATE audit_events SET payload = replace(payload, 'prog-1',"
                           " 'prog-2') WHERE seq = 5",
                           &r),
                    NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 0);
    CU_ASSERT_EQUAL(r.first_bad_seq, 5);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "seq 5"));
}

static void test_tamper_audit_rehashed_row(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1], hx[65], sql[256];
    struct cloud_ledger_verify_report r;
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    uint8_t h[32];

    /* An edited row given a correct hash of its own still breaks the next link. */
    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL_FATAL(sqlite3_open(path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL_FATAL(sqlite3_prepare_v2(db,
                                             "SELECT ts, kind, actor, job_id, payload,"
                                             " prev_hash FROM audit_events WHERE seq = 4",
                                             -1, &st, NULL),
                          SQLITE_OK);
    CU_ASSERT_EQUAL_FATAL(sqlite3_step(st), SQLITE_ROW);
    CU_ASSERT_EQUAL(
        cloud_ledger_event_hash(
            sqlite3_column_blob(st, 5), 4, (uint64_t)sqlite3_column_int64(st, 0) + 1,
            (const char *)sqlite3_column_text(st, 1), (size_t)sqlite3_column_bytes(st, 1),
            (const char *)sqlite3_column_text(st, 2), (size_t)sqlite3_column_bytes(st, 2),
            (const char *)sqlite3_column_text(st, 3), (size_t)sqlite3_column_bytes(st, 3),
            (const char *)sqlite3_column_text(st, 4), (size_t)sqlite3_column_bytes(st, 4), h),
        NU_OK);
    sqlite3_finalize(st);
    sqlite3_close(db);
    hex(h, 32, hx);
    snprintf(sql, sizeof(sql), "UPDATE audit_events SET ts = ts + 1, hash = x'%s' WHERE seq = 4",
             hx);
    CU_ASSERT_EQUAL(tamper(path, sql, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 0);
    CU_ASSERT_EQUAL(r.first_bad_seq, 5);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "seq 5: prev_hash"));
}

static void test_tamper_audit_deleted_row(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path, "DELETE FROM audit_events WHERE seq = 3", &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 0);
    CU_ASSERT_EQUAL(r.first_bad_seq, 3);
}

static void test_tamper_audit_tail_cut(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    /* The last event is a cert.issued: the cut shows in the head and the pairing. */
    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path,
                           "DELETE FROM audit_events WHERE seq = (SELECT max(seq) FROM"
                           " audit_events)",
                           &r),
                    NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 0);
    CU_ASSERT_EQUAL(r.certs_ok, 0);
}

static void test_tamper_certificate_deleted(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1], sql[256];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    snprintf(sql, sizeof(sql), "DELETE FROM certificates WHERE serial = '%s'", serial);
    CU_ASSERT_EQUAL(tamper(path, sql, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.certs_ok, 0);
    CU_ASSERT_EQUAL(r.counts_ok, 0);
    CU_ASSERT_EQUAL(r.certificates, 2);
}

static void test_tamper_certificate_forged(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    /* A forger who also bumps both counters still lacks the chained event. */
    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path,
                           "INSERT INTO certificates (serial, job_id, device_uid,"
                           " pubkey_hash, pem, programmer_id, idempotency_key,"
                           " issued_at_ms, state) VALUES ('dead', 'job-1', x'0102',"
                           " zeroblob(32), 'pem', 'prog-1', x'00', 1, 'issued');"
                           "UPDATE jobs SET issued = issued + 1;"
                           "UPDATE job_allocations SET issued = issued + 1",
                           &r),
                    NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.counts_ok, 1);
    CU_ASSERT_EQUAL(r.certs_ok, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "dead"));
}

static void test_tamper_finding_is_sanitized(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path,
                           "INSERT INTO certificates (serial, job_id, device_uid,"
                           " pubkey_hash, pem, programmer_id, idempotency_key,"
                           " issued_at_ms, state) VALUES ('ab' || char(27) || '[2J',"
                           " 'job-1', x'0102', zeroblob(32), 'pem', 'prog-1', x'00', 1,"
                           " 'issued')",
                           &r),
                    NU_ERR_TAMPERED);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "ab?[2J"));
    CU_ASSERT_PTR_NULL(strchr(r.first_problem, 27));
}

static void test_tamper_certificate_edited(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1], sql[256];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    snprintf(sql, sizeof(sql),
             "UPDATE certificates SET pubkey_hash = zeroblob(32) WHERE serial"
             " = '%s'",
             serial);
    CU_ASSERT_EQUAL(tamper(path, sql, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.certs_ok, 0);
}

static void test_tamper_jobs_issued(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(tamper(path, "UPDATE jobs SET issued = 1", &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.certs_ok, 1);
    CU_ASSERT_EQUAL(r.counts_ok, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "job-1"));
}

static void test_tamper_triggers_dropped(void)
{
    char path[512], serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct cloud_ledger_verify_report r;

    tamper_fixture(path, sizeof(path), serial);
    CU_ASSERT_EQUAL(sql_exec(path, "DROP TRIGGER certificates_no_delete"), SQLITE_OK);
    CU_ASSERT_EQUAL(cloud_ledger_verify_path(path, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.schema_ok, 0);
    CU_ASSERT_EQUAL(r.chain_ok, 1);
    CU_ASSERT_EQUAL(r.events, 6); /* created, enrolled, job.created, 3 x cert.issued */
}

const struct nu_test_case audit_cases[] = {
    {"append and its limits", test_audit_append_limits},
    {"canonical hash vector", test_event_hash_vector},
    {"independent Python auditor agrees", test_python_auditor_agrees},
    {NULL, NULL},
};

const struct nu_test_case tamper_cases[] = {
    {"audit payload updated", test_tamper_audit_payload},
    {"audit row edited and rehashed", test_tamper_audit_rehashed_row},
    {"audit row deleted", test_tamper_audit_deleted_row},
    {"audit tail cut", test_tamper_audit_tail_cut},
    {"certificate deleted", test_tamper_certificate_deleted},
    {"certificate forged", test_tamper_certificate_forged},
    {"findings never carry control bytes", test_tamper_finding_is_sanitized},
    {"certificate key hash edited", test_tamper_certificate_edited},
    {"jobs.issued edited", test_tamper_jobs_issued},
    {"triggers dropped", test_tamper_triggers_dropped},
    {NULL, NULL},
};
