/* nu_util: bounded reads, atomic writes, hex, durations. */
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmp[256];

static int setup(void)
{
    return nu_test_tmpdir("util", tmp, sizeof(tmp));
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

static void test_file_roundtrip_and_mode(void)
{
    char path[512];
    CU_ASSERT_EQUAL(nu_path_fmt(path, sizeof(path), "%s/a.key", tmp), NU_OK);
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, "secret", 6, 0600), NU_OK);
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);

    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 100, &buf, &len), NU_OK);
    CU_ASSERT_EQUAL(len, 6);
    CU_ASSERT_STRING_EQUAL((char *)buf, "secret"); /* NUL-terminated for text use */
    free(buf);

    CU_ASSERT_EQUAL(nu_file_read(path, 5, &buf, &len), NU_ERR_TOO_LARGE);
    CU_ASSERT_PTR_NULL(buf);
}

static void test_write_new_refuses_existing(void)
{
    char path[512];
    nu_path_fmt(path, sizeof(path), "%s/once", tmp);
    CU_ASSERT_EQUAL(nu_file_write_new(path, "1", 1, 0644), NU_OK);
    CU_ASSERT_EQUAL(nu_file_write_new(path, "2", 1, 0644), NU_ERR_EXISTS);
    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 10, &buf, &len), NU_OK);
    CU_ASSERT_EQUAL(buf[0], '1');
    free(buf);
}

static void test_missing_file_is_not_found(void)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char path[512];
    nu_path_fmt(path, sizeof(path), "%s/none", tmp);
    CU_ASSERT_EQUAL(nu_file_read(path, 10, &buf, &len), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(nu_file_read(tmp, 10, &buf, &len), NU_ERR_IO); /* a folder */
}

static void test_mkdirs(void)
{
    char path[512];
    nu_path_fmt(path, sizeof(path), "%s/x/y/z", tmp);
    CU_ASSERT_EQUAL(nu_mkdirs(path, 0700), NU_OK);
    CU_ASSERT_EQUAL(nu_mkdirs(path, 0700), NU_OK);
    CU_ASSERT_TRUE(nu_path_exists(path));
}

static void test_path_fmt_never_truncates(void)
{
    char small[8];
    CU_ASSERT_EQUAL(nu_path_fmt(small, sizeof(small), "%s", "0123456789"), NU_ERR_TOO_LARGE);
    CU_ASSERT_STRING_EQUAL(small, "");
}

static void test_hex(void)
{
    uint8_t in[] = {0x00, 0xab, 0xff, 0x10};
    char hex[9];
    CU_ASSERT_EQUAL(nu_hex_encode(in, 4, hex, sizeof(hex)), NU_OK);
    CU_ASSERT_STRING_EQUAL(hex, "00abff10");
    CU_ASSERT_EQUAL(nu_hex_encode(in, 4, hex, 8), NU_ERR_TOO_LARGE);
    uint8_t out[4];
    size_t n = 0;
    CU_ASSERT_EQUAL(nu_hex_decode("00ABff10", out, 4, &n), NU_OK);
    CU_ASSERT_EQUAL(n, 4);
    CU_ASSERT_EQUAL(memcmp(in, out, 4), 0);
    CU_ASSERT_EQUAL(nu_hex_decode("0", out, 4, &n), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_hex_decode("zz", out, 4, &n), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_hex_decode("0011223344", out, 4, &n), NU_ERR_TOO_LARGE);
}

static void test_duration(void)
{
    uint64_t s = 0;
    CU_ASSERT_EQUAL(nu_duration_parse("90", &s), NU_OK);
    CU_ASSERT_EQUAL(s, 90);
    CU_ASSERT_EQUAL(nu_duration_parse("15m", &s), NU_OK);
    CU_ASSERT_EQUAL(s, 900);
    CU_ASSERT_EQUAL(nu_duration_parse("30d", &s), NU_OK);
    CU_ASSERT_EQUAL(s, 30u * 86400u);
    CU_ASSERT_EQUAL(nu_duration_parse("-1", &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_duration_parse("5x", &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_duration_parse("5mm", &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_duration_parse("", &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_duration_parse("99999999999999999999d", &s), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_duration_parse("999999999999999999d", &s), NU_ERR_TOO_LARGE);
}

static void test_parse_uint(void)
{
    uint64_t v = 0;
    CU_ASSERT_EQUAL(nu_parse_uint("42", 1, 100, &v), NU_OK);
    CU_ASSERT_EQUAL(v, 42);
    CU_ASSERT_EQUAL(nu_parse_uint("0", 1, 100, &v), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(nu_parse_uint("101", 1, 100, &v), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(nu_parse_uint("-1", 0, 100, &v), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_parse_uint(" 1", 0, 100, &v), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_parse_uint("1x", 0, 100, &v), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_parse_uint("", 0, 100, &v), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_parse_uint("18446744073709551616", 0, UINT64_MAX, &v), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(nu_parse_uint("18446744073709551615", 0, UINT64_MAX, &v), NU_OK);
    CU_ASSERT_EQUAL(v, UINT64_MAX);
}

static void test_random_and_ct_compare(void)
{
    uint8_t a[32] = {0}, b[32] = {0};
    CU_ASSERT_EQUAL(nu_random(a, sizeof(a)), NU_OK);
    CU_ASSERT_NOT_EQUAL(nu_memeq_ct(a, b, sizeof(a)), 0);
    memcpy(b, a, sizeof(a));
    CU_ASSERT_EQUAL(nu_memeq_ct(a, b, sizeof(a)), 0);
    nu_zero(a, sizeof(a));
    CU_ASSERT_EQUAL(a[0] | a[31], 0);
}

/* 100 appends keep every item; an overflowing size is refused with the array intact. */
static void test_grow(void)
{
    int *v = NULL;
    size_t n = 0, cap = 0;
    for (int i = 0; i < 100; i++) {
        int *grown = nu_grow(v, &cap, n, sizeof(*v));
        CU_ASSERT_PTR_NOT_NULL_FATAL(grown);
        v = grown;
        v[n++] = i;
        CU_ASSERT(n <= cap);
    }
    CU_ASSERT_EQUAL(cap, 128u);
    int sum = 0;
    for (size_t i = 0; i < n; i++)
        sum += v[i];
    CU_ASSERT_EQUAL(sum, 4950);
    size_t huge = SIZE_MAX / 2 + 1;
    CU_ASSERT_PTR_NULL(nu_grow(v, &huge, huge, 2));
    CU_ASSERT_EQUAL(huge, SIZE_MAX / 2 + 1);
    CU_ASSERT_PTR_EQUAL(nu_grow(v, &cap, 5, sizeof(*v)), v); /* room already */
    free(v);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"file roundtrip keeps mode", test_file_roundtrip_and_mode},
        {"write_new refuses existing", test_write_new_refuses_existing},
        {"missing file is NOT_FOUND", test_missing_file_is_not_found},
        {"mkdirs", test_mkdirs},
        {"path_fmt never truncates", test_path_fmt_never_truncates},
        {"hex", test_hex},
        {"duration", test_duration},
        {"random and constant-time compare", test_random_and_ct_compare},
        {"parse_uint is strict", test_parse_uint},
        {"grow: appends keep items, overflow refused", test_grow},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_util", setup, teardown, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_util", suites);
}
