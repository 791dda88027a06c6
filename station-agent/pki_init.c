/* nusec pki init: the OEM PKI inside the HSM, plus broker configuration. */
#include "pki_init.h"

#include "broker_conf_template.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifndef NUSEC_AUTH_PLUGIN_PATH
#define NUSEC_AUTH_PLUGIN_PATH ""
#endif

#define PKI__DAY 86400
#define PKI__DEFAULT_DAYS 825 /* CA/B Forum's old leaf limit: long enough for a line, not forever  \
                               */
#define PKI__PIN_BYTES 16

/* A CA we hold while issuing below it. */
struct pki__ca {
    const char *label;
    struct nu_hsm_key *key;
    uint8_t *der;
    size_t len;
};

struct pki__run {
    const struct pki_init_opts *opts;
    struct nu_hsm *hsm;
    struct pki__ca root, fleet, device;
    int64_t now, leaf_days;
};

/* The folders whose existence means "a PKI lives here". */
static const enum nu_path_kind pki__owned[] = {NU_PATH_PKI, NU_PATH_HSM, NU_PATH_BROKER};

static int pki__path(const struct pki__run *r, enum nu_path_kind kind, char *out, size_t cap)
{
    return nu_paths_get(r->opts->dir, kind, out, cap);
}

/* Refuse, or with --force move the old PKI aside: never delete it. */
static int pki__clear_way(const char *dir, int force)
{
    char path[PATH_MAX], aside[PATH_MAX + 32];
    int found = 0;
    for (size_t i = 0; i < sizeof(pki__owned) / sizeof(pki__owned[0]); i++) {
        if (nu_paths_get(dir, pki__owned[i], path, sizeof(path)) == NU_OK && nu_path_exists(path))
            found = 1;
    }
    if (!found)
        return NU_OK;
    if (!force)
        return NU_ERR_EXISTS;
    long stamp = (long)time(NULL);
    for (size_t i = 0; i < sizeof(pki__owned) / sizeof(pki__owned[0]); i++) {
        int rc = nu_paths_get(dir, pki__owned[i], path, sizeof(path));
        if (rc)
            return rc;
        if (!nu_path_exists(path))
            continue;
        if ((rc = nu_path_fmt(aside, sizeof(aside), "%s.old-%ld", path, stamp)))
            return rc;
        if (rename(path, aside) != 0)
            return NU_ERR_IO;
        printf("moved %s aside to %s\n", path, aside);
    }
    return NU_OK;
}

static int pki__write_pin(const char *path, char *out_pin, size_t cap)
{
    uint8_t raw[PKI__PIN_BYTES];
    int rc = nu_random(raw, sizeof(raw));
    if (!rc)
        rc = nu_hex_encode(raw, sizeof(raw), out_pin, cap);
    if (!rc)
        rc = nu_file_write_new(path, out_pin, strlen(out_pin), 0600);
    nu_zero(raw, sizeof(raw));
    return rc;
}

/* Token creation: SoftHSM2 under DIR/hsm unless another module was named. */
static int pki__create_token(struct pki__run *r)
{
    char path[PATH_MAX], module[PATH_MAX];
    char user_pin[2 * PKI__PIN_BYTES + 1], so_pin[2 * PKI__PIN_BYTES + 1];
    int rc;
    if (r->opts->module) {
        if ((rc = pki__path(r, NU_PATH_HSM_MODULE, path, sizeof(path))) ||
            (rc = nu_file_write_new(path, r->opts->module, strlen(r->opts->module), 0600)))
            return rc;
    } else {
        if ((rc = nu_hsm_softhsm_write_conf(r->opts->dir, path, sizeof(path))))
            return rc;
        if (setenv("SOFTHSM2_CONF", path, 1) != 0)
            return NU_ERR_NOMEM;
    }
    if ((rc = nu_pki_module_path(r->opts->dir, module, sizeof(module))))
        return rc;
    if ((rc = pki__path(r, NU_PATH_HSM_PIN, path, sizeof(path))) ||
        (rc = pki__write_pin(path, user_pin, sizeof(user_pin))))
        goto out;
    if ((rc = pki__path(r, NU_PATH_HSM_SO_PIN, path, sizeof(path))) ||
        (rc = pki__write_pin(path, so_pin, sizeof(so_pin))))
        goto out;
    rc = nu_hsm_init_token(module, NU_PKI_TOKEN_LABEL, so_pin, user_pin);
out:
    nu_zero(user_pin, sizeof(user_pin));
    nu_zero(so_pin, sizeof(so_pin));
    return rc;
}

static int pki__write_pem(const char *path, const uint8_t *der, size_t len, mode_t mode)
{
    char *pem = NULL;
    size_t pem_len = 0;
    int rc = nu_x509_der_to_pem(der, len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc)
        rc = nu_file_write_atomic(path, pem, pem_len, mode);
    free(pem);
    return rc;
}

/* Concatenated PEM of several certificates (a chain file). */
static int pki__write_chain(const char *path, const struct pki__ca *const *cas, size_t n)
{
    char *all = NULL, *pem = NULL;
    size_t all_len = 0, pem_len = 0;
    int rc = NU_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        rc = nu_x509_der_to_pem(cas[i]->der, cas[i]->len, NU_X509_PEM_CERT, &pem, &pem_len);
        if (rc)
            break;
        char *grown = realloc(all, all_len + pem_len);
        if (!grown) {
            rc = NU_ERR_NOMEM;
        } else {
            all = grown;
            memcpy(all + all_len, pem, pem_len);
            all_len += pem_len;
        }
        free(pem);
        pem = NULL;
    }
    if (!rc)
        rc = nu_file_write_atomic(path, all, all_len, 0644);
    free(all);
    return rc;
}

/* Generate a CA key in the HSM and certify it (self-signed when issuer is NULL). */
static int pki__make_ca(struct pki__run *r, struct pki__ca *ca, const char *cn,
                        const struct pki__ca *issuer, int path_len)
{
    struct nu_x509_issue_req req = {
        .cn = cn,
        .o = NU_PKI_ORGANIZATION,
        .not_before = r->now - 3600, /* tolerate clock skew between OEM and CM */
        .not_after = r->now + 10 * r->leaf_days * PKI__DAY,
        .is_ca = 1,
        .path_len = path_len,
        .key_usage = NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN,
    };
    int rc = nu_hsm_keygen_p256(r->hsm, ca->label, req.pub);
    if (!rc)
        rc = nu_hsm_key_open(r->hsm, ca->label, &ca->key);
    if (rc)
        return rc;
    const struct nu_signer *signer = nu_hsm_key_signer(issuer ? issuer->key : ca->key);
    return nu_x509_issue(&req, signer, issuer ? issuer->der : NULL, issuer ? issuer->len : 0,
                         &ca->der, &ca->len);
}

/* A TLS end entity: software key in a 0600 file, certificate from the Fleet CA. */
static int pki__make_leaf(struct pki__run *r, const char *cn, const char *role,
                          const char *cert_path, const char *key_path)
{
    struct nu_p256_key *key = NULL;
    uint8_t *der = NULL;
    size_t len = 0;
    int server = strcmp(role, NU_ROLE_BROKER) == 0;
    struct nu_x509_issue_req req = {
        .cn = cn,
        .ou = role,
        .o = NU_PKI_ORGANIZATION,
        .not_before = r->now - 3600,
        .not_after = r->now + r->leaf_days * PKI__DAY,
        .path_len = -1,
        .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        .ext_key_usage = server ? NU_X509_EKU_SERVER_AUTH : NU_X509_EKU_CLIENT_AUTH,
    };
    /* Clients check the broker by host name: name both the address and localhost. */
    const char *const san_dns[] = {"localhost"};
    const char *const san_ip[] = {r->opts->host};
    if (server) {
        req.san_dns = san_dns;
        req.n_san_dns = 1;
        req.san_ip = san_ip;
        req.n_san_ip = 1;
    }
    int rc = nu_p256_key_generate(&key);
    if (!rc)
        rc = nu_p256_key_pub(key, req.pub);
    if (!rc)
        rc = nu_x509_issue(&req, nu_hsm_key_signer(r->fleet.key), r->fleet.der, r->fleet.len, &der,
                           &len);
    if (!rc)
        rc = nu_p256_key_save_pem(key, key_path);
    if (!rc)
        rc = pki__write_pem(cert_path, der, len, 0644);
    free(der);
    nu_p256_key_destroy(key);
    return rc;
}

static int pki__make_cas(struct pki__run *r)
{
    char path[PATH_MAX];
    int rc = pki__make_ca(r, &r->root, "NuSEC Root CA", NULL, 1);
    if (!rc)
        rc = pki__make_ca(r, &r->fleet, "NuSEC Fleet CA", &r->root, 0);
    if (!rc)
        rc = pki__make_ca(r, &r->device, "NuSEC Device CA", &r->root, 0);
    if (rc)
        return rc;
    const struct {
        enum nu_path_kind kind;
        const struct pki__ca *ca;
    } singles[] = {{NU_PATH_ROOT_CA, &r->root},
                   {NU_PATH_FLEET_CA, &r->fleet},
                   {NU_PATH_DEVICE_CA, &r->device}};
    for (size_t i = 0; i < 3 && !rc; i++) {
        rc = pki__path(r, singles[i].kind, path, sizeof(path));
        if (!rc)
            rc = pki__write_pem(path, singles[i].ca->der, singles[i].ca->len, 0644);
    }
    const struct pki__ca *tls_chain[] = {&r->fleet, &r->root};
    const struct pki__ca *device_chain[] = {&r->device, &r->root};
    if (!rc && !(rc = pki__path(r, NU_PATH_CHAIN, path, sizeof(path))))
        rc = pki__write_chain(path, tls_chain, 2);
    if (!rc && !(rc = pki__path(r, NU_PATH_DEVICE_CHAIN, path, sizeof(path))))
        rc = pki__write_chain(path, device_chain, 2);
    return rc;
}

/* Secure-boot, package and audit keys: only their public halves leave the HSM. */
static int pki__make_signing_keys(struct pki__run *r)
{
    const struct {
        const char *label;
        enum nu_path_kind pub_path;
    } keys[] = {{NU_PKI_KEY_SECURE_BOOT, NU_PATH_ROTPK},
                {NU_PKI_KEY_PACKAGE, NU_PATH_PACKAGE_PUB},
                {NU_PKI_KEY_AUDIT, NU_PATH_AUDIT_PUB}};
    char path[PATH_MAX], pem[512];
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        uint8_t pub[NU_P256_PUB_LEN];
        size_t pem_len = 0;
        int rc = nu_hsm_keygen_p256(r->hsm, keys[i].label, pub);
        if (!rc)
            rc = nu_p256_pub_to_pem(pub, pem, sizeof(pem), &pem_len);
        if (!rc)
            rc = pki__path(r, keys[i].pub_path, path, sizeof(path));
        if (!rc)
            rc = nu_file_write_atomic(path, pem, pem_len, 0644);
        if (rc)
            return rc;
    }
    return NU_OK;
}

static int pki__make_tls_identities(struct pki__run *r)
{
    static const char *const roles[] = {NU_ROLE_CLOUD, NU_ROLE_STATION, NU_ROLE_MONITOR,
                                        NU_ROLE_OEM};
    char cert[PATH_MAX], key[PATH_MAX];
    int rc = pki__path(r, NU_PATH_BROKER_CERT, cert, sizeof(cert));
    if (!rc)
        rc = pki__path(r, NU_PATH_BROKER_KEY, key, sizeof(key));
    if (!rc)
        rc = pki__make_leaf(r, r->opts->host, NU_ROLE_BROKER, cert, key);
    for (size_t i = 0; i < sizeof(roles) / sizeof(roles[0]) && !rc; i++) {
        rc = nu_paths_client_cert(r->opts->dir, roles[i], cert, sizeof(cert));
        if (!rc)
            rc = nu_paths_client_key(r->opts->dir, roles[i], key, sizeof(key));
        if (!rc)
            rc = pki__make_leaf(r, roles[i], roles[i], cert, key);
    }
    return rc;
}

/* Fill broker/mosquitto.conf.in; the broker runs as the owner of the key files. */
static int pki__write_broker_conf(struct pki__run *r)
{
    /* Clients must chain to the Fleet CA (ISSUER_FILE); the Root in CAFILE is
     * only OpenSSL's anchor. The revocation list is the plugin's; a Fleet CA
     * CRL (CRL_LINE) is left to the revocation work of the cloud agent. */
    enum { N = 13 };
    static const enum nu_path_kind kinds[N] = {
        NU_PATH_BROKER,          NU_PATH_CHAIN,         NU_PATH_BROKER_CERT,
        NU_PATH_BROKER_KEY,      NU_PATH_BROKER_DATA,   NU_PATH_BROKER_LOG,
        NU_PATH_BROKER_REVOKED,  NU_PATH_BROKER_OWNERS, NU_PATH_BROKER_CRL,
        NU_PATH_BROKER_ENDPOINT, NU_PATH_RUN,           NU_PATH_BROKER_CONF,
        NU_PATH_FLEET_CA,
    };
    char paths[N][PATH_MAX], port_text[16], pid_file[PATH_MAX + 16], endpoint[300];
    for (int i = 0; i < N; i++) {
        int rc = pki__path(r, kinds[i], paths[i], sizeof(paths[i]));
        if (rc)
            return rc;
    }
    int port = r->opts->port;
    int rc = port ? NU_OK : pki_free_port(r->opts->host, &port);
    if (rc)
        return rc;
    snprintf(port_text, sizeof(port_text), "%d", port);
    if ((rc = nu_path_fmt(pid_file, sizeof(pid_file), "%s/broker.pid", paths[10])))
        return rc;
    struct passwd *pw = getpwuid(geteuid());
    const char *plugin = r->opts->plugin ? r->opts->plugin : NUSEC_AUTH_PLUGIN_PATH;
    const char *const vars[] = {
        "HOST",         r->opts->host,
        "PORT",         port_text,
        "CAFILE",       paths[1],
        "CERTFILE",     paths[2],
        "KEYFILE",      paths[3],
        "DIR",          paths[4],
        "LOG",          paths[5],
        "REVOKED_FILE", paths[6],
        "OWNERS_FILE",  paths[7],
        "ISSUER_FILE",  paths[12],
        "CRL_LINE",     "",
        "PLUGIN",       plugin,
        "PID_FILE",     pid_file,
        "USER",         pw ? pw->pw_name : "root",
        NULL,
    };
    char *conf = NULL;
    if ((rc = pki_fill_template(nusec_broker_conf_template, vars, &conf)))
        return rc;
    rc = nu_file_write_atomic(paths[11], conf, strlen(conf), 0600);
    free(conf);
    if (!rc)
        rc = nu_file_write_atomic(paths[6], "# revoked identities, one per line\n", 35, 0644);
    if (!rc)
        rc = nu_file_write_atomic(paths[7], "# station programmer\n", 21, 0644);
    if (!rc) {
        int n = snprintf(endpoint, sizeof(endpoint), "%s:%d\n", r->opts->host, port);
        rc = nu_file_write_atomic(paths[9], endpoint, (size_t)n, 0644);
    }
    return rc;
}

static void pki__release(struct pki__run *r)
{
    struct pki__ca *cas[] = {&r->root, &r->fleet, &r->device};
    for (int i = 0; i < 3; i++) {
        nu_hsm_key_close(cas[i]->key);
        free(cas[i]->der);
    }
    nu_hsm_close(r->hsm);
}

/* A failed run removes what it created, so the next run starts clean. */
static void pki__roll_back(const char *dir)
{
    char path[PATH_MAX], cmd[PATH_MAX + 16];
    for (size_t i = 0; i < sizeof(pki__owned) / sizeof(pki__owned[0]); i++) {
        if (nu_paths_get(dir, pki__owned[i], path, sizeof(path)) || !nu_path_exists(path))
            continue;
        if (strchr(path, '\'') || nu_path_fmt(cmd, sizeof(cmd), "rm -rf '%s'", path))
            continue;
        if (system(cmd) != 0)
            nu_warn("could not remove %s after a failed init", path);
    }
}

int pki_init_run(const struct pki_init_opts *opts)
{
    if (!opts || !opts->dir || !opts->host)
        return NU_ERR_INVALID_ARG;
    struct pki__run r = {.opts = opts, .now = (int64_t)time(NULL)};
    r.root.label = NU_PKI_KEY_ROOT_CA;
    r.fleet.label = NU_PKI_KEY_FLEET_CA;
    r.device.label = NU_PKI_KEY_DEVICE_CA;
    r.leaf_days = opts->validity_days ? opts->validity_days : PKI__DEFAULT_DAYS;

    int rc = nu_mkdirs(opts->dir, 0755);
    if (!rc)
        rc = pki__clear_way(opts->dir, opts->force);
    if (rc)
        return rc;
    if ((rc = nu_paths_create_layout(opts->dir)) || (rc = pki__create_token(&r)) ||
        (rc = nu_pki_open_hsm(opts->dir, 1, &r.hsm)) || (rc = pki__make_cas(&r)) ||
        (rc = pki__make_signing_keys(&r)) || (rc = pki__make_tls_identities(&r)) ||
        (rc = pki__write_broker_conf(&r)))
        nu_error("pki init failed: %s (%s)", nu_err_str(rc), nu_err_name(rc));
    pki__release(&r);
    if (rc)
        pki__roll_back(opts->dir);
    return rc;
}
