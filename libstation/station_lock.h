/*
 * station_lock — one station daemon per state directory. The daemon holds
 * DIR/station/station.lock (flock) with its pid written in it; production
 * reports, `nusec production` and the local-stack supervisor ask whether a
 * daemon holds it, without linking the daemon.
 */
#ifndef STATION_LOCK_H
#define STATION_LOCK_H

#include <sys/types.h>

/*
 * Take the lock of `dir` for this process and write its pid into it.
 * *out_fd receives the open lock file, or -1; the caller closes it (which
 * releases the lock), also after an error.
 * Errors: BUSY (another daemon holds it), PERMISSION, IO, and those of
 * nu_paths_get and nu_mkdirs.
 */
int station_lock_take(const char *dir, int *out_fd);

/*
 * 1 when a daemon holds the lock of `dir` (its pid into *out_pid if not
 * NULL, 0 if unknown), 0 when none does.
 */
int station_daemon_running(const char *dir, pid_t *out_pid);

#endif
