/*
 * tsim — the simulated target MCU. See tsim.h for the chip's contract, the
 * folder layout and the state file.
 *
 * Inside, a chip is its non-volatile state (struct tsim__nv, mirrored by the
 * `state` file) plus the device key loaded from secret/key.pem. Every
 * command that changes the chip works on a copy of the nv state and adopts
 * it only once the state file holds it, so a failed write changes nothing.
 */
#define _GNU_SOURCE /* renameat2(RENAME_EXCHANGE), where the C library has it */

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_mcuboot.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "tsim_int.h"

/* ------------------------------------------------------------ small helpers */

static int tsim__fault(const struct tsim *t, unsigned fault)
{
    return (t->opts.faults & fault) != 0;
}

/* Whether commits are synced to disk (see tsim_opts.no_sync). */
int tsim__durable(const struct tsim *t)
{
    return !t->opts.no_sync;
}

/* Every link command starts here: a dead or flaky chip answers nothing. */
static int tsim__link(const struct tsim *t)
{
    if (tsim__fault(t, TSIM_FAULT_LINK))
        return NU_ERR_TARGET;
    if (tsim__fault(t, TSIM_FAULT_FLAKY)) {
        uint32_t r = 0;
        if (nu_random(&r, sizeof(r)) != NU_OK || r % TSIM_FLAKY_ONE_IN == 0)
            return NU_ERR_TARGET;
    }
    return NU_OK;
}

static int tsim__file(const struct tsim *t, const char *name, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/%s", t->dir, name);
}

/* ------------------------------------------------------------ create / open */

static int tsim__alloc(const char *targets_dir, const uint8_t uid[TSIM_UID_LEN],
                       const struct tsim_opts *opts, struct tsim **out_t)
{
    if (!targets_dir || !*targets_dir || !uid || !out_t)
        return NU_ERR_INVALID_ARG;
    struct tsim *t = calloc(1, sizeof(*t));
    if (!t)
        return NU_ERR_NOMEM;
    memcpy(t->uid, uid, TSIM_UID_LEN);
    t->flash_fd = -1;
    if (opts)
        t->opts = *opts;
    int rc = nu_hex_encode(uid, TSIM_UID_LEN, t->uid_hex, sizeof(t->uid_hex));
    if (!rc)
        rc = nu_path_fmt(t->dir, sizeof(t->dir), "%s/%s", targets_dir, t->uid_hex);
    if (rc) {
        free(t);
        return rc;
    }
    *out_t = t;
    return NU_OK;
}

static void tsim__rmdir_new(const char *tmp)
{
    char path[PATH_MAX];
    if (nu_path_fmt(path, sizeof(path), "%s/state", tmp) == NU_OK)
        unlink(path);
    if (nu_path_fmt(path, sizeof(path), "%s/" TSIM__SHADOW, tmp) == NU_OK)
        unlink(path);
    if (nu_path_fmt(path, sizeof(path), "%s/secret", tmp) == NU_OK)
        rmdir(path);
    rmdir(tmp);
}

/*
 * Build the blank chip in targets_dir/.new-UID-RANDOM, then rename it to its
 * UID: rename refuses a non-empty target, so two creators of one UID cannot
 * both win and a crash never leaves a chip folder without its state. Nothing
 * is synced: the first commit makes the folder durable (tsim__commit).
 */
static int tsim__make_folder(struct tsim *t, const char *targets_dir)
{
    char tmp[PATH_MAX], path[PATH_MAX], suffix[17];
    uint8_t rnd[8];
    int rc = nu_random(rnd, sizeof(rnd));
    if (!rc)
        rc = nu_hex_encode(rnd, sizeof(rnd), suffix, sizeof(suffix));
    if (!rc)
        rc = nu_path_fmt(tmp, sizeof(tmp), "%s/.new-%s-%s", targets_dir, t->uid_hex, suffix);
    if (!rc)
        rc = nu_path_fmt(path, sizeof(path), "%s/secret", tmp);
    if (rc)
        return rc;
    if (nu_path_exists(t->dir))
        return NU_ERR_EXISTS; /* the common case, answered without any write */
    if (mkdir(tmp, 0755) != 0)
        return tsim__errno(errno);
    if (mkdir(path, 0700) != 0 || chmod(path, 0700) != 0) {
        rc = tsim__errno(errno);
        goto fail;
    }
    rc = tsim__write_state(t, tmp, &t->nv, 0); /* t->nv is blank (calloc) */
    if (rc)
        goto fail;
    if (rename(tmp, t->dir) != 0) {
        rc = tsim__errno(errno);
        goto fail;
    }
    return NU_OK;
fail:
    tsim__rmdir_new(tmp);
    return rc;
}

static int tsim__generate_key(struct tsim *t, struct tsim__nv *nv, struct nu_p256_key **out_key);

/* TSIM_FAULT_NOT_BLANK: someone else's ROTPK in OTP and a key on chip. */
static int tsim__make_used(struct tsim *t)
{
    struct tsim__nv nv = t->nv;
    struct nu_p256_key *key = NULL;
    int rc = nu_random(nv.otp_hash, sizeof(nv.otp_hash));
    nv.otp_set = 1;
    if (!rc)
        rc = tsim__generate_key(t, &nv, &key);
    if (!rc)
        rc = tsim__commit(t, &nv);
    if (rc) {
        nu_p256_key_destroy(key);
        return rc;
    }
    t->key = key;
    return NU_OK;
}

int tsim_create(const char *targets_dir, const uint8_t uid[TSIM_UID_LEN],
                const struct tsim_opts *opts, struct tsim **out_t)
{
    struct tsim *t = NULL;
    int rc = tsim__alloc(targets_dir, uid, opts, &t);
    if (rc)
        return rc;
    rc = nu_mkdirs(targets_dir, 0755);
    if (!rc)
        rc = tsim__make_folder(t, targets_dir);
    if (!rc && tsim__fault(t, TSIM_FAULT_NOT_BLANK))
        rc = tsim__make_used(t);
    if (rc) {
        tsim_destroy(t);
        return rc;
    }
    *out_t = t;
    return NU_OK;
}

/* Load secret/key.pem and check it is the key the state names. */
static int tsim__load_key(struct tsim *t)
{
    char path[PATH_MAX];
    uint8_t pub[NU_P256_PUB_LEN];
    int rc = tsim__file(t, "secret/key.pem", path, sizeof(path));
    if (rc)
        return rc;
    rc = nu_p256_key_load_pem(path, &t->key);
    if (rc == NU_ERR_NOMEM || rc == NU_ERR_PERMISSION)
        return rc;
    if (rc || nu_p256_key_pub(t->key, pub) != NU_OK || memcmp(pub, t->nv.pub, sizeof(pub)) != 0)
        return NU_ERR_DECODE; /* keyed state without its key: a damaged chip */
    return NU_OK;
}

static int tsim__stat_flash(struct tsim *t)
{
    char path[PATH_MAX];
    struct stat st;
    int rc = tsim__file(t, "image.bin", path, sizeof(path));
    if (rc)
        return rc;
    if (stat(path, &st) != 0)
        return errno == ENOENT ? NU_OK : NU_ERR_IO;
    if (!S_ISREG(st.st_mode) || (uint64_t)st.st_size > TSIM_IMAGE_MAX)
        return NU_ERR_DECODE;
    t->flash_len = (uint64_t)st.st_size;
    return NU_OK;
}

int tsim_open(const char *targets_dir, const uint8_t uid[TSIM_UID_LEN],
              const struct tsim_opts *opts, struct tsim **out_t)
{
    struct tsim *t = NULL;
    uint8_t *text = NULL;
    size_t len = 0;
    char path[PATH_MAX];
    int rc = tsim__alloc(targets_dir, uid, opts, &t);
    if (rc)
        return rc;
    rc = tsim__file(t, "state", path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, TSIM__STATE_MAX, &text, &len);
    if (rc == NU_ERR_TOO_LARGE || (!rc && strlen((char *)text) != len))
        rc = NU_ERR_DECODE; /* oversized or NUL bytes inside */
    if (!rc)
        rc = tsim__parse(t, (char *)text, &t->nv);
    t->rooted = 1;
    if (!rc && t->nv.keyed)
        rc = tsim__load_key(t);
    if (!rc)
        rc = tsim__stat_flash(t);
    free(text);
    if (rc) {
        tsim_destroy(t);
        return rc;
    }
    *out_t = t;
    return NU_OK;
}

/* Done flashing (for now): the next chunk reopens image.bin. */
static void tsim__flash_close(struct tsim *t)
{
    if (t->flash_fd >= 0)
        close(t->flash_fd);
    t->flash_fd = -1;
}

void tsim_destroy(struct tsim *t)
{
    if (!t)
        return;
    tsim__flash_close(t);
    nu_p256_key_destroy(t->key);
    nu_zero(t, sizeof(*t));
    free(t);
}

const char *tsim_path(const struct tsim *t)
{
    return t ? t->dir : NULL;
}

/* ------------------------------------------------------------ reads */

int tsim_read_uid(const struct tsim *t, uint8_t out_uid[TSIM_UID_LEN])
{
    if (!t || !out_uid)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (!rc)
        memcpy(out_uid, t->uid, TSIM_UID_LEN);
    return rc;
}

int tsim_get_state(const struct tsim *t, enum tsim_state *out_state)
{
    if (!t || !out_state)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (!rc)
        *out_state = tsim__derive(&t->nv);
    return rc;
}

int tsim_read_pubkey(const struct tsim *t, uint8_t out_pub[65])
{
    if (!t || !out_pub)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (rc)
        return rc;
    if (!t->nv.keyed)
        return NU_ERR_STATE;
    memcpy(out_pub, t->nv.pub, NU_P256_PUB_LEN);
    return NU_OK;
}

int tsim_otp_read_rotpk_hash(const struct tsim *t, uint8_t out_hash[32])
{
    if (!t || !out_hash)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (rc)
        return rc;
    if (!t->nv.otp_set)
        return NU_ERR_NOT_FOUND;
    memcpy(out_hash, t->nv.otp_hash, NU_SHA256_LEN);
    return NU_OK;
}

/* ------------------------------------------------------------ OTP */

int tsim_otp_write_rotpk_hash(struct tsim *t, const uint8_t hash[32])
{
    if (!t || !hash)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (rc)
        return rc;
    if (t->nv.locked)
        return NU_ERR_STATE;
    if (t->nv.otp_set) /* fuses are blown: only the same value "writes" again */
        return nu_memeq_ct(t->nv.otp_hash, hash, NU_SHA256_LEN) == 0 ? NU_OK : NU_ERR_STATE;
    struct tsim__nv nv = t->nv;
    memcpy(nv.otp_hash, hash, NU_SHA256_LEN);
    nv.otp_set = 1;
    return tsim__commit(t, &nv);
}

int tsim_otp_write_security_counter(struct tsim *t, uint32_t counter)
{
    if (!t)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (rc)
        return rc;
    if (t->nv.locked || counter < t->nv.otp_counter)
        return NU_ERR_STATE;
    if (counter == t->nv.otp_counter)
        return NU_OK;
    struct tsim__nv nv = t->nv;
    nv.otp_counter = counter;
    return tsim__commit(t, &nv);
}

/* ------------------------------------------------------------ keys and CSRs */

static int tsim__check_cn(const char *cn)
{
    if (!cn || !*cn)
        return NU_ERR_INVALID_ARG;
    size_t len = strnlen(cn, TSIM_CN_MAX + 1);
    if (len > TSIM_CN_MAX)
        return NU_ERR_TOO_LARGE;
    /* The identity alphabet nu_x509_csr_parse_verify() holds CNs to: a chip
     * that signs anything else only produces CSRs the cloud refuses. */
    static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._:@-";
    return strspn(cn, ok) == len ? NU_OK : NU_ERR_INVALID_ARG;
}

/* CSR signed by `key` into out[cap]. TOO_LARGE when it does not fit. */
static int tsim__csr(struct nu_p256_key *key, const char *cn, uint8_t *out, size_t cap,
                     size_t *out_len)
{
    struct nu_signer signer;
    uint8_t *der = NULL;
    size_t len = 0;
    int rc = nu_p256_key_signer(key, &signer);
    /* The chip signs with wolfSSL in software, not a token that may return a
     * wrong signature: no self-check. It would also be a second use of the
     * key on the programmer's socket thread (the simulated chip runs there),
     * for which wolfSSL builds a per-key table the next check pays ~4 ms for. */
    signer.self_verified = 1;
    if (!rc)
        rc = nu_x509_csr_make(&signer, cn, NULL, NULL, &der, &len);
    if (!rc && len > cap)
        rc = NU_ERR_TOO_LARGE;
    if (!rc) {
        memcpy(out, der, len);
        *out_len = len;
    }
    free(der);
    return rc;
}

/* CSR as the chip answers it: with TSIM_FAULT_CSR_WRONG_KEY, for a stranger key. */
static int tsim__answer_csr(struct tsim *t, struct nu_p256_key *key, const char *cn, uint8_t *out,
                            size_t cap, size_t *out_len)
{
    struct nu_p256_key *stranger = NULL;
    int rc = NU_OK;
    if (tsim__fault(t, TSIM_FAULT_CSR_WRONG_KEY)) {
        rc = nu_p256_key_generate(&stranger);
        key = stranger;
    }
    if (!rc)
        rc = tsim__csr(key, cn, out, cap, out_len);
    nu_p256_key_destroy(stranger);
    return rc;
}

/*
 * Generate the device key into *out_key and write secret/key.pem (0600) and
 * pubkey.pem; nv gets the public key. The caller commits nv (which also makes
 * pubkey.pem's name durable): until then the files are orphans that a retry
 * overwrites.
 */
static int tsim__generate_key(struct tsim *t, struct tsim__nv *nv, struct nu_p256_key **out_key)
{
    struct nu_p256_key *key = NULL;
    char path[PATH_MAX], pem[NU_P256_PRIV_PEM_MAX];
    size_t pem_len = 0;
    int rc = nu_p256_key_generate(&key);
    if (!rc)
        rc = nu_p256_key_pub(key, nv->pub);
    if (!rc)
        rc = nu_p256_key_to_pem(key, pem, sizeof(pem), &pem_len);
    if (!rc)
        rc = tsim__put_file(t, "secret/key.pem", pem, pem_len, 0600);
    nu_zero(pem, sizeof(pem));
    if (!rc)
        rc = tsim__file(t, "secret", path, sizeof(path));
    if (!rc && tsim__durable(t))
        rc = tsim__fsync_dir(path); /* key.pem's name, before any state names it */
    if (!rc)
        rc = nu_p256_pub_to_pem(nv->pub, pem, sizeof(pem), &pem_len);
    if (!rc)
        rc = tsim__put_file(t, "pubkey.pem", pem, pem_len, 0644);
    if (rc) {
        nu_p256_key_destroy(key);
        return rc;
    }
    *out_key = key;
    nv->keyed = 1;
    return NU_OK;
}

int tsim_keygen_csr(struct tsim *t, const char *cn, uint8_t *out_csr, size_t cap, size_t *out_len)
{
    if (!t || !out_csr || !out_len)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (!rc)
        rc = tsim__check_cn(cn);
    if (rc)
        return rc;
    if (!t->nv.otp_set || t->nv.keyed || t->nv.locked)
        return NU_ERR_STATE;
    if (tsim__fault(t, TSIM_FAULT_KEYGEN))
        return NU_ERR_TARGET;
    struct tsim__nv nv = t->nv;
    struct nu_p256_key *key = NULL;
    uint8_t csr[NU_X509_CSR_MAX];
    size_t len = 0;
    /* The CSR is made before the commit, so a too-small buffer leaves the chip
     * unkeyed; the orphan key.pem is overwritten by the next attempt. */
    rc = tsim__generate_key(t, &nv, &key);
    if (!rc)
        rc = tsim__answer_csr(t, key, cn, csr, sizeof(csr), &len);
    if (!rc && len > cap)
        rc = NU_ERR_TOO_LARGE;
    if (!rc)
        rc = tsim__commit(t, &nv);
    if (rc) {
        nu_p256_key_destroy(key);
        return rc;
    }
    t->key = key;
    memcpy(out_csr, csr, len);
    *out_len = len;
    return NU_OK;
}

int tsim_csr(struct tsim *t, const char *cn, uint8_t *out_csr, size_t cap, size_t *out_len)
{
    if (!t || !out_csr || !out_len)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (!rc)
        rc = tsim__check_cn(cn);
    if (rc)
        return rc;
    if (!t->nv.keyed || t->nv.locked)
        return NU_ERR_STATE;
    if (tsim__fault(t, TSIM_FAULT_KEYGEN))
        return NU_ERR_TARGET;
    return tsim__answer_csr(t, t->key, cn, out_csr, cap, out_len);
}

/* ------------------------------------------------------------ programming */

/* Programming needs a key on chip and an open chip; it voids the last boot. */
static int tsim__begin_write(const struct tsim *t, struct tsim__nv *nv)
{
    int rc = tsim__link(t);
    if (rc)
        return rc;
    if (!t->nv.keyed || t->nv.locked)
        return NU_ERR_STATE;
    *nv = t->nv;
    nv->programmed = 1;
    nv->boot = TSIM__BOOT_NONE;
    return NU_OK;
}

/* TSIM_FAULT_FLASH_CORRUPT: the weak cell, if in this chunk, keeps a flipped bit. */
static int tsim__corrupt(struct tsim *t, int fd, uint64_t off, const uint8_t *data, size_t len)
{
    if (!tsim__fault(t, TSIM_FAULT_FLASH_CORRUPT))
        return NU_OK;
    if (!t->bad_cell_set && off == 0) {
        t->bad_cell = len / 2;
        t->bad_cell_set = 1;
    }
    if (!t->bad_cell_set || t->bad_cell < off || t->bad_cell >= off + len)
        return NU_OK;
    uint8_t flipped = data[t->bad_cell - off] ^ 0x01;
    return tsim__pwrite_all(fd, &flipped, 1, t->bad_cell);
}

static void tsim__sleep_us(uint64_t us)
{
    struct timespec ts = {.tv_sec = (time_t)(us / 1000000u),
                          .tv_nsec = (long)(us % 1000000u) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

/* Program data at off in image.bin; off 0 erases the flash first. The file
 * stays open for the next chunk: an image is flashed in hundreds of them. */
static int tsim__program(struct tsim *t, uint64_t off, const uint8_t *data, size_t len)
{
    if (off == 0)
        tsim__flash_close(t);
    if (t->flash_fd < 0) {
        char path[PATH_MAX];
        int rc = tsim__file(t, "image.bin", path, sizeof(path));
        if (rc)
            return rc;
        int flags = O_WRONLY | O_CREAT | O_CLOEXEC | (off == 0 ? O_TRUNC : 0);
        t->flash_fd = open(path, flags, 0644);
        if (t->flash_fd < 0)
            return tsim__errno(errno);
    }
    if (off == 0)
        t->flash_len = 0; /* erased, whatever happens next */
    int rc = tsim__pwrite_all(t->flash_fd, data, len, off);
    if (!rc)
        rc = tsim__corrupt(t, t->flash_fd, off, data, len);
    if (rc)
        tsim__flash_close(t);
    if (!rc && off + len > t->flash_len)
        t->flash_len = off + len;
    return rc;
}

int tsim_flash_write(struct tsim *t, uint32_t offset, const uint8_t *data, size_t len)
{
    if (!t || !data || !len)
        return NU_ERR_INVALID_ARG;
    struct tsim__nv nv;
    int rc = tsim__begin_write(t, &nv);
    if (rc)
        return rc;
    if (len > TSIM_IMAGE_MAX || (uint64_t)offset + len > TSIM_IMAGE_MAX)
        return NU_ERR_TOO_LARGE;
    if (offset > t->flash_len)
        return NU_ERR_INVALID_ARG;        /* a gap: flash is programmed in order */
    rc = tsim__commit_if_changed(t, &nv); /* boot voided before the flash changes */
    if (!rc)
        rc = tsim__program(t, offset, data, len);
    if (!rc && t->opts.flash_us_per_kib)
        tsim__sleep_us(((uint64_t)len * t->opts.flash_us_per_kib + 1023u) / 1024u);
    return rc;
}

int tsim_write_boot_key(struct tsim *t, const uint8_t pub[65])
{
    if (!t || !pub)
        return NU_ERR_INVALID_ARG;
    struct tsim__nv nv;
    int rc = tsim__begin_write(t, &nv);
    if (rc)
        return rc;
    if (nu_p256_pub_check(pub) != NU_OK)
        return NU_ERR_DECODE;
    memcpy(nv.boot_key, pub, NU_P256_PUB_LEN);
    nv.boot_key_set = 1;
    return tsim__commit_if_changed(t, &nv);
}

/* A certificate, or a chain of them back to back (leaf first: what an
 * offline-lease chip gets, issue 15), as one PEM file. */
static int tsim__chain_pem(const uint8_t *der, size_t len, char **out, size_t *out_len)
{
    char *all = NULL;
    size_t all_len = 0;
    int rc = NU_OK;
    for (size_t off = 0; !rc && off < len;) {
        size_t one = nu_x509_der_len(der + off, len - off);
        if (one == 0 || (off == 0 && one == len)) { /* one certificate (or not DER): as given */
            free(all);
            return nu_x509_der_to_pem(der, len, NU_X509_PEM_CERT, out, out_len);
        }
        char *pem = NULL;
        size_t pem_len = 0;
        rc = nu_x509_der_to_pem(der + off, one, NU_X509_PEM_CERT, &pem, &pem_len);
        char *grown = rc ? NULL : realloc(all, all_len + pem_len + 1);
        if (!rc && !grown)
            rc = NU_ERR_NOMEM;
        if (!rc) {
            all = grown;
            memcpy(all + all_len, pem, pem_len);
            all_len += pem_len;
            all[all_len] = '\0';
        }
        free(pem);
        off += one;
    }
    if (rc) {
        free(all);
        return rc;
    }
    *out = all;
    *out_len = all_len;
    return NU_OK;
}

int tsim_write_cert(struct tsim *t, const uint8_t *der, size_t len)
{
    if (!t || !der || !len)
        return NU_ERR_INVALID_ARG;
    struct tsim__nv nv;
    int rc = tsim__begin_write(t, &nv);
    if (rc)
        return rc;
    if (len > TSIM_CERT_MAX)
        return NU_ERR_TOO_LARGE;
    char *pem = NULL;
    size_t pem_len = 0;
    rc = tsim__chain_pem(der, len, &pem, &pem_len);
    if (!rc)
        rc = tsim__commit_if_changed(t, &nv);
    if (!rc)
        rc = tsim__put_file(t, "cert.pem", pem, pem_len, 0644);
    if (!rc && tsim__durable(t))
        rc = tsim__fsync_dir(t->dir); /* cert.pem's name */
    free(pem);
    return rc;
}

int tsim_read_cert(const struct tsim *t, uint8_t *out_der, size_t cap, size_t *out_len)
{
    if (!t || !out_der || !out_len)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (rc)
        return rc;
    char path[PATH_MAX];
    uint8_t *pem = NULL, *der = NULL;
    size_t pem_len = 0, der_len = 0;
    rc = tsim__file(t, "cert.pem", path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, 4 * TSIM_CERT_MAX, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_pem_to_der((char *)pem, pem_len, NU_X509_PEM_CERT, &der, &der_len, NULL);
    if (!rc && der_len > cap)
        rc = NU_ERR_TOO_LARGE;
    if (!rc) {
        memcpy(out_der, der, der_len);
        *out_len = der_len;
    }
    free(pem);
    free(der);
    return rc == NU_ERR_IO && access(path, F_OK) != 0 ? NU_ERR_NOT_FOUND : rc;
}

/* ------------------------------------------------------------ secure boot */

/* Make image.bin durable (a reset must not boot what a power cut would lose)
 * and read it. */
static int tsim__read_flash(struct tsim *t, uint8_t **out_img, size_t *out_len)
{
    char path[PATH_MAX];
    int rc = tsim__file(t, "image.bin", path, sizeof(path));
    if (rc)
        return rc;
    int fd = t->flash_fd;
    t->flash_fd = -1;
    if (fd < 0)
        fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return tsim__errno(errno);
    rc = !tsim__durable(t) || fdatasync(fd) == 0 ? NU_OK : NU_ERR_IO;
    if (close(fd) != 0 && !rc)
        rc = NU_ERR_IO;
    if (!rc)
        rc = nu_file_read(path, TSIM_IMAGE_MAX, out_img, out_len);
    return rc;
}

/*
 * The boot ROM: the boot key must hash to the OTP ROTPK hash, and the image
 * must verify with it (MCUboot TLVs: SHA-256, KEYHASH, ECDSA-P256) with a
 * security counter not below the OTP floor. *out_counter gets the image's.
 */
static int tsim__secure_boot(struct tsim *t, uint32_t *out_counter)
{
    uint8_t keyhash[NU_SHA256_LEN], *img = NULL;
    size_t len = 0;
    struct nu_mcuboot_info info;
    if (!t->nv.boot_key_set || !t->nv.otp_set)
        return NU_ERR_BOOT_FAILED;
    int rc = nu_mcuboot_rotpk_hash(t->nv.boot_key, keyhash);
    if (rc)
        return rc;
    if (nu_memeq_ct(keyhash, t->nv.otp_hash, sizeof(keyhash)) != 0) {
        nu_info("tsim %s: secure boot: boot key does not match the OTP hash", t->uid_hex);
        return NU_ERR_BOOT_FAILED;
    }
    rc = tsim__read_flash(t, &img, &len);
    if (rc == NU_ERR_NOT_FOUND) {
        nu_info("tsim %s: secure boot: flash is empty", t->uid_hex);
        return NU_ERR_BOOT_FAILED;
    }
    if (!rc)
        rc = nu_mcuboot_verify(img, len, t->nv.boot_key, t->nv.otp_hash, &info);
    free(img);
    if (rc == NU_ERR_IO || rc == NU_ERR_NOMEM)
        return rc;
    if (rc) {
        nu_info("tsim %s: secure boot: image refused: %s", t->uid_hex, nu_err_name(rc));
        return NU_ERR_BOOT_FAILED;
    }
    if (info.security_counter < t->nv.otp_counter) {
        nu_info("tsim %s: secure boot: security counter %u below the OTP floor %u", t->uid_hex,
                (unsigned)info.security_counter, (unsigned)t->nv.otp_counter);
        return NU_ERR_BOOT_FAILED;
    }
    *out_counter = info.security_counter;
    return NU_OK;
}

int tsim_reset(struct tsim *t)
{
    if (!t)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (rc)
        return rc;
    if (!t->nv.keyed)
        return NU_ERR_STATE;
    uint32_t counter = t->nv.otp_counter;
    int boot = tsim__fault(t, TSIM_FAULT_FAKE_BOOT) ? NU_OK : tsim__secure_boot(t, &counter);
    if (boot != NU_OK && boot != NU_ERR_BOOT_FAILED)
        return boot; /* the simulator's own I/O failed: no verdict */
    struct tsim__nv nv = t->nv;
    nv.boot = boot == NU_OK ? TSIM__BOOT_OK : TSIM__BOOT_FAILED;
    if (boot == NU_OK && counter > nv.otp_counter)
        nv.otp_counter = counter; /* anti-rollback: the floor follows accepted images */
    rc = tsim__commit(t, &nv);
    return rc ? rc : boot;
}

/* ------------------------------------------------------------ attest, lock */

int tsim_attest_digest(const uint8_t uid[TSIM_UID_LEN], const uint8_t nonce[32],
                       uint8_t out_digest[32])
{
    if (!uid || !nonce || !out_digest)
        return NU_ERR_INVALID_ARG;
    uint8_t msg[sizeof(TSIM__ATTEST_LABEL) - 1 + TSIM_UID_LEN + 32];
    size_t label = sizeof(TSIM__ATTEST_LABEL) - 1;
    memcpy(msg, TSIM__ATTEST_LABEL, label);
    memcpy(msg + label, uid, TSIM_UID_LEN);
    memcpy(msg + label + TSIM_UID_LEN, nonce, 32);
    return nu_sha256(msg, sizeof(msg), out_digest);
}

int tsim_attest(struct tsim *t, const uint8_t nonce[32], uint8_t *out_sig, size_t cap,
                size_t *out_len)
{
    if (!t || !nonce || !out_sig || !out_len)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (rc)
        return rc;
    if (!t->nv.keyed || t->nv.boot != TSIM__BOOT_OK)
        return NU_ERR_STATE;
    uint8_t digest[NU_SHA256_LEN], sig[NU_P256_SIG_MAX];
    size_t sig_len = sizeof(sig);
    struct nu_p256_key *wrong = NULL, *key = t->key;
    if (tsim__fault(t, TSIM_FAULT_BAD_ATTEST | TSIM_FAULT_FAKE_BOOT)) {
        rc = nu_p256_key_generate(&wrong);
        key = wrong;
    }
    if (!rc)
        rc = tsim_attest_digest(t->uid, nonce, digest);
    if (!rc)
        rc = nu_p256_key_sign_digest(key, digest, sig, &sig_len);
    if (!rc && sig_len > cap)
        rc = NU_ERR_TOO_LARGE;
    if (!rc) {
        memcpy(out_sig, sig, sig_len);
        *out_len = sig_len;
    }
    nu_p256_key_destroy(wrong);
    return rc;
}

int tsim_lock(struct tsim *t)
{
    if (!t)
        return NU_ERR_INVALID_ARG;
    int rc = tsim__link(t);
    if (rc)
        return rc;
    if (t->nv.locked)
        return NU_OK;
    if (tsim__derive(&t->nv) != TSIM_BOOTED)
        return NU_ERR_STATE;
    struct tsim__nv nv = t->nv;
    nv.locked = 1;
    return tsim__commit(t, &nv);
}

/* ------------------------------------------------------------ feeder */

struct tsim_feeder {
    char *dir;
    uint32_t total;
    struct tsim_opts opts;
    uint32_t fault_every;
    unsigned fault_extra;
    _Atomic uint32_t handed; /* chips taken from the tray (reserved or made) */
    _Atomic uint32_t serial; /* order of successful hand-outs, for fault_every */
};

int tsim_feeder_create(const char *targets_dir, uint32_t total, const struct tsim_opts *opts,
                       struct tsim_feeder **out_f)
{
    if (!targets_dir || !*targets_dir || !out_f)
        return NU_ERR_INVALID_ARG;
    int rc = nu_mkdirs(targets_dir, 0755);
    if (rc)
        return rc;
    struct tsim_feeder *f = calloc(1, sizeof(*f));
    if (!f)
        return NU_ERR_NOMEM;
    f->dir = strdup(targets_dir);
    if (!f->dir) {
        free(f);
        return NU_ERR_NOMEM;
    }
    f->total = total;
    if (opts)
        f->opts = *opts;
    atomic_init(&f->handed, 0);
    atomic_init(&f->serial, 0);
    *out_f = f;
    return NU_OK;
}

int tsim_feeder_set_fault_every(struct tsim_feeder *f, uint32_t every, unsigned faults)
{
    if (!f)
        return NU_ERR_INVALID_ARG;
    f->fault_every = every;
    f->fault_extra = faults;
    return NU_OK;
}

/* Take one chip from the tray; 0 when it is empty. */
static int tsim__feeder_take(struct tsim_feeder *f)
{
    uint32_t h = atomic_load(&f->handed);
    do {
        if (h >= f->total)
            return 0;
    } while (!atomic_compare_exchange_weak(&f->handed, &h, h + 1));
    return 1;
}

int tsim_feeder_next(struct tsim_feeder *f, struct tsim **out_t)
{
    if (!f || !out_t)
        return NU_ERR_INVALID_ARG;
    if (!tsim__feeder_take(f))
        return NU_ERR_NOT_FOUND;
    uint32_t n = atomic_fetch_add(&f->serial, 1) + 1;
    struct tsim_opts opts = f->opts;
    if (f->fault_every && n % f->fault_every == 0)
        opts.faults |= f->fault_extra;
    uint8_t uid[TSIM_UID_LEN];
    int rc = NU_ERR_EXISTS;
    /* 128 random bits do not collide; the retry is for a reused folder. */
    for (int i = 0; i < 4 && rc == NU_ERR_EXISTS; i++) {
        rc = nu_random(uid, sizeof(uid));
        if (!rc)
            rc = tsim_create(f->dir, uid, &opts, out_t);
    }
    if (rc) {
        atomic_fetch_sub(&f->handed, 1); /* the chip goes back to the tray */
        nu_warn("tsim feeder: chip not made: %s", nu_err_name(rc));
    }
    return rc;
}

uint32_t tsim_feeder_remaining(const struct tsim_feeder *f)
{
    if (!f)
        return 0;
    uint32_t h = atomic_load(&((struct tsim_feeder *)f)->handed);
    return h >= f->total ? 0 : f->total - h;
}

void tsim_feeder_destroy(struct tsim_feeder *f)
{
    if (!f)
        return;
    free(f->dir);
    free(f);
}
