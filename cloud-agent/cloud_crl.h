/*
 * cloud_crl — the device CRL: an X.509 v2 CRL of the Device CA, built with
 * OpenSSL 3 libcrypto and signed through a struct nu_signer, so the CA key
 * stays in the HSM.
 *
 * Why OpenSSL here and wolfSSL everywhere else: Debian 12's wolfSSL 5.5.4
 * parses CRLs but cannot make them. libmosquitto already brings libcrypto
 * into the process; no OpenSSL type crosses this header, so callers need not
 * include OpenSSL (nor mix its headers with wolfSSL's compatibility layer).
 *
 * What the CRL holds (RFC 5280, section 5):
 *   version v2, signature ecdsa-with-SHA256, issuer = the CA certificate's
 *   subject, thisUpdate, nextUpdate; one entry per revoked certificate
 *   (serial, revocationDate, reasonCode when the operator's reason names an
 *   RFC 5280 CRLReason, see cloud_crl_reason_code), entries sorted by serial;
 *   extensions cRLNumber and authorityKeyIdentifier (keyIdentifier = the CA
 *   certificate's subjectKeyIdentifier; left out if the CA has none).
 * Times are GMT, UTCTime up to 2049 and GeneralizedTime after, as RFC 5280
 * requires. Millisecond inputs are truncated to seconds.
 *
 * Every signature is verified with the CA certificate's public key before a
 * CRL is handed out: an HSM that returns a well-formed but wrong signature
 * gives an error, never an unusable CRL.
 *
 * Errors: NU_OK or NU_ERR_* (nu_err.h). On any error nothing is returned
 * (out-params are NULL/0). After every call the thread's OpenSSL error queue
 * is as it was before (what OpenSSL said on a failure is logged at debug
 * level), so libmosquitto's TLS code in the same thread never sees our errors.
 *
 * Threads: no shared state; may be called from any thread. The signer must
 * itself be thread-safe if it is shared (nu_hsm signers are).
 */
#ifndef CLOUD_CRL_H
#define CLOUD_CRL_H

#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

#define CLOUD_CRL_ENTRIES_MAX 1000000u          /* cap on entries of one CRL (memory bound) */
#define CLOUD_CRL_SERIAL_MAX 20                 /* bytes; RFC 5280 section 4.1.2.2 */
#define CLOUD_CRL_DER_MAX (64u * 1024u * 1024u) /* largest CRL DER the PEM helper accepts */

/* One revoked certificate. Everything is borrowed for the call only. */
struct cloud_crl_entry {
    /* Serial number as big-endian magnitude bytes, as the ledger's hex
     * decodes (nu_hex_decode). 1..CLOUD_CRL_SERIAL_MAX bytes, not zero;
     * leading zero bytes are allowed and do not change the value. */
    const uint8_t *serial;
    size_t serial_len;
    uint64_t revoked_at_ms; /* revocationDate, Unix ms (UTC) */
    /* The operator's reason (free text) or NULL. When it names a CRLReason
     * (cloud_crl_reason_code) the entry gets a reasonCode extension; any
     * other text gives none (the text stays in the ledger only). */
    const char *reason;
};

/*
 * CRLReason (RFC 5280 section 5.3.1) that the operator's text names, or -1
 * when none. Matching ignores case, '-', '_' and spaces, and looks only at
 * the text before the first ':' so "key-compromise: lost on line 3" names
 * keyCompromise. Recognised: keyCompromise (1), cACompromise (2),
 * affiliationChanged (3), superseded (4), cessationOfOperation (5),
 * privilegeWithdrawn (9).
 * "unspecified" is recognised but returns -1: RFC 5280 says the reasonCode
 * extension SHOULD be absent rather than carry unspecified (0).
 * certificateHold, removeFromCRL and aACompromise return -1: device
 * revocation is final, and the others do not apply to device certificates.
 * NULL or "" returns -1.
 */
int cloud_crl_reason_code(const char *reason);

/*
 * Build and sign the Device CA's CRL.
 *
 * ca: the CA key (HSM signer); its public key must be the one in
 *   ca_cert_der[ca_cert_len] (the CA certificate, DER, at most
 *   NU_X509_CERT_MAX bytes, a CA certificate whose keyUsage, if present,
 *   allows cRLSign).
 * entries[n]: the revoked certificates, in any order (the CRL is sorted);
 *   entries may be NULL when n is 0 (an empty CRL is valid and says
 *   "nothing revoked"). The same serial twice is refused.
 * crl_number: the cRLNumber, to increase with every CRL the caller issues.
 * this_update_ms, next_update_ms: thisUpdate and nextUpdate, Unix ms (UTC);
 *   nextUpdate at least one whole second later, and before year 10000.
 *
 * On NU_OK *out_der (malloc, caller frees with free()) holds *out_len bytes
 * of DER whose signature has been verified against the CA certificate.
 * Errors: INVALID_ARG (NULL pointer, n > 0 with entries NULL, serial empty,
 * longer than CLOUD_CRL_SERIAL_MAX or zero, duplicate serial, bad times, the
 * signer's key is not the certificate's key), TOO_LARGE (n over
 * CLOUD_CRL_ENTRIES_MAX, certificate over NU_X509_CERT_MAX), DECODE (the CA
 * certificate does not parse, or has trailing bytes), BAD_CERT (the CA
 * certificate is not a CA, not P-256, or may not sign CRLs), CRYPTO (OpenSSL
 * failure, or the signature does not verify), NOMEM, and whatever the signer
 * returns (e.g. HSM, PERMISSION).
 */
int cloud_crl_build(const struct nu_signer *ca, const uint8_t *ca_cert_der, size_t ca_cert_len,
                    const struct cloud_crl_entry *entries, size_t n, uint64_t crl_number,
                    uint64_t this_update_ms, uint64_t next_update_ms, uint8_t **out_der,
                    size_t *out_len);

/*
 * CRL DER -> "-----BEGIN X509 CRL-----" PEM text (what Mosquitto's crlfile,
 * `openssl crl` and wolfSSL read), NUL-terminated. der[der_len] must be one
 * CRL (at most CLOUD_CRL_DER_MAX bytes, no trailing bytes); it is not
 * verified. *out_pem (malloc, caller frees with free()) holds *out_len
 * characters without the NUL.
 * Errors: INVALID_ARG, TOO_LARGE, DECODE (not a CRL), NOMEM, CRYPTO.
 */
int cloud_crl_der_to_pem(const uint8_t *der, size_t der_len, char **out_pem, size_t *out_len);

#endif
