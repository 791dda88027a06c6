/* nu_json — escaping JSON writer and strict payload check (nu_json.h). */
#include "nu_json.h"

#include "nu_err.h"

#include <cJSON.h>
#include <stdio.h>
#include <string.h>

void nu_json_init(struct nu_json *j, char *buf, size_t cap)
{
    j->buf = buf;
    j->cap = cap;
    j->len = 0;
    j->overflow = cap == 0;
    if (cap)
        buf[0] = '\0';
}

void nu_json_raw(struct nu_json *j, const char *s, size_t n)
{
    if (j->overflow || n >= j->cap - j->len) {
        j->overflow = 1;
        return;
    }
    memcpy(j->buf + j->len, s, n);
    j->len += n;
    j->buf[j->len] = '\0';
}

void nu_json_puts(struct nu_json *j, const char *s)
{
    nu_json_raw(j, s, strlen(s));
}

/* Length of the well-formed UTF-8 sequence at s (1..4), 0 when it is not
 * one (overlong, surrogate, beyond U+10FFFF, cut, stray continuation). */
static size_t nu_json__utf8_len(const unsigned char *s, size_t n)
{
    size_t len;
    uint32_t cp, min;
    if (s[0] < 0x80)
        return 1;
    if ((s[0] & 0xe0) == 0xc0) {
        len = 2, cp = s[0] & 0x1fu, min = 0x80;
    } else if ((s[0] & 0xf0) == 0xe0) {
        len = 3, cp = s[0] & 0x0fu, min = 0x800;
    } else if ((s[0] & 0xf8) == 0xf0) {
        len = 4, cp = s[0] & 0x07u, min = 0x10000;
    } else {
        return 0;
    }
    if (len > n)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3fu);
    }
    if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
        return 0;
    return len;
}

/* The escaped body of a string, without the quotes. */
static void nu_json__escape(struct nu_json *j, const unsigned char *p, size_t n)
{
    size_t i = 0;
    while (i < n) {
        char esc[8];
        size_t len = nu_json__utf8_len(p + i, n - i);
        if (len == 0) {
            nu_json_raw(j, "\\ufffd", 6); /* one replacement per invalid byte */
            i++;
        } else if (p[i] == '"' || p[i] == '\\') {
            esc[0] = '\\';
            esc[1] = (char)p[i];
            nu_json_raw(j, esc, 2);
            i++;
        } else if (p[i] < 0x20 || p[i] == 0x7f) {
            snprintf(esc, sizeof(esc), "\\u%04x", p[i]);
            nu_json_raw(j, esc, 6);
            i++;
        } else {
            nu_json_raw(j, (const char *)p + i, len);
            i += len;
        }
    }
}

void nu_json_key(struct nu_json *j, const char *key)
{
    if (j->len > 0 && j->buf[j->len - 1] != '{' && j->buf[j->len - 1] != '[')
        nu_json_raw(j, ",", 1);
    if (key) {
        nu_json_raw(j, "\"", 1);
        nu_json__escape(j, (const unsigned char *)key, strlen(key));
        nu_json_raw(j, "\":", 2);
    }
}

void nu_json_strn(struct nu_json *j, const char *key, const char *s, size_t n)
{
    nu_json_key(j, key);
    nu_json_raw(j, "\"", 1);
    if (s)
        nu_json__escape(j, (const unsigned char *)s, n);
    nu_json_raw(j, "\"", 1);
}

void nu_json_str(struct nu_json *j, const char *key, const char *s)
{
    nu_json_strn(j, key, s, s ? strlen(s) : 0);
}

void nu_json_hex(struct nu_json *j, const char *key, const uint8_t *b, size_t n)
{
    static const char digits[] = "0123456789abcdef";
    char hex[2 * 64 + 1];
    if (n > 64 || (n && !b)) {
        j->overflow = 1;
        return;
    }
    for (size_t i = 0; i < n; i++) {
        hex[2 * i] = digits[b[i] >> 4];
        hex[2 * i + 1] = digits[b[i] & 15];
    }
    hex[2 * n] = '\0';
    nu_json_str(j, key, hex);
}

void nu_json_u64(struct nu_json *j, const char *key, uint64_t v)
{
    char num[24];
    int n = snprintf(num, sizeof(num), "%llu", (unsigned long long)v);
    nu_json_key(j, key);
    nu_json_raw(j, num, (size_t)n);
}

int nu_json_ok(const struct nu_json *j)
{
    return !j->overflow;
}

/* ---------------------------------------------------------------- check */

/* What cJSON lets through and RFC 8259 does not: invalid UTF-8, a raw
 * control character inside a string (outside, only JSON whitespace), and
 * \u0000, at which cJSON would cut a key (making "a\u0000x" and "a" one key). */
static const char *nu_json__scan(const unsigned char *p, size_t n)
{
    int in_string = 0;
    size_t i = 0;
    while (i < n) {
        size_t len = nu_json__utf8_len(p + i, n - i);
        if (len == 0)
            return "invalid UTF-8";
        if (p[i] < 0x20 && (in_string || (p[i] != '\t' && p[i] != '\n' && p[i] != '\r')))
            return "control character";
        if (in_string && p[i] == '\\') {
            if (n - i >= 6 && memcmp(p + i, "\\u0000", 6) == 0)
                return "\\u0000 in a string";
            i += i + 1 < n ? 2 : 1; /* the escaped character is not a quote or escape */
            continue;
        }
        if (p[i] == '"')
            in_string = !in_string;
        i += len;
    }
    return NULL;
}

/* Duplicate keys at any depth (cJSON keeps both members of a duplicate). */
static int nu_json__has_dup(const cJSON *node, int depth)
{
    if (depth > 64)
        return 1;
    for (const cJSON *a = node ? node->child : NULL; a; a = a->next) {
        if (cJSON_IsObject(node)) {
            for (const cJSON *b = a->next; b; b = b->next) {
                if (a->string && b->string && strcmp(a->string, b->string) == 0)
                    return 1;
            }
        }
        if ((cJSON_IsObject(a) || cJSON_IsArray(a)) && nu_json__has_dup(a, depth + 1))
            return 1;
    }
    return 0;
}

int nu_json_check(const char *text, size_t len, const char **out_why)
{
    const char *why = NULL, *end = NULL;
    int rc = NU_OK;
    cJSON *root = NULL;
    if (!text) {
        rc = NU_ERR_INVALID_ARG;
        why = "no text";
        goto out;
    }
    why = nu_json__scan((const unsigned char *)text, len);
    if (why) {
        rc = NU_ERR_DECODE;
        goto out;
    }
    root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    if (!root) {
        rc = NU_ERR_DECODE;
        why = "not JSON";
        goto out;
    }
    while (end < text + len && (*end == ' ' || *end == '\t' || *end == '\n' || *end == '\r'))
        end++; /* trailing JSON whitespace */
    if (end != text + len) {
        rc = NU_ERR_DECODE;
        why = "text after the object";
    } else if (!cJSON_IsObject(root)) {
        rc = NU_ERR_DECODE;
        why = "not an object";
    } else if (nu_json__has_dup(root, 0)) {
        rc = NU_ERR_DECODE;
        why = "duplicate key";
    }
out:
    cJSON_Delete(root);
    if (out_why)
        *out_why = why;
    return rc;
}
