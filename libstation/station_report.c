#include "station_report.h"

#include "station_lock.h"
#include "station_event.h"
#include "station_progress.h"

#include "nu_err.h"
#include "nu_util.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

struct report__build {
    struct station_report *r;
    struct station_db *db;
    size_t cap_jobs;
    int rc;
};

/*
 * Rate: a sliding window while running; otherwise the whole run's average,
 * and no time left (0 when finished, unknown when stopped or not started).
 */
static void report__rate(struct station_db *db, const char *job, const char *prog, int running,
                         int finished, uint64_t now, uint32_t limit, double *out_rate,
                         int64_t *out_eta, struct station_counts *c)
{
    uint64_t since = now > STATION_RATE_WINDOW_MS ? now - STATION_RATE_WINDOW_MS : 0;
    if (station_db_counts(db, job, prog, since, c) != NU_OK)
        memset(c, 0, sizeof(*c));
    if (!running || finished) {
        *out_rate = c->last_ms > c->first_ms
                        ? station_rate_per_min(c->done, c->first_ms, c->last_ms, UINT64_MAX)
                        : 0.0;
        *out_eta = finished ? 0 : -1;
        return;
    }
    *out_rate = station_rate_per_min(c->done_recent, c->first_ms, now, STATION_RATE_WINDOW_MS);
    *out_eta = station_eta_s(c->done, limit, *out_rate);
}

/* How one programmer's share ended: an error of its package (not delivered,
 * expired) fails it; a definite refusal by the cloud is named; else the
 * counter says whether it used its limit or ran out of chips. */
static void report__prog_outcome(struct station_db *db, const struct station_job *job,
                                 const struct station_package *p, struct station_report_prog *rp)
{
    char refusal[STATION_DB_REASON_MAX] = "";
    rp->outcome = STATION_OUTCOME_RUNNING;
    if (!rp->finished) {
        if (job->state == STATION_JOB_STOPPED)
            rp->outcome = STATION_OUTCOME_STOPPED;
        return;
    }
    if (rp->error[0]) {
        rp->outcome = STATION_OUTCOME_FAILED;
        snprintf(rp->reason, sizeof(rp->reason), "%s", rp->error);
    } else if (station_db_refusal(db, p->job_id, p->programmer_id, refusal) == NU_OK &&
               refusal[0]) {
        rp->outcome = STATION_OUTCOME_REFUSED;
        snprintf(rp->reason, sizeof(rp->reason), "%s", refusal);
    } else if ((p->limit && rp->counter >= p->limit) || rp->done >= p->limit) {
        rp->outcome = STATION_OUTCOME_LIMIT;
    } else {
        rp->outcome = STATION_OUTCOME_TRAY_EMPTY;
    }
}

/* The job's outcome: stopped, running, or the worst of its programmers'. */
static void report__job_outcome(struct station_report_job *j)
{
    static const int rank[] = {
        [STATION_OUTCOME_LIMIT] = 1, [STATION_OUTCOME_TRAY_EMPTY] = 2,
        [STATION_OUTCOME_REFUSED] = 3, [STATION_OUTCOME_FAILED] = 4,
    };
    j->reason[0] = '\0';
    if (j->job.state == STATION_JOB_STOPPED) {
        j->outcome = STATION_OUTCOME_STOPPED;
        return;
    }
    j->outcome = STATION_OUTCOME_RUNNING;
    if (j->job.state != STATION_JOB_DONE)
        return;
    j->outcome = STATION_OUTCOME_LIMIT;
    for (size_t k = 0; k < j->n_progs; k++) {
        const struct station_report_prog *p = &j->progs[k];
        enum station_outcome o = p->outcome == STATION_OUTCOME_RUNNING ||
                                         p->outcome == STATION_OUTCOME_STOPPED
                                     ? STATION_OUTCOME_LIMIT /* finished with the job */
                                     : p->outcome;
        if (rank[o] > rank[j->outcome]) {
            j->outcome = o;
            snprintf(j->reason, sizeof(j->reason), "%s", p->reason);
        }
    }
}

void station_report_job_line(const struct station_report_job *j, char *out, size_t cap)
{
    station_outcome_line(j->outcome, j->done, j->limit, j->failed, j->reason, out, cap);
}

static int report__prog_cb(void *ctx, const struct station_package *p)
{
    struct report__build *b = ctx;
    struct station_report_job *j = &b->r->jobs[b->r->n_jobs - 1];
    struct station_report_prog *grown = realloc(j->progs, (j->n_progs + 1) * sizeof(*grown));
    struct station_programmer seen;
    struct station_counts c;
    if (!grown)
        return NU_ERR_NOMEM;
    j->progs = grown;
    struct station_report_prog *rp = &j->progs[j->n_progs++];
    memset(rp, 0, sizeof(*rp));
    snprintf(rp->programmer_id, sizeof(rp->programmer_id), "%s", p->programmer_id);
    if (station_db_programmer_get(b->db, p->programmer_id, &seen) == NU_OK) {
        snprintf(rp->state, sizeof(rp->state), "%s", seen.state);
        if (!strcmp(seen.job_id, p->job_id))
            rp->counter = seen.counter;
        rp->cloud_lost_ms = seen.cloud_lost_ms;
        if (seen.cloud_lost_ms &&
            (!b->r->cloud_lost_ms || seen.cloud_lost_ms < b->r->cloud_lost_ms))
            b->r->cloud_lost_ms = seen.cloud_lost_ms;
    } else {
        snprintf(rp->state, sizeof(rp->state), "unknown");
    }
    rp->limit = p->limit;
    rp->finished = p->finished || j->job.state == STATION_JOB_DONE;
    rp->delivered_at_ms = p->delivered_at_ms;
    snprintf(rp->error, sizeof(rp->error), "%s", p->last_error);
    report__rate(b->db, p->job_id, p->programmer_id, j->job.state == STATION_JOB_STARTED,
                 rp->finished, b->r->now_ms, p->limit, &rp->per_min, &rp->eta_s, &c);
    rp->done = c.done;
    rp->failed = c.failed;
    report__prog_outcome(b->db, &j->job, p, rp);
    j->limit += p->limit;
    j->done += c.done;
    j->failed += c.failed;
    return NU_OK;
}

static int report__job_cb(void *ctx, const struct station_job *job)
{
    struct report__build *b = ctx;
    struct station_report *r = b->r;
    struct station_counts c;
    struct station_report_job *grown = nu_grow(r->jobs, &b->cap_jobs, r->n_jobs, sizeof(*grown));
    if (!grown)
        return NU_ERR_NOMEM;
    r->jobs = grown;
    struct station_report_job *j = &r->jobs[r->n_jobs++];
    memset(j, 0, sizeof(*j));
    j->job = *job;
    int rc = station_db_packages(b->db, job->job_id, report__prog_cb, b);
    if (rc != NU_OK)
        return rc;
    report__rate(b->db, job->job_id, NULL, job->state == STATION_JOB_STARTED,
                 job->state == STATION_JOB_DONE, r->now_ms, j->limit, &j->per_min, &j->eta_s, &c);
    report__job_outcome(j);
    return NU_OK;
}

int station_report_build(const char *dir, struct station_db *db, const char *job_id,
                         uint64_t now_ms, struct station_report **out)
{
    struct station_job one;
    if (!db || !out)
        return NU_ERR_INVALID_ARG;
    *out = NULL;
    struct station_report *r = calloc(1, sizeof(*r));
    if (!r)
        return NU_ERR_NOMEM;
    r->now_ms = now_ms;
    r->daemon_running = dir ? station_daemon_running(dir, &r->daemon_pid) : 0;
    struct report__build b = {.r = r, .db = db};
    int rc = job_id ? station_db_job_get(db, job_id, &one) : NU_OK;
    if (rc == NU_OK)
        rc = job_id ? report__job_cb(&b, &one) : station_db_jobs(db, report__job_cb, &b);
    if (rc != NU_OK) {
        station_report_free(r);
        return rc;
    }
    *out = r;
    return NU_OK;
}

void station_report_free(struct station_report *r)
{
    if (!r)
        return;
    for (size_t i = 0; i < r->n_jobs; i++)
        free(r->jobs[i].progs);
    free(r->jobs);
    free(r);
}

int station_report_settled(const struct station_report *r)
{
    for (size_t i = 0; i < r->n_jobs; i++) {
        if (r->jobs[i].job.state == STATION_JOB_STARTED)
            return 0;
    }
    return 1;
}

int station_report_stuck(const struct station_report *r)
{
    int stuck = 0;
    for (size_t i = 0; i < r->n_jobs; i++) {
        const struct station_report_job *j = &r->jobs[i];
        if (j->job.state != STATION_JOB_STARTED)
            continue;
        size_t open = 0, blocked = 0;
        for (size_t k = 0; k < j->n_progs; k++) {
            open += !j->progs[k].finished;
            blocked += !j->progs[k].finished && j->progs[k].error[0];
        }
        if (open && blocked < open)
            return 0;
        stuck = stuck || (open && blocked == open);
    }
    return stuck;
}

int station_report_failed(const struct station_report *r)
{
    for (size_t i = 0; i < r->n_jobs; i++) {
        const struct station_report_job *j = &r->jobs[i];
        if (j->failed)
            return 1;
        for (size_t k = 0; k < j->n_progs; k++) {
            if (j->progs[k].error[0])
                return 1;
        }
    }
    return 0;
}

/* ---- JSON ------------------------------------------------------------------------------ */

static void report__jstr(FILE *out, const char *key, const char *value, int comma)
{
    char esc[4 * STATION_DB_ERROR_MAX];
    if (station_json_escape(value, esc, sizeof(esc)) != NU_OK)
        snprintf(esc, sizeof(esc), "\"\"");
    fprintf(out, "%s\"%s\":%s", comma ? "," : "", key, esc);
}

static void report__jnums(FILE *out, uint32_t limit, uint32_t done, uint32_t failed, double per_min,
                          int64_t eta)
{
    fprintf(out,
            ",\"limit\":%" PRIu32 ",\"done\":%" PRIu32 ",\"failed\":%" PRIu32
            ",\"percent\":%u,\"devices_per_min\":%.1f,\"eta_s\":",
            limit, done, failed, station_percent(done, limit), per_min);
    if (eta < 0)
        fputs("null", out);
    else
        fprintf(out, "%" PRId64, eta);
}

void station_report_json(const struct station_report *r, FILE *out)
{
    fprintf(out,
            "{\"now_ms\":%" PRIu64 ",\"daemon\":%s,\"cloud_unreachable_since_ms\":%" PRIu64
            ",\"jobs\":[",
            r->now_ms, r->daemon_running ? "true" : "false", r->cloud_lost_ms);
    for (size_t i = 0; i < r->n_jobs; i++) {
        const struct station_report_job *j = &r->jobs[i];
        fputs(i ? ",{" : "{", out);
        report__jstr(out, "job", j->job.job_id, 0);
        report__jstr(out, "state", station_job_state_name(j->job.state), 1);
        report__jstr(out, "firmware", j->job.firmware, 1);
        report__jnums(out, j->limit, j->done, j->failed, j->per_min, j->eta_s);
        char line[2 * STATION_DB_ERROR_MAX];
        station_report_job_line(j, line, sizeof(line));
        report__jstr(out, "outcome", station_outcome_name(j->outcome), 1);
        report__jstr(out, "summary", line, 1);
        fputs(",\"programmers\":[", out);
        for (size_t k = 0; k < j->n_progs; k++) {
            const struct station_report_prog *p = &j->progs[k];
            fputs(k ? ",{" : "{", out);
            report__jstr(out, "programmer", p->programmer_id, 0);
            report__jstr(out, "state", p->state, 1);
            report__jnums(out, p->limit, p->done, p->failed, p->per_min, p->eta_s);
            fprintf(out, ",\"counter\":%" PRIu32 ",\"finished\":%s,\"delivered_at_ms\":%" PRIu64,
                    p->counter, p->finished ? "true" : "false", p->delivered_at_ms);
            fprintf(out, ",\"cloud_unreachable_since_ms\":%" PRIu64, p->cloud_lost_ms);
            report__jstr(out, "error", p->error, 1);
            report__jstr(out, "outcome", station_outcome_name(p->outcome), 1);
            report__jstr(out, "reason", p->reason, 1);
            fputs("}", out);
        }
        fputs("]}", out);
    }
    fputs("]}\n", out);
}

/* ---- text -------------------------------------------------------------------------------- */

/* Width of the name column: the longest job id, or programmer id + indent, at least 16. */
static int report__name_width(const struct station_report *r)
{
    size_t w = 16;
    for (size_t i = 0; i < r->n_jobs; i++) {
        const struct station_report_job *j = &r->jobs[i];
        w = strlen(j->job.job_id) > w ? strlen(j->job.job_id) : w;
        for (size_t k = 0; k < j->n_progs; k++)
            w = strlen(j->progs[k].programmer_id) + 2 > w ? strlen(j->progs[k].programmer_id) + 2
                                                          : w;
    }
    return (int)w;
}

/* The columns of a line, in the order they are dropped when the line does not fit. */
enum report__col {
    REPORT__BAR,
    REPORT__RATE,
    REPORT__PERCENT,
    REPORT__ETA,
    REPORT__FAILED,
    REPORT__NCOLS
};

#define REPORT__BAR_MIN 8u
#define REPORT__BAR_MAX 24u

/*
 * One line of at most `cols` characters (0: no limit, widest bar). Columns
 * are dropped whole, least important first (bar, rate, percent, ETA,
 * failed), never cut in the middle of a word; name, state and count stay.
 */
static void report__line(FILE *out, int name_width, const char *indent, const char *name,
                         const char *state, unsigned cols, uint32_t limit, uint32_t done,
                         uint32_t failed, double per_min, int64_t eta)
{
    char head[160], count[32], part[REPORT__NCOLS][64], left[32], bar[REPORT__BAR_MAX + 4];
    station_duration(eta, left, sizeof(left));
    int hn = snprintf(head, sizeof(head), "%s%-*s %-9s", indent, name_width - (int)strlen(indent),
                      name, state);
    int cn = snprintf(count, sizeof(count), " %6" PRIu32 "/%-6" PRIu32, done, limit);
    snprintf(part[REPORT__PERCENT], sizeof(part[0]), " %3u%%", station_percent(done, limit));
    snprintf(part[REPORT__RATE], sizeof(part[0]), "  %7.1f/min", per_min);
    snprintf(part[REPORT__FAILED], sizeof(part[0]), "  failed %-4" PRIu32, failed);
    snprintf(part[REPORT__ETA], sizeof(part[0]), " ETA %s", left);
    size_t used = (size_t)(hn > 0 ? hn : 0) + (size_t)(cn > 0 ? cn : 0);
    for (int c = REPORT__RATE; c < REPORT__NCOLS; c++)
        used += strlen(part[c]);
    int keep[REPORT__NCOLS] = {1, 1, 1, 1, 1};
    unsigned bar_cells = REPORT__BAR_MAX;
    if (cols) {
        /* Shrink the bar first, then drop columns until the line fits. */
        size_t room = cols > used + 1 ? cols - used - 1 : 0; /* " [" ... "]" takes cells + 3 */
        bar_cells = room >= REPORT__BAR_MAX + 2   ? REPORT__BAR_MAX
                    : room >= REPORT__BAR_MIN + 2 ? (unsigned)room - 2
                                                  : 0;
        keep[REPORT__BAR] = bar_cells > 0;
        for (int c = REPORT__RATE; c < REPORT__NCOLS && used > cols; c++) {
            keep[c] = 0;
            used -= strlen(part[c]);
        }
    }
    bar[0] = '\0';
    if (keep[REPORT__BAR]) {
        bar[0] = ' ';
        station_bar(done, limit, bar_cells, bar + 1, sizeof(bar) - 1);
    }
    fprintf(out, "%s%s%s%s%s%s%s", head, bar, count,
            keep[REPORT__PERCENT] ? part[REPORT__PERCENT] : "",
            keep[REPORT__RATE] ? part[REPORT__RATE] : "",
            keep[REPORT__FAILED] ? part[REPORT__FAILED] : "",
            keep[REPORT__ETA] ? part[REPORT__ETA] : "");
}

static void report__utc(uint64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000u);
    struct tm tm;
    if (!gmtime_r(&t, &tm) || !strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(out, cap, "%" PRIu64 " ms", ms);
}

int station_report_text(const struct station_report *r, unsigned cols, FILE *out)
{
    int lines = 0, name_width = report__name_width(r);
    if (!r->daemon_running) {
        fputs("warning: nusec-station is not running: nothing is delivered until it starts\n", out);
        lines++;
    }
    if (r->cloud_lost_ms) {
        char since[32];
        report__utc(r->cloud_lost_ms, since, sizeof(since));
        fprintf(out, "cloud unreachable since %s (%" PRIu64 " s): no new chip until it is back\n",
                since, r->now_ms > r->cloud_lost_ms ? (r->now_ms - r->cloud_lost_ms) / 1000u : 0);
        lines++;
    }
    if (!r->n_jobs) {
        fputs("no job (import packages with `nusec package import FILE...`)\n", out);
        return lines + 1;
    }
    for (size_t i = 0; i < r->n_jobs; i++) {
        const struct station_report_job *j = &r->jobs[i];
        report__line(out, name_width, "", j->job.job_id, station_job_state_name(j->job.state), cols,
                     j->limit, j->done, j->failed, j->per_min, j->eta_s);
        fputc('\n', out);
        lines++;
        for (size_t k = 0; k < j->n_progs; k++) {
            const struct station_report_prog *p = &j->progs[k];
            report__line(out, name_width, "  ", p->programmer_id, p->state, cols, p->limit, p->done,
                         p->failed, p->per_min, p->eta_s);
            if (p->error[0])
                fprintf(out, "  ! %s", p->error);
            if (p->cloud_lost_ms) {
                char since[32];
                report__utc(p->cloud_lost_ms, since, sizeof(since));
                fprintf(out, "  ! cloud unreachable since %s", since);
            }
            fputc('\n', out);
            lines++;
        }
        if (j->outcome != STATION_OUTCOME_RUNNING) {
            char line[2 * STATION_DB_ERROR_MAX];
            station_report_job_line(j, line, sizeof(line));
            fprintf(out, "  %s\n", line);
            lines++;
        }
    }
    return lines;
}
