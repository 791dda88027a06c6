#include "nu_metrics.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_version.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

enum nu__kind { NU__COUNTER, NU__GAUGE, NU__HISTOGRAM };

/* Bucket upper bounds in microseconds (rendered in seconds). */
static const uint64_t nu__buckets_us[] = {100,    250,    500,     1000,    2500,    5000,
                                          10000,  25000,  50000,   100000,  250000,  500000,
                                          1000000, 2500000, 5000000, 10000000};
#define NU__NBUCKETS (sizeof(nu__buckets_us) / sizeof(nu__buckets_us[0]))

struct nu__series {
    struct nu__series *next;
    char *values[NU_METRICS_LABELS_MAX];
    int64_t value;                      /* counter, gauge; atomic */
    uint64_t buckets[NU__NBUCKETS + 1]; /* histogram: per bucket (not cumulative), +Inf last */
    uint64_t sum_us, count;
    uint64_t used; /* the family's tick at its last update (under the family's lock) */
};

struct nu_metric {
    struct nu_metric *next;
    struct nu_metrics *reg;
    enum nu__kind kind;
    char *name, *help;
    char *labels[NU_METRICS_LABELS_MAX];
    size_t n_labels;
    pthread_mutex_t lock; /* the series list grows under it; values are atomics */
    struct nu__series *series;
    size_t n_series;
    uint64_t tick; /* updates of new or existing label sets (under lock): LRU order */
};

struct nu_metrics {
    pthread_mutex_t lock; /* the family list */
    struct nu_metric *families, *tail;
    uint64_t dropped; /* label sets evicted at NU_METRICS_SERIES_MAX (or lost to NOMEM) */
    void (*on_render)(void *ctx);
    void *on_render_ctx;
    pthread_mutex_t render_lock; /* one render (and its hook) at a time */
};

int nu_metrics_new(struct nu_metrics **out)
{
    struct nu_metrics *m = calloc(1, sizeof(*m));
    if (!m)
        return NU_ERR_NOMEM;
    pthread_mutex_init(&m->lock, NULL);
    pthread_mutex_init(&m->render_lock, NULL);
    *out = m;
    return NU_OK;
}

static void nu__series_free(struct nu__series *s)
{
    for (size_t i = 0; i < NU_METRICS_LABELS_MAX; i++)
        free(s->values[i]);
    free(s);
}

static void nu__family_free(struct nu_metric *f)
{
    for (struct nu__series *s = f->series, *next; s; s = next) {
        next = s->next;
        nu__series_free(s);
    }
    for (size_t i = 0; i < f->n_labels; i++)
        free(f->labels[i]);
    pthread_mutex_destroy(&f->lock);
    free(f->name);
    free(f->help);
    free(f);
}

void nu_metrics_free(struct nu_metrics *m)
{
    if (!m)
        return;
    for (struct nu_metric *f = m->families, *next; f; f = next) {
        next = f->next;
        nu__family_free(f);
    }
    pthread_mutex_destroy(&m->lock);
    pthread_mutex_destroy(&m->render_lock);
    free(m);
}

/* [a-zA-Z_:][a-zA-Z0-9_:]* (labels: no colon). */
static int nu__name_ok(const char *s, size_t len, int colon)
{
    if (!len)
        return 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || c == '_' ||
                 (colon && c == ':') || (i > 0 && c >= '0' && c <= '9');
        if (!ok)
            return 0;
    }
    return 1;
}

static int nu__labels_parse(struct nu_metric *f, const char *labels)
{
    const char *p = labels;
    while (p && *p) {
        size_t len = strcspn(p, ",");
        if (f->n_labels == NU_METRICS_LABELS_MAX || !nu__name_ok(p, len, 0) ||
            (len == 2 && !strncmp(p, "le", 2)))
            return NU_ERR_INVALID_ARG;
        if (!(f->labels[f->n_labels] = strndup(p, len)))
            return NU_ERR_NOMEM;
        f->n_labels++;
        p += len + (p[len] == ',');
    }
    return NU_OK;
}

static struct nu__series *nu__series_new(const struct nu_metric *f, const char *const *values)
{
    struct nu__series *s = calloc(1, sizeof(*s));
    for (size_t i = 0; s && i < f->n_labels; i++) {
        if (!(s->values[i] = strdup(values && values[i] ? values[i] : ""))) {
            nu__series_free(s);
            return NULL;
        }
    }
    return s;
}

static int nu__family(struct nu_metrics *m, enum nu__kind kind, const char *name,
                      const char *help, const char *labels, struct nu_metric **out)
{
    if (!m || !name || !help || !out || !nu__name_ok(name, strlen(name), 1))
        return NU_ERR_INVALID_ARG;
    struct nu_metric *f = calloc(1, sizeof(*f));
    if (!f)
        return NU_ERR_NOMEM;
    pthread_mutex_init(&f->lock, NULL);
    f->reg = m;
    f->kind = kind;
    f->name = strdup(name);
    f->help = strdup(help);
    int rc = f->name && f->help ? nu__labels_parse(f, labels) : NU_ERR_NOMEM;
    /* Without labels the one series exists from the start: a scrape shows 0. */
    if (!rc && !f->n_labels && !(f->series = nu__series_new(f, NULL)))
        rc = NU_ERR_NOMEM;
    if (rc) {
        nu__family_free(f);
        return rc;
    }
    f->n_series = f->series ? 1 : 0;
    pthread_mutex_lock(&m->lock);
    if (m->tail)
        m->tail->next = f;
    else
        m->families = f;
    m->tail = f;
    pthread_mutex_unlock(&m->lock);
    *out = f;
    return NU_OK;
}

int nu_metrics_counter(struct nu_metrics *m, const char *name, const char *help,
                       const char *labels, struct nu_metric **out)
{
    return nu__family(m, NU__COUNTER, name, help, labels, out);
}

int nu_metrics_gauge(struct nu_metrics *m, const char *name, const char *help, const char *labels,
                     struct nu_metric **out)
{
    return nu__family(m, NU__GAUGE, name, help, labels, out);
}

int nu_metrics_histogram(struct nu_metrics *m, const char *name, const char *help,
                         const char *labels, struct nu_metric **out)
{
    return nu__family(m, NU__HISTOGRAM, name, help, labels, out);
}

/*
 * A full family gives its least recently updated series to the new label
 * set (values reset: a counter restarts, which Prometheus reads as a reset).
 * Dropping the new set instead meant that once a long-lived cloud had seen
 * NU_METRICS_SERIES_MAX jobs, no later job was counted at all. The old
 * struct is reused in place, never freed: an updater still holding it adds
 * to the new set at worst. Caller holds the family's lock; NULL on NOMEM.
 */
static struct nu__series *nu__evict(struct nu_metric *f, const char *const *values)
{
    struct nu__series *old = f->series;
    char *copy[NU_METRICS_LABELS_MAX] = {0};
    for (struct nu__series *s = f->series; s; s = s->next)
        if (s->used < old->used)
            old = s;
    for (size_t i = 0; i < f->n_labels; i++) {
        if (!(copy[i] = strdup(values && values[i] ? values[i] : ""))) {
            while (i--)
                free(copy[i]);
            return NULL;
        }
    }
    for (size_t i = 0; i < f->n_labels; i++) {
        free(old->values[i]);
        old->values[i] = copy[i];
    }
    __atomic_store_n(&old->value, 0, __ATOMIC_RELAXED);
    for (size_t b = 0; b <= NU__NBUCKETS; b++)
        __atomic_store_n(&old->buckets[b], 0, __ATOMIC_RELAXED);
    __atomic_store_n(&old->sum_us, 0, __ATOMIC_RELAXED);
    __atomic_store_n(&old->count, 0, __ATOMIC_RELAXED);
    return old;
}

/* The series of these label values, made on first use (a full family evicts
 * its least recently updated one); NULL when out of memory. */
static struct nu__series *nu__find(struct nu_metric *f, const char *const *values)
{
    if (!f->n_labels)
        return f->series;
    pthread_mutex_lock(&f->lock);
    struct nu__series *s = f->series;
    for (; s; s = s->next) {
        size_t i = 0;
        while (i < f->n_labels && !strcmp(s->values[i], values && values[i] ? values[i] : ""))
            i++;
        if (i == f->n_labels)
            break;
    }
    int evicted = 0;
    if (!s && f->n_series < NU_METRICS_SERIES_MAX && (s = nu__series_new(f, values))) {
        s->next = f->series;
        f->series = s;
        f->n_series++;
    } else if (!s && f->series) {
        evicted = (s = nu__evict(f, values)) != NULL;
    }
    if (s)
        s->used = ++f->tick;
    pthread_mutex_unlock(&f->lock);
    if (!s || evicted)
        __atomic_add_fetch(&f->reg->dropped, 1, __ATOMIC_RELAXED);
    return s;
}

void nu_metric_add(struct nu_metric *f, uint64_t n, const char *const *values)
{
    struct nu__series *s = f ? nu__find(f, values) : NULL;
    if (s)
        __atomic_add_fetch(&s->value, (int64_t)n, __ATOMIC_RELAXED);
}

int nu_metrics_build_info(struct nu_metrics *m, const char *program)
{
    struct nu_metric *info = NULL;
    int rc =
        nu_metrics_gauge(m, "nusec_build_info", "The program's version and git revision (value 1).",
                         "program,version,revision", &info);
    if (rc == NU_OK)
        nu_metric_set(info, 1, (const char *[]){program, nu_version(), nu_version_revision()});
    return rc;
}

void nu_metric_set(struct nu_metric *f, int64_t v, const char *const *values)
{
    struct nu__series *s = f ? nu__find(f, values) : NULL;
    if (s)
        __atomic_store_n(&s->value, v, __ATOMIC_RELAXED);
}

void nu_metric_gauge_add(struct nu_metric *f, int64_t delta, const char *const *values)
{
    struct nu__series *s = f ? nu__find(f, values) : NULL;
    if (s)
        __atomic_add_fetch(&s->value, delta, __ATOMIC_RELAXED);
}

void nu_metric_observe_us(struct nu_metric *f, uint64_t us, const char *const *values)
{
    struct nu__series *s = f ? nu__find(f, values) : NULL;
    if (!s)
        return;
    size_t b = 0;
    while (b < NU__NBUCKETS && us > nu__buckets_us[b])
        b++;
    __atomic_add_fetch(&s->buckets[b], 1, __ATOMIC_RELAXED);
    __atomic_add_fetch(&s->sum_us, us, __ATOMIC_RELAXED);
    __atomic_add_fetch(&s->count, 1, __ATOMIC_RELAXED);
}

/* ------------------------------------------------------------ exposition format */

static void nu__escaped(FILE *o, const char *s, int help)
{
    for (; *s; s++) {
        if (*s == '\\')
            fputs("\\\\", o);
        else if (*s == '\n')
            fputs("\\n", o);
        else if (*s == '"' && !help)
            fputs("\\\"", o);
        else
            fputc(*s, o);
    }
}

/* {a="x",b="y"[,le="..."]} or nothing. */
static void nu__label_set(FILE *o, const struct nu_metric *f, const struct nu__series *s,
                          const char *le)
{
    if (!f->n_labels && !le)
        return;
    fputc('{', o);
    for (size_t i = 0; i < f->n_labels; i++) {
        fprintf(o, "%s%s=\"", i ? "," : "", f->labels[i]);
        nu__escaped(o, s->values[i], 0);
        fputc('"', o);
    }
    if (le)
        fprintf(o, "%sle=\"%s\"", f->n_labels ? "," : "", le);
    fputc('}', o);
}

static void nu__render_histogram(FILE *o, const struct nu_metric *f, const struct nu__series *s)
{
    uint64_t cum = 0;
    char le[32];
    for (size_t b = 0; b <= NU__NBUCKETS; b++) {
        cum += __atomic_load_n(&s->buckets[b], __ATOMIC_RELAXED);
        if (b < NU__NBUCKETS)
            snprintf(le, sizeof(le), "%g", (double)nu__buckets_us[b] / 1e6);
        else
            snprintf(le, sizeof(le), "+Inf");
        fprintf(o, "%s_bucket", f->name);
        nu__label_set(o, f, s, le);
        fprintf(o, " %llu\n", (unsigned long long)cum);
    }
    fprintf(o, "%s_sum", f->name);
    nu__label_set(o, f, s, NULL);
    fprintf(o, " %.6f\n", (double)__atomic_load_n(&s->sum_us, __ATOMIC_RELAXED) / 1e6);
    fprintf(o, "%s_count", f->name);
    nu__label_set(o, f, s, NULL);
    /* The count is the +Inf bucket, read once, so the two always agree. */
    fprintf(o, " %llu\n", (unsigned long long)cum);
}

static void nu__render_family(FILE *o, struct nu_metric *f)
{
    static const char *const types[] = {"counter", "gauge", "histogram"};
    fprintf(o, "# HELP %s ", f->name);
    nu__escaped(o, f->help, 1);
    fprintf(o, "\n# TYPE %s %s\n", f->name, types[f->kind]);
    pthread_mutex_lock(&f->lock);
    for (const struct nu__series *s = f->series; s; s = s->next) {
        if (f->kind == NU__HISTOGRAM) {
            nu__render_histogram(o, f, s);
            continue;
        }
        fputs(f->name, o);
        nu__label_set(o, f, s, NULL);
        fprintf(o, " %lld\n", (long long)__atomic_load_n(&s->value, __ATOMIC_RELAXED));
    }
    pthread_mutex_unlock(&f->lock);
}

void nu_metrics_on_render(struct nu_metrics *m, void (*fn)(void *ctx), void *ctx)
{
    pthread_mutex_lock(&m->render_lock);
    m->on_render = fn;
    m->on_render_ctx = ctx;
    pthread_mutex_unlock(&m->render_lock);
}

int nu_metrics_render(struct nu_metrics *m, char **out, size_t *out_len)
{
    char *buf = NULL;
    size_t len = 0;
    pthread_mutex_lock(&m->render_lock);
    if (m->on_render)
        m->on_render(m->on_render_ctx);
    FILE *o = open_memstream(&buf, &len);
    if (!o) {
        pthread_mutex_unlock(&m->render_lock);
        return NU_ERR_NOMEM;
    }
    pthread_mutex_lock(&m->lock);
    for (struct nu_metric *f = m->families; f; f = f->next)
        nu__render_family(o, f);
    pthread_mutex_unlock(&m->lock);
    fprintf(o,
            "# HELP nusec_metrics_series_dropped_total Label sets dropped: a family at %d "
            "gave its least recently updated one to a new one.\n"
            "# TYPE nusec_metrics_series_dropped_total counter\n"
            "nusec_metrics_series_dropped_total %llu\n",
            NU_METRICS_SERIES_MAX,
            (unsigned long long)__atomic_load_n(&m->dropped, __ATOMIC_RELAXED));
    pthread_mutex_unlock(&m->render_lock);
    if (fclose(o) != 0 || !buf) {
        free(buf);
        return NU_ERR_NOMEM;
    }
    *out = buf;
    *out_len = len;
    return NU_OK;
}

/* ------------------------------------------------------------ HTTP listener */

struct nu_metrics_http {
    struct MHD_Daemon *daemon;
    struct nu_metrics *m;
};

static enum MHD_Result nu__http_answer(struct MHD_Connection *c, unsigned status,
                                       const char *type, char *body, size_t len,
                                       enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, body, mode);
    if (!r) {
        if (mode == MHD_RESPMEM_MUST_FREE)
            free(body);
        return MHD_NO;
    }
    MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ret = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ret;
}

static enum MHD_Result nu__http_handle(void *cls, struct MHD_Connection *c, const char *url,
                                       const char *method, const char *version,
                                       const char *upload, size_t *upload_len, void **state)
{
    struct nu_metrics_http *h = cls;
    static char not_found[] = "not found: try /metrics\n", not_allowed[] = "GET only\n";
    if (strcmp(method, MHD_HTTP_METHOD_GET) != 0 && strcmp(method, MHD_HTTP_METHOD_HEAD) != 0)
        return nu__http_answer(c, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain", not_allowed,
                               strlen(not_allowed), MHD_RESPMEM_PERSISTENT);
    if (strcmp(url, "/metrics") != 0)
        return nu__http_answer(c, MHD_HTTP_NOT_FOUND, "text/plain", not_found,
                               strlen(not_found), MHD_RESPMEM_PERSISTENT);
    char *body = NULL;
    size_t len = 0;
    if (nu_metrics_render(h->m, &body, &len) != NU_OK)
        return MHD_NO;
    return nu__http_answer(c, MHD_HTTP_OK, "text/plain; version=0.0.4; charset=utf-8", body, len,
                           MHD_RESPMEM_MUST_FREE);
}

uint64_t nu_metrics_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

int nu_metrics_listen_off(const char *listen)
{
    return !listen || !*listen || !strcmp(listen, "off");
}

/* "a.b.c.d:PORT" or "[v6]:PORT" into *ss. */
static int nu__listen_parse(const char *listen, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[64];
    const char *colon = strrchr(listen, ':');
    if (!colon || !colon[1] || (size_t)(colon - listen) >= sizeof(host))
        return NU_ERR_INVALID_ARG;
    char *end = NULL;
    unsigned long port = strtoul(colon + 1, &end, 10);
    if (*end || port > 65535)
        return NU_ERR_INVALID_ARG;
    memcpy(host, listen, (size_t)(colon - listen));
    host[colon - listen] = 0;
    memset(ss, 0, sizeof(*ss));
    size_t hl = strlen(host);
    if (hl > 2 && host[0] == '[' && host[hl - 1] == ']') {
        struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)ss;
        host[hl - 1] = 0;
        a6->sin6_family = AF_INET6;
        a6->sin6_port = htons((uint16_t)port);
        *len = sizeof(*a6);
        return inet_pton(AF_INET6, host + 1, &a6->sin6_addr) == 1 ? NU_OK : NU_ERR_INVALID_ARG;
    }
    struct sockaddr_in *a4 = (struct sockaddr_in *)ss;
    a4->sin_family = AF_INET;
    a4->sin_port = htons((uint16_t)port);
    *len = sizeof(*a4);
    return inet_pton(AF_INET, host, &a4->sin_addr) == 1 ? NU_OK : NU_ERR_INVALID_ARG;
}

int nu_metrics_http_start(struct nu_metrics *m, const char *listen,
                          struct nu_metrics_http **out, uint16_t *out_port)
{
    struct sockaddr_storage ss;
    socklen_t sl = 0;
    if (!m || !listen || !out || nu__listen_parse(listen, &ss, &sl) != NU_OK)
        return NU_ERR_INVALID_ARG;
    struct nu_metrics_http *h = calloc(1, sizeof(*h));
    if (!h)
        return NU_ERR_NOMEM;
    h->m = m;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ERROR_LOG;
    if (ss.ss_family == AF_INET6)
        flags |= MHD_USE_IPv6;
    /* A scrape is small and quick: few connections, short timeouts. */
    h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, nu__http_handle, h, MHD_OPTION_SOCK_ADDR,
                                 (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT, 16u,
                                 MHD_OPTION_CONNECTION_TIMEOUT, 10u, MHD_OPTION_END);
    if (!h->daemon) {
        nu_error("metrics: cannot listen on %s", listen);
        free(h);
        return NU_ERR_IO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    if (out_port)
        *out_port = info ? info->port : 0;
    *out = h;
    return NU_OK;
}

void nu_metrics_http_stop(struct nu_metrics_http *h)
{
    if (!h)
        return;
    MHD_stop_daemon(h->daemon);
    free(h);
}
