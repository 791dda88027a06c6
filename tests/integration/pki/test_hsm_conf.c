/*
 * DIR/hsm/pkcs11.conf: how every program opens a PKI's HSM. The parser
 * (operator-written text: typed errors, nothing half-read), save/load round
 * trip, the environment it sets, and C_Initialize arguments on a real module
 * that needs them (NSS softokn, when installed).
 */
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_pki.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define SOFTOKN "/usr/lib/x86_64-linux-gnu/libsoftokn3.so"

static struct nu_pki_hsm_conf c;

static int parse(const char *text)
{
    return nu_pki_hsm_conf_parse(text, strlen(text), &c);
}

static void test_parse_full(void)
{
    CU_ASSERT_EQUAL_FATAL(parse("# comment\n\n  module = /usr/lib/x.so  \n"
                                "token-label = line 1\n"
                                "pin-file = /etc/p in\n"
                                "init-args = configdir='sql:/a b' flags=readOnly\n"
                                "env TPM2_PKCS11_TCTI = tabrmd:bus_type=session\n"
                                "env\tX_2 = a=b\r\n"),
                          NU_OK);
    CU_ASSERT_STRING_EQUAL(c.module, "/usr/lib/x.so");
    CU_ASSERT_STRING_EQUAL(c.token_label, "line 1");
    CU_ASSERT_STRING_EQUAL(c.pin_file, "/etc/p in");
    CU_ASSERT_STRING_EQUAL(c.init_args, "configdir='sql:/a b' flags=readOnly");
    CU_ASSERT_EQUAL_FATAL(c.n_env, 2);
    CU_ASSERT_STRING_EQUAL(c.env[0].name, "TPM2_PKCS11_TCTI");
    CU_ASSERT_STRING_EQUAL(c.env[0].value, "tabrmd:bus_type=session");
    CU_ASSERT_STRING_EQUAL(c.env[1].name, "X_2");
    CU_ASSERT_STRING_EQUAL(c.env[1].value, "a=b");
    CU_ASSERT_FALSE(c.use_slot);
    CU_ASSERT_EQUAL(parse("module = m\nslot = 42\n"), NU_OK);
    CU_ASSERT_TRUE(c.use_slot);
    CU_ASSERT_EQUAL(c.slot, 42);
}

static void test_parse_refuses(void)
{
    static const char *const bad[] = {
        "token-label = t\n",                         /* no module */
        "module = m\n",                              /* no token */
        "module = m\ntoken-label = t\nbogus = 1\n",  /* unknown key */
        "module = m\ntoken-label = t\nno equals\n",  /* malformed */
        "module = m\ntoken-label = t\nenv 1X = v\n", /* bad name */
        "module = m\ntoken-label = t\nenv A-B = v\n",
        "module = m\ntoken-label = 0123456789012345678901234567890123\n", /* > 32 */
        "module = m\nslot = -1\n",
        "module = m\nslot = 1x\n",
        "module = m\nslot = 99999999999999999999999\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        CU_ASSERT_NOT_EQUAL(parse(bad[i]), NU_OK);
    /* At most NU_PKI_HSM_ENV_MAX environment lines. */
    char many[1024] = "module = m\ntoken-label = t\n";
    for (int i = 0; i <= NU_PKI_HSM_ENV_MAX; i++)
        snprintf(many + strlen(many), sizeof(many) - strlen(many), "env V%d = x\n", i);
    CU_ASSERT_EQUAL(parse(many), NU_ERR_CONFIG);
    /* A NUL inside a line is not silently cut. */
    CU_ASSERT_EQUAL(nu_pki_hsm_conf_parse("module = m\0x\ntoken-label = t\n", 28, &c),
                    NU_ERR_CONFIG);
}

static void test_save_load_apply(void)
{
    char dir[256];
    struct nu_pki_hsm_conf out;
    CU_ASSERT_FATAL(nu_test_tmpdir("hsm-conf", dir, sizeof(dir)) == 0);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("mkdir -p %s/hsm", dir), 0);
    CU_ASSERT_EQUAL_FATAL(parse("module = /m.so\ntoken-label = t\ninit-args = a='1'\n"), NU_OK);
    CU_ASSERT_EQUAL(nu_pki_hsm_conf_add_env(&c, "NUSEC_TEST_HSM_ENV=v=1"), NU_OK);
    CU_ASSERT_EQUAL(nu_pki_hsm_conf_add_env(&c, "no-equals"), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(nu_pki_hsm_conf_add_env(&c, "A=line\nbreak"), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL_FATAL(nu_pki_hsm_conf_save(dir, &c), NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh("test \"$(stat -c %%a %s/hsm/pkcs11.conf)\" = 600", dir), 0);
    CU_ASSERT_EQUAL_FATAL(nu_pki_hsm_conf_load(dir, &out), NU_OK);
    CU_ASSERT_EQUAL(memcmp(&out, &c, sizeof(c)), 0);
    unsetenv("NUSEC_TEST_HSM_ENV");
    CU_ASSERT_EQUAL(nu_pki_hsm_conf_apply_env(&out), NU_OK);
    CU_ASSERT_STRING_EQUAL(getenv("NUSEC_TEST_HSM_ENV"), "v=1");
    /* A value with a newline would smuggle a line into the file. */
    strcpy(c.init_args, "x\nenv LD_PRELOAD = /evil.so");
    CU_ASSERT_EQUAL(nu_pki_hsm_conf_save(dir, &c), NU_ERR_INVALID_ARG);
    /* An older directory: no pkcs11.conf, the defaults it always had. */
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("rm %s/hsm/pkcs11.conf", dir), 0);
    CU_ASSERT_EQUAL(nu_pki_hsm_conf_load(dir, &out), NU_OK);
    CU_ASSERT_STRING_EQUAL(out.token_label, NU_PKI_TOKEN_LABEL);
    CU_ASSERT_STRING_EQUAL(out.module, nu_hsm_default_module());
    nu_test_rmtree(dir);
}

/* NSS softokn answers CKR_ARGUMENTS_BAD without its pReserved string. */
static void test_init_args_reach_the_module(void)
{
    char dir[256], args[512];
    struct nu_hsm_token_info ti;
    if (access(SOFTOKN, R_OK) != 0) {
        printf("(no %s: skipped) ", SOFTOKN);
        return;
    }
    CU_ASSERT_FATAL(nu_test_tmpdir("softokn", dir, sizeof(dir)) == 0);
    snprintf(args, sizeof(args),
             "configdir='sql:%s' certPrefix='' keyPrefix='' secmod='secmod.db' flags=", dir);
    /* A fresh database: its key token is not initialised yet (no password),
     * so it is the "free slot" a token would be created in. */
    struct nu_hsm_opts o = {.module = SOFTOKN};
    CU_ASSERT_EQUAL(nu_hsm_token_query(&o, &ti), NU_ERR_HSM);
    o.init_args = args;
    CU_ASSERT_EQUAL(nu_hsm_token_query(&o, &ti), NU_OK);
    printf("(slot %lu '%s', PIN %lu..%lu) ", ti.slot, ti.label, ti.min_pin_len, ti.max_pin_len);
    CU_ASSERT_EQUAL(strncmp(ti.label, "NSS", 3), 0);
    nu_test_rmtree(dir);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"parse a full pkcs11.conf", test_parse_full},
        {"parse refuses what it cannot honour", test_parse_refuses},
        {"save, load, apply the environment", test_save_load_apply},
        {"init args reach the module (NSS softokn)", test_init_args_reach_the_module},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"pkcs11.conf", NULL, NULL, cases}, {NULL}};
    return nu_test_run("test_hsm_conf", suites);
}
