#include "nu_version.h"

/* Set by libnusec/CMakeLists.txt on this file only, so a new revision
 * recompiles one file. */
#ifndef NUSEC_VERSION
#define NUSEC_VERSION "0.0.0"
#endif
#ifndef NUSEC_GIT_REVISION
#define NUSEC_GIT_REVISION "unknown"
#endif

const char *nu_version(void)
{
    return NUSEC_VERSION;
}

const char *nu_version_revision(void)
{
    return NUSEC_GIT_REVISION;
}

void nu_version_print(FILE *out, const char *program)
{
    fprintf(out, "%s %s (git %s)\n", program, nu_version(), nu_version_revision());
}
