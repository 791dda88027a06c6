/* nu_opts: the one option parser of every NuSEC program (what a user typing
 * options sees: values taken, help and version on stdout, errors on stderr
 * with the usage and exit status 2). */
#include "nu_log.h"
#include "nu_opts.h"
#include "nu_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static const char usage[] = "usage: tester [--dir DIR] [--json] [--count N]\n";

struct run {
    int rc;
    char *out, *err;
    const char *dir;
    int json;
    unsigned count;
    enum nu_log_level level;
    const char *tags[2];
    struct nu_opt_list list;
};

/* Parse a NULL-terminated argv (argv[0] = "tester") with the test table. */
static void parse(struct run *r, unsigned flags, char **argv)
{
    int argc = 0;
    size_t olen = 0, elen = 0;
    while (argv[argc])
        argc++;
    memset(r, 0, sizeof(*r));
    r->level = NU_LOG_INFO;
    r->list.v = r->tags;
    FILE *out = open_memstream(&r->out, &olen), *err = open_memstream(&r->err, &elen);
    const struct nu_opt opts[] = {
        NU_OPT_STR("dir", &r->dir),       NU_OPT_BOOL("json", &r->json),
        NU_OPT_NUM("count", &r->count, 1, 100), NU_OPT_LOG("log-level", &r->level),
        NU_OPT_ALL("tag", &r->list, 2),
    };
    const struct nu_opts_cmd cmd = {"tester", usage, flags, out, err};
    opterr = 0; /* getopt's own complaint would go to the real stderr */
    r->rc = nu_opts_parse(&cmd, argc, argv, opts, NU_OPTS_N(opts));
    fclose(out);
    fclose(err);
}

static void done(struct run *r)
{
    free(r->out);
    free(r->err);
}

static void test_values_taken(void)
{
    char *argv[] = {"tester", "--dir", "/x", "--json", "op", "--count=7", "--log-level", "warn",
                    "--tag", "a", "--tag", "b", NULL};
    struct run r;
    parse(&r, 0, argv);
    CU_ASSERT_EQUAL(r.rc, 0);
    CU_ASSERT_STRING_EQUAL(r.dir, "/x");
    CU_ASSERT_EQUAL(r.json, 1);
    CU_ASSERT_EQUAL(r.count, 7);
    CU_ASSERT_EQUAL(r.level, NU_LOG_WARN);
    CU_ASSERT_EQUAL(r.list.n, 2);
    CU_ASSERT_STRING_EQUAL(r.tags[1], "b");
    CU_ASSERT_EQUAL(optind, 11); /* the operand is permuted last */
    CU_ASSERT_STRING_EQUAL(argv[optind], "op");
    CU_ASSERT_STRING_EQUAL(r.out, "");
    CU_ASSERT_STRING_EQUAL(r.err, "");
    done(&r);
}

static void test_help_and_version(void)
{
    char *help[] = {"tester", "--help", NULL}, *h[] = {"tester", "-h", NULL};
    char *version[] = {"tester", "--version", NULL};
    struct run r;
    parse(&r, 0, help);
    CU_ASSERT_EQUAL(r.rc, -1);
    CU_ASSERT_STRING_EQUAL(r.out, usage);
    CU_ASSERT_STRING_EQUAL(r.err, "");
    done(&r);
    parse(&r, 0, h);
    CU_ASSERT_EQUAL(r.rc, -1);
    CU_ASSERT_STRING_EQUAL(r.out, usage);
    done(&r);
    parse(&r, NU_OPTS_VERSION, version);
    CU_ASSERT_EQUAL(r.rc, -1);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.out, "tester"));
    done(&r);
    parse(&r, 0, version); /* a subcommand has no --version */
    CU_ASSERT_EQUAL(r.rc, NU_OPTS_USAGE);
    CU_ASSERT_STRING_EQUAL(r.err, usage);
    done(&r);
}

static void test_usage_errors(void)
{
    char *unknown[] = {"tester", "--nope", NULL}, *missing[] = {"tester", "--dir", NULL};
    char *range[] = {"tester", "--count", "101", NULL}, *nan[] = {"tester", "--count", "7x", NULL};
    char *level[] = {"tester", "--log-level", "loud", NULL};
    char *many[] = {"tester", "--tag", "a", "--tag", "b", "--tag", "c", NULL};
    struct run r;
    parse(&r, 0, unknown);
    CU_ASSERT_EQUAL(r.rc, NU_OPTS_USAGE);
    CU_ASSERT_STRING_EQUAL(r.err, usage);
    CU_ASSERT_STRING_EQUAL(r.out, "");
    done(&r);
    parse(&r, 0, missing);
    CU_ASSERT_EQUAL(r.rc, NU_OPTS_USAGE);
    done(&r);
    parse(&r, 0, range);
    CU_ASSERT_EQUAL(r.rc, NU_OPTS_USAGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err, "tester: --count wants a number from 1 to 100, not '101'\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err, usage));
    CU_ASSERT_EQUAL(r.count, 0);
    done(&r);
    parse(&r, 0, nan);
    CU_ASSERT_EQUAL(r.rc, NU_OPTS_USAGE);
    done(&r);
    parse(&r, 0, level);
    CU_ASSERT_EQUAL(r.rc, NU_OPTS_USAGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err, "tester: unknown log level 'loud'"));
    CU_ASSERT_EQUAL(r.level, NU_LOG_INFO);
    done(&r);
    parse(&r, 0, many);
    CU_ASSERT_EQUAL(r.rc, NU_OPTS_USAGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(r.err, "tester: --tag may be given at most 2 times"));
    done(&r);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"values taken, operands last", test_values_taken},
        {"help and version on stdout", test_help_and_version},
        {"usage errors on stderr, status 2", test_usage_errors},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_opts", NULL, NULL, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_opts", suites);
}
