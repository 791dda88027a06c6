/*
 * pg_link.c — whether the cloud answers (issue 15, part 1).
 *
 * Every try of a cloud request reports its outcome here (pg__link_note):
 * a transport failure (timeout, no connection, no subscriber) marks the
 * cloud unreachable since now, any answer marks it reachable. While it is
 * unreachable a socket does not start a new chip that needs the cloud
 * (pg__link_gate): the chips already in other sockets will ask (every chip
 * ends with a report) and their retries are the probes; the others wait,
 * empty. Offline certificates waiting for the upload are a probe too: the
 * waiting sockets send them (pg__lease_worker, paced while unreachable).
 * Only when no other socket holds a chip and nothing waits for the upload
 * (production stopped, or the mark is from an idle try) does the gate let
 * one through, to probe with a chip.
 */
#include "pg_int.h"

#include "nu_err.h"

#include <string.h>

/* Pause between two looks at the mark while gated. */
#define LINK__POLL_MS 200u

void pg__link_note(struct pg_core *c, int rc)
{
    if (pg__transient(rc)) {
        unsigned now = (unsigned)(pg_now_ms(c->hal) / 1000u);
        unsigned zero = 0;
        if (now == 0)
            now = 1;
        if (atomic_compare_exchange_strong(&c->cloud_lost_s, &zero, now))
            pg__log(c, PG_LOG_WARN, "cloud unreachable (%s): no new chip until it answers",
                    nu_err_name(rc));
        return;
    }
    unsigned since = atomic_exchange(&c->cloud_lost_s, 0u);
    if (since)
        pg__log(c, PG_LOG_INFO, "cloud answers again after %u s",
                (unsigned)(pg_now_ms(c->hal) / 1000u) - since);
}

uint64_t pg__link_lost_ms(const struct pg_core *c)
{
    return (uint64_t)atomic_load(&c->cloud_lost_s) * 1000u;
}

/* 1 when another socket holds a chip: it asks the cloud or will (its report
 * at least), so it probes for us. Counting only the sockets already held
 * let a socket through while another was in its first try, and the line
 * started a chip after its lease was used up. */
static int link__probed(const struct pg_core *c, unsigned sock)
{
    for (unsigned i = 0; i < c->n_sockets; i++) {
        int phase = atomic_load(&c->sock[i].busy);
        if (i != sock && (phase == PG_SOCK_WAIT_CLOUD || phase == PG_SOCK_BUSY))
            return 1;
    }
    return 0;
}

int pg__link_gate(struct pg_core *c, unsigned sock)
{
    int paused = 0, rc = NU_OK;
    /* With a usable offline lease the chip does not need the cloud. */
    while (atomic_load(&c->cloud_lost_s) && !pg__lease_usable(c) &&
           (link__probed(c, sock) || pg__lease_uploads(c))) {
        if (!paused) {
            paused = 1;
            atomic_store(&c->sock[sock].busy, PG_SOCK_PAUSED);
            pg__log(c, PG_LOG_INFO, "socket %u: paused, the cloud is unreachable", sock);
        }
        pg__lease_worker(c, sock, &c->work.sock[sock]); /* a probe when due */
        uint32_t delay = LINK__POLL_MS;
        if ((rc = pg__hold_wait(c, &delay)) != NU_OK)
            break;
    }
    if (paused) {
        atomic_store(&c->sock[sock].busy, PG_SOCK_IDLE);
        if (rc == NU_OK)
            pg__log(c, PG_LOG_INFO, "socket %u: resumes", sock);
    }
    return rc;
}

void pg_core_link_note(struct pg_core *c, int rc)
{
    pg__link_note(c, rc);
}
