/* station_progress: devices per minute, ETA, percent, bars, durations. */
#include "station_progress.h"

#include "nu_test.h"

#include <string.h>

static void test_rate(void)
{
    /* nothing counted, or no start: no rate */
    CU_ASSERT_DOUBLE_EQUAL(station_rate_per_min(0, 1000, 5000, 60000), 0.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(station_rate_per_min(5, 0, 5000, 60000), 0.0, 1e-9);
    CU_ASSERT_DOUBLE_EQUAL(station_rate_per_min(5, 6000, 5000, 60000), 0.0, 1e-9);
    /* 10 devices in the 30 s since the first: 20 per minute */
    CU_ASSERT_DOUBLE_EQUAL(station_rate_per_min(10, 100000, 130000, 60000), 20.0, 1e-9);
    /* a long run: only the last window counts */
    CU_ASSERT_DOUBLE_EQUAL(station_rate_per_min(30, 1000, 1000000, 60000), 30.0, 1e-9);
    /* the first device alone is not a huge rate: at least a 1 s span */
    CU_ASSERT_DOUBLE_EQUAL(station_rate_per_min(1, 1000, 1001, 60000), 60.0, 1e-9);
}

static void test_eta(void)
{
    CU_ASSERT_EQUAL(station_eta_s(10, 10, 0.0), 0);
    CU_ASSERT_EQUAL(station_eta_s(12, 10, 5.0), 0);
    CU_ASSERT_EQUAL(station_eta_s(0, 10, 0.0), -1);
    CU_ASSERT_EQUAL(station_eta_s(0, 10, -1.0), -1);
    CU_ASSERT_EQUAL(station_eta_s(4, 10, 60.0), 6);           /* 6 left at 1/s */
    CU_ASSERT_EQUAL(station_eta_s(4, 10, 7.0), 52);           /* 6 * 60 / 7 = 51.4 -> 52 */
    CU_ASSERT_EQUAL(station_eta_s(0, 4000000000u, 1e-9), -1); /* absurd: unknown */
}

static void test_percent(void)
{
    CU_ASSERT_EQUAL(station_percent(0, 0), 0);
    CU_ASSERT_EQUAL(station_percent(1, 3), 33);
    CU_ASSERT_EQUAL(station_percent(2, 3), 66);
    CU_ASSERT_EQUAL(station_percent(3, 3), 100);
    CU_ASSERT_EQUAL(station_percent(5, 3), 100);
    CU_ASSERT_EQUAL(station_percent(4000000000u, 4294967295u), 93);
}

static void test_bar(void)
{
    char out[64];
    station_bar(0, 10, 10, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "[----------]");
    station_bar(5, 10, 10, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "[#####-----]");
    station_bar(9, 10, 4, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "[###-]");
    station_bar(20, 10, 4, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "[####]");
    station_bar(3, 0, 4, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "[----]");
    station_bar(1, 2, 10, out, 12); /* needs 13 */
    CU_ASSERT_STRING_EQUAL(out, "");
    station_bar(1, 2, 1, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "");
}

static void test_duration(void)
{
    char out[32];
    station_duration(-1, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "--");
    station_duration(0, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "0s");
    station_duration(59, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "59s");
    station_duration(65, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "1m05s");
    station_duration(3720, out, sizeof(out));
    CU_ASSERT_STRING_EQUAL(out, "1h02m");
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"rate", test_rate}, {"eta", test_eta},           {"percent", test_percent},
        {"bar", test_bar},   {"duration", test_duration}, {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"station_progress", NULL, NULL, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("station_test_progress", suites);
}
