/*
 * nusec report: the OEM's production report of a job, from the cloud: the
 * job's counters and allocations, and what became of each certificate
 * (issued only, provisioned, failed, revoked) as the programmers reported it.
 */
#include "cli.h"
#include "cli_opts.h"
#include "cli_cloud.h"

#include "station_progress.h"

#include "nu_err.h"
#include "nu_util.h"

#include <getopt.h>
#include <stdio.h>
#include <string.h>

static const char cli__report_usage[] =
    "usage: nusec report --job JOB [--json] [--certs OUTDIR] [--dir DIR]\n"
    "\n"
    "The production report of JOB, as the cloud's ledger has it: its outcome in\n"
    "the station's words (running, limit reached when the quota is used, stopped\n"
    "when paused or closed early, cloud refused: expired), quota, issued,\n"
    "refused, the limit and issued count of each programmer, and how many devices\n"
    "were reported provisioned or failed, or were revoked. Talks to the cloud with\n"
    "the oem certificate of DIR. --certs also writes each device certificate to\n"
    "OUTDIR/JOB-UID.pem.\n"
    "\n"
    "Exit status: 0 report printed, 1 failed (unknown job, no cloud), 2 usage error.\n";

struct cli__outcomes {
    unsigned issued, provisioned, failed, revoked, listed;
};

struct cli__tally {
    struct cli__outcomes o;
    const char *certs; /* export folder, or NULL */
};

/* Count one device's outcome (and export its certificate with --certs). */
static int cli__count(void *ctx, const Nusec__V1__DeviceCertificate *d, size_t index)
{
    struct cli__tally *t = ctx;
    const char *st = d->state ? d->state : "";
    (void)index;
    t->o.listed++;
    if (!strcmp(st, "provisioned"))
        t->o.provisioned++;
    else if (!strcmp(st, "failed"))
        t->o.failed++;
    else if (!strcmp(st, "revoked"))
        t->o.revoked++;
    else
        t->o.issued++;
    return t->certs ? cli_device_cert_export(t->certs, d) : 0;
}

/* "active", "exhausted"... from the wire enum's own names. */
static const char *cli__status(Nusec__V1__JobStatus status)
{
    const ProtobufCEnumValue *v =
        protobuf_c_enum_descriptor_get_value(&nusec__v1__job_status__descriptor, (int)status);
    return v ? v->name + strlen("JOB_STATUS_") : "unknown";
}

/*
 * The job's state in the words the station uses (station_outcome_name), as
 * far as the cloud can tell: it cannot see a tray, so a job still active is
 * "running" until its quota is used ("limit reached").
 */
static enum station_outcome cli__outcome(const Nusec__V1__JobState *j, const char **out_reason)
{
    *out_reason = NULL;
    switch (j->status) {
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_EXHAUSTED:
        return STATION_OUTCOME_LIMIT;
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_PAUSED:
        return STATION_OUTCOME_STOPPED;
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_CLOSED:
        return j->issued >= j->quota ? STATION_OUTCOME_LIMIT : STATION_OUTCOME_STOPPED;
    case NUSEC__V1__JOB_STATUS__JOB_STATUS_EXPIRED:
        *out_reason = "EXPIRED";
        return STATION_OUTCOME_REFUSED;
    default:
        return j->quota && j->issued >= j->quota ? STATION_OUTCOME_LIMIT : STATION_OUTCOME_RUNNING;
    }
}

static void cli__report_print(const Nusec__V1__JobState *j, const struct cli__outcomes *o, int json)
{
    char status[32];
    snprintf(status, sizeof(status), "%s", cli__status(j->status));
    for (char *p = status; *p; p++)
        *p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
    const char *reason = NULL;
    enum station_outcome outcome = cli__outcome(j, &reason);
    char line[160];
    station_outcome_line(outcome, o->provisioned, j->quota, o->failed, reason, line, sizeof(line));
    if (json) {
        printf("{\"job\":\"%s\",\"firmware\":\"%s\",\"status\":\"%s\",\"outcome\":\"%s\","
               "\"summary\":\"%s\",\"quota\":%u,\"issued\":%u,"
               "\"refused\":%u,\"provisioned\":%u,\"failed\":%u,\"revoked\":%u,"
               "\"not_reported\":%u,\"programmers\":[",
               j->job_id, j->firmware ? j->firmware : "", status, station_outcome_name(outcome),
               line, j->quota, j->issued, j->refused, o->provisioned, o->failed, o->revoked,
               o->issued);
        for (size_t i = 0; i < j->n_allocations; i++)
            printf("%s{\"programmer\":\"%s\",\"limit\":%u,\"issued\":%u}", i ? "," : "",
                   j->allocations[i]->programmer_id, j->allocations[i]->limit,
                   i < j->n_issued_per_programmer ? j->issued_per_programmer[i] : 0);
        printf("]}\n");
        return;
    }
    printf("%-14s %s (%s)\n%-14s %s\n", "job", j->job_id, status, "firmware",
           j->firmware ? j->firmware : "");
    printf("%-14s %s\n", "outcome", line);
    printf("%-14s %u\n%-14s %u\n%-14s %u\n", "quota", j->quota, "issued", j->issued, "refused",
           j->refused);
    printf("%-14s %u\n%-14s %u\n%-14s %u\n%-14s %u\n", "provisioned", o->provisioned, "failed",
           o->failed, "revoked", o->revoked, "not reported", o->issued);
    for (size_t i = 0; i < j->n_allocations; i++)
        printf("  %-20s limit %-6u issued %u\n", j->allocations[i]->programmer_id,
               j->allocations[i]->limit,
               i < j->n_issued_per_programmer ? j->issued_per_programmer[i] : 0);
}

static int cli__report(int argc, char **argv)
{
    const char *job = NULL, *dir_opt = NULL, *certs = NULL, *dir;
    int json = 0;
    const struct cli_opt opts[] = {
        CLI_OPT_STR("job", &job),
        CLI_OPT_BOOL("json", &json),
        CLI_OPT_STR("certs", &certs),
        CLI_OPT_STR("dir", &dir_opt),
    };
    int prc = cli_opts_parse(argc, argv, cli__report_usage, opts, CLI_OPTS_N(opts));
    if (prc)
        return prc < 0 ? CLI_EXIT_OK : prc;
    if (!job || optind < argc || nu_envelope_id_check(job)) {
        cli_errorf("report: need --job JOB; see --help");
        return CLI_EXIT_USAGE;
    }
    if (!(dir = cli_state_dir(dir_opt)))
        return CLI_EXIT_USAGE;
    struct cli_cloud cc;
    if (cli_cloud_open(dir, "oem", &cc))
        return CLI_EXIT_FAIL;
    Nusec__V1__Envelope *jobs = NULL;
    struct cli__tally t = {.certs = certs};
    int rc = cli_cloud_job_get(&cc, job, &jobs);
    if (!rc && certs && nu_mkdirs(certs, 0755))
        rc = cli_fail("report: --certs", NU_ERR_IO);
    if (!rc)
        rc = cli_device_list_all(&cc, job, NULL, 0, 0, cli__count, &t, NULL) ? CLI_EXIT_FAIL : 0;
    if (!rc)
        cli__report_print(jobs->job_list->jobs[0], &t.o, json);
    nu_envelope_free(jobs);
    cli_cloud_close(&cc);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

const struct cli_command cli_report_commands[] = {
    {"report", "", "production report of a job: counters, programmers, device outcomes",
     cli__report},
    {NULL, NULL, NULL, NULL},
};
