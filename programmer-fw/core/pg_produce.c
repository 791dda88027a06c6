/* pg_produce: one chip in one socket, from blank to locked (ARCHITECTURE.md "Production flow"). */
#include "pg_int.h"

#include <string.h>

#define PROD__CERT_DOMAIN "nusec/v1 cert"
#define PROD__ATTEST_DOMAIN "nusec/v1 attest"
#define PROD__IDEM_LEN 16
/* Link commands that fail with TARGET are tried this many times in all: a
 * flaky contact is retried, a dead chip fails the device. Every command is
 * safe to repeat (a refused command changes nothing on the chip). */
#define PROD__LINK_TRIES 5

#define PROD__LINK(rc, call)                                                                       \
    do {                                                                                           \
        unsigned prod__t = 0;                                                                      \
        do {                                                                                       \
            (rc) = (call);                                                                         \
        } while ((rc) == NU_ERR_TARGET && ++prod__t < PROD__LINK_TRIES);                           \
    } while (0)

struct prod__dev {
    struct pg_core *c;
    unsigned s;
    struct pg_sock_work *w;
    struct pg_result *r;
    uint32_t counter;
    const uint8_t *cert; /* inside w->resp */
    size_t cert_len;
    struct pg_cert_facts facts;
};

static int prod__stop_code(int stop)
{
    if (stop == PG_STOP_LIMIT)
        return NU_ERR_LIMIT;
    if (stop == PG_STOP_QUOTA)
        return NU_ERR_QUOTA_EXHAUSTED;
    return NU_ERR_STATE;
}

/* Cloud answers that end the job for this programmer. */
static void prod__cloud_verdict(struct pg_core *c, int rc)
{
    if (rc == NU_ERR_QUOTA_EXHAUSTED)
        pg_core_stop(c, PG_STOP_QUOTA);
    else if (rc == NU_ERR_LIMIT)
        pg_core_stop(c, PG_STOP_LIMIT);
    else if (rc == NU_ERR_JOB_NOT_ACTIVE || rc == NU_ERR_EXPIRED || rc == NU_ERR_REVOKED ||
             rc == NU_ERR_NOT_AUTHORIZED || rc == NU_ERR_TOKEN)
        pg_core_stop(c, PG_STOP_JOB);
}

static int prod__identify(struct prod__dev *d)
{
    struct pg_sock_work *w = d->w;
    const struct pg_hal *h = d->c->hal;
    d->r->step = "uid";
    int rc;
    PROD__LINK(rc, pg_tgt_read_uid(h, d->s, w->uid, sizeof(w->uid), &w->uid_len));
    if (rc == NU_OK && (w->uid_len == 0 || w->uid_len > PG_UID_MAX))
        rc = NU_ERR_TARGET;
    if (rc != NU_OK)
        return rc;
    memcpy(d->r->uid, w->uid, w->uid_len);
    d->r->uid_len = w->uid_len;
    pg__hex(w->uid, w->uid_len, w->uid_hex);
    d->r->step = "blank";
    PROD__LINK(rc, pg_tgt_blank_check(h, d->s));
    if (rc != NU_OK)
        return rc;
    d->r->step = "otp";
    PROD__LINK(rc, pg_tgt_otp_rotpk(h, d->s, d->c->job.rotpk_hash));
    return rc;
}

/* Key pair on chip; the CSR must be for the key the chip says it holds. */
static int prod__keygen(struct prod__dev *d, size_t *out_csr_len)
{
    struct pg_sock_work *w = d->w;
    const struct pg_hal *h = d->c->hal;
    uint8_t csr_pub[PG_P256_PUB_LEN];
    d->r->step = "keygen";
    int rc;
    PROD__LINK(rc, pg_tgt_keygen_csr(h, d->s, w->uid_hex, w->resp, sizeof(w->resp), out_csr_len));
    if (rc != NU_OK)
        return rc;
    d->r->step = "csr";
    if ((rc = pg_csr_check(h, w->resp, *out_csr_len, w->uid_hex, csr_pub)) != NU_OK)
        return rc;
    PROD__LINK(rc, pg_tgt_read_pubkey(h, d->s, w->pub));
    if (rc != NU_OK)
        return rc;
    return pg__ct_eq(csr_pub, w->pub, sizeof(csr_pub)) ? NU_OK : NU_ERR_BAD_CSR;
}

static int prod__request_cert(struct prod__dev *d, size_t csr_len, size_t *out_resp_len)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    uint8_t idem[32];
    d->r->step = "counter";
    /* Count first: a crash after this wastes units (this one, and on the
     * POSIX port the rest of the KeyStore's reservation), never creates one. */
    int rc = pg_ks_counter_inc(c->hal, c->job.job_id, c->job.limit, &d->counter);
    if (rc != NU_OK)
        return rc;
    d->r->step = "cert.request";
    rc = pg__sha256(c, PROD__CERT_DOMAIN, strlen(PROD__CERT_DOMAIN), c->job.job_id,
                    strlen(c->job.job_id), w->uid, w->uid_len, idem);
    struct pg_pb_writer wr;
    if (rc == NU_OK)
        rc = pg__env_start(c, &wr, w->req, sizeof(w->req), NULL, idem, PROD__IDEM_LEN);
    if (rc != NU_OK)
        return rc;
    struct pg_msg_cert_req_out req = {
        .job_id = c->job.job_id,
        .uid = w->uid,
        .uid_len = w->uid_len,
        .csr = w->resp,
        .csr_len = csr_len,
        .socket = d->s,
        .counter = d->counter,
    };
    pg_msg_put_cert_req(&wr, &req);
    if (wr.err)
        return wr.err;
    /* Same bytes on every retry: same idempotency key, same counter. */
    return pg__request(c, NULL, "cert.request", w->req, wr.len, w->resp, sizeof(w->resp),
                       out_resp_len);
}

static int prod__check_cert(struct prod__dev *d, size_t resp_len)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    struct pg_msg_env env;
    struct pg_msg_error err;
    int rc = pg_msg_reply_decode(w->resp, resp_len, PG_BODY_CERT_ISSUED, &env, &err);
    if (rc == NU_ERR_DECODE && env.body_num == PG_BODY_CERT_REFUSED) {
        struct pg_msg_cert_refused ref;
        rc = pg_msg_cert_refused_decode(env.body, &ref);
        if (rc == NU_OK && (rc = pg_msg_error_decode(ref.error, &err)) == NU_OK)
            rc = err.code > NU_OK && err.code <= NU_ERR_LIMIT ? (int)err.code : NU_ERR_INTERNAL;
    }
    if (rc != NU_OK) {
        prod__cloud_verdict(c, rc);
        return rc;
    }
    d->r->step = "cert";
    struct pg_msg_cert_issued ci;
    if ((rc = pg_msg_cert_issued_decode(env.body, &ci)) != NU_OK)
        return rc;
    if (!pg_msg_eq(ci.job_id, c->job.job_id) || ci.device_uid.len != w->uid_len ||
        memcmp(ci.device_uid.p, w->uid, w->uid_len) != 0 || ci.certificate.len == 0)
        return NU_ERR_BAD_CERT;
    rc = pg_cert_check(c->hal, ci.certificate.p, ci.certificate.len, c->job.chain_der,
                       c->job.n_chain, &d->facts);
    if (rc != NU_OK)
        return rc;
    if (!pg__ct_eq(d->facts.pub, w->pub, sizeof(w->pub)))
        return NU_ERR_BAD_CERT; /* a certificate for another key */
    d->cert = ci.certificate.p;
    d->cert_len = ci.certificate.len;
    memcpy(d->r->serial, d->facts.serial_hex, sizeof(d->r->serial));
    d->r->serial[sizeof(d->r->serial) - 1] = '\0';
    return NU_OK;
}

/* Firmware from the cache, hashed on the way: what the target gets is what
 * was verified, even if the cache changed since. */
static int prod__write_image(struct prod__dev *d)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    uint8_t digest[32];
    d->r->step = "flash";
    int rc = pg_sha256_init(c->hal, &w->sha);
    for (uint32_t off = 0; rc == NU_OK && off < c->job.fw_size;) {
        size_t n = c->job.fw_size - off < PG_COPY_MAX ? c->job.fw_size - off : PG_COPY_MAX;
        rc = pg_flash_read(c->hal, PG_FLASH_IMAGE, off, w->req, n);
        if (rc == NU_OK)
            rc = pg_sha256_update(c->hal, &w->sha, w->req, n);
        if (rc == NU_OK)
            PROD__LINK(rc, pg_tgt_flash_write(c->hal, d->s, off, w->req, n));
        off += (uint32_t)n;
    }
    if (rc == NU_OK)
        rc = pg_sha256_final(c->hal, &w->sha, digest);
    if (rc == NU_OK && !pg__ct_eq(digest, c->job.fw_digest, 32))
        rc = NU_ERR_BAD_FIRMWARE;
    if (rc != NU_OK)
        return rc;
    d->r->step = "bootkey";
    PROD__LINK(rc, pg_tgt_write_boot_key(c->hal, d->s, c->pin_rotpk));
    if (rc != NU_OK)
        return rc;
    d->r->step = "certwrite";
    PROD__LINK(rc, pg_tgt_write_cert(c->hal, d->s, d->cert, d->cert_len));
    return rc;
}

/* Boot, then proof that the chip holds the certified key. */
static int prod__boot_attest(struct prod__dev *d)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    uint8_t nonce[32], digest[32];
    size_t sig_len = 0;
    d->r->step = "boot";
    int rc;
    PROD__LINK(rc, pg_tgt_reset(c->hal, d->s));
    if (rc != NU_OK)
        return rc == NU_ERR_TARGET ? rc : NU_ERR_BOOT_FAILED;
    d->r->step = "attest";
    if ((rc = pg_rng_fill(c->hal, nonce, sizeof(nonce))) != NU_OK)
        return rc;
    PROD__LINK(rc, pg_tgt_attest(c->hal, d->s, nonce, w->req, PG_SIG_MAX, &sig_len));
    if (rc != NU_OK)
        return rc;
    rc = pg__sha256(c, PROD__ATTEST_DOMAIN, strlen(PROD__ATTEST_DOMAIN), w->uid, w->uid_len, nonce,
                    sizeof(nonce), digest);
    if (rc == NU_OK)
        rc = pg_p256_verify(c->hal, d->facts.pub, digest, w->req, sig_len);
    if (rc == NU_ERR_DECODE)
        rc = NU_ERR_BAD_SIGNATURE;
    if (rc != NU_OK)
        return rc;
    d->r->step = "lock";
    PROD__LINK(rc, pg_tgt_lock(c->hal, d->s));
    return rc;
}

static int prod__device(struct prod__dev *d)
{
    size_t csr_len = 0, resp_len = 0;
    int rc = prod__identify(d);
    if (rc == NU_OK)
        rc = prod__keygen(d, &csr_len);
    if (rc == NU_OK)
        rc = prod__request_cert(d, csr_len, &resp_len);
    if (rc == NU_ERR_LIMIT)
        pg_core_stop(d->c, PG_STOP_LIMIT);
    if (rc == NU_OK)
        rc = prod__check_cert(d, resp_len);
    if (rc == NU_OK)
        rc = prod__write_image(d);
    if (rc == NU_OK)
        rc = prod__boot_attest(d);
    return rc;
}

static void prod__report(struct prod__dev *d, int rc, uint32_t duration_ms)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    const char *kind = rc == NU_OK ? "device.provisioned" : "device.failed";
    struct pg_msg_report_out rep = {
        .job_id = c->job.job_id,
        .uid = d->r->uid,
        .uid_len = d->r->uid_len,
        .socket = d->s,
        .outcome = rc == NU_OK ? PG_OUTCOME_PROVISIONED : PG_OUTCOME_FAILED,
        .serial = d->r->serial[0] ? d->r->serial : NULL,
        .error = rc,
        .detail = rc == NU_OK ? NULL : d->r->step,
        .duration_ms = duration_ms,
    };
    struct pg_pb_writer wr;
    int prc = pg__env_start(c, &wr, w->req, sizeof(w->req), NULL, NULL, 0);
    if (prc == NU_OK) {
        pg_msg_put_device_event(&wr, kind, &rep);
        prc = wr.err ? wr.err : pg__publish_event(c, kind, w->req, wr.len);
    }
    if (prc != NU_OK)
        pg__log(c, PG_LOG_WARN, "socket %u: %s event not sent: %s", d->s, kind, nu_err_name(prc));
}

int pg_socket_run(struct pg_core *c, unsigned sock, struct pg_result *out)
{
    if (!c || !out || sock >= c->n_sockets)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    if (!atomic_load(&c->producing))
        return NU_ERR_STATE;
    int stop = atomic_load(&c->stop);
    if (stop != PG_STOP_NONE)
        return prod__stop_code(stop);
    uint32_t counter = 0;
    int rc = pg_ks_counter_read(c->hal, c->job.job_id, &counter);
    if (rc != NU_OK || counter >= c->job.limit) {
        pg_core_stop(c, rc == NU_OK ? PG_STOP_LIMIT : PG_STOP_ERROR);
        return rc == NU_OK ? NU_ERR_LIMIT : rc;
    }
    if (pg_now_ms(c->hal) >= c->job.expires_at_ms) {
        pg_core_stop(c, PG_STOP_JOB);
        return NU_ERR_EXPIRED;
    }
    if ((rc = pg_tgt_insert(c->hal, sock)) != NU_OK)
        return rc; /* NOT_FOUND: tray empty */

    struct prod__dev d = {.c = c, .s = sock, .w = &c->work.sock[sock], .r = out};
    atomic_store(&c->sock[sock].busy, 1);
    uint64_t t0 = pg_mono_ms(c->hal);
    rc = prod__device(&d);
    out->provisioned = rc == NU_OK;
    out->error = rc;
    if (rc != NU_OK)
        pg__log(c, PG_LOG_WARN, "socket %u: device failed at %s: %s", sock, out->step,
                nu_err_name(rc));
    prod__report(&d, rc, (uint32_t)(pg_mono_ms(c->hal) - t0));
    int rrc = pg_tgt_remove(c->hal, sock);
    if (rrc != NU_OK)
        pg__log(c, PG_LOG_WARN, "socket %u: remove: %s", sock, nu_err_name(rrc));
    atomic_fetch_add(rc == NU_OK ? &c->sock[sock].done : &c->sock[sock].failed, 1u);
    atomic_store(&c->sock[sock].busy, 0);
    pg__zero(d.w, sizeof(*d.w));
    pg__status_maybe(c, d.w->req, sizeof(d.w->req));
    return NU_OK;
}

int pg_core_production_begin(struct pg_core *c)
{
    if (!c->job.loaded || !c->fw_ready)
        return NU_ERR_STATE;
    if (atomic_load(&c->producing))
        return NU_ERR_BUSY;
    if (pg_now_ms(c->hal) >= c->job.expires_at_ms)
        return NU_ERR_EXPIRED;
    uint32_t counter = 0;
    int rc = pg_ks_counter_read(c->hal, c->job.job_id, &counter);
    if (rc != NU_OK)
        return rc;
    if (counter >= c->job.limit)
        return NU_ERR_LIMIT;
    atomic_store(&c->stop, PG_STOP_NONE);
    /* The socket buffers now own the union (the download is over). */
    memset(&c->work, 0, sizeof(c->work));
    atomic_store(&c->producing, 1);
    pg__log(c, PG_LOG_INFO, "production of job %s starts: counter %u of %u, %u sockets",
            c->job.job_id, (unsigned)counter, (unsigned)c->job.limit, c->n_sockets);
    pg_core_status_publish(c, PG_PROG_PRODUCING);
    return NU_OK;
}

enum pg_stop pg_core_production_end(struct pg_core *c)
{
    int stop = atomic_load(&c->stop);
    if (stop == PG_STOP_NONE)
        stop = PG_STOP_TRAY_EMPTY;
    uint32_t counter = 0;
    int rc = pg_ks_counter_read(c->hal, c->job.job_id, &counter);
    int finished = (rc == NU_OK && counter >= c->job.limit) || stop == PG_STOP_QUOTA;
    if (finished && c->job.loaded) {
        struct pg__job_record rec;
        rc = pg__job_record_get(c, c->job.job_id, &rec);
        if (rc == NU_OK) {
            rec.closed = 1;
            rc = pg__job_record_put(c, c->job.job_id, &rec);
        }
        if (rc != NU_OK)
            pg__log(c, PG_LOG_ERROR, "job %s not closed in the KeyStore: %s", c->job.job_id,
                    nu_err_name(rc));
        else
            pg__log(c, PG_LOG_INFO, "job %s closed (counter %u of %u)", c->job.job_id,
                    (unsigned)counter, (unsigned)c->job.limit);
    }
    atomic_store(&c->producing, 0);
    memset(&c->work, 0, sizeof(c->work));
    pg_core_status_publish(c, PG_PROG_IDLE);
    return (enum pg_stop)stop;
}
