/*
 * nu_seal — public-key sealing to one recipient (ECDH P-256 + HKDF-SHA256 +
 * AES-256-GCM), the box that carries a production package's secrets to one
 * programmer's KeyStore package-decryption key (docs/ARCHITECTURE.md).
 *
 * WIRE FORMAT (version 1) — a serialized nusec.v1.SealedBox (proto/nusec/v1/job.proto):
 *
 *   version          = 1
 *   ephemeral_pubkey = E, 65 bytes, 0x04 || X || Y (a fresh P-256 key per box)
 *   nonce            = N, 12 random bytes
 *   ciphertext       = C || T, AES-256-GCM ciphertext (same length as the
 *                      plaintext) followed by the 16-byte tag T
 *
 * with, for recipient public key R (65 bytes) and ephemeral private key e:
 *
 *   Z    = X coordinate of e * R, 32 bytes big-endian (plain ECDH, SEC 1 §3.3.1)
 *   K    = HKDF-SHA256(IKM = Z, salt = E || R (130 bytes),
 *                      info = "nusec/v1 seal" (13 ASCII bytes, no NUL), L = 32)
 *   C, T = AES-256-GCM-Encrypt(key = K, IV = N, AAD = caller's aad, plaintext)
 *
 * The AAD is not in the box: the opener must supply the same bytes (for a
 * package: the serialized PackageSummary), so box and AAD cannot be separated.
 * E and R are bound through the HKDF salt: swapping E, or opening with another
 * key, changes K and fails the tag. A later version will change `info`.
 * The test vectors in tests/vectors/seal/ pin this format byte for byte.
 *
 * Opening never needs the raw private key: the recipient is a callback that
 * performs ECDH (a KeyStore or an HSM), plus its public key R.
 *
 * Boxes are untrusted input: the size is checked before parsing, every field
 * is checked (version, lengths, E a valid P-256 point) and a box that fails
 * authentication releases no plaintext.
 */
#ifndef NU_SEAL_H
#define NU_SEAL_H

#include "nu_crypto.h"

#include <stddef.h>
#include <stdint.h>

#define NU_SEAL_VERSION 1
#define NU_SEAL_INFO "nusec/v1 seal"
/* Largest serialized box nu_seal_open() parses and nu_seal() produces. */
#define NU_SEAL_MAX_BOX (1024u * 1024u)
/* Largest plaintext nu_seal() accepts (the box adds at most 103 bytes). */
#define NU_SEAL_MAX_PLAINTEXT (NU_SEAL_MAX_BOX - 128u)
/* Largest AAD either side accepts. */
#define NU_SEAL_MAX_AAD (1024u * 1024u)

/*
 * The holder of the recipient's private key. ecdh computes the X coordinate
 * of d * peer_pub into out_secret (32 bytes) and returns NU_OK or an NU_ERR_*
 * code (passed through by nu_seal_open). nu_seal_open validates peer_pub as a
 * P-256 point before calling it. ctx belongs to the provider.
 */
struct nu_seal_recipient {
    void *ctx;
    int (*ecdh)(void *ctx, const uint8_t peer_pub[NU_P256_PUB_LEN],
                uint8_t out_secret[NU_ECDH_SECRET_LEN]);
    uint8_t pub[NU_P256_PUB_LEN]; /* R, the recipient's public key */
};

/*
 * Seal plaintext[len] with aad[aad_len] to the recipient public key R
 * (fresh ephemeral key and random nonce each call). aad and plaintext may be
 * NULL when their length is 0. On success *out_box is a heap buffer of
 * *out_box_len bytes (at most NU_SEAL_MAX_BOX) that the caller frees with
 * free() or nu_seal_free().
 * Errors: INVALID_ARG, TOO_LARGE (plaintext > NU_SEAL_MAX_PLAINTEXT or
 * aad > NU_SEAL_MAX_AAD), DECODE (R is not a valid P-256 point), NOMEM, CRYPTO.
 */
int nu_seal(const uint8_t recipient_pub[NU_P256_PUB_LEN], const uint8_t *aad, size_t aad_len,
            const uint8_t *plaintext, size_t len, uint8_t **out_box, size_t *out_box_len);

/*
 * Open box[box_len] (untrusted) for `recipient` with the same aad.
 * On success *out_plaintext is a heap buffer of *out_len bytes (a 1-byte
 * buffer when the plaintext is empty) that the caller wipes and frees with
 * nu_seal_free(). On any error *out_plaintext is NULL and no plaintext is left.
 * Errors: INVALID_ARG, TOO_LARGE (box > NU_SEAL_MAX_BOX, aad > NU_SEAL_MAX_AAD),
 * DECODE (not a SealedBox, version 0/missing, wrong field lengths, ephemeral
 * key not a valid P-256 point), NOT_SUPPORTED (version > 1), TAMPERED
 * (authentication failed: wrong recipient key, modified AAD, nonce,
 * ciphertext, tag or ephemeral key), NOMEM, CRYPTO, or whatever
 * recipient->ecdh returned.
 */
int nu_seal_open(const struct nu_seal_recipient *recipient, const uint8_t *aad, size_t aad_len,
                 const uint8_t *box, size_t box_len, uint8_t **out_plaintext, size_t *out_len);

/* Wipe buf[len] and free it (NULL is a no-op). */
void nu_seal_free(void *buf, size_t len);

/*
 * Fill *out with a software key as recipient (ctx = key, ecdh = nu_ecdh_p256,
 * pub = the key's public point). The key must outlive *out. Errors: INVALID_ARG.
 */
int nu_seal_recipient_from_key(struct nu_p256_key *key, struct nu_seal_recipient *out);

#ifdef NU_SEAL_TEST_API
/*
 * TESTS ONLY — NEVER USE IN PRODUCTION. nu_seal() with a caller-chosen
 * ephemeral private scalar and nonce, so the test vectors can pin the wire
 * format. Reusing an ephemeral key or nonce destroys confidentiality.
 * Visible only to files that define NU_SEAL_TEST_API before including this
 * header. Errors: those of nu_seal(), DECODE for an out-of-range scalar.
 */
int nu_seal_deterministic_for_tests(const uint8_t recipient_pub[NU_P256_PUB_LEN],
                                    const uint8_t ephemeral_priv[NU_P256_PRIV_LEN],
                                    const uint8_t nonce[NU_GCM_NONCE_LEN], const uint8_t *aad,
                                    size_t aad_len, const uint8_t *plaintext, size_t len,
                                    uint8_t **out_box, size_t *out_box_len);
#endif

#endif
