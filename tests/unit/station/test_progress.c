/* station_progress: devices per minute, ETA, percent, bars, durations. */
#include "station_progress.h"
#include "station_report.h"

#include "nu_test.h"

#include <stdio.h>
#include <stdlib.h>
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

/* The live view at a terminal's width: every line fits, columns go whole,
 * least important first, and failed and ETA outlive the bar and the rate. */
static void test_report_fits_width(void)
{
    struct station_report_prog progs[2] = {
        {.programmer_id = "prog-1",
         .state = "producing",
         .limit = 16,
         .done = 9,
         .failed = 123,
         .per_min = 159.8,
         .eta_s = 95},
        {.programmer_id = "prog-2", .state = "offline", .limit = 16, .done = 16, .eta_s = -1},
    };
    struct station_report_job job = {.job = {.job_id = "job-0123456789abcdef"},
                                     .limit = 32,
                                     .done = 25,
                                     .failed = 123,
                                     .per_min = 319.6,
                                     .eta_s = 21,
                                     .n_progs = 2,
                                     .progs = progs};
    struct station_report r = {.daemon_running = 1, .n_jobs = 1, .jobs = &job};
    const unsigned widths[] = {60, 80, 120, 0};
    for (size_t w = 0; w < sizeof(widths) / sizeof(widths[0]); w++) {
        char *text = NULL;
        size_t len = 0;
        FILE *mem = open_memstream(&text, &len);
        CU_ASSERT_EQUAL(station_report_text(&r, widths[w], mem), 3);
        fclose(mem);
        for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
            if (widths[w])
                CU_ASSERT_TRUE(strlen(line) <= widths[w]);
            CU_ASSERT_PTR_NOT_NULL(strstr(line, "/16") ? line : strstr(line, "/32"));
            /* a column is whole or absent */
            char *f = strstr(line, "failed");
            if (f)
                CU_ASSERT_TRUE(strncmp(f, "failed 123", 10) == 0 || strncmp(f, "failed 0", 8) == 0);
            if (widths[w] >= 80) {
                CU_ASSERT_PTR_NOT_NULL(strstr(line, "failed"));
                CU_ASSERT_PTR_NOT_NULL(strstr(line, "ETA"));
            }
            if (widths[w] == 0 || widths[w] >= 120)
                CU_ASSERT_PTR_NOT_NULL(strstr(line, "/min"));
        }
        free(text);
    }
}

/* The words and exit codes every view shares (README "production start"). */
static void test_outcome_words(void)
{
    char line[160];
    station_outcome_line(STATION_OUTCOME_LIMIT, 16, 16, 0, NULL, line, sizeof(line));
    CU_ASSERT_STRING_EQUAL(line, "limit reached: 16 of 16 done");
    station_outcome_line(STATION_OUTCOME_TRAY_EMPTY, 12, 16, 1, NULL, line, sizeof(line));
    CU_ASSERT_STRING_EQUAL(line,
                           "tray empty: 12 of 16 done, 1 chip failed, load blanks and start again");
    station_outcome_line(STATION_OUTCOME_STOPPED, 3, 16, 0, "ignored", line, sizeof(line));
    CU_ASSERT_STRING_EQUAL(line, "stopped by operator: 3 of 16 done");
    station_outcome_line(STATION_OUTCOME_REFUSED, 14, 16, 2, "QUOTA_EXHAUSTED", line,
                         sizeof(line));
    CU_ASSERT_STRING_EQUAL(line, "cloud refused: quota exhausted: 14 of 16 done, 2 chips failed");
    station_outcome_line(STATION_OUTCOME_FAILED, 0, 8, 0, "EXPIRED: the package expired", line,
                         sizeof(line));
    CU_ASSERT_STRING_EQUAL(line, "failed: EXPIRED: the package expired: 0 of 8 done");
    CU_ASSERT_STRING_EQUAL(station_outcome_name(STATION_OUTCOME_TRAY_EMPTY), "tray empty");
    CU_ASSERT_STRING_EQUAL(station_outcome_name(STATION_OUTCOME_REFUSED), "cloud refused");
    CU_ASSERT_EQUAL(station_outcome_exit(STATION_OUTCOME_LIMIT), 0);
    CU_ASSERT_EQUAL(station_outcome_exit(STATION_OUTCOME_FAILED), 1);
    CU_ASSERT_EQUAL(station_outcome_exit(STATION_OUTCOME_TRAY_EMPTY), 4);
    CU_ASSERT_EQUAL(station_outcome_exit(STATION_OUTCOME_STOPPED), 5);
    CU_ASSERT_EQUAL(station_outcome_exit(STATION_OUTCOME_REFUSED), 6);
    CU_ASSERT_EQUAL(station_outcome_exit(STATION_OUTCOME_RUNNING), 7);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"rate", test_rate},
        {"eta", test_eta},
        {"percent", test_percent},
        {"bar", test_bar},
        {"duration", test_duration},
        {"report fits the width", test_report_fits_width},
        {"outcome words and exit codes", test_outcome_words},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"station_progress", NULL, NULL, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("station_test_progress", suites);
}
