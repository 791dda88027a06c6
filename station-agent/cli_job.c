/* nusec job ... */
#include "cli.h"

const struct cli_command cli_job_commands[] = {
    {NULL, NULL, NULL, NULL},
};
