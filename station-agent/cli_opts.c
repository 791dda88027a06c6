/* cli_opts — table-driven long options for the nusec subcommands. */
#include "cli_opts.h"

#include "cli.h"
#include "nu_err.h"
#include "nu_util.h"

#include <getopt.h>
#include <stdio.h>

/* Values above the option characters getopt_long can return. */
#define CLI__OPT_BASE 256

static int cli__opt_take(const struct cli_opt *o, const char *value)
{
    uint64_t v = 0;
    switch (o->kind) {
    case CLI_OPT_STRING:
        *(const char **)o->target = value;
        return 0;
    case CLI_OPT_FLAG:
        *(int *)o->target = 1;
        return 0;
    case CLI_OPT_UINT:
        if (nu_parse_uint(value, o->min, o->max, &v) != NU_OK) {
            cli_errorf("--%s wants a number from %llu to %llu, not '%s'", o->name,
                       (unsigned long long)o->min, (unsigned long long)o->max, value);
            return -1;
        }
        *(unsigned *)o->target = (unsigned)v;
        return 0;
    case CLI_OPT_LIST: {
        struct cli_opt_list *l = o->target;
        if (l->n == o->max) {
            cli_errorf("--%s may be given at most %llu times", o->name, (unsigned long long)o->max);
            return -1;
        }
        l->v[l->n++] = value;
        return 0;
    }
    }
    return -1;
}

int cli_opts_parse(int argc, char **argv, const char *usage, const struct cli_opt *opts, size_t n)
{
    struct option longopts[CLI_OPTS_MAX + 2] = {{0}};
    if (n > CLI_OPTS_MAX) {
        cli_errorf("internal: a subcommand with %zu options", n);
        return CLI_EXIT_USAGE;
    }
    for (size_t i = 0; i < n; i++) {
        int has_arg = opts[i].kind == CLI_OPT_FLAG ? no_argument : required_argument;
        longopts[i] = (struct option){opts[i].name, has_arg, NULL, CLI__OPT_BASE + (int)i};
    }
    longopts[n] = (struct option){"help", no_argument, NULL, 'h'};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h') {
            fputs(usage, stdout);
            return -1;
        }
        if (c < CLI__OPT_BASE || (size_t)(c - CLI__OPT_BASE) >= n ||
            cli__opt_take(&opts[c - CLI__OPT_BASE], optarg) != 0) {
            fputs(usage, stderr);
            return CLI_EXIT_USAGE;
        }
    }
    return 0;
}
