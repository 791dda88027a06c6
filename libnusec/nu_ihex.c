/*
 * nu_ihex — Intel HEX to flat binary. Two passes: every line is checked and
 * its data records listed (pointing into the caller's text); then the
 * records are sorted, overlaps refused, and the binary filled. Nothing is
 * allocated for the output until the whole file has been validated.
 */
#include "nu_ihex.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <stdlib.h>
#include <string.h>

#define IHEX__MAX_DATA 255u
#define IHEX__MAX_DIGITS (2u * (5u + IHEX__MAX_DATA)) /* LL AAAA TT data CC */
#define IHEX__TEXT_SLACK (64u * 1024u)

enum {
    IHEX__DATA = 0,
    IHEX__EOF = 1,
    IHEX__EXT_SEG = 2,
    IHEX__START_SEG = 3,
    IHEX__EXT_LIN = 4,
    IHEX__START_LIN = 5,
};

struct ihex__rec {
    uint64_t addr;
    const char *hex; /* the record's data digits, already validated */
    size_t line;
    uint8_t n;
};

struct ihex__state {
    struct ihex__rec *recs;
    size_t count, cap;
    uint32_t base;
    uint32_t entry;
    int has_entry;
    int eof;
};

/* digits[2*nb] -> out[nb]; DECODE on a non-hex character. */
static int ihex__unhex(const char *digits, size_t nb, uint8_t *out)
{
    size_t got = 0;
    return nu_hex_decode_n(digits, 2 * nb, out, nb, &got);
}

static int ihex__push(struct ihex__state *st, uint64_t addr, const char *hex, uint8_t n,
                      size_t line)
{
    struct ihex__rec *r = nu_grow(st->recs, &st->cap, st->count, sizeof(*r));
    if (!r)
        return NU_ERR_NOMEM;
    st->recs = r;
    st->recs[st->count++] = (struct ihex__rec){addr, hex, line, n};
    return NU_OK;
}

/* Act on one checksum-valid record b[0..4+cnt] whose data digits start at hex. */
static int ihex__record(struct ihex__state *st, const uint8_t *b, const char *hex, size_t line)
{
    uint8_t cnt = b[0], type = b[3];
    uint32_t off = (uint32_t)b[1] << 8 | b[2];
    const uint8_t *d = b + 4;
    if (type == IHEX__DATA) {
        if (off + cnt > 0x10000u)
            return NU_ERR_DECODE;
        return cnt ? ihex__push(st, (uint64_t)st->base + off, hex, cnt, line) : NU_OK;
    }
    if (type == IHEX__START_SEG)
        return NU_ERR_NOT_SUPPORTED;
    if (off != 0)
        return NU_ERR_DECODE;
    switch (type) {
    case IHEX__EOF:
        st->eof = 1;
        return cnt == 0 ? NU_OK : NU_ERR_DECODE;
    case IHEX__EXT_SEG:
    case IHEX__EXT_LIN:
        if (cnt != 2)
            return NU_ERR_DECODE;
        st->base = ((uint32_t)d[0] << 8 | d[1]) << (type == IHEX__EXT_SEG ? 4 : 16);
        return NU_OK;
    case IHEX__START_LIN:
        if (cnt != 4 || st->has_entry)
            return NU_ERR_DECODE;
        st->entry = (uint32_t)d[0] << 24 | (uint32_t)d[1] << 16 | (uint32_t)d[2] << 8 | d[3];
        st->has_entry = 1;
        return NU_OK;
    default:
        return NU_ERR_DECODE;
    }
}

/* One line s[n] without its line end. */
static int ihex__line(struct ihex__state *st, const char *s, size_t n, size_t line)
{
    if (n == 0 || s[0] != ':')
        return NU_ERR_DECODE;
    s++;
    n--;
    if (n % 2 || n < 10 || n > IHEX__MAX_DIGITS)
        return NU_ERR_DECODE;
    uint8_t b[IHEX__MAX_DIGITS / 2];
    size_t nb = n / 2;
    if (ihex__unhex(s, nb, b) != NU_OK || (size_t)b[0] + 5 != nb)
        return NU_ERR_DECODE;
    uint8_t sum = 0;
    for (size_t i = 0; i < nb; i++)
        sum = (uint8_t)(sum + b[i]);
    if (sum != 0)
        return NU_ERR_DECODE;
    return ihex__record(st, b, s + 8, line);
}

/* Pass 1: every line. */
static int ihex__scan(struct ihex__state *st, const char *text, size_t len, size_t *err_line)
{
    size_t pos = 0, line = 0;
    while (pos < len && !st->eof) {
        line++;
        const char *nl = memchr(text + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - text) : len;
        size_t n = end - pos;
        if (n && text[end - 1] == '\r')
            n--;
        int rc = ihex__line(st, text + pos, n, line);
        if (rc != NU_OK) {
            *err_line = line;
            return rc;
        }
        pos = nl ? end + 1 : len;
    }
    if (!st->eof)
        return NU_ERR_DECODE;
    /* After EOF only line ends may follow. */
    for (; pos < len; pos++) {
        if (text[pos] != '\r' && text[pos] != '\n') {
            *err_line = line + 1;
            return NU_ERR_DECODE;
        }
        line += text[pos] == '\n';
    }
    return NU_OK;
}

static int ihex__cmp(const void *a, const void *b)
{
    const struct ihex__rec *x = a, *y = b;
    return x->addr < y->addr ? -1 : x->addr > y->addr;
}

/* Pass 2: sort, refuse overlaps, fill the binary. */
static int ihex__flatten(struct ihex__state *st, size_t max_span, struct nu_ihex_image *out,
                         size_t *err_line)
{
    if (st->count == 0)
        return NU_ERR_DECODE;
    qsort(st->recs, st->count, sizeof(*st->recs), ihex__cmp);
    for (size_t i = 1; i < st->count; i++) {
        if (st->recs[i - 1].addr + st->recs[i - 1].n > st->recs[i].addr) {
            *err_line = st->recs[i].line;
            return NU_ERR_DECODE;
        }
    }
    const struct ihex__rec *last = &st->recs[st->count - 1];
    uint64_t lo = st->recs[0].addr, span = last->addr + last->n - lo;
    if (last->addr + last->n > (uint64_t)UINT32_MAX + 1)
        return NU_ERR_DECODE; /* unreachable with 64 KiB windows; kept as a guard */
    if (span > max_span)
        return NU_ERR_TOO_LARGE;
    uint8_t *data = malloc((size_t)span);
    if (!data)
        return NU_ERR_NOMEM;
    memset(data, 0xff, (size_t)span);
    for (size_t i = 0; i < st->count; i++)
        (void)ihex__unhex(st->recs[i].hex, st->recs[i].n, data + (st->recs[i].addr - lo));
    out->data = data;
    out->len = (size_t)span;
    out->base = (uint32_t)lo;
    out->entry = st->entry;
    out->has_entry = st->has_entry;
    return NU_OK;
}

static size_t ihex__span_cap(size_t max_span)
{
    return (max_span == 0 || max_span > NU_IHEX_MAX_SPAN) ? NU_IHEX_MAX_SPAN : max_span;
}

int nu_ihex_parse(const char *text, size_t text_len, size_t max_span, struct nu_ihex_image *out,
                  size_t *out_err_line)
{
    size_t err_line = 0;
    if (out_err_line)
        *out_err_line = 0;
    if (!out || (!text && text_len))
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    max_span = ihex__span_cap(max_span);
    if (text_len > 16 * max_span + IHEX__TEXT_SLACK)
        return NU_ERR_TOO_LARGE;
    struct ihex__state st = {0};
    int rc = ihex__scan(&st, text, text_len, &err_line);
    if (rc == NU_OK)
        rc = ihex__flatten(&st, max_span, out, &err_line);
    free(st.recs);
    if (rc != NU_OK) {
        nu_debug("ihex: refused (%s) at line %zu", nu_err_name(rc), err_line);
        if (out_err_line)
            *out_err_line = err_line;
    }
    return rc;
}

int nu_ihex_load(const char *path, size_t max_span, struct nu_ihex_image *out, size_t *out_err_line)
{
    if (out_err_line)
        *out_err_line = 0;
    if (!path || !out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    size_t cap = ihex__span_cap(max_span);
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = nu_file_read(path, 16 * cap + IHEX__TEXT_SLACK, &buf, &len);
    if (rc != NU_OK)
        return rc;
    rc = nu_ihex_parse((const char *)buf, len, cap, out, out_err_line);
    free(buf);
    return rc;
}

void nu_ihex_free(struct nu_ihex_image *img)
{
    if (!img)
        return;
    free(img->data);
    memset(img, 0, sizeof(*img));
}
