/* nusec stack: one service of the local stack — start, health, stop. */
#include "cli.h"
#include "cli_cloud.h"
#include "cli_opts.h"
#include "cli_stack_int.h"
#include "cli_site.h"
#include "cli_stack_pg.h"
#include "pki_init.h"

#include "station_lock.h"
#include "station_db.h"
#include "station_proc.h"

#include "nu_attest.h"
#include "nu_client.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
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

static volatile sig_atomic_t stack__interrupted;

void stack__on_signal(int sig)
{
    (void)sig;
    stack__interrupted = 1;
}

void stack__sleep_ms(unsigned ms)
{
    struct timespec ts = {.tv_sec = ms / 1000u, .tv_nsec = (long)(ms % 1000u) * 1000000L};
    nanosleep(&ts, NULL);
}

/* FOLDER/NAME.EXT, e.g. DIR/run/prog-1.pid. */
int stack__file(const char *folder, const char *name, const char *ext, char *out, size_t cap)
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

int stack__mon_open(struct stack *s)
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
int stack__seen_get(struct stack *s, const char *name, struct stack__seen *out)
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

void stack__close(struct stack *s)
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

int stack__endpoint(const char *dir, char *host, size_t cap, int *port)
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

int stack__oem_open(struct stack *s)
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

int stack__programmer_ok(struct stack__health *h)
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
pid_t stack__running(const struct stack *s, const char *name, const char *program)
{
    char path[PATH_MAX];
    pid_t pid = 0;
    if (stack__file(s->run, name, ".pid", path, sizeof(path)) != NU_OK ||
        station_pidfile_read(path, &pid) != NU_OK)
        return 0;
    return station_proc_alive(pid) && station_proc_is(pid, program) ? pid : 0;
}

void stack__explain(const struct stack *s, const char *name, int rc)
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
int stack__start(struct stack *s, const char *name, const char *program, char *const argv[],
                 int (*ok)(struct stack__health *), pid_t *out_pid, int quiet)
{
    return stack__start_env(s, name, program, argv, NULL, ok, out_pid, quiet);
}

int stack__start_env(struct stack *s, const char *name, const char *program, char *const argv[],
                     char *const env_add[], int (*ok)(struct stack__health *), pid_t *out_pid,
                     int quiet)
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
        rc = station_proc_spawn_env(argv, env_add, log, &h.pid);
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

int stack__prog_path(const struct stack *s, const char *program, char *out, size_t cap)
{
    int rc = nu_path_fmt(out, cap, "%s/%s", s->bin, program);
    if (rc == NU_OK && access(out, X_OK) != 0) {
        cli_errorf("stack up: %s not found or not executable (set NUSEC_BIN_DIR)", out);
        rc = NU_ERR_NOT_FOUND;
    }
    return rc;
}

int stack__up_broker(struct stack *s)
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

int stack__up_cloud(struct stack *s)
{
    char exe[PATH_MAX], log[PATH_MAX] = "";
    pid_t pid;
    int rc = stack__prog_path(s, "nusec-cloud", exe, sizeof(exe));
    if (!rc) /* --log as well as stderr: SIGHUP (logrotate) reopens it */
        rc = stack__file(s->logs, "cloud", ".log", log, sizeof(log));
    char *argv[] = {exe, "--dir", (char *)s->dir, "--log", log, NULL};
    if (rc)
        return rc;
    /* The cloud logs in to the HSM: the one child that gets the PIN, if the
     * operator gave it this way (station_proc drops it for the others). A
     * longer PIN than any accepted is not handed on: the cloud says so. */
    const char *pin = getenv("NUSEC_HSM_PIN");
    char pin_env[sizeof("NUSEC_HSM_PIN=") + NU_HSM_PIN_MAX];
    int n = pin ? snprintf(pin_env, sizeof(pin_env), "NUSEC_HSM_PIN=%s", pin) : -1;
    char *env_add[] = {n >= 0 && (size_t)n < sizeof(pin_env) ? pin_env : NULL, NULL};
    rc = stack__start_env(s, "cloud", "nusec-cloud", argv, env_add, stack__cloud_ok, &pid, 0);
    nu_zero(pin_env, sizeof(pin_env));
    return rc;
}

int stack__up_station(struct stack *s)
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
int stack__up_dashboard(struct stack *s)
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

/* ---- down ------------------------------------------------------------------------------- */

static int stack__svc_cmp(const void *a, const void *b)
{
    return strcmp(((const struct stack__svc *)a)->name, ((const struct stack__svc *)b)->name);
}

/*
 * The services with a pid file, in start order: broker, cloud, station, then
 * programmers (prog-*) by name. Returns how many were found (<= cap).
 */
size_t stack__services(const struct stack *s, struct stack__svc *out, size_t cap)
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

/* Call visit(cm, name, ctx) with the stack of each site of `oem` (DIR/cm/NAME
 * with a run folder); a CM stack the walk cannot name is passed over. */
void stack__each_site(const struct stack *oem,
                      void (*visit)(struct stack *cm, const char *name, void *ctx), void *ctx)
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

int stack__down_all(const struct stack *s)
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
