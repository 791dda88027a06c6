#include "station_metrics.h"

#include "station_db.h"
#include "station_report.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_metrics.h"
#include "nu_util.h"

#include <limits.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct station_metrics {
    const char *dir;
    char url_file[PATH_MAX];
    struct nu_metrics *reg;
    struct nu_metrics_http *http;
    struct nu_metric *provisioned, *limit, *failed, *per_min, *online, *age, *chips_failed;
};

static void sm__report(struct station_metrics *sm, struct station_db *db, uint64_t now)
{
    struct station_report *r = NULL;
    if (station_report_build(sm->dir, db, NULL, now, &r) != NU_OK)
        return;
    for (size_t j = 0; j < r->n_jobs; j++) {
        const struct station_report_job *job = &r->jobs[j];
        for (size_t p = 0; p < job->n_progs; p++) {
            const struct station_report_prog *pr = &job->progs[p];
            const char *labels[] = {job->job.job_id, pr->programmer_id};
            nu_metric_set(sm->provisioned, pr->done, labels);
            nu_metric_set(sm->limit, pr->limit, labels);
            nu_metric_set(sm->failed, pr->failed, labels);
            nu_metric_set(sm->per_min, (int64_t)(pr->per_min + 0.5), labels);
        }
    }
    station_report_free(r);
}

struct sm__seen {
    struct station_metrics *sm;
    uint64_t now;
};

static int sm__programmer(void *ctx, const struct station_programmer *p)
{
    struct sm__seen *s = ctx;
    const char *labels[] = {p->programmer_id};
    int online = strcmp(p->state, "offline") != 0 && strcmp(p->state, "unknown") != 0;
    nu_metric_set(s->sm->online, online, labels);
    if (p->seen_at_ms && p->seen_at_ms <= s->now)
        nu_metric_set(s->sm->age, (int64_t)((s->now - p->seen_at_ms) / 1000u), labels);
    return NU_OK;
}

/*
 * Failed chips by programmer and reason, straight from the journal (a
 * read-only connection): station_db has no query for it yet, and a metric
 * must not need a change of the daemon's module. Reasons are error names.
 */
static void sm__failures(struct station_metrics *sm)
{
    char path[PATH_MAX];
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    if (nu_path_fmt(path, sizeof(path), "%s/station/station.db", sm->dir) != NU_OK ||
        sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL) != SQLITE_OK)
        goto out;
    sqlite3_busy_timeout(db, 1000);
    if (sqlite3_prepare_v2(db,
                           "SELECT sender, error, COUNT(*) FROM journal"
                           " WHERE kind = 'device.failed' AND role = 'programmer'"
                           " GROUP BY sender, error",
                           -1, &st, NULL) != SQLITE_OK)
        goto out;
    while (sqlite3_step(st) == SQLITE_ROW) {
        const char *prog = (const char *)sqlite3_column_text(st, 0);
        const char *why = (const char *)sqlite3_column_text(st, 1);
        const char *labels[] = {prog ? prog : "", why && *why ? why : "unknown"};
        nu_metric_set(sm->chips_failed, sqlite3_column_int64(st, 2), labels);
    }
out:
    sqlite3_finalize(st);
    sqlite3_close(db);
}

/* nu_metrics_on_render: the picture of station.db now. */
static void sm__collect(void *ctx)
{
    struct station_metrics *sm = ctx;
    struct station_db *db = NULL;
    struct sm__seen seen = {.sm = sm, .now = nu_time_ms()};
    if (station_db_open_dir_existing(sm->dir, &db) != NU_OK)
        return;
    sm__report(sm, db, seen.now);
    (void)station_db_programmers(db, sm__programmer, &seen);
    station_db_close(db);
    sm__failures(sm);
}

static int sm__declare(struct station_metrics *sm)
{
    int rc = nu_metrics_new(&sm->reg);
#define SM__G(field, name, help, labels)                                                           \
    if (!rc)                                                                                       \
        rc = nu_metrics_gauge(sm->reg, name, help, labels, &sm->field);
    SM__G(provisioned, "nusec_station_devices_provisioned",
          "Devices provisioned, by job and programmer (station journal).", "job,programmer")
    SM__G(limit, "nusec_station_devices_limit",
          "Devices the programmer's package allows, by job and programmer.", "job,programmer")
    SM__G(failed, "nusec_station_devices_failed", "Device failures, by job and programmer.",
          "job,programmer")
    SM__G(per_min, "nusec_station_devices_per_minute",
          "Recent production rate, by job and programmer.", "job,programmer")
    SM__G(online, "nusec_station_programmer_online",
          "1 when the programmer's last status is not offline.", "programmer")
    SM__G(age, "nusec_station_programmer_last_event_age_seconds",
          "Seconds since the station last heard from the programmer.", "programmer")
    SM__G(chips_failed, "nusec_station_chips_failed",
          "Failed chips, by programmer and reason (error name).", "programmer,reason")
#undef SM__G
    if (!rc)
        rc = nu_metrics_build_info(sm->reg, "nusec-station");
    if (!rc)
        nu_metrics_on_render(sm->reg, sm__collect, sm);
    return rc;
}

int station_metrics_start(const char *dir, const char *listen, struct station_metrics **out)
{
    char run[PATH_MAX], line[160];
    uint16_t port = 0;
    struct station_metrics *sm = calloc(1, sizeof(*sm));
    if (!sm)
        return NU_ERR_NOMEM;
    sm->dir = dir;
    int rc = sm__declare(sm);
    if (!rc)
        rc = nu_metrics_http_start(sm->reg, listen, &sm->http, &port);
    const char *colon = strrchr(listen, ':');
    int n = colon ? snprintf(line, sizeof(line), "http://%.*s:%u/metrics\n",
                             (int)(colon - listen), listen, port)
                  : 0;
    if (!rc && (n <= 0 || (size_t)n >= sizeof(line)))
        rc = NU_ERR_INVALID_ARG;
    if (!rc)
        rc = nu_path_fmt(run, sizeof(run), "%s/run", dir);
    if (!rc)
        rc = nu_mkdirs(run, 0755);
    if (!rc)
        rc = nu_path_fmt(sm->url_file, sizeof(sm->url_file), "%s/station.metrics", run);
    if (!rc)
        rc = nu_file_write_atomic(sm->url_file, line, (size_t)n, 0644);
    if (rc) {
        nu_error("metrics: cannot serve on %s: %s", listen, nu_err_str(rc));
        sm->url_file[0] = '\0';
        station_metrics_stop(sm);
        return rc;
    }
    nu_info("metrics on %.*s", n - 1, line);
    *out = sm;
    return NU_OK;
}

void station_metrics_stop(struct station_metrics *sm)
{
    if (!sm)
        return;
    nu_metrics_http_stop(sm->http);
    if (sm->url_file[0])
        unlink(sm->url_file);
    nu_metrics_free(sm->reg);
    free(sm);
}
