/* nusec production ... */
#include "cli.h"

const struct cli_command cli_production_commands[] = {
    {NULL, NULL, NULL, NULL},
};
