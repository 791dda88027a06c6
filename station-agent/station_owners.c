#include "station_owners.h"

#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define OWNERS__FILE_MAX (1024u * 1024u)

/* Is there a line whose two blank-separated words are exactly station and programmer? */
static int owners__contains(const char *text, size_t len, const char *station,
                            const char *programmer)
{
    size_t ls = strlen(station), lp = strlen(programmer);
    for (size_t pos = 0; pos < len;) {
        const char *line = text + pos;
        const char *nl = memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        size_t i = 0;
        while (i < n && (line[i] == ' ' || line[i] == '\t'))
            i++;
        if (n - i > ls && !memcmp(line + i, station, ls) &&
            (line[i + ls] == ' ' || line[i + ls] == '\t')) {
            i += ls;
            while (i < n && (line[i] == ' ' || line[i] == '\t'))
                i++;
            size_t j = i + lp;
            if (n >= j && !memcmp(line + i, programmer, lp)) {
                while (j < n && (line[j] == ' ' || line[j] == '\t' || line[j] == '\r'))
                    j++;
                if (j == n)
                    return 1;
            }
        }
        pos += n + 1;
    }
    return 0;
}

static int owners__read(const char *path, uint8_t **out, size_t *out_len)
{
    int rc = nu_file_read(path, OWNERS__FILE_MAX, out, out_len);
    if (rc == NU_ERR_NOT_FOUND) {
        *out = NULL;
        *out_len = 0;
        rc = NU_OK;
    }
    return rc;
}

int station_owners_has(const char *dir, const char *station, const char *programmer)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    if (!dir || nu_envelope_id_check(station) || nu_envelope_id_check(programmer))
        return -NU_ERR_INVALID_ARG;
    int rc = nu_paths_get(dir, NU_PATH_BROKER_OWNERS, path, sizeof(path));
    if (rc == NU_OK)
        rc = owners__read(path, &text, &len);
    int has = rc == NU_OK && text && owners__contains((const char *)text, len, station, programmer);
    free(text);
    return rc == NU_OK ? has : -rc;
}

int station_owners_add(const char *dir, const char *station, const char *programmer)
{
    char path[PATH_MAX], lock[PATH_MAX + 8];
    uint8_t *old = NULL;
    char *buf = NULL;
    size_t old_len = 0;
    mode_t mode = 0644;
    struct stat st;
    int fd = -1;
    if (!dir || nu_envelope_id_check(station) || nu_envelope_id_check(programmer))
        return NU_ERR_INVALID_ARG;
    int rc = nu_paths_get(dir, NU_PATH_BROKER_OWNERS, path, sizeof(path));
    if (rc == NU_OK)
        rc = nu_path_fmt(lock, sizeof(lock), "%s.lock", path);
    if (rc != NU_OK)
        return rc;
    fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0 || flock(fd, LOCK_EX) != 0) {
        rc = errno == EACCES ? NU_ERR_PERMISSION : NU_ERR_IO;
        goto out;
    }
    if ((rc = owners__read(path, &old, &old_len)) != NU_OK)
        goto out;
    if (old && owners__contains((const char *)old, old_len, station, programmer))
        goto out;
    if (stat(path, &st) == 0)
        mode = st.st_mode & 0777;
    /* a newline before, the space, the newline and snprintf's NUL */
    size_t cap = old_len + strlen(station) + strlen(programmer) + 4;
    if (!(buf = malloc(cap))) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    size_t n = old_len;
    if (old_len)
        memcpy(buf, old, old_len);
    if (n && buf[n - 1] != '\n')
        buf[n++] = '\n';
    n += (size_t)snprintf(buf + n, cap - n, "%s %s\n", station, programmer);
    rc = nu_file_write_atomic(path, buf, n, mode);
out:
    if (fd >= 0)
        close(fd); /* releases the lock */
    free(buf);
    free(old);
    return rc;
}
