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
 *   lease_supersede_per_s        the same for offline certificates of chips
 *                                that already had an online certificate (a
 *                                request given up for the lease): each
 *                                upload also revokes the online one and
 *                                hands its quota unit to the offline one
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

/* A device certificate the programmer signs itself with its line-CA key. */
static int issue_offline(const struct nu_signer *s, const uint8_t *line_der, size_t line_len,
                         const uint8_t *uid, size_t uid_len, uint8_t **der, size_t *len)
{
    struct nu_p256_key *dev = NULL;
    char cn[2 * 8 + 1];
    nu_hex_encode(uid, uid_len, cn, sizeof(cn));
    int64_t at = (int64_t)time(NULL);
    struct nu_x509_issue_req ir = {.cn = cn,
                                   .ou = "device",
                                   .o = NU_PKI_ORGANIZATION,
                                   .not_before = at - 3600,
                                   .not_after = at + 20LL * 365 * 24 * 3600,
                                   .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
                                   .ext_key_usage = NU_X509_EKU_CLIENT_AUTH};
    int rc = nu_p256_key_generate(&dev);
    if (!rc)
        rc = nu_p256_key_pub(dev, ir.pub);
    nu_p256_key_destroy(dev);
    return rc ? rc : nu_x509_issue(&ir, s, line_der, line_len, der, len);
}

/* Upload certificates [from, to) in lease.upload requests of BATCH, as the
 * programmer does; counters continue from `from`. `supersede`: each names
 * the online request it supersedes (the fixture's idempotency key for its
 * UID), and the last request gives the lease back. *recorded += the cloud's
 * count. */
static int upload(struct cf_client *c, const char *lease, uint8_t (*uids)[8], const size_t *uid_len,
                  uint8_t **der, const size_t *len, unsigned from, unsigned to, int supersede,
                  unsigned *recorded)
{
    Nusec__V1__LeaseIssued items[BATCH], *ptrs[BATCH];
    uint8_t keys[BATCH][16];
    for (unsigned b = from; b < to; b += BATCH) {
        unsigned n = to - b < BATCH ? to - b : BATCH;
        Nusec__V1__LeaseUploadRequest u = NUSEC__V1__LEASE_UPLOAD_REQUEST__INIT;
        Nusec__V1__Envelope *r = NULL;
        for (unsigned i = 0; i < n; i++) {
            nusec__v1__lease_issued__init(&items[i]);
            items[i].device_uid.data = uids[b + i];
            items[i].device_uid.len = uid_len[b + i];
            items[i].certificate_der.data = der[b + i];
            items[i].certificate_der.len = len[b + i];
            items[i].counter = b + i + 1;
            if (supersede) {
                cf_cert_key(JOB, uids[b + i], uid_len[b + i], keys[i]);
                items[i].supersedes_idempotency_key.data = keys[i];
                items[i].supersedes_idempotency_key.len = sizeof(keys[i]);
            }
            ptrs[i] = &items[i];
        }
        u.lease_id = (char *)lease;
        u.n_issued = n;
        u.issued = ptrs;
        u.final = supersede && b + n >= to;
        int rc = cf_call(c, "lease.upload", &u.base, NULL, 0, &r, NULL, 0);
        if (rc)
            return rc;
        *recorded += r->lease_upload_response->recorded;
        nu_envelope_free(r);
    }
    return NU_OK;
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

#define ONLINE_UID_0 0x99 /* first byte of the UIDs certified online */

int main(int argc, char **argv)
{
    unsigned units = argc > 1 ? (unsigned)atoi(argv[1]) : 512, online = 100;
    unsigned all = units + online; /* the last `online` supersede the online ones */
    struct cf f;
    struct cf_client oem, station, c1;
    struct cf_programmer p1;
    struct nu_p256_key *line = NULL;
    uint8_t line_der[4096], (*uids)[8] = calloc(all, 8);
    size_t line_len = 0, *uid_len = calloc(all, sizeof(*uid_len));
    char lease[64];
    uint8_t **der = calloc(all, sizeof(*der));
    size_t *len = calloc(all, sizeof(*len));
    int rc = 1;
    if (!uids || !uid_len || !der || !len || units < 1 || cf_setup(&f, "bench-lease"))
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
        cloud_ledger_lease_policy_set(l, JOB, all, 2, "oem", nu_time_ms()))
        goto out;
    cloud_ledger_close(l);
    if (nu_p256_key_generate(&line) || grant(&c1, line, line_der, &line_len, lease, sizeof(lease)))
        goto out;
    for (unsigned i = 0; i < all; i++) {
        uint8_t fresh[8] = {0x0f, 0xf1, 0, 0, 0, 0, (uint8_t)(i >> 8), (uint8_t)i};
        uint8_t again[4] = {ONLINE_UID_0, 0, (uint8_t)((i - units) >> 8), (uint8_t)(i - units)};
        uid_len[i] = i < units ? sizeof(fresh) : sizeof(again);
        memcpy(uids[i], i < units ? fresh : again, uid_len[i]);
    }

    /* Online, one programmer, back to back (same stack, same run). */
    double t0 = now_s();
    for (unsigned i = 0; i < online; i++) {
        struct nu_p256_key *dev = NULL;
        uint8_t *csr = NULL;
        size_t csr_len = 0;
        Nusec__V1__Envelope *r = NULL;
        if (cf_device_csr(&dev, &csr, &csr_len) ||
            cf_cert_request(&c1, JOB, uids[units + i], uid_len[units + i], csr, csr_len, NULL, 0,
                            &r))
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
    for (unsigned i = 0; i < units; i++)
        if (issue_offline(&s, line_der, line_len, uids[i], uid_len[i], &der[i], &len[i]))
            goto out;
    double offline_rate = units / (now_s() - t0);
    for (unsigned i = units; i < all; i++)
        if (issue_offline(&s, line_der, line_len, uids[i], uid_len[i], &der[i], &len[i]))
            goto out;

    /* Back online: upload in batches of 64, as the programmer does; then
     * the certificates of the chips certified online before. */
    unsigned recorded = 0, superseding = 0;
    t0 = now_s();
    if (upload(&c1, lease, uids, uid_len, der, len, 0, units, 0, &recorded))
        goto out;
    double reconcile_rate = recorded / (now_s() - t0);
    t0 = now_s();
    if (upload(&c1, lease, uids, uid_len, der, len, units, all, 1, &superseding))
        goto out;
    double supersede_rate = superseding / (now_s() - t0);
    if (recorded != units || superseding != online) {
        fprintf(stderr, "bench_lease: %u of %u recorded, %u of %u superseding\n", recorded, units,
                superseding, online);
        goto out;
    }
    printf("lease_offline_issue_per_s %.1f certs/s\n", offline_rate);
    printf("lease_online_cert_per_s %.1f certs/s\n", online_rate);
    printf("lease_reconcile_per_s %.1f certs/s\n", reconcile_rate);
    printf("lease_supersede_per_s %.1f certs/s\n", supersede_rate);
    printf("lease_units %u certs\n", units);
    rc = 0;
out:
    for (unsigned i = 0; i < all; i++)
        free(der[i]);
    free(der);
    free(len);
    free(uids);
    free(uid_len);
    nu_p256_key_destroy(line);
    cf_client_close(&c1);
    cf_client_close(&oem);
    cf_client_close(&station);
    cf_programmer_free(&p1);
    cf_teardown(&f);
    return rc;
}
