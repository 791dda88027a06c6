/* pp_flash: file-backed flash areas (see pp_flash.h). */
#include "pp_flash.h"

#include "nu_log.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define FLASH__AREAS 4

static const struct {
    const char *file;
    uint32_t size;
} flash__areas[FLASH__AREAS] = {
    [PG_FLASH_IMAGE] = {"image.bin", PP_FLASH_IMAGE_SIZE},
    [PG_FLASH_META] = {"meta.bin", PP_FLASH_META_SIZE},
    [PG_FLASH_PACKAGE] = {"package.bin", PP_FLASH_PACKAGE_SIZE},
    [PG_FLASH_JOURNAL] = {"journal.bin", PP_FLASH_JOURNAL_SIZE},
};

struct pp_flash {
    int fd[FLASH__AREAS];
    atomic_long cut; /* writes left before the "power cut", -1 = never */
};

int pp_flash_open(const char *flash_dir, struct pp_flash **out_f)
{
    *out_f = NULL;
    int rc = nu_mkdirs(flash_dir, 0700);
    if (rc != NU_OK)
        return rc;
    struct pp_flash *f = calloc(1, sizeof(*f));
    if (!f)
        return NU_ERR_NOMEM;
    atomic_store(&f->cut, -1);
    for (int i = 0; i < FLASH__AREAS; i++)
        f->fd[i] = -1;
    for (int i = 0; i < FLASH__AREAS && rc == NU_OK; i++) {
        char path[PATH_MAX];
        rc = nu_path_fmt(path, sizeof(path), "%s/%s", flash_dir, flash__areas[i].file);
        if (rc == NU_OK && (f->fd[i] = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0600)) < 0) {
            nu_error("flash %s: %s", path, strerror(errno));
            rc = errno == EACCES ? NU_ERR_PERMISSION : NU_ERR_IO;
        }
    }
    if (rc != NU_OK) {
        pp_flash_close(f);
        return rc;
    }
    *out_f = f;
    return NU_OK;
}

void pp_flash_close(struct pp_flash *f)
{
    if (!f)
        return;
    for (int i = 0; i < FLASH__AREAS; i++) {
        if (f->fd[i] >= 0)
            close(f->fd[i]);
    }
    free(f);
}

void pp_flash_cut_after(struct pp_flash *f, long n)
{
    atomic_store(&f->cut, n);
}

static int flash__check(enum pg_flash_area a, uint32_t off, size_t len)
{
    if ((unsigned)a >= FLASH__AREAS)
        return NU_ERR_INVALID_ARG;
    return (uint64_t)off + len > flash__areas[a].size ? NU_ERR_TOO_LARGE : NU_OK;
}

static int flash__size(void *ctx, enum pg_flash_area a, uint32_t *out)
{
    (void)ctx;
    if ((unsigned)a >= FLASH__AREAS)
        return NU_ERR_INVALID_ARG;
    *out = flash__areas[a].size;
    return NU_OK;
}

static int flash__read(void *ctx, enum pg_flash_area a, uint32_t off, uint8_t *buf, size_t len)
{
    struct pp_flash *f = ctx;
    int rc = flash__check(a, off, len);
    if (rc != NU_OK)
        return rc;
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(f->fd[a], buf + got, len - got, (off_t)off + (off_t)got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return NU_ERR_IO;
        if (n == 0)
            break;
        got += (size_t)n;
    }
    memset(buf + got, 0xff, len - got); /* erased */
    return NU_OK;
}

static int flash__write(void *ctx, enum pg_flash_area a, uint32_t off, const uint8_t *data,
                        size_t len)
{
    struct pp_flash *f = ctx;
    int rc = flash__check(a, off, len);
    if (rc != NU_OK)
        return rc;
    long left = atomic_load(&f->cut);
    if (left == 0)
        return NU_ERR_IO; /* power is off */
    if (left > 0)
        atomic_fetch_sub(&f->cut, 1);
    size_t put = 0;
    while (put < len) {
        ssize_t n = pwrite(f->fd[a], data + put, len - put, (off_t)off + (off_t)put);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NU_ERR_IO;
        put += (size_t)n;
    }
    return fdatasync(f->fd[a]) == 0 ? NU_OK : NU_ERR_IO;
}

static int flash__erase(void *ctx, enum pg_flash_area a)
{
    struct pp_flash *f = ctx;
    if ((unsigned)a >= FLASH__AREAS)
        return NU_ERR_INVALID_ARG;
    if (atomic_load(&f->cut) == 0)
        return NU_ERR_IO;
    return ftruncate(f->fd[a], 0) == 0 && fdatasync(f->fd[a]) == 0 ? NU_OK : NU_ERR_IO;
}

const struct pg_flash_ops pp_flash_ops = {
    .version = PG_HAL_VERSION,
    .size = flash__size,
    .read = flash__read,
    .write = flash__write,
    .erase = flash__erase,
};
