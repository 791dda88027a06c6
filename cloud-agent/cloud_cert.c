/*
 * nusec-cloud: device certificates — issuance (cert.request, one ledger
 * transaction per request or per group of requests), listing, revocation,
 * and the programmers' device reports.
 *
 * DEVICE CERTIFICATE profile (signed by the Device CA key in the HSM):
 *   subject   CN = the job's subject template with "{uid}" (device UID as
 *             lower-case hex), "{UID}" (upper-case hex) and "{job}" (job id)
 *             replaced; no template = "{uid}". The result must be 1..63
 *             printable characters (so the UID is at most 31 bytes with the
 *             default template); any other "{...}" is refused.
 *             OU = device, O = NuSEC.
 *   validity  from one hour before issuance (clock skew of verifiers) for 20
 *             years, cut at the Device CA's own notAfter: a device certificate
 *             never outlives its issuer.
 *   keyUsage digitalSignature (critical), extendedKeyUsage clientAuth,
 *   basicConstraints CA:FALSE, 16-byte random serial (nu_x509).
 *
 * HASHES the ledger keeps:
 *   pubkey_hash  = SHA-256 of the device key's DER SubjectPublicKeyInfo
 *                  (`openssl pkey -pubin -outform DER | sha256sum`);
 *   request_hash = SHA-256("nusec/v1 cert.request" || 0x00
 *                  || u32be(len job) || job || u32be(len uid) || uid
 *                  || 65-byte public point): what makes the request, not the
 *                  CSR's signature bytes, which differ on every regeneration.
 *
 * REPLAY: the stored answer is the packed CertificateIssued body, built
 * inside the ledger transaction; a replay (same requester + idempotency key
 * + request hash) unpacks it and sends it in a fresh envelope, so the
 * certificate bytes are identical across retries and restarts.
 */
#include "cloud.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CERT__LIFE_S (20LL * 365 * 24 * 3600 + 5 * 24 * 3600) /* 20 years with leap days */
#define CERT__BACKDATE_S 3600
#define CERT__OU "device"
#define CERT__HASH_DOMAIN "nusec/v1 cert.request"
/* Room kept in a DeviceList for the envelope around it. */
#define CERT__LIST_BUDGET (NU_ENVELOPE_MAX - 16u * 1024u)
/* Requests one worker serves in one ledger transaction. */
#define CERT__BATCH_MAX 32

/* One cert.request on its way through the ledger. */
struct cert__one {
    struct cloud_call *call;
    struct nu_x509_csr_info csr;
    struct cloud_ledger_issue_req req;
    int sign_rc; /* the sign callback's own failure (nothing recorded) */
    uint64_t sign_us; /* time in the HSM signature (metrics) */
};

struct cert__signer {
    struct cloud *cloud;
    int64_t ca_not_after;
    char org[NU_X509_NAME_MAX + 1]; /* the Device CA's O: the OEM's (`pki init --org`) */
};

/* ------------------------------------------------------------ hashes */

static void cert__be32(uint8_t out[4], size_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

static int cert__request_hash(const char *job, const uint8_t *uid, size_t uid_len,
                              const uint8_t pub[NU_P256_PUB_LEN], uint8_t out[NU_SHA256_LEN])
{
    struct nu_sha256_ctx h;
    uint8_t len[4];
    size_t job_len = strlen(job);
    int rc = nu_sha256_init(&h);
    if (!rc)
        rc = nu_sha256_update(&h, CERT__HASH_DOMAIN, sizeof(CERT__HASH_DOMAIN)); /* with NUL */
    cert__be32(len, job_len);
    if (!rc)
        rc = nu_sha256_update(&h, len, 4);
    if (!rc)
        rc = nu_sha256_update(&h, job, job_len);
    cert__be32(len, uid_len);
    if (!rc)
        rc = nu_sha256_update(&h, len, 4);
    if (!rc)
        rc = nu_sha256_update(&h, uid, uid_len);
    if (!rc)
        rc = nu_sha256_update(&h, pub, NU_P256_PUB_LEN);
    if (!rc)
        return nu_sha256_final(&h, out);
    nu_sha256_abort(&h);
    return rc;
}

static int cert__pubkey_hash(const uint8_t pub[NU_P256_PUB_LEN], uint8_t out[NU_SHA256_LEN])
{
    uint8_t der[NU_P256_PUB_DER_LEN];
    size_t len = 0;
    int rc = nu_p256_pub_to_der(pub, der, sizeof(der), &len);
    return rc ? rc : nu_sha256(der, len, out);
}

/* ------------------------------------------------------------ subject */

static int cert__put(char *out, size_t cap, size_t *n, const char *s, size_t len)
{
    if (*n + len >= cap)
        return NU_ERR_INVALID_ARG;
    memcpy(out + *n, s, len);
    *n += len;
    out[*n] = 0;
    return NU_OK;
}

static int cert__put_hex(char *out, size_t cap, size_t *n, const uint8_t *b, size_t len, int upper)
{
    static const char lo[] = "0123456789abcdef", up[] = "0123456789ABCDEF";
    const char *digits = upper ? up : lo;
    for (size_t i = 0; i < len; i++) {
        char two[2] = {digits[b[i] >> 4], digits[b[i] & 15]};
        if (cert__put(out, cap, n, two, 2))
            return NU_ERR_INVALID_ARG;
    }
    return NU_OK;
}

/* The device certificate's CN (see the profile at the top). */
static int cert__subject(const char *tmpl, const char *job, const uint8_t *uid, size_t uid_len,
                         char out[NU_X509_NAME_MAX + 1])
{
    const size_t cap = NU_X509_NAME_MAX + 1;
    size_t n = 0;
    int rc = NU_OK;
    out[0] = 0;
    if (!tmpl || !tmpl[0])
        tmpl = "{uid}";
    for (const char *p = tmpl; *p && !rc;) {
        if (strncmp(p, "{uid}", 5) == 0 || strncmp(p, "{UID}", 5) == 0) {
            rc = cert__put_hex(out, cap, &n, uid, uid_len, p[1] == 'U');
            p += 5;
        } else if (strncmp(p, "{job}", 5) == 0) {
            rc = cert__put(out, cap, &n, job, strlen(job));
            p += 5;
        } else if (*p == '{' || *p == '}') {
            rc = NU_ERR_INVALID_ARG; /* an unknown placeholder is a typo, not text */
        } else {
            rc = cert__put(out, cap, &n, p, 1);
            p++;
        }
    }
    return rc ? rc : (n ? NU_OK : NU_ERR_INVALID_ARG);
}

/* ------------------------------------------------------------ signing */

static int cert__issue(const struct cert__signer *s, const struct cert__one *one, const char *cn,
                       uint8_t **out_der, size_t *out_len)
{
    const struct cloud_keys *k = &s->cloud->keys;
    int64_t now = (int64_t)(one->req.now_ms / 1000);
    struct nu_x509_issue_req ir = {
        .cn = cn,
        .ou = CERT__OU,
        .o = s->org,
        .not_before = now - CERT__BACKDATE_S,
        .not_after = now + CERT__LIFE_S,
        .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        .ext_key_usage = NU_X509_EKU_CLIENT_AUTH,
    };
    if (ir.not_after > s->ca_not_after)
        ir.not_after = s->ca_not_after;
    memcpy(ir.pub, one->csr.pub, sizeof(ir.pub));
    return nu_x509_issue(&ir, nu_hsm_key_signer(k->device_ca), k->device_der, k->device_len,
                         out_der, out_len);
}

/* The reply body, packed into the ledger's buffer (what replays send again). */
static int cert__pack_answer(const struct cloud_ledger_issue_req *req,
                             const struct cloud_ledger_sign_info *info, const char *serial,
                             const uint8_t *der, size_t der_len, struct cloud_ledger_sign_out *out)
{
    Nusec__V1__CertificateIssued ci = NUSEC__V1__CERTIFICATE_ISSUED__INIT;
    ci.job_id = (char *)req->job_id;
    ci.device_uid.data = (uint8_t *)req->device_uid;
    ci.device_uid.len = req->device_uid_len;
    ci.certificate_der.data = (uint8_t *)der;
    ci.certificate_der.len = der_len;
    ci.serial = (char *)serial;
    ci.issued = info->issued;
    ci.quota = info->quota;
    size_t len = protobuf_c_message_get_packed_size(&ci.base);
    if (len > out->response_cap)
        return NU_ERR_TOO_LARGE;
    out->response_len = protobuf_c_message_pack(&ci.base, out->response);
    return NU_OK;
}

/* cloud_ledger_sign_fn: inside the ledger's write transaction. */
static int cert__sign(void *ctx, const struct cloud_ledger_issue_req *req,
                      const struct cloud_ledger_sign_info *info, struct cloud_ledger_sign_out *out)
{
    const struct cert__signer *s = ctx;
    struct cert__one *one = req->user;
    struct nu_x509_cert_info ci;
    char cn[NU_X509_NAME_MAX + 1];
    uint8_t *der = NULL;
    size_t der_len = 0, pem_len = 0;
    char *pem = NULL;
    int rc;
    if (info->resend) {
        rc = nu_x509_pem_to_der(info->pem, strlen(info->pem), NU_X509_PEM_CERT, &der, &der_len,
                                NULL);
        if (!rc)
            rc = cert__pack_answer(req, info, info->serial, der, der_len, out);
        goto out;
    }
    rc = cert__subject(info->subject_template, req->job_id, req->device_uid, req->device_uid_len,
                       cn);
    if (rc) {
        cloud_fail(one->call, rc, "job %s: subject template gives no valid CN for this UID",
                   req->job_id);
        goto out;
    }
    uint64_t t0 = nu_metrics_now_us();
    rc = cert__issue(s, one, cn, &der, &der_len);
    one->sign_us = nu_metrics_now_us() - t0;
    nu_metric_observe_us(s->cloud->metrics.hsm_sign_s, one->sign_us, NULL);
    if (!rc)
        rc = nu_x509_der_to_pem(der, der_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_cert_info(der, der_len, &ci);
    if (!rc && (pem_len >= sizeof(out->pem) || strlen(ci.serial_hex) >= sizeof(out->serial)))
        rc = NU_ERR_TOO_LARGE;
    if (!rc) {
        memcpy(out->pem, pem, pem_len + 1);
        snprintf(out->serial, sizeof(out->serial), "%s", ci.serial_hex);
        rc = cert__pack_answer(req, info, ci.serial_hex, der, der_len, out);
    }
    if (rc && !one->call->detail[0])
        cloud_fail(one->call, rc, "cannot sign the device certificate");
out:
    free(pem);
    free(der);
    one->sign_rc = rc;
    return rc;
}

/* ------------------------------------------------------------ cert.request */

/* Checks that need no ledger: the request is well-formed, the CSR proves its key. */
static int cert__prepare(struct cloud_call *call, struct cert__one *one)
{
    const Nusec__V1__Envelope *env = call->req;
    const Nusec__V1__CertificateRequest *r = env->certificate_request;
    const ProtobufCBinaryData *key = &env->header->idempotency_key;
    memset(one, 0, sizeof(*one));
    one->call = call;
    if (key->len == 0)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "cert.request needs an idempotency key");
    if (nu_envelope_id_check(r->job_id))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "job id is not an identifier");
    if (r->device_uid.len == 0 || r->device_uid.len > CLOUD_LEDGER_UID_MAX)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "device UID must be 1..%d bytes",
                          CLOUD_LEDGER_UID_MAX);
    if (nu_x509_csr_parse_verify(r->csr_der.data, r->csr_der.len, &one->csr))
        return cloud_fail(call, NU_ERR_BAD_CSR, "CSR malformed, not P-256 or badly signed");
    struct cloud_ledger_issue_req *q = &one->req;
    q->requester = call->requester;
    q->idempotency_key = key->data;
    q->idempotency_key_len = key->len;
    q->job_id = r->job_id;
    q->device_uid = r->device_uid.data;
    q->device_uid_len = r->device_uid.len;
    q->now_ms = nu_time_ms();
    q->user = one;
    int rc = cert__request_hash(r->job_id, r->device_uid.data, r->device_uid.len, one->csr.pub,
                                q->request_hash);
    if (!rc)
        rc = cert__pubkey_hash(one->csr.pub, q->pubkey_hash);
    return rc ? cloud_fail(call, rc, "cannot hash the request") : NU_OK;
}

/* Refusals the ledger decided: it has committed their audit event. */
static int cert__ledger_refusal(int code)
{
    switch (code) {
    case NU_ERR_NOT_AUTHORIZED:
    case NU_ERR_REVOKED:
    case NU_ERR_NOT_FOUND:
    case NU_ERR_JOB_NOT_ACTIVE:
    case NU_ERR_EXPIRED:
    case NU_ERR_QUOTA_EXHAUSTED:
    case NU_ERR_DUPLICATE_DEVICE:
    case NU_ERR_IDEMPOTENCY_CONFLICT:
        return 1;
    default:
        return 0;
    }
}

/* Human detail of a refusal (the code is what programs act on). */
static const char *cert__why(int code, const char *job, const struct cloud_ledger_issue_result *res,
                             char *buf, size_t cap)
{
    switch (code) {
    case NU_ERR_QUOTA_EXHAUSTED:
        snprintf(buf, cap, "no quota left for this programmer in job %s (%u of %u issued)", job,
                 res->issued, res->quota);
        break;
    case NU_ERR_NOT_AUTHORIZED:
        snprintf(buf, cap, "no allocation in job %s", job);
        break;
    case NU_ERR_NOT_FOUND:
        snprintf(buf, cap, "no job %s", job);
        break;
    case NU_ERR_JOB_NOT_ACTIVE:
        snprintf(buf, cap, "job %s is paused or closed", job);
        break;
    case NU_ERR_EXPIRED:
        snprintf(buf, cap, "job %s has expired", job);
        break;
    case NU_ERR_DUPLICATE_DEVICE:
        snprintf(buf, cap, "UID already certified in job %s (another key, or revoked)", job);
        break;
    case NU_ERR_IDEMPOTENCY_CONFLICT:
        snprintf(buf, cap, "idempotency key already used for another request");
        break;
    default:
        snprintf(buf, cap, "%s", nu_err_str(code));
    }
    return buf;
}

/* Answer one request from its ledger outcome. */
static int cert__finish(struct cert__one *one, const struct cloud_ledger_issue_result *res)
{
    struct cloud_call *call = one->call;
    int code = res->code;
    if (code == NU_OK) {
        Nusec__V1__CertificateIssued *ci =
            nusec__v1__certificate_issued__unpack(NULL, res->response_len, res->response);
        if (!ci)
            return cloud_fail(call, NU_ERR_INTERNAL, "stored answer unreadable");
        int rc = cloud_reply(call, &ci->base);
        nusec__v1__certificate_issued__free_unpacked(ci, NULL);
        return rc;
    }
    if (one->sign_rc == code)
        return code; /* the callback set the detail; nothing was recorded */
    /* A refusal the ledger recorded, or replayed from its cache: in the chain already. */
    call->audited = res->replayed || cert__ledger_refusal(code);
    char why[CLOUD_DETAIL_MAX - 24];
    return cloud_fail(call, code, "%s%s", cert__why(code, one->req.job_id, res, why, sizeof(why)),
                      res->replayed ? " (answered before)" : "");
}

static void cert__issued_event(struct cloud *cloud, const struct cert__one *one,
                               const struct cloud_ledger_issue_result *res)
{
    const Nusec__V1__CertificateRequest *r = one->call->req->certificate_request;
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    Nusec__V1__DeviceReport rep = NUSEC__V1__DEVICE_REPORT__INIT;
    rep.job_id = r->job_id;
    rep.device_uid = r->device_uid;
    rep.socket = r->socket;
    rep.serial = (char *)res->serial;
    ev.kind = "cert.issued";
    ev.job_id = r->job_id;
    ev.data_case = NUSEC__V1__EVENT__DATA_DEVICE;
    ev.device = &rep;
    if (cloud_publish_event(cloud, &ev))
        nu_warn("event cert.issued for %s not published", res->serial);
}

/* A certificate this request made (not a replay or a resend). */
static int cert__is_new(const struct cloud_ledger_issue_result *res)
{
    return res->code == NU_OK && !res->replayed && !res->resent;
}

/* After the replies: events, then each touched job's state once. */
static void cert__publish(struct cloud *cloud, struct cloud_ledger *ledger, struct cert__one **ones,
                          const struct cloud_ledger_issue_result *res, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (cert__is_new(&res[i]))
            cert__issued_event(cloud, ones[i], &res[i]);
    }
    for (size_t i = 0; i < n; i++) {
        int first = cert__is_new(&res[i]);
        for (size_t j = 0; first && j < i; j++)
            first = !cert__is_new(&res[j]) || strcmp(ones[j]->req.job_id, ones[i]->req.job_id);
        if (first && cloud_publish_job_state(cloud, ledger, ones[i]->req.job_id))
            nu_warn("job %s: state not published", ones[i]->req.job_id);
    }
}

/* What every leaf of this batch takes from the Device CA: its end and its O. */
static int cert__ca_not_after(struct cloud *cloud, struct cert__signer *out)
{
    struct nu_x509_cert_info ca;
    int rc = nu_x509_cert_info(cloud->keys.device_der, cloud->keys.device_len, &ca);
    out->ca_not_after = rc ? 0 : ca.not_after;
    snprintf(out->org, sizeof(out->org), "%s", !rc && ca.o[0] ? ca.o : NU_PKI_ORGANIZATION);
    return rc;
}

/*
 * Serve n cert.requests of one worker: prepare each, decide the good ones in
 * one ledger transaction (group commit: one fsync for all), then answer each
 * and publish. out_rc[i] is calls[i]'s outcome for the frame.
 */
static void cert__serve(struct cloud_call *const *calls, size_t n, int *out_rc)
{
    struct cloud *cloud = calls[0]->cloud;
    struct cloud_ledger *ledger = calls[0]->ledger;
    struct cert__one *ones = calloc(n, sizeof(*ones));
    struct cert__one **ready = calloc(n, sizeof(*ready));
    struct cloud_ledger_issue_req *reqs = calloc(n, sizeof(*reqs));
    struct cloud_ledger_issue_result *res = calloc(n, sizeof(*res));
    struct cert__signer signer = {.cloud = cloud};
    size_t k = 0;
    int rc = (ones && ready && reqs && res) ? NU_OK : NU_ERR_NOMEM;
    if (!rc)
        rc = cert__ca_not_after(cloud, &signer);
    for (size_t i = 0; i < n; i++) {
        out_rc[i] = rc ? rc : cert__prepare(calls[i], &ones[i]);
        if (!out_rc[i]) {
            ready[k] = &ones[i];
            reqs[k++] = ones[i].req;
        }
    }
    if (k) {
        uint64_t t0 = nu_metrics_now_us(), signing = 0;
        if (k == 1)
            cloud_ledger_issue(ledger, &reqs[0], cert__sign, &signer, &res[0]);
        else
            cloud_ledger_issue_batch(ledger, reqs, k, cert__sign, &signer, res);
        /* The ledger's own share: the transaction less the signatures made inside it. */
        for (size_t j = 0; j < k; j++)
            signing += ready[j]->sign_us;
        uint64_t spent = nu_metrics_now_us() - t0;
        nu_metric_observe_us(cloud->metrics.ledger_commit_s, spent > signing ? spent - signing : 0,
                             NULL);
    }
    for (size_t j = 0; j < k; j++) {
        out_rc[ready[j] - ones] = cert__finish(ready[j], &res[j]);
        if (cert__is_new(&res[j]))
            nu_metric_add(cloud->metrics.issued, 1, (const char *[]){ready[j]->req.job_id});
    }
    if (k)
        cert__publish(cloud, ledger, ready, res, k);
    free(res);
    free(reqs);
    free(ready);
    free(ones);
}

static int cert__request(struct cloud_call *call)
{
    int rc = NU_OK;
    cert__serve(&call, 1, &rc);
    return rc;
}

/* ------------------------------------------------------------ device.list */

struct cert__dev {
    Nusec__V1__DeviceCertificate msg;
    char job[CLOUD_LEDGER_ID_MAX + 1];
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    char programmer[CLOUD_LEDGER_ID_MAX + 1];
    uint8_t uid[CLOUD_LEDGER_UID_MAX];
    uint8_t *der;
};

struct cert__list {
    struct cert__dev *devs;
    Nusec__V1__DeviceCertificate **ptrs;
    size_t n, cap, bytes;
    int more; /* a page ended before the list did */
};

static const char *cert__state_name(enum cloud_ledger_cert_state s)
{
    switch (s) {
    case CLOUD_LEDGER_CERT_ISSUED:
        return "issued";
    case CLOUD_LEDGER_CERT_PROVISIONED:
        return "provisioned";
    case CLOUD_LEDGER_CERT_FAILED:
        return "failed";
    case CLOUD_LEDGER_CERT_REVOKED:
        return "revoked";
    }
    return "unknown";
}

static int cert__list_visit(void *ctx, const struct cloud_ledger_cert *c)
{
    struct cert__list *l = ctx;
    size_t fixed = strlen(c->job_id) + strlen(c->serial) + strlen(c->programmer_id) +
                   c->device_uid_len + 52;
    struct cert__dev *d = &l->devs[l->n];
    uint8_t *der = NULL;
    size_t der_len = 0;
    if (l->n == l->cap || l->bytes + fixed > CERT__LIST_BUDGET) {
        l->more = 1;
        return NU_ERR_LIMIT;
    }
    /* Every listed device carries its certificate: the page ends before one
     * that does not fit, and the next page starts with it. */
    int rc = nu_x509_pem_to_der(c->pem, strlen(c->pem), NU_X509_PEM_CERT, &der, &der_len, NULL);
    if (rc != NU_OK) {
        nu_error("device.list: certificate %s in the ledger does not parse", c->serial);
        return rc;
    }
    if (l->bytes + fixed + der_len > CERT__LIST_BUDGET) {
        free(der);
        l->more = 1;
        return NU_ERR_LIMIT;
    }
    nusec__v1__device_certificate__init(&d->msg);
    snprintf(d->job, sizeof(d->job), "%s", c->job_id);
    snprintf(d->serial, sizeof(d->serial), "%s", c->serial);
    memcpy(d->uid, c->device_uid, c->device_uid_len);
    d->msg.job_id = d->job;
    d->msg.serial = d->serial;
    d->msg.device_uid.data = d->uid;
    d->msg.device_uid.len = c->device_uid_len;
    d->msg.state = (char *)cert__state_name(c->state);
    d->msg.issued_at_ms = c->issued_at_ms;
    snprintf(d->programmer, sizeof(d->programmer), "%s", c->programmer_id);
    d->msg.programmer_id = d->programmer;
    d->der = der;
    d->msg.certificate_der.data = der;
    d->msg.certificate_der.len = der_len;
    l->bytes += fixed + der_len;
    l->ptrs[l->n++] = &d->msg;
    return NU_OK;
}

/* page_after / next_page: "ISSUED_AT_MS:SERIAL", opaque to clients. */
static int cert__cursor_parse(const char *text, struct cloud_ledger_cert_cursor *out)
{
    const char *colon = strchr(text, ':');
    char ms[24];
    size_t serial_len = colon ? strlen(colon + 1) : 0;
    if (!colon || colon == text || (size_t)(colon - text) >= sizeof(ms) || serial_len == 0 ||
        serial_len >= sizeof(out->serial))
        return NU_ERR_INVALID_ARG;
    memcpy(ms, text, (size_t)(colon - text));
    ms[colon - text] = '\0';
    if (nu_parse_uint(ms, 0, INT64_MAX, &out->issued_at_ms) != NU_OK)
        return NU_ERR_INVALID_ARG;
    memcpy(out->serial, colon + 1, serial_len + 1);
    for (size_t i = 0; i < serial_len; i++) {
        char ch = out->serial[i];
        if (!((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'f') || (ch >= 'A' && ch <= 'F')))
            return NU_ERR_INVALID_ARG;
    }
    return NU_OK;
}

static int cert__device_list(struct cloud_call *call)
{
    const Nusec__V1__DeviceListRequest *r = call->req->device_list_request;
    const char *job = r->job_id && r->job_id[0] ? r->job_id : NULL;
    const uint8_t *uid = r->device_uid.len ? r->device_uid.data : NULL;
    if (!job && !uid)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "name a job or a device UID");
    if (job && nu_envelope_id_check(job))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "job id is not an identifier");
    if (r->device_uid.len > CLOUD_LEDGER_UID_MAX)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "device UID over %d bytes",
                          CLOUD_LEDGER_UID_MAX);
    struct cloud_ledger_cert_cursor after;
    int paged = r->page_after && r->page_after[0];
    if (paged && cert__cursor_parse(r->page_after, &after) != NU_OK)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "page_after is not a page cursor");
    struct cert__list l = {.cap = NU_ENVELOPE_LIST_MAX};
    char next[24 + CLOUD_LEDGER_SERIAL_MAX + 1] = "";
    if (r->page_size && r->page_size < l.cap)
        l.cap = r->page_size;
    l.devs = calloc(l.cap, sizeof(*l.devs));
    l.ptrs = calloc(l.cap, sizeof(*l.ptrs));
    int rc = (l.devs && l.ptrs) ? NU_OK : NU_ERR_NOMEM;
    if (!rc)
        rc = cloud_ledger_cert_list_after(call->ledger, job, uid, r->device_uid.len,
                                          paged ? &after : NULL, cert__list_visit, &l);
    if (rc == NU_ERR_LIMIT && l.more && l.n) {
        const Nusec__V1__DeviceCertificate *last = l.ptrs[l.n - 1];
        snprintf(next, sizeof(next), "%llu:%s", (unsigned long long)last->issued_at_ms,
                 last->serial);
        rc = NU_OK;
    }
    if (!rc) {
        Nusec__V1__DeviceList resp = NUSEC__V1__DEVICE_LIST__INIT;
        resp.n_devices = l.n;
        resp.devices = l.ptrs;
        resp.next_page = next;
        rc = cloud_reply(call, &resp.base);
    } else {
        rc = cloud_fail(call, rc, "cannot list the devices");
    }
    for (size_t i = 0; l.devs && i < l.n; i++)
        free(l.devs[i].der);
    free(l.ptrs);
    free(l.devs);
    return rc;
}

/* ------------------------------------------------------------ device.revoke */

/* The one job that certified a UID, when the OEM did not name it. */
struct cert__only_job {
    char job[CLOUD_LEDGER_ID_MAX + 1];
    unsigned n;
};

static int cert__only_job_visit(void *ctx, const struct cloud_ledger_cert *c)
{
    struct cert__only_job *o = ctx;
    if (o->n++ == 0)
        snprintf(o->job, sizeof(o->job), "%s", c->job_id);
    return NU_OK;
}

static int cert__device_revoke(struct cloud_call *call)
{
    const Nusec__V1__DeviceRevokeRequest *r = call->req->device_revoke_request;
    const char *reason = r->reason && r->reason[0] ? r->reason : "unspecified";
    struct cert__only_job only = {.n = 0};
    const char *job = r->job_id && r->job_id[0] ? r->job_id : NULL;
    if (job && nu_envelope_id_check(job))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "job id is not an identifier");
    if (r->device_uid.len == 0 || r->device_uid.len > CLOUD_LEDGER_UID_MAX)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "device UID must be 1..%d bytes",
                          CLOUD_LEDGER_UID_MAX);
    /* No job named: the UID's only certificate (a UID may be in several jobs). */
    if (!job) {
        int rc = cloud_ledger_cert_list(call->ledger, NULL, r->device_uid.data, r->device_uid.len,
                                        cert__only_job_visit, &only);
        if (rc)
            return cloud_fail(call, rc, "cannot look the UID up");
        if (only.n == 0)
            return cloud_fail(call, NU_ERR_NOT_FOUND, "no certificate for this UID");
        if (only.n > 1)
            return cloud_fail(call, NU_ERR_INVALID_ARG,
                              "this UID has certificates in %u jobs: name the job", only.n);
        job = only.job;
    }
    struct cloud_ledger_cert_ref ref = {
        .job_id = job,
        .device_uid = r->device_uid.data,
        .device_uid_len = r->device_uid.len,
    };
    int rc = cloud_ledger_cert_revoke(call->ledger, &ref, reason, call->requester, nu_time_ms());
    if (rc == NU_ERR_NOT_FOUND)
        return cloud_fail(call, rc, "no certificate for this UID in job %s", job);
    if (rc == NU_ERR_STATE)
        return cloud_fail(call, rc, "already revoked");
    if (rc)
        return cloud_fail(call, rc, "revocation not recorded");
    /* Recorded: a CRL failure is logged and retried by the tick, not a refusal. */
    (void)cloud_device_crl_update(call->cloud, call->ledger, "device revoked");
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = "device.revoked";
    ev.job_id = (char *)job;
    ev.detail = (char *)reason;
    if (cloud_publish_event(call->cloud, &ev))
        nu_warn("event device.revoked not published");
    Nusec__V1__Ack ack = NUSEC__V1__ACK__INIT;
    ack.detail = (char *)job; /* which certificate went: the job that issued it */
    return cloud_reply(call, &ack.base);
}

/* ------------------------------------------------------------ device reports */

/* Record a programmer's device report (an event, or the body of device.report). */
static int cert__record_report(struct cloud_call *call, int provisioned)
{
    const Nusec__V1__Event *ev = call->req->event;
    const Nusec__V1__DeviceReport *rep =
        ev->data_case == NUSEC__V1__EVENT__DATA_DEVICE ? ev->device : NULL;
    struct cloud_ledger_programmer p;
    char detail[CLOUD_LEDGER_TEXT_MAX + 1];
    if (!rep || rep->device_uid.len == 0 || rep->device_uid.len > CLOUD_LEDGER_UID_MAX)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "no device report");
    const char *job = rep->job_id && rep->job_id[0] ? rep->job_id : ev->job_id;
    if (nu_envelope_id_check(job))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "no job id");
    int rc = cloud_ledger_programmer_get(call->ledger, call->requester, &p);
    if (rc)
        return cloud_fail(call, rc == NU_ERR_NOT_FOUND ? NU_ERR_NOT_AUTHORIZED : rc,
                          "reporter is no programmer");
    if (p.state != CLOUD_LEDGER_PROGRAMMER_ENROLLED)
        return cloud_fail(call, NU_ERR_REVOKED, "reporter is revoked");
    /* cert is large: the ledger struct holds the PEM. */
    struct cloud_ledger_cert *cert = malloc(sizeof(*cert));
    if (!cert)
        return NU_ERR_NOMEM;
    struct cloud_ledger_cert_ref ref = {
        .job_id = job, .device_uid = rep->device_uid.data, .device_uid_len = rep->device_uid.len};
    rc = cloud_ledger_cert_get(call->ledger, &ref, cert);
    if (!rc && strcmp(cert->programmer_id, call->requester) != 0)
        rc = cloud_fail(call, NU_ERR_NOT_AUTHORIZED, "certificate issued to another programmer");
    else if (!rc && rep->serial && rep->serial[0] && strcasecmp(rep->serial, cert->serial) != 0)
        rc = cloud_fail(call, NU_ERR_INVALID_ARG, "serial is not this device's certificate");
    free(cert);
    if (rc)
        return rc;
    snprintf(detail, sizeof(detail), "%s",
             rep->detail && rep->detail[0] ? rep->detail : (ev->detail ? ev->detail : ""));
    nu_envelope_text_sanitize(detail); /* the cut may split a UTF-8 sequence */
    rc = cloud_ledger_cert_report(call->ledger, &ref, provisioned, detail, call->requester,
                                  nu_time_ms());
    return rc ? cloud_fail(call, rc, "report not recorded") : NU_OK;
}

/* The event: recorded once (redelivery is not recorded again), nothing answered. */
static int cert__report(struct cloud_call *call)
{
    return cert__record_report(call, strcmp(call->op, "device.provisioned") == 0);
}

/*
 * device.report: the same DeviceReport event as a request, answered with an
 * Ack once it is in the ledger, so the programmer can drop it from its
 * journal. The programmer sends it again after any fault (same idempotency
 * key); the ledger records it once (cloud_ledger_cert_report).
 */
static int cert__device_report(struct cloud_call *call)
{
    const Nusec__V1__Event *ev = call->req->event;
    int provisioned = ev->kind && strcmp(ev->kind, "device.provisioned") == 0;
    if (!provisioned && (!ev->kind || strcmp(ev->kind, "device.failed") != 0))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "not a device report");
    int rc = cert__record_report(call, provisioned);
    if (rc)
        return rc;
    Nusec__V1__Ack ack = NUSEC__V1__ACK__INIT;
    ack.detail = provisioned ? "provisioned recorded" : "failed recorded";
    return cloud_reply(call, &ack.base);
}

const struct cloud_op cloud_cert_ops[] = {
    {"cert.request", CLOUD_ROLE_PROGRAMMER, NUSEC__V1__ENVELOPE__BODY_CERTIFICATE_REQUEST,
     cert__request},
    {"device.list", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_DEVICE_LIST_REQUEST,
     cert__device_list},
    {"device.revoke", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_DEVICE_REVOKE_REQUEST,
     cert__device_revoke},
    {"device.report", CLOUD_ROLE_PROGRAMMER, NUSEC__V1__ENVELOPE__BODY_EVENT, cert__device_report},
    {NULL, 0, 0, NULL},
};

const struct cloud_batch_op cloud_cert_batch_ops[] = {
    {"cert.request", CERT__BATCH_MAX, cert__serve},
    {NULL, 0, NULL},
};

const struct cloud_event_op cloud_cert_events[] = {
    {"device.provisioned", NU_ROLE_PROGRAMMER, cert__report},
    {"device.failed", NU_ROLE_PROGRAMMER, cert__report},
    {NULL, NULL, NULL},
};
