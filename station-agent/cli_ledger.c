/* nusec ledger init|migrate — the ledger's schema, made by its owner role. */
#include "cli.h"
#include "cli_opts.h"

#include "ledger.h"
#include "nu_err.h"

#include <stdio.h>
#include <string.h>

static const char cli__ledger_usage[] =
    "usage: nusec ledger init|migrate --ledger TARGET [--agent-role ROLE]\n"
    "                                 [--password-file FILE]\n"
    "\n"
    "Create (init) or bring to this program's schema version (migrate) the ledger\n"
    "at TARGET: a file path (SQLite), or a PostgreSQL URI such as\n"
    "postgresql://owner@db1,db2/nusec?target_session_attrs=read-write, run as the\n"
    "role that owns the schema. Both are idempotent and safe while agents run (one\n"
    "migration at a time, under an advisory lock). On PostgreSQL, --agent-role\n"
    "grants the cloud agents' role its least privilege: rows in, counters and\n"
    "states moved, never an UPDATE or DELETE of audit_events nor of a\n"
    "certificate's issued identity. Agents refuse to start on an absent or\n"
    "older schema and name this command.\n"
    "\n"
    "  --ledger TARGET      the ledger (required)\n"
    "  --agent-role ROLE    PostgreSQL role of the cloud agents to grant\n"
    "  --password-file FILE the owner's password (a 0600 file; else PGPASSFILE;\n"
    "                       never in the URI)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 done, 1 failed (the message names the problem), 2 usage error.\n";

static int cli__ledger_init(int argc, char **argv)
{
    const char *ledger = NULL, *role = NULL, *pw = NULL;
    const struct cli_opt options[] = {
        CLI_OPT_STR("ledger", &ledger),
        CLI_OPT_STR("agent-role", &role),
        CLI_OPT_STR("password-file", &pw),
    };
    int prc = cli_opts_parse(argc, argv, cli__ledger_usage, options, CLI_OPTS_N(options));
    if (prc)
        return prc < 0 ? CLI_EXIT_OK : prc;
    if (!ledger) {
        cli_errorf("ledger %s: --ledger TARGET is required", argv[0]);
        return CLI_EXIT_USAGE;
    }
    int rc = cloud_ledger_init(ledger, pw, role);
    if (rc)
        return cli_fail("ledger init", rc);
    printf("ledger %s: schema version %d%s%s\n", ledger, CLOUD_LEDGER_SCHEMA_VERSION,
           role ? ", granted to " : "", role ? role : "");
    return CLI_EXIT_OK;
}

const struct cli_command cli_ledger_commands[] = {
    {"ledger", "init", "create the ledger's schema (owner role), grant the agents", cli__ledger_init},
    {"ledger", "migrate", "bring the ledger's schema to this version", cli__ledger_init},
    {NULL, NULL, NULL, NULL},
};
