/*
 * fuzz_config — libFuzzer target for nu_config_parse_buffer() and the getters.
 *
 * Properties: a refusal is CONFIG or TOO_LARGE with a "NAME:" message; an
 * accepted buffer yields keys of [a-z0-9_.] only, every getter answers OK or
 * CONFIG, and writing the settings back as "key = value" lines parses to the
 * same settings.
 */
#include "nu_config.h"
#include "nu_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fuzz__die(const char *what, const char *msg)
{
    fprintf(stderr, "fuzz_config: %s: %s\n", what, msg ? msg : "-");
    abort();
}

static void fuzz__getters(const struct nu_config *cfg, const char *key)
{
    char err[256];
    int64_t i;
    int b;
    uint64_t d;
    int rc = nu_config_get_int(cfg, key, 0, -1000, 1000, &i, err, sizeof(err));
    if (rc != NU_OK && rc != NU_ERR_CONFIG)
        fuzz__die("get_int", err);
    rc = nu_config_get_bool(cfg, key, 0, &b, err, sizeof(err));
    if (rc != NU_OK && rc != NU_ERR_CONFIG)
        fuzz__die("get_bool", err);
    rc = nu_config_get_duration(cfg, key, 0, 0, 86400, &d, err, sizeof(err));
    if (rc != NU_OK && rc != NU_ERR_CONFIG)
        fuzz__die("get_duration", err);
}

/* Write the settings back and parse them again: same keys, same values.
 * The text buffer is static: a 128 KiB malloc per input went to ASan's
 * mmap allocator (map, fill, unmap) and was half of this target's time. */
static void fuzz__reparse(const struct nu_config *cfg)
{
    static char text[2 * NU_CONFIG_FILE_MAX];
    size_t cap = sizeof(text), len = 0;
    char err[256];
    struct nu_config *again = NULL;
    const char *k, *v;

    for (size_t i = 0; nu_config_entry(cfg, i, &k, &v, NULL) == NU_OK; i++) {
        for (const char *p = k; *p; p++) {
            if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '.'))
                fuzz__die("bad key accepted", k);
        }
        len += (size_t)snprintf(text + len, cap - len, "%s = %s\n", k, v);
    }
    if (len <= NU_CONFIG_FILE_MAX) {
        if (nu_config_parse_buffer("again", text, len, &again, err, sizeof(err)) != NU_OK)
            fuzz__die("reparse refused", err);
        if (nu_config_count(again) != nu_config_count(cfg))
            fuzz__die("reparse count differs", NULL);
        for (size_t i = 0; nu_config_entry(cfg, i, &k, &v, NULL) == NU_OK; i++) {
            const char *v2 = nu_config_get_str(again, k, NULL);
            if (!v2 || strcmp(v, v2) != 0)
                fuzz__die("reparse value differs", k);
        }
        nu_config_destroy(again);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const char *const allowed[] = {"listener.port", "log.level", "programmer.*", NULL};
    struct nu_config *cfg = NULL;
    char err[256] = "";
    const char *key = NULL;
    int rc = nu_config_parse_buffer("fuzz.conf", (const char *)data, size, &cfg, err, sizeof(err));

    if (rc != NU_OK) {
        if (cfg || (rc != NU_ERR_CONFIG && rc != NU_ERR_TOO_LARGE) ||
            strncmp(err, "fuzz.conf:", 10) != 0)
            fuzz__die("bad refusal", err);
        return 0;
    }
    for (size_t i = 0; nu_config_entry(cfg, i, &key, NULL, NULL) == NU_OK; i++)
        fuzz__getters(cfg, key);
    fuzz__getters(cfg, "absent.key");
    rc = nu_config_check_keys(cfg, allowed, &key, err, sizeof(err));
    if (rc != NU_OK && (rc != NU_ERR_CONFIG || !key))
        fuzz__die("check_keys", err);
    fuzz__reparse(cfg);
    nu_config_destroy(cfg);
    return 0;
}
