/* pg_produce: one chip in one socket, from blank to locked (ARCHITECTURE.md "Production flow"). */
/* Over 1,000 lines on purpose: the chip steps, the cloud exchange and the
 * reports all work on struct prod__dev (one chip's state, private here) and,
 * with the unit and journal bookkeeping, keep one rule: a unit is spent once
 * cert.request left. In one file a reader checks that rule in one place. */
#include "pg_int.h"

#include <stdio.h>
#include <string.h>

#define PROD__CERT_DOMAIN "nusec/v1 cert"
#define PROD__ATTEST_DOMAIN "nusec/v1 attest"
#define PROD__REPORT_DOMAIN "nusec/v1 report"
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
    int unit;        /* a production unit is reserved for this chip */
    int sent;        /* cert.request left: the unit is spent */
    int untouched;   /* no unit could be reserved: the chip was not written */
    int interrupted; /* production stopped while the cloud was away */
    int once;        /* one try only (control thread: never hold) */
    int hold;        /* a report that must be confirmed now, lease or not */
    int may_leave;   /* a report: under an offline lease, leave it in the journal */
    uint32_t lease_k; /* its lease counter value (offline), 0: none */
    int offline;     /* certified under the offline lease (issue 15) */
    int may_abandon; /* cert.request: give it up for the lease when due */
    int abandoned;   /* it was given up, unanswered (pg__lease_abandon_due) */
    int no_abandon;  /* the lease was used up meanwhile: wait for the cloud */
    int quota_leased;    /* QUOTA_EXHAUSTED online, a usable lease: its units are what is left */
    int keep;            /* its report is in no journal slot: the chip stays for the next run */
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

/* ---- production units ---------------------------------------------------------- */

static void prod__lock(struct pg_core *c)
{
    while (atomic_flag_test_and_set_explicit(&c->units.lock, memory_order_acquire)) {
    }
}

static void prod__unlock(struct pg_core *c)
{
    atomic_flag_clear_explicit(&c->units.lock, memory_order_release);
}

/* Blob "inflight.<job>.<socket>": the UID of the socket's chip that holds a
 * unit. One blob per socket, so each worker writes only its own. */
static int prod__inflight_name(const struct pg_core *c, unsigned s, char *name, size_t cap)
{
    int n = snprintf(name, cap, "%s%s.%u", PG_BLOB_INFLIGHT_PREFIX, c->job.job_id, s);
    return n < 0 || (size_t)n >= cap ? NU_ERR_TOO_LARGE : NU_OK;
}

/* The record: PROD__INFLIGHT_MAGIC, the KeyStore counter value from which the
 * unit is taken (big-endian; 0: a unit it already had), the UID. A record of
 * an older build is the bare UID. */
#define PROD__INFLIGHT_MAGIC "NUI1"
#define PROD__INFLIGHT_HDR 8u

/*
 * Socket s's chip holds a unit from counter value `from` on: durable before
 * the unit is counted and before anything is written to the chip, so a run
 * that crashes mid-chip leaves the next run the proof that this chip's unit
 * was taken (it then finishes it without a new one), and a crash between
 * this record and the count leaves a record the counter never reached.
 */
static int prod__inflight_put(struct pg_core *c, unsigned s, const uint8_t *uid, size_t len,
                              uint32_t from)
{
    char name[PG_ID_MAX + 24];
    uint8_t rec[PROD__INFLIGHT_HDR + PG_UID_MAX];
    if (len > PG_UID_MAX)
        return NU_ERR_TOO_LARGE;
    memcpy(rec, PROD__INFLIGHT_MAGIC, 4);
    rec[4] = (uint8_t)(from >> 24);
    rec[5] = (uint8_t)(from >> 16);
    rec[6] = (uint8_t)(from >> 8);
    rec[7] = (uint8_t)from;
    memcpy(rec + PROD__INFLIGHT_HDR, uid, len);
    int rc = prod__inflight_name(c, s, name, sizeof(name));
    if (rc == NU_OK)
        rc = pg_ks_blob_put(c->hal, name, rec, PROD__INFLIGHT_HDR + len);
    return rc;
}

/* The chip's unit is taken: the in-memory copy of its record. */
static void prod__inflight_set(struct pg_core *c, unsigned s, const uint8_t *uid, size_t len)
{
    struct pg_units *u = &c->units;
    prod__lock(c);
    int left =
        u->inflight_len[s] && (u->inflight_len[s] != len || memcmp(u->inflight_uid[s], uid, len));
    u->inflight_len[s] = (uint8_t)len;
    memcpy(u->inflight_uid[s], uid, len);
    prod__unlock(c);
    if (left)
        pg__lease_chip_left(c);
}

int pg__chip_in_flight(struct pg_core *c, const uint8_t *uid, size_t len)
{
    struct pg_units *u = &c->units;
    int found = 0;
    prod__lock(c);
    for (unsigned s = 0; s < c->n_sockets && !found; s++)
        found = u->inflight_len[s] == len && !memcmp(u->inflight_uid[s], uid, len);
    for (unsigned i = 0; i < u->n_held && !found; i++)
        found = u->held_len[i] == len && !memcmp(u->held_uid[i], uid, len);
    prod__unlock(c);
    return found;
}

/* A new unit from the KeyStore counter for the chip of socket s: recorded at
 * the value the count will reach, then counted. Sockets take their turn, so a
 * crash leaves at most one record above the counter, and it is that socket's. */
static int prod__unit_count(struct prod__dev *d, uint32_t *counter)
{
    struct pg_core *c = d->c;
    uint32_t now = 0;
    while (atomic_flag_test_and_set_explicit(&c->units.count_lock, memory_order_acquire))
        pg_sleep_ms(c->hal, 1);
    int rc = pg_ks_counter_read(c->hal, c->job.job_id, &now);
    if (rc == NU_OK)
        rc = prod__inflight_put(c, d->s, d->w->uid, d->w->uid_len, now + 1u);
    if (rc == NU_OK)
        rc = pg_ks_counter_inc(c->hal, c->job.job_id, c->job.limit, counter);
    atomic_flag_clear_explicit(&c->units.count_lock, memory_order_release);
    return rc;
}

/* The chip's own held unit, else a spare one, else a new one from the
 * KeyStore counter (LIMIT when none is left). */
static int prod__unit_take(struct prod__dev *d)
{
    struct pg_core *c = d->c;
    struct pg_units *u = &c->units;
    int own = 0, spare = 0;
    prod__lock(c);
    for (unsigned i = 0; i < u->n_held && !own; i++) {
        if (u->held_len[i] == d->w->uid_len && !memcmp(u->held_uid[i], d->w->uid, d->w->uid_len)) {
            own = 1;
            u->n_held--;
            u->held_len[i] = u->held_len[u->n_held];
            memcpy(u->held_uid[i], u->held_uid[u->n_held], PG_UID_MAX);
        }
    }
    /* The chip a crashed run left half done in this socket: its unit was
     * taken then (only the socket's first chip of this run can be it). */
    if (!own && u->resume[d->s] && u->inflight_len[d->s] == d->w->uid_len &&
        !memcmp(u->inflight_uid[d->s], d->w->uid, d->w->uid_len)) {
        own = 1;
        pg__log(c, PG_LOG_INFO, "socket %u: chip %s resumed with the unit of the last run", d->s,
                d->w->uid_hex);
    }
    u->resume[d->s] = 0;
    if (!own && u->spare) {
        u->spare--;
        spare = 1;
    }
    prod__unlock(c);
    uint32_t counter = 0, delay = c->retry_delay_ms;
    int rc = NU_OK;
    /* The KeyStore's storage may fail for a while (a full disk under the
     * POSIX port's sealed file): the chip is still untouched and no unit was
     * counted, so it waits in its socket and the count is tried again; the
     * tray is not run through with every chip "failed at counter". Only a
     * verdict (LIMIT...) or a stop ends it (then the chip goes back blank). */
    for (unsigned k = 0; !own && !spare; k++) {
        rc = prod__unit_count(d, &counter);
        if (rc != NU_ERR_IO)
            break;
        if (k == 0 || k % 16 == 0)
            pg__log(c, PG_LOG_WARN, "socket %u: KeyStore counter: %s; chip %s held untouched",
                    d->s, nu_err_name(rc), d->w->uid_hex);
        if (pg__hold_wait(c, &delay) != NU_OK)
            break;
    }
    /* A unit it already had is recorded from 0: always its own after a crash. */
    if ((own || spare) && rc == NU_OK)
        rc = prod__inflight_put(c, d->s, d->w->uid, d->w->uid_len, 0);
    if (rc != NU_OK && (own || spare)) {
        pg__log(c, PG_LOG_WARN, "socket %u: unit of the chip not recorded: %s", d->s,
                nu_err_name(rc));
        rc = NU_OK; /* it holds the unit in RAM; only a crash now would cost it */
    }
    d->unit = rc == NU_OK;
    if (rc == NU_OK)
        prod__inflight_set(c, d->s, d->w->uid, d->w->uid_len);
    return rc;
}

/* A unit no certificate request used goes to the next chip. */
static void prod__unit_spare(struct pg_core *c)
{
    prod__lock(c);
    c->units.spare++;
    prod__unlock(c);
}

/* The chip stays in its socket with its unit until a later run. */
static void prod__unit_hold(struct prod__dev *d)
{
    struct pg_core *c = d->c;
    struct pg_units *u = &c->units;
    int kept = 0;
    prod__lock(c);
    if (u->n_held < PG_HELD_MAX) {
        u->held_len[u->n_held] = (uint8_t)d->w->uid_len;
        memcpy(u->held_uid[u->n_held++], d->w->uid, d->w->uid_len);
        kept = 1;
    }
    prod__unlock(c);
    if (!kept)
        pg__log(c, PG_LOG_WARN, "socket %u: no room to keep the unit of %s: one unit wasted",
                d->s, d->w->uid_hex);
}

uint32_t pg_core_units_kept(const struct pg_core *c)
{
    struct pg_core *m = (struct pg_core *)c; /* the lock only */
    prod__lock(m);
    uint32_t n = c->units.spare + c->units.n_held;
    for (unsigned s = 0; s < c->n_sockets; s++)
        n += c->units.resume[s] != 0;
    prod__unlock(m);
    return n;
}

/* Blob "units.<job>": spare (be32) || n || n x (len || uid). */
static int prod__units_name(const struct pg_core *c, char *name, size_t cap)
{
    int n = snprintf(name, cap, "%s%s", PG_BLOB_UNITS_PREFIX, c->job.job_id);
    return n < 0 || (size_t)n >= cap ? NU_ERR_TOO_LARGE : NU_OK;
}

/* The chips each socket held a unit for when the last run ended: after a
 * crash, those may still be in their sockets, half done (see pg_units). */
static void prod__inflight_load(struct pg_core *c)
{
    char name[PG_ID_MAX + 24];
    struct pg_units *u = &c->units;
    unsigned n = 0;
    memset(u->inflight_len, 0, sizeof(u->inflight_len));
    memset(u->resume, 0, sizeof(u->resume));
    uint32_t counter = 0;
    int have_counter = pg_ks_counter_read(c->hal, c->job.job_id, &counter) == NU_OK;
    for (unsigned s = 0; s < c->n_sockets; s++) {
        uint8_t rec[PROD__INFLIGHT_HDR + PG_UID_MAX];
        size_t len = 0, off = 0;
        if (prod__inflight_name(c, s, name, sizeof(name)) != NU_OK ||
            pg_ks_blob_get(c->hal, name, rec, sizeof(rec), &len) != NU_OK || len == 0)
            continue;
        if (len > PROD__INFLIGHT_HDR && !memcmp(rec, PROD__INFLIGHT_MAGIC, 4)) {
            uint32_t from =
                (uint32_t)rec[4] << 24 | (uint32_t)rec[5] << 16 | (uint32_t)rec[6] << 8 | rec[7];
            /* Recorded, never counted: the crash came between the two. */
            if (from && (!have_counter || counter < from))
                continue;
            off = PROD__INFLIGHT_HDR;
        }
        if (len - off > PG_UID_MAX)
            continue;
        memcpy(u->inflight_uid[s], rec + off, len - off);
        u->inflight_len[s] = (uint8_t)(len - off);
        u->resume[s] = 1;
        n++;
    }
    if (n)
        pg__log(c, PG_LOG_INFO, "job %s: %u socket(s) may hold a chip the last run left half done",
                c->job.job_id, n);
}

/* At a clean end: a chip still marked for resuming keeps its unit as a held
 * one (units.<job>), and the in-flight records are cleared (the held list
 * now says everything). Called before prod__units_save. */
static void prod__inflight_end(struct pg_core *c)
{
    char name[PG_ID_MAX + 24];
    struct pg_units *u = &c->units;
    for (unsigned s = 0; s < c->n_sockets; s++) {
        int known = 0;
        for (unsigned i = 0; i < u->n_held && u->resume[s]; i++)
            known = known || (u->held_len[i] == u->inflight_len[s] &&
                              !memcmp(u->held_uid[i], u->inflight_uid[s], u->held_len[i]));
        if (u->resume[s] && !known && u->n_held < PG_HELD_MAX) {
            u->held_len[u->n_held] = u->inflight_len[s];
            memcpy(u->held_uid[u->n_held++], u->inflight_uid[s], u->inflight_len[s]);
        }
        if (u->inflight_len[s] && prod__inflight_name(c, s, name, sizeof(name)) == NU_OK &&
            pg_ks_blob_put(c->hal, name, NULL, 0) != NU_OK)
            pg__log(c, PG_LOG_WARN, "socket %u: in-flight record not cleared", s);
        u->inflight_len[s] = 0;
        u->resume[s] = 0;
    }
}

/* Take the units an earlier run kept out of the KeyStore into RAM (the blob
 * is deleted first: a crash from here on wastes them, never reuses them). */
static int prod__units_load(struct pg_core *c)
{
    uint8_t b[5 + PG_HELD_MAX * (1 + PG_UID_MAX)];
    char name[PG_ID_MAX + 16];
    size_t len = 0;
    struct pg_units *u = &c->units;
    u->spare = 0;
    u->n_held = 0;
    prod__inflight_load(c);
    int rc = prod__units_name(c, name, sizeof(name));
    if (rc == NU_OK)
        rc = pg_ks_blob_get(c->hal, name, b, sizeof(b), &len);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK;
    if (rc == NU_OK)
        rc = pg_ks_blob_put(c->hal, name, NULL, 0);
    if (rc != NU_OK || len < 5)
        return rc;
    u->spare = (uint32_t)b[0] << 24 | (uint32_t)b[1] << 16 | (uint32_t)b[2] << 8 | b[3];
    for (size_t off = 5, i = 0; i < b[4] && off < len && u->n_held < PG_HELD_MAX; i++) {
        size_t n = b[off];
        if (n == 0 || n > PG_UID_MAX || off + 1 + n > len)
            break;
        u->held_len[u->n_held] = (uint8_t)n;
        memcpy(u->held_uid[u->n_held++], b + off + 1, n);
        off += 1 + n;
    }
    pg__log(c, PG_LOG_INFO, "job %s: %u spare unit(s) and %u held chip(s) from the last run",
            c->job.job_id, (unsigned)u->spare, u->n_held);
    return NU_OK;
}

static void prod__units_save(struct pg_core *c)
{
    uint8_t b[5 + PG_HELD_MAX * (1 + PG_UID_MAX)];
    char name[PG_ID_MAX + 16];
    struct pg_units *u = &c->units;
    if (!u->spare && !u->n_held)
        return;
    size_t len = 5;
    pg__be32(b, u->spare);
    b[4] = (uint8_t)u->n_held;
    for (unsigned i = 0; i < u->n_held; i++) {
        b[len] = u->held_len[i];
        memcpy(b + len + 1, u->held_uid[i], u->held_len[i]);
        len += 1u + u->held_len[i];
    }
    int rc = prod__units_name(c, name, sizeof(name));
    if (rc == NU_OK)
        rc = pg_ks_blob_put(c->hal, name, b, len);
    if (rc != NU_OK)
        pg__log(c, PG_LOG_ERROR, "job %s: %u unused unit(s) not kept: %s", c->job.job_id,
                (unsigned)(u->spare + u->n_held), nu_err_name(rc));
}

/* ---- talking to the cloud ----------------------------------------------------------- */

typedef int (*prod__verdict_fn)(struct prod__dev *d, size_t resp_len);

/*
 * Send w->req[len] as `op` until the cloud answers for good. Transport
 * trouble and the cloud's own trouble (pg__cloud_transient) hold the chip
 * in its socket: the same bytes (same idempotency key) go again after a
 * backoff with jitter, for as long as it takes. Only a stop of production
 * or the job's expiry ends the wait (d->interrupted). `verdict` turns an
 * answer into NU_OK or the cloud's error code.
 */
static int prod__exchange(struct prod__dev *d, const char *op, size_t len, prod__verdict_fn verdict,
                          size_t *out_len)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    uint32_t delay = c->retry_delay_ms;
    uint64_t asked_ms = pg_now_ms(c->hal);
    for (unsigned k = 0;; k++) {
        /* A retry is a new message for the same request (same idempotency key). */
        if (k > 0 && pg__env_restamp(c, w->req, len) != NU_OK)
            return NU_ERR_INTERNAL;
        int rc = pg__request_try(c, op, w->req, len, k, w->resp, sizeof(w->resp), out_len);
        int transient = pg__transient(rc) || rc == NU_ERR_BUSY;
        if (rc == NU_OK) {
            rc = verdict(d, *out_len);
            transient = pg__cloud_transient(rc);
        }
        if (!transient) {
            if (k)
                pg__log(c, PG_LOG_INFO, "socket %u: %s answered after %u tries: %s", d->s, op,
                        k + 1, nu_err_name(rc));
            atomic_store(&c->sock[d->s].busy, PG_SOCK_BUSY);
            return rc;
        }
        /* A certificate request the cloud has not answered for a while,
         * under a usable lease: given up, the chip is certified offline
         * (prod__online). Its bytes may still reach the cloud later: the
         * upload of the offline certificate supersedes whatever it issued. */
        if (d->may_abandon && pg__lease_abandon_due(c, asked_ms)) {
            d->abandoned = 1;
            atomic_store(&c->sock[d->s].busy, PG_SOCK_BUSY);
            pg__log(c, PG_LOG_WARN, "socket %u: %s of %s abandoned after %u tries: offline lease",
                    d->s, op, w->uid_hex, k + 1);
            return rc;
        }
        /* Under an offline lease the socket does not wait for the cloud to
         * confirm a report: it stays in the journal (pg_link.c noted the
         * cloud unreachable on this try). */
        if (d->once || (d->may_leave && atomic_load(&c->cloud_lost_s) && pg__lease_usable(c))) {
            d->interrupted = 1;
            atomic_store(&c->sock[d->s].busy, PG_SOCK_BUSY);
            return rc;
        }
        atomic_fetch_add(&c->holds, 1u);
        if (k == 0 || k % 16 == 0)
            pg__log(c, PG_LOG_WARN, "socket %u: %s: %s; chip %s held, waiting for the cloud",
                    d->s, op, nu_err_name(rc), w->uid_hex);
        if (k == 0) {
            atomic_store(&c->sock[d->s].busy, PG_SOCK_WAIT_CLOUD);
            pg__status_now(c, w->resp, sizeof(w->resp));
        }
        int wrc = pg__hold_wait(c, &delay);
        if (wrc != NU_OK) {
            d->interrupted = 1;
            atomic_store(&c->sock[d->s].busy, PG_SOCK_BUSY);
            return wrc == NU_ERR_EXPIRED ? wrc : rc;
        }
    }
}

/* ---- one chip --------------------------------------------------------------------- */

static int prod__identify(struct prod__dev *d, enum pg_chip_state *out_state)
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
    PROD__LINK(rc, pg_tgt_state(h, d->s, out_state));
    if (rc == NU_ERR_NOT_SUPPORTED) { /* an older link: blank or nothing */
        *out_state = PG_CHIP_BLANK;
        PROD__LINK(rc, pg_tgt_blank_check(h, d->s));
    }
    if (rc != NU_OK || *out_state == PG_CHIP_BLANK)
        return rc;
    /* Used already: ours to finish only if its OTP names this job's ROTPK. */
    uint8_t otp[32];
    PROD__LINK(rc, pg_tgt_otp_read(h, d->s, otp));
    if (rc == NU_ERR_TARGET)
        return rc;
    if (rc != NU_OK || !pg__ct_eq(otp, d->c->job.rotpk_hash, sizeof(otp)))
        return NU_ERR_NOT_BLANK;
    d->r->resumed = 1;
    return NU_OK;
}

/* The CSR must be for the key the chip says it holds. */
static int prod__csr_check(struct prod__dev *d, size_t csr_len)
{
    struct pg_sock_work *w = d->w;
    uint8_t csr_pub[PG_P256_PUB_LEN];
    d->r->step = "csr";
    int rc = pg_csr_check(d->c->hal, w->resp, csr_len, w->uid_hex, csr_pub);
    if (rc != NU_OK)
        return rc;
    PROD__LINK(rc, pg_tgt_read_pubkey(d->c->hal, d->s, w->pub));
    if (rc != NU_OK)
        return rc;
    return pg__ct_eq(csr_pub, w->pub, sizeof(csr_pub)) ? NU_OK : NU_ERR_BAD_CSR;
}

/* OTP ROTPK hash and the on-chip key (or, on a chip an earlier run keyed, a
 * fresh CSR for the key it holds: same key, same idempotency key, so the
 * cloud answers the certificate it may have issued already). */
static int prod__keygen(struct prod__dev *d, enum pg_chip_state st, size_t *out_csr_len)
{
    struct pg_sock_work *w = d->w;
    const struct pg_hal *h = d->c->hal;
    int rc = NU_OK;
    if (st >= PG_CHIP_KEYED) {
        d->r->step = "csr";
        PROD__LINK(rc, pg_tgt_csr(h, d->s, w->uid_hex, w->resp, sizeof(w->resp), out_csr_len));
        return rc == NU_OK ? prod__csr_check(d, *out_csr_len) : rc;
    }
    d->r->step = "otp";
    PROD__LINK(rc, pg_tgt_otp_rotpk(h, d->s, d->c->job.rotpk_hash));
    if (rc != NU_OK)
        return rc;
    d->r->step = "keygen";
    PROD__LINK(rc, pg_tgt_keygen_csr(h, d->s, w->uid_hex, w->resp, sizeof(w->resp), out_csr_len));
    return rc == NU_OK ? prod__csr_check(d, *out_csr_len) : rc;
}

static int prod__cert_verdict(struct prod__dev *d, size_t resp_len)
{
    struct pg_msg_env env;
    struct pg_msg_error err;
    int rc = pg_msg_reply_decode(d->w->resp, resp_len, PG_BODY_CERT_ISSUED, &env, &err);
    if (rc == NU_ERR_DECODE && env.body_num == PG_BODY_CERT_REFUSED) {
        struct pg_msg_cert_refused ref;
        rc = pg_msg_cert_refused_decode(env.body, &ref);
        if (rc == NU_OK && (rc = pg_msg_error_decode(ref.error, &err)) == NU_OK)
            rc = err.code > NU_OK && err.code <= NU_ERR_LIMIT ? (int)err.code : NU_ERR_INTERNAL;
    }
    /* A certificate the cloud issued for a request given up for the lease
     * counts against the quota until the upload of the offline one
     * supersedes it and refunds it, and a used-up lease holds a counter
     * value a crash burned until it is given back. Until then
     * QUOTA_EXHAUSTED may be that count: the chip waits and asks again
     * (pg_core_lease_sync and the other sockets upload meanwhile), it is
     * not failed. */
    if (rc == NU_ERR_QUOTA_EXHAUSTED && pg__lease_may_refund(d->c))
        rc = NU_ERR_BUSY;
    return rc;
}

int pg__cert_idem(struct pg_core *c, const uint8_t *uid, size_t uid_len, uint8_t out[32])
{
    return pg__sha256(c, PROD__CERT_DOMAIN, strlen(PROD__CERT_DOMAIN), c->job.job_id,
                      strlen(c->job.job_id), uid, uid_len, out);
}

static int prod__request_cert(struct prod__dev *d, size_t csr_len, size_t *out_resp_len)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    uint8_t idem[32];
    d->r->step = "cert.request";
    int rc = pg__cert_idem(c, w->uid, w->uid_len, idem);
    struct pg_pb_writer wr;
    if (rc == NU_OK)
        rc = pg__env_start(c, &wr, w->req, sizeof(w->req), NULL, idem, PROD__IDEM_LEN);
    if (rc != NU_OK)
        return rc;
    uint32_t counter = 0;
    if (pg_ks_counter_read(c->hal, c->job.job_id, &counter) != NU_OK)
        counter = 0;
    struct pg_msg_cert_req_out req = {
        .job_id = c->job.job_id,
        .uid = w->uid,
        .uid_len = w->uid_len,
        .csr = w->resp,
        .csr_len = csr_len,
        .socket = d->s,
        .counter = counter,
    };
    pg_msg_put_cert_req(&wr, &req);
    if (wr.err)
        return wr.err;
    /* From here the unit is spent, whatever happens: the cloud may issue. */
    d->sent = 1;
    d->may_abandon = !d->no_abandon;
    rc = prod__exchange(d, "cert.request", wr.len, prod__cert_verdict, out_resp_len);
    d->may_abandon = 0;
    if (d->abandoned)
        return rc;
    /* The cloud holds this programmer's lease units back from online
     * issuance: once the rest of its share is issued, the lease is what is
     * left to it, so the chip is certified under the lease (prod__online)
     * rather than failed half done with units left unused. */
    if (rc == NU_ERR_QUOTA_EXHAUSTED && pg__lease_usable(c)) {
        d->quota_leased = 1;
        return rc;
    }
    if (rc != NU_OK && !d->interrupted)
        prod__cloud_verdict(c, rc);
    /* A paused job comes back: the chip waits in its socket, like a stop. */
    if (rc == NU_ERR_JOB_NOT_ACTIVE)
        d->interrupted = 1;
    return rc;
}

/* Certificate (in w->resp[len], checked by prod__cert_verdict) against the
 * package's chain and the chip's key. */
static int prod__cert_facts(struct prod__dev *d, const uint8_t *der, size_t len)
{
    struct pg_core *c = d->c;
    struct pg_der lease_chain[PG_CHAIN_MAX + 1];
    size_t n = 0;
    /* Issued offline under this job's lease: through its line CA (a chip
     * found done may be one of those too). */
    int lease = pg__lease_chain(c, lease_chain, PG_CHAIN_MAX + 1, &n) == NU_OK;
    int rc = d->offline && lease
                 ? pg_cert_check(c->hal, der, len, lease_chain, n, &d->facts)
                 : pg_cert_check(c->hal, der, len, c->job.chain_der, c->job.n_chain, &d->facts);
    if (rc == NU_ERR_BAD_CERT && lease && !d->offline)
        rc = pg_cert_check(c->hal, der, len, lease_chain, n, &d->facts);
    if (rc != NU_OK)
        return rc;
    if (!pg__ct_eq(d->facts.pub, d->w->pub, sizeof(d->w->pub)))
        return NU_ERR_BAD_CERT; /* a certificate for another key */
    d->cert = der;
    d->cert_len = len;
    memcpy(d->r->serial, d->facts.serial_hex, sizeof(d->r->serial));
    d->r->serial[sizeof(d->r->serial) - 1] = '\0';
    return NU_OK;
}

/* A locked chip is done if it holds a valid certificate of this job's CA for
 * its own key and UID: recognised, not counted again, never written. */
static int prod__already_done(struct prod__dev *d)
{
    struct pg_sock_work *w = d->w;
    const struct pg_hal *h = d->c->hal;
    size_t len = 0;
    int rc;
    d->r->step = "done-check";
    PROD__LINK(rc, pg_tgt_read_pubkey(h, d->s, w->pub));
    if (rc == NU_OK)
        PROD__LINK(rc, pg_tgt_read_cert(h, d->s, w->resp, sizeof(w->resp), &len));
    if (rc == NU_OK)
        rc = prod__cert_facts(d, w->resp, len);
    if (rc == NU_OK && strcmp(d->facts.cn, w->uid_hex) != 0)
        rc = NU_ERR_BAD_CERT;
    if (rc == NU_ERR_TARGET)
        return rc;
    if (rc != NU_OK)
        return NU_ERR_NOT_BLANK;
    d->r->already_done = 1;
    /* Certified under the lease, its outcome lost (a crash after the lock):
     * the report joins the journal record and goes after its upload. Sent
     * now it would name a certificate the cloud does not have yet. */
    if (pg__lease_holds(d->c, w, w->resp, len, &d->lease_k) == NU_OK)
        d->offline = 1;
    return NU_OK;
}

static int prod__check_cert(struct prod__dev *d, size_t resp_len)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    struct pg_msg_env env;
    d->r->step = "cert";
    int rc = pg_msg_reply_decode(w->resp, resp_len, PG_BODY_CERT_ISSUED, &env, NULL);
    struct pg_msg_cert_issued ci;
    if (rc == NU_OK)
        rc = pg_msg_cert_issued_decode(env.body, &ci);
    if (rc != NU_OK)
        return rc;
    if (!pg_msg_eq(ci.job_id, c->job.job_id) || ci.device_uid.len != w->uid_len ||
        memcmp(ci.device_uid.p, w->uid, w->uid_len) != 0 || ci.certificate.len == 0)
        return NU_ERR_BAD_CERT;
    return prod__cert_facts(d, ci.certificate.p, ci.certificate.len);
}

/* An offline certificate (leaf at w->resp[0..leaf), chain to total) checked
 * for this chip. */
static int prod__offline_cert(struct prod__dev *d, size_t leaf, size_t total)
{
    d->r->step = "cert";
    int rc = prod__cert_facts(d, d->w->resp, leaf);
    d->cert_len = total; /* the chip keeps the chain */
    return rc;
}

/*
 * While the cloud is unreachable, a new chip is certified under the offline
 * lease (pg_lease.c), and a chip a crash left half done gets the certificate
 * the journal holds for it. NOT_FOUND: not here, ask the cloud (a resumed
 * chip may have a request out already: it asks again with the same key, and
 * only an abandoned request, superseded at the upload, lets it go offline:
 * prod__online).
 */
/* A stop, not the job's end, ended a KeyStore wait of the lease's issuance
 * (a full disk): the keyed chip stays in its socket with its unit for the
 * next run (prod__finish). */
static int prod__lease_stopped(struct prod__dev *d, int rc)
{
    struct pg_core *c = d->c;
    if ((rc != NU_ERR_STATE && rc != NU_ERR_IO) || !pg__hold_stopped(c) ||
        pg_now_ms(c->hal) >= c->job.expires_at_ms)
        return 0;
    d->sent = d->interrupted = 1;
    return 1;
}

static int prod__offline(struct prod__dev *d)
{
    struct pg_core *c = d->c;
    size_t leaf = 0, total = 0;
    int journalled = 0, rc = NU_ERR_NOT_FOUND;
    if (d->r->resumed)
        rc = pg__lease_find(c, d->w, &leaf, &total, &d->lease_k);
    else if (atomic_load(&c->cloud_lost_s) && pg__lease_usable(c)) {
        d->r->step = "lease";
        rc = pg__lease_issue(c, d->w, 0, &leaf, &total, &journalled, &d->lease_k);
        if (prod__lease_stopped(d, rc))
            return rc;
        if (rc == NU_ERR_LIMIT || rc == NU_ERR_EXPIRED)
            rc = NU_ERR_NOT_FOUND; /* used up meanwhile: the cloud's way, held */
    }
    if (journalled || (rc == NU_OK && d->r->resumed))
        d->sent = d->offline = 1; /* the certificate exists: the unit is spent */
    return rc == NU_OK ? prod__offline_cert(d, leaf, total) : rc;
}

/*
 * The online way: cert.request until the cloud answers. Given up unanswered
 * under the lease (d->abandoned), the chip is certified offline instead, the
 * journal record marked as superseding the request: at the upload the cloud
 * revokes and refunds a certificate it issued for it (never delivered: this
 * chip never gets it), then records the offline one. Refused for quota while
 * the lease has units (d->quota_leased), it is certified under the lease as
 * well, superseding nothing (the cloud issued nothing). The lease used up
 * meanwhile: back to the cloud, same request.
 */
static int prod__online(struct prod__dev *d, size_t csr_len)
{
    size_t resp_len = 0, leaf = 0, total = 0;
    for (;;) {
        int journalled = 0, rc = prod__request_cert(d, csr_len, &resp_len);
        if (!d->abandoned && !d->quota_leased)
            return rc == NU_OK ? prod__check_cert(d, resp_len) : rc;
        int supersedes = d->abandoned;
        d->abandoned = d->quota_leased = 0;
        d->r->step = "lease";
        rc = pg__lease_issue(d->c, d->w, supersedes, &leaf, &total, &journalled, &d->lease_k);
        if (journalled)
            d->offline = 1;
        if (rc == NU_OK)
            return prod__offline_cert(d, leaf, total);
        if (prod__lease_stopped(d, rc))
            return rc;
        if (rc != NU_ERR_LIMIT && rc != NU_ERR_EXPIRED && rc != NU_ERR_STATE)
            return rc;
        if (!supersedes) {
            /* The other sockets used the lease up meanwhile (the answer
             * replaced the CSR in w->resp): the cloud's refusal stands. */
            d->r->step = "cert.request";
            prod__cloud_verdict(d->c, NU_ERR_QUOTA_EXHAUSTED);
            return NU_ERR_QUOTA_EXHAUSTED;
        }
        d->no_abandon = 1; /* nothing was written: the CSR in w->resp is intact */
    }
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

/* Not inlined: its frames would sit under the lease upload that
 * pg_socket_run may make before the chip (pg__lease_worker), on a worker
 * stack sized for the deeper of the two (the M33's RAM: programmer-fw/cross). */
static __attribute__((noinline)) int prod__device(struct prod__dev *d)
{
    size_t csr_len = 0;
    enum pg_chip_state st = PG_CHIP_BLANK;
    int rc = prod__identify(d, &st);
    if (rc != NU_OK)
        return rc;
    if (st == PG_CHIP_LOCKED) {
        /* Done before the crash (it may be the marked chip): no unit to
         * resume in this socket any more. */
        prod__lock(d->c);
        d->c->units.resume[d->s] = 0;
        prod__unlock(d->c);
        return prod__already_done(d);
    }
    /* A unit before anything is written to the chip: at the end of the job
     * the chip goes back untouched, still blank. */
    d->r->step = "counter";
    rc = prod__unit_take(d);
    if (rc == NU_ERR_LIMIT) {
        /* Other sockets may still finish a chip with its own unit (held by
         * an earlier run, or left half done by a crash) or with a spare: a
         * stop now would leave it keyed. Only this socket ends until they
         * have; the last of them stops the line (pg_socket_run). */
        if (!pg_core_units_kept(d->c))
            pg_core_stop(d->c, PG_STOP_LIMIT);
        d->untouched = 1;
    } else if (rc == NU_ERR_IO) {
        d->untouched = 1; /* stopped while the KeyStore could not count */
    }
    if (rc == NU_OK)
        rc = prod__keygen(d, st, &csr_len);
    int off = rc == NU_OK ? prod__offline(d) : NU_ERR_NOT_FOUND;
    if (off != NU_ERR_NOT_FOUND)
        rc = off;
    else if (rc == NU_OK)
        rc = prod__online(d, csr_len);
    if (rc == NU_OK)
        rc = prod__write_image(d);
    if (rc == NU_OK)
        rc = prod__boot_attest(d);
    return rc;
}

/* ---- device reports ----------------------------------------------------------------- */

static int prod__ack_verdict(struct prod__dev *d, size_t resp_len)
{
    struct pg_msg_env env;
    return pg_msg_reply_decode(d->w->resp, resp_len, PG_BODY_ACK, &env, NULL);
}

/* Journal slot of socket s: "NRJ1" || len (be16) || report envelope. */
static int prod__journal_put(struct pg_core *c, unsigned s, const uint8_t *env, size_t len)
{
    uint8_t hdr[6] = {'N', 'R', 'J', '1', (uint8_t)(len >> 8), (uint8_t)len};
    if (len > PG_JOURNAL_SLOT - sizeof(hdr))
        return NU_ERR_TOO_LARGE;
    int rc = pg_flash_write(c->hal, PG_FLASH_JOURNAL, s * PG_JOURNAL_SLOT + 6u, env, len);
    /* The header last: a slot is valid only once its bytes are in. */
    return rc == NU_OK ? pg_flash_write(c->hal, PG_FLASH_JOURNAL, s * PG_JOURNAL_SLOT, hdr, 6)
                       : rc;
}

static int prod__journal_clear(struct pg_core *c, unsigned s)
{
    static const uint8_t none[6] = {0};
    return pg_flash_write(c->hal, PG_FLASH_JOURNAL, s * PG_JOURNAL_SLOT, none, sizeof(none));
}

/* Slots of sockets this programmer does not have are spares: several
 * sockets may write into them, and socket 0 replays them, so one socket at a
 * time claims a spare for as long as it reads, writes or clears it. */
_Static_assert(PG_MAX_SOCKETS <= 32, "one claim bit per journal slot");

static int prod__spare_claim(struct pg_core *c, unsigned slot)
{
    unsigned bit = 1u << slot;
    return slot < c->n_sockets || !(atomic_fetch_or(&c->journal_claims, bit) & bit);
}

static void prod__spare_release(struct pg_core *c, unsigned slot)
{
    if (slot >= c->n_sockets && slot < PG_MAX_SOCKETS)
        atomic_fetch_and(&c->journal_claims, ~(1u << slot));
}

/*
 * Socket s's report when its own slot still holds an earlier report (a stop
 * ended that one's replay): into a free spare slot, claimed until the
 * caller releases it. *out_slot = it. BUSY when there is none.
 */
static int prod__journal_put_spare(struct pg_core *c, const uint8_t *env, size_t len,
                                   unsigned *out_slot)
{
    for (unsigned slot = c->n_sockets; slot < PG_MAX_SOCKETS; slot++) {
        uint8_t hdr[4];
        if (!prod__spare_claim(c, slot))
            continue;
        int rc = pg_flash_read(c->hal, PG_FLASH_JOURNAL, slot * PG_JOURNAL_SLOT, hdr, 4);
        if (rc == NU_OK && memcmp(hdr, "NRJ1", 4) != 0) {
            *out_slot = slot;
            return prod__journal_put(c, slot, env, len);
        }
        prod__spare_release(c, slot);
    }
    return NU_ERR_BUSY;
}

/* The report in w->req[len] to the cloud, until it is recorded (or refused
 * for good: a report the cloud cannot use is not kept forever). */
static int prod__report_confirm(struct prod__dev *d, unsigned slot, size_t len)
{
    struct pg_core *c = d->c;
    size_t resp_len = 0;
    d->may_leave = !d->once && !d->hold;
    int rc = prod__exchange(d, "device.report", len, prod__ack_verdict, &resp_len);
    /* NOT_FOUND while offline certificates still wait for lease.upload: the
     * report overtook the upload as the link came back. It stays in the
     * journal, and pg_core_journal_flush sends it after the upload. */
    if (rc == NU_ERR_NOT_FOUND && !d->hold && atomic_load(&c->lease.pending))
        d->interrupted = 1;
    int left = d->may_leave && d->interrupted;
    d->may_leave = 0;
    if (d->interrupted) {
        atomic_store(&c->journal_pending, 1); /* the idle loop sends it */
        if (left && slot == d->s)
            atomic_store(&c->sock[slot].journal_due, 1); /* or this socket, back online */
        if (slot >= c->n_sockets)
            atomic_store(&c->sock[0].journal_due, 1); /* socket 0 looks after the spares */
        return rc;                                    /* stays in the journal */
    }
    if (rc == NU_OK)
        atomic_fetch_add(&c->reports_sent, 1u);
    else
        pg__log(c, PG_LOG_WARN, "socket %u: report of %s refused: %s", d->s, d->w->uid_hex,
                nu_err_name(rc));
    /* PG_MAX_SOCKETS: the report is in no slot (none was free). */
    int crc = slot < PG_MAX_SOCKETS ? prod__journal_clear(c, slot) : NU_OK;
    if (crc != NU_OK)
        pg__log(c, PG_LOG_WARN, "journal slot %u not cleared: %s", slot, nu_err_name(crc));
    return rc;
}

/* A report an earlier run left unconfirmed in journal slot `slot`. Returns
 * 1 when it is still there (the cloud did not answer). */
static int prod__journal_replay_claimed(struct prod__dev *d, unsigned slot)
{
    struct pg_core *c = d->c;
    uint8_t hdr[6];
    int rc = pg_flash_read(c->hal, PG_FLASH_JOURNAL, slot * PG_JOURNAL_SLOT, hdr, sizeof(hdr));
    if (rc != NU_OK || memcmp(hdr, "NRJ1", 4) != 0)
        return 0;
    size_t len = (size_t)hdr[4] << 8 | hdr[5];
    if (len == 0 || len > PG_JOURNAL_SLOT - 6u || len > sizeof(d->w->req))
        rc = NU_ERR_DECODE;
    else
        rc = pg_flash_read(c->hal, PG_FLASH_JOURNAL, slot * PG_JOURNAL_SLOT + 6u, d->w->req, len);
    if (rc != NU_OK) {
        pg__log(c, PG_LOG_WARN, "journal slot %u unreadable: %s", slot, nu_err_name(rc));
        prod__journal_clear(c, slot);
        return 0;
    }
    snprintf(d->w->uid_hex, sizeof(d->w->uid_hex), "(journal %u)", slot);
    pg__log(c, PG_LOG_INFO, "socket %u: report of an earlier run sent again", d->s);
    d->interrupted = 0;
    prod__report_confirm(d, slot, len);
    return d->interrupted;
}

static int prod__journal_replay(struct prod__dev *d, unsigned slot)
{
    struct pg_core *c = d->c;
    if (!prod__spare_claim(c, slot))
        return 0; /* a spare another socket is using: it confirms its own report */
    int left = prod__journal_replay_claimed(d, slot);
    prod__spare_release(c, slot);
    return left;
}

int pg_core_journal_flush(struct pg_core *c)
{
    if (atomic_load(&c->producing))
        return NU_ERR_BUSY;
    int lrc = pg__lease_idle(c);
    if (!atomic_load(&c->journal_pending))
        return lrc == NU_OK ? NU_OK : NU_ERR_TIMEOUT;
    struct pg_result scratch;
    memset(&scratch, 0, sizeof(scratch));
    /* Not producing, not downloading (control thread): socket 0's buffers are free. */
    struct prod__dev d = {.c = c, .s = 0, .w = &c->work.sock[0], .r = &scratch, .once = 1};
    int left = 0;
    for (unsigned slot = 0; slot < PG_MAX_SOCKETS; slot++)
        left += prod__journal_replay(&d, slot);
    pg__zero(d.w, sizeof(*d.w));
    atomic_store(&c->journal_pending, left != 0);
    return left ? NU_ERR_TIMEOUT : NU_OK;
}

/*
 * device.provisioned / device.failed: an event for monitors and the station,
 * and, for a chip the cloud was asked about, a confirmed report: kept in the
 * journal (flash) until the cloud answers that it recorded it. The report's
 * idempotency key is SHA-256("nusec/v1 report" || job || UID || outcome)[:16]:
 * the cloud records it once however often it comes.
 */
int pg__report_env(struct pg_core *c, struct pg_pb_writer *wr, uint8_t *buf, size_t cap,
                   const struct pg_msg_report_out *rep)
{
    uint8_t idem[32], outcome = (uint8_t)rep->outcome;
    const char *kind = outcome == PG_OUTCOME_PROVISIONED ? "device.provisioned" : "device.failed";
    int rc = pg__sha256(c, PROD__REPORT_DOMAIN, strlen(PROD__REPORT_DOMAIN), rep->job_id,
                        strlen(rep->job_id) + 1u, NULL, 0, idem);
    if (rc == NU_OK)
        rc = pg__sha256(c, idem, 32, rep->uid, rep->uid_len, &outcome, 1, idem);
    if (rc == NU_OK)
        rc = pg__env_start(c, wr, buf, cap, NULL, idem, PROD__IDEM_LEN);
    if (rc == NU_OK) {
        pg_msg_put_device_event(wr, kind, rep);
        rc = wr->err;
    }
    return rc;
}

/*
 * The outcome into the chip's lease journal record. The KeyStore's storage
 * may fail for a while (a full disk under the POSIX port's sealed file): the
 * socket waits and writes it again, as for the unit's count. Left without
 * it, the record could not go up before the production's end (a chip held
 * for its refund waited for good) and then went up without its report. A
 * stop ends the wait.
 */
static void prod__lease_outcome(struct prod__dev *d, const struct pg_msg_report_out *rep)
{
    struct pg_core *c = d->c;
    uint32_t delay = c->retry_delay_ms;
    int rc;
    for (unsigned k = 0;; k++) {
        rc = pg__lease_outcome(c, d->w, d->lease_k, rep);
        if (rc != NU_ERR_IO)
            break;
        if (k == 0 || k % 16 == 0)
            pg__log(c, PG_LOG_WARN, "socket %u: outcome of %s: KeyStore %s; the socket waits", d->s,
                    d->w->uid_hex, nu_err_name(rc));
        if (pg__hold_wait(c, &delay) != NU_OK)
            break;
    }
    if (rc != NU_OK)
        pg__log(c, PG_LOG_WARN, "socket %u: outcome of %s not journaled: %s", d->s, d->w->uid_hex,
                nu_err_name(rc));
}

static void prod__report(struct prod__dev *d, int rc, uint32_t duration_ms)
{
    struct pg_core *c = d->c;
    struct pg_sock_work *w = d->w;
    unsigned slot = d->s;
    int slot_taken = 0;
    /* A report the lease left in this socket's journal slot goes before this
     * chip's overwrites it (socket 0 also looks after the slots of sockets
     * this run does not have: those stay due). A stop or the job's expiry
     * can end that wait: the earlier report then stays, due again, and this
     * one goes into a spare slot. */
    if ((d->sent || d->r->already_done) && !d->offline &&
        atomic_exchange(&c->sock[d->s].journal_due, 0)) {
        int hold = d->hold;
        d->hold = 1;
        slot_taken = prod__journal_replay(d, d->s);
        d->hold = hold;
        d->interrupted = 0;
        if (d->s == 0 || slot_taken)
            atomic_store(&c->sock[d->s].journal_due, 1);
        pg__hex(d->r->uid, d->r->uid_len, w->uid_hex);
    }
    const char *kind = rc == NU_OK ? "device.provisioned" : "device.failed";
    uint8_t outcome = rc == NU_OK ? PG_OUTCOME_PROVISIONED : PG_OUTCOME_FAILED;
    struct pg_msg_report_out rep = {
        .job_id = c->job.job_id,
        .uid = d->r->uid,
        .uid_len = d->r->uid_len,
        .socket = d->s,
        .outcome = outcome,
        .serial = d->r->serial[0] ? d->r->serial : NULL,
        .error = rc,
        .detail = rc == NU_OK ? NULL : d->r->step,
        .duration_ms = duration_ms,
    };
    struct pg_pb_writer wr;
    int prc = pg__report_env(c, &wr, w->req, sizeof(w->req), &rep);
    /* An offline chip's report goes with its certificate in the lease
     * journal (uploaded, then confirmed); here it would only hold the socket. */
    int confirm = prc == NU_OK && (d->sent || d->r->already_done) && !d->offline;
    if (d->offline && d->lease_k) {
        prod__lease_outcome(d, &rep);
        prc = prc == NU_OK ? pg__report_env(c, &wr, w->req, sizeof(w->req), &rep) : prc;
    }
    /* A report the journal cannot take (its storage full or failing) still
     * goes out, and is confirmed below before the socket moves on: only a
     * crash inside that wait could lose it, where skipping it lost it always. */
    int jrc = !confirm     ? NU_OK
              : slot_taken ? prod__journal_put_spare(c, w->req, wr.len, &slot)
                           : prod__journal_put(c, slot, w->req, wr.len);
    if (jrc != NU_OK)
        pg__log(c, PG_LOG_WARN, "socket %u: report not journaled: %s", d->s, nu_err_name(jrc));
    if (jrc == NU_ERR_BUSY)
        slot = PG_MAX_SOCKETS; /* in no slot: the earlier report's is not ours to clear */
    if (prc == NU_OK && !d->r->already_done)
        prc = pg__publish_event(c, kind, w->req, wr.len);
    if (prc != NU_OK)
        pg__log(c, PG_LOG_WARN, "socket %u: %s event not sent: %s", d->s, kind, nu_err_name(prc));
    if (confirm) {
        /* Not in the journal: even under an offline lease the socket waits
         * for the cloud's word, or the report would live nowhere. */
        int hold = d->hold;
        d->hold = hold || jrc != NU_OK;
        prod__report_confirm(d, slot, wr.len);
        d->hold = hold;
        /* Unconfirmed and in no slot: a good chip stays in its socket, and
         * the next run, finding it done, reports it again. */
        d->keep = slot == PG_MAX_SOCKETS && d->interrupted && rc == NU_OK;
    }
    if (slot != d->s)
        prod__spare_release(c, slot);
}

/* What a worker does after its chip (good, bad, or held). */
static __attribute__((noinline)) void prod__finish(struct prod__dev *d, int rc, uint64_t t0)
{
    struct pg_core *c = d->c;
    unsigned sock = d->s;
    struct pg_result *out = d->r;
    if (d->unit && !d->sent)
        prod__unit_spare(c); /* no request left: the unit was not used */
    if (d->interrupted && d->sent && rc != NU_ERR_EXPIRED) {
        /* Stopped while the cloud was away: the chip stays in the socket
         * with its unit; the next run finishes it (same key, same request). */
        prod__unit_hold(d);
        out->held = 1;
        pg__log(c, PG_LOG_INFO, "socket %u: chip %s kept in the socket for the next run", sock,
                d->w->uid_hex);
        return;
    }
    out->provisioned = rc == NU_OK;
    out->error = rc;
    if (rc != NU_OK)
        pg__log(c, PG_LOG_WARN, "socket %u: device failed at %s: %s", sock, out->step,
                nu_err_name(rc));
    else if (out->already_done)
        pg__log(c, PG_LOG_INFO, "socket %u: chip %s was provisioned already", sock,
                d->w->uid_hex);
    d->interrupted = 0;
    prod__report(d, rc, (uint32_t)(pg_mono_ms(c->hal) - t0));
    int rrc = d->keep ? NU_OK : pg_tgt_remove(c->hal, sock);
    if (d->keep)
        pg__log(c, PG_LOG_WARN,
                "socket %u: chip %s left in the socket: its report is in no journal"
                " slot, the next run sends it",
                sock, d->w->uid_hex);
    if (rrc != NU_OK)
        pg__log(c, PG_LOG_WARN, "socket %u: remove: %s", sock, nu_err_name(rrc));
    if (!out->already_done)
        atomic_fetch_add(rc == NU_OK ? &c->sock[sock].done : &c->sock[sock].failed, 1u);
}

/* Reports an earlier run left in the journal: socket s's slot, and socket
 * 0 also takes the slots of sockets this run does not have. Under an
 * offline lease with the cloud away they wait (the socket goes on), unless
 * `hold`: a new report needs the slot. */
static void prod__journal_due(struct pg_core *c, unsigned sock, int hold)
{
    if (!hold && atomic_load(&c->cloud_lost_s) && pg__lease_usable(c))
        return;
    if (!atomic_exchange(&c->sock[sock].journal_due, 0))
        return;
    struct pg_result scratch;
    memset(&scratch, 0, sizeof(scratch));
    struct prod__dev d = {.c = c, .s = sock, .w = &c->work.sock[sock], .r = &scratch, .hold = hold};
    prod__journal_replay(&d, sock);
    for (unsigned slot = c->n_sockets; sock == 0 && slot < PG_MAX_SOCKETS; slot++)
        prod__journal_replay(&d, slot);
    pg__zero(d.w, sizeof(*d.w));
}

int pg_socket_run(struct pg_core *c, unsigned sock, struct pg_result *out)
{
    if (!c || !out || sock >= c->n_sockets)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    if (!atomic_load(&c->producing))
        return NU_ERR_STATE;
    /* Asking the cloud before a chip (an earlier run's reports, the lease
     * upload) is probing it: the other sockets' gates count this one. */
    atomic_store(&c->sock[sock].busy, PG_SOCK_BUSY);
    prod__journal_due(c, sock, 0);
    pg__lease_worker(c, sock, &c->work.sock[sock]);
    atomic_store(&c->sock[sock].busy, PG_SOCK_IDLE);
    /* No new chip while the cloud is unreachable (issue 15). */
    int grc = pg__link_gate(c, sock);
    if (grc == NU_ERR_EXPIRED)
        return grc;
    int stop = atomic_load(&c->stop);
    if (stop != PG_STOP_NONE)
        return prod__stop_code(stop);
    uint32_t counter = 0;
    int rc = pg_ks_counter_read(c->hal, c->job.job_id, &counter);
    int kept = pg_core_units_kept(c) != 0;
    if (rc != NU_OK || (counter >= c->job.limit && !kept)) {
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
    atomic_store(&c->sock[sock].busy, PG_SOCK_BUSY);
    uint64_t t0 = pg_mono_ms(c->hal);
    rc = prod__device(&d);
    if (d.untouched) {
        /* Nothing left to produce with: the chip goes back as it came. */
        pg_tgt_remove(c->hal, sock);
        atomic_store(&c->sock[sock].busy, PG_SOCK_IDLE);
        pg__zero(d.w, sizeof(*d.w));
        return rc != NU_OK ? rc : NU_ERR_LIMIT;
    }
    prod__finish(&d, rc, t0);
    atomic_store(&c->sock[sock].busy, PG_SOCK_IDLE);
    pg__zero(d.w, sizeof(*d.w));
    pg__status_maybe(c, d.w->req, sizeof(d.w->req));
    return out->held ? NU_ERR_STATE : NU_OK;
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
    if ((rc = prod__units_load(c)) != NU_OK)
        return rc;
    if (counter >= c->job.limit && !pg_core_units_kept(c))
        return NU_ERR_LIMIT;
    pg__lease_begin(c);
    atomic_store(&c->stop, PG_STOP_NONE);
    atomic_store(&c->holds, 0u);
    atomic_store(&c->reports_sent, 0u);
    for (unsigned i = 0; i < c->n_sockets; i++)
        atomic_store(&c->sock[i].journal_due, 1);
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
    uint32_t counter = 0;
    int rc = pg_ks_counter_read(c->hal, c->job.job_id, &counter);
    /* Every socket ended by itself: at the limit (units still kept for
     * chips that did not come back), or with the tray empty. */
    if (stop == PG_STOP_NONE)
        stop = rc == NU_OK && counter >= c->job.limit ? PG_STOP_LIMIT : PG_STOP_TRAY_EMPTY;
    prod__inflight_end(c);
    prod__units_save(c);
    int kept = c->units.spare || c->units.n_held;
    pg__log(c, PG_LOG_INFO,
            "production of job %s ends: counter %u of %u, %u unit(s) kept, %u cloud wait(s)",
            c->job.job_id, (unsigned)counter, (unsigned)c->job.limit,
            (unsigned)(c->units.spare + c->units.n_held), atomic_load(&c->holds));
    int finished = (rc == NU_OK && counter >= c->job.limit && !kept) || stop == PG_STOP_QUOTA;
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
    pg__lease_end(c, finished);
    memset(&c->work, 0, sizeof(c->work));
    pg_core_status_publish(c, stop == PG_STOP_SHUTDOWN ? PG_PROG_OFFLINE : PG_PROG_IDLE);
    return (enum pg_stop)stop;
}
