/*
 * tsim_int — what the two files of the target simulator share (tsim.c: the
 * chip's commands; tsim_state.c: its non-volatile state and the `state`
 * file that mirrors it). Private to programmer-fw/target-sim; the contract
 * is tsim.h.
 */
#ifndef TSIM_INT_H
#define TSIM_INT_H

#include "tsim.h"

#include "nu_crypto.h"

#include <limits.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define TSIM__UID_HEX_LEN (2 * TSIM_UID_LEN)
#define TSIM__STATE_MAX 4096u /* the state file is a few hundred bytes */
#define TSIM__ATTEST_LABEL "nusec/v1 attest"
#define TSIM__SHADOW ".state.next" /* the state file's other half (tsim__write_state) */

enum tsim__boot { TSIM__BOOT_NONE = 0, TSIM__BOOT_OK = 1, TSIM__BOOT_FAILED = 2 };

/* The chip's non-volatile state: exactly what the `state` file holds. */
struct tsim__nv {
    int otp_set;
    uint8_t otp_hash[NU_SHA256_LEN];
    uint32_t otp_counter;
    int keyed;
    uint8_t pub[NU_P256_PUB_LEN];
    int boot_key_set;
    uint8_t boot_key[NU_P256_PUB_LEN];
    int programmed;
    enum tsim__boot boot;
    int locked;
};

struct tsim {
    char dir[PATH_MAX];
    uint8_t uid[TSIM_UID_LEN];
    char uid_hex[TSIM__UID_HEX_LEN + 1];
    struct tsim_opts opts;
    struct tsim__nv nv;
    int rooted;              /* the folder is durable in targets/ (after a first commit) */
    struct nu_p256_key *key; /* the device key, NULL until keyed */
    uint64_t flash_len;      /* bytes programmed in image.bin */
    int flash_fd;            /* image.bin, open while chunks are being flashed; -1 */
    int bad_cell_set;        /* TSIM_FAULT_FLASH_CORRUPT: the weak cell's address */
    uint64_t bad_cell;
};

/* Whether commits are synced to disk (see tsim_opts.no_sync). */
int tsim__durable(const struct tsim *t);

/* The chip state the nv state shows (blank ... locked). */
enum tsim_state tsim__derive(const struct tsim__nv *nv);

/* errno to a libnusec code (IO, PERMISSION, ...). */
int tsim__errno(int e);

/* pwrite every byte of data at off, retrying short writes. */
int tsim__pwrite_all(int fd, const uint8_t *data, size_t len, uint64_t off);

/* fsync a folder, so a rename or create in it is durable. */
int tsim__fsync_dir(const char *dir);

/* The state file of nv in dir, written whole (shadow, then exchanged). */
int tsim__write_state(const struct tsim *t, const char *dir, const struct tsim__nv *nv,
                      int durable);

/* The chip file `name` (cert.der, ...) replaced by buf, atomically. */
int tsim__put_file(const struct tsim *t, const char *name, const void *buf, size_t len,
                   mode_t mode);

/* Adopt nv once the state file holds it (t->nv unchanged on error). */
int tsim__commit(struct tsim *t, const struct tsim__nv *nv);

/* tsim__commit when nv differs from t->nv. */
int tsim__commit_if_changed(struct tsim *t, const struct tsim__nv *nv);

/* Parse and check a state file's text (modified in place) into out. */
int tsim__parse(const struct tsim *t, char *text, struct tsim__nv *out);

#endif
