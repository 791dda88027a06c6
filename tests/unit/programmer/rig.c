/* rig: see rig.h. */
#include "rig.h"

#include "nu_attest.h"
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
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/ecc.h>

static int rig__setup(struct rig *r, const char *name, unsigned sockets, int factory);

int rig_setup(struct rig *r, const char *name, unsigned sockets)
{
    return rig__setup(r, name, sockets, 1);
}

int rig_setup_unfactoried(struct rig *r, const char *name, unsigned sockets)
{
    return rig__setup(r, name, sockets, 0);
}

static int rig__setup(struct rig *r, const char *name, unsigned sockets, int factory)
{
    memset(r, 0, sizeof(*r));
    r->name = name;
    r->sockets = sockets;
    if (nu_test_tmpdir("prog", r->dir, sizeof(r->dir)) != 0)
        return NU_ERR_IO;
    snprintf(r->pdir, sizeof(r->pdir), "%s/programmers/%s", r->dir, name);
    snprintf(r->targets, sizeof(r->targets), "%s/targets", r->dir);
    int rc = fc_init(&r->fc, "job-1", 40 * 1024, 8192);
    if (rc == NU_OK)
        rc = rig_open(r);
    return rc == NU_OK && factory ? rig_factory(r) : rc;
}

/* The programmer factory's step (nusec-programmer --factory-init): an
 * attestation key in the KeyStore, certified by a vendor CA in DIR/vendor. */
int rig_factory(struct rig *r)
{
    char vdir[600], serial[NU_ATTEST_SERIAL_MAX + 1];
    uint8_t pub[65], *der = NULL;
    size_t len = 0;
    snprintf(vdir, sizeof(vdir), "%s/vendor", r->dir);
    int rc = nu_path_exists(vdir) ? NU_OK : nu_attest_vendor_ca_init(vdir);
    if (rc == NU_OK)
        rc = pp_ks_attest_key_create(r->ks, pub);
    if (rc == NU_OK)
        rc = nu_attest_vendor_issue(vdir, pub, serial, &der, &len);
    if (rc == NU_OK)
        rc = pp_ks_attest_cert_set(r->ks, serial, der, len);
    free(der);
    return rc;
}

int rig_open(struct rig *r)
{
    char flash[600];
    snprintf(flash, sizeof(flash), "%s/flash", r->pdir);
    static const uint8_t measured[32] = {0x4d, 0x65, 0x61, 0x73}; /* "Meas", the boot stage's */
    int rc = pp_ks_open(r->pdir, r->name, 1, &r->ks);
    if (rc == NU_OK)
        rc = pp_ks_set_measurement(r->ks, measured);
    if (rc == NU_OK)
        rc = pp_flash_open(flash, &r->flash);
    if (rc != NU_OK)
        return rc;
    r->hal = (struct pg_hal){
        .version = PG_HAL_VERSION,
        .ks = &pp_ks_ops,
        .ks_ctx = r->ks,
        .flash = &pp_flash_ops,
        .flash_ctx = r->flash,
        .tp = &fc_transport_ops,
        .tp_ctx = &r->fc,
        .tgt = &pp_target_ops,
        .tgt_ctx = r->tgt,
        .cry = &pp_crypto_ops,
        .clk = &pp_clock_ops,
        .rng = &pp_rng_ops,
        .log = &pp_log_ops,
    };
    struct pg_config cfg = {
        .programmer_id = r->name,
        .n_sockets = r->sockets,
        .request_timeout_ms = 1000,
        .retries = 3,
        .retry_delay_ms = 1,
        .lease_abandon_ms = r->lease_abandon_ms,
    };
    r->core = calloc(1, sizeof(*r->core));
    rc = r->core ? pg_core_init(r->core, &r->hal, &cfg) : NU_ERR_NOMEM;
    if (rc == NU_OK) /* station commands (the fake cloud's STOP knob) reach the core */
        rc = pg_core_subscribe(r->core);
    return rc;
}

static void rig__close_tray(struct rig *r)
{
    pp_target_destroy(r->tgt);
    tsim_feeder_destroy(r->feeder);
    r->tgt = NULL;
    r->feeder = NULL;
    r->hal.tgt_ctx = NULL;
}

void rig_crash(struct rig *r)
{
    if (r->core) {
        pg_core_deinit(r->core);
        free(r->core);
    }
    pp_flash_close(r->flash);
    pp_ks_close(r->ks);
    r->core = NULL;
    r->flash = NULL;
    r->ks = NULL;
}

void rig_teardown(struct rig *r)
{
    rig_crash(r);
    rig__close_tray(r);
    fc_free(&r->fc);
    if (r->dir[0])
        nu_test_rmtree(r->dir);
    memset(r, 0, sizeof(*r));
}

int rig_tray(struct rig *r, unsigned devices, unsigned faults, unsigned every)
{
    rig__close_tray(r);
    int rc = tsim_feeder_create(r->targets, devices, NULL, &r->feeder);
    if (rc == NU_OK && faults)
        rc = tsim_feeder_set_fault_every(r->feeder, every, faults);
    if (rc == NU_OK)
        rc = pp_target_create(r->feeder, r->sockets, &r->tgt);
    r->hal.tgt_ctx = r->tgt;
    return rc;
}

int rig_enroll(struct rig *r)
{
    return pg_core_enroll(r->core, "station", r->fc.enroll_token, NULL, NULL, 0);
}

int rig_package(struct rig *r, uint32_t limit, uint8_t **out, size_t *out_len)
{
    struct fc_pkg_opts o = {
        .programmer_id = r->name,
        .recipient_pub = r->fc.enrolled_pkg_pub,
        .limit = limit,
        .expires_at_ms = nu_time_ms() + (r->package_ttl_ms ? r->package_ttl_ms : 3600 * 1000),
        .created_at_ms = nu_time_ms(),
    };
    nu_random(o.package_id, sizeof(o.package_id));
    return fc_make_package(&r->fc, &o, out, out_len);
}

struct rig__worker {
    struct rig *r;
    unsigned sock;
    pthread_t tid;
};

static void *rig__worker(void *arg)
{
    struct rig__worker *w = arg;
    struct pg_result res;
    while (pg_socket_run(w->r->core, w->sock, &res) == NU_OK) {
    }
    wc_ecc_fp_free();
    return NULL;
}

enum pg_stop rig_produce(struct rig *r, int *out_rc)
{
    int rc = pg_core_firmware_fetch(r->core);
    if (rc == NU_OK)
        rc = pg_core_production_begin(r->core);
    if (out_rc)
        *out_rc = rc;
    if (rc != NU_OK)
        return PG_STOP_NONE;
    struct rig__worker w[PG_MAX_SOCKETS];
    for (unsigned i = 0; i < r->sockets; i++) {
        w[i] = (struct rig__worker){.r = r, .sock = i};
        pthread_create(&w[i].tid, NULL, rig__worker, &w[i]);
    }
    for (unsigned i = 0; i < r->sockets; i++)
        pthread_join(w[i].tid, NULL);
    return pg_core_production_end(r->core);
}

/* The chip's certificate verifies to the device CA and certifies its key and UID. */
static int rig__chip_ok(const char *targets, const struct fake_cloud *fc, const char *name,
                        struct tsim *t)
{
    char path[1024];
    uint8_t *pem = NULL, *der = NULL, pub[65];
    size_t pem_len = 0, der_len = 0;
    struct nu_x509_cert_info info;
    struct nu_x509_der mid = {fc->devca_der, fc->devca_len};
    snprintf(path, sizeof(path), "%s/%s/cert.pem", targets, name);
    int rc = nu_file_read(path, 65536, &pem, &pem_len);
    if (rc == NU_OK)
        rc = nu_x509_pem_to_der((char *)pem, pem_len, NU_X509_PEM_CERT, &der, &der_len, NULL);
    if (rc == NU_OK)
        rc = nu_x509_verify_chain(der, der_len, &mid, 1, fc->root_der, fc->root_len);
    if (rc == NU_OK)
        rc = nu_x509_cert_info(der, der_len, &info);
    if (rc == NU_OK)
        rc = tsim_read_pubkey(t, pub);
    if (rc == NU_OK && (memcmp(pub, info.pub, 65) || strcmp(info.cn, name)))
        rc = NU_ERR_BAD_CERT;
    free(pem);
    free(der);
    return rc;
}

int rig_census(struct rig *r, struct rig_census *out)
{
    return rig_census_dir(r->targets, &r->fc, out);
}

int rig_census_dir(const char *targets, const struct fake_cloud *fc, struct rig_census *out)
{
    memset(out, 0, sizeof(*out));
    DIR *d = opendir(targets);
    if (!d)
        return NU_OK;
    struct dirent *e;
    while ((e = readdir(d))) {
        uint8_t uid[TSIM_UID_LEN];
        size_t n = 0;
        struct tsim *t = NULL;
        enum tsim_state st;
        if (strlen(e->d_name) != 32 || nu_hex_decode(e->d_name, uid, sizeof(uid), &n) != NU_OK)
            continue;
        if (tsim_open(targets, uid, NULL, &t) != NU_OK)
            continue;
        out->chips++;
        if (tsim_get_state(t, &st) == NU_OK) {
            out->locked += st == TSIM_LOCKED;
            out->blank += st == TSIM_BLANK;
            if (st == TSIM_LOCKED && rig__chip_ok(targets, fc, e->d_name, t) == NU_OK)
                out->verified++;
        }
        tsim_destroy(t);
    }
    closedir(d);
    return NU_OK;
}
