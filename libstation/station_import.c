#include "station_import.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int import__copy_path(const char *dir, const struct station_pkg *pkg, char *out, size_t cap)
{
    char folder[PATH_MAX], hex[2 * STATION_PKG_ID_LEN + 1];
    int rc = nu_paths_get(dir, NU_PATH_STATION, folder, sizeof(folder));
    if (rc == NU_OK)
        rc = nu_path_fmt(folder + strlen(folder), sizeof(folder) - strlen(folder), "/packages");
    if (rc == NU_OK)
        rc = nu_mkdirs(folder, 0700);
    if (rc == NU_OK)
        rc = nu_hex_encode(pkg->package_id, STATION_PKG_ID_LEN, hex, sizeof(hex));
    if (rc == NU_OK)
        rc = nu_path_fmt(out, cap, "%s/%s.nspkg", folder, hex);
    return rc;
}

int station_import(const char *dir, struct station_db *db,
                   const uint8_t signer_pub[NU_P256_PUB_LEN], const char *path, uint64_t now_ms,
                   struct station_pkg *out_pkg, int *out_conflict)
{
    char copy[PATH_MAX];
    uint8_t *buf = NULL;
    size_t len = 0;
    int conflict = STATION_IMPORT_NEW;
    if (out_conflict)
        *out_conflict = STATION_IMPORT_NEW;
    if (!dir || !db || !signer_pub || !path || !out_pkg)
        return NU_ERR_INVALID_ARG;
    int rc = station_pkg_read(path, signer_pub, now_ms, out_pkg, &buf, &len);
    if (rc != NU_OK)
        return rc;
    /* Checked before the copy so a duplicate never touches the folder; the
     * insert checks again inside its transaction. */
    rc = station_db_package_find(db, out_pkg->package_id, out_pkg->job_id, out_pkg->programmer_id,
                                 &conflict);
    if (rc == NU_OK)
        rc = NU_ERR_EXISTS;
    else if (rc == NU_ERR_NOT_FOUND)
        rc = import__copy_path(dir, out_pkg, copy, sizeof(copy));
    /* No row names this file (checked above): a leftover of a crash is replaced. */
    if (rc == NU_OK)
        rc = nu_file_write_atomic(copy, buf, len, 0600);
    if (rc == NU_OK) {
        rc = station_db_package_add(db, out_pkg, copy, now_ms, &conflict);
        if (rc != NU_OK)
            unlink(copy);
    }
    free(buf);
    if (out_conflict)
        *out_conflict = rc == NU_ERR_EXISTS ? conflict : STATION_IMPORT_NEW;
    if (rc == NU_OK)
        nu_info("package for %s/%s imported", out_pkg->job_id, out_pkg->programmer_id);
    return rc;
}
