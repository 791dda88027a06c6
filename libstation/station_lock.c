/* The station daemon's lock: one daemon per state directory, and who holds it. */
#include "station_lock.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <unistd.h>

static int lock__path(const char *dir, char *out, size_t cap)
{
    char folder[PATH_MAX];
    int rc = nu_paths_get(dir, NU_PATH_STATION, folder, sizeof(folder));
    if (rc == NU_OK)
        rc = nu_mkdirs(folder, 0700);
    if (rc == NU_OK)
        rc = nu_path_fmt(out, cap, "%s/station.lock", folder);
    return rc;
}

int station_lock_take(const char *dir, int *out_fd)
{
    char path[PATH_MAX], pid[32];
    *out_fd = -1;
    int rc = lock__path(dir, path, sizeof(path));
    if (rc != NU_OK)
        return rc;
    *out_fd = open(path, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
    if (*out_fd < 0)
        return errno == EACCES ? NU_ERR_PERMISSION : NU_ERR_IO;
    if (flock(*out_fd, LOCK_EX | LOCK_NB) != 0)
        return errno == EWOULDBLOCK ? NU_ERR_BUSY : NU_ERR_IO;
    int n = snprintf(pid, sizeof(pid), "%ld\n", (long)getpid());
    if (ftruncate(*out_fd, 0) != 0 || pwrite(*out_fd, pid, (size_t)n, 0) != n)
        nu_warn("cannot write the pid into %s", path);
    return NU_OK;
}

int station_daemon_running(const char *dir, pid_t *out_pid)
{
    char path[PATH_MAX], text[32];
    if (out_pid)
        *out_pid = 0;
    if (!dir || nu_paths_get(dir, NU_PATH_STATION, path, sizeof(path)) != NU_OK ||
        nu_path_fmt(path + strlen(path), sizeof(path) - strlen(path), "/station.lock") != NU_OK)
        return 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    int running = flock(fd, LOCK_SH | LOCK_NB) != 0 && errno == EWOULDBLOCK;
    if (running && out_pid) {
        ssize_t n = pread(fd, text, sizeof(text) - 1, 0);
        text[n > 0 ? n : 0] = '\0';
        *out_pid = (pid_t)atol(text);
    }
    close(fd); /* also drops a shared lock we took */
    return running;
}
