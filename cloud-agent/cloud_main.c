/* nusec-cloud — the OEM cloud agent. */
#include "cloud.h"
#include "cloud_leader.h"

#include "nu_client.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_opts.h"
#include "nu_paths.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_version.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const char cloud__usage[] =
    "usage: nusec-cloud [--dir DIR] [--config FILE] [--log-level LEVEL] [--log FILE]\n"
    "\n"
    "The OEM cloud agent: owns the HSM keys and the ledger, answers requests on\n"
    "$share/cloud/nusec/v1/cloud/req/+/+ and records device reports. Several agents\n"
    "may run on one state directory (set `instance` in their configurations).\n"
    "\n"
    "  --dir DIR          state directory (default: $NUSEC_HOME)\n"
    "  --config FILE      configuration (default: DIR/cloud/cloud.conf if present)\n"
    "  --log-level LEVEL  debug, info, warn, error (default: the configuration's\n"
    "                     log_level, else info)\n"
    "  --log FILE         append the log to FILE instead of stderr\n"
    "  -h, --help         this text\n"
    "  --version          the version and git revision it was built from\n"
    "\n"
    "Configuration keys (key = value): workers (4), queue_max (4096), chunk_size\n"
    "(16384), instance (1), batch_max (32: cert.requests one worker commits at once;\n"
    "1 = one transaction each), checkpoint_interval_s (300: the audit chain's head\n"
    "is signed in the HSM this often, and at start, stop and job close; 0 = only\n"
    "then), oem_ids (oem), station_ids (station), log_level, session_expiry_s (90,\n"
    "10..86400: how long the broker keeps this agent's MQTT session, and queues\n"
    "its share of $share requests, after it dies; short so a dead agent does not\n"
    "swallow requests for long, long enough to resume after a quick restart),\n"
    "payload_max (65536: bytes any request may carry; more is refused TOO_LARGE\n"
    "before decoding), firmware_payload_max (4259840: firmware.sign, OEM identities\n"
    "only), queue_bytes_max (100663296) and identity_bytes_max (16777216: bytes\n"
    "held by queued messages in all and per identity; beyond, BUSY),\n"
    "refusal_audit_burst (20) and refusal_audit_window_ms (10000: refusals per\n"
    "identity and code audited one by one per window; beyond, counted into one row),\n"
    "vendor_ca (DIR/pki/vendor-ca.pem: the programmer vendor CA pinned for attested\n"
    "enrollment), programmer_serials (allow-list file of vendor serials; none),\n"
    "enroll_challenge_ttl_s (120), metrics_listen (127.0.0.1:0: Prometheus /metrics\n"
    "on loopback, a free port, its URL in DIR/run/cloud.metrics; HOST:PORT to\n"
    "choose; off), sig_window_s (300: a request's or event's sent_at_ms must be\n"
    "this close to our clock, and its message id unseen within it), sig_replay_max\n"
    "(262144: message ids remembered; when full of live ids, BUSY),\n"
    "identity_queue_max (256: messages one identity may have waiting; identities\n"
    "are served round robin, so a flood waits behind itself; beyond, BUSY),\n"
    "fair_queue (1: identities served round robin, and cert.request and\n"
    "device.report received on a connection of their own; 0: one FIFO on one\n"
    "connection).\n"
    "\n"
    "SIGTERM or SIGINT: finish queued requests, disconnect, exit 0.\n"
    "SIGHUP: reopen the --log file (after logrotate moved it), reload the\n"
    "configuration's log_level and checkpoint_interval_s (other keys at the next\n"
    "start), rewrite the broker's revocation list; requests go on being served.\n"
    "Exit status: 0 clean stop, 1 could not start, 2 usage error.\n";

/* What main was told, for a reload. */
struct cloud__args {
    const char *config;   /* --config, or NULL for DIR/cloud/cloud.conf */
    const char *log_path; /* --log, or NULL for stderr */
    int level_given;      /* --log-level wins over the configuration's log_level */
};

/* The keys a reload cannot apply to a running agent (workers, queue, ids...). */
static int cloud__needs_restart(const struct cloud_config *a, const struct cloud_config *b)
{
    return a->workers != b->workers || a->queue_max != b->queue_max ||
           a->chunk_size != b->chunk_size || a->instance != b->instance ||
           a->batch_max != b->batch_max || a->n_oem_ids != b->n_oem_ids ||
           a->identity_queue_max != b->identity_queue_max || a->fair_queue != b->fair_queue ||
           a->n_station_ids != b->n_station_ids ||
           memcmp(a->oem_ids, b->oem_ids, sizeof(a->oem_ids)) != 0 ||
           memcmp(a->station_ids, b->station_ids, sizeof(a->station_ids)) != 0;
}

/*
 * SIGHUP (logrotate's postrotate): reopen the log file, read the
 * configuration again and apply what a running agent can take (log_level,
 * checkpoint_interval_s), rewrite the broker's revocation list from the
 * ledger. Never stops the agent: a bad file is reported and ignored.
 */
static void cloud__reload(struct cloud *cloud, struct cloud_ledger *ledger,
                          const struct cloud__args *a)
{
    int rc = nu_log_reopen();
    if (rc)
        nu_warn("SIGHUP: cannot reopen the log %s: %s (logging on to the old file)",
                a->log_path ? a->log_path : "-", nu_err_str(rc));
    struct cloud_config cfg;
    rc = cloud_config_load(cloud->dir, a->config, &cfg);
    if (rc) {
        nu_warn("SIGHUP: configuration not reloaded (see the error above): running on as before");
    } else {
        if (!a->level_given)
            nu_log_set_level(cfg.log_level >= 0 ? (enum nu_log_level)cfg.log_level : NU_LOG_INFO);
        cloud->cfg.checkpoint_interval_s = cfg.checkpoint_interval_s;
        if (cloud__needs_restart(&cloud->cfg, &cfg))
            nu_warn("SIGHUP: workers, queue_max, chunk_size, instance, batch_max, oem_ids and "
                    "station_ids changes take effect at the next start");
    }
    if ((rc = cloud_revoked_sync(cloud, ledger)))
        nu_warn("cannot update the broker's revocation list: %s", nu_err_str(rc));
    nu_info("SIGHUP: log reopened, configuration reloaded");
}

/* The duties of exactly one agent (cloud_leader.h), done in full when this
 * agent becomes the leader: whatever a crash left unsigned (e.g. a job closed
 * just before it), a fresh device CRL (a revocation may have been recorded
 * just before), and the broker lists a crash between a commit and the list
 * rewrite left behind. Failures only delay them: logged, never fatal. */
static void cloud__leader_lists(struct cloud *cloud, struct cloud_ledger *ledger)
{
    int rc = cloud_revoked_sync(cloud, ledger);
    if (rc)
        nu_warn("cannot update the broker's revocation list: %s", nu_err_str(rc));
    if ((rc = cloud_serials_sync(cloud, ledger)) != NU_OK)
        nu_warn("cannot update the broker's identity serial list: %s", nu_err_str(rc));
}

static void cloud__leader_duties(struct cloud *cloud, struct cloud_ledger *ledger, const char *why)
{
    cloud__leader_lists(cloud, ledger);
    (void)cloud_checkpoint(cloud, ledger, why);
    (void)cloud_device_crl_update(cloud, ledger, why);
}

/* Wait for SIGTERM/SIGINT (SIGHUP reloads); meanwhile the maintenance the
 * request path must not pay for: WAL checkpoints (workers do none), and for
 * the leader only, audit checkpoints every interval and the device CRL when
 * due; leadership is polled every second (another agent may have died). */
static int cloud__serve_until_signal(struct cloud *cloud, struct cloud_ledger *ledger,
                                     struct cloud_leader *leader, const struct cloud__args *a)
{
    uint64_t next_poll = nu_mono_ms() + 1000u;
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    uint64_t next = nu_mono_ms() + (uint64_t)cloud->cfg.checkpoint_interval_s * 1000u;
    for (;;) {
        struct timespec tick = {.tv_nsec = 250 * 1000 * 1000};
        int sig = sigtimedwait(&set, NULL, &tick);
        if (sig == SIGHUP) {
            cloud__reload(cloud, ledger, a);
            next = nu_mono_ms() + (uint64_t)cloud->cfg.checkpoint_interval_s * 1000u;
        } else if (sig > 0) {
            return sig;
        }
        int maint = cloud_ledger_maintain(ledger);
        if (maint != NU_OK && maint != NU_ERR_BUSY)
            nu_warn("ledger maintenance: %s", nu_err_str(maint));
        if (nu_mono_ms() >= next_poll) {
            int changed = 0;
            (void)cloud_leader_poll(leader, NULL, &changed);
            if (changed && cloud_leader_is_leader(leader))
                cloud__leader_duties(cloud, ledger, "leader");
            if (cloud_leader_is_leader(leader))
                cloud_lists_publish(cloud, ledger, leader);
            next_poll = nu_mono_ms() + 1000u;
        }
        if (!cloud_leader_is_leader(leader))
            goto refusals;
        if (cloud->cfg.checkpoint_interval_s && nu_mono_ms() >= next) {
            (void)cloud_checkpoint(cloud, ledger, "periodic");
            next = nu_mono_ms() + (uint64_t)cloud->cfg.checkpoint_interval_s * 1000u;
        }
        (void)cloud_device_crl_refresh(cloud, ledger); /* cheap unless due */
    refusals:
        cloud_refusals_flush(cloud, ledger, 0);
    }
}

/* on_connection (network thread): connected state and reconnects for /metrics. */
static void cloud__on_connection(struct nu_mqtt *m, int connected, void *ud)
{
    struct cloud_metrics *cm = &((struct cloud *)ud)->metrics;
    (void)m;
    if (!connected)
        __atomic_store_n(&cm->mqtt_lost, 1, __ATOMIC_RELAXED);
    else if (__atomic_exchange_n(&cm->mqtt_lost, 0, __ATOMIC_RELAXED))
        nu_metric_add(cm->mqtt_reconnects, 1, NULL);
    nu_metric_set(cm->mqtt_connected, connected ? 1 : 0, NULL);
}

/* The families of struct cloud_metrics, and the agent's version as a label. */
static int cloud__metrics_declare(struct cloud_metrics *cm)
{
    int rc = nu_metrics_new(&cm->reg);
#define CLOUD__M(kind, field, name, help, labels)                                                  \
    if (!rc)                                                                                       \
        rc = nu_metrics_##kind(cm->reg, name, help, labels, &cm->field);
    CLOUD__M(counter, issued, "nusec_cloud_certificates_issued_total",
             "Device certificates issued (new ones, not replays), by job.", "job")
    CLOUD__M(counter, refused, "nusec_cloud_certificates_refused_total",
             "cert.request refusals, by job and error code.", "job,code")
    CLOUD__M(histogram, request_s, "nusec_cloud_request_duration_seconds",
             "Requests from receipt to answer (queue wait included), by operation.", "op")
    CLOUD__M(histogram, hsm_sign_s, "nusec_cloud_hsm_sign_duration_seconds",
             "One device certificate built and signed by the Device CA key in the HSM.", NULL)
    CLOUD__M(histogram, ledger_commit_s, "nusec_cloud_ledger_commit_duration_seconds",
             "One issuance transaction of the ledger (group commit), HSM signing excluded.", NULL)
    CLOUD__M(gauge, queue_depth, "nusec_cloud_queue_depth", "Requests waiting for a worker.",
             NULL)
    CLOUD__M(gauge, workers_busy, "nusec_cloud_workers_busy", "Workers serving a request now.",
             NULL)
    CLOUD__M(counter, mqtt_reconnects, "nusec_cloud_mqtt_reconnects_total",
             "Connections to the broker made again after one was lost.", NULL)
    CLOUD__M(gauge, mqtt_connected, "nusec_cloud_mqtt_connected",
             "1 while connected to the broker.", NULL)
#undef CLOUD__M
    if (!rc)
        rc = nu_metrics_build_info(cm->reg, "nusec-cloud");
    return rc;
}

/*
 * Metrics on (cfg.metrics_listen, not "off"): declare, listen, and write the
 * URL to DIR/run/cloud.metrics (cloud-N.metrics for instance N > 1), where
 * `nusec stack up` finds it. Errors: those of nu_metrics_* and the file write.
 */
static int cloud__metrics_start(struct cloud *cloud, struct nu_metrics_http **out_http,
                                char *url_file, size_t cap)
{
    char run[4096], url[128];
    uint16_t port = 0;
    if (nu_metrics_listen_off(cloud->cfg.metrics_listen))
        return NU_OK;
    int rc = cloud__metrics_declare(&cloud->metrics);
    if (!rc)
        rc = nu_metrics_http_start(cloud->metrics.reg, cloud->cfg.metrics_listen, out_http, &port);
    if (rc) {
        nu_error("metrics: cannot serve on %s: %s", cloud->cfg.metrics_listen, nu_err_str(rc));
        return rc;
    }
    /* The URL names the address as configured, with the port bound. */
    const char *colon = strrchr(cloud->cfg.metrics_listen, ':');
    snprintf(url, sizeof(url), "http://%.*s:%u/metrics",
             (int)(colon - cloud->cfg.metrics_listen), cloud->cfg.metrics_listen, port);
    if (cloud->cfg.instance == 1)
        rc = nu_path_fmt(url_file, cap, "%s/run/cloud.metrics", cloud->dir);
    else
        rc = nu_path_fmt(url_file, cap, "%s/run/cloud-%u.metrics", cloud->dir,
                         cloud->cfg.instance);
    if (!rc)
        rc = nu_path_fmt(run, sizeof(run), "%s/run", cloud->dir);
    if (!rc)
        rc = nu_mkdirs(run, 0755);
    char line[160];
    int n = snprintf(line, sizeof(line), "%s\n", url);
    if (!rc)
        rc = nu_file_write_atomic(url_file, line, (size_t)n, 0644);
    if (rc)
        nu_error("metrics: cannot write %s: %s", url_file, nu_err_str(rc));
    else
        nu_info("metrics on %s", url);
    return rc;
}

/* The main thread's ledger connection. An unreachable database is retried
 * with backoff (a PostgreSQL failover, a server still starting); anything
 * else (credentials, schema) is final and its message names the problem. */
static int cloud__ledger_connect(struct cloud *cloud, struct cloud_ledger **out)
{
    unsigned delay_ms = 500;
    for (int attempt = 1;; attempt++) {
        int rc = cloud_ledger_connect(cloud->ledger_path, cloud->cfg.ledger_password_file,
                                      cloud->cfg.ledger_migrate, out);
        if (rc != NU_ERR_CONNECTION || attempt >= 12)
            return rc;
        nu_warn("ledger unreachable (attempt %d): retrying in %u ms", attempt, delay_ms);
        usleep(delay_ms * 1000u);
        delay_ms = delay_ms * 2 > 30000 ? 30000 : delay_ms * 2;
    }
}

static int cloud__run(struct cloud *cloud, const struct cloud__args *a)
{
    char client_id[CLOUD_ID_MAX + 16];
    int rc = cloud_keys_open(cloud);
    if (!rc) {
        int pg = strcmp(cloud->cfg.ledger, "sqlite") != 0;
        int n = pg ? snprintf(cloud->ledger_path, sizeof(cloud->ledger_path), "%s",
                              cloud->cfg.ledger)
                   : snprintf(cloud->ledger_path, sizeof(cloud->ledger_path),
                              "%s/cloud/ledger.db", cloud->dir);
        rc = (n < 0 || (size_t)n >= sizeof(cloud->ledger_path)) ? NU_ERR_TOO_LARGE : NU_OK;
    }
    /* Create the ledger (schema) before any worker races to; this
     * connection stays for the main thread's own work (checkpoints). */
    struct cloud_ledger *ledger = NULL;
    struct cloud_leader *leader = NULL;
    if (!rc)
        rc = cloud__ledger_connect(cloud, &ledger);
    if (!rc)
        rc = cloud_leader_open(cloud->ledger_path, cloud->cfg.ledger_password_file,
                               CLOUD_LEADER_LOCK_ID, &leader);
    if (!rc) /* a refused poll is "not leader now": the tick asks again */
        (void)cloud_leader_poll(leader, NULL, NULL);
    /* The lists before we serve (the broker reads them as programmers connect). */
    if (!rc && cloud_leader_is_leader(leader))
        cloud__leader_lists(cloud, ledger);
    if (!rc)
        rc = nu_envelope_sender_create(cloud->id, NU_ENVELOPE_SEQ_FROM_CLOCK, &cloud->sender);
    snprintf(client_id, sizeof(client_id), "%s:%u", cloud->id, cloud->cfg.instance);
    struct nu_client_opts co = {.dir = cloud->dir,
                                .identity = cloud->id,
                                .client_id = client_id,
                                .clean_start = 0,
                                .session_expiry_s = cloud->cfg.session_expiry_s,
                                /* started during a broker restart: wait for it */
                                .connect_wait_ms = 60000,
                                .on_connection = cloud__on_connection,
                                .userdata = cloud,
                                /* what we publish is signed in the HSM with the key
                                 * programmers pin (docs/threat-model.md) */
                                .signer = nu_hsm_key_signer(cloud->keys.package)};
    /* Before any request: enrollments must see the old list's revocations. */
    if (!rc && cloud_revoked_measurements_import(cloud, ledger))
        nu_warn("programmer firmware revoked in DIR/cloud/revoked-measurements is not in the"
                " ledger yet (enrollments are refused while it is there): retried at the next"
                " start");
    if (!rc)
        rc = nu_client_connect(&co, &cloud->mqtt);
    if (!rc)
        rc = cloud_firmware_start(cloud);
    if (!rc)
        rc = cloud_start(cloud);
    if (rc) {
        nu_error("cannot start: %s (%s)", nu_err_str(rc), nu_err_name(rc));
        cloud_leader_close(leader);
        cloud_ledger_close(ledger);
        return rc;
    }
    nu_info("serving requests as %s (%u workers)", client_id, cloud->cfg.workers);
    if (cloud_leader_is_leader(leader)) {
        (void)cloud_checkpoint(cloud, ledger, "start");
        (void)cloud_device_crl_update(cloud, ledger, "start");
    }
    int sig = cloud__serve_until_signal(cloud, ledger, leader, a);
    nu_info("signal %d: draining and stopping", sig);
    cloud_stop(cloud, ledger);
    if (cloud_leader_is_leader(leader))
        (void)cloud_checkpoint(cloud, ledger, "stop");
    cloud_leader_close(leader); /* the lock passes on now, not at our exit */
    cloud_ledger_close(ledger);
    return NU_OK;
}

int main(int argc, char **argv)
{
    const char *dir_opt = NULL;
    struct cloud__args a = {0};
    enum nu_log_level level = NU_LOG_INFO, unset = (enum nu_log_level)(NU_LOG_OFF + 1);
    enum nu_log_level given = unset;
    const struct nu_opt opts[] = {
        NU_OPT_STR("dir", &dir_opt),
        NU_OPT_STR("config", &a.config),
        NU_OPT_LOG("log-level", &given),
        NU_OPT_STR("log", &a.log_path),
    };
    const struct nu_opts_cmd cmd = {"nusec-cloud", cloud__usage, NU_OPTS_VERSION, NULL, NULL};
    int prc = nu_opts_parse(&cmd, argc, argv, opts, NU_OPTS_N(opts));
    if (prc)
        return prc < 0 ? 0 : prc;
    if (given != unset) {
        level = given;
        a.level_given = 1;
    }
    const char *dir = nu_state_dir(dir_opt);
    if (!dir || optind < argc) {
        fputs("nusec-cloud: need --dir DIR (or NUSEC_HOME) and no other arguments\n", stderr);
        return 2;
    }
    nu_log_init("nusec-cloud", level, NULL);
    if (a.log_path && nu_log_open(a.log_path) != NU_OK) {
        fprintf(stderr, "nusec-cloud: cannot open log %s\n", a.log_path);
        return 1;
    }

    /* Signals are taken by sigwait in the main thread; every thread inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGHUP);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct cloud cloud = {.dir = dir, .crl_lock = PTHREAD_MUTEX_INITIALIZER};
    struct nu_metrics_http *http = NULL;
    char url_file[4096] = "";
    snprintf(cloud.id, sizeof(cloud.id), "%s", NU_ROLE_CLOUD);
    int rc = cloud_config_load(dir, a.config, &cloud.cfg);
    if (!rc && !a.level_given && cloud.cfg.log_level >= 0)
        nu_log_set_level((enum nu_log_level)cloud.cfg.log_level);
    if (!rc)
        rc = cloud__metrics_start(&cloud, &http, url_file, sizeof(url_file));
    if (!rc)
        rc = cloud__run(&cloud, &a);
    cloud_stop(&cloud, NULL);
    cloud_firmware_stop(&cloud);
    if (cloud.mqtt) {
        nu_mqtt_disconnect(cloud.mqtt);
        nu_mqtt_destroy(cloud.mqtt);
    }
    nu_envelope_sender_destroy(cloud.sender);
    cloud_keys_close(&cloud.keys);
    nu_hsm_close(cloud.hsm);
    nu_metrics_http_stop(http);
    if (http && url_file[0])
        unlink(url_file);
    nu_metrics_free(cloud.metrics.reg);
    nu_log_close();
    return rc ? 1 : 0;
}
