/*
 * bench_ledger_scaling — does certificate issuance slow down as the ledger
 * grows? Two ledgers are filled, one with SMALL and one with LARGE issued
 * certificates, then the same issuance work is timed on each.
 *
 *   bench_ledger_scaling DIR [SMALL] [LARGE] [MEASURE] [BATCH] [BUDGET_S]
 *                        (defaults 10000 1000000 4000 32 45)
 *
 * PREFILL. cloud_ledger_open makes the file (schema, indexes, triggers of
 * the ledger as it is built), the programmers and the jobs (100000 devices
 * each, 8 programmers) go in through the ledger API; then the certificates go
 * in with ONE big SQL transaction on a connection of our own (no journal, a
 * cache that holds the file; back to WAL after, and fsync'd before the clock
 * starts), because the API (one fsync'd transaction per 256) fills only ~5000
 * rows/s here. Per certificate it writes what issuance writes, with the
 * ledger's own statements: the certificate row, the idempotency-cache row
 * with the stored answer and the cert.issued event with its real hash chain
 * (the audit_events triggers are dropped for the fill and re-created from
 * their stored text). Sizes are real (a real device certificate PEM and its
 * packed answer on every row); serials, idempotency keys and hashes are
 * distinct and random per row, so the B-trees get the random inserts a real
 * production gives them and issuance's lookups walk the same indexes at the
 * same depth. cloud_ledger_verify must accept the SMALL ledger (filled by the
 * same code): proof that the rows are the ledger's own. When the inserts take
 * longer than BUDGET_S the prefill stops there and says how many rows it has.
 *
 * MEASURE: new certificates in a fresh job of each ledger, in group commits
 * of BATCH requests (the cloud workers' batch_max, 32 by default) through
 * cloud_ledger_issue_batch, with a SOFTWARE signer (a P-256 CA key in memory:
 * nu_x509_issue, PEM and the packed CertificateIssued answer, as the cloud's
 * sign callback builds them), so the HSM does not dominate. Rounds alternate
 * small / large so that noise on this machine hits both alike; one warm-up
 * batch per ledger is not counted. Also printed without the signer's time
 * (ledger_only_*). Not a test: prints `name value unit`.
 */
#include "ledger.h"

#include "nu_crypto.h"
#include "nu_err.h"
#include "nu_util.h"
#include "nu_x509.h"
#include "nusec/v1/device.pb-c.h"

#include <fcntl.h>
#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define LS_PROGS 8
#define LS_JOB_ROWS 100000u
#define LS_ROUNDS 6
#define LS_UID_LEN 8

/* The certificate authority and the bytes every prefill row carries. */
struct ls_ca {
    struct nu_p256_key *key;
    struct nu_signer signer;
    uint8_t *der;
    size_t len;
    char pem[CLOUD_LEDGER_PEM_MAX + 1]; /* a real device certificate, for prefill rows */
    uint8_t answer[4096];               /* its packed CertificateIssued */
    size_t answer_len;
};

/* One measured request: its device key is made before the clock starts. */
struct ls_dev {
    uint8_t uid[LS_UID_LEN];
    uint8_t pub[NU_P256_PUB_LEN];
};

static const char *const ls_progs[LS_PROGS] = {"prog-1", "prog-2", "prog-3", "prog-4",
                                               "prog-5", "prog-6", "prog-7", "prog-8"};

struct ls_ledger {
    const char *name;
    struct cloud_ledger *l;
    uint64_t rows; /* prefilled */
    double fill_s;
    char job[32]; /* the measured job */
    size_t next;  /* next measured device */
    double issue_s, sign_s;
    size_t issued;
    int verify;      /* run cloud_ledger_verify on the prefilled file */
    double budget_s; /* prefill inserts stop after this long (0 = never) */
    double verify_s;
};

static double ls_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void ls_be64(uint8_t out[8], uint64_t v)
{
    for (int i = 0; i < 8; i++)
        out[i] = (uint8_t)(v >> (56 - 8 * i));
}

/* A distinct, random-looking value per (tag, i): hashes, keys, serials. */
static void ls_derive(char tag, uint64_t i, uint8_t out[NU_SHA256_LEN])
{
    uint8_t in[9];
    in[0] = (uint8_t)tag;
    ls_be64(in + 1, i);
    nu_sha256(in, sizeof(in), out);
}

static int ls_pack_answer(const char *job, const uint8_t *uid, size_t uid_len, const char *serial,
                          const uint8_t *der, size_t der_len, uint32_t issued, uint32_t quota,
                          uint8_t *out, size_t cap, size_t *out_len)
{
    Nusec__V1__CertificateIssued ci = NUSEC__V1__CERTIFICATE_ISSUED__INIT;
    ci.job_id = (char *)job;
    ci.device_uid.data = (uint8_t *)uid;
    ci.device_uid.len = uid_len;
    ci.certificate_der.data = (uint8_t *)der;
    ci.certificate_der.len = der_len;
    ci.serial = (char *)serial;
    ci.issued = issued;
    ci.quota = quota;
    if (protobuf_c_message_get_packed_size(&ci.base) > cap)
        return NU_ERR_TOO_LARGE;
    *out_len = protobuf_c_message_pack(&ci.base, out);
    return NU_OK;
}

/* A device certificate as the cloud makes one (its profile), signed in software. */
static int ls_issue(const struct ls_ca *ca, const char *cn, const uint8_t pub[NU_P256_PUB_LEN],
                    uint64_t now_ms, uint8_t **out_der, size_t *out_len)
{
    int64_t now = (int64_t)(now_ms / 1000);
    struct nu_x509_issue_req ir = {.cn = cn,
                                   .ou = "device",
                                   .o = "NuSEC",
                                   .not_before = now - 3600,
                                   .not_after = now + 20LL * 365 * 24 * 3600,
                                   .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
                                   .ext_key_usage = NU_X509_EKU_CLIENT_AUTH};
    memcpy(ir.pub, pub, NU_P256_PUB_LEN);
    return nu_x509_issue(&ir, &ca->signer, ca->der, ca->len, out_der, out_len);
}

static int ls_ca_make(struct ls_ca *ca)
{
    uint8_t pub[NU_P256_PUB_LEN], *dev = NULL;
    size_t dev_len = 0, pem_len = 0;
    char *pem = NULL;
    struct nu_p256_key *k = NULL;
    int rc = nu_p256_key_generate(&ca->key);
    if (!rc)
        rc = nu_p256_key_signer(ca->key, &ca->signer);
    if (!rc)
        rc = nu_p256_key_pub(ca->key, pub);
    struct nu_x509_issue_req ir = {.cn = "Bench Device CA",
                                   .o = "NuSEC",
                                   .not_before = 1700000000,
                                   .not_after = 2500000000,
                                   .is_ca = 1,
                                   .path_len = 0,
                                   .key_usage = NU_X509_KU_KEY_CERT_SIGN | NU_X509_KU_CRL_SIGN};
    memcpy(ir.pub, pub, sizeof(pub));
    if (!rc)
        rc = nu_x509_issue(&ir, &ca->signer, NULL, 0, &ca->der, &ca->len);
    /* The template row: one real device certificate and its answer. */
    if (!rc)
        rc = nu_p256_key_generate(&k);
    if (!rc)
        rc = nu_p256_key_pub(k, pub);
    if (!rc)
        rc = ls_issue(ca, "0123456789abcdef", pub, nu_time_ms(), &dev, &dev_len);
    if (!rc)
        rc = nu_x509_der_to_pem(dev, dev_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc && pem_len >= sizeof(ca->pem))
        rc = NU_ERR_TOO_LARGE;
    if (!rc) {
        memcpy(ca->pem, pem, pem_len + 1);
        rc = ls_pack_answer("fill-000", pub, LS_UID_LEN, "00112233445566778899aabbccddeeff", dev,
                            dev_len, 1, LS_JOB_ROWS, ca->answer, sizeof(ca->answer),
                            &ca->answer_len);
    }
    free(pem);
    free(dev);
    nu_p256_key_destroy(k);
    return rc;
}

/* ------------------------------------------------------------ ledger set-up */

static int ls_programmers(struct cloud_ledger *l, const struct ls_ca *ca)
{
    uint8_t pkg[NU_P256_PUB_LEN];
    struct nu_p256_key *k = NULL;
    int rc = nu_p256_key_generate(&k);
    if (!rc)
        rc = nu_p256_key_pub(k, pkg);
    for (int i = 0; i < LS_PROGS && !rc; i++) {
        char serial[8];
        snprintf(serial, sizeof(serial), "%02x", i + 1);
        struct cloud_ledger_enrollment e = {.programmer_id = ls_progs[i],
                                            .cert_serial = serial,
                                            .cert_pem = ca->pem,
                                            .package_pubkey = pkg,
                                            .actor = "station",
                                            .now_ms = nu_time_ms()};
        rc = cloud_ledger_programmer_upsert(l, &e);
    }
    nu_p256_key_destroy(k);
    return rc;
}

static int ls_job(struct cloud_ledger *l, const char *job, uint32_t quota)
{
    struct cloud_ledger_alloc alloc[LS_PROGS];
    memset(alloc, 0, sizeof(alloc));
    for (int i = 0; i < LS_PROGS; i++) {
        snprintf(alloc[i].programmer_id, sizeof(alloc[i].programmer_id), "%s", ls_progs[i]);
        alloc[i].limit = quota / LS_PROGS + 1;
    }
    struct cloud_ledger_job_spec spec = {.job_id = job,
                                         .firmware = "app-1.0.0",
                                         .subject_template = "{uid}",
                                         .quota = quota + LS_PROGS,
                                         .alloc = alloc,
                                         .n_alloc = LS_PROGS,
                                         .actor = "oem",
                                         .now_ms = nu_time_ms()};
    return cloud_ledger_job_create(l, &spec);
}

/* ------------------------------------------------------------ prefill */

/* What the ledger's issuance writes per certificate (ledger.c, ledger.h):
 * the same statements, so the same rows, B-trees and triggers. */
#define LS_SQL_CERT                                                                                \
    "INSERT INTO certificates (serial, job_id, device_uid, pubkey_hash, pem, programmer_id,"       \
    " idempotency_key, issued_at_ms, state) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, 'issued')"
#define LS_SQL_REQ                                                                                 \
    "INSERT INTO requests (idempotency_key, requester, op, request_hash, response, code,"          \
    " created_at_ms, serial) VALUES (?1, ?2, 'cert.request', ?3, ?4, 0, ?5, ?6)"
#define LS_SQL_EV                                                                                  \
    "INSERT INTO audit_events (seq, ts, kind, actor, job_id, payload, prev_hash, hash)"            \
    " VALUES (?1, ?2, 'cert.issued', ?3, ?4, ?5, ?6, ?7)"
#define LS_SQL_HEAD "UPDATE audit_head SET seq = ?1, hash = ?2 WHERE id = 1"

enum { LS_ST_CERT, LS_ST_REQ, LS_ST_EV, LS_ST_HEAD, LS_ST_N };

struct ls_fill {
    sqlite3 *db;
    sqlite3_stmt *st[LS_ST_N];
    const struct ls_ca *ca;
    uint8_t pem_sha[NU_SHA256_LEN];
    uint64_t seq; /* chain head */
    uint8_t head[NU_SHA256_LEN];
    uint32_t (*issued)[LS_PROGS]; /* per fill job, per programmer */
};

static int ls_step(sqlite3 *db, sqlite3_stmt *st)
{
    int rc = sqlite3_step(st);
    sqlite3_reset(st);
    sqlite3_clear_bindings(st);
    if (rc == SQLITE_DONE || rc == SQLITE_ROW)
        return NU_OK;
    fprintf(stderr, "bench_ledger_scaling: sqlite: %s\n", sqlite3_errmsg(db));
    return NU_ERR_DB;
}

static int ls_exec(sqlite3 *db, const char *sql)
{
    char *err = NULL;
    if (sqlite3_exec(db, sql, NULL, NULL, &err) == SQLITE_OK)
        return NU_OK;
    fprintf(stderr, "bench_ledger_scaling: %s: %s\n", sql, err ? err : "?");
    sqlite3_free(err);
    return NU_ERR_DB;
}

/* The cert.issued payload, byte for byte as the ledger writes it. */
static size_t ls_payload(char *out, size_t cap, const char *serial, const uint8_t *uid,
                         const uint8_t pk[32], const char *prog, const uint8_t key[16],
                         const uint8_t pem_sha[32])
{
    char huid[2 * LS_UID_LEN + 1], hpk[65], hkey[33], hpem[65];
    nu_hex_encode(uid, LS_UID_LEN, huid, sizeof(huid));
    nu_hex_encode(pk, 32, hpk, sizeof(hpk));
    nu_hex_encode(key, 16, hkey, sizeof(hkey));
    nu_hex_encode(pem_sha, 32, hpem, sizeof(hpem));
    int n = snprintf(out, cap,
                     "{\"serial\":\"%s\",\"device_uid\":\"%s\",\"pubkey_hash\":\"%s\","
                     "\"programmer\":\"%s\",\"idempotency_key\":\"%s\",\"pem_sha256\":\"%s\"}",
                     serial, huid, hpk, prog, hkey, hpem);
    return n > 0 && (size_t)n < cap ? (size_t)n : 0;
}

/* Row i: a certificate, its idempotency-cache entry and its cert.issued event. */
static int ls_fill_row(struct ls_fill *f, uint64_t i, uint64_t now_ms)
{
    const struct ls_ca *ca = f->ca;
    const char *prog = ls_progs[i % LS_PROGS];
    uint8_t uid[LS_UID_LEN], key[NU_SHA256_LEN], rh[NU_SHA256_LEN], pk[NU_SHA256_LEN];
    uint8_t s[NU_SHA256_LEN], hash[NU_SHA256_LEN];
    char serial[33], job[16], payload[512];
    unsigned j = (unsigned)(i / LS_JOB_ROWS);
    snprintf(job, sizeof(job), "fill-%03u", j);
    ls_be64(uid, i);
    ls_derive('k', i, key);
    ls_derive('r', i, rh);
    ls_derive('p', i, pk);
    ls_derive('s', i, s);
    s[0] &= 0x7f; /* a positive serial, as nu_x509 makes them */
    nu_hex_encode(s, 16, serial, sizeof(serial));
    size_t plen = ls_payload(payload, sizeof(payload), serial, uid, pk, prog, key, f->pem_sha);
    int rc = plen ? cloud_ledger_event_hash(f->head, f->seq + 1, now_ms, "cert.issued", 11, prog,
                                            strlen(prog), job, strlen(job), payload, plen, hash)
                  : NU_ERR_INTERNAL;
    sqlite3_stmt *st = f->st[LS_ST_CERT];
    sqlite3_bind_text(st, 1, serial, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, job, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, uid, sizeof(uid), SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, pk, sizeof(pk), SQLITE_STATIC);
    sqlite3_bind_text(st, 5, ca->pem, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 6, prog, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, key, 16, SQLITE_STATIC);
    sqlite3_bind_int64(st, 8, (sqlite3_int64)now_ms);
    if (!rc)
        rc = ls_step(f->db, st);
    st = f->st[LS_ST_REQ];
    sqlite3_bind_blob(st, 1, key, 16, SQLITE_STATIC);
    sqlite3_bind_text(st, 2, prog, -1, SQLITE_STATIC);
    sqlite3_bind_blob(st, 3, rh, sizeof(rh), SQLITE_STATIC);
    sqlite3_bind_blob(st, 4, ca->answer, (int)ca->answer_len, SQLITE_STATIC);
    sqlite3_bind_int64(st, 5, (sqlite3_int64)now_ms);
    sqlite3_bind_text(st, 6, serial, -1, SQLITE_STATIC);
    if (!rc)
        rc = ls_step(f->db, st);
    st = f->st[LS_ST_EV];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)(f->seq + 1));
    sqlite3_bind_int64(st, 2, (sqlite3_int64)now_ms);
    sqlite3_bind_text(st, 3, prog, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 4, job, -1, SQLITE_STATIC);
    sqlite3_bind_text(st, 5, payload, (int)plen, SQLITE_STATIC);
    sqlite3_bind_blob(st, 6, f->head, sizeof(f->head), SQLITE_STATIC);
    sqlite3_bind_blob(st, 7, hash, sizeof(hash), SQLITE_STATIC);
    if (!rc)
        rc = ls_step(f->db, st);
    if (!rc) {
        f->seq++;
        memcpy(f->head, hash, sizeof(hash));
        f->issued[j][i % LS_PROGS]++;
    }
    return rc;
}

/* The counters the rows imply (the ledger bumps them per row; same result). */
static int ls_fill_counts(struct ls_fill *f, uint64_t rows, uint64_t now_ms)
{
    char sql[256];
    sqlite3_stmt *st = f->st[LS_ST_HEAD];
    sqlite3_bind_int64(st, 1, (sqlite3_int64)f->seq);
    sqlite3_bind_blob(st, 2, f->head, sizeof(f->head), SQLITE_STATIC);
    int rc = ls_step(f->db, st);
    for (uint64_t j = 0; !rc && j * LS_JOB_ROWS < rows; j++) {
        uint32_t total = 0;
        for (int p = 0; p < LS_PROGS && !rc; p++) {
            total += f->issued[j][p];
            snprintf(sql, sizeof(sql),
                     "UPDATE job_allocations SET issued = %u WHERE job_id = 'fill-%03u'"
                     " AND programmer_id = '%s'",
                     f->issued[j][p], (unsigned)j, ls_progs[p]);
            rc = ls_exec(f->db, sql);
        }
        snprintf(sql, sizeof(sql),
                 "UPDATE jobs SET issued = %u, updated_at_ms = %llu WHERE job_id = 'fill-%03u'",
                 total, (unsigned long long)now_ms, (unsigned)j);
        if (!rc)
            rc = ls_exec(f->db, sql);
    }
    return rc;
}

static int ls_fill_open(struct ls_fill *f, const char *path)
{
    static const char *const sql[LS_ST_N] = {LS_SQL_CERT, LS_SQL_REQ, LS_SQL_EV, LS_SQL_HEAD};
    sqlite3_stmt *st = NULL;
    /* One writer, nobody else on the file: no journal, no fsync until the
     * end, a cache that holds it all. The file goes back to WAL after. */
    int rc =
        sqlite3_open_v2(path, &f->db, SQLITE_OPEN_READWRITE, NULL) == SQLITE_OK ? NU_OK : NU_ERR_DB;
    if (!rc)
        rc = ls_exec(f->db, "PRAGMA journal_mode = OFF; PRAGMA synchronous = OFF;"
                            " PRAGMA cache_size = -4000000; PRAGMA locking_mode = EXCLUSIVE");
    for (int i = 0; i < LS_ST_N && !rc; i++)
        rc =
            sqlite3_prepare_v2(f->db, sql[i], -1, &f->st[i], NULL) == SQLITE_OK ? NU_OK : NU_ERR_DB;
    if (!rc)
        rc = sqlite3_prepare_v2(f->db, "SELECT seq, hash FROM audit_head WHERE id = 1", -1, &st,
                                NULL) == SQLITE_OK &&
                     sqlite3_step(st) == SQLITE_ROW && sqlite3_column_bytes(st, 1) == 32
                 ? NU_OK
                 : NU_ERR_DB;
    if (!rc) {
        f->seq = (uint64_t)sqlite3_column_int64(st, 0);
        memcpy(f->head, sqlite3_column_blob(st, 1), 32);
    }
    sqlite3_finalize(st);
    if (rc)
        fprintf(stderr, "bench_ledger_scaling: prefill open: %s\n", sqlite3_errmsg(f->db));
    return rc;
}

static void ls_fill_close(struct ls_fill *f)
{
    for (int i = 0; i < LS_ST_N; i++)
        sqlite3_finalize(f->st[i]);
    if (f->db && ls_exec(f->db, "PRAGMA journal_mode = WAL"))
        fprintf(stderr, "bench_ledger_scaling: cannot put the file back to WAL\n");
    sqlite3_close(f->db);
    free(f->issued);
}

/*
 * The audit_events triggers (one checks each row's seq against audit_head)
 * are dropped for the prefill and created again from their own stored text
 * in the same transaction, so the head is written once instead of per row;
 * the file ends with the very schema the ledger made.
 */
static int ls_triggers(sqlite3 *db, char **saved, size_t cap, size_t *n, int drop)
{
    sqlite3_stmt *st = NULL;
    int rc = NU_OK;
    if (!drop) {
        for (size_t i = 0; i < *n && !rc; i++)
            rc = ls_exec(db, saved[i]);
        return rc;
    }
    if (sqlite3_prepare_v2(db,
                           "SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                           " AND tbl_name = 'audit_events'",
                           -1, &st, NULL) != SQLITE_OK)
        return NU_ERR_DB;
    char names[16][128];
    *n = 0;
    while (sqlite3_step(st) == SQLITE_ROW && *n < cap) {
        snprintf(names[*n], sizeof(names[*n]), "%s", (const char *)sqlite3_column_text(st, 0));
        saved[*n] = strdup((const char *)sqlite3_column_text(st, 1));
        (*n)++;
    }
    sqlite3_finalize(st);
    for (size_t i = 0; i < *n && !rc; i++) {
        char sql[192];
        snprintf(sql, sizeof(sql), "DROP TRIGGER \"%s\"", names[i]);
        rc = saved[i] ? ls_exec(db, sql) : NU_ERR_NOMEM;
    }
    return rc;
}

/*
 * *rows issued certificates, written in one transaction of their own. When
 * the inserts take longer than budget_s (> 0), they stop there and *rows says
 * how many were written.
 */
static int ls_fill(const char *path, const struct ls_ca *ca, uint64_t *io_rows, double budget_s)
{
    struct ls_fill f = {.ca = ca};
    uint64_t rows = *io_rows;
    uint64_t now_ms = nu_time_ms() - rows; /* one certificate per ms, up to now */
    int rc = nu_sha256(ca->pem, strlen(ca->pem), f.pem_sha);
    f.issued = calloc(rows / LS_JOB_ROWS + 1, sizeof(*f.issued));
    if (!rc && !f.issued)
        rc = NU_ERR_NOMEM;
    if (!rc)
        rc = ls_fill_open(&f, path);
    char *trig[16] = {0};
    size_t n_trig = 0;
    if (!rc)
        rc = ls_exec(f.db, "BEGIN IMMEDIATE");
    if (!rc)
        rc = ls_triggers(f.db, trig, 16, &n_trig, 1);
    double t0 = ls_now();
    for (uint64_t i = 0; i < rows && !rc; i++) {
        rc = ls_fill_row(&f, i, now_ms + i);
        if (budget_s > 0 && (i + 1) % 4096 == 0 && ls_now() - t0 > budget_s)
            rows = i + 1;
    }
    *io_rows = rows;
    if (!rc)
        rc = ls_fill_counts(&f, rows, now_ms + rows);
    if (!rc)
        rc = ls_triggers(f.db, trig, 16, &n_trig, 0);
    for (size_t i = 0; i < n_trig; i++)
        free(trig[i]);
    double t1 = ls_now();
    if (!rc)
        rc = ls_exec(f.db, "COMMIT");
    double t2 = ls_now();
    ls_fill_close(&f);
    /* On disk before the clock starts: otherwise the kernel writes the
     * prefill back during the measurement and every fsync waits for it. */
    int fd = open(path, O_RDONLY);
    if (!rc && (fd < 0 || fsync(fd) != 0))
        rc = NU_ERR_IO;
    if (fd >= 0)
        close(fd);
    fprintf(stderr,
            "bench_ledger_scaling: prefill of %llu rows: inserts %.1f s, commit %.1f s,"
            " close and fsync %.1f s\n",
            (unsigned long long)rows, t1 - t0, t2 - t1, ls_now() - t2);
    return rc;
}

/* ------------------------------------------------------------ measure */

struct ls_sign_ctx {
    const struct ls_ca *ca;
    double sign_s; /* time spent in the callback */
};

/* The cloud's sign callback, with the CA key in memory instead of the HSM. */
static int ls_sign(void *ctx, const struct cloud_ledger_issue_req *req,
                   const struct cloud_ledger_sign_info *info, struct cloud_ledger_sign_out *out)
{
    struct ls_sign_ctx *s = ctx;
    const struct ls_dev *dev = req->user;
    struct nu_x509_cert_info ci;
    char cn[2 * LS_UID_LEN + 1], *pem = NULL;
    uint8_t *der = NULL;
    size_t der_len = 0, pem_len = 0;
    double t0 = ls_now();
    int rc = info->resend ? NU_ERR_INTERNAL : NU_OK;
    if (!rc)
        rc = nu_hex_encode(req->device_uid, req->device_uid_len, cn, sizeof(cn));
    if (!rc)
        rc = ls_issue(s->ca, cn, dev->pub, req->now_ms, &der, &der_len);
    if (!rc)
        rc = nu_x509_der_to_pem(der, der_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc)
        rc = nu_x509_cert_info(der, der_len, &ci);
    if (!rc && pem_len >= sizeof(out->pem))
        rc = NU_ERR_TOO_LARGE;
    if (!rc) {
        memcpy(out->pem, pem, pem_len + 1);
        snprintf(out->serial, sizeof(out->serial), "%s", ci.serial_hex);
        rc = ls_pack_answer(req->job_id, req->device_uid, req->device_uid_len, ci.serial_hex, der,
                            der_len, info->issued, info->quota, out->response, out->response_cap,
                            &out->response_len);
    }
    free(pem);
    free(der);
    s->sign_s += ls_now() - t0;
    return rc;
}

/* One group commit of n new devices into the measured job. */
static int ls_batch(struct ls_ledger *lg, const struct ls_ca *ca, struct ls_dev *devs, size_t n,
                    int counted)
{
    struct cloud_ledger_issue_req q[CLOUD_LEDGER_BATCH_MAX];
    uint8_t keys[CLOUD_LEDGER_BATCH_MAX][16];
    struct cloud_ledger_issue_result *res = calloc(n, sizeof(*res));
    struct ls_sign_ctx sc = {.ca = ca};
    int rc = res ? NU_OK : NU_ERR_NOMEM;
    for (size_t k = 0; !rc && k < n; k++) {
        struct ls_dev *d = &devs[lg->next + k];
        struct cloud_ledger_issue_req *r = &q[k];
        uint8_t h[NU_SHA256_LEN];
        memset(r, 0, sizeof(*r));
        r->requester = ls_progs[(lg->next + k) % LS_PROGS];
        ls_derive('m', lg->next + k, h);
        memcpy(keys[k], h, 16);
        r->idempotency_key = keys[k];
        r->idempotency_key_len = 16;
        r->job_id = lg->job;
        r->device_uid = d->uid;
        r->device_uid_len = sizeof(d->uid);
        nu_sha256(d->pub, sizeof(d->pub), r->pubkey_hash);
        memcpy(r->request_hash, h, sizeof(h));
        r->request_hash[0] ^= 0xff;
        r->now_ms = nu_time_ms();
        r->user = d;
    }
    double t0 = ls_now();
    if (!rc)
        rc = cloud_ledger_issue_batch(lg->l, q, n, ls_sign, &sc, res);
    double dt = ls_now() - t0;
    for (size_t k = 0; !rc && k < n; k++)
        rc = res[k].code || res[k].replayed || res[k].resent ? NU_ERR_INTERNAL : NU_OK;
    if (!rc && counted) {
        lg->issue_s += dt;
        lg->sign_s += sc.sign_s;
        lg->issued += n;
    }
    lg->next += n;
    free(res);
    return rc;
}

static int ls_devs(struct ls_dev *d, size_t n, uint8_t tag)
{
    int rc = NU_OK;
    for (size_t i = 0; i < n && !rc; i++) {
        struct nu_p256_key *k = NULL;
        ls_be64(d[i].uid, i);
        d[i].uid[0] = tag;
        rc = nu_p256_key_generate(&k);
        if (!rc)
            rc = nu_p256_key_pub(k, d[i].pub);
        nu_p256_key_destroy(k);
    }
    return rc;
}

/* Alternate rounds over the ledgers; each round issues `per` devices per ledger. */
static int ls_measure(struct ls_ledger *lg, size_t n_lg, const struct ls_ca *ca,
                      struct ls_dev *const *devs, size_t measure, size_t batch)
{
    size_t per = measure / LS_ROUNDS;
    int rc = NU_OK;
    for (size_t i = 0; i < n_lg && !rc; i++) /* warm-up, not counted */
        rc = ls_batch(&lg[i], ca, devs[i], batch, 0);
    for (int r = 0; r < LS_ROUNDS && !rc; r++) {
        for (size_t i = 0; i < n_lg && !rc; i++) {
            size_t i0 = (size_t)r % 2 ? n_lg - 1 - i : i; /* small first, then large first */
            for (size_t done = 0; done < per && !rc;) {
                size_t n = per - done < batch ? per - done : batch;
                rc = ls_batch(&lg[i0], ca, devs[i0], n, 1);
                done += n;
            }
        }
    }
    return rc;
}

/* ------------------------------------------------------------ main */

static int ls_prepare(struct ls_ledger *lg, const char *dir, const struct ls_ca *ca, size_t measure,
                      size_t batch)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s.db", dir, lg->name);
    remove(path);
    double t0 = ls_now();
    int rc = cloud_ledger_open(path, &lg->l);
    if (!rc)
        rc = ls_programmers(lg->l, ca);
    for (uint64_t j = 0; !rc && j * LS_JOB_ROWS < lg->rows; j++) {
        char job[16];
        uint64_t n = lg->rows - j * LS_JOB_ROWS;
        snprintf(job, sizeof(job), "fill-%03u", (unsigned)j);
        rc = ls_job(lg->l, job, (uint32_t)(n < LS_JOB_ROWS ? n : LS_JOB_ROWS));
    }
    cloud_ledger_close(lg->l);
    lg->l = NULL;
    if (!rc)
        rc = ls_fill(path, ca, &lg->rows, lg->budget_s);
    lg->fill_s = ls_now() - t0;
    /* Open as the cloud does when it starts on this ledger. */
    if (!rc)
        rc = cloud_ledger_open(path, &lg->l);
    if (!rc && lg->verify) {
        /* The ledger's own audit accepts the prefilled rows: chain, one
         * cert.issued event per certificate (payload rebuilt from the row),
         * counters. Proves they are the rows issuance itself writes. */
        struct cloud_ledger_verify_report rep;
        double v0 = ls_now();
        rc = cloud_ledger_verify(lg->l, &rep);
        lg->verify_s = ls_now() - v0;
        if (rc || rep.certificates != lg->rows)
            fprintf(stderr, "bench_ledger_scaling: %s ledger does not verify: %s (%s)\n", lg->name,
                    nu_err_name(rc), rep.first_problem);
        if (!rc && rep.certificates != lg->rows)
            rc = NU_ERR_INTERNAL;
    }
    snprintf(lg->job, sizeof(lg->job), "measure-%s", lg->name);
    if (!rc)
        rc = ls_job(lg->l, lg->job, (uint32_t)(measure + batch));
    if (rc)
        fprintf(stderr, "bench_ledger_scaling: %s ledger: %s\n", lg->name, nu_err_name(rc));
    else
        fprintf(stderr, "bench_ledger_scaling: %s ledger, %llu rows prefilled in %.1f s\n",
                lg->name, (unsigned long long)lg->rows, lg->fill_s);
    return rc;
}

static void ls_report(const struct ls_ledger *lg, size_t n, size_t batch)
{
    for (size_t i = 0; i < n; i++) {
        printf("ledger_rows_%s %llu rows\n", lg[i].name, (unsigned long long)lg[i].rows);
        printf("ledger_prefill_%s_s %.1f s\n", lg[i].name, lg[i].fill_s);
        if (lg[i].verify)
            printf("ledger_prefill_%s_verify_s %.1f s\n", lg[i].name, lg[i].verify_s);
        printf("ledger_issue_%s_per_s %.1f certs/s\n", lg[i].name,
               (double)lg[i].issued / lg[i].issue_s);
        printf("ledger_only_%s_per_s %.1f certs/s\n", lg[i].name,
               (double)lg[i].issued / (lg[i].issue_s - lg[i].sign_s));
    }
    double small = (double)lg[0].issued / lg[0].issue_s,
           large = (double)lg[1].issued / lg[1].issue_s;
    double small_l = (double)lg[0].issued / (lg[0].issue_s - lg[0].sign_s);
    double large_l = (double)lg[1].issued / (lg[1].issue_s - lg[1].sign_s);
    printf("ledger_scaling %.3f ratio\n", large / small);
    printf("ledger_only_scaling %.3f ratio\n", large_l / small_l);
    printf("ledger_measured_certs %zu certs\n", lg[0].issued);
    printf("ledger_batch %zu requests\n", batch);
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s DIR [SMALL] [LARGE] [MEASURE] [BATCH] [BUDGET_S]\n", argv[0]);
        return 2;
    }
    unsigned long long small = argc > 2 ? strtoull(argv[2], NULL, 10) : 10000;
    unsigned long long large = argc > 3 ? strtoull(argv[3], NULL, 10) : 1000000;
    size_t measure = argc > 4 ? strtoul(argv[4], NULL, 10) : 4000;
    size_t batch = argc > 5 ? strtoul(argv[5], NULL, 10) : 32;
    double budget = argc > 6 ? strtod(argv[6], NULL) : 45.0;
    int verify_large = getenv("BENCH_LEDGER_VERIFY_LARGE") != NULL;
    if (!small || !large || measure < LS_ROUNDS || !batch || batch > CLOUD_LEDGER_BATCH_MAX ||
        !(budget >= 0)) {
        fprintf(stderr, "bench_ledger_scaling: bad arguments\n");
        return 2;
    }
    static struct ls_ca ca;
    struct ls_ledger lg[2] = {
        {.name = "small", .rows = small, .verify = 1},
        {.name = "large", .rows = large, .verify = verify_large, .budget_s = budget}};
    struct ls_dev *devs[2] = {calloc(measure + batch, sizeof(struct ls_dev)),
                              calloc(measure + batch, sizeof(struct ls_dev))};
    int rc = devs[0] && devs[1] ? NU_OK : NU_ERR_NOMEM;
    if (!rc)
        rc = ls_ca_make(&ca);
    for (int i = 0; i < 2 && !rc; i++)
        rc = ls_devs(devs[i], measure + batch, (uint8_t)(0xa0 + i));
    for (int i = 0; i < 2 && !rc; i++)
        rc = ls_prepare(&lg[i], argv[1], &ca, measure, batch);
    if (!rc)
        rc = ls_measure(lg, 2, &ca, devs, measure, batch);
    if (!rc)
        ls_report(lg, 2, batch);
    else
        fprintf(stderr, "bench_ledger_scaling: failed: %s\n", nu_err_name(rc));
    for (int i = 0; i < 2; i++) {
        cloud_ledger_close(lg[i].l);
        free(devs[i]);
    }
    free(ca.der);
    nu_p256_key_destroy(ca.key);
    return rc ? 1 : 0;
}
