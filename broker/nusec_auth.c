/*
 * nusec_auth — Mosquitto 2.0 plugin (API v5): mTLS identity, revocation and
 * the NuSEC topic ACL. Policy lives in acl.c; this file is the glue to the
 * broker: certificate reading (OpenSSL, because mosquitto_client_certificate()
 * returns an OpenSSL X509 *), events, logging; the list files are read in
 * auth_files.c. It links neither wolfSSL nor libnusec.
 *
 * Facts about Mosquitto 2.0.11 this relies on (checked on the broker, see
 * broker/README.md): with `use_identity_as_username true` the broker never
 * calls MOSQ_EVT_BASIC_AUTH, so the listener runs with it false and this
 * plugin sets the username to the CN itself; the ACL event carries no MQTT 5
 * properties (MOSQ_EVT_MESSAGE does); SUBSCRIBE checks see "$share/g/filter"
 * verbatim while READ checks see the delivered topic; MOSQ_EVT_TICK runs
 * about ten times a second; MOSQ_EVT_RELOAD (SIGHUP) does not re-init plugins.
 *
 * Options: plugin_opt_revoked_file (required), plugin_opt_owners_file,
 * plugin_opt_issuer_file, plugin_opt_identities_file, plugin_opt_site_name
 * (all optional), and the publish limits of ratelimit.h (rate_limit,
 * payload_max, firmware_payload_max, refusal_log_s, rate_<role>).
 *
 * The plugin is three files around the one struct nusec_auth (auth_int.h):
 * this one (entry points, events, certificates, who is asking),
 * auth_files.c (the list, serial and identities files on disk) and
 * auth_lists.c (the lists across a bridge and from the cloud agents); the
 * policy that can stand alone lives in acl.c (topics, list formats) and
 * pins.c (serial pins). Mosquitto loads them as one plugin object.
 */
#include "auth_int.h"

#ifdef __GLIBC__
#include <malloc.h>
#endif

#define NUSEC_EXPORT __attribute__((visibility("default")))

/* Kicks and polling from MOSQ_EVT_TICK at most this often. */
#define AUTH__TICK_MS 200

_Static_assert(NUSEC_ACCESS_READ == MOSQ_ACL_READ, "access values");
_Static_assert(NUSEC_ACCESS_WRITE == MOSQ_ACL_WRITE, "access values");
_Static_assert(NUSEC_ACCESS_SUBSCRIBE == MOSQ_ACL_SUBSCRIBE, "access values");

/* The plugin's state: the one static the conventions allow, passed as userdata. */
static struct nusec_auth auth__state;

/* Text for an NU_ERR_* code, from the shared table (header only, no libnusec link). */
const char *auth_err_name(int code)
{
    switch (code) {
#define AUTH__ERR_CASE(name, value, text)                                                          \
    case value:                                                                                    \
        return text;
        NU_ERR_MAP(AUTH__ERR_CASE)
#undef AUTH__ERR_CASE
    default:
        return "unknown error";
    }
}

long auth_ms_since(const struct timespec *then, const struct timespec *now)
{
    return (long)(now->tv_sec - then->tv_sec) * 1000L + (now->tv_nsec - then->tv_nsec) / 1000000L;
}

/* ---- certificates ---------------------------------------------------------- */

static void auth__issuers_free(STACK_OF(X509) * issuers)
{
    if (issuers)
        sk_X509_pop_free(issuers, X509_free);
}

/* Load every certificate of a PEM file. Errors: IO, DECODE (none found), NOMEM. */
static int auth__issuers_load(const char *path, STACK_OF(X509) * *out_issuers)
{
    STACK_OF(X509) *issuers = NULL;
    X509 *cert = NULL;
    int rc = NU_ERR_IO;
    FILE *fp = fopen(path, "re");
    if (!fp)
        goto out;
    rc = NU_ERR_NOMEM;
    issuers = sk_X509_new_null();
    if (!issuers)
        goto out;
    while ((cert = PEM_read_X509(fp, NULL, NULL, NULL)) != NULL) {
        if (!sk_X509_push(issuers, cert))
            goto out;
        cert = NULL;
    }
    ERR_clear_error(); /* the read loop ends on a "no start line" error */
    rc = NU_ERR_DECODE;
    if (sk_X509_num(issuers) == 0)
        goto out;
    *out_issuers = issuers;
    issuers = NULL;
    rc = NU_OK;
out:
    X509_free(cert);
    auth__issuers_free(issuers);
    if (fp)
        fclose(fp);
    return rc;
}

/* Pinning: the client certificate must be issued and signed by one of the issuers. */
static bool auth__issuer_ok(const struct nusec_auth *st, X509 *cert)
{
    if (!st->issuers)
        return true;
    for (int i = 0; i < sk_X509_num(st->issuers); i++) {
        X509 *ca = sk_X509_value(st->issuers, i);
        EVP_PKEY *key = X509_get0_pubkey(ca);
        if (X509_check_issued(ca, cert) == X509_V_OK && key && X509_verify(cert, key) == 1)
            return true;
    }
    ERR_clear_error();
    return false;
}

/*
 * CN and OU of the subject: exactly one of each, CN a valid identity, OU a
 * known role. On failure *out_why says which rule (static text).
 */
static bool auth__cert_ident(X509 *cert, struct auth__ident *out, const char **out_why)
{
    X509_NAME *name = X509_get_subject_name(cert);
    int cns = 0, ous = 0;
    memset(out, 0, sizeof(*out));
    *out_why = "certificate has no subject";
    if (!name)
        return false;
    for (int i = 0; i < X509_NAME_entry_count(name); i++) {
        X509_NAME_ENTRY *e = X509_NAME_get_entry(name, i);
        int nid = OBJ_obj2nid(X509_NAME_ENTRY_get_object(e));
        ASN1_STRING *d = X509_NAME_ENTRY_get_data(e);
        const char *p = (const char *)ASN1_STRING_get0_data(d);
        int len = ASN1_STRING_length(d);
        if (nid == NID_commonName) {
            if (++cns == 1 && len > 0 && nusec_acl_identity_valid(p, (size_t)len))
                memcpy(out->id, p, (size_t)len);
        } else if (nid == NID_organizationalUnitName) {
            if (++ous == 1 && len > 0)
                out->role = nusec_acl_role_parse(p, (size_t)len);
        }
    }
    if (cns != 1) {
        *out_why = cns ? "certificate has several CNs" : "certificate has no CN";
        return false;
    }
    if (!out->id[0]) {
        *out_why = "certificate CN is not [A-Za-z0-9._-]{1,64}";
        return false;
    }
    if (ous != 1) {
        *out_why = ous ? "certificate has several OUs" : "certificate has no OU (role)";
        return false;
    }
    if (out->role == NUSEC_ROLE_NONE) {
        *out_why = "certificate OU is not a NuSEC role";
        return false;
    }
    return true;
}

/* ---- who is asking ---------------------------------------------------------- */

/*
 * Identity and role of a client for an ACL or message decision. A connected
 * client must have been accepted at CONNECT by this plugin in this broker run
 * (so a listener misconfigured with use_identity_as_username, which bypasses
 * BASIC_AUTH, authorizes nothing), and its role is read from its
 * certificate. An offline one (queued QoS 1 delivery to a persistent
 * session, retained-source checks) uses the role of its last accepted
 * connect, in this run or, through the identities file, an earlier one.
 */
bool auth_subject(const struct nusec_auth *st, struct mosquitto *client, struct auth__ident *out)
{
    const char *user = mosquitto_client_username(client);
    int role = NUSEC_ROLE_NONE;
    if (!user || !nusec_acl_set_get(st->roles, user, &role))
        return false;
    snprintf(out->id, sizeof(out->id), "%s", user);
    out->role = (enum nusec_role)role;
    X509 *cert = mosquitto_client_certificate(client);
    if (!cert)
        return true;
    if (!nusec_acl_set_get(st->live, user, NULL)) {
        X509_free(cert);
        return false;
    }
    struct auth__ident now;
    const char *why;
    bool ok = auth__cert_ident(cert, &now, &why) && strcmp(now.id, user) == 0;
    X509_free(cert);
    out->role = now.role;
    return ok;
}

static bool auth__revoked(const struct nusec_auth *st, const char *id)
{
    return st->revoked.state == AUTH__BAD || nusec_acl_set_get(st->revoked.set, id, NULL);
}

/* ---- events ------------------------------------------------------------------ */

static void auth__refresh_all(struct nusec_auth *st, bool force)
{
    auth_files_refresh(st, &st->revoked, force);
    auth_files_refresh(st, &st->owners, force);
    auth_files_pins_refresh(st, force);
}

/* Disconnect clients of newly revoked identities. Only from TICK/RELOAD: never
 * inside a client's own packet handling, where freeing it would be unsafe.
 * One line per identity that connected in this run; the others (a whole
 * revocation list adopted at once, 10,000 lines) are counted in one. */
/* Re-enrolled identities join the kicks once their grace is over: a
 * renewal's answer, published just after the cloud wrote the new pin, must
 * still reach the session that asked (a slow signature must not lose it). */
static void auth__pin_kicks_due(struct nusec_auth *st, const struct timespec *now)
{
    if (!st->pin_kick || auth_ms_since(&st->pin_kick_at, now) < AUTH_RENEW_GRACE_MS)
        return;
    for (size_t i = 0; i < nusec_acl_set_count(st->pin_kick); i++) {
        if ((!st->kick && nusec_acl_set_new(&st->kick) != NU_OK) ||
            nusec_acl_set_put(st->kick, nusec_acl_set_key(st->pin_kick, i), 1) != NU_OK) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: out of memory queueing kicks");
            return; /* tried again at the next tick */
        }
    }
    nusec_acl_set_free(st->pin_kick);
    st->pin_kick = NULL;
}

static void auth__do_kicks(struct nusec_auth *st)
{
    size_t unseen = 0;
    for (size_t i = 0; i < nusec_acl_set_count(st->kick); i++) {
        const char *id = nusec_acl_set_key(st->kick, i);
        if (nusec_acl_set_get(st->live, id, NULL))
            mosquitto_log_printf(MOSQ_LOG_NOTICE,
                                 "nusec_auth: identity %s revoked: disconnecting it", id);
        else
            unseen++;
        mosquitto_kick_client_by_username(id, false);
    }
    if (unseen)
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "nusec_auth: %zu more identit%s revoked, not connected in this run",
                             unseen, unseen == 1 ? "y" : "ies");
    nusec_acl_set_free(st->kick);
    st->kick = NULL;
}

/* What a refusal line names of the certificate: its first CN and OU as
 * written (any bytes a client put there, made log-safe) and its serial.
 * A certificate is public: nothing secret goes to the log. */
struct auth__certlog {
    char cn[80];
    char ou[80];
    char serial[80];
};

static void auth__certlog_entry(X509_NAME *name, int nid, char *out, size_t cap)
{
    int i = name ? X509_NAME_get_index_by_NID(name, nid, -1) : -1;
    ASN1_STRING *d = i >= 0 ? X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, i)) : NULL;
    char raw[64];
    int len = d ? ASN1_STRING_length(d) : 0;
    if (len > (int)sizeof(raw) - 1)
        len = (int)sizeof(raw) - 1;
    if (len > 0)
        memcpy(raw, ASN1_STRING_get0_data(d), (size_t)len);
    raw[len > 0 ? len : 0] = '\0';
    nusec_acl_log_safe(d ? raw : "-", out, cap);
}

static void auth__certlog_of(X509 *cert, struct auth__certlog *out)
{
    X509_NAME *name = cert ? X509_get_subject_name(cert) : NULL;
    auth__certlog_entry(name, NID_commonName, out->cn, sizeof(out->cn));
    auth__certlog_entry(name, NID_organizationalUnitName, out->ou, sizeof(out->ou));
    BIGNUM *bn = cert ? ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), NULL) : NULL;
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    snprintf(out->serial, sizeof(out->serial), "%s", hex ? hex : "-");
    OPENSSL_free(hex);
    BN_free(bn);
}

/* One line per refused CONNECT: the reason first, then who asked. */
static int auth__refuse(struct mosquitto *client, const char *cid, const struct auth__certlog *c,
                        const char *why)
{
    char safe_cid[128];
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "nusec_auth: refused connection from %s: %s; client id '%s', "
                         "certificate CN '%s' OU '%s' serial %s",
                         mosquitto_client_address(client), why,
                         nusec_acl_log_safe(cid, safe_cid, sizeof(safe_cid)), c->cn, c->ou,
                         c->serial);
    return MOSQ_ERR_AUTH;
}

static int auth__on_basic_auth(int event, void *event_data, void *userdata)
{
    struct nusec_auth *st = userdata;
    struct mosquitto_evt_basic_auth *ed = event_data;
    const char *cid = mosquitto_client_id(ed->client);
    struct auth__ident who;
    const char *why = NULL;

    struct auth__certlog log;

    auth__refresh_all(st, false);
    X509 *cert = mosquitto_client_certificate(ed->client);
    auth__certlog_of(cert, &log);
    if (!cert)
        return auth__refuse(ed->client, cid, &log, "no client certificate");
    bool ok = auth__cert_ident(cert, &who, &why);
    if (ok && !auth__issuer_ok(st, cert)) {
        ok = false;
        why = "certificate not issued by the configured issuer";
    }
    if (ok && (why = auth_files_pins_why(st, cert, &who)) != NULL)
        ok = false;
    X509_free(cert);
    if (!ok)
        return auth__refuse(ed->client, cid, &log, why);
    if (st->revoked.state == AUTH__BAD)
        return auth__refuse(ed->client, cid, &log, "revocation list unusable (fail closed)");
    if (auth__revoked(st, who.id))
        return auth__refuse(ed->client, cid, &log, "identity revoked");
    /* Without -i, mosquitto_sub/pub send no client id and the broker makes
     * one up (auto-...): say what to pass. */
    if (!nusec_acl_client_id_ok(who.id, cid))
        return auth__refuse(ed->client, cid, &log,
                            "client id is not the certificate's CN or CN:suffix (none given? "
                            "mosquitto_sub/pub need -i CN:NAME)");
    if (ed->username && strcmp(ed->username, who.id) != 0)
        return auth__refuse(ed->client, cid, &log, "username differs from certificate CN");
    if (auth_files_identity_remember(st, who.id, who.role) != NU_OK ||
        mosquitto_set_username(ed->client, who.id) != MOSQ_ERR_SUCCESS)
        return auth__refuse(ed->client, cid, &log, "out of memory");
    mosquitto_log_printf(MOSQ_LOG_INFO, "nusec_auth: %s (%s) authenticated", who.id,
                         nusec_acl_role_name(who.role));
    return MOSQ_ERR_SUCCESS;
}

static const char *auth__access_name(int access)
{
    switch (access) {
    case MOSQ_ACL_READ:
        return "read";
    case MOSQ_ACL_WRITE:
        return "write";
    case MOSQ_ACL_SUBSCRIBE:
        return "subscribe";
    default:
        return "unknown";
    }
}

static int auth__deny(struct mosquitto *client, const struct auth__ident *who, int access,
                      const char *topic, const char *why)
{
    char safe_topic[256], safe_user[80];
    mosquitto_log_printf(
        MOSQ_LOG_NOTICE, "nusec_auth: denied %s '%s' for %s (%s): %s", auth__access_name(access),
        nusec_acl_log_safe(topic, safe_topic, sizeof(safe_topic)),
        who ? who->id
            : nusec_acl_log_safe(mosquitto_client_username(client), safe_user, sizeof(safe_user)),
        who ? nusec_acl_role_name(who->role) : "unknown", why);
    return MOSQ_ERR_ACL_DENIED;
}

/*
 * A re-enrolled programmer's (or re-signed site's) old certificate may publish or subscribe no more
 * once the cloud has written the new pin (every ACL check re-reads a changed
 * list), not only from the kick (AUTH_RENEW_GRACE_MS later). Deliveries
 * to it (READ) still pass until the kick: a programmer renewing over its
 * current connection gets its new certificate that way.
 */
static bool auth__stale_cert(const struct nusec_auth *st, struct mosquitto *client,
                             const struct auth__ident *who)
{
    const struct auth__pinfile *f = st->pins;
    if (!f || (who->role != NUSEC_ROLE_PROGRAMMER && who->role != NUSEC_ROLE_SITE &&
               who->role != NUSEC_ROLE_STATION))
        return false; /* the roles a list may pin (a station: to be refused) */
    if (!f->bad && !nusec_pins_has(f->pins, who->id))
        return false; /* the common case: no certificate to look at */
    X509 *cert = mosquitto_client_certificate(client);
    bool stale = cert && auth_files_pins_why(st, cert, who) != NULL;
    X509_free(cert);
    return stale;
}

/*
 * A site's bridge subscribes to every reply (one wide filter, see acl.c); the
 * replies of programmers it does not own are withheld from it at delivery.
 * That is routine with more than one site, so each is only counted, and the
 * tick logs one summary line per AUTH__WITHHELD_LOG_MS (auth__withheld_report).
 * Anything else a site is refused is logged in full by auth__deny.
 */
#define AUTH__WITHHELD_LOG_MS 60000u
static bool auth__withhold(struct nusec_auth *st, const struct auth__ident *who, int access,
                           const char *topic)
{
    static const char reply[] = "nusec/v1/reply/";
    if (who->role != NUSEC_ROLE_SITE || access != MOSQ_ACL_READ ||
        strncmp(topic, reply, sizeof(reply) - 1) != 0)
        return false;
    st->withheld++;
    return true;
}

static void auth__withheld_report(struct nusec_auth *st, const struct timespec *now)
{
    if (!st->withheld || auth_ms_since(&st->withheld_last, now) < AUTH__WITHHELD_LOG_MS)
        return;
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "nusec_auth: withheld %llu replies from site bridges (programmers "
                         "other sites own) since the last report",
                         st->withheld);
    st->withheld = 0;
    st->withheld_last = *now;
}

static int auth__on_acl_check(int event, void *event_data, void *userdata)
{
    struct nusec_auth *st = userdata;
    struct mosquitto_evt_acl_check *ed = event_data;
    struct auth__ident who;

    if (ed->access == MOSQ_ACL_UNSUBSCRIBE)
        return MOSQ_ERR_SUCCESS; /* leaving a subscription never leaks anything */
    auth__refresh_all(st, false);
    if (!auth_subject(st, ed->client, &who))
        return auth__deny(ed->client, NULL, ed->access, ed->topic,
                          "client not authenticated by nusec_auth");
    if (st->revoked.state == AUTH__BAD)
        return auth__deny(ed->client, &who, ed->access, ed->topic,
                          "revocation list unusable (fail closed)");
    if (auth__revoked(st, who.id))
        return auth__deny(ed->client, &who, ed->access, ed->topic, "identity revoked");
    if (ed->access != MOSQ_ACL_READ && auth__stale_cert(st, ed->client, &who))
        return auth__deny(ed->client, &who, ed->access, ed->topic,
                          "not the identity's current certificate (re-enrolled)");
    struct nusec_acl_subject subject = {who.id, who.role, st->owners.set};
    if (nusec_acl_check(&subject, ed->access, ed->topic, ed->retain))
        return MOSQ_ERR_SUCCESS;
    if (auth__withhold(st, &who, ed->access, ed->topic))
        return MOSQ_ERR_ACL_DENIED;
    return auth__deny(ed->client, &who, ed->access, ed->topic,
                      ed->retain && ed->access == MOSQ_ACL_WRITE ? "not allowed (retained)"
                                                                 : "not allowed");
}

/*
 * message_size_limit is one number for every client and Mosquitto has no
 * rate limit: the publish limits (ratelimit.h) refuse, per identity, a
 * payload over its role's and operation's limit and a flood over its
 * token buckets, before the broker stores and relays it. The first refusal
 * of an interval is logged in full, the rest as one summary from the tick.
 */
static int auth__limit(struct nusec_auth *st, struct mosquitto_evt_message *ed,
                       const struct auth__ident *who)
{
    struct timespec now;
    bool log = false;
    clock_gettime(CLOCK_MONOTONIC, &now);
    uint64_t ms = (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u;
    enum nusec_rl_verdict v =
        nusec_rl_admit(st->rl, who->id, who->role, ed->topic, ed->payloadlen, ms, &log);
    if (v == NUSEC_RL_PASS)
        return MOSQ_ERR_SUCCESS;
    if (log) {
        char why[160];
        snprintf(why, sizeof(why), "%s (%u bytes, limit %u); further refusals of %s counted for %u s",
                 nusec_rl_verdict_text(v), (unsigned)ed->payloadlen,
                 (unsigned)nusec_rl_payload_limit(&st->rl_cfg, who->role, ed->topic), who->id,
                 (unsigned)st->rl_cfg.log_interval_s);
        auth__deny(ed->client, who, MOSQ_ACL_WRITE, ed->topic, why);
    }
    return MOSQ_ERR_ACL_DENIED;
}

static void auth__limit_report(void *ctx, const struct nusec_rl_report *r)
{
    (void)ctx;
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "nusec_auth: refused %llu more publishes (%llu bytes) from %s (%s) in "
                         "%u s: %llu over the payload limit, %llu over the rate",
                         (unsigned long long)r->refused, (unsigned long long)r->bytes, r->id,
                         nusec_acl_role_name(r->role), (unsigned)r->seconds,
                         (unsigned long long)r->too_large, (unsigned long long)r->over_rate);
}

/* MQTT 5 properties reach plugins only here (the ACL event has none in 2.0). */
static int auth__on_message(int event, void *event_data, void *userdata)
{
    struct nusec_auth *st = userdata;
    struct mosquitto_evt_message *ed = event_data;
    struct auth__ident who;
    char *response_topic = NULL;
    int rc = MOSQ_ERR_SUCCESS;

    if (!ed->client)
        return MOSQ_ERR_SUCCESS; /* published by a plugin: the broker's own */
    if (auth_lists_adopting(st) &&
        strncmp(ed->topic, AUTH_TOPIC_CLOUD_LISTS, sizeof(AUTH_TOPIC_CLOUD_LISTS) - 1) == 0 &&
        auth_lists_adopt(st, ed->client, ed->topic, ed->payload, ed->payloadlen) != NU_OK)
        return MOSQ_ERR_ACL_DENIED; /* refused: not retained either, the old list stays */
    if (st->site_name && !auth_subject(st, ed->client, &who))
        auth_lists_take(st, ed->topic, ed->payload, ed->payloadlen); /* from the bridge */
    if (auth_subject(st, ed->client, &who) && auth__limit(st, ed, &who) != MOSQ_ERR_SUCCESS)
        return MOSQ_ERR_ACL_DENIED;
    if (!mosquitto_property_read_string(ed->properties, MQTT_PROP_RESPONSE_TOPIC, &response_topic,
                                        false))
        return MOSQ_ERR_SUCCESS;
    if (!auth_subject(st, ed->client, &who)) {
        rc = auth__deny(ed->client, NULL, MOSQ_ACL_WRITE, ed->topic, "client not authenticated");
        goto out;
    }
    struct nusec_acl_subject subject = {who.id, who.role, st->owners.set};
    if (!nusec_acl_response_topic_ok(&subject, response_topic)) {
        char safe[256];
        mosquitto_log_printf(
            MOSQ_LOG_NOTICE,
            "nusec_auth: denied response topic '%s' for %s (%s): not readable by it",
            nusec_acl_log_safe(response_topic, safe, sizeof(safe)), who.id,
            nusec_acl_role_name(who.role));
        rc = MOSQ_ERR_ACL_DENIED;
    }
out:
    mosquitto_free(response_topic);
    return rc;
}

static int auth__on_tick(int event, void *event_data, void *userdata)
{
    struct nusec_auth *st = userdata;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (auth_ms_since(&st->last_tick, &now) < AUTH__TICK_MS)
        return MOSQ_ERR_SUCCESS;
    st->last_tick = now;
    auth__refresh_all(st, false);
    auth__pin_kicks_due(st, &now);
    auth__do_kicks(st);
    auth_files_identities_retry(st, &now);
    auth__withheld_report(st, &now);
    nusec_rl_flush(st->rl, (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u,
                   auth__limit_report, st);
    if (st->lists_dirty && !st->site_name && st->publish_lists &&
        strcmp(st->publish_lists, "true") == 0)
        auth_lists_publish(st);
    return MOSQ_ERR_SUCCESS;
}

static void auth__issuers_reload(struct nusec_auth *st)
{
    STACK_OF(X509) *issuers = NULL;
    if (!st->issuer_path)
        return;
    int rc = auth__issuers_load(st->issuer_path, &issuers);
    if (rc != NU_OK) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: keeping previous issuers: %s: %s",
                             st->issuer_path, auth_err_name(rc));
        return;
    }
    auth__issuers_free(st->issuers);
    st->issuers = issuers;
}

static int auth__on_reload(int event, void *event_data, void *userdata)
{
    struct nusec_auth *st = userdata;
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: reloading lists");
    auth__issuers_reload(st);
    auth__refresh_all(st, true);
    auth__do_kicks(st);
    return MOSQ_ERR_SUCCESS;
}

/* ---- plugin entry points ---------------------------------------------------- */

static const struct {
    int event;
    MOSQ_FUNC_generic_callback cb;
} auth__events[] = {
    {MOSQ_EVT_BASIC_AUTH, auth__on_basic_auth}, {MOSQ_EVT_ACL_CHECK, auth__on_acl_check},
    {MOSQ_EVT_MESSAGE, auth__on_message},       {MOSQ_EVT_TICK, auth__on_tick},
    {MOSQ_EVT_RELOAD, auth__on_reload},
};
#define AUTH__N_EVENTS (sizeof(auth__events) / sizeof(auth__events[0]))

static void auth__unregister(mosquitto_plugin_id_t *pid)
{
    for (size_t i = 0; i < AUTH__N_EVENTS; i++)
        mosquitto_callback_unregister(pid, auth__events[i].event, auth__events[i].cb, NULL);
}

static void auth__state_free(struct nusec_auth *st)
{
    free(st->revoked.path);
    free(st->owners.path);
    free(st->issuer_path);
    free(st->ids_path);
    free(st->site_name);
    free(st->publish_lists);
    free(st->adopt_lists);
    nusec_acl_set_free(st->published);
    nusec_acl_set_free(st->live);
    nusec_acl_set_free(st->revoked.set);
    nusec_acl_set_free(st->owners.set);
    nusec_acl_set_free(st->roles);
    nusec_acl_set_free(st->kick);
    nusec_acl_set_free(st->pin_kick);
    auth_files_pins_free(st);
    auth__issuers_free(st->issuers);
    nusec_rl_free(st->rl);
    memset(st, 0, sizeof(*st));
}

static int auth__options(struct nusec_auth *st, const struct mosquitto_opt *opts, int count)
{
    for (int i = 0; i < count; i++) {
        char **dst = NULL;
        int lim = nusec_rl_config_option(&st->rl_cfg, opts[i].key, opts[i].value);
        if (lim == NU_OK)
            continue;
        if (lim != NU_ERR_NOT_FOUND) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: bad value for plugin_opt_%s",
                                 opts[i].key);
            return MOSQ_ERR_INVAL;
        }
        if (strcmp(opts[i].key, "revoked_file") == 0)
            dst = &st->revoked.path;
        else if (strcmp(opts[i].key, "owners_file") == 0)
            dst = &st->owners.path;
        else if (strcmp(opts[i].key, "issuer_file") == 0)
            dst = &st->issuer_path;
        else if (strcmp(opts[i].key, "identities_file") == 0)
            dst = &st->ids_path;
        else if (strcmp(opts[i].key, "site_name") == 0)
            dst = &st->site_name;
        else if (strcmp(opts[i].key, "publish_lists") == 0)
            dst = &st->publish_lists;
        else if (strcmp(opts[i].key, "adopt_lists") == 0)
            dst = &st->adopt_lists;
        if (!dst) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: unknown option plugin_opt_%s",
                                 opts[i].key);
            return MOSQ_ERR_INVAL;
        }
        free(*dst);
        *dst = opts[i].value && opts[i].value[0] ? strdup(opts[i].value) : NULL;
        if (!*dst) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: empty plugin_opt_%s", opts[i].key);
            return MOSQ_ERR_INVAL;
        }
    }
    if (!st->revoked.path) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: plugin_opt_revoked_file is required");
        return MOSQ_ERR_INVAL;
    }
    const char *why = NULL;
    int rl = nusec_rl_config_check(&st->rl_cfg, &why);
    if (rl == NU_OK)
        rl = nusec_rl_new(&st->rl_cfg, &st->rl);
    if (rl != NU_OK) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: publish limits: %s",
                             why ? why : auth_err_name(rl));
        return MOSQ_ERR_INVAL;
    }
    if (st->site_name && !nusec_acl_identity_valid(st->site_name, strlen(st->site_name))) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: plugin_opt_site_name is not an identity");
        return MOSQ_ERR_INVAL;
    }
    if (st->adopt_lists && strcmp(st->adopt_lists, "true") != 0 &&
        strcmp(st->adopt_lists, "false") != 0) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: plugin_opt_adopt_lists is true or false");
        return MOSQ_ERR_INVAL;
    }
    if (!st->owners.path)
        mosquitto_log_printf(
            MOSQ_LOG_WARNING,
            "nusec_auth: no plugin_opt_owners_file: no station owns any programmer");
    if (!st->ids_path)
        mosquitto_log_printf(MOSQ_LOG_WARNING,
                             "nusec_auth: no plugin_opt_identities_file: after a restart, offline "
                             "sessions get nothing until their identity reconnects");
    return MOSQ_ERR_SUCCESS;
}

NUSEC_EXPORT int mosquitto_plugin_version(int supported_version_count,
                                          const int *supported_versions)
{
    for (int i = 0; i < supported_version_count; i++) {
        if (supported_versions[i] == 5)
            return 5;
    }
    return -1;
}

/*
 * Every packet is one malloc in the broker, up to firmware_payload_max
 * (4 MiB). glibc serves one that large with mmap, or trims it off the heap
 * when freed, so the next one faults all its pages in again: under a flood
 * of maximum-size packets that was most of the broker's time (this is a
 * VM, where a page fault is dear), and while Mosquitto reads one packet it
 * serves no other client. Measured (cloud_bench_flood, 8 threads of 4 MiB
 * to firmware.sign from one OEM identity, this plugin before and after in
 * the same run): the broker's CPU 73% -> 17% of a core, a programmer's
 * cert.request p99 195-220 -> 64 ms. Such buffers now stay
 * in the heap for the next packet; the broker keeps what a flood took, up
 * to the trim threshold. Process-wide, and the broker process is ours.
 */
static void auth__malloc_tune(const struct nusec_rl_config *cfg)
{
#ifdef __GLIBC__
    const size_t mmap_max = 32u << 20; /* glibc's ceiling for M_MMAP_THRESHOLD */
    size_t big = (size_t)cfg->firmware_payload_max + (64u << 10); /* + header and topic */
    if (big > mmap_max)
        big = mmap_max;
    if (!mallopt(M_MMAP_THRESHOLD, (int)big) || !mallopt(M_TRIM_THRESHOLD, (int)(4 * big)))
        mosquitto_log_printf(MOSQ_LOG_WARNING, "nusec_auth: malloc thresholds not set");
#else
    (void)cfg;
#endif
}

NUSEC_EXPORT int mosquitto_plugin_init(mosquitto_plugin_id_t *identifier, void **userdata,
                                       struct mosquitto_opt *options, int option_count)
{
    struct nusec_auth *st = &auth__state;
    int rc;

    auth__state_free(st);
    st->pid = identifier;
    st->revoked.option = "plugin_opt_revoked_file";
    st->owners.option = "plugin_opt_owners_file";
    nusec_rl_config_default(&st->rl_cfg);
    rc = auth__options(st, options, option_count);
    if (rc == MOSQ_ERR_SUCCESS) {
        auth__malloc_tune(&st->rl_cfg);
        rc = auth_files_pins_init(st);
    }
    if (rc != MOSQ_ERR_SUCCESS)
        goto out;
    rc = MOSQ_ERR_NOMEM;
    if (nusec_acl_set_new(&st->roles) != NU_OK || nusec_acl_set_new(&st->live) != NU_OK)
        goto out;
    auth_files_identities_load(st);
    if (st->issuer_path) {
        int err = auth__issuers_load(st->issuer_path, &st->issuers);
        rc = MOSQ_ERR_INVAL;
        if (err != NU_OK) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: plugin_opt_issuer_file %s: %s",
                                 st->issuer_path, auth_err_name(err));
            goto out;
        }
    }
    auth__refresh_all(st, true);
    for (size_t i = 0; i < AUTH__N_EVENTS; i++) {
        rc = mosquitto_callback_register(identifier, auth__events[i].event, auth__events[i].cb,
                                         NULL, st);
        if (rc != MOSQ_ERR_SUCCESS) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: cannot register event %d: %s",
                                 auth__events[i].event, mosquitto_strerror(rc));
            goto out;
        }
    }
    clock_gettime(CLOCK_MONOTONIC, &st->last_tick);
    *userdata = st;
    mosquitto_log_printf(
        MOSQ_LOG_NOTICE, "nusec_auth: ready (revoked %s, owners %s, issuer %s, identities %s)",
        st->revoked.path, st->owners.path ? st->owners.path : "-",
        st->issuer_path ? st->issuer_path : "-", st->ids_path ? st->ids_path : "-");
    const struct nusec_rl_rate *sr = &st->rl_cfg.rate[NUSEC_ROLE_STATION];
    mosquitto_log_printf(MOSQ_LOG_NOTICE,
                         "nusec_auth: publish limits: %u bytes (firmware.sign from an oem: %u); "
                         "rates %s (station, programmer, monitor: %u msg/s burst %u, %llu B/s "
                         "burst %llu; see broker/README.md)",
                         (unsigned)st->rl_cfg.payload_max,
                         (unsigned)st->rl_cfg.firmware_payload_max,
                         st->rl_cfg.enabled ? "on" : "off", (unsigned)sr->msgs_per_s,
                         (unsigned)sr->msg_burst, (unsigned long long)sr->bytes_per_s,
                         (unsigned long long)sr->byte_burst);
    rc = MOSQ_ERR_SUCCESS;
out:
    if (rc != MOSQ_ERR_SUCCESS) {
        auth__unregister(identifier);
        auth__state_free(st);
    }
    return rc;
}

NUSEC_EXPORT int mosquitto_plugin_cleanup(void *userdata, struct mosquitto_opt *options,
                                          int option_count)
{
    struct nusec_auth *st = userdata;
    if (!st)
        return MOSQ_ERR_SUCCESS;
    auth__unregister(st->pid);
    auth__state_free(st);
    return MOSQ_ERR_SUCCESS;
}
