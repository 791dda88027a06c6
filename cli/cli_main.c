/* nusec — the operator CLI shared by the OEM and the CM. */
#include "cli.h"
#include "cli_json.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"
#include "nu_version.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

static const struct cli_command *const cli__tables[] = {
    cli_pki_commands,     cli_programmer_commands, cli_firmware_commands, cli_job_commands,
    cli_package_commands, cli_device_commands,     cli_audit_commands,      cli_production_commands,
    cli_stack_commands,   cli_monitor_commands, cli_report_commands,    cli_dashboard_commands,
    cli_ledger_commands,
    cli_site_commands,
    NULL,
};

/* The one way a message reaches stderr; with --json it is also the
 * candidate for the final error line (cli_json.h). */
static void cli__message(int nu_code, const char *fmt, va_list ap)
{
    char msg[1024];
    vsnprintf(msg, sizeof(msg), fmt, ap);
    fprintf(stderr, "nusec: %s\n", msg);
    cli_json_note(nu_code, msg);
}

void cli_errorf(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli__message(-1, fmt, ap);
    va_end(ap);
}

void cli_errorc(int nu_code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    cli__message(nu_code, fmt, ap);
    va_end(ap);
}

int cli_fail(const char *what, int nu_code)
{
    cli_errorc(nu_code, "%s: %s (%s)", what, nu_err_str(nu_code), nu_err_name(nu_code));
    return nu_code == NU_ERR_EXISTS ? CLI_EXIT_REFUSED : CLI_EXIT_FAIL;
}

const char *cli_state_dir(const char *opt_dir)
{
    const char *dir = nu_state_dir(opt_dir);
    if (!dir)
        cli_errorf("no state directory: pass --dir DIR or set NUSEC_HOME");
    return dir;
}

void cli_utc(uint64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000);
    struct tm tm;
    if (!ms || !gmtime_r(&t, &tm) || !strftime(out, cap, "%Y-%m-%dT%H:%M:%SZ", &tm))
        snprintf(out, cap, "-");
}

static void cli__usage(FILE *out)
{
    fputs("usage: nusec COMMAND SUBCOMMAND [OPTIONS]\n"
          "\n"
          "The NuSEC operator tool, for the OEM and the contract manufacturer.\n"
          "Every subcommand takes --dir DIR (default: $NUSEC_HOME) and --help;\n"
          "`nusec --version` prints the version and the git revision it was built from.\n"
          "\n"
          "Commands:\n",
          out);
    for (const struct cli_command *const *t = cli__tables; *t; t++) {
        for (const struct cli_command *c = *t; c->group; c++)
            fprintf(out, "  %-10s %-8s %s\n", c->group, c->name, c->summary);
    }
    fputs("\n"
          "Exit status:\n"
          "  0  success\n"
          "  1  the operation failed (the message names the error)\n"
          "  2  usage error\n"
          "  3  refused: would overwrite existing state (see --force)\n",
          out);
}

/* `nusec GROUP`, `nusec GROUP --help`: the group's subcommands. */
static void cli__group_usage(const char *group)
{
    printf("usage: nusec %s SUBCOMMAND [OPTIONS]\n\nSubcommands:\n", group);
    for (const struct cli_command *const *t = cli__tables; *t; t++) {
        for (const struct cli_command *c = *t; c->group; c++) {
            if (strcmp(c->group, group) == 0)
                printf("  %-10s %s\n", c->name, c->summary);
        }
    }
    printf("\nEach takes --dir DIR and --help: 'nusec %s SUBCOMMAND --help'.\n", group);
}

static int cli__is_help(const char *arg)
{
    return !strcmp(arg, "-h") || !strcmp(arg, "--help") || !strcmp(arg, "help");
}

/* Run `nusec GROUP [SUBCOMMAND] ...`; the exit status. */
static int cli__dispatch(int argc, char **argv)
{
    nu_log_init("nusec", NU_LOG_WARN, NULL);
    if (argc < 2) {
        cli__usage(stderr);
        return CLI_EXIT_USAGE;
    }
    if (cli__is_help(argv[1])) {
        cli__usage(stdout);
        return CLI_EXIT_OK;
    }
    if (!strcmp(argv[1], "--version") || !strcmp(argv[1], "version")) {
        nu_version_print(stdout, "nusec");
        return CLI_EXIT_OK;
    }
    int group_known = 0;
    for (const struct cli_command *const *t = cli__tables; *t; t++) {
        for (const struct cli_command *c = *t; c->group; c++) {
            if (strcmp(c->group, argv[1]) != 0)
                continue;
            group_known = 1;
            /* A command named "" is the whole group: `nusec monitor [options]`. */
            if (c->name[0] == '\0')
                return c->run(argc - 1, argv + 1);
            if (argc >= 3 && strcmp(c->name, argv[2]) == 0)
                return c->run(argc - 2, argv + 2);
        }
    }
    if (group_known && (argc == 2 || cli__is_help(argv[2]))) {
        cli__group_usage(argv[1]);
        return CLI_EXIT_OK;
    }
    if (group_known)
        cli_errorf("'%s' has no subcommand '%s'; see 'nusec %s --help'", argv[1], argv[2],
                   argv[1]);
    else
        cli_errorf("unknown command '%s'; see 'nusec --help'", argv[1]);
    return CLI_EXIT_USAGE;
}

int main(int argc, char **argv)
{
    cli_json_init(argc, argv);
    int rc = cli__dispatch(argc, argv);
    cli_json_finish(rc);
    return rc;
}
