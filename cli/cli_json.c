/* cli_json — nusec's --json convention: the failure line, escaped strings (cli_json.h). */
#include "cli_json.h"

#include "cli.h"

#include "nu_err.h"
#include "nu_json.h"

#include <stdlib.h>
#include <string.h>

/* The one process-wide state of nusec: see cli_json.h for why. */
static struct {
    int on;
    int code; /* -1: none recorded */
    char message[512];
} cli__json = {0, -1, ""};

void cli_json_init(int argc, char **argv)
{
    cli__json.on = 0;
    cli__json.code = -1;
    cli__json.message[0] = '\0';
    for (int i = 1; i < argc && strcmp(argv[i], "--") != 0; i++) {
        if (strcmp(argv[i], "--json") == 0)
            cli__json.on = 1;
    }
}

int cli_json_on(void)
{
    return cli__json.on;
}

/* The code of the last "(NAME)" in a message, as cli_fail and most call
 * sites print them ("op: text (NAME): detail"); -1 when it names none. */
static int cli__json_code_of(const char *message)
{
    int code = -1;
    for (const char *p = strchr(message, '('); p; p = strchr(p + 1, '(')) {
        size_t len = strspn(p + 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZ_");
        char name[64];
        if (len == 0 || len >= sizeof(name) || p[1 + len] != ')')
            continue;
        memcpy(name, p + 1, len);
        name[len] = '\0';
        if (nu_err_from_name(name) >= 0)
            code = nu_err_from_name(name);
    }
    return code;
}

void cli_json_note(int nu_code, const char *message)
{
    int code = nu_code >= 0 ? nu_code : cli__json_code_of(message);
    if (code < 0 && cli__json.code >= 0)
        return; /* keep the message that named the error */
    cli__json.code = code;
    snprintf(cli__json.message, sizeof(cli__json.message), "%s", message);
}

void cli_json_finish(int exit_code)
{
    if (cli__json.on && exit_code != CLI_EXIT_OK) {
        int code = cli__json.code;
        if (code < 0)
            code = exit_code == CLI_EXIT_USAGE     ? NU_ERR_INVALID_ARG
                   : exit_code == CLI_EXIT_REFUSED ? NU_ERR_EXISTS
                                                   : NU_ERR_INTERNAL;
        const char *message = cli__json.message[0]          ? cli__json.message
                              : exit_code == CLI_EXIT_USAGE ? "usage error (see --help)"
                                                            : nu_err_str(code);
        printf("{\"error\":{\"code\":%d,\"name\":\"%s\",\"message\":", code, nu_err_name(code));
        cli_json_fstr(stdout, message);
        fputs("}}\n", stdout);
    }
    fflush(stdout);
}

void cli_json_fstr(FILE *f, const char *s)
{
    size_t n = s ? strlen(s) : 0;
    size_t cap = 6 * n + 3; /* every byte as \u00XX, the quotes, the NUL */
    char *buf = malloc(cap);
    struct nu_json j;
    if (!buf) {
        fputs("\"\"", f); /* out of memory: still valid JSON */
        return;
    }
    nu_json_init(&j, buf, cap);
    nu_json_strn(&j, NULL, s, n);
    fwrite(buf, 1, j.len, f);
    free(buf);
}

void cli_json_fkv(FILE *f, const char *key, const char *value, int first)
{
    fprintf(f, "%s\"%s\":", first ? "" : ",", key);
    cli_json_fstr(f, value);
}
