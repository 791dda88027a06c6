/* test_msgsig: end-to-end message signatures and the replay window. */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_msgsig.h"
#include "nu_test.h"

#include <stdlib.h>
#include <string.h>

static struct nu_p256_key *k1, *k2;
static struct nu_signer s1, s2;

static int setup(void)
{
    if (nu_p256_key_generate(&k1) || nu_p256_key_generate(&k2))
        return -1;
    return nu_p256_key_signer(k1, &s1) || nu_p256_key_signer(k2, &s2);
}

static int teardown(void)
{
    nu_p256_key_destroy(k1);
    nu_p256_key_destroy(k2);
    return 0;
}

#define T1 "nusec/v1/cloud/req/prog-1/cert.request"
#define T2 "nusec/v1/cloud/req/prog-2/cert.request"

static void test_sign_verify(void)
{
    const uint8_t p[] = {1, 2, 3, 4, 5};
    char v[NU_MSGSIG_VALUE_MAX];
    CU_ASSERT_EQUAL_FATAL(nu_msgsig_sign(&s1, T1, p, sizeof(p), v), NU_OK);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T1, p, sizeof(p), v), NU_OK);
    /* another key, another topic, another payload, none, junk */
    CU_ASSERT_EQUAL(nu_msgsig_verify(s2.pub, T1, p, sizeof(p), v), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T2, p, sizeof(p), v), NU_ERR_BAD_SIGNATURE);
    uint8_t q[sizeof(p)];
    memcpy(q, p, sizeof(p));
    q[4] ^= 1;
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T1, q, sizeof(q), v), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T1, p, sizeof(p) - 1, v), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T1, p, sizeof(p), NULL), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T1, p, sizeof(p), ""), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T1, p, sizeof(p), "zz"), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T1, p, sizeof(p), "3006020101020101"),
                    NU_ERR_BAD_SIGNATURE);
    char longv[NU_MSGSIG_VALUE_MAX + 8];
    memset(longv, 'a', sizeof(longv) - 1);
    longv[sizeof(longv) - 1] = 0;
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, T1, p, sizeof(p), longv), NU_ERR_BAD_SIGNATURE);
    /* topic and payload are separated: moving a byte between them breaks it */
    char v2[NU_MSGSIG_VALUE_MAX];
    CU_ASSERT_EQUAL_FATAL(nu_msgsig_sign(&s1, "a/b", (const uint8_t *)"c", 1, v2), NU_OK);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, "a/", (const uint8_t *)"bc", 2, v2),
                    NU_ERR_BAD_SIGNATURE);
}

static void test_domain(void)
{
    /* The digest is the documented one: SHA-256(domain 0 topic 0 payload). */
    uint8_t d[32], e[32];
    const char raw[] = "nusec/v1 envelope\0a/b\0xyz";
    CU_ASSERT_EQUAL(nu_msgsig_digest("a/b", (const uint8_t *)"xyz", 3, d), NU_OK);
    CU_ASSERT_EQUAL(nu_sha256(raw, sizeof(raw) - 1, e), NU_OK);
    CU_ASSERT_EQUAL(memcmp(d, e, 32), 0);
    /* an ECDSA signature of the bare payload's hash is not a message signature */
    uint8_t h[32], sig[NU_P256_SIG_MAX];
    size_t sl = sizeof(sig);
    CU_ASSERT_EQUAL(nu_sha256("xyz", 3, h), NU_OK);
    CU_ASSERT_EQUAL(nu_p256_key_sign_digest(k1, h, sig, &sl), NU_OK);
    char v[NU_MSGSIG_VALUE_MAX];
    for (size_t i = 0; i < sl; i++)
        snprintf(v + 2 * i, 3, "%02x", sig[i]);
    CU_ASSERT_EQUAL(nu_msgsig_verify(s1.pub, "a/b", (const uint8_t *)"xyz", 3, v),
                    NU_ERR_BAD_SIGNATURE);
}

static void test_replay(void)
{
    struct nu_msgsig_replay *r = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_msgsig_replay_new(1000, 4, &r), NU_OK);
    uint8_t id[NU_MSGSIG_ID_LEN] = {1};
    const uint64_t now = 1000000;
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now, now), NU_OK);
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now, now + 10), NU_ERR_REPLAY);
    /* same id with another sent_at is still the same message id */
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now + 5, now + 10), NU_ERR_REPLAY);
    /* outside the window: too old, too far in the future, zero */
    id[0] = 2;
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now - 1001, now), NU_ERR_REPLAY);
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now + 1001, now), NU_ERR_REPLAY);
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), 0, now), NU_ERR_REPLAY);
    /* id 1 after the window: refused as stale, never admitted again */
    id[0] = 1;
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now, now + 5000), NU_ERR_REPLAY);
    /* bounded: 4 live ids, the 5th is refused (BUSY), not an old one forgotten */
    for (uint8_t i = 10; i < 13; i++) {
        id[0] = i;
        CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now, now), NU_OK);
    }
    id[0] = 20;
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now, now), NU_ERR_BUSY);
    id[0] = 10;
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now, now), NU_ERR_REPLAY);
    /* once they expire, room again (swept) */
    id[0] = 21;
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now + 2000, now + 2000), NU_OK);
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, sizeof(id), now + 2000, now + 2000),
                    NU_ERR_REPLAY);
    CU_ASSERT_EQUAL(nu_msgsig_replay_check(r, id, 15, now, now), NU_ERR_INVALID_ARG);
    nu_msgsig_replay_free(r);
}

static const struct nu_test_case cases[] = {
    {"sign/verify: key, topic, payload, malformed", test_sign_verify},
    {"digest: documented domain prefix", test_domain},
    {"replay window: ids, stale, future, bounded", test_replay},
    {NULL, NULL},
};

static const struct nu_test_suite suites[] = {
    {"nu_msgsig", setup, teardown, cases},
    {NULL, NULL, NULL, NULL},
};

int main(void)
{
    return nu_test_run("libnusec_test_msgsig", suites);
}
