/* nusec-cloud: job operations. */
#include "cloud.h"

const struct cloud_op cloud_job_ops[] = {
    {NULL, 0, 0, NULL},
};
