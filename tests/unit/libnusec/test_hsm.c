/* nu_hsm against a real SoftHSM2 token (no mocks): keys, PINs, errors, threads, speed. */
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_test.h"
#include "nu_util.h"

#include <p11-kit/pkcs11.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/sha256.h>

#include <dlfcn.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define TOKEN "nusec-test"
#define SO_PIN "so-pin-1234"
#define USER_PIN "user-pin-5678"

static char tmp[256];
static struct nu_hsm *hsm;

/* Fresh state dir + SoftHSM2 config + initialised token + open handle, per test. */
static void fresh_token(void)
{
    char conf[512];
    nu_test_rmtree(tmp);
    CU_ASSERT_FATAL(nu_test_tmpdir("hsm", tmp, sizeof(tmp)) == 0);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_softhsm_write_conf(tmp, conf, sizeof(conf)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(setenv("SOFTHSM2_CONF", conf, 1), 0);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_init_token(NULL, TOKEN, SO_PIN, USER_PIN), NU_OK);
    struct nu_hsm_opts o = {.token_label = TOKEN, .pin = USER_PIN};
    CU_ASSERT_EQUAL_FATAL(nu_hsm_open(&o, &hsm), NU_OK);
}

static void close_token(void)
{
    nu_hsm_close(hsm);
    hsm = NULL;
    nu_test_rmtree(tmp);
    tmp[0] = '\0';
}

/* Independent check with wolfSSL directly (not through libnusec). */
static int wolf_verify(const uint8_t pub[65], const uint8_t digest[32], const uint8_t *sig,
                       size_t sig_len)
{
    ecc_key k;
    int ok = 0;
    if (wc_ecc_init(&k) != 0)
        return 0;
    if (wc_ecc_import_x963_ex(pub, 65, &k, ECC_SECP256R1) == 0 &&
        wc_ecc_verify_hash(sig, (word32)sig_len, digest, 32, &ok, &k) != 0)
        ok = 0;
    wc_ecc_free(&k);
    return ok == 1;
}

static void sha256(const char *text, uint8_t out[32])
{
    wc_Sha256 h;
    wc_InitSha256(&h);
    wc_Sha256Update(&h, (const byte *)text, (word32)strlen(text));
    wc_Sha256Final(&h, out);
    wc_Sha256Free(&h);
}

static void test_keygen_sign_verify(void)
{
    uint8_t pub[65], pub2[65], digest[32], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    struct nu_hsm_key *key = NULL;
    fresh_token();
    CU_ASSERT_EQUAL(nu_hsm_keygen_p256(hsm, "root-ca", pub), NU_OK);
    CU_ASSERT_EQUAL(pub[0], 0x04);
    CU_ASSERT_EQUAL(nu_hsm_find_key(hsm, "root-ca", pub2), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub, pub2, 65), 0);

    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_open(hsm, "root-ca", &key), NU_OK);
    const struct nu_signer *signer = nu_hsm_key_signer(key);
    CU_ASSERT_EQUAL(memcmp(signer->pub, pub, 65), 0);
    sha256("firmware image", digest);
    CU_ASSERT_EQUAL(signer->sign_digest(signer->ctx, digest, sig, &sig_len), NU_OK);
    CU_ASSERT_TRUE(sig_len >= 8 && sig_len <= NU_P256_SIG_MAX);
    CU_ASSERT_EQUAL(sig[0], 0x30); /* DER SEQUENCE */
    CU_ASSERT_TRUE(wolf_verify(pub, digest, sig, sig_len));
    /* The signature is over this digest only. */
    digest[0] ^= 1;
    CU_ASSERT_FALSE(wolf_verify(pub, digest, sig, sig_len));

    /* Capacity too small is a typed error, not an overflow. */
    uint8_t small[8];
    size_t small_len = sizeof(small);
    CU_ASSERT_EQUAL(nu_hsm_key_sign_digest(key, digest, small, &small_len), NU_ERR_TOO_LARGE);
    nu_hsm_key_close(key);
    close_token();
}

static void test_private_key_protected(void)
{
    struct nu_hsm_key_attrs a;
    fresh_token();
    CU_ASSERT_EQUAL_FATAL(nu_hsm_keygen_p256(hsm, "device-ca", NULL), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_attr_check(hsm, "device-ca", &a), NU_OK);
    CU_ASSERT_TRUE(a.token);
    CU_ASSERT_TRUE(a.private_);
    CU_ASSERT_TRUE(a.sensitive);
    CU_ASSERT_FALSE(a.extractable);
    CU_ASSERT_TRUE(a.always_sensitive);
    CU_ASSERT_TRUE(a.never_extractable);
    CU_ASSERT_TRUE(a.sign);
    CU_ASSERT_FALSE(a.value_readable);
    CU_ASSERT_EQUAL(a.value_ckr, CKR_ATTRIBUTE_SENSITIVE);
    close_token();
}

/* Raw PKCS#11, outside nu_hsm, as an attacker holding the user PIN would try. */
static CK_FUNCTION_LIST *raw_module(void **out_dl)
{
    CK_FUNCTION_LIST *f = NULL;
    *out_dl = dlopen(nu_hsm_default_module(), RTLD_NOW | RTLD_LOCAL);
    if (!*out_dl)
        return NULL;
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(*out_dl, "C_GetFunctionList");
    if (!get || get(&f) != CKR_OK)
        return NULL;
    return f;
}

static CK_SLOT_ID raw_slot(CK_FUNCTION_LIST *f)
{
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_UTF8CHAR want[32];
    memset(want, ' ', 32);
    memcpy(want, TOKEN, strlen(TOKEN));
    if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return (CK_SLOT_ID)-1;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0)
            return slots[i];
    }
    return (CK_SLOT_ID)-1;
}

static void test_raw_pkcs11_cannot_extract(void)
{
    void *dl = NULL;
    fresh_token();
    CU_ASSERT_EQUAL_FATAL(nu_hsm_keygen_p256(hsm, "secure-boot", NULL), NU_OK);
    CK_FUNCTION_LIST *f = raw_module(&dl);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    /* nu_hsm initialised the module in this process already; that is fine. */
    CK_RV rv = f->C_Initialize(NULL);
    CU_ASSERT_TRUE(rv == CKR_CRYPTOKI_ALREADY_INITIALIZED);
    CK_SLOT_ID slot = raw_slot(f);
    CU_ASSERT_FATAL(slot != (CK_SLOT_ID)-1);
    CK_SESSION_HANDLE s;
    CU_ASSERT_EQUAL_FATAL(
        f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s), CKR_OK);
    rv = f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)USER_PIN, strlen(USER_PIN));
    CU_ASSERT_TRUE(rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN);

    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_LABEL, "secure-boot", strlen("secure-boot")}};
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    CK_ULONG count = 0;
    CU_ASSERT_EQUAL(f->C_FindObjectsInit(s, find, 2), CKR_OK);
    CU_ASSERT_EQUAL(f->C_FindObjects(s, &priv, 1, &count), CKR_OK);
    CU_ASSERT_EQUAL(f->C_FindObjectsFinal(s), CKR_OK);
    CU_ASSERT_EQUAL_FATAL(count, 1);

    uint8_t value[64];
    CK_ATTRIBUTE a = {CKA_VALUE, value, sizeof(value)};
    CU_ASSERT_EQUAL(f->C_GetAttributeValue(s, priv, &a, 1), CKR_ATTRIBUTE_SENSITIVE);
    CU_ASSERT_EQUAL(a.ulValueLen, CK_UNAVAILABLE_INFORMATION);
    /* Nor can the key be made extractable after the fact. */
    CK_BBOOL yes = CK_TRUE;
    CK_ATTRIBUTE ext = {CKA_EXTRACTABLE, &yes, sizeof(yes)};
    CU_ASSERT_NOT_EQUAL(f->C_SetAttributeValue(s, priv, &ext, 1), CKR_OK);
    CK_BBOOL no = CK_FALSE;
    CK_ATTRIBUTE sens = {CKA_SENSITIVE, &no, sizeof(no)};
    CU_ASSERT_NOT_EQUAL(f->C_SetAttributeValue(s, priv, &sens, 1), CKR_OK);
    f->C_CloseSession(s);
    dlclose(dl); /* no C_Finalize: nu_hsm owns the initialisation */
    close_token();
}

static void test_wrong_pin_is_permission(void)
{
    struct nu_hsm *h2 = NULL;
    fresh_token();
    struct nu_hsm_opts o = {.token_label = TOKEN, .pin = "not-the-pin"};
    nu_hsm_close(hsm); /* a fresh login, not one inherited from the open handle */
    hsm = NULL;
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_ERR_PERMISSION);
    CU_ASSERT_PTR_NULL(h2);
    o.pin = "";
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_ERR_INVALID_ARG);
    /* The right PIN still works afterwards. */
    o.pin = USER_PIN;
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_OK);
    nu_hsm_close(h2);
    close_token();
}

static void test_module_and_token_errors(void)
{
    struct nu_hsm *h2 = NULL;
    fresh_token();
    struct nu_hsm_opts o = {
        .module = "/nonexistent/libpkcs11.so", .token_label = TOKEN, .pin = USER_PIN};
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_ERR_NOT_FOUND);
    CU_ASSERT_PTR_NULL(h2);
    /* A shared library that is not a PKCS#11 module. */
    o.module = "/lib/x86_64-linux-gnu/libz.so.1";
    if (access(o.module, R_OK) == 0)
        CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_ERR_CONFIG);
    o.module = "/etc/hostname"; /* not a library at all */
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_ERR_CONFIG);
    CU_ASSERT_EQUAL(nu_hsm_init_token("/nonexistent/x.so", "t2", SO_PIN, USER_PIN),
                    NU_ERR_NOT_FOUND);
    o.module = NULL;
    o.token_label = "no-such-token";
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_ERR_NOT_FOUND);
    o.token_label = "a-token-label-longer-than-32-bytes!";
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(h2);
    close_token();
}

/* Two tokens with our label (one could be another's, given it): which holds
 * our keys cannot be told, so none is used (the slot can still be named). */
static void test_two_tokens_with_one_label_refused(void)
{
    struct nu_hsm *h2 = NULL;
    fresh_token();
    nu_hsm_close(hsm); /* the module finalised: the next open sees the new token */
    hsm = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("softhsm2-util --init-token --free --label %s --so-pin %s "
                                     "--pin %s >/dev/null 2>&1",
                                     TOKEN, SO_PIN, USER_PIN),
                          0);
    struct nu_hsm_opts o = {.token_label = TOKEN, .pin = USER_PIN};
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_ERR_EXISTS);
    CU_ASSERT_PTR_NULL(h2);
    close_token();
}

static void test_labels_not_found_and_exists(void)
{
    struct nu_hsm_key *key = NULL;
    uint8_t pub[65];
    struct nu_hsm_key_attrs a;
    fresh_token();
    CU_ASSERT_EQUAL(nu_hsm_find_key(hsm, "nope", pub), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(nu_hsm_key_open(hsm, "nope", &key), NU_ERR_NOT_FOUND);
    CU_ASSERT_PTR_NULL(key);
    CU_ASSERT_EQUAL(nu_hsm_key_attr_check(hsm, "nope", &a), NU_ERR_NOT_FOUND);

    CU_ASSERT_EQUAL(nu_hsm_keygen_p256(hsm, "fleet-ca", pub), NU_OK);
    uint8_t pub2[65];
    CU_ASSERT_EQUAL(nu_hsm_keygen_p256(hsm, "fleet-ca", pub2), NU_ERR_EXISTS);
    /* The existing key is untouched. */
    CU_ASSERT_EQUAL(nu_hsm_find_key(hsm, "fleet-ca", pub2), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub, pub2, 65), 0);

    CU_ASSERT_EQUAL(nu_hsm_keygen_p256(hsm, "", pub), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_hsm_keygen_p256(hsm, "bad\nlabel", pub), NU_ERR_INVALID_ARG);
    /* A second token with the same label is refused. */
    CU_ASSERT_EQUAL(nu_hsm_init_token(NULL, TOKEN, SO_PIN, USER_PIN), NU_ERR_EXISTS);
    close_token();
}

static void test_keys_persist_across_reopen(void)
{
    uint8_t pub[65], pub2[65];
    fresh_token();
    CU_ASSERT_EQUAL_FATAL(nu_hsm_keygen_p256(hsm, "package", pub), NU_OK);
    nu_hsm_close(hsm);
    /* The module was finalised (last handle closed); open reinitialises it. */
    struct nu_hsm_opts o = {.token_label = TOKEN, .pin = USER_PIN, .sessions = 1};
    CU_ASSERT_EQUAL_FATAL(nu_hsm_open(&o, &hsm), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_find_key(hsm, "package", pub2), NU_OK);
    CU_ASSERT_EQUAL(memcmp(pub, pub2, 65), 0);
    close_token();
}

static void test_two_handles_share_module(void)
{
    struct nu_hsm *h2 = NULL;
    struct nu_hsm_key *key = NULL;
    uint8_t digest[32], sig[NU_P256_SIG_MAX], pub[65];
    size_t sig_len = sizeof(sig);
    fresh_token();
    struct nu_hsm_opts o = {.token_label = TOKEN, .pin = USER_PIN, .sessions = 2};
    CU_ASSERT_EQUAL_FATAL(nu_hsm_open(&o, &h2), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_keygen_p256(h2, "k", pub), NU_OK);
    nu_hsm_close(hsm); /* must not finalise the module under h2 */
    hsm = h2;
    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_open(hsm, "k", &key), NU_OK);
    sha256("x", digest);
    CU_ASSERT_EQUAL(nu_hsm_key_sign_digest(key, digest, sig, &sig_len), NU_OK);
    CU_ASSERT_TRUE(wolf_verify(pub, digest, sig, sig_len));
    nu_hsm_key_close(key);
    close_token();
}

static void test_pin_file(void)
{
    char path[512], pin[NU_HSM_PIN_MAX + 1];
    fresh_token();
    nu_path_fmt(path, sizeof(path), "%s/hsm/pin", tmp);
    CU_ASSERT_EQUAL(nu_file_write_atomic(path, USER_PIN "\n", strlen(USER_PIN) + 1, 0600), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_pin_load(path, pin, sizeof(pin)), NU_OK);
    CU_ASSERT_STRING_EQUAL(pin, USER_PIN);
    CU_ASSERT_EQUAL(chmod(path, 0400), 0);
    CU_ASSERT_EQUAL(nu_hsm_pin_load(path, pin, sizeof(pin)), NU_OK);

    CU_ASSERT_EQUAL(chmod(path, 0644), 0);
    memset(pin, 'x', sizeof(pin));
    CU_ASSERT_EQUAL(nu_hsm_pin_load(path, pin, sizeof(pin)), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(pin[0], '\0'); /* nothing of the PIN left in the buffer */
    CU_ASSERT_EQUAL(chmod(path, 0640), 0);
    CU_ASSERT_EQUAL(nu_hsm_pin_load(path, pin, sizeof(pin)), NU_ERR_PERMISSION);
    CU_ASSERT_EQUAL(chmod(path, 0600), 0);

    /* A symlink planted in place of the file is refused. */
    char link[512];
    nu_path_fmt(link, sizeof(link), "%s/hsm/pin-link", tmp);
    CU_ASSERT_EQUAL(symlink(path, link), 0);
    CU_ASSERT_NOT_EQUAL(nu_hsm_pin_load(link, pin, sizeof(pin)), NU_OK);

    char missing[512];
    nu_path_fmt(missing, sizeof(missing), "%s/hsm/none", tmp);
    CU_ASSERT_EQUAL(nu_hsm_pin_load(missing, pin, sizeof(pin)), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(nu_hsm_pin_load(path, pin, 4), NU_ERR_TOO_LARGE);

    char empty[512];
    nu_path_fmt(empty, sizeof(empty), "%s/hsm/empty", tmp);
    CU_ASSERT_EQUAL(nu_file_write_atomic(empty, "\n", 1, 0600), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_pin_load(empty, pin, sizeof(pin)), NU_ERR_CONFIG);

    /* No path: the environment. */
    unsetenv("NUSEC_HSM_PIN");
    CU_ASSERT_EQUAL(nu_hsm_pin_load(NULL, pin, sizeof(pin)), NU_ERR_NOT_FOUND);
    setenv("NUSEC_HSM_PIN", USER_PIN, 1);
    CU_ASSERT_EQUAL(nu_hsm_pin_load(NULL, pin, sizeof(pin)), NU_OK);
    CU_ASSERT_STRING_EQUAL(pin, USER_PIN);
    unsetenv("NUSEC_HSM_PIN");

    /* The loaded PIN opens the token. */
    CU_ASSERT_EQUAL(nu_hsm_pin_load(path, pin, sizeof(pin)), NU_OK);
    struct nu_hsm *h2 = NULL;
    struct nu_hsm_opts o = {.token_label = TOKEN, .pin = pin};
    CU_ASSERT_EQUAL(nu_hsm_open(&o, &h2), NU_OK);
    nu_hsm_close(h2);
    nu_zero(pin, sizeof(pin));
    close_token();
}

static void test_softhsm_conf(void)
{
    char conf[512];
    struct stat st;
    fresh_token();
    CU_ASSERT_EQUAL(nu_hsm_softhsm_write_conf(tmp, conf, sizeof(conf)), NU_OK);
    CU_ASSERT_EQUAL(stat(conf, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0600);
    char tokens[512];
    nu_path_fmt(tokens, sizeof(tokens), "%s/hsm/tokens", tmp);
    CU_ASSERT_EQUAL(stat(tokens, &st), 0);
    CU_ASSERT_EQUAL(st.st_mode & 0777, 0700);
    char small[8];
    CU_ASSERT_EQUAL(nu_hsm_softhsm_write_conf(tmp, small, sizeof(small)), NU_ERR_TOO_LARGE);
    /* softhsm2-util sees our token through the written config. */
    CU_ASSERT_EQUAL(
        nu_test_sh("SOFTHSM2_CONF='%s' softhsm2-util --show-slots | grep -q '%s'", conf, TOKEN), 0);
    close_token();
}

/* ---------------------------------------------------------------- threads */

struct worker {
    struct nu_hsm_key *key;
    int n;
    int ok;
};

static void *sign_worker(void *arg)
{
    struct worker *w = arg;
    const struct nu_signer *s = nu_hsm_key_signer(w->key);
    for (int i = 0; i < w->n; i++) {
        uint8_t digest[32], sig[NU_P256_SIG_MAX];
        size_t len = sizeof(sig);
        memset(digest, (int)(i & 0xff), sizeof(digest));
        digest[0] = (uint8_t)(uintptr_t)w;
        if (s->sign_digest(s->ctx, digest, sig, &len) == NU_OK &&
            wolf_verify(s->pub, digest, sig, len))
            w->ok++;
    }
    /* wolfSSL (FP_ECC) keeps a per-thread fixed-point cache for verifications:
     * every thread that verifies must free it before it exits. */
    wc_ecc_fp_free();
    return NULL;
}

static void test_threads_share_one_handle(void)
{
    struct nu_hsm_key *key = NULL;
    pthread_t t[6];
    struct worker w[6];
    fresh_token();
    CU_ASSERT_EQUAL_FATAL(nu_hsm_keygen_p256(hsm, "cloud", NULL), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_open(hsm, "cloud", &key), NU_OK);
    /* 6 threads over a pool of 4 sessions: some wait for a free session. */
    for (int i = 0; i < 6; i++) {
        w[i] = (struct worker){.key = key, .n = 150, .ok = 0};
        CU_ASSERT_EQUAL(pthread_create(&t[i], NULL, sign_worker, &w[i]), 0);
    }
    for (int i = 0; i < 6; i++) {
        pthread_join(t[i], NULL);
        CU_ASSERT_EQUAL(w[i].ok, 150);
    }
    nu_hsm_key_close(key);
    close_token();
}

static void test_measure_sign_rate(void)
{
    struct nu_hsm_key *key = NULL;
    const int n = 2000;
    int ok = 0;
    fresh_token();
    CU_ASSERT_EQUAL_FATAL(nu_hsm_keygen_p256(hsm, "bench", NULL), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_open(hsm, "bench", &key), NU_OK);
    uint64_t t0 = nu_mono_ms();
    for (int i = 0; i < n; i++) {
        uint8_t digest[32], sig[NU_P256_SIG_MAX];
        size_t len = sizeof(sig);
        memset(digest, i & 0xff, sizeof(digest));
        digest[1] = (uint8_t)(i >> 8);
        ok += nu_hsm_key_sign_digest(key, digest, sig, &len) == NU_OK;
    }
    uint64_t ms = nu_mono_ms() - t0;
    CU_ASSERT_EQUAL(ok, n);
    printf("\n  MEASURE hsm sign+verify (reused session, SoftHSM2, this build): %d signs in %llu ms"
           " = %.0f/s\n",
           n, (unsigned long long)ms, ms ? n * 1000.0 / (double)ms : 0.0);
    nu_hsm_key_close(key);
    close_token();
}

static void test_bad_args(void)
{
    uint8_t digest[32] = {0}, sig[72];
    size_t len = sizeof(sig);
    struct nu_hsm *h2 = NULL;
    CU_ASSERT_EQUAL(nu_hsm_open(NULL, &h2), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_hsm_key_sign_digest(NULL, digest, sig, &len), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_hsm_init_token(NULL, "", SO_PIN, USER_PIN), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_hsm_init_token(NULL, "t", NULL, USER_PIN), NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(nu_hsm_key_signer(NULL));
    nu_hsm_close(NULL);
    nu_hsm_key_close(NULL);
}

static int suite_teardown(void)
{
    if (tmp[0])
        nu_test_rmtree(tmp);
    return 0;
}

static const struct nu_test_case cases[] = {
    {"keygen, sign, verify with wolfSSL", test_keygen_sign_verify},
    {"private key sensitive, not extractable, CKA_VALUE refused", test_private_key_protected},
    {"raw PKCS#11 cannot read or unprotect the key", test_raw_pkcs11_cannot_extract},
    {"wrong PIN is PERMISSION", test_wrong_pin_is_permission},
    {"missing/invalid module, unknown token", test_module_and_token_errors},
    {"unknown label NOT_FOUND, duplicate EXISTS", test_labels_not_found_and_exists},
    {"two tokens with one label: refused (EXISTS), none used",
     test_two_tokens_with_one_label_refused},
    {"keys persist across close and reopen", test_keys_persist_across_reopen},
    {"two handles on one module", test_two_handles_share_module},
    {"PIN file mode, symlink, env fallback", test_pin_file},
    {"softhsm2.conf written and usable", test_softhsm_conf},
    {"6 threads sign through one handle", test_threads_share_one_handle},
    {"measure: signs per second", test_measure_sign_rate},
    {"bad arguments", test_bad_args},
    {NULL, NULL},
};

int main(void)
{
    static const struct nu_test_suite suites[] = {
        {"nu_hsm", NULL, suite_teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("test_hsm", suites);
}
