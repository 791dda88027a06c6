/*
 * ledger_cert — issued certificates: get, list, report, revoke.
 */
#include "ledger_int.h"

/* ----------------------------------------------------------- certificates */

int cloud_ledger_cert_get(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                          struct cloud_ledger_cert *out_cert)
{
    int rc;

    if (!ledger || !out_cert)
        return NU_ERR_INVALID_ARG;
    rc = ledger__cert_ref_check(ref);
    if (rc == NU_OK)
        rc = ledger__cert_find(ledger, ref, out_cert);
    return rc;
}

static int ledger__cert_row_v(struct ledger_store_stmt *st, void *item)
{
    return ledger__cert_row(st, item);
}

static int ledger__cert_visit_v(void *v, const void *item)
{
    struct ledger_visit *lv = v;
    return ((cloud_ledger_cert_visit_fn)lv->fn)(lv->ctx, item);
}

int cloud_ledger_cert_list(struct cloud_ledger *ledger, const char *job_id, const uint8_t *uid,
                           size_t uid_len, cloud_ledger_cert_visit_fn visit, void *ctx)
{
    return cloud_ledger_cert_list_after(ledger, job_id, uid, uid_len, NULL, visit, ctx);
}

int cloud_ledger_cert_list_after(struct cloud_ledger *ledger, const char *job_id,
                                 const uint8_t *uid, size_t uid_len,
                                 const struct cloud_ledger_cert_cursor *after,
                                 cloud_ledger_cert_visit_fn visit, void *ctx)
{
    struct ledger_visit lv = {(void *)visit, ctx};
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !visit || (!job_id && !uid) || (uid && uid_len == 0))
        return NU_ERR_INVALID_ARG;
    if (after && (!ledger__time_ok(after->issued_at_ms) ||
                  strnlen(after->serial, sizeof(after->serial)) == sizeof(after->serial)))
        return NU_ERR_INVALID_ARG;
    if (uid && uid_len > CLOUD_LEDGER_UID_MAX)
        return NU_ERR_TOO_LARGE;
    if (job_id && (rc = ledger__id_check(job_id)) != NU_OK)
        return rc;
    if (job_id && uid) {
        /* At most one per (job, UID): one page. */
        struct cloud_ledger_cert_ref ref = {NULL, job_id, uid, uid_len};
        if (after)
            return NU_OK;
        rc = ledger__cert_find(ledger, &ref, ledger->cert);
        if (rc == NU_ERR_NOT_FOUND)
            return NU_OK;
        return rc == NU_OK ? visit(ctx, ledger->cert) : rc;
    }
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, job_id ? ST_CERT_LIST_JOB : ST_CERT_LIST_UID, &st);
    if (rc != NU_OK)
        goto out;
    if (job_id)
        ledger__bind_text(st, 1, job_id);
    else
        ledger__bind_blob(st, 1, uid, uid_len);
    /* No cursor: before every row (issue times are >= 0). */
    ledger_store_bind_i64(st, 2, after ? (int64_t)after->issued_at_ms : -1);
    ledger__bind_text(st, 3, after ? after->serial : "");
    rc = ledger__walk(ledger, st, ledger__cert_row_v, ledger->cert, ledger__cert_visit_v, &lv);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_cert_list_revoked(struct cloud_ledger *ledger, cloud_ledger_cert_visit_fn visit,
                                   void *ctx)
{
    struct ledger_visit lv = {(void *)visit, ctx};

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    /* Revocations are rare and the CRL is rebuilt only then: a scan is fine. */
    return ledger__list_all(ledger, ST_CERT_LIST_REVOKED, ledger__cert_row_v, ledger->cert,
                            ledger__cert_visit_v, &lv);
}

static int ledger__cert_event(struct cloud_ledger *l, const struct cloud_ledger_cert *c,
                              const char *kind, const char *who_key, const char *who,
                              const char *text_key, const char *text, const char *actor,
                              uint64_t now_ms)
{
    struct ledger_json j;

    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "serial", c->serial);
    lj_hex(&j, "device_uid", c->device_uid, c->device_uid_len);
    if (who_key)
        lj_str(&j, who_key, who);
    lj_str(&j, text_key, text);
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, now_ms, kind, actor, c->job_id);
}

/* NU_OK to record the report, STATE to refuse, or NU_ERR_EXISTS for a
 * repeated provisioned report that records nothing. */
static int ledger__report_transition(enum cloud_ledger_cert_state from, int provisioned)
{
    if (from == CLOUD_LEDGER_CERT_REVOKED)
        return NU_ERR_STATE;
    if (from == CLOUD_LEDGER_CERT_PROVISIONED)
        return provisioned ? NU_ERR_EXISTS : NU_ERR_STATE;
    return NU_OK;
}

/*
 * The start of a change to one certificate: check the reference, who makes
 * the change and their text, open the write transaction and read the
 * certificate into ledger->cert. The caller rolls back on any error (a no-op
 * when no transaction was opened).
 */
/*
 * A write transaction with the certificate read under its locks. Where
 * writers are not serialized (PostgreSQL, READ COMMITTED) the first read only
 * names the job: the job row, then the certificate row, are locked, and the
 * certificate is read again, so the state a change decides on is the one it
 * overwrites. Read once without the locks, a delayed device.report wrote
 * "provisioned" over the OEM's revocation that committed in between (and the
 * next CRL left the certificate out); revoke and report now queue on the job
 * row, as issuance and lease uploads do.
 */
static int ledger__cert_change_begin(struct cloud_ledger *ledger,
                                     const struct cloud_ledger_cert_ref *ref, const char *who,
                                     const char *text)
{
    int rc = ledger__cert_ref_check(ref);
    if (rc == NU_OK)
        rc = ledger__id_check(who);
    if (rc == NU_OK)
        rc = ledger__text_check(text, CLOUD_LEDGER_TEXT_MAX);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__cert_find(ledger, ref, ledger->cert);
    if (rc == NU_OK && !ledger_store_serializes_writers(ledger->store)) {
        rc = ledger__lock_row(ledger, ST_JOB_LOCK, ledger->cert->job_id, NULL);
        if (rc == NU_OK)
            rc = ledger__lock_row(ledger, ST_CERT_LOCK, ledger->cert->serial, NULL);
        if (rc == NU_OK)
            rc = ledger__cert_find(ledger, ref, ledger->cert);
    }
    return rc;
}

int cloud_ledger_cert_report(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                             int provisioned, const char *detail, const char *reporter,
                             uint64_t now_ms)
{
    struct cloud_ledger_cert *c;
    uint32_t limit, issued;
    struct ledger_store_stmt *st = NULL;
    enum cloud_ledger_cert_state next;
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    c = ledger->cert;
    rc = ledger__cert_change_begin(ledger, ref, reporter, detail);
    if (rc == NU_OK) {
        rc = ledger__alloc_read(ledger, c->job_id, reporter, &limit, &issued);
        if (rc == NU_ERR_NOT_FOUND)
            rc = NU_ERR_NOT_AUTHORIZED;
    }
    if (rc == NU_OK)
        rc = ledger__report_transition(c->state, provisioned);
    if (rc == NU_OK && c->state == CLOUD_LEDGER_CERT_FAILED && !provisioned &&
        strcmp(c->detail, detail) == 0)
        rc = NU_ERR_EXISTS; /* the same failure again (device.report resent) */
    if (rc == NU_ERR_EXISTS) {
        rc = NU_OK; /* redelivered report: already recorded */
        goto out;
    }
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_CERT_STATE, &st);
    if (rc != NU_OK)
        goto out;
    next = provisioned ? CLOUD_LEDGER_CERT_PROVISIONED : CLOUD_LEDGER_CERT_FAILED;
    ledger__bind_text(st, 1, c->serial);
    ledger__bind_text(st, 2, ledger__cert_state_names[next]);
    ledger__bind_u64(st, 3, now_ms);
    ledger__bind_text(st, 4, detail);
    rc = ledger__run(ledger, st, "certificate state");
    if (rc == NU_OK)
        rc = ledger__cert_event(ledger, c, provisioned ? "cert.provisioned" : "cert.failed",
                                "reporter", reporter, "detail", detail, reporter, now_ms);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_cert_revoke(struct cloud_ledger *ledger, const struct cloud_ledger_cert_ref *ref,
                             const char *reason, const char *actor, uint64_t now_ms)
{
    struct cloud_ledger_cert *c;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    c = ledger->cert;
    rc = ledger__cert_change_begin(ledger, ref, actor, reason);
    if (rc == NU_OK && c->state == CLOUD_LEDGER_CERT_REVOKED)
        rc = NU_ERR_STATE;
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_CERT_REVOKE, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_text(st, 1, c->serial);
    ledger__bind_u64(st, 2, now_ms);
    ledger__bind_text(st, 3, reason);
    rc = ledger__run(ledger, st, "certificate revoke");
    if (rc == NU_OK)
        rc = ledger__cert_event(ledger, c, "cert.revoked", NULL, NULL, "reason", reason, actor,
                                now_ms);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}
