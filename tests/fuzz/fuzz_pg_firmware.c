/*
 * fuzz_pg_firmware — libFuzzer target for the programmer core's firmware
 * download (programmer-fw/core/pg_firmware.c): the manifest and chunk
 * answers the cloud sends, and the download progress record it resumes
 * from, on a real core with an enrolled KeyStore and a loaded package
 * (fuzz_pg.h: scripted transport over the fake cloud).
 *
 * Input: byte 0 bit 0 = 1: the first record is written to the progress
 * record (PG_FLASH_META) before the fetch, else the cache starts empty; the
 * rest is the script of answers to firmware.manifest / firmware.chunk.
 *
 * Properties:
 *   - the fetch ends with a typed error or OK; OK only with the package's
 *     image in the cache: its SHA-256 is the digest the OEM signed into the
 *     package, and pg_core_firmware_ready says so (nothing else may ever
 *     be flashed into chips); an error leaves the firmware not ready;
 *   - the job does not change.
 */
#include "fuzz_pg.h"

#include "nu_crypto.h"

#include <string.h>

static struct fuzz_pg pg;
static uint8_t *image;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char *const ops[] = {"firmware.manifest", "firmware.chunk", NULL};
    (void)argc, (void)argv;
    fuzz_pg_setup(&pg, 1500, 512, ops);
    image = malloc(pg.r.fc.image_len);
    if (!image)
        FUZZ_DIE("nomem");
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const struct pg_hal *h = &pg.r.hal;
    struct pg_core *c = pg.r.core;
    if (size < 1)
        return 0;
    fuzz_pg_begin(&pg, data + 1, size - 1);
    if (pg_flash_erase(h, PG_FLASH_META) || pg_flash_erase(h, PG_FLASH_IMAGE))
        FUZZ_DIE("erase");
    const uint8_t *meta;
    size_t meta_len;
    if ((data[0] & 1) && fuzz_record(&pg.script, &meta, &meta_len) && meta_len &&
        pg_flash_write(h, PG_FLASH_META, 0, meta, meta_len > 64 ? 64 : meta_len))
        FUZZ_DIE("meta write");
    int rc = pg_core_firmware_fetch(c);
    fuzz_pg_end(&pg);
    if (strcmp(pg_core_job_id(c), "job-1") != 0)
        FUZZ_DIE("the job changed");
    if (rc == NU_OK) {
        uint8_t digest[32];
        if (!pg_core_firmware_ready(c) ||
            pg_flash_read(h, PG_FLASH_IMAGE, 0, image, pg.r.fc.image_len) ||
            nu_sha256(image, pg.r.fc.image_len, digest) ||
            memcmp(digest, pg.r.fc.image_digest, 32) != 0)
            FUZZ_DIE("firmware ready, but the cache is not the OEM's image");
    } else if (pg_core_firmware_ready(c) || rc < 0 || rc > NU_ERR_LIMIT) {
        FUZZ_DIE("refusal %d left the firmware ready", rc);
    }
    return 0;
}
