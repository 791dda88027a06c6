#include "dash_model.h"

#include "nu_err.h"
#include "nu_envelope.h"

#include <cjson/cJSON.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define DASH__ALLOC_MAX 32
#define DASH__SAMPLES 64
#define DASH__RATE_WINDOW_MS (5u * 60u * 1000u)
#define DASH__ID_MAX (NU_ENVELOPE_ID_MAX + 1)
#define DASH__KEY_MAX (2 * DASH__ID_MAX + 1) /* "job/reason" */

struct dash__sample {
    uint64_t ms;
    uint32_t issued;
};

struct dash__job {
    char id[DASH__ID_MAX];
    const char *status;
    uint32_t quota, issued, refused;
    char firmware[DASH__ID_MAX];
    uint64_t expires_at_ms, touched_ms;
    size_t n_alloc;
    char alloc_id[DASH__ALLOC_MAX][DASH__ID_MAX];
    uint32_t alloc_limit[DASH__ALLOC_MAX], alloc_issued[DASH__ALLOC_MAX];
    struct dash__sample samples[DASH__SAMPLES]; /* issued over time, a ring */
    size_t n_samples, next_sample;
};

struct dash__prog {
    char id[DASH__ID_MAX];
    char job[DASH__ID_MAX];
    const char *state;
    uint32_t counter, limit, sockets, done, failed;
    uint64_t last_seen_ms;
};

struct dash__reason {
    char key[DASH__KEY_MAX];
    char job[DASH__ID_MAX];
    char reason[DASH__ID_MAX];
    uint64_t count, touched_ms;
};

struct dash_model {
    pthread_mutex_t lock;
    uint64_t version;
    struct dash__job jobs[DASH_MODEL_JOBS_MAX];
    size_t n_jobs;
    struct dash__prog progs[DASH_MODEL_PROGRAMMERS_MAX];
    size_t n_progs;
    struct dash__reason reasons[DASH_MODEL_REASONS_MAX];
    size_t n_reasons;
    uint64_t minute_tag[DASH_MODEL_MINUTES]; /* which minute each bucket counts */
    uint32_t minute_count[DASH_MODEL_MINUTES];
    char recent[DASH_MODEL_RECENT][512];
    size_t n_recent, next_recent;
};

int dash_model_create(struct dash_model **out_model)
{
    if (!out_model)
        return NU_ERR_INVALID_ARG;
    struct dash_model *m = calloc(1, sizeof(*m));
    if (!m)
        return NU_ERR_NOMEM;
    pthread_mutex_init(&m->lock, NULL);
    *out_model = m;
    return NU_OK;
}

void dash_model_destroy(struct dash_model *model)
{
    if (!model)
        return;
    pthread_mutex_destroy(&model->lock);
    free(model);
}

static void dash__copy(char *out, size_t cap, const char *in)
{
    snprintf(out, cap, "%s", in ? in : "");
}

/*
 * The entry named `id` in a table of n entries of `size` bytes whose first
 * member is the name; a new one when absent. A full table gives up its least
 * recently touched entry (touched_at returns an entry's time), so made-up
 * names can only push out each other and old entries.
 */
static void *dash__slot(void *table, size_t *n, size_t cap, size_t size, const char *id,
                        size_t name_cap, uint64_t (*touched_at)(const void *))
{
    char *base = table;
    for (size_t i = 0; i < *n; i++)
        if (strcmp(base + i * size, id) == 0)
            return base + i * size;
    size_t at = *n;
    if (*n < cap) {
        (*n)++;
    } else {
        at = 0;
        for (size_t i = 1; i < cap; i++)
            if (touched_at(base + i * size) < touched_at(base + at * size))
                at = i;
    }
    memset(base + at * size, 0, size);
    dash__copy(base + at * size, name_cap, id);
    return base + at * size;
}

static uint64_t dash__job_touched(const void *p)
{
    return ((const struct dash__job *)p)->touched_ms;
}
static uint64_t dash__prog_seen(const void *p)
{
    return ((const struct dash__prog *)p)->last_seen_ms;
}
static uint64_t dash__reason_touched(const void *p)
{
    return ((const struct dash__reason *)p)->touched_ms;
}

static struct dash__job *dash__job(struct dash_model *m, const char *id, uint64_t now_ms)
{
    struct dash__job *j = dash__slot(m->jobs, &m->n_jobs, DASH_MODEL_JOBS_MAX, sizeof(*j), id,
                                     DASH__ID_MAX, dash__job_touched);
    j->touched_ms = now_ms;
    if (!j->status)
        j->status = "unspecified";
    return j;
}

static struct dash__prog *dash__prog(struct dash_model *m, const char *id)
{
    struct dash__prog *p = dash__slot(m->progs, &m->n_progs, DASH_MODEL_PROGRAMMERS_MAX, sizeof(*p),
                                      id, DASH__ID_MAX, dash__prog_seen);
    if (!p->state)
        p->state = "unknown";
    return p;
}

static void dash__job_counts(struct dash__job *j, const char *status, uint32_t quota,
                             uint32_t issued, uint32_t refused, uint64_t at_ms)
{
    j->status = status;
    j->quota = quota;
    j->refused = refused;
    if (issued != j->issued || j->n_samples == 0) {
        j->samples[j->next_sample] = (struct dash__sample){at_ms, issued};
        j->next_sample = (j->next_sample + 1) % DASH__SAMPLES;
        if (j->n_samples < DASH__SAMPLES)
            j->n_samples++;
    }
    j->issued = issued;
}

/* Certificates per minute over the last five minutes of samples; 0 when unknown. */
static double dash__job_rate(const struct dash__job *j, uint64_t now_ms)
{
    const struct dash__sample *oldest = NULL, *newest = NULL;
    for (size_t i = 0; i < j->n_samples; i++) {
        const struct dash__sample *s = &j->samples[i];
        if (s->ms + DASH__RATE_WINDOW_MS < now_ms)
            continue;
        if (!oldest || s->ms < oldest->ms)
            oldest = s;
        if (!newest || s->ms > newest->ms)
            newest = s;
    }
    if (!oldest || newest->ms <= oldest->ms || newest->issued <= oldest->issued)
        return 0;
    return (double)(newest->issued - oldest->issued) * 60000.0 / (double)(now_ms - oldest->ms);
}

static int dash__feed_job(struct dash_model *m, const uint8_t *payload, size_t len, uint64_t now_ms)
{
    Nusec__V1__Envelope *env = NULL;
    int rc = nu_envelope_unpack(payload, len, &env, NULL);
    if (rc != NU_OK)
        return rc;
    const Nusec__V1__JobState *js = env->job_state;
    if (env->body_case != NUSEC__V1__ENVELOPE__BODY_JOB_STATE || !js || !js->job_id ||
        nu_envelope_id_check(js->job_id) != NU_OK) {
        nu_envelope_free(env);
        return NU_ERR_INVALID_ARG;
    }
    struct dash__job *j = dash__job(m, js->job_id, now_ms);
    uint64_t at = env->header && env->header->sent_at_ms && env->header->sent_at_ms < now_ms
                      ? env->header->sent_at_ms
                      : now_ms;
    dash__job_counts(j, station_job_status_name(js->status), js->quota, js->issued, js->refused,
                     at);
    dash__copy(j->firmware, sizeof(j->firmware), js->firmware);
    j->expires_at_ms = js->expires_at_ms;
    j->n_alloc = 0;
    for (size_t i = 0; i < js->n_allocations && j->n_alloc < DASH__ALLOC_MAX; i++) {
        const Nusec__V1__ProgrammerAllocation *a = js->allocations[i];
        if (!a || !a->programmer_id || nu_envelope_id_check(a->programmer_id) != NU_OK)
            continue;
        dash__copy(j->alloc_id[j->n_alloc], DASH__ID_MAX, a->programmer_id);
        j->alloc_limit[j->n_alloc] = a->limit;
        j->alloc_issued[j->n_alloc] =
            i < js->n_issued_per_programmer ? js->issued_per_programmer[i] : 0;
        j->n_alloc++;
    }
    nu_envelope_free(env);
    return NU_OK;
}

static void dash__feed_status(struct dash_model *m, const struct station_status *s, uint64_t now_ms)
{
    struct dash__prog *p = dash__prog(m, s->programmer_id);
    p->state = station_prog_state_name(s->state);
    /* A last will says only "offline": keep the progress and the time last seen. */
    if (s->state == NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_OFFLINE && !s->job_id[0]) {
        if (!p->last_seen_ms)
            p->last_seen_ms = now_ms;
        return;
    }
    dash__copy(p->job, sizeof(p->job), s->job_id);
    p->counter = s->counter;
    p->limit = s->limit;
    p->sockets = s->sockets;
    p->done = s->done;
    p->failed = s->failed;
    uint64_t seen = s->sent_at_ms && s->sent_at_ms < now_ms ? s->sent_at_ms : now_ms;
    if (seen > p->last_seen_ms)
        p->last_seen_ms = seen;
}

static void dash__count_minute(struct dash_model *m, uint64_t at_ms)
{
    uint64_t minute = at_ms / 60000u;
    size_t b = (size_t)(minute % DASH_MODEL_MINUTES);
    if (m->minute_tag[b] != minute) {
        m->minute_tag[b] = minute;
        m->minute_count[b] = 0;
    }
    m->minute_count[b]++;
}

static void dash__feed_event(struct dash_model *m, const struct station_event *ev, uint64_t now_ms)
{
    uint64_t at = ev->sent_at_ms && ev->sent_at_ms < now_ms ? ev->sent_at_ms : now_ms;
    /* The role is the topic's, which the broker checks against the sender's
     * certificate. Every role may publish events, a read-only monitor
     * included: a job's state and counts are the cloud's word only, a chip's
     * outcome a programmer's (any other sender faked the OEM's view). */
    int from_cloud = strcmp(ev->role, "cloud") == 0;
    int from_programmer = strcmp(ev->role, "programmer") == 0;
    if (from_programmer) {
        struct dash__prog *p = dash__prog(m, ev->sender);
        if (at > p->last_seen_ms)
            p->last_seen_ms = at;
    }
    if (from_cloud && ev->has_job && ev->job_id[0])
        dash__job_counts(dash__job(m, ev->job_id, now_ms), ev->job_status, ev->job_quota,
                         ev->job_issued, ev->job_refused, at);
    if (from_programmer && ev->has_device && ev->outcome && strcmp(ev->outcome, "provisioned") == 0)
        dash__count_minute(m, at);
    if (from_programmer && ev->has_device && ev->outcome && strcmp(ev->outcome, "failed") == 0) {
        char key[DASH__KEY_MAX];
        snprintf(key, sizeof(key), "%s/%s", ev->job_id, ev->error ? nu_err_name(ev->error) : "-");
        struct dash__reason *r = dash__slot(m->reasons, &m->n_reasons, DASH_MODEL_REASONS_MAX,
                                            sizeof(*r), key, DASH__KEY_MAX, dash__reason_touched);
        dash__copy(r->job, sizeof(r->job), ev->job_id);
        dash__copy(r->reason, sizeof(r->reason), ev->error ? nu_err_name(ev->error) : "unknown");
        r->count++;
        r->touched_ms = now_ms;
    }
    if (station_event_text(ev, m->recent[m->next_recent], sizeof(m->recent[0])) == NU_OK) {
        m->next_recent = (m->next_recent + 1) % DASH_MODEL_RECENT;
        if (m->n_recent < DASH_MODEL_RECENT)
            m->n_recent++;
    }
}

int dash_model_feed(struct dash_model *model, const char *topic, const uint8_t *payload, size_t len,
                    uint64_t now_ms)
{
    if (!model || !topic || (!payload && len))
        return NU_ERR_INVALID_ARG;
    int rc = NU_OK;
    if (strncmp(topic, "nusec/v1/jobs/", 14) == 0) {
        pthread_mutex_lock(&model->lock);
        rc = dash__feed_job(model, payload, len, now_ms);
    } else if (strncmp(topic, "nusec/v1/prog/", 14) == 0) {
        struct station_status s;
        rc = station_status_decode(topic, payload, len, &s, NULL);
        pthread_mutex_lock(&model->lock);
        if (rc == NU_OK)
            dash__feed_status(model, &s, now_ms);
    } else if (strncmp(topic, "nusec/v1/events/", 16) == 0) {
        struct station_event *ev = malloc(sizeof(*ev)); /* ~2 KiB: not on the MQTT thread's stack */
        if (!ev)
            return NU_ERR_NOMEM;
        rc = station_event_decode(topic, payload, len, ev, NULL);
        pthread_mutex_lock(&model->lock);
        if (rc == NU_OK)
            dash__feed_event(model, ev, now_ms);
        free(ev);
    } else {
        return NU_OK;
    }
    if (rc == NU_OK)
        model->version++;
    pthread_mutex_unlock(&model->lock);
    return rc;
}

uint64_t dash_model_version(struct dash_model *model)
{
    pthread_mutex_lock(&model->lock);
    uint64_t v = model->version;
    pthread_mutex_unlock(&model->lock);
    return v;
}

/* ---- the snapshot ----------------------------------------------------------------------- */

static cJSON *dash__jobs_json(const struct dash_model *m, uint64_t now_ms)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < m->n_jobs; i++) {
        const struct dash__job *j = &m->jobs[i];
        cJSON *o = cJSON_CreateObject(), *allocs = cJSON_CreateArray();
        if (!o || !allocs) {
            cJSON_Delete(o);
            cJSON_Delete(allocs);
            cJSON_Delete(arr);
            return NULL;
        }
        uint32_t remaining = j->quota > j->issued ? j->quota - j->issued : 0;
        double rate = dash__job_rate(j, now_ms);
        cJSON_AddStringToObject(o, "job", j->id);
        cJSON_AddStringToObject(o, "status", j->status);
        cJSON_AddNumberToObject(o, "quota", j->quota);
        cJSON_AddNumberToObject(o, "issued", j->issued);
        cJSON_AddNumberToObject(o, "refused", j->refused);
        cJSON_AddNumberToObject(o, "remaining", remaining);
        cJSON_AddNumberToObject(o, "rate_per_min", (double)(long)(rate * 10.0) / 10.0);
        if (rate > 0 && strcmp(j->status, "active") == 0)
            cJSON_AddNumberToObject(o, "eta_s", (double)(long)(remaining * 60.0 / rate));
        else
            cJSON_AddNullToObject(o, "eta_s");
        cJSON_AddStringToObject(o, "firmware", j->firmware);
        cJSON_AddNumberToObject(o, "expires_at_ms", (double)j->expires_at_ms);
        for (size_t k = 0; k < j->n_alloc; k++) {
            cJSON *a = cJSON_CreateObject();
            if (!a)
                continue;
            cJSON_AddStringToObject(a, "programmer", j->alloc_id[k]);
            cJSON_AddNumberToObject(a, "limit", j->alloc_limit[k]);
            cJSON_AddNumberToObject(a, "issued", j->alloc_issued[k]);
            cJSON_AddItemToArray(allocs, a);
        }
        cJSON_AddItemToObject(o, "allocations", allocs);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static cJSON *dash__progs_json(const struct dash_model *m)
{
    cJSON *arr = cJSON_CreateArray();
    for (size_t i = 0; arr && i < m->n_progs; i++) {
        const struct dash__prog *p = &m->progs[i];
        cJSON *o = cJSON_CreateObject();
        if (!o)
            continue;
        cJSON_AddStringToObject(o, "programmer", p->id);
        cJSON_AddStringToObject(o, "state", p->state);
        /* Offline only when the programmer said so or its last will did. */
        cJSON_AddBoolToObject(o, "online",
                              strcmp(p->state, "offline") != 0 && strcmp(p->state, "unknown") != 0);
        cJSON_AddStringToObject(o, "job", p->job);
        cJSON_AddNumberToObject(o, "counter", p->counter);
        cJSON_AddNumberToObject(o, "limit", p->limit);
        cJSON_AddNumberToObject(o, "sockets", p->sockets);
        cJSON_AddNumberToObject(o, "done", p->done);
        cJSON_AddNumberToObject(o, "failed", p->failed);
        cJSON_AddNumberToObject(o, "last_seen_ms", (double)p->last_seen_ms);
        cJSON_AddItemToArray(arr, o);
    }
    return arr;
}

static cJSON *dash__rest_json(const struct dash_model *m, cJSON *root, uint64_t now_ms)
{
    cJSON *fails = cJSON_AddArrayToObject(root, "failures");
    for (size_t i = 0; fails && i < m->n_reasons; i++) {
        cJSON *o = cJSON_CreateObject();
        if (!o)
            continue;
        cJSON_AddStringToObject(o, "job", m->reasons[i].job);
        cJSON_AddStringToObject(o, "reason", m->reasons[i].reason);
        cJSON_AddNumberToObject(o, "count", (double)m->reasons[i].count);
        cJSON_AddItemToArray(fails, o);
    }
    cJSON *minutes = cJSON_AddArrayToObject(root, "per_minute");
    uint64_t current = now_ms / 60000u;
    for (uint64_t k = 0; minutes && k < DASH_MODEL_MINUTES; k++) {
        uint64_t minute = current - (DASH_MODEL_MINUTES - 1) + k;
        size_t b = (size_t)(minute % DASH_MODEL_MINUTES);
        cJSON_AddItemToArray(
            minutes, cJSON_CreateNumber(m->minute_tag[b] == minute ? m->minute_count[b] : 0));
    }
    cJSON *recent = cJSON_AddArrayToObject(root, "recent");
    for (size_t k = 0; recent && k < m->n_recent; k++) {
        size_t at = (m->next_recent + DASH_MODEL_RECENT - 1 - k) % DASH_MODEL_RECENT;
        cJSON_AddItemToArray(recent, cJSON_CreateString(m->recent[at]));
    }
    return fails && minutes && recent ? root : NULL;
}

int dash_model_json(struct dash_model *model, uint64_t now_ms, char **out_json)
{
    if (!model || !out_json)
        return NU_ERR_INVALID_ARG;
    *out_json = NULL;
    cJSON *root = cJSON_CreateObject();
    if (!root)
        return NU_ERR_NOMEM;
    pthread_mutex_lock(&model->lock);
    cJSON_AddNumberToObject(root, "now_ms", (double)now_ms);
    cJSON *jobs = dash__jobs_json(model, now_ms), *progs = dash__progs_json(model);
    if (jobs)
        cJSON_AddItemToObject(root, "jobs", jobs);
    if (progs)
        cJSON_AddItemToObject(root, "programmers", progs);
    int ok = jobs && progs && dash__rest_json(model, root, now_ms);
    pthread_mutex_unlock(&model->lock);
    if (ok)
        *out_json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    return *out_json ? NU_OK : NU_ERR_NOMEM;
}
