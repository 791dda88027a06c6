#include "station_event.h"

#include "nu_err.h"
#include "nu_util.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define EV__PREFIX "nusec/v1/events/"
#define EV__PROG_PREFIX "nusec/v1/prog/"

/* ---- topics ------------------------------------------------------------------- */

/* Copy the level starting at *p (up to '/' or end) into out; advance *p past it. */
static int ev__level(const char **p, char out[NU_ENVELOPE_ID_MAX + 1])
{
    const char *end = strchr(*p, '/');
    size_t n = end ? (size_t)(end - *p) : strlen(*p);
    if (n == 0 || n > NU_ENVELOPE_ID_MAX)
        return NU_ERR_INVALID_ARG;
    memcpy(out, *p, n);
    out[n] = '\0';
    if (nu_envelope_id_check(out) != NU_OK)
        return NU_ERR_INVALID_ARG;
    *p += n + (end ? 1 : 0);
    return end ? 1 : NU_OK; /* 1: more levels follow */
}

int station_event_topic_parse(const char *topic, char role[NU_ENVELOPE_ID_MAX + 1],
                              char id[NU_ENVELOPE_ID_MAX + 1], char kind[NU_ENVELOPE_ID_MAX + 1])
{
    char parts[3][NU_ENVELOPE_ID_MAX + 1];
    if (!topic || strncmp(topic, EV__PREFIX, strlen(EV__PREFIX)) != 0)
        return NU_ERR_INVALID_ARG;
    const char *p = topic + strlen(EV__PREFIX);
    for (int i = 0; i < 3; i++) {
        int more = ev__level(&p, parts[i]);
        if (more < 0 || more > 1 || (more == 1) != (i < 2))
            return NU_ERR_INVALID_ARG;
    }
    if (role)
        strcpy(role, parts[0]);
    if (id)
        strcpy(id, parts[1]);
    if (kind)
        strcpy(kind, parts[2]);
    return NU_OK;
}

/* nusec/v1/prog/{id}/status -> id. */
static int ev__status_topic(const char *topic, char id[NU_ENVELOPE_ID_MAX + 1])
{
    char rest[NU_ENVELOPE_ID_MAX + 1];
    if (!topic || strncmp(topic, EV__PROG_PREFIX, strlen(EV__PROG_PREFIX)) != 0)
        return NU_ERR_INVALID_ARG;
    const char *p = topic + strlen(EV__PROG_PREFIX);
    if (ev__level(&p, id) != 1 || ev__level(&p, rest) != NU_OK || strcmp(rest, "status") != 0)
        return NU_ERR_INVALID_ARG;
    return NU_OK;
}

/* ---- names --------------------------------------------------------------------------- */

const char *station_prog_state_name(int state)
{
    switch (state) {
    case NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_OFFLINE:
        return "offline";
    case NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_IDLE:
        return "idle";
    case NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING:
        return "producing";
    case NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_ERROR:
        return "error";
    default:
        return "unknown";
    }
}

static const char *ev__outcome_name(int outcome)
{
    switch (outcome) {
    case NUSEC__V1__DEVICE_OUTCOME__DEVICE_OUTCOME_PROVISIONED:
        return "provisioned";
    case NUSEC__V1__DEVICE_OUTCOME__DEVICE_OUTCOME_FAILED:
        return "failed";
    default:
        return "unspecified";
    }
}

const char *station_job_status_name(int status)
{
    switch (status) {
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_ACTIVE:
        return "active";
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_PAUSED:
        return "paused";
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_CLOSED:
        return "closed";
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_EXHAUSTED:
        return "exhausted";
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_EXPIRED:
        return "expired";
    default:
        return "unspecified";
    }
}

/* ---- decoding ------------------------------------------------------------------------ */

/* Validated strings fit (the envelope limits); copy defensively anyway. */
static void ev__copy(char *out, size_t cap, const char *in)
{
    snprintf(out, cap, "%s", in ? in : "");
}

static void ev__device(struct station_event *out, const Nusec__V1__DeviceReport *d)
{
    out->has_device = 1;
    if (d->job_id && d->job_id[0])
        ev__copy(out->job_id, sizeof(out->job_id), d->job_id);
    if (nu_hex_encode(d->device_uid.data, d->device_uid.len, out->device_uid,
                      sizeof(out->device_uid)) != NU_OK)
        out->device_uid[0] = '\0';
    out->socket = d->socket;
    out->outcome = ev__outcome_name(d->outcome);
    ev__copy(out->serial, sizeof(out->serial), d->serial);
    if (d->error)
        out->error = (int)d->error;
    if (d->detail && d->detail[0])
        ev__copy(out->detail, sizeof(out->detail), d->detail);
}

static void ev__data(struct station_event *out, const Nusec__V1__Event *e)
{
    if (e->data_case == NUSEC__V1__EVENT__DATA_DEVICE && e->device) {
        ev__device(out, e->device);
    } else if (e->data_case == NUSEC__V1__EVENT__DATA_PROGRAMMER && e->programmer) {
        out->has_programmer = 1;
        out->prog_state = station_prog_state_name(e->programmer->state);
        out->prog_counter = e->programmer->counter;
        out->prog_limit = e->programmer->limit;
        if (!out->job_id[0])
            ev__copy(out->job_id, sizeof(out->job_id), e->programmer->job_id);
    } else if (e->data_case == NUSEC__V1__EVENT__DATA_JOB && e->job) {
        out->has_job = 1;
        out->job_status = station_job_status_name(e->job->status);
        out->job_quota = e->job->quota;
        out->job_issued = e->job->issued;
        out->job_refused = e->job->refused;
        if (!out->job_id[0])
            ev__copy(out->job_id, sizeof(out->job_id), e->job->job_id);
    }
}

int station_event_decode(const char *topic, const uint8_t *payload, size_t len,
                         struct station_event *out, const char **out_detail)
{
    const char *why = NULL;
    Nusec__V1__Envelope *env = NULL;
    if (!out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    int rc = station_event_topic_parse(topic, out->role, out->sender, out->kind);
    if (rc != NU_OK)
        why = "not an event topic";
    if (rc == NU_OK && strlen(topic) >= sizeof(out->topic)) {
        rc = NU_ERR_INVALID_ARG;
        why = "topic too long";
    }
    if (rc == NU_OK)
        rc = nu_envelope_unpack(payload, len, &env, &why);
    if (rc == NU_OK && env->body_case != NUSEC__V1__ENVELOPE__BODY_EVENT) {
        rc = NU_ERR_INVALID_ARG;
        why = "body is not an Event";
    }
    if (rc == NU_OK && strcmp(env->header->sender_id, out->sender) != 0) {
        rc = NU_ERR_INVALID_ARG;
        why = "envelope sender is not the topic's identity";
    }
    if (rc == NU_OK && env->event->kind[0] && strcmp(env->event->kind, out->kind) != 0) {
        rc = NU_ERR_INVALID_ARG;
        why = "event kind is not the topic's";
    }
    if (rc == NU_OK) {
        const Nusec__V1__Event *e = env->event;
        strcpy(out->topic, topic);
        out->seq = env->header->sequence;
        out->sent_at_ms = env->header->sent_at_ms;
        ev__copy(out->job_id, sizeof(out->job_id), e->job_id);
        out->error = (int)e->code;
        ev__copy(out->detail, sizeof(out->detail), e->detail);
        ev__data(out, e);
    }
    nu_envelope_free(env);
    if (out_detail)
        *out_detail = why;
    return rc;
}

int station_status_decode(const char *topic, const uint8_t *payload, size_t len,
                          struct station_status *out, const char **out_detail)
{
    const char *why = NULL;
    Nusec__V1__Envelope *env = NULL;
    if (!out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    int rc = ev__status_topic(topic, out->programmer_id);
    if (rc != NU_OK)
        why = "not a programmer status topic";
    if (rc == NU_OK)
        rc = nu_envelope_unpack(payload, len, &env, &why);
    if (rc == NU_OK && env->body_case != NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_STATUS) {
        rc = NU_ERR_INVALID_ARG;
        why = "body is not a ProgrammerStatus";
    }
    if (rc == NU_OK && (strcmp(env->header->sender_id, out->programmer_id) != 0 ||
                        (env->programmer_status->programmer_id[0] &&
                         strcmp(env->programmer_status->programmer_id, out->programmer_id)))) {
        rc = NU_ERR_INVALID_ARG;
        why = "status of another programmer";
    }
    if (rc == NU_OK) {
        const Nusec__V1__ProgrammerStatus *s = env->programmer_status;
        out->state = s->state;
        ev__copy(out->job_id, sizeof(out->job_id), s->job_id);
        out->limit = s->limit;
        out->counter = s->counter;
        out->sockets = (uint32_t)s->n_sockets;
        for (size_t i = 0; i < s->n_sockets; i++) {
            out->done += s->sockets[i]->done;
            out->failed += s->sockets[i]->failed;
        }
        ev__copy(out->firmware_version, sizeof(out->firmware_version), s->firmware_version);
        out->seq = env->header->sequence;
        out->sent_at_ms = env->header->sent_at_ms;
        out->cloud_lost_ms = s->cloud_unreachable_since_ms;
    }
    nu_envelope_free(env);
    if (out_detail)
        *out_detail = why;
    return rc;
}

/* ---- JSON -------------------------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s (RFC 3629: no overlongs, no
 * surrogates, at most U+10FFFF), or 0 if invalid. */
static size_t ev__utf8_len(const unsigned char *s)
{
    if (s[0] < 0x80)
        return 1;
    if (s[0] >= 0xc2 && s[0] <= 0xdf)
        return (s[1] & 0xc0) == 0x80 ? 2 : 0;
    if (s[0] >= 0xe0 && s[0] <= 0xef) {
        unsigned char lo = s[0] == 0xe0 ? 0xa0 : 0x80, hi = s[0] == 0xed ? 0x9f : 0xbf;
        return (s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80) ? 3 : 0;
    }
    if (s[0] >= 0xf0 && s[0] <= 0xf4) {
        unsigned char lo = s[0] == 0xf0 ? 0x90 : 0x80, hi = s[0] == 0xf4 ? 0x8f : 0xbf;
        return (s[1] >= lo && s[1] <= hi && (s[2] & 0xc0) == 0x80 && (s[3] & 0xc0) == 0x80) ? 4 : 0;
    }
    return 0;
}

int station_json_escape(const char *in, char *out, size_t cap)
{
    if (!in || !out || cap == 0)
        return NU_ERR_INVALID_ARG;
    size_t n = 0;
    const unsigned char *s = (const unsigned char *)in;
    char tmp[8];
/* Room for the piece, the closing quote and the NUL. */
#define EV__PUT(str, l)                                                                            \
    do {                                                                                           \
        if (n + (l) + 2 > cap)                                                                     \
            goto too_large;                                                                        \
        memcpy(out + n, (str), (l));                                                               \
        n += (l);                                                                                  \
    } while (0)
    if (cap < 3)
        goto too_large;
    out[n++] = '"';
    while (*s) {
        size_t l = ev__utf8_len(s);
        if (l == 0) {
            EV__PUT("\\ufffd", 6);
            s++;
        } else if (*s == '"' || *s == '\\') {
            tmp[0] = '\\';
            tmp[1] = (char)*s;
            EV__PUT(tmp, 2);
            s++;
        } else if (*s < 0x20 || *s == 0x7f) {
            const char *esc = *s == '\n' ? "\\n" : *s == '\t' ? "\\t" : *s == '\r' ? "\\r" : NULL;
            if (esc) {
                EV__PUT(esc, 2);
            } else {
                snprintf(tmp, sizeof(tmp), "\\u%04x", *s);
                EV__PUT(tmp, 6);
            }
            s++;
        } else {
            EV__PUT(s, l);
            s += l;
        }
    }
#undef EV__PUT
    out[n++] = '"';
    out[n] = '\0';
    return NU_OK;
too_large:
    out[0] = '\0';
    return NU_ERR_TOO_LARGE;
}

/* An append-only text buffer that remembers the first failure. */
struct ev__buf {
    char *p;
    size_t cap, len;
    int err;
};

static void ev__printf(struct ev__buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static void ev__printf(struct ev__buf *b, const char *fmt, ...)
{
    if (b->err)
        return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(b->p + b->len, b->cap - b->len, fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= b->cap - b->len)
        b->err = NU_ERR_TOO_LARGE;
    else
        b->len += (size_t)n;
}

static void ev__json_str(struct ev__buf *b, const char *key, const char *value)
{
    char esc[6 * NU_ENVELOPE_TEXT_MAX + 8];
    if (!b->err && station_json_escape(value, esc, sizeof(esc)) != NU_OK)
        b->err = NU_ERR_TOO_LARGE;
    ev__printf(b, "%s\"%s\":%s", b->len > 1 ? "," : "", key, esc);
}

static void ev__json_u64(struct ev__buf *b, const char *key, uint64_t v)
{
    ev__printf(b, "%s\"%s\":%" PRIu64, b->len > 1 ? "," : "", key, v);
}

int station_event_json(const struct station_event *ev, char *out, size_t cap)
{
    if (!ev || !out || cap == 0)
        return NU_ERR_INVALID_ARG;
    struct ev__buf b = {.p = out, .cap = cap};
    out[0] = '\0';
    ev__printf(&b, "{");
    ev__json_str(&b, "topic", ev->topic);
    ev__json_str(&b, "kind", ev->kind);
    ev__json_str(&b, "role", ev->role);
    ev__json_str(&b, "sender", ev->sender);
    ev__json_u64(&b, "seq", ev->seq);
    ev__json_u64(&b, "sent_at_ms", ev->sent_at_ms);
    ev__json_str(&b, "job", ev->job_id);
    if (ev->has_device) {
        ev__json_str(&b, "device_uid", ev->device_uid);
        ev__json_u64(&b, "socket", ev->socket);
        ev__json_str(&b, "outcome", ev->outcome);
        if (ev->serial[0])
            ev__json_str(&b, "serial", ev->serial);
    }
    if (ev->error)
        ev__json_str(&b, "error", nu_err_name(ev->error));
    if (ev->detail[0])
        ev__json_str(&b, "detail", ev->detail);
    if (ev->has_programmer) {
        ev__json_str(&b, "state", ev->prog_state);
        ev__json_u64(&b, "counter", ev->prog_counter);
        ev__json_u64(&b, "limit", ev->prog_limit);
    }
    if (ev->has_job) {
        ev__json_str(&b, "job_status", ev->job_status);
        ev__json_u64(&b, "quota", ev->job_quota);
        ev__json_u64(&b, "issued", ev->job_issued);
        ev__json_u64(&b, "refused", ev->job_refused);
    }
    ev__printf(&b, "}");
    if (b.err)
        out[0] = '\0';
    return b.err;
}

/* ---- text ------------------------------------------------------------------------------ */

void station_time_iso(uint64_t ms, char *out, size_t cap)
{
    time_t t = (time_t)(ms / 1000u);
    struct tm tm;
    char day[32];
    if (!gmtime_r(&t, &tm) || !strftime(day, sizeof(day), "%Y-%m-%dT%H:%M:%S", &tm))
        snprintf(day, sizeof(day), "?");
    snprintf(out, cap, "%s.%03uZ", day, (unsigned)(ms % 1000u));
}

int station_event_text(const struct station_event *ev, char *out, size_t cap)
{
    char when[40];
    if (!ev || !out || cap == 0)
        return NU_ERR_INVALID_ARG;
    struct ev__buf b = {.p = out, .cap = cap};
    out[0] = '\0';
    station_time_iso(ev->sent_at_ms, when, sizeof(when));
    ev__printf(&b, "%s %s/%s %s", when, ev->role, ev->sender, ev->kind);
    if (ev->job_id[0])
        ev__printf(&b, " job=%s", ev->job_id);
    if (ev->has_device) {
        ev__printf(&b, " uid=%s socket=%" PRIu32, ev->device_uid[0] ? ev->device_uid : "-",
                   ev->socket);
        if (ev->serial[0])
            ev__printf(&b, " serial=%s", ev->serial);
    }
    if (ev->has_programmer)
        ev__printf(&b, " state=%s counter=%" PRIu32 "/%" PRIu32, ev->prog_state, ev->prog_counter,
                   ev->prog_limit);
    if (ev->has_job)
        ev__printf(&b, " status=%s issued=%" PRIu32 "/%" PRIu32 " refused=%" PRIu32, ev->job_status,
                   ev->job_issued, ev->job_quota, ev->job_refused);
    if (ev->error)
        ev__printf(&b, " error=%s", nu_err_name(ev->error));
    if (ev->detail[0]) {
        char esc[6 * NU_ENVELOPE_TEXT_MAX + 8];
        /* Quoted and escaped: a detail cannot fake a second line or field. */
        if (station_json_escape(ev->detail, esc, sizeof(esc)) == NU_OK)
            ev__printf(&b, " detail=%s", esc);
    }
    ev__printf(&b, " seq=%" PRIu64, ev->seq);
    if (b.err)
        out[0] = '\0';
    return b.err;
}
