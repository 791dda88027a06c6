/*
 * m33_host — the host half of programmer_test_core_m33: the programmer core
 * runs on an emulated Cortex-M33 (qemu-system-arm -M mps2-an505, the image
 * of tests/m33/target), and the tests of tests/unit/programmer/test_core.c
 * drive it unchanged through this file's pg_core_* functions.
 *
 * Each pg_core_* call is forwarded to the image; each HAL op the core makes
 * there comes back here and runs on the rig's HAL (POSIX KeyStore and flash,
 * fake cloud, simulated chips, wolfCrypt), so a test sees exactly what it
 * sees on the host, but every byte the core reads, writes, encodes and
 * decodes lives in the M33's memory and goes through its compiled code.
 * rig_produce() runs the socket workers on the image's cooperative scheduler.
 *
 * At exit the image reports its stacks (painted, read back) and exits
 * through semihosting; a fault, a stack overflow or a link error there makes
 * the runner fail whatever CUnit counted. Test-only.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE 1 /* PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP */
#endif
#include "m33_rpc.h"
#include "pg_core.h"
#include "rig.h"

#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef M33_IMAGE
#error "M33_IMAGE (path of the target image) must be defined"
#endif

static const struct pg_hal *h__hal; /* the rig's HAL of the current core */
static pid_t h__qemu = -1;
static int h__up = -1, h__down = -1;
static char h__dir[512];

/* ---- link -------------------------------------------------------------------------- */

void rpc_fatal(const char *why)
{
    fprintf(stderr, "m33_host: link to the emulated M33 failed: %s\n", why);
    if (h__qemu > 0) {
        int st = 0;
        kill(h__qemu, SIGTERM);
        waitpid(h__qemu, &st, 0);
    }
    _exit(99);
}

int m33_link_send(const void *p, size_t len)
{
    const uint8_t *b = p;
    while (len) {
        ssize_t n = write(h__down, b, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

int m33_link_recv(void *p, size_t len)
{
    uint8_t *b = p;
    while (len) {
        ssize_t n = read(h__up, b, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        b += n;
        len -= (size_t)n;
    }
    return 0;
}

static void h__finish(void);
static struct rpc_msg *h__begin(uint32_t op);
static void h__end(void);

/* Start qemu with the image in a fresh folder holding the two FIFOs. */
static void h__start(void)
{
    if (h__qemu > 0)
        return;
    const char *tmp = getenv("TMPDIR");
    snprintf(h__dir, sizeof(h__dir), "%s/m33-XXXXXX", tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(h__dir))
        rpc_fatal("mkdtemp");
    char up[600], down[600];
    snprintf(up, sizeof(up), "%s/m33.up", h__dir);
    snprintf(down, sizeof(down), "%s/m33.down", h__dir);
    if (mkfifo(up, 0600) != 0 || mkfifo(down, 0600) != 0)
        rpc_fatal("mkfifo");
    fflush(NULL);
    h__qemu = fork();
    if (h__qemu < 0)
        rpc_fatal("fork");
    if (h__qemu == 0) {
        int null = open("/dev/null", O_RDONLY);
        if (null >= 0)
            dup2(null, 0);
        const char *image = getenv("M33_IMAGE_OVERRIDE"); /* another build of the image */
        if (chdir(h__dir) != 0)
            _exit(127);
        execlp("qemu-system-arm", "qemu-system-arm", "-M", "mps2-an505", "-cpu", "cortex-m33",
               "-nographic", "-monitor", "none", "-serial", "none", "-semihosting-config",
               "enable=on,target=native", "-kernel", image && *image ? image : M33_IMAGE,
               (char *)NULL);
        _exit(127);
    }
    /* The image opens m33.up for writing, then m33.down for reading. */
    h__up = open(up, O_RDONLY | O_NONBLOCK);
    for (int i = 0; h__down < 0 && i < 3000; i++) {
        h__down = open(down, O_WRONLY | O_NONBLOCK);
        if (h__down < 0) {
            int st = 0;
            if (waitpid(h__qemu, &st, WNOHANG) == h__qemu) {
                h__qemu = -1;
                rpc_fatal("qemu exited before opening the link");
            }
            nanosleep(&(struct timespec){0, 10 * 1000 * 1000}, NULL);
        }
    }
    if (h__up < 0 || h__down < 0)
        rpc_fatal("qemu did not open the link within 30 s");
    fcntl(h__up, F_SETFL, fcntl(h__up, F_GETFL) & ~O_NONBLOCK);
    fcntl(h__down, F_SETFL, fcntl(h__down, F_GETFL) & ~O_NONBLOCK);
    signal(SIGPIPE, SIG_IGN);
    atexit(h__finish);
}

/* ---- callbacks into the image --------------------------------------------------------- */

struct h__cb {
    uint32_t fn, ctx;
};

static int h__cb_ecdh(void *ectx, const uint8_t peer[PG_P256_PUB_LEN], uint8_t out[32])
{
    const struct h__cb *cb = ectx;
    struct rpc_msg *m = rpc_begin(OP_CB_ECDH), *r;
    rpc_put_u32(m, cb->fn);
    rpc_put_u32(m, cb->ctx);
    rpc_put_bytes(m, peer, PG_P256_PUB_LEN);
    int rc = rpc_call(m, &r);
    size_t n = 0;
    if (rpc_get_into(r, out, 32, &n) != 0 || (rc == NU_OK && n != 32))
        rc = NU_ERR_CRYPTO;
    rpc_done();
    return rc;
}

static int h__cb_sign(void *sctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    const struct h__cb *cb = sctx;
    struct rpc_msg *m = rpc_begin(OP_CB_SIGN), *r;
    rpc_put_u32(m, cb->fn);
    rpc_put_u32(m, cb->ctx);
    rpc_put_u32(m, (uint32_t)*sig_len);
    rpc_put_bytes(m, digest, 32);
    int rc = rpc_call(m, &r);
    if (rpc_get_into(r, sig, *sig_len, sig_len) != 0)
        rc = NU_ERR_TOO_LARGE;
    rpc_done();
    return rc;
}

static int h__cb_read(void *rctx, uint32_t off, uint8_t *buf, size_t len)
{
    const struct h__cb *cb = rctx;
    int rc = NU_OK;
    while (len && rc == NU_OK) { /* in frames the link carries */
        size_t n = len < 16384 ? len : 16384, got = 0;
        struct rpc_msg *m = rpc_begin(OP_CB_READ), *r;
        rpc_put_u32(m, cb->fn);
        rpc_put_u32(m, cb->ctx);
        rpc_put_u32(m, off);
        rpc_put_u32(m, (uint32_t)n);
        rc = rpc_call(m, &r);
        if (rpc_get_into(r, buf, n, &got) != 0 || (rc == NU_OK && got != n))
            rc = NU_ERR_IO;
        rpc_done();
        off += (uint32_t)n, buf += n, len -= n;
    }
    return rc;
}

static uint32_t h__slots[4];

static void h__cb_msg(void *cb_ctx, const char *topic, const uint8_t *payload, size_t len)
{
    struct rpc_msg *m = h__begin(OP_CB_MSG), *r;
    rpc_put_u32(m, *(const uint32_t *)cb_ctx);
    rpc_put_u32(m, 0);
    rpc_put_str(m, topic);
    rpc_put_bytes(m, payload, len);
    rpc_call(m, &r);
    h__end();
}

/* ---- the HAL ops the image forwards ---------------------------------------------------- */

#define HAS(tbl, op) (h__hal && h__hal->tbl && h__hal->tbl->op)
#define CTX(tbl) (h__hal->tbl##_ctx)

static int h__ks(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    const struct pg_keystore_ops *ks = h__hal ? h__hal->ks : NULL;
    uint8_t buf[PG_PACKAGE_MAX + 64];
    size_t n = 0, len = 0;
    uint32_t v = 0;
    int rc = NU_ERR_NOT_SUPPORTED;
    if (!ks)
        return rc;
    switch (op) {
    case OP_KS_KEYS_GENERATE:
        return ks->keys_generate ? ks->keys_generate(CTX(ks)) : rc;
    case OP_KS_LINE_KEY_GENERATE:
        return ks->line_key_generate ? ks->line_key_generate(CTX(ks)) : rc;
    case OP_KS_ATTEST: {
        /* The statement, signature and certificate go back as three fields. */
        static struct pg_attestation att;
        const uint8_t *nonce = rpc_get_bytes(in, &n);
        memset(&att, 0, sizeof(att));
        if (ks->attest && n == PG_ATTEST_NONCE_LEN)
            rc = ks->attest(CTX(ks), nonce, &att);
        rpc_put_bytes(out, att.stmt, rc == NU_OK ? att.stmt_len : 0);
        rpc_put_bytes(out, att.sig, rc == NU_OK ? att.sig_len : 0);
        rpc_put_bytes(out, att.cert, rc == NU_OK ? att.cert_len : 0);
        return rc;
    }
    case OP_KS_PUBKEY: {
        uint32_t key = rpc_get_u32(in);
        if (ks->pubkey)
            rc = ks->pubkey(CTX(ks), (enum pg_key)key, buf);
        rpc_put_bytes(out, buf, rc == NU_OK ? PG_P256_PUB_LEN : 0);
        return rc;
    }
    case OP_KS_SIGN: {
        uint32_t key = rpc_get_u32(in);
        const uint8_t *d = rpc_get_bytes(in, &n);
        len = rpc_get_u32(in);
        if (len > sizeof(buf))
            len = sizeof(buf);
        if (ks->sign_digest && n == 32)
            rc = ks->sign_digest(CTX(ks), (enum pg_key)key, d, buf, &len);
        rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
        return rc;
    }
    case OP_KS_ECDH: {
        uint32_t key = rpc_get_u32(in);
        const uint8_t *peer = rpc_get_bytes(in, &n);
        if (ks->ecdh && n == PG_P256_PUB_LEN)
            rc = ks->ecdh(CTX(ks), (enum pg_key)key, peer, buf);
        rpc_put_bytes(out, buf, rc == NU_OK ? 32 : 0);
        return rc;
    }
    case OP_KS_COUNTER_READ: {
        const char *job = rpc_get_str(in);
        if (ks->counter_read)
            rc = ks->counter_read(CTX(ks), job, &v);
        rpc_put_u32(out, v);
        return rc;
    }
    case OP_KS_COUNTER_INC: {
        const char *job = rpc_get_str(in);
        uint32_t limit = rpc_get_u32(in);
        if (ks->counter_increment)
            rc = ks->counter_increment(CTX(ks), job, limit, &v);
        rpc_put_u32(out, v);
        return rc;
    }
    case OP_KS_BLOB_GET: {
        const char *name = rpc_get_str(in);
        size_t cap = rpc_get_u32(in);
        if (cap > RPC_MAX)
            cap = RPC_MAX;
        if (ks->blob_get)
            rc = ks->blob_get(CTX(ks), name, buf, cap, &len);
        rpc_put_u32(out, (uint32_t)len);
        rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
        return rc;
    }
    case OP_KS_BLOB_PUT: {
        const char *name = rpc_get_str(in);
        const uint8_t *d = rpc_get_bytes(in, &n);
        return ks->blob_put ? ks->blob_put(CTX(ks), name, d, n) : rc;
    }
    }
    return rc;
}

static int h__flash(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    static uint8_t buf[RPC_MAX];
    const struct pg_flash_ops *fl = h__hal ? h__hal->flash : NULL;
    uint32_t area = rpc_get_u32(in), v = 0;
    size_t n = 0;
    int rc = NU_ERR_NOT_SUPPORTED;
    if (!fl)
        return rc;
    if (op == OP_FL_SIZE) {
        if (fl->size)
            rc = fl->size(CTX(flash), (enum pg_flash_area)area, &v);
        rpc_put_u32(out, v);
    } else if (op == OP_FL_READ) {
        uint32_t off = rpc_get_u32(in), len = rpc_get_u32(in);
        if (len > sizeof(buf) - 64)
            rc = NU_ERR_TOO_LARGE;
        else if (fl->read)
            rc = fl->read(CTX(flash), (enum pg_flash_area)area, off, buf, len);
        rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
    } else if (op == OP_FL_WRITE) {
        uint32_t off = rpc_get_u32(in);
        const uint8_t *d = rpc_get_bytes(in, &n);
        if (fl->write)
            rc = fl->write(CTX(flash), (enum pg_flash_area)area, off, d, n);
    } else if (op == OP_FL_ERASE && fl->erase) {
        rc = fl->erase(CTX(flash), (enum pg_flash_area)area);
    }
    return rc;
}

static int h__tp(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    static uint8_t resp[RPC_MAX];
    const struct pg_transport_ops *tp = h__hal ? h__hal->tp : NULL;
    const char *topic = rpc_get_str(in);
    size_t n = 0, len = 0;
    int rc = NU_ERR_NOT_SUPPORTED;
    if (op == OP_TP_SUBSCRIBE) {
        uint32_t slot = rpc_get_u32(in);
        if (slot >= 4)
            return NU_ERR_INVALID_ARG;
        h__slots[slot] = slot;
        return HAS(tp, subscribe) ? tp->subscribe(CTX(tp), topic, h__cb_msg, &h__slots[slot]) : rc;
    }
    const uint8_t *p = rpc_get_bytes(in, &n);
    if (op == OP_TP_PUBLISH) {
        uint32_t qos = rpc_get_u32(in), retain = rpc_get_u32(in);
        return HAS(tp, publish) ? tp->publish(CTX(tp), topic, p, n, (int)qos, (int)retain) : rc;
    }
    uint32_t timeout = rpc_get_u32(in);
    size_t cap = rpc_get_u32(in);
    if (cap > sizeof(resp) - 64)
        cap = sizeof(resp) - 64;
    char reply_topic[160] = "", sig[160] = "";
    if (op == OP_TP_REQUEST_SIGNED && HAS(tp, request_signed))
        rc = tp->request_signed(CTX(tp), topic, p, n, timeout, resp, cap, &len, reply_topic,
                                sizeof(reply_topic), sig, sizeof(sig));
    else if (op == OP_TP_REQUEST && HAS(tp, request))
        rc = tp->request(CTX(tp), topic, p, n, timeout, resp, cap, &len);
    rpc_put_u32(out, (uint32_t)len);
    rpc_put_bytes(out, resp, rc == NU_OK ? len : 0);
    if (op == OP_TP_REQUEST_SIGNED) {
        rpc_put_str(out, reply_topic);
        rpc_put_str(out, sig);
    }
    return rc;
}

static int h__tgt(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    const struct pg_target_ops *t = h__hal ? h__hal->tgt : NULL;
    void *ctx = h__hal ? h__hal->tgt_ctx : NULL;
    unsigned s = rpc_get_u32(in);
    uint8_t buf[4096];
    size_t n = 0, len = 0;
    int rc = NU_ERR_NOT_SUPPORTED;
    if (!t)
        return rc;
    switch (op) {
    case OP_TG_INSERT:
        return t->insert ? t->insert(ctx, s) : rc;
    case OP_TG_REMOVE:
        return t->remove ? t->remove(ctx, s) : rc;
    case OP_TG_BLANK:
        return t->blank_check ? t->blank_check(ctx, s) : rc;
    case OP_TG_RESET:
        return t->reset ? t->reset(ctx, s) : rc;
    case OP_TG_LOCK:
        return t->lock ? t->lock(ctx, s) : rc;
    case OP_TG_STATE: {
        enum pg_chip_state st = PG_CHIP_BLANK;
        if (t->state)
            rc = t->state(ctx, s, &st);
        rpc_put_u32(out, (uint32_t)st);
        return rc;
    }
    case OP_TG_FLASH_WRITE: {
        uint32_t off = rpc_get_u32(in);
        const uint8_t *d = rpc_get_bytes(in, &n);
        return t->flash_write ? t->flash_write(ctx, s, off, d, n) : rc;
    }
    }
    const uint8_t *p = rpc_get_bytes(in, &n);
    switch (op) {
    case OP_TG_OTP:
        return t->otp_write_rotpk_hash && n == 32 ? t->otp_write_rotpk_hash(ctx, s, p) : rc;
    case OP_TG_BOOT_KEY:
        return t->write_boot_key && n == PG_P256_PUB_LEN ? t->write_boot_key(ctx, s, p) : rc;
    case OP_TG_WRITE_CERT:
        return t->write_cert ? t->write_cert(ctx, s, p, n) : rc;
    }
    size_t cap = rpc_get_u32(in);
    if (cap > sizeof(buf))
        cap = sizeof(buf);
    if (op == OP_TG_READ_UID && t->read_uid)
        rc = t->read_uid(ctx, s, buf, cap, &len);
    else if (op == OP_TG_KEYGEN_CSR && t->keygen_csr && p && p[n - 1] == 0)
        rc = t->keygen_csr(ctx, s, (const char *)p, buf, cap, &len);
    else if (op == OP_TG_READ_PUB && t->read_pubkey && (len = PG_P256_PUB_LEN))
        rc = t->read_pubkey(ctx, s, buf);
    else if (op == OP_TG_ATTEST && t->attest && n == 32)
        rc = t->attest(ctx, s, p, buf, cap, &len);
    else if (op == OP_TG_OTP_READ && t->otp_read_rotpk_hash && (len = 32))
        rc = t->otp_read_rotpk_hash(ctx, s, buf);
    else if (op == OP_TG_CSR && t->csr && p && p[n - 1] == 0)
        rc = t->csr(ctx, s, (const char *)p, buf, cap, &len);
    else if (op == OP_TG_READ_CERT && t->read_cert)
        rc = t->read_cert(ctx, s, buf, cap, &len);
    rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
    return rc;
}

static int h__sha(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    const struct pg_crypto_ops *c = h__hal->cry;
    struct pg_sha256 s;
    uint8_t md[32];
    size_t n = 0, dl = 0;
    int rc = NU_ERR_NOT_SUPPORTED;
    if (rpc_get_into(in, s.opaque, sizeof(s.opaque), &n) != 0 || n != sizeof(s.opaque))
        return NU_ERR_INVALID_ARG;
    const uint8_t *d = rpc_get_bytes(in, &dl);
    if (op == OP_CR_SHA_INIT && c->sha256_init)
        rc = c->sha256_init(CTX(cry), &s);
    else if (op == OP_CR_SHA_UPDATE && c->sha256_update)
        rc = c->sha256_update(CTX(cry), &s, d, dl);
    else if (op == OP_CR_SHA_FINAL && c->sha256_final)
        rc = c->sha256_final(CTX(cry), &s, md);
    rpc_put_bytes(out, s.opaque, sizeof(s.opaque));
    if (op == OP_CR_SHA_FINAL)
        rpc_put_bytes(out, md, rc == NU_OK ? 32 : 0);
    return rc;
}

static int h__cry_buf(uint32_t op, struct rpc_msg *in, struct rpc_msg *out, uint8_t *buf)
{
    const struct pg_crypto_ops *c = h__hal ? h__hal->cry : NULL;
    size_t a = 0, b = 0, d = 0, len = 0;
    int rc = NU_ERR_NOT_SUPPORTED;
    if (!c)
        return rc;
    if (op == OP_CR_SHA_INIT || op == OP_CR_SHA_UPDATE || op == OP_CR_SHA_FINAL)
        return h__sha(op, in, out);
    switch (op) {
    case OP_CR_VERIFY: {
        const uint8_t *pub = rpc_get_bytes(in, &a), *dg = rpc_get_bytes(in, &b);
        const uint8_t *sig = rpc_get_bytes(in, &d);
        return c->p256_verify && a == 65 && b == 32 ? c->p256_verify(CTX(cry), pub, dg, sig, d)
                                                    : rc;
    }
    case OP_CR_GCM_DECRYPT: {
        const uint8_t *key = rpc_get_bytes(in, &a), *nonce = rpc_get_bytes(in, &b);
        const uint8_t *aad = rpc_get_bytes(in, &d), *ct = rpc_get_bytes(in, &len);
        size_t tl = 0;
        const uint8_t *tag = rpc_get_bytes(in, &tl);
        if (c->aes256gcm_decrypt && a == 32 && b == 12 && tl == 16 && len <= RPC_MAX)
            rc = c->aes256gcm_decrypt(CTX(cry), key, nonce, aad, d, ct, len, buf, tag);
        rpc_put_bytes(out, buf, len); /* zeroed by the op on failure, as the core expects */
        return rc;
    }
    case OP_CR_SEAL_OPEN: {
        struct h__cb cb = {rpc_get_u32(in), rpc_get_u32(in)};
        const uint8_t *rpub = rpc_get_bytes(in, &a), *aad = rpc_get_bytes(in, &b);
        const uint8_t *box = rpc_get_bytes(in, &d);
        size_t cap = rpc_get_u32(in);
        if (cap > RPC_MAX)
            cap = RPC_MAX;
        if (c->seal_open && a == 65)
            rc = c->seal_open(CTX(cry), h__cb_ecdh, &cb, rpub, aad, b, box, d, buf, cap, &len);
        rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
        return rc;
    }
    case OP_CR_CSR_MAKE: {
        struct h__cb cb = {rpc_get_u32(in), rpc_get_u32(in)};
        const uint8_t *pub = rpc_get_bytes(in, &a);
        const char *cn = rpc_get_str(in), *ou = rpc_get_str(in), *o = rpc_get_str(in);
        size_t cap = rpc_get_u32(in);
        if (cap > RPC_MAX)
            cap = RPC_MAX;
        if (c->csr_make && a == 65)
            rc = c->csr_make(CTX(cry), h__cb_sign, &cb, pub, cn, ou, o, buf, cap, &len);
        rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
        return rc;
    }
    case OP_CR_CSR_CHECK: {
        const uint8_t *der = rpc_get_bytes(in, &a);
        const char *cn = rpc_get_str(in);
        if (c->csr_check)
            rc = c->csr_check(CTX(cry), der, a, cn, buf);
        rpc_put_bytes(out, buf, rc == NU_OK ? 65 : 0);
        return rc;
    }
    case OP_CR_CERT_CHECK: {
        const uint8_t *leaf = rpc_get_bytes(in, &a);
        uint32_t n = rpc_get_u32(in);
        struct pg_der chain[8];
        struct pg_cert_facts f;
        memset(&f, 0, sizeof(f));
        if (n > 8)
            return NU_ERR_INVALID_ARG;
        for (uint32_t i = 0; i < n; i++)
            chain[i].der = rpc_get_bytes(in, &chain[i].len);
        if (c->cert_check)
            rc = c->cert_check(CTX(cry), leaf, a, chain, n, &f);
        rpc_put_bytes(out, f.pub, sizeof(f.pub));
        rpc_put_bytes(out, f.serial_hex, sizeof(f.serial_hex));
        rpc_put_bytes(out, f.cn, sizeof(f.cn));
        return rc;
    }
    case OP_CR_PUBKEY_PARSE: {
        const uint8_t *p = rpc_get_bytes(in, &a);
        if (c->pubkey_parse)
            rc = c->pubkey_parse(CTX(cry), p, a, buf);
        rpc_put_bytes(out, buf, rc == NU_OK ? 65 : 0);
        return rc;
    }
    case OP_CR_IMAGE_VERIFY: {
        struct h__cb cb = {rpc_get_u32(in), rpc_get_u32(in)};
        uint32_t size = rpc_get_u32(in);
        const uint8_t *rotpk = rpc_get_bytes(in, &a), *hash = rpc_get_bytes(in, &b);
        if (c->image_verify && a == 65 && b == 32)
            rc = c->image_verify(CTX(cry), h__cb_read, &cb, size, rotpk, hash);
        return rc;
    }
    case OP_CR_CERT_ISSUE: {
        /* The issuer's key stays on the target side: its signer comes back as
         * OP_CB_SIGN calls, as csr_make's does. */
        struct h__cb cb = {rpc_get_u32(in), rpc_get_u32(in)};
        const uint8_t *issuer = rpc_get_bytes(in, &a), *pub = rpc_get_bytes(in, &b);
        const char *cn = rpc_get_str(in);
        uint64_t now_s = rpc_get_u64(in);
        size_t cap = rpc_get_u32(in);
        if (cap > RPC_MAX)
            cap = RPC_MAX;
        if (c->cert_issue && b == 65)
            rc =
                c->cert_issue(CTX(cry), h__cb_sign, &cb, issuer, a, pub, cn, now_s, buf, cap, &len);
        rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
        return rc;
    }
    }
    return rc;
}

/* Crypto ops may nest (a callback into the image runs more ops): own buffer. */
static int h__cry(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    uint8_t *buf = calloc(1, RPC_MAX);
    int rc = buf ? h__cry_buf(op, in, out, buf) : NU_ERR_NOMEM;
    free(buf);
    return rc;
}

static int h__sys(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    static uint8_t buf[RPC_MAX];
    switch (op) {
    case OP_CLK_NOW:
        rpc_put_u64(out, HAS(clk, now_ms) ? h__hal->clk->now_ms(CTX(clk)) : 0);
        return NU_OK;
    case OP_CLK_MONO:
        rpc_put_u64(out, HAS(clk, mono_ms) ? h__hal->clk->mono_ms(CTX(clk)) : 0);
        return NU_OK;
    case OP_CLK_SLEEP: {
        uint32_t ms = rpc_get_u32(in);
        if (HAS(clk, sleep_ms))
            h__hal->clk->sleep_ms(CTX(clk), ms);
        return NU_OK;
    }
    case OP_RNG_FILL: {
        uint32_t len = rpc_get_u32(in);
        int rc = len > sizeof(buf) - 64 ? NU_ERR_TOO_LARGE
                 : HAS(rng, fill)       ? h__hal->rng->fill(CTX(rng), buf, len)
                                        : NU_ERR_NOT_SUPPORTED;
        rpc_put_bytes(out, buf, rc == NU_OK ? len : 0);
        return rc;
    }
    case OP_LOG_WRITE: {
        uint32_t level = rpc_get_u32(in);
        const char *line = rpc_get_str(in);
        if (HAS(log, write) && line)
            h__hal->log->write(CTX(log), (enum pg_log_level)level, line);
        return NU_OK;
    }
    }
    return NU_ERR_NOT_SUPPORTED;
}

int m33_dispatch(uint32_t op, struct rpc_msg *in, struct rpc_msg *out)
{
    if (!h__hal)
        return NU_ERR_STATE;
    if (op <= OP_KS_LINE_KEY_GENERATE)
        return h__ks(op, in, out);
    if (op <= OP_FL_ERASE)
        return h__flash(op, in, out);
    if (op <= OP_TP_REQUEST_SIGNED)
        return h__tp(op, in, out);
    if (op <= OP_TG_READ_CERT)
        return h__tgt(op, in, out);
    if (op <= OP_CR_CERT_ISSUE)
        return h__cry(op, in, out);
    if (op < OP_HAL_END)
        return h__sys(op, in, out);
    return NU_ERR_NOT_SUPPORTED;
}

/* ---- the core's API, forwarded to the image ---------------------------------------------- */

/* One call at a time on the link: a test that calls the core from several
 * host threads is serialized here (recursive: callbacks nest on one thread). */
static pthread_mutex_t h__lock = PTHREAD_RECURSIVE_MUTEX_INITIALIZER_NP;

static struct rpc_msg *h__begin(uint32_t op)
{
    pthread_mutex_lock(&h__lock);
    h__start();
    return rpc_begin(op);
}

static void h__end(void)
{
    rpc_done();
    pthread_mutex_unlock(&h__lock);
}

static int h__call0(uint32_t op)
{
    struct rpc_msg *m, *r;
    m = h__begin(op);
    int rc = rpc_call(m, &r);
    h__end();
    return rc;
}

int pg_core_init(struct pg_core *c, const struct pg_hal *hal, const struct pg_config *cfg)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_INIT), *r;
    h__hal = hal;
    rpc_put_str(m, cfg->programmer_id);
    rpc_put_u32(m, cfg->n_sockets);
    rpc_put_u32(m, cfg->request_timeout_ms);
    rpc_put_u32(m, cfg->retries);
    rpc_put_u32(m, cfg->retry_delay_ms);
    rpc_put_str(m, cfg->firmware_version);
    int rc = rpc_call(m, &r);
    h__end();
    return rc;
}

void pg_core_deinit(struct pg_core *c)
{
    (void)c;
    h__call0(OP_C_DEINIT);
}

int pg_core_enrolled(const struct pg_core *c)
{
    (void)c;
    return h__call0(OP_C_ENROLLED);
}

int pg_core_enroll(struct pg_core *c, const char *relay_id, const char *token,
                   const uint8_t *fw_hash, const uint8_t *manifest, size_t manifest_len)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_ENROLL), *r;
    rpc_put_str(m, relay_id);
    rpc_put_str(m, token);
    rpc_put_bytes(m, fw_hash, fw_hash ? 32 : 0);
    rpc_put_bytes(m, manifest, manifest ? manifest_len : 0);
    int rc = rpc_call(m, &r);
    h__end();
    return rc;
}

int pg_core_package_load(struct pg_core *c, const uint8_t *pkg, size_t len)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_PACKAGE_LOAD), *r;
    rpc_put_bytes(m, pkg, len);
    int rc = rpc_call(m, &r);
    h__end();
    return rc;
}

const char *pg_core_job_id(const struct pg_core *c)
{
    static char job[PG_ID_MAX + 1];
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_JOB_ID), *r;
    rpc_call(m, &r);
    const char *s = rpc_get_str(r);
    if (s)
        snprintf(job, sizeof(job), "%s", s);
    h__end();
    return s ? job : NULL;
}

int pg_core_firmware_fetch(struct pg_core *c)
{
    (void)c;
    return h__call0(OP_C_FW_FETCH);
}

int pg_core_firmware_ready(const struct pg_core *c)
{
    (void)c;
    return h__call0(OP_C_FW_READY);
}

int pg_core_production_begin(struct pg_core *c)
{
    (void)c;
    return h__call0(OP_C_PROD_BEGIN);
}

int pg_socket_run(struct pg_core *c, unsigned sock, struct pg_result *out)
{
    static char step[8][64];
    static unsigned next;
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_SOCKET_RUN), *r;
    rpc_put_u32(m, sock);
    int rc = rpc_call(m, &r);
    memset(out, 0, sizeof(*out));
    rpc_get_into(r, out->uid, sizeof(out->uid), &out->uid_len);
    out->provisioned = (int)rpc_get_u32(r);
    out->resumed = (int)rpc_get_u32(r);
    out->already_done = (int)rpc_get_u32(r);
    out->held = (int)rpc_get_u32(r);
    out->error = (int)rpc_get_u32(r);
    const char *st = rpc_get_str(r), *serial = rpc_get_str(r);
    if (st) { /* the core's step names are static strings: keep copies alive */
        char *slot = step[next++ % 8];
        snprintf(slot, 64, "%s", st);
        out->step = slot;
    }
    snprintf(out->serial, sizeof(out->serial), "%s", serial ? serial : "");
    h__end();
    return rc;
}

enum pg_stop pg_core_production_end(struct pg_core *c)
{
    (void)c;
    return (enum pg_stop)h__call0(OP_C_PROD_END);
}

void pg_core_counts(const struct pg_core *c, uint32_t *out_done, uint32_t *out_failed)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_COUNTS), *r;
    rpc_call(m, &r);
    uint32_t d = rpc_get_u32(r), f = rpc_get_u32(r);
    h__end();
    if (out_done)
        *out_done = d;
    if (out_failed)
        *out_failed = f;
}

int pg_core_subscribe(struct pg_core *c)
{
    (void)c;
    return h__call0(OP_C_SUBSCRIBE);
}

int pg_core_poll(struct pg_core *c, int *out_action)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_POLL), *r;
    int rc = rpc_call(m, &r);
    uint32_t a = rpc_get_u32(r);
    h__end();
    if (out_action)
        *out_action = (int)a;
    return rc;
}

/* The rest of pg_core.h, so that no host build of the core is ever linked
 * in beside these (a test using them runs them on the M33 too). */
int pg_core_identity_cert(struct pg_core *c, uint8_t *buf, size_t cap, size_t *out_len)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_IDENTITY_CERT), *r;
    rpc_put_u32(m, (uint32_t)cap);
    int rc = rpc_call(m, &r);
    size_t n = 0;
    uint32_t len = rpc_get_u32(r);
    if (rpc_get_into(r, buf, cap, &n) != 0)
        rc = NU_ERR_TOO_LARGE;
    if (out_len)
        *out_len = len;
    h__end();
    return rc;
}

int pg_core_journal_flush(struct pg_core *c)
{
    (void)c;
    return h__call0(OP_C_JOURNAL_FLUSH);
}

uint32_t pg_core_units_kept(const struct pg_core *c)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_UNITS_KEPT), *r;
    uint32_t units = rpc_call(m, &r) == NU_OK ? rpc_get_u32(r) : 0;
    h__end();
    return units;
}

void pg_core_lease_counts(const struct pg_core *c, struct pg_lease_counts *out)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_LEASE_COUNTS), *r;
    rpc_call(m, &r);
    out->issued = rpc_get_u32(r);
    out->uploaded = rpc_get_u32(r);
    out->pending = rpc_get_u32(r);
    out->units = rpc_get_u32(r);
    h__end();
}

int pg_core_lease_sync(struct pg_core *c)
{
    (void)c;
    return h__call0(OP_C_LEASE_SYNC);
}

void pg_core_link_note(struct pg_core *c, int rc)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_LINK_NOTE), *r;
    rpc_put_u32(m, (uint32_t)rc);
    rpc_call(m, &r);
    h__end();
}

void pg_core_stop(struct pg_core *c, enum pg_stop reason)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_STOP), *r;
    rpc_put_u32(m, (uint32_t)reason);
    rpc_call(m, &r);
    h__end();
}

void pg_core_on_message(void *core, const char *topic, const uint8_t *payload, size_t len)
{
    (void)core;
    struct rpc_msg *m = h__begin(OP_C_ON_MESSAGE), *r;
    rpc_put_str(m, topic);
    rpc_put_bytes(m, payload, len);
    rpc_call(m, &r);
    h__end();
}

int pg_core_status_publish(struct pg_core *c, enum pg_prog_state state)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_STATUS_PUBLISH), *r;
    rpc_put_u32(m, (uint32_t)state);
    int rc = rpc_call(m, &r);
    h__end();
    return rc;
}

int pg_core_status_encode(struct pg_core *c, enum pg_prog_state state, uint8_t *buf, size_t cap,
                          size_t *out_len)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_STATUS_ENCODE), *r;
    rpc_put_u32(m, (uint32_t)state);
    rpc_put_u32(m, (uint32_t)cap);
    int rc = rpc_call(m, &r);
    size_t n = 0;
    if (rpc_get_into(r, buf, cap, &n) != 0)
        rc = NU_ERR_TOO_LARGE;
    if (out_len)
        *out_len = n;
    h__end();
    return rc;
}

int pg_core_topic_status(const struct pg_core *c, char *topic, size_t cap)
{
    (void)c;
    struct rpc_msg *m = h__begin(OP_C_TOPIC_STATUS), *r;
    rpc_put_u32(m, (uint32_t)cap);
    int rc = rpc_call(m, &r);
    if (rpc_get_into(r, topic, cap, NULL) != 0)
        rc = NU_ERR_TOO_LARGE;
    h__end();
    return rc;
}

/* rig.c is compiled with rig_produce renamed: this one runs the sockets on
 * the image's scheduler (one task per socket) instead of host threads. */
enum pg_stop rig_produce(struct rig *r, int *out_rc)
{
    int rc = pg_core_firmware_fetch(r->core);
    if (rc == NU_OK)
        rc = pg_core_production_begin(r->core);
    if (out_rc)
        *out_rc = rc;
    if (rc != NU_OK)
        return PG_STOP_NONE;
    struct rpc_msg *m = h__begin(OP_C_RUN_WORKERS), *rx;
    rpc_put_u32(m, r->sockets);
    rpc_call(m, &rx);
    h__end();
    return pg_core_production_end(r->core);
}

/* ---- the end of the run: stacks, exit status ----------------------------------------------- */

static void h__finish(void)
{
    struct rpc_msg *m = h__begin(OP_T_REPORT), *r;
    rpc_call(m, &r);
    uint32_t core_size = rpc_get_u32(r), ctl_peak = rpc_get_u32(r), ctl_size = rpc_get_u32(r);
    uint32_t stack_size = rpc_get_u32(r), n = rpc_get_u32(r), peak = 0, peaks[16] = {0};
    for (uint32_t i = 0; i < n && i < 16; i++) {
        peaks[i] = rpc_get_u32(r);
        peak = peaks[i] > peak ? peaks[i] : peak;
    }
    uint32_t switches = rpc_get_u32(r);
    h__end();
    m = h__begin(OP_T_EXIT);
    rpc_put_u32(m, 0);
    rpc_call(m, &r);
    h__end();
    int st = 0;
    waitpid(h__qemu, &st, 0);
    int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
    char path[600];
    snprintf(path, sizeof(path), "%s/m33.up", h__dir);
    unlink(path);
    snprintf(path, sizeof(path), "%s/m33.down", h__dir);
    unlink(path);
    rmdir(h__dir);
    /* `name value unit` lines (bench/run.sh reads them from M33_REPORT). */
    char lines[1024];
    snprintf(lines, sizeof(lines),
             "m33_pg_core_struct_bytes %u B\n"
             "m33_control_stack_peak_bytes %u B\n"
             "m33_worker_stack_peak_bytes %u B\n"
             "m33_task_switches %u switches\n",
             core_size, ctl_peak, peak, switches);
    fputs(lines, stdout);
    printf("m33: worker stacks (of %u B each):", stack_size);
    for (uint32_t i = 0; i < n && i < 16; i++)
        printf(" %u", peaks[i]);
    printf("; control stack %u of %u B; qemu exit %d\n", ctl_peak, ctl_size, code);
    const char *rep = getenv("M33_REPORT");
    FILE *f = rep && *rep ? fopen(rep, "w") : NULL;
    if (f) {
        fputs(lines, f);
        fclose(f);
    }
    fflush(stdout);
    if (code != 0) {
        fprintf(stderr, "m33_host: the emulated M33 exited %d (fault, overflow or link error)\n",
                code);
        _exit(1);
    }
    if (ctl_peak >= ctl_size || peak >= stack_size) {
        fprintf(stderr, "m33_host: a stack was used to its end\n");
        _exit(1);
    }
}

/* ---- checks that exist only on the target --------------------------------------------------- */

int m33_host_seal_vector(const uint8_t *const fields[9], const size_t lens[9], uint32_t *out_step)
{
    struct rpc_msg *m = h__begin(OP_T_VECTORS), *r;
    for (int i = 0; i < 9; i++)
        rpc_put_bytes(m, fields[i], lens[i]);
    int rc = rpc_call(m, &r);
    *out_step = rpc_get_u32(r);
    h__end();
    return rc;
}
