/*
 * ledger_job — jobs (create, get, list, control) and firmware delivery
 * (job keys, sealed packages, signed firmware images).
 */
#include "ledger_int.h"

/* ------------------------------------------------------------------- jobs */


static int ledger__secrets_check(const struct cloud_ledger_job_secrets *x, size_t n)
{
    if (!x->packages || x->image_size == 0)
        return NU_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++) {
        if (!x->packages[i].package || x->packages[i].package_len == 0)
            return NU_ERR_INVALID_ARG;
        if (x->packages[i].package_len > CLOUD_LEDGER_PACKAGE_MAX)
            return NU_ERR_TOO_LARGE;
    }
    return NU_OK;
}

static int ledger__job_spec_check(const struct cloud_ledger_job_spec *s)
{
    uint64_t sum = 0;
    int rc;

    if (!s || !s->alloc || s->n_alloc == 0 || s->quota == 0 || !ledger__time_ok(s->now_ms) ||
        !ledger__time_ok(s->expires_at_ms) || (s->expires_at_ms && s->expires_at_ms <= s->now_ms))
        return NU_ERR_INVALID_ARG;
    if (s->n_alloc > CLOUD_LEDGER_ALLOC_MAX)
        return NU_ERR_TOO_LARGE;
    rc = ledger__id_check(s->job_id);
    if (rc == NU_OK)
        rc = ledger__id_check(s->firmware);
    if (rc == NU_OK)
        rc = ledger__id_check(s->actor);
    if (rc == NU_OK)
        rc = ledger__text_check(s->subject_template, CLOUD_LEDGER_TEXT_MAX);
    for (size_t i = 0; rc == NU_OK && i < s->n_alloc; i++) {
        const struct cloud_ledger_alloc *a = &s->alloc[i];
        if (memchr(a->programmer_id, '\0', sizeof(a->programmer_id)) == NULL)
            return NU_ERR_INVALID_ARG;
        rc = ledger__id_check(a->programmer_id);
        if (rc == NU_OK && a->limit == 0)
            rc = NU_ERR_INVALID_ARG;
        for (size_t k = 0; rc == NU_OK && k < i; k++) {
            if (strcmp(s->alloc[k].programmer_id, a->programmer_id) == 0)
                rc = NU_ERR_INVALID_ARG;
        }
        sum += a->limit;
    }
    if (rc == NU_OK && sum > s->quota)
        rc = NU_ERR_INVALID_ARG;
    if (rc == NU_OK && s->secrets)
        rc = ledger__secrets_check(s->secrets, s->n_alloc);
    return rc;
}

static int ledger__job_created_event(struct cloud_ledger *l, const struct cloud_ledger_job_spec *s)
{
    struct ledger_json j;

    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "firmware", s->firmware);
    lj_u64(&j, "quota", s->quota);
    lj_u64(&j, "expires_at_ms", s->expires_at_ms);
    lj_str(&j, "subject_template", s->subject_template);
    lj_key(&j, "allocations");
    lj_raw(&j, "[", 1);
    for (size_t i = 0; i < s->n_alloc; i++) {
        lj_key(&j, NULL);
        lj_raw(&j, "{", 1);
        lj_str(&j, "programmer", s->alloc[i].programmer_id);
        lj_u64(&j, "limit", s->alloc[i].limit);
        lj_raw(&j, "}", 1);
    }
    lj_raw(&j, "]}", 2);
    return ledger__append_json(l, &j, s->now_ms, "job.created", s->actor, s->job_id);
}

/* Firmware key, packages and their event, inside job_create's transaction. */
static int ledger__job_secrets_put(struct cloud_ledger *l, const struct cloud_ledger_job_spec *s)
{
    const struct cloud_ledger_job_secrets *x = s->secrets;
    uint8_t pkg_hash[NU_SHA256_LEN];
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_KEYS_INSERT, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, s->job_id);
    ledger__bind_blob(st, 2, x->firmware_key, sizeof(x->firmware_key));
    ledger__bind_blob(st, 3, x->image_digest, sizeof(x->image_digest));
    ledger__bind_u64(st, 4, x->image_size);
    ledger__bind_blob(st, 5, x->request_hash, sizeof(x->request_hash));
    ledger__bind_u64(st, 6, s->now_ms);
    rc = ledger__run(l, st, "job keys insert");
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_hex(&j, "image_digest", x->image_digest, sizeof(x->image_digest));
    lj_u64(&j, "image_size", x->image_size);
    lj_key(&j, "packages");
    lj_raw(&j, "[", 1);
    for (size_t i = 0; rc == NU_OK && i < s->n_alloc; i++) {
        const struct cloud_ledger_job_package *p = &x->packages[i];
        rc = ledger__stmt(l, ST_PKG_INSERT, &st);
        if (rc != NU_OK)
            break;
        ledger__bind_text(st, 1, s->job_id);
        ledger__bind_text(st, 2, s->alloc[i].programmer_id);
        ledger__bind_u64(st, 3, i);
        ledger__bind_blob(st, 4, p->token_hash, sizeof(p->token_hash));
        ledger__bind_blob(st, 5, p->package, p->package_len);
        rc = ledger__run(l, st, "package insert");
        if (rc == NU_OK)
            rc = nu_sha256(p->package, p->package_len, pkg_hash);
        lj_key(&j, NULL);
        lj_raw(&j, "{", 1);
        lj_str(&j, "programmer", s->alloc[i].programmer_id);
        ledger__token_id(&j, p->token_hash);
        lj_hex(&j, "package_sha256", pkg_hash, sizeof(pkg_hash));
        lj_raw(&j, "}", 1);
    }
    lj_raw(&j, "]}", 2);
    if (rc == NU_OK)
        rc = ledger__append_json(l, &j, s->now_ms, "job.packages", s->actor, s->job_id);
    return rc;
}

int cloud_ledger_job_create(struct cloud_ledger *ledger, const struct cloud_ledger_job_spec *spec)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__job_spec_check(spec);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc != NU_OK)
        return rc;
    for (size_t i = 0; rc == NU_OK && i < spec->n_alloc; i++)
        rc = ledger__prog_state(ledger, spec->alloc[i].programmer_id, NULL);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_JOB_INSERT, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, spec->job_id);
    ledger__bind_text(st, 2, spec->firmware);
    ledger__bind_u64(st, 3, spec->quota);
    ledger__bind_u64(st, 4, spec->now_ms);
    ledger__bind_u64(st, 5, spec->expires_at_ms);
    ledger__bind_text(st, 6, spec->subject_template);
    ledger__bind_text(st, 7, spec->actor);
    rc = ledger__run(ledger, st, "job insert");
    for (size_t i = 0; rc == NU_OK && i < spec->n_alloc; i++) {
        rc = ledger__stmt(ledger, ST_ALLOC_INSERT, &st);
        if (rc != NU_OK)
            break;
        ledger__bind_text(st, 1, spec->job_id);
        ledger__bind_text(st, 2, spec->alloc[i].programmer_id);
        ledger__bind_u64(st, 3, spec->alloc[i].limit);
        rc = ledger__run(ledger, st, "allocation insert");
    }
    if (rc == NU_OK)
        rc = ledger__job_created_event(ledger, spec);
    if (rc == NU_OK && spec->secrets)
        rc = ledger__job_secrets_put(ledger, spec);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_job_get(struct cloud_ledger *ledger, const char *job_id,
                         struct cloud_ledger_job *out_job, struct cloud_ledger_alloc *out_alloc,
                         size_t alloc_cap, size_t *out_n_alloc)
{
    int rc;

    if (!ledger || !out_job || (!out_alloc && alloc_cap))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 0);
    if (rc != NU_OK)
        return rc;
    rc = ledger__job_read(ledger, job_id, out_job);
    if (rc == NU_OK)
        rc = ledger__alloc_list(ledger, job_id, out_alloc, alloc_cap, out_n_alloc);
    ledger__rollback(ledger); /* read-only: nothing to commit */
    return rc;
}

/* A job row plus its allocations, for ledger__walk. */
struct ledger_job_item {
    struct cloud_ledger *l;
    cloud_ledger_job_visit_fn visit;
    void *ctx;
    struct cloud_ledger_job job;
    size_t n_alloc;
};

static int ledger__job_row_v(struct ledger_store_stmt *st, void *item)
{
    struct ledger_job_item *it = item;
    int rc = ledger__job_row(st, &it->job);

    if (rc == NU_OK)
        rc = ledger__alloc_list(it->l, it->job.job_id, it->l->alloc, CLOUD_LEDGER_ALLOC_MAX,
                                &it->n_alloc);
    if (it->n_alloc > CLOUD_LEDGER_ALLOC_MAX)
        it->n_alloc = CLOUD_LEDGER_ALLOC_MAX;
    return rc;
}

static int ledger__job_visit_v(void *ctx, const void *item)
{
    const struct ledger_job_item *it = item;
    (void)ctx;
    return it->visit(it->ctx, &it->job, it->l->alloc, it->n_alloc);
}

int cloud_ledger_job_list(struct cloud_ledger *ledger, cloud_ledger_job_visit_fn visit, void *ctx)
{
    struct ledger_job_item it = {.l = ledger, .visit = visit, .ctx = ctx};
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_JOB_LIST, &st);
    if (rc == NU_OK)
        rc = ledger__walk(ledger, st, ledger__job_row_v, &it, ledger__job_visit_v, NULL);
    ledger__rollback(ledger);
    return rc;
}

/* The status an action leads to from `from`, 0 when not allowed. */
static enum cloud_ledger_job_status ledger__job_next(enum cloud_ledger_job_status from,
                                                     enum cloud_ledger_job_action action)
{
    switch (action) {
    case CLOUD_LEDGER_JOB_PAUSE:
        return from == CLOUD_LEDGER_JOB_ACTIVE ? CLOUD_LEDGER_JOB_PAUSED : 0;
    case CLOUD_LEDGER_JOB_RESUME:
        return from == CLOUD_LEDGER_JOB_PAUSED ? CLOUD_LEDGER_JOB_ACTIVE : 0;
    case CLOUD_LEDGER_JOB_CLOSE:
        return from == CLOUD_LEDGER_JOB_CLOSED ? 0 : CLOUD_LEDGER_JOB_CLOSED;
    }
    return 0;
}

int cloud_ledger_job_control(struct cloud_ledger *ledger, const char *job_id,
                             enum cloud_ledger_job_action action, const char *actor,
                             uint64_t now_ms, struct cloud_ledger_job *out_job)
{
    static const char *const kinds[] = {NULL, "job.paused", "job.resumed", "job.closed"};
    struct cloud_ledger_job job;
    enum cloud_ledger_job_status next;
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || action < CLOUD_LEDGER_JOB_PAUSE || action > CLOUD_LEDGER_JOB_CLOSE ||
        !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    /* The status decided on is the one overwritten: read under the job row's
     * lock where writers are not serialized (a close and a pause racing on
     * PostgreSQL left a closed job paused, then resumable). */
    if (rc == NU_OK && !ledger_store_serializes_writers(ledger->store))
        rc = ledger__lock_row(ledger, ST_JOB_LOCK, job_id, NULL);
    if (rc == NU_OK)
        rc = ledger__job_read(ledger, job_id, &job);
    if (rc != NU_OK)
        goto out;
    next = ledger__job_next(job.status, action);
    if (next == 0) {
        rc = NU_ERR_STATE;
        goto out;
    }
    rc = ledger__stmt(ledger, ST_JOB_STATUS, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, job_id);
    ledger__bind_text(st, 2, ledger__job_status_names[next]);
    ledger__bind_u64(st, 3, now_ms);
    rc = ledger__run(ledger, st, "job status");
    if (rc != NU_OK)
        goto out;
    lj_init(&j, ledger->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "from", ledger__job_status_names[job.status]);
    lj_str(&j, "to", ledger__job_status_names[next]);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(ledger, &j, now_ms, kinds[action], actor, job_id);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    if (rc == NU_OK && out_job) {
        job.status = next;
        *out_job = job;
    }
out:
    ledger__rollback(ledger);
    return rc;
}

/* -------------------------------------------------------- firmware delivery */

static int ledger__keys_read(struct cloud_ledger *l, const char *job_id,
                             struct cloud_ledger_job_keys *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__row_by_key(l, ST_KEYS_GET, job_id, "job keys get", &st);
    if (rc != NU_OK)
        return rc;
    rc = ledger__col_fixed(st, 0, out->firmware_key, sizeof(out->firmware_key));
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 1, out->image_digest, sizeof(out->image_digest));
    out->image_size = ledger__col_u32(st, 2);
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 3, out->request_hash, sizeof(out->request_hash));
    ledger__reset(st);
    if (rc != NU_OK)
        nu_zero(out, sizeof(*out));
    return rc;
}

int cloud_ledger_job_keys_get(struct cloud_ledger *ledger, const char *job_id,
                              struct cloud_ledger_job_keys *out_keys)
{
    int rc;

    if (!ledger || !out_keys)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__keys_read(ledger, job_id, out_keys);
    ledger__rollback(ledger);
    return rc;
}

/* The stored token hash of (job, programmer) into out: NU_OK, NOT_FOUND, DB. */
static int ledger__token_hash_read(struct cloud_ledger *l, const char *job_id,
                                   const char *programmer_id, uint8_t out[NU_SHA256_LEN])
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_PKG_TOKEN, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, job_id);
    ledger__bind_text(st, 2, programmer_id);
    rc = ledger__step_one(l, st, "package token get");
    if (rc != NU_OK)
        return rc;
    rc = ledger__col_fixed(st, 0, out, NU_SHA256_LEN);
    ledger__reset(st);
    return rc;
}

int cloud_ledger_firmware_access(struct cloud_ledger *ledger, const char *job_id,
                                 const char *programmer_id, const uint8_t *token, size_t token_len,
                                 struct cloud_ledger_job *out_job,
                                 struct cloud_ledger_job_keys *out_keys)
{
    uint8_t given[NU_SHA256_LEN], stored[NU_SHA256_LEN];
    struct cloud_ledger_job job;
    int rc;

    if (!ledger || !token || token_len == 0 || !out_job || !out_keys)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc == NU_OK)
        rc = ledger__id_check(programmer_id);
    if (rc != NU_OK)
        return rc;
    if (token_len > CLOUD_LEDGER_FW_TOKEN_MAX)
        return NU_ERR_TOKEN;
    rc = nu_sha256(token, token_len, given);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__job_read(ledger, job_id, &job);
    if (rc == NU_OK) {
        rc = ledger__token_hash_read(ledger, job_id, programmer_id, stored);
        if (rc == NU_ERR_NOT_FOUND)
            rc = NU_ERR_NOT_AUTHORIZED;
    }
    /* Compare hashes in constant time: the hash of a guess says nothing
     * useful, but the compare should not either. */
    if (rc == NU_OK && nu_memeq_ct(given, stored, sizeof(given)) != 0)
        rc = NU_ERR_TOKEN;
    if (rc == NU_OK)
        rc = ledger__keys_read(ledger, job_id, out_keys);
    ledger__rollback(ledger);
    if (rc == NU_OK)
        *out_job = job;
    nu_zero(given, sizeof(given));
    nu_zero(stored, sizeof(stored));
    return rc;
}

int cloud_ledger_job_packages(struct cloud_ledger *ledger, const char *job_id,
                              cloud_ledger_package_visit_fn visit, void *ctx)
{
    char prog[CLOUD_LEDGER_ID_MAX + 1];
    struct ledger_store_stmt *st = NULL;
    int step = NU_OK;
    int rc;

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(job_id);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_PKG_LIST, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, job_id);
    while (rc == NU_OK && ledger__row(st, &step)) {
        const void *b = ledger__col_blobp(st, 1);
        int n = ledger__col_bytes(st, 1);
        rc = ledger__col_str(st, 0, prog, sizeof(prog));
        if (rc == NU_OK && (!b || n <= 0 || (size_t)n > CLOUD_LEDGER_PACKAGE_MAX))
            rc = NU_ERR_DB;
        if (rc == NU_OK)
            rc = visit(ctx, prog, b, (size_t)n);
    }
    if (rc == NU_OK && step != NU_OK)
        rc = step;
    ledger__reset(st);
out:
    ledger__rollback(ledger);
    return rc;
}

static int ledger__firmware_check(const struct cloud_ledger_firmware *fw)
{
    int rc;

    if (!fw || fw->image_size == 0 || !ledger__time_ok(fw->signed_at_ms) ||
        !memchr(fw->name, '\0', sizeof(fw->name)) ||
        !memchr(fw->signed_by, '\0', sizeof(fw->signed_by)))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(fw->name);
    if (rc == NU_OK)
        rc = ledger__id_check(fw->signed_by);
    return rc;
}

int ledger__firmware_add_in_txn(struct cloud_ledger *l, const struct cloud_ledger_firmware *fw)
{
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__firmware_check(fw);

    if (rc == NU_OK)
        rc = ledger__stmt(l, ST_FW_INSERT, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, fw->name);
    ledger__bind_blob(st, 2, fw->image_digest, sizeof(fw->image_digest));
    ledger__bind_u64(st, 3, fw->image_size);
    ledger__bind_u64(st, 4, fw->security_counter);
    ledger__bind_blob(st, 5, fw->request_hash, sizeof(fw->request_hash));
    ledger__bind_text(st, 6, fw->signed_by);
    ledger__bind_u64(st, 7, fw->signed_at_ms);
    rc = ledger__run(l, st, "firmware insert");
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "name", fw->name);
    lj_hex(&j, "digest", fw->image_digest, sizeof(fw->image_digest));
    lj_u64(&j, "size", fw->image_size);
    lj_u64(&j, "security_counter", fw->security_counter);
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, fw->signed_at_ms, "firmware.signed", fw->signed_by, "");
}

int cloud_ledger_firmware_add(struct cloud_ledger *ledger, const struct cloud_ledger_firmware *fw)
{
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__firmware_check(fw);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__firmware_add_in_txn(ledger, fw);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_firmware_get(struct cloud_ledger *ledger, const char *name,
                              struct cloud_ledger_firmware *out_fw)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !out_fw)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(name);
    if (rc == NU_OK)
        rc = ledger__row_by_key(ledger, ST_FW_GET, name, "firmware get", &st);
    if (rc != NU_OK)
        return rc;
    memset(out_fw, 0, sizeof(*out_fw));
    rc = ledger__col_str(st, 0, out_fw->name, sizeof(out_fw->name));
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 1, out_fw->image_digest, sizeof(out_fw->image_digest));
    out_fw->image_size = ledger__col_u32(st, 2);
    out_fw->security_counter = ledger__col_u32(st, 3);
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 4, out_fw->request_hash, sizeof(out_fw->request_hash));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 5, out_fw->signed_by, sizeof(out_fw->signed_by));
    out_fw->signed_at_ms = ledger__col_u64(st, 6);
    ledger__reset(st);
    return rc;
}
