/*
 * nu_brokerlist — the one owner of the broker's list files: DIR/broker/revoked
 * (one identity a line) and DIR/broker/owners (lines "station programmer").
 *
 * Format: text, lines split on '\n'; blanks are ' ', '\t' and '\r'; '#'
 * starts a comment that runs to the end of the line (also inside a token);
 * blank lines and comments mean nothing. A line's meaning is its tokens, so
 * two lines with the same tokens are the same line. The nusec_auth plugin
 * reads them with nu_brokerlist_tokenize() (broker/acl.c: a line that is not
 * exactly N valid identities makes the whole file invalid); writers go
 * through nu_brokerlist_edit() only.
 *
 * Lock: every writer takes an exclusive flock on PATH.lock (a side file, so
 * the atomic rename of PATH never drops it), reads PATH under that lock,
 * and replaces PATH atomically (nu_file_write_atomic): the plugin, which
 * re-reads the file when it changes, never sees half a file, and two writers
 * (cloud workers, the CLI, a second agent) never lose each other's lines.
 *
 * Two files, one module, both libc only and compiled into the plugin too
 * (which links neither libnusec nor wolfSSL): nu_brokerlist.c is the format,
 * nu_brokerlist_file.c the lock, read and write. The plugin writes a list it
 * adopts from the bus (nu_brokerlist_replace / _edit) under the same lock as
 * the cloud and the CLI.
 */
#ifndef NU_BROKERLIST_H
#define NU_BROKERLIST_H

#include <stddef.h>
#include <stdint.h>

/* Largest list file read or written (the plugin refuses larger ones too). */
#define NU_BROKERLIST_FILE_MAX (1024u * 1024u)
/* Tokens a line may have before it is refused by every reader. */
#define NU_BROKERLIST_TOKENS_MAX 3

/* One token of a line: `len` bytes at `p` (not NUL-terminated). */
struct nu_brokerlist_tok {
    const char *p;
    size_t len;
};

/*
 * Split one line (without its '\n') into tokens. Up to
 * NU_BROKERLIST_TOKENS_MAX are stored in tok[]; *out_n counts them all, but
 * stops counting at NU_BROKERLIST_TOKENS_MAX + 1 (more is just "too many").
 */
void nu_brokerlist_tokenize(const char *line, size_t len,
                            struct nu_brokerlist_tok tok[NU_BROKERLIST_TOKENS_MAX], size_t *out_n);

/*
 * A line's tokens joined by one space into out[cap] (NUL-terminated, cut at
 * cap - 1): the form lines are compared in. Returns its length; 0 for a
 * blank or comment line.
 */
size_t nu_brokerlist_norm(const char *line, size_t len, char *out, size_t cap);

/* 1 when some line of text[len] normalises to `norm`, else 0. */
int nu_brokerlist_has(const char *text, size_t len, const char *norm);

/* An edit of a list file. */
struct nu_brokerlist_edit {
    const char *drop_owner_of; /* owners: drop every line "* drop_owner_of" (NULL: none) */
    const char *const *add;    /* lines to have, in normalised form */
    size_t n_add;
};

/*
 * Apply `e` to old[old_len] into out[cap]: lines are kept as written
 * (comments too) except those dropped and second copies of an added line;
 * added lines not yet there are appended. *out_changed: 0 when the result
 * means the same as old. Errors: INVALID_ARG, TOO_LARGE (cap), NOMEM.
 */
int nu_brokerlist_apply(const uint8_t *old, size_t old_len, const struct nu_brokerlist_edit *e,
                        char *out, size_t cap, size_t *out_len, int *out_changed);

/*
 * Apply `e` to the list file `path` under its lock (see above); the file is
 * rewritten only when it changes (its mode kept, 0644 when new).
 * Errors: INVALID_ARG, TOO_LARGE (over NU_BROKERLIST_FILE_MAX), IO,
 * PERMISSION, NOMEM.
 */
int nu_brokerlist_edit(const char *path, const struct nu_brokerlist_edit *e);

/*
 * Take the exclusive lock of the list file `path` (flock on PATH.lock):
 * *out_fd is >= 0 on success, and also on some failures; close() it to
 * release. For a writer that builds the whole file itself (the cloud's
 * serial list). Errors: INVALID_ARG, TOO_LARGE (path), IO, PERMISSION.
 */
int nu_brokerlist_lock(const char *path, int *out_fd);

/*
 * Replace the list file `path` by text[len] under its lock, atomically (its
 * mode kept, 0644 when new); not rewritten when the bytes are the same.
 * *out_changed (may be NULL): 1 when rewritten. The caller checks the
 * format first. Errors: INVALID_ARG, TOO_LARGE, IO, PERMISSION, NOMEM.
 */
int nu_brokerlist_replace(const char *path, const void *text, size_t len, int *out_changed);

/*
 * 1 when the list file `path` has a line that normalises to `norm`, 0 when
 * not or when the file is missing; negative NU_ERR_* on read errors.
 */
int nu_brokerlist_file_has(const char *path, const char *norm);

#endif
