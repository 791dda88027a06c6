/*
 * sites_hostile — what a hostile CM site can put on the bus, as the test of
 * the two-site shape drives it (test_sites.sh). Not a test runner itself: one
 * action per run, its outcome printed as an error name on stdout
 * ("BAD_SIGNATURE", "REPLAY", "OK"...), so the shell checks it together with
 * the ledger's audit rows and state.
 *
 * The site acts with what a CM holds: its site bridge identity
 * (CMDIR/site/bridge.{crt,key}), i.e. exactly what its site broker forwards
 * over the bridge to the cloud broker, and keys it makes itself. The one
 * exception is `capture`, which plays the CM's view of the traffic its own
 * broker carries: it reads a programmer's genuine signed cert.request off the
 * cloud broker (with the cloud identity, as only a test can).
 *
 *   capture OEMDIR PROG OUT          first genuine cert.request of PROG -> OUT.{topic,sig,env}
 *   answer  OEMDIR PROG N OUT [LOG]  forged certificate answers to PROG's next N cert.requests,
 *                                    signed with a CM-held key (count in OUT); with LOG (PROG's
 *                                    log) the cloud's answer is held back until PROG dropped it
 *   enrollanswer OEMDIR RELAY N OUT LOG  the same for the next N enrollments RELAY (a site's
 *                                    station) relays: an EnrollResponse certifying the
 *                                    programmer's key under the CM's CA and pinning a CM key
 *   challenge OEMDIR RELAY KEY OUT LOG  answer the next enroll.challenge RELAY relays with a
 *                                    challenge of the CM's, signed with KEY (PEM): the anchor
 *                                    the CM pinned in a programmer
 *   forge   OEMDIR CMDIR PROG JOB    cert.request in PROG's name, CM-held key + CSR
 *   newcsr  OEMDIR CMDIR CAPTURE     captured signature on the same request with a new CSR
 *   replay  OEMDIR CMDIR CAPTURE     captured bytes and signature, verbatim
 *   report  OEMDIR CMDIR PROG JOB    device.provisioned event in PROG's name, CM-held key
 *   start   CMDIR PROG JOB           START toward PROG from the site's station
 *   connect OEMDIR CMDIR             connect as the site (a revoked site must fail)
 *   station OEMDIR CMDIR             connect to the cloud broker with the site's station
 *                                    certificate (refused: a site talks through its bridge)
 *
 * Exit: 0 when the action ran (whatever the answer), 1 when it could not, 2 usage.
 */
#include "nu_client.h"
#include "nu_crypto.h"
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_mqtt.h"
#include "nu_msgsig.h"
#include "nu_signer.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

/* Connect to the cloud broker (OEMDIR/broker/endpoint, its chain) as the
 * site bridge, or with the site's station certificate (`station`). */
static int hostile_connect_as(const char *oem, const char *cm, int station, struct nu_mqtt **out)
{
    char cert[PATH_MAX], key[PATH_MAX], name[80] = "site", conf[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    snprintf(conf, sizeof(conf), "%s/site/site.conf", cm);
    if (nu_file_read(conf, 4096, &text, &len) == NU_OK)
        sscanf((char *)text, "name %79s", name);
    free(text);
    char client_id[128];
    if (station) {
        snprintf(cert, sizeof(cert), "%s/pki/clients/%s.crt", cm, name);
        snprintf(key, sizeof(key), "%s/pki/clients/%s.key", cm, name);
    } else {
        snprintf(cert, sizeof(cert), "%s/site/bridge.crt", cm);
        snprintf(key, sizeof(key), "%s/site/bridge.key", cm);
    }
    snprintf(client_id, sizeof(client_id), "%s:hostile", name);
    struct nu_client_opts o = {.dir = oem,
                               .identity = name,
                               .cert_file = cert,
                               .key_file = key,
                               .client_id = client_id,
                               .clean_start = 1};
    return nu_client_connect(&o, out);
}

static int hostile_site(const char *oem, const char *cm, struct nu_mqtt **out)
{
    return hostile_connect_as(oem, cm, 0, out);
}

/*
 * A request exactly as a hostile site broker forwards it over its bridge: on
 * the cloud broker as the site (bridge certificate), the response topic in
 * the programmer's reply tree (which the site may read), the nusec-sig
 * property made by `signer` (a CM-held key, or a lifted genuine signature).
 * nu_mqtt cannot be used: it names its reply topic after its own client id.
 */
struct raw {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int connected, puback, got;
    uint8_t *answer;
    size_t len;
};

static void raw_on_connect(struct mosquitto *mq, void *ud, int rc, int flags,
                           const mosquitto_property *props)
{
    struct raw *r = ud;
    (void)mq, (void)flags, (void)props;
    pthread_mutex_lock(&r->lock);
    r->connected = rc == 0 ? 1 : -1;
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void raw_on_publish(struct mosquitto *mq, void *ud, int mid, int reason,
                           const mosquitto_property *props)
{
    struct raw *r = ud;
    (void)mq, (void)mid, (void)props;
    pthread_mutex_lock(&r->lock);
    r->puback = reason ? reason : -1; /* -1: accepted */
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

static void raw_on_message(struct mosquitto *mq, void *ud, const struct mosquitto_message *msg,
                           const mosquitto_property *props)
{
    struct raw *r = ud;
    (void)mq, (void)props;
    pthread_mutex_lock(&r->lock);
    if (!r->got && (r->answer = malloc((size_t)msg->payloadlen + 1)) != NULL) {
        memcpy(r->answer, msg->payload, (size_t)msg->payloadlen);
        r->len = (size_t)msg->payloadlen;
        r->got = 1;
    }
    pthread_cond_broadcast(&r->cond);
    pthread_mutex_unlock(&r->lock);
}

/* Wait (<= ms) until *flag is non-zero; returns it. */
static int raw_wait(struct raw *r, int *flag, unsigned ms)
{
    struct timespec until;
    clock_gettime(CLOCK_REALTIME, &until);
    until.tv_sec += ms / 1000u;
    until.tv_nsec += (long)(ms % 1000u) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&r->lock);
    while (!*flag && pthread_cond_timedwait(&r->cond, &r->lock, &until) == 0)
        ;
    int v = *flag;
    pthread_mutex_unlock(&r->lock);
    return v;
}

/* Prints the answer's error name, OK, or the broker's refusal (NOT_AUTHORIZED). */
static int raw_request(const char *oem, const char *cm, const char *prog, const char *topic,
                       const uint8_t *env, size_t len, const struct nu_signer *signer)
{
    char cert[PATH_MAX], key[PATH_MAX], ca[PATH_MAX], ep[PATH_MAX], host[256], name[80] = "site";
    char client_id[128], rt[256], sig[NU_MSGSIG_VALUE_MAX], conf[PATH_MAX];
    uint8_t *text = NULL, corr[16];
    size_t tl = 0;
    int port = 0, rc;
    struct raw r = {.lock = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    mosquitto_property *props = NULL;
    snprintf(conf, sizeof(conf), "%s/site/site.conf", cm);
    if (nu_file_read(conf, 4096, &text, &tl) == NU_OK)
        sscanf((char *)text, "name %79s", name);
    free(text);
    text = NULL;
    snprintf(ep, sizeof(ep), "%s/broker/endpoint", oem);
    rc = nu_file_read(ep, 256, &text, &tl);
    if (!rc)
        rc = nu_mqtt_endpoint_parse((char *)text, host, sizeof(host), &port);
    free(text);
    if (rc)
        return rc;
    snprintf(cert, sizeof(cert), "%s/site/bridge.crt", cm);
    snprintf(key, sizeof(key), "%s/site/bridge.key", cm);
    snprintf(ca, sizeof(ca), "%s/pki/chain.pem", cm);
    snprintf(client_id, sizeof(client_id), "%s:hostile", name);
    snprintf(rt, sizeof(rt), "nusec/v1/reply/%s/hostile/r", prog);
    if ((rc = nu_msgsig_sign(signer, topic, env, len, sig)) || (rc = nu_random(corr, sizeof(corr))))
        return rc;
    mosquitto_lib_init();
    struct mosquitto *mq = mosquitto_new(client_id, true, &r);
    rc = NU_ERR_MQTT;
    if (!mq)
        goto out;
    mosquitto_int_option(mq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_connect_v5_callback_set(mq, raw_on_connect);
    mosquitto_publish_v5_callback_set(mq, raw_on_publish);
    mosquitto_message_v5_callback_set(mq, raw_on_message);
    if (mosquitto_tls_set(mq, ca, NULL, cert, key, NULL) != MOSQ_ERR_SUCCESS ||
        mosquitto_connect_bind_v5(mq, host, port, 30, NULL, NULL) != MOSQ_ERR_SUCCESS ||
        mosquitto_loop_start(mq) != MOSQ_ERR_SUCCESS)
        goto out;
    rc = NU_ERR_CONNECTION;
    if (raw_wait(&r, &r.connected, 5000) != 1)
        goto out;
    char filter[300];
    snprintf(filter, sizeof(filter), "nusec/v1/reply/%s/hostile/#", prog);
    mosquitto_subscribe_v5(mq, NULL, filter, 1, 0, NULL);
    usleep(300 * 1000); /* SUBACK (a refused filter just gets no answer: the PUBACK tells) */
    mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC, rt);
    mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr, sizeof(corr));
    mosquitto_property_add_string_pair(&props, MQTT_PROP_USER_PROPERTY, NU_MSGSIG_PROP, sig);
    rc = NU_ERR_MQTT;
    if (mosquitto_publish_v5(mq, NULL, topic, (int)len, env, 1, false, props) != MOSQ_ERR_SUCCESS)
        goto out;
    int ack = raw_wait(&r, &r.puback, 5000);
    if (ack > 0) { /* the broker refused it: 0x87 not authorized */
        printf("%s\n", ack == 0x87 ? "NOT_AUTHORIZED" : "MQTT");
        rc = NU_OK;
        goto out;
    }
    rc = NU_ERR_TIMEOUT;
    if (!raw_wait(&r, &r.got, 8000)) {
        printf("TIMEOUT\n");
        rc = NU_OK;
        goto out;
    }
    Nusec__V1__Envelope *reply = NULL;
    rc = nu_envelope_unpack(r.answer, r.len, &reply, NULL);
    if (rc == NU_OK && reply->body_case == NUSEC__V1__ENVELOPE__BODY_ERROR)
        rc = (int)reply->error->code;
    printf("%s\n", rc == NU_OK ? "OK" : nu_err_name(rc));
    nu_envelope_free(reply);
    rc = NU_OK;
out:
    mosquitto_property_free_all(&props);
    if (mq) {
        mosquitto_disconnect(mq);
        mosquitto_loop_stop(mq, false);
        mosquitto_destroy(mq);
    }
    free(r.answer);
    mosquitto_lib_cleanup();
    return rc;
}

/* A device key and CSR the CM made itself. */
static int hostile_csr(uint8_t **out, size_t *out_len)
{
    struct nu_p256_key *k = NULL;
    struct nu_signer s;
    int rc = nu_p256_key_generate(&k);
    if (!rc)
        rc = nu_p256_key_signer(k, &s);
    if (!rc)
        rc = nu_x509_csr_make(&s, "cm-clone", NULL, NULL, out, out_len);
    nu_p256_key_destroy(k);
    return rc;
}

/* A cert.request envelope from `prog` for `job` with csr (free()). */
static uint8_t *hostile_cert_request(const char *prog, const char *job, const uint8_t *csr,
                                     size_t csr_len, size_t *out_len)
{
    struct nu_envelope_sender *sender = NULL;
    struct nu_envelope_frame fr;
    uint8_t uid[8], key[16], *out = NULL;
    Nusec__V1__CertificateRequest cr = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    if (nu_random(uid, sizeof(uid)) || nu_random(key, sizeof(key)) ||
        nu_envelope_sender_create(prog, NU_ENVELOPE_SEQ_FROM_CLOCK, &sender))
        return NULL;
    cr.job_id = (char *)job;
    cr.device_uid = (ProtobufCBinaryData){sizeof(uid), uid};
    cr.csr_der = (ProtobufCBinaryData){csr_len, (uint8_t *)csr};
    if (nu_envelope_frame_init(&fr, sender, &cr.base) ||
        nu_envelope_frame_set_idempotency_key(&fr, key, sizeof(key)) ||
        nu_envelope_pack(&fr.env, &out, out_len, NULL))
        out = NULL;
    nu_envelope_sender_destroy(sender);
    return out;
}

static int cmd_forge(const char *oem, const char *cm, const char *prog, const char *job)
{
    struct nu_p256_key *cm_key = NULL;
    struct nu_signer signer;
    uint8_t *csr = NULL, *env = NULL;
    size_t csr_len = 0, len = 0;
    char topic[256];
    int rc = nu_p256_key_generate(&cm_key); /* a key the CM holds, not the KeyStore's */
    if (!rc)
        rc = nu_p256_key_signer(cm_key, &signer);
    if (!rc)
        rc = hostile_csr(&csr, &csr_len);
    if (!rc && !(env = hostile_cert_request(prog, job, csr, csr_len, &len)))
        rc = NU_ERR_NOMEM;
    snprintf(topic, sizeof(topic), "nusec/v1/cloud/req/%s/cert.request", prog);
    if (!rc)
        rc = raw_request(oem, cm, prog, topic, env, len, &signer);
    if (rc)
        fprintf(stderr, "sites_hostile: forge: %s\n", nu_err_name(rc));
    free(env);
    free(csr);
    nu_p256_key_destroy(cm_key);
    return rc ? 1 : 0;
}

/* ---- capture: one genuine signed request, as the site's broker carried it ------------------ */

struct capture {
    pthread_mutex_t lock;
    int got;
    const char *out;
};

static void on_capture(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct capture *c = ud;
    char path[PATH_MAX];
    (void)m;
    pthread_mutex_lock(&c->lock);
    if (!c->got && msg->signature) {
        snprintf(path, sizeof(path), "%s.topic", c->out);
        nu_file_write_atomic(path, msg->topic, strlen(msg->topic), 0644);
        snprintf(path, sizeof(path), "%s.sig", c->out);
        nu_file_write_atomic(path, msg->signature, strlen(msg->signature), 0644);
        snprintf(path, sizeof(path), "%s.env", c->out);
        nu_file_write_atomic(path, msg->payload, msg->len, 0644);
        c->got = 1;
    }
    pthread_mutex_unlock(&c->lock);
}

static int cmd_capture(const char *oem, const char *prog, const char *out)
{
    struct capture c = {.out = out};
    struct nu_mqtt *m = NULL;
    char topic[256];
    pthread_mutex_init(&c.lock, NULL);
    snprintf(topic, sizeof(topic), "nusec/v1/cloud/req/%s/cert.request", prog);
    struct nu_client_opts o = {
        .dir = oem, .identity = "cloud", .client_id = "cloud:capture", .clean_start = 1};
    int rc = nu_client_connect(&o, &m);
    if (!rc)
        rc = nu_mqtt_subscribe(m, topic, 1, on_capture, &c);
    printf("%s\n", rc ? nu_err_name(rc) : "SUBSCRIBED");
    fflush(stdout);
    for (int i = 0; !rc && i < 1200; i++) { /* up to 2 minutes */
        pthread_mutex_lock(&c.lock);
        int got = c.got;
        pthread_mutex_unlock(&c.lock);
        if (got)
            break;
        usleep(100 * 1000);
    }
    if (m) {
        nu_mqtt_disconnect(m);
        nu_mqtt_destroy(m);
    }
    pthread_mutex_destroy(&c.lock);
    printf("%s\n", c.got ? "CAPTURED" : "NOTHING");
    return c.got ? 0 : 1;
}

/* ---- answer: forged certificate answers toward a programmer ------------------------------- */

/*
 * What a hostile site broker can put in front of the cloud's answer: for the
 * first `n` cert.requests of PROG, a CertificateIssued for the chip's own key
 * (from its CSR), issued by a CA of the CM's and signed end to end with a
 * CM-held key, sent to the request's response topic with its correlation
 * data and bound to the request (correlation_id = its message id) so that
 * only the signature gives it away. It is published on the cloud broker (the
 * test reads the requests there, as the CM reads them on its own broker) and
 * reaches the programmer through the site's bridge like a genuine answer.
 *
 * A hostile site broker can hold the cloud's answer back and hand its own
 * over first; whether the forgery wins must not be a race in the test. The
 * test owns both sides, so it plays the hold-back by pausing the cloud agent
 * (SIGSTOP, OEMDIR/run/cloud.pid) the moment the request arrives, before the
 * forgery is sent, until the programmer's log shows one more dropped answer
 * (at most HOLD_MS), then SIGCONT: at the programmer that is exactly a site
 * broker delaying the genuine answer. A request the cloud had already
 * committed before the pause (its answer may be out) is not counted as won.
 */
#define HOLD_MS 4000
struct forge {
    pthread_mutex_t lock;
    int sent, want, won;
    const char *out, *oem, *log;
    pid_t held;          /* the paused cloud agent, 0 when none is paused */
    int drops_before;    /* the programmer's drop count when it was paused */
    int ahead;           /* forgeries sent ahead of the cloud's answer in this hold */
    uint64_t held_since; /* nu_mono_ms() */
    uint64_t hold_min;   /* ms: a forged challenge is taken silently, so hold this long */
    struct nu_p256_key *ca;
    struct nu_signer ca_s;
    uint8_t *ca_der;
    size_t ca_len;
    struct nu_envelope_sender *sender;
};

static int forge_cert(struct forge *f, const Nusec__V1__CertificateRequest *cr, uint8_t **out,
                      size_t *out_len)
{
    struct nu_x509_csr_info csr;
    char cn[2 * 32 + 1] = "clone";
    int rc = nu_x509_csr_parse_verify(cr->csr_der.data, cr->csr_der.len, &csr);
    if (!rc && cr->device_uid.len && cr->device_uid.len <= 32)
        nu_hex_encode(cr->device_uid.data, cr->device_uid.len, cn, sizeof(cn));
    int64_t now = (int64_t)time(NULL);
    struct nu_x509_issue_req ir = {.cn = cn,
                                   .o = "CM clone works",
                                   .not_before = now - 60,
                                   .not_after = now + 86400,
                                   .path_len = -1,
                                   .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
                                   .ext_key_usage = NU_X509_EKU_CLIENT_AUTH};
    if (!rc)
        memcpy(ir.pub, csr.pub, sizeof(ir.pub));
    return rc ? rc : nu_x509_issue(&ir, &f->ca_s, f->ca_der, f->ca_len, out, out_len);
}

/* The CM's own "device CA": self-signed, the clone maker's. */
static int forge_ca(struct forge *f)
{
    int64_t now = (int64_t)time(NULL);
    struct nu_x509_issue_req ir = {.cn = "CM clone CA",
                                   .o = "CM clone works",
                                   .not_before = now - 60,
                                   .not_after = now + 86400,
                                   .is_ca = 1,
                                   .path_len = 0,
                                   .key_usage = NU_X509_KU_KEY_CERT_SIGN};
    memcpy(ir.pub, f->ca_s.pub, sizeof(ir.pub));
    return nu_x509_issue(&ir, &f->ca_s, NULL, 0, &f->ca_der, &f->ca_len);
}

/* An identity safe to put in a query: [A-Za-z0-9._-], 1..64. */
static int forge_safe_id(const char *s)
{
    size_t n = s ? strlen(s) : 0;
    if (n == 0 || n > 64)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-", s[i]))
            return 0;
    return 1;
}

/* Lines of `log` that say an answer was dropped as not the cloud's; -1 when unreadable. */
static int forge_drops(const char *log)
{
    uint8_t *text = NULL;
    size_t len = 0;
    int n = 0;
    if (nu_file_read(log, 64u * 1024u * 1024u, &text, &len) != NU_OK)
        return -1;
    for (const char *p = (char *)text; (p = strstr(p, "dropped: signature does not verify")); p++)
        n++;
    free(text);
    return n;
}

/* Pause the cloud agent (the hold-back, see above); 0 when there is none to pause. */
static pid_t forge_hold(struct forge *f)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    long pid = 0;
    snprintf(path, sizeof(path), "%s/run/cloud.pid", f->oem);
    if (!f->log || nu_file_read(path, 64, &text, &len) != NU_OK)
        return 0;
    pid = strtol((char *)text, NULL, 10);
    free(text);
    return pid > 1 && kill((pid_t)pid, SIGSTOP) == 0 ? (pid_t)pid : 0;
}

/* Has the cloud committed what this request asks (its answer may be out)? A
 * certificate for the device, or the programmer's enrollment (uid NULL). */
static int forge_committed(const struct forge *f, const ProtobufCBinaryData *uid,
                           const char *programmer)
{
    char hex[2 * 32 + 1], cmd[PATH_MAX + 256];
    if (uid && (!uid->len || uid->len > 32 || nu_hex_encode(uid->data, uid->len, hex, sizeof(hex))))
        return 1;
    if (!uid && !forge_safe_id(programmer))
        return 1;
    if (uid)
        snprintf(cmd, sizeof(cmd),
                 "sqlite3 -cmd '.timeout 5000' '%s/cloud/ledger.db' \"select count(*) from "
                 "certificates where lower(hex(device_uid)) = '%s'\"",
                 f->oem, hex);
    else
        snprintf(cmd, sizeof(cmd),
                 "sqlite3 -cmd '.timeout 5000' '%s/cloud/ledger.db' \"select count(*) from "
                 "programmers where programmer_id = '%s'\"",
                 f->oem, programmer);
    FILE *p = popen(cmd, "r");
    int n = 1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = 1;
        pclose(p);
    }
    return n != 0;
}

/* OUT: "sent won", rewritten as they change (the caller may stop us any time). */
static void forge_write(const struct forge *f)
{
    char text[32];
    int n = snprintf(text, sizeof(text), "%d %d\n", f->sent, f->won);
    nu_file_write_atomic(f->out, text, (size_t)n, 0644);
}

/* SIGTERM/SIGINT: leave the loop, and release the cloud on the way out. */
static volatile sig_atomic_t forge_stop;
static void forge_on_signal(int sig)
{
    (void)sig;
    forge_stop = 1;
}

/*
 * The main loop's half of the hold-back (the callback must return for the
 * forgery to be sent): release the cloud once the programmer's log shows a
 * drop for every forgery sent ahead during this hold, or HOLD_MS passed.
 * Called with f->lock held.
 */
static void forge_release_due(struct forge *f, int force)
{
    if (!f->held)
        return;
    int drops = forge_drops(f->log) - f->drops_before;
    uint64_t held = nu_mono_ms() - f->held_since;
    if (!force && (held < f->hold_min || (drops < f->ahead && held < HOLD_MS)))
        return;
    kill(f->held, SIGCONT);
    f->won += drops < f->ahead ? (drops > 0 ? drops : 0) : f->ahead;
    printf("cloud released after %llu ms: %d of %d forged answers sent ahead were dropped\n",
           (unsigned long long)(nu_mono_ms() - f->held_since), drops, f->ahead);
    f->held = 0;
    f->ahead = 0;
    forge_write(f);
}

/*
 * A challenge of the CM's own (random nonce), signed with the key given to
 * `challenge` (the anchor the CM pinned in the programmer): the programmer
 * takes it and sends the cloud an attested enrollment naming that anchor.
 * The cloud is held back, as for the answers, so that this one comes first.
 */
static void forge_challenge(struct forge *f, struct nu_mqtt *m, const struct nu_mqtt_msg *msg,
                            const Nusec__V1__Envelope *req)
{
    uint8_t nonce[32], *env = NULL;
    size_t len = 0;
    struct nu_envelope_frame fr;
    Nusec__V1__EnrollChallenge ch = NUSEC__V1__ENROLL_CHALLENGE__INIT;
    pthread_mutex_lock(&f->lock);
    if (!f->held && (f->held = forge_hold(f)) != 0) {
        f->drops_before = forge_drops(f->log);
        f->held_since = nu_mono_ms();
    }
    f->hold_min = 1500; /* the programmer's enroll request queues for the paused cloud */
    pthread_mutex_unlock(&f->lock);
    ch.programmer_id = req->enroll_challenge_request->programmer_id;
    ch.nonce = (ProtobufCBinaryData){sizeof(nonce), nonce};
    ch.expires_at_ms = (uint64_t)time(NULL) * 1000u + 60000u;
    int rc = nu_random(nonce, sizeof(nonce));
    if (!rc)
        rc = nu_envelope_frame_init(&fr, f->sender, &ch.base);
    if (!rc)
        rc = nu_envelope_frame_reply_to(&fr, req);
    if (!rc)
        rc = nu_envelope_pack(&fr.env, &env, &len, NULL);
    if (!rc)
        rc = nu_mqtt_reply(m, msg, env, len);
    pthread_mutex_lock(&f->lock);
    if (!rc)
        printf("forged challenge %d sent (signed with the CM's anchor key)\n", ++f->sent);
    else
        fprintf(stderr, "sites_hostile: challenge: %s\n", nu_err_name(rc));
    forge_write(f);
    pthread_mutex_unlock(&f->lock);
    free(env);
}

static void on_forge(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct forge *f = ud;
    Nusec__V1__Envelope *req = NULL;
    uint8_t *cert = NULL, *env = NULL;
    size_t cert_len = 0, len = 0;
    struct nu_envelope_frame fr;
    pthread_mutex_lock(&f->lock);
    int go = f->sent < f->want && msg->response_topic;
    pthread_mutex_unlock(&f->lock);
    if (!go || nu_envelope_unpack(msg->payload, msg->len, &req, NULL) ||
        (req->body_case != NUSEC__V1__ENVELOPE__BODY_CERTIFICATE_REQUEST &&
         req->body_case != NUSEC__V1__ENVELOPE__BODY_ENROLL_REQUEST &&
         req->body_case != NUSEC__V1__ENVELOPE__BODY_ENROLL_CHALLENGE_REQUEST)) {
        nu_envelope_free(req);
        return;
    }
    if (req->body_case == NUSEC__V1__ENVELOPE__BODY_ENROLL_CHALLENGE_REQUEST) {
        forge_challenge(f, m, msg, req);
        nu_envelope_free(req);
        return;
    }
    int enroll = req->body_case == NUSEC__V1__ENVELOPE__BODY_ENROLL_REQUEST;
    const Nusec__V1__CertificateRequest *cr = req->certificate_request;
    const Nusec__V1__EnrollRequest *er = req->enroll_request;
    Nusec__V1__CertificateIssued ci = NUSEC__V1__CERTIFICATE_ISSUED__INIT;
    Nusec__V1__EnrollResponse eo = NUSEC__V1__ENROLL_RESPONSE__INIT;
    pthread_mutex_lock(&f->lock);
    if (!f->held && (f->held = forge_hold(f)) != 0) {
        f->drops_before = forge_drops(f->log);
        f->held_since = nu_mono_ms();
    }
    int ahead = f->held && !(enroll ? forge_committed(f, NULL, er->programmer_id)
                                    : forge_committed(f, &cr->device_uid, NULL));
    f->ahead += ahead; /* counted before it is sent: the hold lasts until it is dropped */
    pthread_mutex_unlock(&f->lock);
    Nusec__V1__CertificateRequest as_cr = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    if (enroll) /* the programmer's identity CSR, certified by the CM's "CA" */
        as_cr.csr_der = er->csr_der;
    int rc = forge_cert(f, enroll ? &as_cr : cr, &cert, &cert_len);
    ProtobufCBinaryData ca = {f->ca_len, f->ca_der}, cm_pub = {NU_P256_PUB_LEN, f->ca_s.pub};
    if (enroll) { /* pins the CM's key as the "cloud's" package key and ROTPK */
        eo.programmer_id = er->programmer_id;
        eo.certificate_der = (ProtobufCBinaryData){cert_len, cert};
        eo.n_chain_der = 1;
        eo.chain_der = &ca;
        eo.package_signing_pubkey = cm_pub;
        eo.rotpk = cm_pub;
    } else {
        ci.job_id = cr->job_id;
        ci.device_uid = cr->device_uid;
        ci.certificate_der = (ProtobufCBinaryData){cert_len, cert};
        ci.serial = "0badc0de";
    }
    if (!rc)
        rc = nu_envelope_frame_init(&fr, f->sender, enroll ? &eo.base : &ci.base);
    if (!rc)
        rc = nu_envelope_frame_reply_to(&fr, req);
    if (!rc)
        rc = nu_envelope_pack(&fr.env, &env, &len, NULL);
    if (!rc)
        rc = nu_mqtt_reply(m, msg, env, len);
    if (!rc) {
        pthread_mutex_lock(&f->lock);
        printf("forged answer %d: %s\n", ++f->sent,
               !f->held ? "races the cloud's"
               : ahead  ? "sent while the cloud's is held back"
                        : "the cloud had committed this one already");
        forge_write(f);
        pthread_mutex_unlock(&f->lock);
    } else {
        pthread_mutex_lock(&f->lock);
        f->ahead -= ahead && f->held ? 1 : 0; /* not sent: nothing to wait for */
        pthread_mutex_unlock(&f->lock);
        fprintf(stderr, "sites_hostile: answer: %s\n", nu_err_name(rc));
    }
    free(env);
    free(cert);
    nu_envelope_free(req);
}

static int cmd_answer(const char *oem, const char *prog, const char *op, int n, const char *out,
                      const char *log, const char *key_pem)
{
    struct forge f = {.want = n, .out = out, .oem = oem, .log = log};
    struct nu_mqtt *m = NULL;
    struct nu_p256_key *cm_key = NULL;
    char topic[256];
    pthread_mutex_init(&f.lock, NULL);
    snprintf(topic, sizeof(topic), "nusec/v1/cloud/req/%s/%s", prog, op);
    struct nu_client_opts o = {
        .dir = oem, .identity = "cloud", .client_id = "cloud:forger", .clean_start = 1};
    int rc = nu_p256_key_generate(&f.ca);
    if (!rc)
        rc = nu_p256_key_signer(f.ca, &f.ca_s);
    if (!rc)
        rc = forge_ca(&f);
    if (!rc)
        rc = nu_envelope_sender_create("cloud", NU_ENVELOPE_SEQ_FROM_CLOCK, &f.sender);
    if (!rc) /* a key the CM holds: made now, or the anchor it pinned */
        rc = key_pem ? nu_p256_key_load_pem(key_pem, &cm_key) : nu_p256_key_generate(&cm_key);
    if (!rc)
        rc = nu_client_connect(&o, &m);
    if (!rc) /* the CM's key signs the answers, end to end */
        rc = nu_mqtt_sign_with_key(m, cm_key);
    else
        nu_p256_key_destroy(cm_key);
    if (!rc)
        rc = nu_mqtt_subscribe(m, topic, 1, on_forge, &f);
    printf("%s\n", rc ? nu_err_name(rc) : "SUBSCRIBED");
    struct sigaction sa = {.sa_handler = forge_on_signal};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    for (int i = 0; !rc && !forge_stop && i < 2400; i++) { /* up to 2 minutes */
        pthread_mutex_lock(&f.lock);
        forge_release_due(&f, 0);
        int done = f.sent >= f.want && !f.held;
        pthread_mutex_unlock(&f.lock);
        if (done)
            break;
        usleep(50 * 1000);
    }
    pthread_mutex_lock(&f.lock);
    forge_release_due(&f, 1); /* never leave the cloud paused */
    forge_write(&f);
    pthread_mutex_unlock(&f.lock);
    if (m) {
        nu_mqtt_disconnect(m);
        nu_mqtt_destroy(m);
    }
    printf("FORGED %d (ahead of the cloud's and dropped: %d)\n", f.sent, f.won);
    nu_envelope_sender_destroy(f.sender);
    nu_p256_key_destroy(f.ca);
    free(f.ca_der);
    pthread_mutex_destroy(&f.lock);
    return f.sent ? 0 : 1;
}

/* ---- replays of the captured request ------------------------------------------------------ */

struct fixed_sig {
    uint8_t sig[NU_P256_SIG_MAX];
    size_t len;
};

/* Whatever it is asked, the lifted genuine signature. */
static int fixed_sign(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    const struct fixed_sig *f = ctx;
    (void)digest;
    memcpy(sig, f->sig, f->len);
    *sig_len = f->len;
    return NU_OK;
}

static int load_capture(const char *cap, char *topic, size_t cap_topic, struct fixed_sig *f,
                        uint8_t **env, size_t *len)
{
    char path[PATH_MAX];
    uint8_t *t = NULL, *s = NULL;
    size_t tl = 0, sl = 0;
    snprintf(path, sizeof(path), "%s.topic", cap);
    int rc = nu_file_read(path, cap_topic - 1, &t, &tl);
    if (!rc) {
        memcpy(topic, t, tl);
        topic[tl] = '\0';
        snprintf(path, sizeof(path), "%s.sig", cap);
        rc = nu_file_read(path, NU_MSGSIG_VALUE_MAX, &s, &sl);
    }
    if (!rc) {
        char hex[NU_MSGSIG_VALUE_MAX + 1];
        memcpy(hex, s, sl);
        hex[sl] = '\0';
        rc = nu_hex_decode(hex, f->sig, sizeof(f->sig), &f->len);
    }
    if (!rc) {
        snprintf(path, sizeof(path), "%s.env", cap);
        rc = nu_file_read(path, NU_ENVELOPE_MAX, env, len);
    }
    free(t);
    free(s);
    return rc;
}

/* newcsr 1: the genuine envelope with a CM-held CSR in place of the chip's. */
static int cmd_replay(const char *oem, const char *cm, const char *cap, int newcsr)
{
    char topic[256];
    struct fixed_sig f = {0};
    uint8_t *env = NULL, *csr = NULL, *out = NULL;
    size_t len = 0, csr_len = 0, out_len = 0;
    Nusec__V1__Envelope *e = NULL;
    int rc = load_capture(cap, topic, sizeof(topic), &f, &env, &len);
    if (!rc && newcsr) {
        rc = nu_envelope_unpack(env, len, &e, NULL);
        if (!rc && e->body_case != NUSEC__V1__ENVELOPE__BODY_CERTIFICATE_REQUEST)
            rc = NU_ERR_DECODE;
        if (!rc)
            rc = hostile_csr(&csr, &csr_len);
        if (!rc) { /* the unpacked envelope owns its CSR: swap, pack, swap back */
            ProtobufCBinaryData chip = e->certificate_request->csr_der;
            e->certificate_request->csr_der = (ProtobufCBinaryData){csr_len, csr};
            rc = nu_envelope_pack(e, &out, &out_len, NULL);
            e->certificate_request->csr_der = chip;
        }
    }
    struct nu_signer s = {.ctx = &f, .sign_digest = fixed_sign};
    char prog[80] = "";
    /* nusec/v1/cloud/req/PROG/OP */
    if (!rc && sscanf(topic, "nusec/v1/cloud/req/%79[^/]/", prog) != 1)
        rc = NU_ERR_DECODE;
    if (!rc)
        rc = raw_request(oem, cm, prog, topic, newcsr ? out : env, newcsr ? out_len : len, &s);
    if (rc)
        fprintf(stderr, "sites_hostile: replay: %s\n", nu_err_name(rc));
    nu_envelope_free(e);
    free(out);
    free(csr);
    free(env);
    return rc ? 1 : 0;
}

/* ---- a forged device report ------------------------------------------------------------------ */

static int cmd_report(const char *oem, const char *cm, const char *prog, const char *job)
{
    struct nu_mqtt *m = NULL;
    struct nu_p256_key *cm_key = NULL;
    struct nu_envelope_sender *sender = NULL;
    struct nu_envelope_frame fr;
    uint8_t *env = NULL;
    size_t len = 0;
    char topic[256];
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = "device.provisioned";
    ev.job_id = (char *)job;
    int rc = hostile_site(oem, cm, &m);
    if (!rc)
        rc = nu_p256_key_generate(&cm_key);
    if (!rc)
        rc = nu_mqtt_sign_with_key(m, cm_key);
    if (!rc)
        rc = nu_envelope_sender_create(prog, NU_ENVELOPE_SEQ_FROM_CLOCK, &sender);
    if (!rc)
        rc = nu_envelope_frame_init(&fr, sender, &ev.base);
    if (!rc)
        rc = nu_envelope_pack(&fr.env, &env, &len, NULL);
    snprintf(topic, sizeof(topic), "nusec/v1/events/programmer/%s/device.provisioned", prog);
    if (!rc)
        rc = nu_mqtt_publish(m, topic, env, len, 1, 0);
    printf("%s\n", rc ? nu_err_name(rc) : "PUBLISHED");
    free(env);
    nu_envelope_sender_destroy(sender);
    if (m) {
        nu_mqtt_disconnect(m);
        nu_mqtt_destroy(m); /* it owns cm_key (nu_mqtt_sign_with_key) */
    } else {
        nu_p256_key_destroy(cm_key);
    }
    return 0;
}

/* START toward a programmer, from the site's station identity (the CM holds its key). */
static int cmd_start(const char *cm, const char *prog, const char *job)
{
    char name[80] = "site", conf[PATH_MAX], client_id[128], topic[256];
    uint8_t *text = NULL, *env = NULL;
    size_t tl = 0, len = 0;
    struct nu_mqtt *m = NULL;
    struct nu_envelope_sender *sender = NULL;
    struct nu_envelope_frame fr;
    snprintf(conf, sizeof(conf), "%s/site/site.conf", cm);
    if (nu_file_read(conf, 4096, &text, &tl) == NU_OK)
        sscanf((char *)text, "name %79s", name);
    free(text);
    snprintf(client_id, sizeof(client_id), "%s:hostile", name);
    Nusec__V1__ProductionCommand cmd = NUSEC__V1__PRODUCTION_COMMAND__INIT;
    cmd.job_id = (char *)job;
    cmd.action = NUSEC__V1__PRODUCTION_ACTION__PRODUCTION_ACTION_START;
    struct nu_client_opts o = {
        .dir = cm, .identity = name, .client_id = client_id, .clean_start = 1};
    int rc = nu_client_connect(&o, &m); /* the site broker, as the station */
    if (!rc)
        rc = nu_envelope_sender_create(name, NU_ENVELOPE_SEQ_FROM_CLOCK, &sender);
    if (!rc)
        rc = nu_envelope_frame_init(&fr, sender, &cmd.base);
    if (!rc)
        rc = nu_envelope_pack(&fr.env, &env, &len, NULL);
    snprintf(topic, sizeof(topic), "nusec/v1/prog/%s/cmd", prog);
    if (!rc)
        rc = nu_mqtt_publish(m, topic, env, len, 1, 0);
    printf("%s\n", rc ? nu_err_name(rc) : "PUBLISHED");
    free(env);
    nu_envelope_sender_destroy(sender);
    if (m) {
        nu_mqtt_disconnect(m);
        nu_mqtt_destroy(m);
    }
    return 0;
}

static int cmd_connect(const char *oem, const char *cm, int station)
{
    struct nu_mqtt *m = NULL;
    int rc = hostile_connect_as(oem, cm, station, &m);
    printf("%s\n", rc ? nu_err_name(rc) : "OK");
    if (m) {
        nu_mqtt_disconnect(m);
        nu_mqtt_destroy(m);
    }
    return 0;
}

int main(int argc, char **argv)
{
    setvbuf(stdout, NULL, _IOLBF, 0); /* each answer out at once, whatever happens at exit */
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "answer") && (argc == 6 || argc == 7))
        return cmd_answer(argv[2], argv[3], "cert.request", atoi(argv[4]), argv[5],
                          argc == 7 ? argv[6] : NULL, NULL);
    if (!strcmp(cmd, "enrollanswer") && argc == 7)
        return cmd_answer(argv[2], argv[3], "enroll", atoi(argv[4]), argv[5], argv[6], NULL);
    if (!strcmp(cmd, "challenge") && argc == 7)
        return cmd_answer(argv[2], argv[3], "enroll.challenge", 1, argv[5], argv[6], argv[4]);
    if (!strcmp(cmd, "capture") && argc == 5)
        return cmd_capture(argv[2], argv[3], argv[4]);
    if (!strcmp(cmd, "forge") && argc == 6)
        return cmd_forge(argv[2], argv[3], argv[4], argv[5]);
    if (!strcmp(cmd, "newcsr") && argc == 5)
        return cmd_replay(argv[2], argv[3], argv[4], 1);
    if (!strcmp(cmd, "replay") && argc == 5)
        return cmd_replay(argv[2], argv[3], argv[4], 0);
    if (!strcmp(cmd, "report") && argc == 6)
        return cmd_report(argv[2], argv[3], argv[4], argv[5]);
    if (!strcmp(cmd, "start") && argc == 5)
        return cmd_start(argv[2], argv[3], argv[4]);
    if (!strcmp(cmd, "connect") && argc == 4)
        return cmd_connect(argv[2], argv[3], 0);
    if (!strcmp(cmd, "station") && argc == 4)
        return cmd_connect(argv[2], argv[3], 1);
    fprintf(stderr, "usage: sites_hostile "
                    "capture|answer|enrollanswer|challenge|forge|newcsr|replay|report|connect|"
                    "station ... "
                    "(see the header of sites_hostile.c)\n");
    return 2;
}
