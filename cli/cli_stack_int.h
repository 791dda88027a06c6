/*
 * cli_stack_int.h - what the files of `nusec stack` share (private to them):
 * the stack being brought up or down, its services and health checks.
 * cli_stack.c holds the commands, cli_stack_svc.c one service's start, health
 * and stop, cli_stack_prog.c the programmers and the sites (--sites N).
 */
#ifndef NUSEC_CLI_STACK_INT_H
#define NUSEC_CLI_STACK_INT_H

#include "cli_cloud.h"
#include "station_event.h"

#include "nu_envelope.h"

#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#ifndef NUSEC_MOSQUITTO_BIN
#define NUSEC_MOSQUITTO_BIN "/usr/sbin/mosquitto"
#endif

#define STACK__PROG_MAX 64
#define STACK__GRACE_MS 5000u
#define STACK__TOKEN_TTL_S 600u
#define STACK__STATION "station"
#define STACK__SITES_MAX 8

/* The statuses programmers retain, collected through a monitor session. */
struct stack__seen {
    struct station_status s;
    uint64_t received_ms;
};

struct stack {
    const char *dir;
    char bin[PATH_MAX];
    char run[PATH_MAX];
    char logs[PATH_MAX];
    unsigned programmers, sockets, devices, flash_us, timeout_s;
    int json;
    size_t json_items;   /* stack status --json: objects printed so far */
    const char *ledger;  /* --ledger: NULL/sqlite or postgresql */
    unsigned sites;      /* --sites N: N CM state dirs DIR/cm/site-K, each a site */
    const char *station; /* the station's identity: "station", or the site's name */
    struct stack *top;   /* a CM's stack: the OEM's, whose monitor watches statuses */
    char site[64];       /* a CM's stack: its site name */
    char cm_dir[PATH_MAX];
    struct cli_cloud oem;
    struct nu_mqtt *mon;
    pthread_mutex_t lock;
    struct stack__seen seen[STACK__PROG_MAX * 2];
    size_t n_seen;
};

/* A service of the stack: pid file name and the program it must be. */
struct stack__svc {
    char name[NU_ENVELOPE_ID_MAX + 1];
    const char *program;
};

struct stack__health {
    struct stack *s;
    pid_t pid;
    uint64_t spawned_ms; /* wall clock */
    const char *name;
};

/* cli_stack_prog.c */
/*
 * The programmers' boot manifest: the OEM signs the SHA-256 of the
 * nusec-programmer binary in the HSM (firmware.sign; an MCUboot image whose
 * payload is the hash), and the programmer refuses to run when its own
 * binary does not match (secure boot, checked against the ROTPK pinned in its
 * KeyStore). One image per binary: its name carries the hash, so a rebuilt
 * binary gets a new manifest and an unchanged one reuses the signed image.
 */
int stack__boot_manifest(struct stack *s);
int stack__up_programmer(struct stack *s, unsigned index);
/* Every site of --sites N, after the cloud broker and the cloud are up. */
int stack__up_sites(struct stack *oem);
/* Before the cloud starts: it reads the sites' stations from cloud.conf. */
int stack__sites_prepare(struct stack *oem);

/* cli_stack_svc.c */
void stack__on_signal(int sig);
void stack__sleep_ms(unsigned ms);
/* FOLDER/NAME.EXT, e.g. DIR/run/prog-1.pid. */
int stack__file(const char *folder, const char *name, const char *ext, char *out, size_t cap);
int stack__mon_open(struct stack *s);
/* The last status of `name`; 0 if none was received. */
int stack__seen_get(struct stack *s, const char *name, struct stack__seen *out);
void stack__close(struct stack *s);
int stack__endpoint(const char *dir, char *host, size_t cap, int *port);
int stack__oem_open(struct stack *s);
int stack__programmer_ok(struct stack__health *h);
/* pid of a running `program` recorded in DIR/run/NAME.pid, else 0. */
pid_t stack__running(const struct stack *s, const char *name, const char *program);
void stack__explain(const struct stack *s, const char *name, int rc);
/*
 * Start `name` (unless it already runs) and wait for ok(). *out_pid set.
 * Returns NU_OK or the failure (already explained on stderr).
 */
int stack__start(struct stack *s, const char *name, const char *program, char *const argv[],
                 int (*ok)(struct stack__health *), pid_t *out_pid, int quiet);
/* stack__start with env_add ("NAME=VALUE", NULL-terminated) in the child's
 * environment only (station_proc_spawn_env). */
int stack__start_env(struct stack *s, const char *name, const char *program, char *const argv[],
                     char *const env_add[], int (*ok)(struct stack__health *), pid_t *out_pid,
                     int quiet);
int stack__prog_path(const struct stack *s, const char *program, char *out, size_t cap);
int stack__up_broker(struct stack *s);
int stack__up_cloud(struct stack *s);
int stack__up_station(struct stack *s);
/* The live web view on a free loopback port; its URL (with the token) is printed. */
int stack__up_dashboard(struct stack *s);
/*
 * The services with a pid file, in start order: broker, cloud, station, then
 * programmers (prog-*) by name. Returns how many were found (<= cap).
 */
size_t stack__services(const struct stack *s, struct stack__svc *out, size_t cap);
/* Call visit(cm, name, ctx) with the stack of each site of `oem` (DIR/cm/NAME
 * with a run folder); a CM stack the walk cannot name is passed over. */
void stack__each_site(const struct stack *oem,
                      void (*visit)(struct stack *cm, const char *name, void *ctx), void *ctx);
int stack__down_all(const struct stack *s);

#endif
