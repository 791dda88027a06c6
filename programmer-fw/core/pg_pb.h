/*
 * pg_pb — a bounded, zero-copy protobuf wire codec for the programmer core.
 *
 * Why not protobuf-c: it allocates while decoding and is not built for the
 * NuLink3. The core reads and writes only the dozen nusec.v1 messages it
 * uses (pg_msg.h), so a reader that hands out pointers into the caller's
 * buffer and a writer into a caller's buffer are enough, with no heap.
 *
 * Reader rules (untrusted input): varints at most 10 bytes, lengths within
 * the buffer, field numbers 1..2^29-1, wire types 0, 1, 2, 5 only (groups
 * refused). The table decoder (pg_pb_decode) refuses a singular field given
 * twice (canonical encoders never do; nu_envelope refuses it too), a wrong
 * wire type for a known field, a bytes field over its bound and a repeated
 * field over its count; unknown fields are skipped.
 *
 * Writer rules: proto3 canonical (zero scalars and empty bytes omitted,
 * fields in the order written). Any overflow sticks in w->err (TOO_LARGE),
 * so a sequence of puts is checked once at the end.
 */
#ifndef PG_PB_H
#define PG_PB_H

#include <stddef.h>
#include <stdint.h>

enum pg_pb_wire { PG_PB_VARINT = 0, PG_PB_I64 = 1, PG_PB_LEN = 2, PG_PB_I32 = 5 };

/* A borrowed byte range inside a decoded buffer. */
struct pg_bytes {
    const uint8_t *p;
    size_t len;
};

/* ---- reader -------------------------------------------------------------- */

struct pg_pb_field {
    uint32_t num;
    enum pg_pb_wire wire;
    uint64_t u;        /* VARINT, I64, I32 */
    struct pg_bytes b; /* LEN */
};

struct pg_pb_reader {
    const uint8_t *p;
    const uint8_t *end;
};

void pg_pb_reader_init(struct pg_pb_reader *r, const uint8_t *buf, size_t len);

/* Next field: NU_OK, NOT_FOUND at the end, DECODE on malformed input. */
int pg_pb_next(struct pg_pb_reader *r, struct pg_pb_field *out);

/* Table-driven decoding into a caller struct. */
enum pg_pb_kind {
    PG_PB_U32,      /* varint that must fit 32 bits -> uint32_t */
    PG_PB_U64,      /* varint -> uint64_t */
    PG_PB_BYTES,    /* bytes / string / sub-message -> struct pg_bytes */
    PG_PB_REPEATED, /* repeated bytes -> struct pg_bytes[max_count], count in count_off */
};

struct pg_pb_desc {
    uint32_t num;
    enum pg_pb_kind kind;
    size_t off;       /* offset of the value in the target struct */
    size_t max_len;   /* BYTES/REPEATED: longest value accepted */
    size_t max_count; /* REPEATED: element capacity */
    size_t count_off; /* REPEATED: offset of a size_t count */
};

/*
 * Decode buf[len] with the n-entry table into `out`, which the caller zeroed
 * (repeated counts start from what is there).
 * Errors: DECODE (malformed, duplicate singular field, wrong wire type,
 * varint over 32 bits for U32), TOO_LARGE (value or count over its bound).
 */
int pg_pb_decode(const uint8_t *buf, size_t len, const struct pg_pb_desc *desc, size_t n,
                 void *out);

/* ---- writer -------------------------------------------------------------- */

struct pg_pb_writer {
    uint8_t *buf;
    size_t cap;
    size_t len;
    int err; /* first error, sticky */
};

void pg_pb_writer_init(struct pg_pb_writer *w, uint8_t *buf, size_t cap);
void pg_pb_put_u64(struct pg_pb_writer *w, uint32_t num, uint64_t v);
void pg_pb_put_bytes(struct pg_pb_writer *w, uint32_t num, const void *data, size_t len);
/* NUL-terminated string (NULL or "" omitted). */
void pg_pb_put_str(struct pg_pb_writer *w, uint32_t num, const char *s);
/* Sub-messages: begin returns a mark, end closes it (length prefix inserted,
 * empty sub-messages are still emitted so that a oneof member is set). */
size_t pg_pb_begin(struct pg_pb_writer *w, uint32_t num);
void pg_pb_end(struct pg_pb_writer *w, size_t mark);

#endif
