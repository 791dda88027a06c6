/*
 * Broker restarts (issue 10): real /usr/sbin/mosquitto with
 * broker/mosquitto.conf.in and the nusec_auth plugin, real mTLS, clients on
 * libnusec's nu_mqtt as the NuSEC programs use it.
 *
 *   - A cloud agent with a `$share` subscription answers requests again after
 *     a SIGTERM and a SIGKILL restart, without anyone restarting it
 *     (Mosquitto 2.0.11 drops `$share` subscriptions across a restart while
 *     still reporting "session present"); station-style persistent and
 *     monitor-style clean subscriptions resume too.
 *   - QoS 1 messages for an offline persistent session, queued before or
 *     published after a restart, reach it when it reconnects: the plugin
 *     decides the delivery from the role it kept in its identities file.
 *     Identities never seen, revoked ones, and every identity after a corrupt
 *     identities file are still denied.
 *
 * "Never arrives" is shown without sleeping: MQTT keeps one publisher's
 * messages in order, so after a denied publish the next allowed one must be
 * the first to arrive.
 */
#include "broker_fixture.h"
#include "nu_client.h"
#include "nu_err.h"
#include "nu_mqtt.h"
#include "nu_test.h"
#include "nu_util.h"

#include <mosquitto.h>

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define REQ_TOPIC "nusec/v1/cloud/req/progA/ping"
#define SHARE_FILTER "$share/cloud/nusec/v1/cloud/req/+/+"
#define RESUME_BOUND_MS 15000u /* the cloud must answer again within this */
/* An identities file the plugin could have written, without progB. */
#define NUSEC_TEST_IDS "nusec-identities 1\nprogA programmer\nst1 station\nend 2\n"

static struct bf_suite S; /* S.tmp, S.pki, S.revoked, S.owners */
static char dir[600], conf[700], out_log[700], plugin_log[700], ids_path[700];
static struct bf_broker broker;
static int port;
/* Reconnect backoff cap for new clients; 0 = the library default. */
static unsigned backoff_max_ms;

/* ---- broker ------------------------------------------------------------------------ */

static int put_file(const char *path, const char *text)
{
    return nu_file_write_atomic(path, text, strlen(text), 0644);
}

static int broker_up(void)
{
    int rc = bf_broker_start(&broker, conf, port, out_log);
    snprintf(broker.log, sizeof(broker.log), "%s", plugin_log); /* where the plugin logs */
    return rc;
}

/* Make the broker write its persistence now (SIGUSR1) and wait for the new file. */
static void broker_save(void)
{
    char db[700];
    struct stat before = {0}, now;
    nu_path_fmt(db, sizeof(db), "%s/mosquitto.db", dir);
    stat(db, &before);
    kill(broker.pid, SIGUSR1);
    for (int i = 0; i < 200; i++) {
        if (stat(db, &now) == 0 && (now.st_ino != before.st_ino ||
                                    now.st_mtim.tv_nsec != before.st_mtim.tv_nsec ||
                                    now.st_mtim.tv_sec != before.st_mtim.tv_sec))
            return;
        usleep(10000);
    }
    fprintf(stderr, "broker did not save %s after SIGUSR1\n", db);
}

/* Stop the broker with `sig` (SIGTERM saves its persistence, SIGKILL does not). */
static void broker_down(int sig)
{
    if (sig == SIGTERM) {
        bf_broker_stop(&broker);
        return;
    }
    kill(broker.pid, SIGKILL);
    waitpid(broker.pid, NULL, 0);
    broker.pid = 0;
}

static int setup(void)
{
    if (bf_suite_init(&S, "broker-restart", "# station programmer\nst1 progA\nst1 progB\n") != 0)
        return -1;
    if (bf_free_port(&port) != 0)
        return -1;
    nu_path_fmt(dir, sizeof(dir), "%s/broker", S.tmp);
    nu_path_fmt(conf, sizeof(conf), "%s/mosquitto.conf", dir);
    nu_path_fmt(plugin_log, sizeof(plugin_log), "%s/mosquitto.log", dir);
    nu_path_fmt(out_log, sizeof(out_log), "%s/stdout.log", dir);
    nu_path_fmt(ids_path, sizeof(ids_path), "%s/identities", dir);
    if (bf_suite_conf(&S, dir, port) != 0)
        return -1;
    return broker_up();
}

static int teardown(void)
{
    bf_broker_stop(&broker);
    bf_suite_done(&S);
    return 0;
}

/* ---- clients ----------------------------------------------------------------------- */

static struct nu_mqtt *client_new(const char *cert, const char *client_id, int clean_start,
                                  uint32_t expiry_s)
{
    char ca[600], crt[600], key[600];
    nu_path_fmt(ca, sizeof(ca), "%s/ca-chain.pem", S.pki);
    nu_path_fmt(crt, sizeof(crt), "%s/%s.pem", S.pki, cert);
    nu_path_fmt(key, sizeof(key), "%s/%s.key", S.pki, cert);
    struct nu_mqtt_opts o = {
        .host = "127.0.0.1",
        .port = port,
        .ca_file = ca,
        .cert_file = crt,
        .key_file = key,
        .client_id = client_id,
        .clean_start = clean_start,
        .session_expiry_s = expiry_s,
        .op_timeout_ms = 5000,
        .request_timeout_ms = 3000,
        /* backoff: the library defaults, as the NuSEC programs run, unless set */
        .backoff_max_ms = backoff_max_ms,
    };
    struct nu_mqtt *m = NULL;
    CU_ASSERT_EQUAL(nu_mqtt_create(&o, &m), NU_OK);
    return m;
}

static int wait_connected(struct nu_mqtt *m, unsigned ms)
{
    uint64_t end = nu_mono_ms() + ms;
    while (!nu_mqtt_is_connected(m) && nu_mono_ms() < end)
        usleep(10000);
    return nu_mqtt_is_connected(m);
}

#define INBOX_MAX 32

struct inbox {
    pthread_mutex_t lock;
    int n;
    char topic[INBOX_MAX][128];
    char payload[INBOX_MAX][64];
};

static void inbox_handler(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct inbox *in = ud;
    (void)m;
    pthread_mutex_lock(&in->lock);
    if (in->n < INBOX_MAX) {
        snprintf(in->topic[in->n], sizeof(in->topic[0]), "%s", msg->topic);
        snprintf(in->payload[in->n], sizeof(in->payload[0]), "%.*s",
                 (int)(msg->len < 63 ? msg->len : 63), (const char *)msg->payload);
    }
    in->n++;
    pthread_mutex_unlock(&in->lock);
}

/* Wait up to `ms` for message number `idx` (0-based); its payload into out (or ""). */
static bool inbox_get(struct inbox *in, int idx, unsigned ms, char *out, size_t cap)
{
    uint64_t end = nu_mono_ms() + ms;
    for (;;) {
        pthread_mutex_lock(&in->lock);
        bool have = in->n > idx && idx < INBOX_MAX;
        if (have)
            snprintf(out, cap, "%s", in->payload[idx]);
        pthread_mutex_unlock(&in->lock);
        if (have)
            return true;
        if (nu_mono_ms() >= end) {
            snprintf(out, cap, "%s", "");
            return false;
        }
        usleep(10000);
    }
}

static int inbox_count(struct inbox *in)
{
    pthread_mutex_lock(&in->lock);
    int n = in->n;
    pthread_mutex_unlock(&in->lock);
    return n;
}

/* The cloud's request handler: answer "re:" + request. */
static void echo_handler(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    char out[128];
    int n = snprintf(out, sizeof(out), "re:%.*s", (int)(msg->len < 100 ? msg->len : 100),
                     (const char *)msg->payload);
    (void)ud;
    (void)nu_mqtt_reply(m, msg, out, (size_t)n);
}

/* Send requests until one is answered; returns ms until then, or -1 after `bound_ms`. */
static long request_until_answered(struct nu_mqtt *prog, unsigned bound_ms, int *out_tries)
{
    uint64_t t0 = nu_mono_ms();
    *out_tries = 0;
    while (nu_mono_ms() - t0 < bound_ms) {
        uint8_t *resp = NULL;
        size_t len = 0;
        (*out_tries)++;
        int rc = nu_mqtt_request(prog, REQ_TOPIC, "ping", 4, 2000, &resp, &len);
        bool ok = rc == NU_OK && len == 7 && memcmp(resp, "re:ping", 7) == 0;
        free(resp);
        if (ok)
            return (long)(nu_mono_ms() - t0);
        if (rc != NU_ERR_TIMEOUT)
            usleep(100000); /* NOT_FOUND (reason 16) or not connected yet */
    }
    return -1;
}

/* Publish an event until `in` grows (the SUBSCRIBE may still be in flight). */
static bool event_reaches(struct nu_mqtt *pub, struct inbox *in, const char *topic)
{
    int before = inbox_count(in);
    uint64_t end = nu_mono_ms() + 5000;
    while (nu_mono_ms() < end) {
        if (nu_mqtt_publish(pub, topic, "ev", 2, 1, 0) != NU_OK)
            usleep(100000);
        for (int i = 0; i < 20 && inbox_count(in) == before; i++)
            usleep(10000);
        if (inbox_count(in) > before)
            return true;
    }
    return false;
}

/* ---- tests ------------------------------------------------------------------------- */

static void test_share_resumes_after_restart(void)
{
    struct inbox st_in = {.lock = PTHREAD_MUTEX_INITIALIZER};
    struct inbox mon_in = {.lock = PTHREAD_MUTEX_INITIALIZER};
    /* The cloud as nusec-cloud runs it: persistent, short session expiry. */
    struct nu_mqtt *cloud = client_new("cloud1", "cloud1:1", 0, 90);
    struct nu_mqtt *st = client_new("st1", "st1", 0, 0);
    struct nu_mqtt *mon = client_new("mon1", "mon1:mon-1", 1, 0);
    struct nu_mqtt *prog = client_new("progA", "progA", 0, 0);
    CU_ASSERT_FATAL(cloud && st && mon && prog);
    CU_ASSERT_EQUAL(nu_mqtt_subscribe(cloud, SHARE_FILTER, 1, echo_handler, NULL), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_subscribe(st, "nusec/v1/events/#", 1, inbox_handler, &st_in), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_connect(cloud, 5000), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_connect(st, 5000), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_connect(mon, 5000), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_subscribe(mon, "nusec/v1/events/#", 1, inbox_handler, &mon_in), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_connect(prog, 5000), NU_OK);
    int tries = 0;
    CU_ASSERT_TRUE(request_until_answered(prog, 5000, &tries) >= 0);

    static const int sigs[] = {SIGTERM, SIGKILL};
    for (size_t i = 0; i < sizeof(sigs) / sizeof(sigs[0]); i++) {
        /* SIGKILL: save first, so that the broker comes back with the
         * sessions (resumed, "session present") but without `$share`. */
        if (sigs[i] == SIGKILL)
            broker_save();
        broker_down(sigs[i]);
        CU_ASSERT_EQUAL_FATAL(broker_up(), 0);
        long ms = request_until_answered(prog, RESUME_BOUND_MS, &tries);
        /* From the broker accepting TCP again to the first answered request. */
        printf("\n    %s restart: broker_restart_resume_ms %ld (%d requests)\n",
               sigs[i] == SIGTERM ? "SIGTERM" : "SIGKILL", ms, tries);
        CU_ASSERT_TRUE(ms >= 0);
        CU_ASSERT_TRUE(wait_connected(st, 5000) && wait_connected(mon, 5000));
        /* Station (persistent, plain filter) and monitor (clean start) resume. */
        CU_ASSERT_TRUE(event_reaches(prog, &st_in, "nusec/v1/events/programmer/progA/x"));
        CU_ASSERT_TRUE(event_reaches(prog, &mon_in, "nusec/v1/events/programmer/progA/y"));
    }
    CU_ASSERT_TRUE(bf_log_contains(&broker, "nusec_auth: loaded"));
    nu_mqtt_destroy(prog);
    nu_mqtt_destroy(mon);
    nu_mqtt_destroy(st);
    nu_mqtt_destroy(cloud);
}

/* A programmer's command session: handler first, then connect (as the POSIX port does). */
static struct nu_mqtt *prog_session(const char *id, struct inbox *in)
{
    char cid[64], filter[128];
    snprintf(cid, sizeof(cid), "%s:q", id);
    snprintf(filter, sizeof(filter), "nusec/v1/prog/%s/cmd", id);
    struct nu_mqtt *m = client_new(id, cid, 0, 0);
    CU_ASSERT_EQUAL(nu_mqtt_subscribe(m, filter, 1, inbox_handler, in), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_connect(m, 5000), NU_OK);
    return m;
}

static void cmd(struct nu_mqtt *st, const char *id, const char *payload)
{
    char topic[128];
    snprintf(topic, sizeof(topic), "nusec/v1/prog/%s/cmd", id);
    CU_ASSERT_TRUE(wait_connected(st, 5000));
    CU_ASSERT_EQUAL(nu_mqtt_publish(st, topic, payload, strlen(payload), 1, 0), NU_OK);
}

/* The next message of a fresh session inbox must be `want`. */
static void expect(struct inbox *in, int idx, const char *want)
{
    char got[64];
    bool ok = inbox_get(in, idx, 5000, got, sizeof(got));
    if (!ok || strcmp(got, want) != 0)
        fprintf(stderr, "message %d: expected '%s', got '%s'\n", idx, want, ok ? got : "nothing");
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_STRING_EQUAL(got, want);
}

/* What progA was handed before the current step. QoS 1 is at least once: a
 * message delivered just before a restart may come again after it (its
 * PUBACK not yet stored when the broker went down); never one it was denied. */
static const char *const progA_seen[] = {"before",     "after-term",    "queued-kill",
                                         "after-kill", "after-revoked", NULL};

/* `want` comes next in `in` from message *idx on, past repeats of what progA
 * was already handed; *idx moves past it. */
static void expect_next(struct inbox *in, int *idx, const char *want)
{
    char got[64] = "";
    bool ok;
    while ((ok = inbox_get(in, *idx, 5000, got, sizeof(got))) && strcmp(got, want) != 0) {
        bool repeat = false;
        for (size_t i = 0; progA_seen[i] && strcmp(progA_seen[i], want) != 0; i++)
            repeat = repeat || strcmp(got, progA_seen[i]) == 0;
        if (!repeat)
            break;
        fprintf(stderr, "message %d: '%s' again (at least once)\n", *idx, got);
        (*idx)++;
    }
    if (!ok || strcmp(got, want) != 0)
        fprintf(stderr, "message %d: expected '%s', got '%s'\n", *idx, want, ok ? got : "nothing");
    CU_ASSERT_TRUE(ok);
    CU_ASSERT_STRING_EQUAL(got, want);
    (*idx)++;
}

static void test_offline_queue_across_restart(void)
{
    struct inbox a1 = {.lock = PTHREAD_MUTEX_INITIALIZER}, b1 = {.lock = PTHREAD_MUTEX_INITIALIZER};
    /* Four restarts within seconds: a connection shorter than 10 s does not
     * reset the backoff, which would reach 8 s with the defaults. */
    backoff_max_ms = 1000;
    struct nu_mqtt *st = client_new("st1", "st1:cmd", 1, 0);
    CU_ASSERT_FATAL(st != NULL);
    CU_ASSERT_EQUAL(nu_mqtt_connect(st, 5000), NU_OK);
    /* progA and progB get persistent sessions, then go offline. */
    nu_mqtt_destroy(prog_session("progA", &a1));
    nu_mqtt_destroy(prog_session("progB", &b1));
    CU_ASSERT_TRUE(bf_log_contains(&broker, "nusec_auth: progB (programmer) authenticated"));

    /* 1. SIGTERM restart. Queued before, published after: both delivered.
     * progB is taken out of the identities file while the broker is down:
     * an identity the plugin never saw is denied. */
    cmd(st, "progA", "before");
    broker_down(SIGTERM);
    char *text = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_file_read(ids_path, 1 << 20, (uint8_t **)&text, &len), NU_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nprogA programmer\n"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nprogB programmer\n"));
    free(text);
    CU_ASSERT_EQUAL(put_file(ids_path, NUSEC_TEST_IDS), NU_OK);
    CU_ASSERT_EQUAL_FATAL(broker_up(), 0);
    cmd(st, "progA", "after-term");
    cmd(st, "progB", "lost");
    CU_ASSERT_TRUE(
        bf_log_contains(&broker, "denied read 'nusec/v1/prog/progB/cmd' for progB (unknown)"));
    CU_ASSERT_FALSE(bf_log_contains(&broker, "denied read 'nusec/v1/prog/progA/cmd'"));
    struct inbox a2 = {.lock = PTHREAD_MUTEX_INITIALIZER}, b2 = {.lock = PTHREAD_MUTEX_INITIALIZER};
    struct nu_mqtt *a = prog_session("progA", &a2), *b = prog_session("progB", &b2);
    expect(&a2, 0, "before");
    expect(&a2, 1, "after-term");
    cmd(st, "progB", "fresh");
    expect(&b2, 0, "fresh"); /* "lost" never came */
    nu_mqtt_destroy(a);
    nu_mqtt_destroy(b);

    /* 2. SIGKILL restart: the role was written at CONNECT, not at exit. */
    struct inbox a3 = {.lock = PTHREAD_MUTEX_INITIALIZER};
    cmd(st, "progA", "queued-kill");
    broker_save();
    broker_down(SIGKILL);
    CU_ASSERT_EQUAL_FATAL(broker_up(), 0);
    cmd(st, "progA", "after-kill");
    a = prog_session("progA", &a3);
    int next = 0;
    expect_next(&a3, &next, "queued-kill");
    expect_next(&a3, &next, "after-kill");
    nu_mqtt_destroy(a);

    /* 3. Revoked while offline: denied although its role is known. */
    struct inbox a4 = {.lock = PTHREAD_MUTEX_INITIALIZER};
    CU_ASSERT_EQUAL(put_file(S.revoked, "progA\n"), NU_OK);
    broker_down(SIGTERM);
    CU_ASSERT_EQUAL_FATAL(broker_up(), 0);
    cmd(st, "progA", "while-revoked");
    CU_ASSERT_TRUE(bf_log_contains(
        &broker, "denied read 'nusec/v1/prog/progA/cmd' for progA (programmer): identity revoked"));
    CU_ASSERT_EQUAL(put_file(S.revoked, "# none\n"), NU_OK);
    a = prog_session("progA", &a4);
    cmd(st, "progA", "after-revoked");
    next = 0;
    expect_next(&a4, &next, "after-revoked");
    nu_mqtt_destroy(a);

    /* 4. A corrupt identities file: logged, moved aside, nobody known (fail
     * closed); the broker runs on and relearns roles at CONNECT. */
    struct inbox a5 = {.lock = PTHREAD_MUTEX_INITIALIZER};
    broker_down(SIGTERM);
    CU_ASSERT_EQUAL(put_file(ids_path, "nusec-identities 1\nprogA programmer\nprogA cloud\n"),
                    NU_OK);
    CU_ASSERT_EQUAL_FATAL(broker_up(), 0);
    CU_ASSERT_TRUE(bf_log_contains(&broker, "unusable (malformed input at line 3)"));
    char bad[800];
    nu_path_fmt(bad, sizeof(bad), "%s.bad", ids_path);
    CU_ASSERT_TRUE(nu_path_exists(bad));
    cmd(st, "progA", "lost-corrupt");
    a = prog_session("progA", &a5);
    cmd(st, "progA", "after-corrupt");
    next = 0;
    expect_next(&a5, &next, "after-corrupt");
    nu_mqtt_destroy(a);
    /* Relearnt and written again at that CONNECT. */
    text = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_file_read(ids_path, 1 << 20, (uint8_t **)&text, &len), NU_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\nprogA programmer\n"));
    free(text);
    nu_mqtt_destroy(st);
    backoff_max_ms = 0;
}

/* ---- a daemon started while the broker is down ------------------------------------- */

struct connect_job {
    char state[700];
    char cert[700], key[700];
    unsigned wait_ms;
    int rc;
    uint64_t ms;
    struct nu_mqtt *m;
};

static void *connect_main(void *arg)
{
    struct connect_job *j = arg;
    struct nu_client_opts o = {.dir = j->state,
                               .identity = "cloud1",
                               .cert_file = j->cert,
                               .key_file = j->key,
                               .client_id = "cloud1:late",
                               .clean_start = 1,
                               .connect_wait_ms = j->wait_ms};
    uint64_t t0 = nu_mono_ms();
    j->rc = nu_client_connect(&o, &j->m);
    j->ms = nu_mono_ms() - t0;
    return NULL;
}

static void test_client_waits_for_the_broker(void)
{
    /* A NuSEC state folder with just what nu_client_connect reads. */
    struct connect_job j = {.rc = -1};
    char path[800], ca[600], text[64];
    nu_path_fmt(j.state, sizeof(j.state), "%s/state", S.tmp);
    nu_path_fmt(path, sizeof(path), "%s/broker", j.state);
    nu_mkdirs(path, 0700);
    nu_path_fmt(path, sizeof(path), "%s/pki", j.state);
    nu_mkdirs(path, 0700);
    nu_path_fmt(path, sizeof(path), "%s/broker/endpoint", j.state);
    snprintf(text, sizeof(text), "127.0.0.1:%d\n", port);
    CU_ASSERT_EQUAL_FATAL(put_file(path, text), NU_OK);
    nu_path_fmt(ca, sizeof(ca), "%s/ca-chain.pem", S.pki);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("cp '%s' '%s/pki/chain.pem'", ca, j.state), 0);
    nu_path_fmt(j.cert, sizeof(j.cert), "%s/cloud1.pem", S.pki);
    nu_path_fmt(j.key, sizeof(j.key), "%s/cloud1.key", S.pki);

    broker_down(SIGTERM);
    /* No wait: one attempt, refused at once. */
    connect_main(&j);
    CU_ASSERT_EQUAL(j.rc, NU_ERR_CONNECTION);
    CU_ASSERT_PTR_NULL(j.m);
    /* With a wait: connected once the broker is back. */
    j.wait_ms = 20000;
    pthread_t t;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, connect_main, &j), 0);
    usleep(1500000);
    int up = broker_up();
    pthread_join(t, NULL);
    CU_ASSERT_EQUAL_FATAL(up, 0);
    printf("\n    nu_client_connect returned %s after %llu ms (broker down for the first 1.5 s)\n",
           nu_err_name(j.rc), (unsigned long long)j.ms);
    CU_ASSERT_EQUAL(j.rc, NU_OK);
    CU_ASSERT_TRUE(j.ms >= 1500 && j.ms < 20000);
    CU_ASSERT_TRUE(j.m && nu_mqtt_is_connected(j.m));
    nu_mqtt_destroy(j.m);
}

static const struct nu_test_case cases[] = {
    {"$share, persistent and clean subscribers resume after SIGTERM/SIGKILL",
     test_share_resumes_after_restart},
    {"offline session queue across restarts; unknown, revoked, corrupt denied",
     test_offline_queue_across_restart},
    {"nu_client_connect waits for a broker that is starting", test_client_waits_for_the_broker},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"broker_restart", setup, teardown, cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    int rc = nu_test_run("broker_test_restart", suites);
    return rc;
}
