#include "station_fixture.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_seal.h"
#include "nu_util.h"

#include "nusec/v1/job.pb-c.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int sf__pack(const ProtobufCMessage *m, uint8_t **out, size_t *out_len)
{
    size_t len = protobuf_c_message_get_packed_size(m);
    *out = malloc(len ? len : 1);
    if (!*out)
        return NU_ERR_NOMEM;
    *out_len = protobuf_c_message_pack(m, *out);
    return NU_OK;
}

int sf_package(const struct sf_pkg_opts *o, const struct nu_signer *signer,
               const uint8_t recipient_pub[NU_P256_PUB_LEN], uint8_t **out, size_t *out_len)
{
    uint8_t id[16], key[32] = {1}, hash[32] = {2}, fw[32] = {3}, chain[100] = {0x30}, digest[32],
                    sig[NU_P256_SIG_MAX];
    ProtobufCBinaryData chain_der = {sizeof(chain), chain};
    uint8_t *summary = NULL, *secrets = NULL, *box = NULL;
    size_t summary_len = 0, secrets_len = 0, box_len = 0, sig_len = sizeof(sig);
    uint64_t now = nu_time_ms();
    Nusec__V1__PackageSummary s = NUSEC__V1__PACKAGE_SUMMARY__INIT;
    Nusec__V1__PackageSecrets sec = NUSEC__V1__PACKAGE_SECRETS__INIT;
    Nusec__V1__SealedPackage sp = NUSEC__V1__SEALED_PACKAGE__INIT;
    if (o->package_id)
        memcpy(id, o->package_id, 16);
    else if (nu_random(id, sizeof(id)))
        return NU_ERR_CRYPTO;
    s.job_id = (char *)o->job_id;
    s.programmer_id = (char *)o->programmer_id;
    s.limit = o->limit;
    s.expires_at_ms = o->expires_at_ms ? o->expires_at_ms : now + 3600000u;
    s.created_at_ms = o->created_at_ms ? o->created_at_ms : now;
    s.firmware = (char *)(o->firmware ? o->firmware : "blinky-1.0.0");
    s.format = o->format ? o->format : 1;
    s.package_id.data = id;
    s.package_id.len = sizeof(id);
    sec.job_id = s.job_id;
    sec.limit = s.limit;
    sec.firmware_token.data = (uint8_t *)"token";
    sec.firmware_token.len = 5;
    sec.firmware_key.data = key;
    sec.firmware_key.len = sizeof(key);
    sec.rotpk_hash.data = hash;
    sec.rotpk_hash.len = sizeof(hash);
    sec.expires_at_ms = s.expires_at_ms;
    /* Shapes a programmer checks when it loads a package (values are not a real job's). */
    sec.firmware_digest.data = fw;
    sec.firmware_digest.len = sizeof(fw);
    sec.firmware_size = 1024;
    sec.n_device_chain_der = 1;
    sec.device_chain_der = &chain_der;
    int rc = sf__pack(&s.base, &summary, &summary_len);
    if (rc == NU_OK)
        rc = sf__pack(&sec.base, &secrets, &secrets_len);
    if (rc == NU_OK)
        rc = nu_seal(recipient_pub, summary, summary_len, secrets, secrets_len, &box, &box_len);
    struct nu_sha256_ctx h;
    if (rc == NU_OK && !(rc = nu_sha256_init(&h))) {
        nu_sha256_update(&h, summary, summary_len);
        nu_sha256_update(&h, box, box_len);
        rc = nu_sha256_final(&h, digest);
    }
    if (rc == NU_OK)
        rc = signer->sign_digest(signer->ctx, digest, sig, &sig_len);
    if (rc == NU_OK) {
        sp.summary.data = summary;
        sp.summary.len = summary_len;
        sp.sealed.data = box;
        sp.sealed.len = box_len;
        sp.signature.data = sig;
        sp.signature.len = sig_len;
        rc = sf__pack(&sp.base, out, out_len);
    }
    free(summary);
    free(secrets);
    free(box);
    return rc;
}

int sf_write(const char *dir, const char *name, const uint8_t *buf, size_t len, char *out,
             size_t cap)
{
    int rc = nu_path_fmt(out, cap, "%s/%s", dir, name);
    return rc ? rc : nu_file_write_atomic(out, buf, len, 0644);
}

/* Pack an envelope from `sender` with sequence `seq`. */
static int sf__envelope(const char *sender, uint64_t seq, ProtobufCMessage *body, uint8_t **out,
                        size_t *out_len)
{
    struct nu_envelope_sender *snd = NULL;
    struct nu_envelope_frame f;
    int rc = nu_envelope_sender_create(sender, seq, &snd);
    if (rc == NU_OK)
        rc = nu_envelope_frame_init(&f, snd, body);
    if (rc == NU_OK)
        rc = nu_envelope_pack(&f.env, out, out_len, NULL);
    nu_envelope_sender_destroy(snd);
    return rc;
}

int sf_event(const char *sender, uint64_t seq, const char *kind, const char *job_id,
             const uint8_t *uid, size_t uid_len, uint32_t socket, int outcome, int error,
             const char *detail, uint8_t **out, size_t *out_len)
{
    Nusec__V1__Event ev = NUSEC__V1__EVENT__INIT;
    Nusec__V1__DeviceReport d = NUSEC__V1__DEVICE_REPORT__INIT;
    ev.kind = (char *)kind;
    ev.job_id = (char *)job_id;
    if (uid) {
        d.job_id = (char *)job_id;
        d.device_uid.data = (uint8_t *)uid;
        d.device_uid.len = uid_len;
        d.socket = socket;
        d.outcome = (Nusec__V1__DeviceOutcome)outcome;
        d.error = (Nusec__V1__ErrorCode)error;
        d.detail = (char *)(detail ? detail : "");
        d.serial = outcome == 1 ? "0a1b2c3d" : "";
        ev.data_case = NUSEC__V1__EVENT__DATA_DEVICE;
        ev.device = &d;
    } else if (detail) {
        ev.detail = (char *)detail;
    }
    return sf__envelope(sender, seq, &ev.base, out, out_len);
}

int sf_status(const char *id, uint64_t seq, int state, const char *job_id, uint32_t limit,
              uint32_t counter, uint8_t **out, size_t *out_len)
{
    Nusec__V1__ProgrammerStatus s = NUSEC__V1__PROGRAMMER_STATUS__INIT;
    s.programmer_id = (char *)id;
    s.state = (Nusec__V1__ProgrammerState)state;
    s.job_id = (char *)(job_id ? job_id : "");
    s.limit = limit;
    s.counter = counter;
    s.firmware_version = "0.1.0";
    return sf__envelope(id, seq, &s.base, out, out_len);
}
