/* broker/ratelimit.c: per-identity payload limits and token buckets. */
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_test.h"
#include "ratelimit.h"

#include <string.h>

#define KIB 1024u
#define MIB (1024u * 1024u)
#define REQ(id, op) "nusec/v1/cloud/req/" id "/" op

_Static_assert(4259840u == NU_ENVELOPE_MAX, "ratelimit.c's firmware limit is NU_ENVELOPE_MAX");

static struct nusec_rl *make(const struct nusec_rl_config *cfg)
{
    struct nusec_rl *rl = NULL;
    CU_ASSERT_EQUAL_FATAL(nusec_rl_new(cfg, &rl), NU_OK);
    return rl;
}

static enum nusec_rl_verdict admit(struct nusec_rl *rl, const char *id, enum nusec_role role,
                                   const char *topic, uint32_t len, uint64_t now)
{
    bool log = false;
    return nusec_rl_admit(rl, id, role, topic, len, now, &log);
}

static void test_payload_per_role_and_op(void)
{
    struct nusec_rl_config cfg;
    nusec_rl_config_default(&cfg);
    struct nusec_rl *rl = make(&cfg);
    uint32_t small = cfg.payload_max;
    CU_ASSERT_EQUAL(small, 80 * KIB);
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, REQ("st", "job.list"), small, 1), NUSEC_RL_PASS);
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, REQ("st", "job.list"), small + 1, 1),
                    NUSEC_RL_TOO_LARGE);
    /* the 4 MiB firmware.sign: an OEM's only */
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, REQ("st", "firmware.sign"), MIB, 1),
                    NUSEC_RL_TOO_LARGE);
    CU_ASSERT_EQUAL(admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, REQ("p1", "firmware.sign"), MIB, 1),
                    NUSEC_RL_TOO_LARGE);
    CU_ASSERT_EQUAL(admit(rl, "oem", NUSEC_ROLE_OEM, REQ("oem", "firmware.sign"), NU_ENVELOPE_MAX, 1),
                    NUSEC_RL_PASS);
    CU_ASSERT_EQUAL(admit(rl, "oem", NUSEC_ROLE_OEM, REQ("oem", "firmware.sign"), NU_ENVELOPE_MAX + 1, 1),
                    NUSEC_RL_TOO_LARGE);
    /* ...and only on firmware.sign */
    CU_ASSERT_EQUAL(admit(rl, "oem", NUSEC_ROLE_OEM, REQ("oem", "job.create"), MIB, 1),
                    NUSEC_RL_TOO_LARGE);
    CU_ASSERT_EQUAL(admit(rl, "oem", NUSEC_ROLE_OEM, "nusec/v1/events/oem/oem/firmware.sign", MIB, 1),
                    NUSEC_RL_TOO_LARGE);
    /* a station's package delivery to a programmer: a 64 KiB package fits */
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, "nusec/v1/prog/p1/cmd", 64 * KIB + 2048, 1),
                    NUSEC_RL_PASS);
    /* the cloud answers everyone: no limit of ours */
    CU_ASSERT_EQUAL(admit(rl, "cloud", NUSEC_ROLE_CLOUD, "nusec/v1/reply/p1/x", 64 * MIB, 1),
                    NUSEC_RL_PASS);
    CU_ASSERT_EQUAL(nusec_rl_payload_limit(&cfg, NUSEC_ROLE_CLOUD, "x"), 0);
    nusec_rl_free(rl);
}

static void test_message_bucket(void)
{
    struct nusec_rl_config cfg;
    nusec_rl_config_default(&cfg);
    cfg.rate[NUSEC_ROLE_PROGRAMMER] = (struct nusec_rl_rate){10, 5, 1 * MIB, 1 * MIB};
    struct nusec_rl *rl = make(&cfg);
    const char *t = REQ("p1", "cert.request");
    for (int i = 0; i < 5; i++)
        CU_ASSERT_EQUAL(admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, t, 100, 1000), NUSEC_RL_PASS);
    CU_ASSERT_EQUAL(admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, t, 100, 1000), NUSEC_RL_MSG_RATE);
    /* refusals take nothing: 100 ms at 10/s is exactly one more */
    for (int i = 0; i < 50; i++)
        CU_ASSERT_EQUAL(admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, t, 100, 1050), NUSEC_RL_MSG_RATE);
    CU_ASSERT_EQUAL(admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, t, 100, 1100), NUSEC_RL_PASS);
    CU_ASSERT_EQUAL(admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, t, 100, 1100), NUSEC_RL_MSG_RATE);
    /* another identity has its own bucket */
    CU_ASSERT_EQUAL(admit(rl, "p2", NUSEC_ROLE_PROGRAMMER, REQ("p2", "cert.request"), 100, 1100),
                    NUSEC_RL_PASS);
    /* the burst is the ceiling, however long the pause */
    int passed = 0;
    for (int i = 0; i < 20; i++)
        passed += admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, t, 100, 999999) == NUSEC_RL_PASS;
    CU_ASSERT_EQUAL(passed, 5);
    nusec_rl_free(rl);
}

static void test_byte_bucket(void)
{
    struct nusec_rl_config cfg;
    nusec_rl_config_default(&cfg);
    cfg.payload_max = 1024;
    cfg.rate[NUSEC_ROLE_STATION] = (struct nusec_rl_rate){1000, 1000, 1000, 3000};
    struct nusec_rl *rl = make(&cfg);
    const char *t = REQ("st", "job.list");
    for (int i = 0; i < 3; i++)
        CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, t, 1000, 0), NUSEC_RL_PASS);
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, t, 1000, 0), NUSEC_RL_BYTE_RATE);
    /* 1000 bytes a second: 5 ms gives 5 bytes back, 10 ms the 10 needed */
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, t, 10, 5), NUSEC_RL_BYTE_RATE);
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, t, 10, 10), NUSEC_RL_PASS);
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, t, 1, 10), NUSEC_RL_BYTE_RATE);
    nusec_rl_free(rl);
}

/* One identity floods 60 s of the largest payload it may send, as fast as
 * it can; another programmer sends 20 requests a second. The flooder gets
 * its burst plus its rate through, the other is never refused. */
static void test_flood_one_identity(void)
{
    struct nusec_rl_config cfg;
    nusec_rl_config_default(&cfg);
    struct nusec_rl *rl = make(&cfg);
    const struct nusec_rl_rate *r = &cfg.rate[NUSEC_ROLE_STATION];
    uint64_t passed_bytes = 0, refused = 0, good_refused = 0;
    for (uint64_t now = 0; now < 60000; now++) {
        for (int k = 0; k < 10; k++) { /* 10 garbage publishes per ms */
            enum nusec_rl_verdict v = admit(rl, "st", NUSEC_ROLE_STATION, REQ("st", "job.list"),
                                            cfg.payload_max, now);
            passed_bytes += v == NUSEC_RL_PASS ? cfg.payload_max : 0;
            refused += v != NUSEC_RL_PASS;
        }
        if (now % 50 == 0)
            good_refused += admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, REQ("p1", "cert.request"), 900,
                                  now) != NUSEC_RL_PASS;
    }
    CU_ASSERT_EQUAL(good_refused, 0);
    CU_ASSERT(passed_bytes <= r->byte_burst + r->bytes_per_s * 60);
    CU_ASSERT(passed_bytes >= r->bytes_per_s * 59); /* the rate does get through */
    CU_ASSERT(refused > 500000);
    nusec_rl_free(rl);
}

/* What a line does at its peak must never be refused: 8 programmers of 8
 * sockets fetching a 4 MiB image in 16 KiB chunks all at once, then
 * provisioning 200 devices a second each for a minute (cert.request,
 * device.report, status), a station delivering 8 packages of 64 KiB and
 * publishing 200 events a second, an OEM signing three 4 MiB images in a row. */
static void test_legit_peaks_pass(void)
{
    struct nusec_rl_config cfg;
    nusec_rl_config_default(&cfg);
    struct nusec_rl *rl = make(&cfg);
    char id[16], topic[96];
    int refused = 0;
    for (int i = 0; i < 3; i++)
        refused += admit(rl, "oem", NUSEC_ROLE_OEM, REQ("oem", "firmware.sign"), NU_ENVELOPE_MAX, 0) !=
                   NUSEC_RL_PASS;
    for (int p = 0; p < 8; p++) {
        snprintf(id, sizeof(id), "prog-%d", p);
        snprintf(topic, sizeof(topic), "nusec/v1/prog/%s/cmd", id);
        refused += admit(rl, "station", NUSEC_ROLE_STATION, topic, 64 * KIB + 1024, 0) != NUSEC_RL_PASS;
        snprintf(topic, sizeof(topic), REQ("%s", "firmware.chunk"), id);
        for (int c = 0; c < 4 * 64 + 1; c++)
            refused += admit(rl, id, NUSEC_ROLE_PROGRAMMER, topic, 400, 0) != NUSEC_RL_PASS;
    }
    for (uint64_t ms = 0; ms < 60000; ms += 5) { /* 200 devices/s per programmer */
        for (int p = 0; p < 8; p++) {
            snprintf(id, sizeof(id), "prog-%d", p);
            snprintf(topic, sizeof(topic), REQ("%s", "cert.request"), id);
            refused += admit(rl, id, NUSEC_ROLE_PROGRAMMER, topic, 1200, ms) != NUSEC_RL_PASS;
            snprintf(topic, sizeof(topic), REQ("%s", "device.report"), id);
            refused += admit(rl, id, NUSEC_ROLE_PROGRAMMER, topic, 600, ms) != NUSEC_RL_PASS;
            snprintf(topic, sizeof(topic), "nusec/v1/prog/%s/status", id);
            refused += admit(rl, id, NUSEC_ROLE_PROGRAMMER, topic, 300, ms) != NUSEC_RL_PASS;
        }
        refused += admit(rl, "station", NUSEC_ROLE_STATION, "nusec/v1/events/station/station/x",
                         500, ms) != NUSEC_RL_PASS;
    }
    CU_ASSERT_EQUAL(refused, 0);
    nusec_rl_free(rl);
}

struct reports {
    int n;
    struct nusec_rl_report last;
    char id[80];
};

static void on_report(void *ctx, const struct nusec_rl_report *r)
{
    struct reports *rs = ctx;
    rs->n++;
    rs->last = *r;
    snprintf(rs->id, sizeof(rs->id), "%s", r->id);
}

static void test_refusals_logged_once_per_interval(void)
{
    struct nusec_rl_config cfg;
    nusec_rl_config_default(&cfg);
    cfg.log_interval_s = 10;
    struct nusec_rl *rl = make(&cfg);
    struct reports rs = {0};
    bool log = false;
    const char *t = REQ("st", "job.list");
    CU_ASSERT_EQUAL(nusec_rl_admit(rl, "st", NUSEC_ROLE_STATION, t, MIB, 1000, &log), NUSEC_RL_TOO_LARGE);
    CU_ASSERT_TRUE(log); /* the first: logged in full by the caller */
    for (int i = 0; i < 99; i++) {
        CU_ASSERT_EQUAL(nusec_rl_admit(rl, "st", NUSEC_ROLE_STATION, t, MIB, 2000, &log),
                        NUSEC_RL_TOO_LARGE);
        CU_ASSERT_FALSE(log);
    }
    nusec_rl_flush(rl, 5000, on_report, &rs);
    CU_ASSERT_EQUAL(rs.n, 0); /* interval not over */
    nusec_rl_flush(rl, 11000, on_report, &rs);
    CU_ASSERT_EQUAL_FATAL(rs.n, 1);
    CU_ASSERT_STRING_EQUAL(rs.id, "st");
    CU_ASSERT_EQUAL(rs.last.role, NUSEC_ROLE_STATION);
    CU_ASSERT_EQUAL(rs.last.refused, 99);
    CU_ASSERT_EQUAL(rs.last.too_large, 99);
    CU_ASSERT_EQUAL(rs.last.over_rate, 0);
    CU_ASSERT_EQUAL(rs.last.bytes, 99ull * MIB);
    CU_ASSERT_EQUAL(rs.last.seconds, 10);
    /* a new interval: its first refusal is logged again; a lone one has no summary */
    CU_ASSERT_EQUAL(nusec_rl_admit(rl, "st", NUSEC_ROLE_STATION, t, MIB, 12000, &log), NUSEC_RL_TOO_LARGE);
    CU_ASSERT_TRUE(log);
    nusec_rl_flush(rl, 30000, on_report, &rs);
    CU_ASSERT_EQUAL(rs.n, 1);
    nusec_rl_free(rl);
}

static void test_idle_identities_forgotten(void)
{
    struct nusec_rl_config cfg;
    nusec_rl_config_default(&cfg);
    struct nusec_rl *rl = make(&cfg);
    char id[16];
    for (int i = 0; i < 1000; i++) {
        snprintf(id, sizeof(id), "p%d", i);
        CU_ASSERT_EQUAL(admit(rl, id, NUSEC_ROLE_PROGRAMMER, "nusec/v1/prog/x/status", 100, 1),
                        NUSEC_RL_PASS);
    }
    CU_ASSERT_EQUAL(nusec_rl_count(rl), 1000);
    nusec_rl_flush(rl, 1, NULL, NULL);
    CU_ASSERT_EQUAL(nusec_rl_count(rl), 1000); /* buckets not full yet */
    nusec_rl_flush(rl, 60000, NULL, NULL);
    CU_ASSERT_EQUAL(nusec_rl_count(rl), 0);
    /* and a forgotten one starts with a full bucket again */
    CU_ASSERT_EQUAL(admit(rl, "p1", NUSEC_ROLE_PROGRAMMER, "nusec/v1/prog/x/status", 100, 60001),
                    NUSEC_RL_PASS);
    nusec_rl_free(rl);
}

static void test_disabled_keeps_sizes(void)
{
    struct nusec_rl_config cfg;
    nusec_rl_config_default(&cfg);
    CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, "rate_limit", "false"), NU_OK);
    CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, "payload_max", "262144"), NU_OK);
    struct nusec_rl *rl = make(&cfg);
    int refused = 0;
    for (int i = 0; i < 100000; i++)
        refused += admit(rl, "st", NUSEC_ROLE_STATION, REQ("st", "job.list"), 256 * KIB, 0) != NUSEC_RL_PASS;
    CU_ASSERT_EQUAL(refused, 0);
    CU_ASSERT_EQUAL(admit(rl, "st", NUSEC_ROLE_STATION, REQ("st", "job.list"), 256 * KIB + 1, 0),
                    NUSEC_RL_TOO_LARGE);
    nusec_rl_free(rl);
}

static void test_options(void)
{
    struct nusec_rl_config cfg;
    const char *why = NULL;
    nusec_rl_config_default(&cfg);
    CU_ASSERT_EQUAL(nusec_rl_config_check(&cfg, &why), NU_OK);
    CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, "rate_station", "5/10/2048/100000"), NU_OK);
    CU_ASSERT_EQUAL(cfg.rate[NUSEC_ROLE_STATION].msgs_per_s, 5);
    CU_ASSERT_EQUAL(cfg.rate[NUSEC_ROLE_STATION].msg_burst, 10);
    CU_ASSERT_EQUAL(cfg.rate[NUSEC_ROLE_STATION].bytes_per_s, 2048);
    CU_ASSERT_EQUAL(cfg.rate[NUSEC_ROLE_STATION].byte_burst, 100000);
    CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, "rate_site", "off"), NU_OK);
    CU_ASSERT_EQUAL(cfg.rate[NUSEC_ROLE_SITE].msgs_per_s, 0);
    CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, "refusal_log_s", "30"), NU_OK);
    CU_ASSERT_EQUAL(nusec_rl_config_check(&cfg, &why), NU_OK);
    static const char *const bad[][2] = {
        {"rate_station", "5/10/2048"},       {"rate_station", "5/10/2048/1/1"},
        {"rate_station", "-5/10/2048/100000"}, {"rate_station", "5/0/2048/100000"},
        {"rate_station", "5/10/2048/x"},      {"rate_limit", "yes"},
        {"payload_max", "12"},               {"payload_max", "1024k"},
        {"refusal_log_s", "0"},              {"firmware_payload_max", ""},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, bad[i][0], bad[i][1]), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, "rate_nobody", "off"), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, "revoked_file", "x"), NU_ERR_NOT_FOUND);
    /* an OEM whose byte burst cannot hold one firmware image could never sign */
    nusec_rl_config_default(&cfg);
    CU_ASSERT_EQUAL(nusec_rl_config_option(&cfg, "rate_oem", "10/10/1048576/1048576"), NU_OK);
    CU_ASSERT_EQUAL(nusec_rl_config_check(&cfg, &why), NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NOT_NULL(why);
    struct nusec_rl *rl = NULL;
    CU_ASSERT_EQUAL(nusec_rl_new(&cfg, &rl), NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(rl);
}

static const struct nu_test_case rl_cases[] = {
    {"payload limit per role and operation (firmware.sign: OEM only)", test_payload_per_role_and_op},
    {"message bucket: burst, refill, refusals take nothing", test_message_bucket},
    {"byte bucket", test_byte_bucket},
    {"a 60 s flood from one identity: its rate only; others untouched", test_flood_one_identity},
    {"a line's legitimate peaks are never refused", test_legit_peaks_pass},
    {"refusals: first logged, then one summary per interval", test_refusals_logged_once_per_interval},
    {"identities with full buckets are forgotten", test_idle_identities_forgotten},
    {"rate_limit false keeps the payload limits", test_disabled_keeps_sizes},
    {"plugin options and configuration checks", test_options},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"broker_ratelimit", NULL, NULL, rl_cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    return nu_test_run("broker_test_ratelimit", suites);
}
