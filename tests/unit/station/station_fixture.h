/*
 * station_fixture — test helpers for the station: sealed packages made the
 * way proto/README.md says the cloud makes them (summary, SealedBox of the
 * secrets with the summary as AAD, package-key signature over
 * SHA-256(summary || sealed)), signed by any nu_signer (a software key in
 * unit tests, the HSM package key in integration tests), and event /
 * status envelopes as programmers publish them.
 */
#ifndef STATION_FIXTURE_H
#define STATION_FIXTURE_H

#include "nu_envelope.h"
#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

struct sf_pkg_opts {
    const char *job_id;
    const char *programmer_id;
    uint32_t limit;
    uint64_t expires_at_ms;    /* 0: now + 1 h */
    uint64_t created_at_ms;    /* 0: now */
    const char *firmware;      /* NULL: "blinky-1.0.0" */
    uint32_t format;           /* 0: 1 */
    const uint8_t *package_id; /* 16 bytes; NULL: random */
};

/*
 * A .nspkg for `o`, sealed to recipient_pub, signed by `signer`.
 * *out (free) holds *out_len bytes. Returns NU_OK or an NU_ERR_* code.
 */
int sf_package(const struct sf_pkg_opts *o, const struct nu_signer *signer,
               const uint8_t recipient_pub[NU_P256_PUB_LEN], uint8_t **out, size_t *out_len);

/* Write buf to dir/name; path into out[cap]. Returns NU_OK or an error. */
int sf_write(const char *dir, const char *name, const uint8_t *buf, size_t len, char *out,
             size_t cap);

/*
 * An Event envelope as `sender` publishes it (sequence `seq`), with a
 * DeviceReport when uid is not NULL. *out (free) holds *out_len bytes.
 */
int sf_event(const char *sender, uint64_t seq, const char *kind, const char *job_id,
             const uint8_t *uid, size_t uid_len, uint32_t socket, int outcome, int error,
             const char *detail, uint8_t **out, size_t *out_len);

/* A ProgrammerStatus envelope from programmer `id`. */
int sf_status(const char *id, uint64_t seq, int state, const char *job_id, uint32_t limit,
              uint32_t counter, uint8_t **out, size_t *out_len);

#endif
