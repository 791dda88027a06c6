/*
 * ledger_issue — certificate issuance: request checks, the idempotency
 * cache, quota decisions, refusals, resends, and batches.
 *
 * About 1,000 lines on purpose: the single and the batched paths run the same
 * transaction's steps (check, cache, decide, sign, insert, audit) through the
 * static helpers here; split, they would all go into ledger_int.h.
 */
#include "ledger_int.h"

/* --------------------------------------------------------------- issuance */

static int ledger__issue_req_check(const struct cloud_ledger_issue_req *r)
{
    int rc;

    if (!r || !r->idempotency_key || r->idempotency_key_len == 0 || !r->device_uid ||
        r->device_uid_len == 0 || !ledger__time_ok(r->now_ms))
        return NU_ERR_INVALID_ARG;
    if (r->idempotency_key_len > CLOUD_LEDGER_KEY_MAX || r->device_uid_len > CLOUD_LEDGER_UID_MAX)
        return NU_ERR_TOO_LARGE;
    rc = ledger__id_check(r->requester);
    if (rc == NU_OK)
        rc = ledger__id_check(r->job_id);
    return rc;
}

static void ledger__result_clear(struct cloud_ledger_issue_result *out, int code)
{
    out->code = code;
    out->replayed = 0;
    out->resent = 0;
    out->serial[0] = '\0';
    out->issued = 0;
    out->quota = 0;
    out->response_len = 0;
}

/* What the idempotency cache holds for (requester, key). */
struct ledger_cached {
    int found;
    int same;  /* same op and request hash */
    int stale; /* a refusal older than the refusal TTL */
    int code;
};

/* Look the request up; on a usable hit the stored answer is copied to out. */
static int ledger__cache_get(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             struct ledger_cached *c, struct cloud_ledger_issue_result *out)
{
    uint8_t hash[CLOUD_LEDGER_HASH_LEN];
    const unsigned char *op;
    uint64_t created;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_REQ_GET, &st);

    memset(c, 0, sizeof(*c));
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, req->requester);
    ledger__bind_blob(st, 2, req->idempotency_key, req->idempotency_key_len);
    rc = ledger__step_one(l, st, "request get");
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK;
    if (rc != NU_OK)
        return rc;
    c->found = 1;
    op = ledger__col_text(st, 0);
    rc = ledger__col_fixed(st, 1, hash, sizeof(hash));
    c->code = (int)ledger_store_col_i64(st, 3);
    created = ledger__col_u64(st, 4);
    c->same = rc == NU_OK && op && strcmp((const char *)op, CLOUD_LEDGER_OP_CERT) == 0 &&
              memcmp(hash, req->request_hash, sizeof(hash)) == 0;
    c->stale = c->code != NU_OK &&
               (l->refusal_ttl_ms == 0 ||
                (req->now_ms >= created && req->now_ms - created >= l->refusal_ttl_ms));
    if (rc == NU_OK && c->same && !c->stale) {
        rc = ledger__col_blob(st, 2, out->response, sizeof(out->response), &out->response_len);
        if (rc == NU_OK)
            rc = ledger__col_str(st, 5, out->serial, sizeof(out->serial));
    }
    ledger__reset(st);
    return rc;
}

static int ledger__cache_put(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             int code, const uint8_t *response, size_t response_len,
                             const char *serial)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_REQ_PUT, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_blob(st, 1, req->idempotency_key, req->idempotency_key_len);
    ledger__bind_text(st, 2, req->requester);
    ledger__bind_text(st, 3, CLOUD_LEDGER_OP_CERT);
    ledger__bind_blob(st, 4, req->request_hash, sizeof(req->request_hash));
    ledger__bind_blob(st, 5, response, response_len);
    ledger_store_bind_i64(st, 6, code);
    ledger__bind_u64(st, 7, req->now_ms);
    if (serial)
        ledger__bind_text(st, 8, serial);
    return ledger__run(l, st, "request put");
}

/* Everything one decision needs, read under the write lock. */
struct ledger_decision {
    int job_found;
    struct cloud_ledger_job job;
    int have_alloc;
    uint32_t alloc_limit;
    uint32_t alloc_issued;
    uint32_t leased_job, leased_prog; /* units held back by offline leases (ledger_lease.c) */
    int have_cert; /* l->cert holds the job's certificate for this UID */
};

static void ledger__counters(const struct ledger_decision *d, struct cloud_ledger_issue_result *out)
{
    if (d->job_found) {
        out->issued = d->job.issued;
        out->quota = d->job.quota;
    }
}

static int ledger__issue_event(struct cloud_ledger *l, struct ledger_json *j, uint64_t ts,
                               const char *kind, const char *actor, const char *job_id);

/* Commit a refusal: counted on the job, audited, cached when `store`. */
static int ledger__refuse(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                          struct ledger_decision *d, int code, int store,
                          struct cloud_ledger_issue_result *out)
{
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = NU_OK;

    if (d->job_found) {
        rc = ledger__stmt(l, ST_JOB_REFUSED, &st);
        if (rc != NU_OK)
            return rc;
        ledger__bind_text(st, 1, req->job_id);
        rc = ledger__run(l, st, "job refused");
        d->job.refused++;
    }
    if (rc == NU_OK && store)
        rc = ledger__cache_put(l, req, code, NULL, 0, NULL);
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_hex(&j, "device_uid", req->device_uid, req->device_uid_len);
    lj_str(&j, "programmer", req->requester);
    lj_hex(&j, "idempotency_key", req->idempotency_key, req->idempotency_key_len);
    lj_str(&j, "code", nu_err_name(code));
    lj_raw(&j, "}", 1);
    rc = ledger__issue_event(l, &j, req->now_ms, "cert.refused", req->requester, req->job_id);
    if (rc != NU_OK)
        return rc;
    ledger__result_clear(out, code);
    ledger__counters(d, out);
    return NU_OK;
}

/* The caller's callback output, checked before anything is written. */
static int ledger__sign_out_ok(const struct cloud_ledger_sign_out *so, int resend, size_t *pem_len)
{
    if (so->response_len > so->response_cap)
        return 0;
    if (resend)
        return 1;
    if (!memchr(so->serial, '\0', sizeof(so->serial)) || !memchr(so->pem, '\0', sizeof(so->pem)))
        return 0;
    return ledger__serial_ok(so->serial) && ledger__pem_ok(so->pem, pem_len);
}

static int ledger__call_sign(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             const struct ledger_decision *d, int resend, cloud_ledger_sign_fn sign,
                             void *sign_ctx, struct cloud_ledger_issue_result *out,
                             size_t *out_pem_len)
{
    struct cloud_ledger_sign_out *so = l->sign_out;
    struct cloud_ledger_sign_info info = {
        .resend = resend,
        .serial = resend ? l->cert->serial : NULL,
        .pem = resend ? l->cert->pem : NULL,
        .firmware = d->job.firmware,
        .subject_template = d->job.subject_template,
        .quota = d->job.quota,
        .issued = d->job.issued + (resend ? 0 : 1),
    };
    int rc;

    so->serial[0] = '\0';
    so->pem[0] = '\0';
    so->response = out->response;
    so->response_cap = sizeof(out->response);
    so->response_len = 0;
    rc = sign(sign_ctx, req, &info, so);
    if (rc != NU_OK)
        return rc;
    if (!ledger__sign_out_ok(so, resend, out_pem_len)) {
        nu_error("ledger: the sign callback returned an unusable certificate or reply");
        return NU_ERR_INTERNAL;
    }
    return NU_OK;
}

/* Same device, same key, certificate already issued: answer it again. */
static int ledger__resend(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                          struct ledger_decision *d, cloud_ledger_sign_fn sign, void *sign_ctx,
                          struct cloud_ledger_issue_result *out)
{
    struct ledger_json j;
    size_t pem_len = 0;
    int rc = ledger__call_sign(l, req, d, 1, sign, sign_ctx, out, &pem_len);

    if (rc == NU_OK)
        rc = ledger__cache_put(l, req, NU_OK, out->response, l->sign_out->response_len,
                               l->cert->serial);
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "serial", l->cert->serial);
    lj_hex(&j, "device_uid", req->device_uid, req->device_uid_len);
    lj_str(&j, "programmer", req->requester);
    lj_hex(&j, "idempotency_key", req->idempotency_key, req->idempotency_key_len);
    lj_raw(&j, "}", 1);
    rc = ledger__issue_event(l, &j, req->now_ms, "cert.resent", req->requester, req->job_id);
    if (rc != NU_OK)
        return rc;
    out->code = NU_OK;
    out->resent = 1;
    out->response_len = l->sign_out->response_len;
    snprintf(out->serial, sizeof(out->serial), "%s", l->cert->serial);
    ledger__counters(d, out);
    return NU_OK;
}

/* The cert.issued payload: everything derives from the certificate row, so
 * verify can rebuild it (see ledger.h). */
void ledger__cert_issued_json(struct ledger_json *j, const char *serial, const uint8_t *uid,
                              size_t uid_len,
                              const uint8_t pubkey_hash[CLOUD_LEDGER_HASH_LEN],
                              const char *programmer, const uint8_t *key, size_t key_len,
                              const uint8_t pem_sha256[CLOUD_LEDGER_HASH_LEN])
{
    lj_raw(j, "{", 1);
    lj_str(j, "serial", serial);
    lj_hex(j, "device_uid", uid, uid_len);
    lj_hex(j, "pubkey_hash", pubkey_hash, CLOUD_LEDGER_HASH_LEN);
    lj_str(j, "programmer", programmer);
    lj_hex(j, "idempotency_key", key, key_len);
    lj_hex(j, "pem_sha256", pem_sha256, CLOUD_LEDGER_HASH_LEN);
    lj_raw(j, "}", 1);
}

static int ledger__count_issue(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_JOB_ISSUED, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, req->job_id);
    ledger__bind_u64(st, 2, req->now_ms);
    /* Exactly one row each, else INTERNAL: checked under the same lock, so
     * it cannot happen. */
    rc = ledger__run_expect(l, st, 1, "job issued");
    if (rc == NU_OK)
        rc = ledger__stmt(l, ST_ALLOC_ISSUED, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, req->job_id);
    ledger__bind_text(st, 2, req->requester);
    return ledger__run_expect(l, st, 1, "allocation issued");
}

static int ledger__insert_cert(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                               size_t pem_len)
{
    struct cloud_ledger_sign_out *so = l->sign_out;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_CERT_INSERT, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, so->serial);
    ledger__bind_text(st, 2, req->job_id);
    ledger__bind_blob(st, 3, req->device_uid, req->device_uid_len);
    ledger__bind_blob(st, 4, req->pubkey_hash, sizeof(req->pubkey_hash));
    ledger_store_bind_text(st, 5, so->pem);
    ledger__bind_text(st, 6, req->requester);
    ledger__bind_blob(st, 7, req->idempotency_key, req->idempotency_key_len);
    ledger__bind_u64(st, 8, req->now_ms);
    return ledger__run(l, st, "certificate insert");
}

static int ledger__issue_new(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             struct ledger_decision *d, cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out)
{
    struct cloud_ledger_sign_out *so = l->sign_out;
    uint8_t pem_sha[NU_SHA256_LEN];
    struct ledger_json j;
    size_t pem_len = 0;
    int rc = ledger__call_sign(l, req, d, 0, sign, sign_ctx, out, &pem_len);

    if (rc == NU_OK)
        rc = ledger__insert_cert(l, req, pem_len);
    if (rc == NU_OK)
        rc = ledger__count_issue(l, req);
    if (rc == NU_OK)
        rc = ledger__cache_put(l, req, NU_OK, out->response, so->response_len, so->serial);
    if (rc == NU_OK)
        rc = nu_sha256(so->pem, pem_len, pem_sha);
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    ledger__cert_issued_json(&j, so->serial, req->device_uid, req->device_uid_len, req->pubkey_hash,
                             req->requester, req->idempotency_key, req->idempotency_key_len,
                             pem_sha);
    rc = ledger__issue_event(l, &j, req->now_ms, "cert.issued", req->requester, req->job_id);
    d->job.issued++;
    if (rc == NU_OK && d->job.issued >= d->job.quota) {
        lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
        lj_raw(&j, "{", 1);
        lj_u64(&j, "issued", d->job.issued);
        lj_u64(&j, "quota", d->job.quota);
        lj_raw(&j, "}", 1);
        rc = ledger__issue_event(l, &j, req->now_ms, "job.exhausted", req->requester, req->job_id);
    }
    if (rc != NU_OK)
        return rc;
    out->code = NU_OK;
    out->response_len = so->response_len;
    snprintf(out->serial, sizeof(out->serial), "%s", so->serial);
    ledger__counters(d, out);
    return NU_OK;
}

/*
 * PostgreSQL's batch view of the rows it holds locked: each job and
 * allocation the batch touches is read once, after its lock, and then kept
 * up to date in memory with exactly what the batch's own statements do to it
 * (issued + 1 and 'exhausted' at the quota, as ST_JOB_ISSUED; refused + 1).
 * Nobody else can change those rows before the commit. The conditional
 * UPDATEs still check every count in the database (expect 1 row), so a view
 * that went wrong fails the batch, it never passes a quota.
 */
struct ledger_view_event {
    uint64_t ts;
    const char *kind, *actor, *job_id; /* static names and the request's strings */
    char *payload;
    size_t len;
};

struct ledger_view {
    /* The batch's audit events, appended after the last decision so the
     * chain head is locked for the appends and the COMMIT only. */
    struct ledger_view_event *ev;
    size_t nev, evcap;
    size_t njobs, nallocs;
    struct ledger_view_job {
        const char *job_id;
        int found;
        size_t slot; /* the request slot whose handle read it */
        struct cloud_ledger_job job;
    } jobs[CLOUD_LEDGER_BATCH_MAX];
    struct ledger_view_alloc {
        const char *job_id, *programmer_id;
        int found;
        size_t slot;
        uint32_t limit, issued;
    } allocs[CLOUD_LEDGER_BATCH_MAX];
};

static struct ledger_view_job *ledger__view_job(struct ledger_view *v, const char *job_id)
{
    for (size_t i = 0; i < v->njobs; i++)
        if (strcmp(v->jobs[i].job_id, job_id) == 0)
            return &v->jobs[i];
    return NULL;
}

static struct ledger_view_alloc *ledger__view_alloc(struct ledger_view *v, const char *job_id,
                                                    const char *programmer_id)
{
    for (size_t i = 0; i < v->nallocs; i++)
        if (strcmp(v->allocs[i].job_id, job_id) == 0 &&
            strcmp(v->allocs[i].programmer_id, programmer_id) == 0)
            return &v->allocs[i];
    return NULL;
}

/* An issuance event: appended now, or in a batch view kept for the end. */
static int ledger__issue_event(struct cloud_ledger *l, struct ledger_json *j, uint64_t ts,
                               const char *kind, const char *actor, const char *job_id)
{
    struct ledger_view *v = l->view;
    struct ledger_view_event *e;

    if (!v || j->overflow)
        return ledger__append_json(l, j, ts, kind, actor, job_id);
    if (v->nev == v->evcap) {
        size_t cap = v->evcap ? v->evcap * 2 : 64;
        struct ledger_view_event *ev = realloc(v->ev, cap * sizeof(*ev));
        if (!ev)
            return NU_ERR_NOMEM;
        v->ev = ev;
        v->evcap = cap;
    }
    e = &v->ev[v->nev];
    if (!(e->payload = malloc(j->len + 1)))
        return NU_ERR_NOMEM;
    memcpy(e->payload, j->buf, j->len + 1);
    e->len = j->len;
    e->ts = ts;
    e->kind = kind;
    e->actor = actor;
    e->job_id = job_id;
    v->nev++;
    l->writes++; /* a write to come: a request failing after it is undone in full */
    return NU_OK;
}

/* Append the batch's events in request order (the head is locked at the
 * first), then forget them. */
static int ledger__view_events(struct cloud_ledger *l, struct ledger_view *v, int append)
{
    int rc = NU_OK;
    for (size_t i = 0; i < v->nev; i++) {
        struct ledger_json j = {v->ev[i].payload, v->ev[i].len + 1, v->ev[i].len, 0};
        if (append && rc == NU_OK)
            rc = ledger__append_json(l, &j, v->ev[i].ts, v->ev[i].kind, v->ev[i].actor,
                                     v->ev[i].job_id);
        free(v->ev[i].payload);
    }
    free(v->ev);
    v->ev = NULL;
    v->nev = v->evcap = 0;
    return rc;
}

/* The job and allocation rows from the view (same outcomes as the reads). */
static int ledger__view_read(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             struct ledger_decision *d)
{
    struct ledger_view_job *j = ledger__view_job(l->view, req->job_id);
    struct ledger_view_alloc *a = ledger__view_alloc(l->view, req->job_id, req->requester);

    if (!j || !a)
        return NU_ERR_INTERNAL; /* every pending request was read ahead */
    d->job_found = j->found;
    if (j->found)
        d->job = j->job;
    d->have_alloc = j->found && a->found;
    d->alloc_limit = a->limit;
    d->alloc_issued = a->issued;
    return NU_OK;
}

/* After a request's statements: what they did to the job and allocation. */
static void ledger__view_put(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             const struct ledger_decision *d)
{
    struct ledger_view_job *j = l->view ? ledger__view_job(l->view, req->job_id) : NULL;
    struct ledger_view_alloc *a =
        l->view ? ledger__view_alloc(l->view, req->job_id, req->requester) : NULL;

    if (!j || !j->found || !d->job_found)
        return;
    if (d->job.issued > j->job.issued) { /* this request issued one */
        if (a)
            a->issued++;
        if (d->job.issued >= d->job.quota)
            j->job.status = CLOUD_LEDGER_JOB_EXHAUSTED;
    }
    j->job.issued = d->job.issued;
    j->job.refused = d->job.refused;
}

/* Read what the decision depends on. */
static int ledger__decision_read(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                                 struct ledger_decision *d)
{
    struct cloud_ledger_cert_ref ref = {NULL, req->job_id, req->device_uid, req->device_uid_len};
    int rc;

    memset(d, 0, sizeof(*d));
    if (l->view) {
        rc = ledger__view_read(l, req, d);
        if (rc != NU_OK || !d->job_found)
            return rc;
    } else {
        rc = ledger__job_read(l, req->job_id, &d->job);
        d->job_found = rc == NU_OK;
        if (rc == NU_ERR_NOT_FOUND)
            return NU_OK;
        if (rc == NU_OK)
            rc = ledger__alloc_read(l, req->job_id, req->requester, &d->alloc_limit,
                                    &d->alloc_issued);
        d->have_alloc = rc == NU_OK;
        if (rc == NU_ERR_NOT_FOUND)
            rc = NU_OK;
    }
    if (rc == NU_OK && d->have_alloc)
        rc =
            ledger__lease_reserved(l, req->job_id, req->requester, &d->leased_job, &d->leased_prog);
    if (rc == NU_OK)
        rc = ledger__cert_find(l, &ref, l->cert);
    d->have_cert = rc == NU_OK;
    return rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
}

/* The refusal code for a request past the cache, or NU_OK to issue; sets
 * *resend when the existing certificate is to be answered again. */
static int ledger__decide(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                          const struct ledger_decision *d, int prog, int *resend)
{
    const struct cloud_ledger_cert *c = l->cert;

    *resend = 0;
    if (prog == NU_ERR_NOT_FOUND)
        return NU_ERR_NOT_AUTHORIZED;
    if (prog != NU_OK)
        return prog; /* REVOKED */
    if (!d->job_found)
        return NU_ERR_NOT_FOUND;
    /* Authorization before any state: a programmer with no allocation must
     * not learn whether the job is exhausted, paused or expired. */
    if (!d->have_alloc)
        return NU_ERR_NOT_AUTHORIZED;
    if (d->have_cert && d->have_alloc && c->state != CLOUD_LEDGER_CERT_REVOKED &&
        memcmp(c->pubkey_hash, req->pubkey_hash, CLOUD_LEDGER_HASH_LEN) == 0) {
        *resend = 1;
        return NU_OK;
    }
    if (d->job.status == CLOUD_LEDGER_JOB_EXHAUSTED)
        return NU_ERR_QUOTA_EXHAUSTED;
    if (d->job.status != CLOUD_LEDGER_JOB_ACTIVE)
        return NU_ERR_JOB_NOT_ACTIVE;
    if (d->job.expires_at_ms && req->now_ms >= d->job.expires_at_ms)
        return NU_ERR_EXPIRED;
    if ((uint64_t)d->alloc_issued + d->leased_prog >= d->alloc_limit ||
        (uint64_t)d->job.issued + d->leased_job >= d->job.quota)
        return NU_ERR_QUOTA_EXHAUSTED;
    if (d->have_cert)
        return NU_ERR_DUPLICATE_DEVICE;
    return NU_OK;
}

/*
 * 1 when the cause of a stored refusal is gone: the job is active again, or
 * has room again (an offline certificate superseded an online one and
 * refunded it, a lease was returned). The same request is then decided
 * afresh: a chip held in its socket retries with the same (job, UID)-bound
 * key, and waits for exactly that.
 */
static int ledger__refusal_gone(const struct ledger_decision *d, int code)
{
    if (!d->job_found || !d->have_alloc || d->job.status != CLOUD_LEDGER_JOB_ACTIVE)
        return 0;
    if (code == NU_ERR_JOB_NOT_ACTIVE)
        return 1;
    return code == NU_ERR_QUOTA_EXHAUSTED &&
           (uint64_t)d->alloc_issued + d->leased_prog < d->alloc_limit &&
           (uint64_t)d->job.issued + d->leased_job < d->job.quota;
}

/*
 * One request inside the batch's transaction. Returns NU_OK when its outcome
 * (in out->code) is to be committed, or an error to roll this request back.
 */
static int ledger__issue_one(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                             cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out)
{
    struct ledger_decision d;
    struct ledger_cached c;
    int prog, code, resend;
    int rc = ledger__cache_get(l, req, &c, out);

    if (rc == NU_OK)
        rc = ledger__decision_read(l, req, &d);
    if (rc != NU_OK)
        return rc;
    if (c.found && c.same && c.code != NU_OK && ledger__refusal_gone(&d, c.code))
        c.stale = 1;
    if (c.found && !c.stale) {
        if (!c.same)
            rc = ledger__refuse(l, req, &d, NU_ERR_IDEMPOTENCY_CONFLICT, 0, out);
        else {
            out->code = c.code;
            out->replayed = 1;
            ledger__counters(&d, out);
        }
        goto out;
    }
    prog = ledger__prog_state(l, req->requester, NULL);
    if (prog != NU_OK && prog != NU_ERR_NOT_FOUND && prog != NU_ERR_REVOKED)
        return prog;
    code = ledger__decide(l, req, &d, prog, &resend);
    if (code != NU_OK)
        rc = ledger__refuse(l, req, &d, code, 1, out);
    else if (resend)
        rc = ledger__resend(l, req, &d, sign, sign_ctx, out);
    else
        rc = ledger__issue_new(l, req, &d, sign, sign_ctx, out);
out:
    if (rc == NU_OK)
        ledger__view_put(l, req, &d);
    return rc;
}

/* The reads ledger__issue_one makes, in that order, bound as it binds them;
 * also the columns of l->pool. */
static const enum ledger_stmt ledger__issue_reads[] = {
    ST_REQ_GET, ST_JOB_GET, ST_ALLOC_GET, ST_CERT_BY_JOB_UID, ST_PROG_STATE, ST_LEASE_RESERVED};
enum { LR_REQ, LR_JOB, LR_ALLOC, LR_CERT, LR_PROG, LR_LEASE, LR__N };
/* What a batch view replaces: the job and allocation reads. */
#define LEDGER__VIEWED(k) ((k) == LR_JOB || (k) == LR_ALLOC)

static int ledger__issue_bind(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                              struct ledger_store_stmt *const st[LR__N])
{
    struct ledger_store_stmt *lease = NULL;
    int rc;

    ledger__bind_text(st[LR_REQ], 1, req->requester);
    ledger__bind_blob(st[LR_REQ], 2, req->idempotency_key, req->idempotency_key_len);
    ledger__bind_text(st[LR_JOB], 1, req->job_id);
    ledger__bind_text(st[LR_ALLOC], 1, req->job_id);
    ledger__bind_text(st[LR_ALLOC], 2, req->requester);
    ledger__bind_text(st[LR_CERT], 1, req->job_id);
    ledger__bind_blob(st[LR_CERT], 2, req->device_uid, req->device_uid_len);
    ledger__bind_text(st[LR_PROG], 1, req->requester);
    /* ledger_lease.c binds l->st[ST_LEASE_RESERVED]: lend it this handle. */
    struct ledger_store_stmt *keep = l->st[ST_LEASE_RESERVED];
    l->st[ST_LEASE_RESERVED] = st[LR_LEASE];
    rc = ledger__lease_reserved_bind(l, req->job_id, req->requester, &lease);
    l->st[ST_LEASE_RESERVED] = keep;
    return rc;
}

/* Pipelining (PostgreSQL): send every read of a request at once, so they
 * cost one round trip; each reader's step then takes its answer. */
static int ledger__issue_prefetch(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req)
{
    struct ledger_store_stmt *st[LR__N];
    int rc = NU_OK;

    for (size_t i = 0; rc == NU_OK && i < LR__N; i++) {
        rc = ledger__stmt(l, ledger__issue_reads[i], &st[i]);
        if (rc == NU_OK)
            ledger__reset(st[i]);
    }
    if (rc == NU_OK)
        rc = ledger__issue_bind(l, req, st);
    for (size_t i = 0; rc == NU_OK && i < LR__N; i++)
        rc = ledger_store_send(st[i]);
    return rc;
}

/* issue_one with its reads sent ahead when pipelining; a read it did not
 * need is reset, so no stale answer waits for another caller's step. */
static int ledger__issue_piped(struct cloud_ledger *l, const struct cloud_ledger_issue_req *req,
                               cloud_ledger_sign_fn sign, void *sign_ctx,
                               struct cloud_ledger_issue_result *out)
{
    int rc = ledger_store_piped(l->store) ? ledger__issue_prefetch(l, req) : NU_OK;
    if (rc == NU_OK)
        rc = ledger__issue_one(l, req, sign, sign_ctx, out);
    for (size_t i = 0; i < LR__N; i++)
        if (l->st[ledger__issue_reads[i]])
            ledger__reset(l->st[ledger__issue_reads[i]]);
    return rc;
}

/* Orders for the batch's up-front locks (PostgreSQL). */
static int ledger__cmp_key(const void *a, const void *b)
{
    const struct cloud_ledger_issue_req *x = *(const struct cloud_ledger_issue_req *const *)a;
    const struct cloud_ledger_issue_req *y = *(const struct cloud_ledger_issue_req *const *)b;
    int c = strcmp(x->requester, y->requester);
    size_t n = x->idempotency_key_len < y->idempotency_key_len ? x->idempotency_key_len
                                                                : y->idempotency_key_len;
    if (c == 0)
        c = memcmp(x->idempotency_key, y->idempotency_key, n);
    if (c == 0)
        c = (x->idempotency_key_len > n) - (y->idempotency_key_len > n);
    return c;
}

static int ledger__cmp_job(const void *a, const void *b)
{
    const struct cloud_ledger_issue_req *x = *(const struct cloud_ledger_issue_req *const *)a;
    const struct cloud_ledger_issue_req *y = *(const struct cloud_ledger_issue_req *const *)b;
    int c = strcmp(x->job_id, y->job_id);
    return c ? c : strcmp(x->requester, y->requester);
}

/* Lock one row with a FOR UPDATE statement (two text keys; absent is fine). */
int ledger__lock_row(struct cloud_ledger *l, enum ledger_stmt id, const char *a,
                     const char *b)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, id, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, a);
    if (b)
        ledger__bind_text(st, 2, b);
    if (ledger_store_piped(l->store))
        return ledger_store_queue(st, -1); /* held before anything sent after it runs */
    while (ledger__row(st, &rc))
        ;
    ledger__reset(st);
    return rc;
}

/*
 * PostgreSQL: take every lock the batch will need before deciding anything,
 * each kind in one global order, so agents running batches side by side
 * queue instead of deadlocking: advisory locks on (requester, idempotency
 * key) sorted by key, then the job rows sorted by job, then the allocation
 * rows sorted by (job, programmer); the chain head comes last, at the first
 * event. SQLite: BEGIN IMMEDIATE already holds the one write lock.
 */
static int ledger__batch_lock(struct cloud_ledger *l, const struct cloud_ledger_issue_req *reqs,
                              size_t n, const struct cloud_ledger_issue_result *out)
{
    const struct cloud_ledger_issue_req *v[CLOUD_LEDGER_BATCH_MAX];
    uint8_t key[CLOUD_LEDGER_ID_MAX + 1 + CLOUD_LEDGER_KEY_MAX];
    size_t m = 0;
    int rc = NU_OK;

    if (ledger_store_serializes_writers(l->store))
        return NU_OK; /* one writer at a time already: nothing to order */
    for (size_t i = 0; i < n; i++)
        if (out[i].code == -1)
            v[m++] = &reqs[i];
    qsort(v, m, sizeof(v[0]), ledger__cmp_key);
    for (size_t i = 0; rc == NU_OK && i < m; i++) {
        size_t rl = strlen(v[i]->requester);
        memcpy(key, v[i]->requester, rl + 1);
        memcpy(key + rl + 1, v[i]->idempotency_key, v[i]->idempotency_key_len);
        rc = ledger_store_xact_lock(l->store, 1, key, rl + 1 + v[i]->idempotency_key_len);
    }
    qsort(v, m, sizeof(v[0]), ledger__cmp_job);
    for (size_t i = 0; rc == NU_OK && i < m; i++)
        if (i == 0 || strcmp(v[i]->job_id, v[i - 1]->job_id) != 0)
            rc = ledger__lock_row(l, ST_JOB_LOCK, v[i]->job_id, NULL);
    for (size_t i = 0; rc == NU_OK && i < m; i++)
        if (i == 0 || ledger__cmp_job(&v[i], &v[i - 1]) != 0)
            rc = ledger__lock_row(l, ST_ALLOC_GET, v[i]->job_id, v[i]->requester);
    return rc;
}

/*
 * Decide every pending request (code -1) under one open transaction, each
 * inside a savepoint so that a failed request is undone alone. Pipelining,
 * a request's queued writes are waited for before its savepoint is
 * released, so a failure is charged to the request that caused it.
 */
static int ledger__batch_run(struct cloud_ledger *l, const struct cloud_ledger_issue_req *reqs,
                             size_t n, cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out)
{
    for (size_t i = 0; i < n; i++) {
        int rc;
        if (out[i].code != -1)
            continue;
        rc = ledger__exec(l, ST_SP);
        if (rc != NU_OK)
            return rc;
        rc = ledger__issue_piped(l, &reqs[i], sign, sign_ctx, &out[i]);
        if (rc == NU_OK)
            rc = ledger_store_flush(l->store);
        if (rc != NU_OK) {
            ledger__result_clear(&out[i], rc);
            rc = ledger__exec(l, ST_SP_ROLLBACK);
            if (rc != NU_OK)
                return rc;
        }
        rc = ledger__exec(l, ST_SP_RELEASE);
        if (rc != NU_OK)
            return rc;
    }
    return NU_OK;
}

/* Whether a failure leaves the batch worth running again request by request
 * (not when the database is gone or a lock wait gave up). */
static int ledger__retryable(int rc)
{
    return rc != NU_OK && rc != NU_ERR_CONNECTION && rc != NU_ERR_BUSY && rc != NU_ERR_NOMEM;
}

/* Slot i's handles, prepared on first use. */
static int ledger__pool(struct cloud_ledger *l, size_t i, struct ledger_store_stmt **out)
{
    for (size_t k = 0; k < LR__N; k++) {
        if (!l->pool[i][k]) {
            int rc = ledger__stmt_new(l, ledger__issue_reads[k], &l->pool[i][k]);
            if (rc != NU_OK)
                return rc;
        }
        ledger__reset(l->pool[i][k]);
        out[k] = l->pool[i][k];
    }
    return NU_OK;
}

/*
 * Send every pending request's reads in one go (after the batch's locks, so
 * they see the rows as locked), the job and allocation rows once each, then
 * read those into the view. The other answers wait in the slots' handles.
 */
static int ledger__batch_prefetch(struct cloud_ledger *l, struct ledger_view *v,
                                  const struct cloud_ledger_issue_req *reqs, size_t n,
                                  const struct cloud_ledger_issue_result *out)
{
    struct ledger_store_stmt *st[LR__N];
    int rc = NU_OK;

    for (size_t i = 0; rc == NU_OK && i < n; i++) {
        if (out[i].code != -1)
            continue;
        if ((rc = ledger__pool(l, i, st)) != NU_OK || (rc = ledger__issue_bind(l, &reqs[i], st)))
            break;
        for (size_t k = 0; rc == NU_OK && k < LR__N; k++)
            if (!LEDGER__VIEWED(k))
                rc = ledger_store_send(st[k]);
        if (rc == NU_OK && !ledger__view_job(v, reqs[i].job_id)) {
            v->jobs[v->njobs++] = (struct ledger_view_job){.job_id = reqs[i].job_id, .slot = i};
            rc = ledger_store_send(st[LR_JOB]);
        }
        if (rc == NU_OK && !ledger__view_alloc(v, reqs[i].job_id, reqs[i].requester)) {
            v->allocs[v->nallocs++] = (struct ledger_view_alloc){
                .job_id = reqs[i].job_id, .programmer_id = reqs[i].requester, .slot = i};
            rc = ledger_store_send(st[LR_ALLOC]);
        }
    }
    for (size_t i = 0; rc == NU_OK && i < v->njobs; i++) {
        struct ledger_store_stmt *js = l->pool[v->jobs[i].slot][LR_JOB];
        rc = ledger__step_one(l, js, "job get");
        v->jobs[i].found = rc == NU_OK;
        if (rc == NU_OK) {
            rc = ledger__job_row(js, &v->jobs[i].job);
            ledger__reset(js);
        }
        rc = rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
    }
    for (size_t i = 0; rc == NU_OK && i < v->nallocs; i++) {
        struct ledger_store_stmt *as = l->pool[v->allocs[i].slot][LR_ALLOC];
        rc = ledger__step_one(l, as, "allocation get");
        v->allocs[i].found = rc == NU_OK;
        if (rc == NU_OK) {
            v->allocs[i].limit = ledger__col_u32(as, 0);
            v->allocs[i].issued = ledger__col_u32(as, 1);
            ledger__reset(as);
        }
        rc = rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
    }
    return rc;
}

/* Whether an earlier request of the batch may have written what request i
 * read ahead: its idempotency-cache row or its (job, device) certificate. */
static int ledger__batch_stale(const struct cloud_ledger_issue_req *reqs, size_t i)
{
    const struct cloud_ledger_issue_req *r = &reqs[i];
    for (size_t j = 0; j < i; j++) {
        const struct cloud_ledger_issue_req *q = &reqs[j];
        if ((q->idempotency_key_len == r->idempotency_key_len &&
             memcmp(q->idempotency_key, r->idempotency_key, r->idempotency_key_len) == 0 &&
             strcmp(q->requester, r->requester) == 0) ||
            (q->device_uid_len == r->device_uid_len &&
             memcmp(q->device_uid, r->device_uid, r->device_uid_len) == 0 &&
             strcmp(q->job_id, r->job_id) == 0))
            return 1;
    }
    return 0;
}

/* Request i with its slot's answers standing in for the readers' handles. */
static int ledger__issue_slot(struct cloud_ledger *l, const struct cloud_ledger_issue_req *reqs,
                              size_t i, cloud_ledger_sign_fn sign, void *sign_ctx,
                              struct cloud_ledger_issue_result *out)
{
    struct ledger_store_stmt *keep[LR__N];
    int stale = ledger__batch_stale(reqs, i), rc;

    for (size_t k = 0; k < LR__N; k++) {
        enum ledger_stmt id = ledger__issue_reads[k];
        if (LEDGER__VIEWED(k))
            continue;
        if (stale && (k == LR_REQ || k == LR_CERT))
            ledger__reset(l->pool[i][k]); /* read again, after the writes queued */
        keep[k] = l->st[id];
        l->st[id] = l->pool[i][k];
    }
    rc = ledger__issue_one(l, &reqs[i], sign, sign_ctx, &out[i]);
    for (size_t k = 0; k < LR__N; k++) {
        if (LEDGER__VIEWED(k))
            continue;
        l->st[ledger__issue_reads[k]] = keep[k];
        ledger__reset(l->pool[i][k]); /* an answer it did not need */
    }
    return rc;
}

/*
 * PostgreSQL's fast path: the same decisions with no savepoints; every read
 * of the batch goes out at once (ledger__batch_prefetch) and every write is
 * queued behind: a few round trips per batch. A request that fails before
 * writing anything (the signer refused) is answered with its error and the
 * batch goes on. Anything else returns LEDGER__CAREFUL: the caller rolls the
 * transaction back and runs the batch again with a savepoint per request,
 * so one bad request cannot fail the others. Database failures come back
 * as they are.
 */
#define LEDGER__CAREFUL (-1000)
static int ledger__batch_fast(struct cloud_ledger *l, const struct cloud_ledger_issue_req *reqs,
                              size_t n, cloud_ledger_sign_fn sign, void *sign_ctx,
                              struct cloud_ledger_issue_result *out)
{
    struct ledger_view *v = calloc(1, sizeof(*v));
    int rc = v ? ledger__batch_prefetch(l, v, reqs, n, out) : NU_ERR_NOMEM;

    l->view = v;
    for (size_t i = 0; rc == NU_OK && i < n; i++) {
        if (out[i].code != -1)
            continue;
        unsigned long w0 = l->writes;
        int irc = ledger__issue_slot(l, reqs, i, sign, sign_ctx, out);
        if (irc == NU_OK)
            continue;
        rc = ledger_store_flush(l->store);
        if (rc == NU_OK && l->writes != w0)
            rc = LEDGER__CAREFUL;
        if (rc == NU_OK)
            ledger__result_clear(&out[i], irc); /* nothing of it was written */
    }
    l->view = NULL;
    if (v) {
        int erc = ledger__view_events(l, v, rc == NU_OK);
        rc = rc == NU_OK ? erc : rc;
    }
    if (rc == NU_OK)
        rc = ledger_store_flush(l->store);
    free(v);
    return rc == NU_OK || rc == LEDGER__CAREFUL || !ledger__retryable(rc) ? rc : LEDGER__CAREFUL;
}

/* One transaction over the batch: locks, decisions, commit. fast: PostgreSQL's
 * savepoint-free path (may return LEDGER__CAREFUL, transaction left open). */
static int ledger__batch_tx(struct cloud_ledger *l, const struct cloud_ledger_issue_req *reqs,
                            size_t n, cloud_ledger_sign_fn sign, void *sign_ctx,
                            struct cloud_ledger_issue_result *out, int fast)
{
    int rc = ledger__begin(l, 1);
    if (rc == NU_OK)
        rc = ledger_store_pipeline(l->store, 1);
    if (rc == NU_OK)
        rc = ledger__batch_lock(l, reqs, n, out);
    if (rc == NU_OK)
        rc = fast ? ledger__batch_fast(l, reqs, n, sign, sign_ctx, out)
                  : ledger__batch_run(l, reqs, n, sign, sign_ctx, out);
    if (rc == NU_OK)
        rc = ledger__commit(l);
    return rc;
}

int cloud_ledger_issue_batch(struct cloud_ledger *ledger, const struct cloud_ledger_issue_req *reqs,
                             size_t n, cloud_ledger_sign_fn sign, void *sign_ctx,
                             struct cloud_ledger_issue_result *out)
{
    size_t pending = 0;
    int rc;

    /* With n itself out of range the size of out is unknown: leave it alone. */
    if (!out || n == 0 || n > CLOUD_LEDGER_BATCH_MAX)
        return NU_ERR_INVALID_ARG;
    if (!ledger || !reqs || !sign) {
        for (size_t i = 0; i < n; i++)
            ledger__result_clear(&out[i], NU_ERR_INVALID_ARG);
        return NU_ERR_INVALID_ARG;
    }
    for (size_t i = 0; i < n; i++) {
        rc = ledger__issue_req_check(&reqs[i]);
        ledger__result_clear(&out[i], rc == NU_OK ? -1 : rc);
        pending += rc == NU_OK;
    }
    if (pending == 0)
        return NU_OK;
    rc = ledger__batch_tx(ledger, reqs, n, sign, sign_ctx, out, ledger__is_pg(ledger));
    if (rc == LEDGER__CAREFUL) {
        ledger__rollback(ledger);
        for (size_t i = 0; i < n; i++)
            if (ledger__issue_req_check(&reqs[i]) == NU_OK)
                ledger__result_clear(&out[i], -1);
        rc = ledger__batch_tx(ledger, reqs, n, sign, sign_ctx, out, 0);
    }
    if (rc != NU_OK) {
        ledger__rollback(ledger);
        /* Nothing of the batch is recorded: no request may be answered as done. */
        for (size_t i = 0; i < n; i++) {
            if (ledger__issue_req_check(&reqs[i]) == NU_OK)
                ledger__result_clear(&out[i], rc);
        }
    }
    return rc;
}

int cloud_ledger_issue(struct cloud_ledger *ledger, const struct cloud_ledger_issue_req *req,
                       cloud_ledger_sign_fn sign, void *sign_ctx,
                       struct cloud_ledger_issue_result *out)
{
    int rc = cloud_ledger_issue_batch(ledger, req, 1, sign, sign_ctx, out);
    return rc != NU_OK ? rc : out->code;
}
