/* nusec stack ... */
#include "cli.h"

const struct cli_command cli_stack_commands[] = {
    {NULL, NULL, NULL, NULL},
};
