/*
 * nu_x509 from several threads at once, in a fresh process: the first chain
 * checks of a programmer's sockets start together. wolfSSL 5.5.4 initialises
 * its library on first use without a lock (wolfSSL_CTX_new -> wolfSSL_Init),
 * which made some of these first checks fail with -1 (BAD_CERT to the
 * caller) once in a few dozen production starts. Each round forks a process
 * that has never checked a chain, releases 8 threads at a barrier and wants
 * every check to pass. A runner of its own: the other x509 tests would
 * initialise the library before this one could see the race.
 */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_x509.h"

#include <pthread.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define THREADS 8
#define ROUNDS 40

static uint8_t *root_der, *leaf_der;
static size_t root_len, leaf_len;
static pthread_barrier_t start;

static struct nu_x509_issue_req req(const char *cn, const uint8_t pub[NU_P256_PUB_LEN], int ca)
{
    struct nu_x509_issue_req r = {.cn = cn, .o = "NuSEC tests", .is_ca = ca, .path_len = -1};
    memcpy(r.pub, pub, NU_P256_PUB_LEN);
    r.not_before = (int64_t)time(NULL) - 60;
    r.not_after = r.not_before + 86400;
    r.key_usage =
        ca ? NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN : NU_X509_KU_DIGITAL_SIGNATURE;
    return r;
}

static int setup(void)
{
    struct nu_p256_key *ca = NULL, *leaf = NULL;
    struct nu_signer ca_signer;
    uint8_t leaf_pub[NU_P256_PUB_LEN];
    int rc = nu_p256_key_generate(&ca);
    if (rc == NU_OK)
        rc = nu_p256_key_signer(ca, &ca_signer);
    if (rc == NU_OK)
        rc = nu_p256_key_generate(&leaf);
    if (rc == NU_OK)
        rc = nu_p256_key_pub(leaf, leaf_pub);
    struct nu_x509_issue_req r = req("Threads Root", ca_signer.pub, 1);
    if (rc == NU_OK)
        rc = nu_x509_issue(&r, &ca_signer, NULL, 0, &root_der, &root_len);
    r = req("device-1", leaf_pub, 0);
    if (rc == NU_OK)
        rc = nu_x509_issue(&r, &ca_signer, root_der, root_len, &leaf_der, &leaf_len);
    nu_p256_key_destroy(ca);
    nu_p256_key_destroy(leaf);
    return rc == NU_OK ? 0 : -1;
}

static int teardown(void)
{
    free(root_der);
    free(leaf_der);
    return 0;
}

static void *check_chain(void *failed)
{
    pthread_barrier_wait(&start);
    if (nu_x509_verify_chain(leaf_der, leaf_len, NULL, 0, root_der, root_len) != NU_OK)
        *(int *)failed = 1;
    return NULL;
}

/* In a child: 8 threads at once; exit status = how many failed. */
static int child_round(void)
{
    pthread_t t[THREADS];
    int failed[THREADS] = {0}, n = 0;
    pthread_barrier_init(&start, NULL, THREADS);
    for (int i = 0; i < THREADS; i++)
        pthread_create(&t[i], NULL, check_chain, &failed[i]);
    for (int i = 0; i < THREADS; i++) {
        pthread_join(t[i], NULL);
        n += failed[i];
    }
    return n;
}

static void test_first_checks_of_many_threads(void)
{
    int bad_rounds = 0;
    for (int round = 0; round < ROUNDS; round++) {
        pid_t pid = fork();
        CU_ASSERT_FATAL(pid >= 0);
        if (pid == 0) {
            alarm(30); /* the unlocked init can also deadlock: a hang is a failed round */
            _exit(child_round());
        }
        int status = 0;
        CU_ASSERT_EQUAL(waitpid(pid, &status, 0), pid);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            bad_rounds++;
    }
    CU_ASSERT_EQUAL(bad_rounds, 0);
}

int main(void)
{
    static const struct nu_test_case cases[] = {
        {"first chain checks of 8 threads at once, 40 fresh processes",
         test_first_checks_of_many_threads},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"x509 threads", setup, teardown, cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("libnusec_test_x509_threads", suites);
}
