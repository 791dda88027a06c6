/* nusec audit verify — check the cloud's ledger file directly (no cloud needed). */
#include "cli.h"
#include "cli_opts.h"

#include "audit_checkpoint.h"
#include "ledger.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <getopt.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char cli__verify_usage[] =
    "usage: nusec audit verify [--json] [--key FILE] [--checkpoint SEQ:HEAD] [--dir DIR]\n"
    "                          [--ledger TARGET [--password-file FILE]]\n"
    "\n"
    "Check DIR/cloud/ledger.db, opened read-only: recompute the audit hash chain\n"
    "(seq contiguous, every hash and link, the stored chain head), pair every\n"
    "certificate with its cert.issued event and back, check each job's issued\n"
    "count against its certificates, allocations and quota, and that the schema\n"
    "and its protective triggers are in place, and that every event payload is\n"
    "one strict JSON object with no key given twice (a forged key shows). Any\n"
    "edit made behind the cloud's\n"
    "back (sqlite3 UPDATE/DELETE, a cut tail) shows. Works while the cloud runs.\n"
    "\n"
    "The cloud signs the chain head in its HSM (audit.checkpoint events:\n"
    "periodically, at start and stop, at job close). Each checkpoint's signature is\n"
    "checked with the audit public key: an edit before a checkpoint fails it even\n"
    "when every later hash was recomputed. To catch a wholesale rewrite, keep the\n"
    "last checkpoint printed here (or published on nusec/v1/events/cloud/+/\n"
    "audit.checkpoint) and give it to a later run as --checkpoint.\n"
    "\n"
    "  --json               one JSON object instead of the text report\n"
    "  --key FILE           audit public key (default: DIR/pki/audit-key.pem; an\n"
    "                       auditor should use a copy of their own)\n"
    "  --checkpoint SEQ:HEAD  the ledger must still hold a valid checkpoint of head\n"
    "                       HEAD (64 hex) at seq SEQ\n"
    "  --dir DIR            state directory (default: $NUSEC_HOME)\n"
    "  --ledger TARGET      the ledger to check instead of DIR/cloud/ledger.db: a file\n"
    "                       path or a PostgreSQL URI (postgresql://...), read in one\n"
    "                       read-only snapshot; then DIR is needed only for the key\n"
    "  --password-file FILE the PostgreSQL password (a 0600 file; else PGPASSFILE)\n"
    "  -h, --help           this text\n"
    "\n"
    "Exit status: 0 the ledger is intact, 1 a check failed (the first bad seq and\n"
    "the first finding are printed) or the ledger could not be read, 2 usage error.\n";

/* What the checkpoint check needs: the key, and the anchor to look for. */
struct cli__anchor {
    uint8_t pub[NU_P256_PUB_LEN];
    int have_anchor, anchor_seen;
    uint64_t seq;
    uint8_t head[32];
};

static int cli__check_checkpoint(void *ctx, uint64_t head_seq, const uint8_t head[32],
                                 const char *payload, size_t len)
{
    struct cli__anchor *a = ctx;
    int rc = audit_checkpoint_check(a->pub, head_seq, head, payload, len);
    if (rc == NU_OK && a->have_anchor && head_seq == a->seq && !memcmp(head, a->head, 32))
        a->anchor_seen = 1;
    return rc;
}

/* "SEQ:HEAD" -> anchor. */
static int cli__parse_anchor(const char *text, struct cli__anchor *a)
{
    const char *colon = strchr(text, ':');
    char seq[24];
    size_t n = 0;
    if (!colon || (size_t)(colon - text) >= sizeof(seq))
        return NU_ERR_INVALID_ARG;
    memcpy(seq, text, (size_t)(colon - text));
    seq[colon - text] = '\0';
    if (nu_parse_uint(seq, 1, UINT64_MAX, &a->seq) != NU_OK || strlen(colon + 1) != 64 ||
        nu_hex_decode(colon + 1, a->head, 32, &n) != NU_OK || n != 32)
        return NU_ERR_INVALID_ARG;
    a->have_anchor = 1;
    return NU_OK;
}

/* The key to check checkpoints with: --key, else DIR/pki/audit-key.pem if present.
 * *out_have = 0 when there is none (checkpoints are then only counted). */
static int cli__load_key(const char *dir, const char *key_opt, struct cli__anchor *a, int *out_have)
{
    char path[PATH_MAX];
    uint8_t *pem = NULL;
    size_t len = 0;
    int rc = key_opt ? nu_path_fmt(path, sizeof(path), "%s", key_opt)
                     : nu_paths_get(dir, NU_PATH_AUDIT_PUB, path, sizeof(path));
    *out_have = 0;
    if (rc)
        return rc;
    if (!key_opt && !nu_path_exists(path))
        return NU_OK;
    rc = nu_file_read(path, 4096, &pem, &len);
    if (!rc)
        rc = nu_p256_pub_from_pem((const char *)pem, len, a->pub);
    free(pem);
    if (rc)
        cli_errorf("audit verify: audit key %s", path);
    *out_have = rc == NU_OK;
    return rc;
}

static const char *cli__ok(int ok)
{
    return ok ? "ok" : "FAILED";
}

/* JSON string body: the finding text comes from the ledger, the path from the user. */
static void cli__json_str(const char *s)
{
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\')
            printf("\\%c", c);
        else if (c < 0x20 || c == 0x7f)
            printf("\\u%04x", c);
        else
            putchar(c);
    }
}

static const char *cli__checked(const struct cloud_ledger_verify_report *r)
{
    return !r->checkpoints_checked ? "not checked (no audit key)" : cli__ok(r->checkpoints_ok);
}

static void cli__print_text(const char *path, const struct cloud_ledger_verify_report *r, int ok)
{
    printf("ledger        %s\n", path);
    printf("events        %llu\n", (unsigned long long)r->events);
    printf("certificates  %llu\n", (unsigned long long)r->certificates);
    printf("jobs          %llu\n", (unsigned long long)r->jobs);
    printf("chain         %s\n", cli__ok(r->chain_ok));
    printf("cert events   %s\n", cli__ok(r->certs_ok));
    printf("counts        %s\n", cli__ok(r->counts_ok));
    printf("schema        %s\n", cli__ok(r->schema_ok));
    printf("payloads      %s\n", cli__ok(r->payloads_ok));
    printf("checkpoints   %s, %llu", cli__checked(r), (unsigned long long)r->checkpoints);
    if (r->checkpoints) {
        char head[65];
        nu_hex_encode(r->last_checkpoint_head, 32, head, sizeof(head));
        printf(", last --checkpoint %llu:%s", (unsigned long long)r->last_checkpoint_head_seq,
               head);
    }
    printf("\n");
    if (r->first_bad_seq)
        printf("first bad seq %llu\n", (unsigned long long)r->first_bad_seq);
    if (r->problems)
        printf("problems      %u, first: %s\n", r->problems, r->first_problem);
    printf("result        %s\n", ok ? "INTACT" : "TAMPERED");
}

static void cli__print_json(const char *path, const struct cloud_ledger_verify_report *r, int ok)
{
    char head[65] = "";
    if (r->checkpoints)
        nu_hex_encode(r->last_checkpoint_head, 32, head, sizeof(head));
    printf("{\"ledger\":\"");
    cli__json_str(path);
    printf("\",\"ok\":%s,\"events\":%llu,\"certificates\":%llu,\"jobs\":%llu,"
           "\"chain_ok\":%s,\"certs_ok\":%s,\"counts_ok\":%s,\"schema_ok\":%s,\"payloads_ok\":%s,"
           "\"checkpoints\":%llu,\"checkpoints_checked\":%s,\"checkpoints_ok\":%s,"
           "\"last_checkpoint\":\"%llu:%s\","
           "\"first_bad_seq\":%llu,\"problems\":%u,\"first_problem\":\"",
           ok ? "true" : "false", (unsigned long long)r->events,
           (unsigned long long)r->certificates, (unsigned long long)r->jobs,
           r->chain_ok ? "true" : "false", r->certs_ok ? "true" : "false",
           r->counts_ok ? "true" : "false", r->schema_ok ? "true" : "false",
           r->payloads_ok ? "true" : "false",
           (unsigned long long)r->checkpoints, r->checkpoints_checked ? "true" : "false",
           r->checkpoints_ok ? "true" : "false", (unsigned long long)r->last_checkpoint_head_seq,
           head, (unsigned long long)r->first_bad_seq, r->problems);
    cli__json_str(r->first_problem);
    printf("\"}\n");
}

static int cli__verify(int argc, char **argv)
{
    const char *dir_opt = NULL, *key_opt = NULL, *anchor_opt = NULL;
    const char *ledger_opt = NULL, *pw_opt = NULL;
    struct cli__anchor anchor = {0};
    int json = 0;
    const struct cli_opt options[] = {
        CLI_OPT_STR("dir", &dir_opt),
        CLI_OPT_BOOL("json", &json),
        CLI_OPT_STR("key", &key_opt),
        CLI_OPT_STR("checkpoint", &anchor_opt),
        CLI_OPT_STR("ledger", &ledger_opt),
        CLI_OPT_STR("password-file", &pw_opt),
    };
    int prc = cli_opts_parse(argc, argv, cli__verify_usage, options, CLI_OPTS_N(options));
    if (prc)
        return prc < 0 ? CLI_EXIT_OK : prc;
    if (anchor_opt && cli__parse_anchor(anchor_opt, &anchor) != NU_OK) {
        cli_errorf("audit verify: --checkpoint wants SEQ:HEAD (64 hex digits), not '%s'",
                   anchor_opt);
        return CLI_EXIT_USAGE;
    }
    if (optind < argc) {
        cli_errorf("audit verify: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    /* With --ledger and --key nothing of a state directory is needed. */
    const char *dir = ledger_opt && key_opt && !dir_opt ? "." : cli_state_dir(dir_opt);
    if (!dir)
        return CLI_EXIT_USAGE;
    char path[PATH_MAX * 2];
    struct cloud_ledger_verify_report report;
    struct cloud_ledger_verify_opts opts = {.check_checkpoint = cli__check_checkpoint,
                                            .ctx = &anchor};
    int have_key = 0;
    memset(&report, 0, sizeof(report));
    int rc = cli__load_key(dir, key_opt, &anchor, &have_key);
    if (rc)
        return cli_fail("audit verify", rc);
    if (!have_key && anchor.have_anchor) {
        cli_errorf("audit verify: --checkpoint needs the audit key (--key FILE)");
        return CLI_EXIT_USAGE;
    }
    if (ledger_opt)
        rc = nu_path_fmt(path, sizeof(path), "%s", ledger_opt);
    else
        rc = nu_paths_get(dir, NU_PATH_LEDGER, path, sizeof(path));
    if (!rc)
        rc = cloud_ledger_verify_target(path, pw_opt, have_key ? &opts : NULL, &report);
    if (rc == NU_OK && anchor.have_anchor && !anchor.anchor_seen) {
        /* The report's own finding list is closed: this one is the CLI's. */
        rc = NU_ERR_TAMPERED;
        report.checkpoints_ok = 0;
        report.problems++;
        snprintf(report.first_problem, sizeof(report.first_problem),
                 "no valid checkpoint of seq %llu with that head: the chain was rewritten",
                 (unsigned long long)anchor.seq);
    }
    if (rc && rc != NU_ERR_TAMPERED) {
        cli_errorf("audit verify: %s", path);
        return cli_fail("audit verify", rc);
    }
    if (json)
        cli__print_json(path, &report, rc == NU_OK);
    else
        cli__print_text(path, &report, rc == NU_OK);
    if (rc)
        cli_errorc(rc, "audit verify: the ledger fails its checks%s%s",
                   report.first_problem[0] ? ": " : "", report.first_problem);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

const struct cli_command cli_audit_commands[] = {
    {"audit", "verify", "check the ledger's hash chain and cross-checks", cli__verify},
    {NULL, NULL, NULL, NULL},
};
