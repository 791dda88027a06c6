/*
 * ledger_util — helpers every ledger part shares: statements, binds and
 * column reads over ledger_store, transactions, input validation, and the
 * row readers and lookups (jobs, programmers, allocations, certificates).
 */
#include "ledger_int.h"

static const char *const ledger__sql[ST__COUNT] = {
#define LEDGER__TEXT(name, sql) sql,
    LEDGER_SQL(LEDGER__TEXT)
#undef LEDGER__TEXT
};

/*
 * PostgreSQL's text where it differs (NULL = the same). The row locks are in
 * the shared text (ledger_int.h); what stays here is what SQLite cannot say:
 * a data-modifying WITH that inserts the event and moves the head in one
 * round trip.
 */
static const char *ledger__sql_pg[ST__COUNT] = {
    [ST_EV_APPEND] = "WITH e AS (INSERT INTO audit_events (seq, ts, kind, actor, job_id, payload,"
                     " prev_hash, hash) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8) RETURNING seq, hash)"
                     " UPDATE audit_head h SET seq = e.seq, hash = e.hash FROM e WHERE h.id = 1",
};

int ledger__is_pg(const struct cloud_ledger *l)
{
    return ledger_store_kind(l->store) == LEDGER_STORE_POSTGRESQL;
}

int ledger__stmt(struct cloud_ledger *l, enum ledger_stmt id,
                 struct ledger_store_stmt **out_st)
{
    *out_st = NULL;
    if (!l->st[id]) {
        const char *sql = ledger__is_pg(l) && ledger__sql_pg[id] ? ledger__sql_pg[id]
                                                                 : ledger__sql[id];
        int rc = ledger_store_prepare(l->store, sql, &l->st[id]);
        if (rc != NU_OK)
            return rc;
    }
    *out_st = l->st[id];
    return NU_OK;
}

int ledger__stmt_new(struct cloud_ledger *l, enum ledger_stmt id,
                     struct ledger_store_stmt **out_st)
{
    const char *sql = ledger__is_pg(l) && ledger__sql_pg[id] ? ledger__sql_pg[id] : ledger__sql[id];
    return ledger_store_prepare(l->store, sql, out_st);
}

void ledger__reset(struct ledger_store_stmt *st)
{
    ledger_store_reset(st);
}

/* Step: 1 with a row; 0 when done (*rc = NU_OK) or failed (*rc = the error). */
int ledger__row(struct ledger_store_stmt *st, int *rc)
{
    int row = 0;
    *rc = ledger_store_step(st, &row);
    return *rc == NU_OK && row;
}

/* Step a statement that returns no rows, then reset it (pipelining: only
 * sent, its outcome comes back later, see ledger_store_queue). */
int ledger__run(struct cloud_ledger *l, struct ledger_store_stmt *st, const char *what)
{
    return ledger__run_expect(l, st, -1, what);
}

int ledger__run_expect(struct cloud_ledger *l, struct ledger_store_stmt *st, int64_t expect,
                       const char *what)
{
    (void)what;
    l->writes++;
    return ledger_store_queue(st, expect);
}

/* Run a parameterless transaction statement (BEGIN, COMMIT, SAVEPOINT...). */
int ledger__exec(struct cloud_ledger *l, enum ledger_stmt id)
{
    /* The cached chain head lives exactly as long as its row lock. */
    switch (id) {
    case ST_BEGIN_W:
    case ST_BEGIN_R:
    case ST_COMMIT:
    case ST_ROLLBACK: l->head.valid = 0; break;
    case ST_SP: l->head_sp = l->head; break;
    case ST_SP_ROLLBACK: l->head = l->head_sp; break;
    default: break;
    }
    switch (id) {
    case ST_BEGIN_W: return ledger_store_begin(l->store, 1);
    case ST_BEGIN_R: return ledger_store_begin(l->store, 0);
    case ST_COMMIT: return ledger_store_commit(l->store);
    case ST_ROLLBACK: ledger_store_rollback(l->store); return NU_OK;
    case ST_SP: return ledger_store_savepoint(l->store, "ledger_req");
    case ST_SP_RELEASE: return ledger_store_release(l->store, "ledger_req");
    case ST_SP_ROLLBACK: return ledger_store_rollback_to(l->store, "ledger_req");
    default: break;
    }
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, id, &st);
    if (rc != NU_OK)
        return rc;
    return ledger__run(l, st, ledger__sql[id]);
}

int ledger__bind_text(struct ledger_store_stmt *st, int i, const char *s)
{
    return ledger_store_bind_text(st, i, s ? s : "");
}

int ledger__bind_blob(struct ledger_store_stmt *st, int i, const void *p, size_t n)
{
    return ledger_store_bind_blob(st, i, p, n);
}

/* Text with a length (payloads): bound as text, NUL or not after it. */
int ledger__bind_blob_text(struct ledger_store_stmt *st, int i, const char *p, size_t n)
{
    char *copy = malloc(n + 1);
    int rc;
    if (!copy)
        return NU_ERR_NOMEM;
    memcpy(copy, p, n);
    copy[n] = '\0';
    rc = ledger_store_bind_text(st, i, copy);
    free(copy);
    return rc;
}

int ledger__bind_u64(struct ledger_store_stmt *st, int i, uint64_t v)
{
    return ledger_store_bind_i64(st, i, (int64_t)v);
}

uint64_t ledger__col_u64(struct ledger_store_stmt *st, int i)
{
    int64_t v = ledger_store_col_i64(st, i);
    return v < 0 ? 0 : (uint64_t)v;
}

uint32_t ledger__col_u32(struct ledger_store_stmt *st, int i)
{
    uint64_t v = ledger__col_u64(st, i);
    return v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
}

/* The text of a column as a C string (NULL for SQL NULL). */
const unsigned char *ledger__col_text(struct ledger_store_stmt *st, int i)
{
    size_t n;
    return (const unsigned char *)ledger_store_col_text(st, i, &n);
}

int ledger__col_bytes(struct ledger_store_stmt *st, int i)
{
    size_t n;
    (void)ledger_store_col_blob(st, i, &n);
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

const void *ledger__col_blobp(struct ledger_store_stmt *st, int i)
{
    size_t n;
    return ledger_store_col_blob(st, i, &n);
}

/* Copy a TEXT column into out[cap]. A value longer than anything we write
 * means the row was not written by us: DB. NULL reads as "". */
int ledger__col_str(struct ledger_store_stmt *st, int i, char *out, size_t cap)
{
    size_t n = 0;
    const char *t = ledger_store_col_text(st, i, &n);

    out[0] = '\0';
    if (!t)
        return NU_OK;
    if (n >= cap) {
        nu_warn("ledger: column %d holds %zu bytes, more than the %zu allowed", i, n, cap - 1);
        return NU_ERR_DB;
    }
    memcpy(out, t, n);
    out[n] = '\0';
    return NU_OK;
}

int ledger__col_blob(struct ledger_store_stmt *st, int i, uint8_t *out, size_t cap,
                     size_t *out_len)
{
    size_t n = 0;
    const void *b = ledger_store_col_blob(st, i, &n);

    *out_len = 0;
    if (n > cap) {
        nu_warn("ledger: column %d holds %zu bytes, more than the %zu allowed", i, n, cap);
        return NU_ERR_DB;
    }
    if (b && n)
        memcpy(out, b, n);
    *out_len = n;
    return NU_OK;
}

/* Exactly `len` bytes, else DB (e.g. a 32-byte hash column). */
int ledger__col_fixed(struct ledger_store_stmt *st, int i, uint8_t *out, size_t len)
{
    size_t n;
    int rc = ledger__col_blob(st, i, out, len, &n);
    if (rc == NU_OK && n != len) {
        nu_warn("ledger: column %d holds %zu bytes, expected %zu", i, n, len);
        rc = NU_ERR_DB;
    }
    return rc;
}

/* --------------------------------------------------------- transactions */

int ledger__begin(struct cloud_ledger *l, int write)
{
    return ledger__exec(l, write ? ST_BEGIN_W : ST_BEGIN_R);
}

/* Roll back whatever is open (no-op after a COMMIT). */
void ledger__rollback(struct cloud_ledger *l)
{
    l->head.valid = 0;
    ledger_store_rollback(l->store);
}

int ledger__commit(struct cloud_ledger *l)
{
    int rc = ledger__exec(l, ST_COMMIT);
    if (rc != NU_OK)
        ledger__rollback(l);
    return rc;
}

/* ------------------------------------------------------------- validation */

int ledger__time_ok(uint64_t t)
{
    return t <= (uint64_t)INT64_MAX;
}

/* An identifier as on the wire; the strnlen bound keeps hostile input cheap. */
int ledger__id_check(const char *id)
{
    if (!id)
        return NU_ERR_INVALID_ARG;
    if (strnlen(id, CLOUD_LEDGER_ID_MAX + 1) > CLOUD_LEDGER_ID_MAX)
        return NU_ERR_TOO_LARGE;
    return nu_envelope_id_check(id);
}

/* NULL or "" (none), else an id. */
int ledger__opt_id_check(const char *id)
{
    if (!id || !*id)
        return NU_OK;
    return ledger__id_check(id);
}

/*
 * Strict UTF-8 (no overlongs, surrogates or code points past U+10FFFF), no
 * NUL, no C0 control or DEL except tab/CR/LF when allow_newlines.
 */
int ledger__utf8_ok(const uint8_t *s, size_t n, int allow_newlines)
{
    size_t i = 0;

    while (i < n) {
        uint8_t c = s[i];
        size_t len;
        uint8_t lo = 0x80, hi = 0xbf;

        if (c < 0x80) {
            int nl = c == '\n' || c == '\r' || c == '\t';
            if ((c < 0x20 && !(nl && allow_newlines)) || c == 0x7f)
                return 0;
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf)
            len = 2;
        else if (c >= 0xe0 && c <= 0xef)
            len = 3;
        else if (c >= 0xf0 && c <= 0xf4)
            len = 4;
        else
            return 0;
        if (c == 0xe0)
            lo = 0xa0;
        else if (c == 0xed)
            hi = 0x9f;
        else if (c == 0xf0)
            lo = 0x90;
        else if (c == 0xf4)
            hi = 0x8f;
        if (n - i < len || s[i + 1] < lo || s[i + 1] > hi)
            return 0;
        for (size_t k = 2; k < len; k++) {
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return 0;
        }
        i += len;
    }
    return 1;
}

/* Optional one-line text (reasons, details, subject template). */
int ledger__text_check(const char *s, size_t max)
{
    size_t n;

    if (!s)
        return NU_OK;
    n = strnlen(s, max + 1);
    if (n > max)
        return NU_ERR_TOO_LARGE;
    return ledger__utf8_ok((const uint8_t *)s, n, 0) ? NU_OK : NU_ERR_INVALID_ARG;
}

/* A serial as we store it: 1..64 lower-case hex digits. */
int ledger__serial_ok(const char *s)
{
    size_t n = strnlen(s, CLOUD_LEDGER_SERIAL_MAX + 1);

    if (n == 0 || n > CLOUD_LEDGER_SERIAL_MAX)
        return 0;
    for (size_t i = 0; i < n; i++) {
        if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
            return 0;
    }
    return 1;
}

/* Serials from outside may come in either case; we store lower case. */
static int ledger__serial_norm(const char *in, char out[CLOUD_LEDGER_SERIAL_MAX + 1])
{
    size_t n;

    if (!in)
        return NU_ERR_INVALID_ARG;
    n = strnlen(in, CLOUD_LEDGER_SERIAL_MAX + 1);
    if (n > CLOUD_LEDGER_SERIAL_MAX)
        return NU_ERR_TOO_LARGE;
    for (size_t i = 0; i <= n; i++)
        out[i] = (in[i] >= 'A' && in[i] <= 'F') ? (char)(in[i] - 'A' + 'a') : in[i];
    return ledger__serial_ok(out) ? NU_OK : NU_ERR_INVALID_ARG;
}

/* PEM text: ASCII armour, bounded. */
int ledger__pem_ok(const char *pem, size_t *out_len)
{
    size_t n = strnlen(pem, CLOUD_LEDGER_PEM_MAX + 1);

    if (n == 0 || n > CLOUD_LEDGER_PEM_MAX || strncmp(pem, "-----BEGIN ", 11) != 0)
        return 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)pem[i];
        if (!(c == '\n' || c == '\r' || (c >= 0x20 && c < 0x7f)))
            return 0;
    }
    *out_len = n;
    return 1;
}

int ledger__kind_check(const char *kind)
{
    size_t n;

    if (!kind)
        return NU_ERR_INVALID_ARG;
    n = strnlen(kind, CLOUD_LEDGER_KIND_MAX + 1);
    if (n > CLOUD_LEDGER_KIND_MAX)
        return NU_ERR_TOO_LARGE;
    if (n == 0)
        return NU_ERR_INVALID_ARG;
    for (size_t i = 0; i < n; i++) {
        char c = kind[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '.' || c == '_' || c == '-'))
            return NU_ERR_INVALID_ARG;
    }
    return NU_OK;
}

/* ------------------------------------------------------------ row readers */

const char *const ledger__job_status_names[] = {
    [CLOUD_LEDGER_JOB_ACTIVE] = "active",
    [CLOUD_LEDGER_JOB_PAUSED] = "paused",
    [CLOUD_LEDGER_JOB_CLOSED] = "closed",
    [CLOUD_LEDGER_JOB_EXHAUSTED] = "exhausted",
};

const char *const ledger__cert_state_names[] = {
    [CLOUD_LEDGER_CERT_ISSUED] = "issued",
    [CLOUD_LEDGER_CERT_PROVISIONED] = "provisioned",
    [CLOUD_LEDGER_CERT_FAILED] = "failed",
    [CLOUD_LEDGER_CERT_REVOKED] = "revoked",
};

/* Index of `name` in a names table (entry 0 unused), 0 when absent. */
static int ledger__name_index(const char *const *names, int n, const unsigned char *name)
{
    for (int i = 1; name && i < n; i++) {
        if (strcmp(names[i], (const char *)name) == 0)
            return i;
    }
    return 0;
}

int ledger__job_row(struct ledger_store_stmt *st, struct cloud_ledger_job *job)
{
    int rc;

    memset(job, 0, sizeof(*job));
    rc = ledger__col_str(st, 0, job->job_id, sizeof(job->job_id));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 1, job->firmware, sizeof(job->firmware));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 2, job->subject_template, sizeof(job->subject_template));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 3, job->created_by, sizeof(job->created_by));
    job->status = (enum cloud_ledger_job_status)ledger__name_index(ledger__job_status_names, 5,
                                                                   ledger__col_text(st, 4));
    job->quota = ledger__col_u32(st, 5);
    job->issued = ledger__col_u32(st, 6);
    job->refused = ledger__col_u32(st, 7);
    job->created_at_ms = ledger__col_u64(st, 8);
    job->expires_at_ms = ledger__col_u64(st, 9);
    if (rc == NU_OK && job->status == 0)
        rc = NU_ERR_DB;
    return rc;
}

int ledger__prog_row(struct ledger_store_stmt *st, struct cloud_ledger_programmer *p)
{
    size_t n = 0;
    const unsigned char *state;
    int rc;

    memset(p, 0, sizeof(*p));
    rc = ledger__col_str(st, 0, p->programmer_id, sizeof(p->programmer_id));
    state = ledger__col_text(st, 1);
    p->state = state && strcmp((const char *)state, "revoked") == 0
                   ? CLOUD_LEDGER_PROGRAMMER_REVOKED
                   : CLOUD_LEDGER_PROGRAMMER_ENROLLED;
    if (rc == NU_OK)
        rc = ledger__col_str(st, 2, p->cert_serial, sizeof(p->cert_serial));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 3, p->cert_pem, sizeof(p->cert_pem));
    if (rc == NU_OK)
        rc = ledger__col_blob(st, 4, p->package_pubkey, sizeof(p->package_pubkey), &n);
    p->enrolled_at_ms = ledger__col_u64(st, 5);
    p->revoked_at_ms = ledger__col_u64(st, 6);
    if (rc == NU_OK)
        rc = ledger__col_str(st, 7, p->revoke_reason, sizeof(p->revoke_reason));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 8, p->vendor_serial, sizeof(p->vendor_serial));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 9, p->firmware_measurement, sizeof(p->firmware_measurement));
    return rc;
}

int ledger__cert_row(struct ledger_store_stmt *st, struct cloud_ledger_cert *c)
{
    int rc;

    memset(c, 0, sizeof(*c));
    rc = ledger__col_str(st, 0, c->serial, sizeof(c->serial));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 1, c->job_id, sizeof(c->job_id));
    if (rc == NU_OK)
        rc = ledger__col_blob(st, 2, c->device_uid, sizeof(c->device_uid), &c->device_uid_len);
    if (rc == NU_OK)
        rc = ledger__col_fixed(st, 3, c->pubkey_hash, sizeof(c->pubkey_hash));
    if (rc == NU_OK)
        rc = ledger__col_str(st, 4, c->programmer_id, sizeof(c->programmer_id));
    if (rc == NU_OK)
        rc = ledger__col_blob(st, 5, c->idempotency_key, sizeof(c->idempotency_key),
                              &c->idempotency_key_len);
    if (rc == NU_OK)
        rc = ledger__col_str(st, 6, c->pem, sizeof(c->pem));
    c->state = (enum cloud_ledger_cert_state)ledger__name_index(ledger__cert_state_names, 5,
                                                                ledger__col_text(st, 7));
    c->issued_at_ms = ledger__col_u64(st, 8);
    c->state_at_ms = ledger__col_u64(st, 9);
    if (rc == NU_OK)
        rc = ledger__col_str(st, 10, c->detail, sizeof(c->detail));
    c->revoked_at_ms = ledger__col_u64(st, 11);
    if (rc == NU_OK)
        rc = ledger__col_str(st, 12, c->revoke_reason, sizeof(c->revoke_reason));
    if (rc == NU_OK && c->state == 0)
        rc = NU_ERR_DB;
    return rc;
}

/* Run a one-row lookup: NU_OK with the row ready (caller resets),
 * NOT_FOUND (statement already reset), or a database error. */
int ledger__step_one(struct cloud_ledger *l, struct ledger_store_stmt *st, const char *what)
{
    int rc;

    (void)l;
    (void)what;
    if (ledger__row(st, &rc))
        return NU_OK;
    rc = rc == NU_OK ? NU_ERR_NOT_FOUND : rc;
    ledger__reset(st);
    return rc;
}

/* Step statement `id` (one text parameter, `key`) to its one row: NU_OK with
 * *out_st on the row (caller resets), NOT_FOUND, or a database error. */
int ledger__row_by_key(struct cloud_ledger *l, enum ledger_stmt id, const char *key,
                       const char *what, struct ledger_store_stmt **out_st)
{
    int rc = ledger__stmt(l, id, out_st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(*out_st, 1, key);
    return ledger__step_one(l, *out_st, what);
}

int ledger__job_read(struct cloud_ledger *l, const char *job_id,
                     struct cloud_ledger_job *out)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__row_by_key(l, ST_JOB_GET, job_id, "job get", &st);
    if (rc != NU_OK)
        return rc;
    rc = ledger__job_row(st, out);
    ledger__reset(st);
    return rc;
}

/* A programmer's state: NU_OK (enrolled), REVOKED, NOT_FOUND, or a DB error.
 * out_serial (may be NULL) receives its certificate serial. */
int ledger__prog_state(struct cloud_ledger *l, const char *programmer_id,
                       char out_serial[CLOUD_LEDGER_SERIAL_MAX + 1])
{
    struct ledger_store_stmt *st = NULL;
    const unsigned char *state;
    int rc = ledger__row_by_key(l, ST_PROG_STATE, programmer_id, "programmer state", &st);
    if (rc != NU_OK)
        return rc;
    state = ledger__col_text(st, 0);
    if (out_serial)
        rc = ledger__col_str(st, 1, out_serial, CLOUD_LEDGER_SERIAL_MAX + 1);
    if (rc == NU_OK && !(state && strcmp((const char *)state, "enrolled") == 0))
        rc = NU_ERR_REVOKED;
    ledger__reset(st);
    return rc;
}

/* The requester's allocation in a job: NU_OK, NOT_FOUND, or a DB error. */
int ledger__alloc_read(struct cloud_ledger *l, const char *job_id, const char *programmer_id,
                       uint32_t *out_limit, uint32_t *out_issued)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__stmt(l, ST_ALLOC_GET, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, job_id);
    ledger__bind_text(st, 2, programmer_id);
    rc = ledger__step_one(l, st, "allocation get");
    if (rc != NU_OK)
        return rc;
    *out_limit = ledger__col_u32(st, 0);
    *out_issued = ledger__col_u32(st, 1);
    ledger__reset(st);
    return NU_OK;
}

/* Allocations of a job into out[cap]; *out_n is the full count. */
int ledger__alloc_list(struct cloud_ledger *l, const char *job_id,
                       struct cloud_ledger_alloc *out, size_t cap, size_t *out_n)
{
    struct ledger_store_stmt *st = NULL;
    size_t n = 0;
    int rc = ledger__stmt(l, ST_ALLOC_LIST, &st);

    if (rc != NU_OK)
        return rc;
    ledger__bind_text(st, 1, job_id);
    while (ledger__row(st, &rc)) {
        if (n < cap) {
            memset(&out[n], 0, sizeof(out[n]));
            if (ledger__col_str(st, 0, out[n].programmer_id, sizeof(out[n].programmer_id)) !=
                NU_OK) {
                ledger__reset(st);
                return NU_ERR_DB;
            }
            out[n].limit = ledger__col_u32(st, 1);
            out[n].issued = ledger__col_u32(st, 2);
        }
        n++;
    }
    ledger__reset(st);
    if (out_n)
        *out_n = n;
    return rc;
}

/* Resolve a certificate reference into *out. */
int ledger__cert_find(struct cloud_ledger *l, const struct cloud_ledger_cert_ref *ref,
                      struct cloud_ledger_cert *out)
{
    char serial[CLOUD_LEDGER_SERIAL_MAX + 1];
    struct ledger_store_stmt *st = NULL;
    int rc;

    if (ref->serial) {
        rc = ledger__serial_norm(ref->serial, serial);
        if (rc == NU_OK)
            rc = ledger__stmt(l, ST_CERT_BY_SERIAL, &st);
        if (rc != NU_OK)
            return rc;
        ledger__bind_text(st, 1, serial);
    } else {
        rc = ledger__stmt(l, ST_CERT_BY_JOB_UID, &st);
        if (rc != NU_OK)
            return rc;
        ledger__bind_text(st, 1, ref->job_id);
        ledger__bind_blob(st, 2, ref->device_uid, ref->device_uid_len);
    }
    rc = ledger__step_one(l, st, "certificate get");
    if (rc != NU_OK)
        return rc;
    rc = ledger__cert_row(st, out);
    ledger__reset(st);
    return rc;
}

int ledger__cert_ref_check(const struct cloud_ledger_cert_ref *ref)
{
    int rc;

    if (!ref)
        return NU_ERR_INVALID_ARG;
    if (ref->serial) {
        char tmp[CLOUD_LEDGER_SERIAL_MAX + 1];
        return ledger__serial_norm(ref->serial, tmp);
    }
    rc = ledger__id_check(ref->job_id);
    if (rc != NU_OK)
        return rc;
    if (!ref->device_uid || ref->device_uid_len == 0)
        return NU_ERR_INVALID_ARG;
    return ref->device_uid_len > CLOUD_LEDGER_UID_MAX ? NU_ERR_TOO_LARGE : NU_OK;
}

/* Walk a cached statement's rows: decode each with `row` into `item` and
 * hand it to `visit`. Returns NU_OK, a DB error, or the visitor's value. */
int ledger__walk(struct cloud_ledger *l, struct ledger_store_stmt *st,
                 int (*row)(struct ledger_store_stmt *, void *), void *item,
                 int (*visit)(void *, const void *), void *ctx)
{
    int rc;

    (void)l;
    while (ledger__row(st, &rc)) {
        rc = row(st, item);
        if (rc == NU_OK)
            rc = visit(ctx, item);
        if (rc != NU_OK)
            goto out;
    }
out:
    ledger__reset(st);
    return rc;
}

/* A whole listing of statement `id` (no parameters) in one read transaction. */
int ledger__list_all(struct cloud_ledger *l, enum ledger_stmt id,
                     int (*row)(struct ledger_store_stmt *, void *), void *item,
                     int (*visit)(void *, const void *), void *ctx)
{
    struct ledger_store_stmt *st = NULL;
    int rc = ledger__begin(l, 0);
    if (rc == NU_OK)
        rc = ledger__stmt(l, id, &st);
    if (rc == NU_OK)
        rc = ledger__walk(l, st, row, item, visit, ctx);
    ledger__rollback(l);
    return rc;
}
