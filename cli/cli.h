/*
 * cli — the shared frame of the `nusec` command: subcommand table, common
 * options, messages and exit codes.
 *
 * Exit codes (documented in `nusec --help` and the README):
 *   0  success
 *   1  the operation failed (the message says why, with the error name)
 *   2  usage error (unknown command or option, missing argument)
 *   3  refused: would overwrite existing state (use --force where offered)
 */
#ifndef CLI_H
#define CLI_H

#include <stdint.h>
#include <stdio.h>

enum cli_exit {
    CLI_EXIT_OK = 0,
    CLI_EXIT_FAIL = 1,
    CLI_EXIT_USAGE = 2,
    CLI_EXIT_REFUSED = 3,
};

/* A subcommand: `nusec GROUP NAME [options]`. `run` gets argv from NAME on. */
struct cli_command {
    const char *group;
    const char *name;
    const char *summary;
    int (*run)(int argc, char **argv);
};

/* Print "nusec: <message>" to stderr. */
void cli_errorf(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* cli_errorf for a failure whose libnusec code is known but not in the text:
 * `--json` names it in the error line (cli_json.h). */
void cli_errorc(int nu_code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Print "nusec: <what>: <error text> (<ERROR_NAME>)" and map to an exit code. */
int cli_fail(const char *what, int nu_code);

/*
 * Resolve the state directory from --dir or NUSEC_HOME; prints an error and
 * returns NULL when neither is set.
 */
const char *cli_state_dir(const char *opt_dir);

/* Unix milliseconds as "YYYY-MM-DDTHH:MM:SSZ" into out[cap]; "-" for 0. */
void cli_utc(uint64_t ms, char *out, size_t cap);

/* Commands implemented by each file, terminated by a zeroed entry. */
extern const struct cli_command cli_pki_commands[];
extern const struct cli_command cli_programmer_commands[];
extern const struct cli_command cli_device_commands[];
extern const struct cli_command cli_firmware_commands[];
extern const struct cli_command cli_job_commands[];
extern const struct cli_command cli_package_commands[];
extern const struct cli_command cli_audit_commands[];
extern const struct cli_command cli_production_commands[];
extern const struct cli_command cli_stack_commands[];
extern const struct cli_command cli_monitor_commands[];
extern const struct cli_command cli_report_commands[];
extern const struct cli_command cli_dashboard_commands[];
extern const struct cli_command cli_ledger_commands[];
extern const struct cli_command cli_site_commands[];

#endif
