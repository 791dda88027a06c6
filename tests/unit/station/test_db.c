/* station.db: the import rules, the operator's job commands, the journal and the report. */
#include "station_db.h"
#include "station_event.h"
#include "station_fixture.h"
#include "station_import.h"
#include "station_report.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char tmp[256], dir[300];
static struct nu_p256_key *pkg_key, *prog_key;
static struct nu_signer signer;
static uint8_t prog_pub[NU_P256_PUB_LEN];
static int case_no;

static int setup(void)
{
    if (nu_test_tmpdir("stationdb", tmp, sizeof(tmp)))
        return -1;
    if (nu_p256_key_generate(&pkg_key) || nu_p256_key_generate(&prog_key) ||
        nu_p256_key_signer(pkg_key, &signer) || nu_p256_key_pub(prog_key, prog_pub))
        return -1;
    return 0;
}

static int teardown(void)
{
    nu_p256_key_destroy(pkg_key);
    nu_p256_key_destroy(prog_key);
    nu_test_rmtree(tmp);
    return 0;
}

/* A fresh state directory per test. */
static void fresh(void)
{
    snprintf(dir, sizeof(dir), "%s/case%d", tmp, ++case_no);
    CU_ASSERT_EQUAL_FATAL(nu_mkdirs(dir, 0755), NU_OK);
}

static void pkg_file(const struct sf_pkg_opts *o, const char *name, char *path, size_t cap)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(sf_package(o, &signer, prog_pub, &buf, &len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(sf_write(tmp, name, buf, len, path, cap), NU_OK);
    free(buf);
}

static int files_in_packages(void)
{
    char path[400];
    snprintf(path, sizeof(path), "%s/station/packages", dir);
    DIR *d = opendir(path);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += e->d_name[0] != '.';
    if (d)
        closedir(d);
    return n;
}

static int count_packages_cb(void *ctx, const struct station_package *p)
{
    (*(int *)ctx)++;
    return NU_OK;
}

static int packages(struct station_db *db)
{
    int n = 0;
    CU_ASSERT_EQUAL(station_db_packages(db, NULL, count_packages_cb, &n), NU_OK);
    return n;
}

static void test_import_records_and_copies(void)
{
    char path[512];
    struct station_db *db = NULL;
    struct station_pkg p;
    struct station_job job;
    int conflict = -1;
    fresh();
    struct sf_pkg_opts o = {.job_id = "J1", .programmer_id = "prog-1", .limit = 8};
    pkg_file(&o, "ok.nspkg", path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, path, nu_time_ms(), &p, &conflict), NU_OK);
    CU_ASSERT_EQUAL(conflict, STATION_IMPORT_NEW);
    CU_ASSERT_EQUAL(packages(db), 1);
    CU_ASSERT_EQUAL(files_in_packages(), 1);
    CU_ASSERT_EQUAL(station_db_job_get(db, "J1", &job), NU_OK);
    CU_ASSERT_EQUAL(job.state, STATION_JOB_IMPORTED);
    CU_ASSERT_STRING_EQUAL(job.firmware, "blinky-1.0.0");
    /* The copy is byte for byte the operator's file. */
    char copy[600], hex[33];
    nu_hex_encode(p.package_id, 16, hex, sizeof(hex));
    snprintf(copy, sizeof(copy), "%s/station/packages/%s.nspkg", dir, hex);
    CU_ASSERT_EQUAL(nu_test_sh("cmp -s '%s' '%s'", path, copy), 0);
    station_db_close(db);
}

static void test_duplicates_refused_and_reimport_after_restart_changes_nothing(void)
{
    char path[512], same_alloc[512];
    struct station_db *db = NULL;
    struct station_pkg p;
    int conflict = 0;
    fresh();
    struct sf_pkg_opts o = {.job_id = "J2", .programmer_id = "prog-1", .limit = 8};
    pkg_file(&o, "first.nspkg", path, sizeof(path));
    pkg_file(&o, "second.nspkg", same_alloc, sizeof(same_alloc)); /* new package id */
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, path, nu_time_ms(), &p, &conflict), NU_OK);
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, path, nu_time_ms(), &p, &conflict),
                    NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(conflict, STATION_IMPORT_SAME_PACKAGE);
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, same_alloc, nu_time_ms(), &p, &conflict),
                    NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(conflict, STATION_IMPORT_SAME_ALLOCATION);
    CU_ASSERT_EQUAL(packages(db), 1);
    CU_ASSERT_EQUAL(files_in_packages(), 1);
    /* The job runs; the station restarts; the operator imports the same file again. */
    CU_ASSERT_EQUAL(station_db_job_command(db, "J2", STATION_JOB_STARTED, 1, NULL), NU_OK);
    station_db_close(db);
    db = NULL;
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, path, nu_time_ms(), &p, &conflict),
                    NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(conflict, STATION_IMPORT_SAME_PACKAGE);
    struct station_job job;
    CU_ASSERT_EQUAL(station_db_job_get(db, "J2", &job), NU_OK);
    CU_ASSERT_EQUAL(job.state, STATION_JOB_STARTED);
    CU_ASSERT_EQUAL(job.generation, 1);
    CU_ASSERT_EQUAL(packages(db), 1);
    CU_ASSERT_EQUAL(files_in_packages(), 1);
    /* Another programmer's package for the same job is welcome. */
    o.programmer_id = "prog-2";
    pkg_file(&o, "third.nspkg", path, sizeof(path));
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, path, nu_time_ms(), &p, &conflict), NU_OK);
    CU_ASSERT_EQUAL(packages(db), 2);
    station_db_close(db);
}

static void test_refused_packages_leave_no_trace(void)
{
    char path[512];
    struct station_db *db = NULL;
    struct station_pkg p;
    fresh();
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    /* tampered */
    uint8_t *buf = NULL;
    size_t len = 0;
    struct sf_pkg_opts o = {.job_id = "J3", .programmer_id = "prog-1", .limit = 8};
    CU_ASSERT_EQUAL_FATAL(sf_package(&o, &signer, prog_pub, &buf, &len), NU_OK);
    buf[len / 2] ^= 0x20;
    CU_ASSERT_EQUAL(sf_write(tmp, "tampered.nspkg", buf, len, path, sizeof(path)), NU_OK);
    int rc = station_import(dir, db, signer.pub, path, nu_time_ms(), &p, NULL);
    CU_ASSERT_TRUE(rc == NU_ERR_TAMPERED || rc == NU_ERR_DECODE);
    free(buf);
    /* expired */
    o.expires_at_ms = nu_time_ms() - 1000;
    o.created_at_ms = o.expires_at_ms - 1000;
    pkg_file(&o, "expired.nspkg", path, sizeof(path));
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, path, nu_time_ms(), &p, NULL),
                    NU_ERR_EXPIRED);
    /* garbage, missing */
    CU_ASSERT_EQUAL(sf_write(tmp, "garbage.nspkg", (const uint8_t *)"hello", 5, path, sizeof(path)),
                    NU_OK);
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, path, nu_time_ms(), &p, NULL),
                    NU_ERR_DECODE);
    CU_ASSERT_EQUAL(
        station_import(dir, db, signer.pub, "/nonexistent.nspkg", nu_time_ms(), &p, NULL),
        NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(packages(db), 0);
    CU_ASSERT_EQUAL(files_in_packages(), 0);
    struct station_job job;
    CU_ASSERT_EQUAL(station_db_job_get(db, "J3", &job), NU_ERR_NOT_FOUND);
    station_db_close(db);
}

static void test_job_commands(void)
{
    char path[512];
    struct station_db *db = NULL;
    struct station_pkg p;
    struct station_job job;
    int changed = -1;
    fresh();
    struct sf_pkg_opts o = {.job_id = "J4", .programmer_id = "prog-1", .limit = 2};
    pkg_file(&o, "j4.nspkg", path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    CU_ASSERT_EQUAL_FATAL(station_import(dir, db, signer.pub, path, 1, &p, NULL), NU_OK);
    CU_ASSERT_EQUAL(station_db_job_command(db, "nope", STATION_JOB_STARTED, 2, &changed),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(station_db_job_command(db, "J4", STATION_JOB_DONE, 2, &changed),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(station_db_job_command(db, "J4", STATION_JOB_STARTED, 2, &changed), NU_OK);
    CU_ASSERT_EQUAL(changed, 1);
    CU_ASSERT_EQUAL(station_db_job_command(db, "J4", STATION_JOB_STARTED, 3, &changed), NU_OK);
    CU_ASSERT_EQUAL(changed, 0);
    CU_ASSERT_EQUAL(station_db_package_finished(db, p.package_id, 1), NU_OK);
    CU_ASSERT_EQUAL(station_db_job_command(db, "J4", STATION_JOB_STOPPED, 4, &changed), NU_OK);
    CU_ASSERT_EQUAL(changed, 1);
    CU_ASSERT_EQUAL(station_db_job_get(db, "J4", &job), NU_OK);
    CU_ASSERT_EQUAL(job.state, STATION_JOB_STOPPED);
    CU_ASSERT_EQUAL(job.generation, 2);
    CU_ASSERT_EQUAL(job.stopped_at_ms, 4);
    /* Restarting resumes: finished marks are cleared. */
    CU_ASSERT_EQUAL(station_db_job_command(db, "J4", STATION_JOB_STARTED, 5, &changed), NU_OK);
    CU_ASSERT_EQUAL(station_db_job_get(db, "J4", &job), NU_OK);
    CU_ASSERT_EQUAL(job.generation, 3);
    CU_ASSERT_EQUAL(job.started_at_ms, 5);
    CU_ASSERT_EQUAL(station_db_job_done(db, "J4", 6), NU_OK);
    CU_ASSERT_EQUAL(station_db_job_command(db, "J4", STATION_JOB_STOPPED, 7, &changed),
                    NU_ERR_STATE);
    CU_ASSERT_EQUAL(station_db_job_command(db, "J4", STATION_JOB_STARTED, 7, &changed),
                    NU_ERR_STATE);
    /* A done job takes no new package. */
    o.programmer_id = "prog-2";
    pkg_file(&o, "j4b.nspkg", path, sizeof(path));
    CU_ASSERT_EQUAL(station_import(dir, db, signer.pub, path, 8, &p, NULL), NU_ERR_STATE);
    CU_ASSERT_EQUAL(files_in_packages(), 1);
    station_db_close(db);
}

static void journal(struct station_db *db, const char *sender, uint64_t seq, const char *kind,
                    uint8_t uid, int outcome, uint64_t received, int *added)
{
    uint8_t *env = NULL;
    size_t len = 0;
    char topic[200];
    struct station_event ev;
    snprintf(topic, sizeof(topic), "nusec/v1/events/programmer/%s/%s", sender, kind);
    uint8_t u[8] = {0xaa, uid};
    CU_ASSERT_EQUAL_FATAL(sf_event(sender, seq, kind, "J5", u, sizeof(u), 1, outcome,
                                   outcome == 2 ? NU_ERR_TARGET : 0, NULL, &env, &len),
                          NU_OK);
    CU_ASSERT_EQUAL_FATAL(station_event_decode(topic, env, len, &ev, NULL), NU_OK);
    CU_ASSERT_EQUAL(station_db_journal_add(db, &ev, env, len, received, added), NU_OK);
    free(env);
}

static void test_journal_dedupes_and_counts(void)
{
    struct station_db *db = NULL;
    struct station_counts c;
    int added = -1;
    uint64_t n = 0;
    fresh();
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    journal(db, "prog-1", 100, "device.provisioned", 1, 1, 1000, &added);
    CU_ASSERT_EQUAL(added, 1);
    journal(db, "prog-1", 100, "device.provisioned", 1, 1, 1001, &added); /* QoS 1 duplicate */
    CU_ASSERT_EQUAL(added, 0);
    journal(db, "prog-1", 101, "device.provisioned", 2, 1, 2000, &added);
    journal(db, "prog-1", 102, "device.failed", 3, 2, 3000, &added);
    journal(db, "prog-2", 100, "device.provisioned", 4, 1, 4000,
            &added); /* same seq, other sender */
    CU_ASSERT_EQUAL(added, 1);
    journal(db, "prog-2", 101, "device.provisioned", 4, 1, 5000, &added); /* same device again */
    CU_ASSERT_EQUAL(station_db_journal_count(db, NULL, &n), NU_OK);
    CU_ASSERT_EQUAL(n, 5);
    CU_ASSERT_EQUAL(station_db_counts(db, "J5", NULL, 2000, &c), NU_OK);
    CU_ASSERT_EQUAL(c.done, 3);
    CU_ASSERT_EQUAL(c.failed, 1);
    CU_ASSERT_EQUAL(c.done_recent, 2); /* uid 2 and uid 4 received at >= 2000 */
    CU_ASSERT_EQUAL(c.first_ms, 1000);
    CU_ASSERT_EQUAL(c.last_ms, 5000);
    CU_ASSERT_EQUAL(station_db_counts(db, "J5", "prog-1", 0, &c), NU_OK);
    CU_ASSERT_EQUAL(c.done, 2);
    CU_ASSERT_EQUAL(c.failed, 1);
    CU_ASSERT_EQUAL(station_db_counts(db, "other", NULL, 0, &c), NU_OK);
    CU_ASSERT_EQUAL(c.done, 0);
    CU_ASSERT_EQUAL(c.first_ms, 0);
    station_db_close(db);
}

static void test_report_numbers_and_json(void)
{
    char path[512], out[512];
    struct station_db *db = NULL;
    struct station_pkg p;
    struct station_report *r = NULL;
    int added;
    fresh();
    struct sf_pkg_opts o = {.job_id = "J5", .programmer_id = "prog-1", .limit = 4};
    pkg_file(&o, "j5a.nspkg", path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    CU_ASSERT_EQUAL_FATAL(station_import(dir, db, signer.pub, path, 1, &p, NULL), NU_OK);
    o.programmer_id = "prog-2";
    o.limit = 6;
    pkg_file(&o, "j5b.nspkg", path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(station_import(dir, db, signer.pub, path, 1, &p, NULL), NU_OK);
    CU_ASSERT_EQUAL(station_db_job_command(db, "J5", STATION_JOB_STARTED, 2, NULL), NU_OK);
    CU_ASSERT_EQUAL(station_db_package_error(db, p.package_id, "NOT_AUTHORIZED: \"x\""), NU_OK);
    uint64_t now = nu_time_ms();
    journal(db, "prog-1", 1, "device.provisioned", 1, 1, now - 30000, &added);
    journal(db, "prog-1", 2, "device.provisioned", 2, 1, now - 20000, &added);
    journal(db, "prog-2", 1, "device.failed", 3, 2, now - 10000, &added);
    CU_ASSERT_EQUAL_FATAL(station_report_build(NULL, db, "J5", now, &r), NU_OK);
    CU_ASSERT_EQUAL_FATAL(r->n_jobs, 1);
    const struct station_report_job *j = &r->jobs[0];
    CU_ASSERT_EQUAL(j->limit, 10);
    CU_ASSERT_EQUAL(j->done, 2);
    CU_ASSERT_EQUAL(j->failed, 1);
    CU_ASSERT_EQUAL_FATAL(j->n_progs, 2);
    CU_ASSERT_STRING_EQUAL(j->progs[0].programmer_id, "prog-1");
    CU_ASSERT_STRING_EQUAL(j->progs[0].state, "unknown");
    CU_ASSERT_EQUAL(j->progs[0].done, 2);
    /* 2 devices over the 30 s since the first: 4 per minute, 2 left: 30 s. */
    CU_ASSERT_DOUBLE_EQUAL(j->progs[0].per_min, 4.0, 0.01);
    CU_ASSERT_EQUAL(j->progs[0].eta_s, 30);
    CU_ASSERT_EQUAL(j->progs[1].failed, 1);
    CU_ASSERT_EQUAL(j->progs[1].eta_s, -1);
    CU_ASSERT_STRING_EQUAL(j->progs[1].error, "NOT_AUTHORIZED: \"x\"");
    CU_ASSERT_FALSE(station_report_settled(r));
    CU_ASSERT_TRUE(station_report_failed(r));
    CU_ASSERT_FALSE(station_report_stuck(r)); /* prog-1 has no error: it may go on */
    snprintf(out, sizeof(out), "%s/report.json", tmp);
    FILE *f = fopen(out, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    station_report_json(r, f);
    fclose(f);
    CU_ASSERT_EQUAL(
        nu_test_sh("python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); "
                   "j=r[\"jobs\"][0]; p=j[\"programmers\"]; "
                   "assert (j[\"done\"], j[\"limit\"], j[\"failed\"]) == (2, 10, 1), j; "
                   "assert p[1][\"error\"] == \"NOT_AUTHORIZED: \\\"x\\\"\", p; "
                   "assert p[1][\"eta_s\"] is None and p[0][\"eta_s\"] == 30, p' %s",
                   out),
        0);
    station_report_free(r);
    CU_ASSERT_EQUAL(station_report_build(NULL, db, "nope", now, &r), NU_ERR_NOT_FOUND);
    CU_ASSERT_PTR_NULL(r);
    station_db_close(db);
}

static void test_programmer_rows(void)
{
    struct station_db *db = NULL;
    struct station_programmer p = {.programmer_id = "prog-9",
                                   .state = "idle",
                                   .job_id = "J",
                                   .limit = 5,
                                   .counter = 2,
                                   .sockets = 4,
                                   .status_seq = 77,
                                   .seen_at_ms = 10,
                                   .cloud_lost_ms = 1765000000123ull};
    struct station_programmer got;
    fresh();
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    CU_ASSERT_EQUAL(station_db_programmer_get(db, "prog-9", &got), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(station_db_programmer_put(db, &p, (const uint8_t *)"x", 1), NU_OK);
    snprintf(p.state, sizeof(p.state), "offline");
    CU_ASSERT_EQUAL(station_db_programmer_put(db, &p, NULL, 0), NU_OK);
    CU_ASSERT_EQUAL(station_db_programmer_get(db, "prog-9", &got), NU_OK);
    CU_ASSERT_STRING_EQUAL(got.state, "offline");
    CU_ASSERT_EQUAL(got.counter, 2);
    CU_ASSERT_EQUAL(got.status_seq, 77);
    CU_ASSERT_EQUAL(got.cloud_lost_ms, 1765000000123ull);
    char v[8];
    CU_ASSERT_EQUAL(station_db_meta_get(db, "schema", v, sizeof(v)), NU_OK);
    CU_ASSERT_STRING_EQUAL(v, "2");
    CU_ASSERT_EQUAL(station_db_meta_get(db, "nope", v, sizeof(v)), NU_ERR_NOT_FOUND);
    station_db_close(db);

    /* A station.db of schema 1 (no cloud link column) is migrated on open. */
    char path[400], cmd[600];
    snprintf(path, sizeof(path), "%s/station/station.db", dir);
    snprintf(cmd, sizeof(cmd),
             "sqlite3 '%s' \"ALTER TABLE programmers DROP COLUMN cloud_lost_ms;"
             " UPDATE meta SET value='1' WHERE key='schema'\"",
             path);
    CU_ASSERT_EQUAL_FATAL(system(cmd), 0);
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    CU_ASSERT_EQUAL(station_db_meta_get(db, "schema", v, sizeof(v)), NU_OK);
    CU_ASSERT_STRING_EQUAL(v, "2");
    CU_ASSERT_EQUAL(station_db_programmer_get(db, "prog-9", &got), NU_OK);
    CU_ASSERT_EQUAL(got.cloud_lost_ms, 0);
    CU_ASSERT_EQUAL(got.counter, 2);
    station_db_close(db);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"import records and copies", test_import_records_and_copies},
        {"duplicates refused; reimport after restart changes nothing",
         test_duplicates_refused_and_reimport_after_restart_changes_nothing},
        {"refused packages leave no trace", test_refused_packages_leave_no_trace},
        {"job commands", test_job_commands},
        {"journal dedupes and counts", test_journal_dedupes_and_counts},
        {"report numbers and JSON", test_report_numbers_and_json},
        {"programmer rows and meta", test_programmer_rows},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"station_db", setup, teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("station_test_db", suites);
}
