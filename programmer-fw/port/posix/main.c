/*
 * nusec-programmer — the NuLink3 programmer firmware, POSIX port: the
 * portable core (programmer-fw/core) over a file KeyStore sealed under a
 * per-programmer HUK, file flash, MQTT (nu_mqtt) and simulated targets.
 */
#include "pg_core.h"
#include "pg_msg.h"
#include "pp_flash.h"
#include "pp_keystore.h"
#include "pp_port.h"
#include "tsim.h"

#include "nu_attest.h"
#include "nu_crypto.h"
#include "nu_log.h"
#include "nu_mcuboot.h"
#include "nu_mqtt.h"
#include "nu_opts.h"
#include "nu_paths.h"
#include "nu_util.h"
#include "nu_version.h"
#include "nu_x509.h"

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/ecc.h>

#define PROG "nusec-programmer"
#define PROG_VERSION "0.1.0"

enum { EXIT_USAGE = 2, EXIT_SECURE_BOOT = 3, EXIT_EXISTS = 4 };

/* The KeyStore blob where enrollment pins the OEM secure-boot key (core/pg_int.h). */
#define APP_BLOB_PIN_ROTPK "pin.rotpk"
/* A boot manifest is a 32-byte payload plus header and TLVs: far below this. */
#define APP_MANIFEST_MAX 4096u

static const char usage_text[] =
    "usage: " PROG " --dir DIR --name ID [--sockets N] [--devices N]\n"
    "                        [--flash-us-per-kib T] [--target-sync MODE]\n"
    "                        [--lease-abandon-ms MS]\n"
    "                        [--package FILE] [--enroll TOKEN] [--relay oem|STATION]\n"
    "                        [--boot-manifest FILE] [--require-secure-boot]\n"
    "                        [--log-level L] [--help] [--version]\n"
    "       " PROG " --dir DIR --name ID --factory-init --vendor-ca VDIR [--oem-anchor FILE]\n"
    "       " PROG " --dir DIR --name ID --oem-anchor FILE\n"
    "       " PROG " --vendor-ca-init VDIR\n"
    "\n"
    "The NuLink3 programmer (POSIX port). Provisions simulated target MCUs on N\n"
    "sockets from the sealed production package of its station.\n"
    "\n"
    "  --dir DIR             state directory (or $NUSEC_HOME)\n"
    "  --name ID             programmer id = its certificate CN\n"
    "  --enroll TOKEN        enroll (TOKEN '-': from $NUSEC_ENROLL_TOKEN, else the\n"
    "                        first line of stdin; out of the process list): make\n"
    "                        the identity and package keys in the\n"
    "                        KeyStore, ask the cloud for a challenge, send the CSR\n"
    "                        with the KeyStore's attestation and the boot manifest\n"
    "                        through the relay identity, store the certificate and\n"
    "                        the pinned keys, exit\n"
    "  --relay ID            who relays the enrollment: oem (default: at the OEM,\n"
    "                        before the programmer ships; DIR/pki/clients/oem.*) or\n"
    "                        a station's identity (at the CM, explicitly: station,\n"
    "                        or a site's name; DIR/pki/clients/ID.*; needs the OEM\n"
    "                        anchor pinned: the CM relays the answer)\n"
    "  --oem-anchor FILE     pin in the KeyStore, once (like a fuse), the public key\n"
    "                        the OEM's cloud signs its messages with (the OEM's\n"
    "                        pki/package-key.pem, from the OEM, never from the CM):\n"
    "                        done before the programmer ships, by its vendor\n"
    "                        (with --factory-init) or by the OEM; enrollment answers\n"
    "                        must then be signed by it. Alone: pin it, exit\n"
    "  --factory-init        programmer factory: make the vendor attestation key in\n"
    "                        the KeyStore (never exported) and store its certificate\n"
    "                        from the vendor CA of --vendor-ca VDIR; prints the\n"
    "                        vendor serial, exit\n"
    "  --vendor-ca-init VDIR create a stand-in programmer vendor CA in VDIR\n"
    "                        (vendor-ca.key, vendor-ca.pem), exit\n"
    "  --sockets N           target sockets, 1..%d (default 4)\n"
    "  --devices N           blank chips in the simulated tray DIR/targets (default 0)\n"
    "  --flash-us-per-kib T  simulated target flash time (default 0)\n"
    "  --target-sync MODE    full (default): every simulated chip's commit is\n"
    "                        synced to disk and survives a power cut of this host;\n"
    "                        none: no disk syncs, chips survive a crash of this\n"
    "                        program only (benchmarks: a real chip's NVM costs its\n"
    "                        programmer no disk flush). Default from\n"
    "                        $NUSEC_TARGET_SYNC when set\n"
    "  --lease-abandon-ms MS under an offline lease, a certificate request left\n"
    "                        unanswered while the cloud has been unreachable this\n"
    "                        long is abandoned for an offline certificate that\n"
    "                        supersedes it (default 10000; $NUSEC_LEASE_ABANDON_MS)\n"
    "  --package FILE        load this .nspkg, produce until the tray is empty or the\n"
    "                        limit is reached, exit; without it: wait for the\n"
    "                        station's package and START on nusec/v1/prog/ID/cmd\n"
    "  --boot-manifest FILE  secure boot: the MCUboot image whose payload is the\n"
    "                        SHA-256 of this binary, signed with the OEM secure-boot\n"
    "                        key (default DIR/programmers/boot-manifest.img)\n"
    "  --require-secure-boot refuse to run without a boot manifest (otherwise the\n"
    "                        check is enforced only when the manifest exists)\n"
    "  --log-level L         debug, info (default), warn, error\n"
    "  --help                this text\n"
    "  --version             the version and git revision it was built from\n"
    "\n"
    "Files: DIR/programmers/ID/{huk,keystore.bin} (sealed KeyStore),\n"
    "DIR/programmers/ID/flash/ (firmware cache), DIR/programmers/ID/identity.crt.\n"
    "\n"
    "Secure boot: before it connects, an enrolled programmer verifies the boot\n"
    "manifest against the ROTPK pinned in its KeyStore at enrollment and checks\n"
    "that its payload is SHA-256 of /proc/self/exe. Enrollment runs before a ROTPK\n"
    "is pinned, so --enroll itself is not checked.\n"
    "\n"
    "Exit status: 0 done, 1 failure (see the log), 2 usage, 3 secure boot refused,\n"
    "4 --factory-init on a programmer that is factory-initialised already.\n";

struct app {
    const char *dir;
    const char *name;
    const char *enroll_token;
    char token_buf[257]; /* --enroll -: the token read from the environment or stdin */
    const char *relay;
    const char *vendor_ca;
    const char *vendor_ca_init;
    const char *oem_anchor;
    int factory_init;
    const char *package;
    const char *boot_manifest;
    int require_secure_boot;
    int secure_boot_refused;
    unsigned sockets;
    unsigned devices;
    unsigned flash_us;
    unsigned lease_abandon_ms; /* 0: the core's default */
    int target_no_sync;
    char pdir[PATH_MAX];

    struct pp_ks *ks;
    struct pp_flash *flash;
    struct tsim_feeder *feeder;
    struct pp_target *target;
    struct nu_mqtt *mqtt;
    struct pp_transport *tp;
    struct pg_hal hal;
    struct pg_core *core;
    atomic_int reconnected; /* set on each CONNACK: the idle loop says its status again */
};

static volatile sig_atomic_t app_signalled;

/* A broker that went away published our will (OFFLINE, retained) and the
 * station believes it until we say otherwise: an idle programmer would stay
 * "offline" after a broker restart or a WAN cut and never be started. */
static void app__on_connection(struct nu_mqtt *m, int connected, void *userdata)
{
    struct app *a = userdata;
    (void)m;
    if (connected)
        atomic_store(&a->reconnected, 1);
}

static void app__on_signal(int sig)
{
    (void)sig;
    app_signalled = 1;
}

/* ---- arguments ------------------------------------------------------------------ */

/* 0: parsed; 1: --help or --version printed (exit 0); -1: usage error, printed. */
/* --enroll -: the one-time token from $NUSEC_ENROLL_TOKEN (then removed from
 * the environment), else from the first line of stdin; never from argv, which
 * any local user can read in /proc/PID/cmdline. 0, or -1 with a message. */
static int app__token_in(struct app *a)
{
    const char *env = getenv("NUSEC_ENROLL_TOKEN");
    size_t n = 0;
    if (env && *env) {
        n = strlen(env);
        if (n < sizeof(a->token_buf))
            memcpy(a->token_buf, env, n + 1);
        unsetenv("NUSEC_ENROLL_TOKEN");
    } else if (fgets(a->token_buf, sizeof(a->token_buf), stdin)) {
        a->token_buf[strcspn(a->token_buf, "\r\n")] = '\0';
        n = strlen(a->token_buf);
    }
    if (n == 0 || n >= sizeof(a->token_buf) - 1) {
        nu_zero(a->token_buf, sizeof(a->token_buf));
        fprintf(stderr, PROG ": --enroll -: no token in $NUSEC_ENROLL_TOKEN or on stdin "
                             "(or longer than 256 characters)\n");
        return -1;
    }
    a->enroll_token = a->token_buf;
    return 0;
}

static int app__args(struct app *a, int argc, char **argv)
{
    char usage[sizeof(usage_text) + 16];
    snprintf(usage, sizeof(usage), usage_text, PG_MAX_SOCKETS);
    enum nu_log_level level = NU_LOG_INFO;
    const char *sync = getenv("NUSEC_TARGET_SYNC");
    const char *abandon = getenv("NUSEC_LEASE_ABANDON_MS");
    a->sockets = 4;
    if (abandon && *abandon)
        a->lease_abandon_ms = (unsigned)strtoul(abandon, NULL, 10);
    const struct nu_opt opts[] = {
        NU_OPT_STR("dir", &a->dir),
        NU_OPT_STR("name", &a->name),
        NU_OPT_NUM("sockets", &a->sockets, 1, PG_MAX_SOCKETS),
        NU_OPT_NUM("devices", &a->devices, 0, 10000000),
        NU_OPT_NUM("flash-us-per-kib", &a->flash_us, 0, 10000000),
        NU_OPT_STR("target-sync", &sync),
        NU_OPT_NUM("lease-abandon-ms", &a->lease_abandon_ms, 0, 3600000),
        NU_OPT_STR("package", &a->package),
        NU_OPT_STR("enroll", &a->enroll_token),
        NU_OPT_LOG("log-level", &level),
        NU_OPT_STR("boot-manifest", &a->boot_manifest),
        NU_OPT_BOOL("require-secure-boot", &a->require_secure_boot),
        NU_OPT_STR("relay", &a->relay),
        NU_OPT_BOOL("factory-init", &a->factory_init),
        NU_OPT_STR("vendor-ca", &a->vendor_ca),
        NU_OPT_STR("vendor-ca-init", &a->vendor_ca_init),
        NU_OPT_STR("oem-anchor", &a->oem_anchor),
    };
    const struct nu_opts_cmd cmd = {PROG, usage, NU_OPTS_VERSION, NULL, NULL};
    int rc = nu_opts_parse(&cmd, argc, argv, opts, NU_OPTS_N(opts));
    if (rc)
        return rc < 0 ? 1 : -1;
    if (a->relay && !pg_msg_id_ok((struct pg_bytes){(const uint8_t *)a->relay, strlen(a->relay)})) {
        fprintf(stderr, PROG ": invalid option value: %s\n", a->relay);
        fputs(usage, stderr);
        return -1;
    }
    nu_log_init(PROG, level, NULL);
    if (sync && *sync && strcmp(sync, "full") != 0 && strcmp(sync, "none") != 0) {
        fprintf(stderr, PROG ": --target-sync (or NUSEC_TARGET_SYNC) must be full or none\n");
        fputs(usage, stderr);
        return -1;
    }
    a->target_no_sync = sync && strcmp(sync, "none") == 0;
    if (a->vendor_ca_init && optind == argc)
        return 0; /* needs nothing else */
    if (a->factory_init && (!a->vendor_ca || a->enroll_token)) {
        fprintf(stderr, PROG ": --factory-init needs --vendor-ca VDIR (and no --enroll)\n");
        return -1;
    }
    a->dir = nu_state_dir(a->dir);
    if (optind != argc || !a->dir || !a->name) {
        fprintf(stderr, PROG ": --dir (or NUSEC_HOME) and --name are required\n");
        fputs(usage, stderr);
        return -1;
    }
    if (a->enroll_token && !strcmp(a->enroll_token, "-") && app__token_in(a) != 0)
        return -1;
    return 0;
}

/* ---- setup ------------------------------------------------------------------------ */

static int app__open_local(struct app *a, int create)
{
    char path[PATH_MAX];
    int rc = nu_path_fmt(a->pdir, sizeof(a->pdir), "%s/programmers/%s", a->dir, a->name);
    if (rc == NU_OK)
        rc = pp_ks_open(a->pdir, a->name, create, &a->ks);
    if (rc == NU_OK)
        rc = nu_path_fmt(path, sizeof(path), "%s/flash", a->pdir);
    if (rc == NU_OK)
        rc = pp_flash_open(path, &a->flash);
    if (rc != NU_OK)
        return rc;
    a->hal = (struct pg_hal){
        .version = PG_HAL_VERSION,
        .ks = &pp_ks_ops,
        .ks_ctx = a->ks,
        .flash = &pp_flash_ops,
        .flash_ctx = a->flash,
        .cry = &pp_crypto_ops,
        .clk = &pp_clock_ops,
        .rng = &pp_rng_ops,
        .log = &pp_log_ops,
    };
    a->core = calloc(1, sizeof(*a->core));
    if (!a->core)
        return NU_ERR_NOMEM;
    struct pg_config cfg = {
        .programmer_id = a->name,
        .n_sockets = a->sockets,
        .firmware_version = PROG_VERSION,
        .lease_abandon_ms = a->lease_abandon_ms,
    };
    return pg_core_init(a->core, &a->hal, &cfg);
}

/* SHA-256 of the running binary: what the boot manifest signs (enrollment reports it). */
static int app__self_hash(uint8_t out[32])
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = nu_file_read("/proc/self/exe", NU_FILE_MAX, &buf, &len);
    if (rc == NU_OK)
        rc = nu_sha256(buf, len, out);
    free(buf);
    return rc;
}

/* ---- secure boot ------------------------------------------------------------------- */

/* img[len] must be an MCUboot image by the pinned ROTPK whose payload is self[32]. */
static int app__manifest_check(struct app *a, const uint8_t *img, size_t len,
                               const uint8_t self[32])
{
    uint8_t pub[NU_P256_PUB_LEN], rotpk_hash[NU_SHA256_LEN];
    size_t pub_len = 0;
    struct nu_mcuboot_info info;
    int rc = pg_ks_blob_get(&a->hal, APP_BLOB_PIN_ROTPK, pub, sizeof(pub), &pub_len);
    if (rc == NU_OK && pub_len != sizeof(pub))
        rc = NU_ERR_DECODE;
    if (rc != NU_OK) {
        nu_error("secure boot: no ROTPK pinned in the KeyStore: %s", nu_err_str(rc));
        return rc;
    }
    rc = nu_mcuboot_rotpk_hash(pub, rotpk_hash);
    if (rc == NU_OK)
        rc = nu_mcuboot_verify(img, len, pub, rotpk_hash, &info);
    if (rc != NU_OK) {
        nu_error("secure boot: boot manifest does not verify with the pinned ROTPK: %s",
                 nu_err_str(rc));
        return rc;
    }
    /* Verified: payload_off + payload_len lies inside img. */
    if (info.payload_len != NU_SHA256_LEN ||
        nu_memeq_ct(img + info.payload_off, self, NU_SHA256_LEN) != 0) {
        nu_error("secure boot: this binary is not the one the boot manifest signs");
        return NU_ERR_BAD_FIRMWARE;
    }
    return NU_OK;
}

/*
 * The boot step: enforced when the manifest exists, was named or is required.
 * Runs after the KeyStore is open and enrolled (the ROTPK is pinned then), before
 * any connection. Errors: BAD_FIRMWARE, BAD_SIGNATURE, DECODE, NOT_FOUND, ...
 */
static int app__secure_boot(struct app *a)
{
    char path[PATH_MAX];
    uint8_t self[32], *img = NULL;
    size_t len = 0;
    int rc = NU_OK;
    if (a->boot_manifest)
        rc = nu_path_fmt(path, sizeof(path), "%s", a->boot_manifest);
    else
        rc = nu_path_fmt(path, sizeof(path), "%s/programmers/boot-manifest.img", a->dir);
    if (rc == NU_OK)
        rc = nu_file_read(path, APP_MANIFEST_MAX, &img, &len);
    if (rc == NU_ERR_NOT_FOUND && !a->boot_manifest && !a->require_secure_boot) {
        nu_warn("secure boot not enforced: no boot manifest %s", path);
        return NU_OK;
    }
    if (rc != NU_OK)
        nu_error("secure boot: boot manifest %s: %s", path, nu_err_str(rc));
    if (rc == NU_OK)
        rc = app__self_hash(self);
    if (rc == NU_OK)
        rc = app__manifest_check(a, img, len, self);
    free(img);
    if (rc == NU_OK)
        nu_info("secure boot: binary verified against %s", path);
    return rc;
}

/* The identity key signs bus messages through the KeyStore's HAL op: it never
 * leaves the KeyStore for this (nu_msgsig.h). */
static int app__sign_ks(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    const struct app *a = ctx;
    return pg_ks_sign(&a->hal, PG_KEY_IDENTITY, digest, sig, sig_len);
}

/* Every message of the session is signed end to end: with the KeyStore's
 * identity key, or a relay's (OEM / station) key file. */
static int app__signer(struct app *a, const struct nu_mqtt_opts *o)
{
    if (o->key_pem) {
        struct nu_signer s = {.ctx = a, .sign_digest = app__sign_ks};
        return nu_mqtt_set_signer(a->mqtt, &s);
    }
    struct nu_p256_key *k = NULL;
    int rc = nu_p256_key_load_pem(o->key_file, &k);
    return rc == NU_OK ? nu_mqtt_sign_with_key(a->mqtt, k) : rc;
}

static int app__mqtt(struct app *a, const struct nu_mqtt_opts *base)
{
    char endpoint_path[PATH_MAX], ca[PATH_MAX], host[256];
    uint8_t *ep = NULL;
    size_t ep_len = 0;
    struct nu_mqtt_opts o = *base;
    int rc = nu_paths_get(a->dir, NU_PATH_BROKER_ENDPOINT, endpoint_path, sizeof(endpoint_path));
    if (rc == NU_OK)
        rc = nu_paths_get(a->dir, NU_PATH_CHAIN, ca, sizeof(ca));
    if (rc == NU_OK)
        rc = nu_file_read(endpoint_path, 1024, &ep, &ep_len);
    if (rc == NU_OK)
        rc = nu_mqtt_endpoint_parse((const char *)ep, host, sizeof(host), &o.port);
    free(ep);
    if (rc != NU_OK) {
        nu_error("broker endpoint %s: %s", endpoint_path, nu_err_str(rc));
        return rc;
    }
    o.host = host;
    o.ca_file = ca;
    rc = nu_mqtt_create(&o, &a->mqtt);
    if (rc == NU_OK)
        rc = app__signer(a, &o);
    if (rc == NU_OK)
        rc = nu_mqtt_connect(a->mqtt, 0);
    if (rc == NU_OK)
        rc = pp_transport_create(a->mqtt, &a->tp);
    if (rc != NU_OK) {
        nu_error("broker: %s", nu_err_str(rc));
        return rc;
    }
    a->hal.tp = &pp_transport_ops;
    a->hal.tp_ctx = a->tp;
    return NU_OK;
}

/* ---- enrollment -------------------------------------------------------------------- */

/* The boot manifest (optional here: without one the cloud refuses with
 * MEASUREMENT, which says more than a local error). */
static int app__manifest_read(struct app *a, uint8_t **out, size_t *out_len)
{
    char path[PATH_MAX];
    int rc = a->boot_manifest
                 ? nu_path_fmt(path, sizeof(path), "%s", a->boot_manifest)
                 : nu_path_fmt(path, sizeof(path), "%s/programmers/boot-manifest.img", a->dir);
    if (rc == NU_OK)
        rc = nu_file_read(path, APP_MANIFEST_MAX, out, out_len);
    if (rc == NU_ERR_NOT_FOUND && !a->boot_manifest) {
        nu_warn("no boot manifest %s: the cloud will not approve this firmware", path);
        *out = NULL;
        *out_len = 0;
        return NU_OK;
    }
    if (rc != NU_OK)
        nu_error("boot manifest %s: %s", path, nu_err_str(rc));
    return rc;
}

static int app__enroll(struct app *a)
{
    char cert[PATH_MAX], key[PATH_MAX], client_id[128];
    uint8_t self[32], *manifest = NULL;
    size_t manifest_len = 0;
    const char *relay = a->relay ? a->relay : "oem";
    /* At the CM the station relays the answer that pins our keys: only an
     * answer signed by the OEM anchor may be taken (docs/threat-model.md). */
    if (strcmp(relay, "oem") != 0 && !pg_core_anchored(a->core)) {
        fprintf(stderr, PROG ": a %s-relayed enrollment needs --oem-anchor first\n", relay);
        return NU_ERR_NOT_AUTHORIZED;
    }
    int rc = nu_paths_client_cert(a->dir, relay, cert, sizeof(cert));
    if (rc == NU_OK)
        rc = nu_paths_client_key(a->dir, relay, key, sizeof(key));
    if (rc == NU_OK)
        rc = nu_path_fmt(client_id, sizeof(client_id), "%s:enroll-%s", relay, a->name);
    if (rc == NU_OK)
        rc = app__self_hash(self);
    if (rc == NU_OK)
        rc = app__manifest_read(a, &manifest, &manifest_len);
    if (rc != NU_OK)
        return rc;
    /* The relay's identity: a separate, clean session of it. */
    struct nu_mqtt_opts o = {
        .cert_file = cert,
        .key_file = key,
        .client_id = client_id,
        .clean_start = 1,
    };
    if ((rc = app__mqtt(a, &o)) != NU_OK) {
        free(manifest);
        return rc;
    }
    rc = pg_core_enroll(a->core, relay, a->enroll_token, self, manifest, manifest_len);
    nu_zero(a->token_buf, sizeof(a->token_buf)); /* used once, either way */
    free(manifest);
    if (rc == NU_OK)
        fprintf(stderr, PROG ": %s enrolled\n", a->name);
    else
        fprintf(stderr, PROG ": enrollment of %s failed: %s\n", a->name, nu_err_str(rc));
    return rc;
}

/* ---- the OEM anchor ------------------------------------------------------------------ */

/* Pin the OEM cloud's signing key from a PEM public key file (write-once). */
static int app__anchor(struct app *a)
{
    uint8_t *pem = NULL, pub[NU_P256_PUB_LEN];
    size_t len = 0;
    int rc = nu_file_read(a->oem_anchor, 64 * 1024, &pem, &len);
    if (rc == NU_OK)
        rc = nu_p256_pub_from_pem((const char *)pem, len, pub);
    free(pem);
    if (rc == NU_OK)
        rc = pg_core_anchor_set(a->core, pub);
    if (rc == NU_ERR_EXISTS)
        fprintf(stderr, PROG ": %s has another OEM anchor pinned already\n", a->name);
    else if (rc != NU_OK)
        fprintf(stderr, PROG ": OEM anchor %s: %s\n", a->oem_anchor, nu_err_str(rc));
    return rc;
}

/* ---- programmer factory ------------------------------------------------------------ */

/*
 * What the programmer vendor's factory does once per programmer: the
 * attestation key is made inside the KeyStore, its public half certified by
 * the vendor CA (here a stand-in directory the OEM does not hold), and the
 * certificate and vendor serial stored back in the KeyStore. The certificate
 * (public) is also written to DIR/programmers/ID/attestation.crt.
 */
static int app__factory_init(struct app *a)
{
    char serial[NU_ATTEST_SERIAL_MAX + 1], path[PATH_MAX];
    uint8_t pub[NU_P256_PUB_LEN], *der = NULL;
    char *pem = NULL;
    size_t der_len = 0, pem_len = 0;
    int rc = pp_ks_attest_key_create(a->ks, pub);
    if (rc == NU_ERR_EXISTS && pp_ks_attest_serial(a->ks, serial, sizeof(serial)) == NU_OK) {
        fprintf(stderr, PROG ": %s is factory-initialised already (serial %s)\n", a->name, serial);
        return NU_ERR_EXISTS;
    }
    if (rc == NU_ERR_EXISTS)
        rc = NU_OK; /* an interrupted factory step: certify the key we have */
    if (rc == NU_OK)
        rc = nu_attest_vendor_issue(a->vendor_ca, pub, serial, &der, &der_len);
    if (rc == NU_OK)
        rc = pp_ks_attest_cert_set(a->ks, serial, der, der_len);
    if (rc == NU_OK)
        rc = nu_x509_der_to_pem(der, der_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (rc == NU_OK)
        rc = nu_path_fmt(path, sizeof(path), "%s/attestation.crt", a->pdir);
    if (rc == NU_OK)
        rc = nu_file_write_atomic(path, pem, pem_len, 0644);
    free(pem);
    free(der);
    if (rc == NU_OK)
        printf("%s\n", serial);
    else
        fprintf(stderr, PROG ": factory init of %s failed: %s\n", a->name, nu_err_str(rc));
    return rc;
}

/* ---- production -------------------------------------------------------------------- */

struct app__worker {
    struct app *a;
    unsigned sock;
    pthread_t tid;
    atomic_int ended;
};

static void *app__worker_main(void *arg)
{
    struct app__worker *w = arg;
    struct pg_result r;
    while (pg_socket_run(w->a->core, w->sock, &r) == NU_OK) {
        if (app_signalled)
            pg_core_stop(w->a->core, PG_STOP_SHUTDOWN);
    }
    wc_ecc_fp_free(); /* wolfSSL's per-thread ECC cache (nu_x509.h) */
    atomic_store(&w->ended, 1);
    return NULL;
}

/* Trouble on the cloud's side or on the bus: the same download may work later.
 * Not NOT_FOUND: here it cannot be told from the cloud's "no such job" (the
 * core already retries "no subscriber" a few times). */
static int app__transient(int rc)
{
    return rc == NU_ERR_TIMEOUT || rc == NU_ERR_CONNECTION || rc == NU_ERR_MQTT ||
           rc == NU_ERR_BUSY || rc == NU_ERR_IO || rc == NU_ERR_DB || rc == NU_ERR_HSM;
}

/* The firmware download waits for a cloud in trouble (it resumes where it
 * stopped) instead of giving up the START; a STOP or a signal ends the wait. */
static int app__firmware(struct app *a)
{
    unsigned delay_ms = 250;
    for (;;) {
        int rc = pg_core_firmware_fetch(a->core);
        if (!app__transient(rc) || app_signalled)
            return rc;
        nu_warn("firmware download: %s; waiting for the cloud (%u ms)", nu_err_name(rc),
                delay_ms);
        if (delay_ms == 250) /* the station sees the job while we wait */
            pg_core_status_publish(a->core, PG_PROG_IDLE);
        for (unsigned waited = 0; waited < delay_ms; waited += 100) {
            int action = 0;
            pg_core_poll(a->core, &action);
            if (action == PG_ACTION_STOP || app_signalled)
                return rc;
            usleep(100 * 1000);
        }
        delay_ms = delay_ms * 2 < 4000 ? delay_ms * 2 : 4000;
    }
}

static int app__produce(struct app *a)
{
    static const char *const reasons[] = {"none",          "tray empty",      "stopped",
                                          "limit reached", "quota exhausted", "job not active",
                                          "error",         "shutting down"};
    int rc = app__firmware(a);
    if (rc == NU_OK)
        rc = pg_core_production_begin(a->core);
    if (rc != NU_OK) {
        nu_error("production not started: %s", nu_err_str(rc));
        pg_core_status_publish(a->core, PG_PROG_IDLE);
        return rc;
    }
    struct app__worker w[PG_MAX_SOCKETS];
    uint64_t t0 = nu_mono_ms();
    unsigned started = 0;
    for (unsigned i = 0; i < a->sockets; i++) {
        w[i] = (struct app__worker){.a = a, .sock = i};
        if (pthread_create(&w[i].tid, NULL, app__worker_main, &w[i]) != 0)
            break;
        started++;
    }
    if (started < a->sockets)
        pg_core_stop(a->core, PG_STOP_ERROR);
    /* Meanwhile the offline certificates go up, even while every socket
     * holds a request that waits for what their upload refunds. */
    for (unsigned i = 0; i < started; i++) {
        for (unsigned tick = 1; !atomic_load(&w[i].ended); tick++) {
            /* A signal stops the line here too: a worker sees it only
             * between chips, and one that holds a chip for the cloud (or a
             * full disk) would keep the program up until `stack down`
             * SIGKILLs it and its reserved units with it. */
            if (app_signalled)
                pg_core_stop(a->core, PG_STOP_SHUTDOWN);
            if (tick % 10 == 0)
                pg_core_lease_sync(a->core);
            usleep(100 * 1000);
        }
        pthread_join(w[i].tid, NULL);
    }
    enum pg_stop why = pg_core_production_end(a->core);
    uint32_t done = 0, failed = 0;
    pg_core_counts(a->core, &done, &failed);
    double s = (double)(nu_mono_ms() - t0) / 1000.0;
    nu_info("production ended (%s): %u provisioned, %u failed in %.2f s (%.1f devices/s)",
            reasons[why], done, failed, s, s > 0 ? done / s : 0.0);
    return why == PG_STOP_ERROR ? NU_ERR_INTERNAL : NU_OK;
}

static int app__package_file(struct app *a)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = nu_file_read(a->package, PG_PACKAGE_MAX, &buf, &len);
    if (rc == NU_OK)
        rc = pg_core_package_load(a->core, buf, len);
    free(buf);
    if (rc != NU_OK)
        nu_error("package %s refused: %s", a->package, nu_err_str(rc));
    return rc;
}

static int app__run(struct app *a)
{
    char cert_path[PATH_MAX], topic[160], targets[PATH_MAX];
    uint8_t der[NU_X509_CERT_MAX], will[512];
    char pem_key[NU_P256_PRIV_PEM_MAX];
    char *pem = NULL;
    size_t der_len = 0, pem_len = 0, key_len = 0, will_len = 0;
    if (!pg_core_enrolled(a->core)) {
        nu_error("%s is not enrolled (run with --enroll TOKEN first)", a->name);
        return NU_ERR_STATE;
    }
    int sb = app__secure_boot(a);
    if (sb != NU_OK) {
        fprintf(stderr, PROG ": secure boot refused to run %s: %s\n", a->name, nu_err_str(sb));
        a->secure_boot_refused = 1;
        return sb;
    }
    /* The certificate is public: a file. The key goes to TLS in memory only. */
    int rc = pg_core_identity_cert(a->core, der, sizeof(der), &der_len);
    if (rc == NU_OK)
        rc = nu_x509_der_to_pem(der, der_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (rc == NU_OK)
        rc = nu_path_fmt(cert_path, sizeof(cert_path), "%s/identity.crt", a->pdir);
    if (rc == NU_OK)
        rc = nu_file_write_atomic(cert_path, pem, pem_len, 0644);
    free(pem);
    if (rc == NU_OK)
        rc = pp_ks_identity_pem_for_tls(a->ks, pem_key, sizeof(pem_key), &key_len);
    if (rc == NU_OK)
        rc = pg_core_topic_status(a->core, topic, sizeof(topic));
    if (rc == NU_OK)
        rc = pg_core_status_encode(a->core, PG_PROG_OFFLINE, will, sizeof(will), &will_len);
    if (rc == NU_OK) {
        struct nu_mqtt_opts o = {
            .cert_file = cert_path,
            .key_pem = pem_key,
            .key_pem_len = key_len,
            .client_id = a->name,
            .will = {.topic = topic, .payload = will, .len = will_len, .qos = 1, .retain = 1},
            .on_connection = app__on_connection,
            .userdata = a,
        };
        rc = app__mqtt(a, &o);
    }
    nu_zero(pem_key, sizeof(pem_key));
    if (rc == NU_OK)
        rc = nu_paths_get(a->dir, NU_PATH_TARGETS, targets, sizeof(targets));
    struct tsim_opts topts = {.flash_us_per_kib = a->flash_us, .no_sync = a->target_no_sync};
    if (a->target_no_sync)
        nu_info("simulated targets: no disk syncs (they survive a crash of this program only)");
    if (rc == NU_OK)
        rc = tsim_feeder_create(targets, a->devices, &topts, &a->feeder);
    if (rc == NU_OK)
        rc = pp_target_create(a->feeder, a->sockets, &a->target);
    if (rc == NU_OK) /* chips a crash or a stop left in the sockets are finished first */
        rc = pp_target_restore(a->target, a->pdir, targets);
    if (rc != NU_OK)
        return rc;
    a->hal.tgt = &pp_target_ops;
    a->hal.tgt_ctx = a->target;
    pg_core_subscribe(a->core);
    pg_core_status_publish(a->core, PG_PROG_IDLE);

    if (a->package) {
        rc = app__package_file(a);
        if (rc == NU_OK)
            rc = app__produce(a);
    } else {
        nu_info("%s waiting for the station on nusec/v1/prog/%s/cmd", a->name, a->name);
        for (unsigned tick = 0; !app_signalled; tick++) {
            int action = 0;
            pg_core_poll(a->core, &action);
            if (action == PG_ACTION_START)
                app__produce(a);
            else if (atomic_exchange(&a->reconnected, 0))
                pg_core_status_publish(a->core, PG_PROG_IDLE);
            else if (tick % 30 == 0) /* reports a crash left unconfirmed, every 3 s */
                pg_core_journal_flush(a->core);
            usleep(100 * 1000);
        }
        rc = NU_OK;
    }
    /* A clean disconnect drops the will: say OFFLINE ourselves. */
    pg_core_status_publish(a->core, PG_PROG_OFFLINE);
    return rc;
}

static void app__close(struct app *a)
{
    nu_mqtt_destroy(a->mqtt);
    pp_transport_destroy(a->tp);
    pp_target_destroy(a->target);
    tsim_feeder_destroy(a->feeder);
    if (a->core) {
        pg_core_deinit(a->core);
        free(a->core);
    }
    pp_flash_close(a->flash);
    pp_ks_close(a->ks);
}

int main(int argc, char **argv)
{
    struct app a;
    memset(&a, 0, sizeof(a));
    int arc = app__args(&a, argc, argv);
    if (arc)
        return arc < 0 ? EXIT_USAGE : 0;
    struct sigaction sa = {.sa_handler = app__on_signal};
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    if (a.vendor_ca_init) {
        int vrc = nu_attest_vendor_ca_init(a.vendor_ca_init);
        if (vrc != NU_OK)
            fprintf(stderr, PROG ": vendor CA in %s: %s\n", a.vendor_ca_init, nu_err_str(vrc));
        return vrc == NU_OK ? 0 : 1;
    }
    int rc = app__open_local(&a, a.enroll_token != NULL || a.factory_init || a.oem_anchor);
    if (rc == NU_ERR_NOT_FOUND && !a.enroll_token)
        nu_error("no KeyStore for %s in %s: enroll it first (--enroll TOKEN)", a.name, a.dir);
    else if (rc != NU_OK)
        nu_error("KeyStore of %s: %s", a.name, nu_err_str(rc));
    /* The boot stage's measurement register: what runs is what is attested. */
    uint8_t self[32];
    if (rc == NU_OK && (rc = app__self_hash(self)) == NU_OK)
        rc = pp_ks_set_measurement(a.ks, self);
    if (rc == NU_OK && a.oem_anchor)
        rc = app__anchor(&a);
    if (rc == NU_OK && a.oem_anchor && !a.factory_init && !a.enroll_token)
        printf("%s: OEM anchor pinned\n", a.name);
    else if (rc == NU_OK)
        rc = a.factory_init   ? app__factory_init(&a)
             : a.enroll_token ? app__enroll(&a)
                              : app__run(&a);
    app__close(&a);
    wc_ecc_fp_free();
    if (a.secure_boot_refused)
        return EXIT_SECURE_BOOT;
    if (a.factory_init && rc == NU_ERR_EXISTS)
        return EXIT_EXISTS;
    return rc == NU_OK ? 0 : 1;
}
