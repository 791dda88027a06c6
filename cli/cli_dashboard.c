/* nusec dashboard */
#include "cli.h"
#include "cli_opts.h"

#include "dash_http.h"
#include "dash_model.h"

#include "nu_client.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_mqtt.h"
#include "nu_util.h"

#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char cli__dash_usage[] =
    "usage: nusec dashboard [--listen ADDR:PORT] [--identity NAME] [--tls-cert FILE]\n"
    "                       [--tls-key FILE] [--dir DIR]\n"
    "\n"
    "Serve a live web view of the line: per job progress against quota, rate and\n"
    "time to finish; per programmer online/offline, progress, failures and last\n"
    "seen; failures by reason; devices per minute over the last hour; the most\n"
    "recent events. It reads the bus as a monitor does (retained job states,\n"
    "programmer statuses, events) and pushes every change to the page as\n"
    "Server-Sent Events. Every asset is served by this program.\n"
    "\n"
    "Access needs a random token, made at each start: the URL with it is written\n"
    "to DIR/run/dashboard.url (mode 0600), and printed when stdout is a terminal\n"
    "(not into a log). On an address other than loopback the page is served over\n"
    "HTTPS only, with --tls-cert/--tls-key (default DIR/pki/broker.crt and\n"
    "broker.key, issued by the Fleet CA).\n"
    "\n"
    "  --listen ADDR:PORT  IPv4 address and port (default 127.0.0.1:8080; port 0\n"
    "                      = any free port)\n"
    "  --identity NAME     bus certificate DIR/pki/clients/NAME.{crt,key}\n"
    "                      (default monitor)\n"
    "  --tls-cert FILE     PEM certificate chain for HTTPS\n"
    "  --tls-key FILE      its private key\n"
    "  --dir DIR           state directory (default: $NUSEC_HOME)\n"
    "  -h, --help          this text\n"
    "\n"
    "Runs until SIGINT or SIGTERM. Exit status: 0 stopped by a signal, 1 could not\n"
    "listen or reach the broker, 2 usage error.\n";

static const char *const cli__dash_filters[] = {"nusec/v1/jobs/+", "nusec/v1/prog/+/status",
                                                "nusec/v1/events/#"};
#define CLI__DASH_FILTERS (sizeof(cli__dash_filters) / sizeof(cli__dash_filters[0]))

struct cli__dash_opts {
    const char *dir, *listen, *identity, *tls_cert, *tls_key;
    char host[64];
    uint16_t port;
};

static volatile sig_atomic_t cli__dash_stop;

static void cli__dash_signal(int sig)
{
    (void)sig;
    cli__dash_stop = 1;
}

static void cli__dash_on_message(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    (void)m;
    /* Undecodable messages are skipped; the monitor command reports them. */
    (void)dash_model_feed(ud, msg->topic, msg->payload, msg->len, nu_time_ms());
}

static int cli__dash_parse(int argc, char **argv, struct cli__dash_opts *o)
{
    const struct cli_opt opts[] = {
        CLI_OPT_STR("dir", &o->dir),           CLI_OPT_STR("listen", &o->listen),
        CLI_OPT_STR("identity", &o->identity), CLI_OPT_STR("tls-cert", &o->tls_cert),
        CLI_OPT_STR("tls-key", &o->tls_key),
    };
    int rc = cli_opts_parse(argc, argv, cli__dash_usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc;
    if (optind < argc) {
        cli_errorf("dashboard: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    const char *colon = strrchr(o->listen, ':');
    char *end = NULL;
    unsigned long port = colon ? strtoul(colon + 1, &end, 10) : 0;
    if (!colon || colon == o->listen || (size_t)(colon - o->listen) >= sizeof(o->host) ||
        !colon[1] || *end || port > 65535) {
        cli_errorf("dashboard: --listen '%s' is not ADDR:PORT", o->listen);
        return CLI_EXIT_USAGE;
    }
    snprintf(o->host, sizeof(o->host), "%.*s", (int)(colon - o->listen), o->listen);
    if (strcmp(o->host, "localhost") == 0)
        snprintf(o->host, sizeof(o->host), "127.0.0.1");
    o->port = (uint16_t)port;
    if (!!o->tls_cert != !!o->tls_key) {
        cli_errorf("dashboard: --tls-cert and --tls-key go together");
        return CLI_EXIT_USAGE;
    }
    if (!(o->dir = cli_state_dir(o->dir)))
        return CLI_EXIT_USAGE;
    return CLI_EXIT_OK;
}

/*
 * GnuTLS (libmicrohttpd's TLS) refuses an EC key without its public point,
 * which keys written before nu_p256_key_to_pem added it lack (DIR/pki of an
 * older install): a P-256 key is handed on re-encoded, with it. Any other
 * key goes as it is. Takes kt (len klen); returns the PEM to use.
 */
static char *cli__dash_key_pem(char *kt, size_t klen)
{
    struct nu_p256_key *key = NULL;
    char pem[1024];
    size_t n = 0;
    if (nu_p256_key_from_pem(kt, klen, &key) != NU_OK)
        return kt;
    int rc = nu_p256_key_to_pem(key, pem, sizeof(pem), &n);
    nu_p256_key_destroy(key);
    char *out = rc == NU_OK ? strdup(pem) : NULL;
    nu_zero(pem, sizeof(pem));
    if (!out)
        return kt;
    nu_zero(kt, klen);
    free(kt);
    return out;
}

/* The broker's certificate is the Fleet CA's: the chain sent with it, so a
 * browser that trusts DIR/pki/root-ca.pem accepts it (*c grows). */
static int cli__dash_append_issuer(const struct cli__dash_opts *o, uint8_t **c, size_t *clen)
{
    char path[4096];
    uint8_t *ca = NULL, *all;
    size_t calen = 0;
    int rc = nu_path_fmt(path, sizeof(path), "%s/pki/fleet-ca.pem", o->dir);
    if (rc == NU_OK)
        rc = nu_file_read(path, 64 * 1024, &ca, &calen);
    if (rc != NU_OK)
        return rc == NU_ERR_NOT_FOUND ? NU_OK : rc; /* the leaf alone, as before */
    if (!(all = realloc(*c, *clen + 1 + calen))) {
        free(ca);
        return NU_ERR_NOMEM;
    }
    all[*clen] = '\n';
    memcpy(all + *clen + 1, ca, calen);
    *c = all;
    *clen += 1 + calen;
    free(ca);
    return NU_OK;
}

/* HTTPS material for a non-loopback address: the given files or the broker's. */
static int cli__dash_tls(const struct cli__dash_opts *o, char **out_cert, char **out_key)
{
    char cert[4096], key[4096];
    uint8_t *c = NULL, *k = NULL;
    size_t clen = 0, klen = 0;
    *out_cert = *out_key = NULL;
    if (strncmp(o->host, "127.", 4) == 0 && !o->tls_cert)
        return NU_OK;
    snprintf(cert, sizeof(cert), "%s", o->tls_cert ? o->tls_cert : "");
    snprintf(key, sizeof(key), "%s", o->tls_key ? o->tls_key : "");
    if (!o->tls_cert && (nu_path_fmt(cert, sizeof(cert), "%s/pki/broker.crt", o->dir) != NU_OK ||
                         nu_path_fmt(key, sizeof(key), "%s/pki/broker.key", o->dir) != NU_OK))
        return NU_ERR_INVALID_ARG;
    int rc = nu_file_read(cert, 256 * 1024, &c, &clen);
    if (rc == NU_OK && !o->tls_cert)
        rc = cli__dash_append_issuer(o, &c, &clen);
    if (rc == NU_OK)
        rc = nu_file_read(key, 64 * 1024, &k, &klen);
    if (rc != NU_OK) {
        cli_errorf("dashboard: HTTPS needs %s and %s: %s", cert, key, nu_err_str(rc));
        free(c);
        return rc;
    }
    /* libmicrohttpd takes NUL-terminated PEM text. */
    char *ct = realloc(c, clen + 1), *kt = realloc(k, klen + 1);
    if (!ct || !kt) {
        free(ct ? ct : (char *)c);
        free(kt ? kt : (char *)k);
        return NU_ERR_NOMEM;
    }
    ct[clen] = kt[klen] = '\0';
    *out_cert = ct;
    *out_key = cli__dash_key_pem(kt, klen);
    return NU_OK;
}

/* The URL with a fresh token, printed and written to DIR/run/dashboard.url (0600). */
static int cli__dash_url(const struct cli__dash_opts *o, const char *token, uint16_t port, int tls)
{
    char url[256], path[4096], run[4096];
    snprintf(url, sizeof(url), "%s://%s:%u/?token=%s\n", tls ? "https" : "http", o->host,
             (unsigned)port, token);
    int rc = nu_path_fmt(run, sizeof(run), "%s/run", o->dir);
    if (rc == NU_OK)
        rc = nu_mkdirs(run, 0700);
    if (rc == NU_OK)
        rc = nu_path_fmt(path, sizeof(path), "%s/dashboard.url", run);
    if (rc == NU_OK)
        rc = nu_file_write_atomic(path, url, strlen(url), 0600);
    if (rc != NU_OK)
        return cli_fail("dashboard: write DIR/run/dashboard.url", rc);
    /* The token goes to a terminal only: a service's stdout is a log file
     * (`stack up`: DIR/logs/dashboard.log), which is no place for it. */
    if (isatty(STDOUT_FILENO))
        printf("dashboard: %s", url);
    else
        printf("dashboard: %s://%s:%u/ (the URL with its access token: %s)\n",
               tls ? "https" : "http", o->host, (unsigned)port, path);
    fflush(stdout);
    return CLI_EXIT_OK;
}

/* The token dies with this process: no stale URL. But the file is ours only
 * while it holds our token (another dashboard on DIR may have written it
 * since, and its URL must stay). */
static void cli__dash_url_drop(const struct cli__dash_opts *o, const char *token)
{
    char path[4096];
    uint8_t *url = NULL;
    size_t len = 0;
    if (nu_path_fmt(path, sizeof(path), "%s/run/dashboard.url", o->dir) != NU_OK ||
        nu_file_read(path, 4096, &url, &len) != NU_OK)
        return;
    char *text = realloc(url, len + 1);
    if (!text) {
        free(url);
        return;
    }
    text[len] = '\0';
    if (strstr(text, token))
        unlink(path);
    explicit_bzero(text, len);
    free(text);
}

static int cli__dash_serve(const struct cli__dash_opts *o, struct dash_model *model)
{
    uint8_t raw[16];
    char token[33], client_id[NU_MQTT_CLIENT_ID_MAX + 1], *cert = NULL, *key = NULL;
    struct dash_http *http = NULL;
    struct nu_mqtt *m = NULL;
    int rc = nu_random(raw, sizeof(raw));
    if (rc == NU_OK)
        rc = nu_hex_encode(raw, sizeof(raw), token, sizeof(token));
    if (rc == NU_OK && (rc = cli__dash_tls(o, &cert, &key)) != NU_OK)
        return CLI_EXIT_FAIL;
    snprintf(client_id, sizeof(client_id), "%s:dash-%ld", o->identity, (long)getpid());
    struct nu_client_opts co = {
        .dir = o->dir, .identity = o->identity, .client_id = client_id, .clean_start = 1};
    if (rc == NU_OK && (rc = nu_client_connect(&co, &m)) != NU_OK)
        cli_errorf("dashboard: cannot reach the broker of %s as '%s': %s (%s)", o->dir, o->identity,
                   nu_err_str(rc), nu_err_name(rc));
    for (size_t i = 0; rc == NU_OK && i < CLI__DASH_FILTERS; i++)
        rc = nu_mqtt_subscribe(m, cli__dash_filters[i], 1, cli__dash_on_message, model);
    struct dash_http_opts ho = {
        .host = o->host, .port = o->port, .token = token, .tls_cert = cert, .tls_key = key};
    if (rc == NU_OK && (rc = dash_http_start(&ho, model, &http)) != NU_OK)
        cli_errorf("dashboard: cannot listen on %s: %s (%s)", o->listen, nu_err_str(rc),
                   nu_err_name(rc));
    if (rc == NU_OK)
        rc = cli__dash_url(o, token, dash_http_port(http), cert != NULL) ? NU_ERR_IO : NU_OK;
    while (rc == NU_OK && !cli__dash_stop)
        usleep(100 * 1000);
    if (rc == NU_OK)
        cli__dash_url_drop(o, token);
    dash_http_stop(http);
    for (size_t i = 0; m && i < CLI__DASH_FILTERS; i++)
        nu_mqtt_unsubscribe(m, cli__dash_filters[i]);
    if (m) {
        nu_mqtt_disconnect(m);
        nu_mqtt_destroy(m);
    }
    explicit_bzero(token, sizeof(token));
    if (key)
        explicit_bzero(key, strlen(key));
    free(cert);
    free(key);
    return rc == NU_OK ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

static int cli__dashboard(int argc, char **argv)
{
    struct cli__dash_opts o = {.listen = "127.0.0.1:8080", .identity = "monitor"};
    int rc = cli__dash_parse(argc, argv, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    struct sigaction sa = {.sa_handler = cli__dash_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    struct dash_model *model = NULL;
    if ((rc = dash_model_create(&model)) != NU_OK)
        return cli_fail("dashboard", rc);
    rc = cli__dash_serve(&o, model);
    dash_model_destroy(model);
    return rc;
}

const struct cli_command cli_dashboard_commands[] = {
    {"dashboard", "", "serve a live web view of the line (nusec dashboard --help)", cli__dashboard},
    {NULL, NULL, NULL, NULL},
};
