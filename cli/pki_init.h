/*
 * pki_init — `nusec pki init`: the OEM's PKI, created inside the HSM.
 *
 * The HSM is either a new SoftHSM2 token under DIR/hsm (the default, PINs in
 * 0600 files), a new token initialised in another module (--pkcs11-module
 * without a token), or an existing token the OEM's administrators made
 * (named by label or slot, user PIN from a file; no SO PIN, no C_InitToken).
 * How to open it is recorded in DIR/hsm/pkcs11.conf for every program.
 *
 * Creates under DIR: in the token the Root, Fleet and Device CA keys, the
 * secure-boot, package and audit keys (non-extractable; keys of an existing
 * token are refused unless adopted, then checked); the CA certificates and chains (DIR/pki/); the
 * broker server certificate and the role client certificates (software keys
 * in 0600 files, since TLS libraries need them); the broker configuration
 * for a loopback mTLS listener on a free port (DIR/broker/), and the public
 * keys others pin (DIR/firmware/rotpk.pem, DIR/pki/package-key.pem).
 */
#ifndef PKI_INIT_H
#define PKI_INIT_H

#include <stddef.h>

struct pki_init_opts {
    const char *dir;        /* state directory (required) */
    int force;              /* move an existing PKI aside instead of refusing */
    const char *host;       /* broker listen address; default 127.0.0.1 */
    int port;               /* broker port; 0 = pick a free one */
    const char *module;     /* PKCS#11 module; NULL = SoftHSM2 */
    const char *plugin;     /* nusec_auth plugin path; NULL = the built one */
    unsigned validity_days; /* leaf certificates; CAs get 10x; 0 = 825 */
    /* The OEM's organisation: O of every certificate made here and the CAs'
     * CNs ("ORG Root CA", "ORG Fleet CA", "ORG Device CA"); NULL = "NuSEC".
     * Printable, 1..40 characters (so the CA CNs fit in 63). */
    const char *org;
    /* An existing token (either names one; neither = create a token). */
    const char *token_label;
    int use_slot;
    unsigned long slot;
    const char *pin_file;          /* its user PIN (0600/0400); NULL = $NUSEC_HSM_PIN */
    int adopt_keys;                /* use (after checking) keys already under our labels */
    const char *init_args;         /* C_Initialize pReserved for the module; NULL = none */
    const char *const *module_env; /* "NAME=VALUE" set for the module, n_module_env */
    size_t n_module_env;
};

/*
 * Run the whole initialisation. Messages for the user go to stderr
 * ("nusec: pki init: ..."), so callers only map the code.
 * Returns NU_OK; NU_ERR_EXISTS when DIR already holds a PKI (force 0) or the
 * token already holds keys under our labels (adopt_keys 0): nothing was
 * changed. Other errors (HSM, CONFIG, PERMISSION, IO, ...): everything made
 * is removed (keys destroyed, folders deleted, a --force'd PKI moved back);
 * what cannot be removed (a token initialised in another module) is named
 * with the way to remove it, and DIR/pki-init.failed records the failure so
 * that `stack up` does not build another PKI in its place.
 */
int pki_init_run(const struct pki_init_opts *opts);

/* 1 if the last pki init in `dir` failed (DIR/pki-init.failed exists); its
 * first line goes to why[cap] (may be NULL). */
int pki_init_failed(const char *dir, char *why, size_t cap);

/*
 * Substitute @NAME@ placeholders in `tmpl` from the NULL-terminated
 * name/value pair list `vars` ({"PORT", "1883", NULL}). Unknown placeholders
 * are an error (NU_ERR_CONFIG), so a template and its filler cannot drift.
 * *out is malloc'd; the caller frees it.
 */
int pki_fill_template(const char *tmpl, const char *const *vars, char **out);

/*
 * The NuSEC broker configuration of state directory `dir`, from the template
 * built in: the listener on host:port, the nusec_auth plugin at `plugin`
 * (NULL: pki_default_plugin()), every file where nu_paths puts it, the broker
 * running as this process's user. Both `pki init` and a site's broker
 * (`site init`) write it. *out is malloc'd; the caller frees it.
 * Errors: TOO_LARGE (a path), CONFIG (template), NOMEM.
 */
int pki_broker_conf(const char *dir, const char *host, const char *port, const char *plugin,
                    char **out);

/* 1 when `org` may name the OEM's organisation (see pki_init_opts.org). */
int pki_org_valid(const char *org);

/* The nusec_auth plugin this nusec was built with (or installed with). */
const char *pki_default_plugin(void);

/* Bind port 0 on `host` and report the port the kernel chose. */
int pki_free_port(const char *host, int *out_port);

#endif
