/*
 * nu_util — small helpers every program needs: bounded file I/O, atomic
 * writes, paths, hex, clocks, randomness, zeroization, the state directory.
 * All return NU_OK or an NU_ERR_* code from nu_err.h.
 */
#ifndef NU_UTIL_H
#define NU_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Largest file nu_file_read() accepts unless the caller passes less. */
#define NU_FILE_MAX (64u * 1024u * 1024u)

/*
 * Read a whole file of at most `max` bytes. On success *out_buf is a
 * heap buffer of *out_len bytes plus a terminating NUL (so text files can be
 * used as strings); the caller frees it with free().
 * Errors: NOT_FOUND, PERMISSION, TOO_LARGE (file larger than max), IO, NOMEM.
 */
int nu_file_read(const char *path, size_t max, uint8_t **out_buf, size_t *out_len);

/*
 * Write `len` bytes to `path` atomically: temp file in the same folder with
 * `mode`, fsync, rename over the target, fsync the folder. A crash leaves
 * either the old or the new content, never a torn file.
 * Errors: IO, PERMISSION, NOT_FOUND (folder missing), INVALID_ARG.
 */
int nu_file_write_atomic(const char *path, const void *buf, size_t len, mode_t mode);

/* Like nu_file_write_atomic() but fails with EXISTS if `path` exists. */
int nu_file_write_new(const char *path, const void *buf, size_t len, mode_t mode);

/* 1 if `path` exists (any type), 0 otherwise. */
int nu_path_exists(const char *path);

/* mkdir -p with `mode` for the folders it creates. Errors: IO, PERMISSION. */
int nu_mkdirs(const char *path, mode_t mode);

/* snprintf into out[cap]; TOO_LARGE instead of truncating. */
int nu_path_fmt(char *out, size_t cap, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/*
 * The state directory: `opt` if not NULL, else $NUSEC_HOME, else NULL.
 * The returned string is not owned by the caller.
 */
const char *nu_state_dir(const char *opt);

/* Lower-case hex of `len` bytes into out[cap] (needs 2*len+1). TOO_LARGE if short. */
int nu_hex_encode(const uint8_t *buf, size_t len, char *out, size_t cap);

/* Decode hex text (even length, [0-9a-fA-F]) into out[cap]. DECODE or TOO_LARGE. */
int nu_hex_decode(const char *hex, uint8_t *out, size_t cap, size_t *out_len);

/* Same for exactly `n_digits` characters of `hex` (need not be NUL-terminated). */
int nu_hex_decode_n(const char *hex, size_t n_digits, uint8_t *out, size_t cap, size_t *out_len);

/* Wall clock, Unix milliseconds. */
uint64_t nu_time_ms(void);

/* Monotonic clock in milliseconds, for timeouts and rates. */
uint64_t nu_mono_ms(void);

/* Fill `buf` from the kernel CSPRNG. Errors: CRYPTO. */
int nu_random(void *buf, size_t len);

/* Zero memory in a way the compiler may not elide. */
void nu_zero(void *buf, size_t len);

/* Constant-time comparison; 0 when equal. */
int nu_memeq_ct(const void *a, const void *b, size_t len);

/*
 * Parse a decimal unsigned number made of digits only (no sign, no spaces),
 * within [min, max]. Errors: INVALID_ARG (not a number), TOO_LARGE (out of range).
 */
int nu_parse_uint(const char *text, uint64_t min, uint64_t max, uint64_t *out_value);

/* Parse a duration like "90s", "15m", "12h", "30d" (bare number = seconds). */
int nu_duration_parse(const char *text, uint64_t *out_seconds);

/*
 * Room for items[n] in a growable array of `cap` items of `size` bytes:
 * `items` itself while n < *cap, else the array reallocated to twice *cap
 * (16 when empty) and *cap updated. Returns the array to use from now on
 * (the caller stores it), or NULL when out of memory or the size overflows:
 * then `items` and *cap are unchanged and still the caller's to free.
 */
void *nu_grow(void *items, size_t *cap, size_t n, size_t size);

#endif
