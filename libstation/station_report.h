/*
 * station_report — the production picture `nusec production status` shows,
 * built from station.db alone (the daemon keeps it current: journal counts
 * and the programmers' last retained status): per job and per programmer,
 * done / limit, failures, devices per minute, time left, state, and the
 * last delivery problem.
 */
#ifndef STATION_REPORT_H
#define STATION_REPORT_H

#include "station_db.h"
#include "station_progress.h"

#include <stdint.h>
#include <stdio.h>
#include <sys/types.h>

struct station_report_prog {
    char programmer_id[NU_ENVELOPE_ID_MAX + 1];
    char state[16]; /* last status (offline, idle, producing, error), "unknown" if never seen */
    uint32_t limit, done, failed, counter;
    double per_min;
    int64_t eta_s; /* -1 unknown */
    int finished;
    uint64_t delivered_at_ms;
    uint64_t cloud_lost_ms; /* it says: cloud unreachable since (wall ms), 0: reachable */
    char error[STATION_DB_ERROR_MAX];
    enum station_outcome outcome; /* of this programmer's share */
    char reason[STATION_DB_ERROR_MAX]; /* what refused or failed, or "" */
};

struct station_report_job {
    struct station_job job;
    uint32_t limit, done, failed;
    double per_min;
    int64_t eta_s;
    size_t n_progs;
    struct station_report_prog *progs;
    /* How it ended (running while it runs): the worst of its programmers'
     * (failed, then cloud refused, then tray empty, then limit reached), or
     * stopped; `reason` is that programmer's. */
    enum station_outcome outcome;
    char reason[STATION_DB_ERROR_MAX];
};

struct station_report {
    uint64_t now_ms;
    int daemon_running;
    pid_t daemon_pid;
    uint64_t cloud_lost_ms; /* earliest cloud_lost_ms of the programmers shown, 0: none */
    size_t n_jobs;
    struct station_report_job *jobs;
};

/*
 * Build the report of every job (job_id NULL) or one job, at now_ms.
 * dir (may be NULL) is used to tell whether nusec-station runs.
 * *out (station_report_free) on success.
 * Errors: NOT_FOUND (no such job), NOMEM, DB.
 */
int station_report_build(const char *dir, struct station_db *db, const char *job_id,
                         uint64_t now_ms, struct station_report **out);

void station_report_free(struct station_report *r);

/* 1 when every job of the report is past running (done, stopped, or imported only). */
int station_report_settled(const struct station_report *r);

/*
 * 1 when a running job can make no progress by itself: every package of it
 * that is not finished carries an error (not owned, refused, programmer idle
 * after START). The daemon keeps trying; a follower should stop waiting.
 */
int station_report_stuck(const struct station_report *r);

/* 1 when any job of the report had a device failure or a package error. */
int station_report_failed(const struct station_report *r);

/* The job's one line, station_outcome_line() of its outcome and counts. */
void station_report_job_line(const struct station_report_job *j, char *out, size_t cap);

/*
 * One JSON object: {"now_ms":..,"daemon":bool,"jobs":[{...,"programmers":[...]}]} + "\n".
 * Each job has "outcome" (station_outcome_name) and "summary" (its line),
 * each programmer "outcome" and "reason".
 */
void station_report_json(const struct station_report *r, FILE *out);

/*
 * The text view: one line per job and one per programmer, each at most
 * `cols` characters (0: no limit). Columns that do not fit are dropped whole,
 * least important first: the bar (after shrinking to 8 cells), the rate, the
 * percentage, the ETA, the failed count; name, state and done/limit stay.
 * Returns the number of lines written (for redrawing).
 */
int station_report_text(const struct station_report *r, unsigned cols, FILE *out);

#endif
