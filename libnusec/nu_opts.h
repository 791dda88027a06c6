/*
 * nu_opts — the long options of one program or subcommand as a table,
 * parsed with getopt_long: one parser for nusec-cloud, nusec-station,
 * nusec-programmer and every nusec subcommand.
 *
 *     const char *dir = NULL; int json = 0; unsigned count = 0;
 *     enum nu_log_level level = NU_LOG_INFO;
 *     const struct nu_opt opts[] = {
 *         NU_OPT_STR("dir", &dir),
 *         NU_OPT_BOOL("json", &json),
 *         NU_OPT_NUM("count", &count, 1, 1000),
 *         NU_OPT_LOG("log-level", &level),
 *     };
 *     const struct nu_opts_cmd cmd = {"nusec-x", usage, NU_OPTS_VERSION};
 *     int rc = nu_opts_parse(&cmd, argc, argv, opts, NU_OPTS_N(opts));
 *
 * Every table also takes -h/--help (the usage on stdout); with
 * NU_OPTS_VERSION also --version (nu_version_print on stdout). An unknown
 * option, a missing value, a number out of range or an unknown log level
 * prints "PROG: <reason>" and the usage on stderr.
 *
 * Targets are the caller's; strings point into argv. On return optind is
 * the first operand (getopt_long's permutation puts operands last); what
 * operands are allowed is the caller's to check.
 */
#ifndef NU_OPTS_H
#define NU_OPTS_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

enum nu_opt_kind {
    NU_OPT_STRING, /* const char **: the value; given twice, the last one */
    NU_OPT_FLAG,   /* int *: set to 1 */
    NU_OPT_UINT,   /* unsigned *: decimal within [min, max] */
    NU_OPT_LIST,   /* struct nu_opt_list *: every value in order, at most max */
    NU_OPT_LEVEL,  /* enum nu_log_level *: a level name (nu_log_level_parse) */
};

struct nu_opt_list {
    const char **v; /* room for max values */
    size_t n;
};

struct nu_opt {
    const char *name; /* the long name, without "--" */
    enum nu_opt_kind kind;
    void *target;
    uint64_t min, max; /* NU_OPT_UINT: bounds; NU_OPT_LIST: max = capacity */
};

/* Table entries. */
#define NU_OPT_STR(name, target) {name, NU_OPT_STRING, target, 0, 0}
#define NU_OPT_BOOL(name, target) {name, NU_OPT_FLAG, target, 0, 0}
#define NU_OPT_NUM(name, target, min, max) {name, NU_OPT_UINT, target, min, max}
#define NU_OPT_ALL(name, list, max) {name, NU_OPT_LIST, list, 0, max}
#define NU_OPT_LOG(name, target) {name, NU_OPT_LEVEL, target, 0, 0}

#define NU_OPTS_N(table) (sizeof(table) / sizeof((table)[0]))
#define NU_OPTS_MAX 24 /* options of one table */

enum { NU_OPTS_VERSION = 1 }; /* nu_opts_cmd.flags: accept --version */
enum { NU_OPTS_USAGE = 2 };   /* the documented exit status of a usage error */

struct nu_opts_cmd {
    const char *prog;  /* the prefix of messages, the name --version prints */
    const char *usage; /* the whole help text */
    unsigned flags;    /* NU_OPTS_VERSION or 0 */
    FILE *out, *err;   /* NULL: stdout, stderr (tests capture them) */
};

/*
 * Parse argv[1..] against opts[n]. Returns 0 when parsed, -1 when --help or
 * --version was printed (the caller exits 0), NU_OPTS_USAGE on a usage error
 * (already printed).
 */
int nu_opts_parse(const struct nu_opts_cmd *cmd, int argc, char **argv, const struct nu_opt *opts,
                  size_t n);

#endif
