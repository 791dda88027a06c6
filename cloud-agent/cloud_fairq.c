/* cloud_fairq: per-sender FIFOs served round robin (see cloud_fairq.h). */
#include "cloud_fairq.h"

#include "nu_err.h"
#include "nu_util.h"

#include <stdlib.h>
#include <string.h>

/* One sender with work queued (records exist only while depth > 0). */
struct cloud__fsender {
    char id[CLOUD_FAIRQ_SENDER_MAX + 1];
    struct cloud_fairq_link *head, *tail;
    size_t depth;
};

struct cloud_fairq {
    size_t sender_max, total_max, depth;
    /* Active senders in service order; `cursor` is the next one served. A
     * linear search finds a sender: there are few at once (the flood case
     * is one sender against a handful), and at most total_max. */
    struct cloud__fsender *senders;
    size_t n, cap, cursor;
};

int cloud_fairq_new(size_t sender_max, size_t total_max, struct cloud_fairq **out)
{
    if (!out || sender_max == 0 || total_max == 0)
        return NU_ERR_INVALID_ARG;
    struct cloud_fairq *q = calloc(1, sizeof(*q));
    if (!q)
        return NU_ERR_NOMEM;
    q->sender_max = sender_max;
    q->total_max = total_max;
    *out = q;
    return NU_OK;
}

void cloud_fairq_free(struct cloud_fairq *q)
{
    if (!q)
        return;
    free(q->senders);
    free(q);
}

static struct cloud__fsender *cloud__fairq_find(const struct cloud_fairq *q, const char *id)
{
    for (size_t i = 0; i < q->n; i++) {
        if (strcmp(q->senders[i].id, id) == 0)
            return &q->senders[i];
    }
    return NULL;
}

int cloud_fairq_push(struct cloud_fairq *q, const char *sender, struct cloud_fairq_link *link)
{
    if (!q || !link || !sender || !sender[0] || strlen(sender) > CLOUD_FAIRQ_SENDER_MAX)
        return NU_ERR_INVALID_ARG;
    if (q->depth >= q->total_max)
        return NU_ERR_BUSY;
    struct cloud__fsender *s = cloud__fairq_find(q, sender);
    if (s && s->depth >= q->sender_max)
        return NU_ERR_BUSY;
    if (!s) {
        struct cloud__fsender *grown = nu_grow(q->senders, &q->cap, q->n, sizeof(*grown));
        if (!grown)
            return NU_ERR_NOMEM;
        q->senders = grown;
        /* A new sender joins at the end of the round: it is served after
         * those already waiting, never ahead of them. */
        s = &q->senders[q->n++];
        memset(s, 0, sizeof(*s));
        strcpy(s->id, sender);
    }
    link->next = NULL;
    if (s->tail)
        s->tail->next = link;
    else
        s->head = link;
    s->tail = link;
    s->depth++;
    q->depth++;
    return NU_OK;
}

/* Drop sender i (now empty), keeping the others' order and the cursor's place. */
static void cloud__fairq_remove(struct cloud_fairq *q, size_t i)
{
    memmove(&q->senders[i], &q->senders[i + 1], (q->n - i - 1) * sizeof(q->senders[0]));
    q->n--;
    if (q->cursor > i)
        q->cursor--;
    if (q->cursor >= q->n)
        q->cursor = 0;
}

struct cloud_fairq_link *cloud_fairq_pop(struct cloud_fairq *q,
                                         int (*match)(const struct cloud_fairq_link *, void *),
                                         void *ctx, char *out_sender)
{
    if (!q)
        return NULL;
    for (size_t k = 0; k < q->n; k++) {
        size_t i = (q->cursor + k) % q->n;
        struct cloud__fsender *s = &q->senders[i];
        if (match && !match(s->head, ctx))
            continue;
        struct cloud_fairq_link *l = s->head;
        s->head = l->next;
        if (!s->head)
            s->tail = NULL;
        l->next = NULL;
        s->depth--;
        q->depth--;
        if (out_sender)
            strcpy(out_sender, s->id);
        if (s->depth == 0) {
            q->cursor = i; /* the following sender slides into slot i */
            cloud__fairq_remove(q, i);
        } else {
            q->cursor = (i + 1) % q->n;
        }
        return l;
    }
    return NULL;
}

size_t cloud_fairq_depth(const struct cloud_fairq *q)
{
    return q ? q->depth : 0;
}

size_t cloud_fairq_sender_depth(const struct cloud_fairq *q, const char *sender)
{
    const struct cloud__fsender *s = q && sender ? cloud__fairq_find(q, sender) : NULL;
    return s ? s->depth : 0;
}

size_t cloud_fairq_senders(const struct cloud_fairq *q)
{
    return q ? q->n : 0;
}
