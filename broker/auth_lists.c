/*
 * auth_lists — the nusec_auth plugin's lists across a bridge and from the
 * cloud agents. Part of the plugin (auth_int.h).
 *
 * Lists across a bridge (issue 14). With plugin_opt_publish_lists true (the
 * cloud broker of a deployment with sites; `nusec site sign` sets it) the
 * plugin publishes, retained, what it loaded: the revocation list on
 * AUTH__TOPIC_REVOKED and each owner's lines of the ownership table on
 * AUTH__TOPIC_OWNERS/{owner}. No client may publish there (the ACL has no
 * rule for it); a site's bridge may read the revocation list and its own
 * owners topic. With site_name (a site broker, written by `nusec site init`)
 * the plugin takes those two topics when they arrive over its bridge and
 * writes them to its revocation and ownership files, which it then reloads
 * as any change (kicking newly revoked identities).
 */
#include "auth_int.h"

/* The lists the cloud broker hands to site brokers (see the top). */
#define AUTH__TOPIC_REVOKED "nusec/v1/broker/revoked"
#define AUTH__TOPIC_OWNERS "nusec/v1/broker/owners/"

/* ---- lists across the bridge (see the header) -------------------------------------- */

/* Text of a set: one key per line after a comment. malloc'd; NULL on NOMEM. */
static char *auth__set_text(const struct nusec_acl_set *set, const char *prefix, size_t plen,
                            size_t *out_len)
{
    size_t cap = 64, used = 0;
    for (size_t i = 0; i < nusec_acl_set_count(set); i++)
        cap += strlen(nusec_acl_set_key(set, i)) + 1;
    char *text = malloc(cap);
    if (!text)
        return NULL;
    used = (size_t)snprintf(text, cap, "# from the cloud broker\n");
    for (size_t i = 0; i < nusec_acl_set_count(set); i++) {
        const char *k = nusec_acl_set_key(set, i);
        if (prefix && strncmp(k, prefix, plen) != 0)
            continue;
        used += (size_t)snprintf(text + used, cap - used, "%s\n", k);
    }
    *out_len = used;
    return text;
}

static void auth__publish(const char *topic, const char *text, size_t len)
{
    int rc = mosquitto_broker_publish_copy(NULL, topic, (int)len, text, 1, true, NULL);
    if (rc != MOSQ_ERR_SUCCESS)
        mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: cannot publish %s: %s", topic,
                             mosquitto_strerror(rc));
}

/* The cloud broker: the revocation list and each owner's lines, retained. */
void auth_lists_publish(struct nusec_auth *st)
{
    char topic[NUSEC_ACL_TOPIC_MAX + 1], prefix[NUSEC_ACL_ID_MAX + 2];
    struct nusec_acl_set *now = NULL;
    size_t len = 0;
    char *text = NULL;
    st->lists_dirty = false;
    if (st->revoked.state != AUTH__BAD && (text = auth__set_text(st->revoked.set, NULL, 0, &len)))
        auth__publish(AUTH__TOPIC_REVOKED, text, len);
    free(text);
    if (nusec_acl_set_new(&now) != NU_OK)
        return;
    const struct nusec_acl_set *owners = st->owners.set;
    for (size_t i = 0; i < nusec_acl_set_count(owners); i++) {
        const char *k = nusec_acl_set_key(owners, i);
        size_t n = strcspn(k, " ");
        if (n > NUSEC_ACL_ID_MAX)
            continue;
        snprintf(prefix, sizeof(prefix), "%.*s ", (int)n, k);
        if (nusec_acl_set_get(now, prefix, NULL) || nusec_acl_set_put(now, prefix, 1) != NU_OK)
            continue;
        snprintf(topic, sizeof(topic), AUTH__TOPIC_OWNERS "%.*s", (int)n, k);
        if ((text = auth__set_text(owners, prefix, n + 1, &len)) != NULL)
            auth__publish(topic, text, len);
        free(text);
    }
    for (size_t i = 0; i < nusec_acl_set_count(st->published); i++) {
        const char *gone = nusec_acl_set_key(st->published, i);
        if (nusec_acl_set_get(now, gone, NULL))
            continue;
        snprintf(topic, sizeof(topic), AUTH__TOPIC_OWNERS "%.*s", (int)(strlen(gone) - 1), gone);
        auth__publish(topic, "", 0); /* an empty retained message removes it */
    }
    nusec_acl_set_free(st->published);
    st->published = now;
}

/*
 * A site broker: a list that came over the bridge replaces the local file
 * (checked first: a revocation list that does not parse, or owners lines of
 * another owner, are logged and ignored). The file's reload does the rest.
 */
void auth_lists_take(struct nusec_auth *st, const char *topic, const void *payload, uint32_t len)
{
    char mine[NUSEC_ACL_TOPIC_MAX + 1];
    struct nusec_acl_set *set = NULL;
    size_t line = 0;
    struct auth__file *f = NULL;
    snprintf(mine, sizeof(mine), AUTH__TOPIC_OWNERS "%s", st->site_name);
    if (strcmp(topic, AUTH__TOPIC_REVOKED) == 0)
        f = &st->revoked;
    else if (strcmp(topic, mine) == 0)
        f = &st->owners;
    if (!f || !f->path)
        return;
    int rc = f == &st->revoked ? nusec_acl_revoked_parse(payload, len, &set, &line)
                               : nusec_acl_owners_parse(payload, len, &set, &line);
    for (size_t i = 0; rc == NU_OK && f == &st->owners && i < nusec_acl_set_count(set); i++) {
        const char *k = nusec_acl_set_key(set, i);
        size_t n = strlen(st->site_name);
        if (strncmp(k, st->site_name, n) != 0 || k[n] != ' ')
            rc = NU_ERR_NOT_AUTHORIZED;
    }
    nusec_acl_set_free(set);
    if (rc == NU_OK) /* under the list's lock, as every other writer of it */
        rc = nu_brokerlist_replace(f->path, payload ? (const char *)payload : "", len, NULL);
    if (rc != NU_OK) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: %s from the bridge not applied: %s", topic,
                             auth_err_name(rc));
        return;
    }
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: %s from the cloud broker written to %s",
                         topic, f->path);
    auth_files_refresh(st, f, true);
}

/* ---- lists from the cloud agents (plugin_opt_adopt_lists) ------------------------ */

/*
 * The cloud broker on another host than the agents: the agents publish the
 * lists, retained, on AUTH_TOPIC_CLOUD_LISTS{revoked,serials,owners/ID}
 * (only a cloud identity may: acl.c), and this plugin writes them to its
 * own files under the lists' lock (nu_brokerlist.h), then reloads them at
 * once (a newly revoked identity is kicked at the next tick). A list that
 * does not parse is refused whole (logged, the publish denied so it is not
 * retained, the file kept). The files are the state: a restarted broker
 * runs on the lists it adopted last.
 *   revoked     identities added to the file, never removed (revocation is
 *               final; an older list arriving late cannot undo one);
 *   serials     the file replaced (one writer: the leader agent);
 *   owners/ID   the owner lines of programmer ID replaced ("X ID" only).
 */
bool auth_lists_adopting(const struct nusec_auth *st)
{
    return st->adopt_lists && strcmp(st->adopt_lists, "true") == 0;
}

static void auth__adopt_refused(const char *topic, const char *who, int rc, size_t line)
{
    char safe[256];
    mosquitto_log_printf(MOSQ_LOG_ERR,
                         "nusec_auth: list %s from %s refused (%s, line %zu): keeping the "
                         "previous one",
                         nusec_acl_log_safe(topic, safe, sizeof(safe)), who, auth_err_name(rc),
                         line);
}

/* Write `set`'s keys into the list file `path` (owners: in place of the
 * lines of `owned`, NULL for revoked: added). */
static int auth__adopt_edit(const char *path, const struct nusec_acl_set *set, const char *owned)
{
    size_t n = nusec_acl_set_count(set);
    const char **add = calloc(n ? n : 1, sizeof(*add));
    if (!add)
        return NU_ERR_NOMEM;
    for (size_t i = 0; i < n; i++)
        add[i] = nusec_acl_set_key(set, i);
    struct nu_brokerlist_edit e = {.drop_owner_of = owned, .add = add, .n_add = n};
    int rc = nu_brokerlist_edit(path, &e);
    free(add);
    return rc;
}

/* owners/ID: every line must be about ID. */
static int auth__adopt_owners(struct nusec_auth *st, const char *prog, const char *text,
                              uint32_t len, size_t *line)
{
    struct nusec_acl_set *set = NULL;
    if (!st->owners.path || !nusec_acl_identity_valid(prog, strlen(prog)))
        return NU_ERR_NOT_AUTHORIZED;
    int rc = nusec_acl_owners_parse(text, len, &set, line);
    for (size_t i = 0; rc == NU_OK && i < nusec_acl_set_count(set); i++) {
        const char *sp = strchr(nusec_acl_set_key(set, i), ' ');
        if (!sp || strcmp(sp + 1, prog) != 0)
            rc = NU_ERR_NOT_AUTHORIZED;
    }
    if (rc == NU_OK)
        rc = auth__adopt_edit(st->owners.path, set, prog);
    nusec_acl_set_free(set);
    if (rc == NU_OK)
        auth_files_refresh(st, &st->owners, true);
    return rc;
}

static int auth__adopt_one(struct nusec_auth *st, const char *name, const char *text, uint32_t len,
                           size_t *line)
{
    struct nusec_acl_set *set = NULL;
    struct nusec_pins *pins = NULL;
    int rc = NU_ERR_NOT_FOUND;
    if (strcmp(name, "revoked") == 0) {
        rc = nusec_acl_revoked_parse(text, len, &set, line);
        if (rc == NU_OK)
            rc = auth__adopt_edit(st->revoked.path, set, NULL);
        nusec_acl_set_free(set);
        if (rc == NU_OK)
            auth_files_refresh(st, &st->revoked, true);
    } else if (strcmp(name, "serials") == 0) {
        rc = nusec_pins_parse(text, len, &pins, line);
        nusec_pins_free(pins);
        if (rc == NU_OK)
            rc = nu_brokerlist_replace(st->pins->path, text, len, NULL);
        if (rc == NU_OK)
            auth_files_pins_refresh(st, true);
    } else if (strncmp(name, "owners/", 7) == 0) {
        rc = auth__adopt_owners(st, name + 7, text, len, line);
    }
    return rc;
}

int auth_lists_adopt(struct nusec_auth *st, struct mosquitto *client, const char *topic,
                     const void *payload, uint32_t len)
{
    struct auth__ident who;
    size_t line = 0;
    if (!auth_subject(st, client, &who) || who.role != NUSEC_ROLE_CLOUD) {
        auth__adopt_refused(topic, "a client that is no cloud identity", NU_ERR_NOT_AUTHORIZED, 0);
        return NU_ERR_NOT_AUTHORIZED; /* the ACL let no one else through: refuse anyway */
    }
    int rc = auth__adopt_one(st, topic + sizeof(AUTH_TOPIC_CLOUD_LISTS) - 1,
                             payload ? (const char *)payload : "", len, &line);
    if (rc != NU_OK) {
        auth__adopt_refused(topic, who.id, rc, line);
        return rc;
    }
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: adopted list %s from %s (%u bytes)", topic,
                         who.id, (unsigned)len);
    return NU_OK;
}
