/* ratelimit: see ratelimit.h. */
#include "ratelimit.h"

#include "nu_err.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

/* NU_ENVELOPE_MAX (libnusec/nu_envelope.h, not linked here): a 4 MiB
 * firmware image plus 64 KiB; the unit test checks they agree. */
#define RL__FIRMWARE_PAYLOAD_MAX 4259840u
/* The cloud's payload_max (64 KiB) plus room for a 64 KiB sealed package in
 * its signed PackageDelivery envelope on a programmer's cmd topic. */
#define RL__PAYLOAD_MAX (80u * 1024u)
#define RL__PAYLOAD_FLOOR 1024u
#define RL__PAYLOAD_CEIL (256u * 1024u * 1024u)
#define RL__RATE_CEIL 1000000000ull /* bytes or messages per second */
/* A refill never spans more than this (and keeps the products in range). */
#define RL__REFILL_MAX_MS 3600000ull
/* nusec_rl_flush() scans the table at most this often. */
#define RL__FLUSH_MS 1000u
#define RL__MiB (1024ull * 1024ull)

struct rl__entry {
    char id[NUSEC_ACL_ID_MAX + 1]; /* "" = free slot */
    uint8_t role;
    uint64_t msg_m;  /* message tokens x 1000 */
    uint64_t byte_m; /* byte tokens x 1000 */
    uint64_t last_ms;
    uint64_t since_ms; /* first refusal of the interval */
    uint64_t refused, too_large, over_rate, bytes;
};

struct nusec_rl {
    struct nusec_rl_config cfg;
    struct rl__entry *slots;
    size_t cap; /* a power of two */
    size_t count;
    uint64_t last_flush_ms;
};

void nusec_rl_config_default(struct nusec_rl_config *out)
{
    /* Far above what a line produces (a programmer's peak is firmware
     * delivery: ~300 chunk requests of a few hundred bytes, then a few
     * messages of ~1 KiB per device; a station's, one 64 KiB package per
     * programmer at a job's start), far below what a flood needs. */
    static const struct nusec_rl_rate client = {1000, 10000, 1 * RL__MiB, 8 * RL__MiB};
    /* A site's bridge carries its station's and all its programmers' traffic. */
    static const struct nusec_rl_rate site = {8000, 80000, 32 * RL__MiB, 128 * RL__MiB};
    /* firmware.sign: three 4 MiB images back to back, then one every ~4 s
     * (an OEM signs a few images a day; every 4 MiB message the broker
     * relays is held in its memory and its persistence snapshots). */
    static const struct nusec_rl_rate oem = {1000, 10000, 1 * RL__MiB, 16 * RL__MiB};
    memset(out, 0, sizeof(*out));
    out->enabled = true;
    out->payload_max = RL__PAYLOAD_MAX;
    out->firmware_payload_max = RL__FIRMWARE_PAYLOAD_MAX;
    out->log_interval_s = 10;
    out->rate[NUSEC_ROLE_STATION] = client;
    out->rate[NUSEC_ROLE_MONITOR] = client;
    out->rate[NUSEC_ROLE_PROGRAMMER] = client;
    out->rate[NUSEC_ROLE_OEM] = oem;
    out->rate[NUSEC_ROLE_SITE] = site;
    /* NONE never gets here (unauthenticated); CLOUD answers everyone: unlimited. */
}

/* A decimal number in [lo, hi], the whole string. */
static int rl__number(const char *s, uint64_t lo, uint64_t hi, uint64_t *out)
{
    char *end = NULL;
    if (!s || *s < '0' || *s > '9')
        return NU_ERR_INVALID_ARG;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return NU_ERR_INVALID_ARG;
    *out = v;
    return NU_OK;
}

/* "MSGS_PER_S/MSG_BURST/BYTES_PER_S/BYTE_BURST" or "off". */
static int rl__rate_parse(const char *s, struct nusec_rl_rate *out)
{
    char buf[128], *save = NULL;
    uint64_t v[4];
    if (strcmp(s, "off") == 0) {
        memset(out, 0, sizeof(*out));
        return NU_OK;
    }
    if (strlen(s) >= sizeof(buf))
        return NU_ERR_INVALID_ARG;
    strcpy(buf, s);
    char *tok = strtok_r(buf, "/", &save);
    for (int i = 0; i < 4; i++, tok = strtok_r(NULL, "/", &save)) {
        if (!tok || rl__number(tok, 1, RL__RATE_CEIL * (i == 3 ? 4 : 1), &v[i]) != NU_OK)
            return NU_ERR_INVALID_ARG;
    }
    if (tok || v[0] > UINT32_MAX || v[1] > UINT32_MAX)
        return NU_ERR_INVALID_ARG;
    *out = (struct nusec_rl_rate){(uint32_t)v[0], (uint32_t)v[1], v[2], v[3]};
    return NU_OK;
}

int nusec_rl_config_option(struct nusec_rl_config *cfg, const char *key, const char *value)
{
    uint64_t v = 0;
    if (!cfg || !key || !value)
        return NU_ERR_INVALID_ARG;
    if (strcmp(key, "rate_limit") == 0) {
        if (strcmp(value, "true") != 0 && strcmp(value, "false") != 0)
            return NU_ERR_INVALID_ARG;
        cfg->enabled = value[0] == 't';
        return NU_OK;
    }
    if (strcmp(key, "payload_max") == 0 || strcmp(key, "firmware_payload_max") == 0) {
        if (rl__number(value, RL__PAYLOAD_FLOOR, RL__PAYLOAD_CEIL, &v) != NU_OK)
            return NU_ERR_INVALID_ARG;
        *(key[0] == 'p' ? &cfg->payload_max : &cfg->firmware_payload_max) = (uint32_t)v;
        return NU_OK;
    }
    if (strcmp(key, "refusal_log_s") == 0) {
        if (rl__number(value, 1, 3600, &v) != NU_OK)
            return NU_ERR_INVALID_ARG;
        cfg->log_interval_s = (uint32_t)v;
        return NU_OK;
    }
    if (strncmp(key, "rate_", 5) == 0) {
        enum nusec_role role = nusec_acl_role_parse(key + 5, strlen(key + 5));
        if (role == NUSEC_ROLE_NONE)
            return NU_ERR_NOT_FOUND;
        return rl__rate_parse(value, &cfg->rate[role]);
    }
    return NU_ERR_NOT_FOUND;
}

int nusec_rl_config_check(const struct nusec_rl_config *cfg, const char **out_why)
{
    const char *why = NULL;
    if (cfg->payload_max < RL__PAYLOAD_FLOOR || cfg->payload_max > RL__PAYLOAD_CEIL ||
        cfg->firmware_payload_max < RL__PAYLOAD_FLOOR ||
        cfg->firmware_payload_max > RL__PAYLOAD_CEIL)
        why = "payload limits must be 1 KiB..256 MiB";
    else if (cfg->log_interval_s < 1 || cfg->log_interval_s > 3600)
        why = "refusal_log_s must be 1..3600";
    for (int r = 0; !why && r < NUSEC_RL_ROLES; r++) {
        const struct nusec_rl_rate *x = &cfg->rate[r];
        uint32_t biggest = r == NUSEC_ROLE_OEM && cfg->firmware_payload_max > cfg->payload_max
                               ? cfg->firmware_payload_max
                               : cfg->payload_max;
        if (x->msgs_per_s == 0 && (x->msg_burst || x->bytes_per_s || x->byte_burst))
            why = "a rate is either off or all four numbers";
        else if (x->msgs_per_s && (!x->msg_burst || !x->bytes_per_s || !x->byte_burst))
            why = "a rate is either off or all four numbers";
        else if (x->msgs_per_s && (x->bytes_per_s > RL__RATE_CEIL || x->byte_burst > 4 * RL__RATE_CEIL))
            why = "byte rate or burst too large";
        else if (x->msgs_per_s && x->byte_burst < biggest)
            why = "a role's byte burst is below the largest payload it may send";
    }
    if (out_why)
        *out_why = why;
    return why ? NU_ERR_INVALID_ARG : NU_OK;
}

int nusec_rl_new(const struct nusec_rl_config *cfg, struct nusec_rl **out)
{
    if (!cfg || !out || nusec_rl_config_check(cfg, NULL) != NU_OK)
        return NU_ERR_INVALID_ARG;
    struct nusec_rl *rl = calloc(1, sizeof(*rl));
    if (!rl)
        return NU_ERR_NOMEM;
    rl->cfg = *cfg;
    rl->cap = 64;
    rl->slots = calloc(rl->cap, sizeof(*rl->slots));
    if (!rl->slots) {
        free(rl);
        return NU_ERR_NOMEM;
    }
    *out = rl;
    return NU_OK;
}

void nusec_rl_free(struct nusec_rl *rl)
{
    if (!rl)
        return;
    free(rl->slots);
    free(rl);
}

size_t nusec_rl_count(const struct nusec_rl *rl)
{
    return rl ? rl->count : 0;
}

static size_t rl__hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++)
        h = (h ^ (uint8_t)*s) * 1099511628211ull;
    return (size_t)h;
}

/* The slot of `id`, or the free slot where it would go. */
static struct rl__entry *rl__slot(struct rl__entry *slots, size_t cap, const char *id)
{
    size_t i = rl__hash(id) & (cap - 1);
    while (slots[i].id[0] && strcmp(slots[i].id, id) != 0)
        i = (i + 1) & (cap - 1);
    return &slots[i];
}

/* Move every entry `keep` accepts into a table of `cap` slots. NOMEM leaves rl as it was. */
static int rl__rehash(struct nusec_rl *rl, size_t cap, uint64_t now_ms,
                      bool (*keep)(const struct nusec_rl *, const struct rl__entry *, uint64_t))
{
    struct rl__entry *slots = calloc(cap, sizeof(*slots));
    size_t count = 0;
    if (!slots)
        return NU_ERR_NOMEM;
    for (size_t i = 0; i < rl->cap; i++) {
        if (rl->slots[i].id[0] && (!keep || keep(rl, &rl->slots[i], now_ms))) {
            *rl__slot(slots, cap, rl->slots[i].id) = rl->slots[i];
            count++;
        }
    }
    free(rl->slots);
    rl->slots = slots;
    rl->cap = cap;
    rl->count = count;
    return NU_OK;
}

static void rl__refill(const struct nusec_rl_rate *r, struct rl__entry *e, uint64_t now_ms)
{
    if (now_ms <= e->last_ms)
        return;
    uint64_t dt = now_ms - e->last_ms, m = r->msg_burst * 1000ull, b = r->byte_burst * 1000ull;
    if (dt > RL__REFILL_MAX_MS)
        dt = RL__REFILL_MAX_MS;
    e->last_ms = now_ms;
    e->msg_m = e->msg_m + r->msgs_per_s * dt > m ? m : e->msg_m + r->msgs_per_s * dt;
    e->byte_m = e->byte_m + r->bytes_per_s * dt > b ? b : e->byte_m + r->bytes_per_s * dt;
}

/* The entry of `id`, made with full buckets when new; NULL when the table is full or NOMEM. */
static struct rl__entry *rl__entry_of(struct nusec_rl *rl, const char *id, enum nusec_role role,
                                      uint64_t now_ms)
{
    struct rl__entry *e = rl__slot(rl->slots, rl->cap, id);
    if (e->id[0])
        return e;
    if (rl->count >= NUSEC_RL_IDS_MAX || strlen(id) > NUSEC_ACL_ID_MAX)
        return NULL;
    if ((rl->count + 1) * 2 > rl->cap) {
        if (rl__rehash(rl, rl->cap * 2, now_ms, NULL) != NU_OK)
            return NULL;
        e = rl__slot(rl->slots, rl->cap, id);
    }
    const struct nusec_rl_rate *r = &rl->cfg.rate[role];
    memset(e, 0, sizeof(*e));
    strcpy(e->id, id);
    e->role = (uint8_t)role;
    e->msg_m = r->msg_burst * 1000ull;
    e->byte_m = r->byte_burst * 1000ull;
    e->last_ms = now_ms;
    rl->count++;
    return e;
}

uint32_t nusec_rl_payload_limit(const struct nusec_rl_config *cfg, enum nusec_role role,
                                const char *topic)
{
    static const char req[] = "nusec/v1/cloud/req/";
    if (role == NUSEC_ROLE_CLOUD)
        return 0;
    if (role == NUSEC_ROLE_OEM && topic && strncmp(topic, req, sizeof(req) - 1) == 0) {
        const char *op = strrchr(topic, '/');
        if (strcmp(op + 1, "firmware.sign") == 0)
            return cfg->firmware_payload_max;
    }
    return cfg->payload_max;
}

enum nusec_rl_verdict nusec_rl_admit(struct nusec_rl *rl, const char *id, enum nusec_role role,
                                     const char *topic, uint32_t len, uint64_t now_ms,
                                     bool *out_log)
{
    enum nusec_rl_verdict v = NUSEC_RL_PASS;
    *out_log = false;
    if ((unsigned)role >= NUSEC_RL_ROLES || role == NUSEC_ROLE_CLOUD)
        return NUSEC_RL_PASS;
    uint32_t limit = nusec_rl_payload_limit(&rl->cfg, role, topic);
    const struct nusec_rl_rate *r = &rl->cfg.rate[role];
    bool buckets = rl->cfg.enabled && r->msgs_per_s;
    if (limit && len > limit)
        v = NUSEC_RL_TOO_LARGE;
    if (v == NUSEC_RL_PASS && !buckets)
        return NUSEC_RL_PASS;
    struct rl__entry *e = rl__entry_of(rl, id, role, now_ms);
    if (!e) /* not tracked: sizes still hold */
        return v;
    if (e->role != (uint8_t)role) { /* re-certified with another role: its buckets */
        e->role = (uint8_t)role;
        e->msg_m = r->msg_burst * 1000ull;
        e->byte_m = r->byte_burst * 1000ull;
    }
    if (buckets)
        rl__refill(r, e, now_ms);
    if (v == NUSEC_RL_PASS && e->msg_m < 1000)
        v = NUSEC_RL_MSG_RATE;
    else if (v == NUSEC_RL_PASS && e->byte_m < (uint64_t)len * 1000ull)
        v = NUSEC_RL_BYTE_RATE;
    if (v == NUSEC_RL_PASS) {
        e->msg_m -= 1000;
        e->byte_m -= (uint64_t)len * 1000ull;
        return v;
    }
    if (e->refused++ == 0) {
        e->since_ms = now_ms;
        *out_log = true;
        return v;
    }
    e->bytes += len;
    if (v == NUSEC_RL_TOO_LARGE)
        e->too_large++;
    else
        e->over_rate++;
    return v;
}

/* Keep an entry that has a refusal interval open or buckets not yet full. */
static bool rl__keep(const struct nusec_rl *rl, const struct rl__entry *e, uint64_t now_ms)
{
    const struct nusec_rl_rate *r = &rl->cfg.rate[e->role];
    if (e->refused)
        return true;
    if (!rl->cfg.enabled || !r->msgs_per_s)
        return false;
    struct rl__entry x = *e;
    rl__refill(r, &x, now_ms);
    return x.msg_m < r->msg_burst * 1000ull || x.byte_m < r->byte_burst * 1000ull;
}

void nusec_rl_flush(struct nusec_rl *rl, uint64_t now_ms,
                    void (*fn)(void *ctx, const struct nusec_rl_report *r), void *ctx)
{
    if (!rl || (rl->last_flush_ms && now_ms - rl->last_flush_ms < RL__FLUSH_MS))
        return;
    rl->last_flush_ms = now_ms ? now_ms : 1;
    uint64_t interval = rl->cfg.log_interval_s * 1000ull;
    for (size_t i = 0; i < rl->cap; i++) {
        struct rl__entry *e = &rl->slots[i];
        if (!e->id[0] || !e->refused || now_ms - e->since_ms < interval)
            continue;
        struct nusec_rl_report rep = {e->id,           (enum nusec_role)e->role, e->refused - 1,
                                      e->too_large,    e->over_rate,             e->bytes,
                                      (uint32_t)((now_ms - e->since_ms) / 1000)};
        if (rep.refused && fn)
            fn(ctx, &rep);
        e->refused = e->too_large = e->over_rate = e->bytes = 0;
    }
    size_t cap = rl->cap;
    while (cap > 64 && rl->count * 8 < cap)
        cap /= 2;
    (void)rl__rehash(rl, cap, now_ms, rl__keep); /* NOMEM: forgotten next time */
}

const char *nusec_rl_verdict_text(enum nusec_rl_verdict v)
{
    switch (v) {
    case NUSEC_RL_PASS:
        return "allowed";
    case NUSEC_RL_TOO_LARGE:
        return "payload over its role's size limit for this operation";
    case NUSEC_RL_MSG_RATE:
        return "over its identity's message rate";
    case NUSEC_RL_BYTE_RATE:
        return "over its identity's byte rate";
    }
    return "refused";
}
