#include "station_db.h"

#include "station_pkg.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <limits.h>
#include <stdint.h>
#include <sqlite3.h>
#include <stdlib.h>
#include <string.h>

#define DB__BUSY_TIMEOUT_MS 5000

struct station_db {
    sqlite3 *h;
    sqlite3_stmt *journal_ins; /* the hot statement, prepared once */
};

static const char db__schema[] =
    "CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS jobs("
    " job_id TEXT PRIMARY KEY,"
    " state TEXT NOT NULL CHECK(state IN ('imported','started','stopped','done')),"
    " firmware TEXT NOT NULL DEFAULT '',"
    " generation INTEGER NOT NULL DEFAULT 0,"
    " imported_at_ms INTEGER NOT NULL,"
    " started_at_ms INTEGER NOT NULL DEFAULT 0,"
    " stopped_at_ms INTEGER NOT NULL DEFAULT 0,"
    " done_at_ms INTEGER NOT NULL DEFAULT 0,"
    " updated_at_ms INTEGER NOT NULL);"
    "CREATE TABLE IF NOT EXISTS packages("
    " package_id BLOB PRIMARY KEY CHECK(length(package_id) = 16),"
    " job_id TEXT NOT NULL REFERENCES jobs(job_id),"
    " programmer_id TEXT NOT NULL,"
    " unit_limit INTEGER NOT NULL CHECK(unit_limit > 0),"
    " expires_at_ms INTEGER NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " firmware TEXT NOT NULL DEFAULT '',"
    " file TEXT NOT NULL,"
    " sha256 BLOB NOT NULL,"
    " imported_at_ms INTEGER NOT NULL,"
    " delivered_at_ms INTEGER NOT NULL DEFAULT 0,"
    " finished INTEGER NOT NULL DEFAULT 0,"
    " last_error TEXT NOT NULL DEFAULT '',"
    " UNIQUE(job_id, programmer_id));"
    "CREATE TABLE IF NOT EXISTS journal("
    " seq INTEGER PRIMARY KEY AUTOINCREMENT,"
    " received_at_ms INTEGER NOT NULL,"
    " topic TEXT NOT NULL,"
    " role TEXT NOT NULL,"
    " sender TEXT NOT NULL,"
    " sender_seq INTEGER NOT NULL,"
    " sent_at_ms INTEGER NOT NULL,"
    " kind TEXT NOT NULL,"
    " job_id TEXT NOT NULL DEFAULT '',"
    " device_uid TEXT NOT NULL DEFAULT '',"
    " socket INTEGER,"
    " outcome TEXT NOT NULL DEFAULT '',"
    " serial TEXT NOT NULL DEFAULT '',"
    " error TEXT NOT NULL DEFAULT '',"
    " detail TEXT NOT NULL DEFAULT '',"
    " envelope BLOB NOT NULL,"
    " UNIQUE(sender, sender_seq));"
    /* Covers the progress counts (station_db_counts) without touching the rows. */
    "CREATE INDEX IF NOT EXISTS journal_counts"
    " ON journal(job_id, kind, role, sender, device_uid, received_at_ms);"
    "CREATE TABLE IF NOT EXISTS programmers("
    " programmer_id TEXT PRIMARY KEY,"
    " state TEXT NOT NULL,"
    " job_id TEXT NOT NULL DEFAULT '',"
    " unit_limit INTEGER NOT NULL DEFAULT 0,"
    " counter INTEGER NOT NULL DEFAULT 0,"
    " sockets INTEGER NOT NULL DEFAULT 0,"
    " firmware_version TEXT NOT NULL DEFAULT '',"
    " status_seq INTEGER NOT NULL DEFAULT 0,"
    " status_sent_ms INTEGER NOT NULL DEFAULT 0,"
    " seen_at_ms INTEGER NOT NULL,"
    " online_since_ms INTEGER NOT NULL DEFAULT 0,"
    " envelope BLOB,"
    " cloud_lost_ms INTEGER NOT NULL DEFAULT 0);";

static const char *const db__job_states[] = {"imported", "started", "stopped", "done"};

const char *station_job_state_name(enum station_job_state s)
{
    return (unsigned)s < 4 ? db__job_states[s] : "unknown";
}

static enum station_job_state db__job_state_parse(const char *s)
{
    for (int i = 0; i < 4; i++) {
        if (s && strcmp(s, db__job_states[i]) == 0)
            return (enum station_job_state)i;
    }
    return STATION_JOB_IMPORTED;
}

/* Map an SQLite result to our codes at the boundary, logging the original. */
static int db__fail(struct station_db *db, int src, const char *what)
{
    nu_error("station.db: %s: %s (sqlite %d)", what, sqlite3_errmsg(db->h), src);
    if (src == SQLITE_BUSY || src == SQLITE_LOCKED)
        return NU_ERR_BUSY;
    if ((src & 0xff) == SQLITE_CONSTRAINT)
        return NU_ERR_EXISTS;
    /* The storage, not the data: worth trying again once it is back. */
    if ((src & 0xff) == SQLITE_FULL || (src & 0xff) == SQLITE_IOERR ||
        (src & 0xff) == SQLITE_CANTOPEN || (src & 0xff) == SQLITE_READONLY)
        return NU_ERR_IO;
    return NU_ERR_DB;
}

static int db__exec(struct station_db *db, const char *sql)
{
    int src = sqlite3_exec(db->h, sql, NULL, NULL, NULL);
    return src == SQLITE_OK ? NU_OK : db__fail(db, src, sql);
}

static int db__prep(struct station_db *db, const char *sql, sqlite3_stmt **out)
{
    int src = sqlite3_prepare_v2(db->h, sql, -1, out, NULL);
    return src == SQLITE_OK ? NU_OK : db__fail(db, src, "prepare");
}

/* Run a statement that returns no rows. */
static int db__done(struct station_db *db, sqlite3_stmt *st, const char *what)
{
    int src = sqlite3_step(st);
    int rc = src == SQLITE_DONE ? NU_OK : db__fail(db, src, what);
    sqlite3_finalize(st);
    return rc;
}

static void db__text(sqlite3_stmt *st, int col, char *out, size_t cap)
{
    const unsigned char *t = sqlite3_column_text(st, col);
    snprintf(out, cap, "%s", t ? (const char *)t : "");
}

static uint64_t db__u64(sqlite3_stmt *st, int col)
{
    sqlite3_int64 v = sqlite3_column_int64(st, col);
    return v < 0 ? 0 : (uint64_t)v;
}

static int db__schema_create(struct station_db *db)
{
    char ver[16];
    int rc = db__exec(db, "BEGIN IMMEDIATE");
    if (rc != NU_OK)
        return rc;
    rc = db__exec(db, db__schema);
    if (rc == NU_OK)
        rc = station_db_meta_get(db, "schema", ver, sizeof(ver));
    if (rc == NU_ERR_NOT_FOUND) {
        snprintf(ver, sizeof(ver), "%d", STATION_DB_SCHEMA);
        rc = station_db_meta_set(db, "schema", ver);
    } else if (rc == NU_OK && atoi(ver) < 2) {
        /* 1 -> 2: the programmers' cloud link (issue 15). */
        rc = db__exec(db, "ALTER TABLE programmers ADD COLUMN"
                          " cloud_lost_ms INTEGER NOT NULL DEFAULT 0");
        if (rc == NU_OK)
            rc = station_db_meta_set(db, "schema", "2");
    } else if (rc == NU_OK && atoi(ver) > STATION_DB_SCHEMA) {
        nu_error("station.db: schema %s is newer than this build (%d)", ver, STATION_DB_SCHEMA);
        rc = NU_ERR_NOT_SUPPORTED;
    }
    if (rc == NU_OK)
        return db__exec(db, "COMMIT");
    station_db_rollback(db);
    return rc;
}

int station_db_open(const char *path, struct station_db **out_db)
{
    if (!path || !out_db)
        return NU_ERR_INVALID_ARG;
    *out_db = NULL;
    struct station_db *db = calloc(1, sizeof(*db));
    if (!db)
        return NU_ERR_NOMEM;
    int src = sqlite3_open_v2(
        path, &db->h, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, NULL);
    int rc = src == SQLITE_OK ? NU_OK : db__fail(db, src, path);
    if (rc == NU_OK)
        sqlite3_busy_timeout(db->h, DB__BUSY_TIMEOUT_MS);
    /* WAL lets the CLI read while the daemon writes; FULL makes every commit
     * durable (the journal is the CM's record). */
    if (rc == NU_OK)
        rc = db__exec(db, "PRAGMA journal_mode=WAL");
    if (rc == NU_OK)
        rc = db__exec(db, "PRAGMA synchronous=FULL");
    if (rc == NU_OK)
        rc = db__exec(db, "PRAGMA foreign_keys=ON");
    if (rc == NU_OK)
        rc = db__schema_create(db);
    if (rc != NU_OK) {
        station_db_close(db);
        return rc;
    }
    *out_db = db;
    return NU_OK;
}

int station_db_open_dir(const char *dir, struct station_db **out_db)
{
    char folder[PATH_MAX], path[PATH_MAX];
    int rc = nu_paths_get(dir, NU_PATH_STATION, folder, sizeof(folder));
    if (rc == NU_OK)
        rc = nu_mkdirs(folder, 0700);
    if (rc == NU_OK)
        rc = nu_path_fmt(path, sizeof(path), "%s/station.db", folder);
    if (rc == NU_OK)
        rc = station_db_open(path, out_db);
    return rc;
}

int station_db_open_dir_existing(const char *dir, struct station_db **out_db)
{
    char path[PATH_MAX];
    int rc = nu_paths_get(dir, NU_PATH_STATION, path, sizeof(path));
    if (rc == NU_OK)
        rc = nu_path_fmt(path + strlen(path), sizeof(path) - strlen(path), "/station.db");
    if (rc == NU_OK && !nu_path_exists(path))
        rc = NU_ERR_NOT_FOUND;
    if (rc == NU_OK)
        rc = station_db_open(path, out_db);
    return rc;
}

void station_db_close(struct station_db *db)
{
    if (!db)
        return;
    sqlite3_finalize(db->journal_ins);
    sqlite3_close_v2(db->h);
    free(db);
}

int station_db_begin(struct station_db *db)
{
    return db__exec(db, "BEGIN IMMEDIATE");
}

int station_db_commit(struct station_db *db)
{
    return db__exec(db, "COMMIT");
}

void station_db_rollback(struct station_db *db)
{
    if (!sqlite3_get_autocommit(db->h))
        sqlite3_exec(db->h, "ROLLBACK", NULL, NULL, NULL);
}

int station_db_data_version(struct station_db *db, uint64_t *out_version)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db, "PRAGMA data_version", &st);
    if (rc != NU_OK)
        return rc;
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *out_version = db__u64(st, 0);
    else
        rc = db__fail(db, src, "data_version");
    sqlite3_finalize(st);
    return rc;
}

int station_db_meta_set(struct station_db *db, const char *key, const char *value)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db, "INSERT OR REPLACE INTO meta(key, value) VALUES(?, ?)", &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, value, -1, SQLITE_STATIC);
    return db__done(db, st, "meta set");
}

int station_db_meta_get(struct station_db *db, const char *key, char *out, size_t cap)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db, "SELECT value FROM meta WHERE key = ?", &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, key, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        const unsigned char *t = sqlite3_column_text(st, 0);
        size_t n = t ? strlen((const char *)t) : 0;
        if (n >= cap)
            rc = NU_ERR_TOO_LARGE;
        else
            memcpy(out, t ? (const char *)t : "", n + 1);
    } else {
        rc = src == SQLITE_DONE ? NU_ERR_NOT_FOUND : db__fail(db, src, "meta get");
    }
    sqlite3_finalize(st);
    return rc;
}

/* ---- packages and jobs --------------------------------------------------------- */

int station_db_package_find(struct station_db *db, const uint8_t package_id[16], const char *job_id,
                            const char *programmer_id, int *out_conflict)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db,
                      "SELECT package_id = ?1 FROM packages WHERE package_id = ?1 OR"
                      " (job_id = ?2 AND programmer_id = ?3) ORDER BY 1 DESC LIMIT 1",
                      &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_blob(st, 1, package_id, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, job_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, programmer_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        if (out_conflict)
            *out_conflict = sqlite3_column_int(st, 0) ? 1 : 2;
    } else {
        rc = src == SQLITE_DONE ? NU_ERR_NOT_FOUND : db__fail(db, src, "package find");
    }
    sqlite3_finalize(st);
    return rc;
}

static int db__job_insert(struct station_db *db, const struct station_pkg *pkg, uint64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db,
                      "INSERT INTO jobs(job_id, state, firmware, imported_at_ms, updated_at_ms)"
                      " VALUES(?, 'imported', ?, ?, ?)",
                      &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, pkg->job_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, pkg->firmware, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)now_ms);
    sqlite3_bind_int64(st, 4, (sqlite3_int64)now_ms);
    return db__done(db, st, "job insert");
}

static int db__package_insert(struct station_db *db, const struct station_pkg *pkg,
                              const char *file, uint64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db,
                      "INSERT INTO packages(package_id, job_id, programmer_id, unit_limit,"
                      " expires_at_ms, created_at_ms, firmware, file, sha256, imported_at_ms)"
                      " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_blob(st, 1, pkg->package_id, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, pkg->job_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, pkg->programmer_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, pkg->limit);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)pkg->expires_at_ms);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)pkg->created_at_ms);
    sqlite3_bind_text(st, 7, pkg->firmware, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, file, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 9, pkg->file_sha256, 32, SQLITE_STATIC);
    sqlite3_bind_int64(st, 10, (sqlite3_int64)now_ms);
    return db__done(db, st, "package insert");
}

int station_db_package_add(struct station_db *db, const struct station_pkg *pkg, const char *file,
                           uint64_t now_ms, int *out_conflict)
{
    struct station_job job;
    if (!db || !pkg || !file)
        return NU_ERR_INVALID_ARG;
    if (out_conflict)
        *out_conflict = 0;
    int rc = station_db_begin(db);
    if (rc != NU_OK)
        return rc;
    rc =
        station_db_package_find(db, pkg->package_id, pkg->job_id, pkg->programmer_id, out_conflict);
    if (rc == NU_OK)
        rc = NU_ERR_EXISTS;
    else if (rc == NU_ERR_NOT_FOUND)
        rc = station_db_job_get(db, pkg->job_id, &job);
    if (rc == NU_OK && job.state == STATION_JOB_DONE)
        rc = NU_ERR_STATE;
    else if (rc == NU_ERR_NOT_FOUND)
        rc = db__job_insert(db, pkg, now_ms);
    if (rc == NU_OK)
        rc = db__package_insert(db, pkg, file, now_ms);
    if (rc == NU_OK)
        return station_db_commit(db);
    station_db_rollback(db);
    return rc;
}

static void db__package_row(sqlite3_stmt *st, struct station_package *p)
{
    memset(p, 0, sizeof(*p));
    const void *id = sqlite3_column_blob(st, 0);
    if (id && sqlite3_column_bytes(st, 0) == 16)
        memcpy(p->package_id, id, 16);
    db__text(st, 1, p->job_id, sizeof(p->job_id));
    db__text(st, 2, p->programmer_id, sizeof(p->programmer_id));
    p->limit = (uint32_t)sqlite3_column_int64(st, 3);
    p->expires_at_ms = db__u64(st, 4);
    p->created_at_ms = db__u64(st, 5);
    db__text(st, 6, p->firmware, sizeof(p->firmware));
    db__text(st, 7, p->file, sizeof(p->file));
    p->imported_at_ms = db__u64(st, 8);
    p->delivered_at_ms = db__u64(st, 9);
    p->finished = sqlite3_column_int(st, 10);
    db__text(st, 11, p->last_error, sizeof(p->last_error));
}

int station_db_packages(struct station_db *db, const char *job_id, station_db_package_cb cb,
                        void *ctx)
{
    sqlite3_stmt *st = NULL;
    struct station_package p;
    int rc = db__prep(db,
                      "SELECT package_id, job_id, programmer_id, unit_limit, expires_at_ms,"
                      " created_at_ms, firmware, file, imported_at_ms, delivered_at_ms, finished,"
                      " last_error FROM packages WHERE ?1 IS NULL OR job_id = ?1"
                      " ORDER BY imported_at_ms, rowid",
                      &st);
    if (rc != NU_OK)
        return rc;
    if (job_id)
        sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
    int src = SQLITE_DONE;
    while (rc == NU_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        db__package_row(st, &p);
        rc = cb(ctx, &p);
    }
    if (rc == NU_OK && src != SQLITE_DONE)
        rc = db__fail(db, src, "packages");
    sqlite3_finalize(st);
    return rc;
}

int station_db_package_delivered(struct station_db *db, const uint8_t package_id[16],
                                 uint64_t now_ms)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(
        db, "UPDATE packages SET delivered_at_ms = ?, last_error = '' WHERE package_id = ?", &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)now_ms);
    sqlite3_bind_blob(st, 2, package_id, 16, SQLITE_STATIC);
    return db__done(db, st, "package delivered");
}

int station_db_package_error(struct station_db *db, const uint8_t package_id[16], const char *error)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db, "UPDATE packages SET last_error = ? WHERE package_id = ?", &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, error ? error : "", -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 2, package_id, 16, SQLITE_STATIC);
    return db__done(db, st, "package error");
}

int station_db_package_finished(struct station_db *db, const uint8_t package_id[16], int finished)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db, "UPDATE packages SET finished = ? WHERE package_id = ?", &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_int(st, 1, finished ? 1 : 0);
    sqlite3_bind_blob(st, 2, package_id, 16, SQLITE_STATIC);
    return db__done(db, st, "package finished");
}

static const char db__job_cols[] = "SELECT job_id, firmware, state, generation, imported_at_ms,"
                                   " started_at_ms, stopped_at_ms, done_at_ms FROM jobs";

static void db__job_row(sqlite3_stmt *st, struct station_job *j)
{
    char state[16];
    memset(j, 0, sizeof(*j));
    db__text(st, 0, j->job_id, sizeof(j->job_id));
    db__text(st, 1, j->firmware, sizeof(j->firmware));
    db__text(st, 2, state, sizeof(state));
    j->state = db__job_state_parse(state);
    j->generation = db__u64(st, 3);
    j->imported_at_ms = db__u64(st, 4);
    j->started_at_ms = db__u64(st, 5);
    j->stopped_at_ms = db__u64(st, 6);
    j->done_at_ms = db__u64(st, 7);
}

int station_db_job_get(struct station_db *db, const char *job_id, struct station_job *out)
{
    char sql[256];
    sqlite3_stmt *st = NULL;
    snprintf(sql, sizeof(sql), "%s WHERE job_id = ?", db__job_cols);
    int rc = db__prep(db, sql, &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        db__job_row(st, out);
    else
        rc = src == SQLITE_DONE ? NU_ERR_NOT_FOUND : db__fail(db, src, "job get");
    sqlite3_finalize(st);
    return rc;
}

int station_db_jobs(struct station_db *db, station_db_job_cb cb, void *ctx)
{
    char sql[256];
    sqlite3_stmt *st = NULL;
    struct station_job j;
    snprintf(sql, sizeof(sql), "%s ORDER BY imported_at_ms, rowid", db__job_cols);
    int rc = db__prep(db, sql, &st);
    if (rc != NU_OK)
        return rc;
    int src = SQLITE_DONE;
    while (rc == NU_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        db__job_row(st, &j);
        rc = cb(ctx, &j);
    }
    if (rc == NU_OK && src != SQLITE_DONE)
        rc = db__fail(db, src, "jobs");
    sqlite3_finalize(st);
    return rc;
}

static int db__job_update(struct station_db *db, const char *job_id, enum station_job_state to,
                          uint64_t now_ms)
{
    static const char *const col[] = {"updated_at_ms", "started_at_ms", "stopped_at_ms",
                                      "done_at_ms"};
    char sql[256];
    sqlite3_stmt *st = NULL;
    snprintf(sql, sizeof(sql),
             "UPDATE jobs SET state = ?1, %s = ?2, updated_at_ms = ?2,"
             " generation = generation + 1 WHERE job_id = ?3",
             col[to]);
    int rc = db__prep(db, sql, &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, station_job_state_name(to), -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 2, (sqlite3_int64)now_ms);
    sqlite3_bind_text(st, 3, job_id, -1, SQLITE_STATIC);
    return db__done(db, st, "job update");
}

static int db__job_unfinish(struct station_db *db, const char *job_id)
{
    sqlite3_stmt *st = NULL;
    int rc =
        db__prep(db, "UPDATE packages SET finished = 0, last_error = '' WHERE job_id = ?", &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
    return db__done(db, st, "job unfinish");
}

int station_db_job_command(struct station_db *db, const char *job_id, enum station_job_state to,
                           uint64_t now_ms, int *out_changed)
{
    struct station_job job;
    if (!db || !job_id || (to != STATION_JOB_STARTED && to != STATION_JOB_STOPPED))
        return NU_ERR_INVALID_ARG;
    if (out_changed)
        *out_changed = 0;
    int rc = station_db_begin(db);
    if (rc != NU_OK)
        return rc;
    rc = station_db_job_get(db, job_id, &job);
    if (rc == NU_OK && job.state == STATION_JOB_DONE)
        rc = NU_ERR_STATE;
    int change = rc == NU_OK && job.state != to;
    if (change)
        rc = db__job_update(db, job_id, to, now_ms);
    if (change && rc == NU_OK && to == STATION_JOB_STARTED)
        rc = db__job_unfinish(db, job_id);
    if (rc == NU_OK)
        rc = station_db_commit(db);
    if (rc != NU_OK) {
        station_db_rollback(db);
        return rc;
    }
    if (out_changed)
        *out_changed = change;
    return NU_OK;
}

int station_db_job_done(struct station_db *db, const char *job_id, uint64_t now_ms)
{
    struct station_job job;
    int rc = station_db_job_get(db, job_id, &job);
    if (rc == NU_OK && job.state != STATION_JOB_DONE)
        rc = db__job_update(db, job_id, STATION_JOB_DONE, now_ms);
    return rc;
}

/* ---- journal and programmers ----------------------------------------------------- */

int station_db_journal_add(struct station_db *db, const struct station_event *ev,
                           const uint8_t *envelope, size_t len, uint64_t received_ms,
                           int *out_added)
{
    if (out_added)
        *out_added = 0;
    if (!db || !ev || (!envelope && len) || len > INT32_MAX)
        return NU_ERR_INVALID_ARG;
    int rc = db->journal_ins
                 ? NU_OK
                 : db__prep(db,
                            "INSERT OR IGNORE INTO journal(received_at_ms, topic, role, sender,"
                            " sender_seq, sent_at_ms, kind, job_id, device_uid, socket, outcome,"
                            " serial, error, detail, envelope)"
                            " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            &db->journal_ins);
    if (rc != NU_OK)
        return rc;
    sqlite3_stmt *st = db->journal_ins;
    sqlite3_bind_int64(st, 1, (sqlite3_int64)received_ms);
    sqlite3_bind_text(st, 2, ev->topic, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, ev->role, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, ev->sender, -1, SQLITE_STATIC);
    /* Stored as the same 64 bits; SQLite integers are signed. */
    sqlite3_bind_int64(st, 5, (sqlite3_int64)ev->seq);
    sqlite3_bind_int64(st, 6, (sqlite3_int64)ev->sent_at_ms);
    sqlite3_bind_text(st, 7, ev->kind, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 8, ev->job_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 9, ev->device_uid, -1, SQLITE_STATIC);
    if (ev->has_device)
        sqlite3_bind_int64(st, 10, ev->socket);
    else
        sqlite3_bind_null(st, 10);
    sqlite3_bind_text(st, 11, ev->outcome ? ev->outcome : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 12, ev->serial, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 13, ev->error ? nu_err_name(ev->error) : "", -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 14, ev->detail, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 15, envelope ? (const void *)envelope : "", (int)len, SQLITE_STATIC);
    int src = sqlite3_step(st);
    rc = src == SQLITE_DONE ? NU_OK : db__fail(db, src, "journal add");
    if (rc == NU_OK && out_added)
        *out_added = sqlite3_changes(db->h) > 0;
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    return rc;
}

int station_db_journal_count(struct station_db *db, const char *job_id, uint64_t *out_count)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db, "SELECT COUNT(*) FROM journal WHERE ?1 IS NULL OR job_id = ?1", &st);
    if (rc != NU_OK)
        return rc;
    if (job_id)
        sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        *out_count = db__u64(st, 0);
    else
        rc = db__fail(db, src, "journal count");
    sqlite3_finalize(st);
    return rc;
}

int station_db_counts(struct station_db *db, const char *job_id, const char *programmer_id,
                      uint64_t since_ms, struct station_counts *out)
{
    sqlite3_stmt *st = NULL;
    memset(out, 0, sizeof(*out));
    int rc = db__prep(
        db,
        "SELECT COUNT(DISTINCT CASE WHEN kind = 'device.provisioned' THEN device_uid END),"
        " COALESCE(SUM(kind = 'device.failed'), 0),"
        " COUNT(DISTINCT CASE WHEN kind = 'device.provisioned' AND received_at_ms >= ?3"
        " THEN device_uid END),"
        " COALESCE(MIN(received_at_ms), 0), COALESCE(MAX(received_at_ms), 0)"
        " FROM journal WHERE job_id = ?1 AND kind IN ('device.provisioned', 'device.failed')"
        " AND role = 'programmer' AND (?2 IS NULL OR sender = ?2)",
        &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
    if (programmer_id)
        sqlite3_bind_text(st, 2, programmer_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 3, (sqlite3_int64)since_ms);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW) {
        out->done = (uint32_t)db__u64(st, 0);
        out->failed = (uint32_t)db__u64(st, 1);
        out->done_recent = (uint32_t)db__u64(st, 2);
        out->first_ms = db__u64(st, 3);
        out->last_ms = db__u64(st, 4);
    } else {
        rc = db__fail(db, src, "counts");
    }
    sqlite3_finalize(st);
    return rc;
}

int station_db_refusal(struct station_db *db, const char *job_id, const char *programmer_id,
                       char out[STATION_DB_REASON_MAX])
{
    sqlite3_stmt *st = NULL;
    out[0] = '\0';
    /* The cloud's answers that end a job: the same list as the programmer's
     * prod__cloud_verdict (pg_produce.c). */
    int rc = db__prep(db,
                      "SELECT error FROM journal WHERE job_id = ?1 AND kind = 'device.failed'"
                      " AND role = 'programmer' AND (?2 IS NULL OR sender = ?2) AND error IN"
                      " ('QUOTA_EXHAUSTED', 'JOB_NOT_ACTIVE', 'EXPIRED', 'REVOKED',"
                      " 'NOT_AUTHORIZED', 'TOKEN') ORDER BY seq DESC LIMIT 1",
                      &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, job_id, -1, SQLITE_STATIC);
    if (programmer_id)
        sqlite3_bind_text(st, 2, programmer_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        snprintf(out, STATION_DB_REASON_MAX, "%s", (const char *)sqlite3_column_text(st, 0));
    else if (src != SQLITE_DONE)
        rc = db__fail(db, src, "refusal");
    sqlite3_finalize(st);
    return rc;
}

int station_db_programmer_put(struct station_db *db, const struct station_programmer *p,
                              const uint8_t *envelope, size_t len)
{
    sqlite3_stmt *st = NULL;
    int rc = db__prep(db,
                      "INSERT OR REPLACE INTO programmers(programmer_id, state, job_id,"
                      " unit_limit, counter, sockets, firmware_version, status_seq,"
                      " status_sent_ms, seen_at_ms, online_since_ms, envelope,"
                      " cloud_lost_ms)"
                      " VALUES(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                      &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, p->programmer_id, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, p->state, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 3, p->job_id, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 4, p->limit);
    sqlite3_bind_int64(st, 5, p->counter);
    sqlite3_bind_int64(st, 6, p->sockets);
    sqlite3_bind_text(st, 7, p->firmware_version, -1, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)p->status_seq);
    sqlite3_bind_int64(st, 9, (sqlite3_int64)p->status_sent_ms);
    sqlite3_bind_int64(st, 10, (sqlite3_int64)p->seen_at_ms);
    sqlite3_bind_int64(st, 11, (sqlite3_int64)p->online_since_ms);
    if (envelope)
        sqlite3_bind_blob(st, 12, envelope, (int)len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 13, (sqlite3_int64)p->cloud_lost_ms);
    return db__done(db, st, "programmer put");
}

static const char db__prog_cols[] =
    "SELECT programmer_id, state, job_id, unit_limit, counter, sockets, firmware_version,"
    " status_seq, status_sent_ms, seen_at_ms, online_since_ms, cloud_lost_ms FROM programmers";

static void db__prog_row(sqlite3_stmt *st, struct station_programmer *out)
{
    memset(out, 0, sizeof(*out));
    db__text(st, 0, out->programmer_id, sizeof(out->programmer_id));
    db__text(st, 1, out->state, sizeof(out->state));
    db__text(st, 2, out->job_id, sizeof(out->job_id));
    out->limit = (uint32_t)db__u64(st, 3);
    out->counter = (uint32_t)db__u64(st, 4);
    out->sockets = (uint32_t)db__u64(st, 5);
    db__text(st, 6, out->firmware_version, sizeof(out->firmware_version));
    out->status_seq = db__u64(st, 7);
    out->status_sent_ms = db__u64(st, 8);
    out->seen_at_ms = db__u64(st, 9);
    out->online_since_ms = db__u64(st, 10);
    out->cloud_lost_ms = db__u64(st, 11);
}

int station_db_programmer_get(struct station_db *db, const char *programmer_id,
                              struct station_programmer *out)
{
    char sql[320];
    sqlite3_stmt *st = NULL;
    snprintf(sql, sizeof(sql), "%s WHERE programmer_id = ?", db__prog_cols);
    int rc = db__prep(db, sql, &st);
    if (rc != NU_OK)
        return rc;
    sqlite3_bind_text(st, 1, programmer_id, -1, SQLITE_STATIC);
    int src = sqlite3_step(st);
    if (src == SQLITE_ROW)
        db__prog_row(st, out);
    else
        rc = src == SQLITE_DONE ? NU_ERR_NOT_FOUND : db__fail(db, src, "programmer get");
    sqlite3_finalize(st);
    return rc;
}

int station_db_programmers(struct station_db *db, station_db_programmer_cb cb, void *ctx)
{
    char sql[320];
    sqlite3_stmt *st = NULL;
    struct station_programmer p;
    snprintf(sql, sizeof(sql), "%s ORDER BY programmer_id", db__prog_cols);
    int rc = db__prep(db, sql, &st);
    if (rc != NU_OK)
        return rc;
    int src = SQLITE_DONE;
    while (rc == NU_OK && (src = sqlite3_step(st)) == SQLITE_ROW) {
        db__prog_row(st, &p);
        rc = cb(ctx, &p);
    }
    if (rc == NU_OK && src != SQLITE_DONE)
        rc = db__fail(db, src, "programmers");
    sqlite3_finalize(st);
    return rc;
}
