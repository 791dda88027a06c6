/*
 * nusec-cloud: offline leases (issue 15 part 2) — lease.grant and
 * lease.upload, for programmers of a job whose OEM allowed it
 * (`nusec job create --offline-lease N --lease-hours H`).
 *
 * LINE-CA certificate (signed by the Device CA key in the HSM):
 *   subject   CN = the programmer id, OU = the job id, O = the Device CA's
 *             (the OEM's `pki init --org`, as on device certificates)
 *   validity  the lease: from now for H hours (cut at the Device CA's notAfter)
 *   basicConstraints CA:TRUE pathLen 0 (critical), keyUsage keyCertSign
 *   (critical); the key is the programmer's KeyStore line-CA key, whose CSR
 *   (self-signed in the KeyStore: proof of possession) names the programmer.
 *
 * UPLOAD: each certificate the programmer issued offline is checked here
 * with OpenSSL, at the time it says it was issued: its path must be exactly
 * Root -> Device CA -> this lease's line CA -> it, that time inside the
 * lease, CN = the UID it is uploaded for, a P-256 key; then the ledger
 * records it once (cloud_ledger_lease_record: counter and units). What fails
 * is an incident (lease.incident in the audit chain, an event on the bus)
 * and is not recorded. A certificate that supersedes the chip's abandoned
 * online request (supersedes_idempotency_key) has the online certificate
 * issued for it revoked and refunded first, in the same transaction
 * (ledger.h, cloud_ledger_lease_record). The upload arrives in a signed envelope from the
 * programmer's identity (the frame checks it), so a site cannot forge one.
 */
#include "cloud_lease.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_pki.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <openssl/x509.h>
#include <openssl/x509_vfy.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define LEASE__BACKDATE_S 3600 /* as device certificates: verifiers' clock skew */

/* ------------------------------------------------------------ grant */

static int lease__pub_hash(const uint8_t pub[NU_P256_PUB_LEN], uint8_t out[NU_SHA256_LEN])
{
    return nu_sha256(pub, NU_P256_PUB_LEN, out);
}

static int lease__issue(struct cloud_call *call, const char *job, const uint8_t pub[NU_P256_PUB_LEN],
                        int64_t nb, int64_t na, uint8_t **out_der, size_t *out_len)
{
    const struct cloud_keys *k = &call->cloud->keys;
    struct nu_x509_cert_info ca;
    int rc = nu_x509_cert_info(k->device_der, k->device_len, &ca);
    if (rc)
        return rc;
    struct nu_x509_issue_req ir = {
        .cn = call->requester,
        .ou = job,
        .o = ca.o[0] ? ca.o : NU_PKI_ORGANIZATION, /* the OEM's, as device certificates */
        .not_before = nb,
        .not_after = na < ca.not_after ? na : ca.not_after,
        .is_ca = 1,
        .path_len = 0,
        .key_usage = NU_X509_KU_KEY_CERT_SIGN,
    };
    memcpy(ir.pub, pub, sizeof(ir.pub));
    return nu_x509_issue(&ir, nu_hsm_key_signer(k->device_ca), k->device_der, k->device_len,
                         out_der, out_len);
}

static int lease__reply_grant(struct cloud_call *call, const struct cloud_ledger_lease *l)
{
    Nusec__V1__LeaseGrant g = NUSEC__V1__LEASE_GRANT__INIT;
    g.lease_id = (char *)l->lease_id;
    g.job_id = (char *)l->job_id;
    g.units = l->units;
    g.not_before_ms = l->not_before_ms;
    g.not_after_ms = l->not_after_ms;
    g.line_ca_cert_der.data = (uint8_t *)l->cert_der;
    g.line_ca_cert_der.len = l->cert_len;
    return cloud_reply(call, &g.base);
}

static int lease__grant(struct cloud_call *call)
{
    const Nusec__V1__LeaseGrantRequest *r = call->req->lease_grant_request;
    struct nu_x509_csr_info csr;
    struct cloud_ledger_lease *want = calloc(1, sizeof(*want));
    struct cloud_ledger_lease *got = calloc(1, sizeof(*got));
    uint8_t *der = NULL, rnd[8];
    size_t der_len = 0;
    uint32_t units = 0, hours = 0;
    int existing = 0, rc = want && got ? NU_OK : NU_ERR_NOMEM;
    if (!rc && nu_envelope_id_check(r->job_id))
        rc = cloud_fail(call, NU_ERR_INVALID_ARG, "bad job id");
    if (!rc && nu_x509_csr_parse_verify(r->line_ca_csr_der.data, r->line_ca_csr_der.len, &csr))
        rc = cloud_fail(call, NU_ERR_BAD_CSR, "line-CA CSR does not verify");
    if (!rc && strcmp(csr.cn, call->requester) != 0)
        rc = cloud_fail(call, NU_ERR_BAD_CSR, "line-CA CSR names %s", csr.cn);
    if (!rc && (rc = cloud_ledger_lease_policy_get(call->ledger, r->job_id, &units, &hours)))
        rc = cloud_fail(call, rc == NU_ERR_NOT_FOUND ? NU_ERR_NOT_AUTHORIZED : rc,
                        "job %s allows no offline lease", r->job_id);
    uint64_t now = nu_time_ms();
    if (!rc)
        rc = nu_random(rnd, sizeof(rnd));
    if (!rc) {
        snprintf(want->lease_id, sizeof(want->lease_id), "lease-");
        nu_hex_encode(rnd, sizeof(rnd), want->lease_id + 6, sizeof(want->lease_id) - 6);
        snprintf(want->job_id, sizeof(want->job_id), "%s", r->job_id);
        snprintf(want->programmer_id, sizeof(want->programmer_id), "%s", call->requester);
        want->units = units;
        want->not_before_ms = now;
        want->not_after_ms = now + (uint64_t)hours * 3600000u;
        rc = lease__pub_hash(csr.pub, want->line_pub_hash);
    }
    if (!rc)
        rc = lease__issue(call, r->job_id, csr.pub, (int64_t)(now / 1000u),
                          (int64_t)(want->not_after_ms / 1000u), &der, &der_len);
    if (!rc && der_len > sizeof(want->cert_der))
        rc = NU_ERR_TOO_LARGE;
    if (!rc) {
        memcpy(want->cert_der, der, der_len);
        want->cert_len = der_len;
        rc = cloud_ledger_lease_grant(call->ledger, want, now, got, &existing);
        if (rc) {
            call->audited = 1; /* the ledger audited its refusal */
            rc = cloud_fail(call, rc, "lease for %s refused", r->job_id);
        }
    }
    if (!rc) {
        nu_info("lease %s %s to %s: %u unit(s) of job %s until %llu", got->lease_id,
                existing ? "answered again" : "granted", call->requester, got->units, got->job_id,
                (unsigned long long)got->not_after_ms);
        rc = lease__reply_grant(call, got);
    }
    free(der);
    free(want);
    free(got);
    return rc;
}

/* ------------------------------------------------------------ upload */

/* OpenSSL: the leaf's path is Root -> Device CA -> line CA -> leaf at time t. */
static int lease__path_ok(const struct cloud_keys *k, const struct cloud_ledger_lease *l,
                          const uint8_t *der, size_t len, time_t t, const char **why)
{
    const unsigned char *p;
    X509 *root = NULL, *dca = NULL, *line = NULL, *leaf = NULL;
    X509_STORE *store = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    STACK_OF(X509) *untrusted = sk_X509_new_null();
    int ok = 0;
    p = k->root_der, root = d2i_X509(NULL, &p, (long)k->root_len);
    p = k->device_der, dca = d2i_X509(NULL, &p, (long)k->device_len);
    p = l->cert_der, line = d2i_X509(NULL, &p, (long)l->cert_len);
    p = der, leaf = d2i_X509(NULL, &p, (long)len);
    *why = "certificate does not parse";
    if (!store || !ctx || !untrusted || !root || !dca || !line || !leaf || p != der + len)
        goto out;
    if (!X509_STORE_add_cert(store, root) || !sk_X509_push(untrusted, dca))
        goto out;
    dca = NULL; /* the stack owns it */
    if (!sk_X509_push(untrusted, line))
        goto out;
    line = NULL;
    if (!X509_STORE_CTX_init(ctx, store, leaf, untrusted))
        goto out;
    X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx), t);
    if (X509_verify_cert(ctx) != 1) {
        *why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
        goto out;
    }
    /* Exactly through this lease's line CA (a Device-CA-signed leaf verifies
     * too, but was not issued under the lease). */
    STACK_OF(X509) *chain = X509_STORE_CTX_get0_chain(ctx);
    X509 *issuer = sk_X509_num(chain) == 4 ? sk_X509_value(chain, 1) : NULL;
    X509 *lease_ca = sk_X509_value(untrusted, 1);
    *why = "not issued by this lease's line CA";
    ok = issuer && X509_cmp(issuer, lease_ca) == 0;
out:
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(store);
    sk_X509_pop_free(untrusted, X509_free);
    X509_free(root);
    X509_free(dca);
    X509_free(line);
    X509_free(leaf);
    return ok;
}

/* Everything about one uploaded certificate but the ledger's counting. */
static int lease__cert_check(struct cloud_call *call, const struct cloud_ledger_lease *l,
                             const Nusec__V1__LeaseIssued *it, struct nu_x509_cert_info *info,
                             const char **why)
{
    char uid_hex[2 * CLOUD_LEDGER_UID_MAX + 1];
    *why = "malformed";
    if (!it->device_uid.len || it->device_uid.len > CLOUD_LEDGER_UID_MAX ||
        nu_x509_cert_info(it->certificate_der.data, it->certificate_der.len, info))
        return NU_ERR_LEASE_NOT_COVERED;
    nu_hex_encode(it->device_uid.data, it->device_uid.len, uid_hex, sizeof(uid_hex));
    *why = "CN is not the UID";
    if (strcmp(info->cn, uid_hex) != 0 || info->is_ca)
        return NU_ERR_LEASE_NOT_COVERED;
    /* Issued inside the lease: notBefore is the issuance time less the backdate. */
    int64_t at = info->not_before + LEASE__BACKDATE_S;
    *why = "issued outside the lease's validity";
    if (at < (int64_t)(l->not_before_ms / 1000u) - 60 || at > (int64_t)(l->not_after_ms / 1000u))
        return NU_ERR_LEASE_NOT_COVERED;
    if (!lease__path_ok(&call->cloud->keys, l, it->certificate_der.data, it->certificate_der.len,
                        (time_t)at, why))
        return NU_ERR_LEASE_NOT_COVERED;
    return NU_OK;
}

static int lease__record_one(struct cloud_call *call, const struct cloud_ledger_lease *l,
                             const Nusec__V1__LeaseIssued *it, int *out_known, int *out_revoked)
{
    struct nu_x509_cert_info info;
    const char *why = NULL;
    char *pem = NULL;
    size_t pem_len = 0;
    uint64_t now = nu_time_ms();
    int rc = lease__cert_check(call, l, it, &info, &why);
    if (rc) {
        nu_warn("lease %s of %s: certificate %s refused: %s", l->lease_id, call->requester,
                info.serial_hex[0] ? info.serial_hex : "?", why);
        cloud_ledger_lease_incident(call->ledger, l->lease_id, call->requester, l->job_id, rc,
                                    info.serial_hex, why, now);
        return rc;
    }
    struct cloud_ledger_lease_cert c = {
        .lease_id = l->lease_id,
        .programmer_id = call->requester,
        .serial = info.serial_hex,
        .device_uid = it->device_uid.data,
        .device_uid_len = it->device_uid.len,
        .counter = it->counter,
        .issued_at_ms = (uint64_t)(info.not_before + LEASE__BACKDATE_S) * 1000u,
        /* The chip's online request, abandoned unanswered: the ledger revokes
         * and refunds what it issued for it (cloud_ledger_lease_record). */
        .supersedes_key = it->supersedes_idempotency_key.data,
        .supersedes_key_len = it->supersedes_idempotency_key.len,
    };
    uint8_t spki[NU_P256_PUB_DER_LEN];
    size_t spki_len = 0;
    rc = nu_p256_pub_to_der(info.pub, spki, sizeof(spki), &spki_len);
    if (!rc)
        rc = nu_sha256(spki, spki_len, c.pubkey_hash);
    if (!rc)
        rc = nu_x509_der_to_pem(it->certificate_der.data, it->certificate_der.len,
                                NU_X509_PEM_CERT, &pem, &pem_len);
    c.pem = pem;
    if (!rc)
        rc = cloud_ledger_lease_record(call->ledger, &c, now, out_known);
    /* It may have revoked the online certificate it superseded. */
    if (!rc && !*out_known && c.supersedes_key_len)
        *out_revoked = 1;
    if (rc)
        nu_warn("lease %s of %s: certificate %s not recorded: %s", l->lease_id, call->requester,
                info.serial_hex, nu_err_name(rc));
    free(pem);
    return rc;
}

static int lease__upload(struct cloud_call *call)
{
    const Nusec__V1__LeaseUploadRequest *r = call->req->lease_upload_request;
    struct cloud_ledger_lease *l = calloc(1, sizeof(*l));
    Nusec__V1__LeaseUploadResponse resp = NUSEC__V1__LEASE_UPLOAD_RESPONSE__INIT;
    int rc = l ? NU_OK : NU_ERR_NOMEM;
    if (!rc && (strlen(r->lease_id) > CLOUD_LEDGER_LEASE_ID_MAX || nu_envelope_id_check(r->lease_id)))
        rc = cloud_fail(call, NU_ERR_LEASE_UNKNOWN, "bad lease id");
    if (!rc && r->n_issued > CLOUD_LEASE_UPLOAD_MAX)
        rc = cloud_fail(call, NU_ERR_TOO_LARGE, "more than %u certificates in one upload",
                        CLOUD_LEASE_UPLOAD_MAX);
    if (!rc && (rc = cloud_ledger_lease_get(call->ledger, r->lease_id, call->requester, l))) {
        if (rc == NU_ERR_LEASE_UNKNOWN) {
            /* Someone else's lease, or none: a forged or misrouted upload. */
            cloud_ledger_lease_incident(call->ledger, r->lease_id, call->requester, "", rc, "",
                                        "upload for a lease this programmer does not hold",
                                        nu_time_ms());
            call->audited = 1;
        }
        rc = cloud_fail(call, rc, "lease %s: not this programmer's", r->lease_id);
    }
    int revoked = 0;
    for (size_t i = 0; !rc && i < r->n_issued; i++) {
        int known = 0, one = lease__record_one(call, l, r->issued[i], &known, &revoked);
        if (one == NU_OK)
            known ? resp.known++ : resp.recorded++;
        else if (one == NU_ERR_LEASE_NOT_COVERED || one == NU_ERR_LEASE_UNKNOWN)
            resp.refused++;
        else
            rc = cloud_fail(call, one, "lease %s: the ledger failed", r->lease_id);
    }
    if (!rc && r->final) {
        rc = cloud_ledger_lease_return(call->ledger, r->lease_id, call->requester, nu_time_ms(), l);
        resp.returned = !rc;
        if (rc)
            rc = cloud_fail(call, rc, "lease %s not returned", r->lease_id);
    } else if (!rc) {
        rc = cloud_ledger_lease_get(call->ledger, r->lease_id, call->requester, l);
    }
    if (!rc) {
        resp.lease_id = l->lease_id;
        resp.used = l->used;
        resp.units = l->units;
        nu_info("lease %s of %s: upload of %zu: %u recorded, %u known, %u refused%s",
                l->lease_id, call->requester, r->n_issued, resp.recorded, resp.known,
                resp.refused, resp.returned ? ", lease returned" : "");
        if (resp.recorded && cloud_publish_job_state(call->cloud, call->ledger, l->job_id))
            nu_warn("job %s: state not published", l->job_id);
        if (revoked) /* a superseded online certificate goes on the device CRL */
            (void)cloud_device_crl_update(call->cloud, call->ledger, "certificate superseded");
        rc = cloud_reply(call, &resp.base);
    }
    free(l);
    return rc;
}

const struct cloud_op cloud_lease_ops[] = {
    {"lease.grant", CLOUD_ROLE_PROGRAMMER, NUSEC__V1__ENVELOPE__BODY_LEASE_GRANT_REQUEST,
     lease__grant},
    {"lease.upload", CLOUD_ROLE_PROGRAMMER, NUSEC__V1__ENVELOPE__BODY_LEASE_UPLOAD_REQUEST,
     lease__upload},
    {NULL, 0, 0, NULL},
};
