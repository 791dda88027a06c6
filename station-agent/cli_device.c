/* nusec device ... */
#include "cli.h"

const struct cli_command cli_device_commands[] = {
    {NULL, NULL, NULL, NULL},
};
