#include "nu_pki.h"

#include "nu_err.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

int nu_pki_module_path(const char *dir, char *out, size_t cap)
{
    char path[PATH_MAX];
    int rc = nu_paths_get(dir, NU_PATH_HSM_MODULE, path, sizeof(path));
    if (rc)
        return rc;
    uint8_t *text = NULL;
    size_t len = 0;
    rc = nu_file_read(path, PATH_MAX, &text, &len);
    if (rc == NU_ERR_NOT_FOUND)
        return nu_path_fmt(out, cap, "%s", nu_hsm_default_module());
    if (rc)
        return rc;
    while (len && (text[len - 1] == '\n' || text[len - 1] == ' ' || text[len - 1] == '\r'))
        text[--len] = 0;
    rc = len ? nu_path_fmt(out, cap, "%s", (char *)text) : NU_ERR_CONFIG;
    free(text);
    return rc;
}

int nu_pki_open_hsm(const char *dir, unsigned sessions, struct nu_hsm **out_hsm)
{
    if (!dir || !out_hsm)
        return NU_ERR_INVALID_ARG;
    char module[PATH_MAX], conf[PATH_MAX], pin_path[PATH_MAX], pin[NU_HSM_PIN_MAX + 1];
    int rc = nu_pki_module_path(dir, module, sizeof(module));
    if (!rc)
        rc = nu_paths_get(dir, NU_PATH_HSM_CONF, conf, sizeof(conf));
    if (!rc)
        rc = nu_paths_get(dir, NU_PATH_HSM_PIN, pin_path, sizeof(pin_path));
    if (rc)
        return rc;
    /* The state directory's own SoftHSM2 token is the one this DIR means,
     * whatever SOFTHSM2_CONF the caller's environment had. */
    if (nu_path_exists(conf) && setenv("SOFTHSM2_CONF", conf, 1) != 0)
        return NU_ERR_NOMEM;

    rc = nu_hsm_pin_load(nu_path_exists(pin_path) ? pin_path : NULL, pin, sizeof(pin));
    if (rc)
        return rc;
    struct nu_hsm_opts opts = {
        .module = module,
        .token_label = NU_PKI_TOKEN_LABEL,
        .pin = pin,
        .sessions = sessions,
    };
    rc = nu_hsm_open(&opts, out_hsm);
    nu_zero(pin, sizeof(pin));
    return rc;
}
