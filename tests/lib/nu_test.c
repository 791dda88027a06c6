#define _GNU_SOURCE
#include "nu_test.h"

#include <CUnit/Basic.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int nu_test_run(const char *runner, const struct nu_test_suite *suites)
{
    if (CU_initialize_registry() != CUE_SUCCESS)
        return 1;
    for (const struct nu_test_suite *s = suites; s->name; s++) {
        CU_pSuite suite = CU_add_suite(s->name, s->setup, s->teardown);
        if (!suite)
            goto fail;
        for (const struct nu_test_case *c = s->cases; c->name; c++) {
            if (!CU_add_test(suite, c->name, c->fn))
                goto fail;
        }
    }
    CU_basic_set_mode(CU_BRM_VERBOSE);
    CU_basic_run_tests();
    unsigned failed = CU_get_number_of_failures() + CU_get_number_of_suites_failed();
    unsigned ran = CU_get_number_of_tests_run();
    CU_cleanup_registry();
    printf("%s: %u tests run, %u failures\n", runner, ran, failed);
    if (ran == 0)
        return 1; /* a runner that runs nothing proves nothing */
    return failed > 255 ? 255 : (int)failed;
fail:
    fprintf(stderr, "%s: CUnit registry error: %s\n", runner, CU_get_error_msg());
    CU_cleanup_registry();
    return 1;
}

int nu_test_tmpdir(const char *tag, char *out, size_t cap)
{
    const char *base = getenv("TMPDIR");
    if (!base || !*base)
        base = "/tmp";
    if (snprintf(out, cap, "%s/nusec-%s-XXXXXX", base, tag) >= (int)cap)
        return -1;
    return mkdtemp(out) ? 0 : -1;
}

void nu_test_rmtree(const char *path)
{
    if (!path || !*path || strcmp(path, "/") == 0)
        return;
    nu_test_sh("rm -rf '%s'", path);
}

int nu_test_sh(const char *fmt, ...)
{
    char *cmd = NULL;
    va_list ap;
    va_start(ap, fmt);
    int n = vasprintf(&cmd, fmt, ap);
    va_end(ap);
    if (n < 0)
        return -1;
    int st = system(cmd);
    free(cmd);
    if (st == -1 || !WIFEXITED(st))
        return -1;
    return WEXITSTATUS(st);
}
