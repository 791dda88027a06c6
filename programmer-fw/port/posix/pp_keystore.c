/* pp_keystore: file KeyStore sealed under the HUK (see pp_keystore.h for the format). */
#include "pp_keystore.h"

#include "nu_attest.h"
#include "nu_crypto.h"
#include "nu_log.h"
#include "nu_util.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#define KS__MAGIC "NKS1"
#define KS__INFO "nusec/v1 keystore"
#define KS__SALT_LEN 32
#define KS__HDR_LEN (4 + KS__SALT_LEN + NU_GCM_NONCE_LEN)
#define KS__NAME_MAX 80
#define KS__REC_MAX 4096 /* records in one store */
/* A counter reserves limit/KS__RESERVE_DIV units per durable write, at least
 * 1 and at most KS__RESERVE_MAX (see ks__counter_inc). */
#define KS__RESERVE_DIV 64u
#define KS__RESERVE_MAX 16u

/* KS__FACTORY records are written once by the programmer factory (vendor
 * attestation certificate and serial); no HAL op reads or writes them. */
enum ks__type { KS__KEY = 1, KS__COUNTER = 2, KS__BLOB = 3, KS__FACTORY = 4 };

/* keys[KS__ATTEST] is the vendor attestation key: it signs statements only.
 * keys[KS__LINE] is the offline lease's line-CA key (PG_KEY_LINE_CA): it
 * signs device certificates only, replaced at each new lease. */
#define KS__NKEYS 4
#define KS__ATTEST 2
#define KS__LINE 3
static const char *const ks__key_names[KS__NKEYS] = {"identity", "package", "attest", "line-ca"};
#define KS__FACTORY_CERT "attest.cert"
#define KS__FACTORY_SERIAL "attest.serial"
#define KS__ANCHOR_BLOB "pin.anchor" /* the core's PG_BLOB_PIN_ANCHOR (pg_int.h) */

struct ks__rec {
    uint8_t type;
    char name[KS__NAME_MAX + 1];
    uint8_t *data; /* a counter's data: the units reserved, as stored (big-endian) */
    size_t len;
    uint32_t used; /* a counter's units handed out (<= reserved), in memory */
};

struct pp_ks {
    pthread_mutex_t lock;
    char path[PATH_MAX];
    char name[65];
    uint8_t huk[PP_KS_HUK_LEN];
    struct nu_p256_key *keys[KS__NKEYS];
    struct ks__rec *recs;
    size_t n, cap;
    /* The measurement secure boot recorded (pp_ks_set_measurement), in memory
     * only: a boot ROM register, set once per run. */
    uint8_t measurement[32];
    int measured;
};

/* ---- records ------------------------------------------------------------------ */

static uint32_t ks__rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static void ks__wr32(uint8_t b[4], uint32_t v)
{
    b[0] = (uint8_t)(v >> 24), b[1] = (uint8_t)(v >> 16), b[2] = (uint8_t)(v >> 8);
    b[3] = (uint8_t)v;
}

/* Give unused reserved units back: every counter's stored value becomes the
 * units handed out (the next ks__save writes that). Called with the lock. */
static int ks__release(struct pp_ks *ks)
{
    int changed = 0;
    for (size_t i = 0; i < ks->n; i++) {
        struct ks__rec *r = &ks->recs[i];
        if (r->type == KS__COUNTER && r->used < ks__rd32(r->data)) {
            ks__wr32(r->data, r->used);
            changed = 1;
        }
    }
    return changed;
}

static struct ks__rec *ks__find(struct pp_ks *ks, uint8_t type, const char *name)
{
    for (size_t i = 0; i < ks->n; i++) {
        if (ks->recs[i].type == type && !strcmp(ks->recs[i].name, name))
            return &ks->recs[i];
    }
    return NULL;
}

static void ks__rec_free(struct ks__rec *r)
{
    if (r->data) {
        nu_zero(r->data, r->len);
        free(r->data);
    }
    r->data = NULL;
    r->len = 0;
}

/* Set (or, with len 0, delete) a record. */
static int ks__set(struct pp_ks *ks, uint8_t type, const char *name, const uint8_t *data,
                   size_t len)
{
    if (!name || !*name || strlen(name) > KS__NAME_MAX)
        return NU_ERR_INVALID_ARG;
    struct ks__rec *r = ks__find(ks, type, name);
    if (len == 0) {
        if (r) {
            ks__rec_free(r);
            *r = ks->recs[--ks->n];
        }
        return NU_OK;
    }
    uint8_t *copy = malloc(len);
    if (!copy)
        return NU_ERR_NOMEM;
    memcpy(copy, data, len);
    if (!r) {
        if (ks->n == ks->cap) {
            size_t cap = ks->cap ? ks->cap * 2 : 16;
            struct ks__rec *nr = cap <= KS__REC_MAX ? realloc(ks->recs, cap * sizeof(*nr)) : NULL;
            if (!nr) {
                free(copy);
                return cap <= KS__REC_MAX ? NU_ERR_NOMEM : NU_ERR_TOO_LARGE;
            }
            ks->recs = nr;
            ks->cap = cap;
        }
        r = &ks->recs[ks->n++];
        memset(r, 0, sizeof(*r));
        r->type = type;
        strcpy(r->name, name);
    }
    ks__rec_free(r);
    r->data = copy;
    r->len = len;
    return NU_OK;
}

/* ---- sealing ------------------------------------------------------------------ */

static int ks__kek(const struct pp_ks *ks, const uint8_t salt[KS__SALT_LEN], uint8_t out[32])
{
    return nu_hkdf_sha256(ks->huk, sizeof(ks->huk), salt, KS__SALT_LEN, (const uint8_t *)KS__INFO,
                          strlen(KS__INFO), out, 32);
}

static size_t ks__aad(const struct pp_ks *ks, uint8_t *aad)
{
    size_t n = strlen(ks->name);
    memcpy(aad, KS__MAGIC, 4);
    memcpy(aad + 4, ks->name, n);
    return 4 + n;
}

static size_t ks__plain_size(const struct pp_ks *ks)
{
    size_t total = 0;
    for (size_t i = 0; i < ks->n; i++)
        total += 2 + strlen(ks->recs[i].name) + 4 + ks->recs[i].len;
    return total;
}

static void ks__put_rec(uint8_t **p, uint8_t type, const char *name, const uint8_t *d, size_t len)
{
    size_t nl = strlen(name);
    *(*p)++ = type;
    *(*p)++ = (uint8_t)nl;
    memcpy(*p, name, nl);
    *p += nl;
    for (int i = 3; i >= 0; i--)
        *(*p)++ = (uint8_t)(len >> (8 * i));
    memcpy(*p, d, len);
    *p += len;
}

/* Serialize, seal, write atomically. Called with the lock held. */
static int ks__save(struct pp_ks *ks)
{
    char pem[KS__NKEYS][NU_P256_PRIV_PEM_MAX];
    size_t pem_len[KS__NKEYS] = {0}, total = ks__plain_size(ks);
    uint8_t kek[32], aad[4 + 64], *file = NULL;
    int rc = NU_OK;
    for (int k = 0; k < KS__NKEYS && rc == NU_OK; k++) {
        if (ks->keys[k]) {
            rc = nu_p256_key_to_pem(ks->keys[k], pem[k], sizeof(pem[k]), &pem_len[k]);
            total += 2 + strlen(ks__key_names[k]) + 4 + pem_len[k];
        }
    }
    size_t file_len = KS__HDR_LEN + total + NU_GCM_TAG_LEN;
    if (rc == NU_OK && file_len > PP_KS_FILE_MAX)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK && !(file = malloc(file_len)))
        rc = NU_ERR_NOMEM;
    if (rc != NU_OK)
        goto out;
    uint8_t *p = file + KS__HDR_LEN;
    for (int k = 0; k < KS__NKEYS; k++) {
        if (ks->keys[k])
            ks__put_rec(&p, KS__KEY, ks__key_names[k], (const uint8_t *)pem[k], pem_len[k]);
    }
    for (size_t i = 0; i < ks->n; i++)
        ks__put_rec(&p, ks->recs[i].type, ks->recs[i].name, ks->recs[i].data, ks->recs[i].len);
    memcpy(file, KS__MAGIC, 4);
    rc = nu_random(file + 4, KS__SALT_LEN + NU_GCM_NONCE_LEN);
    if (rc == NU_OK)
        rc = ks__kek(ks, file + 4, kek);
    if (rc == NU_OK)
        rc = nu_aes256gcm_encrypt(kek, file + 4 + KS__SALT_LEN, aad, ks__aad(ks, aad),
                                  file + KS__HDR_LEN, total, file + KS__HDR_LEN,
                                  file + KS__HDR_LEN + total);
    if (rc == NU_OK)
        rc = nu_file_write_atomic(ks->path, file, file_len, 0600);
out:
    nu_zero(pem, sizeof(pem));
    nu_zero(kek, sizeof(kek));
    if (file) {
        nu_zero(file, file_len);
        free(file);
    }
    return rc;
}

static int ks__load_key(struct pp_ks *ks, const char *name, const uint8_t *d, size_t len)
{
    for (int k = 0; k < KS__NKEYS; k++) {
        if (!strcmp(name, ks__key_names[k])) {
            if (ks->keys[k])
                return NU_ERR_DECODE;
            return nu_p256_key_from_pem((const char *)d, len, &ks->keys[k]) ? NU_ERR_DECODE : NU_OK;
        }
    }
    return NU_ERR_DECODE;
}

static int ks__parse(struct pp_ks *ks, const uint8_t *p, size_t len)
{
    const uint8_t *end = p + len;
    while (p < end) {
        if (end - p < 2)
            return NU_ERR_DECODE;
        uint8_t type = p[0], nl = p[1];
        p += 2;
        if (nl == 0 || nl > KS__NAME_MAX || (size_t)(end - p) < (size_t)nl + 4)
            return NU_ERR_DECODE;
        char name[KS__NAME_MAX + 1];
        memcpy(name, p, nl);
        name[nl] = '\0';
        p += nl;
        size_t dl = ((size_t)p[0] << 24) | ((size_t)p[1] << 16) | ((size_t)p[2] << 8) | p[3];
        p += 4;
        if (dl == 0 || (size_t)(end - p) < dl)
            return NU_ERR_DECODE;
        int rc;
        if (type == KS__KEY)
            rc = ks__load_key(ks, name, p, dl);
        else if ((type == KS__COUNTER && dl == 4) || type == KS__BLOB || type == KS__FACTORY)
            rc = ks__find(ks, type, name) ? NU_ERR_DECODE : ks__set(ks, type, name, p, dl);
        else
            rc = NU_ERR_DECODE;
        if (rc == NU_OK && type == KS__COUNTER) /* after a crash, every reserved unit is spent */
            ks__find(ks, type, name)->used = ks__rd32(p);
        if (rc != NU_OK)
            return rc;
        p += dl;
    }
    return NU_OK;
}

static int ks__load(struct pp_ks *ks)
{
    uint8_t *file = NULL, kek[32], aad[4 + 64];
    size_t len = 0;
    int rc = nu_file_read(ks->path, PP_KS_FILE_MAX, &file, &len);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK; /* empty store */
    if (rc != NU_OK)
        return rc;
    if (len < KS__HDR_LEN + NU_GCM_TAG_LEN || memcmp(file, KS__MAGIC, 4) != 0) {
        rc = NU_ERR_TAMPERED;
        goto out;
    }
    size_t body = len - KS__HDR_LEN - NU_GCM_TAG_LEN;
    rc = ks__kek(ks, file + 4, kek);
    if (rc == NU_OK)
        rc = nu_aes256gcm_decrypt(kek, file + 4 + KS__SALT_LEN, aad, ks__aad(ks, aad),
                                  file + KS__HDR_LEN, body, file + KS__HDR_LEN,
                                  file + KS__HDR_LEN + body);
    if (rc == NU_OK)
        rc = ks__parse(ks, file + KS__HDR_LEN, body);
out:
    nu_zero(kek, sizeof(kek));
    nu_zero(file, len);
    free(file);
    return rc;
}

/* ---- open / close -------------------------------------------------------------- */

static int ks__huk(struct pp_ks *ks, const char *pdir, int create)
{
    char path[PATH_MAX];
    uint8_t *buf = NULL;
    size_t len = 0;
    struct stat st;
    int rc = nu_path_fmt(path, sizeof(path), "%s/huk", pdir);
    if (rc != NU_OK)
        return rc;
    if (stat(path, &st) != 0) {
        if (errno != ENOENT || !create)
            return NU_ERR_NOT_FOUND;
        if (nu_path_exists(ks->path)) {
            nu_error("keystore %s exists but its HUK is gone: refusing to re-key", ks->path);
            return NU_ERR_NOT_FOUND;
        }
        if ((rc = nu_random(ks->huk, sizeof(ks->huk))) != NU_OK)
            return rc;
        return nu_file_write_new(path, ks->huk, sizeof(ks->huk), 0600);
    }
    if (st.st_mode & 077) {
        nu_error("%s is readable by others (mode %o): refused", path,
                 (unsigned)(st.st_mode & 0777));
        return NU_ERR_PERMISSION;
    }
    rc = nu_file_read(path, PP_KS_HUK_LEN, &buf, &len);
    if (rc == NU_OK && len != PP_KS_HUK_LEN)
        rc = NU_ERR_DECODE;
    if (rc == NU_OK)
        memcpy(ks->huk, buf, PP_KS_HUK_LEN);
    if (buf) {
        nu_zero(buf, len);
        free(buf);
    }
    return rc == NU_ERR_TOO_LARGE ? NU_ERR_DECODE : rc;
}

int pp_ks_open(const char *pdir, const char *name, int create, struct pp_ks **out_ks)
{
    if (!pdir || !name || !out_ks || strlen(name) > 64)
        return NU_ERR_INVALID_ARG;
    *out_ks = NULL;
    struct pp_ks *ks = calloc(1, sizeof(*ks));
    if (!ks)
        return NU_ERR_NOMEM;
    pthread_mutex_init(&ks->lock, NULL);
    strcpy(ks->name, name);
    int rc = nu_path_fmt(ks->path, sizeof(ks->path), "%s/keystore.bin", pdir);
    if (rc == NU_OK && create)
        rc = nu_mkdirs(pdir, 0700);
    if (rc == NU_OK)
        rc = ks__huk(ks, pdir, create);
    if (rc == NU_OK)
        rc = ks__load(ks);
    if (rc != NU_OK) {
        nu_error("keystore %s: %s", ks->path, nu_err_str(rc));
        pp_ks_close(ks);
        return rc;
    }
    *out_ks = ks;
    return NU_OK;
}

void pp_ks_close(struct pp_ks *ks)
{
    if (!ks)
        return;
    int rc = ks__release(ks) ? ks__save(ks) : NU_OK; /* unused reserved units back */
    if (rc != NU_OK)
        nu_warn("keystore %s: reserved units not given back: %s", ks->path, nu_err_name(rc));
    for (size_t i = 0; i < ks->n; i++)
        ks__rec_free(&ks->recs[i]);
    free(ks->recs);
    for (int k = 0; k < KS__NKEYS; k++)
        nu_p256_key_destroy(ks->keys[k]);
    pthread_mutex_destroy(&ks->lock);
    nu_zero(ks, sizeof(*ks));
    free(ks);
}

const char *pp_ks_path(const struct pp_ks *ks)
{
    return ks ? ks->path : NULL;
}

/* ---- ops ----------------------------------------------------------------------- */

static int ks__keys_generate(void *ctx)
{
    struct pp_ks *ks = ctx;
    pthread_mutex_lock(&ks->lock);
    int rc = ks->keys[0] || ks->keys[1] ? NU_ERR_EXISTS : NU_OK;
    if (rc == NU_OK)
        rc = nu_p256_key_generate(&ks->keys[0]);
    if (rc == NU_OK)
        rc = nu_p256_key_generate(&ks->keys[1]);
    if (rc == NU_OK)
        rc = ks__save(ks);
    if (rc != NU_OK && rc != NU_ERR_EXISTS) {
        for (int k = 0; k < 2; k++) {
            nu_p256_key_destroy(ks->keys[k]);
            ks->keys[k] = NULL;
        }
    }
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

/* The port's slot of a HAL key, -1 for none. */
static int ks__slot(enum pg_key key)
{
    return key == PG_KEY_IDENTITY ? 0 : key == PG_KEY_PACKAGE ? 1 : key == PG_KEY_LINE_CA ? KS__LINE : -1;
}

static int ks__line_generate(void *ctx)
{
    struct pp_ks *ks = ctx;
    struct nu_p256_key *fresh = NULL;
    int rc = nu_p256_key_generate(&fresh);
    pthread_mutex_lock(&ks->lock);
    struct nu_p256_key *old = ks->keys[KS__LINE];
    if (rc == NU_OK) {
        ks->keys[KS__LINE] = fresh;
        rc = ks__save(ks);
        if (rc != NU_OK) { /* not durable: keep the old key, drop the new */
            ks->keys[KS__LINE] = old;
            old = fresh;
        }
    }
    pthread_mutex_unlock(&ks->lock);
    nu_p256_key_destroy(old);
    return rc;
}

static int ks__pubkey(void *ctx, enum pg_key key, uint8_t out[PG_P256_PUB_LEN])
{
    struct pp_ks *ks = ctx;
    int k = ks__slot(key);
    if (k < 0)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&ks->lock);
    int rc = ks->keys[k] ? nu_p256_key_pub(ks->keys[k], out) : NU_ERR_NOT_FOUND;
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

/* Key usage is enforced here: the identity key signs, the package key only agrees. */
static int ks__sign(void *ctx, enum pg_key key, const uint8_t digest[32], uint8_t *sig,
                    size_t *sig_len)
{
    struct pp_ks *ks = ctx;
    if (key != PG_KEY_IDENTITY && key != PG_KEY_LINE_CA)
        return NU_ERR_PERMISSION;
    int k = ks__slot(key);
    pthread_mutex_lock(&ks->lock);
    int rc =
        ks->keys[k] ? nu_p256_key_sign_digest(ks->keys[k], digest, sig, sig_len) : NU_ERR_NOT_FOUND;
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

static int ks__ecdh(void *ctx, enum pg_key key, const uint8_t peer[PG_P256_PUB_LEN],
                    uint8_t out[32])
{
    struct pp_ks *ks = ctx;
    if (key != PG_KEY_PACKAGE)
        return NU_ERR_PERMISSION;
    pthread_mutex_lock(&ks->lock);
    int rc = ks->keys[1] ? nu_ecdh_p256(ks->keys[1], peer, out) : NU_ERR_NOT_FOUND;
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

static int ks__counter_read(void *ctx, const char *job, uint32_t *out)
{
    struct pp_ks *ks = ctx;
    pthread_mutex_lock(&ks->lock);
    const struct ks__rec *r = ks__find(ks, KS__COUNTER, job ? job : "");
    *out = r ? r->used : 0;
    pthread_mutex_unlock(&ks->lock);
    return NU_OK;
}

/* Store `reserved` as the counter of job, durably; memory keeps its old value
 * if the write fails. Called with the lock held. */
static int ks__reserve(struct pp_ks *ks, const char *job, uint32_t reserved, uint32_t used)
{
    struct ks__rec *r = ks__find(ks, KS__COUNTER, job);
    uint32_t old = r ? ks__rd32(r->data) : 0;
    int existed = r != NULL;
    uint8_t b[4];
    ks__wr32(b, reserved);
    int rc = ks__set(ks, KS__COUNTER, job, b, 4);
    if (rc == NU_OK)
        ks__find(ks, KS__COUNTER, job)->used = used;
    if (rc == NU_OK && (rc = ks__save(ks)) != NU_OK) {
        ks__wr32(b, old);
        ks__set(ks, KS__COUNTER, job, b, existed ? 4 : 0);
    }
    return rc;
}

/*
 * The counter's file value is a reservation: units handed out never exceed
 * it, so each one is durable before it is used, and after a crash the whole
 * reservation counts as spent (the value read back never goes down and never
 * passes the limit). Reserving limit/64 units at a time (1 for limits below
 * 128, at most 16) makes one KeyStore write per that many devices instead of
 * one per device; the price is that a crash wastes the unused rest of the
 * reservation, at most 1/64 of the limit, where one unit per busy socket was
 * wasted before. A clean close (pp_ks_close) and every other KeyStore write
 * give the unused units back.
 */
static int ks__counter_inc(void *ctx, const char *job, uint32_t limit, uint32_t *out)
{
    struct pp_ks *ks = ctx;
    if (!job || !*job)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&ks->lock);
    const struct ks__rec *r = ks__find(ks, KS__COUNTER, job);
    uint32_t used = r ? r->used : 0, reserved = r ? ks__rd32(r->data) : 0;
    int rc = used >= limit ? NU_ERR_LIMIT : NU_OK;
    if (rc == NU_OK && used >= reserved) {
        uint32_t step = limit / KS__RESERVE_DIV;
        step = step < 1 ? 1 : step > KS__RESERVE_MAX ? KS__RESERVE_MAX : step;
        rc = ks__reserve(ks, job, limit - used < step ? limit : used + step, used);
    }
    if (rc == NU_OK) {
        ks__find(ks, KS__COUNTER, job)->used = used + 1;
        *out = used + 1;
    }
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

static int ks__blob_get(void *ctx, const char *name, uint8_t *buf, size_t cap, size_t *out_len)
{
    struct pp_ks *ks = ctx;
    pthread_mutex_lock(&ks->lock);
    const struct ks__rec *r = ks__find(ks, KS__BLOB, name ? name : "");
    int rc = !r ? NU_ERR_NOT_FOUND : r->len > cap ? NU_ERR_TOO_LARGE : NU_OK;
    if (rc == NU_OK) {
        memcpy(buf, r->data, r->len);
        *out_len = r->len;
    }
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

static int ks__blob_put(void *ctx, const char *name, const uint8_t *data, size_t len)
{
    struct pp_ks *ks = ctx;
    if (len && !data)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&ks->lock);
    /* Keep the old value to put back if the write fails: memory never runs
     * ahead of the file. */
    const struct ks__rec *r = ks__find(ks, KS__BLOB, name ? name : "");
    uint8_t *old = NULL;
    size_t old_len = r ? r->len : 0;
    int rc = r && !(old = malloc(old_len)) ? NU_ERR_NOMEM : NU_OK;
    if (rc == NU_OK && r)
        memcpy(old, r->data, old_len);
    /* The reservation stays: the core writes a blob per chip (its in-flight
     * record), and giving the units back here would cost a second write per
     * chip for the next reservation. */
    if (rc == NU_OK)
        rc = ks__set(ks, KS__BLOB, name, data, len);
    if (rc == NU_OK && (rc = ks__save(ks)) != NU_OK)
        ks__set(ks, KS__BLOB, name, old, old_len);
    if (old) {
        nu_zero(old, old_len);
        free(old);
    }
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

/* ---- attestation --------------------------------------------------------------- */

/* The statement is built here from what the store holds, never from the
 * caller's claims: the core can ask for a signature over a nonce, nothing
 * else. Called with the lock held. */
static int ks__attest_locked(struct pp_ks *ks, const uint8_t nonce[PG_ATTEST_NONCE_LEN],
                             struct pg_attestation *out)
{
    struct nu_attest_claims c;
    uint8_t digest[32];
    const struct ks__rec *cert = ks__find(ks, KS__FACTORY, KS__FACTORY_CERT);
    const struct ks__rec *serial = ks__find(ks, KS__FACTORY, KS__FACTORY_SERIAL);
    if (!ks->keys[0] || !ks->keys[1] || !ks->keys[KS__ATTEST] || !cert || !serial ||
        serial->len > NU_ATTEST_SERIAL_MAX)
        return NU_ERR_NOT_FOUND;
    if (!ks->measured)
        return NU_ERR_STATE;
    if (cert->len > sizeof(out->cert))
        return NU_ERR_TOO_LARGE;
    memset(&c, 0, sizeof(c));
    int rc = nu_p256_key_pub(ks->keys[0], c.identity_pub);
    if (rc == NU_OK)
        rc = nu_p256_key_pub(ks->keys[1], c.package_pub);
    if (rc != NU_OK)
        return rc;
    /* Both keys were made by ks__keys_generate and no op exports them (the
     * TLS copy of the identity key stays in this process: pp_keystore.h). */
    c.keys_generated_in_keystore = 1;
    c.keys_non_exportable = 1;
    memcpy(c.measurement, ks->measurement, sizeof(c.measurement));
    memcpy(c.vendor_serial, serial->data, serial->len);
    memcpy(c.nonce, nonce, sizeof(c.nonce));
    snprintf(c.programmer_id, sizeof(c.programmer_id), "%s", ks->name);
    /* The OEM anchor the core pinned (PG_BLOB_PIN_ANCHOR, write-once): its
     * hash, so the cloud sees which "OEM" this programmer would trust. */
    const struct ks__rec *anchor = ks__find(ks, KS__BLOB, KS__ANCHOR_BLOB);
    if (anchor && (rc = nu_sha256(anchor->data, anchor->len, c.anchor_sha256)) != NU_OK)
        return rc;
    c.anchored = anchor != NULL;
    rc = nu_attest_encode(&c, out->stmt, sizeof(out->stmt), &out->stmt_len);
    if (rc == NU_OK)
        rc = nu_attest_digest(out->stmt, out->stmt_len, digest);
    out->sig_len = sizeof(out->sig);
    if (rc == NU_OK)
        rc = nu_p256_key_sign_digest(ks->keys[KS__ATTEST], digest, out->sig, &out->sig_len);
    if (rc == NU_OK) {
        memcpy(out->cert, cert->data, cert->len);
        out->cert_len = cert->len;
    }
    return rc;
}

static int ks__attest(void *ctx, const uint8_t nonce[PG_ATTEST_NONCE_LEN],
                      struct pg_attestation *out)
{
    struct pp_ks *ks = ctx;
    if (!nonce || !out)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&ks->lock);
    int rc = ks__attest_locked(ks, nonce, out);
    pthread_mutex_unlock(&ks->lock);
    if (rc != NU_OK)
        memset(out, 0, sizeof(*out));
    return rc;
}

int pp_ks_set_measurement(struct pp_ks *ks, const uint8_t measurement[32])
{
    if (!ks || !measurement)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&ks->lock);
    int rc = NU_OK;
    if (ks->measured && memcmp(ks->measurement, measurement, 32) != 0)
        rc = NU_ERR_STATE;
    else
        memcpy(ks->measurement, measurement, 32), ks->measured = 1;
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

int pp_ks_attest_key_create(struct pp_ks *ks, uint8_t out_pub[PG_P256_PUB_LEN])
{
    if (!ks || !out_pub)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&ks->lock);
    int rc = ks->keys[KS__ATTEST] ? NU_ERR_EXISTS : nu_p256_key_generate(&ks->keys[KS__ATTEST]);
    if (rc == NU_OK && (rc = ks__save(ks)) != NU_OK) {
        nu_p256_key_destroy(ks->keys[KS__ATTEST]);
        ks->keys[KS__ATTEST] = NULL;
    }
    if (ks->keys[KS__ATTEST] && (rc == NU_OK || rc == NU_ERR_EXISTS)) {
        int prc = nu_p256_key_pub(ks->keys[KS__ATTEST], out_pub);
        rc = prc ? prc : rc;
    }
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

int pp_ks_attest_cert_set(struct pp_ks *ks, const char *serial, const uint8_t *der, size_t len)
{
    if (!ks || !serial || !*serial || strlen(serial) > NU_ATTEST_SERIAL_MAX || !der || !len ||
        len > PG_ATTEST_CERT_MAX)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&ks->lock);
    int rc = ks__find(ks, KS__FACTORY, KS__FACTORY_CERT) ? NU_ERR_EXISTS : NU_OK;
    if (rc == NU_OK && !ks->keys[KS__ATTEST])
        rc = NU_ERR_NOT_FOUND;
    if (rc == NU_OK)
        rc = ks__set(ks, KS__FACTORY, KS__FACTORY_SERIAL, (const uint8_t *)serial, strlen(serial));
    if (rc == NU_OK)
        rc = ks__set(ks, KS__FACTORY, KS__FACTORY_CERT, der, len);
    if (rc == NU_OK && (rc = ks__save(ks)) != NU_OK) {
        ks__set(ks, KS__FACTORY, KS__FACTORY_SERIAL, NULL, 0);
        ks__set(ks, KS__FACTORY, KS__FACTORY_CERT, NULL, 0);
    }
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

int pp_ks_attest_serial(struct pp_ks *ks, char *out, size_t cap)
{
    if (!ks || !out || !cap)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&ks->lock);
    const struct ks__rec *r = ks__find(ks, KS__FACTORY, KS__FACTORY_SERIAL);
    int rc = !r ? NU_ERR_NOT_FOUND : r->len >= cap ? NU_ERR_TOO_LARGE : NU_OK;
    if (rc == NU_OK) {
        memcpy(out, r->data, r->len);
        out[r->len] = 0;
    }
    pthread_mutex_unlock(&ks->lock);
    return rc;
}

const struct pg_keystore_ops pp_ks_ops = {
    .version = PG_HAL_VERSION,
    .keys_generate = ks__keys_generate,
    .pubkey = ks__pubkey,
    .sign_digest = ks__sign,
    .ecdh = ks__ecdh,
    .counter_read = ks__counter_read,
    .counter_increment = ks__counter_inc,
    .blob_get = ks__blob_get,
    .blob_put = ks__blob_put,
    .attest = ks__attest,
    .line_key_generate = ks__line_generate,
};

int pp_ks_identity_pem_for_tls(struct pp_ks *ks, char *out, size_t cap, size_t *out_len)
{
    pthread_mutex_lock(&ks->lock);
    int rc = ks->keys[0] ? nu_p256_key_to_pem(ks->keys[0], out, cap, out_len) : NU_ERR_NOT_FOUND;
    pthread_mutex_unlock(&ks->lock);
    return rc;
}
