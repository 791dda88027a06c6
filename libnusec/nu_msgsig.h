/*
 * nu_msgsig — end-to-end signatures on bus messages.
 *
 * A hostile site broker (the CM's) can inject, replay or rewrite anything it
 * carries, so the sender's broker TLS identity proves nothing to the cloud.
 * Every envelope a programmer, station or OEM tool publishes is therefore
 * signed by the sender's own key (a programmer's: its KeyStore identity key,
 * which never leaves the KeyStore) and the cloud verifies it against the
 * sender's enrolled certificate before any handler runs.
 *
 * What is signed: ECDSA-P256 over
 *     SHA-256("nusec/v1 envelope" || 0x00 || topic || 0x00 || payload)
 * so a signature is bound to the exact envelope bytes and to the topic it was
 * published on (a request signed for prog-1's cert.request cannot be replayed
 * as another op or in another programmer's name), and cannot be confused with
 * any other NuSEC signature (attestation, packages: other prefixes).
 *
 * Carrier: the MQTT 5 user property NU_MSGSIG_PROP whose value is the DER
 * signature in lowercase hex. The payload stays a plain Envelope (monitors and
 * protoc read it as before); Mosquitto bridges carry user properties both ways.
 *
 * Freshness: the envelope header's sent_at_ms must lie within the window of
 * the verifier's clock, and a message id seen inside the window is a replay
 * (nu_msgsig_replay).
 */
#ifndef NU_MSGSIG_H
#define NU_MSGSIG_H

#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

#define NU_MSGSIG_PROP "nusec-sig"
#define NU_MSGSIG_DOMAIN "nusec/v1 envelope"
/* Hex of a DER signature plus the NUL. */
#define NU_MSGSIG_VALUE_MAX (2 * NU_P256_SIG_MAX + 1)
#define NU_MSGSIG_ID_LEN 16 /* envelope header message_id */

/*
 * The digest a message signature covers (see above) into out[32].
 * Errors: INVALID_ARG (NULL topic, NULL payload with len > 0), CRYPTO.
 */
int nu_msgsig_digest(const char *topic, const uint8_t *payload, size_t len, uint8_t out[32]);

/*
 * Sign a message with `signer` (its key never leaves it) and write the
 * property value (hex DER, NUL-terminated) into out[NU_MSGSIG_VALUE_MAX].
 * Errors: INVALID_ARG, the signer's errors.
 */
int nu_msgsig_sign(const struct nu_signer *signer, const char *topic, const uint8_t *payload,
                   size_t len, char out[NU_MSGSIG_VALUE_MAX]);

/*
 * Verify an (untrusted) property value for a message against the sender's
 * public key. value NULL = unsigned.
 * Returns NU_OK; BAD_SIGNATURE when missing, malformed, by another key or for
 * another topic or payload; INVALID_ARG for NULL topic/pub; CRYPTO.
 */
int nu_msgsig_verify(const uint8_t pub[NU_P256_PUB_LEN], const char *topic, const uint8_t *payload,
                     size_t len, const char *value);

/* ---- freshness: time window + message-id replay cache ------------------- */

struct nu_msgsig_replay;

/*
 * A replay cache for messages whose sent_at_ms must lie within window_ms of
 * the verifier's clock (either way: a message from the future is as
 * suspicious as an old one). It remembers at most `cap` message ids; each is
 * forgotten once it is older than the window (it would be refused as stale
 * then anyway). Thread-safe. Free with nu_msgsig_replay_free.
 * Errors: INVALID_ARG (window_ms 0, cap 0), NOMEM.
 */
int nu_msgsig_replay_new(uint64_t window_ms, size_t cap, struct nu_msgsig_replay **out);
void nu_msgsig_replay_free(struct nu_msgsig_replay *r);

/*
 * Admit a message: NU_OK (and the id is remembered) when sent_at_ms is
 * within the window of now_ms and the id was not seen inside the window.
 * Errors: INVALID_ARG (NULL, id_len != NU_MSGSIG_ID_LEN), REPLAY (id seen
 * inside the window, or sent_at_ms outside it: "replayed or stale"), BUSY (the cache holds `cap`
 * live ids: refused rather than forgetting one that could then be replayed).
 */
int nu_msgsig_replay_check(struct nu_msgsig_replay *r, const uint8_t *id, size_t id_len,
                           uint64_t sent_at_ms, uint64_t now_ms);

#endif
