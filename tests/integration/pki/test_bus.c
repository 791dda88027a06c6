/*
 * The bus exactly as `nusec pki init` configures it: real mosquitto with the
 * generated mosquitto.conf, the nusec_auth plugin, the role certificates from
 * the HSM-backed PKI, and libnusec's own client (nu_client, nu_envelope).
 */
#include "broker_fixture.h"
#include "nu_client.h"
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_mqtt.h"
#include "nu_test.h"
#include "nu_util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp[256], dir[300], foreign[300];
static struct bf_broker broker;

static int setup(void)
{
    char conf[400], log[400], ep[400];
    if (nu_test_tmpdir("bus", tmp, sizeof(tmp)))
        return -1;
    snprintf(dir, sizeof(dir), "%s/oem", tmp);
    snprintf(foreign, sizeof(foreign), "%s/foreign", tmp);
    if (nu_test_sh("%s/bin/nusec pki init --dir %s >/dev/null && "
                   "%s/bin/nusec pki init --dir %s >/dev/null",
                   NUSEC_BINARY_DIR, dir, NUSEC_BINARY_DIR, foreign))
        return -1;
    snprintf(conf, sizeof(conf), "%s/broker/mosquitto.conf", dir);
    snprintf(log, sizeof(log), "%s/broker/mosquitto.log", dir);
    snprintf(ep, sizeof(ep), "%s/broker/endpoint", dir);
    uint8_t *text = NULL;
    size_t len = 0;
    int port = 0;
    if (nu_file_read(ep, 64, &text, &len) || sscanf((char *)text, "127.0.0.1:%d", &port) != 1) {
        free(text);
        return -1;
    }
    free(text);
    return bf_broker_start(&broker, conf, port, log);
}

static int teardown(void)
{
    bf_broker_stop(&broker);
    nu_test_rmtree(tmp);
    return 0;
}

static int connect_as(const char *state, const char *identity, struct nu_mqtt **out)
{
    struct nu_client_opts o = {.dir = state, .identity = identity, .clean_start = 1};
    return nu_client_connect(&o, out);
}

static void test_every_role_connects(void)
{
    static const char *const roles[] = {"cloud", "station", "monitor", "oem"};
    for (int i = 0; i < 4; i++) {
        struct nu_mqtt *m = NULL;
        CU_ASSERT_EQUAL(connect_as(dir, roles[i], &m), NU_OK);
        nu_mqtt_destroy(m);
    }
}

static void test_foreign_pki_is_refused(void)
{
    /* Same file layout, another OEM's CA: the TLS handshake fails. */
    char cert[400], key[400];
    snprintf(cert, sizeof(cert), "%s/pki/clients/oem.crt", foreign);
    snprintf(key, sizeof(key), "%s/pki/clients/oem.key", foreign);
    struct nu_client_opts o = {
        .dir = dir, .identity = "oem", .cert_file = cert, .key_file = key, .clean_start = 1};
    struct nu_mqtt *m = NULL;
    CU_ASSERT_EQUAL(nu_client_connect(&o, &m), NU_ERR_CONNECTION);
    CU_ASSERT_PTR_NULL(m);
}

struct inbox {
    pthread_mutex_t lock;
    int count;
    char last[128];
};

static void on_event(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct inbox *in = ud;
    pthread_mutex_lock(&in->lock);
    in->count++;
    snprintf(in->last, sizeof(in->last), "%s", msg->topic);
    pthread_mutex_unlock(&in->lock);
}

static int inbox_wait(struct inbox *in, int want, int ms)
{
    for (int waited = 0; waited < ms; waited += 10) {
        pthread_mutex_lock(&in->lock);
        int n = in->count;
        pthread_mutex_unlock(&in->lock);
        if (n >= want)
            return n;
        usleep(10000);
    }
    return in->count;
}

static void test_monitor_reads_events_and_cannot_request(void)
{
    struct nu_mqtt *monitor = NULL, *cloud = NULL;
    struct inbox in = {.lock = PTHREAD_MUTEX_INITIALIZER};
    CU_ASSERT_EQUAL_FATAL(connect_as(dir, "monitor", &monitor), NU_OK);
    CU_ASSERT_EQUAL_FATAL(connect_as(dir, "cloud", &cloud), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_subscribe(monitor, "nusec/v1/events/#", 1, on_event, &in), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_publish(cloud, "nusec/v1/events/cloud/cloud/job.created", "x", 1, 1, 0),
                    NU_OK);
    CU_ASSERT_EQUAL(inbox_wait(&in, 1, 3000), 1);
    CU_ASSERT_STRING_EQUAL(in.last, "nusec/v1/events/cloud/cloud/job.created");
    /* A monitor publishes nothing but its own events; and cannot pose as the cloud. */
    CU_ASSERT_EQUAL(nu_mqtt_publish(monitor, "nusec/v1/cloud/req/monitor/job.list", "x", 1, 1, 0),
                    NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(
        nu_mqtt_publish(monitor, "nusec/v1/events/cloud/cloud/job.created", "x", 1, 1, 0),
        NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(nu_mqtt_subscribe(monitor, "nusec/v1/reply/#", 1, on_event, &in),
                    NU_ERR_NOT_AUTHORIZED);
    nu_mqtt_destroy(monitor);
    nu_mqtt_destroy(cloud);
}

/* A stand-in cloud that answers every request with an Ack naming the op. */
static void on_request(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct nu_envelope_sender *sender = ud;
    Nusec__V1__Envelope *req = NULL;
    if (nu_envelope_unpack(msg->payload, msg->len, &req, NULL))
        return;
    Nusec__V1__Ack ack = NUSEC__V1__ACK__INIT;
    ack.detail = (char *)strrchr(msg->topic, '/') + 1;
    struct nu_envelope_frame frame;
    uint8_t *out = NULL;
    size_t len = 0;
    if (!nu_envelope_frame_init(&frame, sender, &ack.base) &&
        !nu_envelope_frame_reply_to(&frame, req) && !nu_envelope_pack(&frame.env, &out, &len, NULL))
        nu_mqtt_reply(m, msg, out, len);
    free(out);
    nu_envelope_free(req);
}

static void test_request_reply_through_shared_subscription(void)
{
    struct nu_mqtt *cloud = NULL, *oem = NULL;
    struct nu_envelope_sender *cloud_sender = NULL, *oem_sender = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_sender_create("cloud", 0, &cloud_sender), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_envelope_sender_create("oem", 0, &oem_sender), NU_OK);
    CU_ASSERT_EQUAL_FATAL(connect_as(dir, "cloud", &cloud), NU_OK);
    CU_ASSERT_EQUAL_FATAL(connect_as(dir, "oem", &oem), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_subscribe(cloud, "$share/cloud/nusec/v1/cloud/req/+/+", 1, on_request,
                                      cloud_sender),
                    NU_OK);

    Nusec__V1__JobListRequest body = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    char detail[128];
    CU_ASSERT_EQUAL(nu_client_request(oem, oem_sender, "job.list", &body.base, NULL, 0, 5000,
                                      &reply, detail, sizeof(detail)),
                    NU_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(reply);
    CU_ASSERT_EQUAL(reply->body_case, NUSEC__V1__ENVELOPE__BODY_ACK);
    CU_ASSERT_STRING_EQUAL(reply->ack->detail, "job.list");
    CU_ASSERT_STRING_EQUAL(reply->header->sender_id, "cloud");
    nu_envelope_free(reply);

    /* The oem cannot speak for the station, nor read the station's replies. */
    CU_ASSERT_EQUAL(nu_mqtt_publish(oem, "nusec/v1/cloud/req/station/job.list", "x", 1, 1, 0),
                    NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(nu_mqtt_subscribe(oem, "nusec/v1/reply/station/#", 1, on_event, NULL),
                    NU_ERR_NOT_AUTHORIZED);
    nu_mqtt_destroy(oem);
    nu_mqtt_destroy(cloud);
    nu_envelope_sender_destroy(oem_sender);
    nu_envelope_sender_destroy(cloud_sender);
}

static void test_revoked_identity_is_refused(void)
{
    struct nu_mqtt *m = NULL;
    CU_ASSERT_EQUAL_FATAL(connect_as(dir, "station", &m), NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("echo station >> %s/broker/revoked", dir), 0);
    /* kicked within the plugin's reload tick */
    for (int i = 0; i < 100 && nu_mqtt_is_connected(m); i++)
        usleep(20000);
    CU_ASSERT_FALSE(nu_mqtt_is_connected(m));
    nu_mqtt_destroy(m);
    m = NULL;
    CU_ASSERT_EQUAL(connect_as(dir, "station", &m), NU_ERR_NOT_AUTHORIZED);
    nu_mqtt_destroy(m);
    /* others are unaffected */
    CU_ASSERT_EQUAL(connect_as(dir, "oem", &m), NU_OK);
    nu_mqtt_destroy(m);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"every role connects", test_every_role_connects},
        {"a foreign PKI is refused", test_foreign_pki_is_refused},
        {"monitor reads events, cannot request", test_monitor_reads_events_and_cannot_request},
        {"request/reply through the shared subscription",
         test_request_reply_through_shared_subscription},
        {"a revoked identity is refused", test_revoked_identity_is_refused},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"bus from pki init", setup, teardown, cases},
                                                  {NULL}};
    return nu_test_run("test_bus", suites);
}
