/* pp_target: the target link of each socket, onto the target simulator (tsim.h). */
#include "pp_port.h"

#include "tsim.h"

#include "nu_log.h"
#include "nu_util.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct pp_target {
    struct tsim_feeder *feeder;
    unsigned n;
    struct tsim **chip; /* one per socket, NULL when empty */
    char state_dir[PATH_MAX]; /* socket.N files, or "" */
};

static int tgt__socket_file(const struct pp_target *t, unsigned s, char *path, size_t cap)
{
    int n = snprintf(path, cap, "%s/socket.%u", t->state_dir, s);
    return n < 0 || (size_t)n >= cap ? NU_ERR_TOO_LARGE : NU_OK;
}

/* socket.N = UID of the chip in it (no sync: it must survive this program's
 * crash, as the simulated chips do; a host power cut empties the sockets). */
static void tgt__note(struct pp_target *t, unsigned s)
{
    char path[PATH_MAX], hex[2 * TSIM_UID_LEN + 2];
    uint8_t uid[TSIM_UID_LEN];
    if (!t->state_dir[0] || tgt__socket_file(t, s, path, sizeof(path)) != NU_OK)
        return;
    if (!t->chip[s]) {
        unlink(path);
        return;
    }
    if (tsim_read_uid(t->chip[s], uid) != NU_OK)
        return;
    nu_hex_encode(uid, sizeof(uid), hex, sizeof(hex));
    FILE *f = fopen(path, "w");
    if (!f || fputs(hex, f) < 0)
        nu_warn("socket %u: %s not written", s, path);
    if (f)
        fclose(f);
}

int pp_target_load(struct pp_target *t, unsigned sock, const char *targets_dir,
                   const uint8_t uid[16])
{
    if (!t || sock >= t->n || !targets_dir || !uid)
        return NU_ERR_INVALID_ARG;
    if (t->chip[sock])
        return NU_ERR_STATE;
    int rc = tsim_open(targets_dir, uid, NULL, &t->chip[sock]);
    if (rc == NU_OK)
        tgt__note(t, sock);
    return rc;
}

int pp_target_restore(struct pp_target *t, const char *state_dir, const char *targets_dir)
{
    int n = snprintf(t->state_dir, sizeof(t->state_dir), "%s", state_dir);
    if (n < 0 || (size_t)n >= sizeof(t->state_dir))
        return NU_ERR_TOO_LARGE;
    for (unsigned s = 0; s < t->n; s++) {
        char path[PATH_MAX], hex[2 * TSIM_UID_LEN + 2] = {0};
        uint8_t uid[TSIM_UID_LEN];
        size_t len = 0;
        if (tgt__socket_file(t, s, path, sizeof(path)) != NU_OK)
            return NU_ERR_TOO_LARGE;
        FILE *f = fopen(path, "r");
        if (!f)
            continue;
        int ok = fgets(hex, sizeof(hex), f) != NULL;
        fclose(f);
        if (ok && nu_hex_decode(hex, uid, sizeof(uid), &len) == NU_OK && len == sizeof(uid) &&
            !t->chip[s] && pp_target_load(t, s, targets_dir, uid) == NU_OK) {
            nu_info("socket %u: chip %s still in the socket from the last run", s, hex);
            continue;
        }
        unlink(path);
    }
    return NU_OK;
}

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
    if (s >= t->n)
        return NU_ERR_STATE;
    if (t->chip[s])
        return NU_OK; /* left in the socket by an interrupted run: finish it first */
    int rc = tsim_feeder_next(t->feeder, &t->chip[s]);
    if (rc == NU_OK)
        tgt__note(t, s);
    return rc;
}

static int tgt__remove(void *ctx, unsigned s)
{
    struct pp_target *t = ctx;
    if (s >= t->n)
        return NU_ERR_INVALID_ARG;
    tsim_destroy(t->chip[s]);
    t->chip[s] = NULL;
    tgt__note(t, s);
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

static int tgt__state(void *ctx, unsigned s, enum pg_chip_state *out)
{
    struct tsim *c = tgt__chip(ctx, s);
    enum tsim_state st;
    int rc = c ? tsim_get_state(c, &st) : NU_ERR_TARGET;
    if (rc == NU_OK)
        *out = (enum pg_chip_state)st; /* same order, same values */
    return rc;
}

static int tgt__otp_read(void *ctx, unsigned s, uint8_t out[32])
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_otp_read_rotpk_hash(c, out) : NU_ERR_TARGET;
}

static int tgt__csr(void *ctx, unsigned s, const char *cn, uint8_t *csr, size_t cap,
                    size_t *out_len)
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_csr(c, cn, csr, cap, out_len) : NU_ERR_TARGET;
}

static int tgt__read_cert(void *ctx, unsigned s, uint8_t *der, size_t cap, size_t *out_len)
{
    struct tsim *c = tgt__chip(ctx, s);
    return c ? tsim_read_cert(c, der, cap, out_len) : NU_ERR_TARGET;
}

_Static_assert((int)TSIM_LOCKED == (int)PG_CHIP_LOCKED && (int)TSIM_KEYED == (int)PG_CHIP_KEYED &&
                   (int)TSIM_BOOT_FAILED == (int)PG_CHIP_BOOT_FAILED,
               "tsim and HAL chip states agree");

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
    .state = tgt__state,
    .otp_read_rotpk_hash = tgt__otp_read,
    .csr = tgt__csr,
    .read_cert = tgt__read_cert,
};
