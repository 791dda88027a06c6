/* nusec programmer ... */
#include "cli.h"

const struct cli_command cli_programmer_commands[] = {
    {NULL, NULL, NULL, NULL},
};
