#include "nu_paths.h"
#include "nu_err.h"
#include "nu_util.h"

#include <sys/stat.h>

static const char *const nu__relative[NU_PATH__COUNT] = {
    [NU_PATH_PKI] = "pki",
    [NU_PATH_PKI_CLIENTS] = "pki/clients",
    [NU_PATH_ROOT_CA] = "pki/root-ca.pem",
    [NU_PATH_FLEET_CA] = "pki/fleet-ca.pem",
    [NU_PATH_DEVICE_CA] = "pki/device-ca.pem",
    [NU_PATH_CHAIN] = "pki/chain.pem",
    [NU_PATH_DEVICE_CHAIN] = "pki/device-chain.pem",
    [NU_PATH_PACKAGE_PUB] = "pki/package-key.pem",
    [NU_PATH_AUDIT_PUB] = "pki/audit-key.pem",
    [NU_PATH_DEVICE_CRL] = "pki/device-crl.pem",
    [NU_PATH_BROKER_CERT] = "pki/broker.crt",
    [NU_PATH_BROKER_KEY] = "pki/broker.key",
    [NU_PATH_HSM] = "hsm",
    [NU_PATH_HSM_CONF] = "hsm/softhsm2.conf",
    [NU_PATH_HSM_TOKENS] = "hsm/tokens",
    [NU_PATH_HSM_PIN] = "hsm/pin",
    [NU_PATH_HSM_SO_PIN] = "hsm/so-pin",
    [NU_PATH_HSM_MODULE] = "hsm/module",
    [NU_PATH_BROKER] = "broker",
    [NU_PATH_BROKER_CONF] = "broker/mosquitto.conf",
    [NU_PATH_BROKER_ENDPOINT] = "broker/endpoint",
    [NU_PATH_BROKER_REVOKED] = "broker/revoked",
    [NU_PATH_BROKER_OWNERS] = "broker/owners",
    [NU_PATH_BROKER_CRL] = "broker/crl.pem",
    [NU_PATH_BROKER_LOG] = "broker/mosquitto.log",
    [NU_PATH_BROKER_DATA] = "broker/data",
    [NU_PATH_CLOUD] = "cloud",
    [NU_PATH_LEDGER] = "cloud/ledger.db",
    [NU_PATH_FIRMWARE] = "firmware",
    [NU_PATH_ROTPK] = "firmware/rotpk.pem",
    [NU_PATH_STATION] = "station",
    [NU_PATH_PROGRAMMERS] = "programmers",
    [NU_PATH_TARGETS] = "targets",
    [NU_PATH_RUN] = "run",
    [NU_PATH_LOGS] = "logs",
};

int nu_paths_get(const char *dir, enum nu_path_kind kind, char *out, size_t cap)
{
    if (!dir || !*dir || (unsigned)kind >= NU_PATH__COUNT)
        return NU_ERR_INVALID_ARG;
    return nu_path_fmt(out, cap, "%s/%s", dir, nu__relative[kind]);
}

/* Role and identity names become file names: keep them to a safe charset. */
static int nu__name_ok(const char *name)
{
    if (!name || !*name)
        return 0;
    size_t n = 0;
    for (const char *p = name; *p; p++, n++) {
        char c = *p;
        int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                 c == '-' || c == '_' || c == '.';
        if (!ok || n >= 64)
            return 0;
    }
    return name[0] != '.';
}

int nu_paths_client_cert(const char *dir, const char *name, char *out, size_t cap)
{
    if (!dir || !nu__name_ok(name))
        return NU_ERR_INVALID_ARG;
    return nu_path_fmt(out, cap, "%s/pki/clients/%s.crt", dir, name);
}

int nu_paths_client_key(const char *dir, const char *name, char *out, size_t cap)
{
    if (!dir || !nu__name_ok(name))
        return NU_ERR_INVALID_ARG;
    return nu_path_fmt(out, cap, "%s/pki/clients/%s.key", dir, name);
}

int nu_paths_create_layout(const char *dir)
{
    static const struct {
        enum nu_path_kind kind;
        mode_t mode;
    } folders[] = {
        {NU_PATH_PKI, 0755},         {NU_PATH_PKI_CLIENTS, 0700}, {NU_PATH_HSM, 0700},
        {NU_PATH_HSM_TOKENS, 0700},  {NU_PATH_BROKER, 0755},      {NU_PATH_BROKER_DATA, 0700},
        {NU_PATH_CLOUD, 0700},       {NU_PATH_FIRMWARE, 0755},    {NU_PATH_STATION, 0700},
        {NU_PATH_PROGRAMMERS, 0755}, {NU_PATH_TARGETS, 0755},     {NU_PATH_RUN, 0755},
        {NU_PATH_LOGS, 0755},
    };
    char path[4096];
    for (size_t i = 0; i < sizeof(folders) / sizeof(folders[0]); i++) {
        int rc = nu_paths_get(dir, folders[i].kind, path, sizeof(path));
        if (!rc)
            rc = nu_mkdirs(path, folders[i].mode);
        if (rc)
            return rc;
        /* mkdir honours the umask; secrets folders must be private whatever it is. */
        if (folders[i].mode == 0700 && chmod(path, 0700) != 0)
            return NU_ERR_PERMISSION;
    }
    return NU_OK;
}
