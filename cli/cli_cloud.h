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
 * One request on a session of its own: cli_cloud_open, cli_cloud_call,
 * cli_cloud_close (for commands that ask the cloud one thing). On NU_OK
 * *out_reply (nu_envelope_free) is the answer; otherwise NULL, and the
 * reason was printed. Errors: those of cli_cloud_open and cli_cloud_call.
 */
int cli_cloud_request(const char *dir, const char *identity, const char *op,
                      ProtobufCMessage *body, int expect, Nusec__V1__Envelope **out_reply);

/*
 * The state of one job (job.list for `job`): on NU_OK *out_reply
 * (nu_envelope_free) holds exactly that job in job_list->jobs[0]. A job the
 * cloud does not know prints "nusec: job JOB does not exist" and returns
 * NOT_FOUND. Errors: NOT_FOUND, DECODE, those of cli_cloud_call.
 */
int cli_cloud_job_get(struct cli_cloud *c, const char *job, Nusec__V1__Envelope **out_reply);

/* The end of `programmer revoke --help` and `device revoke --help`. */
#define CLI_REVOKE_USAGE_TAIL                                                                      \
    "  --reason TEXT  why (kept in the audit trail; up to 256 bytes)\n"                            \
    "  --dir DIR      state directory (default: $NUSEC_HOME)\n"                                    \
    "  -h, --help     this text\n"                                                                 \
    "\n"                                                                                           \
    "Exit status: 0 revoked, 1 refused or failed (NOT_FOUND, STATE: already\n"                     \
    "revoked), 2 usage error.\n"

/*
 * What `programmer revoke` and `device revoke` share once their arguments
 * are checked: --reason at most 256 bytes (`what` names the command in the
 * message), DIR from opt_dir, then `op` with `body` (whose reason field the
 * caller set) as oem, answered by an ACK. Returns a CLI exit code; on
 * CLI_EXIT_OK *out_reply holds the ACK (nu_envelope_free), else NULL.
 */
int cli_cloud_revoke(const char *what, const char *opt_dir, const char *reason, const char *op,
                     ProtobufCMessage *body, Nusec__V1__Envelope **out_reply);

/* One device of a listing; index counts across pages from 0. */
typedef int (*cli_device_visit_fn)(void *ctx, const Nusec__V1__DeviceCertificate *d, size_t index);

/*
 * Every device certificate of a job and/or a UID (job NULL/"" or uid_len 0
 * for "any"), fetched page by page with device.list (page_size devices per
 * request, 0 = the cloud's maximum); visit is called for
 * each in issue order and may stop the walk by returning non-zero (that
 * value is returned). *out_count (may be NULL) is the number visited.
 * Errors: those of cli_cloud_call, DECODE (the cloud's paging went wrong).
 */
int cli_device_list_all(struct cli_cloud *c, const char *job, const uint8_t *uid, size_t uid_len,
                        uint32_t page_size, cli_device_visit_fn visit, void *ctx,
                        size_t *out_count);

/*
 * Write a device certificate from a DeviceList answer to DIR/JOB-UIDHEX.pem
 * (0644, replaced if present). Prints the reason on failure.
 * Errors: TOO_LARGE (the answer carried no certificate bytes), IO, ...
 */
int cli_device_cert_export(const char *dir, const Nusec__V1__DeviceCertificate *d);

#endif
