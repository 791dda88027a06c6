/*
 * nu_paths — the state directory layout of docs/ARCHITECTURE.md, in one place.
 *
 * Every program takes --dir DIR (or NUSEC_HOME) and finds its files through
 * these functions, so the layout users and scripts rely on cannot drift
 * between programs. Each function writes a path into out[cap] and returns
 * NU_OK, NU_ERR_TOO_LARGE (path does not fit) or NU_ERR_INVALID_ARG.
 */
#ifndef NU_PATHS_H
#define NU_PATHS_H

#include <stddef.h>

/* Well-known files and folders under DIR. */
enum nu_path_kind {
    NU_PATH_PKI,             /* DIR/pki */
    NU_PATH_PKI_CLIENTS,     /* DIR/pki/clients */
    NU_PATH_ROOT_CA,         /* DIR/pki/root-ca.pem */
    NU_PATH_FLEET_CA,        /* DIR/pki/fleet-ca.pem */
    NU_PATH_DEVICE_CA,       /* DIR/pki/device-ca.pem */
    NU_PATH_CHAIN,           /* DIR/pki/chain.pem: Fleet CA + Root (TLS trust) */
    NU_PATH_DEVICE_CHAIN,    /* DIR/pki/device-chain.pem: Device CA + Root */
    NU_PATH_PACKAGE_PUB,     /* DIR/pki/package-key.pem: package signing public key */
    NU_PATH_AUDIT_PUB,       /* DIR/pki/audit-key.pem: audit checkpoint public key */
    NU_PATH_DEVICE_CRL,      /* DIR/pki/device-crl.pem: the Device CA's CRL */
    NU_PATH_BROKER_CERT,     /* DIR/pki/broker.crt */
    NU_PATH_BROKER_KEY,      /* DIR/pki/broker.key */
    NU_PATH_HSM,             /* DIR/hsm */
    NU_PATH_HSM_CONF,        /* DIR/hsm/softhsm2.conf */
    NU_PATH_HSM_TOKENS,      /* DIR/hsm/tokens */
    NU_PATH_HSM_PIN,         /* DIR/hsm/pin (0600) */
    NU_PATH_HSM_SO_PIN,      /* DIR/hsm/so-pin (0600) */
    NU_PATH_HSM_MODULE,      /* DIR/hsm/module: PKCS#11 module path, if not the default */
    NU_PATH_BROKER,          /* DIR/broker */
    NU_PATH_BROKER_CONF,     /* DIR/broker/mosquitto.conf */
    NU_PATH_BROKER_ENDPOINT, /* DIR/broker/endpoint: "host:port" */
    NU_PATH_BROKER_REVOKED,  /* DIR/broker/revoked: revoked identities, one per line */
    NU_PATH_BROKER_OWNERS,   /* DIR/broker/owners: "station programmer" lines */
    NU_PATH_BROKER_CRL,      /* DIR/broker/crl.pem */
    NU_PATH_BROKER_LOG,      /* DIR/broker/mosquitto.log */
    NU_PATH_BROKER_DATA,     /* DIR/broker/data: persistence */
    NU_PATH_CLOUD,           /* DIR/cloud */
    NU_PATH_LEDGER,          /* DIR/cloud/ledger.db */
    NU_PATH_FIRMWARE,        /* DIR/firmware */
    NU_PATH_ROTPK,           /* DIR/firmware/rotpk.pem */
    NU_PATH_STATION,         /* DIR/station */
    NU_PATH_PROGRAMMERS,     /* DIR/programmers */
    NU_PATH_TARGETS,         /* DIR/targets */
    NU_PATH_RUN,             /* DIR/run */
    NU_PATH_LOGS,            /* DIR/logs */
    NU_PATH__COUNT
};

/* DIR/<relative path of kind>. */
int nu_paths_get(const char *dir, enum nu_path_kind kind, char *out, size_t cap);

/* DIR/pki/clients/NAME.crt and .key, for a role's client certificate. */
int nu_paths_client_cert(const char *dir, const char *name, char *out, size_t cap);
int nu_paths_client_key(const char *dir, const char *name, char *out, size_t cap);

/*
 * Create every folder of the layout that does not exist yet; DIR/hsm and
 * DIR/pki/clients get mode 0700 since they hold secrets.
 * Errors: IO, PERMISSION, TOO_LARGE.
 */
int nu_paths_create_layout(const char *dir);

#endif
