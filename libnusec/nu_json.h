/*
 * nu_json — the one JSON writer for audit payloads, and the strict check an
 * auditor runs on them.
 *
 * Audit payloads carry strings that come from outside (topic levels, job
 * ids, detail texts). Built by hand with printf, a topic level such as
 * `x","code":"OK` forged a key and `x\` made the payload invalid. Every
 * audit payload is therefore built with this writer, which escapes every
 * string: '"' and '\', every control character (C0, DEL) as \u00XX, and
 * each byte of invalid UTF-8 as \ufffd. Its output is always valid JSON.
 *
 * The writer works in a caller-supplied buffer (no heap): overflow is sticky
 * and checked once at the end with nu_json_ok(). The struct is public so it
 * can live on the stack; treat its fields as read-only.
 *
 *     char buf[512];
 *     struct nu_json j;
 *     nu_json_init(&j, buf, sizeof(buf));
 *     nu_json_raw(&j, "{", 1);
 *     nu_json_str(&j, "op", op);          // escaped
 *     nu_json_u64(&j, "count", n);
 *     nu_json_raw(&j, "}", 1);
 *     if (!nu_json_ok(&j)) ...            // buf holds j.len bytes + NUL
 *
 * nu_json_check() is the auditor's side: the text must be exactly one JSON
 * object (RFC 8259, parsed by cJSON), valid UTF-8, no raw control character
 * in a string, no \u0000, and no object anywhere in it may repeat a key (which is how an injected
 * `"code":"OK"` shows even when the payload still parses).
 */
#ifndef NU_JSON_H
#define NU_JSON_H

#include <stddef.h>
#include <stdint.h>

struct nu_json {
    char *buf;    /* caller's buffer, always NUL-terminated */
    size_t cap;   /* its size */
    size_t len;   /* bytes written (without the NUL) */
    int overflow; /* something did not fit: the text is incomplete */
};

/* Start writing into buf[cap] (cap >= 1). */
void nu_json_init(struct nu_json *j, char *buf, size_t cap);

/* Append n bytes as they are: structure only ("{", "]}", ...), never data. */
void nu_json_raw(struct nu_json *j, const char *s, size_t n);

/* nu_json_raw of a NUL-terminated string. */
void nu_json_puts(struct nu_json *j, const char *s);

/* `"key":`, preceded by a comma unless first in its object or array.
 * key NULL: only the comma (an array element). key is escaped too. */
void nu_json_key(struct nu_json *j, const char *key);

/* "key":"escaped s" (s NULL = ""). */
void nu_json_str(struct nu_json *j, const char *key, const char *s);

/* "key":"escaped s[0..n)" (s may hold anything, NUL included: escaped). */
void nu_json_strn(struct nu_json *j, const char *key, const char *s, size_t n);

/* "key":"lowercase hex of b[0..n)" (n <= 64, else overflow). */
void nu_json_hex(struct nu_json *j, const char *key, const uint8_t *b, size_t n);

/* "key":v */
void nu_json_u64(struct nu_json *j, const char *key, uint64_t v);

/* 1 when everything fitted. */
int nu_json_ok(const struct nu_json *j);

/*
 * Check that text[0..len) is one strict JSON object with no duplicate key at
 * any depth (see the top of this file). out_why (optional) is set to a
 * static string naming the failed check; it never contains input bytes.
 * Errors: INVALID_ARG (NULL text), DECODE (not strict JSON, not an object,
 * invalid UTF-8, a control character, a duplicate key), NOMEM.
 */
int nu_json_check(const char *text, size_t len, const char **out_why);

#endif
