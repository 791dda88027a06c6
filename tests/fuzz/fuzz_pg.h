/*
 * fuzz_pg — a programmer core on the bench for the fuzz targets that drive
 * pg_core itself (fuzz_pg_package, fuzz_pg_firmware, fuzz_pg_target): the
 * unit tests' rig (POSIX KeyStore and flash in a temporary folder, the fake
 * cloud of tests/unit/programmer) with the transport and the target link
 * replaced by scripted ones.
 *
 * Script: the fuzzer's bytes are a sequence of records (fuzz_common.h:
 * u16 length + bytes). Every request the core sends on an intercepted
 * operation and every target-link call takes the next record; its first
 * byte says how to answer:
 *   kind 0  the rest of the record is the answer (raw bytes)
 *   kind 1  the honest answer (fake cloud / in-memory chip)
 *   kind 2  an error code (record byte 1 picks it)
 *   kind 3  the honest answer with the rest of the record XORed into it
 * A set bit 0x80 in a raw or XORed chunk answer re-encrypts its ciphertext
 * with the job's firmware key (so decoding past AES-GCM is reachable).
 * When the script is exhausted, answers are honest.
 */
#ifndef FUZZ_PG_H
#define FUZZ_PG_H

#include "fuzz_common.h"
#include "rig.h"

#include <stdatomic.h>
#include <stdint.h>

struct fuzz_pg {
    struct rig r;
    struct fuzz_cursor script;
    int scripted;               /* intercept while set */
    const char *const *ops;     /* cloud operations to intercept (NULL-terminated) */
    struct nu_p256_key *chip;   /* the in-memory chip's device key */
    uint8_t chip_pub[65];
    uint8_t chip_uid[16];
    unsigned real_attests;      /* honest, unmodified attestations this run */
    int pub_honest;             /* the last read_pubkey answer was the chip's key */
    uint8_t *pkg;               /* the package loaded at setup */
    size_t pkg_len;
    _Atomic uint64_t slept_ms; /* the core's sleeps, added to its monotonic clock */
};

/* Rig in a temporary folder (/dev/shm when there is one), fake cloud with a
 * payload_len image in chunk_size chunks, enrolled, package (limit ~4e9)
 * loaded; transport and target link scripted; the core's sleeps advance its
 * monotonic clock instead of waiting. Aborts on failure. */
void fuzz_pg_setup(struct fuzz_pg *f, size_t payload_len, uint32_t chunk_size,
                   const char *const *ops);

/* Start a run on data[size]; resets the fake cloud's per-run memory. */
void fuzz_pg_begin(struct fuzz_pg *f, const uint8_t *data, size_t size);
void fuzz_pg_end(struct fuzz_pg *f);

/* Everything freed, temporary folder removed. */
void fuzz_pg_teardown(struct fuzz_pg *f);

#endif
