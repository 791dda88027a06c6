/*
 * nu_seal — ECDH P-256 + HKDF-SHA256 + AES-256-GCM boxes. The construction and
 * the wire format are specified in nu_seal.h; every primitive comes from
 * nu_crypto (wolfCrypt).
 */
#define NU_SEAL_TEST_API /* this file defines the test entry point */
#include "nu_seal.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include "nusec/v1/job.pb-c.h"

#include <stdlib.h>
#include <string.h>

#define SEAL__SALT_LEN (2 * NU_P256_PUB_LEN)

/* K = HKDF-SHA256(Z, salt = E || R, info = "nusec/v1 seal"), 32 bytes. */
static int seal__derive(const uint8_t secret[NU_ECDH_SECRET_LEN],
                        const uint8_t eph_pub[NU_P256_PUB_LEN],
                        const uint8_t recipient_pub[NU_P256_PUB_LEN],
                        uint8_t out_key[NU_AES256_KEY_LEN])
{
    uint8_t salt[SEAL__SALT_LEN];
    memcpy(salt, eph_pub, NU_P256_PUB_LEN);
    memcpy(salt + NU_P256_PUB_LEN, recipient_pub, NU_P256_PUB_LEN);
    static const char info[] = NU_SEAL_INFO;
    return nu_hkdf_sha256(secret, NU_ECDH_SECRET_LEN, salt, sizeof(salt), (const uint8_t *)info,
                          sizeof(info) - 1, out_key, NU_AES256_KEY_LEN);
}

static int seal__check_args(const uint8_t *recipient_pub, const uint8_t *aad, size_t aad_len,
                            const uint8_t *plaintext, size_t len, uint8_t **out_box,
                            size_t *out_box_len)
{
    if (!recipient_pub || !out_box || !out_box_len || (!aad && aad_len) || (!plaintext && len))
        return NU_ERR_INVALID_ARG;
    *out_box = NULL;
    *out_box_len = 0;
    if (len > NU_SEAL_MAX_PLAINTEXT || aad_len > NU_SEAL_MAX_AAD)
        return NU_ERR_TOO_LARGE;
    /* The recipient key comes from enrollment data: refuse a bad point early. */
    return nu_p256_pub_check(recipient_pub);
}

/* Serialize the box fields into a fresh heap buffer. */
static int seal__pack(const uint8_t eph_pub[NU_P256_PUB_LEN], const uint8_t nonce[NU_GCM_NONCE_LEN],
                      uint8_t *ct, size_t ct_len, uint8_t **out_box, size_t *out_box_len)
{
    Nusec__V1__SealedBox box = NUSEC__V1__SEALED_BOX__INIT;
    box.version = NU_SEAL_VERSION;
    box.ephemeral_pubkey.data = (uint8_t *)eph_pub;
    box.ephemeral_pubkey.len = NU_P256_PUB_LEN;
    box.nonce.data = (uint8_t *)nonce;
    box.nonce.len = NU_GCM_NONCE_LEN;
    box.ciphertext.data = ct;
    box.ciphertext.len = ct_len;
    size_t size = nusec__v1__sealed_box__get_packed_size(&box);
    if (size > NU_SEAL_MAX_BOX)
        return NU_ERR_TOO_LARGE; /* unreachable with NU_SEAL_MAX_PLAINTEXT; kept as a guard */
    uint8_t *buf = malloc(size);
    if (!buf)
        return NU_ERR_NOMEM;
    if (nusec__v1__sealed_box__pack(&box, buf) != size) {
        free(buf);
        return NU_ERR_INTERNAL;
    }
    *out_box = buf;
    *out_box_len = size;
    return NU_OK;
}

/* The whole seal with a given ephemeral key and nonce (args already checked). */
static int seal__with(struct nu_p256_key *eph, const uint8_t nonce[NU_GCM_NONCE_LEN],
                      const uint8_t recipient_pub[NU_P256_PUB_LEN], const uint8_t *aad,
                      size_t aad_len, const uint8_t *plaintext, size_t len, uint8_t **out_box,
                      size_t *out_box_len)
{
    uint8_t eph_pub[NU_P256_PUB_LEN];
    uint8_t secret[NU_ECDH_SECRET_LEN];
    uint8_t key[NU_AES256_KEY_LEN];
    uint8_t *ct = NULL;
    int rc = nu_p256_key_pub(eph, eph_pub);
    if (rc != NU_OK)
        goto out;
    rc = nu_ecdh_p256(eph, recipient_pub, secret);
    if (rc != NU_OK)
        goto out;
    rc = seal__derive(secret, eph_pub, recipient_pub, key);
    if (rc != NU_OK)
        goto out;
    ct = malloc(len + NU_GCM_TAG_LEN);
    if (!ct) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    rc = nu_aes256gcm_encrypt(key, nonce, aad, aad_len, plaintext, len, ct, ct + len);
    if (rc != NU_OK)
        goto out;
    rc = seal__pack(eph_pub, nonce, ct, len + NU_GCM_TAG_LEN, out_box, out_box_len);
out:
    free(ct);
    nu_zero(key, sizeof(key));
    nu_zero(secret, sizeof(secret));
    return rc;
}

int nu_seal(const uint8_t recipient_pub[NU_P256_PUB_LEN], const uint8_t *aad, size_t aad_len,
            const uint8_t *plaintext, size_t len, uint8_t **out_box, size_t *out_box_len)
{
    int rc = seal__check_args(recipient_pub, aad, aad_len, plaintext, len, out_box, out_box_len);
    if (rc != NU_OK)
        return rc;
    uint8_t nonce[NU_GCM_NONCE_LEN];
    struct nu_p256_key *eph = NULL;
    rc = nu_random(nonce, sizeof(nonce));
    if (rc != NU_OK)
        return rc;
    rc = nu_p256_key_generate(&eph);
    if (rc != NU_OK)
        return rc;
    rc = seal__with(eph, nonce, recipient_pub, aad, aad_len, plaintext, len, out_box, out_box_len);
    nu_p256_key_destroy(eph); /* the ephemeral private key is wiped here */
    return rc;
}

int nu_seal_deterministic_for_tests(const uint8_t recipient_pub[NU_P256_PUB_LEN],
                                    const uint8_t ephemeral_priv[NU_P256_PRIV_LEN],
                                    const uint8_t nonce[NU_GCM_NONCE_LEN], const uint8_t *aad,
                                    size_t aad_len, const uint8_t *plaintext, size_t len,
                                    uint8_t **out_box, size_t *out_box_len)
{
    if (!ephemeral_priv || !nonce)
        return NU_ERR_INVALID_ARG;
    int rc = seal__check_args(recipient_pub, aad, aad_len, plaintext, len, out_box, out_box_len);
    if (rc != NU_OK)
        return rc;
    struct nu_p256_key *eph = NULL;
    rc = nu_p256_key_import_priv(ephemeral_priv, &eph);
    if (rc != NU_OK)
        return rc;
    rc = seal__with(eph, nonce, recipient_pub, aad, aad_len, plaintext, len, out_box, out_box_len);
    nu_p256_key_destroy(eph);
    return rc;
}

/* Field checks on a parsed box: everything but the cryptography. */
static int open__check_box(const Nusec__V1__SealedBox *box)
{
    if (box->version == 0)
        return NU_ERR_DECODE; /* field missing: not a v1 box at all */
    if (box->version != NU_SEAL_VERSION)
        return NU_ERR_NOT_SUPPORTED;
    if (box->ephemeral_pubkey.len != NU_P256_PUB_LEN || box->nonce.len != NU_GCM_NONCE_LEN ||
        box->ciphertext.len < NU_GCM_TAG_LEN)
        return NU_ERR_DECODE;
    /* Reject invalid and identity points before they reach the key holder. */
    return nu_p256_pub_check(box->ephemeral_pubkey.data);
}

static int open__check_args(const struct nu_seal_recipient *recipient, const uint8_t *aad,
                            size_t aad_len, const uint8_t *box, size_t box_len,
                            uint8_t **out_plaintext, size_t *out_len)
{
    if (!recipient || !recipient->ecdh || (!aad && aad_len) || !box || !out_plaintext || !out_len)
        return NU_ERR_INVALID_ARG;
    *out_plaintext = NULL;
    *out_len = 0;
    if (box_len > NU_SEAL_MAX_BOX || aad_len > NU_SEAL_MAX_AAD)
        return NU_ERR_TOO_LARGE;
    if (box_len == 0)
        return NU_ERR_DECODE;
    return NU_OK;
}

/* Derive K for a checked box and decrypt into a fresh buffer. */
static int open__decrypt(const struct nu_seal_recipient *recipient, const Nusec__V1__SealedBox *box,
                         const uint8_t *aad, size_t aad_len, uint8_t **out_plaintext,
                         size_t *out_len)
{
    uint8_t secret[NU_ECDH_SECRET_LEN];
    uint8_t key[NU_AES256_KEY_LEN];
    size_t len = box->ciphertext.len - NU_GCM_TAG_LEN;
    uint8_t *pt = NULL;
    int rc = recipient->ecdh(recipient->ctx, box->ephemeral_pubkey.data, secret);
    if (rc != NU_OK)
        goto out;
    rc = seal__derive(secret, box->ephemeral_pubkey.data, recipient->pub, key);
    if (rc != NU_OK)
        goto out;
    pt = malloc(len ? len : 1);
    if (!pt) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    rc = nu_aes256gcm_decrypt(key, box->nonce.data, aad, aad_len, box->ciphertext.data, len, pt,
                              box->ciphertext.data + len);
    if (rc != NU_OK)
        goto out;
    *out_plaintext = pt;
    *out_len = len;
    pt = NULL;
out:
    nu_seal_free(pt, len); /* only on failure; decrypt already zeroed it */
    nu_zero(key, sizeof(key));
    nu_zero(secret, sizeof(secret));
    return rc;
}

int nu_seal_open(const struct nu_seal_recipient *recipient, const uint8_t *aad, size_t aad_len,
                 const uint8_t *box, size_t box_len, uint8_t **out_plaintext, size_t *out_len)
{
    int rc = open__check_args(recipient, aad, aad_len, box, box_len, out_plaintext, out_len);
    if (rc != NU_OK)
        return rc;
    /* Size is bounded above, so protobuf-c allocates at most ~box_len. */
    Nusec__V1__SealedBox *msg = nusec__v1__sealed_box__unpack(NULL, box_len, box);
    if (!msg)
        return NU_ERR_DECODE;
    rc = open__check_box(msg);
    if (rc == NU_OK)
        rc = open__decrypt(recipient, msg, aad, aad_len, out_plaintext, out_len);
    if (rc != NU_OK)
        nu_debug("seal: open refused: %s", nu_err_name(rc));
    nusec__v1__sealed_box__free_unpacked(msg, NULL);
    return rc;
}

void nu_seal_free(void *buf, size_t len)
{
    if (!buf)
        return;
    nu_zero(buf, len);
    free(buf);
}

static int seal__key_ecdh(void *ctx, const uint8_t peer_pub[NU_P256_PUB_LEN],
                          uint8_t out_secret[NU_ECDH_SECRET_LEN])
{
    return nu_ecdh_p256(ctx, peer_pub, out_secret);
}

int nu_seal_recipient_from_key(struct nu_p256_key *key, struct nu_seal_recipient *out)
{
    if (!key || !out)
        return NU_ERR_INVALID_ARG;
    out->ctx = key;
    out->ecdh = seal__key_ecdh;
    return nu_p256_key_pub(key, out->pub);
}
