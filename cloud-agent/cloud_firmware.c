/* nusec-cloud: firmware operations. */
#include "cloud.h"

const struct cloud_op cloud_firmware_ops[] = {
    {NULL, 0, 0, NULL},
};
