#include "station_pkg.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_paths.h"
#include "nu_util.h"

#include "nusec/v1/job.pb-c.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

/* A borrowed slice of the input. */
struct pkg__span {
    const uint8_t *p;
    size_t len;
};

/* Read a base-128 varint at buf[*pos]; at most 10 bytes, no overflow. */
static int pkg__varint(const uint8_t *buf, size_t len, size_t *pos, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; shift < 64; shift += 7) {
        if (*pos >= len)
            return NU_ERR_DECODE;
        uint8_t b = buf[(*pos)++];
        if (shift == 63 && b > 1)
            return NU_ERR_DECODE;
        v |= (uint64_t)(b & 0x7f) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return NU_OK;
        }
    }
    return NU_ERR_DECODE;
}

/*
 * The outer SealedPackage: fields 1..3, length-delimited, each exactly once,
 * nothing else. Allocates nothing.
 */
static int pkg__split(const uint8_t *buf, size_t len, struct pkg__span out[3])
{
    memset(out, 0, 3 * sizeof(*out));
    int seen[3] = {0, 0, 0};
    size_t pos = 0;
    while (pos < len) {
        uint64_t tag = 0, flen = 0;
        if (pkg__varint(buf, len, &pos, &tag) || (tag & 7) != 2)
            return NU_ERR_DECODE;
        uint64_t field = tag >> 3;
        if (field < 1 || field > 3 || seen[field - 1])
            return NU_ERR_DECODE;
        if (pkg__varint(buf, len, &pos, &flen) || flen > len - pos)
            return NU_ERR_DECODE;
        seen[field - 1] = 1;
        out[field - 1] = (struct pkg__span){buf + pos, (size_t)flen};
        pos += (size_t)flen;
    }
    for (int i = 0; i < 3; i++) {
        if (!seen[i] || out[i].len == 0)
            return NU_ERR_DECODE;
    }
    return NU_OK;
}

/* SHA-256(summary || sealed) checked against the DER signature. */
static int pkg__verify(const struct pkg__span f[3], const uint8_t pub[NU_P256_PUB_LEN])
{
    struct nu_sha256_ctx h;
    uint8_t digest[NU_SHA256_LEN];
    int rc = nu_sha256_init(&h);
    if (rc == NU_OK)
        rc = nu_sha256_update(&h, f[0].p, f[0].len);
    if (rc == NU_OK)
        rc = nu_sha256_update(&h, f[1].p, f[1].len);
    if (rc == NU_OK)
        rc = nu_sha256_final(&h, digest);
    else
        nu_sha256_abort(&h);
    if (rc != NU_OK)
        return rc;
    if (f[2].len > NU_P256_SIG_MAX)
        return NU_ERR_TAMPERED;
    rc = nu_p256_verify(pub, digest, f[2].p, f[2].len);
    /* A malformed signature is as bad as a wrong one. */
    if (rc == NU_ERR_BAD_SIGNATURE || rc == NU_ERR_DECODE)
        return NU_ERR_TAMPERED;
    return rc;
}

/* Copy an identifier field; empty allowed only when `optional`. */
static int pkg__id_copy(const char *in, int optional, char out[NU_ENVELOPE_ID_MAX + 1])
{
    out[0] = '\0';
    if (!in || !in[0])
        return optional ? NU_OK : NU_ERR_DECODE;
    if (nu_envelope_id_check(in) != NU_OK)
        return NU_ERR_DECODE;
    strcpy(out, in); /* length checked by nu_envelope_id_check */
    return NU_OK;
}

static int pkg__summary(const struct pkg__span *s, struct station_pkg *out)
{
    Nusec__V1__PackageSummary *sum = nusec__v1__package_summary__unpack(NULL, s->len, s->p);
    if (!sum)
        return NU_ERR_DECODE;
    int rc = pkg__id_copy(sum->job_id, 0, out->job_id);
    if (rc == NU_OK)
        rc = pkg__id_copy(sum->programmer_id, 0, out->programmer_id);
    if (rc == NU_OK)
        rc = pkg__id_copy(sum->firmware, 1, out->firmware);
    if (rc == NU_OK && sum->package_id.len != STATION_PKG_ID_LEN)
        rc = NU_ERR_DECODE;
    if (rc == NU_OK && sum->limit == 0)
        rc = NU_ERR_DECODE;
    if (rc == NU_OK) {
        memcpy(out->package_id, sum->package_id.data, STATION_PKG_ID_LEN);
        out->limit = sum->limit;
        out->format = sum->format;
        out->expires_at_ms = sum->expires_at_ms;
        out->created_at_ms = sum->created_at_ms;
        out->summary_ok = 1;
    }
    nusec__v1__package_summary__free_unpacked(sum, NULL);
    return rc;
}

int station_pkg_open(const uint8_t *buf, size_t len, const uint8_t signer_pub[NU_P256_PUB_LEN],
                     uint64_t now_ms, struct station_pkg *out)
{
    struct pkg__span f[3];
    if (!out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    if (!buf || !signer_pub)
        return NU_ERR_INVALID_ARG;
    if (len > STATION_PKG_MAX)
        return NU_ERR_TOO_LARGE;
    int rc = nu_sha256(buf, len, out->file_sha256);
    if (rc == NU_OK)
        rc = pkg__split(buf, len, f);
    if (rc != NU_OK)
        return rc;
    out->sealed_len = f[1].len;
    rc = pkg__verify(f, signer_pub);
    if (rc == NU_ERR_TAMPERED) {
        /* Shown to the operator as what it claims, marked TAMPERED. */
        struct station_pkg shown = *out;
        if (pkg__summary(&f[0], &shown) == NU_OK)
            *out = shown;
        return rc;
    }
    if (rc != NU_OK)
        return rc;
    out->intact = 1;
    if ((rc = pkg__summary(&f[0], out)) != NU_OK)
        return rc;
    if (out->format != STATION_PKG_FORMAT)
        return NU_ERR_NOT_SUPPORTED;
    if (out->expires_at_ms <= now_ms)
        return NU_ERR_EXPIRED;
    return NU_OK;
}

int station_pkg_signer_load(const char *dir, uint8_t out_pub[NU_P256_PUB_LEN])
{
    char path[PATH_MAX];
    uint8_t *pem = NULL;
    size_t len = 0;
    int rc = nu_paths_get(dir, NU_PATH_PACKAGE_PUB, path, sizeof(path));
    if (rc == NU_OK)
        rc = nu_file_read(path, NU_PEM_IN_MAX, &pem, &len);
    if (rc == NU_OK)
        rc = nu_p256_pub_from_pem((const char *)pem, len, out_pub);
    free(pem);
    return rc;
}

int station_pkg_read(const char *path, const uint8_t signer_pub[NU_P256_PUB_LEN], uint64_t now_ms,
                     struct station_pkg *out, uint8_t **out_buf, size_t *out_len)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    if (out)
        memset(out, 0, sizeof(*out));
    if (out_buf)
        *out_buf = NULL;
    if (!path || !out)
        return NU_ERR_INVALID_ARG;
    int rc = nu_file_read(path, STATION_PKG_MAX, &buf, &len);
    if (rc != NU_OK)
        return rc;
    rc = station_pkg_open(buf, len, signer_pub, now_ms, out);
    if (out_buf && rc == NU_OK) {
        *out_buf = buf;
        if (out_len)
            *out_len = len;
        buf = NULL;
    }
    free(buf);
    return rc;
}
