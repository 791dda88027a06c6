/* nusec pki init */
#include "cli.h"
#include "cli_opts.h"
#include "pki_init.h"

#include "nu_err.h"
#include "nu_util.h"

#include <errno.h>
#include <getopt.h>
#include <stdlib.h>
#include <string.h>

static const char cli__pki_init_usage[] =
    "usage: nusec pki init [--dir DIR] [--force] [--host ADDR] [--port N]\n"
    "                      [--pkcs11-module PATH] [--token-label L | --slot N]\n"
    "                      [--pin-file F] [--adopt-keys] [--module-init-args S]\n"
    "                      [--module-env NAME=VALUE]... [--plugin PATH]\n"
    "                      [--validity-days N] [--org NAME]\n"
    "\n"
    "Create the OEM PKI inside the HSM and the broker configuration under DIR.\n"
    "\n"
    "  --dir DIR             state directory (default: $NUSEC_HOME)\n"
    "  --force               move an existing PKI aside (DIR/pki.old-TIME, ...)\n"
    "                        instead of refusing; put back if this run fails\n"
    "  --host ADDR           broker listen address (default 127.0.0.1)\n"
    "  --port N              broker port (default: a free port)\n"
    "  --pkcs11-module PATH  PKCS#11 module of the HSM (default: SoftHSM2)\n"
    "  --token-label L       use the existing token labelled L (made by the HSM's\n"
    "                        administrators): no token initialisation, no SO PIN\n"
    "  --slot N              use the existing token in slot N instead\n"
    "  --pin-file F          user PIN of that token (a 0600/0400 file, recorded and\n"
    "                        read by every program; default: $NUSEC_HSM_PIN)\n"
    "  --adopt-keys          keys already in the token under NuSEC's labels are\n"
    "                        checked (sensitive, never extractable, local, P-256,\n"
    "                        a test signature) and used; without it they are refused\n"
    "  --module-init-args S  C_Initialize parameter string (pReserved) the module\n"
    "                        needs, e.g. NSS softokn's \"configdir='sql:DIR' ...\"\n"
    "  --module-env NAME=VALUE  environment the module reads (repeatable), e.g.\n"
    "                        TPM2_PKCS11_TCTI=tabrmd:bus_type=session\n"
    "  --plugin PATH         nusec_auth broker plugin (default: the built one)\n"
    "  --validity-days N     leaf certificate validity (default 825; CAs 10x)\n"
    "  --org NAME            the OEM's organisation: O of every certificate, and the\n"
    "                        CAs' CNs \"NAME Root CA\", \"NAME Fleet CA\", \"NAME Device CA\"\n"
    "                        (default NuSEC; 1..40 printable characters)\n"
    "  -h, --help            this text\n"
    "\n"
    "Without --token-label or --slot a new token is created: a SoftHSM2 token under\n"
    "DIR/hsm (PINs in DIR/hsm/pin and so-pin, 0600), or with --pkcs11-module a token\n"
    "initialised in that module. Token labels are per PKI (nusec-XXXXXXXX).\n"
    "How to open the HSM (module, token, PIN file, init args, environment) is\n"
    "recorded in DIR/hsm/pkcs11.conf and used by every NuSEC program.\n"
    "\n"
    "Creates the Root, Fleet and Device CAs, the secure-boot, package and audit\n"
    "keys inside the HSM (non-extractable); writes DIR/pki/{root-ca,fleet-ca,\n"
    "device-ca,chain}.pem, DIR/pki/broker.{crt,key}, DIR/pki/clients/ROLE.{crt,key}\n"
    "for ROLE in cloud station monitor oem, DIR/broker/mosquitto.conf and\n"
    "DIR/broker/endpoint, DIR/firmware/rotpk.pem.\n"
    "\n"
    "A failed run removes what it made (keys destroyed, folders deleted, a --force'd\n"
    "PKI put back), names what it could not remove, and leaves DIR/pki-init.failed\n"
    "so that `nusec stack up` refuses to build another PKI in its place.\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage error, 3 refused and nothing changed\n"
    "(a PKI exists, see --force; or the token holds keys, see --adopt-keys).\n";

static int cli__parse_slot(const char *text, unsigned long *out)
{
    char *end = NULL;
    if (!text || !*text || *text == '-')
        return 0;
    errno = 0;
    *out = strtoul(text, &end, 0);
    return errno == 0 && *end == '\0';
}

static int cli__pki_init(int argc, char **argv)
{
    struct pki_init_opts opts = {.host = "127.0.0.1"};
    const char *dir_opt = NULL, *slot = NULL, *env_v[8];
    struct cli_opt_list env = {env_v, 0};
    unsigned port = 0, validity_days = 0;
    const struct cli_opt options[] = {
        CLI_OPT_STR("dir", &dir_opt),
        CLI_OPT_BOOL("force", &opts.force),
        CLI_OPT_STR("host", &opts.host),
        CLI_OPT_NUM("port", &port, 1, 65535),
        CLI_OPT_STR("pkcs11-module", &opts.module),
        CLI_OPT_STR("token-label", &opts.token_label),
        CLI_OPT_STR("slot", &slot),
        CLI_OPT_STR("pin-file", &opts.pin_file),
        CLI_OPT_BOOL("adopt-keys", &opts.adopt_keys),
        CLI_OPT_STR("module-init-args", &opts.init_args),
        CLI_OPT_ALL("module-env", &env, 8),
        CLI_OPT_STR("plugin", &opts.plugin),
        CLI_OPT_NUM("validity-days", &validity_days, 1, 36500),
        CLI_OPT_STR("org", &opts.org),
    };
    int prc = cli_opts_parse(argc, argv, cli__pki_init_usage, options, CLI_OPTS_N(options));
    if (prc)
        return prc < 0 ? CLI_EXIT_OK : prc;
    opts.port = (int)port;
    opts.validity_days = validity_days;
    opts.module_env = env_v;
    opts.n_module_env = env.n;
    if (optind < argc) {
        cli_errorf("pki init: unexpected argument '%s'", argv[optind]);
        return CLI_EXIT_USAGE;
    }
    if (slot && !(opts.use_slot = cli__parse_slot(slot, &opts.slot))) {
        cli_errorf("pki init: --slot '%s' is not a slot number", slot);
        return CLI_EXIT_USAGE;
    }
    if (opts.use_slot && opts.token_label) {
        cli_errorf("pki init: --token-label and --slot name the same thing; give one");
        return CLI_EXIT_USAGE;
    }
    if (opts.token_label && (!*opts.token_label || strlen(opts.token_label) > 32)) {
        cli_errorf("pki init: --token-label must be 1 to 32 bytes");
        return CLI_EXIT_USAGE;
    }
    if ((opts.pin_file || opts.adopt_keys) && !opts.use_slot && !opts.token_label) {
        cli_errorf("pki init: --pin-file and --adopt-keys are for an existing token "
                   "(--token-label or --slot)");
        return CLI_EXIT_USAGE;
    }
    if (opts.org && !pki_org_valid(opts.org)) {
        cli_errorf("pki init: --org must be 1 to 40 printable characters");
        return CLI_EXIT_USAGE;
    }
    if (!(opts.dir = cli_state_dir(dir_opt)))
        return CLI_EXIT_USAGE;

    int rc = pki_init_run(&opts); /* it tells the user what happened */
    if (rc == NU_ERR_EXISTS)
        return CLI_EXIT_REFUSED;
    if (rc)
        return CLI_EXIT_FAIL;
    printf("PKI created in %s\n", opts.dir);
    return CLI_EXIT_OK;
}

const struct cli_command cli_pki_commands[] = {
    {"pki", "init", "create the HSM token, CAs, keys, certificates and broker config",
     cli__pki_init},
    {NULL, NULL, NULL, NULL},
};
