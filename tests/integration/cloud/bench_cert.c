/*
 * cloud_bench_cert — device certificates per second through the whole stack
 * (programmer client -> mosquitto (mTLS) -> nusec-cloud -> SQLite + SoftHSM2
 * -> reply), next to the raw rate of what each issuance costs at least (CSR
 * verify + certificate signed in the HSM), measured in the same run.
 *
 *   cloud_bench_cert [SEQUENTIAL] [CLIENTS] [PER_CLIENT]   (defaults 200 8 100)
 *   cloud_bench_cert --paced [CLIENTS] [PER_CLIENT] [SECONDS]  (defaults 8 100 10)
 *
 * Not a test (not in CTest): it prints figures. Every request is a new device
 * (fresh key and CSR, made before the clock starts); each is checked to be
 * answered with a certificate.
 *
 * --paced: latency at half the saturating rate, on the cloud's own
 * configuration (no restart). First the saturating rate: CLIENTS programmers
 * send PER_CLIENT requests each, back to back (after a short warm-up). Then an
 * OPEN-LOOP schedule at half that rate for about SECONDS: request i is due at
 * t0 + i / rate whatever happened before; the CLIENTS programmers take the
 * requests in order as they become free, wait for the due time and send.
 * Latency is measured from the DUE time to the answer, so a request that had
 * to wait for a free client (or a late sender) counts that wait: no
 * coordinated omission. The latency from the actual send is printed too.
 * Prints `name value unit` lines.
 */
#include "cloud_fixture.h"

#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct dev {
    uint8_t uid[8];
    uint8_t *csr;
    size_t len;
};

struct worker {
    struct cf_client c;
    const char *job;
    struct dev *devs;
    size_t n;
    uint64_t *lat_us;
    size_t failed;
};

static uint64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void *run(void *arg)
{
    struct worker *w = arg;
    for (size_t i = 0; i < w->n; i++) {
        Nusec__V1__Envelope *r = NULL;
        uint64_t t0 = now_us();
        int rc = cf_cert_request(&w->c, w->job, w->devs[i].uid, sizeof(w->devs[i].uid),
                                 w->devs[i].csr, w->devs[i].len, NULL, 0, &r);
        w->lat_us[i] = now_us() - t0;
        if (rc) {
            if (!w->failed)
                fprintf(stderr, "bench: request failed: %s\n", nu_err_name(rc));
            w->failed++;
        }
        nu_envelope_free(r);
    }
    return NULL;
}

static int make_devs(struct dev *d, size_t n, unsigned tag)
{
    for (size_t i = 0; i < n; i++) {
        struct nu_p256_key *k = NULL;
        d[i].uid[0] = 0xbe;
        d[i].uid[1] = (uint8_t)tag;
        d[i].uid[4] = (uint8_t)(i >> 16);
        d[i].uid[5] = (uint8_t)(i >> 8);
        d[i].uid[6] = (uint8_t)i;
        int rc = cf_device_csr(&k, &d[i].csr, &d[i].len);
        nu_p256_key_destroy(k);
        if (rc)
            return rc;
    }
    return NU_OK;
}

/* One round: `nw` clients, `per` requests each, all at once. */
static int round_run(struct worker *w, size_t nw, size_t per, const char *label)
{
    pthread_t t[64];
    size_t total = nw * per, k = 0, failed = 0;
    uint64_t *all = calloc(total, sizeof(*all));
    uint64_t t0 = now_us();
    for (size_t i = 0; i < nw; i++)
        pthread_create(&t[i], NULL, run, &w[i]);
    for (size_t i = 0; i < nw; i++)
        pthread_join(t[i], NULL);
    double secs = (double)(now_us() - t0) / 1e6;
    for (size_t i = 0; i < nw; i++) {
        memcpy(all + k, w[i].lat_us, per * sizeof(*all));
        k += per;
        failed += w[i].failed;
    }
    qsort(all, total, sizeof(*all), cmp_u64);
    printf("%-34s %6zu certs %8.1f /s   p50 %6.2f ms   p99 %6.2f ms   failed %zu\n", label, total,
           (double)total / secs, (double)all[total / 2] / 1000.0,
           (double)all[(total * 99) / 100] / 1000.0, failed);
    free(all);
    return failed ? 1 : 0;
}

/* The floor of one issuance in this process: CSR verify + HSM-signed certificate. */
static void raw_rate(const struct cf *f, struct dev *d, size_t n)
{
    struct nu_hsm *hsm = NULL;
    struct nu_hsm_key *ca = NULL;
    uint8_t *pem = NULL, *ca_der = NULL;
    size_t pem_len = 0, ca_len = 0;
    char path[CF_PATH_MAX + 32];
    snprintf(path, sizeof(path), "%s/pki/device-ca.pem", f->dir);
    if (nu_pki_open_hsm(f->dir, 1, &hsm) || nu_hsm_key_open(hsm, NU_PKI_KEY_DEVICE_CA, &ca) ||
        nu_file_read(path, 65536, &pem, &pem_len) ||
        nu_x509_pem_to_der((char *)pem, pem_len, NU_X509_PEM_CERT, &ca_der, &ca_len, NULL)) {
        fprintf(stderr, "bench: cannot open the HSM for the raw rate\n");
        goto out;
    }
    uint64_t t0 = now_us();
    for (size_t i = 0; i < n; i++) {
        struct nu_x509_csr_info info;
        struct nu_x509_issue_req ir = {.cn = "bench",
                                       .ou = "device",
                                       .o = "NuSEC",
                                       .not_before = 1700000000,
                                       .not_after = 1900000000,
                                       .key_usage = NU_X509_KU_DIGITAL_SIGNATURE};
        uint8_t *der = NULL;
        size_t len = 0;
        if (nu_x509_csr_parse_verify(d[i].csr, d[i].len, &info))
            break;
        memcpy(ir.pub, info.pub, sizeof(ir.pub));
        if (nu_x509_issue(&ir, nu_hsm_key_signer(ca), ca_der, ca_len, &der, &len))
            break;
        free(der);
    }
    double secs = (double)(now_us() - t0) / 1e6;
    printf("%-34s %6zu certs %8.1f /s   (%.3f ms each, one thread)\n", "raw: CSR verify + HSM sign",
           n, (double)n / secs, secs * 1000.0 / (double)n);
out:
    free(ca_der);
    free(pem);
    nu_hsm_key_close(ca);
    nu_hsm_close(hsm);
}

/* Restart the agent with `batch_max` (DIR/cloud/cloud.conf). */
static int restart_with(struct cf *f, unsigned batch_max)
{
    char path[CF_PATH_MAX + 32], text[64];
    snprintf(path, sizeof(path), "%s/cloud/cloud.conf", f->dir);
    snprintf(text, sizeof(text), "batch_max = %u\n", batch_max);
    if (nu_file_write_atomic(path, text, strlen(text), 0600))
        return -1;
    if (f->cloud_pid && cf_cloud_stop(f) != 0)
        return -1;
    return cf_cloud_start(f);
}

/* Sequential then concurrent, on a job of its own, with fresh devices. */
static int measure(struct cf *f, struct worker *w, size_t nw, size_t seq, size_t per,
                   const char *const *ids, unsigned batch_max)
{
    char job[32], label[80];
    uint32_t limits[64];
    int rc = 1;
    snprintf(job, sizeof(job), "bench-b%u", batch_max);
    for (size_t i = 0; i < nw; i++)
        limits[i] = (uint32_t)(per + (i == 0 ? seq : 0));
    if (restart_with(f, batch_max) ||
        cf_job_create(f, job, (uint32_t)(seq + nw * per), ids, limits, nw))
        return 1;
    for (size_t i = 0; i < nw; i++) {
        size_t n = per + (i == 0 ? seq : 0);
        w[i].job = job;
        w[i].failed = 0;
        w[i].devs = calloc(n, sizeof(struct dev));
        w[i].lat_us = calloc(n, sizeof(uint64_t));
        if (!w[i].devs || !w[i].lat_us || make_devs(w[i].devs, n, (batch_max << 4) | i))
            goto out;
    }
    printf("-- batch_max = %u%s\n", batch_max, batch_max == 1 ? " (one transaction each)" : "");
    w[0].n = seq;
    rc = round_run(&w[0], 1, seq, "sequential, 1 client");
    w[0].devs += seq;
    for (size_t i = 0; i < nw; i++)
        w[i].n = per;
    snprintf(label, sizeof(label), "%zu concurrent clients", nw);
    rc |= round_run(w, nw, per, label);
    w[0].devs -= seq;
out:
    for (size_t i = 0; i < nw; i++) {
        size_t n = per + (i == 0 ? seq : 0);
        for (size_t j = 0; w[i].devs && j < n; j++)
            free(w[i].devs[j].csr);
        free(w[i].devs);
        free(w[i].lat_us);
        w[i].devs = NULL;
        w[i].lat_us = NULL;
    }
    return rc;
}

/* ------------------------------------------------------------ paced */

struct paced {
    struct worker *w; /* CLIENTS connected programmers */
    const char *job;
    struct dev *devs; /* one per request */
    size_t count;
    double rate; /* requests per second */
    uint64_t t0_us;
    atomic_size_t next;
    uint64_t *lat_due_us, *lat_send_us;
    atomic_size_t failed;
};

struct paced_client {
    struct paced *p;
    size_t i;
};

static void sleep_until_us(uint64_t t)
{
    uint64_t now = now_us();
    if (t <= now)
        return;
    struct timespec ts = {(time_t)((t - now) / 1000000u), (long)((t - now) % 1000000u) * 1000L};
    nanosleep(&ts, NULL);
}

static void *paced_run(void *arg)
{
    struct paced_client *pc = arg;
    struct paced *p = pc->p;
    struct worker *w = &p->w[pc->i];
    for (;;) {
        size_t i = atomic_fetch_add(&p->next, 1);
        if (i >= p->count)
            break;
        uint64_t due = p->t0_us + (uint64_t)((double)i * 1e6 / p->rate);
        sleep_until_us(due);
        Nusec__V1__Envelope *r = NULL;
        uint64_t sent = now_us();
        int rc = cf_cert_request(&w->c, p->job, p->devs[i].uid, sizeof(p->devs[i].uid),
                                 p->devs[i].csr, p->devs[i].len, NULL, 0, &r);
        uint64_t done = now_us();
        p->lat_due_us[i] = done - due;
        p->lat_send_us[i] = done - sent;
        if (rc && atomic_fetch_add(&p->failed, 1) == 0)
            fprintf(stderr, "bench: paced request failed: %s\n", nu_err_name(rc));
        nu_envelope_free(r);
    }
    return NULL;
}

static double pct_ms(uint64_t *v, size_t n, double q)
{
    qsort(v, n, sizeof(*v), cmp_u64);
    size_t k = (size_t)(q * (double)n);
    return (double)v[k < n ? k : n - 1] / 1000.0;
}

/* Saturating rate with nw clients x per (closed loop, after a warm-up). */
static double saturate(struct worker *w, size_t nw, size_t per, const char *job, struct dev *devs,
                       size_t warm)
{
    pthread_t t[64];
    size_t total = nw * per, failed = 0;
    for (size_t i = 0; i < nw; i++) {
        w[i].job = job;
        w[i].failed = 0;
        w[i].devs = devs + i * warm;
        w[i].n = warm;
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    for (size_t i = 0; i < nw; i++)
        pthread_join(t[i], NULL);
    devs += nw * warm;
    uint64_t t0 = now_us();
    for (size_t i = 0; i < nw; i++) {
        w[i].devs = devs + i * per;
        w[i].n = per;
        pthread_create(&t[i], NULL, run, &w[i]);
    }
    for (size_t i = 0; i < nw; i++)
        pthread_join(t[i], NULL);
    double secs = (double)(now_us() - t0) / 1e6;
    for (size_t i = 0; i < nw; i++) {
        failed += w[i].failed;
        w[i].devs = NULL;
    }
    return failed ? -1.0 : (double)total / secs;
}

static int paced_measure(struct cf *f, struct worker *w, size_t nw, size_t per, double seconds,
                         const char *const *ids)
{
    enum { WARM = 5, PACED_MAX = 20000 };
    const char *job = "bench-paced";
    struct paced p = {.w = w, .job = job};
    size_t sat_n = nw * (WARM + per);
    uint32_t limits[64];
    int rc = 1;
    /* Enough quota for any split of the paced requests between the clients. */
    for (size_t i = 0; i < nw; i++)
        limits[i] = (uint32_t)(WARM + per + PACED_MAX);
    struct dev *sat = calloc(sat_n, sizeof(*sat));
    for (size_t i = 0; i < nw; i++) {
        w[i].lat_us = calloc(WARM + per, sizeof(uint64_t));
        if (!w[i].lat_us)
            goto out;
    }
    if (!sat || make_devs(sat, sat_n, 0xa0) ||
        cf_job_create(f, job, (uint32_t)(nw * (WARM + per + PACED_MAX)), ids, limits, nw))
        goto out;
    double sat_rate = saturate(w, nw, per, job, sat, WARM);
    if (sat_rate <= 0)
        goto out;
    p.rate = sat_rate / 2.0;
    p.count = (size_t)(p.rate * seconds);
    p.count = p.count < 200 ? 200 : p.count > PACED_MAX ? PACED_MAX : p.count;
    p.devs = calloc(p.count, sizeof(*p.devs));
    p.lat_due_us = calloc(p.count, sizeof(uint64_t));
    p.lat_send_us = calloc(p.count, sizeof(uint64_t));
    if (!p.devs || !p.lat_due_us || !p.lat_send_us || make_devs(p.devs, p.count, 0xb0))
        goto out;
    {
        pthread_t t[64];
        struct paced_client pc[64];
        atomic_init(&p.next, 0);
        atomic_init(&p.failed, 0);
        p.t0_us = now_us() + 100000u;
        for (size_t i = 0; i < nw; i++) {
            pc[i] = (struct paced_client){&p, i};
            pthread_create(&t[i], NULL, paced_run, &pc[i]);
        }
        for (size_t i = 0; i < nw; i++)
            pthread_join(t[i], NULL);
    }
    double span = (double)(now_us() - p.t0_us) / 1e6;
    size_t failed = atomic_load(&p.failed);
    printf("cert_saturated_per_s %.1f certs/s\n", sat_rate);
    printf("cert_paced_target_per_s %.1f certs/s\n", p.rate);
    printf("cert_paced_achieved_per_s %.1f certs/s\n", (double)p.count / span);
    printf("cert_paced_requests %zu requests\n", p.count);
    printf("cert_paced_failed %zu requests\n", failed);
    printf("cert_latency_p50_ms %.2f ms\n", pct_ms(p.lat_due_us, p.count, 0.50));
    printf("cert_latency_p99_ms %.2f ms\n", pct_ms(p.lat_due_us, p.count, 0.99));
    printf("cert_latency_max_ms %.2f ms\n", pct_ms(p.lat_due_us, p.count, 1.0));
    printf("cert_latency_send_p50_ms %.2f ms\n", pct_ms(p.lat_send_us, p.count, 0.50));
    printf("cert_latency_send_p99_ms %.2f ms\n", pct_ms(p.lat_send_us, p.count, 0.99));
    rc = failed ? 1 : 0;
out:
    for (size_t i = 0; i < sat_n && sat; i++)
        free(sat[i].csr);
    for (size_t i = 0; i < p.count && p.devs; i++)
        free(p.devs[i].csr);
    for (size_t i = 0; i < nw; i++) {
        free(w[i].lat_us);
        w[i].lat_us = NULL;
    }
    free(sat);
    free(p.devs);
    free(p.lat_due_us);
    free(p.lat_send_us);
    return rc;
}

int main(int argc, char **argv)
{
    int paced = argc > 1 && strcmp(argv[1], "--paced") == 0;
    if (paced) {
        argv++;
        argc--;
    }
    size_t seq = paced ? 1 : argc > 1 ? strtoul(argv[1], NULL, 10) : 200;
    size_t nw = argc > (paced ? 1 : 2) ? strtoul(argv[paced ? 1 : 2], NULL, 10) : 8;
    size_t per = argc > (paced ? 2 : 3) ? strtoul(argv[paced ? 2 : 3], NULL, 10) : 100;
    double seconds = paced && argc > 3 ? strtod(argv[3], NULL) : 10.0;
    static struct cf f;
    struct cf_client oem, station;
    struct cf_programmer p[64];
    struct worker w[64];
    const char *ids[64];
    char names[64][16];
    int rc = 1;
    if (!seq || !nw || nw > 64 || !per || !(seconds > 0 && seconds <= 120))
        return 2;
    memset(w, 0, sizeof(w));
    memset(p, 0, sizeof(p));
    memset(&oem, 0, sizeof(oem));
    memset(&station, 0, sizeof(station));
    if (cf_setup(&f, "bench") || cf_client_open(&f, "oem", NULL, NULL, &oem) ||
        cf_client_open(&f, "station", NULL, NULL, &station))
        goto out;
    for (size_t i = 0; i < nw; i++) {
        snprintf(names[i], sizeof(names[i]), "bench-%zu", i);
        ids[i] = names[i];
        if (cf_programmer_make(&f, &oem, &station, names[i], &p[i]) ||
            cf_client_open(&f, names[i], p[i].cert, p[i].key, &w[i].c))
            goto out;
    }
    fprintf(paced ? stderr : stdout,
            "stack: mosquitto mTLS + nusec-cloud (%s, 4 workers) + SQLite WAL FULL + SoftHSM2\n",
#ifdef NDEBUG
            "release"
#else
            "debug build"
#endif
    );
    if (paced) {
        rc = paced_measure(&f, w, nw, per, seconds, ids);
        goto out;
    }
    {
        struct dev *d = calloc(seq, sizeof(*d));
        if (d && !make_devs(d, seq, 0xff))
            raw_rate(&f, d, seq);
        for (size_t j = 0; d && j < seq; j++)
            free(d[j].csr);
        free(d);
    }
    rc = measure(&f, w, nw, seq, per, ids, 1);
    rc |= measure(&f, w, nw, seq, per, ids, 32);
out:
    for (size_t i = 0; i < nw; i++) {
        cf_client_close(&w[i].c);
        cf_programmer_free(&p[i]);
    }
    cf_client_close(&oem);
    cf_client_close(&station);
    if (f.cloud_pid && cf_cloud_stop(&f) != 0)
        rc = 1;
    cf_teardown(&f);
    fprintf(paced ? stderr : stdout, "%s\n", rc ? "bench: FAILED" : "bench: ok");
    return rc;
}
