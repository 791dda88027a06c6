/* What the station daemon does: deliver packages, start and stop programmers. */
#include "station_daemon.h"
#include "station_daemon_int.h"

#include "station_db.h"
#include "station_event.h"
#include "station_pkg.h"
#include "station_report.h"

#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_crypto.h"
#include "nu_log.h"
#include "nu_mqtt.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

/* ---- acting ------------------------------------------------------------------------------- */

static int st__cmd_topic(const char *prog, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "nusec/v1/prog/%s/cmd", prog);
}

static int st__command(struct station *st, const char *prog, const char *job, int action)
{
    char topic[STATION_TOPIC_MAX];
    Nusec__V1__ProductionCommand cmd = NUSEC__V1__PRODUCTION_COMMAND__INIT;
    cmd.job_id = (char *)job;
    cmd.action = (Nusec__V1__ProductionAction)action;
    int rc = st__cmd_topic(prog, topic, sizeof(topic));
    return rc == NU_OK ? st__publish(st, topic, &cmd.base) : rc;
}

/* PackageDelivery (the imported copy, verified again) then START. */
static int st__deliver(struct station *st, const struct st__pkg *p, char *why, size_t cap)
{
    char topic[STATION_TOPIC_MAX];
    struct station_pkg info;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = station_pkg_read(p->row.file, st->pkg_pub, nu_time_ms(), &info, &buf, &len);
    if (rc == NU_OK && memcmp(info.package_id, p->row.package_id, 16) != 0)
        rc = NU_ERR_TAMPERED;
    if (rc != NU_OK) {
        /* A long path is cut: the message is for the operator, not parsed. */
        if (snprintf(why, cap, "%s: package file %s: %s", nu_err_name(rc), p->row.file,
                     nu_err_str(rc)) < 0)
            why[0] = 0;
        free(buf);
        return rc;
    }
    Nusec__V1__PackageDelivery d = NUSEC__V1__PACKAGE_DELIVERY__INIT;
    d.sealed_package.data = buf;
    d.sealed_package.len = len;
    rc = st__cmd_topic(p->row.programmer_id, topic, sizeof(topic));
    if (rc == NU_OK)
        rc = st__publish(st, topic, &d.base);
    if (rc == NU_OK)
        rc = st__command(st, p->row.programmer_id, p->row.job_id,
                         NUSEC__V1__PRODUCTION_ACTION__PRODUCTION_ACTION_START);
    free(buf);
    /* Messages for the operator; cutting a long one is fine. */
    int n = 0;
    if (rc == NU_ERR_NOT_AUTHORIZED)
        n = snprintf(why, cap,
                     "NOT_AUTHORIZED: the broker refused: station %s does not own %s "
                     "(DIR/broker/owners)",
                     st->name, p->row.programmer_id);
    else if (rc != NU_OK)
        n = snprintf(why, cap, "%s: delivery to %s: %s", nu_err_name(rc), p->row.programmer_id,
                     nu_err_str(rc));
    if (n < 0)
        why[0] = 0;
    return rc;
}

static void st__delivered(struct station *st, struct st__pkg *p, const struct st__job *j,
                          const struct st__prog *prog, uint64_t now)
{
    p->sent = 1;
    p->sent_gen = j->row.generation;
    p->sent_epoch = prog->epoch;
    p->sent_ms = now;
    p->idle_noted = 0;
    p->row.last_error[0] = '\0';
    if (station_db_package_delivered(st->db, p->row.package_id, now) != NU_OK)
        nu_error("delivery of %s/%s not recorded", p->row.job_id, p->row.programmer_id);
    nu_info("package %s delivered to %s, START sent", p->row.job_id, p->row.programmer_id);
    st__note(st, "package.delivered", p->row.job_id, 0, p->row.programmer_id, NULL);
}

static void st__refused(struct station *st, struct st__pkg *p, int rc, const char *why,
                        uint64_t now)
{
    p->retry_at_ms = now + STATION_RETRY_MS;
    if (strcmp(p->row.last_error, why) == 0)
        return; /* said already */
    snprintf(p->row.last_error, sizeof(p->row.last_error), "%s", why);
    station_db_package_error(st->db, p->row.package_id, why);
    nu_error("%s/%s: %s (retrying every %u s)", p->row.job_id, p->row.programmer_id, why,
             STATION_RETRY_MS / 1000u);
    st__note(st, "delivery.refused", p->row.job_id, rc, why, NULL);
}

/*
 * Another running job's package went to this programmer in its current
 * online epoch and is not finished: one job at a time per programmer (a
 * programmer holds one package; a second delivery would be dropped).
 */
static int st__prog_taken(struct station *st, const struct st__pkg *p, const struct st__prog *prog)
{
    for (size_t i = 0; i < st->n_pkgs; i++) {
        const struct st__pkg *o = &st->pkgs[i];
        const struct st__job *oj;
        /* A package that could not start (it carries an error) holds nothing. */
        if (o == p || o->row.finished || !o->sent || o->sent_epoch != prog->epoch ||
            o->row.last_error[0] || strcmp(o->row.programmer_id, p->row.programmer_id) != 0)
            continue;
        oj = st__job_get(st, o->row.job_id);
        if (oj && oj->row.state == STATION_JOB_STARTED && o->sent_gen == oj->row.generation)
            return 1;
    }
    return 0;
}

static void st__maybe_start(struct station *st, const struct st__job *j, struct st__pkg *p,
                            uint64_t now)
{
    char why[STATION_DB_ERROR_MAX];
    if (now < p->retry_at_ms)
        return;
    if (p->row.expires_at_ms <= now) {
        st__pkg_finish(st, p, "EXPIRED: the package expired before it was produced");
        return;
    }
    const struct st__prog *prog = st__prog_get(st, p->row.programmer_id, 0);
    if (!prog || !prog->online)
        return;
    int current = p->sent && p->sent_gen == j->row.generation && p->sent_epoch == prog->epoch;
    if (prog->state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING) {
        if (!strcmp(prog->job_id, p->row.job_id) && !current) {
            p->sent = 1; /* already at work on it: nothing to send */
            p->sent_gen = j->row.generation;
            p->sent_epoch = prog->epoch;
            p->sent_ms = now;
        }
        return;
    }
    if (prog->state != NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_IDLE)
        return;
    if (!current && st__prog_taken(st, p, prog))
        return;
    if (current) {
        if (!p->idle_noted && now - p->sent_ms > STATION_START_GRACE_MS) {
            p->idle_noted = 1;
            snprintf(why, sizeof(why), "%s still idle %u s after START (see its log)",
                     p->row.programmer_id, STATION_START_GRACE_MS / 1000u);
            snprintf(p->row.last_error, sizeof(p->row.last_error), "%s", why);
            station_db_package_error(st->db, p->row.package_id, why);
            nu_warn("%s/%s: %s", p->row.job_id, p->row.programmer_id, why);
        }
        return;
    }
    int rc = st__deliver(st, p, why, sizeof(why));
    if (rc == NU_OK)
        st__delivered(st, p, j, prog, now);
    else if (rc == NU_ERR_EXPIRED)
        st__pkg_finish(st, p, why);
    else
        st__refused(st, p, rc, why, now);
}

static void st__maybe_stop(struct station *st, const struct st__job *j, struct st__pkg *p,
                           uint64_t now)
{
    const struct st__prog *prog = st__prog_get(st, p->row.programmer_id, 0);
    if (!prog || !prog->online || now < p->retry_at_ms ||
        prog->state != NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING ||
        strcmp(prog->job_id, p->row.job_id) != 0)
        return;
    if (p->stop_sent && p->stop_gen == j->row.generation && p->stop_epoch == prog->epoch)
        return;
    int rc = st__command(st, p->row.programmer_id, p->row.job_id,
                         NUSEC__V1__PRODUCTION_ACTION__PRODUCTION_ACTION_STOP);
    if (rc != NU_OK) {
        p->retry_at_ms = now + STATION_RETRY_MS;
        nu_error("STOP to %s not sent: %s", p->row.programmer_id, nu_err_name(rc));
        return;
    }
    p->stop_sent = 1;
    p->stop_gen = j->row.generation;
    p->stop_epoch = prog->epoch;
    nu_info("STOP sent to %s for %s", p->row.programmer_id, p->row.job_id);
}

/* The journal says the limit is reached. */
static void st__check_counts(struct station *st, struct st__pkg *p)
{
    struct station_counts c;
    if (station_db_counts(st->db, p->row.job_id, p->row.programmer_id, 0, &c) == NU_OK &&
        c.done >= p->row.limit)
        st__pkg_finish(st, p, NULL);
}

/* production.done says how the job ended, in the words of `production
 * status` and `production start --wait` (station_outcome_line). */
static void st__done_note(struct station *st, const char *job, uint64_t now)
{
    struct station_report *r = NULL;
    char line[2 * STATION_DB_ERROR_MAX] = "";
    if (station_report_build(NULL, st->db, job, now, &r) == NU_OK && r->n_jobs)
        station_report_job_line(&r->jobs[0], line, sizeof(line));
    station_report_free(r);
    nu_info("production of %s done: %s", job, line[0] ? line : "(no report)");
    st__note(st, "production.done", job, 0, line, NULL);
}

/*
 * A programmer counts a unit before that device's event reaches the journal,
 * so its "limit reached" can come first. A job whose packages all finished is
 * done once the journal holds as many device outcomes as its programmers
 * counted, or STATION_SETTLE_MS after the last of them stopped producing (a
 * unit kept or lost never gets an event; a chip still in a socket will):
 * `production start --wait` and production.done then give the journal's
 * final figures, not a count still on its way. A programmer counts its last
 * unit when that chip starts, and the chip can take long after: held for
 * the cloud, then certified under the lease at the end of the quota (seen:
 * "47 of 48 done" while the 48th was still in its socket).
 */
static int st__job_settled(struct station *st, struct st__job *j, uint64_t now)
{
    uint32_t counted = 0;
    int producing = 0;
    struct station_counts c;
    for (size_t i = 0; i < st->n_pkgs; i++) {
        const struct st__pkg *p = &st->pkgs[i];
        const struct st__prog *prog =
            strcmp(p->row.job_id, j->row.job_id) ? NULL : st__prog_get(st, p->row.programmer_id, 0);
        if (prog && !strcmp(prog->job_id, j->row.job_id)) {
            counted += prog->counter;
            producing |= prog->online &&
                         prog->state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING;
        }
    }
    if (station_db_counts(st->db, j->row.job_id, NULL, 0, &c) == NU_OK &&
        c.done + c.failed >= counted)
        return 1;
    if (producing) {
        j->settle_until_ms = 0;
        return 0;
    }
    if (!j->settle_until_ms)
        j->settle_until_ms = now + STATION_SETTLE_MS;
    return now >= j->settle_until_ms;
}

static void st__act_started(struct station *st, struct st__job *j, uint64_t now)
{
    if (j->acted_gen != j->row.generation) {
        j->acted_gen = j->row.generation;
        nu_info("production of %s started", j->row.job_id);
        st__note(st, "production.started", j->row.job_id, 0, NULL, NULL);
    }
    size_t n = 0, finished = 0;
    for (size_t i = 0; i < st->n_pkgs; i++) {
        struct st__pkg *p = &st->pkgs[i];
        if (strcmp(p->row.job_id, j->row.job_id) != 0)
            continue;
        n++;
        if (!p->row.finished && st->counts_dirty)
            st__check_counts(st, p);
        if (!p->row.finished)
            st__maybe_start(st, j, p, now);
        finished += p->row.finished != 0;
    }
    if (!n || finished != n) {
        j->settle_until_ms = 0;
    } else if (st__job_settled(st, j, now)) {
        if (station_db_job_done(st->db, j->row.job_id, now) == NU_OK) {
            j->row.state = STATION_JOB_DONE;
            st__done_note(st, j->row.job_id, now);
        }
    }
}

void st__act(struct station *st)
{
    uint64_t now = nu_time_ms();
    /* Counting the journal costs a query per package: once a second is plenty
     * (the programmers' own counters finish packages at once). */
    int counts_due = st->counts_dirty && now - st->counts_at_ms >= 1000u;
    int dirty = st->counts_dirty;
    st->counts_dirty = counts_due;
    for (size_t i = 0; i < st->n_jobs; i++) {
        struct st__job *j = &st->jobs[i];
        if (j->row.state == STATION_JOB_STARTED) {
            st__act_started(st, j, now);
        } else if (j->row.state == STATION_JOB_STOPPED) {
            if (j->acted_gen != j->row.generation) {
                j->acted_gen = j->row.generation;
                nu_info("production of %s stopped", j->row.job_id);
                st__note(st, "production.stopped", j->row.job_id, 0, NULL, NULL);
            }
            for (size_t k = 0; k < st->n_pkgs; k++) {
                if (!strcmp(st->pkgs[k].row.job_id, j->row.job_id))
                    st__maybe_stop(st, j, &st->pkgs[k], now);
            }
        }
    }
    if (counts_due)
        st->counts_at_ms = now;
    st->counts_dirty = dirty && !counts_due;
}
