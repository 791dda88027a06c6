/*
 * fuzz_checkpoint — libFuzzer target for audit_checkpoint_check(), which
 * reads the payload of an audit.checkpoint row: text from a ledger file that
 * an attacker may have written.
 *
 * Properties: the answer is OK, TAMPERED, BAD_SIGNATURE or DECODE, never
 * anything else and never a crash; OK only for a payload that starts with
 * exactly the prefix of the (seq, head) it is checked against and ends in
 * "}" (a signature by the key cannot be forged by the fuzzer, so in practice
 * OK comes only from the seed).
 */
#include "audit_checkpoint.h"
#include "nu_crypto.h"
#include "nu_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const uint8_t HEAD[32] = {0xa5, 1,  2,  3,  4,  5,  6,  7,  8,  9,  10, 11, 12, 13, 14, 15,
                                 16,   17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28, 29, 30, 31};
#define SEQ 41u

static struct nu_signer signer;

int LLVMFuzzerInitialize(int *argc, char ***argv);
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    /* One key per run; making one valid payload checks the setup. */
    struct nu_p256_key *key = NULL;
    char p[AUDIT_CHECKPOINT_PAYLOAD_MAX];
    size_t n = 0;
    if (nu_p256_key_generate(&key) || nu_p256_key_signer(key, &signer) ||
        audit_checkpoint_make(&signer, SEQ, HEAD, p, sizeof(p), &n))
        abort();
    return 0; /* the key lives for the process */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    int rc = audit_checkpoint_check(signer.pub, SEQ, HEAD, (const char *)data, size);
    if (rc != NU_OK && rc != NU_ERR_TAMPERED && rc != NU_ERR_BAD_SIGNATURE && rc != NU_ERR_DECODE) {
        fprintf(stderr, "fuzz_checkpoint: unexpected %s\n", nu_err_name(rc));
        abort();
    }
    if (rc == NU_OK &&
        (size < 2 || memcmp(data, "{\"seq\":41,\"head\":\"a5", 20) != 0 || data[size - 1] != '}')) {
        fprintf(stderr, "fuzz_checkpoint: accepted a payload of another shape\n");
        abort();
    }
    return 0;
}
