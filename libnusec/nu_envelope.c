/*
 * nu_envelope — bounded decoding, validation and encoding of nusec.v1.Envelope.
 *
 * Decoding runs in three steps, each of which can only make the answer
 * "refuse": a wire pre-scan that allocates nothing (counts, duplicates, NUL
 * in strings), protobuf-c under a memory budget, then the validator that
 * walks the decoded tree through the descriptors and the limits table below.
 * The validator is the same for pack, so what we send passes what we accept.
 * The sending side (sender, sequence numbers, frames) is nu_envelope_frame.c.
 */
#include "nu_envelope.h"

#include "nu_err.h"
#include "nu_util.h"

#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- decoder memory budget ------------------------------------------------ */

/*
 * protobuf-c allocates per decoded element: a 2-byte empty repeated message
 * costs a pointer plus the whole struct (up to ~100 bytes), an unknown field
 * a 24-byte record plus its copy, and parsing a message with more than 16
 * fields allocates "scanned member" slabs (32 bytes per field, up to twice
 * that as slabs double; freed at the end). The pre-scan caps the counts;
 * this budget bounds what is left: every allocation counts against
 * BASE + FACTOR * input length and frees are never credited, so time and
 * memory stay proportional to the input. The worst valid shapes measured in
 * test_envelope (2-byte unknown fields, minimal list elements) need about
 * 45 bytes per input byte.
 */
#define NU__BUDGET_BASE (16u * 1024u)
#define NU__BUDGET_FACTOR 64u

struct nu__budget {
    size_t left;
    int exhausted;
};

static void *nu__budget_alloc(void *data, size_t size)
{
    struct nu__budget *b = data;
    if (size > b->left) {
        b->exhausted = 1;
        return NULL;
    }
    b->left -= size;
    /* Plain malloc, so decoded envelopes are freed with the default allocator. */
    return malloc(size ? size : 1);
}

static void nu__budget_free(void *data, void *ptr)
{
    (void)data;
    free(ptr);
}

/* ---- limits table --------------------------------------------------------- */

enum nu__kind {
    NU__K_ID,    /* string: [A-Za-z0-9._-] */
    NU__K_TOKEN, /* string: printable ASCII, no space */
    NU__K_TEXT,  /* string: UTF-8, no control characters */
    NU__K_BYTES, /* bytes: length bounds (exact when min == max) */
    NU__K_COUNT, /* repeated message or scalar: only the count is capped */
};

struct nu__rule {
    const ProtobufCMessageDescriptor *msg;
    const char *field;
    const char *path; /* "Type.field": the static detail reported */
    enum nu__kind kind;
    uint32_t min, max; /* length of one value (each element when repeated) */
    uint32_t count;    /* repeated fields: element cap */
};

#define NU__R(T, t, f, kind, min, max, count)                                                      \
    {                                                                                              \
        &nusec__v1__##t##__descriptor, #f, #T "." #f, kind, min, max, count                        \
    }
/* Identifier; min 1 = required, 0 = optional. */
#define NU__ID(T, t, f, min) NU__R(T, t, f, NU__K_ID, min, NU_ENVELOPE_ID_MAX, 0)
#define NU__TEXT(T, t, f, max) NU__R(T, t, f, NU__K_TEXT, 0, max, 0)
#define NU__TOKEN(T, t, f) NU__R(T, t, f, NU__K_TOKEN, 1, NU_ENVELOPE_TOKEN_MAX, 0)
#define NU__BYTES(T, t, f, min, max) NU__R(T, t, f, NU__K_BYTES, min, max, 0)
#define NU__BYTES_N(T, t, f, min, max, n) NU__R(T, t, f, NU__K_BYTES, min, max, n)
#define NU__COUNT(T, t, f, n) NU__R(T, t, f, NU__K_COUNT, 0, 0, n)

#define NU__TXT NU_ENVELOPE_TEXT_MAX
#define NU__UID NU_ENVELOPE_UID_MAX
#define NU__DIG NU_ENVELOPE_DIGEST_MAX
#define NU__KEY NU_ENVELOPE_PUBKEY_MAX

/*
 * Every string, bytes and repeated field of the schema, once. A field that
 * is missing here gets the conservative defaults of nu__rule_default(), and
 * test_envelope fails until it is added, so new fields get a decision.
 */
static const struct nu__rule nu__rules[] = {
    NU__BYTES(Header, header, message_id, NU_ENVELOPE_MESSAGE_ID_LEN, NU_ENVELOPE_MESSAGE_ID_LEN),
    NU__ID(Header, header, sender_id, 1),
    NU__BYTES(Header, header, correlation_id, 0, NU_ENVELOPE_KEY_MAX),
    NU__BYTES(Header, header, idempotency_key, 0, NU_ENVELOPE_KEY_MAX),

    NU__TEXT(Error, error, detail, NU__TXT),
    NU__ID(Error, error, op, 0),
    NU__TEXT(Ack, ack, detail, NU__TXT),
    NU__ID(Event, event, kind, 1),
    NU__ID(Event, event, job_id, 0),
    NU__TEXT(Event, event, detail, NU__TXT),

    NU__ID(EnrollTokenRequest, enroll_token_request, programmer_id, 1),
    NU__ID(EnrollTokenResponse, enroll_token_response, programmer_id, 1),
    NU__TOKEN(EnrollTokenResponse, enroll_token_response, token),
    NU__ID(EnrollRequest, enroll_request, programmer_id, 1),
    NU__TOKEN(EnrollRequest, enroll_request, token),
    NU__BYTES(EnrollRequest, enroll_request, csr_der, 1, NU_ENVELOPE_CSR_MAX),
    NU__BYTES(EnrollRequest, enroll_request, package_pubkey, 65, 65), /* uncompressed P-256 */
    NU__BYTES(EnrollRequest, enroll_request, firmware_hash, 0, NU__DIG),
    NU__BYTES(EnrollRequest, enroll_request, attestation_statement, 0, 1024),
    NU__BYTES(EnrollRequest, enroll_request, attestation_signature, 0, 72),
    NU__BYTES(EnrollRequest, enroll_request, attestation_cert_der, 0, NU_ENVELOPE_CERT_MAX),
    NU__BYTES(EnrollRequest, enroll_request, boot_manifest, 0, 4096),
    NU__ID(EnrollChallengeRequest, enroll_challenge_request, programmer_id, 1),
    NU__TOKEN(EnrollChallengeRequest, enroll_challenge_request, token),
    NU__ID(EnrollChallenge, enroll_challenge, programmer_id, 1),
    NU__BYTES(EnrollChallenge, enroll_challenge, nonce, 32, 32),
    NU__ID(EnrollResponse, enroll_response, programmer_id, 1),
    NU__BYTES(EnrollResponse, enroll_response, certificate_der, 1, NU_ENVELOPE_CERT_MAX),
    NU__BYTES_N(EnrollResponse, enroll_response, chain_der, 1, NU_ENVELOPE_CERT_MAX,
                NU_ENVELOPE_CHAIN_MAX),
    NU__BYTES(EnrollResponse, enroll_response, package_signing_pubkey, 0, NU__KEY),
    NU__BYTES(EnrollResponse, enroll_response, rotpk, 0, NU__KEY),
    NU__ID(ProgrammerRevokeRequest, programmer_revoke_request, programmer_id, 1),
    NU__TEXT(ProgrammerRevokeRequest, programmer_revoke_request, reason, NU__TXT),
    /* 64 hex digits; the cloud checks the exact form. */
    NU__ID(ProgrammerFirmwareRevokeRequest, programmer_firmware_revoke_request, measurement, 1),
    NU__TEXT(ProgrammerFirmwareRevokeRequest, programmer_firmware_revoke_request, reason, NU__TXT),
    NU__COUNT(ProgrammerList, programmer_list, programmers, NU_ENVELOPE_LIST_MAX),
    NU__ID(ProgrammerInfo, programmer_info, programmer_id, 1),
    NU__ID(ProgrammerInfo, programmer_info, state, 0),
    NU__ID(ProgrammerInfo, programmer_info, certificate_serial, 0),
    NU__ID(ProgrammerInfo, programmer_info, vendor_serial, 0),
    NU__ID(ProgrammerInfo, programmer_info, firmware_measurement, 0),

    NU__ID(JobCreateRequest, job_create_request, firmware, 1),
    NU__COUNT(JobCreateRequest, job_create_request, allocations, NU_ENVELOPE_ALLOC_MAX),
    NU__TEXT(JobCreateRequest, job_create_request, subject_template, 256),
    NU__BYTES_N(JobCreateResponse, job_create_response, packages, 1, NU_ENVELOPE_PACKAGE_MAX,
                NU_ENVELOPE_ALLOC_MAX),
    NU__ID(JobControlRequest, job_control_request, job_id, 1),
    NU__ID(JobControlRequest, job_control_request, programmer_id, 0),
    NU__ID(JobListRequest, job_list_request, job_id, 0),
    NU__ID(JobState, job_state, job_id, 1),
    NU__ID(JobState, job_state, firmware, 0),
    NU__COUNT(JobState, job_state, allocations, NU_ENVELOPE_ALLOC_MAX),
    NU__COUNT(JobState, job_state, issued_per_programmer, NU_ENVELOPE_ALLOC_MAX),
    NU__COUNT(JobList, job_list, jobs, NU_ENVELOPE_LIST_MAX),
    NU__ID(ProgrammerAllocation, programmer_allocation, programmer_id, 1),

    NU__ID(FirmwareSignRequest, firmware_sign_request, name, 1),
    NU__ID(FirmwareSignRequest, firmware_sign_request, version, 1),
    NU__BYTES(FirmwareSignRequest, firmware_sign_request, payload, 1, NU_ENVELOPE_MAX),
    NU__ID(FirmwareSignResponse, firmware_sign_response, image_name, 1),
    NU__BYTES(FirmwareSignResponse, firmware_sign_response, image, 1, NU_ENVELOPE_MAX),
    NU__BYTES(FirmwareSignResponse, firmware_sign_response, rotpk_pem, 0, NU__KEY),
    NU__BYTES(FirmwareSignResponse, firmware_sign_response, image_digest, 0, NU__DIG),
    NU__ID(FirmwareManifestRequest, firmware_manifest_request, job_id, 1),
    NU__BYTES(FirmwareManifestRequest, firmware_manifest_request, token, 1, NU_ENVELOPE_TOKEN_MAX),
    NU__ID(FirmwareManifest, firmware_manifest, job_id, 1),
    NU__ID(FirmwareManifest, firmware_manifest, image_name, 1),
    NU__BYTES(FirmwareManifest, firmware_manifest, image_digest, 0, NU__DIG),
    NU__ID(FirmwareChunkRequest, firmware_chunk_request, job_id, 1),
    NU__BYTES(FirmwareChunkRequest, firmware_chunk_request, token, 1, NU_ENVELOPE_TOKEN_MAX),
    NU__ID(FirmwareChunk, firmware_chunk, job_id, 1),
    NU__BYTES(FirmwareChunk, firmware_chunk, nonce, 0, 16),
    NU__BYTES(FirmwareChunk, firmware_chunk, ciphertext, 16, NU_ENVELOPE_CHUNK_MAX),
    NU__COUNT(FirmwareList, firmware_list, images, NU_ENVELOPE_LIST_MAX),
    NU__ID(FirmwareInfo, firmware_info, image_name, 1),
    NU__BYTES(FirmwareInfo, firmware_info, image_digest, 0, NU__DIG),

    NU__ID(CertificateRequest, certificate_request, job_id, 1),
    NU__BYTES(CertificateRequest, certificate_request, device_uid, 1, NU__UID),
    NU__BYTES(CertificateRequest, certificate_request, csr_der, 1, NU_ENVELOPE_CSR_MAX),
    NU__ID(CertificateIssued, certificate_issued, job_id, 1),
    NU__BYTES(CertificateIssued, certificate_issued, device_uid, 1, NU__UID),
    NU__BYTES(CertificateIssued, certificate_issued, certificate_der, 1, NU_ENVELOPE_CERT_MAX),
    NU__ID(CertificateIssued, certificate_issued, serial, 1),
    NU__ID(CertificateRefused, certificate_refused, job_id, 0),
    NU__BYTES(CertificateRefused, certificate_refused, device_uid, 0, NU__UID),
    NU__BYTES(DeviceRevokeRequest, device_revoke_request, device_uid, 1, NU__UID),
    NU__ID(DeviceRevokeRequest, device_revoke_request, job_id, 0),
    NU__TEXT(DeviceRevokeRequest, device_revoke_request, reason, NU__TXT),
    NU__ID(DeviceListRequest, device_list_request, job_id, 0),
    NU__BYTES(DeviceListRequest, device_list_request, device_uid, 0, NU__UID),
    NU__TEXT(DeviceListRequest, device_list_request, page_after, 96), /* "ms:serial" cursor */
    NU__COUNT(DeviceList, device_list, devices, NU_ENVELOPE_LIST_MAX),
    NU__TEXT(DeviceList, device_list, next_page, 96),
    NU__ID(DeviceCertificate, device_certificate, job_id, 1),
    NU__BYTES(DeviceCertificate, device_certificate, device_uid, 1, NU__UID),
    NU__ID(DeviceCertificate, device_certificate, serial, 0),
    NU__BYTES(DeviceCertificate, device_certificate, certificate_der, 0, NU_ENVELOPE_CERT_MAX),
    NU__ID(DeviceCertificate, device_certificate, state, 0),
    NU__ID(DeviceCertificate, device_certificate, programmer_id, 0),
    NU__BYTES(DeviceCrl, device_crl, crl_der, 1, NU_ENVELOPE_CRL_MAX),
    NU__ID(DeviceReport, device_report, job_id, 1),
    NU__BYTES(DeviceReport, device_report, device_uid, 0, NU__UID),
    NU__ID(DeviceReport, device_report, serial, 0),
    NU__TEXT(DeviceReport, device_report, detail, NU__TXT),

    NU__BYTES(PackageDelivery, package_delivery, sealed_package, 1, NU_ENVELOPE_PACKAGE_MAX),
    NU__ID(ProductionCommand, production_command, job_id, 0),
    NU__ID(ProgrammerStatus, programmer_status, programmer_id, 1),
    NU__ID(ProgrammerStatus, programmer_status, job_id, 0),
    NU__COUNT(ProgrammerStatus, programmer_status, sockets, NU_ENVELOPE_SOCKETS_MAX),
    NU__ID(ProgrammerStatus, programmer_status, firmware_version, 0),
    NU__ID(SocketStatus, socket_status, state, 0),

    NU__ID(LeaseGrantRequest, lease_grant_request, job_id, 1),
    NU__BYTES(LeaseGrantRequest, lease_grant_request, line_ca_csr_der, 1, NU_ENVELOPE_CSR_MAX),
    NU__ID(LeaseGrant, lease_grant, lease_id, 1),
    NU__ID(LeaseGrant, lease_grant, job_id, 1),
    NU__BYTES(LeaseGrant, lease_grant, line_ca_cert_der, 1, NU_ENVELOPE_CERT_MAX),
    NU__BYTES(LeaseIssued, lease_issued, device_uid, 1, NU__UID),
    NU__BYTES(LeaseIssued, lease_issued, certificate_der, 1, NU_ENVELOPE_CERT_MAX),
    NU__BYTES(LeaseIssued, lease_issued, supersedes_idempotency_key, 0, NU_ENVELOPE_KEY_MAX),
    NU__ID(LeaseUploadRequest, lease_upload_request, lease_id, 1),
    NU__COUNT(LeaseUploadRequest, lease_upload_request, issued, 64),
    NU__ID(LeaseUploadResponse, lease_upload_response, lease_id, 0),
};

#define NU__NRULES (sizeof(nu__rules) / sizeof(nu__rules[0]))

/*
 * A rule is looked up for every field of every message decoded or checked;
 * a linear scan of the whole table was half of decoding's time (profile of
 * fuzz_envelope). So the table is sorted once by (message, field) into an
 * index of pointers (immutable once built) and searched by bisection.
 */
static const struct nu__rule *nu__rule_index[NU__NRULES];
static pthread_once_t nu__rule_index_once = PTHREAD_ONCE_INIT;

static int nu__rule_cmp(const ProtobufCMessageDescriptor *msg, const char *field,
                        const struct nu__rule *r)
{
    if (msg != r->msg)
        return (uintptr_t)msg < (uintptr_t)r->msg ? -1 : 1;
    return strcmp(field, r->field);
}

static int nu__rule_sort_cmp(const void *a, const void *b)
{
    const struct nu__rule *x = *(const struct nu__rule *const *)a;
    return nu__rule_cmp(x->msg, x->field, *(const struct nu__rule *const *)b);
}

static void nu__rule_index_build(void)
{
    for (size_t i = 0; i < NU__NRULES; i++)
        nu__rule_index[i] = &nu__rules[i];
    qsort(nu__rule_index, NU__NRULES, sizeof(nu__rule_index[0]), nu__rule_sort_cmp);
}

static const struct nu__rule *nu__rule_find(const ProtobufCMessageDescriptor *msg,
                                            const char *field)
{
    size_t lo = 0, hi = NU__NRULES;
    pthread_once(&nu__rule_index_once, nu__rule_index_build);
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = nu__rule_cmp(msg, field, nu__rule_index[mid]);
        if (c == 0)
            return nu__rule_index[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

/* Conservative limits for a field the table forgot (test_envelope flags it). */
static void nu__rule_default(const ProtobufCFieldDescriptor *f, struct nu__rule *out)
{
    memset(out, 0, sizeof(*out));
    out->field = f->name;
    out->path = f->name;
    out->kind = f->type == PROTOBUF_C_TYPE_STRING  ? NU__K_TEXT
                : f->type == PROTOBUF_C_TYPE_BYTES ? NU__K_BYTES
                                                   : NU__K_COUNT;
    out->max = 1024;
    out->count = 64;
}

static int nu__fail(int rc, const char *detail, const char **out_detail)
{
    if (out_detail)
        *out_detail = detail;
    return rc;
}

/* ---- string checks -------------------------------------------------------- */

static int nu__is_id_char(unsigned char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

/*
 * Length (1..4) of the well-formed UTF-8 sequence at s[0..n), 0 if it is
 * not one (overlong forms, surrogates and values above U+10FFFF included).
 */
static size_t nu__utf8_seq(const unsigned char *s, size_t n, uint32_t *out_cp)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp, lo = 0x80, hi = 0xbf;

    if (c < 0x80) {
        *out_cp = c;
        return 1;
    }
    if (c >= 0xc2 && c <= 0xdf) {
        len = 2;
        cp = c & 0x1f;
    } else if (c >= 0xe0 && c <= 0xef) {
        len = 3;
        cp = c & 0x0f;
        lo = c == 0xe0 ? 0xa0 : 0x80; /* overlong */
        hi = c == 0xed ? 0x9f : 0xbf; /* surrogates */
    } else if (c >= 0xf0 && c <= 0xf4) {
        len = 4;
        cp = c & 0x07;
        lo = c == 0xf0 ? 0x90 : 0x80; /* overlong */
        hi = c == 0xf4 ? 0x8f : 0xbf; /* > U+10FFFF */
    } else {
        return 0;
    }
    if (n < len || s[1] < lo || s[1] > hi)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if (i > 1 && (s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3f);
    }
    *out_cp = cp;
    return len;
}

/* C0, DEL and C1: what terminals and log parsers interpret. */
static int nu__is_control(uint32_t cp)
{
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f);
}

static int nu__text_ok(const char *s, size_t n)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0;
    while (i < n) {
        uint32_t cp;
        size_t len = nu__utf8_seq(p + i, n - i, &cp);
        if (len == 0 || nu__is_control(cp))
            return 0;
        i += len;
    }
    return 1;
}

static int nu__check_string(const char *s, const struct nu__rule *r, const char **out_detail)
{
    if (!s)
        s = "";
    size_t n = strnlen(s, (size_t)r->max + 1);
    if (n > r->max)
        return nu__fail(NU_ERR_TOO_LARGE, r->path, out_detail);
    if (n < r->min)
        return nu__fail(NU_ERR_INVALID_ARG, r->path, out_detail);
    for (size_t i = 0; i < n && r->kind != NU__K_TEXT; i++) {
        unsigned char c = (unsigned char)s[i];
        int ok = r->kind == NU__K_ID ? nu__is_id_char(c) : (c > 0x20 && c < 0x7f);
        if (!ok)
            return nu__fail(NU_ERR_INVALID_ARG, r->path, out_detail);
    }
    if (r->kind == NU__K_TEXT && !nu__text_ok(s, n))
        return nu__fail(NU_ERR_INVALID_ARG, r->path, out_detail);
    return NU_OK;
}

static int nu__check_bytes(const ProtobufCBinaryData *b, const struct nu__rule *r,
                           const char **out_detail)
{
    if (b->len > 0 && !b->data)
        return nu__fail(NU_ERR_INVALID_ARG, r->path, out_detail);
    /* An exact-length field (message id, public key) is malformed, not oversize. */
    if (r->min == r->max && b->len != r->min)
        return nu__fail(NU_ERR_INVALID_ARG, r->path, out_detail);
    if (b->len > r->max)
        return nu__fail(NU_ERR_TOO_LARGE, r->path, out_detail);
    if (b->len < r->min)
        return nu__fail(NU_ERR_INVALID_ARG, r->path, out_detail);
    return NU_OK;
}

/* ---- the validator -------------------------------------------------------- */

static int nu__check_msg(const ProtobufCMessage *m, const ProtobufCMessageDescriptor *d,
                         unsigned depth, const char **out_detail);

static int nu__check_value(const ProtobufCFieldDescriptor *f, const struct nu__rule *r,
                           const void *v, unsigned depth, const char **out_detail)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING:
        return nu__check_string(*(const char *const *)v, r, out_detail);
    case PROTOBUF_C_TYPE_BYTES:
        return nu__check_bytes(v, r, out_detail);
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)v;
        return sub ? nu__check_msg(sub, f->descriptor, depth + 1, out_detail) : NU_OK;
    }
    default:
        return NU_OK; /* scalars and enums: any value (see "Growth" in the header) */
    }
}

static size_t nu__elem_size(ProtobufCType type)
{
    switch (type) {
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    default:
        return 0; /* scalars are not inspected element by element */
    }
}

static int nu__check_repeated(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                              const struct nu__rule *r, unsigned depth, const char **out_detail)
{
    size_t n = *(const size_t *)((const char *)m + f->quantifier_offset);
    const char *arr = *(const char *const *)((const char *)m + f->offset);
    size_t size = nu__elem_size(f->type);

    if (n > r->count)
        return nu__fail(NU_ERR_TOO_LARGE, r->path, out_detail);
    if (n > 0 && !arr)
        return nu__fail(NU_ERR_INVALID_ARG, r->path, out_detail);
    for (size_t i = 0; size > 0 && i < n; i++) {
        const void *elem = arr + i * size;
        /* A NULL element would be skipped by pack but is a caller bug. */
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && !*(const void *const *)elem)
            return nu__fail(NU_ERR_INVALID_ARG, r->path, out_detail);
        int rc = nu__check_value(f, r, elem, depth, out_detail);
        if (rc != NU_OK)
            return rc;
    }
    return NU_OK;
}

static int nu__check_field(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                           unsigned depth, const char **out_detail)
{
    const void *member = (const char *)m + f->offset;
    const struct nu__rule *r = nu__rule_find(m->descriptor, f->name);
    struct nu__rule fallback;

    if (!r) {
        nu__rule_default(f, &fallback);
        r = &fallback;
    }
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t which = *(const uint32_t *)((const char *)m + f->quantifier_offset);
        if (which != f->id)
            return NU_OK;
        /* A selected member that is absent would be silently dropped by pack. */
        if (f->type == PROTOBUF_C_TYPE_MESSAGE && !*(const void *const *)member)
            return nu__fail(NU_ERR_INVALID_ARG, f->name, out_detail);
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return nu__check_repeated(m, f, r, depth, out_detail);
    return nu__check_value(f, r, member, depth, out_detail);
}

static int nu__check_msg(const ProtobufCMessage *m, const ProtobufCMessageDescriptor *d,
                         unsigned depth, const char **out_detail)
{
    if (depth > NU_ENVELOPE_MAX_DEPTH)
        return nu__fail(NU_ERR_TOO_LARGE, "nesting depth", out_detail);
    if (m->descriptor != d)
        return nu__fail(NU_ERR_INVALID_ARG, d->short_name, out_detail);
    if (m->n_unknown_fields > 0 && !m->unknown_fields)
        return nu__fail(NU_ERR_INVALID_ARG, d->short_name, out_detail);
    for (unsigned i = 0; i < d->n_fields; i++) {
        int rc = nu__check_field(m, &d->fields[i], depth, out_detail);
        if (rc != NU_OK)
            return rc;
    }
    return NU_OK;
}

/* An unknown field numbered like a body member: a body type from a newer peer. */
static int nu__has_unknown_body(const Nusec__V1__Envelope *env)
{
    for (size_t i = 0; i < env->base.n_unknown_fields; i++) {
        if (env->base.unknown_fields[i].tag >= NUSEC__V1__ENVELOPE__BODY_ERROR)
            return 1;
    }
    return 0;
}

static const ProtobufCFieldDescriptor *nu__body_field(const Nusec__V1__Envelope *env)
{
    const ProtobufCFieldDescriptor *f;
    if (env->body_case == NUSEC__V1__ENVELOPE__BODY__NOT_SET)
        return NULL;
    f = protobuf_c_message_descriptor_get_field(&nusec__v1__envelope__descriptor,
                                                (unsigned)env->body_case);
    return f && (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) ? f : NULL;
}

static int nu__check_envelope(const Nusec__V1__Envelope *env, const char **out_detail)
{
    const ProtobufCFieldDescriptor *body;

    if (!env || env->base.descriptor != &nusec__v1__envelope__descriptor)
        return nu__fail(NU_ERR_INVALID_ARG, "Envelope", out_detail);
    if (env->base.n_unknown_fields > 0 && !env->base.unknown_fields)
        return nu__fail(NU_ERR_INVALID_ARG, "Envelope", out_detail);
    if (!env->header)
        return nu__fail(NU_ERR_INVALID_ARG, "Envelope.header", out_detail);
    if (env->header->base.descriptor != &nusec__v1__header__descriptor)
        return nu__fail(NU_ERR_INVALID_ARG, "Envelope.header", out_detail);
    if (env->header->protocol != NU_ENVELOPE_PROTOCOL)
        return nu__fail(NU_ERR_NOT_SUPPORTED, "Header.protocol", out_detail);
    body = nu__body_field(env);
    if (!body || !*(const void *const *)((const char *)env + body->offset)) {
        if (nu__has_unknown_body(env))
            return nu__fail(NU_ERR_NOT_SUPPORTED, "Envelope.body (unknown type)", out_detail);
        return nu__fail(NU_ERR_INVALID_ARG, "Envelope.body", out_detail);
    }
    return nu__check_msg(&env->base, &nusec__v1__envelope__descriptor, 1, out_detail);
}

/* ---- wire pre-scan ---------------------------------------------------------- */

/*
 * Before protobuf-c allocates anything, walk the wire form once, without
 * allocating, and refuse what would make it allocate for nothing or would
 * decode ambiguously:
 *   - a repeated field with more elements than its cap (protobuf-c counts
 *     them first and allocates the whole array at once);
 *   - more than NU__UNKNOWN_MAX unknown fields in one message;
 *   - a singular field, or a second member of a oneof, given twice (protobuf
 *     would merge or keep the last; canonical encoders never emit that, and
 *     a log reading the first while the code acts on the last is a trap);
 *   - a NUL byte inside a string (protobuf-c returns NUL-terminated strings,
 *     so "prog1\0evil" would silently read as "prog1").
 * Recursion follows only message fields of the schema, so its depth is the
 * schema's; anything nested elsewhere is skipped as a length.
 */
#define NU__UNKNOWN_MAX 1024u
#define NU__SCAN_FIELDS 64u /* fields per message we keep counters for */

static int nu__varint(const uint8_t *p, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64 && *pos < len; shift += 7) {
        uint8_t b = p[(*pos)++];
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return NU_OK;
        }
    }
    return NU_ERR_DECODE;
}

/* Step over the value of wire type `wt`; for length-delimited values leave
 * *pos at the payload and its length in *out_n. */
static int nu__wire_value(const uint8_t *p, size_t len, size_t *pos, unsigned wt, uint64_t *out_n)
{
    uint64_t n = 0;
    *out_n = 0;
    switch (wt) {
    case 0:
        return nu__varint(p, len, pos, &n);
    case 1:
    case 5:
        n = wt == 1 ? 8 : 4;
        if (len - *pos < n)
            return NU_ERR_DECODE;
        *pos += n;
        return NU_OK;
    case 2:
        if (nu__varint(p, len, pos, &n) != NU_OK || n > len - *pos)
            return NU_ERR_DECODE;
        *out_n = n;
        return NU_OK;
    default: /* groups (3, 4) are not protobuf 3; 6, 7 do not exist */
        return NU_ERR_DECODE;
    }
}

/* Elements in a packed repeated scalar payload, as protobuf-c counts them. */
static uint64_t nu__packed_count(ProtobufCType type, const uint8_t *p, size_t n)
{
    uint64_t count = 0;
    switch (type) {
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_FLOAT:
        return n / 4;
    case PROTOBUF_C_TYPE_FIXED64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_DOUBLE:
        return n / 8;
    case PROTOBUF_C_TYPE_BOOL:
        return n;
    default:
        for (size_t i = 0; i < n; i++)
            count += !(p[i] & 0x80);
        return count;
    }
}

static int nu__is_packable(ProtobufCType type)
{
    return type != PROTOBUF_C_TYPE_STRING && type != PROTOBUF_C_TYPE_BYTES &&
           type != PROTOBUF_C_TYPE_MESSAGE;
}

/* 1 if another member of f's oneof was already seen in this message. */
static int nu__oneof_taken(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f,
                           const uint32_t *counts)
{
    if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
        return 0;
    for (unsigned i = 0; i < d->n_fields && i < NU__SCAN_FIELDS; i++) {
        const ProtobufCFieldDescriptor *g = &d->fields[i];
        if (g != f && (g->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            g->quantifier_offset == f->quantifier_offset && counts[i] > 0)
            return 1;
    }
    return 0;
}

static int nu__count_field(const ProtobufCMessageDescriptor *d, const ProtobufCFieldDescriptor *f,
                           uint32_t *counts, unsigned wt, const uint8_t *data, size_t n,
                           const char **out_detail)
{
    size_t idx = (size_t)(f - d->fields);
    const struct nu__rule *r = nu__rule_find(d, f->name);
    const char *path = r ? r->path : f->name;
    uint64_t add = 1, cap = r ? r->count : 64;

    if (idx >= NU__SCAN_FIELDS)
        return NU_OK; /* not counted here; the validator still checks it */
    if (f->label != PROTOBUF_C_LABEL_REPEATED) {
        if (counts[idx] > 0 || nu__oneof_taken(d, f, counts))
            return nu__fail(NU_ERR_DECODE, path, out_detail);
        counts[idx] = 1;
        return NU_OK;
    }
    if (wt == 2 && nu__is_packable(f->type))
        add = nu__packed_count(f->type, data, n);
    if (add > cap - counts[idx]) /* counts[idx] <= cap always holds */
        return nu__fail(NU_ERR_TOO_LARGE, path, out_detail);
    counts[idx] += (uint32_t)add;
    return NU_OK;
}

static int nu__prescan(const ProtobufCMessageDescriptor *d, const uint8_t *p, size_t len,
                       unsigned depth, const char **out_detail)
{
    uint32_t counts[NU__SCAN_FIELDS] = {0};
    uint32_t unknown = 0;
    size_t pos = 0;

    if (depth > NU_ENVELOPE_MAX_DEPTH)
        return nu__fail(NU_ERR_TOO_LARGE, "nesting depth", out_detail);
    while (pos < len) {
        uint64_t key, n;
        unsigned wt;
        const ProtobufCFieldDescriptor *f = NULL;
        int rc;

        if (nu__varint(p, len, &pos, &key) != NU_OK || (key >> 3) == 0 || (key >> 3) > 0x1fffffff)
            return nu__fail(NU_ERR_DECODE, d->short_name, out_detail);
        wt = (unsigned)(key & 7);
        if (nu__wire_value(p, len, &pos, wt, &n) != NU_OK)
            return nu__fail(NU_ERR_DECODE, d->short_name, out_detail);
        f = protobuf_c_message_descriptor_get_field(d, (unsigned)(key >> 3));
        if (!f) {
            if (++unknown > NU__UNKNOWN_MAX)
                return nu__fail(NU_ERR_TOO_LARGE, "unknown fields", out_detail);
            pos += n;
            continue;
        }
        rc = nu__count_field(d, f, counts, wt, p + pos, n, out_detail);
        if (rc == NU_OK && wt == 2 && f->type == PROTOBUF_C_TYPE_STRING && memchr(p + pos, 0, n)) {
            const struct nu__rule *r = nu__rule_find(d, f->name);
            rc = nu__fail(NU_ERR_INVALID_ARG, r ? r->path : f->name, out_detail);
        }
        if (rc == NU_OK && wt == 2 && f->type == PROTOBUF_C_TYPE_MESSAGE)
            rc = nu__prescan(f->descriptor, p + pos, n, depth + 1, out_detail);
        if (rc != NU_OK)
            return rc;
        pos += n;
    }
    return NU_OK;
}

/* ---- public: decode, encode ------------------------------------------------ */

int nu_envelope_unpack(const uint8_t *buf, size_t len, Nusec__V1__Envelope **out_env,
                       const char **out_detail)
{
    struct nu__budget budget = {.left = NU__BUDGET_BASE + NU__BUDGET_FACTOR * len};
    ProtobufCAllocator alloc = {nu__budget_alloc, nu__budget_free, &budget};
    Nusec__V1__Envelope *env = NULL;
    int rc;

    if (out_env)
        *out_env = NULL;
    if (!out_env || (!buf && len > 0))
        return nu__fail(NU_ERR_INVALID_ARG, "arguments", out_detail);
    /* Before parsing: the length is the one thing we can check for free. */
    if (len > NU_ENVELOPE_MAX)
        return nu__fail(NU_ERR_TOO_LARGE, "envelope size", out_detail);
    if (len == 0)
        return nu__fail(NU_ERR_DECODE, "empty input", out_detail);

    rc = nu__prescan(&nusec__v1__envelope__descriptor, buf, len, 1, out_detail);
    if (rc != NU_OK)
        return rc;
    env = nusec__v1__envelope__unpack(&alloc, len, buf);
    if (!env) {
        if (budget.exhausted)
            return nu__fail(NU_ERR_TOO_LARGE, "decoder memory budget", out_detail);
        return nu__fail(NU_ERR_DECODE, "protobuf", out_detail);
    }
    rc = nu__check_envelope(env, out_detail);
    if (rc != NU_OK)
        goto out;
    *out_env = env;
    env = NULL;
    if (out_detail)
        *out_detail = NULL;
out:
    nu_envelope_free(env);
    return rc;
}

int nu_envelope_validate(const Nusec__V1__Envelope *env, const char **out_detail)
{
    int rc = nu__check_envelope(env, out_detail);
    if (rc == NU_OK && out_detail)
        *out_detail = NULL;
    return rc;
}

int nu_envelope_pack(const Nusec__V1__Envelope *env, uint8_t **out_buf, size_t *out_len,
                     const char **out_detail)
{
    uint8_t *buf = NULL;
    size_t size;
    int rc;

    if (out_buf)
        *out_buf = NULL;
    if (out_len)
        *out_len = 0;
    if (!out_buf || !out_len)
        return nu__fail(NU_ERR_INVALID_ARG, "arguments", out_detail);
    rc = nu_envelope_validate(env, out_detail);
    if (rc != NU_OK)
        goto out;
    size = protobuf_c_message_get_packed_size(&env->base);
    if (size > NU_ENVELOPE_MAX) {
        rc = nu__fail(NU_ERR_TOO_LARGE, "envelope size", out_detail);
        goto out;
    }
    buf = malloc(size ? size : 1);
    if (!buf) {
        rc = nu__fail(NU_ERR_NOMEM, "envelope buffer", out_detail);
        goto out;
    }
    if (protobuf_c_message_pack(&env->base, buf) != size) {
        rc = nu__fail(NU_ERR_INTERNAL, "protobuf pack", out_detail);
        goto out;
    }
    *out_buf = buf;
    *out_len = size;
    buf = NULL;
out:
    free(buf);
    return rc;
}

void nu_envelope_free(Nusec__V1__Envelope *env)
{
    if (env)
        nusec__v1__envelope__free_unpacked(env, NULL);
}

/* ---- public: body helpers ------------------------------------------------- */

const char *nu_envelope_body_name(const Nusec__V1__Envelope *env)
{
    const ProtobufCFieldDescriptor *f;
    if (!env || env->body_case == NUSEC__V1__ENVELOPE__BODY__NOT_SET)
        return "none";
    f = nu__body_field(env);
    return f ? f->name : "unknown";
}

const ProtobufCMessage *nu_envelope_body(const Nusec__V1__Envelope *env)
{
    const ProtobufCFieldDescriptor *f = env ? nu__body_field(env) : NULL;
    if (!f)
        return NULL;
    return *(const ProtobufCMessage *const *)((const char *)env + f->offset);
}

int nu_envelope_set_body(Nusec__V1__Envelope *env, ProtobufCMessage *body)
{
    const ProtobufCMessageDescriptor *d = &nusec__v1__envelope__descriptor;

    if (!env || !body || !body->descriptor)
        return NU_ERR_INVALID_ARG;
    for (unsigned i = 0; i < d->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &d->fields[i];
        if (!(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) || f->descriptor != body->descriptor)
            continue;
        *(ProtobufCMessage **)((char *)env + f->offset) = body;
        *(uint32_t *)((char *)env + f->quantifier_offset) = f->id;
        return NU_OK;
    }
    return NU_ERR_INVALID_ARG;
}

int nu_envelope_id_check(const char *id)
{
    static const struct nu__rule rule = {NULL, "id", "id", NU__K_ID, 1, NU_ENVELOPE_ID_MAX, 0};
    if (!id)
        return NU_ERR_INVALID_ARG;
    return nu__check_string(id, &rule, NULL);
}

void nu_envelope_text_sanitize(char *text)
{
    unsigned char *p = (unsigned char *)text;
    size_t r = 0, w = 0, n;

    if (!text)
        return;
    n = strlen(text);
    while (r < n) {
        uint32_t cp;
        size_t len = nu__utf8_seq(p + r, n - r, &cp);
        if (len == 0 || nu__is_control(cp)) {
            len = len ? len : 1;
            if (w + 1 > NU_ENVELOPE_TEXT_MAX)
                break;
            p[w++] = '?';
        } else {
            if (w + len > NU_ENVELOPE_TEXT_MAX)
                break;
            memmove(p + w, p + r, len);
            w += len;
        }
        r += len;
    }
    p[w] = '\0';
}

int nu_envelope_field_limit(const ProtobufCMessageDescriptor *msg, const char *field,
                            size_t *out_max_len, size_t *out_max_count)
{
    const struct nu__rule *r;
    if (!msg || !field)
        return NU_ERR_INVALID_ARG;
    r = nu__rule_find(msg, field);
    if (!r)
        return NU_ERR_NOT_FOUND;
    if (out_max_len)
        *out_max_len = r->kind == NU__K_COUNT ? 0 : r->max;
    if (out_max_count)
        *out_max_count = r->count;
    return NU_OK;
}
