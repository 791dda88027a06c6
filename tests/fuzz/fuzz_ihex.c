/*
 * fuzz_ihex — libFuzzer target for nu_ihex_parse (Intel HEX from a
 * firmware build, before `nusec firmware sign`).
 *
 * Properties:
 *   - typed errors only; on error the image is zeroed;
 *   - an accepted file gives 1..max_span bytes;
 *   - round trip: the image written back as Intel HEX (04 + 00 records,
 *     05 when there is an entry point; inner all-0xff lines left out as
 *     gaps) parses to the same base, bytes and entry point.
 */
#include "fuzz_common.h"
#include "nu_ihex.h"

#include <string.h>

#define FUZZ_SPAN (1u << 20)

/* Two upper-case hex digits; not sprintf, which made the write-back of a
 * 1 MiB image (a 142-byte input can span that) take ~0.3 s under ASan. */
static size_t fuzz__hex(char *out, uint8_t b)
{
    static const char digits[] = "0123456789ABCDEF";
    out[0] = digits[b >> 4];
    out[1] = digits[b & 15];
    return 2;
}

static size_t fuzz__line(char *out, uint8_t type, uint16_t addr, const uint8_t *d, size_t n)
{
    uint8_t sum = (uint8_t)(n + (addr >> 8) + (addr & 0xff) + type);
    size_t k = 0;
    out[k++] = ':';
    k += fuzz__hex(out + k, (uint8_t)n);
    k += fuzz__hex(out + k, (uint8_t)(addr >> 8));
    k += fuzz__hex(out + k, (uint8_t)addr);
    k += fuzz__hex(out + k, type);
    for (size_t i = 0; i < n; i++) {
        k += fuzz__hex(out + k, d[i]);
        sum = (uint8_t)(sum + d[i]);
    }
    k += fuzz__hex(out + k, (uint8_t)(0x100 - sum));
    out[k++] = '\n';
    return k;
}

/* 1 when d[n] is all 0xff, what nu_ihex_parse puts in gaps between records. */
static int fuzz__blank(const uint8_t *d, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (d[i] != 0xff)
            return 0;
    }
    return 1;
}

/* The image as Intel HEX. Lines of 0xff between the first and the last are
 * left out (the parser fills gaps with 0xff, so the round trip still asks
 * for the same bytes): a 142-byte input can span 1 MiB, and writing and
 * parsing back its gap as 1.2 MB of text made such inputs 200-300 ms each,
 * which held the campaign at 2500 executions/s. */
static char *fuzz__write(const struct nu_ihex_image *img, size_t *out_len)
{
    /* at most 44 characters per data line, one more line per 64 KiB window */
    size_t cap = (img->len / 16 + img->len / 65536 + 4) * 64 + 128;
    char *t = malloc(cap), *p = t;
    uint32_t upper = 0xffffffffu;
    if (!t)
        return NULL;
    for (size_t off = 0; off < img->len;) {
        uint32_t addr = img->base + (uint32_t)off;
        size_t n = img->len - off < 16 ? img->len - off : 16;
        if (n > 0x10000u - (addr & 0xffffu))
            n = 0x10000u - (addr & 0xffffu);
        if (off && off + n < img->len && fuzz__blank(img->data + off, n)) {
            off += n; /* a gap: the parser fills it with 0xff again */
            continue;
        }
        if (addr >> 16 != upper) {
            upper = addr >> 16;
            uint8_t v[2] = {(uint8_t)(upper >> 8), (uint8_t)upper};
            p += fuzz__line(p, 4, 0, v, 2);
        }
        p += fuzz__line(p, 0, (uint16_t)addr, img->data + off, n);
        off += n;
    }
    if (img->has_entry) {
        uint8_t e[4] = {(uint8_t)(img->entry >> 24), (uint8_t)(img->entry >> 16),
                        (uint8_t)(img->entry >> 8), (uint8_t)img->entry};
        p += fuzz__line(p, 5, 0, e, 4);
    }
    p += fuzz__line(p, 1, 0, NULL, 0);
    *out_len = (size_t)(p - t);
    return t;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const int refusals[] = {NU_ERR_TOO_LARGE, NU_ERR_DECODE, NU_ERR_NOT_SUPPORTED, -1};
    struct nu_ihex_image img, again;
    size_t line = 0, len = 0;
    int rc = nu_ihex_parse((const char *)data, size, FUZZ_SPAN, &img, &line);
    if (rc != NU_OK) {
        fuzz_expect("ihex_parse", rc, refusals);
        if (img.data || img.len)
            FUZZ_DIE("refusal left an image");
        return 0;
    }
    if (!img.data || img.len == 0 || img.len > FUZZ_SPAN ||
        (uint64_t)img.base + img.len - 1 > 0xffffffffu)
        FUZZ_DIE("image of %zu bytes at 0x%08x", img.len, (unsigned)img.base);
    char *text = fuzz__write(&img, &len);
    if (text) {
        rc = nu_ihex_parse(text, len, FUZZ_SPAN, &again, &line);
        if (rc != NU_OK || again.base != img.base || again.len != img.len ||
            memcmp(again.data, img.data, img.len) != 0 || again.has_entry != img.has_entry ||
            (img.has_entry && again.entry != img.entry))
            FUZZ_DIE("round trip: %s at line %zu", nu_err_name(rc), line);
        nu_ihex_free(&again);
        free(text);
    }
    nu_ihex_free(&img);
    return 0;
}
