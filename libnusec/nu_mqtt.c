/*
 * nu_mqtt — MQTT 5 session over mTLS on libmosquitto 2.0 (see nu_mqtt.h).
 *
 * Design notes (why, not what):
 *   - We run our own network thread around mosquitto_loop() instead of
 *     mosquitto_loop_start(): loop_forever() returns for good on TLS or
 *     protocol errors (e.g. one refused CONNACK during a broker restart), its
 *     backoff is in whole seconds without jitter, and it cannot bound the
 *     first connect. Our thread decides: the first connect reports its error
 *     to nu_mqtt_connect(); later failures always lead to another attempt.
 *   - m->lock is a leaf lock for application threads: they never call into
 *     libmosquitto while holding it, so no lock-order cycle with libmosquitto's
 *     internal mutexes is possible. The network thread may hold it while
 *     calling libmosquitto from a callback, which is libmosquitto's own model.
 *   - Because the application thread learns a packet's mid only when
 *     mosquitto_publish_v5/subscribe_v5 return, the network thread can see
 *     the PUBACK/SUBACK first. Such early acks are parked in m->early while
 *     m->unregistered > 0 and picked up by the waiting thread.
 *   - key_pem goes through a sealed memfd because libmosquitto only takes key
 *     file paths and re-reads them on every reconnect.
 *   - One file of ~1,700 lines on purpose: every part (acks, subscriptions,
 *     callbacks, network thread, publish, request/reply) works on struct
 *     nu_mqtt under m->lock by the rules above; split, that struct and its
 *     locking rules would have to live in a private header that every part
 *     includes, and a reader could no longer check the rules in one place.
 */
#define _GNU_SOURCE /* memfd_create, F_ADD_SEALS */
#include "nu_mqtt.h"

#include "nu_crypto.h"
#include "nu_msgsig.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <mosquitto.h>
#include <mqtt_protocol.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define MQTT__REPLY_FMT "nusec/v1/reply/%s/r"
#define MQTT__REPLY_SUFFIX_FMT "nusec/v1/reply/%.*s/%s/r"
#define MQTT__PACKET_HEADROOM 8192u /* topic + properties above max_payload */
#define MQTT__PACKET_MAX 268435455u /* largest MQTT packet */
#define MQTT__SUB_ID_MAX 268435455u /* largest subscription identifier */
#define MQTT__MAX_TARGETS 8         /* handlers for one message */
#define MQTT__MAX_SUB_IDS 8         /* subscription ids read from one message */
#define MQTT__EARLY_MAX 64
#define MQTT__DRAIN_MS 1000u    /* time to flush DISCONNECT on stop */
#define MQTT__STABLE_MS 10000u  /* a connection that lived this long resets backoff */
#define MQTT__LOOP_IDLE_MS 1000 /* select timeout when connected (writes wake it) */
#define MQTT__LOOP_BUSY_MS 100  /* while connecting: how fast a stop is noticed */

enum mqtt__phase { MQTT__IDLE, MQTT__CONNECTING, MQTT__CONNECTED, MQTT__RECONNECTING };
enum mqtt__kind { MQTT__PUBACK = 1, MQTT__SUBACK = 2 };
enum mqtt__reply_state { MQTT__REPLY_NONE, MQTT__REPLY_SUBSCRIBING, MQTT__REPLY_READY };
/* How a QoS 1 publish from an application thread treats an outage. */
enum mqtt__pub_mode {
    MQTT__PUB_WAIT, /* queued while offline, PUBACK awaited across reconnections */
    MQTT__PUB_LIVE, /* queued while offline, PUBACK awaited only while the connection lives */
    MQTT__PUB_DROP, /* not sent while offline, PUBACK awaited only while the connection lives */
};

struct mqtt__sub {
    struct mqtt__sub *next;
    char *filter;
    const char *match; /* filter without "$share/GROUP/" */
    int qos;
    uint32_t id;     /* MQTT 5 subscription identifier */
    int acked;       /* the broker's session holds this subscription */
    int pending_mid; /* SUBSCRIBE sent by the network thread, SUBACK awaited */
    int internal;    /* the reply subscription: not visible to unsubscribe */
    nu_mqtt_handler cb;
    void *userdata;
};

struct mqtt__ack { /* an application thread waiting for a PUBACK/SUBACK */
    struct mqtt__ack *next;
    int kind;
    int mid;
    int done;
    int reason;
    int live_only; /* give up when the connection is lost (MQTT__PUB_LIVE/DROP) */
    int lost;      /* set by mqtt__lost for a live_only waiter */
    pthread_cond_t cond;
};

struct mqtt__early {
    int kind;
    int mid;
    int reason;
};

struct mqtt__req { /* an application thread waiting for a reply */
    struct mqtt__req *next;
    uint8_t corr[NU_MQTT_CORRELATION_LEN];
    int done;
    int err;
    uint8_t *resp;
    size_t resp_len;
    char sig[NU_MSGSIG_VALUE_MAX]; /* the reply's NU_MSGSIG_PROP ("" if none or too long) */
    pthread_cond_t cond;
};

struct mqtt__target {
    nu_mqtt_handler cb;
    void *userdata;
};

struct nu_mqtt {
    struct mosquitto *mosq;
    mosquitto_property *connect_props;
    char *host;
    char *client_id;
    char *reply_topic;
    int key_fd;        /* memfd holding key_pem, -1 if none */
    char key_path[40]; /* /proc/self/fd/N */
    int port;
    int keepalive_s;
    unsigned backoff_min_ms;
    unsigned backoff_max_ms;
    unsigned op_timeout_ms;
    unsigned request_timeout_ms;
    size_t max_payload;
    void (*on_connection)(struct nu_mqtt *m, int connected, void *userdata);
    void *userdata;
    struct nu_signer signer;     /* sign_digest NULL: messages go unsigned */
    struct nu_p256_key *own_key; /* the signer's key when the session owns it */

    pthread_mutex_t lock;
    pthread_cond_t cond; /* phase, connect result, reply state, dispatch end, stop */
    pthread_t thread;
    int thread_joinable;
    pthread_t net_tid;
    int net_tid_valid;
    int stop;
    int disconnect_sent;
    unsigned gen; /* bumped on stop: waiters from before give up */
    enum mqtt__phase phase;
    int connect_result; /* -1 while nu_mqtt_connect waits */
    int connack_reason; /* reason of a refused CONNACK, -1 if none */
    unsigned backoff_ms;
    uint64_t connected_at;

    struct mqtt__sub *subs;
    uint32_t first_sub_id; /* ids [first, next) are this object's */
    uint32_t next_sub_id;
    int sub_ids_wrapped;
    struct mqtt__ack *acks;
    struct mqtt__early early[MQTT__EARLY_MAX];
    int n_early;
    int unregistered; /* app threads between a libmosquitto call and registering its mid */
    struct mqtt__req *reqs;
    enum mqtt__reply_state reply_state;
    int dispatching;
};

/* ---- small helpers ---------------------------------------------------- */

/* libmosquitto needs one process-wide init before the first mosquitto_new();
 * pthread_once makes that safe with many sessions. It is never undone:
 * mosquitto_lib_cleanup() is process-wide too and would pull the rug from
 * other sessions; OpenSSL releases its state at exit. */
static pthread_once_t mqtt__lib_once = PTHREAD_ONCE_INIT;

static void mqtt__lib_init(void)
{
    mosquitto_lib_init();
}

static void mqtt__cond_init(pthread_cond_t *cond)
{
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC); /* deadlines use nu_mono_ms() */
    pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
}

/* Wait on `cond` until signalled or the monotonic deadline; ETIMEDOUT after it. */
static int mqtt__wait(pthread_cond_t *cond, pthread_mutex_t *lock, uint64_t deadline_ms)
{
    if (nu_mono_ms() >= deadline_ms)
        return ETIMEDOUT;
    struct timespec ts = {.tv_sec = (time_t)(deadline_ms / 1000u),
                          .tv_nsec = (long)(deadline_ms % 1000u) * 1000000L};
    return pthread_cond_timedwait(cond, lock, &ts);
}

static int mqtt__on_net_thread(const struct nu_mqtt *m)
{
    return m->net_tid_valid && pthread_equal(m->net_tid, pthread_self());
}

static int mqtt__map_mosq(int rc)
{
    switch (rc) {
    case MOSQ_ERR_SUCCESS:
        return NU_OK;
    case MOSQ_ERR_NOMEM:
        return NU_ERR_NOMEM;
    case MOSQ_ERR_INVAL:
    case MOSQ_ERR_MALFORMED_UTF8:
    case MOSQ_ERR_DUPLICATE_PROPERTY:
        return NU_ERR_INVALID_ARG;
    case MOSQ_ERR_PAYLOAD_SIZE:
    case MOSQ_ERR_OVERSIZE_PACKET:
        return NU_ERR_TOO_LARGE;
    case MOSQ_ERR_NO_CONN:
    case MOSQ_ERR_CONN_REFUSED:
    case MOSQ_ERR_CONN_LOST:
    case MOSQ_ERR_TLS:
    case MOSQ_ERR_ERRNO:
    case MOSQ_ERR_EAI:
    case MOSQ_ERR_LOOKUP:
    case MOSQ_ERR_PROXY:
    case MOSQ_ERR_KEEPALIVE:
    case MOSQ_ERR_TLS_HANDSHAKE:
    case MOSQ_ERR_OCSP:
        return NU_ERR_CONNECTION;
    case MOSQ_ERR_AUTH:
    case MOSQ_ERR_ACL_DENIED:
        return NU_ERR_NOT_AUTHORIZED;
    case MOSQ_ERR_NOT_SUPPORTED:
    case MOSQ_ERR_QOS_NOT_SUPPORTED:
    case MOSQ_ERR_RETAIN_NOT_SUPPORTED:
        return NU_ERR_NOT_SUPPORTED;
    case MOSQ_ERR_TIMEOUT:
        return NU_ERR_TIMEOUT;
    default:
        return NU_ERR_MQTT;
    }
}

/* MQTT 5 reason code (CONNACK, PUBACK, SUBACK) to nu_err. */
static int mqtt__map_reason(int reason)
{
    if (reason < 0x80)
        return NU_OK;
    switch (reason) {
    case MQTT_RC_CLIENTID_NOT_VALID:
    case MQTT_RC_BAD_USERNAME_OR_PASSWORD:
    case MQTT_RC_NOT_AUTHORIZED:
    case MQTT_RC_BANNED:
    case MQTT_RC_BAD_AUTHENTICATION_METHOD:
        return NU_ERR_NOT_AUTHORIZED;
    case MQTT_RC_SERVER_UNAVAILABLE:
    case MQTT_RC_SERVER_BUSY:
    case MQTT_RC_SERVER_SHUTTING_DOWN:
    case MQTT_RC_USE_ANOTHER_SERVER:
    case MQTT_RC_SERVER_MOVED:
    case MQTT_RC_CONNECTION_RATE_EXCEEDED:
        return NU_ERR_CONNECTION;
    case MQTT_RC_TOPIC_FILTER_INVALID:
    case MQTT_RC_TOPIC_NAME_INVALID:
        return NU_ERR_INVALID_ARG;
    case MQTT_RC_PACKET_TOO_LARGE:
        return NU_ERR_TOO_LARGE;
    case MQTT_RC_QUOTA_EXCEEDED:
        return NU_ERR_BUSY;
    case MQTT_RC_UNSUPPORTED_PROTOCOL_VERSION:
    case MQTT_RC_RETAIN_NOT_SUPPORTED:
    case MQTT_RC_QOS_NOT_SUPPORTED:
    case MQTT_RC_SHARED_SUBS_NOT_SUPPORTED:
    case MQTT_RC_SUBSCRIPTION_IDS_NOT_SUPPORTED:
    case MQTT_RC_WILDCARD_SUBS_NOT_SUPPORTED:
        return NU_ERR_NOT_SUPPORTED;
    default:
        return NU_ERR_MQTT;
    }
}

/* Log a failed libmosquitto call (errno is read before anything else runs)
 * and return the mapped code. */
static int mqtt__fail(const struct nu_mqtt *m, const char *what, int rc)
{
    int saved = errno;
    if (rc == MOSQ_ERR_ERRNO)
        nu_warn("mqtt %s: %s: %s", m->client_id, what, strerror(saved));
    else
        nu_warn("mqtt %s: %s: %s", m->client_id, what, mosquitto_strerror(rc));
    return mqtt__map_mosq(rc);
}

static int mqtt__refused(const struct nu_mqtt *m, const char *what, const char *name, int reason)
{
    nu_warn("mqtt %s: broker refused %s '%s': %s (0x%02x)", m->client_id, what, name,
            mosquitto_reason_string(reason), (unsigned)reason);
    return mqtt__map_reason(reason);
}

/* "{id}" or "{id}:{suffix}", both parts non-empty from [A-Za-z0-9._-]. */
static int mqtt__client_id_ok(const char *id)
{
    size_t n = 0, part = 0, colons = 0;
    for (const char *p = id; *p; p++, n++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '.' || c == '_' || c == '-';
        if (c == ':' && part > 0 && colons == 0) {
            colons++;
            part = 0;
            continue;
        }
        if (!ok || n >= NU_MQTT_CLIENT_ID_MAX)
            return 0;
        part++;
    }
    return part > 0;
}

/* Readable PEM file: NOT_FOUND / PERMISSION / INVALID_ARG with the path logged. */
static int mqtt__file_check(const char *what, const char *path)
{
    if (!path || !*path)
        return NU_ERR_INVALID_ARG;
    if (access(path, R_OK) == 0)
        return NU_OK;
    int saved = errno;
    nu_warn("mqtt: %s %s: %s", what, path, strerror(saved));
    if (saved == ENOENT || saved == ENOTDIR)
        return NU_ERR_NOT_FOUND;
    if (saved == EACCES || saved == EPERM)
        return NU_ERR_PERMISSION;
    return NU_ERR_IO;
}

static int mqtt__topic_ok(const char *topic)
{
    return topic && *topic && mosquitto_pub_topic_check(topic) == MOSQ_ERR_SUCCESS &&
           mosquitto_validate_utf8(topic, (int)strlen(topic)) == MOSQ_ERR_SUCCESS;
}

/* ---- endpoint ------------------------------------------------------------ */

static int mqtt__host_char_ok(char c, int bracketed)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F') || c == '.')
        return 1;
    if (bracketed)
        return c == ':';
    return (c >= 'g' && c <= 'z') || (c >= 'G' && c <= 'Z') || c == '-' || c == '_';
}

static int mqtt__port_parse(const char *p, size_t n, int *out_port)
{
    if (n == 0 || n > 5)
        return NU_ERR_DECODE;
    int port = 0;
    for (size_t i = 0; i < n; i++) {
        if (p[i] < '0' || p[i] > '9')
            return NU_ERR_DECODE;
        port = port * 10 + (p[i] - '0');
    }
    if (port < 1 || port > 65535)
        return NU_ERR_DECODE;
    *out_port = port;
    return NU_OK;
}

int nu_mqtt_endpoint_parse(const char *text, char *out_host, size_t host_cap, int *out_port)
{
    if (!text || !out_host || !out_port || host_cap == 0)
        return NU_ERR_INVALID_ARG;
    const char *b = text;
    const char *e = text + strlen(text);
    while (b < e && (*b == ' ' || *b == '\t' || *b == '\r' || *b == '\n'))
        b++;
    while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n'))
        e--;

    int bracketed = b < e && *b == '[';
    const char *hb = b + bracketed;
    const char *he;
    const char *colon;
    if (bracketed) {
        he = memchr(hb, ']', (size_t)(e - hb));
        if (!he || he + 1 >= e || he[1] != ':')
            return NU_ERR_DECODE;
        colon = he + 1;
    } else {
        colon = NULL;
        for (const char *p = b; p < e; p++)
            if (*p == ':')
                colon = p;
        if (!colon)
            return NU_ERR_DECODE;
        he = colon;
    }
    if (he == hb || (size_t)(he - hb) > 253)
        return NU_ERR_DECODE;
    for (const char *p = hb; p < he; p++)
        if (!mqtt__host_char_ok(*p, bracketed))
            return NU_ERR_DECODE;

    int port;
    int rc = mqtt__port_parse(colon + 1, (size_t)(e - colon - 1), &port);
    if (rc != NU_OK)
        return rc;
    if ((size_t)(he - hb) + 1 > host_cap)
        return NU_ERR_TOO_LARGE;
    memcpy(out_host, hb, (size_t)(he - hb));
    out_host[he - hb] = '\0';
    *out_port = port;
    return NU_OK;
}

/* ---- acknowledgements (lock held) --------------------------------------- */

static void mqtt__early_put(struct nu_mqtt *m, int kind, int mid, int reason)
{
    if (m->unregistered == 0)
        return; /* nobody can be waiting for it: e.g. a QoS 0 publish */
    if (m->n_early == MQTT__EARLY_MAX) {
        memmove(&m->early[0], &m->early[1], sizeof(m->early[0]) * (MQTT__EARLY_MAX - 1));
        m->n_early--;
    }
    m->early[m->n_early++] = (struct mqtt__early){kind, mid, reason};
}

static int mqtt__early_take(struct nu_mqtt *m, int kind, int mid, int *out_reason)
{
    for (int i = 0; i < m->n_early; i++) {
        if (m->early[i].kind == kind && m->early[i].mid == mid) {
            *out_reason = m->early[i].reason;
            m->early[i] = m->early[--m->n_early];
            return 1;
        }
    }
    return 0;
}

static void mqtt__unregistered_done(struct nu_mqtt *m)
{
    if (--m->unregistered == 0)
        m->n_early = 0;
}

/* Hand an ack to its waiting thread; 0 if no thread waits for it. */
static int mqtt__ack_complete(struct nu_mqtt *m, int kind, int mid, int reason)
{
    for (struct mqtt__ack *w = m->acks; w; w = w->next) {
        if (w->kind == kind && w->mid == mid && !w->done) {
            w->done = 1;
            w->reason = reason;
            pthread_cond_signal(&w->cond);
            return 1;
        }
    }
    return 0;
}

/*
 * Called with the lock held right after a libmosquitto call returned `mid`
 * (the caller counted itself in m->unregistered before that call): register,
 * then wait for the ack until the deadline or a stop (or, live_only, until
 * the connection is lost).
 * Returns NU_OK with *out_reason set, TIMEOUT or CONNECTION.
 */
static int mqtt__ack_wait(struct nu_mqtt *m, int kind, int mid, uint64_t deadline, unsigned gen,
                          int live_only, int *out_reason)
{
    struct mqtt__ack w = {.kind = kind, .mid = mid, .live_only = live_only};
    if (mqtt__early_take(m, kind, mid, out_reason)) {
        mqtt__unregistered_done(m);
        return NU_OK;
    }
    mqtt__cond_init(&w.cond);
    w.next = m->acks;
    m->acks = &w;
    mqtt__unregistered_done(m);

    int rc = NU_OK;
    while (!w.done) {
        if (m->gen != gen || w.lost) {
            rc = NU_ERR_CONNECTION;
            break;
        }
        if (mqtt__wait(&w.cond, &m->lock, deadline) == ETIMEDOUT && !w.done) {
            rc = NU_ERR_TIMEOUT;
            break;
        }
    }
    for (struct mqtt__ack **pp = &m->acks; *pp; pp = &(*pp)->next) {
        if (*pp == &w) {
            *pp = w.next;
            break;
        }
    }
    pthread_cond_destroy(&w.cond);
    *out_reason = w.reason;
    return w.done ? NU_OK : rc;
}

/* Wake every thread waiting on this session (stop). Lock held. */
static void mqtt__wake_all(struct nu_mqtt *m)
{
    for (struct mqtt__ack *w = m->acks; w; w = w->next)
        pthread_cond_signal(&w->cond);
    for (struct mqtt__req *r = m->reqs; r; r = r->next)
        pthread_cond_signal(&r->cond);
    pthread_cond_broadcast(&m->cond);
}

/* The connection is lost: end the waits that only hold while it lives (a
 * worker must not sit out an outage for a reply nobody waits for). Lock held. */
static void mqtt__lost(struct nu_mqtt *m)
{
    for (struct mqtt__ack *w = m->acks; w; w = w->next) {
        if (w->live_only && !w->done) {
            w->lost = 1;
            pthread_cond_signal(&w->cond);
        }
    }
}

/* ---- subscriptions table (lock held) ----------------------------------- */

static struct mqtt__sub *mqtt__sub_new(const char *filter, int qos, nu_mqtt_handler cb,
                                       void *userdata, int internal)
{
    struct mqtt__sub *s = calloc(1, sizeof(*s));
    if (!s)
        return NULL;
    s->filter = strdup(filter);
    if (!s->filter) {
        free(s);
        return NULL;
    }
    s->match = s->filter;
    if (strncmp(filter, "$share/", 7) == 0) {
        const char *slash = strchr(filter + 7, '/');
        s->match = s->filter + (slash + 1 - filter); /* validated by mqtt__filter_ok */
    }
    s->qos = qos;
    s->cb = cb;
    s->userdata = userdata;
    s->internal = internal;
    return s;
}

static void mqtt__sub_free(struct mqtt__sub *s)
{
    if (s) {
        free(s->filter);
        free(s);
    }
}

static int mqtt__filter_ok(const char *filter)
{
    if (!filter || !*filter || mosquitto_sub_topic_check(filter) != MOSQ_ERR_SUCCESS ||
        mosquitto_validate_utf8(filter, (int)strlen(filter)) != MOSQ_ERR_SUCCESS)
        return 0;
    if (strncmp(filter, "$share/", 7) == 0) {
        const char *group = filter + 7;
        const char *slash = strchr(group, '/');
        /* "$share/GROUP/filter": non-empty group without wildcards, non-empty filter */
        const char *wild = strpbrk(group, "+#");
        if (!slash || slash == group || slash[1] == '\0' || (wild && wild < slash))
            return 0;
    }
    return 1;
}

static struct mqtt__sub *mqtt__sub_find(struct nu_mqtt *m, const char *filter)
{
    for (struct mqtt__sub *s = m->subs; s; s = s->next)
        if (strcmp(s->filter, filter) == 0)
            return s;
    return NULL;
}

static struct mqtt__sub *mqtt__sub_unlink_id(struct nu_mqtt *m, uint32_t id)
{
    for (struct mqtt__sub **pp = &m->subs; *pp; pp = &(*pp)->next) {
        if ((*pp)->id == id) {
            struct mqtt__sub *s = *pp;
            *pp = s->next;
            return s;
        }
    }
    return NULL;
}

static struct mqtt__sub *mqtt__sub_by_id(struct nu_mqtt *m, uint32_t id)
{
    for (struct mqtt__sub *s = m->subs; s; s = s->next)
        if (s->id == id)
            return s;
    return NULL;
}

/* Unlinked handlers may still be running on the network thread: wait unless
 * we are that thread, so that the caller may free their userdata. */
static void mqtt__dispatch_quiesce(struct nu_mqtt *m)
{
    if (mqtt__on_net_thread(m))
        return;
    while (m->dispatching)
        pthread_cond_wait(&m->cond, &m->lock);
}

/* SUBSCRIBE with our subscription identifier (no lock needed). `options`
 * adds MQTT 5 subscription options (retain handling) to the QoS. */
static int mqtt__send_subscribe(struct nu_mqtt *m, const char *filter, int qos, int options,
                                uint32_t id, int *out_mid)
{
    mosquitto_property *props = NULL;
    int rc = mosquitto_property_add_varint(&props, MQTT_PROP_SUBSCRIPTION_IDENTIFIER, id);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_subscribe_v5(m->mosq, out_mid, filter, qos, options, props);
    mosquitto_property_free_all(&props);
    return rc;
}

/* ---- libmosquitto callbacks (network thread) ------------------------------ */

/*
 * Send every filter again after each accepted CONNACK, even when the broker
 * says it resumed our session: Mosquitto 2.0.11 restores plain subscriptions
 * from its persistence after a restart but not `$share/...` ones, and still
 * reports "session present", so a cloud agent trusting that flag never got a
 * request again. Subscribing to a filter the session already holds just
 * replaces it. A filter this process already had granted in a resumed
 * session asks for retained messages only if the broker had lost it
 * (retain handling 1), so a reconnect does not replay retained state that
 * was already delivered; the first SUBSCRIBE of a filter keeps handling 0.
 */
static void mqtt__resubscribe(struct nu_mqtt *m, int session_present)
{
    for (struct mqtt__sub *s = m->subs; s; s = s->next) {
        int options = session_present && s->acked ? MQTT_SUB_OPT_SEND_RETAIN_NEW : 0;
        s->acked = 0;
        int mid = 0;
        int rc = mqtt__send_subscribe(m, s->filter, s->qos, options, s->id, &mid);
        if (rc != MOSQ_ERR_SUCCESS) {
            mqtt__fail(m, "re-subscribe", rc);
            continue;
        }
        s->pending_mid = mid;
    }
}

static void mqtt__on_connect(struct mosquitto *mosq, void *obj, int reason, int flags,
                             const mosquitto_property *props)
{
    struct nu_mqtt *m = obj;
    (void)mosq;
    (void)props;
    if (reason != MQTT_RC_SUCCESS) {
        pthread_mutex_lock(&m->lock);
        m->connack_reason = reason;
        pthread_mutex_unlock(&m->lock);
        mqtt__refused(m, "the connection of", m->client_id, reason);
        return;
    }
    int session_present = flags & 1;
    pthread_mutex_lock(&m->lock);
    m->phase = MQTT__CONNECTED;
    m->connected_at = nu_mono_ms();
    m->connack_reason = -1;
    mqtt__resubscribe(m, session_present);
    if (m->connect_result == -1)
        m->connect_result = NU_OK;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);

    nu_info("mqtt %s: connected to %s:%d (%s session)", m->client_id, m->host, m->port,
            session_present ? "resumed" : "new");
    if (m->on_connection)
        m->on_connection(m, 1, m->userdata);
}

static void mqtt__on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                                const mosquitto_property *props)
{
    struct nu_mqtt *m = obj;
    (void)mosq;
    (void)props;
    pthread_mutex_lock(&m->lock);
    int was_connected = m->phase == MQTT__CONNECTED;
    if (was_connected) {
        m->phase = MQTT__RECONNECTING;
        mqtt__lost(m);
        /* Only a connection that lived a while resets the backoff, so that a
         * broker that accepts and then drops us is not hammered. */
        if (nu_mono_ms() - m->connected_at >= MQTT__STABLE_MS)
            m->backoff_ms = m->backoff_min_ms;
    }
    int stop = m->stop;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);

    if (was_connected && !stop) {
        /* rc is a libmosquitto error, or the reason code of the broker's
         * DISCONNECT (>= 0x80, e.g. 0x8E: another client took over our id). */
        nu_warn("mqtt %s: connection lost: %s", m->client_id,
                rc >= 0x80 ? mosquitto_reason_string(rc) : mosquitto_strerror(rc));
        if (m->on_connection)
            m->on_connection(m, 0, m->userdata);
    }
}

static void mqtt__on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                             const mosquitto_property *props)
{
    struct nu_mqtt *m = obj;
    (void)mosq;
    (void)props;
    pthread_mutex_lock(&m->lock);
    if (!mqtt__ack_complete(m, MQTT__PUBACK, mid, reason))
        mqtt__early_put(m, MQTT__PUBACK, mid, reason);
    pthread_mutex_unlock(&m->lock);
}

static void mqtt__on_subscribe(struct mosquitto *mosq, void *obj, int mid, int count,
                               const int *granted, const mosquitto_property *props)
{
    struct nu_mqtt *m = obj;
    (void)mosq;
    (void)props;
    int reason = count > 0 && granted ? granted[0] : MQTT_RC_UNSPECIFIED;
    pthread_mutex_lock(&m->lock);
    if (!mqtt__ack_complete(m, MQTT__SUBACK, mid, reason)) {
        struct mqtt__sub *s = m->subs;
        while (s && s->pending_mid != mid)
            s = s->next;
        if (s) {
            s->pending_mid = 0;
            s->acked = reason < 0x80;
            if (!s->acked)
                mqtt__refused(m, "the subscription", s->filter, reason);
        } else {
            mqtt__early_put(m, MQTT__SUBACK, mid, reason);
        }
    }
    pthread_mutex_unlock(&m->lock);
}

static size_t mqtt__sub_ids(const mosquitto_property *props, uint32_t *ids)
{
    size_t n = 0;
    uint32_t id = 0;
    const mosquitto_property *p =
        mosquitto_property_read_varint(props, MQTT_PROP_SUBSCRIPTION_IDENTIFIER, &id, false);
    while (p && n < MQTT__MAX_SUB_IDS) {
        ids[n++] = id;
        p = mosquitto_property_read_varint(p, MQTT_PROP_SUBSCRIPTION_IDENTIFIER, &id, true);
    }
    return n;
}

static int mqtt__matches(const struct mqtt__sub *s, const char *topic)
{
    bool res = false;
    return mosquitto_topic_matches_sub(s->match, topic, &res) == MOSQ_ERR_SUCCESS && res;
}

static size_t mqtt__add_target(struct mqtt__target *t, size_t n, const struct mqtt__sub *s)
{
    for (size_t i = 0; i < n; i++)
        if (t[i].cb == s->cb && t[i].userdata == s->userdata)
            return n;
    if (n == MQTT__MAX_TARGETS)
        return n;
    t[n].cb = s->cb;
    t[n].userdata = s->userdata;
    return n + 1;
}

/* 1 if `id` was handed out by this session object. Lock held. */
static int mqtt__sub_id_ours(const struct nu_mqtt *m, uint32_t id)
{
    return m->sub_ids_wrapped || (id >= m->first_sub_id && id < m->next_sub_id);
}

/*
 * Pick the handlers for one message. Mosquitto sends one copy per matching
 * subscription, each with that subscription's identifier, so routing by id
 * gives every handler each message once even with overlapping filters. A copy
 * whose ids are all ours but no longer registered belongs to a handler just
 * removed: dropped. Ids we never handed out come from an earlier process's
 * resumed session (or there are none): every handler whose filter matches
 * gets the message. Marks dispatching.
 */
static size_t mqtt__route(struct nu_mqtt *m, const char *topic, const uint32_t *ids, size_t n_ids,
                          struct mqtt__target *t)
{
    size_t n = 0;
    int stale = n_ids > 0;
    pthread_mutex_lock(&m->lock);
    for (size_t i = 0; i < n_ids; i++) {
        struct mqtt__sub *s = mqtt__sub_by_id(m, ids[i]);
        if (s && mqtt__matches(s, topic))
            n = mqtt__add_target(t, n, s);
        stale = stale && mqtt__sub_id_ours(m, ids[i]);
    }
    for (struct mqtt__sub *s = m->subs; s && n == 0 && !stale; s = s->next)
        if (mqtt__matches(s, topic))
            n = mqtt__add_target(t, n, s);
    m->dispatching = n > 0;
    pthread_mutex_unlock(&m->lock);
    return n;
}

/* Heap copy of the first user property named `name`, NULL if none. */
static char *mqtt__user_prop(const mosquitto_property *props, const char *name)
{
    char *k = NULL, *v = NULL;
    const mosquitto_property *p =
        mosquitto_property_read_string_pair(props, MQTT_PROP_USER_PROPERTY, &k, &v, false);
    while (p) {
        if (k && strcmp(k, name) == 0) {
            free(k);
            return v;
        }
        free(k);
        free(v);
        k = v = NULL;
        p = mosquitto_property_read_string_pair(p, MQTT_PROP_USER_PROPERTY, &k, &v, true);
    }
    return NULL;
}

static void mqtt__on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *mm,
                             const mosquitto_property *props)
{
    struct nu_mqtt *m = obj;
    (void)mosq;
    if (mm->payloadlen < 0 || (size_t)mm->payloadlen > m->max_payload) {
        nu_warn("mqtt %s: dropped a %d-byte message on '%s' (limit %zu bytes)", m->client_id,
                mm->payloadlen, mm->topic, m->max_payload);
        return;
    }
    uint32_t ids[MQTT__MAX_SUB_IDS];
    size_t n_ids = mqtt__sub_ids(props, ids);
    struct mqtt__target t[MQTT__MAX_TARGETS];
    size_t n = mqtt__route(m, mm->topic, ids, n_ids, t);
    if (n == 0) {
        nu_debug("mqtt %s: no handler for a message on '%s'", m->client_id, mm->topic);
        return;
    }

    char *response_topic = NULL;
    void *corr = NULL;
    uint16_t corr_len = 0;
    char *sig = mqtt__user_prop(props, NU_MSGSIG_PROP);
    mosquitto_property_read_string(props, MQTT_PROP_RESPONSE_TOPIC, &response_topic, false);
    mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len, false);
    struct nu_mqtt_msg msg = {
        .topic = mm->topic,
        .payload = mm->payload ? mm->payload : (const void *)"",
        .len = (size_t)mm->payloadlen,
        .qos = mm->qos,
        .retain = mm->retain,
        .response_topic = response_topic,
        .correlation = corr,
        .correlation_len = corr ? corr_len : 0,
        .signature = sig,
    };
    for (size_t i = 0; i < n; i++)
        t[i].cb(m, &msg, t[i].userdata);
    free(sig);
    free(response_topic);
    free(corr);

    pthread_mutex_lock(&m->lock);
    m->dispatching = 0;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

static void mqtt__on_log(struct mosquitto *mosq, void *obj, int level, const char *text)
{
    const struct nu_mqtt *m = obj;
    (void)mosq;
    if (level & (MOSQ_LOG_ERR | MOSQ_LOG_WARNING))
        nu_warn("mqtt %s: libmosquitto: %s", m->client_id, text);
    else
        nu_debug("mqtt %s: libmosquitto: %s", m->client_id, text);
}

/* ---- network thread ------------------------------------------------------ */

static enum mqtt__phase mqtt__phase_get(struct nu_mqtt *m)
{
    pthread_mutex_lock(&m->lock);
    enum mqtt__phase p = m->phase;
    pthread_mutex_unlock(&m->lock);
    return p;
}

static void mqtt__connect_failed(struct nu_mqtt *m, int err)
{
    pthread_mutex_lock(&m->lock);
    if (m->connect_result == -1)
        m->connect_result = err;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
}

/* Flush a DISCONNECT (normal: the broker drops the will) for a short while. */
static void mqtt__drain(struct nu_mqtt *m)
{
    pthread_mutex_lock(&m->lock);
    int need = m->phase == MQTT__CONNECTED && !m->disconnect_sent;
    m->disconnect_sent = 1;
    pthread_mutex_unlock(&m->lock);
    if (need)
        mosquitto_disconnect_v5(m->mosq, MQTT_RC_NORMAL_DISCONNECTION, NULL);
    uint64_t deadline = nu_mono_ms() + MQTT__DRAIN_MS;
    while (mqtt__phase_get(m) == MQTT__CONNECTED && nu_mono_ms() < deadline)
        if (mosquitto_loop(m->mosq, MQTT__LOOP_BUSY_MS, 1) != MOSQ_ERR_SUCCESS)
            break;
}

static unsigned mqtt__jitter(unsigned ms)
{
    uint32_t r = 0;
    if (ms < 2 || nu_random(&r, sizeof(r)) != NU_OK)
        return ms;
    return ms / 2 + r % (ms / 2 + 1); /* "equal jitter": spread clients out */
}

/* Wait the backoff, then try again, until a TCP+TLS connect starts or stop. */
static void mqtt__reconnect(struct nu_mqtt *m)
{
    for (;;) {
        pthread_mutex_lock(&m->lock);
        uint64_t deadline = nu_mono_ms() + mqtt__jitter(m->backoff_ms);
        m->backoff_ms =
            m->backoff_ms > m->backoff_max_ms / 2 ? m->backoff_max_ms : m->backoff_ms * 2;
        while (!m->stop && mqtt__wait(&m->cond, &m->lock, deadline) != ETIMEDOUT) {
        }
        int stop = m->stop;
        pthread_mutex_unlock(&m->lock);
        if (stop)
            return;
        int rc = mosquitto_reconnect(m->mosq);
        if (rc == MOSQ_ERR_SUCCESS)
            return;
        int saved = errno;
        nu_debug("mqtt %s: reconnect to %s:%d failed: %s", m->client_id, m->host, m->port,
                 rc == MOSQ_ERR_ERRNO ? strerror(saved) : mosquitto_strerror(rc));
    }
}

/* One turn of the network loop; 0 when the thread should end. */
static int mqtt__step(struct nu_mqtt *m)
{
    pthread_mutex_lock(&m->lock);
    int stop = m->stop;
    enum mqtt__phase phase = m->phase;
    pthread_mutex_unlock(&m->lock);
    if (stop) {
        if (phase == MQTT__CONNECTED)
            mqtt__drain(m);
        return 0;
    }
    int timeout = phase == MQTT__CONNECTED ? MQTT__LOOP_IDLE_MS : MQTT__LOOP_BUSY_MS;
    int rc = mosquitto_loop(m->mosq, timeout, 1);
    if (rc == MOSQ_ERR_SUCCESS)
        return 1;

    pthread_mutex_lock(&m->lock);
    if (m->phase == MQTT__CONNECTING) {
        int err = m->connack_reason >= 0 ? mqtt__map_reason(m->connack_reason) : mqtt__map_mosq(rc);
        if (m->connect_result == -1)
            m->connect_result = err == NU_OK ? NU_ERR_CONNECTION : err;
        pthread_cond_broadcast(&m->cond);
        pthread_mutex_unlock(&m->lock);
        if (m->connack_reason < 0)
            mqtt__fail(m, "connect", rc);
        return 0;
    }
    if (m->phase == MQTT__CONNECTED) { /* loop failed without a disconnect callback */
        m->phase = MQTT__RECONNECTING;
        mqtt__lost(m);
    }
    stop = m->stop;
    pthread_mutex_unlock(&m->lock);
    if (stop)
        return 0;
    mqtt__reconnect(m);
    return 1;
}

static void *mqtt__main(void *arg)
{
    struct nu_mqtt *m = arg;
    /* All socket writes happen on this thread (threaded mode only queues
     * elsewhere). OpenSSL writes with write(), so a peer that went away would
     * raise SIGPIPE and kill the process; blocked here, the write fails with
     * EPIPE instead, without touching the application's signal handling. */
    sigset_t pipe_set;
    sigemptyset(&pipe_set);
    sigaddset(&pipe_set, SIGPIPE);
    pthread_sigmask(SIG_BLOCK, &pipe_set, NULL);

    pthread_mutex_lock(&m->lock);
    m->net_tid = pthread_self();
    m->net_tid_valid = 1;
    pthread_mutex_unlock(&m->lock);

    /* Blocking TCP connect, then TLS and CONNECT continue in mosquitto_loop(). */
    int rc = mosquitto_connect_bind_v5(m->mosq, m->host, m->port, m->keepalive_s, NULL,
                                       m->connect_props);
    if (rc != MOSQ_ERR_SUCCESS)
        mqtt__connect_failed(m, mqtt__fail(m, "connect", rc));
    else
        while (mqtt__step(m)) {
        }

    pthread_mutex_lock(&m->lock);
    m->phase = MQTT__IDLE;
    m->net_tid_valid = 0;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return NULL;
}

static void mqtt__join(struct nu_mqtt *m)
{
    pthread_mutex_lock(&m->lock);
    int joinable = m->thread_joinable;
    m->thread_joinable = 0;
    pthread_t t = m->thread;
    pthread_mutex_unlock(&m->lock);
    if (joinable)
        pthread_join(t, NULL);
}

/* ---- create / destroy ------------------------------------------------------ */

static int mqtt__opts_check(const struct nu_mqtt_opts *o)
{
    if (!o->host || !*o->host || strlen(o->host) > 253 || o->port < 1 || o->port > 65535)
        return NU_ERR_INVALID_ARG;
    if (!o->client_id || !mqtt__client_id_ok(o->client_id))
        return NU_ERR_INVALID_ARG;
    if (o->keepalive_s != 0 && (o->keepalive_s < 5 || o->keepalive_s > 65535))
        return NU_ERR_INVALID_ARG;
    if (o->key_file && o->key_pem)
        return NU_ERR_INVALID_ARG;
    if (o->key_pem && (o->key_pem_len == 0 || o->key_pem_len > NU_MQTT_KEY_PEM_MAX))
        return NU_ERR_INVALID_ARG;
    if (!o->cert_file != !(o->key_file || o->key_pem))
        return NU_ERR_INVALID_ARG;
    size_t max = o->max_payload ? o->max_payload : NU_MQTT_DEFAULT_MAX_PAYLOAD;
    if (max > MQTT__PACKET_MAX - MQTT__PACKET_HEADROOM)
        return NU_ERR_INVALID_ARG;
    if (o->backoff_min_ms && o->backoff_max_ms && o->backoff_min_ms > o->backoff_max_ms)
        return NU_ERR_INVALID_ARG;
    const struct nu_mqtt_will *w = &o->will;
    if (w->topic && (!mqtt__topic_ok(w->topic) || w->qos < 0 || w->qos > 1 ||
                     (!w->payload && w->len) || w->len > max))
        return NU_ERR_INVALID_ARG;

    int rc = mqtt__file_check("CA file", o->ca_file);
    if (rc == NU_OK && o->cert_file)
        rc = mqtt__file_check("certificate", o->cert_file);
    if (rc == NU_OK && o->key_file)
        rc = mqtt__file_check("key", o->key_file);
    return rc;
}

static int mqtt__config(struct nu_mqtt *m, const struct nu_mqtt_opts *o)
{
    m->port = o->port;
    m->keepalive_s = o->keepalive_s ? o->keepalive_s : NU_MQTT_DEFAULT_KEEPALIVE_S;
    m->backoff_min_ms = o->backoff_min_ms ? o->backoff_min_ms : NU_MQTT_DEFAULT_BACKOFF_MIN_MS;
    m->backoff_max_ms = o->backoff_max_ms ? o->backoff_max_ms : NU_MQTT_DEFAULT_BACKOFF_MAX_MS;
    if (m->backoff_max_ms < m->backoff_min_ms)
        m->backoff_max_ms = m->backoff_min_ms;
    m->op_timeout_ms = o->op_timeout_ms ? o->op_timeout_ms : NU_MQTT_DEFAULT_OP_TIMEOUT_MS;
    m->request_timeout_ms =
        o->request_timeout_ms ? o->request_timeout_ms : NU_MQTT_DEFAULT_REQUEST_TIMEOUT_MS;
    m->max_payload = o->max_payload ? o->max_payload : NU_MQTT_DEFAULT_MAX_PAYLOAD;
    m->on_connection = o->on_connection;
    m->userdata = o->userdata;
    m->backoff_ms = m->backoff_min_ms;
    /* Start subscription ids at a random point so that ids still stored in a
     * resumed broker session by an earlier process are almost surely not
     * mistaken for ours (see mqtt__route). */
    uint32_t r = 0;
    nu_random(&r, sizeof(r));
    m->first_sub_id = 1u + r % (MQTT__SUB_ID_MAX / 2u);
    m->next_sub_id = m->first_sub_id;
    m->connect_result = -1;
    m->connack_reason = -1;

    m->host = strdup(o->host);
    m->client_id = strdup(o->client_id);
    size_t n = strlen(MQTT__REPLY_SUFFIX_FMT) + strlen(o->client_id);
    m->reply_topic = malloc(n);
    if (!m->host || !m->client_id || !m->reply_topic)
        return NU_ERR_NOMEM;
    const char *colon = strchr(o->client_id, ':');
    if (colon)
        snprintf(m->reply_topic, n, MQTT__REPLY_SUFFIX_FMT, (int)(colon - o->client_id),
                 o->client_id, colon + 1);
    else
        snprintf(m->reply_topic, n, MQTT__REPLY_FMT, o->client_id);

    uint32_t expiry = o->session_expiry_s;
    if (!o->clean_start && expiry == 0)
        expiry = NU_MQTT_DEFAULT_SESSION_EXPIRY_S;
    int rc = MOSQ_ERR_SUCCESS;
    if (expiry)
        rc = mosquitto_property_add_int32(&m->connect_props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                          expiry);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_property_add_int32(&m->connect_props, MQTT_PROP_MAXIMUM_PACKET_SIZE,
                                          (uint32_t)(m->max_payload + MQTT__PACKET_HEADROOM));
    return rc == MOSQ_ERR_SUCCESS ? NU_OK : mqtt__map_mosq(rc);
}

static int mqtt__mosq_setup(struct nu_mqtt *m, const struct nu_mqtt_opts *o)
{
    struct mosquitto *mosq = m->mosq;
    int rc = mosquitto_int_option(mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_int_option(mosq, MOSQ_OPT_TCP_NODELAY, 1); /* request latency */
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_threaded_set(mosq, true); /* our own network thread */
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_tls_set(mosq, o->ca_file, NULL, o->cert_file,
                               o->key_pem ? m->key_path : o->key_file, NULL);
    if (rc == MOSQ_ERR_SUCCESS && o->will.topic)
        rc = mosquitto_will_set_v5(mosq, o->will.topic, (int)o->will.len, o->will.payload,
                                   o->will.qos, o->will.retain != 0, NULL);
    if (rc != MOSQ_ERR_SUCCESS)
        return mqtt__fail(m, "setup", rc) == NU_ERR_NOMEM ? NU_ERR_NOMEM : NU_ERR_MQTT;

    mosquitto_connect_v5_callback_set(mosq, mqtt__on_connect);
    mosquitto_disconnect_v5_callback_set(mosq, mqtt__on_disconnect);
    mosquitto_publish_v5_callback_set(mosq, mqtt__on_publish);
    mosquitto_subscribe_v5_callback_set(mosq, mqtt__on_subscribe);
    mosquitto_message_v5_callback_set(mosq, mqtt__on_message);
    mosquitto_log_callback_set(mosq, mqtt__on_log);
    return NU_OK;
}

/* key_pem into a sealed memfd: readable by path, never on a file system. */
static int mqtt__key_memfd(struct nu_mqtt *m, const char *pem, size_t len)
{
    int fd = memfd_create("nu_mqtt_key", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (fd < 0) {
        nu_warn("mqtt: memfd_create: %s", strerror(errno));
        return NU_ERR_IO;
    }
    m->key_fd = fd;
    size_t put = 0;
    while (put < len) {
        ssize_t n = write(fd, pem + put, len - put);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NU_ERR_IO;
        put += (size_t)n;
    }
    if (fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL) != 0) {
        nu_warn("mqtt: sealing the key memfd: %s", strerror(errno));
        return NU_ERR_IO;
    }
    snprintf(m->key_path, sizeof(m->key_path), "/proc/self/fd/%d", fd);
    return NU_OK;
}

int nu_mqtt_create(const struct nu_mqtt_opts *opts, struct nu_mqtt **out_m)
{
    if (!opts || !out_m)
        return NU_ERR_INVALID_ARG;
    *out_m = NULL;
    int rc = mqtt__opts_check(opts);
    if (rc != NU_OK)
        return rc;

    struct nu_mqtt *m = calloc(1, sizeof(*m));
    if (!m)
        return NU_ERR_NOMEM;
    m->key_fd = -1;
    pthread_mutex_init(&m->lock, NULL);
    mqtt__cond_init(&m->cond);
    rc = mqtt__config(m, opts);
    if (rc == NU_OK && opts->key_pem)
        rc = mqtt__key_memfd(m, opts->key_pem, opts->key_pem_len);
    if (rc != NU_OK)
        goto out;

    pthread_once(&mqtt__lib_once, mqtt__lib_init);
    m->mosq = mosquitto_new(m->client_id, opts->clean_start != 0, m);
    if (!m->mosq) {
        rc = errno == ENOMEM ? NU_ERR_NOMEM : NU_ERR_MQTT;
        goto out;
    }
    rc = mqtt__mosq_setup(m, opts);
out:
    if (rc != NU_OK) {
        nu_mqtt_destroy(m);
        return rc;
    }
    *out_m = m;
    return NU_OK;
}

void nu_mqtt_destroy(struct nu_mqtt *m)
{
    if (!m)
        return;
    nu_mqtt_disconnect(m);
    mosquitto_destroy(m->mosq);
    mosquitto_property_free_all(&m->connect_props);
    nu_p256_key_destroy(m->own_key);
    while (m->subs) {
        struct mqtt__sub *s = m->subs;
        m->subs = s->next;
        mqtt__sub_free(s);
    }
    if (m->key_fd >= 0)
        close(m->key_fd);
    free(m->reply_topic);
    free(m->client_id);
    free(m->host);
    pthread_cond_destroy(&m->cond);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

/* ---- connect / disconnect ------------------------------------------------- */

int nu_mqtt_connect(struct nu_mqtt *m, unsigned timeout_ms)
{
    if (!m)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&m->lock);
    int busy = mqtt__on_net_thread(m) || (m->phase != MQTT__IDLE && !m->stop);
    pthread_mutex_unlock(&m->lock);
    if (busy)
        return NU_ERR_STATE;
    mqtt__join(m); /* an abandoned attempt (earlier timeout) must be over first */

    pthread_mutex_lock(&m->lock);
    if (m->phase != MQTT__IDLE) {
        pthread_mutex_unlock(&m->lock);
        return NU_ERR_STATE;
    }
    m->stop = 0;
    m->disconnect_sent = 0;
    m->connect_result = -1;
    m->connack_reason = -1;
    m->backoff_ms = m->backoff_min_ms;
    m->phase = MQTT__CONNECTING;
    if (pthread_create(&m->thread, NULL, mqtt__main, m) != 0) {
        m->phase = MQTT__IDLE;
        pthread_mutex_unlock(&m->lock);
        return NU_ERR_NOMEM;
    }
    m->thread_joinable = 1;
    uint64_t deadline = nu_mono_ms() + (timeout_ms ? timeout_ms : m->op_timeout_ms);
    while (m->connect_result == -1 && mqtt__wait(&m->cond, &m->lock, deadline) != ETIMEDOUT) {
    }
    int rc = m->connect_result;
    if (rc == -1) {
        /* Abandon the attempt; the thread notices within MQTT__LOOP_BUSY_MS
         * (or when a blocking TCP connect returns) and ends by itself. */
        m->stop = 1;
        m->gen++;
        mqtt__wake_all(m);
        rc = NU_ERR_TIMEOUT;
        nu_warn("mqtt %s: no CONNACK from %s:%d within %u ms", m->client_id, m->host, m->port,
                timeout_ms ? timeout_ms : m->op_timeout_ms);
    }
    pthread_mutex_unlock(&m->lock);
    if (rc != NU_OK && rc != NU_ERR_TIMEOUT)
        mqtt__join(m); /* it reported and is ending */
    return rc;
}

int nu_mqtt_disconnect(struct nu_mqtt *m)
{
    if (!m)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&m->lock);
    if (mqtt__on_net_thread(m)) {
        pthread_mutex_unlock(&m->lock);
        return NU_ERR_STATE;
    }
    int send = 0;
    if (m->phase != MQTT__IDLE && !m->stop) {
        m->stop = 1;
        m->gen++;
        if (m->phase == MQTT__CONNECTED && !m->disconnect_sent) {
            m->disconnect_sent = 1;
            send = 1;
        }
        mqtt__wake_all(m);
    }
    pthread_mutex_unlock(&m->lock);
    /* From here too (not only the thread's drain) because this also wakes
     * the network thread out of select(). */
    if (send)
        mosquitto_disconnect_v5(m->mosq, MQTT_RC_NORMAL_DISCONNECTION, NULL);
    mqtt__join(m);
    return NU_OK;
}

int nu_mqtt_is_connected(struct nu_mqtt *m)
{
    if (!m)
        return 0;
    pthread_mutex_lock(&m->lock);
    int up = m->phase == MQTT__CONNECTED && !m->stop;
    pthread_mutex_unlock(&m->lock);
    return up;
}

const char *nu_mqtt_client_id(const struct nu_mqtt *m)
{
    return m ? m->client_id : NULL;
}

/* ---- subscribe ------------------------------------------------------------ */

/* The SUBSCRIBE went out from an application thread: wait for its SUBACK and
 * keep or drop the handler accordingly. Lock held. */
static int mqtt__subscribe_wait(struct nu_mqtt *m, const char *filter, uint32_t id, int mid,
                                uint64_t deadline, unsigned gen)
{
    int reason = 0;
    int rc = mqtt__ack_wait(m, MQTT__SUBACK, mid, deadline, gen, 0, &reason);
    if (rc == NU_OK && reason < 0x80) {
        struct mqtt__sub *s = mqtt__sub_by_id(m, id);
        if (s)
            s->acked = 1;
        return NU_OK;
    }
    struct mqtt__sub *s = mqtt__sub_unlink_id(m, id);
    mqtt__dispatch_quiesce(m);
    mqtt__sub_free(s);
    if (rc == NU_OK)
        return mqtt__refused(m, "the subscription", filter, reason);
    nu_warn("mqtt %s: no SUBACK for '%s': %s", m->client_id, filter, nu_err_str(rc));
    return rc;
}

static int mqtt__subscribe(struct nu_mqtt *m, const char *filter, int qos, nu_mqtt_handler cb,
                           void *userdata, int internal, uint64_t deadline)
{
    struct mqtt__sub *s = mqtt__sub_new(filter, qos, cb, userdata, internal);
    if (!s)
        return NU_ERR_NOMEM;
    pthread_mutex_lock(&m->lock);
    if (mqtt__sub_find(m, filter)) {
        pthread_mutex_unlock(&m->lock);
        mqtt__sub_free(s);
        return NU_ERR_EXISTS;
    }
    s->id = m->next_sub_id++;
    if (m->next_sub_id > MQTT__SUB_ID_MAX) {
        m->next_sub_id = 1;
        m->sub_ids_wrapped = 1;
    }
    uint32_t id = s->id;
    s->next = m->subs;
    m->subs = s;
    if (m->phase != MQTT__CONNECTED || m->stop) {
        pthread_mutex_unlock(&m->lock); /* sent by mqtt__resubscribe on CONNACK */
        return NU_OK;
    }
    int on_net = mqtt__on_net_thread(m);
    unsigned gen = m->gen;
    m->unregistered++;
    pthread_mutex_unlock(&m->lock);

    int mid = 0;
    int mrc = mqtt__send_subscribe(m, filter, qos, 0, id, &mid);

    pthread_mutex_lock(&m->lock);
    int rc = NU_OK;
    if (mrc == MOSQ_ERR_NO_CONN) {
        mqtt__unregistered_done(m); /* connection just dropped: resubscribed on CONNACK */
    } else if (mrc != MOSQ_ERR_SUCCESS) {
        mqtt__unregistered_done(m);
        mqtt__sub_free(mqtt__sub_unlink_id(m, id));
        rc = mqtt__fail(m, "subscribe", mrc);
    } else if (on_net) {
        mqtt__unregistered_done(m); /* the SUBACK cannot overtake us on our own thread */
        s = mqtt__sub_by_id(m, id);
        if (s)
            s->pending_mid = mid;
    } else {
        rc = mqtt__subscribe_wait(m, filter, id, mid, deadline, gen);
    }
    pthread_mutex_unlock(&m->lock);
    if (rc == NU_ERR_TIMEOUT)
        mosquitto_unsubscribe_v5(m->mosq, NULL, filter, NULL); /* best effort */
    return rc;
}

int nu_mqtt_subscribe(struct nu_mqtt *m, const char *filter, int qos, nu_mqtt_handler cb,
                      void *userdata)
{
    if (!m || !cb || qos < 0 || qos > 1 || !mqtt__filter_ok(filter))
        return NU_ERR_INVALID_ARG;
    return mqtt__subscribe(m, filter, qos, cb, userdata, 0, nu_mono_ms() + m->op_timeout_ms);
}

int nu_mqtt_unsubscribe(struct nu_mqtt *m, const char *filter)
{
    if (!m || !filter)
        return NU_ERR_INVALID_ARG;
    pthread_mutex_lock(&m->lock);
    struct mqtt__sub *s = mqtt__sub_find(m, filter);
    if (!s || s->internal) {
        pthread_mutex_unlock(&m->lock);
        return NU_ERR_NOT_FOUND;
    }
    mqtt__sub_unlink_id(m, s->id);
    int send = m->phase == MQTT__CONNECTED && !m->stop;
    mqtt__dispatch_quiesce(m);
    pthread_mutex_unlock(&m->lock);
    if (send) {
        int mrc = mosquitto_unsubscribe_v5(m->mosq, NULL, s->filter, NULL);
        if (mrc != MOSQ_ERR_SUCCESS)
            nu_debug("mqtt %s: unsubscribe '%s': %s", m->client_id, s->filter,
                     mosquitto_strerror(mrc));
    }
    mqtt__sub_free(s);
    return NU_OK;
}

/* ---- publish -------------------------------------------------------------- */

static int mqtt__publish_args_ok(const struct nu_mqtt *m, const char *topic, const void *payload,
                                 size_t len, int qos)
{
    if (!m || !mqtt__topic_ok(topic) || qos < 0 || qos > 1 || (!payload && len))
        return NU_ERR_INVALID_ARG;
    return len > m->max_payload ? NU_ERR_TOO_LARGE : NU_OK;
}

/* With a signer: append the NU_MSGSIG_PROP user property to *props (which
 * the caller frees). A message is never sent unsigned by a signing session. */
static int mqtt__sign(struct nu_mqtt *m, const char *topic, const void *payload, size_t len,
                      mosquitto_property **props)
{
    if (!m->signer.sign_digest)
        return NU_OK;
    char value[NU_MSGSIG_VALUE_MAX];
    int rc = nu_msgsig_sign(&m->signer, topic, payload, len, value);
    if (rc != NU_OK) {
        nu_error("mqtt %s: cannot sign the message to '%s': %s", m->client_id, topic,
                 nu_err_str(rc));
        return rc;
    }
    int mrc =
        mosquitto_property_add_string_pair(props, MQTT_PROP_USER_PROPERTY, NU_MSGSIG_PROP, value);
    return mrc == MOSQ_ERR_SUCCESS ? NU_OK : mqtt__map_mosq(mrc);
}

int nu_mqtt_set_signer(struct nu_mqtt *m, const struct nu_signer *signer)
{
    if (!m || (signer && !signer->sign_digest))
        return NU_ERR_INVALID_ARG;
    if (signer)
        m->signer = *signer;
    else
        memset(&m->signer, 0, sizeof(m->signer));
    return NU_OK;
}

int nu_mqtt_sign_with_key(struct nu_mqtt *m, struct nu_p256_key *key)
{
    struct nu_signer s;
    if (!m || !key || nu_p256_key_signer(key, &s) != NU_OK) {
        nu_p256_key_destroy(key);
        return NU_ERR_INVALID_ARG;
    }
    nu_p256_key_destroy(m->own_key);
    m->own_key = key;
    m->signer = s;
    return NU_OK;
}

/*
 * Publish and, for QoS 1 from an application thread, wait for the PUBACK
 * until `deadline`, as `mode` says for an outage. *out_reason gets the PUBACK
 * reason (0 otherwise).
 */
static int mqtt__publish(struct nu_mqtt *m, const char *topic, const void *payload, size_t len,
                         int qos, int retain, const mosquitto_property *props, uint64_t deadline,
                         enum mqtt__pub_mode mode, int *out_reason)
{
    *out_reason = 0;
    pthread_mutex_lock(&m->lock);
    if (m->stop || (m->phase != MQTT__CONNECTED && m->phase != MQTT__RECONNECTING)) {
        pthread_mutex_unlock(&m->lock);
        return NU_ERR_STATE;
    }
    if (mode == MQTT__PUB_DROP && m->phase != MQTT__CONNECTED) {
        pthread_mutex_unlock(&m->lock);
        return NU_ERR_CONNECTION; /* nothing queued: the requester's retry recovers it */
    }
    int wait_ack = qos == 1 && !mqtt__on_net_thread(m);
    unsigned gen = m->gen;
    if (wait_ack)
        m->unregistered++;
    pthread_mutex_unlock(&m->lock);

    int mid = 0;
    int mrc =
        mosquitto_publish_v5(m->mosq, &mid, topic, (int)len, payload, qos, retain != 0, props);
    /* QoS 1 while offline: libmosquitto keeps it queued and sends it after
     * reconnecting, so "no connection" is not a failure for it. */
    int queued = mrc == MOSQ_ERR_SUCCESS || (mrc == MOSQ_ERR_NO_CONN && qos == 1);
    if (!wait_ack)
        return queued ? NU_OK : mqtt__fail(m, "publish", mrc);

    pthread_mutex_lock(&m->lock);
    int rc;
    if (!queued) {
        mqtt__unregistered_done(m);
        rc = -1;
    } else if (mode != MQTT__PUB_WAIT && m->phase != MQTT__CONNECTED) {
        mqtt__unregistered_done(m); /* queued for after the reconnection, not waited for */
        rc = NU_ERR_CONNECTION;
    } else {
        rc =
            mqtt__ack_wait(m, MQTT__PUBACK, mid, deadline, gen, mode != MQTT__PUB_WAIT, out_reason);
    }
    pthread_mutex_unlock(&m->lock);
    if (rc == -1)
        return mqtt__fail(m, "publish", mrc);
    if (rc == NU_ERR_CONNECTION && mode != MQTT__PUB_WAIT) {
        nu_debug("mqtt %s: '%s' not confirmed: connection lost", m->client_id, topic);
        return rc;
    }
    if (rc != NU_OK) {
        nu_warn("mqtt %s: no PUBACK for '%s': %s", m->client_id, topic, nu_err_str(rc));
        return rc;
    }
    return *out_reason < 0x80 ? NU_OK : mqtt__refused(m, "the publish to", topic, *out_reason);
}

/* nu_mqtt_publish / nu_mqtt_publish_live. */
static int mqtt__publish_signed(struct nu_mqtt *m, const char *topic, const void *payload,
                                size_t len, int qos, int retain, enum mqtt__pub_mode mode)
{
    int rc = mqtt__publish_args_ok(m, topic, payload, len, qos);
    if (rc != NU_OK)
        return rc;
    int reason;
    mosquitto_property *props = NULL;
    rc = mqtt__sign(m, topic, payload, len, &props);
    if (rc == NU_OK)
        rc = mqtt__publish(m, topic, payload, len, qos, retain, props,
                           nu_mono_ms() + m->op_timeout_ms, mode, &reason);
    mosquitto_property_free_all(&props);
    return rc;
}

int nu_mqtt_publish(struct nu_mqtt *m, const char *topic, const void *payload, size_t len, int qos,
                    int retain)
{
    return mqtt__publish_signed(m, topic, payload, len, qos, retain, MQTT__PUB_WAIT);
}

int nu_mqtt_publish_live(struct nu_mqtt *m, const char *topic, const void *payload, size_t len,
                         int qos, int retain)
{
    return mqtt__publish_signed(m, topic, payload, len, qos, retain, MQTT__PUB_LIVE);
}

/* ---- request / reply ------------------------------------------------------- */

/* Internal handler of the reply topic: hand the payload to its request. */
static void mqtt__on_reply(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *userdata)
{
    (void)userdata;
    if (msg->correlation_len != NU_MQTT_CORRELATION_LEN) {
        nu_debug("mqtt %s: reply without our correlation data dropped", m->client_id);
        return;
    }
    pthread_mutex_lock(&m->lock);
    struct mqtt__req *r = m->reqs;
    while (r && (r->done || memcmp(r->corr, msg->correlation, NU_MQTT_CORRELATION_LEN) != 0))
        r = r->next;
    if (r) {
        r->resp = malloc(msg->len + 1);
        if (r->resp) {
            memcpy(r->resp, msg->payload, msg->len);
            r->resp[msg->len] = '\0';
            r->resp_len = msg->len;
            if (msg->signature && strlen(msg->signature) < sizeof(r->sig))
                memcpy(r->sig, msg->signature, strlen(msg->signature) + 1);
        } else {
            r->err = NU_ERR_NOMEM;
        }
        r->done = 1;
        pthread_cond_signal(&r->cond);
    }
    pthread_mutex_unlock(&m->lock);
    if (!r)
        nu_debug("mqtt %s: reply for no waiting request dropped (late or duplicate)", m->client_id);
}

/* Subscribe the reply topic once per session object (kept across reconnects). */
static int mqtt__reply_ready(struct nu_mqtt *m, uint64_t deadline)
{
    pthread_mutex_lock(&m->lock);
    while (m->reply_state == MQTT__REPLY_SUBSCRIBING) {
        if (mqtt__wait(&m->cond, &m->lock, deadline) == ETIMEDOUT &&
            m->reply_state == MQTT__REPLY_SUBSCRIBING) {
            pthread_mutex_unlock(&m->lock);
            return NU_ERR_TIMEOUT;
        }
    }
    if (m->reply_state == MQTT__REPLY_READY) {
        pthread_mutex_unlock(&m->lock);
        return NU_OK;
    }
    m->reply_state = MQTT__REPLY_SUBSCRIBING;
    pthread_mutex_unlock(&m->lock);

    int rc = mqtt__subscribe(m, m->reply_topic, 1, mqtt__on_reply, NULL, 1, deadline);

    pthread_mutex_lock(&m->lock);
    m->reply_state = rc == NU_OK ? MQTT__REPLY_READY : MQTT__REPLY_NONE;
    pthread_cond_broadcast(&m->cond);
    pthread_mutex_unlock(&m->lock);
    return rc;
}

static int mqtt__request_props(const struct nu_mqtt *m, const uint8_t *corr, unsigned timeout_ms,
                               mosquitto_property **out_props)
{
    int rc = mosquitto_property_add_string(out_props, MQTT_PROP_RESPONSE_TOPIC, m->reply_topic);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_property_add_binary(out_props, MQTT_PROP_CORRELATION_DATA, corr,
                                           NU_MQTT_CORRELATION_LEN);
    if (rc == MOSQ_ERR_SUCCESS)
        rc = mosquitto_property_add_int32(out_props, MQTT_PROP_MESSAGE_EXPIRY_INTERVAL,
                                          (timeout_ms + 999u) / 1000u);
    return rc == MOSQ_ERR_SUCCESS ? NU_OK : mqtt__map_mosq(rc);
}

/* Wait for the reply of `r` (linked in m->reqs). Lock held. */
static int mqtt__request_wait(struct nu_mqtt *m, struct mqtt__req *r, uint64_t deadline,
                              unsigned gen)
{
    while (!r->done) {
        if (m->gen != gen)
            return NU_ERR_CONNECTION;
        if (mqtt__wait(&r->cond, &m->lock, deadline) == ETIMEDOUT && !r->done)
            return NU_ERR_TIMEOUT;
    }
    return r->err;
}

static void mqtt__req_unlink(struct nu_mqtt *m, struct mqtt__req *r)
{
    for (struct mqtt__req **pp = &m->reqs; *pp; pp = &(*pp)->next) {
        if (*pp == r) {
            *pp = r->next;
            return;
        }
    }
}

int nu_mqtt_request(struct nu_mqtt *m, const char *topic, const void *payload, size_t len,
                    unsigned timeout_ms, uint8_t **out_resp, size_t *out_len)
{
    return nu_mqtt_request_signed(m, topic, payload, len, timeout_ms, out_resp, out_len, NULL);
}

const char *nu_mqtt_reply_topic(const struct nu_mqtt *m)
{
    return m ? m->reply_topic : NULL;
}

int nu_mqtt_request_signed(struct nu_mqtt *m, const char *topic, const void *payload, size_t len,
                           unsigned timeout_ms, uint8_t **out_resp, size_t *out_len,
                           char out_sig[NU_MSGSIG_VALUE_MAX])
{
    if (!out_resp || !out_len)
        return NU_ERR_INVALID_ARG;
    if (out_sig)
        out_sig[0] = '\0';
    *out_resp = NULL;
    *out_len = 0;
    int rc = mqtt__publish_args_ok(m, topic, payload, len, 1);
    if (rc != NU_OK)
        return rc;
    if (timeout_ms == 0)
        timeout_ms = m->request_timeout_ms;
    uint64_t deadline = nu_mono_ms() + timeout_ms;

    pthread_mutex_lock(&m->lock);
    int on_net = mqtt__on_net_thread(m);
    int live = !m->stop && (m->phase == MQTT__CONNECTED || m->phase == MQTT__RECONNECTING);
    unsigned gen = m->gen;
    pthread_mutex_unlock(&m->lock);
    if (on_net || !live)
        return NU_ERR_STATE;
    rc = mqtt__reply_ready(m, deadline);
    if (rc != NU_OK)
        return rc;

    struct mqtt__req r = {0};
    mosquitto_property *props = NULL;
    rc = nu_random(r.corr, sizeof(r.corr));
    if (rc == NU_OK)
        rc = mqtt__request_props(m, r.corr, timeout_ms, &props);
    if (rc == NU_OK)
        rc = mqtt__sign(m, topic, payload, len, &props);
    if (rc != NU_OK)
        goto out;
    mqtt__cond_init(&r.cond);
    pthread_mutex_lock(&m->lock);
    r.next = m->reqs; /* before publishing: the reply may beat the PUBACK */
    m->reqs = &r;
    pthread_mutex_unlock(&m->lock);

    int reason = 0;
    rc = mqtt__publish(m, topic, payload, len, 1, 0, props, deadline, MQTT__PUB_WAIT, &reason);
    if (rc == NU_OK && reason == MQTT_RC_NO_MATCHING_SUBSCRIBERS) {
        nu_warn("mqtt %s: request to '%s': no subscriber", m->client_id, topic);
        rc = NU_ERR_NOT_FOUND;
    }
    pthread_mutex_lock(&m->lock);
    if (rc == NU_OK)
        rc = mqtt__request_wait(m, &r, deadline, gen);
    mqtt__req_unlink(m, &r);
    pthread_mutex_unlock(&m->lock);
    pthread_cond_destroy(&r.cond);
    if (rc == NU_OK) {
        *out_resp = r.resp;
        *out_len = r.resp_len;
        r.resp = NULL;
        if (out_sig)
            memcpy(out_sig, r.sig, sizeof(r.sig));
    } else if (rc == NU_ERR_TIMEOUT) {
        nu_warn("mqtt %s: no reply to '%s' within %u ms", m->client_id, topic, timeout_ms);
    }
out:
    free(r.resp);
    mosquitto_property_free_all(&props);
    return rc;
}

int nu_mqtt_reply(struct nu_mqtt *m, const struct nu_mqtt_msg *req, const void *payload, size_t len)
{
    if (!m || !req || !req->response_topic || !mqtt__topic_ok(req->response_topic) ||
        (!req->correlation && req->correlation_len) || req->correlation_len > UINT16_MAX)
        return NU_ERR_INVALID_ARG;
    int rc = mqtt__publish_args_ok(m, req->response_topic, payload, len, 1);
    if (rc != NU_OK)
        return rc;
    mosquitto_property *props = NULL;
    if (req->correlation_len) {
        int mrc = mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA,
                                                req->correlation, (uint16_t)req->correlation_len);
        if (mrc != MOSQ_ERR_SUCCESS)
            return mqtt__map_mosq(mrc);
    }
    int reason;
    rc = mqtt__sign(m, req->response_topic, payload, len, &props);
    if (rc == NU_OK)
        rc = mqtt__publish(m, req->response_topic, payload, len, 1, 0, props,
                           nu_mono_ms() + m->op_timeout_ms, MQTT__PUB_DROP, &reason);
    mosquitto_property_free_all(&props);
    return rc;
}
