/* nusec stack up|down|status — the whole local stack on loopback. */
#include "cli.h"
#include "cli_cloud.h"
#include "cli_opts.h"
#include "cli_site.h"
#include "cli_stack_pg.h"
#include "pki_init.h"

#include "station_daemon.h"
#include "station_db.h"
#include "station_event.h"
#include "station_owners.h"
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

#ifndef NUSEC_MOSQUITTO_BIN
#define NUSEC_MOSQUITTO_BIN "/usr/sbin/mosquitto"
#endif

#define STACK__PROG_MAX 64
#define STACK__GRACE_MS 5000u
#define STACK__TOKEN_TTL_S 600u
#define STACK__STATION "station"
#define STACK__SITES_MAX 8

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

/* The statuses programmers retain, collected through a monitor session. */
struct stack__seen {
    struct station_status s;
    uint64_t received_ms;
};

struct stack {
    const char *dir;
    char bin[PATH_MAX];
    char run[PATH_MAX];
    char logs[PATH_MAX];
    unsigned programmers, sockets, devices, flash_us, timeout_s;
    int json;
    size_t json_items;   /* stack status --json: objects printed so far */
    const char *ledger;  /* --ledger: NULL/sqlite or postgresql */
    unsigned sites;      /* --sites N: N CM state dirs DIR/cm/site-K, each a site */
    const char *station; /* the station's identity: "station", or the site's name */
    struct stack *top;   /* a CM's stack: the OEM's, whose monitor watches statuses */
    char site[64];       /* a CM's stack: its site name */
    char cm_dir[PATH_MAX];
    struct cli_cloud oem;
    struct nu_mqtt *mon;
    pthread_mutex_t lock;
    struct stack__seen seen[STACK__PROG_MAX * 2];
    size_t n_seen;
};

/* A service of the stack: pid file name and the program it must be. */
struct stack__svc {
    char name[NU_ENVELOPE_ID_MAX + 1];
    const char *program;
};

static volatile sig_atomic_t stack__interrupted;

static void stack__on_signal(int sig)
{
    (void)sig;
    stack__interrupted = 1;
}

static void stack__sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    nanosleep(&ts, NULL);
}

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

/* FOLDER/NAME.EXT, e.g. DIR/run/prog-1.pid. */
static int stack__file(const char *folder, const char *name, const char *ext, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/%s%s", folder, name, ext);
}

/* ---- the monitor session (programmer statuses) ------------------------------------------ */

static void stack__on_status(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct stack *s = ud;
    struct station_status st;
    if (station_status_decode(msg->topic, msg->payload, msg->len, &st, NULL) != NU_OK)
        return;
    pthread_mutex_lock(&s->lock);
    size_t i = 0;
    while (i < s->n_seen && strcmp(s->seen[i].s.programmer_id, st.programmer_id) != 0)
        i++;
    if (i < sizeof(s->seen) / sizeof(s->seen[0])) {
        s->seen[i].s = st;
        s->seen[i].received_ms = nu_time_ms();
        if (i == s->n_seen)
            s->n_seen++;
    }
    pthread_mutex_unlock(&s->lock);
}

static int stack__mon_open(struct stack *s)
{
    char client_id[64];
    if (s->top) /* a site's programmers are watched from the OEM, through the bridge */
        s = s->top;
    if (s->mon)
        return NU_OK;
    snprintf(client_id, sizeof(client_id), "monitor:stack-%ld", (long)getpid());
    struct nu_client_opts o = {
        .dir = s->dir, .identity = "monitor", .client_id = client_id, .clean_start = 1};
    int rc = nu_client_connect(&o, &s->mon);
    if (rc == NU_OK)
        rc = nu_mqtt_subscribe(s->mon, "nusec/v1/prog/+/status", 1, stack__on_status, s);
    if (rc != NU_OK) {
        nu_mqtt_destroy(s->mon);
        s->mon = NULL;
    }
    return rc;
}

/* The last status of `name`; 0 if none was received. */
static int stack__seen_get(struct stack *s, const char *name, struct stack__seen *out)
{
    int found = 0;
    if (s->top)
        s = s->top;
    pthread_mutex_lock(&s->lock);
    for (size_t i = 0; i < s->n_seen && !found; i++) {
        if (strcmp(s->seen[i].s.programmer_id, name) == 0) {
            *out = s->seen[i];
            found = 1;
        }
    }
    pthread_mutex_unlock(&s->lock);
    return found;
}

static void stack__close(struct stack *s)
{
    if (s->mon) {
        nu_mqtt_unsubscribe(s->mon, "nusec/v1/prog/+/status");
        nu_mqtt_disconnect(s->mon);
        nu_mqtt_destroy(s->mon);
        s->mon = NULL;
    }
    if (s->oem.mqtt)
        cli_cloud_close(&s->oem);
}

/* ---- health checks ---------------------------------------------------------------------- */

struct stack__health {
    struct stack *s;
    pid_t pid;
    uint64_t spawned_ms; /* wall clock */
    const char *name;
};

static int stack__endpoint(const char *dir, char *host, size_t cap, int *port)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = nu_paths_get(dir, NU_PATH_BROKER_ENDPOINT, path, sizeof(path));
    if (rc == NU_OK)
        rc = nu_file_read(path, 512, &text, &len);
    if (rc == NU_OK)
        rc = nu_mqtt_endpoint_parse((const char *)text, host, cap, port);
    free(text);
    return rc;
}

static int stack__broker_ok(struct stack__health *h)
{
    char host[256];
    int port = 0;
    return stack__endpoint(h->s->dir, host, sizeof(host), &port) == NU_OK &&
           station_tcp_probe(host, port, 300);
}

static int stack__oem_open(struct stack *s)
{
    if (s->oem.mqtt)
        return NU_OK;
    /* Its own client id: the operator's `nusec` commands as oem are not taken over. */
    struct nu_client_opts o = {
        .dir = s->dir, .identity = "oem", .client_id = "oem:stack", .clean_start = 1};
    int rc = nu_envelope_sender_create("oem", NU_ENVELOPE_SEQ_FROM_CLOCK, &s->oem.sender);
    if (rc == NU_OK)
        rc = nu_client_connect(&o, &s->oem.mqtt);
    if (rc != NU_OK)
        cli_cloud_close(&s->oem);
    return rc;
}

/* Any typed answer from a cloud agent means it serves; silence does not. */
static int stack__cloud_ok(struct stack__health *h)
{
    char detail[256] = "";
    Nusec__V1__Envelope *reply = NULL;
    Nusec__V1__ProgrammerListRequest req = NUSEC__V1__PROGRAMMER_LIST_REQUEST__INIT;
    if (stack__oem_open(h->s) != NU_OK)
        return 0;
    int rc = nu_client_request(h->s->oem.mqtt, h->s->oem.sender, "programmer.list", &req.base, NULL,
                               0, 2000, &reply, detail, sizeof(detail));
    nu_envelope_free(reply);
    if (rc == NU_OK || detail[0])
        return 1;
    return rc != NU_ERR_NOT_FOUND && rc != NU_ERR_TIMEOUT && rc != NU_ERR_CONNECTION &&
           rc != NU_ERR_STATE && rc != NU_ERR_MQTT;
}

static int stack__station_ok(struct stack__health *h)
{
    pid_t pid = 0;
    char ready[32];
    struct station_db *db = NULL;
    if (!station_daemon_running(h->s->dir, &pid) || pid != h->pid)
        return 0;
    int ok = station_db_open_dir_existing(h->s->dir, &db) == NU_OK &&
             station_db_meta_get(db, "ready_pid", ready, sizeof(ready)) == NU_OK &&
             atol(ready) == (long)h->pid;
    station_db_close(db);
    return ok;
}

static int stack__programmer_ok(struct stack__health *h)
{
    struct stack__seen seen;
    if (stack__mon_open(h->s) != NU_OK || !stack__seen_get(h->s, h->name, &seen))
        return 0;
    /* A fresh ONLINE status: not the retained one of an earlier run. */
    return seen.s.state != NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_OFFLINE &&
           seen.s.state != 0 && seen.s.sent_at_ms + 2000u >= h->spawned_ms;
}

/*
 * Wait until ok(h) or the timeout; fail at once when the process died.
 * Returns NU_OK, TIMEOUT, STATE (it exited) or INTERNAL (interrupted).
 */
static int stack__wait_healthy(struct stack__health *h, int (*ok)(struct stack__health *))
{
    uint64_t deadline = nu_mono_ms() + (uint64_t)h->s->timeout_s * 1000u;
    for (;;) {
        if (stack__interrupted)
            return NU_ERR_INTERNAL;
        if (!station_proc_alive(h->pid))
            return NU_ERR_STATE;
        if (ok(h))
            return NU_OK;
        if (nu_mono_ms() >= deadline)
            return NU_ERR_TIMEOUT;
        stack__sleep_ms(100);
    }
}

/* ---- starting one service ------------------------------------------------------------------ */

/* pid of a running `program` recorded in DIR/run/NAME.pid, else 0. */
static pid_t stack__running(const struct stack *s, const char *name, const char *program)
{
    char path[PATH_MAX];
    pid_t pid = 0;
    if (stack__file(s->run, name, ".pid", path, sizeof(path)) != NU_OK ||
        station_pidfile_read(path, &pid) != NU_OK)
        return 0;
    return station_proc_alive(pid) && station_proc_is(pid, program) ? pid : 0;
}

static void stack__explain(const struct stack *s, const char *name, int rc)
{
    char log[PATH_MAX];
    if (rc == NU_ERR_STATE)
        cli_errorf("stack up: %s exited during start-up", name);
    else if (rc == NU_ERR_TIMEOUT)
        cli_errorf("stack up: %s not healthy after %u s", name, s->timeout_s);
    else if (rc == NU_ERR_INTERNAL)
        cli_errorf("stack up: interrupted while starting %s", name);
    else
        cli_errorf("stack up: %s: %s (%s)", name, nu_err_str(rc), nu_err_name(rc));
    if (stack__file(s->logs, name, ".log", log, sizeof(log)) == NU_OK)
        station_log_tail(log, 12);
}

/*
 * Start `name` (unless it already runs) and wait for ok(). *out_pid set.
 * Returns NU_OK or the failure (already explained on stderr).
 */
static int stack__start(struct stack *s, const char *name, const char *program, char *const argv[],
                        int (*ok)(struct stack__health *), pid_t *out_pid, int quiet)
{
    char pidfile[PATH_MAX], log[PATH_MAX];
    struct stack__health h = {.s = s, .name = name};
    int rc = stack__file(s->run, name, ".pid", pidfile, sizeof(pidfile));
    if (rc == NU_OK)
        rc = stack__file(s->logs, name, ".log", log, sizeof(log));
    if (rc != NU_OK)
        return rc;
    if ((h.pid = stack__running(s, name, program)) != 0) {
        printf("%-10s already running (pid %ld)\n", name, (long)h.pid);
        h.spawned_ms = 0;
    } else {
        h.spawned_ms = nu_time_ms();
        rc = station_proc_spawn(argv, log, &h.pid);
        if (rc == NU_OK)
            rc = station_pidfile_write(pidfile, h.pid);
        if (rc != NU_OK) {
            stack__explain(s, name, rc);
            return rc;
        }
    }
    *out_pid = h.pid;
    rc = stack__wait_healthy(&h, ok);
    if (rc != NU_OK) {
        if (!quiet)
            stack__explain(s, name, rc);
        return rc;
    }
    if (h.spawned_ms) /* one line per service: "already running" said it */
        printf("%-10s up (pid %ld, log %s)\n", name, (long)h.pid, log);
    fflush(stdout);
    return NU_OK;
}

static int stack__prog_path(const struct stack *s, const char *program, char *out, size_t cap)
{
    int rc = nu_path_fmt(out, cap, "%s/%s", s->bin, program);
    if (rc == NU_OK && access(out, X_OK) != 0) {
        cli_errorf("stack up: %s not found or not executable (set NUSEC_BIN_DIR)", out);
        rc = NU_ERR_NOT_FOUND;
    }
    return rc;
}

static int stack__up_broker(struct stack *s)
{
    char conf[PATH_MAX];
    pid_t pid;
    const char *bin = getenv("NUSEC_MOSQUITTO");
    int rc = nu_paths_get(s->dir, NU_PATH_BROKER_CONF, conf, sizeof(conf));
    if (rc != NU_OK)
        return rc;
    char *argv[] = {(char *)(bin && *bin ? bin : NUSEC_MOSQUITTO_BIN), "-c", conf, NULL};
    return stack__start(s, "broker", "mosquitto", argv, stack__broker_ok, &pid, 0);
}

static int stack__up_cloud(struct stack *s)
{
    char exe[PATH_MAX], log[PATH_MAX] = "";
    pid_t pid;
    int rc = stack__prog_path(s, "nusec-cloud", exe, sizeof(exe));
    if (!rc) /* --log as well as stderr: SIGHUP (logrotate) reopens it */
        rc = stack__file(s->logs, "cloud", ".log", log, sizeof(log));
    char *argv[] = {exe, "--dir", (char *)s->dir, "--log", log, NULL};
    return rc ? rc : stack__start(s, "cloud", "nusec-cloud", argv, stack__cloud_ok, &pid, 0);
}

static int stack__up_station(struct stack *s)
{
    char exe[PATH_MAX], log[PATH_MAX] = "";
    pid_t pid;
    int rc = stack__prog_path(s, "nusec-station", exe, sizeof(exe));
    if (!rc)
        rc = stack__file(s->logs, "station", ".log", log, sizeof(log));
    char *argv[] = {exe, "--dir", (char *)s->dir, "--name", (char *)s->station, "--log", log, NULL};
    return rc ? rc : stack__start(s, "station", "nusec-station", argv, stack__station_ok, &pid, 0);
}

/* The dashboard is up once it has written a fresh DIR/run/dashboard.url. */
static int stack__dashboard_ok(struct stack__health *h)
{
    char url[PATH_MAX];
    struct stat st;
    if (stack__file(h->s->run, "dashboard", ".url", url, sizeof(url)) != NU_OK ||
        stat(url, &st) != 0)
        return 0;
    uint64_t mtime_ms =
        (uint64_t)st.st_mtim.tv_sec * 1000u + (uint64_t)st.st_mtim.tv_nsec / 1000000u;
    return mtime_ms + 1000u >= h->spawned_ms;
}

/* The live web view on a free loopback port; its URL (with the token) is printed. */
static int stack__up_dashboard(struct stack *s)
{
    char exe[PATH_MAX], url_file[PATH_MAX];
    pid_t pid;
    uint8_t *url = NULL;
    size_t len = 0;
    int rc = stack__prog_path(s, "nusec", exe, sizeof(exe));
    if (rc == NU_OK)
        rc = stack__file(s->run, "dashboard", ".url", url_file, sizeof(url_file));
    if (rc != NU_OK)
        return rc;
    if (!stack__running(s, "dashboard", "nusec"))
        unlink(url_file);
    char *argv[] = {exe, "dashboard", "--dir", (char *)s->dir, "--listen", "127.0.0.1:0", NULL};
    rc = stack__start(s, "dashboard", "nusec", argv, stack__dashboard_ok, &pid, 0);
    if (rc == NU_OK && nu_file_read(url_file, 512, &url, &len) == NU_OK)
        printf("%-10s %.*s", "web view", (int)len, (const char *)url);
    free(url);
    return rc;
}

/* ---- programmers ------------------------------------------------------------------------- */

/*
 * The programmers' boot manifest: the OEM signs the SHA-256 of the
 * nusec-programmer binary in the HSM (firmware.sign; an MCUboot image whose
 * payload is the hash), and the programmer refuses to run when its own
 * binary does not match (secure boot, checked against the ROTPK pinned in its
 * KeyStore). One image per binary: its name carries the hash, so a rebuilt
 * binary gets a new manifest and an unchanged one reuses the signed image.
 */
static int stack__boot_manifest(struct stack *s)
{
    char exe[PATH_MAX], name[64], image[PATH_MAX], manifest[PATH_MAX], hex[17];
    uint8_t *bin = NULL, *img = NULL, digest[32];
    size_t bin_len = 0, img_len = 0;
    Nusec__V1__Envelope *reply = NULL;
    int rc = stack__prog_path(s, "nusec-programmer", exe, sizeof(exe));
    if (!rc)
        rc = nu_file_read(exe, 256u * 1024u * 1024u, &bin, &bin_len);
    if (!rc)
        rc = nu_sha256(bin, bin_len, digest);
    free(bin);
    if (!rc)
        rc = nu_hex_encode(digest, 8, hex, sizeof(hex));
    if (!rc)
        rc = nu_path_fmt(name, sizeof(name), "nusec-programmer-%s", hex);
    if (!rc)
        rc = nu_path_fmt(image, sizeof(image), "%s/firmware/%s-1.0.0.img", s->dir, name);
    if (!rc)
        rc = nu_path_fmt(manifest, sizeof(manifest), "%s/programmers/boot-manifest.img", s->dir);
    if (!rc && nu_path_exists(image)) {
        rc = nu_file_read(image, NU_ENVELOPE_MAX, &img, &img_len);
    } else if (!rc && !(rc = stack__oem_open(s))) {
        Nusec__V1__FirmwareSignRequest req = NUSEC__V1__FIRMWARE_SIGN_REQUEST__INIT;
        req.name = name;
        req.version = "1.0.0";
        req.payload = (ProtobufCBinaryData){sizeof(digest), digest};
        rc = cli_cloud_call(&s->oem, "firmware.sign", &req.base,
                            NUSEC__V1__ENVELOPE__BODY_FIRMWARE_SIGN_RESPONSE, &reply);
    }
    if (!rc && reply)
        rc = nu_file_write_atomic(manifest, reply->firmware_sign_response->image.data,
                                  reply->firmware_sign_response->image.len, 0644);
    else if (!rc)
        rc = nu_file_write_atomic(manifest, img, img_len, 0644);
    nu_envelope_free(reply);
    free(img);
    if (!rc)
        printf("%-10s boot manifest %s (signed in the HSM)\n", "secureboot", name);
    else
        cli_errorf("stack up: programmer boot manifest: %s", nu_err_name(rc));
    return rc;
}

static int stack__token(struct stack *s, const char *name, char *out, size_t cap)
{
    Nusec__V1__Envelope *reply = NULL;
    Nusec__V1__EnrollTokenRequest req = NUSEC__V1__ENROLL_TOKEN_REQUEST__INIT;
    req.programmer_id = (char *)name;
    req.ttl_s = STACK__TOKEN_TTL_S;
    int rc = stack__oem_open(s);
    if (rc == NU_OK)
        rc = cli_cloud_call(&s->oem, "enroll.token", &req.base,
                            NUSEC__V1__ENVELOPE__BODY_ENROLL_TOKEN_RESPONSE, &reply);
    if (rc == NU_OK && (!reply->enroll_token_response->token ||
                        strlen(reply->enroll_token_response->token) >= cap))
        rc = NU_ERR_DECODE;
    if (rc == NU_OK)
        strcpy(out, reply->enroll_token_response->token);
    if (reply) {
        if (reply->enroll_token_response && reply->enroll_token_response->token)
            nu_zero(reply->enroll_token_response->token,
                    strlen(reply->enroll_token_response->token));
        nu_envelope_free(reply);
    }
    return rc;
}

/*
 * The stand-in programmer vendor: its CA lives in DIR/vendor (the OEM's
 * cloud never reads that folder); the OEM pins its certificate as
 * DIR/pki/vendor-ca.pem (cloud.conf vendor_ca, by default). Both are made
 * once; an existing pin is never replaced.
 */
static int stack__vendor_ca(struct stack *s, char *vdir, size_t cap)
{
    char pin[PATH_MAX], src[PATH_MAX];
    uint8_t *pem = NULL;
    size_t len = 0;
    int rc = nu_path_fmt(vdir, cap, "%s/vendor", s->dir);
    if (rc == NU_OK)
        rc = nu_path_fmt(pin, sizeof(pin), "%s/pki/vendor-ca.pem", s->dir);
    if (rc == NU_OK)
        rc = nu_path_fmt(src, sizeof(src), "%s/" NU_ATTEST_VENDOR_CERT, vdir);
    if (rc == NU_OK && !nu_path_exists(src))
        rc = nu_attest_vendor_ca_init(vdir);
    if (rc == NU_OK && !nu_path_exists(pin)) {
        rc = nu_file_read(src, 64u * 1024u, &pem, &len);
        if (rc == NU_OK)
            rc = nu_file_write_atomic(pin, pem, len, 0644);
        free(pem);
    }
    if (rc != NU_OK)
        cli_errorf("stack up: programmer vendor CA: %s", nu_err_name(rc));
    return rc;
}

/* Run nusec-programmer with argv to the end; its exit status in *out_status. */
static int stack__prog_run(struct stack *s, const char *name, char *const argv[], int *out_status)
{
    char log[PATH_MAX];
    pid_t pid = 0;
    int rc = stack__file(s->logs, name, ".log", log, sizeof(log));
    if (rc == NU_OK)
        rc = station_proc_spawn(argv, log, &pid);
    if (rc == NU_OK)
        rc = station_proc_wait_child(pid, s->timeout_s * 1000u, out_status);
    if (rc == NU_ERR_TIMEOUT)
        station_proc_stop(pid, 1000);
    return rc;
}

/* The programmer factory: attestation key in the KeyStore, vendor certificate.
 * Exit 4 = factory-initialised already, which is fine. */
static int stack__factory(struct stack *s, const char *name, const char *exe)
{
    char vdir[PATH_MAX];
    int status = 0;
    int rc = stack__vendor_ca(s, vdir, sizeof(vdir));
    if (rc == NU_OK) {
        char *argv[] = {(char *)exe,      "--dir",       (char *)s->dir, "--name", (char *)name,
                        "--factory-init", "--vendor-ca", vdir,           NULL};
        rc = stack__prog_run(s, name, argv, &status);
    }
    if (rc == NU_OK && status != 0 && status != 4)
        rc = NU_ERR_STATE;
    if (rc != NU_OK)
        cli_errorf("stack up: factory init of %s failed: %s", name, nu_err_name(rc));
    return rc;
}

/* Enrolled at the OEM; `owner` (a station, or a site) commands it afterwards. */
static int stack__enroll(struct stack *s, const char *name, const char *exe, const char *owner)
{
    char token[NU_ENVELOPE_TOKEN_MAX + 1], log[PATH_MAX];
    pid_t pid = 0;
    int status = 0;
    int rc = s->sites ? site_assign(s->dir, owner, name) : station_owners_add(s->dir, owner, name);
    if (rc == NU_OK)
        rc = stack__factory(s, name, exe);
    if (rc == NU_OK)
        rc = stack__token(s, name, token, sizeof(token));
    if (rc == NU_OK)
        rc = stack__file(s->logs, name, ".log", log, sizeof(log));
    if (rc == NU_OK) {
        /* The programmer's interface takes the one-time token as an argument. */
        char *argv[] = {(char *)exe,  "--dir",    (char *)s->dir, "--name",
                        (char *)name, "--enroll", token,          NULL};
        rc = station_proc_spawn(argv, log, &pid);
    }
    nu_zero(token, sizeof(token));
    if (rc == NU_OK)
        rc = station_proc_wait_child(pid, s->timeout_s * 1000u, &status);
    if (rc == NU_ERR_TIMEOUT)
        station_proc_stop(pid, 1000);
    if (rc == NU_OK && status != 0)
        rc = NU_ERR_STATE;
    if (rc == NU_OK) {
        printf("%-10s enrolled (at the OEM, attested by its KeyStore)\n", name);
        return NU_OK;
    }
    cli_errorf("stack up: enrollment of %s failed: %s", name,
               rc == NU_ERR_STATE ? "nusec-programmer --enroll failed" : nu_err_name(rc));
    if (stack__file(s->logs, name, ".log", log, sizeof(log)) == NU_OK)
        station_log_tail(log, 12);
    return rc == NU_ERR_STATE ? NU_ERR_STATE : rc;
}

static int stack__enrolled(const struct stack *s, const char *name)
{
    char path[PATH_MAX];
    return nu_path_fmt(path, sizeof(path), "%s/programmers/%s/keystore.bin", s->dir, name) ==
               NU_OK &&
           nu_path_exists(path);
}

/*
 * Programmer prog-(index+1) with `share` blank targets, run in `s`'s state
 * dir. Enrolled at the OEM (`oem`, the same stack on one machine); at a site
 * its folder then moves to the site's state dir, as the device ships.
 */
static int stack__up_programmer_in(struct stack *s, struct stack *oem, unsigned index,
                                   unsigned share)
{
    char name[32], exe[PATH_MAX], sockets[16], devices[16], flash[16], log[PATH_MAX];
    pid_t pid = 0;
    snprintf(name, sizeof(name), "prog-%u", index + 1);
    snprintf(sockets, sizeof(sockets), "%u", s->sockets);
    snprintf(devices, sizeof(devices), "%u", share);
    snprintf(flash, sizeof(flash), "%u", s->flash_us);
    int rc = stack__prog_path(s, "nusec-programmer", exe, sizeof(exe));
    int here =
        rc == NU_OK && (stack__running(s, name, "nusec-programmer") || stack__enrolled(s, name));
    if (rc == NU_OK && !here && !stack__enrolled(oem, name))
        rc = stack__enroll(oem, name, exe, s->station);
    if (rc == NU_OK && !here && s != oem) {
        char from[PATH_MAX], to[PATH_MAX];
        rc = nu_path_fmt(from, sizeof(from), "%s/programmers/%s", oem->dir, name);
        if (rc == NU_OK)
            rc = nu_path_fmt(to, sizeof(to), "%s/programmers/%s", s->dir, name);
        if (rc == NU_OK && rename(from, to) != 0) {
            cli_errorf("stack up: cannot move %s to %s: %s", from, to, strerror(errno));
            rc = NU_ERR_IO;
        }
        if (rc == NU_OK)
            printf("%-10s shipped to %s\n", name, s->site);
    }
    if (rc == NU_OK)
        rc = s != oem ? site_assign(oem->dir, s->station, name)
                      : station_owners_add(s->dir, s->station, name);
    if (rc != NU_OK)
        return rc;
    if (s != oem)
        return NU_OK; /* started once the site broker knows it (stack__up_site) */
    char *argv[] = {exe,         "--dir", (char *)s->dir, "--name", name,
                    "--sockets", sockets, "--devices",    devices,  "--flash-us-per-kib",
                    flash,       NULL};
    rc = stack__start(s, name, "nusec-programmer", argv, stack__programmer_ok, &pid, 1);
    /* A KeyStore left by an interrupted enrollment: enroll again, once. */
    if (rc == NU_ERR_STATE && stack__file(s->logs, name, ".log", log, sizeof(log)) == NU_OK &&
        station_log_contains(log, "is not enrolled")) {
        rc = stack__enroll(s, name, exe, s->station);
        if (rc == NU_OK)
            rc = stack__start(s, name, "nusec-programmer", argv, stack__programmer_ok, &pid, 1);
    }
    if (rc != NU_OK)
        stack__explain(s, name, rc);
    return rc;
}

static unsigned stack__share(const struct stack *s, unsigned index, unsigned total)
{
    return s->devices / total + (index < s->devices % total);
}

static int stack__up_programmer(struct stack *s, unsigned index)
{
    return stack__up_programmer_in(s, s, index, stack__share(s, index, s->programmers));
}

/* Start an enrolled programmer of a site (after its site broker is up). */
static int stack__start_site_programmer(struct stack *cm, unsigned index, unsigned share)
{
    char name[32], exe[PATH_MAX], sockets[16], devices[16], flash[16];
    pid_t pid = 0;
    snprintf(name, sizeof(name), "prog-%u", index + 1);
    snprintf(sockets, sizeof(sockets), "%u", cm->sockets);
    snprintf(devices, sizeof(devices), "%u", share);
    snprintf(flash, sizeof(flash), "%u", cm->flash_us);
    int rc = stack__prog_path(cm, "nusec-programmer", exe, sizeof(exe));
    if (rc != NU_OK)
        return rc;
    char *argv[] = {exe,         "--dir", (char *)cm->dir, "--name", name,
                    "--sockets", sockets, "--devices",     devices,  "--flash-us-per-kib",
                    flash,       NULL};
    return stack__start(cm, name, "nusec-programmer", argv, stack__programmer_ok, &pid, 0);
}

/* ---- sites: the OEM and N CMs on loopback (--sites N) ------------------------------------ */

/* The stack of site k (1-based): DIR/cm/site-k, its station site-k, watched from the OEM. */
static int stack__cm_init(struct stack *oem, unsigned k, struct stack *cm)
{
    memset(cm, 0, sizeof(*cm));
    snprintf(cm->site, sizeof(cm->site), "site-%u", k);
    int rc = nu_path_fmt(cm->cm_dir, sizeof(cm->cm_dir), "%s/cm/%s", oem->dir, cm->site);
    cm->dir = cm->cm_dir;
    cm->station = cm->site;
    cm->top = oem;
    cm->sockets = oem->sockets;
    cm->flash_us = oem->flash_us;
    cm->timeout_s = oem->timeout_s;
    memcpy(cm->bin, oem->bin, sizeof(cm->bin));
    if (rc == NU_OK)
        rc = nu_paths_get(cm->dir, NU_PATH_RUN, cm->run, sizeof(cm->run));
    if (rc == NU_OK)
        rc = nu_paths_get(cm->dir, NU_PATH_LOGS, cm->logs, sizeof(cm->logs));
    return rc;
}

/* DIR/cm/site-k.EXT: the files that cross between the machines (docs/sites.md). */
static int stack__crossing(const struct stack *cm, const char *ext, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/cm/%s.%s", cm->top->dir, cm->site, ext);
}

/*
 * The site's identities, as two operators would make them: OEM `site add`
 * (enrol file) -> CM `site join` (keys stay in DIR/cm/site-k, join request)
 * -> OEM `site sign` (HSM) -> bundle. Once: a signed site is kept.
 */
static int stack__site_identities(struct stack *oem, struct stack *cm)
{
    char crt[PATH_MAX], folder[PATH_MAX], enrol[PATH_MAX], join[PATH_MAX], bundle[PATH_MAX];
    int rc =
        nu_path_fmt(crt, sizeof(crt), "%s/" SITE_OEM_FOLDER "/%s/site.crt", oem->dir, cm->site);
    if (rc == NU_OK)
        rc = nu_path_fmt(folder, sizeof(folder), "%s/" SITE_OEM_FOLDER "/%s", oem->dir, cm->site);
    if (rc == NU_OK)
        rc = stack__crossing(cm, "enrol", enrol, sizeof(enrol));
    if (rc == NU_OK)
        rc = stack__crossing(cm, "join", join, sizeof(join));
    if (rc == NU_OK)
        rc = stack__crossing(cm, "bundle", bundle, sizeof(bundle));
    if (rc != NU_OK || nu_path_exists(crt))
        return rc;
    char cm_root[PATH_MAX];
    if ((rc = nu_path_fmt(cm_root, sizeof(cm_root), "%s/cm", oem->dir)) ||
        (rc = nu_mkdirs(cm_root, 0755)))
        return rc;
    if (!nu_path_exists(folder))
        rc = site_add(oem->dir, cm->site, NULL, enrol);
    if (rc == NU_OK && !nu_path_exists(join))
        rc = site_join(cm->dir, enrol, "127.0.0.1", 0, join);
    if (rc == NU_OK)
        rc = site_sign(oem->dir, join, bundle);
    if (rc == NU_OK)
        printf("%-10s joined: station, bridge and site broker keys made in %s, certificates "
               "signed by the OEM's Fleet CA\n",
               cm->site, cm->dir);
    else
        cli_errorf("stack up: site %s: %s (remove %s and %s to start it again)", cm->site,
                   nu_err_name(rc), folder, cm->dir);
    return rc;
}

static int stack__up_broker(struct stack *s);
static int stack__up_station(struct stack *s);

/* Programmers first..first+n-1 of a site: enrolled at the OEM, shipped, then the
 * site's bundle installed (ownership, boot manifest), its broker, station and
 * programmers started. */
static int stack__up_site(struct stack *oem, struct stack *cm, unsigned first, unsigned n,
                          unsigned total)
{
    char bundle[PATH_MAX];
    int rc = NU_OK;
    for (unsigned j = 0; rc == NU_OK && j < n; j++)
        rc = stack__up_programmer_in(cm, oem, first + j, 0);
    if (rc == NU_OK)
        rc = stack__crossing(cm, "bundle", bundle, sizeof(bundle));
    if (rc == NU_OK)
        rc = site_export(oem->dir, cm->site, bundle);
    if (rc == NU_OK)
        rc = site_init(cm->dir, bundle);
    if (rc == NU_OK)
        printf("%-10s site broker configured (bridge to the cloud broker)\n", cm->site);
    if (rc == NU_OK)
        rc = stack__up_broker(cm);
    if (rc == NU_OK)
        rc = stack__up_station(cm);
    for (unsigned j = 0; rc == NU_OK && j < n; j++)
        rc = stack__start_site_programmer(cm, first + j, stack__share(oem, first + j, total));
    return rc;
}

/* Every site of --sites N, after the cloud broker and the cloud are up. */
static int stack__up_sites(struct stack *oem)
{
    unsigned total = oem->sites * oem->programmers;
    int rc = NU_OK;
    for (unsigned k = 0; rc == NU_OK && k < oem->sites; k++) {
        struct stack cm;
        rc = stack__cm_init(oem, k + 1, &cm);
        if (rc == NU_OK)
            rc = stack__up_site(oem, &cm, k * oem->programmers, oem->programmers, total);
    }
    return rc;
}

/* Before the cloud starts: it reads the sites' stations from cloud.conf. */
static int stack__sites_prepare(struct stack *oem)
{
    int rc = NU_OK;
    for (unsigned k = 0; rc == NU_OK && k < oem->sites; k++) {
        struct stack cm;
        rc = stack__cm_init(oem, k + 1, &cm);
        if (rc == NU_OK)
            rc = stack__site_identities(oem, &cm);
    }
    return rc;
}

/* ---- down ------------------------------------------------------------------------------- */

static int stack__svc_cmp(const void *a, const void *b)
{
    return strcmp(((const struct stack__svc *)a)->name, ((const struct stack__svc *)b)->name);
}

/*
 * The services with a pid file, in start order: broker, cloud, station, then
 * programmers (prog-*) by name. Returns how many were found (<= cap).
 */
static size_t stack__services(const struct stack *s, struct stack__svc *out, size_t cap)
{
    static const struct stack__svc fixed[] = {{"broker", "mosquitto"},
                                              {"cloud", "nusec-cloud"},
                                              {"station", "nusec-station"},
                                              {"dashboard", "nusec"}};
    size_t n = 0;
    char path[PATH_MAX];
    for (size_t i = 0; i < sizeof(fixed) / sizeof(fixed[0]) && n < cap; i++) {
        if (stack__file(s->run, fixed[i].name, ".pid", path, sizeof(path)) == NU_OK &&
            nu_path_exists(path))
            out[n++] = fixed[i];
    }
    size_t first_prog = n;
    DIR *d = opendir(s->run);
    struct dirent *e;
    while (d && (e = readdir(d)) && n < cap) {
        size_t len = strlen(e->d_name);
        if (strncmp(e->d_name, "prog-", 5) != 0 || len < 5 || len - 4 > NU_ENVELOPE_ID_MAX ||
            strcmp(e->d_name + len - 4, ".pid") != 0)
            continue;
        snprintf(out[n].name, sizeof(out[n].name), "%.*s", (int)(len - 4), e->d_name);
        out[n++].program = "nusec-programmer";
    }
    if (d)
        closedir(d);
    qsort(out + first_prog, n - first_prog, sizeof(*out), stack__svc_cmp);
    return n;
}

/* SIGTERM a group at once, wait for all, SIGKILL the stragglers. Returns failures. */
static int stack__stop_group(const struct stack *s, const struct stack__svc *svc, size_t n)
{
    pid_t pids[STACK__PROG_MAX + 8];
    char path[PATH_MAX];
    int failures = 0;
    for (size_t i = 0; i < n; i++) {
        pids[i] = 0;
        if (stack__file(s->run, svc[i].name, ".pid", path, sizeof(path)) != NU_OK ||
            station_pidfile_read(path, &pids[i]) != NU_OK)
            continue;
        if (!station_proc_alive(pids[i]) || !station_proc_is(pids[i], svc[i].program)) {
            printf("%-10s was not running\n", svc[i].name);
            pids[i] = 0;
            unlink(path);
            continue;
        }
        kill(pids[i], SIGTERM);
    }
    uint64_t deadline = nu_mono_ms() + STACK__GRACE_MS;
    for (size_t i = 0; i < n; i++) {
        if (!pids[i])
            continue;
        while (station_proc_alive(pids[i]) && nu_mono_ms() < deadline)
            stack__sleep_ms(50);
        int how = station_proc_stop(pids[i], 0);
        if (how < 0) {
            cli_errorf("stack down: %s (pid %ld) would not die", svc[i].name, (long)pids[i]);
            failures++;
            continue;
        }
        printf("%-10s stopped (pid %ld%s)\n", svc[i].name, (long)pids[i], how ? ", killed" : "");
        if (stack__file(s->run, svc[i].name, ".pid", path, sizeof(path)) == NU_OK)
            unlink(path);
    }
    return failures;
}

static int stack__down_all(const struct stack *s);

/* Call visit(cm, name, ctx) with the stack of each site of `oem` (DIR/cm/NAME
 * with a run folder); a CM stack the walk cannot name is passed over. */
static void stack__each_site(const struct stack *oem,
                             void (*visit)(struct stack *cm, const char *name, void *ctx),
                             void *ctx)
{
    char root[PATH_MAX];
    if (nu_path_fmt(root, sizeof(root), "%s/cm", oem->dir) != NU_OK)
        return;
    DIR *d = opendir(root);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        struct stack cm;
        char run[PATH_MAX];
        if (e->d_name[0] == '.')
            continue;
        memset(&cm, 0, sizeof(cm));
        cm.json = oem->json;
        if (nu_path_fmt(cm.cm_dir, sizeof(cm.cm_dir), "%s/%s", root, e->d_name) != NU_OK ||
            nu_path_fmt(run, sizeof(run), "%s/run", cm.cm_dir) != NU_OK || !nu_path_exists(run))
            continue;
        cm.dir = cm.cm_dir;
        if (nu_paths_get(cm.dir, NU_PATH_RUN, cm.run, sizeof(cm.run)) != NU_OK ||
            nu_paths_get(cm.dir, NU_PATH_LOGS, cm.logs, sizeof(cm.logs)) != NU_OK)
            continue;
        visit(&cm, e->d_name, ctx);
    }
    if (d)
        closedir(d);
}

static void stack__down_site(struct stack *cm, const char *name, void *failures)
{
    printf("-- site %s\n", name);
    *(int *)failures += stack__down_all(cm);
}

/* The sites' stacks go down before the OEM's. */
static int stack__down_sites(const struct stack *s)
{
    int failures = 0;
    stack__each_site(s, stack__down_site, &failures);
    return failures;
}

static int stack__down_all(const struct stack *s)
{
    struct stack__svc svc[STACK__PROG_MAX + 8];
    int site_failures = stack__down_sites(s);
    size_t n = stack__services(s, svc, sizeof(svc) / sizeof(svc[0]));
    size_t fixed = 0;
    while (fixed < n && strncmp(svc[fixed].name, "prog-", 5) != 0)
        fixed++;
    if (!n) {
        printf("no stack running in %s\n", s->dir);
        return site_failures + (stack_pg_down(s->dir) != NU_OK);
    }
    int failures = site_failures + stack__stop_group(s, svc + fixed, n - fixed);
    for (size_t i = fixed; i-- > 0;)
        failures += stack__stop_group(s, &svc[i], 1);
    failures += stack_pg_down(s->dir) != NU_OK; /* after the cloud, its client */
    char urls[PATH_MAX];                        /* no stale URLs once the services are gone */
    if (!failures && stack__file(s->run, "metrics", ".urls", urls, sizeof(urls)) == NU_OK)
        unlink(urls);
    if (!failures && stack__file(s->run, "dashboard", ".url", urls, sizeof(urls)) == NU_OK)
        unlink(urls);
    return failures;
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
