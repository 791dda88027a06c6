/*
 * nu_envelope_frame — the sending side of nu_envelope.h: a sender's identity
 * and sequence numbers, and the frame (envelope + header) every request and
 * reply is built in. Apart from nu_envelope.c, which decodes and validates,
 * because building a header needs neither the limits table nor the decoder.
 */
#include "nu_envelope.h"

#include "nu_err.h"
#include "nu_util.h"

#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- public: sender -------------------------------------------------------- */

struct nu_envelope_sender {
    char id[NU_ENVELOPE_ID_MAX + 1];
    _Atomic uint64_t next_sequence;
};

int nu_envelope_sender_create(const char *sender_id, uint64_t first_sequence,
                              struct nu_envelope_sender **out_sender)
{
    struct nu_envelope_sender *s = NULL;
    int rc;

    if (!out_sender)
        return NU_ERR_INVALID_ARG;
    *out_sender = NULL;
    rc = nu_envelope_id_check(sender_id);
    if (rc != NU_OK)
        return rc;
    s = calloc(1, sizeof(*s));
    if (!s)
        return NU_ERR_NOMEM;
    memcpy(s->id, sender_id, strlen(sender_id) + 1);
    if (first_sequence == NU_ENVELOPE_SEQ_FROM_CLOCK)
        first_sequence = nu_time_ms() * 1000u;
    atomic_init(&s->next_sequence, first_sequence);
    *out_sender = s;
    return NU_OK;
}

void nu_envelope_sender_destroy(struct nu_envelope_sender *sender)
{
    free(sender);
}

const char *nu_envelope_sender_id(const struct nu_envelope_sender *sender)
{
    return sender ? sender->id : NULL;
}

int nu_envelope_sender_fill_header(struct nu_envelope_sender *sender, Nusec__V1__Header *hdr,
                                   uint8_t message_id_storage[NU_ENVELOPE_MESSAGE_ID_LEN])
{
    int rc;

    if (!sender || !hdr || !message_id_storage)
        return NU_ERR_INVALID_ARG;
    nusec__v1__header__init(hdr);
    rc = nu_random(message_id_storage, NU_ENVELOPE_MESSAGE_ID_LEN);
    if (rc != NU_OK)
        return rc;
    hdr->message_id.data = message_id_storage;
    hdr->message_id.len = NU_ENVELOPE_MESSAGE_ID_LEN;
    hdr->sender_id = sender->id;
    hdr->sent_at_ms = nu_time_ms();
    hdr->sequence = atomic_fetch_add(&sender->next_sequence, 1);
    hdr->protocol = NU_ENVELOPE_PROTOCOL;
    return NU_OK;
}

/* ---- public: frames -------------------------------------------------------- */

int nu_envelope_frame_init(struct nu_envelope_frame *frame, struct nu_envelope_sender *sender,
                           ProtobufCMessage *body)
{
    int rc;

    if (!frame || !sender)
        return NU_ERR_INVALID_ARG;
    nusec__v1__envelope__init(&frame->env);
    rc = nu_envelope_sender_fill_header(sender, &frame->header, frame->message_id);
    if (rc != NU_OK)
        return rc;
    frame->env.header = &frame->header;
    if (body)
        rc = nu_envelope_set_body(&frame->env, body);
    return rc;
}

static int nu__set_key(ProtobufCBinaryData *dst, const uint8_t *data, size_t len)
{
    if (len > 0 && !data)
        return NU_ERR_INVALID_ARG;
    if (len > NU_ENVELOPE_KEY_MAX)
        return NU_ERR_TOO_LARGE;
    dst->data = len > 0 ? (uint8_t *)data : NULL;
    dst->len = len;
    return NU_OK;
}

int nu_envelope_frame_set_correlation(struct nu_envelope_frame *frame, const uint8_t *id,
                                      size_t len)
{
    if (!frame)
        return NU_ERR_INVALID_ARG;
    return nu__set_key(&frame->header.correlation_id, id, len);
}

int nu_envelope_frame_set_idempotency_key(struct nu_envelope_frame *frame, const uint8_t *key,
                                          size_t len)
{
    if (!frame)
        return NU_ERR_INVALID_ARG;
    return nu__set_key(&frame->header.idempotency_key, key, len);
}

int nu_envelope_frame_reply_to(struct nu_envelope_frame *frame, const Nusec__V1__Envelope *request)
{
    const Nusec__V1__Header *h;

    if (!frame || !request || !request->header)
        return NU_ERR_INVALID_ARG;
    h = request->header;
    if (h->correlation_id.len > 0)
        return nu__set_key(&frame->header.correlation_id, h->correlation_id.data,
                           h->correlation_id.len);
    return nu__set_key(&frame->header.correlation_id, h->message_id.data, h->message_id.len);
}
