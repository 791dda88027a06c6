#include "cli_cloud.h"

#include "cli.h"
#include "nu_client.h"
#include "nu_err.h"

#include <stdio.h>
#include <string.h>
#include <unistd.h>

int cli_cloud_open(const char *dir, const char *identity, struct cli_cloud *out)
{
    memset(out, 0, sizeof(*out));
    /* A session of its own ("oem:cli-PID"), so two commands, or a command and
     * a daemon of the same identity, never take over each other's session. */
    char client_id[96];
    snprintf(client_id, sizeof(client_id), "%s:cli-%ld", identity, (long)getpid());
    struct nu_client_opts o = {
        .dir = dir, .identity = identity, .client_id = client_id, .clean_start = 1};
    int rc = nu_envelope_sender_create(identity, NU_ENVELOPE_SEQ_FROM_CLOCK, &out->sender);
    if (!rc)
        rc = nu_client_connect(&o, &out->mqtt);
    if (rc) {
        cli_errorf("cannot reach the broker of %s as '%s': %s (%s)", dir, identity, nu_err_str(rc),
                   nu_err_name(rc));
        cli_cloud_close(out);
    }
    return rc;
}

void cli_cloud_close(struct cli_cloud *c)
{
    if (c->mqtt) {
        nu_mqtt_disconnect(c->mqtt);
        nu_mqtt_destroy(c->mqtt);
    }
    nu_envelope_sender_destroy(c->sender);
    memset(c, 0, sizeof(*c));
}

int cli_cloud_call(struct cli_cloud *c, const char *op, ProtobufCMessage *body, int expect,
                   Nusec__V1__Envelope **out_reply)
{
    char detail[256];
    int rc = nu_client_request(c->mqtt, c->sender, op, body, NULL, 0, CLI_CLOUD_TIMEOUT_MS,
                               out_reply, detail, sizeof(detail));
    if (!rc && (int)(*out_reply)->body_case != expect) {
        nu_envelope_free(*out_reply);
        *out_reply = NULL;
        rc = NU_ERR_DECODE;
        snprintf(detail, sizeof(detail), "unexpected answer");
    }
    if (rc == NU_ERR_NOT_FOUND && !detail[0])
        snprintf(detail, sizeof(detail), "no cloud agent is running (start nusec-cloud)");
    if (rc)
        cli_errorf("%s: %s (%s)%s%s", op, nu_err_str(rc), nu_err_name(rc), detail[0] ? ": " : "",
                   detail);
    return rc;
}
