/*
 * bench_hsm_certs — device certificates signed by the Device CA key in the
 * HSM of a PKI, per second: the HSM's share of every issuance, on whatever
 * module DIR/hsm/pkcs11.conf names (SoftHSM2, a TPM, a network HSM).
 *
 *   bench_hsm_certs DIR [THREADS] [SECONDS] [NAME]   (defaults 2 5 hsm)
 *
 * THREADS threads share one nu_hsm with THREADS sessions, as the cloud's
 * workers do; each builds and signs certificates back to back (a fresh
 * random subject key per certificate, made before the clock starts) and
 * every signature is verified before use, as always. Not a test: prints
 * `NAME_certs_per_s value certs/s` and `NAME_sign_ms value ms` (mean time
 * of one certificate on one thread).
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_paths.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define BENCH_KEYS 64

struct bench {
    const struct nu_signer *ca;
    uint8_t *ca_der;
    size_t ca_len;
    uint8_t pubs[BENCH_KEYS][NU_P256_PUB_LEN];
    uint64_t deadline_ms;
    atomic_ulong done, failed;
};

static void *bench__worker(void *arg)
{
    struct bench *b = arg;
    int64_t now = (int64_t)time(NULL);
    for (unsigned long i = 0; nu_time_ms() < b->deadline_ms; i++) {
        struct nu_x509_issue_req req = {
            .cn = "bench-device",
            .o = NU_PKI_ORGANIZATION,
            .not_before = now - 3600,
            .not_after = now + 86400,
            .path_len = -1,
            .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        };
        memcpy(req.pub, b->pubs[i % BENCH_KEYS], NU_P256_PUB_LEN);
        uint8_t *der = NULL;
        size_t len = 0;
        if (nu_x509_issue(&req, b->ca, b->ca_der, b->ca_len, &der, &len) == NU_OK)
            atomic_fetch_add(&b->done, 1);
        else
            atomic_fetch_add(&b->failed, 1);
        free(der);
    }
    return NULL;
}

static int bench__ca_cert(const char *dir, uint8_t **der, size_t *len)
{
    char path[PATH_MAX];
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    int rc = nu_paths_get(dir, NU_PATH_DEVICE_CA, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, 64 * 1024, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_pem_to_der((char *)pem, pem_len, NU_X509_PEM_CERT, der, len, NULL);
    free(pem);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_hsm_certs DIR [THREADS] [SECONDS] [NAME]\n");
        return 2;
    }
    unsigned threads = argc > 2 ? (unsigned)atoi(argv[2]) : 2;
    unsigned seconds = argc > 3 ? (unsigned)atoi(argv[3]) : 5;
    const char *name = argc > 4 ? argv[4] : "hsm";
    if (threads < 1 || threads > 16 || seconds < 1 || seconds > 600)
        return 2;
    static struct bench b;
    struct nu_hsm *hsm = NULL;
    struct nu_hsm_key *key = NULL;
    pthread_t tid[16];
    int rc = nu_pki_open_hsm(argv[1], threads, &hsm);
    if (!rc)
        rc = nu_hsm_key_open(hsm, NU_PKI_KEY_DEVICE_CA, &key);
    if (!rc)
        rc = bench__ca_cert(argv[1], &b.ca_der, &b.ca_len);
    for (int i = 0; !rc && i < BENCH_KEYS; i++) {
        struct nu_p256_key *k = NULL;
        rc = nu_p256_key_generate(&k);
        if (!rc)
            rc = nu_p256_key_pub(k, b.pubs[i]);
        nu_p256_key_destroy(k);
    }
    if (rc) {
        fprintf(stderr, "bench_hsm_certs: %s\n", nu_err_name(rc));
        goto out;
    }
    b.ca = nu_hsm_key_signer(key);
    uint64_t t0 = nu_time_ms();
    b.deadline_ms = t0 + 1000u * seconds;
    for (unsigned i = 0; i < threads; i++)
        pthread_create(&tid[i], NULL, bench__worker, &b);
    for (unsigned i = 0; i < threads; i++)
        pthread_join(tid[i], NULL);
    double secs = (double)(nu_time_ms() - t0) / 1000.0;
    unsigned long done = atomic_load(&b.done);
    printf("%s_certs_per_s %.1f certs/s\n", name, (double)done / secs);
    printf("%s_sign_ms %.2f ms\n", name, done ? 1000.0 * secs * threads / (double)done : 0.0);
    if (atomic_load(&b.failed))
        fprintf(stderr, "bench_hsm_certs: %lu certificates failed\n", atomic_load(&b.failed));
    rc = atomic_load(&b.failed) || !done ? NU_ERR_HSM : NU_OK;
out:
    free(b.ca_der);
    nu_hsm_key_close(key);
    nu_hsm_close(hsm);
    return rc ? 1 : 0;
}
