/*
 * cloud — internals of nusec-cloud shared by the daemon frame and the
 * operation handlers (cloud_enroll.c, cloud_cert.c, cloud_firmware.c,
 * cloud_job.c). Not a public API: only this program includes it.
 *
 * The frame (cloud_server.c) takes requests from the shared subscription
 * $share/cloud/nusec/v1/cloud/req/+/+, checks them (topic shape, envelope
 * limits, header sender == topic identity, response topic inside the
 * requester's reply tree, the requester's role allowed for the op), and hands
 * each to a worker thread. A handler answers with cloud_reply() or returns an
 * NU_ERR_* code (plus call->detail), which the frame sends as a typed Error
 * and audits. Every worker has its own ledger connection; the HSM handle is
 * shared (nu_hsm is thread-safe).
 */
#ifndef CLOUD_H
#define CLOUD_H

#include "ledger.h"
#include "nu_envelope.h"
#include "nu_hsm.h"
#include "nu_metrics.h"
#include "nu_mqtt.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#define CLOUD_ID_MAX 64
#define CLOUD_OP_MAX 32
#define CLOUD_DETAIL_MAX 256
#define CLOUD_ROLE_IDS_MAX 16

/* Who a requester is; ops name the roles they accept. */
enum cloud_role {
    CLOUD_ROLE_NONE = 0,
    CLOUD_ROLE_OEM = 1u << 0,
    CLOUD_ROLE_STATION = 1u << 1,
    CLOUD_ROLE_PROGRAMMER = 1u << 2,
};

struct cloud_config {
    unsigned workers;    /* request worker threads */
    unsigned queue_max;  /* requests waiting for a worker; beyond: BUSY */
    unsigned chunk_size; /* firmware chunk bytes */
    unsigned instance;   /* client id "cloud:N", so agents can share one certificate */
    unsigned batch_max;  /* requests one worker serves in one group commit; 1 = no batching */
    unsigned checkpoint_interval_s; /* signed audit checkpoints; 0 = only at start, stop, close */
    unsigned session_expiry_s;      /* MQTT session expiry: short, see cloud_main.c usage */
    /* Memory is bounded in bytes (a request count let 4 MiB garbage payloads
     * take the cloud to 1.5 GB): every message is sized before it is copied. */
    unsigned payload_max;          /* bytes any request or event may carry, before decoding */
    unsigned firmware_payload_max; /* firmware.sign, and only from an OEM identity */
    unsigned queue_bytes_max;      /* bytes held by messages queued or in service; beyond: BUSY */
    unsigned identity_bytes_max;   /* the same for one identity */
    /* Refusals per (identity, code) audited one by one in a window; beyond,
     * counted and written as one `request.refused` row with the count. */
    unsigned refusal_audit_burst;
    unsigned refusal_audit_window_ms;
    /* Requests and events one identity may have waiting (cloud_fairq.h:
     * identities are served round robin); beyond, BUSY. */
    unsigned identity_queue_max;
    /* 1: the above, and the programmers' own connection (cloud_server.c);
     * 0: one FIFO on one connection, as before (the flood bench's "before"). */
    unsigned fair_queue;
    char oem_ids[CLOUD_ROLE_IDS_MAX][CLOUD_ID_MAX + 1];
    size_t n_oem_ids;
    char station_ids[CLOUD_ROLE_IDS_MAX][CLOUD_ID_MAX + 1];
    size_t n_station_ids;
    /* The ledger (docs/ledger.md): "sqlite" (DIR/cloud/ledger.db) or a libpq
     * URI; the PostgreSQL password only from ledger_password_file (0600) or
     * PGPASSFILE; ledger_migrate = 1 lets this agent create/migrate the schema
     * (it then needs the owner role). */
    char ledger[1024];
    char ledger_password_file[1024];
    int ledger_migrate;
    /* Attested enrollment (cloud_enroll.c): the pinned programmer vendor CA
     * certificate (PEM file; default DIR/pki/vendor-ca.pem) and, if set, the
     * allow-list of vendor serials (file, one per line). */
    char vendor_ca[4096];
    char programmer_serials[4096];
    unsigned challenge_ttl_s; /* an enrollment challenge is usable this long, once */
    /* End-to-end message signatures (cloud_msgsig.h): sent_at_ms must be
     * within this many seconds of our clock; ids remembered, at most. */
    unsigned sig_window_s;
    unsigned sig_replay_max;
    int log_level; /* enum nu_log_level of `log_level`; -1 when the key is absent */
    char metrics_listen[64]; /* /metrics address "HOST:PORT", or "off" */
};

/*
 * Prometheus metrics of this agent (declared by cloud_main.c; served on
 * cfg.metrics_listen). Families are NULL when metrics are off: the
 * nu_metric_* updates accept NULL, so call sites need no checks.
 */
struct cloud_metrics {
    struct nu_metrics *reg;
    struct nu_metric *issued;          /* counter {job} */
    struct nu_metric *refused;         /* counter {job,code}: cert.request refusals */
    struct nu_metric *request_s;       /* histogram {op}: received -> answered */
    struct nu_metric *hsm_sign_s;      /* histogram: one device certificate signed */
    struct nu_metric *ledger_commit_s; /* histogram: issuance transaction, signing excluded */
    struct nu_metric *queue_depth;     /* gauge */
    struct nu_metric *workers_busy;    /* gauge */
    struct nu_metric *mqtt_reconnects; /* counter */
    struct nu_metric *mqtt_connected;  /* gauge */
    int mqtt_lost;                     /* the connection was lost: the next one is a reconnect */
};

/* HSM keys and the CA certificates the cloud signs under. */
struct cloud_keys {
    struct nu_hsm_key *device_ca;
    struct nu_hsm_key *fleet_ca;
    struct nu_hsm_key *package;
    struct nu_hsm_key *secure_boot;
    struct nu_hsm_key *audit; /* NULL in a state directory made before audit keys existed */
    uint8_t *root_der, *fleet_der, *device_der;
    size_t root_len, fleet_len, device_len;
};

struct cloud_queue;
struct cloud_fw_cache;

struct cloud {
    const char *dir;
    char id[CLOUD_ID_MAX + 1]; /* our certificate CN */
    struct cloud_config cfg;
    struct nu_hsm *hsm;
    struct cloud_keys keys;
    struct nu_mqtt *mqtt;
    struct nu_envelope_sender *sender;
    struct cloud_queue *queue;
    char ledger_path[4096]; /* the ledger's target: a file path or a libpq URI */
    struct cloud_fw_cache *fw_cache; /* firmware images served from memory (cloud_firmware.c) */
    pthread_mutex_t crl_lock;        /* device CRL: one build at a time (cloud_devcrl.c) */
    uint64_t crl_at_ms;              /* when the last device CRL was issued */
    uint64_t crl_tried_at_ms;        /* when the last attempt was made */
    int crl_dirty;                   /* the last attempt failed: the tick retries */
    volatile int stopping;
    struct cloud_metrics metrics;
};

/* One request being served by a worker. */
struct cloud_call {
    struct cloud *cloud;
    struct cloud_ledger *ledger; /* the worker's connection */
    const char *requester;       /* certificate CN of the sender */
    enum cloud_role role;
    const char *op;
    const Nusec__V1__Envelope *req;
    const struct nu_mqtt_msg *msg; /* for the reply's topic and correlation */
    int replied;
    int audited;                   /* the handler's refusal is already in the audit chain (the
                                      ledger records its own refusals): the frame adds none */
    int admitted;                  /* signed by the requester, whose role may call op */
    char detail[CLOUD_DETAIL_MAX]; /* why, when the handler returns an error */
};

/* An operation: `nusec/v1/cloud/req/{id}/{name}`. */
struct cloud_op {
    const char *name;
    unsigned roles; /* enum cloud_role bits allowed to call it */
    int body_case;  /* the Envelope body it expects */
    int (*handle)(struct cloud_call *call);
};

/* An event the cloud records: `nusec/v1/events/{role}/{id}/{kind}`. */
struct cloud_event_op {
    const char *kind;
    const char *role; /* topic role level it is accepted from */
    int (*handle)(struct cloud_call *call);
};

/*
 * An operation whose calls a worker may serve several at once (group commit):
 * the frame takes up to `max` consecutive queued requests of that op, checks
 * each as for `handle`, and gives those that passed to `handle_batch` in one
 * go; out_rc[i] is calls[i]'s outcome (as `handle` would return it). The op
 * is still listed in an op table (its role and body checks, one-call use).
 */
struct cloud_batch_op {
    const char *name;
    unsigned max;
    void (*handle_batch)(struct cloud_call *const *calls, size_t n, int *out_rc);
};

/* Tables of each handler file, terminated by a zeroed entry. */
extern const struct cloud_op cloud_enroll_ops[];
extern const struct cloud_op cloud_cert_ops[];
extern const struct cloud_op cloud_firmware_ops[];
extern const struct cloud_op cloud_job_ops[];
extern const struct cloud_event_op cloud_cert_events[];
extern const struct cloud_batch_op cloud_cert_batch_ops[];

/* Send `body` as the answer to call (once). While the broker is unreachable the
 * reply is dropped at once and NU_OK returned (the requester retries).
 * Errors: those of packing/publishing. */
int cloud_reply(struct cloud_call *call, ProtobufCMessage *body);

/* Set call->detail with printf formatting and return `code` (for `return cloud_fail(...)`). */
int cloud_fail(struct cloud_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Publish `body` wrapped in an envelope on `topic` (QoS 1); while the broker is
 * unreachable it is queued for the reconnection, not waited for (NU_OK). */
int cloud_publish(struct cloud *cloud, const char *topic, ProtobufCMessage *body, int retain);

/* Publish an Event on nusec/v1/events/cloud/{id}/{kind}. */
int cloud_publish_event(struct cloud *cloud, Nusec__V1__Event *event);

/* Frame lifecycle (cloud_server.c). cloud_stop drains the queue, then writes
 * the refusal counts not yet in the audit chain with `ledger` (NULL: none). */
int cloud_start(struct cloud *cloud);
void cloud_stop(struct cloud *cloud, struct cloud_ledger *ledger);

/*
 * Write the coalesced refusals whose window has passed (all = every pending
 * count) as `request.refused` rows {"code","count","coalesced":1}; for the
 * main thread's tick (cloud_server.c). Failures are logged.
 */
void cloud_refusals_flush(struct cloud *cloud, struct cloud_ledger *ledger, int all);

/*
 * Make DIR/broker/revoked list every programmer the ledger holds as revoked
 * (adds the missing lines, keeps the others; atomic rewrite under a lock
 * file, so agents sharing DIR never lose each other's lines). The broker
 * plugin reloads the file and disconnects the newly revoked (cloud_enroll.c).
 * Errors: IO, PERMISSION, NOMEM, TOO_LARGE, DB.
 */
int cloud_revoked_sync(struct cloud *cloud, struct cloud_ledger *ledger);

/*
 * Rewrite DIR/broker/serials from the ledger: "programmer_id serial" for
 * every enrolled programmer, its current identity certificate. The broker
 * plugin refuses a programmer certificate with another serial and
 * disconnects an identity whose serial changed, so a re-enrolled
 * programmer's previous certificate stops working at once (broker/pins.h).
 * Atomic rewrite under the same kind of lock file as the other lists.
 * Errors: IO, PERMISSION, NOMEM, DB.
 */
int cloud_serials_sync(struct cloud *cloud, struct cloud_ledger *ledger);

/*
 * The lists on the bus for a broker on another host (cloud_enroll.c):
 * CLOUD_LISTS_TOPIC{revoked,serials,owners/ID}, retained, plain list text.
 * cloud_lists_publish: for the leader, each poll; builds the revocation
 * and serial lists from the ledger and publishes the ones that changed
 * since it last did (cloud_leader.h). Failures are logged and retried at
 * the next call.
 */
#define CLOUD_LISTS_TOPIC "nusec/v1/cloud/lists/"
struct cloud_leader;
void cloud_lists_publish(struct cloud *cloud, struct cloud_ledger *ledger,
                         struct cloud_leader *leader);

/*
 * Move DIR/cloud/revoked-measurements (programmer firmware revoked before
 * the ledger held the list, schema < 5) into the ledger, then rename it
 * revoked-measurements.imported. No file: NU_OK. On failure the file stays
 * and the next start retries (cloud_enroll.c). Errors: IO, DB, BUSY.
 */
int cloud_revoked_measurements_import(struct cloud *cloud, struct cloud_ledger *ledger);

/*
 * Publish the retained JobState of `job_id` (as the ledger holds it now) on
 * nusec/v1/jobs/{job_id} (cloud_job.c; usable by every handler).
 * Errors: those of cloud_ledger_job_get and cloud_publish.
 */
int cloud_publish_job_state(struct cloud *cloud, struct cloud_ledger *ledger, const char *job_id);

/* The firmware module's state (cloud_firmware.c): start before cloud_start,
 * stop after cloud_stop (NULL-safe, idempotent). Errors: NOMEM. */
int cloud_firmware_start(struct cloud *cloud);
void cloud_firmware_stop(struct cloud *cloud);

/*
 * Sign the audit chain's head in the HSM: an `audit.checkpoint` event
 * (audit_checkpoint.h), also published as an event so that copies exist
 * outside the ledger. Nothing when the last event already is one or the
 * state directory has no audit key. `why` goes to the log (cloud_audit.c).
 * Errors: those of cloud_ledger_checkpoint and the HSM.
 */
int cloud_checkpoint(struct cloud *cloud, struct cloud_ledger *ledger, const char *why);

/*
 * Issue the device CRL now from the ledger's revoked certificates: signed by
 * the Device CA in the HSM, kept in the ledger (only if newer than the one it
 * holds: agents on several hosts issue them), written to
 * DIR/pki/device-crl.pem and published retained on nusec/v1/crl/device
 * (DeviceCrl). On failure the next
 * cloud_device_crl_refresh retries. `why` goes to the log (cloud_devcrl.c).
 * Errors: those of the ledger, cloud_crl_build, the file write and publish.
 */
int cloud_device_crl_update(struct cloud *cloud, struct cloud_ledger *ledger, const char *why);

/* cloud_device_crl_update when the last one failed or is half-way to its
 * nextUpdate (a week); for the maintenance tick. */
int cloud_device_crl_refresh(struct cloud *cloud, struct cloud_ledger *ledger);

/* Configuration: defaults, then DIR/cloud/cloud.conf if it exists. */
int cloud_config_load(const char *dir, const char *path, struct cloud_config *out_cfg);

/* Open the HSM keys and CA certificates of DIR. */
int cloud_keys_open(struct cloud *cloud);
void cloud_keys_close(struct cloud_keys *keys);

/*
 * Is `id` a station identity: listed in cloud.conf station_ids (read at
 * start), or the station of a site the OEM signed while the cloud ran
 * (`nusec site sign` wrote DIR/sites/ID/station.crt and its client
 * certificate DIR/pki/clients/ID.crt on the OEM's disk; looked up on every
 * call, so a new site needs no restart). Returns 1 or 0.
 */
int cloud_is_station(const struct cloud *cloud, const char *id);

#endif
