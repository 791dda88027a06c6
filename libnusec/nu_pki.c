/* nu_pki — how the programs of a state directory open its HSM. See nu_pki.h. */
#include "nu_pki.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ pkcs11.conf */

static int pki__conf_path(const char *dir, char *out, size_t cap)
{
    char hsm[PATH_MAX];
    int rc = nu_paths_get(dir, NU_PATH_HSM, hsm, sizeof(hsm));
    return rc ? rc : nu_path_fmt(out, cap, "%s/%s", hsm, NU_PKI_HSM_CONF_FILE);
}

static int pki__env_name_ok(const char *name, size_t n)
{
    if (n == 0 || n >= sizeof(((struct nu_pki_hsm_conf *)0)->env[0].name) ||
        !(isalpha((unsigned char)name[0]) || name[0] == '_'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!isalnum((unsigned char)name[i]) && name[i] != '_')
            return 0;
    }
    return 1;
}

/* Copy n bytes into a fixed field; TOO_LARGE if they do not fit. */
static int pki__set(char *field, size_t cap, const char *v, size_t n)
{
    if (n >= cap)
        return NU_ERR_TOO_LARGE;
    memcpy(field, v, n);
    field[n] = '\0';
    return NU_OK;
}

static int pki__env_add(struct nu_pki_hsm_conf *c, const char *name, size_t nlen, const char *value,
                        size_t vlen)
{
    if (!pki__env_name_ok(name, nlen))
        return NU_ERR_INVALID_ARG;
    if (c->n_env >= NU_PKI_HSM_ENV_MAX)
        return NU_ERR_TOO_LARGE;
    int rc = pki__set(c->env[c->n_env].value, sizeof(c->env[0].value), value, vlen);
    if (!rc)
        rc = pki__set(c->env[c->n_env].name, sizeof(c->env[0].name), name, nlen);
    if (!rc)
        c->n_env++;
    return rc;
}

int nu_pki_hsm_conf_add_env(struct nu_pki_hsm_conf *conf, const char *name_eq_value)
{
    const char *eq = name_eq_value ? strchr(name_eq_value, '=') : NULL;
    if (!conf || !eq || strchr(name_eq_value, '\n'))
        return NU_ERR_INVALID_ARG;
    return pki__env_add(conf, name_eq_value, (size_t)(eq - name_eq_value), eq + 1, strlen(eq + 1));
}

static void pki__trim(const char **b, const char **e)
{
    while (*b < *e && isspace((unsigned char)**b))
        (*b)++;
    while (*e > *b && isspace((unsigned char)(*e)[-1]))
        (*e)--;
}

/* One "key = value" line (already trimmed, not a comment). */
static int pki__conf_line(struct nu_pki_hsm_conf *c, const char *b, const char *e)
{
    const char *eq = memchr(b, '=', (size_t)(e - b));
    if (!eq)
        return NU_ERR_CONFIG;
    const char *kb = b, *ke = eq, *vb = eq + 1, *ve = e;
    pki__trim(&kb, &ke);
    pki__trim(&vb, &ve);
    size_t kn = (size_t)(ke - kb), vn = (size_t)(ve - vb);
    if (kn > 4 && memcmp(kb, "env", 3) == 0 && isspace((unsigned char)kb[3])) {
        const char *nb = kb + 3;
        pki__trim(&nb, &ke);
        return pki__env_add(c, nb, (size_t)(ke - nb), vb, vn);
    }
#define PKI__KEY(k) (kn == sizeof(k) - 1 && memcmp(kb, k, kn) == 0)
    if (PKI__KEY("module"))
        return pki__set(c->module, sizeof(c->module), vb, vn);
    if (PKI__KEY("token-label"))
        return pki__set(c->token_label, sizeof(c->token_label), vb, vn);
    if (PKI__KEY("pin-file"))
        return pki__set(c->pin_file, sizeof(c->pin_file), vb, vn);
    if (PKI__KEY("init-args"))
        return pki__set(c->init_args, sizeof(c->init_args), vb, vn);
    if (PKI__KEY("slot")) {
        char num[24], *end = NULL;
        if (pki__set(num, sizeof(num), vb, vn) || !isdigit((unsigned char)num[0]))
            return NU_ERR_CONFIG;
        errno = 0;
        c->slot = strtoul(num, &end, 10);
        c->use_slot = 1;
        return errno || *end ? NU_ERR_CONFIG : NU_OK;
    }
#undef PKI__KEY
    return NU_ERR_CONFIG;
}

int nu_pki_hsm_conf_parse(const char *text, size_t len, struct nu_pki_hsm_conf *out)
{
    if (!text || !out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    unsigned line = 0;
    for (const char *p = text, *end = text + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *b = p, *e = nl ? nl : end;
        p = nl ? nl + 1 : end;
        line++;
        pki__trim(&b, &e);
        if (b == e || *b == '#')
            continue;
        if (memchr(b, '\0', (size_t)(e - b)) || pki__conf_line(out, b, e) != NU_OK) {
            nu_error("hsm: pkcs11.conf line %u is not valid", line);
            return NU_ERR_CONFIG;
        }
    }
    if (!out->module[0] || (!out->token_label[0] && !out->use_slot)) {
        nu_error("hsm: pkcs11.conf names no module or no token (token-label or slot)");
        return NU_ERR_CONFIG;
    }
    return NU_OK;
}

/* The defaults of a directory made before pkcs11.conf existed. */
static int pki__conf_legacy(const char *dir, struct nu_pki_hsm_conf *out)
{
    char path[PATH_MAX], conf[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    memset(out, 0, sizeof(*out));
    memcpy(out->token_label, NU_PKI_TOKEN_LABEL, sizeof(NU_PKI_TOKEN_LABEL));
    int rc = nu_paths_get(dir, NU_PATH_HSM_MODULE, path, sizeof(path));
    if (!rc)
        rc = nu_paths_get(dir, NU_PATH_HSM_CONF, conf, sizeof(conf));
    if (rc)
        return rc;
    rc = nu_file_read(path, PATH_MAX, &text, &len);
    if (rc == NU_ERR_NOT_FOUND) {
        rc = nu_path_fmt(out->module, sizeof(out->module), "%s", nu_hsm_default_module());
    } else if (!rc) {
        while (len && (text[len - 1] == '\n' || text[len - 1] == ' ' || text[len - 1] == '\r'))
            text[--len] = 0;
        rc = len ? pki__set(out->module, sizeof(out->module), (char *)text, len) : NU_ERR_CONFIG;
    }
    free(text);
    /* The state directory's own SoftHSM2 token is the one this DIR means,
     * whatever SOFTHSM2_CONF the caller's environment had. */
    if (!rc && nu_path_exists(conf))
        rc = pki__env_add(out, "SOFTHSM2_CONF", 13, conf, strlen(conf));
    return rc;
}

int nu_pki_hsm_conf_load(const char *dir, struct nu_pki_hsm_conf *out)
{
    char path[PATH_MAX];
    uint8_t *text = NULL;
    size_t len = 0;
    if (!dir || !out)
        return NU_ERR_INVALID_ARG;
    int rc = pki__conf_path(dir, path, sizeof(path));
    if (rc)
        return rc;
    rc = nu_file_read(path, 64 * 1024, &text, &len);
    if (rc == NU_ERR_NOT_FOUND)
        return pki__conf_legacy(dir, out);
    if (!rc)
        rc = nu_pki_hsm_conf_parse((const char *)text, len, out);
    free(text);
    return rc;
}

static int pki__line_ok(const char *v)
{
    return !strchr(v, '\n') && !strchr(v, '\r');
}

int nu_pki_hsm_conf_save(const char *dir, const struct nu_pki_hsm_conf *c)
{
    char path[PATH_MAX];
    if (!dir || !c || !c->module[0] || (!c->token_label[0] && !c->use_slot) ||
        !pki__line_ok(c->module) || !pki__line_ok(c->token_label) || !pki__line_ok(c->pin_file) ||
        !pki__line_ok(c->init_args) || c->n_env > NU_PKI_HSM_ENV_MAX)
        return NU_ERR_INVALID_ARG;
    size_t cap = 512 + (4 + NU_PKI_HSM_ENV_MAX) * (NU_PKI_HSM_VALUE_MAX + 80);
    char *text = malloc(cap);
    if (!text)
        return NU_ERR_NOMEM;
    int n = snprintf(text, cap,
                     "# How NuSEC programs open this PKI's HSM (written by nusec pki init).\n"
                     "# See docs/hsm.md.\nmodule = %s\n",
                     c->module);
    if (c->token_label[0])
        n += snprintf(text + n, cap - (size_t)n, "token-label = %s\n", c->token_label);
    else
        n += snprintf(text + n, cap - (size_t)n, "slot = %lu\n", c->slot);
    if (c->pin_file[0])
        n += snprintf(text + n, cap - (size_t)n, "pin-file = %s\n", c->pin_file);
    if (c->init_args[0])
        n += snprintf(text + n, cap - (size_t)n, "init-args = %s\n", c->init_args);
    int rc = NU_OK;
    for (unsigned i = 0; i < c->n_env && !rc; i++) {
        if (!pki__line_ok(c->env[i].value) ||
            !pki__env_name_ok(c->env[i].name, strlen(c->env[i].name)))
            rc = NU_ERR_INVALID_ARG;
        else
            n += snprintf(text + n, cap - (size_t)n, "env %s = %s\n", c->env[i].name,
                          c->env[i].value);
    }
    if (!rc)
        rc = pki__conf_path(dir, path, sizeof(path));
    if (!rc)
        rc = nu_file_write_atomic(path, text, (size_t)n, 0600);
    free(text);
    return rc;
}

int nu_pki_hsm_conf_apply_env(const struct nu_pki_hsm_conf *c)
{
    if (!c)
        return NU_ERR_INVALID_ARG;
    for (unsigned i = 0; i < c->n_env; i++) {
        if (setenv(c->env[i].name, c->env[i].value, 1) != 0)
            return NU_ERR_NOMEM;
    }
    return NU_OK;
}

/* ------------------------------------------------------------------ open */

int nu_pki_module_path(const char *dir, char *out, size_t cap)
{
    struct nu_pki_hsm_conf *c = malloc(sizeof(*c));
    if (!c)
        return NU_ERR_NOMEM;
    int rc = nu_pki_hsm_conf_load(dir, c);
    if (!rc)
        rc = nu_path_fmt(out, cap, "%s", c->module);
    free(c);
    return rc;
}

int nu_pki_open_hsm(const char *dir, unsigned sessions, struct nu_hsm **out_hsm)
{
    if (!dir || !out_hsm)
        return NU_ERR_INVALID_ARG;
    char pin_path[PATH_MAX], pin[NU_HSM_PIN_MAX + 1];
    const char *pin_from = NULL;
    struct nu_pki_hsm_conf *c = malloc(sizeof(*c));
    if (!c)
        return NU_ERR_NOMEM;
    int rc = nu_pki_hsm_conf_load(dir, c);
    if (!rc)
        rc = nu_paths_get(dir, NU_PATH_HSM_PIN, pin_path, sizeof(pin_path));
    if (!rc)
        rc = nu_pki_hsm_conf_apply_env(c);
    if (rc)
        goto out;
    if (c->pin_file[0])
        pin_from = c->pin_file;
    else if (nu_path_exists(pin_path))
        pin_from = pin_path;
    if ((rc = nu_hsm_pin_load(pin_from, pin, sizeof(pin))))
        goto out;
    struct nu_hsm_opts opts = {
        .module = c->module,
        .token_label = c->use_slot ? NULL : c->token_label,
        .use_slot = c->use_slot,
        .slot = c->slot,
        .pin = pin,
        .sessions = sessions,
        .init_args = c->init_args[0] ? c->init_args : NULL,
    };
    rc = nu_hsm_open(&opts, out_hsm);
    nu_zero(pin, sizeof(pin));
out:
    free(c);
    return rc;
}
