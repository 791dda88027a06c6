/*
 * The POSIX KeyStore (HUK-sealed file): counters, blobs, key usage, every
 * tampering refused, and — after a full enrollment and production — no
 * private key byte in any file outside the sealed KeyStore and the chips'
 * secret/ folders.
 */
#define _GNU_SOURCE /* nftw FTW_PHYS */
#include "rig.h"

#include "nu_crypto.h"
#include "nu_test.h"
#include "nu_util.h"
#include "pp_keystore.h"

#include <ftw.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/coding.h>

static char tmp[256];
static char pdir[512];

static int setup(void)
{
    if (nu_test_tmpdir("ks", tmp, sizeof(tmp)) != 0)
        return -1;
    snprintf(pdir, sizeof(pdir), "%s/programmers/p1", tmp);
    return 0;
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

static void fresh(void)
{
    char cmd[600];
    snprintf(cmd, sizeof(cmd), "%s/programmers", tmp);
    nu_test_rmtree(cmd);
}

static void test_counters_persist_and_stop_at_limit(void)
{
    fresh();
    struct pp_ks *ks = NULL;
    uint32_t v = 0;
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 1, &ks), NU_OK);
    for (int i = 1; i <= 3; i++) {
        CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-a", 3, &v), NU_OK);
        CU_ASSERT_EQUAL(v, (uint32_t)i);
    }
    CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-a", 3, &v), NU_ERR_LIMIT);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-b", 3, &v), NU_OK);
    CU_ASSERT_EQUAL(v, 1);
    pp_ks_close(ks);
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 0, &ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(ks, "job-a", &v), NU_OK);
    CU_ASSERT_EQUAL(v, 3);
    /* A larger limit later does not reset anything: the count goes on. */
    CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-a", 10, &v), NU_OK);
    CU_ASSERT_EQUAL(v, 4);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(ks, "job-none", &v), NU_OK);
    CU_ASSERT_EQUAL(v, 0);
    pp_ks_close(ks);
}

static void test_blobs_and_key_usage(void)
{
    fresh();
    struct pp_ks *ks = NULL;
    uint8_t buf[64], digest[32] = {7}, sig[80], pub[65], peer_pub[65], s1[32], s2[32];
    size_t len = 0, sig_len = sizeof(sig);
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 1, &ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.pubkey(ks, PG_KEY_IDENTITY, pub), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(pp_ks_ops.keys_generate(ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.keys_generate(ks), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(pp_ks_ops.blob_put(ks, "pin.x", (const uint8_t *)"hello", 5), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.blob_get(ks, "pin.x", buf, 4, &len), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(pp_ks_ops.blob_get(ks, "pin.x", buf, sizeof(buf), &len), NU_OK);
    CU_ASSERT_EQUAL(len, 5);
    CU_ASSERT_EQUAL(pp_ks_ops.blob_put(ks, "pin.x", NULL, 0), NU_OK); /* delete */
    CU_ASSERT_EQUAL(pp_ks_ops.blob_get(ks, "pin.x", buf, sizeof(buf), &len), NU_ERR_NOT_FOUND);

    /* identity signs; package key only agrees */
    CU_ASSERT_EQUAL(pp_ks_ops.pubkey(ks, PG_KEY_IDENTITY, pub), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.sign_digest(ks, PG_KEY_IDENTITY, digest, sig, &sig_len), NU_OK);
    CU_ASSERT_EQUAL(nu_p256_verify(pub, digest, sig, sig_len), NU_OK);
    sig_len = sizeof(sig);
    CU_ASSERT_EQUAL(pp_ks_ops.sign_digest(ks, PG_KEY_PACKAGE, digest, sig, &sig_len),
                    NU_ERR_PERMISSION);
    struct nu_p256_key *peer = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&peer), NU_OK);
    nu_p256_key_pub(peer, peer_pub);
    CU_ASSERT_EQUAL(pp_ks_ops.ecdh(ks, PG_KEY_IDENTITY, peer_pub, s1), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(pp_ks_ops.ecdh(ks, PG_KEY_PACKAGE, peer_pub, s1), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.pubkey(ks, PG_KEY_PACKAGE, pub), NU_OK);
    CU_ASSERT_EQUAL(nu_ecdh_p256(peer, pub, s2), NU_OK);
    CU_ASSERT_EQUAL(memcmp(s1, s2, 32), 0);
    nu_p256_key_destroy(peer);

    /* keys survive a reopen */
    uint8_t pub2[65];
    pp_ks_close(ks);
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 0, &ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.pubkey(ks, PG_KEY_PACKAGE, pub2), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub, pub2, 65), 0);
    pp_ks_close(ks);
}

static void make_store(void)
{
    struct pp_ks *ks = NULL;
    uint32_t v;
    fresh();
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 1, &ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.keys_generate(ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-a", 9, &v), NU_OK);
    pp_ks_close(ks);
}

static void path_of(const char *name, char *out, size_t cap)
{
    snprintf(out, cap, "%s/%s", pdir, name);
}

static void test_tampered_store_refused(void)
{
    char path[600];
    uint8_t *buf = NULL;
    size_t len = 0;
    struct pp_ks *ks = NULL;
    make_store();
    path_of("keystore.bin", path, sizeof(path));
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 1 << 20, &buf, &len), NU_OK);
    /* every kind of byte: magic, salt, nonce, body, tag */
    size_t where[] = {0, 5, 4 + 32 + 3, 60, len / 2, len - 1};
    for (size_t i = 0; i < sizeof(where) / sizeof(where[0]); i++) {
        buf[where[i]] ^= 0x20;
        CU_ASSERT_EQUAL(nu_file_write_atomic(path, buf, len, 0600), NU_OK);
        CU_ASSERT_EQUAL(pp_ks_open(pdir, "p1", 0, &ks), NU_ERR_TAMPERED);
        CU_ASSERT_PTR_NULL(ks);
        buf[where[i]] ^= 0x20;
    }
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, buf, len / 3, 0600), NU_OK); /* truncated */
    CU_ASSERT_EQUAL(pp_ks_open(pdir, "p1", 0, &ks), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, buf, len, 0600), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_open(pdir, "p1", 0, &ks), NU_OK); /* restored: fine */
    pp_ks_close(ks);
    ks = NULL;

    /* Another programmer's name on the same bytes and HUK: refused (AAD). */
    char other[600], cmd[2048];
    snprintf(other, sizeof(other), "%s/programmers/p2", tmp);
    snprintf(cmd, sizeof(cmd), "rm -rf '%s' && cp -a '%s' '%s'", other, pdir, other);
    CU_ASSERT_EQUAL(nu_test_sh("%s", cmd), 0);
    CU_ASSERT_EQUAL(pp_ks_open(other, "p2", 0, &ks), NU_ERR_TAMPERED);
    free(buf);
}

static void test_wrong_or_exposed_huk_refused(void)
{
    char path[600];
    uint8_t huk[32];
    struct pp_ks *ks = NULL;
    make_store();
    path_of("huk", path, sizeof(path));
    nu_random(huk, sizeof(huk));
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, huk, sizeof(huk), 0600), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_open(pdir, "p1", 0, &ks), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(pp_ks_open(pdir, "p1", 1, &ks), NU_ERR_TAMPERED); /* never re-keyed */

    make_store();
    CU_ASSERT_EQUAL(chmod(path, 0644), 0);
    CU_ASSERT_EQUAL(pp_ks_open(pdir, "p1", 0, &ks), NU_ERR_PERMISSION);

    make_store();
    CU_ASSERT_EQUAL(unlink(path), 0);
    CU_ASSERT_EQUAL(pp_ks_open(pdir, "p1", 1, &ks), NU_ERR_NOT_FOUND);
    CU_ASSERT_PTR_NULL(ks);

    make_store();
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, huk, 16, 0600), NU_OK); /* short HUK */
    CU_ASSERT_NOT_EQUAL(pp_ks_open(pdir, "p1", 0, &ks), NU_OK);
}

/* ---- no private key outside the KeyStore ------------------------------------------ */

#define MAX_NEEDLES 256

struct needle {
    uint8_t bytes[128];
    size_t len;
};

static struct needle needles[MAX_NEEDLES];
static size_t n_needles;
static const char *skip_a, *skip_b;
static unsigned leaks, scanned;

static void add_needle(const void *p, size_t len)
{
    if (n_needles < MAX_NEEDLES && len <= sizeof(needles[0].bytes)) {
        memcpy(needles[n_needles].bytes, p, len);
        needles[n_needles++].len = len;
    }
}

/* The secret scalar of a SEC1 PEM key, as raw, hex (both cases), and the
 * PEM's base64 lines themselves. */
static void add_key_pem(const char *pem, size_t len)
{
    char body[1024];
    size_t bl = 0;
    const char *p = pem, *end = pem + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (ll && p[0] != '-') {
            if (ll >= 40)
                add_needle(p, ll);
            if (bl + ll < sizeof(body)) {
                memcpy(body + bl, p, ll);
                bl += ll;
            }
        }
        p += ll + 1;
    }
    uint8_t der[512];
    word32 dl = sizeof(der);
    CU_ASSERT_EQUAL_FATAL(Base64_Decode((const byte *)body, (word32)bl, der, &dl), 0);
    /* ECPrivateKey: 30 77 02 01 01 04 20 <d> */
    CU_ASSERT_EQUAL_FATAL(der[5], 0x04);
    CU_ASSERT_EQUAL_FATAL(der[6], 0x20);
    char hex[65];
    add_needle(der + 7, 32);
    nu_hex_encode(der + 7, 32, hex, sizeof(hex));
    add_needle(hex, 64);
    for (int i = 0; i < 64; i++)
        hex[i] = (char)(hex[i] >= 'a' ? hex[i] - 32 : hex[i]);
    add_needle(hex, 64);
}

/* Open keystore.bin by its documented format, as an auditor with the HUK would. */
static void add_keystore_keys(struct rig *r)
{
    char path[700];
    uint8_t *file = NULL, *huk = NULL, kek[32], aad[80];
    size_t len = 0, hl = 0;
    snprintf(path, sizeof(path), "%s/keystore.bin", r->pdir);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 1 << 20, &file, &len), NU_OK);
    snprintf(path, sizeof(path), "%s/huk", r->pdir);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 64, &huk, &hl), NU_OK);
    CU_ASSERT_EQUAL_FATAL(
        nu_hkdf_sha256(huk, hl, file + 4, 32, (const uint8_t *)"nusec/v1 keystore", 17, kek, 32),
        NU_OK);
    size_t nl = strlen(r->name), body = len - 48 - 16;
    memcpy(aad, "NKS1", 4);
    memcpy(aad + 4, r->name, nl);
    CU_ASSERT_EQUAL_FATAL(nu_aes256gcm_decrypt(kek, file + 36, aad, 4 + nl, file + 48, body,
                                               file + 48, file + 48 + body),
                          NU_OK);
    unsigned keys = 0;
    for (uint8_t *p = file + 48, *end = file + 48 + body; p < end;) {
        uint8_t type = p[0], n = p[1];
        size_t dl = ((size_t)p[2 + n] << 24) | ((size_t)p[3 + n] << 16) | ((size_t)p[4 + n] << 8) |
                    p[5 + n];
        if (type == 1) {
            add_key_pem((const char *)p + 6 + n, dl);
            keys++;
        }
        p += 6 + n + dl;
    }
    CU_ASSERT_EQUAL(keys, 2);
    free(file);
    free(huk);
}

static int add_device_key(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)f;
    if (flag == FTW_F && strstr(path, "/secret/key.pem")) {
        uint8_t *pem = NULL;
        size_t len = 0;
        if (nu_file_read(path, 4096, &pem, &len) == NU_OK)
            add_key_pem((const char *)pem, len);
        free(pem);
    }
    return 0;
}

static int scan_file(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)f;
    if (flag != FTW_F || strstr(path, skip_a) || strstr(path, skip_b))
        return 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (nu_file_read(path, NU_FILE_MAX, &buf, &len) != NU_OK)
        return 0;
    scanned++;
    for (size_t i = 0; i < n_needles; i++) {
        if (len >= needles[i].len && memmem(buf, len, needles[i].bytes, needles[i].len)) {
            fprintf(stderr, "private key material in %s\n", path);
            leaks++;
        }
    }
    free(buf);
    return 0;
}

static void test_no_private_key_outside_keystore(void)
{
    struct rig r;
    uint8_t *pkg = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(rig_setup(&r, "prog-leak", 2), NU_OK);
    CU_ASSERT_EQUAL_FATAL(rig_enroll(&r), NU_OK);
    CU_ASSERT_EQUAL_FATAL(rig_package(&r, 10, &pkg, &len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_package_load(r.core, pkg, len), NU_OK);
    free(pkg);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&r, 4, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&r, NULL), PG_STOP_TRAY_EMPTY);

    n_needles = 0;
    leaks = scanned = 0;
    add_keystore_keys(&r);
    CU_ASSERT_EQUAL(nftw(r.dir, add_device_key, 16, FTW_PHYS), 0);
    CU_ASSERT(n_needles >= 6 * 4); /* 2 programmer + 4 device keys, 4+ needles each */
    skip_a = "/keystore.bin";
    skip_b = "/secret/";
    CU_ASSERT_EQUAL(nftw(r.dir, scan_file, 16, FTW_PHYS), 0);
    CU_ASSERT(scanned >= 4 * 3 + 3); /* chips' state/cert/image/pubkey, flash files */
    CU_ASSERT_EQUAL(leaks, 0);

    /* The scanner does find a key where one is: plant one and look again. */
    char planted[700];
    snprintf(planted, sizeof(planted), "%s/planted.bin", r.dir);
    CU_ASSERT_EQUAL(nu_file_write_atomic(planted, needles[0].bytes, needles[0].len, 0600), NU_OK);
    leaks = 0;
    nftw(r.dir, scan_file, 16, FTW_PHYS);
    CU_ASSERT(leaks >= 1);
    rig_teardown(&r);
}

static const struct nu_test_case cases[] = {
    {"counters persist and stop at the limit", test_counters_persist_and_stop_at_limit},
    {"blobs and key usage", test_blobs_and_key_usage},
    {"tampered keystore refused", test_tampered_store_refused},
    {"wrong, exposed or missing HUK refused", test_wrong_or_exposed_huk_refused},
    {"no private key outside the KeyStore", test_no_private_key_outside_keystore},
    {NULL, NULL},
};

int main(void)
{
    const struct nu_test_suite suites[] = {{"keystore", setup, teardown, cases},
                                           {NULL, NULL, NULL, NULL}};
    return nu_test_run("programmer_keystore", suites);
}
