/*
 * bench_fw_delivery — encrypted firmware delivery through the real stack:
 * `nusec pki init`, mosquitto (mTLS) with nusec_auth, the nusec-cloud binary
 * (SoftHSM2, SQLite), and PROGRAMMERS enrolled programmers that download one
 * job's image at the same time with firmware.manifest + firmware.chunk, each
 * chunk AES-256-GCM under the job's firmware key (tests/integration/cloud's
 * cloud_fixture runs the stack).
 *
 *   bench_fw_delivery [PROGRAMMERS] [ROUNDS] [IMAGE_KIB]   (defaults 8 3 1024)
 *
 * Set-up (not timed): the image is signed by the cloud (firmware.sign), a job
 * is created for the programmers (job.create) and each programmer opens its
 * own sealed package with its package key for the firmware key and its
 * download token, then connects. Timed: all programmers at once, as the
 * programmer firmware does it (pg_firmware.c): the manifest, then every chunk
 * in order, one request at a time, each checked (index, offset), decrypted
 * and authenticated with the job id and index as AAD, and the whole image's
 * SHA-256 compared with the manifest. Every round must give back exactly the
 * signed image. ROUNDS rounds; the first one is cold (the cloud encrypts the
 * job's image into its cache on the first request). One round with a single
 * programmer follows.
 *
 * Next to it, in the same process and run: what the crypto alone does on one
 * core over the same image, AES-256-GCM in the same chunks with the same AAD
 * plus SHA-256 of the image (measured before and after the rounds; the faster
 * of the two is the reference). Prints `name value unit` (MB = 10^6 bytes).
 * Not a test.
 */
#include "cloud_fixture.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_seal.h"
#include "nu_util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define FD_PROGS_MAX 32
#define FD_JOB_MAX 80               /* job ids are at most 64 characters */
#define FD_AAD_MAX (FD_JOB_MAX + 4) /* job id || u32be chunk index */

struct fd_prog {
    struct cf_programmer p;
    struct cf_client c;
    uint8_t key[NU_AES256_KEY_LEN];
    uint8_t token[256];
    size_t token_len;
};

struct fd {
    struct cf f;
    struct cf_client oem, station;
    struct fd_prog prog[FD_PROGS_MAX];
    int n;
    uint8_t *img; /* the signed image (what the programmers must get) */
    size_t img_len;
    char job[FD_JOB_MAX];
    pthread_barrier_t go;
};

struct fd_run {
    struct fd *d;
    int i;
    int rc;
};

static double fd_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* The chunk's nonce (index in the last 4 bytes) and AAD (job || u32be index):
 * what the cloud encrypts with and what the programmer checks. */
static size_t fd_nonce_aad(const char *job, uint32_t index, uint8_t nonce[NU_GCM_NONCE_LEN],
                           uint8_t aad[FD_AAD_MAX])
{
    size_t jl = strlen(job);
    memset(nonce, 0, NU_GCM_NONCE_LEN);
    memcpy(aad, job, jl);
    for (int i = 0; i < 4; i++) {
        nonce[8 + i] = (uint8_t)(index >> (24 - 8 * i));
        aad[jl + (size_t)i] = (uint8_t)(index >> (24 - 8 * i));
    }
    return jl + 4;
}

/* ------------------------------------------------------------ set-up */

static int fd_sign(struct fd *d, const uint8_t *payload, size_t len)
{
    Nusec__V1__FirmwareSignRequest req = NUSEC__V1__FIRMWARE_SIGN_REQUEST__INIT;
    Nusec__V1__Envelope *r = NULL;
    req.name = "bench";
    req.version = "1.0.0";
    req.payload = (ProtobufCBinaryData){len, (uint8_t *)payload};
    int rc = cf_call(&d->oem, "firmware.sign", &req.base, NULL, 0, &r, NULL, 0);
    if (!rc && r->body_case != NUSEC__V1__ENVELOPE__BODY_FIRMWARE_SIGN_RESPONSE)
        rc = NU_ERR_DECODE;
    if (!rc) {
        d->img_len = r->firmware_sign_response->image.len;
        d->img = malloc(d->img_len);
        if (!d->img)
            rc = NU_ERR_NOMEM;
        else
            memcpy(d->img, r->firmware_sign_response->image.data, d->img_len);
    }
    nu_envelope_free(r);
    return rc;
}

/* Open programmer p's sealed package: its firmware key and download token. */
static int fd_package(struct fd_prog *p, const ProtobufCBinaryData *pkg, const char *job)
{
    struct nu_seal_recipient rcp;
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    Nusec__V1__SealedPackage *sp = nusec__v1__sealed_package__unpack(NULL, pkg->len, pkg->data);
    int rc = sp ? nu_seal_recipient_from_key(p->p.package, &rcp) : NU_ERR_DECODE;
    if (!rc)
        rc = nu_seal_open(&rcp, sp->summary.data, sp->summary.len, sp->sealed.data, sp->sealed.len,
                          &plain, &plain_len);
    Nusec__V1__PackageSecrets *sec =
        rc ? NULL : nusec__v1__package_secrets__unpack(NULL, plain_len, plain);
    if (!rc && (!sec || strcmp(sec->job_id, job) != 0 || sec->firmware_key.len != 32 ||
                sec->firmware_token.len == 0 || sec->firmware_token.len > sizeof(p->token)))
        rc = NU_ERR_DECODE;
    if (!rc) {
        memcpy(p->key, sec->firmware_key.data, 32);
        memcpy(p->token, sec->firmware_token.data, sec->firmware_token.len);
        p->token_len = sec->firmware_token.len;
    }
    nusec__v1__package_secrets__free_unpacked(sec, NULL);
    nu_seal_free(plain, plain_len);
    nusec__v1__sealed_package__free_unpacked(sp, NULL);
    return rc;
}

/* job.create for every programmer (one device each), packages opened. */
static int fd_job(struct fd *d)
{
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    Nusec__V1__ProgrammerAllocation a[FD_PROGS_MAX], *pa[FD_PROGS_MAX];
    Nusec__V1__Envelope *r = NULL;
    for (int i = 0; i < d->n; i++) {
        nusec__v1__programmer_allocation__init(&a[i]);
        a[i].programmer_id = d->prog[i].p.id;
        a[i].limit = 1;
        pa[i] = &a[i];
    }
    req.firmware = "bench-1.0.0";
    req.quota = (uint32_t)d->n;
    req.allocations = pa;
    req.n_allocations = (size_t)d->n;
    int rc = cf_call(&d->oem, "job.create", &req.base, NULL, 0, &r, NULL, 0);
    if (!rc && (r->body_case != NUSEC__V1__ENVELOPE__BODY_JOB_CREATE_RESPONSE ||
                r->job_create_response->n_packages != (size_t)d->n))
        rc = NU_ERR_DECODE;
    if (!rc)
        snprintf(d->job, sizeof(d->job), "%s", r->job_create_response->job->job_id);
    for (int i = 0; i < d->n && !rc; i++)
        rc = fd_package(&d->prog[i], &r->job_create_response->packages[i], d->job);
    nu_envelope_free(r);
    return rc;
}

static int fd_setup(struct fd *d, size_t image_len)
{
    uint8_t *payload = malloc(image_len);
    int rc = payload ? nu_random(payload, image_len) : NU_ERR_NOMEM;
    if (!rc && cf_setup(&d->f, "benchfw"))
        rc = NU_ERR_IO;
    if (!rc)
        rc = cf_client_open(&d->f, "oem", NULL, NULL, &d->oem);
    if (!rc)
        rc = cf_client_open(&d->f, "station", NULL, NULL, &d->station);
    for (int i = 0; i < d->n && !rc; i++) {
        char id[16];
        snprintf(id, sizeof(id), "prog-%d", i + 1);
        rc = cf_programmer_make(&d->f, &d->oem, &d->station, id, &d->prog[i].p);
    }
    if (!rc)
        rc = fd_sign(d, payload, image_len);
    if (!rc)
        rc = fd_job(d);
    /* Programmers stay connected for the whole job, as on a station. */
    for (int i = 0; i < d->n && !rc; i++)
        rc = cf_client_open(&d->f, d->prog[i].p.id, d->prog[i].p.cert, d->prog[i].p.key,
                            &d->prog[i].c);
    free(payload);
    return rc;
}

/* ------------------------------------------------------------ download */

static int fd_manifest(struct fd_prog *p, const char *job, Nusec__V1__Envelope **out)
{
    Nusec__V1__FirmwareManifestRequest req = NUSEC__V1__FIRMWARE_MANIFEST_REQUEST__INIT;
    req.job_id = (char *)job;
    req.token = (ProtobufCBinaryData){p->token_len, p->token};
    int rc = cf_call(&p->c, "firmware.manifest", &req.base, NULL, 0, out, NULL, 0);
    if (!rc && (*out)->body_case != NUSEC__V1__ENVELOPE__BODY_FIRMWARE_MANIFEST)
        rc = NU_ERR_DECODE;
    return rc;
}

/* One chunk: fetched, checked and decrypted into img (size bytes in all). */
static int fd_chunk(struct fd_prog *p, const char *job, uint32_t i, uint32_t cs, uint8_t *img,
                    size_t size)
{
    Nusec__V1__FirmwareChunkRequest req = NUSEC__V1__FIRMWARE_CHUNK_REQUEST__INIT;
    Nusec__V1__Envelope *r = NULL;
    uint8_t nonce[NU_GCM_NONCE_LEN], aad[FD_AAD_MAX];
    req.job_id = (char *)job;
    req.token = (ProtobufCBinaryData){p->token_len, p->token};
    req.index = i;
    int rc = cf_call(&p->c, "firmware.chunk", &req.base, NULL, 0, &r, NULL, 0);
    if (!rc && r->body_case != NUSEC__V1__ENVELOPE__BODY_FIRMWARE_CHUNK)
        rc = NU_ERR_DECODE;
    if (!rc) {
        const Nusec__V1__FirmwareChunk *ch = r->firmware_chunk;
        size_t off = (size_t)i * cs, want = size - off < cs ? size - off : cs;
        if (ch->index != i || ch->offset != off || ch->ciphertext.len != want + NU_GCM_TAG_LEN)
            rc = NU_ERR_TAMPERED;
        size_t aad_len = fd_nonce_aad(job, i, nonce, aad);
        if (!rc)
            rc = nu_aes256gcm_decrypt(p->key, nonce, aad, aad_len, ch->ciphertext.data, want,
                                      img + off, ch->ciphertext.data + want);
    }
    nu_envelope_free(r);
    return rc;
}

/* The whole image as programmer p, verified against the manifest and the signed image. */
static int fd_download(struct fd *d, struct fd_prog *p)
{
    Nusec__V1__Envelope *m = NULL;
    uint8_t digest[NU_SHA256_LEN], *img = NULL;
    int rc = fd_manifest(p, d->job, &m);
    const Nusec__V1__FirmwareManifest *man = rc ? NULL : m->firmware_manifest;
    if (!rc && (man->size != d->img_len || man->chunk_size == 0 || man->image_digest.len != 32 ||
                man->chunk_count != (man->size + man->chunk_size - 1) / man->chunk_size))
        rc = NU_ERR_BAD_FIRMWARE;
    if (!rc && !(img = malloc(man->size)))
        rc = NU_ERR_NOMEM;
    for (uint32_t i = 0; !rc && i < man->chunk_count; i++)
        rc = fd_chunk(p, d->job, i, man->chunk_size, img, man->size);
    if (!rc)
        rc = nu_sha256(img, man->size, digest);
    if (!rc &&
        (memcmp(digest, man->image_digest.data, 32) != 0 || memcmp(img, d->img, d->img_len) != 0))
        rc = NU_ERR_BAD_FIRMWARE;
    free(img);
    nu_envelope_free(m);
    return rc;
}

static void *fd_thread(void *arg)
{
    struct fd_run *r = arg;
    pthread_barrier_wait(&r->d->go);
    r->rc = fd_download(r->d, &r->d->prog[r->i]);
    return NULL;
}

/* n programmers at once; aggregate MB/s, or < 0 when one failed. */
static double fd_round(struct fd *d, int n)
{
    pthread_t th[FD_PROGS_MAX];
    struct fd_run runs[FD_PROGS_MAX];
    int failed = 0;
    pthread_barrier_init(&d->go, NULL, (unsigned)n + 1);
    for (int i = 0; i < n; i++) {
        runs[i] = (struct fd_run){.d = d, .i = i};
        pthread_create(&th[i], NULL, fd_thread, &runs[i]);
    }
    pthread_barrier_wait(&d->go);
    double t0 = fd_now();
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        if (runs[i].rc) {
            fprintf(stderr, "bench_fw_delivery: %s: %s\n", d->prog[i].p.id,
                    nu_err_name(runs[i].rc));
            failed = 1;
        }
    }
    double dt = fd_now() - t0;
    pthread_barrier_destroy(&d->go);
    return failed ? -1.0 : (double)d->img_len * n / dt / 1e6;
}

/* ------------------------------------------------------------ crypto */

/* AES-256-GCM over the image in cs-byte chunks (the job's AAD) + SHA-256 of
 * it, one core, for at least 0.5 s: MB of image per second. */
static double fd_crypto(const struct fd *d, uint32_t cs)
{
    uint8_t key[NU_AES256_KEY_LEN], nonce[NU_GCM_NONCE_LEN], aad[FD_AAD_MAX];
    uint8_t tag[NU_GCM_TAG_LEN], digest[NU_SHA256_LEN];
    uint8_t *out = malloc(cs);
    int reps = 0, rc = out ? nu_random(key, sizeof(key)) : NU_ERR_NOMEM;
    double t0 = fd_now(), dt = 0;
    while (!rc && (dt = fd_now() - t0) < 0.5) {
        for (size_t off = 0; !rc && off < d->img_len; off += cs) {
            size_t n = d->img_len - off < cs ? d->img_len - off : cs;
            size_t aad_len = fd_nonce_aad(d->job, (uint32_t)(off / cs), nonce, aad);
            rc = nu_aes256gcm_encrypt(key, nonce, aad, aad_len, d->img + off, n, out, tag);
        }
        if (!rc)
            rc = nu_sha256(d->img, d->img_len, digest);
        reps++;
    }
    free(out);
    return rc ? -1.0 : (double)d->img_len * reps / dt / 1e6;
}

static int fd_cmp(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* ------------------------------------------------------------ main */

static int fd_measure(struct fd *d, int rounds)
{
    double rate[16], one, c_before, c_after;
    Nusec__V1__Envelope *m = NULL;
    uint32_t cs = 0;
    int rc = fd_manifest(&d->prog[0], d->job, &m);
    if (!rc)
        cs = m->firmware_manifest->chunk_size;
    nu_envelope_free(m);
    if (rc || cs == 0)
        return rc ? rc : NU_ERR_BAD_FIRMWARE;
    c_before = fd_crypto(d, cs);
    double cloud0 = cf_cpu_s(d->f.cloud_pid), broker0 = cf_cpu_s(d->f.broker.pid);
    for (int r = 0; r < rounds; r++) {
        rate[r] = fd_round(d, d->n);
        fprintf(stderr, "bench_fw_delivery: round %d (%s): %d programmers, %.1f MB/s\n", r + 1,
                r ? "warm" : "cold", d->n, rate[r]);
        if (rate[r] < 0)
            return NU_ERR_BAD_FIRMWARE;
    }
    double mib = (double)d->img_len * d->n * rounds / (1024.0 * 1024.0);
    double cloud_ms = (cf_cpu_s(d->f.cloud_pid) - cloud0) * 1e3 / mib;
    double broker_ms = (cf_cpu_s(d->f.broker.pid) - broker0) * 1e3 / mib;
    one = fd_round(d, 1);
    c_after = fd_crypto(d, cs);
    if (one < 0 || c_before < 0 || c_after < 0)
        return NU_ERR_CRYPTO;
    double crypto = c_before > c_after ? c_before : c_after;
    qsort(rate, (size_t)rounds, sizeof(rate[0]), fd_cmp);
    double median = rate[rounds / 2];
    printf("fw_delivery_mb_per_s %.1f MB/s\n", median);
    printf("fw_delivery_1prog_mb_per_s %.1f MB/s\n", one);
    printf("fw_crypto_aes_gcm_sha256_mb_per_s %.1f MB/s\n", crypto);
    printf("fw_delivery_over_crypto %.3f ratio\n", median / crypto);
    printf("fw_cloud_cpu_ms_per_mib %.1f ms\n", cloud_ms);
    printf("fw_broker_cpu_ms_per_mib %.1f ms\n", broker_ms);
    printf("fw_programmers %d programmers\n", d->n);
    printf("fw_image_bytes %zu bytes\n", d->img_len);
    printf("fw_chunk_bytes %u bytes\n", cs);
    fprintf(stderr, "bench_fw_delivery: crypto %.1f MB/s before, %.1f MB/s after the rounds\n",
            c_before, c_after);
    return NU_OK;
}

int main(int argc, char **argv)
{
    static struct fd d;
    int n = argc > 1 ? atoi(argv[1]) : 8;
    int rounds = argc > 2 ? atoi(argv[2]) : 3;
    long kib = argc > 3 ? atol(argv[3]) : 1024;
    if (n < 1 || n > FD_PROGS_MAX || rounds < 1 || rounds > 16 || kib < 1 || kib > 3072) {
        fprintf(stderr, "usage: %s [PROGRAMMERS 1..%d] [ROUNDS 1..16] [IMAGE_KIB 1..3072]\n",
                argv[0], FD_PROGS_MAX);
        return 2;
    }
    d.n = n;
    int rc = fd_setup(&d, (size_t)kib * 1024u);
    if (rc)
        fprintf(stderr, "bench_fw_delivery: set-up failed: %s\n", nu_err_name(rc));
    if (!rc)
        rc = fd_measure(&d, rounds);
    if (rc)
        fprintf(stderr, "bench_fw_delivery: failed: %s\n", nu_err_name(rc));
    for (int i = 0; i < n; i++) {
        cf_client_close(&d.prog[i].c);
        cf_programmer_free(&d.prog[i].p);
        nu_zero(d.prog[i].key, sizeof(d.prog[i].key));
    }
    cf_client_close(&d.oem);
    cf_client_close(&d.station);
    if (d.f.cloud_pid && cf_cloud_stop(&d.f) != 0)
        rc = rc ? rc : NU_ERR_INTERNAL;
    cf_teardown(&d.f);
    free(d.img);
    return rc ? 1 : 0;
}
