/*
 * pg_lease — the programmer's side of the offline lease (issue 15 part 2).
 *
 * GRANT (control thread, production begin): the KeyStore makes a fresh
 * line-CA key (it never leaves it), the core sends its CSR as lease.grant;
 * the cloud answers a certificate for it (Device CA issued, pathLen 0,
 * validity = the lease) and N units reserved out of the job's quota. The
 * core checks that certificate before it keeps it: a test certificate
 * issued by the line-CA key must verify through it to the package's Root,
 * now (a foreign, expired or mis-keyed grant is refused: BAD_CERT, event
 * lease.refused). Kept in the KeyStore: blob "lease.rec/<job>".
 *
 * OFFLINE ISSUANCE (socket workers, while the cloud is unreachable): the
 * lease counter "lease/<id>" in the KeyStore advances first (never past N,
 * never down, across power loss), then the line-CA key signs the device
 * certificate in the KeyStore, then the certificate is journalled in sealed
 * storage (blob "lease.j/<id>/<counter>") and only then written to the chip
 * with its chain. A crash between counter and journal wastes that counter
 * value: no certificate exists, and the value is never taken again. A crash
 * between journal and chip leaves a journalled certificate: the chip,
 * resumed, gets that one again (pg__lease_find), no new counter.
 *
 * UPLOAD (reconnect): the journal goes up as lease.upload (signed by the
 * transport with the identity, like every request); the cloud records each
 * certificate once (by serial and counter), so a retry after a lost answer
 * changes nothing; answered records leave the journal. While the cloud is
 * unreachable a socket tries one upload every LEASE__PROBE_MS: it is the
 * probe that notices the link is back. Used up, expired or the job done:
 * the lease is returned (final upload, unused units back to the quota) and,
 * at the next production start, a new one is asked for.
 */
#include "pg_int.h"

#include <stdio.h>
#include <string.h>

#define LEASE__BODY_GRANT_REQ 70u
#define LEASE__BODY_GRANT 71u
#define LEASE__BODY_UPLOAD_REQ 72u
#define LEASE__BODY_UPLOAD_RESP 73u
#define LEASE__DOMAIN "nusec/v1 lease"
#define LEASE__REC_MAGIC "NLS1"
#define LEASE__JRN_MAGIC "NLJ1"
#define LEASE__JRN_SUPERSEDES "NLJ2" /* the chip's online request was abandoned */
#define LEASE__NAME_MAX 80
/* Between two upload tries while the cloud does not answer: also how soon
 * sockets paused on a used-up lease notice it is back (pg_link.c). */
#define LEASE__PROBE_MS 2000u
#define LEASE__BATCH_MAX 16u  /* certificates per upload from the control thread */
#define LEASE__SKEW_MS 60000u /* the cloud's clock may be ahead of ours */

/* ---- names and records -------------------------------------------------------------- */

/* prefix + a (+ "/" + k when k != 0) into out[LEASE__NAME_MAX + 1]. */
static int lease__name(char *out, const char *prefix, const char *a, uint32_t k)
{
    int n = k ? snprintf(out, LEASE__NAME_MAX + 1, "%s%s/%u", prefix, a, (unsigned)k)
              : snprintf(out, LEASE__NAME_MAX + 1, "%s%s", prefix, a);
    return n < 0 || n > LEASE__NAME_MAX ? NU_ERR_TOO_LARGE : NU_OK;
}
#define LEASE__REC(out, job) lease__name(out, "lease.rec/", job, 0)
#define LEASE__CTR(out, id) lease__name(out, "lease/", id, 0)
#define LEASE__JRN(out, id, k) lease__name(out, "lease.j/", id, k)

static void lease__be64(uint8_t *b, uint64_t v)
{
    pg__be32(b, (uint32_t)(v >> 32));
    pg__be32(b + 4, (uint32_t)v);
}

static uint32_t lease__rd32(const uint8_t *b)
{
    return (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
}

static uint64_t lease__rd64(const uint8_t *b)
{
    return (uint64_t)lease__rd32(b) << 32 | lease__rd32(b + 4);
}

static int lease__id_ok(const char *id)
{
    struct pg_bytes b = {(const uint8_t *)id, strlen(id)};
    return b.len <= PG_LEASE_ID_MAX && pg_msg_id_ok(b);
}

/* Record: magic | units be32 | nb be64 | na be64 | id len | id | cert len be16 | cert. */
static int lease__rec_put(struct pg_core *c, uint8_t *buf, size_t cap)
{
    const struct pg_lease *l = &c->lease;
    char name[LEASE__NAME_MAX + 1];
    size_t idl = strlen(l->id), len = 4 + 4 + 16 + 1 + idl + 2 + l->cert_len;
    if (len > cap)
        return NU_ERR_TOO_LARGE;
    memcpy(buf, LEASE__REC_MAGIC, 4);
    pg__be32(buf + 4, l->units);
    lease__be64(buf + 8, l->not_before_ms);
    lease__be64(buf + 16, l->not_after_ms);
    buf[24] = (uint8_t)idl;
    memcpy(buf + 25, l->id, idl);
    buf[25 + idl] = (uint8_t)(l->cert_len >> 8);
    buf[26 + idl] = (uint8_t)l->cert_len;
    memcpy(buf + 27 + idl, l->cert, l->cert_len);
    int rc = LEASE__REC(name, c->job.job_id);
    return rc == NU_OK ? pg_ks_blob_put(c->hal, name, buf, len) : rc;
}

static int lease__rec_parse(struct pg_lease *l, const uint8_t *b, size_t len)
{
    if (len < 27 || memcmp(b, LEASE__REC_MAGIC, 4) != 0)
        return NU_ERR_DECODE;
    size_t idl = b[24];
    if (idl == 0 || idl > PG_LEASE_ID_MAX || 27 + idl > len)
        return NU_ERR_DECODE;
    size_t cl = (size_t)b[25 + idl] << 8 | b[26 + idl];
    if (cl == 0 || cl > PG_LEASE_CERT_MAX || 27 + idl + cl != len)
        return NU_ERR_DECODE;
    l->units = lease__rd32(b + 4);
    l->not_before_ms = lease__rd64(b + 8);
    l->not_after_ms = lease__rd64(b + 16);
    memcpy(l->id, b + 25, idl);
    l->id[idl] = '\0';
    memcpy(l->cert, b + 27 + idl, cl);
    l->cert_len = cl;
    return lease__id_ok(l->id) && l->units ? NU_OK : NU_ERR_DECODE;
}

/* Journal record: magic | counter be32 | uid len | uid | cert len be16 |
 * certificate | outcome (0: the chip is not done) | error | serial len |
 * serial (hex). */
struct lease__jrn {
    uint32_t counter;
    const uint8_t *uid;
    size_t uid_len;
    const uint8_t *cert;
    size_t cert_len;
    uint8_t outcome, error;
    int supersedes; /* NLJ2: issued in place of an abandoned online request */
    char serial[41];
};

static int lease__jrn_get(struct pg_core *c, uint32_t k, uint8_t *buf, size_t cap,
                          struct lease__jrn *out)
{
    char name[LEASE__NAME_MAX + 1];
    size_t len = 0;
    int rc = LEASE__JRN(name, c->lease.id, k);
    if (rc == NU_OK)
        rc = pg_ks_blob_get(c->hal, name, buf, cap, &len);
    if (rc != NU_OK)
        return rc;
    int sup = len >= 4 && memcmp(buf, LEASE__JRN_SUPERSEDES, 4) == 0;
    if (len < 14 || (!sup && memcmp(buf, LEASE__JRN_MAGIC, 4) != 0) || lease__rd32(buf + 4) != k ||
        buf[8] == 0 || buf[8] > PG_UID_MAX || 11u + buf[8] > len)
        return NU_ERR_DECODE;
    size_t at = 9u + buf[8], cl = (size_t)buf[at] << 8 | buf[at + 1];
    if (cl == 0 || at + 2 + cl + 3 > len)
        return NU_ERR_DECODE;
    const uint8_t *tail = buf + at + 2 + cl;
    if (tail[2] > 40 || at + 2 + cl + 3 + tail[2] != len)
        return NU_ERR_DECODE;
    out->counter = k;
    out->supersedes = sup;
    out->uid_len = buf[8];
    out->uid = buf + 9;
    out->cert = buf + at + 2;
    out->cert_len = cl;
    out->outcome = tail[0];
    out->error = tail[1];
    memcpy(out->serial, tail + 3, tail[2]);
    out->serial[tail[2]] = '\0';
    return NU_OK;
}

static int lease__jrn_del(struct pg_core *c, uint32_t k)
{
    char name[LEASE__NAME_MAX + 1];
    int rc = LEASE__JRN(name, c->lease.id, k);
    return rc == NU_OK ? pg_ks_blob_put(c->hal, name, NULL, 0) : rc;
}

/* The lease counter's value (0 when never taken). */
static uint32_t lease__counter(struct pg_core *c)
{
    char name[LEASE__NAME_MAX + 1];
    uint32_t v = 0;
    if (LEASE__CTR(name, c->lease.id) != NU_OK || pg_ks_counter_read(c->hal, name, &v) != NU_OK)
        return 0;
    return v;
}

static int lease__sign_line(void *core, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    const struct pg_core *c = core;
    return pg_ks_sign(c->hal, PG_KEY_LINE_CA, digest, sig, sig_len);
}

/* Event{kind, job_id, code, detail} on the programmer's event topic. */
static void lease__event(struct pg_core *c, const char *kind, int code, const char *detail)
{
    struct pg_pb_writer w;
    if (pg__env_start(c, &w, c->ctl_buf, sizeof(c->ctl_buf), NULL, NULL, 0) != NU_OK)
        return;
    size_t m = pg_pb_begin(&w, PG_BODY_EVENT);
    pg_pb_put_str(&w, 1, kind);
    pg_pb_put_str(&w, 2, c->job.job_id);
    pg_pb_put_u64(&w, 3, (uint64_t)(code > 0 ? code : 0));
    pg_pb_put_str(&w, 4, detail);
    pg_pb_end(&w, m);
    if (w.err == NU_OK)
        pg__publish_event(c, kind, w.buf, w.len);
}

/* ---- load ------------------------------------------------------------------------------ */

static int lease__cert_ok(struct pg_core *c, uint8_t *tmp, size_t cap);

/* The job's lease from the KeyStore into c->lease, with its journal counted. */
static void lease__load(struct pg_core *c, uint8_t *buf, size_t cap)
{
    struct pg_lease *l = &c->lease;
    char name[LEASE__NAME_MAX + 1];
    size_t len = 0;
    l->active = 0;
    l->cert_len = 0;
    atomic_store(&l->exhausted, 0);
    atomic_store(&l->given_back, 0);
    atomic_store(&l->nothing_due, 0);
    atomic_store(&l->pending, 0u);
    atomic_store(&l->refused, 0);
    int rc = LEASE__REC(name, c->job.job_id);
    if (rc == NU_OK)
        rc = pg_ks_blob_get(c->hal, name, buf, cap, &len);
    if (rc == NU_OK)
        rc = lease__rec_parse(l, buf, len);
    if (rc != NU_OK) {
        if (rc != NU_ERR_NOT_FOUND)
            pg__log(c, PG_LOG_ERROR, "lease record of job %s unreadable: %s", c->job.job_id,
                    nu_err_name(rc));
        return;
    }
    l->active = 1;
    uint32_t hi = lease__counter(c), pending = 0;
    struct lease__jrn j;
    for (uint32_t k = 1; k <= hi && k <= l->units; k++)
        pending += lease__jrn_get(c, k, buf, cap, &j) == NU_OK;
    atomic_store(&l->pending, pending);
    atomic_store(&l->exhausted, hi >= l->units);
    pg__log(c, PG_LOG_INFO, "lease %s: %u of %u unit(s) used, %u certificate(s) to upload",
            l->id, (unsigned)hi, (unsigned)l->units, (unsigned)pending);
    /* The KeyStore has one line-CA key: another job's lease since replaced
     * it, and this one can sign no more. Used up, then: given back once its
     * records are up, and a new one asked for (with a key of its own). */
    if (hi < l->units && pg_now_ms(c->hal) < l->not_after_ms &&
        lease__cert_ok(c, buf, cap) != NU_OK) {
        pg__log(c, PG_LOG_WARN,
                "lease %s: its line-CA key is not the KeyStore's any more (another job's lease "
                "took it): no offline certificate under it",
                l->id);
        atomic_store(&l->exhausted, 1);
    }
}

int pg__lease_usable(struct pg_core *c)
{
    const struct pg_lease *l = &c->lease;
    if (!l->active || atomic_load(&l->exhausted))
        return 0;
    uint64_t now = pg_now_ms(c->hal);
    return now + LEASE__SKEW_MS >= l->not_before_ms && now < l->not_after_ms;
}

int pg__lease_chain(const struct pg_core *c, struct pg_der *out, size_t cap, size_t *out_n)
{
    if (!c->lease.active)
        return NU_ERR_NOT_FOUND;
    if (cap < c->job.n_chain + 1)
        return NU_ERR_TOO_LARGE;
    out[0].der = c->lease.cert;
    out[0].len = c->lease.cert_len;
    for (size_t i = 0; i < c->job.n_chain; i++)
        out[i + 1] = c->job.chain_der[i];
    *out_n = c->job.n_chain + 1;
    return NU_OK;
}

/* ---- grant ---------------------------------------------------------------------------- */

struct lease__grant_msg {
    struct pg_bytes id, job, cert;
    uint32_t units;
    uint64_t nb, na;
};

static int lease__grant_decode(const uint8_t *buf, size_t len, struct lease__grant_msg *g)
{
    static const struct pg_pb_desc d[] = {
        {1, PG_PB_BYTES, offsetof(struct lease__grant_msg, id), PG_LEASE_ID_MAX, 0, 0},
        {2, PG_PB_BYTES, offsetof(struct lease__grant_msg, job), PG_ID_MAX, 0, 0},
        {3, PG_PB_U32, offsetof(struct lease__grant_msg, units), 0, 0, 0},
        {4, PG_PB_U64, offsetof(struct lease__grant_msg, nb), 0, 0, 0},
        {5, PG_PB_U64, offsetof(struct lease__grant_msg, na), 0, 0, 0},
        {6, PG_PB_BYTES, offsetof(struct lease__grant_msg, cert), PG_LEASE_CERT_MAX, 0, 0},
    };
    struct pg_msg_env env;
    memset(g, 0, sizeof(*g));
    int rc = pg_msg_reply_decode(buf, len, (enum pg_body)LEASE__BODY_GRANT, &env, NULL);
    if (rc == NU_OK)
        rc = pg_pb_decode(env.body.p, env.body.len, d, sizeof(d) / sizeof(d[0]), g);
    return rc;
}

/* The granted line-CA certificate is ours and valid now: a test certificate
 * issued by the KeyStore's line-CA key verifies through it to the Root. */
static int lease__cert_ok(struct pg_core *c, uint8_t *tmp, size_t cap)
{
    uint8_t pub[PG_P256_PUB_LEN];
    struct pg_der chain[PG_CHAIN_MAX + 1];
    struct pg_cert_facts facts;
    size_t n = 0, len = 0;
    int rc = pg_ks_pubkey(c->hal, PG_KEY_IDENTITY, pub);
    if (rc == NU_OK)
        rc = pg_cert_issue(c->hal, lease__sign_line, c, c->lease.cert, c->lease.cert_len, pub,
                           c->id, pg_now_ms(c->hal) / 1000u, tmp, cap, &len);
    if (rc == NU_ERR_INVALID_ARG || rc == NU_ERR_CRYPTO)
        rc = NU_ERR_BAD_CERT; /* not a CA, or not for our key */
    if (rc == NU_OK)
        rc = pg__lease_chain(c, chain, PG_CHAIN_MAX + 1, &n);
    if (rc == NU_OK)
        rc = pg_cert_check(c->hal, tmp, len, chain, n, &facts);
    return rc;
}

/* The KeyStore's line-CA key if no lease was granted for it yet (blob
 * "lease.ask": a grant whose answer was lost gets the same lease for the
 * same key; a job that allows none costs no new key at each start), else a
 * fresh one. */
#define LEASE__ASK "lease.ask"
static int lease__line_key(struct pg_core *c, uint8_t pub[PG_P256_PUB_LEN])
{
    uint8_t mark = 1;
    size_t len = 0;
    if (pg_ks_blob_get(c->hal, LEASE__ASK, &mark, 1, &len) == NU_OK &&
        pg_ks_pubkey(c->hal, PG_KEY_LINE_CA, pub) == NU_OK)
        return NU_OK;
    int rc = pg_ks_line_key_generate(c->hal);
    if (rc == NU_OK)
        rc = pg_ks_blob_put(c->hal, LEASE__ASK, &mark, 1);
    return rc == NU_OK ? pg_ks_pubkey(c->hal, PG_KEY_LINE_CA, pub) : rc;
}

/* The key is now bound to a lease: the next lease gets a fresh one. */
static void lease__ask_clear(struct pg_core *c)
{
    pg_ks_blob_put(c->hal, LEASE__ASK, NULL, 0);
}

/* Keep a grant the cloud answered (c->lease filled, checked). */
static int lease__grant_take(struct pg_core *c, const struct lease__grant_msg *g)
{
    struct pg_lease *l = &c->lease;
    struct pg_enroll_work *ew = &c->work.enroll;
    if (!pg_msg_eq(g->job, c->job.job_id) || g->units == 0 || g->na <= g->nb ||
        g->cert.len == 0 || g->id.len == 0 || g->id.len > PG_LEASE_ID_MAX)
        return NU_ERR_DECODE;
    memcpy(l->id, g->id.p, g->id.len);
    l->id[g->id.len] = '\0';
    if (!lease__id_ok(l->id))
        return NU_ERR_DECODE;
    l->units = g->units;
    l->not_before_ms = g->nb;
    l->not_after_ms = g->na;
    memcpy(l->cert, g->cert.p, g->cert.len);
    l->cert_len = g->cert.len;
    l->active = 1; /* for the chain of the check */
    int rc = lease__cert_ok(c, ew->csr, sizeof(ew->csr));
    if (rc == NU_OK && lease__counter(c) != 0)
        rc = NU_ERR_STATE; /* a lease id seen before: its counter is not fresh */
    if (rc == NU_OK)
        rc = lease__rec_put(c, ew->req, sizeof(ew->req));
    l->active = rc == NU_OK;
    atomic_store(&l->exhausted, 0);
    atomic_store(&l->given_back, 0);
    atomic_store(&l->nothing_due, 0);
    atomic_store(&l->pending, 0u);
    return rc;
}

static void lease__grant(struct pg_core *c)
{
    struct pg_enroll_work *ew = &c->work.enroll;
    uint8_t pub[PG_P256_PUB_LEN], idem[32];
    size_t csr_len = 0, resp_len = 0;
    struct pg_pb_writer w;
    int rc = lease__line_key(c, pub);
    if (rc == NU_ERR_NOT_SUPPORTED)
        return; /* a KeyStore without a line CA: no offline lease here */
    if (rc == NU_OK)
        rc = pg_csr_make(c->hal, lease__sign_line, c, pub, c->id, NULL, "NuSEC", ew->csr,
                         sizeof(ew->csr), &csr_len);
    if (rc == NU_OK)
        rc = pg__sha256(c, LEASE__DOMAIN, sizeof(LEASE__DOMAIN), c->job.job_id,
                        strlen(c->job.job_id) + 1u, pub, sizeof(pub), idem);
    if (rc == NU_OK)
        rc = pg__env_start(c, &w, ew->req, sizeof(ew->req), NULL, idem, 16);
    if (rc == NU_OK) {
        size_t m = pg_pb_begin(&w, LEASE__BODY_GRANT_REQ);
        pg_pb_put_str(&w, 1, c->job.job_id);
        pg_pb_put_bytes(&w, 2, ew->csr, csr_len);
        pg_pb_end(&w, m);
        rc = w.err;
    }
    if (rc == NU_OK)
        rc = pg__request_try(c, "lease.grant", ew->req, w.len, 0, ew->resp, sizeof(ew->resp),
                             &resp_len);
    struct lease__grant_msg g;
    if (rc == NU_OK)
        rc = lease__grant_decode(ew->resp, resp_len, &g);
    if (rc == NU_OK)
        rc = lease__grant_take(c, &g);
    if (rc == NU_OK) {
        lease__ask_clear(c);
        pg__log(c, PG_LOG_INFO, "lease %s granted: %u unit(s) offline until %llu ms", c->lease.id,
                (unsigned)c->lease.units, (unsigned long long)c->lease.not_after_ms);
        return;
    }
    if (pg__transient(rc) || pg__cloud_transient(rc)) {
        pg__log(c, PG_LOG_WARN, "lease for job %s not granted now: %s", c->job.job_id,
                nu_err_name(rc));
        return; /* the key stays for the next try: same key, same lease */
    }
    if (rc == NU_ERR_NOT_AUTHORIZED) {
        pg__log(c, PG_LOG_INFO, "job %s allows no offline lease", c->job.job_id);
        return;
    }
    pg__log(c, PG_LOG_ERROR, "lease for job %s refused: %s", c->job.job_id, nu_err_name(rc));
    if (rc == NU_ERR_BAD_CERT || rc == NU_ERR_EXPIRED) /* the grant failed our check */
        lease__event(c, "lease.refused", rc, "line-CA certificate not usable");
}

/* ---- upload ------------------------------------------------------------------------------ */

struct lease__up_msg {
    struct pg_bytes id;
    uint32_t recorded, known, refused, used, units, returned;
};

/* Not inlined (nor lease__up_items): their frames are not live during
 * lease__upload's request, the deepest path of a worker stack. */
static __attribute__((noinline)) int lease__up_decode(const uint8_t *buf, size_t len,
                                                      struct lease__up_msg *u)
{
    static const struct pg_pb_desc d[] = {
        {1, PG_PB_BYTES, offsetof(struct lease__up_msg, id), PG_LEASE_ID_MAX, 0, 0},
        {2, PG_PB_U32, offsetof(struct lease__up_msg, recorded), 0, 0, 0},
        {3, PG_PB_U32, offsetof(struct lease__up_msg, known), 0, 0, 0},
        {4, PG_PB_U32, offsetof(struct lease__up_msg, refused), 0, 0, 0},
        {5, PG_PB_U32, offsetof(struct lease__up_msg, used), 0, 0, 0},
        {6, PG_PB_U32, offsetof(struct lease__up_msg, units), 0, 0, 0},
        {7, PG_PB_U32, offsetof(struct lease__up_msg, returned), 0, 0, 0},
    };
    struct pg_msg_env env;
    memset(u, 0, sizeof(*u));
    int rc = pg_msg_reply_decode(buf, len, (enum pg_body)LEASE__BODY_UPLOAD_RESP, &env, NULL);
    if (rc == NU_OK)
        rc = pg_pb_decode(env.body.p, env.body.len, d, sizeof(d) / sizeof(d[0]), u);
    return rc;
}

/* Journal records (at most max, as many as fit in buf) into the upload at
 * w: those whose chip is done or no longer in flight (a power cut left it
 * unfinished, and it was taken away), and with `drop` (no chip in flight)
 * all. A chip uploaded unfinished that comes back keyed gets the same
 * certificate from the cloud (a resend: same UID, same key). */
static __attribute__((noinline)) unsigned lease__up_items(struct pg_core *c, struct pg_pb_writer *w,
                                                          uint8_t *tmp, size_t tmp_cap,
                                                          unsigned max, int drop, uint32_t *sent)
{
    unsigned n = 0;
    uint32_t hi = lease__counter(c);
    struct lease__jrn j;
    for (uint32_t k = 1; k <= hi && k <= c->lease.units && n < max; k++) {
        if (lease__jrn_get(c, k, tmp, tmp_cap, &j) != NU_OK ||
            (!j.outcome && !drop && pg__chip_in_flight(c, j.uid, j.uid_len)))
            continue; /* answered already, in flight, or a crash's wasted value */
        uint8_t idem[32];
        if (j.supersedes && pg__cert_idem(c, j.uid, j.uid_len, idem) != NU_OK)
            continue; /* cannot say what it supersedes: it stays in the journal */
        size_t at = w->len;
        size_t it = pg_pb_begin(w, 2);
        pg_pb_put_bytes(w, 1, j.uid, j.uid_len);
        pg_pb_put_bytes(w, 2, j.cert, j.cert_len);
        pg_pb_put_u64(w, 3, j.counter);
        if (j.supersedes) /* revoke and refund what the cloud issued for it */
            pg_pb_put_bytes(w, 4, idem, 16);
        pg_pb_end(w, it);
        if (w->err) { /* full: this one goes in the next upload */
            w->err = NU_OK;
            w->len = at;
            break;
        }
        sent[n++] = k;
    }
    return n;
}

/*
 * After the upload: the chip's report of journal record k (device.report,
 * the same idempotency key as online), then the record leaves the journal.
 * A record without an outcome (its chip never finished) just leaves.
 */
static int lease__confirm(struct pg_core *c, uint32_t k, uint8_t *buf, size_t cap, uint8_t *tmp,
                          size_t tmp_cap)
{
    struct lease__jrn j;
    struct pg_pb_writer w;
    struct pg_msg_env env;
    size_t rl = 0;
    int rc = lease__jrn_get(c, k, tmp, tmp_cap, &j);
    if (rc == NU_OK && j.outcome) {
        struct pg_msg_report_out rep = {
            .job_id = c->job.job_id,
            .uid = j.uid,
            .uid_len = j.uid_len,
            .outcome = (enum pg_outcome)j.outcome,
            .serial = j.serial[0] ? j.serial : NULL,
            .error = j.error,
            .detail = j.outcome == PG_OUTCOME_PROVISIONED ? NULL : "offline",
        };
        rc = pg__report_env(c, &w, buf, cap, &rep);
        if (rc == NU_OK)
            rc = pg__request_try(c, "device.report", buf, w.len, 0, tmp, tmp_cap, &rl);
        if (pg__transient(rc) || pg__cloud_transient(rc))
            return rc; /* kept: uploaded again (known), reported again */
        /* The cloud's own NOT_FOUND is its verdict (the certificate is not
         * on record: the upload just refused it), not the transport's "no
         * subscriber": a record kept for it would go up again at every sync,
         * an incident each time, and hold the lease's refunds for good. */
        if (rc == NU_OK)
            rc = pg_msg_reply_decode(tmp, rl, PG_BODY_ACK, &env, NULL);
        if (pg__cloud_transient(rc))
            return rc;
        if (rc == NU_OK)
            atomic_fetch_add(&c->reports_sent, 1u);
        else
            pg__log(c, PG_LOG_WARN, "lease %s: report %u refused: %s", c->lease.id, (unsigned)k,
                    nu_err_name(rc));
    }
    int drc = lease__jrn_del(c, k);
    if (drc != NU_OK) {
        pg__log(c, PG_LOG_WARN, "lease %s: journal record %u not cleared: %s", c->lease.id,
                (unsigned)k, nu_err_name(drc));
        return drc;
    }
    atomic_fetch_sub(&c->lease.pending, 1u);
    return NU_OK;
}

/* What the scan that began when `seen` outcomes were journalled found. A
 * chip may finish while it scans, its record read before the outcome: that
 * outcome's "due now" (pg__lease_outcome) must not be overwritten, or the
 * record waits for the next chip's outcome, and at the end of a lease there
 * is none (a socket held for the refund its upload brings waits for good).
 * Stored first, re-checked after: a writer that counts after the re-check
 * stores its "due now" after ours. */
static void lease__note_due(struct pg_lease *l, unsigned n, unsigned seen)
{
    atomic_store(&l->nothing_due, n == 0);
    if (n == 0 && atomic_load(&l->outcomes) != seen)
        atomic_store(&l->nothing_due, 0);
}

/*
 * One lease.upload: journal records (up to max; `drop`: see lease__up_items)
 * and `final` (return the lease). One try (`once`) or with the request's
 * retries. Answered records are reported and leave the journal.
 * *out_sent: records it carried.
 */
static int lease__upload(struct pg_core *c, uint8_t *buf, size_t cap, uint8_t *tmp, size_t tmp_cap,
                         unsigned max, int final, int once, int drop, unsigned *out_sent)
{
    struct pg_lease *l = &c->lease;
    uint32_t sent[LEASE__BATCH_MAX];
    struct pg_pb_writer w;
    struct lease__up_msg u;
    size_t resp_len = 0;
    *out_sent = 0;
    if (max > LEASE__BATCH_MAX)
        max = LEASE__BATCH_MAX;
    int rc = pg__env_start(c, &w, buf, cap - 8, NULL, NULL, 0); /* 8: final + lengths */
    if (rc != NU_OK)
        return rc;
    size_t m = pg_pb_begin(&w, LEASE__BODY_UPLOAD_REQ);
    pg_pb_put_str(&w, 1, l->id);
    unsigned seen = atomic_load(&l->outcomes);
    unsigned n = lease__up_items(c, &w, tmp, tmp_cap, max, drop, sent);
    w.cap = cap;
    pg_pb_put_u64(&w, 3, final ? 1u : 0u);
    pg_pb_end(&w, m);
    if (w.err)
        return w.err;
    lease__note_due(l, n, seen);
    if (n == 0 && !final)
        return NU_OK;
    rc = once ? pg__request_try(c, "lease.upload", buf, w.len, 0, tmp, tmp_cap, &resp_len)
              : pg__request(c, NULL, "lease.upload", buf, w.len, tmp, tmp_cap, &resp_len);
    if (rc == NU_OK)
        rc = lease__up_decode(tmp, resp_len, &u);
    if (rc == NU_OK && (!pg_msg_eq(u.id, l->id) || u.recorded + u.known + u.refused != n))
        rc = NU_ERR_DECODE;
    if (rc != NU_OK) {
        if (!pg__transient(rc) && !pg__cloud_transient(rc)) {
            atomic_store(&l->refused, 1);
            pg__log(c, PG_LOG_ERROR, "lease %s: upload refused: %s (journal kept)", l->id,
                    nu_err_name(rc));
        }
        return rc;
    }
    atomic_fetch_add(&l->uploaded, u.recorded);
    int crc = NU_OK;
    for (unsigned i = 0; i < n && crc == NU_OK; i++)
        crc = lease__confirm(c, sent[i], buf, cap, tmp, tmp_cap);
    if (u.refused)
        pg__log(c, PG_LOG_ERROR, "lease %s: the cloud refused %u certificate(s) (incident)", l->id,
                (unsigned)u.refused);
    pg__log(c, PG_LOG_INFO, "lease %s: %u certificate(s) uploaded (%u new, %u known), %u of %u used%s",
            l->id, n, (unsigned)u.recorded, (unsigned)u.known, (unsigned)u.used,
            (unsigned)u.units, u.returned ? ", returned" : "");
    *out_sent = n;
    return crc != NU_OK ? crc : final && !u.returned ? NU_ERR_STATE : NU_OK;
}

/* Control thread: the whole journal up (the enroll buffers are free). */
static int lease__upload_all(struct pg_core *c, int once, int drop)
{
    struct pg_enroll_work *ew = &c->work.enroll;
    unsigned sent = 0;
    int rc = NU_OK;
    while (rc == NU_OK && atomic_load(&c->lease.pending) && !atomic_load(&c->lease.refused)) {
        rc = lease__upload(c, ew->resp, sizeof(ew->resp), ew->req, sizeof(ew->req),
                           LEASE__BATCH_MAX, 0, once, drop, &sent);
        if (rc == NU_OK && sent == 0)
            break; /* pending counts a record the journal no longer has */
    }
    pg__zero(ew, sizeof(*ew));
    return rc;
}

/* Control thread: give the lease back (unused units to the quota). */
static int lease__return(struct pg_core *c)
{
    struct pg_enroll_work *ew = &c->work.enroll;
    char name[LEASE__NAME_MAX + 1];
    unsigned sent = 0;
    int rc = lease__upload(c, ew->resp, sizeof(ew->resp), ew->req, sizeof(ew->req), 0, 1, 1, 1,
                           &sent);
    /* The cloud does not know it (its ledger lost it): ours goes too. Any
     * other error keeps it, to be returned later: the cloud holds its units
     * out of the quota until then. */
    if (rc == NU_ERR_LEASE_UNKNOWN)
        rc = NU_OK;
    if (rc == NU_OK && LEASE__REC(name, c->job.job_id) == NU_OK)
        rc = pg_ks_blob_put(c->hal, name, NULL, 0);
    if (rc == NU_OK) {
        pg__log(c, PG_LOG_INFO, "lease %s returned", c->lease.id);
        c->lease.active = 0;
    }
    atomic_store(&c->lease.refused, 0);
    pg__zero(ew, sizeof(*ew));
    return rc;
}

/* ---- life cycle --------------------------------------------------------------------------- */

void pg__lease_begin(struct pg_core *c)
{
    struct pg_lease *l = &c->lease;
    lease__load(c, c->work.enroll.resp, sizeof(c->work.enroll.resp));
    if (l->active && atomic_load(&l->pending))
        lease__upload_all(c, 1, 0); /* a crash's unfinished chips may be resumed */
    if (l->active) {
        uint64_t now = pg_now_ms(c->hal);
        int spent = atomic_load(&l->exhausted) || now >= l->not_after_ms;
        if (!spent || atomic_load(&l->pending) || lease__return(c) != NU_OK)
            return; /* still good, or its certificates are not all up yet */
    }
    lease__grant(c);
    pg__zero(&c->work, sizeof(c->work));
}

void pg__lease_end(struct pg_core *c, int finished)
{
    if (!c->lease.active)
        return;
    if (atomic_load(&c->lease.pending))
        lease__upload_all(c, 1, 1);
    if (finished && !atomic_load(&c->lease.pending))
        lease__return(c);
}

int pg__lease_idle(struct pg_core *c)
{
    if (!c->lease.active || !atomic_load(&c->lease.pending) || atomic_load(&c->lease.refused))
        return NU_OK;
    return lease__upload_all(c, 1, 1);
}

int pg__lease_uploads(const struct pg_core *c)
{
    const struct pg_lease *l = &c->lease;
    return l->active && atomic_load(&l->pending) && !atomic_load(&l->refused) &&
           !atomic_load(&l->nothing_due);
}

void pg__lease_worker(struct pg_core *c, unsigned sock, struct pg_sock_work *w)
{
    struct pg_lease *l = &c->lease;
    if (!l->active || !atomic_load(&l->pending) || atomic_load(&l->refused))
        return;
    if (atomic_load(&c->cloud_lost_s)) {
        unsigned now = (unsigned)pg_mono_ms(c->hal), at = atomic_load(&l->probe_at_ms);
        if ((int)(now - at) < 0 ||
            !atomic_compare_exchange_strong(&l->probe_at_ms, &at, now + LEASE__PROBE_MS))
            return;
    }
    if (atomic_flag_test_and_set(&l->sync_lock))
        return;
    unsigned sent = 0;
    int rc;
    do {
        rc = lease__upload(c, w->req, sizeof(w->req), w->resp, sizeof(w->resp), 1, 0, 1, 0, &sent);
    } while (rc == NU_OK && sent && atomic_load(&l->pending) && !pg__hold_stopped(c));
    atomic_flag_clear(&l->sync_lock);
    if (rc != NU_OK)
        pg__log(c, PG_LOG_DEBUG, "socket %u: lease upload: %s", sock, nu_err_name(rc));
}

/* ---- issuance ------------------------------------------------------------------------------ */

/* After the leaf at w->resp[0..leaf): line CA, then the package chain
 * without its root (the root is the verifier's trust anchor). */
static int lease__chain_append(struct pg_core *c, struct pg_sock_work *w, size_t leaf,
                               size_t *out_len)
{
    size_t len = leaf, n = c->job.n_chain > 1 ? c->job.n_chain - 1 : c->job.n_chain;
    if (len + c->lease.cert_len > sizeof(w->resp))
        return NU_ERR_TOO_LARGE;
    memcpy(w->resp + len, c->lease.cert, c->lease.cert_len);
    len += c->lease.cert_len;
    for (size_t i = 0; i < n; i++) {
        if (len + c->job.chain_der[i].len > sizeof(w->resp))
            return NU_ERR_TOO_LARGE;
        memcpy(w->resp + len, c->job.chain_der[i].der, c->job.chain_der[i].len);
        len += c->job.chain_der[i].len;
    }
    *out_len = len;
    return NU_OK;
}

int pg__lease_abandon_due(struct pg_core *c, uint64_t asked_ms)
{
    uint64_t since = pg__link_lost_ms(c);
    if (since && asked_ms && asked_ms < since)
        since = asked_ms;
    return since && pg__lease_usable(c) && pg_now_ms(c->hal) >= since + c->lease_abandon_ms;
}

/*
 * A KeyStore write that failed IO (a full disk under the POSIX port's sealed
 * files) is waited out, as the unit's count is (pg_produce.c): the chip
 * holds its key already, and failing it would waste it. 1 to try again; 0
 * when *rc is not IO, or when a stop ended the wait (*rc stays IO), or the
 * job's end (*rc = EXPIRED).
 */
static int lease__io_wait(struct pg_core *c, int *rc, const char *what, unsigned *tries,
                          uint32_t *delay)
{
    if (*rc != NU_ERR_IO)
        return 0;
    if ((*tries)++ % 16u == 0)
        pg__log(c, PG_LOG_WARN, "lease %s: KeyStore %s: IO; the chip waits", c->lease.id, what);
    int wrc = pg__hold_wait(c, delay);
    if (wrc == NU_ERR_EXPIRED)
        *rc = wrc;
    return wrc == NU_OK;
}

static int lease__issue(struct pg_core *c, struct pg_sock_work *w, int supersedes,
                        size_t *out_leaf_len, size_t *out_len, int *out_journalled,
                        uint32_t *out_counter)
{
    struct pg_lease *l = &c->lease;
    char name[LEASE__NAME_MAX + 1];
    uint32_t k = 0, delay = c->retry_delay_ms;
    unsigned tries = 0;
    size_t leaf = 0;
    *out_journalled = 0;
    if (!pg__lease_usable(c))
        return !l->active ? NU_ERR_STATE : atomic_load(&l->exhausted) ? NU_ERR_LIMIT
                                                                       : NU_ERR_EXPIRED;
    /* 1. The counter first: whatever happens next, this value is taken. */
    int rc = LEASE__CTR(name, l->id);
    if (rc == NU_OK) {
        do
            rc = pg_ks_counter_inc(c->hal, name, l->units, &k);
        while (lease__io_wait(c, &rc, "counter", &tries, &delay));
    }
    if (rc == NU_ERR_LIMIT)
        atomic_store(&l->exhausted, 1);
    if (rc == NU_ERR_IO)
        return NU_ERR_STATE; /* stopped: nothing taken, nothing written (the CSR intact) */
    if (rc != NU_OK)
        return rc;
    if (k >= l->units)
        atomic_store(&l->exhausted, 1);
    /* 2. Signed in the KeyStore by the line-CA key. */
    rc = pg_cert_issue(c->hal, lease__sign_line, c, l->cert, l->cert_len, w->pub, w->uid_hex,
                       pg_now_ms(c->hal) / 1000u, w->resp, sizeof(w->resp), &leaf);
    if (rc == NU_OK)
        rc = lease__chain_append(c, w, leaf, out_len);
    /* 3. Journalled in sealed storage before the chip sees it. */
    size_t at = 9u + w->uid_len, jl = at + 2 + leaf + 3;
    if (rc == NU_OK && jl > sizeof(w->req))
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK) {
        memcpy(w->req, supersedes ? LEASE__JRN_SUPERSEDES : LEASE__JRN_MAGIC, 4);
        pg__be32(w->req + 4, k);
        w->req[8] = (uint8_t)w->uid_len;
        memcpy(w->req + 9, w->uid, w->uid_len);
        w->req[at] = (uint8_t)(leaf >> 8);
        w->req[at + 1] = (uint8_t)leaf;
        memcpy(w->req + at + 2, w->resp, leaf);
        memset(w->req + at + 2 + leaf, 0, 3); /* not done yet */
        rc = LEASE__JRN(name, l->id, k);
    }
    if (rc == NU_OK) {
        do
            rc = pg_ks_blob_put(c->hal, name, w->req, jl);
        while (lease__io_wait(c, &rc, "journal", &tries, &delay));
    }
    if (rc != NU_OK) {
        pg__log(c, PG_LOG_ERROR, "lease %s: counter %u not used: %s", l->id, (unsigned)k,
                nu_err_name(rc));
        /* The certificate replaced the CSR in w->resp: never EXPIRED or
         * STATE here, which send the chip the cloud's way with it. */
        return rc == NU_ERR_EXPIRED ? NU_ERR_IO : rc;
    }
    *out_journalled = 1;
    *out_counter = k;
    atomic_fetch_add(&l->pending, 1u);
    atomic_fetch_add(&l->issued, 1u);
    *out_leaf_len = leaf;
    pg__log(c, PG_LOG_INFO, "lease %s: certificate %u of %u issued offline for %s%s", l->id,
            (unsigned)k, (unsigned)l->units, w->uid_hex,
            supersedes ? " (its online request abandoned)" : "");
    return NU_OK;
}

/* Counted in `issuing` from before the counter until the record is pending:
 * the last unit sets `exhausted` before its record exists, and a give-back
 * (lease__give_back_due) in that window would close the lease on the cloud
 * with a certificate about to reach a chip and never be recorded. */
int pg__lease_issue(struct pg_core *c, struct pg_sock_work *w, int supersedes, size_t *out_leaf_len,
                    size_t *out_len, int *out_journalled, uint32_t *out_counter)
{
    atomic_fetch_add(&c->lease.issuing, 1u);
    int rc = lease__issue(c, w, supersedes, out_leaf_len, out_len, out_journalled, out_counter);
    atomic_fetch_sub(&c->lease.issuing, 1u);
    return rc;
}

/* The journal record (read into w->req) of the chip in w (its UID). */
static int lease__jrn_of_chip(struct pg_core *c, struct pg_sock_work *w, struct lease__jrn *j)
{
    if (!c->lease.active || !atomic_load(&c->lease.pending))
        return NU_ERR_NOT_FOUND;
    uint32_t hi = lease__counter(c);
    for (uint32_t k = 1; k <= hi && k <= c->lease.units; k++) {
        if (lease__jrn_get(c, k, w->req, sizeof(w->req), j) == NU_OK && j->uid_len == w->uid_len &&
            memcmp(j->uid, w->uid, j->uid_len) == 0)
            return NU_OK;
    }
    return NU_ERR_NOT_FOUND;
}

int pg__lease_find(struct pg_core *c, struct pg_sock_work *w, size_t *out_leaf_len, size_t *out_len,
                   uint32_t *out_counter)
{
    struct lease__jrn j;
    int rc = lease__jrn_of_chip(c, w, &j);
    if (rc == NU_OK && j.cert_len > sizeof(w->resp))
        rc = NU_ERR_NOT_FOUND;
    if (rc != NU_OK)
        return rc;
    memcpy(w->resp, j.cert, j.cert_len);
    *out_leaf_len = j.cert_len;
    *out_counter = j.counter;
    pg__log(c, PG_LOG_INFO, "lease %s: chip %s gets its journalled certificate %u again",
            c->lease.id, w->uid_hex, (unsigned)j.counter);
    return lease__chain_append(c, w, j.cert_len, out_len);
}

int pg__lease_holds(struct pg_core *c, struct pg_sock_work *w, const uint8_t *der, size_t len,
                    uint32_t *out_counter)
{
    struct lease__jrn j;
    int rc = lease__jrn_of_chip(c, w, &j);
    if (rc == NU_OK && (j.cert_len > len || memcmp(j.cert, der, j.cert_len) != 0))
        rc = NU_ERR_NOT_FOUND; /* the chip holds another certificate */
    if (rc == NU_OK)
        *out_counter = j.counter;
    return rc;
}

int pg__lease_outcome(struct pg_core *c, struct pg_sock_work *w, uint32_t counter,
                      const struct pg_msg_report_out *rep)
{
    char name[LEASE__NAME_MAX + 1];
    struct lease__jrn j;
    size_t sl = rep->serial ? strlen(rep->serial) : 0;
    int rc = lease__jrn_get(c, counter, w->req, sizeof(w->req), &j);
    if (rc == NU_OK && (sl > 40 || (size_t)(j.cert - w->req) + j.cert_len + 3 + sl > sizeof(w->req)))
        rc = NU_ERR_TOO_LARGE;
    if (rc != NU_OK)
        return rc;
    uint8_t *tail = w->req + (j.cert - w->req) + j.cert_len;
    tail[0] = (uint8_t)rep->outcome;
    tail[1] = (uint8_t)(rep->error > 0 && rep->error < 256 ? rep->error : 0);
    tail[2] = (uint8_t)sl;
    memcpy(tail + 3, rep->serial, sl);
    rc = LEASE__JRN(name, c->lease.id, counter);
    if (rc == NU_OK)
        rc = pg_ks_blob_put(c->hal, name, w->req, (size_t)(tail + 3 + sl - w->req));
    if (rc == NU_OK) { /* this record is due now */
        atomic_fetch_add(&c->lease.outcomes, 1u);
        atomic_store(&c->lease.nothing_due, 0);
    }
    return rc;
}

/* Used up (or run out of time) and all of it confirmed, not given back yet:
 * what the lease still holds of the quota is a counter value a crash burned
 * (no certificate) or units never used. Given back now, not at the next
 * start, it is quota again for this run. */
static int lease__give_back_due(const struct pg_core *c)
{
    const struct pg_lease *l = &c->lease;
    /* Run out of time counts as used up: the cloud holds its unused units
     * back from the quota until it is given back (or written off by the
     * OEM), and a chip refused QUOTA_EXHAUSTED for them waits for that
     * (pg__lease_may_refund) instead of being failed keyed. */
    int spent = atomic_load(&l->exhausted) || pg_now_ms(c->hal) >= l->not_after_ms;
    /* `issuing` before `pending`: an issuer makes its record pending before
     * it leaves `issuing`, so one of the two reads sees it. */
    return l->active && spent && !atomic_load(&l->issuing) && !atomic_load(&l->pending) &&
           !atomic_load(&l->refused) && !atomic_load(&l->given_back);
}

void pg__lease_chip_left(struct pg_core *c)
{
    struct pg_lease *l = &c->lease;
    if (!l->active || !atomic_load(&l->pending))
        return;
    atomic_fetch_add(&l->outcomes, 1u); /* as an outcome: see lease__note_due */
    atomic_store(&l->nothing_due, 0);
}

int pg__lease_may_refund(const struct pg_core *c)
{
    const struct pg_lease *l = &c->lease;
    return (l->active && atomic_load(&l->pending) && !atomic_load(&l->refused)) ||
           lease__give_back_due(c);
}

int pg_core_lease_sync(struct pg_core *c)
{
    if (!c || (!pg__lease_uploads(c) && !lease__give_back_due(c)))
        return NU_OK;
    struct pg_lease *l = &c->lease;
    if (atomic_flag_test_and_set(&l->sync_lock))
        return NU_ERR_BUSY;
    unsigned sent = 0;
    int rc = NU_OK;
    /* Not LIMIT: a line at its limit still holds chips that wait for the
     * quota these uploads refund (pg__hold_stopped). */
    while (pg__lease_uploads(c) && !pg__hold_stopped(c)) {
        rc = lease__upload(c, l->sync_req, sizeof(l->sync_req), l->sync_resp, sizeof(l->sync_resp),
                           1, 0, 1, 0, &sent);
        if (rc != NU_OK || !sent)
            break;
    }
    /* The final upload: the cloud closes it. The KeyStore record stays until
     * production ends (pg__lease_end returns it again: a closed lease is OK). */
    if (rc == NU_OK && lease__give_back_due(c)) {
        rc = lease__upload(c, l->sync_req, sizeof(l->sync_req), l->sync_resp, sizeof(l->sync_resp),
                           0, 1, 1, 1, &sent);
        if (rc == NU_OK) {
            atomic_store(&l->given_back, 1);
            pg__log(c, PG_LOG_INFO, "lease %s %s and confirmed: given back now", l->id,
                    atomic_load(&l->exhausted) ? "used up" : "run out of time");
        }
    }
    pg__zero(l->sync_req, sizeof(l->sync_req));
    pg__zero(l->sync_resp, sizeof(l->sync_resp));
    atomic_flag_clear(&l->sync_lock);
    return rc;
}

void pg_core_lease_counts(const struct pg_core *c, struct pg_lease_counts *out)
{
    struct pg_lease *l = (struct pg_lease *)&c->lease; /* atomics only */
    out->issued = atomic_load(&l->issued);
    out->uploaded = atomic_load(&l->uploaded);
    out->pending = atomic_load(&l->pending);
    out->units = l->active ? l->units : 0;
}
