/*
 * pins — each programmer's current identity certificate, for the broker.
 *
 * The cloud rewrites DIR/broker/serials (next to the revocation list) at
 * every enrollment and at start: one line "programmer_id serial_hex" per
 * enrolled programmer, the serial of the identity certificate it holds now,
 * and one "site serial_hex" per signed site, its bridge's certificate (so a
 * site's station certificate, same CN, cannot connect to the cloud broker).
 * When a programmer re-enrolls, its previous certificate (still within its
 * validity, still chaining to the Fleet CA) must stop working at once: the
 * plugin refuses a programmer whose certificate serial differs from its pin
 * and disconnects the sessions of an identity whose pin changed.
 *
 * Pure policy (no Mosquitto), unit-tested in tests/unit/broker.
 */
#ifndef NUSEC_PINS_H
#define NUSEC_PINS_H

#include <stdbool.h>
#include <stddef.h>

#define NUSEC_PINS_SERIAL_MAX 64 /* hex digits */

struct nusec_pins;

/*
 * Parse the list: "id serial" per line (spaces or tabs between), '#'
 * comments and blank lines ignored; id an identity, serial 1..64 hex digits;
 * an id listed twice or any other line makes the whole file invalid.
 * On DECODE *out_line is the 1-based bad line. Errors: DECODE, NOMEM,
 * INVALID_ARG, TOO_LARGE (a line over 1 KiB). Free with nusec_pins_free().
 */
int nusec_pins_parse(const char *text, size_t len, struct nusec_pins **out, size_t *out_line);

void nusec_pins_free(struct nusec_pins *pins);

size_t nusec_pins_count(const struct nusec_pins *pins);

/*
 * May a certificate with serial `serial_hex` (any case, leading zero digits
 * ignored) act as `id`? true when `id` has no pin or the serials are equal.
 */
bool nusec_pins_allow(const struct nusec_pins *pins, const char *id, const char *serial_hex);

/* Whether `id` has a pin. */
bool nusec_pins_has(const struct nusec_pins *pins, const char *id);

/* Identities whose pin in `now` differs from (or is new against a different
 * one in) `before`: fn(ctx, id) for each. NULL lists are empty. */
void nusec_pins_changed(const struct nusec_pins *before, const struct nusec_pins *now,
                        void (*fn)(void *ctx, const char *id), void *ctx);

#endif
