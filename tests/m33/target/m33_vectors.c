/*
 * tests/vectors/seal/ on the M33: one nu_seal vector through the core's
 * protobuf codec (pg_pb, decode and re-encode, byte for byte) and through the
 * crypto HAL as the core calls it (AES-256-GCM with the vector's key,
 * seal_open with the vector's ECDH output, SHA-256 state carried across
 * updates), every input copied to an odd address first so that an alignment
 * or byte-order slip in the core's code or the HAL path fails here.
 * Test-only; the ECDH result is the vector's own Z (no key math here).
 */
#include "m33_rpc.h"
#include "m33_target.h"
#include "hal.h"
#include "pg_pb.h"

#include <stddef.h>
#include <string.h>

struct v__box {
    uint32_t version;
    struct pg_bytes epub, nonce, ct;
};

enum { V_RPUB, V_EPUB, V_Z, V_KEY, V_NONCE, V_AAD, V_PT, V_CT, V_BOX, V_N };

static uint8_t v__mem[V_N][4097];
static const uint8_t *v__f[V_N];
static size_t v__len[V_N];
static uint8_t v__out[4097], v__box2[4097];

static int v__ecdh(void *ctx, const uint8_t peer[PG_P256_PUB_LEN], uint8_t out[32])
{
    (void)ctx;
    if (v__len[V_EPUB] != PG_P256_PUB_LEN || memcmp(peer, v__f[V_EPUB], PG_P256_PUB_LEN))
        return NU_ERR_CRYPTO;
    memcpy(out, v__f[V_Z], 32);
    return NU_OK;
}

static int v__decode(uint32_t *step)
{
    static const struct pg_pb_desc d[] = {
        {1, PG_PB_U32, offsetof(struct v__box, version), 0, 0, 0},
        {2, PG_PB_BYTES, offsetof(struct v__box, epub), 65, 0, 0},
        {3, PG_PB_BYTES, offsetof(struct v__box, nonce), 12, 0, 0},
        {4, PG_PB_BYTES, offsetof(struct v__box, ct), 4096, 0, 0},
    };
    struct v__box b;
    struct pg_pb_writer w;
    memset(&b, 0, sizeof(b));
    *step = 1;
    if (pg_pb_decode(v__f[V_BOX], v__len[V_BOX], d, 4, &b) != NU_OK || b.version != 1 ||
        b.epub.len != v__len[V_EPUB] || memcmp(b.epub.p, v__f[V_EPUB], b.epub.len) ||
        b.nonce.len != v__len[V_NONCE] || memcmp(b.nonce.p, v__f[V_NONCE], b.nonce.len) ||
        b.ct.len != v__len[V_CT] || memcmp(b.ct.p, v__f[V_CT], b.ct.len))
        return NU_ERR_DECODE;
    *step = 2;
    pg_pb_writer_init(&w, v__box2 + 1, sizeof(v__box2) - 1);
    pg_pb_put_u64(&w, 1, b.version);
    pg_pb_put_bytes(&w, 2, b.epub.p, b.epub.len);
    pg_pb_put_bytes(&w, 3, b.nonce.p, b.nonce.len);
    pg_pb_put_bytes(&w, 4, b.ct.p, b.ct.len);
    if (w.err || w.len != v__len[V_BOX] || memcmp(v__box2 + 1, v__f[V_BOX], w.len))
        return NU_ERR_DECODE;
    return NU_OK;
}

static int v__crypto(const struct pg_hal *hal, uint32_t *step)
{
    size_t ptl = v__len[V_PT], n = 0;
    *step = 3;
    if (v__len[V_CT] != ptl + 16 || v__len[V_KEY] != 32 || v__len[V_NONCE] != 12)
        return NU_ERR_INVALID_ARG;
    int rc = pg_gcm_decrypt(hal, v__f[V_KEY], v__f[V_NONCE], v__f[V_AAD], v__len[V_AAD],
                                  v__f[V_CT], ptl, v__out + 1, v__f[V_CT] + ptl);
    if (rc != NU_OK || memcmp(v__out + 1, v__f[V_PT], ptl))
        return rc ? rc : NU_ERR_CRYPTO;
    *step = 4;
    memset(v__out, 0, sizeof(v__out));
    rc = pg_seal_open(hal, v__ecdh, NULL, v__f[V_RPUB], v__f[V_AAD], v__len[V_AAD], v__f[V_BOX],
                      v__len[V_BOX], v__out + 1, sizeof(v__out) - 1, &n);
    if (rc != NU_OK || n != ptl || memcmp(v__out + 1, v__f[V_PT], ptl))
        return rc ? rc : NU_ERR_CRYPTO;
    *step = 5; /* the last tag byte flipped: refused */
    memcpy(v__box2 + 1, v__f[V_BOX], v__len[V_BOX]);
    v__box2[v__len[V_BOX]] ^= 0x80;
    rc = pg_seal_open(hal, v__ecdh, NULL, v__f[V_RPUB], v__f[V_AAD], v__len[V_AAD], v__box2 + 1,
                      v__len[V_BOX], v__out + 1, sizeof(v__out) - 1, &n);
    if (rc != NU_ERR_TAMPERED)
        return NU_ERR_CRYPTO;
    *step = 6; /* SHA-256 state carried over odd-sized updates = one shot */
    struct pg_sha256 a, b;
    uint8_t da[32], db[32];
    size_t half = v__len[V_BOX] / 3;
    rc = pg_sha256_init(hal, &a);
    if (rc == NU_OK)
        rc = pg_sha256_update(hal, &a, v__f[V_BOX], half);
    if (rc == NU_OK)
        rc = pg_sha256_update(hal, &a, v__f[V_BOX] + half, v__len[V_BOX] - half);
    if (rc == NU_OK)
        rc = pg_sha256_final(hal, &a, da);
    if (rc == NU_OK)
        rc = pg_sha256_init(hal, &b);
    if (rc == NU_OK)
        rc = pg_sha256_update(hal, &b, v__f[V_BOX], v__len[V_BOX]);
    if (rc == NU_OK)
        rc = pg_sha256_final(hal, &b, db);
    if (rc != NU_OK || memcmp(da, db, 32))
        return rc ? rc : NU_ERR_CRYPTO;
    *step = 0;
    return NU_OK;
}

int m33_seal_vector(const struct pg_hal *hal, struct rpc_msg *in, struct rpc_msg *out);

int m33_seal_vector(const struct pg_hal *hal, struct rpc_msg *in, struct rpc_msg *out)
{
    uint32_t step = 0;
    int rc = NU_OK;
    for (int i = 0; i < V_N; i++) {
        size_t n = 0;
        const uint8_t *p = rpc_get_bytes(in, &n);
        if (n > sizeof(v__mem[i]) - 1)
            rc = NU_ERR_TOO_LARGE;
        else if (n)
            memcpy(v__mem[i] + 1, p, n); /* odd address on purpose */
        v__f[i] = v__mem[i] + 1;
        v__len[i] = n;
    }
    if (rc == NU_OK)
        rc = v__decode(&step);
    if (rc == NU_OK)
        rc = v__crypto(hal, &step);
    rpc_put_u32(out, step);
    return rc;
}
