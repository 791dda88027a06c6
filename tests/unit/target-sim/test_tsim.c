/*
 * tsim: the simulated target MCU, asserted from outside as the programmer and
 * an auditor see it: lifecycle refusals, secure boot of real MCUboot images,
 * attestation, persistence across reopen, the private key's confinement to
 * secret/, faults, untrusted inputs and the thread-safe feeder.
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_mcuboot.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"
#include "tsim.h"

#include <dirent.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PAYLOAD_LEN (20u * 1024u + 123u) /* not a multiple of the chunk size */
#define CHUNK 4096u

static char tmp[256];
static char targets[512];
static unsigned uid_counter;

/* The OEM side: secure-boot key, its ROTPK hash, signed images, a device CA. */
static struct nu_p256_key *boot_key, *other_key, *ca_key;
static uint8_t boot_pub[65], other_pub[65], rotpk[32];
static uint8_t *img, *img_other, *img_sc3, *img_sc7;
static size_t img_len, img_other_len, img_sc3_len, img_sc7_len;
static uint8_t *ca_der;
static size_t ca_len;

static uint8_t *sign_image(struct nu_p256_key *key, uint32_t counter, size_t *out_len)
{
    static uint8_t payload[PAYLOAD_LEN];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 31u + 7u);
    struct nu_signer s;
    struct nu_mcuboot_version v = {1, 2, 3, 4};
    uint8_t *out = NULL;
    if (nu_p256_key_signer(key, &s) != NU_OK ||
        nu_mcuboot_sign(payload, sizeof(payload), &v, counter, 0, &s, &out, out_len) != NU_OK)
        return NULL;
    return out;
}

static int64_t now_s(void)
{
    return (int64_t)(nu_time_ms() / 1000u);
}

static int make_ca(void)
{
    struct nu_signer s;
    struct nu_x509_issue_req r = {.cn = "Test Device CA",
                                  .not_before = now_s() - 60,
                                  .not_after = now_s() + 86400,
                                  .is_ca = 1,
                                  .path_len = 0,
                                  .key_usage = NU_X509_KU_KEY_CERT_SIGN};
    if (nu_p256_key_generate(&ca_key) != NU_OK || nu_p256_key_signer(ca_key, &s) != NU_OK)
        return -1;
    memcpy(r.pub, s.pub, 65);
    return nu_x509_issue(&r, &s, NULL, 0, &ca_der, &ca_len) == NU_OK ? 0 : -1;
}

static int setup(void)
{
    if (nu_test_tmpdir("tsim", tmp, sizeof(tmp)) != 0 ||
        nu_path_fmt(targets, sizeof(targets), "%s/targets", tmp) != NU_OK)
        return -1;
    if (nu_p256_key_generate(&boot_key) != NU_OK || nu_p256_key_generate(&other_key) != NU_OK ||
        nu_p256_key_pub(boot_key, boot_pub) != NU_OK ||
        nu_p256_key_pub(other_key, other_pub) != NU_OK ||
        nu_mcuboot_rotpk_hash(boot_pub, rotpk) != NU_OK)
        return -1;
    img = sign_image(boot_key, 5, &img_len);
    img_other = sign_image(other_key, 5, &img_other_len);
    img_sc3 = sign_image(boot_key, 3, &img_sc3_len);
    img_sc7 = sign_image(boot_key, 7, &img_sc7_len);
    if (!img || !img_other || !img_sc3 || !img_sc7)
        return -1;
    return make_ca();
}

static int teardown(void)
{
    free(img);
    free(img_other);
    free(img_sc3);
    free(img_sc7);
    free(ca_der);
    nu_p256_key_destroy(boot_key);
    nu_p256_key_destroy(other_key);
    nu_p256_key_destroy(ca_key);
    nu_test_rmtree(tmp);
    return 0;
}

/* ------------------------------------------------------------ helpers */

/* 1 when needle[n] occurs in hay[len] (memmem is a GNU extension). */
static int contains(const void *hay, size_t len, const void *needle, size_t n)
{
    const uint8_t *h = hay;
    for (size_t i = 0; n && i + n <= len; i++)
        if (h[i] == *(const uint8_t *)needle && memcmp(h + i, needle, n) == 0)
            return 1;
    return 0;
}

static void next_uid(uint8_t uid[TSIM_UID_LEN])
{
    memset(uid, 0xA5, TSIM_UID_LEN);
    uid_counter++;
    memcpy(uid, &uid_counter, sizeof(uid_counter));
}

static struct tsim *new_chip(unsigned faults, uint8_t out_uid[TSIM_UID_LEN])
{
    uint8_t uid[TSIM_UID_LEN];
    struct tsim_opts o = {.faults = faults};
    struct tsim *t = NULL;
    next_uid(uid);
    CU_ASSERT_EQUAL(tsim_create(targets, uid, &o, &t), NU_OK);
    if (out_uid)
        memcpy(out_uid, uid, TSIM_UID_LEN);
    return t;
}

static enum tsim_state state_of(const struct tsim *t)
{
    enum tsim_state s = (enum tsim_state) - 1;
    CU_ASSERT_EQUAL(tsim_get_state(t, &s), NU_OK);
    return s;
}

static int flash_image(struct tsim *t, const uint8_t *data, size_t len)
{
    for (size_t off = 0; off < len; off += CHUNK) {
        size_t n = len - off < CHUNK ? len - off : CHUNK;
        int rc = tsim_flash_write(t, (uint32_t)off, data + off, n);
        if (rc)
            return rc;
    }
    return NU_OK;
}

/* Certificate for the chip's key from the test device CA; caller frees. */
static uint8_t *issue_cert(const uint8_t pub[65], size_t *out_len)
{
    struct nu_signer s;
    uint8_t *der = NULL;
    struct nu_x509_issue_req r = {.cn = "device-1",
                                  .ou = "device",
                                  .not_before = now_s() - 60,
                                  .not_after = now_s() + 86400,
                                  .key_usage = NU_X509_KU_DIGITAL_SIGNATURE};
    memcpy(r.pub, pub, 65);
    CU_ASSERT_EQUAL(nu_p256_key_signer(ca_key, &s), NU_OK);
    CU_ASSERT_EQUAL(nu_x509_issue(&r, &s, ca_der, ca_len, &der, out_len), NU_OK);
    return der;
}

enum stage { ST_OTP, ST_KEYED, ST_PROGRAMMED, ST_BOOTED, ST_LOCKED };

/* The programmer's happy path up to `upto`, asserting each step. */
static void drive(struct tsim *t, enum stage upto)
{
    uint8_t csr[NU_X509_CSR_MAX], pub[65];
    size_t csr_len = 0, cert_len = 0;
    CU_ASSERT_EQUAL_FATAL(tsim_otp_write_rotpk_hash(t, rotpk), NU_OK);
    if (upto == ST_OTP)
        return;
    CU_ASSERT_EQUAL_FATAL(tsim_keygen_csr(t, "device-1", csr, sizeof(csr), &csr_len), NU_OK);
    if (upto == ST_KEYED)
        return;
    CU_ASSERT_EQUAL_FATAL(tsim_read_pubkey(t, pub), NU_OK);
    uint8_t *cert = issue_cert(pub, &cert_len);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, boot_pub), NU_OK);
    CU_ASSERT_EQUAL(tsim_write_cert(t, cert, cert_len), NU_OK);
    free(cert);
    if (upto == ST_PROGRAMMED)
        return;
    CU_ASSERT_EQUAL_FATAL(tsim_reset(t), NU_OK);
    if (upto == ST_BOOTED)
        return;
    CU_ASSERT_EQUAL_FATAL(tsim_lock(t), NU_OK);
}

static int attest_verifies(struct tsim *t, const uint8_t uid[TSIM_UID_LEN])
{
    uint8_t nonce[32], digest[32], sig[NU_P256_SIG_MAX], pub[65];
    size_t sig_len = 0;
    CU_ASSERT_EQUAL(nu_random(nonce, sizeof(nonce)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(tsim_attest(t, nonce, sig, sizeof(sig), &sig_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_attest_digest(uid, nonce, digest), NU_OK);
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub), NU_OK);
    return nu_p256_verify(pub, digest, sig, sig_len) == NU_OK;
}

static char *read_chip_file(const struct tsim *t, const char *name, size_t *out_len)
{
    char path[1024];
    uint8_t *buf = NULL;
    size_t len = 0;
    if (nu_path_fmt(path, sizeof(path), "%s/%s", tsim_path(t), name) != NU_OK ||
        nu_file_read(path, TSIM_IMAGE_MAX, &buf, &len) != NU_OK)
        return NULL;
    if (out_len)
        *out_len = len;
    return (char *)buf;
}

/* 1 when the chip's state file has exactly the line `line`. */
static int state_has(const struct tsim *t, const char *line)
{
    char *text = read_chip_file(t, "state", NULL);
    size_t n = strlen(line);
    int found = 0;
    for (char *p = text; p && *p && !found;) {
        found = strncmp(p, line, n) == 0 && (p[n] == '\n' || p[n] == 0);
        p = strchr(p, '\n');
        p = p ? p + 1 : NULL;
    }
    free(text);
    return found;
}

static void write_chip_file(const struct tsim *t, const char *name, const void *buf, size_t len)
{
    char path[1024];
    CU_ASSERT_EQUAL(nu_path_fmt(path, sizeof(path), "%s/%s", tsim_path(t), name), NU_OK);
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, buf, len, 0644), NU_OK);
}

/* ------------------------------------------------------------ happy path */

static void test_happy_path(void)
{
    uint8_t uid[TSIM_UID_LEN], got_uid[TSIM_UID_LEN], csr[NU_X509_CSR_MAX], pub[65], h[32];
    size_t csr_len = 0, cert_len = 0;
    struct tsim *t = new_chip(0, uid);
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    CU_ASSERT_EQUAL(tsim_read_uid(t, got_uid), NU_OK);
    CU_ASSERT_EQUAL(memcmp(uid, got_uid, sizeof(uid)), 0);
    CU_ASSERT_EQUAL(state_of(t), TSIM_BLANK);
    CU_ASSERT_EQUAL(tsim_otp_read_rotpk_hash(t, h), NU_ERR_NOT_FOUND);
    CU_ASSERT_TRUE(state_has(t, "state=blank"));

    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, rotpk), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_OTP_WRITTEN);
    CU_ASSERT_EQUAL(tsim_otp_read_rotpk_hash(t, h), NU_OK);
    CU_ASSERT_EQUAL(memcmp(h, rotpk, 32), 0);

    CU_ASSERT_EQUAL_FATAL(tsim_keygen_csr(t, "dev-0001", csr, sizeof(csr), &csr_len), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_KEYED);
    struct nu_x509_csr_info info;
    CU_ASSERT_EQUAL_FATAL(nu_x509_csr_parse_verify(csr, csr_len, &info), NU_OK);
    CU_ASSERT_STRING_EQUAL(info.cn, "dev-0001");
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub), NU_OK);
    CU_ASSERT_EQUAL(memcmp(info.pub, pub, 65), 0);
    size_t pem_len = 0;
    char *pem = read_chip_file(t, "pubkey.pem", &pem_len);
    uint8_t pem_pub[65];
    CU_ASSERT_EQUAL(nu_p256_pub_from_pem(pem, pem_len, pem_pub), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pem_pub, pub, 65), 0);
    free(pem);

    uint8_t *cert = issue_cert(pub, &cert_len);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_PROGRAMMED);
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, boot_pub), NU_OK);
    CU_ASSERT_EQUAL(tsim_write_cert(t, cert, cert_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_BOOTED);
    CU_ASSERT_TRUE(state_has(t, "boot=ok"));
    CU_ASSERT_TRUE(attest_verifies(t, uid));

    CU_ASSERT_EQUAL(tsim_lock(t), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_LOCKED);
    CU_ASSERT_EQUAL(tsim_lock(t), NU_OK);    /* a retry after a crash */
    CU_ASSERT_TRUE(attest_verifies(t, uid)); /* a deployed device still proves itself */

    /* What an auditor reads back. */
    size_t len = 0;
    char *image = read_chip_file(t, "image.bin", &len);
    CU_ASSERT_EQUAL(len, img_len);
    CU_ASSERT_TRUE(image && memcmp(image, img, img_len) == 0);
    CU_ASSERT_EQUAL(nu_mcuboot_verify((uint8_t *)image, len, boot_pub, rotpk, NULL), NU_OK);
    free(image);
    pem = read_chip_file(t, "cert.pem", &pem_len);
    uint8_t *der = NULL;
    size_t der_len = 0;
    CU_ASSERT_EQUAL(nu_x509_pem_to_der(pem, pem_len, NU_X509_PEM_CERT, &der, &der_len, NULL),
                    NU_OK);
    CU_ASSERT_TRUE(der_len == cert_len && der && memcmp(der, cert, cert_len) == 0);
    free(der);
    free(pem);
    char line[128], hex[65];
    nu_hex_encode(rotpk, 32, hex, sizeof(hex));
    snprintf(line, sizeof(line), "otp_rotpk_hash=%s", hex);
    CU_ASSERT_TRUE(state_has(t, line));
    CU_ASSERT_TRUE(state_has(t, "state=locked"));
    CU_ASSERT_TRUE(state_has(t, "locked=1"));
    CU_ASSERT_TRUE(state_has(t, "boot=ok"));
    CU_ASSERT_TRUE(state_has(t, "otp_security_counter=5")); /* raised by the accepted image */

    /* Locked: every write refused, nothing changes. */
    uint8_t other_hash[32] = {1};
    CU_ASSERT_EQUAL(tsim_flash_write(t, 0, img, 64), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, other_pub), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_write_cert(t, cert, cert_len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, other_hash), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, rotpk), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_otp_write_security_counter(t, 9), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev-0001", csr, sizeof(csr), &csr_len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_csr(t, "dev-0001", csr, sizeof(csr), &csr_len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(state_of(t), TSIM_LOCKED);
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub, info.pub, 65), 0);
    /* A locked chip still boots (and re-verifies) on reset. */
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_LOCKED);
    image = read_chip_file(t, "image.bin", &len);
    CU_ASSERT_TRUE(len == img_len && image && memcmp(image, img, img_len) == 0);
    free(image);
    free(cert);
    tsim_destroy(t);
}

/* ------------------------------------------------------------ refusals */

static void test_otp_write_once(void)
{
    uint8_t other[32], h[32];
    memset(other, 0x42, sizeof(other));
    struct tsim *t = new_chip(0, NULL);
    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, rotpk), NU_OK);
    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, rotpk), NU_OK); /* same value: idempotent */
    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, other), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_otp_read_rotpk_hash(t, h), NU_OK);
    CU_ASSERT_EQUAL(memcmp(h, rotpk, 32), 0);
    CU_ASSERT_EQUAL(state_of(t), TSIM_OTP_WRITTEN);
    tsim_destroy(t);
}

static void test_security_counter_only_rises(void)
{
    struct tsim *t = new_chip(0, NULL);
    CU_ASSERT_EQUAL(tsim_otp_write_security_counter(t, 4), NU_OK);
    CU_ASSERT_EQUAL(tsim_otp_write_security_counter(t, 4), NU_OK);
    CU_ASSERT_EQUAL(tsim_otp_write_security_counter(t, 3), NU_ERR_STATE);
    CU_ASSERT_TRUE(state_has(t, "otp_security_counter=4"));
    tsim_destroy(t);
}

static void test_keygen_refusals(void)
{
    uint8_t csr[NU_X509_CSR_MAX], pub1[65], pub2[65];
    size_t len = 0;
    struct tsim *t = new_chip(0, NULL);
    /* Before OTP: refused, and no key anywhere. */
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, sizeof(csr), &len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub1), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_csr(t, "dev", csr, sizeof(csr), &len), NU_ERR_STATE);
    char *key = read_chip_file(t, "secret/key.pem", NULL);
    CU_ASSERT_PTR_NULL(key);
    free(key);
    CU_ASSERT_EQUAL(state_of(t), TSIM_BLANK);

    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, rotpk), NU_OK);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, sizeof(csr), &len), NU_OK);
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub1), NU_OK);
    /* Twice: refused, the key stays the same. */
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, sizeof(csr), &len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub2), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub1, pub2, 65), 0);
    /* A fresh CSR for the same key (crash recovery). */
    struct nu_x509_csr_info info;
    CU_ASSERT_EQUAL(tsim_csr(t, "dev-again", csr, sizeof(csr), &len), NU_OK);
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(csr, len, &info), NU_OK);
    CU_ASSERT_EQUAL(memcmp(info.pub, pub1, 65), 0);
    CU_ASSERT_STRING_EQUAL(info.cn, "dev-again");
    tsim_destroy(t);
}

static void test_attest_and_lock_need_boot(void)
{
    uint8_t nonce[32] = {0}, sig[NU_P256_SIG_MAX];
    size_t len = 0;
    struct tsim *t = new_chip(0, NULL);
    CU_ASSERT_EQUAL(tsim_attest(t, nonce, sig, sizeof(sig), &len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_lock(t), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_ERR_STATE); /* nothing to boot without a key */
    drive(t, ST_KEYED);
    CU_ASSERT_EQUAL(tsim_attest(t, nonce, sig, sizeof(sig), &len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_lock(t), NU_ERR_STATE);
    tsim_destroy(t);

    t = new_chip(0, NULL);
    drive(t, ST_PROGRAMMED);
    CU_ASSERT_EQUAL(tsim_attest(t, nonce, sig, sizeof(sig), &len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_lock(t), NU_ERR_STATE);
    CU_ASSERT_EQUAL(state_of(t), TSIM_PROGRAMMED);
    CU_ASSERT_TRUE(state_has(t, "locked=0"));
    tsim_destroy(t);
}

/* A write after a good boot voids it: what gets locked is what was verified. */
static void test_write_after_boot_needs_new_boot(void)
{
    uint8_t nonce[32] = {0}, sig[NU_P256_SIG_MAX];
    size_t len = 0;
    struct tsim *t = new_chip(0, NULL);
    drive(t, ST_BOOTED);
    CU_ASSERT_EQUAL(tsim_flash_write(t, 0, img_other, img_other_len), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_PROGRAMMED);
    CU_ASSERT_TRUE(state_has(t, "boot=none"));
    CU_ASSERT_EQUAL(tsim_lock(t), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_attest(t, nonce, sig, sizeof(sig), &len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_ERR_BOOT_FAILED);
    CU_ASSERT_EQUAL(tsim_lock(t), NU_ERR_STATE);
    tsim_destroy(t);
}

/* ------------------------------------------------------------ secure boot */

static void expect_boot_fails(struct tsim *t)
{
    uint8_t nonce[32] = {0}, sig[NU_P256_SIG_MAX];
    size_t len = 0;
    CU_ASSERT_EQUAL(tsim_reset(t), NU_ERR_BOOT_FAILED);
    CU_ASSERT_EQUAL(state_of(t), TSIM_BOOT_FAILED);
    CU_ASSERT_TRUE(state_has(t, "boot=failed"));
    CU_ASSERT_EQUAL(tsim_attest(t, nonce, sig, sizeof(sig), &len), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_lock(t), NU_ERR_STATE);
}

static void test_boot_refuses_wrong_boot_key(void)
{
    struct tsim *t = new_chip(0, NULL);
    drive(t, ST_PROGRAMMED);
    /* The image is fine, but the boot key slot holds a key OTP does not vouch for. */
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, other_pub), NU_OK);
    expect_boot_fails(t);
    /* The image signed by that key: still not the OTP root of trust. */
    CU_ASSERT_EQUAL(flash_image(t, img_other, img_other_len), NU_OK);
    expect_boot_fails(t);
    /* Back to the right key and image: the chip recovers. */
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, boot_pub), NU_OK);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    tsim_destroy(t);
}

static void test_boot_refuses_image_of_other_key(void)
{
    struct tsim *t = new_chip(0, NULL);
    drive(t, ST_PROGRAMMED);
    CU_ASSERT_EQUAL(flash_image(t, img_other, img_other_len), NU_OK);
    expect_boot_fails(t);
    tsim_destroy(t);
}

static void test_boot_refuses_flipped_byte(void)
{
    uint8_t uid[TSIM_UID_LEN];
    struct tsim *t = new_chip(TSIM_FAULT_FLASH_CORRUPT, uid);
    drive(t, ST_PROGRAMMED);
    size_t len = 0;
    char *image = read_chip_file(t, "image.bin", &len);
    CU_ASSERT_EQUAL(len, img_len);
    size_t diff = 0;
    for (size_t i = 0; image && i < len; i++)
        diff += image[i] != (char)img[i];
    CU_ASSERT_EQUAL(diff, 1); /* exactly one byte flipped as it was written */
    free(image);
    expect_boot_fails(t);
    /* A weak cell stays weak: reflashing does not help. */
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    expect_boot_fails(t);
    tsim_destroy(t);

    /* The same chip without the fault (reopened) boots once rewritten. */
    CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t), NU_OK);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    tsim_destroy(t);
}

static void test_boot_refuses_truncated_and_missing(void)
{
    struct tsim *t = new_chip(0, NULL);
    drive(t, ST_KEYED);
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, boot_pub), NU_OK);
    expect_boot_fails(t); /* no image at all */
    CU_ASSERT_EQUAL(flash_image(t, img, img_len - 1), NU_OK);
    expect_boot_fails(t);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len - 80), NU_OK); /* signature cut off */
    expect_boot_fails(t);
    CU_ASSERT_EQUAL(flash_image(t, img, 16), NU_OK); /* half a header */
    expect_boot_fails(t);
    /* Trailing garbage after the image is refused too. */
    uint8_t *longer = malloc(img_len + 4);
    CU_ASSERT_PTR_NOT_NULL_FATAL(longer);
    memcpy(longer, img, img_len);
    memset(longer + img_len, 0xff, 4);
    CU_ASSERT_EQUAL(flash_image(t, longer, img_len + 4), NU_OK);
    expect_boot_fails(t);
    free(longer);
    /* Offset 0 erases: a full rewrite after a longer one boots. */
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    tsim_destroy(t);
}

static void test_boot_refuses_missing_boot_key(void)
{
    struct tsim *t = new_chip(0, NULL);
    drive(t, ST_KEYED);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    expect_boot_fails(t);
    tsim_destroy(t);
}

static void test_boot_refuses_rollback(void)
{
    struct tsim *t = new_chip(0, NULL);
    drive(t, ST_PROGRAMMED); /* image with security counter 5 */
    CU_ASSERT_EQUAL(tsim_otp_write_security_counter(t, 6), NU_OK);
    expect_boot_fails(t);
    CU_ASSERT_EQUAL(flash_image(t, img_sc7, img_sc7_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    CU_ASSERT_TRUE(state_has(t, "otp_security_counter=7"));
    /* Once 7 booted, an older image (3 or 5) no longer does. */
    CU_ASSERT_EQUAL(flash_image(t, img_sc3, img_sc3_len), NU_OK);
    expect_boot_fails(t);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    expect_boot_fails(t);
    tsim_destroy(t);
}

/* ------------------------------------------------------------ persistence */

static void reopen(struct tsim **t, const uint8_t uid[TSIM_UID_LEN])
{
    tsim_destroy(*t);
    *t = NULL;
    CU_ASSERT_EQUAL_FATAL(tsim_open(targets, uid, NULL, t), NU_OK);
}

static void test_reopen_keeps_state(void)
{
    uint8_t uid[TSIM_UID_LEN], pub1[65], pub2[65], h[32], csr[NU_X509_CSR_MAX];
    size_t len = 0;
    struct tsim *t = new_chip(0, uid);
    drive(t, ST_OTP);
    reopen(&t, uid);
    CU_ASSERT_EQUAL(state_of(t), TSIM_OTP_WRITTEN);
    CU_ASSERT_EQUAL(tsim_otp_read_rotpk_hash(t, h), NU_OK);
    CU_ASSERT_EQUAL(memcmp(h, rotpk, 32), 0);
    uint8_t other[32] = {9};
    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, other), NU_ERR_STATE);

    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, sizeof(csr), &len), NU_OK);
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub1), NU_OK);
    reopen(&t, uid);
    CU_ASSERT_EQUAL(state_of(t), TSIM_KEYED);
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub2), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub1, pub2, 65), 0);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, sizeof(csr), &len), NU_ERR_STATE);

    size_t cert_len = 0;
    uint8_t *cert = issue_cert(pub1, &cert_len);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, boot_pub), NU_OK);
    CU_ASSERT_EQUAL(tsim_write_cert(t, cert, cert_len), NU_OK);
    free(cert);
    reopen(&t, uid);
    CU_ASSERT_EQUAL(state_of(t), TSIM_PROGRAMMED);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK); /* boot key and image survived */
    reopen(&t, uid);
    CU_ASSERT_EQUAL(state_of(t), TSIM_BOOTED);
    CU_ASSERT_TRUE(attest_verifies(t, uid)); /* the reloaded key is the device key */
    CU_ASSERT_EQUAL(tsim_lock(t), NU_OK);
    reopen(&t, uid);
    CU_ASSERT_EQUAL(state_of(t), TSIM_LOCKED);
    CU_ASSERT_EQUAL(tsim_flash_write(t, 0, img, 64), NU_ERR_STATE);
    CU_ASSERT_TRUE(attest_verifies(t, uid));
    tsim_destroy(t);
}

/* A programmer process that opens chip `uid` and dies (no tsim_destroy, nothing
 * flushed by us) after writing `chunks` chunks of another image over it.
 * Returns 1 when that child ran as planned. */
static int crash_while_flashing(const uint8_t uid[TSIM_UID_LEN], const struct tsim_opts *o,
                                int chunks)
{
    fflush(NULL);
    pid_t pid = fork();
    if (pid < 0)
        return 0;
    if (pid == 0) {
        struct tsim *c = NULL;
        if (tsim_open(targets, uid, o, &c) != NU_OK)
            _exit(1);
        for (int i = 0; i < chunks; i++)
            if (tsim_flash_write(c, (uint32_t)i * CHUNK, img_other + i * CHUNK, CHUNK) != NU_OK)
                _exit(1);
        _exit(0); /* crash */
    }
    int status = 0;
    return waitpid(pid, &status, 0) == pid && WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* The programmer dies (no tsim_destroy) in the middle of reflashing a booted
 * chip: reopened, the chip is not BOOTED any more and cannot be locked until
 * a full image boots again. */
static void test_crash_mid_flash(void)
{
    uint8_t uid[TSIM_UID_LEN];
    struct tsim *t = new_chip(0, uid);
    drive(t, ST_BOOTED);
    tsim_destroy(t);
    t = NULL;
    CU_ASSERT_TRUE(crash_while_flashing(uid, NULL, 2));
    CU_ASSERT_EQUAL_FATAL(tsim_open(targets, uid, NULL, &t), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_PROGRAMMED);
    CU_ASSERT_TRUE(state_has(t, "boot=none"));
    CU_ASSERT_EQUAL(tsim_lock(t), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_ERR_BOOT_FAILED); /* half an image */
    CU_ASSERT_EQUAL(tsim_flash_write(t, 3 * CHUNK, img, CHUNK), NU_ERR_INVALID_ARG); /* gap */
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    CU_ASSERT_EQUAL(tsim_lock(t), NU_OK);
    tsim_destroy(t);
}

/* no_sync (benchmarks) drops the disk syncs only: a chip still survives a
 * crash of the programmer in a state it could have been in, never booted
 * over half an image, and every file it shows stays whole. */
static void test_no_sync_survives_programmer_crash(void)
{
    uint8_t uid[TSIM_UID_LEN];
    struct tsim_opts o = {.no_sync = 1};
    struct tsim *t = NULL;
    next_uid(uid);
    CU_ASSERT_EQUAL_FATAL(tsim_create(targets, uid, &o, &t), NU_OK);
    drive(t, ST_BOOTED);
    CU_ASSERT_TRUE(attest_verifies(t, uid));
    tsim_destroy(t);
    t = NULL;
    CU_ASSERT_TRUE(crash_while_flashing(uid, &o, 1));
    CU_ASSERT_EQUAL_FATAL(tsim_open(targets, uid, &o, &t), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_PROGRAMMED);
    CU_ASSERT_TRUE(state_has(t, "boot=none"));
    CU_ASSERT_EQUAL(tsim_lock(t), NU_ERR_STATE);
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    CU_ASSERT_EQUAL(tsim_lock(t), NU_OK);
    reopen(&t, uid);
    CU_ASSERT_EQUAL(state_of(t), TSIM_LOCKED);
    CU_ASSERT_TRUE(attest_verifies(t, uid)); /* key.pem whole, the same key */
    size_t len = 0;
    char *cert = read_chip_file(t, "cert.pem", &len);
    CU_ASSERT_PTR_NOT_NULL(cert);
    CU_ASSERT_PTR_NOT_NULL(cert ? strstr(cert, "-----END CERTIFICATE-----") : NULL);
    free(cert);
    tsim_destroy(t);
}

static ino_t inode_of(const struct tsim *t, const char *name)
{
    char path[1024];
    struct stat st;
    CU_ASSERT_EQUAL(nu_path_fmt(path, sizeof(path), "%s/%s", tsim_path(t), name), NU_OK);
    CU_ASSERT_EQUAL_FATAL(lstat(path, &st), 0);
    return st.st_ino;
}

/* A commit swaps `state` with its shadow: the whole life of a chip uses the
 * same two inodes (no file is created or deleted per commit), the shadow
 * holds the state before the last commit, and it never stands in for a
 * damaged `state`. */
static void test_commits_swap_two_files(void)
{
    uint8_t uid[TSIM_UID_LEN];
    struct tsim *t = new_chip(0, uid), *t2 = NULL;
    drive(t, ST_OTP);
    ino_t a = inode_of(t, "state"), b = inode_of(t, ".state.next");
    CU_ASSERT_NOT_EQUAL(a, b);
    drive(t, ST_LOCKED);
    ino_t c = inode_of(t, "state"), d = inode_of(t, ".state.next");
    CU_ASSERT_TRUE((c == a && d == b) || (c == b && d == a));
    CU_ASSERT_TRUE(state_has(t, "state=locked"));
    size_t len = 0;
    char *shadow = read_chip_file(t, ".state.next", &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(shadow);
    CU_ASSERT_PTR_NOT_NULL(strstr(shadow, "state=booted\n"));
    free(shadow);
    write_chip_file(t, "state", "state=locked\n", 13);
    CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t2), NU_ERR_DECODE);
    CU_ASSERT_PTR_NULL(t2);
    tsim_destroy(t);
}

static void test_open_and_create_errors(void)
{
    uint8_t uid[TSIM_UID_LEN], unknown[TSIM_UID_LEN];
    struct tsim *t = new_chip(0, uid), *t2 = NULL;
    CU_ASSERT_EQUAL(tsim_create(targets, uid, NULL, &t2), NU_ERR_EXISTS);
    CU_ASSERT_PTR_NULL(t2);
    next_uid(unknown);
    CU_ASSERT_EQUAL(tsim_open(targets, unknown, NULL, &t2), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(tsim_create(NULL, uid, NULL, &t2), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(tsim_create(targets, NULL, NULL, &t2), NU_ERR_INVALID_ARG);
    drive(t, ST_KEYED);
    size_t len = 0;
    char *good = read_chip_file(t, "state", &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(good);

    /* A damaged or lying state file is refused, never half-trusted. */
    static const char *const bad[] = {
        "garbage without equals\n", "", "state=locked\n", /* missing lines */
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_chip_file(t, "state", bad[i], strlen(bad[i]));
        CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t2), NU_ERR_DECODE);
    }
    struct {
        const char *from, *to;
    } edits[] = {
        {"state=keyed", "state=locked"},   /* state disagrees with the flags */
        {"locked=0", "locked=1"},          /* locked without a boot: state line disagrees */
        {"boot=none", "boot=maybe"},       /* bad value */
        {"programmed=0", "programmed=01"}, /* bad flag */
        {"uid=", "uid=00"},                /* another chip's file */
        {"otp_security_counter=0", "otp_security_counter=99999999999"},
        {"pubkey=04", "pubkey=05"},                  /* key.pem no longer matches */
        {"state=keyed", "state=keyed\nstate=keyed"}, /* duplicate */
    };
    for (size_t i = 0; i < sizeof(edits) / sizeof(edits[0]); i++) {
        char buf[2048];
        const char *at = strstr(good, edits[i].from);
        CU_ASSERT_PTR_NOT_NULL_FATAL(at);
        snprintf(buf, sizeof(buf), "%.*s%s%s", (int)(at - good), good, edits[i].to,
                 at + strlen(edits[i].from));
        write_chip_file(t, "state", buf, strlen(buf));
        CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t2), NU_ERR_DECODE);
        CU_ASSERT_PTR_NULL(t2);
    }
    /* Oversized state file, and NUL bytes inside. */
    char *big = malloc(8192);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'a', 8192);
    write_chip_file(t, "state", big, 8192);
    CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t2), NU_ERR_DECODE);
    free(big);
    char with_nul[2048];
    memcpy(with_nul, good, len);
    with_nul[3] = 0;
    write_chip_file(t, "state", with_nul, len);
    CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t2), NU_ERR_DECODE);

    /* The good file opens; without its key the keyed chip is damaged. */
    write_chip_file(t, "state", good, len);
    CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t2), NU_OK);
    tsim_destroy(t2);
    t2 = NULL;
    char path[1024];
    nu_path_fmt(path, sizeof(path), "%s/secret/key.pem", tsim_path(t));
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t2), NU_ERR_DECODE);
    free(good);
    tsim_destroy(t);
}

/* ------------------------------------------------------------ key confinement */

/* The private scalar d from a SEC1 PEM, through openssl (an outside tool). */
static int private_scalar(const char *key_pem, uint8_t d[32])
{
    char der_path[1024];
    uint8_t *der = NULL;
    size_t len = 0;
    nu_path_fmt(der_path, sizeof(der_path), "%s/key.der", tmp);
    if (nu_test_sh("openssl ec -in '%s' -outform DER -out '%s' 2>/dev/null", key_pem, der_path))
        return -1;
    int rc = nu_file_read(der_path, 4096, &der, &len);
    unlink(der_path);
    /* ECPrivateKey: 30 77 02 01 01 04 20 <d> ... */
    static const uint8_t prefix[] = {0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20};
    if (rc || len < sizeof(prefix) + 32 || memcmp(der, prefix, sizeof(prefix)) != 0) {
        free(der);
        return -1;
    }
    memcpy(d, der + sizeof(prefix), 32);
    nu_zero(der, len);
    free(der);
    return 0;
}

struct needle {
    const void *bytes;
    size_t len;
};

/* Number of files under dir (skipping any folder named "secret") holding a needle. */
static int scan_for(const char *dir, const struct needle *n, size_t count, int *out_files)
{
    DIR *d = opendir(dir);
    if (!d)
        return -1;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") || !strcmp(e->d_name, "secret"))
            continue;
        char path[1024];
        struct stat st;
        nu_path_fmt(path, sizeof(path), "%s/%s", dir, e->d_name);
        if (lstat(path, &st) != 0)
            continue;
        (*out_files)++;
        if (S_ISDIR(st.st_mode)) {
            if (scan_for(path, n, count, out_files) > 0) {
                closedir(d);
                return 1;
            }
            continue;
        }
        uint8_t *buf = NULL;
        size_t len = 0;
        if (nu_file_read(path, TSIM_IMAGE_MAX * 2, &buf, &len) != NU_OK)
            continue;
        for (size_t i = 0; i < count; i++) {
            if (contains(buf, len, n[i].bytes, n[i].len)) {
                fprintf(stderr, "private key material found in %s\n", path);
                free(buf);
                closedir(d);
                return 1;
            }
        }
        free(buf);
    }
    closedir(d);
    return 0;
}

static void test_private_key_confined(void)
{
    uint8_t uid[TSIM_UID_LEN];
    struct tsim *t = new_chip(0, uid);
    drive(t, ST_LOCKED);
    char key_path[1024], secret_dir[1024];
    nu_path_fmt(key_path, sizeof(key_path), "%s/secret/key.pem", tsim_path(t));
    nu_path_fmt(secret_dir, sizeof(secret_dir), "%s/secret", tsim_path(t));
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(stat(key_path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    CU_ASSERT_EQUAL_FATAL(stat(secret_dir, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);

    uint8_t d[32];
    CU_ASSERT_EQUAL_FATAL(private_scalar(key_path, d), 0);
    char hex_lo[65], hex_up[65];
    nu_hex_encode(d, 32, hex_lo, sizeof(hex_lo));
    for (int i = 0; i < 64; i++)
        hex_up[i] = (char)(hex_lo[i] >= 'a' ? hex_lo[i] - 32 : hex_lo[i]);
    hex_up[64] = 0;
    /* The second base64 line-ish: the PEM body of the key file. */
    size_t pem_len = 0;
    char *pem = read_chip_file(t, "secret/key.pem", &pem_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pem);
    char *body = strchr(pem, '\n');
    CU_ASSERT_PTR_NOT_NULL_FATAL(body);
    body++;
    struct needle n[] = {{d, 32}, {hex_lo, 64}, {hex_up, 64}, {body, 40}};
    int files = 0;
    /* The whole targets tree, every chip, outside each secret/ folder. */
    CU_ASSERT_EQUAL(scan_for(targets, n, 4, &files), 0);
    CU_ASSERT_TRUE(files >= 4); /* state, pubkey.pem, image.bin, cert.pem at least */
    /* Nor in anything the link handed out. */
    uint8_t nonce[32] = {3}, sig[NU_P256_SIG_MAX], csr[NU_X509_CSR_MAX];
    size_t sig_len = 0, csr_len = 0;
    CU_ASSERT_EQUAL(tsim_attest(t, nonce, sig, sizeof(sig), &sig_len), NU_OK);
    CU_ASSERT_FALSE(contains(sig, sig_len, d, 32));
    tsim_destroy(t);
    t = new_chip(0, NULL);
    drive(t, ST_OTP);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, sizeof(csr), &csr_len), NU_OK);
    char path2[1024];
    nu_path_fmt(path2, sizeof(path2), "%s/secret/key.pem", tsim_path(t));
    uint8_t d2[32];
    CU_ASSERT_EQUAL(private_scalar(path2, d2), 0);
    CU_ASSERT_FALSE(contains(csr, csr_len, d2, 32));
    nu_zero(d, sizeof(d));
    nu_zero(d2, sizeof(d2));
    nu_zero(pem, pem_len);
    free(pem);
    tsim_destroy(t);
}

/* ------------------------------------------------------------ untrusted input */

static void test_untrusted_inputs(void)
{
    uint8_t csr[NU_X509_CSR_MAX], sig[NU_P256_SIG_MAX], nonce[32] = {0};
    size_t len = 0;
    struct tsim *t = new_chip(0, NULL);
    drive(t, ST_OTP);
    char long_cn[TSIM_CN_MAX + 2];
    memset(long_cn, 'a', sizeof(long_cn) - 1);
    long_cn[sizeof(long_cn) - 1] = 0;
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, long_cn, csr, sizeof(csr), &len), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "", csr, sizeof(csr), &len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, NULL, csr, sizeof(csr), &len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "a b/c", csr, sizeof(csr), &len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, 10, &len), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(state_of(t), TSIM_OTP_WRITTEN); /* refused commands changed nothing */
    long_cn[TSIM_CN_MAX] = 0;                       /* exactly 63 is fine */
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, long_cn, csr, sizeof(csr), &len), NU_OK);

    /* Flash: sizes, overflowing offsets, gaps. */
    static uint8_t big[64];
    CU_ASSERT_EQUAL(tsim_flash_write(t, 0, NULL, 10), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(tsim_flash_write(t, 0, big, 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(tsim_flash_write(t, UINT32_MAX - 10, big, sizeof(big)), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(tsim_flash_write(t, TSIM_IMAGE_MAX - 10, big, sizeof(big)), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(tsim_flash_write(t, 0, big, (size_t)TSIM_IMAGE_MAX + 1), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(tsim_flash_write(t, 100, big, sizeof(big)), NU_ERR_INVALID_ARG); /* gap */
    CU_ASSERT_EQUAL(state_of(t), TSIM_KEYED);
    CU_ASSERT_EQUAL(tsim_flash_write(t, 0, big, sizeof(big)), NU_OK);
    CU_ASSERT_EQUAL(tsim_flash_write(t, 64, big, sizeof(big)), NU_OK); /* append */
    CU_ASSERT_EQUAL(tsim_flash_write(t, 32, big, sizeof(big)), NU_OK); /* rewrite inside */
    CU_ASSERT_EQUAL(tsim_flash_write(t, 200, big, sizeof(big)), NU_ERR_INVALID_ARG);

    /* Boot key must be a real point; certificate slot is bounded. */
    uint8_t bad_pub[65];
    memcpy(bad_pub, boot_pub, 65);
    bad_pub[64] ^= 1;
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, bad_pub), NU_ERR_DECODE);
    memset(bad_pub, 0, sizeof(bad_pub));
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, bad_pub), NU_ERR_DECODE);
    CU_ASSERT_TRUE(state_has(t, "boot_key="));
    uint8_t *cert = calloc(1, TSIM_CERT_MAX + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(cert);
    CU_ASSERT_EQUAL(tsim_write_cert(t, cert, TSIM_CERT_MAX + 1), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(tsim_write_cert(t, cert, 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(tsim_write_cert(t, NULL, 10), NU_ERR_INVALID_ARG);
    free(cert);
    char *pem = read_chip_file(t, "cert.pem", NULL);
    CU_ASSERT_PTR_NULL(pem); /* nothing written by refused commands */
    free(pem);

    /* Attestation output buffer too small. */
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_write_boot_key(t, boot_pub), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    CU_ASSERT_EQUAL(tsim_attest(t, nonce, sig, 8, &len), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(tsim_attest(t, NULL, sig, sizeof(sig), &len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(tsim_get_state(NULL, NULL), NU_ERR_INVALID_ARG);
    tsim_destroy(t);
}

/* ------------------------------------------------------------ faults */

static void test_fault_dead_and_keygen(void)
{
    uint8_t uid[TSIM_UID_LEN], csr[NU_X509_CSR_MAX];
    size_t len = 0;
    enum tsim_state s;
    struct tsim *t = new_chip(TSIM_FAULT_LINK, NULL);
    CU_ASSERT_EQUAL(tsim_read_uid(t, uid), NU_ERR_TARGET);
    CU_ASSERT_EQUAL(tsim_get_state(t, &s), NU_ERR_TARGET);
    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, rotpk), NU_ERR_TARGET);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_ERR_TARGET);
    tsim_destroy(t);

    t = new_chip(TSIM_FAULT_KEYGEN, NULL);
    drive(t, ST_OTP);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, sizeof(csr), &len), NU_ERR_TARGET);
    CU_ASSERT_EQUAL(state_of(t), TSIM_OTP_WRITTEN);
    tsim_destroy(t);
}

static void test_fault_not_blank(void)
{
    uint8_t h[32], pub[65];
    struct tsim *t = new_chip(TSIM_FAULT_NOT_BLANK, NULL);
    CU_ASSERT_EQUAL(state_of(t), TSIM_KEYED);
    CU_ASSERT_EQUAL(tsim_otp_read_rotpk_hash(t, h), NU_OK);
    CU_ASSERT_NOT_EQUAL(memcmp(h, rotpk, 32), 0);
    CU_ASSERT_EQUAL(tsim_otp_write_rotpk_hash(t, rotpk), NU_ERR_STATE);
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub), NU_OK);
    tsim_destroy(t);
}

static void test_fault_csr_wrong_key(void)
{
    uint8_t csr[NU_X509_CSR_MAX], pub[65];
    size_t len = 0;
    struct nu_x509_csr_info info;
    struct tsim *t = new_chip(TSIM_FAULT_CSR_WRONG_KEY, NULL);
    drive(t, ST_OTP);
    CU_ASSERT_EQUAL(tsim_keygen_csr(t, "dev", csr, sizeof(csr), &len), NU_OK);
    CU_ASSERT_EQUAL(nu_x509_csr_parse_verify(csr, len, &info), NU_OK); /* well-formed */
    CU_ASSERT_EQUAL(tsim_read_pubkey(t, pub), NU_OK);
    CU_ASSERT_NOT_EQUAL(memcmp(info.pub, pub, 65), 0); /* but not the chip's key */
    tsim_destroy(t);
}

static void test_fault_bad_attest_and_fake_boot(void)
{
    uint8_t uid[TSIM_UID_LEN];
    struct tsim *t = new_chip(TSIM_FAULT_BAD_ATTEST, uid);
    drive(t, ST_BOOTED);
    CU_ASSERT_FALSE(attest_verifies(t, uid));
    tsim_destroy(t);

    /* Claims to boot an image of the wrong key; attestation gives it away. */
    t = new_chip(TSIM_FAULT_FAKE_BOOT, uid);
    drive(t, ST_PROGRAMMED);
    CU_ASSERT_EQUAL(flash_image(t, img_other, img_other_len), NU_OK);
    CU_ASSERT_EQUAL(tsim_reset(t), NU_OK);
    CU_ASSERT_EQUAL(state_of(t), TSIM_BOOTED);
    CU_ASSERT_FALSE(attest_verifies(t, uid));
    tsim_destroy(t);
}

static void test_fault_flaky(void)
{
    uint8_t uid[TSIM_UID_LEN], h[32];
    struct tsim *t = new_chip(TSIM_FAULT_FLAKY, uid);
    int ok = 0, failed = 0;
    for (int i = 0; i < 400; i++) {
        int rc = tsim_read_uid(t, h);
        CU_ASSERT_TRUE(rc == NU_OK || rc == NU_ERR_TARGET);
        rc == NU_OK ? ok++ : failed++;
    }
    CU_ASSERT_TRUE(ok > 200 && failed > 40); /* 1 in 4 fails */
    /* A failed command did nothing: retrying gets through, once. */
    int rc;
    while ((rc = tsim_otp_write_rotpk_hash(t, rotpk)) == NU_ERR_TARGET)
        ;
    CU_ASSERT_EQUAL(rc, NU_OK);
    tsim_destroy(t);
    CU_ASSERT_EQUAL(tsim_open(targets, uid, NULL, &t), NU_OK); /* without the fault */
    CU_ASSERT_EQUAL(tsim_otp_read_rotpk_hash(t, h), NU_OK);
    CU_ASSERT_EQUAL(memcmp(h, rotpk, 32), 0);
    tsim_destroy(t);
}

static void test_slow_flash(void)
{
    uint8_t uid[TSIM_UID_LEN];
    struct tsim_opts o = {.flash_us_per_kib = 1000}; /* 1 ms per KiB */
    struct tsim *t = NULL;
    next_uid(uid);
    CU_ASSERT_EQUAL_FATAL(tsim_create(targets, uid, &o, &t), NU_OK);
    drive(t, ST_KEYED);
    uint64_t t0 = nu_mono_ms();
    CU_ASSERT_EQUAL(flash_image(t, img, img_len), NU_OK); /* ~20 KiB */
    uint64_t ms = nu_mono_ms() - t0;
    CU_ASSERT_TRUE(ms >= img_len / 1024);
    tsim_destroy(t);
}

/* ------------------------------------------------------------ feeder */

#define FEED_TOTAL 40
#define FEED_THREADS 4

struct feed_arg {
    struct tsim_feeder *f;
    uint8_t uids[FEED_TOTAL][TSIM_UID_LEN];
    int n;
    int errors;
};

static void *feed_worker(void *p)
{
    struct feed_arg *a = p;
    for (;;) {
        struct tsim *t = NULL;
        int rc = tsim_feeder_next(a->f, &t);
        if (rc == NU_ERR_NOT_FOUND)
            break;
        enum tsim_state s;
        if (rc || a->n >= FEED_TOTAL || tsim_read_uid(t, a->uids[a->n]) != NU_OK ||
            tsim_get_state(t, &s) != NU_OK || s != TSIM_BLANK)
            a->errors++;
        else
            a->n++;
        tsim_destroy(t);
    }
    return NULL;
}

static int count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    int n = 0;
    struct dirent *e;
    while (d && (e = readdir(d)))
        n += strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
    if (d)
        closedir(d);
    return n;
}

static void test_feeder_threads(void)
{
    char dir[600];
    nu_path_fmt(dir, sizeof(dir), "%s/feeder", tmp);
    struct tsim_feeder *f = NULL;
    CU_ASSERT_EQUAL_FATAL(tsim_feeder_create(dir, FEED_TOTAL, NULL, &f), NU_OK);
    CU_ASSERT_EQUAL(tsim_feeder_remaining(f), FEED_TOTAL);
    static struct feed_arg args[FEED_THREADS];
    pthread_t th[FEED_THREADS];
    for (int i = 0; i < FEED_THREADS; i++) {
        memset(&args[i], 0, sizeof(args[i]));
        args[i].f = f;
        CU_ASSERT_EQUAL_FATAL(pthread_create(&th[i], NULL, feed_worker, &args[i]), 0);
    }
    int total = 0, errors = 0;
    for (int i = 0; i < FEED_THREADS; i++) {
        pthread_join(th[i], NULL);
        total += args[i].n;
        errors += args[i].errors;
    }
    CU_ASSERT_EQUAL(errors, 0);
    CU_ASSERT_EQUAL(total, FEED_TOTAL);
    CU_ASSERT_EQUAL(tsim_feeder_remaining(f), 0);
    struct tsim *t = NULL;
    CU_ASSERT_EQUAL(tsim_feeder_next(f, &t), NU_ERR_NOT_FOUND);
    /* Distinct UIDs, one folder each, nothing else left behind. */
    int dup = 0;
    for (int i = 0; i < FEED_THREADS; i++)
        for (int j = 0; j < args[i].n; j++)
            for (int k = i; k < FEED_THREADS; k++)
                for (int l = (k == i ? j + 1 : 0); l < args[k].n; l++)
                    dup += memcmp(args[i].uids[j], args[k].uids[l], TSIM_UID_LEN) == 0;
    CU_ASSERT_EQUAL(dup, 0);
    CU_ASSERT_EQUAL(count_entries(dir), FEED_TOTAL); /* no half-made .new-* folders */
    tsim_feeder_destroy(f);
}

static void test_feeder_fault_every(void)
{
    char dir[600];
    nu_path_fmt(dir, sizeof(dir), "%s/feeder-faults", tmp);
    struct tsim_feeder *f = NULL;
    CU_ASSERT_EQUAL_FATAL(tsim_feeder_create(dir, 9, NULL, &f), NU_OK);
    CU_ASSERT_EQUAL(tsim_feeder_set_fault_every(f, 3, TSIM_FAULT_LINK), NU_OK);
    for (int i = 1; i <= 9; i++) {
        struct tsim *t = NULL;
        uint8_t uid[TSIM_UID_LEN];
        CU_ASSERT_EQUAL_FATAL(tsim_feeder_next(f, &t), NU_OK);
        CU_ASSERT_EQUAL(tsim_read_uid(t, uid), i % 3 == 0 ? NU_ERR_TARGET : NU_OK);
        tsim_destroy(t);
    }
    struct tsim *t = NULL;
    CU_ASSERT_EQUAL(tsim_feeder_next(f, &t), NU_ERR_NOT_FOUND);
    tsim_feeder_destroy(f);
}

/* ------------------------------------------------------------ rate (printed) */

static void test_rate_happy_path(void)
{
    const int n = 40;
    uint64_t t0 = nu_mono_ms();
    for (int i = 0; i < n; i++) {
        uint8_t uid[TSIM_UID_LEN];
        struct tsim *t = new_chip(0, uid);
        CU_ASSERT_PTR_NOT_NULL_FATAL(t);
        drive(t, ST_BOOTED);
        CU_ASSERT_TRUE(attest_verifies(t, uid));
        CU_ASSERT_EQUAL(tsim_lock(t), NU_OK);
        tsim_destroy(t);
    }
    uint64_t ms = nu_mono_ms() - t0;
    printf("\n  tsim happy path (create..lock, %zu-byte image, 4 KiB chunks, incl. test-side "
           "cert issue + verifies): %d chips in %llu ms = %.1f chips/s\n",
           img_len, n, (unsigned long long)ms, ms ? n * 1000.0 / (double)ms : 0.0);
}

int main(void)
{
    static const struct nu_test_case lifecycle[] = {
        {"happy path: OTP, keygen+CSR, flash, boot, attest, lock", test_happy_path},
        {"OTP is write-once", test_otp_write_once},
        {"OTP security counter only rises", test_security_counter_only_rises},
        {"keygen before OTP and twice refused", test_keygen_refusals},
        {"attest and lock need a good boot", test_attest_and_lock_need_boot},
        {"a write after boot needs a new boot", test_write_after_boot_needs_new_boot},
        {NULL, NULL},
    };
    static const struct nu_test_case boot[] = {
        {"wrong boot key refused", test_boot_refuses_wrong_boot_key},
        {"image signed by another key refused", test_boot_refuses_image_of_other_key},
        {"one flipped flash byte refused", test_boot_refuses_flipped_byte},
        {"truncated, missing, padded image refused", test_boot_refuses_truncated_and_missing},
        {"missing boot key refused", test_boot_refuses_missing_boot_key},
        {"rollback below the OTP counter refused", test_boot_refuses_rollback},
        {NULL, NULL},
    };
    static const struct nu_test_case persist[] = {
        {"reopen keeps every state", test_reopen_keeps_state},
        {"programmer crash mid-flash: reopened chip not bootable", test_crash_mid_flash},
        {"commits swap state with its shadow, no new files", test_commits_swap_two_files},
        {"no_sync: a programmer crash still leaves a consistent chip",
         test_no_sync_survives_programmer_crash},
        {"open/create errors, damaged state refused", test_open_and_create_errors},
        {"private key 0600 and nowhere else", test_private_key_confined},
        {"untrusted inputs bounded", test_untrusted_inputs},
        {NULL, NULL},
    };
    static const struct nu_test_case faults[] = {
        {"dead chip and keygen fault", test_fault_dead_and_keygen},
        {"chip arrives not blank", test_fault_not_blank},
        {"CSR for a key the chip does not hold", test_fault_csr_wrong_key},
        {"bad attestation and fake boot", test_fault_bad_attest_and_fake_boot},
        {"flaky link", test_fault_flaky},
        {"slow flash", test_slow_flash},
        {NULL, NULL},
    };
    static const struct nu_test_case feeder[] = {
        {"N distinct chips across 4 threads then NOT_FOUND", test_feeder_threads},
        {"fault every n-th chip", test_feeder_fault_every},
        {"happy path rate (printed)", test_rate_happy_path},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"tsim lifecycle", setup, teardown, lifecycle},
        {"tsim secure boot", setup, teardown, boot},
        {"tsim persistence and confinement", setup, teardown, persist},
        {"tsim faults", setup, teardown, faults},
        {"tsim feeder", setup, teardown, feeder},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("test_tsim", suites);
}
