/* nu_log: levels filter, one whole line per call, program name and level shown. */
#include "nu_err.h"
#include "nu_log.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *capture(enum nu_log_level min, void (*emit)(void))
{
    char *buf = NULL;
    size_t len = 0;
    FILE *out = open_memstream(&buf, &len);
    nu_log_init("tester", min, out);
    emit();
    nu_log_init("tester", NU_LOG_INFO, NULL);
    fclose(out);
    return buf;
}

static void emit_all(void)
{
    nu_debug("d %d", 1);
    nu_info("i %s", "two");
    nu_warn("w");
    nu_error("e");
}

static void test_levels_filter(void)
{
    char *text = capture(NU_LOG_WARN, emit_all);
    CU_ASSERT_PTR_NULL(strstr(text, "debug: d 1"));
    CU_ASSERT_PTR_NULL(strstr(text, "info: i two"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "tester["));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "warn: w\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "error: e\n"));
    free(text);
    text = capture(NU_LOG_DEBUG, emit_all);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "debug: d 1\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "info: i two\n"));
    free(text);
    text = capture(NU_LOG_OFF, emit_all);
    CU_ASSERT_STRING_EQUAL(text, "");
    free(text);
}

static void emit_long(void)
{
    char big[5000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = 0;
    nu_error("%s", big);
}

static void test_long_message_is_one_bounded_line(void)
{
    char *text = capture(NU_LOG_DEBUG, emit_long);
    size_t n = strlen(text);
    CU_ASSERT(n > 900 && n < 1200);
    CU_ASSERT_EQUAL(text[n - 1], '\n');
    CU_ASSERT_PTR_NULL(memchr(text, '\n', n - 1));
    free(text);
}

static void test_level_parse(void)
{
    enum nu_log_level l;
    CU_ASSERT_EQUAL(nu_log_level_parse("warn", &l), NU_OK);
    CU_ASSERT_EQUAL(l, NU_LOG_WARN);
    CU_ASSERT_EQUAL(nu_log_level_parse("WARN", &l), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_log_level_parse("", &l), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_log_level_parse(NULL, &l), NU_ERR_INVALID_ARG);
}

/* logrotate's dance: move the file aside, SIGHUP -> nu_log_reopen, a new file. */
static void test_reopen_after_move(void)
{
    char dir[256], path[512], moved[512];
    CU_ASSERT_EQUAL_FATAL(nu_test_tmpdir("logreopen", dir, sizeof(dir)), 0);
    snprintf(path, sizeof(path), "%s/x.log", dir);
    snprintf(moved, sizeof(moved), "%s/x.log.1", dir);
    nu_log_init("t", NU_LOG_INFO, NULL);
    CU_ASSERT_EQUAL_FATAL(nu_log_open(path), NU_OK);
    nu_info("before the move");
    CU_ASSERT_EQUAL(rename(path, moved), 0);
    nu_info("still to the moved file");
    CU_ASSERT_EQUAL(nu_log_reopen(), NU_OK);
    nu_info("after the reopen");
    nu_log_close();
    nu_log_set_level(NU_LOG_WARN);
    CU_ASSERT_EQUAL(nu_log_get_level(), NU_LOG_WARN);
    CU_ASSERT_EQUAL(nu_log_reopen(), NU_OK); /* stderr: nothing to reopen */
    uint8_t *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    CU_ASSERT_EQUAL_FATAL(nu_file_read(moved, 4096, &a, &alen), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 4096, &b, &blen), NU_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr((char *)a, "before the move"));
    CU_ASSERT_PTR_NOT_NULL(strstr((char *)a, "still to the moved file"));
    CU_ASSERT_PTR_NULL(strstr((char *)a, "after the reopen"));
    CU_ASSERT_PTR_NOT_NULL(strstr((char *)b, "after the reopen"));
    CU_ASSERT_PTR_NULL(strstr((char *)b, "before"));
    free(a);
    free(b);
    nu_test_rmtree(dir);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"levels filter", test_levels_filter},
        {"a long message is one bounded line", test_long_message_is_one_bounded_line},
        {"level names parse", test_level_parse},
        {"reopen after logrotate moved the file", test_reopen_after_move},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_log", NULL, NULL, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_log", suites);
}
