/*
 * fuzz_attest — libFuzzer target for the programmer attestation statement
 * (nu_attest_decode, nu_attest_verify): bytes an enrolling party sends the
 * cloud before anything is signed.
 *
 * Properties: decode answers OK or DECODE / TOO_LARGE, never crashes; OK
 * only for the one canonical encoding (re-encoding gives the same bytes);
 * verify against a fixed vendor CA and device certificate never answers OK
 * for a fuzzed signature (the fuzzer cannot forge ECDSA) and only answers
 * its documented codes.
 */
#include "nu_attest.h"
#include "nu_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct nu_attest_claims c;
    uint8_t again[NU_ATTEST_STMT_MAX];
    size_t len = 0;
    int rc = nu_attest_decode(data, size, &c);
    if (rc != NU_OK && rc != NU_ERR_DECODE && rc != NU_ERR_TOO_LARGE)
        abort();
    if (rc == NU_OK && (nu_attest_encode(&c, again, sizeof(again), &len) != NU_OK || len != size ||
                        memcmp(again, data, size) != 0))
        abort();
    /* The first 72 bytes as a signature over the rest, with the statement's
     * own bytes standing in for the certificate: never OK. */
    if (size > 72) {
        struct nu_attest_claims out;
        rc = nu_attest_verify(data, size, data + 72, size - 72, data + 72, size - 72, data, 72,
                              &out);
        if (rc == NU_OK)
            abort();
    }
    return 0;
}
