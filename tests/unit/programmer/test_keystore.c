/*
 * The POSIX KeyStore (HUK-sealed file): counters, blobs, key usage, every
 * tampering refused, and — after a full enrollment and production — no
 * private key byte in any file outside the sealed KeyStore and the chips'
 * secret/ folders.
 */
#include "leakscan.h"
#include "rig.h"

#include "nu_crypto.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"
#include "pp_keystore.h"
#include "pp_port.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

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

/* A child increments `n` times under `limit` and dies without closing: a
 * power cut, as far as the KeyStore file is concerned. */
static void increment_then_die(const char *job, unsigned n, uint32_t limit)
{
    fflush(NULL);
    pid_t pid = fork();
    CU_ASSERT_TRUE_FATAL(pid >= 0);
    if (pid == 0) {
        struct pp_ks *ks = NULL;
        uint32_t v = 0, start = 0;
        if (pp_ks_open(pdir, "p1", 0, &ks) != NU_OK ||
            pp_ks_ops.counter_read(ks, job, &start) != NU_OK)
            _exit(1);
        for (unsigned i = 1; i <= n; i++) {
            if (pp_ks_ops.counter_increment(ks, job, limit, &v) != NU_OK || v != start + i)
                _exit(2);
        }
        _exit(0); /* no pp_ks_close: nothing more reaches the file */
    }
    int status = 0;
    CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
    CU_ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static uint32_t read_counter(const char *job)
{
    struct pp_ks *ks = NULL;
    uint32_t v = 0;
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 0, &ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(ks, job, &v), NU_OK);
    pp_ks_close(ks);
    return v;
}

static ino_t keystore_inode(void)
{
    char path[600];
    struct stat st;
    snprintf(path, sizeof(path), "%s/keystore.bin", pdir);
    CU_ASSERT_EQUAL_FATAL(stat(path, &st), 0);
    return st.st_ino;
}

/*
 * Units are reserved limit/64 at a time (at most 16) with one durable write:
 * the units in between cost no KeyStore write. A power cut spends the rest of
 * the reservation, never more, and the count never passes the limit; a clean
 * close gives the rest back.
 */
static void test_counter_reservation(void)
{
    fresh();
    struct pp_ks *ks = NULL;
    uint32_t v = 0;
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 1, &ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-r", 6400, &v), NU_OK); /* reserves 16 */
    ino_t ino = keystore_inode();
    for (uint32_t i = 2; i <= 16; i++) {
        CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-r", 6400, &v), NU_OK);
        CU_ASSERT_EQUAL(v, i);
    }
    CU_ASSERT_EQUAL(keystore_inode(), ino); /* no write for units 2..16 */
    CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-r", 6400, &v), NU_OK);
    CU_ASSERT_EQUAL(v, 17);
    CU_ASSERT_NOT_EQUAL(keystore_inode(), ino); /* the next reservation is written first */
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(ks, "job-r", &v), NU_OK);
    CU_ASSERT_EQUAL(v, 17);
    pp_ks_close(ks);
    CU_ASSERT_EQUAL(read_counter("job-r"), 17); /* clean close: exact */

    /* Power cut after 20 more (37): the reservation made at 33 (up to 49)
     * counts as spent. */
    increment_then_die("job-r", 20, 6400);
    CU_ASSERT_EQUAL(read_counter("job-r"), 49);

    /* Near the limit (200: 3 at a time) a reservation stops at the limit, and
     * a power cut can waste units but never exceed it. */
    increment_then_die("job-r", 197 - 49, 200); /* up to 197; reserved up to 199 */
    v = read_counter("job-r");
    CU_ASSERT_TRUE(v >= 197 && v < 200);
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 0, &ks), NU_OK);
    uint32_t last = v, got = 0;
    while (pp_ks_ops.counter_increment(ks, "job-r", 200, &got) == NU_OK)
        CU_ASSERT_EQUAL(got, ++last);
    CU_ASSERT_EQUAL(last, 200);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(ks, "job-r", 200, &got), NU_ERR_LIMIT);
    pp_ks_close(ks);
    CU_ASSERT_EQUAL(read_counter("job-r"), 200);
    /* Limits below 128 reserve one unit at a time: exact across a power cut. */
    increment_then_die("job-s", 5, 100);
    CU_ASSERT_EQUAL(read_counter("job-s"), 5);
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

static void test_no_private_key_outside_keystore(void)
{
    struct rig r;
    uint8_t *pkg = NULL;
    size_t len = 0;
    unsigned scanned = 0;
    CU_ASSERT_EQUAL_FATAL(rig_setup(&r, "prog-leak", 2), NU_OK);
    CU_ASSERT_EQUAL_FATAL(rig_enroll(&r), NU_OK);
    CU_ASSERT_EQUAL_FATAL(rig_package(&r, 10, &pkg, &len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_package_load(r.core, pkg, len), NU_OK);
    free(pkg);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&r, 4, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&r, NULL), PG_STOP_TRAY_EMPTY);

    ls_reset();
    /* identity, package, attestation key, and the line-CA key production
     * start made to ask for an offline lease (issue 15; this job allows none) */
    CU_ASSERT_EQUAL(ls_add_keystore(r.pdir, r.name), 4);
    CU_ASSERT_EQUAL(ls_add_device_keys(r.dir), 4);
    CU_ASSERT(ls_needles() >= 6 * 4);
    CU_ASSERT_EQUAL(ls_scan(r.dir, &scanned), 0);
    CU_ASSERT(scanned >= 4 * 3 + 3); /* chips' state/cert/image/pubkey, flash files */

    /* The scanner does find a key where one is: plant a PEM line and look again. */
    CU_ASSERT_EQUAL(
        nu_test_sh("cat %s/targets/*/secret/key.pem | head -3 > %s/planted.txt", r.dir, r.dir), 0);
    CU_ASSERT(ls_scan(r.dir, NULL) >= 1);
    rig_teardown(&r);
}

/* The line-CA key of an offline lease (issue 15): made in the KeyStore, signs
 * only, persists, is replaced by the next lease; device certificates issued
 * through the port's cert_issue verify against CA -> line CA. */
static int line_sign(void *sctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    return pp_ks_ops.sign_digest(sctx, PG_KEY_LINE_CA, digest, sig, sig_len);
}

static void test_line_ca_key_issues_device_certificates(void)
{
    struct pp_ks *ks = NULL;
    struct nu_p256_key *ca = NULL, *dev = NULL;
    struct nu_signer ca_s;
    uint8_t line_pub[65], again[65], dev_pub[65], secret[32], sig[80], digest[32] = {1};
    uint8_t *ca_der = NULL, *line_der = NULL, leaf[2048];
    size_t ca_len = 0, line_len = 0, leaf_len = 0, sig_len = sizeof(sig);
    int64_t now = (int64_t)(nu_time_ms() / 1000u);
    fresh();
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 1, &ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.pubkey(ks, PG_KEY_LINE_CA, line_pub), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL_FATAL(pp_ks_ops.line_key_generate(ks), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pp_ks_ops.pubkey(ks, PG_KEY_LINE_CA, line_pub), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.ecdh(ks, PG_KEY_LINE_CA, line_pub, secret), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(pp_ks_ops.sign_digest(ks, PG_KEY_LINE_CA, digest, sig, &sig_len), NU_OK);

    /* A CA (the Device CA's role) certifies the line key, pathLen 0. */
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&ca), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_signer(ca, &ca_s), NU_OK);
    struct nu_x509_issue_req root = {.cn = "Test Device CA", .o = "NuSEC", .not_before = now - 60,
                                     .not_after = now + 86400, .is_ca = 1, .path_len = 1,
                                     .key_usage = NU_X509_KU_KEY_CERT_SIGN};
    nu_p256_key_pub(ca, root.pub);
    CU_ASSERT_EQUAL_FATAL(nu_x509_issue(&root, &ca_s, NULL, 0, &ca_der, &ca_len), NU_OK);
    struct nu_x509_issue_req line = {.cn = "p1", .ou = "job-a", .o = "NuSEC",
                                     .not_before = now - 60, .not_after = now + 7200, .is_ca = 1,
                                     .path_len = 0, .key_usage = NU_X509_KU_KEY_CERT_SIGN};
    memcpy(line.pub, line_pub, 65);
    CU_ASSERT_EQUAL_FATAL(nu_x509_issue(&line, &ca_s, ca_der, ca_len, &line_der, &line_len), NU_OK);

    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&dev), NU_OK);
    nu_p256_key_pub(dev, dev_pub);
    CU_ASSERT_EQUAL_FATAL(pp_crypto_ops.cert_issue(NULL, line_sign, ks, line_der, line_len,
                                                   dev_pub, "00112233aabbccdd", (uint64_t)now,
                                                   leaf, sizeof(leaf), &leaf_len),
                          NU_OK);
    struct nu_x509_der chain[] = {{line_der, line_len}};
    CU_ASSERT_EQUAL(nu_x509_verify_chain(leaf, leaf_len, chain, 1, ca_der, ca_len), NU_OK);
    struct nu_x509_cert_info info;
    CU_ASSERT_EQUAL(nu_x509_cert_info(leaf, leaf_len, &info), NU_OK);
    CU_ASSERT_STRING_EQUAL(info.cn, "00112233aabbccdd");
    CU_ASSERT_STRING_EQUAL(info.ou, "device");
    CU_ASSERT_EQUAL(memcmp(info.pub, dev_pub, 65), 0);
    CU_ASSERT_FALSE(info.is_ca);
    /* A cap too short is TOO_LARGE, a leaf as issuer INVALID_ARG. */
    CU_ASSERT_EQUAL(pp_crypto_ops.cert_issue(NULL, line_sign, ks, line_der, line_len, dev_pub, "aa",
                                             (uint64_t)now, leaf, 100, &leaf_len),
                    NU_ERR_TOO_LARGE);
    pp_ks_close(ks);

    /* It persists; the next lease replaces it, and the old certificate no
     * longer fits the KeyStore's key. */
    CU_ASSERT_EQUAL_FATAL(pp_ks_open(pdir, "p1", 0, &ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.pubkey(ks, PG_KEY_LINE_CA, again), NU_OK);
    CU_ASSERT_EQUAL(memcmp(again, line_pub, 65), 0);
    CU_ASSERT_EQUAL(pp_ks_ops.line_key_generate(ks), NU_OK);
    CU_ASSERT_EQUAL(pp_ks_ops.pubkey(ks, PG_KEY_LINE_CA, again), NU_OK);
    CU_ASSERT_NOT_EQUAL(memcmp(again, line_pub, 65), 0);
    CU_ASSERT_NOT_EQUAL(pp_crypto_ops.cert_issue(NULL, line_sign, ks, line_der, line_len, dev_pub,
                                                 "aa", (uint64_t)now, leaf, sizeof(leaf),
                                                 &leaf_len),
                        NU_OK);
    pp_ks_close(ks);
    nu_p256_key_destroy(ca);
    nu_p256_key_destroy(dev);
    free(ca_der);
    free(line_der);
}

static const struct nu_test_case cases[] = {
    {"counters persist and stop at the limit", test_counters_persist_and_stop_at_limit},
    {"counter units reserved in blocks, never past the limit", test_counter_reservation},
    {"blobs and key usage", test_blobs_and_key_usage},
    {"tampered keystore refused", test_tampered_store_refused},
    {"wrong, exposed or missing HUK refused", test_wrong_or_exposed_huk_refused},
    {"no private key outside the KeyStore", test_no_private_key_outside_keystore},
    {"line-CA key: signs only, persists, issues device certificates",
     test_line_ca_key_issues_device_certificates},
    {NULL, NULL},
};

int main(void)
{
    const struct nu_test_suite suites[] = {{"keystore", setup, teardown, cases},
                                           {NULL, NULL, NULL, NULL}};
    return nu_test_run("programmer_keystore", suites);
}
