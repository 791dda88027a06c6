/* pg_fixture — see pg_fixture.h. */
#include "pg_fixture.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "nu_test.h"

#define PG_FIXTURE_SCRIPT NUSEC_SOURCE_DIR "/tests/integration/pg/pg_cluster.sh"

static int pg_fixture__read_env(struct pg_fixture *f, const char *path)
{
    char line[1200];
    FILE *fp = fopen(path, "r");
    if (!fp)
        return -1;
    while (fgets(line, sizeof line, fp)) {
        line[strcspn(line, "\n")] = '\0';
        if (!strncmp(line, "PGHOST=", 7)) {
            if (strlen(line + 7) >= sizeof f->host)
                break;
            memcpy(f->host, line + 7, strlen(line + 7) + 1);
        }
        else if (!strncmp(line, "PGPORT=", 7))
            f->port = atoi(line + 7);
    }
    fclose(fp);
    return f->host[0] && f->port > 0 ? 0 : -1;
}

int pg_fixture_start(struct pg_fixture *f)
{
    const char *host = getenv("NUSEC_PG_HOST"), *port_file = getenv("NUSEC_PG_PORT_FILE");
    char env[700];
    FILE *fp;

    memset(f, 0, sizeof *f);
    if (host && *host && port_file && (fp = fopen(port_file, "r"))) {
        snprintf(f->host, sizeof f->host, "%s", host);
        if (fscanf(fp, "%d", &f->port) != 1)
            f->port = 0;
        fclose(fp);
        if (f->port <= 0)
            return -1;
    } else {
        if (nu_test_tmpdir("pg", f->dir, sizeof f->dir) != 0)
            return -1;
        snprintf(env, sizeof env, "%s/env", f->dir);
        if (nu_test_sh("'%s' start '%s' > '%s'", PG_FIXTURE_SCRIPT, f->dir, env) != 0 ||
            pg_fixture__read_env(f, env) != 0) {
            fprintf(stderr, "pg_fixture: cannot start PostgreSQL in %s\n", f->dir);
            return -1;
        }
    }
    snprintf(f->owner_uri, sizeof f->owner_uri,
             "postgresql://nusec_owner@/postgres?host=%s&port=%d", f->host, f->port);
    return 0;
}

void pg_fixture_stop(struct pg_fixture *f)
{
    if (!f->dir[0])
        return;
    (void)nu_test_sh("'%s' stop '%s'", PG_FIXTURE_SCRIPT, f->dir);
    nu_test_rmtree(f->dir);
    f->dir[0] = '\0';
}

int pg_fixture_psql(struct pg_fixture *f, const char *db, const char *sql)
{
    return nu_test_sh("psql -X -q -v ON_ERROR_STOP=1 'postgresql://nusec_owner@/%s?host=%s&port=%d'"
                      " -c \"%s\" >/dev/null",
                      db, f->host, f->port, sql);
}

static int pg_fixture__name_ok(const char *name)
{
    for (const char *p = name; *p; p++)
        if (!((*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_'))
            return 0;
    return *name != '\0';
}

int pg_fixture_db_reset(struct pg_fixture *f, const char *name, char *out, size_t cap)
{
    if (!pg_fixture__name_ok(name) ||
        pg_fixture_psql(f, name, "DROP SCHEMA public CASCADE; CREATE SCHEMA public") != 0)
        return -1;
    snprintf(out, cap, "postgresql://nusec_owner@/%s?host=%s&port=%d", name, f->host, f->port);
    return 0;
}

int pg_fixture_db(struct pg_fixture *f, const char *name, char *out, size_t cap)
{
    char sql[200];
    if (!pg_fixture__name_ok(name))
        return -1;
    snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", name);
    if (pg_fixture_psql(f, "postgres", sql) != 0)
        return -1;
    snprintf(sql, sizeof sql, "CREATE DATABASE %s", name);
    if (pg_fixture_psql(f, "postgres", sql) != 0)
        return -1;
    snprintf(out, cap, "postgresql://nusec_owner@/%s?host=%s&port=%d", name, f->host, f->port);
    return 0;
}
