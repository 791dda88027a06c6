/* pg_package: accept a sealed production package (proto/README.md "Sealed package"). */
#include "pg_int.h"

#include <stdio.h>
#include <string.h>

/* Job record blob: version, closed, package id, created_at (big-endian). */
#define PKG__RECORD_LEN 26
#define PKG__RECORD_VERSION 1

static int pkg__record_name(const char *job_id, char *out, size_t cap)
{
    int n = snprintf(out, cap, "%s%s", PG_BLOB_JOB_PREFIX, job_id);
    return n < 0 || (size_t)n >= cap ? NU_ERR_TOO_LARGE : NU_OK;
}

int pg__job_record_get(struct pg_core *c, const char *job_id, struct pg__job_record *out)
{
    char name[PG_ID_MAX + 8];
    uint8_t b[PKG__RECORD_LEN];
    size_t len = 0;
    memset(out, 0, sizeof(*out));
    int rc = pkg__record_name(job_id, name, sizeof(name));
    if (rc == NU_OK)
        rc = pg_ks_blob_get(c->hal, name, b, sizeof(b), &len);
    if (rc != NU_OK)
        return rc;
    if (len != sizeof(b) || b[0] != PKG__RECORD_VERSION)
        return NU_ERR_DECODE;
    out->closed = b[1] != 0;
    memcpy(out->package_id, b + 2, 16);
    for (int i = 0; i < 8; i++)
        out->created_at_ms = (out->created_at_ms << 8) | b[18 + i];
    return NU_OK;
}

int pg__job_record_put(struct pg_core *c, const char *job_id, const struct pg__job_record *r)
{
    char name[PG_ID_MAX + 8];
    uint8_t b[PKG__RECORD_LEN];
    b[0] = PKG__RECORD_VERSION;
    b[1] = r->closed ? 1 : 0;
    memcpy(b + 2, r->package_id, 16);
    for (int i = 0; i < 8; i++)
        b[18 + i] = (uint8_t)(r->created_at_ms >> (56 - 8 * i));
    int rc = pkg__record_name(job_id, name, sizeof(name));
    return rc ? rc : pg_ks_blob_put(c->hal, name, b, sizeof(b));
}

/* The facts of a package, decoded and checked, before anything changes. */
struct pkg__facts {
    struct pg_msg_sealed_pkg sp;
    struct pg_msg_summary sum;
    char job_id[PG_ID_MAX + 1];
    struct pg__job_record rec;
    int have_rec;
};

static int pkg__verify_signature(struct pg_core *c, const struct pg_msg_sealed_pkg *sp)
{
    uint8_t digest[32];
    int rc = pg__sha256(c, sp->summary.p, sp->summary.len, sp->sealed.p, sp->sealed.len, NULL, 0,
                        digest);
    if (rc == NU_OK)
        rc = pg_p256_verify(c->hal, c->pin_package, digest, sp->signature.p, sp->signature.len);
    /* A malformed signature is as bad as a wrong one for the operator. */
    return rc == NU_ERR_DECODE ? NU_ERR_BAD_SIGNATURE : rc;
}

/* Replay: a closed job, or an older package than the one already accepted. */
static int pkg__replay_check(struct pg_core *c, struct pkg__facts *f)
{
    int rc = pg__job_record_get(c, f->job_id, &f->rec);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK;
    if (rc != NU_OK)
        return rc;
    f->have_rec = 1;
    if (f->rec.closed)
        return NU_ERR_REPLAY;
    int same = f->sum.package_id.len == 16 && pg__ct_eq(f->rec.package_id, f->sum.package_id.p, 16);
    if (!same && f->sum.created_at_ms <= f->rec.created_at_ms)
        return NU_ERR_REPLAY;
    return NU_OK;
}

static int pkg__clear_checks(struct pg_core *c, const uint8_t *pkg, size_t len,
                             struct pkg__facts *f)
{
    struct pg_bytes all = {pkg, len};
    int rc = pg_msg_sealed_pkg_decode(all, &f->sp);
    if (rc != NU_OK)
        return rc;
    if (!f->sp.summary.len || !f->sp.sealed.len || !f->sp.signature.len)
        return NU_ERR_DECODE;
    if ((rc = pkg__verify_signature(c, &f->sp)) != NU_OK)
        return rc;
    /* Signed by the OEM from here on: still parsed defensively. */
    if ((rc = pg_msg_summary_decode(f->sp.summary, &f->sum)) != NU_OK)
        return rc;
    if (f->sum.format != PG_PACKAGE_FORMAT)
        return NU_ERR_NOT_SUPPORTED;
    if (pg_msg_id_copy(f->sum.job_id, f->job_id) != NU_OK || f->sum.package_id.len != 16 ||
        f->sum.limit == 0)
        return NU_ERR_DECODE;
    if (!pg_msg_eq(f->sum.programmer_id, c->id))
        return NU_ERR_WRONG_PROGRAMMER;
    uint64_t now = pg_now_ms(c->hal);
    if (now == 0)
        return NU_ERR_NOT_SUPPORTED; /* no clock: expiry cannot be checked */
    if (f->sum.expires_at_ms <= now)
        return NU_ERR_EXPIRED;
    return pkg__replay_check(c, f);
}

/* Secrets must say what the summary says, and have the right shapes. */
static int pkg__secrets_check(const struct pkg__facts *f, const struct pg_msg_secrets *s)
{
    if (!pg_msg_eq(s->job_id, f->job_id) || s->limit != f->sum.limit ||
        s->expires_at_ms != f->sum.expires_at_ms)
        return NU_ERR_TAMPERED;
    if (s->token.len == 0 || s->token.len > PG_TOKEN_MAX || s->firmware_key.len != 32 ||
        s->rotpk_hash.len != 32 || s->firmware_digest.len != 32 || s->firmware_size == 0 ||
        s->n_chain == 0 || s->n_chain > PG_CHAIN_MAX)
        return NU_ERR_DECODE;
    size_t total = 0;
    for (size_t i = 0; i < s->n_chain; i++)
        total += s->chain[i].len;
    return total <= PG_CHAIN_BYTES ? NU_OK : NU_ERR_TOO_LARGE;
}

static void pkg__job_fill(struct pg_core *c, const struct pkg__facts *f,
                          const struct pg_msg_secrets *s)
{
    struct pg_job *j = &c->job;
    pg__zero(j, sizeof(*j));
    memcpy(j->job_id, f->job_id, sizeof(j->job_id));
    if (pg_msg_id_copy(f->sum.firmware, j->firmware) != NU_OK)
        j->firmware[0] = '\0';
    memcpy(j->package_id, f->sum.package_id.p, 16);
    j->created_at_ms = f->sum.created_at_ms;
    j->expires_at_ms = f->sum.expires_at_ms;
    j->limit = f->sum.limit;
    memcpy(j->token, s->token.p, s->token.len);
    j->token_len = s->token.len;
    memcpy(j->fw_key, s->firmware_key.p, 32);
    memcpy(j->rotpk_hash, s->rotpk_hash.p, 32);
    memcpy(j->fw_digest, s->firmware_digest.p, 32);
    j->fw_size = s->firmware_size;
    size_t off = 0;
    for (size_t i = 0; i < s->n_chain; i++) {
        memcpy(j->chain + off, s->chain[i].p, s->chain[i].len);
        j->chain_der[i].der = j->chain + off;
        j->chain_der[i].len = s->chain[i].len;
        off += s->chain[i].len;
    }
    j->n_chain = s->n_chain;
    j->loaded = 1;
}

/* Keep the sealed package in flash: [u32 len BE][bytes]. */
static int pkg__store(struct pg_core *c, const uint8_t *pkg, size_t len)
{
    uint32_t cap = 0;
    uint8_t hdr[4];
    int rc = pg_flash_size(c->hal, PG_FLASH_PACKAGE, &cap);
    if (rc == NU_OK && (uint64_t)len + 4 > cap)
        rc = NU_ERR_TOO_LARGE;
    pg__be32(hdr, (uint32_t)len);
    if (rc == NU_OK)
        rc = pg_flash_erase(c->hal, PG_FLASH_PACKAGE);
    if (rc == NU_OK)
        rc = pg_flash_write(c->hal, PG_FLASH_PACKAGE, 4, pkg, len);
    if (rc == NU_OK) /* length last: a torn store reads as no package */
        rc = pg_flash_write(c->hal, PG_FLASH_PACKAGE, 0, hdr, 4);
    return rc;
}

static int pkg__load(struct pg_core *c, const uint8_t *pkg, size_t len, int store)
{
    struct pkg__facts f;
    struct pg_msg_secrets s;
    uint8_t rpub[PG_P256_PUB_LEN];
    size_t plain_len = 0;
    memset(&f, 0, sizeof(f));
    memset(&s, 0, sizeof(s));
    int rc = pkg__clear_checks(c, pkg, len, &f);
    if (rc == NU_OK)
        rc = pg_ks_pubkey(c->hal, PG_KEY_PACKAGE, rpub);
    if (rc != NU_OK)
        goto out;
    rc = pg_seal_open(c->hal, pg__ks_ecdh_package, c, rpub, f.sp.summary.p, f.sp.summary.len,
                      f.sp.sealed.p, f.sp.sealed.len, c->work.scratch, sizeof(c->work.scratch),
                      &plain_len);
    if (rc == NU_ERR_DECODE)
        rc = NU_ERR_TAMPERED;
    if (rc != NU_OK)
        goto out;
    struct pg_bytes plain = {c->work.scratch, plain_len};
    if ((rc = pg_msg_secrets_decode(plain, &s)) != NU_OK ||
        (rc = pkg__secrets_check(&f, &s)) != NU_OK)
        goto out;
    if (store && (rc = pkg__store(c, pkg, len)) != NU_OK)
        goto out;
    struct pg__job_record rec = {0};
    memcpy(rec.package_id, f.sum.package_id.p, 16);
    rec.created_at_ms = f.sum.created_at_ms;
    if ((rc = pg__job_record_put(c, f.job_id, &rec)) != NU_OK)
        goto out;
    int same_job = c->job.loaded && !strcmp(c->job.job_id, f.job_id);
    pkg__job_fill(c, &f, &s);
    if (!same_job)
        c->fw_ready = 0;
    pg__log(c, PG_LOG_INFO, "package accepted: job %s, limit %u", f.job_id, (unsigned)f.sum.limit);
out:
    pg__zero(c->work.scratch, sizeof(c->work.scratch));
    pg__zero(&s, sizeof(s));
    return rc;
}

int pg_core_package_load(struct pg_core *c, const uint8_t *pkg, size_t len)
{
    if (!c || !pkg || len == 0)
        return NU_ERR_INVALID_ARG;
    if (len > PG_PACKAGE_MAX)
        return NU_ERR_TOO_LARGE;
    if (!c->enrolled)
        return NU_ERR_STATE;
    if (atomic_load(&c->producing))
        return NU_ERR_BUSY;
    int rc = pkg__load(c, pkg, len, 1);
    if (rc != NU_OK)
        pg__log(c, PG_LOG_WARN, "package refused: %s", nu_err_name(rc));
    return rc;
}

void pg__package_reload(struct pg_core *c)
{
    uint8_t hdr[4];
    uint32_t len = 0;
    uint8_t *buf = c->pkg_box; /* idle at init */
    if (pg_flash_read(c->hal, PG_FLASH_PACKAGE, 0, hdr, 4) != NU_OK)
        return;
    len = ((uint32_t)hdr[0] << 24) | ((uint32_t)hdr[1] << 16) | ((uint32_t)hdr[2] << 8) | hdr[3];
    if (len == 0 || len > PG_PACKAGE_MAX)
        return; /* erased (0xffffffff) or nothing */
    int rc = pg_flash_read(c->hal, PG_FLASH_PACKAGE, 4, buf, len);
    if (rc == NU_OK)
        rc = pkg__load(c, buf, len, 0);
    pg__zero(buf, len);
    if (rc != NU_OK)
        pg__log(c, PG_LOG_INFO, "stored package not reloaded: %s", nu_err_name(rc));
}
