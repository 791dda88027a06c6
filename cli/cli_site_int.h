/*
 * cli_site_int.h — what the files of `nusec site` share (not a public API):
 * cli_site.c (helpers, the commands), cli_site_oem.c (add, sign, assign,
 * export: the OEM's side) and cli_site_cm.c (join, init, the site broker's
 * configuration: the CM's side). cli_site.h is the contract.
 */
#ifndef CLI_SITE_INT_H
#define CLI_SITE_INT_H

#include <stddef.h>
#include <sys/types.h>

#define SITE__TOKEN_BYTES 32
#define SITE__DAY 86400
#define SITE__LEAF_DAYS 825
#define SITE__OWNERS_MAX (1024u * 1024u)

/* "nusec: site WHAT: ..." to stderr. */
void site__say(const char *what, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* 1 if s is a usable site name: [A-Za-z0-9._-]{1,64}, not a role name. */
int site__name_ok(const char *s);

/* DIR/sites/NAME[/file] (the OEM's per-site folder) into out[cap]. */
int site__oem_path(const char *dir, const char *name, const char *file, char *out, size_t cap);

/* DIR/site/file (the CM's site facts) into out[cap]. */
int site__cm_path(const char *dir, const char *file, char *out, size_t cap);

/* text written atomically to path with mode. */
int site__write_text(const char *path, const char *text, mode_t mode);

/* One line of the OEM's DIR/sites/audit.jsonl (other, detail may be NULL). */
void site__audit(const char *dir, const char *event, const char *site, const char *other, int code,
                 const char *detail);

#endif
