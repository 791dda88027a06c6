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

static void test_default_token_label_is_per_pki(void)
{
    /* The SoftHSM2 default records itself like any other module. */
    CU_ASSERT_EQUAL(nu_test_sh("grep -Eq '^token-label = nusec-[0-9a-f]{8}$' "
                               "%s/state/hsm/pkcs11.conf && grep -q '^env SOFTHSM2_CONF = ' "
                               "%s/state/hsm/pkcs11.conf",
                               dir, dir),
                    0);
    CU_ASSERT_EQUAL(mode_of("hsm/pkcs11.conf"), 0600);
}

/* An HSM administrator's token: SoftHSM2 in its own folder, made with its own tool. */
static void admin_token(const char *name, const char *label)
{
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("mkdir -p %s/%s/tokens && printf 'directories.tokendir = %s/%s/tokens\n"
                   "objectstore.backend = file\nlog.level = ERROR\n' > %s/%s/softhsm2.conf && "
                   "SOFTHSM2_CONF=%s/%s/softhsm2.conf softhsm2-util --init-token --free "
                   "--label %s --so-pin admin-so-pin --pin line-pin-1 >/dev/null && "
                   "printf line-pin-1 > %s/%s.pin && chmod 600 %s/%s.pin",
                   dir, name, dir, name, dir, name, dir, name, label, dir, name, dir, name),
        0);
}

/* pki init against an existing token; returns the exit status. */
static int init_on(const char *name, const char *label, const char *state, const char *extra)
{
    return nu_test_sh("%s pki init --dir %s/%s --token-label %s --pin-file %s/%s.pin "
                      "--module-env SOFTHSM2_CONF=%s/%s/softhsm2.conf %s >%s/%s.out 2>&1",
                      nusec, dir, state, label, dir, name, dir, name, extra, dir, state);
}

static int private_keys_in(const char *name, const char *label)
{
    char cmd[1024];
    snprintf(cmd, sizeof(cmd),
             "SOFTHSM2_CONF=%s/%s/softhsm2.conf pkcs11-tool --module %s --token-label %s "
             "--login --pin line-pin-1 -O --type privkey 2>/dev/null | grep -c '^Private Key'",
             dir, name, nu_hsm_default_module(), label);
    FILE *p = popen(cmd, "r");
    int n = -1;
    if (p) {
        if (fscanf(p, "%d", &n) != 1)
            n = -1;
        pclose(p);
    }
    return n;
}

static void test_existing_token_is_used_as_is(void)
{
    admin_token("oem", "oem-line-1");
    CU_ASSERT_EQUAL_FATAL(init_on("oem", "oem-line-1", "s-oem", ""), 0);
    /* No C_InitToken: no SO PIN, no PIN copy; the PIN file is referenced. */
    CU_ASSERT_EQUAL(nu_test_sh("test ! -e %s/s-oem/hsm/so-pin -a ! -e %s/s-oem/hsm/pin", dir, dir),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q '^pin-file = .*/oem.pin$' %s/s-oem/hsm/pkcs11.conf && "
                               "grep -q '^token-label = oem-line-1$' %s/s-oem/hsm/pkcs11.conf",
                               dir, dir),
                    0);
    CU_ASSERT_EQUAL(private_keys_in("oem", "oem-line-1"), 6);
    /* Another program opens it from DIR alone, whatever this process's SOFTHSM2_CONF. */
    char path[512];
    snprintf(path, sizeof(path), "%s/s-oem", dir);
    struct nu_hsm *hsm = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_pki_open_hsm(path, 1, &hsm), NU_OK);
    CU_ASSERT_EQUAL(nu_hsm_key_check(hsm, NU_PKI_KEY_DEVICE_CA), NU_OK);
    nu_hsm_close(hsm);
}

static void test_existing_keys_refused_unless_adopted(void)
{
    CU_ASSERT_EQUAL(init_on("oem", "oem-line-1", "s-oem2", ""), 3);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'already holds keys labelled root-ca, fleet-ca' "
                               "%s/s-oem2.out && test ! -e %s/s-oem2/pki",
                               dir, dir),
                    0);
    CU_ASSERT_EQUAL(private_keys_in("oem", "oem-line-1"), 6);
    CU_ASSERT_EQUAL(init_on("oem", "oem-line-1", "s-oem2", "--adopt-keys"), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -c '^adopting key' %s/s-oem2.out | grep -qx 6", dir), 0);
    /* The same keys: the same secure-boot public key. */
    CU_ASSERT_EQUAL(
        nu_test_sh("cmp -s %s/s-oem/firmware/rotpk.pem %s/s-oem2/firmware/rotpk.pem", dir, dir), 0);
    CU_ASSERT_EQUAL(private_keys_in("oem", "oem-line-1"), 6);
}

static void test_failed_init_leaves_nothing(void)
{
    admin_token("oem3", "oem-line-3");
    /* Fails after the keys were made (the broker host is not an address). */
    CU_ASSERT_EQUAL(init_on("oem3", "oem-line-3", "s-bad", "--host not-an-ip"), 1);
    CU_ASSERT_EQUAL(private_keys_in("oem3", "oem-line-3"), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -c '^destroyed key' %s/s-bad.out | grep -qx 6", dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh("test ! -e %s/s-bad/pki -a ! -e %s/s-bad/hsm -a ! -e "
                               "%s/s-bad/broker -a ! -e %s/s-bad/firmware/rotpk.pem",
                               dir, dir, dir, dir),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("test -s %s/s-bad/pki-init.failed", dir), 0);
    /* stack up does not quietly build a SoftHSM2 PKI instead. */
    CU_ASSERT_NOT_EQUAL(
        nu_test_sh("%s stack up --dir %s/s-bad --programmers 0 2>%s/s-bad.up", nusec, dir, dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'last `nusec pki init`.*failed' %s/s-bad.up && "
                               "test ! -e %s/s-bad/pki",
                               dir, dir),
                    0);
    /* A good run afterwards clears the mark. */
    CU_ASSERT_EQUAL(init_on("oem3", "oem-line-3", "s-bad", ""), 0);
    CU_ASSERT_EQUAL(nu_test_sh("test ! -e %s/s-bad/pki-init.failed", dir), 0);
}

static void test_pin_checks(void)
{
    admin_token("oem4", "oem-line-4");
    /* Shorter than the token's ulMinPinLen (SoftHSM2: 4): said, nothing changed. */
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("printf abc > %s/oem4.pin", dir), 0);
    CU_ASSERT_EQUAL(init_on("oem4", "oem-line-4", "s-pin", ""), 1);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'accepts PINs of 4 to 255 characters, not 3' %s/s-pin.out "
                               "&& grep -q 'nothing changed' %s/s-pin.out",
                               dir, dir),
                    0);
    /* A PIN file others can read is a leaked PIN. */
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("printf line-pin-1 > %s/oem4.pin && chmod 644 %s/oem4.pin", dir, dir), 0);
    CU_ASSERT_EQUAL(init_on("oem4", "oem-line-4", "s-pin", ""), 1);
    CU_ASSERT_EQUAL(private_keys_in("oem4", "oem-line-4"), 0);
}

static void test_failed_force_puts_the_old_pki_back(void)
{
    CU_ASSERT_EQUAL(nu_test_sh("sha256sum %s/state/pki/root-ca.pem %s/state/firmware/rotpk.pem "
                               "> %s/force.sum",
                               dir, dir, dir),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/state --force --host not-an-ip "
                               ">%s/force.out 2>&1",
                               nusec, dir, dir),
                    1);
    CU_ASSERT_EQUAL(nu_test_sh("grep -q 'restored .*/state/pki (from --force)' %s/force.out", dir),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("sha256sum -c --quiet %s/force.sum", dir), 0);
    CU_ASSERT_NOT_EQUAL(nu_test_sh("ls -d %s/state/pki.old-* 2>/dev/null", dir), 0);
    /* ... and the restored PKI still opens. */
    char path[512];
    state(path, sizeof(path), "");
    struct nu_hsm *hsm = NULL;
    CU_ASSERT_EQUAL(nu_pki_open_hsm(path, 1, &hsm), NU_OK);
    nu_hsm_close(hsm);
}

static void test_usage_errors(void)
{
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/x --port 0 2>/dev/null", nusec, dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/x --bogus 2>/dev/null", nusec, dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("env -u NUSEC_HOME %s pki init 2>/dev/null", nusec), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --help | grep -q 'usage: nusec pki init'", nusec), 0);
    CU_ASSERT_EQUAL(
        nu_test_sh("%s pki init --dir %s/x --token-label a --slot 1 2>/dev/null", nusec, dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/x --slot x1 2>/dev/null", nusec, dir), 2);
    CU_ASSERT_EQUAL(nu_test_sh("%s pki init --dir %s/x --adopt-keys 2>/dev/null", nusec, dir), 2);
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
        {"default token label is per PKI", test_default_token_label_is_per_pki},
        {"a failed --force puts the old PKI back", test_failed_force_puts_the_old_pki_back},
        {"--force moves the old PKI aside", test_force_moves_the_old_pki_aside},
        {"an existing token is used as is", test_existing_token_is_used_as_is},
        {"existing keys refused unless adopted", test_existing_keys_refused_unless_adopted},
        {"a failed init leaves nothing", test_failed_init_leaves_nothing},
        {"PIN length range and PIN file mode", test_pin_checks},
        {"usage errors", test_usage_errors},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"pki init", setup, teardown, cases}, {NULL}};
    return nu_test_run("test_pki_init", suites);
}
