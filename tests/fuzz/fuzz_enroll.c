/*
 * fuzz_enroll — libFuzzer target for enrollment at the cloud's decode
 * boundary: the bytes of a request on nusec/v1/cloud/req/{station}/enroll go
 * through nu_envelope_unpack, the frame's body check, and the `enroll`
 * handler of cloud_enroll.c (its id, token, package key and CSR checks, then
 * the ledger's token check) with a real ledger that holds no token.
 *
 * (An attestation statement message does not exist yet in the protocol;
 * when EnrollRequest carries one, this target decodes it through the same
 * handler without change.)
 *
 * Properties:
 *   - never OK: without a token in the ledger nothing may enroll, whatever
 *     the CSR, key or ids say; no answer is sent (the frame answers the
 *     refusal), and every refusal is typed with a detail for the audit;
 *   - the ledger stays empty (no programmer, no token) after any input.
 */
#include "cloud.h"
#include "fuzz_common.h"
#include "nu_log.h"

#include <dirent.h>
#include <string.h>
#include <unistd.h>

static struct cloud cloud;
static struct cloud_ledger *ledger;
static const struct cloud_op *op;
static char dir[64];

/* The ledger's folder (database, journal), removed at exit: libFuzzer ends
 * a run with exit(), and every run left one behind in /tmp. */
static void fuzz__cleanup(void)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    char path[128];
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        unlink(path);
    }
    if (d)
        closedir(d);
    rmdir(dir);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    char path[128];
    (void)argc, (void)argv;
    /* tmpfs when there is one: SQLite reads the ledger on every input. */
    snprintf(dir, sizeof(dir), "%s/nusec-fuzz-enroll-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(dir))
        FUZZ_DIE("mkdtemp");
    if (atexit(fuzz__cleanup) != 0)
        FUZZ_DIE("atexit");
    snprintf(path, sizeof(path), "%s/ledger.db", dir);
    if (cloud_ledger_open(path, &ledger) != NU_OK)
        FUZZ_DIE("ledger");
    cloud.dir = dir; /* static: the handler may read it on any input */
    snprintf(cloud.id, sizeof(cloud.id), "cloud");
    snprintf(cloud.cfg.oem_ids[0], sizeof(cloud.cfg.oem_ids[0]), "oem");
    cloud.cfg.n_oem_ids = 1;
    snprintf(cloud.cfg.station_ids[0], sizeof(cloud.cfg.station_ids[0]), "station-1");
    cloud.cfg.n_station_ids = 1;
    for (op = cloud_enroll_ops; op->name && strcmp(op->name, "enroll") != 0; op++) {
    }
    if (!op->name)
        FUZZ_DIE("no enroll op");
    nu_log_init("fuzz_enroll", NU_LOG_ERROR, stderr);
    return 0;
}

static int fuzz__visit(void *ctx, const struct cloud_ledger_programmer *p)
{
    (void)p;
    ++*(int *)ctx;
    return NU_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Nusec__V1__Envelope *env = NULL;
    const char *why = NULL;
    if (size < 1 || nu_envelope_unpack(data + 1, size - 1, &env, &why) != NU_OK)
        return 0;
    if ((int)env->body_case == op->body_case) {
        /* byte 0: relayed by the station, or sent by a programmer itself */
        int programmer = data[0] & 1;
        struct cloud_call call = {
            .cloud = &cloud,
            .ledger = ledger,
            .requester = programmer ? "prog-1" : "station-1",
            .role = programmer ? CLOUD_ROLE_PROGRAMMER : CLOUD_ROLE_STATION,
            .op = op->name,
            .req = env,
        };
        int rc = op->handle(&call);
        if (getenv("FUZZ_VERBOSE"))
            fprintf(stderr, "enroll: %s: %s\n", nu_err_name(rc), call.detail);
        if (rc == NU_OK || call.replied)
            FUZZ_DIE("enrolled without a token (%s)", nu_err_name(rc));
        if (!call.detail[0])
            FUZZ_DIE("refusal %s without a detail", nu_err_name(rc));
        int n = 0;
        if (cloud_ledger_programmer_list(ledger, fuzz__visit, &n) != NU_OK || n != 0)
            FUZZ_DIE("the ledger changed");
    }
    nu_envelope_free(env);
    return 0;
}
