/* pg_enroll: the programmer's identity, made in its KeyStore, certified by the cloud. */
#include "pg_int.h"

#include <string.h>

#define ENROLL__OU "programmer"
#define ENROLL__O "NuSEC"

static int enroll__token_ok(const char *t)
{
    size_t n = t ? strlen(t) : 0;
    if (n == 0 || n > PG_TOKEN_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if ((unsigned char)t[i] < 0x21 || (unsigned char)t[i] > 0x7e)
            return 0;
    }
    return 1;
}

/* Step 1: a fresh single-use nonce from the cloud, bound to our id and token. */
static int enroll__challenge(struct pg_core *c, const char *relay, const char *token,
                             uint8_t nonce[PG_ATTEST_NONCE_LEN])
{
    struct pg_enroll_work *e = &c->work.enroll;
    struct pg_pb_writer w;
    struct pg_msg_env env;
    struct pg_msg_enroll_challenge ch;
    size_t len = 0;
    int rc = pg__env_start(c, &w, e->req, sizeof(e->req), relay, NULL, 0);
    if (rc != NU_OK)
        return rc;
    pg_msg_put_enroll_challenge_req(&w, c->id, token);
    if (w.err)
        return w.err;
    rc = pg__request(c, relay, "enroll.challenge", e->req, w.len, e->resp, sizeof(e->resp), &len);
    if (rc == NU_OK)
        rc = pg_msg_reply_decode(e->resp, len, PG_BODY_ENROLL_CHALLENGE, &env, NULL);
    if (rc == NU_OK)
        rc = pg_msg_enroll_challenge_decode(env.body, &ch);
    if (rc == NU_OK && (!pg_msg_eq(ch.programmer_id, c->id) || ch.nonce.len != PG_ATTEST_NONCE_LEN))
        rc = NU_ERR_DECODE;
    if (rc == NU_OK)
        memcpy(nonce, ch.nonce.p, PG_ATTEST_NONCE_LEN);
    return rc;
}

struct enroll__in {
    const char *relay, *token;
    const uint8_t *fw_hash, *manifest;
    size_t manifest_len;
};

static int enroll__request(struct pg_core *c, const struct enroll__in *in, const uint8_t id_pub[65],
                           size_t *out_len)
{
    const char *relay = in->relay;
    struct pg_enroll_work *e = &c->work.enroll;
    uint8_t pkg_pub[PG_P256_PUB_LEN];
    size_t csr_len = 0;
    int rc = pg_ks_pubkey(c->hal, PG_KEY_PACKAGE, pkg_pub);
    if (rc == NU_OK)
        rc = pg_csr_make(c->hal, pg__ks_sign_identity, c, id_pub, c->id, ENROLL__OU, ENROLL__O,
                         e->csr, sizeof(e->csr), &csr_len);
    struct pg_pb_writer w;
    if (rc == NU_OK)
        rc = pg__env_start(c, &w, e->req, sizeof(e->req), relay, NULL, 0);
    if (rc != NU_OK)
        return rc;
    struct pg_msg_enroll_req_out req = {
        .programmer_id = c->id,
        .token = in->token,
        .csr = e->csr,
        .csr_len = csr_len,
        .package_pubkey = pkg_pub,
        .firmware_hash = in->fw_hash,
        .attestation = &e->att,
        .boot_manifest = in->manifest,
        .boot_manifest_len = in->manifest ? in->manifest_len : 0,
    };
    pg_msg_put_enroll_req(&w, &req);
    if (w.err)
        return w.err;
    return pg__request(c, relay, "enroll", e->req, w.len, e->resp, sizeof(e->resp), out_len);
}

/* The answer must certify our identity key under our name. */
static int enroll__check(struct pg_core *c, const struct pg_msg_enroll_resp *r,
                         const uint8_t id_pub[65], uint8_t pin_pkg[65], uint8_t pin_rotpk[65])
{
    struct pg_der chain[PG_MSG_CHAIN_MAX];
    struct pg_cert_facts facts;
    if (!pg_msg_eq(r->programmer_id, c->id) || r->certificate.len == 0 || r->n_chain == 0)
        return NU_ERR_DECODE;
    for (size_t i = 0; i < r->n_chain; i++) {
        chain[i].der = r->chain[i].p;
        chain[i].len = r->chain[i].len;
    }
    int rc = pg_cert_check(c->hal, r->certificate.p, r->certificate.len, chain, r->n_chain, &facts);
    if (rc != NU_OK)
        return rc;
    if (!pg__ct_eq(facts.pub, id_pub, PG_P256_PUB_LEN) || strcmp(facts.cn, c->id) != 0)
        return NU_ERR_BAD_CERT;
    rc = pg_pubkey_parse(c->hal, r->package_signing_pubkey.p, r->package_signing_pubkey.len,
                         pin_pkg);
    /* The cloud signs with its package key: an anchored programmer pins no other. */
    if (rc == NU_OK && c->anchored && !pg__ct_eq(pin_pkg, c->anchor, PG_P256_PUB_LEN))
        rc = NU_ERR_BAD_SIGNATURE;
    if (rc == NU_OK)
        rc = pg_pubkey_parse(c->hal, r->rotpk.p, r->rotpk.len, pin_rotpk);
    return rc;
}

int pg_core_enroll(struct pg_core *c, const char *relay_id, const char *token,
                   const uint8_t *fw_hash, const uint8_t *manifest, size_t manifest_len)
{
    if (!c || !enroll__token_ok(token))
        return NU_ERR_INVALID_ARG;
    if (relay_id && !pg_msg_id_ok((struct pg_bytes){(const uint8_t *)relay_id, strlen(relay_id)}))
        return NU_ERR_INVALID_ARG;
    if (c->enrolled)
        return NU_ERR_EXISTS;
    if (atomic_load(&c->producing))
        return NU_ERR_BUSY;
    struct pg_enroll_work *e = &c->work.enroll;
    uint8_t id_pub[PG_P256_PUB_LEN], pin_pkg[PG_P256_PUB_LEN], pin_rotpk[PG_P256_PUB_LEN];
    uint8_t nonce[PG_ATTEST_NONCE_LEN];
    struct pg_msg_env env;
    struct pg_msg_enroll_resp r;
    size_t len = 0;
    const struct enroll__in in = {relay_id, token, fw_hash, manifest, manifest_len};
    /* Keys from an interrupted enrollment are reused: the CSR is new each time. */
    int rc = pg_ks_keys_generate(c->hal);
    if (rc == NU_ERR_EXISTS)
        rc = NU_OK;
    if (rc == NU_OK)
        rc = pg_ks_pubkey(c->hal, PG_KEY_IDENTITY, id_pub);
    if (rc == NU_OK)
        rc = enroll__challenge(c, relay_id, token, nonce);
    /* The KeyStore builds and signs the statement itself: the core only
     * chooses which nonce it covers. */
    if (rc == NU_OK)
        rc = pg_ks_attest(c->hal, nonce, &e->att);
    if (rc == NU_OK)
        rc = enroll__request(c, &in, id_pub, &len);
    if (rc == NU_OK)
        rc = pg_msg_reply_decode(e->resp, len, PG_BODY_ENROLL_RESPONSE, &env, NULL);
    if (rc == NU_OK)
        rc = pg_msg_enroll_resp_decode(env.body, &r);
    if (rc == NU_OK)
        rc = enroll__check(c, &r, id_pub, pin_pkg, pin_rotpk);
    /* Pins first, certificate last: the certificate marks enrollment done. */
    if (rc == NU_OK)
        rc = pg_ks_blob_put(c->hal, PG_BLOB_PIN_PACKAGE, pin_pkg, sizeof(pin_pkg));
    if (rc == NU_OK)
        rc = pg_ks_blob_put(c->hal, PG_BLOB_PIN_ROTPK, pin_rotpk, sizeof(pin_rotpk));
    if (rc == NU_OK)
        rc = pg_ks_blob_put(c->hal, PG_BLOB_IDENTITY_CERT, r.certificate.p, r.certificate.len);
    if (rc == NU_OK)
        rc = pg__pins_load(c);
    if (rc == NU_OK && !c->enrolled)
        rc = NU_ERR_INTERNAL;
    memset(e, 0, sizeof(*e));
    pg__log(c, rc ? PG_LOG_ERROR : PG_LOG_INFO, "enrollment of %s: %s", c->id, nu_err_name(rc));
    return rc;
}
