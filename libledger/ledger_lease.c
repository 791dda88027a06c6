/*
 * ledger_lease — offline leases (issue 15 part 2): the job's lease policy,
 * grants that reserve units out of the quota, offline certificates recorded
 * once each against their lease, incidents, returns and expiry. The contract
 * and the events are in ledger.h ("offline leases").
 *
 * Why the reservation outlives the lease, with no time limit: a programmer
 * that produced offline until the last minute of its lease may come back
 * online days later, or never. Its certificates exist on chips already, up
 * to the lease's units (its KeyStore counter bounds them, not any clock), so
 * their units must still be held when they are recorded. Giving them back
 * at some deadline would let a site keep a programmer away past it and make
 * `units` more chips than the quota. Only two things end the reservation:
 * the programmer's return (it knows what it used) and the OEM's explicit
 * write-off of a lease that ended (lease.written_off; a late upload of it is
 * then an incident).
 */
#include "ledger_int.h"

#define LEASE__IDEM_DOMAIN "nusec/v1 lease"

/* ------------------------------------------------------------ helpers */

static int lease__row(struct ledger_store_stmt *st, struct cloud_ledger_lease *out)
{
    size_t n = 0;
    memset(out, 0, sizeof(*out));
    int rc = ledger__col_str(st, 0, out->lease_id, sizeof(out->lease_id));
    if (!rc)
        rc = ledger__col_str(st, 1, out->job_id, sizeof(out->job_id));
    if (!rc)
        rc = ledger__col_str(st, 2, out->programmer_id, sizeof(out->programmer_id));
    out->units = ledger__col_u32(st, 3);
    out->used = ledger__col_u32(st, 4);
    if (!rc)
        rc = ledger__col_fixed(st, 5, out->line_pub_hash, sizeof(out->line_pub_hash));
    if (!rc)
        rc = ledger__col_blob(st, 6, out->cert_der, sizeof(out->cert_der), &n);
    out->cert_len = n;
    out->granted_at_ms = ledger__col_u64(st, 7);
    out->not_before_ms = ledger__col_u64(st, 8);
    out->not_after_ms = ledger__col_u64(st, 9);
    if (!rc)
        rc = ledger__col_str(st, 10, out->state, sizeof(out->state));
    return rc;
}

/* One lease by a statement with text keys a (and b): NU_OK, NOT_FOUND, DB. */
static int lease__read(struct cloud_ledger *l, enum ledger_stmt id, const char *a, const char *b,
                       struct cloud_ledger_lease *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, id, &st);
    if (rc)
        return rc;
    ledger__bind_text(st, 1, a);
    if (b)
        ledger__bind_text(st, 2, b);
    rc = ledger__step_one(l, st, "lease");
    if (rc)
        return rc;
    rc = lease__row(st, out);
    ledger__reset(st);
    return rc;
}

/* Run a no-row statement; changed = rows it touched. */
static int lease__run(struct cloud_ledger *l, struct ledger_store_stmt *st, const char *what,
                      uint64_t *changed)
{
    int rc = ledger__run(l, st, what);
    if (changed)
        *changed = rc ? 0 : ledger_store_changes(st);
    return rc;
}

/* Close an active lease; its unused units go back to the quota. By its
 * programmer (actor NULL: state returned, event lease.returned) or written
 * off by the OEM's actor (state expired, event lease.written_off). */
static int lease__close_one(struct cloud_ledger *l, const struct cloud_ledger_lease *lease,
                            const char *actor, uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    struct ledger_json j;
    uint64_t changed = 0;
    int rc = ledger__stmt(l, ST_LEASE_CLOSE, &st);
    if (rc)
        return rc;
    ledger__bind_text(st, 1, lease->lease_id);
    ledger__bind_text(st, 2, actor ? "expired" : "returned");
    ledger__bind_u64(st, 3, now_ms);
    rc = lease__run(l, st, "lease close", &changed);
    if (rc || !changed)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "lease", lease->lease_id);
    lj_str(&j, "programmer", lease->programmer_id);
    lj_u64(&j, "units", lease->units);
    lj_u64(&j, "used", lease->used);
    lj_u64(&j, "released", lease->units - lease->used);
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, now_ms, actor ? "lease.written_off" : "lease.returned",
                               actor ? actor : LEDGER_ACTOR_SELF, lease->job_id);
}

int ledger__lease_reserved_bind(struct cloud_ledger *l, const char *job_id,
                                const char *programmer_id, struct ledger_store_stmt **out_st)
{
    int rc = ledger__stmt(l, ST_LEASE_RESERVED, out_st);
    if (rc)
        return rc;
    ledger__bind_text(*out_st, 1, job_id);
    ledger__bind_text(*out_st, 2, programmer_id ? programmer_id : "");
    return NU_OK;
}

int ledger__lease_reserved(struct cloud_ledger *l, const char *job_id, const char *programmer_id,
                           uint32_t *out_job, uint32_t *out_prog)
{
    struct ledger_store_stmt *st = NULL;
    *out_job = *out_prog = 0;
    int rc = ledger__lease_reserved_bind(l, job_id, programmer_id, &st);
    if (rc)
        return rc;
    if (ledger__row(st, &rc)) {
        *out_job = ledger__col_u32(st, 0);
        *out_prog = ledger__col_u32(st, 1);
    }
    ledger__reset(st);
    return rc;
}

static int lease__audit_refusal(struct cloud_ledger *l, const struct cloud_ledger_lease *w,
                                int code, uint32_t available, uint64_t now_ms)
{
    struct ledger_json j;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", w->programmer_id);
    lj_str(&j, "code", nu_err_name(code));
    lj_u64(&j, "units", w->units);
    lj_u64(&j, "available", available);
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, now_ms, "lease.refused", w->programmer_id,
                               code == NU_ERR_NOT_FOUND ? "" : w->job_id);
}

/* ------------------------------------------------------------ policy */

int cloud_ledger_lease_policy_set(struct cloud_ledger *ledger, const char *job_id, uint32_t units,
                                  uint32_t hours, const char *actor, uint64_t now_ms)
{
    struct cloud_ledger_job job;
    struct ledger_store_stmt *st = NULL;
    struct ledger_json j;
    uint32_t u = 0, h = 0;
    if (!ledger || ledger__id_check(job_id) || ledger__id_check(actor) || !units || !hours ||
        hours > 24u * 366u)
        return NU_ERR_INVALID_ARG;
    int rc = ledger__begin(ledger, 1);
    if (rc)
        return rc;
    rc = ledger__job_read(ledger, job_id, &job);
    if (!rc && units > job.quota)
        rc = NU_ERR_INVALID_ARG;
    if (!rc && cloud_ledger_lease_policy_get(ledger, job_id, &u, &h) == NU_OK)
        rc = NU_ERR_EXISTS;
    if (!rc)
        rc = ledger__stmt(ledger, ST_LEASE_POLICY_PUT, &st);
    if (!rc) {
        ledger__bind_text(st, 1, job_id);
        ledger__bind_u64(st, 2, units);
        ledger__bind_u64(st, 3, hours);
        ledger__bind_text(st, 4, actor);
        ledger__bind_u64(st, 5, now_ms);
        rc = ledger__run(ledger, st, "lease policy");
    }
    if (!rc) {
        lj_init(&j, ledger->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
        lj_raw(&j, "{", 1);
        lj_u64(&j, "units", units);
        lj_u64(&j, "hours", hours);
        lj_raw(&j, "}", 1);
        rc = ledger__append_json(ledger, &j, now_ms, "lease.policy", actor, job_id);
    }
    if (!rc)
        return ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_lease_policy_get(struct cloud_ledger *ledger, const char *job_id,
                                  uint32_t *out_units, uint32_t *out_hours)
{
    struct ledger_store_stmt *st = NULL;
    if (!ledger || ledger__id_check(job_id))
        return NU_ERR_INVALID_ARG;
    int rc = ledger__stmt(ledger, ST_LEASE_POLICY_GET, &st);
    if (rc)
        return rc;
    ledger__bind_text(st, 1, job_id);
    rc = ledger__step_one(ledger, st, "lease policy");
    if (rc)
        return rc;
    *out_units = ledger__col_u32(st, 0);
    *out_hours = ledger__col_u32(st, 1);
    ledger__reset(st);
    return NU_OK;
}

/* ------------------------------------------------------------ grant */

/* Inside the transaction: NU_OK to grant, or the refusal; *available = the
 * units the lease could have had. */
static int lease__decide(struct cloud_ledger *l, const struct cloud_ledger_lease *w,
                         uint64_t now_ms, uint32_t *available)
{
    struct cloud_ledger_job job;
    struct cloud_ledger_lease other;
    uint32_t limit = 0, issued = 0, rj = 0, rp = 0;
    *available = 0;
    int rc = ledger__prog_state(l, w->programmer_id, NULL);
    if (rc)
        return rc == NU_ERR_NOT_FOUND ? NU_ERR_NOT_AUTHORIZED : rc;
    if ((rc = ledger__job_read(l, w->job_id, &job)))
        return rc;
    rc = ledger__alloc_read(l, w->job_id, w->programmer_id, &limit, &issued);
    if (rc)
        return rc == NU_ERR_NOT_FOUND ? NU_ERR_NOT_AUTHORIZED : rc;
    if (job.status != CLOUD_LEDGER_JOB_ACTIVE)
        return job.status == CLOUD_LEDGER_JOB_EXHAUSTED ? NU_ERR_LEASE_OVERCOMMIT
                                                        : NU_ERR_JOB_NOT_ACTIVE;
    if (job.expires_at_ms && now_ms >= job.expires_at_ms)
        return NU_ERR_EXPIRED;
    rc = lease__read(l, ST_LEASE_ACTIVE_OF, w->job_id, w->programmer_id, &other);
    if (rc != NU_ERR_NOT_FOUND)
        return rc ? rc : NU_ERR_STATE; /* one lease at a time per programmer and job */
    if ((rc = ledger__lease_reserved(l, w->job_id, w->programmer_id, &rj, &rp)))
        return rc;
    uint64_t free_job = job.quota > (uint64_t)job.issued + rj ? job.quota - job.issued - rj : 0;
    uint64_t free_prog = limit > (uint64_t)issued + rp ? limit - issued - rp : 0;
    *available = (uint32_t)(free_job < free_prog ? free_job : free_prog);
    return w->units <= *available ? NU_OK : NU_ERR_LEASE_OVERCOMMIT;
}

static int lease__insert(struct cloud_ledger *l, const struct cloud_ledger_lease *w,
                         uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    struct ledger_json j;
    uint8_t cert_sha[NU_SHA256_LEN];
    int rc = ledger__stmt(l, ST_LEASE_INSERT, &st);
    if (rc)
        return rc;
    ledger__bind_text(st, 1, w->lease_id);
    ledger__bind_text(st, 2, w->job_id);
    ledger__bind_text(st, 3, w->programmer_id);
    ledger__bind_u64(st, 4, w->units);
    ledger__bind_blob(st, 5, w->line_pub_hash, sizeof(w->line_pub_hash));
    ledger__bind_blob(st, 6, w->cert_der, w->cert_len);
    ledger__bind_u64(st, 7, now_ms);
    ledger__bind_u64(st, 8, w->not_before_ms);
    ledger__bind_u64(st, 9, w->not_after_ms);
    if ((rc = ledger__run(l, st, "lease insert")) || (rc = nu_sha256(w->cert_der, w->cert_len, cert_sha)))
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "lease", w->lease_id);
    lj_str(&j, "programmer", w->programmer_id);
    lj_u64(&j, "units", w->units);
    lj_u64(&j, "not_before_ms", w->not_before_ms);
    lj_u64(&j, "not_after_ms", w->not_after_ms);
    lj_hex(&j, "line_pub_hash", w->line_pub_hash, sizeof(w->line_pub_hash));
    lj_hex(&j, "cert_sha256", cert_sha, sizeof(cert_sha));
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, now_ms, "lease.granted", w->programmer_id, w->job_id);
}

int cloud_ledger_lease_grant(struct cloud_ledger *ledger, const struct cloud_ledger_lease *want,
                             uint64_t now_ms, struct cloud_ledger_lease *out, int *out_existing)
{
    uint32_t available = 0;
    if (!ledger || !want || !out || !out_existing || ledger__id_check(want->lease_id) ||
        ledger__id_check(want->job_id) || ledger__id_check(want->programmer_id) || !want->units ||
        !want->cert_len || want->cert_len > sizeof(want->cert_der) ||
        want->not_after_ms <= want->not_before_ms || !ledger__time_ok(want->not_after_ms))
        return NU_ERR_INVALID_ARG;
    *out_existing = 0;
    int rc = ledger__begin(ledger, 1);
    if (!rc)
        rc = ledger__lock_row(ledger, ST_JOB_LOCK, want->job_id, NULL);
    if (rc) {
        ledger__rollback(ledger);
        return rc;
    }
    /* A repeated grant (the answer was lost): the same line key gets its lease. */
    int same = lease__read(ledger, ST_LEASE_ACTIVE_OF, want->job_id, want->programmer_id, out);
    if (same == NU_OK && !memcmp(out->line_pub_hash, want->line_pub_hash, NU_SHA256_LEN) &&
        now_ms < out->not_after_ms) {
        *out_existing = 1;
        ledger__rollback(ledger);
        return NU_OK;
    }
    int code = lease__decide(ledger, want, now_ms, &available);
    if (code == NU_OK)
        rc = lease__insert(ledger, want, now_ms);
    else if (code == NU_ERR_BUSY || code == NU_ERR_DB || code == NU_ERR_CONNECTION)
        rc = code;
    else
        rc = lease__audit_refusal(ledger, want, code, available, now_ms);
    if (!rc)
        rc = ledger__commit(ledger);
    else
        ledger__rollback(ledger);
    if (!rc && code == NU_OK)
        *out = *want, snprintf(out->state, sizeof(out->state), "active");
    return rc ? rc : code;
}

int cloud_ledger_lease_get(struct cloud_ledger *ledger, const char *lease_id,
                           const char *programmer_id, struct cloud_ledger_lease *out)
{
    if (!ledger || !out || ledger__id_check(lease_id) || ledger__id_check(programmer_id))
        return NU_ERR_LEASE_UNKNOWN;
    int rc = lease__read(ledger, ST_LEASE_GET, lease_id, NULL, out);
    if (rc == NU_ERR_NOT_FOUND || (!rc && strcmp(out->programmer_id, programmer_id) != 0))
        return NU_ERR_LEASE_UNKNOWN;
    return rc;
}

/* ------------------------------------------------------------ record */

int cloud_ledger_lease_incident(struct cloud_ledger *ledger, const char *lease_id,
                                const char *programmer_id, const char *job_id, int code,
                                const char *serial, const char *detail, uint64_t now_ms)
{
    struct ledger_json j;
    if (!ledger || ledger__id_check(programmer_id) || ledger__opt_id_check(job_id))
        return NU_ERR_INVALID_ARG;
    int rc = ledger__begin(ledger, 1);
    if (rc)
        return rc;
    lj_init(&j, ledger->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "lease", ledger__id_check(lease_id) ? "?" : lease_id);
    lj_str(&j, "programmer", programmer_id);
    lj_str(&j, "code", nu_err_name(code));
    lj_str(&j, "serial", serial && ledger__serial_ok(serial) ? serial : "");
    lj_str(&j, "detail", detail && !ledger__text_check(detail, CLOUD_LEDGER_TEXT_MAX) ? detail : "");
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(ledger, &j, now_ms, "lease.incident", programmer_id, job_id);
    if (!rc)
        return ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

static void lease__idem(const char *lease_id, uint32_t counter, uint8_t out[16])
{
    uint8_t h[NU_SHA256_LEN], be[4] = {(uint8_t)(counter >> 24), (uint8_t)(counter >> 16),
                                       (uint8_t)(counter >> 8), (uint8_t)counter};
    struct nu_sha256_ctx c;
    memset(h, 0, sizeof(h));
    if (nu_sha256_init(&c) == NU_OK) {
        if (nu_sha256_update(&c, LEASE__IDEM_DOMAIN, sizeof(LEASE__IDEM_DOMAIN)) ||
            nu_sha256_update(&c, lease_id, strlen(lease_id) + 1) || nu_sha256_update(&c, be, 4) ||
            nu_sha256_final(&c, h))
            nu_sha256_abort(&c);
    }
    memcpy(out, h, 16);
}

/* The online certificate `online` of the chip, never delivered, is revoked
 * (before the offline one takes its place: one live certificate per chip). */
static int lease__supersede_revoke(struct cloud_ledger *l, const struct cloud_ledger_cert *online,
                                   const struct cloud_ledger_lease_cert *c, uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    struct ledger_json j;
    uint64_t changed = 0;
    /* Only while still issued: what the check read is what is revoked. */
    int rc = ledger__stmt(l, ST_CERT_SUPERSEDE, &st);
    if (rc)
        return rc;
    ledger__bind_text(st, 1, online->serial);
    ledger__bind_u64(st, 2, now_ms);
    ledger__bind_text(st, 3, "superseded");
    rc = lease__run(l, st, "superseded certificate", &changed);
    if (rc || changed != 1)
        return rc ? rc : NU_ERR_LEASE_NOT_COVERED;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "serial", online->serial);
    lj_hex(&j, "device_uid", online->device_uid, online->device_uid_len);
    lj_str(&j, "reason", "superseded");
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, now_ms, "cert.revoked", c->programmer_id, online->job_id);
}

/* After the offline certificate's row: the supersession on record, the
 * request's idempotency entry forgotten, event lease.superseded. */
static int lease__supersede_note(struct cloud_ledger *l, const struct cloud_ledger_cert *online,
                                 const struct cloud_ledger_lease_cert *c, uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    struct ledger_json j;
    int rc = ledger__stmt(l, ST_LSUP_INSERT, &st);
    if (rc)
        return rc;
    ledger__bind_text(st, 1, online->serial);
    ledger__bind_text(st, 2, online->job_id);
    ledger__bind_text(st, 3, c->serial);
    ledger__bind_text(st, 4, c->lease_id);
    ledger__bind_u64(st, 5, now_ms);
    if ((rc = ledger__run(l, st, "supersession")) || (rc = ledger__stmt(l, ST_REQ_FORGET, &st)))
        return rc;
    /* Forgotten: turned into a refusal older than any refusal TTL, which the
     * cache never replays (the next copy is decided afresh: RESEND of the
     * offline certificate). The agent role may UPDATE requests, not DELETE. */
    ledger__bind_text(st, 1, c->programmer_id);
    ledger__bind_blob(st, 2, c->supersedes_key, c->supersedes_key_len);
    ledger_store_bind_i64(st, 3, NU_ERR_REVOKED);
    if ((rc = ledger__run(l, st, "forget the request")))
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "lease", c->lease_id);
    lj_str(&j, "serial", online->serial);
    lj_str(&j, "by_serial", c->serial);
    lj_hex(&j, "idempotency_key", c->supersedes_key, c->supersedes_key_len);
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, now_ms, "lease.superseded", c->programmer_id,
                               online->job_id);
}

/* Certificate row, counters and the two events of one recorded certificate
 * (with `online`: superseding that undelivered online certificate, whose
 * unit it takes over). */
static int lease__record_new(struct cloud_ledger *l, const struct cloud_ledger_lease_cert *c,
                             const struct cloud_ledger_lease *lease,
                             const struct cloud_ledger_cert *online, uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    struct ledger_json j;
    uint8_t key[16], pem_sha[NU_SHA256_LEN];
    uint64_t changed = 0;
    size_t pem_len = 0;
    int rc = ledger__pem_ok(c->pem, &pem_len) ? NU_OK : NU_ERR_INVALID_ARG;
    lease__idem(c->lease_id, c->counter, key);
    if (!rc && online)
        rc = lease__supersede_revoke(l, online, c, now_ms);
    if (!rc)
        rc = ledger__stmt(l, ST_CERT_INSERT, &st);
    if (!rc) {
        ledger__bind_text(st, 1, c->serial);
        ledger__bind_text(st, 2, lease->job_id);
        ledger__bind_blob(st, 3, c->device_uid, c->device_uid_len);
        ledger__bind_blob(st, 4, c->pubkey_hash, sizeof(c->pubkey_hash));
        ledger_store_bind_text(st, 5, c->pem);
        ledger__bind_text(st, 6, c->programmer_id);
        ledger__bind_blob(st, 7, key, sizeof(key));
        ledger__bind_u64(st, 8, c->issued_at_ms);
        rc = ledger__run(l, st, "offline certificate insert");
    }
    if (!rc && !online && !(rc = ledger__stmt(l, ST_LJOB_ISSUED, &st))) {
        ledger__bind_text(st, 1, lease->job_id);
        ledger__bind_u64(st, 2, now_ms);
        rc = lease__run(l, st, "job issued", &changed);
        rc = rc ? rc : changed == 1 ? NU_OK : NU_ERR_LEASE_NOT_COVERED;
    }
    if (!rc && !online && !(rc = ledger__stmt(l, ST_ALLOC_ISSUED, &st))) {
        ledger__bind_text(st, 1, lease->job_id);
        ledger__bind_text(st, 2, c->programmer_id);
        rc = lease__run(l, st, "allocation issued", &changed);
        rc = rc ? rc : changed == 1 ? NU_OK : NU_ERR_LEASE_NOT_COVERED;
    }
    if (!rc && !(rc = ledger__stmt(l, ST_LEASE_USED, &st))) {
        ledger__bind_text(st, 1, c->lease_id);
        rc = lease__run(l, st, "lease used", &changed);
        rc = rc ? rc : changed == 1 ? NU_OK : NU_ERR_LEASE_NOT_COVERED;
    }
    if (!rc && !(rc = ledger__stmt(l, ST_LCERT_INSERT, &st))) {
        ledger__bind_text(st, 1, c->serial);
        ledger__bind_text(st, 2, c->lease_id);
        ledger__bind_u64(st, 3, c->counter);
        ledger__bind_u64(st, 4, now_ms);
        rc = ledger__run(l, st, "lease certificate");
    }
    if (!rc && online)
        rc = lease__supersede_note(l, online, c, now_ms);
    if (!rc)
        rc = nu_sha256(c->pem, pem_len, pem_sha);
    if (rc)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    ledger__cert_issued_json(&j, c->serial, c->device_uid, c->device_uid_len, c->pubkey_hash,
                             c->programmer_id, key, sizeof(key), pem_sha);
    rc = ledger__append_json(l, &j, c->issued_at_ms, "cert.issued", c->programmer_id,
                             lease->job_id);
    if (rc)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "lease", c->lease_id);
    lj_str(&j, "serial", c->serial);
    lj_u64(&j, "counter", c->counter);
    lj_raw(&j, ",\"offline\":true}", 16);
    return ledger__append_json(l, &j, now_ms, "lease.recorded", c->programmer_id, lease->job_id);
}

/* The job's certificate `on` of the UID may be superseded by c: issued to
 * this programmer for the very request it abandoned, and not reported
 * delivered (provisioned), failed nor revoked. */
static int lease__supersedable(const struct cloud_ledger_cert *on,
                               const struct cloud_ledger_lease_cert *c)
{
    return c->supersedes_key_len && on->idempotency_key_len == c->supersedes_key_len &&
           !memcmp(on->idempotency_key, c->supersedes_key, c->supersedes_key_len) &&
           !strcmp(on->programmer_id, c->programmer_id) && on->state == CLOUD_LEDGER_CERT_ISSUED;
}

/* The refusal for c under `lease`, or NU_OK to record; *known for a repeat;
 * *supersede when the UID's online certificate (l->cert) is to be superseded. */
static int lease__check(struct cloud_ledger *l, const struct cloud_ledger_lease_cert *c,
                        const struct cloud_ledger_lease *lease, int *known, int *supersede,
                        const char **why)
{
    struct ledger_store_stmt *st = NULL;
    char other[CLOUD_LEDGER_LEASE_ID_MAX + 1] = "";
    int rc = ledger__stmt(l, ST_LCERT_GET, &st);
    if (rc)
        return rc;
    ledger__bind_text(st, 1, c->serial);
    rc = ledger__step_one(l, st, "lease certificate");
    if (!rc) {
        rc = ledger__col_str(st, 0, other, sizeof(other));
        ledger__reset(st);
        *why = "serial recorded under another lease";
        if (!rc && strcmp(other, c->lease_id) == 0)
            *known = 1;
        return rc ? rc : *known ? NU_OK : NU_ERR_LEASE_NOT_COVERED;
    }
    if (rc != NU_ERR_NOT_FOUND)
        return rc;
    *why = "lease closed";
    if (strcmp(lease->state, "active") != 0)
        return NU_ERR_LEASE_NOT_COVERED;
    *why = "beyond the lease's units";
    if (!c->counter || c->counter > lease->units || lease->used >= lease->units)
        return NU_ERR_LEASE_NOT_COVERED;
    if ((rc = ledger__stmt(l, ST_LCERT_COUNTER, &st)))
        return rc;
    ledger__bind_text(st, 1, c->lease_id);
    ledger__bind_u64(st, 2, c->counter);
    rc = ledger__step_one(l, st, "lease counter");
    if (!rc)
        ledger__reset(st);
    *why = "lease counter used twice";
    if (rc != NU_ERR_NOT_FOUND)
        return rc ? rc : NU_ERR_LEASE_NOT_COVERED;
    /* A serial another certificate has: an incident like the others, not a
     * failed insert that took the rest of the upload down with it. */
    if ((rc = ledger__stmt(l, ST_CERT_BY_SERIAL, &st)))
        return rc;
    ledger__bind_text(st, 1, c->serial);
    rc = ledger__step_one(l, st, "certificate by serial");
    if (!rc)
        ledger__reset(st);
    *why = "serial of another certificate";
    if (rc != NU_ERR_NOT_FOUND)
        return rc ? rc : NU_ERR_LEASE_NOT_COVERED;
    struct cloud_ledger_cert_ref ref = {NULL, lease->job_id, c->device_uid, c->device_uid_len};
    rc = ledger__cert_find(l, &ref, l->cert);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK;
    *why = c->supersedes_key_len ? "UID certified online, not by the request it supersedes"
                                 : "UID already certified in the job";
    if (rc)
        return rc;
    *supersede = lease__supersedable(l->cert, c);
    if (!*supersede)
        return NU_ERR_LEASE_NOT_COVERED;
    /* Only an online certificate (an abandoned request's) is superseded: an
     * offline one is recorded in lease_certs, and its idempotency key is
     * computable, so an upload naming it would record a supersession that
     * never happened. */
    *why = "supersedes an offline certificate";
    if ((rc = ledger__stmt(l, ST_LCERT_GET, &st)))
        return rc;
    ledger__bind_text(st, 1, l->cert->serial);
    rc = ledger__step_one(l, st, "superseded certificate's lease");
    if (!rc)
        ledger__reset(st);
    return rc == NU_ERR_NOT_FOUND ? NU_OK : rc ? rc : NU_ERR_LEASE_NOT_COVERED;
}

int cloud_ledger_lease_record(struct cloud_ledger *ledger, const struct cloud_ledger_lease_cert *c,
                              uint64_t now_ms, int *out_known)
{
    struct cloud_ledger_lease lease;
    struct cloud_ledger_cert *online = NULL;
    const char *why = "";
    int supersede = 0;
    if (!ledger || !c || !out_known || ledger__id_check(c->programmer_id) ||
        !ledger__serial_ok(c->serial) || !c->device_uid || !c->device_uid_len ||
        c->device_uid_len > CLOUD_LEDGER_UID_MAX || !c->pem || !ledger__time_ok(c->issued_at_ms) ||
        c->supersedes_key_len > CLOUD_LEDGER_KEY_MAX || (c->supersedes_key_len && !c->supersedes_key))
        return NU_ERR_INVALID_ARG;
    *out_known = 0;
    int rc = cloud_ledger_lease_get(ledger, c->lease_id, c->programmer_id, &lease);
    if (rc)
        return rc;
    if ((rc = ledger__begin(ledger, 1)))
        return rc;
    rc = ledger__lock_row(ledger, ST_JOB_LOCK, lease.job_id, NULL);
    if (!rc)
        rc = lease__read(ledger, ST_LEASE_GET, c->lease_id, NULL, &lease);
    int code = rc ? rc : lease__check(ledger, c, &lease, out_known, &supersede, &why);
    if (!rc && code == NU_OK && supersede) { /* l->cert is reused by the statements below */
        online = malloc(sizeof(*online));
        code = online ? NU_OK : NU_ERR_NOMEM;
        if (online)
            *online = *ledger->cert;
    }
    if (!rc && code == NU_OK && !*out_known)
        code = lease__record_new(ledger, c, &lease, online, now_ms);
    free(online);
    if (code == NU_OK) {
        rc = ledger__commit(ledger);
        return rc;
    }
    ledger__rollback(ledger);
    if (code != NU_ERR_LEASE_NOT_COVERED)
        return code;
    rc = cloud_ledger_lease_incident(ledger, c->lease_id, c->programmer_id, lease.job_id, code,
                                     c->serial, why, now_ms);
    return rc ? rc : code;
}

int cloud_ledger_lease_return(struct cloud_ledger *ledger, const char *lease_id,
                              const char *programmer_id, uint64_t now_ms,
                              struct cloud_ledger_lease *out)
{
    int rc = cloud_ledger_lease_get(ledger, lease_id, programmer_id, out);
    if (rc)
        return rc;
    if ((rc = ledger__begin(ledger, 1)))
        return rc;
    rc = ledger__lock_row(ledger, ST_JOB_LOCK, out->job_id, NULL);
    if (!rc)
        rc = lease__read(ledger, ST_LEASE_GET, lease_id, NULL, out);
    if (!rc)
        rc = lease__close_one(ledger, out, NULL, now_ms);
    if (!rc)
        rc = ledger__commit(ledger);
    else
        ledger__rollback(ledger);
    if (!rc && !strcmp(out->state, "active"))
        snprintf(out->state, sizeof(out->state), "returned");
    return rc;
}

int cloud_ledger_lease_write_off(struct cloud_ledger *ledger, const char *job_id,
                                 const char *programmer_id, const char *actor, uint64_t now_ms,
                                 struct cloud_ledger_lease *out)
{
    if (!ledger || !out || ledger__id_check(job_id) || ledger__id_check(programmer_id) ||
        ledger__id_check(actor))
        return NU_ERR_INVALID_ARG;
    int rc = ledger__begin(ledger, 1);
    if (rc)
        return rc;
    rc = ledger__lock_row(ledger, ST_JOB_LOCK, job_id, NULL);
    if (!rc)
        rc = lease__read(ledger, ST_LEASE_ACTIVE_OF, job_id, programmer_id, out);
    if (rc == NU_ERR_NOT_FOUND) { /* a repeat of a write-off whose answer was lost? */
        rc = lease__read(ledger, ST_LEASE_LAST_OF, job_id, programmer_id, out);
        if (!rc)
            rc = strcmp(out->state, "expired") == 0 ? NU_ERR_EXISTS : NU_ERR_NOT_FOUND;
    }
    /* While it runs, its programmer may still be issuing under it. */
    if (!rc && now_ms < out->not_after_ms + CLOUD_LEDGER_LEASE_WRITE_OFF_AFTER_MS)
        rc = NU_ERR_STATE;
    if (!rc)
        rc = lease__close_one(ledger, out, actor, now_ms);
    if (!rc)
        rc = ledger__commit(ledger);
    else
        ledger__rollback(ledger);
    if (!rc)
        snprintf(out->state, sizeof(out->state), "expired");
    return rc;
}

int cloud_ledger_lease_reserved(struct cloud_ledger *ledger, const char *job_id,
                                uint32_t *out_reserved)
{
    uint32_t prog = 0;
    if (!ledger || !out_reserved || ledger__id_check(job_id))
        return NU_ERR_INVALID_ARG;
    return ledger__lease_reserved(ledger, job_id, NULL, out_reserved, &prog);
}
