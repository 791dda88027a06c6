/*
 * cli_opts — the nusec subcommands' names for the shared option parser
 * (libnusec/nu_opts.h): messages prefixed "nusec: ", no --version (that is
 * the top-level `nusec --version`). The tables are nu_opt tables.
 *
 *     const struct cli_opt opts[] = {CLI_OPT_STR("dir", &dir), ...};
 *     int rc = cli_opts_parse(argc, argv, usage, opts, CLI_OPTS_N(opts));
 *
 * Returns 0 when parsed, -1 when --help was printed, CLI_EXIT_USAGE (= 2,
 * NU_OPTS_USAGE) on a usage error (already printed).
 */
#ifndef CLI_OPTS_H
#define CLI_OPTS_H

#include "nu_opts.h"

#define cli_opt nu_opt
#define cli_opt_list nu_opt_list
#define CLI_OPT_STR NU_OPT_STR
#define CLI_OPT_BOOL NU_OPT_BOOL
#define CLI_OPT_NUM NU_OPT_NUM
#define CLI_OPT_ALL NU_OPT_ALL
#define CLI_OPTS_N NU_OPTS_N

static inline int cli_opts_parse(int argc, char **argv, const char *usage,
                                 const struct nu_opt *opts, size_t n)
{
    const struct nu_opts_cmd cmd = {"nusec", usage, 0, NULL, NULL};
    return nu_opts_parse(&cmd, argc, argv, opts, n);
}

#endif
