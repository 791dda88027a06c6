/*
 * fuzz_site_bundle — libFuzzer target for site_bundle_parse(), the parser of
 * the file that crosses between the OEM and a CM site (enrolment, join
 * request, site bundle: cli/site_bundle.h). The OEM reads the CM's join
 * request and the CM reads the OEM's bundle, so either side's bytes are
 * outside input to the other.
 *
 * Properties: a refusal is DECODE and leaves the bundle empty; an accepted
 * file has at most SITE_BUNDLE_ENTRIES_MAX entries with unique names of
 * [a-z0-9._/-] (no "..", no leading '/'), each inside the input and
 * NUL-terminated in memory; one-line reads answer OK, NOT_FOUND or DECODE and
 * never return a newline; encoding the bundle and parsing it again gives the
 * same entries, and that encoding is a fixed point.
 */
#include "site_bundle.h"

#include "nu_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fuzz__die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_site_bundle: %s: %s\n", what, detail ? detail : "-");
    abort();
}

static void fuzz__names(const struct site_bundle *b)
{
    if (b->n > SITE_BUNDLE_ENTRIES_MAX)
        fuzz__die("too many entries", NULL);
    for (size_t i = 0; i < b->n; i++) {
        const char *s = b->e[i].name;
        size_t n = strlen(s);
        if (n == 0 || n >= sizeof(b->e[i].name) || s[0] == '/' || strstr(s, ".."))
            fuzz__die("bad entry name accepted", s);
        if (strspn(s, "abcdefghijklmnopqrstuvwxyz0123456789._/-") != n)
            fuzz__die("bad character in an entry name", s);
        if (b->e[i].data[b->e[i].len] != '\0')
            fuzz__die("entry not NUL-terminated", s);
        if (site_bundle_get(b, s) != &b->e[i])
            fuzz__die("duplicate entry name", s);
        char line[256];
        int rc = site_bundle_get_line(b, s, line, sizeof(line));
        if (rc != NU_OK && rc != NU_ERR_DECODE)
            fuzz__die("get_line: untyped refusal", nu_err_name(rc));
        if (rc == NU_OK && strchr(line, '\n'))
            fuzz__die("get_line returned a newline", s);
    }
}

static void fuzz__same(const struct site_bundle *a, const struct site_bundle *b)
{
    if (a->n != b->n)
        fuzz__die("round trip: entry count differs", NULL);
    for (size_t i = 0; i < a->n; i++) {
        if (strcmp(a->e[i].name, b->e[i].name) != 0 || a->e[i].len != b->e[i].len ||
            memcmp(a->e[i].data, b->e[i].data, a->e[i].len) != 0)
            fuzz__die("round trip: entry differs", a->e[i].name);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct site_bundle b, again, third;
    uint8_t *enc = NULL, *enc2 = NULL;
    size_t enc_len = 0, enc2_len = 0;
    int rc = site_bundle_parse(data, size, &b);
    if (rc != NU_OK) {
        if (rc != NU_ERR_DECODE || b.n != 0)
            fuzz__die("bad refusal", nu_err_name(rc));
        return 0;
    }
    fuzz__names(&b);
    if (site_bundle_get_line(&b, "Absent" /* upper case: never an entry name */, (char[8]){0}, 8) !=
        NU_ERR_NOT_FOUND)
        fuzz__die("get_line of an absent entry", NULL);
    if (site_bundle_encode(&b, &enc, &enc_len) != NU_OK)
        fuzz__die("encode failed", NULL);
    if (site_bundle_parse(enc, enc_len, &again) != NU_OK)
        fuzz__die("own encoding refused", NULL);
    fuzz__same(&b, &again);
    if (site_bundle_encode(&again, &enc2, &enc2_len) != NU_OK)
        fuzz__die("encode failed", NULL);
    if (enc_len != enc2_len || memcmp(enc, enc2, enc_len) != 0)
        fuzz__die("encoding is not a fixed point", NULL);
    if (site_bundle_parse(enc2, enc2_len, &third) != NU_OK)
        fuzz__die("own encoding refused", NULL);
    site_bundle_free(&third);
    free(enc2);
    free(enc);
    site_bundle_free(&again);
    site_bundle_free(&b);
    return 0;
}
