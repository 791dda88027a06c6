/*
 * bench_crypto_ceiling — the per-device crypto of one provisioning, timed
 * in-process on one thread, stage by stage:
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
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_mcuboot.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

enum { ST_KEYGEN, ST_CSR_MAKE, ST_CSR_VERIFY, ST_HSM_ISSUE, ST_BOOT_VERIFY, ST_ATTEST, ST_N };
static const char *const stage_name[ST_N] = {"keygen",    "csr_make",    "csr_verify",
                                             "hsm_issue", "boot_verify", "attest"};

struct ctx {
    struct nu_signer ca;
    uint8_t *ca_der;
    size_t ca_len;
    uint8_t *img;
    size_t img_len;
    uint8_t boot_pub[NU_P256_PUB_LEN];
    uint8_t rotpk_hash[NU_SHA256_LEN];
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
        if (rc)                                                                                    \
            goto out;                                                                              \
    } while (0)

static int csr_make(struct nu_p256_key *k, struct nu_signer *s, const char *cn, uint8_t **out_der,
                    size_t *out_len)
{
    int rc = nu_p256_key_signer(k, s);
    return rc ? rc : nu_x509_csr_make(s, cn, "device", "NuSEC", out_der, out_len);
}

/* Attestation: the target signs a challenge digest, the cloud verifies it. */
static int attest(struct nu_p256_key *k, const uint8_t pub[NU_P256_PUB_LEN], const char *challenge)
{
    uint8_t digest[NU_SHA256_LEN], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    int rc = nu_sha256(challenge, strlen(challenge), digest);
    if (!rc)
        rc = nu_p256_key_sign_digest(k, digest, sig, &sig_len);
    return rc ? rc : nu_p256_verify(pub, digest, sig, sig_len);
}

/* One device, every stage once. */
static int one_device(struct ctx *c, size_t i)
{
    struct nu_p256_key *k = NULL;
    struct nu_signer s;
    struct nu_x509_csr_info info;
    uint8_t *csr = NULL, *cert = NULL;
    size_t csr_len = 0, cert_len = 0;
    char cn[32];
    int rc;
    snprintf(cn, sizeof(cn), "bench-%zu", i);
    STAGE(c, ST_KEYGEN, nu_p256_key_generate(&k));
    STAGE(c, ST_CSR_MAKE, csr_make(k, &s, cn, &csr, &csr_len));
    STAGE(c, ST_CSR_VERIFY, nu_x509_csr_parse_verify(csr, csr_len, &info));
    struct nu_x509_issue_req ir = {.cn = info.cn,
                                   .ou = "device",
                                   .o = "NuSEC",
                                   .not_before = 1700000000,
                                   .not_after = 1900000000,
                                   .key_usage = NU_X509_KU_DIGITAL_SIGNATURE};
    memcpy(ir.pub, info.pub, sizeof(ir.pub));
    STAGE(c, ST_HSM_ISSUE, nu_x509_issue(&ir, &c->ca, c->ca_der, c->ca_len, &cert, &cert_len));
    STAGE(c, ST_BOOT_VERIFY,
          nu_mcuboot_verify(c->img, c->img_len, c->boot_pub, c->rotpk_hash, NULL));
    STAGE(c, ST_ATTEST, attest(k, info.pub, cn));
out:
    free(cert);
    free(csr);
    nu_p256_key_destroy(k);
    return rc;
}

static int run(const char *dir, size_t n, unsigned cores)
{
    struct ctx c = {0};
    struct nu_hsm *hsm = NULL;
    struct nu_hsm_key *ca = NULL;
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    char path[4096];
    int rc;
    snprintf(path, sizeof(path), "%s/pki/device-ca.pem", dir);
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
    for (size_t i = 0; i < n && !rc; i++)
        rc = one_device(&c, i);
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
