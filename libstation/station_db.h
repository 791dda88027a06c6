/*
 * station_db — the station's own record, DIR/station/station.db (SQLite,
 * WAL, synchronous=FULL): imported packages, the jobs the operator starts
 * and stops, the journal of every event the station received, and the last
 * status of every programmer it has seen.
 *
 * Schema (version 1):
 *
 *   meta(key PRIMARY KEY, value)             schema version, daemon pid/heartbeat
 *   jobs(job_id PRIMARY KEY, state, firmware, generation, imported_at_ms,
 *        started_at_ms, stopped_at_ms, done_at_ms, updated_at_ms)
 *        state: imported | started | stopped | done. generation grows with
 *        every start/stop, so the daemon acts once per operator command.
 *   packages(package_id BLOB(16) PRIMARY KEY, job_id -> jobs, programmer_id,
 *        unit_limit, expires_at_ms, created_at_ms, firmware, file, sha256,
 *        imported_at_ms, delivered_at_ms, finished, last_error,
 *        UNIQUE(job_id, programmer_id))
 *   journal(seq INTEGER PRIMARY KEY AUTOINCREMENT, received_at_ms, topic,
 *        role, sender, sender_seq, sent_at_ms, kind, job_id, device_uid
 *        (hex), socket, outcome, serial, error, detail, envelope BLOB,
 *        UNIQUE(sender, sender_seq))   -- QoS 1 duplicates are dropped
 *        index journal_counts(job_id, kind, role, sender, device_uid, received_at_ms)
 *   programmers(programmer_id PRIMARY KEY, state, job_id, unit_limit,
 *        counter, sockets, firmware_version, status_seq, status_sent_ms,
 *        seen_at_ms, online_since_ms, envelope BLOB)
 *
 * One connection per thread; the daemon and the CLI open their own.
 * Every write is one transaction. Errors: NU_ERR_DB (SQLite failure,
 * logged with SQLite's message), NU_ERR_BUSY (locked longer than the busy
 * timeout), plus those named per function.
 */
#ifndef STATION_DB_H
#define STATION_DB_H

#include "nu_envelope.h"
#include "station_event.h"

#include <stddef.h>
#include <stdint.h>

#define STATION_DB_SCHEMA 2
#define STATION_DB_ERROR_MAX 160

struct station_db;

enum station_job_state {
    STATION_JOB_IMPORTED = 0,
    STATION_JOB_STARTED = 1,
    STATION_JOB_STOPPED = 2,
    STATION_JOB_DONE = 3,
};

struct station_job {
    char job_id[NU_ENVELOPE_ID_MAX + 1];
    char firmware[NU_ENVELOPE_ID_MAX + 1];
    enum station_job_state state;
    uint64_t generation;
    uint64_t imported_at_ms, started_at_ms, stopped_at_ms, done_at_ms;
};

struct station_package {
    uint8_t package_id[16];
    char job_id[NU_ENVELOPE_ID_MAX + 1];
    char programmer_id[NU_ENVELOPE_ID_MAX + 1];
    char firmware[NU_ENVELOPE_ID_MAX + 1];
    uint32_t limit;
    uint64_t expires_at_ms, created_at_ms, imported_at_ms, delivered_at_ms;
    char file[512]; /* path of the copy under DIR/station/packages/ */
    int finished;   /* the programmer ended this package's production */
    char last_error[STATION_DB_ERROR_MAX];
};

/* Programmer states as stored (ProgrammerState names, lower case). */
struct station_programmer {
    char programmer_id[NU_ENVELOPE_ID_MAX + 1];
    char state[16]; /* offline, idle, producing, error, unknown */
    char job_id[NU_ENVELOPE_ID_MAX + 1];
    uint32_t limit, counter, sockets;
    char firmware_version[NU_ENVELOPE_ID_MAX + 1];
    uint64_t status_seq, status_sent_ms, seen_at_ms, online_since_ms;
    uint64_t cloud_lost_ms; /* the programmer says: cloud unreachable since, 0: reachable */
};

/* Device counts of a job (and optionally one programmer) from the journal. */
struct station_counts {
    uint32_t done;        /* distinct devices with device.provisioned */
    uint32_t failed;      /* device.failed events */
    uint32_t done_recent; /* provisioned received at or after `since_ms` */
    uint64_t first_ms;    /* first device event received (0: none) */
    uint64_t last_ms;     /* last device event received */
};

/*
 * Open (creating if needed) the database at `path` and its schema.
 * *out_db is closed with station_db_close().
 * Errors: DB, BUSY, NOT_SUPPORTED (schema newer than this build), NOMEM.
 */
int station_db_open(const char *path, struct station_db **out_db);

/* DIR/station/station.db (the folder is created). Errors: as above, TOO_LARGE, IO. */
int station_db_open_dir(const char *dir, struct station_db **out_db);

/* The same, for readers: NOT_FOUND when DIR has no station.db yet (nothing created). */
int station_db_open_dir_existing(const char *dir, struct station_db **out_db);

/* Close; NULL is a no-op. */
void station_db_close(struct station_db *db);

/* Transactions around several writes (the daemon's group commit). */
int station_db_begin(struct station_db *db);
int station_db_commit(struct station_db *db);
void station_db_rollback(struct station_db *db);

/*
 * A counter that changes whenever another connection commits (PRAGMA
 * data_version): the daemon polls it to notice the operator's commands
 * without re-reading the tables. Errors: DB.
 */
int station_db_data_version(struct station_db *db, uint64_t *out_version);

/* meta key/value. get: NOT_FOUND when unset; TOO_LARGE if it does not fit. */
int station_db_meta_set(struct station_db *db, const char *key, const char *value);
int station_db_meta_get(struct station_db *db, const char *key, char *out, size_t cap);

/* ---- packages and jobs ---------------------------------------------------- */

/*
 * Record an imported package (the verified summary `pkg` of station_pkg.h;
 * fields used: ids, limit, dates, firmware, file_sha256) whose copy is at
 * `file`. Creates the job in state imported if it is new.
 * Errors: EXISTS (same package id, or the job already has a package for this
 * programmer; *out_conflict, if not NULL, says which: 1 package id, 2 job +
 * programmer), STATE (the job is done), DB.
 */
struct station_pkg;
int station_db_package_add(struct station_db *db, const struct station_pkg *pkg, const char *file,
                           uint64_t now_ms, int *out_conflict);

/* NU_OK if a package with this id or this job+programmer exists (conflict as above),
 * NOT_FOUND otherwise. */
int station_db_package_find(struct station_db *db, const uint8_t package_id[16], const char *job_id,
                            const char *programmer_id, int *out_conflict);

/* Every package of `job_id` (NULL: of every job) in import order: cb returns
 * NU_OK to go on, anything else stops and is returned. */
typedef int (*station_db_package_cb)(void *ctx, const struct station_package *p);
int station_db_packages(struct station_db *db, const char *job_id, station_db_package_cb cb,
                        void *ctx);

/* Daemon bookkeeping of one package: delivered (clears last_error) at now_ms; the
 * last problem ("" clears it); finished or not. */
int station_db_package_delivered(struct station_db *db, const uint8_t package_id[16],
                                 uint64_t now_ms);
int station_db_package_error(struct station_db *db, const uint8_t package_id[16],
                             const char *error);
int station_db_package_finished(struct station_db *db, const uint8_t package_id[16], int finished);

/* Errors: NOT_FOUND. */
int station_db_job_get(struct station_db *db, const char *job_id, struct station_job *out);

typedef int (*station_db_job_cb)(void *ctx, const struct station_job *j);
/* Every job, oldest import first. */
int station_db_jobs(struct station_db *db, station_db_job_cb cb, void *ctx);

/*
 * The operator's command on a job: `to` is STARTED or STOPPED (DONE is the
 * daemon's, through station_db_job_done). Starting resets the packages'
 * finished marks, so a stopped job resumes where its programmers are.
 * *out_changed = 0 when the job already was in that state (nothing written).
 * Errors: NOT_FOUND (no such job), STATE (a done job cannot be started or
 * stopped), INVALID_ARG.
 */
int station_db_job_command(struct station_db *db, const char *job_id, enum station_job_state to,
                           uint64_t now_ms, int *out_changed);

/* Daemon: the job is done (every package finished). Errors: NOT_FOUND. */
int station_db_job_done(struct station_db *db, const char *job_id, uint64_t now_ms);

const char *station_job_state_name(enum station_job_state s);

/* ---- journal and programmers ------------------------------------------------- */

/*
 * Journal one received event. *out_added = 0 when (sender, sender_seq) is
 * already there (a QoS 1 duplicate): nothing changes.
 */
int station_db_journal_add(struct station_db *db, const struct station_event *ev,
                           const uint8_t *envelope, size_t len, uint64_t received_ms,
                           int *out_added);

/* Number of journal rows (all, or of one job when job_id is not NULL). */
int station_db_journal_count(struct station_db *db, const char *job_id, uint64_t *out_count);

/* Device counts of job_id, of one programmer when programmer_id is not NULL. */
int station_db_counts(struct station_db *db, const char *job_id, const char *programmer_id,
                      uint64_t since_ms, struct station_counts *out);

#define STATION_DB_REASON_MAX 32

/*
 * The error name of the last definite refusal by the cloud (QUOTA_EXHAUSTED,
 * JOB_NOT_ACTIVE, EXPIRED, REVOKED, NOT_AUTHORIZED, TOKEN) among the
 * device.failed events of job_id (one programmer when programmer_id is not
 * NULL) into out; "" when there was none. Errors: DB.
 */
int station_db_refusal(struct station_db *db, const char *job_id, const char *programmer_id,
                       char out[STATION_DB_REASON_MAX]);

/* Insert or replace a programmer's last status. */
int station_db_programmer_put(struct station_db *db, const struct station_programmer *p,
                              const uint8_t *envelope, size_t len);

/* Errors: NOT_FOUND. */
int station_db_programmer_get(struct station_db *db, const char *programmer_id,
                              struct station_programmer *out);

/* Every programmer seen, by id. cb as for station_db_packages. */
typedef int (*station_db_programmer_cb)(void *ctx, const struct station_programmer *p);
int station_db_programmers(struct station_db *db, station_db_programmer_cb cb, void *ctx);

#endif
