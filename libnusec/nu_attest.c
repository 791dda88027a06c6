/* nu_attest: programmer attestation statements and the stand-in vendor CA (nu_attest.h). */
#include "nu_attest.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_log.h"
#include "nu_util.h"
#include "nu_x509.h"

#include "nusec/v1/pki.pb-c.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Vendor certificates: backdated a day; the CA lives 20 years, a device 15
 * (both end before 2050, so X.509 UTCTime suffices). */
#define ATTEST__BACKDATE_S (24LL * 3600)
#define ATTEST__CA_LIFE_S (20LL * 365 * 24 * 3600)
#define ATTEST__DEV_LIFE_S (15LL * 365 * 24 * 3600)
#define ATTEST__VENDOR_O "NuLink3 vendor (stand-in)"

/* ---- statement ------------------------------------------------------------------ */

static int attest__id_ok(const char *s, size_t max)
{
    size_t n = s ? strnlen(s, max + 1) : 0;
    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

int nu_attest_encode(const struct nu_attest_claims *c, uint8_t *out, size_t cap, size_t *out_len)
{
    if (!c || !out || !out_len || !attest__id_ok(c->vendor_serial, NU_ATTEST_SERIAL_MAX) ||
        !attest__id_ok(c->programmer_id, NU_ATTEST_ID_MAX))
        return NU_ERR_INVALID_ARG;
    Nusec__V1__AttestationStatement st = NUSEC__V1__ATTESTATION_STATEMENT__INIT;
    st.format = NU_ATTEST_FORMAT;
    st.identity_pubkey = (ProtobufCBinaryData){NU_P256_PUB_LEN, (uint8_t *)c->identity_pub};
    st.package_pubkey = (ProtobufCBinaryData){NU_P256_PUB_LEN, (uint8_t *)c->package_pub};
    st.keys_generated_in_keystore = c->keys_generated_in_keystore ? 1 : 0;
    st.keys_non_exportable = c->keys_non_exportable ? 1 : 0;
    st.firmware_measurement =
        (ProtobufCBinaryData){NU_ATTEST_MEASUREMENT_LEN, (uint8_t *)c->measurement};
    st.vendor_serial = (char *)c->vendor_serial;
    st.nonce = (ProtobufCBinaryData){NU_ATTEST_NONCE_LEN, (uint8_t *)c->nonce};
    st.programmer_id = (char *)c->programmer_id;
    if (c->anchored)
        st.anchor_sha256 =
            (ProtobufCBinaryData){sizeof(c->anchor_sha256), (uint8_t *)c->anchor_sha256};
    size_t n = nusec__v1__attestation_statement__get_packed_size(&st);
    if (n > cap || n > NU_ATTEST_STMT_MAX)
        return NU_ERR_TOO_LARGE;
    *out_len = nusec__v1__attestation_statement__pack(&st, out);
    return NU_OK;
}

static int attest__bytes(const ProtobufCBinaryData *b, uint8_t *out, size_t len)
{
    if (b->len != len || !b->data)
        return NU_ERR_DECODE;
    memcpy(out, b->data, len);
    return NU_OK;
}

int nu_attest_decode(const uint8_t *stmt, size_t len, struct nu_attest_claims *out)
{
    if (!stmt || !out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    if (len > NU_ATTEST_STMT_MAX)
        return NU_ERR_TOO_LARGE;
    Nusec__V1__AttestationStatement *st = nusec__v1__attestation_statement__unpack(NULL, len, stmt);
    if (!st)
        return NU_ERR_DECODE;
    int rc = st->format == NU_ATTEST_FORMAT ? NU_OK : NU_ERR_DECODE;
    if (!rc)
        rc = attest__bytes(&st->identity_pubkey, out->identity_pub, NU_P256_PUB_LEN);
    if (!rc)
        rc = attest__bytes(&st->package_pubkey, out->package_pub, NU_P256_PUB_LEN);
    if (!rc)
        rc = attest__bytes(&st->firmware_measurement, out->measurement, NU_ATTEST_MEASUREMENT_LEN);
    if (!rc)
        rc = attest__bytes(&st->nonce, out->nonce, NU_ATTEST_NONCE_LEN);
    if (!rc && st->anchor_sha256.len) { /* absent: no anchor; else exactly a SHA-256 */
        out->anchored = 1;
        rc = attest__bytes(&st->anchor_sha256, out->anchor_sha256, sizeof(out->anchor_sha256));
    }
    if (!rc && (!attest__id_ok(st->vendor_serial, NU_ATTEST_SERIAL_MAX) ||
                !attest__id_ok(st->programmer_id, NU_ATTEST_ID_MAX)))
        rc = NU_ERR_DECODE;
    if (!rc) {
        strcpy(out->vendor_serial, st->vendor_serial);
        strcpy(out->programmer_id, st->programmer_id);
        out->keys_generated_in_keystore = st->keys_generated_in_keystore != 0;
        out->keys_non_exportable = st->keys_non_exportable != 0;
    }
    nusec__v1__attestation_statement__free_unpacked(st, NULL);
    /* One encoding only: what was signed is what the fields say. */
    uint8_t again[NU_ATTEST_STMT_MAX];
    size_t again_len = 0;
    if (!rc && (nu_attest_encode(out, again, sizeof(again), &again_len) != NU_OK ||
                again_len != len || memcmp(again, stmt, len) != 0))
        rc = NU_ERR_DECODE;
    if (rc)
        memset(out, 0, sizeof(*out));
    return rc;
}

int nu_attest_digest(const uint8_t *stmt, size_t len, uint8_t out[32])
{
    struct nu_sha256_ctx ctx;
    if (!stmt || !out)
        return NU_ERR_INVALID_ARG;
    int rc = nu_sha256_init(&ctx);
    if (rc)
        return rc;
    rc = nu_sha256_update(&ctx, NU_ATTEST_DOMAIN, sizeof(NU_ATTEST_DOMAIN)); /* with its NUL */
    if (!rc)
        rc = nu_sha256_update(&ctx, stmt, len);
    if (!rc)
        return nu_sha256_final(&ctx, out);
    nu_sha256_abort(&ctx);
    return rc;
}

int nu_attest_verify(const uint8_t *ca_der, size_t ca_len, const uint8_t *cert_der, size_t cert_len,
                     const uint8_t *stmt, size_t stmt_len, const uint8_t *sig, size_t sig_len,
                     struct nu_attest_claims *out)
{
    struct nu_x509_cert_info info;
    uint8_t digest[32];
    if (!ca_der || !out)
        return NU_ERR_INVALID_ARG;
    memset(out, 0, sizeof(*out));
    if (!cert_der || !cert_len || !stmt || !stmt_len || !sig || !sig_len)
        return NU_ERR_ATTESTATION_MISSING;
    int rc = nu_x509_verify_chain(cert_der, cert_len, NULL, 0, ca_der, ca_len);
    if (rc == NU_ERR_TOO_LARGE || rc == NU_ERR_NOMEM)
        return rc;
    if (!rc)
        rc = nu_x509_cert_info(cert_der, cert_len, &info);
    if (rc || info.is_ca)
        return NU_ERR_ATTESTATION_UNTRUSTED;
    rc = nu_attest_digest(stmt, stmt_len, digest);
    if (!rc && nu_p256_verify(info.pub, digest, sig, sig_len) != NU_OK)
        rc = NU_ERR_ATTESTATION_SIGNATURE;
    if (!rc)
        rc = nu_attest_decode(stmt, stmt_len, out);
    /* The certificate names the device; the statement must be about it. */
    if (!rc && strcmp(out->vendor_serial, info.cn) != 0)
        rc = NU_ERR_ATTESTATION_UNTRUSTED;
    if (rc)
        memset(out, 0, sizeof(*out));
    return rc;
}

/* ---- stand-in vendor CA ----------------------------------------------------------- */

static int attest__path(const char *vdir, const char *file, char *out, size_t cap)
{
    return nu_path_fmt(out, cap, "%s/%s", vdir, file);
}

int nu_attest_vendor_ca_init(const char *vdir)
{
    char cert_path[PATH_MAX], key_path[PATH_MAX];
    struct nu_p256_key *key = NULL;
    struct nu_signer signer;
    uint8_t *der = NULL;
    char *pem = NULL;
    size_t der_len = 0, pem_len = 0;
    if (!vdir)
        return NU_ERR_INVALID_ARG;
    int rc = attest__path(vdir, NU_ATTEST_VENDOR_CERT, cert_path, sizeof(cert_path));
    if (!rc)
        rc = attest__path(vdir, NU_ATTEST_VENDOR_KEY, key_path, sizeof(key_path));
    if (rc)
        return rc;
    if (nu_path_exists(cert_path) || nu_path_exists(key_path))
        return NU_ERR_EXISTS;
    rc = nu_mkdirs(vdir, 0700);
    if (!rc)
        rc = nu_p256_key_generate(&key);
    if (!rc)
        rc = nu_p256_key_signer(key, &signer);
    if (!rc) {
        int64_t now = (int64_t)(nu_time_ms() / 1000);
        struct nu_x509_issue_req req = {
            .cn = "NuLink3 Attestation CA",
            .o = ATTEST__VENDOR_O,
            .not_before = now - ATTEST__BACKDATE_S,
            .not_after = now + ATTEST__CA_LIFE_S,
            .is_ca = 1,
            .path_len = 0,
            .key_usage = NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN,
        };
        memcpy(req.pub, signer.pub, NU_P256_PUB_LEN);
        rc = nu_x509_issue(&req, &signer, NULL, 0, &der, &der_len);
    }
    if (!rc)
        rc = nu_x509_der_to_pem(der, der_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc)
        rc = nu_p256_key_save_pem(key, key_path);
    if (!rc)
        rc = nu_file_write_new(cert_path, pem, pem_len, 0644);
    nu_p256_key_destroy(key);
    free(der);
    free(pem);
    return rc;
}

int nu_attest_vendor_ca_cert(const char *vdir, uint8_t **out_der, size_t *out_len)
{
    char path[PATH_MAX];
    uint8_t *pem = NULL;
    size_t pem_len = 0;
    if (!vdir || !out_der || !out_len)
        return NU_ERR_INVALID_ARG;
    int rc = attest__path(vdir, NU_ATTEST_VENDOR_CERT, path, sizeof(path));
    if (!rc)
        rc = nu_file_read(path, NU_X509_PEM_MAX, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_pem_to_der((const char *)pem, pem_len, NU_X509_PEM_CERT, out_der, out_len,
                                NULL);
    free(pem);
    return rc;
}

int nu_attest_vendor_issue(const char *vdir, const uint8_t pub[NU_P256_PUB_LEN],
                           char out_serial[NU_ATTEST_SERIAL_MAX + 1], uint8_t **out_der,
                           size_t *out_len)
{
    char key_path[PATH_MAX], hex[13];
    uint8_t rnd[6], *ca = NULL;
    size_t ca_len = 0;
    struct nu_p256_key *key = NULL;
    struct nu_signer signer;
    if (!vdir || !pub || !out_serial || !out_der || !out_len)
        return NU_ERR_INVALID_ARG;
    int rc = attest__path(vdir, NU_ATTEST_VENDOR_KEY, key_path, sizeof(key_path));
    if (!rc)
        rc = nu_attest_vendor_ca_cert(vdir, &ca, &ca_len);
    if (!rc)
        rc = nu_p256_key_load_pem(key_path, &key);
    if (!rc)
        rc = nu_p256_key_signer(key, &signer);
    if (!rc)
        rc = nu_random(rnd, sizeof(rnd));
    if (!rc)
        rc = nu_hex_encode(rnd, sizeof(rnd), hex, sizeof(hex));
    if (!rc) {
        snprintf(out_serial, NU_ATTEST_SERIAL_MAX + 1, "NL3-%s", hex);
        int64_t now = (int64_t)(nu_time_ms() / 1000);
        struct nu_x509_issue_req req = {
            .cn = out_serial,
            .ou = "attestation",
            .o = ATTEST__VENDOR_O,
            .not_before = now - ATTEST__BACKDATE_S,
            .not_after = now + ATTEST__DEV_LIFE_S,
            .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        };
        memcpy(req.pub, pub, NU_P256_PUB_LEN);
        rc = nu_x509_issue(&req, &signer, ca, ca_len, out_der, out_len);
    }
    nu_p256_key_destroy(key);
    free(ca);
    return rc;
}
