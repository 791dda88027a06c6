/*
 * cloud_firmware — what the job handlers (cloud_job.c) use of the firmware
 * module (cloud_firmware.c): loading a signed image for a new job, and the
 * in-memory image cache that firmware delivery serves chunks from.
 *
 * Image digest, everywhere in NuSEC (FirmwareSignResponse, FirmwareInfo,
 * FirmwareManifest, PackageSecrets.firmware_digest, the ledger): SHA-256 of
 * the whole signed image file, i.e. what `sha256sum NAME-X.Y.Z.img` prints
 * and what the programmer hashes over its cached download.
 */
#ifndef CLOUD_FIRMWARE_H
#define CLOUD_FIRMWARE_H

#include "cloud.h"
#include "nu_crypto.h"

#include <stddef.h>
#include <stdint.h>

/*
 * Read signed image NAME from the ledger (an image signed before schema 5:
 * from DIR/firmware/NAME.img once, then moved into the ledger), verify it as
 * an MCUboot image signed by our secure-boot key, and check it against the
 * ledger's record of the signature (same digest and size), so bytes that
 * differ from what the HSM signed are never packaged. On NU_OK *out_img
 * (free()) holds *out_len bytes and out_digest their SHA-256.
 * Errors: INVALID_ARG, NOT_FOUND (no file or no ledger record), TOO_LARGE,
 * BAD_FIRMWARE (does not verify or differs from the record), IO, NOMEM, DB.
 */
int cloud_firmware_image_load(struct cloud *cloud, struct cloud_ledger *ledger, const char *name,
                              uint8_t **out_img, size_t *out_len,
                              uint8_t out_digest[NU_SHA256_LEN]);

/* Cache img[len] (not kept: its chunks are encrypted under the job's key
 * `key` now, and only that ciphertext stays) as the image of job_id, so the
 * first download does not wait for it. Best effort: on failure the first
 * request loads it. */
void cloud_firmware_cache_put(struct cloud *cloud, const char *job_id, const uint8_t *img,
                              size_t len, const uint8_t digest[NU_SHA256_LEN],
                              const uint8_t key[CLOUD_LEDGER_FW_KEY_LEN]);

/* Forget the cached image of job_id (job closed); in-flight readers finish first. */
void cloud_firmware_cache_drop(struct cloud *cloud, const char *job_id);

#endif
