/*
 * nu_crypto — the cryptographic primitives NuSEC uses, as thin wrappers over
 * wolfCrypt (wolfSSL 5.5.4): SHA-256, software ECDSA/ECDH P-256 keys, HKDF-SHA256
 * and AES-256-GCM. Nothing here implements a primitive itself.
 *
 * Every function returns NU_OK or an NU_ERR_* code (nu_err.h). wolfCrypt codes
 * are mapped at this boundary (the original is logged at debug level).
 *
 * Inputs named "untrusted" below (signatures, public keys, PEM/DER text) may
 * come from the network or a file: they are bounded and validated, a bad one
 * gives a typed error and never a crash.
 *
 * Threads: the stateless functions are thread-safe. A struct nu_p256_key owns
 * its own random generator and a mutex, so one key may be used from several
 * threads at once (each operation locks the key). There is one process-wide
 * one-time initialisation (wolfCrypt_Init through pthread_once), done lazily.
 *
 * Public keys cross module boundaries as 65-byte uncompressed points
 * (0x04 || X || Y), the same form struct nu_signer (nu_signer.h) carries.
 */
#ifndef NU_CRYPTO_H
#define NU_CRYPTO_H

#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define NU_SHA256_LEN 32
#define NU_P256_PRIV_LEN 32   /* private scalar, big-endian */
#define NU_ECDH_SECRET_LEN 32 /* X coordinate of the shared point */
#define NU_AES256_KEY_LEN 32
#define NU_GCM_NONCE_LEN 12
#define NU_GCM_TAG_LEN 16

/* SubjectPublicKeyInfo of a P-256 key in DER is always exactly this long. */
#define NU_P256_PUB_DER_LEN 91
/* Output buffer sizes (including the terminating NUL) for PEM exports. */
#define NU_P256_PUB_PEM_MAX 256
#define NU_P256_PRIV_PEM_MAX 512
/* Largest PEM text the parsers accept (room for comments / EC PARAMETERS blocks). */
#define NU_PEM_IN_MAX (16u * 1024u)
/* Largest DER the public key parser accepts. */
#define NU_DER_IN_MAX 4096u

/* ------------------------------------------------------------------ threads */

/* The calling thread's wolfSSL fixed-point ECC cache is freed when it exits.
 * Every function here does it; a module that runs wolfSSL's ECC itself
 * (nu_x509's chain checks) calls this first. Errors: CRYPTO, NOMEM. */
int nu_crypto_thread_arm(void);

/* ------------------------------------------------------------------ SHA-256 */

/* SHA-256 of data[len] into out[32]. data may be NULL when len is 0.
 * Errors: INVALID_ARG, CRYPTO. */
int nu_sha256(const void *data, size_t len, uint8_t out[NU_SHA256_LEN]);

/*
 * Incremental SHA-256 (firmware images, chunked downloads). The context is
 * caller-allocated (stack is fine, no heap) and opaque: init, update any number
 * of times, final. final releases the context; to abandon a hash half-way call
 * nu_sha256_abort(). Not for concurrent use from two threads.
 */
struct nu_sha256_ctx {
    _Alignas(16) uint8_t opaque[256];
};

/* Errors: INVALID_ARG, CRYPTO. */
int nu_sha256_init(struct nu_sha256_ctx *ctx);
/* data may be NULL when len is 0. Errors: INVALID_ARG, CRYPTO. */
int nu_sha256_update(struct nu_sha256_ctx *ctx, const void *data, size_t len);
/* Writes the digest and wipes the context. Errors: INVALID_ARG, CRYPTO. */
int nu_sha256_final(struct nu_sha256_ctx *ctx, uint8_t out[NU_SHA256_LEN]);
/* Wipes a context without producing a digest (safe on an already final'd one). */
void nu_sha256_abort(struct nu_sha256_ctx *ctx);

/* ------------------------------------------------------- software P-256 key */

/* An ECDSA/ECDH P-256 key pair held in process memory. Opaque. */
struct nu_p256_key;

/* Fresh random key pair. *out_key is freed with nu_p256_key_destroy().
 * Errors: INVALID_ARG, NOMEM, CRYPTO. */
int nu_p256_key_generate(struct nu_p256_key **out_key);

/*
 * Key pair from a raw private scalar d (32 bytes big-endian, 1 <= d < n); the
 * public key is recomputed. Used for test vectors and for stores that keep the
 * bare scalar. Errors: INVALID_ARG, DECODE (d out of range), NOMEM, CRYPTO.
 */
int nu_p256_key_import_priv(const uint8_t d[NU_P256_PRIV_LEN], struct nu_p256_key **out_key);

/*
 * Key pair from PEM text (untrusted, at most NU_PEM_IN_MAX bytes; need not be
 * NUL-terminated). Accepts "BEGIN EC PRIVATE KEY" (SEC1, as `openssl ec` or
 * `openssl ecparam -genkey` write it, with or without a leading EC PARAMETERS
 * block) and unencrypted PKCS#8 "BEGIN PRIVATE KEY" (as `openssl genpkey`
 * writes it). The key must be on P-256; the public key is recomputed when
 * absent and checked against d when present.
 * Errors: INVALID_ARG, TOO_LARGE, DECODE (not a private key PEM, encrypted,
 * inconsistent), NOT_SUPPORTED (another curve or algorithm), NOMEM, CRYPTO.
 */
int nu_p256_key_from_pem(const char *pem, size_t pem_len, struct nu_p256_key **out_key);

/* nu_p256_key_from_pem() on a file (read bounded by NU_PEM_IN_MAX).
 * Errors: those of nu_p256_key_from_pem() and of nu_file_read() (NOT_FOUND, PERMISSION, IO). */
int nu_p256_key_load_pem(const char *path, struct nu_p256_key **out_key);

/*
 * Private key as SEC1 PEM ("-----BEGIN EC PRIVATE KEY-----", with the named
 * curve and the public key: what `openssl ec`, mosquitto and wolfSSL read) into
 * out[cap] (NU_P256_PRIV_PEM_MAX is enough), NUL-terminated; *out_len excludes
 * the NUL. out holds a secret: the caller wipes it with nu_zero().
 * Errors: INVALID_ARG, TOO_LARGE (cap too small), CRYPTO.
 */
int nu_p256_key_to_pem(struct nu_p256_key *key, char *out, size_t cap, size_t *out_len);

/* nu_p256_key_to_pem() into `path` with nu_file_write_atomic(path, ..., 0600).
 * Errors: those of nu_p256_key_to_pem() and nu_file_write_atomic(). */
int nu_p256_key_save_pem(struct nu_p256_key *key, const char *path);

/* Wipe and free a key (NULL is a no-op). */
void nu_p256_key_destroy(struct nu_p256_key *key);

/* The key's public point (65 bytes, 0x04||X||Y) into out_pub. Errors: INVALID_ARG. */
int nu_p256_key_pub(const struct nu_p256_key *key, uint8_t out_pub[NU_P256_PUB_LEN]);

/*
 * ECDSA-P256 signature over a 32-byte digest (the caller hashes), DER encoded
 * into sig[*sig_len] (in: capacity, NU_P256_SIG_MAX is enough; out: length).
 * Errors: INVALID_ARG, TOO_LARGE (capacity too small), CRYPTO.
 */
int nu_p256_key_sign_digest(struct nu_p256_key *key, const uint8_t digest[NU_SHA256_LEN],
                            uint8_t *sig, size_t *sig_len);

/*
 * Fill *out so that the software key signs through the same interface as an
 * HSM key: out->ctx = key, out->sign_digest = an adapter that calls
 * nu_p256_key_sign_digest(), out->pub = the public key. The key must outlive
 * the signer; nothing to free.
 * Errors: INVALID_ARG.
 */
int nu_p256_key_signer(struct nu_p256_key *key, struct nu_signer *out);

/*
 * ECDH on P-256: the X coordinate of d * peer into out_secret[32]. The peer
 * point is untrusted and validated first (on the curve, not the identity).
 * The raw secret is for a KDF (nu_hkdf_sha256), never a key by itself.
 * Errors: INVALID_ARG, DECODE (invalid peer point), CRYPTO.
 */
int nu_ecdh_p256(struct nu_p256_key *key, const uint8_t peer_pub[NU_P256_PUB_LEN],
                 uint8_t out_secret[NU_ECDH_SECRET_LEN]);

/* ------------------------------------------------------ P-256 public keys */

/* NU_OK when pub is a valid uncompressed P-256 point: 0x04 prefix,
 * coordinates below p, not the identity, on the curve (complete validation
 * for P-256, whose cofactor is 1). Errors: INVALID_ARG, DECODE. */
int nu_p256_pub_check(const uint8_t pub[NU_P256_PUB_LEN]);

/*
 * Verify a DER ECDSA signature (untrusted, sig_len <= NU_P256_SIG_MAX) over a
 * 32-byte digest with the public point pub (untrusted, validated).
 * Returns NU_OK when valid; BAD_SIGNATURE when well-formed but wrong; DECODE
 * when sig or pub is malformed; INVALID_ARG for NULL pointers; CRYPTO.
 */
int nu_p256_verify(const uint8_t pub[NU_P256_PUB_LEN], const uint8_t digest[NU_SHA256_LEN],
                   const uint8_t *sig, size_t sig_len);

/* Public point as DER SubjectPublicKeyInfo (id-ecPublicKey, prime256v1) into
 * out[cap] (NU_P256_PUB_DER_LEN bytes). Errors: INVALID_ARG, DECODE (bad point),
 * TOO_LARGE (cap), CRYPTO. */
int nu_p256_pub_to_der(const uint8_t pub[NU_P256_PUB_LEN], uint8_t *out, size_t cap,
                       size_t *out_len);

/* Public point as "-----BEGIN PUBLIC KEY-----" PEM (what `openssl pkey -pubin`
 * reads) into out[cap] (NU_P256_PUB_PEM_MAX is enough), NUL-terminated;
 * *out_len excludes the NUL. Errors: as nu_p256_pub_to_der(). */
int nu_p256_pub_to_pem(const uint8_t pub[NU_P256_PUB_LEN], char *out, size_t cap, size_t *out_len);

/*
 * Public point from a DER SubjectPublicKeyInfo (untrusted, <= NU_DER_IN_MAX,
 * must be consumed exactly). Errors: INVALID_ARG, TOO_LARGE, DECODE (malformed,
 * trailing bytes, invalid point), NOT_SUPPORTED (RSA, Ed25519, another curve).
 */
int nu_p256_pub_from_der(const uint8_t *der, size_t der_len, uint8_t out_pub[NU_P256_PUB_LEN]);

/* Same from "BEGIN PUBLIC KEY" PEM text (untrusted, <= NU_PEM_IN_MAX, need not
 * be NUL-terminated). Errors: as nu_p256_pub_from_der(). */
int nu_p256_pub_from_pem(const char *pem, size_t pem_len, uint8_t out_pub[NU_P256_PUB_LEN]);

/* ----------------------------------------------------------- HKDF, AES-GCM */

/*
 * HKDF-SHA256 (RFC 5869) extract-and-expand into out[out_len], out_len <= 8160.
 * salt and info may be NULL when their length is 0 (empty salt = 32 zero bytes
 * per the RFC). Errors: INVALID_ARG, CRYPTO.
 */
int nu_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                   const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len);

/*
 * AES-256-GCM with a 12-byte nonce and a 16-byte tag. in[len] -> out[len]
 * (out may equal in); aad may be NULL when aad_len is 0. A nonce must never be
 * reused with the same key. len and aad_len are limited to UINT32_MAX.
 * Errors: INVALID_ARG, TOO_LARGE, CRYPTO.
 */
int nu_aes256gcm_encrypt(const uint8_t key[NU_AES256_KEY_LEN],
                         const uint8_t nonce[NU_GCM_NONCE_LEN], const uint8_t *aad, size_t aad_len,
                         const uint8_t *in, size_t len, uint8_t *out,
                         uint8_t out_tag[NU_GCM_TAG_LEN]);

/*
 * Decrypt and authenticate. On TAMPERED (tag mismatch: wrong key, nonce, aad,
 * ciphertext or tag) out[len] is zeroed, so no unauthenticated plaintext
 * escapes. out may equal in. Errors: INVALID_ARG, TOO_LARGE, TAMPERED, CRYPTO.
 */
int nu_aes256gcm_decrypt(const uint8_t key[NU_AES256_KEY_LEN],
                         const uint8_t nonce[NU_GCM_NONCE_LEN], const uint8_t *aad, size_t aad_len,
                         const uint8_t *in, size_t len, uint8_t *out,
                         const uint8_t tag[NU_GCM_TAG_LEN]);

#endif
