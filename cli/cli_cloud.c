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

/* cli_cloud_call; an error answer with code `quiet` is returned unprinted. */
static int cli__call(struct cli_cloud *c, const char *op, ProtobufCMessage *body, int expect,
                     Nusec__V1__Envelope **out_reply, int quiet)
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
    /* NOT_FOUND without a detail is the broker's "no matching subscribers". */
    if (rc == NU_ERR_NOT_FOUND && !detail[0])
        snprintf(detail, sizeof(detail), "no cloud agent is running (start nusec-cloud)");
    else if (rc && rc == quiet)
        return rc;
    if (rc)
        cli_errorf("%s: %s (%s)%s%s", op, nu_err_str(rc), nu_err_name(rc), detail[0] ? ": " : "",
                   detail);
    return rc;
}

int cli_cloud_call(struct cli_cloud *c, const char *op, ProtobufCMessage *body, int expect,
                   Nusec__V1__Envelope **out_reply)
{
    return cli__call(c, op, body, expect, out_reply, NU_OK);
}

int cli_cloud_request(const char *dir, const char *identity, const char *op,
                      ProtobufCMessage *body, int expect, Nusec__V1__Envelope **out_reply)
{
    struct cli_cloud cc;
    *out_reply = NULL;
    int rc = cli_cloud_open(dir, identity, &cc);
    if (!rc)
        rc = cli_cloud_call(&cc, op, body, expect, out_reply);
    cli_cloud_close(&cc);
    return rc;
}

int cli_cloud_revoke(const char *what, const char *opt_dir, const char *reason, const char *op,
                     ProtobufCMessage *body, Nusec__V1__Envelope **out_reply)
{
    *out_reply = NULL;
    if (reason && strlen(reason) > 256) {
        cli_errorf("%s: --reason is limited to 256 bytes", what);
        return CLI_EXIT_USAGE;
    }
    const char *dir = cli_state_dir(opt_dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    return cli_cloud_request(dir, "oem", op, body, NUSEC__V1__ENVELOPE__BODY_ACK, out_reply)
               ? CLI_EXIT_FAIL
               : CLI_EXIT_OK;
}

int cli_cloud_job_get(struct cli_cloud *c, const char *job, Nusec__V1__Envelope **out_reply)
{
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    req.job_id = (char *)job;
    int rc = cli__call(c, "job.list", &req.base, NUSEC__V1__ENVELOPE__BODY_JOB_LIST, out_reply,
                       NU_ERR_NOT_FOUND);
    if (!rc && ((*out_reply)->job_list->n_jobs != 1 ||
                strcmp((*out_reply)->job_list->jobs[0]->job_id, job) != 0)) {
        nu_envelope_free(*out_reply);
        *out_reply = NULL;
        cli_errorf("job.list: the cloud answered another job than %s", job);
        return NU_ERR_DECODE;
    }
    if (rc == NU_ERR_NOT_FOUND)
        cli_errorc(rc, "job %s does not exist (see 'nusec job list')", job);
    return rc;
}

int cli_device_list_all(struct cli_cloud *c, const char *job, const uint8_t *uid, size_t uid_len,
                        uint32_t page_size, cli_device_visit_fn visit, void *ctx, size_t *out_count)
{
    Nusec__V1__DeviceListRequest req = NUSEC__V1__DEVICE_LIST_REQUEST__INIT;
    char after[128] = "";
    size_t count = 0;
    int rc = NU_OK;
    req.job_id = (char *)(job ? job : "");
    req.device_uid.data = (uint8_t *)uid;
    req.device_uid.len = uid_len;
    req.page_size = page_size;
    do {
        Nusec__V1__Envelope *reply = NULL;
        req.page_after = after;
        rc = cli_cloud_call(c, "device.list", &req.base, NUSEC__V1__ENVELOPE__BODY_DEVICE_LIST,
                            &reply);
        const Nusec__V1__DeviceList *l = rc ? NULL : reply->device_list;
        for (size_t i = 0; l && !rc && i < l->n_devices; i++)
            rc = visit(ctx, l->devices[i], count++);
        const char *next = l && l->next_page ? l->next_page : "";
        /* A cursor that does not move, or an empty page that says "more",
         * would loop for ever: a broken answer, not a long list. */
        if (!rc && *next &&
            (!l->n_devices || !strcmp(next, after) || strlen(next) >= sizeof(after))) {
            cli_errorf("device.list: the cloud's answer pages in a loop");
            rc = NU_ERR_DECODE;
        }
        snprintf(after, sizeof(after), "%s", rc ? "" : next);
        nu_envelope_free(reply);
    } while (!rc && after[0]);
    if (out_count)
        *out_count = count;
    return rc;
}
