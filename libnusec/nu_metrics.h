/*
 * nu_metrics — counters, gauges and latency histograms for Prometheus, and
 * the loopback HTTP listener that serves them as /metrics (libmicrohttpd).
 *
 * A program makes one registry (nu_metrics_new), hangs it on its own context
 * (no global), declares its families once at start-up, then updates them
 * from any thread: values are atomics; the first use of a new label set
 * takes the family's mutex. A family holds at most NU_METRICS_SERIES_MAX
 * label sets, so outside input cannot grow memory; a new one beyond takes
 * the place of the least recently updated one (which restarts from 0 if it
 * comes back), counted in nusec_metrics_series_dropped_total: a long-lived
 * process keeps counting its newest jobs.
 *
 * Names follow Prometheus practice (checked by `promtool check metrics`):
 * counters end in _total, histograms of durations in _seconds.
 *
 *     struct nu_metric *issued;
 *     nu_metrics_counter(m, "nusec_cloud_certificates_issued_total",
 *                        "Device certificates issued", "job", &issued);
 *     nu_metric_add(issued, 1, (const char *[]){job_id});
 */
#ifndef NU_METRICS_H
#define NU_METRICS_H

#include <stddef.h>
#include <stdint.h>

#define NU_METRICS_SERIES_MAX 1024 /* label sets of one family */
#define NU_METRICS_LABELS_MAX 3    /* label names of one family */

struct nu_metrics;
struct nu_metric;
struct nu_metrics_http;

/* A new, empty registry. Errors: NOMEM. Free with nu_metrics_free. */
int nu_metrics_new(struct nu_metrics **out);

/* Free the registry and its families (stop its listener first). NULL-safe. */
void nu_metrics_free(struct nu_metrics *m);

/*
 * Declare a family. `labels` is NULL (one series, reported from the start at
 * 0) or comma-separated label names ("job,code"). *out belongs to the
 * registry. Errors: INVALID_ARG (bad name or labels), NOMEM.
 */
int nu_metrics_counter(struct nu_metrics *m, const char *name, const char *help,
                       const char *labels, struct nu_metric **out);
int nu_metrics_gauge(struct nu_metrics *m, const char *name, const char *help, const char *labels,
                     struct nu_metric **out);
/* Latency histogram, buckets from 100 us to 10 s. */
int nu_metrics_histogram(struct nu_metrics *m, const char *name, const char *help,
                         const char *labels, struct nu_metric **out);

/*
 * Declare nusec_build_info{program,version,revision}, set to 1 with this
 * build's nu_version() and nu_version_revision(): every program's /metrics
 * names what runs. Errors: as nu_metrics_gauge.
 */
int nu_metrics_build_info(struct nu_metrics *m, const char *program);

/*
 * Updates; `values` has one string per label name (NULL for a family
 * without labels). NULL family: nothing (so an optional registry needs no
 * checks at the call sites).
 */
void nu_metric_add(struct nu_metric *f, uint64_t n, const char *const *values); /* counter */
void nu_metric_set(struct nu_metric *f, int64_t v, const char *const *values);  /* gauge */
void nu_metric_gauge_add(struct nu_metric *f, int64_t delta, const char *const *values);
void nu_metric_observe_us(struct nu_metric *f, uint64_t us, const char *const *values);

/*
 * Call fn(ctx) at the start of every nu_metrics_render (on the listener's
 * thread), so gauges read from elsewhere (a database) are fresh at each
 * scrape. One hook per registry; NULL fn removes it.
 */
void nu_metrics_on_render(struct nu_metrics *m, void (*fn)(void *ctx), void *ctx);

/*
 * The registry in the Prometheus text exposition format 0.0.4.
 * *out (free()) is NUL-terminated, *out_len without the NUL.
 * Errors: NOMEM.
 */
int nu_metrics_render(struct nu_metrics *m, char **out, size_t *out_len);

/*
 * Serve GET /metrics on `listen`: "HOST:PORT" with an IPv4 literal or
 * "[IPv6]:PORT"; port 0 picks a free one. *out_port is the bound port.
 * Other paths answer 404, other methods 405. The listener runs on its own
 * thread until nu_metrics_http_stop. Errors: INVALID_ARG (listen malformed),
 * IO (cannot bind).
 */
int nu_metrics_http_start(struct nu_metrics *m, const char *listen,
                          struct nu_metrics_http **out, uint16_t *out_port);

/* Stop the listener and free it. NULL-safe. */
void nu_metrics_http_stop(struct nu_metrics_http *h);

/* Monotonic clock in microseconds, for nu_metric_observe_us durations. */
uint64_t nu_metrics_now_us(void);

/* 1 when `listen` is "off" or empty (metrics disabled by configuration). */
int nu_metrics_listen_off(const char *listen);

#endif
