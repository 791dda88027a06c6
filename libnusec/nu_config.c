/*
 * nu_config — parser and getters for "key = value" files (format in nu_config.h).
 *
 * The text is copied once and cut in place: keys and values point into that
 * copy, so a configuration is two allocations plus its name.
 */
#include "nu_config.h"

#include "nu_err.h"
#include "nu_util.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

struct nu__cfg_entry {
    const char *key;
    const char *value;
    unsigned line;
};

struct nu_config {
    char *name;
    char *text;
    struct nu__cfg_entry *entries;
    size_t count;
};

static void nu__err(char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void nu__err(char *err, size_t errcap, const char *fmt, ...)
{
    va_list ap;
    if (!err || errcap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap); /* cut, never overflow */
    va_end(ap);
}

static int nu__is_blank(char c)
{
    return c == ' ' || c == '\t';
}

static int nu__is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '.';
}

/* Last word of a key: after the last '.' or '_'. */
static const char *nu__last_word(const char *key)
{
    const char *w = key;
    for (const char *p = key; *p; p++) {
        if (*p == '.' || *p == '_')
            w = p + 1;
    }
    return w;
}

static int nu__is_secret_key(const char *key)
{
    static const char *const words[] = {"pin", "password", "passphrase", "secret", "token"};
    const char *w = nu__last_word(key);
    for (size_t i = 0; i < sizeof(words) / sizeof(words[0]); i++) {
        if (strcmp(w, words[i]) == 0)
            return 1;
    }
    return 0;
}

static const struct nu__cfg_entry *nu__find(const struct nu_config *cfg, const char *key)
{
    if (!cfg || !key)
        return NULL;
    for (size_t i = 0; i < cfg->count; i++) {
        if (strcmp(cfg->entries[i].key, key) == 0)
            return &cfg->entries[i];
    }
    return NULL;
}

/* ---- parsing --------------------------------------------------------------- */

struct nu__parse {
    struct nu_config *cfg;
    unsigned line;
    char *err;
    size_t errcap;
};

static int nu__syntax(struct nu__parse *ps, const char *what)
{
    nu__err(ps->err, ps->errcap, "%s:%u: %s", ps->cfg->name, ps->line, what);
    return NU_ERR_CONFIG;
}

/* Check and record one "key sep value" line, already trimmed, NUL-terminated. */
static int nu__parse_setting(struct nu__parse *ps, char *s)
{
    struct nu_config *cfg = ps->cfg;
    char *p = s, *key_end, *value;
    const struct nu__cfg_entry *dup;

    while (nu__is_key_char(*p))
        p++;
    if (p == s || (*p && !nu__is_blank(*p) && *p != '='))
        return nu__syntax(ps, "invalid key (allowed: a-z 0-9 _ .)");
    if ((size_t)(p - s) > NU_CONFIG_KEY_MAX)
        return nu__syntax(ps, "key too long");
    key_end = p;
    while (nu__is_blank(*p))
        p++;
    if (*p == '=') {
        p++;
        while (nu__is_blank(*p))
            p++;
    }
    value = p;
    *key_end = '\0';
    if (*value == '\0') {
        nu__err(ps->err, ps->errcap, "%s:%u: missing value for '%s'", cfg->name, ps->line, s);
        return NU_ERR_CONFIG;
    }
    for (p = value; *p; p++) {
        unsigned char c = (unsigned char)*p;
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            nu__err(ps->err, ps->errcap, "%s:%u: control character in the value of '%s'", cfg->name,
                    ps->line, s);
            return NU_ERR_CONFIG;
        }
    }
    if (nu__is_secret_key(s)) {
        nu__err(ps->err, ps->errcap,
                "%s:%u: '%s' would put a secret in a configuration file; keep it in its own "
                "0600 file and set '%s_file' to its path",
                cfg->name, ps->line, s, s);
        return NU_ERR_CONFIG;
    }
    dup = nu__find(cfg, s);
    if (dup) {
        nu__err(ps->err, ps->errcap, "%s:%u: duplicate key '%s' (first set on line %u)", cfg->name,
                ps->line, s, dup->line);
        return NU_ERR_CONFIG;
    }
    if (cfg->count >= NU_CONFIG_KEYS_MAX)
        return nu__syntax(ps, "too many settings");
    cfg->entries[cfg->count++] = (struct nu__cfg_entry){s, value, ps->line};
    return NU_OK;
}

/* One raw line (no line end), NUL-terminated in place. */
static int nu__parse_line(struct nu__parse *ps, char *line, size_t len)
{
    char *s = line, *end = line + len;

    if (len > 0 && end[-1] == '\r')
        *--end = '\0';
    if ((size_t)(end - line) > NU_CONFIG_LINE_MAX)
        return nu__syntax(ps, "line too long");
    while (s < end && nu__is_blank(*s))
        s++;
    while (end > s && nu__is_blank(end[-1]))
        *--end = '\0';
    if (s == end || *s == '#')
        return NU_OK;
    return nu__parse_setting(ps, s);
}

static int nu__parse_text(struct nu__parse *ps, char *text, size_t len)
{
    char *p = text, *end = text + len;

    while (p < end) {
        char *nl = memchr(p, '\n', (size_t)(end - p));
        char *line_end = nl ? nl : end;
        int rc;
        ps->line++;
        if (memchr(p, '\0', (size_t)(line_end - p)))
            return nu__syntax(ps, "NUL byte (not a text file?)");
        *line_end = '\0';
        rc = nu__parse_line(ps, p, (size_t)(line_end - p));
        if (rc != NU_OK)
            return rc;
        p = line_end + 1;
    }
    return NU_OK;
}

int nu_config_parse_buffer(const char *name, const char *buf, size_t len,
                           struct nu_config **out_cfg, char *err, size_t errcap)
{
    struct nu_config *cfg = NULL;
    struct nu__parse ps = {0};
    int rc = NU_ERR_NOMEM;

    if (out_cfg)
        *out_cfg = NULL;
    if (!name || !out_cfg || (!buf && len > 0)) {
        nu__err(err, errcap, "nu_config_parse_buffer: invalid arguments");
        return NU_ERR_INVALID_ARG;
    }
    if (len > NU_CONFIG_FILE_MAX) {
        nu__err(err, errcap, "%s: larger than %u bytes", name, NU_CONFIG_FILE_MAX);
        return NU_ERR_TOO_LARGE;
    }
    cfg = calloc(1, sizeof(*cfg));
    if (!cfg)
        goto out;
    cfg->name = strdup(name);
    cfg->text = malloc(len + 1);
    cfg->entries = calloc(NU_CONFIG_KEYS_MAX, sizeof(*cfg->entries));
    if (!cfg->name || !cfg->text || !cfg->entries)
        goto out;
    if (len > 0)
        memcpy(cfg->text, buf, len);
    cfg->text[len] = '\0';
    ps = (struct nu__parse){cfg, 0, err, errcap};
    rc = nu__parse_text(&ps, cfg->text, len);
    if (rc != NU_OK)
        goto out;
    *out_cfg = cfg;
    cfg = NULL;
out:
    if (rc == NU_ERR_NOMEM)
        nu__err(err, errcap, "%s: out of memory", name);
    nu_config_destroy(cfg);
    return rc;
}

int nu_config_load(const char *path, struct nu_config **out_cfg, char *err, size_t errcap)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc;

    if (out_cfg)
        *out_cfg = NULL;
    if (!path || !out_cfg) {
        nu__err(err, errcap, "nu_config_load: invalid arguments");
        return NU_ERR_INVALID_ARG;
    }
    rc = nu_file_read(path, NU_CONFIG_FILE_MAX, &buf, &len);
    if (rc == NU_ERR_TOO_LARGE)
        nu__err(err, errcap, "%s: larger than %u bytes", path, NU_CONFIG_FILE_MAX);
    else if (rc != NU_OK)
        nu__err(err, errcap, "%s: %s", path, nu_err_str(rc));
    if (rc != NU_OK)
        goto out;
    rc = nu_config_parse_buffer(path, (const char *)buf, len, out_cfg, err, errcap);
out:
    free(buf);
    return rc;
}

void nu_config_destroy(struct nu_config *cfg)
{
    if (!cfg)
        return;
    free(cfg->entries);
    free(cfg->text);
    free(cfg->name);
    free(cfg);
}

/* ---- lookups --------------------------------------------------------------- */

const char *nu_config_name(const struct nu_config *cfg)
{
    return cfg ? cfg->name : NULL;
}

size_t nu_config_count(const struct nu_config *cfg)
{
    return cfg ? cfg->count : 0;
}

int nu_config_entry(const struct nu_config *cfg, size_t i, const char **out_key,
                    const char **out_value, unsigned *out_line)
{
    if (!cfg || i >= cfg->count)
        return NU_ERR_NOT_FOUND;
    if (out_key)
        *out_key = cfg->entries[i].key;
    if (out_value)
        *out_value = cfg->entries[i].value;
    if (out_line)
        *out_line = cfg->entries[i].line;
    return NU_OK;
}

int nu_config_has(const struct nu_config *cfg, const char *key)
{
    return nu__find(cfg, key) != NULL;
}

unsigned nu_config_line(const struct nu_config *cfg, const char *key)
{
    const struct nu__cfg_entry *e = nu__find(cfg, key);
    return e ? e->line : 0;
}

const char *nu_config_get_str(const struct nu_config *cfg, const char *key, const char *def)
{
    const struct nu__cfg_entry *e = nu__find(cfg, key);
    return e ? e->value : def;
}

/* Report a value that does not fit; the value is echoed cut to 64 bytes. */
static int nu__bad_value(const struct nu_config *cfg, const struct nu__cfg_entry *e,
                         const char *expect, char *err, size_t errcap)
{
    nu__err(err, errcap, "%s:%u: '%s' must be %s (got '%.64s')", cfg->name, e->line, e->key, expect,
            e->value);
    return NU_ERR_CONFIG;
}

/* Strict decimal: optional '-', digits only, no overflow. */
static int nu__parse_int(const char *s, int64_t *out)
{
    const char *p = s[0] == '-' ? s + 1 : s;
    char *end = NULL;
    long long v;

    if (*p == '\0')
        return NU_ERR_INVALID_ARG;
    for (; *p; p++) {
        if (*p < '0' || *p > '9')
            return NU_ERR_INVALID_ARG;
    }
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0')
        return NU_ERR_INVALID_ARG;
    *out = (int64_t)v;
    return NU_OK;
}

int nu_config_get_int(const struct nu_config *cfg, const char *key, int64_t def, int64_t min,
                      int64_t max, int64_t *out, char *err, size_t errcap)
{
    const struct nu__cfg_entry *e;
    char expect[96];
    int64_t v;

    if (!cfg || !key || !out || min > max)
        return NU_ERR_INVALID_ARG;
    e = nu__find(cfg, key);
    if (!e) {
        *out = def;
        return NU_OK;
    }
    snprintf(expect, sizeof(expect), "an integer from %" PRId64 " to %" PRId64, min, max);
    if (nu__parse_int(e->value, &v) != NU_OK || v < min || v > max)
        return nu__bad_value(cfg, e, expect, err, errcap);
    *out = v;
    return NU_OK;
}

int nu_config_get_bool(const struct nu_config *cfg, const char *key, int def, int *out, char *err,
                       size_t errcap)
{
    static const char *const yes[] = {"yes", "true", "on", "1"};
    static const char *const no[] = {"no", "false", "off", "0"};
    const struct nu__cfg_entry *e;

    if (!cfg || !key || !out)
        return NU_ERR_INVALID_ARG;
    e = nu__find(cfg, key);
    if (!e) {
        *out = def ? 1 : 0;
        return NU_OK;
    }
    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(e->value, yes[i]) == 0 || strcasecmp(e->value, no[i]) == 0) {
            *out = strcasecmp(e->value, yes[i]) == 0;
            return NU_OK;
        }
    }
    return nu__bad_value(cfg, e, "yes/no, true/false, on/off or 1/0", err, errcap);
}

int nu_config_get_duration(const struct nu_config *cfg, const char *key, uint64_t def_s,
                           uint64_t min_s, uint64_t max_s, uint64_t *out_s, char *err,
                           size_t errcap)
{
    const struct nu__cfg_entry *e;
    char expect[128];
    uint64_t v;

    if (!cfg || !key || !out_s || min_s > max_s)
        return NU_ERR_INVALID_ARG;
    e = nu__find(cfg, key);
    if (!e) {
        *out_s = def_s;
        return NU_OK;
    }
    snprintf(expect, sizeof(expect),
             "a duration (90s, 15m, 12h, 30d) from %" PRIu64 "s to %" PRIu64 "s", min_s, max_s);
    /* nu_duration_parse() lets strtoull skip blanks and a '+': be stricter. */
    if (e->value[0] < '0' || e->value[0] > '9' || nu_duration_parse(e->value, &v) != NU_OK ||
        v < min_s || v > max_s)
        return nu__bad_value(cfg, e, expect, err, errcap);
    *out_s = v;
    return NU_OK;
}

static int nu__allowed(const char *key, const char *const allowed[])
{
    for (size_t i = 0; allowed[i]; i++) {
        size_t n = strlen(allowed[i]);
        if (strcmp(key, allowed[i]) == 0)
            return 1;
        /* "prefix.*" matches "prefix.anything" */
        if (n >= 2 && strcmp(allowed[i] + n - 2, ".*") == 0 &&
            strncmp(key, allowed[i], n - 1) == 0 && key[n - 1] != '\0')
            return 1;
    }
    return 0;
}

int nu_config_check_keys(const struct nu_config *cfg, const char *const allowed[],
                         const char **out_bad_key, char *err, size_t errcap)
{
    if (out_bad_key)
        *out_bad_key = NULL;
    if (!cfg || !allowed)
        return NU_ERR_INVALID_ARG;
    for (size_t i = 0; i < cfg->count; i++) {
        const struct nu__cfg_entry *e = &cfg->entries[i];
        if (nu__allowed(e->key, allowed))
            continue;
        if (out_bad_key)
            *out_bad_key = e->key;
        nu__err(err, errcap, "%s:%u: unknown key '%s'", cfg->name, e->line, e->key);
        return NU_ERR_CONFIG;
    }
    return NU_OK;
}
