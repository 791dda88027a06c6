/* pg_reply: the cloud's answers verified end to end, and the anchor that makes it possible. */
#include "pg_int.h"

#include <string.h>

/* Lower- or upper-case hex text into out[cap]: its length, 0 when malformed. */
static size_t reply__unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = strlen(hex);
    if (n == 0 || n % 2 || n / 2 > cap)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char ch = hex[i];
        unsigned v = ch >= '0' && ch <= '9'   ? (unsigned)(ch - '0')
                     : ch >= 'a' && ch <= 'f' ? (unsigned)(ch - 'a' + 10)
                     : ch >= 'A' && ch <= 'F' ? (unsigned)(ch - 'A' + 10)
                                              : 16u;
        if (v > 15u)
            return 0;
        if (i % 2 == 0)
            out[i / 2] = (uint8_t)(v << 4);
        else
            out[i / 2] |= (uint8_t)v;
    }
    return n / 2;
}

/* The key the cloud's answers must be signed with now, or NULL (none pinned). */
static const uint8_t *reply__key(const struct pg_core *c)
{
    return c->enrolled ? c->pin_package : c->anchored ? c->anchor : NULL;
}

static int reply__forged(struct pg_core *c, const char *topic, const char *why)
{
    unsigned n = atomic_fetch_add(&c->forged, 1u) + 1u;
    pg__log(c, PG_LOG_WARN, "answer to %s dropped: %s (not the cloud's; %u dropped so far)", topic,
            why, n);
    return NU_ERR_BAD_SIGNATURE;
}

/* The answer resp[len] on reply_topic, signature sig (hex), to request req[req_len]. */
static int reply__check(struct pg_core *c, const uint8_t key[PG_P256_PUB_LEN], const char *topic,
                        const uint8_t *req, size_t req_len, const char *reply_topic,
                        const uint8_t *resp, size_t len, const char *sig)
{
    uint8_t der[72], digest[32];
    size_t der_len = reply__unhex(sig, der, sizeof(der));
    if (der_len == 0)
        return reply__forged(c, topic, sig[0] ? "malformed signature" : "unsigned");
    int rc = pg__sha256(c, PG_MSGSIG_DOMAIN, sizeof(PG_MSGSIG_DOMAIN), reply_topic,
                        strlen(reply_topic) + 1, resp, len, digest);
    if (rc != NU_OK)
        return rc;
    rc = pg_p256_verify(c->hal, key, digest, der, der_len);
    if (rc == NU_ERR_BAD_SIGNATURE || rc == NU_ERR_DECODE)
        return reply__forged(c, topic, "signature does not verify with the pinned cloud key");
    if (rc != NU_OK)
        return rc;
    /* Authentic; now it must answer this request, not an earlier one. */
    struct pg_msg_env ours, theirs;
    if (pg_msg_env_decode(req, req_len, &ours) != NU_OK ||
        pg_msg_env_decode(resp, len, &theirs) != NU_OK)
        return NU_ERR_DECODE;
    if (theirs.hdr.correlation_id.len == 0)
        return NU_ERR_BUSY; /* only the overload answer is unbound: at worst we wait */
    if (theirs.hdr.correlation_id.len != ours.hdr.message_id.len ||
        !pg__ct_eq(theirs.hdr.correlation_id.p, ours.hdr.message_id.p, ours.hdr.message_id.len))
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
        return rc;
    reply_topic[sizeof(reply_topic) - 1] = sig[sizeof(sig) - 1] = '\0';
    rc = reply__check(c, key, topic, req, len, reply_topic, resp, *out_len, sig);
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
