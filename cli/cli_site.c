/* nusec site add|join|sign|assign|export|init — a CM site on its own machine (cli_site.h). */
#include "cli.h"
#include "cli_opts.h"
#include "cli_site.h"
#include "site_bundle.h"
#include "pki_init.h"

#include "broker_conf_template.h"
#include "station_owners.h"

#include "ledger.h"
#include "nu_config.h"
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
#include "cli_site_int.h"

/* Identities the OEM's own roles use: a site may not take one of their names. */
static const char *const site__reserved[] = {"cloud", "station", "monitor", "oem", "broker"};

void site__say(const char *what, const char *fmt, ...)
{
    va_list ap;
    fprintf(stderr, "nusec: site %s: ", what);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

/* [A-Za-z0-9._-]{1,64}: what the broker accepts as a CN (broker/acl.h). */
int site__name_ok(const char *s)
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

int site__oem_path(const char *dir, const char *name, const char *file, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/" SITE_OEM_FOLDER "/%s%s%s", dir, name, file ? "/" : "",
                       file ? file : "");
}

int site__cm_path(const char *dir, const char *file, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/" SITE_CM_FOLDER "/%s", dir, file);
}

int site__write_text(const char *path, const char *text, mode_t mode)
{
    return nu_file_write_atomic(path, text, strlen(text), mode);
}

/*
 * The OEM's record of what its `site` commands did and refused, one JSON
 * object per line in DIR/sites/audit.jsonl (append-only, fsync'd): the join
 * request is outside input, and the ledger's chain belongs to the cloud
 * agent. Untrusted strings are escaped by nu_json. Failure to write is
 * reported, never hidden.
 */
/*
 * The same record in the ledger's hash chain (kind = the event, actor "oem",
 * payload = the JSON object), where `nusec audit verify` covers it: the
 * ledger cloud.conf names (the SQLite file DIR/cloud/ledger.db, or the
 * PostgreSQL target with its ledger_password_file), if it exists already.
 * Appending takes the chain head in its own transaction, as a cloud agent
 * does, so the running cloud may write at the same time. audit.jsonl stays
 * the record of what could not reach the ledger (before the cloud ever ran,
 * or with the ledger down): this says so on stderr, never fails the command.
 */
static void site__audit_ledger(const char *dir, const char *event, const char *json, size_t len)
{
    char conf[PATH_MAX], target[PATH_MAX], err[256];
    struct nu_config *cfg = NULL;
    struct cloud_ledger *ledger = NULL;
    const char *pw = NULL;
    int rc = nu_path_fmt(conf, sizeof(conf), "%s/cloud/cloud.conf", dir);
    if (!rc && nu_path_exists(conf))
        rc = nu_config_load(conf, &cfg, err, sizeof(err));
    const char *kind = cfg ? nu_config_get_str(cfg, "ledger", "sqlite") : "sqlite";
    if (!rc && strcmp(kind, "sqlite") == 0) {
        rc = nu_paths_get(dir, NU_PATH_LEDGER, target, sizeof(target));
        if (!rc && !nu_path_exists(target))
            rc = NU_ERR_NOT_FOUND; /* never create a ledger from here */
    } else if (!rc) {
        rc = nu_path_fmt(target, sizeof(target), "%s", kind);
        pw = nu_config_get_str(cfg, "ledger_password_file", "");
        pw = pw && *pw ? pw : NULL;
    }
    if (!rc)
        rc = cloud_ledger_connect(target, pw, 0, &ledger);
    struct cloud_ledger_event ev = {
        .ts_ms = nu_time_ms(), .kind = event, .actor = "oem", .payload = json, .payload_len = len};
    if (!rc)
        rc = cloud_ledger_audit_append(ledger, &ev, NULL);
    if (rc && rc != NU_ERR_NOT_FOUND)
        site__say("audit",
                  "%s not in the ledger's audit chain (%s): kept in %s/" SITE_OEM_FOLDER
                  "/audit.jsonl only",
                  event, nu_err_name(rc), dir);
    cloud_ledger_close(ledger);
    nu_config_destroy(cfg);
}

void site__audit(const char *dir, const char *event, const char *site, const char *other, int code,
                 const char *detail)
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
    if (nu_json_ok(&j))
        site__audit_ledger(dir, event, buf, j.len - 1); /* without the newline */
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
    "cloud (DIR/pki/clients/NAME.crt, DIR/sites/NAME/station.crt: a running\n"
    "cloud takes it at the station's first request, no restart) and writes the\n"
    "site bundle for the CM (default ./NAME.bundle).\n"
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
