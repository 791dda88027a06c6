/* nu_envelope: roundtrips, the sender, and a decoder that refuses what it must. */
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* detail may be NULL when a check is broken: compare without crashing. */
#define ASSERT_DETAIL(d, want)                                                                     \
    do {                                                                                           \
        const char *d_ = (d);                                                                      \
        int ok_ = d_ != NULL && strcmp(d_, (want)) == 0;                                           \
        if (!ok_)                                                                                  \
            fprintf(stderr, "detail: got %s, wanted %s\n", d_ ? d_ : "(null)", (want));            \
        CU_ASSERT(ok_);                                                                            \
    } while (0)

/* ---- a tiny protobuf wire writer, to craft what our encoder never makes ---- */

struct wb {
    uint8_t *buf;
    size_t len, cap;
};

static void wb_put(struct wb *w, const void *p, size_t n)
{
    if (w->len + n > w->cap) {
        size_t cap = w->cap ? w->cap : 256;
        while (cap < w->len + n)
            cap *= 2;
        uint8_t *nb = realloc(w->buf, cap);
        CU_ASSERT_PTR_NOT_NULL_FATAL(nb);
        w->buf = nb;
        w->cap = cap;
    }
    if (n)
        memcpy(w->buf + w->len, p, n);
    w->len += n;
}

static void wb_varint(struct wb *w, uint64_t v)
{
    uint8_t b[10];
    size_t n = 0;
    do {
        b[n] = (uint8_t)(v & 0x7f);
        v >>= 7;
        if (v)
            b[n] |= 0x80;
        n++;
    } while (v);
    wb_put(w, b, n);
}

static void wb_tag(struct wb *w, uint32_t field, unsigned wt)
{
    wb_varint(w, ((uint64_t)field << 3) | wt);
}

static void wb_uint(struct wb *w, uint32_t field, uint64_t v)
{
    wb_tag(w, field, 0);
    wb_varint(w, v);
}

static void wb_bytes(struct wb *w, uint32_t field, const void *p, size_t n)
{
    wb_tag(w, field, 2);
    wb_varint(w, n);
    wb_put(w, p, n);
}

static void wb_str(struct wb *w, uint32_t field, const char *s)
{
    wb_bytes(w, field, s, strlen(s));
}

static void wb_sub(struct wb *w, uint32_t field, const struct wb *inner)
{
    wb_bytes(w, field, inner->buf, inner->len);
}

static void wb_free(struct wb *w)
{
    free(w->buf);
    memset(w, 0, sizeof(*w));
}

/* Header field numbers (envelope.proto). */
enum { H_MSGID = 1, H_SENDER = 2, H_SENT = 3, H_SEQ = 4, H_CORR = 5, H_IDEM = 6, H_PROTO = 7 };
/* Envelope body field numbers used below. */
enum {
    E_HEADER = 1,
    E_ERROR = 10,
    E_ACK = 11,
    E_EVENT = 12,
    E_JOB_STATE = 33,
    E_JOB_LIST = 35,
    E_CERT_REQ = 50,
    E_DEVICE_LIST = 55,
    E_PROG_STATUS = 62
};

/* A header on the wire with a message id of `idlen` bytes and a raw sender. */
static void wb_header_raw(struct wb *env, size_t idlen, const void *sender, size_t sender_len,
                          uint32_t protocol)
{
    struct wb h = {0};
    uint8_t id[64];
    memset(id, 0xab, sizeof(id));
    wb_bytes(&h, H_MSGID, id, idlen);
    wb_bytes(&h, H_SENDER, sender, sender_len);
    wb_uint(&h, H_SENT, 1700000000000ull);
    wb_uint(&h, H_SEQ, 7);
    if (protocol)
        wb_uint(&h, H_PROTO, protocol);
    wb_sub(env, E_HEADER, &h);
    wb_free(&h);
}

static void wb_header(struct wb *env)
{
    wb_header_raw(env, 16, "prog-1", 6, 1);
}

/* A valid CertificateRequest body. */
static void wb_cert_req(struct wb *env, size_t csr_len)
{
    struct wb b = {0};
    uint8_t *csr = calloc(1, csr_len ? csr_len : 1);
    wb_str(&b, 1, "job-1");
    wb_bytes(&b, 2, "\x01\x02\x03\x04", 4);
    wb_bytes(&b, 3, csr, csr_len);
    wb_uint(&b, 4, 3);
    wb_sub(env, E_CERT_REQ, &b);
    wb_free(&b);
    free(csr);
}

static int unpack_wb(const struct wb *w, const char **detail)
{
    Nusec__V1__Envelope *env = NULL;
    int rc = nu_envelope_unpack(w->buf, w->len, &env, detail);
    CU_ASSERT((rc == NU_OK) == (env != NULL));
    nu_envelope_free(env);
    return rc;
}

static int is_typed_refusal(int rc)
{
    return rc == NU_ERR_DECODE || rc == NU_ERR_TOO_LARGE || rc == NU_ERR_INVALID_ARG ||
           rc == NU_ERR_NOT_SUPPORTED;
}

/* ---- fixtures -------------------------------------------------------------- */

static struct nu_envelope_sender *sender;

static int setup(void)
{
    return nu_envelope_sender_create("station-7.cm_a", 1, &sender) == NU_OK ? 0 : -1;
}

static int teardown(void)
{
    nu_envelope_sender_destroy(sender);
    return 0;
}

/* Pack a frame, unpack it, and return the decoded envelope (caller frees). */
static Nusec__V1__Envelope *roundtrip(struct nu_envelope_frame *f)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *detail = NULL;
    Nusec__V1__Envelope *env = NULL;
    int rc = nu_envelope_pack(&f->env, &buf, &len, &detail);
    CU_ASSERT_EQUAL(rc, NU_OK);
    if (rc != NU_OK) {
        fprintf(stderr, "pack refused: %s (%s)\n", nu_err_name(rc), detail);
        return NULL;
    }
    rc = nu_envelope_unpack(buf, len, &env, &detail);
    CU_ASSERT_EQUAL(rc, NU_OK);
    if (rc != NU_OK)
        fprintf(stderr, "unpack refused: %s (%s)\n", nu_err_name(rc), detail);
    free(buf);
    return env;
}

/* ---- roundtrips ------------------------------------------------------------ */

static void test_roundtrip_every_header_field(void)
{
    uint8_t csr[300], uid[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    uint8_t corr[64], idem[32];
    memset(csr, 0x30, sizeof(csr));
    memset(corr, 0xc0, sizeof(corr));
    memset(idem, 0x1d, sizeof(idem));
    Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    req.job_id = "job-2026.11_a";
    req.device_uid = (ProtobufCBinaryData){sizeof(uid), uid};
    req.csr_der = (ProtobufCBinaryData){sizeof(csr), csr};
    req.socket = 5;
    req.counter = 42;

    struct nu_envelope_frame f;
    uint64_t before = nu_time_ms();
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &req.base), NU_OK);
    CU_ASSERT_EQUAL(nu_envelope_frame_set_correlation(&f, corr, sizeof(corr)), NU_OK);
    CU_ASSERT_EQUAL(nu_envelope_frame_set_idempotency_key(&f, idem, sizeof(idem)), NU_OK);

    Nusec__V1__Envelope *env = roundtrip(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    const Nusec__V1__Header *h = env->header;
    CU_ASSERT_EQUAL(h->message_id.len, NU_ENVELOPE_MESSAGE_ID_LEN);
    CU_ASSERT_EQUAL(memcmp(h->message_id.data, f.message_id, 16), 0);
    CU_ASSERT_STRING_EQUAL(h->sender_id, "station-7.cm_a");
    CU_ASSERT(h->sent_at_ms >= before && h->sent_at_ms <= nu_time_ms());
    CU_ASSERT_EQUAL(h->sequence, f.header.sequence);
    CU_ASSERT_EQUAL(h->protocol, NU_ENVELOPE_PROTOCOL);
    CU_ASSERT_EQUAL(h->correlation_id.len, sizeof(corr));
    CU_ASSERT_EQUAL(memcmp(h->correlation_id.data, corr, sizeof(corr)), 0);
    CU_ASSERT_EQUAL(h->idempotency_key.len, sizeof(idem));
    CU_ASSERT_EQUAL(memcmp(h->idempotency_key.data, idem, sizeof(idem)), 0);

    CU_ASSERT_EQUAL(env->body_case, NUSEC__V1__ENVELOPE__BODY_CERTIFICATE_REQUEST);
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(env), "certificate_request");
    const Nusec__V1__CertificateRequest *r = env->certificate_request;
    CU_ASSERT_STRING_EQUAL(r->job_id, "job-2026.11_a");
    CU_ASSERT_EQUAL(r->device_uid.len, sizeof(uid));
    CU_ASSERT_EQUAL(memcmp(r->device_uid.data, uid, sizeof(uid)), 0);
    CU_ASSERT_EQUAL(r->csr_der.len, sizeof(csr));
    CU_ASSERT_EQUAL(memcmp(r->csr_der.data, csr, sizeof(csr)), 0);
    CU_ASSERT_EQUAL(r->socket, 5);
    CU_ASSERT_EQUAL(r->counter, 42);
    CU_ASSERT_PTR_EQUAL(nu_envelope_body(env), &env->certificate_request->base);
    nu_envelope_free(env);
}

static void test_roundtrip_firmware_chunk_at_limit(void)
{
    static uint8_t ct[NU_ENVELOPE_CHUNK_MAX];
    uint8_t nonce[12] = {9};
    for (size_t i = 0; i < sizeof(ct); i++)
        ct[i] = (uint8_t)(i * 7);
    Nusec__V1__FirmwareChunk c = NUSEC__V1__FIRMWARE_CHUNK__INIT;
    c.job_id = "J1";
    c.index = 3;
    c.offset = 3 * 16384;
    c.nonce = (ProtobufCBinaryData){sizeof(nonce), nonce};
    c.ciphertext = (ProtobufCBinaryData){sizeof(ct), ct};
    struct nu_envelope_frame f;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &c.base), NU_OK);
    Nusec__V1__Envelope *env = roundtrip(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(env), "firmware_chunk");
    CU_ASSERT_EQUAL(env->firmware_chunk->ciphertext.len, sizeof(ct));
    CU_ASSERT_EQUAL(memcmp(env->firmware_chunk->ciphertext.data, ct, sizeof(ct)), 0);
    CU_ASSERT_EQUAL(env->firmware_chunk->offset, 3 * 16384);
    nu_envelope_free(env);
}

/* The deepest path of the schema: Envelope > Event > JobState > ProgrammerAllocation. */
static void test_roundtrip_event_job_state_deepest_path(void)
{
    Nusec__V1__ProgrammerAllocation a1 = NUSEC__V1__PROGRAMMER_ALLOCATION__INIT;
    Nusec__V1__ProgrammerAllocation a2 = NUSEC__V1__PROGRAMMER_ALLOCATION__INIT;
    a1.programmer_id = "nulink-1";
    a1.limit = 100;
    a2.programmer_id = "nulink-2";
    a2.limit = 50;
    Nusec__V1__ProgrammerAllocation *allocs[] = {&a1, &a2};
    uint32_t issued[] = {17, 3};
    Nusec__V1__JobState js = NUSEC__V1__JOB_STATE__INIT;
    js.job_id = "job-9";
    js.status = NUSEC__V1__JOB_STATUS__JOB_STATUS_ACTIVE;
    js.quota = 150;
    js.issued = 20;
    js.firmware = "blinky-1.2.3";
    js.n_allocations = 2;
    js.allocations = allocs;
    js.n_issued_per_programmer = 2;
    js.issued_per_programmer = issued;
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = "job.updated";
    ev.job_id = "job-9";
    ev.detail = "quota 20/150 — ok"; /* UTF-8 free text */
    ev.data_case = NUSEC__V1__EVENT__DATA_JOB;
    ev.job = &js;

    struct nu_envelope_frame f;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &ev.base), NU_OK);
    Nusec__V1__Envelope *env = roundtrip(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(env), "event");
    const Nusec__V1__Event *e = env->event;
    CU_ASSERT_STRING_EQUAL(e->detail, "quota 20/150 — ok");
    CU_ASSERT_EQUAL_FATAL(e->data_case, NUSEC__V1__EVENT__DATA_JOB);
    CU_ASSERT_EQUAL_FATAL(e->job->n_allocations, 2);
    CU_ASSERT_STRING_EQUAL(e->job->allocations[1]->programmer_id, "nulink-2");
    CU_ASSERT_EQUAL(e->job->allocations[1]->limit, 50);
    CU_ASSERT_EQUAL_FATAL(e->job->n_issued_per_programmer, 2);
    CU_ASSERT_EQUAL(e->job->issued_per_programmer[0], 17);
    nu_envelope_free(env);
}

static void test_roundtrip_lists_error_and_status(void)
{
    /* EnrollResponse with a chain (repeated bytes). */
    uint8_t cert[700], ca1[500], ca2[400], pub[65];
    memset(cert, 1, sizeof(cert));
    memset(ca1, 2, sizeof(ca1));
    memset(ca2, 3, sizeof(ca2));
    memset(pub, 4, sizeof(pub));
    ProtobufCBinaryData chain[] = {{sizeof(ca1), ca1}, {sizeof(ca2), ca2}};
    Nusec__V1__EnrollResponse er = NUSEC__V1__ENROLL_RESPONSE__INIT;
    er.programmer_id = "nulink-1";
    er.certificate_der = (ProtobufCBinaryData){sizeof(cert), cert};
    er.n_chain_der = 2;
    er.chain_der = chain;
    er.package_signing_pubkey = (ProtobufCBinaryData){sizeof(pub), pub};
    struct nu_envelope_frame f;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &er.base), NU_OK);
    Nusec__V1__Envelope *env = roundtrip(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_EQUAL_FATAL(env->enroll_response->n_chain_der, 2);
    CU_ASSERT_EQUAL(env->enroll_response->chain_der[1].len, sizeof(ca2));
    nu_envelope_free(env);

    /* Error answering a request: correlation from the request's message id. */
    Nusec__V1__Error err = NUSEC__V1__ERROR__INIT;
    err.code = NUSEC__V1__ERROR_CODE__ERROR_CODE_QUOTA_EXHAUSTED;
    err.detail = "quota exhausted";
    err.op = "cert.request";
    Nusec__V1__Envelope req = NUSEC__V1__ENVELOPE__INIT;
    Nusec__V1__Header rh = NUSEC__V1__HEADER__INIT;
    uint8_t rid[16] = {0xde, 0xad};
    rh.message_id = (ProtobufCBinaryData){16, rid};
    req.header = &rh;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &err.base), NU_OK);
    CU_ASSERT_EQUAL(nu_envelope_frame_reply_to(&f, &req), NU_OK);
    env = roundtrip(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(env), "error");
    CU_ASSERT_EQUAL(env->error->code, NUSEC__V1__ERROR_CODE__ERROR_CODE_QUOTA_EXHAUSTED);
    CU_ASSERT_EQUAL_FATAL(env->header->correlation_id.len, 16);
    CU_ASSERT_EQUAL(memcmp(env->header->correlation_id.data, rid, 16), 0);
    nu_envelope_free(env);

    /* ... and from the request's correlation id when it has one. */
    uint8_t rc_id[5] = {1, 2, 3, 4, 5};
    rh.correlation_id = (ProtobufCBinaryData){5, rc_id};
    CU_ASSERT_EQUAL(nu_envelope_frame_reply_to(&f, &req), NU_OK);
    CU_ASSERT_EQUAL(f.header.correlation_id.len, 5);
    CU_ASSERT_PTR_EQUAL(f.header.correlation_id.data, rc_id);

    /* ProgrammerStatus with sockets. */
    Nusec__V1__SocketStatus s0 = NUSEC__V1__SOCKET_STATUS__INIT, s1 = s0;
    s0.socket = 0;
    s0.done = 10;
    s0.state = "idle";
    s1.socket = 1;
    s1.failed = 1;
    s1.state = "programming";
    Nusec__V1__SocketStatus *socks[] = {&s0, &s1};
    Nusec__V1__ProgrammerStatus ps = NUSEC__V1__PROGRAMMER_STATUS__INIT;
    ps.programmer_id = "nulink-1";
    ps.state = NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING;
    ps.n_sockets = 2;
    ps.sockets = socks;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &ps.base), NU_OK);
    env = roundtrip(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_EQUAL_FATAL(env->programmer_status->n_sockets, 2);
    CU_ASSERT_STRING_EQUAL(env->programmer_status->sockets[1]->state, "programming");
    nu_envelope_free(env);

    /* Empty-bodied request types are valid bodies. */
    Nusec__V1__FirmwareListRequest fl = NUSEC__V1__FIRMWARE_LIST_REQUEST__INIT;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &fl.base), NU_OK);
    env = roundtrip(&f);
    CU_ASSERT_PTR_NOT_NULL_FATAL(env);
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(env), "firmware_list_request");
    nu_envelope_free(env);
}

/* ---- body helpers and the schema ------------------------------------------ */

static void test_set_body_covers_every_oneof_member(void)
{
    const ProtobufCMessageDescriptor *d = &nusec__v1__envelope__descriptor;
    unsigned members = 0;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
            continue;
        members++;
        /* set_body picks the member by type, so each type must appear once. */
        for (unsigned j = i + 1; j < d->n_fields; j++)
            CU_ASSERT(!(d->fields[j].flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ||
                      d->fields[j].descriptor != f->descriptor);
        const ProtobufCMessageDescriptor *md = f->descriptor;
        ProtobufCMessage *body = calloc(1, md->sizeof_message);
        CU_ASSERT_PTR_NOT_NULL_FATAL(body);
        protobuf_c_message_init(md, body);
        Nusec__V1__Envelope env = NUSEC__V1__ENVELOPE__INIT;
        CU_ASSERT_EQUAL(nu_envelope_set_body(&env, body), NU_OK);
        CU_ASSERT_EQUAL(env.body_case, f->id);
        CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(&env), f->name);
        CU_ASSERT_PTR_EQUAL(nu_envelope_body(&env), body);
        free(body);
    }
    CU_ASSERT_EQUAL(members, 42);

    Nusec__V1__Envelope env = NUSEC__V1__ENVELOPE__INIT;
    Nusec__V1__Header h = NUSEC__V1__HEADER__INIT;
    CU_ASSERT_EQUAL(nu_envelope_set_body(&env, &h.base), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_set_body(&env, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(&env), "none");
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(NULL), "none");
    CU_ASSERT_PTR_NULL(nu_envelope_body(&env));
    env.body_case = (Nusec__V1__Envelope__BodyCase)99;
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(&env), "unknown");
    CU_ASSERT_PTR_NULL(nu_envelope_body(&env));
}

/* Longest chain of message fields from d; -1 if the schema recurses. */
static int schema_depth(const ProtobufCMessageDescriptor *d,
                        const ProtobufCMessageDescriptor **path, int level)
{
    int best = level + 1;
    for (int i = 0; i < level; i++) {
        if (path[i] == d)
            return -1;
    }
    path[level] = d;
    for (unsigned i = 0; i < d->n_fields; i++) {
        if (d->fields[i].type != PROTOBUF_C_TYPE_MESSAGE)
            continue;
        int sub = schema_depth(d->fields[i].descriptor, path, level + 1);
        if (sub < 0)
            return -1;
        if (sub > best)
            best = sub;
    }
    return best;
}

static void check_limits_cover(const ProtobufCMessageDescriptor *d, unsigned *checked)
{
    CU_ASSERT(d->n_fields <= 64); /* the pre-scan keeps 64 counters per message */
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        int repeated = f->label == PROTOBUF_C_LABEL_REPEATED;
        if (f->type == PROTOBUF_C_TYPE_MESSAGE)
            check_limits_cover(f->descriptor, checked);
        if (!repeated && f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_BYTES)
            continue;
        size_t max_len = 0, max_count = 0;
        int rc = nu_envelope_field_limit(d, f->name, &max_len, &max_count);
        if (rc != NU_OK)
            fprintf(stderr, "no limit for %s.%s\n", d->short_name, f->name);
        CU_ASSERT_EQUAL(rc, NU_OK);
        if (repeated)
            CU_ASSERT(max_count > 0);
        if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_BYTES)
            CU_ASSERT(max_len > 0 && max_len <= NU_ENVELOPE_MAX);
        (*checked)++;
    }
}

static void test_schema_is_bounded_and_fully_limited(void)
{
    const ProtobufCMessageDescriptor *path[32];
    int depth = schema_depth(&nusec__v1__envelope__descriptor, path, 0);
    CU_ASSERT(depth > 0); /* no recursive message */
    CU_ASSERT_EQUAL(depth, 4);
    CU_ASSERT(depth <= (int)NU_ENVELOPE_MAX_DEPTH);

    unsigned checked = 0;
    check_limits_cover(&nusec__v1__envelope__descriptor, &checked);
    CU_ASSERT(checked >= 80);

    size_t len = 0, count = 0;
    CU_ASSERT_EQUAL(nu_envelope_field_limit(&nusec__v1__certificate_request__descriptor, "csr_der",
                                            &len, &count),
                    NU_OK);
    CU_ASSERT_EQUAL(len, NU_ENVELOPE_CSR_MAX);
    CU_ASSERT_EQUAL(count, 0);
    CU_ASSERT_EQUAL(
        nu_envelope_field_limit(&nusec__v1__device_list__descriptor, "devices", &len, &count),
        NU_OK);
    CU_ASSERT_EQUAL(count, NU_ENVELOPE_LIST_MAX);
    CU_ASSERT_EQUAL(nu_envelope_field_limit(&nusec__v1__header__descriptor, "sequence", NULL, NULL),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(nu_envelope_field_limit(NULL, "x", NULL, NULL), NU_ERR_INVALID_ARG);
}

/* ---- sender ---------------------------------------------------------------- */

struct seq_job {
    uint64_t *out;
    size_t n;
};

static void *seq_worker(void *arg)
{
    struct seq_job *j = arg;
    for (size_t i = 0; i < j->n; i++) {
        Nusec__V1__Header h;
        uint8_t id[NU_ENVELOPE_MESSAGE_ID_LEN];
        if (nu_envelope_sender_fill_header(sender, &h, id) != NU_OK)
            return NULL;
        j->out[i] = h.sequence;
    }
    return arg;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void test_sender_sequence_is_atomic_and_monotonic(void)
{
    enum { THREADS = 4, EACH = 2000 };
    uint64_t *all = calloc(THREADS * EACH, sizeof(uint64_t));
    CU_ASSERT_PTR_NOT_NULL_FATAL(all);
    pthread_t t[THREADS];
    struct seq_job jobs[THREADS];
    Nusec__V1__Header h;
    uint8_t id[16];
    CU_ASSERT_EQUAL_FATAL(nu_envelope_sender_fill_header(sender, &h, id), NU_OK);
    uint64_t start = h.sequence;
    for (int i = 0; i < THREADS; i++) {
        jobs[i] = (struct seq_job){all + i * EACH, EACH};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, seq_worker, &jobs[i]), 0);
    }
    for (int i = 0; i < THREADS; i++) {
        void *res = NULL;
        pthread_join(t[i], &res);
        CU_ASSERT_PTR_NOT_NULL(res);
        for (size_t k = 1; k < EACH; k++) /* increasing within each thread */
            CU_ASSERT(jobs[i].out[k] > jobs[i].out[k - 1]);
    }
    qsort(all, THREADS * EACH, sizeof(uint64_t), cmp_u64);
    for (size_t k = 0; k < THREADS * EACH; k++) /* no duplicate, no gap */
        CU_ASSERT_EQUAL(all[k], start + 1 + k);
    free(all);

    /* Fresh random message ids, full header. */
    Nusec__V1__Header h2;
    uint8_t id2[16];
    CU_ASSERT_EQUAL(nu_envelope_sender_fill_header(sender, &h2, id2), NU_OK);
    CU_ASSERT_NOT_EQUAL(memcmp(id, id2, 16), 0);
    CU_ASSERT_PTR_EQUAL(h2.message_id.data, id2);
    CU_ASSERT_EQUAL(h2.protocol, NU_ENVELOPE_PROTOCOL);
    CU_ASSERT_STRING_EQUAL(h2.sender_id, nu_envelope_sender_id(sender));
    CU_ASSERT_EQUAL(h2.correlation_id.len, 0);
    CU_ASSERT_EQUAL(h2.idempotency_key.len, 0);
}

static void test_sender_create_checks_id_and_seeds_from_clock(void)
{
    struct nu_envelope_sender *s = NULL;
    char long_id[NU_ENVELOPE_ID_MAX + 2];
    memset(long_id, 'a', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = '\0';
    CU_ASSERT_EQUAL(nu_envelope_sender_create("a/b", 1, &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_sender_create("", 1, &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_sender_create(NULL, 1, &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_sender_create(long_id, 1, &s), NU_ERR_TOO_LARGE);
    CU_ASSERT_PTR_NULL(s);

    uint64_t before = nu_time_ms() * 1000u;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_sender_create("cloud-1", NU_ENVELOPE_SEQ_FROM_CLOCK, &s),
                          NU_OK);
    Nusec__V1__Header h;
    uint8_t id[16];
    CU_ASSERT_EQUAL(nu_envelope_sender_fill_header(s, &h, id), NU_OK);
    CU_ASSERT(h.sequence >= before && h.sequence <= nu_time_ms() * 1000u);
    nu_envelope_sender_destroy(s);
    nu_envelope_sender_destroy(NULL);

    struct nu_envelope_frame f;
    uint8_t big[NU_ENVELOPE_KEY_MAX + 1] = {0};
    CU_ASSERT_EQUAL(nu_envelope_frame_init(&f, NULL, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_frame_init(&f, sender, NULL), NU_OK);
    CU_ASSERT_EQUAL(nu_envelope_frame_set_idempotency_key(&f, big, sizeof(big)), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(nu_envelope_frame_set_correlation(&f, NULL, 3), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_frame_set_correlation(&f, NULL, 0), NU_OK);
}

static void test_id_check_and_text_sanitize(void)
{
    CU_ASSERT_EQUAL(nu_envelope_id_check("Prog_1.a-b"), NU_OK);
    CU_ASSERT_EQUAL(nu_envelope_id_check("a+b"), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_id_check("a#"), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_id_check("é"), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_id_check(""), NU_ERR_INVALID_ARG);

    char t1[] = "line1\nline2\x1b[31m \xc3\xa9 \xff\xfe end \xc2\x9b";
    nu_envelope_text_sanitize(t1);
    CU_ASSERT_STRING_EQUAL(t1, "line1?line2?[31m \xc3\xa9 ?? end ?");
    char *t2 = malloc(3000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t2);
    for (int i = 0; i < 1000; i++)
        memcpy(t2 + 2 * i, "\xc3\xa9", 2); /* 2000 bytes of 'é' */
    t2[2000] = '\0';
    nu_envelope_text_sanitize(t2);
    CU_ASSERT_EQUAL(strlen(t2), NU_ENVELOPE_TEXT_MAX); /* cut on a character boundary */
    Nusec__V1__Ack ack = NUSEC__V1__ACK__INIT;
    ack.detail = t2;
    struct nu_envelope_frame f;
    CU_ASSERT_EQUAL(nu_envelope_frame_init(&f, sender, &ack.base), NU_OK);
    CU_ASSERT_EQUAL(nu_envelope_validate(&f.env, NULL), NU_OK);
    free(t2);
    nu_envelope_text_sanitize(NULL);
}

/* ---- pack refuses what unpack refuses -------------------------------------- */

static int pack_rc(const Nusec__V1__Envelope *env, const char **detail)
{
    uint8_t *buf = (uint8_t *)1;
    size_t len = 1;
    int rc = nu_envelope_pack(env, &buf, &len, detail);
    if (rc == NU_OK)
        free(buf);
    else
        CU_ASSERT(buf == NULL && len == 0);
    return rc;
}

static void test_pack_refuses_invalid(void)
{
    const char *detail = NULL;
    uint8_t csr[NU_ENVELOPE_CSR_MAX + 1] = {0}, uid[4] = {1};
    Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    req.job_id = "job-1";
    req.device_uid = (ProtobufCBinaryData){4, uid};
    req.csr_der = (ProtobufCBinaryData){100, csr};
    struct nu_envelope_frame f;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &req.base), NU_OK);
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_OK);
    CU_ASSERT_PTR_NULL(detail);

    req.csr_der.len = sizeof(csr);
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "CertificateRequest.csr_der");
    req.csr_der.len = 100;

    req.job_id = "job/1";
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "CertificateRequest.job_id");
    req.job_id = NULL; /* NULL string reads as empty: a required id is missing */
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    req.job_id = "job-1";

    req.device_uid.data = NULL; /* len 4, no data */
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "CertificateRequest.device_uid");
    req.device_uid.data = uid;

    f.header.sender_id = "bad#id";
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "Header.sender_id");
    f.header.sender_id = (char *)nu_envelope_sender_id(sender);

    f.header.message_id.len = 15;
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "Header.message_id");
    f.header.message_id.len = 16;

    f.header.protocol = 2;
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_NOT_SUPPORTED);
    f.header.protocol = 1;

    f.env.header = NULL;
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "Envelope.header");
    f.env.header = (Nusec__V1__Header *)(void *)&req; /* wrong message type */
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    f.env.header = &f.header;

    f.env.certificate_request = NULL; /* case set, member absent */
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "Envelope.body");
    f.env.body_case = NUSEC__V1__ENVELOPE__BODY__NOT_SET;
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);

    /* An event whose oneof says "job" but carries none. */
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = "job.updated";
    ev.data_case = NUSEC__V1__EVENT__DATA_JOB;
    CU_ASSERT_EQUAL(nu_envelope_set_body(&f.env, &ev.base), NU_OK);
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ev.data_case = NUSEC__V1__EVENT__DATA__NOT_SET;
    ev.detail = "bell\a";
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "Event.detail");
    ev.detail = "\xc0\xaf overlong slash";
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ev.detail = "\xed\xa0\x80 surrogate";
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    ev.detail = "ok \xf0\x9f\x94\x92";
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_OK);

    /* Too many list elements, and a NULL element. */
    static Nusec__V1__DeviceCertificate dev;
    static Nusec__V1__DeviceCertificate *devs[NU_ENVELOPE_LIST_MAX + 1];
    nusec__v1__device_certificate__init(&dev);
    dev.job_id = "j";
    dev.device_uid = (ProtobufCBinaryData){4, uid};
    for (size_t i = 0; i <= NU_ENVELOPE_LIST_MAX; i++)
        devs[i] = &dev;
    Nusec__V1__DeviceList dl = NUSEC__V1__DEVICE_LIST__INIT;
    dl.devices = devs;
    dl.n_devices = NU_ENVELOPE_LIST_MAX;
    CU_ASSERT_EQUAL(nu_envelope_set_body(&f.env, &dl.base), NU_OK);
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_OK);
    dl.n_devices = NU_ENVELOPE_LIST_MAX + 1;
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "DeviceList.devices");
    dl.n_devices = 2;
    devs[1] = NULL;
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_INVALID_ARG);
    devs[1] = &dev;

    /* Each field within its limit, the whole over NU_ENVELOPE_MAX. */
    uint8_t *payload = calloc(1, NU_ENVELOPE_MAX);
    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    Nusec__V1__FirmwareSignRequest fs = NUSEC__V1__FIRMWARE_SIGN_REQUEST__INIT;
    fs.name = "blinky";
    fs.version = "1.0.0";
    fs.payload = (ProtobufCBinaryData){NU_ENVELOPE_MAX, payload};
    CU_ASSERT_EQUAL(nu_envelope_set_body(&f.env, &fs.base), NU_OK);
    CU_ASSERT_EQUAL(pack_rc(&f.env, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "envelope size");
    free(payload);

    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL(nu_envelope_pack(NULL, &buf, &len, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_pack(&f.env, NULL, &len, NULL), NU_ERR_INVALID_ARG);
}

/* ---- the decoder ----------------------------------------------------------- */

static void test_decode_empty_null_and_oversize(void)
{
    Nusec__V1__Envelope *env = (Nusec__V1__Envelope *)1;
    const char *detail = NULL;
    uint8_t b = 0;
    CU_ASSERT_EQUAL(nu_envelope_unpack(&b, 0, &env, &detail), NU_ERR_DECODE);
    CU_ASSERT_PTR_NULL(env);
    CU_ASSERT_EQUAL(nu_envelope_unpack(NULL, 0, &env, NULL), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_envelope_unpack(NULL, 5, &env, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_envelope_unpack(&b, 1, NULL, NULL), NU_ERR_INVALID_ARG);

    /* A valid envelope followed by padding up to one byte over the limit:
     * refused by size before any parsing. */
    struct wb w = {0};
    wb_header(&w);
    wb_cert_req(&w, 100);
    CU_ASSERT_EQUAL(unpack_wb(&w, NULL), NU_OK);
    struct wb pad = {0};
    uint8_t *zeros = calloc(1, NU_ENVELOPE_MAX);
    /* Under the target by more than the field's tag and length varint; the
     * loop below pads to exactly one byte over. */
    wb_put(&pad, zeros, NU_ENVELOPE_MAX - w.len - 8);
    wb_bytes(&w, 1000, pad.buf, pad.len); /* unknown field */
    while (w.len < NU_ENVELOPE_MAX + 1)
        wb_put(&w, "", 1);
    CU_ASSERT_EQUAL(w.len, NU_ENVELOPE_MAX + 1);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "envelope size");
    free(zeros);
    wb_free(&pad);
    wb_free(&w);
}

static void test_decode_every_truncation_is_refused(void)
{
    uint8_t csr[200], uid[4] = {1, 2, 3, 4}, idem[16] = {7};
    memset(csr, 0x55, sizeof(csr));
    Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    req.job_id = "job-1";
    req.device_uid = (ProtobufCBinaryData){4, uid};
    req.csr_der = (ProtobufCBinaryData){sizeof(csr), csr};
    struct nu_envelope_frame f;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &req.base), NU_OK);
    nu_envelope_frame_set_idempotency_key(&f, idem, sizeof(idem));
    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_pack(&f.env, &buf, &len, NULL), NU_OK);
    unsigned decode = 0, invalid = 0;
    for (size_t n = 0; n < len; n++) {
        /* A fresh heap copy so ASan sees any read past the cut. */
        uint8_t *cut = malloc(n ? n : 1);
        memcpy(cut, buf, n);
        Nusec__V1__Envelope *env = NULL;
        int rc = nu_envelope_unpack(cut, n, &env, NULL);
        CU_ASSERT(rc == NU_ERR_DECODE || rc == NU_ERR_INVALID_ARG);
        CU_ASSERT_PTR_NULL(env);
        decode += rc == NU_ERR_DECODE;
        invalid += rc == NU_ERR_INVALID_ARG; /* cut right after the header */
        free(cut);
    }
    CU_ASSERT_EQUAL(invalid, 1);
    CU_ASSERT_EQUAL(decode, len - 1);
    Nusec__V1__Envelope *env = NULL;
    CU_ASSERT_EQUAL(nu_envelope_unpack(buf, len, &env, NULL), NU_OK);
    nu_envelope_free(env);
    free(buf);
}

static void test_decode_wrong_wire_types(void)
{
    const char *detail;
    struct wb w = {0};
    wb_uint(&w, E_HEADER, 5); /* header as a varint */
    wb_cert_req(&w, 10);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);

    struct wb h = {0};
    uint8_t id[16] = {0};
    wb_bytes(&h, H_MSGID, id, 16);
    wb_str(&h, H_SENDER, "p");
    wb_str(&h, H_SEQ, "seven"); /* uint64 as length-delimited */
    wb_uint(&h, H_PROTO, 1);
    wb_sub(&w, E_HEADER, &h);
    wb_cert_req(&w, 10);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);
    wb_free(&h);

    wb_header(&w);
    wb_tag(&w, E_CERT_REQ, 5); /* body as fixed32 */
    wb_put(&w, "\x01\x02\x03\x04", 4);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);

    wb_header(&w);
    wb_tag(&w, E_CERT_REQ, 3); /* start group: not proto3 */
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);

    wb_header(&w);
    wb_put(&w, "\x0f", 1); /* wire type 7 */
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);
}

/* xorshift64*: a fixed-seed generator so failures reproduce. */
static uint64_t rng_state = 0x9e3779b97f4a7c15ull;

static uint64_t rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * 2685821657736338717ull;
}

/* Whatever unpack accepts, pack must accept and unpack again identically. */
static void check_accepted_roundtrips(const Nusec__V1__Envelope *env)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_pack(env, &buf, &len, NULL), NU_OK);
    Nusec__V1__Envelope *again = NULL;
    CU_ASSERT_EQUAL(nu_envelope_unpack(buf, len, &again, NULL), NU_OK);
    CU_ASSERT_STRING_EQUAL(nu_envelope_body_name(again), nu_envelope_body_name(env));
    nu_envelope_free(again);
    free(buf);
}

static void test_decode_random_garbage(void)
{
    enum { ITER = 20000 };
    uint8_t *buf = malloc(600);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    unsigned refused = 0;
    for (int i = 0; i < ITER; i++) {
        size_t n = rng() % 600;
        for (size_t k = 0; k < n; k++)
            buf[k] = (uint8_t)rng();
        Nusec__V1__Envelope *env = NULL;
        int rc = nu_envelope_unpack(buf, n, &env, NULL);
        CU_ASSERT(rc == NU_OK || is_typed_refusal(rc));
        refused += rc != NU_OK;
        if (rc == NU_OK)
            check_accepted_roundtrips(env);
        nu_envelope_free(env);
    }
    CU_ASSERT_EQUAL(refused, ITER); /* random bytes never make a valid envelope */
    free(buf);
}

static void test_decode_mutated_valid_envelopes(void)
{
    enum { ITER = 20000 };
    struct wb w = {0};
    wb_header(&w);
    wb_cert_req(&w, 64);
    uint8_t *buf = malloc(w.len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    unsigned accepted = 0;
    for (int i = 0; i < ITER; i++) {
        memcpy(buf, w.buf, w.len);
        int flips = 1 + (int)(rng() % 4);
        for (int k = 0; k < flips; k++)
            buf[rng() % w.len] ^= (uint8_t)(1u << (rng() % 8));
        Nusec__V1__Envelope *env = NULL;
        int rc = nu_envelope_unpack(buf, w.len, &env, NULL);
        CU_ASSERT(rc == NU_OK || is_typed_refusal(rc));
        if (rc == NU_OK) {
            accepted++;
            check_accepted_roundtrips(env);
        }
        nu_envelope_free(env);
    }
    CU_ASSERT(accepted > 0); /* flips inside the CSR stay valid: the roundtrip ran */
    free(buf);
    wb_free(&w);
}

static void test_decode_missing_header_body_and_protocol(void)
{
    const char *detail = NULL;
    struct wb w = {0};
    wb_cert_req(&w, 10);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "Envelope.header");
    wb_free(&w);

    wb_header(&w);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "Envelope.body");
    wb_free(&w);

    /* A body type from a newer peer (field 99) is NOT_SUPPORTED, not garbage. */
    wb_header(&w);
    wb_str(&w, 99, "future body");
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_NOT_SUPPORTED);
    wb_free(&w);

    wb_header_raw(&w, 16, "p", 1, 2);
    wb_cert_req(&w, 10);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_NOT_SUPPORTED);
    ASSERT_DETAIL(detail, "Header.protocol");
    wb_free(&w);

    wb_header_raw(&w, 16, "p", 1, 0); /* protocol absent (0) */
    wb_cert_req(&w, 10);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_NOT_SUPPORTED);
    wb_free(&w);

    /* An empty body message is present; CertificateRequest then lacks its ids. */
    wb_header(&w);
    wb_bytes(&w, E_CERT_REQ, "", 0);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "CertificateRequest.job_id");
    wb_free(&w);
}

static void test_decode_message_id_and_sender_rules(void)
{
    static const struct {
        size_t idlen;
        const char *sender;
        size_t sender_len;
        int rc;
        const char *detail;
    } cases[] = {
        {16, "prog-1", 6, NU_OK, NULL},
        {15, "prog-1", 6, NU_ERR_INVALID_ARG, "Header.message_id"},
        {17, "prog-1", 6, NU_ERR_INVALID_ARG, "Header.message_id"},
        {0, "prog-1", 6, NU_ERR_INVALID_ARG, "Header.message_id"},
        {16, "prog/1", 6, NU_ERR_INVALID_ARG, "Header.sender_id"},
        {16, "prog+1", 6, NU_ERR_INVALID_ARG, "Header.sender_id"},
        {16, "prog#1", 6, NU_ERR_INVALID_ARG, "Header.sender_id"},
        {16, "prog 1", 6, NU_ERR_INVALID_ARG, "Header.sender_id"},
        {16, "prog\0evil", 9, NU_ERR_INVALID_ARG, "Header.sender_id"},
        {16, "pr\xc3\xb6g", 5, NU_ERR_INVALID_ARG, "Header.sender_id"},
        {16, "", 0, NU_ERR_INVALID_ARG, "Header.sender_id"},
        {16, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 64, NU_OK, NULL},
        {16, "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", 65,
         NU_ERR_TOO_LARGE, "Header.sender_id"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct wb w = {0};
        const char *detail = "unset";
        wb_header_raw(&w, cases[i].idlen, cases[i].sender, cases[i].sender_len, 1);
        wb_cert_req(&w, 10);
        int rc = unpack_wb(&w, &detail);
        if (rc != cases[i].rc)
            fprintf(stderr, "case %zu: %s\n", i, nu_err_name(rc));
        CU_ASSERT_EQUAL(rc, cases[i].rc);
        if (cases[i].detail) {
            ASSERT_DETAIL(detail, cases[i].detail);
        } else {
            CU_ASSERT_PTR_NULL(detail);
        }
        wb_free(&w);
    }

    /* Correlation id and idempotency key over 64 bytes. */
    for (uint32_t field = H_CORR; field <= H_IDEM; field++) {
        struct wb w = {0}, h = {0};
        uint8_t id[16] = {0}, key[65] = {0};
        const char *detail = NULL;
        wb_bytes(&h, H_MSGID, id, 16);
        wb_str(&h, H_SENDER, "p");
        wb_bytes(&h, field, key, 65);
        wb_uint(&h, H_PROTO, 1);
        wb_sub(&w, E_HEADER, &h);
        wb_cert_req(&w, 10);
        CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_TOO_LARGE);
        ASSERT_DETAIL(detail, field == H_CORR ? "Header.correlation_id" : "Header.idempotency_key");
        wb_free(&w);
        wb_free(&h);
    }
}

static void test_decode_accepts_and_keeps_unknown_fields(void)
{
    struct wb w = {0}, h = {0}, b = {0};
    uint8_t id[16] = {1};
    wb_bytes(&h, H_MSGID, id, 16);
    wb_str(&h, H_SENDER, "prog-1");
    wb_uint(&h, H_PROTO, 1);
    wb_uint(&h, 9, 123); /* reserved number: unknown to us */
    wb_str(&h, 100, "from the future");
    wb_tag(&h, 101, 1); /* fixed64 */
    wb_put(&h, "12345678", 8);
    wb_sub(&w, E_HEADER, &h);
    wb_uint(&w, 2, 1); /* reserved in Envelope */
    wb_str(&b, 1, "job-1");
    wb_bytes(&b, 2, "\x01", 1);
    wb_bytes(&b, 3, "\x30\x00", 2);
    wb_str(&b, 99, "new request field");
    wb_tag(&b, 98, 5); /* fixed32 */
    wb_put(&b, "1234", 4);
    wb_sub(&w, E_CERT_REQ, &b);
    wb_uint(&w, 1000, 77);

    Nusec__V1__Envelope *env = NULL;
    const char *detail = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_unpack(w.buf, w.len, &env, &detail), NU_OK);
    CU_ASSERT_STRING_EQUAL(env->header->sender_id, "prog-1");
    CU_ASSERT_STRING_EQUAL(env->certificate_request->job_id, "job-1");
    CU_ASSERT_EQUAL(env->base.n_unknown_fields, 2);
    CU_ASSERT_EQUAL(env->header->base.n_unknown_fields, 3);
    CU_ASSERT_EQUAL(env->certificate_request->base.n_unknown_fields, 2);

    /* Repacking keeps them, so a relay does not strip a newer peer's fields. */
    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_pack(env, &buf, &len, NULL), NU_OK);
    CU_ASSERT_EQUAL(len, w.len);
    Nusec__V1__Envelope *again = NULL;
    CU_ASSERT_EQUAL(nu_envelope_unpack(buf, len, &again, NULL), NU_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(again);
    CU_ASSERT_EQUAL(again->header->base.n_unknown_fields, 3);
    nu_envelope_free(again);
    nu_envelope_free(env);
    free(buf);
    wb_free(&w);
    wb_free(&h);
    wb_free(&b);
}

struct fld {
    uint32_t field;
    size_t len; /* filled with 'a': a valid id character and valid bytes */
};

/* A body made of the given fields; checks the refusal and its detail. */
static void check_body(uint32_t body, const struct fld *flds, size_t n, int expect_rc,
                       const char *expect_detail)
{
    struct wb w = {0}, b = {0};
    wb_header(&w);
    for (size_t i = 0; i < n; i++) {
        char *v = malloc(flds[i].len + 1);
        memset(v, 'a', flds[i].len);
        wb_bytes(&b, flds[i].field, v, flds[i].len);
        free(v);
    }
    wb_sub(&w, body, &b);
    const char *detail = NULL;
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), expect_rc);
    if (expect_detail) {
        ASSERT_DETAIL(detail, expect_detail);
    }
    wb_free(&w);
    wb_free(&b);
}

#define CHECK_BODY(body, rc, detail, ...)                                                          \
    do {                                                                                           \
        const struct fld f_[] = {__VA_ARGS__};                                                     \
        check_body(body, f_, sizeof(f_) / sizeof(f_[0]), rc, detail);                              \
    } while (0)

static void test_decode_oversize_fields(void)
{
    const size_t csr = NU_ENVELOPE_CSR_MAX, cert = NU_ENVELOPE_CERT_MAX;
    CHECK_BODY(E_CERT_REQ, NU_OK, NULL, {1, 1}, {2, 1}, {3, csr});
    CHECK_BODY(E_CERT_REQ, NU_ERR_TOO_LARGE, "CertificateRequest.csr_der", {1, 1}, {2, 1},
               {3, csr + 1});
    CHECK_BODY(E_CERT_REQ, NU_ERR_TOO_LARGE, "CertificateRequest.device_uid", {1, 1},
               {2, NU_ENVELOPE_UID_MAX + 1}, {3, 1});
    CHECK_BODY(E_CERT_REQ, NU_ERR_TOO_LARGE, "CertificateRequest.job_id",
               {1, NU_ENVELOPE_ID_MAX + 1}, {2, 1}, {3, 1});
    CHECK_BODY(E_CERT_REQ, NU_ERR_INVALID_ARG, "CertificateRequest.csr_der", {1, 1}, {2, 1});
    CHECK_BODY(51, NU_OK, NULL, {1, 1}, {2, 1}, {3, cert}, {4, 1});
    CHECK_BODY(51, NU_ERR_TOO_LARGE, "CertificateIssued.certificate_der", {1, 1}, {2, 1},
               {3, cert + 1}, {4, 1});
    CHECK_BODY(45, NU_OK, NULL, {1, 1}, {5, NU_ENVELOPE_CHUNK_MAX});
    CHECK_BODY(45, NU_ERR_TOO_LARGE, "FirmwareChunk.ciphertext", {1, 1},
               {5, NU_ENVELOPE_CHUNK_MAX + 1});
    CHECK_BODY(45, NU_ERR_INVALID_ARG, "FirmwareChunk.ciphertext", {1, 1}, {5, 15}); /* no tag */
    CHECK_BODY(60, NU_ERR_TOO_LARGE, "PackageDelivery.sealed_package",
               {1, NU_ENVELOPE_PACKAGE_MAX + 1});
    CHECK_BODY(E_ACK, NU_OK, NULL, {1, NU_ENVELOPE_TEXT_MAX});
    CHECK_BODY(E_ACK, NU_ERR_TOO_LARGE, "Ack.detail", {1, NU_ENVELOPE_TEXT_MAX + 1});
    CHECK_BODY(22, NU_ERR_INVALID_ARG, "EnrollRequest.package_pubkey", {1, 1}, {2, 8}, {3, 9},
               {4, 64});
    CHECK_BODY(22, NU_OK, NULL, {1, 1}, {2, 8}, {3, 9}, {4, 65});

    /* Control characters and broken UTF-8 in free text; NUL in an id. */
    static const char *bad_text[] = {"a\x1b[2Jb", "tab\there", "\xff", "\xe2\x82", "\xc2\x85"};
    for (size_t i = 0; i < sizeof(bad_text) / sizeof(bad_text[0]); i++) {
        struct wb w = {0}, b = {0};
        const char *detail = NULL;
        wb_header(&w);
        wb_str(&b, 1, bad_text[i]);
        wb_sub(&w, E_ACK, &b);
        CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_INVALID_ARG);
        ASSERT_DETAIL(detail, "Ack.detail");
        wb_free(&w);
        wb_free(&b);
    }
    struct wb w = {0}, b = {0};
    const char *detail = NULL;
    wb_header(&w);
    wb_bytes(&b, 1, "job\0x", 5);
    wb_bytes(&b, 2, "\x01", 1);
    wb_bytes(&b, 3, "\x01", 1);
    wb_sub(&w, E_CERT_REQ, &b);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_INVALID_ARG);
    ASSERT_DETAIL(detail, "CertificateRequest.job_id");
    wb_free(&w);
    wb_free(&b);
}

static void test_decode_too_many_repeated_elements(void)
{
    const char *detail = NULL;
    struct wb w = {0}, list = {0}, dev = {0};
    wb_str(&dev, 1, "j");
    wb_bytes(&dev, 2, "\x01", 1);
    for (int i = 0; i < (int)NU_ENVELOPE_LIST_MAX; i++)
        wb_sub(&list, 1, &dev);
    wb_header(&w);
    wb_sub(&w, E_DEVICE_LIST, &list);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_OK);
    wb_free(&w);
    wb_sub(&list, 1, &dev); /* one more */
    wb_header(&w);
    wb_sub(&w, E_DEVICE_LIST, &list);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "DeviceList.devices");
    wb_free(&w);
    wb_free(&list);
    wb_free(&dev);

    /* Packed repeated scalars are counted element by element: 257 in one record. */
    struct wb js = {0}, packed = {0};
    wb_str(&js, 1, "job-1");
    for (int i = 0; i < (int)NU_ENVELOPE_ALLOC_MAX + 1; i++)
        wb_varint(&packed, 1);
    wb_bytes(&js, 10, packed.buf, packed.len);
    wb_header(&w);
    wb_sub(&w, E_JOB_STATE, &js);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "JobState.issued_per_programmer");
    wb_free(&w);
    wb_free(&js);
    wb_free(&packed);

    /* The count is refused on the wire, before protobuf-c allocates the array
     * (without the pre-scan, 5000 empty elements would hit the memory budget). */
    for (int i = 0; i < 5000; i++)
        wb_bytes(&list, 1, "", 0);
    wb_header(&w);
    wb_sub(&w, E_JOB_LIST, &list);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "JobList.jobs");
    wb_free(&w);
    wb_free(&list);

    /* Too many unknown fields in one message. */
    wb_header(&w);
    wb_cert_req(&w, 10);
    for (int i = 0; i < 1025; i++)
        wb_uint(&w, 3, 0);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "unknown fields");
    wb_free(&w);
}

static void test_decode_duplicates_are_refused(void)
{
    const char *detail = NULL;
    struct wb w = {0};
    wb_header(&w);
    wb_header(&w);
    wb_cert_req(&w, 10);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);

    /* Two bodies: protobuf keeps the last one silently; we refuse. */
    wb_header(&w);
    wb_cert_req(&w, 10);
    struct wb ack = {0};
    wb_str(&ack, 1, "ok");
    wb_sub(&w, E_ACK, &ack);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);
    wb_free(&ack);

    struct wb h = {0};
    uint8_t id[16] = {0};
    wb_bytes(&h, H_MSGID, id, 16);
    wb_str(&h, H_SENDER, "good");
    wb_str(&h, H_SENDER, "evil");
    wb_uint(&h, H_PROTO, 1);
    wb_sub(&w, E_HEADER, &h);
    wb_cert_req(&w, 10);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    ASSERT_DETAIL(detail, "Header.sender_id");
    wb_free(&w);
    wb_free(&h);
}

static void test_decode_huge_length_prefixes(void)
{
    const char *detail = NULL;
    struct wb w = {0};
    /* Envelope.header claiming 2^31 bytes. */
    wb_tag(&w, E_HEADER, 2);
    wb_varint(&w, 1ull << 31);
    wb_put(&w, "\x0a\x10", 2);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);

    /* Inside the body, after a valid header. */
    wb_header(&w);
    wb_tag(&w, E_CERT_REQ, 2);
    wb_varint(&w, 20);
    wb_tag(&w, 3, 2);
    wb_varint(&w, 1ull << 31);
    wb_put(&w, "0123456789abcdef", 16);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);

    /* 2^64 - 1 and an 11-byte varint. */
    wb_header(&w);
    wb_tag(&w, E_CERT_REQ, 2);
    wb_varint(&w, UINT64_MAX);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);
    wb_header(&w);
    wb_tag(&w, E_CERT_REQ, 2);
    wb_put(&w, "\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff\x01", 11);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_DECODE);
    wb_free(&w);
}

static double elapsed_ms(const struct timespec *a)
{
    struct timespec b;
    clock_gettime(CLOCK_MONOTONIC, &b);
    return (double)(b.tv_sec - a->tv_sec) * 1e3 + (double)(b.tv_nsec - a->tv_nsec) / 1e6;
}

/*
 * Nest length-delimited records as deep as NU_ENVELOPE_MAX allows (up to the
 * 70000 levels of the lens[] table) along field numbers the schema uses for messages (event > 12 >
 * 12 ...). The schema has no recursion, so the decoder descends at most 4
 * levels and treats the rest as an unknown field's bytes: refused fast, no
 * stack exhaustion.
 */
static size_t varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static void test_decode_deep_nesting_is_refused_fast(void)
{
    /* event > programmer > (unknown 12); header > message_id; ack > unknown;
     * device_list > unknown; reserved 9 at the top. */
    static const uint32_t fields[] = {E_EVENT, E_HEADER, E_ACK, E_DEVICE_LIST, 9};
    static size_t lens[70000];
    for (size_t fi = 0; fi < sizeof(fields) / sizeof(fields[0]); fi++) {
        uint32_t field = fields[fi];
        size_t tag_len = varint_len((uint64_t)field << 3), levels = 0;
        /* Lengths from the inside out, then write from the outside in: linear. */
        lens[0] = 2;
        while (levels + 1 < sizeof(lens) / sizeof(lens[0])) {
            size_t next = tag_len + varint_len(lens[levels]) + lens[levels];
            if (next > NU_ENVELOPE_MAX - 64)
                break;
            lens[++levels] = next;
        }
        struct wb w = {0};
        if (field != E_HEADER)
            wb_header(&w);
        for (size_t k = levels; k > 0; k--) {
            wb_tag(&w, field, 2);
            wb_varint(&w, lens[k - 1]);
        }
        wb_put(&w, "\x08\x01", 2);
        struct timespec t0;
        clock_gettime(CLOCK_MONOTONIC, &t0);
        const char *detail = NULL;
        int rc = unpack_wb(&w, &detail);
        double ms = elapsed_ms(&t0);
        /* Unknown fields are accepted, so some of these are valid envelopes. */
        CU_ASSERT(rc == NU_OK || is_typed_refusal(rc));
        CU_ASSERT(levels > 40000);
        CU_ASSERT(ms < 500.0);
        printf("\n  %zu levels via field %u: %s (%s) in %.1f ms", levels, field, nu_err_name(rc),
               detail ? detail : "-", ms);
        wb_free(&w);
    }
}

/*
 * The decoder's memory budget: valid envelopes of the most allocation-heavy
 * shapes decode; an input whose decoding would cost ~90 bytes per input byte
 * is refused before it gets there.
 */
static void test_decode_budget(void)
{
    const char *detail = NULL;
    struct wb w = {0}, list = {0}, js = {0};

    /* 1024 minimal jobs (5 bytes each on the wire, ~180 bytes decoded). */
    wb_str(&js, 1, "j");
    for (int i = 0; i < (int)NU_ENVELOPE_LIST_MAX; i++)
        wb_sub(&list, 1, &js);
    wb_header(&w);
    wb_sub(&w, E_JOB_LIST, &list);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_OK);
    wb_free(&w);
    wb_free(&list);
    wb_free(&js);

    /* 1024 two-byte unknown fields in each of envelope, header and body. */
    struct wb h = {0}, b = {0};
    uint8_t id[16] = {0};
    wb_bytes(&h, H_MSGID, id, 16);
    wb_str(&h, H_SENDER, "p");
    wb_uint(&h, H_PROTO, 1);
    wb_str(&b, 1, "ok");
    for (int i = 0; i < 1024; i++) {
        wb_uint(&h, 8, 0);
        wb_uint(&b, 5, 0);
        wb_uint(&w, 3, 0);
    }
    wb_sub(&w, E_HEADER, &h);
    wb_sub(&w, E_ACK, &b);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_OK);
    wb_free(&w);
    wb_free(&h);
    wb_free(&b);

    /* 64 empty sockets. */
    struct wb ps = {0};
    wb_str(&ps, 1, "nulink-1");
    for (int i = 0; i < (int)NU_ENVELOPE_SOCKETS_MAX; i++)
        wb_bytes(&ps, 6, "", 0);
    wb_header(&w);
    wb_sub(&w, E_PROG_STATUS, &ps);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_OK);
    wb_free(&w);
    wb_free(&ps);

    /* 1024 empty job states: 2 bytes in, a 104-byte struct, a pointer and
     * scan slabs out. Over budget, refused before validation. */
    for (int i = 0; i < (int)NU_ENVELOPE_LIST_MAX; i++)
        wb_bytes(&list, 1, "", 0);
    wb_header(&w);
    wb_sub(&w, E_JOB_LIST, &list);
    CU_ASSERT_EQUAL(unpack_wb(&w, &detail), NU_ERR_TOO_LARGE);
    ASSERT_DETAIL(detail, "decoder memory budget");
    wb_free(&w);
    wb_free(&list);
}

/* ---- interoperability with the reference protobuf implementation ----------- */

/* The fuzz seeds are made by `protoc --encode` from text: all must decode.
 * The cov-* files beside them are inputs a fuzz campaign kept for the
 * coverage they add, most of them malformed on purpose: not this test's. */
static void test_protoc_encoded_seeds_decode(void)
{
    const char *dir = NUSEC_SOURCE_DIR "/tests/fuzz/seeds/fuzz_envelope";
    DIR *d = opendir(dir);
    CU_ASSERT_PTR_NOT_NULL_FATAL(d);
    unsigned n = 0;
    struct dirent *de;
    while ((de = readdir(d)) != NULL) {
        if (de->d_name[0] == '.' || strncmp(de->d_name, "cov-", 4) == 0)
            continue;
        char path[512];
        uint8_t *buf = NULL;
        size_t len = 0;
        const char *detail = NULL;
        Nusec__V1__Envelope *env = NULL;
        CU_ASSERT_EQUAL_FATAL(nu_path_fmt(path, sizeof(path), "%s/%s", dir, de->d_name), NU_OK);
        CU_ASSERT_EQUAL_FATAL(nu_file_read(path, NU_ENVELOPE_MAX, &buf, &len), NU_OK);
        int rc = nu_envelope_unpack(buf, len, &env, &detail);
        if (rc != NU_OK)
            fprintf(stderr, "%s: %s (%s)\n", de->d_name, nu_err_name(rc), detail);
        CU_ASSERT_EQUAL(rc, NU_OK);
        if (env)
            check_accepted_roundtrips(env);
        nu_envelope_free(env);
        free(buf);
        n++;
    }
    closedir(d);
    CU_ASSERT(n >= 8);
}

/* What we pack, `protoc --decode` reads (the monitor path in ARCHITECTURE.md). */
static void test_packed_envelope_decodes_with_protoc(void)
{
    char dir[256], path[512], out[512];
    CU_ASSERT_EQUAL_FATAL(nu_test_tmpdir("envelope", dir, sizeof(dir)), 0);
    uint8_t csr[3] = {0x30, 0x01, 0x00}, uid[2] = {0xca, 0xfe};
    Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    req.job_id = "job-77";
    req.device_uid = (ProtobufCBinaryData){2, uid};
    req.csr_der = (ProtobufCBinaryData){3, csr};
    req.socket = 6;
    struct nu_envelope_frame f;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_frame_init(&f, sender, &req.base), NU_OK);
    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_pack(&f.env, &buf, &len, NULL), NU_OK);
    nu_path_fmt(path, sizeof(path), "%s/msg.bin", dir);
    nu_path_fmt(out, sizeof(out), "%s/msg.txt", dir);
    CU_ASSERT_EQUAL_FATAL(nu_file_write_atomic(path, buf, len, 0600), NU_OK);
    free(buf);
    CU_ASSERT_EQUAL(
        nu_test_sh("protoc --decode=nusec.v1.Envelope -I %s/proto %s/proto/nusec/v1/*.proto"
                   " < %s > %s && grep -q 'job_id: \"job-77\"' %s && grep -q "
                   "'sender_id: \"station-7.cm_a\"' %s && grep -q 'socket: 6' %s",
                   NUSEC_SOURCE_DIR, NUSEC_SOURCE_DIR, path, out, out, out, out),
        0);
    nu_test_rmtree(dir);
}

int main(void)
{
    static const struct nu_test_case roundtrip_cases[] = {
        {"every header field roundtrips", test_roundtrip_every_header_field},
        {"firmware chunk at its limit", test_roundtrip_firmware_chunk_at_limit},
        {"event > job state > allocation (deepest path)",
         test_roundtrip_event_job_state_deepest_path},
        {"lists, error reply, status, empty body", test_roundtrip_lists_error_and_status},
        {"set_body covers every oneof member", test_set_body_covers_every_oneof_member},
        {"schema bounded, every field limited", test_schema_is_bounded_and_fully_limited},
        {"sender sequence atomic and monotonic", test_sender_sequence_is_atomic_and_monotonic},
        {"sender id checked, clock seed", test_sender_create_checks_id_and_seeds_from_clock},
        {"id check and text sanitize", test_id_check_and_text_sanitize},
        {"pack refuses what unpack refuses", test_pack_refuses_invalid},
        {NULL, NULL},
    };
    static const struct nu_test_case decoder_cases[] = {
        {"empty, NULL, oversize", test_decode_empty_null_and_oversize},
        {"every truncation refused", test_decode_every_truncation_is_refused},
        {"wrong wire types", test_decode_wrong_wire_types},
        {"random garbage (fixed seed)", test_decode_random_garbage},
        {"mutated valid envelopes", test_decode_mutated_valid_envelopes},
        {"missing header, body; protocol", test_decode_missing_header_body_and_protocol},
        {"message id and sender rules", test_decode_message_id_and_sender_rules},
        {"unknown fields accepted and kept", test_decode_accepts_and_keeps_unknown_fields},
        {"oversize and malformed body fields", test_decode_oversize_fields},
        {"too many repeated elements", test_decode_too_many_repeated_elements},
        {"duplicate fields refused", test_decode_duplicates_are_refused},
        {"huge length prefixes", test_decode_huge_length_prefixes},
        {"deep nesting refused fast", test_decode_deep_nesting_is_refused_fast},
        {"decoder memory budget", test_decode_budget},
        {"protoc-encoded seeds decode", test_protoc_encoded_seeds_decode},
        {"protoc --decode reads what we pack", test_packed_envelope_decodes_with_protoc},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"envelope", setup, teardown, roundtrip_cases},
        {"decoder", setup, teardown, decoder_cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("test_envelope", suites);
}
