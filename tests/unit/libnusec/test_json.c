/* nu_json: what reaches an audit payload is escaped, and the auditor's check
 * refuses forged keys and anything that is not strict JSON. */
#include "nu_err.h"
#include "nu_json.h"
#include "nu_test.h"

#include <string.h>

static int check(const char *s)
{
    return nu_json_check(s, strlen(s), NULL);
}

/* {"op":<s>} built by the writer, then checked. */
static int round_trip(const char *s, char *buf, size_t cap)
{
    struct nu_json j;
    nu_json_init(&j, buf, cap);
    nu_json_raw(&j, "{", 1);
    nu_json_str(&j, "op", s);
    nu_json_str(&j, "code", "NOT_SUPPORTED");
    nu_json_raw(&j, "}", 1);
    if (!nu_json_ok(&j))
        return NU_ERR_TOO_LARGE;
    return nu_json_check(buf, j.len, NULL);
}

static void test_writer_escapes_injection(void)
{
    static const char *const evil[] = {
        "x\",\"code\":\"OK", "x\\", "job\"list", "job list", "j\xc3\xb6" "b.list", "job$list",
        "\x01\x1f\x7f", "\xff\xfe", "\xc0\x80", "\xed\xa0\x80", "\xe2\x82", "a\\u0000b",
    };
    char buf[256];
    for (size_t i = 0; i < sizeof(evil) / sizeof(evil[0]); i++)
        CU_ASSERT_EQUAL(round_trip(evil[i], buf, sizeof(buf)), NU_OK);
    round_trip("x\",\"code\":\"OK", buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "{\"op\":\"x\\\",\\\"code\\\":\\\"OK\",\"code\":\"NOT_SUPPORTED\"}");
    round_trip("\xff" "a\x01", buf, sizeof(buf));
    CU_ASSERT_STRING_EQUAL(buf, "{\"op\":\"\\ufffda\\u0001\",\"code\":\"NOT_SUPPORTED\"}");
    round_trip("j\xc3\xb6" "b", buf, sizeof(buf)); /* valid UTF-8 stays as it is */
    CU_ASSERT_STRING_EQUAL(buf, "{\"op\":\"j\xc3\xb6" "b\",\"code\":\"NOT_SUPPORTED\"}");
}

static void test_writer_overflow_is_sticky(void)
{
    char buf[8];
    struct nu_json j;
    nu_json_init(&j, buf, sizeof(buf));
    nu_json_raw(&j, "{", 1);
    nu_json_str(&j, "op", "much too long");
    nu_json_raw(&j, "}", 1);
    CU_ASSERT_FALSE(nu_json_ok(&j));
    CU_ASSERT(strlen(buf) < sizeof(buf));
}

static void test_check_is_strict(void)
{
    CU_ASSERT_EQUAL(check("{}"), NU_OK);
    CU_ASSERT_EQUAL(check("{\"a\":1,\"b\":[{\"a\":2}],\"c\":\"caf\xc3\xa9\"}\n"), NU_OK);
    CU_ASSERT_EQUAL(check("{\"op\":\"x\",\"code\":\"OK\",\"code\":\"NOT_SUPPORTED\"}"),
                    NU_ERR_DECODE);                                       /* the injection */
    CU_ASSERT_EQUAL(check("{\"a\":{\"k\":1,\"k\":2}}"), NU_ERR_DECODE); /* nested duplicate */
    CU_ASSERT_EQUAL(check("{\"a\\u0000x\":1,\"a\":2}"), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(check("{\"op\":\"x\\\"}"), NU_ERR_DECODE); /* the cut escape of `x\` */
    CU_ASSERT_EQUAL(check("{\"a\":\"\x01\"}"), NU_ERR_DECODE);   /* raw control in a string */
    CU_ASSERT_EQUAL(check("{\"a\":\"\xff\"}"), NU_ERR_DECODE);   /* invalid UTF-8 */
    CU_ASSERT_EQUAL(check("[1]"), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(check("{} {}"), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(check("xxxx"), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(check(""), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_json_check(NULL, 0, NULL), NU_ERR_INVALID_ARG);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"the writer escapes what would forge a key", test_writer_escapes_injection},
        {"overflow is sticky", test_writer_overflow_is_sticky},
        {"the check is strict and refuses duplicate keys", test_check_is_strict},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_json", NULL, NULL, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_json", suites);
}
