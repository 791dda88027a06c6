/* leakscan: see leakscan.h. */
#define _GNU_SOURCE /* memmem, nftw */
#include "leakscan.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_util.h"

#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wolfssl/options.h>
#include <wolfssl/wolfcrypt/coding.h>

#define LS_MAX 512

static struct {
    uint8_t bytes[128];
    size_t len;
} ls_needle[LS_MAX];
static size_t ls_n;
static unsigned ls_hits, ls_files;
static int ls_keys;

void ls_reset(void)
{
    ls_n = 0;
}

size_t ls_needles(void)
{
    return ls_n;
}

static void ls__add(const void *p, size_t len)
{
    if (ls_n < LS_MAX && len <= sizeof(ls_needle[0].bytes)) {
        memcpy(ls_needle[ls_n].bytes, p, len);
        ls_needle[ls_n++].len = len;
    }
}

int ls_add_key_pem(const char *pem, size_t len)
{
    char body[1024], hex[65];
    size_t bl = 0;
    for (const char *p = pem, *end = pem + len; p < end;) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t ll = nl ? (size_t)(nl - p) : (size_t)(end - p);
        if (ll && p[0] != '-') {
            if (ll >= 40)
                ls__add(p, ll);
            if (bl + ll < sizeof(body)) {
                memcpy(body + bl, p, ll);
                bl += ll;
            }
        }
        p += ll + 1;
    }
    uint8_t der[512];
    word32 dl = sizeof(der);
    /* ECPrivateKey: 30 77 02 01 01 04 20 <d> */
    if (Base64_Decode((const byte *)body, (word32)bl, der, &dl) != 0 || dl < 39 || der[5] != 4 ||
        der[6] != 32)
        return -1;
    ls__add(der + 7, 32);
    nu_hex_encode(der + 7, 32, hex, sizeof(hex));
    ls__add(hex, 64);
    for (int i = 0; i < 64; i++)
        hex[i] = (char)(hex[i] >= 'a' ? hex[i] - 32 : hex[i]);
    ls__add(hex, 64);
    return 0;
}

int ls_add_keystore(const char *pdir, const char *name)
{
    char path[700];
    uint8_t *file = NULL, *huk = NULL, kek[32], aad[80];
    size_t len = 0, hl = 0, nl = strlen(name);
    int keys = -1;
    snprintf(path, sizeof(path), "%s/keystore.bin", pdir);
    if (nu_file_read(path, 1 << 20, &file, &len) != NU_OK || len < 64 || nl > 64)
        goto out;
    snprintf(path, sizeof(path), "%s/huk", pdir);
    if (nu_file_read(path, 64, &huk, &hl) != NU_OK)
        goto out;
    size_t body = len - 48 - 16;
    memcpy(aad, "NKS1", 4);
    memcpy(aad + 4, name, nl);
    if (nu_hkdf_sha256(huk, hl, file + 4, 32, (const uint8_t *)"nusec/v1 keystore", 17, kek, 32) !=
            NU_OK ||
        nu_aes256gcm_decrypt(kek, file + 36, aad, 4 + nl, file + 48, body, file + 48,
                             file + 48 + body) != NU_OK)
        goto out;
    keys = 0;
    for (uint8_t *p = file + 48, *end = file + 48 + body; p + 6 <= end;) {
        uint8_t type = p[0], n = p[1];
        size_t dl = ((size_t)p[2 + n] << 24) | ((size_t)p[3 + n] << 16) | ((size_t)p[4 + n] << 8) |
                    p[5 + n];
        if (type == 1 && ls_add_key_pem((const char *)p + 6 + n, dl) == 0)
            keys++;
        p += 6 + n + dl;
    }
out:
    free(file);
    free(huk);
    return keys;
}

static int ls__device(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)f;
    if (flag == FTW_F && strstr(path, "/secret/key.pem")) {
        uint8_t *pem = NULL;
        size_t len = 0;
        if (nu_file_read(path, 4096, &pem, &len) == NU_OK &&
            ls_add_key_pem((const char *)pem, len) == 0)
            ls_keys++;
        free(pem);
    }
    return 0;
}

int ls_add_device_keys(const char *root)
{
    ls_keys = 0;
    return nftw(root, ls__device, 16, FTW_PHYS) == 0 ? ls_keys : -1;
}

static int ls__scan(const char *path, const struct stat *st, int flag, struct FTW *f)
{
    (void)st, (void)f;
    if (flag != FTW_F || strstr(path, "/keystore.bin") || strstr(path, "/secret/"))
        return 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    if (nu_file_read(path, NU_FILE_MAX, &buf, &len) != NU_OK)
        return 0;
    ls_files++;
    for (size_t i = 0; i < ls_n; i++) {
        if (len >= ls_needle[i].len && memmem(buf, len, ls_needle[i].bytes, ls_needle[i].len)) {
            fprintf(stderr, "private key material in %s\n", path);
            ls_hits++;
        }
    }
    free(buf);
    return 0;
}

unsigned ls_scan(const char *root, unsigned *out_scanned)
{
    ls_hits = ls_files = 0;
    nftw(root, ls__scan, 16, FTW_PHYS);
    if (out_scanned)
        *out_scanned = ls_files;
    return ls_hits;
}
