/*
 * fuzz_pg_package — libFuzzer target for pg_core_package_load, the
 * programmer core's whole acceptance of a sealed package (outer
 * SealedPackage, signature by the pinned package key, summary checks,
 * replay record, KeyStore unsealing, inner PackageSecrets checks), on an
 * enrolled core (fuzz_pg.h).
 *
 * Input: byte 0 (mod 3) picks what the fuzzer controls:
 *   0  the whole package (raw bytes from anywhere);
 *   1  the inner PackageSecrets: the harness seals them to this programmer
 *      under an honest summary and signs with the OEM's package key, so the
 *      inner decoder is reached;
 *   2  the PackageSummary: sealed with honest secrets and signed.
 *
 * Properties:
 *   - 0: never accepted (the fuzzer has no package key): no success on
 *     garbage;
 *   - 1: accepted secrets are what protobuf-c reads too, for this job, with
 *     32-byte key, ROTPK hash and digest, a token and a chain;
 *   - 2: an accepted summary names this programmer, format 1, a limit and a
 *     future expiry;
 *   - every refusal is typed and leaves the current job as it was.
 */
#include "fuzz_pg.h"

#include "nu_crypto.h"
#include "nu_seal.h"
#include "nu_util.h"

#include "nusec/v1/job.pb-c.h"

#include <string.h>

#define LIMIT 0xfffffff0u
#define EXPIRES 4102444800000ull /* 2100-01-01 */
#define CREATED 4000000000000ull /* after the set-up package, before EXPIRES */

static struct fuzz_pg pg;
static const uint8_t PKG_ID[16] = {0xfa, 0xce, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
static uint8_t *honest_sum, *honest_sec;
static size_t honest_sum_len, honest_sec_len;

static uint8_t *fuzz__pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*len + 1);
    if (!b)
        FUZZ_DIE("nomem");
    protobuf_c_message_pack(m, b);
    return b;
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    Nusec__V1__PackageSummary sum = NUSEC__V1__PACKAGE_SUMMARY__INIT;
    Nusec__V1__PackageSecrets sec = NUSEC__V1__PACKAGE_SECRETS__INIT;
    (void)argc, (void)argv;
    fuzz_pg_setup(&pg, 1500, 512, NULL);
    struct fake_cloud *fc = &pg.r.fc;
    ProtobufCBinaryData chain[2] = {{fc->devca_len, fc->devca_der}, {fc->root_len, fc->root_der}};
    sum.job_id = fc->job_id;
    sum.programmer_id = "prog-1";
    sum.limit = LIMIT;
    sum.expires_at_ms = EXPIRES;
    sum.created_at_ms = CREATED;
    sum.firmware = "app-1.2.3";
    sum.format = 1;
    sum.package_id = (ProtobufCBinaryData){16, (uint8_t *)PKG_ID};
    sec.job_id = fc->job_id;
    sec.limit = LIMIT;
    sec.firmware_token = (ProtobufCBinaryData){sizeof(fc->token), fc->token};
    sec.firmware_key = (ProtobufCBinaryData){32, fc->fw_key};
    sec.rotpk_hash = (ProtobufCBinaryData){32, fc->rotpk_hash};
    sec.n_device_chain_der = 2;
    sec.device_chain_der = chain;
    sec.expires_at_ms = EXPIRES;
    sec.firmware_digest = (ProtobufCBinaryData){32, fc->image_digest};
    sec.firmware_size = (uint32_t)fc->image_len;
    honest_sum = fuzz__pack(&sum.base, &honest_sum_len);
    honest_sec = fuzz__pack(&sec.base, &honest_sec_len);
    return 0;
}

/* SealedPackage{summary, seal(secrets, aad = summary), sig(summary || box)}. */
static uint8_t *fuzz__package(const uint8_t *sum, size_t sum_len, const uint8_t *sec,
                              size_t sec_len, size_t *out_len)
{
    struct fake_cloud *fc = &pg.r.fc;
    Nusec__V1__SealedPackage sp = NUSEC__V1__SEALED_PACKAGE__INIT;
    uint8_t *box = NULL, digest[32], sig[NU_P256_SIG_MAX];
    size_t box_len = 0, sig_len = sizeof(sig);
    struct nu_sha256_ctx h;
    int rc = nu_seal(fc->enrolled_pkg_pub, sum, sum_len, sec, sec_len, &box, &box_len);
    if (rc == NU_OK && !(rc = nu_sha256_init(&h)) && !(rc = nu_sha256_update(&h, sum, sum_len)) &&
        !(rc = nu_sha256_update(&h, box, box_len)))
        rc = nu_sha256_final(&h, digest);
    if (rc == NU_OK)
        rc = fc->package_s.sign_digest(fc->package_s.ctx, digest, sig, &sig_len);
    if (rc != NU_OK)
        FUZZ_DIE("package: %s", nu_err_name(rc));
    sp.summary = (ProtobufCBinaryData){sum_len, (uint8_t *)sum};
    sp.sealed = (ProtobufCBinaryData){box_len, box};
    sp.signature = (ProtobufCBinaryData){sig_len, sig};
    uint8_t *out = fuzz__pack(&sp.base, out_len);
    free(box);
    return out;
}

static void fuzz__secrets_ok(const uint8_t *d, size_t n)
{
    Nusec__V1__PackageSecrets *s = nusec__v1__package_secrets__unpack(NULL, n, d);
    if (!s)
        return; /* protobuf-c is stricter on some wire shapes: no verdict */
    if (!s->job_id || strcmp(s->job_id, "job-1") != 0 || s->limit != LIMIT ||
        s->expires_at_ms != EXPIRES || s->firmware_key.len != 32 || s->rotpk_hash.len != 32 ||
        s->firmware_digest.len != 32 || s->firmware_token.len == 0 ||
        s->n_device_chain_der == 0 || s->firmware_size == 0)
        FUZZ_DIE("accepted secrets that protobuf-c reads otherwise");
    nusec__v1__package_secrets__free_unpacked(s, NULL);
}

static void fuzz__summary_ok(const uint8_t *d, size_t n)
{
    Nusec__V1__PackageSummary *s = nusec__v1__package_summary__unpack(NULL, n, d);
    if (!s)
        return;
    if (!s->programmer_id || strcmp(s->programmer_id, "prog-1") != 0 || s->format != 1 ||
        s->limit == 0 || s->expires_at_ms <= nu_time_ms() || s->package_id.len != 16)
        FUZZ_DIE("accepted a summary protobuf-c reads otherwise");
    nusec__v1__package_summary__free_unpacked(s, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pg_core *c = pg.r.core;
    char before[PG_ID_MAX + 1];
    if (size < 1)
        return 0;
    unsigned mode = data[0] % 3;
    const uint8_t *d = data + 1;
    size_t n = size - 1, len = n;
    uint8_t *pkg = NULL;
    snprintf(before, sizeof(before), "%s", pg_core_job_id(c) ? pg_core_job_id(c) : "");
    if (mode == 1)
        pkg = fuzz__package(honest_sum, honest_sum_len, d, n, &len);
    else if (mode == 2)
        pkg = fuzz__package(d, n, honest_sec, honest_sec_len, &len);
    int rc = pg_core_package_load(c, pkg ? pkg : d, len);
    free(pkg);
    if (rc == NU_OK) {
        if (mode == 0)
            FUZZ_DIE("accepted a package the fuzzer made up");
        if (mode == 1)
            fuzz__secrets_ok(d, n);
        else
            fuzz__summary_ok(d, n);
    } else {
        if (rc < 0 || rc > NU_ERR_LIMIT)
            FUZZ_DIE("untyped refusal %d", rc);
        const char *now = pg_core_job_id(c) ? pg_core_job_id(c) : "";
        if (strcmp(now, before) != 0)
            FUZZ_DIE("refusal %s changed the job from '%s' to '%s'", nu_err_name(rc), before, now);
    }
    return 0;
}
