/*
 * What only the emulated M33 can show, on top of test_core.c (which runs
 * unchanged against it as programmer_test_core_m33):
 *  - a production on all 8 sockets a NuLink3 drives, so that each of the 8
 *    worker stacks is measured (painted, read back at exit);
 *  - tests/vectors/seal/ through the core's codec and the crypto HAL calls
 *    made from the M33's memory, at odd addresses (m33_vectors.c);
 *  - the pg_core.h functions test_core.c does not call, so every forwarded
 *    call is exercised.
 */
#include "m33_rpc.h"
#include "rig.h"

#include "nu_test.h"
#include "nu_util.h"
#include "pp_keystore.h"

#include "nu_envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static struct rig R;

static void test_eight_sockets(void)
{
    CU_ASSERT_EQUAL_FATAL(rig_setup(&R, "prog-m33-8", 8), NU_OK);
    CU_ASSERT_EQUAL_FATAL(rig_enroll(&R), NU_OK);
    uint8_t *pkg = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(rig_package(&R, 100, &pkg, &len), NU_OK);
    CU_ASSERT_EQUAL(pg_core_package_load(R.core, pkg, len), NU_OK);
    free(pkg);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 24, 0, 0), NU_OK);
    int rc = -1;
    CU_ASSERT_EQUAL(rig_produce(&R, &rc), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(rc, NU_OK);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.locked, 24);
    CU_ASSERT_EQUAL(c.verified, 24);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 24);
    CU_ASSERT_EQUAL(R.fc.issued, 24);
    CU_ASSERT_EQUAL(R.fc.bad_messages, 0);
    uint32_t v = 0;
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(R.ks, R.fc.job_id, &v), NU_OK);
    CU_ASSERT_EQUAL(v, 24);
    rig_teardown(&R);
}

/* The API calls test_core.c does not make, forwarded to the M33 as well. */
static void test_rest_of_api(void)
{
    CU_ASSERT_EQUAL_FATAL(rig_setup(&R, "prog-m33-api", 1), NU_OK);
    uint8_t buf[4096];
    size_t len = 0;
    CU_ASSERT_EQUAL(pg_core_identity_cert(R.core, buf, sizeof(buf), &len), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL_FATAL(rig_enroll(&R), NU_OK);
    CU_ASSERT_EQUAL(pg_core_identity_cert(R.core, buf, sizeof(buf), &len), NU_OK);
    CU_ASSERT(len > 100 && buf[0] == 0x30); /* a DER certificate */
    char topic[128];
    CU_ASSERT_EQUAL(pg_core_topic_status(R.core, topic, sizeof(topic)), NU_OK);
    CU_ASSERT_STRING_EQUAL(topic, "nusec/v1/prog/prog-m33-api/status");
    CU_ASSERT_EQUAL(pg_core_topic_status(R.core, topic, 8), NU_ERR_TOO_LARGE);
    CU_ASSERT_EQUAL(pg_core_status_encode(R.core, PG_PROG_OFFLINE, buf, sizeof(buf), &len), NU_OK);
    Nusec__V1__Envelope *env = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_envelope_unpack(buf, len, &env, NULL), NU_OK);
    CU_ASSERT_EQUAL(env->body_case, NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_STATUS);
    nu_envelope_free(env);
    unsigned before = R.fc.status_msgs;
    CU_ASSERT_EQUAL(pg_core_status_publish(R.core, PG_PROG_IDLE), NU_OK);
    CU_ASSERT_EQUAL(R.fc.status_msgs, before + 1);
    pg_core_on_message(R.core, "nusec/v1/prog/prog-m33-api/cmd", (const uint8_t *)"\x0a\xff", 2);
    int action = -1;
    CU_ASSERT_EQUAL(pg_core_poll(R.core, &action), NU_OK); /* garbage was dropped */
    CU_ASSERT_EQUAL(action, 0);
    pg_core_stop(R.core, PG_STOP_COMMAND);
    rig_teardown(&R);
}

/* tests/vectors/seal/vectors.txt: "name = ..." starts a vector, "key = hex". */
static const char *const KEYS[9] = {"recipient_pub", "ephemeral_pub", "shared_secret",
                                    "hkdf_key",      "nonce",         "aad",
                                    "plaintext",     "ciphertext",    "box"};

struct vec {
    char name[64];
    uint8_t *f[9];
    size_t len[9];
};

static int load_vectors(struct vec *v, int max)
{
    uint8_t *text = NULL;
    size_t tl = 0;
    if (nu_file_read(NUSEC_SOURCE_DIR "/tests/vectors/seal/vectors.txt", 1 << 20, &text, &tl) !=
        NU_OK)
        return -1;
    int n = -1;
    char *save = NULL;
    text = realloc(text, tl + 1);
    text[tl] = 0;
    for (char *line = strtok_r((char *)text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char key[64], val[8192] = "";
        if (line[0] == '#' || sscanf(line, "%63s = %8191s", key, val) < 1)
            continue;
        if (!strcmp(key, "name") && n + 1 < max) {
            n++;
            memset(&v[n], 0, sizeof(v[n]));
            snprintf(v[n].name, sizeof(v[n].name), "%.63s", val);
            continue;
        }
        for (int k = 0; k < 9 && n >= 0; k++) {
            if (strcmp(key, KEYS[k]))
                continue;
            v[n].f[k] = malloc(strlen(val) / 2 + 1);
            nu_hex_decode(val, v[n].f[k], strlen(val) / 2 + 1, &v[n].len[k]);
        }
    }
    free(text);
    return n + 1;
}

static void test_seal_vectors(void)
{
    struct vec v[16];
    CU_ASSERT_EQUAL_FATAL(rig_setup(&R, "prog-m33-vec", 1), NU_OK); /* the crypto HAL */
    int n = load_vectors(v, 16);
    CU_ASSERT_FATAL(n >= 4);
    for (int i = 0; i < n; i++) {
        uint32_t step = 99;
        int rc = m33_host_seal_vector((const uint8_t *const *)v[i].f, v[i].len, &step);
        if (rc != NU_OK || step != 0)
            fprintf(stderr, "vector %s: %s at step %u\n", v[i].name, nu_err_name(rc), step);
        CU_ASSERT_EQUAL(rc, NU_OK);
        CU_ASSERT_EQUAL(step, 0);
        for (int k = 0; k < 9; k++)
            free(v[i].f[k]);
    }
    rig_teardown(&R);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"8 sockets, 24 chips on the M33's scheduler", test_eight_sockets},
        {"tests/vectors/seal: codec and crypto HAL from the M33", test_seal_vectors},
        {"the rest of pg_core.h on the M33", test_rest_of_api},
        {NULL, NULL},
    };
    const struct nu_test_suite suites[] = {
        {"m33", NULL, NULL, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("programmer_m33_target", suites);
}
