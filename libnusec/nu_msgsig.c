/* nu_msgsig — end-to-end message signatures and their freshness (see nu_msgsig.h). */
#include "nu_msgsig.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_util.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

int nu_msgsig_digest(const char *topic, const uint8_t *payload, size_t len, uint8_t out[32])
{
    if (!topic || !out || (!payload && len))
        return NU_ERR_INVALID_ARG;
    static const uint8_t zero = 0;
    struct nu_sha256_ctx h;
    int rc = nu_sha256_init(&h);
    if (rc)
        return rc;
    rc = nu_sha256_update(&h, NU_MSGSIG_DOMAIN, strlen(NU_MSGSIG_DOMAIN));
    if (!rc)
        rc = nu_sha256_update(&h, &zero, 1);
    if (!rc)
        rc = nu_sha256_update(&h, topic, strlen(topic));
    if (!rc)
        rc = nu_sha256_update(&h, &zero, 1);
    if (!rc && len)
        rc = nu_sha256_update(&h, payload, len);
    if (!rc)
        return nu_sha256_final(&h, out);
    nu_sha256_abort(&h);
    return rc;
}

int nu_msgsig_sign(const struct nu_signer *signer, const char *topic, const uint8_t *payload,
                   size_t len, char out[NU_MSGSIG_VALUE_MAX])
{
    if (!signer || !signer->sign_digest || !out)
        return NU_ERR_INVALID_ARG;
    uint8_t d[32], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    int rc = nu_msgsig_digest(topic, payload, len, d);
    if (!rc)
        rc = signer->sign_digest(signer->ctx, d, sig, &sig_len);
    if (!rc && (sig_len == 0 || sig_len > NU_P256_SIG_MAX))
        rc = NU_ERR_CRYPTO;
    if (!rc)
        rc = nu_hex_encode(sig, sig_len, out, NU_MSGSIG_VALUE_MAX);
    return rc;
}

int nu_msgsig_verify(const uint8_t pub[NU_P256_PUB_LEN], const char *topic, const uint8_t *payload,
                     size_t len, const char *value)
{
    if (!pub || !topic || (!payload && len))
        return NU_ERR_INVALID_ARG;
    if (!value || strlen(value) >= NU_MSGSIG_VALUE_MAX)
        return NU_ERR_BAD_SIGNATURE;
    uint8_t sig[NU_P256_SIG_MAX], d[32];
    size_t sig_len = 0;
    if (nu_hex_decode(value, sig, sizeof(sig), &sig_len) != NU_OK || sig_len == 0)
        return NU_ERR_BAD_SIGNATURE;
    int rc = nu_msgsig_digest(topic, payload, len, d);
    if (rc)
        return rc;
    rc = nu_p256_verify(pub, d, sig, sig_len);
    /* A malformed signature is as bad as a wrong one; a malformed key is ours. */
    if (rc == NU_ERR_DECODE && nu_p256_pub_check(pub) == NU_OK)
        rc = NU_ERR_BAD_SIGNATURE;
    return rc;
}

/* ---- replay cache: open addressing, linear probing ----------------------- */

struct msgsig__slot {
    uint8_t id[NU_MSGSIG_ID_LEN];
    uint64_t sent_at_ms; /* 0 = never used */
};

struct nu_msgsig_replay {
    pthread_mutex_t lock;
    uint64_t window_ms;
    size_t cap;  /* live ids allowed */
    size_t n;    /* slots */
    size_t used; /* slots ever filled since the last sweep (live or expired) */
    struct msgsig__slot *slots;
};

int nu_msgsig_replay_new(uint64_t window_ms, size_t cap, struct nu_msgsig_replay **out)
{
    if (!out || !window_ms || !cap || cap > SIZE_MAX / 4 / sizeof(struct msgsig__slot))
        return NU_ERR_INVALID_ARG;
    struct nu_msgsig_replay *r = calloc(1, sizeof(*r));
    if (!r)
        return NU_ERR_NOMEM;
    r->window_ms = window_ms;
    r->cap = cap;
    r->n = 2 * cap; /* load factor <= 1/2 after a sweep */
    r->slots = calloc(r->n, sizeof(*r->slots));
    if (!r->slots) {
        free(r);
        return NU_ERR_NOMEM;
    }
    pthread_mutex_init(&r->lock, NULL);
    *out = r;
    return NU_OK;
}

void nu_msgsig_replay_free(struct nu_msgsig_replay *r)
{
    if (!r)
        return;
    pthread_mutex_destroy(&r->lock);
    free(r->slots);
    free(r);
}

static size_t msgsig__hash(const uint8_t *id, size_t n)
{
    uint64_t h;
    memcpy(&h, id, sizeof(h)); /* ids are random: their bytes are the hash */
    return (size_t)(h % n);
}

static int msgsig__live(const struct nu_msgsig_replay *r, const struct msgsig__slot *s,
                        uint64_t now_ms)
{
    return s->sent_at_ms && s->sent_at_ms + r->window_ms >= now_ms;
}

/* Rebuild without expired ids, so probe chains stay short. Returns live count. */
static size_t msgsig__sweep(struct nu_msgsig_replay *r, uint64_t now_ms)
{
    struct msgsig__slot *old = r->slots;
    struct msgsig__slot *fresh = calloc(r->n, sizeof(*fresh));
    size_t live = 0;
    if (!fresh)
        return r->used; /* keep the old table: refusing is safe */
    for (size_t i = 0; i < r->n; i++) {
        if (!msgsig__live(r, &old[i], now_ms))
            continue;
        size_t j = msgsig__hash(old[i].id, r->n);
        while (fresh[j].sent_at_ms)
            j = (j + 1) % r->n;
        fresh[j] = old[i];
        live++;
    }
    free(old);
    r->slots = fresh;
    r->used = live;
    return live;
}

int nu_msgsig_replay_check(struct nu_msgsig_replay *r, const uint8_t *id, size_t id_len,
                           uint64_t sent_at_ms, uint64_t now_ms)
{
    if (!r || !id || id_len != NU_MSGSIG_ID_LEN)
        return NU_ERR_INVALID_ARG;
    if (sent_at_ms == 0 || sent_at_ms + r->window_ms < now_ms || sent_at_ms > now_ms + r->window_ms)
        return NU_ERR_REPLAY;
    int rc = NU_OK;
    pthread_mutex_lock(&r->lock);
    size_t j = msgsig__hash(id, r->n);
    while (r->slots[j].sent_at_ms) {
        /* An expired slot with the same id is not a replay: the time check
         * above refuses any message that old. */
        if (memcmp(r->slots[j].id, id, NU_MSGSIG_ID_LEN) == 0 &&
            msgsig__live(r, &r->slots[j], now_ms)) {
            rc = NU_ERR_REPLAY;
            goto out;
        }
        j = (j + 1) % r->n;
    }
    if (r->used >= r->cap) {
        if (msgsig__sweep(r, now_ms) >= r->cap) {
            rc = NU_ERR_BUSY;
            goto out;
        }
        j = msgsig__hash(id, r->n); /* the table was rebuilt */
        while (r->slots[j].sent_at_ms)
            j = (j + 1) % r->n;
    }
    memcpy(r->slots[j].id, id, NU_MSGSIG_ID_LEN);
    r->slots[j].sent_at_ms = sent_at_ms;
    r->used++;
out:
    pthread_mutex_unlock(&r->lock);
    return rc;
}
