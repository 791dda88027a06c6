/* nusec-cloud: cert operations. */
#include "cloud.h"

const struct cloud_op cloud_cert_ops[] = {
    {NULL, 0, 0, NULL},
};
const struct cloud_event_op cloud_cert_events[] = {
    {NULL, NULL, NULL},
};
