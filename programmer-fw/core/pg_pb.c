#include "pg_pb.h"

#include "nu_err.h"

#include <string.h>

#define PG_PB__FIELD_MAX 536870911u /* 2^29 - 1 */

void pg_pb_reader_init(struct pg_pb_reader *r, const uint8_t *buf, size_t len)
{
    r->p = buf;
    r->end = buf ? buf + len : buf;
}

static int pb__varint(struct pg_pb_reader *r, uint64_t *out)
{
    uint64_t v = 0;
    for (unsigned i = 0; i < 10; i++) {
        if (r->p >= r->end)
            return NU_ERR_DECODE;
        uint8_t b = *r->p++;
        if (i == 9 && b > 1)
            return NU_ERR_DECODE; /* more than 64 bits */
        v |= (uint64_t)(b & 0x7f) << (7 * i);
        if (!(b & 0x80)) {
            *out = v;
            return NU_OK;
        }
    }
    return NU_ERR_DECODE;
}

static int pb__fixed(struct pg_pb_reader *r, unsigned n, uint64_t *out)
{
    if ((size_t)(r->end - r->p) < n)
        return NU_ERR_DECODE;
    uint64_t v = 0;
    for (unsigned i = 0; i < n; i++)
        v |= (uint64_t)r->p[i] << (8 * i);
    r->p += n;
    *out = v;
    return NU_OK;
}

int pg_pb_next(struct pg_pb_reader *r, struct pg_pb_field *out)
{
    if (r->p >= r->end)
        return NU_ERR_NOT_FOUND;
    uint64_t key = 0;
    int rc = pb__varint(r, &key);
    if (rc != NU_OK)
        return rc;
    uint64_t num = key >> 3;
    if (num == 0 || num > PG_PB__FIELD_MAX)
        return NU_ERR_DECODE;
    memset(out, 0, sizeof(*out));
    out->num = (uint32_t)num;
    out->wire = (enum pg_pb_wire)(key & 7);
    switch (out->wire) {
    case PG_PB_VARINT:
        return pb__varint(r, &out->u);
    case PG_PB_I64:
        return pb__fixed(r, 8, &out->u);
    case PG_PB_I32:
        return pb__fixed(r, 4, &out->u);
    case PG_PB_LEN: {
        uint64_t n = 0;
        if ((rc = pb__varint(r, &n)) != NU_OK)
            return rc;
        if (n > (uint64_t)(r->end - r->p))
            return NU_ERR_DECODE;
        out->b.p = r->p;
        out->b.len = (size_t)n;
        r->p += n;
        return NU_OK;
    }
    default:
        return NU_ERR_DECODE; /* groups (3, 4) and reserved types */
    }
}

static const struct pg_pb_desc *pb__find(const struct pg_pb_desc *d, size_t n, uint32_t num,
                                         size_t *out_i)
{
    for (size_t i = 0; i < n; i++) {
        if (d[i].num == num) {
            *out_i = i;
            return &d[i];
        }
    }
    return NULL;
}

static int pb__store(const struct pg_pb_desc *d, const struct pg_pb_field *f, uint8_t *base)
{
    switch (d->kind) {
    case PG_PB_U32:
        if (f->wire != PG_PB_VARINT)
            return NU_ERR_DECODE;
        if (f->u > UINT32_MAX)
            return NU_ERR_DECODE;
        *(uint32_t *)(void *)(base + d->off) = (uint32_t)f->u;
        return NU_OK;
    case PG_PB_U64:
        if (f->wire != PG_PB_VARINT)
            return NU_ERR_DECODE;
        *(uint64_t *)(void *)(base + d->off) = f->u;
        return NU_OK;
    case PG_PB_BYTES:
        if (f->wire != PG_PB_LEN)
            return NU_ERR_DECODE;
        if (f->b.len > d->max_len)
            return NU_ERR_TOO_LARGE;
        *(struct pg_bytes *)(void *)(base + d->off) = f->b;
        return NU_OK;
    case PG_PB_REPEATED: {
        if (f->wire != PG_PB_LEN)
            return NU_ERR_DECODE;
        if (f->b.len > d->max_len)
            return NU_ERR_TOO_LARGE;
        size_t *count = (size_t *)(void *)(base + d->count_off);
        if (*count >= d->max_count)
            return NU_ERR_TOO_LARGE;
        struct pg_bytes *arr = (struct pg_bytes *)(void *)(base + d->off);
        arr[(*count)++] = f->b;
        return NU_OK;
    }
    }
    return NU_ERR_DECODE;
}

int pg_pb_decode(const uint8_t *buf, size_t len, const struct pg_pb_desc *desc, size_t n, void *out)
{
    /* One bit per table entry: a singular field may appear once. */
    uint64_t seen = 0;
    if (n > 64)
        return NU_ERR_INVALID_ARG;
    struct pg_pb_reader r;
    pg_pb_reader_init(&r, buf, len);
    for (;;) {
        struct pg_pb_field f;
        int rc = pg_pb_next(&r, &f);
        if (rc == NU_ERR_NOT_FOUND)
            return NU_OK;
        if (rc != NU_OK)
            return rc;
        size_t i = 0;
        const struct pg_pb_desc *d = pb__find(desc, n, f.num, &i);
        if (!d)
            continue; /* unknown field: newer peer */
        if (d->kind != PG_PB_REPEATED) {
            if (seen & (1ull << i))
                return NU_ERR_DECODE;
            seen |= 1ull << i;
        }
        if ((rc = pb__store(d, &f, out)) != NU_OK)
            return rc;
    }
}

/* ---- writer ---------------------------------------------------------------- */

void pg_pb_writer_init(struct pg_pb_writer *w, uint8_t *buf, size_t cap)
{
    w->buf = buf;
    w->cap = buf ? cap : 0;
    w->len = 0;
    w->err = NU_OK;
}

static size_t pb__varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static void pb__raw_varint(struct pg_pb_writer *w, uint64_t v)
{
    if (w->err)
        return;
    if (w->cap - w->len < pb__varint_len(v)) {
        w->err = NU_ERR_TOO_LARGE;
        return;
    }
    while (v >= 0x80) {
        w->buf[w->len++] = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    w->buf[w->len++] = (uint8_t)v;
}

static void pb__key(struct pg_pb_writer *w, uint32_t num, enum pg_pb_wire wire)
{
    pb__raw_varint(w, ((uint64_t)num << 3) | (uint64_t)wire);
}

void pg_pb_put_u64(struct pg_pb_writer *w, uint32_t num, uint64_t v)
{
    if (v == 0)
        return;
    pb__key(w, num, PG_PB_VARINT);
    pb__raw_varint(w, v);
}

void pg_pb_put_bytes(struct pg_pb_writer *w, uint32_t num, const void *data, size_t len)
{
    if (len == 0)
        return;
    pb__key(w, num, PG_PB_LEN);
    pb__raw_varint(w, len);
    if (w->err)
        return;
    if (!data || w->cap - w->len < len) {
        w->err = data ? NU_ERR_TOO_LARGE : NU_ERR_INVALID_ARG;
        return;
    }
    memcpy(w->buf + w->len, data, len);
    w->len += len;
}

void pg_pb_put_str(struct pg_pb_writer *w, uint32_t num, const char *s)
{
    if (s)
        pg_pb_put_bytes(w, num, s, strlen(s));
}

size_t pg_pb_begin(struct pg_pb_writer *w, uint32_t num)
{
    pb__key(w, num, PG_PB_LEN);
    return w->len; /* content starts here; the length is inserted by end */
}

void pg_pb_end(struct pg_pb_writer *w, size_t mark)
{
    if (w->err)
        return;
    size_t body = w->len - mark;
    size_t n = pb__varint_len(body);
    if (w->cap - w->len < n) {
        w->err = NU_ERR_TOO_LARGE;
        return;
    }
    memmove(w->buf + mark + n, w->buf + mark, body);
    size_t save = w->len;
    w->len = mark;
    pb__raw_varint(w, body);
    w->len = save + n;
}
