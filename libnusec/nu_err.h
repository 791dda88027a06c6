/*
 * nu_err — the one status code enum of NuSEC.
 *
 * Every function that can fail returns `int`: NU_OK (0) or a positive
 * NU_ERR_* code. Values are explicit and never renumbered, because they
 * cross the wire as nusec.v1.ErrorCode (proto/nusec/v1/common.proto), which
 * mirrors this table name for name; tests/unit/libnusec/test_err.c keeps the
 * two in step. Append new codes at the end of both.
 */
#ifndef NU_ERR_H
#define NU_ERR_H

/* X(name, value, text) */
#define NU_ERR_MAP(X)                                                                              \
    X(OK, 0, "success")                                                                            \
    X(INVALID_ARG, 1, "invalid argument")                                                          \
    X(NOMEM, 2, "out of memory")                                                                   \
    X(IO, 3, "input/output error")                                                                 \
    X(NOT_FOUND, 4, "not found")                                                                   \
    X(EXISTS, 5, "already exists")                                                                 \
    X(PERMISSION, 6, "permission denied")                                                          \
    X(TIMEOUT, 7, "timed out")                                                                     \
    X(NOT_SUPPORTED, 8, "not supported")                                                           \
    X(DECODE, 9, "malformed input")                                                                \
    X(TOO_LARGE, 10, "input exceeds a size limit")                                                 \
    X(CRYPTO, 11, "cryptographic operation failed")                                                \
    X(BAD_SIGNATURE, 12, "signature does not verify")                                              \
    X(HSM, 13, "HSM (PKCS#11) error")                                                              \
    X(MQTT, 14, "MQTT error")                                                                      \
    X(CONFIG, 15, "configuration error")                                                           \
    X(DB, 16, "database error")                                                                    \
    X(BAD_CSR, 17, "certificate signing request rejected")                                         \
    X(BAD_CERT, 18, "certificate rejected")                                                        \
    X(NOT_AUTHORIZED, 19, "not authorized")                                                        \
    X(QUOTA_EXHAUSTED, 20, "production quota exhausted")                                           \
    X(JOB_NOT_ACTIVE, 21, "job not active")                                                        \
    X(EXPIRED, 22, "expired")                                                                      \
    X(DUPLICATE_DEVICE, 23, "device already certified with another key")                           \
    X(REVOKED, 24, "identity revoked")                                                             \
    X(IDEMPOTENCY_CONFLICT, 25, "idempotency key reused with a different request")                 \
    X(TAMPERED, 26, "integrity check failed")                                                      \
    X(REPLAY, 27, "replayed or stale message")                                                     \
    X(WRONG_PROGRAMMER, 28, "sealed for another programmer")                                       \
    X(STATE, 29, "operation not valid in the current state")                                       \
    X(CONNECTION, 30, "connection failed or lost")                                                 \
    X(INTERNAL, 31, "internal error")                                                              \
    X(TARGET, 32, "target link error")                                                             \
    X(NOT_BLANK, 33, "target is not blank")                                                        \
    X(BOOT_FAILED, 34, "target secure boot failed")                                                \
    X(BUSY, 35, "busy")                                                                            \
    X(BAD_FIRMWARE, 36, "firmware image rejected")                                                 \
    X(TOKEN, 37, "invalid or expired token")                                                       \
    X(LIMIT, 38, "production limit reached")                                                       \
    X(ATTESTATION_MISSING, 39, "enrollment without a KeyStore attestation")                        \
    X(ATTESTATION_UNTRUSTED, 40, "attestation key not certified by the pinned vendor CA")          \
    X(ATTESTATION_SIGNATURE, 41, "attestation statement signature does not verify")                \
    X(NONCE_REPLAYED, 42, "enrollment challenge unknown or already used")                          \
    X(NONCE_EXPIRED, 43, "enrollment challenge expired")                                           \
    X(MEASUREMENT, 44, "programmer firmware not approved by the OEM")                              \
    X(SERIAL_NOT_ALLOWED, 45, "programmer serial not on the allow-list")                           \
    X(KEY_NOT_ATTESTED, 46, "key not the one the KeyStore attested")                               \
    X(LEASE_UNKNOWN, 47, "no such offline lease for this programmer")                              \
    X(LEASE_NOT_COVERED, 48, "certificate not covered by the offline lease")                       \
    X(LEASE_OVERCOMMIT, 49, "offline lease would over-commit the job's quota")

enum nu_err {
#define NU__ERR_ENUM(name, value, text) NU_ERR_##name = value,
    NU_ERR_MAP(NU__ERR_ENUM)
#undef NU__ERR_ENUM
};

#define NU_OK NU_ERR_OK

/* Human text for a code ("unknown error" for values outside the table). */
const char *nu_err_str(int code);

/* Symbolic name without prefix, e.g. "QUOTA_EXHAUSTED" ("UNKNOWN" otherwise). */
const char *nu_err_name(int code);

/* Code for a symbolic name as printed by nu_err_name(); -1 if unknown. */
int nu_err_from_name(const char *name);

/* 1 when `code` is one of the table's values. */
int nu_err_is_known(int code);

#endif
