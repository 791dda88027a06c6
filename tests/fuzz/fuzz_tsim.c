/*
 * fuzz_tsim — libFuzzer target for the simulated target MCU's parsers of
 * what the programmer (untrusted, from the chip's side) leaves in it: its
 * secure-boot ROM over the flashed image (tsim_reset -> nu_mcuboot_verify
 * with the boot key slot and the OTP), and its `state` file reader
 * (tsim_open), which a crash or a hand edit may have left in any shape.
 *
 * One chip, made once in a temporary folder: OTP = ROTPK hash of the test
 * key of fuzz_keys.h, keyed, boot key = that key; no fsync (no_sync).
 * Input: byte 0 bit 0 selects: 0 flash the rest and reset, 1 the rest is a
 * `state` file to open (the good one is put back after).
 *
 * Properties:
 *   - reset answers OK or BOOT_FAILED, and OK exactly when the image
 *     verifies for the boot key and its security counter is not below the
 *     OTP floor (which then follows the image: anti-rollback);
 *   - a state file is refused with DECODE (or opens): never a crash, and a
 *     chip that opens reports a known state.
 */
#define _XOPEN_SOURCE 700 /* nftw() */
#include "fuzz_common.h"
#include "fuzz_keys.h"
#include "nu_mcuboot.h"
#include "nu_log.h"
#include "nu_util.h"
#include "tsim.h"

#include <fcntl.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[64];
static char state_path[256];
static uint8_t *good_state;
static size_t good_len;
static const uint8_t UID[TSIM_UID_LEN] = {0xf0, 0x22, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14};
static uint8_t pub[NU_P256_PUB_LEN], rotpk_hash[NU_SHA256_LEN];
static uint32_t floor_counter;
static struct tsim *chip;
static const struct tsim_opts opts = {.no_sync = 1};

static int fuzz__rm(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

/* The chip's folder goes with the process (libFuzzer ends with exit()). */
static void fuzz__cleanup(void)
{
    tsim_destroy(chip);
    chip = NULL;
    (void)nftw(dir, fuzz__rm, 16, FTW_DEPTH | FTW_PHYS);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    uint8_t d[NU_P256_PRIV_LEN], csr[1024];
    size_t n = 0;
    struct nu_p256_key *k = NULL;
    (void)argc, (void)argv;
    nu_log_init("fuzz_tsim", NU_LOG_ERROR, stderr);
    /* The chip's flash and state are files rewritten on every input: in
     * memory (/dev/shm) when there is one, not on a disk. */
    snprintf(dir, sizeof(dir), "%s/nusec-fuzz-tsim-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir) || nu_hex_decode(FUZZ_TEST_SECURE_BOOT_PRIV, d, sizeof(d), &n) ||
        nu_p256_key_import_priv(d, &k) || nu_p256_key_pub(k, pub) ||
        nu_mcuboot_rotpk_hash(pub, rotpk_hash) || tsim_create(dir, UID, &opts, &chip) ||
        tsim_otp_write_rotpk_hash(chip, rotpk_hash) ||
        tsim_keygen_csr(chip, "fuzz-chip", csr, sizeof(csr), &n) ||
        tsim_write_boot_key(chip, pub))
        FUZZ_DIE("setup");
    nu_p256_key_destroy(k);
    snprintf(state_path, sizeof(state_path), "%s/state", tsim_path(chip));
    if (nu_file_read(state_path, 1 << 16, &good_state, &good_len))
        FUZZ_DIE("state file");
    atexit(fuzz__cleanup);
    return 0;
}

static void fuzz__boot(const uint8_t *img, size_t len)
{
    struct nu_mcuboot_info info;
    if (!len || len > TSIM_IMAGE_MAX)
        return;
    int rc = tsim_flash_write(chip, 0, img, len);
    if (rc != NU_OK)
        FUZZ_DIE("flash write: %s", nu_err_name(rc));
    int v = nu_mcuboot_verify(img, len, pub, rotpk_hash, &info);
    int should = v == NU_OK && info.security_counter >= floor_counter;
    rc = tsim_reset(chip);
    if (rc != NU_OK && rc != NU_ERR_BOOT_FAILED)
        FUZZ_DIE("reset: %s", nu_err_name(rc));
    if ((rc == NU_OK) != should)
        FUZZ_DIE("secure boot said %s, the verifier %s (counter floor %u)", nu_err_name(rc),
                 nu_err_name(v), (unsigned)floor_counter);
    if (rc == NU_OK && info.security_counter > floor_counter)
        floor_counter = info.security_counter;
}

static void fuzz__write_state(const uint8_t *d, size_t n)
{
    int fd = open(state_path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0 || (n && write(fd, d, n) != (ssize_t)n) || close(fd) != 0)
        FUZZ_DIE("cannot write the state file");
}

static void fuzz__state(const uint8_t *d, size_t n)
{
    struct tsim *t = NULL;
    enum tsim_state st;
    fuzz__write_state(d, n);
    int rc = tsim_open(dir, UID, &opts, &t);
    if (rc == NU_OK) {
        if (tsim_get_state(t, &st) != NU_OK || st > TSIM_LOCKED)
            FUZZ_DIE("opened chip in no known state");
        tsim_destroy(t);
    } else if (rc != NU_ERR_DECODE && rc != NU_ERR_NOT_FOUND) {
        FUZZ_DIE("tsim_open: %s", nu_err_name(rc));
    }
    fuzz__write_state(good_state, good_len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    if (data[0] & 1)
        fuzz__state(data + 1, size - 1);
    else
        fuzz__boot(data + 1, size - 1);
    return 0;
}
