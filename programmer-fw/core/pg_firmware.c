/* pg_firmware: encrypted chunked download into the flash cache, resumable, verified. */
#include "pg_int.h"

#include <string.h>

#define FW__MAGIC 0x50474d31u /* "PGM1" */
#define FW__META_LEN 52

/* Progress record in PG_FLASH_META. It only says which chunks are already in
 * the cache; nothing in it is trusted for verification: the whole image is
 * verified again after every (resumed) download. */
struct fw__meta {
    uint8_t digest[32];
    uint32_t size, chunk_size, chunk_count, next;
};

static uint32_t fw__rd32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

static int fw__meta_read(struct pg_core *c, struct fw__meta *m)
{
    uint8_t b[FW__META_LEN];
    int rc = pg_flash_read(c->hal, PG_FLASH_META, 0, b, sizeof(b));
    if (rc != NU_OK)
        return rc;
    if (fw__rd32(b) != FW__MAGIC)
        return NU_ERR_NOT_FOUND;
    memcpy(m->digest, b + 4, 32);
    m->size = fw__rd32(b + 36);
    m->chunk_size = fw__rd32(b + 40);
    m->chunk_count = fw__rd32(b + 44);
    m->next = fw__rd32(b + 48);
    return NU_OK;
}

static int fw__meta_write(struct pg_core *c, const struct fw__meta *m)
{
    uint8_t b[FW__META_LEN];
    pg__be32(b, FW__MAGIC);
    memcpy(b + 4, m->digest, 32);
    pg__be32(b + 36, m->size);
    pg__be32(b + 40, m->chunk_size);
    pg__be32(b + 44, m->chunk_count);
    pg__be32(b + 48, m->next);
    return pg_flash_write(c->hal, PG_FLASH_META, 0, b, sizeof(b));
}

static int fw__meta_matches(const struct pg_core *c, const struct fw__meta *m)
{
    const struct pg_job *j = &c->job;
    if (!pg__ct_eq(m->digest, j->fw_digest, 32) || m->size != j->fw_size)
        return 0;
    if (m->chunk_size == 0 || m->chunk_size > PG_CHUNK_MAX)
        return 0;
    uint32_t count = (m->size + m->chunk_size - 1) / m->chunk_size;
    return m->chunk_count == count && m->next <= count;
}

static int fw__reset_cache(struct pg_core *c)
{
    int rc = pg_flash_erase(c->hal, PG_FLASH_META);
    if (rc == NU_OK)
        rc = pg_flash_erase(c->hal, PG_FLASH_IMAGE);
    return rc;
}

static int fw__manifest(struct pg_core *c, struct fw__meta *out)
{
    struct pg_dl_work *dl = &c->work.dl;
    const struct pg_job *j = &c->job;
    struct pg_pb_writer w;
    struct pg_msg_env env;
    struct pg_msg_manifest man;
    size_t len = 0;
    int rc = pg__env_start(c, &w, dl->req, sizeof(dl->req), NULL, NULL, 0);
    if (rc != NU_OK)
        return rc;
    pg_msg_put_manifest_req(&w, j->job_id, j->token, j->token_len);
    if (w.err)
        return w.err;
    rc =
        pg__request(c, NULL, "firmware.manifest", dl->req, w.len, dl->resp, sizeof(dl->resp), &len);
    if (rc == NU_OK)
        rc = pg_msg_reply_decode(dl->resp, len, PG_BODY_MANIFEST, &env, NULL);
    if (rc == NU_OK)
        rc = pg_msg_manifest_decode(env.body, &man);
    if (rc != NU_OK)
        return rc;
    uint32_t cap = 0;
    if ((rc = pg_flash_size(c->hal, PG_FLASH_IMAGE, &cap)) != NU_OK)
        return rc;
    /* The package (signed by the OEM) is the reference; the manifest must agree. */
    if (!pg_msg_eq(man.job_id, j->job_id) || man.size != j->fw_size || man.image_digest.len != 32 ||
        !pg__ct_eq(man.image_digest.p, j->fw_digest, 32))
        return NU_ERR_BAD_FIRMWARE;
    if (man.chunk_size == 0 || man.chunk_size > PG_CHUNK_MAX ||
        man.chunk_count != (man.size + man.chunk_size - 1) / man.chunk_size)
        return NU_ERR_DECODE;
    if (man.size > cap)
        return NU_ERR_TOO_LARGE;
    memcpy(out->digest, j->fw_digest, 32);
    out->size = man.size;
    out->chunk_size = man.chunk_size;
    out->chunk_count = man.chunk_count;
    out->next = 0;
    return NU_OK;
}

/* One attempt at chunk i: fetch, check, decrypt in place. *out_plain points
 * into dl->resp. */
static int fw__chunk_once(struct pg_core *c, const struct fw__meta *m, uint32_t i,
                          uint8_t **out_plain, size_t *out_len)
{
    struct pg_dl_work *dl = &c->work.dl;
    const struct pg_job *j = &c->job;
    struct pg_pb_writer w;
    struct pg_msg_env env;
    struct pg_msg_chunk ch;
    size_t len = 0;
    int rc = pg__env_start(c, &w, dl->req, sizeof(dl->req), NULL, NULL, 0);
    if (rc != NU_OK)
        return rc;
    pg_msg_put_chunk_req(&w, j->job_id, j->token, j->token_len, i);
    if (w.err)
        return w.err;
    rc = pg__request(c, NULL, "firmware.chunk", dl->req, w.len, dl->resp, sizeof(dl->resp), &len);
    if (rc == NU_OK)
        rc = pg_msg_reply_decode(dl->resp, len, PG_BODY_CHUNK, &env, NULL);
    if (rc == NU_OK)
        rc = pg_msg_chunk_decode(env.body, &ch);
    if (rc != NU_OK)
        return rc;
    uint32_t off = i * m->chunk_size;
    size_t plain = m->size - off < m->chunk_size ? m->size - off : m->chunk_size;
    uint8_t nonce[12] = {0};
    pg__be32(nonce + 8, i);
    if (!pg_msg_eq(ch.job_id, j->job_id) || ch.index != i || ch.offset != off ||
        ch.nonce.len != 12 || !pg__ct_eq(ch.nonce.p, nonce, 12) || ch.ciphertext.len != plain + 16)
        return NU_ERR_TAMPERED;
    uint8_t aad[PG_ID_MAX + 4];
    size_t jl = strlen(j->job_id);
    memcpy(aad, j->job_id, jl);
    pg__be32(aad + jl, i);
    /* Decrypt in place: the ciphertext lies in our own response buffer. */
    uint8_t *ct = dl->resp + (ch.ciphertext.p - dl->resp);
    rc = pg_gcm_decrypt(c->hal, j->fw_key, nonce, aad, jl + 4, ct, plain, ct, ct + plain);
    if (rc != NU_OK)
        return rc == NU_ERR_CRYPTO ? rc : NU_ERR_TAMPERED;
    *out_plain = ct;
    *out_len = plain;
    return NU_OK;
}

static int fw__chunk(struct pg_core *c, struct fw__meta *m, uint32_t i)
{
    uint8_t *plain = NULL;
    size_t len = 0;
    int rc = NU_ERR_INTERNAL;
    for (unsigned attempt = 0; attempt <= c->retries; attempt++) {
        rc = fw__chunk_once(c, m, i, &plain, &len);
        if (rc != NU_ERR_TAMPERED && rc != NU_ERR_DECODE)
            break;
        /* Never written anywhere: fetch it again. */
        pg__log(c, PG_LOG_WARN, "firmware chunk %u rejected (%s), fetching again", (unsigned)i,
                nu_err_name(rc));
    }
    if (rc != NU_OK)
        return rc;
    rc = pg_flash_write(c->hal, PG_FLASH_IMAGE, i * m->chunk_size, plain, len);
    pg__zero(plain, len);
    if (rc != NU_OK)
        return rc;
    m->next = i + 1;
    return fw__meta_write(c, m);
}

/* SHA-256 of the cache == package digest, then the MCUboot verification. */
static int fw__verify(struct pg_core *c, uint32_t size)
{
    struct pg_dl_work *dl = &c->work.dl;
    uint8_t digest[32];
    int rc = pg_sha256_init(c->hal, &dl->sha);
    for (uint32_t off = 0; rc == NU_OK && off < size;) {
        size_t n = size - off < 4096u ? size - off : 4096u;
        rc = pg_flash_read(c->hal, PG_FLASH_IMAGE, off, dl->resp, n);
        if (rc == NU_OK)
            rc = pg_sha256_update(c->hal, &dl->sha, dl->resp, n);
        off += (uint32_t)n;
    }
    if (rc == NU_OK)
        rc = pg_sha256_final(c->hal, &dl->sha, digest);
    if (rc == NU_OK && !pg__ct_eq(digest, c->job.fw_digest, 32))
        rc = NU_ERR_BAD_FIRMWARE;
    if (rc == NU_OK)
        rc =
            pg_image_verify(c->hal, pg__flash_image_read, c, size, c->pin_rotpk, c->job.rotpk_hash);
    if (rc == NU_ERR_BAD_SIGNATURE || rc == NU_ERR_TAMPERED || rc == NU_ERR_DECODE)
        rc = NU_ERR_BAD_FIRMWARE;
    return rc;
}

int pg_core_firmware_fetch(struct pg_core *c)
{
    if (!c->job.loaded)
        return NU_ERR_STATE;
    if (atomic_load(&c->producing))
        return NU_ERR_BUSY;
    c->fw_ready = 0;
    struct fw__meta m;
    int rc = fw__meta_read(c, &m);
    int resume = rc == NU_OK && fw__meta_matches(c, &m);
    if (rc != NU_OK && rc != NU_ERR_NOT_FOUND)
        return rc;
    if (!resume || m.next < m.chunk_count) {
        struct fw__meta fresh;
        if ((rc = fw__manifest(c, &fresh)) != NU_OK)
            goto out;
        if (!resume || fresh.chunk_size != m.chunk_size) {
            if ((rc = fw__reset_cache(c)) != NU_OK || (rc = fw__meta_write(c, &fresh)) != NU_OK)
                goto out;
            m = fresh;
        } else {
            pg__log(c, PG_LOG_INFO, "firmware download resumes at chunk %u of %u", (unsigned)m.next,
                    (unsigned)m.chunk_count);
        }
        for (uint32_t i = m.next; i < m.chunk_count && rc == NU_OK; i++)
            rc = fw__chunk(c, &m, i);
        if (rc != NU_OK)
            goto out;
    }
    rc = fw__verify(c, m.size);
    if (rc == NU_ERR_BAD_FIRMWARE)
        fw__reset_cache(c); /* never keep an image that failed */
    if (rc == NU_OK) {
        c->fw_ready = 1;
        pg__log(c, PG_LOG_INFO, "firmware %s verified and cached (%u bytes)", c->job.firmware,
                (unsigned)m.size);
    }
out:
    pg__zero(&c->work.dl, sizeof(c->work.dl));
    if (rc != NU_OK)
        pg__log(c, PG_LOG_WARN, "firmware fetch: %s", nu_err_name(rc));
    return rc;
}

int pg_core_firmware_ready(const struct pg_core *c)
{
    return c && c->job.loaded && c->fw_ready;
}
