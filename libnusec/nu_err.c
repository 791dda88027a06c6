#include "nu_err.h"

#include <string.h>

struct nu__err_entry {
    int code;
    const char *name;
    const char *text;
};

static const struct nu__err_entry nu__err_table[] = {
#define NU__ERR_ROW(name, value, text) {value, #name, text},
    NU_ERR_MAP(NU__ERR_ROW)
#undef NU__ERR_ROW
};

#define NU__ERR_COUNT (sizeof(nu__err_table) / sizeof(nu__err_table[0]))

static const struct nu__err_entry *nu__err_find(int code)
{
    for (size_t i = 0; i < NU__ERR_COUNT; i++) {
        if (nu__err_table[i].code == code)
            return &nu__err_table[i];
    }
    return NULL;
}

const char *nu_err_str(int code)
{
    const struct nu__err_entry *e = nu__err_find(code);
    return e ? e->text : "unknown error";
}

const char *nu_err_name(int code)
{
    const struct nu__err_entry *e = nu__err_find(code);
    return e ? e->name : "UNKNOWN";
}

int nu_err_from_name(const char *name)
{
    if (!name)
        return -1;
    for (size_t i = 0; i < NU__ERR_COUNT; i++) {
        if (strcmp(nu__err_table[i].name, name) == 0)
            return nu__err_table[i].code;
    }
    return -1;
}

int nu_err_is_known(int code)
{
    return nu__err_find(code) != NULL;
}
