/*
 * auth_files — the files the nusec_auth plugin keeps on disk: the
 * revocation list and ownership table (plugin_opt_revoked_file,
 * plugin_opt_owners_file), the serial list next to them, and the identities
 * file. Each is stamped by stat() and reloaded only when it changed;
 * an unusable list fails closed. Part of the plugin (auth_int.h).
 */
#include "auth_int.h"

/* A revocation list or ownership table is text; anything bigger is an error. */
#define AUTH__FILE_MAX (16u * 1024u * 1024u)
/* A failed write of the identities file is retried from the tick this often. */
#define AUTH__IDS_RETRY_MS 5000

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
void auth_files_refresh(struct nusec_auth *st, struct auth__file *f, bool force)
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
            snprintf(detail, sizeof(detail), "%s at line %zu", auth_err_name(rc), line);
        else
            snprintf(detail, sizeof(detail), "%s", auth_err_name(rc));
        auth__file_apply(st, f, AUTH__BAD, NULL, detail);
    } else {
        auth__file_apply(st, f, AUTH__OK, set, NULL);
    }
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
                             st->ids_path, auth_err_name(rc));
    st->ids_dirty = st->ids_failing = true;
}

/* Remember `id`'s role; written at once when new or changed. NOMEM only. */
int auth_files_identity_remember(struct nusec_auth *st, const char *id, enum nusec_role role)
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
void auth_files_identities_load(struct nusec_auth *st)
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
                             st->ids_path, auth_err_name(rc), where, moved ? "; moved to " : "",
                             moved ? bad : "");
        return;
    }
    nusec_acl_set_free(st->roles);
    st->roles = set;
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: loaded %s (%zu identities)", st->ids_path,
                         nusec_acl_set_count(set));
}

/* From the tick: retry a failed write. */
void auth_files_identities_retry(struct nusec_auth *st, const struct timespec *now)
{
    if (st->ids_dirty && st->ids_path &&
        auth_ms_since(&st->ids_last_try, now) >= AUTH__IDS_RETRY_MS)
        auth__identities_save(st);
}

/* ---- identity certificate pins (re-enrollment) -------------------------------- */

/*
 * The serial list sits next to the revocation list (DIR/broker/serials; the
 * cloud writes it). Missing = no pins (a broker without a cloud yet);
 * present but unusable = every programmer refused (fail closed). An identity
 * whose pin changed is disconnected at the next tick, and its certificate
 * must carry the pinned serial at CONNECT.
 */
static void auth__pins_kick(void *ctx, const char *id)
{
    struct nusec_auth *st = ctx;
    mosquitto_log_printf(MOSQ_LOG_NOTICE, "nusec_auth: %s re-enrolled: its old certificate goes",
                         id);
    clock_gettime(CLOCK_MONOTONIC, &st->pin_kick_at);
    if ((st->pin_kick || nusec_acl_set_new(&st->pin_kick) == NU_OK) &&
        nusec_acl_set_put(st->pin_kick, id, 1) == NU_OK)
        return;
    mosquitto_log_printf(MOSQ_LOG_ERR, "nusec_auth: out of memory queueing kick of %s", id);
}

void auth_files_pins_refresh(struct nusec_auth *st, bool force)
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
                             f->path, auth_err_name(rc), line);
        return; /* keep the last good pins to diff against later */
    }
    nusec_pins_changed(f->pins, pins, auth__pins_kick, st);
    nusec_pins_free(f->pins);
    f->pins = pins;
}

/*
 * NULL when `cert` may act as `who`, else why not. Pinned identities are the
 * programmers and the sites (their bridges); a site's station certificate
 * has the site's CN but not its pinned serial: at the cloud broker it is
 * refused (a site's station talks to its own broker, which has no pins).
 * An unusable list refuses the roles it may pin, and the stations.
 */
const char *auth_files_pins_why(const struct nusec_auth *st, X509 *cert,
                                const struct auth__ident *who)
{
    const struct auth__pinfile *f = st->pins;
    if (!f)
        return NULL;
    if (f->bad)
        return who->role == NUSEC_ROLE_PROGRAMMER || who->role == NUSEC_ROLE_SITE ||
                       who->role == NUSEC_ROLE_STATION
                   ? "identity serial list unusable (fail closed)"
                   : NULL;
    if (!nusec_pins_has(f->pins, who->id))
        return NULL;
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get_serialNumber(cert), NULL);
    char *hex = bn ? BN_bn2hex(bn) : NULL;
    bool ok = hex && nusec_pins_allow(f->pins, who->id, hex);
    OPENSSL_free(hex);
    BN_free(bn);
    if (ok)
        return NULL;
    if (who->role == NUSEC_ROLE_PROGRAMMER)
        return "serial is not the identity's pinned current certificate (re-enrolled since)";
    if (who->role == NUSEC_ROLE_SITE)
        return "serial is not the site's current certificate";
    return "the identity is a site's: only its bridge's certificate (OU site) connects here";
}

/* The serial list's path: "serials" in the folder of the revocation list. */
int auth_files_pins_init(struct nusec_auth *st)
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

void auth_files_pins_free(struct nusec_auth *st)
{
    if (!st->pins)
        return;
    nusec_pins_free(st->pins->pins);
    free(st->pins->path);
    free(st->pins);
    st->pins = NULL;
}
