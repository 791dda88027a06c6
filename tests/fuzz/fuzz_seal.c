/*
 * fuzz_seal — libFuzzer target for nu_seal_open(), the outer layer of a
 * sealed package's secrets (a SealedBox from the cloud, opened in the
 * programmer's KeyStore).
 *
 * Input: byte 0 = AAD length n, then n AAD bytes, then the box. The
 * recipient is the "basic" key of tests/vectors/seal (a published test
 * vector), so the seeds are real boxes that open.
 *
 * Properties:
 *   - a refusal is a documented typed error and releases no plaintext;
 *   - what opens is exactly what an independent opening gives: protobuf-c
 *     reads the same SealedBox fields, plain ECDH + HKDF + AES-GCM from
 *     nu_crypto decrypts them to the same plaintext (so the parser cannot
 *     have authenticated other bytes than it decrypted);
 *   - the same box never opens for another recipient key (no success on
 *     garbage for an authenticated format);
 *   - one input in 64 (by a hash of its bytes): its bytes sealed to the
 *     recipient open again to the same bytes (round trip).
 */
#include "fuzz_common.h"
#include "nu_seal.h"
#include "nu_util.h"

#include "nusec/v1/job.pb-c.h"

#include <string.h>

/* tests/vectors/seal/vectors.txt, vector "basic": a test key, never a real one. */
static const char TEST_VECTOR_RECIPIENT_PRIV[] =
    "1e224a010ede796cc7d2c374ef7de499dded8cbf9d90485eaa1baad54c0e6f54";

static struct nu_p256_key *key, *other_key;
static struct nu_seal_recipient rcpt, other;

/*
 * The recipients' ECDH, as the programmer's KeyStore answers it, remembered
 * per ephemeral point: nu_ecdh_p256 is deterministic, so a point seen again
 * (most mutants keep their seed's ephemeral key) gets the very secret a
 * fresh ECDH would give, and HKDF, AES-GCM and every check of nu_seal_open
 * still run on every input. A scalar multiplication per input was ~85% of
 * this target's time. Every new point, valid or not, goes to nu_ecdh_p256;
 * only its OK answers are kept.
 */
struct fuzz_ecdh_slot {
    uint8_t pub[NU_P256_PUB_LEN];
    uint8_t secret[NU_ECDH_SECRET_LEN];
    int used;
};
struct fuzz_ecdh_memo {
    struct nu_p256_key *key;
    struct fuzz_ecdh_slot slot[64];
};
static struct fuzz_ecdh_memo memo_rcpt, memo_other;
static unsigned long ecdh_real, ecdh_memo; /* FUZZ_VERBOSE: hit rate */

static int fuzz__ecdh(void *ctx, const uint8_t peer_pub[NU_P256_PUB_LEN],
                      uint8_t out_secret[NU_ECDH_SECRET_LEN])
{
    struct fuzz_ecdh_memo *m = ctx;
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < NU_P256_PUB_LEN; i++)
        h = (h ^ peer_pub[i]) * 16777619u;
    struct fuzz_ecdh_slot *s = &m->slot[h % 64];
    if (s->used && memcmp(s->pub, peer_pub, NU_P256_PUB_LEN) == 0) {
        memcpy(out_secret, s->secret, NU_ECDH_SECRET_LEN);
        ecdh_memo++;
        return NU_OK;
    }
    ecdh_real++;
    int rc = nu_ecdh_p256(m->key, peer_pub, out_secret);
    if (rc == NU_OK) {
        memcpy(s->pub, peer_pub, NU_P256_PUB_LEN);
        memcpy(s->secret, out_secret, NU_ECDH_SECRET_LEN);
        s->used = 1;
    }
    return rc;
}

static void fuzz__report(void)
{
    if (getenv("FUZZ_VERBOSE"))
        fprintf(stderr, "fuzz_seal: ECDH %lu computed, %lu remembered\n", ecdh_real, ecdh_memo);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    uint8_t d[NU_P256_PRIV_LEN];
    size_t n = 0;
    (void)argc, (void)argv;
    if (nu_hex_decode(TEST_VECTOR_RECIPIENT_PRIV, d, sizeof(d), &n) || n != sizeof(d) ||
        nu_p256_key_import_priv(d, &key) || nu_seal_recipient_from_key(key, &rcpt) ||
        nu_p256_key_generate(&other_key) || nu_seal_recipient_from_key(other_key, &other))
        FUZZ_DIE("setup");
    memo_rcpt.key = key;
    memo_other.key = other_key;
    rcpt.ctx = &memo_rcpt;
    rcpt.ecdh = fuzz__ecdh;
    other.ctx = &memo_other;
    other.ecdh = fuzz__ecdh;
    atexit(fuzz__report);
    return 0;
}

/* Open the box again without nu_seal's parser: protobuf-c + nu_crypto. */
static void fuzz__independent(const uint8_t *aad, size_t aad_len, const uint8_t *box,
                              size_t box_len, const uint8_t *plain, size_t plain_len)
{
    Nusec__V1__SealedBox *sb = nusec__v1__sealed_box__unpack(NULL, box_len, box);
    uint8_t z[NU_ECDH_SECRET_LEN], salt[2 * NU_P256_PUB_LEN], k[32];
    if (!sb || sb->version != 1 || sb->ephemeral_pubkey.len != NU_P256_PUB_LEN ||
        sb->nonce.len != NU_GCM_NONCE_LEN || sb->ciphertext.len != plain_len + NU_GCM_TAG_LEN)
        FUZZ_DIE("opened a box protobuf-c reads otherwise");
    memcpy(salt, sb->ephemeral_pubkey.data, NU_P256_PUB_LEN);
    memcpy(salt + NU_P256_PUB_LEN, rcpt.pub, NU_P256_PUB_LEN);
    uint8_t *out = malloc(plain_len + 1);
    if (!out || fuzz__ecdh(&memo_rcpt, sb->ephemeral_pubkey.data, z) ||
        nu_hkdf_sha256(z, sizeof(z), salt, sizeof(salt), (const uint8_t *)NU_SEAL_INFO,
                       strlen(NU_SEAL_INFO), k, sizeof(k)) ||
        nu_aes256gcm_decrypt(k, sb->nonce.data, aad, aad_len, sb->ciphertext.data, plain_len, out,
                             sb->ciphertext.data + plain_len) ||
        memcmp(out, plain, plain_len) != 0)
        FUZZ_DIE("independent opening disagrees");
    free(out);
    nusec__v1__sealed_box__free_unpacked(sb, NULL);
}

static void fuzz__roundtrip(const uint8_t *aad, size_t aad_len, const uint8_t *msg, size_t len)
{
    uint8_t *box = NULL, *plain = NULL;
    size_t box_len = 0, plain_len = 0;
    int rc = nu_seal(rcpt.pub, aad, aad_len, msg, len, &box, &box_len);
    if (rc != NU_OK)
        FUZZ_DIE("seal refused %zu bytes: %s", len, nu_err_name(rc));
    rc = nu_seal_open(&rcpt, aad, aad_len, box, box_len, &plain, &plain_len);
    if (rc != NU_OK || plain_len != len || (len && memcmp(plain, msg, len) != 0))
        FUZZ_DIE("round trip: %s", nu_err_name(rc));
    nu_seal_free(plain, plain_len);
    free(box);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int refusals[] = {NU_ERR_DECODE, NU_ERR_NOT_SUPPORTED, NU_ERR_TAMPERED,
                                   NU_ERR_TOO_LARGE, -1};
    if (size < 1)
        return 0;
    size_t aad_len = data[0] < size - 1 ? data[0] : size - 1;
    const uint8_t *aad = data + 1, *box = data + 1 + aad_len;
    size_t box_len = size - 1 - aad_len;
    uint8_t *plain = NULL;
    size_t plain_len = 0;

    int rc = nu_seal_open(&rcpt, aad, aad_len, box, box_len, &plain, &plain_len);
    if (rc == NU_OK) {
        if (!plain || plain_len + NU_GCM_TAG_LEN > box_len)
            FUZZ_DIE("OK with %zu plaintext bytes from a %zu-byte box", plain_len, box_len);
        fuzz__independent(aad, aad_len, box, box_len, plain, plain_len);
        nu_seal_free(plain, plain_len);
        uint8_t *p2 = NULL;
        size_t l2 = 0;
        if (nu_seal_open(&other, aad, aad_len, box, box_len, &p2, &l2) != NU_ERR_TAMPERED || p2)
            FUZZ_DIE("a box opened for another key");
    } else {
        if (plain)
            FUZZ_DIE("refusal %s left plaintext", nu_err_name(rc));
        fuzz_expect("nu_seal_open", rc, refusals);
    }
    /* One input in 64 by a hash of all its bytes: the first byte alone was
     * 0 in the seeds and most of their mutants, so the round trip (three
     * scalar multiplications) ran on nearly every input. */
    uint32_t h = 2166136261u;
    for (size_t i = 0; i < size; i++)
        h = (h ^ data[i]) * 16777619u;
    if ((h & 63) == 0)
        fuzz__roundtrip(aad, aad_len, box, box_len);
    return 0;
}
