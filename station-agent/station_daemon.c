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

int st__publish(struct station *st, const char *topic, ProtobufCMessage *body)
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

void st__note(struct station *st, const char *kind, const char *job, int code, const char *detail,
              const struct st__prog *prog)
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
