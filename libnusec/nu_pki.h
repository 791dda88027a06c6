/*
 * nu_pki — names of the OEM's HSM objects and how a program opens the HSM
 * of a state directory. `nusec pki init` creates what these names refer to;
 * the cloud agent and the tools open it the same way.
 */
#ifndef NU_PKI_H
#define NU_PKI_H

#include "nu_hsm.h"

/* Token label of a PKI made before labels were per PKI (no DIR/hsm/pkcs11.conf). */
#define NU_PKI_TOKEN_LABEL "nusec"

/* Key labels inside the token (CKA_LABEL = CKA_ID). */
#define NU_PKI_KEY_ROOT_CA "root-ca"
#define NU_PKI_KEY_FLEET_CA "fleet-ca"
#define NU_PKI_KEY_DEVICE_CA "device-ca"
#define NU_PKI_KEY_SECURE_BOOT "secure-boot"
#define NU_PKI_KEY_PACKAGE "package"
#define NU_PKI_KEY_AUDIT "audit" /* signs the audit chain's checkpoints */

/* Roles: the OU of a client certificate; the broker's ACL is keyed on them. */
#define NU_ROLE_CLOUD "cloud"
#define NU_ROLE_STATION "station"
#define NU_ROLE_MONITOR "monitor"
#define NU_ROLE_OEM "oem"
#define NU_ROLE_PROGRAMMER "programmer"
#define NU_ROLE_BROKER "broker"

/* Subject O of every certificate NuSEC issues. */
#define NU_PKI_ORGANIZATION "NuSEC"

/*
 * How every program of a state directory opens its HSM: DIR/hsm/pkcs11.conf,
 * written by `nusec pki init`, one "key = value" per line, '#' comments:
 *
 *   module = /usr/lib/x86_64-linux-gnu/pkcs11/libtpm2_pkcs11.so
 *   token-label = line-1          (or: slot = 1, for a token without label)
 *   pin-file = /etc/oem/hsm-pin   (optional: default DIR/hsm/pin, then
 *                                  $NUSEC_HSM_PIN)
 *   init-args = configdir='sql:/etc/pki/nssdb'   (optional: C_Initialize
 *                                  pReserved, verbatim to the end of line)
 *   env TPM2_PKCS11_TCTI = tabrmd:bus_type=session   (set before the module
 *   env TPM2_PKCS11_STORE = /var/lib/tpm2-pkcs11      is loaded; repeatable)
 *
 * A directory without the file is one made before it existed: module from
 * DIR/hsm/module or the default, token NU_PKI_TOKEN_LABEL, SOFTHSM2_CONF =
 * DIR/hsm/softhsm2.conf when present.
 */
#define NU_PKI_HSM_CONF_FILE "pkcs11.conf"
#define NU_PKI_HSM_ENV_MAX 8
#define NU_PKI_HSM_VALUE_MAX 1024

struct nu_pki_hsm_conf {
    char module[NU_PKI_HSM_VALUE_MAX];
    char token_label[NU_HSM_TOKEN_LABEL_MAX + 1]; /* "" with use_slot */
    int use_slot;
    unsigned long slot;
    char pin_file[NU_PKI_HSM_VALUE_MAX];  /* "" = DIR/hsm/pin, else $NUSEC_HSM_PIN */
    char init_args[NU_PKI_HSM_VALUE_MAX]; /* "" = none */
    unsigned n_env;
    struct {
        char name[64];
        char value[NU_PKI_HSM_VALUE_MAX];
    } env[NU_PKI_HSM_ENV_MAX];
};

/* Parse the text of a pkcs11.conf into *out (zeroed first). Unknown keys,
 * malformed lines, bad environment names, over-long values, too many env
 * lines and a missing module or token are CONFIG errors (logged with the
 * line number). */
int nu_pki_hsm_conf_parse(const char *text, size_t len, struct nu_pki_hsm_conf *out);

/* Load DIR/hsm/pkcs11.conf, or the defaults of an older directory (above).
 * Errors: CONFIG, IO, TOO_LARGE. */
int nu_pki_hsm_conf_load(const char *dir, struct nu_pki_hsm_conf *out);

/* Write *conf as DIR/hsm/pkcs11.conf (0600, atomically). Values must not
 * hold newlines (INVALID_ARG). Errors: INVALID_ARG, IO, TOO_LARGE. */
int nu_pki_hsm_conf_save(const char *dir, const struct nu_pki_hsm_conf *conf);

/* setenv() every env line of *conf (before the module is loaded). */
int nu_pki_hsm_conf_apply_env(const struct nu_pki_hsm_conf *conf);

/* Add "NAME=VALUE" to conf->env. Errors: INVALID_ARG (no '=', bad name),
 * TOO_LARGE (value, or more than NU_PKI_HSM_ENV_MAX). */
int nu_pki_hsm_conf_add_env(struct nu_pki_hsm_conf *conf, const char *name_eq_value);

/*
 * Open the HSM of state directory `dir` as its pkcs11.conf says (environment
 * first, then module with its init-args, token by label or slot), with the
 * user PIN from the conf's pin-file, else DIR/hsm/pin (0600), else
 * $NUSEC_HSM_PIN. Caller closes *out_hsm with nu_hsm_close().
 * Errors: those of nu_pki_hsm_conf_load(), nu_hsm_pin_load() and
 * nu_hsm_open(), TOO_LARGE (paths).
 */
int nu_pki_open_hsm(const char *dir, unsigned sessions, struct nu_hsm **out_hsm);

/*
 * The module of DIR's HSM into out[cap]: from pkcs11.conf, else DIR/hsm/module
 * (trimmed), else the default module path. Errors: CONFIG, TOO_LARGE, IO.
 */
int nu_pki_module_path(const char *dir, char *out, size_t cap);

#endif
