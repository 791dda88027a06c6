/*
 * The programmer's side of the offline lease (issue 15 part 2), on the
 * bench: POSIX KeyStore (line-CA key, lease counter, sealed journal), flash,
 * crypto, simulated targets, the fake cloud behind the transport HAL (its
 * lease.grant / lease.upload check what the real cloud checks: chain
 * through the line CA, counter within the units and never twice, serial
 * once). Asserted: what the OEM, the ledger or an attacker would see.
 */
#include "rig.h"

#include "nu_crypto.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"
#include "pp_flash.h"
#include "pp_keystore.h"
#include "pp_port.h"
#include "tsim.h"

#include <dirent.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/ecc.h>

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

/* A package of `limit`, a tray of `chips` blanks, the firmware, production begun. */
static void line_begin(uint32_t limit, unsigned chips)
{
    load_package(limit);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, chips, 0, 0), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
}

/* ---- a KeyStore whose journal writes fail (power lost right there) ---------------- */

static struct pg_keystore_ops faulty_ks;
static int fail_journal;  /* every journal write: IO, and the power is gone (a stop) */
static int fail_outcomes; /* the next n writes of a record that exists (its outcome): IO */
static int fail_records;  /* the next n writes of a new record: IO (a full disk) */
static int fail_counters; /* the next n lease counter increments: IO (a full disk) */
static int stop_after_fails; /* the station says STOP after this many of those failures */

static void faulty_failed(void)
{
    if (stop_after_fails > 0 && --stop_after_fails == 0)
        pg_core_stop(R.core, PG_STOP_COMMAND);
}

static int faulty_blob_put(void *ctx, const char *name, const uint8_t *data, size_t len)
{
    if (fail_journal && len && !strncmp(name, "lease.j/", 8)) {
        pg_core_stop(R.core, PG_STOP_SHUTDOWN); /* nothing runs on after a power cut */
        return NU_ERR_IO;
    }
    uint8_t rec[2048];
    size_t n = 0;
    if ((fail_outcomes > 0 || fail_records > 0) && len && !strncmp(name, "lease.j/", 8)) {
        int exists = pp_ks_ops.blob_get(ctx, name, rec, sizeof(rec), &n) == NU_OK;
        int *left = exists ? &fail_outcomes : &fail_records;
        if (*left > 0) {
            (*left)--;
            faulty_failed();
            return NU_ERR_IO; /* the disk full right then */
        }
    }
    return pp_ks_ops.blob_put(ctx, name, data, len);
}

static int faulty_counter_inc(void *ctx, const char *name, uint32_t limit, uint32_t *out)
{
    if (fail_counters > 0 && !strncmp(name, "lease/", 6)) {
        fail_counters--;
        faulty_failed();
        return NU_ERR_IO;
    }
    return pp_ks_ops.counter_increment(ctx, name, limit, out);
}

static void use_faulty_keystore(void)
{
    faulty_ks = pp_ks_ops;
    faulty_ks.blob_put = faulty_blob_put;
    faulty_ks.counter_increment = faulty_counter_inc;
    R.hal.ks = &faulty_ks; /* the core holds &R.hal */
}

/* One socket, a lease of 3 granted, `chips` blanks, the KeyStore faulty
 * (armed by the caller), and the cloud gone: the next chip is offline. */
static void faulty_offline_line_up(const char *name, unsigned chips)
{
    RIG_UP(name, 1);
    R.fc.lease_units = 3;
    line_begin(50, chips);
    CU_ASSERT_EQUAL_FATAL(R.fc.leases_granted, 1);
    use_faulty_keystore();
    R.fc.link_down = 1;
    pg_core_link_note(R.core, NU_ERR_CONNECTION);
}

/* ---- power lost just after the journal write -------------------------------------- */

/* Armed: the first lease journal record written cuts the power. From then
 * on nothing persists (KeyStore, flash), the chip takes no command and stays
 * in its socket as it was: what the next boot finds is exactly the state
 * after the journal write and before anything reached the chip. */
static int cut_after_journal, power_lost;
/* Armed: the power goes right after the socket's in-flight record (1) or
 * right after the KeyStore counted the unit (2). */
static int cut_at_unit;
/* Armed: the power goes right after a chip is locked. */
static int cut_after_lock;
static struct pg_keystore_ops dying_ks;
static struct pg_flash_ops dying_flash;
static struct pg_target_ops dying_tgt;

static int dying_blob_put(void *ctx, const char *name, const uint8_t *data, size_t len)
{
    if (power_lost) {
        pg_core_stop(R.core, PG_STOP_COMMAND); /* the run ends with the power */
        return NU_ERR_IO;
    }
    int rc = pp_ks_ops.blob_put(ctx, name, data, len);
    if (rc == NU_OK && cut_after_journal && len && !strncmp(name, "lease.j/", 8))
        power_lost = 1;
    if (rc == NU_OK && cut_at_unit == 1 && len && !strncmp(name, "inflight.", 9))
        power_lost = 1;
    return rc;
}

static int dying_counter_inc(void *ctx, const char *name, uint32_t limit, uint32_t *out)
{
    if (power_lost) {
        pg_core_stop(R.core, PG_STOP_COMMAND); /* the run ends with the power */
        return NU_ERR_IO;
    }
    int rc = pp_ks_ops.counter_increment(ctx, name, limit, out);
    if (rc == NU_OK && cut_at_unit == 2)
        power_lost = 1;
    return rc;
}

static int dying_flash_write(void *ctx, enum pg_flash_area a, uint32_t off, const uint8_t *d,
                             size_t len)
{
    return power_lost ? NU_ERR_IO : pp_flash_ops.write(ctx, a, off, d, len);
}

static int dying_remove(void *ctx, unsigned sock)
{
    return power_lost ? NU_OK : pp_target_ops.remove(ctx, sock); /* the chip stays */
}

static int dying_tgt_write(void *ctx, unsigned sock, uint32_t off, const uint8_t *d, size_t len)
{
    return power_lost ? NU_ERR_TARGET : pp_target_ops.flash_write(ctx, sock, off, d, len);
}

static int dying_boot_key(void *ctx, unsigned sock, const uint8_t pub[PG_P256_PUB_LEN])
{
    return power_lost ? NU_ERR_TARGET : pp_target_ops.write_boot_key(ctx, sock, pub);
}

static int dying_cert(void *ctx, unsigned sock, const uint8_t *der, size_t len)
{
    return power_lost ? NU_ERR_TARGET : pp_target_ops.write_cert(ctx, sock, der, len);
}

static int dying_lock(void *ctx, unsigned sock)
{
    if (power_lost)
        return NU_ERR_TARGET;
    int rc = pp_target_ops.lock(ctx, sock);
    if (rc == NU_OK && cut_after_lock)
        power_lost = 1;
    return rc;
}

static void use_dying_hal(void)
{
    dying_ks = pp_ks_ops;
    dying_ks.blob_put = dying_blob_put;
    dying_ks.counter_increment = dying_counter_inc;
    dying_flash = pp_flash_ops;
    dying_flash.write = dying_flash_write;
    dying_tgt = pp_target_ops;
    dying_tgt.remove = dying_remove;
    dying_tgt.flash_write = dying_tgt_write;
    dying_tgt.write_boot_key = dying_boot_key;
    dying_tgt.write_cert = dying_cert;
    dying_tgt.lock = dying_lock;
    R.hal.ks = &dying_ks;
    R.hal.flash = &dying_flash;
    R.hal.tgt = &dying_tgt;
}

/* ---- helpers ------------------------------------------------------------------- */

static uint32_t lease_counter(void)
{
    char name[96];
    uint32_t v = 0;
    snprintf(name, sizeof(name), "lease/%s", R.fc.lease_id);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(R.ks, name, &v), NU_OK);
    return v;
}

static int journal_has(uint32_t k)
{
    char name[96];
    uint8_t buf[2048];
    size_t len = 0;
    snprintf(name, sizeof(name), "lease.j/%s/%u", R.fc.lease_id, (unsigned)k);
    return pp_ks_ops.blob_get(R.ks, name, buf, sizeof(buf), &len) == NU_OK;
}

/* Chips whose certificate is a chain: leaf, line CA, Device CA, verifying
 * to the root (offline), and chips whose certificate verifies through the
 * Device CA alone (online). Each names its chip and holds its key. */
struct census {
    unsigned locked, offline, online;
};

static int chip_cert(const char *dir, struct tsim *t, int *offline)
{
    char path[1024];
    uint8_t *pem = NULL, *der[3] = {NULL}, pub[65];
    size_t pem_len = 0, len[3] = {0}, n = 0;
    struct nu_x509_cert_info info;
    int rc = nu_path_fmt(path, sizeof(path), "%s/cert.pem", dir);
    if (rc == NU_OK)
        rc = nu_file_read(path, 65536, &pem, &pem_len);
    for (const char *p = (char *)pem; rc == NU_OK && n < 3 && (p = strstr(p, "-----BEGIN"));
         p += 10) {
        rc = nu_x509_pem_to_der(p, pem_len - (size_t)(p - (char *)pem), NU_X509_PEM_CERT, &der[n],
                                &len[n], NULL);
        n++;
    }
    if (rc == NU_OK && n == 3) {
        struct nu_x509_der mid[2] = {{der[1], len[1]}, {der[2], len[2]}};
        struct nu_x509_der dev = {R.fc.devca_der, R.fc.devca_len};
        rc = nu_x509_verify_chain(der[0], len[0], mid, 2, R.fc.root_der, R.fc.root_len);
        if (rc == NU_OK && (len[2] != dev.len || memcmp(der[2], dev.der, dev.len) != 0))
            rc = NU_ERR_BAD_CERT; /* the chip's Device CA is the real one */
        *offline = 1;
    } else if (rc == NU_OK && n == 1) {
        struct nu_x509_der mid = {R.fc.devca_der, R.fc.devca_len};
        rc = nu_x509_verify_chain(der[0], len[0], &mid, 1, R.fc.root_der, R.fc.root_len);
        *offline = 0;
    } else if (rc == NU_OK) {
        rc = NU_ERR_BAD_CERT;
    }
    if (rc == NU_OK)
        rc = nu_x509_cert_info(der[0], len[0], &info);
    if (rc == NU_OK)
        rc = tsim_read_pubkey(t, pub);
    if (rc == NU_OK && (memcmp(pub, info.pub, 65) || strcmp(info.cn, strrchr(dir, '/') + 1)))
        rc = NU_ERR_BAD_CERT;
    free(pem);
    for (int i = 0; i < 3; i++)
        free(der[i]);
    return rc;
}

static void census(struct census *out)
{
    memset(out, 0, sizeof(*out));
    DIR *d = opendir(R.targets);
    struct dirent *e;
    while (d && (e = readdir(d))) {
        uint8_t uid[TSIM_UID_LEN];
        size_t n = 0;
        struct tsim *t = NULL;
        enum tsim_state st;
        char dir[1024];
        int offline = 0;
        if (strlen(e->d_name) != 32 || nu_hex_decode(e->d_name, uid, sizeof(uid), &n) != NU_OK ||
            tsim_open(R.targets, uid, NULL, &t) != NU_OK)
            continue;
        snprintf(dir, sizeof(dir), "%s/%s", R.targets, e->d_name);
        if (tsim_get_state(t, &st) == NU_OK && st == TSIM_LOCKED) {
            out->locked++;
            if (chip_cert(dir, t, &offline) == NU_OK)
                offline ? out->offline++ : out->online++;
        }
        tsim_destroy(t);
    }
    if (d)
        closedir(d);
}

/* ---- cases --------------------------------------------------------------------- */

static void test_no_lease_when_the_job_allows_none(void)
{
    RIG_UP("prog-nolease", 1);
    load_package(10);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 2, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    struct pg_lease_counts lc;
    pg_core_lease_counts(R.core, &lc);
    CU_ASSERT_EQUAL(lc.units, 0);
    CU_ASSERT_EQUAL(R.fc.leases_granted, 0);
    CU_ASSERT_EQUAL(R.fc.issued, 2);
    rig_teardown(&R);
}

/* ---- the WAN, seen from the bench ------------------------------------------------ */

/* The cases that cut the WAN watch the KeyStore's lease counter from a bench
 * thread and set the fake cloud's link; they never call the core while it
 * produces, so they run alike on host threads and on the M33's scheduler
 * (tests/m33: one link, one core call at a time). */
static atomic_uint lease_units_taken;
static struct pg_keystore_ops counting_ks;

static int counting_counter_inc(void *ctx, const char *name, uint32_t limit, uint32_t *out)
{
    int rc = pp_ks_ops.counter_increment(ctx, name, limit, out);
    if (rc == NU_OK && !strncmp(name, "lease/", 6))
        atomic_fetch_add(&lease_units_taken, 1);
    return rc;
}

static void use_counting_keystore(void)
{
    atomic_store(&lease_units_taken, 0);
    counting_ks = pp_ks_ops;
    counting_ks.counter_increment = counting_counter_inc;
    R.hal.ks = &counting_ks; /* the core holds &R.hal */
}

/* Restores the link once `units` lease units were taken and a further
 * `settle_ms` passed; `at_restore` = the units taken by then. */
struct wan_restore {
    pthread_t tid;
    unsigned units, settle_ms, at_restore;
};

static void *wan_restore_main(void *arg)
{
    struct wan_restore *w = arg;
    for (int i = 0; i < 1200 && atomic_load(&lease_units_taken) < w->units; i++)
        usleep(25 * 1000);
    usleep(w->settle_ms * 1000u); /* one more would come now if it could */
    w->at_restore = atomic_load(&lease_units_taken);
    pthread_mutex_lock(&R.fc.lock);
    R.fc.link_down = 0;
    pthread_mutex_unlock(&R.fc.lock);
    return NULL;
}

/*
 * The WAN is cut right after the lease is granted: the sockets go on under
 * the lease up to its units and no further (then they wait for the cloud,
 * the chip held); when the link is back the held chips finish online and
 * the journal goes up.
 */
static void test_offline_up_to_n_then_upload(void)
{
    RIG_UP("prog-lease", 2);
    use_counting_keystore();
    R.fc.lease_units = 4;
    R.fc.cut_after_grant = 1;
    load_package(50);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 10, 0, 0), NU_OK);
    struct wan_restore w = {.units = 4, .settle_ms = 600};
    pthread_create(&w.tid, NULL, wan_restore_main, &w);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    pthread_join(w.tid, NULL);
    CU_ASSERT_EQUAL(R.fc.leases_granted, 1);
    CU_ASSERT_EQUAL(w.at_restore, 4); /* N, not one more, while the cloud was away */
    CU_ASSERT_EQUAL(atomic_load(&lease_units_taken), 4);
    CU_ASSERT_EQUAL(lease_counter(), 4);
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK);

    struct pg_lease_counts lc;
    pg_core_lease_counts(R.core, &lc);
    CU_ASSERT_EQUAL(lc.units, 4);
    CU_ASSERT_EQUAL(lc.issued, 4);
    CU_ASSERT_EQUAL(lc.pending, 0);
    CU_ASSERT_EQUAL(lc.uploaded, 4);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 4); /* each once, counters 1..4 */
    CU_ASSERT_EQUAL(R.fc.lease_refused, 0);
    CU_ASSERT_EQUAL(R.fc.issued, 6); /* the rest online */
    for (uint32_t k = 1; k <= 4; k++)
        CU_ASSERT(!journal_has(k));
    struct census c;
    census(&c);
    CU_ASSERT_EQUAL(c.locked, 10);
    CU_ASSERT_EQUAL(c.offline, 4); /* leaf + line CA + Device CA, to the root */
    CU_ASSERT_EQUAL(c.online, 6);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "device.provisioned", 0), 10);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 10); /* offline ones after their upload */
    CU_ASSERT_EQUAL(R.fc.bad_messages, 0);

    /* Next start: the used-up lease goes back and a new one comes. */
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 0, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 1);
    CU_ASSERT_EQUAL(R.fc.leases_granted, 2);
    rig_teardown(&R);
}

/* The next boot after a power cut, the WAN still cut (the firmware fetched
 * while it was up): journal record 1 is there, production begun. */
static void reboot_while_cut(void)
{
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    CU_ASSERT(journal_has(1));
    R.fc.link_down = 0;
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    R.fc.link_down = 1;
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    pg_core_link_note(R.core, NU_ERR_CONNECTION);
}

/*
 * Power lost between the lease counter and the journal: that counter value
 * is gone (no certificate exists for it), never taken again; the restart
 * goes on from the next value and stops at N; the upload carries exactly
 * the journalled certificates, each counter once.
 */
static void test_crash_between_counter_and_journal(void)
{
    faulty_offline_line_up("prog-lease-crash", 3);
    fail_journal = 1;
    struct pg_result res;
    pg_socket_run(R.core, 0, &res);   /* the power goes: nothing of the run lasts */
    CU_ASSERT_FALSE(res.provisioned); /* no certificate reached the chip */
    CU_ASSERT_EQUAL(lease_counter(), 1);
    CU_ASSERT(!journal_has(1));
    rig_crash(&R); /* no production end: only the KeyStore survives */
    fail_journal = 0;

    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 4, 0, 0), NU_OK);
    R.fc.link_down = 0; /* the firmware check asks the cloud for the manifest */
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    R.fc.link_down = 1;
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    pg_core_link_note(R.core, NU_ERR_CONNECTION);
    unsigned provisioned = 0;
    for (int i = 0; i < 2; i++) {
        CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
        provisioned += res.provisioned;
    }
    CU_ASSERT_EQUAL(provisioned, 2);
    CU_ASSERT_EQUAL(lease_counter(), 3); /* 1 wasted, 2 and 3 used: N reached */
    CU_ASSERT(!journal_has(1));
    CU_ASSERT(journal_has(2));
    CU_ASSERT(journal_has(3));
    CU_ASSERT_FALSE(journal_has(4));
    /* The KeyStore counter itself refuses to pass N. */
    char name[96];
    uint32_t v = 0;
    snprintf(name, sizeof(name), "lease/%s", R.fc.lease_id);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_increment(R.ks, name, 3, &v), NU_ERR_LIMIT);
    R.fc.stop_after = R.fc.failed_tries + 1; /* the next chip waits: the station stops it */
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_ERR_STATE);
    struct pg_lease_counts lc;
    pg_core_lease_counts(R.core, &lc);
    CU_ASSERT_EQUAL(lc.issued, 2);
    pg_core_production_end(R.core);

    R.fc.link_down = 0;
    R.fc.stop_after = 0;
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 2);
    CU_ASSERT_EQUAL(R.fc.lease_refused, 0);
    CU_ASSERT((R.fc.lease_counters[0] == 2 && R.fc.lease_counters[1] == 3) ||
              (R.fc.lease_counters[0] == 3 && R.fc.lease_counters[1] == 2));
    /* Replayed upload (the answer lost): known, nothing twice. */
    CU_ASSERT_EQUAL(R.fc.lease_known, 0);
    struct census c;
    census(&c);
    CU_ASSERT_EQUAL(c.offline, 2);
    rig_teardown(&R);
}

/*
 * Power lost between the journal write and the chip write (pg__lease_find):
 * the certificate exists in the journal, the chip never saw it. The chip,
 * still in its socket, is resumed at the next boot with that certificate:
 * no new counter value, nothing online, the upload carries it once.
 */
static void test_crash_between_journal_and_chip(void)
{
    RIG_UP("prog-lease-jcrash", 1);
    R.fc.lease_units = 3;
    line_begin(50, 2);
    CU_ASSERT_EQUAL_FATAL(R.fc.leases_granted, 1);
    use_dying_hal();
    R.fc.link_down = 1;
    pg_core_link_note(R.core, NU_ERR_CONNECTION);
    cut_after_journal = 1;
    struct pg_result res;
    pg_socket_run(R.core, 0, &res); /* runs on in RAM after the cut; nothing of it lasts */
    CU_ASSERT_EQUAL_FATAL(power_lost, 1);
    CU_ASSERT_FALSE(res.provisioned);
    rig_crash(&R);
    power_lost = cut_after_journal = 0;
    struct census c;
    census(&c);
    CU_ASSERT_EQUAL(c.locked, 0); /* the chip holds no certificate */

    reboot_while_cut(); /* the plain HAL again */
    CU_ASSERT_EQUAL(lease_counter(), 1);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned);
    CU_ASSERT(res.resumed);
    CU_ASSERT_EQUAL(lease_counter(), 1); /* the journalled certificate, no new value */
    struct pg_lease_counts lc;
    pg_core_lease_counts(R.core, &lc);
    CU_ASSERT_EQUAL(lc.issued, 0);
    CU_ASSERT_EQUAL(lc.pending, 1);
    pg_core_production_end(R.core);

    R.fc.link_down = 0;
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    CU_ASSERT_EQUAL(R.fc.lease_counters[0], 1);
    CU_ASSERT_EQUAL(R.fc.lease_refused, 0);
    CU_ASSERT_EQUAL(R.fc.issued, 0); /* never asked online */
    CU_ASSERT(!journal_has(1));
    census(&c);
    CU_ASSERT_EQUAL(c.locked, 1);
    CU_ASSERT_EQUAL(c.offline, 1);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 1);
    rig_teardown(&R);
}

/*
 * Power lost right after an offline chip is locked, before its outcome
 * reached the journal record. At the next boot, the cloud still away, the
 * chip is found done; then the link comes back but the upload does not get
 * through at once, and the socket's next chip finishes online. The found
 * chip's report must not go ahead of its certificate's upload (the cloud
 * would answer NOT_FOUND, and the report be lost): it goes after it, and the
 * cloud ends up with both chips reported.
 */
static void test_crash_between_lock_and_outcome(void)
{
    RIG_UP("prog-lease-lcrash", 1);
    R.fc.lease_units = 3;
    R.fc.report_needs_cert = 1;
    line_begin(50, 2);
    use_dying_hal();
    R.fc.link_down = 1;
    pg_core_link_note(R.core, NU_ERR_CONNECTION);
    cut_after_lock = 1;
    struct pg_result res;
    pg_socket_run(R.core, 0, &res); /* runs on in RAM after the cut; nothing of it lasts */
    CU_ASSERT_EQUAL_FATAL(power_lost, 1);
    rig_crash(&R);
    power_lost = cut_after_lock = 0;
    struct census c;
    census(&c);
    CU_ASSERT_EQUAL_FATAL(c.offline, 1); /* locked with its offline certificate */

    reboot_while_cut();
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.already_done);

    R.fc.link_down = 0;
    R.fc.lease_upload_busy = 1; /* back, but too busy for the upload yet */
    pg_core_link_note(R.core, NU_OK);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned);
    CU_ASSERT_FALSE(res.already_done);
    CU_ASSERT_EQUAL(R.fc.issued, 1); /* the second chip, online */
    pg_core_production_end(R.core);

    R.fc.lease_upload_busy = 0;
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    CU_ASSERT(!journal_has(1));
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 2); /* both chips, each after its certificate */
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 0), 0);
    rig_teardown(&R);
}

/*
 * Power lost while a socket takes a unit from the KeyStore counter: between
 * the socket's in-flight record and the count, or right after the count. The
 * next boot neither wastes the unit (the chip still in its socket finishes
 * with it) nor takes one it never counted: the line makes exactly `limit`
 * devices, each counted once.
 */
static void crash_while_taking_a_unit(int cut)
{
    RIG_UP(cut == 1 ? "prog-unit-crash1" : "prog-unit-crash2", 1);
    line_begin(3, 4);
    use_dying_hal();
    cut_at_unit = cut;
    struct pg_result res;
    pg_socket_run(R.core, 0, &res);
    CU_ASSERT_EQUAL_FATAL(power_lost, 1);
    CU_ASSERT_FALSE(res.provisioned);
    rig_crash(&R);
    power_lost = cut_at_unit = 0;

    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    uint32_t v = 0;
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(R.ks, R.fc.job_id, &v), NU_OK);
    CU_ASSERT_EQUAL(v, cut == 1 ? 0u : 1u);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_LIMIT);
    CU_ASSERT_EQUAL(pp_ks_ops.counter_read(R.ks, R.fc.job_id, &v), NU_OK);
    CU_ASSERT_EQUAL(v, 3u);
    CU_ASSERT_EQUAL(R.fc.issued, 3); /* no unit wasted, none taken uncounted */
    struct rig_census c;
    rig_census(&R, &c);
    CU_ASSERT_EQUAL(c.verified, 3);
    CU_ASSERT_EQUAL(c.chips, c.locked + c.blank);
    rig_teardown(&R);
}

static void test_crash_between_record_and_count(void)
{
    crash_while_taking_a_unit(1);
}

static void test_crash_right_after_count(void)
{
    crash_while_taking_a_unit(2);
}

/*
 * A fast line: the WAN goes right after the cloud issued a chip's
 * certificate, before the answer crosses (every socket of a fast line is in
 * that state at a cut). The request is abandoned once the cloud has been
 * unreachable for lease_abandon_ms and the chip certified offline; the
 * journal record says it supersedes that request. Back online the upload
 * carries the request's idempotency key: the cloud revokes and refunds the
 * online certificate (never delivered) and records the offline one. One
 * certificate per chip reaches a chip, one unit per chip is counted.
 */
/* A one-socket programmer that gives a request up for the lease at once
 * (after 1 ms), a lease of `units`, a tray of `chips`: producing. */
static void fast_line_up(const char *name, uint32_t units, unsigned chips)
{
    RIG_UP(name, 1);
    R.lease_abandon_ms = 1;
    rig_crash(&R);
    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    R.fc.lease_units = units;
    line_begin(50, chips);
    CU_ASSERT_EQUAL_FATAL(R.fc.leases_granted, 1);
}

static void test_fast_line_abandons_the_online_request(void)
{
    fast_line_up("prog-lease-fast", 3, 3);
    R.fc.cut_after_issue = 1;
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned); /* offline, not held */
    CU_ASSERT_EQUAL(R.fc.issued, 1);      /* the cloud did issue it */
    CU_ASSERT_EQUAL(R.fc.link_down, 1);   /* and the answer never crossed */
    CU_ASSERT_EQUAL(lease_counter(), 1);
    char name[96];
    uint8_t rec[2048];
    size_t len = 0;
    snprintf(name, sizeof(name), "lease.j/%s/1", R.fc.lease_id);
    CU_ASSERT_EQUAL(pp_ks_ops.blob_get(R.ks, name, rec, sizeof(rec), &len), NU_OK);
    CU_ASSERT(len > 4 && !memcmp(rec, "NLJ2", 4)); /* sealed: it supersedes the request */
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* the next chip: offline */
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(lease_counter(), 2);
    pg_core_production_end(R.core);

    R.fc.link_down = 0;
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 2);
    CU_ASSERT_EQUAL(R.fc.lease_superseded, 1); /* revoked and refunded */
    CU_ASSERT_EQUAL(R.fc.lease_refused, 0);
    struct census c;
    census(&c);
    CU_ASSERT_EQUAL(c.locked, 2);
    CU_ASSERT_EQUAL(c.offline, 2); /* no chip holds the online certificate */
    CU_ASSERT_EQUAL(c.online, 0);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 2);

    /* Online again: the last chip the usual way. */
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    census(&c);
    CU_ASSERT_EQUAL(c.online, 1);
    CU_ASSERT_EQUAL(R.fc.issued, 1); /* the superseded one was refunded */
    CU_ASSERT_EQUAL(R.fc.bad_messages, 0);
    rig_teardown(&R);
}

/* Production ends with two chips locked: one certified offline, one online. */
static void end_one_offline_one_online(void)
{
    pg_core_production_end(R.core);
    struct census c;
    census(&c);
    CU_ASSERT_EQUAL(c.locked, 2);
    CU_ASSERT_EQUAL(c.offline, 1);
    CU_ASSERT_EQUAL(c.online, 1);
    CU_ASSERT_EQUAL(R.fc.bad_messages, 0);
    rig_teardown(&R);
}

/* A socket and the control thread's lease sync at once: two core calls in
 * flight, which the M33's test link (one call at a time) cannot carry. */
#ifndef M33_IMAGE
struct sock_run {
    pthread_t tid;
    struct pg_result res;
    int rc;
    atomic_int *done; /* set when the run is over, if not NULL */
};

static void *sock_run_main(void *arg)
{
    struct sock_run *s = arg;
    s->rc = pg_socket_run(R.core, 0, &s->res);
    wc_ecc_fp_free();
    if (s->done)
        atomic_store(s->done, 1);
    return NULL;
}

/* The line after one chip certified offline, its abandoned online request's
 * certificate filling the quota: the next chip, run in s, asks and is
 * refused QUOTA_EXHAUSTED until an upload refunds it, while the upload
 * fails (*upload_trouble set: lease_upload_down or lease_upload_busy). */
static void refund_line_up(const char *name, int *upload_trouble, struct sock_run *s)
{
    fast_line_up(name, 1, 2);
    R.fc.cut_after_issue = 1;
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* abandoned: offline */
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(R.fc.issued, 1);
    pthread_mutex_lock(&R.fc.lock);
    R.fc.quota = 1; /* full: the abandoned request's certificate */
    *upload_trouble = 1;
    R.fc.link_down = 0;
    pthread_mutex_unlock(&R.fc.lock);
    pthread_create(&s->tid, NULL, sock_run_main, s);
    for (int i = 0; i < 250; i++) { /* until the second chip asked (and was refused) */
        pthread_mutex_lock(&R.fc.lock);
        unsigned asked = R.fc.cert_requests;
        pthread_mutex_unlock(&R.fc.lock);
        if (asked >= 2)
            break;
        usleep(20 * 1000);
    }
    usleep(50 * 1000);
}

/* The control thread's pg_core_lease_sync until *seen is not 0 (tries × 20 ms). */
static void sync_until(const unsigned *seen, int tries)
{
    for (int i = 0; i < tries && *seen == 0; i++) {
        pg_core_lease_sync(R.core);
        usleep(20 * 1000);
    }
}

/*
 * The link back, the lease used up, the quota full only because of the
 * online certificate an abandoned request left (refunded when the upload
 * supersedes it): the next chip's request, answered QUOTA_EXHAUSTED before
 * that upload, waits; the control thread's pg_core_lease_sync uploads, and
 * the chip gets its certificate. It was failed half done before.
 */
static void test_quota_refund_before_the_upload(void)
{
    struct sock_run s = {0};
    /* the socket's own upload does not get through */
    refund_line_up("prog-lease-refund", &R.fc.lease_upload_down, &s);
    pthread_mutex_lock(&R.fc.lock);
    R.fc.lease_upload_down = 0;
    pthread_mutex_unlock(&R.fc.lock);
    sync_until(&R.fc.lease_superseded, 100);
    pthread_join(s.tid, NULL);
    CU_ASSERT_EQUAL(R.fc.lease_superseded, 1);
    CU_ASSERT_EQUAL(s.rc, NU_OK);
    CU_ASSERT(s.res.provisioned); /* not failed at cert.request */
    CU_ASSERT_EQUAL(R.fc.issued, 1);
    end_one_offline_one_online();
}
#endif

#ifndef M33_IMAGE
/* A KeyStore whose first lease journal write lets the control thread's sync
 * run first (the link back): the moment the last unit's counter is taken,
 * `exhausted` set, and its record not written yet. */
static int sync_in_window;
static unsigned returned_in_window;
static struct pg_keystore_ops window_ks;

static int window_blob_put(void *ctx, const char *name, const uint8_t *data, size_t len)
{
    if (sync_in_window && len && !strncmp(name, "lease.j/", 8)) {
        sync_in_window = 0;
        pthread_mutex_lock(&R.fc.lock);
        R.fc.link_down = 0;
        pthread_mutex_unlock(&R.fc.lock);
        pg_core_lease_sync(R.core);
        returned_in_window = R.fc.leases_returned;
    }
    return pp_ks_ops.blob_put(ctx, name, data, len);
}

/*
 * The give-back must wait for a certificate being issued: the last unit's
 * counter marks the lease used up before its journal record exists. Given
 * back in that window, the cloud closes the lease and releases the unit,
 * and the certificate the chip then gets is refused at its upload: a
 * genuine chip with no ledger row, its unit counted twice.
 */
static void test_no_give_back_while_a_unit_is_issued(void)
{
    fast_line_up("prog-lease-window", 1, 2);
    window_ks = pp_ks_ops;
    window_ks.blob_put = window_blob_put;
    R.hal.ks = &window_ks;
    sync_in_window = 1;
    R.fc.cut_after_issue = 1;
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* abandoned, then offline */
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(sync_in_window, 0);
    CU_ASSERT_EQUAL(returned_in_window, 0);             /* not in the window */
    CU_ASSERT_EQUAL(pg_core_lease_sync(R.core), NU_OK); /* now: uploaded, then given back */
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    CU_ASSERT_EQUAL(R.fc.lease_refused, 0);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 1);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* production goes on, online */
    CU_ASSERT(res.provisioned);
    end_one_offline_one_online();
}
#endif

/*
 * An upload the cloud refuses (an incident: past the lease's grace, say):
 * the record's report then meets the cloud's NOT_FOUND (no certificate on
 * record). That is a verdict, not the transport's "no subscriber": the
 * record leaves the journal once. It stayed, went up again at every sync
 * (an incident each time) and kept the lease from ever being given back.
 */
static void test_refused_record_leaves_the_journal(void)
{
    fast_line_up("prog-lease-late", 2, 2);
    R.fc.cut_after_issue = 1;
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* abandoned: offline */
    CU_ASSERT(res.provisioned);
    CU_ASSERT(journal_has(1));
    pthread_mutex_lock(&R.fc.lock);
    R.fc.link_down = 0;
    R.fc.lease_refuse_all = 1;
    R.fc.report_needs_cert = 1;
    pthread_mutex_unlock(&R.fc.lock);
    for (int i = 0; i < 3; i++)
        pg_core_lease_sync(R.core);
    CU_ASSERT_EQUAL(R.fc.lease_refused, 1); /* refused once, not at every sync */
    CU_ASSERT(!journal_has(1));
    struct pg_lease_counts lc;
    pg_core_lease_counts(R.core, &lc);
    CU_ASSERT_EQUAL(lc.pending, 0);
    pg_core_production_end(R.core);
    rig_teardown(&R);
}

#ifndef M33_IMAGE
/*
 * The same at the programmer's limit: a socket that finds the counter at
 * the limit stops the line (PG_STOP_LIMIT) while another socket's chip
 * waits for the refund. LIMIT does not end that wait (the chip has its
 * unit), so it must not end the uploads either: it did, and the chip
 * waited until the job expired (CI, integration_programmer_lease_fast_line).
 */
static void test_refund_at_the_limit(void)
{
    struct sock_run s = {0};
    /* the cloud is there, behind with uploads */
    refund_line_up("prog-lease-limit", &R.fc.lease_upload_busy, &s);
    CU_ASSERT(R.fc.cert_requests >= 2);  /* the chip holds, refused for quota */
    pg_core_stop(R.core, PG_STOP_LIMIT); /* the other socket found the counter at the limit */
    pthread_mutex_lock(&R.fc.lock);
    R.fc.lease_upload_busy = 0;
    pthread_mutex_unlock(&R.fc.lock);
    sync_until(&R.fc.lease_superseded, 100);
    CU_ASSERT_EQUAL(R.fc.lease_superseded, 1);
    if (R.fc.lease_superseded == 0) /* not uploaded: end the wait, or it lasts the job's hour */
        atomic_store(&R.core->stop, PG_STOP_COMMAND);
    pthread_join(s.tid, NULL);
    CU_ASSERT_EQUAL(s.rc, NU_OK);
    CU_ASSERT(s.res.provisioned);
    end_one_offline_one_online();
}
#endif

#ifndef M33_IMAGE
/*
 * A STOP after the line stopped at its limit ends a held chip's wait: LIMIT
 * does not (the chip has its unit), and the first reason used to win, so
 * the chip waited for the cloud whatever the operator or a signal said.
 */
static void test_stop_at_the_limit_ends_the_wait(void)
{
    static atomic_int ended;
    atomic_store(&ended, 0);
    struct sock_run s = {.done = &ended};
    refund_line_up("prog-lease-limstop", &R.fc.lease_upload_down, &s); /* uploads never pass */
    pg_core_stop(R.core, PG_STOP_LIMIT);
    usleep(100 * 1000);
    CU_ASSERT_EQUAL(atomic_load(&ended), 0); /* LIMIT: still waiting */
    pg_core_stop(R.core, PG_STOP_COMMAND);
    for (int i = 0; i < 250 && !atomic_load(&ended); i++)
        usleep(20 * 1000);
    CU_ASSERT_EQUAL(atomic_load(&ended), 1);
    if (!atomic_load(&ended)) /* the wait would last the job's hour */
        atomic_store(&R.core->stop, PG_STOP_COMMAND);
    pthread_join(s.tid, NULL);
    CU_ASSERT(!s.res.provisioned); /* held, its unit kept for the next run */
    CU_ASSERT_EQUAL(pg_core_production_end(R.core), PG_STOP_COMMAND);
    rig_teardown(&R);
}
#endif

#ifndef M33_IMAGE
/*
 * A lease that ran out of time unused (the cloud answered all along): the
 * cloud holds its units back from the quota until it is given back. At the
 * quota's end the next chip meets QUOTA_EXHAUSTED for them: it waits while
 * the sync gives the lease back, then is certified. It was failed with its
 * key made, the line stopped, and the units came back only at the next run.
 */
static void test_expired_lease_given_back_for_the_quota(void)
{
    RIG_UP("prog-lease-expired", 1);
    R.fc.lease_units = 2;
    R.fc.lease_seconds = 2;
    R.fc.quota = 3;
    R.fc.quota_holds_lease = 1;
    line_begin(5, 3);
    CU_ASSERT_EQUAL(R.fc.leases_granted, 1);
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* online: 1 issued, 2 held back */
    CU_ASSERT(res.provisioned);
    sleep(3); /* the lease runs out, its 2 units unused */
    struct sock_run s = {0};
    pthread_create(&s.tid, NULL, sock_run_main, &s);
    sync_until(&R.fc.leases_returned, 250);
    pthread_join(s.tid, NULL);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 1);
    CU_ASSERT_EQUAL(s.rc, NU_OK);
    CU_ASSERT(s.res.provisioned); /* not failed at cert.request */
    CU_ASSERT_EQUAL(R.fc.issued, 2);
    pg_core_production_end(R.core);
    rig_teardown(&R);
}
#endif

#ifndef M33_IMAGE
/*
 * A power cut right after a chip's lease journal record, and the chip then
 * taken away: its record never gets an outcome. At the quota's end the next
 * chip, refused QUOTA_EXHAUSTED for the lease's units, waits for the lease's
 * refund: the record must go up mid-production (its chip is no socket's any
 * more), so the lease, run out of time, is given back and the chip is
 * certified. It waited until the job expired or a STOP.
 */
static void test_orphan_record_goes_up_for_the_refund(void)
{
    struct pg_result res;
    RIG_UP("prog-lease-orphan", 1);
    R.fc.lease_units = 2;
    R.fc.lease_seconds = 4;
    R.fc.quota = 3;
    R.fc.quota_holds_lease = 1;
    line_begin(5, 2);
    CU_ASSERT_EQUAL_FATAL(R.fc.leases_granted, 1);
    use_dying_hal();
    R.fc.link_down = 1;
    pg_core_link_note(R.core, NU_ERR_CONNECTION);
    cut_after_journal = 1;
    pg_socket_run(R.core, 0, &res); /* runs on in RAM after the cut; nothing of it lasts */
    CU_ASSERT_EQUAL_FATAL(power_lost, 1);
    rig_crash(&R);
    power_lost = cut_after_journal = 0;

    CU_ASSERT_EQUAL_FATAL(rig_open(&R), NU_OK);
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 3, 0, 0), NU_OK); /* the chip was taken away */
    R.fc.link_down = 0;
    CU_ASSERT_EQUAL_FATAL(pg_core_firmware_fetch(R.core), NU_OK);
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 0); /* at the start its chip may still be there */
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* online: the quota's last unit */
    CU_ASSERT(res.provisioned);
    sleep(4); /* the lease runs out, one unit unused */
    struct sock_run s = {0};
    pthread_create(&s.tid, NULL, sock_run_main, &s);
    sync_until(&R.fc.leases_returned, 250);
    if (!R.fc.leases_returned)
        pg_core_stop(R.core, PG_STOP_COMMAND); /* ends the wait: the test fails, not hangs */
    pthread_join(s.tid, NULL);
    /* It went up once: recorded, or refused because this fake checks the
     * chain at the time of the upload, after the lease (the cloud checks it
     * at the certificate's issuance). */
    CU_ASSERT_EQUAL(R.fc.lease_recorded + R.fc.lease_refused, 1);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 1);
    CU_ASSERT(s.res.provisioned);
    CU_ASSERT_EQUAL(R.fc.issued, 2);
    pg_core_production_end(R.core);
    rig_teardown(&R);
}
#endif

/*
 * A full disk when the chip's outcome goes into its lease journal record:
 * the socket waits and writes it again. The record was left without it: not
 * uploaded before the production's end (a chip held for its refund waited
 * for good), and then without the chip's report.
 */
static void test_outcome_written_after_a_full_disk(void)
{
    fast_line_up("prog-lease-full", 2, 2);
    use_faulty_keystore();
    fail_outcomes = 3;
    R.fc.cut_after_issue = 1;
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* offline, then the disk */
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(fail_outcomes, 0);
    R.hal.ks = &pp_ks_ops;
    pthread_mutex_lock(&R.fc.lock);
    R.fc.link_down = 0;
    pthread_mutex_unlock(&R.fc.lock);
    CU_ASSERT_EQUAL(pg_core_lease_sync(R.core), NU_OK); /* mid-production: it is due */
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 1);
    CU_ASSERT(!journal_has(1));
    pg_core_production_end(R.core);
    rig_teardown(&R);
}

/*
 * A full disk when a chip is certified offline: the lease counter's and the
 * journal record's writes fail a while. The chip holds its key already: it
 * waits and is certified, one counter value used, none wasted. (It failed
 * keyed, with a counter value burned when the journal write failed.)
 */
static void test_offline_issue_waits_out_a_full_disk(void)
{
    faulty_offline_line_up("prog-lease-disk", 2);
    fail_counters = 2;
    fail_records = 3;
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(fail_counters, 0);
    CU_ASSERT_EQUAL(fail_records, 0);
    CU_ASSERT_EQUAL(lease_counter(), 1);
    CU_ASSERT(journal_has(1));
    R.hal.ks = &pp_ks_ops;
    pthread_mutex_lock(&R.fc.lock);
    R.fc.link_down = 0;
    pthread_mutex_unlock(&R.fc.lock);
    CU_ASSERT_EQUAL(pg_core_lease_sync(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    pg_core_production_end(R.core);
    rig_teardown(&R);
}

/*
 * The same full disk, and the station says STOP meanwhile: the keyed chip
 * stays in its socket with its unit, and the next run certifies it, first
 * with the lease counter's write failing, then the journal's (that one's
 * counter value is burned: its certificate never left the programmer). It
 * was failed keyed.
 */
static void test_stop_during_a_full_disk_holds_the_chip(void)
{
    struct pg_result res;
    faulty_offline_line_up("prog-lease-dstop", 2);
    for (int phase = 0; phase < 2; phase++) {
        fail_counters = phase == 0 ? 100 : 0;
        fail_records = phase == 1 ? 100 : 0;
        stop_after_fails = 3;
        CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_ERR_STATE);
        CU_ASSERT(res.held);
        CU_ASSERT_EQUAL(pg_core_production_end(R.core), PG_STOP_COMMAND);
        CU_ASSERT_EQUAL(pg_core_units_kept(R.core), 1);
        fail_counters = fail_records = 0;
        CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
        pg_core_link_note(R.core, NU_ERR_CONNECTION);
    }
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(pg_core_units_kept(R.core), 0);
    CU_ASSERT_EQUAL(lease_counter(), 2); /* 1 burned by the journal's failure, 2 used */
    CU_ASSERT(journal_has(2));
    pg_core_production_end(R.core);
    rig_teardown(&R);
}

#ifndef M33_IMAGE
/*
 * Under the lease with the cloud away, chip C1's report stays in socket 0's
 * journal slot and the socket goes on. The next chip that reports (C0, done
 * already, back in the socket) replays it first, and a STOP ends that wait.
 * C1's report must stay and C0's go to a spare slot: both reach the cloud
 * once it is back. (C0's report was written over C1's.)
 */
static void test_stopped_replay_keeps_both_reports(void)
{
    struct pg_result res;
    uint8_t c0[16] = {0};
    RIG_UP("prog-lease-replay", 1);
    R.fc.lease_units = 3;
    line_begin(50, 2);
    CU_ASSERT_EQUAL_FATAL(R.fc.leases_granted, 1);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT_FATAL(res.provisioned && res.uid_len <= sizeof(c0));
    memcpy(c0, res.uid, res.uid_len);
    R.fc.report_unreachable = 1; /* C1: certified online, then the cloud is gone */
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 1);

    CU_ASSERT_EQUAL_FATAL(pp_target_load(R.tgt, 0, R.targets, c0), NU_OK);
    R.fc.stop_after = R.fc.failed_tries + 1; /* the replay's first try: STOP */
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.already_done);
    CU_ASSERT_EQUAL(pg_core_production_end(R.core), PG_STOP_COMMAND);

    R.fc.report_unreachable = 0;
    R.fc.stop_after = 0;
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 2); /* C0 and C1 */
    rig_teardown(&R);
}

/* A KeyStore that parks the control thread's upload scan on the journal
 * record of a chip in flight until that chip is done: its outcome lands
 * between the scan's read of the record and the scan's verdict. */
static pthread_t scan_thread;
static atomic_int scan_parked, chip_journalled, chip_done;
static struct pg_keystore_ops scan_ks;

static void wait_flag(atomic_int *flag)
{
    for (int i = 0; i < 2000 && !atomic_load(flag); i++)
        usleep(10 * 1000);
}

static int scan_blob_get(void *ctx, const char *name, uint8_t *buf, size_t cap, size_t *len)
{
    int rc = pp_ks_ops.blob_get(ctx, name, buf, cap, len);
    if (rc == NU_OK && !strncmp(name, "lease.j/", 8) &&
        pthread_equal(pthread_self(), scan_thread) && !atomic_exchange(&scan_parked, 1))
        wait_flag(&chip_done);
    return rc;
}

static int scan_blob_put(void *ctx, const char *name, const uint8_t *data, size_t len)
{
    int journal = len && !strncmp(name, "lease.j/", 8);
    if (journal && atomic_load(&chip_journalled)) /* the outcome: after the scan read */
        wait_flag(&scan_parked);
    int rc = pp_ks_ops.blob_put(ctx, name, data, len);
    if (journal)
        atomic_store(&chip_journalled, 1);
    return rc;
}

/*
 * A chip that finishes while the sync scans the journal: its record read
 * before the outcome, the scan found nothing due. That verdict must not
 * hide the outcome written meanwhile: the next sync uploads it. It hid it
 * before, until another chip's outcome, and a line at the end of its lease
 * has none: the record stayed, and a chip held for the quota its upload
 * refunds waited for good.
 */
static void test_outcome_during_the_upload_scan(void)
{
    fast_line_up("prog-lease-scan", 2, 2);
    scan_ks = pp_ks_ops;
    scan_ks.blob_get = scan_blob_get;
    scan_ks.blob_put = scan_blob_put;
    R.hal.ks = &scan_ks;
    scan_thread = pthread_self();
    atomic_store(&scan_parked, 0);
    atomic_store(&chip_journalled, 0);
    atomic_store(&chip_done, 0);
    R.fc.cut_after_issue = 1;
    struct sock_run s = {.done = &chip_done}; /* the parked scan waits for it */
    pthread_create(&s.tid, NULL, sock_run_main, &s);
    struct pg_lease_counts lc = {0};
    for (int i = 0; i < 500 && lc.pending == 0; i++) { /* the record, not its outcome */
        usleep(10 * 1000);
        pg_core_lease_counts(R.core, &lc);
    }
    CU_ASSERT_EQUAL(lc.pending, 1);
    pg_core_lease_sync(R.core); /* the WAN still cut: a scan, no upload */
    pthread_join(s.tid, NULL);
    CU_ASSERT_EQUAL(atomic_load(&scan_parked), 1);
    CU_ASSERT_EQUAL(s.rc, NU_OK);
    CU_ASSERT(s.res.provisioned);
    R.hal.ks = &pp_ks_ops;
    pthread_mutex_lock(&R.fc.lock);
    R.fc.link_down = 0;
    pthread_mutex_unlock(&R.fc.lock);
    CU_ASSERT_EQUAL(pg_core_lease_sync(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    CU_ASSERT_EQUAL(fc_count_reports(&R.fc, 1), 1);
    pg_core_production_end(R.core);
    rig_teardown(&R);
}
#endif

/*
 * A used-up lease, its certificates confirmed, is given back by the control
 * thread's sync while production goes on (what it still holds of the quota
 * is a counter value a crash burned): not only at the next start.
 */
static void test_used_up_lease_given_back_mid_production(void)
{
    fast_line_up("prog-lease-back", 1, 3);
    R.fc.cut_after_issue = 1;
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* offline: the lease used up */
    CU_ASSERT(res.provisioned);
    pthread_mutex_lock(&R.fc.lock);
    R.fc.link_down = 0;
    pthread_mutex_unlock(&R.fc.lock);
    CU_ASSERT_EQUAL(pg_core_lease_sync(R.core), NU_OK); /* uploads, then gives it back */
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 1);
    CU_ASSERT_EQUAL(pg_core_lease_sync(R.core), NU_OK); /* once */
    CU_ASSERT_EQUAL(R.fc.leases_returned, 1);
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* production goes on, online */
    CU_ASSERT(res.provisioned);
    end_one_offline_one_online();
}

/*
 * The return of a used-up lease answered INTERNAL (the cloud's ledger in
 * trouble): the programmer keeps its lease record and returns it at the
 * next start. It deleted the record as if the cloud had closed the lease,
 * which then held the lease's units out of the quota until written off.
 */
static void test_return_refused_internal_kept_for_later(void)
{
    fast_line_up("prog-lease-internal", 1, 3);
    R.fc.cut_after_issue = 1;
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK); /* offline: the lease used up */
    CU_ASSERT(res.provisioned);
    pthread_mutex_lock(&R.fc.lock);
    R.fc.link_down = 0;
    pthread_mutex_unlock(&R.fc.lock);
    pg_core_production_end(R.core); /* uploads its record */
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    R.fc.lease_return_error = NU_ERR_INTERNAL;
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 0);
    CU_ASSERT_EQUAL(R.fc.leases_granted, 1); /* no second lease while the first is out */
    pg_core_production_end(R.core);
    R.fc.lease_return_error = 0;
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 1);
    CU_ASSERT_EQUAL(R.fc.leases_granted, 2);
    pg_core_production_end(R.core);
    rig_teardown(&R);
}

/*
 * The KeyStore holds one line-CA key: another job's lease replaces it. Back
 * on this job, its lease (unexpired, units left) can sign nothing: it is
 * given back at the start and a new one granted, and a chip certified
 * offline meanwhile gets a certificate that verifies, no counter burned.
 */
static void test_lease_whose_key_was_replaced_is_renewed(void)
{
    fast_line_up("prog-lease-rekey", 3, 1);
    pg_core_production_end(R.core);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 0);                      /* still good: kept */
    CU_ASSERT_EQUAL_FATAL(pg_ks_line_key_generate(&R.hal), NU_OK); /* another job's grant */
    CU_ASSERT_EQUAL_FATAL(pg_core_production_begin(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.leases_returned, 1);
    CU_ASSERT_EQUAL(R.fc.leases_granted, 2);
    R.fc.link_down = 1;
    pg_core_link_note(R.core, NU_ERR_CONNECTION);
    struct pg_result res;
    CU_ASSERT_EQUAL(pg_socket_run(R.core, 0, &res), NU_OK);
    CU_ASSERT(res.provisioned); /* offline, under the new lease */
    CU_ASSERT_EQUAL(lease_counter(), 1);
    pg_core_production_end(R.core);
    R.fc.link_down = 0;
    CU_ASSERT_EQUAL(pg_core_journal_flush(R.core), NU_OK);
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 1);
    CU_ASSERT_EQUAL(R.fc.lease_refused, 0);
    struct census c;
    census(&c);
    CU_ASSERT_EQUAL(c.offline, 1);
    rig_teardown(&R);
}

/*
 * The cloud holds the lease's units back from online issuance (the ledger
 * does): once the rest of the programmer's share is issued, cert.request is
 * refused QUOTA_EXHAUSTED with the cloud in reach. The lease is then what is
 * left to it: the chips are certified under it, and the job reaches its
 * quota. They were failed half done, the lease's units never used.
 */
static void test_quota_left_in_the_lease_is_used(void)
{
    RIG_UP("prog-lease-quota", 1);
    R.fc.lease_units = 2;
    R.fc.quota = 3;
    R.fc.quota_holds_lease = 1;
    load_package(3); /* the programmer's share: its KeyStore counts 3 units */
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 4, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_LIMIT);
    CU_ASSERT_EQUAL(R.fc.leases_granted, 1);
    CU_ASSERT_EQUAL(R.fc.issued, 1);         /* online, before the lease was all that was left */
    CU_ASSERT_EQUAL(R.fc.lease_recorded, 2); /* uploaded at the end */
    CU_ASSERT_EQUAL(R.fc.lease_refused, 0);
    CU_ASSERT(R.fc.issued + R.fc.lease_recorded <= R.fc.quota);
    struct census c;
    census(&c);
    CU_ASSERT_EQUAL(c.locked, 3);
    CU_ASSERT_EQUAL(c.online, 1);
    CU_ASSERT_EQUAL(c.offline, 2);
    struct rig_census rc;
    CU_ASSERT_EQUAL(rig_census(&R, &rc), NU_OK);
    CU_ASSERT_EQUAL(rc.chips, rc.locked + rc.blank); /* none half done */
    CU_ASSERT_EQUAL(R.fc.bad_messages, 0);
    rig_teardown(&R);
}

/* A grant whose certificate is not for the KeyStore's line-CA key (a foreign
 * lease) is refused: no lease, an event, production as without one. */
static void test_foreign_lease_certificate_refused(void)
{
    RIG_UP("prog-lease-foreign", 1);
    R.fc.lease_units = 3;
    load_package(10);
    /* The fake certifies another key than the CSR's: forge the lease out. */
    struct nu_p256_key *other = NULL;
    CU_ASSERT_EQUAL_FATAL(nu_p256_key_generate(&other), NU_OK);
    uint8_t pub[65];
    nu_p256_key_pub(other, pub);
    nu_p256_key_destroy(other);
    struct nu_x509_issue_req ir = {
        .cn = "prog-lease-foreign", .ou = R.fc.job_id, .o = "NuSEC",
        .not_before = (int64_t)(nu_time_ms() / 1000u) - 60,
        .not_after = (int64_t)(nu_time_ms() / 1000u) + 3600, .is_ca = 1, .path_len = 0,
        .key_usage = NU_X509_KU_KEY_CERT_SIGN,
    };
    memcpy(ir.pub, pub, 65);
    CU_ASSERT_EQUAL_FATAL(nu_x509_issue(&ir, &R.fc.devca_s, R.fc.devca_der, R.fc.devca_len,
                                        &R.fc.lease_der, &R.fc.lease_len),
                          NU_OK);
    snprintf(R.fc.lease_id, sizeof(R.fc.lease_id), "lease-00000000000000ff");
    R.fc.lease_any_key = 1;
    CU_ASSERT_EQUAL_FATAL(rig_tray(&R, 1, 0, 0), NU_OK);
    CU_ASSERT_EQUAL(rig_produce(&R, NULL), PG_STOP_TRAY_EMPTY);
    struct pg_lease_counts lc;
    pg_core_lease_counts(R.core, &lc);
    CU_ASSERT_EQUAL(lc.units, 0);
    CU_ASSERT_EQUAL(fc_count_events(&R.fc, "lease.refused", NU_ERR_BAD_CERT), 1);
    CU_ASSERT_EQUAL(R.fc.issued, 1);
    rig_teardown(&R);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"a job without a lease: none asked, production online",
         test_no_lease_when_the_job_allows_none},
        {"WAN cut: offline up to N, held after, journal uploaded once on reconnect",
         test_offline_up_to_n_then_upload},
        {"crash between the in-flight record and the count: no unit taken uncounted",
         test_crash_between_record_and_count},
        {"crash right after the count: the chip finishes with that unit",
         test_crash_right_after_count},
        {"crash between counter and journal: never beyond N, no counter reused",
         test_crash_between_counter_and_journal},
        {"crash between journal and chip: the resumed chip gets the journalled certificate",
         test_crash_between_journal_and_chip},
        {"crash between lock and outcome: the chip's report goes after its certificate's upload",
         test_crash_between_lock_and_outcome},
        {"fast line: an unanswered request is abandoned, superseded at the upload",
         test_fast_line_abandons_the_online_request},
#ifndef M33_IMAGE
        {"QUOTA_EXHAUSTED before the upload that refunds: the chip waits, then is certified",
         test_quota_refund_before_the_upload},
#endif
        {"a used-up lease is given back once confirmed, mid-production",
         test_used_up_lease_given_back_mid_production},
        {"a full disk at the chip's outcome: the socket waits, the record gets it",
         test_outcome_written_after_a_full_disk},
        {"a full disk while a chip is certified offline: it waits, no counter wasted",
         test_offline_issue_waits_out_a_full_disk},
        {"a STOP while the KeyStore is full: the keyed chip is held for the next run",
         test_stop_during_a_full_disk_holds_the_chip},
        {"a record the cloud refused leaves the journal once (its report: NOT_FOUND)",
         test_refused_record_leaves_the_journal},
#ifndef M33_IMAGE
        {"no give-back while a unit is being issued (the counter before the record)",
         test_no_give_back_while_a_unit_is_issued},
        {"at the programmer's limit the uploads go on: the held chip gets its refund",
         test_refund_at_the_limit},
        {"a STOP at the programmer's limit ends a held chip's wait",
         test_stop_at_the_limit_ends_the_wait},
        {"a lease run out of time is given back when the quota needs its units",
         test_expired_lease_given_back_for_the_quota},
        {"a STOP during a report's replay: the new report takes a spare slot",
         test_stopped_replay_keeps_both_reports},
        {"a record whose chip a power cut left and was taken away goes up for the refund",
         test_orphan_record_goes_up_for_the_refund},
        {"a chip done while the sync scans the journal: its record still goes up",
         test_outcome_during_the_upload_scan},
#endif
        {"a lease return answered INTERNAL: kept, and returned at the next start",
         test_return_refused_internal_kept_for_later},
        {"a lease whose line-CA key another job's lease replaced is given back and renewed",
         test_lease_whose_key_was_replaced_is_renewed},
        {"QUOTA_EXHAUSTED online with lease units left: the chips use the lease",
         test_quota_left_in_the_lease_is_used},
        {"a foreign line-CA certificate is refused with an event",
         test_foreign_lease_certificate_refused},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {{"offline lease (programmer)", NULL, NULL, cases},
                                                  {NULL}};
    return nu_test_run("programmer_test_lease", suites);
}
