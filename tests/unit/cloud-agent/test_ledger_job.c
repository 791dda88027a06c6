/*
 * ledger jobs: create/get/list/control, and firmware delivery (schema 2):
 * job secrets, packages, access decisions, signed image records, v1 migration.
 */
#include "test_ledger_fix.h"

/* ------------------------------------------------------------------ jobs */

struct joblist {
    unsigned n;
    size_t allocs;
};

static int job_visit(void *ctx, const struct cloud_ledger_job *job,
                     const struct cloud_ledger_alloc *a, size_t n)
{
    struct joblist *jl = ctx;
    (void)job;
    (void)a;
    jl->n++;
    jl->allocs += n;
    return 0;
}

static int job_visit_stop(void *ctx, const struct cloud_ledger_job *job,
                          const struct cloud_ledger_alloc *a, size_t n)
{
    (void)ctx;
    (void)job;
    (void)a;
    (void)n;
    return 77;
}

static void test_job_create_get_list(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc a[2] = {alloc_of("prog-b", 4), alloc_of("prog-a", 6)};
    struct cloud_ledger_alloc out[4];
    struct cloud_ledger_job j;
    struct joblist jl = {0};
    size_t n = 0;
    struct evscan ev;

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-1", 10, T0 + 86400000, a, 2), NU_OK);
    CU_ASSERT_EQUAL(mk_job(l, "job-2", 10, 0, a, 1), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-1", &j, out, 4, &n), NU_OK);
    CU_ASSERT_STRING_EQUAL(j.job_id, "job-1");
    CU_ASSERT_STRING_EQUAL(j.firmware, "app-1.0.0");
    CU_ASSERT_STRING_EQUAL(j.subject_template, "CN={uid}");
    CU_ASSERT_STRING_EQUAL(j.created_by, "oem-1");
    CU_ASSERT_EQUAL(j.status, CLOUD_LEDGER_JOB_ACTIVE);
    CU_ASSERT_EQUAL(j.quota, 10);
    CU_ASSERT_EQUAL(j.issued, 0);
    CU_ASSERT_EQUAL(j.created_at_ms, T0);
    CU_ASSERT_EQUAL(j.expires_at_ms, T0 + 86400000);
    CU_ASSERT_EQUAL_FATAL(n, 2);
    CU_ASSERT_STRING_EQUAL(out[0].programmer_id, "prog-a"); /* ordered by id */
    CU_ASSERT_EQUAL(out[0].limit, 6);
    CU_ASSERT_STRING_EQUAL(out[1].programmer_id, "prog-b");
    /* A short allocation buffer still reports the full count. */
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-1", &j, out, 1, &n), NU_OK);
    CU_ASSERT_EQUAL(n, 2);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-9", &j, NULL, 0, NULL), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_job_list(l, job_visit, &jl), NU_OK);
    CU_ASSERT_EQUAL(jl.n, 2);
    CU_ASSERT_EQUAL(jl.allocs, 3);
    CU_ASSERT_EQUAL(cloud_ledger_job_list(l, job_visit_stop, NULL), 77);
    /* Still usable after a visitor stopped the walk. */
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-2", &j, NULL, 0, NULL), NU_OK);

    ev = events(l, "job.created");
    CU_ASSERT_EQUAL(ev.count, 2);
    CU_ASSERT_STRING_EQUAL(ev.last_job, "job-2");
    CU_ASSERT_STRING_EQUAL(ev.last_payload,
                           "{\"firmware\":\"app-1.0.0\",\"quota\":10,\"expires_at_ms\":0,"
                           "\"subject_template\":\"CN={uid}\",\"allocations\":[{\"programmer\":"
                           "\"prog-b\",\"limit\":4}]}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_job_create_refusals(void)
{
    char path[512], long_id[100];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_alloc ok = alloc_of("prog-1", 5);
    struct cloud_ledger_alloc two[2] = {alloc_of("prog-1", 6), alloc_of("prog-2", 5)};
    struct cloud_ledger_alloc dup[2] = {alloc_of("prog-1", 1), alloc_of("prog-1", 1)};
    struct cloud_ledger_alloc ghost = alloc_of("ghost", 1);
    struct cloud_ledger_alloc gone = alloc_of("prog-x", 1);
    struct cloud_ledger_alloc zero = alloc_of("prog-1", 0);
    struct cloud_ledger_job_spec s = {"job-t", "app-1.0.0", "bad\x01template", 5,  0,
                                      &ok,     1,           "oem-1",           T0, NULL};
    uint64_t seq;

    CU_ASSERT_EQUAL(enroll(l, "prog-1"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-2"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-x"), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-x", "lost", "oem-1", T0), NU_OK);
    seq = head_seq(l);

    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, two, 2), NU_ERR_INVALID_ARG); /* 11 > 10 */
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, dup, 2), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, &ghost, 1), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, &gone, 1), NU_ERR_REVOKED);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, &zero, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 0, 0, &ok, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, T0, &ok, 1), NU_ERR_INVALID_ARG); /* expired */
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 10, 0, &ok, 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "job/a", 10, 0, &ok, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(mk_job(l, "", 10, 0, &ok, 1), NU_ERR_INVALID_ARG);
    memset(long_id, 'j', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    CU_ASSERT_EQUAL(mk_job(l, long_id, 10, 0, &ok, 1), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, NULL), NU_ERR_INVALID_ARG);
    /* Nothing was written, not even an event. */
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM jobs"), 0);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM job_allocations"), 0);

    CU_ASSERT_EQUAL(mk_job(l, "job-a", 11, 0, two, 2), NU_OK); /* sum == quota is fine */
    CU_ASSERT_EQUAL(mk_job(l, "job-a", 11, 0, two, 2), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1);
    cloud_ledger_close(l);
}

static void test_job_control_transitions(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_job j;
    struct evscan ev;

    std_setup(l, 10, 10);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_RESUME, "oem-1", T0, &j),
                    NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, &j),
                    NU_OK);
    CU_ASSERT_EQUAL(j.status, CLOUD_LEDGER_JOB_PAUSED);
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_PAUSED);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, NULL),
                    NU_ERR_STATE);
    CU_ASSERT_EQUAL(
        cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_RESUME, "oem-1", T0, NULL), NU_OK);
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_ACTIVE);
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", CLOUD_LEDGER_JOB_CLOSE, "oem-1", T0, NULL),
                    NU_OK);
    CU_ASSERT_EQUAL(job_of(l, "job-1").status, CLOUD_LEDGER_JOB_CLOSED);
    for (int a = CLOUD_LEDGER_JOB_PAUSE; a <= CLOUD_LEDGER_JOB_CLOSE; a++)
        CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-1", (enum cloud_ledger_job_action)a,
                                                 "oem-1", T0, NULL),
                        NU_ERR_STATE); /* closed is final */
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-9", CLOUD_LEDGER_JOB_PAUSE, "oem-1", T0, NULL),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(
        cloud_ledger_job_control(l, "job-1", (enum cloud_ledger_job_action)9, "oem-1", T0, NULL),
        NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(events(l, "job.paused").count, 1);
    CU_ASSERT_EQUAL(events(l, "job.resumed").count, 1);
    ev = events(l, "job.closed");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"from\":\"active\",\"to\":\"closed\"}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* ------------------------------------------- firmware delivery (schema 2) */

static void fill(uint8_t *b, size_t n, uint8_t seed)
{
    for (size_t i = 0; i < n; i++)
        b[i] = (uint8_t)(seed + 7 * i);
}

/* A job "job-fw" with programmers ids[0..n) (enrolled here), one package
 * and token each; tokens[i] = "token-<i>". */
struct fwjob {
    struct cloud_ledger_alloc alloc[3];
    struct cloud_ledger_job_package pkg[3];
    uint8_t bytes[3][100];
    struct cloud_ledger_job_secrets sec;
    struct cloud_ledger_job_spec spec;
};

static void fwjob_make(struct fwjob *f, const char *job, const char *const *ids, size_t n)
{
    memset(f, 0, sizeof(*f));
    for (size_t i = 0; i < n; i++) {
        char token[32];
        f->alloc[i] = alloc_of(ids[i], 2);
        snprintf(token, sizeof(token), "token-%u", (unsigned)i);
        nu_sha256(token, strlen(token), f->pkg[i].token_hash);
        fill(f->bytes[i], sizeof(f->bytes[i]), (uint8_t)(i + 1));
        f->pkg[i].package = f->bytes[i];
        f->pkg[i].package_len = sizeof(f->bytes[i]);
    }
    fill(f->sec.firmware_key, sizeof(f->sec.firmware_key), 0x40);
    fill(f->sec.image_digest, sizeof(f->sec.image_digest), 0x80);
    fill(f->sec.request_hash, sizeof(f->sec.request_hash), 0xc0);
    f->sec.image_size = 1234;
    f->sec.packages = f->pkg;
    f->spec = (struct cloud_ledger_job_spec){
        .job_id = job,
        .firmware = "app-1.0.0",
        .subject_template = "CN={uid}",
        .quota = 10,
        .alloc = f->alloc,
        .n_alloc = n,
        .actor = "oem",
        .now_ms = T0,
        .secrets = &f->sec,
    };
}

struct pkglist {
    unsigned n;
    char ids[4][CLOUD_LEDGER_ID_MAX + 1];
    size_t lens[4];
    uint8_t first[4];
};

static int pkglist_visit(void *ctx, const char *id, const uint8_t *b, size_t len)
{
    struct pkglist *p = ctx;
    if (p->n < 4) {
        snprintf(p->ids[p->n], sizeof(p->ids[p->n]), "%s", id);
        p->lens[p->n] = len;
        p->first[p->n] = b[0];
    }
    p->n++;
    return 0;
}

static int access_rc(struct cloud_ledger *l, const char *job, const char *prog, const char *token)
{
    struct cloud_ledger_job j;
    struct cloud_ledger_job_keys k;
    return cloud_ledger_firmware_access(l, job, prog, (const uint8_t *)token, strlen(token), &j,
                                        &k);
}

static void test_fw_schema_v2(void)
{
    if (sqlite_only())
        return;
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    static const char *const cols[][9] = {
        {"firmware_images", "name", "image_digest", "image_size", "security_counter",
         "request_hash", "signed_by", "signed_at_ms", NULL},
        {"job_keys", "job_id", "firmware_key", "image_digest", "image_size", "request_hash",
         "created_at_ms", NULL},
        {"job_packages", "job_id", "programmer_id", "position", "token_hash", "package", NULL},
        {"programmers", "vendor_serial", "firmware_measurement", NULL},
        {"enroll_nonces", "nonce", "programmer_id", "created_at_ms", "expires_at_ms", "used_at_ms",
         NULL},
        {"revoked_measurements", "measurement", "reason", "revoked_by", "revoked_at_ms", NULL},
        {"firmware_blobs", "name", "image", NULL},
        {"device_crl", "id", "crl_number", "der", NULL},
        {"cert_superseded", "serial", "job_id", "by_serial", "lease_id", "superseded_at_ms", NULL},
    };

    CU_ASSERT_EQUAL(CLOUD_LEDGER_SCHEMA_VERSION, 7);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 7);
    for (size_t t = 0; t < sizeof(cols) / sizeof(cols[0]); t++) {
        for (size_t c = 1; cols[t][c]; c++) {
            char sql[256];
            snprintf(sql, sizeof(sql),
                     "SELECT count(*) FROM pragma_table_info('%s') WHERE name = '%s'", cols[t][0],
                     cols[t][c]);
            CU_ASSERT_EQUAL(sql_int(path, sql), 1);
        }
    }
    /* A fresh file is created at once at version 7: no migration event. */
    CU_ASSERT_EQUAL(events(l, "ledger.migrated").count, 0);
    CU_ASSERT_STRING_EQUAL(events(l, "ledger.created").last_payload, "{\"schema\":7}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* Turn a version-7 file back into what version 1 wrote (the certificates
 * table keeps the rebuild of 6, which version 1's reader does not mind). */
static const char *const DOWNGRADE_TO_V1 =
    "DROP TRIGGER cert_superseded_fixed; DROP TRIGGER cert_superseded_no_delete;"
    "DROP TABLE cert_superseded;"
    "DROP TRIGGER revoked_measurements_fixed; DROP TRIGGER revoked_measurements_no_delete;"
    "DROP TRIGGER firmware_blobs_fixed; DROP TRIGGER firmware_blobs_no_delete;"
    "DROP TABLE device_crl; DROP TABLE firmware_blobs; DROP TABLE revoked_measurements;"
    "DROP TABLE lease_certs; DROP TABLE leases; DROP TABLE lease_policies;"
    "DROP TABLE enroll_nonces; ALTER TABLE programmers DROP COLUMN vendor_serial;"
    "ALTER TABLE programmers DROP COLUMN firmware_measurement;"
    "DROP TRIGGER firmware_images_fixed; DROP TRIGGER firmware_images_no_delete;"
    "DROP TRIGGER job_keys_fixed; DROP TRIGGER job_keys_no_delete;"
    "DROP TRIGGER job_packages_fixed; DROP TRIGGER job_packages_no_delete;"
    "DROP TABLE job_packages; DROP TABLE job_keys; DROP TABLE firmware_images;"
    "PRAGMA user_version = 1;";

static void test_fw_migrate_from_v1(void)
{
    if (sqlite_only())
        return;
    char path[512];
    struct cloud_ledger_verify_report r;
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    uint64_t seq;

    std_setup(l, 10, 5);
    seq = head_seq(l);
    cloud_ledger_close(l);
    CU_ASSERT_EQUAL_FATAL(sql_exec(path, DOWNGRADE_TO_V1), SQLITE_OK);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 1);
    /* An auditor can check a version-1 file before any cloud upgraded it. */
    CU_ASSERT_EQUAL(cloud_ledger_verify_target(path, NULL, NULL, &r), NU_OK);
    CU_ASSERT_EQUAL(r.schema_ok, 1);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 1); /* read-only: not migrated */

    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_EQUAL(sql_int(path, "PRAGMA user_version"), 7);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM job_keys"), 0);
    CU_ASSERT_EQUAL(job_of(l, "job-1").quota, 10); /* data kept */
    struct evscan ev = events(l, "ledger.migrated");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_EQUAL(ev.last_seq, seq + 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"from\":1,\"to\":7}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
    /* Opening again migrates nothing. */
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_EQUAL(events(l, "ledger.migrated").count, 1);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1);
    cloud_ledger_close(l);
}

static void test_fw_job_secrets(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    static const char *const ids[] = {"prog-b", "prog-a"}; /* not sorted: order is kept */
    struct cloud_ledger_job_keys k;
    struct cloud_ledger_job j;
    struct pkglist pl = {0};
    struct fwjob f;
    struct cloud_ledger_alloc a = alloc_of("prog-a", 1);
    uint8_t big[CLOUD_LEDGER_FW_TOKEN_MAX + 1];

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-c"), NU_OK);
    fwjob_make(&f, "job-fw", ids, 2);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_job_create(l, &f.spec), NU_OK);

    CU_ASSERT_EQUAL(cloud_ledger_job_keys_get(l, "job-fw", &k), NU_OK);
    CU_ASSERT_EQUAL(memcmp(k.firmware_key, f.sec.firmware_key, 32), 0);
    CU_ASSERT_EQUAL(memcmp(k.image_digest, f.sec.image_digest, 32), 0);
    CU_ASSERT_EQUAL(memcmp(k.request_hash, f.sec.request_hash, 32), 0);
    CU_ASSERT_EQUAL(k.image_size, 1234);
    CU_ASSERT_EQUAL(cloud_ledger_job_packages(l, "job-fw", pkglist_visit, &pl), NU_OK);
    CU_ASSERT_EQUAL(pl.n, 2);
    CU_ASSERT_STRING_EQUAL(pl.ids[0], "prog-b");
    CU_ASSERT_STRING_EQUAL(pl.ids[1], "prog-a");
    CU_ASSERT_EQUAL(pl.lens[0], 100);
    CU_ASSERT_EQUAL(pl.first[0], 1);
    CU_ASSERT_EQUAL(pl.first[1], 2);
    /* The token itself is nowhere in the file, only its hash. */
    if (!ledger_on_pg)
        CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM job_packages WHERE"
                                      " instr(token_hash, CAST('token-0' AS BLOB)) > 0"),
                        0);

    /* Event: digest, size, and per package the token id and package hash. */
    struct evscan ev = events(l, "job.packages");
    char want[160], hex[65];
    uint8_t h[32];
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_job, "job-fw");
    nu_hex_encode(f.sec.image_digest, 32, hex, sizeof(hex));
    snprintf(want, sizeof(want), "{\"image_digest\":\"%s\",\"image_size\":1234,\"packages\":[",
             hex);
    CU_ASSERT_EQUAL(strncmp(ev.last_payload, want, strlen(want)), 0);
    nu_hex_encode(f.pkg[0].token_hash, 8, hex, sizeof(hex));
    snprintf(want, sizeof(want), "{\"programmer\":\"prog-b\",\"token_id\":\"%s\"", hex);
    CU_ASSERT_PTR_NOT_NULL(strstr(ev.last_payload, want));
    nu_sha256(f.bytes[1], sizeof(f.bytes[1]), h);
    nu_hex_encode(h, 32, hex, sizeof(hex));
    CU_ASSERT_PTR_NOT_NULL(strstr(ev.last_payload, hex));

    /* Access decisions. */
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-b", "token-0"), NU_OK);
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-a", "token-1"), NU_OK);
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-a", "token-0"), NU_ERR_TOKEN); /* b's token */
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-a", "token-1x"), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(access_rc(l, "job-fw", "prog-c", "token-0"), NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(access_rc(l, "job-none", "prog-a", "token-1"), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(access_rc(l, "bad id!", "prog-a", "token-1"), NU_ERR_INVALID_ARG);
    memset(big, 'x', sizeof(big));
    CU_ASSERT_EQUAL(cloud_ledger_firmware_access(l, "job-fw", "prog-a", big, sizeof(big), &j, &k),
                    NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_access(l, "job-fw", "prog-a", big, 0, &j, &k),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(
        cloud_ledger_firmware_access(l, "job-fw", "prog-a", (const uint8_t *)"token-1", 7, &j, &k),
        NU_OK);
    CU_ASSERT_STRING_EQUAL(j.job_id, "job-fw");
    CU_ASSERT_EQUAL(j.status, CLOUD_LEDGER_JOB_ACTIVE);
    CU_ASSERT_EQUAL(memcmp(k.firmware_key, f.sec.firmware_key, 32), 0);
    /* The status is the caller's business: a closed job still resolves. */
    CU_ASSERT_EQUAL(cloud_ledger_job_control(l, "job-fw", CLOUD_LEDGER_JOB_CLOSE, "oem", T0, NULL),
                    NU_OK);
    CU_ASSERT_EQUAL(
        cloud_ledger_firmware_access(l, "job-fw", "prog-a", (const uint8_t *)"token-1", 7, &j, &k),
        NU_OK);
    CU_ASSERT_EQUAL(j.status, CLOUD_LEDGER_JOB_CLOSED);

    /* A job created without secrets has none. */
    CU_ASSERT_EQUAL(mk_job(l, "job-plain", 3, 0, &a, 1), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_job_keys_get(l, "job-plain", &k), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(access_rc(l, "job-plain", "prog-a", "token-1"), NU_ERR_NOT_AUTHORIZED);
    pl.n = 0;
    CU_ASSERT_EQUAL(cloud_ledger_job_packages(l, "job-plain", pkglist_visit, &pl), NU_OK);
    CU_ASSERT_EQUAL(pl.n, 0);
    CU_ASSERT_EQUAL(events(l, "job.packages").count, 1);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static void test_fw_job_secrets_atomic(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    static const char *const ids[] = {"prog-a", "prog-b"};
    struct cloud_ledger_job_keys k;
    struct cloud_ledger_job j;
    struct fwjob f;
    uint64_t seq;
    uint8_t huge_byte = 0;

    CU_ASSERT_EQUAL(enroll(l, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(enroll(l, "prog-b"), NU_OK);
    seq = head_seq(l);
    fwjob_make(&f, "job-x", ids, 2);
    f.pkg[1].package_len = 0;
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_INVALID_ARG);
    f.pkg[1].package_len = CLOUD_LEDGER_PACKAGE_MAX + 1;
    f.pkg[1].package = &huge_byte; /* never read: refused on the length */
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_TOO_LARGE);
    f.pkg[1].package = NULL;
    f.pkg[1].package_len = 10;
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_INVALID_ARG);
    fwjob_make(&f, "job-x", ids, 2);
    f.sec.image_size = 0;
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_job_get(l, "job-x", &j, NULL, 0, NULL), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(head_seq(l), seq);

    /* A failure after the job row (revoked programmer) leaves no key either. */
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-b", "lost", "oem", T0), NU_OK);
    seq = head_seq(l);
    fwjob_make(&f, "job-x", ids, 2);
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_REVOKED);
    CU_ASSERT_EQUAL(cloud_ledger_job_keys_get(l, "job-x", &k), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM job_packages"), 0);
    CU_ASSERT_EQUAL(head_seq(l), seq);

    /* The same id twice: EXISTS, the first job's key stays. */
    fwjob_make(&f, "job-x", ids, 1);
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_OK);
    seq = head_seq(l);
    f.sec.firmware_key[0] ^= 0xff;
    CU_ASSERT_EQUAL(cloud_ledger_job_create(l, &f.spec), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(cloud_ledger_job_keys_get(l, "job-x", &k), NU_OK);
    CU_ASSERT_EQUAL(k.firmware_key[0], 0x40);

    if (sqlite_only()) { /* the trigger checks below are written in SQLite's SQL */
        cloud_ledger_close(l);
        return;
    }
    /* Stored secrets do not change, and are not deleted (defense in depth). */
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE job_keys SET firmware_key = zeroblob(32)"),
                        SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM job_keys"), SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE job_packages SET token_hash = zeroblob(32)"),
                        SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM job_packages"), SQLITE_OK);
    CU_ASSERT_EQUAL(access_rc(l, "job-x", "prog-a", "token-0"), NU_OK);
    CU_ASSERT_TRUE(verify_ok(l));
    /* A dropped trigger is a verify finding. */
    CU_ASSERT_EQUAL(sql_exec(path, "DROP TRIGGER job_keys_fixed"), SQLITE_OK);
    struct cloud_ledger_verify_report r;
    CU_ASSERT_EQUAL(cloud_ledger_verify(l, &r), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(r.schema_ok, 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.first_problem, "job_keys_fixed"));
    cloud_ledger_close(l);
}

static void test_fw_firmware_records(void)
{
    char path[512], hex[65], want[256];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_firmware fw, got;
    uint64_t seq;

    memset(&fw, 0, sizeof(fw));
    snprintf(fw.name, sizeof(fw.name), "blinky-1.2.3");
    fill(fw.image_digest, 32, 3);
    fill(fw.request_hash, 32, 9);
    fw.image_size = 1048960;
    fw.security_counter = 7;
    snprintf(fw.signed_by, sizeof(fw.signed_by), "oem");
    fw.signed_at_ms = T0 + 5;
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "blinky-1.2.3", &got), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "blinky-1.2.3", &got), NU_OK);
    CU_ASSERT_EQUAL(memcmp(&got, &fw, sizeof(fw)), 0);

    struct evscan ev = events(l, "firmware.signed");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_EQUAL(ev.last_ts, T0 + 5);
    nu_hex_encode(fw.image_digest, 32, hex, sizeof(hex));
    snprintf(want, sizeof(want),
             "{\"name\":\"blinky-1.2.3\",\"digest\":\"%s\",\"size\":1048960,"
             "\"security_counter\":7}",
             hex);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, want);

    /* A version is recorded once. */
    seq = head_seq(l);
    fw.image_digest[0] ^= 1;
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "blinky-1.2.3", &got), NU_OK);
    CU_ASSERT_NOT_EQUAL(got.image_digest[0], fw.image_digest[0]);
    /* Bad input changes nothing. */
    snprintf(fw.name, sizeof(fw.name), "bad/name");
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_INVALID_ARG);
    snprintf(fw.name, sizeof(fw.name), "ok-1.0.0");
    fw.image_size = 0;
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_INVALID_ARG);
    fw.image_size = 1;
    fw.signed_by[0] = '\0';
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_INVALID_ARG);
    memset(fw.signed_by, 'a', sizeof(fw.signed_by)); /* not terminated */
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "no such!", &got), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(head_seq(l), seq);
    /* The kinds the ledger writes cannot be forged from outside. */
    struct cloud_ledger_event fake = {
        .kind = "firmware.signed", .actor = "oem", .payload = "{}", .payload_len = 2, .ts_ms = T0};
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &fake, NULL), NU_ERR_INVALID_ARG);
    fake.kind = "job.packages";
    CU_ASSERT_EQUAL(cloud_ledger_audit_append(l, &fake, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "UPDATE firmware_images SET image_size = 1"), SQLITE_OK);
    CU_ASSERT_NOT_EQUAL(sql_exec(path, "DELETE FROM firmware_images"), SQLITE_OK);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

const struct nu_test_case job_cases[] = {
    {"create, get, list", test_job_create_get_list},
    {"create refusals change nothing", test_job_create_refusals},
    {"control transitions", test_job_control_transitions},
    {NULL, NULL},
};

const struct nu_test_case fw_cases[] = {
    {"schema 2 tables on a fresh file", test_fw_schema_v2},
    {"version 1 file: verifiable, then migrated with an event", test_fw_migrate_from_v1},
    {"job secrets: stored, listed, access decisions", test_fw_job_secrets},
    {"job secrets are atomic and immutable", test_fw_job_secrets_atomic},
    {"signed image records", test_fw_firmware_records},
    {NULL, NULL},
};
