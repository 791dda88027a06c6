/* station_event: decoding bus messages and the monitor's text and JSON lines. */
#include "station_event.h"
#include "station_fixture.h"

#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char tmp[256];

static int setup(void)
{
    return nu_test_tmpdir("stevent", tmp, sizeof(tmp));
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

static void esc_is(const char *in, const char *want)
{
    char out[256];
    CU_ASSERT_EQUAL(station_json_escape(in, out, sizeof(out)), NU_OK);
    CU_ASSERT_STRING_EQUAL(out, want);
    if (strcmp(out, want))
        fprintf(stderr, "escape: got %s want %s\n", out, want);
}

static void test_json_escape(void)
{
    esc_is("", "\"\"");
    esc_is("plain", "\"plain\"");
    esc_is("a\"b\\c", "\"a\\\"b\\\\c\"");
    esc_is("l1\nl2\tt\rr", "\"l1\\nl2\\tt\\rr\"");
    esc_is("\x01\x1f\x7f", "\"\\u0001\\u001f\\u007f\"");
    esc_is("caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80",
           "\"caf\xc3\xa9 \xe2\x82\xac \xf0\x9f\x98\x80\"");
    /* invalid UTF-8: lone continuation, truncated, overlong, surrogate, > U+10FFFF */
    esc_is("\x80", "\"\\ufffd\"");
    esc_is("a\xc3", "\"a\\ufffd\"");
    esc_is("\xc0\xaf", "\"\\ufffd\\ufffd\"");
    esc_is("\xed\xa0\x80", "\"\\ufffd\\ufffd\\ufffd\"");
    esc_is("\xf4\x90\x80\x80", "\"\\ufffd\\ufffd\\ufffd\\ufffd\"");
    char small[8];
    CU_ASSERT_EQUAL(station_json_escape("1234567", small, sizeof(small)), NU_ERR_TOO_LARGE);
    CU_ASSERT_STRING_EQUAL(small, "");
    CU_ASSERT_EQUAL(station_json_escape("12345", small, sizeof(small)), NU_OK);
    CU_ASSERT_EQUAL(station_json_escape(NULL, small, sizeof(small)), NU_ERR_INVALID_ARG);
}

static void test_topic_parse(void)
{
    char role[65], id[65], kind[65];
    CU_ASSERT_EQUAL(station_event_topic_parse("nusec/v1/events/programmer/prog-1/device.failed",
                                              role, id, kind),
                    NU_OK);
    CU_ASSERT_STRING_EQUAL(role, "programmer");
    CU_ASSERT_STRING_EQUAL(id, "prog-1");
    CU_ASSERT_STRING_EQUAL(kind, "device.failed");
    static const char *const bad[] = {
        "nusec/v1/events/programmer/prog-1",
        "nusec/v1/events/a/b/c/d",
        "nusec/v1/events//b/c",
        "nusec/v1/events/a/b/",
        "nusec/v1/prog/p/status",
        "nusec/v1/events/a/b c/k",
        "nusec/v1/events/a/b/\xc3\xa9",
        "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_EQUAL(station_event_topic_parse(bad[i], role, id, kind), NU_ERR_INVALID_ARG);
}

static void test_device_event_decodes(void)
{
    static const uint8_t uid[4] = {0x0a, 0x1b, 0x2c, 0x3d};
    uint8_t *env = NULL;
    size_t len = 0;
    struct station_event ev;
    /* A control character in a detail: no sender can even encode it. */
    CU_ASSERT_NOT_EQUAL(sf_event("prog-1", 42, "device.failed", "J1", uid, sizeof(uid), 3, 2,
                                 NU_ERR_QUOTA_EXHAUSTED, "cert\nrefused", &env, &len),
                        NU_OK);
    CU_ASSERT_EQUAL_FATAL(sf_event("prog-1", 42, "device.failed", "J1", uid, sizeof(uid), 3, 2,
                                   NU_ERR_QUOTA_EXHAUSTED, "cert \"refused\" \\", &env, &len),
                          NU_OK);
    const char *why = NULL;
    CU_ASSERT_EQUAL_FATAL(station_event_decode("nusec/v1/events/programmer/prog-1/device.failed",
                                               env, len, &ev, &why),
                          NU_OK);
    CU_ASSERT_STRING_EQUAL(ev.sender, "prog-1");
    CU_ASSERT_STRING_EQUAL(ev.role, "programmer");
    CU_ASSERT_STRING_EQUAL(ev.kind, "device.failed");
    CU_ASSERT_EQUAL(ev.seq, 42);
    CU_ASSERT_STRING_EQUAL(ev.job_id, "J1");
    CU_ASSERT_TRUE(ev.has_device);
    CU_ASSERT_STRING_EQUAL(ev.device_uid, "0a1b2c3d");
    CU_ASSERT_EQUAL(ev.socket, 3);
    CU_ASSERT_STRING_EQUAL(ev.outcome, "failed");
    CU_ASSERT_EQUAL(ev.error, NU_ERR_QUOTA_EXHAUSTED);
    CU_ASSERT_STRING_EQUAL(ev.detail, "cert \"refused\" \\");

    /* The text line and the JSON line; JSON checked by a real parser. */
    char line[8192], path[512];
    CU_ASSERT_EQUAL(station_event_text(&ev, line, sizeof(line)), NU_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(line, "programmer/prog-1 device.failed job=J1 uid=0a1b2c3d"));
    CU_ASSERT_PTR_NOT_NULL(strstr(line, "error=QUOTA_EXHAUSTED"));
    CU_ASSERT_PTR_NOT_NULL(strstr(line, "detail=\"cert \\\"refused\\\" \\\\\""));
    CU_ASSERT_PTR_NULL(strchr(line, '\n'));
    CU_ASSERT_EQUAL(station_event_json(&ev, line, sizeof(line)), NU_OK);
    snprintf(path, sizeof(path), "%s/ev.json", tmp);
    FILE *f = fopen(path, "w");
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    fprintf(f, "%s\n", line);
    fclose(f);
    CU_ASSERT_EQUAL(
        nu_test_sh("python3 -c 'import json,sys; e=json.loads(open(sys.argv[1]).read()); "
                   "assert e[\"kind\"]==\"device.failed\" and e[\"sender\"]==\"prog-1\"; "
                   "assert e[\"seq\"]==42 and e[\"socket\"]==3 and e[\"job\"]==\"J1\"; "
                   "assert e[\"device_uid\"]==\"0a1b2c3d\" and e[\"outcome\"]==\"failed\"; "
                   "assert e[\"error\"]==\"QUOTA_EXHAUSTED\"; "
                   "assert e[\"detail\"]==\"cert \\\"refused\\\" \\\\\", e[\"detail\"]; "
                   "assert e[\"topic\"].endswith(\"/device.failed\")' %s",
                   path),
        0);
    char small[40];
    CU_ASSERT_EQUAL(station_event_json(&ev, small, sizeof(small)), NU_ERR_TOO_LARGE);
    CU_ASSERT_STRING_EQUAL(small, "");
    free(env);
}

static void test_impostors_are_refused(void)
{
    uint8_t *env = NULL;
    size_t len = 0;
    struct station_event ev;
    const char *why = NULL;
    CU_ASSERT_EQUAL_FATAL(
        sf_event("prog-2", 1, "device.provisioned", "J1", NULL, 0, 0, 0, 0, NULL, &env, &len),
        NU_OK);
    /* Published by prog-1 (the topic), claiming to be prog-2 inside. */
    CU_ASSERT_EQUAL(station_event_decode("nusec/v1/events/programmer/prog-1/device.provisioned",
                                         env, len, &ev, &why),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NOT_NULL(why);
    /* A kind other than the topic's. */
    CU_ASSERT_EQUAL(station_event_decode("nusec/v1/events/programmer/prog-2/device.failed", env,
                                         len, &ev, &why),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(station_event_decode("nusec/v1/events/programmer/prog-2/device.provisioned",
                                         env, len, &ev, &why),
                    NU_OK);
    /* A status is not an event, and garbage is garbage. */
    free(env);
    CU_ASSERT_EQUAL_FATAL(sf_status("prog-2", 5, 2, "J1", 8, 3, &env, &len), NU_OK);
    CU_ASSERT_EQUAL(
        station_event_decode("nusec/v1/events/programmer/prog-2/x", env, len, &ev, &why),
        NU_ERR_INVALID_ARG);
    CU_ASSERT_NOT_EQUAL(station_event_decode("nusec/v1/events/programmer/prog-2/x",
                                             (const uint8_t *)"\x0a\xff", 2, &ev, &why),
                        NU_OK);
    free(env);
}

static void test_status_decodes(void)
{
    uint8_t *env = NULL;
    size_t len = 0;
    struct station_status s;
    CU_ASSERT_EQUAL_FATAL(sf_status("prog-3", 9, 3, "J7", 16, 5, &env, &len), NU_OK);
    CU_ASSERT_EQUAL(station_status_decode("nusec/v1/prog/prog-3/status", env, len, &s, NULL),
                    NU_OK);
    CU_ASSERT_STRING_EQUAL(s.programmer_id, "prog-3");
    CU_ASSERT_EQUAL(s.state, 3);
    CU_ASSERT_STRING_EQUAL(station_prog_state_name(s.state), "producing");
    CU_ASSERT_STRING_EQUAL(s.job_id, "J7");
    CU_ASSERT_EQUAL(s.limit, 16);
    CU_ASSERT_EQUAL(s.counter, 5);
    CU_ASSERT_EQUAL(s.seq, 9);
    CU_ASSERT_EQUAL(station_status_decode("nusec/v1/prog/prog-4/status", env, len, &s, NULL),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(station_status_decode("nusec/v1/prog/prog-3/cmd", env, len, &s, NULL),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_STRING_EQUAL(station_prog_state_name(99), "unknown");
    free(env);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"JSON escaping", test_json_escape},
        {"event topic parsing", test_topic_parse},
        {"device event decodes, text and JSON lines", test_device_event_decodes},
        {"impostors are refused", test_impostors_are_refused},
        {"programmer status decodes", test_status_decodes},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"station_event", setup, teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("station_test_event", suites);
}
