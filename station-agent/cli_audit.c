/* nusec audit verify — check the cloud's ledger file directly (no cloud needed). */
#include "cli.h"

#include "ledger.h"
#include "nu_err.h"
#include "nu_paths.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>

static const char cli__verify_usage[] =
    "usage: nusec audit verify [--json] [--dir DIR]\n"
    "\n"
    "Check DIR/cloud/ledger.db, opened read-only: recompute the audit hash chain\n"
    "(seq contiguous, every hash and link, the stored chain head), pair every\n"
    "certificate with its cert.issued event and back, check each job's issued\n"
    "count against its certificates, allocations and quota, and that the schema\n"
    "and its protective triggers are in place. Any edit made behind the cloud's\n"
    "back (sqlite3 UPDATE/DELETE, a cut tail) shows. Works while the cloud runs.\n"
    "\n"
    "  --json      one JSON object instead of the text report\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 the ledger is intact, 1 a check failed (the first bad seq and\n"
    "the first finding are printed) or the ledger could not be read, 2 usage error.\n";

static const char *cli__ok(int ok)
{
    return ok ? "ok" : "FAILED";
}

/* JSON string body: the finding text comes from the ledger, the path from the user. */
static void cli__json_str(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
}

static void cli__print_text(const char *path, const struct cloud_ledger_verify_report *r, int ok)
{
    printf("ledger        %s\n", path);
    printf("events        %llu\n", (unsigned long long)r->events);
    printf("certificates  %llu\n", (unsigned long long)r->certificates);
    printf("jobs          %llu\n", (unsigned long long)r->jobs);
    printf("chain         %s\n", cli__ok(r->chain_ok));
    printf("cert events   %s\n", cli__ok(r->certs_ok));
    printf("counts        %s\n", cli__ok(r->counts_ok));
    printf("schema        %s\n", cli__ok(r->schema_ok));
    if (r->first_bad_seq)
        printf("first bad seq %llu\n", (unsigned long long)r->first_bad_seq);
    if (r->problems)
        printf("problems      %u, first: %s\n", r->problems, r->first_problem);
    printf("result        %s\n", ok ? "INTACT" : "TAMPERED");
}

static void cli__print_json(const char *path, const struct cloud_ledger_verify_report *r, int ok)
{
    printf("{\"ledger\":\"");
    cli__json_str(path);
    printf("\",\"ok\":%s,\"events\":%llu,\"certificates\":%llu,\"jobs\":%llu,"
           "\"chain_ok\":%s,\"certs_ok\":%s,\"counts_ok\":%s,\"schema_ok\":%s,"
           "\"first_bad_seq\":%llu,\"problems\":%u,\"first_problem\":\"",
           ok ? "true" : "false", (unsigned long long)r->events,
           (unsigned long long)r->certificates, (unsigned long long)r->jobs,
           r->chain_ok ? "true" : "false", r->certs_ok ? "true" : "false",
           r->counts_ok ? "true" : "false", r->schema_ok ? "true" : "false",
           (unsigned long long)r->first_bad_seq, r->problems);
    cli__json_str(r->first_problem);
    printf("\"}\n");
}

static int cli__verify(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"json", no_argument, NULL, 'j'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *dir_opt = NULL;
    int json = 0, c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dir_opt = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            fputs(cli__verify_usage, stdout);
            return CLI_EXIT_OK;
        default:
            fputs(cli__verify_usage, stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_errorf("audit verify: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    const char *dir = cli_state_dir(dir_opt);
    if (!dir)
        return CLI_EXIT_USAGE;
    char path[PATH_MAX];
    struct cloud_ledger_verify_report report;
    memset(&report, 0, sizeof(report));
    int rc = nu_paths_get(dir, NU_PATH_LEDGER, path, sizeof(path));
    if (!rc)
        rc = cloud_ledger_verify_path(path, &report);
    if (rc && rc != NU_ERR_TAMPERED) {
        cli_errorf("audit verify: %s", path);
        return cli_fail("audit verify", rc);
    }
    if (json)
        cli__print_json(path, &report, rc == NU_OK);
    else
        cli__print_text(path, &report, rc == NU_OK);
    if (rc)
        cli_errorf("audit verify: the ledger fails its checks%s%s",
                   report.first_problem[0] ? ": " : "", report.first_problem);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

const struct cli_command cli_audit_commands[] = {
    {"audit", "verify", "check the ledger's hash chain and cross-checks", cli__verify},
    {NULL, NULL, NULL, NULL},
};
