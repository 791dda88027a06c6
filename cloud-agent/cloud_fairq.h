/*
 * cloud_fairq — the cloud's work queue, fair between senders.
 *
 * Why: with one FIFO, everything a hostile (but authenticated) identity
 * sends sits in front of a well-behaved programmer's cert.request, which
 * then waits for the whole flood to be served (issue 9: p99 1.7-2.1 s under
 * a flood). Here every sender (the identity a topic speaks for) has its own
 * FIFO with a bounded depth, and senders are served round robin: a request
 * waits for at most one item of each other sender that has work queued, not
 * for everything a flooder managed to send.
 *
 * The queue is intrusive: the caller embeds a struct cloud_fairq_link in its
 * item and keeps ownership of the item (the queue never allocates or frees
 * items; it allocates only its per-sender records). Not thread safe: the
 * caller holds its own lock around every call.
 */
#ifndef CLOUD_FAIRQ_H
#define CLOUD_FAIRQ_H

#include <stddef.h>

/* Longest sender id kept (longer ids are refused with INVALID_ARG). */
#define CLOUD_FAIRQ_SENDER_MAX 64

/* Embedded in the caller's item; the queue uses it while the item is queued. */
struct cloud_fairq_link {
    struct cloud_fairq_link *next;
};

struct cloud_fairq;

/*
 * New empty queue. sender_max: most items one sender may have queued
 * (>= 1); total_max: most items queued in all (>= 1). *out freed with
 * cloud_fairq_free. Returns NU_OK, NU_ERR_INVALID_ARG, NU_ERR_NOMEM.
 */
int cloud_fairq_new(size_t sender_max, size_t total_max, struct cloud_fairq **out);

/* Free the queue's own records; items still queued stay the caller's (take them first). */
void cloud_fairq_free(struct cloud_fairq *q);

/*
 * Queue `link` (not queued anywhere) at the tail of `sender`'s FIFO.
 * Returns NU_OK; NU_ERR_BUSY when sender already has sender_max items queued
 * or the queue holds total_max (nothing changed: the caller answers BUSY);
 * NU_ERR_INVALID_ARG for a NULL/empty/too long sender; NU_ERR_NOMEM.
 */
int cloud_fairq_push(struct cloud_fairq *q, const char *sender, struct cloud_fairq_link *link);

/*
 * Take the next item in round-robin order: the head of the first sender,
 * from the cursor on, whose head `match(head, ctx)` accepts (match NULL:
 * any); the cursor then moves past that sender, so the next call starts at
 * the following one. A sender whose head is not accepted keeps its place.
 * Returns the item's link, or NULL when nothing (acceptable) is queued.
 * If out_sender is not NULL, the sender's id is copied there
 * (CLOUD_FAIRQ_SENDER_MAX + 1 bytes).
 */
struct cloud_fairq_link *cloud_fairq_pop(struct cloud_fairq *q,
                                         int (*match)(const struct cloud_fairq_link *, void *),
                                         void *ctx, char *out_sender);

/* Items queued in all. */
size_t cloud_fairq_depth(const struct cloud_fairq *q);

/* Items `sender` has queued (0 if none). */
size_t cloud_fairq_sender_depth(const struct cloud_fairq *q, const char *sender);

/* Senders with at least one item queued. */
size_t cloud_fairq_senders(const struct cloud_fairq *q);

#endif
