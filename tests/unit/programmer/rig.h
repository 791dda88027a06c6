/*
 * rig — a programmer on the bench for the core's unit tests: the POSIX
 * port's KeyStore, flash, crypto and target simulator, with the fake cloud as
 * transport, in a temporary state directory.
 */
#ifndef PG_TEST_RIG_H
#define PG_TEST_RIG_H

#include "fake_cloud.h"
#include "pg_core.h"

#include <stddef.h>
#include <stdint.h>

struct pp_ks;
struct pp_flash;
struct tsim_feeder;
struct pp_target;

struct rig {
    char dir[256];
    char pdir[512];
    char targets[512];
    const char *name;
    struct fake_cloud fc;
    struct pp_ks *ks;
    struct pp_flash *flash;
    struct tsim_feeder *feeder;
    struct pp_target *tgt;
    struct pg_hal hal;
    struct pg_core *core;
    unsigned sockets;
    uint32_t lease_abandon_ms; /* pg_config's, at the next rig_open (0: the core's default) */
    uint64_t package_ttl_ms;   /* rig_package's expiry from now (0: 1 h) */
};

/* Temp dir, fake cloud (6-chunk image), programmer `name` opened (not enrolled). */
int rig_setup(struct rig *r, const char *name, unsigned sockets);
/* Everything freed, temp dir removed. */
void rig_teardown(struct rig *r);

/* Open KeyStore, flash, core (again, e.g. after rig_crash). */
int rig_open(struct rig *r);
/* Drop the programmer without any clean-up step: what a power cut leaves. */
void rig_crash(struct rig *r);

/* Tray of `devices` chips; every `every`-th gets `faults` (0 = none). */
int rig_tray(struct rig *r, unsigned devices, unsigned faults, unsigned every);

int rig_enroll(struct rig *r);
/* Like rig_setup, without the factory step (no attestation key). */
int rig_setup_unfactoried(struct rig *r, const char *name, unsigned sockets);
/* Factory-initialise the KeyStore (attestation key + vendor certificate). */
int rig_factory(struct rig *r);

/* A package for this programmer: limit, expiring in 1 h, created now. */
int rig_package(struct rig *r, uint32_t limit, uint8_t **out, size_t *out_len);

/* fetch + begin + one thread per socket + end. *out_rc: first non-OK of fetch/begin. */
enum pg_stop rig_produce(struct rig *r, int *out_rc);

/* Chips on disk by state: counts locked ones whose certificate verifies to
 * the device CA, names the chip's UID and holds the chip's public key. */
struct rig_census {
    unsigned chips, locked, verified, blank;
};
int rig_census(struct rig *r, struct rig_census *out);
/* The same for any targets folder and the fake cloud's CAs. */
int rig_census_dir(const char *targets, const struct fake_cloud *fc, struct rig_census *out);

#endif
