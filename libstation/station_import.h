/*
 * station_import — `nusec package import`: admit one .nspkg into the
 * station. The package must be intact (package key signature), of a known
 * format, not expired, and new: neither its package id nor its job +
 * programmer pair may already be in station.db. Admitted packages are copied
 * to DIR/station/packages/<package id hex>.nspkg (0600) and recorded; the
 * station delivers that copy, so the operator's file can go away.
 *
 * A refused package changes nothing (no row, no file).
 */
#ifndef STATION_IMPORT_H
#define STATION_IMPORT_H

#include "station_db.h"
#include "station_pkg.h"

#include <stdint.h>

/* Why a duplicate was refused (station_import's *out_conflict). */
enum station_import_conflict {
    STATION_IMPORT_NEW = 0,
    STATION_IMPORT_SAME_PACKAGE = 1,   /* this package id is already imported */
    STATION_IMPORT_SAME_ALLOCATION = 2 /* the job already has a package for this programmer */
};

/*
 * Import the file at `path` into the station of `dir` (database `db`),
 * verifying it with the package signing key `signer_pub` at now_ms.
 * out_pkg (required) receives what station_pkg_read() read; out_conflict
 * (may be NULL) says which duplicate rule refused it.
 * Errors: those of station_pkg_read() (TAMPERED, EXPIRED, DECODE, ...),
 * EXISTS (duplicate), STATE (the job is already done), IO / PERMISSION
 * (copy), DB.
 */
int station_import(const char *dir, struct station_db *db,
                   const uint8_t signer_pub[NU_P256_PUB_LEN], const char *path, uint64_t now_ms,
                   struct station_pkg *out_pkg, int *out_conflict);

#endif
