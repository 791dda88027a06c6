/*
 * nu_test — shared helpers for the CUnit runners.
 *
 * Each runner declares its suites in a table and calls nu_test_run(), which
 * returns the number of failed assertions (the process exit code), so CTest
 * marks the runner failed when any assertion fails.
 */
#ifndef NU_TEST_H
#define NU_TEST_H

#include <CUnit/CUnit.h>
#include <stddef.h>

struct nu_test_case {
    const char *name;
    void (*fn)(void);
};

struct nu_test_suite {
    const char *name;
    int (*setup)(void);
    int (*teardown)(void);
    const struct nu_test_case *cases; /* terminated by {NULL, NULL} */
};

/* Run the NULL-terminated suites (by name); returns the failure count (0..255). */
int nu_test_run(const char *runner, const struct nu_test_suite *suites);

/*
 * Make a fresh temporary folder under $TMPDIR (or /tmp) named after `tag`;
 * writes its path into out[cap]. Returns 0 or -1.
 */
int nu_test_tmpdir(const char *tag, char *out, size_t cap);

/* rm -rf `path` (test clean-up only). */
void nu_test_rmtree(const char *path);

/* Run a shell command; returns its exit status (or -1). Output goes to the test log. */
int nu_test_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

#endif
