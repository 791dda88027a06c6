/*
 * `nusec pki init` as an OEM runs it: the real binary, a real SoftHSM2 token,
 * checked from the outside with openssl and PKCS#11.
 */
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_paths.h"
#include "nu_pki.h"
#include "nu_test.h"
#include "nu_util.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char dir[256];
static char nusec[512];

static int setup(void)
{
    snprintf(nusec, sizeof(nusec), "%s/bin/nusec", NUSEC_BINARY_DIR);
    if (nu_test_tmpdir("pki", dir, sizeof(dir)))
        return -1;
    /* The PKI is made once; the tests below inspect it. */
    return nu_test_sh("%s pki init --dir %s/state > %s/init.out 2>&1", nusec, dir, dir);
}

static int teardown(void)
{
    nu_test_rmtree(dir);
    return 0;
}

static void state(char *out, size_t cap, const char *rel)
{
    snprintf(out, cap, "%s/state/%s", dir, rel);
}

static mode_t mode_of(const char *rel)
{
    char path[512];
    struct stat st;
    state(path, sizeof(path), rel);
    return stat(path, &st) == 0 ? (st.st_mode & 0777) : (mode_t)-1;
}

static void test_layout_and_secret_file_modes(void)
{
    static const char *const files[] = {
        "pki/root-ca.pem",       "pki/fleet-ca.pem",      "pki/device-ca.pem",
        "pki/chain.pem",         "pki/device-chain.pem",  "pki/broker.crt",
        "pki/broker.key",        "hsm/softhsm2.conf",     "hsm/pin",
        "broker/mosquitto.conf", "broker/endpoint",       "firmware/rotpk.pem",
        "pki/package-key.pem",   "pki/clients/cloud.crt", "pki/clients/oem.key",
    };
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
        char path[512];
        state(path, sizeof(path), files[i]);
        CU_ASSERT_TRUE(nu_path_exists(path));
    }
    CU_ASSERT_EQUAL(mode_of("hsm/pin"), 0600);
    CU_ASSERT_EQUAL(mode_of("hsm/so-pin"), 0600);
    CU_ASSERT_EQUAL(mode_of("pki/broker.key"), 0600);
    CU_ASSERT_EQUAL(mode_of("pki/clients/cloud.key"), 0600);
    CU_ASSERT_EQUAL(mode_of("pki/clients/station.key"), 0600);
    CU_ASSERT_EQUAL(mode_of("hsm"), 0700);
}

static void test_certificates_verify_with_openssl(void)
{
    const char *s = dir;
    CU_ASSERT_EQUAL(nu_test_sh("openssl verify -CAfile %s/state/pki/root-ca.pem "
                               "-untrusted %s/state/pki/fleet-ca.pem %s/state/pki/broker.crt",
                               s, s, s),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("openssl verify -CAfile %s/state/pki/root-ca.pem "
                               "%s/state/pki/device-ca.pem",
                               s, s),
                    0);
    static const char *const roles[] = {"cloud", "station", "monitor", "oem"};
    for (int i = 0; i < 4; i++) {
        CU_ASSERT_EQUAL(
            nu_test_sh("openssl verify -purpose sslclient -CAfile %s/state/pki/chain.pem "
                       "%s/state/pki/clients/%s.crt",
                       s, s, roles[i]),
            0);
        /* role in OU, identity in CN */
        CU_ASSERT_EQUAL(nu_test_sh("openssl x509 -noout -subject -nameopt multiline "
                                   "-in %s/state/pki/clients/%s.crt | grep -q "
                                   "'organizationalUnitName *= %s'",
                                   s, roles[i], roles[i]),
                        0);
        /* the key file belongs to the certificate */
        CU_ASSERT_EQUAL(
            nu_test_sh("test \"$(openssl x509 -noout -pubkey -in %s/state/pki/clients/%s.crt)\" = "
                       "\"$(openssl pkey -pubout -in %s/state/pki/clients/%s.key)\"",
                       s, roles[i], s, roles[i]),
            0);
    }
    /* The broker is checked by host name; the device CA must not vouch for TLS peers. */
    CU_ASSERT_EQUAL(nu_test_sh("openssl verify -verify_ip 127.0.0.1 -CAfile %s/state/pki/chain.pem "
                               "%s/state/pki/broker.crt",
                               s, s),
                    0);
    CU_ASSERT_NOT_EQUAL(nu_test_sh("openssl verify -CAfile %s/state/pki/device-chain.pem "
                                   "%s/state/pki/clients/cloud.crt 2>/dev/null",
                                   s, s),
                        0);
}

static void test_endpoint_names_a_loopback_port(void)
{
    char path[512];
    uint8_t *text = NULL;
    size_t len = 0;
    state(path, sizeof(path), "broker/endpoint");
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 64, &text, &len), NU_OK);
    int port = 0;
    CU_ASSERT_EQUAL(sscanf((char *)text, "127.0.0.1:%d", &port), 1);
    CU_ASSERT(port > 0 && port < 65536);
    free(text);
    /* the config is the one the endpoint names */
    CU_ASSERT_EQUAL(
        nu_test_sh("grep -q \"^listener %d 127.0.0.1\" %s/state/broker/mosquitto.conf", port, dir),
        0);
}

static void test_hsm_keys_are_non_extractable(void)
{
    char path[512];
    state(path, sizeof(path), "");
    struct nu_hsm *hsm = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_pki_open_hsm(path, 1, &hsm), NU_OK);
    static const char *const labels[] = {NU_PKI_KEY_ROOT_CA, NU_PKI_KEY_FLEET_CA,
                                         NU_PKI_KEY_DEVICE_CA, NU_PKI_KEY_SECURE_BOOT,
                                         NU_PKI_KEY_PACKAGE};
    for (int i = 0; i < 5; i++) {
        struct nu_hsm_key_attrs a;
        CU_ASSERT_EQUAL_FATAL(nu_hsm_key_attr_check(hsm, labels[i], &a), NU_OK);
        CU_ASSERT_TRUE(a.sensitive);
        CU_ASSERT_FALSE(a.extractable);
        CU_ASSERT_FALSE(a.value_readable);
        CU_ASSERT_TRUE(a.token);
    }
    nu_hsm_close(hsm);
}

static void test_no_private_key_of_the_hsm_on_disk(void)
{
    /* Only the TLS keys (broker + 4 roles) may exist as PEM private keys. */
    CU_ASSERT_EQUAL(
        nu_test_sh("test $(grep -rl 'PRIVATE KEY' %s/state --exclude-dir=tokens | wc -l) -eq 5",
                   dir),
        0);
}

static void test_second_run_refuses_and_changes_nothing(void)
{
    CU_ASSERT_EQUAL(nu_test_sh("sha256sum %s/state/pki/root-ca.pem > %s/root.sum", dir, dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/state 2>%s/second.err", nusec, dir, dir), 3);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'already holds a PKI' %s/second.err", dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh("sha256sum -c --quiet %s/root.sum", dir), 0);
}

static void test_force_moves_the_old_pki_aside(void)
{
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/state --force >/dev/null", nusec, dir), 0);
    /* The old root is kept, the new one differs. */
    CU_ASSERT_EQUAL(nu_test_sh("ls -d %s/state/pki.old-* >/dev/null && "
                               "! cmp -s %s/state/pki/root-ca.pem %s/state/pki.old-*/root-ca.pem",
                               dir, dir, dir),
                    0);
}

static void test_usage_errors(void)
{
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/x --port 0 2>/dev/null", nusec, dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/x --bogus 2>/dev/null", nusec, dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("env -u NUSEC_HOME %s pki init 2>/dev/null", nusec), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --help | grep -q 'usage: nusec pki init'", nusec), 0);
    CU_ASSERT_EQUAL(nu_test_sh("%s nosuch 2>/dev/null", nusec), 2);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"layout and secret file modes", test_layout_and_secret_file_modes},
        {"certificates verify with openssl", test_certificates_verify_with_openssl},
        {"endpoint names a loopback port", test_endpoint_names_a_loopback_port},
        {"HSM keys are non-extractable", test_hsm_keys_are_non_extractable},
        {"no HSM private key on disk", test_no_private_key_of_the_hsm_on_disk},
        {"second run refuses and changes nothing", test_second_run_refuses_and_changes_nothing},
        {"--force moves the old PKI aside", test_force_moves_the_old_pki_aside},
        {"usage errors", test_usage_errors},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"pki init", setup, teardown, cases}, {NULL}};
    return nu_test_run("test_pki_init", suites);
}
