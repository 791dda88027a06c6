/*
 * fuzz_ratelimit — libFuzzer target for the broker's per-identity publish
 * limits (broker/ratelimit.c): the plugin options, then a stream of
 * publishes (identity, role, topic, size, time step) as a flood would send.
 *
 * Input: record 1 is an option "key=value" applied to the defaults (a bad
 * value must be refused with INVALID_ARG, an unknown key NOT_FOUND); the
 * rest, 8 bytes per publish: identity (one of 4), topic (firmware.sign,
 * job.list, cmd, event, or the raw next bytes), payload length (u24), time
 * step (u16 ms), and every 16th publish a flush.
 *
 * Properties:
 *   - TOO_LARGE exactly when the payload is over nusec_rl_payload_limit();
 *     the cloud is never refused;
 *   - what passes never exceeds, per identity, its burst plus its rate times
 *     the time since it was first seen (messages and bytes) when the buckets
 *     are on, and nothing is refused for rate when they are off;
 *   - every refusal is either logged at once (out_log) or counted in exactly
 *     one summary: logged + summarised == refused after the final flush.
 */
#include "fuzz_common.h"
#include "ratelimit.h"

#include <string.h>

#define IDS 4

static const char *const ID[IDS] = {"st", "p1", "oem", "cloud"};
static const enum nusec_role ROLE[IDS] = {NUSEC_ROLE_STATION, NUSEC_ROLE_PROGRAMMER,
                                          NUSEC_ROLE_OEM, NUSEC_ROLE_CLOUD};

struct seen {
    int known;
    uint64_t first_ms, msgs, bytes, refused, logged;
};

static uint64_t summarised;

static void on_report(void *ctx, const struct nusec_rl_report *r)
{
    (void)ctx;
    if (r->refused != r->too_large + r->over_rate)
        FUZZ_DIE("summary of %s: %llu refused != %llu + %llu", r->id,
                 (unsigned long long)r->refused, (unsigned long long)r->too_large,
                 (unsigned long long)r->over_rate);
    summarised += r->refused;
}

static void fuzz__option(struct nusec_rl_config *cfg, const uint8_t *p, size_t n)
{
    char text[160], *eq;
    if (n >= sizeof(text))
        n = sizeof(text) - 1;
    memcpy(text, p, n);
    text[n] = 0;
    if (strlen(text) != n || !(eq = strchr(text, '=')))
        return;
    *eq = 0;
    struct nusec_rl_config before = *cfg;
    int rc = nusec_rl_config_option(cfg, text, eq + 1);
    if (rc != NU_OK && rc != NU_ERR_INVALID_ARG && rc != NU_ERR_NOT_FOUND)
        FUZZ_DIE("option %s: %s", text, nu_err_name(rc));
    if (rc != NU_OK && memcmp(&before, cfg, sizeof(before)) != 0)
        FUZZ_DIE("refused option %s changed the configuration", text);
}

static void fuzz__topic(uint8_t sel, const uint8_t *raw, char *out, size_t cap, const char *id)
{
    static const char *const ops[] = {"firmware.sign", "job.list"};
    switch (sel & 7) {
    case 0:
    case 1:
        snprintf(out, cap, "nusec/v1/cloud/req/%s/%s", id, ops[sel & 1]);
        break;
    case 2:
        snprintf(out, cap, "nusec/v1/prog/%s/cmd", id);
        break;
    case 3:
        snprintf(out, cap, "nusec/v1/events/x/%s/firmware.sign", id);
        break;
    default: /* a few raw bytes: any topic text */
        for (size_t i = 0; i < 4 && i + 1 < cap; i++)
            out[i] = raw[i] ? (char)raw[i] : '/';
        out[cap > 4 ? 4 : cap - 1] = 0;
    }
}

/* The most `r` lets through in `ms` milliseconds from full. */
static uint64_t fuzz__allowance(uint64_t burst, uint64_t per_s, uint64_t ms)
{
    return burst + per_s * ms / 1000 + 1;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct fuzz_cursor c = {data, size};
    struct nusec_rl_config cfg;
    struct nusec_rl *rl = NULL;
    struct seen seen[IDS];
    const uint8_t *opt;
    size_t opt_len;
    uint64_t now = 1000, refused = 0, logged = 0;
    nusec_rl_config_default(&cfg);
    if (fuzz_record(&c, &opt, &opt_len))
        fuzz__option(&cfg, opt, opt_len);
    int rc = nusec_rl_new(&cfg, &rl);
    if (rc == NU_ERR_INVALID_ARG && nusec_rl_config_check(&cfg, NULL) == NU_ERR_INVALID_ARG)
        return 0;
    if (rc != NU_OK)
        FUZZ_DIE("nusec_rl_new: %s", nu_err_name(rc));
    memset(seen, 0, sizeof(seen));
    summarised = 0;
    for (unsigned k = 0; c.left >= 8; k++) {
        const uint8_t *b = c.p;
        c.p += 8, c.left -= 8;
        unsigned i = b[0] % IDS;
        char topic[96];
        fuzz__topic(b[1], b + 4, topic, sizeof(topic), ID[i]);
        uint32_t len = (uint32_t)b[2] | (uint32_t)b[3] << 8 | (uint32_t)(b[4] & 0x7f) << 16;
        now += (uint64_t)b[5] | (uint64_t)b[6] << 8;
        if (b[7] & 1)
            len *= 8; /* reach the firmware limit */
        bool log = false;
        enum nusec_rl_verdict v = nusec_rl_admit(rl, ID[i], ROLE[i], topic, len, now, &log);
        uint32_t limit = nusec_rl_payload_limit(&cfg, ROLE[i], topic);
        if ((v == NUSEC_RL_TOO_LARGE) != (limit && len > limit))
            FUZZ_DIE("%s %u bytes to %s: %s, limit %u", ID[i], len, topic,
                     nusec_rl_verdict_text(v), limit);
        if (ROLE[i] == NUSEC_ROLE_CLOUD && v != NUSEC_RL_PASS)
            FUZZ_DIE("the cloud refused");
        const struct nusec_rl_rate *r = &cfg.rate[ROLE[i]];
        if (v != NUSEC_RL_PASS && v != NUSEC_RL_TOO_LARGE && (!cfg.enabled || !r->msgs_per_s))
            FUZZ_DIE("refused for rate with no rate");
        struct seen *s = &seen[i];
        if (!s->known)
            s->known = 1, s->first_ms = now;
        if (v == NUSEC_RL_PASS) {
            s->msgs++, s->bytes += len;
        } else {
            refused++;
            logged += log;
        }
        if (cfg.enabled && r->msgs_per_s && v == NUSEC_RL_PASS &&
            (s->msgs > fuzz__allowance(r->msg_burst, r->msgs_per_s, now - s->first_ms) ||
             s->bytes > fuzz__allowance(r->byte_burst, r->bytes_per_s, now - s->first_ms)))
            FUZZ_DIE("%s passed %llu msgs / %llu bytes in %llu ms", ID[i],
                     (unsigned long long)s->msgs, (unsigned long long)s->bytes,
                     (unsigned long long)(now - s->first_ms));
        if ((k & 15) == 15)
            nusec_rl_flush(rl, now, on_report, NULL);
    }
    nusec_rl_flush(rl, now + 3600u * 1000u + 1000u, on_report, NULL);
    if (logged + summarised != refused)
        FUZZ_DIE("refusals: %llu logged + %llu summarised != %llu", (unsigned long long)logged,
                 (unsigned long long)summarised, (unsigned long long)refused);
    nusec_rl_free(rl);
    return 0;
}
