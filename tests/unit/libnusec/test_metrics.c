/* nu_metrics: the exposition format a scraper reads, bounded label sets, the listener. */
#include "nu_err.h"
#include "nu_metrics.h"
#include "nu_test.h"
#include "nu_version.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *render(struct nu_metrics *m)
{
    char *text = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_metrics_render(m, &text, &len), NU_OK);
    CU_ASSERT_EQUAL(strlen(text), len);
    return text;
}

static void test_counter_and_gauge_lines(void)
{
    struct nu_metrics *m = NULL;
    struct nu_metric *c = NULL, *g = NULL, *l = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_metrics_new(&m), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_counter(m, "t_total", "A counter.", NULL, &c), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_gauge(m, "t_gauge", "A gauge.", NULL, &g), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_counter(m, "t_l_total", "Labelled.", "job,code", &l), NU_OK);
    char *text = render(m);
    /* Unlabelled families report 0 from the start; a labelled one has no series yet. */
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# HELP t_total A counter.\n# TYPE t_total counter\n"
                                        "t_total 0\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# TYPE t_l_total counter\n"));
    CU_ASSERT_PTR_NULL(strstr(text, "t_l_total{"));
    free(text);
    nu_metric_add(c, 3, NULL);
    nu_metric_set(g, -7, NULL);
    nu_metric_gauge_add(g, 2, NULL);
    nu_metric_add(l, 1, (const char *[]){"job-1", "QUOTA_EXCEEDED"});
    nu_metric_add(l, 1, (const char *[]){"job-1", "QUOTA_EXCEEDED"});
    nu_metric_add(NULL, 1, NULL); /* metrics off: no-op */
    text = render(m);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nt_total 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nt_gauge -5\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nt_l_total{job=\"job-1\",code=\"QUOTA_EXCEEDED\"} 2\n"));
    free(text);
    nu_metrics_free(m);
}

/* What a scraper reads to know which build runs: one series, value 1. */
static void test_build_info_names_the_build(void)
{
    struct nu_metrics *m = NULL;
    char want[512];
    CU_ASSERT_EQUAL_FATAL(nu_metrics_new(&m), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_build_info(m, "nusec-test"), NU_OK);
    char *text = render(m);
    snprintf(want, sizeof(want),
             "# TYPE nusec_build_info gauge\n"
             "nusec_build_info{program=\"nusec-test\",version=\"%s\",revision=\"%s\"} 1\n",
             nu_version(), nu_version_revision());
    CU_ASSERT_PTR_NOT_NULL(strstr(text, want));
    free(text);
    CU_ASSERT_EQUAL(nu_metrics_build_info(NULL, "nusec-test"), NU_ERR_INVALID_ARG);
    nu_metrics_free(m);
}

static void test_label_values_are_escaped(void)
{
    struct nu_metrics *m = NULL;
    struct nu_metric *c = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_metrics_new(&m), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_counter(m, "e_total", "Help with \\ and\nnewline.", "v", &c), NU_OK);
    nu_metric_add(c, 1, (const char *[]){"a\"b\\c\nd"});
    char *text = render(m);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "e_total{v=\"a\\\"b\\\\c\\nd\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "# HELP e_total Help with \\\\ and\\nnewline.\n"));
    free(text);
    nu_metrics_free(m);
}

static void test_bad_names_refused(void)
{
    struct nu_metrics *m = NULL;
    struct nu_metric *c = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_metrics_new(&m), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_counter(m, "1bad", "x", NULL, &c), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_metrics_counter(m, "bad name", "x", NULL, &c), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_metrics_counter(m, "ok_total", "x", "le", &c), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_metrics_counter(m, "ok_total", "x", "a,b,c,d", &c), NU_ERR_INVALID_ARG);
    nu_metrics_free(m);
}

/* Outside input picks label values: memory stays bounded, the loss is
 * counted, and the newest label sets (a long-lived cloud's latest jobs) are
 * the ones kept: the least recently updated make room. */
static void test_series_are_bounded(void)
{
    struct nu_metrics *m = NULL;
    struct nu_metric *c = NULL;
    char v[32];
    CU_ASSERT_EQUAL_FATAL(nu_metrics_new(&m), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_counter(m, "b_total", "x", "v", &c), NU_OK);
    for (int i = 0; i < NU_METRICS_SERIES_MAX + 10; i++) {
        snprintf(v, sizeof(v), "v%d", i);
        nu_metric_add(c, 1, (const char *[]){v});
        if (i == NU_METRICS_SERIES_MAX - 1)
            nu_metric_add(c, 5, (const char *[]){"v0"}); /* in use: kept */
    }
    char *text = render(m);
    size_t lines = 0;
    for (const char *p = text; (p = strstr(p, "\nb_total{")); p++)
        lines++;
    CU_ASSERT_EQUAL(lines, NU_METRICS_SERIES_MAX);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nnusec_metrics_series_dropped_total 10\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nb_total{v=\"v0\"} 6\n"));
    CU_ASSERT_PTR_NULL(strstr(text, "\nb_total{v=\"v1\"}"));
    CU_ASSERT_PTR_NULL(strstr(text, "\nb_total{v=\"v10\"}"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nb_total{v=\"v11\"} 1\n"));
    snprintf(v, sizeof(v), "\nb_total{v=\"v%d\"} 1\n", NU_METRICS_SERIES_MAX + 9);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, v));
    free(text);
    nu_metrics_free(m);
}

static void test_histogram_is_cumulative(void)
{
    struct nu_metrics *m = NULL;
    struct nu_metric *h = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_metrics_new(&m), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_histogram(m, "h_seconds", "x", "op", &h), NU_OK);
    const char *op[] = {"cert.request"};
    nu_metric_observe_us(h, 100, op);      /* le 0.0001 (bounds are inclusive) */
    nu_metric_observe_us(h, 3000, op);     /* le 0.005 */
    nu_metric_observe_us(h, 60000000, op); /* beyond 10 s: +Inf only */
    char *text = render(m);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "h_seconds_bucket{op=\"cert.request\",le=\"0.0001\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "h_seconds_bucket{op=\"cert.request\",le=\"0.0025\"} 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "h_seconds_bucket{op=\"cert.request\",le=\"0.005\"} 2\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "h_seconds_bucket{op=\"cert.request\",le=\"10\"} 2\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "h_seconds_bucket{op=\"cert.request\",le=\"+Inf\"} 3\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "h_seconds_sum{op=\"cert.request\"} 60.003100\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "h_seconds_count{op=\"cert.request\"} 3\n"));
    free(text);
    nu_metrics_free(m);
}

static int hook_calls;
static void hook(void *ctx)
{
    hook_calls++;
    nu_metric_set(ctx, hook_calls, NULL);
}

static void test_render_hook_refreshes(void)
{
    struct nu_metrics *m = NULL;
    struct nu_metric *g = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_metrics_new(&m), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_gauge(m, "r", "x", NULL, &g), NU_OK);
    nu_metrics_on_render(m, hook, g);
    free(render(m));
    char *text = render(m);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nr 2\n"));
    free(text);
    nu_metrics_free(m);
}

static void test_listener_address(void)
{
    struct nu_metrics *m = NULL;
    struct nu_metrics_http *h = NULL;
    uint16_t port = 0;
    CU_ASSERT_EQUAL_FATAL(nu_metrics_new(&m), NU_OK);
    CU_ASSERT_EQUAL(nu_metrics_http_start(m, "localhost:1", &h, &port), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_metrics_http_start(m, "127.0.0.1", &h, &port), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_metrics_http_start(m, "127.0.0.1:70000", &h, &port), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL_FATAL(nu_metrics_http_start(m, "127.0.0.1:0", &h, &port), NU_OK);
    CU_ASSERT(port > 0);
    nu_metrics_http_stop(h);
    CU_ASSERT(nu_metrics_listen_off("off") && nu_metrics_listen_off("") &&
              !nu_metrics_listen_off("127.0.0.1:9464"));
    nu_metrics_free(m);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"counter and gauge lines", test_counter_and_gauge_lines},
        {"build info names the build", test_build_info_names_the_build},
        {"label values are escaped", test_label_values_are_escaped},
        {"bad names are refused", test_bad_names_refused},
        {"label sets are bounded", test_series_are_bounded},
        {"histogram buckets are cumulative", test_histogram_is_cumulative},
        {"the render hook refreshes gauges", test_render_hook_refreshes},
        {"listener addresses", test_listener_address},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_metrics", NULL, NULL, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_metrics", suites);
}
