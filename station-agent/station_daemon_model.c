/* The station daemon's model (from station.db) and the ingest of statuses and events. */
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

/* ---- the model ---------------------------------------------------------------------------- */

struct st__prog *st__prog_get(struct station *st, const char *id, int create)
{
    for (size_t i = 0; i < st->n_progs; i++) {
        if (strcmp(st->progs[i].id, id) == 0)
            return &st->progs[i];
    }
    if (!create)
        return NULL;
    struct st__prog *grown = nu_grow(st->progs, &st->cap_progs, st->n_progs, sizeof(*grown));
    if (!grown)
        return NULL;
    st->progs = grown;
    struct st__prog *p = &st->progs[st->n_progs++];
    memset(p, 0, sizeof(*p));
    snprintf(p->id, sizeof(p->id), "%s", id);
    return p;
}

struct st__job *st__job_get(struct station *st, const char *job_id)
{
    for (size_t i = 0; i < st->n_jobs; i++) {
        if (strcmp(st->jobs[i].row.job_id, job_id) == 0)
            return &st->jobs[i];
    }
    return NULL;
}

static struct st__pkg *st__pkg_of(struct station *st, const char *job_id, const char *prog)
{
    for (size_t i = 0; i < st->n_pkgs; i++) {
        if (!strcmp(st->pkgs[i].row.job_id, job_id) && !strcmp(st->pkgs[i].row.programmer_id, prog))
            return &st->pkgs[i];
    }
    return NULL;
}

static int st__prog_state_parse(const char *name)
{
    for (int s = 0; s <= 4; s++) {
        if (strcmp(station_prog_state_name(s), name) == 0)
            return s;
    }
    return 0;
}

int st__prog_load_cb(void *ctx, const struct station_programmer *row)
{
    struct station *st = ctx;
    struct st__prog *p = st__prog_get(st, row->programmer_id, 1);
    if (!p)
        return NU_ERR_NOMEM;
    p->state = st__prog_state_parse(row->state);
    snprintf(p->job_id, sizeof(p->job_id), "%s", row->job_id);
    p->limit = row->limit;
    p->counter = row->counter;
    p->sockets = row->sockets;
    p->seq = row->status_seq;
    p->online = p->state != NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_OFFLINE && p->state;
    p->online_since_ms = row->online_since_ms;
    return NU_OK;
}

struct st__load {
    struct station *st;
    void *items;
    size_t n, cap, size;
    int initial;
};

static void *st__load_slot(struct st__load *l)
{
    void *grown = nu_grow(l->items, &l->cap, l->n, l->size);
    if (!grown)
        return NULL;
    l->items = grown;
    void *slot = (char *)l->items + l->n++ * l->size;
    memset(slot, 0, l->size);
    return slot;
}

static int st__job_load_cb(void *ctx, const struct station_job *row)
{
    struct st__load *l = ctx;
    struct st__job *old = st__job_get(l->st, row->job_id);
    struct st__job *j = st__load_slot(l);
    if (!j)
        return NU_ERR_NOMEM;
    j->row = *row;
    /* At start-up the past is acted upon; a job first seen later starts at 0. */
    j->acted_gen = old ? old->acted_gen : l->initial ? row->generation : 0;
    return NU_OK;
}

static int st__pkg_load_cb(void *ctx, const struct station_package *row)
{
    struct st__load *l = ctx;
    struct st__pkg *p = st__load_slot(l);
    if (!p)
        return NU_ERR_NOMEM;
    for (size_t i = 0; i < l->st->n_pkgs; i++) {
        if (!memcmp(l->st->pkgs[i].row.package_id, row->package_id, 16)) {
            *p = l->st->pkgs[i];
            break;
        }
    }
    p->row = *row;
    return NU_OK;
}

/* Re-read jobs and packages (the operator changed something). */
int st__reload(struct station *st, int initial)
{
    struct st__load jobs = {.st = st, .size = sizeof(struct st__job), .initial = initial};
    struct st__load pkgs = {.st = st, .size = sizeof(struct st__pkg), .initial = initial};
    int rc = station_db_jobs(st->db, st__job_load_cb, &jobs);
    if (rc == NU_OK)
        rc = station_db_packages(st->db, NULL, st__pkg_load_cb, &pkgs);
    if (rc != NU_OK) {
        free(jobs.items);
        free(pkgs.items);
        return rc;
    }
    free(st->jobs);
    free(st->pkgs);
    st->jobs = jobs.items;
    st->n_jobs = jobs.n;
    st->pkgs = pkgs.items;
    st->n_pkgs = pkgs.n;
    st->counts_dirty = 1;
    return NU_OK;
}

int st__poll_db(struct station *st)
{
    uint64_t v = 0;
    int rc = station_db_data_version(st->db, &v);
    if (rc == NU_OK && v != st->data_version) {
        st->data_version = v;
        rc = st__reload(st, 0);
    }
    return rc;
}

void st__pkg_finish(struct station *st, struct st__pkg *p, const char *error)
{
    if (p->row.finished)
        return;
    p->row.finished = 1;
    int rc = station_db_package_finished(st->db, p->row.package_id, 1);
    if (rc == NU_OK && error) {
        snprintf(p->row.last_error, sizeof(p->row.last_error), "%s", error);
        rc = station_db_package_error(st->db, p->row.package_id, error);
    }
    if (rc != NU_OK)
        nu_error("cannot record that %s/%s finished", p->row.job_id, p->row.programmer_id);
    nu_info("%s on %s finished%s%s", p->row.job_id, p->row.programmer_id, error ? ": " : "",
            error ? error : "");
}

/* ---- ingest ----------------------------------------------------------------------------- */

static void st__log_refused(const char *what, const char *topic, int rc, const char *why)
{
    char safe[2 * STATION_TOPIC_MAX];
    if (station_json_escape(topic, safe, sizeof(safe)) != NU_OK)
        snprintf(safe, sizeof(safe), "(long topic)");
    nu_warn("%s on %s dropped: %s (%s)", what, safe, nu_err_name(rc), why ? why : "-");
}

/* NU_OK, or the journal's failure (the batch is then tried again). */
static int st__ingest_event(struct station *st, const struct st__msg *m)
{
    struct station_event ev;
    const char *why = NULL;
    int added = 0;
    int rc = station_event_decode(m->topic, m->payload, m->len, &ev, &why);
    if (rc != NU_OK) {
        st__log_refused("event", m->topic, rc, why);
        return NU_OK; /* refused for good, not a journal failure */
    }
    rc = station_db_journal_add(st->db, &ev, m->payload, m->len, m->received_ms, &added);
    if (rc != NU_OK)
        nu_error("event %s from %s not journaled: %s", ev.kind, ev.sender, nu_err_name(rc));
    if (added && ev.has_device)
        st->counts_dirty = 1;
    return rc;
}

static void st__prog_save(struct station *st, const struct st__prog *p, const struct st__msg *m)
{
    struct station_programmer row;
    memset(&row, 0, sizeof(row));
    snprintf(row.programmer_id, sizeof(row.programmer_id), "%s", p->id);
    snprintf(row.state, sizeof(row.state), "%s", station_prog_state_name(p->state));
    snprintf(row.job_id, sizeof(row.job_id), "%s", p->job_id);
    snprintf(row.firmware_version, sizeof(row.firmware_version), "%s", p->firmware);
    row.limit = p->limit;
    row.counter = p->counter;
    row.sockets = p->sockets;
    row.status_seq = p->seq;
    row.status_sent_ms = p->sent_ms;
    row.seen_at_ms = m->received_ms;
    row.online_since_ms = p->online ? p->online_since_ms : 0;
    row.cloud_lost_ms = p->online ? p->cloud_lost_ms : 0;
    if (station_db_programmer_put(st->db, &row, m->payload, m->len) != NU_OK)
        nu_error("status of %s not recorded", p->id);
}

/* What a status change means for the package of the programmer's job. */
/* `back`: the first status of a programmer that went offline while producing. */
static void st__status_effects(struct station *st, const struct st__prog *p, int prev_state,
                               const char *prev_job, int back)
{
    struct st__pkg *pkg = p->job_id[0] ? st__pkg_of(st, p->job_id, p->id) : NULL;
    struct st__job *job = pkg ? st__job_get(st, pkg->row.job_id) : NULL;
    if (!pkg || !job || job->row.state != STATION_JOB_STARTED)
        return;
    if (p->state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING &&
        pkg->row.last_error[0]) {
        /* It is at work: whatever went wrong before is over. */
        pkg->row.last_error[0] = '\0';
        station_db_package_error(st->db, pkg->row.package_id, "");
    }
    int producing = p->state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING;
    if (p->limit && p->counter >= p->limit && !producing && !back) {
        /* At the limit, but not finished while it produces (the last units
         * are chips in its sockets) nor just back from a crash (those chips
         * are still there, with their units: it finishes them at the next
         * START, or refuses it, idle again, and then it is finished here). */
        st__pkg_finish(st, pkg, NULL);
    } else if (p->state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_IDLE &&
               prev_state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING &&
               strcmp(prev_job, p->job_id) == 0) {
        /* It ran and stopped by itself: tray empty, limit, quota or error. */
        st__pkg_finish(st, pkg, NULL);
    }
}

/* The programmer's view of the cloud link (issue 15): logged and published
 * as station events cloud.unreachable / cloud.reachable on each change. */
static void st__cloud_link(struct station *st, struct st__prog *p, uint64_t lost_ms)
{
    char since[32], detail[NU_ENVELOPE_ID_MAX + 64];
    if ((lost_ms != 0) == (p->cloud_lost_ms != 0)) {
        p->cloud_lost_ms = lost_ms;
        return;
    }
    p->cloud_lost_ms = lost_ms;
    if (lost_ms) {
        time_t t = (time_t)(lost_ms / 1000u);
        struct tm tm;
        if (!gmtime_r(&t, &tm) || !strftime(since, sizeof(since), "%Y-%m-%dT%H:%M:%SZ", &tm))
            snprintf(since, sizeof(since), "%llu ms", (unsigned long long)lost_ms);
        snprintf(detail, sizeof(detail), "%s: cloud unreachable since %s", p->id, since);
        nu_warn("programmer %s", detail);
        st__note(st, "cloud.unreachable", p->job_id, 0, detail, p);
    } else {
        snprintf(detail, sizeof(detail), "%s: cloud reachable", p->id);
        nu_info("programmer %s", detail);
        st__note(st, "cloud.reachable", p->job_id, 0, detail, p);
    }
}

static void st__ingest_status(struct station *st, const struct st__msg *m)
{
    struct station_status s;
    const char *why = NULL;
    char prev_job[NU_ENVELOPE_ID_MAX + 1];
    int rc = station_status_decode(m->topic, m->payload, m->len, &s, &why);
    if (rc != NU_OK) {
        st__log_refused("status", m->topic, rc, why);
        return;
    }
    struct st__prog *p = st__prog_get(st, s.programmer_id, 1);
    if (!p)
        return;
    int offline = s.state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_OFFLINE;
    /* The will was encoded when the programmer started, so its sequence is
     * old: OFFLINE is taken as it comes; other statuses only when newer. */
    if (!offline && p->online && s.seq <= p->seq) {
        nu_debug("stale status of %s ignored", p->id);
        return;
    }
    int was_online = p->online, prev_state = p->state;
    snprintf(prev_job, sizeof(prev_job), "%s", p->job_id);
    p->state = s.state;
    snprintf(p->job_id, sizeof(p->job_id), "%s", s.job_id);
    snprintf(p->firmware, sizeof(p->firmware), "%s", s.firmware_version);
    p->limit = s.limit;
    p->counter = s.counter;
    p->sockets = s.sockets;
    p->sent_ms = s.sent_at_ms;
    if (!offline)
        p->seq = s.seq;
    if (!offline && (!was_online || p->epoch == 0)) {
        p->epoch++;
        if (!was_online) {
            p->online = 1;
            p->online_since_ms = m->received_ms;
            nu_info("programmer %s online (%s)", p->id, station_prog_state_name(p->state));
            st__note(st, "programmer.online", p->job_id, 0, p->id, p);
        }
    } else if (offline && was_online) {
        p->lost_producing = prev_state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING;
        p->online = 0;
        nu_warn("programmer %s offline", p->id);
        st__note(st, "programmer.offline", p->job_id, 0, p->id, p);
    }
    if (!offline)
        st__cloud_link(st, p, s.cloud_lost_ms);
    if (!offline) {
        st__status_effects(st, p, prev_state, prev_job, !was_online && p->lost_producing);
        p->lost_producing = 0;
    }
    st__prog_save(st, p, m);
}

int st__ingest(struct station *st, struct st__msg *list)
{
    int rc = station_db_begin(st->db);
    for (struct st__msg *m = list; m; m = m->next) {
        if (m->kind == ST__EVENT) {
            int erc = st__ingest_event(st, m);
            /* The storage failing fails the batch (tried again); one bad row does not. */
            if (rc == NU_OK && (erc == NU_ERR_IO || erc == NU_ERR_BUSY))
                rc = erc;
        } else
            st__ingest_status(st, m);
    }
    if (rc == NU_OK)
        rc = station_db_commit(st->db);
    if (rc != NU_OK) {
        station_db_rollback(st->db);
        nu_error("journal batch not committed: %s (its events are tried again)", nu_err_name(rc));
    }
    return rc;
}
