/*
 * nusec-cloud: programmer identities — enrollment tokens, enrollment (the
 * identity certificate signed by the Fleet CA in the HSM), listing and
 * revocation (ledger + the broker's revocation list).
 *
 * Tokens: 32 random bytes, sent to the OEM once as 64 lower-case hex
 * characters; the ledger keeps only SHA-256 of the bytes. Never logged.
 */
#include "cloud.h"
#include "cloud_leader.h"

#include "nu_attest.h"
#include "nu_brokerlist.h"
#include "nu_crypto.h"
#include "nu_mcuboot.h"
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_json.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#define ENROLL__TOKEN_LEN 32
#define ENROLL__TTL_DEFAULT_S (24u * 3600u)
#define ENROLL__TTL_MAX_S (30u * 24u * 3600u)
/* Identity certificates: 3 years, never beyond the Fleet CA; backdated an
 * hour so a programmer whose clock lags a little still accepts it. */
#define ENROLL__CERT_LIFE_S (3LL * 365 * 24 * 3600)
#define ENROLL__BACKDATE_S 3600
/* Largest broker list file we rewrite (the plugin's own bound is similar). */
#define ENROLL__LIST_MAX (1024u * 1024u)
/* A boot manifest: header + 32-byte payload + TLVs. */
#define ENROLL__MANIFEST_MAX 4096u

/* Names that are roles: a programmer called "oem" would confuse every reader. */
static const char *const enroll__reserved[] = {
    NU_ROLE_CLOUD, NU_ROLE_STATION, NU_ROLE_MONITOR,
    NU_ROLE_OEM,   NU_ROLE_BROKER,  NU_ROLE_PROGRAMMER,
    NULL,
};

/* ------------------------------------------------------ broker list files */

/* A line's tokens joined by one space, for comparing lines written by hand. */
static size_t enroll__norm(const char *line, size_t len, char *out, size_t cap)
{
    return nu_brokerlist_norm(line, len, out, cap);
}

struct enroll__edit {
    const char *drop_owner_of; /* owners: drop every line of this programmer */
    const char *const *add;    /* lines to have (normalised form) */
    size_t n_add;
};

/*
 * Rewrite DIR/broker/<kind> atomically under an exclusive lock on a side
 * file, so two agents (or two workers) never lose each other's lines. The
 * plugin reads the file after every change: only well-formed lines may go in.
 */
static int enroll__list_edit(const char *dir, enum nu_path_kind kind, const struct enroll__edit *e)
{
    char path[PATH_MAX];
    struct nu_brokerlist_edit be = {
        .drop_owner_of = e->drop_owner_of, .add = e->add, .n_add = e->n_add};
    int rc = nu_paths_get(dir, kind, path, sizeof(path));
    if (rc)
        return rc;
    rc = nu_brokerlist_edit(path, &be);
    if (rc)
        nu_error("cannot update %s: %s", path, nu_err_str(rc));
    return rc;
}

struct enroll__ids {
    char (*ids)[CLOUD_ID_MAX + 1];
    size_t n, cap;
};

/* One more programmer id in the list. */
static int enroll__collect_id(void *ctx, const char *id)
{
    struct enroll__ids *s = ctx;
    void *grown = nu_grow(s->ids, &s->cap, s->n, sizeof(*s->ids));
    if (!grown)
        return NU_ERR_NOMEM;
    s->ids = grown;
    snprintf(s->ids[s->n++], sizeof(s->ids[0]), "%s", id);
    return NU_OK;
}

static int enroll__collect_revoked(void *ctx, const struct cloud_ledger_programmer *p)
{
    if (p->state != CLOUD_LEDGER_PROGRAMMER_REVOKED)
        return NU_OK;
    return enroll__collect_id(ctx, p->programmer_id);
}

/*
 * The lists on the bus (issue 13): the cloud broker may run on another host
 * than the agents, whose DIR/broker files it never sees. So the lists also
 * go, retained, to nusec/v1/cloud/lists/{revoked,serials,owners/ID}, where
 * only a cloud identity may publish (broker/acl.c); the cloud broker's plugin
 * with plugin_opt_adopt_lists writes them to its own files (broker/README.md).
 * A message that is not confirmed (the broker out of reach) stays queued in
 * the session; NU_ERR_CONNECTION is that, not a failure.
 */
static int enroll__list_publish(struct cloud *cloud, const char *name, const char *text, size_t len)
{
    char topic[sizeof(CLOUD_LISTS_TOPIC) + 16 + CLOUD_ID_MAX];
    if (!cloud->mqtt)
        return NU_OK; /* no bus (tools, unit tests): the files are the lists */
    snprintf(topic, sizeof(topic), CLOUD_LISTS_TOPIC "%s", name);
    int rc = nu_mqtt_publish_live(cloud->mqtt, topic, text, len, 1, 1);
    if (rc == NU_ERR_CONNECTION) {
        nu_debug("%s queued until the broker is back", topic);
        rc = NU_OK;
    }
    return rc;
}

/* The revocation list's text: every programmer the ledger holds as revoked. */
static int enroll__revoked_text(const struct enroll__ids *s, char **out, size_t *out_len)
{
    static const char head[] = "# written by nusec-cloud: revoked identities\n";
    size_t cap = sizeof(head), len = sizeof(head) - 1;
    for (size_t i = 0; i < s->n; i++)
        cap += strlen(s->ids[i]) + 1;
    char *text = malloc(cap);
    if (!text)
        return NU_ERR_NOMEM;
    memcpy(text, head, sizeof(head));
    for (size_t i = 0; i < s->n; i++)
        len += (size_t)snprintf(text + len, cap - len, "%s\n", s->ids[i]);
    *out = text;
    *out_len = len;
    return NU_OK;
}

static int enroll__revoked_collect(struct cloud_ledger *ledger, struct enroll__ids *s,
                                   char **out_text, size_t *out_len)
{
    int rc = cloud_ledger_programmer_list(ledger, enroll__collect_revoked, s);
    return rc ? rc : enroll__revoked_text(s, out_text, out_len);
}

int cloud_revoked_sync(struct cloud *cloud, struct cloud_ledger *ledger)
{
    struct enroll__ids s = {0};
    const char **add = NULL;
    char *text = NULL;
    size_t len = 0;
    int rc = enroll__revoked_collect(ledger, &s, &text, &len);
    if (!rc && s.n && !(add = calloc(s.n, sizeof(*add))))
        rc = NU_ERR_NOMEM;
    for (size_t i = 0; !rc && i < s.n; i++)
        add[i] = s.ids[i];
    if (!rc && s.n) {
        struct enroll__edit e = {.add = add, .n_add = s.n};
        rc = enroll__list_edit(cloud->dir, NU_PATH_BROKER_REVOKED, &e);
    }
    /* Any agent, at once: the broker adds the identities (never removes
     * one), so an older list published later cannot undo a revocation. A
     * failure here is the leader's to repair (cloud_lists_publish). */
    int pub = rc ? NU_OK : enroll__list_publish(cloud, "revoked", text, len);
    if (pub)
        nu_warn("revocation list not published (the leader retries): %s", nu_err_str(pub));
    free(text);
    free(add);
    free(s.ids);
    return rc;
}

/* Lines "id serial" of the enrolled programmers, appended to a buffer. */
struct enroll__pins {
    char *buf;
    size_t len, cap;
    int err;
};

static int enroll__pin_append(struct enroll__pins *s, const char *id, const char *serial)
{
    size_t need = strlen(id) + strlen(serial) + 2;
    if (s->len + need + 1 > s->cap) {
        size_t cap = 2 * (s->cap + need) + 256;
        char *grown = realloc(s->buf, cap);
        if (!grown)
            return NU_ERR_NOMEM;
        s->buf = grown, s->cap = cap;
    }
    s->len += (size_t)snprintf(s->buf + s->len, s->cap - s->len, "%s %s\n", id, serial);
    return NU_OK;
}

static int enroll__collect_pin(void *ctx, const struct cloud_ledger_programmer *p)
{
    if (p->state != CLOUD_LEDGER_PROGRAMMER_ENROLLED || !p->cert_serial[0])
        return NU_OK;
    return enroll__pin_append(ctx, p->programmer_id, p->cert_serial);
}

/* Whether a line of s->buf pins `id` already. */
static int enroll__pins_has(const struct enroll__pins *s, const char *id)
{
    size_t n = strlen(id);
    for (const char *l = s->buf, *end = s->buf + s->len; l && l < end;) {
        if ((size_t)(end - l) > n && !memcmp(l, id, n) && l[n] == ' ')
            return 1;
        l = memchr(l, '\n', (size_t)(end - l));
        l = l ? l + 1 : NULL;
    }
    return 0;
}

/* The serial of site `name`'s bridge certificate (DIR/sites/NAME/site.crt,
 * as `nusec site sign` wrote it: OU site, CN the name) into serial[]. */
static int enroll__site_serial(const char *dir, const char *name,
                               char serial[NU_X509_SERIAL_HEX_MAX])
{
    char path[PATH_MAX];
    uint8_t *pem = NULL, *der = NULL;
    size_t pem_len = 0, der_len = 0;
    struct nu_x509_cert_info ci;
    int rc = nu_path_fmt(path, sizeof(path), "%s/sites/%s/site.crt", dir, name);
    if (!rc)
        rc = nu_file_read(path, 65536, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_pem_to_der((const char *)pem, pem_len, NU_X509_PEM_CERT, &der, &der_len, NULL);
    if (!rc)
        rc = nu_x509_cert_info(der, der_len, &ci);
    if (!rc && (strcmp(ci.cn, name) != 0 || strcmp(ci.ou, "site") != 0))
        rc = NU_ERR_BAD_CERT;
    if (!rc)
        memcpy(serial, ci.serial_hex, NU_X509_SERIAL_HEX_MAX);
    free(pem);
    free(der);
    return rc;
}

/*
 * A line "site serial" for each signed site, its bridge's certificate: the
 * broker then refuses the site's other certificates with its name, above
 * all its station's (a site's station talks to its own broker; at the
 * cloud broker it could read every site's events). A site without a
 * certificate yet is skipped; one named like a pinned programmer too (one
 * id, one pin: said once per `warn`).
 */
static int enroll__collect_site_pins(const char *dir, struct enroll__pins *s, int warn)
{
    char path[PATH_MAX], serial[NU_X509_SERIAL_HEX_MAX];
    int rc = nu_path_fmt(path, sizeof(path), "%s/sites", dir);
    DIR *d = rc ? NULL : opendir(path);
    if (!d)
        return rc ? rc : errno == ENOENT ? NU_OK : NU_ERR_IO;
    struct dirent *e;
    while (rc == NU_OK && (e = readdir(d)) != NULL) {
        if (nu_envelope_id_check(e->d_name) != NU_OK ||
            enroll__site_serial(dir, e->d_name, serial) != NU_OK)
            continue;
        if (enroll__pins_has(s, e->d_name)) {
            if (warn)
                nu_warn("site %s shares its name with a programmer: its station is not kept off "
                        "the cloud broker",
                        e->d_name);
            continue;
        }
        rc = enroll__pin_append(s, e->d_name, serial);
    }
    closedir(d);
    return rc;
}

/* The serial list's header in s->buf (malloc'd); lines follow. */
static int enroll__serials_start(struct enroll__pins *s)
{
    static const char head[] = "# written by nusec-cloud: current identity certificate serials\n";
    if (!(s->buf = malloc(s->cap = sizeof(head) + 256)))
        return NU_ERR_NOMEM;
    memcpy(s->buf, head, sizeof(head) - 1);
    s->len = sizeof(head) - 1;
    return NU_OK;
}

/* The serial list's text from the ledger and DIR/sites (s->buf, malloc'd). */
static int enroll__serials_text(struct cloud *cloud, struct cloud_ledger *ledger,
                                struct enroll__pins *s)
{
    int rc = enroll__serials_start(s);
    if (!rc)
        rc = cloud_ledger_programmer_list(ledger, enroll__collect_pin, s);
    return rc ? rc : enroll__collect_site_pins(cloud->dir, s, 1);
}

/* Both lists from one pass over the programmers (the leader's every poll). */
struct enroll__both {
    struct enroll__ids *ids;
    struct enroll__pins *pins;
};

static int enroll__collect_both(void *ctx, const struct cloud_ledger_programmer *p)
{
    struct enroll__both *b = ctx;
    int rc = enroll__collect_revoked(b->ids, p);
    return rc ? rc : enroll__collect_pin(b->pins, p);
}

int cloud_serials_sync(struct cloud *cloud, struct cloud_ledger *ledger)
{
    char path[PATH_MAX];
    struct enroll__pins s = {0};
    int fd = -1;
    int rc = nu_path_fmt(path, sizeof(path), "%s/broker/serials", cloud->dir);
    /* Under the lock, the ledger is read after any other writer's commit. */
    if (!rc)
        rc = nu_brokerlist_lock(path, &fd);
    if (!rc)
        rc = enroll__serials_text(cloud, ledger, &s);
    if (!rc)
        rc = nu_file_write_atomic(path, s.buf, s.len, 0644);
    if (fd >= 0)
        close(fd);
    free(s.buf);
    if (rc)
        nu_error("cannot update %s: %s", path, nu_err_str(rc));
    return rc;
}

/* Publish and note one of the leader's lists. A broker that refuses it
 * (NOT_AUTHORIZED: an older plugin, a list it does not take) is not asked
 * again every second: the list is noted anyway, sent again at its next
 * change. Other failures are retried at the next poll. */
static int enroll__leader_publish(struct cloud *cloud, struct cloud_leader *leader,
                                  enum cloud_leader_list which, const char *text, size_t len)
{
    const char *name = which == CLOUD_LEADER_LIST_REVOKED ? "revoked" : "serials";
    int rc = enroll__list_publish(cloud, name, text, len);
    if (rc == NU_OK || rc == NU_ERR_NOT_AUTHORIZED) {
        int noted = cloud_leader_list_note(leader, which, text, len);
        if (rc == NU_OK && noted == NU_OK)
            nu_info("leader: broker list %s published (%zu bytes)", name, len);
        return rc ? rc : noted;
    }
    return rc;
}

/*
 * The leader's lists on the bus, each published again only when its text
 * changed (or leadership changed hands): the serial list is replaced whole
 * by the broker, so only one agent may publish it; the revocation list is
 * also published by the agent that revokes (cloud_revoked_sync).
 */
void cloud_lists_publish(struct cloud *cloud, struct cloud_ledger *ledger,
                         struct cloud_leader *leader)
{
    struct enroll__ids ids = {0};
    struct enroll__pins pins = {0};
    char *text = NULL;
    size_t len = 0;
    struct enroll__both both = {&ids, &pins};
    int rc = enroll__serials_start(&pins);
    if (!rc)
        rc = cloud_ledger_programmer_list(ledger, enroll__collect_both, &both);
    if (!rc)
        rc = enroll__collect_site_pins(cloud->dir, &pins, 0);
    if (!rc)
        rc = enroll__revoked_text(&ids, &text, &len);
    if (rc) { /* a ledger outage is logged where it is met: no line a second here */
        if (rc == NU_ERR_CONNECTION || rc == NU_ERR_BUSY)
            nu_debug("leader: broker lists not built: %s", nu_err_str(rc));
        else
            nu_warn("leader: broker lists not built: %s", nu_err_str(rc));
        goto out;
    }
    if (cloud_leader_list_due(leader, CLOUD_LEADER_LIST_REVOKED, text, len))
        rc = enroll__leader_publish(cloud, leader, CLOUD_LEADER_LIST_REVOKED, text, len);
    if (rc)
        nu_warn("leader: revocation list not published: %s", nu_err_str(rc));
    rc = NU_OK;
    if (cloud_leader_list_due(leader, CLOUD_LEADER_LIST_SERIALS, pins.buf, pins.len)) {
        /* Changed (a site signed since, by the CLI): this host's broker too. */
        (void)cloud_serials_sync(cloud, ledger);
        rc = enroll__leader_publish(cloud, leader, CLOUD_LEADER_LIST_SERIALS, pins.buf, pins.len);
    }
    if (rc)
        nu_warn("leader: serial list not published: %s", nu_err_str(rc));
out:
    free(pins.buf);
    free(text);
    free(ids.ids);
}

/* The station that relayed an enrollment owns the programmer from now on:
 * in DIR/broker/owners, and on the bus for a broker on another host (one
 * retained topic per programmer, so agents enrolling different programmers
 * never overwrite each other's lines). */
static void enroll__set_owner(struct cloud *cloud, const char *station, const char *programmer)
{
    char line[2 * CLOUD_ID_MAX + 2], name[sizeof("owners/") + CLOUD_ID_MAX];
    snprintf(line, sizeof(line), "%s %s", station, programmer);
    const char *add[] = {line};
    struct enroll__edit e = {.drop_owner_of = programmer, .add = add, .n_add = 1};
    if (enroll__list_edit(cloud->dir, NU_PATH_BROKER_OWNERS, &e))
        nu_warn("%s enrolled, but the broker does not know that %s owns it", programmer, station);
    snprintf(name, sizeof(name), "owners/%s", programmer);
    size_t n = strlen(line);
    line[n] = '\n';
    int rc = enroll__list_publish(cloud, name, line, n + 1);
    if (rc)
        nu_warn("%s enrolled, but its owner %s was not published: %s", programmer, station,
                nu_err_str(rc));
}

/* ------------------------------------------------------------ checks */

/* A new programmer id: an identity that is no role and no configured id. */
static int enroll__id_allowed(struct cloud_call *call, const char *id)
{
    const struct cloud_config *cfg = &call->cloud->cfg;
    if (nu_envelope_id_check(id))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "programmer id is not an identity");
    for (const char *const *r = enroll__reserved; *r; r++) {
        if (strcmp(*r, id) == 0)
            return cloud_fail(call, NU_ERR_INVALID_ARG, "'%s' is a role name", id);
    }
    for (size_t i = 0; i < cfg->n_oem_ids; i++) {
        if (strcmp(cfg->oem_ids[i], id) == 0)
            return cloud_fail(call, NU_ERR_EXISTS, "'%s' is an oem identity", id);
    }
    if (cloud_is_station(call->cloud, id))
        return cloud_fail(call, NU_ERR_EXISTS, "'%s' is a station identity", id);
    if (strcmp(call->cloud->id, id) == 0)
        return cloud_fail(call, NU_ERR_EXISTS, "'%s' is the cloud's identity", id);
    return NU_OK;
}

/* Hex token text -> bytes; anything else is simply not a token. */
static int enroll__token_decode(struct cloud_call *call, const char *text, uint8_t *out,
                                size_t *out_len)
{
    size_t n = text ? strlen(text) : 0;
    if (n < 2 * CLOUD_LEDGER_TOKEN_MIN || n > 2 * CLOUD_LEDGER_TOKEN_MAX ||
        nu_hex_decode(text, out, CLOUD_LEDGER_TOKEN_MAX, out_len))
        return cloud_fail(call, NU_ERR_TOKEN, "malformed enrollment token");
    return NU_OK;
}

/* The ledger's refusals are audited by the ledger itself. */
static int enroll__ledger_refusal(struct cloud_call *call, int rc, const char *what)
{
    if (rc == NU_ERR_TOKEN || rc == NU_ERR_REVOKED || rc == NU_ERR_NONCE_REPLAYED ||
        rc == NU_ERR_NONCE_EXPIRED || rc == NU_ERR_MEASUREMENT)
        call->audited = 1;
    if (rc == NU_ERR_MEASUREMENT) /* revoked while this enrollment was on its way */
        return cloud_fail(call, rc, "programmer firmware revoked by the OEM");
    return cloud_fail(call, rc, "%s", what);
}

/* ------------------------------------------------------------ enroll.token */

static int enroll__token(struct cloud_call *call)
{
    const Nusec__V1__EnrollTokenRequest *r = call->req->enroll_token_request;
    uint8_t token[ENROLL__TOKEN_LEN];
    char hex[2 * ENROLL__TOKEN_LEN + 1];
    uint32_t ttl = r->ttl_s ? r->ttl_s : ENROLL__TTL_DEFAULT_S;
    if (ttl > ENROLL__TTL_MAX_S)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "ttl over %u s", ENROLL__TTL_MAX_S);
    int rc = enroll__id_allowed(call, r->programmer_id);
    if (rc)
        return rc;
    uint64_t now = nu_time_ms(), expires = now + (uint64_t)ttl * 1000u;
    rc = nu_random(token, sizeof(token));
    if (!rc)
        rc = cloud_ledger_token_add(call->ledger, token, sizeof(token), r->programmer_id, expires,
                                    call->requester, now);
    if (!rc)
        rc = nu_hex_encode(token, sizeof(token), hex, sizeof(hex));
    if (rc == NU_ERR_REVOKED)
        rc = cloud_fail(call, rc, "programmer %s is revoked; its id cannot enroll again",
                        r->programmer_id);
    if (!rc) {
        Nusec__V1__EnrollTokenResponse resp = NUSEC__V1__ENROLL_TOKEN_RESPONSE__INIT;
        resp.programmer_id = r->programmer_id;
        resp.token = hex;
        resp.expires_at_ms = expires;
        rc = cloud_reply(call, &resp.base);
        nu_info("enrollment token for %s issued to %s, expires in %u s", r->programmer_id,
                call->requester, ttl);
    }
    nu_zero(token, sizeof(token));
    nu_zero(hex, sizeof(hex));
    return rc;
}

/* ------------------------------------------------------------ enroll */

/* What the checks of an EnrollRequest produce. */
struct enroll__req {
    uint8_t token[CLOUD_LEDGER_TOKEN_MAX];
    size_t token_len;
    struct nu_x509_csr_info csr;
    struct nu_attest_claims att;
    char measurement_hex[2 * NU_SHA256_LEN + 1];
};

/* ------------------------------------------------------------ attestation */

/* The pinned programmer vendor CA (configuration vendor_ca), DER. */
static int enroll__vendor_ca(struct cloud_call *call, uint8_t **out_der, size_t *out_len)
{
    const char *path = call->cloud->cfg.vendor_ca;
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    int rc = nu_file_read(path, NU_X509_PEM_MAX, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_pem_to_der((const char *)pem, pem_len, NU_X509_PEM_CERT, out_der, out_len,
                                NULL);
    free(pem);
    if (rc)
        nu_error("enroll: no usable programmer vendor CA at %s (%s): every enrollment is refused",
                 path, nu_err_str(rc));
    return rc;
}

/* Is `serial` on the configured allow-list (a file, one serial per line)?
 * No list configured = any serial; a list that cannot be read = none. */
static int enroll__serial_allowed(struct cloud_call *call, const char *serial)
{
    const char *path = call->cloud->cfg.programmer_serials;
    uint8_t *buf = NULL;
    size_t len = 0;
    int found = 0;
    if (!path[0])
        return 1;
    if (nu_file_read(path, ENROLL__LIST_MAX, &buf, &len) != NU_OK) {
        nu_error("enroll: programmer_serials %s unreadable: no serial is allowed", path);
        return 0;
    }
    for (size_t pos = 0; pos < len && !found;) {
        const uint8_t *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        char norm[CLOUD_ID_MAX + 2];
        enroll__norm((const char *)buf + pos, end - pos, norm, sizeof(norm));
        found = norm[0] && strcmp(norm, serial) == 0;
        pos = end + 1;
    }
    free(buf);
    return found;
}

/* The measurement must be what an OEM-signed boot manifest approves: an
 * MCUboot image under the OEM's secure-boot key (the same check the
 * programmer's secure boot makes) whose 32-byte payload is the measurement. */
static int enroll__measurement_ok(struct cloud_call *call, const ProtobufCBinaryData *manifest,
                                  const uint8_t measurement[NU_SHA256_LEN])
{
    const uint8_t *rotpk = nu_hsm_key_signer(call->cloud->keys.secure_boot)->pub;
    uint8_t rotpk_hash[NU_SHA256_LEN];
    struct nu_mcuboot_info info;
    if (!manifest->len || manifest->len > ENROLL__MANIFEST_MAX)
        return 0;
    if (nu_mcuboot_rotpk_hash(rotpk, rotpk_hash) ||
        nu_mcuboot_verify(manifest->data, manifest->len, rotpk, rotpk_hash, &info))
        return 0;
    return info.payload_len == NU_SHA256_LEN &&
           nu_memeq_ct(manifest->data + info.payload_off, measurement, NU_SHA256_LEN) == 0;
}

/*
 * Programmer firmware the OEM has revoked (programmer.firmware_revoke) lives
 * in the ledger (revoked_measurements), so every agent on every host sees
 * it, and cloud_ledger_enroll reads it again in the transaction that records
 * the enrollment. Before schema 5 it was a file, DIR/cloud/revoked-
 * measurements (one 64-hex measurement per line): cloud_revoked_measurements_
 * import moves what it holds into the ledger once, then renames it.
 */
static int enroll__fw_path(const struct cloud *cloud, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/cloud/revoked-measurements", cloud->dir);
}

/* Every measurement line of the old file, revoked in the ledger. */
static int enroll__fw_import_lines(struct cloud_ledger *ledger, const uint8_t *buf, size_t len,
                                   size_t *out_n)
{
    int rc = NU_OK;
    *out_n = 0;
    for (size_t pos = 0; pos < len && !rc;) {
        const uint8_t *nl = memchr(buf + pos, '\n', len - pos);
        size_t end = nl ? (size_t)(nl - buf) : len;
        char norm[2 * NU_SHA256_LEN + 2];
        enroll__norm((const char *)buf + pos, end - pos, norm, sizeof(norm));
        pos = end + 1;
        if (!norm[0])
            continue;
        rc = cloud_ledger_firmware_revoke(ledger, norm, "imported from revoked-measurements",
                                          NU_ROLE_CLOUD, nu_time_ms(), NULL, NULL, NULL);
        if (rc == NU_ERR_INVALID_ARG) {
            nu_warn("revoked-measurements: '%.70s' is not a measurement: skipped", norm);
            rc = NU_OK;
        } else if (!rc) {
            (*out_n)++;
        }
    }
    return rc;
}

int cloud_revoked_measurements_import(struct cloud *cloud, struct cloud_ledger *ledger)
{
    char path[PATH_MAX], done[PATH_MAX + 16];
    uint8_t *buf = NULL;
    size_t len = 0, n = 0;
    int rc = enroll__fw_path(cloud, path, sizeof(path));
    if (!rc)
        rc = nu_path_fmt(done, sizeof(done), "%s.imported", path);
    if (!rc)
        rc = nu_file_read(path, ENROLL__LIST_MAX, &buf, &len);
    if (rc == NU_ERR_NOT_FOUND)
        return NU_OK; /* nothing to move (the usual case) */
    if (!rc)
        rc = enroll__fw_import_lines(ledger, buf, len, &n);
    /* Only once every line is in the ledger: else the next start retries. */
    if (!rc && rename(path, done) != 0)
        rc = NU_ERR_IO;
    free(buf);
    if (rc)
        nu_error("cannot move %s into the ledger: %s", path, nu_err_str(rc));
    else
        nu_info("%zu revoked programmer firmware measurements moved from %s into the ledger"
                " (the file is now %s)",
                n, path, done);
    return rc;
}

/* Whether the ledger lists hex as revoked; an unreadable ledger refuses
 * every measurement (fail closed). */
static int enroll__fw_revoked(struct cloud_call *call, const char *hex)
{
    char old[PATH_MAX];
    int revoked = 1;
    /* The old file not moved into the ledger yet: its list is unknown here. */
    if (enroll__fw_path(call->cloud, old, sizeof(old)) || nu_path_exists(old)) {
        nu_error("enroll: %s is not in the ledger yet (see the start log): programmer firmware"
                 " refused",
                 old);
        return 1;
    }
    int rc = cloud_ledger_firmware_revoked(call->ledger, hex, &revoked);
    if (rc) {
        nu_error("enroll: revoked firmware list unreadable (%s): programmer firmware refused",
                 nu_err_str(rc));
        return 1;
    }
    return revoked;
}

/*
 * The OEM anchor pinned write-once in the KeyStore (attested by its hash)
 * must be this OEM's package key: a programmer anchored to another key would
 * take an enrollment answer signed by that key, one a CM could make. No
 * anchor is accepted only from the OEM's own relay (or a programmer renewing
 * itself, which checks answers against the key pinned at its enrollment):
 * through a station the answer crosses the CM's PC and broker, and only the
 * anchor makes it the OEM's. Genuine firmware refuses a station relay
 * without one (nusec-programmer --relay); the cloud does not rely on that.
 */
static int enroll__anchor_ok(struct cloud_call *call, const struct nu_attest_claims *att)
{
    uint8_t mine[NU_SHA256_LEN];
    const struct nu_signer *pkg = nu_hsm_key_signer(call->cloud->keys.package);
    if (!att->anchored && call->role == CLOUD_ROLE_STATION)
        return cloud_fail(call, NU_ERR_NOT_AUTHORIZED,
                          "enrollment relayed by station %s: the programmer's KeyStore holds no "
                          "OEM anchor (nusec-programmer --oem-anchor), so nothing would make the "
                          "relayed answer the OEM's",
                          call->requester);
    if (!att->anchored)
        return NU_OK;
    if (!pkg || nu_sha256(pkg->pub, NU_P256_PUB_LEN, mine) != NU_OK)
        return cloud_fail(call, NU_ERR_CRYPTO, "package key unavailable");
    if (nu_memeq_ct(mine, att->anchor_sha256, NU_SHA256_LEN) != 0)
        return cloud_fail(call, NU_ERR_KEY_NOT_ATTESTED,
                          "the OEM anchor pinned in the programmer's KeyStore is not this OEM's "
                          "package key");
    return NU_OK;
}

/*
 * The KeyStore's attestation: certified by the pinned vendor CA, signed,
 * about this programmer and the keys of this request, from allowed hardware
 * running approved firmware. The nonce is checked by the ledger (read-only
 * here, used up with the token when the enrollment is recorded).
 */
static int enroll__attested(struct cloud_call *call, const Nusec__V1__EnrollRequest *r,
                            struct enroll__req *e, uint64_t now)
{
    uint8_t *ca = NULL;
    size_t ca_len = 0;
    if (!r->attestation_statement.len || !r->attestation_signature.len ||
        !r->attestation_cert_der.len)
        return cloud_fail(call, NU_ERR_ATTESTATION_MISSING,
                          "no KeyStore attestation: keys not proven to live in a programmer");
    if (enroll__vendor_ca(call, &ca, &ca_len))
        return cloud_fail(call, NU_ERR_ATTESTATION_UNTRUSTED, "no programmer vendor CA pinned");
    int rc = nu_attest_verify(ca, ca_len, r->attestation_cert_der.data, r->attestation_cert_der.len,
                              r->attestation_statement.data, r->attestation_statement.len,
                              r->attestation_signature.data, r->attestation_signature.len, &e->att);
    free(ca);
    if (rc == NU_ERR_ATTESTATION_UNTRUSTED)
        return cloud_fail(call, rc, "attestation certificate not from the pinned vendor CA");
    if (rc == NU_ERR_ATTESTATION_SIGNATURE)
        return cloud_fail(call, rc, "attestation statement signature does not verify");
    if (rc)
        return cloud_fail(call, rc == NU_ERR_ATTESTATION_MISSING ? rc : NU_ERR_DECODE,
                          "attestation statement malformed");
    if (strcmp(e->att.programmer_id, r->programmer_id) != 0)
        return cloud_fail(call, NU_ERR_KEY_NOT_ATTESTED, "attestation is for another programmer");
    if (!e->att.keys_generated_in_keystore || !e->att.keys_non_exportable)
        return cloud_fail(call, NU_ERR_KEY_NOT_ATTESTED, "keys not attested as KeyStore-born");
    if (nu_memeq_ct(e->att.identity_pub, e->csr.pub, NU_P256_PUB_LEN) != 0)
        return cloud_fail(call, NU_ERR_KEY_NOT_ATTESTED,
                          "CSR key is not the attested identity key");
    if (nu_memeq_ct(e->att.package_pub, r->package_pubkey.data, NU_P256_PUB_LEN) != 0)
        return cloud_fail(call, NU_ERR_KEY_NOT_ATTESTED, "package key is not the attested one");
    if ((rc = enroll__anchor_ok(call, &e->att)) != NU_OK)
        return rc;
    if (!enroll__serial_allowed(call, e->att.vendor_serial))
        return cloud_fail(call, NU_ERR_SERIAL_NOT_ALLOWED, "programmer %s not on the allow-list",
                          e->att.vendor_serial);
    if (!enroll__measurement_ok(call, &r->boot_manifest, e->att.measurement))
        return cloud_fail(call, NU_ERR_MEASUREMENT,
                          "measured programmer firmware is not one the OEM signed");
    rc = nu_hex_encode(e->att.measurement, NU_SHA256_LEN, e->measurement_hex,
                       sizeof(e->measurement_hex));
    if (!rc && enroll__fw_revoked(call, e->measurement_hex))
        return cloud_fail(call, NU_ERR_MEASUREMENT,
                          "programmer firmware %.16s... revoked by the OEM", e->measurement_hex);
    rc = cloud_ledger_nonce_check(call->ledger, e->att.nonce, r->programmer_id, now);
    if (rc == NU_ERR_NONCE_REPLAYED || rc == NU_ERR_NONCE_EXPIRED)
        return cloud_fail(call, rc,
                          rc == NU_ERR_NONCE_EXPIRED ? "challenge expired"
                                                     : "challenge unknown or used");
    if (rc)
        return cloud_fail(call, rc, "challenge not checked");
    return nu_hex_encode(e->att.measurement, NU_SHA256_LEN, e->measurement_hex,
                         sizeof(e->measurement_hex));
}

static int enroll__check(struct cloud_call *call, const Nusec__V1__EnrollRequest *r,
                         struct enroll__req *e)
{
    int rc = enroll__id_allowed(call, r->programmer_id);
    if (rc)
        return rc;
    /* A programmer may renew only itself; a station relays for anyone. */
    if (call->role == CLOUD_ROLE_PROGRAMMER && strcmp(r->programmer_id, call->requester) != 0)
        return cloud_fail(call, NU_ERR_NOT_AUTHORIZED, "a programmer enrolls only itself");
    if ((rc = enroll__token_decode(call, r->token, e->token, &e->token_len)))
        return rc;
    if (r->package_pubkey.len != NU_P256_PUB_LEN || nu_p256_pub_check(r->package_pubkey.data))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "package_pubkey is not a P-256 point");
    if (nu_x509_csr_parse_verify(r->csr_der.data, r->csr_der.len, &e->csr))
        return cloud_fail(call, NU_ERR_BAD_CSR, "CSR malformed or its signature is wrong");
    if (strcmp(e->csr.cn, r->programmer_id) != 0 || strcmp(e->csr.ou, NU_ROLE_PROGRAMMER) != 0)
        return cloud_fail(call, NU_ERR_BAD_CSR, "CSR subject must be CN=%s, OU=programmer",
                          r->programmer_id);
    return enroll__attested(call, r, e, nu_time_ms());
}

/* Identity certificate for the CSR's key, signed by the Fleet CA in the HSM. */
static int enroll__issue(struct cloud *cloud, const char *id, const struct nu_x509_csr_info *csr,
                         uint64_t now_ms, uint8_t **out_der, size_t *out_len)
{
    struct nu_x509_cert_info ca;
    int rc = nu_x509_cert_info(cloud->keys.fleet_der, cloud->keys.fleet_len, &ca);
    if (rc)
        return rc;
    int64_t now = (int64_t)(now_ms / 1000);
    struct nu_x509_issue_req req = {
        .cn = id,
        .ou = NU_ROLE_PROGRAMMER,
        .o = ca.o[0] ? ca.o : NU_PKI_ORGANIZATION, /* the OEM's (`pki init --org`) */
        .not_before = now - ENROLL__BACKDATE_S,
        .not_after = now + ENROLL__CERT_LIFE_S,
        .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        .ext_key_usage = NU_X509_EKU_CLIENT_AUTH,
    };
    if (req.not_after > ca.not_after)
        req.not_after = ca.not_after;
    memcpy(req.pub, csr->pub, sizeof(req.pub));
    return nu_x509_issue(&req, nu_hsm_key_signer(cloud->keys.fleet_ca), cloud->keys.fleet_der,
                         cloud->keys.fleet_len, out_der, out_len);
}

static int enroll__answer(struct cloud_call *call, const char *id, const uint8_t *der,
                          size_t der_len)
{
    const struct cloud_keys *k = &call->cloud->keys;
    Nusec__V1__EnrollResponse resp = NUSEC__V1__ENROLL_RESPONSE__INIT;
    ProtobufCBinaryData chain[2] = {
        {k->fleet_len, k->fleet_der},
        {k->root_len, k->root_der},
    };
    resp.programmer_id = (char *)id;
    resp.certificate_der.data = (uint8_t *)der;
    resp.certificate_der.len = der_len;
    resp.n_chain_der = 2;
    resp.chain_der = chain;
    resp.package_signing_pubkey.data = (uint8_t *)nu_hsm_key_signer(k->package)->pub;
    resp.package_signing_pubkey.len = NU_P256_PUB_LEN;
    resp.rotpk.data = (uint8_t *)nu_hsm_key_signer(k->secure_boot)->pub;
    resp.rotpk.len = NU_P256_PUB_LEN;
    return cloud_reply(call, &resp.base);
}

static void enroll__event(struct cloud *cloud, const char *kind, const char *id, const char *why)
{
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = (char *)kind;
    ev.detail = (char *)(why ? why : id);
    if (cloud_publish_event(cloud, &ev))
        nu_warn("event %s for %s not published", kind, id);
}

static int enroll__enroll(struct cloud_call *call)
{
    const Nusec__V1__EnrollRequest *r = call->req->enroll_request;
    struct enroll__req e;
    struct nu_x509_cert_info info;
    uint8_t *der = NULL;
    size_t der_len = 0;
    char *pem = NULL;
    size_t pem_len = 0;
    uint64_t now = nu_time_ms();
    int rc = enroll__check(call, r, &e);
    if (rc)
        goto out;
    /* Checked before signing so a wrong token costs no HSM work; the ledger
     * checks again, atomically with recording the programmer. */
    rc = cloud_ledger_token_check(call->ledger, e.token, e.token_len, r->programmer_id, now);
    if (rc) {
        rc = cloud_fail(call, rc,
                        rc == NU_ERR_REVOKED ? "programmer is revoked"
                                             : "token unknown, used, expired or "
                                               "bound to another programmer");
        goto out;
    }
    rc = enroll__issue(call->cloud, r->programmer_id, &e.csr, now, &der, &der_len);
    if (!rc)
        rc = nu_x509_der_to_pem(der, der_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_cert_info(der, der_len, &info);
    if (rc) {
        rc = cloud_fail(call, rc, "cannot issue the identity certificate");
        goto out;
    }
    struct cloud_ledger_enrollment en = {
        .programmer_id = r->programmer_id,
        .cert_serial = info.serial_hex,
        .cert_pem = pem,
        .package_pubkey = r->package_pubkey.data,
        .actor = call->requester,
        .now_ms = now,
        .vendor_serial = e.att.vendor_serial,
        .firmware_measurement = e.measurement_hex,
        .nonce = e.att.nonce,
    };
    rc = cloud_ledger_enroll(call->ledger, e.token, e.token_len, &en);
    if (rc) {
        rc = enroll__ledger_refusal(call, rc, "enrollment not recorded");
        goto out;
    }
    nu_info("programmer %s enrolled through %s (serial %s, vendor serial %s)", r->programmer_id,
            call->requester, info.serial_hex, e.att.vendor_serial);
    if (call->role == CLOUD_ROLE_STATION)
        enroll__set_owner(call->cloud, call->requester, r->programmer_id);
    /* Before the answer: the new certificate is the only one the broker
     * accepts for this identity from now on, and the old one is kicked. */
    if (cloud_serials_sync(call->cloud, call->ledger))
        nu_warn("%s enrolled, but the broker's serial list is stale: its previous certificate "
                "may connect until the next enrollment or restart",
                r->programmer_id);
    rc = enroll__answer(call, r->programmer_id, der, der_len);
    enroll__event(call->cloud, "programmer.enrolled", r->programmer_id, NULL);
out:
    nu_zero(&e, sizeof(e));
    free(pem);
    free(der);
    return rc;
}

/* ------------------------------------------------------------ enroll.challenge */

/* Step 1 of an attested enrollment: only a valid token gets a nonce, so the
 * ledger's challenge table grows only with the OEM's tokens. */
static int enroll__challenge(struct cloud_call *call)
{
    const Nusec__V1__EnrollChallengeRequest *r = call->req->enroll_challenge_request;
    uint8_t token[CLOUD_LEDGER_TOKEN_MAX], nonce[NU_ATTEST_NONCE_LEN];
    size_t token_len = 0;
    uint64_t now = nu_time_ms(), ttl_ms = (uint64_t)call->cloud->cfg.challenge_ttl_s * 1000u;
    int rc = enroll__id_allowed(call, r->programmer_id);
    if (!rc && call->role == CLOUD_ROLE_PROGRAMMER && strcmp(r->programmer_id, call->requester))
        rc = cloud_fail(call, NU_ERR_NOT_AUTHORIZED, "a programmer enrolls only itself");
    if (!rc)
        rc = enroll__token_decode(call, r->token, token, &token_len);
    if (!rc && (rc = cloud_ledger_token_check(call->ledger, token, token_len, r->programmer_id,
                                              now)) != NU_OK)
        rc = cloud_fail(call, rc,
                        rc == NU_ERR_REVOKED ? "programmer is revoked"
                                             : "token unknown, used, expired or bound to another "
                                               "programmer");
    if (!rc && (rc = nu_random(nonce, sizeof(nonce))) == NU_OK)
        rc = cloud_ledger_nonce_add(call->ledger, nonce, r->programmer_id, now + ttl_ms, now);
    if (!rc) {
        Nusec__V1__EnrollChallenge resp = NUSEC__V1__ENROLL_CHALLENGE__INIT;
        resp.programmer_id = r->programmer_id;
        resp.nonce = (ProtobufCBinaryData){sizeof(nonce), nonce};
        resp.expires_at_ms = now + ttl_ms;
        rc = cloud_reply(call, &resp.base);
    }
    nu_zero(token, sizeof(token));
    return rc;
}

/* ------------------------------------------------------------ list, revoke */

struct enroll__list {
    Nusec__V1__ProgrammerInfo *items;
    Nusec__V1__ProgrammerInfo **ptrs;
    char (*strings)[4][2 * CLOUD_LEDGER_HASH_LEN + 1];
    size_t n, cap;
};

static int enroll__list_visit(void *ctx, const struct cloud_ledger_programmer *p)
{
    struct enroll__list *l = ctx;
    if (l->n == l->cap)
        return NU_ERR_LIMIT;
    Nusec__V1__ProgrammerInfo *it = &l->items[l->n];
    nusec__v1__programmer_info__init(it);
    snprintf(l->strings[l->n][0], sizeof(l->strings[0][0]), "%s", p->programmer_id);
    snprintf(l->strings[l->n][1], sizeof(l->strings[0][1]), "%s", p->cert_serial);
    it->programmer_id = l->strings[l->n][0];
    it->certificate_serial = l->strings[l->n][1];
    snprintf(l->strings[l->n][2], sizeof(l->strings[0][2]), "%s", p->vendor_serial);
    snprintf(l->strings[l->n][3], sizeof(l->strings[0][3]), "%s", p->firmware_measurement);
    it->vendor_serial = l->strings[l->n][2];
    it->firmware_measurement = l->strings[l->n][3];
    it->state = p->state == CLOUD_LEDGER_PROGRAMMER_ENROLLED ? "enrolled" : "revoked";
    it->enrolled_at_ms = p->enrolled_at_ms;
    l->ptrs[l->n] = it;
    l->n++;
    return NU_OK;
}

static int enroll__programmer_list(struct cloud_call *call)
{
    struct enroll__list l = {.cap = NU_ENVELOPE_LIST_MAX};
    l.items = calloc(l.cap, sizeof(*l.items));
    l.ptrs = calloc(l.cap, sizeof(*l.ptrs));
    l.strings = calloc(l.cap, sizeof(*l.strings));
    int rc = (l.items && l.ptrs && l.strings) ? NU_OK : NU_ERR_NOMEM;
    if (!rc)
        rc = cloud_ledger_programmer_list(call->ledger, enroll__list_visit, &l);
    if (rc == NU_ERR_LIMIT) {
        /* The answer has no room for more; the oldest ids come first. */
        nu_warn("programmer.list: more than %zu programmers, answer truncated", l.cap);
        rc = NU_OK;
    }
    if (!rc) {
        Nusec__V1__ProgrammerList resp = NUSEC__V1__PROGRAMMER_LIST__INIT;
        resp.n_programmers = l.n;
        resp.programmers = l.ptrs;
        rc = cloud_reply(call, &resp.base);
    }
    free(l.strings);
    free(l.ptrs);
    free(l.items);
    return rc;
}

static int enroll__programmer_revoke(struct cloud_call *call)
{
    const Nusec__V1__ProgrammerRevokeRequest *r = call->req->programmer_revoke_request;
    const char *reason = r->reason && r->reason[0] ? r->reason : "unspecified";
    if (nu_envelope_id_check(r->programmer_id))
        return cloud_fail(call, NU_ERR_INVALID_ARG, "programmer id is not an identity");
    int rc = cloud_ledger_programmer_revoke(call->ledger, r->programmer_id, reason, call->requester,
                                            nu_time_ms());
    if (rc && rc != NU_ERR_STATE)
        return cloud_fail(
            call, rc, rc == NU_ERR_NOT_FOUND ? "no such programmer" : "revocation not recorded");
    /* Also on STATE (already revoked): a retry repairs a list write that failed. */
    int sync = cloud_revoked_sync(call->cloud, call->ledger);
    if (rc)
        return cloud_fail(call, rc, "programmer %s is already revoked", r->programmer_id);
    nu_info("programmer %s revoked by %s", r->programmer_id, call->requester);
    enroll__event(call->cloud, "programmer.revoked", r->programmer_id, NULL);
    if (sync)
        return cloud_fail(call, sync,
                          "revoked in the ledger, but the broker's list was not written; retry");
    Nusec__V1__Ack ack = NUSEC__V1__ACK__INIT;
    ack.detail = "revoked";
    return cloud_reply(call, &ack.base);
}


/*
 * The OEM withdraws a programmer firmware. One ledger transaction lists it
 * (audited), and revokes every programmer enrolled with it; an enrollment
 * with it that is on its way is refused when it reaches the ledger
 * (cloud_ledger_firmware_revoke). Then the broker's list disconnects the
 * revoked. A retry finishes what a failure left (all of it is idempotent).
 */
static int enroll__firmware_revoke(struct cloud_call *call)
{
    const Nusec__V1__ProgrammerFirmwareRevokeRequest *r =
        call->req->programmer_firmware_revoke_request;
    const char *reason = r->reason && r->reason[0] ? r->reason : "unspecified";
    uint8_t m[NU_SHA256_LEN];
    size_t m_len = 0;
    char hex[2 * NU_SHA256_LEN + 1], detail[96];
    struct enroll__ids ids = {0};
    int fresh = 0;
    if (!r->measurement || strlen(r->measurement) != 2 * NU_SHA256_LEN ||
        nu_hex_decode(r->measurement, m, sizeof(m), &m_len) || m_len != NU_SHA256_LEN)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "measurement is not a hex SHA-256");
    if (strlen(reason) > 200)
        return cloud_fail(call, NU_ERR_INVALID_ARG, "reason: up to 200 bytes");
    int rc = nu_hex_encode(m, sizeof(m), hex, sizeof(hex)); /* lower case, as recorded */
    if (!rc)
        rc = cloud_ledger_firmware_revoke(call->ledger, hex, reason, call->requester, nu_time_ms(),
                                          enroll__collect_id, &ids, &fresh);
    if (rc) {
        free(ids.ids);
        return cloud_fail(call, rc, "revocation not recorded; nothing changed");
    }
    for (size_t i = 0; i < ids.n; i++)
        enroll__event(call->cloud, "programmer.revoked", ids.ids[i], NULL);
    size_t revoked = ids.n;
    free(ids.ids);
    int sync = cloud_revoked_sync(call->cloud, call->ledger);
    if (sync)
        return cloud_fail(call, sync,
                          "firmware revoked and %zu programmers revoked in the ledger, but the "
                          "broker's list was not written; retry",
                          revoked);
    nu_info("programmer firmware %s revoked by %s%s: %zu programmers revoked", hex, call->requester,
            fresh ? "" : " (again)", revoked);
    snprintf(detail, sizeof(detail), "firmware revoked, %zu programmers revoked", revoked);
    Nusec__V1__Ack ack = NUSEC__V1__ACK__INIT;
    ack.detail = detail;
    return cloud_reply(call, &ack.base);
}

const struct cloud_op cloud_enroll_ops[] = {
    {"enroll.token", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_ENROLL_TOKEN_REQUEST, enroll__token},
    /* The OEM relays by default (before the programmer ships); a station
     * relays at the CM; a programmer may renew itself. All are attested. */
    {"enroll.challenge", CLOUD_ROLE_OEM | CLOUD_ROLE_STATION | CLOUD_ROLE_PROGRAMMER,
     NUSEC__V1__ENVELOPE__BODY_ENROLL_CHALLENGE_REQUEST, enroll__challenge},
    {"enroll", CLOUD_ROLE_OEM | CLOUD_ROLE_STATION | CLOUD_ROLE_PROGRAMMER,
     NUSEC__V1__ENVELOPE__BODY_ENROLL_REQUEST, enroll__enroll},
    {"programmer.list", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_LIST_REQUEST,
     enroll__programmer_list},
    {"programmer.revoke", CLOUD_ROLE_OEM, NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_REVOKE_REQUEST,
     enroll__programmer_revoke},
    {"programmer.firmware_revoke", CLOUD_ROLE_OEM,
     NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_FIRMWARE_REVOKE_REQUEST, enroll__firmware_revoke},
    {NULL, 0, 0, NULL},
};
