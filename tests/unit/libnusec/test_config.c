/* nu_config: the key = value format, its errors (with line numbers), getters. */
#include "nu_config.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char tmp[256];

static int setup(void)
{
    return nu_test_tmpdir("config", tmp, sizeof(tmp));
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

static struct nu_config *parse_ok(const char *text)
{
    struct nu_config *cfg = NULL;
    char err[256] = "";
    int rc = nu_config_parse_buffer("t.conf", text, strlen(text), &cfg, err, sizeof(err));
    if (rc != NU_OK)
        fprintf(stderr, "unexpected: %s\n", err);
    CU_ASSERT_EQUAL(rc, NU_OK);
    return cfg;
}

/* Parse `text`, expect CONFIG and exactly the message `expect`. */
static void parse_fails(const char *text, const char *expect)
{
    struct nu_config *cfg = (struct nu_config *)1;
    char err[512] = "";
    int rc = nu_config_parse_buffer("t.conf", text, strlen(text), &cfg, err, sizeof(err));
    CU_ASSERT_EQUAL(rc, NU_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(cfg);
    if (strcmp(err, expect) != 0)
        fprintf(stderr, "\n  got:    %s\n  wanted: %s\n", err, expect);
    CU_ASSERT_STRING_EQUAL(err, expect);
}

static void test_good_file(void)
{
    const char *text = "# NuSEC cloud configuration\n"
                       "\n"
                       "listener.port = 8883\r\n"
                       "   log.level\t  info   \n"
                       "job.subject = CN={uid}, O=Acme # kept: no trailing comments\n"
                       "hsm.pin_file=/var/lib/nusec/hsm/user.pin\n"
                       "  # indented comment\n"
                       "tls.verify yes\n"
                       "weird==x\n"
                       "mqtt.keepalive = 90s\n"
                       "path.with_spaces = /srv/my files/a b\n"
                       "last.line.no_newline = end";
    struct nu_config *cfg = parse_ok(text);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    CU_ASSERT_STRING_EQUAL(nu_config_name(cfg), "t.conf");
    CU_ASSERT_EQUAL(nu_config_count(cfg), 9);
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "listener.port", NULL), "8883");
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "log.level", NULL), "info");
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "job.subject", NULL),
                           "CN={uid}, O=Acme # kept: no trailing comments");
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "hsm.pin_file", NULL),
                           "/var/lib/nusec/hsm/user.pin");
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "tls.verify", NULL), "yes");
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "weird", NULL), "=x");
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "path.with_spaces", NULL), "/srv/my files/a b");
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "last.line.no_newline", NULL), "end");
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "absent", "dflt"), "dflt");
    CU_ASSERT_PTR_NULL(nu_config_get_str(cfg, "absent", NULL));
    CU_ASSERT_TRUE(nu_config_has(cfg, "tls.verify"));
    CU_ASSERT_FALSE(nu_config_has(cfg, "tls"));
    CU_ASSERT_EQUAL(nu_config_line(cfg, "listener.port"), 3);
    CU_ASSERT_EQUAL(nu_config_line(cfg, "last.line.no_newline"), 12);
    CU_ASSERT_EQUAL(nu_config_line(cfg, "absent"), 0);

    const char *k, *v;
    unsigned line;
    CU_ASSERT_EQUAL(nu_config_entry(cfg, 1, &k, &v, &line), NU_OK);
    CU_ASSERT_STRING_EQUAL(k, "log.level");
    CU_ASSERT_EQUAL(line, 4);
    CU_ASSERT_EQUAL(nu_config_entry(cfg, 9, &k, &v, &line), NU_ERR_NOT_FOUND);
    nu_config_destroy(cfg);

    /* Empty and comment-only inputs are valid and empty. */
    cfg = parse_ok("");
    CU_ASSERT_EQUAL(nu_config_count(cfg), 0);
    nu_config_destroy(cfg);
    cfg = parse_ok("# only\n\n   \n\t\n");
    CU_ASSERT_EQUAL(nu_config_count(cfg), 0);
    nu_config_destroy(cfg);
    nu_config_destroy(NULL);
}

static void test_each_error_names_its_line(void)
{
    parse_fails("a = 1\nBad.Key = 2\n", "t.conf:2: invalid key (allowed: a-z 0-9 _ .)");
    parse_fails("a = 1\n\nkey:value\n", "t.conf:3: invalid key (allowed: a-z 0-9 _ .)");
    parse_fails("= value\n", "t.conf:1: invalid key (allowed: a-z 0-9 _ .)");
    parse_fails("# c\nport\n", "t.conf:2: missing value for 'port'");
    parse_fails("port =   \n", "t.conf:1: missing value for 'port'");
    parse_fails("a = 1\nb = 2\n# x\na = 3\n", "t.conf:4: duplicate key 'a' (first set on line 1)");
    parse_fails("a = x\x1b[2Jy\n", "t.conf:1: control character in the value of 'a'");
    parse_fails("a = 1\n\nhsm.pin = 1234\n",
                "t.conf:3: 'hsm.pin' would put a secret in a configuration file; keep it in its "
                "own 0600 file and set 'hsm.pin_file' to its path");
    parse_fails("mqtt.password = x\n",
                "t.conf:1: 'mqtt.password' would put a secret in a configuration file; keep it "
                "in its own 0600 file and set 'mqtt.password_file' to its path");
    parse_fails("enroll_token x\n",
                "t.conf:1: 'enroll_token' would put a secret in a configuration file; keep it in "
                "its own 0600 file and set 'enroll_token_file' to its path");

    char key[NU_CONFIG_KEY_MAX + 8];
    memset(key, 'k', NU_CONFIG_KEY_MAX + 1);
    strcpy(key + NU_CONFIG_KEY_MAX + 1, " = 1\n");
    parse_fails(key, "t.conf:1: key too long");

    /* A line of exactly NU_CONFIG_LINE_MAX bytes is fine, one more is not. */
    char *line = malloc(NU_CONFIG_LINE_MAX + 32);
    CU_ASSERT_PTR_NOT_NULL_FATAL(line);
    memcpy(line, "ok = 1\nv = ", 11);
    memset(line + 11, 'x', NU_CONFIG_LINE_MAX - 4);
    strcpy(line + 11 + NU_CONFIG_LINE_MAX - 4, "\r\n");
    struct nu_config *cfg = parse_ok(line);
    CU_ASSERT_EQUAL(strlen(nu_config_get_str(cfg, "v", "")), NU_CONFIG_LINE_MAX - 4);
    nu_config_destroy(cfg);
    strcpy(line + 11 + NU_CONFIG_LINE_MAX - 4, "y\n");
    parse_fails(line, "t.conf:2: line too long");
    free(line);

    /* A NUL byte: the buffer is binary, not text. */
    static const char nul[] = "a = 1\nb = 2\0c\n";
    char err[128] = "";
    cfg = (struct nu_config *)1;
    CU_ASSERT_EQUAL(nu_config_parse_buffer("t.conf", nul, sizeof(nul) - 1, &cfg, err, sizeof(err)),
                    NU_ERR_CONFIG);
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_STRING_EQUAL(err, "t.conf:2: NUL byte (not a text file?)");

    /* Too many settings. */
    size_t cap = (NU_CONFIG_KEYS_MAX + 1) * 16;
    char *many = malloc(cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(many);
    size_t n = 0;
    for (unsigned i = 0; i <= NU_CONFIG_KEYS_MAX; i++)
        n += (size_t)snprintf(many + n, cap - n, "k%u = %u\n", i, i);
    char expect[64];
    snprintf(expect, sizeof(expect), "t.conf:%u: too many settings", NU_CONFIG_KEYS_MAX + 1);
    parse_fails(many, expect);
    free(many);

    /* Messages are cut to the caller's buffer, never overflow it. */
    char small[8];
    memset(small, 'Z', sizeof(small));
    cfg = (struct nu_config *)1;
    CU_ASSERT_EQUAL(nu_config_parse_buffer("t.conf", "X", 1, &cfg, small, 5), NU_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(small, "t.co");
    CU_ASSERT_EQUAL(small[5], 'Z');
    CU_ASSERT_EQUAL(nu_config_parse_buffer("t.conf", "X", 1, &cfg, NULL, 0), NU_ERR_CONFIG);
}

static void test_buffer_limits_and_arguments(void)
{
    struct nu_config *cfg = NULL;
    char err[128];
    /* Not NUL-terminated: only `len` bytes are read. */
    const char slice[] = {'a', ' ', '=', ' ', '1', '\n', 'b', '=', '2'};
    CU_ASSERT_EQUAL_FATAL(nu_config_parse_buffer("s", slice, 7, &cfg, err, sizeof(err)),
                          NU_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(err, "s:2: missing value for 'b'");
    CU_ASSERT_EQUAL_FATAL(nu_config_parse_buffer("s", slice, sizeof(slice), &cfg, err, sizeof(err)),
                          NU_OK);
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "b", NULL), "2");
    nu_config_destroy(cfg);

    char *big = calloc(1, NU_CONFIG_FILE_MAX + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, '#', NU_CONFIG_FILE_MAX + 1);
    CU_ASSERT_EQUAL(
        nu_config_parse_buffer("s", big, NU_CONFIG_FILE_MAX + 1, &cfg, err, sizeof(err)),
        NU_ERR_TOO_LARGE);
    CU_ASSERT_STRING_EQUAL(err, "s: larger than 65536 bytes");
    free(big);

    CU_ASSERT_EQUAL(nu_config_parse_buffer(NULL, "", 0, &cfg, err, sizeof(err)),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_config_parse_buffer("s", NULL, 3, &cfg, err, sizeof(err)),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_config_parse_buffer("s", "", 0, NULL, err, sizeof(err)), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_config_parse_buffer("s", NULL, 0, &cfg, err, sizeof(err)), NU_OK);
    nu_config_destroy(cfg);
}

static void test_int_getter(void)
{
    struct nu_config *cfg = parse_ok("port = 8883\nneg = -5\nbig = 70000\nhex = 0x10\n"
                                     "plus = +5\nhuge = 99999999999999999999\nsp = 1 2\n"
                                     "min64 = -9223372036854775808\ndash = -\n");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    int64_t v = 0;
    char err[256] = "";
    CU_ASSERT_EQUAL(nu_config_get_int(cfg, "port", 1, 1, 65535, &v, err, sizeof(err)), NU_OK);
    CU_ASSERT_EQUAL(v, 8883);
    CU_ASSERT_EQUAL(nu_config_get_int(cfg, "neg", 0, -10, 10, &v, err, sizeof(err)), NU_OK);
    CU_ASSERT_EQUAL(v, -5);
    CU_ASSERT_EQUAL(nu_config_get_int(cfg, "absent", 42, 1, 10, &v, err, sizeof(err)), NU_OK);
    CU_ASSERT_EQUAL(v, 42); /* default, not range-checked */
    CU_ASSERT_EQUAL(nu_config_get_int(cfg, "min64", 0, INT64_MIN, 0, &v, err, sizeof(err)), NU_OK);
    CU_ASSERT_EQUAL(v, INT64_MIN);

    v = 7;
    CU_ASSERT_EQUAL(nu_config_get_int(cfg, "big", 1, 1, 65535, &v, err, sizeof(err)),
                    NU_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(err, "t.conf:3: 'big' must be an integer from 1 to 65535 (got '70000')");
    CU_ASSERT_EQUAL(v, 7); /* untouched on error */
    CU_ASSERT_EQUAL(nu_config_get_int(cfg, "neg", 0, 0, 10, &v, err, sizeof(err)), NU_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(err, "t.conf:2: 'neg' must be an integer from 0 to 10 (got '-5')");
    static const char *bad[] = {"hex", "plus", "huge", "sp", "dash"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_EQUAL(
            nu_config_get_int(cfg, bad[i], 0, INT64_MIN, INT64_MAX, &v, err, sizeof(err)),
            NU_ERR_CONFIG);
    CU_ASSERT_EQUAL(nu_config_get_int(cfg, "port", 0, 10, 1, &v, err, sizeof(err)),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_config_get_int(NULL, "port", 0, 0, 1, &v, err, sizeof(err)),
                    NU_ERR_INVALID_ARG);
    nu_config_destroy(cfg);
}

static void test_bool_and_duration_getters(void)
{
    struct nu_config *cfg = parse_ok("a = yes\nb = Off\nc = TRUE\nd = 0\ne = maybe\nf = on\n"
                                     "t1 = 90s\nt2 = 15m\nt3 = 12h\nt4 = 30d\nt5 = 45\n"
                                     "t6 = 10x\nt7 = -5s\nt8 = +5\nt9 = 1d\n");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    char err[256] = "";
    int b = -1;
    static const struct {
        const char *key;
        int want;
    } bools[] = {{"a", 1}, {"b", 0}, {"c", 1}, {"d", 0}, {"f", 1}};
    for (size_t i = 0; i < sizeof(bools) / sizeof(bools[0]); i++) {
        CU_ASSERT_EQUAL(nu_config_get_bool(cfg, bools[i].key, 0, &b, err, sizeof(err)), NU_OK);
        CU_ASSERT_EQUAL(b, bools[i].want);
    }
    CU_ASSERT_EQUAL(nu_config_get_bool(cfg, "absent", 5, &b, err, sizeof(err)), NU_OK);
    CU_ASSERT_EQUAL(b, 1);
    CU_ASSERT_EQUAL(nu_config_get_bool(cfg, "e", 0, &b, err, sizeof(err)), NU_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(err,
                           "t.conf:5: 'e' must be yes/no, true/false, on/off or 1/0 (got 'maybe')");

    uint64_t s = 0;
    static const struct {
        const char *key;
        uint64_t want;
    } durs[] = {{"t1", 90}, {"t2", 900}, {"t3", 43200}, {"t4", 2592000}, {"t5", 45}};
    for (size_t i = 0; i < sizeof(durs) / sizeof(durs[0]); i++) {
        CU_ASSERT_EQUAL(
            nu_config_get_duration(cfg, durs[i].key, 0, 0, UINT64_MAX, &s, err, sizeof(err)),
            NU_OK);
        CU_ASSERT_EQUAL(s, durs[i].want);
    }
    CU_ASSERT_EQUAL(nu_config_get_duration(cfg, "absent", 300, 1, 2, &s, err, sizeof(err)), NU_OK);
    CU_ASSERT_EQUAL(s, 300);
    static const char *bad[] = {"t6", "t7", "t8", "a"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_EQUAL(nu_config_get_duration(cfg, bad[i], 0, 0, UINT64_MAX, &s, err, sizeof(err)),
                        NU_ERR_CONFIG);
    CU_ASSERT_EQUAL(nu_config_get_duration(cfg, "t9", 0, 1, 3600, &s, err, sizeof(err)),
                    NU_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(
        err, "t.conf:15: 't9' must be a duration (90s, 15m, 12h, 30d) from 1s to 3600s (got '1d')");
    nu_config_destroy(cfg);
}

static void test_unknown_key_detection(void)
{
    struct nu_config *cfg = parse_ok("listener.port = 1\n# c\nlog.level = info\n"
                                     "programmer.a.sockets = 4\nlisten.port = 2\n");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cfg);
    static const char *const allowed[] = {"listener.port", "log.level", "programmer.*", NULL};
    const char *bad = (const char *)1;
    char err[128] = "";
    CU_ASSERT_EQUAL(nu_config_check_keys(cfg, allowed, &bad, err, sizeof(err)), NU_ERR_CONFIG);
    CU_ASSERT_STRING_EQUAL(bad, "listen.port");
    CU_ASSERT_STRING_EQUAL(err, "t.conf:5: unknown key 'listen.port'");

    static const char *const all[] = {"listener.port", "log.level", "programmer.*", "listen.port",
                                      NULL};
    CU_ASSERT_EQUAL(nu_config_check_keys(cfg, all, &bad, err, sizeof(err)), NU_OK);
    CU_ASSERT_PTR_NULL(bad);

    /* "programmer.*" does not match "programmer" nor "programmers.x". */
    struct nu_config *c2 = parse_ok("programmer = 1\n");
    static const char *const wild[] = {"programmer.*", NULL};
    CU_ASSERT_EQUAL(nu_config_check_keys(c2, wild, NULL, NULL, 0), NU_ERR_CONFIG);
    nu_config_destroy(c2);
    c2 = parse_ok("programmer. = 1\n"); /* the prefix alone names no setting */
    CU_ASSERT_EQUAL(nu_config_check_keys(c2, wild, NULL, NULL, 0), NU_ERR_CONFIG);
    nu_config_destroy(c2);
    c2 = parse_ok("programmers.x = 1\n");
    CU_ASSERT_EQUAL(nu_config_check_keys(c2, wild, NULL, NULL, 0), NU_ERR_CONFIG);
    nu_config_destroy(c2);
    CU_ASSERT_EQUAL(nu_config_check_keys(cfg, NULL, NULL, NULL, 0), NU_ERR_INVALID_ARG);
    nu_config_destroy(cfg);
}

static void test_load_from_file(void)
{
    char path[512], err[512] = "";
    struct nu_config *cfg = NULL;
    nu_path_fmt(path, sizeof(path), "%s/cloud.conf", tmp);
    const char *text = "listener.port = 8883\nlistener.port = 8884\n";
    CU_ASSERT_EQUAL_FATAL(nu_file_write_atomic(path, text, strlen(text), 0644), NU_OK);
    CU_ASSERT_EQUAL(nu_config_load(path, &cfg, err, sizeof(err)), NU_ERR_CONFIG);
    char expect[700];
    snprintf(expect, sizeof(expect), "%s:2: duplicate key 'listener.port' (first set on line 1)",
             path);
    CU_ASSERT_STRING_EQUAL(err, expect);

    text = "listener.port = 8883\n";
    CU_ASSERT_EQUAL_FATAL(nu_file_write_atomic(path, text, strlen(text), 0644), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_config_load(path, &cfg, err, sizeof(err)), NU_OK);
    CU_ASSERT_STRING_EQUAL(nu_config_name(cfg), path);
    CU_ASSERT_STRING_EQUAL(nu_config_get_str(cfg, "listener.port", NULL), "8883");
    nu_config_destroy(cfg);

    nu_path_fmt(path, sizeof(path), "%s/missing.conf", tmp);
    CU_ASSERT_EQUAL(nu_config_load(path, &cfg, err, sizeof(err)), NU_ERR_NOT_FOUND);
    CU_ASSERT_PTR_NULL(cfg);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "missing.conf: "));

    nu_path_fmt(path, sizeof(path), "%s/big.conf", tmp);
    char *big = malloc(NU_CONFIG_FILE_MAX + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, '#', NU_CONFIG_FILE_MAX + 1);
    CU_ASSERT_EQUAL_FATAL(nu_file_write_atomic(path, big, NU_CONFIG_FILE_MAX + 1, 0644), NU_OK);
    free(big);
    CU_ASSERT_EQUAL(nu_config_load(path, &cfg, err, sizeof(err)), NU_ERR_TOO_LARGE);
    CU_ASSERT_PTR_NOT_NULL(strstr(err, "larger than 65536 bytes"));
    CU_ASSERT_EQUAL(nu_config_load(NULL, &cfg, err, sizeof(err)), NU_ERR_INVALID_ARG);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"good file", test_good_file},
        {"each error names its line", test_each_error_names_its_line},
        {"buffer limits and arguments", test_buffer_limits_and_arguments},
        {"int getter range checks", test_int_getter},
        {"bool and duration getters", test_bool_and_duration_getters},
        {"unknown key detection", test_unknown_key_detection},
        {"load from a file", test_load_from_file},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_config", setup, teardown, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_config", suites);
}
