/*
 * nusec-cloud: production jobs — job.create (ledger + sealed packages),
 * job.control (pause, resume, close, lease write-off), job.list.
 *
 * JOB IDS are derived, not chosen: "job-" + hex(SHA-256("nusec/v1 job" ||
 * requester || 0 || idempotency key)[0..8]). A redelivered or retried create
 * (same key) therefore names the same job, and the ledger refuses a second
 * one. Because sealing is randomized (fresh ephemeral key, nonce, token,
 * firmware key), a create cannot be redone identically; instead the
 * packages are stored with the job (ledger schema 2, sealed: they reveal
 * nothing) and a repeat of the same request (same key, same content) gets
 * the stored job and packages back. The same key with other content is
 * IDEMPOTENCY_CONFLICT.
 *
 * SIZE. A job has at most CLOUD_LEDGER_ALLOC_MAX (256) programmers, which is
 * also the envelope's cap on packages; a package is about 1.5 KiB, so the
 * answer stays far below NU_ENVELOPE_MAX and needs no paging.
 *
 * EXPIRY. Packages always carry one (programmers refuse a package that has
 * none); a create without expires_at_ms gets JOB__TTL_DEFAULT_MS.
 *
 * PACKAGES (proto/README.md "Sealed package", what programmer-fw/core/
 * pg_package.c checks): PackageSummary{format 1, 16 random package_id, job,
 * programmer, limit, expiry, created, firmware}; PackageSecrets{job, limit,
 * token (32 random bytes, only its hash kept), firmware key (one per job),
 * rotpk hash, device chain [device CA, root], expiry, image digest and
 * size, subject template} sealed with nu_seal to the programmer's package
 * key with the summary bytes as AAD; signature = the package key's ECDSA
 * over SHA-256(summary || sealed).
 */
#include "cloud_firmware.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_mcuboot.h"
#include "nu_seal.h"
#include "nu_util.h"

#include <stdlib.h>
#include <string.h>

#define JOB__TOKEN_LEN 32
#define JOB__PACKAGE_ID_LEN 16
#define JOB__PACKAGE_FORMAT 1u
#define JOB__TTL_DEFAULT_MS (30ull * 24 * 3600 * 1000)
#define JOB__TTL_MAX_MS (10ull * 366 * 24 * 3600 * 1000)
/* JobList answers stop here, leaving room for the envelope around them. */
#define JOB__LIST_BUDGET (NU_ENVELOPE_MAX - 64u * 1024u)

_Static_assert(CLOUD_LEDGER_ALLOC_MAX <= NU_ENVELOPE_ALLOC_MAX, "one package per allocation");

/* ------------------------------------------------------------- JobState */

/* A JobState and everything it points to, in one allocation (free()). */
struct job__state {
    Nusec__V1__JobState st;
    struct cloud_ledger_job job;
    size_t n;
    /* then: pointers[n], allocations[n], ledger allocations[n], issued[n] */
};

static Nusec__V1__JobStatus job__status(const struct cloud_ledger_job *job, uint64_t now)
{
    if (job->status == CLOUD_LEDGER_JOB_ACTIVE && job->expires_at_ms && now >= job->expires_at_ms)
        return NUSEC__V1__JOB_STATUS__JOB_STATUS_EXPIRED;
    return (Nusec__V1__JobStatus)job->status;
}

static struct job__state *job__state_new(const struct cloud_ledger_job *job,
                                         const struct cloud_ledger_alloc *alloc, size_t n)
{
    size_t size =
        sizeof(struct job__state) +
        n * (sizeof(Nusec__V1__ProgrammerAllocation *) + sizeof(Nusec__V1__ProgrammerAllocation) +
             sizeof(struct cloud_ledger_alloc) + sizeof(uint32_t));
    struct job__state *s = calloc(1, size);
    if (!s)
        return NULL;
    Nusec__V1__ProgrammerAllocation **pp = (void *)(s + 1);
    Nusec__V1__ProgrammerAllocation *pa = (void *)(pp + n);
    struct cloud_ledger_alloc *copy = (void *)(pa + n);
    uint32_t *issued = (void *)(copy + n);
    s->job = *job;
    s->n = n;
    nusec__v1__job_state__init(&s->st);
    for (size_t i = 0; i < n; i++) {
        copy[i] = alloc[i];
        nusec__v1__programmer_allocation__init(&pa[i]);
        pa[i].programmer_id = copy[i].programmer_id;
        pa[i].limit = copy[i].limit;
        pp[i] = &pa[i];
        issued[i] = copy[i].issued;
    }
    s->st.job_id = s->job.job_id;
    s->st.status = job__status(&s->job, nu_time_ms());
    s->st.quota = s->job.quota;
    s->st.issued = s->job.issued;
    s->st.refused = s->job.refused;
    s->st.firmware = s->job.firmware;
    s->st.created_at_ms = s->job.created_at_ms;
    s->st.expires_at_ms = s->job.expires_at_ms;
    s->st.n_allocations = n;
    s->st.allocations = pp;
    s->st.n_issued_per_programmer = n;
    s->st.issued_per_programmer = issued;
    return s;
}

/* The job as the ledger holds it now. Errors: those of cloud_ledger_job_get, NOMEM. */
static int job__state_read(struct cloud_ledger *ledger, const char *job_id, struct job__state **out)
{
    struct cloud_ledger_job job;
    struct cloud_ledger_alloc *alloc = calloc(CLOUD_LEDGER_ALLOC_MAX, sizeof(*alloc));
    size_t n = 0;
    int rc = alloc ? NU_OK : NU_ERR_NOMEM;
    *out = NULL;
    if (!rc)
        rc = cloud_ledger_job_get(ledger, job_id, &job, alloc, CLOUD_LEDGER_ALLOC_MAX, &n);
    if (!rc) {
        *out = job__state_new(&job, alloc, n > CLOUD_LEDGER_ALLOC_MAX ? CLOUD_LEDGER_ALLOC_MAX : n);
        rc = *out ? NU_OK : NU_ERR_NOMEM;
    }
    free(alloc);
    return rc;
}

int cloud_publish_job_state(struct cloud *cloud, struct cloud_ledger *ledger, const char *job_id)
{
    struct job__state *s = NULL;
    char topic[256];
    int rc = job__state_read(ledger, job_id, &s);
    if (!rc)
        rc = nu_path_fmt(topic, sizeof(topic), "nusec/v1/jobs/%s", job_id);
    if (!rc)
        rc = cloud_publish(cloud, topic, &s->st.base, 1);
    free(s);
    return rc;
}

/* Retained state + event; failures only delay what monitors see. */
static void job__announce(struct cloud_call *call, const char *kind, struct job__state *s)
{
    int rc = cloud_publish_job_state(call->cloud, call->ledger, s->job.job_id);
    if (rc)
        nu_warn("cannot publish the state of job %s: %s", s->job.job_id, nu_err_str(rc));
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = (char *)kind;
    ev.job_id = s->job.job_id;
    ev.detail = (char *)call->requester;
    ev.data_case = NUSEC__V1__EVENT__DATA_JOB;
    ev.job = &s->st;
    rc = cloud_publish_event(call->cloud, &ev);
    if (rc)
        nu_warn("cannot publish %s for job %s: %s", kind, s->job.job_id, nu_err_str(rc));
}

/* ------------------------------------------------------------ job.create */

/* What the packages of one job share. */
struct job__plan {
    char job_id[CLOUD_ID_MAX + 1];
    const Nusec__V1__JobCreateRequest *req;
    struct cloud_ledger_alloc alloc[CLOUD_LEDGER_ALLOC_MAX];
    uint8_t pubkeys[CLOUD_LEDGER_ALLOC_MAX][NU_P256_PUB_LEN];
    size_t n;
    uint64_t now, expires;
    uint8_t request_hash[NU_SHA256_LEN];
    uint8_t *image; /* the signed image, handed to the cache at the end */
    size_t image_len;
    uint8_t digest[NU_SHA256_LEN];
    uint8_t rotpk_hash[NU_SHA256_LEN];
    uint8_t fw_key[CLOUD_LEDGER_FW_KEY_LEN];
    struct cloud_ledger_job_package pkgs[CLOUD_LEDGER_ALLOC_MAX];
    uint8_t *pkg_buf[CLOUD_LEDGER_ALLOC_MAX];
};

static void job__plan_free(struct job__plan *p)
{
    if (!p)
        return;
    for (size_t i = 0; i < p->n; i++)
        free(p->pkg_buf[i]);
    free(p->image);
    nu_zero(p->fw_key, sizeof(p->fw_key));
    free(p);
}

static int job__id(const char *requester, const ProtobufCBinaryData *key, char *out, size_t cap)
{
    static const char tag[] = "nusec/v1 job";
    uint8_t h[NU_SHA256_LEN];
    char hex[17];
    struct nu_sha256_ctx ctx;
    int rc = nu_sha256_init(&ctx);
    if (!rc)
        rc = nu_sha256_update(&ctx, tag, sizeof(tag) - 1);
    if (!rc)
        rc = nu_sha256_update(&ctx, requester, strlen(requester) + 1);
    if (!rc)
        rc = nu_sha256_update(&ctx, key->data, key->len);
    if (!rc)
        rc = nu_sha256_final(&ctx, h);
    else
        nu_sha256_abort(&ctx);
    if (!rc)
        rc = nu_hex_encode(h, 8, hex, sizeof(hex));
    return rc ? rc : nu_path_fmt(out, cap, "job-%s", hex);
}

static void job__be(uint8_t *out, uint64_t v, int bytes)
{
    for (int i = bytes - 1; i >= 0; i--, v >>= 8)
        out[i] = (uint8_t)v;
}

/* SHA-256 over the request's content as asked (before defaults), so a
 * repeat with the same key can be told from a different request. */
static int job__request_hash(const Nusec__V1__JobCreateRequest *r, uint8_t out[NU_SHA256_LEN])
{
    static const char tag[] = "nusec/v1 job.create";
    uint8_t num[12];
    struct nu_sha256_ctx ctx;
    int rc = nu_sha256_init(&ctx);
    if (rc)
        return rc;
    job__be(num, r->quota, 4);
    job__be(num + 4, r->expires_at_ms, 8);
    rc = nu_sha256_update(&ctx, tag, sizeof(tag));
    if (!rc)
        rc = nu_sha256_update(&ctx, r->firmware, strlen(r->firmware) + 1);
    if (!rc)
        rc = nu_sha256_update(&ctx, num, sizeof(num));
    if (!rc)
        rc = nu_sha256_update(&ctx, r->subject_template, strlen(r->subject_template) + 1);
    for (size_t i = 0; !rc && i < r->n_allocations; i++) {
        const Nusec__V1__ProgrammerAllocation *a = r->allocations[i];
        job__be(num, a->limit, 4);
        rc = nu_sha256_update(&ctx, a->programmer_id, strlen(a->programmer_id) + 1);
        if (!rc)
            rc = nu_sha256_update(&ctx, num, 4);
    }
    if (!rc)
        return nu_sha256_final(&ctx, out);
    nu_sha256_abort(&ctx);
    return rc;
}

/*
 * Allocations from the request: explicit limits as given; programmers
 * without one share what the explicit ones leave, evenly, the remainder to
 * the first of them. The sum never exceeds the quota.
 */
static int job__allocate(struct cloud_call *call, struct job__plan *p)
{
    const Nusec__V1__JobCreateRequest *r = p->req;
    uint64_t explicit_sum = 0;
    size_t shared = 0, first = SIZE_MAX;
    if (r->n_allocations == 0)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "a job needs at least one programmer");
    if (r->n_allocations > CLOUD_LEDGER_ALLOC_MAX)
        return cloud_fail(call, NU_ERR_TOO_LARGE, "at most %d programmers per job",
                          CLOUD_LEDGER_ALLOC_MAX);
    if (r->quota == 0)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "quota must be at least 1");
    if (!r->offline_lease != !r->lease_hours || r->offline_lease > r->quota ||
        r->lease_hours > 720)
        return cloud_fail(call, NU_ERR_INVALID_ARG,
                          "offline lease: N (1..quota) with H hours (1..720), or neither");
    for (size_t i = 0; i < r->n_allocations; i++) {
        const Nusec__V1__ProgrammerAllocation *a = r->allocations[i];
        for (size_t k = 0; k < i; k++) {
            if (strcmp(r->allocations[k]->programmer_id, a->programmer_id) == 0)
                return cloud_fail(call, NU_ERR_INVALID_ARG, "programmer %s is listed twice",
                                  a->programmer_id);
        }
        snprintf(p->alloc[i].programmer_id, sizeof(p->alloc[i].programmer_id), "%s",
                 a->programmer_id);
        p->alloc[i].limit = a->limit;
        explicit_sum += a->limit;
        if (!a->limit && !shared++)
            first = i;
    }
    p->n = r->n_allocations;
    if (explicit_sum > r->quota)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "limits add up to %llu, over the quota %u",
                          (unsigned long long)explicit_sum, r->quota);
    if (!shared)
        return NU_OK;
    uint64_t rest = r->quota - explicit_sum, each = rest / shared;
    if (each == 0)
        return cloud_fail(call, NU_ERR_INVALID_ARG,
                          "quota %u leaves nothing for %zu programmers without a limit", r->quota,
                          shared);
    for (size_t i = 0; i < p->n; i++) {
        if (!p->alloc[i].limit)
            p->alloc[i].limit = (uint32_t)(each + (i == first ? rest % shared : 0));
    }
    return NU_OK;
}

/* Every allocated programmer enrolled; their package keys. */
static int job__recipients(struct cloud_call *call, struct job__plan *p)
{
    struct cloud_ledger_programmer *prog = malloc(sizeof(*prog));
    int rc = prog ? NU_OK : NU_ERR_NOMEM;
    for (size_t i = 0; !rc && i < p->n; i++) {
        const char *id = p->alloc[i].programmer_id;
        rc = cloud_ledger_programmer_get(call->ledger, id, prog);
        if (rc == NU_ERR_NOT_FOUND)
            rc = cloud_fail(call, rc, "programmer %s is not enrolled", id);
        else if (!rc && prog->state != CLOUD_LEDGER_PROGRAMMER_ENROLLED)
            rc = cloud_fail(call, NU_ERR_REVOKED, "programmer %s is revoked", id);
        if (!rc)
            memcpy(p->pubkeys[i], prog->package_pubkey, NU_P256_PUB_LEN);
    }
    free(prog);
    return rc;
}

static int job__pack(const ProtobufCMessage *m, uint8_t **out, size_t *out_len)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    *out = malloc(n ? n : 1);
    if (!*out)
        return NU_ERR_NOMEM;
    *out_len = protobuf_c_message_pack(m, *out);
    return *out_len == n ? NU_OK : NU_ERR_INTERNAL;
}

/* Package i of the plan into p->pkg_buf[i] / p->pkgs[i]. */
static int job__package(struct cloud *cloud, struct job__plan *p, size_t i)
{
    const struct nu_signer *signer = nu_hsm_key_signer(cloud->keys.package);
    Nusec__V1__PackageSummary sum = NUSEC__V1__PACKAGE_SUMMARY__INIT;
    Nusec__V1__PackageSecrets sec = NUSEC__V1__PACKAGE_SECRETS__INIT;
    Nusec__V1__SealedPackage sp = NUSEC__V1__SEALED_PACKAGE__INIT;
    ProtobufCBinaryData chain[2] = {{cloud->keys.device_len, cloud->keys.device_der},
                                    {cloud->keys.root_len, cloud->keys.root_der}};
    uint8_t token[JOB__TOKEN_LEN], package_id[JOB__PACKAGE_ID_LEN], digest[NU_SHA256_LEN];
    uint8_t sig[NU_P256_SIG_MAX], *sum_buf = NULL, *sec_buf = NULL, *box = NULL;
    size_t sum_len = 0, sec_len = 0, box_len = 0, sig_len = sizeof(sig);
    struct nu_sha256_ctx h;
    int rc = nu_random(token, sizeof(token));
    if (!rc)
        rc = nu_random(package_id, sizeof(package_id));
    if (!rc)
        rc = nu_sha256(token, sizeof(token), p->pkgs[i].token_hash);
    sum.job_id = p->job_id;
    sum.programmer_id = p->alloc[i].programmer_id;
    sum.limit = p->alloc[i].limit;
    sum.expires_at_ms = p->expires;
    sum.created_at_ms = p->now;
    sum.firmware = p->req->firmware;
    sum.format = JOB__PACKAGE_FORMAT;
    sum.package_id = (ProtobufCBinaryData){sizeof(package_id), package_id};
    sec.job_id = p->job_id;
    sec.limit = p->alloc[i].limit;
    sec.firmware_token = (ProtobufCBinaryData){sizeof(token), token};
    sec.firmware_key = (ProtobufCBinaryData){sizeof(p->fw_key), p->fw_key};
    sec.rotpk_hash = (ProtobufCBinaryData){sizeof(p->rotpk_hash), p->rotpk_hash};
    sec.n_device_chain_der = 2;
    sec.device_chain_der = chain;
    sec.expires_at_ms = p->expires;
    sec.firmware_digest = (ProtobufCBinaryData){sizeof(p->digest), p->digest};
    sec.firmware_size = (uint32_t)p->image_len;
    sec.subject_template = p->req->subject_template;
    if (!rc)
        rc = job__pack(&sum.base, &sum_buf, &sum_len);
    if (!rc)
        rc = job__pack(&sec.base, &sec_buf, &sec_len);
    if (!rc)
        rc = nu_seal(p->pubkeys[i], sum_buf, sum_len, sec_buf, sec_len, &box, &box_len);
    if (!rc && !(rc = nu_sha256_init(&h))) {
        rc = nu_sha256_update(&h, sum_buf, sum_len);
        if (!rc)
            rc = nu_sha256_update(&h, box, box_len);
        if (!rc)
            rc = nu_sha256_final(&h, digest);
        else
            nu_sha256_abort(&h);
    }
    if (!rc)
        rc = signer->sign_digest(signer->ctx, digest, sig, &sig_len);
    if (!rc) {
        sp.summary = (ProtobufCBinaryData){sum_len, sum_buf};
        sp.sealed = (ProtobufCBinaryData){box_len, box};
        sp.signature = (ProtobufCBinaryData){sig_len, sig};
        rc = job__pack(&sp.base, &p->pkg_buf[i], &p->pkgs[i].package_len);
        p->pkgs[i].package = p->pkg_buf[i];
    }
    if (!rc && p->pkgs[i].package_len > NU_ENVELOPE_PACKAGE_MAX)
        rc = NU_ERR_TOO_LARGE;
    nu_zero(token, sizeof(token));
    if (sec_buf)
        nu_zero(sec_buf, sec_len);
    free(sec_buf);
    free(sum_buf);
    free(box);
    return rc;
}

/* Answer a create from what the ledger stored (a repeat of the same request). */
static int job__answer_stored(struct cloud_call *call, const char *job_id);

/* The firmware side of the plan: image (verified), digest, ROTPK hash, key. */
static int job__firmware(struct cloud_call *call, struct job__plan *p)
{
    struct cloud *cloud = call->cloud;
    int rc = cloud_firmware_image_load(cloud, call->ledger, p->req->firmware, &p->image,
                                       &p->image_len, p->digest);
    if (rc == NU_ERR_NOT_FOUND)
        return cloud_fail(call, rc, "no signed image %s (nusec firmware sign)", p->req->firmware);
    if (rc)
        return cloud_fail(call, rc, "image %s cannot be used", p->req->firmware);
    rc = nu_mcuboot_rotpk_hash(nu_hsm_key_signer(cloud->keys.secure_boot)->pub, p->rotpk_hash);
    if (!rc)
        rc = nu_random(p->fw_key, sizeof(p->fw_key));
    return rc;
}

static int job__plan_make(struct cloud_call *call, struct job__plan *p)
{
    const Nusec__V1__JobCreateRequest *r = p->req;
    p->now = nu_time_ms();
    p->expires = r->expires_at_ms ? r->expires_at_ms : p->now + JOB__TTL_DEFAULT_MS;
    if (p->expires <= p->now || p->expires - p->now > JOB__TTL_MAX_MS)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "expiry must lie in the next 10 years");
    int rc = job__allocate(call, p);
    if (!rc)
        rc = job__recipients(call, p);
    if (!rc)
        rc = job__firmware(call, p);
    for (size_t i = 0; !rc && i < p->n; i++)
        rc = job__package(call->cloud, p, i);
    return rc;
}

static int job__reply_created(struct cloud_call *call, struct job__plan *p)
{
    struct job__state *s = NULL;
    ProtobufCBinaryData *bins = calloc(p->n, sizeof(*bins));
    int rc = bins ? job__state_read(call->ledger, p->job_id, &s) : NU_ERR_NOMEM;
    if (!rc) {
        Nusec__V1__JobCreateResponse resp = NUSEC__V1__JOB_CREATE_RESPONSE__INIT;
        for (size_t i = 0; i < p->n; i++)
            bins[i] = (ProtobufCBinaryData){p->pkgs[i].package_len, p->pkg_buf[i]};
        resp.job = &s->st;
        resp.n_packages = p->n;
        resp.packages = bins;
        rc = cloud_reply(call, &resp.base);
        job__announce(call, "job.created", s);
    }
    free(s);
    free(bins);
    return rc;
}

static int job__create(struct cloud_call *call)
{
    const Nusec__V1__JobCreateRequest *r = call->req->job_create_request;
    const ProtobufCBinaryData *idem = &call->req->header->idempotency_key;
    struct cloud_ledger_job_keys keys;
    struct job__plan *p = calloc(1, sizeof(*p));
    int rc = p ? NU_OK : NU_ERR_NOMEM;
    if (!rc && !idem->len)
        rc = cloud_fail(call, NU_ERR_INVALID_ARG, "job.create needs an idempotency key");
    if (!rc)
        rc = job__id(call->requester, idem, p->job_id, sizeof(p->job_id));
    if (!rc) {
        p->req = r;
        rc = job__request_hash(r, p->request_hash);
    }
    if (rc)
        goto out;
    /* A repeat: same answer. */
    rc = cloud_ledger_job_keys_get(call->ledger, p->job_id, &keys);
    if (rc != NU_ERR_NOT_FOUND) {
        int same = !rc && !memcmp(keys.request_hash, p->request_hash, NU_SHA256_LEN);
        nu_zero(&keys, sizeof(keys));
        if (!rc)
            rc = same ? job__answer_stored(call, p->job_id)
                      : cloud_fail(call, NU_ERR_IDEMPOTENCY_CONFLICT,
                                   "this idempotency key created %s with other content", p->job_id);
        goto out;
    }
    rc = job__plan_make(call, p);
    if (rc)
        goto out;
    struct cloud_ledger_job_secrets secrets = {.image_size = (uint32_t)p->image_len,
                                               .packages = p->pkgs};
    memcpy(secrets.firmware_key, p->fw_key, sizeof(secrets.firmware_key));
    memcpy(secrets.image_digest, p->digest, sizeof(secrets.image_digest));
    memcpy(secrets.request_hash, p->request_hash, sizeof(secrets.request_hash));
    struct cloud_ledger_job_spec spec = {
        .job_id = p->job_id,
        .firmware = r->firmware,
        .subject_template = r->subject_template,
        .quota = r->quota,
        .expires_at_ms = p->expires,
        .alloc = p->alloc,
        .n_alloc = p->n,
        .actor = call->requester,
        .now_ms = p->now,
        .secrets = &secrets,
    };
    rc = cloud_ledger_job_create(call->ledger, &spec);
    nu_zero(secrets.firmware_key, sizeof(secrets.firmware_key));
    if (rc == NU_ERR_EXISTS) {
        /* Another worker or agent created it from the same key meanwhile. */
        rc = cloud_ledger_job_keys_get(call->ledger, p->job_id, &keys);
        int same = !rc && !memcmp(keys.request_hash, p->request_hash, NU_SHA256_LEN);
        nu_zero(&keys, sizeof(keys));
        rc = same ? job__answer_stored(call, p->job_id)
                  : cloud_fail(call, NU_ERR_IDEMPOTENCY_CONFLICT, "job %s exists", p->job_id);
        goto out;
    }
    if (rc) {
        rc = cloud_fail(call, rc, "the ledger refused job %s", p->job_id);
        goto out;
    }
    nu_info("job %s created by %s: %s, quota %u, %zu programmer(s)", p->job_id, call->requester,
            r->firmware, r->quota, p->n);
    if (r->offline_lease) {
        /* Its own transaction, after the job's: a crash between leaves a
         * job that grants no lease (refused, audited), never a wrong one. */
        rc = cloud_ledger_lease_policy_set(call->ledger, p->job_id, r->offline_lease,
                                           r->lease_hours, call->requester, p->now);
        if (rc) {
            rc = cloud_fail(call, rc, "job %s created, its offline lease refused", p->job_id);
            goto out;
        }
        nu_info("job %s: offline lease of %u unit(s) per programmer, %u h", p->job_id,
                r->offline_lease, r->lease_hours);
    }
    rc = job__reply_created(call, p);
    cloud_firmware_cache_put(call->cloud, p->job_id, p->image, p->image_len, p->digest, p->fw_key);
out:
    job__plan_free(p);
    return rc;
}

/* Stored packages, collected for the answer. */
struct job__stored {
    ProtobufCBinaryData bins[CLOUD_LEDGER_ALLOC_MAX];
    size_t n;
};

static int job__stored_visit(void *ctx, const char *programmer_id, const uint8_t *package,
                             size_t len)
{
    struct job__stored *s = ctx;
    (void)programmer_id;
    if (s->n >= CLOUD_LEDGER_ALLOC_MAX)
        return NU_ERR_DB;
    uint8_t *copy = malloc(len);
    if (!copy)
        return NU_ERR_NOMEM;
    memcpy(copy, package, len);
    s->bins[s->n++] = (ProtobufCBinaryData){len, copy};
    return NU_OK;
}

static int job__answer_stored(struct cloud_call *call, const char *job_id)
{
    struct job__stored *st = calloc(1, sizeof(*st));
    struct job__state *s = NULL;
    int rc = st ? job__state_read(call->ledger, job_id, &s) : NU_ERR_NOMEM;
    if (!rc)
        rc = cloud_ledger_job_packages(call->ledger, job_id, job__stored_visit, st);
    if (!rc) {
        Nusec__V1__JobCreateResponse resp = NUSEC__V1__JOB_CREATE_RESPONSE__INIT;
        resp.job = &s->st;
        resp.n_packages = st->n;
        resp.packages = st->bins;
        nu_info("job.create from %s repeated: stored job %s answered", call->requester, job_id);
        rc = cloud_reply(call, &resp.base);
    }
    for (size_t i = 0; st && i < st->n; i++)
        free(st->bins[i].data);
    free(st);
    free(s);
    return rc;
}

/* ------------------------------------------------------------ job.control */

/* The OEM gives back the units of a lease that ended unreturned (ledger.h). */
static int job__write_off(struct cloud_call *call)
{
    const Nusec__V1__JobControlRequest *r = call->req->job_control_request;
    struct cloud_ledger_lease lease;
    struct job__state *s = NULL;
    uint64_t now = nu_time_ms();
    if (nu_envelope_id_check(r->programmer_id))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "a lease write-off names its programmer");
    int rc = cloud_ledger_lease_write_off(call->ledger, r->job_id, r->programmer_id,
                                          call->requester, now, &lease);
    if (rc == NU_ERR_NOT_FOUND)
        return cloud_fail(call, rc, "programmer %s holds no open lease of job %s", r->programmer_id,
                          r->job_id);
    if (rc == NU_ERR_STATE) {
        uint64_t at = lease.not_after_ms + CLOUD_LEDGER_LEASE_WRITE_OFF_AFTER_MS;
        return cloud_fail(call, rc,
                          "lease %s of %s can be written off in %llu minute(s), an hour after it"
                          " ends: its programmer may still use it",
                          lease.lease_id, r->programmer_id,
                          (unsigned long long)((at - now) / 60000u + 1u));
    }
    int again = rc == NU_ERR_EXISTS; /* a repeat whose answer was lost: the same answer */
    if (again)
        rc = NU_OK;
    if (!rc)
        rc = job__state_read(call->ledger, r->job_id, &s);
    if (rc)
        return rc;
    if (again)
        nu_info("job %s: lease %s of %s written off already (asked again by %s)", r->job_id,
                lease.lease_id, r->programmer_id, call->requester);
    else
        nu_warn("job %s: lease %s of %s written off by %s: %u unused units back to the quota,"
                " %u used",
                r->job_id, lease.lease_id, r->programmer_id, call->requester,
                lease.units - lease.used, lease.used);
    rc = cloud_reply(call, &s->st.base);
    if (!again)
        job__announce(call, "lease.written_off", s);
    free(s);
    return rc;
}

static int job__control(struct cloud_call *call)
{
    static const char *const kinds[] = {NULL, "job.paused", "job.resumed", "job.closed"};
    static const enum cloud_ledger_job_status target[] = {
        0, CLOUD_LEDGER_JOB_PAUSED, CLOUD_LEDGER_JOB_ACTIVE, CLOUD_LEDGER_JOB_CLOSED};
    const Nusec__V1__JobControlRequest *r = call->req->job_control_request;
    struct cloud_ledger_job job;
    struct job__state *s = NULL;
    int action = (int)r->action;
    if (action == NUSEC__V1__JOB_ACTION__JOB_ACTION_WRITE_OFF_LEASE)
        return job__write_off(call);
    if (action < CLOUD_LEDGER_JOB_PAUSE || action > CLOUD_LEDGER_JOB_CLOSE)
        return cloud_fail(call, NU_ERR_INVALID_ARG,
                          "action must be pause, resume, close or write-off");
    int rc = cloud_ledger_job_control(call->ledger, r->job_id, (enum cloud_ledger_job_action)action,
                                      call->requester, nu_time_ms(), &job);
    int changed = rc == NU_OK;
    if (rc == NU_ERR_STATE) {
        /* Already where it was asked to go (a retry, or two operators):
         * answer the state; anything else is a real refusal. */
        rc = cloud_ledger_job_get(call->ledger, r->job_id, &job, NULL, 0, NULL);
        if (!rc && job.status != target[action])
            rc = cloud_fail(call, NU_ERR_STATE, "job %s cannot go from %s that way", r->job_id,
                            job.status == CLOUD_LEDGER_JOB_CLOSED      ? "closed"
                            : job.status == CLOUD_LEDGER_JOB_EXHAUSTED ? "exhausted"
                            : job.status == CLOUD_LEDGER_JOB_PAUSED    ? "paused"
                                                                       : "active");
    } else if (rc == NU_ERR_NOT_FOUND) {
        rc = cloud_fail(call, rc, "no job %s", r->job_id);
    }
    if (!rc)
        rc = job__state_read(call->ledger, r->job_id, &s);
    if (rc)
        return rc;
    if (changed && action == CLOUD_LEDGER_JOB_CLOSE) {
        cloud_firmware_cache_drop(call->cloud, r->job_id);
        (void)cloud_checkpoint(call->cloud, call->ledger, "job close"); /* logs its failure */
    }
    rc = cloud_reply(call, &s->st.base);
    if (changed) {
        nu_info("job %s: %s by %s", r->job_id, kinds[action], call->requester);
        job__announce(call, kinds[action], s);
    }
    free(s);
    return rc;
}

/* ------------------------------------------------------------ job.list */

struct job__list {
    Nusec__V1__JobState **states;
    struct job__state **owned;
    size_t n;
    size_t bytes;
    int full;
};

static int job__list_visit(void *ctx, const struct cloud_ledger_job *job,
                           const struct cloud_ledger_alloc *alloc, size_t n_alloc)
{
    struct job__list *l = ctx;
    if (l->n >= NU_ENVELOPE_LIST_MAX) {
        l->full = 1;
        return NU_OK;
    }
    struct job__state *s = job__state_new(job, alloc, n_alloc);
    if (!s)
        return NU_ERR_NOMEM;
    size_t size = protobuf_c_message_get_packed_size(&s->st.base) + 8;
    if (l->bytes + size > JOB__LIST_BUDGET) {
        l->full = 1;
        free(s);
        return NU_OK;
    }
    l->bytes += size;
    l->owned[l->n] = s;
    l->states[l->n++] = &s->st;
    return NU_OK;
}

static int job__list(struct cloud_call *call)
{
    const Nusec__V1__JobListRequest *r = call->req->job_list_request;
    struct job__list l = {0};
    l.states = calloc(NU_ENVELOPE_LIST_MAX, sizeof(*l.states));
    l.owned = calloc(NU_ENVELOPE_LIST_MAX, sizeof(*l.owned));
    int rc = l.states && l.owned ? NU_OK : NU_ERR_NOMEM;
    if (!rc && r->job_id && r->job_id[0]) {
        rc = job__state_read(call->ledger, r->job_id, &l.owned[0]);
        if (rc == NU_ERR_NOT_FOUND)
            rc = cloud_fail(call, rc, "no job %s", r->job_id);
        if (!rc)
            l.states[l.n++] = &l.owned[0]->st;
    } else if (!rc) {
        rc = cloud_ledger_job_list(call->ledger, job__list_visit, &l);
    }
    if (!rc) {
        if (l.full)
            nu_warn("job.list: answer cut at %zu jobs (envelope budget)", l.n);
        Nusec__V1__JobList out = NUSEC__V1__JOB_LIST__INIT;
        out.jobs = l.states;
        out.n_jobs = l.n;
        rc = cloud_reply(call, &out.base);
    }
    for (size_t i = 0; l.owned && i < l.n; i++)
        free(l.owned[i]);
    free(l.owned);
    free(l.states);
    return rc;
}

const struct cloud_op cloud_job_ops[] = {
    {"job.create", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_JOB_CREATE_REQUEST, job__create},
    {"job.control", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_JOB_CONTROL_REQUEST, job__control},
    {"job.list", CLOUD_ROLE_OEM | CLOUD_ROLE_STATION, NUSEC__V1__ENVELOPE__BODY_JOB_LIST_REQUEST,
     job__list},
    {NULL, 0, 0, NULL},
};
