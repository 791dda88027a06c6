/* nusec stack: the programmers (vendor, factory, enrollment) and the sites (--sites N). */
#include "cli.h"
#include "cli_cloud.h"
#include "cli_opts.h"
#include "cli_stack_int.h"
#include "cli_site.h"
#include "cli_stack_pg.h"
#include "pki_init.h"

#include "station_owners.h"
#include "station_proc.h"

#include "nu_attest.h"
#include "nu_client.h"
#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_mqtt.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <dirent.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- programmers ------------------------------------------------------------------------- */

/*
 * The programmers' boot manifest: the OEM signs the SHA-256 of the
 * nusec-programmer binary in the HSM (firmware.sign; an MCUboot image whose
 * payload is the hash), and the programmer refuses to run when its own
 * binary does not match (secure boot, checked against the ROTPK pinned in its
 * KeyStore). One image per binary: its name carries the hash, so a rebuilt
 * binary gets a new manifest and an unchanged one reuses the signed image.
 */
int stack__boot_manifest(struct stack *s)
{
    char exe[PATH_MAX], name[64], image[PATH_MAX], manifest[PATH_MAX], hex[17];
    uint8_t *bin = NULL, *img = NULL, digest[32];
    size_t bin_len = 0, img_len = 0;
    Nusec__V1__Envelope *reply = NULL;
    int rc = stack__prog_path(s, "nusec-programmer", exe, sizeof(exe));
    if (!rc)
        rc = nu_file_read(exe, 256u * 1024u * 1024u, &bin, &bin_len);
    if (!rc)
        rc = nu_sha256(bin, bin_len, digest);
    free(bin);
    if (!rc)
        rc = nu_hex_encode(digest, 8, hex, sizeof(hex));
    if (!rc)
        rc = nu_path_fmt(name, sizeof(name), "nusec-programmer-%s", hex);
    if (!rc)
        rc = nu_path_fmt(image, sizeof(image), "%s/firmware/%s-1.0.0.img", s->dir, name);
    if (!rc)
        rc = nu_path_fmt(manifest, sizeof(manifest), "%s/programmers/boot-manifest.img", s->dir);
    if (!rc && nu_path_exists(image)) {
        rc = nu_file_read(image, NU_ENVELOPE_MAX, &img, &img_len);
    } else if (!rc && !(rc = stack__oem_open(s))) {
        Nusec__V1__FirmwareSignRequest req = NUSEC__V1__FIRMWARE_SIGN_REQUEST__INIT;
        req.name = name;
        req.version = "1.0.0";
        req.payload = (ProtobufCBinaryData){sizeof(digest), digest};
        rc = cli_cloud_call(&s->oem, "firmware.sign", &req.base,
                            NUSEC__V1__ENVELOPE__BODY_FIRMWARE_SIGN_RESPONSE, &reply);
    }
    if (!rc && reply)
        rc = nu_file_write_atomic(manifest, reply->firmware_sign_response->image.data,
                                  reply->firmware_sign_response->image.len, 0644);
    else if (!rc)
        rc = nu_file_write_atomic(manifest, img, img_len, 0644);
    nu_envelope_free(reply);
    free(img);
    if (!rc)
        printf("%-10s boot manifest %s (signed in the HSM)\n", "secureboot", name);
    else
        cli_errorf("stack up: programmer boot manifest: %s", nu_err_name(rc));
    return rc;
}

static int stack__token(struct stack *s, const char *name, char *out, size_t cap)
{
    Nusec__V1__Envelope *reply = NULL;
    Nusec__V1__EnrollTokenRequest req = NUSEC__V1__ENROLL_TOKEN_REQUEST__INIT;
    req.programmer_id = (char *)name;
    req.ttl_s = STACK__TOKEN_TTL_S;
    int rc = stack__oem_open(s);
    if (rc == NU_OK)
        rc = cli_cloud_call(&s->oem, "enroll.token", &req.base,
                            NUSEC__V1__ENVELOPE__BODY_ENROLL_TOKEN_RESPONSE, &reply);
    if (rc == NU_OK && (!reply->enroll_token_response->token ||
                        strlen(reply->enroll_token_response->token) >= cap))
        rc = NU_ERR_DECODE;
    if (rc == NU_OK)
        strcpy(out, reply->enroll_token_response->token);
    if (reply) {
        if (reply->enroll_token_response && reply->enroll_token_response->token)
            nu_zero(reply->enroll_token_response->token,
                    strlen(reply->enroll_token_response->token));
        nu_envelope_free(reply);
    }
    return rc;
}

/*
 * The stand-in programmer vendor: its CA lives in DIR/vendor (the OEM's
 * cloud never reads that folder); the OEM pins its certificate as
 * DIR/pki/vendor-ca.pem (cloud.conf vendor_ca, by default). Both are made
 * once; an existing pin is never replaced.
 */
static int stack__vendor_ca(struct stack *s, char *vdir, size_t cap)
{
    char pin[PATH_MAX], src[PATH_MAX];
    uint8_t *pem = NULL;
    size_t len = 0;
    int rc = nu_path_fmt(vdir, cap, "%s/vendor", s->dir);
    if (rc == NU_OK)
        rc = nu_path_fmt(pin, sizeof(pin), "%s/pki/vendor-ca.pem", s->dir);
    if (rc == NU_OK)
        rc = nu_path_fmt(src, sizeof(src), "%s/" NU_ATTEST_VENDOR_CERT, vdir);
    if (rc == NU_OK && !nu_path_exists(src))
        rc = nu_attest_vendor_ca_init(vdir);
    if (rc == NU_OK && !nu_path_exists(pin)) {
        rc = nu_file_read(src, 64u * 1024u, &pem, &len);
        if (rc == NU_OK)
            rc = nu_file_write_atomic(pin, pem, len, 0644);
        free(pem);
    }
    if (rc != NU_OK)
        cli_errorf("stack up: programmer vendor CA: %s", nu_err_name(rc));
    return rc;
}

/* Run nusec-programmer with argv to the end; its exit status in *out_status. */
static int stack__prog_run(struct stack *s, const char *name, char *const argv[], int *out_status)
{
    char log[PATH_MAX];
    pid_t pid = 0;
    int rc = stack__file(s->logs, name, ".log", log, sizeof(log));
    if (rc == NU_OK)
        rc = station_proc_spawn(argv, log, &pid);
    if (rc == NU_OK)
        rc = station_proc_wait_child(pid, s->timeout_s * 1000u, out_status);
    if (rc == NU_ERR_TIMEOUT)
        station_proc_stop(pid, 1000);
    return rc;
}

/* The programmer factory: attestation key in the KeyStore, vendor certificate.
 * Exit 4 = factory-initialised already, which is fine. */
static int stack__factory(struct stack *s, const char *name, const char *exe)
{
    char vdir[PATH_MAX];
    int status = 0;
    int rc = stack__vendor_ca(s, vdir, sizeof(vdir));
    if (rc == NU_OK) {
        char *argv[] = {(char *)exe,      "--dir",       (char *)s->dir, "--name", (char *)name,
                        "--factory-init", "--vendor-ca", vdir,           NULL};
        rc = stack__prog_run(s, name, argv, &status);
    }
    if (rc == NU_OK && status != 0 && status != 4)
        rc = NU_ERR_STATE;
    if (rc != NU_OK)
        cli_errorf("stack up: factory init of %s failed: %s", name, nu_err_name(rc));
    return rc;
}

/* Enrolled at the OEM; `owner` (a station, or a site) commands it afterwards. */
static int stack__enroll(struct stack *s, const char *name, const char *exe, const char *owner)
{
    char token[NU_ENVELOPE_TOKEN_MAX + 1], log[PATH_MAX];
    pid_t pid = 0;
    int status = 0;
    int rc = s->sites ? site_assign(s->dir, owner, name) : station_owners_add(s->dir, owner, name);
    if (rc == NU_OK)
        rc = stack__factory(s, name, exe);
    if (rc == NU_OK)
        rc = stack__token(s, name, token, sizeof(token));
    if (rc == NU_OK)
        rc = stack__file(s->logs, name, ".log", log, sizeof(log));
    char env[sizeof(token) + 32];
    if (rc == NU_OK) {
        /* The one-time token goes in the child's environment, not its
         * arguments (/proc/PID/cmdline is world-readable). */
        char *argv[] = {(char *)exe, "--dir", (char *)s->dir, "--name", (char *)name, "--enroll",
                        "-",         NULL};
        char *env_add[] = {env, NULL};
        snprintf(env, sizeof(env), "NUSEC_ENROLL_TOKEN=%s", token);
        rc = station_proc_spawn_env(argv, env_add, log, &pid);
    }
    nu_zero(token, sizeof(token));
    nu_zero(env, sizeof(env));
    if (rc == NU_OK)
        rc = station_proc_wait_child(pid, s->timeout_s * 1000u, &status);
    if (rc == NU_ERR_TIMEOUT)
        station_proc_stop(pid, 1000);
    if (rc == NU_OK && status != 0)
        rc = NU_ERR_STATE;
    if (rc == NU_OK) {
        printf("%-10s enrolled (at the OEM, attested by its KeyStore)\n", name);
        return NU_OK;
    }
    cli_errorf("stack up: enrollment of %s failed: %s", name,
               rc == NU_ERR_STATE ? "nusec-programmer --enroll failed" : nu_err_name(rc));
    if (stack__file(s->logs, name, ".log", log, sizeof(log)) == NU_OK)
        station_log_tail(log, 12);
    return rc == NU_ERR_STATE ? NU_ERR_STATE : rc;
}

static int stack__enrolled(const struct stack *s, const char *name)
{
    char path[PATH_MAX];
    return nu_path_fmt(path, sizeof(path), "%s/programmers/%s/keystore.bin", s->dir, name) ==
               NU_OK &&
           nu_path_exists(path);
}

/* prog-(index+1): its name, program path and the argv that runs it in `s`'s state dir. */
struct stack__prog_cmd {
    char name[32], exe[PATH_MAX], sockets[16], devices[16], flash[16];
    char *argv[12];
};

static int stack__prog_cmd(struct stack *s, unsigned index, unsigned share,
                           struct stack__prog_cmd *c)
{
    snprintf(c->name, sizeof(c->name), "prog-%u", index + 1);
    snprintf(c->sockets, sizeof(c->sockets), "%u", s->sockets);
    snprintf(c->devices, sizeof(c->devices), "%u", share);
    snprintf(c->flash, sizeof(c->flash), "%u", s->flash_us);
    char *argv[] = {c->exe,      "--dir",    (char *)s->dir, "--name",   c->name,
                    "--sockets", c->sockets, "--devices",    c->devices, "--flash-us-per-kib",
                    c->flash,    NULL};
    memcpy(c->argv, argv, sizeof(argv));
    return stack__prog_path(s, "nusec-programmer", c->exe, sizeof(c->exe));
}

/*
 * Programmer prog-(index+1) with `share` blank targets, run in `s`'s state
 * dir. Enrolled at the OEM (`oem`, the same stack on one machine); at a site
 * its folder then moves to the site's state dir, as the device ships.
 */
static int stack__up_programmer_in(struct stack *s, struct stack *oem, unsigned index,
                                   unsigned share)
{
    struct stack__prog_cmd c;
    char log[PATH_MAX];
    const char *name = c.name, *exe = c.exe;
    pid_t pid = 0;
    int rc = stack__prog_cmd(s, index, share, &c);
    int here =
        rc == NU_OK && (stack__running(s, name, "nusec-programmer") || stack__enrolled(s, name));
    if (rc == NU_OK && !here && !stack__enrolled(oem, name))
        rc = stack__enroll(oem, name, exe, s->station);
    if (rc == NU_OK && !here && s != oem) {
        char from[PATH_MAX], to[PATH_MAX];
        rc = nu_path_fmt(from, sizeof(from), "%s/programmers/%s", oem->dir, name);
        if (rc == NU_OK)
            rc = nu_path_fmt(to, sizeof(to), "%s/programmers/%s", s->dir, name);
        if (rc == NU_OK && rename(from, to) != 0) {
            cli_errorf("stack up: cannot move %s to %s: %s", from, to, strerror(errno));
            rc = NU_ERR_IO;
        }
        if (rc == NU_OK)
            printf("%-10s shipped to %s\n", name, s->site);
    }
    if (rc == NU_OK)
        rc = s != oem ? site_assign(oem->dir, s->station, name)
                      : station_owners_add(s->dir, s->station, name);
    if (rc != NU_OK)
        return rc;
    if (s != oem)
        return NU_OK; /* started once the site broker knows it (stack__up_site) */
    rc = stack__start(s, name, "nusec-programmer", c.argv, stack__programmer_ok, &pid, 1);
    /* A KeyStore left by an interrupted enrollment: enroll again, once. */
    if (rc == NU_ERR_STATE && stack__file(s->logs, name, ".log", log, sizeof(log)) == NU_OK &&
        station_log_contains(log, "is not enrolled")) {
        rc = stack__enroll(s, name, exe, s->station);
        if (rc == NU_OK)
            rc = stack__start(s, name, "nusec-programmer", c.argv, stack__programmer_ok, &pid, 1);
    }
    if (rc != NU_OK)
        stack__explain(s, name, rc);
    return rc;
}

static unsigned stack__share(const struct stack *s, unsigned index, unsigned total)
{
    return s->devices / total + (index < s->devices % total);
}

int stack__up_programmer(struct stack *s, unsigned index)
{
    return stack__up_programmer_in(s, s, index, stack__share(s, index, s->programmers));
}

/* Start an enrolled programmer of a site (after its site broker is up). */
static int stack__start_site_programmer(struct stack *cm, unsigned index, unsigned share)
{
    struct stack__prog_cmd c;
    pid_t pid = 0;
    int rc = stack__prog_cmd(cm, index, share, &c);
    return rc ? rc
              : stack__start(cm, c.name, "nusec-programmer", c.argv, stack__programmer_ok, &pid, 0);
}

/* ---- sites: the OEM and N CMs on loopback (--sites N) ------------------------------------ */

/* The stack of site k (1-based): DIR/cm/site-k, its station site-k, watched from the OEM. */
static int stack__cm_init(struct stack *oem, unsigned k, struct stack *cm)
{
    memset(cm, 0, sizeof(*cm));
    snprintf(cm->site, sizeof(cm->site), "site-%u", k);
    int rc = nu_path_fmt(cm->cm_dir, sizeof(cm->cm_dir), "%s/cm/%s", oem->dir, cm->site);
    cm->dir = cm->cm_dir;
    cm->station = cm->site;
    cm->top = oem;
    cm->sockets = oem->sockets;
    cm->flash_us = oem->flash_us;
    cm->timeout_s = oem->timeout_s;
    memcpy(cm->bin, oem->bin, sizeof(cm->bin));
    if (rc == NU_OK)
        rc = nu_paths_get(cm->dir, NU_PATH_RUN, cm->run, sizeof(cm->run));
    if (rc == NU_OK)
        rc = nu_paths_get(cm->dir, NU_PATH_LOGS, cm->logs, sizeof(cm->logs));
    return rc;
}

/* DIR/cm/site-k.EXT: the files that cross between the machines (docs/sites.md). */
static int stack__crossing(const struct stack *cm, const char *ext, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/cm/%s.%s", cm->top->dir, cm->site, ext);
}

/*
 * The site's identities, as two operators would make them: OEM `site add`
 * (enrol file) -> CM `site join` (keys stay in DIR/cm/site-k, join request)
 * -> OEM `site sign` (HSM) -> bundle. Once: a signed site is kept.
 */
static int stack__site_identities(struct stack *oem, struct stack *cm)
{
    char crt[PATH_MAX], folder[PATH_MAX], enrol[PATH_MAX], join[PATH_MAX], bundle[PATH_MAX];
    int rc =
        nu_path_fmt(crt, sizeof(crt), "%s/" SITE_OEM_FOLDER "/%s/site.crt", oem->dir, cm->site);
    if (rc == NU_OK)
        rc = nu_path_fmt(folder, sizeof(folder), "%s/" SITE_OEM_FOLDER "/%s", oem->dir, cm->site);
    if (rc == NU_OK)
        rc = stack__crossing(cm, "enrol", enrol, sizeof(enrol));
    if (rc == NU_OK)
        rc = stack__crossing(cm, "join", join, sizeof(join));
    if (rc == NU_OK)
        rc = stack__crossing(cm, "bundle", bundle, sizeof(bundle));
    if (rc != NU_OK || nu_path_exists(crt))
        return rc;
    char cm_root[PATH_MAX];
    if ((rc = nu_path_fmt(cm_root, sizeof(cm_root), "%s/cm", oem->dir)) ||
        (rc = nu_mkdirs(cm_root, 0755)))
        return rc;
    if (!nu_path_exists(folder))
        rc = site_add(oem->dir, cm->site, NULL, enrol);
    if (rc == NU_OK && !nu_path_exists(join))
        rc = site_join(cm->dir, enrol, "127.0.0.1", 0, join);
    if (rc == NU_OK)
        rc = site_sign(oem->dir, join, bundle);
    if (rc == NU_OK)
        printf("%-10s joined: station, bridge and site broker keys made in %s, certificates "
               "signed by the OEM's Fleet CA\n",
               cm->site, cm->dir);
    else
        cli_errorf("stack up: site %s: %s (remove %s and %s to start it again)", cm->site,
                   nu_err_name(rc), folder, cm->dir);
    return rc;
}

/* Programmers first..first+n-1 of a site: enrolled at the OEM, shipped, then the
 * site's bundle installed (ownership, boot manifest), its broker, station and
 * programmers started. */
static int stack__up_site(struct stack *oem, struct stack *cm, unsigned first, unsigned n,
                          unsigned total)
{
    char bundle[PATH_MAX];
    int rc = NU_OK;
    for (unsigned j = 0; rc == NU_OK && j < n; j++)
        rc = stack__up_programmer_in(cm, oem, first + j, 0);
    if (rc == NU_OK)
        rc = stack__crossing(cm, "bundle", bundle, sizeof(bundle));
    if (rc == NU_OK)
        rc = site_export(oem->dir, cm->site, bundle);
    if (rc == NU_OK)
        rc = site_init(cm->dir, bundle);
    if (rc == NU_OK)
        printf("%-10s site broker configured (bridge to the cloud broker)\n", cm->site);
    if (rc == NU_OK)
        rc = stack__up_broker(cm);
    if (rc == NU_OK)
        rc = stack__up_station(cm);
    for (unsigned j = 0; rc == NU_OK && j < n; j++)
        rc = stack__start_site_programmer(cm, first + j, stack__share(oem, first + j, total));
    return rc;
}

/* Every site of --sites N, after the cloud broker and the cloud are up. */
int stack__up_sites(struct stack *oem)
{
    unsigned total = oem->sites * oem->programmers;
    int rc = NU_OK;
    for (unsigned k = 0; rc == NU_OK && k < oem->sites; k++) {
        struct stack cm;
        rc = stack__cm_init(oem, k + 1, &cm);
        if (rc == NU_OK)
            rc = stack__up_site(oem, &cm, k * oem->programmers, oem->programmers, total);
    }
    return rc;
}

/* Before the cloud starts: it reads the sites' stations from cloud.conf. */
int stack__sites_prepare(struct stack *oem)
{
    int rc = NU_OK;
    for (unsigned k = 0; rc == NU_OK && k < oem->sites; k++) {
        struct stack cm;
        rc = stack__cm_init(oem, k + 1, &cm);
        if (rc == NU_OK)
            rc = stack__site_identities(oem, &cm);
    }
    return rc;
}
