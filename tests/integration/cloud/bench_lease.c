/*
 * cloud_bench_lease — the offline lease in numbers (issue 15), one run:
 *   lease_offline_issue_per_s    device certificates a programmer signs itself
 *                                with its line-CA key (nu_x509_issue with a
 *                                software P-256 key standing in for the
 *                                KeyStore; one core), fresh device key each
 *   lease_online_cert_per_s      cert.request answered by the cloud, one
 *                                programmer, back to back (same run)
 *   lease_reconcile_per_s        offline certificates uploaded (lease.upload,
 *                                64 per request) and recorded by the cloud
 *
 *   cloud_bench_lease [UNITS]   (default 512)
 * Not a test (not in CTest): prints `name value unit` lines.
 */
#include "cloud_fixture.h"

#include "ledger.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define JOB "job-bench-lease"
#define BATCH 64

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int grant(struct cf_client *c, struct nu_p256_key *key, uint8_t *der, size_t *len,
                 char *lease, size_t cap)
{
    struct nu_signer s;
    uint8_t *csr = NULL;
    size_t csr_len = 0;
    Nusec__V1__Envelope *r = NULL;
    int rc = nu_p256_key_signer(key, &s);
    if (!rc)
        rc = nu_x509_csr_make(&s, "prog-1", NULL, NU_PKI_ORGANIZATION, &csr, &csr_len);
    Nusec__V1__LeaseGrantRequest g = NUSEC__V1__LEASE_GRANT_REQUEST__INIT;
    g.job_id = JOB;
    g.line_ca_csr_der.data = csr;
    g.line_ca_csr_der.len = csr_len;
    if (!rc)
        rc = cf_call(c, "lease.grant", &g.base, NULL, 0, &r, NULL, 0);
    if (!rc) {
        memcpy(der, r->lease_grant->line_ca_cert_der.data, r->lease_grant->line_ca_cert_der.len);
        *len = r->lease_grant->line_ca_cert_der.len;
        snprintf(lease, cap, "%s", r->lease_grant->lease_id);
    }
    nu_envelope_free(r);
    free(csr);
    return rc;
}

int main(int argc, char **argv)
{
    unsigned units = argc > 1 ? (unsigned)atoi(argv[1]) : 512;
    struct cf f;
    struct cf_client oem, station, c1;
    struct cf_programmer p1;
    struct nu_p256_key *line = NULL;
    uint8_t line_der[4096], (*uids)[8] = calloc(units, 8);
    size_t line_len = 0;
    char lease[64];
    uint8_t **der = calloc(units, sizeof(*der));
    size_t *len = calloc(units, sizeof(*len));
    int rc = 1;
    if (!uids || !der || !len || units < 1 || cf_setup(&f, "bench-lease"))
        return 1;
    if (cf_client_open(&f, "oem", NULL, NULL, &oem) ||
        cf_client_open(&f, "station", NULL, NULL, &station) ||
        cf_programmer_make(&f, &oem, &station, "prog-1", &p1) ||
        cf_client_open(&f, "prog-1", p1.cert, p1.key, &c1))
        goto out;
    const char *progs[] = {"prog-1"};
    const uint32_t limits[] = {units + 200};
    struct cloud_ledger *l = NULL;
    if (cf_job_create(&f, JOB, units + 200, progs, limits, 1) || cloud_ledger_open(f.ledger, &l) ||
        cloud_ledger_lease_policy_set(l, JOB, units, 2, "oem", nu_time_ms()))
        goto out;
    cloud_ledger_close(l);
    if (nu_p256_key_generate(&line) || grant(&c1, line, line_der, &line_len, lease, sizeof(lease)))
        goto out;

    /* Online, one programmer, back to back (same stack, same run). */
    unsigned online = 100;
    double t0 = now_s();
    for (unsigned i = 0; i < online; i++) {
        struct nu_p256_key *dev = NULL;
        uint8_t *csr = NULL, uid[4] = {0x99, 0, (uint8_t)(i >> 8), (uint8_t)i};
        size_t csr_len = 0;
        Nusec__V1__Envelope *r = NULL;
        if (cf_device_csr(&dev, &csr, &csr_len) ||
            cf_cert_request(&c1, JOB, uid, sizeof(uid), csr, csr_len, NULL, 0, &r))
            goto out;
        nu_envelope_free(r);
        free(csr);
        nu_p256_key_destroy(dev);
    }
    double online_rate = online / (now_s() - t0);

    /* Offline: the programmer signs each device certificate itself. */
    struct nu_signer s;
    nu_p256_key_signer(line, &s);
    t0 = now_s();
    for (unsigned i = 0; i < units; i++) {
        struct nu_p256_key *dev = NULL;
        char cn[17];
        uint8_t uid[8] = {0x0f, 0xf1, 0, 0, 0, 0, (uint8_t)(i >> 8), (uint8_t)i};
        memcpy(uids[i], uid, 8);
        nu_hex_encode(uid, 8, cn, sizeof(cn));
        int64_t at = (int64_t)time(NULL);
        struct nu_x509_issue_req ir = {.cn = cn, .ou = "device", .o = NU_PKI_ORGANIZATION,
                                       .not_before = at - 3600,
                                       .not_after = at + 20LL * 365 * 24 * 3600,
                                       .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
                                       .ext_key_usage = NU_X509_EKU_CLIENT_AUTH};
        if (nu_p256_key_generate(&dev))
            goto out;
        nu_p256_key_pub(dev, ir.pub);
        nu_p256_key_destroy(dev);
        if (nu_x509_issue(&ir, &s, line_der, line_len, &der[i], &len[i]))
            goto out;
    }
    double offline_rate = units / (now_s() - t0);

    /* Back online: upload in batches of 64, as the programmer does. */
    Nusec__V1__LeaseIssued items[BATCH], *ptrs[BATCH];
    unsigned recorded = 0;
    t0 = now_s();
    for (unsigned b = 0; b < units; b += BATCH) {
        unsigned n = units - b < BATCH ? units - b : BATCH;
        Nusec__V1__LeaseUploadRequest u = NUSEC__V1__LEASE_UPLOAD_REQUEST__INIT;
        Nusec__V1__Envelope *r = NULL;
        for (unsigned i = 0; i < n; i++) {
            nusec__v1__lease_issued__init(&items[i]);
            items[i].device_uid.data = uids[b + i];
            items[i].device_uid.len = 8;
            items[i].certificate_der.data = der[b + i];
            items[i].certificate_der.len = len[b + i];
            items[i].counter = b + i + 1;
            ptrs[i] = &items[i];
        }
        u.lease_id = lease;
        u.n_issued = n;
        u.issued = ptrs;
        u.final = b + n >= units;
        if (cf_call(&c1, "lease.upload", &u.base, NULL, 0, &r, NULL, 0))
            goto out;
        recorded += r->lease_upload_response->recorded;
        nu_envelope_free(r);
    }
    double reconcile_rate = recorded / (now_s() - t0);
    if (recorded != units) {
        fprintf(stderr, "bench_lease: %u of %u recorded\n", recorded, units);
        goto out;
    }
    printf("lease_offline_issue_per_s %.1f certs/s\n", offline_rate);
    printf("lease_online_cert_per_s %.1f certs/s\n", online_rate);
    printf("lease_reconcile_per_s %.1f certs/s\n", reconcile_rate);
    printf("lease_units %u certs\n", units);
    rc = 0;
out:
    for (unsigned i = 0; i < units; i++)
        free(der[i]);
    free(der);
    free(len);
    free(uids);
    nu_p256_key_destroy(line);
    cf_client_close(&c1);
    cf_client_close(&oem);
    cf_client_close(&station);
    cf_programmer_free(&p1);
    cf_teardown(&f);
    return rc;
}
