/* nusec programmer token|list|revoke — programmer identities, through the cloud (as oem). */
#include "cli.h"
#include "cli_cloud.h"
#include "cli_opts.h"

#include "nu_err.h"
#include "nu_util.h"
#include "station_owners.h"
#include "station_proc.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#define CLI__TTL_MAX_S (30u * 24u * 3600u)

static const char cli__token_usage[] =
    "usage: nusec programmer token --name ID [--ttl DURATION] [--json] [--dir DIR]\n"
    "\n"
    "Ask the cloud for a one-time enrollment token bound to programmer ID. The\n"
    "token is printed once, on stdout; the cloud keeps only its hash. Give it to\n"
    "the programmer's enrollment (nusec programmer enroll, or nusec-programmer\n"
    "--enroll TOKEN), which the OEM relays by default (--relay station at the CM).\n"
    "\n"
    "  --name ID        programmer identity: 1..64 of [A-Za-z0-9._-], not a role\n"
    "                   name (cloud station monitor oem broker programmer)\n"
    "  --ttl DURATION   how long the token is valid: 90s, 15m, 12h, 30d or seconds\n"
    "                   (default 24h, at most 30d)\n"
    "  --json           print {\"programmer\",\"token\",\"expires_at_ms\"}\n"
    "  --dir DIR        state directory (default: $NUSEC_HOME)\n"
    "  -h, --help       this text\n"
    "\n"
    "Exit status: 0 done, 1 refused or failed (the error is named), 2 usage error.\n";

static const char cli__list_usage[] =
    "usage: nusec programmer list [--json] [--dir DIR]\n"
    "\n"
    "List the enrolled and revoked programmers the cloud knows: id, state,\n"
    "enrollment time (UTC), identity certificate serial, and what its KeyStore\n"
    "attested at enrollment: the vendor serial and the measurement (SHA-256) of\n"
    "the programmer firmware (\"-\" for programmers enrolled before attestation).\n"
    "\n"
    "  --json      a JSON array, one object per programmer: {\"id\",\"state\",\n"
    "              \"enrolled_at_ms\",\"serial\",\"vendor_serial\",\"measurement\"}\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage error.\n";

static const char cli__revoke_usage[] =
    "usage: nusec programmer revoke ID [--reason TEXT] [--dir DIR]\n"
    "\n"
    "Revoke programmer ID for good: the cloud records it in the ledger, adds it\n"
    "to the broker's revocation list (DIR/broker/revoked; the broker disconnects\n"
    "it within about 200 ms) and refuses it from then on. Its id can never\n"
    "enroll again.\n"
    "\n" CLI_REVOKE_USAGE_TAIL;

/* Shared option parsing of the three subcommands. */
struct cli__opts {
    const char *dir;
    const char *name;
    const char *ttl;
    const char *reason;
    int json;
};

/* 0 = parsed, else the exit code (help printed, or a usage error). */
static int cli__parse(int argc, char **argv, const char *usage, struct cli__opts *o)
{
    const struct cli_opt opts[] = {
        CLI_OPT_STR("dir", &o->dir),    CLI_OPT_STR("name", &o->name),
        CLI_OPT_STR("ttl", &o->ttl),    CLI_OPT_STR("reason", &o->reason),
        CLI_OPT_BOOL("json", &o->json),
    };
    return cli_opts_parse(argc, argv, usage, opts, CLI_OPTS_N(opts));
}

/* Ask the cloud (as oem) for a one-time enrollment token; prints errors. */
static int cli__mint_token_ttl(const char *dir, const char *name, uint32_t ttl_s, char *out,
                               size_t cap, uint64_t *out_expires)
{
    Nusec__V1__EnrollTokenRequest req = NUSEC__V1__ENROLL_TOKEN_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.programmer_id = (char *)name;
    req.ttl_s = ttl_s;
    int rc = cli_cloud_request(dir, "oem", "enroll.token", &req.base,
                               NUSEC__V1__ENVELOPE__BODY_ENROLL_TOKEN_RESPONSE, &reply);
    if (!rc) {
        const Nusec__V1__EnrollTokenResponse *t = reply->enroll_token_response;
        rc = nu_path_fmt(out, cap, "%s", t->token ? t->token : "");
        if (!rc && !out[0])
            rc = NU_ERR_DECODE;
        if (out_expires)
            *out_expires = t->expires_at_ms;
        if (t->token)
            nu_zero(t->token, strlen(t->token));
    }
    nu_envelope_free(reply);
    return rc;
}

static int cli__mint_token(const char *dir, const char *name, char *out, size_t cap)
{
    return cli__mint_token_ttl(dir, name, 0, out, cap, NULL);
}

static int cli__token(int argc, char **argv)
{
    struct cli__opts o = {0};
    uint64_t ttl = 0;
    int rc = cli__parse(argc, argv, cli__token_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (!o.name || optind < argc) {
        cli_errorf("programmer token: need --name ID and no other argument");
        return CLI_EXIT_USAGE;
    }
    if (nu_envelope_id_check(o.name)) {
        cli_errorf("programmer token: '%s' is not an identity ([A-Za-z0-9._-], 1..64)", o.name);
        return CLI_EXIT_USAGE;
    }
    if (o.ttl && (nu_duration_parse(o.ttl, &ttl) || ttl == 0 || ttl > CLI__TTL_MAX_S)) {
        cli_errorf("programmer token: --ttl wants a duration up to 30d, not '%s'", o.ttl);
        return CLI_EXIT_USAGE;
    }
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    char token[NU_ENVELOPE_TOKEN_MAX + 1], until[32];
    uint64_t expires = 0;
    if ((rc = cli__mint_token_ttl(dir, o.name, (uint32_t)ttl, token, sizeof(token), &expires)))
        return CLI_EXIT_FAIL;
    cli_utc(expires, until, sizeof(until));
    if (o.json)
        printf("{\"programmer\":\"%s\",\"token\":\"%s\",\"expires_at_ms\":%llu}\n", o.name, token,
               (unsigned long long)expires);
    else
        printf("%s\n", token);
    fflush(stdout);
    nu_zero(token, sizeof(token));
    fprintf(stderr, "nusec: enrollment token for %s, valid until %s; it is shown only once\n",
            o.name, until);
    return CLI_EXIT_OK;
}

static int cli__list(int argc, char **argv)
{
    struct cli__opts o = {0};
    int rc = cli__parse(argc, argv, cli__list_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind < argc || o.name || o.ttl || o.reason) {
        cli_errorf("programmer list: takes only --json and --dir");
        return CLI_EXIT_USAGE;
    }
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    Nusec__V1__ProgrammerListRequest req = NUSEC__V1__PROGRAMMER_LIST_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    rc = cli_cloud_request(dir, "oem", "programmer.list", &req.base,
                           NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_LIST, &reply);
    if (!rc) {
        const Nusec__V1__ProgrammerList *l = reply->programmer_list;
        /* Ids, states and serials are identifiers or hex: nothing to escape. */
        if (o.json)
            printf("[");
        else
            printf("%-24s %-9s %-21s %-33s %-17s %s\n", "ID", "STATE", "ENROLLED", "SERIAL",
                   "VENDOR SERIAL", "MEASUREMENT");
        for (size_t i = 0; i < l->n_programmers; i++) {
            const Nusec__V1__ProgrammerInfo *p = l->programmers[i];
            const char *vs = p->vendor_serial && p->vendor_serial[0] ? p->vendor_serial : "-";
            const char *ms = p->firmware_measurement && p->firmware_measurement[0]
                                 ? p->firmware_measurement
                                 : "-";
            char when[32];
            cli_utc(p->enrolled_at_ms, when, sizeof(when));
            if (o.json)
                printf("%s{\"id\":\"%s\",\"state\":\"%s\",\"enrolled_at_ms\":%llu,"
                       "\"serial\":\"%s\",\"vendor_serial\":\"%s\",\"measurement\":\"%s\"}",
                       i ? "," : "", p->programmer_id, p->state,
                       (unsigned long long)p->enrolled_at_ms, p->certificate_serial,
                       p->vendor_serial ? p->vendor_serial : "",
                       p->firmware_measurement ? p->firmware_measurement : "");
            else
                printf("%-24s %-9s %-21s %-33s %-17s %s\n", p->programmer_id, p->state, when,
                       p->certificate_serial, vs, ms);
        }
        if (o.json)
            printf("]\n"); /* one line: docs/cli.md */
    }
    nu_envelope_free(reply);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

static int cli__revoke(int argc, char **argv)
{
    struct cli__opts o = {0};
    int rc = cli__parse(argc, argv, cli__revoke_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind != argc - 1 || o.name || o.ttl || o.json) {
        cli_errorf("programmer revoke: need exactly one programmer ID (see --help)");
        return CLI_EXIT_USAGE;
    }
    const char *id = argv[optind];
    if (nu_envelope_id_check(id)) {
        cli_errorf("programmer revoke: '%s' is not an identity", id);
        return CLI_EXIT_USAGE;
    }
    Nusec__V1__ProgrammerRevokeRequest req = NUSEC__V1__PROGRAMMER_REVOKE_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.programmer_id = (char *)id;
    req.reason = (char *)(o.reason ? o.reason : "");
    rc = cli_cloud_revoke("programmer revoke", o.dir, o.reason, "programmer.revoke", &req.base,
                          &reply);
    if (rc == CLI_EXIT_OK)
        printf("programmer %s revoked\n", id);
    nu_envelope_free(reply);
    return rc;
}

static const char cli__revoke_fw_usage[] =
    "usage: nusec programmer revoke-firmware MEASUREMENT [--reason TEXT] [--dir DIR]\n"
    "\n"
    "Withdraw the OEM's approval of a programmer firmware. MEASUREMENT is its\n"
    "measurement, 64 hex digits (the MEASUREMENT column of `nusec programmer list`).\n"
    "The cloud audits the decision, refuses every enrollment attested with that\n"
    "measurement from then on (MEASUREMENT), and revokes every programmer\n"
    "enrolled with it, as `nusec programmer revoke` does (the broker disconnects\n"
    "them). Running it again finishes what a failure left.\n"
    "\n"
    "  --reason TEXT  why (kept in the audit trail; up to 200 bytes)\n"
    "  --dir DIR      state directory (default: $NUSEC_HOME)\n"
    "  -h, --help     this text\n"
    "\n"
    "Exit status: 0 revoked (the count of programmers revoked is printed),\n"
    "1 refused or failed, 2 usage error.\n";

static int cli__revoke_fw(int argc, char **argv)
{
    struct cli__opts o = {0};
    uint8_t m[32];
    size_t m_len = 0;
    int rc = cli__parse(argc, argv, cli__revoke_fw_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind != argc - 1 || o.name || o.ttl || o.json) {
        cli_errorf("programmer revoke-firmware: need exactly one MEASUREMENT (see --help)");
        return CLI_EXIT_USAGE;
    }
    const char *hex = argv[optind];
    if (strlen(hex) != 64 || nu_hex_decode(hex, m, sizeof(m), &m_len) || m_len != sizeof(m)) {
        cli_errorf("programmer revoke-firmware: MEASUREMENT must be 64 hex digits");
        return CLI_EXIT_USAGE;
    }
    if (o.reason && strlen(o.reason) > 200) {
        cli_errorf("programmer revoke-firmware: --reason is limited to 200 bytes");
        return CLI_EXIT_USAGE;
    }
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    Nusec__V1__ProgrammerFirmwareRevokeRequest req =
        NUSEC__V1__PROGRAMMER_FIRMWARE_REVOKE_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.measurement = (char *)hex;
    req.reason = (char *)(o.reason ? o.reason : "");
    rc = cli_cloud_request(dir, "oem", "programmer.firmware_revoke", &req.base,
                           NUSEC__V1__ENVELOPE__BODY_ACK, &reply);
    if (!rc)
        printf("%s\n", reply->ack->detail ? reply->ack->detail : "firmware revoked");
    nu_envelope_free(reply);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

static const char cli__enroll_usage[] =
    "usage: nusec programmer enroll --name ID [--token TOKEN] [--station ID]\n"
    "                               [--relay oem|station] [--dir DIR]\n"
    "\n"
    "Enroll programmer ID before it ships: its KeyStore makes its identity and\n"
    "package keys, the cloud gives a one-time challenge, and the KeyStore's vendor\n"
    "attestation (keys born in it, measured firmware, vendor serial, challenge) goes\n"
    "with the CSR and the one-time TOKEN; the programmer keeps the identity\n"
    "certificate it gets back (nusec-programmer --enroll). The programmer must be\n"
    "factory-initialised (nusec-programmer --factory-init) and run firmware whose\n"
    "boot manifest the OEM signed (DIR/programmers/boot-manifest.img).\n"
    "By default the OEM relays (the oem certificate of DIR: no token travels to the\n"
    "CM); --relay station relays at the CM with the station certificate, under the\n"
    "same attestation. Without --token, a token is minted first with the oem\n"
    "certificate of DIR. The station (default \"station\") becomes the\n"
    "programmer's owner on the broker.\n"
    "\n"
    "Exit status: 0 enrolled, 1 failed (see DIR/logs/ID-enroll.log), 2 usage error.\n";

static int cli__enroll(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"name", required_argument, NULL, 'n'},
        {"token", required_argument, NULL, 't'},
        {"station", required_argument, NULL, 's'},
        {"dir", required_argument, NULL, 'd'},
        {"relay", required_argument, NULL, 'r'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    const char *name = NULL, *token_opt = NULL, *station = "station", *dir_opt = NULL, *dir;
    const char *relay = "oem";
    char token[NU_ENVELOPE_TOKEN_MAX + 1] = "", bin[PATH_MAX], exe[PATH_MAX], log[PATH_MAX];
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'n':
            name = optarg;
            break;
        case 't':
            token_opt = optarg;
            break;
        case 's':
            station = optarg;
            break;
        case 'd':
            dir_opt = optarg;
            break;
        case 'r':
            relay = optarg;
            break;
        case 'h':
            fputs(cli__enroll_usage, stdout);
            return CLI_EXIT_OK;
        default:
            fputs(cli__enroll_usage, stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (!name || optind < argc || nu_envelope_id_check(name) || nu_envelope_id_check(station) ||
        (strcmp(relay, "oem") != 0 && strcmp(relay, "station") != 0)) {
        cli_errorf("programmer enroll: need --name ID (an identity), --relay oem|station; see "
                   "--help");
        return CLI_EXIT_USAGE;
    }
    if (!(dir = cli_state_dir(dir_opt)))
        return CLI_EXIT_USAGE;
    int rc = station_bin_dir(bin, sizeof(bin));
    if (!rc)
        rc = nu_path_fmt(exe, sizeof(exe), "%s/nusec-programmer", bin);
    if (!rc)
        rc = nu_path_fmt(log, sizeof(log), "%s/logs/%s-enroll.log", dir, name);
    if (!rc)
        rc = station_owners_add(dir, station, name);
    if (!rc && token_opt)
        rc = nu_path_fmt(token, sizeof(token), "%s", token_opt);
    else if (!rc)
        rc = cli__mint_token(dir, name, token, sizeof(token));
    pid_t pid = 0;
    int status = 0;
    if (!rc) {
        char *args[] = {exe,        "--dir", (char *)dir, "--name",      (char *)name,
                        "--enroll", token,   "--relay",   (char *)relay, NULL};
        rc = station_proc_spawn(args, log, &pid);
    }
    nu_zero(token, sizeof(token));
    if (!rc && (rc = station_proc_wait_child(pid, 60000, &status)) == NU_ERR_TIMEOUT)
        station_proc_stop(pid, 1000);
    if (!rc && status != 0) {
        cli_errorf("programmer enroll: nusec-programmer --enroll failed; its log:");
        station_log_tail(log, 12);
        return CLI_EXIT_FAIL;
    }
    if (rc)
        return cli_fail("programmer enroll", rc);
    printf("%s enrolled (attested, relayed by %s; owned by %s)\n", name, relay, station);
    return CLI_EXIT_OK;
}

const struct cli_command cli_programmer_commands[] = {
    {"programmer", "token", "mint a one-time enrollment token for a programmer", cli__token},
    {"programmer", "enroll",
     "enroll a programmer of this station (KeyStore keys, CSR, certificate)", cli__enroll},
    {"programmer", "list", "list enrolled and revoked programmers", cli__list},
    {"programmer", "revoke", "revoke a programmer (broker and cloud refuse it)", cli__revoke},
    {"programmer", "revoke-firmware",
     "revoke a programmer firmware measurement (and the programmers running it)",
     cli__revoke_fw},
    {NULL, NULL, NULL, NULL},
};
