/*
 * pp_port — the POSIX port of the programmer core: the HAL tables that are
 * plain library calls (crypto through libnusec, clock, RNG, log), the target
 * link over the target simulator, and the MQTT transport. The KeyStore and
 * flash have their own headers (pp_keystore.h, pp_flash.h).
 */
#ifndef PP_PORT_H
#define PP_PORT_H

#include "hal.h"

#include <stdint.h>

struct nu_mqtt;
struct tsim_feeder;
struct tsim_opts;

/* Crypto over libnusec (nu_crypto, nu_seal, nu_x509, nu_mcuboot); ctx unused. */
extern const struct pg_crypto_ops pp_crypto_ops;
/* pp_crypto_ops.csr_check on the calling thread. The op itself checks the
 * signature on a short-lived thread, so wolfSSL builds no lookup table for a
 * device key that is never seen again; a caller whose chip key repeats (the
 * fuzzers' fixed chip) wants the table and not a thread per chip. */
int pp_crypto_csr_check_here(void *ctx, const uint8_t *der, size_t len, const char *cn,
                             uint8_t out_pub[65]);
/* nu_time_ms / nu_mono_ms / nanosleep; ctx unused. */
extern const struct pg_clock_ops pp_clock_ops;
/* nu_random; ctx unused. */
extern const struct pg_rng_ops pp_rng_ops;
/* nu_log; ctx unused. */
extern const struct pg_log_ops pp_log_ops;

/* ---- target link over tsim ---------------------------------------------------- */

struct pp_target;

/*
 * Target link for n_sockets sockets fed from `feeder` (borrowed; the tray
 * shared by all sockets). Errors: INVALID_ARG, NOMEM.
 */
int pp_target_create(struct tsim_feeder *feeder, unsigned n_sockets, struct pp_target **out_t);
void pp_target_destroy(struct pp_target *t);
extern const struct pg_target_ops pp_target_ops;

/*
 * Remember which chip is in which socket in state_dir/socket.N (the UID in
 * hex, written at insert, removed at remove), and put back the chips a crash
 * or a stop left there: like a real socket, a chip stays in it until it is
 * taken out, so the next run finishes it. targets_dir is the simulator's.
 * Errors: TOO_LARGE (paths), IO.
 */
int pp_target_restore(struct pp_target *t, const char *state_dir, const char *targets_dir);

/* Put chip `uid` of targets_dir into socket `sock` (replacing nothing: STATE
 * if the socket holds a chip). Errors: NOT_FOUND, DECODE, IO, STATE. */
int pp_target_load(struct pp_target *t, unsigned sock, const char *targets_dir,
                   const uint8_t uid[16]);

/* ---- transport over nu_mqtt ---------------------------------------------------- */

struct pp_transport;

/* Transport on a session (borrowed; created and connected by the caller). */
int pp_transport_create(struct nu_mqtt *m, struct pp_transport **out_t);
void pp_transport_destroy(struct pp_transport *t);
extern const struct pg_transport_ops pp_transport_ops;

#endif
