/* nu_opts — table-driven long options for every NuSEC program. */
#include "nu_opts.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"
#include "nu_version.h"

#include <getopt.h>

/* Values above the option characters getopt_long can return. */
#define NU_OPTS__BASE 256
#define NU_OPTS__VERSION (NU_OPTS__BASE - 1)

static int nu_opts__take(const struct nu_opts_cmd *cmd, FILE *err, const struct nu_opt *o,
                         const char *value)
{
    uint64_t v = 0;
    switch (o->kind) {
    case NU_OPT_STRING:
        *(const char **)o->target = value;
        return 0;
    case NU_OPT_FLAG:
        *(int *)o->target = 1;
        return 0;
    case NU_OPT_UINT:
        if (nu_parse_uint(value, o->min, o->max, &v) != NU_OK) {
            fprintf(err, "%s: --%s wants a number from %llu to %llu, not '%s'\n", cmd->prog,
                    o->name, (unsigned long long)o->min, (unsigned long long)o->max, value);
            return -1;
        }
        *(unsigned *)o->target = (unsigned)v;
        return 0;
    case NU_OPT_LIST: {
        struct nu_opt_list *l = o->target;
        if (l->n == o->max) {
            fprintf(err, "%s: --%s may be given at most %llu times\n", cmd->prog, o->name,
                    (unsigned long long)o->max);
            return -1;
        }
        l->v[l->n++] = value;
        return 0;
    }
    case NU_OPT_LEVEL:
        if (nu_log_level_parse(value, o->target) != NU_OK) {
            fprintf(err, "%s: unknown log level '%s'\n", cmd->prog, value);
            return -1;
        }
        return 0;
    }
    return -1;
}

int nu_opts_parse(const struct nu_opts_cmd *cmd, int argc, char **argv, const struct nu_opt *opts,
                  size_t n)
{
    struct option longopts[NU_OPTS_MAX + 3] = {{0}};
    FILE *out = cmd->out ? cmd->out : stdout, *err = cmd->err ? cmd->err : stderr;
    if (n > NU_OPTS_MAX) {
        fprintf(err, "%s: internal: a table of %zu options\n", cmd->prog, n);
        return NU_OPTS_USAGE;
    }
    for (size_t i = 0; i < n; i++) {
        int has_arg = opts[i].kind == NU_OPT_FLAG ? no_argument : required_argument;
        longopts[i] = (struct option){opts[i].name, has_arg, NULL, NU_OPTS__BASE + (int)i};
    }
    longopts[n] = (struct option){"help", no_argument, NULL, 'h'};
    if (cmd->flags & NU_OPTS_VERSION)
        longopts[n + 1] = (struct option){"version", no_argument, NULL, NU_OPTS__VERSION};
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        if (c == 'h') {
            fputs(cmd->usage, out);
            return -1;
        }
        if (c == NU_OPTS__VERSION) {
            nu_version_print(out, cmd->prog);
            return -1;
        }
        if (c < NU_OPTS__BASE || (size_t)(c - NU_OPTS__BASE) >= n ||
            nu_opts__take(cmd, err, &opts[c - NU_OPTS__BASE], optarg) != 0) {
            fputs(cmd->usage, err);
            return NU_OPTS_USAGE;
        }
    }
    return 0;
}
