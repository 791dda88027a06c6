/* pp_transport: the core's transport on a nu_mqtt session. */
#include "pp_port.h"

#include "nu_mqtt.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct pp_transport {
    struct nu_mqtt *m;
    /* One subscription (the command topic) is all the core uses. */
    pg_msg_cb cb;
    void *cb_ctx;
};

int pp_transport_create(struct nu_mqtt *m, struct pp_transport **out_t)
{
    if (!m || !out_t)
        return NU_ERR_INVALID_ARG;
    struct pp_transport *t = calloc(1, sizeof(*t));
    if (!t)
        return NU_ERR_NOMEM;
    t->m = m;
    *out_t = t;
    return NU_OK;
}

void pp_transport_destroy(struct pp_transport *t)
{
    free(t);
}

static int tp__publish(void *ctx, const char *topic, const uint8_t *p, size_t len, int qos,
                       int retain)
{
    struct pp_transport *t = ctx;
    return nu_mqtt_publish(t->m, topic, p, len, qos, retain);
}

static int tp__request(void *ctx, const char *topic, const uint8_t *p, size_t len,
                       uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len)
{
    struct pp_transport *t = ctx;
    uint8_t *r = NULL;
    size_t rlen = 0;
    int rc = nu_mqtt_request(t->m, topic, p, len, timeout_ms, &r, &rlen);
    if (rc == NU_OK && rlen > cap)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK) {
        memcpy(resp, r, rlen);
        *out_len = rlen;
    }
    free(r);
    return rc;
}

/* The answer with its end-to-end signature and the topic it came on (the
 * session's reply topic): the core verifies them against its pinned key. */
static int tp__request_signed(void *ctx, const char *topic, const uint8_t *p, size_t len,
                              uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len,
                              char *reply_topic, size_t topic_cap, char *sig, size_t sig_cap)
{
    struct pp_transport *t = ctx;
    uint8_t *r = NULL;
    size_t rlen = 0;
    char value[NU_MSGSIG_VALUE_MAX];
    const char *rt = nu_mqtt_reply_topic(t->m);
    if (!rt || strlen(rt) >= topic_cap)
        return NU_ERR_TOO_LARGE;
    int rc = nu_mqtt_request_signed(t->m, topic, p, len, timeout_ms, &r, &rlen, value);
    if (rc == NU_OK && rlen > cap)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK) {
        memcpy(resp, r, rlen);
        *out_len = rlen;
        memcpy(reply_topic, rt, strlen(rt) + 1);
        /* too long to be a signature: hand on "", which the core refuses */
        snprintf(sig, sig_cap, "%s", strlen(value) < sig_cap ? value : "");
    }
    free(r);
    return rc;
}

static void tp__handler(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *userdata)
{
    (void)m;
    struct pp_transport *t = userdata;
    t->cb(t->cb_ctx, msg->topic, msg->payload, msg->len);
}

static int tp__subscribe(void *ctx, const char *filter, pg_msg_cb cb, void *cb_ctx)
{
    struct pp_transport *t = ctx;
    if (t->cb)
        return NU_ERR_EXISTS;
    t->cb = cb;
    t->cb_ctx = cb_ctx;
    int rc = nu_mqtt_subscribe(t->m, filter, 1, tp__handler, t);
    if (rc != NU_OK)
        t->cb = NULL;
    return rc;
}

const struct pg_transport_ops pp_transport_ops = {
    .version = PG_HAL_VERSION,
    .publish = tp__publish,
    .request = tp__request,
    .subscribe = tp__subscribe,
    .request_signed = tp__request_signed,
};
