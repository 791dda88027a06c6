/*
 * fuzz_pg_pb — libFuzzer target for the programmer core's own protobuf
 * codec (programmer-fw/core/pg_pb.c) and the message decoders on it
 * (pg_msg.c): everything the NuLink3 reads from the bus without protobuf-c.
 *
 * Input: byte 0 selects a decoder (mod 14), the rest is its input.
 *
 * Properties:
 *   - typed errors only; every decoded span lies inside the input;
 *   - the field walk (pg_pb_next) terminates, and its varint and
 *     length-delimited fields written again with the pg_pb writer walk back
 *     to the same fields (writer/reader round trip);
 *   - an envelope the core accepts has a 16-byte message id, protocol 1, a
 *     valid sender id and a body inside the input;
 *   - differential: an envelope the cloud's own codec (nu_envelope,
 *     protobuf-c) accepts and packs again (without unknown fields) is
 *     accepted by the core, with the same body field.
 */
#include "fuzz_common.h"
#include "nu_envelope.h"
#include "pg_msg.h"

#include <string.h>

static const uint8_t *in_base;
static size_t in_size;

static void fuzz__span(struct pg_bytes b, const char *what)
{
    if (!fuzz_inside(b.p, b.len, in_base, in_size))
        FUZZ_DIE("%s outside the input", what);
}

#define MAX_FIELDS 256

static size_t fuzz__walk(const uint8_t *d, size_t n, struct pg_pb_field *f, size_t cap, int *rc)
{
    struct pg_pb_reader r;
    size_t k = 0;
    pg_pb_reader_init(&r, d, n);
    struct pg_pb_field x;
    while ((*rc = pg_pb_next(&r, &x)) == NU_OK) {
        if (x.num < 1 || x.num > 0x1fffffff)
            FUZZ_DIE("field number %u", (unsigned)x.num);
        if (x.wire == PG_PB_LEN && !fuzz_inside(x.b.p, x.b.len, d, n))
            FUZZ_DIE("LEN field outside its buffer");
        if (k < cap)
            f[k] = x;
        k++;
    }
    return k;
}

/* Re-encode the walk's VARINT and LEN fields, walk again, compare. */
static void fuzz__roundtrip(const uint8_t *d, size_t n)
{
    static struct pg_pb_field a[MAX_FIELDS], b[MAX_FIELDS];
    static uint8_t out[8192];
    int rc = 0;
    size_t na = fuzz__walk(d, n, a, MAX_FIELDS, &rc);
    if (rc != NU_ERR_NOT_FOUND) {
        if (rc != NU_ERR_DECODE)
            FUZZ_DIE("walk: %s", nu_err_name(rc));
        return;
    }
    if (na > MAX_FIELDS)
        return;
    struct pg_pb_writer w;
    pg_pb_writer_init(&w, out, sizeof(out));
    size_t kept = 0;
    for (size_t i = 0; i < na; i++) {
        if (a[i].wire == PG_PB_VARINT && a[i].u) {
            pg_pb_put_u64(&w, a[i].num, a[i].u);
            a[kept++] = a[i];
        } else if (a[i].wire == PG_PB_LEN && a[i].b.len) {
            pg_pb_put_bytes(&w, a[i].num, a[i].b.p, a[i].b.len);
            a[kept++] = a[i];
        }
    }
    if (w.err) {
        if (w.err != NU_ERR_TOO_LARGE)
            FUZZ_DIE("writer: %s", nu_err_name(w.err));
        return;
    }
    size_t nb = fuzz__walk(out, w.len, b, MAX_FIELDS, &rc);
    if (rc != NU_ERR_NOT_FOUND || nb != kept)
        FUZZ_DIE("rewritten fields walk to %zu of %zu (%s)", nb, kept, nu_err_name(rc));
    for (size_t i = 0; i < kept; i++) {
        if (a[i].num != b[i].num || a[i].wire != b[i].wire ||
            (a[i].wire == PG_PB_VARINT && a[i].u != b[i].u) ||
            (a[i].wire == PG_PB_LEN &&
             (a[i].b.len != b[i].b.len || memcmp(a[i].b.p, b[i].b.p, a[i].b.len) != 0)))
            FUZZ_DIE("field %zu changed in the round trip", i);
    }
}

static void fuzz__env(const uint8_t *d, size_t n)
{
    struct pg_msg_env env;
    struct pg_msg_error err;
    int rc = pg_msg_env_decode(d, n, &env);
    if (rc == NU_OK) {
        if (env.hdr.message_id.len != PG_MSG_MESSAGE_ID_LEN || env.hdr.protocol != 1 ||
            !pg_msg_id_ok(env.hdr.sender_id) || env.body_num < PG_BODY_ERROR)
            FUZZ_DIE("accepted a bad header");
        fuzz__span(env.body, "body");
        fuzz__span(env.hdr.correlation_id, "correlation_id");
    }
    rc = pg_msg_reply_decode(d, n, PG_BODY_CHUNK, &env, &err);
    if (rc != NU_OK && env.body_num == PG_BODY_ERROR)
        fuzz__span(err.detail, "error detail");

    /* What the cloud's codec accepts and packs, the core must read. */
    Nusec__V1__Envelope *e = NULL;
    const char *detail = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (nu_envelope_unpack(d, n, &e, &detail) != NU_OK)
        return;
    /* protobuf-c keeps unknown fields and accepts over-long varints in
     * them, which the core refuses (it is the stricter side, and the cloud
     * never sends unknown fields): compare without them. */
    unsigned n_env = e->base.n_unknown_fields, n_hdr = e->header->base.n_unknown_fields;
    e->base.n_unknown_fields = 0;
    e->header->base.n_unknown_fields = 0;
    rc = nu_envelope_pack(e, &buf, &len, &detail);
    e->base.n_unknown_fields = n_env;
    e->header->base.n_unknown_fields = n_hdr;
    if (rc == NU_OK) {
        rc = pg_msg_env_decode(buf, len, &env);
        if (rc != NU_OK || env.body_num != (uint32_t)e->body_case)
            FUZZ_DIE("core refuses the cloud's envelope (%s %s): %s",
                     nu_envelope_body_name(e), detail ? detail : "", nu_err_name(rc));
        free(buf);
    }
    nu_envelope_free(e);
}

static void fuzz__body(unsigned which, const uint8_t *d, size_t n)
{
    struct pg_bytes b = {d, n};
    union {
        struct pg_msg_error error;
        struct pg_msg_cert_issued ci;
        struct pg_msg_cert_refused cr;
        struct pg_msg_manifest man;
        struct pg_msg_chunk ch;
        struct pg_msg_enroll_resp er;
        struct pg_msg_delivery dl;
        struct pg_msg_command cmd;
    } u;
    int rc;
    switch (which) {
    case 0:
        if ((rc = pg_msg_error_decode(b, &u.error)) == NU_OK) {
            fuzz__span(u.error.detail, "detail");
            fuzz__span(u.error.op, "op");
        }
        break;
    case 1:
        if ((rc = pg_msg_cert_issued_decode(b, &u.ci)) == NU_OK) {
            fuzz__span(u.ci.certificate, "certificate");
            fuzz__span(u.ci.serial, "serial");
        }
        break;
    case 2:
        if ((rc = pg_msg_cert_refused_decode(b, &u.cr)) == NU_OK)
            fuzz__span(u.cr.error, "error");
        break;
    case 3:
        if ((rc = pg_msg_manifest_decode(b, &u.man)) == NU_OK)
            fuzz__span(u.man.image_digest, "image_digest");
        break;
    case 4:
        if ((rc = pg_msg_chunk_decode(b, &u.ch)) == NU_OK) {
            fuzz__span(u.ch.ciphertext, "ciphertext");
            fuzz__span(u.ch.nonce, "nonce");
        }
        break;
    case 5:
        if ((rc = pg_msg_enroll_resp_decode(b, &u.er)) == NU_OK) {
            if (u.er.n_chain > PG_MSG_CHAIN_MAX)
                FUZZ_DIE("%zu chain entries", u.er.n_chain);
            for (size_t i = 0; i < u.er.n_chain; i++)
                fuzz__span(u.er.chain[i], "chain");
            fuzz__span(u.er.certificate, "certificate");
        }
        break;
    case 6:
        if ((rc = pg_msg_delivery_decode(b, &u.dl)) == NU_OK)
            fuzz__span(u.dl.sealed_package, "sealed_package");
        break;
    default:
        if ((rc = pg_msg_command_decode(b, &u.cmd)) == NU_OK)
            fuzz__span(u.cmd.job_id, "job_id");
        break;
    }
    if (rc != NU_OK && rc != NU_ERR_DECODE && rc != NU_ERR_TOO_LARGE)
        FUZZ_DIE("body decoder %u: %s", which, nu_err_name(rc));
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    in_base = data + 1;
    in_size = size - 1;
    unsigned sel = data[0] % 14;
    if (sel < 8)
        fuzz__body(sel, in_base, in_size);
    else if (sel < 11)
        fuzz__env(in_base, in_size);
    else
        fuzz__roundtrip(in_base, in_size);
    return 0;
}
