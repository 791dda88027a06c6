/* pp_target: the target link of each socket, onto the target simulator (tsim.h). */
#include "pp_port.h"

#include "tsim.h"

#include <stdlib.h>
#include <string.h>

struct pp_target {
    struct tsim_feeder *feeder;
    unsigned n;
    struct tsim **chip; /* one per socket, NULL when empty */
};

int pp_target_create(struct tsim_feeder *feeder, unsigned n_sockets, struct pp_target **out_t)
{
    if (!feeder || !n_sockets || !out_t)
        return NU_ERR_INVALID_ARG;
    struct pp_target *t = calloc(1, sizeof(*t));
    if (t)
        t->chip = calloc(n_sockets, sizeof(*t->chip));
    if (!t || !t->chip) {
        free(t);
        return NU_ERR_NOMEM;
    }
    t->feeder = feeder;
    t->n = n_sockets;
    *out_t = t;
    return NU_OK;
}

void pp_target_destroy(struct pp_target *t)
{
    if (!t)
        return;
    for (unsigned i = 0; i < t->n; i++)
        tsim_destroy(t->chip[i]);
    free(t->chip);
    free(t);
}

/* The chip in socket s, or NULL (then the op answers TARGET: nothing there). */
static struct tsim *tgt__chip(void *ctx, unsigned s)
{
    struct pp_target *t = ctx;
    return s < t->n ? t->chip[s] : NULL;
}

static int tgt__insert(void *ctx, unsigned s)
{
    struct pp_target *t = ctx;
    if (s >= t->n || t->chip[s])
        return NU_ERR_STATE;
    return tsim_feeder_next(t->feeder, &t->chip[s]);
}

static int tgt__remove(void *ctx, unsigned s)
{
    struct pp_target *t = ctx;
    if (s >= t->n)
        return NU_ERR_INVALID_ARG;
    tsim_destroy(t->chip[s]);
    t->chip[s] = NULL;
    return NU_OK;
}

static int tgt__read_uid(void *ctx, unsigned s, uint8_t *uid, size_t cap, size_t *out_len)
{
    struct tsim *c = tgt__chip(ctx, s);
    if (!c)
        return NU_ERR_TARGET;
    if (cap < TSIM_UID_LEN)
        return NU_ERR_TOO_LARGE;
    int rc = tsim_read_uid(c, uid);
    if (rc == NU_OK)
        *out_len = TSIM_UID_LEN;
    return rc;
}

static int tgt__blank_check(void *ctx, unsigned s)
{
    struct tsim *c = tgt__chip(ctx, s);
    enum tsim_state st;
    if (!c)
        return NU_ERR_TARGET;
    int rc = tsim_get_state(c, &st);
    if (rc != NU_OK)
        return rc;
    return st == TSIM_BLANK ? NU_OK : NU_ERR_NOT_BLANK;
}

static int tgt__otp(void *ctx, unsigned s, const uint8_t hash[32])
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_otp_write_rotpk_hash(c, hash) : NU_ERR_TARGET;
}

static int tgt__keygen(void *ctx, unsigned s, const char *cn, uint8_t *csr, size_t cap,
                       size_t *out_len)
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_keygen_csr(c, cn, csr, cap, out_len) : NU_ERR_TARGET;
}

static int tgt__pubkey(void *ctx, unsigned s, uint8_t pub[65])
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_read_pubkey(c, pub) : NU_ERR_TARGET;
}

static int tgt__flash(void *ctx, unsigned s, uint32_t off, const uint8_t *d, size_t len)
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_flash_write(c, off, d, len) : NU_ERR_TARGET;
}

static int tgt__boot_key(void *ctx, unsigned s, const uint8_t pub[65])
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_write_boot_key(c, pub) : NU_ERR_TARGET;
}

static int tgt__cert(void *ctx, unsigned s, const uint8_t *der, size_t len)
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_write_cert(c, der, len) : NU_ERR_TARGET;
}

static int tgt__reset(void *ctx, unsigned s)
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_reset(c) : NU_ERR_TARGET;
}

static int tgt__attest(void *ctx, unsigned s, const uint8_t nonce[32], uint8_t *sig, size_t cap,
                       size_t *out_len)
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_attest(c, nonce, sig, cap, out_len) : NU_ERR_TARGET;
}

static int tgt__lock(void *ctx, unsigned s)
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_lock(c) : NU_ERR_TARGET;
}

const struct pg_target_ops pp_target_ops = {
    .version = PG_HAL_VERSION,
    .insert = tgt__insert,
    .remove = tgt__remove,
    .read_uid = tgt__read_uid,
    .blank_check = tgt__blank_check,
    .otp_write_rotpk_hash = tgt__otp,
    .keygen_csr = tgt__keygen,
    .read_pubkey = tgt__pubkey,
    .flash_write = tgt__flash,
    .write_boot_key = tgt__boot_key,
    .write_cert = tgt__cert,
    .reset = tgt__reset,
    .attest = tgt__attest,
    .lock = tgt__lock,
};
