/*
 * pg_msg — the nusec.v1 messages the programmer sends and receives, on the
 * pg_pb codec (field numbers from the files proto/nusec/v1/NAME.proto).
 *
 * Decoded structs borrow from the input buffer (struct pg_bytes); they are
 * valid as long as that buffer is. Decoders check structure and bounds only;
 * the meaning (ids, lengths of keys, matching job) is checked by the caller,
 * which knows what it asked for.
 */
#ifndef PG_MSG_H
#define PG_MSG_H

#include "hal.h"
#include "pg_pb.h"

#include <stddef.h>
#include <stdint.h>

#define PG_MSG_PROTOCOL 1u
#define PG_MSG_ID_MAX 64u         /* identifiers (sender, job, programmer) */
#define PG_MSG_MESSAGE_ID_LEN 16u /* Header.message_id */
#define PG_MSG_CHAIN_MAX 8u       /* certificates in a chain */
#define PG_MSG_TEXT_MAX 1024u

/* Envelope body field numbers (proto/nusec/v1/envelope.proto). */
enum pg_body {
    PG_BODY_ERROR = 10,
    PG_BODY_ACK = 11,
    PG_BODY_EVENT = 12,
    PG_BODY_ENROLL_REQUEST = 22,
    PG_BODY_ENROLL_RESPONSE = 23,
    PG_BODY_ENROLL_CHALLENGE_REQUEST = 27,
    PG_BODY_ENROLL_CHALLENGE = 28,
    PG_BODY_MANIFEST_REQUEST = 42,
    PG_BODY_MANIFEST = 43,
    PG_BODY_CHUNK_REQUEST = 44,
    PG_BODY_CHUNK = 45,
    PG_BODY_CERT_REQUEST = 50,
    PG_BODY_CERT_ISSUED = 51,
    PG_BODY_CERT_REFUSED = 52,
    PG_BODY_PACKAGE_DELIVERY = 60,
    PG_BODY_PRODUCTION_COMMAND = 61,
    PG_BODY_PROGRAMMER_STATUS = 62,
};

/* nusec.v1 enum values the programmer uses. */
enum pg_prog_state {
    PG_PROG_OFFLINE = 1,
    PG_PROG_IDLE = 2,
    PG_PROG_PRODUCING = 3,
    PG_PROG_ERROR = 4,
};
enum pg_outcome { PG_OUTCOME_PROVISIONED = 1, PG_OUTCOME_FAILED = 2 };
enum pg_action { PG_ACTION_START = 1, PG_ACTION_STOP = 2 };

/* ---- decoding ---------------------------------------------------------- */

struct pg_msg_header {
    struct pg_bytes message_id, sender_id, correlation_id, idempotency_key;
    uint64_t sent_at_ms, sequence;
    uint32_t protocol;
};

struct pg_msg_env {
    struct pg_msg_header hdr;
    uint32_t body_num; /* enum pg_body, 0 when none */
    struct pg_bytes body;
};

struct pg_msg_error {
    uint32_t code;
    struct pg_bytes detail, op;
};

struct pg_msg_cert_issued {
    struct pg_bytes job_id, device_uid, certificate, serial;
    uint32_t issued, quota;
};

struct pg_msg_cert_refused {
    struct pg_bytes job_id, device_uid, error;
};

struct pg_msg_manifest {
    struct pg_bytes job_id, image_name, image_digest;
    uint32_t size, chunk_size, chunk_count;
};

struct pg_msg_chunk {
    struct pg_bytes job_id, nonce, ciphertext;
    uint32_t index, offset;
};

struct pg_msg_enroll_resp {
    struct pg_bytes programmer_id, certificate, package_signing_pubkey, rotpk;
    struct pg_bytes chain[PG_MSG_CHAIN_MAX];
    size_t n_chain;
};

struct pg_msg_enroll_challenge {
    struct pg_bytes programmer_id, nonce;
    uint64_t expires_at_ms;
};

struct pg_msg_delivery {
    struct pg_bytes sealed_package;
};

struct pg_msg_command {
    struct pg_bytes job_id;
    uint32_t action;
};

struct pg_msg_sealed_pkg {
    struct pg_bytes summary, sealed, signature;
};

struct pg_msg_summary {
    struct pg_bytes job_id, programmer_id, firmware, package_id;
    uint32_t limit, format;
    uint64_t expires_at_ms, created_at_ms;
};

struct pg_msg_secrets {
    struct pg_bytes job_id, token, firmware_key, rotpk_hash, firmware_digest, subject_template;
    struct pg_bytes chain[PG_MSG_CHAIN_MAX];
    size_t n_chain;
    uint32_t limit, firmware_size;
    uint64_t expires_at_ms;
};

/*
 * Envelope: header checked (present, protocol 1 else NOT_SUPPORTED,
 * message_id 16 bytes, sender id valid), at most one body member (a second
 * one is DECODE). Errors: DECODE, TOO_LARGE, INVALID_ARG, NOT_SUPPORTED.
 */
int pg_msg_env_decode(const uint8_t *buf, size_t len, struct pg_msg_env *out);

/*
 * Decode an answer whose body must be `want` (or an Error). On an Error body
 * the error's code is returned (INTERNAL if it is not a known failure code)
 * and *out_error (if not NULL) is filled. Other bodies: DECODE.
 */
int pg_msg_reply_decode(const uint8_t *buf, size_t len, enum pg_body want, struct pg_msg_env *env,
                        struct pg_msg_error *out_error);

int pg_msg_error_decode(struct pg_bytes b, struct pg_msg_error *out);
int pg_msg_cert_issued_decode(struct pg_bytes b, struct pg_msg_cert_issued *out);
int pg_msg_cert_refused_decode(struct pg_bytes b, struct pg_msg_cert_refused *out);
int pg_msg_manifest_decode(struct pg_bytes b, struct pg_msg_manifest *out);
int pg_msg_chunk_decode(struct pg_bytes b, struct pg_msg_chunk *out);
int pg_msg_enroll_resp_decode(struct pg_bytes b, struct pg_msg_enroll_resp *out);
int pg_msg_enroll_challenge_decode(struct pg_bytes b, struct pg_msg_enroll_challenge *out);
int pg_msg_delivery_decode(struct pg_bytes b, struct pg_msg_delivery *out);
int pg_msg_command_decode(struct pg_bytes b, struct pg_msg_command *out);
int pg_msg_sealed_pkg_decode(struct pg_bytes b, struct pg_msg_sealed_pkg *out);
int pg_msg_summary_decode(struct pg_bytes b, struct pg_msg_summary *out);
int pg_msg_secrets_decode(struct pg_bytes b, struct pg_msg_secrets *out);

/* 1 when b is 1..PG_MSG_ID_MAX bytes of [A-Za-z0-9._-]. */
int pg_msg_id_ok(struct pg_bytes b);
/* Copy an id (checked with pg_msg_id_ok) into out[PG_MSG_ID_MAX + 1]. DECODE if invalid. */
int pg_msg_id_copy(struct pg_bytes b, char out[PG_MSG_ID_MAX + 1]);
/* 1 when b equals the NUL-terminated s. */
int pg_msg_eq(struct pg_bytes b, const char *s);

/* ---- encoding ---------------------------------------------------------- */

/* What the sender puts in a header (pointers borrowed). */
struct pg_msg_hdr_out {
    const uint8_t *message_id; /* 16 bytes */
    const char *sender_id;
    uint64_t sent_at_ms;
    uint64_t sequence;
    const uint8_t *idempotency_key; /* NULL: none */
    size_t idempotency_key_len;
};

void pg_msg_put_header(struct pg_pb_writer *w, const struct pg_msg_hdr_out *h);

void pg_msg_put_manifest_req(struct pg_pb_writer *w, const char *job_id, const uint8_t *token,
                             size_t token_len);
void pg_msg_put_chunk_req(struct pg_pb_writer *w, const char *job_id, const uint8_t *token,
                          size_t token_len, uint32_t index);

struct pg_msg_cert_req_out {
    const char *job_id;
    const uint8_t *uid;
    size_t uid_len;
    const uint8_t *csr;
    size_t csr_len;
    uint32_t socket;
    uint32_t counter;
};
void pg_msg_put_cert_req(struct pg_pb_writer *w, const struct pg_msg_cert_req_out *r);

struct pg_msg_enroll_req_out {
    const char *programmer_id;
    const char *token;
    const uint8_t *csr;
    size_t csr_len;
    const uint8_t *package_pubkey; /* 65 bytes */
    const uint8_t *firmware_hash;  /* NULL or 32 bytes */
    const struct pg_attestation *attestation; /* NULL: none (the cloud refuses) */
    const uint8_t *boot_manifest;             /* NULL or boot_manifest_len bytes */
    size_t boot_manifest_len;
};
void pg_msg_put_enroll_req(struct pg_pb_writer *w, const struct pg_msg_enroll_req_out *r);
void pg_msg_put_enroll_challenge_req(struct pg_pb_writer *w, const char *programmer_id,
                                     const char *token);

struct pg_msg_report_out {
    const char *job_id;
    const uint8_t *uid;
    size_t uid_len;
    uint32_t socket;
    enum pg_outcome outcome;
    const char *serial;
    int error;
    const char *detail;
    uint32_t duration_ms;
};
/* Event{kind, job_id, code, detail, device = DeviceReport}. */
void pg_msg_put_device_event(struct pg_pb_writer *w, const char *kind,
                             const struct pg_msg_report_out *r);

struct pg_msg_sock_out {
    uint32_t socket, done, failed;
    const char *state;
};
struct pg_msg_status_out {
    const char *programmer_id;
    enum pg_prog_state state;
    const char *job_id;
    uint32_t limit, counter;
    const struct pg_msg_sock_out *sockets;
    size_t n_sockets;
    const char *firmware_version;
    uint64_t cloud_lost_ms; /* cloud unreachable since (wall ms), 0: reachable */
};
/* ProgrammerStatus as the envelope body (retained status topic). */
void pg_msg_put_status(struct pg_pb_writer *w, const struct pg_msg_status_out *s);

#endif
