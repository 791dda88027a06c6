/*
 * cloud_fairq: what a well-behaved sender sees while another floods the
 * queue. Behaviour only (order of service, who gets BUSY), no timing.
 */
#include "cloud_fairq.h"
#include "nu_err.h"
#include "nu_test.h"

#include <stdio.h>
#include <string.h>

struct item {
    struct cloud_fairq_link link; /* first: the queue hands back this pointer */
    char sender[CLOUD_FAIRQ_SENDER_MAX + 2];
    int seq;
};

#define POOL 2048
static struct item pool[POOL];
static size_t used;

static struct item *mk(const char *sender, int seq)
{
    struct item *it = &pool[used++ % POOL];
    snprintf(it->sender, sizeof(it->sender), "%s", sender);
    it->seq = seq;
    return it;
}

static int push(struct cloud_fairq *q, const char *sender, int seq)
{
    return cloud_fairq_push(q, sender, &mk(sender, seq)->link);
}

static struct item *pop(struct cloud_fairq *q)
{
    return (struct item *)cloud_fairq_pop(q, NULL, NULL, NULL);
}

/* A flood of 1000 from one identity, then 3 from a programmer: the
 * programmer's come out within the next 6 items served, not after 1000. */
static void test_flood_does_not_delay_others(void)
{
    struct cloud_fairq *q = NULL;
    CU_ASSERT_EQUAL_FATAL(cloud_fairq_new(1000, 100000, &q), NU_OK);
    for (int i = 0; i < 1000; i++)
        CU_ASSERT_EQUAL(push(q, "station", i), NU_OK);
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(push(q, "prog-1", i), NU_OK);
    CU_ASSERT_EQUAL(cloud_fairq_depth(q), 1003);
    CU_ASSERT_EQUAL(cloud_fairq_senders(q), 2);
    int seen = 0, next_prog = 0, next_station = 0;
    for (int i = 0; i < 6; i++) {
        struct item *it = pop(q);
        CU_ASSERT_PTR_NOT_NULL_FATAL(it);
        if (strcmp(it->sender, "prog-1") == 0) {
            CU_ASSERT_EQUAL(it->seq, next_prog++); /* FIFO within a sender */
            seen++;
        } else {
            CU_ASSERT_EQUAL(it->seq, next_station++);
        }
    }
    CU_ASSERT_EQUAL(seen, 3);
    CU_ASSERT_EQUAL(cloud_fairq_sender_depth(q, "prog-1"), 0);
    CU_ASSERT_EQUAL(cloud_fairq_senders(q), 1); /* an empty sender is forgotten */
    /* The flood itself comes out whole and in order. */
    struct item *it;
    while ((it = pop(q)) != NULL) {
        CU_ASSERT_STRING_EQUAL(it->sender, "station");
        CU_ASSERT_EQUAL(it->seq, next_station++);
    }
    CU_ASSERT_EQUAL(next_station, 1000);
    CU_ASSERT_EQUAL(cloud_fairq_depth(q), 0);
    CU_ASSERT_PTR_NULL(pop(q));
    cloud_fairq_free(q);
}

/* Three senders with work: strict rotation A B C A B C. */
static void test_round_robin_order(void)
{
    struct cloud_fairq *q = NULL;
    CU_ASSERT_EQUAL_FATAL(cloud_fairq_new(10, 100, &q), NU_OK);
    const char *ids[] = {"a", "b", "c"};
    for (int i = 0; i < 3; i++)
        for (int s = 0; s < 3; s++)
            CU_ASSERT_EQUAL(push(q, ids[s], i), NU_OK);
    for (int i = 0; i < 9; i++) {
        struct item *it = pop(q);
        CU_ASSERT_PTR_NOT_NULL_FATAL(it);
        CU_ASSERT_STRING_EQUAL(it->sender, ids[i % 3]);
        CU_ASSERT_EQUAL(it->seq, i / 3);
    }
    cloud_fairq_free(q);
}

/* A sender that arrives mid-round is served after those waiting in that
 * round, before the round starts again. */
static void test_newcomer_joins_end_of_round(void)
{
    struct cloud_fairq *q = NULL;
    char who[8] = "";
    CU_ASSERT_EQUAL_FATAL(cloud_fairq_new(10, 100, &q), NU_OK);
    push(q, "a", 0);
    push(q, "a", 1);
    push(q, "b", 0);
    push(q, "b", 1);
    CU_ASSERT_PTR_NOT_NULL(cloud_fairq_pop(q, NULL, NULL, who)); /* a0 */
    CU_ASSERT_STRING_EQUAL(who, "a");
    push(q, "c", 0);
    CU_ASSERT_STRING_EQUAL(pop(q)->sender, "b");
    CU_ASSERT_STRING_EQUAL(pop(q)->sender, "c");
    CU_ASSERT_STRING_EQUAL(pop(q)->sender, "a");
    CU_ASSERT_STRING_EQUAL(pop(q)->sender, "b");
    CU_ASSERT_PTR_NULL(pop(q));
    cloud_fairq_free(q);
}

/* The per-sender bound: the flooder gets BUSY, others still get in; a
 * served item makes room again. The total bound is a BUSY for everyone. */
static void test_bounds(void)
{
    struct cloud_fairq *q = NULL;
    CU_ASSERT_EQUAL_FATAL(cloud_fairq_new(4, 6, &q), NU_OK);
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL(push(q, "flood", i), NU_OK);
    CU_ASSERT_EQUAL(push(q, "flood", 4), NU_ERR_BUSY);
    CU_ASSERT_EQUAL(cloud_fairq_sender_depth(q, "flood"), 4);
    CU_ASSERT_EQUAL(push(q, "prog", 0), NU_OK);
    CU_ASSERT_STRING_EQUAL(pop(q)->sender, "flood");
    CU_ASSERT_EQUAL(push(q, "flood", 5), NU_OK);
    CU_ASSERT_EQUAL(cloud_fairq_depth(q), 5);
    CU_ASSERT_EQUAL(push(q, "other", 0), NU_OK); /* 6 = total */
    CU_ASSERT_EQUAL(push(q, "late", 0), NU_ERR_BUSY);
    CU_ASSERT_EQUAL(cloud_fairq_depth(q), 6);
    CU_ASSERT_EQUAL(cloud_fairq_sender_depth(q, "late"), 0);
    cloud_fairq_free(q);
}

static int only_even(const struct cloud_fairq_link *l, void *ctx)
{
    (void)ctx;
    return ((const struct item *)l)->seq % 2 == 0;
}

/* A filtered take skips senders whose head does not match; they keep their place. */
static void test_filtered_take(void)
{
    struct cloud_fairq *q = NULL;
    CU_ASSERT_EQUAL_FATAL(cloud_fairq_new(10, 100, &q), NU_OK);
    push(q, "a", 1); /* odd head */
    push(q, "b", 2);
    push(q, "c", 3); /* odd head */
    struct item *it = (struct item *)cloud_fairq_pop(q, only_even, NULL, NULL);
    CU_ASSERT_PTR_NOT_NULL_FATAL(it);
    CU_ASSERT_STRING_EQUAL(it->sender, "b");
    CU_ASSERT_PTR_NULL(cloud_fairq_pop(q, only_even, NULL, NULL));
    CU_ASSERT_EQUAL(cloud_fairq_depth(q), 2);
    CU_ASSERT_STRING_EQUAL(pop(q)->sender, "c"); /* the round goes on after b */
    CU_ASSERT_STRING_EQUAL(pop(q)->sender, "a");
    cloud_fairq_free(q);
}

static void test_bad_arguments(void)
{
    struct cloud_fairq *q = NULL;
    char long_id[CLOUD_FAIRQ_SENDER_MAX + 2];
    memset(long_id, 'x', sizeof(long_id) - 1);
    long_id[sizeof(long_id) - 1] = 0;
    CU_ASSERT_EQUAL(cloud_fairq_new(0, 10, &q), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_fairq_new(10, 0, &q), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_fairq_new(10, 10, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL_FATAL(cloud_fairq_new(10, 10, &q), NU_OK);
    CU_ASSERT_EQUAL(push(q, "", 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(push(q, long_id, 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_fairq_push(q, NULL, &mk("x", 0)->link), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_fairq_push(q, "x", NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_fairq_depth(q), 0);
    CU_ASSERT_PTR_NULL(pop(q));
    CU_ASSERT_PTR_NULL(cloud_fairq_pop(NULL, NULL, NULL, NULL));
    cloud_fairq_free(q);
    cloud_fairq_free(NULL);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"a flood does not delay another sender", test_flood_does_not_delay_others},
        {"round robin order", test_round_robin_order},
        {"a newcomer is served after those waiting", test_newcomer_joins_end_of_round},
        {"per-sender and total bounds answer BUSY", test_bounds},
        {"filtered take keeps the others' places", test_filtered_take},
        {"bad arguments", test_bad_arguments},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"cloud_fairq", NULL, NULL, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("cloud_test_fairq", suites);
}
