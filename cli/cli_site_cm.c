/* nusec site join|init — the CM's side of a site: its keys, the site broker (cli_site.h). */
#include "cli.h"
#include "cli_opts.h"
#include "cli_site.h"
#include "site_bundle.h"
#include "pki_init.h"

#include "station_owners.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_json.h"
#include "nu_paths.h"
#include "nu_pki.h"
#include "nu_signer.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "cli_site_int.h"

/* ---- CM: site join ------------------------------------------------------------------------- */

/* A software key made here (0600) and its CSR (PEM) as entry `entry`. */
static int site__key_csr(struct site_bundle *b, const char *entry, const char *key_path,
                         const char *cn, const char *ou)
{
    struct nu_p256_key *key = NULL;
    struct nu_signer signer;
    uint8_t *der = NULL;
    char *pem = NULL;
    size_t der_len = 0, pem_len = 0;
    int rc = nu_p256_key_generate(&key);
    if (!rc)
        rc = nu_p256_key_signer(key, &signer);
    if (!rc)
        rc = nu_x509_csr_make(&signer, cn, ou, NULL, &der, &der_len);
    if (!rc)
        rc = nu_x509_der_to_pem(der, der_len, NU_X509_PEM_CSR, &pem, &pem_len);
    if (!rc)
        rc = nu_p256_key_save_pem(key, key_path);
    if (!rc)
        rc = site_bundle_put(b, entry, pem, pem_len);
    free(pem);
    free(der);
    nu_p256_key_destroy(key);
    return rc;
}

/* The CM side's folders: no hsm/, no cloud/ (nothing of the OEM's lives here). */
static int site__cm_layout(const char *dir)
{
    static const struct {
        enum nu_path_kind kind;
        mode_t mode;
    } folders[] = {
        {NU_PATH_PKI, 0755},         {NU_PATH_PKI_CLIENTS, 0700}, {NU_PATH_BROKER, 0755},
        {NU_PATH_BROKER_DATA, 0700}, {NU_PATH_FIRMWARE, 0755},    {NU_PATH_STATION, 0700},
        {NU_PATH_PROGRAMMERS, 0755}, {NU_PATH_TARGETS, 0755},     {NU_PATH_RUN, 0755},
        {NU_PATH_LOGS, 0755},
    };
    char path[PATH_MAX];
    int rc = site__cm_path(dir, "", path, sizeof(path));
    if (!rc)
        rc = nu_mkdirs(path, 0700);
    for (size_t i = 0; !rc && i < sizeof(folders) / sizeof(folders[0]); i++) {
        rc = nu_paths_get(dir, folders[i].kind, path, sizeof(path));
        if (!rc)
            rc = nu_mkdirs(path, folders[i].mode);
    }
    return rc;
}

int site_join(const char *dir, const char *enrol_path, const char *host, int port,
              const char *request_path)
{
    char name[80], token[128], cloud[300], path[PATH_MAX], conf[800];
    struct site_bundle in = {0}, out = {0};
    int rc = site__cm_path(dir, "site.conf", path, sizeof(path));
    if (rc)
        return rc;
    if (nu_path_exists(path)) {
        site__say("join", "%s has joined a site already (%s); nothing changed", dir, path);
        return NU_ERR_EXISTS;
    }
    if ((rc = site_bundle_read(enrol_path, &in))) {
        site__say("join", "%s is not a site enrolment file: %s", enrol_path, nu_err_name(rc));
        return rc;
    }
    if ((rc = site_bundle_get_line(&in, "site", name, sizeof(name))) ||
        (rc = site_bundle_get_line(&in, "token", token, sizeof(token))) ||
        (rc = site_bundle_get_line(&in, "cloud", cloud, sizeof(cloud))) || !site__name_ok(name)) {
        site__say("join", "%s lacks a site name, token or cloud address", enrol_path);
        rc = NU_ERR_DECODE;
        goto out;
    }
    if (!port && (rc = pki_free_port(host, &port)))
        goto out;
    if ((rc = site__cm_layout(dir)))
        goto out;
    char station_key[PATH_MAX], bridge_key[PATH_MAX], broker_key[PATH_MAX], port_text[16];
    snprintf(port_text, sizeof(port_text), "%d", port);
    if ((rc = nu_paths_client_key(dir, name, station_key, sizeof(station_key))) ||
        (rc = site__cm_path(dir, "bridge.key", bridge_key, sizeof(bridge_key))) ||
        (rc = nu_paths_get(dir, NU_PATH_BROKER_KEY, broker_key, sizeof(broker_key))))
        goto out;
    /* Three keys born here; only their CSRs cross. */
    if ((rc = site_bundle_put_str(&out, "site", name)) ||
        (rc = site_bundle_put_str(&out, "token", token)) ||
        (rc = site_bundle_put_str(&out, "broker-host", host)) ||
        (rc = site__key_csr(&out, "csr/station.pem", station_key, name, NU_ROLE_STATION)) ||
        (rc = site__key_csr(&out, "csr/site.pem", bridge_key, name, "site")) ||
        (rc = site__key_csr(&out, "csr/broker.pem", broker_key, name, NU_ROLE_BROKER)))
        goto out;
    if ((rc = site_bundle_write(&out, request_path, 0600)))
        goto out;
    snprintf(conf, sizeof(conf), "name %s\nhost %s\nport %s\ncloud %s\n", name, host, port_text,
             cloud);
    rc = site__write_text(path, conf, 0644);
out:
    nu_zero(token, sizeof(token));
    site_bundle_free(&in);
    site_bundle_free(&out);
    if (rc && rc != NU_ERR_EXISTS)
        site__say("join", "%s", nu_err_str(rc));
    return rc;
}

/* "key value" line of DIR/site/site.conf into out[cap]. */
static int site__conf_get(const char *dir, const char *key, char *out, size_t cap)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = site__cm_path(dir, "site.conf", path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, 4096, &text, &len);
    if (rc)
        return rc;
    rc = NU_ERR_NOT_FOUND;
    size_t klen = strlen(key);
    for (char *line = (char *)text; line && *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        if (n > klen && strncmp(line, key, klen) == 0 && line[klen] == ' ') {
            size_t v = n - klen - 1;
            rc = v < cap ? NU_OK : NU_ERR_TOO_LARGE;
            if (!rc) {
                memcpy(out, line + klen + 1, v);
                out[v] = '\0';
            }
            break;
        }
        line = nl ? nl + 1 : NULL;
    }
    free(text);
    return rc;
}

int site_name(const char *dir, char *out, size_t cap)
{
    return site__conf_get(dir, "name", out, cap);
}

/* ---- CM: site init: install the bundle, write the site broker's configuration ------------- */

/* Bundle entry -> the CM's file for it. The keys made by join are never overwritten. */
static int site__install(const char *dir, const char *name, const struct site_bundle *b)
{
    static const char *const plain[] = {
        "pki/root-ca.pem",    "pki/fleet-ca.pem",     "pki/device-ca.pem",
        "pki/chain.pem",      "pki/device-chain.pem", "pki/package-key.pem",
        "pki/device-crl.pem", "firmware/rotpk.pem",   "programmers/boot-manifest.img",
    };
    char path[PATH_MAX];
    int rc = NU_OK;
    for (size_t i = 0; !rc && i < sizeof(plain) / sizeof(plain[0]); i++) {
        const struct site_bundle_entry *e = site_bundle_get(b, plain[i]);
        if (!e)
            continue;
        rc = nu_path_fmt(path, sizeof(path), "%s/%s", dir, plain[i]);
        if (!rc)
            rc = nu_file_write_atomic(path, e->data, e->len, 0644);
    }
    const struct {
        const char *entry;
        int kind; /* 0 station client, 1 bridge, 2 broker server */
    } certs[] = {{"certs/station.crt", 0}, {"certs/site.crt", 1}, {"certs/broker.crt", 2}};
    for (size_t i = 0; !rc && i < 3; i++) {
        const struct site_bundle_entry *e = site_bundle_get(b, certs[i].entry);
        if (!e) {
            rc = NU_ERR_DECODE;
            break;
        }
        rc = certs[i].kind == 0   ? nu_paths_client_cert(dir, name, path, sizeof(path))
             : certs[i].kind == 1 ? site__cm_path(dir, "bridge.crt", path, sizeof(path))
                                  : nu_paths_get(dir, NU_PATH_BROKER_CERT, path, sizeof(path));
        if (!rc)
            rc = nu_file_write_atomic(path, e->data, e->len, 0644);
    }
    const struct site_bundle_entry *owners = site_bundle_get(b, "owners");
    if (!rc && owners && !(rc = nu_paths_get(dir, NU_PATH_BROKER_OWNERS, path, sizeof(path))))
        rc = nu_file_write_atomic(path, owners->data, owners->len, 0644);
    if (!rc && !(rc = nu_paths_get(dir, NU_PATH_BROKER_REVOKED, path, sizeof(path))) &&
        !nu_path_exists(path))
        rc = site__write_text(path, "# revoked identities, one per line\n", 0644);
    return rc;
}

/* The bridge section appended to the broker template (docs/sites.md says why each line). */
static int site__bridge_section(const char *dir, const char *name, const char *cloud, char *out,
                                size_t cap)
{
    char chain[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
    int rc = nu_paths_get(dir, NU_PATH_CHAIN, chain, sizeof(chain));
    if (!rc)
        rc = site__cm_path(dir, "bridge.crt", cert, sizeof(cert));
    if (!rc)
        rc = site__cm_path(dir, "bridge.key", key, sizeof(key));
    if (rc)
        return rc;
    int n =
        snprintf(out, cap,
                 "\n# ---- site %s: queues sized for hours of WAN outage (docs/sites.md) ----\n"
                 "max_queued_messages %u\n"
                 "max_queued_bytes %llu\n"
                 "# the nusec_auth plugin above takes the revocation list and this site's\n"
                 "# ownership lines from the cloud broker over the bridge (broker/README.md)\n"
                 "plugin_opt_site_name %s\n"
                 "\n"
                 "# ---- bridge to the OEM's cloud broker (written by `nusec site init`) ----\n"
                 "connection nusec-cloud\n"
                 "address %s\n"
                 "bridge_protocol_version mqttv50\n"
                 "# mTLS as the site (OU site, CN %s); the cloud broker's certificate must chain\n"
                 "# to the OEM's Root and name the address above.\n"
                 "bridge_cafile %s\n"
                 "bridge_certfile %s\n"
                 "bridge_keyfile %s\n"
                 "bridge_insecure false\n"
                 "remote_clientid %s:bridge\n"
                 "local_clientid %s:bridge-local\n"
                 "# Persistent on both sides, so requests and reports queue through an outage.\n"
                 "cleansession false\n"
                 "local_cleansession false\n"
                 "try_private false\n"
                 "notifications false\n"
                 "keepalive_interval 30\n"
                 "restart_timeout 2 30\n"
                 "# Only what the site needs, one topic tree on both sides (response topics are\n"
                 "# not remapped). Out: requests, events, programmer status. In: replies (the\n"
                 "# cloud broker delivers only those of the site's own programmers), job\n"
                 "# state, the device CRL.\n"
                 "topic nusec/v1/cloud/req/# out 1\n"
                 "topic nusec/v1/events/station/# out 1\n"
                 "topic nusec/v1/events/programmer/# out 1\n"
                 "topic nusec/v1/prog/+/status out 1\n"
                 "topic nusec/v1/jobs/+ in 1\n"
                 "topic nusec/v1/crl/device in 1\n"
                 "topic nusec/v1/broker/revoked in 1\n"
                 "topic nusec/v1/broker/owners/%s in 1\n"
                 "# Replies: one wide subscription, so that a programmer the OEM assigns to\n"
                 "# this site later needs no restart (bridge topics are read at start). The\n"
                 "# cloud broker delivers on it only the replies of the site's station and\n"
                 "# of the programmers its ownership table gives the site; it withholds the\n"
                 "# rest (nusec_auth: quiet per-message deny, counted in its log).\n"
                 "topic nusec/v1/reply/# in 1\n",
                 name, SITE_QUEUE_MESSAGES, (unsigned long long)SITE_QUEUE_BYTES, name, cloud, name,
                 chain, cert, key, name, name, name);
    if (n <= 0 || (size_t)n >= cap)
        return NU_ERR_TOO_LARGE;
    return NU_OK;
}

/* DIR/broker/mosquitto.conf of the site: the NuSEC template + the bridge. */
static int site__broker_conf(const char *dir, const char *name)
{
    char conf_path[PATH_MAX], endpoint_path[PATH_MAX], host[256], port[16], cloud[300];
    char *bridge = NULL, *conf = NULL, endpoint[300];
    const size_t bridge_cap = 256u * 1024u;
    int rc = nu_paths_get(dir, NU_PATH_BROKER_CONF, conf_path, sizeof(conf_path));
    if (!rc)
        rc = nu_paths_get(dir, NU_PATH_BROKER_ENDPOINT, endpoint_path, sizeof(endpoint_path));
    if (!rc)
        rc = site__conf_get(dir, "host", host, sizeof(host));
    if (!rc)
        rc = site__conf_get(dir, "port", port, sizeof(port));
    if (!rc)
        rc = site__conf_get(dir, "cloud", cloud, sizeof(cloud));
    if (!rc && !(bridge = malloc(bridge_cap)))
        rc = NU_ERR_NOMEM;
    if (!rc)
        rc = site__bridge_section(dir, name, cloud, bridge, bridge_cap);
    const char *plugin = getenv("NUSEC_AUTH_PLUGIN");
    if (!rc)
        rc = pki_broker_conf(dir, host, port, plugin && *plugin ? plugin : NULL, &conf);
    if (rc) {
        free(bridge);
        return rc;
    }
    size_t clen = strlen(conf), blen = strlen(bridge);
    char *all = malloc(clen + blen + 1);
    if (!all) {
        free(conf);
        free(bridge);
        return NU_ERR_NOMEM;
    }
    memcpy(all, conf, clen);
    memcpy(all + clen, bridge, blen + 1);
    free(conf);
    free(bridge);
    rc = nu_file_write_atomic(conf_path, all, clen + blen, 0600);
    free(all);
    int n = snprintf(endpoint, sizeof(endpoint), "%s:%s\n", host, port);
    if (!rc)
        rc = nu_file_write_atomic(endpoint_path, endpoint, (size_t)n, 0644);
    return rc;
}

int site_broker_conf(const char *dir)
{
    char name[80];
    int rc = site_name(dir, name, sizeof(name));
    if (!rc)
        rc = site__broker_conf(dir, name);
    return rc;
}

int site_init(const char *dir, const char *bundle_path)
{
    char name[80], bname[80];
    struct site_bundle b = {0};
    int rc = site_name(dir, name, sizeof(name));
    if (rc) {
        site__say("init", "%s has not joined a site (run `nusec site join` first)", dir);
        return rc;
    }
    if ((rc = site_bundle_read(bundle_path, &b))) {
        site__say("init", "%s is not a site bundle: %s", bundle_path, nu_err_name(rc));
        return rc;
    }
    if (site_bundle_get_line(&b, "site", bname, sizeof(bname)) || strcmp(bname, name) != 0) {
        site__say("init", "%s is not site %s's bundle", bundle_path, name);
        rc = NU_ERR_INVALID_ARG;
        goto out;
    }
    rc = site__install(dir, name, &b);
    if (!rc)
        rc = site__broker_conf(dir, name);
    if (rc)
        site__say("init", "%s: %s (%s)", dir, nu_err_str(rc), nu_err_name(rc));
out:
    site_bundle_free(&b);
    return rc;
}
