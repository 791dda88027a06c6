/* cloud_fixture — see cloud_fixture.h. */
#include "cloud_fixture.h"
#include "nu_attest.h"
#include "nu_crypto.h"

#include "ledger.h"
#include "nu_client.h"
#include "nu_err.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void cf__sleep_ms(unsigned ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

int cf_client_open(const struct cf *f, const char *identity, const char *cert, const char *key,
                   struct cf_client *out)
{
    memset(out, 0, sizeof(*out));
    struct nu_client_opts o = {
        .dir = f->dir, .identity = identity, .cert_file = cert, .key_file = key, .clean_start = 1};
    int rc = nu_envelope_sender_create(identity, NU_ENVELOPE_SEQ_FROM_CLOCK, &out->sender);
    if (!rc)
        rc = nu_client_connect(&o, &out->m);
    if (rc)
        cf_client_close(out);
    return rc;
}

void cf_client_close(struct cf_client *c)
{
    if (c->m) {
        nu_mqtt_disconnect(c->m);
        nu_mqtt_destroy(c->m);
    }
    nu_envelope_sender_destroy(c->sender);
    memset(c, 0, sizeof(*c));
}

int cf_call(struct cf_client *c, const char *op, ProtobufCMessage *body, const uint8_t *idem,
            size_t idem_len, Nusec__V1__Envelope **out_reply, char *detail, size_t cap)
{
    char scratch[256];
    if (!detail) {
        detail = scratch;
        cap = sizeof(scratch);
    }
    return nu_client_request(c->m, c->sender, op, body, idem, idem_len,
                             c->timeout_ms ? c->timeout_ms : CF_TIMEOUT_MS, out_reply, detail, cap);
}

/* ------------------------------------------------------------ processes */

int cf_cloud_start(struct cf *f)
{
    char bin[CF_PATH_MAX];
    snprintf(bin, sizeof(bin), "%s/bin/nusec-cloud", NUSEC_BINARY_DIR);
    pid_t pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGTERM); /* a crashed test leaves no agent behind */
        execl(bin, "nusec-cloud", "--dir", f->dir, "--log", f->log, (char *)NULL);
        _exit(127);
    }
    f->cloud_pid = pid;
    /* A session of its own ("oem:probe"), so the tests' oem client is not taken over. */
    struct cf_client oem = {0};
    struct nu_client_opts o = {
        .dir = f->dir, .identity = "oem", .client_id = "oem:probe", .clean_start = 1};
    if (nu_envelope_sender_create("oem", NU_ENVELOPE_SEQ_FROM_CLOCK, &oem.sender) ||
        nu_client_connect(&o, &oem.m)) {
        cf_client_close(&oem);
        return -1;
    }
    int rc = -1;
    for (int i = 0; i < 200 && rc; i++) {
        Nusec__V1__ProgrammerListRequest body = NUSEC__V1__PROGRAMMER_LIST_REQUEST__INIT;
        Nusec__V1__Envelope *reply = NULL;
        rc = nu_client_request(oem.m, oem.sender, "programmer.list", &body.base, NULL, 0, 300,
                               &reply, NULL, 0);
        nu_envelope_free(reply);
        if (rc) {
            if (waitpid(pid, NULL, WNOHANG) == pid) {
                f->cloud_pid = 0;
                break;
            }
            cf__sleep_ms(50);
        }
    }
    cf_client_close(&oem);
    if (rc) {
        fprintf(stderr, "nusec-cloud did not answer; log:\n");
        nu_test_sh("tail -n 20 %s >&2", f->log);
    }
    return rc ? -1 : 0;
}

int cf_cloud_stop(struct cf *f)
{
    if (!f->cloud_pid)
        return -1;
    int status = 0, rc = -1;
    kill(f->cloud_pid, SIGTERM);
    for (int i = 0; i < 400; i++) {
        pid_t w = waitpid(f->cloud_pid, &status, WNOHANG);
        if (w == f->cloud_pid) {
            rc = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
            break;
        }
        cf__sleep_ms(50);
    }
    if (rc == -1 && waitpid(f->cloud_pid, &status, WNOHANG) == 0) {
        kill(f->cloud_pid, SIGKILL);
        waitpid(f->cloud_pid, &status, 0);
    }
    f->cloud_pid = 0;
    return rc;
}

void cf_cloud_kill(struct cf *f)
{
    if (!f->cloud_pid)
        return;
    kill(f->cloud_pid, SIGKILL);
    waitpid(f->cloud_pid, NULL, 0);
    f->cloud_pid = 0;
}

static int cf__attest_setup(struct cf *f);

int cf_setup(struct cf *f, const char *tag)
{
    char conf[CF_PATH_MAX + 32], blog[CF_PATH_MAX + 32], ep[CF_PATH_MAX + 32];
    uint8_t *text = NULL;
    size_t len = 0;
    int port = 0;
    memset(f, 0, sizeof(*f));
    if (nu_test_tmpdir(tag, f->tmp, sizeof(f->tmp)))
        return -1;
    snprintf(f->dir, sizeof(f->dir), "%s/state", f->tmp);
    snprintf(f->ledger, sizeof(f->ledger), "%s/cloud/ledger.db", f->dir);
    snprintf(f->log, sizeof(f->log), "%s/logs/cloud.log", f->dir);
    if (nu_test_sh("%s/bin/nusec pki init --dir %s >/dev/null", NUSEC_BINARY_DIR, f->dir))
        return -1;
    snprintf(conf, sizeof(conf), "%s/broker/mosquitto.conf", f->dir);
    snprintf(blog, sizeof(blog), "%s/broker/mosquitto.log", f->dir);
    snprintf(ep, sizeof(ep), "%s/broker/endpoint", f->dir);
    if (nu_file_read(ep, 64, &text, &len) || sscanf((char *)text, "127.0.0.1:%d", &port) != 1) {
        free(text);
        return -1;
    }
    free(text);
    if (bf_broker_start(&f->broker, conf, port, blog))
        return -1;
    if (cf_cloud_start(f))
        return -1;
    int rc = cf__attest_setup(f);
    if (rc)
        fprintf(stderr, "cloud fixture: attested programmer setup: %s\n", nu_err_name(rc));
    return rc ? -1 : 0;
}

void cf_teardown(struct cf *f)
{
    if (f->cloud_pid)
        cf_cloud_stop(f);
    bf_broker_stop(&f->broker);
    if (!getenv("CF_KEEP"))
        nu_test_rmtree(f->tmp);
}

/* ------------------------------------------------------------ enrollment */

int cf_token(struct cf_client *oem, const char *programmer_id, unsigned ttl_s, char *out,
             size_t cap)
{
    Nusec__V1__EnrollTokenRequest req = NUSEC__V1__ENROLL_TOKEN_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.programmer_id = (char *)programmer_id;
    req.ttl_s = ttl_s;
    int rc = cf_call(oem, "enroll.token", &req.base, NULL, 0, &reply, NULL, 0);
    if (!rc && reply->body_case != NUSEC__V1__ENVELOPE__BODY_ENROLL_TOKEN_RESPONSE)
        rc = NU_ERR_DECODE;
    if (!rc)
        snprintf(out, cap, "%s", reply->enroll_token_response->token);
    nu_envelope_free(reply);
    return rc;
}

/*
 * The genuine programmer the fixture plays: a software stand-in for a
 * factory-initialised KeyStore (attestation key certified by the vendor CA
 * in TMP/vendor, pinned as DIR/pki/vendor-ca.pem) running firmware whose
 * boot manifest the OEM signed (firmware.sign of CF_MEASUREMENT). One per
 * test process: the fixture runs one stack at a time.
 */
static struct {
    struct nu_p256_key *key, *other_key;
    uint8_t *cert, *other_cert, *manifest;
    size_t cert_len, other_cert_len, manifest_len;
    char serial[NU_ATTEST_SERIAL_MAX + 1];
    uint8_t anchor_sha256[32]; /* the cloud's package key, pinned as the OEM anchor */
} cf__att;

static const uint8_t CF__MEASUREMENT[32] = {0xc1, 0x0d, 0xf1, 0x78, 0x01};

const char *cf_vendor_serial(void)
{
    return cf__att.serial;
}

/* An attestation key certified by the vendor CA of vdir (made if absent). */
static int cf__vendor_device(const char *vdir, struct nu_p256_key **key, char *serial,
                             uint8_t **cert, size_t *cert_len)
{
    uint8_t pub[NU_P256_PUB_LEN];
    int rc = nu_path_exists(vdir) ? NU_OK : nu_attest_vendor_ca_init(vdir);
    if (!rc)
        rc = nu_p256_key_generate(key);
    if (!rc)
        rc = nu_p256_key_pub(*key, pub);
    return rc ? rc : nu_attest_vendor_issue(vdir, pub, serial, cert, cert_len);
}

/* The OEM anchor a programmer ships with: the cloud's package public key. */
static int cf__anchor(const struct cf *f)
{
    char path[CF_PATH_MAX + 32];
    uint8_t *pem = NULL, pub[NU_P256_PUB_LEN];
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/pki/package-key.pem", f->dir);
    int rc = nu_file_read(path, 65536, &pem, &len);
    if (!rc)
        rc = nu_p256_pub_from_pem((const char *)pem, len, pub);
    free(pem);
    return rc ? rc : nu_sha256(pub, sizeof(pub), cf__att.anchor_sha256);
}

static int cf__attest_setup(struct cf *f)
{
    char vdir[CF_PATH_MAX], other[CF_PATH_MAX], src[CF_PATH_MAX + 32], pin[CF_PATH_MAX];
    char other_serial[NU_ATTEST_SERIAL_MAX + 1];
    uint8_t *pem = NULL;
    size_t len = 0;
    struct cf_client oem;
    Nusec__V1__Envelope *reply = NULL;
    snprintf(vdir, sizeof(vdir), "%s/vendor", f->tmp);
    snprintf(other, sizeof(other), "%s/vendor-other", f->tmp);
    snprintf(src, sizeof(src), "%s/" NU_ATTEST_VENDOR_CERT, vdir);
    snprintf(pin, sizeof(pin), "%s/pki/vendor-ca.pem", f->dir);
    free(cf__att.cert), free(cf__att.other_cert), free(cf__att.manifest);
    nu_p256_key_destroy(cf__att.key), nu_p256_key_destroy(cf__att.other_key);
    memset(&cf__att, 0, sizeof(cf__att));
    int rc =
        cf__vendor_device(vdir, &cf__att.key, cf__att.serial, &cf__att.cert, &cf__att.cert_len);
    if (!rc)
        rc = cf__vendor_device(other, &cf__att.other_key, other_serial, &cf__att.other_cert,
                               &cf__att.other_cert_len);
    if (!rc)
        rc = nu_file_read(src, 65536, &pem, &len);
    if (!rc)
        rc = nu_file_write_atomic(pin, pem, len, 0644);
    free(pem);
    if (!rc)
        rc = cf__anchor(f);
    if (!rc)
        rc = cf_client_open(f, "oem", NULL, NULL, &oem);
    if (rc)
        return rc;
    Nusec__V1__FirmwareSignRequest req = NUSEC__V1__FIRMWARE_SIGN_REQUEST__INIT;
    req.name = "cf-programmer-fw";
    req.version = "1.0.0";
    req.payload = (ProtobufCBinaryData){sizeof(CF__MEASUREMENT), (uint8_t *)CF__MEASUREMENT};
    rc = cf_call(&oem, "firmware.sign", &req.base, NULL, 0, &reply, NULL, 0);
    if (!rc && reply->body_case != NUSEC__V1__ENVELOPE__BODY_FIRMWARE_SIGN_RESPONSE)
        rc = NU_ERR_DECODE;
    if (!rc && !(cf__att.manifest = malloc(reply->firmware_sign_response->image.len)))
        rc = NU_ERR_NOMEM;
    if (!rc) {
        cf__att.manifest_len = reply->firmware_sign_response->image.len;
        memcpy(cf__att.manifest, reply->firmware_sign_response->image.data, cf__att.manifest_len);
    }
    nu_envelope_free(reply);
    cf_client_close(&oem);
    return rc;
}

int cf_challenge(struct cf_client *relay, const char *id, const char *token, uint8_t nonce[32])
{
    Nusec__V1__EnrollChallengeRequest req = NUSEC__V1__ENROLL_CHALLENGE_REQUEST__INIT;
    Nusec__V1__Envelope *reply = NULL;
    req.programmer_id = (char *)id;
    req.token = (char *)token;
    int rc = cf_call(relay, "enroll.challenge", &req.base, NULL, 0, &reply, NULL, 0);
    if (!rc && (reply->body_case != NUSEC__V1__ENVELOPE__BODY_ENROLL_CHALLENGE ||
                reply->enroll_challenge->nonce.len != 32))
        rc = NU_ERR_DECODE;
    if (!rc)
        memcpy(nonce, reply->enroll_challenge->nonce.data, 32);
    nu_envelope_free(reply);
    return rc;
}

/* What the KeyStore would sign, with the test's faults. */
static int cf__statement(const char *id, struct nu_p256_key *identity, const uint8_t *pkg_pub,
                         const struct cf_attest *a, const uint8_t nonce[32], uint8_t *stmt,
                         size_t *stmt_len, uint8_t *sig, size_t *sig_len)
{
    struct nu_attest_claims c;
    uint8_t digest[32];
    memset(&c, 0, sizeof(c));
    int rc = nu_p256_key_pub(identity, c.identity_pub);
    if (rc)
        return rc;
    if (a && a->identity_pub)
        memcpy(c.identity_pub, a->identity_pub, NU_P256_PUB_LEN);
    memcpy(c.package_pub, pkg_pub, NU_P256_PUB_LEN);
    c.keys_generated_in_keystore = c.keys_non_exportable = 1;
    memcpy(c.measurement, a && a->measurement ? a->measurement : CF__MEASUREMENT, 32);
    snprintf(c.vendor_serial, sizeof(c.vendor_serial), "%s", cf__att.serial);
    memcpy(c.nonce, nonce, 32);
    snprintf(c.programmer_id, sizeof(c.programmer_id), "%s", id);
    if (!a || !a->unanchored) {
        c.anchored = 1;
        memcpy(c.anchor_sha256, a && a->anchor_sha256 ? a->anchor_sha256 : cf__att.anchor_sha256,
               32);
    }
    rc = nu_attest_encode(&c, stmt, NU_ATTEST_STMT_MAX, stmt_len);
    if (!rc)
        rc = nu_attest_digest(stmt, *stmt_len, digest);
    if (!rc)
        rc = nu_p256_key_sign_digest(a && a->other_vendor ? cf__att.other_key : cf__att.key, digest,
                                     sig, sig_len);
    if (!rc && a && a->bad_signature)
        sig[*sig_len - 1] ^= 0x01;
    return rc;
}

int cf_enroll_raw(struct cf_client *relay, const char *id, const char *token,
                  struct nu_p256_key *identity, const char *cn, const char *ou,
                  const uint8_t *pkg_pub, Nusec__V1__Envelope **out_reply)
{
    return cf_enroll_attested(relay, id, token, identity, cn, ou, pkg_pub, NULL, out_reply);
}

int cf_enroll_attested(struct cf_client *relay, const char *id, const char *token,
                       struct nu_p256_key *identity, const char *cn, const char *ou,
                       const uint8_t *pkg_pub, struct cf_attest *a, Nusec__V1__Envelope **out_reply)
{
    struct nu_signer s;
    uint8_t *csr = NULL, nonce[32], stmt[NU_ATTEST_STMT_MAX], sig[NU_P256_SIG_MAX];
    size_t csr_len = 0, stmt_len = 0, sig_len = sizeof(sig);
    int none = a && a->none;
    int rc = nu_p256_key_signer(identity, &s);
    if (!rc)
        rc = nu_x509_csr_make(&s, cn, ou, "NuSEC", &csr, &csr_len);
    if (!rc && !none && a && a->nonce)
        memcpy(nonce, a->nonce, 32);
    else if (!rc && !none)
        rc = cf_challenge(relay, id, token, nonce);
    if (!rc && !none)
        rc = cf__statement(id, identity, pkg_pub, a, nonce, stmt, &stmt_len, sig, &sig_len);
    if (!rc && a && !none)
        memcpy(a->used_nonce, nonce, 32);
    if (rc) {
        free(csr);
        return rc;
    }
    Nusec__V1__EnrollRequest req = NUSEC__V1__ENROLL_REQUEST__INIT;
    req.programmer_id = (char *)id;
    req.token = (char *)token;
    req.csr_der.data = csr;
    req.csr_der.len = csr_len;
    req.package_pubkey.data = (uint8_t *)pkg_pub;
    req.package_pubkey.len = NU_P256_PUB_LEN;
    if (!none) {
        req.attestation_statement = (ProtobufCBinaryData){stmt_len, stmt};
        req.attestation_signature = (ProtobufCBinaryData){sig_len, sig};
        req.attestation_cert_der =
            a && a->other_vendor ? (ProtobufCBinaryData){cf__att.other_cert_len, cf__att.other_cert}
                                 : (ProtobufCBinaryData){cf__att.cert_len, cf__att.cert};
        if (!(a && a->no_manifest))
            req.boot_manifest = (ProtobufCBinaryData){cf__att.manifest_len, cf__att.manifest};
    }
    rc = cf_call(relay, "enroll", &req.base, NULL, 0, out_reply, NULL, 0);
    if (!rc && (*out_reply)->body_case != NUSEC__V1__ENVELOPE__BODY_ENROLL_RESPONSE) {
        nu_envelope_free(*out_reply);
        *out_reply = NULL;
        rc = NU_ERR_DECODE;
    }
    free(csr);
    return rc;
}

int cf_write_cert_pem(const char *path, const uint8_t *der, size_t len)
{
    char *pem = NULL;
    size_t pem_len = 0;
    int rc = nu_x509_der_to_pem(der, len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc)
        rc = nu_file_write_atomic(path, pem, pem_len, 0644);
    free(pem);
    return rc;
}

int cf_programmer_make(const struct cf *f, struct cf_client *oem, struct cf_client *station,
                       const char *id, struct cf_programmer *out)
{
    char token[160];
    uint8_t pkg_pub[NU_P256_PUB_LEN];
    Nusec__V1__Envelope *reply = NULL;
    memset(out, 0, sizeof(*out));
    snprintf(out->id, sizeof(out->id), "%s", id);
    snprintf(out->cert, sizeof(out->cert), "%s/%s.crt", f->tmp, id);
    snprintf(out->key, sizeof(out->key), "%s/%s.key", f->tmp, id);
    int rc = nu_p256_key_generate(&out->identity);
    if (!rc)
        rc = nu_p256_key_generate(&out->package);
    if (!rc)
        rc = nu_p256_key_pub(out->package, pkg_pub);
    if (!rc)
        rc = cf_token(oem, id, 0, token, sizeof(token));
    if (!rc)
        rc = cf_enroll_raw(station, id, token, out->identity, id, "programmer", pkg_pub, &reply);
    if (!rc)
        rc = cf_write_cert_pem(out->cert, reply->enroll_response->certificate_der.data,
                               reply->enroll_response->certificate_der.len);
    if (!rc)
        rc = nu_p256_key_save_pem(out->identity, out->key);
    nu_envelope_free(reply);
    return rc;
}

void cf_programmer_free(struct cf_programmer *p)
{
    nu_p256_key_destroy(p->identity);
    nu_p256_key_destroy(p->package);
    p->identity = p->package = NULL;
}

/* ------------------------------------------------------------ jobs, devices */

int cf_job_create_ex(const struct cf *f, const char *job, uint32_t quota, const char *const *progs,
                     const uint32_t *limits, size_t n, uint64_t expires_at_ms,
                     const char *subject_template)
{
    struct cloud_ledger *l = NULL;
    struct cloud_ledger_alloc *alloc = calloc(n ? n : 1, sizeof(*alloc));
    int rc = alloc ? cloud_ledger_open(f->ledger, &l) : NU_ERR_NOMEM;
    for (size_t i = 0; !rc && i < n; i++) {
        snprintf(alloc[i].programmer_id, sizeof(alloc[i].programmer_id), "%s", progs[i]);
        alloc[i].limit = limits[i];
    }
    struct cloud_ledger_job_spec spec = {
        .job_id = job,
        .firmware = "app-1.0.0",
        .subject_template = subject_template,
        .quota = quota,
        .expires_at_ms = expires_at_ms,
        .alloc = alloc,
        .n_alloc = n,
        .actor = "oem",
        .now_ms = nu_time_ms(),
    };
    if (!rc)
        rc = cloud_ledger_job_create(l, &spec);
    cloud_ledger_close(l);
    free(alloc);
    return rc;
}

int cf_job_create(const struct cf *f, const char *job, uint32_t quota, const char *const *progs,
                  const uint32_t *limits, size_t n)
{
    return cf_job_create_ex(f, job, quota, progs, limits, n, 0, NULL);
}

int cf_job_control(const struct cf *f, const char *job, int action)
{
    struct cloud_ledger *l = NULL;
    int rc = cloud_ledger_open(f->ledger, &l);
    if (!rc)
        rc = cloud_ledger_job_control(l, job, (enum cloud_ledger_job_action)action, "oem",
                                      nu_time_ms(), NULL);
    cloud_ledger_close(l);
    return rc;
}

int cf_device_csr(struct nu_p256_key **out_key, uint8_t **out_csr, size_t *out_len)
{
    struct nu_signer s;
    int rc = nu_p256_key_generate(out_key);
    if (!rc)
        rc = nu_p256_key_signer(*out_key, &s);
    if (!rc)
        rc = nu_x509_csr_make(&s, "device", NULL, NULL, out_csr, out_len);
    return rc;
}

void cf_cert_key(const char *job, const uint8_t *uid, size_t uid_len, uint8_t out[16])
{
    static const char domain[] = "nusec/v1 cert";
    uint8_t buf[256], digest[32];
    size_t n = 0;
    memcpy(buf, domain, sizeof(domain) - 1);
    n += sizeof(domain) - 1;
    memcpy(buf + n, job, strlen(job));
    n += strlen(job);
    memcpy(buf + n, uid, uid_len);
    n += uid_len;
    nu_sha256(buf, n, digest);
    memcpy(out, digest, 16);
}

int cf_cert_request(struct cf_client *c, const char *job, const uint8_t *uid, size_t uid_len,
                    const uint8_t *csr, size_t csr_len, const uint8_t *key, size_t key_len,
                    Nusec__V1__Envelope **out_reply)
{
    uint8_t k[16];
    if (!key) {
        cf_cert_key(job, uid, uid_len, k);
        key = k;
        key_len = sizeof(k);
    }
    Nusec__V1__CertificateRequest req = NUSEC__V1__CERTIFICATE_REQUEST__INIT;
    req.job_id = (char *)job;
    req.device_uid.data = (uint8_t *)uid;
    req.device_uid.len = uid_len;
    req.csr_der.data = (uint8_t *)csr;
    req.csr_der.len = csr_len;
    int rc = cf_call(c, "cert.request", &req.base, key, key_len, out_reply, NULL, 0);
    if (!rc && (*out_reply)->body_case != NUSEC__V1__ENVELOPE__BODY_CERTIFICATE_ISSUED) {
        nu_envelope_free(*out_reply);
        *out_reply = NULL;
        rc = NU_ERR_DECODE;
    }
    return rc;
}

double cf_cpu_s(pid_t pid)
{
    char path[64], buf[1024];
    unsigned long ut = 0, st = 0;
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;
    if (f)
        fclose(f);
    buf[n] = 0;
    const char *p = strrchr(buf, ')'); /* the command name may hold spaces */
    if (!p || sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}
