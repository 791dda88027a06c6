/*
 * ledger_shared — state every cloud agent must see, whichever host it runs
 * on (ledger.h, "state every agent shares"): revoked programmer firmware,
 * the bytes of signed images, the last device CRL.
 */
#include "ledger_int.h"

/* Namespace of the advisory lock on one measurement (0: schema, 1: issuance). */
#define LEDGER__NS_MEASUREMENT 2u

/* 64 lower-case hex characters. */
static int ledger__measurement_ok(const char *m)
{
    if (!m || strnlen(m, 2 * CLOUD_LEDGER_HASH_LEN + 1) != 2 * CLOUD_LEDGER_HASH_LEN)
        return 0;
    for (const char *p = m; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f')))
            return 0;
    return 1;
}

/* Serializes a revocation of `measurement` with enrollments that record it
 * (PostgreSQL; SQLite's BEGIN IMMEDIATE already serializes every writer). */
static int ledger__measurement_lock(struct cloud_ledger *l, const char *measurement)
{
    return ledger_store_xact_lock(l->store, LEDGER__NS_MEASUREMENT, measurement,
                                  2 * CLOUD_LEDGER_HASH_LEN);
}

/* NU_OK with *out = 1 when listed, 0 when not; or a DB error. */
static int ledger__measurement_listed(struct cloud_ledger *l, const char *measurement, int *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_RMEAS_GET, &st);

    *out = 0;
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, measurement);
    rc = ledger__step_one(l, st, "revoked measurement get");
    if (rc == NU_OK) {
        *out = 1;
        ledger__reset(st);
    }
    return rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
}

int ledger__measurement_decide(struct cloud_ledger *l, const char *measurement)
{
    int listed = 0;
    int rc = ledger__measurement_ok(measurement) ? NU_OK : NU_ERR_INVALID_ARG;

    if (rc == NU_OK)
        rc = ledger__measurement_lock(l, measurement);
    if (rc == NU_OK)
        rc = ledger__measurement_listed(l, measurement, &listed);
    return rc == NU_OK && listed ? NU_ERR_MEASUREMENT : rc;
}

/* The ids of the programmers enrolled with `measurement`, copied out so the
 * revocations below do not run while the statement is open. */
struct ledger__ids {
    char (*v)[CLOUD_LEDGER_ID_MAX + 1];
    size_t n, cap;
};

static int ledger__ids_push(struct ledger__ids *ids, const char *id)
{
    void *grown = nu_grow(ids->v, &ids->cap, ids->n, sizeof(*ids->v));
    if (!grown)
        return NU_ERR_NOMEM;
    ids->v = grown;
    snprintf(ids->v[ids->n++], sizeof(ids->v[0]), "%s", id);
    return NU_OK;
}

static int ledger__enrolled_with(struct cloud_ledger *l, const char *measurement,
                                 struct ledger__ids *ids)
{
    struct ledger_store_stmt *st = NULL;
    char id[CLOUD_LEDGER_ID_MAX + 1];
    int rc = ledger__stmt(l, ST_PROG_BY_MEAS, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, measurement);
    while (ledger__row(st, &rc)) {
        rc = ledger__col_str(st, 0, id, sizeof(id));
        if (rc == NU_OK)
            rc = ledger__ids_push(ids, id);
        if (rc != NU_OK)
            break;
    }
    ledger__reset(st);
    return rc;
}

/* List the measurement once (with its event); *out_new = 1 the first time. */
static int ledger__measurement_list(struct cloud_ledger *l, const char *measurement,
                                    const char *reason, const char *actor, uint64_t now_ms,
                                    int *out_new)
{
    struct ledger_store_stmt *st = NULL;
    struct ledger_json j;
    int listed = 0;
    int rc = ledger__measurement_listed(l, measurement, &listed);

    *out_new = 0;
    if (rc != NU_OK || listed)
        return rc;
    rc = ledger__stmt(l, ST_RMEAS_INSERT, &st);
    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, measurement);
    ledger__bind_text(st, 2, reason);
    ledger__bind_text(st, 3, actor);
    ledger__bind_u64(st, 4, now_ms);
    rc = ledger__run(l, st, "revoked measurement insert");
    if (rc != NU_OK)
        return rc;
    lj_init(&j, l->payload, LEDGER_PAYLOAD_INTERNAL_MAX);
    lj_raw(&j, "{", 1);
    lj_str(&j, "measurement", measurement);
    lj_str(&j, "reason", reason);
    lj_raw(&j, "}", 1);
    rc = ledger__append_json(l, &j, now_ms, "programmer.firmware_revoked", actor, "");
    *out_new = rc == NU_OK;
    return rc;
}

int cloud_ledger_firmware_revoke(struct cloud_ledger *ledger, const char *measurement,
                                 const char *reason, const char *actor, uint64_t now_ms,
                                 cloud_ledger_id_visit_fn visit, void *ctx, int *out_new)
{
    struct ledger__ids ids = {0};
    char why[CLOUD_LEDGER_TEXT_MAX + 1];
    int fresh = 0, rc;

    if (!ledger || !ledger__time_ok(now_ms) || !ledger__measurement_ok(measurement))
        return NU_ERR_INVALID_ARG;
    if (!reason)
        reason = "";
    rc = ledger__id_check(actor);
    if (rc == NU_OK)
        rc = ledger__text_check(reason, 200);
    if (rc != NU_OK)
        return rc;
    /* The programmers' own reason says why, bounded like every reason. */
    snprintf(why, sizeof(why), "programmer firmware %.16s revoked: %s", measurement, reason);
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__measurement_lock(ledger, measurement);
    if (rc == NU_OK)
        rc = ledger__measurement_list(ledger, measurement, reason, actor, now_ms, &fresh);
    if (rc == NU_OK)
        rc = ledger__enrolled_with(ledger, measurement, &ids);
    for (size_t i = 0; rc == NU_OK && i < ids.n; i++) {
        rc = ledger__prog_revoke_in_txn(ledger, ids.v[i], why, actor, now_ms);
        if (rc == NU_OK && visit)
            rc = visit(ctx, ids.v[i]);
    }
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    free(ids.v);
    if (out_new)
        *out_new = rc == NU_OK && fresh;
    return rc;
}

int cloud_ledger_firmware_revoked(struct cloud_ledger *ledger, const char *measurement,
                                  int *out_revoked)
{
    int rc;

    if (!ledger || !out_revoked || !ledger__measurement_ok(measurement))
        return NU_ERR_INVALID_ARG;
    *out_revoked = 0;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__measurement_listed(ledger, measurement, out_revoked);
    ledger__rollback(ledger);
    return rc;
}

static int ledger__rmeas_row(struct ledger_store_stmt *st, void *item)
{
    struct cloud_ledger_fw_revocation *r = item;
    int rc = ledger__col_str(st, 0, r->measurement, sizeof(r->measurement));

    if (rc == NU_OK)
        rc = ledger__col_str(st, 1, r->reason, sizeof(r->reason));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 2, r->revoked_by, sizeof(r->revoked_by));
    r->revoked_at_ms = ledger__col_u64(st, 3);
    return rc;
}

static int ledger__rmeas_visit(void *v, const void *item)
{
    struct ledger_visit *lv = v;
    return ((cloud_ledger_fw_revocation_visit_fn)lv->fn)(lv->ctx, item);
}

int cloud_ledger_firmware_revocations(struct cloud_ledger *ledger,
                                      cloud_ledger_fw_revocation_visit_fn visit, void *ctx)
{
    struct cloud_ledger_fw_revocation item;
    struct ledger_visit lv = {(void *)visit, ctx};

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    return ledger__list_all(ledger, ST_RMEAS_LIST, ledger__rmeas_row, &item, ledger__rmeas_visit,
                            &lv);
}

/* ------------------------------------------------------------ image bytes */

/* img[len] is what `digest`/`size` describe. */
static int ledger__image_matches(const uint8_t *img, size_t len,
                                 const uint8_t digest[CLOUD_LEDGER_HASH_LEN], uint64_t size)
{
    uint8_t d[NU_SHA256_LEN];

    if (!img || len == 0 || len != size || nu_sha256(img, len, d) != NU_OK)
        return 0;
    return nu_memeq_ct(d, digest, NU_SHA256_LEN) == 0;
}

static int ledger__blob_insert(struct cloud_ledger *l, const char *name, const uint8_t *img,
                               size_t len)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_BLOB_INSERT, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, name);
    rc = ledger__bind_blob(st, 2, img, len);
    if (rc != NU_OK) {
        ledger__reset(st);
        return rc;
    }
    return ledger__run(l, st, "firmware image insert");
}

int cloud_ledger_firmware_add_image(struct cloud_ledger *ledger,
                                    const struct cloud_ledger_firmware *fw, const uint8_t *img,
                                    size_t len)
{
    int rc;

    if (!ledger || !fw || !ledger__image_matches(img, len, fw->image_digest, fw->image_size))
        return NU_ERR_INVALID_ARG;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__firmware_add_in_txn(ledger, fw);
    if (rc == NU_OK)
        rc = ledger__blob_insert(ledger, fw->name, img, len);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_firmware_image_put(struct cloud_ledger *ledger, const char *name,
                                    const uint8_t *img, size_t len)
{
    struct cloud_ledger_firmware rec;
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger)
        return NU_ERR_INVALID_ARG;
    rc = cloud_ledger_firmware_get(ledger, name, &rec);
    if (rc != NU_OK)
        return rc;
    if (!ledger__image_matches(img, len, rec.image_digest, rec.image_size))
        return NU_ERR_INVALID_ARG;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__row_by_key(ledger, ST_BLOB_HAS, name, "firmware image has", &st);
    if (rc == NU_OK) {
        ledger__reset(st); /* another agent imported it first */
    } else if (rc == NU_ERR_NOT_FOUND) {
        rc = ledger__blob_insert(ledger, name, img, len);
        if (rc == NU_OK)
            nu_info("ledger: firmware %s imported from its file (signed before schema 5)", name);
    }
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_firmware_image(struct cloud_ledger *ledger, const char *name, uint8_t **out_img,
                                size_t *out_len)
{
    struct ledger_store_stmt *st = NULL;
    uint8_t digest[CLOUD_LEDGER_HASH_LEN], *img = NULL;
    size_t len = 0;
    int rc;

    if (!ledger || !out_img || !out_len)
        return NU_ERR_INVALID_ARG;
    *out_img = NULL;
    *out_len = 0;
    rc = ledger__id_check(name);
    if (rc == NU_OK)
        rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__row_by_key(ledger, ST_BLOB_GET, name, "firmware image get", &st);
    if (rc == NU_OK) {
        const void *p = ledger_store_col_blob(st, 0, &len);
        uint64_t size = ledger__col_u64(st, 2);
        rc = ledger__col_fixed(st, 1, digest, sizeof(digest));
        if (rc == NU_OK && !(img = malloc(len ? len : 1)))
            rc = NU_ERR_NOMEM;
        if (rc == NU_OK && p)
            memcpy(img, p, len);
        if (rc == NU_OK && !ledger__image_matches(img, len, digest, size)) {
            nu_error("ledger: the stored bytes of firmware %s differ from its record", name);
            rc = NU_ERR_DB;
        }
        ledger__reset(st);
    }
    ledger__rollback(ledger);
    if (rc != NU_OK) {
        free(img);
        return rc;
    }
    *out_img = img;
    *out_len = len;
    return NU_OK;
}

static int ledger__fw_row(struct ledger_store_stmt *st, void *item)
{
    struct cloud_ledger_firmware *fw = item;
    int rc;

    memset(fw, 0, sizeof(*fw));
    rc = ledger__col_str(st, 0, fw->name, sizeof(fw->name));
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 1, fw->image_digest, sizeof(fw->image_digest));
    fw->image_size = ledger__col_u32(st, 2);
    fw->security_counter = ledger__col_u32(st, 3);
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 4, fw->request_hash, sizeof(fw->request_hash));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 5, fw->signed_by, sizeof(fw->signed_by));
    fw->signed_at_ms = ledger__col_u64(st, 6);
    return rc;
}

static int ledger__fw_visit(void *v, const void *item)
{
    struct ledger_visit *lv = v;
    return ((cloud_ledger_firmware_visit_fn)lv->fn)(lv->ctx, item);
}

int cloud_ledger_firmware_list(struct cloud_ledger *ledger, cloud_ledger_firmware_visit_fn visit,
                               void *ctx)
{
    struct cloud_ledger_firmware item;
    struct ledger_visit lv = {(void *)visit, ctx};

    if (!ledger || !visit)
        return NU_ERR_INVALID_ARG;
    return ledger__list_all(ledger, ST_FW_LIST, ledger__fw_row, &item, ledger__fw_visit, &lv);
}

/* ------------------------------------------------------------ device CRL */

int cloud_ledger_device_crl_put(struct cloud_ledger *ledger, uint64_t crl_number,
                                const uint8_t *der, size_t len, int (*publish)(void *ctx),
                                void *ctx)
{
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (!ledger || !der || !len || crl_number > INT64_MAX)
        return NU_ERR_INVALID_ARG;
    rc = ledger__begin(ledger, 1);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_CRL_PUT, &st);
    if (rc == NU_OK) {
        ledger__bind_u64(st, 1, crl_number);
        rc = ledger__bind_blob(st, 2, der, len);
        if (rc != NU_OK)
            ledger__reset(st);
    }
    if (rc == NU_OK)
        rc = ledger__run(ledger, st, "device crl put");
    if (rc == NU_OK && ledger_store_changes(st) != 1)
        rc = NU_ERR_STATE; /* a CRL numbered the same or higher is kept */
    if (rc == NU_OK && publish)
        rc = publish(ctx);
    if (rc == NU_OK)
        rc = ledger__commit(ledger);
    ledger__rollback(ledger);
    return rc;
}

int cloud_ledger_device_crl_get(struct cloud_ledger *ledger, uint64_t *out_crl_number,
                                uint8_t **out_der, size_t *out_len)
{
    struct ledger_store_stmt *st = NULL;
    uint8_t *der = NULL;
    size_t len = 0;
    int rc;

    if (!ledger || !out_crl_number || !out_der || !out_len)
        return NU_ERR_INVALID_ARG;
    *out_der = NULL;
    *out_len = 0;
    rc = ledger__begin(ledger, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(ledger, ST_CRL_GET, &st);
    if (rc == NU_OK)
        rc = ledger__step_one(ledger, st, "device crl get");
    if (rc == NU_OK) {
        const void *p = ledger_store_col_blob(st, 1, &len);
        *out_crl_number = ledger__col_u64(st, 0);
        if (!p || !len)
            rc = NU_ERR_DB;
        else if (!(der = malloc(len)))
            rc = NU_ERR_NOMEM;
        else
            memcpy(der, p, len);
        ledger__reset(st);
    }
    ledger__rollback(ledger);
    if (rc != NU_OK) {
        free(der);
        return rc;
    }
    *out_der = der;
    *out_len = len;
    return NU_OK;
}
