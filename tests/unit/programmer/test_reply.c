/*
 * The cloud's answers verified end to end by the programmer core (pg_reply.c),
 * on the bench: the fake cloud signs every answer with its package key as the
 * real cloud signs with its HSM package key, and plays a hostile site broker
 * (a CM-held key, a replayed genuine answer, no signature). What must hold:
 * nothing the forger sent is used (no certificate written, no chip locked, no
 * pin taken), each forgery is counted, and the genuine cloud still works.
 */
#include "rig.h"

#include "nu_crypto.h"
#include "nu_test.h"
#include "pp_keystore.h"

#include <stdlib.h>
#include <string.h>

static struct rig R;

static void setup_enrolled(const char *name)
{
    CU_ASSERT_EQUAL_FATAL(rig_setup(&R, name, 1), NU_OK);
    CU_ASSERT_EQUAL_FATAL(rig_enroll(&R), NU_OK);
    uint8_t *pkg = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(rig_package(&R, 10, &pkg, &len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_package_load(R.core, pkg, len), NU_OK);
    free(pkg);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 4, 0, 0), NU_OK);
}

static void forger(void)
{
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&R.fc.forge_key), NU_OK);
}

static void test_forged_certificate_not_written(void)
{
    setup_enrolled("prog-forge");
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL(pg_core_forged(R.core), 0);
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    forger();
    R.fc.forge_replies = 2; /* two cert.request answers signed by a CM-held key */
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    /* Both dropped and counted; the chip was held and asked again with the
     * same idempotency key: the genuine certificate, one unit, one issuance. */
    CU_ASSERT_EQUAL(pg_core_forged(R.core), 2);
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(R.fc.issued, 1);
    uint32_t v = 0;
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(R.ks, R.fc.job_id, &v), NU_OK);
    CU_ASSERT_EQUAL(v, 1);
    pg_core_production_end(R.core);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.locked, 1);
    CU_ASSERT_EQUAL(c.verified, 1); /* the Device CA's certificate, not the forger's */
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 1);
    rig_teardown(&R);
}

/*
 * The CM's broker answers a cert.request (which reached the cloud: the
 * certificate is issued) with an unsigned answer too large for the buffer,
 * then with a PUBACK refusal, and answers a device.report the same way. Not
 * the cloud's word: each is dropped and counted, the chip is held and asked
 * again with the same idempotency key, its report stays journaled until the
 * genuine acknowledgement. No chip failed, no unit spent for nothing.
 */
static void test_unsigned_link_refusals_are_no_verdict(void)
{
    setup_enrolled("prog-refused");
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    struct pg_result res;
    R.fc.link_refusals = 2; /* cert.request: TOO_LARGE, then NOT_AUTHORIZED */
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(res.error, 0);
    CU_ASSERT_EQUAL(pg_core_forged(R.core), 2);
    CU_ASSERT_EQUAL(R.fc.issued, 1); /* the retry got the issued one */
    unsigned reports = fc_count_reports(&R.fc, 1);
    CU_ASSERT_EQUAL(reports, 1);

    /* The next chip's device.report: refused twice on the link, then kept
     * until the cloud acknowledges it. */
    R.fc.link_refusal_op = "device.report";
    R.fc.link_refusals = 2;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(R.fc.link_refusals, 0);
    CU_ASSERT_EQUAL(pg_core_forged(R.core), 4);
    uint32_t v = 0;
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(R.ks, R.fc.job_id, &v), NU_OK);
    CU_ASSERT_EQUAL(v, 2); /* two chips, two units */
    pg_core_production_end(R.core);
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK); /* nothing left in it */
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.locked, 2);
    CU_ASSERT_EQUAL(c.verified, 2);
    CU_ASSERT_EQUAL(R.fc.issued, 2);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 2);
    rig_teardown(&R);
}

static void test_unsigned_and_replayed_answers_dropped(void)
{
    setup_enrolled("prog-replay");
    /* An unsigned firmware manifest, then a genuine answer replayed (it
     * answers the previous request): both dropped, counted, nothing cached. */
    R.fc.unsigned_replies = 1;
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(pg_core_forged(R.core), 1);
    R.fc.replay_replies = 1;
    CU_ASSERT_NOT_EQUAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL(pg_core_forged(R.core), 2);
    CU_ASSERT_EQUAL(pg_core_production_begin(R.core) == NU_OK, 0); /* no verified image */
    /* The honest answers afterwards: the download completes. */
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL(pg_core_forged(R.core), 2);
    rig_teardown(&R);
}

static void test_anchor_authenticates_relayed_enrollment(void)
{
    uint8_t pkg_pub[65], other[65], id_cert[8];
    size_t n = 0;
    CU_ASSERT_EQUAL_FATAL(rig_setup(&R, "prog-anchor", 1), NU_OK);
    memcpy(pkg_pub, R.fc.package_s.pub, sizeof(pkg_pub));
    CU_ASSERT(!pg_core_anchored(R.core));
    uint8_t compressed[65] = {0x02};
    CU_ASSERT_EQUAL(pg_core_anchor_set(R.core, compressed), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL_FATAL(pg_core_anchor_set(R.core, pkg_pub), NU_OK);
    CU_ASSERT(pg_core_anchored(R.core));
    /* Write-once: the same key again is fine, another is refused. */
    CU_ASSERT_EQUAL(pg_core_anchor_set(R.core, pkg_pub), NU_OK);
    memcpy(other, pkg_pub, sizeof(other));
    other[64] ^= 1;
    CU_ASSERT_EQUAL(pg_core_anchor_set(R.core, other), NU_ERR_EXISTS);

    /* A station (the CM) relays the enrollment and forges the answer with a
     * key of its own (its own CA, package key, ROTPK would follow): refused,
     * nothing pinned, no identity. */
    forger();
    R.fc.forge_replies = 1; /* the challenge */
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_ERR_BAD_SIGNATURE);
    R.fc.forge_replies = 0;
    R.fc.unsigned_replies = 2; /* challenge + answer, unsigned */
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_ERR_BAD_SIGNATURE);
    R.fc.unsigned_replies = 0;
    CU_ASSERT_EQUAL(pg_core_forged(R.core), 2);
    CU_ASSERT(!pg_core_enrolled(R.core));
    CU_ASSERT_EQUAL(pp_ks_ops.blob_get(R.ks, "pin.package", id_cert, sizeof(id_cert), &n),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(pp_ks_ops.blob_get(R.ks, "identity.crt", id_cert, sizeof(id_cert), &n),
                    NU_ERR_NOT_FOUND);

    /* The genuine cloud's answer, relayed by the same station: enrolled, and
     * the anchor survives a restart. */
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_OK);
    CU_ASSERT(pg_core_enrolled(R.core));
    rig_crash(&R);
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    CU_ASSERT(pg_core_anchored(R.core));
    CU_ASSERT(pg_core_enrolled(R.core));
    rig_teardown(&R);
}

static void test_anchor_of_another_oem_refuses(void)
{
    /* Anchored to another key: the cloud's genuine answer is not its
     * signer's, so enrollment fails closed (and pins nothing). */
    uint8_t other[65];
    struct nu_p256_key *k = NULL;
    CU_ASSERT_EQUAL_FATAL(rig_setup(&R, "prog-other", 1), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&k), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_pub(k, other), NU_OK);
    nu_p256_key_destroy(k);
    CU_ASSERT_EQUAL_FATAL(pg_core_anchor_set(R.core, other), NU_OK);
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_ERR_BAD_SIGNATURE);
    CU_ASSERT(!pg_core_enrolled(R.core));
    CU_ASSERT_EQUAL(R.fc.n_enrolled, 0); /* it never got past the challenge */
    rig_teardown(&R);
}

static const struct nu_test_case reply_cases[] = {
    {"a certificate answer signed by a CM-held key is not written",
     test_forged_certificate_not_written},
    {"unsigned and replayed answers are dropped", test_unsigned_and_replayed_answers_dropped},
    {"an unsigned refusal on the link (too large, PUBACK) is no verdict",
     test_unsigned_link_refusals_are_no_verdict},
    {"the anchor authenticates a relayed enrollment", test_anchor_authenticates_relayed_enrollment},
    {"an anchor of another key refuses the enrollment", test_anchor_of_another_oem_refuses},
    {NULL, NULL},
};

int main(void)
{
    const struct nu_test_suite suites[] = {
        {"replies", NULL, NULL, reply_cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("programmer_reply", suites);
}
