/*
 * nu_hsm — the OEM's keys in a PKCS#11 token (SoftHSM2 by default, any module
 * by configuration).
 *
 * The module is dlopen()ed by path and driven through C_GetFunctionList, so a
 * network HSM or a USB token works the same way as the embedded SoftHSM2.
 * Keys are ECDSA P-256, created inside the token as sensitive and
 * non-extractable; the only thing that leaves the token is a signature, and
 * every signature is verified against the public key before it is returned
 * (SoftHSM2 issue #901: some builds produced well-formed but invalid ECDSA
 * signatures).
 *
 * Threads: one struct nu_hsm may be used from several threads at once. It
 * keeps a small pool of logged-in sessions (reused, because opening a session
 * per signature costs more than the signature); each operation borrows one.
 *
 * C_Initialize / C_Finalize are process-wide per module, so handles on the same
 * module share one initialisation (reference counted inside nu_hsm.c); the
 * module is finalised when the last handle closes. SoftHSM2 reads
 * $SOFTHSM2_CONF at C_Initialize, i.e. when the first handle on it opens.
 *
 * The PIN is never logged. CKR_* codes are logged (as hex) and mapped:
 * CKR_PIN_INCORRECT / CKR_PIN_LOCKED -> NU_ERR_PERMISSION, unknown token or key
 * -> NU_ERR_NOT_FOUND, other failures -> NU_ERR_HSM.
 */
#ifndef NU_HSM_H
#define NU_HSM_H

#include "nu_signer.h"

#include <stddef.h>
#include <stdint.h>

#define NU_HSM_TOKEN_LABEL_MAX 32 /* PKCS#11 CK_TOKEN_INFO.label is 32 bytes */
#define NU_HSM_KEY_LABEL_MAX 64   /* our bound on CKA_LABEL of keys */
#define NU_HSM_PIN_MAX 128        /* longest PIN accepted (bytes, without NUL) */
#define NU_HSM_SESSIONS_DEFAULT 4
#define NU_HSM_SESSIONS_MAX 32

struct nu_hsm;     /* an open token: module + slot + logged-in session pool */
struct nu_hsm_key; /* a P-256 private key in the token, usable as a nu_signer */

struct nu_hsm_opts {
    const char *module;      /* PKCS#11 module path; NULL = nu_hsm_default_module() */
    const char *token_label; /* label of the token to use (this or use_slot) */
    int use_slot;            /* 1: the token in slot `slot`, whatever its label */
    unsigned long slot;      /* CK_SLOT_ID, with use_slot */
    const char *pin;         /* user PIN (required); copied, wiped on close */
    unsigned sessions;       /* session pool size; 0 = NU_HSM_SESSIONS_DEFAULT */
    /* C_Initialize's pReserved string, for modules that need one (NSS softokn:
     * "configdir='sql:DIR' certPrefix='' keyPrefix='' secmod='secmod.db'");
     * NULL = none. Only the first open of a module in a process passes it. */
    const char *init_args;
};

/* What a token says about itself (C_GetTokenInfo), for checks before use. */
struct nu_hsm_token_info {
    unsigned long slot;                     /* CK_SLOT_ID */
    char label[NU_HSM_TOKEN_LABEL_MAX + 1]; /* trailing blanks removed */
    int initialized;                        /* CKF_TOKEN_INITIALIZED */
    int user_pin_initialized;               /* CKF_USER_PIN_INITIALIZED */
    unsigned long min_pin_len, max_pin_len; /* ulMinPinLen / ulMaxPinLen */
};

/*
 * Describe a token without logging in: the one opts->token_label or
 * opts->slot names or, when neither is given, the first slot holding no
 * initialised token (where nu_hsm_init_token() would create one). opts->pin
 * is not used.
 * Errors: INVALID_ARG, NOT_FOUND (module, token, free slot), CONFIG, HSM.
 */
int nu_hsm_token_query(const struct nu_hsm_opts *opts, struct nu_hsm_token_info *out_info);

/* NU_OK if a PIN of `len` bytes fits the token's range, else NU_ERR_CONFIG
 * with a message that gives the range (modules differ: 4-8, 0-128, 4-255). */
int nu_hsm_pin_len_check(const struct nu_hsm_token_info *info, size_t len);

/* The PKCS#11 module built in as default (SoftHSM2 on Debian). Not owned. */
const char *nu_hsm_default_module(void);

/*
 * Load the user PIN into buf[cap] as a NUL-terminated string (one trailing
 * newline is dropped). With a path, the file must be a regular file owned by
 * the caller with mode 0600 or 0400 (anything readable by group/others is
 * refused: a PIN file others can read is a leaked PIN). With path NULL, the PIN
 * comes from the environment variable NUSEC_HSM_PIN.
 * Errors: INVALID_ARG, NOT_FOUND (no file / variable unset), PERMISSION (mode,
 * owner, or unreadable), TOO_LARGE (PIN does not fit cap or NU_HSM_PIN_MAX),
 * CONFIG (empty PIN), IO. On error buf is wiped.
 */
int nu_hsm_pin_load(const char *path, char *buf, size_t cap);

/*
 * Write a SoftHSM2 configuration for the state directory `dir`:
 * DIR/hsm/softhsm2.conf (0600) with tokendir DIR/hsm/tokens (created 0700),
 * file object store, log level ERROR. The path of the file goes to
 * out_path[cap]; the caller points SOFTHSM2_CONF at it (setenv) before the
 * first nu_hsm call on SoftHSM2. An existing file is replaced.
 * Errors: INVALID_ARG, TOO_LARGE (path), IO, PERMISSION.
 */
int nu_hsm_softhsm_write_conf(const char *dir, char *out_path, size_t cap);

/*
 * Initialise a fresh token: C_InitToken with so_pin and `label` on the first
 * slot holding no initialised token, then C_InitPIN with user_pin.
 * module NULL = default module.
 * Errors: INVALID_ARG (label empty or > 32 bytes, PIN empty or too long),
 * EXISTS (a token with this label exists), NOT_FOUND (module missing, or no
 * free slot), CONFIG (file is not a PKCS#11 module), HSM.
 */
int nu_hsm_init_token(const char *module, const char *label, const char *so_pin,
                      const char *user_pin);

/* nu_hsm_init_token() on opts->module with opts->init_args and label
 * opts->token_label; the PINs are checked against the free slot's PIN length
 * range first (CONFIG when they do not fit). The slot used goes to
 * *out_slot (may be NULL). */
int nu_hsm_init_token_opts(const struct nu_hsm_opts *opts, const char *so_pin, const char *user_pin,
                           unsigned long *out_slot);

/*
 * Open the token labelled opts->token_label (or in slot opts->slot): load the
 * module, find the slot, check the PIN length against the token's range,
 * open the session pool and log in as user. *out_hsm is freed with
 * nu_hsm_close().
 * Errors: INVALID_ARG, NOT_FOUND (module file or token missing), CONFIG (not a
 * PKCS#11 module), PERMISSION (wrong or locked PIN), NOMEM, HSM.
 */
int nu_hsm_open(const struct nu_hsm_opts *opts, struct nu_hsm **out_hsm);

/* Log out, close the sessions, release the module, wipe the PIN. NULL is a no-op.
 * All nu_hsm_key objects of this handle must be closed first. */
void nu_hsm_close(struct nu_hsm *hsm);

/*
 * Generate an ECDSA P-256 key pair in the token (CKM_EC_KEY_PAIR_GEN on
 * prime256v1). The template asks only for what NuSEC needs, so that any
 * conforming module accepts it: the private key CKA_TOKEN, CKA_PRIVATE,
 * CKA_SENSITIVE, CKA_EXTRACTABLE false, CKA_SIGN, CKA_DERIVE false; the public
 * key CKA_TOKEN and the curve. (No CKA_VERIFY / CKA_DECRYPT: TPM 2.0 has one
 * flag for both, and tpm2-pkcs11 refuses the pair.) Both carry CKA_LABEL =
 * CKA_ID = label. The token's answer is then checked with
 * nu_hsm_key_attr_check(): a private key that is not sensitive,
 * never-extractable and local is destroyed and refused, and the log names
 * the attribute. The public point (04||X||Y) goes to out_pub (may be NULL).
 * Errors: INVALID_ARG (label empty, > NU_HSM_KEY_LABEL_MAX or not printable),
 * EXISTS (an object with this label exists), HSM (including a refused key).
 */
int nu_hsm_keygen_p256(struct nu_hsm *hsm, const char *label, uint8_t out_pub[NU_P256_PUB_LEN]);

/* Public point of the P-256 key `label` into out_pub (may be NULL to test
 * existence). Errors: INVALID_ARG, NOT_FOUND, HSM (duplicate labels, not P-256). */
int nu_hsm_find_key(struct nu_hsm *hsm, const char *label, uint8_t out_pub[NU_P256_PUB_LEN]);

/* Protection attributes of a private key, as the token reports them. */
struct nu_hsm_key_attrs {
    int token;               /* CKA_TOKEN: persistent */
    int private_;            /* CKA_PRIVATE: needs login */
    int sensitive;           /* CKA_SENSITIVE */
    int extractable;         /* CKA_EXTRACTABLE */
    int always_sensitive;    /* CKA_ALWAYS_SENSITIVE */
    int never_extractable;   /* CKA_NEVER_EXTRACTABLE */
    int sign;                /* CKA_SIGN */
    int local;               /* CKA_LOCAL: generated inside the token */
    int value_readable;      /* 1 if C_GetAttributeValue(CKA_VALUE) returned bytes */
    unsigned long value_ckr; /* the CKR of that attempt (CKR_ATTRIBUTE_SENSITIVE expected) */
};

/*
 * Read the protection attributes of private key `label`, and try to read its
 * CKA_VALUE (the private scalar) to show that the token refuses: a correct
 * key has sensitive=1, extractable=0, value_readable=0. If the value was
 * readable it is wiped at once and never returned.
 * Errors: INVALID_ARG, NOT_FOUND, HSM.
 */
int nu_hsm_key_attr_check(struct nu_hsm *hsm, const char *label,
                          struct nu_hsm_key_attrs *out_attrs);

/* The name of the first protection a key lacks ("CKA_SENSITIVE",
 * "CKA_NEVER_EXTRACTABLE", "CKA_LOCAL", ...), or NULL when it has them all:
 * persistent, private, sensitive (always), not extractable (never), local,
 * can sign, value unreadable. Static string. */
const char *nu_hsm_key_attrs_refusal(const struct nu_hsm_key_attrs *attrs);

/*
 * Check a key found in the token before NuSEC uses it (adopting an OEM's
 * key): protection attributes as nu_hsm_key_attrs_refusal() wants, a P-256
 * public key object with the same label, and a test signature over a random
 * digest that verifies with that public key. The reason of a refusal is
 * logged. Errors: INVALID_ARG, NOT_FOUND, HSM (refused), BAD_SIGNATURE.
 */
int nu_hsm_key_check(struct nu_hsm *hsm, const char *label);

/* Destroy the private and public key objects labelled `label` (both may be
 * absent). Used to undo a failed initialisation. Errors: INVALID_ARG, HSM. */
int nu_hsm_key_destroy(struct nu_hsm *hsm, const char *label);

/*
 * Open private key `label` for signing. A key the token does not report as
 * protected (nu_hsm_key_attrs_refusal) is refused with HSM: some modules let
 * a PIN holder clear CKA_SENSITIVE after generation. *out_key is freed with
 * nu_hsm_key_close() before the hsm is closed.
 * Errors: INVALID_ARG, NOT_FOUND, NOMEM, HSM.
 */
int nu_hsm_key_open(struct nu_hsm *hsm, const char *label, struct nu_hsm_key **out_key);

/* The signer view of a key (ctx = key, pub = its public point); valid until
 * nu_hsm_key_close(). Safe to use from several threads. */
const struct nu_signer *nu_hsm_key_signer(const struct nu_hsm_key *key);

/*
 * ECDSA (CKM_ECDSA) over a 32-byte digest, returned DER-encoded in
 * sig[*sig_len] (in: capacity, NU_P256_SIG_MAX is enough; out: length). The
 * signature is verified with the public key before it is returned; a bad one
 * is retried once, then NU_ERR_HSM. This is what the signer's sign_digest
 * calls.
 * Errors: INVALID_ARG, TOO_LARGE (capacity), PERMISSION (session lost its
 * login and the PIN no longer works), HSM.
 */
int nu_hsm_key_sign_digest(struct nu_hsm_key *key, const uint8_t digest[32], uint8_t *sig,
                           size_t *sig_len);

/* Release a key handle (the key stays in the token). NULL is a no-op. */
void nu_hsm_key_close(struct nu_hsm_key *key);

#endif
