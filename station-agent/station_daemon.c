#include "station_daemon.h"

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

#define ST__QUEUE_MAX_BYTES (64u * 1024u * 1024u)
#define ST__NOTES_MAX 64
#define ST__STATUS_FILTER "nusec/v1/prog/+/status"
#define ST__EVENT_FILTER "nusec/v1/events/#"

enum st__kind { ST__EVENT, ST__STATUS };

/* A message copied off the MQTT thread. */
struct st__msg {
    struct st__msg *next;
    enum st__kind kind;
    uint64_t received_ms;
    char *topic;
    size_t len;
    uint8_t payload[];
};

/* What the daemon knows of a programmer (main thread only). */
struct st__prog {
    char id[NU_ENVELOPE_ID_MAX + 1];
    int state; /* ProgrammerState */
    char job_id[NU_ENVELOPE_ID_MAX + 1];
    uint32_t limit, counter, sockets;
    char firmware[NU_ENVELOPE_ID_MAX + 1];
    uint64_t seq, sent_ms;
    int online;
    unsigned epoch; /* grows each time it comes (back) online */
    uint64_t online_since_ms;
    uint64_t cloud_lost_ms; /* it says the cloud is unreachable since, 0: reachable */
};

/* A package and what this process did with it. */
struct st__pkg {
    struct station_package row;
    int sent;
    uint64_t sent_gen, sent_ms;
    unsigned sent_epoch;
    int stop_sent;
    uint64_t stop_gen;
    unsigned stop_epoch;
    uint64_t retry_at_ms;
    int idle_noted;
};

struct st__job {
    struct station_job row;
    uint64_t acted_gen;
};

/* An event the daemon will publish after the current step. */
struct st__note {
    char kind[32];
    char job[NU_ENVELOPE_ID_MAX + 1];
    int code;
    char detail[STATION_DB_ERROR_MAX];
    int has_prog;
    struct st__prog prog;
};

struct station {
    char dir[PATH_MAX];
    char name[NU_ENVELOPE_ID_MAX + 1];
    unsigned poll_ms;
    int lock_fd;
    struct station_db *db;
    uint8_t pkg_pub[NU_P256_PUB_LEN];
    struct nu_envelope_sender *sender;
    struct nu_mqtt *mqtt;
    char will_topic[STATION_TOPIC_MAX];
    uint8_t *will;
    size_t will_len;

    pthread_mutex_t lock;
    pthread_cond_t cond;
    struct st__msg *head, *tail;
    size_t queued;
    unsigned long dropped;

    struct st__job *jobs;
    size_t n_jobs;
    struct st__pkg *pkgs;
    size_t n_pkgs;
    struct st__prog *progs;
    size_t n_progs, cap_progs;
    uint64_t data_version;
    int counts_dirty;
    uint64_t counts_at_ms; /* last journal count check (at most one a second) */
    struct st__note notes[ST__NOTES_MAX];
    size_t n_notes;
};

/* ---- the lock --------------------------------------------------------------------------- */

static int st__lock_path(const char *dir, char *out, size_t cap)
{
    char folder[PATH_MAX];
    int rc = nu_paths_get(dir, NU_PATH_STATION, folder, sizeof(folder));
    if (rc == NU_OK)
        rc = nu_mkdirs(folder, 0700);
    if (rc == NU_OK)
        rc = nu_path_fmt(out, cap, "%s/station.lock", folder);
    return rc;
}

static int st__lock_take(struct station *st)
{
    char path[PATH_MAX], pid[32];
    int rc = st__lock_path(st->dir, path, sizeof(path));
    if (rc != NU_OK)
        return rc;
    st->lock_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (st->lock_fd < 0)
        return errno == EACCES ? NU_ERR_PERMISSION : NU_ERR_IO;
    if (flock(st->lock_fd, LOCK_EX | LOCK_NB) != 0)
        return errno == EWOULDBLOCK ? NU_ERR_BUSY : NU_ERR_IO;
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(st->lock_fd, 0) != 0 || pwrite(st->lock_fd, pid, (size_t)n, 0) != n)
        nu_warn("cannot write the pid into %s", path);
    return NU_OK;
}

int station_daemon_running(const char *dir, pid_t *out_pid)
{
    char path[PATH_MAX], text[32];
    if (out_pid)
        *out_pid = 0;
    if (!dir || nu_paths_get(dir, NU_PATH_STATION, path, sizeof(path)) != NU_OK ||
        nu_path_fmt(path + strlen(path), sizeof(path) - strlen(path), "/station.lock") != NU_OK)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int running = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    if (running && out_pid) {
        ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
        text[n > 0 ? n : 0] = '\0';
        *out_pid = (pid_t)atol(text);
    }
    close(fd); /* also drops a shared lock we took */
    return running;
}

/* ---- the queue (MQTT thread -> main thread) ---------------------------------------------- */

static void st__enqueue(struct station *st, enum st__kind kind, const struct nu_mqtt_msg *msg)
{
    size_t tlen = strlen(msg->topic);
    size_t size = sizeof(struct st__msg) + msg->len + tlen + 1;
    struct st__msg *m = malloc(size);
    if (m) {
        m->next = NULL;
        m->kind = kind;
        m->received_ms = nu_time_ms();
        m->len = msg->len;
        memcpy(m->payload, msg->payload, msg->len);
        m->topic = (char *)m->payload + msg->len;
        memcpy(m->topic, msg->topic, tlen + 1);
    }
    pthread_mutex_lock(&st->lock);
    if (!m || st->queued + size > ST__QUEUE_MAX_BYTES) {
        st->dropped++;
        free(m);
    } else {
        if (st->tail)
            st->tail->next = m;
        else
            st->head = m;
        st->tail = m;
        st->queued += size;
        pthread_cond_signal(&st->cond);
    }
    pthread_mutex_unlock(&st->lock);
}

static void st__on_event(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    st__enqueue(ud, ST__EVENT, msg);
}

static void st__on_status(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    st__enqueue(ud, ST__STATUS, msg);
}

/* Wait up to ms for messages; take them all. */
static struct st__msg *st__take(struct station *st, unsigned ms)
{
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += ms / 1000u;
    until.tv_nsec += (long)(ms % 1000u) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&st->lock);
    while (!st->head && ms) {
        if (pthread_cond_timedwait(&st->cond, &st->lock, &until) == ETIMEDOUT)
            break;
    }
    struct st__msg *list = st->head;
    st->head = st->tail = NULL;
    st->queued = 0;
    unsigned long dropped = st->dropped;
    st->dropped = 0;
    pthread_mutex_unlock(&st->lock);
    if (dropped)
        nu_error("%lu messages dropped: the journal could not keep up (queue full)", dropped);
    return list;
}

static void st__free_list(struct st__msg *m)
{
    while (m) {
        struct st__msg *next = m->next;
        free(m);
        m = next;
    }
}

/* ---- publishing -------------------------------------------------------------------------- */

static int st__publish(struct station *st, const char *topic, ProtobufCMessage *body)
{
    struct nu_envelope_frame f;
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *why = NULL;
    int rc = nu_envelope_frame_init(&f, st->sender, body);
    if (rc == NU_OK)
        rc = nu_envelope_pack(&f.env, &buf, &len, &why);
    if (rc == NU_OK)
        rc = nu_mqtt_publish(st->mqtt, topic, buf, len, 1, 0);
    else
        nu_error("cannot encode for %s: %s (%s)", topic, nu_err_name(rc), why ? why : "");
    free(buf);
    return rc;
}

static void st__note(struct station *st, const char *kind, const char *job, int code,
                     const char *detail, const struct st__prog *prog)
{
    if (st->n_notes == ST__NOTES_MAX) {
        nu_debug("event %s not published: too many at once", kind);
        return;
    }
    struct st__note *n = &st->notes[st->n_notes++];
    memset(n, 0, sizeof(*n));
    snprintf(n->kind, sizeof(n->kind), "%s", kind);
    snprintf(n->job, sizeof(n->job), "%s", job ? job : "");
    n->code = code;
    snprintf(n->detail, sizeof(n->detail), "%s", detail ? detail : "");
    nu_envelope_text_sanitize(n->detail);
    if (prog) {
        n->has_prog = 1;
        n->prog = *prog;
    }
}

static void st__event_fill(const struct st__note *n, Nusec__V1__Event *ev,
                           Nusec__V1__ProgrammerStatus *ps)
{
    ev->kind = (char *)n->kind;
    ev->job_id = (char *)n->job;
    ev->code = (Nusec__V1__ErrorCode)n->code;
    ev->detail = (char *)n->detail;
    if (n->has_prog) {
        ps->programmer_id = (char *)n->prog.id;
        ps->state = (Nusec__V1__ProgrammerState)n->prog.state;
        ps->job_id = (char *)n->prog.job_id;
        ps->limit = n->prog.limit;
        ps->counter = n->prog.counter;
        ev->data_case = NUSEC__V1__EVENT__DATA_PROGRAMMER;
        ev->programmer = ps;
    }
}

static void st__notes_flush(struct station *st)
{
    char topic[STATION_TOPIC_MAX];
    if (st->n_notes && !nu_mqtt_is_connected(st->mqtt)) {
        /* A publish would wait for the broker (up to its timeout) and hold up the
         * journal; these events only inform monitors. */
        nu_warn("%zu station events not published: broker unreachable", st->n_notes);
        st->n_notes = 0;
        return;
    }
    for (size_t i = 0; i < st->n_notes; i++) {
        const struct st__note *n = &st->notes[i];
        Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
        Nusec__V1__ProgrammerStatus ps = NUSEC__V1__PROGRAMMER_STATUS__INIT;
        st__event_fill(n, &ev, &ps);
        int rc =
            nu_path_fmt(topic, sizeof(topic), "nusec/v1/events/station/%s/%s", st->name, n->kind);
        if (rc == NU_OK)
            rc = st__publish(st, topic, &ev.base);
        if (rc != NU_OK)
            nu_warn("event %s not published: %s", n->kind, nu_err_name(rc));
    }
    st->n_notes = 0;
}

/* ---- the model ---------------------------------------------------------------------------- */

static struct st__prog *st__prog_get(struct station *st, const char *id, int create)
{
    for (size_t i = 0; i < st->n_progs; i++) {
        if (strcmp(st->progs[i].id, id) == 0)
            return &st->progs[i];
    }
    if (!create)
        return NULL;
    if (st->n_progs == st->cap_progs) {
        size_t cap = st->cap_progs ? 2 * st->cap_progs : 16;
        struct st__prog *grown = realloc(st->progs, cap * sizeof(*grown));
        if (!grown)
            return NULL;
        st->progs = grown;
        st->cap_progs = cap;
    }
    struct st__prog *p = &st->progs[st->n_progs++];
    memset(p, 0, sizeof(*p));
    snprintf(p->id, sizeof(p->id), "%s", id);
    return p;
}

static struct st__job *st__job_get(struct station *st, const char *job_id)
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

static int st__prog_load_cb(void *ctx, const struct station_programmer *row)
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
    if (l->n == l->cap) {
        size_t cap = l->cap ? 2 * l->cap : 16;
        void *grown = realloc(l->items, cap * l->size);
        if (!grown)
            return NULL;
        l->items = grown;
        l->cap = cap;
    }
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
static int st__reload(struct station *st, int initial)
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

static int st__poll_db(struct station *st)
{
    uint64_t v = 0;
    int rc = station_db_data_version(st->db, &v);
    if (rc == NU_OK && v != st->data_version) {
        st->data_version = v;
        rc = st__reload(st, 0);
    }
    return rc;
}

static void st__pkg_finish(struct station *st, struct st__pkg *p, const char *error)
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

static void st__ingest_event(struct station *st, const struct st__msg *m)
{
    struct station_event ev;
    const char *why = NULL;
    int added = 0;
    int rc = station_event_decode(m->topic, m->payload, m->len, &ev, &why);
    if (rc != NU_OK) {
        st__log_refused("event", m->topic, rc, why);
        return;
    }
    rc = station_db_journal_add(st->db, &ev, m->payload, m->len, m->received_ms, &added);
    if (rc != NU_OK)
        nu_error("event %s from %s not journaled: %s", ev.kind, ev.sender, nu_err_name(rc));
    if (added && ev.has_device)
        st->counts_dirty = 1;
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
static void st__status_effects(struct station *st, const struct st__prog *p, int prev_state,
                               const char *prev_job)
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
    if (p->limit && p->counter >= p->limit) {
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
        p->online = 0;
        nu_warn("programmer %s offline", p->id);
        st__note(st, "programmer.offline", p->job_id, 0, p->id, p);
    }
    if (!offline)
        st__cloud_link(st, p, s.cloud_lost_ms);
    if (!offline)
        st__status_effects(st, p, prev_state, prev_job);
    st__prog_save(st, p, m);
}

static void st__ingest(struct station *st, struct st__msg *list)
{
    int rc = station_db_begin(st->db);
    for (struct st__msg *m = list; m; m = m->next) {
        if (m->kind == ST__EVENT)
            st__ingest_event(st, m);
        else
            st__ingest_status(st, m);
    }
    if (rc == NU_OK)
        rc = station_db_commit(st->db);
    if (rc != NU_OK) {
        station_db_rollback(st->db);
        nu_error("journal batch not committed: %s", nu_err_name(rc));
    }
}

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
    if (n && finished == n) {
        if (station_db_job_done(st->db, j->row.job_id, now) == NU_OK) {
            j->row.state = STATION_JOB_DONE;
            st__done_note(st, j->row.job_id, now);
        }
    }
}

static void st__act(struct station *st)
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

/* ---- connection ----------------------------------------------------------------------------- */

static int st__mqtt_opts(struct station *st, struct nu_mqtt_opts *o, char *host, size_t host_cap,
                         char *ca, char *cert, char *key)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = nu_paths_get(st->dir, NU_PATH_BROKER_ENDPOINT, path, sizeof(path));
    if (rc == NU_OK)
        rc = nu_file_read(path, 512, &text, &len);
    if (rc == NU_OK)
        rc = nu_mqtt_endpoint_parse((const char *)text, host, host_cap, &o->port);
    free(text);
    if (rc == NU_OK)
        rc = nu_paths_get(st->dir, NU_PATH_CHAIN, ca, PATH_MAX);
    if (rc == NU_OK)
        rc = nu_paths_client_cert(st->dir, st->name, cert, PATH_MAX);
    if (rc == NU_OK)
        rc = nu_paths_client_key(st->dir, st->name, key, PATH_MAX);
    if (rc == NU_OK && (!nu_path_exists(cert) || !nu_path_exists(key)))
        rc = NU_ERR_NOT_FOUND;
    if (rc != NU_OK) {
        nu_error("broker endpoint or the '%s' certificate missing in %s: %s", st->name, st->dir,
                 nu_err_str(rc));
        return rc;
    }
    o->host = host;
    o->ca_file = ca;
    o->cert_file = cert;
    o->key_file = key;
    o->client_id = st->name;
    o->clean_start = 0;
    o->will = (struct nu_mqtt_will){
        .topic = st->will_topic, .payload = st->will, .len = st->will_len, .qos = 1};
    return NU_OK;
}

static int st__will_make(struct station *st)
{
    struct nu_envelope_frame f;
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = "station.offline";
    ev.detail = st->name;
    int rc = nu_path_fmt(st->will_topic, sizeof(st->will_topic),
                         "nusec/v1/events/station/%s/station.offline", st->name);
    if (rc == NU_OK)
        rc = nu_envelope_frame_init(&f, st->sender, &ev.base);
    if (rc == NU_OK)
        rc = nu_envelope_pack(&f.env, &st->will, &st->will_len, NULL);
    return rc;
}

/* Create the session with its handlers first, so a resumed session's queue is not lost. */
/* Everything the station publishes is signed end to end with its identity
 * key (nu_msgsig.h): the cloud does not take the site broker's word for it. */
static int st__signer(struct station *st, const char *key)
{
    struct nu_p256_key *k = NULL;
    int rc = nu_p256_key_load_pem(key, &k);
    if (rc != NU_OK) {
        nu_error("cannot load the signing key %s: %s", key, nu_err_str(rc));
        return rc;
    }
    return nu_mqtt_sign_with_key(st->mqtt, k);
}

static int st__connect(struct station *st, volatile sig_atomic_t *stop)
{
    char host[256], ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
    struct nu_mqtt_opts o;
    memset(&o, 0, sizeof(o));
    int rc = st__will_make(st);
    if (rc == NU_OK)
        rc = st__mqtt_opts(st, &o, host, sizeof(host), ca, cert, key);
    if (rc == NU_OK)
        rc = nu_mqtt_create(&o, &st->mqtt);
    if (rc == NU_OK)
        rc = st__signer(st, key);
    if (rc == NU_OK)
        rc = nu_mqtt_subscribe(st->mqtt, ST__STATUS_FILTER, 1, st__on_status, st);
    if (rc == NU_OK)
        rc = nu_mqtt_subscribe(st->mqtt, ST__EVENT_FILTER, 1, st__on_event, st);
    for (unsigned attempt = 0; rc == NU_OK && !*stop; attempt++) {
        rc = nu_mqtt_connect(st->mqtt, 0);
        if (rc == NU_OK || rc == NU_ERR_NOT_AUTHORIZED || rc == NU_ERR_INVALID_ARG)
            break;
        if (attempt == 0)
            nu_warn("broker not reachable (%s); retrying every second", nu_err_name(rc));
        rc = NU_OK;
        sleep(1);
    }
    if (rc != NU_OK)
        nu_error("cannot connect as %s: %s (%s)", st->name, nu_err_str(rc), nu_err_name(rc));
    return rc;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

int station_create(const struct station_opts *opts, struct station **out_st)
{
    if (!opts || !opts->dir || !out_st)
        return NU_ERR_INVALID_ARG;
    *out_st = NULL;
    const char *name = opts->name ? opts->name : "station";
    if (nu_envelope_id_check(name) != NU_OK || strlen(opts->dir) >= PATH_MAX)
        return NU_ERR_INVALID_ARG;
    struct station *st = calloc(1, sizeof(*st));
    if (!st)
        return NU_ERR_NOMEM;
    st->lock_fd = -1;
    strcpy(st->dir, opts->dir);
    strcpy(st->name, name);
    st->poll_ms = opts->poll_ms ? opts->poll_ms : STATION_POLL_MS_DEFAULT;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&st->cond, &ca);
    pthread_condattr_destroy(&ca);
    pthread_mutex_init(&st->lock, NULL);
    int rc = st__lock_take(st);
    if (rc == NU_OK)
        rc = station_pkg_signer_load(st->dir, st->pkg_pub);
    if (rc == NU_OK)
        rc = station_db_open_dir(st->dir, &st->db);
    if (rc == NU_OK)
        rc = nu_envelope_sender_create(st->name, NU_ENVELOPE_SEQ_FROM_CLOCK, &st->sender);
    if (rc == NU_OK)
        rc = station_db_programmers(st->db, st__prog_load_cb, st);
    if (rc == NU_OK)
        rc = station_db_data_version(st->db, &st->data_version);
    if (rc == NU_OK)
        rc = st__reload(st, 1);
    if (rc != NU_OK) {
        station_destroy(st);
        return rc;
    }
    *out_st = st;
    return NU_OK;
}

static void st__mark_ready(struct station *st)
{
    char pid[32];
    snprintf(pid, sizeof(pid), "%ld", (long)getpid());
    if (station_db_meta_set(st->db, "ready_pid", pid) != NU_OK)
        nu_warn("cannot record readiness in station.db");
}

int station_run(struct station *st, volatile sig_atomic_t *stop)
{
    if (!st || !stop)
        return NU_ERR_INVALID_ARG;
    int rc = st__connect(st, stop);
    if (rc != NU_OK || *stop)
        return rc;
    st__mark_ready(st);
    nu_info("station %s running on %s", st->name, st->dir);
    while (!*stop) {
        struct st__msg *list = st__take(st, st->poll_ms);
        if (list)
            st__ingest(st, list);
        st__free_list(list);
        if ((rc = st__poll_db(st)) != NU_OK)
            nu_error("cannot read station.db: %s", nu_err_name(rc));
        st__act(st);
        st__notes_flush(st);
    }
    /* What arrived before the stop is journaled before we leave. */
    struct st__msg *rest = st__take(st, 0);
    if (rest)
        st__ingest(st, rest);
    st__free_list(rest);
    /* A clean DISCONNECT discards the will: say it ourselves. */
    st->n_notes = 0;
    st__note(st, "station.offline", NULL, 0, st->name, NULL);
    st__notes_flush(st);
    nu_mqtt_disconnect(st->mqtt);
    nu_info("station %s stopped", st->name);
    return NU_OK;
}

void station_destroy(struct station *st)
{
    if (!st)
        return;
    nu_mqtt_destroy(st->mqtt);
    st__free_list(st->head);
    station_db_close(st->db);
    nu_envelope_sender_destroy(st->sender);
    free(st->will);
    free(st->jobs);
    free(st->pkgs);
    free(st->progs);
    pthread_cond_destroy(&st->cond);
    pthread_mutex_destroy(&st->lock);
    if (st->lock_fd >= 0)
        close(st->lock_fd);
    free(st);
}
