/*
 * nu_envelope — the NuSEC wire envelope (nusec.v1.Envelope): bounded
 * decoding, validation, encoding, and the sender side of the header.
 *
 * Every MQTT payload is one Envelope. A receiver calls nu_envelope_unpack(),
 * which refuses (with a typed error and a static detail naming the field)
 * anything a correct peer never sends:
 *
 *   - more than NU_ENVELOPE_MAX bytes (checked before any parsing);
 *   - anything protobuf-c cannot decode, or whose decoding would allocate more
 *     than a budget proportional to the input (a 2-byte repeated element can
 *     make protobuf-c allocate a whole struct, so the allocator is bounded);
 *   - a missing header; a message_id that is not exactly 16 bytes; a
 *     sender_id that is not 1..64 of [A-Za-z0-9._-]; a correlation id or
 *     idempotency key over 64 bytes; protocol other than NU_ENVELOPE_PROTOCOL;
 *   - a missing body (no member of the oneof set);
 *   - any field outside the limits table in nu_envelope.c (one entry per
 *     string, bytes and repeated field of the schema): identifiers are
 *     1..64 (or 0..64 when optional) of [A-Za-z0-9._-]; every string is valid
 *     UTF-8 with no NUL and no control character (C0, DEL, C1); free text is
 *     at most NU_ENVELOPE_TEXT_MAX bytes; bytes fields have per-field bounds
 *     (CSR, certificate, chunk, package ... see the constants below);
 *     repeated fields have count caps. nu_envelope_field_limit() reads the
 *     table.
 *
 *   - on the wire, before anything is allocated: a repeated field with more
 *     elements than its cap, more than 1024 unknown fields in one message, a
 *     singular field or a second oneof member given twice (canonical
 *     encoders never do; protobuf would merge silently), a NUL in a string.
 *
 * Error codes: NU_ERR_TOO_LARGE (input, a field or a count over its limit,
 * or the decoder's memory budget), NU_ERR_DECODE (not protobuf, truncated,
 * wrong wire type, duplicate field), NU_ERR_INVALID_ARG (decoded but invalid: missing or
 * malformed field), NU_ERR_NOT_SUPPORTED (protocol version other than ours,
 * or a body type this build does not know — a newer peer).
 *
 * Growth: unknown fields are accepted and ignored (protobuf-c keeps them and
 * nu_envelope_pack() re-emits them), so peers can add fields without
 * breaking older readers. Enum values are not range-checked for the same
 * reason; code acting on an enum must handle values it does not know.
 *
 * Depth: the nusec.v1 schema has no recursive message; the deepest path is
 * Envelope > Event > JobState > ProgrammerAllocation (4 levels), so the
 * decoder's recursion is bounded by the schema, not by the input. A nested
 * length prefix where the schema has bytes or an unknown field is copied,
 * never descended into. test_envelope checks the schema depth from the
 * descriptors against NU_ENVELOPE_MAX_DEPTH, so adding a recursive message
 * fails the tests.
 *
 * A sender builds an envelope on its stack with struct nu_envelope_frame:
 *
 *     Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
 *     req.job_id = job_id;
 *     req.csr_der.data = csr;
 *     req.csr_der.len = csr_len;
 *     struct nu_envelope_frame f;
 *     int rc = nu_envelope_frame_init(&f, sender, &req.base);
 *     if (rc == NU_OK)
 *         rc = nu_envelope_frame_set_idempotency_key(&f, key, sizeof(key));
 *     if (rc == NU_OK)
 *         rc = nu_envelope_pack(&f.env, &buf, &len, &detail);   // free(buf)
 *
 * nu_envelope_pack() applies the same validation as unpack, so we never send
 * what peers must drop.
 */
#ifndef NU_ENVELOPE_H
#define NU_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "nusec/v1/envelope.pb-c.h"

/*
 * Largest firmware payload a FirmwareSignRequest carries (and so, plus the
 * MCUboot header and TLVs, the FirmwareSignResponse image): 4 MiB. These two
 * bytes fields are the only ones bounded by the whole envelope; every other
 * field keeps its own tight limit below.
 */
#define NU_ENVELOPE_FIRMWARE_MAX (4u * 1024u * 1024u)
/* Largest encoded envelope accepted or produced: a firmware image plus room
 * for the header and the other fields. NU_MQTT_DEFAULT_MAX_PAYLOAD and the
 * broker's message_size_limit (broker/mosquitto.conf.in) equal it. */
#define NU_ENVELOPE_MAX (NU_ENVELOPE_FIRMWARE_MAX + 64u * 1024u)
/* Header.protocol of this build. */
#define NU_ENVELOPE_PROTOCOL 1u
/* Header.message_id length (random bytes). */
#define NU_ENVELOPE_MESSAGE_ID_LEN 16u
/* Identifiers: sender, job, programmer, image names, serials, kinds, states. */
#define NU_ENVELOPE_ID_MAX 64u
/* Header.correlation_id and Header.idempotency_key. */
#define NU_ENVELOPE_KEY_MAX 64u
/* Free text (detail, reason). */
#define NU_ENVELOPE_TEXT_MAX 1024u
/* Enrollment and firmware download tokens. */
#define NU_ENVELOPE_TOKEN_MAX 256u
/* Device UID bytes. */
#define NU_ENVELOPE_UID_MAX 64u
/* Digests and hashes (room for SHA-512). */
#define NU_ENVELOPE_DIGEST_MAX 64u
/* A public key in any encoding (raw point, DER or PEM). */
#define NU_ENVELOPE_PUBKEY_MAX 1024u
/* Certificate signing request, DER. */
#define NU_ENVELOPE_CSR_MAX 4096u
/* One certificate, DER. */
#define NU_ENVELOPE_CERT_MAX 8192u
/* Firmware chunk ciphertext: 16 KiB of payload plus the 16-byte GCM tag. */
#define NU_ENVELOPE_CHUNK_MAX (16384u + 16u)
/* One sealed production package. */
#define NU_ENVELOPE_PACKAGE_MAX (64u * 1024u)
/* A device CRL (DER). */
#define NU_ENVELOPE_CRL_MAX (256u * 1024u)
/* Count caps of repeated fields. */
#define NU_ENVELOPE_LIST_MAX 1024u  /* devices, jobs, programmers, images */
#define NU_ENVELOPE_ALLOC_MAX 256u  /* programmer allocations (and packages) per job */
#define NU_ENVELOPE_CHAIN_MAX 8u    /* certificates in a chain */
#define NU_ENVELOPE_SOCKETS_MAX 64u /* target sockets of one programmer */
/* Message nesting the validator descends (the schema needs 4). */
#define NU_ENVELOPE_MAX_DEPTH 8u

/* nu_envelope_sender_create(): start the sequence from the wall clock. */
#define NU_ENVELOPE_SEQ_FROM_CLOCK 0u

/*
 * Decode and validate one envelope.
 *   buf, len    the payload as received (untrusted).
 *   out_env     set to the decoded envelope on success, NULL otherwise; the
 *               caller frees it with nu_envelope_free().
 *   out_detail  optional (NULL allowed): on failure, a static string naming
 *               the offending field or check (e.g. "CertificateRequest.csr_der"),
 *               for logs; never contains input bytes.
 * Errors: INVALID_ARG (bad arguments, or a missing/malformed field),
 * TOO_LARGE, DECODE, NOT_SUPPORTED (see the top of this file).
 */
int nu_envelope_unpack(const uint8_t *buf, size_t len, Nusec__V1__Envelope **out_env,
                       const char **out_detail);

/*
 * Validate and encode `env` (built by the caller or returned by unpack).
 *   out_buf     set to a malloc'd buffer of *out_len bytes; caller free()s it.
 *   out_detail  optional, as for nu_envelope_unpack().
 * Refuses whatever nu_envelope_unpack() would refuse, with the same codes;
 * INVALID_ARG also for inconsistent structs (NULL data with len > 0, a
 * sub-message of the wrong type). NOMEM if the buffer cannot be allocated.
 */
int nu_envelope_pack(const Nusec__V1__Envelope *env, uint8_t **out_buf, size_t *out_len,
                     const char **out_detail);

/*
 * Validate `env` without encoding it (what pack checks). Same codes.
 * Useful to check a decoded envelope that the caller modified.
 */
int nu_envelope_validate(const Nusec__V1__Envelope *env, const char **out_detail);

/* Free an envelope returned by nu_envelope_unpack(). NULL is a no-op.
 * Never call it on a caller-built envelope (struct nu_envelope_frame). */
void nu_envelope_free(Nusec__V1__Envelope *env);

/*
 * Name of the body member set in `env`, from the oneof descriptor:
 * "certificate_request", "firmware_chunk", ... ; "none" when no body is set
 * (or env is NULL), "unknown" for a body case this build does not know.
 * Static strings.
 */
const char *nu_envelope_body_name(const Nusec__V1__Envelope *env);

/* The body member as a generic message (for monitors, logs); NULL if none. */
const ProtobufCMessage *nu_envelope_body(const Nusec__V1__Envelope *env);

/*
 * Set the body of `env` to `body` (e.g. &req.base): the oneof member is
 * chosen from body's descriptor (each message type appears once in the
 * oneof). `body` is borrowed: it must outlive every use of `env`.
 * Errors: INVALID_ARG (NULL, or a message type that is not an Envelope body).
 */
int nu_envelope_set_body(Nusec__V1__Envelope *env, ProtobufCMessage *body);

/*
 * Check an identifier (sender id, job id, programmer id, topic segment):
 * 1..NU_ENVELOPE_ID_MAX chars of [A-Za-z0-9._-].
 * Errors: INVALID_ARG (NULL, empty or a character outside the set),
 * TOO_LARGE (longer than NU_ENVELOPE_ID_MAX).
 */
int nu_envelope_id_check(const char *id);

/*
 * Make `text` acceptable as a free-text field, in place: every invalid UTF-8
 * byte and every control character becomes '?', and the text is cut (on a
 * character boundary) to NU_ENVELOPE_TEXT_MAX bytes. For details built from
 * strings we do not control (library error texts). NULL is a no-op.
 */
void nu_envelope_text_sanitize(char *text);

/*
 * Read the limits table: for `field` of message type `msg`, the maximum
 * length of one value (string bytes or bytes length; 0 for other types) and
 * the maximum element count (repeated fields; 0 otherwise). Either out
 * pointer may be NULL.
 * Errors: NOT_FOUND (no such field in the table), INVALID_ARG.
 */
int nu_envelope_field_limit(const ProtobufCMessageDescriptor *msg, const char *field,
                            size_t *out_max_len, size_t *out_max_count);

/* ---- sender side ---------------------------------------------------------- */

/* Opaque: a sender identity and its sequence counter. Thread-safe. */
struct nu_envelope_sender;

/*
 * Create a sender for `sender_id` (its certificate CN; copied).
 *   first_sequence  sequence of the first envelope; NU_ENVELOPE_SEQ_FROM_CLOCK
 *                   (0) starts at nu_time_ms() * 1000, so sequences keep
 *                   increasing across restarts while the process averages
 *                   fewer than 1000 envelopes per millisecond.
 *   out_sender      set on success; free with nu_envelope_sender_destroy().
 * Errors: INVALID_ARG / TOO_LARGE (sender_id, as nu_envelope_id_check), NOMEM.
 */
int nu_envelope_sender_create(const char *sender_id, uint64_t first_sequence,
                              struct nu_envelope_sender **out_sender);

/* Free a sender. NULL is a no-op. */
void nu_envelope_sender_destroy(struct nu_envelope_sender *sender);

/* The sender id (owned by the sender). */
const char *nu_envelope_sender_id(const struct nu_envelope_sender *sender);

/*
 * Fill `hdr` for a new envelope: fresh random message_id (written into
 * message_id_storage, which hdr then points to), sender_id (points into the
 * sender), sent_at_ms = nu_time_ms(), the next sequence (atomic, so several
 * threads may share one sender), protocol = NU_ENVELOPE_PROTOCOL; correlation
 * id and idempotency key empty. `hdr` is re-initialised first.
 * Errors: INVALID_ARG (NULL), CRYPTO (no randomness).
 */
int nu_envelope_sender_fill_header(struct nu_envelope_sender *sender, Nusec__V1__Header *hdr,
                                   uint8_t message_id_storage[NU_ENVELOPE_MESSAGE_ID_LEN]);

/*
 * Storage for one outgoing envelope, usually on the caller's stack: no heap,
 * nothing to free. `env` points at `header`, so a frame must not be copied
 * or moved after nu_envelope_frame_init(). Pointers it holds (body, sender
 * id, correlation id, idempotency key) are borrowed.
 */
struct nu_envelope_frame {
    Nusec__V1__Envelope env;
    Nusec__V1__Header header;
    uint8_t message_id[NU_ENVELOPE_MESSAGE_ID_LEN];
};

/*
 * Initialise `frame` with a fresh header from `sender` and `body` (may be
 * NULL, then set it later with nu_envelope_set_body(&frame->env, ...)).
 * Errors: INVALID_ARG (NULL frame or sender, or body not an Envelope body
 * type), CRYPTO.
 */
int nu_envelope_frame_init(struct nu_envelope_frame *frame, struct nu_envelope_sender *sender,
                           ProtobufCMessage *body);

/* Set Header.correlation_id (borrowed, <= NU_ENVELOPE_KEY_MAX bytes; len 0 clears).
 * Errors: INVALID_ARG, TOO_LARGE. */
int nu_envelope_frame_set_correlation(struct nu_envelope_frame *frame, const uint8_t *id,
                                      size_t len);

/* Set Header.idempotency_key (borrowed, <= NU_ENVELOPE_KEY_MAX bytes; len 0 clears).
 * Errors: INVALID_ARG, TOO_LARGE. */
int nu_envelope_frame_set_idempotency_key(struct nu_envelope_frame *frame, const uint8_t *key,
                                          size_t len);

/*
 * Make `frame` an answer to `request`: its correlation id becomes the
 * request's correlation id, or the request's message id when the request
 * carried none. Borrowed from `request`, which must outlive the pack.
 * Errors: INVALID_ARG (NULL, or request without header).
 */
int nu_envelope_frame_reply_to(struct nu_envelope_frame *frame, const Nusec__V1__Envelope *request);

#endif
