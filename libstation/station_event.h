/*
 * station_event — what the station and `nusec monitor` read from the bus,
 * flattened: events (nusec/v1/events/{role}/{id}/{kind}, an Event body) and
 * programmer statuses (nusec/v1/prog/{id}/status, a ProgrammerStatus body),
 * plus their one-line text and JSON renderings.
 *
 * Payloads are untrusted: decoded with nu_envelope_unpack() (bounded,
 * validated), and the envelope's sender must be the identity in the topic
 * (which the broker guarantees is the publisher's certificate CN), so a
 * publisher cannot speak for someone else inside the payload.
 */
#ifndef STATION_EVENT_H
#define STATION_EVENT_H

#include "nu_envelope.h"

#include <stddef.h>
#include <stdint.h>

#define STATION_TOPIC_MAX 256
#define STATION_UID_HEX_MAX (2 * NU_ENVELOPE_UID_MAX + 1)

/* One event, flattened. Strings are NUL-terminated ("" when absent). */
struct station_event {
    char topic[STATION_TOPIC_MAX];
    char role[NU_ENVELOPE_ID_MAX + 1];
    char sender[NU_ENVELOPE_ID_MAX + 1];
    char kind[NU_ENVELOPE_ID_MAX + 1];
    uint64_t seq;
    uint64_t sent_at_ms;
    char job_id[NU_ENVELOPE_ID_MAX + 1];
    int has_device; /* a DeviceReport was attached: the device fields are set */
    char device_uid[STATION_UID_HEX_MAX];
    uint32_t socket;
    const char *outcome; /* static: provisioned, failed, unspecified; NULL without device */
    char serial[NU_ENVELOPE_ID_MAX + 1];
    int error; /* NU_ERR_* / ErrorCode of the report or event; 0 = none */
    char detail[NU_ENVELOPE_TEXT_MAX + 1];
    int has_programmer;     /* a ProgrammerStatus was attached */
    const char *prog_state; /* static state name */
    uint32_t prog_counter, prog_limit;
    int has_job;            /* a JobState was attached */
    const char *job_status; /* static: active, paused, closed, exhausted, expired, unspecified */
    uint32_t job_quota, job_issued, job_refused;
};

/* A programmer's status, flattened. */
struct station_status {
    char programmer_id[NU_ENVELOPE_ID_MAX + 1];
    int state; /* Nusec__V1__ProgrammerState value */
    char job_id[NU_ENVELOPE_ID_MAX + 1];
    uint32_t limit, counter;
    uint32_t sockets, done, failed; /* socket count, sums over the sockets */
    char firmware_version[NU_ENVELOPE_ID_MAX + 1];
    uint64_t seq, sent_at_ms;
    uint64_t cloud_lost_ms; /* cloud unreachable since (wall ms), 0: reachable */
};

/*
 * Split an event topic nusec/v1/events/{role}/{id}/{kind}; each part must be
 * an identifier. Any out may be NULL. Errors: INVALID_ARG (not such a topic).
 */
int station_event_topic_parse(const char *topic, char role[NU_ENVELOPE_ID_MAX + 1],
                              char id[NU_ENVELOPE_ID_MAX + 1], char kind[NU_ENVELOPE_ID_MAX + 1]);

/*
 * Decode an event received on `topic`.
 * out_detail (may be NULL): on failure, a static reason for logs.
 * Errors: INVALID_ARG (topic not an event topic, body not an Event, sender
 * or kind not those of the topic), and nu_envelope_unpack()'s (DECODE,
 * TOO_LARGE, NOT_SUPPORTED).
 */
int station_event_decode(const char *topic, const uint8_t *payload, size_t len,
                         struct station_event *out, const char **out_detail);

/*
 * Decode a programmer status received on nusec/v1/prog/{id}/status.
 * Errors: as station_event_decode (the body must be a ProgrammerStatus whose
 * programmer_id, if set, and sender are the topic's id).
 */
int station_status_decode(const char *topic, const uint8_t *payload, size_t len,
                          struct station_status *out, const char **out_detail);

/* "offline", "idle", "producing", "error", "unknown" (static). */
const char *station_prog_state_name(int state);

/* A Nusec__V1__JobStatus as "active", "paused", "closed", "exhausted",
 * "expired" or "unspecified" (static). */
const char *station_job_status_name(int status);

/*
 * `in` as a JSON string literal, quotes included, into out[cap]. Quote,
 * backslash and control characters are escaped; invalid UTF-8 bytes become
 * \ufffd, so the output is always valid JSON whatever the input.
 * Errors: INVALID_ARG, TOO_LARGE (out too small; out is then "").
 */
int station_json_escape(const char *in, char *out, size_t cap);

/*
 * One JSON object (no newline) for `ev` into out[cap], with the fields
 * topic, kind, role, sender, seq, sent_at_ms, job, and when present
 * device_uid, socket, outcome, serial, error (name), detail, state,
 * counter, limit, job_status, quota, issued, refused.
 * Errors: INVALID_ARG, TOO_LARGE.
 */
int station_event_json(const struct station_event *ev, char *out, size_t cap);

/*
 * One readable line (no newline), e.g.
 *   2026-11-24T17:25:07.930Z programmer/prog-1 device.provisioned job=J1
 *   uid=0a1b... socket=2 serial=5f3c... seq=1764...
 * Errors: INVALID_ARG, TOO_LARGE.
 */
int station_event_text(const struct station_event *ev, char *out, size_t cap);

/* ISO-8601 UTC with milliseconds into out[cap] (>= 25). */
void station_time_iso(uint64_t ms, char *out, size_t cap);

#endif
