/*
 * nu_mcuboot — MCUboot firmware images: signing (cloud, key in the HSM behind a
 * struct nu_signer), verification of untrusted images (programmer before it
 * caches firmware, simulated target secure boot), in one piece or streamed.
 *
 * FORMAT (MCUboot boot/bootutil/include/bootutil/image.h, scripts/imgtool/image.py;
 * everything little-endian). nu_mcuboot_sign() writes exactly what
 * `imgtool sign --key K --version V --security-counter N [--load-addr A]` writes
 * for an ECDSA P-256 key (header size 0x20, no padding, no encryption):
 *
 *   offset 0   header, 32 bytes:
 *     u32 ih_magic 0x96f3b83d | u32 ih_load_addr | u16 ih_hdr_size (0x20)
 *     u16 ih_protect_tlv_size (12) | u32 ih_img_size (payload length)
 *     u32 ih_flags (0x20 IMAGE_F_RAM_LOAD when load_addr != 0, as imgtool --load-addr)
 *     ih_ver: u8 major | u8 minor | u16 revision | u32 build_num | u32 pad (0)
 *   offset ih_hdr_size   payload, ih_img_size bytes
 *   protected TLV area (ih_protect_tlv_size bytes, covered by the hash):
 *     u16 0x6908 | u16 total (= ih_protect_tlv_size, this 4-byte info included)
 *     TLV SEC_CNT: u16 type 0x50 | u16 len 4 | u32 security counter
 *   unprotected TLV area:
 *     u16 0x6907 | u16 total (this 4-byte info included)
 *     TLV SHA256    0x10, len 32: SHA-256 over [0, hdr_size + img_size + protect_tlv_size)
 *     TLV KEYHASH   0x01, len 32: SHA-256 of the signing public key as DER
 *                                 SubjectPublicKeyInfo (91 bytes for P-256), which is
 *                                 what imgtool hashes (keys/ecdsa.py get_public_bytes())
 *                                 and what MCUboot compares with its built-in key
 *     TLV ECDSA_SIG 0x22, len n:  DER ECDSA-Sig-Value over the SHA256 digest
 *
 * A TLV header is 4 bytes: type (u16; imgtool packs it as u8 type + u8 0) and
 * data length (u16, header excluded).
 *
 * VERIFICATION is stricter than MCUboot (we only ever accept our own images):
 * ih_hdr_size >= 32; the protected area exists, its total equals
 * ih_protect_tlv_size and it holds exactly one SEC_CNT (len 4); the unprotected
 * area holds exactly one SHA256 (len 32), one KEYHASH (len 32) and one
 * ECDSA_SIG (8..72 bytes, after the KEYHASH as MCUboot requires) and nothing
 * else; every TLV lies inside its area and the areas are consumed exactly; the
 * image ends where the unprotected area ends (no trailing bytes); encrypted
 * images (flags 0x4/0x8) are refused. The image digest must equal SHA256, the
 * KEYHASH must equal the expected ROTPK hash, and the signature must verify
 * with the public key whose DER hash is that ROTPK hash.
 *
 * Sizes are bounded: payload <= NU_MCUBOOT_MAX_PAYLOAD, whole TLV trailer <=
 * NU_MCUBOOT_TLV_AREA_MAX, image <= NU_MCUBOOT_MAX_IMAGE.
 */
#ifndef NU_MCUBOOT_H
#define NU_MCUBOOT_H

#include "nu_crypto.h"
#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

#define NU_MCUBOOT_IMAGE_MAGIC 0x96f3b83du
#define NU_MCUBOOT_HDR_SIZE 32u
#define NU_MCUBOOT_TLV_INFO_MAGIC 0x6907u
#define NU_MCUBOOT_TLV_PROT_INFO_MAGIC 0x6908u
#define NU_MCUBOOT_TLV_KEYHASH 0x01u
#define NU_MCUBOOT_TLV_SHA256 0x10u
#define NU_MCUBOOT_TLV_ECDSA_SIG 0x22u /* imgtool "ECDSASIG" (older: "ECDSA256") */
#define NU_MCUBOOT_TLV_SEC_CNT 0x50u
#define NU_MCUBOOT_F_ENCRYPTED_AES128 0x04u
#define NU_MCUBOOT_F_ENCRYPTED_AES256 0x08u
#define NU_MCUBOOT_F_RAM_LOAD 0x20u

/* Largest payload signed or accepted. */
#define NU_MCUBOOT_MAX_PAYLOAD (16u * 1024u * 1024u)
/* Largest protected + unprotected TLV trailer accepted (ours is 12 + at most 152). */
#define NU_MCUBOOT_TLV_AREA_MAX 512u
/* Largest whole image accepted (header up to 64 KiB, payload, TLV trailer). */
#define NU_MCUBOOT_MAX_IMAGE (0xffffu + NU_MCUBOOT_MAX_PAYLOAD + NU_MCUBOOT_TLV_AREA_MAX)
/* Longest "X.Y.Z+B" text, NUL included: "255.255.65535+4294967295". */
#define NU_MCUBOOT_VERSION_STR_MAX 25

struct nu_mcuboot_version {
    uint8_t major;
    uint8_t minor;
    uint16_t revision;
    uint32_t build;
};

/* What a verified image says about itself. */
struct nu_mcuboot_info {
    struct nu_mcuboot_version version;
    uint32_t security_counter;
    uint32_t load_addr;
    uint32_t flags;
    uint32_t payload_off; /* = ih_hdr_size: the payload is img[payload_off, +payload_len) */
    uint32_t payload_len; /* = ih_img_size */
    uint32_t image_len;   /* whole image, TLVs included */
    uint8_t digest[NU_SHA256_LEN]; /* SHA-256 image digest (the SHA256 TLV) */
};

/*
 * Sign payload[len] into a new MCUboot image (layout above) with `key`
 * (HSM, KeyStore or software signer). The produced image is verified once
 * before it is returned, so a faulty signer (SoftHSM2 issue #901) cannot ship
 * an image that will not boot.
 *   ver               image version (header ih_ver)
 *   security_counter  SEC_CNT value (rollback protection)
 *   load_addr         ih_load_addr; non-zero also sets IMAGE_F_RAM_LOAD, as imgtool does
 * On success *out_img is a heap buffer of *out_len bytes; the caller frees it
 * with free().
 * Errors: INVALID_ARG (NULL, len 0), TOO_LARGE (len > NU_MCUBOOT_MAX_PAYLOAD),
 * DECODE (key->pub not a valid P-256 point), NOMEM, CRYPTO (signature of the
 * wrong size or that does not verify), or the signer's own error code.
 */
int nu_mcuboot_sign(const uint8_t *payload, size_t len, const struct nu_mcuboot_version *ver,
                    uint32_t security_counter, uint32_t load_addr, const struct nu_signer *key,
                    uint8_t **out_img, size_t *out_len);

/*
 * Verify an untrusted image img[len] against the root of trust: rotpk_hash is
 * the ROTPK hash (nu_mcuboot_rotpk_hash() of the secure-boot key, as in the
 * target's OTP) and pub the secure-boot public key (65 bytes, 04||X||Y), which
 * must hash to rotpk_hash (checked first). out_info may be NULL; it is written
 * only on success.
 * Errors: INVALID_ARG (NULL pointers), TOO_LARGE (image, payload or TLV area
 * over the limits), DECODE (malformed or truncated: magics, sizes, TLV layout,
 * pub not a valid point), NOT_SUPPORTED (encrypted image), BAD_FIRMWARE (pub
 * does not match rotpk_hash, digest differs from the SHA256 TLV, KEYHASH is
 * not rotpk_hash), BAD_SIGNATURE (signature malformed or not valid), CRYPTO.
 */
int nu_mcuboot_verify(const uint8_t *img, size_t len, const uint8_t pub[NU_P256_PUB_LEN],
                      const uint8_t rotpk_hash[NU_SHA256_LEN], struct nu_mcuboot_info *out_info);

/*
 * Streaming verification, for an image that arrives in chunks (programmer
 * download): the image is hashed as it passes and only the 32-byte header
 * and the TLV trailer (<= NU_MCUBOOT_TLV_AREA_MAX) are kept, so the caller
 * never needs the whole image in RAM. Same checks and error codes as
 * nu_mcuboot_verify() (which is built on it). Caller-allocated, no heap;
 * fields are private.
 *   init; update(chunk) any number of times; final -> verdict.
 * update reports malformed headers / oversize early (and the error sticks).
 * final and abort wipe the context; the payload must not be trusted (nor
 * flashed as bootable) before final returned NU_OK.
 */
struct nu_mcuboot_stream {
    struct nu_sha256_ctx sha;
    uint8_t hdr[NU_MCUBOOT_HDR_SIZE];
    uint8_t tlv[NU_MCUBOOT_TLV_AREA_MAX];
    uint64_t pos;      /* bytes received */
    uint64_t tlv_off;  /* ih_hdr_size + ih_img_size, once the header is in */
    uint64_t hash_end; /* tlv_off + ih_protect_tlv_size */
    size_t tlv_len;    /* bytes kept in tlv[] */
    int err;           /* sticky NU_ERR_* of a failed update */
    int live;          /* 1 between init and final/abort */
};

/* Errors: INVALID_ARG, CRYPTO. */
int nu_mcuboot_stream_init(struct nu_mcuboot_stream *s);

/* Feed the next data[len] bytes (data may be NULL when len is 0).
 * Errors: INVALID_ARG (NULL, not initialised), DECODE, TOO_LARGE,
 * NOT_SUPPORTED, CRYPTO — after an error further updates return it again. */
int nu_mcuboot_stream_update(struct nu_mcuboot_stream *s, const void *data, size_t len);

/* Finish: same arguments and errors as nu_mcuboot_verify() (image_len in
 * out_info = bytes received). Wipes the context whatever the result. */
int nu_mcuboot_stream_final(struct nu_mcuboot_stream *s, const uint8_t pub[NU_P256_PUB_LEN],
                            const uint8_t rotpk_hash[NU_SHA256_LEN],
                            struct nu_mcuboot_info *out_info);

/* Abandon a stream (safe on a finished or zeroed one). */
void nu_mcuboot_stream_abort(struct nu_mcuboot_stream *s);

/*
 * ROTPK hash of a P-256 public key (65 bytes 04||X||Y): SHA-256 of its DER
 * SubjectPublicKeyInfo — the KEYHASH TLV value, the OTP root of trust, and
 * what `openssl pkey -pubin -outform DER | sha256sum` prints for rotpk.pem.
 * Errors: INVALID_ARG, DECODE (not a valid point), CRYPTO.
 */
int nu_mcuboot_rotpk_hash(const uint8_t pub[NU_P256_PUB_LEN], uint8_t out_hash[NU_SHA256_LEN]);

/*
 * Parse "X.Y.Z" or "X.Y.Z+B" (NUL-terminated): decimal digits only, no sign,
 * no spaces, no leading zeros (except "0"), X,Y <= 255, Z <= 65535,
 * B <= 4294967295; B defaults to 0. *out is written only on success.
 * Errors: INVALID_ARG (NULL), DECODE.
 */
int nu_mcuboot_version_parse(const char *text, struct nu_mcuboot_version *out);

/* "X.Y.Z+B" into out[cap] (NU_MCUBOOT_VERSION_STR_MAX is enough).
 * Errors: INVALID_ARG, TOO_LARGE (cap too small). */
int nu_mcuboot_version_format(const struct nu_mcuboot_version *ver, char *out, size_t cap);

#endif
