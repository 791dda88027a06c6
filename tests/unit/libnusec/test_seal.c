/*
 * nu_seal: the wire format against independent test vectors
 * (tests/vectors/seal/), roundtrips, and every way an attacker can alter or
 * misdirect a box: tampered fields, wrong recipient, swapped ephemeral key,
 * invalid points, truncation at every length, garbage, oversize.
 * Prints seal+open per second for a 4 KiB payload.
 */
#define NU_SEAL_TEST_API
#include "nu_seal.h"

#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"

#include "nusec/v1/job.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *VECTORS = NUSEC_SOURCE_DIR "/tests/vectors/seal/vectors.txt";

/* ------------------------------------------------------------ helpers */

static uint8_t *unhex_alloc(const char *hex, size_t *out_len)
{
    size_t cap = strlen(hex) / 2 + 1;
    uint8_t *buf = malloc(cap);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    CU_ASSERT_EQUAL_FATAL(nu_hex_decode(hex, buf, cap, out_len), NU_OK);
    return buf;
}

struct fixture {
    struct nu_p256_key *key;
    struct nu_seal_recipient r;
};

static void fixture_new(struct fixture *f)
{
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&f->key), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_seal_recipient_from_key(f->key, &f->r), NU_OK);
}

static void fixture_free(struct fixture *f)
{
    nu_p256_key_destroy(f->key);
}

/* Open and expect failure `want` with no plaintext handed out. */
static int open_fails(const struct nu_seal_recipient *r, const uint8_t *aad, size_t aad_len,
                      const uint8_t *box, size_t box_len)
{
    uint8_t *pt = (uint8_t *)1;
    size_t len = 99;
    int rc = nu_seal_open(r, aad, aad_len, box, box_len, &pt, &len);
    if (rc == NU_OK) {
        nu_seal_free(pt, len);
        return NU_OK;
    }
    CU_ASSERT_PTR_NULL(pt);
    CU_ASSERT_EQUAL(len, 0);
    return rc;
}

/* Re-serialize a parsed box after the caller edited it. */
static uint8_t *repack(const Nusec__V1__SealedBox *m, size_t *out_len)
{
    *out_len = nusec__v1__sealed_box__get_packed_size(m);
    uint8_t *buf = malloc(*out_len ? *out_len : 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(buf);
    nusec__v1__sealed_box__pack(m, buf);
    return buf;
}

/* ------------------------------------------------------------ vectors */

#define FIELDS 12
static const char *const field_names[FIELDS] = {"name",           "recipient_priv", "recipient_pub",
                                                "ephemeral_priv", "ephemeral_pub",  "shared_secret",
                                                "hkdf_key",       "nonce",          "aad",
                                                "plaintext",      "ciphertext",     "box"};
enum { F_NAME, F_RPRIV, F_RPUB, F_EPRIV, F_EPUB, F_Z, F_K, F_NONCE, F_AAD, F_PT, F_CT, F_BOX };

struct vector {
    const char *v[FIELDS];
};

/* Parse "key = value" lines in place; a "name" line starts a vector. */
static int parse_vectors(char *text, struct vector *out, int max)
{
    int n = -1;
    for (char *line = strtok(text, "\n"); line; line = strtok(NULL, "\n")) {
        if (line[0] == '#' || line[0] == '\0')
            continue;
        char *eq = strstr(line, " = "); /* an empty value is "key = " */
        CU_ASSERT_PTR_NOT_NULL_FATAL(eq);
        *eq = '\0';
        const char *value = eq + 3;
        int f = -1;
        for (int i = 0; i < FIELDS; i++) {
            if (strcmp(line, field_names[i]) == 0)
                f = i;
        }
        CU_ASSERT_FATAL(f >= 0);
        if (f == F_NAME) {
            CU_ASSERT_FATAL(n + 1 < max);
            n++;
            memset(&out[n], 0, sizeof(out[n]));
        }
        CU_ASSERT_FATAL(n >= 0);
        out[n].v[f] = value;
    }
    return n + 1;
}

static void check_vector(const struct vector *vec)
{
    for (int i = 0; i < FIELDS; i++)
        CU_ASSERT_PTR_NOT_NULL_FATAL(vec->v[i]);
    size_t l[FIELDS] = {0};
    uint8_t *b[FIELDS] = {0};
    for (int i = 1; i < FIELDS; i++)
        b[i] = unhex_alloc(vec->v[i], &l[i]);
    CU_ASSERT_EQUAL_FATAL(l[F_RPRIV] + l[F_EPRIV], 64);
    CU_ASSERT_EQUAL_FATAL(l[F_RPUB] + l[F_EPUB], 130);
    CU_ASSERT_EQUAL_FATAL(l[F_NONCE], 12);

    /* Each step of the construction, with nu_crypto primitives. */
    struct nu_p256_key *rk = NULL, *ek = NULL;
    uint8_t pub[65], z[32], k[32], salt[130];
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_import_priv(b[F_RPRIV], &rk), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_import_priv(b[F_EPRIV], &ek), NU_OK);
    nu_p256_key_pub(rk, pub);
    CU_ASSERT_EQUAL(memcmp(pub, b[F_RPUB], 65), 0);
    nu_p256_key_pub(ek, pub);
    CU_ASSERT_EQUAL(memcmp(pub, b[F_EPUB], 65), 0);
    CU_ASSERT_EQUAL(nu_ecdh_p256(ek, b[F_RPUB], z), NU_OK);
    CU_ASSERT_EQUAL(memcmp(z, b[F_Z], 32), 0);
    memcpy(salt, b[F_EPUB], 65);
    memcpy(salt + 65, b[F_RPUB], 65);
    CU_ASSERT_EQUAL(nu_hkdf_sha256(z, 32, salt, 130, (const uint8_t *)NU_SEAL_INFO,
                                   strlen(NU_SEAL_INFO), k, 32),
                    NU_OK);
    CU_ASSERT_EQUAL(memcmp(k, b[F_K], 32), 0);

    /* The box, byte for byte. */
    uint8_t *box = NULL;
    size_t box_len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_seal_deterministic_for_tests(b[F_RPUB], b[F_EPRIV], b[F_NONCE],
                                                          b[F_AAD], l[F_AAD], b[F_PT], l[F_PT],
                                                          &box, &box_len),
                          NU_OK);
    CU_ASSERT_EQUAL(box_len, l[F_BOX]);
    if (box_len == l[F_BOX])
        CU_ASSERT_EQUAL(memcmp(box, b[F_BOX], box_len), 0);
    CU_ASSERT_EQUAL(l[F_CT], l[F_PT] + 16);
    CU_ASSERT_TRUE(box_len > l[F_CT] &&
                   memcmp(box + box_len - l[F_CT], b[F_CT], l[F_CT]) == 0); /* last field */

    /* The recipient opens the expected box. */
    struct nu_seal_recipient r;
    nu_seal_recipient_from_key(rk, &r);
    uint8_t *pt = NULL;
    size_t pt_len = 0;
    CU_ASSERT_EQUAL(nu_seal_open(&r, b[F_AAD], l[F_AAD], b[F_BOX], l[F_BOX], &pt, &pt_len), NU_OK);
    CU_ASSERT_EQUAL(pt_len, l[F_PT]);
    if (pt && pt_len == l[F_PT] && pt_len)
        CU_ASSERT_EQUAL(memcmp(pt, b[F_PT], pt_len), 0);
    nu_seal_free(pt, pt_len);
    free(box);
    nu_p256_key_destroy(rk);
    nu_p256_key_destroy(ek);
    for (int i = 1; i < FIELDS; i++)
        free(b[i]);
}

static void test_vectors(void)
{
    uint8_t *text = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_file_read(VECTORS, 1u << 20, &text, &len), NU_OK);
    struct vector vecs[16];
    int n = parse_vectors((char *)text, vecs, 16);
    CU_ASSERT_TRUE(n >= 5);
    for (int i = 0; i < n; i++) {
        printf("\n    vector %s", vecs[i].v[F_NAME]);
        check_vector(&vecs[i]);
    }
    printf("\n");
    free(text);
}

/* The vectors are recomputed by a script that uses only Python + openssl. */
static void test_vectors_independent_recomputation(void)
{
    if (nu_test_sh("command -v python3 >/dev/null && command -v openssl >/dev/null") != 0) {
        printf("\n    [skipped] python3 or openssl missing\n");
        return;
    }
    CU_ASSERT_EQUAL(
        nu_test_sh("python3 '%s/tests/vectors/seal/gen_vectors.py' --check", NUSEC_SOURCE_DIR), 0);
}

/* ---------------------------------------------------------- roundtrips */

static void test_roundtrip_sizes_and_freshness(void)
{
    struct fixture f;
    fixture_new(&f);
    static const size_t sizes[] = {0, 1, 15, 16, 17, 4096, 100000};
    uint8_t *data = malloc(100000);
    CU_ASSERT_PTR_NOT_NULL_FATAL(data);
    nu_random(data, 100000);
    const uint8_t aad[] = "summary";
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        uint8_t *box = NULL, *pt = NULL;
        size_t box_len = 0, pt_len = 0;
        CU_ASSERT_EQUAL_FATAL(nu_seal(f.r.pub, aad, sizeof(aad), data, sizes[i], &box, &box_len),
                              NU_OK);
        CU_ASSERT_TRUE(box_len <= sizes[i] + 103);
        CU_ASSERT_EQUAL(nu_seal_open(&f.r, aad, sizeof(aad), box, box_len, &pt, &pt_len), NU_OK);
        CU_ASSERT_EQUAL(pt_len, sizes[i]);
        CU_ASSERT_PTR_NOT_NULL(pt);
        if (pt && pt_len == sizes[i])
            CU_ASSERT_EQUAL(memcmp(pt, data, pt_len), 0);
        nu_seal_free(pt, pt_len);
        free(box);
    }
    /* Same input twice: different ephemeral key, nonce and ciphertext. */
    uint8_t *b1 = NULL, *b2 = NULL;
    size_t l1 = 0, l2 = 0;
    CU_ASSERT_EQUAL(nu_seal(f.r.pub, NULL, 0, data, 64, &b1, &l1), NU_OK);
    CU_ASSERT_EQUAL(nu_seal(f.r.pub, NULL, 0, data, 64, &b2, &l2), NU_OK);
    CU_ASSERT_EQUAL_FATAL(l1, l2);
    Nusec__V1__SealedBox *m1 = nusec__v1__sealed_box__unpack(NULL, l1, b1);
    Nusec__V1__SealedBox *m2 = nusec__v1__sealed_box__unpack(NULL, l2, b2);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m2);
    CU_ASSERT_EQUAL(m1->version, 1);
    CU_ASSERT_NOT_EQUAL(memcmp(m1->ephemeral_pubkey.data, m2->ephemeral_pubkey.data, 65), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(m1->nonce.data, m2->nonce.data, 12), 0);
    CU_ASSERT_NOT_EQUAL(memcmp(m1->ciphertext.data, m2->ciphertext.data, 64), 0);
    /* The plaintext does not appear in the box. */
    int found = 0;
    for (size_t i = 0; i + 16 <= l1; i++)
        found |= memcmp(b1 + i, data, 16) == 0;
    CU_ASSERT_FALSE(found);
    nusec__v1__sealed_box__free_unpacked(m1, NULL);
    nusec__v1__sealed_box__free_unpacked(m2, NULL);
    free(b1);
    free(b2);
    free(data);
    fixture_free(&f);
}

/* -------------------------------------------------------------- tamper */

struct sealed {
    struct fixture f;
    uint8_t aad[32];
    uint8_t *box;
    size_t box_len;
};

static void sealed_new(struct sealed *s, size_t pt_len)
{
    fixture_new(&s->f);
    nu_random(s->aad, sizeof(s->aad));
    uint8_t pt[256];
    nu_random(pt, sizeof(pt));
    CU_ASSERT_EQUAL_FATAL(
        nu_seal(s->f.r.pub, s->aad, sizeof(s->aad), pt, pt_len, &s->box, &s->box_len), NU_OK);
}

static void sealed_free(struct sealed *s)
{
    free(s->box);
    fixture_free(&s->f);
}

static void test_tamper_aad(void)
{
    struct sealed s;
    sealed_new(&s, 40);
    uint8_t aad[33];
    memcpy(aad, s.aad, 32);
    aad[5] ^= 0x01;
    CU_ASSERT_EQUAL(open_fails(&s.f.r, aad, 32, s.box, s.box_len), NU_ERR_TAMPERED);
    aad[5] ^= 0x01;
    aad[32] = 0;
    CU_ASSERT_EQUAL(open_fails(&s.f.r, aad, 33, s.box, s.box_len), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(open_fails(&s.f.r, aad, 31, s.box, s.box_len), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(open_fails(&s.f.r, NULL, 0, s.box, s.box_len), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(open_fails(&s.f.r, aad, 32, s.box, s.box_len), NU_OK); /* untouched */
    sealed_free(&s);
}

/* Edit one field of the parsed box, repack, open: expect `want`. */
enum edit { E_NONCE, E_CT, E_TAG, E_EPH_SWAP, E_EPH_OFFCURVE, E_EPH_IDENTITY, E_EPH_COMPRESSED };

static int open_edited(struct sealed *s, enum edit e)
{
    Nusec__V1__SealedBox *m = nusec__v1__sealed_box__unpack(NULL, s->box_len, s->box);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    uint8_t *eph = m->ephemeral_pubkey.data;
    struct nu_p256_key *other = NULL;
    switch (e) {
    case E_NONCE:
        m->nonce.data[11] ^= 0x01;
        break;
    case E_CT:
        m->ciphertext.data[0] ^= 0x01;
        break;
    case E_TAG:
        m->ciphertext.data[m->ciphertext.len - 1] ^= 0x01;
        break;
    case E_EPH_SWAP: /* a valid point, just not the one used */
        CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&other), NU_OK);
        nu_p256_key_pub(other, eph);
        nu_p256_key_destroy(other);
        break;
    case E_EPH_OFFCURVE:
        eph[64] ^= 0x01;
        break;
    case E_EPH_IDENTITY:
        memset(eph + 1, 0, 64);
        break;
    case E_EPH_COMPRESSED:
        eph[0] = 0x02;
        break;
    }
    size_t len = 0;
    uint8_t *box = repack(m, &len);
    int rc = open_fails(&s->f.r, s->aad, sizeof(s->aad), box, len);
    free(box);
    nusec__v1__sealed_box__free_unpacked(m, NULL);
    return rc;
}

static void test_tamper_fields(void)
{
    struct sealed s;
    sealed_new(&s, 40);
    CU_ASSERT_EQUAL(open_edited(&s, E_NONCE), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(open_edited(&s, E_CT), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(open_edited(&s, E_TAG), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(open_edited(&s, E_EPH_SWAP), NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(open_edited(&s, E_EPH_OFFCURVE), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_edited(&s, E_EPH_IDENTITY), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_edited(&s, E_EPH_COMPRESSED), NU_ERR_DECODE);
    sealed_free(&s);
}

/* Every single-byte change anywhere in the serialized box is refused. */
static void test_tamper_every_byte(void)
{
    struct sealed s;
    sealed_new(&s, 20);
    uint8_t *copy = malloc(s.box_len);
    CU_ASSERT_PTR_NOT_NULL_FATAL(copy);
    int accepted = 0, untyped = 0;
    for (size_t i = 0; i < s.box_len; i++) {
        memcpy(copy, s.box, s.box_len);
        copy[i] ^= 0x04;
        int rc = open_fails(&s.f.r, s.aad, sizeof(s.aad), copy, s.box_len);
        accepted += rc == NU_OK;
        untyped += rc != NU_OK && rc != NU_ERR_DECODE && rc != NU_ERR_TAMPERED &&
                   rc != NU_ERR_NOT_SUPPORTED;
    }
    CU_ASSERT_EQUAL(accepted, 0);
    CU_ASSERT_EQUAL(untyped, 0);
    free(copy);
    sealed_free(&s);
}

static void test_wrong_recipient(void)
{
    struct sealed s;
    sealed_new(&s, 40);
    struct fixture other;
    fixture_new(&other);
    CU_ASSERT_EQUAL(open_fails(&other.r, s.aad, sizeof(s.aad), s.box, s.box_len), NU_ERR_TAMPERED);
    /* The right key with someone else's public key in the salt also fails. */
    struct nu_seal_recipient mixed = s.f.r;
    memcpy(mixed.pub, other.r.pub, 65);
    CU_ASSERT_EQUAL(open_fails(&mixed, s.aad, sizeof(s.aad), s.box, s.box_len), NU_ERR_TAMPERED);
    fixture_free(&other);
    sealed_free(&s);
}

/* A key holder that fails (an HSM error) or was never reached. */
static int failing_ecdh(void *ctx, const uint8_t peer[65], uint8_t out[32])
{
    int *calls = ctx;
    (*calls)++;
    (void)peer;
    memset(out, 0x5a, 32);
    return NU_ERR_HSM;
}

static void test_recipient_error_passes_through(void)
{
    struct sealed s;
    sealed_new(&s, 40);
    int calls = 0;
    struct nu_seal_recipient r = {&calls, failing_ecdh, {0}};
    memcpy(r.pub, s.f.r.pub, 65);
    CU_ASSERT_EQUAL(open_fails(&r, s.aad, sizeof(s.aad), s.box, s.box_len), NU_ERR_HSM);
    CU_ASSERT_EQUAL(calls, 1);
    /* An invalid ephemeral key never reaches the key holder. */
    Nusec__V1__SealedBox *m = nusec__v1__sealed_box__unpack(NULL, s.box_len, s.box);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    m->ephemeral_pubkey.data[40] ^= 0x01;
    size_t len = 0;
    uint8_t *box = repack(m, &len);
    CU_ASSERT_EQUAL(open_fails(&r, s.aad, sizeof(s.aad), box, len), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(calls, 1);
    free(box);
    nusec__v1__sealed_box__free_unpacked(m, NULL);
    sealed_free(&s);
}

/* --------------------------------------------------- malformed boxes */

static int open_with_fields(struct sealed *s, uint32_t version, size_t eph_len, size_t nonce_len,
                            size_t ct_len)
{
    Nusec__V1__SealedBox *m = nusec__v1__sealed_box__unpack(NULL, s->box_len, s->box);
    CU_ASSERT_PTR_NOT_NULL_FATAL(m);
    uint8_t eph[80] = {0}, nonce[20] = {0};
    memcpy(eph, m->ephemeral_pubkey.data, 65);
    memcpy(nonce, m->nonce.data, 12);
    Nusec__V1__SealedBox e = *m;
    e.version = version;
    e.ephemeral_pubkey.data = eph;
    e.ephemeral_pubkey.len = eph_len;
    e.nonce.data = nonce;
    e.nonce.len = nonce_len;
    e.ciphertext.len = ct_len;
    size_t len = 0;
    uint8_t *box = repack(&e, &len);
    int rc = open_fails(&s->f.r, s->aad, sizeof(s->aad), box, len);
    free(box);
    nusec__v1__sealed_box__free_unpacked(m, NULL);
    return rc;
}

static void test_malformed_fields(void)
{
    struct sealed s;
    sealed_new(&s, 40);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 65, 12, 56), NU_OK); /* the control */
    CU_ASSERT_EQUAL(open_with_fields(&s, 0, 65, 12, 56), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 2, 65, 12, 56), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_EQUAL(open_with_fields(&s, 0xffffffffu, 65, 12, 56), NU_ERR_NOT_SUPPORTED);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 64, 12, 56), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 66, 12, 56), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 0, 12, 56), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 65, 11, 56), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 65, 13, 56), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 65, 0, 56), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 65, 12, 15), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 65, 12, 0), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 65, 12, 16), NU_ERR_TAMPERED); /* tag only */
    CU_ASSERT_EQUAL(open_with_fields(&s, 1, 65, 12, 55), NU_ERR_TAMPERED);
    sealed_free(&s);
}

static void test_truncated_at_every_length(void)
{
    struct sealed s;
    sealed_new(&s, 100);
    int accepted = 0, untyped = 0;
    for (size_t n = 0; n < s.box_len; n++) {
        int rc = open_fails(&s.f.r, s.aad, sizeof(s.aad), s.box, n);
        accepted += rc == NU_OK;
        untyped += rc != NU_OK && rc != NU_ERR_DECODE && rc != NU_ERR_TAMPERED;
    }
    CU_ASSERT_EQUAL(accepted, 0);
    CU_ASSERT_EQUAL(untyped, 0);
    sealed_free(&s);
}

static void test_garbage(void)
{
    struct fixture f;
    fixture_new(&f);
    uint8_t buf[512];
    int accepted = 0;
    for (int i = 0; i < 2000; i++) {
        size_t len = 1 + (size_t)(i % (int)sizeof(buf));
        nu_random(buf, len);
        accepted += open_fails(&f.r, NULL, 0, buf, len) == NU_OK;
    }
    CU_ASSERT_EQUAL(accepted, 0);
    memset(buf, 0, sizeof(buf));
    CU_ASSERT_EQUAL(open_fails(&f.r, NULL, 0, buf, sizeof(buf)), NU_ERR_DECODE);
    memset(buf, 0xff, sizeof(buf));
    CU_ASSERT_EQUAL(open_fails(&f.r, NULL, 0, buf, sizeof(buf)), NU_ERR_DECODE);
    CU_ASSERT_EQUAL(open_fails(&f.r, NULL, 0, buf, 0), NU_ERR_DECODE);
    /* A well-formed protobuf of another message (only unknown fields). */
    static const uint8_t other[] = {0x2a, 0x03, 'a', 'b', 'c', 0x30, 0x07};
    CU_ASSERT_EQUAL(open_fails(&f.r, NULL, 0, other, sizeof(other)), NU_ERR_DECODE);
    fixture_free(&f);
}

static void test_size_limits(void)
{
    struct fixture f;
    fixture_new(&f);
    uint8_t *big = calloc(1, NU_SEAL_MAX_BOX + 1);
    CU_ASSERT_PTR_NOT_NULL_FATAL(big);
    uint8_t *box = NULL, *pt = NULL;
    size_t box_len = 0, pt_len = 0;

    /* The largest plaintext seals into a box within the limit and opens. */
    CU_ASSERT_EQUAL_FATAL(nu_seal(f.r.pub, NULL, 0, big, NU_SEAL_MAX_PLAINTEXT, &box, &box_len),
                          NU_OK);
    CU_ASSERT_TRUE(box_len <= NU_SEAL_MAX_BOX);
    CU_ASSERT_EQUAL(nu_seal_open(&f.r, NULL, 0, box, box_len, &pt, &pt_len), NU_OK);
    CU_ASSERT_EQUAL(pt_len, NU_SEAL_MAX_PLAINTEXT);
    nu_seal_free(pt, pt_len);
    free(box);
    box = NULL;

    CU_ASSERT_EQUAL(nu_seal(f.r.pub, NULL, 0, big, NU_SEAL_MAX_PLAINTEXT + 1, &box, &box_len),
                    NU_ERR_TOO_LARGE);
    CU_ASSERT_PTR_NULL(box);
    CU_ASSERT_EQUAL(nu_seal(f.r.pub, big, NU_SEAL_MAX_AAD + 1, big, 1, &box, &box_len),
                    NU_ERR_TOO_LARGE);
    /* An oversize box is refused before it is parsed (its content is zeros). */
    CU_ASSERT_EQUAL(open_fails(&f.r, NULL, 0, big, NU_SEAL_MAX_BOX + 1), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(open_fails(&f.r, big, NU_SEAL_MAX_AAD + 1, big, 10), NU_ERR_TOO_LARGE);
    free(big);
    fixture_free(&f);
}

static void test_invalid_arguments(void)
{
    struct fixture f;
    fixture_new(&f);
    uint8_t *box = NULL, *pt = NULL;
    size_t box_len = 0, pt_len = 0;
    uint8_t bad_pub[65] = {0x04};
    CU_ASSERT_EQUAL(nu_seal(bad_pub, NULL, 0, (const uint8_t *)"x", 1, &box, &box_len),
                    NU_ERR_DECODE);
    CU_ASSERT_EQUAL(nu_seal(NULL, NULL, 0, (const uint8_t *)"x", 1, &box, &box_len),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_seal(f.r.pub, NULL, 3, (const uint8_t *)"x", 1, &box, &box_len),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_seal(f.r.pub, NULL, 0, NULL, 1, &box, &box_len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL_FATAL(nu_seal(f.r.pub, NULL, 0, (const uint8_t *)"x", 1, &box, &box_len),
                          NU_OK);
    CU_ASSERT_EQUAL(nu_seal_open(NULL, NULL, 0, box, box_len, &pt, &pt_len), NU_ERR_INVALID_ARG);
    struct nu_seal_recipient no_ecdh = f.r;
    no_ecdh.ecdh = NULL;
    CU_ASSERT_EQUAL(nu_seal_open(&no_ecdh, NULL, 0, box, box_len, &pt, &pt_len),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_seal_open(&f.r, NULL, 0, NULL, box_len, &pt, &pt_len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_seal_open(&f.r, NULL, 0, box, box_len, NULL, &pt_len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_seal_recipient_from_key(NULL, &no_ecdh), NU_ERR_INVALID_ARG);
    free(box);
    box = NULL;
    uint8_t n = 0;
    uint8_t zero[32] = {0};
    CU_ASSERT_EQUAL(
        nu_seal_deterministic_for_tests(f.r.pub, zero, zero, NULL, 0, &n, 1, &box, &box_len),
        NU_ERR_DECODE); /* scalar 0 */
    free(box);
    nu_seal_free(NULL, 0);
    fixture_free(&f);
}

static void test_print_seal_rate(void)
{
    struct fixture f;
    fixture_new(&f);
    uint8_t data[4096], aad[64];
    nu_random(data, sizeof(data));
    nu_random(aad, sizeof(aad));
    unsigned n = 0;
    uint64_t t0 = nu_mono_ms(), t1;
    while ((t1 = nu_mono_ms()) - t0 < 500) {
        uint8_t *box = NULL, *pt = NULL;
        size_t box_len = 0, pt_len = 0;
        CU_ASSERT_EQUAL_FATAL(
            nu_seal(f.r.pub, aad, sizeof(aad), data, sizeof(data), &box, &box_len), NU_OK);
        CU_ASSERT_EQUAL_FATAL(nu_seal_open(&f.r, aad, sizeof(aad), box, box_len, &pt, &pt_len),
                              NU_OK);
        nu_seal_free(pt, pt_len);
        free(box);
        n++;
    }
    printf("\n    [bench] nu_seal + nu_seal_open, 4 KiB payload: %.0f/s "
           "(wolfSSL system library; NuSEC code as built)\n",
           n * 1000.0 / (double)(t1 - t0));
    fixture_free(&f);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"test vectors (byte-exact box)", test_vectors},
        {"vectors recomputed by python+openssl", test_vectors_independent_recomputation},
        {"roundtrip sizes, fresh ephemeral+nonce", test_roundtrip_sizes_and_freshness},
        {"modified AAD -> TAMPERED", test_tamper_aad},
        {"modified nonce/ct/tag/ephemeral", test_tamper_fields},
        {"every byte flipped is refused", test_tamper_every_byte},
        {"wrong recipient -> TAMPERED", test_wrong_recipient},
        {"recipient error passes through", test_recipient_error_passes_through},
        {"malformed fields (version, lengths)", test_malformed_fields},
        {"truncated at every length", test_truncated_at_every_length},
        {"garbage", test_garbage},
        {"size limits", test_size_limits},
        {"invalid arguments", test_invalid_arguments},
        {"print seal+open rate", test_print_seal_rate},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_seal", NULL, NULL, cases}, {NULL}};
    return nu_test_run("test_seal", suites);
}
