/*
 * The HSM suite: what NuSEC promises about its keys, checked on whatever
 * module a PKI uses. Run as-is it makes a SoftHSM2 PKI (`nusec pki init`);
 * with NUSEC_HSM_SUITE_DIR=DIR it checks the PKI of DIR (test_tpm.sh points
 * it at a TPM 2.0 token through tpm2-pkcs11).
 *
 * - every private key is sensitive, never extractable and made in the token;
 * - a PKCS#11 caller holding the user PIN cannot read or unprotect one;
 * - every key signs, and its signatures verify with its public key;
 * - a module that returns a bad signature never gets it used (p11_shim);
 * - a key the token did not protect as asked is refused and destroyed.
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_paths.h"
#include "nu_pki.h"
#include "nu_test.h"
#include "nu_util.h"

#include <p11-kit/pkcs11.h>

#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char tmp[256], dir[PATH_MAX];
static struct nu_hsm *hsm;          /* the real module, open for the whole suite */
static struct nu_pki_hsm_conf conf; /* how DIR opens it */

static const char *const labels[] = {NU_PKI_KEY_ROOT_CA,   NU_PKI_KEY_FLEET_CA,
                                     NU_PKI_KEY_DEVICE_CA, NU_PKI_KEY_SECURE_BOOT,
                                     NU_PKI_KEY_PACKAGE,   NU_PKI_KEY_AUDIT};
#define N_LABELS (sizeof(labels) / sizeof(labels[0]))

static int setup(void)
{
    const char *given = getenv("NUSEC_HSM_SUITE_DIR");
    if (given) {
        snprintf(dir, sizeof(dir), "%s", given);
    } else {
        if (nu_test_tmpdir("hsm-suite", tmp, sizeof(tmp)))
            return -1;
        snprintf(dir, sizeof(dir), "%s/state", tmp);
        if (nu_test_sh("%s/bin/nusec pki init --dir %s >%s/init.out 2>&1", NUSEC_BINARY_DIR, dir,
                       tmp))
            return -1;
    }
    if (nu_pki_hsm_conf_load(dir, &conf) != NU_OK)
        return -1;
    printf("HSM suite on %s (token %s)\n", conf.module, conf.token_label);
    return nu_pki_open_hsm(dir, 2, &hsm) == NU_OK ? 0 : -1;
}

static int teardown(void)
{
    nu_hsm_close(hsm);
    if (tmp[0])
        nu_test_rmtree(tmp);
    return 0;
}

/* The same token through p11_shim (which forwards to the real module). */
static struct nu_hsm *open_shim(void)
{
    char pin_path[PATH_MAX], pin[NU_HSM_PIN_MAX + 1];
    struct nu_hsm *h = NULL;
    const char *from = conf.pin_file[0] ? conf.pin_file : NULL;
    if (!from && nu_paths_get(dir, NU_PATH_HSM_PIN, pin_path, sizeof(pin_path)) == NU_OK &&
        nu_path_exists(pin_path))
        from = pin_path;
    setenv("NUSEC_SHIM_TARGET", conf.module, 1);
    if (nu_hsm_pin_load(from, pin, sizeof(pin)) != NU_OK)
        return NULL;
    struct nu_hsm_opts o = {.module = NUSEC_P11_SHIM,
                            .token_label = conf.use_slot ? NULL : conf.token_label,
                            .use_slot = conf.use_slot,
                            .slot = conf.slot,
                            .pin = pin,
                            .sessions = 1,
                            .init_args = conf.init_args[0] ? conf.init_args : NULL};
    if (nu_hsm_open(&o, &h) != NU_OK)
        h = NULL;
    nu_zero(pin, sizeof(pin));
    return h;
}

static void test_every_key_is_protected(void)
{
    for (size_t i = 0; i < N_LABELS; i++) {
        struct nu_hsm_key_attrs a;
        CU_ASSERT_EQUAL_FATAL(nu_hsm_key_attr_check(hsm, labels[i], &a), NU_OK);
        CU_ASSERT_PTR_NULL(nu_hsm_key_attrs_refusal(&a));
        CU_ASSERT_TRUE(a.sensitive && a.always_sensitive);
        CU_ASSERT_TRUE(!a.extractable && a.never_extractable);
        CU_ASSERT_TRUE(a.local);
        CU_ASSERT_FALSE(a.value_readable);
    }
}

/* Raw PKCS#11, outside nu_hsm: function list and session on the suite's token. */
static CK_FUNCTION_LIST *raw_session(CK_SESSION_HANDLE *out)
{
    CK_FUNCTION_LIST *f = NULL;
    void *dl = dlopen(conf.module, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    CK_C_GetFunctionList get = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
    if (!get || get(&f) != CKR_OK || !f)
        return NULL;
    /* nu_hsm initialised the module in this process already and is logged in. */
    CK_SLOT_ID slots[16];
    CK_ULONG n = 16;
    CK_UTF8CHAR want[32];
    memset(want, ' ', 32);
    memcpy(want, conf.token_label, strlen(conf.token_label));
    if (f->C_GetSlotList(CK_TRUE, slots, &n) != CKR_OK)
        return NULL;
    for (CK_ULONG i = 0; i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) == CKR_OK && memcmp(ti.label, want, 32) == 0 &&
            f->C_OpenSession(slots[i], CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, out) ==
                CKR_OK)
            return f;
    }
    return NULL;
}

static CK_OBJECT_HANDLE raw_private_key(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, const char *label)
{
    CK_OBJECT_CLASS cls = CKO_PRIVATE_KEY;
    CK_ATTRIBUTE find[] = {{CKA_CLASS, &cls, sizeof(cls)},
                           {CKA_LABEL, (void *)label, strlen(label)}};
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    CK_ULONG count = 0;
    if (f->C_FindObjectsInit(s, find, 2) != CKR_OK)
        return CK_INVALID_HANDLE;
    f->C_FindObjects(s, &priv, 1, &count);
    f->C_FindObjectsFinal(s);
    return count == 1 ? priv : CK_INVALID_HANDLE;
}

/*
 * An attacker holding the user PIN, with raw PKCS#11: the private value of
 * no key can be read. He may also try to unprotect a key: PKCS#11 forbids
 * CKA_SENSITIVE -> FALSE and CKA_EXTRACTABLE -> TRUE, and SoftHSM2 refuses;
 * tpm2-pkcs11 1.9.0 accepts both (it only rewrites its database: the TPM
 * object itself stays fixedTPM). Either way the value stays unreadable and
 * NuSEC refuses that key from then on. Done on a throwaway key, since on a
 * lax module the PKI's keys would be spoilt.
 */
static void test_raw_caller_cannot_extract(void)
{
    CK_SESSION_HANDLE s;
    CK_FUNCTION_LIST *f = raw_session(&s);
    CU_ASSERT_PTR_NOT_NULL_FATAL(f);
    for (size_t k = 0; k < N_LABELS; k++) {
        CK_OBJECT_HANDLE priv = raw_private_key(f, s, labels[k]);
        CU_ASSERT_FATAL(priv != CK_INVALID_HANDLE);
        uint8_t value[128];
        CK_ATTRIBUTE a = {CKA_VALUE, value, sizeof(value)};
        CK_RV rv = f->C_GetAttributeValue(s, priv, &a, 1);
        CU_ASSERT_TRUE(rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION);
    }
    CU_ASSERT_EQUAL_FATAL(nu_hsm_keygen_p256(hsm, "suite-raw", NULL), NU_OK);
    CK_OBJECT_HANDLE priv = raw_private_key(f, s, "suite-raw");
    CU_ASSERT_FATAL(priv != CK_INVALID_HANDLE);
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ATTRIBUTE ext = {CKA_EXTRACTABLE, &yes, sizeof(yes)};
    CK_ATTRIBUTE sens = {CKA_SENSITIVE, &no, sizeof(no)};
    int unprotected = f->C_SetAttributeValue(s, priv, &ext, 1) == CKR_OK;
    unprotected |= f->C_SetAttributeValue(s, priv, &sens, 1) == CKR_OK;
    printf("(module %s flipping the protection flags) ", unprotected ? "allows" : "refuses");
    uint8_t value[128];
    CK_ATTRIBUTE a = {CKA_VALUE, value, sizeof(value)};
    CK_RV rv = f->C_GetAttributeValue(s, priv, &a, 1);
    CU_ASSERT_TRUE(rv != CKR_OK || a.ulValueLen == CK_UNAVAILABLE_INFORMATION);
    struct nu_hsm_key *key = NULL;
    if (unprotected) {
        CU_ASSERT_EQUAL(nu_hsm_key_check(hsm, "suite-raw"), NU_ERR_HSM);
        CU_ASSERT_EQUAL(nu_hsm_key_open(hsm, "suite-raw", &key), NU_ERR_HSM);
    } else {
        CU_ASSERT_EQUAL(nu_hsm_key_check(hsm, "suite-raw"), NU_OK);
    }
    f->C_CloseSession(s);
    CU_ASSERT_EQUAL(nu_hsm_key_destroy(hsm, "suite-raw"), NU_OK);
}

static void test_every_key_signs_and_verifies(void)
{
    for (size_t i = 0; i < N_LABELS; i++) {
        struct nu_hsm_key *key = NULL;
        uint8_t digest[32], sig[NU_P256_SIG_MAX];
        size_t len = sizeof(sig);
        CU_ASSERT_EQUAL_FATAL(nu_hsm_key_open(hsm, labels[i], &key), NU_OK);
        CU_ASSERT_EQUAL(nu_random(digest, sizeof(digest)), NU_OK);
        CU_ASSERT_EQUAL(nu_hsm_key_sign_digest(key, digest, sig, &len), NU_OK);
        CU_ASSERT_EQUAL(nu_p256_verify(nu_hsm_key_signer(key)->pub, digest, sig, len), NU_OK);
        digest[0] ^= 1; /* and not for another digest */
        CU_ASSERT_NOT_EQUAL(nu_p256_verify(nu_hsm_key_signer(key)->pub, digest, sig, len), NU_OK);
        nu_hsm_key_close(key);
    }
}

static void test_bad_signature_is_never_used(void)
{
    struct nu_hsm *shim = open_shim();
    struct nu_hsm_key *key = NULL;
    uint8_t digest[32] = {1, 2, 3}, sig[NU_P256_SIG_MAX];
    size_t len = sizeof(sig);
    CU_ASSERT_PTR_NOT_NULL_FATAL(shim);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_open(shim, NU_PKI_KEY_DEVICE_CA, &key), NU_OK);
    setenv("NUSEC_SHIM_BAD_SIGS", "-1", 1); /* every signature broken */
    CU_ASSERT_EQUAL(nu_hsm_key_sign_digest(key, digest, sig, &len), NU_ERR_HSM);
    setenv("NUSEC_SHIM_BAD_SIGS", "1", 1); /* one broken: retried, the good one returned */
    len = sizeof(sig);
    CU_ASSERT_EQUAL(nu_hsm_key_sign_digest(key, digest, sig, &len), NU_OK);
    CU_ASSERT_EQUAL(nu_p256_verify(nu_hsm_key_signer(key)->pub, digest, sig, len), NU_OK);
    unsetenv("NUSEC_SHIM_BAD_SIGS");
    nu_hsm_key_close(key);
    nu_hsm_close(shim);
}

/* The token logs the application out (a reset, a network HSM's restart):
 * every session loses its login and SoftHSM2 every handle to a private key.
 * The next signature still comes, without reopening anything by hand. */
static void test_signing_survives_a_token_logout(void)
{
    struct nu_hsm *shim = open_shim();
    struct nu_hsm_key *key = NULL;
    uint8_t digest[32] = {4, 5, 6}, sig[NU_P256_SIG_MAX];
    size_t len = sizeof(sig);
    CU_ASSERT_PTR_NOT_NULL_FATAL(shim);
    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_open(shim, NU_PKI_KEY_DEVICE_CA, &key), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_key_sign_digest(key, digest, sig, &len), NU_OK);
    for (int i = 0; i < 2; i++) { /* twice: the handle found again is lost again */
        setenv("NUSEC_SHIM_LOGOUT", "1", 1);
        len = sizeof(sig);
        CU_ASSERT_EQUAL(nu_hsm_key_sign_digest(key, digest, sig, &len), NU_OK);
        CU_ASSERT_EQUAL(nu_p256_verify(nu_hsm_key_signer(key)->pub, digest, sig, len), NU_OK);
    }
    unsetenv("NUSEC_SHIM_LOGOUT");
    nu_hsm_key_close(key);
    nu_hsm_close(shim);
}

/* A thread whose only ECC is the token's signature (its check after the
 * token signs): a cloud worker that answered only refusals. */
static void *sign_only_main(void *arg)
{
    struct nu_hsm_key *key = arg;
    uint8_t digest[32] = {7}, sig[NU_P256_SIG_MAX];
    size_t len = sizeof(sig);
    return (void *)(intptr_t)nu_hsm_key_sign_digest(key, digest, sig, &len);
}

/* It leaves nothing behind when it exits (LeakSanitizer fails the run). */
static void test_signing_thread_exits_clean(void)
{
    struct nu_hsm_key *key = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_open(hsm, NU_PKI_KEY_DEVICE_CA, &key), NU_OK);
    pthread_t t;
    void *rc = NULL;
    CU_ASSERT_EQUAL_FATAL(pthread_create(&t, NULL, sign_only_main, key), 0);
    pthread_join(t, &rc);
    CU_ASSERT_EQUAL((int)(intptr_t)rc, NU_OK);
    nu_hsm_key_close(key);
}

/* Runs last (it removes a key): an audit key gone from the token of a
 * state directory that published one is no reason to run unsigned. */
static void test_missing_audit_key_stops_the_cloud(void)
{
    if (getenv("NUSEC_HSM_SUITE_DIR"))
        return; /* a token the caller keeps: not ours to take a key from */
    CU_ASSERT_EQUAL_FATAL(nu_hsm_key_destroy(hsm, NU_PKI_KEY_AUDIT), NU_OK);
    int rc = nu_test_sh("timeout 20 %s/bin/nusec-cloud --dir %s >%s/cloud.out 2>&1",
                        NUSEC_BINARY_DIR, dir, tmp);
    CU_ASSERT_NOT_EQUAL(rc, 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q \"HSM key 'audit' is missing, but .*audit-key.pem "
                               "says this state directory has one\" %s/cloud.out",
                               tmp),
                    0);
}

static void test_unprotected_key_is_refused(void)
{
    struct nu_hsm *shim = open_shim();
    CU_ASSERT_PTR_NOT_NULL_FATAL(shim);
    static const char *const lies[] = {"NUSEC_SHIM_NOT_LOCAL", "NUSEC_SHIM_EXTRACTABLE"};
    for (int i = 0; i < 2; i++) {
        setenv(lies[i], "1", 1);
        /* A new key the token reports unprotected: refused and destroyed. */
        CU_ASSERT_EQUAL(nu_hsm_keygen_p256(shim, "suite-weak", NULL), NU_ERR_HSM);
        CU_ASSERT_EQUAL(nu_hsm_find_key(hsm, "suite-weak", NULL), NU_ERR_NOT_FOUND);
        /* An existing key that looks so is not adopted. */
        CU_ASSERT_EQUAL(nu_hsm_key_check(shim, NU_PKI_KEY_ROOT_CA), NU_ERR_HSM);
        unsetenv(lies[i]);
    }
    CU_ASSERT_EQUAL(nu_hsm_key_check(shim, NU_PKI_KEY_ROOT_CA), NU_OK);
    nu_hsm_close(shim);
}

static void test_keygen_then_destroy(void)
{
    uint8_t pub[NU_P256_PUB_LEN];
    CU_ASSERT_EQUAL_FATAL(nu_hsm_keygen_p256(hsm, "suite-tmp", pub), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_keygen_p256(hsm, "suite-tmp", NULL), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(nu_hsm_key_check(hsm, "suite-tmp"), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_key_destroy(hsm, "suite-tmp"), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_find_key(hsm, "suite-tmp", NULL), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(nu_hsm_key_destroy(hsm, "suite-tmp"), NU_OK); /* nothing left: fine */
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"every private key is sensitive, never extractable, local", test_every_key_is_protected},
        {"a raw PKCS#11 caller with the PIN cannot extract", test_raw_caller_cannot_extract},
        {"every key signs and verifies", test_every_key_signs_and_verifies},
        {"a bad token signature is never used", test_bad_signature_is_never_used},
        {"an unprotected key is refused", test_unprotected_key_is_refused},
        {"keygen, check, destroy", test_keygen_then_destroy},
        {"signing survives a token logout (sessions and key handles found again)",
         test_signing_survives_a_token_logout},
        {"a thread that only signs leaves nothing behind", test_signing_thread_exits_clean},
        {"a missing audit key stops the cloud (no unsigned checkpoints)",
         test_missing_audit_key_stops_the_cloud},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"hsm suite", setup, teardown, cases}, {NULL}};
    return nu_test_run("test_hsm_suite", suites);
}
