/*
 * The programmer core, end to end on the bench: POSIX KeyStore, flash and
 * crypto, simulated targets, and the fake cloud behind the transport HAL.
 * Every assertion is about what the OEM, the CM or an attacker would see:
 * chips locked with verified certificates, counters, events, refusals.
 */
#include "rig.h"

#include "nu_crypto.h"
#include "nu_test.h"
#include "nu_util.h"
#include "pp_flash.h"
#include "pp_keystore.h"
#include "pp_port.h"
#include "tsim.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static struct rig R;

#define RIG_UP(name, sockets)                                                                      \
    do {                                                                                           \
        CU_ASSERT_EQUAL_FATAL(rig_setup(&R, name, sockets), NU_OK);                                \
        CU_ASSERT_EQUAL_FATAL(rig_enroll(&R), NU_OK);                                              \
    } while (0)

static void load_package(uint32_t limit)
{
    uint8_t *pkg = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(rig_package(&R, limit, &pkg, &len), NU_OK);
    CU_ASSERT_EQUAL(pg_core_package_load(R.core, pkg, len), NU_OK);
    free(pkg);
}

static uint32_t counter(void)
{
    uint32_t v = 0;
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(R.ks, R.fc.job_id, &v), NU_OK);
    return v;
}

static off_t file_size(const char *rel)
{
    char path[1024];
    struct stat st;
    snprintf(path, sizeof(path), "%s/%s", R.pdir, rel);
    return stat(path, &st) == 0 ? st.st_size : -1;
}

/* ---- production ---------------------------------------------------------------- */

static void test_full_production(void)
{
    RIG_UP("prog-full", 4);
    load_package(100);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 12, 0, 0), NU_OK);
    int rc = -1;
    CU_ASSERT_EQUAL(rig_produce(&R, &rc), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(rc, NU_OK);

    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.chips, 12);
    CU_ASSERT_EQUAL(c.locked, 12);
    CU_ASSERT_EQUAL(c.verified, 12); /* cert -> device CA, chip key, CN = UID */
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 12);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", -1), 0);
    CU_ASSERT_EQUAL(counter(), 12);
    CU_ASSERT_EQUAL(R.fc.issued, 12);
    CU_ASSERT_EQUAL(R.fc.bad_messages, 0); /* every envelope passed nu_envelope_unpack */
    CU_ASSERT(R.fc.status_msgs >= 2);
    uint32_t done = 0, failed = 0;
    pg_core_counts(R.core, &done, &failed);
    CU_ASSERT_EQUAL(done, 12);
    CU_ASSERT_EQUAL(failed, 0);
    rig_teardown(&R);
}

static void test_counter_never_exceeds_limit(void)
{
    RIG_UP("prog-limit", 4);
    R.fc.quota = 0; /* the cloud would issue forever */
    load_package(5);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 12, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_LIMIT);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.locked, 5);
    CU_ASSERT_EQUAL(c.verified, 5);
    CU_ASSERT_EQUAL(counter(), 5);
    CU_ASSERT_EQUAL(R.fc.issued, 5);
    CU_ASSERT_EQUAL(R.fc.cert_requests, 5);
    /* Nothing left: production cannot start again, and the job is closed. */
    CU_ASSERT_EQUAL(pg_core_production_begin(R.core), NU_ERR_LIMIT);
    uint8_t *pkg = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(rig_package(&R, 50, &pkg, &len), NU_OK);
    CU_ASSERT_EQUAL(pg_core_package_load(R.core, pkg, len), NU_ERR_REPLAY);
    free(pkg);
    rig_teardown(&R);
}

static void test_crash_wastes_never_creates(void)
{
    RIG_UP("prog-crash", 1);
    load_package(6);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 10, 0, 0), NU_OK);
    R.fc.quota = 0;
    /* First chip provisioned, then a power cut during the second one, right
     * after its request: the KeyStore reservation is lost with the process. */
    R.fc.cert_unreachable = 1;
    R.fc.stop_after = 2; /* the station stops production meanwhile */
    rig_produce(&R, NULL);
    CU_ASSERT_EQUAL(R.fc.issued, 0);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", -1), 0); /* held, not failed */
    unsigned chunks = R.fc.chunk_requests;

    rig_crash(&R);
    R.fc.cert_unreachable = 0;
    R.fc.stop_after = 0;
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    CU_ASSERT_STRING_EQUAL(pg_core_job_id(R.core), "job-1"); /* package reloaded from flash */
    CU_ASSERT_EQUAL(counter(), 1);                           /* persisted */
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_LIMIT);
    CU_ASSERT_EQUAL(R.fc.chunk_requests, chunks); /* image came from the flash cache */
    CU_ASSERT_EQUAL(counter(), 6);
    CU_ASSERT_EQUAL(R.fc.issued, 6); /* the held chip used its own unit: none wasted */
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 6);
    CU_ASSERT_EQUAL(c.chips, c.locked + c.blank); /* no chip left keyed */
    rig_teardown(&R);
}

/* Item 2 of issue 10: the cloud in trouble holds the chip, costs nothing. */
static void test_transient_cloud_errors_hold_the_chip(void)
{
    RIG_UP("prog-hold", 2);
    load_package(10);
    R.fc.cert_transient = 13; /* no subscriber, timeout, DB, BUSY, IO, HSM, ... */
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 4, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(R.fc.failed_tries, 13);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 4);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", -1), 0);
    CU_ASSERT_EQUAL(counter() - pg_core_units_kept(R.core), 4); /* one unit per chip */
    CU_ASSERT_EQUAL(R.fc.issued, 4);
    CU_ASSERT(R.fc.waiting_status >= 1); /* the station saw "waiting-cloud" */
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 4);
    rig_teardown(&R);
}

/* Item 5: at the end of the job, the chips not started stay blank. */
static void test_limit_leaves_chips_blank(void)
{
    RIG_UP("prog-blank", 4);
    load_package(6);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 16, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_LIMIT);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 6);
    CU_ASSERT_EQUAL(c.chips, c.locked + c.blank); /* nothing burned: OTP, key, flash */
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", -1), 0);
    CU_ASSERT_EQUAL(counter(), 6);
    uint32_t done = 0, failed = 0;
    pg_core_counts(R.core, &done, &failed);
    CU_ASSERT_EQUAL(done, 6);
    CU_ASSERT_EQUAL(failed, 0);
    rig_teardown(&R);
}

/* Item 5: a locked chip with its certificate is done, not produced again. */
static void test_locked_chip_recognised(void)
{
    RIG_UP("prog-locked", 1);
    load_package(10);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 1, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(R.fc.issued, 1);
    struct fc_event e = R.fc.events[0];
    /* The same chip comes back in the socket. */
    CU_ASSERT_EQUAL_FATAL(pp_target_load(R.tgt, 0, R.targets, e.uid), NU_OK);
    unsigned before = R.fc.cert_requests;
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(R.fc.cert_requests, before);
    CU_ASSERT_EQUAL(counter() - pg_core_units_kept(R.core), 1);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", -1), 0);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 1); /* reported once, however often */
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 1);
    rig_teardown(&R);
}

/* Item 5: a chip keyed by a run that crashed (no unit kept) is finished by
 * the next run: same key, and the cloud answers the certificate it issued. */
static void test_keyed_chip_resumed_after_crash(void)
{
    RIG_UP("prog-resume", 1);
    load_package(10);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 1, 0, 0), NU_OK);
    /* Issued, the answer lost, and production stopped before it comes. */
    R.fc.drop_cert_replies = 100;
    R.fc.stop_after = 1;
    rig_produce(&R, NULL);
    CU_ASSERT_EQUAL(R.fc.issued, 1);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.locked, 0);
    /* A power cut loses the unit kept for the chip (as a crash before the
     * stop would have): the chip is still in its socket, keyed. */
    rig_crash(&R);
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    char units[128];
    snprintf(units, sizeof(units), "units.%s", R.fc.job_id);
    CU_ASSERT_EQUAL(pp_ks_ops.blob_put(R.ks, units, NULL, 0), NU_OK);
    R.fc.drop_cert_replies = 0;
    R.fc.stop_after = 0;
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(R.fc.issued, 1); /* the same certificate, answered again */
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 1);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", -1), 0);
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 1);
    CU_ASSERT_EQUAL(counter() - pg_core_units_kept(R.core), 2); /* the crash cost one unit */
    rig_teardown(&R);
}

/* Issue 10: a programmer killed (no clean end, nothing saved) while its
 * chip waits for the certificate. The restarted programmer finishes that
 * chip with the unit it took (its in-flight record in the KeyStore) and the
 * same idempotency key: no second unit, even at the limit, and the chips
 * behind it stay blank. */
static void test_kill9_mid_chip_resumes_without_a_unit(void)
{
    RIG_UP("prog-kill9", 1);
    load_package(1);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 3, 0, 0), NU_OK);
    R.fc.drop_cert_replies = 100;
    R.fc.stop_after = 1;
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_ERR_STATE); /* waiting when killed */
    CU_ASSERT_EQUAL(R.fc.issued, 1);
    CU_ASSERT_EQUAL(counter(), 1);
    rig_crash(&R); /* no pg_core_production_end: nothing kept but the KeyStore */
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    R.fc.drop_cert_replies = 0;
    R.fc.stop_after = 0;
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_LIMIT);
    CU_ASSERT_EQUAL(R.fc.issued, 1); /* the same certificate, answered again */
    CU_ASSERT_EQUAL(counter(), 1);   /* no unit burned by the kill */
    CU_ASSERT_EQUAL(pg_core_units_kept(R.core), 0);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 1);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", -1), 0);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 1); /* the half-done chip completed */
    CU_ASSERT_EQUAL(c.locked, 1);
    CU_ASSERT_EQUAL(c.chips - c.locked, c.blank); /* every other chip still blank */
    rig_teardown(&R);
}

/* Item 5: a paused job stops the line; the chip waits in its socket with its
 * unit and is finished when production starts again. */
static void test_paused_job_keeps_the_chip(void)
{
    RIG_UP("prog-pause", 1);
    load_package(10);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 3, 0, 0), NU_OK);
    R.fc.cert_paused = 1;
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_JOB);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", -1), 0);
    CU_ASSERT_EQUAL(tsim_feeder_remaining(R.feeder), 2);
    R.fc.cert_paused = 0;
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 3);
    CU_ASSERT_EQUAL(counter() - pg_core_units_kept(R.core), 3); /* the held unit was used */
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 3);
    rig_teardown(&R);
}

/*
 * A chip a paused job left keyed in socket 0 holds the programmer's last
 * unit but one. Next run, socket 1 uses the last one, then finds the
 * counter at the limit: that must not stop the line while socket 0's chip
 * still holds a unit, or socket 0 never runs again and its chip stays keyed
 * with the unit wasted. The sockets run one after the other here, in the
 * order that raced.
 */
static void test_limit_waits_for_a_held_chip(void)
{
    struct pg_result res;
    RIG_UP("prog-limit-held", 2);
    load_package(2);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 4, 0, 0), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    R.fc.cert_paused = 1;
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_ERR_STATE);
    CU_ASSERT_TRUE(res.held);
    CU_ASSERT_EQUAL(pg_core_production_end(R.core), PG_STOP_JOB);
    CU_ASSERT_EQUAL(pg_core_units_kept(R.core), 1);

    R.fc.cert_paused = 0;
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 1, &res), NU_OK);
    CU_ASSERT_TRUE(res.provisioned);
    CU_ASSERT_EQUAL(counter(), 2);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 1, &res), NU_ERR_LIMIT); /* its chip goes back blank */
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT_TRUE(res.provisioned);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_ERR_LIMIT); /* now the line ends */
    CU_ASSERT_EQUAL(pg_core_production_end(R.core), PG_STOP_LIMIT);
    CU_ASSERT_EQUAL(pg_core_units_kept(R.core), 0);
    CU_ASSERT_EQUAL(R.fc.issued, 2);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 2);
    CU_ASSERT_EQUAL(c.chips, c.locked + c.blank); /* no chip left keyed */
    rig_teardown(&R);
}

/* Item 4: each report is confirmed by the cloud, kept until then, and
 * recorded once. */
static void test_reports_confirmed_and_journaled(void)
{
    RIG_UP("prog-report", 2);
    load_package(10);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 4, 0, 0), NU_OK);
    R.fc.report_transient = 5;
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 4);
    CU_ASSERT(R.fc.report_requests >= 9);

    /* The cloud goes away after the chip is locked; production is stopped;
     * the programmer restarts: the report is still sent, once. */
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 1, 0, 0), NU_OK);
    R.fc.report_unreachable = 1;
    R.fc.failed_tries = 0;
    R.fc.stop_after = 2;
    rig_produce(&R, NULL);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 4);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 5);
    rig_crash(&R);
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    /* Idle, the cloud still away: one try, the report stays. */
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_ERR_TIMEOUT);
    R.fc.report_unreachable = 0;
    R.fc.stop_after = 0;
    /* Idle, the cloud back: sent without waiting for the next production. */
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 5);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 5);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 0), 0);
    rig_teardown(&R);
}

static void test_lost_reply_retried_idempotently(void)
{
    RIG_UP("prog-idem", 2);
    load_package(10);
    R.fc.drop_cert_replies = 2;
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 4, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(R.fc.cert_requests, 6);
    CU_ASSERT_EQUAL(R.fc.issued, 4); /* retries did not count twice */
    CU_ASSERT_EQUAL(counter(), 4);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 4);
    rig_teardown(&R);
}

static void test_quota_exhausted_stops_cleanly(void)
{
    RIG_UP("prog-quota", 1);
    R.fc.quota = 3;
    load_package(10);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 8, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_QUOTA);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 3);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", NU_ERR_QUOTA_EXHAUSTED), 1);
    CU_ASSERT_EQUAL(tsim_feeder_remaining(R.feeder), 4); /* the rest stays in the tray */
    rig_teardown(&R);
}

/* ---- hostile targets ---------------------------------------------------------------- */

static void fault_case(unsigned fault, int want_code, int counts_unit)
{
    RIG_UP("prog-fault", 2);
    load_package(100);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 6, fault, 2), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 3);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.failed", want_code), 3);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.locked, 3); /* a hostile chip is never locked as good */
    CU_ASSERT_EQUAL(c.verified, 3);
    /* A chip that failed before the cloud was asked gives its unit to the next. */
    CU_ASSERT_EQUAL(counter() - pg_core_units_kept(R.core), counts_unit ? 6 : 3);
    CU_ASSERT_EQUAL(R.fc.issued, counts_unit ? 6 : 3);
    rig_teardown(&R);
}

static void test_dead_chip(void)
{
    fault_case(TSIM_FAULT_LINK, NU_ERR_TARGET, 0);
}

static void test_keygen_fault(void)
{
    fault_case(TSIM_FAULT_KEYGEN, NU_ERR_TARGET, 0);
}

static void test_not_blank_chip(void)
{
    fault_case(TSIM_FAULT_NOT_BLANK, NU_ERR_NOT_BLANK, 0);
}

static void test_csr_for_foreign_key(void)
{
    /* Caught before the counter moves: no unit spent on it. */
    fault_case(TSIM_FAULT_CSR_WRONG_KEY, NU_ERR_BAD_CSR, 0);
}

static void test_fake_boot_caught_by_attestation(void)
{
    fault_case(TSIM_FAULT_FAKE_BOOT, NU_ERR_BAD_SIGNATURE, 1);
}

static void test_bad_attestation(void)
{
    fault_case(TSIM_FAULT_BAD_ATTEST, NU_ERR_BAD_SIGNATURE, 1);
}

static void test_flash_corruption_fails_boot(void)
{
    fault_case(TSIM_FAULT_FLASH_CORRUPT, NU_ERR_BOOT_FAILED, 1);
}

static void test_flaky_link_retried(void)
{
    RIG_UP("prog-flaky", 2);
    load_package(100);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 6, TSIM_FAULT_FLAKY, 1), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    /* 1 in 4 commands fails; with 3 tries per command most chips make it,
     * and every chip is accounted for either way. */
    unsigned ok = fc_count_events(&R.fc, "device.provisioned", 0);
    unsigned bad = fc_count_events(&R.fc, "device.failed", NU_ERR_TARGET);
    CU_ASSERT_EQUAL(ok + bad, 6);
    CU_ASSERT(ok >= 3);
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, ok);
    rig_teardown(&R);
}

/* ---- firmware ------------------------------------------------------------------------ */

static void test_tampered_chunk_refetched(void)
{
    RIG_UP("prog-chunk", 1);
    load_package(10);
    R.fc.tamper_chunk_once = 2;
    R.fc.swap_chunk = 4; /* a chunk moved to another index is caught too */
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.chunk_requests, 6 + 2);
    CU_ASSERT(pg_core_firmware_ready(R.core));
    rig_teardown(&R);
}

static void test_chunk_always_tampered_never_reaches_target(void)
{
    RIG_UP("prog-chunk2", 1);
    load_package(10);
    R.fc.tamper_chunk_always = 1;
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 2, 0, 0), NU_OK);
    int rc = 0;
    rig_produce(&R, &rc);
    CU_ASSERT_EQUAL(rc, NU_ERR_TAMPERED);
    CU_ASSERT_EQUAL(R.fc.chunk_requests, 1 + 4); /* chunk 0, then 4 tries of chunk 1 */
    CU_ASSERT(!pg_core_firmware_ready(R.core));
    CU_ASSERT_EQUAL(pg_core_production_begin(R.core), NU_ERR_STATE);
    CU_ASSERT_EQUAL(file_size("flash/image.bin") <= 8192, 1); /* only chunk 0 cached */
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.chips, 0); /* no chip was even taken from the tray */
    CU_ASSERT_EQUAL(counter(), 0);
    rig_teardown(&R);
}

static void test_bad_image_refused_before_caching(void)
{
    RIG_UP("prog-badimg", 1);
    /* Image signed by someone else; the package digest matches it, so only
     * the MCUboot check against the pinned ROTPK can refuse it. */
    CU_ASSERT_EQUAL_FATAL(fc_use_foreign_image(&R.fc), NU_OK);
    load_package(10);
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_ERR_BAD_FIRMWARE);
    CU_ASSERT(!pg_core_firmware_ready(R.core));
    CU_ASSERT_EQUAL(file_size("flash/image.bin"), 0); /* erased */
    CU_ASSERT_EQUAL(file_size("flash/meta.bin"), 0);
    rig_teardown(&R);
}

static void test_manifest_digest_mismatch(void)
{
    RIG_UP("prog-mani", 1);
    load_package(10);
    R.fc.image_digest[0] ^= 1; /* manifest disagrees with the signed package */
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_ERR_BAD_FIRMWARE);
    CU_ASSERT_EQUAL(R.fc.chunk_requests, 0);
    rig_teardown(&R);
}

/* A resend the cloud saw twice (its first answer lost in a WAN cut) is
 * answered REPLAY: the download asks again, with a new message id (the fake
 * cloud, like the real one, answers REPLAY to every copy of a message id it
 * took, so a retry of the same bytes would never get through). */
static void test_replay_answer_asked_again(void)
{
    RIG_UP("prog-replay", 1);
    load_package(10);
    R.fc.lost_answers = 1; /* the manifest request: taken, its answer lost */
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lost_answers, 0);
    CU_ASSERT_EQUAL(R.fc.replays_answered, 1); /* the same-bytes retry */
    CU_ASSERT(pg_core_firmware_ready(R.core));
    rig_teardown(&R);
}

static void test_download_resumes_after_disconnect(void)
{
    RIG_UP("prog-resume", 1);
    load_package(10);
    R.fc.chunks_fail_after = 3;
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_ERR_CONNECTION);
    CU_ASSERT(!pg_core_firmware_ready(R.core));
    R.fc.chunks_fail_after = -1;
    unsigned before = R.fc.chunks_served;
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.chunks_served - before, 3); /* chunks 3..5 only */
    CU_ASSERT(pg_core_firmware_ready(R.core));
    rig_teardown(&R);
}

static void test_power_cut_during_download(void)
{
    RIG_UP("prog-cut", 1);
    load_package(10);
    pp_flash_cut_after(R.flash, 5); /* erase(2) + meta + chunk 0 + meta ... */
    CU_ASSERT_NOT_EQUAL(pg_core_firmware_fetch(R.core), NU_OK);
    rig_crash(&R);
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    CU_ASSERT_EQUAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT(pg_core_firmware_ready(R.core));
    rig_teardown(&R);
}

/* ---- packages ------------------------------------------------------------------------- */

static int try_package(struct fc_pkg_opts *o, void (*mutate)(uint8_t *, size_t))
{
    uint8_t *pkg = NULL;
    size_t len = 0;
    if (!o->recipient_pub)
        o->recipient_pub = R.fc.enrolled_pkg_pub;
    if (!o->programmer_id)
        o->programmer_id = R.name;
    if (!o->limit)
        o->limit = 10;
    if (!o->expires_at_ms)
        o->expires_at_ms = nu_time_ms() + 3600000;
    if (!o->created_at_ms)
        o->created_at_ms = nu_time_ms();
    static const uint8_t zero[16];
    if (!memcmp(o->package_id, zero, 16))
        nu_random(o->package_id, 16);
    if (fc_make_package(&R.fc, o, &pkg, &len) != NU_OK)
        return -1;
    if (mutate)
        mutate(pkg, len);
    int rc = pg_core_package_load(R.core, pkg, len);
    free(pkg);
    return rc;
}

static void flip_last(uint8_t *p, size_t len)
{
    p[len - 80] ^= 0x40; /* inside the sealed box or signature area */
}

static void flip_summary(uint8_t *p, size_t len)
{
    (void)len;
    p[6] ^= 0x01; /* inside the job id of the summary */
}

static void truncate_half(uint8_t *p, size_t len)
{
    memset(p + len / 2, 0, len - len / 2);
}

static void test_package_refusals_are_typed(void)
{
    RIG_UP("prog-pkg", 1);
    struct nu_p256_key *other = NULL;
    uint8_t other_pub[65];
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&other), NU_OK);
    nu_p256_key_pub(other, other_pub);

    struct fc_pkg_opts o;
    memset(&o, 0, sizeof(o));
    o.programmer_id = "prog-other";
    CU_ASSERT_EQUAL(try_package(&o, NULL), NU_ERR_WRONG_PROGRAMMER);
    memset(&o, 0, sizeof(o));
    o.expires_at_ms = nu_time_ms() - 1000;
    CU_ASSERT_EQUAL(try_package(&o, NULL), NU_ERR_EXPIRED);
    memset(&o, 0, sizeof(o));
    o.sign_with = other;
    CU_ASSERT_EQUAL(try_package(&o, NULL), NU_ERR_BAD_SIGNATURE);
    memset(&o, 0, sizeof(o));
    CU_ASSERT_EQUAL(try_package(&o, flip_last), NU_ERR_BAD_SIGNATURE);
    memset(&o, 0, sizeof(o));
    CU_ASSERT_EQUAL(try_package(&o, flip_summary), NU_ERR_BAD_SIGNATURE);
    memset(&o, 0, sizeof(o));
    o.recipient_pub = other_pub; /* signed by the OEM, sealed to someone else */
    CU_ASSERT_EQUAL(try_package(&o, NULL), NU_ERR_TAMPERED);
    memset(&o, 0, sizeof(o));
    o.secrets_job_id = "job-2"; /* secrets that do not match the clear summary */
    CU_ASSERT_EQUAL(try_package(&o, NULL), NU_ERR_TAMPERED);
    memset(&o, 0, sizeof(o));
    o.format = 2;
    CU_ASSERT_EQUAL(try_package(&o, NULL), NU_ERR_NOT_SUPPORTED);
    memset(&o, 0, sizeof(o));
    int rc = try_package(&o, truncate_half);
    CU_ASSERT(rc == NU_ERR_DECODE || rc == NU_ERR_BAD_SIGNATURE);
    CU_ASSERT_EQUAL(pg_core_package_load(R.core, (const uint8_t *)"\xff\xff\xff", 3),
                    NU_ERR_DECODE);
    static uint8_t huge[PG_PACKAGE_MAX + 1];
    CU_ASSERT_EQUAL(pg_core_package_load(R.core, huge, sizeof(huge)), NU_ERR_TOO_LARGE);
    CU_ASSERT_PTR_NULL(pg_core_job_id(R.core)); /* nothing was accepted */

    /* Replay: a newer package of the job is in; the older one is refused. */
    uint64_t now = nu_time_ms();
    memset(&o, 0, sizeof(o));
    o.created_at_ms = now;
    CU_ASSERT_EQUAL(try_package(&o, NULL), NU_OK);
    memset(&o, 0, sizeof(o));
    o.created_at_ms = now - 60000;
    CU_ASSERT_EQUAL(try_package(&o, NULL), NU_ERR_REPLAY);
    CU_ASSERT_STRING_EQUAL(pg_core_job_id(R.core), "job-1");
    nu_p256_key_destroy(other);
    rig_teardown(&R);
}

static void test_same_package_again_is_accepted(void)
{
    RIG_UP("prog-same", 1);
    uint8_t *pkg = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(rig_package(&R, 5, &pkg, &len), NU_OK);
    CU_ASSERT_EQUAL(pg_core_package_load(R.core, pkg, len), NU_OK);
    CU_ASSERT_EQUAL(pg_core_package_load(R.core, pkg, len), NU_OK); /* redelivery */
    free(pkg);
    rig_teardown(&R);
}

static void test_package_needs_enrollment(void)
{
    CU_ASSERT_EQUAL_FATAL(rig_setup(&R, "prog-new", 1), NU_OK);
    uint8_t junk[16] = {0x0a, 0x01, 0x00};
    CU_ASSERT_EQUAL(pg_core_package_load(R.core, junk, sizeof(junk)), NU_ERR_STATE);
    rig_teardown(&R);
}

/* ---- enrollment ----------------------------------------------------------------------- */

/* A KeyStore without a vendor attestation key cannot enroll: the cloud
 * never sees a request without an attestation from the core. */
static void test_enrollment_needs_the_factory_step(void)
{
    CU_ASSERT_EQUAL_FATAL(rig_setup_unfactoried(&R, "prog-bare", 1), NU_OK);
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_ERR_NOT_FOUND);
    CU_ASSERT(!pg_core_enrolled(R.core));
    CU_ASSERT_EQUAL(R.fc.n_enrolled, 0);
    /* The factory step afterwards, and it enrolls. */
    CU_ASSERT_EQUAL(rig_factory(&R), NU_OK);
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_OK);
    CU_ASSERT(pg_core_enrolled(R.core));
    /* Factory keys are made once. */
    uint8_t pub[65];
    CU_ASSERT_EQUAL(pp_ks_attest_key_create(R.ks, pub), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(pp_ks_attest_cert_set(R.ks, "NL3-x", pub, sizeof(pub)), NU_ERR_EXISTS);
    /* The measurement register is written once per boot. */
    uint8_t other[32] = {1};
    CU_ASSERT_EQUAL(pp_ks_set_measurement(R.ks, other), NU_ERR_STATE);
    rig_teardown(&R);
}

static void test_enrollment(void)
{
    CU_ASSERT_EQUAL_FATAL(rig_setup(&R, "prog-enroll", 1), NU_OK);
    CU_ASSERT(!pg_core_enrolled(R.core));
    CU_ASSERT_EQUAL(pg_core_enroll(R.core, "station", "wrong-token", NULL, NULL, 0), NU_ERR_TOKEN);
    CU_ASSERT(!pg_core_enrolled(R.core));
    R.fc.enroll_wrong_key = 1;
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_ERR_BAD_CERT);
    CU_ASSERT(!pg_core_enrolled(R.core));
    R.fc.enroll_wrong_key = 0;
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_OK);
    CU_ASSERT(pg_core_enrolled(R.core));
    CU_ASSERT_EQUAL(rig_enroll(&R), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(pg_core_enroll(R.core, "station", "bad token with spaces", NULL, NULL, 0),
                    NU_ERR_INVALID_ARG);
    /* The identity survives a restart, and the keys are the same. */
    uint8_t pub1[65], pub2[65];
    pp_ks_ops.pubkey(R.ks, PG_KEY_IDENTITY, pub1);
    rig_crash(&R);
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    CU_ASSERT(pg_core_enrolled(R.core));
    pp_ks_ops.pubkey(R.ks, PG_KEY_IDENTITY, pub2);
    CU_ASSERT_EQUAL(memcmp(pub1, pub2, 65), 0);
    CU_ASSERT_EQUAL(R.fc.bad_messages, 0);
    rig_teardown(&R);
}

/* ---- station commands ----------------------------------------------------------------- */

static void test_station_commands(void)
{
    RIG_UP("prog-cmd", 1);
    CU_ASSERT_EQUAL_FATAL(pg_core_subscribe(R.core), NU_OK);
    CU_ASSERT_PTR_NOT_NULL_FATAL(R.fc.cmd_cb);
    uint8_t *pkg = NULL, *msg = NULL;
    size_t len = 0, mlen = 0;
    CU_ASSERT_EQUAL_FATAL(rig_package(&R, 5, &pkg, &len), NU_OK);
    Nusec__V1__PackageDelivery d = NUSEC__V1__PACKAGE_DELIVERY__INIT;
    d.sealed_package.data = pkg;
    d.sealed_package.len = len;
    CU_ASSERT_EQUAL_FATAL(fc_station_envelope(&d.base, &msg, &mlen), NU_OK);
    R.fc.cmd_cb(R.fc.cmd_ctx, "nusec/v1/prog/prog-cmd/cmd", msg, mlen);
    free(msg);
    Nusec__V1__ProductionCommand pc = NUSEC__V1__PRODUCTION_COMMAND__INIT;
    pc.job_id = "job-1";
    pc.action = NUSEC__V1__PRODUCTION_ACTION__PRODUCTION_ACTION_START;
    CU_ASSERT_EQUAL_FATAL(fc_station_envelope(&pc.base, &msg, &mlen), NU_OK);
    R.fc.cmd_cb(R.fc.cmd_ctx, "nusec/v1/prog/prog-cmd/cmd", msg, mlen);
    free(msg);
    /* Garbage on the command topic is dropped. */
    R.fc.cmd_cb(R.fc.cmd_ctx, "nusec/v1/prog/prog-cmd/cmd", (const uint8_t *)"\x0a\xff", 2);

    int action = 0;
    CU_ASSERT_EQUAL(pg_core_poll(R.core, &action), NU_OK);
    CU_ASSERT_EQUAL(action, PG_ACTION_START);
    CU_ASSERT_STRING_EQUAL(pg_core_job_id(R.core), "job-1");
    CU_ASSERT_EQUAL(pg_core_poll(R.core, &action), NU_OK);
    CU_ASSERT_EQUAL(action, 0);

    /* STOP while producing: the sockets stop after the chip in hand. */
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 20, 0, 0), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned);
    pc.action = NUSEC__V1__PRODUCTION_ACTION__PRODUCTION_ACTION_STOP;
    CU_ASSERT_EQUAL_FATAL(fc_station_envelope(&pc.base, &msg, &mlen), NU_OK);
    R.fc.cmd_cb(R.fc.cmd_ctx, "nusec/v1/prog/prog-cmd/cmd", msg, mlen);
    free(msg);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_ERR_STATE);
    CU_ASSERT_EQUAL(pg_core_production_end(R.core), PG_STOP_COMMAND);
    CU_ASSERT_EQUAL(counter(), 1);
    free(pkg);
    rig_teardown(&R);
}

static const struct nu_test_case liveness_cases[] = {
    {"transient cloud errors hold the chip, one unit each",
     test_transient_cloud_errors_hold_the_chip},
    {"limit reached: the chips not started stay blank", test_limit_leaves_chips_blank},
    {"a locked chip with its certificate is recognised as done", test_locked_chip_recognised},
    {"a keyed chip is resumed after a crash (same certificate)",
     test_keyed_chip_resumed_after_crash},
    {"a paused job keeps the chip for later", test_paused_job_keeps_the_chip},
    {"the limit reached does not stop the line while a held chip has a unit",
     test_limit_waits_for_a_held_chip},
    {"kill -9 mid-chip: the restart finishes it with its unit",
     test_kill9_mid_chip_resumes_without_a_unit},
    {"device reports confirmed, journaled across a restart, recorded once",
     test_reports_confirmed_and_journaled},
    {NULL, NULL},
};

static const struct nu_test_case production_cases[] = {
    {"full production, 12 chips on 4 sockets", test_full_production},
    {"KeyStore counter never exceeds the package limit", test_counter_never_exceeds_limit},
    {"crash after counting wastes a unit, never creates one", test_crash_wastes_never_creates},
    {"lost certificate replies retried idempotently", test_lost_reply_retried_idempotently},
    {"QUOTA_EXHAUSTED stops cleanly", test_quota_exhausted_stops_cleanly},
    {"station package, START and STOP", test_station_commands},
    {NULL, NULL},
};

static const struct nu_test_case target_cases[] = {
    {"dead chip: failed, socket continues", test_dead_chip},
    {"keygen fault", test_keygen_fault},
    {"chip not blank", test_not_blank_chip},
    {"CSR for a key the chip does not hold", test_csr_for_foreign_key},
    {"fake boot success caught by attestation", test_fake_boot_caught_by_attestation},
    {"attestation with a wrong key", test_bad_attestation},
    {"flash corruption fails secure boot", test_flash_corruption_fails_boot},
    {"flaky link retried", test_flaky_link_retried},
    {NULL, NULL},
};

static const struct nu_test_case firmware_cases[] = {
    {"tampered / moved chunk fetched again", test_tampered_chunk_refetched},
    {"an answer REPLAY (a resend seen twice) is asked again", test_replay_answer_asked_again},
    {"chunk always tampered never reaches a target",
     test_chunk_always_tampered_never_reaches_target},
    {"image not signed by the ROTPK refused and erased", test_bad_image_refused_before_caching},
    {"manifest digest differs from the package", test_manifest_digest_mismatch},
    {"download resumes after a disconnect", test_download_resumes_after_disconnect},
    {"download survives a power cut", test_power_cut_during_download},
    {NULL, NULL},
};

static const struct nu_test_case package_cases[] = {
    {"refusals are typed and change nothing", test_package_refusals_are_typed},
    {"the same package again is accepted", test_same_package_again_is_accepted},
    {"no package before enrollment", test_package_needs_enrollment},
    {"enrollment needs the factory step (attestation key)", test_enrollment_needs_the_factory_step},
    {"enrollment", test_enrollment},
    {NULL, NULL},
};

int main(void)
{
    const struct nu_test_suite suites[] = {
        {"production", NULL, NULL, production_cases},
        {"liveness", NULL, NULL, liveness_cases},
        {"targets", NULL, NULL, target_cases},
        {"firmware", NULL, NULL, firmware_cases},
        {"packages", NULL, NULL, package_cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("programmer_core", suites);
}
