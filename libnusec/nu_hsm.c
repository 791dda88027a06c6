/*
 * nu_hsm — PKCS#11 keys. See nu_hsm.h for the contract.
 *
 * Layout: a process-wide registry of loaded modules (hsm__module_*), the
 * session pool of one open token (hsm__borrow / hsm__give_back), object
 * look-ups, then the public functions. Over 1,000 lines on purpose: all of
 * it works on the module registry and on struct nu_hsm's session pool, which
 * a split would have to publish in a private header; the file side (PINs,
 * SoftHSM2 configuration), which needs neither, is nu_hsm_files.c.
 */
#include "nu_hsm.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <p11-kit/pkcs11.h>

#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/settings.h>
#include <wolfssl/wolfcrypt/ecc.h>

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

/* DER of the prime256v1 OID: the CKA_EC_PARAMS of every key we make or accept. */
static const uint8_t hsm__p256_params[] = {0x06, 0x08, 0x2a, 0x86, 0x48,
                                           0xce, 0x3d, 0x03, 0x01, 0x07};

/* ------------------------------------------------------------ module registry */

/*
 * C_Initialize and C_Finalize act on the whole process, per module: a second
 * C_Initialize fails and a C_Finalize pulls the rug from under every other
 * user. So handles on one module share one entry here, reference counted,
 * and the module is finalised when the last handle goes. This list is the one
 * process-wide state of nu_hsm; the mutex makes open/close safe from threads.
 */
struct hsm__module {
    char path[PATH_MAX];
    void *dl;
    CK_FUNCTION_LIST *f;
    int owns_init; /* we initialised it, so we finalise it */
    unsigned refs;
    struct hsm__module *next;
};

static pthread_mutex_t hsm__modules_lock = PTHREAD_MUTEX_INITIALIZER;
static struct hsm__module *hsm__modules;

static int hsm__ckr(const char *what, CK_RV rv)
{
    if (rv == CKR_OK)
        return NU_OK;
    nu_warn("hsm: %s failed: CKR 0x%08lx", what, (unsigned long)rv);
    switch (rv) {
    case CKR_PIN_INCORRECT:
    case CKR_PIN_LOCKED:
    case CKR_PIN_EXPIRED:
    case CKR_PIN_LEN_RANGE:
    case CKR_PIN_INVALID:
        return NU_ERR_PERMISSION;
    case CKR_HOST_MEMORY:
        return NU_ERR_NOMEM;
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_TOKEN_NOT_RECOGNIZED:
    case CKR_SLOT_ID_INVALID:
        return NU_ERR_NOT_FOUND;
    default:
        return NU_ERR_HSM;
    }
}

static int hsm__module_load(const char *path, const char *init_args, struct hsm__module *m)
{
    /* RTLD_NODELETE: a module stays mapped after its last handle closes. Some
     * do not survive a reload in one process (global state in their TSS or
     * crypto libraries), and a leak report needs their symbols at exit. */
    m->dl = dlopen(path, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE);
    if (!m->dl) {
        nu_error("hsm: cannot load PKCS#11 module %s: %s", path, dlerror());
        return NU_ERR_CONFIG;
    }
    CK_C_GetFunctionList get = (CK_C_GetFunctionList)dlsym(m->dl, "C_GetFunctionList");
    if (!get || get(&m->f) != CKR_OK || !m->f) {
        nu_error("hsm: %s is not a PKCS#11 module (no C_GetFunctionList)", path);
        dlclose(m->dl);
        return NU_ERR_CONFIG;
    }
    /* Let the module use OS threads' locking: the pool calls it from several threads. */
    CK_C_INITIALIZE_ARGS args = {0};
    args.flags = CKF_OS_LOCKING_OK;
    /* Some modules read their configuration from here (NSS softokn answers
     * CKR_ARGUMENTS_BAD without it); the others ignore it. */
    args.pReserved = (void *)init_args;
    CK_RV rv = m->f->C_Initialize(&args);
    if (rv == CKR_CRYPTOKI_ALREADY_INITIALIZED) {
        m->owns_init = 0; /* someone else in this process initialised it: not ours to finalise */
    } else if (rv == CKR_OK) {
        m->owns_init = 1;
    } else {
        dlclose(m->dl);
        return hsm__ckr("C_Initialize", rv);
    }
    return NU_OK;
}

static int hsm__module_get(const char *path, const char *init_args, struct hsm__module **out)
{
    char real[PATH_MAX];
    *out = NULL;
    if (!path)
        path = nu_hsm_default_module();
    if (!realpath(path, real)) {
        nu_error("hsm: PKCS#11 module %s: %s", path, strerror(errno));
        return errno == ENOENT || errno == ENOTDIR ? NU_ERR_NOT_FOUND : NU_ERR_CONFIG;
    }
    int rc = NU_OK;
    pthread_mutex_lock(&hsm__modules_lock);
    struct hsm__module *m = hsm__modules;
    while (m && strcmp(m->path, real) != 0)
        m = m->next;
    if (m) {
        m->refs++;
        goto out;
    }
    m = calloc(1, sizeof(*m));
    if (!m) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    memcpy(m->path, real, sizeof(real));
    rc = hsm__module_load(real, init_args, m);
    if (rc != NU_OK) {
        free(m);
        m = NULL;
        goto out;
    }
    m->refs = 1;
    m->next = hsm__modules;
    hsm__modules = m;
out:
    pthread_mutex_unlock(&hsm__modules_lock);
    *out = m;
    return rc;
}

static void hsm__module_put(struct hsm__module *m)
{
    if (!m)
        return;
    pthread_mutex_lock(&hsm__modules_lock);
    if (--m->refs == 0) {
        struct hsm__module **pp = &hsm__modules;
        while (*pp != m)
            pp = &(*pp)->next;
        *pp = m->next;
        if (m->owns_init)
            m->f->C_Finalize(NULL);
        dlclose(m->dl);
        free(m);
    }
    pthread_mutex_unlock(&hsm__modules_lock);
}

/* ------------------------------------------------------------------- tokens */

/* PKCS#11 labels are fixed 32-byte fields padded with spaces. */
static void hsm__pad_label(const char *label, CK_UTF8CHAR out[NU_HSM_TOKEN_LABEL_MAX])
{
    memset(out, ' ', NU_HSM_TOKEN_LABEL_MAX);
    memcpy(out, label, strlen(label));
}

static int hsm__token_label_ok(const char *label)
{
    size_t n = label ? strlen(label) : 0;
    return n > 0 && n <= NU_HSM_TOKEN_LABEL_MAX;
}

static int hsm__pin_ok(const char *pin)
{
    size_t n = pin ? strlen(pin) : 0;
    return n > 0 && n <= NU_HSM_PIN_MAX;
}

/* A token is named by label or by slot; a label must fit the 32-byte field. */
static int hsm__names_token(const struct nu_hsm_opts *o)
{
    return o->use_slot || hsm__token_label_ok(o->token_label);
}

static const char *hsm__token_name(const struct nu_hsm_opts *o, char *buf, size_t cap)
{
    if (o->use_slot)
        snprintf(buf, cap, "in slot %lu", o->slot);
    else
        snprintf(buf, cap, "labelled '%s'", o->token_label ? o->token_label : "");
    return buf;
}

static void hsm__info_from(CK_SLOT_ID slot, const CK_TOKEN_INFO *ti, struct nu_hsm_token_info *out)
{
    size_t n = sizeof(ti->label);
    memset(out, 0, sizeof(*out));
    out->slot = (unsigned long)slot;
    while (n > 0 && (ti->label[n - 1] == ' ' || ti->label[n - 1] == '\0'))
        n--;
    memcpy(out->label, ti->label, n);
    out->initialized = (ti->flags & CKF_TOKEN_INITIALIZED) != 0;
    out->user_pin_initialized = (ti->flags & CKF_USER_PIN_INITIALIZED) != 0;
    out->min_pin_len = (unsigned long)ti->ulMinPinLen;
    out->max_pin_len = (unsigned long)ti->ulMaxPinLen;
}

/*
 * Slot of the initialised token the options name, by label or by slot id
 * (found, slot, info), and the first slot whose token is not initialised yet
 * (has_free, free_slot, free_info).
 */
struct hsm__slots {
    int found;
    CK_SLOT_ID slot;
    CK_TOKEN_INFO info;
    int has_free;
    CK_SLOT_ID free_slot;
    CK_TOKEN_INFO free_info;
};

static int hsm__slot_matches(const struct nu_hsm_opts *o, CK_SLOT_ID id, const CK_TOKEN_INFO *ti)
{
    CK_UTF8CHAR want[NU_HSM_TOKEN_LABEL_MAX];
    if (o->use_slot)
        return id == (CK_SLOT_ID)o->slot;
    if (!o->token_label)
        return 0;
    hsm__pad_label(o->token_label, want);
    return memcmp(ti->label, want, sizeof(want)) == 0;
}

static int hsm__scan_slots(CK_FUNCTION_LIST *f, const struct nu_hsm_opts *o, struct hsm__slots *out)
{
    CK_SLOT_ID *slots = NULL;
    CK_ULONG n = 0;
    memset(out, 0, sizeof(*out));
    int rc = hsm__ckr("C_GetSlotList", f->C_GetSlotList(CK_TRUE, NULL, &n));
    if (rc != NU_OK || n == 0)
        goto out;
    slots = calloc(n, sizeof(*slots));
    if (!slots) {
        rc = NU_ERR_NOMEM;
        goto out;
    }
    rc = hsm__ckr("C_GetSlotList", f->C_GetSlotList(CK_TRUE, slots, &n));
    for (CK_ULONG i = 0; rc == NU_OK && i < n; i++) {
        CK_TOKEN_INFO ti;
        if (f->C_GetTokenInfo(slots[i], &ti) != CKR_OK)
            continue; /* a token that vanished or errs is simply not ours */
        if (!(ti.flags & CKF_TOKEN_INITIALIZED)) {
            if (!out->has_free) {
                out->has_free = 1;
                out->free_slot = slots[i];
                out->free_info = ti;
            }
        } else if (hsm__slot_matches(o, slots[i], &ti)) {
            if (out->found) {
                /* Which one holds our keys cannot be told: the first one found
                 * could be another's token given our label. */
                nu_error("hsm: two tokens labelled '%s' (slots %lu and %lu): name the slot "
                         "instead",
                         o->token_label ? o->token_label : "", (unsigned long)out->slot,
                         (unsigned long)slots[i]);
                rc = NU_ERR_EXISTS;
                break;
            }
            out->found = 1;
            out->slot = slots[i];
            out->info = ti;
        }
    }
out:
    free(slots);
    return rc;
}

/* SO work on a freshly initialised token: set the user PIN. */
static int hsm__init_user_pin(CK_FUNCTION_LIST *f, CK_SLOT_ID slot, const char *so_pin,
                              const char *user_pin)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    int rc = hsm__ckr("C_OpenSession",
                      f->C_OpenSession(slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    if (rc != NU_OK)
        return rc;
    rc = hsm__ckr("C_Login(SO)",
                  f->C_Login(s, CKU_SO, (CK_UTF8CHAR *)so_pin, (CK_ULONG)strlen(so_pin)));
    if (rc != NU_OK)
        goto out;
    rc =
        hsm__ckr("C_InitPIN", f->C_InitPIN(s, (CK_UTF8CHAR *)user_pin, (CK_ULONG)strlen(user_pin)));
    f->C_Logout(s);
out:
    f->C_CloseSession(s);
    return rc;
}

/* ------------------------------------------------------------- session pool */

struct hsm__session {
    CK_SESSION_HANDLE h;
    int busy;
    int stale; /* the token dropped it (or its login): reopen before next use */
};

struct nu_hsm {
    struct hsm__module *mod;
    CK_FUNCTION_LIST *f;
    CK_SLOT_ID slot;
    pthread_mutex_t lock;
    pthread_cond_t freed;
    unsigned n_sessions;
    struct hsm__session sessions[NU_HSM_SESSIONS_MAX];
    /* Kept to log in again when a network HSM drops a session; wiped on close. */
    char pin[NU_HSM_PIN_MAX + 1];
    /* The token refused that PIN once: never offered again in this process
     * (each try would count toward the token's lockout). */
    int pin_refused;
};

struct nu_hsm_key {
    struct nu_hsm *hsm;
    CK_OBJECT_HANDLE priv; /* atomic: found again by any signing thread */
    char label[NU_HSM_KEY_LABEL_MAX + 1];
    struct nu_signer signer;
};

/* Failures after which a session is no longer usable and must be reopened. */
static int hsm__rv_stale(CK_RV rv)
{
    switch (rv) {
    case CKR_SESSION_HANDLE_INVALID:
    case CKR_SESSION_CLOSED:
    case CKR_USER_NOT_LOGGED_IN:
    case CKR_DEVICE_REMOVED:
    case CKR_DEVICE_ERROR:
    case CKR_TOKEN_NOT_PRESENT:
    case CKR_OPERATION_ACTIVE:
        return 1;
    default:
        return 0;
    }
}

/* Log in as user on session s (logged in already is fine: login state is
 * per application and token). A PIN the token refused is not offered again. */
static int hsm__login(struct nu_hsm *hsm, CK_SESSION_HANDLE s)
{
    if (__atomic_load_n(&hsm->pin_refused, __ATOMIC_ACQUIRE))
        return NU_ERR_PERMISSION;
    CK_RV rv = hsm->f->C_Login(s, CKU_USER, (CK_UTF8CHAR *)hsm->pin, (CK_ULONG)strlen(hsm->pin));
    if (rv == CKR_OK || rv == CKR_USER_ALREADY_LOGGED_IN)
        return NU_OK;
    int rc = hsm__ckr("C_Login", rv);
    if (rc == NU_ERR_PERMISSION && !__atomic_exchange_n(&hsm->pin_refused, 1, __ATOMIC_ACQ_REL))
        nu_error("hsm: the token refused the PIN: no further login until a restart with the "
                 "right one");
    return rc;
}

/* Open a session on the token and make sure it is logged in as user. Login
 * state is per application and token, so all but the first session find it
 * already logged in. */
static int hsm__session_open(struct nu_hsm *hsm, CK_SESSION_HANDLE *out)
{
    CK_SESSION_HANDLE s = CK_INVALID_HANDLE;
    if (__atomic_load_n(&hsm->pin_refused, __ATOMIC_ACQUIRE))
        return NU_ERR_PERMISSION;
    int rc = hsm__ckr(
        "C_OpenSession",
        hsm->f->C_OpenSession(hsm->slot, CKF_SERIAL_SESSION | CKF_RW_SESSION, NULL, NULL, &s));
    if (rc != NU_OK)
        return rc;
    if ((rc = hsm__login(hsm, s)) != NU_OK) {
        hsm->f->C_CloseSession(s);
        return rc;
    }
    *out = s;
    return NU_OK;
}

/* Borrow a session for one operation, waiting while all are busy. */
static int hsm__borrow(struct nu_hsm *hsm, unsigned *out_idx, CK_SESSION_HANDLE *out_h)
{
    unsigned i = 0;
    pthread_mutex_lock(&hsm->lock);
    for (;;) {
        for (i = 0; i < hsm->n_sessions && hsm->sessions[i].busy; i++)
            ;
        if (i < hsm->n_sessions)
            break;
        pthread_cond_wait(&hsm->freed, &hsm->lock);
    }
    struct hsm__session *s = &hsm->sessions[i];
    s->busy = 1;
    int stale = s->stale;
    pthread_mutex_unlock(&hsm->lock);

    if (stale) {
        /* Reopened outside the lock: a slow HSM must not block the other sessions. */
        hsm->f->C_CloseSession(s->h);
        s->h = CK_INVALID_HANDLE;
        int rc = hsm__session_open(hsm, &s->h);
        if (rc != NU_OK) {
            pthread_mutex_lock(&hsm->lock);
            s->busy = 0;
            pthread_cond_signal(&hsm->freed);
            pthread_mutex_unlock(&hsm->lock);
            return rc;
        }
        s->stale = 0;
    }
    *out_idx = i;
    *out_h = s->h;
    return NU_OK;
}

/* Return a borrowed session; `rv` is the last status it produced. */
static void hsm__give_back(struct nu_hsm *hsm, unsigned idx, CK_RV rv)
{
    pthread_mutex_lock(&hsm->lock);
    hsm->sessions[idx].busy = 0;
    if (hsm__rv_stale(rv))
        hsm->sessions[idx].stale = 1;
    pthread_cond_signal(&hsm->freed);
    pthread_mutex_unlock(&hsm->lock);
}

/* ------------------------------------------------------------------ objects */

static int hsm__key_label_ok(const char *label)
{
    size_t n = label ? strlen(label) : 0;
    if (n == 0 || n > NU_HSM_KEY_LABEL_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (label[i] < 0x20 || label[i] > 0x7e)
            return 0;
    }
    return 1;
}

/*
 * Find objects labelled `label` (of class *cls, or any class when cls is
 * NULL). *out_count is 0, 1 or 2 ("more than one"); *out_obj is the first.
 */
static CK_RV hsm__find(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, const CK_OBJECT_CLASS *cls,
                       const char *label, CK_OBJECT_HANDLE *out_obj, CK_ULONG *out_count)
{
    CK_ATTRIBUTE tmpl[2] = {
        {CKA_LABEL, (void *)label, (CK_ULONG)strlen(label)},
        {CKA_CLASS, (void *)cls, sizeof(*cls)},
    };
    CK_OBJECT_HANDLE found[2] = {CK_INVALID_HANDLE, CK_INVALID_HANDLE};
    *out_count = 0;
    CK_RV rv = f->C_FindObjectsInit(s, tmpl, cls ? 2 : 1);
    if (rv != CKR_OK)
        return rv;
    rv = f->C_FindObjects(s, found, 2, out_count);
    CK_RV rv2 = f->C_FindObjectsFinal(s);
    if (rv == CKR_OK)
        rv = rv2;
    *out_obj = found[0];
    return rv;
}

/* The one object of class `cls` labelled `label`. NOT_FOUND / HSM (duplicates). */
static int hsm__find_one(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_CLASS cls,
                         const char *label, CK_OBJECT_HANDLE *out_obj, CK_RV *out_rv)
{
    CK_ULONG count = 0;
    *out_rv = hsm__find(f, s, &cls, label, out_obj, &count);
    if (*out_rv != CKR_OK)
        return hsm__ckr("C_FindObjects", *out_rv);
    if (count == 0)
        return NU_ERR_NOT_FOUND;
    if (count > 1) {
        nu_error("hsm: several keys are labelled '%s'; refusing to guess", label);
        return NU_ERR_HSM;
    }
    return NU_OK;
}

/*
 * The public point of an EC public key object. Tokens return CKA_EC_POINT as
 * a DER OCTET STRING (PKCS#11 2.40; SoftHSM2) or, some older ones, raw: accept
 * both, and only prime256v1 keys.
 */
static int hsm__read_pub(CK_FUNCTION_LIST *f, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE pub,
                         uint8_t out[NU_P256_PUB_LEN], CK_RV *out_rv)
{
    uint8_t point[80], params[32];
    CK_ATTRIBUTE tmpl[2] = {
        {CKA_EC_POINT, point, sizeof(point)},
        {CKA_EC_PARAMS, params, sizeof(params)},
    };
    *out_rv = f->C_GetAttributeValue(s, pub, tmpl, 2);
    if (*out_rv != CKR_OK)
        return hsm__ckr("C_GetAttributeValue(EC_POINT)", *out_rv);
    if (tmpl[1].ulValueLen != sizeof(hsm__p256_params) ||
        memcmp(params, hsm__p256_params, sizeof(hsm__p256_params)) != 0) {
        nu_error("hsm: key is not on P-256");
        return NU_ERR_HSM;
    }
    const uint8_t *p = point;
    CK_ULONG n = tmpl[0].ulValueLen;
    if (n == NU_P256_PUB_LEN + 2 && p[0] == 0x04 && p[1] == NU_P256_PUB_LEN) {
        p += 2;
        n -= 2;
    }
    if (n != NU_P256_PUB_LEN || nu_p256_pub_check(p) != NU_OK) {
        nu_error("hsm: token returned a malformed EC point");
        return NU_ERR_HSM;
    }
    memcpy(out, p, NU_P256_PUB_LEN);
    return NU_OK;
}

/* Private key handle and public point of key `label`, on a borrowed session. */
static int hsm__lookup_key(struct nu_hsm *hsm, CK_SESSION_HANDLE s, const char *label,
                           CK_OBJECT_HANDLE *out_priv, uint8_t out_pub[NU_P256_PUB_LEN],
                           CK_RV *out_rv)
{
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE;
    int rc = hsm__find_one(hsm->f, s, CKO_PRIVATE_KEY, label, out_priv, out_rv);
    if (rc != NU_OK)
        return rc;
    rc = hsm__find_one(hsm->f, s, CKO_PUBLIC_KEY, label, &pub, out_rv);
    if (rc == NU_ERR_NOT_FOUND) {
        nu_error("hsm: key '%s' has no public key object", label);
        return NU_ERR_HSM;
    }
    if (rc != NU_OK)
        return rc;
    return hsm__read_pub(hsm->f, s, pub, out_pub, out_rv);
}

/* ------------------------------------------------------------------ public */

int nu_hsm_token_query(const struct nu_hsm_opts *opts, struct nu_hsm_token_info *out_info)
{
    struct hsm__module *m = NULL;
    struct hsm__slots slots;
    char name[64];
    if (!opts || !out_info || (opts->token_label && !hsm__token_label_ok(opts->token_label)))
        return NU_ERR_INVALID_ARG;
    int want_free = !opts->use_slot && !opts->token_label;
    int rc = hsm__module_get(opts->module, opts->init_args, &m);
    if (rc != NU_OK)
        return rc;
    rc = hsm__scan_slots(m->f, opts, &slots);
    if (rc == NU_OK && want_free && !slots.has_free) {
        nu_error("hsm: no free slot to initialise a token in");
        rc = NU_ERR_NOT_FOUND;
    } else if (rc == NU_OK && !want_free && !slots.found) {
        nu_error("hsm: no initialised token %s", hsm__token_name(opts, name, sizeof(name)));
        rc = NU_ERR_NOT_FOUND;
    }
    if (rc == NU_OK && want_free)
        hsm__info_from(slots.free_slot, &slots.free_info, out_info);
    else if (rc == NU_OK)
        hsm__info_from(slots.slot, &slots.info, out_info);
    hsm__module_put(m);
    return rc;
}

int nu_hsm_init_token_opts(const struct nu_hsm_opts *opts, const char *so_pin, const char *user_pin,
                           unsigned long *out_slot)
{
    struct hsm__module *m = NULL;
    struct hsm__slots slots;
    struct nu_hsm_token_info info;
    CK_UTF8CHAR padded[NU_HSM_TOKEN_LABEL_MAX];
    if (!opts || opts->use_slot || !hsm__token_label_ok(opts->token_label) ||
        !hsm__pin_ok(so_pin) || !hsm__pin_ok(user_pin))
        return NU_ERR_INVALID_ARG;
    const char *label = opts->token_label;
    int rc = hsm__module_get(opts->module, opts->init_args, &m);
    if (rc != NU_OK)
        return rc;
    rc = hsm__scan_slots(m->f, opts, &slots);
    if (rc != NU_OK)
        goto out;
    if (slots.found) {
        nu_error("hsm: a token labelled '%s' exists already", label);
        rc = NU_ERR_EXISTS;
        goto out;
    }
    if (!slots.has_free) {
        nu_error("hsm: no free slot to initialise a token in");
        rc = NU_ERR_NOT_FOUND;
        goto out;
    }
    hsm__info_from(slots.free_slot, &slots.free_info, &info);
    if ((rc = nu_hsm_pin_len_check(&info, strlen(so_pin))) ||
        (rc = nu_hsm_pin_len_check(&info, strlen(user_pin))))
        goto out;
    hsm__pad_label(label, padded);
    rc = hsm__ckr("C_InitToken", m->f->C_InitToken(slots.free_slot, (CK_UTF8CHAR *)so_pin,
                                                   (CK_ULONG)strlen(so_pin), padded));
    if (rc == NU_OK)
        rc = hsm__init_user_pin(m->f, slots.free_slot, so_pin, user_pin);
    if (rc == NU_OK) {
        nu_info("hsm: token '%s' initialised in slot %lu", label, (unsigned long)slots.free_slot);
        if (out_slot)
            *out_slot = (unsigned long)slots.free_slot;
    }
out:
    hsm__module_put(m);
    return rc;
}

int nu_hsm_init_token(const char *module, const char *label, const char *so_pin,
                      const char *user_pin)
{
    struct nu_hsm_opts o = {.module = module, .token_label = label};
    return nu_hsm_init_token_opts(&o, so_pin, user_pin, NULL);
}

static int hsm__open_sessions(struct nu_hsm *hsm, unsigned n)
{
    for (unsigned i = 0; i < n; i++) {
        int rc = hsm__session_open(hsm, &hsm->sessions[i].h);
        if (rc != NU_OK)
            return rc;
        hsm->n_sessions = i + 1;
    }
    return NU_OK;
}

int nu_hsm_open(const struct nu_hsm_opts *opts, struct nu_hsm **out_hsm)
{
    struct hsm__slots slots;
    if (!out_hsm)
        return NU_ERR_INVALID_ARG;
    *out_hsm = NULL;
    if (!opts || !hsm__names_token(opts) || !hsm__pin_ok(opts->pin) ||
        opts->sessions > NU_HSM_SESSIONS_MAX)
        return NU_ERR_INVALID_ARG;
    struct nu_hsm_token_info info;
    char name[64];
    struct nu_hsm *hsm = calloc(1, sizeof(*hsm));
    if (!hsm)
        return NU_ERR_NOMEM;
    pthread_mutex_init(&hsm->lock, NULL);
    pthread_cond_init(&hsm->freed, NULL);
    memcpy(hsm->pin, opts->pin, strlen(opts->pin) + 1);
    int rc = hsm__module_get(opts->module, opts->init_args, &hsm->mod);
    if (rc != NU_OK)
        goto out;
    hsm->f = hsm->mod->f;
    rc = hsm__scan_slots(hsm->f, opts, &slots);
    if (rc == NU_OK && !slots.found) {
        nu_error("hsm: no token %s", hsm__token_name(opts, name, sizeof(name)));
        rc = NU_ERR_NOT_FOUND;
    }
    if (rc != NU_OK)
        goto out;
    hsm->slot = slots.slot;
    /* Say "wrong length" before the token counts a failed login against us. */
    hsm__info_from(slots.slot, &slots.info, &info);
    if ((rc = nu_hsm_pin_len_check(&info, strlen(opts->pin))))
        goto out;
    rc = hsm__open_sessions(hsm, opts->sessions ? opts->sessions : NU_HSM_SESSIONS_DEFAULT);
out:
    if (rc != NU_OK) {
        nu_hsm_close(hsm);
        return rc;
    }
    *out_hsm = hsm;
    return NU_OK;
}

void nu_hsm_close(struct nu_hsm *hsm)
{
    if (!hsm)
        return;
    /* No C_Logout: login is shared by every session of this process on the
     * token, and the token logs out by itself when its last session closes. */
    for (unsigned i = 0; i < hsm->n_sessions; i++)
        hsm->f->C_CloseSession(hsm->sessions[i].h);
    hsm__module_put(hsm->mod);
    nu_zero(hsm->pin, sizeof(hsm->pin));
    pthread_cond_destroy(&hsm->freed);
    pthread_mutex_destroy(&hsm->lock);
    free(hsm);
}

static int hsm__refuse_weak(struct nu_hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                            const char *label, CK_RV *out_rv);

static int hsm__generate(struct nu_hsm *hsm, CK_SESSION_HANDLE s, const char *label,
                         CK_OBJECT_HANDLE *out_pub, CK_OBJECT_HANDLE *out_priv, CK_RV *out_rv)
{
    CK_BBOOL yes = CK_TRUE, no = CK_FALSE;
    CK_ULONG llen = (CK_ULONG)strlen(label);
    CK_MECHANISM mech = {CKM_EC_KEY_PAIR_GEN, NULL, 0};
    /* Only what NuSEC needs. The public key's usage is left to the token
     * (we verify with its point in software, never with C_Verify), and the
     * private key says nothing about DECRYPT / UNWRAP (meaningless for ECDSA):
     * TPM 2.0 has one flag for sign and decrypt, and tpm2-pkcs11 refuses
     * VERIFY=TRUE with DECRYPT=FALSE ("attr mismatch", CKR_GENERAL_ERROR).
     * What the token made is checked afterwards (nu_hsm_keygen_p256). */
    CK_ATTRIBUTE pub[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},
        {CKA_EC_PARAMS, (void *)hsm__p256_params, sizeof(hsm__p256_params)},
        {CKA_LABEL, (void *)label, llen},
        {CKA_ID, (void *)label, llen},
    };
    CK_ATTRIBUTE priv[] = {
        {CKA_TOKEN, &yes, sizeof(yes)},     {CKA_PRIVATE, &yes, sizeof(yes)},
        {CKA_SENSITIVE, &yes, sizeof(yes)}, {CKA_EXTRACTABLE, &no, sizeof(no)},
        {CKA_SIGN, &yes, sizeof(yes)},      {CKA_DERIVE, &no, sizeof(no)},
        {CKA_LABEL, (void *)label, llen},   {CKA_ID, (void *)label, llen},
    };
    *out_rv = hsm->f->C_GenerateKeyPair(s, &mech, pub, sizeof(pub) / sizeof(pub[0]), priv,
                                        sizeof(priv) / sizeof(priv[0]), out_pub, out_priv);
    return hsm__ckr("C_GenerateKeyPair", *out_rv);
}

int nu_hsm_keygen_p256(struct nu_hsm *hsm, const char *label, uint8_t out_pub[NU_P256_PUB_LEN])
{
    if (!hsm || !hsm__key_label_ok(label))
        return NU_ERR_INVALID_ARG;
    unsigned idx;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE pub = CK_INVALID_HANDLE, priv = CK_INVALID_HANDLE, any;
    CK_ULONG count = 0;
    CK_RV rv = CKR_OK;
    uint8_t point[NU_P256_PUB_LEN];
    int rc = hsm__borrow(hsm, &idx, &s);
    if (rc != NU_OK)
        return rc;
    rv = hsm__find(hsm->f, s, NULL, label, &any, &count);
    rc = hsm__ckr("C_FindObjects", rv);
    if (rc == NU_OK && count > 0) {
        nu_error("hsm: a key labelled '%s' exists already", label);
        rc = NU_ERR_EXISTS;
    }
    if (rc == NU_OK)
        rc = hsm__generate(hsm, s, label, &pub, &priv, &rv);
    if (rc == NU_OK)
        rc = hsm__read_pub(hsm->f, s, pub, point, &rv);
    if (rc == NU_OK)
        rc = hsm__refuse_weak(hsm, s, priv, label, &rv);
    if (rc != NU_OK && priv != CK_INVALID_HANDLE) {
        /* Do not leave half a key pair behind under a label nothing can use. */
        hsm->f->C_DestroyObject(s, priv);
        hsm->f->C_DestroyObject(s, pub);
    }
    hsm__give_back(hsm, idx, rv);
    if (rc == NU_OK) {
        nu_info("hsm: generated P-256 key '%s'", label);
        if (out_pub)
            memcpy(out_pub, point, sizeof(point));
    }
    return rc;
}

int nu_hsm_find_key(struct nu_hsm *hsm, const char *label, uint8_t out_pub[NU_P256_PUB_LEN])
{
    if (!hsm || !hsm__key_label_ok(label))
        return NU_ERR_INVALID_ARG;
    unsigned idx;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE priv;
    CK_RV rv = CKR_OK;
    uint8_t point[NU_P256_PUB_LEN];
    int rc = hsm__borrow(hsm, &idx, &s);
    if (rc != NU_OK)
        return rc;
    rc = hsm__lookup_key(hsm, s, label, &priv, point, &rv);
    hsm__give_back(hsm, idx, rv);
    if (rc == NU_OK && out_pub)
        memcpy(out_pub, point, sizeof(point));
    return rc;
}

/* Try to read the private scalar; it must be refused. Anything read is wiped. */
static void hsm__probe_value(struct nu_hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                             struct nu_hsm_key_attrs *out)
{
    uint8_t value[128];
    CK_ATTRIBUTE a = {CKA_VALUE, value, sizeof(value)};
    CK_RV rv = hsm->f->C_GetAttributeValue(s, priv, &a, 1);
    out->value_ckr = (unsigned long)rv;
    out->value_readable = rv == CKR_OK && a.ulValueLen != CK_UNAVAILABLE_INFORMATION;
    if (out->value_readable)
        nu_error("hsm: the token let us read a private key value: it is not protected");
    nu_zero(value, sizeof(value));
}

/*
 * Protection attributes of private key object `priv`. A module that does not
 * know one of them (CKR_ATTRIBUTE_TYPE_INVALID) leaves it unknown, which
 * counts as "not set": such a key is refused, not trusted.
 */
static int hsm__attrs(struct nu_hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                      struct nu_hsm_key_attrs *out, CK_RV *out_rv)
{
    enum { N = 8 };
    CK_BBOOL v[N] = {0};
    CK_ATTRIBUTE tmpl[N] = {
        {CKA_TOKEN, &v[0], 1},
        {CKA_PRIVATE, &v[1], 1},
        {CKA_SENSITIVE, &v[2], 1},
        {CKA_EXTRACTABLE, &v[3], 1},
        {CKA_ALWAYS_SENSITIVE, &v[4], 1},
        {CKA_NEVER_EXTRACTABLE, &v[5], 1},
        {CKA_SIGN, &v[6], 1},
        {CKA_LOCAL, &v[7], 1},
    };
    memset(out, 0, sizeof(*out));
    CK_RV rv = hsm->f->C_GetAttributeValue(s, priv, tmpl, N);
    if (rv == CKR_ATTRIBUTE_TYPE_INVALID || rv == CKR_ATTRIBUTE_SENSITIVE)
        rv = CKR_OK;
    *out_rv = rv;
    if (rv != CKR_OK)
        return hsm__ckr("C_GetAttributeValue(flags)", rv);
    int *dst[N] = {&out->token,
                   &out->private_,
                   &out->sensitive,
                   &out->extractable,
                   &out->always_sensitive,
                   &out->never_extractable,
                   &out->sign,
                   &out->local};
    for (int i = 0; i < N; i++)
        *dst[i] = tmpl[i].ulValueLen == 1 && v[i] == CK_TRUE;
    /* An unknown CKA_EXTRACTABLE is not "not extractable". */
    if (tmpl[3].ulValueLen != 1)
        out->extractable = 1;
    hsm__probe_value(hsm, s, priv, out);
    return NU_OK;
}

const char *nu_hsm_key_attrs_refusal(const struct nu_hsm_key_attrs *a)
{
    if (!a)
        return "no attributes";
    if (!a->token)
        return "CKA_TOKEN";
    if (!a->private_)
        return "CKA_PRIVATE";
    if (!a->sensitive)
        return "CKA_SENSITIVE";
    if (a->extractable)
        return "CKA_EXTRACTABLE";
    if (!a->always_sensitive)
        return "CKA_ALWAYS_SENSITIVE";
    if (!a->never_extractable)
        return "CKA_NEVER_EXTRACTABLE";
    if (!a->local)
        return "CKA_LOCAL";
    if (!a->sign)
        return "CKA_SIGN";
    if (a->value_readable)
        return "CKA_VALUE (readable)";
    return NULL;
}

/* Refuse a private key the token did not protect as asked, naming why. */
static int hsm__refuse_weak(struct nu_hsm *hsm, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE priv,
                            const char *label, CK_RV *out_rv)
{
    struct nu_hsm_key_attrs a;
    int rc = hsm__attrs(hsm, s, priv, &a, out_rv);
    if (rc != NU_OK)
        return rc;
    const char *why = nu_hsm_key_attrs_refusal(&a);
    if (why) {
        nu_error("hsm: key '%s' refused: the token reports %s %s", label, why,
                 strcmp(why, "CKA_EXTRACTABLE") == 0 || strncmp(why, "CKA_VALUE", 9) == 0
                     ? "set"
                     : "not set");
        return NU_ERR_HSM;
    }
    return NU_OK;
}

int nu_hsm_key_attr_check(struct nu_hsm *hsm, const char *label, struct nu_hsm_key_attrs *out_attrs)
{
    if (!hsm || !hsm__key_label_ok(label) || !out_attrs)
        return NU_ERR_INVALID_ARG;
    memset(out_attrs, 0, sizeof(*out_attrs));
    unsigned idx;
    CK_SESSION_HANDLE s;
    CK_OBJECT_HANDLE priv;
    CK_RV rv = CKR_OK;
    int rc = hsm__borrow(hsm, &idx, &s);
    if (rc != NU_OK)
        return rc;
    rc = hsm__find_one(hsm->f, s, CKO_PRIVATE_KEY, label, &priv, &rv);
    if (rc == NU_OK)
        rc = hsm__attrs(hsm, s, priv, out_attrs, &rv);
    hsm__give_back(hsm, idx, rv);
    return rc;
}

int nu_hsm_key_check(struct nu_hsm *hsm, const char *label)
{
    struct nu_hsm_key_attrs a;
    struct nu_hsm_key *key = NULL;
    uint8_t digest[32], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    int rc = nu_hsm_key_attr_check(hsm, label, &a);
    if (rc != NU_OK)
        return rc;
    const char *why = nu_hsm_key_attrs_refusal(&a);
    if (why) {
        nu_error("hsm: existing key '%s' refused: %s is not as NuSEC requires "
                 "(sensitive, never extractable, generated in the token)",
                 label, why);
        return NU_ERR_HSM;
    }
    /* P-256 and a public key object (hsm__lookup_key), then one signature
     * that the public key verifies (nu_hsm_key_sign_digest checks it). */
    if ((rc = nu_hsm_key_open(hsm, label, &key)) != NU_OK)
        return rc;
    if ((rc = nu_random(digest, sizeof(digest))) == NU_OK)
        rc = nu_hsm_key_sign_digest(key, digest, sig, &sig_len);
    if (rc == NU_OK)
        rc = nu_p256_verify(nu_hsm_key_signer(key)->pub, digest, sig, sig_len);
    if (rc != NU_OK)
        nu_error("hsm: existing key '%s' refused: its test signature failed (%s)", label,
                 nu_err_name(rc));
    nu_hsm_key_close(key);
    return rc;
}

int nu_hsm_key_destroy(struct nu_hsm *hsm, const char *label)
{
    if (!hsm || !hsm__key_label_ok(label))
        return NU_ERR_INVALID_ARG;
    unsigned idx;
    CK_SESSION_HANDLE s;
    CK_RV rv = CKR_OK;
    int rc = hsm__borrow(hsm, &idx, &s);
    if (rc != NU_OK)
        return rc;
    /* Each pass destroys at most one object: a key pair is two, and a bounded
     * loop stops on a token that will not let go. */
    for (int pass = 0; pass < 8 && rc == NU_OK; pass++) {
        CK_OBJECT_HANDLE obj = CK_INVALID_HANDLE;
        CK_ULONG count = 0;
        rv = hsm__find(hsm->f, s, NULL, label, &obj, &count);
        if ((rc = hsm__ckr("C_FindObjects", rv)) != NU_OK || count == 0)
            break;
        rv = hsm->f->C_DestroyObject(s, obj);
        rc = hsm__ckr("C_DestroyObject", rv);
    }
    hsm__give_back(hsm, idx, rv);
    if (rc == NU_OK)
        nu_info("hsm: key '%s' destroyed", label);
    return rc;
}

static int hsm__signer_cb(void *ctx, const uint8_t digest[32], uint8_t *sig, size_t *sig_len)
{
    return nu_hsm_key_sign_digest(ctx, digest, sig, sig_len);
}

int nu_hsm_key_open(struct nu_hsm *hsm, const char *label, struct nu_hsm_key **out_key)
{
    if (!out_key)
        return NU_ERR_INVALID_ARG;
    *out_key = NULL;
    if (!hsm || !hsm__key_label_ok(label))
        return NU_ERR_INVALID_ARG;
    struct nu_hsm_key *key = calloc(1, sizeof(*key));
    if (!key)
        return NU_ERR_NOMEM;
    unsigned idx;
    CK_SESSION_HANDLE s;
    CK_RV rv = CKR_OK;
    int rc = hsm__borrow(hsm, &idx, &s);
    if (rc != NU_OK)
        goto out;
    /* Object handles of token objects hold for the whole application, so the
     * handle found here is valid on every session of the pool. */
    rc = hsm__lookup_key(hsm, s, label, &key->priv, key->signer.pub, &rv);
    /* Checked at every open, not only at generation: some modules (tpm2-pkcs11
     * 1.9.0) let a PIN holder clear CKA_SENSITIVE afterwards. */
    if (rc == NU_OK)
        rc = hsm__refuse_weak(hsm, s, key->priv, label, &rv);
    hsm__give_back(hsm, idx, rv);
out:
    if (rc != NU_OK) {
        free(key);
        return rc;
    }
    key->hsm = hsm;
    snprintf(key->label, sizeof(key->label), "%s", label);
    key->signer.ctx = key;
    key->signer.sign_digest = hsm__signer_cb;
    key->signer.self_verified = 1; /* hsm__sign verifies before it returns */
    *out_key = key;
    return NU_OK;
}

const struct nu_signer *nu_hsm_key_signer(const struct nu_hsm_key *key)
{
    return key ? &key->signer : NULL;
}

void nu_hsm_key_close(struct nu_hsm_key *key)
{
    free(key);
}

/*
 * The key's handle after the token dropped it (a logout, or its last session
 * closed: SoftHSM2 then forgets every handle to a private object, and never
 * reuses one): found again by label on session s, with the same public
 * point, still protected. Returns the CKR of the failure, or CKR_OK.
 */
static CK_RV hsm__key_refind(struct nu_hsm_key *key, CK_SESSION_HANDLE s, CK_OBJECT_HANDLE *out)
{
    uint8_t pub[NU_P256_PUB_LEN];
    CK_OBJECT_HANDLE priv = CK_INVALID_HANDLE;
    CK_RV rv = CKR_OK;
    /* A logout lost the handles: private objects are found only logged in. */
    int rc = hsm__login(key->hsm, s);
    if (rc == NU_OK)
        rc = hsm__lookup_key(key->hsm, s, key->label, &priv, pub, &rv);
    if (rc == NU_OK && memcmp(pub, key->signer.pub, sizeof(pub)) != 0) {
        nu_error("hsm: key '%s' on the token is another key than the one opened", key->label);
        rc = NU_ERR_HSM;
    }
    if (rc == NU_OK)
        rc = hsm__refuse_weak(key->hsm, s, priv, key->label, &rv);
    if (rc != NU_OK)
        return rv != CKR_OK ? rv : CKR_KEY_HANDLE_INVALID;
    __atomic_store_n(&key->priv, priv, __ATOMIC_RELEASE);
    nu_info("hsm: key '%s' found again (the token had dropped its handle)", key->label);
    *out = priv;
    return CKR_OK;
}

/* Raw r||s from the token. A session the token dropped is reopened and a
 * key handle it dropped found again; a second dead session may come first. */
static int hsm__sign_raw(struct nu_hsm_key *key, const uint8_t digest[32], uint8_t rs[64])
{
    struct nu_hsm *hsm = key->hsm;
    int rc = NU_ERR_HSM;
    for (int attempt = 0; attempt < 3; attempt++) {
        unsigned idx;
        CK_SESSION_HANDLE s;
        CK_MECHANISM mech = {CKM_ECDSA, NULL, 0};
        CK_ULONG len = 64;
        rc = hsm__borrow(hsm, &idx, &s);
        if (rc != NU_OK)
            return rc;
        CK_OBJECT_HANDLE priv = __atomic_load_n(&key->priv, __ATOMIC_ACQUIRE);
        CK_RV rv = hsm->f->C_SignInit(s, &mech, priv);
        if ((rv == CKR_KEY_HANDLE_INVALID || rv == CKR_OBJECT_HANDLE_INVALID) &&
            (rv = hsm__key_refind(key, s, &priv)) == CKR_OK)
            rv = hsm->f->C_SignInit(s, &mech, priv);
        if (rv == CKR_OK)
            rv = hsm->f->C_Sign(s, (CK_BYTE *)digest, 32, rs, &len);
        hsm__give_back(hsm, idx, rv);
        rc = hsm__ckr("C_Sign", rv);
        if (rc == NU_OK && len != 64) {
            nu_error("hsm: token returned a %lu-byte P-256 signature", (unsigned long)len);
            rc = NU_ERR_HSM;
        }
        if (rc == NU_OK || !hsm__rv_stale(rv))
            break;
    }
    return rc;
}

/*
 * Verify a token signature with the key's public point. Not nu_p256_verify():
 * that one validates an untrusted point on every call (a scalar multiplication
 * as costly as the verification), while this point was validated once when
 * the key was opened; skipping it nearly doubles the signing rate.
 */
static int hsm__verify(const uint8_t pub[NU_P256_PUB_LEN], const uint8_t digest[32],
                       const uint8_t *der, word32 der_len)
{
    ecc_key k;
    int valid = 0;
    /* The verification fills this thread's fixed-point cache: freed when the
     * thread exits only if armed (a worker that answered only refusals,
     * signed here and never verifying a request, leaked its 1.6 MB). */
    if (nu_crypto_thread_arm() != NU_OK || wc_ecc_init(&k) != 0)
        return NU_ERR_CRYPTO;
    if (wc_ecc_import_x963_ex(pub, NU_P256_PUB_LEN, &k, ECC_SECP256R1) != 0 ||
        wc_ecc_verify_hash(der, der_len, digest, 32, &valid, &k) != 0)
        valid = 0;
    wc_ecc_free(&k);
    return valid == 1 ? NU_OK : NU_ERR_BAD_SIGNATURE;
}

int nu_hsm_key_sign_digest(struct nu_hsm_key *key, const uint8_t digest[32], uint8_t *sig,
                           size_t *sig_len)
{
    if (!key || !digest || !sig || !sig_len)
        return NU_ERR_INVALID_ARG;
    uint8_t rs[64], der[NU_P256_SIG_MAX];
    for (int attempt = 0; attempt < 2; attempt++) {
        word32 der_len = sizeof(der);
        int rc = hsm__sign_raw(key, digest, rs);
        /* Whatever the token said (no token, PIN refused: logged above), to
         * the caller it is the HSM failing: a chip waits for it, no verdict. */
        if (rc != NU_OK)
            return rc == NU_ERR_NOMEM ? rc : NU_ERR_HSM;
        if (wc_ecc_rs_raw_to_sig(rs, 32, rs + 32, 32, der, &der_len) != 0)
            return NU_ERR_HSM;
        /* SoftHSM2 #901: never hand out a signature the public key rejects. */
        if (hsm__verify(key->signer.pub, digest, der, der_len) == NU_OK) {
            if (der_len > *sig_len)
                return NU_ERR_TOO_LARGE;
            memcpy(sig, der, der_len);
            *sig_len = der_len;
            return NU_OK;
        }
        nu_warn("hsm: token signature failed verification (attempt %d)", attempt + 1);
    }
    return NU_ERR_HSM;
}
