/*
 * nu_crypto: known-answer tests (SHA-256, HKDF RFC 5869, GCM spec), software
 * P-256 keys and their PEM/DER forms cross-checked with the openssl CLI,
 * ECDSA through the nu_signer interface, ECDH, and rejection of malformed keys,
 * points and signatures. Prints sign/verify rates.
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char tmp[256];

static int setup(void)
{
    return nu_test_tmpdir("crypto", tmp, sizeof(tmp));
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

/* hex -> bytes; aborts the test on bad hex (a bug in the test itself). */
static size_t unhex(const char *hex, uint8_t *out, size_t cap)
{
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(nu_hex_decode(hex, out, cap, &n), NU_OK);
    return n;
}

static void path_of(char *out, size_t cap, const char *name)
{
    CU_ASSERT_EQUAL_FATAL(nu_path_fmt(out, cap, "%s/%s", tmp, name), NU_OK);
}

static int write_file(const char *name, const void *buf, size_t len)
{
    char path[512];
    path_of(path, sizeof(path), name);
    return nu_file_write_atomic(path, buf, len, 0600);
}

/* Read tmp/name (written by openssl) into a heap buffer; caller frees. */
static uint8_t *read_file(const char *name, size_t *out_len)
{
    char path[512];
    uint8_t *buf = NULL;
    path_of(path, sizeof(path), name);
    CU_ASSERT_EQUAL(nu_file_read(path, 1u << 20, &buf, out_len), NU_OK);
    return buf;
}

static const char *G_HEX = "04"
                           "6b17d1f2e12c4247f8bce6e563a440f277037d812deb33a0f4a13945d898c296"
                           "4fe342e2fe1a7f9b8ee7eb4a7c0f9e162bce33576b315ececbb6406837bf51f5";

/* ------------------------------------------------------------------ SHA-256 */

static void test_sha256_known_answers(void)
{
    uint8_t d[32], want[32];
    CU_ASSERT_EQUAL(nu_sha256("abc", 3, d), NU_OK);
    unhex("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", want, 32);
    CU_ASSERT_EQUAL(memcmp(d, want, 32), 0);
    CU_ASSERT_EQUAL(nu_sha256(NULL, 0, d), NU_OK);
    unhex("e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", want, 32);
    CU_ASSERT_EQUAL(memcmp(d, want, 32), 0);
    CU_ASSERT_EQUAL(nu_sha256(NULL, 1, d), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_sha256("abc", 3, NULL), NU_ERR_INVALID_ARG);
}

static void test_sha256_incremental_matches_oneshot(void)
{
    size_t len = 300000;
    uint8_t *data = malloc(len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(data);
    nu_random(data, len);
    uint8_t one[32], inc[32];
    CU_ASSERT_EQUAL(nu_sha256(data, len, one), NU_OK);

    struct nu_sha256_ctx ctx;
    CU_ASSERT_EQUAL(nu_sha256_init(&ctx), NU_OK);
    size_t off = 0, step = 1;
    while (off < len) { /* odd, growing chunk sizes cross every block boundary */
        size_t n = len - off < step ? len - off : step;
        CU_ASSERT_EQUAL(nu_sha256_update(&ctx, data + off, n), NU_OK);
        off += n;
        step = step * 3 + 1;
    }
    CU_ASSERT_EQUAL(nu_sha256_update(&ctx, NULL, 0), NU_OK);
    CU_ASSERT_EQUAL(nu_sha256_final(&ctx, inc), NU_OK);
    CU_ASSERT_EQUAL(memcmp(one, inc, 32), 0);

    /* An abandoned context is wiped and can be restarted. */
    CU_ASSERT_EQUAL(nu_sha256_init(&ctx), NU_OK);
    CU_ASSERT_EQUAL(nu_sha256_update(&ctx, "x", 1), NU_OK);
    nu_sha256_abort(&ctx);
    CU_ASSERT_EQUAL(nu_sha256_init(&ctx), NU_OK);
    CU_ASSERT_EQUAL(nu_sha256_update(&ctx, data, len), NU_OK);
    CU_ASSERT_EQUAL(nu_sha256_final(&ctx, inc), NU_OK);
    CU_ASSERT_EQUAL(memcmp(one, inc, 32), 0);
    free(data);
}

/* ------------------------------------------------------------ HKDF, AES-GCM */

static void test_hkdf_rfc5869(void)
{
    uint8_t ikm[22], salt[13], info[10], okm[42], want[42];
    memset(ikm, 0x0b, sizeof(ikm));
    for (int i = 0; i < 13; i++)
        salt[i] = (uint8_t)i;
    for (int i = 0; i < 10; i++)
        info[i] = (uint8_t)(0xf0 + i);
    /* Test case 1 */
    CU_ASSERT_EQUAL(nu_hkdf_sha256(ikm, 22, salt, 13, info, 10, okm, 42), NU_OK);
    unhex("3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865",
          want, 42);
    CU_ASSERT_EQUAL(memcmp(okm, want, 42), 0);
    /* Test case 3: empty salt and info */
    CU_ASSERT_EQUAL(nu_hkdf_sha256(ikm, 22, NULL, 0, NULL, 0, okm, 42), NU_OK);
    unhex("8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8",
          want, 42);
    CU_ASSERT_EQUAL(memcmp(okm, want, 42), 0);
    CU_ASSERT_EQUAL(nu_hkdf_sha256(ikm, 22, NULL, 0, NULL, 0, okm, 0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_hkdf_sha256(ikm, 22, NULL, 0, NULL, 0, okm, 255 * 32 + 1),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_hkdf_sha256(NULL, 22, NULL, 0, NULL, 0, okm, 32), NU_ERR_INVALID_ARG);
}

/* GCM specification (McGrew & Viega) test case 16: AES-256, AAD, partial block. */
static const char *GCM_K = "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308";
static const char *GCM_N = "cafebabefacedbaddecaf888";
static const char *GCM_A = "feedfacedeadbeeffeedfacedeadbeefabaddad2";
static const char *GCM_P = "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a72"
                           "1c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39";
static const char *GCM_C = "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa"
                           "8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662";
static const char *GCM_T = "76fc6ece0f4e1768cddf8853bb2d551b";

struct gcm_case {
    uint8_t k[32], n[12], a[20], p[60], c[60], t[16];
};

static void gcm_load(struct gcm_case *g)
{
    unhex(GCM_K, g->k, 32);
    unhex(GCM_N, g->n, 12);
    unhex(GCM_A, g->a, 20);
    unhex(GCM_P, g->p, 60);
    unhex(GCM_C, g->c, 60);
    unhex(GCM_T, g->t, 16);
}

static void test_gcm_known_answer_and_roundtrip(void)
{
    struct gcm_case g;
    gcm_load(&g);
    uint8_t c[60], t[16], p[60];
    CU_ASSERT_EQUAL(nu_aes256gcm_encrypt(g.k, g.n, g.a, 20, g.p, 60, c, t), NU_OK);
    CU_ASSERT_EQUAL(memcmp(c, g.c, 60), 0);
    CU_ASSERT_EQUAL(memcmp(t, g.t, 16), 0);
    CU_ASSERT_EQUAL(nu_aes256gcm_decrypt(g.k, g.n, g.a, 20, c, 60, p, t), NU_OK);
    CU_ASSERT_EQUAL(memcmp(p, g.p, 60), 0);
    /* In place. */
    memcpy(p, g.p, 60);
    CU_ASSERT_EQUAL(nu_aes256gcm_encrypt(g.k, g.n, g.a, 20, p, 60, p, t), NU_OK);
    CU_ASSERT_EQUAL(memcmp(p, g.c, 60), 0);
    CU_ASSERT_EQUAL(nu_aes256gcm_decrypt(g.k, g.n, g.a, 20, p, 60, p, t), NU_OK);
    CU_ASSERT_EQUAL(memcmp(p, g.p, 60), 0);
    /* Empty plaintext and AAD: only a tag. */
    CU_ASSERT_EQUAL(nu_aes256gcm_encrypt(g.k, g.n, NULL, 0, NULL, 0, NULL, t), NU_OK);
    CU_ASSERT_EQUAL(nu_aes256gcm_decrypt(g.k, g.n, NULL, 0, NULL, 0, NULL, t), NU_OK);
    t[0] ^= 1;
    CU_ASSERT_EQUAL(nu_aes256gcm_decrypt(g.k, g.n, NULL, 0, NULL, 0, NULL, t), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(nu_aes256gcm_encrypt(NULL, g.n, NULL, 0, NULL, 0, NULL, t), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_aes256gcm_encrypt(g.k, g.n, NULL, 5, g.p, 60, c, t), NU_ERR_INVALID_ARG);
}

static int all_zero(const uint8_t *p, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (p[i])
            return 0;
    }
    return 1;
}

/* Decrypt with one input altered; expect TAMPERED and no plaintext in out. */
static void gcm_expect_tampered(struct gcm_case *g)
{
    uint8_t out[60];
    memset(out, 0xAA, sizeof(out));
    CU_ASSERT_EQUAL(nu_aes256gcm_decrypt(g->k, g->n, g->a, 20, g->c, 60, out, g->t),
                    NU_ERR_TAMPERED);
    CU_ASSERT_TRUE(all_zero(out, sizeof(out)));
}

static void test_gcm_tamper_zeroes_output(void)
{
    struct gcm_case g;
    uint8_t *fields[] = {g.k, g.n, g.a, g.c, g.c + 59, g.t, g.t + 15};
    for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); i++) {
        gcm_load(&g);
        *fields[i] ^= 0x80;
        gcm_expect_tampered(&g);
    }
    /* Shorter AAD and shorter ciphertext also fail. */
    gcm_load(&g);
    uint8_t out[60];
    CU_ASSERT_EQUAL(nu_aes256gcm_decrypt(g.k, g.n, g.a, 19, g.c, 60, out, g.t), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(nu_aes256gcm_decrypt(g.k, g.n, g.a, 20, g.c, 59, out, g.t), NU_ERR_TAMPERED);
    CU_ASSERT_TRUE(all_zero(out, 59));
}

/* -------------------------------------------------------------- P-256 keys */

static void test_key_generate_and_raw_import(void)
{
    struct nu_p256_key *k = NULL;
    uint8_t pub[65], g[65];
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    CU_ASSERT_EQUAL(nu_p256_key_pub(k, pub), NU_OK);
    CU_ASSERT_EQUAL(pub[0], 0x04);
    CU_ASSERT_EQUAL(nu_p256_pub_check(pub), NU_OK);
    nu_p256_key_destroy(k);
    nu_p256_key_destroy(NULL);

    /* d = 1 gives the generator; d = n-1 its negation; 0 and n are refused. */
    uint8_t d[32] = {0};
    d[31] = 1;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_import_priv(d, &k), NU_OK);
    nu_p256_key_pub(k, pub);
    unhex(G_HEX, g, 65);
    CU_ASSERT_EQUAL(memcmp(pub, g, 65), 0);
    nu_p256_key_destroy(k);

    unhex("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632550", d, 32);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_import_priv(d, &k), NU_OK);
    nu_p256_key_pub(k, pub);
    CU_ASSERT_EQUAL(memcmp(pub, g, 33), 0); /* same X */
    CU_ASSERT_NOT_EQUAL(memcmp(pub + 33, g + 33, 32), 0);
    nu_p256_key_destroy(k);

    k = (struct nu_p256_key *)1;
    d[31] = 0x51; /* n */
    CU_ASSERT_EQUAL(nu_p256_key_import_priv(d, &k), NU_ERR_DECODE);
    CU_ASSERT_PTR_NULL(k);
    memset(d, 0, sizeof(d));
    CU_ASSERT_EQUAL(nu_p256_key_import_priv(d, &k), NU_ERR_DECODE);
    memset(d, 0xff, sizeof(d));
    CU_ASSERT_EQUAL(nu_p256_key_import_priv(d, &k), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_p256_key_generate(NULL), NU_ERR_INVALID_ARG);
}

static void test_key_pem_roundtrip_and_openssl(void)
{
    struct nu_p256_key *k = NULL, *k2 = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    char pem[NU_P256_PRIV_PEM_MAX];
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_to_pem(k, pem, sizeof(pem), &len), NU_OK);
    CU_ASSERT_EQUAL(strlen(pem), len);
    CU_ASSERT_PTR_NOT_NULL(strstr(pem, "-----BEGIN EC PRIVATE KEY-----"));
    char small[64];
    CU_ASSERT_EQUAL(nu_p256_key_to_pem(k, small, sizeof(small), &len), NU_ERR_TOO_LARGE);

    /* Reload from text: same public key, and it signs for that key. */
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_from_pem(pem, strlen(pem), &k2), NU_OK);
    uint8_t p1[65], p2[65], dg[32] = {1, 2, 3}, sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    nu_p256_key_pub(k, p1);
    nu_p256_key_pub(k2, p2);
    CU_ASSERT_EQUAL(memcmp(p1, p2, 65), 0);
    CU_ASSERT_EQUAL(nu_p256_key_sign_digest(k2, dg, sig, &sig_len), NU_OK);
    CU_ASSERT_EQUAL(nu_p256_verify(p1, dg, sig, sig_len), NU_OK);
    nu_p256_key_destroy(k2);
    nu_zero(pem, sizeof(pem));

    /* File: atomic, 0600, openssl reads it and derives our public key. */
    char path[512];
    path_of(path, sizeof(path), "key.pem");
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_save_pem(k, path), NU_OK);
    struct stat st;
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    CU_ASSERT_EQUAL(nu_test_sh("openssl ec -in '%s/key.pem' -noout -check 2>/dev/null", tmp), 0);
    CU_ASSERT_EQUAL(
        nu_test_sh("openssl pkey -in '%s/key.pem' -pubout -out '%s/ossl.pub.pem'", tmp, tmp), 0);
    char mine[NU_P256_PUB_PEM_MAX];
    CU_ASSERT_EQUAL(nu_p256_pub_to_pem(p1, mine, sizeof(mine), &len), NU_OK);
    size_t olen = 0;
    uint8_t *ossl = read_file("ossl.pub.pem", &olen);
    CU_ASSERT_EQUAL(olen, len);
    if (ossl && olen == len)
        CU_ASSERT_EQUAL(memcmp(ossl, mine, len), 0); /* byte-identical PEM */
    free(ossl);

    CU_ASSERT_EQUAL_FATAL(nu_p256_key_load_pem(path, &k2), NU_OK);
    nu_p256_key_pub(k2, p2);
    CU_ASSERT_EQUAL(memcmp(p1, p2, 65), 0);
    nu_p256_key_destroy(k2);
    path_of(path, sizeof(path), "missing.pem");
    CU_ASSERT_EQUAL(nu_p256_key_load_pem(path, &k2), NU_ERR_NOT_FOUND);
    nu_p256_key_destroy(k);
}

/* Load a key openssl wrote (tmp/name) and check we derive openssl's public key. */
static void expect_openssl_key(const char *name)
{
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("openssl pkey -in '%s/%s' -pubout -out '%s/%s.pub'", tmp, name, tmp, name), 0);
    char path[512], pub_name[128];
    path_of(path, sizeof(path), name);
    struct nu_p256_key *k = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_load_pem(path, &k), NU_OK);
    snprintf(pub_name, sizeof(pub_name), "%s.pub", name);
    size_t len = 0;
    uint8_t *pem = read_file(pub_name, &len), theirs[65], ours[65];
    CU_ASSERT_EQUAL(nu_p256_pub_from_pem((char *)pem, len, theirs), NU_OK);
    nu_p256_key_pub(k, ours);
    CU_ASSERT_EQUAL(memcmp(ours, theirs, 65), 0);
    free(pem);
    nu_p256_key_destroy(k);
}

static void test_key_reads_openssl_formats(void)
{
    /* SEC1 with a leading EC PARAMETERS block, plain SEC1, SEC1 without the
     * public key, PKCS#8. */
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("cd '%s' && openssl ecparam -name prime256v1 -genkey -out ecparam.pem && "
                   "openssl ec -in ecparam.pem -out sec1.pem 2>/dev/null && openssl ec -in "
                   "ecparam.pem -no_public -out nopub.pem 2>/dev/null && openssl genpkey "
                   "-algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out p8.pem",
                   tmp),
        0);
    expect_openssl_key("ecparam.pem");
    expect_openssl_key("sec1.pem");
    expect_openssl_key("nopub.pem");
    expect_openssl_key("p8.pem");
}

static int load_named(const char *name)
{
    char path[512];
    path_of(path, sizeof(path), name);
    struct nu_p256_key *k = (struct nu_p256_key *)1;
    int rc = nu_p256_key_load_pem(path, &k);
    if (rc != NU_OK)
        CU_ASSERT_PTR_NULL(k);
    nu_p256_key_destroy(rc == NU_OK ? k : NULL);
    return rc;
}

static void test_key_rejects_other_and_malformed(void)
{
    const char *d = tmp;
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("cd '%s' && openssl ecparam -name secp384r1 -genkey -noout "
                                     "-out p384.pem && openssl ecparam -name secp256k1 -genkey "
                                     "-noout -out k1.pem && openssl genpkey -algorithm EC -pkeyopt "
                                     "ec_paramgen_curve:secp256k1 -out k1p8.pem && openssl "
                                     "genpkey -algorithm ed25519 -out ed.pem && openssl genpkey "
                                     "-algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out rsa.pem "
                                     "2>/dev/null && openssl ecparam -name prime256v1 -genkey "
                                     "-noout -out p256.pem && openssl ec -in p256.pem -aes256 "
                                     "-passout pass:x -out enc.pem 2>/dev/null && openssl ec -in "
                                     "p256.pem -pubout -out pub.pem 2>/dev/null",
                                     d),
                          0);
    CU_ASSERT_EQUAL(load_named("p256.pem"), NU_OK);
    CU_ASSERT_EQUAL(load_named("p384.pem"), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_EQUAL(load_named("k1.pem"), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_EQUAL(load_named("k1p8.pem"), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_EQUAL(load_named("ed.pem"), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_EQUAL(load_named("rsa.pem"), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_EQUAL(load_named("enc.pem"), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(load_named("pub.pem"), NU_ERR_DECODE);

    /* Truncated at every length: never a key, never a crash. */
    size_t len = 0;
    uint8_t *pem = read_file("p256.pem", &len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(pem);
    int ok = 0;
    for (size_t n = 0; n < len - 30; n++) { /* keep the END line out: */
        struct nu_p256_key *k = NULL;
        int rc = nu_p256_key_from_pem((char *)pem, n, &k);
        ok += rc == NU_OK;
        nu_p256_key_destroy(k);
    }
    CU_ASSERT_EQUAL(ok, 0);
    /* Garbage and a body bit flip. */
    struct nu_p256_key *k = NULL;
    CU_ASSERT_EQUAL(nu_p256_key_from_pem("hello", 5, &k), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_p256_key_from_pem("", 0, &k), NU_ERR_DECODE);
    pem[40] ^= 0x01;
    CU_ASSERT_NOT_EQUAL(nu_p256_key_from_pem((char *)pem, len, &k), NU_OK);
    nu_p256_key_destroy(k); /* only if the assertion above failed */
    k = NULL;
    free(pem);
    /* Oversize input is refused before parsing. */
    char *big = calloc(1, NU_PEM_IN_MAX + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    memset(big, 'A', NU_PEM_IN_MAX + 1);
    CU_ASSERT_EQUAL(nu_p256_key_from_pem(big, NU_PEM_IN_MAX + 1, &k), NU_ERR_TOO_LARGE);
    free(big);
    CU_ASSERT_EQUAL(nu_p256_key_from_pem(NULL, 5, &k), NU_ERR_INVALID_ARG);
}

/* SEC1 DER {1, d, [0] prime256v1, [1] pub} written as PEM without openssl parsing it. */
static void write_sec1(const char *name, const uint8_t d[32], const uint8_t pub[65])
{
    uint8_t der[121];
    static const uint8_t head[] = {0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20};
    static const uint8_t mid[] = {0xa0, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d,
                                  0x03, 0x01, 0x07, 0xa1, 0x44, 0x03, 0x42, 0x00};
    memcpy(der, head, 7);
    memcpy(der + 7, d, 32);
    memcpy(der + 39, mid, 17);
    memcpy(der + 56, pub, 65);
    char derfile[128];
    snprintf(derfile, sizeof(derfile), "%s.der", name);
    CU_ASSERT_EQUAL_FATAL(write_file(derfile, der, sizeof(der)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("cd '%s' && { echo '-----BEGIN EC PRIVATE KEY-----'; openssl base64 -in "
                   "'%s'; echo '-----END EC PRIVATE KEY-----'; } > '%s'",
                   tmp, derfile, name),
        0);
}

static void test_key_rejects_mismatched_public_key(void)
{
    uint8_t d[32], pub[65], other[65];
    struct nu_p256_key *a = NULL, *b = NULL;
    nu_random(d, sizeof(d));
    d[0] &= 0x7f; /* below n */
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_import_priv(d, &a), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&b), NU_OK);
    nu_p256_key_pub(a, pub);
    nu_p256_key_pub(b, other);
    write_sec1("good.pem", d, pub);
    write_sec1("mismatch.pem", d, other);
    CU_ASSERT_EQUAL(load_named("good.pem"), NU_OK);
    CU_ASSERT_EQUAL(load_named("mismatch.pem"), NU_ERR_DECODE);
    other[64] ^= 1; /* not on the curve */
    write_sec1("offcurve.pem", d, other);
    CU_ASSERT_EQUAL(load_named("offcurve.pem"), NU_ERR_DECODE);
    nu_p256_key_destroy(a);
    nu_p256_key_destroy(b);
}

/* ------------------------------------------------------------ public keys */

static void test_pub_der_pem_roundtrip_and_openssl(void)
{
    struct nu_p256_key *k = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    uint8_t pub[65], back[65], der[NU_P256_PUB_DER_LEN + 8];
    nu_p256_key_pub(k, pub);
    size_t der_len = 0, pem_len = 0;
    CU_ASSERT_EQUAL(nu_p256_pub_to_der(pub, der, sizeof(der), &der_len), NU_OK);
    CU_ASSERT_EQUAL(der_len, NU_P256_PUB_DER_LEN);
    CU_ASSERT_EQUAL(memcmp(der + 26, pub, 65), 0); /* the point ends the SPKI */
    CU_ASSERT_EQUAL(nu_p256_pub_from_der(der, der_len, back), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub, back, 65), 0);
    CU_ASSERT_EQUAL(nu_p256_pub_to_der(pub, der, 90, &der_len), NU_ERR_TOO_LARGE);

    char pem[NU_P256_PUB_PEM_MAX];
    CU_ASSERT_EQUAL(nu_p256_pub_to_pem(pub, pem, sizeof(pem), &pem_len), NU_OK);
    CU_ASSERT_PTR_NOT_NULL(strstr(pem, "-----BEGIN PUBLIC KEY-----"));
    memset(back, 0, sizeof(back));
    CU_ASSERT_EQUAL(nu_p256_pub_from_pem(pem, pem_len, back), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub, back, 65), 0);
    CU_ASSERT_EQUAL(nu_p256_pub_to_pem(pub, pem, 100, &pem_len), NU_ERR_TOO_LARGE);

    CU_ASSERT_EQUAL_FATAL(nu_p256_pub_to_pem(pub, pem, sizeof(pem), &pem_len), NU_OK);
    CU_ASSERT_EQUAL(write_file("pub.pem", pem, pem_len), NU_OK);
    CU_ASSERT_EQUAL(write_file("pub.der", der, NU_P256_PUB_DER_LEN), NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("openssl pkey -pubin -in '%s/pub.pem' -noout", tmp), 0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl pkey -pubin -inform DER -in '%s/pub.der' -noout", tmp), 0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl pkey -pubin -in '%s/pub.pem' -text -noout | grep -q "
                               "'NIST CURVE: P-256'",
                               tmp),
                    0);
    nu_p256_key_destroy(k);
}

static void test_pub_rejects_malformed(void)
{
    uint8_t pub[65], out[65], der[NU_P256_PUB_DER_LEN + 1];
    struct nu_p256_key *k = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    nu_p256_key_pub(k, pub);
    nu_p256_key_destroy(k);
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_p256_pub_to_der(pub, der, sizeof(der), &len), NU_OK);

    /* Points: identity, compressed prefixes, off-curve, coordinate >= p. */
    uint8_t bad[65] = {0x04};
    CU_ASSERT_EQUAL(nu_p256_pub_check(bad), NU_ERR_DECODE);
    memcpy(bad, pub, 65);
    bad[0] = 0x02;
    CU_ASSERT_EQUAL(nu_p256_pub_check(bad), NU_ERR_DECODE);
    bad[0] = 0x04;
    bad[64] ^= 1;
    CU_ASSERT_EQUAL(nu_p256_pub_check(bad), NU_ERR_DECODE);
    memset(bad + 1, 0xff, 64);
    CU_ASSERT_EQUAL(nu_p256_pub_check(bad), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_p256_pub_check(NULL), NU_ERR_INVALID_ARG);
    uint8_t none[1];
    CU_ASSERT_EQUAL(nu_p256_pub_to_der(bad, der + 0, 0, &len), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(nu_p256_pub_to_der(bad, none, 0, &len), NU_ERR_TOO_LARGE);
    uint8_t der2[NU_P256_PUB_DER_LEN];
    CU_ASSERT_EQUAL(nu_p256_pub_to_der(bad, der2, sizeof(der2), &len), NU_ERR_DECODE);

    /* DER: every truncation, a trailing byte, an off-curve point, oversize. */
    int ok = 0;
    for (size_t n = 0; n < NU_P256_PUB_DER_LEN; n++)
        ok += nu_p256_pub_from_der(der, n, out) == NU_OK;
    CU_ASSERT_EQUAL(ok, 0);
    der[NU_P256_PUB_DER_LEN] = 0;
    CU_ASSERT_EQUAL(nu_p256_pub_from_der(der, NU_P256_PUB_DER_LEN + 1, out), NU_ERR_DECODE);
    der[NU_P256_PUB_DER_LEN - 1] ^= 1;
    CU_ASSERT_EQUAL(nu_p256_pub_from_der(der, NU_P256_PUB_DER_LEN, out), NU_ERR_DECODE);
    uint8_t *big = calloc(1, NU_DER_IN_MAX + 1);
    CU_ASSERT_EQUAL(nu_p256_pub_from_der(big, NU_DER_IN_MAX + 1, out), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(nu_p256_pub_from_der(big, 100, out), NU_ERR_DECODE);
    free(big);
    CU_ASSERT_EQUAL(nu_p256_pub_from_pem("-----BEGIN PUBLIC KEY-----\n", 27, out), NU_ERR_DECODE);

    /* Other algorithms and curves are NOT_SUPPORTED, via PEM and via DER. */
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("cd '%s' && openssl ecparam -name secp384r1 -genkey -noout | openssl ec "
                   "-pubout -out p384.pub 2>/dev/null && openssl ecparam -name secp256k1 -genkey "
                   "-noout | openssl ec -pubout -out k1.pub 2>/dev/null && openssl genpkey "
                   "-algorithm ed25519 | openssl pkey -pubout -out ed.pub && openssl genpkey "
                   "-algorithm RSA -pkeyopt rsa_keygen_bits:1024 2>/dev/null | openssl pkey "
                   "-pubout -out rsa.pub && openssl pkey -pubin -in rsa.pub -outform DER -out "
                   "rsa.der",
                   tmp),
        0);
    const char *names[] = {"p384.pub", "k1.pub", "ed.pub", "rsa.pub"};
    for (size_t i = 0; i < 4; i++) {
        uint8_t *pem = read_file(names[i], &len);
        CU_ASSERT_EQUAL(nu_p256_pub_from_pem((char *)pem, len, out), NU_ERR_NOT_SUPPORTED);
        free(pem);
    }
    uint8_t *rsa = read_file("rsa.der", &len);
    CU_ASSERT_EQUAL(nu_p256_pub_from_der(rsa, len, out), NU_ERR_NOT_SUPPORTED);
    free(rsa);
}

/* ------------------------------------------------------ ECDSA through signer */

static void test_signer_sign_verify_and_openssl(void)
{
    struct nu_p256_key *k = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    struct nu_signer s;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_signer(k, &s), NU_OK);
    uint8_t pub[65];
    nu_p256_key_pub(k, pub);
    CU_ASSERT_EQUAL(memcmp(s.pub, pub, 65), 0);

    static const char msg[] = "firmware image bytes";
    uint8_t dg[32], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    nu_sha256(msg, sizeof(msg) - 1, dg);
    CU_ASSERT_EQUAL_FATAL(s.sign_digest(s.ctx, dg, sig, &sig_len), NU_OK);
    CU_ASSERT_TRUE(sig_len >= 8 && sig_len <= NU_P256_SIG_MAX);
    CU_ASSERT_EQUAL(sig[0], 0x30);
    CU_ASSERT_EQUAL(nu_p256_verify(s.pub, dg, sig, sig_len), NU_OK);

    /* openssl verifies our signature over the message. */
    char pem[NU_P256_PUB_PEM_MAX];
    size_t pem_len = 0;
    nu_p256_pub_to_pem(pub, pem, sizeof(pem), &pem_len);
    write_file("sign.pub.pem", pem, pem_len);
    write_file("msg.bin", msg, sizeof(msg) - 1);
    write_file("msg.sig", sig, sig_len);
    CU_ASSERT_EQUAL(nu_test_sh("cd '%s' && openssl dgst -sha256 -verify sign.pub.pem "
                               "-signature msg.sig msg.bin >/dev/null",
                               tmp),
                    0);
    /* ...and we verify openssl's. */
    char path[512];
    path_of(path, sizeof(path), "signer.pem");
    CU_ASSERT_EQUAL(nu_p256_key_save_pem(k, path), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("cd '%s' && openssl dgst -sha256 -sign signer.pem -out "
                                     "ossl.sig msg.bin",
                                     tmp),
                          0);
    size_t olen = 0;
    uint8_t *osig = read_file("ossl.sig", &olen);
    CU_ASSERT_EQUAL(nu_p256_verify(pub, dg, osig, olen), NU_OK);
    free(osig);

    /* A too-small buffer is refused, not truncated. */
    size_t tiny = 8;
    CU_ASSERT_EQUAL(s.sign_digest(s.ctx, dg, sig, &tiny), NU_ERR_TOO_LARGE);
    nu_p256_key_destroy(k);
}

static void test_verify_rejects(void)
{
    struct nu_p256_key *k = NULL, *other = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&other), NU_OK);
    uint8_t pub[65], opub[65], dg[32], sig[NU_P256_SIG_MAX];
    nu_p256_key_pub(k, pub);
    nu_p256_key_pub(other, opub);
    nu_random(dg, sizeof(dg));
    size_t len = sizeof(sig);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_sign_digest(k, dg, sig, &len), NU_OK);

    CU_ASSERT_EQUAL(nu_p256_verify(opub, dg, sig, len), NU_ERR_BAD_SIGNATURE);
    dg[0] ^= 1;
    CU_ASSERT_EQUAL(nu_p256_verify(pub, dg, sig, len), NU_ERR_BAD_SIGNATURE);
    dg[0] ^= 1;
    /* Any single-byte change and any truncation: never valid, always typed. */
    int bad = 0;
    for (size_t i = 0; i < len; i++) {
        sig[i] ^= 0x01;
        int rc = nu_p256_verify(pub, dg, sig, len);
        bad += rc != NU_ERR_BAD_SIGNATURE && rc != NU_ERR_DECODE;
        sig[i] ^= 0x01;
    }
    for (size_t n = 1; n < len; n++) {
        int rc = nu_p256_verify(pub, dg, sig, n);
        bad += rc != NU_ERR_BAD_SIGNATURE && rc != NU_ERR_DECODE;
    }
    CU_ASSERT_EQUAL(bad, 0);
    CU_ASSERT_EQUAL(nu_p256_verify(pub, dg, sig, 0), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_p256_verify(pub, dg, sig, NU_P256_SIG_MAX + 1), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_p256_verify(pub, dg, sig, len), NU_OK);
    /* r = 0 / s = 0: well-formed DER, invalid signature. */
    static const uint8_t zero_sig[] = {0x30, 0x06, 0x02, 0x01, 0x00, 0x02, 0x01, 0x00};
    int rc = nu_p256_verify(pub, dg, zero_sig, sizeof(zero_sig));
    CU_ASSERT_TRUE(rc == NU_ERR_BAD_SIGNATURE || rc == NU_ERR_DECODE);
    uint8_t bad_pub[65] = {0x04};
    CU_ASSERT_EQUAL(nu_p256_verify(bad_pub, dg, sig, len), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_p256_verify(pub, dg, NULL, len), NU_ERR_INVALID_ARG);
    nu_p256_key_destroy(k);
    nu_p256_key_destroy(other);
}

/* ------------------------------------------------------------------- ECDH */

static void test_ecdh_agrees_and_matches_openssl(void)
{
    struct nu_p256_key *a = NULL, *b = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&a), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&b), NU_OK);
    uint8_t pa[65], pb[65], sab[32], sba[32];
    nu_p256_key_pub(a, pa);
    nu_p256_key_pub(b, pb);
    CU_ASSERT_EQUAL(nu_ecdh_p256(a, pb, sab), NU_OK);
    CU_ASSERT_EQUAL(nu_ecdh_p256(b, pa, sba), NU_OK);
    CU_ASSERT_EQUAL(memcmp(sab, sba, 32), 0);

    char path[512], pem[NU_P256_PUB_PEM_MAX];
    size_t len = 0;
    path_of(path, sizeof(path), "ecdh-a.pem");
    CU_ASSERT_EQUAL(nu_p256_key_save_pem(a, path), NU_OK);
    nu_p256_pub_to_pem(pb, pem, sizeof(pem), &len);
    write_file("ecdh-b.pub", pem, len);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("cd '%s' && openssl pkeyutl -derive -inkey ecdh-a.pem "
                                     "-peerkey ecdh-b.pub -out ecdh.bin",
                                     tmp),
                          0);
    uint8_t *z = read_file("ecdh.bin", &len);
    CU_ASSERT_EQUAL(len, 32);
    if (z && len == 32)
        CU_ASSERT_EQUAL(memcmp(z, sab, 32), 0);
    free(z);

    /* Invalid peers: identity, off-curve, compressed prefix. */
    uint8_t bad[65] = {0x04};
    CU_ASSERT_EQUAL(nu_ecdh_p256(a, bad, sab), NU_ERR_DECODE);
    memcpy(bad, pb, 65);
    bad[40] ^= 0x10;
    CU_ASSERT_EQUAL(nu_ecdh_p256(a, bad, sab), NU_ERR_DECODE);
    memcpy(bad, pb, 65);
    bad[0] = 0x03;
    CU_ASSERT_EQUAL(nu_ecdh_p256(a, bad, sab), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_ecdh_p256(NULL, pb, sab), NU_ERR_INVALID_ARG);
    nu_p256_key_destroy(a);
    nu_p256_key_destroy(b);
}

/* ------------------------------------------------------ threads and speed */

struct sign_job {
    struct nu_p256_key *key;
    uint8_t pub[65];
    int failures;
};

static void *sign_thread(void *arg)
{
    struct sign_job *job = arg;
    for (int i = 0; i < 50; i++) {
        uint8_t dg[32], sig[NU_P256_SIG_MAX];
        size_t len = sizeof(sig);
        nu_random(dg, sizeof(dg));
        if (nu_p256_key_sign_digest(job->key, dg, sig, &len) != NU_OK ||
            nu_p256_verify(job->pub, dg, sig, len) != NU_OK)
            __atomic_add_fetch(&job->failures, 1, __ATOMIC_RELAXED);
    }
    return NULL;
}

static void test_one_key_many_threads(void)
{
    struct sign_job job = {0};
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&job.key), NU_OK);
    nu_p256_key_pub(job.key, job.pub);
    pthread_t t[4];
    for (int i = 0; i < 4; i++)
        CU_ASSERT_EQUAL_FATAL(pthread_create(&t[i], NULL, sign_thread, &job), 0);
    for (int i = 0; i < 4; i++)
        pthread_join(t[i], NULL);
    CU_ASSERT_EQUAL(job.failures, 0);
    nu_p256_key_destroy(job.key);
}

static void test_print_ecdsa_rates(void)
{
    struct nu_p256_key *k = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    uint8_t pub[65], dg[32] = {7}, sig[NU_P256_SIG_MAX];
    size_t len = sizeof(sig);
    nu_p256_key_pub(k, pub);
    unsigned signs = 0, verifies = 0;
    uint64_t t0 = nu_mono_ms();
    while (nu_mono_ms() - t0 < 400) {
        len = sizeof(sig);
        CU_ASSERT_EQUAL_FATAL(nu_p256_key_sign_digest(k, dg, sig, &len), NU_OK);
        signs++;
    }
    uint64_t t1 = nu_mono_ms();
    while (nu_mono_ms() - t1 < 400) {
        CU_ASSERT_EQUAL_FATAL(nu_p256_verify(pub, dg, sig, len), NU_OK);
        verifies++;
    }
    uint64_t t2 = nu_mono_ms();
    printf("\n    [bench] ECDSA P-256 software key: sign %.0f/s, verify %.0f/s "
           "(wolfSSL system library; NuSEC code as built)\n",
           signs * 1000.0 / (double)(t1 - t0), verifies * 1000.0 / (double)(t2 - t1));
    nu_p256_key_destroy(k);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"sha256 known answers", test_sha256_known_answers},
        {"sha256 incremental = one-shot", test_sha256_incremental_matches_oneshot},
        {"hkdf RFC 5869", test_hkdf_rfc5869},
        {"gcm known answer and roundtrip", test_gcm_known_answer_and_roundtrip},
        {"gcm tamper -> TAMPERED, output zeroed", test_gcm_tamper_zeroes_output},
        {"key generate and raw import", test_key_generate_and_raw_import},
        {"key PEM roundtrip, 0600, openssl reads it", test_key_pem_roundtrip_and_openssl},
        {"key reads openssl SEC1/PKCS#8", test_key_reads_openssl_formats},
        {"key rejects other curves/algs, malformed", test_key_rejects_other_and_malformed},
        {"key rejects mismatched public key", test_key_rejects_mismatched_public_key},
        {"pub DER/PEM roundtrip, openssl reads it", test_pub_der_pem_roundtrip_and_openssl},
        {"pub rejects malformed and other algs", test_pub_rejects_malformed},
        {"signer signs, we and openssl verify", test_signer_sign_verify_and_openssl},
        {"verify rejects", test_verify_rejects},
        {"ecdh agrees, matches openssl", test_ecdh_agrees_and_matches_openssl},
        {"one key, many threads", test_one_key_many_threads},
        {"print ECDSA rates", test_print_ecdsa_rates},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_crypto", setup, teardown, cases}, {NULL}};
    return nu_test_run("test_crypto", suites);
}
