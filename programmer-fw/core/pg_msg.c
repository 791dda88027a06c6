#include "pg_msg.h"

#include "nu_err.h"

#include <stddef.h>
#include <string.h>

#define PG_MSG__N(t) (sizeof(t) / sizeof((t)[0]))
#define B(num, type, field, max)                                                                   \
    {                                                                                              \
        num, PG_PB_BYTES, offsetof(type, field), max, 0, 0                                         \
    }
#define U32(num, type, field)                                                                      \
    {                                                                                              \
        num, PG_PB_U32, offsetof(type, field), 0, 0, 0                                             \
    }
#define U64(num, type, field)                                                                      \
    {                                                                                              \
        num, PG_PB_U64, offsetof(type, field), 0, 0, 0                                             \
    }
#define REP(num, type, field, max, cnt)                                                            \
    {                                                                                              \
        num, PG_PB_REPEATED, offsetof(type, field), max, PG_MSG_CHAIN_MAX, offsetof(type, cnt)     \
    }

/* Bounds: those of libnusec/nu_envelope.h, so both sides agree. */
enum {
    MSG__ID = PG_MSG_ID_MAX,
    MSG__KEY = 64,
    MSG__TEXT = PG_MSG_TEXT_MAX,
    MSG__TOKEN = 256,
    MSG__UID = 64,
    MSG__DIGEST = 64,
    MSG__PUB = 1024,
    MSG__CERT = 8192,
    MSG__CHUNK = 16384 + 16,
    MSG__PACKAGE = 64 * 1024,
    MSG__ENVELOPE = 256 * 1024,
};

int pg_msg_id_ok(struct pg_bytes b)
{
    if (!b.p || b.len == 0 || b.len > PG_MSG_ID_MAX)
        return 0;
    for (size_t i = 0; i < b.len; i++) {
        uint8_t c = b.p[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (!ok)
            return 0;
    }
    return 1;
}

int pg_msg_id_copy(struct pg_bytes b, char out[PG_MSG_ID_MAX + 1])
{
    if (!pg_msg_id_ok(b))
        return NU_ERR_DECODE;
    memcpy(out, b.p, b.len);
    out[b.len] = '\0';
    return NU_OK;
}

int pg_msg_eq(struct pg_bytes b, const char *s)
{
    size_t n = strlen(s);
    return b.len == n && (n == 0 || memcmp(b.p, s, n) == 0);
}

/* ---- envelope ------------------------------------------------------------- */

static const struct pg_pb_desc msg__header[] = {
    B(1, struct pg_msg_header, message_id, MSG__KEY),
    B(2, struct pg_msg_header, sender_id, MSG__ID),
    U64(3, struct pg_msg_header, sent_at_ms),
    U64(4, struct pg_msg_header, sequence),
    B(5, struct pg_msg_header, correlation_id, MSG__KEY),
    B(6, struct pg_msg_header, idempotency_key, MSG__KEY),
    U32(7, struct pg_msg_header, protocol),
};

static int msg__header_check(const struct pg_msg_header *h)
{
    if (h->protocol != PG_MSG_PROTOCOL)
        return h->protocol == 0 ? NU_ERR_INVALID_ARG : NU_ERR_NOT_SUPPORTED;
    if (h->message_id.len != PG_MSG_MESSAGE_ID_LEN)
        return NU_ERR_INVALID_ARG;
    if (!pg_msg_id_ok(h->sender_id))
        return NU_ERR_INVALID_ARG;
    return NU_OK;
}

int pg_msg_env_decode(const uint8_t *buf, size_t len, struct pg_msg_env *out)
{
    memset(out, 0, sizeof(*out));
    if (!buf)
        return NU_ERR_INVALID_ARG;
    if (len > MSG__ENVELOPE)
        return NU_ERR_TOO_LARGE;
    struct pg_pb_reader r;
    pg_pb_reader_init(&r, buf, len);
    int have_header = 0, rc;
    struct pg_pb_field f;
    while ((rc = pg_pb_next(&r, &f)) == NU_OK) {
        if (f.num == 1) {
            if (f.wire != PG_PB_LEN || have_header)
                return NU_ERR_DECODE;
            have_header = 1;
            rc = pg_pb_decode(f.b.p, f.b.len, msg__header, PG_MSG__N(msg__header), &out->hdr);
            if (rc != NU_OK)
                return rc;
        } else if (f.num >= PG_BODY_ERROR && f.wire == PG_PB_LEN) {
            if (out->body_num)
                return NU_ERR_DECODE; /* two oneof members */
            out->body_num = f.num;
            out->body = f.b;
        }
    }
    if (rc != NU_ERR_NOT_FOUND)
        return rc;
    if (!have_header || !out->body_num)
        return NU_ERR_INVALID_ARG;
    return msg__header_check(&out->hdr);
}

static const struct pg_pb_desc msg__error[] = {
    U32(1, struct pg_msg_error, code),
    B(2, struct pg_msg_error, detail, MSG__TEXT),
    B(3, struct pg_msg_error, op, MSG__ID),
};

int pg_msg_error_decode(struct pg_bytes b, struct pg_msg_error *out)
{
    memset(out, 0, sizeof(*out));
    return pg_pb_decode(b.p, b.len, msg__error, PG_MSG__N(msg__error), out);
}

/* A remote code we act on; unknown or "OK" errors become INTERNAL. */
static int msg__remote_code(uint32_t code)
{
    return code > NU_OK && code <= NU_ERR_LEASE_OVERCOMMIT ? (int)code : NU_ERR_INTERNAL;
}

int pg_msg_reply_decode(const uint8_t *buf, size_t len, enum pg_body want, struct pg_msg_env *env,
                        struct pg_msg_error *out_error)
{
    struct pg_msg_error e;
    struct pg_msg_error *err = out_error ? out_error : &e;
    memset(err, 0, sizeof(*err));
    int rc = pg_msg_env_decode(buf, len, env);
    if (rc != NU_OK)
        return rc;
    if (env->body_num == PG_BODY_ERROR) {
        rc = pg_msg_error_decode(env->body, err);
        return rc != NU_OK ? rc : msg__remote_code(err->code);
    }
    return env->body_num == (uint32_t)want ? NU_OK : NU_ERR_DECODE;
}

/* ---- bodies ------------------------------------------------------------------ */

static const struct pg_pb_desc msg__cert_issued[] = {
    B(1, struct pg_msg_cert_issued, job_id, MSG__ID),
    B(2, struct pg_msg_cert_issued, device_uid, MSG__UID),
    B(3, struct pg_msg_cert_issued, certificate, MSG__CERT),
    B(4, struct pg_msg_cert_issued, serial, MSG__ID),
    U32(5, struct pg_msg_cert_issued, issued),
    U32(6, struct pg_msg_cert_issued, quota),
};

static const struct pg_pb_desc msg__cert_refused[] = {
    B(1, struct pg_msg_cert_refused, job_id, MSG__ID),
    B(2, struct pg_msg_cert_refused, device_uid, MSG__UID),
    B(3, struct pg_msg_cert_refused, error, MSG__TEXT + 128),
};

static const struct pg_pb_desc msg__manifest[] = {
    B(1, struct pg_msg_manifest, job_id, MSG__ID),
    B(2, struct pg_msg_manifest, image_name, MSG__ID),
    U32(3, struct pg_msg_manifest, size),
    U32(4, struct pg_msg_manifest, chunk_size),
    U32(5, struct pg_msg_manifest, chunk_count),
    B(6, struct pg_msg_manifest, image_digest, MSG__DIGEST),
};

static const struct pg_pb_desc msg__chunk[] = {
    B(1, struct pg_msg_chunk, job_id, MSG__ID),
    U32(2, struct pg_msg_chunk, index),
    U32(3, struct pg_msg_chunk, offset),
    B(4, struct pg_msg_chunk, nonce, MSG__KEY),
    B(5, struct pg_msg_chunk, ciphertext, MSG__CHUNK),
};

static const struct pg_pb_desc msg__enroll_resp[] = {
    B(1, struct pg_msg_enroll_resp, programmer_id, MSG__ID),
    B(2, struct pg_msg_enroll_resp, certificate, MSG__CERT),
    REP(3, struct pg_msg_enroll_resp, chain, MSG__CERT, n_chain),
    B(4, struct pg_msg_enroll_resp, package_signing_pubkey, MSG__PUB),
    B(5, struct pg_msg_enroll_resp, rotpk, MSG__PUB),
};

static const struct pg_pb_desc msg__enroll_challenge[] = {
    B(1, struct pg_msg_enroll_challenge, programmer_id, MSG__ID),
    B(2, struct pg_msg_enroll_challenge, nonce, MSG__KEY),
    U64(3, struct pg_msg_enroll_challenge, expires_at_ms),
};

static const struct pg_pb_desc msg__delivery[] = {
    B(1, struct pg_msg_delivery, sealed_package, MSG__PACKAGE),
};

static const struct pg_pb_desc msg__command[] = {
    B(1, struct pg_msg_command, job_id, MSG__ID),
    U32(2, struct pg_msg_command, action),
};

static const struct pg_pb_desc msg__sealed_pkg[] = {
    B(1, struct pg_msg_sealed_pkg, summary, MSG__PACKAGE),
    B(2, struct pg_msg_sealed_pkg, sealed, MSG__PACKAGE),
    B(3, struct pg_msg_sealed_pkg, signature, 72),
};

static const struct pg_pb_desc msg__summary[] = {
    B(1, struct pg_msg_summary, job_id, MSG__ID),
    B(2, struct pg_msg_summary, programmer_id, MSG__ID),
    U32(3, struct pg_msg_summary, limit),
    U64(4, struct pg_msg_summary, expires_at_ms),
    U64(5, struct pg_msg_summary, created_at_ms),
    B(6, struct pg_msg_summary, firmware, MSG__ID),
    U32(7, struct pg_msg_summary, format),
    B(8, struct pg_msg_summary, package_id, MSG__KEY),
};

static const struct pg_pb_desc msg__secrets[] = {
    B(1, struct pg_msg_secrets, job_id, MSG__ID),
    U32(2, struct pg_msg_secrets, limit),
    B(3, struct pg_msg_secrets, token, MSG__TOKEN),
    B(4, struct pg_msg_secrets, firmware_key, MSG__KEY),
    B(5, struct pg_msg_secrets, rotpk_hash, MSG__DIGEST),
    REP(6, struct pg_msg_secrets, chain, MSG__CERT, n_chain),
    U64(7, struct pg_msg_secrets, expires_at_ms),
    B(8, struct pg_msg_secrets, firmware_digest, MSG__DIGEST),
    U32(9, struct pg_msg_secrets, firmware_size),
    B(10, struct pg_msg_secrets, subject_template, MSG__TEXT),
};

#define MSG__DECODER(name, type, table)                                                            \
    int name(struct pg_bytes b, type *out)                                                         \
    {                                                                                              \
        memset(out, 0, sizeof(*out));                                                              \
        return pg_pb_decode(b.p, b.len, table, PG_MSG__N(table), out);                             \
    }

MSG__DECODER(pg_msg_cert_issued_decode, struct pg_msg_cert_issued, msg__cert_issued)
MSG__DECODER(pg_msg_cert_refused_decode, struct pg_msg_cert_refused, msg__cert_refused)
MSG__DECODER(pg_msg_manifest_decode, struct pg_msg_manifest, msg__manifest)
MSG__DECODER(pg_msg_chunk_decode, struct pg_msg_chunk, msg__chunk)
MSG__DECODER(pg_msg_enroll_resp_decode, struct pg_msg_enroll_resp, msg__enroll_resp)
MSG__DECODER(pg_msg_enroll_challenge_decode, struct pg_msg_enroll_challenge, msg__enroll_challenge)
MSG__DECODER(pg_msg_delivery_decode, struct pg_msg_delivery, msg__delivery)
MSG__DECODER(pg_msg_command_decode, struct pg_msg_command, msg__command)
MSG__DECODER(pg_msg_sealed_pkg_decode, struct pg_msg_sealed_pkg, msg__sealed_pkg)
MSG__DECODER(pg_msg_summary_decode, struct pg_msg_summary, msg__summary)
MSG__DECODER(pg_msg_secrets_decode, struct pg_msg_secrets, msg__secrets)

/* ---- encoding ------------------------------------------------------------------ */

void pg_msg_put_header(struct pg_pb_writer *w, const struct pg_msg_hdr_out *h)
{
    size_t m = pg_pb_begin(w, 1);
    pg_pb_put_bytes(w, 1, h->message_id, PG_MSG_MESSAGE_ID_LEN);
    pg_pb_put_str(w, 2, h->sender_id);
    pg_pb_put_u64(w, 3, h->sent_at_ms);
    pg_pb_put_u64(w, 4, h->sequence);
    if (h->idempotency_key)
        pg_pb_put_bytes(w, 6, h->idempotency_key, h->idempotency_key_len);
    pg_pb_put_u64(w, 7, PG_MSG_PROTOCOL);
    pg_pb_end(w, m);
}

void pg_msg_put_manifest_req(struct pg_pb_writer *w, const char *job_id, const uint8_t *token,
                             size_t token_len)
{
    size_t m = pg_pb_begin(w, PG_BODY_MANIFEST_REQUEST);
    pg_pb_put_str(w, 1, job_id);
    pg_pb_put_bytes(w, 2, token, token_len);
    pg_pb_end(w, m);
}

void pg_msg_put_chunk_req(struct pg_pb_writer *w, const char *job_id, const uint8_t *token,
                          size_t token_len, uint32_t index)
{
    size_t m = pg_pb_begin(w, PG_BODY_CHUNK_REQUEST);
    pg_pb_put_str(w, 1, job_id);
    pg_pb_put_bytes(w, 2, token, token_len);
    pg_pb_put_u64(w, 3, index);
    pg_pb_end(w, m);
}

void pg_msg_put_cert_req(struct pg_pb_writer *w, const struct pg_msg_cert_req_out *r)
{
    size_t m = pg_pb_begin(w, PG_BODY_CERT_REQUEST);
    pg_pb_put_str(w, 1, r->job_id);
    pg_pb_put_bytes(w, 2, r->uid, r->uid_len);
    pg_pb_put_bytes(w, 3, r->csr, r->csr_len);
    pg_pb_put_u64(w, 4, r->socket);
    pg_pb_put_u64(w, 5, r->counter);
    pg_pb_end(w, m);
}

void pg_msg_put_enroll_req(struct pg_pb_writer *w, const struct pg_msg_enroll_req_out *r)
{
    size_t m = pg_pb_begin(w, PG_BODY_ENROLL_REQUEST);
    pg_pb_put_str(w, 1, r->programmer_id);
    pg_pb_put_str(w, 2, r->token);
    pg_pb_put_bytes(w, 3, r->csr, r->csr_len);
    pg_pb_put_bytes(w, 4, r->package_pubkey, r->package_pubkey ? 65 : 0);
    pg_pb_put_bytes(w, 5, r->firmware_hash, r->firmware_hash ? 32 : 0);
    if (r->attestation) {
        pg_pb_put_bytes(w, 6, r->attestation->stmt, r->attestation->stmt_len);
        pg_pb_put_bytes(w, 7, r->attestation->sig, r->attestation->sig_len);
        pg_pb_put_bytes(w, 8, r->attestation->cert, r->attestation->cert_len);
    }
    pg_pb_put_bytes(w, 9, r->boot_manifest, r->boot_manifest_len);
    pg_pb_end(w, m);
}

void pg_msg_put_enroll_challenge_req(struct pg_pb_writer *w, const char *programmer_id,
                                     const char *token)
{
    size_t m = pg_pb_begin(w, PG_BODY_ENROLL_CHALLENGE_REQUEST);
    pg_pb_put_str(w, 1, programmer_id);
    pg_pb_put_str(w, 2, token);
    pg_pb_end(w, m);
}

void pg_msg_put_device_event(struct pg_pb_writer *w, const char *kind,
                             const struct pg_msg_report_out *r)
{
    size_t m = pg_pb_begin(w, PG_BODY_EVENT);
    pg_pb_put_str(w, 1, kind);
    pg_pb_put_str(w, 2, r->job_id);
    pg_pb_put_u64(w, 3, (uint64_t)(r->error > 0 ? r->error : 0));
    pg_pb_put_str(w, 4, r->detail);
    size_t d = pg_pb_begin(w, 10);
    pg_pb_put_str(w, 1, r->job_id);
    pg_pb_put_bytes(w, 2, r->uid, r->uid_len);
    pg_pb_put_u64(w, 3, r->socket);
    pg_pb_put_u64(w, 4, (uint64_t)r->outcome);
    pg_pb_put_str(w, 5, r->serial);
    pg_pb_put_u64(w, 6, (uint64_t)(r->error > 0 ? r->error : 0));
    pg_pb_put_str(w, 7, r->detail);
    pg_pb_put_u64(w, 8, r->duration_ms);
    pg_pb_end(w, d);
    pg_pb_end(w, m);
}

void pg_msg_put_status(struct pg_pb_writer *w, const struct pg_msg_status_out *s)
{
    size_t m = pg_pb_begin(w, PG_BODY_PROGRAMMER_STATUS);
    pg_pb_put_str(w, 1, s->programmer_id);
    pg_pb_put_u64(w, 2, (uint64_t)s->state);
    pg_pb_put_str(w, 3, s->job_id);
    pg_pb_put_u64(w, 4, s->limit);
    pg_pb_put_u64(w, 5, s->counter);
    for (size_t i = 0; i < s->n_sockets; i++) {
        size_t k = pg_pb_begin(w, 6);
        pg_pb_put_u64(w, 1, s->sockets[i].socket);
        pg_pb_put_u64(w, 2, s->sockets[i].done);
        pg_pb_put_u64(w, 3, s->sockets[i].failed);
        pg_pb_put_str(w, 4, s->sockets[i].state);
        pg_pb_end(w, k);
    }
    pg_pb_put_str(w, 7, s->firmware_version);
    pg_pb_put_u64(w, 8, s->cloud_lost_ms);
    pg_pb_end(w, m);
}
