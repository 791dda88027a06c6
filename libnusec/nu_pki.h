/*
 * nu_pki — names of the OEM's HSM objects and how a program opens the HSM
 * of a state directory. `nusec pki init` creates what these names refer to;
 * the cloud agent and the tools open it the same way.
 */
#ifndef NU_PKI_H
#define NU_PKI_H

#include "nu_hsm.h"

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
 * Open the HSM of state directory `dir`: the PKCS#11 module named in
 * DIR/hsm/module (else the default SoftHSM2, with SOFTHSM2_CONF pointed at
 * DIR/hsm/softhsm2.conf when that file exists), the token NU_PKI_TOKEN_LABEL,
 * the user PIN from DIR/hsm/pin (0600) or $NUSEC_HSM_PIN if that file is
 * absent. Caller closes *out_hsm with nu_hsm_close().
 * Errors: those of nu_hsm_pin_load() and nu_hsm_open(), TOO_LARGE (paths).
 */
int nu_pki_open_hsm(const char *dir, unsigned sessions, struct nu_hsm **out_hsm);

/*
 * Read DIR/hsm/module if present into out[cap] (trimmed); else copy the
 * default module path. Errors: TOO_LARGE, IO.
 */
int nu_pki_module_path(const char *dir, char *out, size_t cap);

#endif
