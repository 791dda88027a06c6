/*
 * nu_brokerlist: the list files' lock, read and write (see the header).
 * libc only, like nu_brokerlist.c: the broker plugin compiles it too, so
 * the plugin adopting a list from the bus takes the same lock as the cloud
 * and the CLI writing the same file.
 */
#include "nu_brokerlist.h"

#include "nu_err.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

static int brokerlist__errno(int e)
{
    switch (e) {
    case ENOENT:
        return NU_ERR_NOT_FOUND;
    case EACCES:
    case EPERM:
        return NU_ERR_PERMISSION;
    case ENOMEM:
        return NU_ERR_NOMEM;
    default:
        return NU_ERR_IO;
    }
}

/* A regular file of at most NU_BROKERLIST_FILE_MAX bytes, NUL-terminated. */
static int brokerlist__read(const char *path, uint8_t **out, size_t *out_len)
{
    struct stat st;
    uint8_t *buf = NULL;
    size_t got = 0;
    int rc = NU_ERR_IO;
    *out = NULL;
    *out_len = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return brokerlist__errno(errno);
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        goto out;
    rc = NU_ERR_TOO_LARGE;
    if ((unsigned long long)st.st_size > NU_BROKERLIST_FILE_MAX)
        goto out;
    rc = NU_ERR_NOMEM;
    if (!(buf = malloc((size_t)st.st_size + 1)))
        goto out;
    rc = NU_ERR_IO;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        got += (size_t)n;
    }
    buf[got] = '\0';
    *out = buf;
    *out_len = got;
    buf = NULL;
    rc = NU_OK;
out:
    free(buf);
    close(fd);
    return rc;
}

/* tmp file, fsync, rename over `path`, fsync of the folder (a power cut
 * leaves the old list or the new one, never half of one). */
static int brokerlist__write(const char *path, const void *text, size_t len, mode_t mode)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp.%ld", path, (long)getpid()) >= (int)sizeof(tmp) ||
        snprintf(dir, sizeof(dir), "%s", path) >= (int)sizeof(dir))
        return NU_ERR_TOO_LARGE;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return brokerlist__errno(errno);
    int rc = fchmod(fd, mode) == 0 ? NU_OK : NU_ERR_IO;
    for (size_t off = 0; rc == NU_OK && off < len;) {
        ssize_t n = write(fd, (const char *)text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            rc = NU_ERR_IO;
        else
            off += (size_t)n;
    }
    if (rc == NU_OK && fsync(fd) != 0)
        rc = NU_ERR_IO;
    if (close(fd) != 0 && rc == NU_OK)
        rc = NU_ERR_IO;
    if (rc == NU_OK && rename(tmp, path) != 0)
        rc = brokerlist__errno(errno);
    if (rc != NU_OK) {
        unlink(tmp);
        return rc;
    }
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
        (void)fsync(dfd);
        close(dfd);
    }
    return NU_OK;
}

int nu_brokerlist_lock(const char *path, int *out_fd)
{
    char lock[PATH_MAX + 8];
    if (!path || !out_fd)
        return NU_ERR_INVALID_ARG;
    *out_fd = -1;
    if (snprintf(lock, sizeof(lock), "%s.lock", path) >= (int)sizeof(lock))
        return NU_ERR_TOO_LARGE;
    *out_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (*out_fd < 0)
        return brokerlist__errno(errno);
    while (flock(*out_fd, LOCK_EX) != 0) {
        if (errno != EINTR)
            return NU_ERR_IO;
    }
    return NU_OK;
}

/* The lock, then the list as it is under that lock (absent = empty). */
static int brokerlist__lock_read(const char *path, int *out_fd, uint8_t **out, size_t *out_len)
{
    int rc = nu_brokerlist_lock(path, out_fd);
    if (rc != NU_OK)
        return rc;
    rc = brokerlist__read(path, out, out_len);
    return rc == NU_ERR_NOT_FOUND ? NU_OK : rc;
}

int nu_brokerlist_edit(const char *path, const struct nu_brokerlist_edit *e)
{
    uint8_t *old = NULL;
    size_t old_len = 0, new_len = 0, cap = 0;
    char *buf = NULL;
    int changed = 0, fd = -1;
    mode_t mode = 0644;
    struct stat st;
    if (!path || !e)
        return NU_ERR_INVALID_ARG;
    int rc = brokerlist__lock_read(path, &fd, &old, &old_len);
    if (!rc && stat(path, &st) == 0)
        mode = st.st_mode & 0777;
    cap = old_len + 1;
    for (size_t i = 0; !rc && i < e->n_add; i++)
        cap += strlen(e->add[i]) + 1;
    if (!rc && cap > NU_BROKERLIST_FILE_MAX)
        rc = NU_ERR_TOO_LARGE;
    if (!rc && !(buf = malloc(cap)))
        rc = NU_ERR_NOMEM;
    if (!rc)
        rc = nu_brokerlist_apply(old, old_len, e, buf, cap, &new_len, &changed);
    if (!rc && changed)
        rc = brokerlist__write(path, buf, new_len, mode);
    if (fd >= 0)
        close(fd); /* releases the lock */
    free(buf);
    free(old);
    return rc;
}

int nu_brokerlist_replace(const char *path, const void *text, size_t len, int *out_changed)
{
    uint8_t *old = NULL;
    size_t old_len = 0;
    int fd = -1, changed = 0;
    mode_t mode = 0644;
    struct stat st;
    if (!path || (!text && len))
        return NU_ERR_INVALID_ARG;
    if (len > NU_BROKERLIST_FILE_MAX)
        return NU_ERR_TOO_LARGE;
    int rc = brokerlist__lock_read(path, &fd, &old, &old_len);
    if (!rc && stat(path, &st) == 0)
        mode = st.st_mode & 0777;
    /* Unchanged bytes are not rewritten: the plugin reloads on a new stamp. */
    changed = !rc && (old_len != len || (len && memcmp(old, text, len) != 0));
    if (changed)
        rc = brokerlist__write(path, text, len, mode);
    if (fd >= 0)
        close(fd);
    free(old);
    if (!rc && out_changed)
        *out_changed = changed;
    return rc;
}

int nu_brokerlist_file_has(const char *path, const char *norm)
{
    uint8_t *text = NULL;
    size_t len = 0;
    if (!path || !norm)
        return -NU_ERR_INVALID_ARG;
    int rc = brokerlist__read(path, &text, &len);
    if (rc == NU_ERR_NOT_FOUND)
        return 0;
    int has = rc == NU_OK && nu_brokerlist_has((const char *)text, len, norm);
    free(text);
    return rc == NU_OK ? has : -rc;
}
