/* station_lock: one daemon per state directory, and what the CLI sees of it. */
#include "station_lock.h"

#include "nu_err.h"
#include "nu_test.h"

#include <stdio.h>
#include <unistd.h>

static char tmp[256];

static int setup(void)
{
    return nu_test_tmpdir("stationlock", tmp, sizeof(tmp)) ? -1 : 0;
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

static void test_one_daemon_per_dir(void)
{
    int fd = -1, second = -1;
    pid_t pid = 1;
    CU_ASSERT_EQUAL(station_daemon_running(tmp, &pid), 0);
    CU_ASSERT_EQUAL(pid, 0);
    CU_ASSERT_EQUAL_FATAL(station_lock_take(tmp, &fd), NU_OK);
    CU_ASSERT_TRUE(fd >= 0);
    /* Seen from elsewhere: running, with the holder's pid. */
    CU_ASSERT_EQUAL(station_daemon_running(tmp, &pid), 1);
    CU_ASSERT_EQUAL(pid, getpid());
    CU_ASSERT_EQUAL(station_daemon_running(tmp, NULL), 1);
    /* A second daemon on the same directory is refused. */
    CU_ASSERT_EQUAL(station_lock_take(tmp, &second), NU_ERR_BUSY);
    if (second >= 0)
        close(second);
    /* Closing the file releases it: no daemon, and the next one may start. */
    close(fd);
    CU_ASSERT_EQUAL(station_daemon_running(tmp, &pid), 0);
    CU_ASSERT_EQUAL(station_lock_take(tmp, &fd), NU_OK);
    close(fd);
    CU_ASSERT_EQUAL(station_daemon_running(NULL, &pid), 0);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"one daemon per state directory", test_one_daemon_per_dir},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"station_lock", setup, teardown, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_lock", suites);
}
