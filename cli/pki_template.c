/* Template filling and port picking for pki_init (no crypto here). */
#include "pki_init.h"

#include "nu_err.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Placeholder names are short upper-case words; anything else is literal text. */
#define PKI__NAME_MAX 32

static const char *pki__lookup(const char *const *vars, const char *name, size_t len)
{
    for (const char *const *v = vars; v[0]; v += 2) {
        if (strlen(v[0]) == len && memcmp(v[0], name, len) == 0)
            return v[1];
    }
    return NULL;
}

/* Length of a placeholder name at p ("NAME@"), or 0 if p does not start one. */
static size_t pki__name_len(const char *p)
{
    size_t n = 0;
    while (n < PKI__NAME_MAX && ((p[n] >= 'A' && p[n] <= 'Z') || p[n] == '_'))
        n++;
    return (n > 0 && p[n] == '@') ? n : 0;
}

int pki_fill_template(const char *tmpl, const char *const *vars, char **out)
{
    if (!tmpl || !vars || !out)
        return NU_ERR_INVALID_ARG;
    *out = NULL;

    /* Two passes: size, then copy; values are trusted (we built them). */
    for (int pass = 0; pass < 2; pass++) {
        size_t len = 0;
        for (const char *p = tmpl; *p;) {
            size_t n = (*p == '@') ? pki__name_len(p + 1) : 0;
            if (!n) {
                if (pass)
                    (*out)[len] = *p;
                len++;
                p++;
                continue;
            }
            const char *value = pki__lookup(vars, p + 1, n);
            if (!value) {
                free(*out);
                *out = NULL;
                return NU_ERR_CONFIG;
            }
            size_t vlen = strlen(value);
            if (pass)
                memcpy(*out + len, value, vlen);
            len += vlen;
            p += n + 2;
        }
        if (pass) {
            (*out)[len] = 0;
        } else if (!(*out = malloc(len + 1))) {
            return NU_ERR_NOMEM;
        }
    }
    return NU_OK;
}

int pki_free_port(const char *host, int *out_port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    if (!host || !out_port || inet_pton(AF_INET, host, &sa.sin_addr) != 1)
        return NU_ERR_INVALID_ARG;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return NU_ERR_IO;
    socklen_t sl = sizeof(sa);
    int rc = NU_ERR_IO;
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &sl) == 0) {
        *out_port = ntohs(sa.sin_port);
        rc = NU_OK;
    }
    close(fd);
    return rc;
}
