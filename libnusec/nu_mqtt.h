/*
 * nu_mqtt — one MQTT 5 session over mutual TLS, on libmosquitto 2.0.
 *
 * What a session gives its user:
 *   - mTLS from PEM files (CA, client certificate, key); the certificate CN is
 *     the identity the broker sees and `client_id` names the session;
 *   - a persistent session by default (clean start off, session expiry set on
 *     CONNECT), automatic reconnection with exponential backoff and jitter,
 *     and every subscription sent again after every CONNACK (a broker
 *     that says it resumed the session may still have lost some: Mosquitto
 *     2.0.11 drops `$share/...` subscriptions across a restart);
 *   - QoS 1 publish that waits for the broker's PUBACK, so the caller learns
 *     whether the broker accepted the message;
 *   - request/response with MQTT 5 response topic + correlation data, many
 *     requests in flight from many threads at once;
 *   - subscription handlers dispatched by MQTT 5 subscription identifier;
 *   - a last will for liveness.
 *
 * Threads: a session owns one network thread (started by nu_mqtt_connect,
 * joined by nu_mqtt_disconnect / nu_mqtt_destroy). Handlers and the
 * on_connection callback run on that thread, one at a time: they must not
 * block for long (every message of the session waits behind them). All API
 * functions may be called from any thread, except that nu_mqtt_request,
 * nu_mqtt_disconnect and nu_mqtt_destroy refuse (or must not be called) from a
 * handler, because the network thread cannot wait for itself. nu_mqtt_publish
 * and nu_mqtt_reply called from a handler queue the message and return
 * without waiting for its PUBACK.
 *
 * What a caller can know about broker refusals (Mosquitto 2.0.11, measured in
 * tests/integration/mqtt/test_mqtt.c):
 *   - CONNECT refused by the broker (CONNACK reason >= 0x80, e.g. 0x87 from an
 *     auth plugin): NU_ERR_NOT_AUTHORIZED. A client certificate the broker's
 *     CA did not sign, or no certificate at all, fails in the TLS handshake:
 *     NU_ERR_CONNECTION (the broker sends a TLS alert, not a CONNACK).
 *   - QoS 1 PUBLISH denied by the ACL: the broker answers PUBACK 0x87 and
 *     keeps the connection: NU_ERR_NOT_AUTHORIZED. QoS 0 PUBLISH denied: the
 *     broker drops it silently; the caller cannot know.
 *   - SUBSCRIBE denied by an ACL plugin: SUBACK 0x87: NU_ERR_NOT_AUTHORIZED.
 *     Mosquitto's built-in acl_file does not check at SUBSCRIBE time: it
 *     grants the subscription and filters each message at delivery, silently.
 *   - PUBACK 0x10 "no matching subscribers" is success for nu_mqtt_publish;
 *     nu_mqtt_request turns it into NU_ERR_NOT_FOUND (nobody can answer).
 */
#ifndef NU_MQTT_H
#define NU_MQTT_H

#include "nu_msgsig.h"
#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

/* Defaults applied when the corresponding option is 0. */
/* = NU_ENVELOPE_MAX (4 MiB firmware + 64 KiB): a signed firmware image fits one message. */
#define NU_MQTT_DEFAULT_MAX_PAYLOAD (4u * 1024u * 1024u + 64u * 1024u)
#define NU_MQTT_DEFAULT_KEEPALIVE_S 30
#define NU_MQTT_DEFAULT_SESSION_EXPIRY_S 86400u /* only when clean_start == 0 */
#define NU_MQTT_DEFAULT_BACKOFF_MIN_MS 500u
#define NU_MQTT_DEFAULT_BACKOFF_MAX_MS 30000u
#define NU_MQTT_DEFAULT_OP_TIMEOUT_MS 10000u
#define NU_MQTT_DEFAULT_REQUEST_TIMEOUT_MS 10000u

/* Correlation data of nu_mqtt_request: random bytes, one value per request. */
#define NU_MQTT_CORRELATION_LEN 16

/* Longest client id accepted (it becomes a topic level, see nu_mqtt_create). */
#define NU_MQTT_CLIENT_ID_MAX 128

/* Largest in-memory key PEM (nu_mqtt_opts.key_pem). */
#define NU_MQTT_KEY_PEM_MAX (16u * 1024u)

struct nu_mqtt;

/* Last will: published by the broker when the session ends without a clean
 * DISCONNECT (crash, network loss, keepalive timeout). topic NULL: no will. */
struct nu_mqtt_will {
    const char *topic;
    const void *payload;
    size_t len;
    int qos;    /* 0 or 1 */
    int retain; /* 0 or 1 */
};

/*
 * Session options. Zero-initialise, then set what you need: every numeric
 * field left at 0 takes the NU_MQTT_DEFAULT_* value. Strings are copied by
 * nu_mqtt_create; the struct need not outlive that call.
 */
struct nu_mqtt_opts {
    const char *host;      /* broker host name or IP literal */
    int port;              /* 1..65535 */
    const char *ca_file;   /* PEM: CAs that may sign the broker certificate */
    const char *cert_file; /* PEM: client certificate (chain); NULL with no key: none */
    const char *key_file;  /* PEM: its private key (unencrypted, 0600) */
    /* Instead of key_file: the private key as PEM text in memory (key_pem_len
     * bytes, 1..NU_MQTT_KEY_PEM_MAX, need not be NUL-terminated), for keys
     * that must never be written to a file system (a KeyStore's). It is
     * copied into an anonymous memory file (memfd, sealed against any change)
     * that libmosquitto reads as /proc/self/fd/N at every (re)connect; the
     * descriptor lives as long as the session. Anyone able to read this
     * process's memory or descriptors (same uid, ptrace) can read it, exactly
     * as for the key inside the TLS library. Set key_file or key_pem, not both. */
    const char *key_pem;
    size_t key_pem_len;
    /* MQTT client id, normally the certificate CN. Also names the reply topic
     * nusec/v1/reply/{client_id}/r, so: 1..NU_MQTT_CLIENT_ID_MAX characters
     * from [A-Za-z0-9._-]. A second session of the same identity may use
     * "{id}:{suffix}" (the broker's rule, so sessions never take each other
     * over), both parts from that set; its reply topic is then
     * nusec/v1/reply/{id}/{suffix}/r. */
    const char *client_id;
    int clean_start; /* 0 (default): resume the broker-side session */
    /* Session Expiry Interval sent on CONNECT. With clean_start == 0, 0 means
     * NU_MQTT_DEFAULT_SESSION_EXPIRY_S; with clean_start != 0 it is sent as is
     * (0 = the session ends with the connection). */
    uint32_t session_expiry_s;
    int keepalive_s;             /* 5..65535 */
    unsigned backoff_min_ms;     /* first reconnect delay */
    unsigned backoff_max_ms;     /* delay cap; doubles from min up to this, with jitter */
    unsigned op_timeout_ms;      /* wait for PUBACK / SUBACK */
    unsigned request_timeout_ms; /* nu_mqtt_request with timeout_ms == 0 */
    /* Largest payload accepted in either direction. Larger incoming messages
     * are dropped with a warning before any handler sees them (the limit is
     * also announced to the broker as Maximum Packet Size, with headroom for
     * topic and properties, so the broker drops far larger ones itself). */
    size_t max_payload;
    struct nu_mqtt_will will;
    /* Optional: called on the network thread with connected = 1 after every
     * accepted CONNACK (re-subscriptions already sent) and 0 when an
     * established connection is lost. Not called for a failed nu_mqtt_connect
     * nor for nu_mqtt_disconnect. */
    void (*on_connection)(struct nu_mqtt *m, int connected, void *userdata);
    void *userdata; /* passed to on_connection */
};

/*
 * An incoming message, valid only during the handler call (copy what you
 * keep). payload is not NUL-terminated. response_topic and correlation are
 * NULL / 0 when the publisher did not set them; they are untrusted input.
 */
struct nu_mqtt_msg {
    const char *topic;
    const uint8_t *payload;
    size_t len;
    int qos;
    int retain;
    const char *response_topic;
    const uint8_t *correlation;
    size_t correlation_len;
    /* Value of the first user property NU_MSGSIG_PROP (nu_msgsig.h), NULL if
     * none: the sender's end-to-end signature, untrusted until verified. */
    const char *signature;
};

typedef void (*nu_mqtt_handler)(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *userdata);

/*
 * Parse an endpoint "host:port" (as in DIR/broker/endpoint; surrounding
 * whitespace and a trailing newline are ignored; IPv6 as "[::1]:8883").
 * Writes the host (NUL-terminated) into out_host[host_cap] and the port
 * (1..65535) into *out_port.
 * Errors: INVALID_ARG (NULL argument), DECODE (malformed: empty host, bad
 * characters, missing or out-of-range port, trailing junk), TOO_LARGE (host
 * does not fit out_host). Outputs are untouched on error.
 */
int nu_mqtt_endpoint_parse(const char *text, char *out_host, size_t host_cap, int *out_port);

/*
 * Create a session (not connected yet). Checks the options, that the three
 * PEM files are readable, and sets the last will.
 * On success *out_m is a session the caller frees with nu_mqtt_destroy().
 * Errors: INVALID_ARG (bad option: host, port, client id, will, keepalive,
 * cert without key, both key_file and key_pem, key_pem size), NOT_FOUND /
 * PERMISSION (a PEM file), IO (memfd for key_pem), NOMEM, MQTT (libmosquitto
 * refused the setup; the reason is logged).
 */
int nu_mqtt_create(const struct nu_mqtt_opts *opts, struct nu_mqtt **out_m);

/*
 * Disconnect (if connected), join the network thread and free everything.
 * Pending messages that the broker has not acknowledged are lost. No other
 * thread may be inside an API call on `m`; must not be called from a
 * handler. NULL is a no-op.
 */
void nu_mqtt_destroy(struct nu_mqtt *m);

/*
 * Start the network thread, connect (TCP + TLS + CONNECT) and wait up to
 * timeout_ms (0: op timeout) for the broker's CONNACK. On NU_OK the session
 * keeps itself connected until nu_mqtt_disconnect: lost connections are
 * re-established with backoff, and every subscription is sent again on each
 * CONNACK, resumed session or not. On any error the session does not retry
 * by itself (a timed-out attempt is abandoned and ends on its own) and the
 * call may be repeated.
 * Errors: CONNECTION (refused, unreachable, TLS failure, broker unavailable),
 * NOT_AUTHORIZED (CONNACK: not authorized, bad credentials, banned, client id
 * rejected), TIMEOUT, STATE (already connected or connecting, or called from
 * a handler), NOMEM, MQTT (other protocol failure).
 * Note: libmosquitto connects TCP in blocking mode on the network thread;
 * against a host that silently drops packets the call still returns TIMEOUT
 * on time, but the next connect/disconnect/destroy waits until the kernel
 * gives up on that TCP attempt.
 */
int nu_mqtt_connect(struct nu_mqtt *m, unsigned timeout_ms);

/*
 * Send DISCONNECT (normal: the broker discards the will), stop reconnecting
 * and join the network thread. Waiting publish/request calls on other
 * threads return NU_ERR_CONNECTION. Handlers stay registered for a later
 * nu_mqtt_connect. Idempotent.
 * Errors: STATE (called from a handler).
 */
int nu_mqtt_disconnect(struct nu_mqtt *m);

/* 1 while the session has an accepted CONNACK on a live connection. */
int nu_mqtt_is_connected(struct nu_mqtt *m);

/* The client id given at create (owned by the session). */
const char *nu_mqtt_client_id(const struct nu_mqtt *m);

/*
 * Register `cb` for messages matching `filter` (MQTT filter; a shared
 * subscription "$share/GROUP/filter" is matched on its filter part) and
 * subscribe with `qos` (0 or 1). Each message is given to the handler(s)
 * whose subscription the broker matched (subscription identifiers), at least
 * once for QoS 1: handlers must tolerate duplicates.
 * While connected, waits for the SUBACK (op timeout); on error the handler
 * is not registered. Before nu_mqtt_connect (needed for a persistent
 * session: queued messages arrive right after CONNACK) or while
 * reconnecting, the handler is registered and the SUBSCRIBE is sent on
 * connect; a refusal then is logged and the handler stays registered
 * without a subscription.
 * Errors: INVALID_ARG (NULL, invalid filter, qos), EXISTS (filter already
 * registered), NOT_AUTHORIZED (SUBACK 0x87), NOT_SUPPORTED (SUBACK: shared
 * subscriptions / wildcards / QoS not supported), TIMEOUT, CONNECTION, NOMEM,
 * MQTT (other SUBACK failure).
 */
int nu_mqtt_subscribe(struct nu_mqtt *m, const char *filter, int qos, nu_mqtt_handler cb,
                      void *userdata);

/*
 * Remove the handler of `filter` and send UNSUBSCRIBE if connected (not
 * waited for). Called from another thread, returns only once the handler is
 * not running, so its userdata may be freed afterwards.
 * Errors: INVALID_ARG, NOT_FOUND (no such handler).
 */
int nu_mqtt_unsubscribe(struct nu_mqtt *m, const char *filter);

/*
 * Publish `len` bytes to `topic` with qos 0 or 1.
 * QoS 1 waits for the PUBACK (op timeout) and returns its verdict. While the
 * session is reconnecting the message is queued by libmosquitto and the call
 * waits for its PUBACK after reconnection; NU_ERR_TIMEOUT then means "not
 * confirmed": the message stays queued and may still be delivered.
 * QoS 0 returns once queued: a refused or lost QoS 0 message is not reported.
 * Errors: INVALID_ARG (topic empty / with wildcards / not UTF-8, qos, NULL
 * payload with len > 0), TOO_LARGE (len > max_payload), STATE (not
 * connected by nu_mqtt_connect), NOT_AUTHORIZED (PUBACK 0x87), TIMEOUT,
 * CONNECTION (QoS 0 while disconnected; session stopped while waiting),
 * NOMEM, MQTT (other PUBACK failure).
 */
int nu_mqtt_publish(struct nu_mqtt *m, const char *topic, const void *payload, size_t len, int qos,
                    int retain);

/*
 * nu_mqtt_publish for a thread an outage must not hold (a service's worker
 * publishing notices whose truth is kept elsewhere, e.g. the cloud's events
 * next to its ledger): a QoS 1 message waits for its PUBACK only while the
 * connection lives. Published while the session is reconnecting, it is
 * queued by libmosquitto (sent after the reconnection, as long as the session
 * lives) and the call returns NU_ERR_CONNECTION at once; a connection lost
 * while the call waits ends the wait at once with NU_ERR_CONNECTION (the
 * message stays queued likewise). NU_ERR_CONNECTION thus means "not
 * confirmed, may still be delivered". QoS 0 is as nu_mqtt_publish.
 * Errors: those of nu_mqtt_publish.
 */
int nu_mqtt_publish_live(struct nu_mqtt *m, const char *topic, const void *payload, size_t len,
                         int qos, int retain);

/*
 * Send a request and wait for its response. Publishes (QoS 1) with
 * Response Topic nusec/v1/reply/{client_id}/r (subscribed on first use and
 * kept), fresh random Correlation Data, and Message Expiry = the timeout, so
 * a broker does not deliver a request its sender gave up on. Waits up to
 * timeout_ms (0: request_timeout_ms) in total for the PUBACK and the reply
 * carrying the same correlation data. Replies arriving after the timeout are
 * dropped. Any number of threads may have requests in flight.
 * On NU_OK *out_resp is a heap copy of the reply payload (*out_len bytes,
 * plus a NUL not counted) that the caller frees with free().
 * Errors: INVALID_ARG, TOO_LARGE, STATE (not connected by nu_mqtt_connect,
 * or called from a handler), NOT_FOUND (PUBACK 0x10: no subscriber for the
 * topic), NOT_AUTHORIZED, TIMEOUT, CONNECTION, NOMEM, CRYPTO (no randomness),
 * MQTT.
 */
int nu_mqtt_request(struct nu_mqtt *m, const char *topic, const void *payload, size_t len,
                    unsigned timeout_ms, uint8_t **out_resp, size_t *out_len);

/*
 * nu_mqtt_request, and the reply's end-to-end signature (the value of its
 * NU_MSGSIG_PROP user property, nu_msgsig.h) into out_sig: "" when the reply
 * carried none (or one too long to be a signature). Untrusted until the
 * caller verifies it, over nu_mqtt_reply_topic(m) and the payload, with the
 * key it pinned for the cloud. out_sig may be NULL. Errors: nu_mqtt_request's.
 */
int nu_mqtt_request_signed(struct nu_mqtt *m, const char *topic, const void *payload, size_t len,
                           unsigned timeout_ms, uint8_t **out_resp, size_t *out_len,
                           char out_sig[NU_MSGSIG_VALUE_MAX]);

/* The topic replies to this session's requests arrive on (its Response
 * Topic, nusec/v1/reply/{client_id}/r); NULL for NULL. Owned by m. */
const char *nu_mqtt_reply_topic(const struct nu_mqtt *m);

/*
 * Sign everything this session publishes (nu_mqtt_publish, nu_mqtt_request,
 * nu_mqtt_reply) with `signer`, end to end (nu_msgsig.h): each message gets
 * the user property NU_MSGSIG_PROP over its topic and payload. The struct is
 * copied; signer->ctx must outlive the session. Call before nu_mqtt_connect.
 * NULL stops signing. A failed signature fails the publish (nothing is sent
 * unsigned). Errors: INVALID_ARG (m NULL, signer without sign_digest).
 */
int nu_mqtt_set_signer(struct nu_mqtt *m, const struct nu_signer *signer);

struct nu_p256_key;
/*
 * nu_mqtt_set_signer with a software key the session takes over (destroyed
 * by nu_mqtt_destroy, or here on error): for tools whose identity key is a
 * file (station, OEM CLI, cloud). Errors: INVALID_ARG.
 */
int nu_mqtt_sign_with_key(struct nu_mqtt *m, struct nu_p256_key *key);

/*
 * Answer a request received by a handler: publish `payload` (QoS 1) to
 * req->response_topic with req's correlation data. Typically called inside
 * the handler (then not waited for; see the header comment).
 * A reply is worth something only to a requester still waiting, and a
 * requester that got none retries (NuSEC requests are idempotent), so an
 * outage never holds the caller (issue 15): while the session is
 * reconnecting the reply is dropped, not queued, and the call returns
 * NU_ERR_CONNECTION at once; a connection lost while the call waits for the
 * PUBACK ends the wait at once with NU_ERR_CONNECTION (libmosquitto may still
 * send that one after the reconnection; a requester that gave up drops it).
 * Errors: INVALID_ARG (req has no response topic, or it is not a valid topic
 * name), CONNECTION (dropped: see above), and those of nu_mqtt_publish.
 */
int nu_mqtt_reply(struct nu_mqtt *m, const struct nu_mqtt_msg *req, const void *payload,
                  size_t len);

#endif
