/* audit_checkpoint — HSM-signed anchors of the audit chain (format in the header). */
#include "audit_checkpoint.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_util.h"

#include <stdio.h>
#include <string.h>

#define CHECKPOINT__HEAD_HEX 64
#define CHECKPOINT__KEY_HEX (2 * AUDIT_CHECKPOINT_KEY_ID_LEN)

int audit_checkpoint_digest(uint64_t seq, const uint8_t head[32], uint8_t out[32])
{
    uint8_t msg[sizeof(AUDIT_CHECKPOINT_DOMAIN) + 8 + 32]; /* sizeof counts the 0x00 */
    if (!head || !out)
        return NU_ERR_INVALID_ARG;
    memcpy(msg, AUDIT_CHECKPOINT_DOMAIN, sizeof(AUDIT_CHECKPOINT_DOMAIN));
    for (int i = 0; i < 8; i++)
        msg[sizeof(AUDIT_CHECKPOINT_DOMAIN) + i] = (uint8_t)(seq >> (56 - 8 * i));
    memcpy(msg + sizeof(AUDIT_CHECKPOINT_DOMAIN) + 8, head, 32);
    return nu_sha256(msg, sizeof(msg), out);
}

int audit_checkpoint_key_id(const uint8_t pub[NU_P256_PUB_LEN],
                            uint8_t out[AUDIT_CHECKPOINT_KEY_ID_LEN])
{
    uint8_t digest[32];
    if (!pub || !out)
        return NU_ERR_INVALID_ARG;
    int rc = nu_sha256(pub, NU_P256_PUB_LEN, digest);
    if (rc == NU_OK)
        memcpy(out, digest, AUDIT_CHECKPOINT_KEY_ID_LEN);
    return rc;
}

/* {"seq":N,"head":"H","key":" — what a checkpoint of (seq, head) starts with. */
static int checkpoint__prefix(uint64_t seq, const uint8_t head[32], char *out, size_t cap,
                              size_t *out_len)
{
    char head_hex[CHECKPOINT__HEAD_HEX + 1];
    int rc = nu_hex_encode(head, 32, head_hex, sizeof(head_hex));
    if (rc != NU_OK)
        return rc;
    int n = snprintf(out, cap, "{\"seq\":%llu,\"head\":\"%s\",\"key\":\"", (unsigned long long)seq,
                     head_hex);
    if (n < 0 || (size_t)n >= cap)
        return NU_ERR_TOO_LARGE;
    *out_len = (size_t)n;
    return NU_OK;
}

int audit_checkpoint_make(const struct nu_signer *signer, uint64_t seq, const uint8_t head[32],
                          char *out, size_t cap, size_t *out_len)
{
    uint8_t digest[32], key_id[AUDIT_CHECKPOINT_KEY_ID_LEN], sig[NU_P256_SIG_MAX];
    char key_hex[CHECKPOINT__KEY_HEX + 1], sig_hex[2 * NU_P256_SIG_MAX + 1];
    size_t sig_len = sizeof(sig), len = 0;
    if (!signer || !signer->sign_digest || !head || !out || !out_len)
        return NU_ERR_INVALID_ARG;
    int rc = audit_checkpoint_digest(seq, head, digest);
    if (rc == NU_OK)
        rc = signer->sign_digest(signer->ctx, digest, sig, &sig_len);
    /* A signer may hand back a well-formed but wrong signature: never store one. */
    if (rc == NU_OK && !signer->self_verified)
        rc = nu_p256_verify(signer->pub, digest, sig, sig_len);
    if (rc == NU_OK)
        rc = audit_checkpoint_key_id(signer->pub, key_id);
    if (rc == NU_OK)
        rc = nu_hex_encode(key_id, sizeof(key_id), key_hex, sizeof(key_hex));
    if (rc == NU_OK)
        rc = nu_hex_encode(sig, sig_len, sig_hex, sizeof(sig_hex));
    if (rc == NU_OK)
        rc = checkpoint__prefix(seq, head, out, cap, &len);
    if (rc != NU_OK)
        return rc;
    int n = snprintf(out + len, cap - len, "%s\",\"sig\":\"%s\"}", key_hex, sig_hex);
    if (n < 0 || (size_t)n >= cap - len)
        return NU_ERR_TOO_LARGE;
    *out_len = len + (size_t)n;
    return NU_OK;
}

/* Well-formed up to the key, but for another (seq, head)? */
static int checkpoint__other_head(const char *payload, size_t len)
{
    static const char seq_tag[] = "{\"seq\":", head_tag[] = ",\"head\":\"";
    size_t i = sizeof(seq_tag) - 1, digits = 0;
    if (len < i || memcmp(payload, seq_tag, i) != 0)
        return 0;
    while (i < len && payload[i] >= '0' && payload[i] <= '9' && digits < 20)
        i++, digits++;
    if (!digits || len - i < sizeof(head_tag) - 1 + CHECKPOINT__HEAD_HEX ||
        memcmp(payload + i, head_tag, sizeof(head_tag) - 1) != 0)
        return 0;
    uint8_t head[32];
    size_t n = 0;
    return nu_hex_decode_n(payload + i + sizeof(head_tag) - 1, CHECKPOINT__HEAD_HEX, head,
                           sizeof(head), &n) == NU_OK;
}

int audit_checkpoint_check(const uint8_t pub[NU_P256_PUB_LEN], uint64_t seq, const uint8_t head[32],
                           const char *payload, size_t len)
{
    static const char sig_tag[] = "\",\"sig\":\"";
    char prefix[AUDIT_CHECKPOINT_PAYLOAD_MAX];
    uint8_t want_id[AUDIT_CHECKPOINT_KEY_ID_LEN], got_id[AUDIT_CHECKPOINT_KEY_ID_LEN];
    uint8_t digest[32], sig[NU_P256_SIG_MAX];
    size_t plen = 0, n = 0, sig_len = 0;
    if (!pub || !head || (!payload && len))
        return NU_ERR_INVALID_ARG;
    int rc = checkpoint__prefix(seq, head, prefix, sizeof(prefix), &plen);
    if (rc != NU_OK)
        return rc;
    if (len >= plen && memcmp(payload, prefix, plen) != 0 && checkpoint__other_head(payload, len))
        return NU_ERR_TAMPERED;
    /* Exactly: prefix, 16 hex, sig_tag, even hex digits, "}. */
    if (len > AUDIT_CHECKPOINT_PAYLOAD_MAX || len < plen + CHECKPOINT__KEY_HEX + 9 + 2 ||
        memcmp(payload, prefix, plen) != 0 ||
        memcmp(payload + plen + CHECKPOINT__KEY_HEX, sig_tag, sizeof(sig_tag) - 1) != 0 ||
        memcmp(payload + len - 2, "\"}", 2) != 0)
        return NU_ERR_DECODE;
    const char *sig_hex = payload + plen + CHECKPOINT__KEY_HEX + sizeof(sig_tag) - 1;
    size_t sig_digits = (size_t)(payload + len - 2 - sig_hex);
    if (nu_hex_decode_n(payload + plen, CHECKPOINT__KEY_HEX, got_id, sizeof(got_id), &n) != NU_OK ||
        n != sizeof(got_id) ||
        nu_hex_decode_n(sig_hex, sig_digits, sig, sizeof(sig), &sig_len) != NU_OK || !sig_len)
        return NU_ERR_DECODE;
    rc = audit_checkpoint_key_id(pub, want_id);
    if (rc == NU_OK && nu_memeq_ct(want_id, got_id, sizeof(want_id)) != 0)
        rc = NU_ERR_BAD_SIGNATURE; /* another key signed it */
    if (rc == NU_OK)
        rc = audit_checkpoint_digest(seq, head, digest);
    if (rc == NU_OK)
        rc = nu_p256_verify(pub, digest, sig, sig_len);
    return rc == NU_ERR_DECODE ? NU_ERR_BAD_SIGNATURE : rc; /* a malformed DER signature */
}
