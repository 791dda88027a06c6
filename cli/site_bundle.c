/* site_bundle — the OEM/CM crossing file format (site_bundle.h). */
#include "site_bundle.h"

#include "nu_err.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define SITE_BUNDLE__MAGIC "nusec-site 1"
#define SITE_BUNDLE__FILE_MAX (8u * 1024u * 1024u)

void site_bundle_free(struct site_bundle *b)
{
    for (size_t i = 0; i < b->n; i++) {
        nu_zero(b->e[i].data, b->e[i].len); /* a token may be among them */
        free(b->e[i].data);
    }
    b->n = 0;
}

/* Entry names: [a-z0-9._/-], no "..", no leading '/'. */
static int site_bundle__entry_name_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n >= 64 || s[0] == '/' || strstr(s, ".."))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' ||
              c == '-' || c == '/'))
            return 0;
    }
    return 1;
}

/* Add a copy of data[len] (NUL-terminated in memory too, for text entries). */
int site_bundle_put(struct site_bundle *b, const char *name, const void *data, size_t len)
{
    if (b->n == SITE_BUNDLE_ENTRIES_MAX || !site_bundle__entry_name_ok(name) ||
        len > SITE_BUNDLE_ENTRY_MAX)
        return NU_ERR_INVALID_ARG;
    uint8_t *copy = malloc(len + 1);
    if (!copy)
        return NU_ERR_NOMEM;
    memcpy(copy, data, len);
    copy[len] = '\0';
    struct site_bundle_entry *e = &b->e[b->n++];
    snprintf(e->name, sizeof(e->name), "%s", name);
    e->data = copy;
    e->len = len;
    return NU_OK;
}

int site_bundle_put_str(struct site_bundle *b, const char *name, const char *text)
{
    return site_bundle_put(b, name, text, strlen(text));
}

/* Add a file's bytes as entry `name`; NOT_FOUND is passed on (callers decide). */
int site_bundle_put_file(struct site_bundle *b, const char *name, const char *path)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = nu_file_read(path, SITE_BUNDLE_ENTRY_MAX, &buf, &len);
    if (rc == NU_OK)
        rc = site_bundle_put(b, name, buf, len);
    free(buf);
    return rc;
}

const struct site_bundle_entry *site_bundle_get(const struct site_bundle *b, const char *name)
{
    for (size_t i = 0; i < b->n; i++) {
        if (strcmp(b->e[i].name, name) == 0)
            return &b->e[i];
    }
    return NULL;
}

/* A text entry without newline or NUL inside, trailing newline cut, into out[cap]. */
int site_bundle_get_line(const struct site_bundle *b, const char *name, char *out, size_t cap)
{
    const struct site_bundle_entry *e = site_bundle_get(b, name);
    if (!e)
        return NU_ERR_NOT_FOUND;
    size_t n = e->len;
    while (n && (e->data[n - 1] == '\n' || e->data[n - 1] == '\r'))
        n--;
    if (n >= cap || memchr(e->data, '\n', n) || memchr(e->data, '\0', n))
        return NU_ERR_DECODE;
    memcpy(out, e->data, n);
    out[n] = '\0';
    return NU_OK;
}

int site_bundle_encode(const struct site_bundle *b, uint8_t **out, size_t *out_len)
{
    size_t cap = 64;
    for (size_t i = 0; i < b->n; i++)
        cap += b->e[i].len + 96;
    char *buf = malloc(cap);
    if (!buf)
        return NU_ERR_NOMEM;
    size_t used = (size_t)snprintf(buf, cap, "%s\n", SITE_BUNDLE__MAGIC);
    for (size_t i = 0; i < b->n; i++) {
        used +=
            (size_t)snprintf(buf + used, cap - used, "file %s %zu\n", b->e[i].name, b->e[i].len);
        memcpy(buf + used, b->e[i].data, b->e[i].len);
        used += b->e[i].len;
        buf[used++] = '\n';
    }
    used += (size_t)snprintf(buf + used, cap - used, "end %zu\n", b->n);
    *out = (uint8_t *)buf;
    *out_len = used;
    return NU_OK;
}

int site_bundle_write(const struct site_bundle *b, const char *path, mode_t mode)
{
    uint8_t *buf = NULL;
    size_t used = 0;
    int rc = site_bundle_encode(b, &buf, &used);
    if (rc)
        return rc;
    rc = nu_file_write_atomic(path, buf, used, mode);
    nu_zero(buf, used);
    free(buf);
    return rc;
}

/* Parse an untrusted crossing file; anything unexpected is DECODE. */
int site_bundle_parse(const uint8_t *buf, size_t len, struct site_bundle *b)
{
    size_t off = 0;
    memset(b, 0, sizeof(*b));
    int rc = NU_ERR_DECODE;
    size_t magic = strlen(SITE_BUNDLE__MAGIC);
    if (!buf || len < magic + 1 || memcmp(buf, SITE_BUNDLE__MAGIC "\n", magic + 1) != 0)
        goto out;
    off = magic + 1;
    for (;;) {
        char line[128], name[64];
        const uint8_t *nl = memchr(buf + off, '\n', len - off);
        size_t n = nl ? (size_t)(nl - (buf + off)) : 0, elen = 0;
        if (!nl || n >= sizeof(line))
            goto out;
        memcpy(line, buf + off, n);
        line[n] = '\0';
        off += n + 1;
        size_t count = 0;
        char tail;
        if (sscanf(line, "end %zu%c", &count, &tail) == 1) {
            if (count == b->n && off == len)
                rc = NU_OK;
            goto out;
        }
        if (sscanf(line, "file %63s %zu%c", name, &elen, &tail) != 2 ||
            elen > SITE_BUNDLE_ENTRY_MAX || elen + 1 > len - off || buf[off + elen] != '\n' ||
            site_bundle_get(b, name))
            goto out;
        if (site_bundle_put(b, name, buf + off, elen) != NU_OK)
            goto out;
        off += elen + 1;
    }
out:
    if (rc)
        site_bundle_free(b);
    return rc;
}

int site_bundle_read(const char *path, struct site_bundle *b)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    memset(b, 0, sizeof(*b));
    int rc = nu_file_read(path, SITE_BUNDLE__FILE_MAX, &buf, &len);
    if (rc)
        return rc;
    rc = site_bundle_parse(buf, len, b);
    nu_zero(buf, len);
    free(buf);
    return rc;
}
