/*
 * The station's `nusec` subcommands as a user types them: options, usage
 * errors (exit 2), --help (exit 0), and what they refuse before touching any
 * state. No broker needed.
 */
#include "nu_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define NUSEC NUSEC_BINARY_DIR "/bin/nusec"

static char tmp[256];

static int setup(void)
{
    return nu_test_tmpdir("stcli", tmp, sizeof(tmp));
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

/* Exit status of `nusec ARGS` (output to tmp/out.txt). */
static int run(const char *args)
{
    return nu_test_sh("cd %s && NUSEC_HOME= " NUSEC " %s > out.txt 2>&1", tmp, args);
}

static int out_has(const char *needle)
{
    return nu_test_sh("grep -qF -- '%s' %s/out.txt", needle, tmp) == 0;
}

static void test_help_everywhere(void)
{
    static const char *const cmds[] = {
        "package inspect", "package import",    "package list", "production start",
        "production stop", "production status", "monitor",      "stack up",
        "stack down",      "stack status",
    };
    char args[128];
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        snprintf(args, sizeof(args), "%s --help", cmds[i]);
        CU_ASSERT_EQUAL(run(args), 0);
        CU_ASSERT_TRUE(out_has("usage: nusec"));
        CU_ASSERT_TRUE(out_has("Exit status"));
    }
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC_BINARY_DIR "/bin/nusec-station --help > %s/out.txt", tmp), 0);
    CU_ASSERT_TRUE(out_has("SIGTERM"));
    CU_ASSERT_EQUAL(run("--help"), 0);
    CU_ASSERT_TRUE(out_has("production status"));
    CU_ASSERT_TRUE(out_has("monitor"));
}

static void test_usage_errors(void)
{
    static const char *const bad[] = {
        "production start --dir X",                /* no --job */
        "production stop --dir X",                 /* no --job */
        "production start --job J --json --dir X", /* not an option of start */
        "production status --wait --dir X",        /* not an option of status */
        "production status --interval 0 --dir X",
        "production start --job J --timeout -3 --dir X",
        "monitor --count 0 --dir X",
        "monitor --timeout x --dir X",
        "monitor extra --dir X",
        "stack up --sockets 0 --dir X",
        "stack up --programmers 65 --dir X",
        "stack up --devices -1 --dir X",
        "stack down --programmers 2 --dir X",
        "stack status --bogus --dir X",
        "package inspect --dir X", /* no FILE */
        "package inspect a b --dir X",
        "package import --dir X", /* no FILE */
        "package import --bogus f --dir X",
        "package list extra --dir X",
        "production start --job J", /* no --dir and no NUSEC_HOME */
    };
    char args[128];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        snprintf(args, sizeof(args), "%s", bad[i]);
        int rc = run(args);
        if (rc != 2)
            fprintf(stderr, "'nusec %s' exited %d, not 2\n", bad[i], rc);
        CU_ASSERT_EQUAL(rc, 2);
    }
    /* A group alone lists its subcommands; an unknown subcommand is a usage error. */
    CU_ASSERT_EQUAL(run("production"), 0);
    CU_ASSERT_TRUE(out_has("usage: nusec production SUBCOMMAND"));
    CU_ASSERT_TRUE(out_has("  status "));
    CU_ASSERT_EQUAL(run("production nosuch"), 2);
    CU_ASSERT_TRUE(out_has("has no subcommand"));
}

static void test_readers_never_create_state(void)
{
    CU_ASSERT_EQUAL(run("production status --dir typo"), 1);
    CU_ASSERT_TRUE(out_has("no station in typo"));
    CU_ASSERT_EQUAL(run("production start --job J --dir typo"), 1);
    CU_ASSERT_EQUAL(run("package list --dir typo"), 0);
    CU_ASSERT_EQUAL(run("stack status --dir typo"), 1);
    CU_ASSERT_EQUAL(run("stack down --dir typo"), 0);
    CU_ASSERT_EQUAL(nu_test_sh("test ! -e %s/typo", tmp), 0);
    /* Without a PKI there is no package key to check a package against. */
    CU_ASSERT_EQUAL(nu_test_sh("echo x > %s/f.nspkg", tmp), 0);
    CU_ASSERT_EQUAL(run("package inspect f.nspkg --dir typo"), 1);
    CU_ASSERT_TRUE(out_has("package-key.pem"));
    CU_ASSERT_EQUAL(run("package import f.nspkg --dir typo"), 1);
    CU_ASSERT_EQUAL(nu_test_sh("test ! -e %s/typo", tmp), 0);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"--help everywhere", test_help_everywhere},
        {"usage errors exit 2", test_usage_errors},
        {"readers never create state", test_readers_never_create_state},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"station_cli", setup, teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("station_test_cli", suites);
}
