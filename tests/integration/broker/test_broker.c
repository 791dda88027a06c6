/*
 * Broker integration: real /usr/sbin/mosquitto with broker/mosquitto.conf.in
 * and the nusec_auth plugin, real mTLS, MQTT 5 QoS 1 clients. Checks what an
 * attacker or a user sees: who can connect, who receives what.
 *
 * "Never arrives" is shown without sleeping: after a refused publish the
 * same publisher sends an allowed one, and MQTT keeps one publisher's
 * messages in order, so the allowed one must be the first to arrive.
 */
#include "broker_fixture.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <mosquitto.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define NOT_AUTHORIZED 135 /* MQTT 5 reason code 0x87 */
/* PUBACK success: 0, or 16 "no matching subscribers" (MQTT 5 reason codes below 0x80). */
static bool PUB_OK(int rc)
{
    return rc >= 0 && rc < 0x80;
}

static struct bf_suite S; /* S.tmp, S.pki, S.revoked, S.owners */
static struct bf_broker broker;

/* ---- helpers -------------------------------------------------------------------- */

static int put_file(const char *path, const char *text)
{
    return nu_file_write_atomic(path, text, strlen(text), 0644);
}

static void pki_path(char *out, size_t cap, const char *name, const char *ext)
{
    nu_path_fmt(out, cap, "%s/%s.%s", S.pki, name, ext);
}

/* Connect with certificate NAME.pem/.key and `client_id`; returns CONNACK code or BF_NO_ANSWER. */
static int try_connect_ex(const char *cert, const char *client_id, bool persistent,
                          const char *username, const char *auth_method, struct bf_client **out)
{
    char ca[600], crt[600], key[600];
    nu_path_fmt(ca, sizeof(ca), "%s/ca-chain.pem", S.pki);
    pki_path(crt, sizeof(crt), cert ? cert : "none", "pem");
    pki_path(key, sizeof(key), cert ? cert : "none", "key");
    struct bf_client_opts o = {
        .port = broker.port,
        .cafile = ca,
        .certfile = cert ? crt : NULL,
        .keyfile = cert ? key : NULL,
        .client_id = client_id,
        .persistent = persistent,
        .username = username,
        .auth_method = auth_method,
    };
    struct bf_client *c = NULL;
    int rc = bf_client_connect(&o, &c);
    if (out)
        *out = c;
    else
        bf_client_close(c);
    return rc;
}

static int try_connect(const char *cert, const char *client_id)
{
    return try_connect_ex(cert, client_id, false, NULL, NULL, NULL);
}

/* A connected client for identity NAME (client id NAME); NULL + CUnit failure if refused. */
static struct bf_client *join(const char *name)
{
    struct bf_client *c = NULL;
    int rc = try_connect_ex(name, name, false, NULL, NULL, &c);
    CU_ASSERT_EQUAL(rc, 0);
    if (rc != 0)
        fprintf(stderr, "join(%s): CONNACK %d\n", name, rc);
    return c;
}

/* Next message's topic must be `topic` (and the payload `payload` if not NULL). */
static bool next_is(struct bf_client *c, const char *topic, const char *payload)
{
    struct bf_msg m;
    if (bf_client_next(c, 3000, &m) != 0) {
        fprintf(stderr, "expected %s, got nothing\n", topic);
        return false;
    }
    bool ok = strcmp(m.topic, topic) == 0 && (!payload || strcmp((char *)m.payload, payload) == 0);
    if (!ok)
        fprintf(stderr, "expected %s, got %s '%s'\n", topic, m.topic, (char *)m.payload);
    bf_msg_clear(&m);
    return ok;
}

/* No further message within a short grace; prints what did arrive. */
static bool nothing_more(struct bf_client *c)
{
    struct bf_msg m;
    bool none = true;
    while (bf_client_next(c, 100, &m) == 0) {
        fprintf(stderr, "unexpected message %s '%s'\n", m.topic, (char *)m.payload);
        bf_msg_clear(&m);
        none = false;
    }
    return none;
}

/* ---- suite setup ------------------------------------------------------------------ */

/*
 * A broker of the suite in its folder NAME on a free port, the sed expression
 * `edit` applied to its configuration if not NULL, started.
 */
static int start_broker(const char *name, const char *edit, struct bf_broker *b)
{
    char dir[600], conf[700], out_log[700];
    int p = 0;
    if (bf_free_port(&p) != 0)
        return -1;
    nu_path_fmt(dir, sizeof(dir), "%s/%s", S.tmp, name);
    nu_path_fmt(conf, sizeof(conf), "%s/mosquitto.conf", dir);
    nu_path_fmt(out_log, sizeof(out_log), "%s/stdout.log", dir);
    if (bf_suite_conf(&S, dir, p) != 0)
        return -1;
    if (edit && nu_test_sh("sed -i -e '%s' '%s'", edit, conf) != 0)
        return -1;
    int rc = bf_broker_start(b, conf, p, out_log);
    nu_path_fmt(b->log, sizeof(b->log), "%s/mosquitto.log", dir); /* where the plugin logs */
    return rc;
}

static int setup(void)
{
    if (bf_suite_init(&S, "broker", "# station programmer\nst1 progA\n") != 0)
        return -1;
    return start_broker("broker", NULL, &broker);
}

static int teardown(void)
{
    bf_broker_stop(&broker);
    bf_suite_done(&S);
    return 0;
}

/* ---- TLS layer ---------------------------------------------------------------------- */

static void test_foreign_ca_refused(void)
{
    /* Same CN and OU as the real cloud, but another CA signed it. */
    CU_ASSERT_NOT_EQUAL(try_connect("foreign1", "cloud1"), 0);
    CU_ASSERT_EQUAL(try_connect("cloud1", "cloud1"), 0); /* control */
}

static void test_no_cert_refused(void)
{
    CU_ASSERT_NOT_EQUAL(try_connect(NULL, "cloud1"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect_ex(NULL, "cloud1", false, "cloud1", NULL, NULL), 0);
}

static void test_crl_revoked_cert_refused(void)
{
    CU_ASSERT_NOT_EQUAL(try_connect("crlrev", "crlrev"), 0);
}

/* s_client with a client certificate; EXTRA selects the protocol version. */
#define S_CLIENT(extra)                                                                            \
    nu_test_sh("openssl s_client -connect 127.0.0.1:%d -CAfile '%s/ca-chain.pem' "                 \
               "-cert '%s/mon1.pem' -key '%s/mon1.key' -verify_return_error " extra                \
               " </dev/null >/dev/null 2>&1",                                                      \
               broker.port, S.pki, S.pki, S.pki)

static void test_tls_versions(void)
{
    CU_ASSERT_EQUAL(S_CLIENT("-tls1_2"), 0);
    CU_ASSERT_EQUAL(S_CLIENT("-tls1_3"), 0);
    /* SECLEVEL=0 so that it is the broker, not the local OpenSSL, refusing 1.1. */
    CU_ASSERT_NOT_EQUAL(S_CLIENT("-tls1_1 -cipher DEFAULT@SECLEVEL=0"), 0);
}

/* ---- plugin: who may connect -------------------------------------------------------- */

static void test_certificate_rules(void)
{
    CU_ASSERT_NOT_EQUAL(try_connect("noou", "noou"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect("twoou", "twoou"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect("badou", "badou"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect("badcn", "bad cn"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect("twocn", "mon1"), 0);
    /* Chains to the Root through the Device CA: TLS accepts it, the issuer pin does not. */
    CU_ASSERT_NOT_EQUAL(try_connect("rogue", "cloud2"), 0);
    CU_ASSERT_TRUE(bf_log_contains(&broker, "not issued by the configured issuer"));
    CU_ASSERT_TRUE(bf_log_contains(&broker, "certificate has several OUs"));
    /* One line per refusal: the reason, then the certificate's CN and OU as written. */
    CU_ASSERT_TRUE(bf_log_contains(&broker, ": certificate OU is not a NuSEC role; client id "
                                            "'badou', certificate CN 'badou' OU 'admin' serial "));
    CU_ASSERT_TRUE(bf_log_contains(&broker, ": certificate has no OU (role); client id 'noou', "
                                            "certificate CN 'noou' OU '-' serial "));
}

static void test_client_id_rules(void)
{
    CU_ASSERT_EQUAL(try_connect("progA", "progA"), 0);
    CU_ASSERT_EQUAL(try_connect("progA", "progA:worker-2"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect("progA", "progB"), 0); /* would kick progB's session */
    CU_ASSERT_NOT_EQUAL(try_connect("progA", "progA-2"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect("progA", "progA.2"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect("progA", "progA:"), 0);
    CU_ASSERT_NOT_EQUAL(try_connect("progA", ""), 0); /* no broker-assigned ids */
    /* mosquitto_sub without -i sends no client id: refused by the plugin, whose
     * log line says why, not mosquitto's "Client <unknown> ... protocol error". */
    CU_ASSERT_NOT_EQUAL(nu_test_sh("mosquitto_sub -V mqttv5 -h 127.0.0.1 -p %d --cafile "
                                   "'%s/ca-chain.pem' --cert '%s/progA.pem' --key '%s/progA.key' "
                                   "-t x -C 1 -W 5 >/dev/null 2>&1",
                                   broker.port, S.pki, S.pki, S.pki),
                        0);
    CU_ASSERT_TRUE(bf_log_contains(&broker, "need -i CN:NAME); client id 'auto-"));
    CU_ASSERT_TRUE(bf_log_contains(&broker, "certificate CN 'progA' OU 'programmer' serial "));
    /* A username, if sent, must be the CN; enhanced auth is not offered. */
    CU_ASSERT_EQUAL(try_connect_ex("progA", "progA", false, "progA", NULL, NULL), 0);
    CU_ASSERT_NOT_EQUAL(try_connect_ex("progA", "progA", false, "cloud1", NULL, NULL), 0);
    CU_ASSERT_NOT_EQUAL(try_connect_ex("progA", "progA", false, NULL, "SCRAM-SHA-1", NULL), 0);
}

static void test_session_takeover_blocked(void)
{
    struct bf_client *b = join("progB");
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_NOT_EQUAL(try_connect("progA", "progB"), 0);
    CU_ASSERT_FALSE(bf_client_wait_disconnect(b, 200)); /* progB keeps its session */
    CU_ASSERT_TRUE(PUB_OK(
        bf_client_publish(b, "nusec/v1/events/programmer/progB/ping", "x", false, NULL, NULL, 0)));
    bf_client_close(b);
}

/* ---- plugin: topics ------------------------------------------------------------------- */

static void test_programmer_request_isolation(void)
{
    struct bf_client *cloud = join("cloud1"), *a = join("progA");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cloud);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(bf_client_subscribe(cloud, "$share/cloud/nusec/v1/cloud/req/+/+"), 1);

    CU_ASSERT_EQUAL(bf_client_publish(a, "nusec/v1/cloud/req/progB/x", "SECRET-PAYLOAD-7f3a", false,
                                      NULL, NULL, 0),
                    NOT_AUTHORIZED);
    CU_ASSERT_TRUE(PUB_OK(
        bf_client_publish(a, "nusec/v1/cloud/req/progA/sign", "mine", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(next_is(cloud, "nusec/v1/cloud/req/progA/sign", "mine"));
    CU_ASSERT_TRUE(nothing_more(cloud));

    /* The denial is logged with identity, role, access and topic; never the payload. */
    CU_ASSERT_TRUE(bf_log_contains(
        &broker, "denied write 'nusec/v1/cloud/req/progB/x' for progA (programmer)"));
    CU_ASSERT_FALSE(bf_log_contains(&broker, "SECRET-PAYLOAD-7f3a"));
    bf_client_close(a);
    bf_client_close(cloud);
}

static void test_programmer_reply_isolation(void)
{
    struct bf_client *cloud = join("cloud1"), *a = join("progA"), *b = join("progB");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cloud);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "nusec/v1/reply/progB/#"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "nusec/v1/reply/#"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "nusec/v1/reply/+/r1"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "#"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "nusec/v1/reply/progA/#"), 1);
    CU_ASSERT_EQUAL(bf_client_subscribe(b, "nusec/v1/reply/progB/#"), 1);

    CU_ASSERT_TRUE(
        PUB_OK(bf_client_publish(cloud, "nusec/v1/reply/progB/r1", "for B", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(
        PUB_OK(bf_client_publish(cloud, "nusec/v1/reply/progA/r2", "for A", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(next_is(b, "nusec/v1/reply/progB/r1", "for B"));
    CU_ASSERT_TRUE(next_is(a, "nusec/v1/reply/progA/r2", "for A"));
    CU_ASSERT_TRUE(nothing_more(a));
    bf_client_close(b);
    bf_client_close(a);
    bf_client_close(cloud);
}

static void test_request_response_roundtrip(void)
{
    static const uint8_t corr[] = {0x00, 0x01, 0xfe, 0xff, 'c', 'o', 'r', 'r'};
    struct bf_client *cloud = join("cloud1"), *a = join("progA");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cloud);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(bf_client_subscribe(cloud, "$share/cloud/nusec/v1/cloud/req/+/+"), 1);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "nusec/v1/reply/progA/#"), 1);

    /* A response topic pointing at another identity is refused outright. */
    CU_ASSERT_EQUAL(bf_client_publish(a, "nusec/v1/cloud/req/progA/sign", "steer", false,
                                      "nusec/v1/reply/progB/x", corr, sizeof(corr)),
                    NOT_AUTHORIZED);
    CU_ASSERT_TRUE(PUB_OK(bf_client_publish(a, "nusec/v1/cloud/req/progA/sign", "request", false,
                                            "nusec/v1/reply/progA/42", corr, sizeof(corr))));
    struct bf_msg req;
    CU_ASSERT_EQUAL_FATAL(bf_client_next(cloud, 3000, &req), 0);
    CU_ASSERT_STRING_EQUAL(req.topic, "nusec/v1/cloud/req/progA/sign");
    CU_ASSERT_STRING_EQUAL((char *)req.payload, "request");
    CU_ASSERT_PTR_NOT_NULL_FATAL(req.response_topic);
    CU_ASSERT_STRING_EQUAL(req.response_topic, "nusec/v1/reply/progA/42");
    CU_ASSERT_EQUAL_FATAL(req.correlation_len, sizeof(corr));
    CU_ASSERT_EQUAL(memcmp(req.correlation, corr, sizeof(corr)), 0);

    CU_ASSERT_TRUE(PUB_OK(bf_client_publish(cloud, req.response_topic, "answer", false, NULL,
                                            req.correlation, req.correlation_len)));
    bf_msg_clear(&req);
    struct bf_msg ans;
    CU_ASSERT_EQUAL_FATAL(bf_client_next(a, 3000, &ans), 0);
    CU_ASSERT_STRING_EQUAL(ans.topic, "nusec/v1/reply/progA/42");
    CU_ASSERT_STRING_EQUAL((char *)ans.payload, "answer");
    CU_ASSERT_EQUAL(ans.correlation_len, sizeof(corr));
    CU_ASSERT_TRUE(ans.correlation && memcmp(ans.correlation, corr, sizeof(corr)) == 0);
    bf_msg_clear(&ans);

    /* The unshared form of the same filter works too (second agent, CN:suffix id). */
    struct bf_client *direct = NULL;
    CU_ASSERT_EQUAL_FATAL(try_connect_ex("cloud1", "cloud1:direct", false, NULL, NULL, &direct), 0);
    CU_ASSERT_EQUAL(bf_client_subscribe(direct, "nusec/v1/cloud/req/+/+"), 1);
    CU_ASSERT_TRUE(
        PUB_OK(bf_client_publish(a, "nusec/v1/cloud/req/progA/ping", "p", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(next_is(direct, "nusec/v1/cloud/req/progA/ping", "p"));
    CU_ASSERT_TRUE(next_is(cloud, "nusec/v1/cloud/req/progA/ping", "p"));
    bf_client_close(direct);
    bf_client_close(a);
    bf_client_close(cloud);
}

static void test_monitor(void)
{
    struct bf_client *mon = join("mon1"), *a = join("progA");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mon);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_EQUAL(bf_client_subscribe(mon, "nusec/v1/events/#"), 1);
    CU_ASSERT_EQUAL(bf_client_subscribe(mon, "nusec/v1/reply/mon1/#"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_subscribe(mon, "nusec/v1/cloud/req/+/+"), NOT_AUTHORIZED);
    CU_ASSERT_TRUE(PUB_OK(bf_client_publish(
        a, "nusec/v1/events/programmer/progA/device.provisioned", "ev", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(next_is(mon, "nusec/v1/events/programmer/progA/device.provisioned", "ev"));

    CU_ASSERT_EQUAL(bf_client_publish(mon, "nusec/v1/cloud/req/mon1/x", "r", false, NULL, NULL, 0),
                    NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(
        bf_client_publish(mon, "nusec/v1/events/programmer/progA/fake", "r", false, NULL, NULL, 0),
        NOT_AUTHORIZED);
    CU_ASSERT_TRUE(PUB_OK(
        bf_client_publish(mon, "nusec/v1/events/monitor/mon1/hello", "own", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(next_is(mon, "nusec/v1/events/monitor/mon1/hello", "own"));
    bf_client_close(a);
    bf_client_close(mon);
}

static void test_station_ownership(void)
{
    struct bf_client *st = join("st1"), *a = join("progA"), *b = join("progB");
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(b);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "nusec/v1/prog/progA/cmd"), 1);
    CU_ASSERT_EQUAL(bf_client_subscribe(b, "nusec/v1/prog/progB/cmd"), 1);
    CU_ASSERT_EQUAL(bf_client_subscribe(b, "nusec/v1/prog/progA/cmd"), NOT_AUTHORIZED);

    CU_ASSERT_EQUAL(
        bf_client_publish(st, "nusec/v1/prog/progB/cmd", "not yours", false, NULL, NULL, 0),
        NOT_AUTHORIZED);
    CU_ASSERT_TRUE(
        PUB_OK(bf_client_publish(st, "nusec/v1/prog/progA/cmd", "start", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(next_is(a, "nusec/v1/prog/progA/cmd", "start"));

    /* The ownership table is reloaded while running. */
    CU_ASSERT_EQUAL(put_file(S.owners, "st1 progA\nst1 progB\n"), NU_OK);
    CU_ASSERT_TRUE(PUB_OK(
        bf_client_publish(st, "nusec/v1/prog/progB/cmd", "now yours", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(next_is(b, "nusec/v1/prog/progB/cmd", "now yours"));
    CU_ASSERT_EQUAL(put_file(S.owners, "st1 progA\n"), NU_OK);
    CU_ASSERT_EQUAL(bf_client_publish(st, "nusec/v1/prog/progB/cmd", "gone", false, NULL, NULL, 0),
                    NOT_AUTHORIZED);
    bf_client_close(b);
    bf_client_close(a);
    bf_client_close(st);
}

static void test_sys_unreadable(void)
{
    struct bf_client *cloud = join("cloud1"), *mon = join("mon1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(cloud);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mon);
    CU_ASSERT_EQUAL(bf_client_subscribe(cloud, "$SYS/#"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_subscribe(mon, "$SYS/broker/uptime"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_subscribe(mon, "#"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_subscribe(mon, "+/+/+/+"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(bf_client_publish(cloud, "$SYS/broker/x", "x", false, NULL, NULL, 0),
                    NOT_AUTHORIZED);
    bf_client_close(mon);
    bf_client_close(cloud);
}

static void test_retained_status(void)
{
    struct bf_client *a = join("progA");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_TRUE(
        PUB_OK(bf_client_publish(a, "nusec/v1/prog/progA/status", "idle", true, NULL, NULL, 0)));
    CU_ASSERT_EQUAL(
        bf_client_publish(a, "nusec/v1/events/programmer/progA/x", "r", true, NULL, NULL, 0),
        NOT_AUTHORIZED);
    bf_client_close(a);
    struct bf_client *mon = join("mon1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mon);
    CU_ASSERT_EQUAL(bf_client_subscribe(mon, "nusec/v1/prog/+/status"), 1);
    struct bf_msg m;
    CU_ASSERT_EQUAL_FATAL(bf_client_next(mon, 3000, &m), 0);
    CU_ASSERT_STRING_EQUAL(m.topic, "nusec/v1/prog/progA/status");
    CU_ASSERT_TRUE(m.retain);
    bf_msg_clear(&m);
    bf_client_close(mon);
}

static void test_offline_delivery_to_persistent_session(void)
{
    /* QoS 1 to a disconnected persistent session: the READ check runs with no
     * TLS connection, from the role remembered at connect. */
    struct bf_client *a = NULL, *st = join("st1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL_FATAL(try_connect_ex("progA", "progA:persist", true, NULL, NULL, &a), 0);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "nusec/v1/prog/progA/cmd"), 1);
    bf_client_close(a);
    CU_ASSERT_TRUE(
        PUB_OK(bf_client_publish(st, "nusec/v1/prog/progA/cmd", "queued", false, NULL, NULL, 0)));
    CU_ASSERT_EQUAL_FATAL(try_connect_ex("progA", "progA:persist", true, NULL, NULL, &a), 0);
    CU_ASSERT_TRUE(next_is(a, "nusec/v1/prog/progA/cmd", "queued"));
    bf_client_close(a);
    /* Clear the session again. */
    CU_ASSERT_EQUAL(try_connect("progA", "progA:persist"), 0);
    bf_client_close(st);
}

/* A programmer certificate that is not its identity's pinned one (the
 * programmer re-enrolled since): refused, and the line names the serial. */
static void test_pinned_serial_refused(void)
{
    char serials[600];
    nu_path_fmt(serials, sizeof(serials), "%.*s/serials",
                (int)(strrchr(S.revoked, '/') - S.revoked), S.revoked);
    CU_ASSERT_EQUAL(put_file(serials, "progA 01\n"), NU_OK);
    CU_ASSERT_EQUAL(try_connect("progA", "progA"), NOT_AUTHORIZED);
    CU_ASSERT_TRUE(bf_log_contains(&broker, ": serial is not the identity's pinned current "
                                            "certificate (re-enrolled since); client id 'progA', "
                                            "certificate CN 'progA' OU 'programmer' serial "));
    CU_ASSERT_EQUAL(unlink(serials), 0);
    CU_ASSERT_EQUAL(try_connect("progA", "progA"), 0); /* no pin: any Fleet CA certificate */
}

/* The current serial of fixture identity `name` (hex) into out[cap]. */
static int cert_serial(const char *name, char *out, size_t cap)
{
    char crt[600], cmd[700];
    pki_path(crt, sizeof(crt), name, "pem");
    snprintf(cmd, sizeof(cmd), "openssl x509 -noout -serial -in '%s'", crt);
    FILE *p = popen(cmd, "r");
    int ok = p && fscanf(p, "serial=%63s", out) == 1 && strlen(out) < cap;
    if (p)
        pclose(p);
    return ok ? 0 : -1;
}

/* A re-enrolled identity's old session still receives for a short grace
 * (the renewal's answer comes just after the cloud wrote the new pin, after
 * a signature that may be slow), then it is kicked. */
static void test_renewed_session_receives_then_goes(void)
{
    char serials[600], serial[64], line[128];
    nu_path_fmt(serials, sizeof(serials), "%.*s/serials",
                (int)(strrchr(S.revoked, '/') - S.revoked), S.revoked);
    CU_ASSERT_EQUAL_FATAL(cert_serial("progA", serial, sizeof(serial)), 0);
    snprintf(line, sizeof(line), "progA %s\n", serial);
    CU_ASSERT_EQUAL(put_file(serials, line), NU_OK);
    struct bf_client *a = join("progA"), *st = join("st1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(a);
    CU_ASSERT_PTR_NOT_NULL_FATAL(st);
    CU_ASSERT_EQUAL(bf_client_subscribe(a, "nusec/v1/prog/progA/cmd"), 1);
    usleep(400 * 1000);                                      /* its pin read at a tick */
    CU_ASSERT_EQUAL(put_file(serials, "progA 01\n"), NU_OK); /* re-enrolled */
    usleep(600 * 1000); /* three ticks: the old kick would have come */
    CU_ASSERT_TRUE(
        PUB_OK(bf_client_publish(st, "nusec/v1/prog/progA/cmd", "answer", false, NULL, NULL, 0)));
    CU_ASSERT_TRUE(next_is(a, "nusec/v1/prog/progA/cmd", "answer"));
    CU_ASSERT_TRUE(bf_client_wait_disconnect(a, 5000)); /* then it goes */
    bf_client_close(a);
    bf_client_close(st);
    CU_ASSERT_EQUAL(unlink(serials), 0);
}

/* A site's identity is pinned to its bridge's certificate: a station
 * certificate with the site's CN is refused (at the cloud broker it could
 * read every site's events); a station without a pin is not this list's
 * business; an unusable list refuses stations too (fail closed). */
static void test_site_pin_refuses_its_station(void)
{
    char serials[600];
    nu_path_fmt(serials, sizeof(serials), "%.*s/serials",
                (int)(strrchr(S.revoked, '/') - S.revoked), S.revoked);
    CU_ASSERT_EQUAL(try_connect("st1", "st1"), 0);
    CU_ASSERT_EQUAL(put_file(serials, "st1 01\n"), NU_OK);
    CU_ASSERT_EQUAL(try_connect("st1", "st1"), NOT_AUTHORIZED);
    CU_ASSERT_TRUE(bf_log_contains(&broker, ": the identity is a site's: only its bridge's "
                                            "certificate (OU site) connects here; client id "
                                            "'st1', certificate CN 'st1' OU 'station' serial "));
    CU_ASSERT_EQUAL(put_file(serials, "progA 01\n"), NU_OK);
    CU_ASSERT_EQUAL(try_connect("st1", "st1"), 0);
    CU_ASSERT_EQUAL(put_file(serials, "st1 01\nst1 02\n"), NU_OK); /* listed twice: unusable */
    CU_ASSERT_EQUAL(try_connect("st1", "st1"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(try_connect("mon1", "mon1"), 0); /* a monitor is never pinned */
    CU_ASSERT_EQUAL(unlink(serials), 0);
    CU_ASSERT_EQUAL(try_connect("st1", "st1"), 0);
}

static void test_revocation_while_running(void)
{
    struct bf_client *victim = join("revokeme"), *mon = join("mon1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(victim);
    CU_ASSERT_PTR_NOT_NULL_FATAL(mon);
    CU_ASSERT_EQUAL(bf_client_subscribe(victim, "nusec/v1/events/#"), 1);

    CU_ASSERT_EQUAL(put_file(S.revoked, "# lost laptop\nrevokeme\n"), NU_OK);
    uint64_t t0 = nu_mono_ms();
    CU_ASSERT_TRUE(bf_client_wait_disconnect(victim, 3000));
    printf("\n  kicked %llu ms after the revocation file changed\n",
           (unsigned long long)(nu_mono_ms() - t0));
    CU_ASSERT_EQUAL(try_connect("revokeme", "revokeme"), NOT_AUTHORIZED);
    CU_ASSERT_TRUE(bf_log_contains(&broker, "identity revokeme revoked: disconnecting it"));
    CU_ASSERT_TRUE(bf_log_contains(&broker, ": identity revoked; client id 'revokeme', "
                                            "certificate CN 'revokeme' OU 'monitor' serial "));
    /* Others are unaffected. */
    CU_ASSERT_TRUE(PUB_OK(
        bf_client_publish(mon, "nusec/v1/events/monitor/mon1/x", "x", false, NULL, NULL, 0)));

    /* Lifting the revocation lets it back in. */
    CU_ASSERT_EQUAL(put_file(S.revoked, "# nothing\n"), NU_OK);
    CU_ASSERT_EQUAL(try_connect("revokeme", "revokeme"), 0);
    bf_client_close(mon);
    bf_client_close(victim);
}

static void test_revocation_file_fail_closed(void)
{
    struct bf_client *mon = join("mon1");
    CU_ASSERT_PTR_NOT_NULL_FATAL(mon);

    /* Missing: empty list (logged). */
    CU_ASSERT_EQUAL(unlink(S.revoked), 0);
    CU_ASSERT_EQUAL(try_connect("cloud1", "cloud1"), 0);

    /* Unreadable (a folder in its place): nobody gets in, nobody gets anything. */
    CU_ASSERT_EQUAL(mkdir(S.revoked, 0700), 0);
    CU_ASSERT_EQUAL(try_connect("cloud1", "cloud1"), NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(
        bf_client_publish(mon, "nusec/v1/events/monitor/mon1/x", "x", false, NULL, NULL, 0),
        NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(rmdir(S.revoked), 0);

    /* Malformed: the same. */
    CU_ASSERT_EQUAL(put_file(S.revoked, "progB\nnot an identity\n"), NU_OK);
    CU_ASSERT_EQUAL(try_connect("cloud1", "cloud1"), NOT_AUTHORIZED);
    CU_ASSERT_TRUE(bf_log_contains(&broker, "at line 2"));

    CU_ASSERT_EQUAL(put_file(S.revoked, "# nothing\n"), NU_OK);
    CU_ASSERT_EQUAL(try_connect("cloud1", "cloud1"), 0);
    CU_ASSERT_TRUE(PUB_OK(
        bf_client_publish(mon, "nusec/v1/events/monitor/mon1/x", "x", false, NULL, NULL, 0)));
    bf_client_close(mon);
}

static void test_reload_signal(void)
{
    /* SIGHUP re-reads the lists even when stat() would not have noticed. */
    bf_broker_reload(&broker);
    struct bf_client *mon = NULL;
    for (int i = 0; i < 50 && !bf_log_contains(&broker, "nusec_auth: reloading lists"); i++)
        usleep(20000);
    CU_ASSERT_TRUE(bf_log_contains(&broker, "nusec_auth: reloading lists"));
    mon = join("mon1");
    CU_ASSERT_PTR_NOT_NULL(mon);
    bf_client_close(mon);
}

static void test_identity_as_username_authorizes_nothing(void)
{
    /* Mosquitto 2.0.11 skips BASIC_AUTH with use_identity_as_username true;
     * the plugin must then authorize nothing rather than trust the CN. */
    struct bf_broker b2;
    CU_ASSERT_EQUAL_FATAL(
        start_broker("misconf", "s/^use_identity_as_username false/use_identity_as_username true/",
                     &b2),
        0);
    struct bf_broker saved = broker;
    broker = b2;
    struct bf_client *c = NULL;
    CU_ASSERT_EQUAL(try_connect_ex("cloud1", "cloud1", false, NULL, NULL, &c), 0);
    if (c) {
        CU_ASSERT_EQUAL(bf_client_subscribe(c, "nusec/v1/events/#"), NOT_AUTHORIZED);
        CU_ASSERT_EQUAL(bf_client_publish(c, "nusec/v1/jobs/J1", "x", false, NULL, NULL, 0),
                        NOT_AUTHORIZED);
    }
    bf_client_close(c);
    CU_ASSERT_TRUE(bf_log_contains(&broker, "client not authenticated by nusec_auth"));
    broker = saved;
    bf_broker_stop(&b2);
}

static void test_missing_revoked_option_refuses_to_start(void)
{
    struct bf_broker b2;
    CU_ASSERT_NOT_EQUAL(start_broker("noopt", "/^plugin_opt_revoked_file/d", &b2), 0);
    CU_ASSERT_EQUAL(b2.pid, 0); /* exited and reaped */
    CU_ASSERT_TRUE(bf_log_contains(&b2, "plugin_opt_revoked_file is required"));
}

static const struct nu_test_case cases[] = {
    {"foreign CA client refused", test_foreign_ca_refused},
    {"client without certificate refused", test_no_cert_refused},
    {"certificate on the Fleet CA CRL refused", test_crl_revoked_cert_refused},
    {"TLS 1.2 and 1.3 accepted, 1.1 refused", test_tls_versions},
    {"bad CN/OU and foreign issuer refused", test_certificate_rules},
    {"client id must be CN or CN:suffix", test_client_id_rules},
    {"one identity cannot take another's session", test_session_takeover_blocked},
    {"programmer publishes only its own requests", test_programmer_request_isolation},
    {"programmer reads only its own replies", test_programmer_reply_isolation},
    {"request/response with correlation data via $share", test_request_response_roundtrip},
    {"monitor reads events, publishes only its own", test_monitor},
    {"station commands only owned programmers (reloaded)", test_station_ownership},
    {"$SYS and wildcards over everything unreadable", test_sys_unreadable},
    {"retained status delivered, retained events refused", test_retained_status},
    {"QoS 1 queued for an offline persistent session", test_offline_delivery_to_persistent_session},
    {"pinned serial mismatch refused, with the reason logged", test_pinned_serial_refused},
    {"a site's pin refuses a station certificate with its name", test_site_pin_refuses_its_station},
    {"a re-enrolled session still receives for a grace, then goes",
     test_renewed_session_receives_then_goes},
    {"revoked while connected: kicked, then refused", test_revocation_while_running},
    {"revocation file missing/unreadable/malformed", test_revocation_file_fail_closed},
    {"SIGHUP reloads the lists", test_reload_signal},
    {"use_identity_as_username true authorizes nothing",
     test_identity_as_username_authorizes_nothing},
    {"no plugin_opt_revoked_file: broker does not start",
     test_missing_revoked_option_refuses_to_start},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"broker_integration", setup, teardown, cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    mosquitto_lib_init();
    int rc = nu_test_run("broker_test_broker", suites);
    mosquitto_lib_cleanup();
    return rc;
}
