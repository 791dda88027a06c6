/*
 * tsim_state — the simulated chip's non-volatile state: the `state` file
 * that mirrors struct tsim__nv (format, parse, checks) and the way every
 * change reaches the disk (shadow file, exchange, fsync). Split from tsim.c
 * along that seam; shared internals in tsim_int.h.
 */
#define _GNU_SOURCE /* renameat2(RENAME_EXCHANGE), where the C library has it */
#include "tsim_int.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *const tsim__state_names[] = {
    "blank", "otp_written", "keyed", "programmed", "booted", "boot_failed", "locked",
};
static const char *const tsim__boot_names[] = {"none", "ok", "failed"};

enum tsim_state tsim__derive(const struct tsim__nv *nv)
{
    if (nv->locked)
        return TSIM_LOCKED;
    if (nv->boot == TSIM__BOOT_OK)
        return TSIM_BOOTED;
    if (nv->boot == TSIM__BOOT_FAILED)
        return TSIM_BOOT_FAILED;
    if (nv->programmed)
        return TSIM_PROGRAMMED;
    if (nv->keyed)
        return TSIM_KEYED;
    return nv->otp_set ? TSIM_OTP_WRITTEN : TSIM_BLANK;
}

/* Hex of buf into out, or "" when !set (out needs 2*len+1). */
static void tsim__hex_or_empty(int set, const uint8_t *buf, size_t len, char *out, size_t cap)
{
    if (!set || nu_hex_encode(buf, len, out, cap) != NU_OK)
        out[0] = 0;
}

/* ------------------------------------------------------------ state file */

static int tsim__format(const struct tsim *t, const struct tsim__nv *nv, char *out, size_t cap,
                        size_t *out_len)
{
    char otp[2 * NU_SHA256_LEN + 1], pub[2 * NU_P256_PUB_LEN + 1], bk[2 * NU_P256_PUB_LEN + 1];
    tsim__hex_or_empty(nv->otp_set, nv->otp_hash, sizeof(nv->otp_hash), otp, sizeof(otp));
    tsim__hex_or_empty(nv->keyed, nv->pub, sizeof(nv->pub), pub, sizeof(pub));
    tsim__hex_or_empty(nv->boot_key_set, nv->boot_key, sizeof(nv->boot_key), bk, sizeof(bk));
    int n = snprintf(out, cap,
                     "state=%s\nuid=%s\notp_rotpk_hash=%s\notp_security_counter=%u\n"
                     "pubkey=%s\nboot_key=%s\nprogrammed=%d\nboot=%s\nlocked=%d\n"
                     "updated_ms=%llu\n",
                     tsim__state_names[tsim__derive(nv)], t->uid_hex, otp,
                     (unsigned)nv->otp_counter, pub, bk, nv->programmed, tsim__boot_names[nv->boot],
                     nv->locked, (unsigned long long)nu_time_ms());
    if (n < 0 || (size_t)n >= cap)
        return NU_ERR_INTERNAL;
    *out_len = (size_t)n;
    return NU_OK;
}

int tsim__errno(int e)
{
    if (e == EEXIST || e == ENOTEMPTY)
        return NU_ERR_EXISTS;
    if (e == EACCES || e == EPERM)
        return NU_ERR_PERMISSION;
    if (e == ENOENT)
        return NU_ERR_NOT_FOUND;
    return NU_ERR_IO;
}

int tsim__pwrite_all(int fd, const uint8_t *data, size_t len, uint64_t off)
{
    while (len) {
        ssize_t n = pwrite(fd, data, len, (off_t)off);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return NU_ERR_IO;
        data += n;
        len -= (size_t)n;
        off += (uint64_t)n;
    }
    return NU_OK;
}

int tsim__fsync_dir(const char *dir)
{
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0)
        return tsim__errno(errno);
    int rc = fsync(fd) == 0 ? NU_OK : NU_ERR_IO;
    close(fd);
    return rc;
}

/* Rewrite the shadow file with text and make its bytes durable. */
static int tsim__write_shadow(const char *path, const char *text, size_t len, int durable)
{
    int fd = open(path, O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0 && errno == ENOENT) {
        fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
        if (fd >= 0 && fchmod(fd, 0644) != 0) { /* the umask is not the contract */
            close(fd);
            return NU_ERR_IO;
        }
    }
    if (fd < 0)
        return tsim__errno(errno);
    int rc = tsim__pwrite_all(fd, (const uint8_t *)text, len, 0);
    if (!rc && durable && fdatasync(fd) != 0)
        rc = NU_ERR_IO;
    if (close(fd) != 0 && !rc)
        rc = NU_ERR_IO;
    return rc;
}

/* Swap the names of the shadow and the state file in one step; a plain rename
 * when there is no state file yet or the filesystem cannot exchange. */
static int tsim__swap(const char *shadow, const char *state)
{
#ifdef RENAME_EXCHANGE
    if (renameat2(AT_FDCWD, shadow, AT_FDCWD, state, RENAME_EXCHANGE) == 0)
        return NU_OK;
    if (errno != ENOENT && errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return tsim__errno(errno);
#endif
    return rename(shadow, state) == 0 ? NU_OK : tsim__errno(errno);
}

/*
 * Write nv as the state file of the chip folder `dir`, atomically (and, if
 * `durable`, durably), like an EEPROM emulation's two pages: the new text goes to the
 * shadow file (which holds the state before the last commit), its bytes are
 * made durable, then one rename(RENAME_EXCHANGE) makes it `state` and the
 * folder is synced. A crash at any point leaves `state` whole (old or new).
 * Unlike a fresh temporary file per commit, this creates and deletes no inode:
 * on ext4 without a journal, every recently deleted inode makes each later
 * file creation scan past it, which cost more CPU than the chip's crypto.
 */
int tsim__write_state(const struct tsim *t, const char *dir, const struct tsim__nv *nv, int durable)
{
    char state[PATH_MAX], shadow[PATH_MAX], text[1024];
    size_t len = 0;
    int rc = nu_path_fmt(state, sizeof(state), "%s/state", dir);
    if (!rc)
        rc = nu_path_fmt(shadow, sizeof(shadow), "%s/" TSIM__SHADOW, dir);
    if (!rc)
        rc = tsim__format(t, nv, text, sizeof(text), &len);
    if (!rc)
        rc = tsim__write_shadow(shadow, text, len, durable);
    if (!rc)
        rc = tsim__swap(shadow, state);
    if (!rc && durable)
        rc = tsim__fsync_dir(dir);
    if (rc)
        nu_warn("tsim %s: state not saved: %s", t->uid_hex, nu_err_name(rc));
    return rc;
}

/*
 * Write the chip file `name` through a temporary file (whole or not at all)
 * with its bytes durable. Its name becomes durable with the caller's next
 * sync of the folder (the commit that follows): one sync less per file.
 */
int tsim__put_file(const struct tsim *t, const char *name, const void *buf, size_t len, mode_t mode)
{
    char path[PATH_MAX], tmp[PATH_MAX];
    int rc = nu_path_fmt(path, sizeof(path), "%s/%s", t->dir, name);
    if (!rc)
        rc = nu_path_fmt(tmp, sizeof(tmp), "%s/%s.tmp", t->dir, name);
    if (rc)
        return rc;
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, mode);
    if (fd < 0)
        return tsim__errno(errno);
    rc = fchmod(fd, mode) == 0 ? NU_OK : NU_ERR_IO;
    if (!rc)
        rc = tsim__pwrite_all(fd, buf, len, 0);
    if (!rc && tsim__durable(t) && fdatasync(fd) != 0)
        rc = NU_ERR_IO;
    if (close(fd) != 0 && !rc)
        rc = NU_ERR_IO;
    if (!rc && rename(tmp, path) != 0)
        rc = tsim__errno(errno);
    if (rc)
        unlink(tmp);
    return rc;
}

static int tsim__nv_eq(const struct tsim__nv *a, const struct tsim__nv *b)
{
    return a->otp_set == b->otp_set && !memcmp(a->otp_hash, b->otp_hash, sizeof(a->otp_hash)) &&
           a->otp_counter == b->otp_counter && a->keyed == b->keyed &&
           !memcmp(a->pub, b->pub, sizeof(a->pub)) && a->boot_key_set == b->boot_key_set &&
           !memcmp(a->boot_key, b->boot_key, sizeof(a->boot_key)) &&
           a->programmed == b->programmed && a->boot == b->boot && a->locked == b->locked;
}

/* The chip folder's parent (targets/) into out. */
static int tsim__parent(const struct tsim *t, char *out, size_t cap)
{
    const char *slash = strrchr(t->dir, '/');
    if (!slash)
        return nu_path_fmt(out, cap, ".");
    return nu_path_fmt(out, cap, "%.*s", (int)(slash > t->dir ? slash - t->dir : 1), t->dir);
}

/*
 * Commit nv: the state file holds it durably, then t adopts it. A new chip's
 * folder becomes durable here, with its first commit: a blank chip holds
 * nothing to lose, so tsim_create does not sync.
 */
int tsim__commit(struct tsim *t, const struct tsim__nv *nv)
{
    char parent[PATH_MAX];
    int rc = tsim__write_state(t, t->dir, nv, tsim__durable(t));
    if (!rc && !t->rooted && tsim__durable(t)) {
        rc = tsim__parent(t, parent, sizeof(parent));
        if (!rc)
            rc = tsim__fsync_dir(parent);
        t->rooted = rc == NU_OK;
    }
    if (!rc)
        t->nv = *nv;
    return rc;
}

/* Commit nv when it differs: flash chunks after the first cost no state write. */
int tsim__commit_if_changed(struct tsim *t, const struct tsim__nv *nv)
{
    return tsim__nv_eq(nv, &t->nv) ? NU_OK : tsim__commit(t, nv);
}

/* Parsed lines of a state file; each key at most once. */
struct tsim__kv {
    const char *state, *uid, *otp, *counter, *pub, *boot_key, *programmed, *boot, *locked;
};

static int tsim__kv_set(struct tsim__kv *kv, const char *key, const char *val)
{
    static const struct {
        const char *name;
        size_t off;
    } keys[] = {
        {"state", offsetof(struct tsim__kv, state)},
        {"uid", offsetof(struct tsim__kv, uid)},
        {"otp_rotpk_hash", offsetof(struct tsim__kv, otp)},
        {"otp_security_counter", offsetof(struct tsim__kv, counter)},
        {"pubkey", offsetof(struct tsim__kv, pub)},
        {"boot_key", offsetof(struct tsim__kv, boot_key)},
        {"programmed", offsetof(struct tsim__kv, programmed)},
        {"boot", offsetof(struct tsim__kv, boot)},
        {"locked", offsetof(struct tsim__kv, locked)},
    };
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++) {
        if (strcmp(key, keys[i].name) != 0)
            continue;
        const char **slot = (const char **)((char *)kv + keys[i].off);
        if (*slot)
            return NU_ERR_DECODE; /* duplicate line */
        *slot = val;
        return NU_OK;
    }
    return NU_OK; /* unknown keys (updated_ms, later additions) are ignored */
}

/* Split text (NUL-terminated, modified in place) into kv. */
static int tsim__split(char *text, struct tsim__kv *kv)
{
    char *save = NULL;
    for (char *line = strtok_r(text, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char *eq = strchr(line, '=');
        if (!eq)
            return NU_ERR_DECODE;
        *eq = 0;
        int rc = tsim__kv_set(kv, line, eq + 1);
        if (rc)
            return rc;
    }
    if (!kv->state || !kv->uid || !kv->otp || !kv->counter || !kv->pub || !kv->boot_key ||
        !kv->programmed || !kv->boot || !kv->locked)
        return NU_ERR_DECODE;
    return NU_OK;
}

static int tsim__parse_flag(const char *s, int *out)
{
    if (strcmp(s, "0") != 0 && strcmp(s, "1") != 0)
        return NU_ERR_DECODE;
    *out = s[0] == '1';
    return NU_OK;
}

/* Optional fixed-length hex: "" = unset. */
static int tsim__parse_hex(const char *s, uint8_t *out, size_t len, int *out_set)
{
    size_t n = 0;
    *out_set = 0;
    if (!*s)
        return NU_OK;
    if (strlen(s) != 2 * len || nu_hex_decode(s, out, len, &n) != NU_OK || n != len)
        return NU_ERR_DECODE;
    *out_set = 1;
    return NU_OK;
}

static int tsim__parse_u32(const char *s, uint32_t *out)
{
    if (!*s || strlen(s) > 10 || strspn(s, "0123456789") != strlen(s))
        return NU_ERR_DECODE;
    unsigned long long v = strtoull(s, NULL, 10);
    if (v > UINT32_MAX)
        return NU_ERR_DECODE;
    *out = (uint32_t)v;
    return NU_OK;
}

static int tsim__parse_boot(const char *s, enum tsim__boot *out)
{
    for (int i = 0; i < 3; i++) {
        if (strcmp(s, tsim__boot_names[i]) == 0) {
            *out = (enum tsim__boot)i;
            return NU_OK;
        }
    }
    return NU_ERR_DECODE;
}

/* The lifecycle is ordered: no key without OTP, nothing programmed or booted
 * without a key, and the derived state must be the one written. */
static int tsim__check_nv(const struct tsim__nv *nv, const char *state_name)
{
    if ((nv->keyed && !nv->otp_set) || (nv->programmed && !nv->keyed) ||
        (nv->boot != TSIM__BOOT_NONE && !nv->keyed) || (nv->locked && !nv->keyed) ||
        (nv->boot_key_set && !nv->programmed))
        return NU_ERR_DECODE;
    if (strcmp(state_name, tsim__state_names[tsim__derive(nv)]) != 0)
        return NU_ERR_DECODE;
    return NU_OK;
}

int tsim__parse(const struct tsim *t, char *text, struct tsim__nv *out)
{
    struct tsim__kv kv = {0};
    struct tsim__nv nv = {0};
    int uid_ok = 0;
    int rc = tsim__split(text, &kv);
    if (!rc)
        uid_ok = strcmp(kv.uid, t->uid_hex) == 0;
    if (!rc)
        rc = tsim__parse_hex(kv.otp, nv.otp_hash, sizeof(nv.otp_hash), &nv.otp_set);
    if (!rc)
        rc = tsim__parse_u32(kv.counter, &nv.otp_counter);
    if (!rc)
        rc = tsim__parse_hex(kv.pub, nv.pub, sizeof(nv.pub), &nv.keyed);
    if (!rc)
        rc = tsim__parse_hex(kv.boot_key, nv.boot_key, sizeof(nv.boot_key), &nv.boot_key_set);
    if (!rc)
        rc = tsim__parse_flag(kv.programmed, &nv.programmed);
    if (!rc)
        rc = tsim__parse_boot(kv.boot, &nv.boot);
    if (!rc)
        rc = tsim__parse_flag(kv.locked, &nv.locked);
    if (!rc)
        rc = uid_ok ? tsim__check_nv(&nv, kv.state) : NU_ERR_DECODE;
    if (!rc)
        *out = nv;
    return rc;
}
