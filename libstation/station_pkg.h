/*
 * station_pkg — what the station may know about a sealed production package
 * (.nspkg, a serialized nusec.v1.SealedPackage, proto/README.md): its clear
 * summary, and whether the OEM's package key signed exactly these bytes.
 *
 * The secrets inside are sealed to one programmer's KeyStore; nothing here
 * can (or tries to) read them.
 *
 * Parsing is strict because the file comes from anywhere (a USB stick, a
 * mail): the size is checked first; the outer message must be exactly the
 * three length-delimited fields summary (1), sealed (2), signature (3), each
 * once, nothing else (so two readers can never disagree on which copy of a
 * repeated field counts); the signature is checked before the summary is
 * trusted; the summary's identifiers must be identifiers.
 */
#ifndef STATION_PKG_H
#define STATION_PKG_H

#include "nu_envelope.h"
#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

/* Largest .nspkg accepted (what a PackageDelivery can carry). */
#define STATION_PKG_MAX NU_ENVELOPE_PACKAGE_MAX
/* PackageSummary.format this station reads. */
#define STATION_PKG_FORMAT 1u
/* PackageSummary.package_id length. */
#define STATION_PKG_ID_LEN 16u

/* The clear summary and the verdict. Strings are NUL-terminated. */
struct station_pkg {
    char job_id[NU_ENVELOPE_ID_MAX + 1];
    char programmer_id[NU_ENVELOPE_ID_MAX + 1];
    char firmware[NU_ENVELOPE_ID_MAX + 1];
    uint32_t limit;
    uint32_t format;
    uint64_t expires_at_ms;
    uint64_t created_at_ms;
    uint8_t package_id[STATION_PKG_ID_LEN];
    uint8_t file_sha256[32]; /* of the whole file, for the station's records */
    size_t sealed_len;       /* bytes of the sealed secrets */
    int summary_ok;          /* the fields above were decoded (even if not intact) */
    int intact;              /* the package key's signature verifies */
};

/*
 * Parse and verify buf[len] (untrusted) against the package signing public
 * key `signer_pub`, at time now_ms (Unix ms).
 * Returns NU_OK when the package is intact, of a supported format and not
 * expired. Otherwise *out still says what could be read (summary_ok, intact)
 * so that `package inspect` can show it, and the code says why:
 *   INVALID_ARG   NULL argument
 *   TOO_LARGE     len > STATION_PKG_MAX
 *   DECODE        not a SealedPackage (garbage, truncated, extra or repeated
 *                 fields), or a signed summary that is malformed
 *   TAMPERED      the signature does not verify (any modified byte)
 *   NOT_SUPPORTED intact, but a summary format other than STATION_PKG_FORMAT
 *   EXPIRED       intact, but expires_at_ms <= now_ms
 */
int station_pkg_open(const uint8_t *buf, size_t len, const uint8_t signer_pub[NU_P256_PUB_LEN],
                     uint64_t now_ms, struct station_pkg *out);

/*
 * The package signing public key of state directory `dir`
 * (DIR/pki/package-key.pem, written by `nusec pki init`) into out_pub.
 * Errors: NOT_FOUND (no such file), PERMISSION, IO, DECODE / NOT_SUPPORTED
 * (not a P-256 public key PEM), TOO_LARGE.
 */
int station_pkg_signer_load(const char *dir, uint8_t out_pub[NU_P256_PUB_LEN]);

/*
 * Read the file at `path` (at most STATION_PKG_MAX bytes) and open it as
 * station_pkg_open() does. On NU_OK *out_buf (may be NULL if not wanted)
 * receives the file bytes, *out_len bytes, that the caller frees.
 * Errors: those of nu_file_read() (NOT_FOUND, PERMISSION, IO, TOO_LARGE),
 * and those of station_pkg_open().
 */
int station_pkg_read(const char *path, const uint8_t signer_pub[NU_P256_PUB_LEN], uint64_t now_ms,
                     struct station_pkg *out, uint8_t **out_buf, size_t *out_len);

#endif
