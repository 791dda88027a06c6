/* nusec site add|join|sign|assign|export|init — a CM site on its own machine (cli_site.h). */
#include "cli.h"
#include "cli_opts.h"
#include "cli_site.h"
#include "site_bundle.h"
#include "pki_init.h"

#include "broker_conf_template.h"
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
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define SITE__TOKEN_BYTES 32
#define SITE__DAY 86400
#define SITE__LEAF_DAYS 825
#define SITE__OWNERS_MAX (1024u * 1024u)
#define SITE__STATIONS_MAX 16 /* cloud.conf station_ids (CLOUD_ROLE_IDS_MAX) */

/* Identities the OEM's own roles use: a site may not take one of their names. */
static const char *const site__reserved[] = {"cloud", "station", "monitor", "oem", "broker"};

static void site__say(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void site__say(const char *what, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "nusec: site %s: ", what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* [A-Za-z0-9._-]{1,64}: what the broker accepts as a CN (broker/acl.h). */
static int site__name_ok(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    for (size_t i = 0; i < sizeof(site__reserved) / sizeof(site__reserved[0]); i++) {
        if (strcmp(s, site__reserved[i]) == 0)
            return 0;
    }
    return 1;
}

/* ---- small file helpers ------------------------------------------------------------------ */

static int site__oem_path(const char *dir, const char *name, const char *file, char *out,
                          size_t cap)
{
    return nu_path_fmt(out, cap, "%s/" SITE_OEM_FOLDER "/%s%s%s", dir, name, file ? "/" : "",
                       file ? file : "");
}

static int site__cm_path(const char *dir, const char *file, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/" SITE_CM_FOLDER "/%s", dir, file);
}

static int site__write_text(const char *path, const char *text, mode_t mode)
{
    return nu_file_write_atomic(path, text, strlen(text), mode);
}

static int site__owner_of(const char *dir, const char *programmer, char *out, size_t cap);

/*
 * The OEM's record of what its `site` commands did and refused, one JSON
 * object per line in DIR/sites/audit.jsonl (append-only, fsync'd): the join
 * request is outside input, and the ledger's chain belongs to the cloud
 * agent. Untrusted strings are escaped by nu_json. Failure to write is
 * reported, never hidden.
 */
static void site__audit(const char *dir, const char *event, const char *site, const char *other,
                        int code, const char *detail)
{
    char path[PATH_MAX], buf[1024];
    struct nu_json j;
    nu_json_init(&j, buf, sizeof(buf));
    nu_json_raw(&j, "{", 1);
    nu_json_u64(&j, "ts", nu_time_ms());
    nu_json_str(&j, "event", event);
    nu_json_str(&j, "site", site);
    if (other)
        nu_json_str(&j, "programmer", other);
    nu_json_str(&j, "code", code ? nu_err_name(code) : "OK");
    if (detail)
        nu_json_str(&j, "detail", detail);
    nu_json_raw(&j, "}\n", 2);
    int fd = -1;
    if (nu_json_ok(&j) && !nu_path_fmt(path, sizeof(path), "%s/" SITE_OEM_FOLDER, dir) &&
        !nu_mkdirs(path, 0700) &&
        !nu_path_fmt(path, sizeof(path), "%s/" SITE_OEM_FOLDER "/audit.jsonl", dir))
        fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || write(fd, buf, j.len) != (ssize_t)j.len || fsync(fd) != 0)
        site__say("audit", "cannot append to %s/" SITE_OEM_FOLDER "/audit.jsonl", dir);
    if (fd >= 0)
        close(fd);
}

/* ---- OEM: site add ------------------------------------------------------------------------ */

int site_add(const char *dir, const char *name, const char *cloud, const char *enrol_path)
{
    char folder[PATH_MAX], path[PATH_MAX], token[2 * SITE__TOKEN_BYTES + 1], hex[65];
    uint8_t raw[SITE__TOKEN_BYTES], digest[NU_SHA256_LEN], *ep = NULL;
    size_t ep_len = 0;
    struct site_bundle b = {0};
    char endpoint[300];
    if (!site__name_ok(name)) {
        site__say("add", "'%s' is not a site name ([A-Za-z0-9._-]{1,64}, not a role name)",
                  name ? name : "");
        return NU_ERR_INVALID_ARG;
    }
    int rc = site__oem_path(dir, name, NULL, folder, sizeof(folder));
    if (rc)
        return rc;
    if (nu_path_exists(folder)) {
        site__say("add", "site %s exists already (%s); nothing changed", name, folder);
        return NU_ERR_EXISTS;
    }
    /* One namespace: the cloud takes a station's key from DIR/pki/clients/NAME.crt,
     * so a site may not share its name with any identity the OEM knows. */
    char taken[80];
    if ((rc = nu_paths_client_cert(dir, name, path, sizeof(path))))
        return rc;
    if (nu_path_exists(path) || site__owner_of(dir, name, taken, sizeof(taken))) {
        site__say("add", "%s is already an identity here (%s); nothing changed", name,
                  nu_path_exists(path) ? path : "a programmer");
        return NU_ERR_EXISTS;
    }
    if (!cloud) {
        rc = nu_paths_get(dir, NU_PATH_BROKER_ENDPOINT, path, sizeof(path));
        if (!rc)
            rc = nu_file_read(path, 256, &ep, &ep_len);
        if (rc) {
            site__say("add", "no cloud broker endpoint in %s (pass --cloud HOST:PORT): %s", path,
                      nu_err_name(rc));
            return rc;
        }
        snprintf(endpoint, sizeof(endpoint), "%.*s", (int)strcspn((char *)ep, "\r\n"), (char *)ep);
        free(ep);
    } else {
        snprintf(endpoint, sizeof(endpoint), "%s", cloud);
    }
    rc = nu_random(raw, sizeof(raw));
    if (!rc)
        rc = nu_hex_encode(raw, sizeof(raw), token, sizeof(token));
    if (!rc)
        rc = nu_sha256(token, strlen(token), digest);
    if (!rc)
        rc = nu_hex_encode(digest, sizeof(digest), hex, sizeof(hex));
    if (!rc)
        rc = nu_mkdirs(folder, 0700);
    if (!rc)
        rc = site__oem_path(dir, name, "token.sha256", path, sizeof(path));
    if (!rc) /* only the hash stays at the OEM: the token itself is in the file that crosses */
        rc = site__write_text(path, hex, 0600);
    if (!rc)
        rc = site_bundle_put_str(&b, "site", name);
    if (!rc)
        rc = site_bundle_put_str(&b, "token", token);
    if (!rc)
        rc = site_bundle_put_str(&b, "cloud", endpoint);
    if (!rc)
        rc = site_bundle_write(&b, enrol_path, 0600);
    site_bundle_free(&b);
    nu_zero(token, sizeof(token));
    nu_zero(raw, sizeof(raw));
    if (rc)
        site__say("add", "%s: %s", name, nu_err_str(rc));
    else
        site__audit(dir, "site.added", name, NULL, NU_OK, NULL);
    return rc;
}

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

/* ---- OEM: site sign ------------------------------------------------------------------------- */

struct site__ca {
    struct nu_hsm *hsm;
    struct nu_hsm_key *key;
    uint8_t *der;
    size_t len;
};

static void site__ca_close(struct site__ca *ca)
{
    nu_hsm_key_close(ca->key);
    nu_hsm_close(ca->hsm);
    free(ca->der);
    memset(ca, 0, sizeof(*ca));
}

/* The Fleet CA: its key in the OEM's HSM, its certificate from DIR/pki. */
static int site__ca_open(const char *dir, struct site__ca *ca)
{
    char path[PATH_MAX];
    uint8_t *pem = NULL;
    size_t len = 0;
    int rc = nu_pki_open_hsm(dir, 1, &ca->hsm);
    if (!rc)
        rc = nu_hsm_key_open(ca->hsm, NU_PKI_KEY_FLEET_CA, &ca->key);
    if (!rc)
        rc = nu_paths_get(dir, NU_PATH_FLEET_CA, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, 64 * 1024, &pem, &len);
    if (!rc)
        rc = nu_x509_pem_to_der((char *)pem, len, NU_X509_PEM_CERT, &ca->der, &ca->len, NULL);
    free(pem);
    if (rc)
        site__say("sign", "cannot use the Fleet CA in the HSM of %s: %s", dir, nu_err_name(rc));
    return rc;
}

/* The organisation of the OEM's CAs, for the leaves it signs. */
static void site__ca_org(const struct site__ca *ca, char *out, size_t cap)
{
    struct nu_x509_cert_info info;
    if (nu_x509_cert_info(ca->der, ca->len, &info) == NU_OK && info.o[0])
        snprintf(out, cap, "%s", info.o);
    else
        snprintf(out, cap, "%s", NU_PKI_ORGANIZATION);
}

/*
 * Sign the CSR in entry `entry` (verified: P-256, self-signature, CN = the
 * site name, OU = `role`) as a leaf of the Fleet CA into cert_path.
 * BAD_CSR when the CSR asks for anything else.
 */
static int site__sign_one(const struct site__ca *ca, const struct site_bundle *req,
                          const char *entry, const char *name, const char *role, const char *host,
                          const char *cert_path)
{
    const struct site_bundle_entry *e = site_bundle_get(req, entry);
    struct nu_x509_csr_info csr;
    uint8_t *der = NULL, *cert = NULL;
    size_t der_len = 0, cert_len = 0;
    char org[NU_X509_NAME_MAX + 1], *pem = NULL;
    size_t pem_len = 0;
    if (!e)
        return NU_ERR_BAD_CSR;
    int rc = nu_x509_pem_to_der((char *)e->data, e->len, NU_X509_PEM_CSR, &der, &der_len, NULL);
    if (!rc)
        rc = nu_x509_csr_parse_verify(der, der_len, &csr);
    if (!rc && (strcmp(csr.cn, name) != 0 || strcmp(csr.ou, role) != 0)) {
        site__say("sign", "%s asks for CN=%s OU=%s, not CN=%s OU=%s: refused", entry, csr.cn,
                  csr.ou, name, role);
        rc = NU_ERR_BAD_CSR;
    }
    free(der);
    if (rc)
        return rc == NU_ERR_BAD_CSR ? rc : NU_ERR_BAD_CSR;
    site__ca_org(ca, org, sizeof(org));
    int64_t now = (int64_t)time(NULL);
    int server = strcmp(role, NU_ROLE_BROKER) == 0;
    const char *const san_dns[] = {"localhost", host};
    const char *const san_ip[] = {host};
    struct nu_x509_issue_req ir = {
        .cn = name,
        .ou = role,
        .o = org,
        .not_before = now - 3600,
        .not_after = now + (int64_t)SITE__LEAF_DAYS * SITE__DAY,
        .path_len = -1,
        .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        .ext_key_usage = server ? NU_X509_EKU_SERVER_AUTH : NU_X509_EKU_CLIENT_AUTH,
    };
    memcpy(ir.pub, csr.pub, sizeof(ir.pub));
    if (server) {
        ir.san_dns = san_dns;
        ir.n_san_dns = 1;
        /* an address literal, else a DNS name */
        if (strspn(host, "0123456789.:abcdefABCDEF") == strlen(host) && strpbrk(host, ".:")) {
            ir.san_ip = san_ip;
            ir.n_san_ip = 1;
        } else if (strcmp(host, "localhost") != 0) {
            ir.n_san_dns = 2;
        }
    }
    rc = nu_x509_issue(&ir, nu_hsm_key_signer(ca->key), ca->der, ca->len, &cert, &cert_len);
    if (!rc)
        rc = nu_x509_der_to_pem(cert, cert_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc)
        rc = nu_file_write_atomic(cert_path, pem, pem_len, 0644);
    free(pem);
    free(cert);
    return rc;
}

/*
 * The cloud verifies a station's signatures with DIR/pki/clients/ID.crt of
 * the identities listed in cloud.conf station_ids: add `name` to that list
 * (keeping the rest of the file). The cloud reads it at its next start.
 */
static int site__station_ids_add(const char *dir, const char *name)
{
    char path[PATH_MAX], *out = NULL;
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = nu_path_fmt(path, sizeof(path), "%s/cloud/cloud.conf", dir);
    if (rc)
        return rc;
    rc = nu_file_read(path, 256 * 1024, &text, &len);
    if (rc == NU_ERR_NOT_FOUND) {
        text = (uint8_t *)strdup("");
        len = 0;
        rc = text ? NU_OK : NU_ERR_NOMEM;
    }
    if (rc)
        return rc;
    size_t cap = len + strlen(name) + 64;
    out = calloc(1, cap);
    if (!out) {
        free(text);
        return NU_ERR_NOMEM;
    }
    int found = 0;
    size_t used = 0;
    for (char *line = (char *)text; line && *line;) {
        char *nl = strchr(line, '\n');
        size_t n = nl ? (size_t)(nl - line) : strlen(line);
        const char *p = line;
        while (p < line + n && (*p == ' ' || *p == '\t'))
            p++;
        int is_ids = strncmp(p, "station_ids", 11) == 0 && !found;
        memcpy(out + used, line, n);
        used += n;
        if (is_ids) {
            found = 1;
            /* already listed? (as a whole word) */
            char word[80];
            int listed = 0, words = 0;
            const char *eq = memchr(p, '=', (size_t)(line + n - p));
            for (const char *w = eq ? eq + 1 : line + n; w < line + n;) {
                size_t skip = strspn(w, " \t,");
                w += skip;
                size_t wl = strcspn(w, " \t,\n");
                if (wl && wl < sizeof(word) && w + wl <= line + n) {
                    memcpy(word, w, wl);
                    word[wl] = '\0';
                    listed |= strcmp(word, name) == 0;
                    words++;
                }
                w += wl ? wl : 1;
            }
            if (!listed && words >= SITE__STATIONS_MAX) {
                site__say("sign",
                          "cloud.conf station_ids holds %d identities, the cloud's "
                          "limit: nothing changed",
                          words);
                free(out);
                free(text);
                return NU_ERR_LIMIT;
            }
            if (!listed)
                used += (size_t)snprintf(out + used, cap - used, " %s", name);
        }
        out[used++] = '\n';
        line = nl ? nl + 1 : NULL;
    }
    if (!found)
        used += (size_t)snprintf(out + used, cap - used, "station_ids = station %s\n", name);
    rc = nu_file_write_atomic(path, out, used, 0644);
    free(out);
    free(text);
    return rc;
}

/*
 * The cloud broker of a deployment with sites hands its revocation list and
 * ownership lines to the site brokers (broker/README.md): one line appended
 * to DIR/broker/mosquitto.conf, once; the broker reads it at its next start.
 */
static int site__publish_lists_on(const char *dir)
{
    static const char line[] = "\n# sites (nusec site sign): revocations and ownership lines "
                               "for the site brokers\nplugin_opt_publish_lists true\n";
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = nu_paths_get(dir, NU_PATH_BROKER_CONF, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, 1024 * 1024, &text, &len);
    if (!rc && !strstr((char *)text, "plugin_opt_publish_lists")) {
        char *all = malloc(len + sizeof(line));
        rc = all ? NU_OK : NU_ERR_NOMEM;
        if (!rc) {
            memcpy(all, text, len);
            memcpy(all + len, line, sizeof(line) - 1);
            rc = nu_file_write_atomic(path, all, len + sizeof(line) - 1, 0600);
            if (!rc)
                printf("cloud broker: %s now publishes its lists for the sites (restart it)\n",
                       path);
        }
        free(all);
    }
    free(text);
    return rc;
}

int site_sign(const char *dir, const char *request_path, const char *bundle_path)
{
    char name[80] = "", token[128], host[256], path[PATH_MAX], hex[65], stored[80];
    uint8_t digest[NU_SHA256_LEN], *want = NULL;
    size_t want_len = 0;
    struct site_bundle req = {0};
    struct site__ca ca = {0};
    int rc = site_bundle_read(request_path, &req);
    if (rc) {
        site__say("sign", "%s is not a site join request: %s", request_path, nu_err_name(rc));
        return rc;
    }
    if (site_bundle_get_line(&req, "site", name, sizeof(name)) || !site__name_ok(name) ||
        site_bundle_get_line(&req, "token", token, sizeof(token)) ||
        site_bundle_get_line(&req, "broker-host", host, sizeof(host)) || !host[0]) {
        site__say("sign", "%s lacks a site name, token or broker host", request_path);
        rc = NU_ERR_DECODE;
        goto out;
    }
    /* The token: known, unused, and this site's (compared by hash, in constant time). */
    if ((rc = site__oem_path(dir, name, "token.sha256", path, sizeof(path))) ||
        (rc = nu_file_read(path, 128, &want, &want_len))) {
        site__say("sign", "no site %s was added here (nusec site add)", name);
        rc = NU_ERR_TOKEN;
        goto out;
    }
    snprintf(stored, sizeof(stored), "%.*s", (int)want_len, (char *)want);
    if ((rc = nu_sha256(token, strlen(token), digest)) ||
        (rc = nu_hex_encode(digest, sizeof(digest), hex, sizeof(hex))))
        goto out;
    if (strlen(stored) != 64 || nu_memeq_ct(stored, hex, 64) != 0) {
        site__say("sign", "the join request's token is not site %s's: refused", name);
        rc = NU_ERR_TOKEN;
        goto out;
    }
    if ((rc = site__oem_path(dir, name, "site.crt", path, sizeof(path))))
        goto out;
    if (nu_path_exists(path)) { /* one use: no two certificates for one site */
        site__say("sign", "site %s has joined already: its token is used", name);
        rc = NU_ERR_TOKEN;
        goto out;
    }
    if ((rc = site__ca_open(dir, &ca)))
        goto out;
    static const struct {
        const char *entry, *role, *file;
    } certs[] = {{"csr/station.pem", NU_ROLE_STATION, "station.crt"},
                 {"csr/broker.pem", NU_ROLE_BROKER, "broker.crt"},
                 {"csr/site.pem", "site", "site.crt"}}; /* last: it marks the token used */
    for (size_t i = 0; i < 3 && !rc; i++) {
        rc = site__oem_path(dir, name, certs[i].file, path, sizeof(path));
        if (!rc)
            rc = site__sign_one(&ca, &req, certs[i].entry, name, certs[i].role, host, path);
    }
    if (rc)
        goto out;
    /* The cloud checks the site station's signatures with this certificate. */
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    char client[PATH_MAX];
    rc = site__oem_path(dir, name, "station.crt", path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, 64 * 1024, &pem, &pem_len);
    if (!rc)
        rc = nu_paths_client_cert(dir, name, client, sizeof(client));
    if (!rc)
        rc = nu_file_write_atomic(client, pem, pem_len, 0644);
    free(pem);
    if (!rc)
        rc = site__station_ids_add(dir, name);
    if (!rc)
        rc = site__publish_lists_on(dir);
    if (!rc)
        rc = site_export(dir, name, bundle_path);
    if (!rc)
        site__audit(dir, "site.signed", name, NULL, NU_OK, NULL);
    if (!rc)
        printf("site %s signed (station, site bridge, site broker certificates); restart the "
               "cloud so that it knows the station %s\n",
               name, name);
out:
    if (rc) /* the join request is outside input: every refusal is recorded */
        site__audit(dir, "site.join.refused", name[0] ? name : "-", NULL, rc, request_path);
    site__ca_close(&ca);
    nu_zero(token, sizeof(token));
    free(want);
    site_bundle_free(&req);
    if (rc && rc != NU_ERR_TOKEN)
        site__say("sign", "%s: %s (%s)", request_path, nu_err_str(rc), nu_err_name(rc));
    return rc;
}

/* ---- OEM: assign, export ----------------------------------------------------------------- */

/* The site that owns `programmer` in the cloud broker's table, into out[cap]; 0 if none. */
static int site__owner_of(const char *dir, const char *programmer, char *out, size_t cap)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    int found = 0;
    if (nu_paths_get(dir, NU_PATH_BROKER_OWNERS, path, sizeof(path)) ||
        nu_file_read(path, SITE__OWNERS_MAX, &text, &len))
        return 0;
    for (char *save = NULL, *line = strtok_r((char *)text, "\n", &save); line && !found;
         line = strtok_r(NULL, "\n", &save)) {
        char a[80], b[80];
        if (line[0] != '#' && sscanf(line, "%79s %79s", a, b) == 2 && !strcmp(b, programmer)) {
            snprintf(out, cap, "%s", a);
            found = 1;
        }
    }
    free(text);
    return found;
}

int site_assign(const char *dir, const char *name, const char *programmer)
{
    char path[PATH_MAX], owner[80];
    int rc = site__oem_path(dir, name, "site.crt", path, sizeof(path));
    if (rc)
        return rc;
    if (!site__name_ok(name) || !nu_path_exists(path)) {
        site__say("assign", "no signed site %s here", name);
        return NU_ERR_NOT_FOUND;
    }
    if ((rc = nu_paths_client_cert(dir, programmer, path, sizeof(path))))
        return rc;
    if (nu_path_exists(path)) { /* a role or a site's station, not a programmer */
        site__say("assign", "%s is not a programmer (%s); nothing changed", programmer, path);
        site__audit(dir, "site.assign.refused", name, programmer, NU_ERR_INVALID_ARG, NULL);
        return NU_ERR_INVALID_ARG;
    }
    if (site__owner_of(dir, programmer, owner, sizeof(owner)) && strcmp(owner, name) != 0) {
        site__say("assign", "%s belongs to %s: revoke or move it first; nothing changed",
                  programmer, owner);
        site__audit(dir, "site.assign.refused", name, programmer, NU_ERR_EXISTS, owner);
        return NU_ERR_EXISTS;
    }
    /* The cloud broker's table: the site role may speak only for these. */
    rc = station_owners_add(dir, name, programmer);
    if (rc)
        site__say("assign", "%s %s: %s", name, programmer, nu_err_str(rc));
    site__audit(dir, rc ? "site.assign.failed" : "site.assigned", name, programmer, rc, NULL);
    return rc;
}

/* The site's lines of the cloud broker's table: what the site broker needs. */
static int site__owners_of_site(const char *dir, const char *name, char **out)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0, used = 0;
    int rc = nu_paths_get(dir, NU_PATH_BROKER_OWNERS, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, SITE__OWNERS_MAX, &text, &len);
    if (rc == NU_ERR_NOT_FOUND) {
        len = 0;
        rc = NU_OK;
    }
    if (rc)
        return rc;
    char *buf = malloc(len + 128);
    if (!buf) {
        free(text);
        return NU_ERR_NOMEM;
    }
    used = (size_t)snprintf(buf, len + 128,
                            "# decided by the OEM for site %s (nusec site "
                            "assign); do not edit here\n",
                            name);
    for (char *save = NULL, *line = text ? strtok_r((char *)text, "\n", &save) : NULL; line;
         line = strtok_r(NULL, "\n", &save)) {
        char a[80], b[80];
        if (line[0] != '#' && sscanf(line, "%79s %79s", a, b) == 2 && !strcmp(a, name))
            used += (size_t)snprintf(buf + used, len + 128 - used, "%s %s\n", a, b);
    }
    free(text);
    *out = buf;
    return NU_OK;
}

int site_export(const char *dir, const char *name, const char *bundle_path)
{
    static const struct {
        enum nu_path_kind kind;
        const char *entry;
        int optional;
    } pub[] = {
        {NU_PATH_ROOT_CA, "pki/root-ca.pem", 0},
        {NU_PATH_FLEET_CA, "pki/fleet-ca.pem", 0},
        {NU_PATH_DEVICE_CA, "pki/device-ca.pem", 0},
        {NU_PATH_CHAIN, "pki/chain.pem", 0},
        {NU_PATH_DEVICE_CHAIN, "pki/device-chain.pem", 0},
        {NU_PATH_PACKAGE_PUB, "pki/package-key.pem", 0},
        {NU_PATH_DEVICE_CRL, "pki/device-crl.pem", 1},
        {NU_PATH_ROTPK, "firmware/rotpk.pem", 0},
    };
    char path[PATH_MAX], endpoint[300] = "";
    struct site_bundle b = {0};
    char *owners = NULL;
    int rc = site_bundle_put_str(&b, "site", name);
    for (size_t i = 0; !rc && i < sizeof(pub) / sizeof(pub[0]); i++) {
        rc = nu_paths_get(dir, pub[i].kind, path, sizeof(path));
        if (!rc)
            rc = site_bundle_put_file(&b, pub[i].entry, path);
        if (rc == NU_ERR_NOT_FOUND && pub[i].optional)
            rc = NU_OK;
    }
    static const char *const certs[] = {"station.crt", "site.crt", "broker.crt"};
    for (size_t i = 0; !rc && i < 3; i++) {
        char entry[64];
        snprintf(entry, sizeof(entry), "certs/%s", certs[i]);
        rc = site__oem_path(dir, name, certs[i], path, sizeof(path));
        if (!rc)
            rc = site_bundle_put_file(&b, entry, path);
    }
    if (!rc) { /* the programmers' boot manifest, once the OEM has signed one */
        rc = nu_path_fmt(path, sizeof(path), "%s/programmers/boot-manifest.img", dir);
        if (!rc && nu_path_exists(path))
            rc = site_bundle_put_file(&b, "programmers/boot-manifest.img", path);
    }
    if (!rc)
        rc = site__owners_of_site(dir, name, &owners);
    if (!rc)
        rc = site_bundle_put_str(&b, "owners", owners);
    if (!rc) {
        uint8_t *ep = NULL;
        size_t ep_len = 0;
        if (nu_paths_get(dir, NU_PATH_BROKER_ENDPOINT, path, sizeof(path)) == NU_OK &&
            nu_file_read(path, 256, &ep, &ep_len) == NU_OK)
            snprintf(endpoint, sizeof(endpoint), "%.*s", (int)strcspn((char *)ep, "\r\n"),
                     (char *)ep);
        free(ep);
    }
    if (!rc && endpoint[0])
        rc = site_bundle_put_str(&b, "cloud", endpoint);
    if (!rc)
        rc = site_bundle_write(&b, bundle_path, 0644);
    free(owners);
    site_bundle_free(&b);
    if (rc)
        site__say("export", "%s: %s (%s)", name, nu_err_str(rc), nu_err_name(rc));
    return rc;
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

/* One "topic nusec/v1/reply/PROG/# in 1" line per programmer DIR/broker/owners gives `name`. */
static int site__reply_topics(const char *dir, const char *name, char *out, size_t cap)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0, used = 0;
    int rc = nu_paths_get(dir, NU_PATH_BROKER_OWNERS, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, SITE__OWNERS_MAX, &text, &len);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK;
    if (rc)
        return rc;
    out[0] = '\0';
    for (char *save = NULL, *line = strtok_r((char *)text, "\n", &save); line && !rc;
         line = strtok_r(NULL, "\n", &save)) {
        char a[80], b[80];
        if (line[0] == '#' || sscanf(line, "%79s %79s", a, b) != 2 || strcmp(a, name) != 0)
            continue;
        if (!site__name_ok(b)) {
            rc = NU_ERR_DECODE;
            break;
        }
        int n = snprintf(out + used, cap - used, "topic nusec/v1/reply/%s/# in 1\n", b);
        if (n <= 0 || (size_t)n >= cap - used)
            rc = NU_ERR_TOO_LARGE;
        else
            used += (size_t)n;
    }
    free(text);
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
                 "# replies: the station's and each programmer the OEM gave this site (the\n"
                 "# cloud broker refuses the site any other reply subscription)\n"
                 "topic nusec/v1/reply/%s/# in 1\n",
                 name, SITE_QUEUE_MESSAGES, (unsigned long long)SITE_QUEUE_BYTES, name, cloud, name,
                 chain, cert, key, name, name, name, name);
    if (n <= 0 || (size_t)n >= cap)
        return NU_ERR_TOO_LARGE;
    return site__reply_topics(dir, name, out + n, cap - (size_t)n);
}

/* DIR/broker/mosquitto.conf of the site: the NuSEC template + the bridge. */
static int site__broker_conf(const char *dir, const char *name)
{
    enum { N = 13 };
    static const enum nu_path_kind kinds[N] = {
        NU_PATH_BROKER,          NU_PATH_CHAIN,         NU_PATH_BROKER_CERT,
        NU_PATH_BROKER_KEY,      NU_PATH_BROKER_DATA,   NU_PATH_BROKER_LOG,
        NU_PATH_BROKER_REVOKED,  NU_PATH_BROKER_OWNERS, NU_PATH_BROKER_CRL,
        NU_PATH_BROKER_ENDPOINT, NU_PATH_RUN,           NU_PATH_BROKER_CONF,
        NU_PATH_FLEET_CA,
    };
    char paths[N][PATH_MAX], host[256], port[16], cloud[300], pid_file[PATH_MAX + 16];
    char *bridge = NULL, endpoint[300];
    const size_t bridge_cap = 256u * 1024u;
    for (int i = 0; i < N; i++) {
        int rc = nu_paths_get(dir, kinds[i], paths[i], sizeof(paths[i]));
        if (rc)
            return rc;
    }
    int rc = site__conf_get(dir, "host", host, sizeof(host));
    if (!rc)
        rc = site__conf_get(dir, "port", port, sizeof(port));
    if (!rc)
        rc = site__conf_get(dir, "cloud", cloud, sizeof(cloud));
    if (!rc)
        rc = nu_path_fmt(pid_file, sizeof(pid_file), "%s/broker.pid", paths[10]);
    if (!rc && !(bridge = malloc(bridge_cap)))
        rc = NU_ERR_NOMEM;
    if (!rc)
        rc = site__bridge_section(dir, name, cloud, bridge, bridge_cap);
    if (rc) {
        free(bridge);
        return rc;
    }
    struct passwd *pw = getpwuid(geteuid());
    const char *plugin = getenv("NUSEC_AUTH_PLUGIN");
    const char *const vars[] = {
        "HOST",        host,     "PORT",         port,
        "CAFILE",      paths[1], "CERTFILE",     paths[2],
        "KEYFILE",     paths[3], "DIR",          paths[4],
        "LOG",         paths[5], "REVOKED_FILE", paths[6],
        "OWNERS_FILE", paths[7], "ISSUER_FILE",  paths[12],
        "CRL_LINE",    "",       "PLUGIN",       plugin && *plugin ? plugin : pki_default_plugin(),
        "PID_FILE",    pid_file, "USER",         pw ? pw->pw_name : "root",
        NULL,
    };
    char *conf = NULL;
    if ((rc = pki_fill_template(nusec_broker_conf_template, vars, &conf))) {
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
    rc = nu_file_write_atomic(paths[11], all, clen + blen, 0600);
    free(all);
    int n = snprintf(endpoint, sizeof(endpoint), "%s:%s\n", host, port);
    if (!rc)
        rc = nu_file_write_atomic(paths[9], endpoint, (size_t)n, 0644);
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

/* ---- commands -------------------------------------------------------------------------------- */

static int site__exit(int rc)
{
    if (rc == NU_OK)
        return CLI_EXIT_OK;
    return rc == NU_ERR_EXISTS ? CLI_EXIT_REFUSED : CLI_EXIT_FAIL;
}

/* argv[optind] as the one positional argument `what`. */
static int site__arg(int argc, char **argv, const char *cmd, const char *what, const char **out)
{
    if (optind + 1 != argc) {
        cli_errorf("site %s: expected one %s", cmd, what);
        return CLI_EXIT_USAGE;
    }
    *out = argv[optind];
    return 0;
}

static const char site__add_usage[] =
    "usage: nusec site add NAME [--dir DIR] [--cloud HOST:PORT] [--out FILE]\n"
    "\n"
    "OEM: admit a CM site. Mints its one-time enrolment token (only its SHA-256\n"
    "stays, in DIR/sites/NAME/token.sha256) and writes the enrolment file that\n"
    "goes to the CM (default ./NAME.enrol, 0600: the token, the site's name and\n"
    "the cloud broker's address the site dials).\n"
    "\n"
    "  --cloud HOST:PORT  the cloud broker as the site reaches it (default\n"
    "                     DIR/broker/endpoint; its TLS name must match: see\n"
    "                     `nusec pki init --host`)\n"
    "  --out FILE         where to write the enrolment\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage, 3 the site exists already.\n";

static int site__cmd_add(int argc, char **argv)
{
    const char *dir = NULL, *cloud = NULL, *out = NULL, *name = NULL;
    char def[PATH_MAX];
    const struct cli_opt opts[] = {CLI_OPT_STR("dir", &dir), CLI_OPT_STR("cloud", &cloud),
                                   CLI_OPT_STR("out", &out)};
    int rc = cli_opts_parse(argc, argv, site__add_usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = site__arg(argc, argv, "add", "NAME", &name)))
        return rc;
    if (!(dir = cli_state_dir(dir)))
        return CLI_EXIT_USAGE;
    if (!out) {
        snprintf(def, sizeof(def), "%s.enrol", name);
        out = def;
    }
    rc = site_add(dir, name, cloud, out);
    if (!rc)
        printf("site %s added; give %s to the CM (it holds the one-time token)\n", name, out);
    return site__exit(rc);
}

static const char site__join_usage[] =
    "usage: nusec site join ENROL-FILE [--dir DIR] [--host ADDR] [--port N] [--out FILE]\n"
    "\n"
    "CM: join the site an OEM enrolment file names. Makes three keys here, which\n"
    "never leave DIR: the station's (DIR/pki/clients/NAME.key), the site bridge's\n"
    "(DIR/site/bridge.key) and the site broker's server key (DIR/pki/broker.key).\n"
    "Writes the join request for the OEM (default ./NAME.join: the token and the\n"
    "three CSRs, CN = the site name, OU station / site / broker).\n"
    "\n"
    "  --host ADDR  the site broker's listen address, as programmers and the\n"
    "               station dial it (default 127.0.0.1)\n"
    "  --port N     its port (default: a free one)\n"
    "  --out FILE   where to write the join request\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage, 3 DIR has joined a site already.\n";

/* The default output of a command reading crossing file `in`: "NAME.ext"
 * for the site `in` names ("site.ext" when it names none or is unreadable:
 * the command itself then reports why). */
static const char *site__default_out(const char *in, const char *ext, char *def, size_t cap)
{
    char name[80];
    struct site_bundle b = {0};
    if (site_bundle_read(in, &b) || site_bundle_get_line(&b, "site", name, sizeof(name)) ||
        !site__name_ok(name))
        snprintf(name, sizeof(name), "site");
    site_bundle_free(&b);
    snprintf(def, cap, "%s.%s", name, ext);
    return def;
}

static int site__cmd_join(int argc, char **argv)
{
    const char *dir = NULL, *host = "127.0.0.1", *out = NULL, *enrol = NULL;
    unsigned port = 0;
    char def[PATH_MAX];
    const struct cli_opt opts[] = {CLI_OPT_STR("dir", &dir), CLI_OPT_STR("host", &host),
                                   CLI_OPT_NUM("port", &port, 1, 65535), CLI_OPT_STR("out", &out)};
    int rc = cli_opts_parse(argc, argv, site__join_usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = site__arg(argc, argv, "join", "ENROL-FILE", &enrol)))
        return rc;
    if (!(dir = cli_state_dir(dir)))
        return CLI_EXIT_USAGE;
    if (!out)
        out = site__default_out(enrol, "join", def, sizeof(def));
    rc = site_join(dir, enrol, host, (int)port, out);
    if (!rc)
        printf("joined; give %s to the OEM (CSRs only, no key)\n", out);
    return site__exit(rc);
}

static const char site__sign_usage[] =
    "usage: nusec site sign JOIN-FILE [--dir DIR] [--out FILE]\n"
    "\n"
    "OEM: check a CM's join request (the site's one-time token, CN = the site\n"
    "name, OU station / site / broker, P-256, self-signed CSRs) and sign its\n"
    "CSRs with the Fleet CA in the HSM. Registers the site's station for the\n"
    "cloud (DIR/pki/clients/NAME.crt and cloud.conf station_ids: restart the\n"
    "cloud) and writes the site bundle for the CM (default ./NAME.bundle).\n"
    "\n"
    "Exit status: 0 done, 1 failed or refused (wrong or used token, bad CSR),\n"
    "2 usage.\n";

static int site__cmd_sign(int argc, char **argv)
{
    const char *dir = NULL, *out = NULL, *req = NULL;
    char def[PATH_MAX];
    const struct cli_opt opts[] = {CLI_OPT_STR("dir", &dir), CLI_OPT_STR("out", &out)};
    int rc = cli_opts_parse(argc, argv, site__sign_usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = site__arg(argc, argv, "sign", "JOIN-FILE", &req)))
        return rc;
    if (!(dir = cli_state_dir(dir)))
        return CLI_EXIT_USAGE;
    if (!out)
        out = site__default_out(req, "bundle", def, sizeof(def));
    rc = site_sign(dir, req, out);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

static const char site__assign_usage[] =
    "usage: nusec site assign NAME PROGRAMMER... [--dir DIR] [--out FILE]\n"
    "\n"
    "OEM: site NAME owns these programmers: lines \"NAME PROGRAMMER\" in the cloud\n"
    "broker's ownership table (the site may carry only their traffic), and the\n"
    "site's bundle written again (default ./NAME.bundle) for `nusec site init`.\n"
    "A programmer another site owns is refused.\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage, 3 owned by another site.\n";

static int site__cmd_assign(int argc, char **argv)
{
    const char *dir = NULL, *out = NULL;
    char def[PATH_MAX];
    const struct cli_opt opts[] = {CLI_OPT_STR("dir", &dir), CLI_OPT_STR("out", &out)};
    int rc = cli_opts_parse(argc, argv, site__assign_usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind + 2 > argc) {
        cli_errorf("site assign: expected NAME and at least one PROGRAMMER");
        return CLI_EXIT_USAGE;
    }
    if (!(dir = cli_state_dir(dir)))
        return CLI_EXIT_USAGE;
    const char *name = argv[optind];
    for (int i = optind + 1; i < argc && !rc; i++)
        rc = site_assign(dir, name, argv[i]);
    if (!out) {
        snprintf(def, sizeof(def), "%s.bundle", name);
        out = def;
    }
    if (!rc)
        rc = site_export(dir, name, out);
    if (!rc)
        printf("site %s: ownership recorded; give %s to the CM (nusec site init)\n", name, out);
    return site__exit(rc);
}

static const char site__export_usage[] =
    "usage: nusec site export NAME [--dir DIR] [--out FILE]\n"
    "\n"
    "OEM: write site NAME's bundle again (default ./NAME.bundle): the OEM's public\n"
    "certificates and keys, the site's three certificates, its ownership table\n"
    "and the programmers' boot manifest. Nothing secret is in it.\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage.\n";

static int site__cmd_export(int argc, char **argv)
{
    const char *dir = NULL, *out = NULL, *name = NULL;
    char def[PATH_MAX];
    const struct cli_opt opts[] = {CLI_OPT_STR("dir", &dir), CLI_OPT_STR("out", &out)};
    int rc = cli_opts_parse(argc, argv, site__export_usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = site__arg(argc, argv, "export", "NAME", &name)))
        return rc;
    if (!(dir = cli_state_dir(dir)))
        return CLI_EXIT_USAGE;
    if (!out) {
        snprintf(def, sizeof(def), "%s.bundle", name);
        out = def;
    }
    return site__exit(site_export(dir, name, out));
}

static const char site__init_usage[] =
    "usage: nusec site init BUNDLE-FILE [--dir DIR]\n"
    "\n"
    "CM: install the OEM's site bundle (after `nusec site join` in DIR; run again\n"
    "with each new bundle) and write the site broker's configuration\n"
    "DIR/broker/mosquitto.conf: the nusec_auth plugin for the local identities\n"
    "(programmers, the station, monitors) and a bridge to the cloud broker\n"
    "(MQTT 5, mTLS as the site, persistent sessions, queues for hours of WAN\n"
    "outage, only the site's topics; docs/sites.md). Start it with\n"
    "`mosquitto -c DIR/broker/mosquitto.conf`.\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage.\n";

static int site__cmd_init(int argc, char **argv)
{
    const char *dir = NULL, *bundle = NULL;
    const struct cli_opt opts[] = {CLI_OPT_STR("dir", &dir)};
    int rc = cli_opts_parse(argc, argv, site__init_usage, opts, CLI_OPTS_N(opts));
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = site__arg(argc, argv, "init", "BUNDLE-FILE", &bundle)))
        return rc;
    if (!(dir = cli_state_dir(dir)))
        return CLI_EXIT_USAGE;
    rc = site_init(dir, bundle);
    if (!rc)
        printf("site broker configured: %s/broker/mosquitto.conf\n", dir);
    return site__exit(rc);
}

const struct cli_command cli_site_commands[] = {
    {"site", "add", "OEM: admit a CM site (one-time enrolment file)", site__cmd_add},
    {"site", "join", "CM: make the site's keys and the join request", site__cmd_join},
    {"site", "sign", "OEM: sign a site's join request in the HSM, write its bundle",
     site__cmd_sign},
    {"site", "assign", "OEM: give programmers to a site", site__cmd_assign},
    {"site", "export", "OEM: write a site's bundle again", site__cmd_export},
    {"site", "init", "CM: install the bundle, write the site broker + bridge config",
     site__cmd_init},
    {NULL, NULL, NULL, NULL},
};
