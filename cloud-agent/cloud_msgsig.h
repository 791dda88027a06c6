/*
 * cloud_msgsig — the cloud's end-to-end check of every request and event
 * (libnusec nu_msgsig.h), run by the frame before any handler.
 *
 * The sender is the topic's identity. Its key comes from what the OEM
 * enrolled, never from the message or the broker: an OEM or station identity
 * (cloud.conf oem_ids / station_ids) from its certificate DIR/pki/clients/ID.crt
 * on the OEM's disk; any other identity is a programmer, whose identity
 * certificate is the one in the ledger (state enrolled). The signature must
 * cover this topic and payload; the header's sent_at_ms must be inside
 * sig_window_s and its message_id unseen inside it.
 */
#ifndef CLOUD_MSGSIG_H
#define CLOUD_MSGSIG_H

#include "cloud.h"

#include <stddef.h>
#include <stdint.h>

struct nu_msgsig_replay;

/* Create the replay window of cloud->cfg (sig_window_s, sig_replay_max). */
int cloud_msgsig_start(struct cloud *cloud, struct nu_msgsig_replay **out);

/*
 * Check one message. env is the decoded envelope (its header is used).
 * fresh = 0 skips the window and replay check (the signature still must
 * verify): for device reports only, which the ledger records once by their
 * idempotency key, and which a programmer re-sends verbatim from its flash
 * journal after a crash or an outage of any length, so a window would lose
 * them while a replay can change nothing.
 * Returns NU_OK; BAD_SIGNATURE (unsigned, malformed, another key, another
 * topic or bytes); REVOKED (sender revoked); NOT_AUTHORIZED (sender not
 * enrolled); REPLAY (stale or replayed);
 * BUSY (replay cache full). detail[cap] says why.
 */
int cloud_msgsig_check(struct cloud *cloud, struct nu_msgsig_replay *replay,
                       struct cloud_ledger *ledger, const char *sender, const char *topic,
                       const uint8_t *payload, size_t len, const char *sig,
                       const Nusec__V1__Envelope *env, int fresh, char *detail, size_t cap);

#endif
