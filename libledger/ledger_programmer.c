/*
 * ledger_programmer — programmers (upsert, get, list, revoke), enrollment
 * tokens and nonces, and token consumption / enroll.
 */
#include "ledger_int.h"

/* ------------------------------------------------------------ programmers */

static int ledger__enrollment_check(const struct cloud_ledger_enrollment *e, size_t *out_pem_len)
{
    int rc;

    if (!e || !e->cert_serial || !e->cert_pem || !e->package_pubkey || !ledger__time_ok(e->now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(e->programmer_id);
    if (rc == NU_OK)
        rc = ledger__id_check(e->actor);
    if (rc != NU_OK)
        return rc;
    if (strnlen(e->cert_pem, CLOUD_LEDGER_PEM_MAX + 1) > CLOUD_LEDGER_PEM_MAX)
        return NU_ERR_TOO_LARGE;
    if (!ledger__serial_ok(e->cert_serial) || !ledger__pem_ok(e->cert_pem, out_pem_len))
        return NU_ERR_INVALID_ARG;
    /* The key every package for this programmer will be sealed to. */
    if (nu_p256_pub_check(e->package_pubkey) != NU_OK)
        return NU_ERR_INVALID_ARG;
    if ((e->vendor_serial && ledger__id_check(e->vendor_serial) != NU_OK) ||
        (e->firmware_measurement && strlen(e->firmware_measurement) != 2 * CLOUD_LEDGER_HASH_LEN))
        return NU_ERR_INVALID_ARG;
    return NU_OK;
}

/* The upsert itself, inside the caller's write transaction. */
static int ledger__upsert_in_txn(struct cloud_ledger *l, const struct cloud_ledger_enrollment *e,
                                 size_t pem_len)
{
    char previous[CLOUD_LEDGER_SERIAL_MAX + 1] = "";
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__prog_state(l, e->programmer_id, previous);

    if (rc == NU_ERR_NOT_FOUND) {
        previous[0] = '\0';
        rc = NU_OK;
    }
    if (rc != NU_OK)
        return rc; /* REVOKED: revocation is final for an id */
    rc = ledger__stmt(l, ST_PROG_UPSERT, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, e->programmer_id);
    ledger__bind_text(st, 2, e->cert_serial);
    ledger_store_bind_text(st, 3, e->cert_pem);
    ledger__bind_blob(st, 4, e->package_pubkey, CLOUD_LEDGER_PUBKEY_LEN);
    ledger__bind_u64(st, 5, e->now_ms);
    ledger__bind_text(st, 6, e->vendor_serial ? e->vendor_serial : "");
    ledger__bind_text(st, 7, e->firmware_measurement ? e->firmware_measurement : "");
    rc = ledger__run(l, st, "programmer upsert");
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", e->programmer_id);
    lj_str(&j, "serial", e->cert_serial);
    lj_str(&j, "previous_serial", previous);
    if (e->vendor_serial && e->vendor_serial[0]) {
        lj_str(&j, "vendor_serial", e->vendor_serial);
        lj_str(&j, "firmware_measurement", e->firmware_measurement ? e->firmware_measurement : "");
    }
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, e->now_ms, "programmer.enrolled", e->actor, "");
}

int cloud_ledger_programmer_upsert(struct cloud_ledger *ledger,
                                   const struct cloud_ledger_enrollment *enrollment)
{
    size_t pem_len = 0;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__enrollment_check(enrollment, &pem_len);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__upsert_in_txn(ledger, enrollment, pem_len);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_programmer_get(struct cloud_ledger *ledger, const char *programmer_id,
                                struct cloud_ledger_programmer *out_programmer)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !out_programmer)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__row_by_key(ledger, ST_PROG_GET, programmer_id, "programmer get", &st);
    if (rc != NU_OK)
        return rc;
    rc = ledger__prog_row(st, out_programmer);
    ledger__reset(st);
    return rc;
}

static int ledger__prog_row_v(struct ledger_store_stmt *st, void *item)
{
    return ledger__prog_row(st, item);
}

static int ledger__prog_visit_v(void *v, const void *item)
{
    struct ledger_visit *lv = v;
    return ((cloud_ledger_programmer_visit_fn)lv->fn)(lv->ctx, item);
}

int cloud_ledger_programmer_list(struct cloud_ledger *ledger,
                                 cloud_ledger_programmer_visit_fn visit, void *ctx)
{
    struct ledger_visit lv = {(void *)visit, ctx};

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    return ledger__list_all(ledger, ST_PROG_LIST, ledger__prog_row_v, ledger->prog,
                            ledger__prog_visit_v, &lv);
}

int ledger__prog_revoke_in_txn(struct cloud_ledger *l, const char *programmer_id,
                               const char *reason, const char *actor, uint64_t now_ms)
{
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__prog_state(l, programmer_id, NULL);

    if (rc == NU_ERR_REVOKED)
        rc = NU_ERR_STATE;
    if (rc == NU_OK)
        rc = ledger__stmt(l, ST_PROG_REVOKE, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, programmer_id);
    ledger__bind_u64(st, 2, now_ms);
    ledger__bind_text(st, 3, reason);
    rc = ledger__run(l, st, "programmer revoke");
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", programmer_id);
    lj_str(&j, "reason", reason);
    lj_raw(&j, "}", 1);
    return ledger__append_json(l, &j, now_ms, "programmer.revoked", actor, "");
}

int cloud_ledger_programmer_revoke(struct cloud_ledger *ledger, const char *programmer_id,
                                   const char *reason, const char *actor, uint64_t now_ms)
{
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc == NU_OK)
        rc = ledger__text_check(reason, CLOUD_LEDGER_TEXT_MAX);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__prog_revoke_in_txn(ledger, programmer_id, reason, actor, now_ms);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

/* ------------------------------------------------------- enrollment tokens */

static int ledger__token_hash(const uint8_t *token, size_t len, uint8_t out[NU_SHA256_LEN])
{
    if (!token || len < CLOUD_LEDGER_TOKEN_MIN || len > CLOUD_LEDGER_TOKEN_MAX)
        return NU_ERR_INVALID_ARG;
    return nu_sha256(token, len, out);
}

/* The row of a single-use secret (statement `id`: an enrollment token by its
 * hash, or a challenge nonce), read inside the caller's transaction: the
 * programmer it is bound to, its expiry, whether it was used. NU_OK,
 * NOT_FOUND, or a DB error. */
static int ledger__single_use_read(struct cloud_ledger *l, enum ledger_stmt id,
                                   const uint8_t *key, size_t key_len, const char *what,
                                   char bound[CLOUD_LEDGER_ID_MAX + 1], uint64_t *out_expires,
                                   int *out_used)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, id, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_blob(st, 1, key, key_len);
    rc = ledger__step_one(l, st, what);
    if (rc != NU_OK)
        return rc;
    rc = ledger__col_str(st, 0, bound, CLOUD_LEDGER_ID_MAX + 1);
    *out_expires = ledger__col_u64(st, 1);
    *out_used = !ledger_store_col_is_null(st, 2);
    ledger__reset(st);
    return rc;
}

/* Would the token (by hash) enroll programmer_id at now? Read inside the
 * caller's transaction. NU_OK, TOKEN, REVOKED, or a DB error. */
static int ledger__token_decide(struct cloud_ledger *l, const uint8_t hash[NU_SHA256_LEN],
                                const char *programmer_id, uint64_t now_ms)
{
    char bound[CLOUD_LEDGER_ID_MAX + 1];
    uint64_t expires;
    int used;
    int rc = ledger__single_use_read(l, ST_TOKEN_GET, hash, NU_SHA256_LEN, "token get", bound,
                                     &expires, &used);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_ERR_TOKEN;
    if (rc != NU_OK)
        return rc;
    if (strcmp(bound, programmer_id) != 0 || used || now_ms >= expires)
        return NU_ERR_TOKEN;
    rc = ledger__prog_state(l, programmer_id, NULL);
    return rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
}

void ledger__token_id(struct ledger_json *j, const uint8_t hash[NU_SHA256_LEN])
{
    lj_hex(j, "token_id", hash, 8);
}

/* Audit a refused token in its own transaction (the caller's was rolled
 * back): repeated guessing shows in the chain. */
static void ledger__token_refused(struct cloud_ledger *l, const char *programmer_id,
                                  const char *actor, uint64_t now_ms, int code)
{
    struct ledger_json j;
    int rc;

    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", programmer_id);
    lj_str(&j, "code", nu_err_name(code));
    lj_raw(&j, "}", 1);
    rc = ledger__begin(l, 1);
    if (rc == NU_OK)
        rc = ledger__append_json(l, &j, now_ms, "enroll.refused", actor, "");
    if (rc == NU_OK)
        rc = ledger__commit(l);
    ledger__rollback(l);
    if (rc != NU_OK)
        nu_warn("ledger: could not audit a refused enrollment of %s: %s", programmer_id,
                nu_err_name(rc));
}

int cloud_ledger_token_add(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                           const char *programmer_id, uint64_t expires_at_ms, const char *actor,
                           uint64_t now_ms)
{
    uint8_t hash[NU_SHA256_LEN];
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !ledger__time_ok(now_ms) || !ledger__time_ok(expires_at_ms) ||
        expires_at_ms <= now_ms)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc == NU_OK)
        rc = ledger__token_hash(token, token_len, hash);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__prog_state(ledger, programmer_id, NULL);
    if (rc == NU_ERR_NOT_FOUND)
        rc = NU_OK;
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_TOKEN_ADD, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_blob(st, 1, hash, sizeof(hash));
    ledger__bind_text(st, 2, programmer_id);
    ledger__bind_u64(st, 3, now_ms);
    ledger__bind_u64(st, 4, expires_at_ms);
    rc = ledger__run(ledger, st, "token add");
    if (rc != NU_OK)
        goto out;
    lj_init(&j, ledger->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", programmer_id);
    ledger__token_id(&j, hash);
    lj_u64(&j, "expires_at_ms", expires_at_ms);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(ledger, &j, now_ms, "enroll.token.added", actor, "");
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    nu_zero(hash, sizeof(hash));
    return rc;
}

int cloud_ledger_token_check(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                             const char *programmer_id, uint64_t now_ms)
{
    uint8_t hash[NU_SHA256_LEN];
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__token_hash(token, token_len, hash);
    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__token_decide(ledger, hash, programmer_id, now_ms);
    ledger__rollback(ledger);
    nu_zero(hash, sizeof(hash));
    return rc;
}

/* ------------------------------------------------------ enrollment nonces */

/* Is the challenge nonce usable by programmer_id at now? Read inside the
 * caller's transaction. NU_OK, NONCE_REPLAYED (unknown, used, or another
 * programmer's), NONCE_EXPIRED, or a DB error. */
static int ledger__nonce_decide(struct cloud_ledger *l, const uint8_t nonce[32],
                                const char *programmer_id, uint64_t now_ms)
{
    char bound[CLOUD_LEDGER_ID_MAX + 1];
    uint64_t expires;
    int used;
    int rc = ledger__single_use_read(l, ST_NONCE_GET, nonce, CLOUD_LEDGER_NONCE_LEN, "nonce get",
                                     bound, &expires, &used);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_ERR_NONCE_REPLAYED;
    if (rc != NU_OK)
        return rc;
    if (used || strcmp(bound, programmer_id) != 0)
        return NU_ERR_NONCE_REPLAYED;
    return now_ms >= expires ? NU_ERR_NONCE_EXPIRED : NU_OK;
}

/* Decide, then mark used, inside the caller's write transaction. */
static int ledger__nonce_use(struct cloud_ledger *l, const uint8_t nonce[32],
                             const char *programmer_id, uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__nonce_decide(l, nonce, programmer_id, now_ms);

    if (rc == NU_OK)
        rc = ledger__stmt(l, ST_NONCE_USE, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_blob(st, 1, nonce, CLOUD_LEDGER_NONCE_LEN);
    ledger__bind_u64(st, 2, now_ms);
    rc = ledger__run(l, st, "nonce use");
    if (rc == NU_OK && ledger_store_changes(st) != 1)
        rc = NU_ERR_INTERNAL; /* decided unused under the same write lock */
    return rc;
}

int cloud_ledger_nonce_add(struct cloud_ledger *ledger, const uint8_t nonce[32],
                           const char *programmer_id, uint64_t expires_at_ms, uint64_t now_ms)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !nonce || !ledger__time_ok(now_ms) || expires_at_ms <= now_ms)
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 1);
    /* Challenges expired for a day are of no use to anyone: they go. */
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_NONCE_PURGE, &st);
    if (rc == NU_OK) {
        ledger__bind_u64(st, 1, now_ms > 86400000u ? now_ms - 86400000u : 0);
        rc = ledger__run(ledger, st, "nonce purge");
    }
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_NONCE_ADD, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_blob(st, 1, nonce, CLOUD_LEDGER_NONCE_LEN);
    ledger__bind_text(st, 2, programmer_id);
    ledger__bind_u64(st, 3, now_ms);
    ledger__bind_u64(st, 4, expires_at_ms);
    rc = ledger__run(ledger, st, "nonce add");
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
out:
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_nonce_check(struct cloud_ledger *ledger, const uint8_t nonce[32],
                             const char *programmer_id, uint64_t now_ms)
{
    int rc;

    if (!ledger || !nonce || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__nonce_decide(ledger, nonce, programmer_id, now_ms);
    ledger__rollback(ledger);
    return rc;
}

/* Consume (and, when e is not NULL, enroll) in one transaction. */
static int ledger__consume(struct cloud_ledger *l, const uint8_t *token, size_t token_len,
                           const char *programmer_id, const char *actor, uint64_t now_ms,
                           const struct cloud_ledger_enrollment *e, size_t pem_len)
{
    uint8_t hash[NU_SHA256_LEN];
    struct ledger_json j;
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__token_hash(token, token_len, hash);

    if (rc != NU_OK)
        return rc;
    rc = ledger__begin(l, 1);
    if (rc == NU_OK)
        rc = ledger__token_decide(l, hash, programmer_id, now_ms);
    if (rc == NU_ERR_TOKEN || rc == NU_ERR_REVOKED) {
        int refusal = rc;
        ledger__rollback(l);
        ledger__token_refused(l, programmer_id, actor, now_ms, refusal);
        rc = refusal;
        goto out;
    }
    if (rc == NU_OK && e && e->nonce) {
        rc = ledger__nonce_use(l, e->nonce, programmer_id, now_ms);
        if (rc == NU_ERR_NONCE_REPLAYED || rc == NU_ERR_NONCE_EXPIRED) {
            int refusal = rc;
            ledger__rollback(l);
            ledger__token_refused(l, programmer_id, actor, now_ms, refusal);
            rc = refusal;
            goto out;
        }
    }
    if (rc == NU_OK)
        rc = ledger__stmt(l, ST_TOKEN_USE, &st);
    if (rc != NU_OK)
        goto out;
    ledger__bind_blob(st, 1, hash, sizeof(hash));
    ledger__bind_u64(st, 2, now_ms);
    rc = ledger__run(l, st, "token use");
    if (rc == NU_OK && ledger_store_changes(st) != 1)
        rc = NU_ERR_INTERNAL; /* decided unused under the same write lock */
    /* The OEM's firmware revocations, read in this transaction under the
     * lock a revocation takes on the measurement (ledger_shared.c): a
     * revocation that landed while this enrollment was on its way (past the
     * agent's early check, in the HSM) refuses it here. Taken after the
     * token's row and before the chain head, which the revocation locks
     * after it (no deadlock: a revocation touches no token). */
    if (rc == NU_OK && e && e->firmware_measurement && e->firmware_measurement[0]) {
        rc = ledger__measurement_decide(l, e->firmware_measurement);
        if (rc == NU_ERR_MEASUREMENT) {
            ledger__rollback(l);
            ledger__token_refused(l, programmer_id, actor, now_ms, rc);
            goto out;
        }
    }
    if (rc != NU_OK)
        goto out;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "programmer", programmer_id);
    ledger__token_id(&j, hash);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(l, &j, now_ms, "enroll.token.used", actor, "");
    if (rc == NU_OK && e)
        rc = ledger__upsert_in_txn(l, e, pem_len);
    if (rc == NU_OK)
        rc = ledger__commit(l);
out:
    ledger__rollback(l);
    nu_zero(hash, sizeof(hash));
    return rc;
}

int cloud_ledger_token_consume(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                               const char *programmer_id, const char *actor, uint64_t now_ms)
{
    int rc;

    if (!ledger || !ledger__time_ok(now_ms))
        return NU_ERR_INVALID_ARG;
    rc = ledger__id_check(programmer_id);
    if (rc == NU_OK)
        rc = ledger__id_check(actor);
    if (rc != NU_OK)
        return rc;
    return ledger__consume(ledger, token, token_len, programmer_id, actor, now_ms, NULL, 0);
}

int cloud_ledger_enroll(struct cloud_ledger *ledger, const uint8_t *token, size_t token_len,
                        const struct cloud_ledger_enrollment *enrollment)
{
    size_t pem_len = 0;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = ledger__enrollment_check(enrollment, &pem_len);
    if (rc != NU_OK)
        return rc;
    return ledger__consume(ledger, token, token_len, enrollment->programmer_id, enrollment->actor,
                           enrollment->now_ms, enrollment, pem_len);
}
