/* nusec pki init */
#include "cli.h"
#include "pki_init.h"

#include "nu_err.h"
#include "nu_util.h"

#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char cli__pki_init_usage[] =
    "usage: nusec pki init [--dir DIR] [--force] [--host ADDR] [--port N]\n"
    "                      [--pkcs11-module PATH] [--plugin PATH] [--validity-days N]\n"
    "\n"
    "Create the OEM PKI inside the HSM and the broker configuration under DIR.\n"
    "\n"
    "  --dir DIR             state directory (default: $NUSEC_HOME)\n"
    "  --force               move an existing PKI aside (DIR/pki.old-TIME, ...)\n"
    "                        instead of refusing\n"
    "  --host ADDR           broker listen address (default 127.0.0.1)\n"
    "  --port N              broker port (default: a free port)\n"
    "  --pkcs11-module PATH  PKCS#11 module of an existing HSM (default: a new\n"
    "                        SoftHSM2 token under DIR/hsm)\n"
    "  --plugin PATH         nusec_auth broker plugin (default: the built one)\n"
    "  --validity-days N     leaf certificate validity (default 825; CAs 10x)\n"
    "  -h, --help            this text\n"
    "\n"
    "Creates the Root, Fleet and Device CAs, the secure-boot key and the package\n"
    "key inside the HSM (non-extractable); writes DIR/pki/{root-ca,fleet-ca,\n"
    "device-ca,chain}.pem, DIR/pki/broker.{crt,key}, DIR/pki/clients/ROLE.{crt,key}\n"
    "for ROLE in cloud station monitor oem, DIR/broker/mosquitto.conf and\n"
    "DIR/broker/endpoint, DIR/firmware/rotpk.pem. The user PIN is in DIR/hsm/pin (0600).\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage error, 3 a PKI exists (see --force).\n";

static int cli__parse_uint(const char *text, unsigned max, unsigned *out)
{
    uint64_t v = 0;
    if (nu_parse_uint(text, 0, max, &v))
        return -1;
    *out = (unsigned)v;
    return 0;
}

static int cli__pki_init(int argc, char **argv)
{
    static const struct option longopts[] = {
        {"dir", required_argument, NULL, 'd'},
        {"force", no_argument, NULL, 'f'},
        {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'},
        {"pkcs11-module", required_argument, NULL, 'm'},
        {"plugin", required_argument, NULL, 'P'},
        {"validity-days", required_argument, NULL, 'v'},
        {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0},
    };
    struct pki_init_opts opts = {.host = "127.0.0.1"};
    const char *dir_opt = NULL;
    unsigned value;
    int c;
    optind = 1;
    while ((c = getopt_long(argc, argv, "h", longopts, NULL)) != -1) {
        switch (c) {
        case 'd':
            dir_opt = optarg;
            break;
        case 'f':
            opts.force = 1;
            break;
        case 'H':
            opts.host = optarg;
            break;
        case 'm':
            opts.module = optarg;
            break;
        case 'P':
            opts.plugin = optarg;
            break;
        case 'p':
            if (cli__parse_uint(optarg, 65535, &value) || value == 0) {
                cli_errorf("pki init: --port wants 1..65535, not '%s'", optarg);
                return CLI_EXIT_USAGE;
            }
            opts.port = (int)value;
            break;
        case 'v':
            if (cli__parse_uint(optarg, 36500, &value) || value == 0) {
                cli_errorf("pki init: --validity-days wants 1..36500, not '%s'", optarg);
                return CLI_EXIT_USAGE;
            }
            opts.validity_days = value;
            break;
        case 'h':
            fputs(cli__pki_init_usage, stdout);
            return CLI_EXIT_OK;
        default:
            fputs(cli__pki_init_usage, stderr);
            return CLI_EXIT_USAGE;
        }
    }
    if (optind < argc) {
        cli_errorf("pki init: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    if (!(opts.dir = cli_state_dir(dir_opt)))
        return CLI_EXIT_USAGE;

    int rc = pki_init_run(&opts);
    if (rc == NU_ERR_EXISTS) {
        cli_errorf(
            "pki init: %s already holds a PKI; nothing changed (use --force to move it aside)",
            opts.dir);
        return CLI_EXIT_REFUSED;
    }
    if (rc)
        return cli_fail("pki init", rc);
    printf("PKI created in %s\n", opts.dir);
    return CLI_EXIT_OK;
}

const struct cli_command cli_pki_commands[] = {
    {"pki", "init", "create the HSM token, CAs, keys, certificates and broker config",
     cli__pki_init},
    {NULL, NULL, NULL, NULL},
};
