/*
 * station_owners — the broker's ownership table DIR/broker/owners (lines
 * "station programmer", read by the nusec_auth plugin, broker/README.md): a
 * station may publish on nusec/v1/prog/{p}/cmd only for the programmers it
 * owns there.
 *
 * Edits are read-modify-write under an exclusive flock on DIR/broker/owners.lock
 * (the same lock the cloud agent takes when an enrollment sets the owner), and
 * the new content replaces the file atomically (nu_file_write_atomic), so the
 * plugin, which re-reads the file when it changes, never sees half a file and
 * two writers never lose each other's lines.
 */
#ifndef STATION_OWNERS_H
#define STATION_OWNERS_H

/*
 * Make `station` own `programmer`: append the line unless an equivalent line
 * (same two identifiers, any blanks) is already there. Other lines, comments
 * included, are kept as they are. A missing file is created (0644).
 * Errors: INVALID_ARG (an id is not an identifier), TOO_LARGE (file over
 * 1 MiB), IO, PERMISSION, NOMEM.
 */
int station_owners_add(const char *dir, const char *station, const char *programmer);

/*
 * 1 when the table of `dir` has the line "station programmer", 0 when not
 * (or the file is missing); negative NU_ERR_* on read errors.
 */
int station_owners_has(const char *dir, const char *station, const char *programmer);

#endif
