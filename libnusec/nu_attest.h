/*
 * nu_attest — programmer attestation at enrollment.
 *
 * A programmer's KeyStore holds a vendor attestation key, made inside it when
 * the programmer was manufactured, certified by the programmer vendor's CA.
 * At enrollment the KeyStore itself builds and signs an AttestationStatement
 * (proto/nusec/v1/pki.proto) over what it holds: the identity and package
 * public keys it generated (non-exportable), the firmware measurement its
 * secure boot recorded, its vendor serial, the cloud's challenge nonce, and
 * the hash of the OEM anchor pinned in it (if any), so the cloud can refuse a
 * programmer that would trust another "OEM" key for its enrollment answer.
 *
 *   signature = ECDSA-P256(attestation key,
 *                          SHA-256("nusec/v1 programmer attestation" || 0x00 || statement))
 *
 * The domain prefix keeps this key's signatures from meaning anything else.
 * The statement bytes are protobuf-c's serialization (fields in number order,
 * no unknown fields): deterministic, and the signed bytes are the bytes that
 * travel, so the verifier never re-encodes.
 *
 * This module also plays the programmer vendor's CA for tests and the local
 * stack (nu_attest_vendor_*): a directory with a software key, which the OEM
 * does not hold. A real NuLink3 gets its certificate from the chip vendor.
 */
#ifndef NU_ATTEST_H
#define NU_ATTEST_H

#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

#define NU_ATTEST_DOMAIN "nusec/v1 programmer attestation"
#define NU_ATTEST_FORMAT 1u
#define NU_ATTEST_NONCE_LEN 32
#define NU_ATTEST_MEASUREMENT_LEN 32
#define NU_ATTEST_STMT_MAX 1024 /* a statement is ~300 bytes */
#define NU_ATTEST_SERIAL_MAX 63
#define NU_ATTEST_ID_MAX 64

/* Files of a stand-in vendor CA directory. */
#define NU_ATTEST_VENDOR_CERT "vendor-ca.pem"
#define NU_ATTEST_VENDOR_KEY "vendor-ca.key"

/* What a statement says. */
struct nu_attest_claims {
    uint8_t identity_pub[NU_P256_PUB_LEN];
    uint8_t package_pub[NU_P256_PUB_LEN];
    int keys_generated_in_keystore;
    int keys_non_exportable;
    uint8_t measurement[NU_ATTEST_MEASUREMENT_LEN];
    char vendor_serial[NU_ATTEST_SERIAL_MAX + 1];
    uint8_t nonce[NU_ATTEST_NONCE_LEN];
    char programmer_id[NU_ATTEST_ID_MAX + 1];
    /* The OEM anchor the KeyStore holds (pin.anchor, write-once): anchored = 1
     * and its SHA-256, or anchored = 0 (none pinned; the field is absent). */
    int anchored;
    uint8_t anchor_sha256[32];
};

/*
 * Serialize claims into out[cap] (*out_len bytes).
 * Errors: INVALID_ARG (NULL, empty serial or id), TOO_LARGE (cap), NOMEM.
 */
int nu_attest_encode(const struct nu_attest_claims *claims, uint8_t *out, size_t cap,
                     size_t *out_len);

/*
 * Parse untrusted statement bytes. Every field must be present with its exact
 * length, format must be NU_ATTEST_FORMAT, and re-encoding must give the same
 * bytes (no unknown, repeated or out-of-order fields).
 * Errors: INVALID_ARG, TOO_LARGE (> NU_ATTEST_STMT_MAX), DECODE.
 */
int nu_attest_decode(const uint8_t *stmt, size_t len, struct nu_attest_claims *out);

/* SHA-256(NU_ATTEST_DOMAIN || 0x00 || stmt): what the attestation key signs. */
int nu_attest_digest(const uint8_t *stmt, size_t len, uint8_t out[32]);

/*
 * Verify an attestation from an untrusted party against the pinned vendor CA
 * certificate ca_der: cert_der must chain to it (at the current time) and
 * have the vendor serial as CN; sig must be the certified key's signature of
 * nu_attest_digest(stmt); stmt must decode and name the same serial.
 * On success *out holds the claims.
 * Errors: ATTESTATION_MISSING (an empty part), ATTESTATION_UNTRUSTED (chain,
 * dates, serial differs from the certificate), ATTESTATION_SIGNATURE, DECODE,
 * TOO_LARGE, INVALID_ARG, NOMEM.
 */
int nu_attest_verify(const uint8_t *ca_der, size_t ca_len, const uint8_t *cert_der, size_t cert_len,
                     const uint8_t *stmt, size_t stmt_len, const uint8_t *sig, size_t sig_len,
                     struct nu_attest_claims *out);

/*
 * Create a stand-in programmer vendor CA in vdir (made 0700): a P-256 key
 * (vendor-ca.key, 0600) and its self-signed certificate (vendor-ca.pem).
 * Errors: EXISTS (vdir already holds one), IO, PERMISSION, CRYPTO, NOMEM.
 */
int nu_attest_vendor_ca_init(const char *vdir);

/* The vendor CA certificate of vdir, DER (malloc, caller frees).
 * Errors: NOT_FOUND, DECODE, IO, NOMEM. */
int nu_attest_vendor_ca_cert(const char *vdir, uint8_t **out_der, size_t *out_len);

/*
 * Play the vendor's factory: certify attestation key `pub` under the CA of
 * vdir with a fresh vendor serial "NL3-" + 12 hex digits as CN (written to
 * out_serial[NU_ATTEST_SERIAL_MAX + 1]). *out_der (malloc) is the certificate.
 * Errors: NOT_FOUND (no CA), INVALID_ARG, CRYPTO, NOMEM, IO.
 */
int nu_attest_vendor_issue(const char *vdir, const uint8_t pub[NU_P256_PUB_LEN],
                           char out_serial[NU_ATTEST_SERIAL_MAX + 1], uint8_t **out_der,
                           size_t *out_len);

#endif
