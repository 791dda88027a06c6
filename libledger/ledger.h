/*
 * ledger — the cloud agent's ledger: jobs and quota, programmers and their
 * enrollment tokens, device certificates, the idempotency cache and the
 * audit hash chain (docs/ARCHITECTURE.md, "The ledger contract").
 *
 * This is the ONE module through which the cloud agent reaches its database;
 * request handling sees only these functions and structs, never SQL, and
 * never which backend runs: SQLite (the embedded default, described below)
 * or PostgreSQL (many agents on many hosts, docs/ledger.md), both behind
 * ledger_store.h. Over 1,000 lines on purpose: the whole contract (tables
 * auditors read, the rules every backend keeps, each function) is one header
 * a reviewer reads top to bottom.
 *
 * STORAGE (SQLite). One file (DIR/cloud/ledger.db), WAL mode,
 * synchronous=FULL (a committed transaction survives power loss),
 * foreign_keys=ON, a busy timeout. Several cloud agents in separate processes
 * may open the same file: every write is one `BEGIN IMMEDIATE` transaction,
 * so writers queue on SQLite's write lock and each decision (quota, the
 * idempotency cache, the chain head) is taken under that lock. The schema
 * version is PRAGMA user_version (CLOUD_LEDGER_SCHEMA_VERSION) and the file is
 * marked with PRAGMA application_id = CLOUD_LEDGER_APPLICATION_ID.
 *
 * TABLES other programs and auditors read (column names are a contract):
 *   jobs(job_id TEXT PK, firmware, quota, issued, refused,
 *        status IN ('active','paused','closed','exhausted'), created_at_ms,
 *        expires_at_ms (0 = no expiry), subject_template, created_by, updated_at_ms)
 *   job_allocations(job_id, programmer_id, quota_limit, issued, PK(job_id, programmer_id))
 *   programmers(programmer_id PK, state IN ('enrolled','revoked'), cert_serial,
 *        cert_pem, package_pubkey BLOB (65-byte point), enrolled_at_ms,
 *        revoked_at_ms, revoke_reason)
 *        vendor_serial, firmware_measurement (hex; both attested at enrollment,
 *        '' for programmers enrolled before schema 3)
 *   enroll_tokens(token_hash BLOB PK = SHA-256(token), programmer_id,
 *        created_at_ms, expires_at_ms, used_at_ms) — never the token itself
 *   enroll_nonces(nonce BLOB PK (32 bytes), programmer_id, created_at_ms,
 *        expires_at_ms, used_at_ms) — single-use enrollment challenges
 *   certificates(serial TEXT PK (lower-case hex), job_id, device_uid BLOB,
 *        pubkey_hash BLOB (SHA-256 of the device public key, as the caller
 *        computes it), pem TEXT, programmer_id (the issuing programmer),
 *        idempotency_key BLOB, issued_at_ms,
 *        state IN ('issued','provisioned','failed','revoked'), state_at_ms,
 *        detail, revoked_at_ms, revoke_reason, UNIQUE(job_id, device_uid))
 *   requests(idempotency_key BLOB, requester, op, request_hash BLOB,
 *        response BLOB, code INT (nu_err value), created_at_ms, serial,
 *        PK(requester, idempotency_key)) — the idempotency cache
 *   audit_events(seq INTEGER PK, ts, kind, actor, job_id ('' = none), payload,
 *        prev_hash BLOB, hash BLOB) — the append-only hash chain
 *   audit_head(id = 1, seq, hash) — the chain head, written with every event,
 *        so that cutting the chain's tail is visible too
 * Since schema 2 (firmware delivery):
 *   firmware_images(name TEXT PK (NAME-X.Y.Z), image_digest BLOB (SHA-256 of
 *        the signed image file), image_size, security_counter, request_hash,
 *        signed_by, signed_at_ms) — one row per image the HSM signed
 *   job_keys(job_id PK -> jobs, firmware_key BLOB (32 bytes, AES-256),
 *        image_digest, image_size (of the job's image when it was created),
 *        request_hash (of the job.create request), created_at_ms)
 *   job_packages(job_id, programmer_id -> job_allocations, position (order
 *        of the create request), token_hash BLOB = SHA-256(firmware token),
 *        package BLOB (the .nspkg bytes, sealed to the programmer),
 *        PK(job_id, programmer_id)) — never the token itself
 *   The firmware key is stored as is: it protects the image in transit,
 *   and the plaintext image lies next to the ledger in DIR/firmware, so
 *   wrapping it with another key kept on the same host would add nothing
 *   (the PKCS#11 interface here signs only). Tokens are stored hashed.
 * Triggers refuse DELETE on audit_events, certificates, jobs and programmers,
 * any UPDATE or DELETE of firmware_images, job_keys and job_packages,
 * any UPDATE of audit_events, and any UPDATE of a certificate's issued
 * identity (serial, job, UID, key hash, PEM, programmer, key, time). They are
 * defense in depth only: cloud_ledger_verify() detects edits made with them
 * dropped. Private keys and plaintext tokens are never stored.
 *
 * AUDIT CHAIN — canonical row encoding (what an auditor re-implements):
 *
 *   row  = u64be(seq) || u64be(ts)
 *          || u32be(len(kind))    || kind
 *          || u32be(len(actor))   || actor
 *          || u32be(len(job_id))  || job_id
 *          || u32be(len(payload)) || payload
 *   hash = SHA-256(prev_hash || row)
 *
 * u64be/u32be are unsigned big-endian integers of 8/4 bytes; strings are the
 * exact UTF-8 bytes stored in the TEXT column (no terminator, no
 * normalisation); job_id is '' (length 0) for events without a job. seq
 * starts at 1 and grows by exactly 1; prev_hash of seq 1 is 32 zero bytes and
 * prev_hash of seq n is hash of seq n-1. Stored text is always valid UTF-8
 * without NUL, so any SQLite client (Python's sqlite3) reads it back
 * byte-exact. Event 1 is 'ledger.created' (actor "ledger", payload
 * {"schema":N} with N the version that created it, ts = wall clock at creation).
 * LIMIT: whoever can write the file can also rewrite the whole chain from
 * some seq onward, head included; the chain alone cannot catch that. Signed
 * checkpoints (cloud_ledger_checkpoint) can: a rewrite at or before one
 * breaks its signature, and dropping the checkpoints of a rewritten stretch
 * shows against a checkpoint the auditor kept (the cloud publishes them).
 * In Python:
 *   h = sha256(prev + struct.pack(">QQ", seq, ts) + b"".join(
 *         struct.pack(">I", len(b)) + b for b in (kind, actor, job_id, payload))).digest()
 *
 * EVENTS the ledger writes itself (kinds reserved: cloud_ledger_audit_append
 * refuses them). Payloads are compact JSON (no spaces, keys in this order,
 * hex lower-case, strings JSON-escaped):
 *   ledger.created     {"schema":N}
 *   job.created        {"firmware":F,"quota":N,"expires_at_ms":N,"subject_template":S,
 *                       "allocations":[{"programmer":P,"limit":N},...]}
 *   job.paused|job.resumed|job.closed  {"from":STATUS,"to":STATUS}
 *   job.exhausted      {"issued":N,"quota":N}
 *   programmer.enrolled {"programmer":P,"serial":S,"previous_serial":S}  ("" if first)
 *                       + "vendor_serial":V,"firmware_measurement":H when attested
 *   programmer.revoked {"programmer":P,"reason":S}
 *   enroll.token.added {"programmer":P,"token_id":H,"expires_at_ms":N}
 *   enroll.token.used  {"programmer":P,"token_id":H}
 *   enroll.refused     {"programmer":P,"code":NAME}
 *   cert.issued        {"serial":S,"device_uid":H,"pubkey_hash":H,"programmer":P,
 *                       "idempotency_key":H,"pem_sha256":H}
 *                      with ts = the certificate's issued_at_ms and job_id its job:
 *                      everything in it derives from the certificate row, which
 *                      is how verify pairs certificates and events one to one.
 *   cert.resent        {"serial":S,"device_uid":H,"programmer":P,"idempotency_key":H}
 *   cert.refused       {"device_uid":H,"programmer":P,"idempotency_key":H,"code":NAME}
 *   cert.provisioned|cert.failed  {"serial":S,"device_uid":H,"reporter":P,"detail":S}
 *   cert.revoked       {"serial":S,"device_uid":H,"reason":S}
 *   ledger.migrated    {"from":N,"to":N}  (an older file opened by a newer program)
 *   firmware.signed    {"name":F,"digest":H,"size":N,"security_counter":N}
 *                      (digest = SHA-256 of the whole signed image file)
 *   audit.checkpoint   {"seq":N,"head":H,"key":H,"sig":H}: the HSM's signature over
 *                      the chain head just before it (audit_checkpoint.h has the
 *                      format); written by cloud_ledger_checkpoint only
 *   job.packages       {"image_digest":H,"image_size":N,"packages":[{"programmer":P,
 *                       "token_id":H,"package_sha256":H},...]}  — written with
 *                      job.created when the job carries firmware secrets
 * (token_id = the first 8 bytes of the token hash in hex; NAME = nu_err_name()).
 *
 * ISSUANCE decision (cloud_ledger_issue), inside one BEGIN IMMEDIATE:
 *   1. idempotency cache, key (requester, idempotency key):
 *      same op and request hash -> the stored answer (out->replayed = 1; no new
 *      row, no quota, no event). A stored REFUSAL is replayed only for
 *      refusal_ttl_ms (default 10 min, the redelivery window): after that the
 *      request is decided afresh, because the cert idempotency key is derived
 *      from (job, UID) and a refusal such as "job paused" must not brand the
 *      device for ever. Sooner when its cause is gone: JOB_NOT_ACTIVE once
 *      the job is active, QUOTA_EXHAUSTED once it has room again (a refund),
 *      for the chip held in its socket asks again with that key.
 *      Successes replay for ever.
 *      Different op or hash -> IDEMPOTENCY_CONFLICT: a refusal (below) that
 *      is not stored, the key's entry being taken; each attempt is audited.
 *   2. checks, first failure wins:
 *      programmer unknown -> NOT_AUTHORIZED; revoked -> REVOKED;
 *      job unknown -> NOT_FOUND;
 *      RESEND: the job already has a certificate for this UID with the SAME
 *        public-key hash, not revoked, and the requester holds an allocation
 *        in the job -> that certificate is answered again (out->resent = 1,
 *        code OK): no signing, no quota, event cert.resent, stored under the
 *        new key. Decided this way because the usual cause is a reply lost
 *        before the device moved to another socket or programmer (a new
 *        requester, hence a new cache key); refusing would strand a device
 *        that holds a valid certificate, and answering costs nothing: the
 *        certificate is public and the CSR already proved the key.
 *      job paused or closed -> JOB_NOT_ACTIVE; exhausted -> QUOTA_EXHAUSTED;
 *      expires_at_ms != 0 and now_ms >= expires_at_ms -> EXPIRED;
 *      requester has no allocation in the job -> NOT_AUTHORIZED;
 *      allocation or job quota used up -> QUOTA_EXHAUSTED;
 *      UID already certified in this job (another key, or revoked) -> DUPLICATE_DEVICE.
 *   3. sign callback (builds + HSM-signs the certificate and the reply bytes),
 *      still inside the transaction: a crash before COMMIT leaves no trace
 *      and nothing was sent.
 *   4. certificate row, jobs.issued and allocation issued + 1 (the job turns
 *      'exhausted' at quota, event job.exhausted), requests row, cert.issued
 *      event; COMMIT.
 * A refusal (2) is committed too: jobs.refused + 1 when the job exists, a
 * cert.refused event, and a requests row (code, no response bytes: the
 * caller rebuilds a refusal from the code). A callback or database error
 * rolls everything back: no row, no event, the same key may be retried.
 *
 * Every mutation writes its audit event in the same transaction. Inputs are
 * untrusted: ids are 1..64 chars of [A-Za-z0-9._-] (nu_envelope_id_check),
 * binary fields and texts are bounded (limits below), text must be UTF-8; a
 * bad input is INVALID_ARG or TOO_LARGE and changes nothing. All SQL uses
 * bound parameters.
 *
 * THREADS: a struct cloud_ledger is used by one thread at a time (it caches
 * prepared statements); open one per thread or per process. Visitor callbacks
 * run inside a read transaction and must not call back into the same ledger.
 *
 * Time is always passed in (now_ms, Unix milliseconds; the one exception is
 * ledger.created), so the ledger is
 * deterministic under test; the caller uses nu_time_ms().
 */
#ifndef CLOUD_LEDGER_H
#define CLOUD_LEDGER_H

#include <stddef.h>
#include <stdint.h>

#define CLOUD_LEDGER_SCHEMA_VERSION 7
#define CLOUD_LEDGER_APPLICATION_ID 0x4e755345 /* "NuSE" */

#define CLOUD_LEDGER_ID_MAX 64          /* job, programmer, requester, actor, firmware */
#define CLOUD_LEDGER_SERIAL_MAX 64      /* hex characters */
#define CLOUD_LEDGER_UID_MAX 64         /* device UID bytes */
#define CLOUD_LEDGER_KEY_MAX 64         /* idempotency key bytes */
#define CLOUD_LEDGER_HASH_LEN 32        /* SHA-256 */
#define CLOUD_LEDGER_PEM_MAX 8192       /* certificate PEM characters */
#define CLOUD_LEDGER_RESPONSE_MAX 16384 /* stored reply bytes */
#define CLOUD_LEDGER_PAYLOAD_MAX 4096   /* audit payload of cloud_ledger_audit_append */
#define CLOUD_LEDGER_KIND_MAX 64        /* audit kind, [a-z0-9._-] */
#define CLOUD_LEDGER_TEXT_MAX 256       /* subject template, reasons, details */
#define CLOUD_LEDGER_ALLOC_MAX 256      /* allocations per job */
#define CLOUD_LEDGER_TOKEN_MIN 16       /* enrollment token bytes */
#define CLOUD_LEDGER_TOKEN_MAX 64
#define CLOUD_LEDGER_PUBKEY_LEN 65 /* uncompressed P-256 point */
#define CLOUD_LEDGER_NONCE_LEN 32  /* enrollment challenge */
#define CLOUD_LEDGER_BATCH_MAX 256 /* requests per cloud_ledger_issue_batch */
#define CLOUD_LEDGER_LOCK_TIMEOUT_MS 10000
#define CLOUD_LEDGER_REFUSAL_TTL_MS (10u * 60u * 1000u)
#define CLOUD_LEDGER_FW_KEY_LEN 32     /* AES-256 firmware key of a job */
#define CLOUD_LEDGER_FW_TOKEN_MAX 256  /* firmware download token bytes */
#define CLOUD_LEDGER_PACKAGE_MAX 65536 /* one sealed package (SealedPackage bytes) */

/* The op name issuance uses in the requests table. */
#define CLOUD_LEDGER_OP_CERT "cert.request"

struct cloud_ledger; /* opaque */

/* ----------------------------------------------------------------- open */

/*
 * Open the ledger `target` names, creating or migrating its schema to
 * CLOUD_LEDGER_SCHEMA_VERSION when needed: cloud_ledger_connect(target, NULL,
 * 1, ...). The target is backend-neutral: a file path or "sqlite:PATH" (the
 * file is created mode 0600; several processes may open a fresh one at once,
 * the schema is made once), or a PostgreSQL libpq URI ("postgresql://...",
 * which needs the owner role to create the schema; the password from
 * PGPASSFILE). *out_ledger is released with cloud_ledger_close().
 * Errors: INVALID_ARG, NOMEM, IO (cannot create/open), BUSY (locked beyond
 * the lock timeout), NOT_SUPPORTED (written by a newer schema version),
 * CONFIG (some other database), CONNECTION, PERMISSION, DB.
 */
int cloud_ledger_open(const char *target, struct cloud_ledger **out_ledger);

/*
 * Open the ledger a target names: a file path (or "sqlite:PATH") or a PostgreSQL libpq URI ("postgresql://..."; multi-host
 * with target_session_attrs=read-write works). On PostgreSQL the password
 * comes from `password_file` (a 0600 file; may be NULL) or libpq's
 * PGPASSFILE, never from the URI (INVALID_ARG). The schema must be ours and
 * current: when it is absent or older, `migrate` = 1 creates/migrates it (the
 * owner role), else CONFIG with a message naming `nusec ledger init|migrate`.
 * Errors: as cloud_ledger_open, plus CONNECTION (unreachable: transient, the
 * caller retries with backoff), PERMISSION (credentials refused).
 */
int cloud_ledger_connect(const char *target, const char *password_file, int migrate,
                         struct cloud_ledger **out_ledger);

/*
 * Create or migrate the schema at `target` as its owner (cloud_ledger_connect
 * with migrate = 1), then on PostgreSQL grant `agent_role` (an id; NULL = no
 * grants) the agents' least privilege: no UPDATE nor DELETE of audit_events,
 * no UPDATE of a certificate's issued identity. Idempotent.
 * Errors: as cloud_ledger_connect.
 */
int cloud_ledger_init(const char *target, const char *password_file, const char *agent_role);

/* Close and free (finalizes statements). NULL is a no-op. */
void cloud_ledger_close(struct cloud_ledger *ledger);

/* How long a write waits for a lock another connection (thread, process or
 * host) holds before it answers BUSY (default CLOUD_LEDGER_LOCK_TIMEOUT_MS).
 * Errors: INVALID_ARG, DB. */
int cloud_ledger_set_lock_timeout(struct cloud_ledger *ledger, unsigned ms);

/* How long a stored issuance refusal is replayed (default
 * CLOUD_LEDGER_REFUSAL_TTL_MS; 0 = refusals are never replayed). */
void cloud_ledger_set_refusal_ttl(struct cloud_ledger *ledger, uint64_t ms);

/* ----------------------------------------------------------------- jobs */

/* Values mirror nusec.v1.JobStatus. */
enum cloud_ledger_job_status {
    CLOUD_LEDGER_JOB_ACTIVE = 1,
    CLOUD_LEDGER_JOB_PAUSED = 2,
    CLOUD_LEDGER_JOB_CLOSED = 3,
    CLOUD_LEDGER_JOB_EXHAUSTED = 4,
};

/* Values mirror nusec.v1.JobAction. */
enum cloud_ledger_job_action {
    CLOUD_LEDGER_JOB_PAUSE = 1,  /* active -> paused */
    CLOUD_LEDGER_JOB_RESUME = 2, /* paused -> active */
    CLOUD_LEDGER_JOB_CLOSE = 3,  /* active | paused | exhausted -> closed (final) */
};

/* One programmer's share of a job. `issued` is ignored on input. */
struct cloud_ledger_alloc {
    char programmer_id[CLOUD_LEDGER_ID_MAX + 1];
    uint32_t limit;
    uint32_t issued;
};

struct cloud_ledger_job {
    char job_id[CLOUD_LEDGER_ID_MAX + 1];
    char firmware[CLOUD_LEDGER_ID_MAX + 1];
    char subject_template[CLOUD_LEDGER_TEXT_MAX + 1];
    char created_by[CLOUD_LEDGER_ID_MAX + 1];
    enum cloud_ledger_job_status status;
    uint32_t quota;
    uint32_t issued;
    uint32_t refused;
    uint64_t created_at_ms;
    uint64_t expires_at_ms; /* 0 = no expiry */
};

/* One allocation's sealed package and the hash of its firmware token. */
struct cloud_ledger_job_package {
    uint8_t token_hash[CLOUD_LEDGER_HASH_LEN]; /* SHA-256 of the firmware token */
    const uint8_t *package;                    /* serialized SealedPackage, borrowed */
    size_t package_len;                        /* 1..CLOUD_LEDGER_PACKAGE_MAX */
};

/* What firmware delivery needs, stored with the job (cloud_ledger_job_create). */
struct cloud_ledger_job_secrets {
    uint8_t firmware_key[CLOUD_LEDGER_FW_KEY_LEN];
    uint8_t image_digest[CLOUD_LEDGER_HASH_LEN];     /* SHA-256 of the signed image file */
    uint32_t image_size;                             /* >= 1 */
    uint8_t request_hash[CLOUD_LEDGER_HASH_LEN];     /* of the create request, to tell replays */
    const struct cloud_ledger_job_package *packages; /* spec->n_alloc, in spec->alloc order */
};

/* Input of cloud_ledger_job_create; all pointers borrowed for the call. */
struct cloud_ledger_job_spec {
    const char *job_id;                     /* chosen by the caller: derive it from the request's
                                               idempotency key and a redelivered create is EXISTS */
    const char *firmware;                   /* image name, an id (e.g. app-1.2.3) */
    const char *subject_template;           /* NULL or UTF-8 text <= CLOUD_LEDGER_TEXT_MAX */
    uint32_t quota;                         /* >= 1 */
    uint64_t expires_at_ms;                 /* 0 = none, else > now_ms */
    const struct cloud_ledger_alloc *alloc; /* 1..CLOUD_LEDGER_ALLOC_MAX, distinct, limit >= 1 */
    size_t n_alloc;
    const char *actor; /* who asks (OEM identity) */
    uint64_t now_ms;
    /* NULL: a job without firmware delivery; else stored with the job in the
     * same transaction (schema 2). Last member, so older initialisers work. */
    const struct cloud_ledger_job_secrets *secrets;
};

/*
 * Create a job and its allocations (event job.created), status active.
 * Every allocated programmer must be enrolled. With spec->secrets, the
 * firmware key, the token hashes and the packages are stored in the same
 * transaction (event job.packages): either all of it exists or none.
 * Errors: INVALID_ARG (bad field, duplicate programmer, sum of limits > quota),
 * TOO_LARGE, EXISTS (job id taken), NOT_FOUND (unknown programmer),
 * REVOKED (revoked programmer), BUSY, DB, IO.
 */
int cloud_ledger_job_create(struct cloud_ledger *ledger, const struct cloud_ledger_job_spec *spec);

/*
 * Read one job into *out_job, and up to alloc_cap allocations (ordered by
 * programmer id) into out_alloc; *out_n_alloc gets the job's allocation
 * count (which may exceed alloc_cap). out_alloc/out_n_alloc may be NULL.
 * Errors: INVALID_ARG, NOT_FOUND, DB.
 */
int cloud_ledger_job_get(struct cloud_ledger *ledger, const char *job_id,
                         struct cloud_ledger_job *out_job, struct cloud_ledger_alloc *out_alloc,
                         size_t alloc_cap, size_t *out_n_alloc);

/* Called once per job with its allocations (borrowed for the call). A
 * non-zero return stops the walk and is returned by cloud_ledger_job_list. */
typedef int (*cloud_ledger_job_visit_fn)(void *ctx, const struct cloud_ledger_job *job,
                                         const struct cloud_ledger_alloc *alloc, size_t n_alloc);

/* Every job, ordered by job id. Errors: INVALID_ARG, NOMEM, DB, or the visitor's value. */
int cloud_ledger_job_list(struct cloud_ledger *ledger, cloud_ledger_job_visit_fn visit, void *ctx);

/*
 * Pause, resume or close a job (event job.paused/resumed/closed). The job's
 * new state goes to *out_job when not NULL.
 * Errors: INVALID_ARG, NOT_FOUND, STATE (transition not allowed, including a
 * no-op such as pausing a paused job), BUSY, DB.
 */
int cloud_ledger_job_control(struct cloud_ledger *ledger, const char *job_id,
                             enum cloud_ledger_job_action action, const char *actor,
                             uint64_t now_ms, struct cloud_ledger_job *out_job);

/* ------------------------------------------- firmware delivery (schema 2) */

/* A job's firmware secrets as stored. Holds a key: the caller wipes it (nu_zero). */
struct cloud_ledger_job_keys {
    uint8_t firmware_key[CLOUD_LEDGER_FW_KEY_LEN];
    uint8_t image_digest[CLOUD_LEDGER_HASH_LEN];
    uint32_t image_size;
    uint8_t request_hash[CLOUD_LEDGER_HASH_LEN];
};

/*
 * The firmware secrets of job_id into *out_keys.
 * Errors: INVALID_ARG, NOT_FOUND (no such job, or a job created without
 * secrets), DB.
 */
int cloud_ledger_job_keys_get(struct cloud_ledger *ledger, const char *job_id,
                              struct cloud_ledger_job_keys *out_keys);

/*
 * May `programmer_id` download the firmware of `job_id` with `token`?
 * Read-only, one snapshot: the job exists, the programmer holds a package
 * in it, and SHA-256(token) equals the stored hash (constant-time compare).
 * The job's status is not judged here (the caller's policy): *out_job gets
 * the job row and *out_keys its secrets (the caller wipes them), both only
 * on NU_OK. Refusals change nothing and are not audited here.
 * Errors: INVALID_ARG (NULL, empty token), NOT_FOUND (no such job),
 * NOT_AUTHORIZED (no package for this programmer in the job), TOKEN (wrong
 * token, or longer than CLOUD_LEDGER_FW_TOKEN_MAX), DB.
 */
int cloud_ledger_firmware_access(struct cloud_ledger *ledger, const char *job_id,
                                 const char *programmer_id, const uint8_t *token, size_t token_len,
                                 struct cloud_ledger_job *out_job,
                                 struct cloud_ledger_job_keys *out_keys);

/* Called per package in creation order (bytes borrowed for the call). */
typedef int (*cloud_ledger_package_visit_fn)(void *ctx, const char *programmer_id,
                                             const uint8_t *package, size_t package_len);

/* The sealed packages of a job, in the order of its create request.
 * Errors: INVALID_ARG, DB, or the visitor's value (none: NU_OK, no call). */
int cloud_ledger_job_packages(struct cloud_ledger *ledger, const char *job_id,
                              cloud_ledger_package_visit_fn visit, void *ctx);

/* A signed firmware image as the ledger records it (in and out). */
struct cloud_ledger_firmware {
    char name[CLOUD_LEDGER_ID_MAX + 1];          /* NAME-X.Y.Z, an id */
    uint8_t image_digest[CLOUD_LEDGER_HASH_LEN]; /* SHA-256 of the whole image file */
    uint32_t image_size;                         /* >= 1 */
    uint32_t security_counter;
    uint8_t request_hash[CLOUD_LEDGER_HASH_LEN]; /* names the sign request, to tell replays */
    char signed_by[CLOUD_LEDGER_ID_MAX + 1];     /* who asked (an id) */
    uint64_t signed_at_ms;
};

/*
 * Record a signed image (event firmware.signed, ts = signed_at_ms, actor =
 * signed_by). A name is recorded once: a signed version is immutable.
 * Errors: INVALID_ARG, TOO_LARGE, EXISTS, BUSY, DB.
 */
int cloud_ledger_firmware_add(struct cloud_ledger *ledger, const struct cloud_ledger_firmware *fw);

/* Errors: INVALID_ARG, TOO_LARGE, NOT_FOUND, DB. */
int cloud_ledger_firmware_get(struct cloud_ledger *ledger, const char *name,
                              struct cloud_ledger_firmware *out_fw);

/* ----------------------------------------------------------- programmers */

enum cloud_ledger_programmer_state {
    CLOUD_LEDGER_PROGRAMMER_ENROLLED = 1,
    CLOUD_LEDGER_PROGRAMMER_REVOKED = 2,
};

struct cloud_ledger_programmer {
    char programmer_id[CLOUD_LEDGER_ID_MAX + 1];
    enum cloud_ledger_programmer_state state;
    char cert_serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    char cert_pem[CLOUD_LEDGER_PEM_MAX + 1];
    uint8_t package_pubkey[CLOUD_LEDGER_PUBKEY_LEN];
    uint64_t enrolled_at_ms;
    uint64_t revoked_at_ms; /* 0 while enrolled */
    char revoke_reason[CLOUD_LEDGER_TEXT_MAX + 1];
    char vendor_serial[CLOUD_LEDGER_ID_MAX + 1];              /* attested; "" before v3 */
    char firmware_measurement[2 * CLOUD_LEDGER_HASH_LEN + 1]; /* hex; "" before v3 */
};

/* An enrollment's result, borrowed for the call. */
struct cloud_ledger_enrollment {
    const char *programmer_id;
    const char *cert_serial;       /* identity certificate serial, lower-case hex */
    const char *cert_pem;          /* identity certificate, PEM, <= CLOUD_LEDGER_PEM_MAX */
    const uint8_t *package_pubkey; /* CLOUD_LEDGER_PUBKEY_LEN bytes, a valid P-256 point */
    const char *actor;             /* who relayed the enrollment */
    uint64_t now_ms;
    /* Attested enrollment (NULL = not recorded / no challenge): the vendor
     * serial (an id), the firmware measurement (64 hex characters) and the
     * challenge nonce (CLOUD_LEDGER_NONCE_LEN bytes), which cloud_ledger_enroll
     * uses up in the same transaction as the token. */
    const char *vendor_serial;
    const char *firmware_measurement;
    const uint8_t *nonce;
};

/*
 * Store a fresh enrollment challenge nonce bound to programmer_id, usable
 * once until expires_at_ms (challenges expired for over a day are purged).
 * Errors: INVALID_ARG, BUSY, DB (a duplicate nonce).
 */
int cloud_ledger_nonce_add(struct cloud_ledger *ledger, const uint8_t nonce[32],
                           const char *programmer_id, uint64_t expires_at_ms, uint64_t now_ms);

/*
 * Could programmer_id use this nonce now? Read-only (cloud_ledger_enroll
 * re-checks and uses it up). Errors: INVALID_ARG, NONCE_REPLAYED (unknown,
 * used, or bound to another programmer), NONCE_EXPIRED, DB.
 */
int cloud_ledger_nonce_check(struct cloud_ledger *ledger, const uint8_t nonce[32],
                             const char *programmer_id, uint64_t now_ms);

/*
 * Record a programmer as enrolled (insert, or re-enrollment replacing its
 * certificate and package key; event programmer.enrolled). A revoked id stays
 * revoked: revocation is final for an id (its old serials stay on the CRL).
 * Errors: INVALID_ARG, TOO_LARGE, REVOKED, BUSY, DB.
 */
int cloud_ledger_programmer_upsert(struct cloud_ledger *ledger,
                                   const struct cloud_ledger_enrollment *enrollment);

/* Errors: INVALID_ARG, NOT_FOUND, DB. */
int cloud_ledger_programmer_get(struct cloud_ledger *ledger, const char *programmer_id,
                                struct cloud_ledger_programmer *out_programmer);

typedef int (*cloud_ledger_programmer_visit_fn)(void *ctx,
                                                const struct cloud_ledger_programmer *programmer);

/* Every programmer by id. Errors: INVALID_ARG, DB, or the visitor's value. */
int cloud_ledger_programmer_list(struct cloud_ledger *ledger,
                                 cloud_ledger_programmer_visit_fn visit, void *ctx);

/*
 * Revoke a programmer (event programmer.revoked); its unused enrollment
 * tokens stop working. Issuance then answers REVOKED.
 * Errors: INVALID_ARG, TOO_LARGE, NOT_FOUND, STATE (already revoked), BUSY, DB.
 */
int cloud_ledger_programmer_revoke(struct cloud_ledger *ledger, const char *programmer_id,
                                   const char *reason, const char *actor, uint64_t now_ms);

/*
 * Store SHA-256(token) as a one-time enrollment token for programmer_id
 * (event enroll.token.added). The token itself is not stored.
 * Errors: INVALID_ARG (token length outside TOKEN_MIN..TOKEN_MAX, expiry not
 * after now), EXISTS, REVOKED (programmer revoked), BUSY, DB.
 */
int cloud_ledger_token_add(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                           const char *programmer_id, uint64_t expires_at_ms, const char *actor,
                           uint64_t now_ms);

/*
 * Would this token enroll programmer_id now? Read-only (for the check before
 * the identity certificate is signed; cloud_ledger_enroll re-checks).
 * Errors: INVALID_ARG, TOKEN (unknown, used, expired, or bound to another
 * programmer), REVOKED, DB.
 */
int cloud_ledger_token_check(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                             const char *programmer_id, uint64_t now_ms);

/*
 * Use the token once (event enroll.token.used). A refusal is audited
 * (enroll.refused) and changes nothing else.
 * Errors: as cloud_ledger_token_check, plus BUSY.
 */
int cloud_ledger_token_consume(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                               const char *programmer_id, const char *actor, uint64_t now_ms);

/*
 * Enrollment in one transaction: consume the token bound to
 * enrollment->programmer_id, then cloud_ledger_programmer_upsert. Either both
 * happen or neither (a refusal is audited as enroll.refused).
 * With enrollment->nonce, the challenge is used up in the same transaction
 * (refused: NONCE_REPLAYED, NONCE_EXPIRED, audited as enroll.refused).
 * Errors: as cloud_ledger_token_consume and cloud_ledger_programmer_upsert.
 */
int cloud_ledger_enroll(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                        const struct cloud_ledger_enrollment *enrollment);

/* ------------------------------------------------------------- issuance */

/* One certificate request, already parsed and checked by the caller (the
 * CSR's signature verified). Pointers are borrowed for the call. */
struct cloud_ledger_issue_req {
    const char *requester;          /* programmer id = the sender's certificate CN */
    const uint8_t *idempotency_key; /* 1..CLOUD_LEDGER_KEY_MAX bytes */
    size_t idempotency_key_len;
    /* SHA-256 of the caller's canonical request. It must cover everything
     * that makes the request (job id, UID, device public key) but not the
     * CSR's ECDSA signature bytes, which differ on every regeneration. */
    uint8_t request_hash[CLOUD_LEDGER_HASH_LEN];
    const char *job_id;
    const uint8_t *device_uid; /* 1..CLOUD_LEDGER_UID_MAX bytes */
    size_t device_uid_len;
    uint8_t pubkey_hash[CLOUD_LEDGER_HASH_LEN]; /* SHA-256 of the device public key */
    uint64_t now_ms;
    void *user; /* the caller's, handed back to the sign callback (e.g. the parsed CSR) */
};

/* What the sign callback is asked for (borrowed for the call). */
struct cloud_ledger_sign_info {
    int resend;         /* 1: the certificate exists (serial, pem below): do NOT sign,
                           only build the reply bytes; 0: build and sign a new one */
    const char *serial; /* resend only */
    const char *pem;    /* resend only */
    const char *firmware;
    const char *subject_template;
    uint32_t quota;
    uint32_t issued; /* the job's issued count once this commits */
};

/* Where the sign callback writes. The buffers are the ledger's. */
struct cloud_ledger_sign_out {
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1]; /* new only: lower-case hex, NUL-terminated */
    char pem[CLOUD_LEDGER_PEM_MAX + 1];       /* new only: certificate PEM, NUL-terminated */
    uint8_t *response;                        /* reply bytes go here: at most response_cap */
    size_t response_cap;                      /* CLOUD_LEDGER_RESPONSE_MAX */
    size_t response_len;                      /* set by the callback */
};

/*
 * The caller's certificate maker. Called inside the write transaction, once
 * per request that is about to be issued (or resent). Return NU_OK to go on,
 * or an NU_ERR_* code to abandon this request: everything it would have done
 * is rolled back and the code is its outcome. Must not call the ledger.
 * Output the ledger rejects (serial not lower-case hex, PEM empty or not
 * ASCII, response_len > cap) is abandoned the same way with INTERNAL.
 */
typedef int (*cloud_ledger_sign_fn)(void *sign_ctx, const struct cloud_ledger_issue_req *req,
                                    const struct cloud_ledger_sign_info *info,
                                    struct cloud_ledger_sign_out *out);

struct cloud_ledger_issue_result {
    int code;     /* NU_OK (issued, resent or replayed success) or why not */
    int replayed; /* 1: answered from the idempotency cache; nothing changed */
    int resent;   /* 1: the device's existing certificate was answered again */
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1]; /* when code is NU_OK */
    uint32_t issued; /* the job's counters after the request (0 if no such job) */
    uint32_t quota;
    uint8_t response[CLOUD_LEDGER_RESPONSE_MAX]; /* reply bytes (empty for refusals) */
    size_t response_len;
};

/*
 * Decide and record one certificate request (see ISSUANCE above); *out holds
 * the outcome. Returns out->code, or when nothing could be recorded: BUSY, DB,
 * IO (also in out->code).
 * Refusals: NOT_AUTHORIZED, REVOKED, NOT_FOUND, JOB_NOT_ACTIVE, EXPIRED,
 * QUOTA_EXHAUSTED, DUPLICATE_DEVICE, IDEMPOTENCY_CONFLICT. Bad input:
 * INVALID_ARG, TOO_LARGE (nothing recorded). The sign callback's own error
 * codes are passed through (nothing recorded).
 */
int cloud_ledger_issue(struct cloud_ledger *ledger, const struct cloud_ledger_issue_req *req,
                       cloud_ledger_sign_fn sign, void *sign_ctx,
                       struct cloud_ledger_issue_result *out);

/*
 * Group commit: decide n (1..CLOUD_LEDGER_BATCH_MAX) requests in ONE write
 * transaction and one fsync. Each request behaves exactly as
 * cloud_ledger_issue in order (a later request sees the earlier ones, e.g.
 * the same key twice -> the second is a replay) and gets its own outcome in
 * out[i]; a request abandoned by its callback is rolled back alone (a
 * SAVEPOINT per request). Returns NU_OK when the batch committed (read each
 * out[i].code), else BUSY/DB/IO/INVALID_ARG and nothing was recorded (every
 * out[i].code says so; when n is 0 or over the maximum, out is not written).
 * Replies may be sent only after this returns.
 */
int cloud_ledger_issue_batch(struct cloud_ledger *ledger, const struct cloud_ledger_issue_req *reqs,
                             size_t n, cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out);

/* --------------------------------------------------------- certificates */

enum cloud_ledger_cert_state {
    CLOUD_LEDGER_CERT_ISSUED = 1,
    CLOUD_LEDGER_CERT_PROVISIONED = 2,
    CLOUD_LEDGER_CERT_FAILED = 3,
    CLOUD_LEDGER_CERT_REVOKED = 4,
};

struct cloud_ledger_cert {
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    char job_id[CLOUD_LEDGER_ID_MAX + 1];
    uint8_t device_uid[CLOUD_LEDGER_UID_MAX];
    size_t device_uid_len;
    uint8_t pubkey_hash[CLOUD_LEDGER_HASH_LEN];
    char programmer_id[CLOUD_LEDGER_ID_MAX + 1];
    uint8_t idempotency_key[CLOUD_LEDGER_KEY_MAX];
    size_t idempotency_key_len;
    char pem[CLOUD_LEDGER_PEM_MAX + 1];
    enum cloud_ledger_cert_state state;
    uint64_t issued_at_ms;
    uint64_t state_at_ms; /* last report or revocation; 0 if none */
    char detail[CLOUD_LEDGER_TEXT_MAX + 1];
    uint64_t revoked_at_ms;
    char revoke_reason[CLOUD_LEDGER_TEXT_MAX + 1];
};

/* Names a certificate: by serial when serial is not NULL, else by job + UID. */
struct cloud_ledger_cert_ref {
    const char *serial;
    const char *job_id;
    const uint8_t *device_uid;
    size_t device_uid_len;
};

/* Errors: INVALID_ARG, NOT_FOUND, DB. */
int cloud_ledger_cert_get(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                          struct cloud_ledger_cert *out_cert);

typedef int (*cloud_ledger_cert_visit_fn)(void *ctx, const struct cloud_ledger_cert *cert);

/*
 * Certificates of a job (job_id not NULL), of a UID in every job (uid not
 * NULL), or both; ordered by issue time. Errors: INVALID_ARG (neither given,
 * or bad), NOMEM, DB, or the visitor's value.
 */
int cloud_ledger_cert_list(struct cloud_ledger *ledger, const char *job_id, const uint8_t *uid,
                           size_t uid_len, cloud_ledger_cert_visit_fn visit, void *ctx);

/* A position in that order: the last certificate of a page. */
struct cloud_ledger_cert_cursor {
    uint64_t issued_at_ms;
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1];
};

/*
 * cloud_ledger_cert_list from just after `after` (NULL = from the start), for
 * paging: the visitor stops a page by returning an error of its choice
 * (e.g. LIMIT), which is returned, and the caller resumes after the last
 * certificate it kept. Errors: as cloud_ledger_cert_list; INVALID_ARG for a
 * bad cursor.
 */
int cloud_ledger_cert_list_after(struct cloud_ledger *ledger, const char *job_id,
                                 const uint8_t *uid, size_t uid_len,
                                 const struct cloud_ledger_cert_cursor *after,
                                 cloud_ledger_cert_visit_fn visit, void *ctx);

/*
 * Every revoked device certificate (for the device CRL), ordered by
 * revocation time, in one snapshot.
 * Errors: INVALID_ARG, NOMEM, DB, or the visitor's value.
 */
int cloud_ledger_cert_list_revoked(struct cloud_ledger *ledger, cloud_ledger_cert_visit_fn visit,
                                   void *ctx);

/*
 * A programmer's device report: the certificate is now provisioned or
 * failed (event cert.provisioned / cert.failed). The reporter must hold an
 * allocation in the certificate's job. Allowed: issued -> provisioned|failed,
 * failed -> provisioned|failed; a repeated provisioned report, or a failed
 * report with the detail already recorded, is NU_OK and records nothing (QoS 1
 * redelivery, device.report resent until confirmed).
 * Errors: INVALID_ARG, TOO_LARGE, NOT_FOUND, NOT_AUTHORIZED, STATE (revoked,
 * or provisioned -> failed), BUSY, DB.
 */
int cloud_ledger_cert_report(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                             int provisioned, const char *detail, const char *reporter,
                             uint64_t now_ms);

/*
 * Revoke a device certificate (event cert.revoked). Quota is not returned.
 * Errors: INVALID_ARG, TOO_LARGE, NOT_FOUND, STATE (already revoked), BUSY, DB.
 */
int cloud_ledger_cert_revoke(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                             const char *reason, const char *actor, uint64_t now_ms);

/* ---------------------------------------------------------------- audit */

struct cloud_ledger_event {
    uint64_t seq; /* output */
    uint64_t ts_ms;
    const char *kind;    /* 1..CLOUD_LEDGER_KIND_MAX of [a-z0-9._-], not a reserved kind */
    const char *actor;   /* an id */
    const char *job_id;  /* NULL or "" = none, else an id */
    const char *payload; /* UTF-8 without NUL, payload_len <= CLOUD_LEDGER_PAYLOAD_MAX */
    size_t payload_len;
    uint8_t prev_hash[CLOUD_LEDGER_HASH_LEN]; /* output */
    uint8_t hash[CLOUD_LEDGER_HASH_LEN];      /* output */
};

/*
 * Append an event the cloud received (e.g. a programmer's device.provisioned)
 * to the chain, in its own transaction; its seq goes to *out_seq (may be NULL).
 * Errors: INVALID_ARG (bad kind/actor/job, reserved kind, bad UTF-8),
 * TOO_LARGE, BUSY, DB.
 */
int cloud_ledger_audit_append(struct cloud_ledger *ledger, const struct cloud_ledger_event *event,
                              uint64_t *out_seq);

typedef int (*cloud_ledger_event_visit_fn)(void *ctx, const struct cloud_ledger_event *event);

/* Events with seq >= from_seq in order (strings borrowed for the call).
 * Errors: INVALID_ARG, DB, or the visitor's value. */
int cloud_ledger_audit_list(struct cloud_ledger *ledger, uint64_t from_seq,
                            cloud_ledger_event_visit_fn visit, void *ctx);

/* The chain head: last seq and its hash. Errors: INVALID_ARG, DB. */
int cloud_ledger_audit_head(struct cloud_ledger *ledger, uint64_t *out_seq,
                            uint8_t out_hash[CLOUD_LEDGER_HASH_LEN]);

/*
 * The canonical hash of one event (the formula above), for tools and tests:
 * out = SHA-256(prev_hash || row). Errors: INVALID_ARG, CRYPTO.
 */
int cloud_ledger_event_hash(const uint8_t prev_hash[CLOUD_LEDGER_HASH_LEN], uint64_t seq,
                            uint64_t ts, const char *kind, size_t kind_len, const char *actor,
                            size_t actor_len, const char *job_id, size_t job_id_len,
                            const char *payload, size_t payload_len,
                            uint8_t out[CLOUD_LEDGER_HASH_LEN]);

/* ----------------------------------------------------------- checkpoints */

/*
 * Make the payload of a checkpoint of the chain head (head_seq, head) into
 * payload[cap]; NU_OK or an error that aborts the checkpoint.
 */
typedef int (*cloud_ledger_checkpoint_fn)(void *ctx, uint64_t head_seq,
                                          const uint8_t head[CLOUD_LEDGER_HASH_LEN], char *payload,
                                          size_t cap, size_t *out_len);

/*
 * Append an `audit.checkpoint` event whose payload `make` computes from the
 * chain head (the signing happens inside the write transaction, so no event
 * can slip between the head that is signed and the checkpoint row). When the
 * last event already is a checkpoint nothing is written and *out_seq = 0;
 * else *out_seq = the new event's seq (out_seq may be NULL).
 * Errors: INVALID_ARG, TOO_LARGE/INVALID_ARG (payload > CLOUD_LEDGER_PAYLOAD_MAX
 * or not UTF-8), BUSY, DB, or make's error (nothing written).
 */
int cloud_ledger_checkpoint(struct cloud_ledger *ledger, uint64_t now_ms, const char *actor,
                            cloud_ledger_checkpoint_fn make, void *ctx, uint64_t *out_seq);

/* ----------------------------------------------------------- maintenance */

/*
 * Whether this connection's commits may also do the storage's housekeeping
 * (on, the default) or never (off). Housekeeping inside a commit makes that
 * one request wait for it (SQLite: checkpointing the WAL into the main file):
 * a server turns it off on its request connections and calls
 * cloud_ledger_maintain from elsewhere. A no-op where the database server
 * does its own (PostgreSQL). Errors: INVALID_ARG, DB.
 */
int cloud_ledger_set_inline_maintenance(struct cloud_ledger *ledger, int on);

/*
 * Do that housekeeping now without waiting for anyone: writers and readers
 * go on (SQLite: a PASSIVE WAL checkpoint; PostgreSQL: nothing to do).
 * Errors: INVALID_ARG, BUSY (another one runs), DB.
 */
int cloud_ledger_maintain(struct cloud_ledger *ledger);

/* --------------------------------------------------------------- verify */

/*
 * Check one checkpoint row during verify: head_seq/head are what the row
 * must sign (its seq - 1 and its prev_hash). NU_OK when it holds; any error
 * is a finding (the row seq is reported), not an abort.
 */
typedef int (*cloud_ledger_checkpoint_check_fn)(void *ctx, uint64_t head_seq,
                                                const uint8_t head[CLOUD_LEDGER_HASH_LEN],
                                                const char *payload, size_t len);

struct cloud_ledger_verify_opts {
    cloud_ledger_checkpoint_check_fn check_checkpoint; /* NULL: counted, not checked */
    void *ctx;
};

struct cloud_ledger_verify_report {
    uint64_t events;       /* audit rows walked */
    uint64_t certificates; /* certificate rows checked */
    uint64_t jobs;         /* job rows checked */
    /* First audit seq that fails: a wrong hash or link, a bad field, or for
     * a gap the first missing seq; 0 when the chain is sound. */
    uint64_t first_bad_seq;
    int chain_ok;                 /* hashes, links, seq 1..n contiguous, audit_head = last row */
    int certs_ok;                 /* certificates and cert.issued events pair one to one */
    int counts_ok;                /* per job: issued == #certificates == sum of allocations'
                                     issued, <= quota; per allocation: issued == its certificates */
    int schema_ok;                /* version and the protective triggers are in place */
    int payloads_ok;              /* every payload is one strict JSON object, no key twice
                                     (nu_json_check: how a forged key would show) */
    int checkpoints_ok;           /* every checkpoint passed check_checkpoint (1 when unchecked) */
    int checkpoints_checked;      /* a check_checkpoint was given */
    uint64_t checkpoints;         /* audit.checkpoint rows */
    uint64_t last_checkpoint_seq; /* row seq of the last one, 0 = none */
    uint64_t last_checkpoint_head_seq;                   /* the seq it signs (row seq - 1) */
    uint8_t last_checkpoint_head[CLOUD_LEDGER_HASH_LEN]; /* the head it signs */
    unsigned problems;                                   /* number of findings */
    char first_problem[256];                             /* the first finding, as text */
};

/*
 * Check the whole ledger in one read transaction: walk the chain recomputing
 * every hash, check seq contiguity and the head, pair every certificate with
 * its cert.issued event (and every such event with its certificate), and the
 * quota counters. Fills *out_report either way.
 * Returns NU_OK when everything holds, TAMPERED when something does not,
 * INVALID_ARG, NOMEM, CRYPTO or DB when the check could not run.
 */
int cloud_ledger_verify(struct cloud_ledger *ledger, struct cloud_ledger_verify_report *out_report);

/*
 * cloud_ledger_verify on a target, for `nusec audit verify`: a file path or
 * "sqlite:PATH" (opened read-only), or a PostgreSQL URI (password as
 * cloud_ledger_connect). Never creates nor migrates anything. An older schema
 * version (1..current) is checked against what that version holds. opts may
 * be NULL. Errors: as cloud_ledger_verify, plus NOT_FOUND (no such file),
 * NOT_SUPPORTED (newer schema version), CONFIG (not a ledger, or no ledger
 * yet), IO, CONNECTION, PERMISSION.
 */
int cloud_ledger_verify_target(const char *target, const char *password_file,
                               const struct cloud_ledger_verify_opts *opts,
                               struct cloud_ledger_verify_report *out_report);


/* ------------------------------------------------ offline leases (issue 15) */

/*
 * An offline lease: one programmer of a job may issue up to `units` device
 * certificates itself, signed in its KeyStore by a line-CA key whose
 * certificate (Device CA -> line CA, pathLen 0, validity = the lease) the
 * cloud issued. The units are reserved out of the job's quota while the
 * lease is active: online issuance sees quota - issued - reserved, where
 * reserved = units - used of every active lease of the job. Each offline
 * certificate recorded moves one unit from reserved to issued. The
 * reservation has no time limit: only the programmer's return of the lease,
 * or the OEM's write-off of a lease that ended, gives the unused units back
 * (why: ledger_lease.c). Code in ledger_lease.c.
 *
 * Tables (schema created on first use, both backends):
 *   lease_policies(job_id PK, units, hours, set_by, set_at_ms)
 *   leases(lease_id PK, job_id, programmer_id, units, used, line_pub_hash BLOB
 *        (SHA-256 of the line-CA public point), cert_der BLOB, granted_at_ms,
 *        not_before_ms, not_after_ms, state IN ('active','returned','expired'),
 *        closed_at_ms); 'expired' = written off (or, before this version, past
 *        a 24 h grace)
 *   lease_certs(serial PK, lease_id, counter, recorded_at_ms, UNIQUE(lease_id, counter))
 * Events: lease.policy {"units":N,"hours":N}; lease.granted {"lease":L,
 *   "programmer":P,"units":N,"not_before_ms":N,"not_after_ms":N,"line_pub_hash":H,
 *   "cert_sha256":H}; lease.refused {"programmer":P,"code":NAME,"units":N,"available":N};
 *   lease.recorded {"lease":L,"serial":S,"counter":N,"offline":true} written with the
 *   certificate's usual cert.issued; lease.incident {"lease":L,"programmer":P,
 *   "code":NAME,"serial":S,"detail":S}; lease.returned (actor self) and
 *   lease.written_off (actor the operator) {"lease":L,"programmer":P,"units":N,
 *   "used":N,"released":N}; older ledgers may hold lease.expired.
 */
#define CLOUD_LEDGER_LEASE_ID_MAX 40
#define CLOUD_LEDGER_LEASE_CERT_MAX 2048

struct cloud_ledger_lease {
    char lease_id[CLOUD_LEDGER_LEASE_ID_MAX + 1];
    char job_id[CLOUD_LEDGER_ID_MAX + 1];
    char programmer_id[CLOUD_LEDGER_ID_MAX + 1];
    uint32_t units, used;
    uint64_t granted_at_ms, not_before_ms, not_after_ms;
    uint8_t line_pub_hash[CLOUD_LEDGER_HASH_LEN];
    uint8_t cert_der[CLOUD_LEDGER_LEASE_CERT_MAX];
    size_t cert_len;
    char state[16]; /* active, returned, expired (written off) */
};

/* Set the job's lease policy (units per programmer, hours); event lease.policy.
 * Errors: INVALID_ARG, NOT_FOUND (job), EXISTS (a policy is set already), BUSY, DB. */
int cloud_ledger_lease_policy_set(struct cloud_ledger *ledger, const char *job_id, uint32_t units,
                                  uint32_t hours, const char *actor, uint64_t now_ms);

/* The job's lease policy. Errors: NOT_FOUND (none: the job allows no lease), DB. */
int cloud_ledger_lease_policy_get(struct cloud_ledger *ledger, const char *job_id,
                                  uint32_t *out_units, uint32_t *out_hours);

/*
 * Grant lease `want` (lease_id, job, programmer, units, validity, line_pub_hash
 * and the signed cert_der filled by the caller). If the programmer holds an
 * active lease of the job for the same line key, that one is answered
 * (*out_existing = 1, *out = it): a repeated grant. Otherwise, in one
 * transaction: job active, not expired; programmer allocated; no other active lease of it in the
 * job; units <= quota - issued - reserved; lease row; event lease.granted. Refusals are audited
 * (lease.refused) and return: NOT_FOUND (job), JOB_NOT_ACTIVE, EXPIRED, NOT_AUTHORIZED (no
 * allocation), STATE (another lease out), LEASE_OVERCOMMIT. Other errors: INVALID_ARG, BUSY, DB.
 */
int cloud_ledger_lease_grant(struct cloud_ledger *ledger, const struct cloud_ledger_lease *want,
                             uint64_t now_ms, struct cloud_ledger_lease *out, int *out_existing);

/* The lease `lease_id` if `programmer_id` holds it. Errors: LEASE_UNKNOWN, DB. */
int cloud_ledger_lease_get(struct cloud_ledger *ledger, const char *lease_id,
                           const char *programmer_id, struct cloud_ledger_lease *out);

/* One certificate issued offline, checked by the caller against the lease
 * (chain, validity inside the lease window). */
struct cloud_ledger_lease_cert {
    const char *lease_id;
    const char *programmer_id;
    const char *serial; /* lower-case hex */
    const uint8_t *device_uid;
    size_t device_uid_len;
    uint8_t pubkey_hash[CLOUD_LEDGER_HASH_LEN];
    const char *pem;
    uint32_t counter;     /* the KeyStore lease counter value it took, 1..units */
    uint64_t issued_at_ms; /* from the certificate (notBefore + backdate) */
    /* The programmer abandoned the chip's online cert.request (this
     * idempotency key) unanswered and certified the chip offline instead:
     * NULL/0 when not. */
    const uint8_t *supersedes_key;
    size_t supersedes_key_len;
};

/*
 * Record an offline certificate: certificate row (state issued until its
 * chip's device.report, like an online one; detail
 * "offline lease L"), jobs.issued + 1, lease used + 1, events cert.issued
 * (idempotency key = SHA-256("nusec/v1 lease" || lease || counter)[:16]) and
 * lease.recorded. A serial already recorded under this lease: *out_known = 1,
 * nothing changes (a replayed upload).
 * SUPERSEDING (supersedes_key set, schema 6): if the job holds an online
 * certificate for the UID issued to this programmer for that very request
 * (its idempotency key) and not reported provisioned nor revoked, it was
 * never delivered (the programmer, holder of the KeyStore, vouches for it:
 * docs/threat-model.md): in the same transaction it is revoked (state
 * revoked, reason "superseded", event cert.revoked; on the next device CRL),
 * its row in cert_superseded, its unit refunded (the offline certificate
 * takes it: jobs and allocation issued are not counted again), the
 * request's idempotency entry forgotten (a late copy of the request gets
 * the offline certificate by RESEND), event lease.superseded {"lease":L,
 * "serial":S (online),"by_serial":S (offline),"idempotency_key":H}; then the
 * offline certificate is recorded as above. No online certificate: recorded
 * as above. An online certificate of another request or programmer,
 * provisioned or revoked: LEASE_NOT_COVERED.
 * Refusals are audited as lease.incident and change nothing else:
 * LEASE_UNKNOWN (not this programmer's lease), LEASE_NOT_COVERED (beyond
 * the lease's units, counter reused or out of range, lease closed, UID
 * already certified in the job and not superseded). Other errors:
 * INVALID_ARG, BUSY, DB.
 */
int cloud_ledger_lease_record(struct cloud_ledger *ledger, const struct cloud_ledger_lease_cert *c,
                              uint64_t now_ms, int *out_known);

/* Audit an incident the caller found (lease.incident) in its own transaction. */
int cloud_ledger_lease_incident(struct cloud_ledger *ledger, const char *lease_id,
                                const char *programmer_id, const char *job_id, int code,
                                const char *serial, const char *detail, uint64_t now_ms);

/* Return an active lease: its unused units go back to the quota (event
 * lease.returned). Returning a closed lease is NU_OK, nothing changes.
 * Errors: LEASE_UNKNOWN, BUSY, DB. */
int cloud_ledger_lease_return(struct cloud_ledger *ledger, const char *lease_id,
                              const char *programmer_id, uint64_t now_ms,
                              struct cloud_ledger_lease *out);

/*
 * The OEM writes off programmer_id's active lease of job_id, one that ended
 * at least CLOUD_LEDGER_LEASE_WRITE_OFF_AFTER_MS ago and was never returned
 * (a programmer lost, or kept away): its unused units go back to the quota
 * (state expired, event lease.written_off by actor), and a certificate of it
 * uploaded later is a lease.incident. Chips the programmer did certify under
 * it are then beyond the quota: the write-off is the OEM's decision, which
 * is why nothing else ends a lease. The margin lets the last uploads of a
 * programmer that produced until the lease's end arrive first.
 * Errors: INVALID_ARG, NOT_FOUND (no lease of that programmer in the job),
 * EXISTS (its last lease is written off already: a repeat; *out = it),
 * STATE (the lease still runs, or ended less than the margin ago; *out =
 * it), BUSY, DB.
 */
#define CLOUD_LEDGER_LEASE_WRITE_OFF_AFTER_MS (3600ull * 1000u)
int cloud_ledger_lease_write_off(struct cloud_ledger *ledger, const char *job_id,
                                 const char *programmer_id, const char *actor, uint64_t now_ms,
                                 struct cloud_ledger_lease *out);

/* Units reserved by the job's active leases (units - used), for issuance. */
int cloud_ledger_lease_reserved(struct cloud_ledger *ledger, const char *job_id,
                                uint32_t *out_reserved);

/* ------------------------------------ state every agent shares (schema 5) */

/*
 * What the cloud used to keep as files in its DIR, where an agent on another
 * host could not see it (issue 13). Code in ledger_shared.c.
 *   revoked_measurements(measurement TEXT PK (64 lower-case hex), reason,
 *        revoked_by, revoked_at_ms) — programmer firmware the OEM revoked
 *        (was DIR/cloud/revoked-measurements); rows are never changed nor
 *        deleted
 *   firmware_blobs(name PK -> firmware_images, image BLOB) — the signed image
 *        bytes (was DIR/firmware/NAME.img); never changed nor deleted
 *   device_crl(id = 1, crl_number, der BLOB) — the last device CRL issued;
 *        only a CRL with a higher number replaces it
 * Event: programmer.firmware_revoked {"measurement":H,"reason":R}, written
 * only by the ledger, once per measurement.
 */

/* A programmer firmware revocation as stored. */
struct cloud_ledger_fw_revocation {
    char measurement[2 * CLOUD_LEDGER_HASH_LEN + 1];
    char reason[CLOUD_LEDGER_TEXT_MAX + 1];
    char revoked_by[CLOUD_LEDGER_ID_MAX + 1];
    uint64_t revoked_at_ms;
};

typedef int (*cloud_ledger_id_visit_fn)(void *ctx, const char *id);
typedef int (*cloud_ledger_fw_revocation_visit_fn)(void *ctx,
                                                   const struct cloud_ledger_fw_revocation *r);
typedef int (*cloud_ledger_firmware_visit_fn)(void *ctx, const struct cloud_ledger_firmware *fw);

/*
 * Revoke programmer firmware `measurement` (64 lower-case hex) in ONE
 * transaction: list it (event programmer.firmware_revoked, only the first
 * time: *out_new = 1) and revoke every programmer enrolled with it (event
 * programmer.revoked each, reason `reason`), handing each id to visit(ctx,
 * id) (may be NULL). The ids are only valid news once this returns NU_OK
 * (the transaction may still fail after a visit). A repeated call lists
 * nothing twice and revokes whoever enrolled meanwhile.
 * An enrollment that records this measurement (cloud_ledger_enroll) and this
 * call take the same lock on the measurement, so one of them commits first:
 * either the enrollment (then its programmer is revoked here) or the
 * revocation (then the enrollment reads it and is refused, MEASUREMENT).
 * Errors: INVALID_ARG, BUSY, CONNECTION, DB, or the visitor's value.
 */
int cloud_ledger_firmware_revoke(struct cloud_ledger *ledger, const char *measurement,
                                 const char *reason, const char *actor, uint64_t now_ms,
                                 cloud_ledger_id_visit_fn visit, void *ctx, int *out_new);

/* Whether `measurement` is revoked (*out_revoked). Errors: INVALID_ARG, DB. */
int cloud_ledger_firmware_revoked(struct cloud_ledger *ledger, const char *measurement,
                                  int *out_revoked);

/* Every revoked measurement, in measurement order. Errors: INVALID_ARG, DB, visitor's. */
int cloud_ledger_firmware_revocations(struct cloud_ledger *ledger,
                                      cloud_ledger_fw_revocation_visit_fn visit, void *ctx);

/*
 * cloud_ledger_firmware_add and the image bytes img[len] (SHA-256 = the
 * record's digest, len = its size, else INVALID_ARG) in one transaction, so
 * any agent can serve what one agent signed. Errors: as
 * cloud_ledger_firmware_add.
 */
int cloud_ledger_firmware_add_image(struct cloud_ledger *ledger,
                                    const struct cloud_ledger_firmware *fw, const uint8_t *img,
                                    size_t len);

/*
 * Store the bytes of an image recorded without them (signed before schema 5,
 * read from DIR/firmware once): checked against the record; NU_OK when
 * stored or already there. Errors: INVALID_ARG (differs from the record),
 * NOT_FOUND (no record), BUSY, DB.
 */
int cloud_ledger_firmware_image_put(struct cloud_ledger *ledger, const char *name,
                                    const uint8_t *img, size_t len);

/*
 * The signed bytes of image `name` (*out_img: malloc'd, the caller frees),
 * checked against the record (size and SHA-256; DB when they differ).
 * Errors: INVALID_ARG, NOT_FOUND (no record, or no bytes: signed before
 * schema 5 and not imported yet), NOMEM, DB.
 */
int cloud_ledger_firmware_image(struct cloud_ledger *ledger, const char *name, uint8_t **out_img,
                                size_t *out_len);

/* Every signed image record, in name order. Errors: INVALID_ARG, DB, visitor's. */
int cloud_ledger_firmware_list(struct cloud_ledger *ledger, cloud_ledger_firmware_visit_fn visit,
                               void *ctx);

/*
 * Keep der[len] as the device CRL numbered `crl_number` unless the ledger
 * holds one numbered the same or higher (then STATE: an agent with an older
 * snapshot must not publish over a newer CRL). `publish` (may be NULL) runs
 * once the row is written, before the commit, while the row is locked: two
 * agents publish in the order of their CRL numbers, so the retained CRL is
 * the newest. Its error undoes the put. Errors: INVALID_ARG, STATE, BUSY,
 * DB, or publish's value.
 */
int cloud_ledger_device_crl_put(struct cloud_ledger *ledger, uint64_t crl_number,
                                const uint8_t *der, size_t len, int (*publish)(void *ctx),
                                void *ctx);

/* The last device CRL kept (*out_der malloc'd, the caller frees).
 * Errors: INVALID_ARG, NOT_FOUND, NOMEM, DB. */
int cloud_ledger_device_crl_get(struct cloud_ledger *ledger, uint64_t *out_crl_number,
                                uint8_t **out_der, size_t *out_len);

#endif
