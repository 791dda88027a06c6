/*
 * ratelimit — per-identity publish limits for the broker (issue 9).
 *
 * Mosquitto 2.0 has one message_size_limit for every client and no rate
 * limit, so one identity flooding garbage makes the broker receive, store
 * and relay every message to the cloud: measured, a station sending 256 KiB
 * garbage from 8 threads kept the broker busy enough that a programmer's
 * cert.request p99 was ~560 ms. nusec_auth asks this module, for every
 * publish of an authenticated client (MOSQ_EVT_MESSAGE, after the topic
 * ACL), whether to let it through:
 *   - a payload limit per role and operation: firmware.sign from an OEM
 *     identity may carry firmware_payload_max (a 4 MiB image); any other
 *     publish of any role but cloud at most payload_max;
 *   - a token bucket per identity for messages and one for bytes, with a
 *     rate and a burst per role (cloud: unlimited). A refused publish takes
 *     no tokens, so a client over its rate gets through again as soon as
 *     the bucket refills;
 *   - refusals are counted per identity: the first of an interval is to be
 *     logged at once (out_log), the rest come back as one summary per
 *     identity and interval (nusec_rl_flush), so a flood cannot flood the
 *     log either.
 * Pure policy: no Mosquitto, no clock (callers pass a monotonic now_ms);
 * unit-tested in tests/unit/broker. Not thread-safe (the broker's event
 * loop is one thread).
 */
#ifndef NUSEC_RATELIMIT_H
#define NUSEC_RATELIMIT_H

#include "acl.h"

#include <stdbool.h>
#include <stdint.h>

/* enum nusec_role values are 0..NUSEC_ROLE_SITE. */
#define NUSEC_RL_ROLES (NUSEC_ROLE_SITE + 1)
/* Identities tracked at once; beyond, a new identity is not limited (its
 * certificate already got it here: the limit protects, it does not admit). */
#define NUSEC_RL_IDS_MAX 100000u

struct nusec_rl; /* opaque: the configuration and one entry per recent sender */

/* One role's buckets. msgs_per_s == 0: no rate limit for the role. */
struct nusec_rl_rate {
    uint32_t msgs_per_s;
    uint32_t msg_burst;
    uint64_t bytes_per_s;
    uint64_t byte_burst;
};

struct nusec_rl_config {
    bool enabled;                  /* false: payload limits only, no buckets */
    uint32_t payload_max;          /* any publish but an OEM's firmware.sign */
    uint32_t firmware_payload_max; /* firmware.sign from an OEM identity */
    uint32_t log_interval_s;       /* refusal summaries at most this often */
    struct nusec_rl_rate rate[NUSEC_RL_ROLES];
};

enum nusec_rl_verdict {
    NUSEC_RL_PASS = 0,
    NUSEC_RL_TOO_LARGE, /* over its role's and operation's payload limit */
    NUSEC_RL_MSG_RATE,  /* over the identity's message rate */
    NUSEC_RL_BYTE_RATE, /* over the identity's byte rate */
};

/* One identity's refusals of one interval, beyond the one logged at once. */
struct nusec_rl_report {
    const char *id;
    enum nusec_role role;
    uint64_t refused;    /* publishes refused in the interval, the logged one excluded */
    uint64_t too_large;  /* of which over the payload limit */
    uint64_t over_rate;  /* of which over the message or byte rate */
    uint64_t bytes;      /* their payload bytes */
    uint32_t seconds;    /* length of the interval */
};

/* The defaults (broker/README.md "Limits"). */
void nusec_rl_config_default(struct nusec_rl_config *out);

/*
 * Apply one plugin option (key without "plugin_opt_"): rate_limit
 * (true|false), payload_max, firmware_payload_max, refusal_log_s, and
 * rate_<role> "MSGS_PER_S/MSG_BURST/BYTES_PER_S/BYTE_BURST" (or "off").
 * Returns NU_OK, NU_ERR_NOT_FOUND when the key is not one of these (the
 * caller tries its own), NU_ERR_INVALID_ARG for a bad value.
 */
int nusec_rl_config_option(struct nusec_rl_config *cfg, const char *key, const char *value);

/*
 * Check a whole configuration: limits within 1 KiB..256 MiB, every limited
 * role's byte burst at least the largest payload it may send (or it could
 * never send one), a burst at least one message. On INVALID_ARG *out_why
 * names the rule (static text).
 */
int nusec_rl_config_check(const struct nusec_rl_config *cfg, const char **out_why);

/* Errors: INVALID_ARG (nusec_rl_config_check), NOMEM. Free with nusec_rl_free(). */
int nusec_rl_new(const struct nusec_rl_config *cfg, struct nusec_rl **out);
void nusec_rl_free(struct nusec_rl *rl);

/*
 * May identity `id` (role `role`) publish `len` bytes to `topic` now?
 * PASS takes a message and `len` bytes from its buckets; a refusal takes
 * nothing and is counted. *out_log is true for the identity's first refusal
 * of its interval (the caller logs that one in full), else false.
 */
enum nusec_rl_verdict nusec_rl_admit(struct nusec_rl *rl, const char *id, enum nusec_role role,
                                     const char *topic, uint32_t len, uint64_t now_ms,
                                     bool *out_log);

/*
 * End the intervals that are over: fn(ctx, report) for each identity with
 * refusals beyond the logged one; counters reset. Identities whose buckets
 * are full again and that have nothing to report are forgotten (a full
 * bucket is what a new identity gets), so the table holds only recent
 * senders. Call it from the broker's tick.
 */
void nusec_rl_flush(struct nusec_rl *rl, uint64_t now_ms,
                    void (*fn)(void *ctx, const struct nusec_rl_report *r), void *ctx);

/* Identities tracked now (tests, logs). */
size_t nusec_rl_count(const struct nusec_rl *rl);

/* Why a verdict refused, for log lines: static text. */
const char *nusec_rl_verdict_text(enum nusec_rl_verdict v);

/* The payload limit for `role` publishing to `topic` (0: unlimited). */
uint32_t nusec_rl_payload_limit(const struct nusec_rl_config *cfg, enum nusec_role role,
                                const char *topic);

#endif
