/* nusec-cloud configuration and HSM keys. */
#include "cloud.h"

#include "nu_config.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_hsm.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

static const char *const cloud__config_keys[] = {
    "workers",     "queue_max", "chunk_size",
    "instance",    "batch_max", "oem_ids",
    "station_ids", "log_level", "checkpoint_interval_s",
    "session_expiry_s", "payload_max", "firmware_payload_max", "queue_bytes_max",
    "identity_bytes_max", "refusal_audit_burst", "refusal_audit_window_ms",
    "vendor_ca",   "programmer_serials", "enroll_challenge_ttl_s",
    "metrics_listen",
    "ledger",      "ledger_password_file", "ledger_migrate",
    "sig_window_s", "sig_replay_max",
    "identity_queue_max", "fair_queue",
    NULL,
};

/* "a, b,c" -> ids[]; each a valid identity. */
static int cloud__parse_ids(const char *text, char ids[][CLOUD_ID_MAX + 1], size_t *out_n)
{
    size_t n = 0;
    const char *p = text;
    while (*p) {
        while (*p == ' ' || *p == ',')
            p++;
        size_t len = strcspn(p, " ,");
        if (!len)
            break;
        if (n == CLOUD_ROLE_IDS_MAX || len > CLOUD_ID_MAX)
            return NU_ERR_CONFIG;
        memcpy(ids[n], p, len);
        ids[n][len] = 0;
        if (nu_envelope_id_check(ids[n]))
            return NU_ERR_CONFIG;
        n++;
        p += len;
    }
    *out_n = n;
    return NU_OK;
}

/* vendor_ca (default DIR/pki/vendor-ca.pem) and programmer_serials (none). */
static int cloud__attest_config(const struct nu_config *cfg, const char *dir,
                                struct cloud_config *out, char *err, size_t err_cap)
{
    const char *ca = nu_config_get_str(cfg, "vendor_ca", NULL);
    const char *serials = nu_config_get_str(cfg, "programmer_serials", "");
    int rc = ca ? nu_path_fmt(out->vendor_ca, sizeof(out->vendor_ca), "%s", ca)
                : nu_path_fmt(out->vendor_ca, sizeof(out->vendor_ca), "%s/pki/vendor-ca.pem", dir);
    if (!rc)
        rc = nu_path_fmt(out->programmer_serials, sizeof(out->programmer_serials), "%s", serials);
    if (rc)
        snprintf(err, err_cap, "vendor_ca / programmer_serials: path too long");
    return rc ? NU_ERR_CONFIG : NU_OK;
}

/* ledger = sqlite | postgresql://...; never a password in cloud.conf. */
static int cloud__ledger_config(const struct nu_config *cfg, struct cloud_config *out, char *err,
                                size_t cap)
{
    const char *ledger = nu_config_get_str(cfg, "ledger", "sqlite");
    const char *pw = nu_config_get_str(cfg, "ledger_password_file", "");
    int migrate = 0;

    if (strcmp(ledger, "sqlite") != 0 && strncmp(ledger, "postgresql://", 13) != 0 &&
        strncmp(ledger, "postgres://", 11) != 0) {
        snprintf(err, cap, "ledger: 'sqlite' or a postgresql:// URI, not '%s'", ledger);
        return NU_ERR_CONFIG;
    }
    if (strlen(ledger) >= sizeof(out->ledger) || strlen(pw) >= sizeof(out->ledger_password_file)) {
        snprintf(err, cap, "ledger: value too long");
        return NU_ERR_CONFIG;
    }
    if (nu_config_get_bool(cfg, "ledger_migrate", 0, &migrate, err, cap))
        return NU_ERR_CONFIG;
    snprintf(out->ledger, sizeof(out->ledger), "%s", ledger);
    snprintf(out->ledger_password_file, sizeof(out->ledger_password_file), "%s", pw);
    out->ledger_migrate = migrate;
    return NU_OK;
}

int cloud_config_load(const char *dir, const char *path, struct cloud_config *out)
{
    char default_path[PATH_MAX], err[256] = "";
    struct nu_config *cfg = NULL;
    int64_t v;
    *out = (struct cloud_config){0};
    if (!path) {
        int rc = nu_path_fmt(default_path, sizeof(default_path), "%s/cloud/cloud.conf", dir);
        if (rc)
            return rc;
        path = nu_path_exists(default_path) ? default_path : NULL;
    }
    {
        /* No file: an empty configuration, so every key takes its default. */
        int rc = path ? nu_config_load(path, &cfg, err, sizeof(err))
                      : nu_config_parse_buffer("defaults", "", 0, &cfg, err, sizeof(err));
        if (!rc) {
            const char *bad = NULL;
            rc = nu_config_check_keys(cfg, cloud__config_keys, &bad, err, sizeof(err));
        }
        if (rc) {
            nu_error("%s", err);
            nu_config_destroy(cfg);
            return NU_ERR_CONFIG;
        }
    }
    int rc = NU_OK;
#define CLOUD__INT(key, def, min, max, field)                                                      \
    if (!rc && !(rc = nu_config_get_int(cfg, key, def, min, max, &v, err, sizeof(err))))           \
        out->field = (unsigned)v;
    CLOUD__INT("workers", 4, 1, 64, workers)
    CLOUD__INT("queue_max", 4096, 16, 1000000, queue_max)
    CLOUD__INT("chunk_size", 16384, 1024, 16384, chunk_size)
    CLOUD__INT("instance", 1, 1, 9999, instance)
    CLOUD__INT("batch_max", 32, 1, 256, batch_max)
    CLOUD__INT("checkpoint_interval_s", 300, 0, 86400, checkpoint_interval_s)
    CLOUD__INT("session_expiry_s", 90, 10, 86400, session_expiry_s)
    CLOUD__INT("payload_max", 64 * 1024, 4096, NU_ENVELOPE_MAX, payload_max)
    CLOUD__INT("firmware_payload_max", NU_ENVELOPE_MAX, 64 * 1024, NU_ENVELOPE_MAX,
               firmware_payload_max)
    /* Room for at least two firmware.sign requests, so one OEM upload never
     * meets BUSY on an otherwise idle cloud. */
    CLOUD__INT("queue_bytes_max", 96 * 1024 * 1024, 2 * NU_ENVELOPE_MAX + 65536,
               1024 * 1024 * 1024, queue_bytes_max)
    CLOUD__INT("identity_bytes_max", 16 * 1024 * 1024, 2 * NU_ENVELOPE_MAX + 65536,
               1024 * 1024 * 1024, identity_bytes_max)
    CLOUD__INT("refusal_audit_burst", 20, 1, 1000000, refusal_audit_burst)
    CLOUD__INT("refusal_audit_window_ms", 10000, 100, 3600 * 1000, refusal_audit_window_ms)
    CLOUD__INT("enroll_challenge_ttl_s", 120, 1, 3600, challenge_ttl_s)
    CLOUD__INT("sig_window_s", 300, 1, 86400, sig_window_s)
    CLOUD__INT("sig_replay_max", 1 << 18, 1024, 1 << 24, sig_replay_max)
    CLOUD__INT("identity_queue_max", 256, 1, 1000000, identity_queue_max)
    CLOUD__INT("fair_queue", 1, 0, 1, fair_queue)
#undef CLOUD__INT
    if (!rc &&
        cloud__parse_ids(nu_config_get_str(cfg, "oem_ids", "oem"), out->oem_ids, &out->n_oem_ids))
        rc = NU_ERR_CONFIG, snprintf(err, sizeof(err), "oem_ids: not a list of identities");
    if (!rc && cloud__parse_ids(nu_config_get_str(cfg, "station_ids", "station"), out->station_ids,
                                &out->n_station_ids))
        rc = NU_ERR_CONFIG, snprintf(err, sizeof(err), "station_ids: not a list of identities");
    if (!rc)
        rc = cloud__attest_config(cfg, dir, out, err, sizeof(err));
    out->log_level = -1;
    const char *level = nu_config_get_str(cfg, "log_level", NULL);
    enum nu_log_level lv;
    if (!rc && level && nu_log_level_parse(level, &lv))
        rc = NU_ERR_CONFIG, snprintf(err, sizeof(err), "log_level: debug, info, warn or error");
    else if (!rc && level)
        out->log_level = (int)lv;
    const char *metrics = nu_config_get_str(cfg, "metrics_listen", "127.0.0.1:0");
    if (!rc && strlen(metrics) >= sizeof(out->metrics_listen))
        rc = NU_ERR_CONFIG, snprintf(err, sizeof(err), "metrics_listen: too long");
    else if (!rc)
        snprintf(out->metrics_listen, sizeof(out->metrics_listen), "%s", metrics);
    if (!rc)
        rc = cloud__ledger_config(cfg, out, err, sizeof(err));
    if (rc)
        nu_error("configuration: %s", err);
    nu_config_destroy(cfg);
    return rc ? NU_ERR_CONFIG : NU_OK;
}

static int cloud__read_cert(const char *dir, enum nu_path_kind kind, uint8_t **der, size_t *len)
{
    char path[PATH_MAX];
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    int rc = nu_paths_get(dir, kind, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, NU_X509_PEM_MAX, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_pem_to_der((char *)pem, pem_len, NU_X509_PEM_CERT, der, len, NULL);
    if (rc)
        nu_error("cannot read %s: %s", path, nu_err_str(rc));
    free(pem);
    return rc;
}

int cloud_keys_open(struct cloud *cloud)
{
    struct cloud_keys *k = &cloud->keys;
    /* One session per worker, up to what the HSM layer pools: beyond, workers
     * take turns (a session is borrowed for one signature only). */
    unsigned sessions =
        cloud->cfg.workers < NU_HSM_SESSIONS_MAX ? cloud->cfg.workers : NU_HSM_SESSIONS_MAX;
    int rc = nu_pki_open_hsm(cloud->dir, sessions, &cloud->hsm);
    if (rc) {
        nu_error("cannot open the HSM of %s: %s", cloud->dir, nu_err_str(rc));
        return rc;
    }
    const struct {
        const char *label;
        struct nu_hsm_key **key;
    } keys[] = {
        {NU_PKI_KEY_DEVICE_CA, &k->device_ca},
        {NU_PKI_KEY_FLEET_CA, &k->fleet_ca},
        {NU_PKI_KEY_PACKAGE, &k->package},
        {NU_PKI_KEY_SECURE_BOOT, &k->secure_boot},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if ((rc = nu_hsm_key_open(cloud->hsm, keys[i].label, keys[i].key))) {
            nu_error("HSM key '%s': %s", keys[i].label, nu_err_str(rc));
            return rc;
        }
    }
    /* Older state directories have no audit key: they run, unsigned. One
     * whose public half was published (DIR/pki/audit-key.pem) had one: its
     * key gone from the token is a fault, or a downgrade, not an old state. */
    char audit_pub[PATH_MAX];
    rc = nu_hsm_key_open(cloud->hsm, NU_PKI_KEY_AUDIT, &k->audit);
    if (rc == NU_ERR_NOT_FOUND &&
        nu_paths_get(cloud->dir, NU_PATH_AUDIT_PUB, audit_pub, sizeof(audit_pub)) == NU_OK &&
        nu_path_exists(audit_pub)) {
        nu_error("HSM key '%s' is missing, but %s says this state directory has one: not "
                 "starting with unsigned audit checkpoints",
                 NU_PKI_KEY_AUDIT, audit_pub);
        return NU_ERR_HSM;
    }
    if (rc == NU_ERR_NOT_FOUND) {
        nu_warn("no HSM key '%s': audit checkpoints are not signed (a state directory "
                "made by `nusec pki init` before audit keys existed)",
                NU_PKI_KEY_AUDIT);
        rc = NU_OK;
    }
    if (rc) {
        nu_error("HSM key '%s': %s", NU_PKI_KEY_AUDIT, nu_err_str(rc));
        return rc;
    }
    if ((rc = cloud__read_cert(cloud->dir, NU_PATH_ROOT_CA, &k->root_der, &k->root_len)) ||
        (rc = cloud__read_cert(cloud->dir, NU_PATH_FLEET_CA, &k->fleet_der, &k->fleet_len)) ||
        (rc = cloud__read_cert(cloud->dir, NU_PATH_DEVICE_CA, &k->device_der, &k->device_len)))
        return rc;
    return NU_OK;
}

void cloud_keys_close(struct cloud_keys *k)
{
    nu_hsm_key_close(k->device_ca);
    nu_hsm_key_close(k->fleet_ca);
    nu_hsm_key_close(k->package);
    nu_hsm_key_close(k->secure_boot);
    nu_hsm_key_close(k->audit);
    free(k->root_der);
    free(k->fleet_der);
    free(k->device_der);
    *k = (struct cloud_keys){0};
}
