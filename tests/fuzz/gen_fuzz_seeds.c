/*
 * gen_fuzz_seeds — write the seed corpora of the fuzz targets that need
 * structured, signed or sealed inputs into DIR/<target>/ (DIR is
 * tests/fuzz/seeds). Run from build-fuzz: `bin/gen_fuzz_seeds ../tests/fuzz/seeds`.
 * Keys are the test vectors of fuzz_keys.h and tests/vectors/seal, or
 * fresh throwaway keys: no real key is ever involved.
 */
#include "fuzz_keys.h"
#include "nu_crypto.h"
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_mcuboot.h"
#include "nu_seal.h"
#include "nu_util.h"
#include "nu_x509.h"

#include "nusec/v1/envelope.pb-c.h"
#include "nusec/v1/job.pb-c.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static const char *root;

static void die(const char *what, int rc)
{
    fprintf(stderr, "gen_fuzz_seeds: %s: %s\n", what, nu_err_name(rc));
    exit(1);
}

/* DIR/target/name = prefix[plen] || data[len]. */
static void put(const char *target, const char *name, const void *prefix, size_t plen,
                const void *data, size_t len)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", root, target);
    if (mkdir(path, 0755) != 0 && errno != EEXIST)
        die(path, NU_ERR_IO);
    snprintf(path, sizeof(path), "%s/%s/%s", root, target, name);
    FILE *f = fopen(path, "wb");
    if (!f || (plen && fwrite(prefix, 1, plen, f) != plen) ||
        (len && fwrite(data, 1, len, f) != len) || fclose(f) != 0)
        die(path, NU_ERR_IO);
}

static struct nu_p256_key *key_from_hex(const char *hex)
{
    uint8_t d[NU_P256_PRIV_LEN];
    size_t n = 0;
    struct nu_p256_key *k = NULL;
    int rc = nu_hex_decode(hex, d, sizeof(d), &n);
    if (rc || (rc = nu_p256_key_import_priv(d, &k)))
        die("key", rc);
    return k;
}

static uint8_t *pack(const ProtobufCMessage *m, size_t *len)
{
    *len = protobuf_c_message_get_packed_size(m);
    uint8_t *b = malloc(*len + 1);
    if (!b)
        die("pack", NU_ERR_NOMEM);
    protobuf_c_message_pack(m, b);
    return b;
}

static uint8_t *envelope(const char *sender, ProtobufCMessage *body, size_t *len)
{
    struct nu_envelope_sender *s = NULL;
    struct nu_envelope_frame fr;
    const char *why = NULL;
    uint8_t *out = NULL;
    int rc = nu_envelope_sender_create(sender, 1, &s);
    if (!rc)
        rc = nu_envelope_frame_init(&fr, s, body);
    if (!rc)
        rc = nu_envelope_pack(&fr.env, &out, len, &why);
    if (rc)
        die(why ? why : "envelope", rc);
    nu_envelope_sender_destroy(s);
    return out;
}

static void gen_seal(void)
{
    static const uint8_t aad[] = "package summary v1";
    struct nu_p256_key *k = key_from_hex("1e224a010ede796cc7d2c374ef7de499dded8cbf9d90485eaa1baad5"
                                         "4c0e6f54");
    uint8_t pub[NU_P256_PUB_LEN], *box = NULL, al = sizeof(aad) - 1, zero = 0;
    size_t len = 0;
    nu_p256_key_pub(k, pub);
    int rc = nu_seal(pub, aad, al, (const uint8_t *)"hello, programmer", 17, &box, &len);
    if (rc)
        die("seal", rc);
    uint8_t *in = malloc(1 + al + len);
    in[0] = al;
    memcpy(in + 1, aad, al);
    memcpy(in + 1 + al, box, len);
    put("fuzz_seal", "basic.bin", NULL, 0, in, 1 + al + len);
    free(box);
    if ((rc = nu_seal(pub, NULL, 0, NULL, 0, &box, &len)))
        die("seal", rc);
    put("fuzz_seal", "empty.bin", &zero, 1, box, len);
    free(box);
    free(in);
    nu_p256_key_destroy(k);
}

static void gen_package(void)
{
    Nusec__V1__PackageSummary sum = NUSEC__V1__PACKAGE_SUMMARY__INIT;
    Nusec__V1__PackageSecrets sec = NUSEC__V1__PACKAGE_SECRETS__INIT;
    Nusec__V1__SealedPackage sp = NUSEC__V1__SEALED_PACKAGE__INIT;
    uint8_t pid[16] = {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16}, key32[32] = {7};
    uint8_t cert[300] = {0x30, 0x82, 0x01, 0x28}, digest[32], sig[NU_P256_SIG_MAX], pub[65];
    ProtobufCBinaryData chain[2] = {{sizeof(cert), cert}, {sizeof(cert), cert}};
    size_t sum_len, sec_len, box_len = 0, sig_len = sizeof(sig), len;
    struct nu_p256_key *k = NULL;
    uint8_t *box = NULL;

    sum.job_id = "job-1";
    sum.programmer_id = "prog-1";
    sum.limit = 100;
    sum.expires_at_ms = 4102444800000ull;
    sum.created_at_ms = 1700000000000ull;
    sum.firmware = "app-1.2.3";
    sum.format = 1;
    sum.package_id = (ProtobufCBinaryData){16, pid};
    sec.job_id = "job-1";
    sec.limit = 100;
    sec.firmware_token = (ProtobufCBinaryData){16, pid};
    sec.firmware_key = (ProtobufCBinaryData){32, key32};
    sec.rotpk_hash = (ProtobufCBinaryData){32, key32};
    sec.firmware_digest = (ProtobufCBinaryData){32, key32};
    sec.n_device_chain_der = 2;
    sec.device_chain_der = chain;
    sec.expires_at_ms = sum.expires_at_ms;
    sec.firmware_size = 40000;
    uint8_t *sum_buf = pack(&sum.base, &sum_len), *sec_buf = pack(&sec.base, &sec_len);
    int rc = nu_p256_key_generate(&k);
    if (!rc)
        rc = nu_p256_key_pub(k, pub);
    if (!rc)
        rc = nu_seal(pub, sum_buf, sum_len, sec_buf, sec_len, &box, &box_len);
    struct nu_sha256_ctx h;
    if (!rc && !(rc = nu_sha256_init(&h)) && !(rc = nu_sha256_update(&h, sum_buf, sum_len)) &&
        !(rc = nu_sha256_update(&h, box, box_len)))
        rc = nu_sha256_final(&h, digest);
    if (!rc)
        rc = nu_p256_key_sign_digest(k, digest, sig, &sig_len);
    if (rc)
        die("package", rc);
    sp.summary = (ProtobufCBinaryData){sum_len, sum_buf};
    sp.sealed = (ProtobufCBinaryData){box_len, box};
    sp.signature = (ProtobufCBinaryData){sig_len, sig};
    uint8_t *pkg = pack(&sp.base, &len);
    put("fuzz_package", "package.nspkg", NULL, 0, pkg, len);
    put("fuzz_package", "secrets.bin", NULL, 0, sec_buf, sec_len);
    put("fuzz_package", "summary.bin", NULL, 0, sum_buf, sum_len);
    free(pkg);
    free(box);
    free(sum_buf);
    free(sec_buf);
    nu_p256_key_destroy(k);
}

/* A CSR and a self-signed certificate, DER and PEM; returns the CSR. */
static uint8_t *gen_csr(size_t *csr_len, uint8_t out_pkg_pub[65])
{
    struct nu_p256_key *k = NULL, *pk = NULL;
    struct nu_signer s;
    uint8_t *csr = NULL, *cert = NULL, sel;
    size_t cert_len = 0, pem_len = 0;
    char *pem = NULL;
    int rc = nu_p256_key_generate(&k);
    if (!rc)
        rc = nu_p256_key_signer(k, &s);
    if (!rc)
        rc = nu_x509_csr_make(&s, "prog-1", "programmer", "NuSEC", &csr, csr_len);
    struct nu_x509_issue_req req = {.cn = "fuzz root", .o = "NuSEC", .not_before = 1700000000,
                                    .not_after = 4102444800, .is_ca = 1, .path_len = 0,
                                    .key_usage = NU_X509_KU_KEY_CERT_SIGN};
    memcpy(req.pub, s.pub, sizeof(req.pub));
    if (!rc)
        rc = nu_x509_issue(&req, &s, NULL, 0, &cert, &cert_len);
    if (rc)
        die("x509", rc);
    sel = 0;
    put("fuzz_csr", "csr.der", &sel, 1, csr, *csr_len);
    sel = 1;
    put("fuzz_csr", "cert.der", &sel, 1, cert, cert_len);
    if ((rc = nu_x509_der_to_pem(csr, *csr_len, NU_X509_PEM_CSR, &pem, &pem_len)))
        die("pem", rc);
    sel = 2;
    put("fuzz_csr", "csr.pem", &sel, 1, pem, pem_len);
    free(pem);
    if ((rc = nu_x509_der_to_pem(cert, cert_len, NU_X509_PEM_CERT, &pem, &pem_len)))
        die("pem", rc);
    sel = 3;
    put("fuzz_csr", "cert.pem", &sel, 1, pem, pem_len);
    free(pem);
    free(cert);
    if (nu_p256_key_generate(&pk) || nu_p256_key_pub(pk, out_pkg_pub))
        die("key", NU_ERR_CRYPTO);
    nu_p256_key_destroy(pk);
    nu_p256_key_destroy(k);
    return csr;
}

static void gen_enroll(const uint8_t *csr, size_t csr_len, const uint8_t pkg_pub[65])
{
    Nusec__V1__EnrollRequest er = NUSEC__V1__ENROLL_REQUEST__INIT;
    uint8_t fw[32] = {0x42}, sel = 0;
    size_t len = 0;
    er.programmer_id = "prog-1";
    er.token = "00112233445566778899aabbccddeeff00112233445566778899aabbccddeeff";
    er.csr_der = (ProtobufCBinaryData){csr_len, (uint8_t *)csr};
    er.package_pubkey = (ProtobufCBinaryData){65, (uint8_t *)pkg_pub};
    er.firmware_hash = (ProtobufCBinaryData){32, fw};
    uint8_t *env = envelope("station-1", &er.base, &len);
    put("fuzz_enroll", "relayed.bin", &sel, 1, env, len);
    put("fuzz_pg_pb", "env_enroll.bin", (uint8_t[]){8}, 1, env, len);
    free(env);
    sel = 1;
    env = envelope("prog-1", &er.base, &len);
    put("fuzz_enroll", "self.bin", &sel, 1, env, len);
    free(env);
}

static void gen_mcuboot(void)
{
    struct nu_p256_key *k = key_from_hex(FUZZ_TEST_SECURE_BOOT_PRIV);
    struct nu_signer s;
    struct nu_mcuboot_version v = {1, 2, 3, 4};
    uint8_t payload[200], *img = NULL, sel;
    size_t len = 0;
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 7);
    int rc = nu_p256_key_signer(k, &s);
    if (!rc)
        rc = nu_mcuboot_sign(payload, sizeof(payload), &v, 5, 0x20000000, &s, &img, &len);
    if (rc)
        die("mcuboot", rc);
    sel = 0x07;
    put("fuzz_mcuboot", "signed.img", &sel, 1, img, len);
    sel = 0x80;
    put("fuzz_mcuboot", "version.txt", &sel, 1, "1.2.3+4", 7);
    sel = 0;
    put("fuzz_tsim", "signed.img", &sel, 1, img, len);
    free(img);
    if ((rc = nu_mcuboot_sign(payload, 1, &v, 0, 0, &s, &img, &len)))
        die("mcuboot", rc);
    sel = 0x21;
    put("fuzz_mcuboot", "tiny.img", &sel, 1, img, len);
    free(img);
    nu_p256_key_destroy(k);
}

static void gen_text(void)
{
    static const char ihex[] = ":020000040800F2\n"
                               ":10000000000102030405060708090A0B0C0D0E0F78\n"
                               ":0400100010111213A6\n"
                               ":0400000508000101ED\n"
                               ":00000001FF\n";
    static const char seg[] = ":020000021000EC\r\n:03FFFD00AABBCCD0\r\n:00000001FF\r\n";
    put("fuzz_ihex", "linear.hex", NULL, 0, ihex, strlen(ihex));
    put("fuzz_ihex", "segment.hex", NULL, 0, seg, strlen(seg));
    static const char revoked[] = "\x00# revoked programmers\nprog-7\n  prog-9\t\r\n\nstation-x\n";
    static const char owners[] = "\x01# station programmer\nstation-1 prog-1\nstation-1\tprog-2\n";
    static const char check[] = "\x02\x00\x02"
                                "prog-1\0nusec/v1/cloud/req/prog-1/cert.request";
    static const char sub[] = "\x02\x02\x04"
                              "station-1\0nusec/v1/events/programmer/+/#";
    static const char pub[] = "\x82\x05\x03"
                              "prog-1\0nusec/v1/prog/prog-1/status";
    static const char client[] = "\x03prog-1\0prog-1:sock\x01\xff";
    put("fuzz_acl", "revoked.txt", NULL, 0, revoked, sizeof(revoked) - 1);
    put("fuzz_acl", "owners.txt", NULL, 0, owners, sizeof(owners) - 1);
    put("fuzz_acl", "check.bin", NULL, 0, check, sizeof(check) - 1);
    put("fuzz_acl", "subscribe.bin", NULL, 0, sub, sizeof(sub) - 1);
    put("fuzz_acl", "status.bin", NULL, 0, pub, sizeof(pub) - 1);
    put("fuzz_acl", "client.bin", NULL, 0, client, sizeof(client) - 1);
}

static void gen_tsim_state(void)
{
    uint8_t d[32], pub[65], hash[32];
    size_t n = 0;
    char hex[65], text[600];
    struct nu_p256_key *k = NULL;
    if (nu_hex_decode(FUZZ_TEST_SECURE_BOOT_PRIV, d, sizeof(d), &n) ||
        nu_p256_key_import_priv(d, &k) || nu_p256_key_pub(k, pub) ||
        nu_mcuboot_rotpk_hash(pub, hash) || nu_hex_encode(hash, 32, hex, sizeof(hex)))
        die("tsim", NU_ERR_CRYPTO);
    int len = snprintf(text, sizeof(text),
                       "\x01state=otp_written\nuid=f0220102030405060708090a0b0c0d0e\n"
                       "otp_rotpk_hash=%s\notp_security_counter=3\npubkey=\nboot_key=\n"
                       "programmed=0\nboot=none\nlocked=0\nupdated_ms=1700000000000\n",
                       hex);
    put("fuzz_tsim", "state.txt", NULL, 0, text, (size_t)len);
    nu_p256_key_destroy(k);
}

int main(int argc, char **argv)
{
    uint8_t pkg_pub[65];
    size_t csr_len = 0;
    if (argc != 2) {
        fprintf(stderr, "usage: gen_fuzz_seeds SEEDS_DIR\n");
        return 2;
    }
    root = argv[1];
    gen_seal();
    gen_package();
    uint8_t *csr = gen_csr(&csr_len, pkg_pub);
    gen_enroll(csr, csr_len, pkg_pub);
    free(csr);
    gen_mcuboot();
    gen_text();
    gen_tsim_state();
    return 0;
}
