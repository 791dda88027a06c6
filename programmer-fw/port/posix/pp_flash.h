/*
 * pp_flash — the POSIX port's flash: one file per area in
 * DIR/programmers/NAME/flash/ (image.bin, meta.bin, package.bin,
 * journal.bin). Reads past
 * the written end return 0xff like erased NOR flash; erase truncates; every
 * write is fsync'ed before it returns, so the download progress record is
 * never ahead of the image bytes it describes.
 *
 * Test hook (MCUboot simulator style): pp_flash_cut_after(f, n) lets n more
 * writes succeed, then every write fails with NU_ERR_IO, as if power was cut.
 *
 * Thread-safe (pread/pwrite on per-area descriptors).
 */
#ifndef PP_FLASH_H
#define PP_FLASH_H

#include "hal.h"

#define PP_FLASH_IMAGE_SIZE (4u * 1024u * 1024u)
#define PP_FLASH_META_SIZE 4096u
#define PP_FLASH_PACKAGE_SIZE (16u * 1024u)
#define PP_FLASH_JOURNAL_SIZE (PG_JOURNAL_SLOT * 8u) /* 8 sockets */

struct pp_flash;

/* Open (creating the folder and files, 0700/0600). Errors: IO, PERMISSION, NOMEM. */
int pp_flash_open(const char *flash_dir, struct pp_flash **out_f);
void pp_flash_close(struct pp_flash *f);

/* Power-cut simulation: n more writes succeed; -1 disables. */
void pp_flash_cut_after(struct pp_flash *f, long n);

extern const struct pg_flash_ops pp_flash_ops;

#endif
