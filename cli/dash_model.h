/*
 * dash_model — what the live web view of the line shows, built from the bus
 * as a monitor sees it: retained job states (nusec/v1/jobs/+), programmer
 * statuses (nusec/v1/prog/+/status) and events (nusec/v1/events/#).
 *
 * The model keeps, per job, quota and counts and a rate; per programmer, its
 * state, progress and when it was last seen; failures by reason; devices per
 * minute over the last hour; the most recent events. dash_model_json() turns
 * it into one JSON snapshot for the page.
 *
 * Inputs are untrusted bus payloads: every decoder is bounded (station_event
 * and nu_envelope), strings reach the JSON through cJSON's escaping, and the
 * number of jobs, programmers and reasons kept is capped (the oldest entry is
 * dropped), so a flood of invented names cannot grow it without bound.
 *
 * Thread safety: every function may be called from any thread (one lock).
 */
#ifndef DASH_MODEL_H
#define DASH_MODEL_H

#include "station_event.h"

#include <stddef.h>
#include <stdint.h>

#define DASH_MODEL_JOBS_MAX 64
#define DASH_MODEL_PROGRAMMERS_MAX 256
#define DASH_MODEL_REASONS_MAX 128
#define DASH_MODEL_RECENT 40
#define DASH_MODEL_MINUTES 60

struct dash_model;

/* A new empty model. Errors: NOMEM. Free with dash_model_destroy. */
int dash_model_create(struct dash_model **out_model);
void dash_model_destroy(struct dash_model *model);

/*
 * Feed one message received on `topic` at now_ms (Unix ms). Topics other than
 * the three above are ignored. Errors: the decoders' (INVALID_ARG, DECODE,
 * TOO_LARGE, NOT_SUPPORTED); the model is unchanged on error.
 */
int dash_model_feed(struct dash_model *model, const char *topic, const uint8_t *payload, size_t len,
                    uint64_t now_ms);

/* The last change, as a counter (changes when anything shown changed). */
uint64_t dash_model_version(struct dash_model *model);

/*
 * The snapshot as one JSON object into *out_json (caller frees with free()):
 *   {"now_ms", "jobs":[{"job","status","quota","issued","refused","remaining",
 *     "rate_per_min","eta_s"|null,"firmware","expires_at_ms",
 *     "allocations":[{"programmer","limit","issued"}]}],
 *    "programmers":[{"programmer","state","online","job","counter","limit",
 *     "sockets","done","failed","last_seen_ms"}],
 *    "failures":[{"job","reason","count"}],
 *    "per_minute":[60 counts, oldest first, the current minute last],
 *    "recent":[text lines, newest first]}
 * Errors: NOMEM.
 */
int dash_model_json(struct dash_model *model, uint64_t now_ms, char **out_json);

#endif
