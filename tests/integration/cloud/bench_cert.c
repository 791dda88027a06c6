/*
 * cloud_bench_cert — device certificates per second through the whole stack
 * (programmer client -> mosquitto (mTLS) -> nusec-cloud -> SQLite + SoftHSM2
 * -> reply), next to the raw rate of what each issuance costs at least (CSR
 * verify + certificate signed in the HSM), measured in the same run.
 *
 *   cloud_bench_cert [SEQUENTIAL] [CLIENTS] [PER_CLIENT]   (defaults 200 8 100)
 *
 * Not a test (not in CTest): it prints figures. Every request is a new device
 * (fresh key and CSR, made before the clock starts); each is checked to be
 * answered with a certificate.
 */
#include "cloud_fixture.h"

#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <pthread.h>
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

int main(int argc, char **argv)
{
    size_t seq = argc > 1 ? strtoul(argv[1], NULL, 10) : 200;
    size_t nw = argc > 2 ? strtoul(argv[2], NULL, 10) : 8;
    size_t per = argc > 3 ? strtoul(argv[3], NULL, 10) : 100;
    static struct cf f;
    struct cf_client oem, station;
    struct cf_programmer p[64];
    struct worker w[64];
    const char *ids[64];
    char names[64][16];
    int rc = 1;
    if (!seq || !nw || nw > 64 || !per)
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
    printf("stack: mosquitto mTLS + nusec-cloud (%s, 4 workers) + SQLite WAL FULL + SoftHSM2\n",
#ifdef NDEBUG
           "release"
#else
           "debug build"
#endif
    );
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
    printf("%s\n", rc ? "bench: FAILED" : "bench: ok");
    return rc;
}
