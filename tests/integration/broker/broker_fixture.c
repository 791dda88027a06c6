/* broker_fixture — see broker_fixture.h. Test code: simple, blocking, bounded waits. */
#include "broker_fixture.h"

#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <mosquitto.h>
#include <mqtt_protocol.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#if __has_include(<sys/prctl.h>)
#include <sys/prctl.h>
#endif
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef NUSEC_MOSQUITTO_BIN
#define NUSEC_MOSQUITTO_BIN "/usr/sbin/mosquitto"
#endif

#define BF_ACKS 64
#define BF_CONNACK_WAIT (-2)

/* ---- broker process --------------------------------------------------------- */

int bf_free_port(int *out_port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(sa);
    int rc = -1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0) {
        *out_port = ntohs(sa.sin_port);
        rc = 0;
    }
    close(fd);
    return rc;
}

static char *bf__slurp(const char *path, size_t *out_len)
{
    FILE *fp = fopen(path, "rb");
    char *buf = NULL;
    size_t len = 0, cap = 0;
    if (!fp)
        return NULL;
    for (;;) {
        if (cap - len < 4096) {
            char *nb = realloc(buf, cap + 65536);
            if (!nb) {
                free(buf);
                buf = NULL;
                break;
            }
            buf = nb;
            cap += 65536;
        }
        size_t n = fread(buf + len, 1, cap - len - 1, fp);
        len += n;
        if (n == 0)
            break;
    }
    fclose(fp);
    if (buf)
        buf[len] = '\0';
    if (out_len)
        *out_len = len;
    return buf;
}

static const char *bf__lookup(const char *const *kv, const char *name, size_t len)
{
    for (size_t i = 0; kv[i] && kv[i + 1]; i += 2) {
        if (strlen(kv[i]) == len && memcmp(kv[i], name, len) == 0)
            return kv[i + 1];
    }
    return NULL;
}

int bf_fill_template(const char *in_path, const char *out_path, const char *const *kv)
{
    size_t len;
    char *text = bf__slurp(in_path, &len);
    int rc = -1;
    FILE *out = NULL;
    if (!text)
        goto out;
    out = fopen(out_path, "w");
    if (!out)
        goto out;
    for (const char *p = text; *p;) {
        const char *at = strchr(p, '@');
        const char *end = at ? strchr(at + 1, '@') : NULL;
        if (!at || !end) {
            fputs(p, out);
            break;
        }
        size_t nlen = (size_t)(end - at - 1);
        bool is_name = nlen > 0;
        for (const char *c = at + 1; c < end; c++)
            is_name = is_name && ((*c >= 'A' && *c <= 'Z') || *c == '_');
        fwrite(p, 1, (size_t)(at - p), out);
        if (!is_name) { /* a lone '@' in text: keep it, continue after it */
            fputc('@', out);
            p = at + 1;
            continue;
        }
        const char *val = bf__lookup(kv, at + 1, nlen);
        if (!val) {
            fprintf(stderr, "bf_fill_template: no value for @%.*s@\n", (int)nlen, at + 1);
            goto out;
        }
        fputs(val, out);
        p = end + 1;
    }
    rc = 0;
out:
    if (out && fclose(out) != 0)
        rc = -1;
    free(text);
    return rc;
}

static void bf__log_tail(const char *path)
{
    size_t len = 0;
    char *log = bf__slurp(path, &len);
    if (!log)
        return;
    fprintf(stderr, "---- %s (tail) ----\n%s\n----\n", path, len > 4000 ? log + len - 4000 : log);
    free(log);
}

static bool bf__port_open(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return false;
    bool ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static void bf__sleep_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

int bf_broker_start(struct bf_broker *b, const char *conf, int port, const char *log_path)
{
    memset(b, 0, sizeof(*b));
    b->port = port;
    snprintf(b->log, sizeof(b->log), "%s", log_path);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
#ifdef PR_SET_PDEATHSIG
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* a crashed test leaves no broker behind */
#endif
        int fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND, 0600);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(NUSEC_MOSQUITTO_BIN, "mosquitto", "-c", conf, (char *)NULL);
        _exit(127);
    }
    b->pid = pid;
    for (int i = 0; i < 250; i++) { /* 5 s */
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid) {
            b->pid = 0;
            fprintf(stderr, "bf_broker_start: mosquitto exited (status %d)\n", st);
            bf__log_tail(log_path);
            return -1;
        }
        if (bf__port_open(port))
            return 0;
        bf__sleep_ms(20);
    }
    fprintf(stderr, "bf_broker_start: mosquitto not listening on %d after 5 s\n", port);
    bf_broker_stop(b);
    bf__log_tail(log_path);
    return -1;
}

void bf_broker_reload(const struct bf_broker *b)
{
    if (b->pid > 0)
        kill(b->pid, SIGHUP);
}

void bf_broker_stop(struct bf_broker *b)
{
    if (b->pid <= 0)
        return;
    kill(b->pid, SIGTERM);
    for (int i = 0; i < 150; i++) { /* 3 s */
        if (waitpid(b->pid, NULL, WNOHANG) == b->pid) {
            b->pid = 0;
            return;
        }
        bf__sleep_ms(20);
    }
    kill(b->pid, SIGKILL);
    waitpid(b->pid, NULL, 0);
    b->pid = 0;
}

bool bf_log_contains(const struct bf_broker *b, const char *needle)
{
    char *log = bf__slurp(b->log, NULL);
    bool found = log && strstr(log, needle);
    free(log);
    return found;
}

/* ---- clients ------------------------------------------------------------------ */

struct bf_ack {
    int mid; /* 0: free */
    int rc;
};

struct bf_client {
    struct mosquitto *mosq;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int connack;
    bool disconnected;
    bool loop_started;
    struct bf_ack acks[BF_ACKS];
    struct bf_msg *msgs;
    size_t n_msgs, cap_msgs;
};

static void bf__deadline(struct timespec *ts, int timeout_ms)
{
    clock_gettime(CLOCK_REALTIME, ts);
    ts->tv_sec += timeout_ms / 1000;
    ts->tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (ts->tv_nsec >= 1000000000L) {
        ts->tv_sec++;
        ts->tv_nsec -= 1000000000L;
    }
}

static void bf__on_connect(struct mosquitto *mosq, void *obj, int rc, int flags,
                           const mosquitto_property *props)
{
    struct bf_client *c = obj;
    pthread_mutex_lock(&c->mu);
    c->connack = rc;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    if (rc != 0)
        mosquitto_disconnect(mosq); /* refused: no automatic reconnect */
}

static void bf__on_disconnect(struct mosquitto *mosq, void *obj, int rc,
                              const mosquitto_property *props)
{
    struct bf_client *c = obj;
    pthread_mutex_lock(&c->mu);
    c->disconnected = true;
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    mosquitto_disconnect(mosq); /* kicked: stay disconnected, the test decides */
}

static void bf__ack(struct bf_client *c, int mid, int rc)
{
    pthread_mutex_lock(&c->mu);
    c->acks[mid % BF_ACKS] = (struct bf_ack){mid, rc};
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

static void bf__on_publish(struct mosquitto *mosq, void *obj, int mid, int reason,
                           const mosquitto_property *props)
{
    bf__ack(obj, mid, reason);
}

static void bf__on_subscribe(struct mosquitto *mosq, void *obj, int mid, int qos_count,
                             const int *granted, const mosquitto_property *props)
{
    bf__ack(obj, mid, qos_count > 0 ? granted[0] : BF_NO_ANSWER);
}

static void bf__on_message(struct mosquitto *mosq, void *obj, const struct mosquitto_message *m,
                           const mosquitto_property *props)
{
    struct bf_client *c = obj;
    struct bf_msg msg = {0};
    msg.topic = strdup(m->topic);
    msg.payload = malloc((size_t)m->payloadlen + 1);
    if (msg.payload) {
        memcpy(msg.payload, m->payload, (size_t)m->payloadlen);
        msg.payload[m->payloadlen] = 0;
    }
    msg.payload_len = (size_t)m->payloadlen;
    msg.retain = m->retain;
    mosquitto_property_read_string(props, MQTT_PROP_RESPONSE_TOPIC, &msg.response_topic, false);
    void *corr = NULL;
    uint16_t corr_len = 0;
    if (mosquitto_property_read_binary(props, MQTT_PROP_CORRELATION_DATA, &corr, &corr_len,
                                       false)) {
        msg.correlation = corr;
        msg.correlation_len = corr_len;
    }
    pthread_mutex_lock(&c->mu);
    if (c->n_msgs == c->cap_msgs) {
        size_t cap = c->cap_msgs ? c->cap_msgs * 2 : 8;
        struct bf_msg *v = realloc(c->msgs, cap * sizeof(*v));
        if (v) {
            c->msgs = v;
            c->cap_msgs = cap;
        }
    }
    if (c->n_msgs < c->cap_msgs) {
        c->msgs[c->n_msgs++] = msg;
        memset(&msg, 0, sizeof(msg));
    }
    pthread_cond_broadcast(&c->cv);
    pthread_mutex_unlock(&c->mu);
    bf_msg_clear(&msg);
}

static void bf__free(struct bf_client *c)
{
    if (!c)
        return;
    if (c->mosq)
        mosquitto_destroy(c->mosq);
    for (size_t i = 0; i < c->n_msgs; i++)
        bf_msg_clear(&c->msgs[i]);
    free(c->msgs);
    pthread_cond_destroy(&c->cv);
    pthread_mutex_destroy(&c->mu);
    free(c);
}

static int bf__connect_props(const struct bf_client_opts *o, mosquitto_property **props)
{
    if (o->persistent && mosquitto_property_add_int32(props, MQTT_PROP_SESSION_EXPIRY_INTERVAL,
                                                      300) != MOSQ_ERR_SUCCESS)
        return -1;
    if (o->auth_method && mosquitto_property_add_string(props, MQTT_PROP_AUTHENTICATION_METHOD,
                                                        o->auth_method) != MOSQ_ERR_SUCCESS)
        return -1;
    return 0;
}

int bf_client_connect(const struct bf_client_opts *o, struct bf_client **out_client)
{
    mosquitto_property *props = NULL;
    int rc = BF_NO_ANSWER;
    *out_client = NULL;
    signal(SIGPIPE, SIG_IGN); /* a broker closing a TLS socket must not kill the test */
    struct bf_client *c = calloc(1, sizeof(*c));
    if (!c)
        return BF_NO_ANSWER;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    c->connack = BF_CONNACK_WAIT;
    c->mosq = mosquitto_new(o->client_id, !o->persistent, c);
    if (!c->mosq)
        goto out;
    mosquitto_int_option(c->mosq, MOSQ_OPT_PROTOCOL_VERSION, MQTT_PROTOCOL_V5);
    mosquitto_reconnect_delay_set(c->mosq, 60, 60, false);
    mosquitto_connect_v5_callback_set(c->mosq, bf__on_connect);
    mosquitto_disconnect_v5_callback_set(c->mosq, bf__on_disconnect);
    mosquitto_publish_v5_callback_set(c->mosq, bf__on_publish);
    mosquitto_subscribe_v5_callback_set(c->mosq, bf__on_subscribe);
    mosquitto_message_v5_callback_set(c->mosq, bf__on_message);
    if (mosquitto_tls_set(c->mosq, o->cafile, NULL, o->certfile, o->keyfile, NULL) !=
        MOSQ_ERR_SUCCESS)
        goto out;
    if (o->username && mosquitto_username_pw_set(c->mosq, o->username, NULL) != MOSQ_ERR_SUCCESS)
        goto out;
    if (bf__connect_props(o, &props) != 0)
        goto out;
    if (mosquitto_connect_bind_v5(c->mosq, "127.0.0.1", o->port, 30, NULL, props) !=
        MOSQ_ERR_SUCCESS)
        goto out; /* TCP or TLS handshake refused */
    if (mosquitto_loop_start(c->mosq) != MOSQ_ERR_SUCCESS)
        goto out;
    c->loop_started = true;
    struct timespec dl;
    bf__deadline(&dl, 3000);
    pthread_mutex_lock(&c->mu);
    while (c->connack == BF_CONNACK_WAIT && !c->disconnected &&
           pthread_cond_timedwait(&c->cv, &c->mu, &dl) == 0)
        ;
    rc = c->connack == BF_CONNACK_WAIT ? BF_NO_ANSWER : c->connack;
    pthread_mutex_unlock(&c->mu);
out:
    mosquitto_property_free_all(&props);
    if (rc == 0) {
        *out_client = c;
        return 0;
    }
    bf_client_close(c);
    return rc;
}

static int bf__wait_ack(struct bf_client *c, int mid)
{
    struct timespec dl;
    int rc = BF_NO_ANSWER;
    bf__deadline(&dl, 3000);
    pthread_mutex_lock(&c->mu);
    for (;;) {
        struct bf_ack *a = &c->acks[mid % BF_ACKS];
        if (a->mid == mid) {
            rc = a->rc;
            a->mid = 0;
            break;
        }
        if (c->disconnected || pthread_cond_timedwait(&c->cv, &c->mu, &dl) != 0)
            break;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

int bf_client_subscribe(struct bf_client *c, const char *filter)
{
    int mid = 0;
    if (mosquitto_subscribe_v5(c->mosq, &mid, filter, 1, 0, NULL) != MOSQ_ERR_SUCCESS)
        return BF_NO_ANSWER;
    return bf__wait_ack(c, mid);
}

int bf_client_publish(struct bf_client *c, const char *topic, const char *payload, bool retain,
                      const char *response_topic, const uint8_t *corr, size_t corr_len)
{
    mosquitto_property *props = NULL;
    int mid = 0, rc = BF_NO_ANSWER;
    if (response_topic && mosquitto_property_add_string(&props, MQTT_PROP_RESPONSE_TOPIC,
                                                        response_topic) != MOSQ_ERR_SUCCESS)
        goto out;
    if (corr && mosquitto_property_add_binary(&props, MQTT_PROP_CORRELATION_DATA, corr,
                                              (uint16_t)corr_len) != MOSQ_ERR_SUCCESS)
        goto out;
    if (mosquitto_publish_v5(c->mosq, &mid, topic, (int)strlen(payload), payload, 1, retain,
                             props) != MOSQ_ERR_SUCCESS)
        goto out;
    rc = bf__wait_ack(c, mid);
out:
    mosquitto_property_free_all(&props);
    return rc;
}

int bf_client_next(struct bf_client *c, int timeout_ms, struct bf_msg *out)
{
    struct timespec dl;
    int rc = -1;
    bf__deadline(&dl, timeout_ms);
    memset(out, 0, sizeof(*out));
    pthread_mutex_lock(&c->mu);
    while (c->n_msgs == 0 && pthread_cond_timedwait(&c->cv, &c->mu, &dl) == 0)
        ;
    if (c->n_msgs > 0) {
        *out = c->msgs[0];
        memmove(&c->msgs[0], &c->msgs[1], (c->n_msgs - 1) * sizeof(c->msgs[0]));
        c->n_msgs--;
        rc = 0;
    }
    pthread_mutex_unlock(&c->mu);
    return rc;
}

size_t bf_client_pending(struct bf_client *c)
{
    pthread_mutex_lock(&c->mu);
    size_t n = c->n_msgs;
    pthread_mutex_unlock(&c->mu);
    return n;
}

bool bf_client_wait_disconnect(struct bf_client *c, int timeout_ms)
{
    struct timespec dl;
    bf__deadline(&dl, timeout_ms);
    pthread_mutex_lock(&c->mu);
    while (!c->disconnected && pthread_cond_timedwait(&c->cv, &c->mu, &dl) == 0)
        ;
    bool gone = c->disconnected;
    pthread_mutex_unlock(&c->mu);
    return gone;
}

void bf_client_close(struct bf_client *c)
{
    if (!c)
        return;
    if (c->mosq) {
        mosquitto_disconnect(c->mosq);
        if (c->loop_started)
            mosquitto_loop_stop(c->mosq, false);
    }
    bf__free(c);
}

void bf_msg_clear(struct bf_msg *m)
{
    free(m->topic);
    free(m->payload);
    free(m->response_topic);
    free(m->correlation);
    memset(m, 0, sizeof(*m));
}

/* ---- a suite's PKI, lists and configuration ------------------------------------- */

int bf_suite_init(struct bf_suite *s, const char *name, const char *owners_text)
{
    char lists[300];
    memset(s, 0, sizeof(*s));
    if (nu_test_tmpdir(name, s->tmp, sizeof(s->tmp)) != 0)
        return -1;
    nu_path_fmt(s->pki, sizeof(s->pki), "%s/pki", s->tmp);
    if (nu_test_sh("'%s' '%s' >'%s/pki.log' 2>&1", BF_PKI_SCRIPT, s->pki, s->tmp) != 0) {
        fprintf(stderr, "make_pki.sh failed, see %s/pki.log\n", s->tmp);
        return -1;
    }
    nu_path_fmt(lists, sizeof(lists), "%s/lists", s->tmp);
    nu_mkdirs(lists, 0700);
    nu_path_fmt(s->revoked, sizeof(s->revoked), "%s/revoked.txt", lists);
    nu_path_fmt(s->owners, sizeof(s->owners), "%s/owners.txt", lists);
    const char *revoked = "# revoked identities\n";
    if (nu_file_write_atomic(s->revoked, revoked, strlen(revoked), 0644) != NU_OK ||
        nu_file_write_atomic(s->owners, owners_text, strlen(owners_text), 0644) != NU_OK)
        return -1;
    return 0;
}

int bf_suite_conf(const struct bf_suite *s, const char *dir, int port)
{
    char conf[700], log[700], pid[700], port_text[16], crl_line[700];
    char cafile[600], certfile[600], keyfile[600], issuer[600];
    snprintf(port_text, sizeof(port_text), "%d", port);
    nu_mkdirs(dir, 0700);
    nu_path_fmt(conf, sizeof(conf), "%s/mosquitto.conf", dir);
    nu_path_fmt(log, sizeof(log), "%s/mosquitto.log", dir);
    nu_path_fmt(pid, sizeof(pid), "%s/mosquitto.pid", dir);
    nu_path_fmt(cafile, sizeof(cafile), "%s/ca-chain.pem", s->pki);
    nu_path_fmt(certfile, sizeof(certfile), "%s/server.pem", s->pki);
    nu_path_fmt(keyfile, sizeof(keyfile), "%s/server.key", s->pki);
    nu_path_fmt(issuer, sizeof(issuer), "%s/fleet-ca.pem", s->pki);
    nu_path_fmt(crl_line, sizeof(crl_line), "crlfile %s/crl.pem", s->pki);
    struct passwd *pw = getpwuid(geteuid());
    const char *const kv[] = {
        "USER",         pw ? pw->pw_name : "root",
        "PORT",         port_text,
        "HOST",         "127.0.0.1",
        "CAFILE",       cafile,
        "CERTFILE",     certfile,
        "KEYFILE",      keyfile,
        "CRL_LINE",     crl_line,
        "PLUGIN",       NUSEC_AUTH_PLUGIN,
        "REVOKED_FILE", s->revoked,
        "OWNERS_FILE",  s->owners,
        "ISSUER_FILE",  issuer,
        "DIR",          dir,
        "LOG",          log,
        "PID_FILE",     pid,
        NULL,
    };
    return bf_fill_template(NUSEC_SOURCE_DIR "/broker/mosquitto.conf.in", conf, kv);
}

void bf_suite_done(const struct bf_suite *s)
{
    if (getenv("NUSEC_KEEP_TMP"))
        fprintf(stderr, "kept %s\n", s->tmp);
    else
        nu_test_rmtree(s->tmp);
}
