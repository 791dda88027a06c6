/*
 * A misbehaving PKCS#11 module for tests: it forwards every call to the real
 * module named by $NUSEC_SHIM_TARGET and, on request, lies the way a buggy
 * or hostile token could:
 *
 *   NUSEC_SHIM_BAD_SIGS=N      the next N C_Sign results get a flipped bit
 *                              (-1: every one) — "some modules ship
 *                              invalid-signature bugs" (SoftHSM2 #901);
 *   NUSEC_SHIM_NOT_LOCAL=1     C_GetAttributeValue reports CKA_LOCAL false;
 *   NUSEC_SHIM_EXTRACTABLE=1   ... and CKA_EXTRACTABLE true;
 *   NUSEC_SHIM_LOGOUT=1        the next C_SignInit logs the application out
 *                              of the token first (C_Logout: every session
 *                              loses its login, and SoftHSM2 its handles to
 *                              private objects), as a token reset would.
 *
 * The variables are read at each call so one test process can switch them.
 * Works over any module, so the same checks run on SoftHSM2 and on the TPM.
 */
#include <p11-kit/pkcs11.h>

#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static CK_FUNCTION_LIST shim__list;
static CK_FUNCTION_LIST *shim__real;

static long shim__env(const char *name)
{
    const char *v = getenv(name);
    return v ? strtol(v, NULL, 10) : 0;
}

static CK_RV shim__sign(CK_SESSION_HANDLE s, CK_BYTE *data, CK_ULONG len, CK_BYTE *sig,
                        CK_ULONG *sig_len)
{
    CK_RV rv = shim__real->C_Sign(s, data, len, sig, sig_len);
    long bad = shim__env("NUSEC_SHIM_BAD_SIGS");
    if (rv == CKR_OK && sig && *sig_len > 0 && bad != 0) {
        sig[*sig_len - 1] ^= 0x01; /* s off by one bit: well-formed, wrong */
        if (bad > 0) {
            char next[24];
            snprintf(next, sizeof(next), "%ld", bad - 1);
            setenv("NUSEC_SHIM_BAD_SIGS", next, 1);
        }
    }
    return rv;
}

static CK_RV shim__sign_init(CK_SESSION_HANDLE s, CK_MECHANISM *mech, CK_OBJECT_HANDLE key)
{
    if (shim__env("NUSEC_SHIM_LOGOUT")) {
        unsetenv("NUSEC_SHIM_LOGOUT");
        shim__real->C_Logout(s);
    }
    return shim__real->C_SignInit(s, mech, key);
}

static CK_RV shim__get_attr(CK_SESSION_HANDLE s, CK_OBJECT_HANDLE o, CK_ATTRIBUTE *t, CK_ULONG n)
{
    CK_RV rv = shim__real->C_GetAttributeValue(s, o, t, n);
    for (CK_ULONG i = 0; i < n; i++) {
        if (!t[i].pValue || t[i].ulValueLen != sizeof(CK_BBOOL))
            continue;
        if (t[i].type == CKA_LOCAL && shim__env("NUSEC_SHIM_NOT_LOCAL"))
            *(CK_BBOOL *)t[i].pValue = CK_FALSE;
        if (t[i].type == CKA_EXTRACTABLE && shim__env("NUSEC_SHIM_EXTRACTABLE"))
            *(CK_BBOOL *)t[i].pValue = CK_TRUE;
    }
    return rv;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST **out)
{
    if (!out)
        return CKR_ARGUMENTS_BAD;
    if (!shim__real) {
        const char *target = getenv("NUSEC_SHIM_TARGET");
        void *dl = target ? dlopen(target, RTLD_NOW | RTLD_LOCAL | RTLD_NODELETE) : NULL;
        CK_C_GetFunctionList get = dl ? (CK_C_GetFunctionList)dlsym(dl, "C_GetFunctionList") : NULL;
        if (!get || get(&shim__real) != CKR_OK || !shim__real)
            return CKR_GENERAL_ERROR;
        shim__list = *shim__real;
        shim__list.C_Sign = shim__sign;
        shim__list.C_SignInit = shim__sign_init;
        shim__list.C_GetAttributeValue = shim__get_attr;
    }
    *out = &shim__list;
    return CKR_OK;
}
