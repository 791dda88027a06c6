/*
 * nu_client — a NuSEC program's connection to the bus, from its state
 * directory, and the typed request/answer round trip with the cloud.
 *
 * Connection: endpoint from DIR/broker/endpoint, trust from DIR/pki/chain.pem,
 * identity from DIR/pki/clients/NAME.{crt,key} unless the caller gives other
 * files (a programmer's identity comes from its KeyStore).
 *
 * Requests: an envelope with a fresh message id, the sender's sequence number
 * and an idempotency key goes to nusec/v1/cloud/req/{id}/{op}; the answer is
 * unpacked with the envelope limits. An `Error` answer becomes its code.
 */
#ifndef NU_CLIENT_H
#define NU_CLIENT_H

#include "nu_envelope.h"
#include "nu_mqtt.h"

#include <stddef.h>
#include <stdint.h>

#define NU_CLIENT_CONNECT_TIMEOUT_MS 10000u

/* What to connect as; zero-initialise, set dir and identity. */
struct nu_client_opts {
    const char *dir;       /* state directory (required) */
    const char *identity;  /* certificate name under DIR/pki/clients/ (e.g. "oem") */
    const char *cert_file; /* overrides DIR/pki/clients/IDENTITY.crt */
    const char *key_file;  /* overrides DIR/pki/clients/IDENTITY.key */
    const char *client_id; /* MQTT client id; NULL = identity (the CN) */
    int clean_start;       /* 1 for short-lived tools, 0 for daemons */
    /* Session Expiry Interval (nu_mqtt_opts.session_expiry_s): 0 = nu_mqtt's
     * default (a day for persistent sessions). Cloud agents use a short one,
     * see cloud-agent's session_expiry_s. */
    uint32_t session_expiry_s;
    /* A daemon started while the broker is down or restarting: keep trying
     * (CONNECTION / TIMEOUT only, backoff 250 ms doubling to 5 s, jittered)
     * for up to this long before giving up. 0: one attempt. */
    unsigned connect_wait_ms;
    struct nu_mqtt_will will;
    /* 1: publish unsigned (tests that play a forger). Default: every message
     * is signed with the identity key (nu_msgsig.h). */
    int no_sign;
    /* Sign with this signer instead of the identity key file (copied; its
     * ctx must outlive the session): the cloud signs what it publishes with
     * an HSM key the programmers pin (nu_msgsig.h). */
    const struct nu_signer *signer;
    void (*on_connection)(struct nu_mqtt *m, int connected, void *userdata);
    void *userdata;
};

/*
 * Create and connect a session (retried up to opts->connect_wait_ms while the
 * broker is unreachable). *out_m is destroyed with nu_mqtt_destroy().
 * Errors: NOT_FOUND (no endpoint / certificate file: run `nusec pki init`),
 * CONFIG (endpoint malformed), and nu_mqtt_connect's errors (CONNECTION,
 * NOT_AUTHORIZED, TIMEOUT).
 */
int nu_client_connect(const struct nu_client_opts *opts, struct nu_mqtt **out_m);

/*
 * Send `body` as operation `op` and wait for the answer.
 * idem_key: NULL = 16 fresh random bytes (a new operation); pass a stable key
 * to make retries of the same operation idempotent.
 * On NU_OK, *out_reply (free with nu_envelope_free) holds the answer, whose
 * body is not an Error. When the cloud answered with an Error, its code is
 * returned and its detail copied to detail[cap] (may be NULL); *out_reply is NULL.
 * Errors: the cloud's codes, TIMEOUT, NOT_FOUND (no cloud agent subscribed),
 * DECODE (answer malformed), and nu_mqtt_request's errors.
 */
int nu_client_request(struct nu_mqtt *m, struct nu_envelope_sender *sender, const char *op,
                      ProtobufCMessage *body, const uint8_t *idem_key, size_t idem_len,
                      unsigned timeout_ms, Nusec__V1__Envelope **out_reply, char *detail,
                      size_t cap);

#endif
