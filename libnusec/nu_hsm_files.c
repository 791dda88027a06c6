/*
 * nu_hsm_files — the file side of nu_hsm (nu_hsm.h): the default module's
 * path, PIN files, the embedded SoftHSM2 configuration and the PIN length a
 * token accepts. Its own file because none of it opens a module or a
 * session; nu_hsm.c is the PKCS#11 side.
 */
#include "nu_hsm.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <p11-kit/pkcs11.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef NUSEC_SOFTHSM_MODULE
#define NUSEC_SOFTHSM_MODULE "/usr/lib/softhsm/libsofthsm2.so"
#endif

const char *nu_hsm_default_module(void)
{
    return NUSEC_SOFTHSM_MODULE;
}

/* Strip one trailing "\n" or "\r\n" that editors and `echo` add. */
static size_t hsm__chomp(char *buf, size_t n)
{
    if (n > 0 && buf[n - 1] == '\n')
        n--;
    if (n > 0 && buf[n - 1] == '\r')
        n--;
    buf[n] = '\0';
    return n;
}

/*
 * Read the PIN file through one descriptor: the mode and owner checked by
 * fstat are those of the very file read (no stat-then-open race), and
 * O_NOFOLLOW refuses a symlink planted in place of the file. This is why
 * nu_file_read() is not used here.
 */
static int hsm__pin_file(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    if (fd < 0)
        return errno == ENOENT ? NU_ERR_NOT_FOUND : NU_ERR_PERMISSION;
    int rc = NU_OK;
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = NU_ERR_IO;
        goto out;
    }
    mode_t mode = st.st_mode & 07777;
    if ((mode != 0600 && mode != 0400) || st.st_uid != geteuid()) {
        nu_error("hsm: PIN file %s has mode %04o (uid %u): must be 0600 or 0400 and ours", path,
                 (unsigned)mode, (unsigned)st.st_uid);
        rc = NU_ERR_PERMISSION;
        goto out;
    }
    char tmp[NU_HSM_PIN_MAX + 3]; /* PIN, "\r\n", NUL */
    if ((size_t)st.st_size >= sizeof(tmp)) {
        rc = NU_ERR_TOO_LARGE;
        goto out;
    }
    ssize_t n = read(fd, tmp, sizeof(tmp) - 1);
    size_t len = n < 0 ? 0 : hsm__chomp(tmp, (size_t)n);
    if (n < 0)
        rc = NU_ERR_IO;
    else if (len >= cap)
        rc = NU_ERR_TOO_LARGE;
    else
        memcpy(buf, tmp, len + 1);
    nu_zero(tmp, sizeof(tmp));
out:
    close(fd);
    return rc;
}

int nu_hsm_pin_load(const char *path, char *buf, size_t cap)
{
    if (!buf || cap == 0)
        return NU_ERR_INVALID_ARG;
    if (cap > NU_HSM_PIN_MAX + 1)
        cap = NU_HSM_PIN_MAX + 1;
    int rc = NU_OK;
    if (path) {
        rc = hsm__pin_file(path, buf, cap);
    } else {
        const char *env = getenv("NUSEC_HSM_PIN");
        if (!env)
            rc = NU_ERR_NOT_FOUND;
        else if (strlen(env) >= cap)
            rc = NU_ERR_TOO_LARGE;
        else
            memcpy(buf, env, strlen(env) + 1);
    }
    if (rc == NU_OK && buf[0] == '\0')
        rc = NU_ERR_CONFIG;
    if (rc != NU_OK)
        nu_zero(buf, cap);
    return rc;
}

int nu_hsm_softhsm_write_conf(const char *dir, char *out_path, size_t cap)
{
    char tokens[PATH_MAX], text[PATH_MAX + 256];
    if (!dir || !*dir || !out_path || cap == 0)
        return NU_ERR_INVALID_ARG;
    int rc = nu_path_fmt(tokens, sizeof(tokens), "%s/hsm/tokens", dir);
    if (rc == NU_OK)
        rc = nu_path_fmt(out_path, cap, "%s/hsm/softhsm2.conf", dir);
    if (rc == NU_OK)
        rc = nu_mkdirs(tokens, 0700);
    if (rc == NU_OK)
        rc = nu_path_fmt(text, sizeof(text),
                         "# written by NuSEC: the embedded default HSM\n"
                         "directories.tokendir = %s\n"
                         "objectstore.backend = file\n"
                         "log.level = ERROR\n"
                         "slots.removable = false\n",
                         tokens);
    if (rc == NU_OK)
        rc = nu_file_write_atomic(out_path, text, strlen(text), 0600);
    return rc;
}

int nu_hsm_pin_len_check(const struct nu_hsm_token_info *info, size_t len)
{
    if (!info)
        return NU_ERR_INVALID_ARG;
    /* 0 or CK_UNAVAILABLE_INFORMATION as a maximum means "no stated limit". */
    unsigned long max = info->max_pin_len;
    int no_max = max == 0 || max == (unsigned long)CK_UNAVAILABLE_INFORMATION;
    if (len < info->min_pin_len || (!no_max && len > max)) {
        nu_error("hsm: token '%s' accepts PINs of %lu to %lu characters, not %zu", info->label,
                 info->min_pin_len, max, len);
        return NU_ERR_CONFIG;
    }
    return NU_OK;
}
