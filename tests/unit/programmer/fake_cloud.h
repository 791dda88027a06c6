/*
 * fake_cloud — an in-process stand-in for the cloud agent, behind the
 * programmer core's transport HAL, for unit tests.
 *
 * It decodes every message the core sends with libnusec's nu_envelope_unpack
 * (protobuf-c), so the core's own encoder is checked against the real
 * protocol on every call, and answers with nu_envelope_pack. It holds a
 * software PKI (root, fleet CA, device CA, package key, secure-boot key), a
 * signed MCUboot image encrypted per proto/README.md, a quota with
 * idempotency keys, and knobs to misbehave.
 */
#ifndef FAKE_CLOUD_H
#define FAKE_CLOUD_H

#include "hal.h"
#include "nu_signer.h"
#include "nusec/v1/envelope.pb-c.h"

#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

struct nu_p256_key;
struct nu_hsm;
struct nu_hsm_key;

#define FC_MAX_IDEM 256
#define FC_MAX_SEEN 1024
#define FC_MAX_EVENTS 512

struct fc_event {
    char kind[40];
    int code;
    uint8_t uid[16];
    size_t uid_len;
    char serial[41];
};

struct fake_cloud {
    pthread_mutex_t lock;
    /* PKI: software keys (fc_init) or the keys of a real state directory's
     * HSM (fc_init_hsm); everything signs through the signers. */
    struct nu_p256_key *root_key, *fleet_key, *devca_key, *package_key, *sb_key;
    struct nu_signer fleet_s, devca_s, package_s, sb_s;
    struct nu_hsm *hsm;
    struct nu_hsm_key *hsm_keys[4];
    uint8_t *root_der, *fleet_der, *devca_der;
    size_t root_len, fleet_len, devca_len;
    uint8_t rotpk[65], rotpk_hash[32];
    /* enrollment */
    char enroll_token[64];
    uint8_t enrolled_pkg_pub[65]; /* of the last programmer enrolled */
    char enrolled_id[8][65];
    uint8_t enrolled_pub[8][65];
    size_t n_enrolled;
    int enroll_wrong_key; /* certify a different key than the CSR's */
    uint8_t nonce[32];    /* the last enroll.challenge, usable once */
    int nonce_live;
    /* job and firmware */
    char job_id[65];
    uint8_t token[16];
    uint8_t fw_key[32];
    uint8_t *image;
    size_t image_len;
    uint8_t image_digest[32];
    uint32_t chunk_size;
    /* quota */
    uint32_t quota; /* 0 = unlimited */
    uint32_t issued;
    int quota_holds_lease; /* the quota also counts offline certificates recorded and
                            * the units the lease out holds back, as the ledger does */
    struct {
        uint8_t key[16];
        uint8_t *cert;
        size_t len;
    } idem[FC_MAX_IDEM];
    size_t n_idem;
    /* knobs */
    int tamper_chunk_once;   /* chunk index tampered on its first fetch, -1 none */
    int tamper_chunk_always; /* chunk index always tampered, -1 none */
    int swap_chunk;          /* answer chunk i+1 when asked for this index, -1 none */
    int chunks_fail_after;   /* CONNECTION for chunk requests after this many served, -1 never */
    int drop_cert_replies;   /* this many cert.request answers are "lost" (TIMEOUT) */
    int cut_after_issue;     /* the next n new certificates: issued, then the WAN is cut
                                (link_down) before the answer crosses */
    int cut_after_grant;     /* the next n lease grants: answered, then the WAN is cut */
    int cert_unreachable;    /* cert.request always CONNECTION */
    /* cert.request: the next n answers are transient trouble, in turn the
     * transport's NOT_FOUND (no subscriber) and TIMEOUT, and the cloud's
     * Error DB, BUSY, IO, HSM; nothing is decided or issued for them. */
    int cert_transient;
    int cert_paused;        /* cert.request answered Error JOB_NOT_ACTIVE */
    int report_unreachable; /* device.report always CONNECTION */
    int report_transient;   /* the next n device.report answers are Error BUSY */
    /* device.report naming a serial the cloud holds no certificate for (not
     * issued online, no lease upload recorded it yet) is answered Error
     * NOT_FOUND, as the ledger answers it. */
    int report_needs_cert;
    /* The next n requests of any kind are taken (done) but their answers are
     * lost (TIMEOUT), as a bridge drops replies queued during an outage.
     * Like the real cloud, the fake answers Error REPLAY to a message id it
     * has taken already (a retry sent with the same bytes), and takes a
     * request that comes again with a new message id. */
    int lost_answers;
    uint8_t seen_ids[FC_MAX_SEEN][16]; /* message ids taken (a ring) */
    unsigned n_seen;
    unsigned replays_answered; /* Error REPLAY answers given */
    int taken; /* the request being answered was taken (its answer may be lost) */
    unsigned stop_after;     /* after this many failed cert/report tries, the station
                                sends STOP (0: never) */
    /* End-to-end signatures on answers (request_signed): by the package key,
     * as the real cloud signs with its HSM package key, unless a knob says
     * otherwise. forge_key: a CM-held key; forge_replies: the next n
     * answers are signed by it; replay_replies: the next n answers are the
     * previous (genuine, signed) answer again; unsigned_replies: the next n
     * carry no signature; link_refusals: the next n requests reach the cloud
     * (a certificate is issued), but what comes back is, in turn, the
     * transport's TOO_LARGE (an answer bigger than the buffer) and
     * NOT_AUTHORIZED (a PUBACK refusal), nothing signed; only requests of
     * link_refusal_op when set. */
    struct nu_p256_key *forge_key;
    int forge_replies, replay_replies, unsigned_replies, link_refusals;
    const char *link_refusal_op;
    uint8_t *last_resp;
    size_t last_len;
    char last_sig[160];
    /* observations */
    unsigned manifest_requests, chunk_requests, cert_requests, chunks_served;
    unsigned provisioned, failed, status_msgs;
    unsigned failed_tries;     /* transient / unreachable answers given */
    unsigned report_requests;  /* device.report requests received */
    unsigned reports_recorded; /* distinct reports (by idempotency key) recorded */
    uint8_t report_keys[FC_MAX_IDEM][16];
    int report_provisioned[FC_MAX_IDEM];
    unsigned waiting_status;   /* status messages with a socket "waiting-cloud" */
    struct fc_event events[FC_MAX_EVENTS];
    size_t n_events;
    int bad_messages; /* envelopes from the core that nu_envelope_unpack refused */
    pg_msg_cb cmd_cb;
    void *cmd_ctx;
    /* offline lease (issue 15): lease.grant answers NOT_AUTHORIZED while
     * lease_units is 0; one lease at a time, the same one for the same key */
    int link_down;          /* every request: CONNECTION (the WAN is cut) */
    int lease_upload_down;  /* lease.upload only: CONNECTION */
    int lease_upload_busy;  /* lease.upload only: answered Error BUSY (a cloud behind) */
    int lease_refuse_all;   /* every uploaded certificate refused (an incident: a late upload) */
    int lease_return_error; /* a final lease.upload answered Error with this code (0: none) */
    uint32_t lease_units;   /* units per lease */
    unsigned lease_base;    /* lease_recorded when the lease out was granted */
    uint32_t lease_hours;   /* validity (0: 2 h) */
    uint32_t lease_seconds; /* validity in seconds instead, when set (a lease that runs out) */
    char lease_id[41];      /* the lease out, "" when none */
    uint8_t lease_pub[65];  /* its line-CA key */
    int lease_any_key;      /* answer the lease out whatever key asks (a forged grant) */
    uint8_t *lease_der;     /* its certificate */
    size_t lease_len;
    unsigned leases_granted, leases_returned, lease_uploads;
    unsigned lease_recorded, lease_known, lease_refused;
    unsigned
        lease_superseded; /* online certificates revoked and refunded (issued--) by an upload */
    uint32_t lease_counters[FC_MAX_IDEM]; /* recorded: counter of each */
    char lease_serials[FC_MAX_IDEM][41];
};

/* Make the PKI, a signed image of image_len payload bytes, job `job_id`. */
int fc_init(struct fake_cloud *fc, const char *job_id, size_t payload_len, uint32_t chunk_size);

/* The same with the PKI that `nusec pki init` made in state directory `dir`
 * (CA certificates from DIR/pki, keys in its SoftHSM2 token). */
int fc_init_hsm(struct fake_cloud *fc, const char *dir, const char *job_id, size_t payload_len,
                uint32_t chunk_size);
void fc_free(struct fake_cloud *fc);

/* Re-sign the served image with another key (same KEYHASH lie is impossible:
 * the image is simply not the OEM's). The package digest follows the image,
 * so only the signature check can catch it. */
int fc_use_foreign_image(struct fake_cloud *fc);

struct fc_pkg_opts {
    const char *programmer_id;
    const uint8_t *recipient_pub; /* package key of the programmer (65) */
    uint32_t limit;
    uint64_t expires_at_ms;
    uint64_t created_at_ms;
    uint8_t package_id[16];
    uint32_t format;               /* 0 = 1 */
    const char *secrets_job_id;    /* NULL = the job */
    struct nu_p256_key *sign_with; /* NULL = the package key */
};

/* A sealed package (serialized SealedPackage), malloc'd. */
int fc_make_package(struct fake_cloud *fc, const struct fc_pkg_opts *o, uint8_t **out,
                    size_t *out_len);

/* The transport HAL (ctx = struct fake_cloud). */
extern const struct pg_transport_ops fc_transport_ops;

/* An envelope from the station with `body` (protobuf-c message), malloc'd. */
int fc_station_envelope(ProtobufCMessage *body, uint8_t **out, size_t *out_len);

/* Package public key an enrolled programmer sent, or NULL. */
const uint8_t *fc_enrolled_pub(struct fake_cloud *fc, const char *programmer_id);

/* Distinct device reports recorded with outcome provisioned (1) or failed (0). */
unsigned fc_count_reports(struct fake_cloud *fc, int provisioned);

/* Events of `kind` with error `code` (code < 0: any). */
unsigned fc_count_events(struct fake_cloud *fc, const char *kind, int code);

#endif
