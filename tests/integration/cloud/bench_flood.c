/*
 * cloud_bench_flood — nusec-cloud's memory and a good programmer's latency
 * while one identity floods it with maximum-size garbage.
 *
 *   cloud_bench_flood [SECONDS] [FLOOD_THREADS] [station|oem] [fair|fifo|nolimit]
 *                     [STATION_PAYLOAD]    (defaults 25 8 station fair 262144)
 *
 * Not a test: it prints `name value unit` lines (prefixed flood_ for station,
 * flood_oem_ for oem). On a fresh local stack (the cloud's default
 * configuration), FLOOD_THREADS threads of ONE identity send garbage back to
 * back, as requests with a response topic (each is answered):
 *   - station (the attack of issue 9): job.list with STATION_PAYLOAD bytes
 *     (256 KiB, the most the broker let a station send before its per-
 *     identity limits, now refused there; 81920 = the most it lets through,
 *     refused past the identity's byte rate; either way the cloud answers
 *     TOO_LARGE before decoding what reaches it), and one thread sending
 *     4 MiB (refused by the broker);
 *   - oem, the only role the broker and the cloud let send NU_ENVELOPE_MAX:
 *     4 MiB to firmware.sign (DECODE once decoded, BUSY beyond the bounds);
 *   - FLOOD_THREADS 0: no flood, the same measurement (prefix noflood_), the
 *     baseline on this machine as loaded as it is;
 *   - meanwhile one programmer sends cert.requests for new devices, 20 a
 *     second, one at a time; their latency is measured from send to answer;
 *   - the cloud's resident memory (VmRSS) is sampled every 50 ms: its peak,
 *     and the kernel's own high-water mark (VmHWM) at the end.
 * The flood's threads run at nice 19 (see flood()).
 * Also printed: audit rows the whole flood added (refusals are coalesced), and
 * the broker's and the cloud's CPU share during the flood.
 * fifo: the cloud runs with fair_queue = 0 (one FIFO, one connection: how it
 * was before cloud_fairq), the names get a fifo_ prefix.
 * nolimit: the broker runs without its per-identity publish limits
 * (plugin_opt_rate_limit false, plugin_opt_payload_max 262144: the broker
 * as it was before broker/ratelimit.c), names prefixed nolimit_; the
 * "before" figure of the same run. A STATION_PAYLOAD other than 256 KiB
 * adds _<KiB>k to the prefix.
 */
#include "cloud_fixture.h"

#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

/* The bound this bench documents (README, bench/run.sh). */
#define FLOOD_RSS_BOUND_KIB (256u * 1024u)

static atomic_int stop_flag;
static atomic_ulong sent, busy, answered_other, failed_send;

struct flooder {
    struct cf_client *c;
    const char *topic;
    size_t len;
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

static void *flood(void *arg)
{
    struct flooder *f = arg;
    /* An attacker's CPU is its own machine's. Here the flood's threads share
     * the 2 cores with the broker and the cloud; at nice 19 (Linux nice is
     * per thread) they take what those leave, so the figures measure what
     * the flood costs the system, not the bench's own garbage making. */
    (void)setpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid), 19);
    uint8_t *junk = malloc(f->len);
    for (size_t i = 0; junk && i < f->len; i++)
        junk[i] = (uint8_t)(i * 2654435761u >> 13);
    while (junk && !atomic_load(&stop_flag)) {
        uint8_t *ans = NULL;
        size_t ans_len = 0;
        Nusec__V1__Envelope *r = NULL;
        int rc = nu_mqtt_request(f->c->m, f->topic, junk, f->len, 10000, &ans, &ans_len);
        atomic_fetch_add(&sent, 1);
        if (rc == NU_OK && nu_envelope_unpack(ans, ans_len, &r, NULL) == NU_OK &&
            r->body_case == NUSEC__V1__ENVELOPE__BODY_ERROR)
            atomic_fetch_add((int)r->error->code == NU_ERR_BUSY ? &busy : &answered_other, 1);
        else
            atomic_fetch_add(&failed_send, 1);
        nu_envelope_free(r);
        free(ans);
    }
    free(junk);
    return NULL;
}

/* VmRSS or VmHWM of pid, KiB (0 if unknown). */
static unsigned long proc_kib(pid_t pid, const char *field)
{
    char path[64], line[256];
    unsigned long v = 0;
    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    FILE *fp = fopen(path, "r");
    while (fp && fgets(line, sizeof(line), fp)) {
        if (strncmp(line, field, strlen(field)) == 0)
            v = strtoul(line + strlen(field) + 1, NULL, 10);
    }
    if (fp)
        fclose(fp);
    return v;
}

static unsigned long audit_rows(const struct cf *f)
{
    char cmd[CF_PATH_MAX + 64];
    unsigned long n = 0;
    snprintf(cmd, sizeof(cmd), "sqlite3 %s 'select count(*) from audit_events'", f->ledger);
    FILE *p = popen(cmd, "r");
    if (p && fscanf(p, "%lu", &n) != 1)
        n = 0;
    if (p)
        pclose(p);
    return n;
}

/* The broker as it was before its per-identity limits: the cloud stopped,
 * the broker restarted with rate_limit false and the old 256 KiB payload
 * limit, the cloud started again (it waits until the cloud answers). */
static int broker_without_limits(struct cf *f)
{
    char conf[CF_PATH_MAX + 32], blog[CF_PATH_MAX + 32];
    snprintf(conf, sizeof(conf), "%s/broker/mosquitto.conf", f->dir);
    snprintf(blog, sizeof(blog), "%s/broker/mosquitto.log", f->dir);
    int port = f->broker.port;
    if (cf_cloud_stop(f) ||
        nu_test_sh("sed -i -e 's/^plugin_opt_rate_limit .*/plugin_opt_rate_limit false/' "
                   "-e 's/^plugin_opt_payload_max .*/plugin_opt_payload_max 262144/' %s",
                   conf))
        return -1;
    bf_broker_stop(&f->broker);
    if (bf_broker_start(&f->broker, conf, port, blog))
        return -1;
    return cf_cloud_start(f);
}

int main(int argc, char **argv)
{
    double seconds = argc > 1 ? strtod(argv[1], NULL) : 25.0;
    size_t nthreads = argc > 2 ? strtoul(argv[2], NULL, 10) : 8;
    int as_oem = argc > 3 && strcmp(argv[3], "oem") == 0;
    int fifo = argc > 4 && strcmp(argv[4], "fifo") == 0;
    int nolimit = argc > 4 && strcmp(argv[4], "nolimit") == 0;
    size_t station_len = argc > 5 ? strtoul(argv[5], NULL, 10) : 256 * 1024;
    char px[64], size_tag[24] = "";
    if (station_len != 256 * 1024 && !as_oem)
        snprintf(size_tag, sizeof(size_tag), "_%zuk", station_len / 1024);
    snprintf(px, sizeof(px), "%s%s%s", fifo ? "fifo_" : nolimit ? "nolimit_" : "",
             nthreads == 0 ? "noflood" : as_oem ? "flood_oem" : "flood", size_tag);
    struct cf f;
    struct cf_client oem = {0}, station = {0}, prog = {0};
    struct cf_programmer p = {0};
    pthread_t t[32];
    struct flooder fl[32];
    int rc = 1;
    if (seconds < 1 || seconds > 600 || nthreads > 32 || station_len < 1024 ||
        station_len > NU_ENVELOPE_MAX) {
        fprintf(stderr, "usage: cloud_bench_flood [SECONDS 1..600] [FLOOD_THREADS 0..32] "
                        "[station|oem] [fair|fifo|nolimit] [STATION_PAYLOAD 1024..%u]\n",
                (unsigned)NU_ENVELOPE_MAX);
        return 2;
    }
    if (cf_setup(&f, "bench-flood"))
        return 1;
    if (fifo) { /* the cloud as it was: restarted with one FIFO on one connection */
        char conf[CF_PATH_MAX + 32];
        snprintf(conf, sizeof(conf), "%s/cloud/cloud.conf", f.dir);
        if (cf_cloud_stop(&f) || nu_file_write_atomic(conf, "fair_queue = 0\n", 15, 0600) ||
            cf_cloud_start(&f)) {
            fprintf(stderr, "bench: cannot restart the cloud with fair_queue = 0\n");
            goto out;
        }
    }
    if (nolimit && broker_without_limits(&f)) {
        fprintf(stderr, "bench: cannot restart the broker without its publish limits\n");
        goto out;
    }
    const char *progs[] = {"flood-prog"};
    const uint32_t limits[] = {100000};
    if (cf_client_open(&f, "oem", NULL, NULL, &oem) ||
        cf_client_open(&f, "station", NULL, NULL, &station) ||
        cf_programmer_make(&f, &oem, &station, "flood-prog", &p) ||
        cf_client_open(&f, "flood-prog", p.cert, p.key, &prog) ||
        cf_job_create(&f, "flood-job", 100000, progs, limits, 1)) {
        fprintf(stderr, "bench: cannot set up the stack\n");
        goto out;
    }
    prog.timeout_ms = 30000;
    /* The devices' CSRs are made before the clock starts. */
    size_t ndev = (size_t)(seconds * 20) + 20;
    uint8_t **csr = calloc(ndev, sizeof(*csr));
    size_t *csr_len = calloc(ndev, sizeof(*csr_len));
    uint64_t *lat = calloc(ndev, sizeof(*lat));
    for (size_t i = 0; i < ndev; i++) {
        struct nu_p256_key *k = NULL;
        if (cf_device_csr(&k, &csr[i], &csr_len[i]))
            goto out;
        nu_p256_key_destroy(k);
    }
    unsigned long rows0 = audit_rows(&f), base_kib = proc_kib(f.cloud_pid, "VmRSS:");
    double cloud_cpu0 = cf_cpu_s(f.cloud_pid), broker_cpu0 = cf_cpu_s(f.broker.pid);
    for (size_t i = 0; i < nthreads; i++) {
        if (as_oem)
            fl[i] = (struct flooder){&oem, "nusec/v1/cloud/req/oem/firmware.sign",
                                     NU_ENVELOPE_MAX - 1024};
        else
            fl[i] = (struct flooder){&station, "nusec/v1/cloud/req/station/job.list",
                                     i == 0 ? NU_ENVELOPE_MAX - 1024 : station_len - 1024};
        pthread_create(&t[i], NULL, flood, &fl[i]);
    }
    uint64_t t0 = now_us(), end = t0 + (uint64_t)(seconds * 1e6), next = t0;
    unsigned long peak_kib = 0;
    size_t n = 0, cert_failed = 0;
    while (now_us() < end && n < ndev) {
        unsigned long kib = proc_kib(f.cloud_pid, "VmRSS:");
        peak_kib = kib > peak_kib ? kib : peak_kib;
        if (now_us() < next) {
            usleep(10 * 1000);
            continue;
        }
        next += 50 * 1000; /* 20 a second */
        uint8_t uid[8] = {0xf1, 0x00, 0, 0, (uint8_t)(n >> 16), (uint8_t)(n >> 8), (uint8_t)n};
        Nusec__V1__Envelope *r = NULL;
        uint64_t s = now_us();
        int crc = cf_cert_request(&prog, "flood-job", uid, sizeof(uid), csr[n], csr_len[n], NULL,
                                  0, &r);
        lat[n++] = now_us() - s;
        cert_failed += crc != NU_OK;
        if (crc && cert_failed == 1)
            fprintf(stderr, "bench: cert.request during the flood: %s\n", nu_err_name(crc));
        nu_envelope_free(r);
    }
    atomic_store(&stop_flag, 1);
    for (size_t i = 0; i < nthreads; i++)
        pthread_join(t[i], NULL);
    double secs = (double)(now_us() - t0) / 1e6;
    double cloud_cpu = cf_cpu_s(f.cloud_pid) - cloud_cpu0, broker_cpu = cf_cpu_s(f.broker.pid) - broker_cpu0;
    unsigned long hwm_kib = proc_kib(f.cloud_pid, "VmHWM:");
    qsort(lat, n, sizeof(*lat), cmp_u64);
    printf("%s_seconds %.1f s\n", px, secs);
    printf("%s_requests %lu requests\n", px, (unsigned long)atomic_load(&sent));
    printf("%s_busy_answers %lu requests\n", px, (unsigned long)atomic_load(&busy));
    printf("%s_other_refusals %lu requests\n", px, (unsigned long)atomic_load(&answered_other));
    printf("%s_unanswered %lu requests\n", px, (unsigned long)atomic_load(&failed_send));
    printf("%s_cloud_rss_before_kib %lu KiB\n", px, base_kib);
    /* CPU share of one core each spent during the flood: what the broker's
     * refusals save shows here even when the machine's load blurs latency. */
    printf("%s_broker_cpu_pct %.1f pct\n", px, 100.0 * broker_cpu / secs);
    printf("%s_cloud_cpu_pct %.1f pct\n", px, 100.0 * cloud_cpu / secs);
    printf("%s_cloud_rss_peak_kib %lu KiB\n", px, peak_kib);
    printf("%s_cloud_vmhwm_kib %lu KiB\n", px, hwm_kib);
    printf("%s_cloud_rss_bound_kib %u KiB\n", px, FLOOD_RSS_BOUND_KIB);
    printf("%s_cert_requests %zu requests\n", px, n);
    printf("%s_cert_failed %zu requests\n", px, cert_failed);
    if (n) {
        printf("%s_cert_p50_ms %.2f ms\n", px, (double)lat[n / 2] / 1000.0);
        printf("%s_cert_p99_ms %.2f ms\n", px, (double)lat[(n * 99) / 100] / 1000.0);
        printf("%s_cert_max_ms %.2f ms\n", px, (double)lat[n - 1] / 1000.0);
    }
    printf("%s_audit_rows_added %lu rows\n", px, audit_rows(&f) - rows0);
    rc = hwm_kib && hwm_kib <= FLOOD_RSS_BOUND_KIB ? 0 : 3;
    if (rc)
        fprintf(stderr, "bench: the cloud's peak RSS %lu KiB exceeds the bound %u KiB\n", hwm_kib,
                FLOOD_RSS_BOUND_KIB);
    for (size_t i = 0; i < ndev; i++)
        free(csr[i]);
    free(csr);
    free(csr_len);
    free(lat);
out:
    cf_client_close(&prog);
    cf_client_close(&station);
    cf_client_close(&oem);
    cf_programmer_free(&p);
    cf_teardown(&f);
    return rc;
}
