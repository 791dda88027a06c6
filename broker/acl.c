/* acl — NuSEC topic policy and list parsing, pure C (see acl.h). */
#include "acl.h"

#include "nu_brokerlist.h"
#include "nu_err.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define ACL__LINE_MAX 1024

/* ---- roles and identities ---------------------------------------------- */

static const char *const acl__role_names[] = {
    [NUSEC_ROLE_NONE] = "none",       [NUSEC_ROLE_CLOUD] = "cloud",
    [NUSEC_ROLE_STATION] = "station", [NUSEC_ROLE_MONITOR] = "monitor",
    [NUSEC_ROLE_OEM] = "oem",         [NUSEC_ROLE_PROGRAMMER] = "programmer",
    [NUSEC_ROLE_SITE] = "site",
};

enum nusec_role nusec_acl_role_parse(const char *s, size_t len)
{
    if (!s)
        return NUSEC_ROLE_NONE;
    for (int r = NUSEC_ROLE_CLOUD; r <= NUSEC_ROLE_SITE; r++) {
        const char *name = acl__role_names[r];
        if (strlen(name) == len && memcmp(name, s, len) == 0)
            return (enum nusec_role)r;
    }
    return NUSEC_ROLE_NONE;
}

const char *nusec_acl_role_name(enum nusec_role role)
{
    if (role < NUSEC_ROLE_NONE || role > NUSEC_ROLE_SITE)
        return "none";
    return acl__role_names[role];
}

static bool acl__id_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' ||
           c == '_' || c == '-';
}

static bool acl__charset_ok(const char *s, size_t len, size_t max)
{
    if (!s || len == 0 || len > max)
        return false;
    for (size_t i = 0; i < len; i++) {
        if (!acl__id_char(s[i]))
            return false;
    }
    return true;
}

bool nusec_acl_identity_valid(const char *s, size_t len)
{
    return acl__charset_ok(s, len, NUSEC_ACL_ID_MAX);
}

bool nusec_acl_client_id_ok(const char *id, const char *client_id)
{
    if (!id || !client_id || !nusec_acl_identity_valid(id, strlen(id)))
        return false;
    size_t n = strlen(id);
    if (strncmp(client_id, id, n) != 0)
        return false;
    if (client_id[n] == '\0')
        return true;
    if (client_id[n] != ':')
        return false;
    const char *suffix = client_id + n + 1;
    return acl__charset_ok(suffix, strlen(suffix), NUSEC_ACL_CLIENT_SUFFIX_MAX);
}

/* ---- topic splitting ---------------------------------------------------- */

struct acl__level {
    const char *p;
    size_t len;
};

struct acl__topic {
    struct acl__level lv[NUSEC_ACL_LEVELS_MAX];
    size_t n;
};

static bool acl__level_is(const struct acl__level *l, const char *s)
{
    return strlen(s) == l->len && memcmp(l->p, s, l->len) == 0;
}

/*
 * Split `s` on '/'. Rejects empty levels (leading, trailing or doubled
 * '/'), too many levels, and '+'/'#' anywhere unless `filter` allows them
 * as a whole level ('#' only last).
 */
static bool acl__split(const char *s, bool filter, struct acl__topic *out)
{
    out->n = 0;
    const char *p = s;
    for (;;) {
        const char *slash = strchr(p, '/');
        size_t len = slash ? (size_t)(slash - p) : strlen(p);
        if (len == 0 || out->n == NUSEC_ACL_LEVELS_MAX)
            return false;
        struct acl__level l = {p, len};
        bool plus = acl__level_is(&l, "+"), hash = acl__level_is(&l, "#");
        if ((plus || hash) && !filter)
            return false;
        if (hash && slash)
            return false;
        if (!plus && !hash && (memchr(p, '+', len) || memchr(p, '#', len)))
            return false;
        out->lv[out->n++] = l;
        if (!slash)
            return true;
        p = slash + 1;
    }
}

/* ---- rules -------------------------------------------------------------- */

#define ACL__READ 0x1u
#define ACL__SUB 0x2u
#define ACL__WRITE 0x4u
#define ACL__RETAIN 0x8u /* WRITE may be retained */
#define ACL__RS (ACL__READ | ACL__SUB)

#define ROLE(r) (1u << NUSEC_ROLE_##r)
#define ALL_ROLES (ROLE(CLOUD) | ROLE(STATION) | ROLE(MONITOR) | ROLE(OEM) | ROLE(PROGRAMMER))

/*
 * Pattern levels: literal, "{id}" (the subject's CN), "{role}" (its OU),
 * "{owned}" (a programmer the subject station owns), "+" (any one level),
 * "#" (zero or more levels, as in MQTT).
 */
struct acl__rule {
    unsigned roles;
    unsigned access;
    const char *pattern;
};

static const struct acl__rule acl__rules[] = {
    {ALL_ROLES, ACL__WRITE, "nusec/v1/events/{role}/{id}/+"},

    {ROLE(CLOUD), ACL__RS, "nusec/v1/cloud/req/+/+"},
    {ROLE(CLOUD), ACL__WRITE, "nusec/v1/reply/+/#"},
    {ROLE(CLOUD), ACL__WRITE | ACL__RETAIN, "nusec/v1/jobs/+"},
    {ROLE(CLOUD), ACL__WRITE | ACL__RETAIN, "nusec/v1/crl/device"},
    /* The broker's lists from the cloud agents, for a broker on another
     * host (plugin_opt_adopt_lists): only a cloud identity writes or reads
     * them; the OEM's cloud broker trusts its mTLS identity. */
    {ROLE(CLOUD), ACL__RS | ACL__WRITE | ACL__RETAIN, "nusec/v1/cloud/lists/revoked"},
    {ROLE(CLOUD), ACL__RS | ACL__WRITE | ACL__RETAIN, "nusec/v1/cloud/lists/serials"},
    {ROLE(CLOUD), ACL__RS | ACL__WRITE | ACL__RETAIN, "nusec/v1/cloud/lists/owners/+"},
    {ROLE(CLOUD) | ROLE(STATION) | ROLE(OEM) | ROLE(MONITOR), ACL__RS, "nusec/v1/events/#"},
    {ROLE(CLOUD) | ROLE(STATION) | ROLE(OEM) | ROLE(MONITOR), ACL__RS, "nusec/v1/prog/+/status"},

    {ROLE(PROGRAMMER) | ROLE(STATION) | ROLE(OEM), ACL__WRITE, "nusec/v1/cloud/req/{id}/+"},
    {ROLE(PROGRAMMER) | ROLE(STATION) | ROLE(OEM), ACL__RS, "nusec/v1/reply/{id}/#"},
    {ROLE(PROGRAMMER) | ROLE(STATION) | ROLE(OEM) | ROLE(MONITOR), ACL__RS, "nusec/v1/jobs/+"},
    {ROLE(PROGRAMMER) | ROLE(OEM), ACL__RS, "nusec/v1/crl/device"},

    {ROLE(PROGRAMMER), ACL__RS, "nusec/v1/prog/{id}/cmd"},
    {ROLE(PROGRAMMER), ACL__WRITE | ACL__RETAIN, "nusec/v1/prog/{id}/status"},

    {ROLE(STATION), ACL__WRITE, "nusec/v1/prog/{owned}/cmd"},

    /* A site bridge: its own station's traffic and its programmers'. */
    {ROLE(SITE), ACL__WRITE, "nusec/v1/cloud/req/{id}/+"},
    {ROLE(SITE), ACL__RS, "nusec/v1/reply/{id}/#"},
    {ROLE(SITE), ACL__WRITE, "nusec/v1/events/station/{id}/+"},
    {ROLE(SITE), ACL__WRITE, "nusec/v1/cloud/req/{owned}/+"},
    {ROLE(SITE), ACL__RS, "nusec/v1/reply/{owned}/#"},
    /* The bridge's one wide reply subscription (a programmer assigned later needs
     * no bridge restart); each delivery is still READ-checked against the two
     * rules above, so the site reads only its station's and programmers' replies. */
    {ROLE(SITE), ACL__SUB, "nusec/v1/reply/#"},
    {ROLE(SITE), ACL__WRITE, "nusec/v1/events/programmer/{owned}/+"},
    {ROLE(SITE), ACL__WRITE | ACL__RETAIN, "nusec/v1/prog/{owned}/status"},
    {ROLE(SITE), ACL__RS, "nusec/v1/jobs/+"},
    {ROLE(SITE), ACL__RS, "nusec/v1/crl/device"},
    /* What the cloud broker's plugin itself publishes for site brokers (no
     * client may publish there): revocations, and the site's own owners. */
    {ROLE(SITE), ACL__RS, "nusec/v1/broker/revoked"},
    {ROLE(SITE), ACL__RS, "nusec/v1/broker/owners/{id}"},
};

/* Does pattern level `pat` (given as text) cover the single concrete level `l`? */
static bool acl__level_covered(const struct nusec_acl_subject *s, const struct acl__level *pat,
                               const struct acl__level *l)
{
    if (acl__level_is(pat, "+"))
        return true;
    if (acl__level_is(pat, "{id}"))
        return acl__level_is(l, s->id);
    if (acl__level_is(pat, "{role}"))
        return acl__level_is(l, nusec_acl_role_name(s->role));
    if (acl__level_is(pat, "{owned}")) {
        char prog[NUSEC_ACL_ID_MAX + 1];
        if (!nusec_acl_identity_valid(l->p, l->len))
            return false;
        memcpy(prog, l->p, l->len);
        prog[l->len] = '\0';
        return nusec_acl_owns(s->owners, s->id, prog);
    }
    return pat->len == l->len && memcmp(pat->p, l->p, l->len) == 0;
}

/* Is every topic matched by filter `f` (or the topic `f`) matched by `pattern`? */
static bool acl__contained(const struct nusec_acl_subject *s, const struct acl__topic *f,
                           const char *pattern)
{
    struct acl__topic p;
    if (!acl__split(pattern, true, &p))
        return false; /* cannot happen with the static table */
    for (size_t i = 0;; i++) {
        if (i == p.n)
            return i == f->n;
        if (acl__level_is(&p.lv[i], "#"))
            return true;
        if (i == f->n)
            return false;
        const struct acl__level *fl = &f->lv[i];
        if (acl__level_is(fl, "#"))
            return false;
        if (acl__level_is(fl, "+")) {
            if (!acl__level_is(&p.lv[i], "+"))
                return false;
            continue;
        }
        if (!acl__level_covered(s, &p.lv[i], fl))
            return false;
    }
}

static unsigned acl__needed(int access, bool retain)
{
    switch (access) {
    case NUSEC_ACCESS_READ:
        return ACL__READ;
    case NUSEC_ACCESS_SUBSCRIBE:
        return ACL__SUB;
    case NUSEC_ACCESS_WRITE:
        return retain ? (ACL__WRITE | ACL__RETAIN) : ACL__WRITE;
    default:
        return 0;
    }
}

/* Strip "$share/<group>/" from a SUBSCRIBE filter; NULL when malformed. */
static const char *acl__unshare(const char *filter)
{
    static const char prefix[] = "$share/";
    if (strncmp(filter, prefix, sizeof(prefix) - 1) != 0)
        return filter;
    const char *group = filter + sizeof(prefix) - 1;
    const char *slash = strchr(group, '/');
    if (!slash || slash == group || slash[1] == '\0')
        return NULL;
    for (const char *c = group; c < slash; c++) {
        if (*c == '+' || *c == '#')
            return NULL;
    }
    return slash + 1;
}

bool nusec_acl_check(const struct nusec_acl_subject *subject, int access, const char *topic,
                     bool retain)
{
    if (!subject || !subject->id || !topic)
        return false;
    if (!nusec_acl_identity_valid(subject->id, strlen(subject->id)))
        return false;
    if (subject->role <= NUSEC_ROLE_NONE || subject->role > NUSEC_ROLE_SITE)
        return false;
    unsigned roles = 1u << subject->role;
    unsigned need = acl__needed(access, retain);
    if (!need || strnlen(topic, NUSEC_ACL_TOPIC_MAX + 1) > NUSEC_ACL_TOPIC_MAX)
        return false;
    if (access == NUSEC_ACCESS_SUBSCRIBE)
        topic = acl__unshare(topic);
    if (!topic || topic[0] == '$')
        return false; /* $SYS and every other broker-internal tree */

    struct acl__topic t;
    if (!acl__split(topic, access == NUSEC_ACCESS_SUBSCRIBE, &t))
        return false;
    for (size_t i = 0; i < sizeof(acl__rules) / sizeof(acl__rules[0]); i++) {
        const struct acl__rule *r = &acl__rules[i];
        if ((r->roles & roles) && (r->access & need) == need &&
            acl__contained(subject, &t, r->pattern))
            return true;
    }
    return false;
}

bool nusec_acl_response_topic_ok(const struct nusec_acl_subject *subject,
                                 const char *response_topic)
{
    return nusec_acl_check(subject, NUSEC_ACCESS_READ, response_topic, false);
}

/* ---- sorted string set --------------------------------------------------- */

struct acl__entry {
    char *key;
    int value;
};

struct nusec_acl_set {
    struct acl__entry *v;
    size_t n, cap;
};

int nusec_acl_set_new(struct nusec_acl_set **out_set)
{
    if (!out_set)
        return NU_ERR_INVALID_ARG;
    *out_set = calloc(1, sizeof(**out_set));
    return *out_set ? NU_OK : NU_ERR_NOMEM;
}

void nusec_acl_set_free(struct nusec_acl_set *set)
{
    if (!set)
        return;
    for (size_t i = 0; i < set->n; i++)
        free(set->v[i].key);
    free(set->v);
    free(set);
}

/* Index of `key`, or of where it would go; *out_found says which. */
static size_t acl__set_find(const struct nusec_acl_set *set, const char *key, bool *out_found)
{
    size_t lo = 0, hi = set->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(set->v[mid].key, key);
        if (c == 0) {
            *out_found = true;
            return mid;
        }
        if (c < 0)
            lo = mid + 1;
        else
            hi = mid;
    }
    *out_found = false;
    return lo;
}

int nusec_acl_set_put(struct nusec_acl_set *set, const char *key, int value)
{
    if (!set || !key)
        return NU_ERR_INVALID_ARG;
    bool found;
    size_t at = acl__set_find(set, key, &found);
    if (found) {
        set->v[at].value = value;
        return NU_OK;
    }
    if (set->n == set->cap) {
        size_t cap = set->cap ? set->cap * 2 : 16;
        struct acl__entry *v = realloc(set->v, cap * sizeof(*v));
        if (!v)
            return NU_ERR_NOMEM;
        set->v = v;
        set->cap = cap;
    }
    char *copy = strdup(key);
    if (!copy)
        return NU_ERR_NOMEM;
    memmove(&set->v[at + 1], &set->v[at], (set->n - at) * sizeof(set->v[0]));
    set->v[at] = (struct acl__entry){copy, value};
    set->n++;
    return NU_OK;
}

bool nusec_acl_set_get(const struct nusec_acl_set *set, const char *key, int *out_value)
{
    if (!set || !key || set->n == 0)
        return false;
    bool found;
    size_t at = acl__set_find(set, key, &found);
    if (found && out_value)
        *out_value = set->v[at].value;
    return found;
}

size_t nusec_acl_set_count(const struct nusec_acl_set *set)
{
    return set ? set->n : 0;
}

const char *nusec_acl_set_key(const struct nusec_acl_set *set, size_t i)
{
    return set && i < set->n ? set->v[i].key : NULL;
}

int nusec_acl_set_value(const struct nusec_acl_set *set, size_t i)
{
    return set && i < set->n ? set->v[i].value : 0;
}

/* ---- list files ----------------------------------------------------------- */

/* A line's tokens (the format is nu_brokerlist's: '#' comments, blanks). */
struct acl__tokens {
    struct nu_brokerlist_tok tok[NU_BROKERLIST_TOKENS_MAX];
    size_t n;
};

static bool acl__tok_is(const struct nu_brokerlist_tok *t, const char *s)
{
    struct acl__level l = {t->p, t->len};
    return acl__level_is(&l, s);
}

/* One non-blank line's tokens: NU_OK, or the error of the whole file. */
typedef int (*acl__line_fn)(void *ctx, const struct acl__tokens *t, struct nusec_acl_set *set);

/*
 * The one reader of every list file (revoked, owners, identities): a new
 * set; each line at most ACL__LINE_MAX bytes and without NUL, split into
 * tokens; each non-blank line handed to `line`; then `done` (optional) on
 * the whole file. *out_line: the 1-based line of an error, 0 on success or
 * when `done` failed (the file as a whole, e.g. truncated).
 */
static int acl__parse(const char *text, size_t len, acl__line_fn line, int (*done)(void *ctx),
                      void *ctx, struct nusec_acl_set **out_set, size_t *out_line)
{
    struct nusec_acl_set *set = NULL;
    size_t line_no = 0;
    int rc = NU_ERR_INVALID_ARG;
    if (!out_set || (!text && len))
        goto out;
    *out_set = NULL;
    if ((rc = nusec_acl_set_new(&set)) != NU_OK)
        goto out;
    for (size_t pos = 0; pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        line_no++;
        rc = NU_ERR_TOO_LARGE;
        if (end - pos > ACL__LINE_MAX)
            goto out;
        rc = NU_ERR_DECODE;
        if (memchr(text + pos, '\0', end - pos))
            goto out;
        struct acl__tokens t;
        nu_brokerlist_tokenize(text + pos, end - pos, t.tok, &t.n);
        if (t.n != 0 && (rc = line(ctx, &t, set)) != NU_OK)
            goto out;
        pos = end + 1;
    }
    line_no = 0;
    if (done && (rc = done(ctx)) != NU_OK)
        goto out;
    *out_set = set;
    set = NULL;
    rc = NU_OK;
out:
    if (out_line)
        *out_line = rc == NU_OK ? 0 : line_no;
    nusec_acl_set_free(set);
    return rc;
}

/* revoked, owners: *(size_t *)ctx tokens per line, all valid identities, joined by ' '. */
static int acl__ids_line(void *ctx, const struct acl__tokens *t, struct nusec_acl_set *set)
{
    size_t want = *(const size_t *)ctx;
    char key[2 * NUSEC_ACL_ID_MAX + 2];
    size_t k = 0;
    if (t->n != want)
        return NU_ERR_DECODE;
    for (size_t i = 0; i < want; i++) {
        if (!nusec_acl_identity_valid(t->tok[i].p, t->tok[i].len))
            return NU_ERR_DECODE;
        if (i)
            key[k++] = ' ';
        memcpy(key + k, t->tok[i].p, t->tok[i].len);
        k += t->tok[i].len;
    }
    key[k] = '\0';
    return nusec_acl_set_put(set, key, 1);
}

static int acl__parse_lines(const char *text, size_t len, size_t want,
                            struct nusec_acl_set **out_set, size_t *out_line)
{
    return acl__parse(text, len, acl__ids_line, NULL, &want, out_set, out_line);
}

int nusec_acl_revoked_parse(const char *text, size_t len, struct nusec_acl_set **out_set,
                            size_t *out_line)
{
    return acl__parse_lines(text, len, 1, out_set, out_line);
}

int nusec_acl_owners_parse(const char *text, size_t len, struct nusec_acl_set **out_set,
                           size_t *out_line)
{
    return acl__parse_lines(text, len, 2, out_set, out_line);
}

bool nusec_acl_owns(const struct nusec_acl_set *owners, const char *station, const char *programmer)
{
    char key[2 * NUSEC_ACL_ID_MAX + 2];
    if (!owners || !station || !programmer)
        return false;
    if (snprintf(key, sizeof(key), "%s %s", station, programmer) >= (int)sizeof(key))
        return false;
    return nusec_acl_set_get(owners, key, NULL);
}

/* ---- identities file ------------------------------------------------------ */

/* Where a line of the identities file stands: header, entries or trailer. */
enum acl__ident_part { ACL__IDENT_HEADER, ACL__IDENT_BODY, ACL__IDENT_DONE };

/* "end N" with N a plain decimal count; *out_n gets N. */
static bool acl__ident_trailer(const struct acl__tokens *t, size_t *out_n)
{
    if (t->n != 2 || !acl__tok_is(&t->tok[0], "end") || t->tok[1].len > 9)
        return false;
    size_t n = 0;
    for (size_t i = 0; i < t->tok[1].len; i++) {
        char c = t->tok[1].p[i];
        if (c < '0' || c > '9')
            return false;
        n = n * 10 + (size_t)(c - '0');
    }
    *out_n = n;
    return true;
}

/* One non-blank line (ctx: where the file stands); NU_OK, or the error of the whole file. */
static int acl__ident_line(void *ctx, const struct acl__tokens *t, struct nusec_acl_set *set)
{
    enum acl__ident_part *part = ctx;
    size_t count = 0;
    if (*part == ACL__IDENT_HEADER) {
        /* NUSEC_ACL_IDENTITIES_HEADER, as two tokens */
        if (t->n != 2 || !acl__tok_is(&t->tok[0], "nusec-identities") ||
            !acl__tok_is(&t->tok[1], "1"))
            return NU_ERR_DECODE;
        *part = ACL__IDENT_BODY;
        return NU_OK;
    }
    if (*part == ACL__IDENT_DONE)
        return NU_ERR_DECODE; /* nothing may follow the trailer */
    if (acl__ident_trailer(t, &count)) {
        *part = ACL__IDENT_DONE;
        return count == nusec_acl_set_count(set) ? NU_OK : NU_ERR_DECODE;
    }
    if (t->n != 2 || !nusec_acl_identity_valid(t->tok[0].p, t->tok[0].len))
        return NU_ERR_DECODE;
    enum nusec_role role = nusec_acl_role_parse(t->tok[1].p, t->tok[1].len);
    if (role == NUSEC_ROLE_NONE)
        return NU_ERR_DECODE;
    char id[NUSEC_ACL_ID_MAX + 1];
    memcpy(id, t->tok[0].p, t->tok[0].len);
    id[t->tok[0].len] = '\0';
    if (nusec_acl_set_get(set, id, NULL))
        return NU_ERR_DECODE; /* listed twice: not a file the plugin wrote */
    if (nusec_acl_set_count(set) >= NUSEC_ACL_IDENTITIES_MAX)
        return NU_ERR_TOO_LARGE;
    return nusec_acl_set_put(set, id, (int)role);
}

/* The whole file: a trailer, or it was truncated (or empty). */
static int acl__ident_done(void *ctx)
{
    return *(const enum acl__ident_part *)ctx == ACL__IDENT_DONE ? NU_OK : NU_ERR_DECODE;
}

int nusec_acl_identities_parse(const char *text, size_t len, struct nusec_acl_set **out_set,
                               size_t *out_line)
{
    enum acl__ident_part part = ACL__IDENT_HEADER;
    return acl__parse(text, len, acl__ident_line, acl__ident_done, &part, out_set, out_line);
}

int nusec_acl_identities_format(const struct nusec_acl_set *set, char **out_text,
                                size_t *out_len)
{
    if (!set || !out_text || !out_len)
        return NU_ERR_INVALID_ARG;
    size_t n = nusec_acl_set_count(set);
    if (n > NUSEC_ACL_IDENTITIES_MAX)
        return NU_ERR_TOO_LARGE;
    /* header + comment + per entry "id role\n" (<= 64 + 1 + 10 + 1) + "end N\n" */
    static const char head[] = NUSEC_ACL_IDENTITIES_HEADER "\n"
                               "# identity role: the role at its last accepted CONNECT "
                               "(written by nusec_auth)\n";
    size_t cap = sizeof(head) + n * (NUSEC_ACL_ID_MAX + 16) + 32;
    char *text = malloc(cap);
    if (!text)
        return NU_ERR_NOMEM;
    size_t off = (size_t)snprintf(text, cap, "%s", head);
    for (size_t i = 0; i < n; i++) {
        const char *id = nusec_acl_set_key(set, i);
        enum nusec_role role = (enum nusec_role)nusec_acl_set_value(set, i);
        if (!nusec_acl_identity_valid(id, strlen(id)) || role <= NUSEC_ROLE_NONE ||
            role > NUSEC_ROLE_SITE) {
            free(text);
            return NU_ERR_INVALID_ARG;
        }
        off += (size_t)snprintf(text + off, cap - off, "%s %s\n", id, nusec_acl_role_name(role));
    }
    off += (size_t)snprintf(text + off, cap - off, "end %zu\n", n);
    *out_text = text;
    *out_len = off;
    return NU_OK;
}

static size_t acl__esc_len(unsigned char c)
{
    return (c >= 0x20 && c < 0x7f && c != '\\') ? 1 : 4;
}

char *nusec_acl_log_safe(const char *in, char *out, size_t cap)
{
    static const char hex[] = "0123456789abcdef";
    if (!out || cap < 4)
        return out;
    if (!in)
        in = "(null)";
    size_t total = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++)
        total += acl__esc_len(*p);
    size_t room = total < cap ? cap : cap - 3; /* keep room for "..." when cut */
    size_t o = 0;
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        if (o + acl__esc_len(*p) + 1 > room)
            break;
        if (acl__esc_len(*p) == 1) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '\\';
            out[o++] = 'x';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 0xf];
        }
    }
    if (total >= cap) {
        memcpy(out + o, "...", 3);
        o += 3;
    }
    out[o] = '\0';
    return out;
}
