/*
 * bench_ledger_pg — issuance rate of the ledger module on a backend, with
 * AGENTS processes issuing at once (issue 13): the same decision code on
 * SQLite and on PostgreSQL, a dummy signer (no HSM: this measures the
 * ledger), batches of BATCH (the agent's group commit).
 *
 *   bench_ledger_pg OWNER_TARGET AGENT_TARGET PASSWORD_FILE|- AGENTS SECONDS [BATCH]
 *
 * OWNER_TARGET creates the schema and a job (quota large enough); each agent
 * connects to AGENT_TARGET. Prints one line: `issued N seconds S rate R`.
 */
#include "ledger.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_util.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *const PEM = "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n"
                               "-----END CERTIFICATE-----\n";

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + ts.tv_nsec / 1e9;
}

static int sign(void *ctx, const struct cloud_ledger_issue_req *req,
                const struct cloud_ledger_sign_info *info, struct cloud_ledger_sign_out *out)
{
    unsigned *n = ctx;
    (void)req;
    if (!info->resend) {
        snprintf(out->serial, sizeof out->serial, "%08x%08x", (unsigned)getpid(), ++*n);
        snprintf(out->pem, sizeof out->pem, "%s", PEM);
    }
    out->response_len = (size_t)snprintf((char *)out->response, out->response_cap, "ok");
    return NU_OK;
}

static int agent(const char *target, const char *pw, int who, double until, size_t batch,
                 unsigned long *out_issued)
{
    struct cloud_ledger *l = NULL;
    struct cloud_ledger_issue_req r[256];
    struct cloud_ledger_issue_result *res = calloc(batch, sizeof *res);
    uint8_t uid[256][8], key[256][16], h[32];
    char prog[16];
    unsigned serial = 0, dev = 0;
    int rc = res ? cloud_ledger_connect(target, pw, 0, &l) : NU_ERR_NOMEM;

    snprintf(prog, sizeof prog, "prog-%d", who);
    memset(h, 0x5a, sizeof h);
    while (rc == NU_OK && now_s() < until) {
        for (size_t k = 0; k < batch; k++, dev++) {
            uint32_t d = (uint32_t)who << 24 | dev;
            for (int i = 0; i < 4; i++)
                uid[k][i] = (uint8_t)(d >> (24 - 8 * i)), uid[k][4 + i] = 0x11;
            nu_sha256(uid[k], 8, h);
            memcpy(key[k], h, 16);
            r[k] = (struct cloud_ledger_issue_req){.requester = prog, .idempotency_key = key[k],
                .idempotency_key_len = 16, .job_id = "job-1", .device_uid = uid[k],
                .device_uid_len = 8, .now_ms = 1700000000000ull};
            memcpy(r[k].pubkey_hash, h, 32);
            memcpy(r[k].request_hash, h, 32);
        }
        rc = cloud_ledger_issue_batch(l, r, batch, sign, &serial, res);
        if (rc == NU_ERR_BUSY)
            rc = NU_OK;
        for (size_t k = 0; rc == NU_OK && k < batch; k++)
            *out_issued += res[k].code == NU_OK;
    }
    cloud_ledger_close(l);
    free(res);
    return rc;
}

int main(int argc, char **argv)
{
    if (argc < 6) {
        fprintf(stderr, "usage: %s OWNER_TARGET AGENT_TARGET PASSWORD_FILE|- AGENTS SECONDS"
                        " [BATCH]\n", argv[0]);
        return 2;
    }
    const char *pw = strcmp(argv[3], "-") ? argv[3] : NULL;
    int agents = atoi(argv[4]);
    double secs = atof(argv[5]);
    size_t batch = argc > 6 ? (size_t)atoi(argv[6]) : 32;
    struct cloud_ledger *l = NULL;
    static uint8_t pub[CLOUD_LEDGER_PUBKEY_LEN];
    struct nu_p256_key *k = NULL;
    struct cloud_ledger_alloc a[16];
    unsigned long *issued = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS,
                                 -1, 0);

    if (agents < 1 || agents > 16 || !(secs > 0) || batch < 1 || batch > 256 ||
        issued == MAP_FAILED)
        return 2;
    int rc = cloud_ledger_init(argv[1], NULL, strstr(argv[2], "nusec_agent") ? "nusec_agent" : NULL);
    if (!rc)
        rc = cloud_ledger_connect(argv[1], NULL, 1, &l);
    if (!rc)
        rc = nu_p256_key_generate(&k);
    if (!rc)
        rc = nu_p256_key_pub(k, pub);
    nu_p256_key_destroy(k);
    for (int i = 0; !rc && i < agents; i++) {
        memset(&a[i], 0, sizeof a[i]);
        snprintf(a[i].programmer_id, sizeof a[i].programmer_id, "prog-%d", i);
        a[i].limit = 100000000;
        struct cloud_ledger_enrollment e = {a[i].programmer_id, "0a", PEM, pub, "bench",
                                            1700000000000ull, NULL, NULL, NULL};
        rc = cloud_ledger_programmer_upsert(l, &e);
    }
    struct cloud_ledger_job_spec s = {"job-1", "app-1.0.0", "CN={uid}", 2000000000u, 0,
                                      a, (size_t)agents, "oem", 1700000000000ull, NULL};
    if (!rc)
        rc = cloud_ledger_job_create(l, &s);
    cloud_ledger_close(l);
    if (rc) {
        fprintf(stderr, "bench_ledger_pg: setup: %s\n", nu_err_name(rc));
        return 1;
    }
    double t0 = now_s(), until = t0 + secs;
    for (int i = 0; i < agents; i++) {
        if (fork() == 0) {
            unsigned long n = 0;
            int arc = agent(argv[2], pw, i, until, batch, &n);
            __atomic_add_fetch(issued, n, __ATOMIC_SEQ_CST);
            _exit(arc ? 1 : 0);
        }
    }
    int failed = 0;
    for (int i = 0; i < agents; i++) {
        int st = 0;
        wait(&st);
        failed += !WIFEXITED(st) || WEXITSTATUS(st);
    }
    double el = now_s() - t0;
    printf("issued %lu seconds %.2f rate %.1f\n", *issued, el, *issued / el);
    return failed ? 1 : 0;
}
