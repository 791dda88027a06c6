/*
 * acl — the pure policy of the nusec_auth Mosquitto plugin: identity and
 * role rules, the topic ACL, and the parsers for the revocation and
 * ownership files. No Mosquitto, no OpenSSL, no I/O, so that
 * tests/unit/broker/test_acl.c can drive it with tables.
 *
 * Status codes are the NU_OK / NU_ERR_* values of libnusec/nu_err.h (header
 * only: the plugin does not link libnusec).
 */
#ifndef NUSEC_BROKER_ACL_H
#define NUSEC_BROKER_ACL_H

#include <stdbool.h>
#include <stddef.h>

/* Longest identity (certificate CN) and client id suffix we accept. */
#define NUSEC_ACL_ID_MAX 64
#define NUSEC_ACL_CLIENT_SUFFIX_MAX 32
/* Longest topic or filter we authorize, and most levels in it. */
#define NUSEC_ACL_TOPIC_MAX 512
#define NUSEC_ACL_LEVELS_MAX 16

/* Roles carried in the certificate OU. NONE is never a valid role. */
enum nusec_role {
    NUSEC_ROLE_NONE = 0,
    NUSEC_ROLE_CLOUD,
    NUSEC_ROLE_STATION,
    NUSEC_ROLE_MONITOR,
    NUSEC_ROLE_OEM,
    NUSEC_ROLE_PROGRAMMER,
    /* A CM site's bridge (issue 14): CN = the site's name, which is also its
     * station's CN. At the cloud broker it may carry only the requests,
     * events and status of the programmers the site owns (the ownership
     * table, "site programmer" lines decided by the OEM) and its station's,
     * and read only their replies, job state and the device CRL. Defence in
     * depth: the cloud's end-to-end signature check is the guarantee. */
    NUSEC_ROLE_SITE,
};

/* Access kinds; same values as Mosquitto's MOSQ_ACL_* (checked in nusec_auth.c). */
enum nusec_access {
    NUSEC_ACCESS_READ = 0x01,
    NUSEC_ACCESS_WRITE = 0x02,
    NUSEC_ACCESS_SUBSCRIBE = 0x04,
};

/* A sorted set of strings, each with an int value. Opaque. */
struct nusec_acl_set;

/* Who is asking: identity (CN), role (OU) and the station ownership table (may be NULL). */
struct nusec_acl_subject {
    const char *id;
    enum nusec_role role;
    const struct nusec_acl_set *owners;
};

/*
 * Role for the OU text `s` of `len` bytes (exact, case-sensitive:
 * cloud, station, monitor, oem, programmer, site); NUSEC_ROLE_NONE otherwise.
 */
enum nusec_role nusec_acl_role_parse(const char *s, size_t len);

/* Name of a role ("cloud"...), or "none". Static string. */
const char *nusec_acl_role_name(enum nusec_role role);

/* 1 when s[0..len) matches [A-Za-z0-9._-]{1,64}, else 0. */
bool nusec_acl_identity_valid(const char *s, size_t len);

/*
 * 1 when `client_id` may be used by identity `id`: equal to it, or
 * "<id>:<suffix>" with suffix [A-Za-z0-9._-]{1,32}. The separator is ':'
 * because it cannot occur in an identity, so no identity's client ids can
 * ever collide with another's (with '.' or '-', identity "st" could take
 * the session of identity "st-2" by connecting as "st-2").
 */
bool nusec_acl_client_id_ok(const char *id, const char *client_id);

/*
 * Decide one access. `topic` is a topic name for READ and WRITE and a
 * topic filter for SUBSCRIBE (optionally "$share/<group>/<filter>").
 * A filter is allowed only if every topic it can match is allowed for
 * reading. `retain` matters for WRITE only: retained publishes are
 * allowed on job state, programmer status and the device CRL only.
 * Deny by default; any malformed, oversize, '$' (other than $share) or
 * empty-level topic is denied. Returns true when allowed.
 */
bool nusec_acl_check(const struct nusec_acl_subject *subject, int access, const char *topic,
                     bool retain);

/*
 * 1 when a publish by `subject` may carry `response_topic` (MQTT 5):
 * only a topic the subject itself may read, so nobody can steer the
 * cloud's replies to another identity.
 */
bool nusec_acl_response_topic_ok(const struct nusec_acl_subject *subject,
                                 const char *response_topic);

/* New empty set into *out_set. Errors: NOMEM, INVALID_ARG. Free with nusec_acl_set_free(). */
int nusec_acl_set_new(struct nusec_acl_set **out_set);

/* Free a set (NULL is fine). */
void nusec_acl_set_free(struct nusec_acl_set *set);

/* Insert `key` (copied) with `value`, or replace the value. Errors: NOMEM, INVALID_ARG. */
int nusec_acl_set_put(struct nusec_acl_set *set, const char *key, int value);

/* 1 when `key` is in the set (NULL set = empty); its value into *out_value if not NULL. */
bool nusec_acl_set_get(const struct nusec_acl_set *set, const char *key, int *out_value);

/* Number of keys (0 for NULL). */
size_t nusec_acl_set_count(const struct nusec_acl_set *set);

/* Key number `i` in sort order (borrowed; NULL when out of range). */
const char *nusec_acl_set_key(const struct nusec_acl_set *set, size_t i);

/* Value of key number `i` in sort order (0 when out of range). */
int nusec_acl_set_value(const struct nusec_acl_set *set, size_t i);

/*
 * Parse a revocation list: one identity per line, '#' starts a comment,
 * blank lines and surrounding spaces/tabs/CR ignored. Any other line that is
 * not a valid identity makes the whole file invalid (a revocation list
 * that cannot be read exactly must not be half-applied).
 * On success *out_set holds the identities (caller frees). On DECODE
 * *out_line is the 1-based number of the first bad line.
 * Errors: DECODE, NOMEM, INVALID_ARG, TOO_LARGE (a line over 1 KiB).
 */
int nusec_acl_revoked_parse(const char *text, size_t len, struct nusec_acl_set **out_set,
                            size_t *out_line);

/*
 * Parse an ownership table: lines "station_id programmer_id" (spaces or
 * tabs between), '#' comments, blank lines ignored; both must be valid
 * identities and nothing else may follow. Errors and ownership as for
 * nusec_acl_revoked_parse(). Look-ups with nusec_acl_owns().
 */
int nusec_acl_owners_parse(const char *text, size_t len, struct nusec_acl_set **out_set,
                           size_t *out_line);

/* 1 when `owners` (may be NULL) says `station` owns `programmer`. */
bool nusec_acl_owns(const struct nusec_acl_set *owners, const char *station,
                    const char *programmer);

/*
 * The identities file: the role each identity had at its last accepted
 * CONNECT, kept by the plugin across broker restarts so that deliveries to
 * offline persistent sessions are decided by that role (see
 * broker/README.md). Text, written whole by the plugin:
 *
 *   nusec-identities 1          first line, exactly
 *   cloud1 cloud                "identity role", one per identity
 *   progA programmer
 *   end 2                       last line: the number of entries
 *
 * '#' comments and blank lines are ignored. The file is machine-written,
 * so anything else fails the whole file: a missing or wrong header, a line
 * that is not "identity role" with a valid identity and a NuSEC role, an
 * identity listed twice (even with the same role), a missing trailer or a
 * count that differs (a truncated file), anything after the trailer, a NUL.
 * The caller then treats the file as empty (fail closed).
 */
#define NUSEC_ACL_IDENTITIES_HEADER "nusec-identities 1"
/* Most identities a file may hold (a line is at most ~80 bytes). */
#define NUSEC_ACL_IDENTITIES_MAX 200000u

/*
 * Parse an identities file. On success *out_set maps identity -> role
 * (enum nusec_role values; caller frees). On error *out_line is the 1-based
 * line at fault (0 when the file as a whole is: missing trailer).
 * Errors: DECODE, TOO_LARGE (line over 1 KiB, more than
 * NUSEC_ACL_IDENTITIES_MAX entries), NOMEM, INVALID_ARG.
 */
int nusec_acl_identities_parse(const char *text, size_t len, struct nusec_acl_set **out_set,
                               size_t *out_line);

/*
 * Format `set` (identity -> role; entries with an invalid identity or role
 * are an error, never written) as an identities file. On success *out_text
 * is a malloc()ed NUL-terminated text of *out_len bytes (caller frees) that
 * nusec_acl_identities_parse() reads back as the same set.
 * Errors: INVALID_ARG (bad entry, NULL), TOO_LARGE, NOMEM.
 */
int nusec_acl_identities_format(const struct nusec_acl_set *set, char **out_text,
                                size_t *out_len);

/*
 * Copy untrusted text for a log line: printable ASCII kept, everything
 * else as \xHH, cut with "..." to fit out[cap]. Always NUL-terminates
 * (cap >= 4). Returns out.
 */
char *nusec_acl_log_safe(const char *in, char *out, size_t cap);

#endif
