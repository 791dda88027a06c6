/*
 * station_daemon_int.h - what the files of the station daemon share (private
 * to them): the daemon's state and what it knows of programmers, jobs and
 * packages. station_daemon.c holds the queue off the MQTT thread, the
 * connection and the life cycle; station_daemon_lock.c the lock;
 * station_daemon_pub.c publishing the daemon's events; station_daemon_model.c the
 * model loaded from station.db and the ingest of statuses and events;
 * station_daemon_act.c what the daemon does about it (deliver, start, stop).
 */
#ifndef NUSEC_STATION_DAEMON_INT_H
#define NUSEC_STATION_DAEMON_INT_H

#include "station_daemon.h"
#include "station_db.h"
#include "station_event.h"

#include "nu_crypto.h"
#include "nu_envelope.h"
#include "nu_mqtt.h"

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

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
    int lost_producing;     /* it went offline while producing (a crash, not an end) */
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
    uint64_t settle_until_ms; /* all packages finished: done by then at the latest */
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

/* station_daemon_pub.c */
int st__publish(struct station *st, const char *topic, ProtobufCMessage *body);
void st__note(struct station *st, const char *kind, const char *job, int code, const char *detail,
              const struct st__prog *prog);
void st__notes_flush(struct station *st);

/* station_daemon_act.c */
void st__act(struct station *st);

/* station_daemon_model.c */
struct st__prog *st__prog_get(struct station *st, const char *id, int create);
struct st__job *st__job_get(struct station *st, const char *job_id);
int st__prog_load_cb(void *ctx, const struct station_programmer *row);
/* Re-read jobs and packages (the operator changed something). */
int st__reload(struct station *st, int initial);
int st__poll_db(struct station *st);
void st__pkg_finish(struct station *st, struct st__pkg *p, const char *error);
/* Journal a batch in one transaction. NU_OK, or the failure (rolled back:
 * the caller queues its events again). */
int st__ingest(struct station *st, struct st__msg *list);

#endif
