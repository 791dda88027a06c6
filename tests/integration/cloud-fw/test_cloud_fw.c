/*
 * nusec-cloud firmware and jobs on the real stack: `nusec pki init`, the real
 * mosquitto with nusec_auth, the nusec-cloud binary with SoftHSM2 keys,
 * SQLite (tests/integration/cloud/cloud_fixture).
 *
 * What a user or an attacker sees: `nusec firmware sign` of a 1 MiB binary
 * and of an Intel HEX file gives images that an independent verifier
 * (tests/tools/mcuboot_verify.py: the MCUboot layout parsed as MCUboot
 * documents it, the ECDSA signature checked by the openssl command line
 * against rotpk.pem) and nu_mcuboot accept, and refuse with one byte changed
 * (also when the attacker rewrites the SHA256 TLV to match); a signed version cannot be signed
 * again; `nusec job create` writes packages whose signature verifies with DIR/pki/package-key.pem
 * and whose secrets open only with the programmer's package key; the programmer downloads and
 * decrypts exactly the image; wrong tokens, foreign programmers, out-of-range chunks, moved chunks
 * and closed jobs are refused; pause/close are published retained; 8 programmers downloading
 * at once each get exactly the image. (Delivery speed: bench/fw_delivery.c, ./build.sh bench.)
 */
#define _GNU_SOURCE /* memmem */
#include "cloud_fixture.h"

#include "ledger.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_mcuboot.h"
#include "nu_seal.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define N_PROGS 8
#define BIG_LEN (1024u * 1024u)

static struct cf F;
static int F_ok;
static struct cf_client OEM, STATION;
static struct cf_programmer PROGS[N_PROGS];
static struct cf_programmer OUTSIDER; /* enrolled, in no job */
static char BIN[300];                 /* build/bin */

/* Shared between the tests, in order. */
static uint8_t *BIG; /* the 1 MiB payload */
static uint8_t *IMG; /* DIR/firmware/app-1.0.0.img */
static size_t IMG_LEN;
static char JOB[80];       /* the 8-programmer job */
static uint8_t FW_KEY[32]; /* from prog-1's package */
static uint8_t TOKENS[N_PROGS][64];
static size_t TOKEN_LEN[N_PROGS];

static int suite_setup(void)
{
    snprintf(BIN, sizeof(BIN), "%s/bin", NUSEC_BINARY_DIR);
    if (cf_setup(&F, "cloudfw"))
        return -1;
    if (cf_client_open(&F, "oem", NULL, NULL, &OEM) ||
        cf_client_open(&F, "station", NULL, NULL, &STATION))
        return -1;
    for (int i = 0; i < N_PROGS; i++) {
        char id[16];
        snprintf(id, sizeof(id), "prog-%d", i + 1);
        if (cf_programmer_make(&F, &OEM, &STATION, id, &PROGS[i]))
            return -1;
    }
    if (cf_programmer_make(&F, &OEM, &STATION, "outsider", &OUTSIDER))
        return -1;
    BIG = malloc(BIG_LEN);
    if (!BIG || nu_random(BIG, BIG_LEN))
        return -1;
    F_ok = 1;
    return 0;
}

static int suite_teardown(void)
{
    for (int i = 0; i < N_PROGS; i++)
        cf_programmer_free(&PROGS[i]);
    cf_programmer_free(&OUTSIDER);
    cf_client_close(&OEM);
    cf_client_close(&STATION);
    cf_teardown(&F);
    free(BIG);
    free(IMG);
    return 0;
}

/* ------------------------------------------------------------ helpers */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int write_file(const char *path, const void *b, size_t n)
{
    return nu_file_write_atomic(path, b, n, 0644);
}

static int rotpk(uint8_t pub[NU_P256_PUB_LEN], uint8_t hash[NU_SHA256_LEN])
{
    char path[512];
    uint8_t *pem = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/firmware/rotpk.pem", F.dir);
    int rc = nu_file_read(path, 4096, &pem, &len);
    if (!rc)
        rc = nu_p256_pub_from_pem((char *)pem, len, pub);
    if (!rc)
        rc = nu_mcuboot_rotpk_hash(pub, hash);
    free(pem);
    return rc;
}

static int img_read(const char *name, uint8_t **out, size_t *len)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/firmware/%s.img", F.dir, name);
    return nu_file_read(path, 8u * 1024u * 1024u, out, len);
}

/* A signed image as the ledger holds it (the cloud keeps no file of it). */
static int ledger_img(const char *name, uint8_t **out, size_t *len)
{
    struct cloud_ledger *l = NULL;
    int rc = cloud_ledger_open(F.ledger, &l);
    if (!rc)
        rc = cloud_ledger_firmware_image(l, name, out, len);
    cloud_ledger_close(l);
    return rc;
}

static int py_verify(const char *image_path)
{
    return nu_test_sh("python3 %s/tests/tools/mcuboot_verify.py --key %s/firmware/rotpk.pem %s "
                      ">/dev/null 2>&1",
                      NUSEC_SOURCE_DIR, F.dir, image_path);
}

/* firmware.sign straight on the bus (key NULL = fresh). */
static int sign_raw(const char *name, const char *version, const uint8_t *p, size_t n,
                    const uint8_t *key, Nusec__V1__Envelope **out)
{
    Nusec__V1__FirmwareSignRequest req = NUSEC__V1__FIRMWARE_SIGN_REQUEST__INIT;
    req.name = (char *)name;
    req.version = (char *)version;
    req.payload = (ProtobufCBinaryData){n, (uint8_t *)p};
    *out = NULL;
    return cf_call(&OEM, "firmware.sign", &req.base, key, key ? 16 : 0, out, NULL, 0);
}

/* ------------------------------------------------------------ signing */

/* An attacker who changes the payload and writes the matching SHA256 TLV:
 * only the ECDSA signature can catch that, so this is the case that proves
 * the openssl command line (in the verifier) checks it. Returns 0 when both
 * verifiers refuse. Header layout from MCUboot's bootutil/image.h:
 * ih_hdr_size u16 @8, ih_protect_tlv_size u16 @10, ih_img_size u32 @12. */
static int resealed_hash_refused(const uint8_t pub[NU_P256_PUB_LEN], const uint8_t hash[32])
{
    char bad[512];
    uint8_t digest[32], resealed[32];
    size_t hdr = (size_t)IMG[8] | (size_t)IMG[9] << 8;
    size_t prot = (size_t)IMG[10] | (size_t)IMG[11] << 8;
    size_t body =
        (size_t)IMG[12] | (size_t)IMG[13] << 8 | (size_t)IMG[14] << 16 | (size_t)IMG[15] << 24;
    size_t hashed = hdr + body + prot;
    uint8_t *copy = malloc(IMG_LEN);
    int rc = -1;
    if (!copy || hashed >= IMG_LEN || nu_sha256(IMG, hashed, digest) != NU_OK)
        goto out;
    memcpy(copy, IMG, IMG_LEN);
    uint8_t *tlv = memmem(copy + hashed, IMG_LEN - hashed, digest, 32);
    if (!tlv)
        goto out;
    copy[hdr + 77] ^= 0x80;
    if (nu_sha256(copy, hashed, resealed) != NU_OK)
        goto out;
    memcpy(tlv, resealed, 32);
    snprintf(bad, sizeof(bad), "%s/resealed.img", F.tmp);
    if (write_file(bad, copy, IMG_LEN) != NU_OK)
        goto out;
    int ours = nu_mcuboot_verify(copy, IMG_LEN, pub, hash, NULL);
    int theirs = nu_test_sh("python3 %s/tests/tools/mcuboot_verify.py --key %s/firmware/rotpk.pem "
                            "%s | grep -q 'signature does not verify'",
                            NUSEC_SOURCE_DIR, F.dir, bad);
    rc = ours == NU_ERR_BAD_SIGNATURE && theirs == 0 ? 0 : -1;
out:
    free(copy);
    return rc;
}

static void test_sign_1mib_bin(void)
{
    char in[512], path[512];
    uint8_t pub[NU_P256_PUB_LEN], hash[32], digest[32];
    struct nu_mcuboot_info info;
    struct stat st;
    CU_ASSERT_FATAL(F_ok);
    snprintf(in, sizeof(in), "%s/app.bin", F.tmp);
    CU_ASSERT_EQUAL_FATAL(write_file(in, BIG, BIG_LEN), NU_OK);
    double t0 = now_s();
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("%s/nusec firmware sign --dir %s --in %s --name app "
                                     "--version 1.0.0 --security-counter 3 >/dev/null",
                                     BIN, F.dir, in),
                          0);
    printf("\n    nusec firmware sign, 1 MiB: %.0f ms", (now_s() - t0) * 1e3);
    snprintf(path, sizeof(path), "%s/firmware/app-1.0.0.img", F.dir);
    CU_ASSERT_EQUAL_FATAL(img_read("app-1.0.0", &IMG, &IMG_LEN), NU_OK);
    CU_ASSERT_EQUAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0644);
    /* Independent verifier, and ours. */
    CU_ASSERT_EQUAL(py_verify(path), 0);
    CU_ASSERT_EQUAL_FATAL(rotpk(pub, hash), NU_OK);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(IMG, IMG_LEN, pub, hash, &info), NU_OK);
    CU_ASSERT_EQUAL(info.payload_len, BIG_LEN);
    CU_ASSERT_EQUAL(info.security_counter, 3);
    CU_ASSERT_EQUAL(info.version.major, 1);
    CU_ASSERT_EQUAL(memcmp(IMG + info.payload_off, BIG, BIG_LEN), 0);
    /* One changed byte: refused by both, wherever it is. */
    size_t spots[] = {5, info.payload_off + 1000, IMG_LEN - 3};
    for (size_t i = 0; i < sizeof(spots) / sizeof(spots[0]); i++) {
        char bad[512];
        uint8_t *copy = malloc(IMG_LEN);
        CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
        memcpy(copy, IMG, IMG_LEN);
        copy[spots[i]] ^= 0x01;
        CU_ASSERT_NOT_EQUAL(nu_mcuboot_verify(copy, IMG_LEN, pub, hash, NULL), NU_OK);
        snprintf(bad, sizeof(bad), "%s/bad-%zu.img", F.tmp, i);
        CU_ASSERT_EQUAL(write_file(bad, copy, IMG_LEN), NU_OK);
        CU_ASSERT_NOT_EQUAL(py_verify(bad), 0);
        free(copy);
    }
    CU_ASSERT_EQUAL(resealed_hash_refused(pub, hash), 0);
    /* The ledger recorded it (event firmware.signed, digest of the file). */
    struct cloud_ledger *l = NULL;
    struct cloud_ledger_firmware rec;
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(F.ledger, &l), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_get(l, "app-1.0.0", &rec), NU_OK);
    CU_ASSERT_EQUAL(nu_sha256(IMG, IMG_LEN, digest), NU_OK);
    CU_ASSERT_EQUAL(memcmp(rec.image_digest, digest, 32), 0);
    CU_ASSERT_EQUAL(rec.image_size, IMG_LEN);
    CU_ASSERT_STRING_EQUAL(rec.signed_by, "oem");
    cloud_ledger_close(l);
}

static void test_sign_intel_hex(void)
{
    char bin[512], hex[512];
    uint8_t small[3000], *img = NULL, pub[65], hash[32];
    size_t len = 0;
    struct nu_mcuboot_info info;
    CU_ASSERT_FATAL(F_ok);
    for (size_t i = 0; i < sizeof(small); i++)
        small[i] = (uint8_t)(i * 13 + 1);
    snprintf(bin, sizeof(bin), "%s/small.bin", F.tmp);
    snprintf(hex, sizeof(hex), "%s/small.hex", F.tmp);
    CU_ASSERT_EQUAL_FATAL(write_file(bin, small, sizeof(small)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("objcopy -I binary -O ihex --change-addresses 0x08000000 "
                                     "%s %s",
                                     bin, hex),
                          0);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("%s/nusec firmware sign --dir %s --in %s --name boot "
                                     "--version 2.1.7 2>/dev/null >/dev/null",
                                     BIN, F.dir, hex),
                          0);
    CU_ASSERT_EQUAL_FATAL(img_read("boot-2.1.7", &img, &len), NU_OK);
    CU_ASSERT_EQUAL(rotpk(pub, hash), NU_OK);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, pub, hash, &info), NU_OK);
    CU_ASSERT_EQUAL(info.payload_len, sizeof(small));
    CU_ASSERT_EQUAL(memcmp(img + info.payload_off, small, sizeof(small)), 0);
    CU_ASSERT_EQUAL(info.version.revision, 7);
    char path[512];
    snprintf(path, sizeof(path), "%s/firmware/boot-2.1.7.img", F.dir);
    CU_ASSERT_EQUAL(py_verify(path), 0);
    free(img);
    /* A broken HEX file is refused before anything is sent. */
    CU_ASSERT_EQUAL(nu_test_sh("printf ':0400000001020304F0\\n' > %s/broken.hex && "
                               "%s/nusec firmware sign --dir %s --in %s/broken.hex --name broken "
                               "--version 1.0.0 2>/dev/null",
                               F.tmp, BIN, F.dir, F.tmp),
                    1);
}

static void test_sign_version_immutable(void)
{
    char other[512];
    uint8_t *img = NULL, *img2 = NULL;
    size_t len = 0, len2 = 0;
    Nusec__V1__Envelope *r1 = NULL, *r2 = NULL;
    uint8_t key[16];
    CU_ASSERT_FATAL(F_ok);
    snprintf(other, sizeof(other), "%s/other.bin", F.tmp);
    CU_ASSERT_EQUAL_FATAL(write_file(other, "something else", 14), NU_OK);
    /* The CLI refuses (exit 3) and the image stays as it was. */
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec firmware sign --dir %s --in %s --name app --version "
                               "1.0.0 2>/dev/null",
                               BIN, F.dir, other),
                    3);
    CU_ASSERT_EQUAL(img_read("app-1.0.0", &img, &len), NU_OK);
    CU_ASSERT(len == IMG_LEN && memcmp(img, IMG, len) == 0);
    free(img);
    img = NULL;
    /* The cloud itself refuses too (a client without the local check). */
    CU_ASSERT_EQUAL(sign_raw("app", "1.0.0", (const uint8_t *)"x", 1, NULL, &r1), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(sign_raw("app", "1.0.0", BIG, BIG_LEN, NULL, &r1), NU_ERR_EXISTS);
    /* Bad versions and names. */
    CU_ASSERT_EQUAL(sign_raw("app", "1.0", BIG, 10, NULL, &r1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(sign_raw("app", "1.0.0+5", BIG, 10, NULL, &r1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(sign_raw("app", "256.0.0", BIG, 10, NULL, &r1), NU_ERR_INVALID_ARG);
    /* A redelivered request (same key, same content) gets the same image back,
     * not a refusal; the same key with other content is EXISTS. */
    CU_ASSERT_EQUAL_FATAL(nu_random(key, sizeof(key)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(sign_raw("redo", "1.0.0", BIG, 4096, key, &r1), NU_OK);
    CU_ASSERT_EQUAL_FATAL(sign_raw("redo", "1.0.0", BIG, 4096, key, &r2), NU_OK);
    const Nusec__V1__FirmwareSignResponse *a = r1->firmware_sign_response;
    const Nusec__V1__FirmwareSignResponse *b = r2->firmware_sign_response;
    CU_ASSERT(a->image.len == b->image.len &&
              memcmp(a->image.data, b->image.data, a->image.len) == 0);
    CU_ASSERT_EQUAL(ledger_img("redo-1.0.0", &img2, &len2), NU_OK);
    CU_ASSERT(len2 == a->image.len && memcmp(img2, a->image.data, len2) == 0);
    nu_envelope_free(r2);
    r2 = NULL;
    CU_ASSERT_EQUAL(sign_raw("redo", "1.0.0", BIG, 4097, key, &r2), NU_ERR_EXISTS);
    nu_envelope_free(r1);
    nu_envelope_free(r2);
    free(img2);
}

static void test_firmware_list(void)
{
    char out[512], *text = NULL, hex[65], want[200];
    uint8_t digest[32];
    size_t len = 0;
    CU_ASSERT_FATAL(F_ok);
    snprintf(out, sizeof(out), "%s/list.json", F.tmp);
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("%s/nusec firmware list --dir %s --json > %s", BIN, F.dir, out), 0);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(out, 1 << 20, (uint8_t **)&text, &len), NU_OK);
    nu_sha256(IMG, IMG_LEN, digest);
    nu_hex_encode(digest, 32, hex, sizeof(hex));
    snprintf(want, sizeof(want), "\"image\":\"app-1.0.0\",\"size\":%zu,", IMG_LEN);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, want));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, hex));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\"image\":\"boot-2.1.7\""));
    free(text);
    /* A file that is not one of our images is left out of the list. */
    CU_ASSERT_EQUAL(nu_test_sh("printf garbage > %s/firmware/junk-1.0.0.img", F.dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec firmware list --dir %s | grep -q junk", BIN, F.dir), 1);
}

static void test_cli_help_and_usage(void)
{
    static const char *const cmds[] = {"firmware sign", "firmware list", "job create", "job list",
                                       "job show",      "job pause",     "job resume", "job close"};
    CU_ASSERT_FATAL(F_ok);
    for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
        CU_ASSERT_EQUAL(
            nu_test_sh("%s/nusec %s --help | grep -q '^usage: nusec %.3s'", BIN, cmds[i], cmds[i]),
            0);
        CU_ASSERT_EQUAL(
            nu_test_sh("%s/nusec %s --dir %s --bogus 2>/dev/null >/dev/null", BIN, cmds[i], F.dir),
            2);
    }
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec firmware sign --dir %s --in x --name a --version 1.2 "
                               "2>/dev/null",
                               BIN, F.dir),
                    2);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job create --dir %s --firmware app-1.0.0 --quota 0 "
                               "--programmer p --out x 2>/dev/null",
                               BIN, F.dir),
                    2);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job show 'bad id' --dir %s 2>/dev/null", BIN, F.dir), 2);
    /* Without a state directory: a usage error, not a crash. */
    CU_ASSERT_EQUAL(nu_test_sh("env -u NUSEC_HOME %s/nusec job list 2>/dev/null", BIN), 2);
}

/* ------------------------------------------------------------ jobs */

static int read_pkg_file(const char *dir, const char *job, const char *prog, uint8_t **out,
                         size_t *len)
{
    char path[1024];
    nu_path_fmt(path, sizeof(path), "%s/%s-%s.nspkg", dir, job, prog);
    return nu_file_read(path, 1 << 20, out, len);
}

/* Check a package as the programmer would, and take its secrets. */
static void check_package(const uint8_t *pkg, size_t len, const struct cf_programmer *p,
                          uint32_t limit, uint8_t out_key[32], uint8_t *out_token,
                          size_t *out_token_len)
{
    char path[512];
    uint8_t *pem = NULL, pkgpub[65], digest[32], rot[65], rothash[32], imgdigest[32];
    uint8_t *root_pem = NULL, *root_der = NULL, *plain = NULL;
    size_t pem_len = 0, root_pem_len = 0, root_der_len = 0, plain_len = 0;
    struct nu_sha256_ctx h;
    Nusec__V1__SealedPackage *sp = nusec__v1__sealed_package__unpack(NULL, len, pkg);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sp);
    /* Signature: the package key of DIR/pki/package-key.pem over summary || sealed. */
    snprintf(path, sizeof(path), "%s/pki/package-key.pem", F.dir);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 4096, &pem, &pem_len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_pub_from_pem((char *)pem, pem_len, pkgpub), NU_OK);
    nu_sha256_init(&h);
    nu_sha256_update(&h, sp->summary.data, sp->summary.len);
    nu_sha256_update(&h, sp->sealed.data, sp->sealed.len);
    nu_sha256_final(&h, digest);
    CU_ASSERT_EQUAL(nu_p256_verify(pkgpub, digest, sp->signature.data, sp->signature.len), NU_OK);
    digest[0] ^= 1;
    CU_ASSERT_NOT_EQUAL(nu_p256_verify(pkgpub, digest, sp->signature.data, sp->signature.len),
                        NU_OK);
    /* Summary (clear). */
    Nusec__V1__PackageSummary *sum =
        nusec__v1__package_summary__unpack(NULL, sp->summary.len, sp->summary.data);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sum);
    CU_ASSERT_EQUAL(sum->format, 1);
    CU_ASSERT_EQUAL(sum->package_id.len, 16);
    CU_ASSERT_STRING_EQUAL(sum->job_id, JOB);
    CU_ASSERT_STRING_EQUAL(sum->programmer_id, p->id);
    CU_ASSERT_STRING_EQUAL(sum->firmware, "app-1.0.0");
    CU_ASSERT_EQUAL(sum->limit, limit);
    CU_ASSERT(sum->expires_at_ms > nu_time_ms() + 29ull * 24 * 3600 * 1000);
    CU_ASSERT(sum->created_at_ms <= nu_time_ms());
    /* Secrets: only this programmer's package key opens them, with this summary. */
    struct nu_seal_recipient rcp, wrong;
    CU_ASSERT_EQUAL_FATAL(nu_seal_recipient_from_key(p->package, &rcp), NU_OK);
    CU_ASSERT_EQUAL(nu_seal_recipient_from_key(OUTSIDER.package, &wrong), NU_OK);
    CU_ASSERT_EQUAL(nu_seal_open(&wrong, sp->summary.data, sp->summary.len, sp->sealed.data,
                                 sp->sealed.len, &plain, &plain_len),
                    NU_ERR_TAMPERED);
    sp->summary.data[sp->summary.len - 1] ^= 1;
    CU_ASSERT_EQUAL(nu_seal_open(&rcp, sp->summary.data, sp->summary.len, sp->sealed.data,
                                 sp->sealed.len, &plain, &plain_len),
                    NU_ERR_TAMPERED);
    sp->summary.data[sp->summary.len - 1] ^= 1;
    CU_ASSERT_EQUAL_FATAL(nu_seal_open(&rcp, sp->summary.data, sp->summary.len, sp->sealed.data,
                                       sp->sealed.len, &plain, &plain_len),
                          NU_OK);
    Nusec__V1__PackageSecrets *sec = nusec__v1__package_secrets__unpack(NULL, plain_len, plain);
    CU_ASSERT_PTR_NOT_NULL_FATAL(sec);
    CU_ASSERT_STRING_EQUAL(sec->job_id, JOB);
    CU_ASSERT_EQUAL(sec->limit, limit);
    CU_ASSERT_EQUAL(sec->expires_at_ms, sum->expires_at_ms);
    CU_ASSERT_EQUAL(sec->firmware_key.len, 32);
    CU_ASSERT(sec->firmware_token.len >= 16 && sec->firmware_token.len <= 64);
    CU_ASSERT_EQUAL(rotpk(rot, rothash), NU_OK);
    CU_ASSERT(sec->rotpk_hash.len == 32 && memcmp(sec->rotpk_hash.data, rothash, 32) == 0);
    nu_sha256(IMG, IMG_LEN, imgdigest);
    CU_ASSERT(sec->firmware_digest.len == 32 &&
              memcmp(sec->firmware_digest.data, imgdigest, 32) == 0);
    CU_ASSERT_EQUAL(sec->firmware_size, IMG_LEN);
    CU_ASSERT_STRING_EQUAL(sec->subject_template, "CN=dev-{uid}");
    /* Chain [device CA, root]: the last one is our root, the device CA chains to it. */
    snprintf(path, sizeof(path), "%s/pki/root-ca.pem", F.dir);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 65536, &root_pem, &root_pem_len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_x509_pem_to_der((char *)root_pem, root_pem_len, NU_X509_PEM_CERT,
                                             &root_der, &root_der_len, NULL),
                          NU_OK);
    CU_ASSERT_EQUAL_FATAL(sec->n_device_chain_der, 2);
    CU_ASSERT(sec->device_chain_der[1].len == root_der_len &&
              memcmp(sec->device_chain_der[1].data, root_der, root_der_len) == 0);
    CU_ASSERT_EQUAL(nu_x509_verify_chain(sec->device_chain_der[0].data,
                                         sec->device_chain_der[0].len, NULL, 0, root_der,
                                         root_der_len),
                    NU_OK);
    struct nu_x509_cert_info ci;
    CU_ASSERT_EQUAL(
        nu_x509_cert_info(sec->device_chain_der[0].data, sec->device_chain_der[0].len, &ci), NU_OK);
    if (out_key)
        memcpy(out_key, sec->firmware_key.data, 32);
    if (out_token) {
        memcpy(out_token, sec->firmware_token.data, sec->firmware_token.len);
        *out_token_len = sec->firmware_token.len;
    }
    nusec__v1__package_secrets__free_unpacked(sec, NULL);
    nu_seal_free(plain, plain_len);
    nusec__v1__package_summary__free_unpacked(sum, NULL);
    nusec__v1__sealed_package__free_unpacked(sp, NULL);
    free(pem);
    free(root_pem);
    free(root_der);
}

static void test_job_create_packages(void)
{
    char out[1024], cmd[4096], jobfile[512], pkgdir[512], *text = NULL;
    size_t len = 0, n = 0;
    CU_ASSERT_FATAL(F_ok);
    snprintf(pkgdir, sizeof(pkgdir), "%s/packages", F.tmp);
    snprintf(jobfile, sizeof(jobfile), "%s/job.txt", F.tmp);
    /* prog-1 has 10; the 7 others share the 90 left: 12 each, the 6 over to prog-2. */
    n = (size_t)snprintf(cmd, sizeof(cmd),
                         "%s/nusec job create --dir %s --firmware app-1.0.0 --quota 100 "
                         "--subject 'CN=dev-{uid}' --out %s --programmer prog-1:10",
                         BIN, F.dir, pkgdir);
    for (int i = 1; i < N_PROGS; i++)
        n += (size_t)snprintf(cmd + n, sizeof(cmd) - n, " --programmer prog-%d", i + 1);
    snprintf(cmd + n, sizeof(cmd) - n, " > %s 2>/dev/null", jobfile);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("%s", cmd), 0);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(jobfile, 4096, (uint8_t **)&text, &len), NU_OK);
    CU_ASSERT_EQUAL(sscanf(text, "%79s", JOB), 1);
    free(text);
    CU_ASSERT_EQUAL(strncmp(JOB, "job-", 4), 0);

    for (int i = 0; i < N_PROGS; i++) {
        uint8_t *pkg = NULL;
        size_t pkg_len = 0;
        struct stat st;
        nu_path_fmt(out, sizeof(out), "%s/%s-%s.nspkg", pkgdir, JOB, PROGS[i].id);
        CU_ASSERT_EQUAL(stat(out, &st), 0);
        CU_ASSERT_EQUAL(st.st_mode & 0777, 0644);
        CU_ASSERT_EQUAL_FATAL(read_pkg_file(pkgdir, JOB, PROGS[i].id, &pkg, &pkg_len), NU_OK);
        CU_ASSERT(pkg_len < 8192); /* the programmer's package buffer */
        uint32_t limit = i == 0 ? 10 : i == 1 ? 18 : 12;
        check_package(pkg, pkg_len, &PROGS[i], limit, i == 0 ? FW_KEY : NULL, TOKENS[i],
                      &TOKEN_LEN[i]);
        free(pkg);
    }
    /* The tokens differ per programmer; the firmware key is the job's. */
    CU_ASSERT(TOKEN_LEN[0] != TOKEN_LEN[1] || memcmp(TOKENS[0], TOKENS[1], TOKEN_LEN[0]) != 0);

    /* job show: the split as the ledger holds it. */
    snprintf(out, sizeof(out), "%s/show.json", F.tmp);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job show %s --dir %s --json > %s", BIN, JOB, F.dir, out),
                    0);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(out, 1 << 20, (uint8_t **)&text, &len), NU_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "\"status\":\"active\",\"quota\":100,\"issued\":0"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "{\"id\":\"prog-1\",\"limit\":10,\"issued\":0}"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "{\"id\":\"prog-2\",\"limit\":18,\"issued\":0}"));
    CU_ASSERT_PTR_NOT_NULL(strstr(text, "{\"id\":\"prog-8\",\"limit\":12,\"issued\":0}"));
    free(text);
    CU_ASSERT_EQUAL(
        nu_test_sh("%s/nusec job list --dir %s | grep -q '%s .*active'", BIN, F.dir, JOB), 0);
    /* Files are never overwritten: the same output folder again for a new job
     * is fine (other names); nothing here exists twice. */
    CU_ASSERT_EQUAL(nu_test_sh("ls %s | wc -l | grep -qx 8", pkgdir), 0);
}

static int create_raw(const char *fw, uint32_t quota, const char *const *progs,
                      const uint32_t *limits, size_t n, const uint8_t *key,
                      Nusec__V1__Envelope **out)
{
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    Nusec__V1__ProgrammerAllocation a[8], *pa[8];
    for (size_t i = 0; i < n; i++) {
        nusec__v1__programmer_allocation__init(&a[i]);
        a[i].programmer_id = (char *)progs[i];
        a[i].limit = limits[i];
        pa[i] = &a[i];
    }
    req.firmware = (char *)fw;
    req.quota = quota;
    req.allocations = pa;
    req.n_allocations = n;
    *out = NULL;
    return cf_call(&OEM, "job.create", &req.base, key, key ? 16 : 0, out, NULL, 0);
}

/* job.create with n allocations in caller storage (for large n). */
static int create_raw_n(const char *fw, uint32_t quota, const char *const *progs,
                        const uint32_t *limits, size_t n, const uint8_t *key,
                        Nusec__V1__ProgrammerAllocation *a, Nusec__V1__ProgrammerAllocation **pa,
                        Nusec__V1__Envelope **out)
{
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    for (size_t i = 0; i < n; i++) {
        nusec__v1__programmer_allocation__init(&a[i]);
        a[i].programmer_id = (char *)progs[i];
        a[i].limit = limits[i];
        pa[i] = &a[i];
    }
    req.firmware = (char *)fw;
    req.quota = quota;
    req.allocations = pa;
    req.n_allocations = n;
    *out = NULL;
    return cf_call(&OEM, "job.create", &req.base, key, key ? 16 : 0, out, NULL, 0);
}

/* The firmware token of a package, opened with p's package key. */
static int package_token(const ProtobufCBinaryData *pkg, const struct cf_programmer *p,
                         uint8_t *out, size_t *out_len)
{
    struct nu_seal_recipient rcp;
    uint8_t *plain = NULL;
    size_t plain_len = 0;
    Nusec__V1__SealedPackage *sp = nusec__v1__sealed_package__unpack(NULL, pkg->len, pkg->data);
    int rc = sp ? nu_seal_recipient_from_key(p->package, &rcp) : NU_ERR_DECODE;
    if (!rc)
        rc = nu_seal_open(&rcp, sp->summary.data, sp->summary.len, sp->sealed.data, sp->sealed.len,
                          &plain, &plain_len);
    Nusec__V1__PackageSecrets *sec =
        rc ? NULL : nusec__v1__package_secrets__unpack(NULL, plain_len, plain);
    if (!rc && (!sec || sec->firmware_token.len > 64))
        rc = NU_ERR_DECODE;
    if (!rc) {
        memcpy(out, sec->firmware_token.data, sec->firmware_token.len);
        *out_len = sec->firmware_token.len;
    }
    nusec__v1__package_secrets__free_unpacked(sec, NULL);
    nu_seal_free(plain, plain_len);
    nusec__v1__sealed_package__free_unpacked(sp, NULL);
    return rc;
}

static void test_job_create_idempotent_and_refusals(void)
{
    static const char *const p1[] = {"prog-1"}, *const p12[] = {"prog-1", "prog-2"};
    static const uint32_t l0[] = {0, 0}, l5[] = {5}, l9[] = {9, 9};
    Nusec__V1__Envelope *a = NULL, *b = NULL;
    uint8_t key[16];
    CU_ASSERT_FATAL(F_ok);
    CU_ASSERT_EQUAL_FATAL(nu_random(key, sizeof(key)), NU_OK);
    /* Same key, same request: the same job and byte-identical packages. */
    CU_ASSERT_EQUAL_FATAL(create_raw("boot-2.1.7", 7, p12, l0, 2, key, &a), NU_OK);
    CU_ASSERT_EQUAL_FATAL(create_raw("boot-2.1.7", 7, p12, l0, 2, key, &b), NU_OK);
    const Nusec__V1__JobCreateResponse *ra = a->job_create_response, *rb = b->job_create_response;
    CU_ASSERT_STRING_EQUAL(ra->job->job_id, rb->job->job_id);
    CU_ASSERT_EQUAL_FATAL(ra->n_packages, 2);
    CU_ASSERT_EQUAL_FATAL(rb->n_packages, 2);
    for (size_t i = 0; i < 2; i++)
        CU_ASSERT(ra->packages[i].len == rb->packages[i].len &&
                  !memcmp(ra->packages[i].data, rb->packages[i].data, ra->packages[i].len));
    /* 7 split over two: 4 + 3. */
    CU_ASSERT_EQUAL(ra->job->allocations[0]->limit + ra->job->allocations[1]->limit, 7);
    nu_envelope_free(b);
    b = NULL;
    /* Same key, other content: conflict, nothing new. */
    CU_ASSERT_EQUAL(create_raw("boot-2.1.7", 8, p12, l0, 2, key, &b), NU_ERR_IDEMPOTENCY_CONFLICT);
    nu_envelope_free(a);
    /* Refusals. */
    CU_ASSERT_EQUAL(create_raw("nope-1.0.0", 5, p1, l5, 1, NULL, &a), NU_ERR_NOT_FOUND);
    static const char *const ghost[] = {"ghost"};
    CU_ASSERT_EQUAL(create_raw("app-1.0.0", 5, ghost, l5, 1, NULL, &a), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(create_raw("app-1.0.0", 10, p12, l9, 2, NULL, &a), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(create_raw("app-1.0.0", 1, p12, l0, 2, NULL, &a), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(create_raw("app-1.0.0", 0, p1, l5, 1, NULL, &a), NU_ERR_INVALID_ARG);
    /* junk-1.0.0.img exists but was never signed by the cloud. */
    CU_ASSERT_EQUAL(create_raw("junk-1.0.0", 5, p1, l5, 1, NULL, &a), NU_ERR_NOT_FOUND);
    /* Only the OEM creates jobs. */
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    req.firmware = "app-1.0.0";
    req.quota = 1;
    CU_ASSERT_EQUAL(cf_call(&STATION, "job.create", &req.base, NULL, 0, &a, NULL, 0),
                    NU_ERR_NOT_AUTHORIZED);
    /* The CLI: over-quota limits are a refusal (1), a bad option a usage error (2). */
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job create --dir %s --firmware app-1.0.0 --quota 5 "
                               "--programmer prog-1:9 --out %s/p2 2>/dev/null",
                               BIN, F.dir, F.tmp),
                    1);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job create --dir %s --firmware app-1.0.0 --quota 5 "
                               "--programmer prog-1:x --out %s/p2 2>/dev/null",
                               BIN, F.dir, F.tmp),
                    2);
}

/* ------------------------------------------------------------ delivery */

static int manifest(struct cf_client *c, const char *job, const uint8_t *token, size_t tlen,
                    Nusec__V1__Envelope **out)
{
    Nusec__V1__FirmwareManifestRequest req = NUSEC__V1__FIRMWARE_MANIFEST_REQUEST__INIT;
    req.job_id = (char *)job;
    req.token = (ProtobufCBinaryData){tlen, (uint8_t *)token};
    *out = NULL;
    return cf_call(c, "firmware.manifest", &req.base, NULL, 0, out, NULL, 0);
}

static int chunk(struct cf_client *c, const char *job, const uint8_t *token, size_t tlen,
                 uint32_t index, Nusec__V1__Envelope **out)
{
    Nusec__V1__FirmwareChunkRequest req = NUSEC__V1__FIRMWARE_CHUNK_REQUEST__INIT;
    req.job_id = (char *)job;
    req.token = (ProtobufCBinaryData){tlen, (uint8_t *)token};
    req.index = index;
    *out = NULL;
    return cf_call(c, "firmware.chunk", &req.base, NULL, 0, out, NULL, 0);
}

/* Decrypt a chunk with the nonce of chunk nonce_index and the AAD of
 * chunk aad_index of aad_job (the right values are the chunk's own). */
static int chunk_open_ex(const Nusec__V1__FirmwareChunk *ch, const uint8_t key[32],
                         const char *aad_job, uint32_t nonce_index, uint32_t aad_index,
                         uint8_t *out)
{
    uint8_t nonce[12] = {0}, aad[80];
    size_t jl = strlen(aad_job);
    memcpy(aad, aad_job, jl);
    for (int i = 0; i < 4; i++) {
        nonce[8 + i] = (uint8_t)(nonce_index >> (24 - 8 * i));
        aad[jl + (size_t)i] = (uint8_t)(aad_index >> (24 - 8 * i));
    }
    if (ch->ciphertext.len < 16)
        return NU_ERR_DECODE;
    size_t n = ch->ciphertext.len - 16;
    return nu_aes256gcm_decrypt(key, nonce, aad, jl + 4, ch->ciphertext.data, n, out,
                                ch->ciphertext.data + n);
}

static int chunk_open(const Nusec__V1__FirmwareChunk *ch, const uint8_t key[32], const char *as_job,
                      uint32_t as_index, uint8_t *out)
{
    return chunk_open_ex(ch, key, as_job, as_index, as_index, out);
}

/* Fetch the whole image as programmer c with token; 0 when it decrypts to IMG. */
static int fetch_all(struct cf_client *c, const uint8_t *token, size_t tlen, size_t *out_bytes)
{
    Nusec__V1__Envelope *m = NULL, *r = NULL;
    int rc = manifest(c, JOB, token, tlen, &m);
    if (rc)
        return rc;
    const Nusec__V1__FirmwareManifest *man = m->firmware_manifest;
    uint8_t *got = malloc(man->size ? man->size : 1);
    uint32_t cs = man->chunk_size, count = man->chunk_count;
    if (!got || man->size != IMG_LEN) {
        rc = NU_ERR_BAD_FIRMWARE;
        goto out;
    }
    for (uint32_t i = 0; !rc && i < count; i++) {
        rc = chunk(c, JOB, token, tlen, i, &r);
        if (!rc) {
            const Nusec__V1__FirmwareChunk *ch = r->firmware_chunk;
            size_t n = ch->ciphertext.len - 16;
            if (ch->index != i || ch->offset != i * cs || ch->offset + n > IMG_LEN)
                rc = NU_ERR_TAMPERED;
            if (!rc)
                rc = chunk_open(ch, FW_KEY, JOB, i, got + ch->offset);
        }
        nu_envelope_free(r);
        r = NULL;
    }
    if (!rc && memcmp(got, IMG, IMG_LEN) != 0)
        rc = NU_ERR_BAD_FIRMWARE;
    if (out_bytes)
        *out_bytes = IMG_LEN;
out:
    free(got);
    nu_envelope_free(m);
    return rc;
}

static void test_delivery_end_to_end(void)
{
    struct cf_client c;
    Nusec__V1__Envelope *m = NULL;
    uint8_t digest[32];
    CU_ASSERT_FATAL(F_ok && JOB[0]);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, PROGS[0].id, PROGS[0].cert, PROGS[0].key, &c), NU_OK);
    CU_ASSERT_EQUAL_FATAL(manifest(&c, JOB, TOKENS[0], TOKEN_LEN[0], &m), NU_OK);
    const Nusec__V1__FirmwareManifest *man = m->firmware_manifest;
    nu_sha256(IMG, IMG_LEN, digest);
    CU_ASSERT_STRING_EQUAL(man->job_id, JOB);
    CU_ASSERT_STRING_EQUAL(man->image_name, "app-1.0.0");
    CU_ASSERT_EQUAL(man->size, IMG_LEN);
    CU_ASSERT(man->chunk_size > 0 && man->chunk_size <= 16384);
    CU_ASSERT_EQUAL(man->chunk_count, (IMG_LEN + man->chunk_size - 1) / man->chunk_size);
    CU_ASSERT(man->image_digest.len == 32 && !memcmp(man->image_digest.data, digest, 32));
    nu_envelope_free(m);
    CU_ASSERT_EQUAL(fetch_all(&c, TOKENS[0], TOKEN_LEN[0], NULL), NU_OK);
    cf_client_close(&c);
}

static void test_delivery_refusals(void)
{
    struct cf_client c, other, outsider;
    Nusec__V1__Envelope *r = NULL, *r1 = NULL;
    uint8_t bad[32], plain[16384];
    CU_ASSERT_FATAL(F_ok && JOB[0]);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, PROGS[0].id, PROGS[0].cert, PROGS[0].key, &c), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, PROGS[1].id, PROGS[1].cert, PROGS[1].key, &other),
                          NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, OUTSIDER.id, OUTSIDER.cert, OUTSIDER.key, &outsider),
                          NU_OK);
    /* Wrong token, another programmer's token, a token with one bit changed. */
    memset(bad, 0x5a, sizeof(bad));
    CU_ASSERT_EQUAL(manifest(&c, JOB, bad, sizeof(bad), &r), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(chunk(&c, JOB, bad, sizeof(bad), 0, &r), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(chunk(&c, JOB, TOKENS[1], TOKEN_LEN[1], 0, &r), NU_ERR_TOKEN);
    memcpy(bad, TOKENS[0], TOKEN_LEN[0]);
    bad[TOKEN_LEN[0] - 1] ^= 1;
    CU_ASSERT_EQUAL(chunk(&c, JOB, bad, TOKEN_LEN[0], 0, &r), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(chunk(&c, JOB, TOKENS[0], TOKEN_LEN[0] - 1, 0, &r), NU_ERR_TOKEN);
    /* A programmer outside the job, even with a valid token of it. */
    CU_ASSERT_EQUAL(chunk(&outsider, JOB, TOKENS[0], TOKEN_LEN[0], 0, &r), NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(chunk(&c, "job-nosuch", TOKENS[0], TOKEN_LEN[0], 0, &r), NU_ERR_NOT_FOUND);
    /* The OEM is no programmer. */
    CU_ASSERT_EQUAL(chunk(&OEM, JOB, TOKENS[0], TOKEN_LEN[0], 0, &r), NU_ERR_NOT_AUTHORIZED);
    /* Index out of range. */
    uint32_t count = (uint32_t)((IMG_LEN + 16383) / 16384);
    CU_ASSERT_EQUAL(chunk(&c, JOB, TOKENS[0], TOKEN_LEN[0], count, &r), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(chunk(&c, JOB, TOKENS[0], TOKEN_LEN[0], UINT32_MAX, &r), NU_ERR_INVALID_ARG);
    /* The last chunk is short and complete. */
    CU_ASSERT_EQUAL_FATAL(chunk(&c, JOB, TOKENS[0], TOKEN_LEN[0], count - 1, &r), NU_OK);
    CU_ASSERT_EQUAL(r->firmware_chunk->ciphertext.len, IMG_LEN - (count - 1) * 16384u + 16);
    nu_envelope_free(r);
    /* A chunk is bound to its index and its job: moved, it does not decrypt. */
    CU_ASSERT_EQUAL_FATAL(chunk(&c, JOB, TOKENS[0], TOKEN_LEN[0], 1, &r1), NU_OK);
    const Nusec__V1__FirmwareChunk *ch = r1->firmware_chunk;
    uint8_t nonce1[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1};
    CU_ASSERT(ch->nonce.len == 12 && memcmp(ch->nonce.data, nonce1, 12) == 0);
    CU_ASSERT_EQUAL(chunk_open(ch, FW_KEY, JOB, 1, plain), NU_OK);
    CU_ASSERT_EQUAL(memcmp(plain, IMG + 16384, 16384), 0);
    CU_ASSERT_EQUAL(chunk_open(ch, FW_KEY, JOB, 0, plain), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(chunk_open(ch, FW_KEY, JOB, 2, plain), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(chunk_open(ch, FW_KEY, "job-0000000000000000", 1, plain), NU_ERR_TAMPERED);
    /* The index is in the AAD too, not only in the nonce. */
    CU_ASSERT_EQUAL(chunk_open_ex(ch, FW_KEY, JOB, 1, 0, plain), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(chunk_open_ex(ch, FW_KEY, JOB, 1, 1, plain), NU_OK);
    /* And nobody without the key reads it: the ciphertext is not the image. */
    CU_ASSERT_PTR_NULL(memmem(ch->ciphertext.data, ch->ciphertext.len, IMG + 16384 + 64, 64));
    nu_envelope_free(r1);
    cf_client_close(&outsider);
    cf_client_close(&other);
    cf_client_close(&c);
}

/* ------------------------------------------------------------ throughput */

struct fetcher {
    int i;
    int rc;
    size_t bytes;
};

static void *fetch_thread(void *arg)
{
    struct fetcher *f = arg;
    struct cf_client c;
    f->rc = cf_client_open(&F, PROGS[f->i].id, PROGS[f->i].cert, PROGS[f->i].key, &c);
    if (!f->rc)
        f->rc = fetch_all(&c, TOKENS[f->i], TOKEN_LEN[f->i], &f->bytes);
    cf_client_close(&c);
    return NULL;
}

/* n programmers download the whole image at once; each must get exactly it. */
static void fetch_concurrently(int n)
{
    pthread_t th[N_PROGS];
    struct fetcher fs[N_PROGS];
    for (int i = 0; i < n; i++) {
        fs[i] = (struct fetcher){.i = i};
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, fetch_thread, &fs[i]), 0);
    }
    for (int i = 0; i < n; i++) {
        pthread_join(th[i], NULL);
        CU_ASSERT_EQUAL(fs[i].rc, NU_OK); /* every chunk decrypted, the image's bytes equal */
        CU_ASSERT_EQUAL(fs[i].bytes, IMG_LEN);
    }
}

/* Behaviour only: the speed is bench_fw_delivery's (./build.sh bench,
 * fw_delivery_mb_per_s and fw_delivery_1prog_mb_per_s). */
static void test_concurrent_delivery(void)
{
    CU_ASSERT_FATAL(F_ok && JOB[0]);
    fetch_concurrently(1);
    fetch_concurrently(N_PROGS);
}

/* ------------------------------------------------------------ job control */

struct watch {
    pthread_mutex_t lock;
    Nusec__V1__JobStatus status;
    int retained;
    int count;
};

static void on_job(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct watch *w = ud;
    Nusec__V1__Envelope *env = NULL;
    char topic[128];
    (void)m;
    snprintf(topic, sizeof(topic), "nusec/v1/jobs/%s", JOB);
    if (strcmp(msg->topic, topic) != 0 || nu_envelope_unpack(msg->payload, msg->len, &env, NULL))
        return;
    pthread_mutex_lock(&w->lock);
    if (env->body_case == NUSEC__V1__ENVELOPE__BODY_JOB_STATE) {
        w->status = env->job_state->status;
        w->retained = msg->retain;
        w->count++;
    }
    pthread_mutex_unlock(&w->lock);
    nu_envelope_free(env);
}

/* Wait for the state of JOB to read `want` (subscribing afresh reads the retained one). */
static int watch_state(Nusec__V1__JobStatus want, int *out_retained)
{
    struct cf_client mon;
    struct watch w = {.lock = PTHREAD_MUTEX_INITIALIZER};
    int seen = 0;
    if (cf_client_open(&F, "monitor", NULL, NULL, &mon))
        return 0;
    if (nu_mqtt_subscribe(mon.m, "nusec/v1/jobs/+", 1, on_job, &w) == NU_OK) {
        for (int i = 0; i < 100 && !seen; i++) {
            pthread_mutex_lock(&w.lock);
            seen = w.count && w.status == want;
            *out_retained = w.retained;
            pthread_mutex_unlock(&w.lock);
            if (!seen)
                usleep(20000);
        }
    }
    cf_client_close(&mon);
    return seen;
}

static void test_pause_resume_close(void)
{
    struct cf_client c;
    Nusec__V1__Envelope *r = NULL;
    int retained = 0;
    CU_ASSERT_FATAL(F_ok && JOB[0]);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job pause %s --dir %s >/dev/null", BIN, JOB, F.dir), 0);
    /* A monitor that subscribes after the fact reads the retained state. */
    CU_ASSERT_TRUE(watch_state(NUSEC__V1__JOB_STATUS__JOB_STATUS_PAUSED, &retained));
    CU_ASSERT_EQUAL(retained, 1);
    /* Pausing again is not an error; paused jobs still serve firmware. */
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job pause %s --dir %s >/dev/null", BIN, JOB, F.dir), 0);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, PROGS[2].id, PROGS[2].cert, PROGS[2].key, &c), NU_OK);
    CU_ASSERT_EQUAL(chunk(&c, JOB, TOKENS[2], TOKEN_LEN[2], 0, &r), NU_OK);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job resume %s --dir %s >/dev/null", BIN, JOB, F.dir), 0);
    CU_ASSERT_TRUE(watch_state(NUSEC__V1__JOB_STATUS__JOB_STATUS_ACTIVE, &retained));
    /* Close: firmware refused from now on, and the job cannot come back. */
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job close %s --dir %s --json | grep -q "
                               "'\"status\":\"closed\"'",
                               BIN, JOB, F.dir),
                    0);
    CU_ASSERT_TRUE(watch_state(NUSEC__V1__JOB_STATUS__JOB_STATUS_CLOSED, &retained));
    /* The close is sealed: the next event is a checkpoint signed in the HSM,
     * answered before the operator hears the job is closed. */
    CU_ASSERT_EQUAL(nu_test_sh("test \"$(sqlite3 %s \"select kind from audit_events where seq = "
                               "1 + (select seq from audit_events where kind = 'job.closed' "
                               "and job_id = '%s')\")\" = audit.checkpoint",
                               F.ledger, JOB),
                    0);
    CU_ASSERT_EQUAL(
        nu_test_sh("%s/nusec audit verify --dir %s | grep -q '^checkpoints *ok, '", BIN, F.dir), 0);
    CU_ASSERT_EQUAL(chunk(&c, JOB, TOKENS[2], TOKEN_LEN[2], 0, &r), NU_ERR_JOB_NOT_ACTIVE);
    CU_ASSERT_EQUAL(manifest(&c, JOB, TOKENS[2], TOKEN_LEN[2], &r), NU_ERR_JOB_NOT_ACTIVE);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job resume %s --dir %s 2>/dev/null", BIN, JOB, F.dir), 1);
    CU_ASSERT_EQUAL(nu_test_sh("%s/nusec job pause job-nosuch --dir %s 2>/dev/null", BIN, F.dir),
                    1);
    cf_client_close(&c);
}

/* ------------------------------------------------------------ limits */

static void test_sign_size_bounds(void)
{
    uint8_t *p = calloc(1, NU_ENVELOPE_FIRMWARE_MAX + 1);
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_FATAL(F_ok && p);
    /* The largest payload signs; its image travels in one answer. */
    double t0 = now_s();
    CU_ASSERT_EQUAL(sign_raw("max", "1.0.0", p, NU_ENVELOPE_FIRMWARE_MAX, NULL, &r), NU_OK);
    if (r)
        CU_ASSERT(r->firmware_sign_response->image.len > NU_ENVELOPE_FIRMWARE_MAX);
    printf("\n    firmware.sign of %u bytes: %.0f ms", NU_ENVELOPE_FIRMWARE_MAX,
           (now_s() - t0) * 1e3);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL(sign_raw("max", "1.0.1", p, NU_ENVELOPE_FIRMWARE_MAX + 1, NULL, &r),
                    NU_ERR_TOO_LARGE);
    free(p);
}

/* A programmer written straight into the ledger (no bus enrollment), with
 * the package key `pub`: cheap, for many-programmer jobs. */
static int ledger_programmer(struct cloud_ledger *l, const char *id, const uint8_t *pub)
{
    static const char pem[] = "-----BEGIN CERTIFICATE-----\nAA==\n-----END CERTIFICATE-----\n";
    struct cloud_ledger_enrollment e = {id, "01", pem, pub, "oem", nu_time_ms(), NULL, NULL, NULL};
    return cloud_ledger_programmer_upsert(l, &e);
}

static void test_job_256_programmers(void)
{
    enum { N = 256 };
    static char ids[N + 1][16];
    static const char *progs[N + 1];
    static uint32_t limits[N + 1];
    static Nusec__V1__ProgrammerAllocation a[N + 1], *pa[N + 1];
    struct cloud_ledger *l = NULL;
    uint8_t pub[65];
    Nusec__V1__Envelope *r = NULL;
    CU_ASSERT_FATAL(F_ok);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_pub(OUTSIDER.package, pub), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(F.ledger, &l), NU_OK);
    for (int i = 0; i <= N; i++) {
        snprintf(ids[i], sizeof(ids[i]), "many-%03d", i);
        progs[i] = ids[i];
        CU_ASSERT_EQUAL_FATAL(ledger_programmer(l, ids[i], pub), NU_OK);
    }
    cloud_ledger_close(l);
    double t0 = now_s();
    CU_ASSERT_EQUAL_FATAL(create_raw_n("boot-2.1.7", 1000, progs, limits, N, NULL, a, pa, &r),
                          NU_OK);
    double dt = now_s() - t0;
    const Nusec__V1__JobCreateResponse *jr = r->job_create_response;
    size_t total = 0, biggest = 0;
    CU_ASSERT_EQUAL(jr->n_packages, N);
    CU_ASSERT_EQUAL(jr->job->n_allocations, N);
    for (size_t i = 0; i < jr->n_packages; i++) {
        total += jr->packages[i].len;
        biggest = jr->packages[i].len > biggest ? jr->packages[i].len : biggest;
    }
    CU_ASSERT(biggest < 8192);
    /* 1000 over 256: 3 each, the 232 left to the first. */
    CU_ASSERT_EQUAL(jr->job->allocations[0]->limit + 255u * 3u, 1000u);
    printf("\n    job.create with %d programmers: %.0f ms, %zu bytes of packages (largest %zu)", N,
           dt * 1e3, total, biggest);
    nu_envelope_free(r);
    /* One more is over the cap: refused before it leaves the client. */
    CU_ASSERT_EQUAL(create_raw_n("boot-2.1.7", 1000, progs, limits, N + 1, NULL, a, pa, &r),
                    NU_ERR_TOO_LARGE);
}

static void test_job_expiry_and_station_view(void)
{
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    Nusec__V1__ProgrammerAllocation a = NUSEC__V1__PROGRAMMER_ALLOCATION__INIT, *pa = &a;
    Nusec__V1__Envelope *r = NULL, *m = NULL;
    struct cf_client c;
    uint8_t token[64];
    size_t tlen = 0;
    CU_ASSERT_FATAL(F_ok);
    a.programmer_id = "prog-1";
    a.limit = 1;
    req.firmware = "boot-2.1.7";
    req.quota = 1;
    req.allocations = &pa;
    req.n_allocations = 1;
    req.expires_at_ms = nu_time_ms() + 1500;
    CU_ASSERT_EQUAL_FATAL(cf_call(&OEM, "job.create", &req.base, NULL, 0, &r, NULL, 0), NU_OK);
    char job[80];
    snprintf(job, sizeof(job), "%s", r->job_create_response->job->job_id);
    CU_ASSERT_EQUAL_FATAL(
        package_token(&r->job_create_response->packages[0], &PROGS[0], token, &tlen), NU_OK);
    nu_envelope_free(r);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, PROGS[0].id, PROGS[0].cert, PROGS[0].key, &c), NU_OK);
    CU_ASSERT_EQUAL(manifest(&c, job, token, tlen, &m), NU_OK);
    nu_envelope_free(m);
    /* A station sees the job list (state, not secrets). */
    Nusec__V1__JobListRequest lr = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    lr.job_id = job;
    CU_ASSERT_EQUAL(cf_call(&STATION, "job.list", &lr.base, NULL, 0, &r, NULL, 0), NU_OK);
    if (r)
        CU_ASSERT(r->job_list->n_jobs == 1 &&
                  r->job_list->jobs[0]->status == NUSEC__V1__JOB_STATUS__JOB_STATUS_ACTIVE);
    nu_envelope_free(r);
    usleep(1700 * 1000);
    CU_ASSERT_EQUAL(manifest(&c, job, token, tlen, &m), NU_ERR_EXPIRED);
    CU_ASSERT_EQUAL(chunk(&c, job, token, tlen, 0, &m), NU_ERR_EXPIRED);
    CU_ASSERT_EQUAL(cf_call(&STATION, "job.list", &lr.base, NULL, 0, &r, NULL, 0), NU_OK);
    if (r)
        CU_ASSERT(r->job_list->n_jobs == 1 &&
                  r->job_list->jobs[0]->status == NUSEC__V1__JOB_STATUS__JOB_STATUS_EXPIRED);
    nu_envelope_free(r);
    /* A past expiry is refused at creation. */
    req.expires_at_ms = nu_time_ms() - 1;
    CU_ASSERT_EQUAL(cf_call(&OEM, "job.create", &req.base, NULL, 0, &r, NULL, 0),
                    NU_ERR_INVALID_ARG);
    cf_client_close(&c);
}

static void test_restart_and_swapped_image(void)
{
    static const char *const p1[] = {"prog-1"};
    static const uint32_t l1[] = {2};
    Nusec__V1__Envelope *r = NULL, *m = NULL;
    struct cf_client c;
    uint8_t token[64], *redo = NULL;
    size_t tlen = 0, redo_len = 0;
    char job[80], path[512];
    CU_ASSERT_FATAL(F_ok);
    CU_ASSERT_EQUAL_FATAL(create_raw("boot-2.1.7", 2, p1, l1, 1, NULL, &r), NU_OK);
    snprintf(job, sizeof(job), "%s", r->job_create_response->job->job_id);
    CU_ASSERT_EQUAL_FATAL(
        package_token(&r->job_create_response->packages[0], &PROGS[0], token, &tlen), NU_OK);
    nu_envelope_free(r);
    /* After a restart (empty cache) the image is read again: still served. */
    CU_ASSERT_EQUAL_FATAL(cf_cloud_stop(&F), 0);
    CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
    CU_ASSERT_EQUAL_FATAL(cf_client_open(&F, PROGS[0].id, PROGS[0].cert, PROGS[0].key, &c), NU_OK);
    CU_ASSERT_EQUAL(manifest(&c, job, token, tlen, &m), NU_OK);
    nu_envelope_free(m);
    /* The image is served from the ledger (any agent, any host): another
     * valid image of ours put in its place on disk, or none, changes nothing. */
    CU_ASSERT_EQUAL_FATAL(cf_cloud_stop(&F), 0);
    CU_ASSERT_EQUAL_FATAL(ledger_img("redo-1.0.0", &redo, &redo_len), NU_OK);
    snprintf(path, sizeof(path), "%s/firmware/boot-2.1.7.img", F.dir);
    CU_ASSERT_EQUAL_FATAL(write_file(path, redo, redo_len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
    CU_ASSERT_EQUAL(manifest(&c, job, token, tlen, &m), NU_OK);
    if (m)
        CU_ASSERT_NOT_EQUAL(m->firmware_manifest->size, redo_len);
    nu_envelope_free(m);
    m = NULL;
    CU_ASSERT_EQUAL(chunk(&c, job, token, tlen, 0, &m), NU_OK);
    nu_envelope_free(m);
    m = NULL;
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(create_raw("boot-2.1.7", 2, p1, l1, 1, NULL, &r), NU_OK);
    nu_envelope_free(r);
    r = NULL;
    /* Bytes in the ledger that are not what the HSM signed are never served. */
    CU_ASSERT_EQUAL_FATAL(cf_cloud_stop(&F), 0);
    CU_ASSERT_EQUAL(nu_test_sh("sqlite3 %s \"DROP TRIGGER firmware_blobs_fixed;"
                               " CREATE TABLE saved AS SELECT image FROM firmware_blobs"
                               " WHERE name = 'boot-2.1.7'; UPDATE firmware_blobs SET image ="
                               " (SELECT image FROM firmware_blobs WHERE name = 'redo-1.0.0')"
                               " WHERE name = 'boot-2.1.7'\"",
                               F.ledger),
                    0);
    CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
    CU_ASSERT_EQUAL(manifest(&c, job, token, tlen, &m), NU_ERR_BAD_FIRMWARE);
    CU_ASSERT_EQUAL(chunk(&c, job, token, tlen, 0, &m), NU_ERR_BAD_FIRMWARE);
    /* Nor packaged into a new job. */
    CU_ASSERT_EQUAL(create_raw("boot-2.1.7", 2, p1, l1, 1, NULL, &r), NU_ERR_BAD_FIRMWARE);
    /* Put back as signed, for the cases after this one. */
    CU_ASSERT_EQUAL_FATAL(cf_cloud_stop(&F), 0);
    CU_ASSERT_EQUAL(nu_test_sh("sqlite3 %s \"UPDATE firmware_blobs SET image = (SELECT image"
                               " FROM saved) WHERE name = 'boot-2.1.7'; DROP TABLE saved;"
                               " CREATE TRIGGER firmware_blobs_fixed"
                               " BEFORE UPDATE ON firmware_blobs BEGIN SELECT RAISE(ABORT,"
                               " 'a signed image does not change'); END;\"",
                               F.ledger),
                    0);
    CU_ASSERT_EQUAL_FATAL(cf_cloud_start(&F), 0);
    free(redo);
    cf_client_close(&c);
}

static void test_audit_trail(void)
{
    struct cloud_ledger_verify_report rep;
    CU_ASSERT_FATAL(F_ok);
    CU_ASSERT_EQUAL(cloud_ledger_verify_target(F.ledger, NULL, NULL, &rep), NU_OK);
    CU_ASSERT_EQUAL(rep.schema_ok, 1);
    /* What happened is in the chain: signatures, the job and its packages, control. */
    CU_ASSERT_EQUAL(nu_test_sh("sqlite3 %s \"SELECT kind FROM audit_events\" | sort | uniq -c | "
                               "grep -q ' firmware.signed$'",
                               F.ledger),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("sqlite3 %s \"SELECT count(*) FROM audit_events WHERE kind = "
                               "'job.packages' AND job_id = '%s'\" | grep -qx 1",
                               F.ledger, JOB),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("sqlite3 %s \"SELECT count(*) FROM audit_events WHERE kind = "
                               "'job.closed' AND job_id = '%s'\" | grep -qx 1",
                               F.ledger, JOB),
                    0);
    /* The cloud stops cleanly (no leak reports under the sanitizers). */
    CU_ASSERT_EQUAL(cf_cloud_stop(&F), 0);
}

static const struct nu_test_case cases[] = {
    {"sign a 1 MiB binary: verified by two verifiers", test_sign_1mib_bin},
    {"sign an Intel HEX file", test_sign_intel_hex},
    {"a signed version is immutable; redelivery answers", test_sign_version_immutable},
    {"firmware list", test_firmware_list},
    {"CLI: --help everywhere, usage errors", test_cli_help_and_usage},
    {"job create: split, signed and sealed packages", test_job_create_packages},
    {"job create: idempotent, refusals", test_job_create_idempotent_and_refusals},
    {"manifest and all chunks decrypt to the image", test_delivery_end_to_end},
    {"delivery refusals and chunk binding", test_delivery_refusals},
    {"8 programmers download the same image at once, each exactly", test_concurrent_delivery},
    {"pause, resume, close: retained state, chunks refused", test_pause_resume_close},
    {"firmware.sign size bounds (4 MiB)", test_sign_size_bounds},
    {"a job of 256 programmers in one answer", test_job_256_programmers},
    {"expired job refused; stations list jobs", test_job_expiry_and_station_view},
    {"restart; an image swapped on disk is refused", test_restart_and_swapped_image},
    {"audit trail and clean stop", test_audit_trail},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"cloud firmware and jobs", suite_setup, suite_teardown, cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    return nu_test_run("integration_cloud_fw", suites);
}
