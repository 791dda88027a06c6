#include "nu_client.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define NU__IDEM_LEN 16

static int nu__read_endpoint(const char *dir, char *host, size_t cap, int *port)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    int rc = nu_paths_get(dir, NU_PATH_BROKER_ENDPOINT, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, 512, &text, &len);
    if (rc) {
        nu_error("cannot read broker endpoint %s: %s", path, nu_err_str(rc));
        return rc;
    }
    while (len && (text[len - 1] == '\n' || text[len - 1] == '\r' || text[len - 1] == ' '))
        text[--len] = 0;
    rc = nu_mqtt_endpoint_parse((char *)text, host, cap, port);
    if (rc) {
        nu_error("broker endpoint %s is malformed", path);
        rc = NU_ERR_CONFIG;
    }
    free(text);
    return rc;
}

/* A jittered pause of 1/2..1 x `ms`, so clients started together spread out. */
static void nu__pause(unsigned ms)
{
    uint32_t r = 0;
    if (ms >= 2 && nu_random(&r, sizeof(r)) == NU_OK)
        ms = ms / 2 + r % (ms / 2 + 1);
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
}

/* nu_mqtt_connect, tried again while the broker is unreachable, for up to wait_ms. */
static int nu__connect_retry(struct nu_mqtt *m, const char *who, unsigned wait_ms)
{
    uint64_t end = nu_mono_ms() + wait_ms;
    unsigned delay = 250;
    for (unsigned attempt = 0;; attempt++) {
        int rc = nu_mqtt_connect(m, NU_CLIENT_CONNECT_TIMEOUT_MS);
        uint64_t now = nu_mono_ms();
        if ((rc != NU_ERR_CONNECTION && rc != NU_ERR_TIMEOUT) || now >= end)
            return rc;
        if (attempt == 0)
            nu_warn("%s: broker not reachable (%s); retrying for up to %u s", who, nu_err_name(rc),
                    wait_ms / 1000);
        nu__pause(delay < end - now ? delay : (unsigned)(end - now));
        delay = delay >= 2500 ? 5000 : delay * 2;
    }
}

int nu_client_connect(const struct nu_client_opts *opts, struct nu_mqtt **out_m)
{
    if (!opts || !opts->dir || !opts->identity || !out_m)
        return NU_ERR_INVALID_ARG;
    *out_m = NULL;
    char host[256], ca[PATH_MAX], cert[PATH_MAX], key[PATH_MAX];
    int port = 0;
    int rc = nu__read_endpoint(opts->dir, host, sizeof(host), &port);
    if (!rc)
        rc = nu_paths_get(opts->dir, NU_PATH_CHAIN, ca, sizeof(ca));
    if (!rc)
        rc = opts->cert_file ? nu_path_fmt(cert, sizeof(cert), "%s", opts->cert_file)
                             : nu_paths_client_cert(opts->dir, opts->identity, cert, sizeof(cert));
    if (!rc)
        rc = opts->key_file ? nu_path_fmt(key, sizeof(key), "%s", opts->key_file)
                            : nu_paths_client_key(opts->dir, opts->identity, key, sizeof(key));
    if (rc)
        return rc;
    if (!nu_path_exists(cert) || !nu_path_exists(ca)) {
        nu_error("no certificate for '%s' in %s/pki (run `nusec pki init`)", opts->identity,
                 opts->dir);
        return NU_ERR_NOT_FOUND;
    }
    struct nu_mqtt_opts mo = {
        .host = host,
        .port = port,
        .ca_file = ca,
        .cert_file = cert,
        .key_file = key,
        .client_id = opts->client_id ? opts->client_id : opts->identity,
        .clean_start = opts->clean_start,
        .session_expiry_s = opts->session_expiry_s,
        .will = opts->will,
        .on_connection = opts->on_connection,
        .userdata = opts->userdata,
    };
    struct nu_mqtt *m = NULL;
    struct nu_p256_key *sk = NULL;
    rc = nu_mqtt_create(&mo, &m);
    /* Everything this identity publishes is signed end to end (nu_msgsig.h):
     * the cloud does not take a (site) broker's word for who sent it. */
    if (!rc && !opts->no_sign && opts->signer) {
        rc = nu_mqtt_set_signer(m, opts->signer);
    } else if (!rc && !opts->no_sign) {
        rc = nu_p256_key_load_pem(key, &sk);
        if (rc)
            nu_error("cannot load the signing key %s: %s", key, nu_err_str(rc));
        else
            rc = nu_mqtt_sign_with_key(m, sk);
    }
    if (!rc)
        rc = nu__connect_retry(m, mo.client_id, opts->connect_wait_ms);
    if (rc) {
        nu_mqtt_destroy(m);
        return rc;
    }
    *out_m = m;
    return NU_OK;
}

/* An Error answer: its code (never OK: a zero code is itself malformed). */
static int nu__error_answer(const Nusec__V1__Error *err, char *detail, size_t cap)
{
    if (detail && cap)
        snprintf(detail, cap, "%s", err->detail ? err->detail : "");
    int code = (int)err->code;
    if (code == NU_OK || !nu_err_is_known(code))
        return NU_ERR_DECODE;
    return code;
}

int nu_client_request(struct nu_mqtt *m, struct nu_envelope_sender *sender, const char *op,
                      ProtobufCMessage *body, const uint8_t *idem_key, size_t idem_len,
                      unsigned timeout_ms, Nusec__V1__Envelope **out_reply, char *detail,
                      size_t cap)
{
    if (!m || !sender || !op || !body || !out_reply)
        return NU_ERR_INVALID_ARG;
    *out_reply = NULL;
    if (detail && cap)
        detail[0] = 0;

    char topic[256];
    uint8_t fresh_key[NU__IDEM_LEN];
    uint8_t *packed = NULL, *answer = NULL;
    size_t packed_len = 0, answer_len = 0;
    const char *why = NULL;
    Nusec__V1__Envelope *reply = NULL;
    struct nu_envelope_frame frame;

    int rc = nu_path_fmt(topic, sizeof(topic), "nusec/v1/cloud/req/%s/%s",
                         nu_envelope_sender_id(sender), op);
    if (!rc && !idem_key) {
        rc = nu_random(fresh_key, sizeof(fresh_key));
        idem_key = fresh_key;
        idem_len = sizeof(fresh_key);
    }
    if (!rc)
        rc = nu_envelope_frame_init(&frame, sender, body);
    if (!rc)
        rc = nu_envelope_frame_set_idempotency_key(&frame, idem_key, idem_len);
    if (!rc)
        rc = nu_envelope_pack(&frame.env, &packed, &packed_len, &why);
    if (!rc)
        rc = nu_mqtt_request(m, topic, packed, packed_len, timeout_ms, &answer, &answer_len);
    if (!rc)
        rc = nu_envelope_unpack(answer, answer_len, &reply, &why);
    if (rc) {
        if (why)
            nu_warn("%s: %s (%s)", op, nu_err_str(rc), why);
        goto out;
    }
    if (reply->body_case == NUSEC__V1__ENVELOPE__BODY_ERROR) {
        rc = nu__error_answer(reply->error, detail, cap);
        goto out;
    }
    *out_reply = reply;
    reply = NULL;
out:
    nu_envelope_free(reply);
    free(answer);
    free(packed);
    return rc;
}
