/* nu_err: the C enum and the wire enum must stay the same table. */
#include "nu_err.h"
#include "nu_test.h"

#include "nusec/v1/common.pb-c.h"

#include <stdio.h>
#include <string.h>

static void test_every_code_is_mirrored_on_the_wire(void)
{
#define CHECK_MIRROR(name, code, text)                                                             \
    do {                                                                                           \
        const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value_by_name(                \
            &nusec__v1__error_code__descriptor, "ERROR_CODE_" #name);                              \
        CU_ASSERT_PTR_NOT_NULL_FATAL(v);                                                           \
        CU_ASSERT_EQUAL(v->value, code);                                                           \
    } while (0);
    NU_ERR_MAP(CHECK_MIRROR)
#undef CHECK_MIRROR
}

static void test_wire_has_no_code_c_lacks(void)
{
    const ProtobufCEnumDescriptor *d = &nusec__v1__error_code__descriptor;
    for (unsigned i = 0; i < d->n_values; i++) {
        CU_ASSERT_TRUE(nu_err_is_known(d->values[i].value));
        const char *suffix = d->values[i].name + strlen("ERROR_CODE_");
        CU_ASSERT_STRING_EQUAL(nu_err_name(d->values[i].value), suffix);
    }
}

static void test_names_and_texts(void)
{
    CU_ASSERT_EQUAL(NU_OK, 0);
    CU_ASSERT_STRING_EQUAL(nu_err_name(NU_ERR_QUOTA_EXHAUSTED), "QUOTA_EXHAUSTED");
    CU_ASSERT_EQUAL(nu_err_from_name("BAD_CSR"), NU_ERR_BAD_CSR);
    CU_ASSERT_EQUAL(nu_err_from_name("NO_SUCH_THING"), -1);
    CU_ASSERT_EQUAL(nu_err_from_name(NULL), -1);
    CU_ASSERT_STRING_EQUAL(nu_err_str(-5), "unknown error");
    CU_ASSERT_STRING_EQUAL(nu_err_name(100000), "UNKNOWN");
    CU_ASSERT_FALSE(nu_err_is_known(-1));
}

static void test_values_are_unique(void)
{
    int seen[256] = {0};
#define COUNT(name, value, text) seen[value]++;
    NU_ERR_MAP(COUNT)
#undef COUNT
    for (int i = 0; i < 256; i++)
        CU_ASSERT(seen[i] <= 1);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"every C code is mirrored on the wire", test_every_code_is_mirrored_on_the_wire},
        {"wire has no code C lacks", test_wire_has_no_code_c_lacks},
        {"names and texts", test_names_and_texts},
        {"values are unique", test_values_are_unique},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"nu_err", NULL, NULL, cases},
                                                  {NULL, NULL, NULL, NULL}};
    return nu_test_run("test_err", suites);
}
