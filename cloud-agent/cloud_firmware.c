/*
 * nusec-cloud: firmware — signing in the HSM (firmware.sign), the list of
 * signed images (firmware.list), and end-to-end encrypted delivery to the
 * programmers of a job (firmware.manifest, firmware.chunk).
 *
 * SIGNING. NAME-X.Y.Z is signed once: the ledger records the image, its
 * bytes and its digest in one transaction (event firmware.signed), so an
 * agent on any host serves it (DIR/firmware/NAME-X.Y.Z.img is only a copy
 * for the tools of the signing host) — a signed version is immutable, a second
 * request for it is EXISTS. The one exception is a
 * redelivery of the very request that signed it (same requester,
 * idempotency key and content): it gets the stored image back, so QoS 1
 * redelivery never turns a success into a refusal.
 *
 * DELIVERY (proto/README.md "Firmware chunks"). Every request is authorized
 * afresh against the ledger: the job exists, the requester holds a package
 * in it, SHA-256(token) equals the stored hash (constant-time compare), and
 * the job is active or paused (paused only stops issuance; a programmer may
 * still prepare). Closed or exhausted jobs answer JOB_NOT_ACTIVE, expired
 * ones EXPIRED. Chunk i of the image is AES-256-GCM under the job's key with
 * nonce = 8 zero bytes || u32be(i) and AAD = job id || u32be(i).
 * That ciphertext depends only on the job (key, id) and the image, so each
 * job's image is encrypted once, when it is first needed (read from the
 * ledger and checked against the digest the job was created with),
 * and chunks are served from that memory: no AES per request, however many
 * programmers download, and the cloud keeps ciphertext, not the image.
 * Entries are evicted least recently used and dropped when the job closes.
 * Keys and tokens are never logged.
 */
#include "cloud_firmware.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_mcuboot.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* The largest image we sign or read back: a NU_ENVELOPE_FIRMWARE_MAX payload
 * with the MCUboot header and TLV trailer. */
#define FW__IMAGE_MAX (NU_ENVELOPE_FIRMWARE_MAX + NU_MCUBOOT_HDR_SIZE + NU_MCUBOOT_TLV_AREA_MAX)
#define FW__CHUNK_MAX 16384u /* proto/README.md */
#define FW__CACHE_ENTRIES 16
#define FW__CACHE_BYTES (64u * 1024u * 1024u)

_Static_assert(NU_MQTT_DEFAULT_MAX_PAYLOAD >= NU_ENVELOPE_MAX,
               "a whole envelope must fit one MQTT message");
_Static_assert(FW__IMAGE_MAX + 1024u <= NU_ENVELOPE_MAX, "a signed image fits its answer");
_Static_assert(FW__CHUNK_MAX + NU_GCM_TAG_LEN <= NU_ENVELOPE_CHUNK_MAX, "chunk field limit");

/* ------------------------------------------------------------ image cache */

static uint32_t fw__chunk_size(const struct cloud *cloud)
{
    unsigned cs = cloud->cfg.chunk_size;
    return cs && cs <= FW__CHUNK_MAX ? cs : FW__CHUNK_MAX;
}

static void fw__be32(uint8_t out[4], uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

struct fw__entry {
    struct fw__entry *next;
    char job_id[CLOUD_ID_MAX + 1];
    uint8_t *ct; /* chunk i at i * (cs + tag): ciphertext || tag */
    size_t ct_len;
    size_t len;                    /* plaintext image bytes */
    uint32_t cs;                   /* chunk size it was cut with */
    uint32_t count;                /* chunks */
    uint8_t digest[NU_SHA256_LEN]; /* of the plaintext image */
    uint64_t used;                 /* LRU tick */
    unsigned refs;                 /* requests reading img right now */
    int dead;                      /* unlinked while in use: the last reader frees it */
};

struct cloud_fw_cache {
    pthread_mutex_t lock;
    pthread_mutex_t sign_lock; /* one signature + exclusive write at a time */
    struct fw__entry *head;
    size_t n, bytes;
    uint64_t tick;
};

static void fw__entry_free(struct fw__entry *e)
{
    if (!e)
        return;
    free(e->ct);
    free(e);
}

int cloud_firmware_start(struct cloud *cloud)
{
    struct cloud_fw_cache *c = calloc(1, sizeof(*c));
    if (!c)
        return NU_ERR_NOMEM;
    pthread_mutex_init(&c->lock, NULL);
    pthread_mutex_init(&c->sign_lock, NULL);
    cloud->fw_cache = c;
    return NU_OK;
}

void cloud_firmware_stop(struct cloud *cloud)
{
    struct cloud_fw_cache *c = cloud ? cloud->fw_cache : NULL;
    if (!c)
        return;
    /* Workers are stopped: nothing holds a reference any more. */
    for (struct fw__entry *e = c->head, *next; e; e = next) {
        next = e->next;
        fw__entry_free(e);
    }
    pthread_mutex_destroy(&c->lock);
    pthread_mutex_destroy(&c->sign_lock);
    free(c);
    cloud->fw_cache = NULL;
}

/* Unlink e (lock held); free it now or when its last reader is done. */
static void fw__unlink(struct cloud_fw_cache *c, struct fw__entry *e)
{
    for (struct fw__entry **pp = &c->head; *pp; pp = &(*pp)->next) {
        if (*pp == e) {
            *pp = e->next;
            break;
        }
    }
    c->n--;
    c->bytes -= e->ct_len;
    if (e->refs)
        e->dead = 1;
    else
        fw__entry_free(e);
}

/* Evict the least recently used idle entries until within bounds (lock held). */
static void fw__evict(struct cloud_fw_cache *c)
{
    while (c->n > FW__CACHE_ENTRIES || c->bytes > FW__CACHE_BYTES) {
        struct fw__entry *lru = NULL;
        for (struct fw__entry *e = c->head; e; e = e->next) {
            if (!e->refs && (!lru || e->used < lru->used))
                lru = e;
        }
        if (!lru)
            return; /* everything is being read: over the bound for a moment */
        fw__unlink(c, lru);
    }
}

static struct fw__entry *fw__find(struct cloud_fw_cache *c, const char *job_id)
{
    for (struct fw__entry *e = c->head; e; e = e->next) {
        if (strcmp(e->job_id, job_id) == 0)
            return e;
    }
    return NULL;
}

/* The cached image of job_id with this digest, referenced; NULL if none. */
static struct fw__entry *fw__get(struct cloud_fw_cache *c, const char *job_id,
                                 const uint8_t digest[NU_SHA256_LEN])
{
    pthread_mutex_lock(&c->lock);
    struct fw__entry *e = fw__find(c, job_id);
    if (e && memcmp(e->digest, digest, NU_SHA256_LEN) != 0) {
        fw__unlink(c, e);
        e = NULL;
    }
    if (e) {
        e->refs++;
        e->used = ++c->tick;
    }
    pthread_mutex_unlock(&c->lock);
    return e;
}

static void fw__release(struct cloud_fw_cache *c, struct fw__entry *e)
{
    pthread_mutex_lock(&c->lock);
    if (--e->refs == 0 && e->dead)
        fw__entry_free(e);
    pthread_mutex_unlock(&c->lock);
}

/* Encrypt every chunk of img once (the layout of struct fw__entry). */
static int fw__seal_chunks(struct fw__entry *e, const uint8_t *img,
                           const uint8_t key[CLOUD_LEDGER_FW_KEY_LEN])
{
    uint8_t nonce[NU_GCM_NONCE_LEN] = {0}, aad[CLOUD_ID_MAX + 4];
    size_t jl = strlen(e->job_id), stride = (size_t)e->cs + NU_GCM_TAG_LEN;
    e->count = (uint32_t)((e->len + e->cs - 1) / e->cs);
    e->ct_len = (size_t)e->count * stride;
    e->ct = malloc(e->ct_len);
    if (!e->ct)
        return NU_ERR_NOMEM;
    memcpy(aad, e->job_id, jl);
    int rc = NU_OK;
    for (uint32_t i = 0; !rc && i < e->count; i++) {
        size_t off = (size_t)i * e->cs, n = e->len - off < e->cs ? e->len - off : e->cs;
        uint8_t *out = e->ct + (size_t)i * stride;
        fw__be32(nonce + 8, i);
        fw__be32(aad + jl, i);
        rc = nu_aes256gcm_encrypt(key, nonce, aad, jl + 4, img + off, n, out, out + n);
    }
    return rc;
}

/* A new entry for job_id from img[len] (not kept). NULL on failure. */
static struct fw__entry *fw__entry_new(const char *job_id, const uint8_t *img, size_t len,
                                       const uint8_t digest[NU_SHA256_LEN],
                                       const uint8_t key[CLOUD_LEDGER_FW_KEY_LEN], uint32_t cs)
{
    struct fw__entry *e = calloc(1, sizeof(*e));
    if (!e || strlen(job_id) > CLOUD_ID_MAX || len == 0 || len > UINT32_MAX) {
        free(e);
        return NULL;
    }
    strcpy(e->job_id, job_id);
    e->len = len;
    e->cs = cs;
    memcpy(e->digest, digest, NU_SHA256_LEN);
    if (fw__seal_chunks(e, img, key)) {
        fw__entry_free(e);
        return NULL;
    }
    return e;
}

/* Insert e; returns the entry for its job, referenced when `ref`. A
 * concurrent insert of the same image for the job wins and e is freed. */
static struct fw__entry *fw__put(struct cloud_fw_cache *c, struct fw__entry *e, int ref)
{
    pthread_mutex_lock(&c->lock);
    struct fw__entry *old = fw__find(c, e->job_id);
    if (old && memcmp(old->digest, e->digest, NU_SHA256_LEN) == 0 && old->cs == e->cs) {
        fw__entry_free(e);
        e = old;
    } else {
        if (old)
            fw__unlink(c, old);
        e->next = c->head;
        c->head = e;
        c->n++;
        c->bytes += e->ct_len;
    }
    e->used = ++c->tick;
    if (ref)
        e->refs++;
    fw__evict(c);
    pthread_mutex_unlock(&c->lock);
    return e;
}

void cloud_firmware_cache_put(struct cloud *cloud, const char *job_id, const uint8_t *img,
                              size_t len, const uint8_t digest[NU_SHA256_LEN],
                              const uint8_t key[CLOUD_LEDGER_FW_KEY_LEN])
{
    if (!cloud->fw_cache)
        return;
    struct fw__entry *e = fw__entry_new(job_id, img, len, digest, key, fw__chunk_size(cloud));
    if (e)
        fw__put(cloud->fw_cache, e, 0);
}

void cloud_firmware_cache_drop(struct cloud *cloud, const char *job_id)
{
    struct cloud_fw_cache *c = cloud->fw_cache;
    if (!c)
        return;
    pthread_mutex_lock(&c->lock);
    struct fw__entry *e = fw__find(c, job_id);
    if (e)
        fw__unlink(c, e);
    pthread_mutex_unlock(&c->lock);
}

/* ------------------------------------------------------------ image files */

static int fw__image_path(const struct cloud *cloud, const char *name, char *out, size_t cap)
{
    char dir[PATH_MAX];
    int rc = nu_paths_get(cloud->dir, NU_PATH_FIRMWARE, dir, sizeof(dir));
    return rc ? rc : nu_path_fmt(out, cap, "%s/%s.img", dir, name);
}

/* Verify img as ours (secure-boot key) and hash the whole file. */
static int fw__image_check(const struct cloud *cloud, const uint8_t *img, size_t len,
                           struct nu_mcuboot_info *out_info, uint8_t out_digest[NU_SHA256_LEN])
{
    const struct nu_signer *sb = nu_hsm_key_signer(cloud->keys.secure_boot);
    uint8_t rotpk_hash[NU_SHA256_LEN];
    int rc = nu_mcuboot_rotpk_hash(sb->pub, rotpk_hash);
    if (!rc)
        rc = nu_mcuboot_verify(img, len, sb->pub, rotpk_hash, out_info);
    if (!rc)
        rc = nu_sha256(img, len, out_digest);
    return rc;
}

/* An image signed before the ledger kept the bytes (schema < 5) is still a
 * file in this agent's DIR/firmware: read it once, check it against the
 * record, and move its bytes into the ledger for every other agent. */
static int fw__image_import(struct cloud *cloud, struct cloud_ledger *ledger, const char *name,
                            uint8_t **out_img, size_t *out_len)
{
    char path[PATH_MAX];
    int rc = fw__image_path(cloud, name, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, FW__IMAGE_MAX, out_img, out_len);
    if (rc)
        return rc;
    rc = cloud_ledger_firmware_image_put(ledger, name, *out_img, *out_len);
    if (rc == NU_ERR_INVALID_ARG || rc == NU_ERR_NOT_FOUND) {
        rc = NU_ERR_BAD_FIRMWARE; /* replaced on disk since it was signed */
    } else if (rc) {
        nu_warn("firmware %s: its file could not be moved into the ledger (%s): served from"
                " the file",
                name, nu_err_str(rc));
        rc = NU_OK;
    }
    if (rc) {
        free(*out_img);
        *out_img = NULL;
    }
    return rc;
}

int cloud_firmware_image_load(struct cloud *cloud, struct cloud_ledger *ledger, const char *name,
                              uint8_t **out_img, size_t *out_len, uint8_t out_digest[NU_SHA256_LEN])
{
    struct cloud_ledger_firmware rec;
    struct nu_mcuboot_info info;
    uint8_t *img = NULL;
    size_t len = 0;
    *out_img = NULL;
    int rc = nu_envelope_id_check(name);
    if (!rc)
        rc = cloud_ledger_firmware_get(ledger, name, &rec);
    if (rc)
        return rc; /* never signed here: no file is looked at */
    rc = cloud_ledger_firmware_image(ledger, name, &img, &len);
    if (rc == NU_ERR_NOT_FOUND)
        rc = fw__image_import(cloud, ledger, name, &img, &len);
    else if (rc == NU_ERR_DB)
        rc = NU_ERR_BAD_FIRMWARE; /* bytes that differ from the record */
    /* Ours (the secure-boot key) and what was signed, checked again here: the
     * database is shared, and only the HSM's signature is trusted. */
    if (!rc) {
        rc = fw__image_check(cloud, img, len, &info, out_digest);
        if (rc && rc != NU_ERR_NOMEM && rc != NU_ERR_CRYPTO)
            rc = NU_ERR_BAD_FIRMWARE;
    }
    if (!rc && (len != rec.image_size || memcmp(out_digest, rec.image_digest, NU_SHA256_LEN)))
        rc = NU_ERR_BAD_FIRMWARE;
    if (rc == NU_ERR_BAD_FIRMWARE)
        nu_warn("firmware %s does not match its signature record: not used", name);
    if (rc) {
        free(img);
        return rc;
    }
    *out_img = img;
    *out_len = len;
    return NU_OK;
}

/* A copy of a new signed image as DIR/firmware/NAME.img for the tools on this
 * host (`nusec stack`, mcuboot_verify.py); the ledger's bytes are what any
 * agent serves, so a copy that cannot be written is only a warning. */
static void fw__image_copy(const struct cloud *cloud, const char *name, const uint8_t *img,
                           size_t len)
{
    char dir[PATH_MAX], path[PATH_MAX];
    int rc = nu_paths_get(cloud->dir, NU_PATH_FIRMWARE, dir, sizeof(dir));
    if (!rc)
        rc = nu_mkdirs(dir, 0755);
    if (!rc)
        rc = fw__image_path(cloud, name, path, sizeof(path));
    if (!rc)
        rc = nu_file_write_new(path, img, len, 0644);
    if (rc && rc != NU_ERR_EXISTS)
        nu_warn("firmware %s: no local copy in DIR/firmware (%s); the ledger holds it", name,
                nu_err_str(rc));
}

/* DIR/firmware/rotpk.pem holds the secure-boot public key (rewritten only if different). */
static int fw__rotpk_write(const struct cloud *cloud, const char *pem, size_t pem_len)
{
    char path[PATH_MAX];
    uint8_t *old = NULL;
    size_t old_len = 0;
    int rc = nu_paths_get(cloud->dir, NU_PATH_ROTPK, path, sizeof(path));
    if (rc)
        return rc;
    if (!nu_file_read(path, NU_P256_PUB_PEM_MAX, &old, &old_len) && old_len == pem_len &&
        memcmp(old, pem, pem_len) == 0)
        rc = NU_OK;
    else
        rc = nu_file_write_atomic(path, pem, pem_len, 0644);
    free(old);
    return rc;
}

/* ------------------------------------------------------------ firmware.sign */

/* What names a sign request: who, its idempotency key and its content. */
static int fw__sign_request_hash(const struct cloud_call *call,
                                 const Nusec__V1__FirmwareSignRequest *r,
                                 uint8_t out[NU_SHA256_LEN])
{
    const Nusec__V1__Header *h = call->req->header;
    uint8_t payload_hash[NU_SHA256_LEN], counter[4];
    struct nu_sha256_ctx ctx;
    counter[0] = (uint8_t)(r->security_counter >> 24);
    counter[1] = (uint8_t)(r->security_counter >> 16);
    counter[2] = (uint8_t)(r->security_counter >> 8);
    counter[3] = (uint8_t)r->security_counter;
    int rc = nu_sha256(r->payload.data, r->payload.len, payload_hash);
    if (!rc)
        rc = nu_sha256_init(&ctx);
    if (rc)
        return rc;
    /* NUL separators: ids and versions never contain one. */
    static const char tag[] = "nusec/v1 firmware.sign";
    const struct {
        const void *p;
        size_t n;
    } parts[] = {
        {tag, sizeof(tag)},
        {call->requester, strlen(call->requester) + 1},
        {h->idempotency_key.data, h->idempotency_key.len},
        {r->name, strlen(r->name) + 1},
        {r->version, strlen(r->version) + 1},
        {counter, sizeof(counter)},
        {payload_hash, sizeof(payload_hash)},
    };
    for (size_t i = 0; !rc && i < sizeof(parts) / sizeof(parts[0]); i++)
        rc = nu_sha256_update(&ctx, parts[i].p, parts[i].n);
    if (!rc)
        return nu_sha256_final(&ctx, out);
    nu_sha256_abort(&ctx);
    return rc;
}

/* The parts of one signing, owned here and freed by fw__signing_free. */
struct fw__signing {
    char name[CLOUD_ID_MAX + 1];
    char rotpk_pem[NU_P256_PUB_PEM_MAX];
    size_t rotpk_len;
    uint8_t request_hash[NU_SHA256_LEN];
    uint8_t digest[NU_SHA256_LEN];
    uint8_t *img;
    size_t len;
};

static int fw__sign_reply(struct cloud_call *call, struct fw__signing *s)
{
    Nusec__V1__FirmwareSignResponse resp = NUSEC__V1__FIRMWARE_SIGN_RESPONSE__INIT;
    resp.image_name = s->name;
    resp.image.data = s->img;
    resp.image.len = s->len;
    resp.rotpk_pem.data = (uint8_t *)s->rotpk_pem;
    resp.rotpk_pem.len = s->rotpk_len;
    resp.image_digest.data = s->digest;
    resp.image_digest.len = sizeof(s->digest);
    return cloud_reply(call, &resp.base);
}

/* The same request again (QoS 1 redelivery): answer the stored image. */
static int fw__sign_replay(struct cloud_call *call, struct fw__signing *s,
                           const struct cloud_ledger_firmware *rec)
{
    int rc =
        cloud_firmware_image_load(call->cloud, call->ledger, s->name, &s->img, &s->len, s->digest);
    (void)rec;
    if (rc)
        return cloud_fail(call, rc == NU_ERR_NOT_FOUND ? NU_ERR_STATE : rc,
                          "%s is recorded as signed but its image is missing or changed", s->name);
    nu_info("firmware.sign %s: redelivered request, stored image answered", s->name);
    return fw__sign_reply(call, s);
}

/* Check the request, and decide: new signature, replay, or EXISTS. */
static int fw__sign_prepare(struct cloud_call *call, const Nusec__V1__FirmwareSignRequest *r,
                            struct nu_mcuboot_version *ver, struct fw__signing *s, int *out_replay)
{
    struct cloud_ledger_firmware rec;
    *out_replay = 0;
    if (nu_mcuboot_version_parse(r->version, ver) || strchr(r->version, '+'))
        return cloud_fail(call, NU_ERR_INVALID_ARG,
                          "version must be X.Y.Z (X,Y <= 255, Z <= 65535)");
    if (nu_path_fmt(s->name, sizeof(s->name), "%s-%s", r->name, r->version) ||
        nu_envelope_id_check(s->name))
        return cloud_fail(call, NU_ERR_TOO_LARGE, "image name NAME-X.Y.Z over %d characters",
                          CLOUD_ID_MAX);
    if (r->payload.len == 0 || r->payload.len > NU_ENVELOPE_FIRMWARE_MAX)
        return cloud_fail(call, NU_ERR_TOO_LARGE, "payload is %zu bytes, 1..%u accepted",
                          r->payload.len, NU_ENVELOPE_FIRMWARE_MAX);
    if (!call->req->header->idempotency_key.len)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "firmware.sign needs an idempotency key");
    int rc = fw__sign_request_hash(call, r, s->request_hash);
    if (rc)
        return rc;
    rc = cloud_ledger_firmware_get(call->ledger, s->name, &rec);
    if (!rc && memcmp(rec.request_hash, s->request_hash, NU_SHA256_LEN) == 0) {
        *out_replay = 1;
        return fw__sign_replay(call, s, &rec);
    }
    if (!rc)
        return cloud_fail(call, NU_ERR_EXISTS, "%s is already signed: a version is immutable",
                          s->name);
    return rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
}

/* Sign, then record the image with its bytes: the ledger's unique name keeps
 * two agents (on any hosts) from both recording one version. */
static int fw__sign_commit(struct cloud_call *call, const Nusec__V1__FirmwareSignRequest *r,
                           const struct nu_mcuboot_version *ver, struct fw__signing *s)
{
    struct cloud *cloud = call->cloud;
    const struct nu_signer *sb = nu_hsm_key_signer(cloud->keys.secure_boot);
    struct cloud_ledger_firmware rec;
    int rc = nu_mcuboot_sign(r->payload.data, r->payload.len, ver, r->security_counter, 0, sb,
                             &s->img, &s->len);
    if (rc)
        return cloud_fail(call, rc, "signing in the HSM failed");
    rc = nu_sha256(s->img, s->len, s->digest);
    if (rc)
        return rc;
    memset(&rec, 0, sizeof(rec));
    strcpy(rec.name, s->name);
    memcpy(rec.image_digest, s->digest, NU_SHA256_LEN);
    rec.image_size = (uint32_t)s->len;
    rec.security_counter = r->security_counter;
    memcpy(rec.request_hash, s->request_hash, NU_SHA256_LEN);
    snprintf(rec.signed_by, sizeof(rec.signed_by), "%s", call->requester);
    rec.signed_at_ms = nu_time_ms();
    rc = cloud_ledger_firmware_add_image(call->ledger, &rec, s->img, s->len);
    if (rc == NU_ERR_EXISTS)
        return cloud_fail(call, rc, "%s was signed meanwhile", s->name);
    if (rc)
        return cloud_fail(call, rc, "cannot record the signature");
    return NU_OK;
}

static int fw__sign(struct cloud_call *call)
{
    const Nusec__V1__FirmwareSignRequest *r = call->req->firmware_sign_request;
    struct cloud *cloud = call->cloud;
    struct nu_mcuboot_version ver;
    struct fw__signing *s = calloc(1, sizeof(*s));
    int replay = 0;
    if (!s)
        return NU_ERR_NOMEM;
    int rc = nu_p256_pub_to_pem(nu_hsm_key_signer(cloud->keys.secure_boot)->pub, s->rotpk_pem,
                                sizeof(s->rotpk_pem), &s->rotpk_len);
    /* Decide and act under one lock: two deliveries of one request in two
     * workers must not both sign. Agents in other processes are kept apart
     * by the ledger's unique name. */
    pthread_mutex_lock(&cloud->fw_cache->sign_lock);
    if (!rc)
        rc = fw__sign_prepare(call, r, &ver, s, &replay);
    if (!rc && !replay)
        rc = fw__sign_commit(call, r, &ver, s);
    pthread_mutex_unlock(&cloud->fw_cache->sign_lock);
    if (!rc && !replay) {
        fw__image_copy(cloud, s->name, s->img, s->len);
        int w = fw__rotpk_write(cloud, s->rotpk_pem, s->rotpk_len);
        if (w)
            nu_warn("cannot update rotpk.pem: %s", nu_err_str(w));
        nu_info("firmware %s signed for %s (%zu bytes)", s->name, call->requester, s->len);
        Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
        ev.kind = "firmware.signed";
        ev.detail = s->name;
        cloud_publish_event(cloud, &ev);
        rc = fw__sign_reply(call, s);
    }
    free(s->img);
    free(s);
    return rc;
}

/* ------------------------------------------------------------ firmware.list */

struct fw__list {
    Nusec__V1__FirmwareInfo *info;
    Nusec__V1__FirmwareInfo **ptrs;
    char (*names)[CLOUD_ID_MAX + 1];
    uint8_t (*digests)[NU_SHA256_LEN];
    size_t n, cap;
};

/* One signed image as the ledger records it (in name order). */
static int fw__list_one(void *ctx, const struct cloud_ledger_firmware *fw)
{
    struct fw__list *l = ctx;
    if (l->n == l->cap)
        return NU_ERR_LIMIT;
    Nusec__V1__FirmwareInfo *fi = &l->info[l->n];
    nusec__v1__firmware_info__init(fi);
    snprintf(l->names[l->n], sizeof(l->names[0]), "%s", fw->name);
    memcpy(l->digests[l->n], fw->image_digest, NU_SHA256_LEN);
    fi->image_name = l->names[l->n];
    fi->size = fw->image_size;
    fi->image_digest.data = l->digests[l->n];
    fi->image_digest.len = NU_SHA256_LEN;
    fi->signed_at_ms = fw->signed_at_ms;
    l->ptrs[l->n] = fi;
    l->n++;
    return NU_OK;
}

static int fw__list_images(struct cloud_call *call)
{
    struct fw__list l = {.cap = NU_ENVELOPE_LIST_MAX};
    Nusec__V1__FirmwareList out = NUSEC__V1__FIRMWARE_LIST__INIT;
    int rc = NU_OK;
    l.info = calloc(l.cap, sizeof(*l.info));
    l.ptrs = calloc(l.cap, sizeof(*l.ptrs));
    l.names = calloc(l.cap, sizeof(*l.names));
    l.digests = calloc(l.cap, sizeof(*l.digests));
    if (!l.info || !l.ptrs || !l.names || !l.digests)
        rc = NU_ERR_NOMEM;
    if (!rc)
        rc = cloud_ledger_firmware_list(call->ledger, fw__list_one, &l);
    if (rc == NU_ERR_LIMIT) {
        nu_warn("firmware.list: more than %zu images, answer truncated", l.cap);
        rc = NU_OK;
    }
    if (!rc) {
        out.images = l.ptrs;
        out.n_images = l.n;
        rc = cloud_reply(call, &out.base);
    }
    free(l.digests);
    free(l.names);
    free(l.ptrs);
    free(l.info);
    return rc;
}

/* ------------------------------------------------------------ delivery */

/* A programmer's authorization for one request, and the image to serve. */
struct fw__grant {
    struct cloud_ledger_job job;
    struct cloud_ledger_job_keys keys;
    struct fw__entry *image; /* referenced; fw__grant_end releases it */
};

static void fw__grant_end(struct cloud *cloud, struct fw__grant *g)
{
    if (g->image)
        fw__release(cloud->fw_cache, g->image);
    nu_zero(&g->keys, sizeof(g->keys));
    g->image = NULL;
}

/* The job's sealed chunks from the cache, or read, checked, sealed and cached. */
static int fw__grant_image(struct cloud_call *call, struct fw__grant *g)
{
    struct cloud_fw_cache *c = call->cloud->fw_cache;
    uint8_t digest[NU_SHA256_LEN], *img = NULL;
    size_t len = 0;
    g->image = fw__get(c, g->job.job_id, g->keys.image_digest);
    if (g->image && g->image->cs == fw__chunk_size(call->cloud))
        return NU_OK;
    if (g->image)
        fw__release(c, g->image);
    g->image = NULL;
    int rc =
        cloud_firmware_image_load(call->cloud, call->ledger, g->job.firmware, &img, &len, digest);
    if (!rc && (len != g->keys.image_size || memcmp(digest, g->keys.image_digest, NU_SHA256_LEN)))
        rc = NU_ERR_BAD_FIRMWARE;
    if (rc) {
        free(img);
        return cloud_fail(call, rc, "the image of job %s is not available as it was packaged",
                          g->job.job_id);
    }
    struct fw__entry *e = fw__entry_new(g->job.job_id, img, len, digest, g->keys.firmware_key,
                                        fw__chunk_size(call->cloud));
    free(img);
    g->image = e ? fw__put(c, e, 1) : NULL;
    return g->image ? NU_OK : NU_ERR_NOMEM;
}

static int fw__grant(struct cloud_call *call, const char *job_id, const ProtobufCBinaryData *token,
                     struct fw__grant *g)
{
    memset(g, 0, sizeof(*g));
    int rc = cloud_ledger_firmware_access(call->ledger, job_id, call->requester, token->data,
                                          token->len, &g->job, &g->keys);
    switch (rc) {
    case NU_OK:
        break;
    case NU_ERR_NOT_FOUND:
        return cloud_fail(call, rc, "no job %s", job_id);
    case NU_ERR_NOT_AUTHORIZED:
        return cloud_fail(call, rc, "%s has no package in job %s", call->requester, job_id);
    case NU_ERR_TOKEN:
        return cloud_fail(call, rc, "firmware token refused for job %s", job_id);
    default:
        return rc;
    }
    if (g->job.status != CLOUD_LEDGER_JOB_ACTIVE && g->job.status != CLOUD_LEDGER_JOB_PAUSED)
        rc = cloud_fail(call, NU_ERR_JOB_NOT_ACTIVE, "job %s is %s", job_id,
                        g->job.status == CLOUD_LEDGER_JOB_CLOSED ? "closed" : "exhausted");
    else if (g->job.expires_at_ms && nu_time_ms() >= g->job.expires_at_ms)
        rc = cloud_fail(call, NU_ERR_EXPIRED, "job %s has expired", job_id);
    else
        rc = fw__grant_image(call, g);
    if (rc)
        fw__grant_end(call->cloud, g);
    return rc;
}

static int fw__manifest(struct cloud_call *call)
{
    const Nusec__V1__FirmwareManifestRequest *r = call->req->firmware_manifest_request;
    struct fw__grant g;
    int rc = fw__grant(call, r->job_id, &r->token, &g);
    if (rc)
        return rc;
    Nusec__V1__FirmwareManifest m = NUSEC__V1__FIRMWARE_MANIFEST__INIT;
    m.job_id = g.job.job_id;
    m.image_name = g.job.firmware;
    m.size = (uint32_t)g.image->len;
    m.chunk_size = g.image->cs;
    m.chunk_count = g.image->count;
    m.image_digest.data = g.image->digest;
    m.image_digest.len = NU_SHA256_LEN;
    rc = cloud_reply(call, &m.base);
    fw__grant_end(call->cloud, &g);
    return rc;
}

static int fw__chunk(struct cloud_call *call)
{
    const Nusec__V1__FirmwareChunkRequest *r = call->req->firmware_chunk_request;
    uint8_t nonce[NU_GCM_NONCE_LEN] = {0};
    struct fw__grant g;
    int rc = fw__grant(call, r->job_id, &r->token, &g);
    if (rc)
        return rc;
    const struct fw__entry *e = g.image;
    if (r->index >= e->count) {
        rc = cloud_fail(call, NU_ERR_INVALID_ARG, "chunk %u of %u does not exist", r->index,
                        e->count);
        goto out;
    }
    size_t off = (size_t)r->index * e->cs;
    size_t n = e->len - off < e->cs ? e->len - off : e->cs;
    fw__be32(nonce + 8, r->index);
    Nusec__V1__FirmwareChunk ch = NUSEC__V1__FIRMWARE_CHUNK__INIT;
    ch.job_id = g.job.job_id;
    ch.index = r->index;
    ch.offset = (uint32_t)off;
    ch.nonce.data = nonce;
    ch.nonce.len = sizeof(nonce);
    /* Sealed once for the job (fw__seal_chunks): read-only while referenced. */
    ch.ciphertext.data = e->ct + (size_t)r->index * ((size_t)e->cs + NU_GCM_TAG_LEN);
    ch.ciphertext.len = n + NU_GCM_TAG_LEN;
    rc = cloud_reply(call, &ch.base);
out:
    fw__grant_end(call->cloud, &g);
    return rc;
}

const struct cloud_op cloud_firmware_ops[] = {
    {"firmware.sign", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_FIRMWARE_SIGN_REQUEST, fw__sign},
    {"firmware.list", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_FIRMWARE_LIST_REQUEST,
     fw__list_images},
    {"firmware.manifest", CLOUD_ROLE_PROGRAMMER,
     NUSEC__V1__ENVELOPE__BODY_FIRMWARE_MANIFEST_REQUEST, fw__manifest},
    {"firmware.chunk", CLOUD_ROLE_PROGRAMMER, NUSEC__V1__ENVELOPE__BODY_FIRMWARE_CHUNK_REQUEST,
     fw__chunk},
    {NULL, 0, 0, NULL},
};
