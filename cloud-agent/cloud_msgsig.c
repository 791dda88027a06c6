/* cloud_msgsig — verify end-to-end message signatures (see cloud_msgsig.h). */
#include "cloud_msgsig.h"

#include "ledger.h"
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_msgsig.h"
#include "nu_paths.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cloud_msgsig_start(struct cloud *cloud, struct nu_msgsig_replay **out)
{
    return nu_msgsig_replay_new((uint64_t)cloud->cfg.sig_window_s * 1000u,
                                cloud->cfg.sig_replay_max, out);
}

static int msgsig__listed(const char ids[][CLOUD_ID_MAX + 1], size_t n, const char *id)
{
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ids[i], id) == 0)
            return 1;
    }
    return 0;
}

int cloud_is_station(const struct cloud *cloud, const char *id)
{
    char path[PATH_MAX];
    if (!id || msgsig__listed(cloud->cfg.station_ids, cloud->cfg.n_station_ids, id))
        return id != NULL;
    if (nu_envelope_id_check(id) != NU_OK || !strcmp(id, ".") || !strcmp(id, ".."))
        return 0;
    return nu_path_fmt(path, sizeof(path), "%s/sites/%s/station.crt", cloud->dir, id) == NU_OK &&
           nu_path_exists(path) &&
           nu_paths_client_cert(cloud->dir, id, path, sizeof(path)) == NU_OK &&
           nu_path_exists(path);
}

/* Public key of a PEM certificate. */
static int msgsig__pem_pub(const char *pem, size_t pem_len, uint8_t pub[NU_P256_PUB_LEN])
{
    uint8_t *der = NULL;
    size_t der_len = 0;
    struct nu_x509_cert_info info;
    size_t used = 0;
    int rc = nu_x509_pem_to_der(pem, pem_len, NU_X509_PEM_CERT, &der, &der_len, &used);
    if (!rc)
        rc = nu_x509_cert_info(der, der_len, &info);
    if (!rc)
        memcpy(pub, info.pub, NU_P256_PUB_LEN);
    free(der);
    return rc;
}

/* The enrolled key of `sender` (see the header). NOT_FOUND / REVOKED / file errors. */
static int msgsig__key(struct cloud *cloud, struct cloud_ledger *ledger, const char *sender,
                       uint8_t pub[NU_P256_PUB_LEN])
{
    const struct cloud_config *cfg = &cloud->cfg;
    if (msgsig__listed(cfg->oem_ids, cfg->n_oem_ids, sender) || cloud_is_station(cloud, sender) ||
        strcmp(sender, cloud->id) == 0) {
        char path[PATH_MAX];
        uint8_t *pem = NULL;
        size_t pem_len = 0;
        int rc = nu_paths_client_cert(cloud->dir, sender, path, sizeof(path));
        if (!rc)
            rc = nu_file_read(path, 64 * 1024, &pem, &pem_len);
        if (!rc)
            rc = msgsig__pem_pub((const char *)pem, pem_len, pub);
        free(pem);
        return rc;
    }
    struct cloud_ledger_programmer *p = calloc(1, sizeof(*p));
    if (!p)
        return NU_ERR_NOMEM;
    int rc = cloud_ledger_programmer_get(ledger, sender, p);
    if (!rc && p->state != CLOUD_LEDGER_PROGRAMMER_ENROLLED)
        rc = NU_ERR_REVOKED;
    if (!rc)
        rc = msgsig__pem_pub(p->cert_pem, strlen(p->cert_pem), pub);
    free(p);
    return rc;
}

int cloud_msgsig_check(struct cloud *cloud, struct nu_msgsig_replay *replay,
                       struct cloud_ledger *ledger, const char *sender, const char *topic,
                       const uint8_t *payload, size_t len, const char *sig,
                       const Nusec__V1__Envelope *env, int fresh, char *detail, size_t cap)
{
    uint8_t pub[NU_P256_PUB_LEN];
    if (!sig) {
        snprintf(detail, cap, "unsigned message");
        return NU_ERR_BAD_SIGNATURE;
    }
    int rc = msgsig__key(cloud, ledger, sender, pub);
    if (rc) {
        snprintf(detail, cap, "no enrolled key for %s (%s)", sender, nu_err_name(rc));
        /* Say what the ledger says: revoked, or not enrolled at all; a
         * ledger that cannot answer now (a PostgreSQL failover) is the
         * typed transient error the sender retries, never a verdict on
         * its signature (BAD_SIGNATURE failed devices mid-failover). */
        if (rc == NU_ERR_CONNECTION || rc == NU_ERR_BUSY || rc == NU_ERR_DB || rc == NU_ERR_IO ||
            rc == NU_ERR_NOMEM)
            return rc;
        return rc == NU_ERR_REVOKED    ? NU_ERR_REVOKED
               : rc == NU_ERR_NOT_FOUND ? NU_ERR_NOT_AUTHORIZED
                                        : NU_ERR_BAD_SIGNATURE;
    }
    rc = nu_msgsig_verify(pub, topic, payload, len, sig);
    if (rc) {
        snprintf(detail, cap, "signature does not verify with %s's enrolled key for this topic",
                 sender);
        return NU_ERR_BAD_SIGNATURE;
    }
    if (!fresh)
        return NU_OK;
    const Nusec__V1__Header *h = env->header;
    rc = nu_msgsig_replay_check(replay, h->message_id.data, h->message_id.len, h->sent_at_ms,
                                nu_time_ms());
    if (rc == NU_ERR_REPLAY)
        snprintf(detail, cap, "message replayed or sent outside the %u s window",
                 cloud->cfg.sig_window_s);
    else if (rc)
        snprintf(detail, cap, "replay window full");
    return rc;
}
