/*
 * pg_util: the leaf helpers every file of the core uses (log, zeroing,
 * constant-time compare, hex, SHA-256 over parts, KeyStore and flash
 * adapters). Depends on the HAL only, so pg_package.c and pg_core.c both sit
 * above it and neither needs the other's helpers.
 */
#include "pg_int.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

void pg__log(const struct pg_core *c, enum pg_log_level level, const char *fmt, ...)
{
    const struct pg_hal *h = c->hal;
    if (!h || !h->log || !h->log->write)
        return;
    char line[192];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(line, sizeof(line), fmt, ap);
    va_end(ap);
    h->log->write(h->log_ctx, level, line);
}

/* memset, then a barrier the compiler must assume reads the memory, so the
 * store is not dropped as dead (the BoringSSL OPENSSL_cleanse way). A
 * volatile byte loop did the same at a byte a cycle: zeroing the core's
 * work buffers per chip was a tenth of the fuzzers' time, and is as slow on
 * the M33. */
void pg__zero(void *p, size_t n)
{
    if (!n)
        return;
    memset(p, 0, n);
    __asm__ __volatile__("" : : "r"(p) : "memory");
}

int pg__ct_eq(const void *a, const void *b, size_t n)
{
    const uint8_t *x = a, *y = b;
    uint8_t d = 0;
    for (size_t i = 0; i < n; i++)
        d |= (uint8_t)(x[i] ^ y[i]);
    return d == 0;
}

void pg__hex(const uint8_t *buf, size_t len, char *out)
{
    static const char digits[] = "0123456789abcdef";
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[buf[i] >> 4];
        out[2 * i + 1] = digits[buf[i] & 15];
    }
    out[2 * len] = '\0';
}

void pg__be32(uint8_t out[4], uint32_t v)
{
    out[0] = (uint8_t)(v >> 24);
    out[1] = (uint8_t)(v >> 16);
    out[2] = (uint8_t)(v >> 8);
    out[3] = (uint8_t)v;
}

int pg__sha256(const struct pg_core *c, const void *a, size_t alen, const void *b, size_t blen,
               const void *d, size_t dlen, uint8_t out[32])
{
    struct pg_sha256 s;
    int rc = pg_sha256_init(c->hal, &s);
    if (rc == NU_OK && a)
        rc = pg_sha256_update(c->hal, &s, a, alen);
    if (rc == NU_OK && b)
        rc = pg_sha256_update(c->hal, &s, b, blen);
    if (rc == NU_OK && d)
        rc = pg_sha256_update(c->hal, &s, d, dlen);
    if (rc == NU_OK)
        rc = pg_sha256_final(c->hal, &s, out);
    pg__zero(&s, sizeof(s));
    return rc;
}

int pg__transient(int rc)
{
    return rc == NU_ERR_TIMEOUT || rc == NU_ERR_CONNECTION || rc == NU_ERR_NOT_FOUND ||
           rc == NU_ERR_MQTT;
}

int pg__ks_ecdh_package(void *core, const uint8_t peer[PG_P256_PUB_LEN], uint8_t out[32])
{
    const struct pg_core *c = core;
    return pg_ks_ecdh(c->hal, PG_KEY_PACKAGE, peer, out);
}

int pg__ks_sign_identity(void *core, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    const struct pg_core *c = core;
    return pg_ks_sign(c->hal, PG_KEY_IDENTITY, digest, sig, sig_len);
}

int pg__flash_image_read(void *core, uint32_t off, uint8_t *buf, size_t len)
{
    const struct pg_core *c = core;
    return pg_flash_read(c->hal, PG_FLASH_IMAGE, off, buf, len);
}
