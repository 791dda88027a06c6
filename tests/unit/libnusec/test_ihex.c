/*
 * nu_ihex: valid files (records built here with their own checksum code, and
 * files written by GNU objcopy) give the exact binary, base and entry point;
 * every malformation gives a typed error and the line at fault; any
 * single-character change to a valid file is refused; sizes are bounded.
 */
#include "nu_err.h"
#include "nu_ihex.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char tmp[256];

static int setup(void)
{
    return nu_test_tmpdir("ihex", tmp, sizeof(tmp));
}

static int teardown(void)
{
    nu_test_rmtree(tmp);
    return 0;
}

/* One record line ":LLAAAATT..CC\n" appended to out. */
static void rec(char *out, size_t cap, unsigned type, unsigned addr, const uint8_t *d, size_t n)
{
    uint8_t sum = (uint8_t)(n + (addr >> 8) + addr + type);
    size_t o = strlen(out);
    o += (size_t)snprintf(out + o, cap - o, ":%02X%04X%02X", (unsigned)n, addr & 0xffff, type);
    for (size_t i = 0; i < n; i++) {
        o += (size_t)snprintf(out + o, cap - o, "%02X", d[i]);
        sum = (uint8_t)(sum + d[i]);
    }
    snprintf(out + o, cap - o, "%02X\n", (uint8_t)(0x100 - sum) & 0xff);
}

static void rec_u16(char *out, size_t cap, unsigned type, unsigned v)
{
    uint8_t d[2] = {(uint8_t)(v >> 8), (uint8_t)v};
    rec(out, cap, type, 0, d, 2);
}

#define EOF_LINE ":00000001FF\n"

static int parse(const char *text, struct nu_ihex_image *img, size_t *line)
{
    return nu_ihex_parse(text, strlen(text), 0, img, line);
}

static void test_simple_and_gaps(void)
{
    char t[4096] = "";
    uint8_t a[4] = {1, 2, 3, 4}, b[2] = {0xaa, 0xbb};
    rec_u16(t, sizeof(t), 4, 0x0800);   /* base 0x08000000 */
    rec(t, sizeof(t), 0, 0x0100, a, 4); /* 0x08000100 */
    rec(t, sizeof(t), 0, 0x0108, b, 2); /* gap of 4 bytes */
    strcat(t, EOF_LINE);
    struct nu_ihex_image img;
    size_t line = 99;
    CU_ASSERT_EQUAL_FATAL(parse(t, &img, &line), NU_OK);
    CU_ASSERT_EQUAL(line, 0);
    CU_ASSERT_EQUAL(img.base, 0x08000100u);
    CU_ASSERT_EQUAL(img.len, 10);
    const uint8_t want[10] = {1, 2, 3, 4, 0xff, 0xff, 0xff, 0xff, 0xaa, 0xbb};
    CU_ASSERT_EQUAL(memcmp(img.data, want, 10), 0);
    CU_ASSERT_FALSE(img.has_entry);
    nu_ihex_free(&img);
    CU_ASSERT_PTR_NULL(img.data);
    CU_ASSERT_EQUAL(img.len, 0);
    nu_ihex_free(&img); /* twice is fine */
    nu_ihex_free(NULL);
}

/* Records in any order, across two linear segments, with a start address. */
static void test_unordered_segments_entry(void)
{
    char t[4096] = "";
    uint8_t hi[3] = {7, 8, 9}, lo[2] = {5, 6};
    uint8_t entry[4] = {0x08, 0x01, 0x00, 0x41};
    rec_u16(t, sizeof(t), 4, 0x0801);
    rec(t, sizeof(t), 0, 0x0000, hi, 3); /* 0x08010000 */
    rec_u16(t, sizeof(t), 4, 0x0800);
    rec(t, sizeof(t), 0, 0xfffe, lo, 2); /* 0x0800fffe, ends exactly at the window */
    rec(t, sizeof(t), 5, 0, entry, 4);
    strcat(t, EOF_LINE);
    struct nu_ihex_image img;
    CU_ASSERT_EQUAL_FATAL(parse(t, &img, NULL), NU_OK);
    CU_ASSERT_EQUAL(img.base, 0x0800fffeu);
    CU_ASSERT_EQUAL(img.len, 5);
    const uint8_t want[5] = {5, 6, 7, 8, 9};
    CU_ASSERT_EQUAL(memcmp(img.data, want, 5), 0);
    CU_ASSERT_TRUE(img.has_entry);
    CU_ASSERT_EQUAL(img.entry, 0x08010041u);
    nu_ihex_free(&img);
}

static void test_extended_segment_address(void)
{
    char t[4096] = "";
    uint8_t d[2] = {0x11, 0x22};
    rec_u16(t, sizeof(t), 2, 0x1234); /* base 0x12340 */
    rec(t, sizeof(t), 0, 0x0010, d, 2);
    strcat(t, EOF_LINE);
    struct nu_ihex_image img;
    CU_ASSERT_EQUAL_FATAL(parse(t, &img, NULL), NU_OK);
    CU_ASSERT_EQUAL(img.base, 0x12350u);
    CU_ASSERT_EQUAL(img.len, 2);
    nu_ihex_free(&img);
}

/* CRLF, lower-case digits, no final newline, blank lines after EOF. */
static void test_line_end_variants(void)
{
    const char *crlf = ":0400100001020304E2\r\n:00000001FF\r\n";
    const char *lower = ":04001000deadbeefb4\n:00000001ff";
    const char *trail = ":0400100001020304E2\n:00000001FF\n\n\r\n";
    struct nu_ihex_image img;
    CU_ASSERT_EQUAL_FATAL(parse(crlf, &img, NULL), NU_OK);
    CU_ASSERT(img.base == 0x10 && img.len == 4 && img.data[3] == 4);
    nu_ihex_free(&img);
    CU_ASSERT_EQUAL_FATAL(parse(lower, &img, NULL), NU_OK);
    CU_ASSERT(img.len == 4 && img.data[0] == 0xde && img.data[3] == 0xef);
    nu_ihex_free(&img);
    CU_ASSERT_EQUAL(parse(trail, &img, NULL), NU_OK);
    nu_ihex_free(&img);
}

/* GNU objcopy writes the file; we must read back the exact bytes. */
static void test_objcopy_roundtrip(void)
{
    if (nu_test_sh("command -v objcopy >/dev/null") != 0) {
        printf("\n    [skipped] objcopy missing\n");
        return;
    }
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("cd '%s' && head -c 150000 /dev/urandom > fw.bin && objcopy -I binary -O "
                   "ihex --change-addresses 0x0800fff0 fw.bin fw.hex",
                   tmp),
        0);
    char path[512];
    uint8_t *bin = NULL;
    size_t bin_len = 0, line = 0;
    nu_path_fmt(path, sizeof(path), "%s/fw.bin", tmp);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 1u << 20, &bin, &bin_len), NU_OK);
    nu_path_fmt(path, sizeof(path), "%s/fw.hex", tmp);
    struct nu_ihex_image img;
    CU_ASSERT_EQUAL_FATAL(nu_ihex_load(path, 1u << 20, &img, &line), NU_OK);
    CU_ASSERT_EQUAL(img.base, 0x0800fff0u);
    CU_ASSERT_EQUAL(img.len, bin_len);
    CU_ASSERT_EQUAL(memcmp(img.data, bin, bin_len), 0);
    CU_ASSERT_TRUE(img.has_entry); /* objcopy writes a start linear address record */
    CU_ASSERT_EQUAL(img.entry, 0x0800fff0u);
    nu_ihex_free(&img);
    /* the same file with a span limit below its size */
    CU_ASSERT_EQUAL(nu_ihex_load(path, 100000, &img, &line), NU_ERR_TOO_LARGE);
    CU_ASSERT_PTR_NULL(img.data);
    free(bin);
    nu_path_fmt(path, sizeof(path), "%s/none.hex", tmp);
    CU_ASSERT_EQUAL(nu_ihex_load(path, 0, &img, &line), NU_ERR_NOT_FOUND);
}

struct bad_case {
    const char *what;
    const char *text;
    int want;
    size_t line;
};

static void test_malformed(void)
{
    static const struct bad_case cases[] = {
        {"bad checksum", ":0400100001020304E3\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"odd digit count", ":0400100001020304E\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"non-hex digit", ":04001000010203G4E2\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"space inside", ":04001000 01020304E2\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"trailing space", ":0400100001020304E2 \n:00000001FF\n", NU_ERR_DECODE, 1},
        {"NUL inside",
         ":04001000\0"
         "1020304E2\n:00000001FF\n",
         NU_ERR_DECODE, 1},
        {"no colon", "0400100001020304E2\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"blank line between", ":0400100001020304E2\n\n:00000001FF\n", NU_ERR_DECODE, 2},
        {"length field too big", ":0500100001020304E1\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"length field too small", ":0300100001020304E3\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"record too short", ":00000001\n", NU_ERR_DECODE, 1},
        {"missing EOF", ":0400100001020304E2\n", NU_ERR_DECODE, 0},
        {"empty file", "", NU_ERR_DECODE, 0},
        {"only EOF (no data)", ":00000001FF\n", NU_ERR_DECODE, 0},
        {"data after EOF", ":0400100001020304E2\n:00000001FF\n:0400100001020304E2\n", NU_ERR_DECODE,
         3},
        {"EOF with data", ":0400100001020304E2\n:01000001AA54\n", NU_ERR_DECODE, 2},
        {"EOF with address", ":0400100001020304E2\n:00001001EF\n", NU_ERR_DECODE, 2},
        {"overlap, same address", ":0400100001020304E2\n:0400100001020304E2\n:00000001FF\n",
         NU_ERR_DECODE, 2},
        {"overlap, partial", ":0400100001020304E2\n:020012000506E1\n:00000001FF\n", NU_ERR_DECODE,
         2},
        {"crosses 64 KiB window", ":04FFFE0001020304F5\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"type 03 start segment", ":0400000300001000E9\n:0400100001020304E2\n:00000001FF\n",
         NU_ERR_NOT_SUPPORTED, 1},
        {"type 06", ":0400100601020304DC\n:00000001FF\n", NU_ERR_DECODE, 1},
        {"type 04 with 1 byte", ":0100000408F3\n:0400100001020304E2\n:00000001FF\n", NU_ERR_DECODE,
         1},
        {"type 04 with address", ":020010040800E2\n:0400100001020304E2\n:00000001FF\n",
         NU_ERR_DECODE, 1},
        {"type 02 with 3 bytes", ":03000002123400B5\n:0400100001020304E2\n:00000001FF\n",
         NU_ERR_DECODE, 1},
        {"type 05 twice",
         ":0400000508000000EF\n:0400000508000000EF\n:0400100001020304E2\n:00000001FF\n",
         NU_ERR_DECODE, 2},
        {"type 05 with 2 bytes", ":020000050800F1\n:0400100001020304E2\n:00000001FF\n",
         NU_ERR_DECODE, 1},
        {"lone CR line end", ":0400100001020304E2\r:00000001FF\r", NU_ERR_DECODE, 1},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct nu_ihex_image img;
        memset(&img, 0x5a, sizeof(img));
        size_t line = 12345;
        /* strlen would stop at the embedded NUL: measure to the double newline's end */
        size_t len = strlen(cases[i].text);
        if (strcmp(cases[i].what, "NUL inside") == 0)
            len = 9 + strlen(cases[i].text + 9) + 1;
        int rc = nu_ihex_parse(cases[i].text, len, 0, &img, &line);
        if (rc != cases[i].want || line != cases[i].line)
            printf("\n    %s: %s line %zu\n", cases[i].what, nu_err_name(rc), line);
        CU_ASSERT_EQUAL(rc, cases[i].want);
        CU_ASSERT_EQUAL(line, cases[i].line);
        CU_ASSERT_PTR_NULL(img.data); /* zeroed on failure */
        CU_ASSERT_EQUAL(img.len, 0);
        nu_ihex_free(&img);
    }
}

/* Each character of a valid file replaced in several ways: never accepted
 * (a changed digit breaks the checksum, anything else the syntax). */
static void test_every_char_changed(void)
{
    char t[2048] = "";
    uint8_t d[16];
    for (int i = 0; i < 16; i++)
        d[i] = (uint8_t)(i * 17);
    rec_u16(t, sizeof(t), 4, 0x1000);
    rec(t, sizeof(t), 0, 0x0000, d, 16);
    rec(t, sizeof(t), 0, 0x0010, d, 8);
    strcat(t, EOF_LINE);
    size_t n = strlen(t);
    static const char subs[] = {'0', '7', 'F', 'a', 'x', ':', '\n', ' '};
    size_t tried = 0, refused = 0;
    for (size_t i = 0; i + 1 < n; i++) { /* the final newline is optional */
        for (size_t s = 0; s < sizeof(subs); s++) {
            if (t[i] == subs[s] || (t[i] >= 'A' && t[i] <= 'F' && subs[s] == t[i] + 32))
                continue; /* same character, or the same digit in lower case */
            char c = t[i];
            t[i] = subs[s];
            struct nu_ihex_image img;
            int rc = nu_ihex_parse(t, n, 0, &img, NULL);
            t[i] = c;
            tried++;
            refused += rc != NU_OK;
            if (rc == NU_OK) {
                printf("\n    accepted with char %zu -> '%c'\n", i, subs[s]);
                nu_ihex_free(&img);
            }
            CU_ASSERT(rc == NU_ERR_DECODE || rc == NU_ERR_NOT_SUPPORTED);
        }
    }
    CU_ASSERT_EQUAL(refused, tried);
    /* and every truncation before the EOF record completes */
    for (size_t cut = 0; cut < n - 1; cut++) {
        struct nu_ihex_image img;
        int rc = nu_ihex_parse(t, cut, 0, &img, NULL);
        CU_ASSERT_EQUAL(rc, NU_ERR_DECODE);
        if (rc == NU_OK)
            nu_ihex_free(&img);
    }
}

static void test_bounds_and_args(void)
{
    char t[4096] = "";
    uint8_t d[1] = {1};
    rec(t, sizeof(t), 0, 0x0000, d, 1);
    rec_u16(t, sizeof(t), 4, 0x0010); /* 1 MiB further */
    rec(t, sizeof(t), 0, 0x0000, d, 1);
    strcat(t, EOF_LINE);
    struct nu_ihex_image img;
    size_t line = 7;
    CU_ASSERT_EQUAL(nu_ihex_parse(t, strlen(t), 65536, &img, &line), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(line, 0);
    CU_ASSERT_EQUAL_FATAL(nu_ihex_parse(t, strlen(t), 0x100001, &img, NULL), NU_OK);
    CU_ASSERT_EQUAL(img.len, 0x100001);
    CU_ASSERT(img.data[0] == 1 && img.data[1] == 0xff && img.data[0x100000] == 1);
    nu_ihex_free(&img);
    /* highest addresses: ends exactly at 4 GiB */
    char top[256] = "";
    uint8_t two[2] = {0xde, 0xad};
    rec_u16(top, sizeof(top), 4, 0xffff);
    rec(top, sizeof(top), 0, 0xfffe, two, 2);
    strcat(top, EOF_LINE);
    CU_ASSERT_EQUAL_FATAL(parse(top, &img, NULL), NU_OK);
    CU_ASSERT(img.base == 0xfffffffeu && img.len == 2);
    nu_ihex_free(&img);
    /* text larger than 16 * span + 64 KiB is refused before it is parsed */
    size_t big = 16 * 1024 + 64 * 1024 + 1;
    char *junk = malloc(big);
    CU_ASSERT_PTR_NOT_NULL_FATAL(junk);
    memset(junk, ':', big);
    CU_ASSERT_EQUAL(nu_ihex_parse(junk, big, 1024, &img, NULL), NU_ERR_TOO_LARGE);
    free(junk);
    CU_ASSERT_EQUAL(nu_ihex_parse(NULL, 5, 0, &img, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_ihex_parse(t, strlen(t), 0, NULL, NULL), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_ihex_load(NULL, 0, &img, NULL), NU_ERR_INVALID_ARG);
}

/* Random bytes and random line soups: typed errors, no crash (ASan watches). */
static void test_garbage(void)
{
    static const char alphabet[] = ":0123456789ABCDEF\n\r";
    char buf[2048];
    uint32_t seed = 12345;
    for (int round = 0; round < 2000; round++) {
        size_t n = (size_t)(round * 7) % sizeof(buf);
        for (size_t i = 0; i < n; i++) {
            seed = seed * 1103515245u + 12345u;
            buf[i] =
                round % 2 ? alphabet[(seed >> 16) % (sizeof(alphabet) - 1)] : (char)(seed >> 16);
        }
        struct nu_ihex_image img;
        int rc = nu_ihex_parse(buf, n, 4096, &img, NULL);
        CU_ASSERT(rc == NU_ERR_DECODE || rc == NU_ERR_NOT_SUPPORTED || rc == NU_ERR_TOO_LARGE ||
                  rc == NU_OK);
        nu_ihex_free(&img);
    }
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"simple file with a gap (0xFF fill)", test_simple_and_gaps},
        {"unordered records, two segments, entry", test_unordered_segments_entry},
        {"extended segment address (02)", test_extended_segment_address},
        {"CRLF, lower case, final newline optional", test_line_end_variants},
        {"objcopy-written file reads back exactly", test_objcopy_roundtrip},
        {"each malformation: typed error + line", test_malformed},
        {"every char changed / truncated: refused", test_every_char_changed},
        {"span and text bounds, 4 GiB top, args", test_bounds_and_args},
        {"garbage", test_garbage},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_ihex", setup, teardown, cases}, {NULL}};
    return nu_test_run("test_ihex", suites);
}
