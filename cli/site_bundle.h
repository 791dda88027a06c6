/*
 * site_bundle — the file that crosses between the OEM and a CM site (the
 * enrolment, the join request, the site bundle): a magic line, then named
 * entries, each "file NAME LEN\n" + LEN bytes + "\n", then "end COUNT\n".
 * One owner for the format: site_bundle_read is the parser for an untrusted
 * file (anything unexpected is NU_ERR_DECODE), site_bundle_write the writer.
 *
 * Ownership: a bundle owns copies of its entries' bytes (each also NUL-
 * terminated in memory); site_bundle_free wipes and frees them (a token may
 * be among them). Entries are borrowed from the bundle by site_bundle_get.
 */
#ifndef NUSEC_SITE_BUNDLE_H
#define NUSEC_SITE_BUNDLE_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define SITE_BUNDLE_ENTRIES_MAX 24
#define SITE_BUNDLE_ENTRY_MAX (4u * 1024u * 1024u + 65536u) /* the boot manifest is the largest */

struct site_bundle_entry {
    char name[64];
    uint8_t *data;
    size_t len;
};

struct site_bundle {
    struct site_bundle_entry e[SITE_BUNDLE_ENTRIES_MAX];
    size_t n;
};

/* Wipe and free every entry; the bundle is empty and reusable after. */
void site_bundle_free(struct site_bundle *b);

/* Add a copy of data[len] as entry `name` ([a-z0-9._/-], no ".."):
 * INVALID_ARG for a bad name, a full bundle or an entry too large; NOMEM. */
int site_bundle_put(struct site_bundle *b, const char *name, const void *data, size_t len);
int site_bundle_put_str(struct site_bundle *b, const char *name, const char *text);
/* A file's bytes as entry `name`; NOT_FOUND is passed on (callers decide). */
int site_bundle_put_file(struct site_bundle *b, const char *name, const char *path);

/* The entry called `name`, or NULL. */
const struct site_bundle_entry *site_bundle_get(const struct site_bundle *b, const char *name);
/* A one-line text entry into out[cap]: NOT_FOUND, DECODE (newline/NUL inside, too long). */
int site_bundle_get_line(const struct site_bundle *b, const char *name, char *out, size_t cap);

/* Write atomically with `mode`; read (and check) an untrusted file: DECODE,
 * IO/NOT_FOUND from the file; on failure *b is left empty. */
int site_bundle_write(const struct site_bundle *b, const char *path, mode_t mode);
int site_bundle_read(const char *path, struct site_bundle *b);

/* The same two in memory: parse buf[len] (untrusted; DECODE, *b left empty
 * on failure), and encode into *out (caller frees; it may hold a token: wipe
 * it first) of *out_len bytes. NOMEM. */
int site_bundle_parse(const uint8_t *buf, size_t len, struct site_bundle *b);
int site_bundle_encode(const struct site_bundle *b, uint8_t **out, size_t *out_len);

#endif
