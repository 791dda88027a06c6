/*
 * nu_log — leveled logging to stderr (or a file), one line per call.
 *
 * Lines look like "2026-11-24T16:20:01.123Z nusec-cloud[1234] warn: text".
 * The logger is process-wide state set once at start-up (nu_log_init); it is
 * the one deliberate global of libnusec, because every module logs and
 * threading a logger through each call would add nothing.
 *
 * Policy: never log key material, PINs, tokens or plaintext secrets. Log
 * identifiers (job id, serial, UID) and error codes instead.
 */
#ifndef NU_LOG_H
#define NU_LOG_H

#include <stdio.h>

enum nu_log_level {
    NU_LOG_DEBUG = 0,
    NU_LOG_INFO = 1,
    NU_LOG_WARN = 2,
    NU_LOG_ERROR = 3,
    NU_LOG_OFF = 4,
};

/* Set program name and minimum level; `out` NULL means stderr (or the file of
 * nu_log_open, when one is open). `out` is not owned. */
void nu_log_init(const char *program, enum nu_log_level level, FILE *out);

/* Parse "debug|info|warn|error|off"; returns NU_OK or NU_ERR_INVALID_ARG. */
int nu_log_level_parse(const char *text, enum nu_log_level *out_level);

enum nu_log_level nu_log_get_level(void);

/* Change the minimum level (e.g. on a configuration reload); any thread. */
void nu_log_set_level(enum nu_log_level level);

/*
 * Log to the file at `path` from now on (appended, created 0644); the logger
 * owns the file and remembers the path for nu_log_reopen. Replaces the
 * destination nu_log_init gave. Errors: INVALID_ARG, TOO_LARGE (path),
 * IO (cannot open; the previous destination stays).
 */
int nu_log_open(const char *path);

/*
 * Open the path of nu_log_open again, e.g. on SIGHUP after logrotate moved
 * the file aside: the next line goes to a new file at that path. NU_OK and
 * nothing to do when the log is not a file of nu_log_open.
 * Errors: IO (cannot open; logging goes on to the old file).
 */
int nu_log_reopen(void);

/* Close the file of nu_log_open; the log goes to stderr again. */
void nu_log_close(void);

void nu_log(enum nu_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define nu_debug(...) nu_log(NU_LOG_DEBUG, __VA_ARGS__)
#define nu_info(...) nu_log(NU_LOG_INFO, __VA_ARGS__)
#define nu_warn(...) nu_log(NU_LOG_WARN, __VA_ARGS__)
#define nu_error(...) nu_log(NU_LOG_ERROR, __VA_ARGS__)

#endif
