#include "station_owners.h"

#include "nu_brokerlist.h"
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_paths.h"

#include <limits.h>
#include <stdio.h>

/* DIR/broker/owners and the line "station programmer" (both ids checked). */
static int owners__line(const char *dir, const char *station, const char *programmer, char *path,
                        size_t path_cap, char *line, size_t line_cap)
{
    if (!dir || nu_envelope_id_check(station) || nu_envelope_id_check(programmer))
        return NU_ERR_INVALID_ARG;
    snprintf(line, line_cap, "%s %s", station, programmer);
    return nu_paths_get(dir, NU_PATH_BROKER_OWNERS, path, path_cap);
}

int station_owners_has(const char *dir, const char *station, const char *programmer)
{
    char path[PATH_MAX], line[2 * NU_ENVELOPE_ID_MAX + 2];
    int rc = owners__line(dir, station, programmer, path, sizeof(path), line, sizeof(line));
    return rc == NU_OK ? nu_brokerlist_file_has(path, line) : -rc;
}

int station_owners_add(const char *dir, const char *station, const char *programmer)
{
    char path[PATH_MAX], line[2 * NU_ENVELOPE_ID_MAX + 2];
    const char *add[] = {line};
    struct nu_brokerlist_edit e = {.add = add, .n_add = 1};
    int rc = owners__line(dir, station, programmer, path, sizeof(path), line, sizeof(line));
    return rc == NU_OK ? nu_brokerlist_edit(path, &e) : rc;
}
