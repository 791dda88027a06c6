/* nusec-cloud — the OEM cloud agent. */
#include "cloud.h"

#include "nu_client.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_pki.h"
#include "nu_util.h"

#include <getopt.h>
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
    "  --log-level LEVEL  debug, info, warn, error (default info)\n"
    "  --log FILE         append the log to FILE instead of stderr\n"
    "  -h, --help         this text\n"
    "\n"
    "Configuration keys (key = value): workers (4), queue_max (4096), chunk_size\n"
    "(16384), instance (1), batch_max (32: cert.requests one worker commits at once;\n"
    "1 = one transaction each), checkpoint_interval_s (300: the audit chain's head\n"
    "is signed in the HSM this often, and at start, stop and job close; 0 = only\n"
    "then), oem_ids (oem), station_ids (station), log_level, session_expiry_s (90,\n"
    "10..86400: how long the broker keeps this agent's MQTT session, and queues\n"
    "its share of $share requests, after it dies; short so a dead agent does not\n"
    "swallow requests for long, long enough to resume after a quick restart), vendor_ca\n"
    "(DIR/pki/vendor-ca.pem: the programmer vendor CA pinned for attested\n"
    "enrollment), programmer_serials (allow-list file of vendor serials; none),\n"
    "enroll_challenge_ttl_s (120).\n"
    "\n"
    "SIGTERM or SIGINT: finish queued requests, disconnect, exit 0.\n"
    "Exit status: 0 clean stop, 1 could not start, 2 usage error.\n";

/* Wait for SIGTERM/SIGINT; meanwhile the maintenance the request path must
 * not pay for: WAL checkpoints (workers do none), audit checkpoints every
 * interval, the device CRL when due. */
static int cloud__serve_until_signal(struct cloud *cloud, struct cloud_ledger *ledger)
{
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    uint64_t interval_ms = (uint64_t)cloud->cfg.checkpoint_interval_s * 1000u;
    uint64_t next = nu_mono_ms() + interval_ms;
    for (;;) {
        struct timespec tick = {.tv_nsec = 250 * 1000 * 1000};
        int sig = sigtimedwait(&set, NULL, &tick);
        if (sig > 0)
            return sig;
        int wal = cloud_ledger_wal_checkpoint(ledger);
        if (wal != NU_OK && wal != NU_ERR_BUSY)
            nu_warn("WAL checkpoint: %s", nu_err_str(wal));
        if (interval_ms && nu_mono_ms() >= next) {
            (void)cloud_checkpoint(cloud, ledger, "periodic");
            next = nu_mono_ms() + interval_ms;
        }
        (void)cloud_device_crl_refresh(cloud, ledger); /* cheap unless due */
    }
}

static int cloud__run(struct cloud *cloud)
{
    char client_id[CLOUD_ID_MAX + 16];
    int rc = cloud_keys_open(cloud);
    if (!rc) {
        int n = snprintf(cloud->ledger_path, sizeof(cloud->ledger_path), "%s/cloud/ledger.db",
                         cloud->dir);
        rc = (n < 0 || (size_t)n >= sizeof(cloud->ledger_path)) ? NU_ERR_TOO_LARGE : NU_OK;
    }
    /* Create the ledger (schema) before any worker races to; this
     * connection stays for the main thread's own work (checkpoints). */
    struct cloud_ledger *ledger = NULL;
    if (!rc && !(rc = cloud_ledger_open(cloud->ledger_path, &ledger))) {
        /* A crash between a revocation's commit and the broker list rewrite
         * is repaired here; a failure only delays it, so it does not stop us. */
        int sync = cloud_revoked_sync(cloud, ledger);
        if (sync)
            nu_warn("cannot update the broker's revocation list: %s", nu_err_str(sync));
        if ((sync = cloud_serials_sync(cloud, ledger)) != NU_OK)
            nu_warn("cannot update the broker's identity serial list: %s", nu_err_str(sync));
    }
    if (!rc)
        rc = nu_envelope_sender_create(cloud->id, NU_ENVELOPE_SEQ_FROM_CLOCK, &cloud->sender);
    snprintf(client_id, sizeof(client_id), "%s:%u", cloud->id, cloud->cfg.instance);
    struct nu_client_opts co = {.dir = cloud->dir,
                                .identity = cloud->id,
                                .client_id = client_id,
                                .clean_start = 0,
                                .session_expiry_s = cloud->cfg.session_expiry_s,
                                /* started during a broker restart: wait for it */
                                .connect_wait_ms = 60000};
    if (!rc)
        rc = nu_client_connect(&co, &cloud->mqtt);
    if (!rc)
        rc = cloud_firmware_start(cloud);
    if (!rc)
        rc = cloud_start(cloud);
    if (rc) {
        nu_error("cannot start: %s (%s)", nu_err_str(rc), nu_err_name(rc));
        cloud_ledger_close(ledger);
        return rc;
    }
    nu_info("serving requests as %s (%u workers)", client_id, cloud->cfg.workers);
    /* Whatever a crash left unsigned (e.g. a job closed just before it), and
     * a fresh device CRL (a revocation may have been recorded just before). */
    (void)cloud_checkpoint(cloud, ledger, "start");
    (void)cloud_device_crl_update(cloud, ledger, "start");
    int sig = cloud__serve_until_signal(cloud, ledger);
    nu_info("signal %d: draining and stopping", sig);
    cloud_stop(cloud);
    (void)cloud_checkpoint(cloud, ledger, "stop");
    cloud_ledger_close(ledger);
    return NU_OK;
}

int main(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"config", required_argument, NULL, 'c'},
        {"log-level", required_argument, NULL, 'l'},
        {"log", required_argument, NULL, 'L'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dir_opt = NULL, *config = NULL, *log_path = NULL;
    enum nu_log_level level = NU_LOG_INFO;
    int c;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dir_opt = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case 'L':
            log_path = optarg;
            break;
        case 'l':
            if (nu_log_level_parse(optarg, &level)) {
                fprintf(stderr, "nusec-cloud: bad --log-level '%s'\n", optarg);
                return 2;
            }
            break;
        case 'h':
            fputs(cloud__usage, stdout);
            return 0;
        default:
            fputs(cloud__usage, stderr);
            return 2;
        }
    }
    const char *dir = nu_state_dir(dir_opt);
    if (!dir || optind < argc) {
        fputs("nusec-cloud: need --dir DIR (or NUSEC_HOME) and no other arguments\n", stderr);
        return 2;
    }
    FILE *log = log_path ? fopen(log_path, "a") : NULL;
    if (log_path && !log) {
        fprintf(stderr, "nusec-cloud: cannot open log %s\n", log_path);
        return 1;
    }
    nu_log_init("nusec-cloud", level, log);

    /* Signals are taken by sigwait in the main thread; every thread inherits the mask. */
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGTERM);
    sigaddset(&set, SIGINT);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    struct cloud cloud = {.dir = dir, .crl_lock = PTHREAD_MUTEX_INITIALIZER};
    snprintf(cloud.id, sizeof(cloud.id), "%s", NU_ROLE_CLOUD);
    int rc = cloud_config_load(dir, config, &cloud.cfg);
    if (!rc)
        rc = cloud__run(&cloud);
    cloud_stop(&cloud);
    cloud_firmware_stop(&cloud);
    if (cloud.mqtt) {
        nu_mqtt_disconnect(cloud.mqtt);
        nu_mqtt_destroy(cloud.mqtt);
    }
    nu_envelope_sender_destroy(cloud.sender);
    cloud_keys_close(&cloud.keys);
    nu_hsm_close(cloud.hsm);
    if (log)
        fclose(log);
    return rc ? 1 : 0;
}
