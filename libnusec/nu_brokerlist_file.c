/* nu_brokerlist: the list files' lock, read and write (the plugin only reads; see the header). */
#include "nu_brokerlist.h"

#include "nu_err.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

/*
 * Take the exclusive lock on PATH.lock (*out_fd: close it to release, also
 * on failure when >= 0) and read the list as it is under that lock (absent =
 * empty).
 */
static int brokerlist__lock_read(const char *path, int *out_fd, uint8_t **out, size_t *out_len)
{
    char lock[PATH_MAX + 8];
    *out_fd = -1;
    int rc = nu_path_fmt(lock, sizeof(lock), "%s.lock", path);
    if (rc)
        return rc;
    *out_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (*out_fd < 0 || flock(*out_fd, LOCK_EX) != 0)
        return errno == EACCES ? NU_ERR_PERMISSION : NU_ERR_IO;
    rc = nu_file_read(path, NU_BROKERLIST_FILE_MAX, out, out_len);
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
        rc = nu_file_write_atomic(path, buf, new_len, mode);
    if (fd >= 0)
        close(fd); /* releases the lock */
    free(buf);
    free(old);
    return rc;
}

int nu_brokerlist_file_has(const char *path, const char *norm)
{
    uint8_t *text = NULL;
    size_t len = 0;
    if (!path || !norm)
        return -NU_ERR_INVALID_ARG;
    int rc = nu_file_read(path, NU_BROKERLIST_FILE_MAX, &text, &len);
    if (rc == NU_ERR_NOT_FOUND)
        return 0;
    int has = rc == NU_OK && nu_brokerlist_has((const char *)text, len, norm);
    free(text);
    return rc == NU_OK ? has : -rc;
}
