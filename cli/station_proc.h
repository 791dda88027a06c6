/*
 * station_proc — process supervision for `nusec stack up|down|status`:
 * spawn a daemon detached from the terminal with its output in a log file,
 * pid files, liveness that is not fooled by zombies or recycled pids, and
 * a polite-then-firm stop.
 */
#ifndef STATION_PROC_H
#define STATION_PROC_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Start argv[0] (a path) with argv in a new session (so the operator's
 * Ctrl-C does not reach it), stdin from /dev/null, stdout and stderr
 * appended to log_path, no other descriptor inherited. *out_pid is the
 * child's pid; an exec failure shows as exit status 127 and a line in the log.
 * The HSM user PIN ($NUSEC_HSM_PIN) is not handed on: only the program that
 * logs in to the HSM needs it, and it gets it through env_add.
 * Errors: INVALID_ARG, IO (log not writable, fork failed).
 */
int station_proc_spawn(char *const argv[], const char *log_path, pid_t *out_pid);

/* station_proc_spawn() with env_add ("NAME=VALUE", NULL-terminated) added to
 * the child's environment only: a secret handed on there stays out of the
 * world-readable /proc/PID/cmdline (environ is the owner's alone). */
int station_proc_spawn_env(char *const argv[], char *const env_add[], const char *log_path,
                           pid_t *out_pid);

/*
 * 1 while pid runs: it exists and is not a zombie (a child of ours that
 * ended is reaped here). 0 otherwise.
 */
int station_proc_alive(pid_t pid);

/*
 * 1 when the program of pid is `name` (basename of its argv[0], or of
 * /proc/PID/exe): a pid file's pid can have been recycled by another
 * program since. 0 otherwise.
 */
int station_proc_is(pid_t pid, const char *name);

/*
 * SIGTERM pid, wait up to grace_ms for it to end, then SIGKILL and wait up
 * to 2 s more. Returns 0 when it ended on SIGTERM, 1 when it needed SIGKILL,
 * -1 when it is still there.
 */
int station_proc_stop(pid_t pid, unsigned grace_ms);

/*
 * Wait up to ms for child pid to exit; *out_status gets its exit status
 * (128 + signal when killed). Errors: TIMEOUT (still running), INVALID_ARG.
 */
int station_proc_wait_child(pid_t pid, unsigned ms, int *out_status);

/* Pid files: "PID\n" written atomically (0644); read: NOT_FOUND, DECODE. */
int station_pidfile_write(const char *path, pid_t pid);
int station_pidfile_read(const char *path, pid_t *out_pid);

/*
 * The folder of NuSEC's programs: $NUSEC_BIN_DIR if set, else the folder of
 * the running executable (/proc/self/exe), so build/bin/ works as is.
 * Errors: TOO_LARGE, IO.
 */
int station_bin_dir(char *out, size_t cap);

/* 1 when a TCP connection to host:port succeeds within timeout_ms, else 0. */
int station_tcp_probe(const char *host, int port, unsigned timeout_ms);

/* Print the last `lines` lines of a log file to stderr, indented (diagnostics). */
void station_log_tail(const char *path, unsigned lines);

/* 1 when the log file contains `needle` (in its last 64 KiB). */
int station_log_contains(const char *path, const char *needle);

#endif
