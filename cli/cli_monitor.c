/* nusec monitor */
#include "cli.h"
#include "cli_opts.h"

#include "station_event.h"

#include "nu_client.h"
#include "nu_err.h"
#include "nu_mqtt.h"
#include "nu_util.h"

#include <errno.h>
#include <getopt.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define CLI__MONITOR_FILTER "nusec/v1/events/#"

static const char cli__monitor_usage[] =
    "usage: nusec monitor [--job JOB] [--json] [--count N] [--timeout S] [--idle S]\n"
    "                     [--identity NAME] [--dir DIR]\n"
    "\n"
    "Print every event of the bus (nusec/v1/events/#) as it happens: one readable\n"
    "line per event, or with --json one JSON object per line with the fields topic,\n"
    "kind, role, sender, seq, sent_at_ms, job and, when present, device_uid, socket,\n"
    "outcome, serial, error, detail, state, counter, limit, job_status, quota,\n"
    "issued, refused. Events whose envelope does not decode, or whose sender is not\n"
    "the topic's identity, are reported on stderr and not printed.\n"
    "\n"
    "  --job JOB        only events of this job\n"
    "  --json           JSON lines instead of text\n"
    "  --count N        exit after N events printed\n"
    "  --timeout S      exit after S seconds\n"
    "  --idle S         with --count: give up when no event has come for S seconds\n"
    "                   (default 60; 0 = wait for ever). Events are not kept: once\n"
    "                   a production is over the bus is quiet, so a count that\n"
    "                   cannot be reached ends here instead of waiting for ever\n"
    "  --identity NAME  certificate DIR/pki/clients/NAME.{crt,key} (default monitor)\n"
    "  --dir DIR        state directory (default: $NUSEC_HOME)\n"
    "  -h, --help       this text\n"
    "\n"
    "The same events without NuSEC tools (HOST:PORT in DIR/broker/endpoint), one at\n"
    "a time:\n"
    "  mosquitto_sub -V mqttv5 -h HOST -p PORT --cafile DIR/pki/chain.pem \\\n"
    "    --cert DIR/pki/clients/monitor.crt --key DIR/pki/clients/monitor.key \\\n"
    "    -i monitor:sub -t 'nusec/v1/events/#' -C 1 -N > event.bin\n"
    "  protoc --decode=nusec.v1.Envelope -I proto proto/nusec/v1/*.proto < event.bin\n"
    "\n"
    "Exit status: 0 done (N events, timeout or Ctrl-C without --count), 1 could not\n"
    "connect, or --timeout or --idle came before --count events (TIMEOUT), 2 usage\n"
    "error. With --json a failure ends stdout with {\"error\":{...}} (docs/cli.md).\n";

struct cli__mon {
    const char *job;
    int json;
    unsigned long count;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    unsigned long printed;
    uint64_t last_ms; /* monotonic time of the start or the last event printed */
};

static volatile sig_atomic_t cli__mon_stop;

static void cli__mon_signal(int sig)
{
    (void)sig;
    cli__mon_stop = 1;
}

static void cli__mon_on_event(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct cli__mon *mon = ud;
    struct station_event ev;
    const char *why = NULL;
    char line[16384];
    int rc = station_event_decode(msg->topic, msg->payload, msg->len, &ev, &why);
    if (rc != NU_OK) {
        char topic[2 * STATION_TOPIC_MAX];
        if (station_json_escape(msg->topic, topic, sizeof(topic)) != NU_OK)
            snprintf(topic, sizeof(topic), "(long topic)");
        cli_errorf("monitor: event on %s not shown: %s (%s)", topic, nu_err_name(rc),
                   why ? why : "-");
        return;
    }
    if (mon->job && strcmp(ev.job_id, mon->job) != 0)
        return;
    rc = mon->json ? station_event_json(&ev, line, sizeof(line))
                   : station_event_text(&ev, line, sizeof(line));
    if (rc != NU_OK)
        return;
    pthread_mutex_lock(&mon->lock);
    if (!mon->count || mon->printed < mon->count) {
        fputs(line, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        mon->printed++;
        mon->last_ms = nu_mono_ms();
        if (mon->count && mon->printed >= mon->count)
            pthread_cond_signal(&mon->cond);
    }
    pthread_mutex_unlock(&mon->lock);
}

static int cli__mon_parse(int argc, char **argv, struct cli__mon *mon, const char **dir,
                          const char **identity, unsigned *timeout_s, unsigned *idle_s)
{
    unsigned count = 0;
    const struct cli_opt opts[] = {
        CLI_OPT_STR("dir", dir),
        CLI_OPT_STR("job", &mon->job),
        CLI_OPT_BOOL("json", &mon->json),
        CLI_OPT_NUM("count", &count, 1, 100000000),
        CLI_OPT_NUM("timeout", timeout_s, 1, 100000000),
        CLI_OPT_STR("identity", identity),
        CLI_OPT_NUM("idle", idle_s, 0, 100000000),
    };
    int rc = cli_opts_parse(argc, argv, cli__monitor_usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc;
    mon->count = count;
    if (!count)
        *idle_s = 0; /* without --count, only --timeout or Ctrl-C end it */
    if (optind < argc) {
        cli_errorf("monitor: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    if (!(*dir = cli_state_dir(*dir)))
        return CLI_EXIT_USAGE;
    return CLI_EXIT_OK;
}

/* Wait until count reached, timeout, idle time or signal. Returns 1 when
 * the count was reached, 2 when the bus was idle too long, else 0. */
static int cli__mon_wait(struct cli__mon *mon, unsigned timeout_s, unsigned idle_s)
{
    uint64_t deadline = timeout_s ? nu_mono_ms() + (uint64_t)timeout_s * 1000u : 0;
    int reached = 0;
    pthread_mutex_lock(&mon->lock);
    while (!cli__mon_stop && !(reached = mon->count && mon->printed >= mon->count)) {
        uint64_t now = nu_mono_ms();
        if (deadline && now >= deadline)
            break;
        if (idle_s && now - mon->last_ms >= idle_s * 1000ull) {
            reached = 2;
            break;
        }
        /* Short waits: a signal handler cannot signal the condition. */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += 100000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&mon->cond, &mon->lock, &ts);
    }
    pthread_mutex_unlock(&mon->lock);
    return reached;
}

static int cli__monitor(int argc, char **argv)
{
    struct cli__mon mon = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    const char *dir = NULL, *identity = "monitor";
    unsigned timeout_s = 0, idle_s = 60;
    char client_id[NU_MQTT_CLIENT_ID_MAX + 1];
    struct nu_mqtt *m = NULL;
    int rc = cli__mon_parse(argc, argv, &mon, &dir, &identity, &timeout_s, &idle_s);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    /* Each monitor its own session, so two of them never take each other over. */
    snprintf(client_id, sizeof(client_id), "%s:mon-%ld", identity, (long)getpid());
    struct nu_client_opts co = {
        .dir = dir, .identity = identity, .client_id = client_id, .clean_start = 1};
    if ((rc = nu_client_connect(&co, &m)) != NU_OK) {
        cli_errorf("monitor: cannot reach the broker of %s as '%s': %s (%s)", dir, identity,
                   nu_err_str(rc), nu_err_name(rc));
        return CLI_EXIT_FAIL;
    }
    struct sigaction sa = {.sa_handler = cli__mon_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    rc = nu_mqtt_subscribe(m, CLI__MONITOR_FILTER, 1, cli__mon_on_event, &mon);
    if (rc != NU_OK) {
        nu_mqtt_destroy(m);
        return cli_fail("monitor: subscribe " CLI__MONITOR_FILTER, rc);
    }
    cli_errorf("monitor: listening on " CLI__MONITOR_FILTER " as %s", identity);
    pthread_mutex_lock(&mon.lock);
    mon.last_ms = nu_mono_ms();
    pthread_mutex_unlock(&mon.lock);
    int reached = cli__mon_wait(&mon, timeout_s, idle_s);
    /* Stop the handler before its userdata (on this stack) goes away. */
    nu_mqtt_unsubscribe(m, CLI__MONITOR_FILTER);
    nu_mqtt_disconnect(m);
    nu_mqtt_destroy(m);
    if (mon.count && reached != 1 && !cli__mon_stop) {
        char what[160];
        if (reached == 2)
            snprintf(what, sizeof(what),
                     "monitor: %lu of %lu events, then none for %u s (is a production running?)",
                     mon.printed, mon.count, idle_s);
        else
            snprintf(what, sizeof(what), "monitor: %lu of %lu events after %u s", mon.printed,
                     mon.count, timeout_s);
        return cli_fail(what, NU_ERR_TIMEOUT);
    }
    return CLI_EXIT_OK;
}

const struct cli_command cli_monitor_commands[] = {
    {"monitor", "", "print bus events as lines or JSON (nusec monitor --help)", cli__monitor},
    {NULL, NULL, NULL, NULL},
};
