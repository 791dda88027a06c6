/*
 * m33_rpc — the wire between the programmer core running on the emulated
 * Cortex-M33 (qemu mps2-an505) and the test bench on the host.
 *
 * Test-only. The core runs on the target; the test cases, the fake cloud,
 * the simulated chips, the KeyStore stand-in, the flash files and the crypto
 * HAL (wolfCrypt through libnusec) stay on the host. Every HAL op the core
 * calls on the target becomes a CALL frame to the host, every core API call
 * a test makes becomes a CALL frame to the target; callbacks the core hands
 * to a HAL op (ECDH, signer, image reader, subscription) come back as CALLs
 * while the outer call waits. Calls nest to RPC_DEPTH on both sides.
 *
 * Frame: u32 length (of what follows), u32 kind (CALL/RET), u32 op (CALL)
 * or status (RET), then fields in the order both sides agree on: u32, u64
 * (little-endian, byte by byte: no host/target struct is ever sent except
 * the opaque byte arrays named below), bytes = u32 length + data. Strings
 * travel as bytes with their NUL, so a field points into the frame; a NULL
 * string is a 0-length field.
 */
#ifndef M33_RPC_H
#define M33_RPC_H

#include <stddef.h>
#include <stdint.h>

#define RPC_MAX (24u * 1024u) /* largest frame: a 16 KiB chunk answer + envelope */
#define RPC_DEPTH 6

enum { RPC_CALL = 1, RPC_RET = 2 };

/* target -> host: the HAL */
enum {
    OP_KS_KEYS_GENERATE = 1, OP_KS_PUBKEY, OP_KS_SIGN, OP_KS_ECDH, OP_KS_COUNTER_READ,
    OP_KS_COUNTER_INC, OP_KS_BLOB_GET, OP_KS_BLOB_PUT, OP_KS_ATTEST, OP_KS_LINE_KEY_GENERATE,
    OP_FL_SIZE, OP_FL_READ, OP_FL_WRITE, OP_FL_ERASE,
    OP_TP_PUBLISH, OP_TP_REQUEST, OP_TP_SUBSCRIBE, OP_TP_REQUEST_SIGNED,
    OP_TG_INSERT, OP_TG_REMOVE, OP_TG_READ_UID, OP_TG_BLANK, OP_TG_OTP, OP_TG_KEYGEN_CSR,
    OP_TG_READ_PUB, OP_TG_FLASH_WRITE, OP_TG_BOOT_KEY, OP_TG_WRITE_CERT, OP_TG_RESET,
    OP_TG_ATTEST, OP_TG_LOCK, OP_TG_STATE, OP_TG_OTP_READ, OP_TG_CSR, OP_TG_READ_CERT,
    OP_CR_SHA_INIT, OP_CR_SHA_UPDATE, OP_CR_SHA_FINAL, OP_CR_VERIFY, OP_CR_GCM_DECRYPT,
    OP_CR_SEAL_OPEN, OP_CR_CSR_MAKE, OP_CR_CSR_CHECK, OP_CR_CERT_CHECK, OP_CR_PUBKEY_PARSE,
    OP_CR_IMAGE_VERIFY, OP_CR_CERT_ISSUE,
    OP_CLK_NOW, OP_CLK_MONO, OP_CLK_SLEEP, OP_RNG_FILL, OP_LOG_WRITE,
    OP_HAL_END
};

/* host -> target: the core's API, callbacks, the harness */
enum {
    OP_C_INIT = 100, OP_C_DEINIT, OP_C_ENROLLED, OP_C_ENROLL, OP_C_PACKAGE_LOAD, OP_C_JOB_ID,
    OP_C_FW_FETCH, OP_C_FW_READY, OP_C_PROD_BEGIN, OP_C_SOCKET_RUN, OP_C_PROD_END, OP_C_COUNTS,
    OP_C_SUBSCRIBE, OP_C_POLL, OP_C_RUN_WORKERS, OP_C_IDENTITY_CERT, OP_C_STOP, OP_C_ON_MESSAGE,
    OP_C_STATUS_PUBLISH, OP_C_STATUS_ENCODE, OP_C_TOPIC_STATUS, OP_C_JOURNAL_FLUSH,
    OP_C_UNITS_KEPT, OP_C_LEASE_COUNTS, OP_C_LEASE_SYNC, OP_C_LINK_NOTE,
    OP_CB_ECDH = 150, OP_CB_SIGN, OP_CB_READ, OP_CB_MSG,
    OP_T_REPORT = 180, OP_T_EXIT, OP_T_VECTORS
};

struct rpc_msg {
    uint8_t *buf;
    uint32_t len; /* bytes written (tx) or received (rx) */
    uint32_t pos; /* read cursor (rx) */
    int bad;      /* a field ran past the end or the buffer is full */
};

void rpc_put_u32(struct rpc_msg *m, uint32_t v);
void rpc_put_u64(struct rpc_msg *m, uint64_t v);
void rpc_put_bytes(struct rpc_msg *m, const void *p, size_t len);
void rpc_put_str(struct rpc_msg *m, const char *s); /* NULL -> empty field */
uint32_t rpc_get_u32(struct rpc_msg *m);
uint64_t rpc_get_u64(struct rpc_msg *m);
/* Pointer into the frame (valid until the level's buffer is reused). */
const uint8_t *rpc_get_bytes(struct rpc_msg *m, size_t *len);
const char *rpc_get_str(struct rpc_msg *m); /* NULL for an empty field */
/* Copy a bytes field into out[cap]; *out_len its length; 0 or -1 (too long). */
int rpc_get_into(struct rpc_msg *m, void *out, size_t cap, size_t *out_len);

/* A new CALL at the current depth. */
struct rpc_msg *rpc_begin(uint32_t op);
/* Send it, serve the other side's nested CALLs, return the RET status;
 * *rx = the answer's fields. Call rpc_done() after reading them. */
int rpc_call(struct rpc_msg *tx, struct rpc_msg **rx);
void rpc_done(void);
/* Serve one CALL from the other side (the target's main loop). 0 or -1 (link). */
int rpc_serve_one(void);
/* Calls of this side in flight (0 = idle). */
unsigned rpc_depth(void);
/* Fatal link error: never returns (side-specific). */
void rpc_fatal(const char *why);

/* Provided by each side. */
int m33_link_send(const void *p, size_t len);
int m33_link_recv(void *p, size_t len);
/* Serve CALL `op` (fields in `in`); put the answer's fields in `out`; return its status. */
int m33_dispatch(uint32_t op, struct rpc_msg *in, struct rpc_msg *out);

/* Host only: one tests/vectors/seal vector (the 9 fields recipient_pub,
 * ephemeral_pub, shared_secret, hkdf_key, nonce, aad, plaintext, ciphertext,
 * box) checked on the target; *out_step = 0, or the check that failed. */
int m33_host_seal_vector(const uint8_t *const fields[9], const size_t lens[9], uint32_t *out_step);

#endif
