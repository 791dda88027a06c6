/* nusec monitor ... */
#include "cli.h"

const struct cli_command cli_monitor_commands[] = {
    {NULL, NULL, NULL, NULL},
};
