/* nusec package ... */
#include "cli.h"

const struct cli_command cli_package_commands[] = {
    {NULL, NULL, NULL, NULL},
};
