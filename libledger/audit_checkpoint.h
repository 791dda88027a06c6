/*
 * audit_checkpoint — HSM-signed anchors of the ledger's audit chain.
 *
 * Whoever can write ledger.db can edit a row and recompute every hash after
 * it, head included; the chain alone cannot show that. A checkpoint is an
 * `audit.checkpoint` event whose payload is a signature, by the HSM key
 * "audit" (public half DIR/pki/audit-key.pem), over the chain head just
 * before it. An edit at or before a checkpoint's seq breaks its signature;
 * dropping the checkpoints of a rewritten stretch shows against any
 * checkpoint kept elsewhere (the cloud also publishes them as events).
 *
 * Payload (compact JSON, this exact key order, hex lower-case):
 *   {"seq":N,"head":"<64 hex>","key":"<16 hex>","sig":"<DER hex>"}
 *   N    = the checkpoint row's seq - 1, head = its prev_hash (the hash of N)
 *   key  = first 8 bytes of SHA-256(uncompressed public point 04||X||Y)
 *   sig  = ECDSA P-256, DER, over SHA-256(AUDIT_CHECKPOINT_DOMAIN || 0x00 ||
 *          u64be(N) || head)
 * The domain string keeps this key's signatures from meaning anything else.
 */
#ifndef AUDIT_CHECKPOINT_H
#define AUDIT_CHECKPOINT_H

#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

#define AUDIT_CHECKPOINT_KIND "audit.checkpoint"
#define AUDIT_CHECKPOINT_DOMAIN "nusec/v1 audit checkpoint"
#define AUDIT_CHECKPOINT_PAYLOAD_MAX 320 /* fits the longest payload above */
#define AUDIT_CHECKPOINT_KEY_ID_LEN 8

/* The signed digest of head `head` at seq `seq`. Errors: INVALID_ARG, CRYPTO. */
int audit_checkpoint_digest(uint64_t seq, const uint8_t head[32], uint8_t out[32]);

/* Key id of a public point (the payload's "key"). Errors: INVALID_ARG, CRYPTO. */
int audit_checkpoint_key_id(const uint8_t pub[NU_P256_PUB_LEN],
                            uint8_t out[AUDIT_CHECKPOINT_KEY_ID_LEN]);

/*
 * Sign head `head` at seq `seq` with `signer` and write the payload (not
 * NUL-terminated counted, but NUL-terminated when it fits) into out[cap].
 * The signature is verified with signer->pub before it is used.
 * Errors: INVALID_ARG, TOO_LARGE (cap), BAD_SIGNATURE, CRYPTO, the signer's.
 */
int audit_checkpoint_make(const struct nu_signer *signer, uint64_t seq, const uint8_t head[32],
                          char *out, size_t cap, size_t *out_len);

/*
 * Check a checkpoint payload read from the ledger (untrusted bytes) against
 * the head it must sign and the audit public key.
 * Errors: TAMPERED (well-formed, but for another seq or head: the events
 * before it were rewritten), BAD_SIGNATURE (signature, or signed by another
 * key), DECODE (not exactly the format above), INVALID_ARG, CRYPTO.
 */
int audit_checkpoint_check(const uint8_t pub[NU_P256_PUB_LEN], uint64_t seq, const uint8_t head[32],
                           const char *payload, size_t len);

#endif
