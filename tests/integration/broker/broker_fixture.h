/*
 * broker_fixture — run a real mosquitto for integration tests and talk to it
 * with libmosquitto (MQTT 5, TLS, QoS 1), synchronously.
 *
 * Reusable outside the broker test: start/stop any mosquitto.conf, fill a
 * @NAME@ template, and drive clients with blocking helpers that wait for
 * CONNACK/SUBACK/PUBACK and collect received messages.
 */
#ifndef NUSEC_BROKER_FIXTURE_H
#define NUSEC_BROKER_FIXTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Returned by bf_client_* when nothing (no CONNACK, SUBACK, PUBACK) came in time. */
#define BF_NO_ANSWER (-1)

struct bf_broker {
    pid_t pid; /* 0 when not running */
    int port;
    char log[1024]; /* mosquitto's log file, for diagnostics */
};

/* The test PKI and the plugin's list files of a broker suite, in one
 * temporary folder. */
struct bf_suite {
    char tmp[256];     /* the suite's folder */
    char pki[512];     /* make_pki.sh's certificates and keys (ca-chain.pem, NAME.pem, ...) */
    char revoked[512]; /* plugin_opt_revoked_file: starts as a comment only */
    char owners[512];  /* plugin_opt_owners_file: starts as owners_text */
};

/*
 * A new temporary folder named after `name`, the test PKI in it
 * (make_pki.sh), and the two list files. Returns 0, or -1 (reason printed).
 */
int bf_suite_init(struct bf_suite *s, const char *name, const char *owners_text);

/*
 * broker/mosquitto.conf.in filled for a broker of suite s in folder `dir`
 * (made), listening on 127.0.0.1:port: writes DIR/mosquitto.conf, where the
 * plugin logs to DIR/mosquitto.log and the pid goes to DIR/mosquitto.pid.
 * Returns 0 or -1.
 */
int bf_suite_conf(const struct bf_suite *s, const char *dir, int port);

/* Remove the suite's folder, or keep it (and say so) when NUSEC_KEEP_TMP is set. */
void bf_suite_done(const struct bf_suite *s);

/* A free TCP port on 127.0.0.1 (bind to port 0). Returns 0 or -1. */
int bf_free_port(int *out_port);

/*
 * Copy the template at `in_path` to `out_path` replacing every @NAME@ by its
 * value; `kv` is NAME, value, NAME, value, ..., NULL. Fails (-1) if any
 * @NAME@ of the template has no value, so a new placeholder cannot be
 * silently left in a config.
 */
int bf_fill_template(const char *in_path, const char *out_path, const char *const *kv);

/*
 * Start `mosquitto -c conf` (binary NUSEC_MOSQUITTO_BIN) and wait until it
 * accepts TCP connections on 127.0.0.1:port (up to 5 s). Its stdout/stderr
 * go to `log_path`. Returns 0, or -1 (process reaped, log tail printed).
 */
int bf_broker_start(struct bf_broker *b, const char *conf, int port, const char *log_path);

/* Send SIGHUP (reload). */
void bf_broker_reload(const struct bf_broker *b);

/* SIGTERM, wait up to 3 s, then SIGKILL; always reaps. Safe to call twice. */
void bf_broker_stop(struct bf_broker *b);

/* 1 if the broker's log contains `needle`. */
bool bf_log_contains(const struct bf_broker *b, const char *needle);

struct bf_client_opts {
    int port;
    const char *cafile;
    const char *certfile; /* NULL: no client certificate */
    const char *keyfile;
    const char *client_id;
    bool persistent;         /* clean start false + 300 s session expiry */
    const char *username;    /* NULL: none */
    const char *auth_method; /* NULL: none (MQTT 5 enhanced auth) */
};

struct bf_msg {
    char *topic;
    uint8_t *payload;
    size_t payload_len;
    char *response_topic; /* NULL if absent */
    uint8_t *correlation; /* NULL if absent */
    size_t correlation_len;
    bool retain;
};

struct bf_client;

/*
 * Connect and wait for CONNACK (3 s). On success (*out_client set) returns 0;
 * otherwise the CONNACK reason code (e.g. 135 not authorized) or
 * BF_NO_ANSWER when the TLS handshake or connection failed, and *out_client
 * is NULL. Close with bf_client_close().
 */
int bf_client_connect(const struct bf_client_opts *o, struct bf_client **out_client);

/* Subscribe at QoS 1; returns the SUBACK reason (1 granted, 135 refused...) or BF_NO_ANSWER. */
int bf_client_subscribe(struct bf_client *c, const char *filter);

/*
 * Publish at QoS 1 with optional response topic / correlation data; returns
 * the PUBACK reason code (0 ok, 135 not authorized...) or BF_NO_ANSWER.
 */
int bf_client_publish(struct bf_client *c, const char *topic, const char *payload, bool retain,
                      const char *response_topic, const uint8_t *corr, size_t corr_len);

/*
 * Wait up to `timeout_ms` for the next received message and move it into
 * *out (free with bf_msg_clear()). Returns 0 or -1 on timeout.
 */
int bf_client_next(struct bf_client *c, int timeout_ms, struct bf_msg *out);

/* Number of messages received and not yet taken. */
size_t bf_client_pending(struct bf_client *c);

/* Wait up to `timeout_ms` for the connection to be closed by the broker. */
bool bf_client_wait_disconnect(struct bf_client *c, int timeout_ms);

/* Disconnect (if still connected), stop the network thread, free. NULL is fine. */
void bf_client_close(struct bf_client *c);

void bf_msg_clear(struct bf_msg *m);

#endif
