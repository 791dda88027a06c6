/* fuzz_pg: see fuzz_pg.h. */
#include "fuzz_pg.h"

#include "nu_crypto.h"
#include "nu_msgsig.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"
#include "pg_msg.h"
#include "pp_port.h"
#include "tsim.h"

#include <sched.h>
#include <stdatomic.h>
#include <string.h>
#include <unistd.h>

enum { KIND_RAW = 0, KIND_HONEST = 1, KIND_ERROR = 2, KIND_XOR = 3 };

static struct nu_signer chip_signer;

/* Next script record: *kind and the record's payload (after the kind byte).
 * KIND_HONEST when the script is over or intercepting is off. */
static int fpg__next(struct fuzz_pg *f, const uint8_t **p, size_t *n, uint8_t *flags)
{
    const uint8_t *rec;
    size_t len;
    *flags = 0;
    *p = NULL;
    *n = 0;
    if (!f->scripted || !fuzz_record(&f->script, &rec, &len) || len == 0)
        return KIND_HONEST;
    *flags = rec[0] & 0x80;
    *p = rec + 1;
    *n = len - 1;
    return rec[0] & 3;
}

static int fpg__error(const uint8_t *p, size_t n)
{
    return 1 + (n ? p[0] : 0) % NU_ERR_LIMIT; /* every NU_ERR_* code */
}

static void fpg__xor(uint8_t *out, size_t out_len, const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n && i < out_len; i++)
        out[i] ^= p[i];
}

/* A chunk answer made to pass AES-GCM: its ciphertext is re-encrypted with
 * the job's key for the index it claims. */
static void fpg__fix_chunk(struct fuzz_pg *f, uint8_t *resp, size_t len)
{
    struct pg_msg_env env;
    struct pg_msg_chunk ch;
    if (pg_msg_env_decode(resp, len, &env) != NU_OK || env.body_num != PG_BODY_CHUNK ||
        pg_msg_chunk_decode(env.body, &ch) != NU_OK || ch.ciphertext.len < NU_GCM_TAG_LEN)
        return;
    uint8_t nonce[12] = {0}, aad[80];
    size_t jl = strlen(f->r.fc.job_id), plain = ch.ciphertext.len - NU_GCM_TAG_LEN;
    uint8_t *ct = resp + (ch.ciphertext.p - resp);
    for (int i = 0; i < 4; i++)
        nonce[8 + i] = aad[jl + (size_t)i] = (uint8_t)(ch.index >> (24 - 8 * i));
    memcpy(aad, f->r.fc.job_id, jl);
    nu_aes256gcm_encrypt(f->r.fc.fw_key, nonce, aad, jl + 4, ct, plain, ct, ct + plain);
}

static int fpg__intercepted(const struct fuzz_pg *f, const char *topic)
{
    const char *op = strrchr(topic, '/');
    if (!f->scripted || !op || !f->ops)
        return 0;
    for (const char *const *o = f->ops; *o; o++) {
        if (strcmp(op + 1, *o) == 0)
            return 1;
    }
    return 0;
}

static int fpg__request(void *ctx, const char *topic, const uint8_t *payload, size_t len,
                        uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len)
{
    struct fuzz_pg *f = ctx;
    const uint8_t *p;
    size_t n;
    uint8_t flags;
    int kind = fpg__intercepted(f, topic) ? fpg__next(f, &p, &n, &flags) : KIND_HONEST;
    if (kind == KIND_ERROR)
        return fpg__error(p, n);
    if (kind == KIND_RAW) {
        if (n > cap)
            return NU_ERR_TOO_LARGE;
        memcpy(resp, p, n);
        *out_len = n;
    } else {
        int rc = fc_transport_ops.request(&f->r.fc, topic, payload, len, timeout_ms, resp, cap,
                                          out_len);
        if (rc != NU_OK || kind == KIND_HONEST)
            return rc;
        fpg__xor(resp, *out_len, p, n);
    }
    if (flags)
        fpg__fix_chunk(f, resp, *out_len);
    return NU_OK;
}

/*
 * The answers are signed end to end by the cloud's package key (the core
 * refuses anything else: pg_reply.c), whatever the script made of them: the
 * fuzzer plays a cloud that sends garbage, not a site that forges (a forged
 * answer never gets past the signature). An answer the script replaced whole
 * is still refused if it does not answer this request (correlation_id).
 */
static int fpg__request_signed(void *ctx, const char *topic, const uint8_t *payload, size_t len,
                               uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len,
                               char *reply_topic, size_t topic_cap, char *sig, size_t sig_cap)
{
    static const char rt[] = "nusec/v1/reply/fuzz/r";
    struct fuzz_pg *f = ctx;
    char value[NU_MSGSIG_VALUE_MAX];
    int rc = fpg__request(ctx, topic, payload, len, timeout_ms, resp, cap, out_len);
    if (rc == NU_OK && (topic_cap < sizeof(rt) || sig_cap < sizeof(value)))
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK)
        rc = nu_msgsig_sign(&f->r.fc.package_s, rt, resp, *out_len, value);
    if (rc == NU_OK) {
        memcpy(reply_topic, rt, sizeof(rt));
        memcpy(sig, value, strlen(value) + 1);
    }
    return rc;
}

static int fpg__publish(void *ctx, const char *topic, const uint8_t *payload, size_t len, int qos,
                        int retain)
{
    struct fuzz_pg *f = ctx;
    return fc_transport_ops.publish(&f->r.fc, topic, payload, len, qos, retain);
}

static int fpg__subscribe(void *ctx, const char *filter, pg_msg_cb cb, void *cb_ctx)
{
    struct fuzz_pg *f = ctx;
    return fc_transport_ops.subscribe(&f->r.fc, filter, cb, cb_ctx);
}

static const struct pg_transport_ops fpg_transport = {
    .version = PG_HAL_VERSION,
    .publish = fpg__publish,
    .request = fpg__request,
    .subscribe = fpg__subscribe,
    .request_signed = fpg__request_signed,
};

/* ---- the in-memory chip ---------------------------------------------------- */

/* A link command without data: OK, or the script's error. */
static int fpg__cmd(struct fuzz_pg *f)
{
    const uint8_t *p;
    size_t n;
    uint8_t flags;
    return fpg__next(f, &p, &n, &flags) == KIND_ERROR ? fpg__error(p, n) : NU_OK;
}

/* A link command answering honest[hlen] into out[cap] (*out_len may be NULL
 * for fixed-size answers). Returns 1 in *unchanged when the honest answer
 * went out as is. */
static int fpg__answer(struct fuzz_pg *f, const uint8_t *honest, size_t hlen, uint8_t *out,
                       size_t cap, size_t *out_len, int *unchanged)
{
    const uint8_t *p;
    size_t n;
    uint8_t flags;
    int kind = fpg__next(f, &p, &n, &flags);
    *unchanged = 0;
    if (kind == KIND_ERROR)
        return fpg__error(p, n);
    if (kind == KIND_RAW) {
        size_t k = out_len ? (n < cap ? n : cap) : cap;
        memset(out, 0, cap);
        memcpy(out, p, n < k ? n : k);
        if (out_len)
            *out_len = k;
        *unchanged = k == hlen && memcmp(out, honest, k) == 0;
        return NU_OK;
    }
    if (hlen > cap)
        return NU_ERR_TOO_LARGE;
    memcpy(out, honest, hlen);
    if (out_len)
        *out_len = hlen;
    if (kind == KIND_XOR)
        fpg__xor(out, hlen, p, n);
    *unchanged = memcmp(out, honest, hlen) == 0;
    return NU_OK;
}

static int fpg__insert(void *ctx, unsigned s)
{
    (void)ctx, (void)s;
    return NU_OK;
}

static int fpg__read_uid(void *ctx, unsigned s, uint8_t *uid, size_t cap, size_t *out_len)
{
    struct fuzz_pg *f = ctx;
    int same;
    (void)s;
    return fpg__answer(f, f->chip_uid, sizeof(f->chip_uid), uid, cap, out_len, &same);
}

static int fpg__blank(void *ctx, unsigned s)
{
    (void)s;
    return fpg__cmd(ctx);
}

static int fpg__otp(void *ctx, unsigned s, const uint8_t hash[32])
{
    (void)s, (void)hash;
    return fpg__cmd(ctx);
}

/* The chip's honest CSR for the last CN asked: the chip key never changes,
 * so one signature serves every input that asks for the same CN (an ECDSA
 * signature per input was a sixth of fuzz_pg_target's time). */
static char csr_cn[NU_X509_NAME_MAX + 1];
static uint8_t *csr_der;
static size_t csr_len;

static int fpg__keygen_csr(void *ctx, unsigned s, const char *cn, uint8_t *out, size_t cap,
                           size_t *out_len)
{
    struct fuzz_pg *f = ctx;
    int same, rc = NU_OK;
    (void)s;
    if (!csr_der || strcmp(csr_cn, cn) != 0) {
        free(csr_der);
        csr_der = NULL;
        snprintf(csr_cn, sizeof(csr_cn), "%s", cn);
        rc = nu_x509_csr_make(&chip_signer, cn, NULL, NULL, &csr_der, &csr_len);
    }
    if (rc == NU_OK)
        rc = fpg__answer(f, csr_der, csr_len, out, cap, out_len, &same);
    return rc;
}

static int fpg__read_pubkey(void *ctx, unsigned s, uint8_t pub[PG_P256_PUB_LEN])
{
    struct fuzz_pg *f = ctx;
    (void)s;
    return fpg__answer(f, f->chip_pub, PG_P256_PUB_LEN, pub, PG_P256_PUB_LEN, NULL,
                       &f->pub_honest);
}

static int fpg__flash_write(void *ctx, unsigned s, uint32_t off, const uint8_t *d, size_t len)
{
    (void)s, (void)off, (void)d, (void)len;
    return fpg__cmd(ctx);
}

static int fpg__boot_key(void *ctx, unsigned s, const uint8_t pub[PG_P256_PUB_LEN])
{
    (void)s, (void)pub;
    return fpg__cmd(ctx);
}

static int fpg__write_cert(void *ctx, unsigned s, const uint8_t *der, size_t len)
{
    (void)s, (void)der, (void)len;
    return fpg__cmd(ctx);
}

static int fpg__attest(void *ctx, unsigned s, const uint8_t nonce[32], uint8_t *sig, size_t cap,
                       size_t *out_len)
{
    struct fuzz_pg *f = ctx;
    uint8_t digest[32], honest[NU_P256_SIG_MAX];
    size_t hlen = sizeof(honest);
    int same = 0;
    (void)s;
    int rc = tsim_attest_digest(f->chip_uid, nonce, digest);
    if (rc == NU_OK)
        rc = nu_p256_key_sign_digest(f->chip, digest, honest, &hlen);
    if (rc == NU_OK)
        rc = fpg__answer(f, honest, hlen, sig, cap, out_len, &same);
    if (rc == NU_OK && same)
        f->real_attests++;
    return rc;
}

static int fpg__cmd2(void *ctx, unsigned s)
{
    (void)s;
    return fpg__cmd(ctx);
}

static const struct pg_target_ops fpg_target = {
    .version = PG_HAL_VERSION,
    .insert = fpg__insert,
    .remove = fpg__insert,
    .read_uid = fpg__read_uid,
    .blank_check = fpg__blank,
    .otp_write_rotpk_hash = fpg__otp,
    .keygen_csr = fpg__keygen_csr,
    .read_pubkey = fpg__read_pubkey,
    .flash_write = fpg__flash_write,
    .write_boot_key = fpg__boot_key,
    .write_cert = fpg__write_cert,
    .reset = fpg__cmd2,
    .attest = fpg__attest,
    .lock = fpg__cmd2,
};

/* The port's crypto, but the CSR checked on the fuzzer's thread: a thread
 * per chip was a third of fuzz_pg_target's time under ASan. */
static struct pg_crypto_ops fpg_crypto;

/*
 * The core's retry back-offs and held-chip waits sleep: a script of BUSY
 * and TIMEOUT answers slept most of each run (fuzz_pg_target used 16 % of a
 * core at 50 runs/s). Here a sleep moves the core's monotonic clock on
 * instead, so its deadlines come as they would, at once. The wall clock
 * stays real: certificates and the package are checked against it.
 */
static uint64_t fpg__mono(void *ctx)
{
    struct fuzz_pg *f = ctx;
    return nu_mono_ms() + atomic_load(&f->slept_ms);
}

static void fpg__sleep(void *ctx, uint32_t ms)
{
    struct fuzz_pg *f = ctx;
    atomic_fetch_add(&f->slept_ms, ms);
    sched_yield();
}

static struct pg_clock_ops fpg_clock;

/* ---- set-up ----------------------------------------------------------------- */

/* The live rig's folder, removed at exit: libFuzzer ends a run with exit()
 * (-runs, -max_total_time), never through fuzz_pg_teardown, and every run
 * left a KeyStore folder behind in /dev/shm. */
static char live_dir[sizeof(((struct rig *)0)->dir)];

static void fpg__atexit(void)
{
    if (live_dir[0])
        nu_test_rmtree(live_dir);
}

void fuzz_pg_setup(struct fuzz_pg *f, size_t payload_len, uint32_t chunk_size,
                   const char *const *ops)
{
    struct rig *r = &f->r;
    memset(f, 0, sizeof(*f));
    if (access("/dev/shm", W_OK) == 0)
        setenv("TMPDIR", "/dev/shm", 1); /* the KeyStore and flash are files */
    r->name = "prog-1";
    r->sockets = 1;
    /* A campaign runs for hours on one package: with the rig's 1 h expiry
     * every socket then stopped EXPIRED (fuzz_pg_target died on it after an
     * hour) and every firmware fetch was refused. */
    r->package_ttl_ms = 30ull * 24 * 3600 * 1000;
    if (nu_test_tmpdir("fuzzpg", r->dir, sizeof(r->dir)) != 0)
        FUZZ_DIE("tmpdir");
    if (!live_dir[0] && atexit(fpg__atexit) != 0)
        FUZZ_DIE("atexit");
    snprintf(live_dir, sizeof(live_dir), "%s", r->dir);
    snprintf(r->pdir, sizeof(r->pdir), "%s/programmers/%s", r->dir, r->name);
    snprintf(r->targets, sizeof(r->targets), "%s/targets", r->dir);
    int rc = fc_init(&r->fc, "job-1", payload_len, chunk_size);
    if (rc == NU_OK)
        rc = rig_open(r);
    /* A genuine programmer: attestation key and vendor certificate, as the
     * factory step makes them, or the cloud refuses to enroll it. */
    if (rc == NU_OK)
        rc = rig_factory(r);
    if (rc != NU_OK)
        FUZZ_DIE("rig: %s", nu_err_name(rc));
    r->hal.log = NULL; /* quiet: the core logs every refusal */
    r->hal.tp = &fpg_transport;
    r->hal.tp_ctx = f;
    r->hal.tgt = &fpg_target;
    r->hal.tgt_ctx = f;
    fpg_crypto = pp_crypto_ops;
    fpg_crypto.csr_check = pp_crypto_csr_check_here;
    r->hal.cry = &fpg_crypto;
    fpg_clock = pp_clock_ops;
    fpg_clock.mono_ms = fpg__mono;
    fpg_clock.sleep_ms = fpg__sleep;
    r->hal.clk = &fpg_clock;
    r->hal.clk_ctx = f;
    f->ops = ops;
    free(csr_der); /* a new chip key below: its CSRs are made anew */
    csr_der = NULL;
    for (size_t i = 0; i < sizeof(f->chip_uid); i++)
        f->chip_uid[i] = (uint8_t)(0xc0 + i);
    if ((rc = nu_p256_key_generate(&f->chip)) || (rc = nu_p256_key_pub(f->chip, f->chip_pub)) ||
        (rc = nu_p256_key_signer(f->chip, &chip_signer)) || (rc = rig_enroll(r)) ||
        (rc = rig_package(r, 0xfffffff0u, &f->pkg, &f->pkg_len)) ||
        (rc = pg_core_package_load(r->core, f->pkg, f->pkg_len)))
        FUZZ_DIE("enroll / package: %s", nu_err_name(rc));
}

void fuzz_pg_begin(struct fuzz_pg *f, const uint8_t *data, size_t size)
{
    struct fake_cloud *fc = &f->r.fc;
    for (size_t i = 0; i < fc->n_idem; i++)
        free(fc->idem[i].cert);
    fc->n_idem = 0;
    fc->n_seen = 0; /* each input is its own session: a full ring of message
                     * ids was a linear memcmp scan per request */
    fc->n_events = 0;
    fc->issued = 0;
    f->script = (struct fuzz_cursor){data, size};
    f->real_attests = 0;
    f->pub_honest = 0;
    f->scripted = 1;
}

void fuzz_pg_end(struct fuzz_pg *f)
{
    f->scripted = 0;
}

void fuzz_pg_teardown(struct fuzz_pg *f)
{
    free(f->pkg);
    nu_p256_key_destroy(f->chip);
    rig_teardown(&f->r);
    live_dir[0] = '\0';
}
