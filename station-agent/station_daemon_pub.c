/* What the station daemon publishes: its events, signed into envelopes. */
#include "station_daemon.h"
#include "station_daemon_int.h"

#include "station_db.h"
#include "station_event.h"
#include "station_pkg.h"
#include "station_report.h"

#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_crypto.h"
#include "nu_log.h"
#include "nu_mqtt.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

/* ---- publishing -------------------------------------------------------------------------- */

int st__publish(struct station *st, const char *topic, ProtobufCMessage *body)
{
    struct nu_envelope_frame f;
    uint8_t *buf = NULL;
    size_t len = 0;
    const char *why = NULL;
    int rc = nu_envelope_frame_init(&f, st->sender, body);
    if (rc == NU_OK)
        rc = nu_envelope_pack(&f.env, &buf, &len, &why);
    if (rc == NU_OK)
        rc = nu_mqtt_publish(st->mqtt, topic, buf, len, 1, 0);
    else
        nu_error("cannot encode for %s: %s (%s)", topic, nu_err_name(rc), why ? why : "");
    free(buf);
    return rc;
}

void st__note(struct station *st, const char *kind, const char *job, int code, const char *detail,
              const struct st__prog *prog)
{
    if (st->n_notes == ST__NOTES_MAX) {
        nu_debug("event %s not published: too many at once", kind);
        return;
    }
    struct st__note *n = &st->notes[st->n_notes++];
    memset(n, 0, sizeof(*n));
    snprintf(n->kind, sizeof(n->kind), "%s", kind);
    snprintf(n->job, sizeof(n->job), "%s", job ? job : "");
    n->code = code;
    snprintf(n->detail, sizeof(n->detail), "%s", detail ? detail : "");
    nu_envelope_text_sanitize(n->detail);
    if (prog) {
        n->has_prog = 1;
        n->prog = *prog;
    }
}

static void st__event_fill(const struct st__note *n, Nusec__V1__Event *ev,
                           Nusec__V1__ProgrammerStatus *ps)
{
    ev->kind = (char *)n->kind;
    ev->job_id = (char *)n->job;
    ev->code = (Nusec__V1__ErrorCode)n->code;
    ev->detail = (char *)n->detail;
    if (n->has_prog) {
        ps->programmer_id = (char *)n->prog.id;
        ps->state = (Nusec__V1__ProgrammerState)n->prog.state;
        ps->job_id = (char *)n->prog.job_id;
        ps->limit = n->prog.limit;
        ps->counter = n->prog.counter;
        ev->data_case = NUSEC__V1__EVENT__DATA_PROGRAMMER;
        ev->programmer = ps;
    }
}

void st__notes_flush(struct station *st)
{
    char topic[STATION_TOPIC_MAX];
    if (st->n_notes && !nu_mqtt_is_connected(st->mqtt)) {
        /* A publish would wait for the broker (up to its timeout) and hold up the
         * journal; these events only inform monitors. */
        nu_warn("%zu station events not published: broker unreachable", st->n_notes);
        st->n_notes = 0;
        return;
    }
    for (size_t i = 0; i < st->n_notes; i++) {
        const struct st__note *n = &st->notes[i];
        Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
        Nusec__V1__ProgrammerStatus ps = NUSEC__V1__PROGRAMMER_STATUS__INIT;
        st__event_fill(n, &ev, &ps);
        int rc =
            nu_path_fmt(topic, sizeof(topic), "nusec/v1/events/station/%s/%s", st->name, n->kind);
        if (rc == NU_OK)
            rc = st__publish(st, topic, &ev.base);
        if (rc != NU_OK)
            nu_warn("event %s not published: %s", n->kind, nu_err_name(rc));
    }
    st->n_notes = 0;
}
