/*
 * station_daemon — the heart of `nusec-station`: drives the programmers the
 * station owns from what the operator records in station.db, and keeps the
 * station's journal of everything that happens on the bus.
 *
 * Control (operator -> daemon): `nusec production start|stop` only write the
 * job's state and bump its generation in station.db. The daemon polls
 * PRAGMA data_version every poll_ms (200 ms by default), which changes only
 * when another connection committed, and re-reads jobs and packages then.
 * No socket, no signal: the database is the one source of truth, so a
 * command given while the daemon is down is carried out when it starts.
 *
 * Programmers (daemon -> programmer, nusec/v1/prog/{id}/cmd, QoS 1):
 *   - job started, package not finished, programmer IDLE: PackageDelivery
 *     (the imported .nspkg, re-verified) then ProductionCommand START. Sent
 *     once per (job generation, programmer online epoch): again when the
 *     operator restarts the job, or when the programmer comes back online
 *     (its status goes from OFFLINE / never seen to anything else) while
 *     work is left — which covers the station's own restart too, since the
 *     retained status is the first thing it sees. Idempotent on the
 *     programmer (same package id).
 *     One job at a time per programmer: a package for it waits while another
 *     running job's package, delivered in the same online epoch, is not
 *     finished (a programmer holds one package; it would drop a second).
 *   - job stopped, programmer PRODUCING that job: STOP.
 *   - a package is finished when its programmer reports PRODUCING -> IDLE on
 *     that job, when its counter or the journal reaches the limit, or when
 *     it expired; the job is done when all its packages are.
 *   - the broker refuses commands for programmers the station does not own
 *     (DIR/broker/owners): the package then shows the error and the daemon
 *     retries every 5 s.
 *
 * Bus (programmers, cloud -> daemon): subscriptions nusec/v1/prog/+/status
 * and nusec/v1/events/# on a persistent session (client id = identity, clean
 * start off), registered before CONNECT, so QoS 1 messages sent while the
 * station is cut off or stopped are queued by the broker and arrive when it
 * is back (up to the broker's max_queued_messages). The MQTT thread only
 * copies messages into a queue; the main thread writes them in one
 * transaction per batch (group commit: one fsync for many events), dedupes
 * events by (sender, sequence), keeps each programmer's last status, and
 * notices programmers going offline (their last will) and back.
 *
 * The daemon publishes its own events on nusec/v1/events/station/{id}/{kind}:
 * package.delivered, delivery.refused, production.started,
 * production.stopped, production.done, programmer.online,
 * programmer.offline, and station.offline as its last will.
 *
 * One daemon per state directory: it holds an exclusive flock on
 * DIR/station/station.lock (which also tells the CLI that it runs).
 */
#ifndef STATION_DAEMON_H
#define STATION_DAEMON_H

#include <signal.h>
#include <sys/types.h>

#define STATION_POLL_MS_DEFAULT 200u
#define STATION_RETRY_MS 5000u
/* A programmer still IDLE this long after START gets a note in last_error. */
#define STATION_START_GRACE_MS 15000u
/* How long a finished job waits for device events its programmers counted. */
#define STATION_SETTLE_MS 5000u

struct station;

struct station_opts {
    const char *dir;  /* state directory (required) */
    const char *name; /* identity: DIR/pki/clients/NAME.{crt,key}; NULL = "station" */
    unsigned poll_ms; /* 0 = STATION_POLL_MS_DEFAULT */
};

/*
 * Take the daemon lock, open station.db, load the package signing key.
 * *out_st is freed with station_destroy().
 * Errors: BUSY (another daemon holds DIR's lock), INVALID_ARG, NOT_FOUND
 * (no package key: run `nusec pki init`), DB, IO, NOMEM.
 */
int station_create(const struct station_opts *opts, struct station **out_st);

/*
 * Connect (retrying every second until connected or *stop), subscribe, and
 * run the control loop until *stop becomes non-zero; then drain the queue
 * into the journal and disconnect cleanly. Returns NU_OK after a stop, or
 * the error that made it give up (NOT_AUTHORIZED / NOT_FOUND: identity
 * refused or missing; DB).
 */
int station_run(struct station *st, volatile sig_atomic_t *stop);

/* Free everything; releases the lock. NULL is a no-op. */
void station_destroy(struct station *st);

#endif
