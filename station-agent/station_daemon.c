#include "station_daemon.h"
#include "station_daemon_int.h"

#include "station_db.h"
#include "station_event.h"
#include "station_lock.h"
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

/*
 * A batch whose journal commit failed for its storage (station.db's disk
 * full, an I/O error, BUSY; not for its data): its events go back to the
 * front of the queue, in order, and are journaled again after a pause
 * (INSERT OR IGNORE on sender and sequence makes a second try harmless). The broker acknowledged them already, so
 * dropping them would lose them. Statuses are not kept: each programmer
 * sends its status again. Returns what is left to free.
 */
static struct st__msg *st__requeue_events(struct station *st, struct st__msg *list)
{
    struct st__msg *keep = NULL, *last = NULL, *rest = NULL, **rt = &rest;
    size_t bytes = 0;
    for (struct st__msg *m = list, *next; m; m = next) {
        next = m->next;
        m->next = NULL;
        if (m->kind == ST__EVENT) {
            if (last)
                last->next = m;
            else
                keep = m;
            last = m;
            bytes += sizeof(*m) + m->len + strlen(m->topic) + 1;
        } else {
            *rt = m;
            rt = &m->next;
        }
    }
    if (keep) {
        pthread_mutex_lock(&st->lock);
        last->next = st->head;
        if (!st->head)
            st->tail = last;
        st->head = keep;
        st->queued += bytes;
        pthread_mutex_unlock(&st->lock);
    }
    return rest;
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
    int rc = station_lock_take(st->dir, &st->lock_fd);
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
        int irc = list ? st__ingest(st, list) : NU_OK;
        if (irc == NU_ERR_IO || irc == NU_ERR_BUSY) {
            list = st__requeue_events(st, list);
            struct timespec pause = {0, 250 * 1000000L}; /* not a spin on a full disk */
            nanosleep(&pause, NULL);
        }
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
