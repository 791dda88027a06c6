/*
 * pg_int.h — internals shared by the core's files. Not for ports. The files
 * form a stack, each calling only those below it:
 *   pg_produce.c, pg_enroll.c, pg_firmware.c
 *   pg_core.c     (state, envelopes, requests, status, station commands)
 *   pg_package.c  (sealed packages, job records)
 *   pg_util.c     (log, zero, ct_eq, hex, be32, sha256, KeyStore/flash adapters)
 *   pg_msg.c, pg_pb.c, the HAL
 */
#ifndef PG_INT_H
#define PG_INT_H

#include "pg_core.h"
#include "pg_msg.h"
#include "pg_pb.h"

#include <stddef.h>
#include <stdint.h>

/* KeyStore blob names. */
#define PG_BLOB_IDENTITY_CERT "identity.crt"
#define PG_BLOB_IDENTITY_CHAIN "identity.chain"
#define PG_BLOB_PIN_PACKAGE "pin.package"
#define PG_BLOB_PIN_ROTPK "pin.rotpk"
#define PG_BLOB_PIN_ANCHOR "pin.anchor"
#define PG_BLOB_JOB_PREFIX "job."
#define PG_BLOB_UNITS_PREFIX "units."
#define PG_BLOB_INFLIGHT_PREFIX "inflight."

#define PG_TOPIC_MAX 160

void pg__log(const struct pg_core *c, enum pg_log_level level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Zero memory so the compiler cannot drop it. */
void pg__zero(void *p, size_t n);
/* Constant time: 1 when equal. */
int pg__ct_eq(const void *a, const void *b, size_t n);
/* Lower-case hex of buf[len] into out[2*len+1]. */
void pg__hex(const uint8_t *buf, size_t len, char *out);
void pg__be32(uint8_t out[4], uint32_t v);

/* SHA-256 of up to three parts (NULL parts skipped). */
int pg__sha256(const struct pg_core *c, const void *a, size_t alen, const void *b, size_t blen,
               const void *d, size_t dlen, uint8_t out[32]);

/* Writer over buf[cap] with the envelope header of a new message from
 * `sender` (NULL: the programmer id). idem may be NULL. Then write the body;
 * check w->err at the end. */
int pg__env_start(struct pg_core *c, struct pg_pb_writer *w, uint8_t *buf, size_t cap,
                  const char *sender, const uint8_t *idem, size_t idem_len);

/* Request `op` as `sender` (topic nusec/v1/cloud/req/{sender}/{op}); retries
 * transient failures (TIMEOUT, CONNECTION, NOT_FOUND, MQTT) with backoff, and
 * an Error REPLAY after giving req a new message id (req is rewritten). */
int pg__request(struct pg_core *c, const char *sender, const char *op, uint8_t *req, size_t len,
                uint8_t *resp, size_t cap, size_t *out_len);

/* One try of a request that may be repeated with the same bytes (same
 * idempotency key): timeout PG_FIRST_TIMEOUT_MS doubling per `attempt`, up
 * to the configured timeout. */
/*
 * A request about to be sent again: a fresh message id and sent_at in the
 * envelope's header at buf[0..len), in place (same length), nothing else
 * changed (the idempotency key stays, so the cloud answers the same). The
 * cloud refuses a message id it has seen, and one older than its window, so
 * an exact copy of a request whose answer was lost would be refused REPLAY.
 * Errors: DECODE (not an envelope this core wrote), the RNG's.
 */
int pg__env_restamp(struct pg_core *c, uint8_t *buf, size_t len);
int pg__request_try(struct pg_core *c, const char *op, const uint8_t *req, size_t len,
                    unsigned attempt, uint8_t *resp, size_t cap, size_t *out_len);

/* 1 when a cloud's answer (or a transport error) may change if asked again:
 * the cloud or its bus is in trouble, nothing was decided. */
int pg__cloud_transient(int rc);

/* A stop that ends a hold (LIMIT does not: see pg_core.c). */
int pg__hold_stopped(const struct pg_core *c);

/* The pause before the next try while holding a chip: *delay with jitter
 * (half to all of it), then *delay doubles up to the cap. Wakes early and
 * answers STATE when production is stopped (except by PG_STOP_LIMIT, which
 * only bars new chips: a held chip has its unit), EXPIRED when the job
 * expires. */
int pg__hold_wait(struct pg_core *c, uint32_t *delay);

/* pg_link.c: the outcome `rc` of a try of a cloud request (transport
 * failure: the cloud is unreachable since now, if not already; anything
 * else: it answers). Any thread. */
void pg__link_note(struct pg_core *c, int rc);

/* Wall-clock ms since the cloud is unreachable, 0 when it answers. */
uint64_t pg__link_lost_ms(const struct pg_core *c);

/* Before socket `sock` starts a chip: while the cloud is unreachable and
 * another socket's held chip is probing it, wait (socket state "paused").
 * Returns NU_OK to go on, STATE (production stopped) or EXPIRED (job). */
int pg__link_gate(struct pg_core *c, unsigned sock);

/* ---- pg_lease.c: the offline lease (issue 15 part 2) ---- */

/* Control thread, production begin (the work union is free): load the
 * job's lease from the KeyStore, send the journal up, return a lease that is
 * used up, expired or of no use, and ask for one when none is held (the job
 * may allow none: NOT_AUTHORIZED means no lease). Never fails production:
 * without a lease the line pauses offline as before. */
void pg__lease_begin(struct pg_core *c);

/* Control thread, production end: send the journal up; `finished` (job
 * closed) returns the lease. */
void pg__lease_end(struct pg_core *c, int finished);

/* Control thread, idle (not producing): one try to send the journal up.
 * NU_OK when nothing is left, else the transport's error. */
int pg__lease_idle(struct pg_core *c);

/* 1 when a socket may issue offline now: a lease of this job, inside its
 * validity by the programmer's clock, counter below its units. */
int pg__lease_usable(struct pg_core *c);

/* Socket worker, before a chip: journal records up to the cloud (one per
 * request, in w's buffers) when it answers, or one probe try every few
 * seconds while it does not (the probe is what notices it is back). */
void pg__lease_worker(struct pg_core *c, unsigned sock, struct pg_sock_work *w);

/* 1 when pg__lease_worker has records to send up: its tries probe the cloud. */
int pg__lease_uploads(const struct pg_core *c);

/* 1 while the lease may still give quota back: records to upload (each may
 * supersede an online certificate), or used up and not given back yet. */
int pg__lease_may_refund(const struct pg_core *c);

/* A chip is no longer any socket's chip in flight: a journal record of it
 * that never got an outcome (a power cut, then the chip taken away) can go
 * up now, mid-production (pg_lease.c). */
void pg__lease_chip_left(struct pg_core *c);

/* 1 when uid is the chip in flight in one of the sockets, or a chip an
 * earlier run holds a unit for (it may come back): its journal record, if
 * any, waits for the chip's outcome (pg_produce.c). */
int pg__chip_in_flight(struct pg_core *c, const uint8_t *uid, size_t len);

/*
 * Offline issuance for the chip in w (w->pub checked, w->uid, w->uid_hex):
 * the lease counter advances in the KeyStore first, then the certificate is
 * signed in the KeyStore by the line-CA key, then journalled (sealed
 * storage); only then does the caller write it to the chip. Into w->resp:
 * leaf || line-CA certificate || the package chain without its root (the
 * chain the chip keeps); *out_leaf_len and *out_len. *out_journalled = 1
 * once the certificate is in the journal (the production unit is spent).
 * `supersedes`: the chip's online cert.request (same UID) was abandoned
 * unanswered; the journal record says so, and its upload asks the cloud to
 * revoke and refund a certificate it may have issued for that request.
 * A KeyStore write failing IO (a full disk) is waited out; a stop or the
 * job's end ends the wait. Errors: LIMIT (lease used up), EXPIRED (the
 * lease's or the job's end), STATE (no lease, or a stop ended the counter's
 * wait): nothing taken, w->resp intact; IO (the journal's wait ended: its
 * counter value is burned, w->resp holds the certificate), TOO_LARGE,
 * KeyStore / crypto errors.
 */
int pg__lease_issue(struct pg_core *c, struct pg_sock_work *w, int supersedes,
                    size_t *out_leaf_len, size_t *out_len, int *out_journalled,
                    uint32_t *out_counter);

/* 1 when the chip's unanswered online certificate request (first asked at
 * asked_ms) is to be abandoned for an offline certificate: a usable lease,
 * the cloud unreachable, and the request or the outage lease_abandon_ms old.
 * The request's own age counts: the outage is often noted by another
 * socket's timeout a moment later, and waiting its full age again let the
 * other sockets use up the lease first. */
int pg__lease_abandon_due(struct pg_core *c, uint64_t asked_ms);

/* pg_produce.c: the idempotency key of the chip's cert.request,
 * SHA-256("nusec/v1 cert" || job || UID)[:16], into out[32]. */
int pg__cert_idem(struct pg_core *c, const uint8_t *uid, size_t uid_len, uint8_t out[32]);

/* A chip resumed after a crash: the journalled certificate for its UID and
 * key (w->pub), as pg__lease_issue writes it. NOT_FOUND when none. */
int pg__lease_find(struct pg_core *c, struct pg_sock_work *w, size_t *out_leaf_len, size_t *out_len,
                   uint32_t *out_counter);

/* A chip found done holding certificate der[0..len) (leaf first, its chain
 * may follow; not in w->req): the counter of the journal record that
 * issued it, while that record waits for its upload. Uses w->req.
 * NOT_FOUND when none. */
int pg__lease_holds(struct pg_core *c, struct pg_sock_work *w, const uint8_t *der, size_t len,
                    uint32_t *out_counter);

/* The chip of journal record `counter` is done: its report (outcome,
 * serial, error) joins the record, to be confirmed after the upload. Uses
 * w->req. KeyStore errors. */
int pg__lease_outcome(struct pg_core *c, struct pg_sock_work *w, uint32_t counter,
                      const struct pg_msg_report_out *rep);

/* pg_produce.c: a device report envelope (Event with the DeviceReport; the
 * idempotency key SHA-256("nusec/v1 report" || job || 0 || UID || outcome)
 * [:16], so the cloud records it once however it comes) into buf[cap]. */
int pg__report_env(struct pg_core *c, struct pg_pb_writer *wr, uint8_t *buf, size_t cap,
                   const struct pg_msg_report_out *rep);

/* The chain an offline certificate verifies against: line CA, then the
 * package chain (out[cap]). NOT_FOUND without a lease. */
int pg__lease_chain(const struct pg_core *c, struct pg_der *out, size_t cap, size_t *out_n);

/* Publish the status now (a socket starts waiting for the cloud). */
void pg__status_now(struct pg_core *c, uint8_t *buf, size_t cap);

/* Publish an envelope on nusec/v1/events/programmer/{id}/{kind}, QoS 1. */
int pg__publish_event(struct pg_core *c, const char *kind, const uint8_t *env, size_t len);

/* Throttled status publish from workers (at most once per second). */
void pg__status_maybe(struct pg_core *c, uint8_t *buf, size_t cap);

/* 1 when the error means a transient transport problem. */
int pg__transient(int rc);

/* KeyStore job record ("job.<id>"). */
struct pg__job_record {
    int closed;
    uint8_t package_id[16];
    uint64_t created_at_ms;
};
int pg__job_record_get(struct pg_core *c, const char *job_id, struct pg__job_record *out);
int pg__job_record_put(struct pg_core *c, const char *job_id, const struct pg__job_record *r);

/* The image cache reader for crypto image_verify. */
int pg__flash_image_read(void *core, uint32_t off, uint8_t *buf, size_t len);

/* KeyStore adapters for crypto ops. */
int pg__ks_ecdh_package(void *core, const uint8_t peer[PG_P256_PUB_LEN], uint8_t out[32]);
int pg__ks_sign_identity(void *core, const uint8_t digest[32], uint8_t *sig, size_t *sig_len);

/* pg_reply.c: end-to-end signatures on the cloud's answers (libnusec
 * nu_msgsig.h: ECDSA P-256 over SHA-256(domain 0 topic 0 payload), hex DER
 * in the MQTT 5 user property "nusec-sig"). */
#define PG_MSGSIG_DOMAIN "nusec/v1 envelope"
#define PG_MSGSIG_HEX_MAX (2 * 72 + 1)

/*
 * A request on the transport whose answer is verified when the core has a
 * key for the cloud (the package key pinned at enrollment, before it the
 * anchor): signed by that key over the topic it arrived on, and answering
 * this request (header correlation_id = the request's message_id). A forged
 * or replayed answer is dropped, counted and logged: BAD_SIGNATURE. An
 * authentic answer bound to no request (the cloud's overload reply) is BUSY.
 * A transport without request_signed: NOT_SUPPORTED (fail closed).
 */
int pg__tp_request(struct pg_core *c, const char *topic, const uint8_t *req, size_t len,
                   uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len);

/* Load the anchor from the KeyStore into c (none: c->anchored 0). */
int pg__anchor_load(struct pg_core *c);

/* Load the pins from the KeyStore into c (enrolled flag). */
int pg__pins_load(struct pg_core *c);

/* Reload the package kept in flash (at init). */
void pg__package_reload(struct pg_core *c);

#endif
