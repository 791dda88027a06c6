/* nusec stack up|down|status — the whole local stack on loopback. */
#include "cli.h"
#include "cli_cloud.h"
#include "cli_opts.h"
#include "cli_stack_int.h"
#include "cli_site.h"
#include "cli_stack_pg.h"
#include "pki_init.h"

#include "station_proc.h"

#include "nu_attest.h"
#include "nu_client.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_mqtt.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static const char cli__up_usage[] =
    "usage: nusec stack up [--dir DIR] [--programmers P] [--sockets S] [--devices N]\n"
    "                      [--flash-us-per-kib T] [--timeout S]\n"
    "\n"
    "Start the whole local stack on loopback, each service as a daemon with its pid\n"
    "in DIR/run/NAME.pid and its output in DIR/logs/NAME.log:\n"
    "  1. the PKI, SoftHSM2 token and broker configuration (`nusec pki init`) if\n"
    "     DIR/pki does not exist (refused while DIR/pki-init.failed records a\n"
    "     failed pki init: the PKI meant for DIR may be another HSM's);\n"
    "  2. broker: mosquitto with DIR/broker/mosquitto.conf (nusec_auth plugin);\n"
    "  3. cloud: nusec-cloud; 4. station: nusec-station;\n"
    "  5. programmers prog-1..prog-P: each not yet enrolled is made by the stand-in\n"
    "     programmer vendor (CA in DIR/vendor, created if absent, its certificate\n"
    "     pinned as DIR/pki/vendor-ca.pem; nusec-programmer --factory-init), gets a\n"
    "     one-time token (enroll.token as oem), the line \"station prog-N\" in\n"
    "     DIR/broker/owners, and enrolls at the OEM with the KeyStore's attestation\n"
    "     (nusec-programmer --enroll); then it runs with S sockets and its share of\n"
    "     the N simulated blank targets (under DIR/targets);\n"
    "  6. dashboard: the live web view (`nusec dashboard`) on a free loopback\n"
    "     port; its URL with the access token is printed and in DIR/run/dashboard.url.\n"
    "Each service must become healthy before the next starts (broker port open,\n"
    "cloud answering, station connected, programmer status ONLINE). Services\n"
    "already running are kept. If anything fails, everything is stopped again.\n"
    "\n"
    "  --dir DIR               state directory (default: $NUSEC_HOME)\n"
    "  --programmers P         0..64 (default 2)\n"
    "  --sockets S             target sockets per programmer (default 4)\n"
    "  --devices N             blank targets in all, split across programmers (default 0)\n"
    "  --flash-us-per-kib T    simulated flash time (default 0)\n"
    "  --timeout S             per service health wait (default 30)\n"
    "  --sites N               0..8 (default 0: one machine, one state dir). N > 0:\n"
    "                          the two-site shape on loopback (docs/sites.md): DIR is\n"
    "                          the OEM's (cloud broker, cloud, HSM, no station) and\n"
    "                          DIR/cm/site-K the K-th CM's: `nusec site add/join/\n"
    "                          sign/init` through files in DIR/cm, a site broker\n"
    "                          bridged to the cloud broker, the station site-K and\n"
    "                          P programmers per site (prog-1.. numbered across\n"
    "                          sites), enrolled at the OEM and moved to their site\n"
    "  --ledger KIND           sqlite (default) or postgresql: a throwaway PostgreSQL 15\n"
    "                          cluster in DIR/postgres (initdb + pg_ctl as the postgres\n"
    "                          user, unix socket only), the ledger schema made by its\n"
    "                          owner role, the cloud on a least-privilege agent role\n"
    "                          (cloud.conf `ledger = postgresql://...`); stack down\n"
    "                          stops it; or a libpq URI (postgresql://ROLE@HOST:PORT,...\n"
    "                          /DB?target_session_attrs=read-write): the cloud on that\n"
    "                          database as it is (schema from `nusec ledger init`;\n"
    "                          password from PGPASSFILE)\n"
    "  -h, --help              this text\n"
    "\n"
    "Programs are taken from $NUSEC_BIN_DIR, else the folder of this nusec; the\n"
    "broker from $NUSEC_MOSQUITTO, else " NUSEC_MOSQUITTO_BIN ".\n"
    "Exit status: 0 up, 1 failed (stopped again; see the log tail printed),\n"
    "2 usage error.\n";

static const char cli__down_usage[] =
    "usage: nusec stack down [--dir DIR]\n"
    "\n"
    "Stop the local stack in reverse order (programmers, station, cloud, broker):\n"
    "SIGTERM, up to 5 s, then SIGKILL; remove the pid files. A pid whose process is\n"
    "not the expected program (recycled pid) is never signalled.\n"
    "\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 stopped (or nothing was running), 1 a process would not die,\n"
    "2 usage error.\n";

static const char cli__status_usage[] =
    "usage: nusec stack status [--dir DIR] [--json]\n"
    "\n"
    "Each service of the local stack: pid, alive or dead, and for programmers the\n"
    "status they retain on the bus (state, job, counter / limit). With sites\n"
    "(stack up --sites N) the services of each DIR/cm/SITE follow, named SITE/NAME.\n"
    "\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  --json      one JSON array, an object per service (docs/cli.md)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 every service alive, 1 a service is dead or no stack runs,\n"
    "2 usage error.\n";

/* ---- options ------------------------------------------------------------------------------ */

static int stack__parse(int argc, char **argv, const char *usage, int up, int json, struct stack *s)
{
    const char *dir = NULL;
    struct cli_opt opts[9];
    s->station = STACK__STATION;
    size_t n = 0;
    s->programmers = 2;
    s->sockets = 4;
    s->timeout_s = 30;
    /* dir everywhere; json where the subcommand prints state; sizes for up. */
    opts[n++] = (struct cli_opt)CLI_OPT_STR("dir", &dir);
    if (json)
        opts[n++] = (struct cli_opt)CLI_OPT_BOOL("json", &s->json);
    if (up) {
        opts[n++] = (struct cli_opt)CLI_OPT_NUM("programmers", &s->programmers, 0, STACK__PROG_MAX);
        opts[n++] = (struct cli_opt)CLI_OPT_NUM("sockets", &s->sockets, 1, 64);
        opts[n++] = (struct cli_opt)CLI_OPT_NUM("devices", &s->devices, 0, 10000000);
        opts[n++] = (struct cli_opt)CLI_OPT_NUM("flash-us-per-kib", &s->flash_us, 0, 10000000);
        opts[n++] = (struct cli_opt)CLI_OPT_NUM("timeout", &s->timeout_s, 1, 3600);
        opts[n++] = (struct cli_opt)CLI_OPT_STR("ledger", &s->ledger);
        opts[n++] = (struct cli_opt)CLI_OPT_NUM("sites", &s->sites, 0, STACK__SITES_MAX);
    }
    int rc = cli_opts_parse(argc, argv, usage, opts, n);
    if (rc)
        return rc;
    if (optind < argc) {
        cli_errorf("stack: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    if (!(s->dir = cli_state_dir(dir)))
        return CLI_EXIT_USAGE;
    if (s->sites && s->sites * s->programmers > STACK__PROG_MAX) {
        cli_errorf("stack up: at most %d programmers in all (--sites x --programmers)",
                   STACK__PROG_MAX);
        return CLI_EXIT_USAGE;
    }
    if (s->ledger && strcmp(s->ledger, "sqlite") != 0 && strcmp(s->ledger, "postgresql") != 0 &&
        !stack_pg_is_uri(s->ledger)) {
        cli_errorf("stack up: --ledger is sqlite, postgresql or a postgresql:// URI, not '%s'",
                   s->ledger);
        return CLI_EXIT_USAGE;
    }
    rc = nu_paths_get(s->dir, NU_PATH_RUN, s->run, sizeof(s->run));
    if (rc == NU_OK)
        rc = nu_paths_get(s->dir, NU_PATH_LOGS, s->logs, sizeof(s->logs));
    if (rc != NU_OK)
        return cli_fail("stack", rc);
    return CLI_EXIT_OK;
}

/* ---- commands -------------------------------------------------------------------------------- */

static int stack__prepare(struct stack *s)
{
    char pki[PATH_MAX];
    int rc = nu_paths_get(s->dir, NU_PATH_PKI, pki, sizeof(pki));
    char why[256];
    if (rc == NU_OK && !nu_path_exists(pki) && pki_init_failed(s->dir, why, sizeof(why))) {
        /* Never build a SoftHSM2 PKI where the OEM's own HSM failed to initialise. */
        cli_errorf("stack up: the last `nusec pki init` in %s failed (%s; see "
                   "%s/pki-init.failed): run it again, or delete that file to let stack up "
                   "create a SoftHSM2 PKI",
                   s->dir, why, s->dir);
        rc = NU_ERR_CONFIG;
    } else if (rc == NU_OK && !nu_path_exists(pki)) {
        struct pki_init_opts o = {.dir = s->dir, .host = "127.0.0.1"};
        if ((rc = pki_init_run(&o)) == NU_OK) /* pki_init_run tells why it did not */
            printf("%-10s created in %s (nusec pki init, SoftHSM2)\n", "pki", s->dir);
    }
    if (rc == NU_OK)
        rc = nu_paths_create_layout(s->dir);
    if (rc == NU_OK && (rc = station_bin_dir(s->bin, sizeof(s->bin))) != NU_OK)
        cli_errorf("stack up: cannot find the folder of the NuSEC programs (set NUSEC_BIN_DIR)");
    return rc;
}

/*
 * The /metrics URLs the services wrote (DIR/run/NAME.metrics): printed, and
 * written one per line to DIR/run/metrics.urls for scrapers and scripts.
 * A service with metrics off has no file and no line.
 */
static int stack__metrics_urls(const struct stack *s)
{
    static const char *const names[] = {"cloud", "station"};
    char path[PATH_MAX], all[1024] = "";
    size_t used = 0;
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        uint8_t *text = NULL;
        size_t len = 0;
        if (stack__file(s->run, names[i], ".metrics", path, sizeof(path)) != NU_OK ||
            nu_file_read(path, 512, &text, &len) != NU_OK)
            continue;
        size_t line = strcspn((const char *)text, "\n");
        if (line && line < len && used + line + 1 < sizeof(all)) {
            printf("%-10s metrics %.*s\n", names[i], (int)line, (const char *)text);
            memcpy(all + used, text, line + 1);
            used += line + 1;
        }
        free(text);
    }
    int rc = stack__file(s->run, "metrics", ".urls", path, sizeof(path));
    if (rc == NU_OK)
        rc = nu_file_write_atomic(path, all, used, 0644);
    if (rc != NU_OK)
        cli_errorf("stack up: cannot write %s: %s", path, nu_err_str(rc));
    return rc;
}

static int cli__stack_up(int argc, char **argv)
{
    struct stack s;
    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.lock, NULL);
    int rc = stack__parse(argc, argv, cli__up_usage, 1, 0, &s);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = stack__prepare(&s)) != NU_OK)
        return CLI_EXIT_FAIL;
    /* Health polls expect refusals while services come up: keep the log to errors. */
    nu_log_init("nusec", NU_LOG_ERROR, NULL);
    struct sigaction sa = {.sa_handler = stack__on_signal}, old_int, old_term;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    rc = s.ledger && !strcmp(s.ledger, "postgresql") ? stack_pg_up(s.dir) : NU_OK;
    if (rc == NU_OK && s.sites)
        rc = stack__sites_prepare(&s);
    if (rc == NU_OK && s.ledger && stack_pg_is_uri(s.ledger))
        rc = stack_pg_point(s.dir, s.ledger);
    if (rc == NU_OK)
        rc = stack__up_broker(&s);
    if (rc == NU_OK)
        rc = stack__up_cloud(&s);
    if (rc == NU_OK && !s.sites) /* with sites, each CM runs its own station */
        rc = stack__up_station(&s);
    if (rc == NU_OK && s.programmers)
        rc = stack__boot_manifest(&s);
    for (unsigned i = 0; rc == NU_OK && !s.sites && i < s.programmers; i++)
        rc = stack__up_programmer(&s, i);
    if (rc == NU_OK && s.sites)
        rc = stack__up_sites(&s);
    if (rc == NU_OK && !s.sites) /* the web view reads the (one) station's journal */
        rc = stack__up_dashboard(&s);
    stack__close(&s);
    if (rc == NU_OK)
        rc = stack__metrics_urls(&s);
    if (rc != NU_OK) {
        cli_errorf("stack up failed: stopping what runs in %s", s.dir);
        stack__down_all(&s);
    } else {
        printf("stack up in %s (stop it with: nusec stack down --dir %s)\n", s.dir, s.dir);
    }
    sigaction(SIGINT, &old_int, NULL);
    sigaction(SIGTERM, &old_term, NULL);
    pthread_mutex_destroy(&s.lock);
    return rc == NU_OK ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

static int cli__stack_down(int argc, char **argv)
{
    struct stack s;
    memset(&s, 0, sizeof(s));
    int rc = stack__parse(argc, argv, cli__down_usage, 0, 0, &s);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    return stack__down_all(&s) ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

static void stack__status_line(struct stack *s, const struct stack__svc *svc, pid_t pid, int alive,
                               const struct stack__seen *seen)
{
    char detail[400] = "", esc[1200];
    if (seen) {
        snprintf(detail, sizeof(detail), "%s job=%s %" PRIu32 "/%" PRIu32 " sockets=%" PRIu32,
                 station_prog_state_name(seen->s.state), seen->s.job_id[0] ? seen->s.job_id : "-",
                 seen->s.counter, seen->s.limit, seen->s.sockets);
    } else if (!strcmp(svc->program, "mosquitto")) {
        char host[256];
        int port = 0;
        if (stack__endpoint(s->dir, host, sizeof(host), &port) == NU_OK)
            snprintf(detail, sizeof(detail), "%s:%d%s", host, port,
                     alive && !station_tcp_probe(host, port, 300) ? " (not listening)" : "");
    }
    if (s->json) {
        printf("{\"service\":\"%s\",\"pid\":%ld,\"alive\":%s", svc->name, (long)pid,
               alive ? "true" : "false");
        if (seen) {
            station_json_escape(station_prog_state_name(seen->s.state), esc, sizeof(esc));
            printf(",\"state\":%s", esc);
            station_json_escape(seen->s.job_id, esc, sizeof(esc));
            printf(",\"job\":%s,\"counter\":%" PRIu32 ",\"limit\":%" PRIu32, esc, seen->s.counter,
                   seen->s.limit);
        }
        station_json_escape(detail, esc, sizeof(esc));
        printf(",\"detail\":%s}", esc);
    } else {
        char pidtext[16];
        snprintf(pidtext, sizeof(pidtext), "%ld", (long)pid);
        printf("%-10s %-8s %-6s %s\n", svc->name, pid ? pidtext : "-", alive ? "alive" : "dead",
               detail);
    }
}

/* One line per service of `s` (a CM's names prefixed "SITE/"); 0 when one is dead. */
static int stack__status_services(struct stack *s, struct stack *view, const char *prefix)
{
    struct stack__svc svc[STACK__PROG_MAX + 8];
    size_t n = stack__services(s, svc, sizeof(svc) / sizeof(svc[0]));
    int all_alive = 1;
    for (size_t i = 0; i < n; i++) {
        char path[PATH_MAX];
        pid_t pid = 0;
        struct stack__seen seen;
        if (stack__file(s->run, svc[i].name, ".pid", path, sizeof(path)) == NU_OK)
            station_pidfile_read(path, &pid);
        int alive = pid && station_proc_alive(pid) && station_proc_is(pid, svc[i].program);
        all_alive = all_alive && alive;
        int have = !strcmp(svc[i].program, "nusec-programmer") &&
                   stack__seen_get(view, svc[i].name, &seen);
        struct stack__svc shown = svc[i];
        if (prefix && strlen(prefix) + strlen(svc[i].name) + 1 < sizeof(shown.name)) {
            size_t pl = strlen(prefix);
            memcpy(shown.name, prefix, pl);
            shown.name[pl] = '/';
            memcpy(shown.name + pl + 1, svc[i].name, strlen(svc[i].name) + 1);
        }
        if (view->json) /* a list: one array on one line (docs/cli.md) */
            fputs(view->json_items++ ? "," : "[", stdout);
        stack__status_line(s, &shown, pid, alive, have ? &seen : NULL);
    }
    return all_alive;
}

struct stack__status_walk {
    struct stack *oem;
    int all_alive;
};

static void stack__status_site(struct stack *cm, const char *name, void *ctx)
{
    struct stack__status_walk *w = ctx;
    w->all_alive &= stack__status_services(cm, w->oem, name);
}

/* The sites of `--sites N`, after the OEM's services; 0 when one is dead. */
static int stack__status_sites(struct stack *oem)
{
    struct stack__status_walk w = {.oem = oem, .all_alive = 1};
    stack__each_site(oem, stack__status_site, &w);
    return w.all_alive;
}

static int cli__stack_status(int argc, char **argv)
{
    struct stack s;
    struct stack__svc svc[STACK__PROG_MAX + 8];
    memset(&s, 0, sizeof(s));
    pthread_mutex_init(&s.lock, NULL);
    int rc = stack__parse(argc, argv, cli__status_usage, 0, 1, &s);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    size_t n = stack__services(&s, svc, sizeof(svc) / sizeof(svc[0]));
    if (!n) {
        cli_errorf("no stack in %s (start one with: nusec stack up --dir %s)", s.dir, s.dir);
        return CLI_EXIT_FAIL;
    }
    pid_t broker = stack__running(&s, "broker", "mosquitto");
    /* Retained statuses arrive right after the subscription is granted (a
     * site's programmers' too: their status crosses the bridge). */
    if (broker && stack__mon_open(&s) == NU_OK)
        stack__sleep_ms(500);
    if (!s.json)
        printf("%-10s %-8s %-6s %s\n", "SERVICE", "PID", "STATE", "DETAIL");
    int all_alive = stack__status_services(&s, &s, NULL);
    all_alive &= stack__status_sites(&s);
    if (s.json)
        fputs(s.json_items ? "]\n" : "[]\n", stdout);
    stack__close(&s);
    pthread_mutex_destroy(&s.lock);
    return all_alive ? CLI_EXIT_OK : CLI_EXIT_FAIL;
}

const struct cli_command cli_stack_commands[] = {
    {"stack", "up", "start PKI, broker, cloud, station and programmers on loopback", cli__stack_up},
    {"stack", "down", "stop the local stack", cli__stack_down},
    {"stack", "status", "each service of the local stack: pid, alive, programmer status",
     cli__stack_status},
    {NULL, NULL, NULL, NULL},
};
