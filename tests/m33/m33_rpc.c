/* m33_rpc: see m33_rpc.h. Test-only; compiled for the host and the target. */
#include "m33_rpc.h"

#include <string.h>

/* One level per nested call: tx holds our request (then, once sent, our
 * answer to a CALL that arrives while we wait), rx what the other side sent. */
static uint8_t rpc__buf[RPC_DEPTH][2][RPC_MAX];
static struct rpc_msg rpc__tx[RPC_DEPTH], rpc__rx[RPC_DEPTH];
static unsigned rpc__level;

#define RPC_HDR 12u

static void rpc__put(struct rpc_msg *m, const void *p, size_t n)
{
    if (m->bad || n > RPC_MAX - m->len) {
        m->bad = 1;
        return;
    }
    memcpy(m->buf + m->len, p, n);
    m->len += (uint32_t)n;
}

void rpc_put_u32(struct rpc_msg *m, uint32_t v)
{
    uint8_t b[4] = {(uint8_t)v, (uint8_t)(v >> 8), (uint8_t)(v >> 16), (uint8_t)(v >> 24)};
    rpc__put(m, b, 4);
}

void rpc_put_u64(struct rpc_msg *m, uint64_t v)
{
    rpc_put_u32(m, (uint32_t)v);
    rpc_put_u32(m, (uint32_t)(v >> 32));
}

void rpc_put_bytes(struct rpc_msg *m, const void *p, size_t len)
{
    rpc_put_u32(m, (uint32_t)len);
    if (len)
        rpc__put(m, p, len);
}

void rpc_put_str(struct rpc_msg *m, const char *s)
{
    rpc_put_bytes(m, s, s ? strlen(s) + 1 : 0);
}

static const uint8_t *rpc__take(struct rpc_msg *m, size_t n)
{
    if (m->bad || n > m->len - m->pos) {
        m->bad = 1;
        return NULL;
    }
    const uint8_t *p = m->buf + m->pos;
    m->pos += (uint32_t)n;
    return p;
}

uint32_t rpc_get_u32(struct rpc_msg *m)
{
    const uint8_t *b = rpc__take(m, 4);
    return b ? (uint32_t)b[0] | (uint32_t)b[1] << 8 | (uint32_t)b[2] << 16 | (uint32_t)b[3] << 24
             : 0;
}

uint64_t rpc_get_u64(struct rpc_msg *m)
{
    uint64_t lo = rpc_get_u32(m);
    return lo | (uint64_t)rpc_get_u32(m) << 32;
}

const uint8_t *rpc_get_bytes(struct rpc_msg *m, size_t *len)
{
    size_t n = rpc_get_u32(m);
    const uint8_t *p = n ? rpc__take(m, n) : NULL;
    *len = p ? n : 0;
    return p;
}

const char *rpc_get_str(struct rpc_msg *m)
{
    size_t n = 0;
    const uint8_t *p = rpc_get_bytes(m, &n);
    if (!p || p[n - 1] != 0)
        return NULL;
    return (const char *)p;
}

int rpc_get_into(struct rpc_msg *m, void *out, size_t cap, size_t *out_len)
{
    size_t n = 0;
    const uint8_t *p = rpc_get_bytes(m, &n);
    if (out_len)
        *out_len = n;
    if (n > cap)
        return -1;
    if (n)
        memcpy(out, p, n);
    return 0;
}

static struct rpc_msg *rpc__start(struct rpc_msg *m, uint8_t *buf, uint32_t kind, uint32_t word)
{
    m->buf = buf;
    m->len = 4;
    m->pos = 0;
    m->bad = 0;
    rpc_put_u32(m, kind);
    rpc_put_u32(m, word);
    return m;
}

struct rpc_msg *rpc_begin(uint32_t op)
{
    if (rpc__level >= RPC_DEPTH)
        rpc_fatal("calls nested too deep");
    return rpc__start(&rpc__tx[rpc__level], rpc__buf[rpc__level][0], RPC_CALL, op);
}

static void rpc__send(struct rpc_msg *m)
{
    if (m->bad)
        rpc_fatal("frame overflow");
    uint32_t n = m->len - 4;
    m->buf[0] = (uint8_t)n, m->buf[1] = (uint8_t)(n >> 8);
    m->buf[2] = (uint8_t)(n >> 16), m->buf[3] = (uint8_t)(n >> 24);
    if (m33_link_send(m->buf, m->len) != 0)
        rpc_fatal("link send");
}

/* Receive one frame into level `lv`'s rx; returns its kind, *word = op/status. */
static uint32_t rpc__recv(unsigned lv, uint32_t *word)
{
    struct rpc_msg *m = &rpc__rx[lv];
    m->buf = rpc__buf[lv][1];
    m->pos = 0;
    m->bad = 0;
    if (m33_link_recv(m->buf, 4) != 0)
        rpc_fatal("link closed");
    uint32_t n = (uint32_t)m->buf[0] | (uint32_t)m->buf[1] << 8 | (uint32_t)m->buf[2] << 16 |
                 (uint32_t)m->buf[3] << 24;
    if (n < 8 || n > RPC_MAX - 4 || m33_link_recv(m->buf + 4, n) != 0)
        rpc_fatal("bad frame");
    m->len = n + 4;
    m->pos = 4;
    uint32_t kind = rpc_get_u32(m);
    *word = rpc_get_u32(m);
    return kind;
}

/* A CALL is in level lv's rx: answer it from level lv's tx. */
static void rpc__serve(unsigned lv, uint32_t op)
{
    struct rpc_msg *out = rpc__start(&rpc__tx[lv], rpc__buf[lv][0], RPC_RET, 0);
    int rc = m33_dispatch(op, &rpc__rx[lv], out);
    uint32_t st = (uint32_t)rc;
    out->buf[8] = (uint8_t)st, out->buf[9] = (uint8_t)(st >> 8);
    out->buf[10] = (uint8_t)(st >> 16), out->buf[11] = (uint8_t)(st >> 24);
    rpc__send(out);
}

int rpc_call(struct rpc_msg *tx, struct rpc_msg **rx)
{
    unsigned lv = rpc__level++;
    rpc__send(tx);
    for (;;) {
        uint32_t word = 0;
        uint32_t kind = rpc__recv(lv, &word);
        if (kind == RPC_RET) {
            *rx = &rpc__rx[lv];
            return (int)word;
        }
        if (kind != RPC_CALL)
            rpc_fatal("bad frame kind");
        rpc__serve(lv, word);
    }
}

void rpc_done(void)
{
    if (rpc__level)
        rpc__level--;
}

int rpc_serve_one(void)
{
    unsigned lv = rpc__level++;
    uint32_t word = 0;
    if (rpc__recv(lv, &word) != RPC_CALL)
        rpc_fatal("expected a call");
    rpc__serve(lv, word);
    rpc__level--;
    return 0;
}

unsigned rpc_depth(void)
{
    return rpc__level;
}
