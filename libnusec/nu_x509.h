/*
 * nu_x509 — the certificates and CSRs of NuSEC's PKI, on wolfSSL.
 *
 * Everything is ECDSA P-256 with SHA-256. Private keys stay in whatever holds
 * them: signing goes through a struct nu_signer (nu_signer.h), so the same
 * code issues with an HSM key, a programmer KeyStore key or a software key.
 *
 * Subjects are CN (identity), OU (role: cloud, station, monitor, oem,
 * programmer, broker, device) and O. The broker takes identity = CN and
 * role = OU from client certificates, and the CN becomes an MQTT topic level,
 * so names read from untrusted CSRs are held to a strict identity alphabet
 * (see nu_x509_csr_parse_verify).
 *
 * DER buffers returned through out_der are malloc()ed; the caller frees them
 * with free(). Inputs called untrusted may come from the network or a file:
 * they are bounded, and anything malformed gives a typed error, never a crash.
 *
 * Threads: no shared state; every function may be called from any thread
 * (the signer passed in must itself be thread-safe if shared).
 *
 * Threads that call into wolfSSL ECC must call wc_ecc_fp_free() before they
 * exit: wolfSSL (built with FP_ECC) keeps a per-thread cache, leaked otherwise.
 */
#ifndef NU_X509_H
#define NU_X509_H

#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

#define NU_X509_NAME_MAX 63       /* CN, OU, O: bytes, without NUL */
#define NU_X509_CSR_MAX 4096      /* largest CSR DER accepted */
#define NU_X509_CERT_MAX 8192     /* largest certificate DER accepted */
#define NU_X509_PEM_MAX 65536     /* largest PEM text accepted (one object, or a chain to scan) */
#define NU_X509_SERIAL_LEN 16     /* serials we issue: 16 bytes, positive, random */
#define NU_X509_SERIAL_HEX_MAX 41 /* 20-byte serials (RFC 5280 max) as hex + NUL */
#define NU_X509_CHAIN_MAX 8       /* intermediates nu_x509_verify_chain() accepts */
#define NU_X509_SAN_MAX 8         /* subjectAltName entries of each kind */
#define NU_X509_DNS_NAME_MAX 253

/* keyUsage bits (the extension is always critical). */
enum nu_x509_key_usage {
    NU_X509_KU_DIGITAL_SIGNATURE = 1u << 0,
    NU_X509_KU_KEY_AGREEMENT = 1u << 1,
    NU_X509_KU_KEY_CERT_SIGN = 1u << 2,
    NU_X509_KU_CRL_SIGN = 1u << 3,
};

/* extendedKeyUsage bits; 0 = no extension. */
enum nu_x509_ext_key_usage {
    NU_X509_EKU_SERVER_AUTH = 1u << 0,
    NU_X509_EKU_CLIENT_AUTH = 1u << 1,
};

/* What to put in a certificate. */
struct nu_x509_issue_req {
    const char *cn;               /* subject CN (required), printable ASCII, 1..NU_X509_NAME_MAX */
    const char *ou;               /* subject OU (role) or NULL */
    const char *o;                /* subject O or NULL */
    uint8_t pub[NU_P256_PUB_LEN]; /* subject public key, 04||X||Y */
    int64_t not_before;           /* Unix seconds, UTC */
    int64_t not_after;            /* Unix seconds, UTC; > not_before */
    int is_ca;                    /* basicConstraints CA:TRUE (critical) */
    int path_len;                 /* CA only: pathLenConstraint, < 0 = none */
    unsigned key_usage;           /* NU_X509_KU_* bits, at least one */
    unsigned ext_key_usage;       /* NU_X509_EKU_* bits, 0 = none */
    /* subjectAltName (non-critical), for server certificates that TLS clients
     * check by host name: DNS names ([A-Za-z0-9.-], e.g. "localhost") and IP
     * literals (IPv4 or IPv6, e.g. "127.0.0.1", "::1"). NULL/0 = none. */
    const char *const *san_dns;
    size_t n_san_dns;
    const char *const *san_ip;
    size_t n_san_ip;
};

/*
 * Issue a certificate: X.509 v3, 16-byte random positive serial, the subject
 * and validity of `req`, basicConstraints (critical; CA:FALSE for leaves),
 * keyUsage (critical), extendedKeyUsage (if asked), subjectKeyIdentifier,
 * authorityKeyIdentifier, subjectAltName (if asked), signed ecdsa-with-SHA256
 * by issuer_key.
 *
 * issuer_der NULL makes a self-signed root: req->pub must be issuer_key->pub.
 * Otherwise issuer_der[issuer_len] is the issuer's certificate: it must be a
 * CA certificate whose public key is issuer_key->pub (catches signing with the
 * wrong key, which would yield a certificate nobody can verify).
 *
 * On success *out_der (malloc, caller frees) holds *out_len bytes.
 * Errors: INVALID_ARG (missing field, bad name, bad times, bad usage, bad or
 * too many SAN entries, key not the issuer's), DECODE (subject key is not a P-256 point), BAD_CERT
 * (issuer certificate malformed or not a CA), NOMEM, CRYPTO, and whatever the signer returns (e.g.
 * HSM, PERMISSION).
 */
int nu_x509_issue(const struct nu_x509_issue_req *req, const struct nu_signer *issuer_key,
                  const uint8_t *issuer_der, size_t issuer_len, uint8_t **out_der, size_t *out_len);

/*
 * Make a PKCS#10 CSR for key->pub with subject CN (required), OU and O
 * (optional, NULL), signed by the key itself (proof of possession).
 * On success *out_der (malloc, caller frees) holds *out_len bytes.
 * Errors: INVALID_ARG (names), NOMEM, CRYPTO, and the signer's errors.
 */
int nu_x509_csr_make(const struct nu_signer *key, const char *cn, const char *ou, const char *o,
                     uint8_t **out_der, size_t *out_len);

/* What a verified CSR asks for. Strings are NUL-terminated, "" when absent. */
struct nu_x509_csr_info {
    char cn[NU_X509_NAME_MAX + 1];
    char ou[NU_X509_NAME_MAX + 1];
    char o[NU_X509_NAME_MAX + 1];
    uint8_t pub[NU_P256_PUB_LEN];
};

/*
 * Parse an untrusted CSR (DER) and check it: a P-256 public key, an
 * ecdsa-with-SHA256 self-signature that verifies with that key, exactly one
 * CN of 1..63 characters from [A-Za-z0-9._:@-], at most one OU from the same
 * alphabet, an optional printable O, no trailing bytes.
 * Errors: INVALID_ARG (NULL), TOO_LARGE (> NU_X509_CSR_MAX), BAD_CSR (malformed,
 * truncated, not P-256 (RSA, P-384...), bad signature, bad names). *out is
 * zeroed on error.
 */
int nu_x509_csr_parse_verify(const uint8_t *der, size_t len, struct nu_x509_csr_info *out);

/* Certificate facts, from untrusted DER. Strings NUL-terminated, "" when absent. */
struct nu_x509_cert_info {
    char serial_hex[NU_X509_SERIAL_HEX_MAX]; /* lower-case hex of the serial's bytes */
    char cn[NU_X509_NAME_MAX + 1];
    char ou[NU_X509_NAME_MAX + 1];
    char o[NU_X509_NAME_MAX + 1];
    char issuer_cn[NU_X509_NAME_MAX + 1];
    int64_t not_before; /* Unix seconds */
    int64_t not_after;
    int is_ca;
    uint8_t pub[NU_P256_PUB_LEN]; /* subject key (P-256 only) */
};

/*
 * Parse a certificate (untrusted DER) without verifying its signature.
 * Errors: INVALID_ARG, TOO_LARGE (> NU_X509_CERT_MAX), BAD_CERT (malformed,
 * not a P-256 key, names longer than NU_X509_NAME_MAX or with control
 * characters). *out is zeroed on error.
 */
int nu_x509_cert_info(const uint8_t *der, size_t len, struct nu_x509_cert_info *out);

/* A DER blob (borrowed). */
struct nu_x509_der {
    const uint8_t *der;
    size_t len;
};

/*
 * Verify leaf against root through the intermediates chain[n_chain] (any
 * order, at most NU_X509_CHAIN_MAX), with wolfSSL's certificate manager, at
 * the current time. Each intermediate must itself verify (signature, dates,
 * CA:TRUE, keyCertSign) before it may vouch for anything.
 * Returns NU_OK; EXPIRED (a certificate of the path is expired or not yet
 * valid); BAD_CERT (malformed, bad signature, unknown issuer, not a CA...);
 * INVALID_ARG; TOO_LARGE (a DER over NU_X509_CERT_MAX or too many
 * intermediates); NOMEM.
 */
int nu_x509_verify_chain(const uint8_t *leaf, size_t leaf_len, const struct nu_x509_der *chain,
                         size_t n_chain, const uint8_t *root, size_t root_len);

enum nu_x509_pem_kind {
    NU_X509_PEM_CERT, /* -----BEGIN CERTIFICATE----- */
    NU_X509_PEM_CSR,  /* -----BEGIN CERTIFICATE REQUEST----- */
};

/*
 * Length of the DER SEQUENCE that starts at der[0] (tag, length bytes and
 * content), or 0 when der[0..len) does not start with one that fits: how a
 * certificate is cut from a chain of them written back to back. Reads only.
 */
size_t nu_x509_der_len(const uint8_t *der, size_t len);

/*
 * DER -> PEM text, NUL-terminated. *out_pem (malloc, caller frees) holds
 * *out_len characters (without the NUL).
 * Errors: INVALID_ARG, TOO_LARGE (DER over NU_X509_CERT_MAX), NOMEM, CRYPTO.
 */
int nu_x509_der_to_pem(const uint8_t *der, size_t der_len, enum nu_x509_pem_kind kind,
                       char **out_pem, size_t *out_len);

/*
 * The first PEM object of `kind` in pem[pem_len] (untrusted, need not be
 * NUL-terminated, at most NU_X509_PEM_MAX) -> DER. Text before it is skipped.
 * When out_consumed is not NULL it receives the offset just past that
 * object's END line, so a chain file is read by calling again on the rest.
 * *out_der (malloc, caller frees) holds *out_len bytes.
 * Errors: INVALID_ARG, TOO_LARGE, NOT_FOUND (no such object), DECODE (broken
 * base64 or armour), NOMEM.
 */
int nu_x509_pem_to_der(const char *pem, size_t pem_len, enum nu_x509_pem_kind kind,
                       uint8_t **out_der, size_t *out_len, size_t *out_consumed);

#endif
