/*
 * nusec_auth — Mosquitto 2.0 plugin (API v5): mTLS identity, revocation and
 * the NuSEC topic ACL. Policy lives in acl.c; this file is the glue to the
 * broker: certificate reading (OpenSSL, because mosquitto_client_certificate()
 * returns an OpenSSL X509 *), list files, events, logging. It links neither
 * wolfSSL nor libnusec.
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
 *
 * One file of ~1,050 lines on purpose: Mosquitto loads one plugin object,
 * and every event handler here reads and updates the one struct nusec_auth
 * (lists, stamps, pins, kicks); the policy that can stand alone already
 * lives in acl.c (topics, list formats) and pins.c (serial pins).
 */
#include "acl.h"
#include "nu_brokerlist.h"
#include "pins.h"
#include "ratelimit.h"
#include "nu_err.h"

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define NUSEC_EXPORT __attribute__((visibility("default")))

/* A revocation list or ownership table is text; anything bigger is an error. */
#define AUTH__FILE_MAX (16u * 1024u * 1024u)
/* Kicks and polling from MOSQ_EVT_TICK at most this often. */
#define AUTH__TICK_MS 200
/* The lists the cloud broker hands to site brokers (see the header). */
#define AUTH__TOPIC_REVOKED "nusec/v1/broker/revoked"
#define AUTH__TOPIC_OWNERS "nusec/v1/broker/owners/"
/* The lists the cloud agents publish for a broker on another host. */
#define AUTH__TOPIC_CLOUD_LISTS "nusec/v1/cloud/lists/"
/* A failed write of the identities file is retried from the tick this often. */
#define AUTH__IDS_RETRY_MS 5000

_Static_assert(NUSEC_ACCESS_READ == MOSQ_ACL_READ, "access values");
_Static_assert(NUSEC_ACCESS_WRITE == MOSQ_ACL_WRITE, "access values");
_Static_assert(NUSEC_ACCESS_SUBSCRIBE == MOSQ_ACL_SUBSCRIBE, "access values");

enum auth__fstate { AUTH__UNKNOWN, AUTH__OK, AUTH__MISSING, AUTH__BAD };

/* What stat() says about a list file; a change of any field means "reload". */
struct auth__stamp {
    int err; /* 0 or the errno of stat() */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

struct auth__file {
    const char *option; /* for log lines */
    char *path;         /* NULL: not configured */
    bool have_stamp;
    struct auth__stamp stamp;
    enum auth__fstate state;
    struct nusec_acl_set *set; /* NULL = empty */
};

struct nusec_auth {
    mosquitto_plugin_id_t *pid;
    struct auth__file revoked;
    struct auth__file owners;
    char *issuer_path;
    STACK_OF(X509) * issuers;    /* NULL: no issuer pinning */
    struct nusec_acl_set *roles; /* CN -> role at its last accepted connect (any run) */
    struct nusec_acl_set *live;  /* CNs accepted at CONNECT in this broker run */
    struct nusec_acl_set *kick;  /* newly revoked identities, kicked at next tick */
    struct auth__pinfile *pins;  /* DIR/broker/serials: current identity serials (pins.h) */
    struct timespec last_tick;
    char *ids_path;             /* identities file (roles across restarts); NULL: none */
    char *site_name;            /* a site broker: take the lists from the bridge */
    char *publish_lists;        /* "true": the cloud broker of sites publishes its lists */
    char *adopt_lists;          /* "true": take the cloud agents' lists from the bus */
    bool lists_dirty;           /* the cloud broker: lists changed, publish at the tick */
    struct nusec_acl_set *published; /* owners whose lines were published last */
    bool ids_dirty;             /* roles changed and not yet written */
    bool ids_failing;           /* the last write failed (logged once) */
    struct timespec ids_last_try;
    struct nusec_rl_config rl_cfg; /* publish limits (ratelimit.h) */
    struct nusec_rl *rl;
    unsigned long long withheld;   /* replies kept from site bridges since the last summary */
    struct timespec withheld_last; /* when that summary was logged */
};

/* The plugin's state: the one static the conventions allow, passed as userdata. */
static struct nusec_auth auth__state;

struct auth__ident {
    char id[NUSEC_ACL_ID_MAX + 1];
    enum nusec_role role;
};

/* Text for an NU_ERR_* code, from the shared table (header only, no libnusec link). */
static const char *auth__err_name(int code)
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

static long auth__ms_since(const struct timespec *then, const struct timespec *now)
{
    return (long)(now->tv_sec - then->tv_sec) * 1000L + (now->tv_nsec - then->tv_nsec) / 1000000L;
}

/* ---- list files --------------------------------------------------------- */

static void auth__stamp_of(const struct stat *st, int err, struct auth__stamp *out)
{
    memset(out, 0, sizeof(*out));
    out->err = err;
    if (err)
        return;
    out->dev = st->st_dev;
    out->ino = st->st_ino;
    out->size = st->st_size;
    out->mtime = st->st_mtim;
}

static bool auth__stamp_eq(const struct auth__stamp *a, const struct auth__stamp *b)
{
    return a->err == b->err && a->dev == b->dev && a->ino == b->ino && a->size == b->size &&
           a->mtime.tv_sec == b->mtime.tv_sec && a->mtime.tv_nsec == b->mtime.tv_nsec;
}

/* Read a regular file of at most AUTH__FILE_MAX bytes; *out_stamp from the open fd. */
static int auth__read(const char *path, char **out_buf, size_t *out_len,
                      struct auth__stamp *out_stamp)
{
    char *buf = NULL;
    struct stat st;
    int rc = NU_ERR_IO;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = errno == ENOENT ? NU_ERR_NOT_FOUND : errno == EACCES ? NU_ERR_PERMISSION : NU_ERR_IO;
        goto out;
    }
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode))
        goto out;
    rc = NU_ERR_TOO_LARGE;
    if ((unsigned long long)st.st_size > AUTH__FILE_MAX)
        goto out;
    rc = NU_ERR_NOMEM;
    buf = malloc((size_t)st.st_size + 1);
    if (!buf)
        goto out;
    size_t len = 0;
    rc = NU_ERR_IO;
    while (len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out; /* shrank while reading: the next stat sees the change */
        len += (size_t)n;
    }
    buf[len] = '\0';
    auth__stamp_of(&st, 0, out_stamp);
    *out_buf = buf;
    *out_len = len;
    buf = NULL;
    rc = NU_OK;
out:
    free(buf);
    if (fd >= 0)
        close(fd);
    return rc;
}

/* Newly revoked identities (in `now`, not in `before`) join the kick set. */
static void auth__queue_kicks(struct nusec_auth *st, const struct nusec_acl_set *before,
                              const struct nusec_acl_set *now)
{
    for (size_t i = 0; i < nusec_acl_set_count(now); i++) {
        const char *id = nusec_acl_set_key(now, i);
        if (nusec_acl_set_get(before, id, NULL))
            continue;
        if (!st->kick && nusec_acl_set_new(&st->kick) != NU_OK)
            return;
        if (nusec_acl_set_put(st->kick, id, 1) != NU_OK)
            mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: out of memory queueing kick of %s", id);
    }
}

/* Apply a new state and set to `f`, logging transitions (not every check). */
static void auth__file_apply(struct nusec_auth *st, struct auth__file *f, enum auth__fstate state,
                             struct nusec_acl_set *set, const char *detail)
{
    bool revoked = f == &st->revoked;
    if (state == AUTH__OK) {
        if (revoked)
            auth__queue_kicks(st, f->set, set);
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: loaded %s (%zu entries)", f->path,
                             nusec_acl_set_count(set));
    } else if (state == AUTH__MISSING && f->state != AUTH__MISSING) {
        mosquitto_log_printf(MOSQ_LOG_WARNING, "nusec_auth: %s %s does not exist: %s", f->option,
                             f->path,
                             revoked ? "no identity is revoked" : "no station owns any programmer");
    } else if (state == AUTH__BAD) {
        mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: %s %s unusable (%s): %s", f->option,
                             f->path, detail,
                             revoked ? "refusing every client" : "no station owns any programmer");
    }
    f->state = state;
    if (state != AUTH__BAD)
        st->lists_dirty = true;
    if (state == AUTH__BAD && revoked) {
        nusec_acl_set_free(set); /* keep the last good list to diff against later */
        return;
    }
    nusec_acl_set_free(f->set);
    f->set = set;
}

/* Reload `f` if stat() says it changed (or `force`). Cheap when unchanged. */
static void auth__file_refresh(struct nusec_auth *st, struct auth__file *f, bool force)
{
    if (!f->path)
        return;
    struct stat sb;
    struct auth__stamp now;
    auth__stamp_of(&sb, stat(f->path, &sb) == 0 ? 0 : errno, &now);
    if (!force && f->have_stamp && auth__stamp_eq(&now, &f->stamp))
        return;
    f->stamp = now;
    f->have_stamp = true;
    if (now.err == ENOENT) {
        auth__file_apply(st, f, AUTH__MISSING, NULL, NULL);
        return;
    }
    char *buf = NULL, detail[64];
    size_t len = 0, line = 0;
    struct nusec_acl_set *set = NULL;
    int rc = auth__read(f->path, &buf, &len, &f->stamp);
    if (rc == NU_OK)
        rc = f == &st->revoked ? nusec_acl_revoked_parse(buf, len, &set, &line)
                               : nusec_acl_owners_parse(buf, len, &set, &line);
    free(buf);
    if (rc == NU_ERR_NOT_FOUND) {
        auth__file_apply(st, f, AUTH__MISSING, NULL, NULL);
    } else if (rc != NU_OK) {
        if (line)
            snprintf(detail, sizeof(detail), "%s at line %zu", auth__err_name(rc), line);
        else
            snprintf(detail, sizeof(detail), "%s", auth__err_name(rc));
        auth__file_apply(st, f, AUTH__BAD, NULL, detail);
    } else {
        auth__file_apply(st, f, AUTH__OK, set, NULL);
    }
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

/* ---- identities file: roles across broker restarts ----------------------------- */

/*
 * Mosquitto keeps persistent sessions and their queues across a restart, and
 * checks READ access for deliveries to them while their clients are offline.
 * A plugin that knew roles only from this run's CONNECTs denied those (issue
 * 10: certificate replies and device events dropped after every restart). So
 * the role of every accepted identity is written to plugin_opt_identities_file
 * when it is first seen or changes, and read back at init. Identities never
 * seen, and revoked ones (checked first), are still denied.
 */

/* Write `len` bytes to `path` atomically and durably: tmp, fsync, rename, fsync dir. */
static int auth__write_atomic(const char *path, const char *text, size_t len)
{
    char tmp[PATH_MAX], dir[PATH_MAX];
    if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
        return NU_ERR_TOO_LARGE;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return errno == EACCES ? NU_ERR_PERMISSION : NU_ERR_IO;
    int rc = NU_ERR_IO;
    for (size_t off = 0; off < len;) {
        ssize_t n = write(fd, text + off, len - off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            goto out;
        off += (size_t)n;
    }
    if (fsync(fd) != 0)
        goto out;
    if (close(fd) != 0) {
        fd = -1;
        goto out;
    }
    fd = -1;
    if (rename(tmp, path) != 0)
        goto out;
    snprintf(dir, sizeof(dir), "%s", path);
    char *slash = strrchr(dir, '/');
    if (slash)
        *(slash == dir ? slash + 1 : slash) = '\0';
    int dfd = open(slash ? dir : ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) { /* the rename itself must survive a power cut */
        (void)fsync(dfd);
        close(dfd);
    }
    return NU_OK;
out:
    if (fd >= 0)
        close(fd);
    unlink(tmp);
    return rc;
}

/* Write the roles now; on failure keep them dirty for the tick to retry. */
static void auth__identities_save(struct nusec_auth *st)
{
    char *text = NULL;
    size_t len = 0;
    clock_gettime(CLOCK_MONOTONIC, &st->ids_last_try);
    int rc = nusec_acl_identities_format(st->roles, &text, &len);
    if (rc == NU_OK)
        rc = auth__write_atomic(st->ids_path, text, len);
    free(text);
    if (rc == NU_OK) {
        if (st->ids_failing)
            mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: identities file %s written again",
                                 st->ids_path);
        st->ids_dirty = st->ids_failing = false;
        return;
    }
    if (!st->ids_failing)
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             "nusec_auth: cannot write identities file %s: %s (retrying; after a "
                             "restart, offline sessions of new identities get nothing until they "
                             "reconnect)",
                             st->ids_path, auth__err_name(rc));
    st->ids_dirty = st->ids_failing = true;
}

/* Remember `id`'s role; written at once when new or changed. NOMEM only. */
static int auth__identity_remember(struct nusec_auth *st, const char *id, enum nusec_role role)
{
    int prev = NUSEC_ROLE_NONE;
    bool known = nusec_acl_set_get(st->roles, id, &prev);
    if (known && prev != (int)role)
        mosquitto_log_printf(MOSQ_LOG_WARNING, "nusec_auth: identity %s changed role %s -> %s", id,
                             nusec_acl_role_name((enum nusec_role)prev), nusec_acl_role_name(role));
    if (nusec_acl_set_put(st->live, id, 1) != NU_OK)
        return NU_ERR_NOMEM;
    if (known && prev == (int)role)
        return NU_OK;
    if (nusec_acl_set_put(st->roles, id, (int)role) != NU_OK)
        return NU_ERR_NOMEM;
    if (st->ids_path)
        auth__identities_save(st);
    return NU_OK;
}

/*
 * Read the identities file into st->roles at init. Missing: nothing known
 * yet. Unusable (corrupt, truncated, oversize, unreadable): logged, moved
 * aside to PATH.bad for inspection, and nothing known (fail closed: offline
 * sessions get deliveries again once their identity reconnects). Never fatal.
 */
static void auth__identities_load(struct nusec_auth *st)
{
    char *buf = NULL, bad[PATH_MAX];
    size_t len = 0, line = 0;
    struct auth__stamp stamp;
    struct nusec_acl_set *set = NULL;
    if (!st->ids_path)
        return;
    int rc = auth__read(st->ids_path, &buf, &len, &stamp);
    if (rc == NU_ERR_NOT_FOUND) {
        mosquitto_log_printf(MOSQ_LOG_NOTICE,
                             "nusec_auth: no identities file %s yet: roles are learnt at CONNECT",
                             st->ids_path);
        return;
    }
    if (rc == NU_OK)
        rc = nusec_acl_identities_parse(buf, len, &set, &line);
    free(buf);
    if (rc != NU_OK) {
        char where[32] = "";
        if (line)
            snprintf(where, sizeof(where), " at line %zu", line);
        snprintf(bad, sizeof(bad), "%s.bad", st->ids_path);
        bool moved = rename(st->ids_path, bad) == 0;
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             "nusec_auth: identities file %s unusable (%s%s): no identity known "
                             "until it connects again (fail closed)%s%s",
                             st->ids_path, auth__err_name(rc), where, moved ? "; moved to " : "",
                             moved ? bad : "");
        return;
    }
    nusec_acl_set_free(st->roles);
    st->roles = set;
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: loaded %s (%zu identities)", st->ids_path,
                         nusec_acl_set_count(set));
}

/* From the tick: retry a failed write. */
static void auth__identities_retry(struct nusec_auth *st, const struct timespec *now)
{
    if (st->ids_dirty && st->ids_path &&
        auth__ms_since(&st->ids_last_try, now) >= AUTH__IDS_RETRY_MS)
        auth__identities_save(st);
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
static bool auth__subject(const struct nusec_auth *st, struct mosquitto *client,
                          struct auth__ident *out)
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

static void auth__pins_refresh(struct nusec_auth *st, bool force);

static void auth__refresh_all(struct nusec_auth *st, bool force)
{
    auth__file_refresh(st, &st->revoked, force);
    auth__file_refresh(st, &st->owners, force);
    auth__pins_refresh(st, force);
}

/* ---- identity certificate pins (re-enrollment) -------------------------------- */

/*
 * The serial list sits next to the revocation list (DIR/broker/serials; the
 * cloud writes it). Missing = no pins (a broker without a cloud yet);
 * present but unusable = every programmer refused (fail closed). An identity
 * whose pin changed is disconnected at the next tick, and its certificate
 * must carry the pinned serial at CONNECT.
 */
struct auth__pinfile {
    char *path;
    bool have_stamp, bad;
    struct auth__stamp stamp;
    struct nusec_pins *pins;
};

static void auth__pins_kick(void *ctx, const char *id)
{
    struct nusec_auth *st = ctx;
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: %s re-enrolled: its old certificate goes",
                         id);
    if ((st->kick || nusec_acl_set_new(&st->kick) == NU_OK) &&
        nusec_acl_set_put(st->kick, id, 1) == NU_OK)
        return;
    mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: out of memory queueing kick of %s", id);
}

static void auth__pins_refresh(struct nusec_auth *st, bool force)
{
    struct auth__pinfile *f = st->pins;
    struct stat sb;
    struct auth__stamp now;
    if (!f || !f->path)
        return;
    auth__stamp_of(&sb, stat(f->path, &sb) == 0 ? 0 : errno, &now);
    if (!force && f->have_stamp && auth__stamp_eq(&now, &f->stamp))
        return;
    f->stamp = now;
    f->have_stamp = true;
    char *buf = NULL;
    size_t len = 0, line = 0;
    struct nusec_pins *pins = NULL;
    int rc = now.err == ENOENT ? NU_ERR_NOT_FOUND : auth__read(f->path, &buf, &len, &f->stamp);
    if (rc == NU_OK)
        rc = nusec_pins_parse(buf, len, &pins, &line);
    free(buf);
    f->bad = rc != NU_OK && rc != NU_ERR_NOT_FOUND;
    if (f->bad) {
        mosquitto_log_printf(MOSQ_LOG_ERR,
                             "nusec_auth: %s unusable (%s, line %zu): refusing every "
                             "programmer",
                             f->path, auth__err_name(rc), line);
        return; /* keep the last good pins to diff against later */
    }
    nusec_pins_changed(f->pins, pins, auth__pins_kick, st);
    nusec_pins_free(f->pins);
    f->pins = pins;
}

/* NULL when `cert` may act as programmer `who`, else why not. */
static const char *auth__pins_why(const struct nusec_auth *st, X509 *cert,
                                  const struct auth__ident *who)
{
    const struct auth__pinfile *f = st->pins;
    if (!f || who->role != NUSEC_ROLE_PROGRAMMER)
        return NULL;
    if (f->bad)
        return "identity serial list unusable (fail closed)";
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    bool ok = hex && nusec_pins_allow(f->pins, who->id, hex);
    OPENSSL_free(hex);
    BN_free(bn);
    return ok ? NULL
              : "serial is not the identity's pinned current certificate (re-enrolled since)";
}

/* The serial list's path: "serials" in the folder of the revocation list. */
static int auth__pins_init(struct nusec_auth *st)
{
    const char *slash = strrchr(st->revoked.path, '/');
    size_t dir = slash ? (size_t)(slash - st->revoked.path) + 1 : 0;
    st->pins = calloc(1, sizeof(*st->pins));
    if (st->pins)
        st->pins->path = malloc(dir + sizeof("serials"));
    if (!st->pins || !st->pins->path)
        return MOSQ_ERR_NOMEM;
    memcpy(st->pins->path, st->revoked.path, dir);
    memcpy(st->pins->path + dir, "serials", sizeof("serials"));
    return MOSQ_ERR_SUCCESS;
}

static void auth__pins_free(struct nusec_auth *st)
{
    if (!st->pins)
        return;
    nusec_pins_free(st->pins->pins);
    free(st->pins->path);
    free(st->pins);
    st->pins = NULL;
}

/* Disconnect clients of newly revoked identities. Only from TICK/RELOAD: never
 * inside a client's own packet handling, where freeing it would be unsafe. */
static void auth__do_kicks(struct nusec_auth *st)
{
    for (size_t i = 0; i < nusec_acl_set_count(st->kick); i++) {
        const char *id = nusec_acl_set_key(st->kick, i);
        mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: identity %s revoked: disconnecting it",
                             id);
        mosquitto_kick_client_by_username(id, false);
    }
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
    if (ok && (why = auth__pins_why(st, cert, &who)) != NULL)
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
    if (auth__identity_remember(st, who.id, who.role) != NU_OK ||
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
 * A re-enrolled programmer's old certificate may publish or subscribe no more
 * once the cloud has written the new pin (every ACL check re-reads a changed
 * list), not only from the next tick's kick (up to 200 ms later). Deliveries
 * to it (READ) still pass until the kick: a programmer renewing over its
 * current connection gets its new certificate that way.
 */
static bool auth__stale_cert(const struct nusec_auth *st, struct mosquitto *client,
                             const struct auth__ident *who)
{
    if (!st->pins || who->role != NUSEC_ROLE_PROGRAMMER)
        return false;
    X509 *cert = mosquitto_client_certificate(client);
    bool stale = cert && auth__pins_why(st, cert, who) != NULL;
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
    if (!st->withheld || auth__ms_since(&st->withheld_last, now) < AUTH__WITHHELD_LOG_MS)
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
    if (!auth__subject(st, ed->client, &who))
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

static void auth__lists_take(struct nusec_auth *st, const char *topic, const void *payload,
                             uint32_t len);
static bool auth__adopting(const struct nusec_auth *st);
static int auth__lists_adopt(struct nusec_auth *st, struct mosquitto *client, const char *topic,
                             const void *payload, uint32_t len);

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
    if (auth__adopting(st) &&
        strncmp(ed->topic, AUTH__TOPIC_CLOUD_LISTS, sizeof(AUTH__TOPIC_CLOUD_LISTS) - 1) == 0 &&
        auth__lists_adopt(st, ed->client, ed->topic, ed->payload, ed->payloadlen) != NU_OK)
        return MOSQ_ERR_ACL_DENIED; /* refused: not retained either, the old list stays */
    if (st->site_name && !auth__subject(st, ed->client, &who))
        auth__lists_take(st, ed->topic, ed->payload, ed->payloadlen); /* from the bridge */
    if (auth__subject(st, ed->client, &who) && auth__limit(st, ed, &who) != MOSQ_ERR_SUCCESS)
        return MOSQ_ERR_ACL_DENIED;
    if (!mosquitto_property_read_string(ed->properties, MQTT_PROP_RESPONSE_TOPIC, &response_topic,
                                        false))
        return MOSQ_ERR_SUCCESS;
    if (!auth__subject(st, ed->client, &who)) {
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
static void auth__lists_publish(struct nusec_auth *st)
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
static void auth__lists_take(struct nusec_auth *st, const char *topic, const void *payload,
                             uint32_t len)
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
                             auth__err_name(rc));
        return;
    }
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: %s from the cloud broker written to %s",
                         topic, f->path);
    auth__file_refresh(st, f, true);
}

/* ---- lists from the cloud agents (plugin_opt_adopt_lists) ------------------------ */

/*
 * The cloud broker on another host than the agents: the agents publish the
 * lists, retained, on AUTH__TOPIC_CLOUD_LISTS{revoked,serials,owners/ID}
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
static bool auth__adopting(const struct nusec_auth *st)
{
    return st->adopt_lists && strcmp(st->adopt_lists, "true") == 0;
}

static void auth__adopt_refused(const char *topic, const char *who, int rc, size_t line)
{
    char safe[256];
    mosquitto_log_printf(MOSQ_LOG_ERR,
                         "nusec_auth: list %s from %s refused (%s, line %zu): keeping the "
                         "previous one",
                         nusec_acl_log_safe(topic, safe, sizeof(safe)), who, auth__err_name(rc),
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
        auth__file_refresh(st, &st->owners, true);
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
            auth__file_refresh(st, &st->revoked, true);
    } else if (strcmp(name, "serials") == 0) {
        rc = nusec_pins_parse(text, len, &pins, line);
        nusec_pins_free(pins);
        if (rc == NU_OK)
            rc = nu_brokerlist_replace(st->pins->path, text, len, NULL);
        if (rc == NU_OK)
            auth__pins_refresh(st, true);
    } else if (strncmp(name, "owners/", 7) == 0) {
        rc = auth__adopt_owners(st, name + 7, text, len, line);
    }
    return rc;
}

static int auth__lists_adopt(struct nusec_auth *st, struct mosquitto *client, const char *topic,
                             const void *payload, uint32_t len)
{
    struct auth__ident who;
    size_t line = 0;
    if (!auth__subject(st, client, &who) || who.role != NUSEC_ROLE_CLOUD) {
        auth__adopt_refused(topic, "a client that is no cloud identity", NU_ERR_NOT_AUTHORIZED, 0);
        return NU_ERR_NOT_AUTHORIZED; /* the ACL let no one else through: refuse anyway */
    }
    int rc = auth__adopt_one(st, topic + sizeof(AUTH__TOPIC_CLOUD_LISTS) - 1,
                             payload ? (const char *)payload : "", len, &line);
    if (rc != NU_OK) {
        auth__adopt_refused(topic, who.id, rc, line);
        return rc;
    }
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: adopted list %s from %s (%u bytes)", topic,
                         who.id, (unsigned)len);
    return NU_OK;
}

static int auth__on_tick(int event, void *event_data, void *userdata)
{
    struct nusec_auth *st = userdata;
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    if (auth__ms_since(&st->last_tick, &now) < AUTH__TICK_MS)
        return MOSQ_ERR_SUCCESS;
    st->last_tick = now;
    auth__refresh_all(st, false);
    auth__do_kicks(st);
    auth__identities_retry(st, &now);
    auth__withheld_report(st, &now);
    nusec_rl_flush(st->rl, (uint64_t)now.tv_sec * 1000u + (uint64_t)now.tv_nsec / 1000000u,
                   auth__limit_report, st);
    if (st->lists_dirty && !st->site_name && st->publish_lists &&
        strcmp(st->publish_lists, "true") == 0)
        auth__lists_publish(st);
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
                             st->issuer_path, auth__err_name(rc));
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
    auth__pins_free(st);
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
                             why ? why : auth__err_name(rl));
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
    if (rc == MOSQ_ERR_SUCCESS)
        rc = auth__pins_init(st);
    if (rc != MOSQ_ERR_SUCCESS)
        goto out;
    rc = MOSQ_ERR_NOMEM;
    if (nusec_acl_set_new(&st->roles) != NU_OK || nusec_acl_set_new(&st->live) != NU_OK)
        goto out;
    auth__identities_load(st);
    if (st->issuer_path) {
        int err = auth__issuers_load(st->issuer_path, &st->issuers);
        rc = MOSQ_ERR_INVAL;
        if (err != NU_OK) {
            mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: plugin_opt_issuer_file %s: %s",
                                 st->issuer_path, auth__err_name(err));
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
