/*
 * auth_int — what the files of the nusec_auth plugin (nusec_auth.c,
 * auth_files.c, auth_lists.c) share: the plugin's state, struct nusec_auth,
 * with the list files it holds, and the functions each calls in another.
 * Private to broker/nusec_auth.c and broker/auth_*.c. Cross-file functions
 * are prefixed by their file (auth_, auth_files_, auth_lists_); the types
 * keep their auth__ names: they are the plugin's own, just not one file's.
 */
#ifndef NUSEC_BROKER_AUTH_INT_H
#define NUSEC_BROKER_AUTH_INT_H

#include "acl.h"
#include "nu_brokerlist.h"
#include "pins.h"
#include "ratelimit.h"
#include "nu_err.h"

#include <mosquitto.h>
#include <mosquitto_broker.h>
#include <mosquitto_plugin.h>
#include <mqtt_protocol.h>

#include <openssl/bn.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* The lists the cloud agents publish for a broker on another host (auth_lists.c). */
#define AUTH_TOPIC_CLOUD_LISTS "nusec/v1/cloud/lists/"

enum auth__fstate { AUTH__UNKNOWN, AUTH__OK, AUTH__MISSING, AUTH__BAD };

/* What stat() says about a list file; a change of any field means "reload". */
struct auth__stamp {
    int err; /* 0 or the errno of stat() */
    dev_t dev;
    ino_t ino;
    off_t size;
    struct timespec mtime;
};

struct auth__file {
    const char *option; /* for log lines */
    char *path;         /* NULL: not configured */
    bool have_stamp;
    struct auth__stamp stamp;
    enum auth__fstate state;
    struct nusec_acl_set *set; /* NULL = empty */
};

struct nusec_auth {
    mosquitto_plugin_id_t *pid;
    struct auth__file revoked;
    struct auth__file owners;
    char *issuer_path;
    STACK_OF(X509) * issuers;    /* NULL: no issuer pinning */
    struct nusec_acl_set *roles; /* CN -> role at its last accepted connect (any run) */
    struct nusec_acl_set *live;  /* CNs accepted at CONNECT in this broker run */
    struct nusec_acl_set *kick;  /* newly revoked identities, kicked at next tick */
    /* Re-enrolled identities (their pin changed): kicked AUTH_RENEW_GRACE_MS
     * after the last change, so the renewal answer reaches the old session
     * (its writes are refused at once: auth__stale_cert). */
    struct nusec_acl_set *pin_kick;
    struct timespec pin_kick_at;
    struct auth__pinfile *pins;  /* DIR/broker/serials: current identity serials (pins.h) */
    struct timespec last_tick;
    char *ids_path;                  /* identities file (roles across restarts); NULL: none */
    char *site_name;                 /* a site broker: take the lists from the bridge */
    char *publish_lists;             /* "true": the cloud broker of sites publishes its lists */
    char *adopt_lists;               /* "true": take the cloud agents' lists from the bus */
    bool lists_dirty;                /* the cloud broker: lists changed, publish at the tick */
    struct nusec_acl_set *published; /* owners whose lines were published last */
    bool ids_dirty;                  /* roles changed and not yet written */
    bool ids_failing;                /* the last write failed (logged once) */
    struct timespec ids_last_try;
    struct nusec_rl_config rl_cfg; /* publish limits (ratelimit.h) */
    struct nusec_rl *rl;
    unsigned long long withheld;   /* replies kept from site bridges since the last summary */
    struct timespec withheld_last; /* when that summary was logged */
};

/* The serial list (identity certificate pins): see auth_files.c. */
struct auth__pinfile {
    char *path;
    bool have_stamp, bad;
    struct auth__stamp stamp;
    struct nusec_pins *pins;
};

struct auth__ident {
    char id[NUSEC_ACL_ID_MAX + 1];
    enum nusec_role role;
};

/* ---- nusec_auth.c ------------------------------------------------------------ */

/* Text for an NU_ERR_* code, from the shared table (header only, no libnusec link). */
const char *auth_err_name(int code);
/* Milliseconds from `then` to `now` (CLOCK_MONOTONIC). */
long auth_ms_since(const struct timespec *then, const struct timespec *now);

/* How long a re-enrolled identity's old sessions may still receive. */
#define AUTH_RENEW_GRACE_MS 1500
/* Identity and role of `client` for a decision; false: nobody this plugin accepted. */
bool auth_subject(const struct nusec_auth *st, struct mosquitto *client, struct auth__ident *out);

/* ---- auth_files.c: the files on disk ------------------------------------------ */

/* Reload the revocation list or ownership table `f` if stat() says it changed
 * (or `force`); newly revoked identities join st->kick. */
void auth_files_refresh(struct nusec_auth *st, struct auth__file *f, bool force);
/* Same for the serial list; a re-enrolled identity joins st->kick. */
void auth_files_pins_refresh(struct nusec_auth *st, bool force);
/* NULL when `cert` may act as programmer `who`, else why not (static text). */
const char *auth_files_pins_why(const struct nusec_auth *st, X509 *cert,
                                const struct auth__ident *who);
/* st->pins for "serials" next to the revocation list. MOSQ_ERR_NOMEM or SUCCESS. */
int auth_files_pins_init(struct nusec_auth *st);
void auth_files_pins_free(struct nusec_auth *st);
/* Remember `id`'s role (written to the identities file when new or changed). NOMEM only. */
int auth_files_identity_remember(struct nusec_auth *st, const char *id, enum nusec_role role);
/* Read the identities file into st->roles at init; never fatal. */
void auth_files_identities_load(struct nusec_auth *st);
/* From the tick: retry a failed write of the identities file. */
void auth_files_identities_retry(struct nusec_auth *st, const struct timespec *now);

/* ---- auth_lists.c: lists across a bridge and from the cloud agents ------------ */

/* The cloud broker of sites: publish the revocation list and owners, retained. */
void auth_lists_publish(struct nusec_auth *st);
/* A site broker: a list from the bridge replaces the local file (then reloaded). */
void auth_lists_take(struct nusec_auth *st, const char *topic, const void *payload, uint32_t len);
/* plugin_opt_adopt_lists is "true". */
bool auth_lists_adopting(const struct nusec_auth *st);
/* A list a cloud agent published on AUTH_TOPIC_CLOUD_LISTS: written to its file
 * and reloaded. NU_OK, or why it was refused (the publish is then denied). */
int auth_lists_adopt(struct nusec_auth *st, struct mosquitto *client, const char *topic,
                     const void *payload, uint32_t len);

#endif
