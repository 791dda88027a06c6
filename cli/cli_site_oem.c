/* nusec site add|sign|assign|export — the OEM's side of a CM site (cli_site.h). */
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

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdarg.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#include "cli_site_int.h"

static int site__owner_of(const char *dir, const char *programmer, char *out, size_t cap);

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
    if (!rc) /* the name the site's bridge dials: no site broker may carry it */
        rc = site__oem_path(dir, name, "cloud.endpoint", path, sizeof(path));
    if (!rc)
        rc = site__write_text(path, endpoint, 0600);
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

/* The host part of HOST:PORT (or [V6]:PORT) into out[cap]. */
static void site__endpoint_host(const char *ep, char *out, size_t cap)
{
    const char *colon = strrchr(ep, ':');
    size_t n = colon ? (size_t)(colon - ep) : strlen(ep);
    if (n >= 2 && ep[0] == '[' && ep[n - 1] == ']')
        ep++, n -= 2;
    snprintf(out, cap, "%.*s", (int)n, ep);
}

static int site__loopback(const char *host)
{
    return !strcmp(host, "localhost") || !strncmp(host, "127.", 4) || !strcmp(host, "::1");
}

/* 1 when file (an endpoint, or a bare host when !is_endpoint) names host. */
static int site__file_names(const char *file, int is_endpoint, const char *host)
{
    uint8_t *text = NULL;
    size_t len = 0;
    char line[300], h[300];
    if (nu_file_read(file, 1024, &text, &len) != NU_OK)
        return 0;
    snprintf(line, sizeof(line), "%.*s", (int)strcspn((char *)text, "\r\n"), (char *)text);
    free(text);
    if (is_endpoint)
        site__endpoint_host(line, h, sizeof(h));
    else
        snprintf(h, sizeof(h), "%s", line);
    return strcasecmp(h, host) == 0;
}

/*
 * The site broker's certificate names the host the CM put in its join
 * request, and every bridge trusts the Fleet CA that signs it: named after
 * the cloud broker (or another site's broker), it would let the CM pose as
 * that broker to other sites on the WAN path. So a name the cloud's bridges
 * dial, or another site's broker has, is refused (loopback, one machine, is
 * no such path). Returns NU_OK or NOT_AUTHORIZED (said).
 */
static int site__broker_host_ok(const char *dir, const char *name, const char *host)
{
    char path[PATH_MAX], folder[PATH_MAX];
    if (site__loopback(host))
        return NU_OK;
    int taken = (nu_paths_get(dir, NU_PATH_BROKER_ENDPOINT, path, sizeof(path)) == NU_OK &&
                 site__file_names(path, 1, host));
    if (!taken && site__oem_path(dir, "", NULL, folder, sizeof(folder)) == NU_OK) {
        DIR *d = opendir(folder);
        struct dirent *e;
        while (!taken && d && (e = readdir(d))) {
            if (e->d_name[0] == '.')
                continue;
            if (site__oem_path(dir, e->d_name, "cloud.endpoint", path, sizeof(path)) == NU_OK &&
                site__file_names(path, 1, host))
                taken = 1;
            else if (strcmp(e->d_name, name) != 0 &&
                     site__oem_path(dir, e->d_name, "broker-host", path, sizeof(path)) == NU_OK &&
                     site__file_names(path, 0, host))
                taken = 1;
        }
        if (d)
            closedir(d);
    }
    if (!taken)
        return NU_OK;
    site__say("sign",
              "site %s asks for a broker certificate named %s, a name the cloud broker "
              "or another site's broker has: refused",
              name, host);
    return NU_ERR_NOT_AUTHORIZED;
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
    if ((rc = site__broker_host_ok(dir, name, host)))
        goto out;
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
    /* The cloud checks the site station's signatures with this certificate; it
     * finds it (and sites/NAME/station.crt) on every request: no restart. */
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
    if (!rc && (rc = site__oem_path(dir, name, "broker-host", path, sizeof(path))) == NU_OK)
        rc = site__write_text(path, host, 0600);
    if (!rc)
        rc = site__publish_lists_on(dir);
    if (!rc)
        rc = site_export(dir, name, bundle_path);
    if (!rc)
        site__audit(dir, "site.signed", name, NULL, NU_OK, NULL);
    if (!rc)
        printf("site %s signed (station, site bridge, site broker certificates; the site "
               "broker's is for %s); the running cloud knows the station %s now\n",
               name, host, name);
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
