/*
 * pg_pb / pg_msg: the core's own protobuf codec, checked against protobuf-c
 * and libnusec's envelope validator in both directions, and against
 * malformed input.
 */
#include "pg_msg.h"
#include "pg_pb.h"

#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t mid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16};

static void start(struct pg_pb_writer *w, uint8_t *buf, size_t cap, const uint8_t *idem)
{
    struct pg_msg_hdr_out h = {
        .message_id = mid,
        .sender_id = "prog-1",
        .sent_at_ms = 1700000000000ull,
        .sequence = 42,
        .idempotency_key = idem,
        .idempotency_key_len = idem ? 16 : 0,
    };
    pg_pb_writer_init(w, buf, cap);
    pg_msg_put_header(w, &h);
}

static void test_cert_request_read_by_protobuf_c(void)
{
    uint8_t buf[2048], idem[16], uid[16], csr[300];
    memset(idem, 0xab, sizeof(idem));
    memset(uid, 0x11, sizeof(uid));
    memset(csr, 0x30, sizeof(csr));
    struct pg_pb_writer w;
    start(&w, buf, sizeof(buf), idem);
    struct pg_msg_cert_req_out r = {"job-7", uid, 16, csr, sizeof(csr), 3, 9};
    pg_msg_put_cert_req(&w, &r);
    CU_ASSERT_EQUAL_FATAL(w.err, NU_OK);
    Nusec__V1__Envelope *env = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_unpack(buf, w.len, &env, NULL), NU_OK);
    CU_ASSERT_EQUAL(env->header->sequence, 42);
    CU_ASSERT_STRING_EQUAL(env->header->sender_id, "prog-1");
    CU_ASSERT_EQUAL(env->header->idempotency_key.len, 16);
    CU_ASSERT_EQUAL(memcmp(env->header->message_id.data, mid, 16), 0);
    CU_ASSERT_EQUAL_FATAL(env->body_case, NUSEC__V1__ENVELOPE__BODY_CERTIFICATE_REQUEST);
    CU_ASSERT_STRING_EQUAL(env->certificate_request->job_id, "job-7");
    CU_ASSERT_EQUAL(env->certificate_request->csr_der.len, sizeof(csr));
    CU_ASSERT_EQUAL(env->certificate_request->socket, 3);
    CU_ASSERT_EQUAL(env->certificate_request->counter, 9);
    nu_envelope_free(env);
}

static void test_status_and_event_read_by_protobuf_c(void)
{
    uint8_t buf[2048];
    struct pg_pb_writer w;
    struct pg_msg_sock_out socks[2] = {{0, 5, 1, "busy"}, {1, 0, 0, "idle"}};
    struct pg_msg_status_out s = {"prog-1", PG_PROG_PRODUCING, "job-7", 10, 6, socks, 2, "0.1.0",
                                  1765000000000ull};
    start(&w, buf, sizeof(buf), NULL);
    pg_msg_put_status(&w, &s);
    Nusec__V1__Envelope *env = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_unpack(buf, w.len, &env, NULL), NU_OK);
    CU_ASSERT_EQUAL_FATAL(env->body_case, NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_STATUS);
    CU_ASSERT_EQUAL(env->programmer_status->state,
                    NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING);
    CU_ASSERT_EQUAL_FATAL(env->programmer_status->n_sockets, 2);
    CU_ASSERT_EQUAL(env->programmer_status->sockets[0]->done, 5);
    CU_ASSERT_STRING_EQUAL(env->programmer_status->sockets[1]->state, "idle");
    CU_ASSERT_EQUAL(env->programmer_status->cloud_unreachable_since_ms, 1765000000000ull);
    nu_envelope_free(env);

    uint8_t uid[16] = {0};
    struct pg_msg_report_out rep = {
        "job-7", uid, 16, 2, PG_OUTCOME_FAILED, NULL, NU_ERR_BOOT_FAILED, "boot", 12};
    start(&w, buf, sizeof(buf), NULL);
    pg_msg_put_device_event(&w, "device.failed", &rep);
    CU_ASSERT_EQUAL_FATAL(nu_envelope_unpack(buf, w.len, &env, NULL), NU_OK);
    CU_ASSERT_EQUAL_FATAL(env->body_case, NUSEC__V1__ENVELOPE__BODY_EVENT);
    CU_ASSERT_STRING_EQUAL(env->event->kind, "device.failed");
    CU_ASSERT_EQUAL((int)env->event->device->error, NU_ERR_BOOT_FAILED);
    CU_ASSERT_EQUAL(env->event->device->outcome, NUSEC__V1__DEVICE_OUTCOME__DEVICE_OUTCOME_FAILED);
    nu_envelope_free(env);
}

static int pack_cloud(ProtobufCMessage *body, uint8_t **out, size_t *len)
{
    struct nu_envelope_sender *s = NULL;
    struct nu_envelope_frame f;
    int rc = nu_envelope_sender_create("cloud", 7, &s);
    if (rc == NU_OK)
        rc = nu_envelope_frame_init(&f, s, body);
    if (rc == NU_OK)
        rc = nu_envelope_pack(&f.env, out, len, NULL);
    nu_envelope_sender_destroy(s);
    return rc;
}

static void test_reads_protobuf_c_answers(void)
{
    uint8_t *buf = NULL, cert[500];
    size_t len = 0;
    memset(cert, 0x5a, sizeof(cert));
    Nusec__V1__CertificateIssued ci = NUSEC__V1__CERTIFICATE_ISSUED__INIT;
    ci.job_id = "job-7";
    ci.device_uid.data = cert;
    ci.device_uid.len = 16;
    ci.certificate_der.data = cert;
    ci.certificate_der.len = sizeof(cert);
    ci.serial = "0a0b";
    ci.issued = 77;
    CU_ASSERT_EQUAL_FATAL(pack_cloud(&ci.base, &buf, &len), NU_OK);
    struct pg_msg_env env;
    struct pg_msg_cert_issued out;
    CU_ASSERT_EQUAL(pg_msg_reply_decode(buf, len, PG_BODY_CERT_ISSUED, &env, NULL), NU_OK);
    CU_ASSERT_EQUAL(pg_msg_cert_issued_decode(env.body, &out), NU_OK);
    CU_ASSERT(pg_msg_eq(out.job_id, "job-7"));
    CU_ASSERT_EQUAL(out.certificate.len, sizeof(cert));
    CU_ASSERT_EQUAL(out.issued, 77);
    /* Asked for something else: refused. */
    CU_ASSERT_EQUAL(pg_msg_reply_decode(buf, len, PG_BODY_CHUNK, &env, NULL), NU_ERR_DECODE);
    free(buf);

    Nusec__V1__Error e = NUSEC__V1__ERROR__INIT;
    e.code = NUSEC__V1__ERROR_CODE__ERROR_CODE_QUOTA_EXHAUSTED;
    CU_ASSERT_EQUAL_FATAL(pack_cloud(&e.base, &buf, &len), NU_OK);
    struct pg_msg_error err;
    CU_ASSERT_EQUAL(pg_msg_reply_decode(buf, len, PG_BODY_CERT_ISSUED, &env, &err),
                    NU_ERR_QUOTA_EXHAUSTED);
    free(buf);
    e.code = (Nusec__V1__ErrorCode)9999; /* unknown code from a newer cloud */
    CU_ASSERT_EQUAL_FATAL(pack_cloud(&e.base, &buf, &len), NU_OK);
    CU_ASSERT_EQUAL(pg_msg_reply_decode(buf, len, PG_BODY_CERT_ISSUED, &env, &err),
                    NU_ERR_INTERNAL);
    free(buf);
}

static void test_malformed_input(void)
{
    struct pg_msg_env env;
    struct pg_msg_manifest man;
    /* truncated varint, length past the end, group wire type, field 0 */
    CU_ASSERT_EQUAL(pg_msg_env_decode((const uint8_t *)"\x08\xff", 2, &env), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(pg_msg_env_decode((const uint8_t *)"\x0a\x10\x01", 3, &env), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(pg_msg_env_decode((const uint8_t *)"\x0b\x0c", 2, &env), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(pg_msg_env_decode((const uint8_t *)"\x02\x00", 2, &env), NU_ERR_DECODE);
    /* no header / no body */
    CU_ASSERT_EQUAL(pg_msg_env_decode((const uint8_t *)"", 0, &env), NU_ERR_INVALID_ARG);
    /* 11-byte varint */
    CU_ASSERT_EQUAL(pg_msg_env_decode((const uint8_t *)"\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff"
                                                       "\xff\x01",
                                      12, &env),
                    NU_ERR_DECODE);
    /* duplicate singular field, U32 overflow, wrong wire type, oversize bytes */
    struct pg_bytes dup = {(const uint8_t *)"\x18\x01\x18\x02", 4};
    CU_ASSERT_EQUAL(pg_msg_manifest_decode(dup, &man), NU_ERR_DECODE);
    struct pg_bytes big = {(const uint8_t *)"\x18\x80\x80\x80\x80\x10", 6};
    CU_ASSERT_EQUAL(pg_msg_manifest_decode(big, &man), NU_ERR_DECODE);
    struct pg_bytes wrong = {(const uint8_t *)"\x1a\x00", 2};
    CU_ASSERT_EQUAL(pg_msg_manifest_decode(wrong, &man), NU_ERR_DECODE);
    uint8_t digest[80] = {0x32, 70};
    struct pg_bytes over = {digest, 72};
    CU_ASSERT_EQUAL(pg_msg_manifest_decode(over, &man), NU_ERR_TOO_LARGE);
    /* unknown fields are skipped */
    struct pg_bytes unk = {(const uint8_t *)"\xf8\x01\x05\x18\x07", 5};
    CU_ASSERT_EQUAL(pg_msg_manifest_decode(unk, &man), NU_OK);
    CU_ASSERT_EQUAL(man.size, 7);

    /* protocol 2 and two bodies */
    uint8_t buf[256];
    struct pg_pb_writer w;
    pg_pb_writer_init(&w, buf, sizeof(buf));
    size_t m = pg_pb_begin(&w, 1);
    pg_pb_put_bytes(&w, 1, mid, 16);
    pg_pb_put_str(&w, 2, "cloud");
    pg_pb_put_u64(&w, 7, 2);
    pg_pb_end(&w, m);
    pg_pb_end(&w, pg_pb_begin(&w, PG_BODY_ACK));
    CU_ASSERT_EQUAL(pg_msg_env_decode(buf, w.len, &env), NU_ERR_NOT_SUPPORTED);
    pg_pb_writer_init(&w, buf, sizeof(buf));
    m = pg_pb_begin(&w, 1);
    pg_pb_put_bytes(&w, 1, mid, 16);
    pg_pb_put_str(&w, 2, "cloud");
    pg_pb_put_u64(&w, 7, 1);
    pg_pb_end(&w, m);
    pg_pb_end(&w, pg_pb_begin(&w, PG_BODY_ACK));
    CU_ASSERT_EQUAL(pg_msg_env_decode(buf, w.len, &env), NU_OK);
    pg_pb_end(&w, pg_pb_begin(&w, PG_BODY_ERROR));
    CU_ASSERT_EQUAL(pg_msg_env_decode(buf, w.len, &env), NU_ERR_DECODE);
}

static void test_writer_overflow_sticks(void)
{
    uint8_t buf[8];
    struct pg_pb_writer w;
    pg_pb_writer_init(&w, buf, sizeof(buf));
    pg_pb_put_str(&w, 1, "this does not fit");
    pg_pb_put_u64(&w, 2, 1);
    CU_ASSERT_EQUAL(w.err, NU_ERR_TOO_LARGE);
    pg_pb_writer_init(&w, buf, sizeof(buf));
    size_t m = pg_pb_begin(&w, 1);
    pg_pb_put_bytes(&w, 1, "123456", 6);
    pg_pb_end(&w, m); /* 1 + 1 + 1 + 6 = 9 > 8 */
    CU_ASSERT_EQUAL(w.err, NU_ERR_TOO_LARGE);
}

/* Random and mutated input: never a crash (ASan/UBSan watch), always a code. */
static void test_random_input_never_crashes(void)
{
    uint8_t base[2048], buf[2048], idem[16] = {0};
    struct pg_pb_writer w;
    uint8_t uid[16] = {0}, csr[100] = {0};
    start(&w, base, sizeof(base), idem);
    struct pg_msg_cert_req_out r = {"job-7", uid, 16, csr, sizeof(csr), 3, 9};
    pg_msg_put_cert_req(&w, &r);
    size_t n = w.len;
    for (int i = 0; i < 20000; i++) {
        uint32_t rnd[3];
        nu_random(rnd, sizeof(rnd));
        memcpy(buf, base, n);
        size_t len = n;
        if (i % 3 == 0) {
            nu_random(buf, n);
        } else {
            buf[rnd[0] % n] ^= (uint8_t)rnd[1];
            len = 1 + rnd[2] % n;
        }
        struct pg_msg_env env;
        struct pg_msg_secrets s;
        struct pg_msg_enroll_resp er;
        int rc = pg_msg_env_decode(buf, len, &env);
        if (rc == NU_OK) {
            pg_msg_secrets_decode(env.body, &s);
            pg_msg_enroll_resp_decode(env.body, &er);
        }
        struct pg_bytes b = {buf, len};
        pg_msg_secrets_decode(b, &s);
        CU_ASSERT(rc >= 0);
    }
}

static const struct nu_test_case cases[] = {
    {"CertificateRequest read by protobuf-c", test_cert_request_read_by_protobuf_c},
    {"status and events read by protobuf-c", test_status_and_event_read_by_protobuf_c},
    {"protobuf-c answers read by the core", test_reads_protobuf_c_answers},
    {"malformed input refused with a code", test_malformed_input},
    {"writer overflow is sticky", test_writer_overflow_sticks},
    {"random input never crashes", test_random_input_never_crashes},
    {NULL, NULL},
};

int main(void)
{
    const struct nu_test_suite suites[] = {{"codec", NULL, NULL, cases}, {NULL, NULL, NULL, NULL}};
    return nu_test_run("programmer_codec", suites);
}
