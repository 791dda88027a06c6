/* nu_signer — anything that holds a P-256 private key and can sign a SHA-256 digest
 * (HSM key, KeyStore key, software key in tests/simulated targets). The key never leaves it.
 *
 * The struct is filled by its provider (nu_hsm_signer, nu_crypto software keys, KeyStore);
 * the consumer (nu_x509, package signing, ...) only calls sign_digest through it. The
 * provider owns ctx and keeps it alive for as long as the signer is used. */
#ifndef NU_SIGNER_H
#define NU_SIGNER_H
#include <stddef.h>
#include <stdint.h>
#define NU_P256_PUB_LEN 65 /* uncompressed point 04||X||Y */
#define NU_P256_SIG_MAX 72 /* DER ECDSA-Sig-Value, max */
struct nu_signer {
    void *ctx;
    /* Sign a 32-byte digest; write a DER ECDSA signature into sig[*sig_len] (in: capacity, out:
     * length). Returns NU_OK or NU_ERR_*. */
    int (*sign_digest)(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len);
    uint8_t pub[NU_P256_PUB_LEN]; /* public key of the signing key */
    /* Set by a provider whose sign_digest already verified every signature
     * it returns against pub (the HSM does, for SoftHSM2 #901): consumers
     * that must never use an unverified signature skip their own check.
     * 0 (the zero-initialised default) = the consumer verifies. */
    int self_verified;
};
#endif
