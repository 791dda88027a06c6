/* nusec pki init */
#include "cli.h"
#include "cli_opts.h"
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

static int cli__pki_init(int argc, char **argv)
{
    struct pki_init_opts opts = {.host = "127.0.0.1"};
    const char *dir_opt = NULL;
    unsigned port = 0, validity_days = 0;
    const struct cli_opt options[] = {
        CLI_OPT_STR("dir", &dir_opt),
        CLI_OPT_BOOL("force", &opts.force),
        CLI_OPT_STR("host", &opts.host),
        CLI_OPT_NUM("port", &port, 1, 65535),
        CLI_OPT_STR("pkcs11-module", &opts.module),
        CLI_OPT_STR("plugin", &opts.plugin),
        CLI_OPT_NUM("validity-days", &validity_days, 1, 36500),
    };
    int prc = cli_opts_parse(argc, argv, cli__pki_init_usage, options, CLI_OPTS_N(options));
    if (prc)
        return prc < 0 ? CLI_EXIT_OK : prc;
    opts.port = (int)port;
    opts.validity_days = validity_days;
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
