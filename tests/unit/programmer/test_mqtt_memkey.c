/*
 * nu_mqtt options the programmer added: a client key from memory (sealed
 * memfd, never a file) and "{id}:{suffix}" client ids. Option checks run at
 * nu_mqtt_create, without a broker; the real mTLS round trip with both is in
 * tests/integration/programmer (enrollment as station:enroll-ID, production
 * with the KeyStore's key).
 */
#define _GNU_SOURCE /* F_GET_SEALS */
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_mqtt.h"
#include "nu_test.h"
#include "nu_util.h"

#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char tmp[256], ca[300], cert[300];
static char pem[NU_P256_PRIV_PEM_MAX];
static size_t pem_len;

static int setup(void)
{
    struct nu_p256_key *k = NULL;
    if (nu_test_tmpdir("memkey", tmp, sizeof(tmp)))
        return -1;
    snprintf(ca, sizeof(ca), "%s/ca.pem", tmp);
    snprintf(cert, sizeof(cert), "%s/cert.pem", tmp);
    /* create only checks that the files can be read */
    if (nu_file_write_atomic(ca, "x\n", 2, 0600) || nu_file_write_atomic(cert, "x\n", 2, 0600))
        return -1;
    int rc = nu_p256_key_generate(&k);
    if (rc == NU_OK)
        rc = nu_p256_key_to_pem(k, pem, sizeof(pem), &pem_len);
    nu_p256_key_destroy(k);
    return rc ? -1 : 0;
}

static int teardown(void)
{
    nu_zero(pem, sizeof(pem));
    nu_test_rmtree(tmp);
    return 0;
}

static struct nu_mqtt_opts opts(const char *client_id)
{
    struct nu_mqtt_opts o = {
        .host = "127.0.0.1",
        .port = 1883,
        .ca_file = ca,
        .cert_file = cert,
        .key_pem = pem,
        .key_pem_len = pem_len,
        .client_id = client_id,
    };
    return o;
}

/* The memfd holding our key, found through /proc/self/fd; -1 if none. */
static int find_key_fd(void)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int found = -1;
    while (d && (e = readdir(d))) {
        char link[300], path[300];
        snprintf(path, sizeof(path), "/proc/self/fd/%s", e->d_name);
        ssize_t n = readlink(path, link, sizeof(link) - 1);
        if (n > 0) {
            link[n] = '\0';
            if (strstr(link, "memfd:nu_mqtt_key"))
                found = atoi(e->d_name);
        }
    }
    if (d)
        closedir(d);
    return found;
}

static void test_key_from_memory_is_a_sealed_memfd(void)
{
    struct nu_mqtt_opts o = opts("prog-1");
    struct nu_mqtt *m = NULL;
    CU_ASSERT_EQUAL(find_key_fd(), -1);
    CU_ASSERT_EQUAL_FATAL(nu_mqtt_create(&o, &m), NU_OK);
    int fd = find_key_fd();
    CU_ASSERT_FATAL(fd >= 0);
    /* Sealed against any change, and it holds exactly the PEM. */
    int seals = fcntl(fd, F_GET_SEALS);
    CU_ASSERT(seals & F_SEAL_WRITE);
    CU_ASSERT(seals & F_SEAL_GROW);
    CU_ASSERT(seals & F_SEAL_SHRINK);
    CU_ASSERT(seals & F_SEAL_SEAL);
    char path[64], back[NU_P256_PRIV_PEM_MAX];
    snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
    int rfd = open(path, O_RDONLY);
    CU_ASSERT_FATAL(rfd >= 0);
    ssize_t n = read(rfd, back, sizeof(back));
    close(rfd);
    CU_ASSERT_EQUAL(n, (ssize_t)pem_len);
    CU_ASSERT_EQUAL(memcmp(back, pem, pem_len), 0);
    nu_zero(back, sizeof(back));
    CU_ASSERT_NOT_EQUAL(write(fd, "x", 1), 1); /* sealed */
    /* Nothing landed in the folder the other files are in. */
    CU_ASSERT_EQUAL(nu_test_sh("test $(ls '%s' | wc -l) -eq 2", tmp), 0);
    nu_mqtt_destroy(m);
    CU_ASSERT_EQUAL(find_key_fd(), -1); /* closed with the session */
}

static void test_key_options_checked(void)
{
    struct nu_mqtt *m = NULL;
    struct nu_mqtt_opts o = opts("prog-1");
    o.key_file = cert; /* both */
    CU_ASSERT_EQUAL(nu_mqtt_create(&o, &m), NU_ERR_INVALID_ARG);
    o = opts("prog-1");
    o.key_pem_len = 0;
    CU_ASSERT_EQUAL(nu_mqtt_create(&o, &m), NU_ERR_INVALID_ARG);
    o.key_pem_len = NU_MQTT_KEY_PEM_MAX + 1;
    CU_ASSERT_EQUAL(nu_mqtt_create(&o, &m), NU_ERR_INVALID_ARG);
    o = opts("prog-1");
    o.cert_file = NULL; /* a key without a certificate */
    CU_ASSERT_EQUAL(nu_mqtt_create(&o, &m), NU_ERR_INVALID_ARG);
    CU_ASSERT_PTR_NULL(m);
    CU_ASSERT_EQUAL(find_key_fd(), -1); /* nothing left behind by refusals */
}

static void test_client_id_with_suffix(void)
{
    static const char *const good[] = {"station:enroll-prog-1", "a:b", "prog.1:x_y-z"};
    static const char *const bad[] = {"a:", ":b", "a:b:c", "a b", "a:b/c", "a:+", ""};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        struct nu_mqtt_opts o = opts(good[i]);
        struct nu_mqtt *m = NULL;
        CU_ASSERT_EQUAL(nu_mqtt_create(&o, &m), NU_OK);
        CU_ASSERT_STRING_EQUAL(nu_mqtt_client_id(m), good[i]);
        nu_mqtt_destroy(m);
    }
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct nu_mqtt_opts o = opts(bad[i]);
        struct nu_mqtt *m = NULL;
        CU_ASSERT_EQUAL(nu_mqtt_create(&o, &m), NU_ERR_INVALID_ARG);
    }
}

static const struct nu_test_case cases[] = {
    {"key from memory is a sealed memfd", test_key_from_memory_is_a_sealed_memfd},
    {"key options checked", test_key_options_checked},
    {"client id with a suffix", test_client_id_with_suffix},
    {NULL, NULL},
};

int main(void)
{
    const struct nu_test_suite suites[] = {{"nu_mqtt memkey", setup, teardown, cases},
                                           {NULL, NULL, NULL, NULL}};
    return nu_test_run("programmer_mqtt_memkey", suites);
}
