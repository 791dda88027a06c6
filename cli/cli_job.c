/* nusec job create|list|show|pause|resume|close|write-off — production jobs, through the cloud
 * (as oem). */
#include "cli.h"
#include "cli_cloud.h"
#include "cli_opts.h"

#include "station_event.h"

#include "nu_client.h"
#include "nu_err.h"
#include "nu_util.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CLI__PROGRAMMERS_MAX NU_ENVELOPE_ALLOC_MAX
#define CLI__EXPIRES_MAX_S (10ull * 366 * 24 * 3600)

static const char cli__create_usage[] =
    "usage: nusec job create --firmware NAME-X.Y.Z --quota N --programmer ID[:LIMIT]...\n"
    "                        --out DIR [--expires DURATION] [--subject TEMPLATE]\n"
    "                        [--offline-lease N --lease-hours H] [--json] [--dir DIR]\n"
    "\n"
    "Ask the cloud to create a production job: N devices of firmware NAME-X.Y.Z\n"
    "(signed with `nusec firmware sign`), made by the listed programmers. The cloud\n"
    "records it, publishes its state on nusec/v1/jobs/JOB and answers one sealed\n"
    "package per programmer, written here as DIR/JOB-PROGRAMMER.nspkg (0644): signed\n"
    "by the package key, readable only inside that programmer's KeyStore, carrying\n"
    "its limit, the firmware token and key, the ROTPK hash, the device CA chain and\n"
    "the expiry. The job id is printed on stdout.\n"
    "\n"
    "  --firmware NAME-X.Y.Z  the signed image\n"
    "  --quota N              devices in the job (1..4294967295)\n"
    "  --programmer ID[:LIMIT]\n"
    "                         an enrolled programmer and its share (repeat, up to\n"
    "                         256). Programmers without LIMIT split what the others\n"
    "                         leave of the quota evenly (remainder to the first);\n"
    "                         the limits never add up to more than the quota\n"
    "  --out DIR              where the .nspkg files go (created if missing)\n"
    "  --expires DURATION     how long the job and its packages are valid: 90s, 15m,\n"
    "                         12h, 30d or seconds (default 30d, at most 10 years)\n"
    "  --subject TEMPLATE     device certificate subject template (up to 256 bytes)\n"
    "  --offline-lease N      opt in to the offline lease: each programmer may ask for\n"
    "                         a lease of N devices it certifies itself (line CA in its\n"
    "                         KeyStore, certified by the Device CA) while the cloud\n"
    "                         is unreachable; the N units are reserved out of the\n"
    "                         quota until the programmer returns the lease, or the\n"
    "                         OEM writes it off (nusec job write-off; see\n"
    "                         docs/threat-model.md)\n"
    "  --lease-hours H        how long a lease is valid, 1..720 (with --offline-lease)\n"
    "  --json                 print {\"job\",\"packages\":[paths]}\n"
    "  --dir DIR              state directory (default: $NUSEC_HOME)\n"
    "  -h, --help             this text\n"
    "\n"
    "A create that times out is asked again once with the same idempotency key:\n"
    "the cloud answers the same job and packages, never a second job.\n"
    "\n"
    "Exit status: 0 created, 1 refused or failed, 2 usage error, 3 a package file\n"
    "exists already (not overwritten).\n";

static const char cli__list_usage[] =
    "usage: nusec job list [--json] [--dir DIR]\n"
    "\n"
    "List the jobs the cloud knows: id, status, issued/quota, firmware, expiry (UTC).\n"
    "Status is active, paused, closed, exhausted (quota reached) or expired.\n"
    "\n"
    "  --json      a JSON array of job objects (see nusec job show --help)\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage error.\n";

static const char cli__show_usage[] =
    "usage: nusec job show JOB [--json] [--dir DIR]\n"
    "\n"
    "Show one job with its programmers' limits and issued counts.\n"
    "\n"
    "  --json      {\"job\",\"status\",\"quota\",\"issued\",\"refused\",\"firmware\",\n"
    "              \"created_at_ms\",\"expires_at_ms\",\"programmers\":[{\"id\",\"limit\",\n"
    "              \"issued\"}]}\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 done, 1 failed (NOT_FOUND: no such job), 2 usage error.\n";

static const char cli__control_usage[] =
    "usage: nusec job pause|resume|close JOB [--json] [--dir DIR]\n"
    "\n"
    "pause: the cloud issues no certificate for the job until it is resumed\n"
    "(programmers may still download its firmware). resume: active again.\n"
    "close: for good; certificates and firmware downloads are refused from then on.\n"
    "The new state is published (retained) on nusec/v1/jobs/JOB. Asking for the\n"
    "state the job is already in is not an error.\n"
    "\n"
    "  --json      print the job's state (as nusec job show --json)\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 done, 1 refused (NOT_FOUND, STATE: e.g. resuming a closed job)\n"
    "or failed, 2 usage error.\n";

static const char cli__write_off_usage[] =
    "usage: nusec job write-off JOB --programmer ID [--json] [--dir DIR]\n"
    "\n"
    "Write off programmer ID's offline lease of JOB: one that ended at least an\n"
    "hour ago (its last uploads arrive first) and that the programmer never\n"
    "returned (lost, broken, or kept away from the cloud).\n"
    "A lease holds its unused units out of the quota with no time limit, since\n"
    "the chips it certified offline exist whether or not they were uploaded;\n"
    "writing it off gives those units back to the quota. Chips the programmer did\n"
    "certify under it are then beyond the quota: a later upload of them is\n"
    "refused and audited as lease.incident. The write-off is audited as\n"
    "lease.written_off with the units released. A lease that still runs, or ended\n"
    "less than an hour ago, is refused (STATE). Asking again for a lease written\n"
    "off already answers the same (a retry is safe).\n"
    "\n"
    "  --programmer ID  the programmer whose lease it is\n"
    "  --json           print the job's state after (as nusec job show --json)\n"
    "  --dir DIR        state directory (default: $NUSEC_HOME)\n"
    "  -h, --help       this text\n"
    "\n"
    "Exit status: 0 written off, 1 refused (NOT_FOUND: no lease of that programmer\n"
    "in the job; STATE: not ended an hour ago) or failed, 2 usage error.\n";

struct cli__job_opts {
    const char *dir;
    const char *firmware;
    const char *quota;
    const char *out;
    const char *expires;
    const char *subject;
    const char *offline_lease;
    const char *lease_hours;
    const char *programmers[CLI__PROGRAMMERS_MAX + 1];
    size_t n_programmers;
    int json;
};

/* 0 = parsed, -1 = help printed, else the exit code of a usage error. */
static int cli__job_parse(int argc, char **argv, const char *usage, struct cli__job_opts *o)
{
    struct cli_opt_list progs = {o->programmers, 0};
    const struct cli_opt opts[] = {
        CLI_OPT_STR("dir", &o->dir),
        CLI_OPT_STR("firmware", &o->firmware),
        CLI_OPT_STR("quota", &o->quota),
        CLI_OPT_ALL("programmer", &progs, CLI__PROGRAMMERS_MAX),
        CLI_OPT_STR("out", &o->out),
        CLI_OPT_STR("expires", &o->expires),
        CLI_OPT_STR("subject", &o->subject),
        CLI_OPT_STR("offline-lease", &o->offline_lease),
        CLI_OPT_STR("lease-hours", &o->lease_hours),
        CLI_OPT_BOOL("json", &o->json),
    };
    int rc = cli_opts_parse(argc, argv, usage, opts, CLI_OPTS_N(opts));
    o->n_programmers = progs.n;
    return rc;
}

/* 1 when an option only job create takes was given. */
static int cli__create_only(const struct cli__job_opts *o)
{
    return o->firmware || o->quota || o->out || o->expires || o->subject || o->offline_lease ||
           o->lease_hours;
}

/* A decimal u32 >= min. */
static int cli__u32(const char *text, uint32_t min, uint32_t *out)
{
    char *end = NULL;
    if (!text || !*text || *text == '-' || *text == '+')
        return -1;
    unsigned long long v = strtoull(text, &end, 10);
    if (*end || v < min || v > UINT32_MAX)
        return -1;
    *out = (uint32_t)v;
    return 0;
}

/* Job ids, firmware and programmer ids are identifiers: nothing to escape. */
static void cli__job_json(const Nusec__V1__JobState *j)
{
    printf("{\"job\":\"%s\",\"status\":\"%s\",\"quota\":%u,\"issued\":%u,\"refused\":%u,"
           "\"firmware\":\"%s\",\"created_at_ms\":%llu,\"expires_at_ms\":%llu,\"programmers\":[",
           j->job_id, station_job_status_name(j->status), j->quota, j->issued, j->refused, j->firmware,
           (unsigned long long)j->created_at_ms, (unsigned long long)j->expires_at_ms);
    for (size_t i = 0; i < j->n_allocations; i++) {
        uint32_t issued = i < j->n_issued_per_programmer ? j->issued_per_programmer[i] : 0;
        printf("%s{\"id\":\"%s\",\"limit\":%u,\"issued\":%u}", i ? "," : "",
               j->allocations[i]->programmer_id, j->allocations[i]->limit, issued);
    }
    printf("]}");
}

static void cli__job_text(const Nusec__V1__JobState *j)
{
    char created[32], expires[32];
    cli_utc(j->created_at_ms, created, sizeof(created));
    cli_utc(j->expires_at_ms, expires, sizeof(expires));
    printf("job       %s\nstatus    %s\nfirmware  %s\nissued    %u of %u (%u refused)\n"
           "created   %s\nexpires   %s\n",
           j->job_id, station_job_status_name(j->status), j->firmware, j->issued, j->quota, j->refused,
           created, expires);
    printf("%-32s %10s %10s\n", "PROGRAMMER", "LIMIT", "ISSUED");
    for (size_t i = 0; i < j->n_allocations; i++) {
        uint32_t issued = i < j->n_issued_per_programmer ? j->issued_per_programmer[i] : 0;
        printf("%-32s %10u %10u\n", j->allocations[i]->programmer_id, j->allocations[i]->limit,
               issued);
    }
}

/* ------------------------------------------------------------ create */

static int cli__create_args(struct cli__job_opts *o, int argc,
                            Nusec__V1__ProgrammerAllocation *alloc,
                            char ids[][NU_ENVELOPE_ID_MAX + 1], Nusec__V1__JobCreateRequest *req)
{
    uint64_t seconds = 0;
    if (!o->firmware || !o->quota || !o->n_programmers || !o->out || optind < argc) {
        cli_errorf("job create: need --firmware, --quota, --programmer and --out (see --help)");
        return CLI_EXIT_USAGE;
    }
    if (nu_envelope_id_check(o->firmware)) {
        cli_errorf("job create: '%s' is not an image name NAME-X.Y.Z", o->firmware);
        return CLI_EXIT_USAGE;
    }
    if (cli__u32(o->quota, 1, &req->quota)) {
        cli_errorf("job create: --quota wants 1..4294967295, not '%s'", o->quota);
        return CLI_EXIT_USAGE;
    }
    if (o->expires &&
        (nu_duration_parse(o->expires, &seconds) || seconds == 0 || seconds > CLI__EXPIRES_MAX_S)) {
        cli_errorf("job create: --expires wants a duration up to 10 years, not '%s'", o->expires);
        return CLI_EXIT_USAGE;
    }
    if (o->subject && strlen(o->subject) > 256) {
        cli_errorf("job create: --subject is limited to 256 bytes");
        return CLI_EXIT_USAGE;
    }
    if (!o->offline_lease != !o->lease_hours ||
        (o->offline_lease && (cli__u32(o->offline_lease, 1, &req->offline_lease) ||
                              req->offline_lease > req->quota ||
                              cli__u32(o->lease_hours, 1, &req->lease_hours) ||
                              req->lease_hours > 720))) {
        cli_errorf("job create: --offline-lease N (1..quota) goes with --lease-hours H (1..720)");
        return CLI_EXIT_USAGE;
    }
    for (size_t i = 0; i < o->n_programmers; i++) {
        const char *arg = o->programmers[i], *colon = strchr(arg, ':');
        size_t len = colon ? (size_t)(colon - arg) : strlen(arg);
        nusec__v1__programmer_allocation__init(&alloc[i]);
        if (len > NU_ENVELOPE_ID_MAX || (colon && cli__u32(colon + 1, 1, &alloc[i].limit))) {
            cli_errorf("job create: '--programmer %s' wants ID or ID:LIMIT (LIMIT >= 1)", arg);
            return CLI_EXIT_USAGE;
        }
        memcpy(ids[i], arg, len);
        ids[i][len] = 0;
        if (nu_envelope_id_check(ids[i])) {
            cli_errorf("job create: '%s' is not a programmer id", ids[i]);
            return CLI_EXIT_USAGE;
        }
        alloc[i].programmer_id = ids[i];
    }
    req->firmware = (char *)o->firmware;
    req->expires_at_ms = seconds ? nu_time_ms() + seconds * 1000u : 0;
    req->subject_template = (char *)(o->subject ? o->subject : "");
    return 0;
}

/* job.create with one key for both attempts: a retry after a timeout gets
 * the job the first attempt made, never a second one. */
static int cli__create_call(struct cli_cloud *cc, Nusec__V1__JobCreateRequest *req,
                            Nusec__V1__Envelope **out)
{
    uint8_t key[16];
    char detail[256] = "";
    int rc = nu_random(key, sizeof(key));
    if (!rc)
        rc = nu_client_request(cc->mqtt, cc->sender, "job.create", &req->base, key, sizeof(key),
                               CLI_CLOUD_TIMEOUT_MS, out, detail, sizeof(detail));
    if (rc == NU_ERR_TIMEOUT) {
        fprintf(stderr, "nusec: job.create: no answer yet, asking again (same request)\n");
        rc = nu_client_request(cc->mqtt, cc->sender, "job.create", &req->base, key, sizeof(key),
                               CLI_CLOUD_TIMEOUT_MS, out, detail, sizeof(detail));
    }
    if (!rc && (*out)->body_case != NUSEC__V1__ENVELOPE__BODY_JOB_CREATE_RESPONSE) {
        nu_envelope_free(*out);
        *out = NULL;
        rc = NU_ERR_DECODE;
        snprintf(detail, sizeof(detail), "unexpected answer");
    }
    if (rc == NU_ERR_NOT_FOUND && !detail[0])
        snprintf(detail, sizeof(detail), "no cloud agent is running (start nusec-cloud)");
    if (rc)
        cli_errorf("job.create: %s (%s)%s%s", nu_err_str(rc), nu_err_name(rc),
                   detail[0] ? ": " : "", detail);
    return rc;
}

/* The programmer a package is for, from its clear summary. */
static int cli__package_programmer(const ProtobufCBinaryData *pkg, const char *job_id, char *out,
                                   size_t cap)
{
    Nusec__V1__SealedPackage *sp = nusec__v1__sealed_package__unpack(NULL, pkg->len, pkg->data);
    Nusec__V1__PackageSummary *sum = NULL;
    int rc = NU_ERR_DECODE;
    if (sp)
        sum = nusec__v1__package_summary__unpack(NULL, sp->summary.len, sp->summary.data);
    if (sum && !strcmp(sum->job_id, job_id) && !nu_envelope_id_check(sum->programmer_id))
        rc = nu_path_fmt(out, cap, "%s", sum->programmer_id);
    nusec__v1__package_summary__free_unpacked(sum, NULL);
    nusec__v1__sealed_package__free_unpacked(sp, NULL);
    return rc;
}

static int cli__create_save(const char *out_dir, const Nusec__V1__JobCreateResponse *r, int json)
{
    char prog[NU_ENVELOPE_ID_MAX + 1], path[PATH_MAX];
    int exit_code = CLI_EXIT_OK, rc = nu_mkdirs(out_dir, 0755);
    if (rc)
        return cli_fail(out_dir, rc);
    /* "--out packages/" names packages/job-..., not packages//job-... */
    int dir_len = (int)strlen(out_dir);
    while (dir_len > 1 && out_dir[dir_len - 1] == '/')
        dir_len--;
    if (json)
        printf("{\"job\":\"%s\",\"packages\":[", r->job->job_id);
    else
        printf("%s\n", r->job->job_id);
    for (size_t i = 0; i < r->n_packages; i++) {
        rc = cli__package_programmer(&r->packages[i], r->job->job_id, prog, sizeof(prog));
        if (!rc)
            rc = nu_path_fmt(path, sizeof(path), "%.*s/%s-%s.nspkg", dir_len, out_dir,
                             r->job->job_id, prog);
        if (!rc)
            rc = nu_file_write_new(path, r->packages[i].data, r->packages[i].len, 0644);
        if (rc) {
            cli_errorf("package %zu (%s): %s (%s)%s", i + 1, rc == NU_ERR_DECODE ? "?" : path,
                       nu_err_str(rc), nu_err_name(rc),
                       rc == NU_ERR_EXISTS ? ": not overwritten" : "");
            if (exit_code == CLI_EXIT_OK)
                exit_code = rc == NU_ERR_EXISTS ? CLI_EXIT_REFUSED : CLI_EXIT_FAIL;
            continue;
        }
        if (json)
            printf("%s\"%s\"", i ? "," : "", path);
        fprintf(stderr, "nusec: wrote %s\n", path);
    }
    if (json)
        printf("]}\n");
    return exit_code;
}

static int cli__create(int argc, char **argv)
{
    static struct cli__job_opts o;
    static Nusec__V1__ProgrammerAllocation alloc[CLI__PROGRAMMERS_MAX];
    static Nusec__V1__ProgrammerAllocation *ptrs[CLI__PROGRAMMERS_MAX];
    static char ids[CLI__PROGRAMMERS_MAX][NU_ENVELOPE_ID_MAX + 1];
    Nusec__V1__JobCreateRequest req = NUSEC__V1__JOB_CREATE_REQUEST__INIT;
    memset(&o, 0, sizeof(o));
    int rc = cli__job_parse(argc, argv, cli__create_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = cli__create_args(&o, argc, alloc, ids, &req)))
        return rc;
    for (size_t i = 0; i < o.n_programmers; i++)
        ptrs[i] = &alloc[i];
    req.allocations = ptrs;
    req.n_allocations = o.n_programmers;
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    struct cli_cloud cc;
    if (cli_cloud_open(dir, "oem", &cc))
        return CLI_EXIT_FAIL;
    Nusec__V1__Envelope *reply = NULL;
    rc = cli__create_call(&cc, &req, &reply);
    int exit_code = rc == NU_ERR_EXISTS ? CLI_EXIT_REFUSED : CLI_EXIT_FAIL;
    if (!rc)
        exit_code = cli__create_save(o.out, reply->job_create_response, o.json);
    nu_envelope_free(reply);
    cli_cloud_close(&cc);
    return exit_code;
}

/* ------------------------------------------------------------ list, show */

/* Oldest first; equal times by id, so the order is stable. */
static int cli__by_creation(const void *a, const void *b)
{
    const Nusec__V1__JobState *x = *(const Nusec__V1__JobState *const *)a;
    const Nusec__V1__JobState *y = *(const Nusec__V1__JobState *const *)b;
    if (x->created_at_ms != y->created_at_ms)
        return x->created_at_ms < y->created_at_ms ? -1 : 1;
    return strcmp(x->job_id, y->job_id);
}

static int cli__list(int argc, char **argv)
{
    static struct cli__job_opts o;
    memset(&o, 0, sizeof(o));
    int rc = cli__job_parse(argc, argv, cli__list_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind < argc || o.n_programmers || cli__create_only(&o)) {
        cli_errorf("job list: takes only --json and --dir");
        return CLI_EXIT_USAGE;
    }
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    Nusec__V1__JobListRequest req = NUSEC__V1__JOB_LIST_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.job_id = "";
    if (cli_cloud_request(dir, "oem", "job.list", &req.base, NUSEC__V1__ENVELOPE__BODY_JOB_LIST,
                          &reply))
        return CLI_EXIT_FAIL;
    const Nusec__V1__JobList *l = reply->job_list;
    if (l->n_jobs > 1)
        qsort(l->jobs, l->n_jobs, sizeof(l->jobs[0]), cli__by_creation);
    if (o.json)
        printf("[");
    else
        printf("%-24s %-9s %21s %-32s %s\n", "JOB", "STATUS", "ISSUED/QUOTA", "FIRMWARE",
               "EXPIRES");
    for (size_t i = 0; i < l->n_jobs; i++) {
        const Nusec__V1__JobState *j = l->jobs[i];
        char counts[32], expires[32];
        if (o.json) {
            printf("%s", i ? "," : "");
            cli__job_json(j);
            continue;
        }
        snprintf(counts, sizeof(counts), "%u/%u", j->issued, j->quota);
        cli_utc(j->expires_at_ms, expires, sizeof(expires));
        printf("%-24s %-9s %21s %-32s %s\n", j->job_id, station_job_status_name(j->status), counts,
               j->firmware, expires);
    }
    if (o.json)
        printf("]\n"); /* one line: docs/cli.md */
    nu_envelope_free(reply);
    return CLI_EXIT_OK;
}

/* One JOB argument and nothing else; 0 or the exit code. */
static int cli__one_job(int argc, char **argv, const char *usage, const char *what,
                        struct cli__job_opts *o, const char **out_job)
{
    int rc = cli__job_parse(argc, argv, usage, o);
    if (rc)
        return rc < 0 ? -1 : rc;
    if (optind != argc - 1 || o->n_programmers || cli__create_only(o)) {
        cli_errorf("job %s: need exactly one JOB (see --help)", what);
        return CLI_EXIT_USAGE;
    }
    if (nu_envelope_id_check(argv[optind])) {
        cli_errorf("job %s: '%s' is not a job id", what, argv[optind]);
        return CLI_EXIT_USAGE;
    }
    *out_job = argv[optind];
    return 0;
}

static int cli__show(int argc, char **argv)
{
    static struct cli__job_opts o;
    const char *job = NULL;
    memset(&o, 0, sizeof(o));
    int rc = cli__one_job(argc, argv, cli__show_usage, "show", &o, &job);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    Nusec__V1__Envelope *reply = NULL;
    struct cli_cloud cc;
    if (cli_cloud_open(dir, "oem", &cc))
        return CLI_EXIT_FAIL;
    rc = cli_cloud_job_get(&cc, job, &reply);
    cli_cloud_close(&cc);
    if (!rc && o.json) {
        cli__job_json(reply->job_list->jobs[0]);
        printf("\n");
    } else if (!rc) {
        cli__job_text(reply->job_list->jobs[0]);
    }
    nu_envelope_free(reply);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

/* ------------------------------------------------------------ control */

static int cli__control(int argc, char **argv, Nusec__V1__JobAction action, const char *what,
                        const char *done)
{
    static struct cli__job_opts o;
    const char *job = NULL;
    memset(&o, 0, sizeof(o));
    int rc = cli__one_job(argc, argv, cli__control_usage, what, &o, &job);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    Nusec__V1__JobControlRequest req = NUSEC__V1__JOB_CONTROL_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.job_id = (char *)job;
    req.action = action;
    rc = cli_cloud_request(dir, "oem", "job.control", &req.base,
                           NUSEC__V1__ENVELOPE__BODY_JOB_STATE, &reply);
    if (!rc && o.json) {
        cli__job_json(reply->job_state);
        printf("\n");
    } else if (!rc) {
        printf("job %s %s (now %s)\n", job, done, station_job_status_name(reply->job_state->status));
    }
    nu_envelope_free(reply);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

static int cli__pause(int argc, char **argv)
{
    return cli__control(argc, argv, NUSEC__V1__JOB_ACTION__JOB_ACTION_PAUSE, "pause", "paused");
}

static int cli__resume(int argc, char **argv)
{
    return cli__control(argc, argv, NUSEC__V1__JOB_ACTION__JOB_ACTION_RESUME, "resume", "resumed");
}

static int cli__close(int argc, char **argv)
{
    return cli__control(argc, argv, NUSEC__V1__JOB_ACTION__JOB_ACTION_CLOSE, "close", "closed");
}

static int cli__write_off(int argc, char **argv)
{
    static struct cli__job_opts o;
    memset(&o, 0, sizeof(o));
    int rc = cli__job_parse(argc, argv, cli__write_off_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind != argc - 1 || o.n_programmers != 1 || cli__create_only(&o)) {
        cli_errorf("job write-off: need one JOB and one --programmer ID (see --help)");
        return CLI_EXIT_USAGE;
    }
    const char *job = argv[optind], *prog = o.programmers[0];
    if (nu_envelope_id_check(job) || nu_envelope_id_check(prog)) {
        cli_errorf("job write-off: '%s' is not an id", nu_envelope_id_check(job) ? job : prog);
        return CLI_EXIT_USAGE;
    }
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    Nusec__V1__JobControlRequest req = NUSEC__V1__JOB_CONTROL_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.job_id = (char *)job;
    req.action = NUSEC__V1__JOB_ACTION__JOB_ACTION_WRITE_OFF_LEASE;
    req.programmer_id = (char *)prog;
    rc = cli_cloud_request(dir, "oem", "job.control", &req.base,
                           NUSEC__V1__ENVELOPE__BODY_JOB_STATE, &reply);
    if (!rc && o.json) {
        cli__job_json(reply->job_state);
        printf("\n");
    } else if (!rc) {
        const Nusec__V1__JobState *j = reply->job_state;
        printf("lease of %s in job %s written off (job: %u/%u issued)\n", prog, job, j->issued,
               j->quota);
    }
    nu_envelope_free(reply);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

const struct cli_command cli_job_commands[] = {
    {"job", "create", "create a production job and write its sealed packages", cli__create},
    {"job", "list", "list production jobs", cli__list},
    {"job", "show", "show one job and its programmers", cli__show},
    {"job", "pause", "stop issuing certificates for a job", cli__pause},
    {"job", "resume", "resume a paused job", cli__resume},
    {"job", "close", "close a job for good", cli__close},
    {"job", "write-off", "give back the units of a lease that ended unreturned", cli__write_off},
    {NULL, NULL, NULL, NULL},
};
