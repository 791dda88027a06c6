/*
 * ledger — the cloud's ledger (see ledger.h for the contract): the
 * SQLite schema and its migrations, open/connect/close and WAL control.
 * The other parts live in ledger_*.c by seam; what they share is in
 * ledger_int.h.
 */
#include "ledger_int.h"

/* ------------------------------------------------------------------ schema */

/* ledger__migrations[i] takes user_version i to i + 1, in one transaction. */
static const char *const ledger__migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE jobs ("
    " job_id TEXT PRIMARY KEY NOT NULL CHECK (typeof(job_id) = 'text'),"
    " firmware TEXT NOT NULL,"
    " quota INTEGER NOT NULL CHECK (typeof(quota) = 'integer' AND quota >= 1),"
    " issued INTEGER NOT NULL DEFAULT 0"
    "  CHECK (typeof(issued) = 'integer' AND issued >= 0 AND issued <= quota),"
    " refused INTEGER NOT NULL DEFAULT 0 CHECK (refused >= 0),"
    " status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'closed', 'exhausted')),"
    " created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL DEFAULT 0,"
    " subject_template TEXT NOT NULL DEFAULT '',"
    " created_by TEXT NOT NULL,"
    " updated_at_ms INTEGER NOT NULL);"
    "CREATE TABLE programmers ("
    " programmer_id TEXT PRIMARY KEY NOT NULL CHECK (typeof(programmer_id) = 'text'),"
    " state TEXT NOT NULL CHECK (state IN ('enrolled', 'revoked')),"
    " cert_serial TEXT NOT NULL,"
    " cert_pem TEXT NOT NULL,"
    " package_pubkey BLOB NOT NULL CHECK (length(package_pubkey) = 65),"
    " enrolled_at_ms INTEGER NOT NULL,"
    " revoked_at_ms INTEGER,"
    " revoke_reason TEXT);"
    "CREATE TABLE job_allocations ("
    " job_id TEXT NOT NULL REFERENCES jobs (job_id),"
    " programmer_id TEXT NOT NULL REFERENCES programmers (programmer_id),"
    " quota_limit INTEGER NOT NULL CHECK (typeof(quota_limit) = 'integer' AND quota_limit >= 1),"
    " issued INTEGER NOT NULL DEFAULT 0"
    "  CHECK (typeof(issued) = 'integer' AND issued >= 0 AND issued <= quota_limit),"
    " PRIMARY KEY (job_id, programmer_id)) WITHOUT ROWID;"
    /* No foreign key to programmers: a token is minted before its
     * programmer exists. */
    "CREATE TABLE enroll_tokens ("
    " token_hash BLOB PRIMARY KEY NOT NULL CHECK (length(token_hash) = 32),"
    " programmer_id TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL,"
    " used_at_ms INTEGER) WITHOUT ROWID;"
    "CREATE TABLE certificates ("
    " serial TEXT PRIMARY KEY NOT NULL CHECK (typeof(serial) = 'text'),"
    " job_id TEXT NOT NULL REFERENCES jobs (job_id),"
    " device_uid BLOB NOT NULL CHECK (typeof(device_uid) = 'blob'"
    "  AND length(device_uid) BETWEEN 1 AND 64),"
    " pubkey_hash BLOB NOT NULL CHECK (typeof(pubkey_hash) = 'blob' AND length(pubkey_hash) = 32),"
    " pem TEXT NOT NULL,"
    " programmer_id TEXT NOT NULL,"
    " idempotency_key BLOB NOT NULL,"
    " issued_at_ms INTEGER NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('issued', 'provisioned', 'failed', 'revoked')),"
    " state_at_ms INTEGER NOT NULL DEFAULT 0,"
    " detail TEXT NOT NULL DEFAULT '',"
    " revoked_at_ms INTEGER,"
    " revoke_reason TEXT,"
    " UNIQUE (job_id, device_uid));"
    "CREATE INDEX certificates_by_uid ON certificates (device_uid);"
    "CREATE TABLE requests ("
    " idempotency_key BLOB NOT NULL,"
    " requester TEXT NOT NULL,"
    " op TEXT NOT NULL,"
    " request_hash BLOB NOT NULL,"
    " response BLOB,"
    " code INTEGER NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " serial TEXT,"
    " PRIMARY KEY (requester, idempotency_key)) WITHOUT ROWID;"
    "CREATE TABLE audit_events ("
    " seq INTEGER PRIMARY KEY,"
    " ts INTEGER NOT NULL CHECK (typeof(ts) = 'integer' AND ts >= 0),"
    " kind TEXT NOT NULL CHECK (typeof(kind) = 'text'),"
    " actor TEXT NOT NULL CHECK (typeof(actor) = 'text'),"
    " job_id TEXT NOT NULL DEFAULT '' CHECK (typeof(job_id) = 'text'),"
    " payload TEXT NOT NULL CHECK (typeof(payload) = 'text'),"
    " prev_hash BLOB NOT NULL CHECK (typeof(prev_hash) = 'blob' AND length(prev_hash) = 32),"
    " hash BLOB NOT NULL CHECK (typeof(hash) = 'blob' AND length(hash) = 32));"
    "CREATE INDEX audit_events_by_job ON audit_events (job_id, seq);"
    "CREATE TABLE audit_head ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " seq INTEGER NOT NULL,"
    " hash BLOB NOT NULL CHECK (length(hash) = 32));"
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, zeroblob(32));"
    /* Defense in depth; verify does not rely on these. */
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events"
    " BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;"
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events"
    " BEGIN SELECT RAISE(ABORT, 'audit_events is append-only'); END;"
    "CREATE TRIGGER audit_events_seq BEFORE INSERT ON audit_events"
    " WHEN NEW.seq IS NOT (SELECT seq + 1 FROM audit_head WHERE id = 1)"
    " BEGIN SELECT RAISE(ABORT, 'audit_events: seq must follow the chain head'); END;"
    "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head"
    " BEGIN SELECT RAISE(ABORT, 'audit_head is permanent'); END;"
    "CREATE TRIGGER certificates_no_delete BEFORE DELETE ON certificates"
    " BEGIN SELECT RAISE(ABORT, 'certificates are never deleted'); END;"
    "CREATE TRIGGER certificates_fixed BEFORE UPDATE OF serial, job_id, device_uid, pubkey_hash,"
    " pem, programmer_id, idempotency_key, issued_at_ms ON certificates"
    " BEGIN SELECT RAISE(ABORT, 'an issued certificate does not change'); END;"
    "CREATE TRIGGER jobs_no_delete BEFORE DELETE ON jobs"
    " BEGIN SELECT RAISE(ABORT, 'jobs are never deleted'); END;"
    "CREATE TRIGGER programmers_no_delete BEFORE DELETE ON programmers"
    " BEGIN SELECT RAISE(ABORT, 'programmers are never deleted'); END;",
    /* 1 -> 2: firmware delivery. Signed images, each job's firmware key and
     * its sealed packages with the hashes of their firmware tokens. Nothing
     * here changes once written. */
    "CREATE TABLE firmware_images ("
    " name TEXT PRIMARY KEY NOT NULL CHECK (typeof(name) = 'text'),"
    " image_digest BLOB NOT NULL CHECK (typeof(image_digest) = 'blob'"
    "  AND length(image_digest) = 32),"
    " image_size INTEGER NOT NULL CHECK (typeof(image_size) = 'integer' AND image_size >= 1),"
    " security_counter INTEGER NOT NULL CHECK (security_counter >= 0),"
    " request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),"
    " signed_by TEXT NOT NULL,"
    " signed_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE job_keys ("
    " job_id TEXT PRIMARY KEY NOT NULL REFERENCES jobs (job_id),"
    " firmware_key BLOB NOT NULL CHECK (typeof(firmware_key) = 'blob'"
    "  AND length(firmware_key) = 32),"
    " image_digest BLOB NOT NULL CHECK (typeof(image_digest) = 'blob'"
    "  AND length(image_digest) = 32),"
    " image_size INTEGER NOT NULL CHECK (typeof(image_size) = 'integer' AND image_size >= 1),"
    " request_hash BLOB NOT NULL CHECK (length(request_hash) = 32),"
    " created_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE job_packages ("
    " job_id TEXT NOT NULL,"
    " programmer_id TEXT NOT NULL,"
    " position INTEGER NOT NULL CHECK (typeof(position) = 'integer' AND position >= 0),"
    " token_hash BLOB NOT NULL CHECK (typeof(token_hash) = 'blob' AND length(token_hash) = 32),"
    " package BLOB NOT NULL CHECK (typeof(package) = 'blob'"
    "  AND length(package) BETWEEN 1 AND 65536),"
    " PRIMARY KEY (job_id, programmer_id),"
    " UNIQUE (job_id, position),"
    " FOREIGN KEY (job_id, programmer_id) REFERENCES job_allocations (job_id, programmer_id))"
    " WITHOUT ROWID;"
    "CREATE TRIGGER firmware_images_fixed BEFORE UPDATE ON firmware_images"
    " BEGIN SELECT RAISE(ABORT, 'a signed image record does not change'); END;"
    "CREATE TRIGGER firmware_images_no_delete BEFORE DELETE ON firmware_images"
    " BEGIN SELECT RAISE(ABORT, 'signed image records are never deleted'); END;"
    "CREATE TRIGGER job_keys_fixed BEFORE UPDATE ON job_keys"
    " BEGIN SELECT RAISE(ABORT, 'a job key does not change'); END;"
    "CREATE TRIGGER job_keys_no_delete BEFORE DELETE ON job_keys"
    " BEGIN SELECT RAISE(ABORT, 'job keys are never deleted'); END;"
    "CREATE TRIGGER job_packages_fixed BEFORE UPDATE ON job_packages"
    " BEGIN SELECT RAISE(ABORT, 'a sealed package does not change'); END;"
    "CREATE TRIGGER job_packages_no_delete BEFORE DELETE ON job_packages"
    " BEGIN SELECT RAISE(ABORT, 'sealed packages are never deleted'); END;",
    /* 2 -> 3: attested enrollment. What each programmer's KeyStore attested
     * (vendor serial, firmware measurement; '' for programmers enrolled
     * before) and the single-use enrollment challenges. Challenges live here,
     * not in memory, so they survive a restart and work when several agents
     * share the file (the challenge and the enroll may reach different ones). */
    "ALTER TABLE programmers ADD COLUMN vendor_serial TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE programmers ADD COLUMN firmware_measurement TEXT NOT NULL DEFAULT '';"
    "CREATE TABLE enroll_nonces ("
    " nonce BLOB PRIMARY KEY NOT NULL CHECK (typeof(nonce) = 'blob' AND length(nonce) = 32),"
    " programmer_id TEXT NOT NULL,"
    " created_at_ms INTEGER NOT NULL,"
    " expires_at_ms INTEGER NOT NULL,"
    " used_at_ms INTEGER) WITHOUT ROWID;",
    /* 3 -> 4: offline leases (issue 15; ledger.h, "offline leases"). */
    "CREATE TABLE lease_policies ("
    " job_id TEXT PRIMARY KEY NOT NULL REFERENCES jobs(job_id),"
    " units INTEGER NOT NULL CHECK (units >= 1),"
    " hours INTEGER NOT NULL CHECK (hours >= 1),"
    " set_by TEXT NOT NULL,"
    " set_at_ms INTEGER NOT NULL);"
    "CREATE TABLE leases ("
    " lease_id TEXT PRIMARY KEY NOT NULL,"
    " job_id TEXT NOT NULL REFERENCES jobs(job_id),"
    " programmer_id TEXT NOT NULL,"
    " units INTEGER NOT NULL CHECK (units >= 1),"
    " used INTEGER NOT NULL DEFAULT 0 CHECK (used >= 0 AND used <= units),"
    " line_pub_hash BLOB NOT NULL,"
    " cert_der BLOB NOT NULL,"
    " granted_at_ms INTEGER NOT NULL,"
    " not_before_ms INTEGER NOT NULL,"
    " not_after_ms INTEGER NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('active','returned','expired')),"
    " closed_at_ms INTEGER);"
    "CREATE INDEX leases_job ON leases(job_id, state);"
    "CREATE TABLE lease_certs ("
    " serial TEXT PRIMARY KEY NOT NULL REFERENCES certificates(serial),"
    " lease_id TEXT NOT NULL REFERENCES leases(lease_id),"
    " counter INTEGER NOT NULL,"
    " recorded_at_ms INTEGER NOT NULL,"
    " UNIQUE(lease_id, counter));",
    /* 4 -> 5: state every agent must see, whichever host it runs on (issue
     * 13): programmer firmware the OEM revoked (was DIR/cloud/revoked-
     * measurements, read at enrollment in the transaction that records it),
     * the bytes of each signed image (was DIR/firmware/NAME.img), and the
     * last device CRL issued (its number only grows, whichever agent signs). */
    "CREATE TABLE revoked_measurements ("
    " measurement TEXT PRIMARY KEY NOT NULL CHECK (typeof(measurement) = 'text'"
    "  AND length(measurement) = 64),"
    " reason TEXT NOT NULL,"
    " revoked_by TEXT NOT NULL,"
    " revoked_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TABLE firmware_blobs ("
    " name TEXT PRIMARY KEY NOT NULL REFERENCES firmware_images (name),"
    " image BLOB NOT NULL CHECK (typeof(image) = 'blob' AND length(image) >= 1)) WITHOUT ROWID;"
    "CREATE TABLE device_crl ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " crl_number INTEGER NOT NULL CHECK (crl_number >= 0),"
    " der BLOB NOT NULL CHECK (typeof(der) = 'blob' AND length(der) >= 1));"
    "CREATE TRIGGER revoked_measurements_fixed BEFORE UPDATE ON revoked_measurements"
    " BEGIN SELECT RAISE(ABORT, 'a firmware revocation does not change'); END;"
    "CREATE TRIGGER revoked_measurements_no_delete BEFORE DELETE ON revoked_measurements"
    " BEGIN SELECT RAISE(ABORT, 'firmware revocations are final'); END;"
    "CREATE TRIGGER firmware_blobs_fixed BEFORE UPDATE ON firmware_blobs"
    " BEGIN SELECT RAISE(ABORT, 'a signed image does not change'); END;"
    "CREATE TRIGGER firmware_blobs_no_delete BEFORE DELETE ON firmware_blobs"
    " BEGIN SELECT RAISE(ABORT, 'signed images are never deleted'); END;",
    /* 5 -> 6: an offline certificate may supersede an online one of the
     * same chip that was never delivered (issue 15, ledger_lease.c): the
     * online one is revoked, so UNIQUE(job_id, device_uid) becomes "one
     * certificate per chip and job that is not revoked". SQLite cannot drop
     * a table constraint: the table is rebuilt, rows, order, index and
     * triggers as they were (lease_certs' references are checked at COMMIT). */
    "PRAGMA defer_foreign_keys = ON;"
    "CREATE TABLE certificates_v5 AS SELECT * FROM certificates ORDER BY rowid;"
    "DROP TABLE certificates;"
    "CREATE TABLE certificates ("
    " serial TEXT PRIMARY KEY NOT NULL CHECK (typeof(serial) = 'text'),"
    " job_id TEXT NOT NULL REFERENCES jobs (job_id),"
    " device_uid BLOB NOT NULL CHECK (typeof(device_uid) = 'blob'"
    "  AND length(device_uid) BETWEEN 1 AND 64),"
    " pubkey_hash BLOB NOT NULL CHECK (typeof(pubkey_hash) = 'blob' AND length(pubkey_hash) = 32),"
    " pem TEXT NOT NULL,"
    " programmer_id TEXT NOT NULL,"
    " idempotency_key BLOB NOT NULL,"
    " issued_at_ms INTEGER NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('issued', 'provisioned', 'failed', 'revoked')),"
    " state_at_ms INTEGER NOT NULL DEFAULT 0,"
    " detail TEXT NOT NULL DEFAULT '',"
    " revoked_at_ms INTEGER,"
    " revoke_reason TEXT);"
    "INSERT INTO certificates SELECT * FROM certificates_v5 ORDER BY rowid;"
    "DROP TABLE certificates_v5;"
    "CREATE INDEX certificates_by_uid ON certificates (device_uid);"
    "CREATE UNIQUE INDEX certificates_live ON certificates (job_id, device_uid)"
    " WHERE state <> 'revoked';"
    "CREATE TRIGGER certificates_no_delete BEFORE DELETE ON certificates"
    " BEGIN SELECT RAISE(ABORT, 'certificates are never deleted'); END;"
    "CREATE TRIGGER certificates_fixed BEFORE UPDATE OF serial, job_id, device_uid, pubkey_hash,"
    " pem, programmer_id, idempotency_key, issued_at_ms ON certificates"
    " BEGIN SELECT RAISE(ABORT, 'an issued certificate does not change'); END;"
    "CREATE TABLE cert_superseded ("
    " serial TEXT PRIMARY KEY NOT NULL REFERENCES certificates(serial),"
    " job_id TEXT NOT NULL,"
    " by_serial TEXT NOT NULL REFERENCES certificates(serial),"
    " lease_id TEXT NOT NULL REFERENCES leases(lease_id),"
    " superseded_at_ms INTEGER NOT NULL) WITHOUT ROWID;"
    "CREATE TRIGGER cert_superseded_fixed BEFORE UPDATE ON cert_superseded"
    " BEGIN SELECT RAISE(ABORT, 'a supersession does not change'); END;"
    "CREATE TRIGGER cert_superseded_no_delete BEFORE DELETE ON cert_superseded"
    " BEGIN SELECT RAISE(ABORT, 'supersessions are final'); END;",
    /* 6 -> 7: a lease holds its units until it is returned or written off,
     * with no 24 h grace (ledger_lease.c). The version is what matters: an
     * agent of version 6 refuses this ledger, so none of them releases a
     * lease's units by time any more (on a ledger several agents share, a
     * standby not yet upgraded would). The index serves the write-off's
     * look-up of a programmer's leases. */
    "CREATE INDEX leases_of_programmer ON leases (job_id, programmer_id, granted_at_ms);",
};

#define LEDGER_N_MIGRATIONS (sizeof(ledger__migrations) / sizeof(ledger__migrations[0]))
_Static_assert(LEDGER_N_MIGRATIONS == CLOUD_LEDGER_SCHEMA_VERSION, "one migration per version");
/* ------------------------------------------------------------ SQLite glue */

/* Map an SQLite result at the boundary and log the original (open and
 * schema only: statements go through ledger_store, which maps its own). */
int ledger__dberr(sqlite3 *db, int rc, const char *what)
{
    int ext = db ? sqlite3_extended_errcode(db) : rc;
    /* BUSY is the normal answer while another agent writes: not a warning. */
    enum nu_log_level level = (rc & 0xff) == SQLITE_BUSY ? NU_LOG_DEBUG : NU_LOG_WARN;

    nu_log(level, "ledger: %s: %s (sqlite %d)", what, db ? sqlite3_errmsg(db) : sqlite3_errstr(rc),
           ext);
    switch (rc & 0xff) {
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
        return NU_ERR_BUSY;
    case SQLITE_NOMEM:
        return NU_ERR_NOMEM;
    case SQLITE_IOERR:
    case SQLITE_FULL:
    case SQLITE_CANTOPEN:
    case SQLITE_READONLY:
        return NU_ERR_IO;
    case SQLITE_CONSTRAINT:
        if (ext == SQLITE_CONSTRAINT_PRIMARYKEY || ext == SQLITE_CONSTRAINT_UNIQUE)
            return NU_ERR_EXISTS;
        return NU_ERR_DB;
    default:
        return NU_ERR_DB;
    }
}

/* ---------------------------------------------------------------- open */

int ledger__pragma_int(sqlite3 *db, const char *sql, int64_t *out)
{
    sqlite3_stmt *st = NULL;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc != SQLITE_OK)
        return ledger__dberr(db, rc, sql);
    rc = sqlite3_step(st);
    if (rc == SQLITE_ROW) {
        *out = sqlite3_column_int64(st, 0);
        rc = NU_OK;
    } else {
        rc = ledger__dberr(db, rc, sql);
    }
    sqlite3_finalize(st);
    return rc;
}

static int ledger__exec_sql(sqlite3 *db, const char *sql)
{
    int rc = sqlite3_exec(db, sql, NULL, NULL, NULL);
    return rc == SQLITE_OK ? NU_OK : ledger__dberr(db, rc, "schema");
}

/* Run a pragma that answers one text value; DB unless it is `want`. */
static int ledger__pragma_text(sqlite3 *db, const char *sql, const char *want)
{
    sqlite3_stmt *st = NULL;
    const unsigned char *v;
    int rc = sqlite3_prepare_v2(db, sql, -1, &st, NULL);

    if (rc != SQLITE_OK)
        return ledger__dberr(db, rc, sql);
    rc = sqlite3_step(st);
    if (rc != SQLITE_ROW) {
        rc = ledger__dberr(db, rc, sql);
    } else {
        v = sqlite3_column_text(st, 0);
        rc = v && strcmp((const char *)v, want) == 0 ? NU_OK : NU_ERR_DB;
        if (rc != NU_OK)
            nu_error("ledger: %s answered %s, need %s", sql, v ? (const char *)v : "null", want);
    }
    sqlite3_finalize(st);
    return rc;
}

/*
 * Is this our kind of file? A fresh file (no schema, version 0) is fine.
 * Errors: CONFIG (some other database), NOT_SUPPORTED (newer schema).
 */
int ledger__identify(sqlite3 *db, int64_t *out_version)
{
    int64_t app = 0, version = 0, objects = 0;
    /* One snapshot for the three reads: another process may commit the
     * schema between them (app 0 with version 1 would look foreign). */
    int own = sqlite3_get_autocommit(db);
    int rc = own ? ledger__exec_sql(db, "BEGIN") : NU_OK;

    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "PRAGMA application_id", &app);
    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "PRAGMA user_version", &version);
    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "SELECT count(*) FROM sqlite_master", &objects);
    if (own && !sqlite3_get_autocommit(db))
        (void)sqlite3_exec(db, "ROLLBACK", NULL, NULL, NULL);
    if (rc != NU_OK)
        return rc;
    if (app != CLOUD_LEDGER_APPLICATION_ID && (app != 0 || version != 0 || objects != 0)) {
        nu_error("ledger: not a NuSEC ledger (application_id %lld, user_version %lld)",
                 (long long)app, (long long)version);
        return NU_ERR_CONFIG;
    }
    if (version > CLOUD_LEDGER_SCHEMA_VERSION || version < 0) {
        nu_error("ledger: schema version %lld is newer than this program's %d", (long long)version,
                 CLOUD_LEDGER_SCHEMA_VERSION);
        return NU_ERR_NOT_SUPPORTED;
    }
    *out_version = version;
    return NU_OK;
}

/* One integer from a parameterless query on a store (1 row), else DB. */
static int ledger__store_int(struct ledger_store *store, const char *sql, int64_t *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger_store_prepare(store, sql, &st);
    if (rc == NU_OK && ledger__row(st, &rc))
        *out = ledger_store_col_i64(st, 0);
    else if (rc == NU_OK)
        rc = NU_ERR_DB;
    ledger_store_finalize(st);
    return rc;
}

/*
 * PostgreSQL's ledger_identify: version 0 when the database has no ledger
 * yet. Errors: CONFIG (ledger_meta of some other program), NOT_SUPPORTED
 * (newer schema), CONNECTION, DB.
 */
int ledger__pg_identify(struct ledger_store *store, int64_t *out_version)
{
    int64_t exists = 0, app = 0, version = 0;
    int rc = ledger__store_int(store, "SELECT count(*) FROM pg_class c JOIN pg_namespace n"
                                      " ON n.oid = c.relnamespace WHERE n.nspname = 'public'"
                                      " AND c.relname = 'ledger_meta'",
                               &exists);
    if (rc == NU_OK && exists)
        rc = ledger__store_int(store, "SELECT application_id FROM ledger_meta WHERE id = 1", &app);
    if (rc == NU_OK && exists)
        rc = ledger__store_int(store, "SELECT version FROM ledger_meta WHERE id = 1", &version);
    if (rc != NU_OK)
        return rc;
    if (exists && app != CLOUD_LEDGER_APPLICATION_ID) {
        nu_error("ledger: this PostgreSQL database holds some other ledger_meta"
                 " (application_id %lld)", (long long)app);
        return NU_ERR_CONFIG;
    }
    if (version > CLOUD_LEDGER_SCHEMA_VERSION || version < 0) {
        nu_error("ledger: the database's schema version %lld is newer than this program's %d;"
                 " upgrade the agent", (long long)version, CLOUD_LEDGER_SCHEMA_VERSION);
        return NU_ERR_NOT_SUPPORTED;
    }
    *out_version = version;
    return NU_OK;
}

/* Bring the schema to our version under the write lock (SQLite) or an
 * advisory lock (PostgreSQL), so two processes do not both create it. */
static int ledger__migrate(struct cloud_ledger *l)
{
    int pg = ledger__is_pg(l);
    int64_t version = 0;
    char sql[128];
    int rc = ledger__begin(l, 1);

    if (rc == NU_OK && pg)
        rc = ledger_store_xact_lock(l->store, 0, "schema", 6);
    if (rc != NU_OK) {
        ledger__rollback(l);
        return rc;
    }
    rc = pg ? ledger__pg_identify(l->store, &version) : ledger__identify(l->db, &version);
    for (int64_t v = version; rc == NU_OK && v < CLOUD_LEDGER_SCHEMA_VERSION; v++) {
        nu_info("ledger: migrating schema %lld -> %lld", (long long)v, (long long)v + 1);
        rc = pg ? ledger_store_exec(l->store, ledger_schema_pg_migrations[v])
                : ledger__exec_sql(l->db, ledger__migrations[v]);
    }
    if (rc == NU_OK && version == 0) {
        struct ledger_json j;
        lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
        lj_raw(&j, "{", 1);
        lj_u64(&j, "schema", CLOUD_LEDGER_SCHEMA_VERSION);
        lj_raw(&j, "}", 1);
        rc = ledger__append_json(l, &j, nu_time_ms(), "ledger.created", LEDGER_ACTOR_SELF, "");
    } else if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION) {
        /* An upgrade is a change of what the file holds: it is in the chain. */
        struct ledger_json j;
        lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
        lj_raw(&j, "{", 1);
        lj_u64(&j, "from", (uint64_t)version);
        lj_u64(&j, "to", CLOUD_LEDGER_SCHEMA_VERSION);
        lj_raw(&j, "}", 1);
        rc = ledger__append_json(l, &j, nu_time_ms(), "ledger.migrated", LEDGER_ACTOR_SELF, "");
    }
    if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION && pg) {
        snprintf(sql, sizeof(sql), "INSERT INTO ledger_meta (id, application_id, version)"
                 " VALUES (1, %d, %d) ON CONFLICT (id) DO UPDATE SET version = %d",
                 CLOUD_LEDGER_APPLICATION_ID, CLOUD_LEDGER_SCHEMA_VERSION,
                 CLOUD_LEDGER_SCHEMA_VERSION);
        rc = ledger_store_exec(l->store, sql);
    } else if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION) {
        snprintf(sql, sizeof(sql), "PRAGMA application_id = %d; PRAGMA user_version = %d",
                 CLOUD_LEDGER_APPLICATION_ID, CLOUD_LEDGER_SCHEMA_VERSION);
        rc = ledger__exec_sql(l->db, sql);
    }
    if (rc == NU_OK)
        return ledger__commit(l);
    ledger__rollback(l);
    return rc;
}

/* Create the file 0600 ourselves: SQLite would use the umask, and the WAL
 * and shm files copy the main file's mode. */
/* Create the file 0600 if it is new; never open an existing one here: POSIX
 * locks belong to the process, so closing ANY descriptor of the file drops
 * the locks of this process's other connections (SQLite then lets another
 * process delete the WAL under them). O_EXCL leaves no descriptor to close. */
static int ledger__create_file(const char *path)
{
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0 && errno == EEXIST)
        return NU_OK;
    if (fd < 0) {
        nu_error("ledger: cannot create %s", path);
        return NU_ERR_IO;
    }
    close(fd);
    return NU_OK;
}

/*
 * Switch to WAL. The switch upgrades a shared lock to an exclusive one, and
 * when two processes do that at once on a fresh file SQLite answers BUSY at
 * once instead of calling the busy handler (that wait could deadlock), so
 * retry, bounded by the busy timeout. journal_mode answers the mode it ended
 * in, which may not be WAL (a file system without shared memory): the
 * durability claims rest on it, so anything else is an error.
 */
static int ledger__wal_on(sqlite3 *db)
{
    uint64_t deadline = nu_mono_ms() + CLOUD_LEDGER_LOCK_TIMEOUT_MS;
    int rc;

    for (;;) {
        rc = ledger__pragma_text(db, "PRAGMA journal_mode = WAL", "wal");
        if (rc != NU_ERR_BUSY || nu_mono_ms() >= deadline)
            return rc;
        /* A few ms, different per process, so the contenders fall out of step. */
        usleep(1000u * (2u + (unsigned)getpid() % 13u));
    }
}

int ledger__configure(sqlite3 *db, int write)
{
    int on = 1, off = 0;
    int64_t v;
    int rc;

    sqlite3_extended_result_codes(db, 1);
    sqlite3_busy_timeout(db, CLOUD_LEDGER_LOCK_TIMEOUT_MS);
    /* No writable_schema / journal tricks from SQL; schema code not trusted. */
    sqlite3_db_config(db, SQLITE_DBCONFIG_DEFENSIVE, 1, &on);
    sqlite3_db_config(db, SQLITE_DBCONFIG_TRUSTED_SCHEMA, 0, &off);
    if (!write)
        return NU_OK;
    rc = ledger__wal_on(db);
    if (rc == NU_OK)
        rc = ledger__exec_sql(db, "PRAGMA synchronous = FULL; PRAGMA foreign_keys = ON;"
                                  /* 16 MiB instead of 2: at a million certificates the
                                   * bench measured ~10% more issuance (64 MiB: no more) */
                                  " PRAGMA cache_size = -16384");
    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "PRAGMA synchronous", &v);
    if (rc == NU_OK && v != 2) /* FULL */
        rc = NU_ERR_DB;
    if (rc == NU_OK)
        rc = ledger__pragma_int(db, "PRAGMA foreign_keys", &v);
    if (rc == NU_OK && v != 1)
        rc = NU_ERR_DB;
    return rc;
}

static int ledger__alloc_scratch(struct cloud_ledger *l)
{
    l->sign_out = calloc(1, sizeof(*l->sign_out));
    l->cert = calloc(1, sizeof(*l->cert));
    l->prog = calloc(1, sizeof(*l->prog));
    l->alloc = calloc(CLOUD_LEDGER_ALLOC_MAX, sizeof(*l->alloc));
    l->payload = malloc(LEDGER_PAYLOAD_INTERNAL_MAX);
    if (!l->sign_out || !l->cert || !l->prog || !l->alloc || !l->payload)
        return NU_ERR_NOMEM;
    return NU_OK;
}

static int ledger__new(struct cloud_ledger **out)
{
    struct cloud_ledger *l = calloc(1, sizeof(*l));
    int rc;

    *out = NULL;
    if (!l)
        return NU_ERR_NOMEM;
    l->refusal_ttl_ms = CLOUD_LEDGER_REFUSAL_TTL_MS;
    rc = ledger__alloc_scratch(l);
    if (rc != NU_OK) {
        cloud_ledger_close(l);
        return rc;
    }
    *out = l;
    return NU_OK;
}

static int ledger__sqlite_open(const char *path, struct cloud_ledger **out_ledger);

/*
 * PostgreSQL: connect, then the schema must be ours and current; an agent
 * does not create nor migrate it unless `migrate` (the owner runs
 * `nusec ledger init|migrate`).
 */
static int ledger__pg_open(const char *uri, const char *password_file, int migrate,
                           struct cloud_ledger **out_ledger)
{
    struct cloud_ledger *l = NULL;
    int64_t version = 0;
    int rc = ledger__new(&l);

    if (rc == NU_OK)
        rc = ledger_store_open(uri, password_file, &l->store);
    if (rc == NU_OK)
        rc = ledger__pg_identify(l->store, &version);
    if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION) {
        if (migrate) {
            rc = ledger__migrate(l);
        } else {
            nu_error("ledger: the PostgreSQL database has %s (schema %lld, this agent needs %d):"
                     " run `nusec ledger %s --ledger URI` as the owner role",
                     version ? "an older ledger" : "no ledger", (long long)version,
                     CLOUD_LEDGER_SCHEMA_VERSION, version ? "migrate" : "init");
            rc = NU_ERR_CONFIG;
        }
    }
    if (rc != NU_OK) {
        cloud_ledger_close(l);
        return rc;
    }
    *out_ledger = l;
    return NU_OK;
}

int cloud_ledger_connect(const char *target, const char *password_file, int migrate,
                         struct cloud_ledger **out_ledger)
{
    if (!target || !*target || !out_ledger)
        return NU_ERR_INVALID_ARG;
    *out_ledger = NULL;
    if (ledger_store_target_is_pg(target))
        return ledger__pg_open(target, password_file, migrate, out_ledger);
    if (!strncmp(target, "sqlite:", 7))
        target += 7;
    return *target ? ledger__sqlite_open(target, out_ledger) : NU_ERR_INVALID_ARG;
}

int cloud_ledger_init(const char *target, const char *password_file, const char *agent_role)
{
    struct cloud_ledger *l = NULL;
    char sql[4096], quoted[2 * CLOUD_LEDGER_ID_MAX + 3];
    int rc;

    if (agent_role && ledger__id_check(agent_role) != NU_OK)
        return NU_ERR_INVALID_ARG;
    rc = cloud_ledger_connect(target, password_file, 1, &l);
    if (rc == NU_OK && agent_role && ledger__is_pg(l)) {
        /* An id is [A-Za-z0-9._-]: quoting it as an identifier is enough. */
        snprintf(quoted, sizeof quoted, "\"%s\"", agent_role);
        snprintf(sql, sizeof sql, LEDGER_SCHEMA_PG_GRANTS, quoted);
        rc = ledger_store_exec(l->store, sql);
    }
    cloud_ledger_close(l);
    return rc;
}

int cloud_ledger_open(const char *target, struct cloud_ledger **out_ledger)
{
    return cloud_ledger_connect(target, NULL, 1, out_ledger);
}

/* SQLite: open (creating it 0600) the file, identify it, WAL, then create or
 * migrate the schema under the write lock. */
static int ledger__sqlite_open(const char *path, struct cloud_ledger **out_ledger)
{
    struct cloud_ledger *l = NULL;
    int64_t version = 0;
    int rc = ledger__create_file(path);
    if (rc != NU_OK)
        return rc;
    rc = ledger__new(&l);
    if (rc != NU_OK)
        return rc;
    rc = sqlite3_open_v2(path, &l->db,
                         SQLITE_OPEN_READWRITE | SQLITE_OPEN_NOMUTEX | SQLITE_OPEN_NOFOLLOW, NULL);
    if (rc != SQLITE_OK) {
        rc = ledger__dberr(l->db, rc, "open");
        goto out;
    }
    /* Identify before switching to WAL, so a foreign file is left as it was. */
    sqlite3_busy_timeout(l->db, CLOUD_LEDGER_LOCK_TIMEOUT_MS);
    rc = ledger__identify(l->db, &version);
    if (rc == NU_OK)
        rc = ledger__configure(l->db, 1);
    if (rc == NU_OK)
        rc = ledger_store_sqlite_wrap(l->db, &l->store); /* it closes the handle now */
    if (rc == NU_OK && version < CLOUD_LEDGER_SCHEMA_VERSION)
        rc = ledger__migrate(l);
out:
    if (rc != NU_OK) {
        cloud_ledger_close(l);
        return rc;
    }
    *out_ledger = l;
    return NU_OK;
}

void cloud_ledger_close(struct cloud_ledger *ledger)
{
    if (!ledger)
        return;
    if (ledger->store)
        ledger_store_close(ledger->store); /* its statements, and the SQLite handle */
    else if (ledger->db)
        sqlite3_close(ledger->db);
    free(ledger->payload);
    free(ledger->alloc);
    free(ledger->prog);
    free(ledger->cert);
    free(ledger->sign_out);
    free(ledger);
}

int cloud_ledger_set_lock_timeout(struct cloud_ledger *ledger, unsigned ms)
{
    if (!ledger)
        return NU_ERR_INVALID_ARG;
    return ledger_store_set_lock_timeout(ledger->store, ms);
}

void cloud_ledger_set_refusal_ttl(struct cloud_ledger *ledger, uint64_t ms)
{
    if (ledger)
        ledger->refusal_ttl_ms = ms;
}

/* ------------------------------------------------------------ maintenance */

int cloud_ledger_set_inline_maintenance(struct cloud_ledger *ledger, int on)
{
    if (!ledger)
        return NU_ERR_INVALID_ARG;
    return ledger_store_set_inline_maintenance(ledger->store, on);
}

int cloud_ledger_maintain(struct cloud_ledger *ledger)
{
    if (!ledger)
        return NU_ERR_INVALID_ARG;
    return ledger_store_maintain(ledger->store);
}
