/* ledger_schema_pg — see ledger_schema_pg.h. */
#include "ledger_schema_pg.h"

#include "ledger.h"

#define PG_REFUSE(name, msg)                                                                       \
    "CREATE FUNCTION " name "() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN"                     \
    " RAISE EXCEPTION '" msg "'; END $f$;"

const char *const ledger_schema_pg_migrations[] = {
    /* 0 -> 1 */
    "CREATE TABLE ledger_meta ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " application_id BIGINT NOT NULL,"
    " version INTEGER NOT NULL);"
    "CREATE TABLE jobs ("
    " job_id TEXT PRIMARY KEY,"
    " firmware TEXT NOT NULL,"
    " quota BIGINT NOT NULL CHECK (quota >= 1),"
    " issued BIGINT NOT NULL DEFAULT 0 CHECK (issued >= 0 AND issued <= quota),"
    " refused BIGINT NOT NULL DEFAULT 0 CHECK (refused >= 0),"
    " status TEXT NOT NULL CHECK (status IN ('active', 'paused', 'closed', 'exhausted')),"
    " created_at_ms BIGINT NOT NULL,"
    " expires_at_ms BIGINT NOT NULL DEFAULT 0,"
    " subject_template TEXT NOT NULL DEFAULT '',"
    " created_by TEXT NOT NULL,"
    " updated_at_ms BIGINT NOT NULL);"
    "CREATE TABLE programmers ("
    " programmer_id TEXT PRIMARY KEY,"
    " state TEXT NOT NULL CHECK (state IN ('enrolled', 'revoked')),"
    " cert_serial TEXT NOT NULL,"
    " cert_pem TEXT NOT NULL,"
    " package_pubkey BYTEA NOT NULL CHECK (length(package_pubkey) = 65),"
    " enrolled_at_ms BIGINT NOT NULL,"
    " revoked_at_ms BIGINT,"
    " revoke_reason TEXT);"
    "CREATE TABLE job_allocations ("
    " job_id TEXT NOT NULL REFERENCES jobs (job_id),"
    " programmer_id TEXT NOT NULL REFERENCES programmers (programmer_id),"
    " quota_limit BIGINT NOT NULL CHECK (quota_limit >= 1),"
    " issued BIGINT NOT NULL DEFAULT 0 CHECK (issued >= 0 AND issued <= quota_limit),"
    " PRIMARY KEY (job_id, programmer_id));"
    "CREATE TABLE enroll_tokens ("
    " token_hash BYTEA PRIMARY KEY CHECK (length(token_hash) = 32),"
    " programmer_id TEXT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " expires_at_ms BIGINT NOT NULL,"
    " used_at_ms BIGINT);"
    "CREATE TABLE certificates ("
    " serial TEXT PRIMARY KEY,"
    " job_id TEXT NOT NULL REFERENCES jobs (job_id),"
    " device_uid BYTEA NOT NULL CHECK (length(device_uid) BETWEEN 1 AND 64),"
    " pubkey_hash BYTEA NOT NULL CHECK (length(pubkey_hash) = 32),"
    " pem TEXT NOT NULL,"
    " programmer_id TEXT NOT NULL,"
    " idempotency_key BYTEA NOT NULL,"
    " issued_at_ms BIGINT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('issued', 'provisioned', 'failed', 'revoked')),"
    " state_at_ms BIGINT NOT NULL DEFAULT 0,"
    " detail TEXT NOT NULL DEFAULT '',"
    " revoked_at_ms BIGINT,"
    " revoke_reason TEXT,"
    " UNIQUE (job_id, device_uid));"
    "CREATE INDEX certificates_by_uid ON certificates (device_uid);"
    "CREATE TABLE requests ("
    " idempotency_key BYTEA NOT NULL,"
    " requester TEXT NOT NULL,"
    " op TEXT NOT NULL,"
    " request_hash BYTEA NOT NULL,"
    " response BYTEA,"
    " code BIGINT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " serial TEXT,"
    " PRIMARY KEY (requester, idempotency_key));"
    "CREATE TABLE audit_events ("
    " seq BIGINT PRIMARY KEY,"
    " ts BIGINT NOT NULL CHECK (ts >= 0),"
    " kind TEXT NOT NULL,"
    " actor TEXT NOT NULL,"
    " job_id TEXT NOT NULL DEFAULT '',"
    " payload TEXT NOT NULL,"
    " prev_hash BYTEA NOT NULL CHECK (length(prev_hash) = 32),"
    " hash BYTEA NOT NULL CHECK (length(hash) = 32));"
    "CREATE INDEX audit_events_by_job ON audit_events (job_id, seq);"
    "CREATE TABLE audit_head ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " seq BIGINT NOT NULL,"
    " hash BYTEA NOT NULL CHECK (length(hash) = 32));"
    "INSERT INTO audit_head (id, seq, hash) VALUES (1, 0, '\\x" /* 32 zero bytes */
    "0000000000000000000000000000000000000000000000000000000000000000');"
    /* Defense in depth, as on SQLite; the GRANTs are the real fence. */
    PG_REFUSE("nusec_append_only", "audit_events is append-only")
    PG_REFUSE("nusec_head_permanent", "audit_head is permanent")
    PG_REFUSE("nusec_cert_no_delete", "certificates are never deleted")
    PG_REFUSE("nusec_cert_fixed", "an issued certificate does not change")
    PG_REFUSE("nusec_job_no_delete", "jobs are never deleted")
    PG_REFUSE("nusec_prog_no_delete", "programmers are never deleted")
    "CREATE FUNCTION nusec_audit_seq() RETURNS trigger LANGUAGE plpgsql AS $f$ BEGIN"
    " IF NEW.seq IS DISTINCT FROM (SELECT seq + 1 FROM audit_head WHERE id = 1) THEN"
    " RAISE EXCEPTION 'audit_events: seq must follow the chain head'; END IF;"
    " RETURN NEW; END $f$;"
    "CREATE TRIGGER audit_events_no_update BEFORE UPDATE ON audit_events"
    " FOR EACH ROW EXECUTE FUNCTION nusec_append_only();"
    "CREATE TRIGGER audit_events_no_delete BEFORE DELETE ON audit_events"
    " FOR EACH ROW EXECUTE FUNCTION nusec_append_only();"
    "CREATE TRIGGER audit_events_seq BEFORE INSERT ON audit_events"
    " FOR EACH ROW EXECUTE FUNCTION nusec_audit_seq();"
    "CREATE TRIGGER audit_head_no_delete BEFORE DELETE ON audit_head"
    " FOR EACH ROW EXECUTE FUNCTION nusec_head_permanent();"
    "CREATE TRIGGER certificates_no_delete BEFORE DELETE ON certificates"
    " FOR EACH ROW EXECUTE FUNCTION nusec_cert_no_delete();"
    "CREATE TRIGGER certificates_fixed BEFORE UPDATE OF serial, job_id, device_uid, pubkey_hash,"
    " pem, programmer_id, idempotency_key, issued_at_ms ON certificates"
    " FOR EACH ROW EXECUTE FUNCTION nusec_cert_fixed();"
    "CREATE TRIGGER jobs_no_delete BEFORE DELETE ON jobs"
    " FOR EACH ROW EXECUTE FUNCTION nusec_job_no_delete();"
    "CREATE TRIGGER programmers_no_delete BEFORE DELETE ON programmers"
    " FOR EACH ROW EXECUTE FUNCTION nusec_prog_no_delete();",
    /* 1 -> 2: firmware delivery. */
    "CREATE TABLE firmware_images ("
    " name TEXT PRIMARY KEY,"
    " image_digest BYTEA NOT NULL CHECK (length(image_digest) = 32),"
    " image_size BIGINT NOT NULL CHECK (image_size >= 1),"
    " security_counter BIGINT NOT NULL CHECK (security_counter >= 0),"
    " request_hash BYTEA NOT NULL CHECK (length(request_hash) = 32),"
    " signed_by TEXT NOT NULL,"
    " signed_at_ms BIGINT NOT NULL);"
    "CREATE TABLE job_keys ("
    " job_id TEXT PRIMARY KEY REFERENCES jobs (job_id),"
    " firmware_key BYTEA NOT NULL CHECK (length(firmware_key) = 32),"
    " image_digest BYTEA NOT NULL CHECK (length(image_digest) = 32),"
    " image_size BIGINT NOT NULL CHECK (image_size >= 1),"
    " request_hash BYTEA NOT NULL CHECK (length(request_hash) = 32),"
    " created_at_ms BIGINT NOT NULL);"
    "CREATE TABLE job_packages ("
    " job_id TEXT NOT NULL,"
    " programmer_id TEXT NOT NULL,"
    " position BIGINT NOT NULL CHECK (position >= 0),"
    " token_hash BYTEA NOT NULL CHECK (length(token_hash) = 32),"
    " package BYTEA NOT NULL CHECK (length(package) BETWEEN 1 AND 65536),"
    " PRIMARY KEY (job_id, programmer_id),"
    " UNIQUE (job_id, position),"
    " FOREIGN KEY (job_id, programmer_id) REFERENCES job_allocations (job_id, programmer_id));"
    PG_REFUSE("nusec_fw_fixed", "a signed image record does not change")
    PG_REFUSE("nusec_fw_no_delete", "signed image records are never deleted")
    PG_REFUSE("nusec_keys_fixed", "a job key does not change")
    PG_REFUSE("nusec_keys_no_delete", "job keys are never deleted")
    PG_REFUSE("nusec_pkg_fixed", "a sealed package does not change")
    PG_REFUSE("nusec_pkg_no_delete", "sealed packages are never deleted")
    "CREATE TRIGGER firmware_images_fixed BEFORE UPDATE ON firmware_images"
    " FOR EACH ROW EXECUTE FUNCTION nusec_fw_fixed();"
    "CREATE TRIGGER firmware_images_no_delete BEFORE DELETE ON firmware_images"
    " FOR EACH ROW EXECUTE FUNCTION nusec_fw_no_delete();"
    "CREATE TRIGGER job_keys_fixed BEFORE UPDATE ON job_keys"
    " FOR EACH ROW EXECUTE FUNCTION nusec_keys_fixed();"
    "CREATE TRIGGER job_keys_no_delete BEFORE DELETE ON job_keys"
    " FOR EACH ROW EXECUTE FUNCTION nusec_keys_no_delete();"
    "CREATE TRIGGER job_packages_fixed BEFORE UPDATE ON job_packages"
    " FOR EACH ROW EXECUTE FUNCTION nusec_pkg_fixed();"
    "CREATE TRIGGER job_packages_no_delete BEFORE DELETE ON job_packages"
    " FOR EACH ROW EXECUTE FUNCTION nusec_pkg_no_delete();",
    /* 2 -> 3: attested enrollment (see the SQLite migration). */
    "ALTER TABLE programmers ADD COLUMN vendor_serial TEXT NOT NULL DEFAULT '';"
    "ALTER TABLE programmers ADD COLUMN firmware_measurement TEXT NOT NULL DEFAULT '';"
    "CREATE TABLE enroll_nonces ("
    " nonce BYTEA PRIMARY KEY CHECK (length(nonce) = 32),"
    " programmer_id TEXT NOT NULL,"
    " created_at_ms BIGINT NOT NULL,"
    " expires_at_ms BIGINT NOT NULL,"
    " used_at_ms BIGINT);",
    /* 3 -> 4: offline leases (see the SQLite migration). */
    "CREATE TABLE lease_policies ("
    " job_id TEXT PRIMARY KEY REFERENCES jobs(job_id),"
    " units BIGINT NOT NULL CHECK (units >= 1),"
    " hours BIGINT NOT NULL CHECK (hours >= 1),"
    " set_by TEXT NOT NULL,"
    " set_at_ms BIGINT NOT NULL);"
    "CREATE TABLE leases ("
    " lease_id TEXT PRIMARY KEY,"
    " job_id TEXT NOT NULL REFERENCES jobs(job_id),"
    " programmer_id TEXT NOT NULL,"
    " units BIGINT NOT NULL CHECK (units >= 1),"
    " used BIGINT NOT NULL DEFAULT 0 CHECK (used >= 0 AND used <= units),"
    " line_pub_hash BYTEA NOT NULL,"
    " cert_der BYTEA NOT NULL,"
    " granted_at_ms BIGINT NOT NULL,"
    " not_before_ms BIGINT NOT NULL,"
    " not_after_ms BIGINT NOT NULL,"
    " state TEXT NOT NULL CHECK (state IN ('active','returned','expired')),"
    " closed_at_ms BIGINT);"
    "CREATE INDEX leases_job ON leases(job_id, state);"
    "CREATE TABLE lease_certs ("
    " serial TEXT PRIMARY KEY REFERENCES certificates(serial),"
    " lease_id TEXT NOT NULL REFERENCES leases(lease_id),"
    " counter BIGINT NOT NULL,"
    " recorded_at_ms BIGINT NOT NULL,"
    " UNIQUE(lease_id, counter));",
    /* 4 -> 5: shared state of agents on several hosts (see the SQLite migration). */
    "CREATE TABLE revoked_measurements ("
    " measurement TEXT PRIMARY KEY CHECK (length(measurement) = 64),"
    " reason TEXT NOT NULL,"
    " revoked_by TEXT NOT NULL,"
    " revoked_at_ms BIGINT NOT NULL);"
    "CREATE TABLE firmware_blobs ("
    " name TEXT PRIMARY KEY REFERENCES firmware_images (name),"
    " image BYTEA NOT NULL CHECK (length(image) >= 1));"
    "CREATE TABLE device_crl ("
    " id INTEGER PRIMARY KEY CHECK (id = 1),"
    " crl_number BIGINT NOT NULL CHECK (crl_number >= 0),"
    " der BYTEA NOT NULL CHECK (length(der) >= 1));"
    PG_REFUSE("nusec_rmeas_fixed", "a firmware revocation does not change")
    PG_REFUSE("nusec_rmeas_no_delete", "firmware revocations are final")
    PG_REFUSE("nusec_blob_fixed", "a signed image does not change")
    PG_REFUSE("nusec_blob_no_delete", "signed images are never deleted")
    "CREATE TRIGGER revoked_measurements_fixed BEFORE UPDATE ON revoked_measurements"
    " FOR EACH ROW EXECUTE FUNCTION nusec_rmeas_fixed();"
    "CREATE TRIGGER revoked_measurements_no_delete BEFORE DELETE ON revoked_measurements"
    " FOR EACH ROW EXECUTE FUNCTION nusec_rmeas_no_delete();"
    "CREATE TRIGGER firmware_blobs_fixed BEFORE UPDATE ON firmware_blobs"
    " FOR EACH ROW EXECUTE FUNCTION nusec_blob_fixed();"
    "CREATE TRIGGER firmware_blobs_no_delete BEFORE DELETE ON firmware_blobs"
    " FOR EACH ROW EXECUTE FUNCTION nusec_blob_no_delete();",
    /* 5 -> 6: an offline certificate may supersede an undelivered online one
     * (see the SQLite migration): one certificate per chip and job that is
     * not revoked. */
    "ALTER TABLE certificates DROP CONSTRAINT certificates_job_id_device_uid_key;"
    "CREATE UNIQUE INDEX certificates_live ON certificates (job_id, device_uid)"
    " WHERE state <> 'revoked';"
    "CREATE TABLE cert_superseded ("
    " serial TEXT PRIMARY KEY REFERENCES certificates(serial),"
    " job_id TEXT NOT NULL,"
    " by_serial TEXT NOT NULL REFERENCES certificates(serial),"
    " lease_id TEXT NOT NULL REFERENCES leases(lease_id),"
    " superseded_at_ms BIGINT NOT NULL);"
    PG_REFUSE("nusec_csup_fixed", "a supersession does not change")
    PG_REFUSE("nusec_csup_no_delete", "supersessions are final")
    "CREATE TRIGGER cert_superseded_fixed BEFORE UPDATE ON cert_superseded"
    " FOR EACH ROW EXECUTE FUNCTION nusec_csup_fixed();"
    "CREATE TRIGGER cert_superseded_no_delete BEFORE DELETE ON cert_superseded"
    " FOR EACH ROW EXECUTE FUNCTION nusec_csup_no_delete();",
};

const unsigned ledger_schema_pg_count =
    sizeof(ledger_schema_pg_migrations) / sizeof(ledger_schema_pg_migrations[0]);
_Static_assert(sizeof(ledger_schema_pg_migrations) / sizeof(ledger_schema_pg_migrations[0]) ==
                   CLOUD_LEDGER_SCHEMA_VERSION,
               "one PostgreSQL migration per version");

