/*
 * station_owners — the broker's ownership table DIR/broker/owners (lines
 * "station programmer", read by the nusec_auth plugin, broker/README.md): a
 * station may publish on nusec/v1/prog/{p}/cmd only for the programmers it
 * owns there.
 *
 * The file's format, lock and atomic rewrite are nu_brokerlist's (libnusec),
 * the one module every writer and the plugin's parser go through: two
 * writers never lose each other's lines, the plugin never sees half a file.
 */
#ifndef STATION_OWNERS_H
#define STATION_OWNERS_H

/*
 * Make `station` own `programmer`: append the line unless an equivalent line
 * (same two identifiers, any blanks) is already there. Other lines, comments
 * included, are kept as they are (a second copy of this line goes). A
 * missing file is created (0644).
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
