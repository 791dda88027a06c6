/*
 * bench_crypto_ceiling — the per-device crypto of one provisioning, timed
 * in-process, stage by stage:
 *   target keygen, CSR make (target signs), CSR verify (cloud), certificate
 *   signed in the HSM over PKCS#11 (nu_x509_issue with the device-CA key),
 *   MCUboot secure-boot verify of a small image, attestation sign + verify.
 *
 *   bench_crypto_ceiling STATE_DIR [DEVICES] [CORES]   (defaults - 200 1)
 *
 * STATE_DIR is a `nusec pki init` state directory (its HSM and device CA).
 * Prints `name value unit` lines; the ceiling is
 *   crypto_ceiling_devices_per_s = CORES * DEVICES / total_seconds_one_thread
 * i.e. linear scaling over the cores (an upper bound: no cost for the bus,
 * the ledger or the HSM's own locking). Not a test.
 *
 * Each stage runs on the thread of the role that does it in production, one
 * thread at a time (the stages never overlap; total_seconds_one_thread is
 * their sum): a "chip" thread (keygen, CSR make, secure boot, attestation
 * signature), a "cloud" thread (CSR verify, HSM issue) and a "programmer"
 * thread (attestation verify). On one thread for all, this wolfSSL's FP_ECC
 * cache saw each fresh device key twice (the CSR's self-check in
 * nu_x509_csr_make, then the cloud's verify) and built a lookup table for it
 * on the second use: 5-6 ms per device, 80% of the old figure, a cost of
 * that thread layout and not of the crypto (the cloud verifies a CSR in
 * ~0.15 ms: its thread has never seen the key).
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_mcuboot.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ST_KEYGEN, ST_CSR_MAKE, ST_CSR_VERIFY, ST_HSM_ISSUE, ST_BOOT_VERIFY, ST_ATTEST, ST_N };
static const char *const stage_name[ST_N] = {"keygen",    "csr_make",    "csr_verify",
                                             "hsm_issue", "boot_verify", "attest"};

/* What one device carries from stage to stage (and role to role). */
struct dev {
    struct nu_p256_key *key;
    uint8_t *csr, *cert;
    size_t csr_len, cert_len;
    struct nu_x509_csr_info info;
    char cn[32];
    uint8_t digest[NU_SHA256_LEN], sig[NU_P256_SIG_MAX];
    size_t sig_len;
};

struct ctx {
    struct nu_signer ca;
    uint8_t *ca_der;
    size_t ca_len;
    uint8_t *img;
    size_t img_len;
    uint8_t boot_pub[NU_P256_PUB_LEN];
    uint8_t rotpk_hash[NU_SHA256_LEN];
    struct dev *devs;
    size_t n;
    uint64_t ns[ST_N];
};

static uint64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* The secure-boot key and a signed 16 KiB image: set-up, not timed. */
static int make_image(struct ctx *c)
{
    struct nu_p256_key *k = NULL;
    struct nu_signer s;
    struct nu_mcuboot_version ver = {1, 0, 0, 0};
    uint8_t payload[16384];
    int rc = nu_p256_key_generate(&k);
    if (rc)
        return rc;
    memset(payload, 0x5a, sizeof(payload));
    rc = nu_p256_key_signer(k, &s);
    if (!rc)
        rc = nu_mcuboot_sign(payload, sizeof(payload), &ver, 1, 0, &s, &c->img, &c->img_len);
    if (!rc)
        rc = nu_p256_key_pub(k, c->boot_pub);
    if (!rc)
        rc = nu_mcuboot_rotpk_hash(c->boot_pub, c->rotpk_hash);
    nu_p256_key_destroy(k);
    return rc;
}

#define STAGE(c, i, expr)                                                                          \
    do {                                                                                           \
        uint64_t t0_ = now_ns();                                                                   \
        rc = (expr);                                                                               \
        (c)->ns[i] += now_ns() - t0_;                                                              \
    } while (0)

static int csr_make(struct nu_p256_key *k, const char *cn, uint8_t **out_der, size_t *out_len)
{
    struct nu_signer s;
    int rc = nu_p256_key_signer(k, &s);
    return rc ? rc : nu_x509_csr_make(&s, cn, "device", "NuSEC", out_der, out_len);
}

/* Chip: key pair and CSR. */
static int chip_keygen_csr(struct ctx *c, struct dev *d)
{
    int rc;
    STAGE(c, ST_KEYGEN, nu_p256_key_generate(&d->key));
    if (!rc)
        STAGE(c, ST_CSR_MAKE, csr_make(d->key, d->cn, &d->csr, &d->csr_len));
    return rc;
}

/* Cloud: the CSR checked, the certificate signed in the HSM. */
static int cloud_issue(struct ctx *c, struct dev *d)
{
    int rc;
    STAGE(c, ST_CSR_VERIFY, nu_x509_csr_parse_verify(d->csr, d->csr_len, &d->info));
    if (rc)
        return rc;
    struct nu_x509_issue_req ir = {.cn = d->info.cn,
                                   .ou = "device",
                                   .o = "NuSEC",
                                   .not_before = 1700000000,
                                   .not_after = 1900000000,
                                   .key_usage = NU_X509_KU_DIGITAL_SIGNATURE};
    memcpy(ir.pub, d->info.pub, sizeof(ir.pub));
    STAGE(c, ST_HSM_ISSUE,
          nu_x509_issue(&ir, &c->ca, c->ca_der, c->ca_len, &d->cert, &d->cert_len));
    return rc;
}

static int attest_sign(struct dev *d)
{
    d->sig_len = sizeof(d->sig);
    int rc = nu_sha256(d->cn, strlen(d->cn), d->digest);
    return rc ? rc : nu_p256_key_sign_digest(d->key, d->digest, d->sig, &d->sig_len);
}

/* Chip: secure boot of the image, then the attestation signature. */
static int chip_boot_attest(struct ctx *c, struct dev *d)
{
    int rc;
    STAGE(c, ST_BOOT_VERIFY,
          nu_mcuboot_verify(c->img, c->img_len, c->boot_pub, c->rotpk_hash, NULL));
    if (!rc)
        STAGE(c, ST_ATTEST, attest_sign(d));
    return rc;
}

/* Programmer: the attestation checked against the certified key. */
static int prog_attest_verify(struct ctx *c, struct dev *d)
{
    int rc;
    STAGE(c, ST_ATTEST, nu_p256_verify(d->info.pub, d->digest, d->sig, d->sig_len));
    return rc;
}

/* One role's work on every device, on a thread of its own. */
struct phase {
    struct ctx *c;
    int (*fn)(struct ctx *, struct dev *);
    int rc;
};

static void *phase_main(void *arg)
{
    struct phase *p = arg;
    for (size_t i = 0; i < p->c->n && !p->rc; i++)
        p->rc = p->fn(p->c, &p->c->devs[i]);
    return NULL;
}

/* The chip's two phases share one thread (one FP cache, like one socket's):
 * keygen + CSR, a hand-over to the cloud, then boot + attestation. */
struct chip_run {
    struct phase first, second;
    pthread_barrier_t handoff;
    int go; /* set by the main thread before the second hand-over */
};

static void *chip_main(void *arg)
{
    struct chip_run *r = arg;
    phase_main(&r->first);
    pthread_barrier_wait(&r->handoff); /* CSRs to the cloud */
    pthread_barrier_wait(&r->handoff); /* certificates back */
    if (r->go)
        phase_main(&r->second);
    return NULL;
}

/* Run `p` on a thread of its own and wait for it. */
static int run_phase(struct phase *p)
{
    pthread_t t;
    if (pthread_create(&t, NULL, phase_main, p) != 0)
        return NU_ERR_INTERNAL;
    pthread_join(t, NULL);
    return p->rc;
}

static int run_roles(struct ctx *c)
{
    struct chip_run chip = {.first = {c, chip_keygen_csr, 0}, .second = {c, chip_boot_attest, 0}};
    struct phase cloud = {c, cloud_issue, 0}, prog = {c, prog_attest_verify, 0};
    pthread_t t;
    if (pthread_barrier_init(&chip.handoff, NULL, 2) != 0)
        return NU_ERR_INTERNAL;
    if (pthread_create(&t, NULL, chip_main, &chip) != 0) {
        pthread_barrier_destroy(&chip.handoff);
        return NU_ERR_INTERNAL;
    }
    pthread_barrier_wait(&chip.handoff);
    int rc = chip.first.rc ? chip.first.rc : run_phase(&cloud);
    chip.go = rc == NU_OK;
    pthread_barrier_wait(&chip.handoff);
    pthread_join(t, NULL);
    pthread_barrier_destroy(&chip.handoff);
    if (!rc)
        rc = chip.second.rc ? chip.second.rc : run_phase(&prog);
    return rc;
}

static void free_devs(struct ctx *c)
{
    for (size_t i = 0; c->devs && i < c->n; i++) {
        free(c->devs[i].csr);
        free(c->devs[i].cert);
        nu_p256_key_destroy(c->devs[i].key);
    }
    free(c->devs);
}

static int run(const char *dir, size_t n, unsigned cores)
{
    struct ctx c = {0};
    struct nu_hsm *hsm = NULL;
    struct nu_hsm_key *ca = NULL;
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    char path[4096];
    int rc = NU_OK;
    c.n = n;
    c.devs = calloc(n, sizeof(*c.devs));
    if (!c.devs)
        rc = NU_ERR_NOMEM;
    for (size_t i = 0; !rc && i < n; i++)
        snprintf(c.devs[i].cn, sizeof(c.devs[i].cn), "bench-%zu", i);
    snprintf(path, sizeof(path), "%s/pki/device-ca.pem", dir);
    if (!rc)
        rc = nu_pki_open_hsm(dir, 1, &hsm);
    if (!rc)
        rc = nu_hsm_key_open(hsm, NU_PKI_KEY_DEVICE_CA, &ca);
    if (!rc)
        rc = nu_file_read(path, 65536, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_pem_to_der((char *)pem, pem_len, NU_X509_PEM_CERT, &c.ca_der, &c.ca_len, NULL);
    if (!rc)
        rc = make_image(&c);
    if (rc) {
        fprintf(stderr, "bench: set-up failed: %s\n", nu_err_name(rc));
        goto out;
    }
    c.ca = *nu_hsm_key_signer(ca);
    rc = run_roles(&c);
    if (rc) {
        fprintf(stderr, "bench: device failed: %s\n", nu_err_name(rc));
        goto out;
    }
    uint64_t total = 0;
    for (int i = 0; i < ST_N; i++) {
        total += c.ns[i];
        printf("crypto_%s_ms %.4f ms\n", stage_name[i], (double)c.ns[i] / 1e6 / (double)n);
    }
    double per_s = (double)n / ((double)total / 1e9);
    printf("crypto_one_thread_devices_per_s %.1f devices/s\n", per_s);
    printf("crypto_cores %u cores\n", cores);
    printf("crypto_ceiling_devices_per_s %.1f devices/s\n", per_s * cores);
out:
    free_devs(&c);
    free(c.img);
    free(c.ca_der);
    free(pem);
    nu_hsm_key_close(ca);
    nu_hsm_close(hsm);
    return rc ? 1 : 0;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s STATE_DIR [DEVICES] [CORES]\n", argv[0]);
        return 2;
    }
    size_t n = argc > 2 ? (size_t)strtoul(argv[2], NULL, 10) : 200;
    unsigned cores = argc > 3 ? (unsigned)strtoul(argv[3], NULL, 10) : 1;
    if (n == 0 || cores == 0) {
        fprintf(stderr, "bench: DEVICES and CORES must be > 0\n");
        return 2;
    }
    return run(argv[1], n, cores);
}
