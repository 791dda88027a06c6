/* pins: see pins.h. */
#include "pins.h"

#include "acl.h"
#include "nu_err.h"

#include <ctype.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define PINS__LINE_MAX 1024

struct pins__entry {
    char id[NUSEC_ACL_ID_MAX + 1];
    char serial[NUSEC_PINS_SERIAL_MAX + 1]; /* lower case, no leading zeros */
    size_t line;                            /* where it was, for a duplicate's report */
};

struct nusec_pins {
    struct pins__entry *e;
    size_t n, cap;
};

/* Canonical serial: lower case, leading zero digits dropped ("0" stays). */
static bool pins__canon(const char *s, size_t len, char out[NUSEC_PINS_SERIAL_MAX + 1])
{
    if (len == 0 || len > NUSEC_PINS_SERIAL_MAX)
        return false;
    size_t i = 0, n = 0;
    while (i + 1 < len && s[i] == '0')
        i++;
    for (; i < len; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return false;
        out[n++] = (char)tolower((unsigned char)s[i]);
    }
    out[n] = 0;
    return true;
}

static int pins__cmp(const void *a, const void *b)
{
    return strcmp(((const struct pins__entry *)a)->id, ((const struct pins__entry *)b)->id);
}

/* Entries are sorted by id once parsed: the broker asks on every ACL check
 * of a pinned role, with one line per programmer in the list. */
static const struct pins__entry *pins__find(const struct nusec_pins *p, const char *id)
{
    struct pins__entry key;
    size_t n = strlen(id);
    if (!p || !p->n || n >= sizeof(key.id))
        return NULL;
    memcpy(key.id, id, n + 1);
    return bsearch(&key, p->e, p->n, sizeof(*p->e), pins__cmp);
}

/* One line's tokens: 0 ok (or nothing on it), else DECODE. */
static int pins__line(struct nusec_pins *p, const char *s, size_t len, size_t line)
{
    const char *tok[3];
    size_t tl[3], nt = 0;
    for (size_t i = 0; i < len && s[i] != '#';) {
        while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r'))
            i++;
        if (i >= len || s[i] == '#')
            break;
        size_t b = i;
        while (i < len && s[i] != ' ' && s[i] != '\t' && s[i] != '\r' && s[i] != '#')
            i++;
        if (nt == 3)
            return NU_ERR_DECODE;
        tok[nt] = s + b, tl[nt++] = i - b;
    }
    if (nt == 0)
        return NU_OK;
    struct pins__entry e;
    if (nt != 2 || !nusec_acl_identity_valid(tok[0], tl[0]) ||
        !pins__canon(tok[1], tl[1], e.serial))
        return NU_ERR_DECODE;
    memcpy(e.id, tok[0], tl[0]);
    e.id[tl[0]] = 0;
    e.line = line;
    if (p->n == p->cap) {
        size_t cap = p->cap ? 2 * p->cap : 16;
        struct pins__entry *g = realloc(p->e, cap * sizeof(*g));
        if (!g)
            return NU_ERR_NOMEM;
        p->e = g, p->cap = cap;
    }
    p->e[p->n++] = e;
    return NU_OK;
}

int nusec_pins_parse(const char *text, size_t len, struct nusec_pins **out, size_t *out_line)
{
    if (!out || (!text && len))
        return NU_ERR_INVALID_ARG;
    *out = NULL;
    if (out_line)
        *out_line = 0;
    struct nusec_pins *p = calloc(1, sizeof(*p));
    if (!p)
        return NU_ERR_NOMEM;
    size_t line = 0;
    int rc = NU_OK;
    for (size_t pos = 0; rc == NU_OK && pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        line++;
        rc = end - pos > PINS__LINE_MAX ? NU_ERR_TOO_LARGE
                                        : pins__line(p, text + pos, end - pos, line);
        pos = end + 1;
    }
    if (rc == NU_OK && p->n > 1) {
        /* An id listed twice: the whole list is refused, at its second line. */
        qsort(p->e, p->n, sizeof(*p->e), pins__cmp);
        for (size_t i = 1; rc == NU_OK && i < p->n; i++) {
            if (strcmp(p->e[i - 1].id, p->e[i].id) == 0) {
                rc = NU_ERR_DECODE;
                line = p->e[i].line > p->e[i - 1].line ? p->e[i].line : p->e[i - 1].line;
            }
        }
    }
    if (rc != NU_OK) {
        if (out_line)
            *out_line = line;
        nusec_pins_free(p);
        return rc;
    }
    *out = p;
    return NU_OK;
}

void nusec_pins_free(struct nusec_pins *pins)
{
    if (!pins)
        return;
    free(pins->e);
    free(pins);
}

size_t nusec_pins_count(const struct nusec_pins *pins)
{
    return pins ? pins->n : 0;
}

bool nusec_pins_allow(const struct nusec_pins *pins, const char *id, const char *serial_hex)
{
    char canon[NUSEC_PINS_SERIAL_MAX + 1];
    const struct pins__entry *e = id ? pins__find(pins, id) : NULL;
    if (!e)
        return true;
    return serial_hex && pins__canon(serial_hex, strlen(serial_hex), canon) &&
           strcmp(canon, e->serial) == 0;
}

bool nusec_pins_has(const struct nusec_pins *pins, const char *id)
{
    return id && pins__find(pins, id) != NULL;
}

void nusec_pins_changed(const struct nusec_pins *before, const struct nusec_pins *now,
                        void (*fn)(void *ctx, const char *id), void *ctx)
{
    for (size_t i = 0; now && i < now->n; i++) {
        const struct pins__entry *old = pins__find(before, now->e[i].id);
        if (old && strcmp(old->serial, now->e[i].serial) != 0)
            fn(ctx, now->e[i].id);
    }
}
