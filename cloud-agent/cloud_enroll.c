/* nusec-cloud: enroll operations. */
#include "cloud.h"

const struct cloud_op cloud_enroll_ops[] = {
    {NULL, 0, 0, NULL},
};
