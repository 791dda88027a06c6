/* cli_stack_pg — see cli_stack_pg.h. */
#include "cli_stack_pg.h"

#include "cli.h"
#include "ledger.h"
#include "nu_config.h"
#include "nu_err.h"
#include "nu_util.h"

#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#define STACK_PG_BIN "/usr/lib/postgresql/15/bin"
#define STACK_PG_PORT 5433 /* the socket's name only: nothing listens on TCP */

static int stack_pg__sh(const char *log, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Run a shell command as the cluster's user; its output goes to LOG. */
static int stack_pg__sh(const char *log, const char *fmt, ...)
{
    char inner[3 * PATH_MAX], cmd[4 * PATH_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(inner, sizeof inner, fmt, ap);
    va_end(ap);
    if (geteuid() == 0)
        snprintf(cmd, sizeof cmd, "runuser -u postgres -- %s >>'%s' 2>&1", inner, log);
    else
        snprintf(cmd, sizeof cmd, "%s >>'%s' 2>&1", inner, log);
    int st = system(cmd);
    return st == 0 ? NU_OK : NU_ERR_IO;
}

/* Paths are pasted into shell commands between single quotes. */
static int stack_pg__paths(const char *dir, char *pg, char *data, char *run, char *log)
{
    if (strchr(dir, '\'') || strlen(dir) > PATH_MAX - 64)
        return NU_ERR_CONFIG;
    snprintf(pg, PATH_MAX, "%s/postgres", dir);
    snprintf(data, PATH_MAX, "%s/postgres/data", dir);
    snprintf(run, PATH_MAX, "%s/postgres/run", dir);
    snprintf(log, PATH_MAX, "%s/postgres/postgres.log", dir);
    return NU_OK;
}

int stack_pg_exists(const char *dir)
{
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/postgres/data/PG_VERSION", dir);
    return nu_path_exists(path);
}

static int stack_pg__initdb(const char *pg, const char *data, const char *run, const char *log)
{
    char conf[PATH_MAX + 32], text[PATH_MAX + 256];
    int rc = NU_OK;

    if (mkdir(pg, 0700) != 0 && !nu_path_exists(pg))
        return NU_ERR_IO;
    (void)mkdir(run, 0700);
    if (geteuid() == 0 && system("id postgres >/dev/null 2>&1") == 0) {
        int n = snprintf(text, sizeof text, "chown postgres: '%s' '%s'", pg, run);
        if (n < 0 || (size_t)n >= sizeof text || system(text) != 0)
            return NU_ERR_IO;
    }
    snprintf(conf, sizeof conf, "%s/PG_VERSION", data);
    if (!nu_path_exists(conf))
        rc = stack_pg__sh(log, STACK_PG_BIN "/initdb -D '%s' -U nusec_owner --auth-local=trust"
                               " --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8",
                          data);
    if (rc != NU_OK) {
        cli_errorf("stack up: initdb failed (see %s)", log);
        return rc;
    }
    snprintf(conf, sizeof conf, "%s/postgresql.auto.conf", data);
    snprintf(text, sizeof text,
             "listen_addresses = ''\nport = %d\nunix_socket_directories = '%s'\n", STACK_PG_PORT,
             run);
    /* ALTER SYSTEM's file: rewritten whole, so a restart keeps one copy;
     * owned by the cluster's user, who must read it. */
    if (nu_file_write_atomic(conf, text, strlen(text), 0600) != NU_OK)
        return NU_ERR_IO;
    struct passwd *pw = geteuid() == 0 ? getpwnam("postgres") : NULL;
    if (pw && chown(conf, pw->pw_uid, pw->pw_gid) != 0)
        return NU_ERR_IO;
    return NU_OK;
}

/* Append or replace `ledger = URI` in DIR/cloud/cloud.conf. */
static int stack_pg__point_cloud(const char *dir, const char *uri)
{
    char path[PATH_MAX], line[1200];
    uint8_t *old = NULL;
    size_t len = 0;
    int rc;

    snprintf(path, sizeof path, "%s/cloud/cloud.conf", dir);
    if (nu_path_exists(path) && (rc = nu_file_read(path, 1 << 20, &old, &len)) != NU_OK)
        return rc;
    size_t cap = len + sizeof line + 1, used = 0;
    char *out = malloc(cap);
    if (!out) {
        free(old);
        return NU_ERR_NOMEM;
    }
    /* Keep every line but an earlier `ledger =`; the new one goes last. */
    for (size_t i = 0; i < len;) {
        size_t n = strcspn((const char *)old + i, "\n");
        const char *l = (const char *)old + i;
        size_t k = 0;
        while (k < n && (l[k] == ' ' || l[k] == '\t'))
            k++;
        int is_ledger = n - k >= 6 && !strncmp(l + k, "ledger", 6) &&
                        (n - k == 6 || l[k + 6] == ' ' || l[k + 6] == '=');
        if (!is_ledger) {
            memcpy(out + used, l, n);
            used += n;
            out[used++] = '\n';
        }
        i += n + (i + n < len);
    }
    int w = snprintf(line, sizeof line, "ledger = %s\n", uri);
    memcpy(out + used, line, (size_t)w);
    used += (size_t)w;
    rc = nu_file_write_atomic(path, out, used, 0600);
    free(out);
    free(old);
    return rc;
}

int stack_pg_up(const char *dir)
{
    char pg[PATH_MAX], data[PATH_MAX], run[PATH_MAX], log[PATH_MAX];
    char owner[PATH_MAX + 128], agent[PATH_MAX + 128];
    int rc = stack_pg__paths(dir, pg, data, run, log);

    if (rc != NU_OK)
        return rc;
    if (!nu_path_exists(STACK_PG_BIN "/initdb")) {
        cli_errorf("stack up: no PostgreSQL 15 at " STACK_PG_BIN " (apt-get install postgresql)");
        return NU_ERR_NOT_FOUND;
    }
    if ((rc = stack_pg__initdb(pg, data, run, log)) != NU_OK)
        return rc;
    if (stack_pg__sh(log, STACK_PG_BIN "/pg_ctl -D '%s' status", data) != NU_OK &&
        (rc = stack_pg__sh(log, STACK_PG_BIN "/pg_ctl -D '%s' -l '%s/server.log' -w -t 60 start",
                           data, pg)) != NU_OK) {
        /* server.log is written by the cluster's user, postgres.log by us. */
        cli_errorf("stack up: PostgreSQL did not start (see %s and %s/server.log)", log, pg);
        return rc;
    }
    snprintf(owner, sizeof owner, "postgresql://nusec_owner@/postgres?host=%s&port=%d", run,
             STACK_PG_PORT);
    /* The database and the agents' role, created once (psql: the owner's tool). */
    char cmd[3 * PATH_MAX];
    snprintf(cmd, sizeof cmd,
             "psql -X -q '%s' -c \"SELECT 1 FROM pg_database WHERE datname = 'nusec'\" -tA |"
             " grep -q 1 || psql -X -q '%s' -c 'CREATE DATABASE nusec'",
             owner, owner);
    if (system(cmd) != 0)
        return NU_ERR_IO;
    snprintf(cmd, sizeof cmd,
             "psql -X -q '%s' -c \"DO \\$\\$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE"
             " rolname = 'nusec_agent') THEN CREATE ROLE nusec_agent LOGIN; END IF; END \\$\\$\"",
             owner);
    if (system(cmd) != 0)
        return NU_ERR_IO;
    snprintf(owner, sizeof owner, "postgresql://nusec_owner@/nusec?host=%s&port=%d", run,
             STACK_PG_PORT);
    if ((rc = cloud_ledger_init(owner, NULL, "nusec_agent")) != NU_OK)
        return rc;
    snprintf(agent, sizeof agent, "postgresql://nusec_agent@/nusec?host=%s&port=%d", run,
             STACK_PG_PORT);
    if ((rc = stack_pg__point_cloud(dir, agent)) != NU_OK)
        return rc;
    printf("%-10s PostgreSQL 15 in %s, ledger %s\n", "postgres", pg, agent);
    return NU_OK;
}

int stack_pg_down(const char *dir)
{
    char pg[PATH_MAX], data[PATH_MAX], run[PATH_MAX], log[PATH_MAX];
    if (stack_pg__paths(dir, pg, data, run, log) != NU_OK || !stack_pg_exists(dir))
        return NU_OK;
    if (stack_pg__sh(log, STACK_PG_BIN "/pg_ctl -D '%s' status", data) != NU_OK)
        return NU_OK; /* not running */
    int rc = stack_pg__sh(log, STACK_PG_BIN "/pg_ctl -D '%s' -m fast -w -t 60 stop", data);
    if (rc == NU_OK)
        printf("%-10s stopped\n", "postgres");
    return rc;
}

int stack_pg_is_uri(const char *ledger)
{
    return ledger && (!strncmp(ledger, "postgresql://", 13) || !strncmp(ledger, "postgres://", 11));
}

int stack_pg_point(const char *dir, const char *uri)
{
    const char *start = strstr(uri, "://") + 3;
    const char *at = strchr(start, '@'), *slash = strchr(start, '/');
    /* user:password@ before the host part: refused, as the agent would. */
    if (at && (!slash || at < slash) && memchr(start, ':', (size_t)(at - start))) {
        cli_errorf("stack up: no password in --ledger (use a 0600 PGPASSFILE)");
        return NU_ERR_INVALID_ARG;
    }
    if (strlen(uri) > 1000) {
        cli_errorf("stack up: --ledger URI too long");
        return NU_ERR_INVALID_ARG;
    }
    int rc = stack_pg__point_cloud(dir, uri);
    if (rc == NU_OK)
        printf("%-10s ledger %s\n", "postgres", uri);
    return rc;
}
