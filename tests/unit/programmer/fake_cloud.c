/* fake_cloud: see fake_cloud.h. Test code: plain, assert-free, returns NU_ERR_*. */
#include "fake_cloud.h"

#include "nu_msgsig.h"

#include "nu_attest.h"

#include "nu_crypto.h"
#include "nu_envelope.h"
#include "nu_hsm.h"
#include "nu_pki.h"
#include "nu_mcuboot.h"
#include "nu_seal.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* ---- PKI --------------------------------------------------------------------- */

static int fc__issue(const struct nu_signer *s, const uint8_t *issuer_der, size_t issuer_len,
                     const char *cn, const char *ou, const uint8_t pub[65], int is_ca,
                     uint8_t **out, size_t *out_len)
{
    int64_t now = (int64_t)(nu_time_ms() / 1000);
    struct nu_x509_issue_req req = {
        .cn = cn,
        .ou = ou,
        .o = "NuSEC",
        .not_before = now - 3600,
        .not_after = now + 86400 * 365,
        .is_ca = is_ca,
        /* the root: unconstrained; the Device CA: 1, as `nusec pki init`
         * makes it (a lease's line CA under it, issue 15); the Fleet CA: 0 */
        .path_len = !is_ca || !issuer_der ? -1 : cn && strstr(cn, "Device") ? 1 : 0,
        .key_usage =
            is_ca ? NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN : NU_X509_KU_DIGITAL_SIGNATURE,
        .ext_key_usage = is_ca ? 0 : NU_X509_EKU_CLIENT_AUTH,
    };
    memcpy(req.pub, pub, 65);
    return nu_x509_issue(&req, s, issuer_der, issuer_len, out, out_len);
}

static int fc__ca(struct nu_p256_key **key, struct nu_p256_key *issuer_key,
                  const uint8_t *issuer_der, size_t issuer_len, const char *cn, uint8_t **der,
                  size_t *len)
{
    uint8_t pub[65];
    struct nu_signer s;
    int rc = nu_p256_key_generate(key);
    if (rc == NU_OK)
        rc = nu_p256_key_pub(*key, pub);
    if (rc == NU_OK)
        rc = nu_p256_key_signer(issuer_key ? issuer_key : *key, &s);
    if (rc == NU_OK)
        rc = fc__issue(&s, issuer_der, issuer_len, cn, NULL, pub, 1, der, len);
    return rc;
}

static int fc__sign_image(struct fake_cloud *fc, const struct nu_signer *s, size_t payload_len)
{
    uint8_t *payload = malloc(payload_len);
    struct nu_mcuboot_version v = {1, 2, 3, 4};
    int rc = payload ? nu_random(payload, payload_len) : NU_ERR_NOMEM;
    free(fc->image);
    fc->image = NULL;
    if (rc == NU_OK)
        rc = nu_mcuboot_sign(payload, payload_len, &v, 1, 0, s, &fc->image, &fc->image_len);
    if (rc == NU_OK)
        rc = nu_sha256(fc->image, fc->image_len, fc->image_digest);
    free(payload);
    return rc;
}

static void fc__base(struct fake_cloud *fc, const char *job_id, uint32_t chunk_size)
{
    memset(fc, 0, sizeof(*fc));
    pthread_mutex_init(&fc->lock, NULL);
    snprintf(fc->job_id, sizeof(fc->job_id), "%s", job_id);
    snprintf(fc->enroll_token, sizeof(fc->enroll_token), "enroll-token-0123456789");
    fc->chunk_size = chunk_size;
    fc->tamper_chunk_once = fc->tamper_chunk_always = fc->swap_chunk = -1;
    fc->chunks_fail_after = -1;
}

/* ROTPK, token, firmware key and the signed image, once the signers are set. */
static int fc__finish(struct fake_cloud *fc, size_t payload_len)
{
    memcpy(fc->rotpk, fc->sb_s.pub, 65);
    int rc = nu_mcuboot_rotpk_hash(fc->rotpk, fc->rotpk_hash);
    if (rc == NU_OK)
        rc = nu_random(fc->token, sizeof(fc->token));
    if (rc == NU_OK)
        rc = nu_random(fc->fw_key, sizeof(fc->fw_key));
    if (rc == NU_OK)
        rc = fc__sign_image(fc, &fc->sb_s, payload_len);
    return rc;
}

int fc_init(struct fake_cloud *fc, const char *job_id, size_t payload_len, uint32_t chunk_size)
{
    fc__base(fc, job_id, chunk_size);
    int rc = fc__ca(&fc->root_key, NULL, NULL, 0, "Test Root", &fc->root_der, &fc->root_len);
    if (rc == NU_OK)
        rc = fc__ca(&fc->fleet_key, fc->root_key, fc->root_der, fc->root_len, "Test Fleet CA",
                    &fc->fleet_der, &fc->fleet_len);
    if (rc == NU_OK)
        rc = fc__ca(&fc->devca_key, fc->root_key, fc->root_der, fc->root_len, "Test Device CA",
                    &fc->devca_der, &fc->devca_len);
    if (rc == NU_OK)
        rc = nu_p256_key_generate(&fc->package_key);
    if (rc == NU_OK)
        rc = nu_p256_key_generate(&fc->sb_key);
    if (rc == NU_OK)
        rc = nu_p256_key_signer(fc->fleet_key, &fc->fleet_s);
    if (rc == NU_OK)
        rc = nu_p256_key_signer(fc->devca_key, &fc->devca_s);
    if (rc == NU_OK)
        rc = nu_p256_key_signer(fc->package_key, &fc->package_s);
    if (rc == NU_OK)
        rc = nu_p256_key_signer(fc->sb_key, &fc->sb_s);
    return rc == NU_OK ? fc__finish(fc, payload_len) : rc;
}

static int fc__load_der(const char *dir, const char *rel, uint8_t **out, size_t *len)
{
    char path[600];
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    snprintf(path, sizeof(path), "%s/%s", dir, rel);
    int rc = nu_file_read(path, 65536, &pem, &pem_len);
    if (rc == NU_OK)
        rc = nu_x509_pem_to_der((char *)pem, pem_len, NU_X509_PEM_CERT, out, len, NULL);
    free(pem);
    return rc;
}

int fc_init_hsm(struct fake_cloud *fc, const char *dir, const char *job_id, size_t payload_len,
                uint32_t chunk_size)
{
    static const char *const labels[4] = {NU_PKI_KEY_FLEET_CA, NU_PKI_KEY_DEVICE_CA,
                                          NU_PKI_KEY_PACKAGE, NU_PKI_KEY_SECURE_BOOT};
    fc__base(fc, job_id, chunk_size);
    int rc = nu_pki_open_hsm(dir, 4, &fc->hsm);
    for (int i = 0; i < 4 && rc == NU_OK; i++)
        rc = nu_hsm_key_open(fc->hsm, labels[i], &fc->hsm_keys[i]);
    if (rc != NU_OK)
        return rc;
    fc->fleet_s = *nu_hsm_key_signer(fc->hsm_keys[0]);
    fc->devca_s = *nu_hsm_key_signer(fc->hsm_keys[1]);
    fc->package_s = *nu_hsm_key_signer(fc->hsm_keys[2]);
    fc->sb_s = *nu_hsm_key_signer(fc->hsm_keys[3]);
    rc = fc__load_der(dir, "pki/root-ca.pem", &fc->root_der, &fc->root_len);
    if (rc == NU_OK)
        rc = fc__load_der(dir, "pki/fleet-ca.pem", &fc->fleet_der, &fc->fleet_len);
    if (rc == NU_OK)
        rc = fc__load_der(dir, "pki/device-ca.pem", &fc->devca_der, &fc->devca_len);
    return rc == NU_OK ? fc__finish(fc, payload_len) : rc;
}

int fc_use_foreign_image(struct fake_cloud *fc)
{
    struct nu_p256_key *k = NULL;
    struct nu_signer s;
    size_t payload = fc->image_len - 32 - 200;
    int rc = nu_p256_key_generate(&k);
    if (rc == NU_OK)
        rc = nu_p256_key_signer(k, &s);
    if (rc == NU_OK)
        rc = fc__sign_image(fc, &s, payload > 0 ? payload : 1024);
    nu_p256_key_destroy(k);
    return rc;
}

void fc_free(struct fake_cloud *fc)
{
    nu_p256_key_destroy(fc->root_key);
    nu_p256_key_destroy(fc->fleet_key);
    nu_p256_key_destroy(fc->devca_key);
    nu_p256_key_destroy(fc->package_key);
    nu_p256_key_destroy(fc->sb_key);
    free(fc->root_der);
    free(fc->fleet_der);
    free(fc->devca_der);
    free(fc->lease_der);
    free(fc->image);
    free(fc->last_resp);
    nu_p256_key_destroy(fc->forge_key);
    for (size_t i = 0; i < fc->n_idem; i++)
        free(fc->idem[i].cert);
    for (int i = 0; i < 4; i++)
        nu_hsm_key_close(fc->hsm_keys[i]);
    nu_hsm_close(fc->hsm);
    pthread_mutex_destroy(&fc->lock);
    memset(fc, 0, sizeof(*fc));
}

/* ---- packages ------------------------------------------------------------------- */

static int fc__pack(const ProtobufCMessage *m, uint8_t **out, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    *out = malloc(*len ? *len : 1);
    if (!*out)
        return NU_ERR_NOMEM;
    protobuf_c_message_pack(m, *out);
    return NU_OK;
}

int fc_make_package(struct fake_cloud *fc, const struct fc_pkg_opts *o, uint8_t **out,
                    size_t *out_len)
{
    Nusec__V1__PackageSummary sum = NUSEC__V1__PACKAGE_SUMMARY__INIT;
    Nusec__V1__PackageSecrets sec = NUSEC__V1__PACKAGE_SECRETS__INIT;
    Nusec__V1__SealedPackage sp = NUSEC__V1__SEALED_PACKAGE__INIT;
    ProtobufCBinaryData chain[2] = {{fc->devca_len, fc->devca_der}, {fc->root_len, fc->root_der}};
    uint8_t *sum_buf = NULL, *sec_buf = NULL, *box = NULL, digest[32], sig[NU_P256_SIG_MAX];
    size_t sum_len = 0, sec_len = 0, box_len = 0, sig_len = sizeof(sig);
    struct nu_sha256_ctx h;

    sum.job_id = fc->job_id;
    sum.programmer_id = (char *)o->programmer_id;
    sum.limit = o->limit;
    sum.expires_at_ms = o->expires_at_ms;
    sum.created_at_ms = o->created_at_ms;
    sum.firmware = "app-1.2.3";
    sum.format = o->format ? o->format : 1;
    sum.package_id.data = (uint8_t *)o->package_id;
    sum.package_id.len = 16;
    sec.job_id = (char *)(o->secrets_job_id ? o->secrets_job_id : fc->job_id);
    sec.limit = o->limit;
    sec.firmware_token.data = fc->token;
    sec.firmware_token.len = sizeof(fc->token);
    sec.firmware_key.data = fc->fw_key;
    sec.firmware_key.len = 32;
    sec.rotpk_hash.data = fc->rotpk_hash;
    sec.rotpk_hash.len = 32;
    sec.n_device_chain_der = 2;
    sec.device_chain_der = chain;
    sec.expires_at_ms = o->expires_at_ms;
    sec.firmware_digest.data = fc->image_digest;
    sec.firmware_digest.len = 32;
    sec.firmware_size = (uint32_t)fc->image_len;

    int rc = fc__pack(&sum.base, &sum_buf, &sum_len);
    if (rc == NU_OK)
        rc = fc__pack(&sec.base, &sec_buf, &sec_len);
    if (rc == NU_OK)
        rc = nu_seal(o->recipient_pub, sum_buf, sum_len, sec_buf, sec_len, &box, &box_len);
    if (rc == NU_OK)
        rc = nu_sha256_init(&h);
    if (rc == NU_OK)
        rc = nu_sha256_update(&h, sum_buf, sum_len);
    if (rc == NU_OK)
        rc = nu_sha256_update(&h, box, box_len);
    if (rc == NU_OK)
        rc = nu_sha256_final(&h, digest);
    if (rc == NU_OK && o->sign_with)
        rc = nu_p256_key_sign_digest(o->sign_with, digest, sig, &sig_len);
    else if (rc == NU_OK)
        rc = fc->package_s.sign_digest(fc->package_s.ctx, digest, sig, &sig_len);
    if (rc == NU_OK) {
        sp.summary.data = sum_buf;
        sp.summary.len = sum_len;
        sp.sealed.data = box;
        sp.sealed.len = box_len;
        sp.signature.data = sig;
        sp.signature.len = sig_len;
        rc = fc__pack(&sp.base, out, out_len);
    }
    free(sum_buf);
    free(sec_buf);
    free(box);
    return rc;
}

/* ---- answers ---------------------------------------------------------------------- */

static struct nu_envelope_sender *fc__cloud_sender;
static pthread_once_t fc__once = PTHREAD_ONCE_INIT;

static void fc__sender_init(void)
{
    nu_envelope_sender_create("cloud", NU_ENVELOPE_SEQ_FROM_CLOCK, &fc__cloud_sender);
}

static int fc__answer(const Nusec__V1__Envelope *req, ProtobufCMessage *body, uint8_t *resp,
                      size_t cap, size_t *out_len)
{
    struct nu_envelope_frame f;
    uint8_t *buf = NULL;
    size_t len = 0;
    pthread_once(&fc__once, fc__sender_init);
    int rc = nu_envelope_frame_init(&f, fc__cloud_sender, body);
    if (rc == NU_OK)
        rc = nu_envelope_frame_reply_to(&f, req);
    if (rc == NU_OK)
        rc = nu_envelope_pack(&f.env, &buf, &len, NULL);
    if (rc == NU_OK && len > cap)
        rc = NU_ERR_TOO_LARGE;
    if (rc == NU_OK) {
        memcpy(resp, buf, len);
        *out_len = len;
    }
    free(buf);
    return rc;
}

static int fc__error(const Nusec__V1__Envelope *req, int code, const char *op, uint8_t *resp,
                     size_t cap, size_t *out_len)
{
    Nusec__V1__Error e = NUSEC__V1__ERROR__INIT;
    e.code = (Nusec__V1__ErrorCode)code;
    e.op = (char *)op;
    e.detail = "refused by the fake cloud";
    return fc__answer(req, &e.base, resp, cap, out_len);
}

int fc_station_envelope(ProtobufCMessage *body, uint8_t **out, size_t *out_len)
{
    static struct nu_envelope_sender *st;
    struct nu_envelope_frame f;
    if (!st && nu_envelope_sender_create("station", 1, &st) != NU_OK)
        return NU_ERR_NOMEM;
    int rc = nu_envelope_frame_init(&f, st, body);
    return rc ? rc : nu_envelope_pack(&f.env, out, out_len, NULL);
}

/* enroll.challenge: a fresh nonce the next enroll's attestation must cover. */
static int fc__challenge(struct fake_cloud *fc, const Nusec__V1__Envelope *req, uint8_t *resp,
                         size_t cap, size_t *out_len)
{
    const Nusec__V1__EnrollChallengeRequest *cr = req->enroll_challenge_request;
    if (strcmp(cr->token, fc->enroll_token) != 0)
        return fc__error(req, NU_ERR_TOKEN, "enroll.challenge", resp, cap, out_len);
    int rc = nu_random(fc->nonce, sizeof(fc->nonce));
    if (rc != NU_OK)
        return rc;
    fc->nonce_live = 1;
    Nusec__V1__EnrollChallenge r = NUSEC__V1__ENROLL_CHALLENGE__INIT;
    r.programmer_id = cr->programmer_id;
    r.nonce = (ProtobufCBinaryData){sizeof(fc->nonce), fc->nonce};
    return fc__answer(req, &r.base, resp, cap, out_len);
}

/* The fake checks the statement's content (nonce once, keys); the chain to
 * the vendor CA is the real cloud's job (tests/integration). */
static int fc__attested(struct fake_cloud *fc, const Nusec__V1__EnrollRequest *er,
                        const uint8_t csr_pub[65])
{
    struct nu_attest_claims c;
    if (!er->attestation_statement.len || !er->attestation_signature.len ||
        !er->attestation_cert_der.len)
        return NU_ERR_ATTESTATION_MISSING;
    if (nu_attest_decode(er->attestation_statement.data, er->attestation_statement.len, &c))
        return NU_ERR_DECODE;
    if (!fc->nonce_live || memcmp(c.nonce, fc->nonce, sizeof(fc->nonce)) != 0)
        return NU_ERR_NONCE_REPLAYED;
    fc->nonce_live = 0;
    if (memcmp(c.identity_pub, csr_pub, 65) != 0 ||
        memcmp(c.package_pub, er->package_pubkey.data, 65) != 0)
        return NU_ERR_KEY_NOT_ATTESTED;
    return NU_OK;
}

static int fc__enroll(struct fake_cloud *fc, const Nusec__V1__Envelope *req, uint8_t *resp,
                      size_t cap, size_t *out_len)
{
    const Nusec__V1__EnrollRequest *er = req->enroll_request;
    struct nu_x509_csr_info info;
    uint8_t *cert = NULL, other[65];
    size_t cert_len = 0;
    if (strcmp(er->token, fc->enroll_token) != 0)
        return fc__error(req, NU_ERR_TOKEN, "enroll", resp, cap, out_len);
    int rc = nu_x509_csr_parse_verify(er->csr_der.data, er->csr_der.len, &info);
    if (rc != NU_OK || strcmp(info.cn, er->programmer_id) || strcmp(info.ou, "programmer") ||
        er->package_pubkey.len != 65)
        return fc__error(req, NU_ERR_BAD_CSR, "enroll", resp, cap, out_len);
    if ((rc = fc__attested(fc, er, info.pub)) != NU_OK)
        return fc__error(req, rc, "enroll", resp, cap, out_len);
    memcpy(fc->enrolled_pkg_pub, er->package_pubkey.data, 65);
    if (fc->n_enrolled < 8) {
        snprintf(fc->enrolled_id[fc->n_enrolled], 65, "%s", er->programmer_id);
        memcpy(fc->enrolled_pub[fc->n_enrolled++], er->package_pubkey.data, 65);
    }
    if (fc->enroll_wrong_key) {
        struct nu_p256_key *k = NULL;
        nu_p256_key_generate(&k);
        nu_p256_key_pub(k, other);
        nu_p256_key_destroy(k);
    }
    rc = fc__issue(&fc->fleet_s, fc->fleet_der, fc->fleet_len, info.cn, "programmer",
                   fc->enroll_wrong_key ? other : info.pub, 0, &cert, &cert_len);
    if (rc != NU_OK)
        return rc;
    char pkg_pem[NU_P256_PUB_PEM_MAX], rot_pem[NU_P256_PUB_PEM_MAX];
    size_t pl = 0, rl = 0;
    uint8_t pkg_pub[65];
    memcpy(pkg_pub, fc->package_s.pub, 65);
    nu_p256_pub_to_pem(pkg_pub, pkg_pem, sizeof(pkg_pem), &pl);
    nu_p256_pub_to_pem(fc->rotpk, rot_pem, sizeof(rot_pem), &rl);
    ProtobufCBinaryData chain[2] = {{fc->fleet_len, fc->fleet_der}, {fc->root_len, fc->root_der}};
    Nusec__V1__EnrollResponse r = NUSEC__V1__ENROLL_RESPONSE__INIT;
    r.programmer_id = er->programmer_id;
    r.certificate_der.data = cert;
    r.certificate_der.len = cert_len;
    r.n_chain_der = 2;
    r.chain_der = chain;
    /* Raw point for one pin and PEM for the other: the programmer takes both. */
    r.package_signing_pubkey.data = pkg_pub;
    r.package_signing_pubkey.len = 65;
    r.rotpk.data = (uint8_t *)rot_pem;
    r.rotpk.len = rl;
    rc = fc__answer(req, &r.base, resp, cap, out_len);
    free(cert);
    return rc;
}

static int fc__manifest(struct fake_cloud *fc, const Nusec__V1__Envelope *req, uint8_t *resp,
                        size_t cap, size_t *out_len)
{
    const Nusec__V1__FirmwareManifestRequest *m = req->firmware_manifest_request;
    fc->manifest_requests++;
    if (strcmp(m->job_id, fc->job_id) || m->token.len != sizeof(fc->token) ||
        memcmp(m->token.data, fc->token, sizeof(fc->token)))
        return fc__error(req, NU_ERR_TOKEN, "firmware.manifest", resp, cap, out_len);
    Nusec__V1__FirmwareManifest r = NUSEC__V1__FIRMWARE_MANIFEST__INIT;
    r.job_id = fc->job_id;
    r.image_name = "app-1.2.3";
    r.size = (uint32_t)fc->image_len;
    r.chunk_size = fc->chunk_size;
    r.chunk_count = (uint32_t)((fc->image_len + fc->chunk_size - 1) / fc->chunk_size);
    r.image_digest.data = fc->image_digest;
    r.image_digest.len = 32;
    return fc__answer(req, &r.base, resp, cap, out_len);
}

static int fc__chunk(struct fake_cloud *fc, const Nusec__V1__Envelope *req, uint8_t *resp,
                     size_t cap, size_t *out_len)
{
    const Nusec__V1__FirmwareChunkRequest *q = req->firmware_chunk_request;
    fc->chunk_requests++;
    if (fc->chunks_fail_after >= 0 && fc->chunks_served >= (unsigned)fc->chunks_fail_after)
        return NU_ERR_CONNECTION;
    uint32_t count = (uint32_t)((fc->image_len + fc->chunk_size - 1) / fc->chunk_size);
    if (strcmp(q->job_id, fc->job_id) || q->token.len != sizeof(fc->token) ||
        memcmp(q->token.data, fc->token, sizeof(fc->token)) || q->index >= count)
        return fc__error(req, NU_ERR_TOKEN, "firmware.chunk", resp, cap, out_len);
    uint32_t idx = q->index;
    if ((int)idx == fc->swap_chunk && idx + 1 < count) {
        fc->swap_chunk = -1;
        idx++;
    }
    uint32_t off = idx * fc->chunk_size;
    size_t n = fc->image_len - off < fc->chunk_size ? fc->image_len - off : fc->chunk_size;
    uint8_t nonce[12] = {0}, aad[80], *ct = malloc(n + 16);
    size_t jl = strlen(fc->job_id);
    if (!ct)
        return NU_ERR_NOMEM;
    nonce[8] = (uint8_t)(idx >> 24), nonce[9] = (uint8_t)(idx >> 16);
    nonce[10] = (uint8_t)(idx >> 8), nonce[11] = (uint8_t)idx;
    memcpy(aad, fc->job_id, jl);
    memcpy(aad + jl, nonce + 8, 4);
    int rc = nu_aes256gcm_encrypt(fc->fw_key, nonce, aad, jl + 4, fc->image + off, n, ct, ct + n);
    if ((int)q->index == fc->tamper_chunk_always ||
        ((int)q->index == fc->tamper_chunk_once && (fc->tamper_chunk_once = -1, 1)))
        ct[n / 2] ^= 0x01;
    Nusec__V1__FirmwareChunk r = NUSEC__V1__FIRMWARE_CHUNK__INIT;
    r.job_id = fc->job_id;
    r.index = idx;
    r.offset = off;
    r.nonce.data = nonce;
    r.nonce.len = 12;
    r.ciphertext.data = ct;
    r.ciphertext.len = n + 16;
    if (rc == NU_OK)
        rc = fc__answer(req, &r.base, resp, cap, out_len);
    if (rc == NU_OK)
        fc->chunks_served++;
    free(ct);
    return rc;
}

/* A failed try; after stop_after of them the station says STOP (through the
 * command callback, as the real bus would deliver it). */
static int fc__trouble(struct fake_cloud *fc, int rc)
{
    fc->failed_tries++;
    if (fc->stop_after && fc->failed_tries == fc->stop_after && fc->cmd_cb) {
        Nusec__V1__ProductionCommand cmd = NUSEC__V1__PRODUCTION_COMMAND__INIT;
        uint8_t *env = NULL;
        size_t len = 0;
        cmd.action = NUSEC__V1__PRODUCTION_ACTION__PRODUCTION_ACTION_STOP;
        if (fc_station_envelope(&cmd.base, &env, &len) == NU_OK)
            fc->cmd_cb(fc->cmd_ctx, "nusec/v1/prog/x/cmd", env, len);
        free(env);
    }
    return rc;
}

/* Whether the cloud holds a certificate with serial `hex`: issued online
 * (an idempotency entry) or recorded from a lease upload. */
static int fc__cert_known(const struct fake_cloud *fc, const char *hex)
{
    for (unsigned i = 0; i < fc->lease_recorded && i < FC_MAX_IDEM; i++)
        if (!strcasecmp(fc->lease_serials[i], hex))
            return 1;
    for (size_t i = 0; i < fc->n_idem; i++) {
        struct nu_x509_cert_info ci;
        if (fc->idem[i].cert &&
            nu_x509_cert_info(fc->idem[i].cert, fc->idem[i].len, &ci) == NU_OK &&
            !strcasecmp(ci.serial_hex, hex))
            return 1;
    }
    return 0;
}

/* device.report: recorded once per idempotency key, answered with an Ack. */
static int fc__report(struct fake_cloud *fc, const Nusec__V1__Envelope *req, uint8_t *resp,
                      size_t cap, size_t *out_len)
{
    const ProtobufCBinaryData *idem = &req->header->idempotency_key;
    fc->report_requests++;
    if (fc->report_unreachable)
        return fc__trouble(fc, NU_ERR_CONNECTION);
    if (fc->report_transient > 0) {
        fc->report_transient--;
        fc__trouble(fc, 0);
        return fc__error(req, NU_ERR_BUSY, "device.report", resp, cap, out_len);
    }
    if (idem->len != 16 || req->event->data_case != NUSEC__V1__EVENT__DATA_DEVICE)
        return fc__error(req, NU_ERR_INVALID_ARG, "device.report", resp, cap, out_len);
    const char *serial = req->event->device->serial;
    if (fc->report_needs_cert && (!serial || !fc__cert_known(fc, serial)))
        return fc__error(req, NU_ERR_NOT_FOUND, "device.report", resp, cap, out_len);
    int seen = 0;
    for (unsigned i = 0; i < fc->reports_recorded && !seen; i++)
        seen = !memcmp(fc->report_keys[i], idem->data, 16);
    if (!seen && fc->reports_recorded < FC_MAX_IDEM) {
        memcpy(fc->report_keys[fc->reports_recorded], idem->data, 16);
        fc->report_provisioned[fc->reports_recorded++] =
            !strcmp(req->event->kind, "device.provisioned");
    }
    Nusec__V1__Ack ack = NUSEC__V1__ACK__INIT;
    return fc__answer(req, &ack.base, resp, cap, out_len);
}

/* What the quota has given out: online certificates, and with
 * quota_holds_lease the offline ones recorded plus what the lease out still
 * holds back (ledger_issue.c). */
static uint32_t fc__quota_taken(const struct fake_cloud *fc)
{
    if (!fc->quota_holds_lease)
        return fc->issued;
    unsigned used = fc->lease_recorded - fc->lease_base;
    uint32_t held = fc->lease_id[0] && fc->lease_units > used ? fc->lease_units - used : 0;
    return fc->issued + fc->lease_recorded + held;
}

static int fc__cert(struct fake_cloud *fc, const Nusec__V1__Envelope *req, uint8_t *resp,
                    size_t cap, size_t *out_len)
{
    const Nusec__V1__CertificateRequest *q = req->certificate_request;
    const ProtobufCBinaryData *idem = &req->header->idempotency_key;
    struct nu_x509_csr_info info;
    uint8_t *cert = NULL;
    size_t cert_len = 0;
    fc->cert_requests++;
    if (fc->cert_unreachable)
        return fc__trouble(fc, NU_ERR_CONNECTION);
    if (fc->cert_paused)
        return fc__error(req, NU_ERR_JOB_NOT_ACTIVE, "cert.request", resp, cap, out_len);
    if (fc->cert_transient > 0) {
        static const int codes[] = {NU_ERR_NOT_FOUND, NU_ERR_TIMEOUT, -NU_ERR_DB,
                                    -NU_ERR_BUSY,     -NU_ERR_IO,     -NU_ERR_HSM};
        int code = codes[(unsigned)fc->cert_transient-- % 6u];
        if (code > 0)
            return fc__trouble(fc, code);
        fc__trouble(fc, 0);
        return fc__error(req, -code, "cert.request", resp, cap, out_len);
    }
    if (idem->len != 16 || strcmp(q->job_id, fc->job_id))
        return fc__error(req, NU_ERR_INVALID_ARG, "cert.request", resp, cap, out_len);
    for (size_t i = 0; i < fc->n_idem; i++) {
        if (!memcmp(fc->idem[i].key, idem->data, 16)) {
            cert = fc->idem[i].cert;
            cert_len = fc->idem[i].len;
        }
    }
    int fresh = cert == NULL;
    if (fresh) {
        if (fc->quota && fc__quota_taken(fc) >= fc->quota) {
            Nusec__V1__Error e = NUSEC__V1__ERROR__INIT;
            Nusec__V1__CertificateRefused ref = NUSEC__V1__CERTIFICATE_REFUSED__INIT;
            e.code = NUSEC__V1__ERROR_CODE__ERROR_CODE_QUOTA_EXHAUSTED;
            e.detail = "quota exhausted";
            ref.job_id = fc->job_id;
            ref.device_uid = q->device_uid;
            ref.error = &e;
            return fc__answer(req, &ref.base, resp, cap, out_len);
        }
        int rc = nu_x509_csr_parse_verify(q->csr_der.data, q->csr_der.len, &info);
        if (rc != NU_OK)
            return fc__error(req, NU_ERR_BAD_CSR, "cert.request", resp, cap, out_len);
        rc = fc__issue(&fc->devca_s, fc->devca_der, fc->devca_len, info.cn, "device", info.pub, 0,
                       &cert, &cert_len);
        if (rc != NU_OK || fc->n_idem == FC_MAX_IDEM) {
            free(cert);
            return rc ? rc : NU_ERR_NOMEM;
        }
        memcpy(fc->idem[fc->n_idem].key, idem->data, 16);
        fc->idem[fc->n_idem].cert = cert;
        fc->idem[fc->n_idem++].len = cert_len;
        fc->issued++;
    }
    if (fresh && fc->cut_after_issue > 0) {
        fc->cut_after_issue--;
        fc->link_down = 1;
        fc->taken = 1;
        return fc__trouble(fc, NU_ERR_TIMEOUT); /* issued, the WAN cut before the answer */
    }
    if (fc->drop_cert_replies > 0) {
        fc->drop_cert_replies--;
        fc->taken = 1;
        return fc__trouble(fc, NU_ERR_TIMEOUT); /* issued, but the answer is lost */
    }
    struct nu_x509_cert_info ci;
    nu_x509_cert_info(cert, cert_len, &ci);
    Nusec__V1__CertificateIssued r = NUSEC__V1__CERTIFICATE_ISSUED__INIT;
    r.job_id = fc->job_id;
    r.device_uid = q->device_uid;
    r.certificate_der.data = cert;
    r.certificate_der.len = cert_len;
    r.serial = ci.serial_hex;
    r.issued = fc->issued;
    r.quota = fc->quota;
    return fc__answer(req, &r.base, resp, cap, out_len);
}

/* ---- offline lease ------------------------------------------------------------------- */

static int fc__lease_grant(struct fake_cloud *fc, const Nusec__V1__Envelope *req, uint8_t *resp,
                           size_t cap, size_t *out_len)
{
    const Nusec__V1__LeaseGrantRequest *q = req->lease_grant_request;
    struct nu_x509_csr_info info;
    if (!fc->lease_units || strcmp(q->job_id, fc->job_id))
        return fc__error(req, NU_ERR_NOT_AUTHORIZED, "lease.grant", resp, cap, out_len);
    if (nu_x509_csr_parse_verify(q->line_ca_csr_der.data, q->line_ca_csr_der.len, &info))
        return fc__error(req, NU_ERR_BAD_CSR, "lease.grant", resp, cap, out_len);
    if (fc->lease_id[0] && !fc->lease_any_key && memcmp(fc->lease_pub, info.pub, 65) != 0)
        return fc__error(req, NU_ERR_STATE, "lease.grant", resp, cap, out_len);
    uint64_t now = nu_time_ms(), hours = fc->lease_hours ? fc->lease_hours : 2;
    uint64_t valid_s = fc->lease_seconds ? fc->lease_seconds : hours * 3600u;
    if (!fc->lease_id[0]) {
        uint8_t rnd[8];
        nu_random(rnd, sizeof(rnd));
        strcpy(fc->lease_id, "lease-");
        nu_hex_encode(rnd, sizeof(rnd), fc->lease_id + 6, sizeof(fc->lease_id) - 6);
        memcpy(fc->lease_pub, info.pub, 65);
        free(fc->lease_der);
        fc->lease_der = NULL;
        struct nu_x509_issue_req ir = {
            .cn = info.cn,
            .ou = fc->job_id,
            .o = "NuSEC",
            .not_before = (int64_t)(now / 1000u),
            .not_after = (int64_t)(now / 1000u + valid_s),
            .is_ca = 1,
            .path_len = 0,
            .key_usage = NU_X509_KU_KEY_CERT_SIGN,
        };
        memcpy(ir.pub, info.pub, 65);
        int rc = nu_x509_issue(&ir, &fc->devca_s, fc->devca_der, fc->devca_len, &fc->lease_der,
                               &fc->lease_len);
        if (rc != NU_OK)
            return rc;
        fc->leases_granted++;
        fc->lease_base = fc->lease_recorded;
    }
    Nusec__V1__LeaseGrant g = NUSEC__V1__LEASE_GRANT__INIT;
    g.lease_id = fc->lease_id;
    g.job_id = fc->job_id;
    g.units = fc->lease_units;
    g.not_before_ms = now;
    g.not_after_ms = now + valid_s * 1000u;
    g.line_ca_cert_der.data = fc->lease_der;
    g.line_ca_cert_der.len = fc->lease_len;
    int rc = fc__answer(req, &g.base, resp, cap, out_len);
    if (rc == NU_OK && fc->cut_after_grant > 0) {
        fc->cut_after_grant--;
        fc->link_down = 1;
    }
    return rc;
}

/* The online certificate issued for the UID's cert.request (its
 * idempotency key, as the core derives it), or -1. */
static int fc__online_of(struct fake_cloud *fc, const ProtobufCBinaryData *uid, uint8_t key[32])
{
    struct nu_sha256_ctx h;
    if (nu_sha256_init(&h) != NU_OK)
        return -1;
    if (nu_sha256_update(&h, "nusec/v1 cert", 13) != NU_OK ||
        nu_sha256_update(&h, fc->job_id, strlen(fc->job_id)) != NU_OK ||
        nu_sha256_update(&h, uid->data, uid->len) != NU_OK || nu_sha256_final(&h, key) != NU_OK) {
        nu_sha256_abort(&h);
        return -1;
    }
    for (size_t i = 0; i < fc->n_idem; i++)
        if (!memcmp(fc->idem[i].key, key, 16))
            return (int)i;
    return -1;
}

/* As the ledger: an online certificate for the UID makes the offline one an
 * incident, unless the upload supersedes that very request: the online one
 * is then revoked and refunded (its cache entry answers the offline one
 * from now on, as the cloud's RESEND would). 0 ok, -1 refused. */
static int fc__lease_supersede(struct fake_cloud *fc, const Nusec__V1__LeaseIssued *it)
{
    uint8_t key[32];
    int i = fc__online_of(fc, &it->device_uid, key);
    const ProtobufCBinaryData *sup = &it->supersedes_idempotency_key;
    if (sup->len && (sup->len != 16 || memcmp(sup->data, key, 16)))
        return -1; /* not this chip's request */
    if (i < 0)
        return 0;
    if (!sup->len)
        return -1; /* a live online certificate, not superseded */
    uint8_t *copy = malloc(it->certificate_der.len);
    if (!copy)
        return -1;
    memcpy(copy, it->certificate_der.data, it->certificate_der.len);
    free(fc->idem[i].cert);
    fc->idem[i].cert = copy;
    fc->idem[i].len = it->certificate_der.len;
    fc->lease_superseded++;
    fc->issued--; /* refunded to the quota, as the ledger does */
    return 0;
}

/* One uploaded certificate: through the line CA to the root, counter new
 * and within the units, serial new. 0 recorded, 1 known, -1 refused. */
static int fc__lease_one(struct fake_cloud *fc, const Nusec__V1__LeaseIssued *it)
{
    struct nu_x509_der mid[2] = {{fc->lease_der, fc->lease_len}, {fc->devca_der, fc->devca_len}};
    struct nu_x509_cert_info ci;
    if (nu_x509_verify_chain(it->certificate_der.data, it->certificate_der.len, mid, 2,
                             fc->root_der, fc->root_len) != NU_OK ||
        nu_x509_cert_info(it->certificate_der.data, it->certificate_der.len, &ci) != NU_OK)
        return -1;
    for (unsigned i = 0; i < fc->lease_recorded; i++) {
        if (!strcmp(fc->lease_serials[i], ci.serial_hex))
            return fc->lease_counters[i] == it->counter ? 1 : -1;
        if (fc->lease_counters[i] == it->counter)
            return -1; /* a counter value used twice */
    }
    if (!it->counter || it->counter > fc->lease_units || fc->lease_recorded == FC_MAX_IDEM)
        return -1;
    if (fc__lease_supersede(fc, it) != 0)
        return -1;
    fc->lease_counters[fc->lease_recorded] = it->counter;
    snprintf(fc->lease_serials[fc->lease_recorded++], 41, "%s", ci.serial_hex);
    return 0;
}

static int fc__lease_upload(struct fake_cloud *fc, const Nusec__V1__Envelope *req, uint8_t *resp,
                            size_t cap, size_t *out_len)
{
    const Nusec__V1__LeaseUploadRequest *q = req->lease_upload_request;
    Nusec__V1__LeaseUploadResponse r = NUSEC__V1__LEASE_UPLOAD_RESPONSE__INIT;
    fc->lease_uploads++;
    if (fc->lease_upload_busy)
        return fc__error(req, NU_ERR_BUSY, "lease.upload", resp, cap, out_len);
    if (q->final && fc->lease_return_error)
        return fc__error(req, fc->lease_return_error, "lease.upload", resp, cap, out_len);
    if (!fc->lease_id[0] || strcmp(q->lease_id, fc->lease_id))
        return fc__error(req, NU_ERR_LEASE_UNKNOWN, "lease.upload", resp, cap, out_len);
    for (size_t i = 0; i < q->n_issued; i++) {
        int v = fc->lease_refuse_all ? -1 : fc__lease_one(fc, q->issued[i]);
        v == 0 ? r.recorded++ : v == 1 ? r.known++ : r.refused++;
    }
    fc->lease_known += r.known;
    fc->lease_refused += r.refused;
    r.lease_id = fc->lease_id;
    r.used = fc->lease_recorded;
    r.units = fc->lease_units;
    if (q->final) {
        r.returned = 1;
        fc->leases_returned++;
    }
    int rc = fc__answer(req, &r.base, resp, cap, out_len);
    if (q->final)
        fc->lease_id[0] = '\0'; /* its records stay: the next lease starts afresh */
    return rc;
}

/* ---- transport ops ------------------------------------------------------------------ */

/* Whether the cloud took a request with env's message id already. */
static int fc__seen(const struct fake_cloud *fc, const Nusec__V1__Envelope *env)
{
    const ProtobufCBinaryData *id = env->header ? &env->header->message_id : NULL;
    unsigned n = fc->n_seen < FC_MAX_SEEN ? fc->n_seen : FC_MAX_SEEN;
    for (unsigned i = 0; id && id->len == 16 && i < n; i++)
        if (!memcmp(fc->seen_ids[i], id->data, 16))
            return 1;
    return 0;
}

static void fc__take(struct fake_cloud *fc, const Nusec__V1__Envelope *env)
{
    const ProtobufCBinaryData *id = env->header ? &env->header->message_id : NULL;
    if (id && id->len == 16 && !fc__seen(fc, env))
        memcpy(fc->seen_ids[fc->n_seen++ % FC_MAX_SEEN], id->data, 16);
}

static int fc__request(void *ctx, const char *topic, const uint8_t *p, size_t len,
                       uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len)
{
    (void)timeout_ms;
    struct fake_cloud *fc = ctx;
    Nusec__V1__Envelope *env = NULL;
    const char *op = strrchr(topic, '/');
    int replay = 0, rc = nu_envelope_unpack(p, len, &env, NULL);
    pthread_mutex_lock(&fc->lock);
    if (rc != NU_OK) {
        fc->bad_messages++;
        rc = NU_ERR_DECODE;
    } else if (strncmp(topic, "nusec/v1/cloud/req/", 19) || !op) {
        rc = NU_ERR_NOT_FOUND;
    } else if (fc->link_down || (fc->lease_upload_down && !strcmp(op, "/lease.upload"))) {
        rc = fc__trouble(fc, NU_ERR_CONNECTION);
    } else if ((replay = fc__seen(fc, env))) {
        fc->replays_answered++;
        rc = fc__error(env, NU_ERR_REPLAY, op + 1, resp, cap, out_len);
    } else if (!strcmp(op, "/lease.grant") &&
               env->body_case == NUSEC__V1__ENVELOPE__BODY_LEASE_GRANT_REQUEST) {
        rc = fc__lease_grant(fc, env, resp, cap, out_len);
    } else if (!strcmp(op, "/lease.upload") &&
               env->body_case == NUSEC__V1__ENVELOPE__BODY_LEASE_UPLOAD_REQUEST) {
        rc = fc__lease_upload(fc, env, resp, cap, out_len);
    } else if (!strcmp(op, "/enroll.challenge") &&
               env->body_case == NUSEC__V1__ENVELOPE__BODY_ENROLL_CHALLENGE_REQUEST) {
        rc = fc__challenge(fc, env, resp, cap, out_len);
    } else if (!strcmp(op, "/enroll") &&
               env->body_case == NUSEC__V1__ENVELOPE__BODY_ENROLL_REQUEST) {
        rc = fc__enroll(fc, env, resp, cap, out_len);
    } else if (!strcmp(op, "/firmware.manifest") &&
               env->body_case == NUSEC__V1__ENVELOPE__BODY_FIRMWARE_MANIFEST_REQUEST) {
        rc = fc__manifest(fc, env, resp, cap, out_len);
    } else if (!strcmp(op, "/firmware.chunk") &&
               env->body_case == NUSEC__V1__ENVELOPE__BODY_FIRMWARE_CHUNK_REQUEST) {
        rc = fc__chunk(fc, env, resp, cap, out_len);
    } else if (!strcmp(op, "/cert.request") &&
               env->body_case == NUSEC__V1__ENVELOPE__BODY_CERTIFICATE_REQUEST) {
        rc = fc__cert(fc, env, resp, cap, out_len);
    } else if (!strcmp(op, "/device.report") && env->body_case == NUSEC__V1__ENVELOPE__BODY_EVENT) {
        rc = fc__report(fc, env, resp, cap, out_len);
    } else {
        fc->bad_messages++;
        rc = NU_ERR_NOT_FOUND;
    }
    /* Answered (or issued with its answer lost): this message id is taken. */
    if (env && !replay && (rc == NU_OK || fc->taken)) {
        fc__take(fc, env);
        if (rc == NU_OK && fc->lost_answers > 0) {
            fc->lost_answers--;
            rc = fc__trouble(fc, NU_ERR_TIMEOUT); /* done, but the answer is lost */
        }
    }
    fc->taken = 0;
    pthread_mutex_unlock(&fc->lock);
    nu_envelope_free(env);
    return rc;
}

#define FC__REPLY_TOPIC "nusec/v1/reply/fake-prog/r"

/* The answer of fc__request, signed end to end as nu_mqtt signs (nu_msgsig):
 * what the core must verify. The knobs play a hostile site broker. */
static int fc__request_signed(void *ctx, const char *topic, const uint8_t *p, size_t len,
                              uint32_t timeout_ms, uint8_t *resp, size_t cap, size_t *out_len,
                              char *reply_topic, size_t topic_cap, char *sig, size_t sig_cap)
{
    struct fake_cloud *fc = ctx;
    char value[NU_MSGSIG_VALUE_MAX] = "";
    struct nu_signer forger;
    int rc = fc__request(ctx, topic, p, len, timeout_ms, resp, cap, out_len);
    if (rc != NU_OK || topic_cap <= strlen(FC__REPLY_TOPIC))
        return rc == NU_OK ? NU_ERR_TOO_LARGE : rc;
    snprintf(reply_topic, topic_cap, "%s", FC__REPLY_TOPIC);
    pthread_mutex_lock(&fc->lock);
    const char *op = strrchr(topic, '/');
    if (fc->link_refusals > 0 &&
        (!fc->link_refusal_op || (op && !strcmp(op + 1, fc->link_refusal_op)))) {
        rc = fc->link_refusals-- % 2 ? NU_ERR_TOO_LARGE : NU_ERR_NOT_AUTHORIZED;
        pthread_mutex_unlock(&fc->lock);
        return rc;
    }
    if (fc->replay_replies > 0 && fc->last_resp && fc->last_len <= cap) {
        fc->replay_replies--;
        memcpy(resp, fc->last_resp, fc->last_len);
        *out_len = fc->last_len;
        snprintf(sig, sig_cap, "%s", fc->last_sig);
        pthread_mutex_unlock(&fc->lock);
        return NU_OK;
    }
    if (fc->unsigned_replies > 0) {
        fc->unsigned_replies--;
    } else if (fc->forge_replies > 0 && fc->forge_key &&
               nu_p256_key_signer(fc->forge_key, &forger) == NU_OK) {
        fc->forge_replies--;
        rc = nu_msgsig_sign(&forger, FC__REPLY_TOPIC, resp, *out_len, value);
    } else {
        rc = nu_msgsig_sign(&fc->package_s, FC__REPLY_TOPIC, resp, *out_len, value);
        uint8_t *keep = rc == NU_OK ? malloc(*out_len ? *out_len : 1) : NULL;
        if (keep) {
            memcpy(keep, resp, *out_len);
            free(fc->last_resp);
            fc->last_resp = keep;
            fc->last_len = *out_len;
            snprintf(fc->last_sig, sizeof(fc->last_sig), "%s", value);
        }
    }
    pthread_mutex_unlock(&fc->lock);
    snprintf(sig, sig_cap, "%s", value);
    return rc;
}

static int fc__publish(void *ctx, const char *topic, const uint8_t *p, size_t len, int qos,
                       int retain)
{
    (void)qos;
    struct fake_cloud *fc = ctx;
    Nusec__V1__Envelope *env = NULL;
    int rc = nu_envelope_unpack(p, len, &env, NULL);
    pthread_mutex_lock(&fc->lock);
    if (rc != NU_OK) {
        fc->bad_messages++;
    } else if (env->body_case == NUSEC__V1__ENVELOPE__BODY_PROGRAMMER_STATUS && retain &&
               strstr(topic, "/status")) {
        fc->status_msgs++;
        for (size_t i = 0; i < env->programmer_status->n_sockets; i++) {
            if (!strcmp(env->programmer_status->sockets[i]->state, "waiting-cloud")) {
                fc->waiting_status++;
                break;
            }
        }
    } else if (env->body_case == NUSEC__V1__ENVELOPE__BODY_EVENT &&
               env->event->data_case == NUSEC__V1__EVENT__DATA_DEVICE &&
               !strcmp(strrchr(topic, '/') + 1, env->event->kind) && fc->n_events < FC_MAX_EVENTS) {
        struct fc_event *e = &fc->events[fc->n_events++];
        const Nusec__V1__DeviceReport *d = env->event->device;
        snprintf(e->kind, sizeof(e->kind), "%s", env->event->kind);
        e->code = (int)d->error;
        e->uid_len = d->device_uid.len < 16 ? d->device_uid.len : 16;
        if (e->uid_len)
            memcpy(e->uid, d->device_uid.data, e->uid_len);
        snprintf(e->serial, sizeof(e->serial), "%s", d->serial);
        if (!strcmp(e->kind, "device.provisioned"))
            fc->provisioned++;
        else
            fc->failed++;
    } else if (env->body_case == NUSEC__V1__ENVELOPE__BODY_EVENT &&
               env->event->data_case == NUSEC__V1__EVENT__DATA__NOT_SET &&
               !strcmp(strrchr(topic, '/') + 1, env->event->kind) && fc->n_events < FC_MAX_EVENTS) {
        struct fc_event *e = &fc->events[fc->n_events++]; /* lease.refused (issue 15) */
        snprintf(e->kind, sizeof(e->kind), "%s", env->event->kind);
        e->code = (int)env->event->code;
    } else {
        fc->bad_messages++;
    }
    pthread_mutex_unlock(&fc->lock);
    nu_envelope_free(env);
    return rc == NU_OK ? NU_OK : NU_ERR_DECODE;
}

static int fc__subscribe(void *ctx, const char *filter, pg_msg_cb cb, void *cb_ctx)
{
    (void)filter;
    struct fake_cloud *fc = ctx;
    fc->cmd_cb = cb;
    fc->cmd_ctx = cb_ctx;
    return NU_OK;
}

const struct pg_transport_ops fc_transport_ops = {
    .version = PG_HAL_VERSION,
    .publish = fc__publish,
    .request = fc__request,
    .subscribe = fc__subscribe,
    .request_signed = fc__request_signed,
};

unsigned fc_count_events(struct fake_cloud *fc, const char *kind, int code)
{
    unsigned n = 0;
    pthread_mutex_lock(&fc->lock);
    for (size_t i = 0; i < fc->n_events; i++) {
        if (!strcmp(fc->events[i].kind, kind) && (code < 0 || fc->events[i].code == code))
            n++;
    }
    pthread_mutex_unlock(&fc->lock);
    return n;
}

const uint8_t *fc_enrolled_pub(struct fake_cloud *fc, const char *programmer_id)
{
    const uint8_t *pub = NULL;
    pthread_mutex_lock(&fc->lock);
    for (size_t i = 0; i < fc->n_enrolled; i++) {
        if (!strcmp(fc->enrolled_id[i], programmer_id))
            pub = fc->enrolled_pub[i];
    }
    pthread_mutex_unlock(&fc->lock);
    return pub;
}

unsigned fc_count_reports(struct fake_cloud *fc, int provisioned)
{
    unsigned n = 0;
    pthread_mutex_lock(&fc->lock);
    for (unsigned i = 0; i < fc->reports_recorded; i++)
        n += fc->report_provisioned[i] == provisioned;
    pthread_mutex_unlock(&fc->lock);
    return n;
}
