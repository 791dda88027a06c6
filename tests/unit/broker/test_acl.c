/* broker/acl: the NuSEC topic ACL, identities, client ids, list files. */
#include "acl.h"
#include "nu_err.h"
#include "nu_test.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define R NUSEC_ACCESS_READ
#define W NUSEC_ACCESS_WRITE
#define S NUSEC_ACCESS_SUBSCRIBE

enum { DENY = 0, ALLOW = 1 };

struct acl_case {
    enum nusec_role role;
    const char *id;
    int access;
    const char *topic;
    int retain;
    int expect;
};

static const struct acl_case cases[] = {
    /* every role: its own events, exactly one level after the id */
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progA/device.provisioned", 0,
     ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/events/cloud/cloud1/job.created", 0, ALLOW},
    {NUSEC_ROLE_MONITOR, "mon1", W, "nusec/v1/events/monitor/mon1/hello", 0, ALLOW},
    {NUSEC_ROLE_OEM, "oem1", W, "nusec/v1/events/oem/oem1/x", 0, ALLOW},
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/events/station/st1/x", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progB/x", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/cloud/progA/x", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progA", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progA/x/y", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progA/", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progA//x", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "/nusec/v1/events/programmer/progA/x", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progA/x", 1,
     DENY}, /* retained */
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progA/+", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/progA/#", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "NUSEC/v1/events/programmer/progA/x", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/events/programmer/proga/x", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", R, "nusec/v1/events/programmer/progA/x", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/events/#", 0, DENY},

    /* cloud */
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/cloud/req/+/+", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$share/cloud/nusec/v1/cloud/req/+/+", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$share/cloud/nusec/v1/cloud/req/progA/+", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$share/cloud/nusec/v1/cloud/req/#", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$share//nusec/v1/cloud/req/+/+", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$share/cloud", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$share/cloud/", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$share/c+/nusec/v1/cloud/req/+/+", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$share/cloud/$SYS/#", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$SHARE/cloud/nusec/v1/cloud/req/+/+", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", R, "$share/cloud/nusec/v1/cloud/req/a/b", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", R, "nusec/v1/cloud/req/progA/sign", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/cloud/req/+", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/cloud/req/+/+/+", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/cloud/req/cloud1/x", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/reply/progA/r1", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/reply/progA/a/b/c", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/reply/progA/r1", 1, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/reply/#", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/jobs/J42", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/jobs/J42", 1, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/jobs/J42/x", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/jobs", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/crl/device", 1, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/crl/fleet", 0, DENY},
    /* the broker's lists from the cloud agents (plugin_opt_adopt_lists) */
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/cloud/lists/revoked", 1, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/cloud/lists/serials", 1, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/cloud/lists/owners/progA", 1, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/cloud/lists/owners/+", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/cloud/lists/owners", 1, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/cloud/lists/identities", 1, DENY},
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/cloud/lists/revoked", 0, DENY},
    {NUSEC_ROLE_OEM, "oem1", W, "nusec/v1/cloud/lists/owners/progA", 1, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/cloud/lists/serials", 1, DENY},
    {NUSEC_ROLE_MONITOR, "mon1", S, "nusec/v1/cloud/lists/revoked", 0, DENY},
    {NUSEC_ROLE_SITE, "st1", W, "nusec/v1/cloud/lists/revoked", 1, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/events/#", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/events/programmer/+/+", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", R, "nusec/v1/events/programmer/progA/x", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/prog/+/status", 0, ALLOW},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/prog/+/cmd", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/prog/progA/cmd", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "#", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "+/+/+/+/+/+", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/#", 0, DENY},

    /* programmer */
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/cloud/req/progA/sign", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/cloud/req/progB/sign", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/cloud/req/progA", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/cloud/req/progA/a/b", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/cloud/req/progA/sign", 1, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/cloud/req/+/+", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/reply/progA/#", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/reply/progA/r1", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/reply/progA/+", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/reply/progA", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/reply/progB/#", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/reply/#", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/reply/+/#", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/reply/+/r1", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "$share/x/nusec/v1/reply/progA/#", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "$share/x/nusec/v1/reply/progB/#", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", R, "nusec/v1/reply/progA/r1", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", R, "nusec/v1/reply/progB/r1", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/reply/progA/r1", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/prog/progA/cmd", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/prog/+/cmd", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", R, "nusec/v1/prog/progB/cmd", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/prog/progA/cmd", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/prog/progA/status", 1, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/prog/progB/status", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/prog/+/status", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/jobs/+", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/jobs/#", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", R, "nusec/v1/jobs/J42", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/jobs/J42", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/crl/device", 0, ALLOW},
    {NUSEC_ROLE_PROGRAMMER, "progA", W, "nusec/v1/crl/device", 0, DENY},
    {NUSEC_ROLE_PROGRAMMER, "progA", S, "nusec/v1/events/#", 0, DENY},

    /* station (owns progA, not progB) */
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/cloud/req/st1/import", 0, ALLOW},
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/cloud/req/st2/import", 0, DENY},
    {NUSEC_ROLE_STATION, "st1", S, "nusec/v1/reply/st1/#", 0, ALLOW},
    {NUSEC_ROLE_STATION, "st1", S, "nusec/v1/reply/st2/#", 0, DENY},
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/prog/progA/cmd", 0, ALLOW},
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/prog/progA/cmd", 1, DENY},
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/prog/progB/cmd", 0, DENY},
    {NUSEC_ROLE_STATION, "st2", W, "nusec/v1/prog/progA/cmd", 0, DENY},
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/prog/progA/status", 0, DENY},
    {NUSEC_ROLE_STATION, "st1", S, "nusec/v1/prog/progA/cmd", 0, DENY},
    {NUSEC_ROLE_STATION, "st1", S, "nusec/v1/prog/+/status", 0, ALLOW},
    {NUSEC_ROLE_STATION, "st1", R, "nusec/v1/prog/progB/status", 0, ALLOW},
    {NUSEC_ROLE_STATION, "st1", S, "nusec/v1/events/#", 0, ALLOW},
    {NUSEC_ROLE_STATION, "st1", S, "nusec/v1/jobs/+", 0, ALLOW},
    {NUSEC_ROLE_STATION, "st1", S, "nusec/v1/crl/device", 0, DENY},
    {NUSEC_ROLE_STATION, "st1", W, "nusec/v1/jobs/J42", 0, DENY},

    /* oem */
    {NUSEC_ROLE_OEM, "oem1", W, "nusec/v1/cloud/req/oem1/job.create", 0, ALLOW},
    {NUSEC_ROLE_OEM, "oem1", W, "nusec/v1/cloud/req/progA/job.create", 0, DENY},
    {NUSEC_ROLE_OEM, "oem1", S, "nusec/v1/reply/oem1/#", 0, ALLOW},
    {NUSEC_ROLE_OEM, "oem1", S, "nusec/v1/events/#", 0, ALLOW},
    {NUSEC_ROLE_OEM, "oem1", S, "nusec/v1/jobs/+", 0, ALLOW},
    {NUSEC_ROLE_OEM, "oem1", S, "nusec/v1/prog/+/status", 0, ALLOW},
    {NUSEC_ROLE_OEM, "oem1", S, "nusec/v1/crl/device", 0, ALLOW},
    {NUSEC_ROLE_OEM, "oem1", W, "nusec/v1/jobs/J42", 0, DENY},
    {NUSEC_ROLE_OEM, "oem1", W, "nusec/v1/prog/progA/cmd", 0, DENY},

    /* monitor */
    {NUSEC_ROLE_MONITOR, "mon1", S, "nusec/v1/events/#", 0, ALLOW},
    {NUSEC_ROLE_MONITOR, "mon1", S, "nusec/v1/jobs/+", 0, ALLOW},
    {NUSEC_ROLE_MONITOR, "mon1", S, "nusec/v1/prog/+/status", 0, ALLOW},
    {NUSEC_ROLE_MONITOR, "mon1", W, "nusec/v1/cloud/req/mon1/x", 0, DENY},
    {NUSEC_ROLE_MONITOR, "mon1", S, "nusec/v1/reply/mon1/#", 0, DENY},
    {NUSEC_ROLE_MONITOR, "mon1", S, "nusec/v1/crl/device", 0, DENY},
    {NUSEC_ROLE_MONITOR, "mon1", S, "nusec/v1/cloud/req/+/+", 0, DENY},
    {NUSEC_ROLE_MONITOR, "mon1", W, "nusec/v1/jobs/J42", 0, DENY},

    /* $SYS and other $ trees, for everyone */
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$SYS/#", 0, DENY},
    {NUSEC_ROLE_MONITOR, "mon1", S, "$SYS/broker/clients/connected", 0, DENY},
    {NUSEC_ROLE_MONITOR, "mon1", R, "$SYS/broker/uptime", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "$SYS/broker/connection/x/state", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "$CONTROL/dynamic-security/#", 0, DENY},

    /* malformed filters and topics */
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/events/#/x", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/events/a#", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/events/a+/x", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/jobs/a+b", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "nusec/v1/events//#", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", S, "", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "/", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", W, "nusec/v1/jobs/J42/", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", 0, "nusec/v1/jobs/J42", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", 8, "nusec/v1/jobs/J42", 0, DENY},
    {NUSEC_ROLE_CLOUD, "cloud1", R | W, "nusec/v1/jobs/J42", 0, DENY},
    {NUSEC_ROLE_NONE, "cloud1", W, "nusec/v1/jobs/J42", 0, DENY},
    {(enum nusec_role)99, "cloud1", W, "nusec/v1/jobs/J42", 0, DENY},
    {NUSEC_ROLE_CLOUD, "bad id", W, "nusec/v1/jobs/J42", 0, DENY},
    {NUSEC_ROLE_CLOUD, "", W, "nusec/v1/jobs/J42", 0, DENY},
};

static struct nusec_acl_set *owners(void)
{
    static const char text[] = "st1 progA\nst1 progC\n";
    struct nusec_acl_set *set = NULL;
    CU_ASSERT_EQUAL_FATAL(nusec_acl_owners_parse(text, strlen(text), &set, NULL), NU_OK);
    return set;
}

static void test_acl_table(void)
{
    struct nusec_acl_set *own = owners();
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct acl_case *c = &cases[i];
        struct nusec_acl_subject s = {c->id, c->role, own};
        bool got = nusec_acl_check(&s, c->access, c->topic, c->retain);
        if (got != (bool)c->expect)
            fprintf(stderr, "case %zu: %s %s access %d '%s' retain %d: got %d want %d\n", i,
                    nusec_acl_role_name(c->role), c->id, c->access, c->topic, c->retain, got,
                    c->expect);
        CU_ASSERT_EQUAL(got, (bool)c->expect);
    }
    nusec_acl_set_free(own);
}

static void test_acl_null_and_oversize(void)
{
    struct nusec_acl_subject s = {"cloud1", NUSEC_ROLE_CLOUD, NULL};
    CU_ASSERT_FALSE(nusec_acl_check(NULL, W, "nusec/v1/jobs/J", false));
    CU_ASSERT_FALSE(nusec_acl_check(&s, W, NULL, false));
    struct nusec_acl_subject noid = {NULL, NUSEC_ROLE_CLOUD, NULL};
    CU_ASSERT_FALSE(nusec_acl_check(&noid, W, "nusec/v1/jobs/J", false));

    /* A job id that makes the topic exactly the limit passes, one more byte fails. */
    char topic[NUSEC_ACL_TOPIC_MAX + 2];
    size_t pre = strlen("nusec/v1/jobs/");
    memcpy(topic, "nusec/v1/jobs/", pre);
    memset(topic + pre, 'j', NUSEC_ACL_TOPIC_MAX - pre);
    topic[NUSEC_ACL_TOPIC_MAX] = '\0';
    CU_ASSERT_TRUE(nusec_acl_check(&s, W, topic, false));
    topic[NUSEC_ACL_TOPIC_MAX] = 'j';
    topic[NUSEC_ACL_TOPIC_MAX + 1] = '\0';
    CU_ASSERT_FALSE(nusec_acl_check(&s, W, topic, false));

    /* Too many levels under the reply tree. */
    char deep[256] = "nusec/v1/reply/x";
    for (int i = 0; i < NUSEC_ACL_LEVELS_MAX; i++)
        strcat(deep, "/a");
    CU_ASSERT_FALSE(nusec_acl_check(&s, W, deep, false));
    CU_ASSERT_TRUE(nusec_acl_check(&s, W, "nusec/v1/reply/x/a/a/a/a/a/a/a/a/a/a/a", false));
}

static void test_response_topic(void)
{
    struct nusec_acl_subject a = {"progA", NUSEC_ROLE_PROGRAMMER, NULL};
    CU_ASSERT_TRUE(nusec_acl_response_topic_ok(&a, "nusec/v1/reply/progA/42"));
    CU_ASSERT_FALSE(nusec_acl_response_topic_ok(&a, "nusec/v1/reply/progB/42"));
    CU_ASSERT_FALSE(nusec_acl_response_topic_ok(&a, "nusec/v1/reply/progA/+"));
    CU_ASSERT_FALSE(nusec_acl_response_topic_ok(&a, "nusec/v1/jobs/x/y"));
    CU_ASSERT_FALSE(nusec_acl_response_topic_ok(&a, ""));
    CU_ASSERT_FALSE(nusec_acl_response_topic_ok(&a, NULL));
}

static void test_roles(void)
{
    CU_ASSERT_EQUAL(nusec_acl_role_parse("cloud", 5), NUSEC_ROLE_CLOUD);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("programmer", 10), NUSEC_ROLE_PROGRAMMER);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("station", 7), NUSEC_ROLE_STATION);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("monitor", 7), NUSEC_ROLE_MONITOR);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("oem", 3), NUSEC_ROLE_OEM);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("Cloud", 5), NUSEC_ROLE_NONE);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("cloud ", 6), NUSEC_ROLE_NONE);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("clou", 4), NUSEC_ROLE_NONE);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("cloud\0x", 7), NUSEC_ROLE_NONE);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("none", 4), NUSEC_ROLE_NONE);
    CU_ASSERT_EQUAL(nusec_acl_role_parse("", 0), NUSEC_ROLE_NONE);
    CU_ASSERT_EQUAL(nusec_acl_role_parse(NULL, 3), NUSEC_ROLE_NONE);
    CU_ASSERT_STRING_EQUAL(nusec_acl_role_name(NUSEC_ROLE_OEM), "oem");
    CU_ASSERT_STRING_EQUAL(nusec_acl_role_name((enum nusec_role)42), "none");
}

/* The site role (issue 14): a CM site's bridge at the cloud broker. */
static void test_site_role(void)
{
    static const char text[] = "siteA progA\nsiteA progC\nsiteB progB\n";
    struct nusec_acl_set *own = NULL;
    CU_ASSERT_EQUAL_FATAL(nusec_acl_owners_parse(text, strlen(text), &own, NULL), NU_OK);
    struct nusec_acl_subject a = {"siteA", NUSEC_ROLE_SITE, own};
    CU_ASSERT_EQUAL(nusec_acl_role_parse("site", 4), NUSEC_ROLE_SITE);
    CU_ASSERT_STRING_EQUAL(nusec_acl_role_name(NUSEC_ROLE_SITE), "site");
    /* its programmers' requests, events, status; their replies */
    CU_ASSERT_TRUE(nusec_acl_check(&a, W, "nusec/v1/cloud/req/progA/cert.request", false));
    CU_ASSERT_TRUE(nusec_acl_check(&a, W, "nusec/v1/cloud/req/progC/firmware.chunk", false));
    CU_ASSERT_TRUE(
        nusec_acl_check(&a, W, "nusec/v1/events/programmer/progA/device.provisioned", false));
    CU_ASSERT_TRUE(nusec_acl_check(&a, W, "nusec/v1/prog/progA/status", true));
    CU_ASSERT_TRUE(nusec_acl_check(&a, S, "nusec/v1/reply/progA/#", false));
    CU_ASSERT_TRUE(nusec_acl_check(&a, R, "nusec/v1/reply/progA/r", false));
    CU_ASSERT_TRUE(nusec_acl_response_topic_ok(&a, "nusec/v1/reply/progC/r"));
    /* its station (same CN as the site) */
    CU_ASSERT_TRUE(nusec_acl_check(&a, W, "nusec/v1/cloud/req/siteA/job.list", false));
    CU_ASSERT_TRUE(nusec_acl_check(&a, S, "nusec/v1/reply/siteA/#", false));
    CU_ASSERT_TRUE(nusec_acl_check(&a, W, "nusec/v1/events/station/siteA/x", false));
    /* what every site needs to read */
    CU_ASSERT_TRUE(nusec_acl_check(&a, S, "nusec/v1/jobs/+", false));
    CU_ASSERT_TRUE(nusec_acl_check(&a, S, "nusec/v1/crl/device", false));
    /* another site's programmer, anyone's replies, everything else */
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/cloud/req/progB/cert.request", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/events/programmer/progB/x", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, R, "nusec/v1/reply/progB/r", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, R, "nusec/v1/reply/cloud1/r", false));
    /* the bridge's one wide reply subscription (and so any narrower filter) is
     * allowed as a filter only: each delivery on it is READ-checked, and
     * another site's programmer's reply is refused just above */
    CU_ASSERT_TRUE(nusec_acl_check(&a, S, "nusec/v1/reply/#", false));
    CU_ASSERT_TRUE(nusec_acl_check(&a, S, "nusec/v1/reply/progB/#", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/reply/progA/r", false));
    CU_ASSERT_FALSE(nusec_acl_response_topic_ok(&a, "nusec/v1/reply/progB/r"));
    CU_ASSERT_FALSE(nusec_acl_check(&a, S, "nusec/v1/events/#", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, S, "$share/cloud/nusec/v1/cloud/req/+/+", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/jobs/J1", true));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/crl/device", true));
    /* the lists the cloud broker's plugin publishes: revocations, its own owners */
    CU_ASSERT_TRUE(nusec_acl_check(&a, S, "nusec/v1/broker/revoked", false));
    CU_ASSERT_TRUE(nusec_acl_check(&a, R, "nusec/v1/broker/owners/siteA", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, S, "nusec/v1/broker/owners/siteB", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, S, "nusec/v1/broker/owners/+", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/broker/revoked", true));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/broker/owners/siteA", true));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/prog/progA/cmd", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/events/cloud/siteA/x", false));
    CU_ASSERT_FALSE(nusec_acl_check(&a, W, "nusec/v1/events/programmer/progA/x", true));
    nusec_acl_set_free(own);
}

static void test_identities(void)
{
    char max[NUSEC_ACL_ID_MAX + 2];
    memset(max, 'a', sizeof(max));
    CU_ASSERT_TRUE(nusec_acl_identity_valid("progA", 5));
    CU_ASSERT_TRUE(nusec_acl_identity_valid("a.b_c-D9", 8));
    CU_ASSERT_TRUE(nusec_acl_identity_valid(max, NUSEC_ACL_ID_MAX));
    CU_ASSERT_FALSE(nusec_acl_identity_valid(max, NUSEC_ACL_ID_MAX + 1));
    CU_ASSERT_FALSE(nusec_acl_identity_valid("", 0));
    CU_ASSERT_FALSE(nusec_acl_identity_valid("a b", 3));
    CU_ASSERT_FALSE(nusec_acl_identity_valid("a/b", 3));
    CU_ASSERT_FALSE(nusec_acl_identity_valid("a+", 2));
    CU_ASSERT_FALSE(nusec_acl_identity_valid("a#", 2));
    CU_ASSERT_FALSE(nusec_acl_identity_valid("a:b", 3));
    CU_ASSERT_FALSE(nusec_acl_identity_valid("a\0b", 3));
    CU_ASSERT_FALSE(nusec_acl_identity_valid("\xc3\xa9t\xc3\xa9", 6));
    CU_ASSERT_FALSE(nusec_acl_identity_valid(NULL, 0));
}

static void test_client_ids(void)
{
    CU_ASSERT_TRUE(nusec_acl_client_id_ok("progA", "progA"));
    CU_ASSERT_TRUE(nusec_acl_client_id_ok("cloud", "cloud:2"));
    CU_ASSERT_TRUE(nusec_acl_client_id_ok("cloud", "cloud:agent-2.b_c"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("st", "st-2")); /* would collide with CN st-2 */
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("st", "st.2")); /* likewise */
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", "progB"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", "prog"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", "progAB"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", "progA:"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", "progA:x:y"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", "progA:a/b"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", "progA:0123456789012345678901234567890123"));
    CU_ASSERT_TRUE(nusec_acl_client_id_ok("progA", "progA:01234567890123456789012345678901"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", ""));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", "auto-1234"));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("progA", NULL));
    CU_ASSERT_FALSE(nusec_acl_client_id_ok("bad id", "bad id"));
}

static void test_revoked_parse(void)
{
    static const char text[] = "# revoked identities\n"
                               "progB\n"
                               "  progC  # lost on 2024-05-01\r\n"
                               "\n"
                               "\t\n"
                               "progB\n"
                               "progD";
    struct nusec_acl_set *set = NULL;
    size_t line = 99;
    CU_ASSERT_EQUAL_FATAL(nusec_acl_revoked_parse(text, strlen(text), &set, &line), NU_OK);
    CU_ASSERT_EQUAL(line, 0);
    CU_ASSERT_EQUAL(nusec_acl_set_count(set), 3);
    CU_ASSERT_TRUE(nusec_acl_set_get(set, "progB", NULL));
    CU_ASSERT_TRUE(nusec_acl_set_get(set, "progC", NULL));
    CU_ASSERT_TRUE(nusec_acl_set_get(set, "progD", NULL));
    CU_ASSERT_FALSE(nusec_acl_set_get(set, "progA", NULL));
    CU_ASSERT_FALSE(nusec_acl_set_get(set, "prog", NULL));
    nusec_acl_set_free(set);

    set = NULL;
    CU_ASSERT_EQUAL(nusec_acl_revoked_parse("", 0, &set, &line), NU_OK);
    CU_ASSERT_EQUAL(nusec_acl_set_count(set), 0);
    nusec_acl_set_free(set);
}

static void test_revoked_parse_rejects(void)
{
    static const struct {
        const char *text;
        size_t len;
        int rc;
        size_t line;
    } bad[] = {
        {"progA\nprog B\n", 13, NU_ERR_DECODE, 2},
        {"progA\nprog/B\n", 13, NU_ERR_DECODE, 2},
        {"ok\n\nx\xff\n", 7, NU_ERR_DECODE, 3},
        {"a\0b\n", 4, NU_ERR_DECODE, 1},
        {"aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\n", 66, NU_ERR_DECODE,
         1},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct nusec_acl_set *set = (struct nusec_acl_set *)1;
        size_t line = 0;
        CU_ASSERT_EQUAL(nusec_acl_revoked_parse(bad[i].text, bad[i].len, &set, &line), bad[i].rc);
        CU_ASSERT_EQUAL(line, bad[i].line);
        CU_ASSERT_PTR_NULL(set);
    }
    /* An overlong line is refused whatever it holds. */
    size_t n = 5000;
    char *big = malloc(n);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, ' ', n);
    struct nusec_acl_set *set = NULL;
    size_t line = 0;
    CU_ASSERT_EQUAL(nusec_acl_revoked_parse(big, n, &set, &line), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(line, 1);
    free(big);
    CU_ASSERT_EQUAL(nusec_acl_revoked_parse(NULL, 3, &set, &line), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nusec_acl_revoked_parse("a", 1, NULL, &line), NU_ERR_INVALID_ARG);
}

static void test_owners_parse(void)
{
    static const char text[] = "# station programmer\n"
                               "st1 progA\n"
                               "st1\tprogB   # second line\n"
                               "st2 progC\r\n";
    struct nusec_acl_set *set = NULL;
    CU_ASSERT_EQUAL_FATAL(nusec_acl_owners_parse(text, strlen(text), &set, NULL), NU_OK);
    CU_ASSERT_TRUE(nusec_acl_owns(set, "st1", "progA"));
    CU_ASSERT_TRUE(nusec_acl_owns(set, "st1", "progB"));
    CU_ASSERT_TRUE(nusec_acl_owns(set, "st2", "progC"));
    CU_ASSERT_FALSE(nusec_acl_owns(set, "st2", "progA"));
    CU_ASSERT_FALSE(nusec_acl_owns(set, "progA", "st1"));
    CU_ASSERT_FALSE(nusec_acl_owns(set, "st1", "progA "));
    CU_ASSERT_FALSE(nusec_acl_owns(NULL, "st1", "progA"));
    CU_ASSERT_FALSE(nusec_acl_owns(set, NULL, "progA"));

    /* Ownership reaches the topic check only through the table passed in. */
    struct nusec_acl_subject st1 = {"st1", NUSEC_ROLE_STATION, set};
    CU_ASSERT_TRUE(nusec_acl_check(&st1, W, "nusec/v1/prog/progB/cmd", false));
    st1.owners = NULL;
    CU_ASSERT_FALSE(nusec_acl_check(&st1, W, "nusec/v1/prog/progB/cmd", false));
    nusec_acl_set_free(set);

    static const char *const bad[] = {"st1\n", "st1 progA extra\n", "st1 prog/A\n",
                                      "st1 progA\nst2 progB progC\n"};
    static const size_t bad_line[] = {1, 1, 1, 2};
    for (size_t i = 0; i < 4; i++) {
        size_t line = 0;
        set = NULL;
        CU_ASSERT_EQUAL(nusec_acl_owners_parse(bad[i], strlen(bad[i]), &set, &line), NU_ERR_DECODE);
        CU_ASSERT_EQUAL(line, bad_line[i]);
        CU_ASSERT_PTR_NULL(set);
    }
}

static void test_set_order_and_replace(void)
{
    struct nusec_acl_set *set = NULL;
    CU_ASSERT_EQUAL_FATAL(nusec_acl_set_new(&set), NU_OK);
    char key[16];
    for (int i = 99; i >= 0; i--) {
        snprintf(key, sizeof(key), "k%02d", i);
        CU_ASSERT_EQUAL(nusec_acl_set_put(set, key, i), NU_OK);
    }
    CU_ASSERT_EQUAL(nusec_acl_set_put(set, "k05", 500), NU_OK);
    CU_ASSERT_EQUAL(nusec_acl_set_count(set), 100);
    int v = 0;
    CU_ASSERT_TRUE(nusec_acl_set_get(set, "k05", &v));
    CU_ASSERT_EQUAL(v, 500);
    CU_ASSERT_TRUE(nusec_acl_set_get(set, "k99", &v));
    CU_ASSERT_EQUAL(v, 99);
    CU_ASSERT_STRING_EQUAL(nusec_acl_set_key(set, 0), "k00");
    CU_ASSERT_STRING_EQUAL(nusec_acl_set_key(set, 99), "k99");
    CU_ASSERT_PTR_NULL(nusec_acl_set_key(set, 100));
    CU_ASSERT_EQUAL(nusec_acl_set_put(set, NULL, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nusec_acl_set_put(NULL, "x", 1), NU_ERR_INVALID_ARG);
    nusec_acl_set_free(set);
    nusec_acl_set_free(NULL);
    CU_ASSERT_EQUAL(nusec_acl_set_count(NULL), 0);
    CU_ASSERT_FALSE(nusec_acl_set_get(NULL, "x", NULL));
}

static void test_log_safe(void)
{
    char out[16];
    CU_ASSERT_STRING_EQUAL(nusec_acl_log_safe("a/b", out, sizeof(out)), "a/b");
    CU_ASSERT_STRING_EQUAL(nusec_acl_log_safe("a\nb", out, sizeof(out)), "a\\x0ab");
    CU_ASSERT_STRING_EQUAL(nusec_acl_log_safe("\\", out, sizeof(out)), "\\x5c");
    CU_ASSERT_STRING_EQUAL(nusec_acl_log_safe("0123456789abcde", out, sizeof(out)),
                           "0123456789abcde"); /* exactly fits */
    CU_ASSERT_STRING_EQUAL(nusec_acl_log_safe("0123456789abcdef", out, sizeof(out)),
                           "0123456789ab...");
    CU_ASSERT_STRING_EQUAL(nusec_acl_log_safe("\x1b\x1b\x1b\x1b\x1b", out, sizeof(out)),
                           "\\x1b\\x1b\\x1b...");
    CU_ASSERT_STRING_EQUAL(nusec_acl_log_safe(NULL, out, sizeof(out)), "(null)");
    CU_ASSERT_TRUE(strlen(out) < sizeof(out));
}

/* ---- identities file (the plugin's identity -> role memory) ------------------- */

#define IDS_HEAD NUSEC_ACL_IDENTITIES_HEADER "\n"

/* Parse `text`; returns the code, the bad line into *line, frees the set. */
static int ids_parse(const char *text, size_t *line)
{
    struct nusec_acl_set *set = NULL;
    int rc = nusec_acl_identities_parse(text, strlen(text), &set, line);
    CU_ASSERT_TRUE(rc == NU_OK ? set != NULL : set == NULL);
    nusec_acl_set_free(set);
    return rc;
}

static void test_identities_roundtrip(void)
{
    struct nusec_acl_set *set = NULL, *back = NULL;
    CU_ASSERT_EQUAL_FATAL(nusec_acl_set_new(&set), NU_OK);
    CU_ASSERT_EQUAL(nusec_acl_set_put(set, "progA", NUSEC_ROLE_PROGRAMMER), NU_OK);
    CU_ASSERT_EQUAL(nusec_acl_set_put(set, "cloud1", NUSEC_ROLE_CLOUD), NU_OK);
    CU_ASSERT_EQUAL(nusec_acl_set_put(set, "st-1.a_b", NUSEC_ROLE_STATION), NU_OK);
    char *text = NULL;
    size_t len = 0, line = 99;
    CU_ASSERT_EQUAL_FATAL(nusec_acl_identities_format(set, &text, &len), NU_OK);
    CU_ASSERT_EQUAL(strlen(text), len);
    CU_ASSERT_EQUAL(strncmp(text, IDS_HEAD, strlen(IDS_HEAD)), 0);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nprogA programmer\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nend 3\n"));
    CU_ASSERT_EQUAL_FATAL(nusec_acl_identities_parse(text, len, &back, &line), NU_OK);
    CU_ASSERT_EQUAL(line, 0);
    CU_ASSERT_EQUAL(nusec_acl_set_count(back), 3);
    int role = 0;
    CU_ASSERT_TRUE(nusec_acl_set_get(back, "progA", &role));
    CU_ASSERT_EQUAL(role, NUSEC_ROLE_PROGRAMMER);
    CU_ASSERT_TRUE(nusec_acl_set_get(back, "cloud1", &role));
    CU_ASSERT_EQUAL(role, NUSEC_ROLE_CLOUD);
    CU_ASSERT_TRUE(nusec_acl_set_get(back, "st-1.a_b", &role));
    CU_ASSERT_EQUAL(role, NUSEC_ROLE_STATION);
    CU_ASSERT_FALSE(nusec_acl_set_get(back, "progB", NULL));
    free(text);
    nusec_acl_set_free(back);

    /* The empty set is a valid file too; a bad entry is never written. */
    struct nusec_acl_set *empty = NULL;
    CU_ASSERT_EQUAL_FATAL(nusec_acl_set_new(&empty), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nusec_acl_identities_format(empty, &text, &len), NU_OK);
    CU_ASSERT_EQUAL(ids_parse(text, &line), NU_OK);
    free(text);
    CU_ASSERT_EQUAL(nusec_acl_set_put(empty, "x", NUSEC_ROLE_NONE), NU_OK);
    text = NULL;
    CU_ASSERT_EQUAL(nusec_acl_identities_format(empty, &text, &len), NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(text);
    CU_ASSERT_EQUAL(nusec_acl_set_put(set, "bad id", NUSEC_ROLE_CLOUD), NU_OK);
    CU_ASSERT_EQUAL(nusec_acl_identities_format(set, &text, &len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nusec_acl_identities_format(NULL, &text, &len), NU_ERR_INVALID_ARG);
    nusec_acl_set_free(empty);
    nusec_acl_set_free(set);

    /* Comments, blank lines, CR/LF and spacing are tolerated. */
    CU_ASSERT_EQUAL(ids_parse(IDS_HEAD "# c\n\n  progA\tprogrammer  # x\r\nend 1\r\n\n", &line),
                    NU_OK);
}

static void test_identities_reject(void)
{
    static const struct {
        const char *text;
        int rc;
        size_t line;
    } bad[] = {
        {"", NU_ERR_DECODE, 0},                                   /* empty: no header */
        {"progA programmer\nend 1\n", NU_ERR_DECODE, 1},          /* no header */
        {"nusec-identities 2\nend 0\n", NU_ERR_DECODE, 1},        /* other version */
        {IDS_HEAD "progA programmer\n", NU_ERR_DECODE, 0},        /* truncated: no trailer */
        {IDS_HEAD "progA programmer\nprogB progr", NU_ERR_DECODE, 3}, /* cut mid-line */
        {IDS_HEAD "progA programmer\nend 2\n", NU_ERR_DECODE, 3}, /* cut at a line end */
        {IDS_HEAD "progA programmer\nen", NU_ERR_DECODE, 3},      /* cut in the trailer */
        {IDS_HEAD "progA programmer\nend 1\nprogB cloud\n", NU_ERR_DECODE, 4}, /* after end */
        {IDS_HEAD "end 0\nend 0\n", NU_ERR_DECODE, 3},
        {IDS_HEAD "progA programmer\nprogA programmer\nend 2\n", NU_ERR_DECODE, 3}, /* dup */
        {IDS_HEAD "progA programmer\nprogA cloud\nend 2\n", NU_ERR_DECODE, 3},      /* dup */
        {IDS_HEAD "progA\nend 1\n", NU_ERR_DECODE, 2},
        {IDS_HEAD "progA programmer extra\nend 1\n", NU_ERR_DECODE, 2},
        {IDS_HEAD "progA admin\nend 1\n", NU_ERR_DECODE, 2},
        {IDS_HEAD "progA Programmer\nend 1\n", NU_ERR_DECODE, 2},
        {IDS_HEAD "prog/A programmer\nend 1\n", NU_ERR_DECODE, 2},
        {IDS_HEAD "progA programmer\nend x\n", NU_ERR_DECODE, 3},
        {IDS_HEAD "progA programmer\nend -1\n", NU_ERR_DECODE, 3},
        {IDS_HEAD "progA programmer\nend 1 2\n", NU_ERR_DECODE, 3},
        {IDS_HEAD "progA programmer\nend 0000000001\n", NU_ERR_DECODE, 3}, /* > 9 digits */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        size_t line = 99;
        int rc = ids_parse(bad[i].text, &line);
        if (rc != bad[i].rc || line != bad[i].line)
            fprintf(stderr, "identities case %zu: rc %d line %zu\n", i, rc, line);
        CU_ASSERT_EQUAL(rc, bad[i].rc);
        CU_ASSERT_EQUAL(line, bad[i].line);
    }

    /* A NUL inside: decode error at that line. */
    static const char nul[] = IDS_HEAD "prog\0A programmer\nend 1\n";
    struct nusec_acl_set *set = NULL;
    size_t line = 0;
    CU_ASSERT_EQUAL(nusec_acl_identities_parse(nul, sizeof(nul) - 1, &set, &line), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(line, 2);
    CU_ASSERT_PTR_NULL(set);
    CU_ASSERT_EQUAL(nusec_acl_identities_parse(NULL, 1, &set, &line), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nusec_acl_identities_parse("", 0, NULL, &line), NU_ERR_INVALID_ARG);
}

static void test_identities_oversize(void)
{
    /* A line over 1 KiB. */
    size_t n = 2048;
    char *text = malloc(strlen(IDS_HEAD) + n + 16);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    strcpy(text, IDS_HEAD);
    memset(text + strlen(IDS_HEAD), 'a', n);
    strcpy(text + strlen(IDS_HEAD) + n, "\nend 0\n");
    size_t line = 0;
    CU_ASSERT_EQUAL(ids_parse(text, &line), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(line, 2);
    free(text);

    /* More entries than NUSEC_ACL_IDENTITIES_MAX: refused while reading
     * (the plugin's file-size cap stops far larger files before parsing). */
    size_t count = NUSEC_ACL_IDENTITIES_MAX + 1, cap = count * 24 + 64, off = 0;
    text = malloc(cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(text);
    off += (size_t)snprintf(text + off, cap - off, "%s", IDS_HEAD);
    for (size_t i = 0; i < count; i++)
        off += (size_t)snprintf(text + off, cap - off, "p%07zu monitor\n", i);
    off += (size_t)snprintf(text + off, cap - off, "end %zu\n", count);
    struct nusec_acl_set *set = NULL;
    CU_ASSERT_EQUAL(nusec_acl_identities_parse(text, off, &set, &line), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(line, NUSEC_ACL_IDENTITIES_MAX + 2);
    CU_ASSERT_PTR_NULL(set);
    free(text);
}

static const struct nu_test_case acl_cases[] = {
    {"topic table (allowed and denied per role)", test_acl_table},
    {"null, oversize and deep topics", test_acl_null_and_oversize},
    {"response topic must be readable by the requester", test_response_topic},
    {"roles parse exactly", test_roles},
    {"site role: its programmers only", test_site_role},
    {"identity charset and length", test_identities},
    {"client id is CN or CN:suffix", test_client_ids},
    {"revocation list parses", test_revoked_parse},
    {"revocation list rejects malformed files whole", test_revoked_parse_rejects},
    {"ownership table", test_owners_parse},
    {"set keeps order and replaces values", test_set_order_and_replace},
    {"log text is escaped and bounded", test_log_safe},
    {"identities file: written and read back", test_identities_roundtrip},
    {"identities file: corrupt, truncated, duplicate refused whole", test_identities_reject},
    {"identities file: oversize line and entry count", test_identities_oversize},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"broker_acl", NULL, NULL, acl_cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    return nu_test_run("broker_test_acl", suites);
}
