/*
 * ledger programmers: lifecycle, one-time enrollment tokens, atomic enroll,
 * challenge nonces and the attestation record.
 */
#include "test_ledger_fix.h"

/* ----------------------------------------------------------- programmers */

static int prog_count(void *ctx, const struct cloud_ledger_programmer *p)
{
    (void)p;
    (*(unsigned *)ctx)++;
    return 0;
}

static void test_programmer_lifecycle(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_programmer p;
    struct cloud_ledger_enrollment e = {"prog-1", "1234abcd", PEM_TEXT, pkg_pub, "station-1",
                                        T0,       NULL,       NULL,     NULL};
    uint8_t bad_pub[CLOUD_LEDGER_PUBKEY_LEN] = {0x04};
    unsigned n = 0;
    struct evscan ev;

    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_EQUAL(p.state, CLOUD_LEDGER_PROGRAMMER_ENROLLED);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, "1234abcd");
    CU_ASSERT_STRING_EQUAL(p.cert_pem, PEM_TEXT);
    CU_ASSERT_EQUAL(memcmp(p.package_pubkey, pkg_pub, sizeof(pkg_pub)), 0);
    CU_ASSERT_EQUAL(p.enrolled_at_ms, T0);
    /* Re-enrollment replaces the identity and records the previous serial. */
    e.cert_serial = "5678";
    e.now_ms = T0 + 5;
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, "5678");
    ev = events(l, "programmer.enrolled");
    CU_ASSERT_EQUAL(ev.count, 2);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"programmer\":\"prog-1\",\"serial\":\"5678\","
                                            "\"previous_serial\":\"1234abcd\"}");
    CU_ASSERT_EQUAL(enroll(l, "prog-2"), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_list(l, prog_count, &n), NU_OK);
    CU_ASSERT_EQUAL(n, 2);

    /* Bad input. */
    e.package_pubkey = bad_pub;
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    e.package_pubkey = pkg_pub;
    e.cert_serial = "ABCD"; /* upper case is not how we store serials */
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    e.cert_serial = "abcd";
    e.cert_pem = "not a pem";
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    e.cert_pem = PEM_TEXT;
    e.programmer_id = "prog 1";
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    e.programmer_id = "prog-1";
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "nobody", &p), NU_ERR_NOT_FOUND);

    /* Revocation is final. */
    CU_ASSERT_EQUAL(
        cloud_ledger_programmer_revoke(l, "prog-1", "KeyStore \"lost\"", "oem-1", T0 + 9), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_EQUAL(p.state, CLOUD_LEDGER_PROGRAMMER_REVOKED);
    CU_ASSERT_EQUAL(p.revoked_at_ms, T0 + 9);
    CU_ASSERT_STRING_EQUAL(p.revoke_reason, "KeyStore \"lost\"");
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-1", NULL, "oem-1", T0), NU_ERR_STATE);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_REVOKED);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "nobody", NULL, "oem-1", T0),
                    NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-2", "tab\there", "oem-1", T0),
                    NU_ERR_INVALID_ARG);
    ev = events(l, "programmer.revoked");
    CU_ASSERT_EQUAL(ev.count, 1);
    CU_ASSERT_STRING_EQUAL(ev.last_payload,
                           "{\"programmer\":\"prog-1\",\"reason\":\"KeyStore \\\"lost\\\"\"}");
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

static const uint8_t TOKEN[32] = "0123456789abcdef0123456789ABCDEF";

static int file_contains(const char *path, const uint8_t *needle, size_t n)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    int found = 0;

    if (nu_file_read(path, NU_FILE_MAX, &buf, &len) != NU_OK)
        return 0;
    for (size_t i = 0; i + n <= len && !found; i++)
        found = memcmp(buf + i, needle, n) == 0;
    free(buf);
    return found;
}

static void test_tokens_one_time(void)
{
    char path[512], wal[600];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    uint8_t tok2[20] = "another-token-bytes";
    uint8_t hash[32];
    struct evscan ev;

    CU_ASSERT_EQUAL(
        cloud_ledger_token_add(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000, "oem-1", T0), NU_OK);
    CU_ASSERT_EQUAL(
        cloud_ledger_token_add(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000, "oem-1", T0),
        NU_ERR_EXISTS);
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, TOKEN, 8, "prog-1", T0 + 1000, "oem-1", T0),
                    NU_ERR_INVALID_ARG); /* too short to be a secret */
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, tok2, sizeof(tok2), "prog-2", T0, "oem-1", T0),
                    NU_ERR_INVALID_ARG); /* already expired */
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN, sizeof(TOKEN), "prog-2", T0 + 1),
                    NU_ERR_TOKEN); /* bound to prog-1 */
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000),
                    NU_ERR_TOKEN); /* expired */
    CU_ASSERT_EQUAL(cloud_ledger_token_consume(l, tok2, sizeof(tok2), "prog-1", "st-1", T0 + 1),
                    NU_ERR_TOKEN); /* unknown */
    CU_ASSERT_EQUAL(cloud_ledger_token_consume(l, TOKEN, sizeof(TOKEN), "prog-1", "st-1", T0 + 1),
                    NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_consume(l, TOKEN, sizeof(TOKEN), "prog-1", "st-1", T0 + 2),
                    NU_ERR_TOKEN); /* one time */
    CU_ASSERT_EQUAL(cloud_ledger_token_check(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 2),
                    NU_ERR_TOKEN);

    /* Expiry on consume. */
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, tok2, sizeof(tok2), "prog-2", T0 + 10, "oem-1", T0),
                    NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_consume(l, tok2, sizeof(tok2), "prog-2", "st-1", T0 + 10),
                    NU_ERR_TOKEN);
    /* A revoked programmer cannot get or use tokens. */
    CU_ASSERT_EQUAL(enroll(l, "prog-3"), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_revoke(l, "prog-3", NULL, "oem-1", T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_token_add(l, tok2 + 1, 16, "prog-3", T0 + 10, "oem-1", T0),
                    NU_ERR_REVOKED);

    CU_ASSERT_EQUAL(events(l, "enroll.token.added").count, 2);
    CU_ASSERT_EQUAL(events(l, "enroll.token.used").count, 1);
    ev = events(l, "enroll.refused");
    CU_ASSERT_EQUAL(ev.count, 3);
    CU_ASSERT_STRING_EQUAL(ev.last_payload, "{\"programmer\":\"prog-2\",\"code\":\"TOKEN\"}");

    /* Only the hash is stored: the token bytes appear in no file. */
    CU_ASSERT_EQUAL(nu_sha256(TOKEN, sizeof(TOKEN), hash), NU_OK);
    CU_ASSERT_EQUAL(sql_int(path, "SELECT count(*) FROM enroll_tokens"), 2);
    cloud_ledger_close(l);
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    CU_ASSERT_EQUAL(sqlite3_open(path, &db), SQLITE_OK);
    CU_ASSERT_EQUAL(sqlite3_prepare_v2(db,
                                       "SELECT count(*) FROM enroll_tokens WHERE"
                                       " token_hash = ?1 AND used_at_ms IS NOT NULL",
                                       -1, &st, NULL),
                    SQLITE_OK);
    sqlite3_bind_blob(st, 1, hash, 32, SQLITE_STATIC);
    CU_ASSERT_EQUAL(sqlite3_step(st), SQLITE_ROW);
    CU_ASSERT_EQUAL(sqlite3_column_int(st, 0), 1);
    sqlite3_finalize(st);
    sqlite3_close(db);
    CU_ASSERT_FALSE(file_contains(path, TOKEN, sizeof(TOKEN)));
    nu_path_fmt(wal, sizeof(wal), "%s-wal", path);
    CU_ASSERT_FALSE(file_contains(wal, TOKEN, sizeof(TOKEN)));
}

static void test_enroll_is_atomic(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    struct cloud_ledger_enrollment e = {"prog-1", "abcd", PEM_TEXT, pkg_pub, "station-1",
                                        T0,       NULL,   NULL,     NULL};
    struct cloud_ledger_programmer p;
    uint64_t seq;

    CU_ASSERT_EQUAL(
        cloud_ledger_token_add(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000, "oem-1", T0), NU_OK);
    seq = head_seq(l);
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN) - 1, &e), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_ERR_NOT_FOUND);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1); /* only enroll.refused */
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, "abcd");
    e.cert_serial = "ef01";
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_ERR_TOKEN);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.cert_serial, "abcd"); /* unchanged */
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

/* The challenge nonce: bound to one programmer, single-use, expiring; used up
 * with the token in the enrollment's transaction; the attestation recorded. */
static void test_enroll_nonce_and_attestation(void)
{
    char path[512];
    struct cloud_ledger *l = open_fresh(path, sizeof(path));
    static const char meas[] = "c10df17801000000000000000000000000000000000000000000000000000000";
    uint8_t nonce[32], other[32];
    struct cloud_ledger_enrollment e = {
        "prog-1", "abcd", PEM_TEXT, pkg_pub, "oem-1", T0 + 10, "NL3-0123456789ab", meas, nonce};
    struct cloud_ledger_programmer p;
    uint64_t seq;

    memset(nonce, 0x42, sizeof(nonce));
    memset(other, 0x43, sizeof(other));
    CU_ASSERT_EQUAL(cloud_ledger_nonce_add(l, nonce, "prog-1", T0 + 100, T0), NU_OK);
    CU_ASSERT_NOT_EQUAL(cloud_ledger_nonce_add(l, nonce, "prog-1", T0 + 100, T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_add(l, other, "prog-2", T0 + 100, T0), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_add(l, other, "prog-2", T0, T0), NU_ERR_INVALID_ARG);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_check(l, nonce, "prog-1", T0 + 10), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_check(l, nonce, "prog-2", T0 + 10), NU_ERR_NONCE_REPLAYED);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_check(l, nonce, "prog-1", T0 + 100), NU_ERR_NONCE_EXPIRED);
    CU_ASSERT_EQUAL(
        cloud_ledger_token_add(l, TOKEN, sizeof(TOKEN), "prog-1", T0 + 1000, "oem-1", T0), NU_OK);
    /* another programmer's nonce: refused, audited, nothing used up */
    e.nonce = other;
    seq = head_seq(l);
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_ERR_NONCE_REPLAYED);
    CU_ASSERT_EQUAL(head_seq(l), seq + 1); /* enroll.refused */
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_ERR_NOT_FOUND);
    /* expired */
    e.nonce = nonce;
    e.now_ms = T0 + 100;
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_ERR_NONCE_EXPIRED);
    /* in time: enrolled, the attestation recorded, nonce and token used */
    e.now_ms = T0 + 10;
    CU_ASSERT_EQUAL(cloud_ledger_enroll(l, TOKEN, sizeof(TOKEN), &e), NU_OK);
    CU_ASSERT_EQUAL(cloud_ledger_programmer_get(l, "prog-1", &p), NU_OK);
    CU_ASSERT_STRING_EQUAL(p.vendor_serial, "NL3-0123456789ab");
    CU_ASSERT_STRING_EQUAL(p.firmware_measurement, meas);
    CU_ASSERT_EQUAL(cloud_ledger_nonce_check(l, nonce, "prog-1", T0 + 11), NU_ERR_NONCE_REPLAYED);
    CU_ASSERT_STRING_EQUAL(
        events(l, "programmer.enrolled").last_payload,
        "{\"programmer\":\"prog-1\",\"serial\":\"abcd\",\"previous_serial\":\"\","
        "\"vendor_serial\":\"NL3-0123456789ab\",\"firmware_measurement\":\"c10df178"
        "01000000000000000000000000000000000000000000000000000000\"}");
    /* a measurement that is not 64 hex characters is not recorded */
    e.firmware_measurement = "abc";
    CU_ASSERT_EQUAL(cloud_ledger_programmer_upsert(l, &e), NU_ERR_INVALID_ARG);
    CU_ASSERT_TRUE(verify_ok(l));
    cloud_ledger_close(l);
}

const struct nu_test_case prog_cases[] = {
    {"programmer upsert, get, list, revoke", test_programmer_lifecycle},
    {"tokens are one-time, expire, stored hashed", test_tokens_one_time},
    {"enroll is atomic", test_enroll_is_atomic},
    {"enroll: challenge nonce and attestation record", test_enroll_nonce_and_attestation},
    {NULL, NULL},
};
