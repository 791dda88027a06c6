/* nusec package inspect|import|list */
#include "cli.h"
#include "cli_json.h"
#include "cli_opts.h"

#include "station_db.h"
#include "station_event.h"
#include "station_import.h"
#include "station_pkg.h"
#include "station_progress.h"

#include "nu_err.h"
#include "nu_util.h"

#include <getopt.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char cli__inspect_usage[] =
    "usage: nusec package inspect FILE [--dir DIR] [--json]\n"
    "\n"
    "Show the clear summary of a sealed production package (.nspkg) and whether it\n"
    "is intact: the OEM's package key (DIR/pki/package-key.pem) must have signed\n"
    "exactly these bytes. The secrets inside (firmware key and token, device chain)\n"
    "are sealed to the programmer's KeyStore and cannot be shown.\n"
    "\n"
    "  --dir DIR   state directory holding pki/package-key.pem (default: $NUSEC_HOME)\n"
    "  --json      one JSON object instead of text\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 intact and current, 1 tampered, expired, malformed or unreadable,\n"
    "2 usage error.\n";

static const char cli__import_usage[] =
    "usage: nusec package import FILE... [--json] [--dir DIR]\n"
    "\n"
    "Admit sealed production packages into the station (DIR/station/station.db,\n"
    "copies under DIR/station/packages/). Each package must be intact, current,\n"
    "and new: a package id, or a job + programmer pair, is imported once.\n"
    "Refused packages change nothing. Start production with\n"
    "`nusec production start --job JOB`.\n"
    "\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  --json      one JSON array of what was imported: {\"file\",\"job\",\"programmer\",\n"
    "              \"limit\"}; a refusal ends it with {\"error\":{...}} (docs/cli.md)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 all imported, 1 a package was refused (tampered, expired,\n"
    "malformed, job done) or could not be read, 2 usage error, 3 only duplicates\n"
    "were refused (already imported).\n";

static const char cli__list_usage[] =
    "usage: nusec package list [--dir DIR] [--json]\n"
    "\n"
    "List the packages imported into the station, with their job's state.\n"
    "\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  --json      one JSON array of objects {\"package_id\",\"job\",\"programmer\",\n"
    "              \"limit\",\"expires_at_ms\",\"job_state\",\"delivered_at_ms\",\n"
    "              \"finished\",\"error\"} on one line (docs/cli.md)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 listed, 1 failed, 2 usage error.\n";

/* Shared option parsing of the three subcommands. */
struct cli__pkg_opts {
    const char *dir;
    int json;
    int first_arg;
};

static int cli__pkg_parse(int argc, char **argv, const char *usage, int allow_json,
                          struct cli__pkg_opts *o)
{
    const struct cli_opt opts[] = {
        CLI_OPT_STR("dir", &o->dir),
        CLI_OPT_BOOL("json", &o->json), /* last: left out where it means nothing */
    };
    memset(o, 0, sizeof(*o));
    int rc = cli_opts_parse(argc, argv, usage, opts, CLI_OPTS_N(opts) - !allow_json);
    if (rc)
        return rc;
    o->first_arg = optind;
    if (!(o->dir = cli_state_dir(o->dir)))
        return CLI_EXIT_USAGE;
    return CLI_EXIT_OK;
}

static const char *cli__verdict(int rc, const struct station_pkg *p)
{
    if (rc == NU_OK)
        return "intact";
    if (rc == NU_ERR_TAMPERED)
        return "TAMPERED";
    if (rc == NU_ERR_EXPIRED)
        return "intact, EXPIRED";
    if (rc == NU_ERR_NOT_SUPPORTED && p->intact)
        return "intact, unsupported format";
    return "MALFORMED (not a NuSEC package)";
}

static void cli__inspect_json(const char *file, int rc, const struct station_pkg *p)
{
    char id[2 * STATION_PKG_ID_LEN + 1] = "";
    printf("{");
    cli_json_fkv(stdout, "file", file, 1);
    if (p->summary_ok) {
        nu_hex_encode(p->package_id, sizeof(p->package_id), id, sizeof(id));
        cli_json_fkv(stdout, "package_id", id, 0);
        cli_json_fkv(stdout, "job", p->job_id, 0);
        cli_json_fkv(stdout, "programmer", p->programmer_id, 0);
        printf(",\"limit\":%" PRIu32, p->limit);
        cli_json_fkv(stdout, "firmware", p->firmware, 0);
        printf(",\"created_at_ms\":%" PRIu64 ",\"expires_at_ms\":%" PRIu64 ",\"format\":%" PRIu32
               ",\"sealed_bytes\":%zu",
               p->created_at_ms, p->expires_at_ms, p->format, p->sealed_len);
    }
    printf(",\"intact\":%s,\"expired\":%s", p->intact ? "true" : "false",
           rc == NU_ERR_EXPIRED ? "true" : "false");
    cli_json_fkv(stdout, "verdict", cli__verdict(rc, p), 0);
    printf("}\n"); /* the error's name is in the error line that follows (docs/cli.md) */
}

static void cli__inspect_text(const char *file, int rc, const struct station_pkg *p, uint64_t now)
{
    char id[2 * STATION_PKG_ID_LEN + 1], created[40], expires[40], left[32];
    printf("file        %s\n", file);
    if (p->summary_ok) {
        nu_hex_encode(p->package_id, sizeof(p->package_id), id, sizeof(id));
        station_time_iso(p->created_at_ms, created, sizeof(created));
        station_time_iso(p->expires_at_ms, expires, sizeof(expires));
        int64_t s = p->expires_at_ms > now ? (int64_t)((p->expires_at_ms - now) / 1000u)
                                           : -(int64_t)((now - p->expires_at_ms) / 1000u);
        station_duration(s >= 0 ? s : -s, left, sizeof(left));
        printf("package id  %s\n"
               "job         %s\n"
               "programmer  %s\n"
               "limit       %" PRIu32 " devices\n"
               "firmware    %s\n"
               "created     %s\n",
               id, p->job_id, p->programmer_id, p->limit, p->firmware[0] ? p->firmware : "-",
               created);
        if (s >= 0)
            printf("expires     %s (in %s)\n", expires, left);
        else
            printf("expires     %s (EXPIRED %s ago)\n", expires, left);
        printf("format      %" PRIu32 "\n"
               "secrets     %zu bytes sealed to %s's KeyStore (not readable here)\n",
               p->format, p->sealed_len, p->programmer_id);
    }
    printf("verdict     %s\n", cli__verdict(rc, p));
}

static int cli__inspect(int argc, char **argv)
{
    struct cli__pkg_opts o;
    struct station_pkg p;
    uint8_t pub[NU_P256_PUB_LEN];
    int rc = cli__pkg_parse(argc, argv, cli__inspect_usage, 1, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (argc - o.first_arg != 1) {
        cli_errorf("package inspect: give exactly one FILE");
        return CLI_EXIT_USAGE;
    }
    const char *file = argv[o.first_arg];
    if ((rc = station_pkg_signer_load(o.dir, pub)) != NU_OK)
        return cli_fail("package inspect: package key (DIR/pki/package-key.pem)", rc);
    uint64_t now = nu_time_ms();
    rc = station_pkg_read(file, pub, now, &p, NULL, NULL);
    if (rc == NU_ERR_NOT_FOUND || rc == NU_ERR_PERMISSION || rc == NU_ERR_IO ||
        (rc == NU_ERR_TOO_LARGE && !p.summary_ok)) {
        char what[600];
        snprintf(what, sizeof(what), "package inspect: %s", file);
        return cli_fail(what, rc);
    }
    if (o.json)
        cli__inspect_json(file, rc, &p);
    else
        cli__inspect_text(file, rc, &p, now);
    if (rc != NU_OK) {
        char what[600];
        snprintf(what, sizeof(what), "package inspect: %s", file);
        return cli_fail(what, rc);
    }
    return CLI_EXIT_OK;
}

static void cli__import_refused(const char *file, int rc, int conflict, const struct station_pkg *p)
{
    if (rc == NU_ERR_EXISTS && conflict == STATION_IMPORT_SAME_PACKAGE)
        cli_errorc(rc, "%s: already imported (job %s, programmer %s); nothing changed", file,
                   p->job_id, p->programmer_id);
    else if (rc == NU_ERR_EXISTS)
        cli_errorc(rc, "%s: refused: job %s already has a package for %s", file, p->job_id,
                   p->programmer_id);
    else if (rc == NU_ERR_TAMPERED)
        cli_errorc(rc, "%s: refused: TAMPERED: the package key's signature does not match", file);
    else if (rc == NU_ERR_EXPIRED)
        cli_errorc(rc, "%s: refused: EXPIRED: job %s for %s", file, p->job_id, p->programmer_id);
    else if (rc == NU_ERR_STATE)
        cli_errorc(rc, "%s: refused: job %s is done", file, p->job_id);
    else
        cli_errorc(rc, "%s: refused: %s (%s)", file, nu_err_str(rc), nu_err_name(rc));
}

static int cli__import(int argc, char **argv)
{
    struct cli__pkg_opts o;
    struct station_pkg p;
    struct station_db *db = NULL;
    uint8_t pub[NU_P256_PUB_LEN];
    int rc = cli__pkg_parse(argc, argv, cli__import_usage, 1, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (o.first_arg >= argc) {
        cli_errorf("package import: give at least one FILE");
        return CLI_EXIT_USAGE;
    }
    if ((rc = station_pkg_signer_load(o.dir, pub)) != NU_OK)
        return cli_fail("package import: package key (DIR/pki/package-key.pem)", rc);
    if ((rc = station_db_open_dir(o.dir, &db)) != NU_OK)
        return cli_fail("package import: station.db", rc);
    int failed = 0, duplicates = 0, imported = 0;
    for (int i = o.first_arg; i < argc; i++) {
        int conflict = 0;
        rc = station_import(o.dir, db, pub, argv[i], nu_time_ms(), &p, &conflict);
        if (rc == NU_OK && o.json) { /* the list of what was imported (docs/cli.md) */
            printf("%s{", imported++ ? "," : "[");
            cli_json_fkv(stdout, "file", argv[i], 1);
            cli_json_fkv(stdout, "job", p.job_id, 0);
            cli_json_fkv(stdout, "programmer", p.programmer_id, 0);
            printf(",\"limit\":%" PRIu32 "}", p.limit);
        }
        if (rc == NU_OK) {
            if (!o.json)
                printf("imported %s: job %s, programmer %s, limit %" PRIu32 "\n", argv[i], p.job_id,
                       p.programmer_id, p.limit);
            continue;
        }
        cli__import_refused(argv[i], rc, conflict, &p);
        if (rc == NU_ERR_EXISTS)
            duplicates++;
        else
            failed++;
    }
    station_db_close(db);
    if (o.json)
        fputs(imported ? "]\n" : "[]\n", stdout);
    return failed ? CLI_EXIT_FAIL : duplicates ? CLI_EXIT_REFUSED : CLI_EXIT_OK;
}

struct cli__list_ctx {
    struct station_db *db;
    int json;
    int n;
};

static int cli__list_one(void *ctx, const struct station_package *p)
{
    struct cli__list_ctx *l = ctx;
    struct station_job job;
    char id[2 * STATION_PKG_ID_LEN + 1], expires[40];
    if (station_db_job_get(l->db, p->job_id, &job) != NU_OK)
        memset(&job, 0, sizeof(job));
    nu_hex_encode(p->package_id, sizeof(p->package_id), id, sizeof(id));
    station_time_iso(p->expires_at_ms, expires, sizeof(expires));
    if (l->json) {
        printf("%s{", l->n ? "," : "");
        cli_json_fkv(stdout, "package_id", id, 1);
        cli_json_fkv(stdout, "job", p->job_id, 0);
        cli_json_fkv(stdout, "programmer", p->programmer_id, 0);
        printf(",\"limit\":%" PRIu32 ",\"expires_at_ms\":%" PRIu64, p->limit, p->expires_at_ms);
        cli_json_fkv(stdout, "job_state", station_job_state_name(job.state), 0);
        printf(",\"delivered_at_ms\":%" PRIu64 ",\"finished\":%s", p->delivered_at_ms,
               p->finished ? "true" : "false");
        cli_json_fkv(stdout, "error", p->last_error, 0);
        printf("}");
    } else {
        if (l->n == 0)
            printf("%-20s %-16s %7s  %-8s  %-24s %s\n", "JOB", "PROGRAMMER", "LIMIT", "STATE",
                   "EXPIRES", "PACKAGE");
        printf("%-20s %-16s %7" PRIu32 "  %-8s  %-24s %.16s%s\n", p->job_id, p->programmer_id,
               p->limit, station_job_state_name(job.state), expires, id,
               p->last_error[0] ? "  (!)" : "");
    }
    l->n++;
    return NU_OK;
}

static int cli__list(int argc, char **argv)
{
    struct cli__pkg_opts o;
    struct cli__list_ctx l = {0};
    int rc = cli__pkg_parse(argc, argv, cli__list_usage, 1, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (o.first_arg < argc) {
        cli_errorf("package list: unexpected argument '%s'", argv[o.first_arg]);
        return CLI_EXIT_USAGE;
    }
    if ((rc = station_db_open_dir_existing(o.dir, &l.db)) == NU_ERR_NOT_FOUND) {
        fputs(o.json ? "[]\n" : "no package imported (nusec package import FILE...)\n", stdout);
        return CLI_EXIT_OK;
    }
    if (rc != NU_OK)
        return cli_fail("package list: station.db", rc);
    l.json = o.json;
    if (o.json)
        printf("[");
    rc = station_db_packages(l.db, NULL, cli__list_one, &l);
    station_db_close(l.db);
    if (o.json)
        printf("]\n"); /* a list is one array on one line (docs/cli.md) */
    if (rc)
        return cli_fail("package list", rc);
    if (!l.n && !o.json)
        printf("no package imported (nusec package import FILE...)\n");
    return CLI_EXIT_OK;
}

const struct cli_command cli_package_commands[] = {
    {"package", "inspect", "show a package's clear summary and whether it is intact", cli__inspect},
    {"package", "import", "admit packages into the station (refuses tampered, expired, dups)",
     cli__import},
    {"package", "list", "list the packages imported into the station", cli__list},
    {NULL, NULL, NULL, NULL},
};
