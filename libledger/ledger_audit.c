/*
 * ledger_audit — the audit chain: event hashing and append, audit
 * append/list/head from outside, signed checkpoints, and verify.
 */
#include "ledger_int.h"

/* The protective triggers and the schema version that brought each. */
static const struct {
    const char *name;
    int since;
} ledger__triggers[] = {
    {"audit_events_no_update", 1}, {"audit_events_no_delete", 1},
    {"audit_events_seq", 1},       {"audit_head_no_delete", 1},
    {"certificates_no_delete", 1}, {"certificates_fixed", 1},
    {"jobs_no_delete", 1},         {"programmers_no_delete", 1},
    {"firmware_images_fixed", 2},  {"firmware_images_no_delete", 2},
    {"job_keys_fixed", 2},         {"job_keys_no_delete", 2},
    {"job_packages_fixed", 2},     {"job_packages_no_delete", 2},
    {"revoked_measurements_fixed", 5}, {"revoked_measurements_no_delete", 5},
    {"firmware_blobs_fixed", 5},   {"firmware_blobs_no_delete", 5},
    {"cert_superseded_fixed", 6},  {"cert_superseded_no_delete", 6},
};

/* Kinds only the ledger writes; verify trusts cert.issued events. */
static const char *const ledger__reserved_kinds[] = {
    "ledger.created",     "job.created",       "job.paused",          "job.resumed",
    "job.closed",         "job.exhausted",     "programmer.enrolled", "programmer.revoked",
    "enroll.token.added", "enroll.token.used", "enroll.refused",      "cert.issued",
    "cert.resent",        "cert.refused",      "cert.provisioned",    "cert.failed",
    "cert.revoked",       "ledger.migrated",   "firmware.signed",     "job.packages",
    "audit.checkpoint",   "programmer.firmware_revoked",
};

/* ------------------------------------------------------------ audit chain */

static void ledger__be64(uint8_t out[8], uint64_t v)
{
    for (int i = 7; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

static void ledger__be32(uint8_t out[4], uint32_t v)
{
    for (int i = 3; i >= 0; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
}

static int ledger__hash_field(struct nu_sha256_ctx *ctx, const char *s, size_t n)
{
    uint8_t len[4];
    int rc;

    if (n > UINT32_MAX)
        return NU_ERR_INVALID_ARG;
    ledger__be32(len, (uint32_t)n);
    rc = nu_sha256_update(ctx, len, sizeof(len));
    if (rc == NU_OK)
        rc = nu_sha256_update(ctx, s, n);
    return rc;
}

int cloud_ledger_event_hash(const uint8_t prev_hash[CLOUD_LEDGER_HASH_LEN], uint64_t seq,
                            uint64_t ts, const char *kind, size_t kind_len, const char *actor,
                            size_t actor_len, const char *job_id, size_t job_id_len,
                            const char *payload, size_t payload_len,
                            uint8_t out[CLOUD_LEDGER_HASH_LEN])
{
    struct nu_sha256_ctx ctx;
    uint8_t nums[16];
    int rc;

    if (!prev_hash || !out || (!kind && kind_len) || (!actor && actor_len) ||
        (!job_id && job_id_len) || (!payload && payload_len))
        return NU_ERR_INVALID_ARG;
    ledger__be64(nums, seq);
    ledger__be64(nums + 8, ts);
    rc = nu_sha256_init(&ctx);
    if (rc != NU_OK)
        return rc;
    rc = nu_sha256_update(&ctx, prev_hash, CLOUD_LEDGER_HASH_LEN);
    if (rc == NU_OK)
        rc = nu_sha256_update(&ctx, nums, sizeof(nums));
    if (rc == NU_OK)
        rc = ledger__hash_field(&ctx, kind, kind_len);
    if (rc == NU_OK)
        rc = ledger__hash_field(&ctx, actor, actor_len);
    if (rc == NU_OK)
        rc = ledger__hash_field(&ctx, job_id, job_id_len);
    if (rc == NU_OK)
        rc = ledger__hash_field(&ctx, payload, payload_len);
    if (rc == NU_OK)
        return nu_sha256_final(&ctx, out);
    nu_sha256_abort(&ctx);
    return rc;
}

/* Append one event inside the caller's write transaction. The head is read
 * (and locked) once per transaction, then known (l->head); on PostgreSQL the
 * insert and the head's move are one statement: 1 round trip per event
 * after the first instead of 3. */
static int ledger__append(struct cloud_ledger *l, uint64_t ts, const char *kind, const char *actor,
                          const char *job_id, const char *payload, size_t payload_len,
                          uint64_t *out_seq)
{
    struct ledger_store_stmt *st = NULL;
    uint8_t hash[CLOUD_LEDGER_HASH_LEN];
    uint64_t seq;
    int rc, pg = ledger__is_pg(l);

    job_id = job_id ? job_id : "";
    if (!l->head.valid) {
        rc = ledger__stmt(l, ST_HEAD_GET, &st);
        if (rc != NU_OK)
            return rc;
        if (!ledger__row(st, &rc)) {
            rc = rc == NU_OK ? NU_ERR_DB : rc;
            ledger__reset(st);
            return rc;
        }
        l->head.seq = ledger__col_u64(st, 0);
        rc = ledger__col_fixed(st, 1, l->head.hash, sizeof(l->head.hash));
        ledger__reset(st);
        if (rc != NU_OK)
            return rc;
        l->head.valid = 1;
    }
    seq = l->head.seq + 1;
    rc = cloud_ledger_event_hash(l->head.hash, seq, ts, kind, strlen(kind), actor, strlen(actor),
                                 job_id, strlen(job_id), payload, payload_len, hash);
    if (rc != NU_OK)
        return rc;

    rc = ledger__stmt(l, pg ? ST_EV_APPEND : ST_EV_INSERT, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_u64(st, 1, seq);
    ledger__bind_u64(st, 2, ts);
    ledger__bind_text(st, 3, kind);
    ledger__bind_text(st, 4, actor);
    ledger__bind_text(st, 5, job_id);
    ledger__bind_blob_text(st, 6, payload, payload_len);
    ledger__bind_blob(st, 7, l->head.hash, sizeof(l->head.hash));
    ledger__bind_blob(st, 8, hash, sizeof(hash));
    /* PostgreSQL: the head must move with the event (1 row updated). */
    rc = ledger__run_expect(l, st, pg ? 1 : -1, "audit append");
    if (rc == NU_OK && !pg) {
        rc = ledger__stmt(l, ST_HEAD_SET, &st);
        if (rc == NU_OK) {
            ledger__bind_u64(st, 1, seq);
            ledger__bind_blob(st, 2, hash, sizeof(hash));
            rc = ledger__run(l, st, "audit head update");
        }
    }
    if (rc != NU_OK) {
        l->head.valid = 0; /* the statement failed: the caller rolls back */
        return rc;
    }
    l->head.seq = seq;
    memcpy(l->head.hash, hash, sizeof(hash));
    if (out_seq)
        *out_seq = seq;
    return NU_OK;
}

/* Append the event whose payload was built in l->payload. */
int ledger__append_json(struct cloud_ledger *l, struct ledger_json *j, uint64_t ts,
                        const char *kind, const char *actor, const char *job_id)
{
    if (j->overflow) {
        nu_error("ledger: %s payload exceeds %zu bytes", kind, j->cap);
        return NU_ERR_INTERNAL;
    }
    return ledger__append(l, ts, kind, actor, job_id, j->buf, j->len, NULL);
}

/* ------------------------------------------------------------------ audit */

static int ledger__kind_reserved(const char *kind)
{
    for (size_t i = 0; i < sizeof(ledger__reserved_kinds) / sizeof(ledger__reserved_kinds[0]);
         i++) {
        if (strcmp(kind, ledger__reserved_kinds[i]) == 0)
            return 1;
    }
    return 0;
}

static int ledger__event_check(const struct cloud_ledger_event *ev)
{
    int rc;

    if (!ev || (!ev->payload && ev->payload_len) || !ledger__time_ok(ev->ts_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__kind_check(ev->kind);
    if (rc == NU_OK)
        rc = ledger__id_check(ev->actor);
    if (rc == NU_OK)
        rc = ledger__opt_id_check(ev->job_id);
    if (rc != NU_OK)
        return rc;
    if (ledger__kind_reserved(ev->kind))
        return NU_ERR_INVALID_ARG;
    if (ev->payload_len > CLOUD_LEDGER_PAYLOAD_MAX)
        return NU_ERR_TOO_LARGE;
    if (ev->payload_len && !ledger__utf8_ok((const uint8_t *)ev->payload, ev->payload_len, 1))
        return NU_ERR_INVALID_ARG;
    return NU_OK;
}

int cloud_ledger_audit_append(struct cloud_ledger *ledger, const struct cloud_ledger_event *event,
                              uint64_t *out_seq)
{
    uint64_t seq = 0;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__event_check(event);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__append(ledger, event->ts_ms, event->kind, event->actor, event->job_id,
                            event->payload_len ? event->payload : "", event->payload_len, &seq);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    if (rc == NU_OK && out_seq)
        *out_seq = seq;
    return rc;
}

static const char *ledger__col_cstr(struct ledger_store_stmt *st, int i)
{
    const unsigned char *t = ledger__col_text(st, i);
    return t ? (const char *)t : "";
}

static int ledger__event_row(struct ledger_store_stmt *st, void *item)
{
    struct cloud_ledger_event *ev = item;
    int rc;

    ev->seq = ledger__col_u64(st, 0);
    ev->ts_ms = ledger__col_u64(st, 1);
    ev->kind = ledger__col_cstr(st, 2);
    ev->actor = ledger__col_cstr(st, 3);
    ev->job_id = ledger__col_cstr(st, 4);
    ev->payload = ledger__col_cstr(st, 5);
    ev->payload_len = (size_t)ledger__col_bytes(st, 5);
    rc = ledger__col_fixed(st, 6, ev->prev_hash, sizeof(ev->prev_hash));
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 7, ev->hash, sizeof(ev->hash));
    return rc;
}

static int ledger__event_visit_v(void *v, const void *item)
{
    struct ledger_visit *lv = v;
    return ((cloud_ledger_event_visit_fn)lv->fn)(lv->ctx, item);
}

int cloud_ledger_audit_list(struct cloud_ledger *ledger, uint64_t from_seq,
                            cloud_ledger_event_visit_fn visit, void *ctx)
{
    struct ledger_visit lv = {(void *)visit, ctx};
    struct cloud_ledger_event ev;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !visit || !ledger__time_ok(from_seq))
        return NU_ERR_INVALID_ARG;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_EV_LIST, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_u64(st, 1, from_seq);
    rc = ledger__walk(ledger, st, ledger__event_row, &ev, ledger__event_visit_v, &lv);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_audit_head(struct cloud_ledger *ledger, uint64_t *out_seq,
                            uint8_t out_hash[CLOUD_LEDGER_HASH_LEN])
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !out_seq || !out_hash)
        return NU_ERR_INVALID_ARG;
    rc = ledger__stmt(ledger, ST_HEAD_READ, &st);
    if (rc != NU_OK)
        return rc;
    rc = ledger__step_one(ledger, st, "audit head");
    if (rc == NU_ERR_NOT_FOUND)
        return NU_ERR_DB;
    if (rc != NU_OK)
        return rc;
    *out_seq = ledger__col_u64(st, 0);
    rc = ledger__col_fixed(st, 1, out_hash, CLOUD_LEDGER_HASH_LEN);
    ledger__reset(st);
    return rc;
}

/* ------------------------------------------------------------ checkpoints */

#define LEDGER__CHECKPOINT_KIND "audit.checkpoint"

int cloud_ledger_checkpoint(struct cloud_ledger *ledger, uint64_t now_ms, const char *actor,
                            cloud_ledger_checkpoint_fn make, void *ctx, uint64_t *out_seq)
{
    char payload[CLOUD_LEDGER_PAYLOAD_MAX + 1];
    uint8_t head[CLOUD_LEDGER_HASH_LEN];
    struct ledger_store_stmt *st = NULL;
    uint64_t head_seq = 0, seq = 0;
    size_t len = 0;
    int rc, sealed = 0;

    if (!ledger || !make || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(actor);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 1);
    /* Lock the head alone first: on PostgreSQL a head row locked through a
     * join with audit_events, after waiting on a concurrent append, is
     * rechecked against the old snapshot's events and vanishes (no row, a
     * failed checkpoint under load). Once locked, the next statement's
     * snapshot sees the head's event. */
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_HEAD_GET, &st);
    if (rc == NU_OK && (rc = ledger__step_one(ledger, st, "audit head")) == NU_OK)
        ledger__reset(st);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_HEAD_KIND, &st);
    if (rc == NU_OK)
        rc = ledger__step_one(ledger, st, "audit head");
    if (rc == NU_ERR_NOT_FOUND)
        rc = NU_ERR_DB; /* a ledger always has its first event */
    if (rc != NU_OK)
        goto out;
    head_seq = ledger__col_u64(st, 0);
    rc = ledger__col_fixed(st, 1, head, sizeof(head));
    sealed = strcmp(ledger__col_cstr(st, 2), LEDGER__CHECKPOINT_KIND) == 0;
    ledger__reset(st);
    if (rc != NU_OK || sealed)
        goto out;
    rc = make(ctx, head_seq, head, payload, sizeof(payload), &len);
    if (rc == NU_OK && len > CLOUD_LEDGER_PAYLOAD_MAX)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK && !ledger__utf8_ok((const uint8_t *)payload, len, 1))
        rc = NU_ERR_INVALID_ARG;
    if (rc == NU_OK)
        rc = ledger__append(ledger, now_ms, LEDGER__CHECKPOINT_KIND, actor, NULL, payload, len,
                            &seq);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    if (out_seq)
        *out_seq = rc == NU_OK ? seq : 0;
    return rc;
}

/* ----------------------------------------------------------------- verify */

/* A certificate or a cert.issued event, reduced to what pairs them. */
struct ledger_pair {
    uint8_t digest[NU_SHA256_LEN];
    int64_t id; /* event seq, or certificate rowid */
};

struct ledger_pairs {
    struct ledger_pair *v;
    size_t n, cap;
};

struct ledger_verify {
    struct ledger_store *store;
    sqlite3 *db; /* the same connection on SQLite (pragmas), else NULL */
    struct cloud_ledger_verify_report *r;
    const struct cloud_ledger_verify_opts *opts;
    struct ledger_pairs events; /* cert.issued events */
    struct ledger_pairs certs;
    int64_t version; /* the file's schema version */
};

static void ledger__finding(struct ledger_verify *v, int *flag, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void ledger__finding(struct ledger_verify *v, int *flag, const char *fmt, ...)
{
    char text[sizeof(v->r->first_problem)];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof(text), fmt, ap);
    va_end(ap);
    /* Findings quote rows an attacker may have written: no control bytes
     * reach a terminal or a log line. */
    for (char *p = text; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    }
    *flag = 0;
    if (v->r->problems++ == 0)
        snprintf(v->r->first_problem, sizeof(v->r->first_problem), "%s", text);
    if (v->r->problems <= 20)
        nu_warn("ledger verify: %s", text);
}

static int ledger__pair_add(struct ledger_pairs *p, const uint8_t digest[NU_SHA256_LEN], int64_t id)
{
    struct ledger_pair *nv = nu_grow(p->v, &p->cap, p->n, sizeof(*nv));
    if (!nv)
        return NU_ERR_NOMEM;
    p->v = nv;
    memcpy(p->v[p->n].digest, digest, NU_SHA256_LEN);
    p->v[p->n].id = id;
    p->n++;
    return NU_OK;
}

static int ledger__pair_cmp(const void *a, const void *b)
{
    return memcmp(((const struct ledger_pair *)a)->digest, ((const struct ledger_pair *)b)->digest,
                  NU_SHA256_LEN);
}

/* The pairing digest: SHA-256(u32be(len job) || job || u64be(ts) || payload). */
static int ledger__pair_digest(const char *job_id, size_t job_len, uint64_t ts, const char *payload,
                               size_t payload_len, uint8_t out[NU_SHA256_LEN])
{
    struct nu_sha256_ctx ctx;
    uint8_t ts_be[8];
    int rc = nu_sha256_init(&ctx);

    if (rc != NU_OK)
        return rc;
    ledger__be64(ts_be, ts);
    rc = ledger__hash_field(&ctx, job_id, job_len);
    if (rc == NU_OK)
        rc = nu_sha256_update(&ctx, ts_be, sizeof(ts_be));
    if (rc == NU_OK)
        rc = nu_sha256_update(&ctx, payload, payload_len);
    if (rc == NU_OK)
        return nu_sha256_final(&ctx, out);
    nu_sha256_abort(&ctx);
    return rc;
}

static int ledger__is_text(struct ledger_store_stmt *st, int i)
{
    return ledger_store_col_type(st, i) == LEDGER_STORE_TEXT;
}

static int ledger__is_hash(struct ledger_store_stmt *st, int i)
{
    return ledger_store_col_type(st, i) == LEDGER_STORE_BLOB &&
           ledger__col_bytes(st, i) == CLOUD_LEDGER_HASH_LEN;
}

/* A one-off statement of verify (finalized by the caller). */
static int ledger__vprep(struct ledger_verify *v, const char *sql, struct ledger_store_stmt **out)
{
    return ledger_store_prepare(v->store, sql, out);
}

/* count(*) and the like: one integer. */
static int ledger__vint(struct ledger_verify *v, const char *sql, int64_t *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__vprep(v, sql, &st);
    if (rc == NU_OK && ledger__row(st, &rc))
        *out = ledger_store_col_i64(st, 0);
    else if (rc == NU_OK)
        rc = NU_ERR_DB;
    ledger_store_finalize(st);
    return rc;
}

/* A checkpoint row signs the head before it: seq - 1 and the row's prev_hash. */
static void ledger__verify_checkpoint(struct ledger_verify *v, uint64_t seq, const uint8_t *prev,
                                      const char *payload, size_t len)
{
    struct cloud_ledger_verify_report *r = v->r;
    r->checkpoints++;
    r->last_checkpoint_seq = seq;
    r->last_checkpoint_head_seq = seq - 1;
    memcpy(r->last_checkpoint_head, prev, CLOUD_LEDGER_HASH_LEN);
    if (!v->opts || !v->opts->check_checkpoint)
        return;
    int rc = v->opts->check_checkpoint(v->opts->ctx, seq - 1, prev, payload, len);
    if (rc != NU_OK) {
        if (!r->first_bad_seq)
            r->first_bad_seq = seq;
        ledger__finding(
            v, &r->checkpoints_ok, "audit seq %llu: checkpoint %s", (unsigned long long)seq,
            rc == NU_ERR_TAMPERED        ? "signs another head: the events before it were "
                                           "rewritten"
            : rc == NU_ERR_BAD_SIGNATURE ? "signature does not verify with the audit key"
                                         : "is malformed");
    }
}

/* Every payload parses as one strict JSON object with no repeated key: an
 * injected `"code":"OK"` or a cut escape shows even with a sound chain. */
static void ledger__verify_payload(struct ledger_verify *v, uint64_t seq, const char *payload,
                                   size_t len)
{
    const char *why = NULL;
    if (nu_json_check(payload, len, &why) == NU_OK)
        return;
    if (!v->r->first_bad_seq)
        v->r->first_bad_seq = seq;
    ledger__finding(v, &v->r->payloads_ok, "audit seq %llu: payload is not strict JSON (%s)",
                    (unsigned long long)seq, why ? why : "?");
}

/* Check one audit row against the running chain state. */
static int ledger__verify_event(struct ledger_verify *v, struct ledger_store_stmt *st, uint64_t *expect,
                                uint8_t prev[NU_SHA256_LEN])
{
    struct cloud_ledger_verify_report *r = v->r;
    /* Types first: reading a value may convert it and void column_type. */
    int typed = ledger_store_col_type(st, 1) == LEDGER_STORE_INTEGER && ledger__is_text(st, 2) &&
                ledger__is_text(st, 3) && ledger__is_text(st, 4) && ledger__is_text(st, 5) &&
                ledger__is_hash(st, 6) && ledger__is_hash(st, 7);
    uint64_t seq = ledger__col_u64(st, 0), ts = ledger__col_u64(st, 1);
    uint8_t hash[NU_SHA256_LEN];
    const char *f[4];
    size_t fl[4];
    int rc;

    r->events++;
    if (seq != *expect) {
        if (!r->first_bad_seq)
            r->first_bad_seq = *expect;
        ledger__finding(v, &r->chain_ok, "audit seq %llu missing (next row is seq %llu)",
                        (unsigned long long)*expect, (unsigned long long)seq);
    }
    *expect = seq + 1;
    if (!typed) {
        if (!r->first_bad_seq)
            r->first_bad_seq = seq;
        ledger__finding(v, &r->chain_ok, "audit seq %llu: a field has the wrong type",
                        (unsigned long long)seq);
        memset(prev, 0xff, NU_SHA256_LEN); /* the next link cannot match either */
        return NU_OK;
    }
    for (int i = 0; i < 4; i++) {
        f[i] = (const char *)ledger__col_text(st, 2 + i);
        fl[i] = (size_t)ledger__col_bytes(st, 2 + i);
    }
    if (memcmp(ledger__col_blobp(st, 6), prev, NU_SHA256_LEN) != 0) {
        if (!r->first_bad_seq)
            r->first_bad_seq = seq;
        ledger__finding(v, &r->chain_ok, "audit seq %llu: prev_hash does not link to seq %llu",
                        (unsigned long long)seq, (unsigned long long)seq - 1);
    }
    rc = cloud_ledger_event_hash(ledger__col_blobp(st, 6), seq, ts, f[0], fl[0], f[1], fl[1],
                                 f[2], fl[2], f[3], fl[3], hash);
    if (rc != NU_OK)
        return rc;
    if (memcmp(hash, ledger__col_blobp(st, 7), NU_SHA256_LEN) != 0) {
        if (!r->first_bad_seq)
            r->first_bad_seq = seq;
        ledger__finding(v, &r->chain_ok, "audit seq %llu: hash mismatch (row edited)",
                        (unsigned long long)seq);
    }
    ledger__verify_payload(v, seq, f[3], fl[3]);
    if (fl[0] == sizeof(LEDGER__CHECKPOINT_KIND) - 1 &&
        memcmp(f[0], LEDGER__CHECKPOINT_KIND, fl[0]) == 0)
        ledger__verify_checkpoint(v, seq, ledger__col_blobp(st, 6), f[3], fl[3]);
    memcpy(prev, ledger__col_blobp(st, 7), NU_SHA256_LEN);
    if (fl[0] == 11 && memcmp(f[0], "cert.issued", 11) == 0) {
        rc = ledger__pair_digest(f[2], fl[2], ts, f[3], fl[3], hash);
        if (rc == NU_OK)
            rc = ledger__pair_add(&v->events, hash, (int64_t)seq);
    }
    return rc;
}

static int ledger__verify_chain(struct ledger_verify *v)
{
    struct cloud_ledger_verify_report *r = v->r;
    uint8_t prev[NU_SHA256_LEN] = {0};
    uint64_t expect = 1;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__vprep(v,
                           "SELECT seq, ts, kind, actor, job_id, payload, prev_hash, hash"
                           " FROM audit_events ORDER BY seq",
                           &st);

    if (rc != NU_OK)
        return rc;
    while (ledger__row(st, &rc)) {
        rc = ledger__verify_event(v, st, &expect, prev);
        if (rc != NU_OK)
            goto out;
    }
    ledger_store_finalize(st);
    st = NULL;
    if (rc != NU_OK)
        return rc;
    if (r->events == 0)
        ledger__finding(v, &r->chain_ok, "audit chain is empty (ledger.created missing)");
    /* The head is written with every event: a cut tail shows here. */
    rc = ledger__vprep(v, "SELECT seq, hash FROM audit_head WHERE id = 1", &st);
    if (rc != NU_OK)
        return rc;
    if (!ledger__row(st, &rc)) {
        if (rc != NU_OK)
            goto out;
    }
    if (ledger_store_col_type(st, 0) == LEDGER_STORE_NULL || ledger__col_u64(st, 0) != expect - 1 || !ledger__is_hash(st, 1) ||
        memcmp(ledger__col_blobp(st, 1), prev, NU_SHA256_LEN) != 0) {
        if (!r->first_bad_seq)
            r->first_bad_seq = expect;
        ledger__finding(v, &r->chain_ok, "audit head does not match the last event (seq %llu)",
                        (unsigned long long)expect - 1);
    }
    rc = NU_OK;
out:
    ledger_store_finalize(st);
    return rc;
}

/* Rebuild each certificate's cert.issued pairing digest. */
static int ledger__verify_cert_row(struct ledger_verify *v, struct ledger_store_stmt *st)
{
    char payload[1024];
    struct ledger_json j;
    uint8_t pem_sha[NU_SHA256_LEN], digest[NU_SHA256_LEN];
    const char *serial = (const char *)ledger__col_text(st, 1);
    const char *job = (const char *)ledger__col_text(st, 2);
    const char *pem = (const char *)ledger__col_text(st, 5);
    const char *prog = (const char *)ledger__col_text(st, 6);
    int uid_len = ledger__col_bytes(st, 3), key_len = ledger__col_bytes(st, 7);
    int rc;

    v->r->certificates++;
    if (!serial || !job || !pem || !prog || !ledger__is_hash(st, 4) || uid_len > 64 ||
        key_len > 64) {
        ledger__finding(v, &v->r->certs_ok, "certificate %s: malformed row",
                        serial ? serial : "(null)");
        return NU_OK;
    }
    rc = nu_sha256(pem, (size_t)ledger__col_bytes(st, 5), pem_sha);
    if (rc != NU_OK)
        return rc;
    lj_init(&j, payload, sizeof(payload));
    ledger__cert_issued_json(&j, serial, ledger__col_blobp(st, 3), (size_t)uid_len,
                             ledger__col_blobp(st, 4), prog, ledger__col_blobp(st, 7),
                             (size_t)key_len, pem_sha);
    if (j.overflow) {
        ledger__finding(v, &v->r->certs_ok, "certificate %s: malformed row", serial);
        return NU_OK;
    }
    rc = ledger__pair_digest(job, (size_t)ledger__col_bytes(st, 2), ledger__col_u64(st, 8),
                             j.buf, j.len, digest);
    if (rc == NU_OK)
        rc = ledger__pair_add(&v->certs, digest, ledger_store_col_i64(st, 0));
    return rc;
}

static void ledger__verify_unpaired_cert(struct ledger_verify *v, int64_t rowid)
{
    struct ledger_store_stmt *st = NULL;
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1] = "?";

    int rc;

    /* PostgreSQL has no rowid: certificates are numbered by serial there. */
    if (ledger__vprep(v, v->db ? "SELECT serial FROM certificates WHERE rowid = ?1"
                               : "SELECT serial FROM (SELECT serial, row_number() OVER"
                                 " (ORDER BY serial) AS n FROM certificates) x WHERE n = ?1",
                      &st) == NU_OK) {
        ledger_store_bind_i64(st, 1, rowid);
        if (ledger__row(st, &rc))
            (void)ledger__col_str(st, 0, serial, sizeof(serial));
    }
    ledger_store_finalize(st);
    ledger__finding(v, &v->r->certs_ok,
                    "certificate %s has no matching cert.issued event (forged or edited)", serial);
}

/* Certificates and cert.issued events must pair one to one (as multisets). */
static int ledger__verify_certs(struct ledger_verify *v)
{
    struct ledger_store_stmt *st = NULL;
    size_t i = 0, k = 0;
    int rc = ledger__vprep(v,
                           v->db ? "SELECT rowid, serial, job_id, device_uid, pubkey_hash, pem,"
                                   " programmer_id, idempotency_key, issued_at_ms FROM certificates"
                                 : "SELECT row_number() OVER (ORDER BY serial), serial, job_id,"
                                   " device_uid, pubkey_hash, pem, programmer_id, idempotency_key,"
                                   " issued_at_ms FROM certificates",
                           &st);

    if (rc != NU_OK)
        return rc;
    while (ledger__row(st, &rc)) {
        rc = ledger__verify_cert_row(v, st);
        if (rc != NU_OK) {
            ledger_store_finalize(st);
            return rc;
        }
    }
    ledger_store_finalize(st);
    if (rc != NU_OK)
        return rc;
    if (v->events.n)
        qsort(v->events.v, v->events.n, sizeof(struct ledger_pair), ledger__pair_cmp);
    if (v->certs.n)
        qsort(v->certs.v, v->certs.n, sizeof(struct ledger_pair), ledger__pair_cmp);
    while (i < v->events.n || k < v->certs.n) {
        int c = i == v->events.n  ? 1
                : k == v->certs.n ? -1
                                  : ledger__pair_cmp(&v->events.v[i], &v->certs.v[k]);
        if (c == 0) {
            i++;
            k++;
        } else if (c < 0) {
            ledger__finding(v, &v->r->certs_ok,
                            "audit seq %lld: cert.issued without its certificate (deleted or "
                            "edited)",
                            (long long)v->events.v[i++].id);
        } else {
            ledger__verify_unpaired_cert(v, v->certs.v[k++].id);
        }
    }
    return NU_OK;
}

/* Run a query whose every row is a finding described by column 0. */
static int ledger__verify_query(struct ledger_verify *v, const char *sql, int *flag,
                                const char *what)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__vprep(v, sql, &st);

    if (rc != NU_OK)
        return rc;
    while (ledger__row(st, &rc))
        ledger__finding(v, flag, "%s: %s", what, ledger__col_cstr(st, 0));
    ledger_store_finalize(st);
    return rc;
}

static int ledger__verify_counts(struct ledger_verify *v)
{
    int64_t jobs = 0;
    int pg = v->db == NULL;
    char sql[1024];
    /* Since schema 6 an online certificate an offline one superseded is
     * revoked and its unit refunded: it counts no more. */
    const char *live = v->version >= 6 ? " WHERE serial NOT IN (SELECT serial FROM cert_superseded)"
                                       : "";
    snprintf(sql, sizeof(sql),
             pg ? "SELECT format('job %%s: issued %%s, certificates %%s, allocations %%s, quota %%s',"
                  " j.job_id, j.issued, coalesce(c.n, 0), coalesce(a.s, 0), j.quota) FROM jobs j"
                  " LEFT JOIN (SELECT job_id, count(*) AS n FROM certificates%s GROUP BY job_id) c"
                  "  ON c.job_id = j.job_id"
                  " LEFT JOIN (SELECT job_id, sum(issued) AS s FROM job_allocations GROUP BY job_id) a"
                  "  ON a.job_id = j.job_id"
                  " WHERE j.issued != coalesce(c.n, 0) OR j.issued != coalesce(a.s, 0)"
                  "  OR j.issued > j.quota"
                : "SELECT printf('job %%s: issued %%d, certificates %%d, allocations %%d, quota %%d',"
                  " j.job_id, j.issued, coalesce(c.n, 0), coalesce(a.s, 0), j.quota) FROM jobs j"
                  " LEFT JOIN (SELECT job_id, count(*) AS n FROM certificates%s GROUP BY job_id) c"
                  "  ON c.job_id = j.job_id"
                  " LEFT JOIN (SELECT job_id, sum(issued) AS s FROM job_allocations GROUP BY job_id) a"
                  "  ON a.job_id = j.job_id"
                  " WHERE typeof(j.issued) != 'integer' OR j.issued != coalesce(c.n, 0)"
                  "  OR j.issued != coalesce(a.s, 0) OR j.issued > j.quota",
             live);
    int rc = ledger__verify_query(v, sql, &v->r->counts_ok, "quota counters");

    snprintf(sql, sizeof(sql),
             pg ? "SELECT format('job %%s, programmer %%s: issued %%s, certificates %%s, limit %%s',"
                  " a.job_id, a.programmer_id, a.issued, coalesce(c.n, 0), a.quota_limit)"
                  " FROM job_allocations a LEFT JOIN (SELECT job_id, programmer_id, count(*) AS n"
                  "  FROM certificates%s GROUP BY job_id, programmer_id) c"
                  "  ON c.job_id = a.job_id AND c.programmer_id = a.programmer_id"
                  " WHERE a.issued != coalesce(c.n, 0) OR a.issued > a.quota_limit"
                : "SELECT printf('job %%s, programmer %%s: issued %%d, certificates %%d, limit %%d',"
                  " a.job_id, a.programmer_id, a.issued, coalesce(c.n, 0), a.quota_limit)"
                  " FROM job_allocations a LEFT JOIN (SELECT job_id, programmer_id, count(*) AS n"
                  "  FROM certificates%s GROUP BY job_id, programmer_id) c"
                  "  ON c.job_id = a.job_id AND c.programmer_id = a.programmer_id"
                  " WHERE a.issued != coalesce(c.n, 0) OR a.issued > a.quota_limit",
             live);
    if (rc == NU_OK)
        rc = ledger__verify_query(v, sql, &v->r->counts_ok, "allocation counters");
    if (rc == NU_OK)
        rc = ledger__verify_query(
            v,
            pg ? "SELECT format('certificate %s: no allocation for %s in job %s', c.serial,"
                 " c.programmer_id, c.job_id) FROM certificates c WHERE NOT EXISTS (SELECT 1"
                 " FROM job_allocations a WHERE a.job_id = c.job_id"
                 " AND a.programmer_id = c.programmer_id)" :
            "SELECT printf('certificate %s: no allocation for %s in job %s', c.serial,"
            " c.programmer_id, c.job_id) FROM certificates c WHERE NOT EXISTS (SELECT 1"
            " FROM job_allocations a WHERE a.job_id = c.job_id"
            " AND a.programmer_id = c.programmer_id)",
            &v->r->counts_ok, "certificate without allocation");
    if (rc == NU_OK)
        rc = ledger__vint(v, "SELECT count(*) FROM jobs", &jobs);
    v->r->jobs = (uint64_t)jobs;
    return rc;
}

static int ledger__verify_schema(struct ledger_verify *v)
{
    struct ledger_store_stmt *st = NULL;
    int64_t version = 0;
    int rc = v->db ? ledger__pragma_int(v->db, "PRAGMA user_version", &version)
                   : ledger__vint(v, "SELECT version FROM ledger_meta WHERE id = 1", &version);

    if (rc != NU_OK)
        return rc;
    v->version = version;
    /* An older file (not yet opened by this version, so not migrated) is
     * checked against what its own version promises. */
    if (version < 1 || version > CLOUD_LEDGER_SCHEMA_VERSION)
        ledger__finding(v, &v->r->schema_ok, "schema version %lld, expected 1..%d",
                        (long long)version, CLOUD_LEDGER_SCHEMA_VERSION);
    rc = ledger__vprep(v, v->db ? "SELECT 1 FROM sqlite_master WHERE type = 'trigger' AND name = ?1"
                                : "SELECT 1 FROM pg_trigger WHERE tgname = ?1 AND NOT tgisinternal",
                       &st);
    if (rc != NU_OK)
        return rc;
    for (size_t i = 0; i < sizeof(ledger__triggers) / sizeof(ledger__triggers[0]); i++) {
        int found;
        if (ledger__triggers[i].since > version)
            continue;
        ledger_store_bind_text(st, 1, ledger__triggers[i].name);
        found = ledger__row(st, &rc);
        ledger_store_reset(st);
        if (rc != NU_OK) {
            ledger_store_finalize(st);
            return rc;
        }
        if (!found)
            ledger__finding(v, &v->r->schema_ok, "trigger %s is missing", ledger__triggers[i].name);
    }
    ledger_store_finalize(st);
    return NU_OK;
}

/* Verify over a connection (not inside a transaction). */
static int ledger__verify_db(struct ledger_store *store, sqlite3 *db,
                             const struct cloud_ledger_verify_opts *opts,
                             struct cloud_ledger_verify_report *r)
{
    struct ledger_verify v = {.store = store, .db = db, .r = r, .opts = opts};
    int rc;

    memset(r, 0, sizeof(*r));
    r->chain_ok = r->certs_ok = r->counts_ok = r->schema_ok = r->checkpoints_ok = 1;
    r->payloads_ok = 1;
    r->checkpoints_checked = opts && opts->check_checkpoint;
    /* One read transaction: a consistent snapshot while other agents write. */
    rc = ledger_store_begin(store, 0);
    if (rc != NU_OK)
        return rc;
    rc = ledger__verify_schema(&v);
    if (rc == NU_OK)
        rc = ledger__verify_chain(&v);
    if (rc == NU_OK)
        rc = ledger__verify_certs(&v);
    if (rc == NU_OK)
        rc = ledger__verify_counts(&v);
    ledger_store_rollback(store);
    free(v.events.v);
    free(v.certs.v);
    if (rc != NU_OK)
        return rc;
    return r->problems ? NU_ERR_TAMPERED : NU_OK;
}

int cloud_ledger_verify(struct cloud_ledger *ledger, struct cloud_ledger_verify_report *out_report)
{
    if (!ledger || !out_report)
        return NU_ERR_INVALID_ARG;
    return ledger__verify_db(ledger->store, ledger->db, NULL, out_report);
}

int cloud_ledger_verify_target(const char *target, const char *password_file,
                               const struct cloud_ledger_verify_opts *opts,
                               struct cloud_ledger_verify_report *out_report)
{
    struct ledger_store *store = NULL;
    sqlite3 *db = NULL;
    int64_t version = 0;
    int rc;

    if (!target || !out_report)
        return NU_ERR_INVALID_ARG;
    memset(out_report, 0, sizeof(*out_report));
    if (ledger_store_target_is_pg(target)) {
        rc = ledger_store_open(target, password_file, &store);
        if (rc == NU_OK)
            rc = ledger__pg_identify(store, &version);
        if (rc == NU_OK && version == 0)
            rc = NU_ERR_CONFIG;
        if (rc == NU_OK)
            rc = ledger__verify_db(store, NULL, opts, out_report);
        ledger_store_close(store);
        return rc;
    }
    if (!strncmp(target, "sqlite:", 7))
        target += 7;
    if (!nu_path_exists(target))
        return NU_ERR_NOT_FOUND;
    rc = sqlite3_open_v2(target, &db, SQLITE_OPEN_READONLY | SQLITE_OPEN_NOMUTEX, NULL);
    if (rc != SQLITE_OK) {
        rc = ledger__dberr(db, rc, "open for verify");
        sqlite3_close(db);
        return rc;
    }
    rc = ledger__configure(db, 0);
    if (rc == NU_OK)
        rc = ledger__identify(db, &version);
    if (rc == NU_OK && version == 0)
        rc = NU_ERR_CONFIG; /* identify already refused newer versions */
    if (rc == NU_OK)
        rc = ledger_store_sqlite_wrap(db, &store);
    if (rc != NU_OK) {
        sqlite3_close(db);
        return rc;
    }
    rc = ledger__verify_db(store, db, opts, out_report);
    ledger_store_close(store);
    return rc;
}
