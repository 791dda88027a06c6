/* station_pkg: what `package inspect|import` accept from a .nspkg file, and what they refuse. */
#include "station_fixture.h"
#include "station_pkg.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdlib.h>
#include <string.h>

static struct nu_p256_key *pkg_key, *other_key, *prog_key;
static struct nu_signer signer, other_signer;
static uint8_t prog_pub[NU_P256_PUB_LEN];

static int setup(void)
{
    if (nu_p256_key_generate(&pkg_key) || nu_p256_key_generate(&other_key) ||
        nu_p256_key_generate(&prog_key))
        return -1;
    if (nu_p256_key_signer(pkg_key, &signer) || nu_p256_key_signer(other_key, &other_signer))
        return -1;
    return nu_p256_key_pub(prog_key, prog_pub);
}

static int teardown(void)
{
    nu_p256_key_destroy(pkg_key);
    nu_p256_key_destroy(other_key);
    nu_p256_key_destroy(prog_key);
    return 0;
}

static uint8_t *make(const struct sf_pkg_opts *o, const struct nu_signer *by, size_t *len)
{
    uint8_t *buf = NULL;
    CU_ASSERT_EQUAL_FATAL(sf_package(o, by, prog_pub, &buf, len), NU_OK);
    return buf;
}

static const struct sf_pkg_opts base = {.job_id = "J1", .programmer_id = "prog-1", .limit = 16};

static void test_intact_package_shows_its_summary(void)
{
    static const uint8_t id[16] = {0xde, 0xad, 0xbe, 0xef, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12};
    struct sf_pkg_opts o = base;
    uint64_t now = nu_time_ms();
    o.package_id = id;
    o.created_at_ms = now - 1000;
    o.expires_at_ms = now + 60000;
    size_t len = 0;
    uint8_t *buf = make(&o, &signer, &len);
    struct station_pkg p;
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, now, &p), NU_OK);
    CU_ASSERT_TRUE(p.intact);
    CU_ASSERT_TRUE(p.summary_ok);
    CU_ASSERT_STRING_EQUAL(p.job_id, "J1");
    CU_ASSERT_STRING_EQUAL(p.programmer_id, "prog-1");
    CU_ASSERT_STRING_EQUAL(p.firmware, "blinky-1.0.0");
    CU_ASSERT_EQUAL(p.limit, 16);
    CU_ASSERT_EQUAL(p.format, 1);
    CU_ASSERT_EQUAL(p.created_at_ms, now - 1000);
    CU_ASSERT_EQUAL(p.expires_at_ms, now + 60000);
    CU_ASSERT_EQUAL(memcmp(p.package_id, id, 16), 0);
    CU_ASSERT_TRUE(p.sealed_len > 100);
    uint8_t h[32];
    nu_sha256(buf, len, h);
    CU_ASSERT_EQUAL(memcmp(p.file_sha256, h, 32), 0);
    free(buf);
}

static void test_any_modified_byte_is_refused(void)
{
    size_t len = 0;
    uint8_t *buf = make(&base, &signer, &len);
    struct station_pkg p;
    uint64_t now = nu_time_ms();
    for (size_t i = 0; i < len; i++) {
        for (int bit = 0; bit < 8; bit += 7) {
            buf[i] ^= (uint8_t)(1u << bit);
            int rc = station_pkg_open(buf, len, signer.pub, now, &p);
            if (rc == NU_OK || p.intact) {
                CU_FAIL("a modified package was accepted");
                fprintf(stderr, "byte %zu bit %d accepted\n", i, bit);
            }
            CU_ASSERT_TRUE(rc == NU_ERR_TAMPERED || rc == NU_ERR_DECODE);
            buf[i] ^= (uint8_t)(1u << bit);
        }
    }
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, now, &p), NU_OK);
    free(buf);
}

static void test_tampered_summary_is_shown_but_marked(void)
{
    size_t len = 0;
    uint8_t *buf = make(&base, &signer, &len);
    /* The limit (16) is in the summary as a varint 0x10 after tag 0x18: raise it. */
    uint8_t *limit = NULL;
    for (size_t i = 0; i + 1 < len && !limit; i++) {
        if (buf[i] == 0x18 && buf[i + 1] == 0x10)
            limit = &buf[i + 1];
    }
    CU_ASSERT_PTR_NOT_NULL_FATAL(limit);
    *limit = 0x7f;
    struct station_pkg p;
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, nu_time_ms(), &p), NU_ERR_TAMPERED);
    CU_ASSERT_FALSE(p.intact);
    CU_ASSERT_TRUE(p.summary_ok);
    CU_ASSERT_EQUAL(p.limit, 127); /* what it claims, for the operator to see */
    free(buf);
}

static void test_other_signer_is_tampered(void)
{
    size_t len = 0;
    uint8_t *buf = make(&base, &other_signer, &len);
    struct station_pkg p;
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, nu_time_ms(), &p), NU_ERR_TAMPERED);
    CU_ASSERT_FALSE(p.intact);
    free(buf);
}

static void test_truncated_is_refused(void)
{
    size_t len = 0;
    uint8_t *buf = make(&base, &signer, &len);
    struct station_pkg p;
    for (size_t n = 0; n < len; n++) {
        int rc = station_pkg_open(buf, n, signer.pub, nu_time_ms(), &p);
        CU_ASSERT_TRUE(rc == NU_ERR_DECODE || rc == NU_ERR_TAMPERED);
        CU_ASSERT_FALSE(p.intact);
    }
    free(buf);
}

static void test_garbage_and_oversize_are_refused(void)
{
    uint8_t junk[4096];
    struct station_pkg p;
    for (int round = 0; round < 200; round++) {
        size_t n = (size_t)(round * 37 % (int)sizeof(junk));
        CU_ASSERT_EQUAL_FATAL(nu_random(junk, sizeof(junk)), NU_OK);
        /* Half the rounds look like a package: fields 1, 2, 3 with lengths. */
        if (round % 2 && n > 8) {
            junk[0] = 0x0a;
            junk[1] = 2;
            junk[4] = 0x12;
            junk[5] = 1;
            junk[7] = 0x1a;
            junk[8] = (uint8_t)(n - 9 > 127 ? 127 : n - 9);
        }
        int rc = station_pkg_open(junk, n, signer.pub, nu_time_ms(), &p);
        CU_ASSERT_NOT_EQUAL(rc, NU_OK);
        CU_ASSERT_FALSE(p.intact);
    }
    uint8_t *big = calloc(1, STATION_PKG_MAX + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    CU_ASSERT_EQUAL(station_pkg_open(big, STATION_PKG_MAX + 1, signer.pub, 0, &p),
                    NU_ERR_TOO_LARGE);
    free(big);
    CU_ASSERT_EQUAL(station_pkg_open(NULL, 0, signer.pub, 0, &p), NU_ERR_INVALID_ARG);
}

static void test_expired_is_intact_but_refused(void)
{
    struct sf_pkg_opts o = base;
    uint64_t now = nu_time_ms();
    o.created_at_ms = now - 7200000;
    o.expires_at_ms = now - 1;
    size_t len = 0;
    uint8_t *buf = make(&o, &signer, &len);
    struct station_pkg p;
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, now, &p), NU_ERR_EXPIRED);
    CU_ASSERT_TRUE(p.intact);
    /* expires_at == now is expired too */
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, now - 1, &p), NU_ERR_EXPIRED);
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, now - 2, &p), NU_OK);
    free(buf);
}

static void test_unknown_format_is_not_supported(void)
{
    struct sf_pkg_opts o = base;
    o.format = 2;
    size_t len = 0;
    uint8_t *buf = make(&o, &signer, &len);
    struct station_pkg p;
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, nu_time_ms(), &p), NU_ERR_NOT_SUPPORTED);
    free(buf);
}

static void test_signed_but_malformed_summary_is_decode(void)
{
    struct sf_pkg_opts o = base;
    o.job_id = "job with spaces";
    size_t len = 0;
    uint8_t *buf = make(&o, &signer, &len);
    struct station_pkg p;
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, nu_time_ms(), &p), NU_ERR_DECODE);
    free(buf);
    o = base;
    o.limit = 0;
    buf = make(&o, &signer, &len);
    CU_ASSERT_EQUAL(station_pkg_open(buf, len, signer.pub, nu_time_ms(), &p), NU_ERR_DECODE);
    free(buf);
}

static void test_extra_or_repeated_fields_are_refused(void)
{
    size_t len = 0;
    uint8_t *buf = make(&base, &signer, &len);
    uint8_t *more = malloc(len + 8);
    CU_ASSERT_PTR_NOT_NULL_FATAL(more);
    struct station_pkg p;
    memcpy(more, buf, len);
    /* An unknown field 4 appended: readers must never disagree on what counts. */
    memcpy(more + len, "\x22\x01x", 3);
    CU_ASSERT_EQUAL(station_pkg_open(more, len + 3, signer.pub, nu_time_ms(), &p), NU_ERR_DECODE);
    /* A second signature field. */
    memcpy(more + len, "\x1a\x01x", 3);
    CU_ASSERT_EQUAL(station_pkg_open(more, len + 3, signer.pub, nu_time_ms(), &p), NU_ERR_DECODE);
    /* A varint field where a length-delimited one is expected. */
    memcpy(more + len, "\x08\x01", 2);
    CU_ASSERT_EQUAL(station_pkg_open(more, len + 2, signer.pub, nu_time_ms(), &p), NU_ERR_DECODE);
    free(more);
    free(buf);
}

static void test_read_from_file(void)
{
    char dir[256], path[512];
    CU_ASSERT_EQUAL_FATAL(nu_test_tmpdir("pkg", dir, sizeof(dir)), 0);
    size_t len = 0, got_len = 0;
    uint8_t *buf = make(&base, &signer, &len), *got = NULL;
    CU_ASSERT_EQUAL(sf_write(dir, "a.nspkg", buf, len, path, sizeof(path)), NU_OK);
    struct station_pkg p;
    CU_ASSERT_EQUAL(station_pkg_read(path, signer.pub, nu_time_ms(), &p, &got, &got_len), NU_OK);
    CU_ASSERT_EQUAL(got_len, len);
    CU_ASSERT_TRUE(got && memcmp(got, buf, len) == 0);
    free(got);
    CU_ASSERT_EQUAL(sf_write(dir, "b.nspkg", buf, len - 1, path, sizeof(path)), NU_OK);
    got = NULL;
    CU_ASSERT_NOT_EQUAL(station_pkg_read(path, signer.pub, nu_time_ms(), &p, &got, &got_len),
                        NU_OK);
    CU_ASSERT_PTR_NULL(got);
    snprintf(path, sizeof(path), "%s/missing.nspkg", dir);
    CU_ASSERT_EQUAL(station_pkg_read(path, signer.pub, 0, &p, NULL, NULL), NU_ERR_NOT_FOUND);
    free(buf);
    nu_test_rmtree(dir);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"intact package shows its summary", test_intact_package_shows_its_summary},
        {"any modified byte is refused", test_any_modified_byte_is_refused},
        {"tampered summary shown but marked", test_tampered_summary_is_shown_but_marked},
        {"another signer is TAMPERED", test_other_signer_is_tampered},
        {"truncated is refused", test_truncated_is_refused},
        {"garbage and oversize are refused", test_garbage_and_oversize_are_refused},
        {"expired is intact but refused", test_expired_is_intact_but_refused},
        {"unknown format is NOT_SUPPORTED", test_unknown_format_is_not_supported},
        {"signed malformed summary is DECODE", test_signed_but_malformed_summary_is_decode},
        {"extra or repeated fields refused", test_extra_or_repeated_fields_are_refused},
        {"read from file", test_read_from_file},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"station_pkg", setup, teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("station_test_pkg", suites);
}
