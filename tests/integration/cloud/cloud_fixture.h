/*
 * cloud_fixture — a whole local stack for cloud-agent integration tests:
 * a temporary state directory made by `nusec pki init`, the real mosquitto
 * with the nusec_auth plugin (broker_fixture), the real `nusec-cloud` binary
 * (fork/exec, SoftHSM2 keys), and libnusec clients for every role.
 *
 * Helpers return NU_OK / NU_ERR_* (a cloud refusal is its code) unless said.
 */
#ifndef CLOUD_FIXTURE_H
#define CLOUD_FIXTURE_H

#include "broker_fixture.h"
#include "nu_crypto.h"
#include "nu_envelope.h"
#include "nu_mqtt.h"

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#define CF_PATH_MAX 512
#define CF_TIMEOUT_MS 15000u

struct cf {
    char tmp[256];
    char dir[300];            /* the state directory (DIR) */
    char ledger[CF_PATH_MAX]; /* DIR/cloud/ledger.db */
    char log[CF_PATH_MAX];    /* DIR/logs/cloud.log */
    struct bf_broker broker;
    pid_t cloud_pid;
};

/* pki init + broker + nusec-cloud (answering). 0 or -1 (reason printed). */
int cf_setup(struct cf *f, const char *tag);
/* Stop everything, remove the folder. */
void cf_teardown(struct cf *f);

/* Start nusec-cloud and wait until it answers (programmer.list as oem). 0 / -1. */
int cf_cloud_start(struct cf *f);
/* SIGTERM, wait up to 20 s (then SIGKILL). Returns the exit status, or -1
 * if it did not exit by itself or died of a signal. */
int cf_cloud_stop(struct cf *f);
/* SIGKILL (a crash at any point) and reap. */
void cf_cloud_kill(struct cf *f);

/* A bus client: a role identity of DIR (cert NULL) or given cert/key files. */
struct cf_client {
    struct nu_mqtt *m;
    struct nu_envelope_sender *sender;
    unsigned timeout_ms; /* per request; 0 = CF_TIMEOUT_MS */
};

int cf_client_open(const struct cf *f, const char *identity, const char *cert, const char *key,
                   struct cf_client *out);
void cf_client_close(struct cf_client *c);

/* nu_client_request with the fixture's timeout; idem NULL = fresh key. */
int cf_call(struct cf_client *c, const char *op, ProtobufCMessage *body, const uint8_t *idem,
            size_t idem_len, Nusec__V1__Envelope **out_reply, char *detail, size_t cap);

/* enroll.token as `oem`: the hex token into out[cap]. */
int cf_token(struct cf_client *oem, const char *programmer_id, unsigned ttl_s, char *out,
             size_t cap);

/* An enrolled programmer: its identity key, and its certificate and key as
 * files (DIR/../ID.crt, ID.key) for cf_client_open. */
struct cf_programmer {
    char id[65];
    char cert[CF_PATH_MAX];
    char key[CF_PATH_MAX];
    struct nu_p256_key *identity;
    struct nu_p256_key *package;
};

/*
 * enroll as `relay` (station) for `id` with `token`, a CSR of `identity`
 * (CN = cn, OU = ou) and package key `pkg_pub` (65 bytes). On NU_OK
 * *out_reply (nu_envelope_free) is the answer.
 */
int cf_enroll_raw(struct cf_client *relay, const char *id, const char *token,
                  struct nu_p256_key *identity, const char *cn, const char *ou,
                  const uint8_t *pkg_pub, Nusec__V1__Envelope **out_reply);

/*
 * The attested enrollment cf_enroll_raw performs, as a genuine programmer
 * (enroll.challenge, then a statement signed by a vendor-certified
 * attestation key, with the boot manifest the OEM signed in cf_setup), with
 * faults a test asks for. a NULL = genuine.
 */
struct cf_attest {
    int none;                    /* no attestation at all: a CSR made by a script */
    int other_vendor;            /* attestation key certified by another vendor CA */
    int bad_signature;           /* the statement's signature corrupted */
    int no_manifest;             /* no boot manifest */
    const uint8_t *nonce;        /* cover this nonce instead of asking for a challenge */
    const uint8_t *identity_pub; /* attest this identity key, not the CSR's */
    const uint8_t *measurement;  /* attest this measurement, not the approved one */
    int unanchored;              /* no OEM anchor in the KeyStore (by default the cloud's) */
    const uint8_t *anchor_sha256; /* attest this anchor, not the cloud's package key */
    uint8_t used_nonce[32];       /* out: the nonce the statement covered */
};
int cf_enroll_attested(struct cf_client *relay, const char *id, const char *token,
                       struct nu_p256_key *identity, const char *cn, const char *ou,
                       const uint8_t *pkg_pub, struct cf_attest *a,
                       Nusec__V1__Envelope **out_reply);

/* enroll.challenge for id with token: the nonce. */
int cf_challenge(struct cf_client *relay, const char *id, const char *token, uint8_t nonce[32]);

/* The vendor serial of the fixture's genuine programmer KeyStore. */
const char *cf_vendor_serial(void);

/* token (oem) + enroll (station) + files. Free with cf_programmer_free. */
int cf_programmer_make(const struct cf *f, struct cf_client *oem, struct cf_client *station,
                       const char *id, struct cf_programmer *out);
void cf_programmer_free(struct cf_programmer *p);

/* A job straight in the ledger file (the running cloud shares it through
 * WAL): allocations progs[i] with limits[i]. */
int cf_job_create(const struct cf *f, const char *job, uint32_t quota, const char *const *progs,
                  const uint32_t *limits, size_t n);

/* The same with an expiry (Unix ms, 0 = none) and a subject template (NULL = none). */
int cf_job_create_ex(const struct cf *f, const char *job, uint32_t quota, const char *const *progs,
                     const uint32_t *limits, size_t n, uint64_t expires_at_ms,
                     const char *subject_template);

/* Pause (1), resume (2) or close (3) a job in the ledger file. */
int cf_job_control(const struct cf *f, const char *job, int action);

/* A device: fresh software key and its CSR (DER, malloc). */
int cf_device_csr(struct nu_p256_key **out_key, uint8_t **out_csr, size_t *out_len);

/* CPU seconds (user + system) process `pid` has used so far, from /proc; 0 if unknown. */
double cf_cpu_s(pid_t pid);

/* The cert.request idempotency key of proto/README.md (16 bytes). */
void cf_cert_key(const char *job, const uint8_t *uid, size_t uid_len, uint8_t out[16]);

/*
 * cert.request as programmer client `c`. key NULL = the README key. On NU_OK
 * *out_reply holds CertificateIssued.
 */
int cf_cert_request(struct cf_client *c, const char *job, const uint8_t *uid, size_t uid_len,
                    const uint8_t *csr, size_t csr_len, const uint8_t *key, size_t key_len,
                    Nusec__V1__Envelope **out_reply);

/* Write DER as PEM to path. NU_OK or the error. */
int cf_write_cert_pem(const char *path, const uint8_t *der, size_t len);

#endif
