#include "dash_http.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <arpa/inet.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* Generated from dashboard/ by the build. */
#include "dash_app.h"
#include "dash_index.h"
#include "dash_style.h"

#define DASH__TOKEN_MIN 16
#define DASH__CONNECTIONS_MAX 32
/* A connection idle this long is closed: without it 32 connections that
 * never sent a request (no token needed for that) held every slot for good.
 * The event stream is never idle (a heartbeat every DASH__HEARTBEAT_MS). */
#define DASH__IDLE_S 10u
#define DASH__HEARTBEAT_MS 2000u
#define DASH__POLL_MS 100u

struct dash_http {
    struct MHD_Daemon *daemon;
    struct dash_model *model;
    char *token;
    uint16_t port;
    atomic_int stopping;
};

/* One Server-Sent Events stream: the frame being sent and how far it went. */
struct dash__stream {
    struct dash_http *http;
    char *frame;
    size_t len, sent;
    uint64_t version;
};

static const char dash__csp[] = "default-src 'none'; script-src 'self'; style-src 'self'; "
                                "connect-src 'self'; img-src 'self'; base-uri 'none'; "
                                "form-action 'none'; frame-ancestors 'none'";

static void dash__headers(struct MHD_Response *r, const char *type)
{
    MHD_add_response_header(r, "Content-Type", type);
    MHD_add_response_header(r, "Content-Security-Policy", dash__csp);
    MHD_add_response_header(r, "X-Content-Type-Options", "nosniff");
    MHD_add_response_header(r, "Referrer-Policy", "no-referrer");
    MHD_add_response_header(r, "Cache-Control", "no-store");
    MHD_add_response_header(r, "X-Frame-Options", "DENY");
}

static enum MHD_Result dash__send(struct MHD_Connection *c, unsigned status, const char *type,
                                  const char *body, size_t len, enum MHD_ResponseMemoryMode mode)
{
    struct MHD_Response *r = MHD_create_response_from_buffer(len, (void *)body, mode);
    if (!r)
        return MHD_NO;
    dash__headers(r, type);
    enum MHD_Result ok = MHD_queue_response(c, status, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result dash__text(struct MHD_Connection *c, unsigned status, const char *text)
{
    return dash__send(c, status, "text/plain; charset=utf-8", text, strlen(text),
                      MHD_RESPMEM_PERSISTENT);
}

/* Compare without an early exit, so the time does not tell how much of a guess was right. */
static int dash__token_ok(const struct dash_http *h, struct MHD_Connection *c)
{
    const char *given = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "token");
    if (!given)
        return 0;
    size_t n = strlen(h->token), m = strlen(given);
    unsigned char diff = (unsigned char)(n != m);
    for (size_t i = 0; i < n; i++)
        diff |= (unsigned char)(h->token[i] ^ (i < m ? given[i] : 0));
    return diff == 0;
}

/* Make the next frame "data: JSON\n\n"; 0 or an error. */
static int dash__frame(struct dash__stream *s)
{
    char *json = NULL;
    s->version = dash_model_version(s->http->model);
    int rc = dash_model_json(s->http->model, nu_time_ms(), &json);
    if (rc != NU_OK)
        return rc;
    size_t n = strlen(json) + 9;
    char *frame = malloc(n);
    if (frame)
        snprintf(frame, n, "data: %s\n\n", json);
    free(json);
    if (!frame)
        return NU_ERR_NOMEM;
    free(s->frame);
    s->frame = frame;
    s->len = n - 1;
    s->sent = 0;
    return NU_OK;
}

/*
 * libmicrohttpd asks for more of the stream. With one thread per connection
 * it may block: wait for a change of the model (or the heartbeat), then send.
 */
static ssize_t dash__stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    (void)pos;
    struct dash__stream *s = cls;
    if (s->sent == s->len) {
        uint64_t waited = 0;
        while (!atomic_load(&s->http->stopping) && s->frame &&
               dash_model_version(s->http->model) == s->version && waited < DASH__HEARTBEAT_MS) {
            usleep(DASH__POLL_MS * 1000u);
            waited += DASH__POLL_MS;
        }
        if (atomic_load(&s->http->stopping))
            return MHD_CONTENT_READER_END_OF_STREAM;
        if (dash__frame(s) != NU_OK)
            return MHD_CONTENT_READER_END_WITH_ERROR;
    }
    size_t n = s->len - s->sent < max ? s->len - s->sent : max;
    memcpy(buf, s->frame + s->sent, n);
    s->sent += n;
    return (ssize_t)n;
}

static void dash__stream_free(void *cls)
{
    struct dash__stream *s = cls;
    free(s->frame);
    free(s);
}

static enum MHD_Result dash__events(struct dash_http *h, struct MHD_Connection *c)
{
    struct dash__stream *s = calloc(1, sizeof(*s));
    if (!s)
        return MHD_NO;
    s->http = h;
    struct MHD_Response *r = MHD_create_response_from_callback(
        MHD_SIZE_UNKNOWN, 16384, dash__stream_read, s, dash__stream_free);
    if (!r) {
        free(s);
        return MHD_NO;
    }
    dash__headers(r, "text/event-stream");
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, r);
    MHD_destroy_response(r);
    return ok;
}

static enum MHD_Result dash__state(struct dash_http *h, struct MHD_Connection *c)
{
    char *json = NULL;
    if (dash_model_json(h->model, nu_time_ms(), &json) != NU_OK)
        return dash__text(c, MHD_HTTP_INTERNAL_SERVER_ERROR, "out of memory\n");
    return dash__send(c, MHD_HTTP_OK, "application/json", json, strlen(json),
                      MHD_RESPMEM_MUST_FREE);
}

static enum MHD_Result dash__route(void *cls, struct MHD_Connection *c, const char *url,
                                   const char *method, const char *version, const char *upload_data,
                                   size_t *upload_size, void **con_cls)
{
    (void)version;
    (void)upload_data;
    (void)con_cls;
    struct dash_http *h = cls;
    if (strcmp(method, "GET") != 0 && strcmp(method, "HEAD") != 0)
        return dash__text(c, MHD_HTTP_METHOD_NOT_ALLOWED, "only GET\n");
    if (*upload_size)
        return dash__text(c, MHD_HTTP_BAD_REQUEST, "no body expected\n");
    if (strcmp(url, "/app.js") == 0)
        return dash__send(c, MHD_HTTP_OK, "text/javascript; charset=utf-8", dash_app_js,
                          strlen(dash_app_js), MHD_RESPMEM_PERSISTENT);
    if (strcmp(url, "/style.css") == 0)
        return dash__send(c, MHD_HTTP_OK, "text/css; charset=utf-8", dash_style_css,
                          strlen(dash_style_css), MHD_RESPMEM_PERSISTENT);
    if (strcmp(url, "/") != 0 && strcmp(url, "/state.json") != 0 && strcmp(url, "/events") != 0)
        return dash__text(c, MHD_HTTP_NOT_FOUND, "not found\n");
    if (!dash__token_ok(h, c))
        return dash__text(c, MHD_HTTP_FORBIDDEN,
                          "forbidden: open the URL with its token (DIR/run/dashboard.url)\n");
    if (strcmp(url, "/state.json") == 0)
        return dash__state(h, c);
    if (strcmp(url, "/events") == 0)
        return dash__events(h, c);
    return dash__send(c, MHD_HTTP_OK, "text/html; charset=utf-8", dash_index_html,
                      strlen(dash_index_html), MHD_RESPMEM_PERSISTENT);
}

static void dash__mhd_log(void *cls, const char *fmt, va_list ap)
{
    (void)cls;
    char line[512];
    vsnprintf(line, sizeof(line), fmt, ap);
    line[strcspn(line, "\n")] = '\0';
    nu_log(NU_LOG_WARN, "dashboard: http: %s", line);
}

int dash_http_start(const struct dash_http_opts *opts, struct dash_model *model,
                    struct dash_http **out_http)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (!opts || !model || !out_http || !opts->host || !opts->token ||
        strlen(opts->token) < DASH__TOKEN_MIN || !opts->tls_cert != !opts->tls_key ||
        inet_pton(AF_INET, opts->host, &sa.sin_addr) != 1)
        return NU_ERR_INVALID_ARG;
    sa.sin_port = htons(opts->port);
    struct dash_http *h = calloc(1, sizeof(*h));
    if (!h || !(h->token = strdup(opts->token))) {
        free(h);
        return NU_ERR_NOMEM;
    }
    h->model = model;
    unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION |
                     MHD_USE_ERROR_LOG | (opts->tls_cert ? MHD_USE_TLS : 0);
    /* The logger first: libmicrohttpd logs options it parses before it to stderr. */
    if (opts->tls_cert)
        h->daemon = MHD_start_daemon(
            flags, 0, NULL, NULL, dash__route, h, MHD_OPTION_EXTERNAL_LOGGER, dash__mhd_log, NULL,
            MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_LIMIT,
            (unsigned)DASH__CONNECTIONS_MAX, MHD_OPTION_CONNECTION_TIMEOUT, DASH__IDLE_S,
            MHD_OPTION_HTTPS_MEM_CERT, opts->tls_cert, MHD_OPTION_HTTPS_MEM_KEY, opts->tls_key,
            MHD_OPTION_END);
    else
        h->daemon =
            MHD_start_daemon(flags, 0, NULL, NULL, dash__route, h, MHD_OPTION_EXTERNAL_LOGGER,
                             dash__mhd_log, NULL, MHD_OPTION_SOCK_ADDR, (struct sockaddr *)&sa,
                             MHD_OPTION_CONNECTION_LIMIT, (unsigned)DASH__CONNECTIONS_MAX,
                             MHD_OPTION_CONNECTION_TIMEOUT, DASH__IDLE_S, MHD_OPTION_END);
    if (!h->daemon) {
        free(h->token);
        free(h);
        return NU_ERR_IO;
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(h->daemon, MHD_DAEMON_INFO_BIND_PORT);
    h->port = info ? info->port : opts->port;
    *out_http = h;
    return NU_OK;
}

uint16_t dash_http_port(const struct dash_http *http)
{
    return http ? http->port : 0;
}

void dash_http_stop(struct dash_http *http)
{
    if (!http)
        return;
    atomic_store(&http->stopping, 1);
    MHD_stop_daemon(http->daemon);
    explicit_bzero(http->token, strlen(http->token));
    free(http->token);
    free(http);
}
