/* nusec firmware ... */
#include "cli.h"

const struct cli_command cli_firmware_commands[] = {
    {NULL, NULL, NULL, NULL},
};
