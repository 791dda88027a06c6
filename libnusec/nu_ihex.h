/*
 * nu_ihex — Intel HEX reader: untrusted text in, one flat binary out (what
 * firmware build systems hand the OEM before `nusec firmware sign`).
 *
 * Accepted (strictly):
 *   ":" LL AAAA TT DD..DD CC per line, hex digits of either case, line ends
 *   "\n" or "\r\n"; LL data bytes; CC makes the sum of all bytes 0 mod 256.
 *   Records 00 data, 01 end of file (must be present, LL=0), 02 extended
 *   segment address (base = v * 16), 04 extended linear address
 *   (base = v << 16), 05 start linear address (entry point, at most once).
 *   02/04/05 need AAAA = 0000 and LL = 2/2/4. A data record must stay inside
 *   its 64 KiB window (AAAA + LL <= 0x10000): the wrap-around of the old
 *   segment rules is never what a firmware build meant.
 * Refused: blank or non-':' lines, odd digit counts, non-hex characters,
 *   length field not matching the line, bad checksums, overlapping data,
 *   missing EOF, anything but line ends after EOF, record 03 (NOT_SUPPORTED:
 *   x86 CS:IP start address) and types above 05, files with no data.
 * Gaps between records are filled with 0xFF (erased flash).
 */
#ifndef NU_IHEX_H
#define NU_IHEX_H

#include <stddef.h>
#include <stdint.h>

/* Hard cap on the binary span (lowest to highest address) any call accepts. */
#define NU_IHEX_MAX_SPAN (64u * 1024u * 1024u)

struct nu_ihex_image {
    uint8_t *data; /* heap, len bytes: memory from base to the highest address written */
    size_t len;
    uint32_t base;  /* address of data[0] (lowest address written) */
    uint32_t entry; /* record 05 value, valid when has_entry */
    int has_entry;
};

/*
 * Parse text[text_len] (need not be NUL-terminated). max_span bounds the
 * output size (0 or > NU_IHEX_MAX_SPAN means NU_IHEX_MAX_SPAN); the text may
 * be at most 16 * max_span + 64 KiB. On success *out is filled and owned by
 * the caller (nu_ihex_free). On failure *out is zeroed and, when
 * out_err_line is not NULL, it receives the 1-based line at fault (0 when
 * the fault is not one line's: missing EOF, overlap, size).
 * Errors: INVALID_ARG, TOO_LARGE (text or span over the bound), DECODE,
 * NOT_SUPPORTED (record 03), NOMEM.
 */
int nu_ihex_parse(const char *text, size_t text_len, size_t max_span, struct nu_ihex_image *out,
                  size_t *out_err_line);

/* nu_ihex_parse() on a file read with the same text bound.
 * Errors: those of nu_ihex_parse() and nu_file_read() (NOT_FOUND, PERMISSION, IO). */
int nu_ihex_load(const char *path, size_t max_span, struct nu_ihex_image *out,
                 size_t *out_err_line);

/* Free the data and zero *img (NULL and zeroed images are fine). */
void nu_ihex_free(struct nu_ihex_image *img);

#endif
