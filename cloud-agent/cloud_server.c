/* nusec-cloud frame: subscription, request checks, worker pool, replies. */
/* Over 1,000 lines on purpose: the queue, admission, the workers, the
 * programmers' lane and the refusal table all work on struct cloud_queue under
 * its locks, which stays private to this file; split, the struct and its
 * locking rules would go into a header that every part includes. */
#include "cloud.h"
#include "cloud_lease.h"
#include "cloud_fairq.h"
#include "cloud_msgsig.h"
#include "nu_msgsig.h"

#include "nu_client.h"
#include "nu_err.h"
#include "nu_json.h"
#include "nu_log.h"
#include "nu_util.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CLOUD__REQ_FILTER "$share/cloud/nusec/v1/cloud/req/+/+"
/* Shared like requests: with N agents each event is recorded by one of them. */
#define CLOUD__EVENT_FILTER "$share/cloud/nusec/v1/events/+/+/+"
#define CLOUD__REQ_PREFIX "nusec/v1/cloud/req/"
#define CLOUD__EVENT_PREFIX "nusec/v1/events/"
/* Longest topic the frame copies; an op level may be almost all of it. */
#define CLOUD__TOPIC_MAX 256
/* The refusal payload: the op escaped (up to 6 bytes per byte) plus the code. */
#define CLOUD__AUDIT_PAYLOAD_MAX (6 * CLOUD__TOPIC_MAX + 96)

/* A message copied off the network thread, waiting for a worker. */
struct cloud__item {
    struct cloud_fairq_link link; /* first: the fair queue hands back this link */
    int is_event;
    int on_lane; /* came in on the programmers' lane */
    char topic[CLOUD__TOPIC_MAX];
    char owner[CLOUD_ID_MAX + 1]; /* the identity its bytes are counted against */
    size_t cost;                  /* bytes counted (struct + copies) until it is freed */
    int refuse;                   /* refused before decoding (TOO_LARGE): no payload kept */
    size_t refused_len;           /* the payload size that was refused */
    char *response_topic;
    uint8_t *correlation;
    size_t correlation_len;
    uint8_t *payload;
    size_t len;
    uint64_t received_us; /* for the request latency metric */
    char *signature;      /* the sender's nusec-sig property, NULL if none */
};

_Static_assert(CLOUD_ID_MAX <= CLOUD_FAIRQ_SENDER_MAX, "every owner id fits the fair queue");

/* Bytes one identity holds in the queue (entries exist while > 0). */
struct cloud__owner {
    char id[CLOUD_ID_MAX + 1];
    size_t bytes;
};

/* Refusals of one (identity, code) in the current window. */
struct cloud__refusal {
    char id[CLOUD_ID_MAX + 1];
    int code;
    uint64_t window_ms;  /* nu_mono_ms() at the window's start */
    unsigned audited;    /* audited one by one in this window */
    uint64_t suppressed; /* counted, not yet in the audit chain */
};

/* Distinct (identity, code) pairs tracked; beyond, counts go to a catch-all. */
#define CLOUD__REFUSALS_MAX 256

struct cloud_queue {
    pthread_mutex_t lock;
    pthread_cond_t ready;
    struct cloud_fairq *fair; /* waiting items, per identity, served round robin */
    unsigned depth;
    size_t bytes; /* held by items queued or in service */
    struct cloud__owner *owners;
    size_t n_owners, cap_owners;
    struct nu_metric *depth_metric; /* the queue_depth gauge (NULL: metrics off) */
    int closing;
    pthread_t *threads;
    unsigned n_threads;
    pthread_mutex_t rlock; /* the refusal table */
    struct cloud__refusal refusals[CLOUD__REFUSALS_MAX];
    size_t n_refusals;
    uint64_t overflow_refusals; /* counted when the table was full */
    struct nu_msgsig_replay *replay; /* end-to-end freshness (cloud_msgsig.h) */
    struct nu_mqtt *lane; /* the programmers' own connection (cloud__lane_start), or NULL */
    /* The lane's own worker, besides the pool: a lane request never waits
     * for a pool whose every worker serves a flood (each reply of theirs
     * waits for its PUBACK through a broker the flood keeps busy). */
    pthread_cond_t lane_ready;
    pthread_t lane_thread;
    int lane_worker;
};

static const struct cloud_op *const cloud__op_tables[] = {
    cloud_enroll_ops, cloud_cert_ops, cloud_firmware_ops, cloud_job_ops, cloud_lease_ops, NULL};

static void cloud__item_free(struct cloud__item *it)
{
    if (!it)
        return;
    free(it->response_topic);
    free(it->signature);
    free(it->correlation);
    free(it->payload);
    free(it);
}

static struct cloud__owner *cloud__owner_find(struct cloud_queue *q, const char *id)
{
    for (size_t i = 0; i < q->n_owners; i++) {
        if (strcmp(q->owners[i].id, id) == 0)
            return &q->owners[i];
    }
    return NULL;
}

/* Give back what cloud__admit reserved, once the item is served (or dropped). */
static void cloud__release(struct cloud_queue *q, struct cloud__item *it)
{
    if (!it || !it->cost)
        return;
    pthread_mutex_lock(&q->lock);
    struct cloud__owner *o = cloud__owner_find(q, it->owner);
    if (o && (o->bytes -= it->cost) == 0)
        *o = q->owners[--q->n_owners];
    q->bytes -= it->cost;
    pthread_mutex_unlock(&q->lock);
    it->cost = 0;
}

int cloud_fail(struct cloud_call *call, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(call->detail, sizeof(call->detail), fmt, ap);
    va_end(ap);
    return code;
}

static int cloud__pack(struct cloud *cloud, ProtobufCMessage *body,
                       const Nusec__V1__Envelope *request, uint8_t **out, size_t *out_len)
{
    struct nu_envelope_frame frame;
    const char *why = NULL;
    int rc = nu_envelope_frame_init(&frame, cloud->sender, body);
    if (!rc && request)
        rc = nu_envelope_frame_reply_to(&frame, request);
    if (!rc)
        rc = nu_envelope_pack(&frame.env, out, out_len, &why);
    if (rc)
        nu_error("cannot pack %s: %s%s%s", body->descriptor->short_name, nu_err_str(rc),
                 why ? ": " : "", why ? why : "");
    return rc;
}

/*
 * The connection our publishes go out on: the programmers' lane when there
 * is one. A QoS 1 publish waits for its PUBACK, which comes back in the
 * connection's incoming stream: on the main connection it would queue behind
 * a flood's 4 MiB requests and hold the worker for seconds.
 */
static struct nu_mqtt *cloud__out(struct cloud *cloud)
{
    return cloud->queue && cloud->queue->lane ? cloud->queue->lane : cloud->mqtt;
}

/*
 * While the broker is out of reach (the WAN, a broker restart), a reply is
 * dropped at once instead of holding this worker for a PUBACK timeout per
 * request (issue 15): the request was served (the ledger holds what it did),
 * only its answer is lost, and the requester's idempotent retry gets it again
 * (a certificate through the RESEND path). So a dropped reply is not a
 * refusal of the request: logged, counted by that line, NU_OK.
 */
int cloud_reply(struct cloud_call *call, ProtobufCMessage *body)
{
    if (call->replied)
        return NU_ERR_STATE;
    uint8_t *out = NULL;
    size_t len = 0;
    int rc = cloud__pack(call->cloud, body, call->req, &out, &len);
    if (!rc)
        rc = nu_mqtt_reply(cloud__out(call->cloud), call->msg, out, len);
    free(out);
    call->replied = 1;
    if (rc == NU_ERR_CONNECTION) {
        nu_info("reply to %s from %s dropped: broker unreachable (its retry gets it)", call->op,
                call->requester);
        rc = NU_OK;
    }
    return rc;
}

/* Events, job state and the CRL: never waited for through an outage either;
 * libmosquitto keeps them queued and sends them once the broker is back. */
int cloud_publish(struct cloud *cloud, const char *topic, ProtobufCMessage *body, int retain)
{
    uint8_t *out = NULL;
    size_t len = 0;
    int rc = cloud__pack(cloud, body, NULL, &out, &len);
    if (!rc)
        rc = nu_mqtt_publish_live(cloud__out(cloud), topic, out, len, 1, retain);
    free(out);
    if (rc == NU_ERR_CONNECTION) {
        nu_debug("%s queued until the broker is back", topic);
        rc = NU_OK;
    }
    return rc;
}

int cloud_publish_event(struct cloud *cloud, Nusec__V1__Event *event)
{
    char topic[256];
    int rc =
        nu_path_fmt(topic, sizeof(topic), "nusec/v1/events/cloud/%s/%s", cloud->id, event->kind);
    return rc ? rc : cloud_publish(cloud, topic, &event->base, 0);
}

/* Error answer + audit record: every refusal leaves a trace. */
/*
 * Coalescing: 1 when this refusal of (id, code) is to be audited on its own
 * (*out_earlier = refusals of the previous window that were only counted),
 * 0 when it is only counted. A flood thus adds at most `burst` rows per
 * window and identity and code, plus one summary row.
 */
static int cloud__refusal_admit(struct cloud *cloud, const char *id, int code, int count_only,
                                uint64_t *out_earlier)
{
    struct cloud_queue *q = cloud->queue;
    uint64_t now = nu_mono_ms();
    int audit = 0;
    struct cloud__refusal *r = NULL;
    *out_earlier = 0;
    pthread_mutex_lock(&q->rlock);
    for (size_t i = 0; i < q->n_refusals && !r; i++) {
        if (q->refusals[i].code == code && strcmp(q->refusals[i].id, id) == 0)
            r = &q->refusals[i];
    }
    if (!r && q->n_refusals < CLOUD__REFUSALS_MAX && strlen(id) <= CLOUD_ID_MAX) {
        r = &q->refusals[q->n_refusals++];
        *r = (struct cloud__refusal){.code = code, .window_ms = now};
        strcpy(r->id, id);
    }
    if (!r) {
        q->overflow_refusals++;
    } else {
        if (now - r->window_ms >= cloud->cfg.refusal_audit_window_ms) {
            *out_earlier = r->suppressed;
            r->suppressed = 0;
            r->audited = 0;
            r->window_ms = now;
        }
        if (!count_only && r->audited < cloud->cfg.refusal_audit_burst) {
            r->audited++;
            audit = 1;
        } else {
            r->suppressed++;
        }
    }
    pthread_mutex_unlock(&q->rlock);
    return audit;
}

static void cloud__refusal_row(struct cloud_ledger *ledger, const char *actor, const char *op,
                               int code, uint64_t count, int coalesced)
{
    char payload[CLOUD__AUDIT_PAYLOAD_MAX];
    struct nu_json j;
    nu_json_init(&j, payload, sizeof(payload));
    nu_json_raw(&j, "{", 1);
    if (op)
        nu_json_str(&j, "op", op); /* from the topic: escaped, never trusted */
    nu_json_str(&j, "code", nu_err_name(code));
    if (coalesced)
        nu_json_u64(&j, "count", count);
    else if (count)
        nu_json_u64(&j, "earlier_unaudited", count);
    nu_json_raw(&j, "}", 1);
    if (!nu_json_ok(&j)) /* cannot happen (the topic is bounded): never half a payload */
        return;
    struct cloud_ledger_event ev = {
        .ts_ms = nu_time_ms(),
        .kind = "request.refused",
        .actor = actor,
        .job_id = "",
        .payload = payload,
        .payload_len = j.len,
    };
    int rc = cloud_ledger_audit_append(ledger, &ev, NULL);
    if (rc)
        nu_warn("refusal of %s not audited: %s", actor, nu_err_str(rc));
}

void cloud_refusals_flush(struct cloud *cloud, struct cloud_ledger *ledger, int all)
{
    struct cloud_queue *q = cloud->queue;
    struct cloud__refusal due[CLOUD__REFUSALS_MAX];
    size_t n = 0;
    uint64_t overflow, now = nu_mono_ms();
    if (!q || !ledger)
        return;
    pthread_mutex_lock(&q->rlock);
    for (size_t i = 0; i < q->n_refusals;) {
        struct cloud__refusal *r = &q->refusals[i];
        if (!all && now - r->window_ms < cloud->cfg.refusal_audit_window_ms) {
            i++;
            continue;
        }
        if (r->suppressed)
            due[n++] = *r;
        q->refusals[i] = q->refusals[--q->n_refusals]; /* window over: forget it */
    }
    overflow = q->overflow_refusals;
    q->overflow_refusals = 0;
    pthread_mutex_unlock(&q->rlock);
    for (size_t i = 0; i < n; i++)
        cloud__refusal_row(ledger, due[i].id, NULL, due[i].code, due[i].suppressed, 1);
    if (overflow) /* too many distinct refusers at once: one row for them all */
        cloud__refusal_row(ledger, cloud->id, "*", NU_ERR_BUSY, overflow, 1);
}

static void cloud__refuse(struct cloud_call *call, int code)
{
    Nusec__V1__Error err = NUSEC__V1__ERROR__INIT;
    /* The detail may quote the op level: make it valid free text to pack. */
    nu_envelope_text_sanitize(call->detail);
    err.code = (Nusec__V1__ErrorCode)code;
    err.detail = call->detail[0] ? call->detail : (char *)nu_err_str(code);
    /* Error.op is an identifier on the wire: an op name the broker let through
     * but that is not one (`job"list`, `jöb.list`, 40 characters) is left out,
     * so the refusal still packs and the client gets its typed answer. */
    err.op = nu_envelope_id_check(call->op) == NU_OK ? (char *)call->op : "";
    nu_info("refused %s from %s: %s (%s)", call->op, call->requester, nu_err_name(code),
            err.detail);
    if (!strcmp(call->op, "cert.request")) {
        /* The job label only when it is one (bounded, no outside text) and
         * only for a request admitted to the handler: before that the label
         * is whatever the sender chose, and 1024 made-up jobs, unsigned,
         * filled the family so that real refusals were no longer counted. */
        const char *job =
            call->admitted && call->req &&
                    call->req->body_case == NUSEC__V1__ENVELOPE__BODY_CERTIFICATE_REQUEST &&
                    !nu_envelope_id_check(call->req->certificate_request->job_id)
                ? call->req->certificate_request->job_id
                : "-";
        nu_metric_add(call->cloud->metrics.refused, 1, (const char *[]){job, nu_err_name(code)});
    }
    if (!call->replied && call->msg->response_topic)
        cloud_reply(call, &err.base);
    uint64_t earlier = 0;
    if (call->ledger && !call->audited &&
        cloud__refusal_admit(call->cloud, call->requester, code, 0, &earlier))
        cloud__refusal_row(call->ledger, call->requester, call->op, code, earlier, 0);
}

static int cloud__id_listed(const char ids[][CLOUD_ID_MAX + 1], size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ids[i], id) == 0)
            return 1;
    }
    return 0;
}

/* Role from configuration (oem, station) or the ledger (enrolled programmers). */
static int cloud__role_of(struct cloud_call *call, enum cloud_role *out)
{
    const struct cloud_config *cfg = &call->cloud->cfg;
    if (cloud__id_listed(cfg->oem_ids, cfg->n_oem_ids, call->requester)) {
        *out = CLOUD_ROLE_OEM;
        return NU_OK;
    }
    if (cloud_is_station(call->cloud, call->requester)) {
        *out = CLOUD_ROLE_STATION;
        return NU_OK;
    }
    struct cloud_ledger_programmer p;
    int rc = cloud_ledger_programmer_get(call->ledger, call->requester, &p);
    if (rc == NU_ERR_NOT_FOUND) {
        *out = CLOUD_ROLE_NONE;
        return NU_OK;
    }
    if (rc)
        return rc;
    if (p.state != CLOUD_LEDGER_PROGRAMMER_ENROLLED)
        return cloud_fail(call, NU_ERR_REVOKED, "programmer %s is revoked", call->requester);
    *out = CLOUD_ROLE_PROGRAMMER;
    return NU_OK;
}

static const struct cloud_op *cloud__find_op(const char *name)
{
    for (const struct cloud_op *const *t = cloud__op_tables; *t; t++) {
        for (const struct cloud_op *op = *t; op->name; op++) {
            if (strcmp(op->name, name) == 0)
                return op;
        }
    }
    return NULL;
}

/* Split "PREFIX{a}/{b}" into a and b, each one non-empty level. */
static int cloud__split2(const char *rest, char *a, size_t acap, char *b, size_t bcap)
{
    const char *slash = strchr(rest, '/');
    if (!slash || slash == rest || !slash[1] || strchr(slash + 1, '/'))
        return NU_ERR_DECODE;
    size_t alen = (size_t)(slash - rest);
    if (alen >= acap || strlen(slash + 1) >= bcap)
        return NU_ERR_TOO_LARGE;
    memcpy(a, rest, alen);
    a[alen] = 0;
    strcpy(b, slash + 1);
    return NU_OK;
}

/* One request on its way through the frame (the call points into it). */
struct cloud__slot {
    char requester[CLOUD_ID_MAX + 1];
    /* The op level as sent, whatever its length: an unknown name is answered
     * NOT_SUPPORTED and audited, not dropped (CLOUD_OP_MAX bounds known ones). */
    char op_name[CLOUD__TOPIC_MAX];
    struct nu_mqtt_msg msg;
    struct cloud_call call;
    const struct cloud_op *op;
    Nusec__V1__Envelope *req;
    uint64_t received_us;
};

static void cloud__msg_of(const struct cloud__item *it, struct nu_mqtt_msg *msg)
{
    *msg = (struct nu_mqtt_msg){
        .topic = it->topic,
        .payload = it->payload,
        .len = it->len,
        .qos = 1,
        .response_topic = it->response_topic,
        .correlation = it->correlation,
        .correlation_len = it->correlation_len,
        .signature = it->signature,
    };
}

/* The frame's checks. 1: ready for the handler; 0: refused (answered) or dropped. */
static int cloud__request_open(struct cloud *cloud, struct cloud_ledger *ledger,
                               const struct cloud__item *it, struct cloud__slot *s)
{
    char prefix[CLOUD_ID_MAX + 32];
    const char *why = NULL;
    cloud__msg_of(it, &s->msg);
    s->call = (struct cloud_call){.cloud = cloud,
                                  .ledger = ledger,
                                  .msg = &s->msg,
                                  .requester = s->requester,
                                  .op = s->op_name};
    struct cloud_call *call = &s->call;
    s->received_us = it->received_us;
    if (cloud__split2(it->topic + strlen(CLOUD__REQ_PREFIX), s->requester, sizeof(s->requester),
                      s->op_name, sizeof(s->op_name))) {
        nu_warn("dropped request on malformed topic");
        return 0;
    }
    /* Answers go only into the requester's own reply tree (the broker checks
     * too); anything else is dropped unanswered. */
    snprintf(prefix, sizeof(prefix), "nusec/v1/reply/%s/", s->requester);
    if (!it->response_topic || strncmp(it->response_topic, prefix, strlen(prefix)) != 0) {
        s->msg.response_topic = NULL;
        cloud__refuse(call, cloud_fail(call, NU_ERR_NOT_AUTHORIZED, "bad response topic"));
        return 0;
    }
    if (it->refuse == NU_ERR_NOT_SUPPORTED) {
        cloud__refuse(call, cloud_fail(call, it->refuse, "unknown operation (name too long)"));
        return 0;
    }
    if (it->refuse) {
        cloud__refuse(call, cloud_fail(call, it->refuse,
                                       "payload of %zu bytes over the limit of %s for %s",
                                       it->refused_len, s->op_name, s->requester));
        return 0;
    }
    int rc = nu_envelope_unpack(it->payload, it->len, &s->req, &why);
    if (rc) {
        cloud__refuse(call, cloud_fail(call, rc, "%s", why ? why : "malformed envelope"));
        return 0;
    }
    call->req = s->req;
    s->op = cloud__find_op(s->op_name);
    if (strcmp(s->req->header->sender_id, s->requester) != 0)
        rc = cloud_fail(call, NU_ERR_NOT_AUTHORIZED, "sender id differs from identity");
    else if ((rc = cloud_msgsig_check(cloud, cloud->queue->replay, ledger, s->requester, it->topic,
                                      it->payload, it->len, it->signature, s->req,
                                      strcmp(s->op_name, "device.report") != 0, call->detail,
                                      sizeof(call->detail))) != NU_OK)
        ; /* not signed end to end by the requester: refused before any handler */
    else if (!s->op)
        rc = cloud_fail(call, NU_ERR_NOT_SUPPORTED, "unknown operation");
    else if ((int)s->req->body_case != s->op->body_case)
        rc = cloud_fail(call, NU_ERR_INVALID_ARG, "body %s does not fit %s",
                        nu_envelope_body_name(s->req), s->op_name);
    else if (!(rc = cloud__role_of(call, &call->role)) && !(call->role & s->op->roles))
        rc =
            cloud_fail(call, NU_ERR_NOT_AUTHORIZED, "%s may not call %s", s->requester, s->op_name);
    if (rc) {
        cloud__refuse(call, rc);
        nu_envelope_free(s->req);
        s->req = NULL;
        return 0;
    }
    call->admitted = 1;
    return 1;
}

static void cloud__request_close(struct cloud__slot *s, int rc)
{
    if (rc)
        cloud__refuse(&s->call, rc);
    else if (!s->call.replied)
        nu_error("%s answered nothing", s->op_name);
    nu_metric_observe_us(s->call.cloud->metrics.request_s, nu_metrics_now_us() - s->received_us,
                         (const char *[]){s->op->name});
    nu_envelope_free(s->req);
    s->req = NULL;
}

/* The batch op a request topic names, if any. */
static const struct cloud_batch_op *cloud__batch_of(const char *topic)
{
    const char *op = strrchr(topic, '/');
    for (const struct cloud_batch_op *b = cloud_cert_batch_ops; op && b->name; b++) {
        if (strcmp(b->name, op + 1) == 0)
            return b;
    }
    return NULL;
}

/*
 * Serve n queued requests (n > 1 only for one batch op): each is checked,
 * those that pass go to the op's handler one by one, or all at once to its
 * batch handler (group commit); then each is answered or refused.
 */
static void cloud__serve_requests(struct cloud *cloud, struct cloud_ledger *ledger,
                                  struct cloud__item *const *items, size_t n)
{
    struct cloud__slot one, *slots = n == 1 ? &one : calloc(n, sizeof(*slots));
    struct cloud_call **ready = n == 1 ? NULL : calloc(n, sizeof(*ready));
    struct cloud__slot **owner = n == 1 ? NULL : calloc(n, sizeof(*owner));
    int *rcs = n == 1 ? NULL : calloc(n, sizeof(*rcs));
    const struct cloud_batch_op *b = n == 1 ? NULL : cloud__batch_of(items[0]->topic);
    size_t k = 0;
    if (n > 1 && (!slots || !ready || !owner || !rcs || !b)) {
        /* no memory for the batch: one at a time */
        for (size_t i = 0; i < n; i++)
            cloud__serve_requests(cloud, ledger, &items[i], 1);
        goto out;
    }
    memset(slots, 0, n * sizeof(*slots));
    for (size_t i = 0; i < n; i++) {
        struct cloud__slot *s = &slots[i];
        if (!cloud__request_open(cloud, ledger, items[i], s))
            continue;
        if (b && strcmp(s->op->name, b->name) == 0) {
            owner[k] = s;
            ready[k++] = &s->call;
        } else {
            cloud__request_close(s, s->op->handle(&s->call));
        }
    }
    if (k) {
        b->handle_batch(ready, k, rcs);
        for (size_t j = 0; j < k; j++)
            cloud__request_close(owner[j], rcs[j]);
    }
out:
    free(rcs);
    free(owner);
    free(ready);
    if (slots != &one)
        free(slots);
}

static void cloud__serve_event(struct cloud *cloud, struct cloud_ledger *ledger,
                               struct cloud__item *it, const struct nu_mqtt_msg *msg)
{
    char role[CLOUD_ID_MAX + 1], rest[2 * CLOUD_ID_MAX + 2], sender[CLOUD_ID_MAX + 1],
        kind[CLOUD_OP_MAX + 1];
    const char *after = it->topic + strlen(CLOUD__EVENT_PREFIX);
    const char *slash = strchr(after, '/');
    if (!slash || (size_t)(slash - after) > CLOUD_ID_MAX || strlen(slash + 1) >= sizeof(rest))
        return;
    memcpy(role, after, (size_t)(slash - after));
    role[slash - after] = 0;
    strcpy(rest, slash + 1);
    if (cloud__split2(rest, sender, sizeof(sender), kind, sizeof(kind)))
        return;
    for (const struct cloud_event_op *e = cloud_cert_events; e->kind; e++) {
        if (strcmp(e->kind, kind) != 0 || strcmp(e->role, role) != 0)
            continue;
        Nusec__V1__Envelope *env = NULL;
        int urc = nu_envelope_unpack(it->payload, it->len, &env, NULL);
        if (!urc && env->body_case != NUSEC__V1__ENVELOPE__BODY_EVENT)
            urc = NU_ERR_INVALID_ARG;
        if (!urc && strcmp(env->header->sender_id, sender) != 0)
            urc = NU_ERR_NOT_AUTHORIZED;
        if (urc) {
            /* Audited (coalesced) like a refused request, unanswered: the
             * cloud saw it, and a warning alone left no trace in the ledger.
             * The sender is the topic's, which the broker bound to the
             * identity; the kind is one of ours. */
            struct cloud_call bad = {
                .cloud = cloud, .ledger = ledger, .msg = msg, .requester = sender, .op = kind};
            snprintf(bad.detail, sizeof(bad.detail), "malformed %s event", kind);
            nu_warn("dropped malformed %s event from %s: %s", kind, sender, nu_err_name(urc));
            cloud__refuse(&bad, urc);
        } else {
            struct cloud_call call = {.cloud = cloud,
                                      .ledger = ledger,
                                      .msg = msg,
                                      .requester = sender,
                                      .op = kind,
                                      .req = env};
            /* A device report moves the ledger's provisioned state: only
             * the enrolled sender's own signature counts, never the broker's
             * word. Refused like a request (audited, coalesced), unanswered. */
            int rc = cloud_msgsig_check(cloud, cloud->queue->replay, ledger, sender, it->topic,
                                        it->payload, it->len, it->signature, env, 0,
                                        call.detail, sizeof(call.detail));
            if (rc) {
                cloud__refuse(&call, rc);
                nu_envelope_free(env);
                return;
            }
            rc = e->handle(&call);
            if (rc)
                nu_warn("event %s from %s not recorded: %s (%s)", kind, sender, nu_err_name(rc),
                        call.detail);
        }
        nu_envelope_free(env);
        return;
    }
}

/* Most requests one worker takes off the queue at once (a batch op's max applies). */
#define CLOUD__TAKE_MAX 64

/* Fair-queue filter: a request of the batch op `ctx` (events never batch). */
static int cloud__same_batch(const struct cloud_fairq_link *l, void *ctx)
{
    const struct cloud__item *it = (const struct cloud__item *)l;
    return !it->is_event && cloud__batch_of(it->topic) == ctx;
}

/* Fair-queue filter of the lane's worker. */
static int cloud__from_lane(const struct cloud_fairq_link *l, void *ctx)
{
    (void)ctx;
    return ((const struct cloud__item *)l)->on_lane;
}

/*
 * Take the next item, round robin between identities (cloud_fairq.h); when
 * it is a batch op's request, also the next ones of that op, from any
 * identity, for one group commit. lane_only: the lane's worker, which takes
 * lane items only (the pool takes any).
 */
static size_t cloud__take(struct cloud_queue *q, unsigned batch_max, int lane_only,
                          struct cloud__item **out)
{
    size_t n = 0;
    struct cloud__item *it = NULL;
    pthread_mutex_lock(&q->lock);
    for (;;) {
        it = (struct cloud__item *)cloud_fairq_pop(q->fair, lane_only ? cloud__from_lane : NULL,
                                                   NULL, NULL);
        if (it || q->closing)
            break;
        pthread_cond_wait(lane_only ? &q->lane_ready : &q->ready, &q->lock);
    }
    const struct cloud_batch_op *b = it && !it->is_event ? cloud__batch_of(it->topic) : NULL;
    while (it) {
        q->depth--;
        out[n++] = it;
        if (!b || n >= CLOUD__TAKE_MAX || n >= b->max || n >= batch_max)
            break;
        it = (struct cloud__item *)cloud_fairq_pop(q->fair, cloud__same_batch, (void *)b, NULL);
    }
    nu_metric_set(q->depth_metric, q->depth, NULL);
    pthread_mutex_unlock(&q->lock);
    return n; /* 0: closing and drained */
}

static void cloud__work(struct cloud *cloud, int lane_only)
{
    struct cloud_queue *q = cloud->queue;
    struct cloud_ledger *ledger = NULL;
    struct cloud__item *items[CLOUD__TAKE_MAX];
    int rc = cloud_ledger_connect(cloud->ledger_path, cloud->cfg.ledger_password_file, 0, &ledger);
    /* Ledger housekeeping runs on the main thread's tick, not inside a request's commit. */
    if (!rc)
        rc = cloud_ledger_set_inline_maintenance(ledger, 0);
    if (rc) {
        nu_error("worker cannot open the ledger: %s", nu_err_str(rc));
        cloud_ledger_close(ledger);
        return;
    }
    size_t n;
    while ((n = cloud__take(q, cloud->cfg.batch_max, lane_only, items)) > 0) {
        nu_metric_gauge_add(cloud->metrics.workers_busy, 1, NULL);
        if (items[0]->is_event) {
            struct nu_mqtt_msg msg;
            cloud__msg_of(items[0], &msg);
            cloud__serve_event(cloud, ledger, items[0], &msg);
        } else {
            cloud__serve_requests(cloud, ledger, items, n);
        }
        for (size_t i = 0; i < n; i++) {
            cloud__release(q, items[i]);
            cloud__item_free(items[i]);
        }
        nu_metric_gauge_add(cloud->metrics.workers_busy, -1, NULL);
    }
    cloud_ledger_close(ledger);
}

static void *cloud__worker(void *arg)
{
    cloud__work(arg, 0);
    return NULL;
}

static void *cloud__lane_worker(void *arg)
{
    cloud__work(arg, 1);
    return NULL;
}

static void *cloud__dup(const void *p, size_t len)
{
    if (!p)
        return NULL;
    void *d = malloc(len + 1);
    if (d) {
        memcpy(d, p, len);
        ((char *)d)[len] = 0;
    }
    return d;
}

/* Reserve the item's place (depth, bytes in all and for its owner); 0 = over a bound. */
static int cloud__admit(struct cloud *cloud, struct cloud__item *it)
{
    struct cloud_queue *q = cloud->queue;
    const struct cloud_config *cfg = &cloud->cfg;
    int ok = 0;
    pthread_mutex_lock(&q->lock);
    struct cloud__owner *o = cloud__owner_find(q, it->owner);
    size_t held = o ? o->bytes : 0;
    /* Events count in bytes like requests; the request count (queue_max)
     * stays the requests' own bound, as before. */
    if ((q->depth >= cfg->queue_max && !it->is_event) ||
        q->bytes + it->cost > cfg->queue_bytes_max ||
        held + it->cost > cfg->identity_bytes_max ||
        (cfg->fair_queue &&
         cloud_fairq_sender_depth(q->fair, it->owner) >= cfg->identity_queue_max))
        goto out;
    if (!o) {
        if (q->n_owners == q->cap_owners) {
            size_t cap = q->cap_owners ? 2 * q->cap_owners : 16;
            struct cloud__owner *grown = realloc(q->owners, cap * sizeof(*grown));
            if (!grown)
                goto out;
            q->owners = grown;
            q->cap_owners = cap;
        }
        o = &q->owners[q->n_owners++];
        strcpy(o->id, it->owner);
        o->bytes = 0;
    }
    o->bytes += it->cost;
    q->bytes += it->cost;
    q->depth++;
    ok = 1;
out:
    pthread_mutex_unlock(&q->lock);
    return ok;
}

/* The identity a topic speaks for: req/{id}/op or events/{role}/{id}/kind. */
static void cloud__owner_of(const char *topic, int is_event, char out[CLOUD_ID_MAX + 1])
{
    const char *p = topic + strlen(is_event ? CLOUD__EVENT_PREFIX : CLOUD__REQ_PREFIX);
    if (is_event && (p = strchr(p, '/')) != NULL)
        p++;
    size_t n = p ? strcspn(p, "/") : 0;
    if (!p || n == 0 || n > CLOUD_ID_MAX) {
        strcpy(out, "?"); /* the frame drops such a topic; its bytes still count */
        return;
    }
    memcpy(out, p, n);
    out[n] = 0;
}

/* The most a message on this topic may carry: firmware.sign from an OEM
 * identity gets the firmware limit, everything else the small one. */
static size_t cloud__payload_limit(const struct cloud *cloud, const struct cloud__item *it)
{
    const struct cloud_config *cfg = &cloud->cfg;
    const char *op = strrchr(it->topic, '/');
    if (!it->is_event && op && strcmp(op + 1, "firmware.sign") == 0 &&
        cloud__id_listed(cfg->oem_ids, cfg->n_oem_ids, it->owner))
        return cfg->firmware_payload_max;
    return cfg->payload_max;
}

/* Overload: BUSY at once rather than timing the client out; counted for the audit. */
static void cloud__busy(struct cloud *cloud, struct nu_mqtt *m, const struct nu_mqtt_msg *msg,
                        const struct cloud__item *it)
{
    uint64_t earlier;
    (void)cloud__refusal_admit(cloud, it->owner, NU_ERR_BUSY, 1, &earlier);
    nu_debug("queue bounds reached: BUSY for %s", it->owner);
    if (it->is_event || !msg->response_topic)
        return; /* an event cannot be answered: the sender's QoS 1 retry is lost too */
    Nusec__V1__Error err = NUSEC__V1__ERROR__INIT;
    err.code = NUSEC__V1__ERROR_CODE__ERROR_CODE_BUSY;
    err.detail = "cloud overloaded, retry";
    uint8_t *out = NULL;
    size_t len = 0;
    if (!cloud__pack(cloud, &err.base, NULL, &out, &len))
        nu_mqtt_reply(m, msg, out, len);
    free(out);
}

/*
 * The programmers' lane. All requests reach us over one connection, and the
 * broker writes them to it in order: a flood of 4 MiB firmware.sign or
 * 256 KiB job.list garbage then sits in front of a cert.request in that one
 * TCP stream, whatever our queue does. So a second connection subscribes to
 * the production path's operations only programmers may call (cert.request,
 * device.report: small, latency-bound), in a share group of its own; the
 * main connection, whose `req/+/+` also matches them, drops its copies.
 * Firmware delivery (16 KiB chunks) stays on the main connection.
 * A flood from a programmer identity on these operations still shares this
 * lane (payload_max bounds it); the fair queue keeps it behind itself.
 */
#define CLOUD__LANE_FILTER "$share/cloud-prog/nusec/v1/cloud/req/+/"

/* Does `topic` name a lane operation (one only programmers may call)? */
static int cloud__lane_op(const char *topic)
{
    if (strncmp(topic, CLOUD__REQ_PREFIX, strlen(CLOUD__REQ_PREFIX)) != 0)
        return 0;
    const char *op = strrchr(topic, '/');
    for (const struct cloud_op *o = cloud_cert_ops; op && o->name; o++) {
        if (o->roles == CLOUD_ROLE_PROGRAMMER && strcmp(o->name, op + 1) == 0)
            return 1;
    }
    return 0;
}

static int cloud__lane_has(const struct cloud_queue *q, const char *topic)
{
    return q->lane && cloud__lane_op(topic);
}

static void cloud__on_message(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud);

/* Connect the lane, start its worker, subscribe to each lane op. On failure
 * the agent does not start (cloud_stop releases what was made). */
static int cloud__lane_start(struct cloud *cloud)
{
    char client_id[CLOUD_ID_MAX + 32], filter[CLOUD__TOPIC_MAX];
    struct nu_mqtt *lane = NULL;
    snprintf(client_id, sizeof(client_id), "%s:%u-prog", cloud->id, cloud->cfg.instance);
    struct nu_client_opts co = {.dir = cloud->dir,
                                .identity = cloud->id,
                                .client_id = client_id,
                                .clean_start = 0,
                                .session_expiry_s = cloud->cfg.session_expiry_s,
                                .connect_wait_ms = 60000,
                                .signer = nu_hsm_key_signer(cloud->keys.package)};
    int rc = nu_client_connect(&co, &lane);
    if (rc)
        return rc;
    /* Known before its first delivery, so on_message tells the lanes apart. */
    pthread_mutex_lock(&cloud->queue->lock);
    cloud->queue->lane = lane;
    pthread_mutex_unlock(&cloud->queue->lock);
    if (pthread_create(&cloud->queue->lane_thread, NULL, cloud__lane_worker, cloud) != 0)
        return NU_ERR_INTERNAL;
    cloud->queue->lane_worker = 1;
    for (const struct cloud_op *op = cloud_cert_ops; !rc && op->name; op++) {
        if (op->roles != CLOUD_ROLE_PROGRAMMER)
            continue;
        snprintf(filter, sizeof(filter), "%s%s", CLOUD__LANE_FILTER, op->name);
        rc = nu_mqtt_subscribe(lane, filter, 1, cloud__on_message, cloud);
    }
    return rc; /* on failure cloud_stop destroys the lane */
}

/* Stop the lane's deliveries, as the main connection's (it stays connected:
 * the workers' last replies go out on it). */
static void cloud__lane_stop(struct cloud_queue *q)
{
    char filter[CLOUD__TOPIC_MAX];
    if (!q->lane)
        return;
    for (const struct cloud_op *op = cloud_cert_ops; op->name; op++) {
        if (op->roles != CLOUD_ROLE_PROGRAMMER)
            continue;
        snprintf(filter, sizeof(filter), "%s%s", CLOUD__LANE_FILTER, op->name);
        nu_mqtt_unsubscribe(q->lane, filter);
    }
}

/*
 * Network thread: size, bound, copy and queue; never block here. The payload
 * is sized before anything is copied: over its op's limit it is not kept at
 * all (a worker answers TOO_LARGE); the bytes an item holds count against
 * the queue's bounds until a worker has served it.
 */
static void cloud__on_message(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct cloud *cloud = ud;
    struct cloud_queue *q = cloud->queue;
    if (m != q->lane && cloud__lane_has(q, msg->topic))
        return; /* the programmers' lane got its own copy and serves it */
    struct cloud__item *it = calloc(1, sizeof(*it));
    if (!it)
        goto drop;
    it->received_us = nu_metrics_now_us();
    it->is_event = strncmp(msg->topic, CLOUD__EVENT_PREFIX, strlen(CLOUD__EVENT_PREFIX)) == 0;
    if (strlen(msg->topic) >= sizeof(it->topic)) {
        /* Only an op level can make a request topic this long (the identity
         * is at most 64): answered NOT_SUPPORTED with the name cut, never
         * dropped unanswered. */
        if (it->is_event)
            goto drop;
        it->refuse = NU_ERR_NOT_SUPPORTED;
    }
    snprintf(it->topic, sizeof(it->topic), "%s", msg->topic);
    cloud__owner_of(it->topic, it->is_event, it->owner);
    if (it->refuse) {
        it->refused_len = msg->len;
    } else if (msg->len > cloud__payload_limit(cloud, it)) {
        if (it->is_event) {
            nu_debug("dropped an event of %zu bytes from %s", msg->len, it->owner);
            goto drop;
        }
        it->refuse = NU_ERR_TOO_LARGE;
        it->refused_len = msg->len;
    }
    size_t payload_len = it->refuse ? 0 : msg->len;
    /* A response topic longer than any reply topic is not copied: the frame
     * then refuses the request as having a bad response topic. */
    size_t rt_len = msg->response_topic ? strlen(msg->response_topic) : 0;
    if (rt_len >= CLOUD__TOPIC_MAX)
        rt_len = 0;
    it->cost = sizeof(*it) + payload_len + rt_len + msg->correlation_len + NU_MSGSIG_VALUE_MAX;
    if (!cloud__admit(cloud, it)) {
        it->cost = 0;
        cloud__busy(cloud, m, msg, it);
        goto drop;
    }
    if (payload_len) {
        it->payload = cloud__dup(msg->payload, payload_len);
        it->len = payload_len;
    }
    if (rt_len)
        it->response_topic = cloud__dup(msg->response_topic, rt_len);
    if (msg->correlation) {
        it->correlation = cloud__dup(msg->correlation, msg->correlation_len);
        it->correlation_len = msg->correlation_len;
    }
    /* The signature: at most a DER ECDSA in hex (longer is as bad as none). */
    if (msg->signature && strlen(msg->signature) < NU_MSGSIG_VALUE_MAX)
        it->signature = cloud__dup(msg->signature, strlen(msg->signature) + 1);
    if ((payload_len && !it->payload) || (rt_len && !it->response_topic) ||
        (msg->correlation && !it->correlation) ||
        (msg->signature && strlen(msg->signature) < NU_MSGSIG_VALUE_MAX && !it->signature))
        goto unreserve;
    pthread_mutex_lock(&q->lock);
    it->on_lane = m == q->lane;
    int qrc = cloud_fairq_push(q->fair, cloud->cfg.fair_queue ? it->owner : "*", &it->link);
    if (!qrc) {
        nu_metric_set(q->depth_metric, q->depth, NULL);
        pthread_cond_signal(&q->ready);
        if (it->on_lane)
            pthread_cond_signal(&q->lane_ready);
    }
    pthread_mutex_unlock(&q->lock);
    if (!qrc)
        return;
    cloud__busy(cloud, m, msg, it); /* only if the bounds moved since cloud__admit */
unreserve:
    pthread_mutex_lock(&q->lock);
    q->depth--;
    pthread_mutex_unlock(&q->lock);
    cloud__release(q, it);
drop:
    cloud__item_free(it);
}

int cloud_start(struct cloud *cloud)
{
    struct cloud_queue *q = calloc(1, sizeof(*q));
    if (!q)
        return NU_ERR_NOMEM;
    pthread_mutex_init(&q->lock, NULL);
    pthread_cond_init(&q->ready, NULL);
    pthread_cond_init(&q->lane_ready, NULL);
    pthread_mutex_init(&q->rlock, NULL);
    q->depth_metric = cloud->metrics.queue_depth;
    cloud->queue = q;
    /* Depth per identity is checked by cloud__admit; the total here is only a
     * backstop. fair_queue 0: everything under one key, one FIFO. */
    if (cloud_fairq_new(cloud->cfg.fair_queue ? cloud->cfg.identity_queue_max : (size_t)-1,
                        (size_t)-1, &q->fair))
        return NU_ERR_NOMEM;
    int rc = cloud_msgsig_start(cloud, &q->replay);
    if (rc)
        return rc;
    q->threads = calloc(cloud->cfg.workers, sizeof(pthread_t));
    if (!q->threads)
        return NU_ERR_NOMEM;
    for (unsigned i = 0; i < cloud->cfg.workers; i++) {
        if (pthread_create(&q->threads[i], NULL, cloud__worker, cloud) != 0)
            return NU_ERR_INTERNAL;
        q->n_threads++;
    }
    /* The lane first: the main connection drops lane ops only once it serves them. */
    if (cloud->cfg.fair_queue && (rc = cloud__lane_start(cloud)) != NU_OK)
        return rc;
    rc = nu_mqtt_subscribe(cloud->mqtt, CLOUD__REQ_FILTER, 1, cloud__on_message, cloud);
    if (!rc)
        rc = nu_mqtt_subscribe(cloud->mqtt, CLOUD__EVENT_FILTER, 1, cloud__on_message, cloud);
    return rc;
}

void cloud_stop(struct cloud *cloud, struct cloud_ledger *ledger)
{
    struct cloud_queue *q = cloud->queue;
    if (!q)
        return;
    /* Stop taking work, finish what is queued, then let the workers go. */
    nu_mqtt_unsubscribe(cloud->mqtt, CLOUD__REQ_FILTER);
    nu_mqtt_unsubscribe(cloud->mqtt, CLOUD__EVENT_FILTER);
    cloud__lane_stop(q);
    pthread_mutex_lock(&q->lock);
    q->closing = 1;
    pthread_cond_broadcast(&q->ready);
    pthread_cond_broadcast(&q->lane_ready);
    pthread_mutex_unlock(&q->lock);
    for (unsigned i = 0; i < q->n_threads; i++)
        pthread_join(q->threads[i], NULL);
    if (q->lane_worker)
        pthread_join(q->lane_thread, NULL);
    free(q->threads);
    cloud_refusals_flush(cloud, ledger, 1);
    free(q->owners);
    cloud_fairq_free(q->fair);
    if (q->lane) {
        nu_mqtt_disconnect(q->lane);
        nu_mqtt_destroy(q->lane);
    }
    nu_msgsig_replay_free(q->replay);
    pthread_mutex_destroy(&q->rlock);
    pthread_mutex_destroy(&q->lock);
    pthread_cond_destroy(&q->ready);
    pthread_cond_destroy(&q->lane_ready);
    free(q);
    cloud->queue = NULL;
}
