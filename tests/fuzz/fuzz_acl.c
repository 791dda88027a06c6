/*
 * fuzz_acl — libFuzzer target for the broker plugin's pure policy
 * (broker/acl.c): the revocation and ownership list parsers, the topic /
 * filter ACL, the response-topic rule, client ids and log escaping.
 *
 * Input: byte 0 selects (mod 4): 0 revocation list, 1 ownership table,
 * 2 an access check, 3 client id + log escaping. For 2: byte 1 role,
 * byte 2 access, byte 3 retain, then "identity\0topic".
 *
 * Properties:
 *   - list parsers: typed errors only, a refusal names a line and returns
 *     no set, every revoked identity is an identity, parsing is
 *     deterministic (same count twice);
 *   - ACL: nothing allowed for a topic with a NUL cut, '+' or '#' in a
 *     WRITE, '$' outside $share, an empty level, or over 512 bytes; a
 *     wildcard-free SUBSCRIBE is allowed only if READ of that topic is; a
 *     response topic is allowed only if the subject may read it;
 *   - a client id accepted for identity id is id or "id:suffix";
 *   - log escaping always yields terminated printable ASCII within cap.
 */
#include "acl.h"
#include "fuzz_common.h"

#include <string.h>

static struct nusec_acl_set *owners;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    static const char table[] = "station-1 prog-1\nstation-1 prog-2\nstation-2 prog-3\n";
    (void)argc, (void)argv;
    if (nusec_acl_owners_parse(table, strlen(table), &owners, NULL) != NU_OK)
        FUZZ_DIE("setup");
    return 0;
}

static void fuzz__list(const char *t, size_t n, int own)
{
    static const int refusals[] = {NU_ERR_DECODE, NU_ERR_TOO_LARGE, -1};
    struct nusec_acl_set *set = NULL, *set2 = NULL;
    size_t line = 0;
    int rc = own ? nusec_acl_owners_parse(t, n, &set, &line)
                 : nusec_acl_revoked_parse(t, n, &set, &line);
    if (rc != NU_OK) {
        fuzz_expect("list parse", rc, refusals);
        if (set || (rc == NU_ERR_DECODE && line == 0))
            FUZZ_DIE("refusal with a set or without a line");
        return;
    }
    for (size_t i = 0; i < nusec_acl_set_count(set); i++) {
        const char *k = nusec_acl_set_key(set, i);
        if (!k || (!own && !nusec_acl_identity_valid(k, strlen(k))))
            FUZZ_DIE("revoked entry '%s' is not an identity", k ? k : "(null)");
        if (i && strcmp(nusec_acl_set_key(set, i - 1), k) >= 0)
            FUZZ_DIE("set not sorted or not unique");
        if (!nusec_acl_set_get(set, k, NULL))
            FUZZ_DIE("key %zu not found", i);
    }
    rc = own ? nusec_acl_owners_parse(t, n, &set2, NULL) : nusec_acl_revoked_parse(t, n, &set2, NULL);
    if (rc != NU_OK || nusec_acl_set_count(set2) != nusec_acl_set_count(set))
        FUZZ_DIE("second parse differs");
    nusec_acl_set_free(set2);
    nusec_acl_set_free(set);
}

static int fuzz__malformed(const char *topic, int write)
{
    size_t n = strlen(topic);
    if (n == 0 || n > NUSEC_ACL_TOPIC_MAX)
        return 1;
    if (write && strpbrk(topic, "+#"))
        return 1;
    if (topic[0] == '$' && strncmp(topic, "$share/", 7) != 0)
        return 1;
    if (topic[0] == '/' || topic[n - 1] == '/' || strstr(topic, "//"))
        return 1;
    return 0;
}

static void fuzz__check(const uint8_t *d, size_t n)
{
    if (n < 3)
        return;
    char buf[1100];
    size_t m = n - 3 < sizeof(buf) - 2 ? n - 3 : sizeof(buf) - 2;
    memcpy(buf, d + 3, m);
    buf[m] = buf[m + 1] = '\0';
    const char *id = buf, *topic = buf + strlen(buf) + 1;
    if (topic > buf + m)
        topic = buf + m;
    struct nusec_acl_subject s = {id, (enum nusec_role)(d[0] % 6), d[0] & 0x80 ? owners : NULL};
    int access = d[1] & 7;
    bool retain = d[2] & 1;
    bool ok = nusec_acl_check(&s, access, topic, retain);
    if (ok && fuzz__malformed(topic, access & NUSEC_ACCESS_WRITE))
        FUZZ_DIE("allowed malformed topic '%s' (access %d)", topic, access);
    if (access == NUSEC_ACCESS_SUBSCRIBE && ok && !strpbrk(topic, "+#") &&
        strncmp(topic, "$share/", 7) != 0 &&
        !nusec_acl_check(&s, NUSEC_ACCESS_READ, topic, false))
        FUZZ_DIE("may subscribe to '%s' but not read it", topic);
    if (nusec_acl_response_topic_ok(&s, topic) &&
        !nusec_acl_check(&s, NUSEC_ACCESS_READ, topic, false))
        FUZZ_DIE("response topic '%s' the subject cannot read", topic);
    if (nusec_acl_check(&s, access, topic, retain) != ok)
        FUZZ_DIE("not deterministic");
}

static void fuzz__client(const uint8_t *d, size_t n)
{
    char buf[600], out[64];
    size_t m = n < sizeof(buf) - 2 ? n : sizeof(buf) - 2;
    memcpy(buf, d, m);
    buf[m] = buf[m + 1] = '\0';
    const char *id = buf, *client = buf + strlen(buf) + 1;
    if (client > buf + m)
        client = buf + m;
    if (nusec_acl_client_id_ok(id, client)) {
        size_t k = strlen(id);
        if (!nusec_acl_identity_valid(id, k) || strncmp(client, id, k) != 0 ||
            (client[k] != '\0' && client[k] != ':'))
            FUZZ_DIE("client id '%s' accepted for '%s'", client, id);
    }
    (void)nusec_acl_role_name(nusec_acl_role_parse(client, strlen(client)));
    size_t cap = 4 + (m % (sizeof(out) - 4));
    memset(out, 'Z', sizeof(out));
    nusec_acl_log_safe(buf, out, cap);
    size_t k = strnlen(out, cap);
    if (k >= cap)
        FUZZ_DIE("log text not terminated within %zu", cap);
    for (size_t i = 0; i < k; i++) {
        if (out[i] < 0x20 || out[i] > 0x7e)
            FUZZ_DIE("log text holds 0x%02x", (unsigned char)out[i]);
    }
    for (size_t i = cap; i < sizeof(out); i++) {
        if (out[i] != 'Z')
            FUZZ_DIE("log text wrote past cap");
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    const char *t = (const char *)data + 1;
    switch (data[0] & 3) {
    case 0: fuzz__list(t, size - 1, 0); break;
    case 1: fuzz__list(t, size - 1, 1); break;
    case 2: fuzz__check(data + 1, size - 1); break;
    default: fuzz__client(data + 1, size - 1); break;
    }
    return 0;
}
