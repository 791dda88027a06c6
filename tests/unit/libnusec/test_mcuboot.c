/*
 * nu_mcuboot: signed images have the exact MCUboot layout (checked byte by
 * byte against the format, not against our own parser), verify in one piece
 * and streamed, are accepted by the independent Python verifier
 * (tests/tools/mcuboot_verify.py), and every tampering, truncation,
 * malformed TLV layout or wrong key is refused with a typed error.
 *
 * Malformed-layout cases are built by a test-local image builder that signs
 * whatever it lays out, so a refusal there comes from the structure checks,
 * not from a broken hash or signature.
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_mcuboot.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

static char tmp[256];
static struct nu_p256_key *key1, *key2;
static struct nu_signer signer1, signer2;
static uint8_t hash1[NU_SHA256_LEN], hash2[NU_SHA256_LEN];

static const struct nu_mcuboot_version ver123 = {1, 2, 3, 4};

static int write_pub_pem(const uint8_t pub[NU_P256_PUB_LEN], const char *name)
{
    char pem[NU_P256_PUB_PEM_MAX], path[512];
    size_t n = 0;
    if (nu_p256_pub_to_pem(pub, pem, sizeof(pem), &n) != NU_OK ||
        nu_path_fmt(path, sizeof(path), "%s/%s", tmp, name) != NU_OK)
        return -1;
    return nu_file_write_atomic(path, pem, n, 0644) == NU_OK ? 0 : -1;
}

static int setup(void)
{
    if (nu_test_tmpdir("mcuboot", tmp, sizeof(tmp)) != 0)
        return -1;
    if (nu_p256_key_generate(&key1) != NU_OK || nu_p256_key_generate(&key2) != NU_OK ||
        nu_p256_key_signer(key1, &signer1) != NU_OK ||
        nu_p256_key_signer(key2, &signer2) != NU_OK ||
        nu_mcuboot_rotpk_hash(signer1.pub, hash1) != NU_OK ||
        nu_mcuboot_rotpk_hash(signer2.pub, hash2) != NU_OK)
        return -1;
    if (write_pub_pem(signer1.pub, "rotpk.pem") || write_pub_pem(signer2.pub, "other.pem"))
        return -1;
    return 0;
}

static int teardown(void)
{
    nu_p256_key_destroy(key1);
    nu_p256_key_destroy(key2);
    nu_test_rmtree(tmp);
    return 0;
}

static uint16_t rd16(const uint8_t *p)
{
    return (uint16_t)(p[0] | p[1] << 8);
}

static uint32_t rd32(const uint8_t *p)
{
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

static void wr16(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)v;
    p[1] = (uint8_t)(v >> 8);
}

static void wr32(uint8_t *p, uint32_t v)
{
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

static void fill(uint8_t *buf, size_t len, uint32_t seed)
{
    for (size_t i = 0; i < len; i++) {
        seed = seed * 1103515245u + 12345u;
        buf[i] = (uint8_t)(seed >> 16);
    }
}

/* Sign a payload of `len` pseudo-random bytes with signer1; aborts the test on failure. */
static uint8_t *sign_img(size_t len, size_t *out_len, uint8_t **out_payload)
{
    uint8_t *payload = malloc(len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    fill(payload, len, (uint32_t)len);
    uint8_t *img = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_mcuboot_sign(payload, len, &ver123, 7, 0, &signer1, &img, out_len),
                          NU_OK);
    if (out_payload)
        *out_payload = payload;
    else
        free(payload);
    return img;
}

static int save(const char *name, const uint8_t *buf, size_t len)
{
    char path[512];
    CU_ASSERT_EQUAL_FATAL(nu_path_fmt(path, sizeof(path), "%s/%s", tmp, name), NU_OK);
    return nu_file_write_atomic(path, buf, len, 0644);
}

/* Python verifier on tmp/name with tmp/keyname; its exit status. */
static int pyverify(const char *name, const char *keyname)
{
    return nu_test_sh("python3 '%s/tests/tools/mcuboot_verify.py' --key '%s/%s' '%s/%s' "
                      ">/dev/null",
                      NUSEC_SOURCE_DIR, tmp, keyname, tmp, name);
}

/* ---------------------------------------------------------------- layout */

static void test_layout_is_mcuboot(void)
{
    size_t len = 0, plen = 1000;
    uint8_t *payload = NULL;
    uint8_t *img = sign_img(plen, &len, &payload);
    /* header */
    CU_ASSERT_EQUAL(rd32(img), 0x96f3b83du);
    CU_ASSERT_EQUAL(rd32(img + 4), 0);     /* load address */
    CU_ASSERT_EQUAL(rd16(img + 8), 32);    /* header size */
    CU_ASSERT_EQUAL(rd16(img + 10), 12);   /* protected TLV area */
    CU_ASSERT_EQUAL(rd32(img + 12), plen); /* image size */
    CU_ASSERT_EQUAL(rd32(img + 16), 0);    /* flags */
    CU_ASSERT_EQUAL(img[20], 1);
    CU_ASSERT_EQUAL(img[21], 2);
    CU_ASSERT_EQUAL(rd16(img + 22), 3);
    CU_ASSERT_EQUAL(rd32(img + 24), 4);
    CU_ASSERT_EQUAL(rd32(img + 28), 0);
    CU_ASSERT_EQUAL(memcmp(img + 32, payload, plen), 0);
    /* protected TLVs: info 0x6908/12, SEC_CNT 0x0050 len 4 value 7 */
    const uint8_t *p = img + 32 + plen;
    static const uint8_t prot[12] = {0x08, 0x69, 12, 0, 0x50, 0, 4, 0, 7, 0, 0, 0};
    CU_ASSERT_EQUAL(memcmp(p, prot, sizeof(prot)), 0);
    /* unprotected: info 0x6907, SHA256, KEYHASH, ECDSA_SIG */
    const uint8_t *u = p + 12;
    size_t sig_len = len - (32 + plen + 12 + 4 + 36 + 36 + 4);
    CU_ASSERT_EQUAL(rd16(u), 0x6907);
    CU_ASSERT_EQUAL(rd16(u + 2), len - (32 + plen + 12));
    CU_ASSERT_EQUAL(rd16(u + 4), 0x10);
    CU_ASSERT_EQUAL(rd16(u + 6), 32);
    uint8_t digest[32];
    CU_ASSERT_EQUAL(nu_sha256(img, 32 + plen + 12, digest), NU_OK);
    CU_ASSERT_EQUAL(memcmp(u + 8, digest, 32), 0);
    CU_ASSERT_EQUAL(rd16(u + 40), 0x01);
    CU_ASSERT_EQUAL(rd16(u + 42), 32);
    CU_ASSERT_EQUAL(memcmp(u + 44, hash1, 32), 0);
    CU_ASSERT_EQUAL(rd16(u + 76), 0x22);
    CU_ASSERT_EQUAL(rd16(u + 78), sig_len);
    CU_ASSERT(sig_len >= 8 && sig_len <= 72);
    CU_ASSERT_EQUAL(u[80], 0x30); /* DER SEQUENCE */
    CU_ASSERT_EQUAL(u[81], sig_len - 2);
    CU_ASSERT_EQUAL(nu_p256_verify(signer1.pub, digest, u + 80, sig_len), NU_OK);
    free(img);
    free(payload);
}

static void test_load_addr_sets_ram_load(void)
{
    uint8_t payload[16] = {1};
    uint8_t *img = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(
        nu_mcuboot_sign(payload, sizeof(payload), &ver123, 1, 0x20000000u, &signer1, &img, &len),
        NU_OK);
    CU_ASSERT_EQUAL(rd32(img + 4), 0x20000000u);
    CU_ASSERT_EQUAL(rd32(img + 16), NU_MCUBOOT_F_RAM_LOAD);
    struct nu_mcuboot_info info;
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer1.pub, hash1, &info), NU_OK);
    CU_ASSERT_EQUAL(info.load_addr, 0x20000000u);
    CU_ASSERT_EQUAL(info.flags, NU_MCUBOOT_F_RAM_LOAD);
    free(img);
}

/* KEYHASH = SHA-256(DER SubjectPublicKeyInfo) — as openssl computes it from rotpk.pem. */
static void test_rotpk_hash_matches_openssl(void)
{
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("openssl pkey -pubin -in '%s/rotpk.pem' -outform DER | openssl dgst -sha256 "
                   "-r | cut -c1-64 > '%s/rotpk.sha'",
                   tmp, tmp),
        0);
    char path[512], hex[65];
    uint8_t *buf = NULL;
    size_t n = 0;
    nu_path_fmt(path, sizeof(path), "%s/rotpk.sha", tmp);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 100, &buf, &n), NU_OK);
    CU_ASSERT_EQUAL(nu_hex_encode(hash1, 32, hex, sizeof(hex)), NU_OK);
    CU_ASSERT(n >= 64 && memcmp(buf, hex, 64) == 0);
    free(buf);
    /* 91-byte SPKI */
    uint8_t der[128];
    size_t der_len = 0;
    CU_ASSERT_EQUAL(nu_p256_pub_to_der(signer1.pub, der, sizeof(der), &der_len), NU_OK);
    CU_ASSERT_EQUAL(der_len, 91);
    uint8_t bad[NU_P256_PUB_LEN] = {0x04}, scratch[NU_SHA256_LEN];
    CU_ASSERT_EQUAL(nu_mcuboot_rotpk_hash(bad, scratch), NU_ERR_DECODE);
}

/* ----------------------------------------------------------- verify OK */

static void test_sign_verify_info(void)
{
    size_t len = 0;
    uint8_t *img = sign_img(4096, &len, NULL);
    struct nu_mcuboot_info info;
    memset(&info, 0xaa, sizeof(info));
    CU_ASSERT_EQUAL_FATAL(nu_mcuboot_verify(img, len, signer1.pub, hash1, &info), NU_OK);
    CU_ASSERT_EQUAL(info.version.major, 1);
    CU_ASSERT_EQUAL(info.version.minor, 2);
    CU_ASSERT_EQUAL(info.version.revision, 3);
    CU_ASSERT_EQUAL(info.version.build, 4);
    CU_ASSERT_EQUAL(info.security_counter, 7);
    CU_ASSERT_EQUAL(info.payload_off, 32);
    CU_ASSERT_EQUAL(info.payload_len, 4096);
    CU_ASSERT_EQUAL(info.image_len, len);
    CU_ASSERT_EQUAL(info.load_addr, 0);
    uint8_t digest[32];
    nu_sha256(img, 32 + 4096 + 12, digest);
    CU_ASSERT_EQUAL(memcmp(info.digest, digest, 32), 0);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer1.pub, hash1, NULL), NU_OK);
    free(img);
}

static void test_python_verifier_accepts(void)
{
    size_t len = 0;
    uint8_t *img = sign_img(3000, &len, NULL);
    CU_ASSERT_EQUAL_FATAL(save("ok.img", img, len), NU_OK);
    CU_ASSERT_EQUAL(pyverify("ok.img", "rotpk.pem"), 0);
    char hex[65];
    nu_hex_encode(hash1, 32, hex, sizeof(hex));
    CU_ASSERT_EQUAL(nu_test_sh("python3 '%s/tests/tools/mcuboot_verify.py' --key '%s/rotpk.pem' "
                               "--rotpk-hash %s '%s/ok.img' | grep -qx OK",
                               NUSEC_SOURCE_DIR, tmp, hex, tmp),
                    0);
    CU_ASSERT_EQUAL(pyverify("ok.img", "other.pem"), 1); /* wrong key */
    free(img);
}

/* ------------------------------------------------------------- tampering */

static int is_refusal(int rc)
{
    return rc == NU_ERR_DECODE || rc == NU_ERR_TOO_LARGE || rc == NU_ERR_BAD_FIRMWARE ||
           rc == NU_ERR_BAD_SIGNATURE || rc == NU_ERR_NOT_SUPPORTED;
}

/* Flip every byte of a small image with several masks: always refused, and
 * with the precise code where the region decides it. */
static void test_every_byte_flip_refused_c(void)
{
    size_t len = 0, plen = 64;
    uint8_t *img = sign_img(plen, &len, NULL);
    const size_t u = 32 + plen + 12; /* unprotected info */
    static const uint8_t masks[] = {0x01, 0x80, 0xff};
    size_t refused = 0, tried = 0;
    for (size_t i = 0; i < len; i++) {
        for (size_t m = 0; m < sizeof(masks); m++) {
            img[i] ^= masks[m];
            int rc = nu_mcuboot_verify(img, len, signer1.pub, hash1, NULL);
            img[i] ^= masks[m];
            tried++;
            refused += rc != NU_OK;
            if (!is_refusal(rc))
                printf("\n    byte %zu mask %02x: %s\n", i, masks[m], nu_err_name(rc));
            CU_ASSERT(is_refusal(rc));
            if (i >= 32 && i < 32 + plen)
                CU_ASSERT_EQUAL(rc, NU_ERR_BAD_FIRMWARE); /* payload: hash */
            if (i >= u + 8 && i < u + 40)
                CU_ASSERT_EQUAL(rc, NU_ERR_BAD_FIRMWARE); /* SHA256 value */
            if (i >= u + 44 && i < u + 76)
                CU_ASSERT_EQUAL(rc, NU_ERR_BAD_FIRMWARE); /* KEYHASH value */
            if (i >= u + 80)
                CU_ASSERT_EQUAL(rc, NU_ERR_BAD_SIGNATURE); /* signature value */
        }
    }
    CU_ASSERT_EQUAL(refused, tried);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer1.pub, hash1, NULL), NU_OK);
    printf("\n    %zu flips of a %zu-byte image, all refused\n", tried, len);
    free(img);
}

static void test_byte_flips_refused_python(void)
{
    size_t len = 0, plen = 64;
    uint8_t *img = sign_img(plen, &len, NULL);
    const size_t u = 32 + plen + 12;
    /* magic, load addr, hdr size, prot size, img size, flags, version, pad,
     * payload first/last, prot info, SEC_CNT value, unprot info/total,
     * SHA256 value, KEYHASH type/value, sig length/value */
    const size_t pos[] = {0,  5,   8, 10,    13,     16,     20,     29,     32,     95,     96,
                          99, 104, u, u + 2, u + 10, u + 40, u + 50, u + 78, u + 81, len - 1};
    char name[64];
    for (size_t k = 0; k < sizeof(pos) / sizeof(pos[0]); k++) {
        img[pos[k]] ^= 0x04;
        snprintf(name, sizeof(name), "flip_%03zu.img", pos[k]);
        CU_ASSERT_EQUAL(save(name, img, len), NU_OK);
        img[pos[k]] ^= 0x04;
    }
    /* One shell loop: fail if the verifier accepts any flipped image. */
    CU_ASSERT_EQUAL(
        nu_test_sh("cd '%s' && for f in flip_*.img; do python3 "
                   "'%s/tests/tools/mcuboot_verify.py' --key rotpk.pem \"$f\" "
                   ">/dev/null; [ $? -eq 1 ] || { echo \"python accepted $f\"; exit 1; }; "
                   "done",
                   tmp, NUSEC_SOURCE_DIR),
        0);
    free(img);
}

static void test_wrong_key_refused(void)
{
    size_t len = 0;
    uint8_t *img = sign_img(100, &len, NULL);
    /* The verifier trusts key2: KEYHASH is key1's. */
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer2.pub, hash2, NULL), NU_ERR_BAD_FIRMWARE);
    /* Caller's public key does not match its ROTPK hash. */
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer2.pub, hash1, NULL), NU_ERR_BAD_FIRMWARE);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer1.pub, hash2, NULL), NU_ERR_BAD_FIRMWARE);
    uint8_t bad_pub[NU_P256_PUB_LEN];
    memcpy(bad_pub, signer1.pub, sizeof(bad_pub));
    bad_pub[64] ^= 1; /* off the curve */
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, bad_pub, hash1, NULL), NU_ERR_DECODE);
    free(img);
    /* Signed by key2 but claiming key1's KEYHASH: only the signature catches it. */
    uint8_t payload[50] = {0};
    CU_ASSERT_EQUAL_FATAL(
        nu_mcuboot_sign(payload, sizeof(payload), &ver123, 1, 0, &signer2, &img, &len), NU_OK);
    memcpy(img + 32 + 50 + 12 + 44, hash1, 32);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer1.pub, hash1, NULL), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(save("forged.img", img, len), NU_OK);
    CU_ASSERT_EQUAL(pyverify("forged.img", "rotpk.pem"), 1);
    free(img);
}

static void test_truncated_at_every_length(void)
{
    size_t len = 0;
    uint8_t *img = sign_img(200, &len, NULL);
    for (size_t n = 0; n < len; n++) {
        uint8_t *cut = malloc(n ? n : 1); /* exact size: ASan catches any over-read */
        CU_ASSERT_PTR_NOT_NULL_FATAL(cut);
        memcpy(cut, img, n);
        int rc = nu_mcuboot_verify(cut, n, signer1.pub, hash1, NULL);
        if (rc != NU_ERR_DECODE)
            printf("\n    truncated at %zu: %s\n", n, nu_err_name(rc));
        CU_ASSERT_EQUAL(rc, NU_ERR_DECODE);
        free(cut);
    }
    /* Trailing bytes are refused too (small: DECODE, beyond the TLV bound: TOO_LARGE). */
    uint8_t *longer = malloc(len + 1000);
    memcpy(longer, img, len);
    memset(longer + len, 0xff, 1000);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(longer, len + 1, signer1.pub, hash1, NULL), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(longer, len + 1000, signer1.pub, hash1, NULL),
                    NU_ERR_TOO_LARGE);
    free(longer);
    free(img);
}

/* --------------------------------------------- test-local image builder */

enum { TB_SHA, TB_KEYHASH, TB_SIG, TB_RAW };

struct tb_tlv {
    int what;
    uint16_t type;    /* TB_RAW */
    const void *raw;  /* TB_RAW */
    uint16_t raw_len; /* TB_RAW */
};

/* Header of hdr_size bytes (0xff padding past 32, like imgtool --pad-header). */
static size_t tb_header(uint8_t *h, uint32_t magic, uint16_t hdr_size, uint16_t prot_size,
                        uint32_t img_size, uint32_t flags)
{
    size_t n = hdr_size < 32 ? 32 : hdr_size;
    memset(h, 0xff, n);
    memset(h, 0, 32);
    wr32(h, magic);
    wr16(h + 8, hdr_size);
    wr16(h + 10, prot_size);
    wr32(h + 12, img_size);
    wr32(h + 16, flags);
    h[20] = 9;
    wr32(h + 24, 77);
    return n;
}

static const uint8_t std_prot[12] = {0x08, 0x69, 12, 0, 0x50, 0, 4, 0, 5, 0, 0, 0};

/*
 * hdr||payload||prot, then an unprotected area made of `tlvs` whose total is
 * the real size + tot_adjust. The SHA256/KEYHASH/signature are computed over
 * exactly hdr||payload||prot (hashed = hash_len bytes of it, default all)
 * with key1. Returns the image length (out has room for 8 KiB).
 */
static size_t tb_build(uint8_t *out, const uint8_t *hdr, size_t hdr_len, size_t plen,
                       const uint8_t *prot, size_t prot_len, const struct tb_tlv *tlvs, size_t n,
                       int tot_adjust)
{
    size_t off = 0;
    memcpy(out, hdr, hdr_len);
    off += hdr_len;
    fill(out + off, plen, 42);
    off += plen;
    memcpy(out + off, prot, prot_len);
    off += prot_len;
    uint8_t digest[32], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    CU_ASSERT_EQUAL_FATAL(nu_sha256(out, off, digest), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_sign_digest(key1, digest, sig, &sig_len), NU_OK);
    size_t info = off;
    off += 4;
    for (size_t i = 0; i < n; i++) {
        const void *v = tlvs[i].what == TB_SHA       ? digest
                        : tlvs[i].what == TB_KEYHASH ? hash1
                        : tlvs[i].what == TB_SIG     ? sig
                                                     : tlvs[i].raw;
        size_t l = tlvs[i].what == TB_SIG ? sig_len : tlvs[i].what == TB_RAW ? tlvs[i].raw_len : 32;
        uint16_t type = tlvs[i].what == TB_SHA       ? 0x10
                        : tlvs[i].what == TB_KEYHASH ? 0x01
                        : tlvs[i].what == TB_SIG     ? 0x22
                                                     : tlvs[i].type;
        wr16(out + off, type);
        wr16(out + off + 2, (uint32_t)l);
        memcpy(out + off + 4, v, l);
        off += 4 + l;
    }
    wr16(out + info, 0x6907);
    wr16(out + info + 2, (uint32_t)((int)(off - info) + tot_adjust));
    return off;
}

#define T_SHA                                                                                      \
    {                                                                                              \
        TB_SHA, 0, NULL, 0                                                                         \
    }
#define T_KH                                                                                       \
    {                                                                                              \
        TB_KEYHASH, 0, NULL, 0                                                                     \
    }
#define T_SIG                                                                                      \
    {                                                                                              \
        TB_SIG, 0, NULL, 0                                                                         \
    }
#define T_RAW(type, p, n)                                                                          \
    {                                                                                              \
        TB_RAW, type, p, n                                                                         \
    }

static const struct tb_tlv std_tlvs[] = {T_SHA, T_KH, T_SIG};

static int tb_verify(const uint8_t *img, size_t len)
{
    return nu_mcuboot_verify(img, len, signer1.pub, hash1, NULL);
}

static void test_builder_sanity_and_big_header(void)
{
    static uint8_t img[8192];
    uint8_t hdr[0x200];
    size_t hl = tb_header(hdr, 0x96f3b83du, 32, 12, 100, 0);
    size_t len = tb_build(img, hdr, hl, 100, std_prot, 12, std_tlvs, 3, 0);
    CU_ASSERT_EQUAL(tb_verify(img, len), NU_OK);
    /* imgtool --header-size 0x200 --pad-header: header padded with 0xff */
    hl = tb_header(hdr, 0x96f3b83du, 0x200, 12, 100, 0);
    len = tb_build(img, hdr, hl, 100, std_prot, 12, std_tlvs, 3, 0);
    struct nu_mcuboot_info info;
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer1.pub, hash1, &info), NU_OK);
    CU_ASSERT_EQUAL(info.payload_off, 0x200);
    CU_ASSERT_EQUAL(info.payload_len, 100);
    CU_ASSERT_EQUAL(info.security_counter, 5);
    CU_ASSERT_EQUAL(info.version.major, 9);
    CU_ASSERT_EQUAL(info.version.build, 77);
    CU_ASSERT_EQUAL(save("hdr200.img", img, len), NU_OK);
    CU_ASSERT_EQUAL(pyverify("hdr200.img", "rotpk.pem"), 0);
    /* TLVs in another order (KEYHASH still before the signature) */
    const struct tb_tlv order[] = {T_KH, T_SIG, T_SHA};
    hl = tb_header(hdr, 0x96f3b83du, 32, 12, 100, 0);
    len = tb_build(img, hdr, hl, 100, std_prot, 12, order, 3, 0);
    CU_ASSERT_EQUAL(tb_verify(img, len), NU_OK);
}

#define ADJ_TOT_3 (-100000) /* sentinel: unprotected total field = 3 */
#define ADJ_TOT_MAX 100000  /* sentinel: unprotected total field = 65535 */

/* Each case: a fully signed image whose only fault is its structure. */
static void test_malformed_structure(void)
{
    static uint8_t img[8192];
    uint8_t hdr[64];
    size_t hl = tb_header(hdr, 0x96f3b83du, 32, 12, 100, 0), len;
    const uint8_t sec_raw[4] = {1, 0, 0, 0};
    const uint8_t zero32[64] = {0}; /* room for the oversize cases */
    const uint8_t fake_sig[8] = {0x30, 6, 2, 1, 1, 2, 1, 1};
    struct {
        const char *what;
        struct tb_tlv t[5];
        size_t n;
        int adj;
        int want;
    } cases[] = {
        {"missing SHA256", {T_KH, T_SIG}, 2, 0, NU_ERR_DECODE},
        {"missing KEYHASH", {T_SHA, T_SIG}, 2, 0, NU_ERR_DECODE},
        {"missing signature", {T_SHA, T_KH}, 2, 0, NU_ERR_DECODE},
        {"duplicate SHA256", {T_SHA, T_SHA, T_KH, T_SIG}, 4, 0, NU_ERR_DECODE},
        {"duplicate KEYHASH", {T_SHA, T_KH, T_KH, T_SIG}, 4, 0, NU_ERR_DECODE},
        {"two signatures", {T_SHA, T_KH, T_SIG, T_SIG}, 4, 0, NU_ERR_DECODE},
        {"signature before KEYHASH", {T_SHA, T_SIG, T_KH}, 3, 0, NU_ERR_DECODE},
        {"unknown TLV 0x40", {T_SHA, T_KH, T_SIG, T_RAW(0x40, zero32, 12)}, 4, 0, NU_ERR_DECODE},
        {"SEC_CNT unprotected", {T_SHA, T_KH, T_SIG, T_RAW(0x50, sec_raw, 4)}, 4, 0, NU_ERR_DECODE},
        {"PUBKEY TLV", {T_SHA, T_KH, T_SIG, T_RAW(0x02, zero32, 32)}, 4, 0, NU_ERR_DECODE},
        {"type with high byte set (0x0110)",
         {T_RAW(0x0110, zero32, 32), T_KH, T_SIG},
         3,
         0,
         NU_ERR_DECODE},
        {"SHA256 of 31 bytes", {T_RAW(0x10, zero32, 31), T_KH, T_SIG}, 3, 0, NU_ERR_DECODE},
        {"KEYHASH of 33 bytes", {T_SHA, T_RAW(0x01, zero32, 33), T_SIG}, 3, 0, NU_ERR_DECODE},
        {"signature of 7 bytes", {T_SHA, T_KH, T_RAW(0x22, fake_sig, 7)}, 3, 0, NU_ERR_DECODE},
        {"well-formed wrong signature",
         {T_SHA, T_KH, T_RAW(0x22, fake_sig, 8)},
         3,
         0,
         NU_ERR_BAD_SIGNATURE},
        {"unprotected total too short by 1", {T_SHA, T_KH, T_SIG}, 3, -1, NU_ERR_DECODE},
        {"unprotected total past the end", {T_SHA, T_KH, T_SIG}, 3, 1, NU_ERR_DECODE},
        {"unprotected total 65535", {T_SHA, T_KH, T_SIG}, 3, ADJ_TOT_MAX, NU_ERR_DECODE},
        {"unprotected total 3", {T_SHA, T_KH, T_SIG}, 3, ADJ_TOT_3, NU_ERR_DECODE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        /* The signature length varies: turn the sentinels into "total = 3 / 65535". */
        int adj = cases[i].adj;
        len = tb_build(img, hdr, hl, 100, std_prot, 12, cases[i].t, cases[i].n, 0);
        int tot = (int)(len - (32 + 100 + 12));
        if (adj == ADJ_TOT_3)
            adj = 3 - tot;
        if (adj == ADJ_TOT_MAX)
            adj = 65535 - tot;
        len = tb_build(img, hdr, hl, 100, std_prot, 12, cases[i].t, cases[i].n, adj);
        int rc = tb_verify(img, len);
        if (rc != cases[i].want)
            printf("\n    %s: got %s\n", cases[i].what, nu_err_name(rc));
        CU_ASSERT_EQUAL(rc, cases[i].want);
    }
}

/* A TLV whose length runs past its area / past the image. */
static void test_tlv_length_overflows(void)
{
    static uint8_t img[8192];
    uint8_t hdr[64];
    size_t hl = tb_header(hdr, 0x96f3b83du, 32, 12, 100, 0);
    size_t len = tb_build(img, hdr, hl, 100, std_prot, 12, std_tlvs, 3, 0);
    size_t u = 32 + 100 + 12;
    const uint16_t lens[] = {33, 0x7fff, 0xffff, 0x8000};
    for (size_t i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
        static uint8_t copy[8192];
        memcpy(copy, img, len);
        wr16(copy + u + 6, lens[i]); /* SHA256 length */
        CU_ASSERT_EQUAL(tb_verify(copy, len), NU_ERR_DECODE);
        memcpy(copy, img, len);
        wr16(copy + u + 78, lens[i]); /* signature length (last TLV) */
        CU_ASSERT_EQUAL(tb_verify(copy, len), NU_ERR_DECODE);
        memcpy(copy, img, len);
        wr16(copy + 32 + 100 + 6, lens[i]); /* SEC_CNT length */
        CU_ASSERT_NOT_EQUAL(tb_verify(copy, len), NU_OK);
    }
    /* A TLV header cut in two at the end of its area. */
    uint8_t prot_cut[14] = {0x08, 0x69, 14, 0, 0x50, 0, 4, 0, 5, 0, 0, 0, 0x50, 0};
    hl = tb_header(hdr, 0x96f3b83du, 32, 14, 100, 0);
    len = tb_build(img, hdr, hl, 100, prot_cut, 14, std_tlvs, 3, 0);
    CU_ASSERT_EQUAL(tb_verify(img, len), NU_ERR_DECODE);
}

static void test_malformed_header_and_prot(void)
{
    static uint8_t img[8192];
    uint8_t hdr[64];
    size_t hl, len;
    struct {
        const char *what;
        uint32_t magic;
        uint16_t hdr_size, prot_size;
        uint32_t img_size, flags;
        const uint8_t *prot;
        size_t prot_len;
        int want;
    } cases[] = {
        {"magic V1", 0x96f3b83cu, 32, 12, 100, 0, std_prot, 12, NU_ERR_DECODE},
        {"no magic", 0xffffffffu, 32, 12, 100, 0, std_prot, 12, NU_ERR_DECODE},
        {"hdr_size 31", 0x96f3b83du, 31, 12, 100, 0, std_prot, 12, NU_ERR_DECODE},
        {"hdr_size 0", 0x96f3b83du, 0, 12, 100, 0, std_prot, 12, NU_ERR_DECODE},
        {"img_size + 1", 0x96f3b83du, 32, 12, 101, 0, std_prot, 12, NU_ERR_DECODE},
        {"img_size - 1", 0x96f3b83du, 32, 12, 99, 0, std_prot, 12, NU_ERR_DECODE},
        {"img_size past the end", 0x96f3b83du, 32, 12, 0x00ffffffu, 0, std_prot, 12, NU_ERR_DECODE},
        {"img_size over the limit", 0x96f3b83du, 32, 12, NU_MCUBOOT_MAX_PAYLOAD + 1, 0, std_prot,
         12, NU_ERR_TOO_LARGE},
        {"img_size 0xffffffff", 0x96f3b83du, 32, 12, 0xffffffffu, 0, std_prot, 12,
         NU_ERR_TOO_LARGE},
        {"encrypted AES128", 0x96f3b83du, 32, 12, 100, 0x4, std_prot, 12, NU_ERR_NOT_SUPPORTED},
        {"encrypted AES256", 0x96f3b83du, 32, 12, 100, 0x8, std_prot, 12, NU_ERR_NOT_SUPPORTED},
        {"protect size 0 (no SEC_CNT)", 0x96f3b83du, 32, 0, 100, 0, NULL, 0, NU_ERR_DECODE},
        {"protect size 2", 0x96f3b83du, 32, 2, 100, 0, std_prot, 2, NU_ERR_DECODE},
        {"protect size 13 vs area 12", 0x96f3b83du, 32, 13, 100, 0, std_prot, 12, NU_ERR_DECODE},
        {"protect size 11 vs area 12", 0x96f3b83du, 32, 11, 100, 0, std_prot, 12, NU_ERR_DECODE},
        {"protect size 0xffff", 0x96f3b83du, 32, 0xffff, 100, 0, std_prot, 12, NU_ERR_TOO_LARGE},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        hl = tb_header(hdr, cases[i].magic, cases[i].hdr_size, cases[i].prot_size,
                       cases[i].img_size, cases[i].flags);
        if (cases[i].hdr_size < 32)
            hl = 32;
        len = tb_build(img, hdr, hl, 100, cases[i].prot ? cases[i].prot : std_prot,
                       cases[i].prot_len, std_tlvs, 3, 0);
        int rc = tb_verify(img, len);
        if (rc != cases[i].want)
            printf("\n    %s: got %s\n", cases[i].what, nu_err_name(rc));
        CU_ASSERT_EQUAL(rc, cases[i].want);
    }
    /* Protected area contents: wrong magic, duplicate / wrong-size / foreign TLVs. */
    const uint8_t bad_magic[12] = {0x07, 0x69, 12, 0, 0x50, 0, 4, 0, 5, 0, 0, 0};
    const uint8_t dup[20] = {0x08, 0x69, 20, 0, 0x50, 0, 4, 0, 5, 0, 0, 0, 0x50, 0, 4, 0, 6};
    const uint8_t short_cnt[11] = {0x08, 0x69, 11, 0, 0x50, 0, 3, 0, 5, 0, 0};
    const uint8_t foreign[20] = {0x08, 0x69, 20, 0, 0x50, 0, 4, 0, 5, 0, 0, 0, 0x40, 0, 4, 0};
    const uint8_t empty[4] = {0x08, 0x69, 4, 0};
    const struct {
        const uint8_t *p;
        size_t n;
    } prots[] = {{bad_magic, 12}, {dup, 20}, {short_cnt, 11}, {foreign, 20}, {empty, 4}};
    for (size_t i = 0; i < sizeof(prots) / sizeof(prots[0]); i++) {
        hl = tb_header(hdr, 0x96f3b83du, 32, (uint16_t)prots[i].n, 100, 0);
        len = tb_build(img, hdr, hl, 100, prots[i].p, prots[i].n, std_tlvs, 3, 0);
        CU_ASSERT_EQUAL(tb_verify(img, len), NU_ERR_DECODE);
    }
}

static void test_garbage(void)
{
    uint8_t buf[4096];
    for (uint32_t seed = 1; seed <= 200; seed++) {
        size_t n = (seed * 37) % sizeof(buf);
        fill(buf, n, seed);
        if (seed % 2 && n >= 4)
            wr32(buf, NU_MCUBOOT_IMAGE_MAGIC);
        int rc = nu_mcuboot_verify(buf, n, signer1.pub, hash1, NULL);
        CU_ASSERT(is_refusal(rc));
    }
}

/* ------------------------------------------------------------- streaming */

static void test_stream_chunks(void)
{
    size_t len = 0;
    uint8_t *img = sign_img(5000, &len, NULL);
    struct nu_mcuboot_info one, st_info;
    CU_ASSERT_EQUAL_FATAL(nu_mcuboot_verify(img, len, signer1.pub, hash1, &one), NU_OK);
    const size_t chunks[] = {1, 3, 31, 32, 33, 64, 4096, 100000};
    for (size_t c = 0; c < sizeof(chunks) / sizeof(chunks[0]); c++) {
        struct nu_mcuboot_stream s;
        CU_ASSERT_EQUAL_FATAL(nu_mcuboot_stream_init(&s), NU_OK);
        for (size_t off = 0; off < len; off += chunks[c]) {
            size_t n = len - off < chunks[c] ? len - off : chunks[c];
            CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, img + off, n), NU_OK);
        }
        CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, NULL, 0), NU_OK);
        CU_ASSERT_EQUAL(nu_mcuboot_stream_final(&s, signer1.pub, hash1, &st_info), NU_OK);
        CU_ASSERT_EQUAL(memcmp(&one, &st_info, sizeof(one)), 0);
    }
    /* a tampered payload byte is caught at final */
    img[1000] ^= 1;
    struct nu_mcuboot_stream s;
    nu_mcuboot_stream_init(&s);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, img, len), NU_OK);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_final(&s, signer1.pub, hash1, NULL), NU_ERR_BAD_FIRMWARE);
    free(img);
}

static void test_stream_early_errors(void)
{
    size_t len = 0;
    uint8_t *img = sign_img(300, &len, NULL);
    struct nu_mcuboot_stream s;
    /* bad magic: refused as soon as the header is in, and the error sticks */
    img[0] ^= 1;
    nu_mcuboot_stream_init(&s);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, img, 31), NU_OK);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, img + 31, 1), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, img + 32, 10), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_final(&s, signer1.pub, hash1, NULL), NU_ERR_DECODE);
    img[0] ^= 1;
    /* endless trailer: refused before it fills memory */
    nu_mcuboot_stream_init(&s);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, img, len), NU_OK);
    uint8_t junk[256];
    memset(junk, 0, sizeof(junk));
    int rc = NU_OK;
    for (int i = 0; i < 10 && rc == NU_OK; i++)
        rc = nu_mcuboot_stream_update(&s, junk, sizeof(junk));
    CU_ASSERT_EQUAL(rc, NU_ERR_TOO_LARGE);
    nu_mcuboot_stream_abort(&s);
    /* misuse */
    memset(&s, 0, sizeof(s));
    CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, img, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_final(&s, signer1.pub, hash1, NULL), NU_ERR_INVALID_ARG);
    nu_mcuboot_stream_init(&s);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_update(&s, NULL, 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_final(&s, NULL, hash1, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_stream_final(&s, signer1.pub, hash1, NULL), NU_ERR_INVALID_ARG);
    nu_mcuboot_stream_abort(NULL);
    free(img);
}

/* ------------------------------------------------------------- signing */

static int failing_sign(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    (void)ctx;
    (void)digest;
    (void)sig;
    (void)sig_len;
    return NU_ERR_HSM;
}

static int oversize_sign(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    (void)ctx;
    (void)digest;
    memset(sig, 0, 4);
    *sig_len = 4;
    return NU_OK;
}

static void test_sign_errors(void)
{
    uint8_t payload[32] = {0}, *img = (uint8_t *)1;
    size_t len = 1;
    CU_ASSERT_EQUAL(nu_mcuboot_sign(NULL, 1, &ver123, 0, 0, &signer1, &img, &len),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_sign(payload, 0, &ver123, 0, 0, &signer1, &img, &len),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_sign(payload, 1, NULL, 0, 0, &signer1, &img, &len),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_sign(payload, 1, &ver123, 0, 0, NULL, &img, &len),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_sign(payload, 1, &ver123, 0, 0, &signer1, NULL, &len),
                    NU_ERR_INVALID_ARG);
    /* the length is checked before the payload is read */
    CU_ASSERT_EQUAL(
        nu_mcuboot_sign(payload, NU_MCUBOOT_MAX_PAYLOAD + 1, &ver123, 0, 0, &signer1, &img, &len),
        NU_ERR_TOO_LARGE);
    CU_ASSERT_PTR_NULL(img);
    CU_ASSERT_EQUAL(len, 0);
    /* the signer's error passes through; nothing is returned */
    struct nu_signer bad = signer1;
    bad.sign_digest = failing_sign;
    CU_ASSERT_EQUAL(nu_mcuboot_sign(payload, 32, &ver123, 0, 0, &bad, &img, &len), NU_ERR_HSM);
    CU_ASSERT_PTR_NULL(img);
    bad.sign_digest = oversize_sign;
    CU_ASSERT_EQUAL(nu_mcuboot_sign(payload, 32, &ver123, 0, 0, &bad, &img, &len), NU_ERR_CRYPTO);
    CU_ASSERT_PTR_NULL(img);
    /* a signer whose key is not the one it claims: caught by the self-check */
    bad = signer2;
    memcpy(bad.pub, signer1.pub, sizeof(bad.pub));
    CU_ASSERT_EQUAL(nu_mcuboot_sign(payload, 32, &ver123, 0, 0, &bad, &img, &len), NU_ERR_CRYPTO);
    CU_ASSERT_PTR_NULL(img);
    /* a signer with an invalid public key */
    bad = signer1;
    bad.pub[0] = 0x02;
    CU_ASSERT_EQUAL(nu_mcuboot_sign(payload, 32, &ver123, 0, 0, &bad, &img, &len), NU_ERR_DECODE);
    /* verify argument checks */
    CU_ASSERT_EQUAL(nu_mcuboot_verify(NULL, 10, signer1.pub, hash1, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(payload, 10, NULL, hash1, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(payload, 10, signer1.pub, NULL, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_verify(payload, NU_MCUBOOT_MAX_IMAGE + 1, signer1.pub, hash1, NULL),
                    NU_ERR_TOO_LARGE);
}

/* The largest payload signs and verifies; prints the rates. */
static void test_max_payload(void)
{
    size_t plen = NU_MCUBOOT_MAX_PAYLOAD, len = 0;
    uint8_t *payload = calloc(1, plen);
    CU_ASSERT_PTR_NOT_NULL_FATAL(payload);
    uint8_t *img = NULL;
    uint64_t t0 = nu_mono_ms();
    CU_ASSERT_EQUAL_FATAL(nu_mcuboot_sign(payload, plen, &ver123, 1, 0, &signer1, &img, &len),
                          NU_OK);
    uint64_t t1 = nu_mono_ms();
    struct nu_mcuboot_info info;
    CU_ASSERT_EQUAL(nu_mcuboot_verify(img, len, signer1.pub, hash1, &info), NU_OK);
    uint64_t t2 = nu_mono_ms();
    CU_ASSERT_EQUAL(info.payload_len, plen);
    printf("\n    16 MiB image: sign (hash+sign+self-verify) %llu ms, verify %llu ms\n",
           (unsigned long long)(t1 - t0), (unsigned long long)(t2 - t1));
    free(img);
    free(payload);
}

/* ------------------------------------------------------------- versions */

static void test_version_parse(void)
{
    struct nu_mcuboot_version v;
    CU_ASSERT_EQUAL(nu_mcuboot_version_parse("1.2.3", &v), NU_OK);
    CU_ASSERT(v.major == 1 && v.minor == 2 && v.revision == 3 && v.build == 0);
    CU_ASSERT_EQUAL(nu_mcuboot_version_parse("255.255.65535+4294967295", &v), NU_OK);
    CU_ASSERT(v.major == 255 && v.minor == 255 && v.revision == 65535 && v.build == 4294967295u);
    CU_ASSERT_EQUAL(nu_mcuboot_version_parse("0.0.0+0", &v), NU_OK);
    CU_ASSERT(v.major == 0 && v.build == 0);
    CU_ASSERT_EQUAL(nu_mcuboot_version_parse("10.20.300+4000", &v), NU_OK);
    CU_ASSERT(v.major == 10 && v.minor == 20 && v.revision == 300 && v.build == 4000);
    static const char *bad[] = {
        "",
        "1",
        "1.2",
        "1.2.3.4",
        "256.0.0",
        "1.256.0",
        "1.2.65536",
        "1.2.3+4294967296",
        "01.2.3",
        "1.02.3",
        "1.2.03",
        "1.2.3+01",
        " 1.2.3",
        "1.2.3 ",
        "1.2.3+",
        "+1.2.3",
        "-1.2.3",
        "1..3",
        "1.2.3+-1",
        "a.b.c",
        "1.2.3+99999999999",
        "1.2.3\n",
        "1.2.3++4",
        "1.2.+3",
        "0x1.2.3",
        "1.2.3-rc1",
        "99999999999.0.0",
    };
    struct nu_mcuboot_version keep = {7, 7, 7, 7};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        v = keep;
        int rc = nu_mcuboot_version_parse(bad[i], &v);
        if (rc != NU_ERR_DECODE)
            printf("\n    accepted '%s'\n", bad[i]);
        CU_ASSERT_EQUAL(rc, NU_ERR_DECODE);
        CU_ASSERT_EQUAL(memcmp(&v, &keep, sizeof(v)), 0);
    }
    CU_ASSERT_EQUAL(nu_mcuboot_version_parse(NULL, &v), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_mcuboot_version_parse("1.2.3", NULL), NU_ERR_INVALID_ARG);

    char out[NU_MCUBOOT_VERSION_STR_MAX];
    struct nu_mcuboot_version max = {255, 255, 65535, 4294967295u};
    CU_ASSERT_EQUAL(nu_mcuboot_version_format(&max, out, sizeof(out)), NU_OK);
    CU_ASSERT_STRING_EQUAL(out, "255.255.65535+4294967295");
    CU_ASSERT_EQUAL(nu_mcuboot_version_parse(out, &v), NU_OK);
    CU_ASSERT_EQUAL(memcmp(&v, &max, sizeof(v)), 0);
    CU_ASSERT_EQUAL(nu_mcuboot_version_format(&max, out, sizeof(out) - 1), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(nu_mcuboot_version_format(&ver123, out, sizeof(out)), NU_OK);
    CU_ASSERT_STRING_EQUAL(out, "1.2.3+4");
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"layout is MCUboot's, byte by byte", test_layout_is_mcuboot},
        {"load address sets RAM_LOAD (imgtool)", test_load_addr_sets_ram_load},
        {"ROTPK hash = sha256(SPKI DER) as openssl", test_rotpk_hash_matches_openssl},
        {"sign -> verify, info fields", test_sign_verify_info},
        {"python verifier accepts, wrong key refused", test_python_verifier_accepts},
        {"every byte x3 masks flipped: C refuses", test_every_byte_flip_refused_c},
        {"sampled byte flips: python refuses", test_byte_flips_refused_python},
        {"wrong key / forged KEYHASH refused", test_wrong_key_refused},
        {"truncated at every length, trailing bytes", test_truncated_at_every_length},
        {"builder sanity, 0x200 header, TLV order", test_builder_sanity_and_big_header},
        {"malformed TLV structure (signed)", test_malformed_structure},
        {"TLV length overflows", test_tlv_length_overflows},
        {"malformed header and protected area", test_malformed_header_and_prot},
        {"garbage", test_garbage},
        {"streaming in chunks = one-shot", test_stream_chunks},
        {"streaming early errors and misuse", test_stream_early_errors},
        {"sign errors and verify arguments", test_sign_errors},
        {"16 MiB payload", test_max_payload},
        {"version parse/format", test_version_parse},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_mcuboot", setup, teardown, cases}, {NULL}};
    return nu_test_run("test_mcuboot", suites);
}
