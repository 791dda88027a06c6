/* pg_core: state, envelopes, requests, status, station commands. */
#include "pg_int.h"

#include <stdio.h>
#include <string.h>

enum { BOX_EMPTY = 0, BOX_BUSY = 1, BOX_FULL = 2 };

/* ---- envelopes and requests ------------------------------------------------------ */

int pg__env_start(struct pg_core *c, struct pg_pb_writer *w, uint8_t *buf, size_t cap,
                  const char *sender, const uint8_t *idem, size_t idem_len)
{
    uint8_t mid[PG_MSG_MESSAGE_ID_LEN];
    int rc = pg_rng_fill(c->hal, mid, sizeof(mid));
    if (rc != NU_OK)
        return rc == NU_ERR_NOT_SUPPORTED ? rc : NU_ERR_CRYPTO;
    struct pg_msg_hdr_out h = {
        .message_id = mid,
        .sender_id = sender ? sender : c->id,
        .sent_at_ms = pg_now_ms(c->hal),
        .sequence = c->seq_base + atomic_fetch_add(&c->seq, 1u),
        .idempotency_key = idem,
        .idempotency_key_len = idem_len,
    };
    pg_pb_writer_init(w, buf, cap);
    pg_msg_put_header(w, &h);
    return w->err;
}

/* A protobuf varint at buf[*at] (< end); its value, *at moved past it. */
static int core__varint(const uint8_t *buf, size_t end, size_t *at, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned shift = 0; *at < end && shift < 64; shift += 7) {
        uint8_t b = buf[(*at)++];
        v |= (uint64_t)(b & 0x7fu) << shift;
        if (!(b & 0x80u)) {
            *out = v;
            return NU_OK;
        }
    }
    return NU_ERR_DECODE;
}

int pg__env_restamp(struct pg_core *c, uint8_t *buf, size_t len)
{
    size_t at = 0, field_at;
    uint64_t tag, hlen, v;
    if (core__varint(buf, len, &at, &tag) != NU_OK || tag != 0x0au ||
        core__varint(buf, len, &at, &hlen) != NU_OK || hlen > len - at)
        return NU_ERR_DECODE;
    size_t end = at + (size_t)hlen;
    while (at < end) {
        if (core__varint(buf, end, &at, &tag) != NU_OK)
            return NU_ERR_DECODE;
        field_at = at;
        if ((tag & 7u) == 0) {
            if (core__varint(buf, end, &at, &v) != NU_OK)
                return NU_ERR_DECODE;
            /* sent_at_ms (3): the same width until the year 2109; else left as is. */
            uint64_t now = pg_now_ms(c->hal), t = now;
            size_t width = 1;
            while (t >= 0x80u) {
                t >>= 7;
                width++;
            }
            if ((tag >> 3) == 3 && width == at - field_at) {
                for (size_t i = 0; i < width; i++, now >>= 7)
                    buf[field_at + i] = (uint8_t)((now & 0x7fu) | (i + 1 < width ? 0x80u : 0));
            }
        } else if ((tag & 7u) == 2) {
            if (core__varint(buf, end, &at, &v) != NU_OK || v > end - at)
                return NU_ERR_DECODE;
            if ((tag >> 3) == 1 && v == PG_MSG_MESSAGE_ID_LEN) {
                int rc = pg_rng_fill(c->hal, buf + at, PG_MSG_MESSAGE_ID_LEN);
                if (rc != NU_OK)
                    return rc;
            }
            at += (size_t)v;
        } else {
            return NU_ERR_DECODE; /* the core writes no other wire types in a header */
        }
    }
    return NU_OK;
}

static int core__req_topic(const struct pg_core *c, const char *sender, const char *op, char *topic,
                           size_t cap)
{
    int n = snprintf(topic, cap, "nusec/v1/cloud/req/%s/%s", sender ? sender : c->id, op);
    return n < 0 || (size_t)n >= cap ? NU_ERR_TOO_LARGE : NU_OK;
}

/* 1 when the answer resp[len] is the cloud's Error REPLAY. */
static __attribute__((noinline)) int core__replayed(const uint8_t *resp, size_t len)
{
    struct pg_msg_env env;
    return pg_msg_reply_decode(resp, len, PG_BODY_ERROR, &env, NULL) == NU_ERR_REPLAY;
}

int pg__request(struct pg_core *c, const char *sender, const char *op, uint8_t *req, size_t len,
                uint8_t *resp, size_t cap, size_t *out_len)
{
    char topic[PG_TOPIC_MAX];
    int rc = core__req_topic(c, sender, op, topic, sizeof(topic));
    if (rc != NU_OK)
        return rc;
    uint32_t delay = c->retry_delay_ms;
    for (unsigned attempt = 0; attempt <= c->retries; attempt++) {
        if (attempt) {
            pg__log(c, PG_LOG_WARN, "%s: %s, retry %u", op, nu_err_name(rc), attempt);
            pg_sleep_ms(c->hal, delay);
            delay *= 2;
        }
        rc = pg__tp_request(c, topic, req, len, c->timeout_ms, resp, cap, out_len);
        pg__link_note(c, rc);
        /* REPLAY answers a copy of this very request (a resend after a
         * reconnect whose first answer a bridge dropped): the cloud is there
         * and a new try carries a new message id. */
        if (rc == NU_OK && core__replayed(resp, *out_len) &&
            (rc = pg__env_restamp(c, req, len)) == NU_OK)
            rc = NU_ERR_REPLAY; /* the next try goes out with a new message id */
        if (!pg__transient(rc) && rc != NU_ERR_REPLAY)
            break;
    }
    return rc;
}

int pg__request_try(struct pg_core *c, const char *op, const uint8_t *req, size_t len,
                    unsigned attempt, uint8_t *resp, size_t cap, size_t *out_len)
{
    char topic[PG_TOPIC_MAX];
    int rc = core__req_topic(c, NULL, op, topic, sizeof(topic));
    if (rc != NU_OK)
        return rc;
    /* A request lost in a cloud crash is sent again after PG_FIRST_TIMEOUT_MS,
     * not after the full timeout; the timeout doubles from there, so a slow
     * but alive cloud is not flooded. */
    uint32_t tmo = c->timeout_ms;
    if (attempt < 8 && (PG_FIRST_TIMEOUT_MS << attempt) < tmo)
        tmo = PG_FIRST_TIMEOUT_MS << attempt;
    rc = pg__tp_request(c, topic, req, len, tmo, resp, cap, out_len);
    /* A forged answer was dropped (counted): the genuine one is lost to us, so
     * the chip is held and asked for again, same idempotency key, no new unit. */
    if (rc == NU_ERR_BAD_SIGNATURE)
        rc = NU_ERR_TIMEOUT;
    pg__link_note(c, rc);
    return rc;
}

int pg__cloud_transient(int rc)
{
    switch (rc) {
    case NU_ERR_TIMEOUT:
    case NU_ERR_CONNECTION:
    case NU_ERR_MQTT:
    case NU_ERR_BUSY:
    case NU_ERR_REPLAY: /* a copy of this request reached the cloud twice; ask again */
    case NU_ERR_IO:
    case NU_ERR_DB:
    case NU_ERR_HSM:
    case NU_ERR_NOMEM:
        return 1;
    default:
        return 0;
    }
}

/* A stop that ends a hold. LIMIT does not: it only means "no new chip", and a
 * chip already waiting for the cloud has its unit, so it is finished when the
 * cloud answers instead of being left in its socket for a run that a line at
 * its limit never starts (issue 15: a WAN cut while the last units waited). */
int pg__hold_stopped(const struct pg_core *c)
{
    int stop = atomic_load(&c->stop);
    return stop != PG_STOP_NONE && stop != PG_STOP_LIMIT;
}

int pg__hold_wait(struct pg_core *c, uint32_t *delay)
{
    uint32_t cap =
        c->retry_delay_ms * 32u < PG_HOLD_CAP_MS ? c->retry_delay_ms * 32u : PG_HOLD_CAP_MS;
    uint32_t d = *delay < cap ? *delay : cap;
    uint16_t r = 0;
    /* Jitter: programmers that lost the cloud together do not come back together. */
    if (pg_rng_fill(c->hal, &r, sizeof(r)) != NU_OK)
        r = 0;
    uint32_t wait = d / 2u + (uint32_t)r % (d / 2u + 1u);
    *delay = d * 2u < cap ? d * 2u : cap;
    while (wait) {
        if (pg__hold_stopped(c))
            return NU_ERR_STATE;
        if (pg_now_ms(c->hal) >= c->job.expires_at_ms) {
            pg_core_stop(c, PG_STOP_JOB);
            return NU_ERR_EXPIRED;
        }
        uint32_t step = wait < 100u ? wait : 100u;
        pg_sleep_ms(c->hal, step);
        wait -= step;
    }
    return pg__hold_stopped(c) ? NU_ERR_STATE : NU_OK;
}

int pg__publish_event(struct pg_core *c, const char *kind, const uint8_t *env, size_t len)
{
    char topic[PG_TOPIC_MAX];
    int n = snprintf(topic, sizeof(topic), "nusec/v1/events/programmer/%s/%s", c->id, kind);
    if (n < 0 || (size_t)n >= sizeof(topic))
        return NU_ERR_TOO_LARGE;
    return pg_tp_publish(c->hal, topic, env, len, 1, 0);
}

/* ---- init -------------------------------------------------------------------------- */

int pg__pins_load(struct pg_core *c)
{
    uint8_t pin[PG_P256_PUB_LEN];
    size_t len = 0;
    c->enrolled = 0;
    int rc = pg_ks_blob_get(c->hal, PG_BLOB_PIN_PACKAGE, pin, sizeof(pin), &len);
    if (rc == NU_OK && len == sizeof(pin)) {
        memcpy(c->pin_package, pin, sizeof(pin));
        rc = pg_ks_blob_get(c->hal, PG_BLOB_PIN_ROTPK, pin, sizeof(pin), &len);
    }
    if (rc == NU_OK && len == sizeof(pin)) {
        memcpy(c->pin_rotpk, pin, sizeof(pin));
        uint8_t cert[8];
        rc = pg_ks_blob_get(c->hal, PG_BLOB_IDENTITY_CERT, cert, sizeof(cert), &len);
        c->enrolled = rc == NU_OK || rc == NU_ERR_TOO_LARGE;
    }
    if (rc == NU_OK && !c->enrolled)
        rc = NU_ERR_DECODE; /* a pin of the wrong size: damaged store */
    return rc == NU_ERR_NOT_FOUND || rc == NU_ERR_TOO_LARGE || c->enrolled ? NU_OK : rc;
}

/* Every table present must speak a HAL version this core knows (a later
 * version only appends ops, so an older table is fine). */
static int core__hal_ok(const struct pg_hal *h)
{
    const uint32_t v[] = {
        h->ks ? h->ks->version : 1,   h->flash ? h->flash->version : 1,
        h->tp ? h->tp->version : 1,   h->tgt ? h->tgt->version : 1,
        h->cry ? h->cry->version : 1, h->clk ? h->clk->version : 1,
        h->rng ? h->rng->version : 1, h->log ? h->log->version : 1,
    };
    if (h->version != PG_HAL_VERSION)
        return 0;
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        if (v[i] == 0 || v[i] > PG_HAL_VERSION)
            return 0;
    }
    return 1;
}

int pg_core_init(struct pg_core *c, const struct pg_hal *hal, const struct pg_config *cfg)
{
    if (!c || !hal || !cfg || !cfg->programmer_id || !core__hal_ok(hal))
        return NU_ERR_INVALID_ARG;
    struct pg_bytes id = {(const uint8_t *)cfg->programmer_id, strlen(cfg->programmer_id)};
    if (!pg_msg_id_ok(id) || cfg->n_sockets < 1 || cfg->n_sockets > PG_MAX_SOCKETS)
        return NU_ERR_INVALID_ARG;
    memset(c, 0, sizeof(*c));
    c->hal = hal;
    memcpy(c->id, id.p, id.len);
    c->n_sockets = cfg->n_sockets;
    c->timeout_ms = cfg->request_timeout_ms ? cfg->request_timeout_ms : 10000;
    c->retries = cfg->retries ? cfg->retries : 3;
    c->retry_delay_ms = cfg->retry_delay_ms ? cfg->retry_delay_ms : 200;
    c->fw_version = cfg->firmware_version;
    c->lease_abandon_ms = cfg->lease_abandon_ms ? cfg->lease_abandon_ms : 10000;
    /* Sequences keep growing across restarts (same rule as nu_envelope). */
    c->seq_base = pg_now_ms(hal) * 1000u;
    atomic_store(&c->journal_pending, 1);
    int rc = pg__pins_load(c);
    if (rc == NU_OK)
        rc = pg__anchor_load(c);
    if (rc != NU_OK)
        return rc;
    if (c->enrolled)
        pg__package_reload(c);
    return NU_OK;
}

void pg_core_deinit(struct pg_core *c)
{
    if (c)
        pg__zero(c, sizeof(*c));
}

int pg_core_enrolled(const struct pg_core *c)
{
    return c && c->enrolled;
}

const char *pg_core_job_id(const struct pg_core *c)
{
    return c && c->job.loaded ? c->job.job_id : NULL;
}

int pg_core_identity_cert(struct pg_core *c, uint8_t *buf, size_t cap, size_t *out_len)
{
    return pg_ks_blob_get(c->hal, PG_BLOB_IDENTITY_CERT, buf, cap, out_len);
}

/* ---- stop / counts ----------------------------------------------------------------- */

void pg_core_stop(struct pg_core *c, enum pg_stop reason)
{
    int cur = PG_STOP_NONE;
    int overrides = reason == PG_STOP_COMMAND || reason == PG_STOP_SHUTDOWN;
    while (!atomic_compare_exchange_weak(&c->stop, &cur, (int)reason)) {
        if (cur != PG_STOP_NONE && !(cur == PG_STOP_LIMIT && overrides))
            return; /* cur is the reason that won */
    }
}

void pg_core_counts(const struct pg_core *c, uint32_t *out_done, uint32_t *out_failed)
{
    uint32_t d = 0, f = 0;
    for (unsigned i = 0; i < c->n_sockets; i++) {
        d += atomic_load(&((struct pg_core *)c)->sock[i].done);
        f += atomic_load(&((struct pg_core *)c)->sock[i].failed);
    }
    if (out_done)
        *out_done = d;
    if (out_failed)
        *out_failed = f;
}

/* ---- status ---------------------------------------------------------------------------- */

int pg_core_topic_status(const struct pg_core *c, char *topic, size_t cap)
{
    int n = snprintf(topic, cap, "nusec/v1/prog/%s/status", c->id);
    return n < 0 || (size_t)n >= cap ? NU_ERR_TOO_LARGE : NU_OK;
}

int pg_core_status_encode(struct pg_core *c, enum pg_prog_state state, uint8_t *buf, size_t cap,
                          size_t *out_len)
{
    struct pg_msg_sock_out socks[PG_MAX_SOCKETS];
    for (unsigned i = 0; i < c->n_sockets; i++) {
        socks[i].socket = i;
        socks[i].done = atomic_load(&c->sock[i].done);
        socks[i].failed = atomic_load(&c->sock[i].failed);
        int ph = atomic_load(&c->sock[i].busy);
        socks[i].state = ph == PG_SOCK_WAIT_CLOUD ? "waiting-cloud"
                         : ph == PG_SOCK_BUSY     ? "busy"
                         : ph == PG_SOCK_PAUSED   ? "paused"
                                                  : "idle";
    }
    uint32_t counter = 0;
    if (c->job.loaded && pg_ks_counter_read(c->hal, c->job.job_id, &counter) != NU_OK)
        counter = 0;
    if (state == 0)
        state = atomic_load(&c->producing) ? PG_PROG_PRODUCING : PG_PROG_IDLE;
    struct pg_msg_status_out s = {
        .programmer_id = c->id,
        .state = state,
        .job_id = c->job.loaded ? c->job.job_id : NULL,
        .limit = c->job.loaded ? c->job.limit : 0,
        .counter = counter,
        .sockets = socks,
        .n_sockets = c->n_sockets,
        .firmware_version = c->fw_version,
        .cloud_lost_ms = pg__link_lost_ms(c),
    };
    struct pg_pb_writer w;
    int rc = pg__env_start(c, &w, buf, cap, NULL, NULL, 0);
    if (rc != NU_OK)
        return rc;
    pg_msg_put_status(&w, &s);
    if (w.err)
        return w.err;
    *out_len = w.len;
    return NU_OK;
}

static int core__status_send(struct pg_core *c, enum pg_prog_state state, uint8_t *buf, size_t cap)
{
    char topic[PG_TOPIC_MAX];
    size_t len = 0;
    int rc = pg_core_topic_status(c, topic, sizeof(topic));
    if (rc == NU_OK)
        rc = pg_core_status_encode(c, state, buf, cap, &len);
    if (rc == NU_OK)
        rc = pg_tp_publish(c->hal, topic, buf, len, 1, 1);
    if (rc != NU_OK)
        pg__log(c, PG_LOG_WARN, "status publish: %s", nu_err_name(rc));
    return rc;
}

int pg_core_status_publish(struct pg_core *c, enum pg_prog_state state)
{
    atomic_store(&c->last_status_ms, (unsigned)pg_mono_ms(c->hal));
    return core__status_send(c, state, c->ctl_buf, sizeof(c->ctl_buf));
}

void pg__status_now(struct pg_core *c, uint8_t *buf, size_t cap)
{
    atomic_store(&c->last_status_ms, (unsigned)pg_mono_ms(c->hal));
    core__status_send(c, 0, buf, cap);
}

void pg__status_maybe(struct pg_core *c, uint8_t *buf, size_t cap)
{
    unsigned now = (unsigned)pg_mono_ms(c->hal);
    unsigned last = atomic_load(&c->last_status_ms);
    if (now - last < 1000u)
        return;
    /* One worker wins the slot; the others skip. */
    if (!atomic_compare_exchange_strong(&c->last_status_ms, &last, now))
        return;
    core__status_send(c, 0, buf, cap);
}

/* ---- station commands ---------------------------------------------------------------- */

int pg_core_subscribe(struct pg_core *c)
{
    char topic[PG_TOPIC_MAX];
    int n = snprintf(topic, sizeof(topic), "nusec/v1/prog/%s/cmd", c->id);
    if (n < 0 || (size_t)n >= sizeof(topic))
        return NU_ERR_TOO_LARGE;
    return pg_tp_subscribe(c->hal, topic, pg_core_on_message, c);
}

static void core__queue_package(struct pg_core *c, struct pg_bytes body)
{
    struct pg_msg_delivery d;
    int rc = pg_msg_delivery_decode(body, &d);
    if (rc == NU_OK && (d.sealed_package.len == 0 || d.sealed_package.len > PG_PACKAGE_MAX))
        rc = NU_ERR_TOO_LARGE;
    int empty = BOX_EMPTY;
    if (rc == NU_OK && !atomic_compare_exchange_strong(&c->pkg_box_state, &empty, BOX_BUSY))
        rc = NU_ERR_BUSY;
    if (rc != NU_OK) {
        pg__log(c, PG_LOG_WARN, "package delivery dropped: %s", nu_err_name(rc));
        return;
    }
    memcpy(c->pkg_box, d.sealed_package.p, d.sealed_package.len);
    c->pkg_box_len = d.sealed_package.len;
    atomic_store(&c->pkg_box_state, BOX_FULL);
}

static void core__queue_command(struct pg_core *c, struct pg_bytes body)
{
    struct pg_msg_command cmd;
    int rc = pg_msg_command_decode(body, &cmd);
    if (rc == NU_OK && cmd.action != PG_ACTION_START && cmd.action != PG_ACTION_STOP)
        rc = NU_ERR_NOT_SUPPORTED;
    if (rc == NU_OK && cmd.job_id.len && !pg_msg_id_ok(cmd.job_id))
        rc = NU_ERR_DECODE;
    if (rc != NU_OK) {
        pg__log(c, PG_LOG_WARN, "production command dropped: %s", nu_err_name(rc));
        return;
    }
    if (cmd.action == PG_ACTION_STOP)
        pg_core_stop(c, PG_STOP_COMMAND); /* at once, not after the queue */
    int s = atomic_exchange(&c->cmd_box_state, BOX_BUSY);
    if (s == BOX_BUSY)
        return; /* another thread is writing: the newer command wins there */
    c->cmd_action = cmd.action;
    c->cmd_job[0] = '\0';
    if (cmd.job_id.len)
        pg_msg_id_copy(cmd.job_id, c->cmd_job);
    atomic_store(&c->cmd_box_state, BOX_FULL);
}

void pg_core_on_message(void *core, const char *topic, const uint8_t *payload, size_t len)
{
    struct pg_core *c = core;
    struct pg_msg_env env;
    int rc = pg_msg_env_decode(payload, len, &env);
    if (rc != NU_OK) {
        pg__log(c, PG_LOG_WARN, "message on %s dropped: %s", topic, nu_err_name(rc));
        return;
    }
    if (env.body_num == PG_BODY_PACKAGE_DELIVERY)
        core__queue_package(c, env.body);
    else if (env.body_num == PG_BODY_PRODUCTION_COMMAND)
        core__queue_command(c, env.body);
    else
        pg__log(c, PG_LOG_WARN, "message on %s dropped: unexpected body %u", topic,
                (unsigned)env.body_num);
}

int pg_core_poll(struct pg_core *c, int *out_action)
{
    int rc = NU_OK;
    *out_action = 0;
    if (atomic_load(&c->pkg_box_state) == BOX_FULL) {
        rc = pg_core_package_load(c, c->pkg_box, c->pkg_box_len);
        pg__log(c, rc ? PG_LOG_WARN : PG_LOG_INFO, "package from station: %s", nu_err_name(rc));
        pg__zero(c->pkg_box, c->pkg_box_len);
        atomic_store(&c->pkg_box_state, BOX_EMPTY);
    }
    if (atomic_load(&c->cmd_box_state) == BOX_FULL) {
        int action = (int)c->cmd_action;
        int match = !c->cmd_job[0] || (c->job.loaded && !strcmp(c->cmd_job, c->job.job_id));
        atomic_store(&c->cmd_box_state, BOX_EMPTY);
        if (action == PG_ACTION_START && !match)
            pg__log(c, PG_LOG_WARN, "START for job %s ignored: not the current job", c->cmd_job);
        else
            *out_action = action;
    }
    return rc;
}
