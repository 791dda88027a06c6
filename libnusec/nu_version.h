/*
 * nu_version — what every NuSEC program answers to --version: the project
 * version (CMake `project(VERSION)`) and the git revision the build was
 * configured from (`git describe --always --dirty` at configure time;
 * "unknown" outside a git checkout).
 */
#ifndef NU_VERSION_H
#define NU_VERSION_H

#include <stdio.h>

/* The project version, e.g. "0.1.0". Static storage. */
const char *nu_version(void);

/* The git revision, e.g. "2f93cc8" or "2f93cc8-dirty", or "unknown". Static storage. */
const char *nu_version_revision(void);

/* Print "PROGRAM VERSION (git REVISION)\n" to out (the --version answer). */
void nu_version_print(FILE *out, const char *program);

#endif
