/* cloud_audit — signed checkpoints of the audit chain (cloud.h: cloud_checkpoint). */
#include "audit_checkpoint.h"
#include "cloud.h"

#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"

#include <string.h>

struct audit__sign {
    const struct nu_signer *signer;
    char payload[AUDIT_CHECKPOINT_PAYLOAD_MAX + 1]; /* kept for the event */
};

static int audit__sign_head(void *ctx, uint64_t head_seq, const uint8_t head[CLOUD_LEDGER_HASH_LEN],
                            char *payload, size_t cap, size_t *out_len)
{
    struct audit__sign *s = ctx;
    int rc =
        audit_checkpoint_make(s->signer, head_seq, head, s->payload, sizeof(s->payload), out_len);
    if (rc == NU_OK && *out_len >= cap)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK)
        memcpy(payload, s->payload, *out_len + 1);
    return rc;
}

int cloud_checkpoint(struct cloud *cloud, struct cloud_ledger *ledger, const char *why)
{
    struct audit__sign s = {.signer = nu_hsm_key_signer(cloud->keys.audit)};
    uint64_t seq = 0;
    if (!s.signer)
        return NU_OK; /* no audit key in this state directory (logged at start) */
    int rc = cloud_ledger_checkpoint(ledger, nu_time_ms(), cloud->id, audit__sign_head, &s, &seq);
    if (rc != NU_OK) {
        nu_error("audit checkpoint (%s): %s", why, nu_err_str(rc));
        return rc;
    }
    if (seq == 0)
        return NU_OK; /* nothing happened since the last one */
    nu_info("audit checkpoint at seq %llu (%s)", (unsigned long long)seq, why);
    /* Copies outside the ledger: what an auditor holds a rewritten file against. */
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    ev.kind = AUDIT_CHECKPOINT_KIND;
    ev.detail = s.payload;
    if (cloud->mqtt && (rc = cloud_publish_event(cloud, &ev)) != NU_OK)
        nu_warn("audit checkpoint at seq %llu not published: %s", (unsigned long long)seq,
                nu_err_str(rc));
    return NU_OK;
}
