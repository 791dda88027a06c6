/* nusec device list|export|revoke — device certificates, through the cloud (as oem). */
#include "cli.h"
#include "cli_json.h"
#include "cli_cloud.h"
#include "cli_opts.h"

#include "nu_err.h"
#include "nu_paths.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define CLI__UID_MAX 64

static const char cli__list_usage[] =
    "usage: nusec device list (--job JOB | --uid HEX | both) [--json] [--certs DIR]\n"
    "                         [--page-size N] [--dir DIR]\n"
    "\n"
    "List the device certificates of a job, of a device UID in every job, or of\n"
    "one UID in one job: UID (hex), job, serial, state (issued, provisioned,\n"
    "failed, revoked) and issue time (UTC), in issue order. Long lists come from\n"
    "the cloud page by page; all of them are printed.\n"
    "\n"
    "  --job JOB     the job's certificates\n"
    "  --uid HEX     the certificates of this device UID (hex, up to 64 bytes)\n"
    "  --json        a JSON array, one object per certificate:\n"
    "                {\"uid\",\"job\",\"serial\",\"state\",\"issued_at_ms\"}\n"
    "  --certs DIR   also write each certificate to DIR/JOB-UID.pem\n"
    "  --page-size N devices per request to the cloud (default: as many as fit)\n"
    "  --dir DIR     state directory (default: $NUSEC_HOME)\n"
    "  -h, --help    this text\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage error.\n";

static const char cli__export_usage[] =
    "usage: nusec device export --job JOB [--format jsonl|csv | --json]\n"
    "                           [--state STATE] [--out FILE] [--dir DIR]\n"
    "\n"
    "The device manifest of a job, for registering its devices with an IoT cloud:\n"
    "one record per device certificate, in issue order, with the device UID (hex),\n"
    "the certificate serial, job, programmer, state (issued, provisioned, failed,\n"
    "revoked), issue time (UTC and Unix ms), the certificate (PEM) and its chain\n"
    "(Device CA + Root, PEM, from DIR/pki/device-chain.pem).\n"
    "\n"
    "  --format jsonl  one JSON object per line (default): {\"uid\",\"serial\",\"job\",\n"
    "                  \"programmer\",\"state\",\"issued_at\",\"issued_at_ms\",\n"
    "                  \"certificate_pem\",\"chain_pem\"}\n"
    "  --json          the same as --format jsonl (docs/cli.md)\n"
    "  --format csv    RFC 4180: a header line, then the same fields in that order\n"
    "                  (PEM fields quoted, with their line breaks)\n"
    "  --state STATE   only the devices in this state (e.g. provisioned)\n"
    "  --out FILE      write to FILE (replaced) instead of stdout\n"
    "  --dir DIR       state directory (default: $NUSEC_HOME)\n"
    "  -h, --help      this text\n"
    "\n"
    "Exit status: 0 done, 1 failed (e.g. the job does not exist), 2 usage error.\n";

static const char cli__revoke_usage[] =
    "usage: nusec device revoke UID [--job JOB] [--reason TEXT] [--dir DIR]\n"
    "\n"
    "Revoke the certificate of the device with UID (hex): the one job JOB issued,\n"
    "or without --job the UID's only certificate (refused when the UID is in\n"
    "several jobs). The quota it used is not returned. The revocation is in the\n"
    "ledger and the audit trail, and the cloud re-issues the device CRL (signed by\n"
    "the Device CA in the HSM: DIR/pki/device-crl.pem, retained on\n"
    "nusec/v1/crl/device). A reason that names an RFC 5280 CRLReason\n"
    "(key-compromise, superseded, cessation-of-operation, affiliation-changed,\n"
    "privilege-withdrawn) is carried in the CRL entry.\n"
    "\n"
    "  --job JOB      the job that issued the certificate\n" CLI_REVOKE_USAGE_TAIL;

struct cli__opts {
    const char *dir;
    const char *job;
    const char *uid;
    const char *reason;
    const char *certs;
    const char *format, *state, *out; /* export */
    int json;
    unsigned page_size; /* 0 = the cloud's maximum */
};

/* 0 = parsed, -1 = help printed, else the exit code of a usage error. */
static int cli__parse(int argc, char **argv, const char *usage, struct cli__opts *o)
{
    const struct cli_opt opts[] = {
        CLI_OPT_STR("dir", &o->dir),
        CLI_OPT_STR("job", &o->job),
        CLI_OPT_STR("uid", &o->uid),
        CLI_OPT_STR("reason", &o->reason),
        CLI_OPT_STR("certs", &o->certs),
        CLI_OPT_BOOL("json", &o->json),
        CLI_OPT_NUM("page-size", &o->page_size, 1, 100000),
        CLI_OPT_STR("format", &o->format),
        CLI_OPT_STR("state", &o->state),
        CLI_OPT_STR("out", &o->out),
    };
    return cli_opts_parse(argc, argv, usage, opts, CLI_OPTS_N(opts));
}

static int cli__uid(const char *what, const char *hex, uint8_t *out, size_t *out_len)
{
    if (nu_hex_decode(hex, out, CLI__UID_MAX, out_len) || *out_len == 0) {
        cli_errorf("%s: '%s' is not a device UID (hex, 1..64 bytes)", what, hex);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

static int cli__job(const char *what, const char *job)
{
    if (job && nu_envelope_id_check(job)) {
        cli_errorf("%s: '%s' is not a job id", what, job);
        return CLI_EXIT_USAGE;
    }
    return 0;
}

int cli_device_cert_export(const char *dir, const Nusec__V1__DeviceCertificate *d)
{
    char path[PATH_MAX], uid[2 * NU_ENVELOPE_UID_MAX + 1];
    char *pem = NULL;
    size_t len = 0;
    int rc = nu_hex_encode(d->device_uid.data, d->device_uid.len, uid, sizeof(uid));
    if (!rc)
        rc = nu_path_fmt(path, sizeof(path), "%s/%s-%s.pem", dir, d->job_id, uid);
    if (!rc)
        rc = d->certificate_der.len
                 ? nu_x509_der_to_pem(d->certificate_der.data, d->certificate_der.len,
                                      NU_X509_PEM_CERT, &pem, &len)
                 : NU_ERR_TOO_LARGE;
    if (!rc)
        rc = nu_file_write_atomic(path, pem, len, 0644);
    free(pem);
    if (rc)
        cli_errorf("cannot export the certificate of %s to %s: %s (%s)", uid, dir, nu_err_str(rc),
                   nu_err_name(rc));
    return rc;
}

/* One row of `device list` (text or JSON), and its export with --certs. */
static int cli__print_one(void *ctx, const Nusec__V1__DeviceCertificate *d, size_t index)
{
    const struct cli__opts *o = ctx;
    char uid[2 * CLI__UID_MAX + 1] = "", when[32];
    nu_hex_encode(d->device_uid.data, d->device_uid.len, uid, sizeof(uid));
    cli_utc(d->issued_at_ms, when, sizeof(when));
    /* uid is hex, job and serial identifiers, state a fixed word: nothing to escape. */
    if (o->json)
        printf("%s{\"uid\":\"%s\",\"job\":\"%s\",\"serial\":\"%s\",\"state\":\"%s\","
               "\"issued_at_ms\":%llu}",
               index ? "," : "", uid, d->job_id, d->serial, d->state,
               (unsigned long long)d->issued_at_ms);
    else
        printf("%-32s %-20s %-32s %-11s %s\n", uid, d->job_id, d->serial, d->state, when);
    return o->certs ? cli_device_cert_export(o->certs, d) : 0;
}

static int cli__list(int argc, char **argv)
{
    struct cli__opts o = {0};
    uint8_t uid[CLI__UID_MAX];
    size_t uid_len = 0;
    int rc = cli__parse(argc, argv, cli__list_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind < argc || o.reason || (!o.job && !o.uid)) {
        cli_errorf("device list: need --job JOB and/or --uid HEX (see --help)");
        return CLI_EXIT_USAGE;
    }
    if ((rc = cli__job("device list", o.job)) ||
        (o.uid && (rc = cli__uid("device list", o.uid, uid, &uid_len))))
        return rc;
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    if (o.certs && nu_mkdirs(o.certs, 0755)) {
        cli_errorf("device list: cannot create %s", o.certs);
        return CLI_EXIT_FAIL;
    }
    struct cli_cloud cc;
    if (cli_cloud_open(dir, "oem", &cc))
        return CLI_EXIT_FAIL;
    /* An unknown job is an error, not an empty table. */
    Nusec__V1__Envelope *job = NULL;
    rc = o.job ? cli_cloud_job_get(&cc, o.job, &job) : NU_OK;
    nu_envelope_free(job);
    if (rc) {
        cli_cloud_close(&cc);
        return CLI_EXIT_FAIL;
    }
    size_t n = 0;
    if (o.json)
        printf("[");
    else
        printf("%-32s %-20s %-32s %-11s %s\n", "UID", "JOB", "SERIAL", "STATE", "ISSUED");
    rc = cli_device_list_all(&cc, o.job, uid, uid_len, o.page_size, cli__print_one, &o, &n);
    if (o.json)
        printf("]\n"); /* one line: docs/cli.md */
    cli_cloud_close(&cc);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

/* ------------------------------------------------------------ export */

struct cli__export {
    FILE *out;
    int csv;
    const char *state; /* NULL: every state */
    const char *chain; /* PEM */
    size_t n;
};

/* An RFC 4180 field: quoted, quotes doubled. */
static void cli__csv_str(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"')
            fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static int cli__export_one(void *ctx, const Nusec__V1__DeviceCertificate *d, size_t index)
{
    struct cli__export *x = ctx;
    char uid[2 * CLI__UID_MAX + 1] = "", when[32];
    char *pem = NULL;
    size_t pem_len = 0;
    (void)index;
    if (x->state && strcmp(x->state, d->state) != 0)
        return 0;
    int rc = d->certificate_der.len ? nu_x509_der_to_pem(d->certificate_der.data,
                                                         d->certificate_der.len, NU_X509_PEM_CERT,
                                                         &pem, &pem_len)
                                    : NU_ERR_DECODE;
    if (rc)
        return cli_fail("device export: a certificate of the answer", rc);
    nu_hex_encode(d->device_uid.data, d->device_uid.len, uid, sizeof(uid));
    cli_utc(d->issued_at_ms, when, sizeof(when));
    const char *prog = d->programmer_id ? d->programmer_id : "";
    if (x->csv) {
        fprintf(x->out, "%s,%s,%s,%s,%s,%s,%llu,", uid, d->serial, d->job_id, prog, d->state,
                when, (unsigned long long)d->issued_at_ms);
        cli__csv_str(x->out, pem);
        fputc(',', x->out);
        cli__csv_str(x->out, x->chain);
        fputs("\r\n", x->out);
    } else {
        fprintf(x->out, "{\"uid\":\"%s\",\"serial\":", uid);
        cli_json_fstr(x->out, d->serial);
        fputs(",\"job\":", x->out);
        cli_json_fstr(x->out, d->job_id);
        fputs(",\"programmer\":", x->out);
        cli_json_fstr(x->out, prog);
        fputs(",\"state\":", x->out);
        cli_json_fstr(x->out, d->state);
        fprintf(x->out, ",\"issued_at\":\"%s\",\"issued_at_ms\":%llu,\"certificate_pem\":", when,
                (unsigned long long)d->issued_at_ms);
        cli_json_fstr(x->out, pem);
        fputs(",\"chain_pem\":", x->out);
        cli_json_fstr(x->out, x->chain);
        fputs("}\n", x->out);
    }
    free(pem);
    x->n++;
    return 0;
}

/* The checks of `device export`; 0 or the exit code. */
static int cli__export_args(const struct cli__opts *o, int argc, struct cli__export *x)
{
    if (optind < argc || !o->job || o->uid || o->reason || o->certs) {
        cli_errorf("device export: need --job JOB (see --help)");
        return CLI_EXIT_USAGE;
    }
    /* --json is every command's JSON switch: here it is --format jsonl. */
    if (o->json && o->format && strcmp(o->format, "jsonl") != 0) {
        cli_errorf("device export: --json is --format jsonl, not '%s'", o->format);
        return CLI_EXIT_USAGE;
    }
    if (o->format && strcmp(o->format, "jsonl") != 0 && strcmp(o->format, "csv") != 0) {
        cli_errorf("device export: --format is jsonl or csv, not '%s'", o->format);
        return CLI_EXIT_USAGE;
    }
    x->csv = o->format && !strcmp(o->format, "csv");
    x->state = o->state;
    return cli__job("device export", o->job);
}

static int cli__export(int argc, char **argv)
{
    struct cli__opts o = {0};
    struct cli__export x = {.out = stdout};
    char chain_path[PATH_MAX];
    uint8_t *chain = NULL;
    size_t chain_len = 0;
    struct cli_cloud cc = {0};
    Nusec__V1__Envelope *job = NULL;
    int rc = cli__parse(argc, argv, cli__export_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = cli__export_args(&o, argc, &x)))
        return rc;
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    rc = nu_paths_get(dir, NU_PATH_DEVICE_CHAIN, chain_path, sizeof(chain_path));
    if (!rc && (rc = nu_file_read(chain_path, 65536, &chain, &chain_len)) != NU_OK)
        cli_errorf("device export: cannot read %s", chain_path);
    if (!rc && !(rc = cli_cloud_open(dir, "oem", &cc)))
        rc = cli_cloud_job_get(&cc, o.job, &job); /* an unknown job is an error */
    if (!rc && o.out && !(x.out = fopen(o.out, "w"))) {
        cli_errorf("device export: cannot write %s", o.out);
        rc = NU_ERR_IO;
    }
    x.chain = (const char *)chain; /* nu_file_read NUL-terminates */
    if (!rc && x.csv)
        fputs("uid,serial,job,programmer,state,issued_at,issued_at_ms,certificate_pem,"
              "chain_pem\r\n",
              x.out);
    if (!rc)
        rc = cli_device_list_all(&cc, o.job, NULL, 0, o.page_size, cli__export_one, &x, NULL);
    if (x.out && x.out != stdout && fclose(x.out) != 0 && !rc)
        rc = cli_fail("device export: writing the file", NU_ERR_IO);
    else if (!rc)
        fprintf(stderr, "nusec: exported %zu device(s) of %s%s%s\n", x.n, o.job,
                o.out ? " to " : "", o.out ? o.out : "");
    nu_envelope_free(job);
    cli_cloud_close(&cc);
    free(chain);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

static int cli__revoke(int argc, char **argv)
{
    struct cli__opts o = {0};
    uint8_t uid[CLI__UID_MAX];
    size_t uid_len = 0;
    int rc = cli__parse(argc, argv, cli__revoke_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind != argc - 1 || o.uid || o.certs || o.json) {
        cli_errorf("device revoke: need one device UID (see --help)");
        return CLI_EXIT_USAGE;
    }
    if ((rc = cli__job("device revoke", o.job)) ||
        (rc = cli__uid("device revoke", argv[optind], uid, &uid_len)))
        return rc;
    Nusec__V1__DeviceRevokeRequest req = NUSEC__V1__DEVICE_REVOKE_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.job_id = (char *)(o.job ? o.job : "");
    req.device_uid.data = uid;
    req.device_uid.len = uid_len;
    req.reason = (char *)(o.reason ? o.reason : "");
    rc = cli_cloud_revoke("device revoke", o.dir, o.reason, "device.revoke", &req.base, &reply);
    if (rc == CLI_EXIT_OK)
        printf("device %s of job %s revoked\n", argv[optind], o.job ? o.job : reply->ack->detail);
    nu_envelope_free(reply);
    return rc;
}

const struct cli_command cli_device_commands[] = {
    {"device", "list", "list (and export) device certificates by job or UID", cli__list},
    {"device", "export", "device manifest of a job (jsonl or csv) for an IoT cloud", cli__export},
    {"device", "revoke", "revoke a device certificate", cli__revoke},
    {NULL, NULL, NULL, NULL},
};
