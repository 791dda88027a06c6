/* broker/pins.c: the identity serial list a re-enrollment rewrites. */
#include "nu_err.h"
#include "nu_test.h"
#include "pins.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int parse(const char *text, struct nusec_pins **out, size_t *line)
{
    return nusec_pins_parse(text, strlen(text), out, line);
}

static void test_pins_parse_and_allow(void)
{
    struct nusec_pins *p = NULL;
    size_t line = 0;
    CU_ASSERT_EQUAL_FATAL(parse("# current identity serials\n"
                                "prog-1 00A1b2\n"
                                "  prog-2\t7f  # trailing comment\r\n"
                                "\n",
                                &p, &line),
                          NU_OK);
    CU_ASSERT_EQUAL(nusec_pins_count(p), 2);
    /* case and leading zeros do not matter; another serial does */
    CU_ASSERT_TRUE(nusec_pins_allow(p, "prog-1", "a1b2"));
    CU_ASSERT_TRUE(nusec_pins_allow(p, "prog-1", "00A1B2"));
    CU_ASSERT_FALSE(nusec_pins_allow(p, "prog-1", "a1b3"));
    CU_ASSERT_FALSE(nusec_pins_allow(p, "prog-1", ""));
    CU_ASSERT_FALSE(nusec_pins_allow(p, "prog-1", NULL));
    CU_ASSERT_FALSE(nusec_pins_allow(p, "prog-1", "zz"));
    CU_ASSERT_TRUE(nusec_pins_allow(p, "prog-2", "7F"));
    /* no pin: not this list's business (revocation and the cloud decide) */
    CU_ASSERT_TRUE(nusec_pins_allow(p, "prog-3", "01"));
    CU_ASSERT_TRUE(nusec_pins_allow(NULL, "prog-1", "01"));
    CU_ASSERT_TRUE(nusec_pins_has(p, "prog-2"));
    CU_ASSERT_FALSE(nusec_pins_has(p, "prog-3"));
    CU_ASSERT_FALSE(nusec_pins_has(NULL, "prog-1"));
    nusec_pins_free(p);
}

static void test_pins_reject_whole_file(void)
{
    static const struct {
        const char *text;
        size_t line;
    } bad[] = {
        {"prog-1\n", 1},               /* no serial */
        {"prog-1 01 02\n", 1},         /* extra token */
        {"ok 01\nprog/1 01\n", 2},     /* not an identity */
        {"prog-1 0x01\n", 1},          /* not hex */
        {"prog-1 01\nprog-1 02\n", 2}, /* listed twice */
        {"prog-1 "
         "00000000000000000000000000000000000000000000000000000000000000001\n",
         1}, /* 65 digits */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct nusec_pins *p = (struct nusec_pins *)1;
        size_t line = 0;
        CU_ASSERT_EQUAL(parse(bad[i].text, &p, &line), NU_ERR_DECODE);
        CU_ASSERT_PTR_NULL(p);
        CU_ASSERT_EQUAL(line, bad[i].line);
    }
    struct nusec_pins *p = NULL;
    CU_ASSERT_EQUAL(parse("", &p, NULL), NU_OK); /* empty: no pins */
    CU_ASSERT_EQUAL(nusec_pins_count(p), 0);
    nusec_pins_free(p);
}

static char changed[4][70];
static size_t n_changed;

static void on_changed(void *ctx, const char *id)
{
    (void)ctx;
    if (n_changed < 4)
        snprintf(changed[n_changed++], sizeof(changed[0]), "%s", id);
}

static void test_pins_changed(void)
{
    struct nusec_pins *a = NULL, *b = NULL;
    CU_ASSERT_EQUAL_FATAL(parse("prog-1 01\nprog-2 02\n", &a, NULL), NU_OK);
    CU_ASSERT_EQUAL_FATAL(parse("prog-1 01\nprog-2 03\nprog-4 04\n", &b, NULL), NU_OK);
    n_changed = 0;
    nusec_pins_changed(a, b, on_changed, NULL);
    /* prog-2 re-enrolled; prog-4 is new (its first certificate: nobody to kick) */
    CU_ASSERT_EQUAL(n_changed, 1);
    CU_ASSERT_STRING_EQUAL(changed[0], "prog-2");
    n_changed = 0;
    nusec_pins_changed(NULL, b, on_changed, NULL);
    CU_ASSERT_EQUAL(n_changed, 0);
    nusec_pins_free(a);
    nusec_pins_free(b);
}

/* A fleet's list, in no order: every id found with its own serial, one
 * listed twice far apart refuses the whole list at its second line. */
static void test_pins_large_list(void)
{
    enum { N = 5000 };
    size_t cap = N * 32 + 64, len = 0, line = 0;
    char *text = malloc(cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    for (int i = 0; i < N; i++) {
        int k = (i * 7919) % N; /* a permutation of 0..N-1 */
        len += (size_t)snprintf(text + len, cap - len, "prog-%d %x\n", k, k + 1);
    }
    struct nusec_pins *p = NULL;
    CU_ASSERT_EQUAL_FATAL(nusec_pins_parse(text, len, &p, &line), NU_OK);
    CU_ASSERT_EQUAL(nusec_pins_count(p), N);
    char id[32], hex[16];
    for (int k = 0; k < N; k++) {
        snprintf(id, sizeof(id), "prog-%d", k);
        snprintf(hex, sizeof(hex), "%x", k + 1);
        CU_ASSERT_TRUE(nusec_pins_has(p, id));
        CU_ASSERT_TRUE(nusec_pins_allow(p, id, hex));
        snprintf(hex, sizeof(hex), "%x", k + 2);
        CU_ASSERT_FALSE(nusec_pins_allow(p, id, hex));
    }
    CU_ASSERT_FALSE(nusec_pins_has(p, "prog-5000"));
    nusec_pins_free(p);
    len += (size_t)snprintf(text + len, cap - len, "prog-17 99\n"); /* line N + 1 */
    CU_ASSERT_EQUAL(nusec_pins_parse(text, len, &p, &line), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(line, (size_t)N + 1);
    CU_ASSERT_PTR_NULL(p);
    free(text);
}

static const struct nu_test_case pins_cases[] = {
    {"a fleet-sized list: every id found, a duplicate refused", test_pins_large_list},
    {"serial list parses; pins allow the current serial only", test_pins_parse_and_allow},
    {"a malformed serial list is rejected whole", test_pins_reject_whole_file},
    {"re-enrolled identities are found for kicking", test_pins_changed},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"broker_pins", NULL, NULL, pins_cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    return nu_test_run("broker_test_pins", suites);
}
