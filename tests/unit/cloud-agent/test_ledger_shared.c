/*
 * ledger shared state (schema 5, issue 13): programmer firmware revocations
 * read in the enrollment's own transaction (the race of issue 9), signed
 * image bytes any agent can serve, and the device CRL that only moves
 * forward. Runs on both backends.
 */
#include "test_ledger_fix.h"

static const uint8_t TOKEN1[32] = "0123456789abcdef0123456789ABCDEF";
static const uint8_t TOKEN2[32] = "fedcba9876543210fedcba9876543210";
static const char MEAS[] = "c10df17801000000000000000000000000000000000000000000000000000000";
static const char MEAS2[] = "c10df17802000000000000000000000000000000000000000000000000000000";

struct ids {
    unsigned n;
    char last[CLOUD_LEDGER_ID_MAX + 1];
};

static int collect(void *ctx, const char *id)
{
    struct ids *s = ctx;
    s->n++;
    snprintf(s->last, sizeof(s->last), "%s", id);
    return NU_OK;
}

static struct cloud_ledger_enrollment attested(const char *id, const char *serial, const char *meas,
                                               uint64_t now)
{
    struct cloud_ledger_enrollment e = {
        id, serial, PEM_TEXT, pkg_pub, "oem-1", now, "NL3-0123456789ab", meas, NULL};
    return e;
}

/* An enrollment past the agent's early checks (token, measurement not
 * revoked yet) when the OEM's revocation lands is refused when it reaches
 * the ledger: the check is read again in the transaction that records it. */
static void test_revocation_during_enrollment(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_enrollment e1 = attested("prog-1", "abcd", MEAS, T0 + 10);
    struct cloud_ledger_enrollment e2 = attested("prog-2", "ef01", MEAS, T0 + 5);
    struct cloud_ledger_programmer p;
    struct ids ids = {0};
    int revoked = 1, fresh = 0;
    uint64_t seq;

    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, TOKEN1, 32, "prog-1", T0 + 1000, "oem-1", T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, TOKEN2, 32, "prog-2", T0 + 1000, "oem-1", T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN2, 32, &e2), NU_OK); /* enrolled before */
    /* prog-1's enrollment is on its way: the agent's checks pass... */
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN1, 32, "prog-1", T0 + 10), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_revoked(l, MEAS, &revoked), NU_OK);
    CU_ASSERT_EQUAL(revoked, 0);
    /* ...the OEM revokes the firmware (prog-2, enrolled with it, goes too)... */
    CU_ASSERT_EQUAL(cloud_ledger_firmware_revoke(l, MEAS, "CVE-2026-1", "oem-1", T0 + 20, collect,
                                                 &ids, &fresh),
                    NU_OK);
    CU_ASSERT_EQUAL(fresh, 1);
    CU_ASSERT_EQUAL(ids.n, 1);
    CU_ASSERT_STRING_EQUAL(ids.last, "prog-2");
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-2", &p), NU_OK);
    CU_ASSERT_EQUAL(p.state, CLOUD_LEDGER_PROGRAMMER_REVOKED);
    /* ...and the enrollment, reaching the ledger, is refused and audited. */
    seq = head_seq(l);
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN1, 32, &e1), NU_ERR_MEASUREMENT);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1);
    CU_ASSERT_PTR_NOT_NULL(strstr(events(l, "enroll.refused").last_payload, "MEASUREMENT"));
    /* The token was not used up: with approved firmware the programmer enrolls. */
    e1.firmware_measurement = MEAS2;
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN1, 32, &e1), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_revoked(l, MEAS, &revoked), NU_OK);
    CU_ASSERT_EQUAL(revoked, 1);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_revoked(l, MEAS2, &revoked), NU_OK);
    CU_ASSERT_EQUAL(revoked, 0);
    /* Again: nothing listed twice, nobody new to revoke. */
    ids.n = 0;
    CU_ASSERT_EQUAL(
        cloud_ledger_firmware_revoke(l, MEAS, "again", "oem-1", T0 + 30, collect, &ids, &fresh),
        NU_OK);
    CU_ASSERT_EQUAL(fresh, 0);
    CU_ASSERT_EQUAL(ids.n, 0);
    struct evscan ev = events(l, "programmer.firmware_revoked");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"measurement\":\"c10df178010000000000000000000000"
                                            "00000000000000000000000000000000\","
                                            "\"reason\":\"CVE-2026-1\"}");
    /* Outsiders cannot write the ledger's event kind. */
    struct cloud_ledger_event fake = {.ts_ms = T0,
                                      .kind = "programmer.firmware_revoked",
                                      .actor = "oem-1",
                                      .job_id = "",
                                      .payload = "{}",
                                      .payload_len = 2};
    CU_ASSERT_NOT_EQUAL(cloud_ledger_audit_append(l, &fake, NULL), NU_OK);
    /* Bad input. */
    CU_ASSERT_EQUAL(cloud_ledger_firmware_revoke(l, "C10DF178", "x", "oem-1", T0, NULL, NULL, NULL),
                    NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(
        cloud_ledger_firmware_revoke(l, MEAS2, "tab\there", "oem-1", T0, NULL, NULL, NULL),
        NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_revoked(l, "zz", &revoked), NU_ERR_INVALID_ARG);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static int count_rev(void *ctx, const struct cloud_ledger_fw_revocation *r)
{
    CU_ASSERT_EQUAL(strlen(r->measurement), 64);
    (*(unsigned *)ctx)++;
    return NU_OK;
}

/* A child enrolls while the parent revokes, many times over, as two agents
 * would: whichever commits first, no programmer ends up enrolled with the
 * revoked firmware. */
static void test_revocation_races_enrollment(void)
{
    enum { ROUNDS = 12 };
    char path[512], id[32], meas[65];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_programmer p;
    unsigned refused = 0, caught = 0, n = 0;

    for (int i = 0; i < ROUNDS; i++) {
        uint8_t tok[32];
        memset(tok, 'a' + i, sizeof(tok));
        snprintf(id, sizeof(id), "race-%d", i);
        CU_ASSERT_EQUAL(cloud_ledger_token_add(l, tok, 32, id, T0 + 1000, "oem-1", T0), NU_OK);
    }
    cloud_ledger_close(l); /* never carry a connection across fork() */
    for (int i = 0; i < ROUNDS; i++) {
        uint8_t tok[32];
        memset(tok, 'a' + i, sizeof(tok));
        snprintf(id, sizeof(id), "race-%d", i);
        snprintf(meas, sizeof(meas), "%02x%062d", i, 0);
        pid_t pid = fork();
        CU_ASSERT_FATAL(pid >= 0);
        if (pid == 0) {
            struct cloud_ledger *cl = NULL;
            struct cloud_ledger_enrollment e = attested(id, "abcd", meas, T0 + 10);
            if (cloud_ledger_open(path, &cl) != NU_OK)
                _exit(255);
            int rc = cloud_ledger_enroll(cl, tok, 32, &e);
            cloud_ledger_close(cl);
            _exit(rc == NU_OK ? 0 : rc == NU_ERR_MEASUREMENT ? 1 : 254);
        }
        struct cloud_ledger *pl = NULL;
        struct ids ids = {0};
        CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &pl), NU_OK);
        CU_ASSERT_EQUAL(
            cloud_ledger_firmware_revoke(pl, meas, "race", "oem-1", T0 + 20, collect, &ids, NULL),
            NU_OK);
        int st = 0;
        CU_ASSERT_EQUAL(waitpid(pid, &st, 0), pid);
        CU_ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) <= 1);
        if (WIFEXITED(st) && WEXITSTATUS(st) == 1)
            refused++;
        else if (WIFEXITED(st) && WEXITSTATUS(st) == 0)
            caught += ids.n == 1; /* it committed first: the revocation took it */
        /* Whoever won, the programmer is not left enrolled with it. */
        int rc = cloud_ledger_programmer_get(pl, id, &p);
        CU_ASSERT_TRUE(rc == NU_ERR_NOT_FOUND ||
                       (rc == NU_OK && p.state == CLOUD_LEDGER_PROGRAMMER_REVOKED));
        cloud_ledger_close(pl);
    }
    CU_ASSERT_EQUAL(refused + caught, ROUNDS);
    printf("\n    revocation vs enrollment: %u refused at the ledger, %u revoked after", refused,
           caught);
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &l), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_revocations(l, count_rev, &n), NU_OK);
    CU_ASSERT_EQUAL(n, ROUNDS);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* ------------------------------------------------------------ image bytes */

static void fw_rec(struct cloud_ledger_firmware *fw, const char *name, const uint8_t *img,
                   size_t len)
{
    memset(fw, 0, sizeof(*fw));
    snprintf(fw->name, sizeof(fw->name), "%s", name);
    nu_sha256(img, len, fw->image_digest);
    fw->image_size = (uint32_t)len;
    fw->security_counter = 1;
    memset(fw->request_hash, 0x11, sizeof(fw->request_hash));
    snprintf(fw->signed_by, sizeof(fw->signed_by), "oem-1");
    fw->signed_at_ms = T0;
}

static int fw_names(void *ctx, const struct cloud_ledger_firmware *fw)
{
    char *out = ctx;
    strcat(out, fw->name);
    strcat(out, ";");
    return NU_OK;
}

static void test_image_bytes(void)
{
    char path[512], names[256] = "";
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_firmware fw;
    size_t big_len = 300000, len = 0;
    uint8_t *big = malloc(big_len), *img = NULL, old[100];

    CU_ASSERT_FATAL(big != NULL);
    for (size_t i = 0; i < big_len; i++)
        big[i] = (uint8_t)(i * 7 + 3);
    memset(old, 0x5a, sizeof(old));
    fw_rec(&fw, "app-1.0.0", big, big_len);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add_image(l, &fw, big, big_len - 1), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_image(l, "app-1.0.0", &img, &len), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add_image(l, &fw, big, big_len), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add_image(l, &fw, big, big_len), NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(events(l, "firmware.signed").count, 1);
    /* Another connection (another agent) reads the same bytes. */
    struct cloud_ledger *other = NULL;
    CU_ASSERT_EQUAL_FATAL(cloud_ledger_open(path, &other), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_image(other, "app-1.0.0", &img, &len), NU_OK);
    CU_ASSERT_EQUAL(len, big_len);
    CU_ASSERT_TRUE(img && memcmp(img, big, big_len) == 0);
    free(img);
    img = NULL;
    /* Recorded before schema 5 (no bytes): imported once, checked. */
    fw_rec(&fw, "boot-0.9.0", old, sizeof(old));
    CU_ASSERT_EQUAL(cloud_ledger_firmware_add(l, &fw), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_image(other, "boot-0.9.0", &img, &len), NU_ERR_NOT_FOUND);
    old[0] ^= 1;
    CU_ASSERT_EQUAL(cloud_ledger_firmware_image_put(other, "boot-0.9.0", old, sizeof(old)),
                    NU_ERR_INVALID_ARG); /* not what was signed */
    old[0] ^= 1;
    CU_ASSERT_EQUAL(cloud_ledger_firmware_image_put(other, "boot-0.9.0", old, sizeof(old)), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_image_put(l, "boot-0.9.0", old, sizeof(old)), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_image_put(l, "nope-1.0.0", old, sizeof(old)),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_image(l, "boot-0.9.0", &img, &len), NU_OK);
    CU_ASSERT_TRUE(img && len == sizeof(old) && memcmp(img, old, len) == 0);
    free(img);
    CU_ASSERT_EQUAL(cloud_ledger_firmware_list(l, fw_names, names), NU_OK);
    CU_ASSERT_STRING_EQUAL(names, "app-1.0.0;boot-0.9.0;");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(other);
    cloud_ledger_close(l);
    free(big);
}

/* ------------------------------------------------------------ device CRL */

static int publish_fail(void *ctx)
{
    (*(unsigned *)ctx)++;
    return NU_ERR_IO;
}

static void test_device_crl_moves_forward(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    const uint8_t a[] = "crl-number-5", b[] = "crl-number-6";
    uint8_t *der = NULL;
    size_t len = 0;
    uint64_t number = 0;

    CU_ASSERT_EQUAL(cloud_ledger_device_crl_get(l, &number, &der, &len), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_put(l, 5, a, sizeof(a), NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_put(l, 5, b, sizeof(b), NULL, NULL), NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_put(l, 4, b, sizeof(b), NULL, NULL), NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_get(l, &number, &der, &len), NU_OK);
    CU_ASSERT_EQUAL(number, 5);
    CU_ASSERT_TRUE(der && len == sizeof(a) && memcmp(der, a, len) == 0);
    free(der);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_put(l, 6, b, sizeof(b), NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_get(l, &number, &der, &len), NU_OK);
    CU_ASSERT_EQUAL(number, 6);
    CU_ASSERT_TRUE(der && len == sizeof(b) && memcmp(der, b, len) == 0);
    free(der);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_put(l, 7, b, 0, NULL, NULL), NU_ERR_INVALID_ARG);
    /* Published while stored; a failed publish stores nothing. */
    unsigned calls = 0;
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_put(l, 8, a, sizeof(a), publish_fail, &calls),
                    NU_ERR_IO);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_put(l, 6, a, sizeof(a), publish_fail, &calls),
                    NU_ERR_STATE); /* older: not even published */
    CU_ASSERT_EQUAL(calls, 1);
    CU_ASSERT_EQUAL(cloud_ledger_device_crl_get(l, &number, &der, &len), NU_OK);
    CU_ASSERT_EQUAL(number, 6);
    free(der);
    cloud_ledger_close(l);
}

const struct nu_test_case shared_cases[] = {
    {"firmware revoked while an enrollment is on its way", test_revocation_during_enrollment},
    {"firmware revocation races enrollments (2 processes)", test_revocation_races_enrollment},
    {"signed image bytes in the ledger", test_image_bytes},
    {"device CRL only moves forward", test_device_crl_moves_forward},
    {NULL, NULL},
};
