/* nusec firmware sign|list — MCUboot images signed in the cloud's HSM (as oem). */
#include "cli.h"
#include "cli_cloud.h"
#include "cli_opts.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_ihex.h"
#include "nu_mcuboot.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <getopt.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

static const char cli__sign_usage[] =
    "usage: nusec firmware sign --in FILE --name NAME --version X.Y.Z\n"
    "                           [--security-counter N] [--json] [--dir DIR]\n"
    "\n"
    "Have the cloud sign FILE into an MCUboot image with the secure-boot key in\n"
    "its HSM (header, SHA-256, KEYHASH, ECDSA-P256 signature and security counter\n"
    "TLVs; `imgtool verify --key DIR/firmware/rotpk.pem` accepts it). The image is\n"
    "written to DIR/firmware/NAME-X.Y.Z.img (0644) and the secure-boot public key\n"
    "to DIR/firmware/rotpk.pem, here too, so the OEM has them wherever the cloud\n"
    "runs. A signed version is immutable: an existing NAME-X.Y.Z is refused.\n"
    "\n"
    "  --in FILE               the firmware: raw binary, or Intel HEX when the name\n"
    "                          ends in .hex, .ihex or .ihx (gaps filled with 0xFF)\n"
    "  --name NAME             image name: [A-Za-z0-9._-]\n"
    "  --version X.Y.Z         image version (X, Y <= 255, Z <= 65535)\n"
    "  --security-counter N    rollback counter (default 0)\n"
    "  --json                  print {\"image\",\"path\",\"size\",\"digest\"}\n"
    "  --dir DIR               state directory (default: $NUSEC_HOME)\n"
    "  -h, --help              this text\n"
    "\n"
    "The payload may be up to 4 MiB. The digest printed is SHA-256 of the whole\n"
    "image file (what sha256sum prints), as packages and manifests carry it.\n"
    "\n"
    "Exit status: 0 signed, 1 failed, 2 usage error, 3 NAME-X.Y.Z already exists.\n";

static const char cli__list_usage[] =
    "usage: nusec firmware list [--json] [--dir DIR]\n"
    "\n"
    "List the signed images the cloud holds (those in its DIR/firmware that verify\n"
    "with its secure-boot key): name, size, signing time (UTC), SHA-256 of the file.\n"
    "\n"
    "  --json      a JSON array: {\"image\",\"size\",\"signed_at_ms\",\"digest\"}\n"
    "  --dir DIR   state directory (default: $NUSEC_HOME)\n"
    "  -h, --help  this text\n"
    "\n"
    "Exit status: 0 done, 1 failed, 2 usage error.\n";

struct cli__fw_opts {
    const char *dir;
    const char *in;
    const char *name;
    const char *version;
    const char *counter;
    int json;
};

/* 0 = parsed, -1 = help printed, else the exit code of a usage error. */
static int cli__fw_parse(int argc, char **argv, const char *usage, struct cli__fw_opts *o)
{
    const struct cli_opt opts[] = {
        CLI_OPT_STR("dir", &o->dir),
        CLI_OPT_STR("in", &o->in),
        CLI_OPT_STR("name", &o->name),
        CLI_OPT_STR("version", &o->version),
        CLI_OPT_STR("security-counter", &o->counter),
        CLI_OPT_BOOL("json", &o->json),
    };
    return cli_opts_parse(argc, argv, usage, opts, CLI_OPTS_N(opts));
}

static int cli__is_hex_name(const char *path)
{
    const char *dot = strrchr(path, '.');
    return dot &&
           (!strcasecmp(dot, ".hex") || !strcasecmp(dot, ".ihex") || !strcasecmp(dot, ".ihx"));
}

/* The payload from FILE (binary or Intel HEX). Prints why on failure. */
static int cli__payload_load(const char *path, uint8_t **out, size_t *out_len)
{
    if (cli__is_hex_name(path)) {
        struct nu_ihex_image img;
        size_t line = 0;
        int rc = nu_ihex_load(path, NU_ENVELOPE_FIRMWARE_MAX, &img, &line);
        if (rc) {
            if (line)
                cli_errorf("%s: line %zu: %s (%s)", path, line, nu_err_str(rc), nu_err_name(rc));
            else
                cli_errorf("%s: %s (%s)", path, nu_err_str(rc), nu_err_name(rc));
            return rc;
        }
        fprintf(stderr, "nusec: %s: Intel HEX, %zu bytes from 0x%08x\n", path, img.len,
                (unsigned)img.base);
        *out = img.data;
        *out_len = img.len;
        return NU_OK;
    }
    int rc = nu_file_read(path, NU_ENVELOPE_FIRMWARE_MAX, out, out_len);
    if (!rc && *out_len == 0) {
        free(*out);
        *out = NULL;
        rc = NU_ERR_INVALID_ARG;
    }
    if (rc == NU_ERR_TOO_LARGE)
        cli_errorf("%s: larger than the %u bytes a firmware may have", path,
                   NU_ENVELOPE_FIRMWARE_MAX);
    else if (rc)
        cli_errorf("%s: %s (%s)", path, rc == NU_ERR_INVALID_ARG ? "empty file" : nu_err_str(rc),
                   nu_err_name(rc));
    return rc;
}

/*
 * Write `data` to path as a new file (0644); an existing file with exactly
 * these bytes is fine (the cloud shares this state directory), any other
 * is EXISTS.
 */
static int cli__write_new_or_same(const char *path, const uint8_t *data, size_t len)
{
    uint8_t *old = NULL;
    size_t old_len = 0;
    int rc = nu_file_write_new(path, data, len, 0644);
    if (rc != NU_ERR_EXISTS)
        return rc;
    if (!nu_file_read(path, len + 1, &old, &old_len) && old_len == len &&
        memcmp(old, data, len) == 0)
        rc = NU_OK;
    free(old);
    return rc;
}

/* Check the answer before anything is written: it is the image we asked for. */
static int cli__sign_answer_check(const Nusec__V1__FirmwareSignResponse *r, const char *want_name,
                                  const uint8_t *payload, size_t payload_len)
{
    uint8_t pub[NU_P256_PUB_LEN], rotpk_hash[NU_SHA256_LEN], digest[NU_SHA256_LEN];
    struct nu_mcuboot_info info;
    if (strcmp(r->image_name, want_name) != 0 || r->image_digest.len != NU_SHA256_LEN)
        return NU_ERR_DECODE;
    int rc = nu_p256_pub_from_pem((const char *)r->rotpk_pem.data, r->rotpk_pem.len, pub);
    if (!rc)
        rc = nu_mcuboot_rotpk_hash(pub, rotpk_hash);
    if (!rc)
        rc = nu_mcuboot_verify(r->image.data, r->image.len, pub, rotpk_hash, &info);
    if (!rc)
        rc = nu_sha256(r->image.data, r->image.len, digest);
    if (!rc && (memcmp(digest, r->image_digest.data, NU_SHA256_LEN) != 0 ||
                info.payload_len != payload_len ||
                memcmp(r->image.data + info.payload_off, payload, payload_len) != 0))
        rc = NU_ERR_BAD_FIRMWARE;
    return rc;
}

/* rotpk.pem is the root of trust: written when missing, never replaced by another key. */
static int cli__rotpk_keep(const char *dir, const ProtobufCBinaryData *pem)
{
    char path[PATH_MAX];
    uint8_t *old = NULL, a[NU_P256_PUB_LEN], b[NU_P256_PUB_LEN];
    size_t old_len = 0;
    int rc = nu_paths_get(dir, NU_PATH_ROTPK, path, sizeof(path));
    if (rc)
        return rc;
    if (nu_file_read(path, NU_PEM_IN_MAX, &old, &old_len) != NU_OK)
        return nu_file_write_atomic(path, pem->data, pem->len, 0644);
    rc = nu_p256_pub_from_pem((char *)old, old_len, a);
    if (!rc)
        rc = nu_p256_pub_from_pem((const char *)pem->data, pem->len, b);
    if (!rc && memcmp(a, b, sizeof(a)) != 0) {
        cli_errorf("%s holds another secure-boot key than the cloud's: left as it is", path);
        rc = NU_ERR_BAD_SIGNATURE;
    }
    free(old);
    return rc;
}

static int cli__sign_save(const char *dir, const Nusec__V1__FirmwareSignResponse *r, int json)
{
    char fwdir[PATH_MAX], path[PATH_MAX], hex[2 * NU_SHA256_LEN + 1];
    int rc = nu_paths_get(dir, NU_PATH_FIRMWARE, fwdir, sizeof(fwdir));
    if (!rc)
        rc = nu_mkdirs(fwdir, 0755);
    if (!rc)
        rc = nu_path_fmt(path, sizeof(path), "%s/%s.img", fwdir, r->image_name);
    if (!rc)
        rc = cli__write_new_or_same(path, r->image.data, r->image.len);
    if (rc == NU_ERR_EXISTS) {
        cli_errorf("%s exists with other content: not overwritten (the cloud's image was not "
                   "saved here)",
                   path);
        return CLI_EXIT_REFUSED;
    }
    if (!rc)
        rc = cli__rotpk_keep(dir, &r->rotpk_pem);
    if (rc)
        return cli_fail("saving the image", rc);
    nu_hex_encode(r->image_digest.data, NU_SHA256_LEN, hex, sizeof(hex));
    if (json)
        printf("{\"image\":\"%s\",\"path\":\"%s\",\"size\":%zu,\"digest\":\"%s\"}\n", r->image_name,
               path, r->image.len, hex);
    else
        printf("%s\n", r->image_name);
    fprintf(stderr, "nusec: signed %s: %zu bytes, sha256 %s\nnusec: wrote %s\n", r->image_name,
            r->image.len, hex, path);
    return CLI_EXIT_OK;
}

/* Usage checks of sign; 0 or the exit code. */
static int cli__sign_args(struct cli__fw_opts *o, int argc, uint32_t *out_counter, char *image,
                          size_t cap)
{
    struct nu_mcuboot_version ver;
    char *end = NULL;
    if (!o->in || !o->name || !o->version || optind < argc) {
        cli_errorf("firmware sign: need --in FILE, --name NAME and --version X.Y.Z (see --help)");
        return CLI_EXIT_USAGE;
    }
    if (nu_envelope_id_check(o->name)) {
        cli_errorf("firmware sign: '%s' is not a name ([A-Za-z0-9._-])", o->name);
        return CLI_EXIT_USAGE;
    }
    if (nu_mcuboot_version_parse(o->version, &ver) || strchr(o->version, '+')) {
        cli_errorf("firmware sign: '%s' is not a version X.Y.Z", o->version);
        return CLI_EXIT_USAGE;
    }
    unsigned long long n = o->counter ? strtoull(o->counter, &end, 10) : 0;
    if (o->counter && (!*o->counter || *end || o->counter[0] == '-' || n > UINT32_MAX)) {
        cli_errorf("firmware sign: --security-counter wants 0..4294967295");
        return CLI_EXIT_USAGE;
    }
    *out_counter = (uint32_t)n;
    if (nu_path_fmt(image, cap, "%s-%s", o->name, o->version) || nu_envelope_id_check(image)) {
        cli_errorf("firmware sign: NAME-X.Y.Z is limited to 64 characters");
        return CLI_EXIT_USAGE;
    }
    return 0;
}

static int cli__sign(int argc, char **argv)
{
    struct cli__fw_opts o = {0};
    char image[NU_ENVELOPE_ID_MAX + 8], path[PATH_MAX];
    uint32_t counter = 0;
    int rc = cli__fw_parse(argc, argv, cli__sign_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if ((rc = cli__sign_args(&o, argc, &counter, image, sizeof(image))))
        return rc;
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    if (!nu_paths_get(dir, NU_PATH_FIRMWARE, path, sizeof(path)) &&
        !nu_path_fmt(path + strlen(path), sizeof(path) - strlen(path), "/%s.img", image) &&
        nu_path_exists(path)) {
        cli_errorf("%s exists: a signed version is immutable (use a new version)", path);
        return CLI_EXIT_REFUSED;
    }
    uint8_t *payload = NULL;
    size_t len = 0;
    if (cli__payload_load(o.in, &payload, &len))
        return CLI_EXIT_FAIL;
    Nusec__V1__FirmwareSignRequest req = NUSEC__V1__FIRMWARE_SIGN_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.name = (char *)o.name;
    req.version = (char *)o.version;
    req.security_counter = counter;
    req.payload = (ProtobufCBinaryData){len, payload};
    rc = cli_cloud_request(dir, "oem", "firmware.sign", &req.base,
                           NUSEC__V1__ENVELOPE__BODY_FIRMWARE_SIGN_RESPONSE, &reply);
    int exit_code = rc == NU_ERR_EXISTS ? CLI_EXIT_REFUSED : CLI_EXIT_FAIL;
    if (!rc) {
        const Nusec__V1__FirmwareSignResponse *r = reply->firmware_sign_response;
        rc = cli__sign_answer_check(r, image, payload, len);
        exit_code = rc ? cli_fail("the cloud's answer", rc) : cli__sign_save(dir, r, o.json);
    }
    nu_envelope_free(reply);
    free(payload);
    return exit_code;
}

static int cli__list(int argc, char **argv)
{
    struct cli__fw_opts o = {0};
    int rc = cli__fw_parse(argc, argv, cli__list_usage, &o);
    if (rc)
        return rc < 0 ? CLI_EXIT_OK : rc;
    if (optind < argc || o.in || o.name || o.version || o.counter) {
        cli_errorf("firmware list: takes only --json and --dir");
        return CLI_EXIT_USAGE;
    }
    const char *dir = cli_state_dir(o.dir);
    if (!dir)
        return CLI_EXIT_USAGE;
    Nusec__V1__FirmwareListRequest req = NUSEC__V1__FIRMWARE_LIST_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    rc = cli_cloud_request(dir, "oem", "firmware.list", &req.base,
                           NUSEC__V1__ENVELOPE__BODY_FIRMWARE_LIST, &reply);
    if (!rc) {
        const Nusec__V1__FirmwareList *l = reply->firmware_list;
        /* Names are identifiers and digests hex: nothing to escape. */
        if (o.json)
            printf("[");
        else
            printf("%-32s %9s %-21s %s\n", "IMAGE", "SIZE", "SIGNED", "SHA256");
        for (size_t i = 0; i < l->n_images; i++) {
            const Nusec__V1__FirmwareInfo *f = l->images[i];
            char hex[2 * NU_ENVELOPE_DIGEST_MAX + 1] = "", when[32];
            nu_hex_encode(f->image_digest.data, f->image_digest.len, hex, sizeof(hex));
            cli_utc(f->signed_at_ms, when, sizeof(when));
            if (o.json)
                printf("%s{\"image\":\"%s\",\"size\":%u,\"signed_at_ms\":%llu,\"digest\":\"%s\"}",
                       i ? "," : "", f->image_name, f->size, (unsigned long long)f->signed_at_ms,
                       hex);
            else
                printf("%-32s %9u %-21s %s\n", f->image_name, f->size, when, hex);
        }
        if (o.json)
            printf("]\n"); /* one line: docs/cli.md */
    }
    nu_envelope_free(reply);
    return rc ? CLI_EXIT_FAIL : CLI_EXIT_OK;
}

const struct cli_command cli_firmware_commands[] = {
    {"firmware", "sign", "sign a firmware into an MCUboot image in the HSM", cli__sign},
    {"firmware", "list", "list the signed firmware images", cli__list},
    {NULL, NULL, NULL, NULL},
};
