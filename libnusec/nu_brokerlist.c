/* nu_brokerlist: the list files' format (libc only: the broker plugin compiles it too). */
#include "nu_brokerlist.h"

#include "nu_err.h"

#include <stdlib.h>
#include <string.h>

/* Longest normalised line compared (two identities and a space, with room). */
#define BROKERLIST__NORM_MAX 256

static int brokerlist__blank(char c)
{
    return c == ' ' || c == '\t' || c == '\r';
}

void nu_brokerlist_tokenize(const char *line, size_t len,
                            struct nu_brokerlist_tok tok[NU_BROKERLIST_TOKENS_MAX], size_t *out_n)
{
    size_t n = 0, i = 0;
    while (i < len && line[i] != '#' && n <= NU_BROKERLIST_TOKENS_MAX) {
        if (brokerlist__blank(line[i])) {
            i++;
            continue;
        }
        size_t start = i;
        while (i < len && !brokerlist__blank(line[i]) && line[i] != '#')
            i++;
        if (n < NU_BROKERLIST_TOKENS_MAX)
            tok[n] = (struct nu_brokerlist_tok){line + start, i - start};
        n++;
    }
    *out_n = n;
}

size_t nu_brokerlist_norm(const char *line, size_t len, char *out, size_t cap)
{
    size_t n = 0;
    if (!cap)
        return 0;
    for (size_t i = 0; i < len && line[i] != '#' && n + 1 < cap;) {
        if (brokerlist__blank(line[i])) {
            i++;
            continue;
        }
        if (n)
            out[n++] = ' ';
        while (i < len && n + 1 < cap && !brokerlist__blank(line[i]) && line[i] != '#')
            out[n++] = line[i++];
    }
    out[n] = '\0';
    return n;
}

int nu_brokerlist_has(const char *text, size_t len, const char *norm)
{
    char line[BROKERLIST__NORM_MAX];
    for (size_t pos = 0; text && pos < len;) {
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        if (nu_brokerlist_norm(text + pos, end - pos, line, sizeof(line)) &&
            strcmp(line, norm) == 0)
            return 1;
        pos = end + 1;
    }
    return 0;
}

/* owners lines "station programmer": is `norm` about `programmer`? */
static int brokerlist__owner_of(const char *norm, const char *programmer)
{
    const char *sp = strchr(norm, ' ');
    return sp && strcmp(sp + 1, programmer) == 0;
}

/* The lines to add, sorted and without repeats, so that each old line is
 * looked up in log time: a revocation list of 10,000 identities adopted by
 * the broker compared every line with every added one, 100M strcmp and
 * ~0.3 s of the broker's only thread per adoption. */
struct brokerlist__adds {
    const char **key;    /* sorted, unique */
    unsigned char *have; /* key[i] is in the old text (already kept once) */
    size_t n;
};

static int brokerlist__cmp(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int brokerlist__adds_init(struct brokerlist__adds *a, const struct nu_brokerlist_edit *e)
{
    size_t n = e->n_add ? e->n_add : 1;
    a->key = malloc(n * sizeof(*a->key));
    a->have = calloc(n, 1);
    a->n = 0;
    if (!a->key || !a->have)
        return NU_ERR_NOMEM;
    for (size_t i = 0; i < e->n_add; i++)
        if (e->add[i][0]) /* a blank added line never matches a line */
            a->key[a->n++] = e->add[i];
    qsort(a->key, a->n, sizeof(*a->key), brokerlist__cmp);
    size_t u = 0;
    for (size_t i = 0; i < a->n; i++)
        if (u == 0 || strcmp(a->key[u - 1], a->key[i]) != 0)
            a->key[u++] = a->key[i];
    a->n = u;
    return NU_OK;
}

static void brokerlist__adds_free(struct brokerlist__adds *a)
{
    free(a->key);
    free(a->have);
}

/* Index of `norm` among the added lines, or -1. */
static long brokerlist__adds_find(const struct brokerlist__adds *a, const char *norm)
{
    const char **hit =
        a->n && norm[0] ? bsearch(&norm, a->key, a->n, sizeof(*a->key), brokerlist__cmp) : NULL;
    return hit ? (long)(hit - a->key) : -1;
}

/* Keep the line `norm`? Marks an added line as present (a second copy goes). */
static int brokerlist__keep(const struct nu_brokerlist_edit *e, const char *norm,
                            struct brokerlist__adds *a)
{
    int keep = !(e->drop_owner_of && norm[0] && brokerlist__owner_of(norm, e->drop_owner_of));
    long i = brokerlist__adds_find(a, norm);
    if (i >= 0) {
        keep = !a->have[i];
        a->have[i] = 1;
    }
    return keep;
}

/* Append `len` bytes and a '\n' to out[cap] at *n; 0 when it does not fit. */
static int brokerlist__put(char *out, size_t cap, size_t *n, const char *p, size_t len)
{
    if (*n + len + 1 > cap)
        return 0;
    memcpy(out + *n, p, len);
    *n += len;
    out[(*n)++] = '\n';
    return 1;
}

int nu_brokerlist_apply(const uint8_t *old, size_t old_len, const struct nu_brokerlist_edit *e,
                        char *out, size_t cap, size_t *out_len, int *out_changed)
{
    char norm[BROKERLIST__NORM_MAX];
    struct brokerlist__adds adds;
    size_t n = 0;
    int changed = 0, rc = NU_OK;
    if (!e || !out || !out_len || !out_changed || (!old && old_len) || (e->n_add && !e->add))
        return NU_ERR_INVALID_ARG;
    if ((rc = brokerlist__adds_init(&adds, e)) != NU_OK) {
        brokerlist__adds_free(&adds);
        return rc;
    }
    for (size_t pos = 0; pos < old_len;) {
        const uint8_t *nl = memchr(old + pos, '\n', old_len - pos);
        size_t end = nl ? (size_t)(nl - old) : old_len;
        nu_brokerlist_norm((const char *)old + pos, end - pos, norm, sizeof(norm));
        if (!brokerlist__keep(e, norm, &adds) ||
            !brokerlist__put(out, cap, &n, (const char *)old + pos, end - pos))
            changed = 1;
        pos = end + 1;
    }
    /* The added lines not there yet, once each, in the caller's order. */
    for (size_t i = 0; i < e->n_add && rc == NU_OK; i++) {
        long k = brokerlist__adds_find(&adds, e->add[i]);
        if (k < 0 || adds.have[k])
            continue;
        adds.have[k] = 1;
        rc = brokerlist__put(out, cap, &n, e->add[i], strlen(e->add[i])) ? NU_OK : NU_ERR_TOO_LARGE;
        changed = 1;
    }
    brokerlist__adds_free(&adds);
    if (rc == NU_OK) {
        *out_len = n;
        *out_changed = changed;
    }
    return rc;
}
