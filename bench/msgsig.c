/*
 * bench_msgsig — CPU the end-to-end message signatures add per device, in
 * one run: what a programmer spends signing (its KeyStore's software key, as
 * the POSIX port) and what the cloud spends checking (certificate PEM ->
 * key, ECDSA verify, replay window), per message and per device.
 *
 * bin/bench_msgsig DIR [N]: DIR is a state directory made by `nusec pki
 * init` (its station certificate and key stand in for a programmer's). Prints
 * `name value unit` lines. Per device = 2 messages a programmer signs and the
 * cloud checks (cert.request, device.provisioned) + 1 reply the cloud signs.
 * Not counted: the ledger read of the programmer's certificate.
 *
 * The answers (issue 14): the cloud signs each in the HSM with its package
 * key and the programmer verifies each with its pinned key and checks the
 * binding; msgsig_answer_* lines, per device = 2 answers (the certificate,
 * the report's acknowledgement).
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_msgsig.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static double cpu_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* n answers signed in the HSM with the package key, then verified with its public key. */
static int answers(const char *dir, unsigned n, double *out_sign_us, double *out_verify_us)
{
    struct nu_hsm *hsm = NULL;
    struct nu_hsm_key *pk = NULL;
    const char *topic = "nusec/v1/reply/prog-1/r";
    uint8_t payload[1800]; /* a CertificateIssued answer is ~1.7 KiB */
    char sig[NU_MSGSIG_VALUE_MAX];
    int rc = nu_pki_open_hsm(dir, 1, &hsm);
    if (!rc)
        rc = nu_hsm_key_open(hsm, NU_PKI_KEY_PACKAGE, &pk);
    const struct nu_signer *ps = rc ? NULL : nu_hsm_key_signer(pk);
    nu_random(payload, sizeof(payload));
    double t0 = cpu_s();
    for (unsigned i = 0; ps && !rc && i < n; i++)
        rc = nu_msgsig_sign(ps, topic, payload, sizeof(payload), sig);
    *out_sign_us = (cpu_s() - t0) * 1e6 / n;
    t0 = cpu_s();
    for (unsigned i = 0; ps && !rc && i < n; i++)
        rc = nu_msgsig_verify(ps->pub, topic, payload, sizeof(payload), sig);
    *out_verify_us = (cpu_s() - t0) * 1e6 / n;
    if (rc || !ps)
        fprintf(stderr, "bench_msgsig: answers in the HSM of %s: %s\n", dir, nu_err_name(rc));
    nu_hsm_key_close(pk);
    nu_hsm_close(hsm);
    return rc || !ps;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: bench_msgsig DIR [N]\n");
        return 2;
    }
    unsigned n = argc > 2 ? (unsigned)strtoul(argv[2], NULL, 10) : 2000;
    char cert[4096], key[4096];
    snprintf(cert, sizeof(cert), "%s/pki/clients/station.crt", argv[1]);
    snprintf(key, sizeof(key), "%s/pki/clients/station.key", argv[1]);
    struct nu_p256_key *k = NULL;
    struct nu_signer s;
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    if (nu_p256_key_load_pem(key, &k) || nu_p256_key_signer(k, &s) ||
        nu_file_read(cert, 65536, &pem, &pem_len)) {
        fprintf(stderr, "bench_msgsig: cannot read %s / %s\n", cert, key);
        return 1;
    }
    const char *topic = "nusec/v1/cloud/req/prog-1/cert.request";
    uint8_t payload[640]; /* a cert.request envelope is ~600 bytes */
    nu_random(payload, sizeof(payload));
    char(*sigs)[NU_MSGSIG_VALUE_MAX] = calloc(n, sizeof(*sigs));
    struct nu_msgsig_replay *r = NULL;
    if (!sigs || nu_msgsig_replay_new(300000, n + 16, &r))
        return 1;

    double t0 = cpu_s();
    for (unsigned i = 0; i < n; i++) {
        payload[0] = (uint8_t)i;
        payload[1] = (uint8_t)(i >> 8);
        if (nu_msgsig_sign(&s, topic, payload, sizeof(payload), sigs[i]))
            return 1;
    }
    double sign_us = (cpu_s() - t0) * 1e6 / n;

    uint64_t now = nu_time_ms();
    int bad = 0;
    t0 = cpu_s();
    for (unsigned i = 0; i < n; i++) {
        uint8_t *der = NULL, id[NU_MSGSIG_ID_LEN] = {0};
        size_t der_len = 0, used = 0;
        struct nu_x509_cert_info info;
        payload[0] = (uint8_t)i;
        payload[1] = (uint8_t)(i >> 8);
        memcpy(id, &i, sizeof(i));
        id[8] = 0x5a; /* ids are random in real envelopes: keep hashing fair */
        nu_random(id + 9, 7);
        if (nu_x509_pem_to_der((const char *)pem, pem_len, NU_X509_PEM_CERT, &der, &der_len,
                               &used) ||
            nu_x509_cert_info(der, der_len, &info) ||
            nu_msgsig_verify(info.pub, topic, payload, sizeof(payload), sigs[i]) ||
            nu_msgsig_replay_check(r, id, sizeof(id), now, now))
            bad++;
        free(der);
    }
    double verify_us = (cpu_s() - t0) * 1e6 / n;
    if (bad) {
        fprintf(stderr, "bench_msgsig: %d of %u did not verify\n", bad, n);
        return 1;
    }
    double hsm_us = 0, check_us = 0;
    if (answers(argv[1], n / 4 ? n / 4 : 1, &hsm_us, &check_us))
        return 1;
    printf("msgsig_answer_cloud_hsm_sign_us_per_msg %.1f us\n", hsm_us);
    printf("msgsig_answer_programmer_verify_us_per_msg %.1f us\n", check_us);
    printf("msgsig_answer_cloud_us_per_device %.1f us\n", 2 * hsm_us);
    printf("msgsig_answer_programmer_us_per_device %.1f us\n", 2 * check_us);
    printf("msgsig_programmer_sign_us_per_msg %.1f us\n", sign_us);
    printf("msgsig_cloud_verify_us_per_msg %.1f us\n", verify_us);
    printf("msgsig_programmer_us_per_device %.1f us\n", 2 * sign_us);
    printf("msgsig_cloud_us_per_device %.1f us\n", 2 * verify_us + sign_us);
    nu_msgsig_replay_free(r);
    free(sigs);
    free(pem);
    nu_p256_key_destroy(k);
    return 0;
}
