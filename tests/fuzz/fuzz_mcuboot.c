/*
 * fuzz_mcuboot — libFuzzer target for the programmer's MCUboot image parser
 * (nu_mcuboot_verify and the streaming verifier the programmer runs over
 * its flash cache) and the version text parser.
 *
 * Input: byte 0 picks the stream's chunk sizes; the rest is the image. The
 * root of trust is the test key of fuzz_keys.h, so signed seeds verify.
 *
 * Properties:
 *   - typed errors only;
 *   - one-shot and streamed verification (any chunking) give the same
 *     verdict and, on success, the same facts;
 *   - an accepted image is what the facts say: its SHA-256 over header,
 *     payload and protected TLVs equals the digest, the payload lies inside
 *     the image, and no other root key accepts it (no success on garbage);
 *   - a version text that parses formats back to text that parses to the
 *     same version.
 */
#include "fuzz_common.h"
#include "fuzz_keys.h"
#include "nu_mcuboot.h"
#include "nu_util.h"

#include <string.h>

static uint8_t pub[NU_P256_PUB_LEN], hash[NU_SHA256_LEN];
static uint8_t other_pub[NU_P256_PUB_LEN], other_hash[NU_SHA256_LEN];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    uint8_t d[NU_P256_PRIV_LEN];
    size_t n = 0;
    struct nu_p256_key *k = NULL, *o = NULL;
    (void)argc, (void)argv;
    if (nu_hex_decode(FUZZ_TEST_SECURE_BOOT_PRIV, d, sizeof(d), &n) ||
        nu_p256_key_import_priv(d, &k) || nu_p256_key_pub(k, pub) ||
        nu_mcuboot_rotpk_hash(pub, hash) || nu_p256_key_generate(&o) ||
        nu_p256_key_pub(o, other_pub) || nu_mcuboot_rotpk_hash(other_pub, other_hash))
        FUZZ_DIE("setup");
    nu_p256_key_destroy(k);
    nu_p256_key_destroy(o);
    return 0;
}

static int fuzz__stream(const uint8_t *img, size_t len, uint8_t seed, struct nu_mcuboot_info *info)
{
    struct nu_mcuboot_stream s;
    int rc = nu_mcuboot_stream_init(&s);
    size_t off = 0, step = (size_t)(seed & 0x3f) + 1;
    while (rc == NU_OK && off < len) {
        size_t n = len - off < step ? len - off : step;
        rc = nu_mcuboot_stream_update(&s, img + off, n);
        off += n;
        step = step * 3 % 97 + 1; /* uneven chunks cross every boundary */
    }
    if (rc != NU_OK) {
        nu_mcuboot_stream_abort(&s);
        return rc;
    }
    return nu_mcuboot_stream_final(&s, pub, hash, info);
}

static void fuzz__version(const uint8_t *d, size_t n)
{
    char text[64];
    struct nu_mcuboot_version v, v2;
    if (n >= sizeof(text))
        n = sizeof(text) - 1;
    memcpy(text, d, n);
    text[n] = '\0';
    if (nu_mcuboot_version_parse(text, &v) != NU_OK)
        return;
    char out[NU_MCUBOOT_VERSION_STR_MAX];
    if (nu_mcuboot_version_format(&v, out, sizeof(out)) != NU_OK ||
        nu_mcuboot_version_parse(out, &v2) != NU_OK || memcmp(&v, &v2, sizeof(v)) != 0)
        FUZZ_DIE("version '%s' does not round-trip", text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int refusals[] = {NU_ERR_TOO_LARGE, NU_ERR_DECODE, NU_ERR_NOT_SUPPORTED,
                                   NU_ERR_BAD_FIRMWARE, NU_ERR_BAD_SIGNATURE, -1};
    if (size < 1)
        return 0;
    const uint8_t *img = data + 1;
    size_t len = size - 1;
    struct nu_mcuboot_info a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    int rc = nu_mcuboot_verify(img, len, pub, hash, &a);
    int rc2 = fuzz__stream(img, len, data[0], &b);
    if (rc != rc2)
        FUZZ_DIE("one-shot %s, streamed %s", nu_err_name(rc), nu_err_name(rc2));
    if (rc != NU_OK) {
        fuzz_expect("verify", rc, refusals);
    } else {
        uint8_t digest[NU_SHA256_LEN];
        if (memcmp(&a, &b, sizeof(a)) != 0)
            FUZZ_DIE("one-shot and streamed facts differ");
        if (a.image_len != len || (uint64_t)a.payload_off + a.payload_len > len)
            FUZZ_DIE("payload outside the image");
        uint16_t prot = (uint16_t)(img[10] | img[11] << 8);
        if (nu_sha256(img, (size_t)a.payload_off + a.payload_len + prot, digest) ||
            memcmp(digest, a.digest, sizeof(digest)) != 0)
            FUZZ_DIE("digest is not the image's");
        if (nu_mcuboot_verify(img, len, other_pub, other_hash, NULL) == NU_OK)
            FUZZ_DIE("accepted under another root key");
    }
    if (data[0] & 0x80)
        fuzz__version(img, len);
    return 0;
}
