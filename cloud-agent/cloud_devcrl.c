/* cloud_devcrl — the device CRL: built from the ledger, signed by the Device CA
 * in the HSM (cloud_crl.h), kept in the ledger (device_crl), retained on
 * nusec/v1/crl/device and written to DIR/pki/device-crl.pem
 * (cloud.h: cloud_device_crl_update).
 *
 * Several agents, on several hosts, may issue one (the leader's refresh, any
 * agent that records a revocation). Its number is its issue time in ms; the
 * ledger keeps only a higher number and the agent publishes while that row
 * is locked, so the retained CRL is always the newest one issued, never an
 * older snapshot published last. Subscribers on every host get it from the
 * broker, and any agent reads it from the ledger. */
#include "cloud.h"
#include "cloud_crl.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_paths.h"
#include "nu_util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#define DEVCRL__TOPIC "nusec/v1/crl/device"
#define DEVCRL__VALIDITY_MS (7ull * 24 * 3600 * 1000) /* nextUpdate: a week ahead */

/* The revoked certificates, owned (the ledger's visitor rows are borrowed). */
struct devcrl__item {
    uint8_t serial[CLOUD_CRL_SERIAL_MAX];
    size_t serial_len;
    uint64_t revoked_at_ms;
    char reason[CLOUD_LEDGER_TEXT_MAX + 1];
};

struct devcrl__list {
    struct devcrl__item *v;
    size_t n, cap;
};

static int devcrl__visit(void *ctx, const struct cloud_ledger_cert *c)
{
    struct devcrl__list *l = ctx;
    if (l->n == CLOUD_CRL_ENTRIES_MAX)
        return NU_ERR_TOO_LARGE;
    struct devcrl__item *v = nu_grow(l->v, &l->cap, l->n, sizeof(*v));
    if (!v)
        return NU_ERR_NOMEM;
    l->v = v;
    struct devcrl__item *it = &l->v[l->n];
    int rc = nu_hex_decode(c->serial, it->serial, sizeof(it->serial), &it->serial_len);
    if (rc != NU_OK) {
        nu_error("device CRL: certificate serial '%s' in the ledger is not hex", c->serial);
        return rc;
    }
    it->revoked_at_ms = c->revoked_at_ms;
    snprintf(it->reason, sizeof(it->reason), "%s", c->revoke_reason);
    l->n++;
    return NU_OK;
}

static int devcrl__build(struct cloud *cloud, const struct devcrl__list *l, uint64_t now,
                         uint8_t **out_der, size_t *out_len)
{
    struct cloud_crl_entry *e = calloc(l->n ? l->n : 1, sizeof(*e));
    if (!e)
        return NU_ERR_NOMEM;
    for (size_t i = 0; i < l->n; i++)
        e[i] = (struct cloud_crl_entry){l->v[i].serial, l->v[i].serial_len, l->v[i].revoked_at_ms,
                                        l->v[i].reason};
    /* The issue time in ms is the CRL number: it grows with every CRL issued,
     * also across restarts and agents sharing the ledger. */
    int rc = cloud_crl_build(nu_hsm_key_signer(cloud->keys.device_ca), cloud->keys.device_der,
                             cloud->keys.device_len, e, l->n, now, now, now + DEVCRL__VALIDITY_MS,
                             out_der, out_len);
    free(e);
    return rc;
}

static int devcrl__write_pem(struct cloud *cloud, const uint8_t *der, size_t len)
{
    char path[PATH_MAX], *pem = NULL;
    size_t pem_len = 0;
    int rc = nu_paths_get(cloud->dir, NU_PATH_DEVICE_CRL, path, sizeof(path));
    if (rc == NU_OK)
        rc = cloud_crl_der_to_pem(der, len, &pem, &pem_len);
    if (rc == NU_OK)
        rc = nu_file_write_atomic(path, pem, pem_len, 0644);
    free(pem);
    return rc;
}

/* What the ledger's put publishes while it holds the CRL row. */
struct devcrl__pub {
    struct cloud *cloud;
    const uint8_t *der;
    size_t len;
    uint64_t now;
};

static int devcrl__publish(void *ctx)
{
    struct devcrl__pub *p = ctx;
    int rc = devcrl__write_pem(p->cloud, p->der, p->len);
    if (rc == NU_OK && p->cloud->mqtt) {
        Nusec__V1__DeviceCrl msg = NUSEC__V1__DEVICE_CRL__INIT;
        msg.crl_der = (ProtobufCBinaryData){p->len, (uint8_t *)p->der};
        msg.this_update_ms = p->now;
        rc = cloud_publish(p->cloud, DEVCRL__TOPIC, &msg.base, 1);
    }
    return rc;
}

int cloud_device_crl_update(struct cloud *cloud, struct cloud_ledger *ledger, const char *why)
{
    struct devcrl__list l = {0};
    uint8_t *der = NULL;
    size_t len = 0;
    /* One at a time in this agent; the ledger orders agents (see above). */
    pthread_mutex_lock(&cloud->crl_lock);
    uint64_t now = nu_time_ms();
    cloud->crl_tried_at_ms = now;
    int rc = cloud_ledger_cert_list_revoked(ledger, devcrl__visit, &l);
    if (rc == NU_OK)
        rc = devcrl__build(cloud, &l, now, &der, &len);
    if (rc == NU_OK) {
        struct devcrl__pub pub = {cloud, der, len, now};
        rc = cloud_ledger_device_crl_put(ledger, now, der, len, devcrl__publish, &pub);
    }
    int newer = rc == NU_ERR_STATE;
    if (newer) /* another agent issued a newer one meanwhile: it is the CRL */
        rc = NU_OK;
    if (rc == NU_OK) {
        cloud->crl_at_ms = now;
        cloud->crl_dirty = 0;
        if (newer)
            nu_info("device CRL (%s): another agent issued a newer one", why);
        else
            nu_info("device CRL issued (%s): %zu revoked, %zu bytes", why, l.n, len);
    } else {
        cloud->crl_dirty = 1; /* the maintenance tick tries again */
        nu_error("device CRL (%s): %s", why, nu_err_str(rc));
    }
    pthread_mutex_unlock(&cloud->crl_lock);
    free(der);
    free(l.v);
    return rc;
}

int cloud_device_crl_refresh(struct cloud *cloud, struct cloud_ledger *ledger)
{
    pthread_mutex_lock(&cloud->crl_lock);
    /* Re-issue well before nextUpdate, or (every 30 s) when the last attempt failed. */
    uint64_t now = nu_time_ms();
    int due = (cloud->crl_dirty && now - cloud->crl_tried_at_ms > 30000) ||
              now - cloud->crl_at_ms > DEVCRL__VALIDITY_MS / 2;
    pthread_mutex_unlock(&cloud->crl_lock);
    return due ? cloud_device_crl_update(cloud, ledger, "refresh") : NU_OK;
}
