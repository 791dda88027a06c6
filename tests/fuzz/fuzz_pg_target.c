/*
 * fuzz_pg_target — libFuzzer target for what the programmer core makes of
 * the target link's answers and of the cloud's cert.request answers while
 * it provisions one chip (programmer-fw/core/pg_produce.c: UID, CSR, public
 * key, link errors, the device certificate, attestation signature), on a
 * real core with a verified firmware cache (fuzz_pg.h: scripted in-memory
 * chip, scripted transport over the fake cloud).
 *
 * Input: the script of answers (every target-link call and cert.request).
 *
 * Properties:
 *   - one chip is handled (OK) or the socket stops with a typed reason;
 *   - a chip counts as provisioned only if it attested with its own device
 *     key over the fresh nonce (an honest attestation, which no script can
 *     forge) and the key the core certified is the chip's (no success on
 *     garbage);
 *   - a failed chip carries a typed error and the step where it failed.
 */
#include "fuzz_pg.h"

#include <string.h>

static struct fuzz_pg pg;

static void fuzz__setup(void)
{
    static const char *const ops[] = {"cert.request", NULL};
    fuzz_pg_setup(&pg, 1500, 512, ops);
    int rc = pg_core_firmware_fetch(pg.r.core);
    if (rc != NU_OK)
        FUZZ_DIE("firmware: %s", nu_err_name(rc));
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    fuzz__setup();
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct pg_core *c = pg.r.core;
    struct pg_result res;
    int rc = pg_core_production_begin(c);
    if (rc != NU_OK) {
        /* A script that made the cloud close the job ends this programmer's
         * production for good: start over with a new one. */
        fuzz_pg_teardown(&pg);
        fuzz__setup();
        c = pg.r.core;
        if ((rc = pg_core_production_begin(c)) != NU_OK)
            FUZZ_DIE("production_begin: %s", nu_err_name(rc));
    }
    memset(&res, 0, sizeof(res));
    fuzz_pg_begin(&pg, data, size);
    rc = pg_socket_run(c, 0, &res);
    fuzz_pg_end(&pg);
    pg_core_production_end(c);
    if (rc == NU_OK) {
        if (res.provisioned && (pg.real_attests == 0 || !pg.pub_honest))
            FUZZ_DIE("provisioned without the chip's own attestation");
        if (!res.provisioned && (res.error <= 0 || res.error > NU_ERR_LIMIT || !res.step))
            FUZZ_DIE("failed chip without a typed error (%d) or step", res.error);
    } else if (rc != NU_ERR_STATE && rc != NU_ERR_LIMIT && rc != NU_ERR_QUOTA_EXHAUSTED &&
               rc != NU_ERR_NOT_FOUND) {
        FUZZ_DIE("socket stopped with %s", nu_err_name(rc));
    }
    return 0;
}
