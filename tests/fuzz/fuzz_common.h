/*
 * fuzz_common — small helpers shared by the libFuzzer targets: a failed
 * property aborts (libFuzzer then saves the input as a crash), and a cursor
 * that cuts the fuzzer's bytes into choices and length-prefixed records so
 * one input can drive a sequence of answers.
 */
#ifndef FUZZ_COMMON_H
#define FUZZ_COMMON_H

#include "nu_err.h"

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);
int LLVMFuzzerInitialize(int *argc, char ***argv);

#define FUZZ_DIE(...)                                                                              \
    do {                                                                                           \
        fprintf(stderr, "%s: ", __FILE__);                                                         \
        fprintf(stderr, __VA_ARGS__);                                                              \
        fprintf(stderr, "\n");                                                                     \
        abort();                                                                                   \
    } while (0)

/* rc must be one of the listed codes (terminated by a negative value). */
static inline void fuzz_expect(const char *what, int rc, const int *allowed)
{
    for (const int *a = allowed; *a >= 0; a++) {
        if (rc == *a)
            return;
    }
    FUZZ_DIE("%s: unexpected %s", what, nu_err_name(rc));
}

struct fuzz_cursor {
    const uint8_t *p;
    size_t left;
};

/* Next byte, 0 when exhausted. */
static inline uint8_t fuzz_u8(struct fuzz_cursor *c)
{
    if (!c->left)
        return 0;
    c->left--;
    return *c->p++;
}

/* Next record: u16 little-endian length, then that many bytes (cut at the end). */
static inline int fuzz_record(struct fuzz_cursor *c, const uint8_t **out, size_t *out_len)
{
    if (c->left < 2)
        return 0;
    size_t n = (size_t)c->p[0] | (size_t)c->p[1] << 8;
    c->p += 2;
    c->left -= 2;
    if (n > c->left)
        n = c->left;
    *out = c->p;
    *out_len = n;
    c->p += n;
    c->left -= n;
    return 1;
}

/* 1 when [p, p+len) lies inside [base, base+size). */
static inline int fuzz_inside(const void *p, size_t len, const void *base, size_t size)
{
    const uint8_t *q = p, *b = base;
    if (len == 0)
        return 1;
    return q >= b && q <= b + size && len <= (size_t)(b + size - q);
}

#endif
