/* station_owners: the broker's ownership table, edited atomically by concurrent writers. */
#include "station_owners.h"

#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static char tmp[256], owners[400];

static int setup(void)
{
    if (nu_test_tmpdir("owners", tmp, sizeof(tmp)))
        return -1;
    char broker[300];
    snprintf(broker, sizeof(broker), "%s/broker", tmp);
    snprintf(owners, sizeof(owners), "%s/owners", broker);
    return nu_mkdirs(broker, 0755) == NU_OK ? 0 : -1;
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

static char *owners_text(void)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    return nu_file_read(owners, 1 << 20, &buf, &len) == NU_OK ? (char *)buf : NULL;
}

static void test_add_is_idempotent_and_keeps_lines(void)
{
    CU_ASSERT_EQUAL(station_owners_has(tmp, "station", "prog-1"), 0); /* no file yet */
    CU_ASSERT_EQUAL(station_owners_add(tmp, "station", "prog-1"), NU_OK);
    char *t = owners_text();
    CU_ASSERT_STRING_EQUAL(t, "station prog-1\n");
    free(t);
    static const char hand[] = "# station programmer\nother\tprog-7   \r\nstation prog-1";
    CU_ASSERT_EQUAL(nu_file_write_atomic(owners, hand, strlen(hand), 0644), NU_OK);
    CU_ASSERT_EQUAL(station_owners_add(tmp, "station", "prog-1"), NU_OK);
    CU_ASSERT_EQUAL(station_owners_add(tmp, "other", "prog-7"), NU_OK);
    t = owners_text();
    CU_ASSERT_STRING_EQUAL(t, "# station programmer\nother\tprog-7   \r\nstation prog-1");
    free(t);
    CU_ASSERT_EQUAL(station_owners_add(tmp, "station", "prog-2"), NU_OK);
    t = owners_text();
    CU_ASSERT_STRING_EQUAL(t, "# station programmer\nother\tprog-7   \r\nstation prog-1\n"
                              "station prog-2\n");
    free(t);
    CU_ASSERT_EQUAL(station_owners_has(tmp, "station", "prog-2"), 1);
    CU_ASSERT_EQUAL(station_owners_has(tmp, "other", "prog-7"), 1);
    /* prefixes are not matches */
    CU_ASSERT_EQUAL(station_owners_has(tmp, "station", "prog-"), 0);
    CU_ASSERT_EQUAL(station_owners_has(tmp, "statio", "prog-1"), 0);
    CU_ASSERT_EQUAL(station_owners_has(tmp, "station", "prog-10"), 0);
}

static void test_bad_ids_refused(void)
{
    CU_ASSERT_EQUAL(station_owners_add(tmp, "station", "prog 1"), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(station_owners_add(tmp, "station\nevil", "p"), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(station_owners_add(tmp, "", "p"), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(station_owners_add(NULL, "s", "p"), NU_ERR_INVALID_ARG);
}

static void test_concurrent_writers_lose_nothing(void)
{
    unlink(owners);
    enum { WRITERS = 4, EACH = 25 };
    pid_t kids[WRITERS];
    for (int w = 0; w < WRITERS; w++) {
        kids[w] = fork();
        if (kids[w] == 0) {
            char prog[32];
            int bad = 0;
            for (int i = 0; i < EACH; i++) {
                snprintf(prog, sizeof(prog), "p-%d-%d", w, i);
                bad += station_owners_add(tmp, "station", prog) != NU_OK;
            }
            _exit(bad);
        }
    }
    for (int w = 0; w < WRITERS; w++) {
        int st = -1;
        waitpid(kids[w], &st, 0);
        CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0);
    }
    int missing = 0;
    for (int w = 0; w < WRITERS; w++) {
        for (int i = 0; i < EACH; i++) {
            char prog[32];
            snprintf(prog, sizeof(prog), "p-%d-%d", w, i);
            missing += station_owners_has(tmp, "station", prog) != 1;
        }
    }
    CU_ASSERT_EQUAL(missing, 0);
    CU_ASSERT_EQUAL(nu_test_sh("test $(wc -l < %s) -eq %d", owners, WRITERS * EACH), 0);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"add is idempotent and keeps lines", test_add_is_idempotent_and_keeps_lines},
        {"bad ids refused", test_bad_ids_refused},
        {"concurrent writers lose nothing", test_concurrent_writers_lose_nothing},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"station_owners", setup, teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("station_test_owners", suites);
}
