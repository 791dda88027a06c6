/*
 * nu_config — "key = value" configuration files, in the spirit of mosquitto.conf.
 *
 * Format (one setting per line):
 *
 *     # comment: '#' as the first non-blank character of a line
 *     listener.port = 8883
 *     log.level       info           <- mosquitto style: blanks separate key and value
 *     job.subject = CN={uid}, O=Acme # not a comment: taken as part of the value
 *
 *   - Blank lines are ignored; CRLF line ends are accepted.
 *   - Key: 1..NU_CONFIG_KEY_MAX characters of [a-z0-9_.].
 *   - Separator: blanks around an '=' that directly follows the key (after
 *     optional blanks), or, mosquitto style, just blanks. "key==x" sets "=x".
 *   - Value: the rest of the line with blanks trimmed at both ends, taken
 *     literally (no quotes, no escapes, no trailing comments, because values
 *     such as subject templates and paths may contain '#' and '"'). It may
 *     contain spaces and tabs but no other control character. An empty
 *     value is an error: it is almost always a forgotten value.
 *   - Each key at most once: a duplicate is an error that names both lines.
 *   - Limits: NU_CONFIG_FILE_MAX bytes per file, NU_CONFIG_LINE_MAX bytes per
 *     line, NU_CONFIG_KEYS_MAX keys.
 *
 * No secrets, by design: configuration files are readable (0644), get pasted
 * into tickets and copied between machines. PINs, passwords and tokens live
 * in their own 0600 files, referenced by path (e.g. hsm.pin_file =
 * DIR/hsm/user.pin). The parser enforces it: a key whose last word (after the
 * last '.' or '_') is pin, password, passphrase, secret or token is refused
 * with a message pointing at the "_file" form.
 *
 * Every function that reports an error writes a one-line message
 * "NAME:LINE: text" (NAME is the path or the name given to
 * nu_config_parse_buffer) into err[errcap] when err is not NULL; messages
 * are cut to fit, never overflow.
 *
 * A struct nu_config is read-only after parsing; concurrent getters are safe.
 */
#ifndef NU_CONFIG_H
#define NU_CONFIG_H

#include <stddef.h>
#include <stdint.h>

#define NU_CONFIG_FILE_MAX (64u * 1024u)
#define NU_CONFIG_LINE_MAX 1024u /* bytes, without the line end */
#define NU_CONFIG_KEY_MAX 64u
#define NU_CONFIG_KEYS_MAX 512u

struct nu_config;

/*
 * Read and parse the file at `path`.
 *   out_cfg  set on success; free with nu_config_destroy().
 * Errors: INVALID_ARG, NOT_FOUND, PERMISSION, IO, TOO_LARGE (file larger than
 * NU_CONFIG_FILE_MAX), CONFIG (syntax: message names the line), NOMEM.
 */
int nu_config_load(const char *path, struct nu_config **out_cfg, char *err, size_t errcap);

/*
 * Parse `len` bytes of `buf` (need not be NUL-terminated; a NUL byte inside
 * is an error). `name` is used in messages (e.g. "cloud.conf"); copied.
 * Errors: INVALID_ARG, TOO_LARGE (len > NU_CONFIG_FILE_MAX), CONFIG, NOMEM.
 */
int nu_config_parse_buffer(const char *name, const char *buf, size_t len,
                           struct nu_config **out_cfg, char *err, size_t errcap);

/* Free a configuration; NULL is a no-op. Strings returned by getters die with it. */
void nu_config_destroy(struct nu_config *cfg);

/* The NAME used in messages (owned by cfg). */
const char *nu_config_name(const struct nu_config *cfg);

/* Number of settings, in file order; and the i-th one (any out may be NULL).
 * nu_config_entry returns NOT_FOUND when i is out of range. */
size_t nu_config_count(const struct nu_config *cfg);
int nu_config_entry(const struct nu_config *cfg, size_t i, const char **out_key,
                    const char **out_value, unsigned *out_line);

/* 1 if `key` is set, else 0. */
int nu_config_has(const struct nu_config *cfg, const char *key);

/* Line where `key` is set (for the caller's own messages); 0 if unset. */
unsigned nu_config_line(const struct nu_config *cfg, const char *key);

/* Value of `key`, or `def` if unset. Owned by cfg (or the caller, for def). */
const char *nu_config_get_str(const struct nu_config *cfg, const char *key, const char *def);

/*
 * Decimal integer in [min, max]; *out = def if unset (def is not range-checked).
 * Errors: CONFIG (not an integer, or out of range), INVALID_ARG.
 */
int nu_config_get_int(const struct nu_config *cfg, const char *key, int64_t def, int64_t min,
                      int64_t max, int64_t *out, char *err, size_t errcap);

/*
 * Boolean: yes/no, true/false, on/off, 1/0 (any case); *out = 0 or 1, or
 * def if unset. Errors: CONFIG, INVALID_ARG.
 */
int nu_config_get_bool(const struct nu_config *cfg, const char *key, int def, int *out, char *err,
                       size_t errcap);

/*
 * Duration as nu_duration_parse() reads it ("90s", "15m", "12h", "30d", bare
 * number = seconds), in seconds, within [min_s, max_s]; *out_s = def_s if unset.
 * Errors: CONFIG, INVALID_ARG.
 */
int nu_config_get_duration(const struct nu_config *cfg, const char *key, uint64_t def_s,
                           uint64_t min_s, uint64_t max_s, uint64_t *out_s, char *err,
                           size_t errcap);

/*
 * Refuse settings the program does not know (typos would otherwise be
 * silently ignored). `allowed` is a NULL-terminated list of keys; an entry
 * ending in ".*" allows every key under that prefix ("programmer.*").
 *   out_bad_key  optional: set to the first unknown key in file order
 *                (owned by cfg), NULL when all are known.
 * Errors: CONFIG (message "NAME:LINE: unknown key 'x'"), INVALID_ARG.
 */
int nu_config_check_keys(const struct nu_config *cfg, const char *const allowed[],
                         const char **out_bad_key, char *err, size_t errcap);

#endif
