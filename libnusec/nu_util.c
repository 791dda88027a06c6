#include "nu_util.h"
#include "nu_err.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

static int nu__errno_to_err(int e)
{
    switch (e) {
    case ENOENT:
    case ENOTDIR:
        return NU_ERR_NOT_FOUND;
    case EACCES:
    case EPERM:
        return NU_ERR_PERMISSION;
    case EEXIST:
        return NU_ERR_EXISTS;
    case ENOMEM:
        return NU_ERR_NOMEM;
    case ENAMETOOLONG:
        return NU_ERR_TOO_LARGE;
    default:
        return NU_ERR_IO;
    }
}

int nu_file_read(const char *path, size_t max, uint8_t **out_buf, size_t *out_len)
{
    if (!path || !out_buf || !out_len)
        return NU_ERR_INVALID_ARG;
    *out_buf = NULL;
    *out_len = 0;

    int rc = NU_OK;
    uint8_t *buf = NULL;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return nu__errno_to_err(errno);

    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = NU_ERR_IO;
        goto out;
    }
    if ((uint64_t)st.st_size > max) {
        rc = NU_ERR_TOO_LARGE;
        goto out;
    }
    size_t size = (size_t)st.st_size;
    buf = malloc(size + 1);
    if (!buf) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    size_t got = 0;
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            rc = NU_ERR_IO;
            goto out;
        }
        got += (size_t)n;
    }
    buf[size] = 0;
    *out_buf = buf;
    *out_len = size;
    buf = NULL;
out:
    free(buf);
    close(fd);
    return rc;
}

static int nu__write_all(int fd, const uint8_t *p, size_t len)
{
    while (len > 0) {
        ssize_t n = write(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NU_ERR_IO;
        p += n;
        len -= (size_t)n;
    }
    return NU_OK;
}

static int nu__fsync_parent(const char *path)
{
    char dir[PATH_MAX];
    if (snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
        return NU_ERR_TOO_LARGE;
    char *slash = strrchr(dir, '/');
    if (slash == dir)
        slash[1] = 0;
    else if (slash)
        *slash = 0;
    else
        strcpy(dir, ".");
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return nu__errno_to_err(errno);
    int rc = fsync(fd) == 0 ? NU_OK : NU_ERR_IO;
    close(fd);
    return rc;
}

static int nu__write_file(const char *path, const void *buf, size_t len, mode_t mode, int exclusive)
{
    if (!path || (!buf && len))
        return NU_ERR_INVALID_ARG;
    char tmp[PATH_MAX];
    int rc = nu_path_fmt(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid());
    if (rc)
        return rc;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return nu__errno_to_err(errno);
    /* open() applies the umask; the caller's mode (e.g. 0600 for keys) is the contract. */
    if (fchmod(fd, mode) != 0) {
        rc = NU_ERR_IO;
        goto fail;
    }
    rc = nu__write_all(fd, buf, len);
    if (!rc && fsync(fd) != 0)
        rc = NU_ERR_IO;
    if (rc)
        goto fail;
    close(fd);
    fd = -1;
    if (exclusive) {
        /* link() fails if the target exists: no window where we overwrite. */
        if (link(tmp, path) != 0) {
            rc = nu__errno_to_err(errno);
            unlink(tmp);
            return rc;
        }
        unlink(tmp);
    } else if (rename(tmp, path) != 0) {
        rc = nu__errno_to_err(errno);
        unlink(tmp);
        return rc;
    }
    return nu__fsync_parent(path);
fail:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return rc;
}

int nu_file_write_atomic(const char *path, const void *buf, size_t len, mode_t mode)
{
    return nu__write_file(path, buf, len, mode, 0);
}

int nu_file_write_new(const char *path, const void *buf, size_t len, mode_t mode)
{
    return nu__write_file(path, buf, len, mode, 1);
}

int nu_path_exists(const char *path)
{
    struct stat st;
    return path && lstat(path, &st) == 0;
}

int nu_mkdirs(const char *path, mode_t mode)
{
    if (!path || !*path)
        return NU_ERR_INVALID_ARG;
    char buf[PATH_MAX];
    if (snprintf(buf, sizeof(buf), "%s", path) >= (int)sizeof(buf))
        return NU_ERR_TOO_LARGE;
    for (char *p = buf + 1;; p++) {
        if (*p != '/' && *p != 0)
            continue;
        char saved = *p;
        *p = 0;
        if (mkdir(buf, mode) != 0 && errno != EEXIST)
            return nu__errno_to_err(errno);
        *p = saved;
        if (!saved)
            break;
    }
    struct stat st;
    if (stat(path, &st) != 0 || !S_ISDIR(st.st_mode))
        return NU_ERR_IO;
    return NU_OK;
}

int nu_path_fmt(char *out, size_t cap, const char *fmt, ...)
{
    if (!out || !cap || !fmt)
        return NU_ERR_INVALID_ARG;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, cap, fmt, ap);
    va_end(ap);
    if (n < 0)
        return NU_ERR_INVALID_ARG;
    if ((size_t)n >= cap) {
        out[0] = 0;
        return NU_ERR_TOO_LARGE;
    }
    return NU_OK;
}

const char *nu_state_dir(const char *opt)
{
    if (opt && *opt)
        return opt;
    const char *env = getenv("NUSEC_HOME");
    return (env && *env) ? env : NULL;
}

int nu_hex_encode(const uint8_t *buf, size_t len, char *out, size_t cap)
{
    static const char digits[] = "0123456789abcdef";
    if ((!buf && len) || !out)
        return NU_ERR_INVALID_ARG;
    if (cap < 2 * len + 1)
        return NU_ERR_TOO_LARGE;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[buf[i] >> 4];
        out[2 * i + 1] = digits[buf[i] & 15];
    }
    out[2 * len] = 0;
    return NU_OK;
}

static int nu__hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

int nu_hex_decode_n(const char *hex, size_t n_digits, uint8_t *out, size_t cap, size_t *out_len)
{
    if (!hex || !out || !out_len)
        return NU_ERR_INVALID_ARG;
    if (n_digits % 2)
        return NU_ERR_DECODE;
    if (n_digits / 2 > cap)
        return NU_ERR_TOO_LARGE;
    for (size_t i = 0; i < n_digits / 2; i++) {
        int hi = nu__hex_nibble(hex[2 * i]), lo = nu__hex_nibble(hex[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return NU_ERR_DECODE;
        out[i] = (uint8_t)(hi << 4 | lo);
    }
    *out_len = n_digits / 2;
    return NU_OK;
}

int nu_hex_decode(const char *hex, uint8_t *out, size_t cap, size_t *out_len)
{
    if (!hex)
        return NU_ERR_INVALID_ARG;
    return nu_hex_decode_n(hex, strlen(hex), out, cap, out_len);
}

uint64_t nu_time_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

uint64_t nu_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int nu_random(void *buf, size_t len)
{
    uint8_t *p = buf;
    while (len > 0) {
        ssize_t n = getrandom(p, len, 0);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NU_ERR_CRYPTO;
        p += n;
        len -= (size_t)n;
    }
    return NU_OK;
}

void nu_zero(void *buf, size_t len)
{
    if (buf && len)
        explicit_bzero(buf, len);
}

int nu_memeq_ct(const void *a, const void *b, size_t len)
{
    const volatile uint8_t *x = a, *y = b;
    uint8_t diff = 0;
    for (size_t i = 0; i < len; i++)
        diff |= x[i] ^ y[i];
    return diff != 0;
}

int nu_parse_uint(const char *text, uint64_t min, uint64_t max, uint64_t *out_value)
{
    if (!text || !*text || !out_value)
        return NU_ERR_INVALID_ARG;
    uint64_t v = 0;
    for (const char *p = text; *p; p++) {
        if (*p < '0' || *p > '9')
            return NU_ERR_INVALID_ARG;
        unsigned d = (unsigned)(*p - '0');
        if (v > (UINT64_MAX - d) / 10)
            return NU_ERR_TOO_LARGE;
        v = v * 10 + d;
    }
    if (v < min || v > max)
        return NU_ERR_TOO_LARGE;
    *out_value = v;
    return NU_OK;
}

int nu_duration_parse(const char *text, uint64_t *out_seconds)
{
    if (!text || !*text || !out_seconds)
        return NU_ERR_INVALID_ARG;
    char *end = NULL;
    errno = 0;
    unsigned long long v = strtoull(text, &end, 10);
    if (errno || end == text || text[0] == '-')
        return NU_ERR_INVALID_ARG;
    uint64_t mult = 1;
    if (*end) {
        if (end[1])
            return NU_ERR_INVALID_ARG;
        switch (*end) {
        case 's':
            mult = 1;
            break;
        case 'm':
            mult = 60;
            break;
        case 'h':
            mult = 3600;
            break;
        case 'd':
            mult = 86400;
            break;
        default:
            return NU_ERR_INVALID_ARG;
        }
    }
    if (v > UINT64_MAX / mult)
        return NU_ERR_TOO_LARGE;
    *out_seconds = v * mult;
    return NU_OK;
}

void *nu_grow(void *items, size_t *cap, size_t n, size_t size)
{
    if (n < *cap)
        return items;
    size_t want = *cap ? 2 * *cap : 16;
    if (!size || want < *cap || want > SIZE_MAX / size)
        return NULL;
    void *grown = realloc(items, want * size);
    if (grown)
        *cap = want;
    return grown;
}
