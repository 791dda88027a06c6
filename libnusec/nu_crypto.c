/*
 * nu_crypto — wolfCrypt wrappers. See nu_crypto.h for the contract.
 *
 * Every wolfCrypt status is mapped here (crypto__err) so callers only ever see
 * NU_ERR_* codes; the wolfCrypt code is logged at debug level for diagnosis.
 */
#include "nu_crypto.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>

#include <wolfssl/wolfcrypt/aes.h>
#include <wolfssl/wolfcrypt/asn_public.h>
#include <wolfssl/wolfcrypt/ecc.h>
#include <wolfssl/wolfcrypt/ed25519.h>
#include <wolfssl/wolfcrypt/error-crypt.h>
#include <wolfssl/wolfcrypt/hmac.h>
#include <wolfssl/wolfcrypt/random.h>
#include <wolfssl/wolfcrypt/rsa.h>
#include <wolfssl/wolfcrypt/sha256.h>
#include <wolfssl/wolfcrypt/wc_port.h>

#include <limits.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

/* The caller-allocated hash context must hold a wc_Sha256. */
_Static_assert(sizeof(wc_Sha256) <= sizeof(((struct nu_sha256_ctx *)0)->opaque),
               "nu_sha256_ctx too small for wc_Sha256");
_Static_assert(_Alignof(wc_Sha256) <= 16, "nu_sha256_ctx under-aligned for wc_Sha256");

/* DER of the prime256v1 OID (1.2.840.10045.3.1.7), and of id-ecPublicKey. */
static const uint8_t crypto__p256_oid[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x03, 0x01, 0x07};
static const uint8_t crypto__ecpub_oid[] = {0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01};

/* Group order n of P-256, big-endian: a private scalar must be in [1, n-1]. */
static const uint8_t crypto__p256_n[NU_P256_PRIV_LEN] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
    0xbc, 0xe6, 0xfa, 0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51};

struct nu_p256_key {
    pthread_mutex_t lock; /* serialises use of rng and ecc across threads */
    WC_RNG rng;           /* per key, so keys never share generator state */
    ecc_key ecc;
    uint8_t pub[NU_P256_PUB_LEN];
    int rng_ready;
    int ecc_ready;
};

/*
 * Process-wide state, the only one of this module: wolfCrypt_Init() once per
 * process (pthread_once), and a thread-exit hook. This wolfSSL build has
 * FP_ECC with a per-thread fixed-point cache (~1.6 MB of heap per thread that
 * did ECC) that is only released by wc_ecc_fp_free() on that thread; the
 * pthread key's destructor does that when a thread that used us exits.
 */
static pthread_once_t crypto__once = PTHREAD_ONCE_INIT;
static pthread_key_t crypto__thread_key;
static int crypto__init_status;

static void crypto__thread_exit(void *unused)
{
    (void)unused;
#ifdef FP_ECC
    wc_ecc_fp_free();
#endif
}

static void crypto__init_once(void)
{
    crypto__init_status = wolfCrypt_Init();
    if (crypto__init_status == 0 &&
        pthread_key_create(&crypto__thread_key, crypto__thread_exit) != 0)
        crypto__init_status = -1;
}

/* Call at the top of every operation that may touch ECC. */
static int crypto__init(void)
{
    if (pthread_once(&crypto__once, crypto__init_once) != 0 || crypto__init_status != 0)
        return NU_ERR_CRYPTO;
    /* Any non-NULL value arms the destructor for this thread. */
    if (!pthread_getspecific(crypto__thread_key) &&
        pthread_setspecific(crypto__thread_key, &crypto__once) != 0)
        return NU_ERR_NOMEM;
    return NU_OK;
}

int nu_crypto_thread_arm(void)
{
    return crypto__init();
}

static int crypto__err(int wc, int fallback, const char *what)
{
    nu_debug("crypto: %s: wolfCrypt %d (%s)", what, wc, wc_GetErrorString(wc));
    if (wc == MEMORY_E)
        return NU_ERR_NOMEM;
    return fallback;
}

static int crypto__contains(const uint8_t *hay, size_t hay_len, const uint8_t *needle,
                            size_t needle_len)
{
    for (size_t i = 0; i + needle_len <= hay_len; i++) {
        if (memcmp(hay + i, needle, needle_len) == 0)
            return 1;
    }
    return 0;
}

/* Copy text into a fresh NUL-terminated heap buffer: wolfCrypt's PEM parser
 * scans for strings, so give it a terminated copy of untrusted text. */
static int crypto__pem_copy(const char *pem, size_t pem_len, char **out)
{
    *out = NULL;
    if (!pem)
        return NU_ERR_INVALID_ARG;
    if (pem_len > NU_PEM_IN_MAX)
        return NU_ERR_TOO_LARGE;
    if (pem_len == 0)
        return NU_ERR_DECODE;
    char *copy = malloc(pem_len + 1);
    if (!copy)
        return NU_ERR_NOMEM;
    memcpy(copy, pem, pem_len);
    copy[pem_len] = '\0';
    *out = copy;
    return NU_OK;
}

/* ------------------------------------------------------------------ SHA-256 */

int nu_sha256(const void *data, size_t len, uint8_t out[NU_SHA256_LEN])
{
    struct nu_sha256_ctx ctx;
    int rc = nu_sha256_init(&ctx);
    if (rc != NU_OK)
        return rc;
    rc = nu_sha256_update(&ctx, data, len);
    if (rc != NU_OK) {
        nu_sha256_abort(&ctx);
        return rc;
    }
    return nu_sha256_final(&ctx, out);
}

int nu_sha256_init(struct nu_sha256_ctx *ctx)
{
    if (!ctx)
        return NU_ERR_INVALID_ARG;
    memset(ctx, 0, sizeof(*ctx));
    int wc = wc_InitSha256_ex((wc_Sha256 *)ctx->opaque, NULL, INVALID_DEVID);
    return wc == 0 ? NU_OK : crypto__err(wc, NU_ERR_CRYPTO, "sha256 init");
}

int nu_sha256_update(struct nu_sha256_ctx *ctx, const void *data, size_t len)
{
    if (!ctx || (!data && len))
        return NU_ERR_INVALID_ARG;
    /* wolfCrypt takes word32 lengths: feed big buffers in slices. */
    const uint8_t *p = data;
    while (len > 0) {
        word32 n = len > 0x40000000u ? 0x40000000u : (word32)len;
        int wc = wc_Sha256Update((wc_Sha256 *)ctx->opaque, p, n);
        if (wc != 0)
            return crypto__err(wc, NU_ERR_CRYPTO, "sha256 update");
        p += n;
        len -= n;
    }
    return NU_OK;
}

int nu_sha256_final(struct nu_sha256_ctx *ctx, uint8_t out[NU_SHA256_LEN])
{
    if (!ctx || !out)
        return NU_ERR_INVALID_ARG;
    int wc = wc_Sha256Final((wc_Sha256 *)ctx->opaque, out);
    nu_sha256_abort(ctx);
    return wc == 0 ? NU_OK : crypto__err(wc, NU_ERR_CRYPTO, "sha256 final");
}

void nu_sha256_abort(struct nu_sha256_ctx *ctx)
{
    if (!ctx)
        return;
    wc_Sha256Free((wc_Sha256 *)ctx->opaque);
    nu_zero(ctx, sizeof(*ctx));
}

/* --------------------------------------------------------- public key points */

/* Field prime p of P-256, big-endian: affine coordinates must be below it. */
static const uint8_t crypto__p256_p[32] = {
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x01, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00,
    0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};

/*
 * Import an untrusted 65-byte point into an initialised ecc_key and validate
 * it: uncompressed form, coordinates in [0, p-1], not the identity, on the
 * curve. That is SP 800-56A's partial validation, which is complete for P-256
 * (cofactor 1, so every curve point is in the prime-order group). We avoid
 * wc_ecc_check_key() here on purpose: its extra n*Q multiplication is
 * redundant for P-256, and a second use of a fresh point makes this wolfSSL's
 * FP_ECC cache build a lookup table for it (~6 ms), which made every ECDH
 * with a new ephemeral key 100 times slower.
 */
static int pub__import(const uint8_t pub[NU_P256_PUB_LEN], ecc_key *key)
{
    if (pub[0] != 0x04 || memcmp(pub + 1, crypto__p256_p, 32) >= 0 ||
        memcmp(pub + 33, crypto__p256_p, 32) >= 0)
        return NU_ERR_DECODE;
    int wc = wc_ecc_import_x963_ex(pub, NU_P256_PUB_LEN, key, ECC_SECP256R1);
    if (wc != 0)
        return crypto__err(wc, NU_ERR_DECODE, "import point");
    if (wc_ecc_point_is_at_infinity(&key->pubkey))
        return NU_ERR_DECODE;
    wc = wc_ecc_point_is_on_curve(&key->pubkey, key->idx);
    if (wc != 0)
        return crypto__err(wc, NU_ERR_DECODE, "point not on curve");
    return NU_OK;
}

int nu_p256_pub_check(const uint8_t pub[NU_P256_PUB_LEN])
{
    if (!pub)
        return NU_ERR_INVALID_ARG;
    int rc = crypto__init();
    if (rc != NU_OK)
        return rc;
    ecc_key key;
    if (wc_ecc_init(&key) != 0)
        return NU_ERR_CRYPTO;
    rc = pub__import(pub, &key);
    wc_ecc_free(&key);
    return rc;
}

/* Map a wolfCrypt verify status to ours: parse failures are DECODE, a signature
 * whose r or s is out of range is simply a bad signature. */
static int verify__status(int wc)
{
    switch (wc) {
    case MEMORY_E:
        return NU_ERR_NOMEM;
    case MP_ZERO_E:
    case ECC_OUT_OF_RANGE_E:
    case MP_VAL:
        return crypto__err(wc, NU_ERR_BAD_SIGNATURE, "verify");
    default:
        return crypto__err(wc, NU_ERR_DECODE, "verify");
    }
}

int nu_p256_verify(const uint8_t pub[NU_P256_PUB_LEN], const uint8_t digest[NU_SHA256_LEN],
                   const uint8_t *sig, size_t sig_len)
{
    if (!pub || !digest || !sig)
        return NU_ERR_INVALID_ARG;
    if (sig_len == 0 || sig_len > NU_P256_SIG_MAX)
        return NU_ERR_DECODE;
    int rc = crypto__init();
    if (rc != NU_OK)
        return rc;
    ecc_key key;
    if (wc_ecc_init(&key) != 0)
        return NU_ERR_CRYPTO;
    rc = pub__import(pub, &key);
    if (rc != NU_OK)
        goto out;
    int valid = 0;
    int wc = wc_ecc_verify_hash(sig, (word32)sig_len, digest, NU_SHA256_LEN, &valid, &key);
    if (wc != 0)
        rc = verify__status(wc);
    else
        rc = valid == 1 ? NU_OK : NU_ERR_BAD_SIGNATURE;
out:
    wc_ecc_free(&key);
    return rc;
}

static int pub__der(const uint8_t pub[NU_P256_PUB_LEN], uint8_t der[NU_P256_PUB_DER_LEN])
{
    int rc = crypto__init();
    if (rc != NU_OK)
        return rc;
    ecc_key key;
    if (wc_ecc_init(&key) != 0)
        return NU_ERR_CRYPTO;
    rc = pub__import(pub, &key);
    if (rc != NU_OK)
        goto out;
    int n = wc_EccPublicKeyToDer(&key, der, NU_P256_PUB_DER_LEN, 1);
    if (n != NU_P256_PUB_DER_LEN)
        rc = crypto__err(n, NU_ERR_CRYPTO, "public key to DER");
out:
    wc_ecc_free(&key);
    return rc;
}

int nu_p256_pub_to_der(const uint8_t pub[NU_P256_PUB_LEN], uint8_t *out, size_t cap,
                       size_t *out_len)
{
    if (!pub || !out || !out_len)
        return NU_ERR_INVALID_ARG;
    if (cap < NU_P256_PUB_DER_LEN)
        return NU_ERR_TOO_LARGE;
    int rc = pub__der(pub, out);
    *out_len = rc == NU_OK ? NU_P256_PUB_DER_LEN : 0;
    return rc;
}

/* DER -> PEM of `type` into out[cap], NUL-terminated. */
static int crypto__to_pem(const uint8_t *der, size_t der_len, int type, char *out, size_t cap,
                          size_t *out_len)
{
    uint8_t pem[NU_P256_PRIV_PEM_MAX];
    int n = wc_DerToPem(der, (word32)der_len, pem, sizeof(pem), type);
    int rc = NU_OK;
    if (n <= 0) {
        rc = crypto__err(n, NU_ERR_CRYPTO, "DER to PEM");
        goto out;
    }
    if ((size_t)n >= cap) {
        rc = NU_ERR_TOO_LARGE;
        goto out;
    }
    memcpy(out, pem, (size_t)n);
    out[n] = '\0';
    *out_len = (size_t)n;
out:
    nu_zero(pem, sizeof(pem)); /* may be a private key */
    return rc;
}

int nu_p256_pub_to_pem(const uint8_t pub[NU_P256_PUB_LEN], char *out, size_t cap, size_t *out_len)
{
    if (!pub || !out || !out_len || cap == 0)
        return NU_ERR_INVALID_ARG;
    *out_len = 0;
    out[0] = '\0';
    uint8_t der[NU_P256_PUB_DER_LEN];
    int rc = pub__der(pub, der);
    if (rc != NU_OK)
        return rc;
    return crypto__to_pem(der, sizeof(der), PUBLICKEY_TYPE, out, cap, out_len);
}

/* Is this well-formed SubjectPublicKeyInfo of an algorithm we do not do? */
static int pub__other_algorithm(const uint8_t *der, word32 len)
{
    int other = 0;
    word32 idx = 0;
    RsaKey rsa;
    if (wc_InitRsaKey(&rsa, NULL) == 0) {
        other = wc_RsaPublicKeyDecode(der, &idx, &rsa, len) == 0;
        wc_FreeRsaKey(&rsa);
    }
    ed25519_key ed;
    if (!other && wc_ed25519_init(&ed) == 0) {
        idx = 0;
        other = wc_Ed25519PublicKeyDecode(der, &idx, &ed, len) == 0;
        wc_ed25519_free(&ed);
    }
    return other;
}

int nu_p256_pub_from_der(const uint8_t *der, size_t der_len, uint8_t out_pub[NU_P256_PUB_LEN])
{
    if (!der || !out_pub)
        return NU_ERR_INVALID_ARG;
    if (der_len > NU_DER_IN_MAX)
        return NU_ERR_TOO_LARGE;
    if (der_len == 0)
        return NU_ERR_DECODE;
    int rc = crypto__init();
    if (rc != NU_OK)
        return rc;
    ecc_key key;
    if (wc_ecc_init(&key) != 0)
        return NU_ERR_CRYPTO;
    word32 idx = 0;
    int wc = wc_EccPublicKeyDecode(der, &idx, &key, (word32)der_len);
    if (wc != 0) {
        int other = wc == ECC_CURVE_OID_E || pub__other_algorithm(der, (word32)der_len);
        rc = crypto__err(wc, other ? NU_ERR_NOT_SUPPORTED : NU_ERR_DECODE, "SPKI decode");
        goto out;
    }
    if (idx != der_len) {
        rc = NU_ERR_DECODE; /* trailing bytes */
        goto out;
    }
    if (wc_ecc_get_curve_id(key.idx) != ECC_SECP256R1 ||
        !crypto__contains(der, der_len, crypto__p256_oid, sizeof(crypto__p256_oid))) {
        rc = NU_ERR_NOT_SUPPORTED;
        goto out;
    }
    uint8_t pub[NU_P256_PUB_LEN];
    word32 pub_len = sizeof(pub);
    wc = wc_ecc_export_x963(&key, pub, &pub_len);
    if (wc != 0 || pub_len != NU_P256_PUB_LEN) {
        rc = crypto__err(wc, NU_ERR_DECODE, "export point");
        goto out;
    }
    rc = nu_p256_pub_check(pub);
    if (rc == NU_OK)
        memcpy(out_pub, pub, NU_P256_PUB_LEN);
out:
    wc_ecc_free(&key);
    return rc;
}

int nu_p256_pub_from_pem(const char *pem, size_t pem_len, uint8_t out_pub[NU_P256_PUB_LEN])
{
    if (!out_pub)
        return NU_ERR_INVALID_ARG;
    char *text = NULL;
    uint8_t *der = NULL;
    int rc = crypto__pem_copy(pem, pem_len, &text);
    if (rc != NU_OK)
        return rc;
    der = malloc(pem_len);
    if (!der) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    int n = wc_PubKeyPemToDer((const unsigned char *)text, (int)pem_len, der, (int)pem_len);
    if (n <= 0) {
        rc = crypto__err(n, NU_ERR_DECODE, "public key PEM");
        goto out;
    }
    rc = nu_p256_pub_from_der(der, (size_t)n, out_pub);
out:
    free(der);
    free(text);
    return rc;
}

/* ------------------------------------------------------- software P-256 key */

static int key__new(struct nu_p256_key **out_key)
{
    *out_key = NULL;
    int rc = crypto__init();
    if (rc != NU_OK)
        return rc;
    struct nu_p256_key *k = calloc(1, sizeof(*k));
    if (!k)
        return NU_ERR_NOMEM;
    if (pthread_mutex_init(&k->lock, NULL) != 0) {
        free(k);
        return NU_ERR_NOMEM;
    }
    int wc = wc_InitRng(&k->rng);
    if (wc != 0) {
        rc = crypto__err(wc, NU_ERR_CRYPTO, "rng init");
        goto fail;
    }
    k->rng_ready = 1;
    wc = wc_ecc_init(&k->ecc);
    if (wc != 0) {
        rc = crypto__err(wc, NU_ERR_CRYPTO, "ecc init");
        goto fail;
    }
    k->ecc_ready = 1;
    /* ECC_TIMING_RESISTANT builds blind the scalar multiplication with it. */
    wc = wc_ecc_set_rng(&k->ecc, &k->rng);
    if (wc != 0) {
        rc = crypto__err(wc, NU_ERR_CRYPTO, "ecc set rng");
        goto fail;
    }
    *out_key = k;
    return NU_OK;
fail:
    nu_p256_key_destroy(k);
    return rc;
}

void nu_p256_key_destroy(struct nu_p256_key *key)
{
    if (!key)
        return;
    if (key->ecc_ready)
        wc_ecc_free(&key->ecc);
    if (key->rng_ready)
        wc_FreeRng(&key->rng);
    pthread_mutex_destroy(&key->lock);
    nu_zero(key, sizeof(*key));
    free(key);
}

/* 1 when d is in [1, n-1]. Big-endian fixed width, so memcmp orders them. */
static int key__scalar_in_range(const uint8_t d[NU_P256_PRIV_LEN])
{
    static const uint8_t zero[NU_P256_PRIV_LEN];
    return memcmp(d, zero, sizeof(zero)) != 0 && memcmp(d, crypto__p256_n, sizeof(zero)) < 0;
}

/*
 * Make k hold exactly the scalar d with the public key recomputed as d*G.
 * wolfCrypt's key check does not compare a stored public key with d, so we
 * never trust a stored one: we rebuild the pair and let callers compare.
 */
static int key__set_scalar(struct nu_p256_key *k, const uint8_t d[NU_P256_PRIV_LEN])
{
    if (!key__scalar_in_range(d))
        return NU_ERR_DECODE;
    wc_ecc_free(&k->ecc);
    k->ecc_ready = 0;
    int wc = wc_ecc_init(&k->ecc);
    if (wc != 0)
        return crypto__err(wc, NU_ERR_CRYPTO, "ecc init");
    k->ecc_ready = 1;
    wc = wc_ecc_set_rng(&k->ecc, &k->rng);
    if (wc == 0)
        wc = wc_ecc_import_private_key_ex(d, NU_P256_PRIV_LEN, NULL, 0, &k->ecc, ECC_SECP256R1);
    if (wc == 0)
        wc = wc_ecc_make_pub_ex(&k->ecc, NULL, &k->rng);
    if (wc == 0)
        wc = wc_ecc_check_key(&k->ecc);
    word32 pub_len = sizeof(k->pub);
    if (wc == 0)
        wc = wc_ecc_export_x963(&k->ecc, k->pub, &pub_len);
    if (wc != 0 || pub_len != NU_P256_PUB_LEN)
        return crypto__err(wc, NU_ERR_CRYPTO, "rebuild key pair");
    return NU_OK;
}

/*
 * After decoding a key file: P-256 only, scalar in range, and a public key in
 * the file (optional in SEC1) must equal d*G.
 */
static int key__finish_decoded(struct nu_p256_key *k)
{
    if (wc_ecc_get_curve_id(k->ecc.idx) != ECC_SECP256R1)
        return NU_ERR_NOT_SUPPORTED;
    uint8_t d[NU_P256_PRIV_LEN];
    uint8_t stored[NU_P256_PUB_LEN];
    word32 d_len = sizeof(d), stored_len = sizeof(stored);
    int has_pub = k->ecc.type == ECC_PRIVATEKEY;
    int rc = NU_OK;
    int wc = wc_ecc_export_private_only(&k->ecc, d, &d_len);
    if (wc != 0 || d_len != sizeof(d)) {
        rc = crypto__err(wc, NU_ERR_DECODE, "private scalar");
        goto out;
    }
    if (has_pub) {
        wc = wc_ecc_export_x963(&k->ecc, stored, &stored_len);
        if (wc != 0 || stored_len != sizeof(stored)) {
            rc = crypto__err(wc, NU_ERR_DECODE, "stored public key");
            goto out;
        }
    }
    rc = key__set_scalar(k, d);
    if (rc == NU_OK && has_pub && memcmp(stored, k->pub, NU_P256_PUB_LEN) != 0)
        rc = NU_ERR_DECODE; /* public key does not belong to d */
out:
    nu_zero(d, sizeof(d));
    return rc;
}

int nu_p256_key_generate(struct nu_p256_key **out_key)
{
    if (!out_key)
        return NU_ERR_INVALID_ARG;
    struct nu_p256_key *k = NULL;
    int rc = key__new(&k);
    if (rc != NU_OK)
        return rc;
    int wc = wc_ecc_make_key_ex(&k->rng, 32, &k->ecc, ECC_SECP256R1);
    word32 pub_len = sizeof(k->pub);
    if (wc == 0)
        wc = wc_ecc_export_x963(&k->ecc, k->pub, &pub_len);
    if (wc != 0 || pub_len != NU_P256_PUB_LEN)
        rc = crypto__err(wc, NU_ERR_CRYPTO, "keygen");
    if (rc != NU_OK)
        nu_p256_key_destroy(k);
    else
        *out_key = k;
    return rc;
}

int nu_p256_key_import_priv(const uint8_t d[NU_P256_PRIV_LEN], struct nu_p256_key **out_key)
{
    if (!d || !out_key)
        return NU_ERR_INVALID_ARG;
    *out_key = NULL;
    if (!key__scalar_in_range(d))
        return NU_ERR_DECODE;
    struct nu_p256_key *k = NULL;
    int rc = key__new(&k);
    if (rc != NU_OK)
        return rc;
    rc = key__set_scalar(k, d);
    if (rc != NU_OK)
        nu_p256_key_destroy(k);
    else
        *out_key = k;
    return rc;
}

/*
 * Decode SEC1 or PKCS#8 DER into k. wolfCrypt picks the curve from the key
 * size when the OID is missing (a 32-byte secp256k1 key would pass for P-256),
 * so insist that the P-256 OID is present in what was parsed.
 */
static int key__decode_der(struct nu_p256_key *k, const uint8_t *der, word32 len)
{
    word32 idx = 0;
    int pkcs8 = wc_GetPkcs8TraditionalOffset((byte *)der, &idx, len) >= 0;
    if (!pkcs8)
        idx = 0;
    int wc = wc_EccPrivateKeyDecode(der, &idx, &k->ecc, len);
    if (wc != 0) {
        /* A PKCS#8 envelope for a non-EC algorithm parses but its key does not. */
        int other =
            pkcs8 && !crypto__contains(der, idx, crypto__ecpub_oid, sizeof(crypto__ecpub_oid));
        return crypto__err(wc, other ? NU_ERR_NOT_SUPPORTED : NU_ERR_DECODE, "key decode");
    }
    if (idx != len)
        return NU_ERR_DECODE;
    if (!crypto__contains(der, len, crypto__p256_oid, sizeof(crypto__p256_oid)))
        return NU_ERR_NOT_SUPPORTED;
    return key__finish_decoded(k);
}

int nu_p256_key_from_pem(const char *pem, size_t pem_len, struct nu_p256_key **out_key)
{
    if (!out_key)
        return NU_ERR_INVALID_ARG;
    *out_key = NULL;
    char *text = NULL;
    uint8_t *der = NULL;
    struct nu_p256_key *k = NULL;
    int rc = crypto__pem_copy(pem, pem_len, &text);
    if (rc != NU_OK)
        return rc;
    der = malloc(pem_len);
    if (!der) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    int n = wc_KeyPemToDer((const unsigned char *)text, (int)pem_len, der, (int)pem_len, NULL);
    if (n <= 0) {
        rc = crypto__err(n, NU_ERR_DECODE, "private key PEM");
        goto out;
    }
    rc = key__new(&k);
    if (rc != NU_OK)
        goto out;
    rc = key__decode_der(k, der, (word32)n);
out:
    if (rc != NU_OK)
        nu_p256_key_destroy(k);
    else
        *out_key = k;
    if (der)
        nu_zero(der, pem_len);
    free(der);
    nu_zero(text, text ? pem_len : 0);
    free(text);
    return rc;
}

int nu_p256_key_load_pem(const char *path, struct nu_p256_key **out_key)
{
    if (!path || !out_key)
        return NU_ERR_INVALID_ARG;
    *out_key = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = nu_file_read(path, NU_PEM_IN_MAX, &buf, &len);
    if (rc != NU_OK)
        return rc;
    rc = nu_p256_key_from_pem((const char *)buf, len, out_key);
    nu_zero(buf, len);
    free(buf);
    return rc;
}

int nu_p256_key_to_pem(struct nu_p256_key *key, char *out, size_t cap, size_t *out_len)
{
    if (!key || !out || !out_len || cap == 0)
        return NU_ERR_INVALID_ARG;
    *out_len = 0;
    out[0] = '\0';
    uint8_t der[256];
    pthread_mutex_lock(&key->lock);
    /* With the public point (RFC 5915's optional field): GnuTLS, which
     * libmicrohttpd's HTTPS uses, refuses an EC key without it. */
    int n = wc_EccKeyToDer(&key->ecc, der, sizeof(der));
    pthread_mutex_unlock(&key->lock);
    int rc;
    if (n <= 0)
        rc = crypto__err(n, NU_ERR_CRYPTO, "private key to DER");
    else
        rc = crypto__to_pem(der, (size_t)n, ECC_PRIVATEKEY_TYPE, out, cap, out_len);
    nu_zero(der, sizeof(der));
    return rc;
}

int nu_p256_key_save_pem(struct nu_p256_key *key, const char *path)
{
    if (!key || !path)
        return NU_ERR_INVALID_ARG;
    char pem[NU_P256_PRIV_PEM_MAX];
    size_t len = 0;
    int rc = nu_p256_key_to_pem(key, pem, sizeof(pem), &len);
    if (rc == NU_OK)
        rc = nu_file_write_atomic(path, pem, len, 0600);
    nu_zero(pem, sizeof(pem));
    return rc;
}

int nu_p256_key_pub(const struct nu_p256_key *key, uint8_t out_pub[NU_P256_PUB_LEN])
{
    if (!key || !out_pub)
        return NU_ERR_INVALID_ARG;
    memcpy(out_pub, key->pub, NU_P256_PUB_LEN);
    return NU_OK;
}

int nu_p256_key_sign_digest(struct nu_p256_key *key, const uint8_t digest[NU_SHA256_LEN],
                            uint8_t *sig, size_t *sig_len)
{
    if (!key || !digest || !sig || !sig_len)
        return NU_ERR_INVALID_ARG;
    int rc = crypto__init(); /* this thread may not have done ECC yet */
    if (rc != NU_OK)
        return rc;
    uint8_t der[NU_P256_SIG_MAX];
    word32 der_len = sizeof(der);
    pthread_mutex_lock(&key->lock);
    int wc = wc_ecc_sign_hash(digest, NU_SHA256_LEN, der, &der_len, &key->rng, &key->ecc);
    pthread_mutex_unlock(&key->lock);
    if (wc != 0)
        return crypto__err(wc, NU_ERR_CRYPTO, "sign");
    if (der_len > *sig_len)
        return NU_ERR_TOO_LARGE;
    memcpy(sig, der, der_len);
    *sig_len = der_len;
    return NU_OK;
}

static int key__signer_sign(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    return nu_p256_key_sign_digest(ctx, digest, sig, sig_len);
}

int nu_p256_key_signer(struct nu_p256_key *key, struct nu_signer *out)
{
    if (!key || !out)
        return NU_ERR_INVALID_ARG;
    out->ctx = key;
    out->sign_digest = key__signer_sign;
    memcpy(out->pub, key->pub, NU_P256_PUB_LEN);
    return NU_OK;
}

int nu_ecdh_p256(struct nu_p256_key *key, const uint8_t peer_pub[NU_P256_PUB_LEN],
                 uint8_t out_secret[NU_ECDH_SECRET_LEN])
{
    if (!key || !peer_pub || !out_secret)
        return NU_ERR_INVALID_ARG;
    int rc = crypto__init();
    if (rc != NU_OK)
        return rc;
    ecc_key peer;
    if (wc_ecc_init(&peer) != 0)
        return NU_ERR_CRYPTO;
    rc = pub__import(peer_pub, &peer);
    if (rc != NU_OK)
        goto out;
    word32 len = NU_ECDH_SECRET_LEN;
    pthread_mutex_lock(&key->lock);
    int wc = wc_ecc_shared_secret(&key->ecc, &peer, out_secret, &len);
    pthread_mutex_unlock(&key->lock);
    if (wc != 0 || len != NU_ECDH_SECRET_LEN) {
        nu_zero(out_secret, NU_ECDH_SECRET_LEN);
        rc = crypto__err(wc, NU_ERR_CRYPTO, "ecdh");
    }
out:
    wc_ecc_free(&peer);
    return rc;
}

/* ----------------------------------------------------------- HKDF, AES-GCM */

int nu_hkdf_sha256(const uint8_t *ikm, size_t ikm_len, const uint8_t *salt, size_t salt_len,
                   const uint8_t *info, size_t info_len, uint8_t *out, size_t out_len)
{
    static const uint8_t empty[1];
    if ((!ikm && ikm_len) || (!salt && salt_len) || (!info && info_len) || !out)
        return NU_ERR_INVALID_ARG;
    if (out_len == 0 || out_len > 255u * NU_SHA256_LEN || ikm_len > UINT32_MAX ||
        salt_len > UINT32_MAX || info_len > UINT32_MAX)
        return NU_ERR_INVALID_ARG;
    int wc = wc_HKDF(WC_SHA256, ikm ? ikm : empty, (word32)ikm_len, salt_len ? salt : NULL,
                     (word32)salt_len, info ? info : empty, (word32)info_len, out, (word32)out_len);
    return wc == 0 ? NU_OK : crypto__err(wc, NU_ERR_CRYPTO, "hkdf");
}

static int gcm__check(const uint8_t *key, const uint8_t *nonce, const uint8_t *aad, size_t aad_len,
                      const uint8_t *in, size_t len, const uint8_t *out, const uint8_t *tag)
{
    if (!key || !nonce || !tag || (!aad && aad_len) || ((!in || !out) && len))
        return NU_ERR_INVALID_ARG;
    if (len > UINT32_MAX || aad_len > UINT32_MAX)
        return NU_ERR_TOO_LARGE;
    return NU_OK;
}

static int gcm__init(Aes *aes, const uint8_t key[NU_AES256_KEY_LEN])
{
    int wc = wc_AesInit(aes, NULL, INVALID_DEVID);
    if (wc != 0)
        return crypto__err(wc, NU_ERR_CRYPTO, "aes init");
    wc = wc_AesGcmSetKey(aes, key, NU_AES256_KEY_LEN);
    if (wc != 0) {
        wc_AesFree(aes);
        return crypto__err(wc, NU_ERR_CRYPTO, "gcm set key");
    }
    return NU_OK;
}

int nu_aes256gcm_encrypt(const uint8_t key[NU_AES256_KEY_LEN],
                         const uint8_t nonce[NU_GCM_NONCE_LEN], const uint8_t *aad, size_t aad_len,
                         const uint8_t *in, size_t len, uint8_t *out,
                         uint8_t out_tag[NU_GCM_TAG_LEN])
{
    int rc = gcm__check(key, nonce, aad, aad_len, in, len, out, out_tag);
    if (rc != NU_OK)
        return rc;
    Aes aes;
    rc = gcm__init(&aes, key);
    if (rc != NU_OK)
        return rc;
    uint8_t none[1] = {0}; /* wolfCrypt wants non-NULL buffers even when empty */
    int wc = wc_AesGcmEncrypt(&aes, len ? out : none, len ? in : none, (word32)len, nonce,
                              NU_GCM_NONCE_LEN, out_tag, NU_GCM_TAG_LEN, aad_len ? aad : NULL,
                              (word32)aad_len);
    if (wc != 0)
        rc = crypto__err(wc, NU_ERR_CRYPTO, "gcm encrypt");
    wc_AesFree(&aes);
    nu_zero(&aes, sizeof(aes));
    return rc;
}

int nu_aes256gcm_decrypt(const uint8_t key[NU_AES256_KEY_LEN],
                         const uint8_t nonce[NU_GCM_NONCE_LEN], const uint8_t *aad, size_t aad_len,
                         const uint8_t *in, size_t len, uint8_t *out,
                         const uint8_t tag[NU_GCM_TAG_LEN])
{
    int rc = gcm__check(key, nonce, aad, aad_len, in, len, out, tag);
    if (rc != NU_OK)
        return rc;
    Aes aes;
    rc = gcm__init(&aes, key);
    if (rc != NU_OK)
        return rc;
    uint8_t none[1] = {0}; /* wolfCrypt wants non-NULL buffers even when empty */
    int wc = wc_AesGcmDecrypt(&aes, len ? out : none, len ? in : none, (word32)len, nonce,
                              NU_GCM_NONCE_LEN, tag, NU_GCM_TAG_LEN, aad_len ? aad : NULL,
                              (word32)aad_len);
    if (wc != 0) {
        /* Some wolfCrypt paths decrypt before comparing the tag: leave nothing. */
        if (len)
            nu_zero(out, len);
        rc = wc == AES_GCM_AUTH_E ? NU_ERR_TAMPERED : crypto__err(wc, NU_ERR_CRYPTO, "gcm decrypt");
    }
    wc_AesFree(&aes);
    nu_zero(&aes, sizeof(aes));
    return rc;
}
