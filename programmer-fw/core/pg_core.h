/*
 * pg_core — the NuLink3 programmer's provisioning logic, portable C11 over
 * the HAL of hal.h. No heap, no OS call, bounded buffers.
 *
 * The caller allocates struct pg_core (statically on the MCU; the POSIX port
 * callocs it once): like MCUboot's boot_go(struct boot_rsp *), the struct is
 * declared here so that a port can size it at link time, but its fields are
 * the core's own: read them only through the functions below.
 *
 * Life cycle:
 *   pg_core_init            pins and the stored package are reloaded
 *   pg_core_enroll          once, before the programmer has an identity
 *   pg_core_package_load    a sealed package (file or station command)
 *   pg_core_firmware_fetch  manifest + chunks, verified, cached in flash (resumes)
 *   pg_core_production_begin
 *     pg_socket_run         one chip, called in a loop by one worker per socket,
 *                           all sockets concurrently
 *   pg_core_production_end
 *   pg_core_deinit          secrets wiped
 *
 * Threads: pg_socket_run may run concurrently for different sockets;
 * pg_core_stop and pg_core_on_message may be called from any thread at any
 * time; every other function is called by one control thread, never while
 * a socket worker runs (they return BUSY when production is on).
 *
 * Memory: everything is in struct pg_core. The download buffers and the
 * per-socket buffers share one union, since firmware is never downloaded
 * while sockets run (see README "RAM budget").
 */
#ifndef PG_CORE_H
#define PG_CORE_H

#include "hal.h"
#include "pg_msg.h"

#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>

#ifndef PG_MAX_SOCKETS
#define PG_MAX_SOCKETS 8
#endif

#define PG_ID_MAX 64
#define PG_UID_MAX 32
#define PG_TOKEN_MAX 256
#define PG_PACKAGE_MAX 8192 /* largest sealed package accepted */
#define PG_CHAIN_BYTES 4096 /* device CA chain from the package, all DER */
#define PG_CHAIN_MAX 4      /* certificates in that chain */
#define PG_CHUNK_MAX 16384  /* firmware chunk plaintext (proto/README.md) */
#define PG_DL_RESP_MAX (PG_CHUNK_MAX + 1024)
#define PG_SOCK_REQ_MAX 1024  /* cert.request, events, status; flash copy buffer */
#define PG_SOCK_RESP_MAX 2048 /* CSR scratch, then the answer (device cert <= ~1.8 KiB) */
#define PG_COPY_MAX 1024      /* bytes per target flash write */
#define PG_PACKAGE_FORMAT 1u  /* PackageSummary.format this core reads */
#define PG_HELD_MAX PG_MAX_SOCKETS /* chips kept with their unit across a stop */
#define PG_HOLD_CAP_MS 4000u       /* longest pause between two tries while holding */
#define PG_FIRST_TIMEOUT_MS 2500u  /* first try's timeout of a repeatable request */

/* Why production stopped (pg_core_production_end). */
enum pg_stop {
    PG_STOP_NONE = 0,
    PG_STOP_TRAY_EMPTY = 1,
    PG_STOP_COMMAND = 2, /* STOP from the station / pg_core_stop */
    PG_STOP_LIMIT = 3,   /* KeyStore counter reached the package limit */
    PG_STOP_QUOTA = 4,   /* cloud said QUOTA_EXHAUSTED */
    PG_STOP_JOB = 5,     /* cloud said the job is not active / expired */
    PG_STOP_ERROR = 6,
    /* The program goes down (a signal, a service stop): not the line's end.
     * The last status says OFFLINE, not IDLE, so the station reads it as a
     * programmer gone while producing and starts it again when it is back. */
    PG_STOP_SHUTDOWN = 7,
};

struct pg_config {
    const char *programmer_id;    /* certificate CN, [A-Za-z0-9._-]{1,64} */
    unsigned n_sockets;           /* 1..PG_MAX_SOCKETS */
    uint32_t request_timeout_ms;  /* 0: 10000 */
    unsigned retries;             /* transient request failures retried; 0: 3 */
    uint32_t retry_delay_ms;      /* first backoff delay, doubles (+ jitter) up to
                                     min(PG_HOLD_CAP_MS, 32 x this); 0: 200 */
    const char *firmware_version; /* programmer firmware version for status, may be NULL */
    uint32_t lease_abandon_ms;    /* under an offline lease, a certificate request
                                     unanswered while the cloud has been unreachable
                                     this long is abandoned and the chip certified
                                     offline, superseding it (pg_lease.c); 0: 10000 */
};

/* Outcome of one chip (pg_socket_run). */
struct pg_result {
    uint8_t uid[PG_UID_MAX];
    size_t uid_len;
    int provisioned;  /* 1: LOCKED with a verified certificate, attested */
    int resumed;      /* the chip was left half done by an earlier run */
    int already_done; /* LOCKED with a valid certificate when inserted: no unit used */
    int held;         /* production stopped while the cloud was away: the chip
                         stays in the socket with its unit, for the next run */
    int error;        /* NU_ERR_* when failed */
    const char *step; /* static: where it failed */
    char serial[41];
};

/* The package in use: clear facts and the secrets (RAM only, wiped). */
struct pg_job {
    int loaded;
    char job_id[PG_ID_MAX + 1];
    char firmware[PG_ID_MAX + 1];
    uint8_t package_id[16];
    uint64_t created_at_ms;
    uint64_t expires_at_ms;
    uint32_t limit;
    uint8_t token[PG_TOKEN_MAX];
    size_t token_len;
    uint8_t fw_key[32];
    uint8_t rotpk_hash[32];
    uint8_t fw_digest[32];
    uint32_t fw_size;
    uint8_t chain[PG_CHAIN_BYTES];
    struct pg_der chain_der[PG_CHAIN_MAX];
    size_t n_chain;
};

struct pg_sock_work {
    uint8_t uid[PG_UID_MAX];
    size_t uid_len;
    char uid_hex[2 * PG_UID_MAX + 1];
    uint8_t pub[PG_P256_PUB_LEN];
    uint8_t req[PG_SOCK_REQ_MAX];
    uint8_t resp[PG_SOCK_RESP_MAX];
    struct pg_sha256 sha;
};

struct pg_dl_work {
    uint8_t req[512];
    uint8_t resp[PG_DL_RESP_MAX];
    struct pg_sha256 sha;
};

struct pg_enroll_work {
    uint8_t csr[1024];
    uint8_t req[4096]; /* CSR + attestation + boot manifest */
    uint8_t resp[12288];
    struct pg_attestation att;
};

/* What a socket is doing (status "state" words: idle, busy, waiting-cloud,
 * paused: no new chip while the cloud is unreachable). */
enum pg_sock_phase {
    PG_SOCK_IDLE = 0,
    PG_SOCK_BUSY = 1,
    PG_SOCK_WAIT_CLOUD = 2,
    PG_SOCK_PAUSED = 3,
};

struct pg_sock_state {
    atomic_uint done;
    atomic_uint failed;
    atomic_int busy;        /* enum pg_sock_phase */
    atomic_int journal_due; /* its journal slot may hold a report of an earlier run */
};

/* Production units taken from the KeyStore counter but not spent on a
 * certificate request: `spare` ones (the chip failed before asking the cloud)
 * go to the next chip; `held` ones belong to the chip of that UID, stopped
 * while the cloud was away. Kept in the KeyStore between runs (blob
 * "units.<job>"), taken out of it at production start: a crash loses them
 * (wastes units), never lets one be used twice. Guarded by `lock`. */
struct pg_units {
    atomic_flag lock;
    atomic_flag count_lock; /* one socket at a time between intent and count */
    uint32_t spare;
    unsigned n_held;
    uint8_t held_len[PG_HELD_MAX];
    uint8_t held_uid[PG_HELD_MAX][PG_UID_MAX];
    /* The chip of each socket that holds a unit (UID; len 0: none), written
     * to the KeyStore (blob "inflight.<job>") before anything is written to
     * the chip. After a crash, `resume` marks the sockets whose chip of the
     * last run may still be there, half done: if the socket's next chip is
     * that UID it finishes with its unit (same idempotency key), else the
     * mark is dropped (the chip was done, or taken away). */
    /* A unit new from the KeyStore counter is recorded before it is counted,
     * with the counter value it will have: after a crash between the two, the
     * counter is below it and the record is dropped (no unit was taken). */
    uint8_t inflight_len[PG_MAX_SOCKETS];
    uint8_t inflight_uid[PG_MAX_SOCKETS][PG_UID_MAX];
    uint8_t resume[PG_MAX_SOCKETS];
};

/* The offline lease (issue 15 part 2, pg_lease.c) of the current job: set by
 * the control thread (production begin/end, idle), read by the socket
 * workers while producing. The durable truth is in the KeyStore: the lease
 * record (blob "lease/<job>"), the lease counter ("lease/<id>", bound to the
 * lease) and one journal record per offline certificate
 * ("lease/<id>/<counter>") until the cloud has it. */
#define PG_LEASE_ID_MAX 40
#define PG_LEASE_CERT_MAX 1024
struct pg_lease {
    int active; /* a granted lease of job.job_id is loaded */
    char id[PG_LEASE_ID_MAX + 1];
    uint32_t units;
    uint64_t not_before_ms, not_after_ms;
    uint8_t cert[PG_LEASE_CERT_MAX]; /* line-CA certificate (DER), Device CA issued */
    size_t cert_len;
    atomic_int exhausted;    /* the lease counter reached units */
    atomic_uint pending;     /* journal records the cloud has not confirmed */
    atomic_uint issuing;     /* sockets between the counter and the journal record */
    atomic_uint issued;      /* offline certificates issued, this process */
    atomic_uint uploaded;    /* journal records the cloud confirmed, this process */
    atomic_uint probe_at_ms; /* mono ms of the next upload try while unreachable */
    atomic_flag sync_lock;   /* one uploader at a time */
    atomic_int refused;      /* the cloud refused an upload for good: no more tries this run */
    atomic_int nothing_due;  /* the last upload found no record whose chip is done */
    atomic_uint outcomes;    /* chip outcomes journalled (a scan's "nothing due" re-checks it) */
    atomic_int given_back;   /* used up, uploaded and returned mid-production (sync) */
    /* pg_core_lease_sync's own (the work union is the sockets' then). */
    uint8_t sync_req[PG_SOCK_REQ_MAX], sync_resp[PG_SOCK_RESP_MAX];
};

struct pg_core {
    const struct pg_hal *hal;
    char id[PG_ID_MAX + 1];
    unsigned n_sockets;
    uint32_t timeout_ms;
    unsigned retries;
    uint32_t retry_delay_ms;
    const char *fw_version;
    uint32_t lease_abandon_ms;

    uint64_t seq_base;
    atomic_uint seq;
    atomic_int producing;
    atomic_int stop; /* enum pg_stop, first reason wins */
    atomic_uint last_status_ms;

    int enrolled; /* identity certificate and pins in the KeyStore */
    uint8_t pin_package[PG_P256_PUB_LEN];
    uint8_t pin_rotpk[PG_P256_PUB_LEN];
    /* The OEM's cloud signing key, pinned before the programmer left the
     * OEM's hands (pg_core_anchor_set): verifies the enrollment answers. */
    int anchored;
    uint8_t anchor[PG_P256_PUB_LEN];
    atomic_uint forged; /* cloud answers dropped: not signed by the pinned key, or replayed */

    struct pg_job job;
    int fw_ready; /* verified image of job in PG_FLASH_IMAGE */

    struct pg_sock_state sock[PG_MAX_SOCKETS];
    struct pg_units units;
    atomic_uint holds;        /* cloud answers waited out (transient), this run */
    atomic_uint reports_sent; /* device reports the cloud confirmed, this run */
    atomic_int journal_pending; /* the flash journal may hold unconfirmed reports */
    atomic_uint journal_claims; /* spare journal slots a socket is using (bit per slot) */
    atomic_uint cloud_lost_s;   /* wall-clock s since the cloud stopped answering, 0: it
                                   answers (pg_link.c; 32 bits: no 64-bit atomics on M33) */

    /* Station commands, filled by pg_core_on_message (any thread), taken by
     * pg_core_poll (control thread). */
    atomic_int pkg_box_state;
    size_t pkg_box_len;
    uint8_t pkg_box[PG_PACKAGE_MAX];
    atomic_int cmd_box_state;
    uint32_t cmd_action;
    char cmd_job[PG_ID_MAX + 1];

    uint8_t ctl_buf[PG_SOCK_REQ_MAX]; /* control thread: status, small requests */

    struct pg_lease lease;

    union {
        struct pg_dl_work dl;
        struct pg_enroll_work enroll;
        struct pg_sock_work sock[PG_MAX_SOCKETS];
        uint8_t scratch[PG_PACKAGE_MAX]; /* unsealed package secrets */
    } work;
};

/*
 * Initialise `c` for `hal` (borrowed; must outlive c) and `cfg` (copied,
 * except firmware_version which is borrowed). Reads the pinned keys from the
 * KeyStore (not enrolled yet is fine) and reloads the package stored in
 * flash, if any, verifying it again.
 * Errors: INVALID_ARG (id, sockets, HAL version), and KeyStore errors other
 * than NOT_FOUND.
 */
int pg_core_init(struct pg_core *c, const struct pg_hal *hal, const struct pg_config *cfg);

/* Wipe the secrets in RAM. The struct may be reused with pg_core_init. */
void pg_core_deinit(struct pg_core *c);

/* 1 when the KeyStore holds an identity certificate and the pinned keys. */
int pg_core_enrolled(const struct pg_core *c);

/*
 * Pin the key the OEM's cloud signs its messages with (its HSM package key,
 * 65-byte uncompressed P-256 point) in the KeyStore, once, before the
 * programmer ships to a CM: the programmer vendor at manufacture or the OEM.
 * With it pinned, enrollment answers (also those a CM station relays) must
 * be signed by it, and the package key the cloud names must be it
 * (docs/threat-model.md). Write-once like an OTP fuse: the same key again is
 * OK, another one EXISTS. Errors: INVALID_ARG (not a point), EXISTS,
 * KeyStore errors.
 */
int pg_core_anchor_set(struct pg_core *c, const uint8_t pub[PG_P256_PUB_LEN]);

/* 1 when an anchor is pinned (pg_core_anchor_set). */
int pg_core_anchored(const struct pg_core *c);

/* Cloud answers dropped since init because they were not signed by the
 * pinned key (or were replayed): each one also logged at WARN. */
unsigned pg_core_forged(const struct pg_core *c);

/*
 * Enrollment: make the identity and package keys in the KeyStore (reused if
 * they exist from an interrupted enrollment), a CSR (CN = id, OU =
 * programmer, O = NuSEC), send `enroll` with `token` through the transport,
 * which is connected as `relay_id` (the station that relays it, or the
 * programmer itself), check the answer (certificate for our identity key
 * with CN = id, verifying to the returned chain) and store certificate,
 * chain and pinned keys in the KeyStore. fw_hash: SHA-256 of the booted
 * programmer binary, or NULL (informational: the cloud trusts the KeyStore's
 * measurement only).
 * Attested: first `enroll.challenge` (same token, same relay) for a fresh
 * nonce, then the KeyStore's attestation over it (hal.h, attest) goes with
 * the CSR, and so does `manifest` (the OEM-signed boot manifest the
 * programmer runs under, manifest_len bytes; NULL if none), by which the
 * cloud tells the attested measurement is approved.
 * Errors: EXISTS (already enrolled), INVALID_ARG, TOKEN / NOT_AUTHORIZED /
 * ATTESTATION_* / NONCE_* / MEASUREMENT / ... (the cloud's refusal), BAD_CERT,
 * DECODE, TIMEOUT, CONNECTION, KeyStore (NOT_FOUND: not factory-initialised)
 * and crypto errors.
 */
int pg_core_enroll(struct pg_core *c, const char *relay_id, const char *token,
                   const uint8_t *fw_hash, const uint8_t *manifest, size_t manifest_len);

/*
 * The identity certificate (DER) from the KeyStore into buf[cap].
 * Errors: NOT_FOUND (not enrolled), TOO_LARGE.
 */
int pg_core_identity_cert(struct pg_core *c, uint8_t *buf, size_t cap, size_t *out_len);

/*
 * Accept a sealed production package (untrusted bytes). Checks, in order:
 * signature by the pinned package key over SHA-256(summary || sealed)
 * (BAD_SIGNATURE; DECODE if malformed), summary format (NOT_SUPPORTED),
 * programmer id (WRONG_PROGRAMMER), expiry (EXPIRED), replay against the
 * KeyStore's job record (REPLAY: the job is closed, or an older package of
 * the job was superseded), then unseals in the KeyStore with the summary as
 * AAD (TAMPERED) and checks the secrets agree with the summary (TAMPERED).
 * On success the package becomes the current job, is stored in flash and
 * recorded in the KeyStore. Nothing changes on error.
 * Errors: those above, STATE (not enrolled), BUSY (production running),
 * TOO_LARGE, KeyStore / flash errors.
 */
int pg_core_package_load(struct pg_core *c, const uint8_t *pkg, size_t len);

/* The current job id, or NULL. */
const char *pg_core_job_id(const struct pg_core *c);

/*
 * Make sure the current job's verified image is in the flash cache:
 * resume a partial download from the progress record, fetch manifest and
 * missing chunks (AES-GCM checked; a chunk that fails is fetched again, at
 * most `retries` times), then verify the whole image (SHA-256 = package
 * digest, MCUboot signature by the pinned ROTPK whose hash the package
 * names) before marking it usable. A bad image is erased.
 * Errors: STATE (no job), BUSY, TAMPERED (chunk kept failing), BAD_FIRMWARE,
 * DECODE, TOKEN / NOT_AUTHORIZED / JOB_NOT_ACTIVE (cloud), TIMEOUT,
 * CONNECTION, flash errors.
 */
int pg_core_firmware_fetch(struct pg_core *c);

/* 1 when the current job's image is verified in flash. */
int pg_core_firmware_ready(const struct pg_core *c);

/*
 * Enter production: job loaded, image ready, counter below limit.
 * Errors: STATE (no job / no image), LIMIT (nothing left), BUSY, EXPIRED.
 */
int pg_core_production_begin(struct pg_core *c);

/*
 * Provision one chip in socket `sock`: insert, read UID, blank check, OTP
 * ROTPK hash, on-chip key + CSR (checked: CN = UID hex, self-signed, same
 * key the chip reports), KeyStore counter increment, cert.request (with the
 * idempotency key of proto/README.md; transient failures retried with the
 * same key and counter), certificate checked against the package chain and
 * the chip's key, firmware copied from the cache (hashed on the way and
 * compared with the verified digest), boot key, certificate, reset (secure
 * boot must succeed), attestation of a fresh nonce against the certificate's
 * key, lock; then the device.provisioned or device.failed event and remove.
 * Returns NU_OK when a chip was handled (good or bad: see *out), else why
 * this socket must stop: NOT_FOUND (no more chips), STATE (production
 * stopped: see pg_core_production_end), LIMIT, QUOTA_EXHAUSTED.
 */
int pg_socket_run(struct pg_core *c, unsigned sock, struct pg_result *out);

/* Ask every socket to stop after its current chip. First reason wins, but
 * a STOP or a shutdown replaces LIMIT: LIMIT lets held chips wait for the
 * cloud, and an operator's stop must end those waits too. */
void pg_core_stop(struct pg_core *c, enum pg_stop reason);

/*
 * Leave production (all workers returned): a job whose KeyStore counter
 * reached its limit, or that the cloud declared exhausted, is closed in the
 * KeyStore (its packages are refused as REPLAY from then on). Publishes the
 * status. Returns the stop reason.
 */
enum pg_stop pg_core_production_end(struct pg_core *c);

/* Production counts so far (all sockets). */
void pg_core_counts(const struct pg_core *c, uint32_t *out_done, uint32_t *out_failed);

/* Units taken from the KeyStore counter and not spent (spare, or held by a
 * chip left in its socket): the next run uses them. */
uint32_t pg_core_units_kept(const struct pg_core *c);

/*
 * Control thread, while not producing: send the device reports an earlier
 * run left unconfirmed in the flash journal (one try each; a report the
 * cloud acknowledges or refuses for good leaves the journal). Cheap when
 * nothing is pending: call it from the idle loop.
 * Returns NU_OK (nothing left), TIMEOUT (the cloud did not answer: call
 * again later), BUSY (production runs: the sockets send their own).
 */
int pg_core_journal_flush(struct pg_core *c);

/*
 * What the port learned about the cloud link outside a request (e.g. the
 * transport lost its broker, or a test): rc a transport error (TIMEOUT,
 * CONNECTION, ...) marks the cloud unreachable since now, NU_OK clears the
 * mark. Any thread.
 */
void pg_core_link_note(struct pg_core *c, int rc);

/* Offline lease figures (issue 15): offline certificates issued and journal
 * records the cloud confirmed by this process, records still pending, the
 * lease's units (0: no lease). Any thread. */
struct pg_lease_counts {
    uint32_t issued, uploaded, pending, units;
};
void pg_core_lease_counts(const struct pg_core *c, struct pg_lease_counts *out);

/*
 * Control thread, while the sockets produce: uploads the offline
 * certificates whose chips are done (one try per batch), so that the cloud
 * refunds what they supersede even while every socket holds a request that
 * waits for that refund. Call it every second or so.
 * Returns NU_OK (nothing left), BUSY (a socket uploads now), or the
 * upload's error (TIMEOUT: the cloud did not answer; call again later).
 */
int pg_core_lease_sync(struct pg_core *c);

/* Subscribe to nusec/v1/prog/{id}/cmd (station commands). */
int pg_core_subscribe(struct pg_core *c);

/*
 * A message from the transport (any thread): PackageDelivery and
 * ProductionCommand envelopes on the command topic are queued for
 * pg_core_poll; STOP also stops production at once. Untrusted: malformed
 * messages are logged and dropped.
 */
void pg_core_on_message(void *core, const char *topic, const uint8_t *payload, size_t len);

/*
 * Control thread: handle a queued package (loaded) and command.
 * *out_action: PG_ACTION_START when the station asked to start production
 * of the current job (the caller then fetches firmware and runs the
 * sockets), PG_ACTION_STOP, or 0.
 * Returns the package load result (NU_OK when none was queued).
 */
int pg_core_poll(struct pg_core *c, int *out_action);

/*
 * Publish the retained status (ProgrammerStatus) now. `state` 0 = derived
 * (PRODUCING / IDLE). From workers, pg_core publishes it itself at most
 * every second.
 */
int pg_core_status_publish(struct pg_core *c, enum pg_prog_state state);

/*
 * Encode a status envelope (e.g. the OFFLINE last will) into buf[cap].
 * Errors: TOO_LARGE, CRYPTO (no randomness).
 */
int pg_core_status_encode(struct pg_core *c, enum pg_prog_state state, uint8_t *buf, size_t cap,
                          size_t *out_len);

/* Topic helpers (topic[cap]): nusec/v1/prog/{id}/status, .../cmd. */
int pg_core_topic_status(const struct pg_core *c, char *topic, size_t cap);

#endif
