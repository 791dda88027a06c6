/*
 * cli_cloud — how `nusec` subcommands talk to the cloud: connect with a role
 * certificate of the state directory (oem by default), send one request, get
 * the typed answer, print errors the same way everywhere.
 */
#ifndef CLI_CLOUD_H
#define CLI_CLOUD_H

#include "nu_envelope.h"
#include "nu_mqtt.h"

#include <stddef.h>

#define CLI_CLOUD_TIMEOUT_MS 30000u

struct cli_cloud {
    struct nu_mqtt *mqtt;
    struct nu_envelope_sender *sender;
};

/*
 * Connect to the bus of `dir` as `identity` (its certificate in
 * DIR/pki/clients/). Prints the reason on failure.
 * Errors: those of nu_client_connect().
 */
int cli_cloud_open(const char *dir, const char *identity, struct cli_cloud *out);
void cli_cloud_close(struct cli_cloud *c);

/*
 * Call operation `op` with `body`; on NU_OK *out_reply (nu_envelope_free) is
 * the answer and its body_case is `expect` (else NU_ERR_DECODE). On an error
 * answer prints "nusec: OP: TEXT (NAME): DETAIL" and returns the code.
 */
int cli_cloud_call(struct cli_cloud *c, const char *op, ProtobufCMessage *body, int expect,
                   Nusec__V1__Envelope **out_reply);

/*
 * Write a device certificate from a DeviceList answer to DIR/JOB-UIDHEX.pem
 * (0644, replaced if present). Prints the reason on failure.
 * Errors: TOO_LARGE (the answer carried no certificate bytes), IO, ...
 */
int cli_device_cert_export(const char *dir, const Nusec__V1__DeviceCertificate *d);

#endif
