/* pg_reply: the cloud's answers verified end to end, and the anchor that makes it possible. */
#include "pg_int.h"

#include <string.h>

/* Hex text (lower or upper case) decoded in place: its byte length, 0 when
 * malformed. In place keeps the workers' stacks small (M33). */
static size_t reply__unhex(char *hex)
{
    size_t n = strlen(hex);
    uint8_t *out = (uint8_t *)hex;
    if (n == 0 || n % 2)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = hex[i];
        unsigned v = ch >= '0' && ch <= '9'   ? (unsigned)(ch - '0')
                     : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10)
                     : ch >= 'A' && ch <= 'F' ? (unsigned)(ch - 'A' + 10)
                                              : 16u;
        if (v > 15u)
            return 0;
        /* out[i / 2] is at or before hex[i], which was just read */
        out[i / 2] = (uint8_t)(i % 2 ? out[i / 2] | v : v << 4);
    }
    return n / 2;
}

/* The key the cloud's answers must be signed with now, or NULL (none pinned). */
static const uint8_t *reply__key(const struct pg_core *c)
{
    return c->enrolled ? c->pin_package : c->anchored ? c->anchor : NULL;
}

/* why, and the transport's code when the answer never reached the check. */
static int reply__forged_code(struct pg_core *c, const char *topic, const char *why, int code)
{
    unsigned n = atomic_fetch_add(&c->forged, 1u) + 1u;
    pg__log(c, PG_LOG_WARN, "answer to %s dropped: %s%s (not the cloud's; %u dropped so far)",
            topic, why, code ? nu_err_name(code) : "", n);
    return NU_ERR_BAD_SIGNATURE;
}

static int reply__forged(struct pg_core *c, const char *topic, const char *why)
{
    return reply__forged_code(c, topic, why, NU_OK);
}

/*
 * A request that came back without an answer to verify. With a key pinned,
 * only a verified answer is the cloud's word; anything else the transport
 * reports (an answer too large for the buffer or with unreadable properties,
 * a PUBACK refusal) comes from the CM's side of the link, where nothing is
 * signed. Taken as a verdict it failed the chip with its unit spent (and
 * cleared a report from the journal) on one unsigned packet; it is dropped
 * as a forged answer instead: counted, the chip held and asked again with
 * the same idempotency key. "No answer" (TIMEOUT, CONNECTION, no subscriber,
 * MQTT), a port that cannot verify (NOT_SUPPORTED) and a local NOMEM keep
 * their meaning.
 */
static int reply__unverified(struct pg_core *c, const char *topic, int rc)
{
    if (pg__transient(rc) || rc == NU_ERR_NOT_SUPPORTED || rc == NU_ERR_NOMEM)
        return rc;
    return reply__forged_code(c, topic, "unsigned, the link said ", rc);
}

/* The signature sig (hex, decoded in place) of resp[len] on reply_topic, by key. */
static __attribute__((noinline)) int reply__signed(struct pg_core *c, const uint8_t *key,
                                                   const char *topic, const char *reply_topic,
                                                   const uint8_t *resp, size_t len, char *sig)
{
    uint8_t digest[32];
    int unsigned_ = sig[0] == '\0';
    size_t der_len = reply__unhex(sig);
    if (der_len == 0 || der_len > 72)
        return reply__forged(c, topic, unsigned_ ? "unsigned" : "malformed signature");
    int rc = pg__sha256(c, PG_MSGSIG_DOMAIN, sizeof(PG_MSGSIG_DOMAIN), reply_topic,
                        strlen(reply_topic) + 1, resp, len, digest);
    if (rc == NU_OK)
        rc = pg_p256_verify(c->hal, key, digest, (const uint8_t *)sig, der_len);
    if (rc == NU_ERR_BAD_SIGNATURE || rc == NU_ERR_DECODE)
        return reply__forged(c, topic, "signature does not verify with the pinned cloud key");
    return rc;
}

/* An authentic answer must answer this request, not an earlier one. */
static __attribute__((noinline)) int reply__bound(struct pg_core *c, const char *topic,
                                                  const uint8_t *req, size_t req_len,
                                                  const uint8_t *resp, size_t len)
{
    struct pg_msg_env env;
    uint8_t mid[PG_MSG_MESSAGE_ID_LEN];
    if (pg_msg_env_decode(req, req_len, &env) != NU_OK ||
        env.hdr.message_id.len != PG_MSG_MESSAGE_ID_LEN)
        return NU_ERR_DECODE;
    memcpy(mid, env.hdr.message_id.p, sizeof(mid));
    if (pg_msg_env_decode(resp, len, &env) != NU_OK)
        return NU_ERR_DECODE;
    if (env.hdr.correlation_id.len == 0)
        return NU_ERR_BUSY; /* only the overload answer is unbound: at worst we wait */
    if (env.hdr.correlation_id.len != sizeof(mid) ||
        !pg__ct_eq(env.hdr.correlation_id.p, mid, sizeof(mid)))
        return reply__forged(c, topic, "a replayed answer (it answers another request)");
    return NU_OK;
}

int pg__tp_request(struct pg_core *c, const char *topic, const uint8_t *req, size_t len,
                   uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len)
{
    const uint8_t *key = reply__key(c);
    if (!key) /* enrollment at the OEM without an anchor: nothing to verify with */
        return pg_tp_request(c->hal, topic, req, len, timeout_ms, resp, cap, out_len);
    char reply_topic[PG_TOPIC_MAX], sig[PG_MSGSIG_HEX_MAX];
    reply_topic[0] = sig[0] = '\0';
    int rc = pg_tp_request_signed(c->hal, topic, req, len, timeout_ms, resp, cap, out_len,
                                  reply_topic, sizeof(reply_topic), sig, sizeof(sig));
    if (rc == NU_ERR_NOT_SUPPORTED)
        pg__log(c, PG_LOG_ERROR, "%s: the transport cannot give the answer's signature", topic);
    if (rc != NU_OK)
        return reply__unverified(c, topic, rc);
    reply_topic[sizeof(reply_topic) - 1] = sig[sizeof(sig) - 1] = '\0';
    rc = reply__signed(c, key, topic, reply_topic, resp, *out_len, sig);
    if (rc == NU_OK)
        rc = reply__bound(c, topic, req, len, resp, *out_len);
    if (rc != NU_OK)
        pg__zero(resp, *out_len); /* nothing of a refused answer is read */
    return rc;
}

int pg__anchor_load(struct pg_core *c)
{
    size_t len = 0;
    c->anchored = 0;
    int rc = pg_ks_blob_get(c->hal, PG_BLOB_PIN_ANCHOR, c->anchor, sizeof(c->anchor), &len);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK;
    if (rc == NU_OK && (len != sizeof(c->anchor) || c->anchor[0] != 0x04))
        rc = NU_ERR_DECODE; /* a damaged store: refuse rather than run unanchored */
    c->anchored = rc == NU_OK;
    return rc;
}

int pg_core_anchor_set(struct pg_core *c, const uint8_t pub[PG_P256_PUB_LEN])
{
    if (!c || !pub || pub[0] != 0x04)
        return NU_ERR_INVALID_ARG;
    int rc = pg__anchor_load(c);
    if (rc != NU_OK)
        return rc;
    if (c->anchored)
        return pg__ct_eq(c->anchor, pub, PG_P256_PUB_LEN) ? NU_OK : NU_ERR_EXISTS;
    rc = pg_ks_blob_put(c->hal, PG_BLOB_PIN_ANCHOR, pub, PG_P256_PUB_LEN);
    if (rc == NU_OK)
        rc = pg__anchor_load(c);
    pg__log(c, rc ? PG_LOG_ERROR : PG_LOG_INFO, "cloud anchor pinned: %s", nu_err_name(rc));
    return rc;
}

int pg_core_anchored(const struct pg_core *c)
{
    return c && c->anchored;
}

unsigned pg_core_forged(const struct pg_core *c)
{
    return c ? atomic_load(&((struct pg_core *)c)->forged) : 0u;
}
