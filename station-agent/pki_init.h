/*
 * pki_init — `nusec pki init`: the OEM's PKI, created inside the HSM.
 *
 * Creates under DIR: a SoftHSM2 token (DIR/hsm/, PINs in 0600 files) holding
 * the Root, Fleet and Device CA keys, the secure-boot key and the package
 * key (all non-extractable); the CA certificates and chains (DIR/pki/); the
 * broker server certificate and the role client certificates (software keys
 * in 0600 files, since TLS libraries need them); the broker configuration
 * for a loopback mTLS listener on a free port (DIR/broker/), and the public
 * keys others pin (DIR/firmware/rotpk.pem, DIR/pki/package-key.pem).
 */
#ifndef PKI_INIT_H
#define PKI_INIT_H

struct pki_init_opts {
    const char *dir;        /* state directory (required) */
    int force;              /* move an existing PKI aside instead of refusing */
    const char *host;       /* broker listen address; default 127.0.0.1 */
    int port;               /* broker port; 0 = pick a free one */
    const char *module;     /* PKCS#11 module; NULL = SoftHSM2 in DIR/hsm */
    const char *plugin;     /* nusec_auth plugin path; NULL = the built one */
    unsigned validity_days; /* leaf certificates; CAs get 10x; 0 = 825 */
};

/*
 * Run the whole initialisation. Returns NU_OK; NU_ERR_EXISTS when DIR already
 * holds a PKI and force is 0 (nothing is touched); NU_ERR_HSM / CRYPTO / IO /
 * PERMISSION on failure (a failed run leaves no half PKI that a second run
 * would mistake for a complete one: the completion marker is written last).
 */
int pki_init_run(const struct pki_init_opts *opts);

/*
 * Substitute @NAME@ placeholders in `tmpl` from the NULL-terminated
 * name/value pair list `vars` ({"PORT", "1883", NULL}). Unknown placeholders
 * are an error (NU_ERR_CONFIG), so a template and its filler cannot drift.
 * *out is malloc'd; the caller frees it.
 */
int pki_fill_template(const char *tmpl, const char *const *vars, char **out);

/* Bind port 0 on `host` and report the port the kernel chose. */
int pki_free_port(const char *host, int *out_port);

#endif
