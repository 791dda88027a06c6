/* nusec audit ... */
#include "cli.h"

const struct cli_command cli_audit_commands[] = {
    {NULL, NULL, NULL, NULL},
};
