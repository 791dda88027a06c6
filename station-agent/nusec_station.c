/* nusec-station — the contract manufacturer's station daemon. */
#include "station_daemon.h"
#include "station_metrics.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_metrics.h"
#include "nu_util.h"
#include "nu_version.h"

#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char station__usage[] =
    "usage: nusec-station [--dir DIR] [--name ID] [--poll-ms N] [--log-level LEVEL]\n"
    "                     [--log FILE] [--metrics-listen ADDR]\n"
    "\n"
    "The station daemon of the contract manufacturer: delivers the imported\n"
    "production packages to the programmers the station owns when the operator\n"
    "starts a job, watches their status, and journals every event of the bus in\n"
    "DIR/station/station.db.\n"
    "\n"
    "  --dir DIR          state directory (default: $NUSEC_HOME)\n"
    "  --name ID          station identity: DIR/pki/clients/ID.{crt,key}, MQTT client id\n"
    "                     (default: station)\n"
    "  --poll-ms N        how often station.db is checked for the operator's\n"
    "                     commands, 20..5000 (default 200)\n"
    "  --log-level LEVEL  debug, info, warn, error (default info)\n"
    "  --log FILE         append the log to FILE instead of stderr\n"
    "  --metrics-listen ADDR  Prometheus /metrics on HOST:PORT (IPv4 or [IPv6]; port\n"
    "                     0 = a free one; its URL in DIR/run/station.metrics), or off\n"
    "                     (default 127.0.0.1:0: loopback only)\n"
    "  -h, --help         this text\n"
    "  --version          the version and git revision it was built from\n"
    "\n"
    "Control: `nusec production start|stop --job J` write the job's state into\n"
    "station.db; the daemon notices within --poll-ms (PRAGMA data_version). One\n"
    "daemon per state directory (lock DIR/station/station.lock).\n"
    "\n"
    "SIGTERM or SIGINT: journal what was received, disconnect, exit 0.\n"
    "SIGHUP: reopen the --log file (after logrotate moved it); nothing else stops.\n"
    "Exit status: 0 clean stop, 1 could not start (or lost its identity), 2 usage error.\n";

static volatile sig_atomic_t station__stop;

static void station__on_signal(int sig)
{
    (void)sig;
    station__stop = 1;
}

/* SIGHUP is taken by this thread only (every other thread blocks it), so the
 * log is reopened outside a signal handler. */
struct station__hup {
    pthread_t thread;
    sigset_t set;
    volatile int quit;
};

static void *station__hup_main(void *arg)
{
    struct station__hup *h = arg;
    for (;;) {
        int sig = 0;
        if (sigwait(&h->set, &sig) != 0 || h->quit)
            return NULL;
        int rc = nu_log_reopen();
        if (rc)
            nu_warn("SIGHUP: cannot reopen the log: %s (logging on to the old file)",
                    nu_err_str(rc));
        else
            nu_info("SIGHUP: log reopened");
    }
}

/* Block SIGHUP here (and so in every thread created later) and start its thread. */
static int station__hup_start(struct station__hup *h)
{
    sigemptyset(&h->set);
    sigaddset(&h->set, SIGHUP);
    h->quit = 0;
    if (pthread_sigmask(SIG_BLOCK, &h->set, NULL) != 0 ||
        pthread_create(&h->thread, NULL, station__hup_main, h) != 0)
        return NU_ERR_INTERNAL;
    return NU_OK;
}

static void station__hup_stop(struct station__hup *h)
{
    h->quit = 1;
    pthread_kill(h->thread, SIGHUP);
    pthread_join(h->thread, NULL);
}

static int station__args(int argc, char **argv, struct station_opts *o, enum nu_log_level *level,
                         const char **log_file, const char **metrics)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"name", required_argument, NULL, 'n'},
        {"poll-ms", required_argument, NULL, 'p'},
        {"log-level", required_argument, NULL, 'l'},
        {"log", required_argument, NULL, 'L'},
        {"metrics-listen", required_argument, NULL, 'M'},
        {"help", no_argument, NULL, 'h'},
        {"version", no_argument, NULL, 'V'},
        {NULL, 0, NULL, 0},
    };
    const char *dir = NULL;
    char *end = NULL;
    unsigned long v;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dir = optarg;
            break;
        case 'n':
            o->name = optarg;
            break;
        case 'p':
            v = strtoul(optarg, &end, 10);
            if (!*optarg || *end || v < 20 || v > 5000) {
                fprintf(stderr, "nusec-station: --poll-ms wants 20..5000, not '%s'\n", optarg);
                return 2;
            }
            o->poll_ms = (unsigned)v;
            break;
        case 'l':
            if (nu_log_level_parse(optarg, level) != NU_OK) {
                fprintf(stderr, "nusec-station: unknown log level '%s'\n", optarg);
                return 2;
            }
            break;
        case 'L':
            *log_file = optarg;
            break;
        case 'M':
            *metrics = optarg;
            break;
        case 'h':
            fputs(station__usage, stdout);
            return -1;
        case 'V':
            nu_version_print(stdout, "nusec-station");
            return -1;
        default:
            fputs(station__usage, stderr);
            return 2;
        }
    }
    if (optind < argc) {
        fprintf(stderr, "nusec-station: unexpected argument '%s'\n", argv[optind]);
        return 2;
    }
    if (!(o->dir = nu_state_dir(dir))) {
        fprintf(stderr, "nusec-station: no state directory: pass --dir DIR or set NUSEC_HOME\n");
        return 2;
    }
    return 0;
}

int main(int argc, char **argv)
{
    struct station_opts opts = {0};
    enum nu_log_level level = NU_LOG_INFO;
    const char *log_file = NULL, *metrics_listen = "127.0.0.1:0";
    struct station__hup hup;
    struct station_metrics *metrics = NULL;
    int rc = station__args(argc, argv, &opts, &level, &log_file, &metrics_listen);
    if (rc)
        return rc < 0 ? 0 : rc;
    nu_log_init("nusec-station", level, NULL);
    if (log_file && nu_log_open(log_file) != NU_OK) {
        fprintf(stderr, "nusec-station: cannot open log %s\n", log_file);
        return 1;
    }
    if (station__hup_start(&hup) != NU_OK) {
        fprintf(stderr, "nusec-station: cannot start the SIGHUP thread\n");
        nu_log_close();
        return 1;
    }
    struct sigaction sa = {.sa_handler = station__on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct station *st = NULL;
    rc = station_create(&opts, &st);
    if (rc == NU_ERR_BUSY)
        nu_error("another nusec-station runs on %s", opts.dir);
    else if (rc)
        nu_error("cannot start: %s (%s)", nu_err_str(rc), nu_err_name(rc));
    if (rc == NU_OK && !nu_metrics_listen_off(metrics_listen))
        rc = station_metrics_start(opts.dir, metrics_listen, &metrics);
    if (rc == NU_OK)
        rc = station_run(st, &station__stop);
    station_metrics_stop(metrics);
    station_destroy(st);
    station__hup_stop(&hup);
    nu_log_close();
    return rc == NU_OK ? 0 : 1;
}
