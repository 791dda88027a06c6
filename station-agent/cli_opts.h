/*
 * cli_opts — the long options of one nusec subcommand as a table, parsed with
 * getopt_long. Every subcommand also takes -h/--help (its usage on stdout);
 * an unknown option, a missing value or a number out of range prints the
 * reason and the usage on stderr.
 *
 *     const char *dir = NULL; int json = 0; unsigned count = 0;
 *     const struct cli_opt opts[] = {
 *         CLI_OPT_STR("dir", &dir),
 *         CLI_OPT_BOOL("json", &json),
 *         CLI_OPT_NUM("count", &count, 1, 1000),
 *     };
 *     int rc = cli_opts_parse(argc, argv, usage, opts, CLI_OPTS_N(opts));
 *
 * Targets are the caller's; strings point into argv. On return optind is
 * the first operand (getopt_long's permutation puts operands last).
 */
#ifndef CLI_OPTS_H
#define CLI_OPTS_H

#include <stddef.h>
#include <stdint.h>

enum cli_opt_kind {
    CLI_OPT_STRING, /* const char **: the value; given twice, the last one */
    CLI_OPT_FLAG,   /* int *: set to 1 */
    CLI_OPT_UINT,   /* unsigned *: decimal within [min, max] */
    CLI_OPT_LIST,   /* struct cli_opt_list *: every value in order, at most max */
};

struct cli_opt_list {
    const char **v; /* room for max values */
    size_t n;
};

struct cli_opt {
    const char *name; /* the long name, without "--" */
    enum cli_opt_kind kind;
    void *target;
    uint64_t min, max; /* CLI_OPT_UINT: bounds; CLI_OPT_LIST: max = capacity */
};

/* Table entries. */
#define CLI_OPT_STR(name, target)                                                                  \
    {                                                                                              \
        name, CLI_OPT_STRING, target, 0, 0                                                         \
    }
#define CLI_OPT_BOOL(name, target)                                                                 \
    {                                                                                              \
        name, CLI_OPT_FLAG, target, 0, 0                                                           \
    }
#define CLI_OPT_NUM(name, target, min, max)                                                        \
    {                                                                                              \
        name, CLI_OPT_UINT, target, min, max                                                       \
    }
#define CLI_OPT_ALL(name, list, max)                                                               \
    {                                                                                              \
        name, CLI_OPT_LIST, list, 0, max                                                           \
    }

#define CLI_OPTS_N(table) (sizeof(table) / sizeof((table)[0]))
#define CLI_OPTS_MAX 24 /* options of one subcommand */

/*
 * Parse argv[1..] (argv[0] is the subcommand's name) against opts[n].
 * Returns 0 when parsed, -1 when --help was printed, CLI_EXIT_USAGE on a
 * usage error (already printed).
 */
int cli_opts_parse(int argc, char **argv, const char *usage, const struct cli_opt *opts, size_t n);

#endif
