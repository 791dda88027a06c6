/*
 * The station from the outside, on a real stack: `nusec stack up` (PKI,
 * SoftHSM2, mosquitto + nusec_auth, nusec-cloud, nusec-station), the `nusec`
 * CLI, and a fake programmer speaking MQTT with a programmer certificate
 * issued here by the Fleet CA in the HSM (the real programmer needs the
 * cloud's job and firmware operations to produce anything). Packages are
 * signed by the HSM's package key, as the cloud signs them.
 *
 * What is checked: tampered packages refused at import; import -> start ->
 * the programmer receives PackageDelivery + START on its command topic; its
 * status and events are journaled (QoS 1 duplicates once) and counted by
 * `production status --json`; `monitor --json` lines parse as JSON; a
 * programmer that crashes (last will) and comes back idle with work left
 * gets START again; events sent while the station is down are journaled
 * after its restart, which resumes the job; STOP; a job ends and
 * `production start --wait` exits 0; the broker refuses commands to a
 * programmer the station does not own; a failing `stack up` leaves nothing
 * running.
 */
#include "station_db.h"
#include "station_fixture.h"
#include "station_owners.h"

#include "nu_client.h"
#include "nu_crypto.h"
#include "nu_envelope.h"
#include "nu_err.h"
#include "nu_hsm.h"
#include "nu_mqtt.h"
#include "nu_pki.h"
#include "nu_test.h"
#include "nu_util.h"
#include "nu_x509.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define NUSEC NUSEC_BINARY_DIR "/bin/nusec"
#define PROGRAMMER NUSEC_BINARY_DIR "/bin/nusec-programmer"
#define IDLE NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_IDLE
#define PRODUCING NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_PRODUCING
#define OFFLINE NUSEC__V1__PROGRAMMER_STATE__PROGRAMMER_STATE_OFFLINE
#define BODY_DELIVERY NUSEC__V1__ENVELOPE__BODY_PACKAGE_DELIVERY
#define BODY_COMMAND NUSEC__V1__ENVELOPE__BODY_PRODUCTION_COMMAND
#define START NUSEC__V1__PRODUCTION_ACTION__PRODUCTION_ACTION_START
#define STOP NUSEC__V1__PRODUCTION_ACTION__PRODUCTION_ACTION_STOP

static char self_exe[512];
static char tmp[256], dir[300];
static struct nu_hsm *hsm;
static struct nu_hsm_key *package_key;
static const struct nu_signer *package_signer;
static struct nu_p256_key *prog_pkg_key; /* the fake programmer's package key */
static uint8_t prog_pkg_pub[NU_P256_PUB_LEN];

/* ---- a fake programmer ------------------------------------------------------------------- */

struct cmd {
    int body;
    int action;
    char job[65];
    uint8_t *pkg;
    size_t pkg_len;
};

struct fake {
    char id[32];
    struct nu_mqtt *m;
    struct nu_envelope_sender *sender;
    pthread_mutex_t lock;
    struct cmd inbox[64];
    size_t n;
};

static struct fake prog_a, prog_b;

static void fake_on_cmd(struct nu_mqtt *m, const struct nu_mqtt_msg *msg, void *ud)
{
    struct fake *f = ud;
    Nusec__V1__Envelope *env = NULL;
    if (nu_envelope_unpack(msg->payload, msg->len, &env, NULL) != NU_OK)
        return;
    pthread_mutex_lock(&f->lock);
    if (f->n < sizeof(f->inbox) / sizeof(f->inbox[0])) {
        struct cmd *c = &f->inbox[f->n++];
        memset(c, 0, sizeof(*c));
        c->body = env->body_case;
        if (env->body_case == BODY_COMMAND) {
            c->action = env->production_command->action;
            snprintf(c->job, sizeof(c->job), "%s", env->production_command->job_id);
        } else if (env->body_case == BODY_DELIVERY) {
            c->pkg_len = env->package_delivery->sealed_package.len;
            c->pkg = malloc(c->pkg_len);
            if (c->pkg)
                memcpy(c->pkg, env->package_delivery->sealed_package.data, c->pkg_len);
        }
    }
    pthread_mutex_unlock(&f->lock);
    nu_envelope_free(env);
}

/* Index of the first message at or after `from` with this body (and action, job); -1. */
static int fake_find(struct fake *f, size_t from, int body, int action, const char *job)
{
    int found = -1;
    pthread_mutex_lock(&f->lock);
    for (size_t i = from; i < f->n && found < 0; i++) {
        const struct cmd *c = &f->inbox[i];
        if (c->body == body &&
            (body != BODY_COMMAND || (c->action == action && (!job || !strcmp(c->job, job)))))
            found = (int)i;
    }
    pthread_mutex_unlock(&f->lock);
    return found;
}

static int fake_wait(struct fake *f, size_t from, int body, int action, const char *job, int ms)
{
    for (int waited = 0; waited <= ms; waited += 50) {
        int i = fake_find(f, from, body, action, job);
        if (i >= 0)
            return i;
        usleep(50000);
    }
    return -1;
}

static size_t fake_mark(struct fake *f)
{
    pthread_mutex_lock(&f->lock);
    size_t n = f->n;
    pthread_mutex_unlock(&f->lock);
    return n;
}

static void fake_clear(struct fake *f)
{
    pthread_mutex_lock(&f->lock);
    for (size_t i = 0; i < f->n; i++)
        free(f->inbox[i].pkg);
    f->n = 0;
    pthread_mutex_unlock(&f->lock);
}

static int cert_paths(const char *id, char *cert, char *key, size_t cap)
{
    snprintf(cert, cap, "%s/%s.crt", tmp, id);
    snprintf(key, cap, "%s/%s.key", tmp, id);
    return 0;
}

/* A programmer identity: software key, certificate from the Fleet CA in the HSM. */
static int make_identity(const char *id)
{
    char cert[512], key[512], fleet_path[512];
    uint8_t *fleet_pem = NULL, *fleet_der = NULL, *der = NULL;
    size_t fleet_pem_len = 0, fleet_len = 0, der_len = 0, pem_len = 0;
    char *pem = NULL;
    struct nu_p256_key *k = NULL;
    struct nu_hsm_key *ca = NULL;
    cert_paths(id, cert, key, sizeof(cert));
    snprintf(fleet_path, sizeof(fleet_path), "%s/pki/fleet-ca.pem", dir);
    int rc = nu_p256_key_generate(&k);
    if (!rc)
        rc = nu_p256_key_save_pem(k, key);
    if (!rc)
        rc = nu_file_read(fleet_path, 65536, &fleet_pem, &fleet_pem_len);
    if (!rc)
        rc = nu_x509_pem_to_der((char *)fleet_pem, fleet_pem_len, NU_X509_PEM_CERT, &fleet_der,
                                &fleet_len, NULL);
    if (!rc)
        rc = nu_hsm_key_open(hsm, NU_PKI_KEY_FLEET_CA, &ca);
    struct nu_x509_issue_req req = {
        .cn = id,
        .ou = "programmer",
        .o = "NuSEC",
        .not_before = (int64_t)(nu_time_ms() / 1000) - 60,
        .not_after = (int64_t)(nu_time_ms() / 1000) + 86400,
        .key_usage = NU_X509_KU_DIGITAL_SIGNATURE,
        .ext_key_usage = NU_X509_EKU_CLIENT_AUTH,
    };
    if (!rc)
        rc = nu_p256_key_pub(k, req.pub);
    if (!rc)
        rc = nu_x509_issue(&req, nu_hsm_key_signer(ca), fleet_der, fleet_len, &der, &der_len);
    if (!rc)
        rc = nu_x509_der_to_pem(der, der_len, NU_X509_PEM_CERT, &pem, &pem_len);
    if (!rc)
        rc = nu_file_write_atomic(cert, pem, pem_len, 0644);
    nu_hsm_key_close(ca);
    nu_p256_key_destroy(k);
    free(fleet_pem);
    free(fleet_der);
    free(der);
    free(pem);
    return rc;
}

static int fake_open(struct fake *f, const char *id)
{
    char cert[512], key[512];
    memset(f, 0, sizeof(*f));
    pthread_mutex_init(&f->lock, NULL);
    snprintf(f->id, sizeof(f->id), "%s", id);
    cert_paths(id, cert, key, sizeof(cert));
    struct nu_client_opts o = {
        .dir = dir, .identity = id, .cert_file = cert, .key_file = key, .clean_start = 1};
    char topic[128];
    snprintf(topic, sizeof(topic), "nusec/v1/prog/%s/cmd", id);
    int rc = nu_envelope_sender_create(id, NU_ENVELOPE_SEQ_FROM_CLOCK, &f->sender);
    if (!rc)
        rc = nu_client_connect(&o, &f->m);
    if (!rc)
        rc = nu_mqtt_subscribe(f->m, topic, 1, fake_on_cmd, f);
    return rc;
}

static void fake_close(struct fake *f)
{
    nu_mqtt_destroy(f->m);
    nu_envelope_sender_destroy(f->sender);
    fake_clear(f);
    f->m = NULL;
    f->sender = NULL;
}

static int fake_send(struct fake *f, const char *topic, ProtobufCMessage *body, int retain)
{
    struct nu_envelope_frame fr;
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = nu_envelope_frame_init(&fr, f->sender, body);
    if (!rc)
        rc = nu_envelope_pack(&fr.env, &buf, &len, NULL);
    if (!rc)
        rc = nu_mqtt_publish(f->m, topic, buf, len, 1, retain);
    free(buf);
    return rc;
}

static int fake_status(struct fake *f, int state, const char *job, uint32_t limit, uint32_t counter)
{
    char topic[128];
    Nusec__V1__ProgrammerStatus s = NUSEC__V1__PROGRAMMER_STATUS__INIT;
    s.programmer_id = f->id;
    s.state = (Nusec__V1__ProgrammerState)state;
    s.job_id = (char *)job;
    s.limit = limit;
    s.counter = counter;
    snprintf(topic, sizeof(topic), "nusec/v1/prog/%s/status", f->id);
    return fake_send(f, topic, &s.base, 1);
}

/* device.provisioned (ok) or device.failed; returns the packed bytes for replays. */
static int fake_device(struct fake *f, const char *job, uint8_t uid, int ok, uint8_t **keep,
                       size_t *keep_len)
{
    char topic[160];
    const char *kind = ok ? "device.provisioned" : "device.failed";
    uint8_t u[8] = {0x5e, 0x5e, uid};
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(topic, sizeof(topic), "nusec/v1/events/programmer/%s/%s", f->id, kind);
    int rc = sf_event(f->id, nu_time_ms() * 1000u + uid, kind, job, u, sizeof(u), uid % 4,
                      ok ? 1 : 2, ok ? 0 : NU_ERR_BOOT_FAILED, ok ? NULL : "boot", &buf, &len);
    if (!rc)
        rc = nu_mqtt_publish(f->m, topic, buf, len, 1, 0);
    if (keep && !rc) {
        *keep = buf;
        *keep_len = len;
    } else {
        free(buf);
    }
    return rc;
}

/* device.failed with the cloud's definite refusal `code` (e.g. QUOTA_EXHAUSTED). */
static int fake_refused(struct fake *f, const char *job, uint8_t uid, int code)
{
    char topic[160];
    uint8_t u[8] = {0x5e, 0x7e, uid};
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(topic, sizeof(topic), "nusec/v1/events/programmer/%s/device.failed", f->id);
    int rc = sf_event(f->id, nu_time_ms() * 1000u + uid, "device.failed", job, u, sizeof(u), 0, 2,
                      code, "cert.request", &buf, &len);
    if (!rc)
        rc = nu_mqtt_publish(f->m, topic, buf, len, 1, 0);
    free(buf);
    return rc;
}

/* ---- helpers -------------------------------------------------------------------------------- */

static int make_pkg(const char *job, const char *prog, uint32_t limit, const char *name, char *path,
                    size_t cap)
{
    struct sf_pkg_opts o = {.job_id = job, .programmer_id = prog, .limit = limit};
    uint8_t *buf = NULL;
    size_t len = 0;
    int rc = sf_package(&o, package_signer, prog_pkg_pub, &buf, &len);
    if (!rc)
        rc = sf_write(tmp, name, buf, len, path, cap);
    free(buf);
    return rc;
}

static char *slurp(const char *name)
{
    char path[512];
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/%s", tmp, name);
    return nu_file_read(path, 1 << 20, &buf, &len) == NU_OK ? (char *)buf : NULL;
}

static int contains(const char *name, const char *needle)
{
    char *t = slurp(name);
    int found = t && strstr(t, needle);
    if (!found)
        fprintf(stderr, "'%s' not in %s:\n%s\n", needle, name, t ? t : "(none)");
    free(t);
    return found;
}

/* Poll `production status --json` until the python condition holds on r (the report). */
static int status_until(const char *job, const char *cond, int seconds)
{
    for (int i = 0; i < seconds * 5; i++) {
        if (nu_test_sh(NUSEC " production status --dir %s --job %s --json > %s/st.json 2>&1 && "
                             "python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); "
                             "sys.exit(0 if (%s) else 1)' %s/st.json",
                       dir, job, tmp, cond, tmp) == 0)
            return 0;
        usleep(200000);
    }
    char *t = slurp("st.json");
    fprintf(stderr, "condition '%s' not met; last status: %s\n", cond, t ? t : "(none)");
    free(t);
    return -1;
}

static int db_prog_state(const char *id, char *state, size_t cap)
{
    struct station_db *db = NULL;
    struct station_programmer p;
    int rc = station_db_open_dir(dir, &db);
    if (!rc)
        rc = station_db_programmer_get(db, id, &p);
    if (!rc)
        snprintf(state, cap, "%s", p.state);
    station_db_close(db);
    return rc;
}

/* The station recorded a status of `id` with this counter. */
static int wait_prog_counter(const char *id, uint32_t counter, int ms)
{
    struct station_db *db = NULL;
    struct station_programmer p = {.counter = 0};
    for (int waited = 0; waited <= ms; waited += 50) {
        int rc = station_db_open_dir(dir, &db);
        if (!rc)
            rc = station_db_programmer_get(db, id, &p);
        station_db_close(db);
        db = NULL;
        if (!rc && p.counter == counter)
            return 0;
        usleep(50000);
    }
    fprintf(stderr, "%s counter is %u, not %u\n", id, (unsigned)p.counter, (unsigned)counter);
    return -1;
}

static int wait_prog_state(const char *id, const char *want, int ms)
{
    char state[16] = "";
    for (int waited = 0; waited <= ms; waited += 50) {
        if (db_prog_state(id, state, sizeof(state)) == NU_OK && !strcmp(state, want))
            return 0;
        usleep(50000);
    }
    fprintf(stderr, "%s is '%s', not '%s'\n", id, state, want);
    return -1;
}

/* Gone: no such process, or a zombie its new parent has not reaped yet. */
static int gone(pid_t pid)
{
    char path[64], stat[256];
    snprintf(path, sizeof(path), "/proc/%ld/stat", (long)pid);
    FILE *f = fopen(path, "r");
    if (!f)
        return 1;
    size_t n = fread(stat, 1, sizeof(stat) - 1, f);
    fclose(f);
    stat[n] = '\0';
    const char *paren = strrchr(stat, ')');
    return !paren || paren[1] != ' ' || paren[2] == 'Z' || paren[2] == 'X';
}

static pid_t pidfile(const char *name)
{
    char path[512];
    uint8_t *t = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/run/%s.pid", dir, name);
    pid_t pid = nu_file_read(path, 64, &t, &len) == NU_OK ? (pid_t)atol((char *)t) : 0;
    free(t);
    return pid;
}

/* ---- suite set-up ------------------------------------------------------------------------------
 */

static int setup(void)
{
    if (nu_test_tmpdir("station", tmp, sizeof(tmp)))
        return -1;
    snprintf(dir, sizeof(dir), "%s/state", tmp);
    if (getenv("NUSEC_KEEP_TMP"))
        fprintf(stderr, "integration_station: keeping %s\n", tmp);
    if (nu_test_sh(NUSEC " stack up --dir %s --programmers 0 > %s/up.txt 2>&1", dir, tmp)) {
        nu_test_sh("cat %s/up.txt", tmp);
        return -1;
    }
    int rc = nu_pki_open_hsm(dir, 1, &hsm);
    if (!rc)
        rc = nu_hsm_key_open(hsm, NU_PKI_KEY_PACKAGE, &package_key);
    if (!rc) {
        package_signer = nu_hsm_key_signer(package_key);
        rc = nu_p256_key_generate(&prog_pkg_key);
    }
    if (!rc)
        rc = nu_p256_key_pub(prog_pkg_key, prog_pkg_pub);
    if (!rc)
        rc = make_identity("prog-a");
    if (!rc)
        rc = make_identity("prog-b");
    /* What `stack up` does for the programmers it enrolls; the broker re-reads it in ~200 ms. */
    if (!rc)
        rc = station_owners_add(dir, "station", "prog-a");
    usleep(400000);
    return rc ? -1 : 0;
}

static int teardown(void)
{
    fake_close(&prog_a);
    fake_close(&prog_b);
    nu_hsm_key_close(package_key);
    nu_hsm_close(hsm);
    nu_p256_key_destroy(prog_pkg_key);
    nu_test_sh(NUSEC " stack down --dir %s > %s/down.txt 2>&1", dir, tmp);
    package_key = NULL;
    hsm = NULL;
    return 0;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_stack_status(void)
{
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " stack status --dir %s > %s/ss.txt 2>&1", dir, tmp), 0);
    CU_ASSERT_TRUE(contains("ss.txt", "broker"));
    CU_ASSERT_TRUE(contains("ss.txt", "station"));
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " stack status --dir %s --json | python3 -c 'import json,sys; "
                                     "s=json.load(sys.stdin); "
                                     "assert [x[\"service\"] for x in s] == [\"broker\",\"cloud\","
                                     "\"station\",\"dashboard\"] and all(x[\"alive\"] for x in s), s'",
                               dir),
                    0);
}

static void test_inspect_and_import_refuse_tampered(void)
{
    char good[512], bad[512];
    CU_ASSERT_EQUAL_FATAL(make_pkg("J1", "prog-a", 8, "j1.nspkg", good, sizeof(good)), NU_OK);
    uint8_t *buf = NULL;
    size_t len = 0;
    CU_ASSERT_EQUAL_FATAL(nu_file_read(good, 1 << 20, &buf, &len), NU_OK);
    buf[len - 10] ^= 0x01; /* inside the signature */
    CU_ASSERT_EQUAL(sf_write(tmp, "j1-tampered.nspkg", buf, len, bad, sizeof(bad)), NU_OK);
    free(buf);

    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " package inspect %s --dir %s > %s/i.txt 2>&1", good, dir, tmp), 0);
    CU_ASSERT_TRUE(contains("i.txt", "verdict     intact"));
    CU_ASSERT_TRUE(contains("i.txt", "programmer  prog-a"));
    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " package inspect %s --dir %s --json | python3 -c "
                         "'import json,sys; p=json.load(sys.stdin); "
                         "assert p[\"intact\"] and p[\"job\"]==\"J1\" and p[\"limit\"]==8, p'",
                   good, dir),
        0);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " package inspect %s --dir %s > %s/i.txt 2>&1", bad, dir, tmp),
                    1);
    CU_ASSERT_TRUE(contains("i.txt", "TAMPERED"));

    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " package import %s --dir %s > %s/imp.txt 2>&1", bad, dir, tmp), 1);
    CU_ASSERT_TRUE(contains("imp.txt", "TAMPERED"));
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " package list --dir %s --json > %s/l.txt 2>&1", dir, tmp), 0);
    char *l = slurp("l.txt");
    CU_ASSERT_TRUE(l && strcmp(l, "[]\n") == 0); /* nothing imported: an empty list */
    free(l);
    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " package import %s --dir %s > %s/imp.txt 2>&1", good, dir, tmp), 0);
    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " package import %s --dir %s > %s/imp.txt 2>&1", good, dir, tmp), 3);
    CU_ASSERT_TRUE(contains("imp.txt", "already imported"));
}

static void test_start_delivers_package_then_start(void)
{
    CU_ASSERT_EQUAL_FATAL(fake_open(&prog_a, "prog-a"), NU_OK);
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "", 0, 0), NU_OK);
    CU_ASSERT_EQUAL(wait_prog_state("prog-a", "idle", 5000), 0);
    /* A monitor, before anything happens: 6 events of J1 expected. */
    CU_ASSERT_EQUAL(nu_test_sh("(" NUSEC " monitor --dir %s --job J1 --json --count 6 --timeout 30"
                               " > %s/mon.jsonl 2> %s/mon.err; echo $? > %s/mon.rc) &",
                               dir, tmp, tmp, tmp),
                    0);
    for (int i = 0; i < 100 && nu_test_sh("grep -q listening %s/mon.err 2>/dev/null", tmp); i++)
        usleep(50000);
    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " production start --job J1 --dir %s > %s/ps.txt 2>&1", dir, tmp), 0);
    CU_ASSERT_TRUE(contains("ps.txt", "production of J1 started"));
    int d = fake_wait(&prog_a, 0, BODY_DELIVERY, 0, NULL, 5000);
    int s = fake_wait(&prog_a, 0, BODY_COMMAND, START, "J1", 5000);
    CU_ASSERT_TRUE_FATAL(d >= 0 && s > d); /* the package first, then START */
    /* What arrives is the imported package, byte for byte. */
    char path[512];
    uint8_t *buf = NULL;
    size_t len = 0;
    snprintf(path, sizeof(path), "%s/j1.nspkg", tmp);
    CU_ASSERT_EQUAL_FATAL(nu_file_read(path, 1 << 20, &buf, &len), NU_OK);
    CU_ASSERT_EQUAL(prog_a.inbox[d].pkg_len, len);
    CU_ASSERT_TRUE(prog_a.inbox[d].pkg && !memcmp(prog_a.inbox[d].pkg, buf, len));
    free(buf);
}

static void test_events_journaled_counted_and_monitored(void)
{
    uint8_t *dup = NULL;
    size_t dup_len = 0;
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J1", 8, 0), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J1", 1, 1, &dup, &dup_len), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J1", 2, 1, NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J1", 3, 1, NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J1", 4, 0, NULL, NULL), NU_OK);
    /* The monitor saw 6 events of J1 (2 of the station, 4 devices) as JSON lines. */
    for (int i = 0; i < 200 && nu_test_sh("test -s %s/mon.rc", tmp); i++)
        usleep(50000);
    CU_ASSERT_TRUE(contains("mon.rc", "0"));
    CU_ASSERT_EQUAL(
        nu_test_sh("python3 -c 'import json,sys; "
                   "e=[json.loads(l) for l in sys.stdin]; "
                   "k=[x[\"kind\"] for x in e]; "
                   "assert len(e)==6 and all(x[\"job\"]==\"J1\" for x in e), e; "
                   "assert k.count(\"device.provisioned\")==3, k; "
                   "assert k.count(\"device.failed\")==1, k; "
                   "assert \"package.delivered\" in k and \"production.started\" in k, k; "
                   "f=[x for x in e if x[\"kind\"]==\"device.failed\"][0]; "
                   "assert f[\"error\"]==\"BOOT_FAILED\" and f[\"sender\"]==\"prog-a\"'"
                   " < %s/mon.jsonl",
                   tmp),
        0);
    /* A QoS 1 duplicate (same sender, same sequence) is journaled once. */
    CU_ASSERT_EQUAL(nu_mqtt_publish(prog_a.m,
                                    "nusec/v1/events/programmer/prog-a/device.provisioned", dup,
                                    dup_len, 1, 0),
                    NU_OK);
    free(dup);
    CU_ASSERT_EQUAL(status_until("J1",
                                 "r[\"jobs\"][0][\"done\"]==3 and "
                                 "r[\"jobs\"][0][\"failed\"]==1 and "
                                 "r[\"jobs\"][0][\"programmers\"][0][\"state\"]==\"producing\"",
                                 10),
                    0);
    usleep(300000);
    struct station_db *db = NULL;
    uint64_t n = 0;
    CU_ASSERT_EQUAL_FATAL(station_db_open_dir(dir, &db), NU_OK);
    struct station_counts c;
    CU_ASSERT_EQUAL(station_db_counts(db, "J1", "prog-a", 0, &c), NU_OK);
    CU_ASSERT_EQUAL(c.done, 3);
    CU_ASSERT_EQUAL(c.failed, 1);
    CU_ASSERT_EQUAL(
        nu_test_sh("test $(sqlite3 %s/station/station.db \"SELECT COUNT(*) FROM journal "
                   "WHERE sender='prog-a'\") -eq 4",
                   dir),
        0);
    CU_ASSERT_EQUAL(station_db_journal_count(db, "J1", &n), NU_OK);
    CU_ASSERT_TRUE(n >= 6);
    station_db_close(db);
}

/* Child mode: a second session of prog-a ("prog-a:crash") with a last will, killed by the test. */
static int crash_child(void)
{
    struct fake f;
    char cert[512], key[512], topic[128];
    uint8_t *will = NULL;
    size_t will_len = 0;
    memset(&f, 0, sizeof(f));
    snprintf(f.id, sizeof(f.id), "prog-a");
    cert_paths("prog-a", cert, key, sizeof(cert));
    snprintf(topic, sizeof(topic), "nusec/v1/prog/prog-a/status");
    if (sf_status("prog-a", 1, OFFLINE, "J1", 8, 8, &will, &will_len) ||
        nu_envelope_sender_create("prog-a", NU_ENVELOPE_SEQ_FROM_CLOCK, &f.sender))
        return 2;
    struct nu_client_opts o = {
        .dir = dir,
        .identity = "prog-a",
        .cert_file = cert,
        .key_file = key,
        .client_id = "prog-a:crash",
        .clean_start = 1,
        .will = {.topic = topic, .payload = will, .len = will_len, .qos = 1, .retain = 1}};
    if (nu_client_connect(&o, &f.m) || fake_status(&f, PRODUCING, "J1", 8, 8))
        return 2;
    for (;;)
        pause(); /* until SIGKILL */
}

static void test_programmer_crash_and_comeback_gets_start_again(void)
{
    pid_t child = fork();
    if (child == 0) {
        execl(self_exe, self_exe, "--crash-child", tmp, dir, (char *)NULL);
        _exit(127);
    }
    CU_ASSERT_TRUE_FATAL(child > 0);
    /* The child's status reached the station: its session is up. Every unit
     * of its package is taken (8 of 8): chips in its sockets hold the last. */
    CU_ASSERT_EQUAL(wait_prog_counter("prog-a", 8, 10000), 0);
    size_t mark = fake_mark(&prog_a);
    kill(child, SIGKILL);
    waitpid(child, NULL, 0);
    /* The broker publishes the will: the station sees prog-a go offline. */
    CU_ASSERT_EQUAL(wait_prog_state("prog-a", "offline", 5000), 0);
    /* It comes back idle, its counter at the limit: not finished (the crash
     * left chips half done, with their units): the station delivers and
     * starts it again, and the programmer finishes them. */
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J1", 8, 8), NU_OK);
    int d = fake_wait(&prog_a, mark, BODY_DELIVERY, 0, NULL, 5000);
    int s = fake_wait(&prog_a, mark, BODY_COMMAND, START, "J1", 5000);
    CU_ASSERT_TRUE(d >= 0 && s > d);
    CU_ASSERT_EQUAL(nu_test_sh("sqlite3 %s/station/station.db \"SELECT kind FROM journal\" | "
                               "grep -q programmer.offline",
                               dir),
                    0);
}

static void test_station_restart_resumes_and_loses_nothing(void)
{
    pid_t st = pidfile("station");
    CU_ASSERT_TRUE_FATAL(st > 0);
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J1", 8, 3), NU_OK);
    CU_ASSERT_EQUAL(wait_prog_state("prog-a", "producing", 5000), 0);
    kill(st, SIGTERM);
    for (int i = 0; i < 100 && !gone(st); i++)
        usleep(50000);
    CU_ASSERT_TRUE(gone(st));
    /* While the station is down: a device, then prog-a crashes and comes back idle. */
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J1", 5, 1, NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(fake_status(&prog_a, OFFLINE, "J1", 8, 4), NU_OK);
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J1", 8, 4), NU_OK);
    size_t mark = fake_mark(&prog_a);
    /* stack up starts what is missing: the station only. */
    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " stack up --dir %s --programmers 0 > %s/up2.txt 2>&1", dir, tmp), 0);
    CU_ASSERT_TRUE(contains("up2.txt", "broker     already running"));
    CU_ASSERT_TRUE(pidfile("station") != st);
    int s = fake_wait(&prog_a, mark, BODY_COMMAND, START, "J1", 8000);
    CU_ASSERT_TRUE(s >= 0);
    CU_ASSERT_TRUE(fake_find(&prog_a, mark, BODY_DELIVERY, 0, NULL) >= 0);
    /* The device reported during the outage is in the journal. */
    CU_ASSERT_EQUAL(status_until("J1", "r[\"jobs\"][0][\"done\"]==4", 10), 0);
}

static void test_stop_reaches_a_producing_programmer(void)
{
    size_t mark = fake_mark(&prog_a);
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J1", 8, 4), NU_OK);
    CU_ASSERT_EQUAL(wait_prog_state("prog-a", "producing", 5000), 0);
    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " production stop --job J1 --dir %s > %s/stop.txt 2>&1", dir, tmp), 0);
    CU_ASSERT_TRUE(fake_wait(&prog_a, mark, BODY_COMMAND, STOP, "J1", 5000) >= 0);
    CU_ASSERT_EQUAL(status_until("J1", "r[\"jobs\"][0][\"state\"]==\"stopped\"", 5), 0);
    /* It stops: idle, not finished. */
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J1", 8, 4), NU_OK);
}

static void test_wait_follows_a_job_to_done(void)
{
    char path[512];
    CU_ASSERT_EQUAL_FATAL(make_pkg("J3", "prog-a", 2, "j3.nspkg", path, sizeof(path)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh(NUSEC " package import %s --dir %s > /dev/null", path, dir),
                          0);
    size_t mark = fake_mark(&prog_a);
    CU_ASSERT_EQUAL(nu_test_sh("(" NUSEC " production start --job J3 --wait --interval 1"
                               " --timeout 30 --dir %s > %s/wait.txt 2>&1; echo $? > %s/wait.rc) &",
                               dir, tmp, tmp),
                    0);
    CU_ASSERT_TRUE_FATAL(fake_wait(&prog_a, mark, BODY_COMMAND, START, "J3", 8000) >= 0);
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J3", 2, 0), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J3", 11, 1, NULL, NULL), NU_OK);
    /* The programmer's count reaches the limit before its last device event
     * does (as on a real line): the job is not done on "1 of 2". */
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J3", 2, 2), NU_OK);
    usleep(1500000);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J3", 12, 1, NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J3", 2, 2), NU_OK);
    for (int i = 0; i < 200 && nu_test_sh("test -s %s/wait.rc", tmp); i++)
        usleep(50000);
    CU_ASSERT_TRUE(contains("wait.rc", "0"));
    CU_ASSERT_TRUE(contains("wait.txt", "J3: limit reached: 2 of 2 done"));
    CU_ASSERT_TRUE(contains("wait.txt", "done"));
    CU_ASSERT_TRUE(contains("wait.txt", "[########################]      2/2"));
    CU_ASSERT_EQUAL(status_until("J3",
                                 "r[\"jobs\"][0][\"state\"]==\"done\" and "
                                 "r[\"jobs\"][0][\"done\"]==2",
                                 5),
                    0);
}

static void test_two_jobs_on_one_programmer_run_one_after_the_other(void)
{
    char path[512];
    CU_ASSERT_EQUAL_FATAL(make_pkg("J4", "prog-a", 1, "j4.nspkg", path, sizeof(path)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh(NUSEC " package import %s --dir %s > /dev/null", path, dir),
                          0);
    CU_ASSERT_EQUAL_FATAL(make_pkg("J5", "prog-a", 1, "j5.nspkg", path, sizeof(path)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh(NUSEC " package import %s --dir %s > /dev/null", path, dir),
                          0);
    size_t mark = fake_mark(&prog_a);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC
                               " production start --job J4 --dir %s > /dev/null 2>&1 && " NUSEC
                               " production start --job J5 --dir %s > /dev/null 2>&1",
                               dir, dir),
                    0);
    CU_ASSERT_TRUE_FATAL(fake_wait(&prog_a, mark, BODY_COMMAND, START, "J4", 5000) >= 0);
    usleep(600000); /* three daemon polls: J5 must wait for prog-a */
    CU_ASSERT_EQUAL(fake_find(&prog_a, mark, BODY_COMMAND, START, "J5"), -1);
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J4", 1, 0), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J4", 21, 1, NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J4", 1, 1), NU_OK);
    CU_ASSERT_TRUE(fake_wait(&prog_a, mark, BODY_COMMAND, START, "J5", 5000) >= 0);
    CU_ASSERT_EQUAL(status_until("J4", "r[\"jobs\"][0][\"state\"]==\"done\"", 5), 0);
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J5", 1, 0), NU_OK);
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J5", 1, 0), NU_OK); /* tray empty */
    CU_ASSERT_EQUAL(status_until("J5",
                                 "r[\"jobs\"][0][\"state\"]==\"done\" and "
                                 "r[\"jobs\"][0][\"done\"]==0",
                                 5),
                    0);
}

/* `production start --wait JOB` in the background into wait-JOB.txt / wait-JOB.rc. */
static void wait_in_background(const char *job)
{
    CU_ASSERT_EQUAL(nu_test_sh("(" NUSEC " production start --job %s --wait --interval 1"
                               " --timeout 30 --dir %s > %s/wait-%s.txt 2>&1; echo $? >"
                               " %s/wait-%s.rc) &",
                               job, dir, tmp, job, tmp, job),
                    0);
}

static int wait_exit(const char *job)
{
    char name[64];
    snprintf(name, sizeof(name), "wait-%s.rc", job);
    for (int i = 0; i < 300 && nu_test_sh("test -s %s/%s", tmp, name); i++)
        usleep(50000);
    char *t = slurp(name);
    int rc = t ? atoi(t) : -1;
    free(t);
    return rc;
}

/* Issue 10: --wait ends with one line per final state and its documented
 * exit code; production status --json names the same outcome. */
static void test_wait_says_how_the_job_ended(void)
{
    char path[512];
    const char *jobs[] = {"J6", "J7", "J8"};
    for (int i = 0; i < 3; i++) {
        char file[32];
        snprintf(file, sizeof(file), "%s.nspkg", jobs[i]);
        CU_ASSERT_EQUAL_FATAL(make_pkg(jobs[i], "prog-a", 3, file, path, sizeof(path)), NU_OK);
        CU_ASSERT_EQUAL_FATAL(
            nu_test_sh(NUSEC " package import %s --dir %s > /dev/null", path, dir), 0);
    }
    /* Tray empty: the programmer ran out of chips before its limit. */
    size_t mark = fake_mark(&prog_a);
    wait_in_background("J6");
    CU_ASSERT_TRUE_FATAL(fake_wait(&prog_a, mark, BODY_COMMAND, START, "J6", 8000) >= 0);
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J6", 3, 0), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J6", 61, 1, NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J6", 3, 1), NU_OK);
    CU_ASSERT_EQUAL(wait_exit("J6"), 4);
    CU_ASSERT_TRUE(contains("wait-J6.txt", "J6: tray empty: 1 of 3 done, load blanks"));
    CU_ASSERT_EQUAL(status_until("J6",
                                 "r[\"jobs\"][0][\"outcome\"]==\"tray empty\" and "
                                 "r[\"jobs\"][0][\"summary\"].startswith(\"tray empty: 1 of 3\")",
                                 5),
                    0);

    /* Stopped by the operator while the programmer works. */
    mark = fake_mark(&prog_a);
    wait_in_background("J7");
    CU_ASSERT_TRUE_FATAL(fake_wait(&prog_a, mark, BODY_COMMAND, START, "J7", 8000) >= 0);
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J7", 3, 0), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J7", 71, 1, NULL, NULL), NU_OK);
    usleep(300000);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " production stop --job J7 --dir %s > /dev/null", dir), 0);
    CU_ASSERT_EQUAL(wait_exit("J7"), 5);
    CU_ASSERT_TRUE(contains("wait-J7.txt", "J7: stopped by operator: 1 of 3 done"));
    CU_ASSERT_EQUAL(status_until("J7", "r[\"jobs\"][0][\"outcome\"]==\"stopped\"", 5), 0);
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J7", 3, 1), NU_OK);

    /* The cloud refused for good: quota exhausted. */
    mark = fake_mark(&prog_a);
    wait_in_background("J8");
    CU_ASSERT_TRUE_FATAL(fake_wait(&prog_a, mark, BODY_COMMAND, START, "J8", 8000) >= 0);
    CU_ASSERT_EQUAL(fake_status(&prog_a, PRODUCING, "J8", 3, 0), NU_OK);
    CU_ASSERT_EQUAL(fake_device(&prog_a, "J8", 81, 1, NULL, NULL), NU_OK);
    CU_ASSERT_EQUAL(fake_refused(&prog_a, "J8", 82, NU_ERR_QUOTA_EXHAUSTED), NU_OK);
    usleep(300000);
    CU_ASSERT_EQUAL(fake_status(&prog_a, IDLE, "J8", 3, 2), NU_OK);
    CU_ASSERT_EQUAL(wait_exit("J8"), 6);
    CU_ASSERT_TRUE(
        contains("wait-J8.txt", "J8: cloud refused: quota exhausted: 1 of 3 done, 1 chip failed"));
    CU_ASSERT_EQUAL(status_until("J8",
                                 "r[\"jobs\"][0][\"outcome\"]==\"cloud refused\" and "
                                 "r[\"jobs\"][0][\"programmers\"][0][\"reason\"]=="
                                 "\"QUOTA_EXHAUSTED\"",
                                 5),
                    0);
}

static void test_station_cannot_command_a_programmer_it_does_not_own(void)
{
    /* Directly: the station identity publishing to prog-b's command topic. */
    struct nu_mqtt *m = NULL;
    struct nu_client_opts o = {
        .dir = dir, .identity = "station", .client_id = "station:probe", .clean_start = 1};
    CU_ASSERT_EQUAL_FATAL(nu_client_connect(&o, &m), NU_OK);
    CU_ASSERT_EQUAL(nu_mqtt_publish(m, "nusec/v1/prog/prog-b/cmd", "x", 1, 1, 0),
                    NU_ERR_NOT_AUTHORIZED);
    CU_ASSERT_EQUAL(nu_mqtt_publish(m, "nusec/v1/prog/prog-a/cmd", "x", 1, 1, 0), NU_OK);
    nu_mqtt_destroy(m);
    /* Through the daemon: the package for prog-b is never delivered; the status says why. */
    char path[512];
    CU_ASSERT_EQUAL_FATAL(make_pkg("J2", "prog-b", 4, "j2.nspkg", path, sizeof(path)), NU_OK);
    CU_ASSERT_EQUAL_FATAL(nu_test_sh(NUSEC " package import %s --dir %s > /dev/null", path, dir),
                          0);
    CU_ASSERT_EQUAL_FATAL(fake_open(&prog_b, "prog-b"), NU_OK);
    CU_ASSERT_EQUAL(fake_status(&prog_b, IDLE, "", 0, 0), NU_OK);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " production start --job J2 --dir %s > /dev/null 2>&1", dir),
                    0);
    CU_ASSERT_EQUAL(status_until("J2",
                                 "\"NOT_AUTHORIZED\" in "
                                 "r[\"jobs\"][0][\"programmers\"][0][\"error\"]",
                                 10),
                    0);
    CU_ASSERT_EQUAL(fake_mark(&prog_b), 0);
    /* Following a job nothing can move does not hang. */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " production start --job J2 --wait --timeout 20 --dir %s"
                                     " > %s/stuck.txt 2>&1",
                               dir, tmp),
                    1);
    CU_ASSERT_TRUE(contains("stuck.txt", "no programmer of the job can go on"));
    /* Ctrl-C while following leaves the job running and says how to stop it. */
    CU_ASSERT_EQUAL(nu_test_sh("(" NUSEC " production status --watch --interval 1 --job J2"
                               " --dir %s > %s/int.txt 2>&1 & p=$!; sleep 1; kill -INT $p;"
                               " wait $p; echo $? > %s/int.rc)",
                               dir, tmp, tmp),
                    0);
    CU_ASSERT_TRUE(contains("int.rc", "130"));
    CU_ASSERT_TRUE(contains("int.txt", "production goes on; stop it with: nusec production stop"));
    CU_ASSERT_EQUAL(status_until("J2", "r[\"jobs\"][0][\"state\"]==\"started\"", 2), 0);
}

static void test_failed_stack_up_leaves_nothing_running(void)
{
    char other[400];
    snprintf(other, sizeof(other), "%s/other", tmp);
    /* No nusec-cloud where NUSEC_BIN_DIR points: the broker starts, then all stops. */
    CU_ASSERT_EQUAL(nu_test_sh("NUSEC_BIN_DIR=%s " NUSEC " stack up --dir %s --programmers 0"
                               " > %s/fail.txt 2>&1",
                               tmp, other, tmp),
                    1);
    CU_ASSERT_TRUE(contains("fail.txt", "broker     up"));
    CU_ASSERT_TRUE(contains("fail.txt", "nusec-cloud not found"));
    CU_ASSERT_TRUE(contains("fail.txt", "broker     stopped"));
    CU_ASSERT_EQUAL(nu_test_sh("test -z \"$(ls %s/run)\"", other), 0);
    char *t = slurp("fail.txt");
    const char *p = t ? strstr(t, "broker     up (pid ") : NULL;
    pid_t broker = p ? (pid_t)atol(p + strlen("broker     up (pid ")) : 0;
    CU_ASSERT_TRUE(broker > 0);
    CU_ASSERT_TRUE(broker > 0 && gone(broker));
    free(t);
}

/* ---- with a real programmer ------------------------------------------------------------- */

static pid_t real_prog_pid;

static int setup_real(void)
{
    /* A second stack, with one enrolled nusec-programmer. */
    snprintf(dir, sizeof(dir), "%s/real", tmp);
    if (nu_test_sh(NUSEC " stack up --dir %s --programmers 2 --sockets 2 --devices 8"
                         " > %s/up-real.txt 2>&1",
                   dir, tmp)) {
        nu_test_sh("cat %s/up-real.txt", tmp);
        return -1;
    }
    real_prog_pid = pidfile("prog-1");
    int rc = nu_pki_open_hsm(dir, 1, &hsm);
    if (!rc)
        rc = nu_hsm_key_open(hsm, NU_PKI_KEY_PACKAGE, &package_key);
    if (!rc)
        package_signer = nu_hsm_key_signer(package_key);
    return rc ? -1 : 0;
}

static int teardown_real(void)
{
    nu_hsm_key_close(package_key);
    nu_hsm_close(hsm);
    package_key = NULL;
    hsm = NULL;
    nu_test_sh(NUSEC " stack down --dir %s > %s/down-real.txt 2>&1", dir, tmp);
    if (!getenv("NUSEC_KEEP_TMP"))
        nu_test_rmtree(tmp);
    return 0;
}

static void test_real_programmer_accepts_the_delivered_package(void)
{
    char path[512];
    uint8_t pub[NU_P256_PUB_LEN], *buf = NULL;
    size_t len = 0, publen = 0;
    /* The package key the programmer made in its KeyStore, as the cloud recorded it. */
    CU_ASSERT_EQUAL_FATAL(nu_test_sh("sqlite3 %s/cloud/ledger.db \"SELECT hex(package_pubkey) FROM"
                                     " programmers WHERE programmer_id='prog-1'\" | tr -d '\\n'"
                                     " > %s/ppk.hex",
                                     dir, tmp),
                          0);
    char *hex = slurp("ppk.hex");
    CU_ASSERT_TRUE_FATAL(hex && nu_hex_decode(hex, pub, sizeof(pub), &publen) == NU_OK &&
                         publen == sizeof(pub));
    free(hex);
    struct sf_pkg_opts o = {.job_id = "J9", .programmer_id = "prog-1", .limit = 2};
    CU_ASSERT_EQUAL_FATAL(sf_package(&o, package_signer, pub, &buf, &len), NU_OK);
    CU_ASSERT_EQUAL_FATAL(sf_write(tmp, "j9.nspkg", buf, len, path, sizeof(path)), NU_OK);
    free(buf);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " package import %s --dir %s > /dev/null", path, dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " production start --job J9 --dir %s > /dev/null 2>&1", dir),
                    0);
    /* Its next status names the job: it verified the signature against its pinned package
     * key and opened the secrets with its KeyStore. (Producing needs the cloud's firmware
     * and job operations.) */
    struct station_db *db = NULL;
    struct station_programmer p = {.job_id = ""};
    for (int i = 0; i < 150 && strcmp(p.job_id, "J9") != 0; i++) {
        if (station_db_open_dir(dir, &db) == NU_OK)
            station_db_programmer_get(db, "prog-1", &p);
        station_db_close(db);
        db = NULL;
        usleep(100000);
    }
    CU_ASSERT_STRING_EQUAL(p.job_id, "J9");
    CU_ASSERT_EQUAL(p.limit, 2);
    /* Its token is not one the cloud issued: nothing to produce. Free prog-1. */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " production stop --job J9 --dir %s > /dev/null", dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " stack status --dir %s > %s/ss-real.txt 2>&1", dir, tmp), 0);
    CU_ASSERT_TRUE(contains("ss-real.txt", "prog-1"));
}

/* The real thing: OEM signs and creates a job, CM imports and runs it to the end. */
static void test_real_production_matches_the_ledger(void)
{
    char job[128] = "";
    CU_ASSERT_EQUAL_FATAL(
        nu_test_sh("head -c 32768 /dev/urandom > %s/app.bin && " NUSEC
                   " firmware sign --in %s/app.bin --name app --version 1.0.0 --dir %s"
                   " > %s/sign.txt 2>&1 && " NUSEC " job create --firmware app-1.0.0 --quota 8"
                   " --programmer prog-1 --programmer prog-2 --expires 1h --out %s/pk --dir %s"
                   " 2> %s/create.err | tail -n 1 > %s/job.txt",
                   tmp, tmp, dir, tmp, tmp, dir, tmp, tmp),
        0);
    char *t = slurp("job.txt");
    CU_ASSERT_PTR_NOT_NULL_FATAL(t);
    sscanf(t, "%127s", job);
    free(t);
    CU_ASSERT_TRUE_FATAL(strncmp(job, "job-", 4) == 0);
    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " package import %s/pk/*.nspkg --dir %s > /dev/null", tmp, dir), 0);
    /* 8 devices: 8 device.provisioned from the programmers (and more events besides). */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " monitor --dir %s --job %s --json --timeout 60"
                                     " > %s/real.jsonl 2> %s/real.err & echo $! > %s/real.pid",
                               dir, job, tmp, tmp, tmp),
                    0);
    for (int i = 0; i < 100 && nu_test_sh("grep -q listening %s/real.err 2>/dev/null", tmp); i++)
        usleep(50000);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " production start --job %s --wait --timeout 60 --dir %s"
                                     " > %s/real-wait.txt 2>&1",
                               job, dir, tmp),
                    0);
    CU_ASSERT_TRUE(contains("real-wait.txt", ": limit reached: 8 of 8 done"));
    char cond[256];
    snprintf(cond, sizeof(cond),
             "r[\"jobs\"][0][\"state\"]==\"done\" and r[\"jobs\"][0][\"done\"]==8 and "
             "r[\"jobs\"][0][\"failed\"]==0 and r[\"jobs\"][0][\"outcome\"]==\"limit reached\"");
    CU_ASSERT_EQUAL(status_until(job, cond, 5), 0);
    /* What the station and the monitor saw is what the ledger holds. */
    usleep(500000);
    char *mon = slurp("real.pid");
    pid_t mon_pid = mon ? (pid_t)atol(mon) : 0;
    free(mon);
    if (mon_pid > 0)
        kill(mon_pid, SIGTERM); /* ours, by its pid */
    CU_ASSERT_EQUAL(
        nu_test_sh("n=$(sqlite3 %s/cloud/ledger.db \"SELECT COUNT(*) FROM certificates WHERE"
                   " job_id='%s'\") && test \"$n\" -eq 8 && python3 -c 'import json,sys; "
                   "e=[json.loads(l) for l in open(sys.argv[1])]; "
                   "p=[x for x in e if x[\"kind\"]==\"device.provisioned\"]; "
                   "assert len(p)==int(sys.argv[2]), (len(p), sys.argv[2]); "
                   "assert len(set(x[\"device_uid\"] for x in p))==len(p); "
                   "assert all(x.get(\"serial\") and x[\"role\"]==\"programmer\" for x in p)'"
                   " %s/real.jsonl $n",
                   dir, job, tmp),
        0);
    /* The report exports the job's certificates, each verifying against the device CA. */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " report --job %s --certs %s/certs --dir %s > /dev/null &&"
                                     " test $(ls %s/certs/*.pem | wc -l) -eq 8 &&"
                                     " for f in %s/certs/*.pem; do openssl verify -CAfile"
                                     " %s/pki/device-chain.pem $f > /dev/null || exit 1; done",
                               job, tmp, dir, tmp, tmp, dir),
                    0);
    /* The OEM's report says the same as the ledger: 8 issued, 8 reported provisioned. */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC
                               " report --job %s --json --dir %s | python3 -c 'import json,sys;"
                               " r=json.load(sys.stdin); assert r[\"issued\"]==8 and"
                               " r[\"provisioned\"]==8 and r[\"failed\"]==0 and"
                               " sum(p[\"issued\"] for p in r[\"programmers\"])==8 and"
                               " r[\"outcome\"]==\"limit reached\" and"
                               " r[\"summary\"]==\"limit reached: 8 of 8 done\", r'",
                               job, dir),
                    0);
}

static void test_killed_programmer_rejoins(void)
{
    pid_t p1 = pidfile("prog-1");
    CU_ASSERT_TRUE_FATAL(p1 > 0);
    kill(p1, SIGKILL);
    CU_ASSERT_EQUAL(wait_prog_state("prog-1", "offline", 5000), 0);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " stack status --dir %s > %s/ss2.txt 2>&1", dir, tmp), 1);
    CU_ASSERT_TRUE(contains("ss2.txt", "dead"));
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " stack up --dir %s --programmers 2 --sockets 2"
                                     " > %s/up-again.txt 2>&1",
                               dir, tmp),
                    0);
    CU_ASSERT_TRUE(contains("up-again.txt", "prog-2     already running"));
    CU_ASSERT_EQUAL(wait_prog_state("prog-1", "idle", 5000), 0);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " stack status --dir %s > %s/ss3.txt 2>&1", dir, tmp), 0);
    real_prog_pid = pidfile("prog-1");
}

static void test_programmer_enroll_command(void)
{
    /* Not factory-initialised (no attestation key in its KeyStore): refused. */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC
                               " programmer enroll --dir %s --name prog-9 > %s/enroll0.txt 2>&1",
                               dir, tmp),
                    1);
    CU_ASSERT_NOT_EQUAL(nu_test_sh(NUSEC " programmer list --dir %s | grep -q '^prog-9 '", dir), 0);
    /* The vendor's factory step (stack up made the stand-in vendor CA in DIR/vendor). */
    CU_ASSERT_EQUAL(nu_test_sh(PROGRAMMER " --dir %s --name prog-9 --factory-init --vendor-ca "
                                          "%s/vendor > %s/serial9.txt",
                               dir, dir, tmp),
                    0);
    /* prog-8 is enrolled at the CM: its vendor pinned the OEM anchor. */
    CU_ASSERT_EQUAL(nu_test_sh(PROGRAMMER " --dir %s --name prog-8 --factory-init --vendor-ca "
                                          "%s/vendor --oem-anchor %s/pki/package-key.pem",
                               dir, dir, dir),
                    0);
    /* Minted token, at the OEM (the default): enrolled, owned by the station,
     * listed by the cloud with the vendor serial its KeyStore attested. */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC
                               " programmer enroll --dir %s --name prog-9 > %s/enroll.txt 2>&1",
                               dir, tmp),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh("grep -qx 'station prog-9' %s/broker/owners", dir), 0);
    CU_ASSERT_EQUAL(
        nu_test_sh(NUSEC " programmer list --dir %s | grep -q '^prog-9 .*enrolled'", dir), 0);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " programmer list --dir %s | grep '^prog-9 ' | grep -qF "
                                     "\"$(cat %s/serial9.txt)\"",
                               dir, tmp),
                    0);
    /* Relayed at the CM, explicitly: the same attestation. */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " programmer enroll --dir %s --name prog-8 --relay station"
                                     " > %s/enroll8.txt 2>&1",
                               dir, tmp),
                    0);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC
                               " programmer list --dir %s --json | grep -q '\"id\":\"prog-8\"[^}]*"
                               "\"vendor_serial\":\"NL3-'",
                               dir),
                    0);
    /* A forged token: refused, and nothing is enrolled. */
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " programmer enroll --dir %s --name prog-10 --token %064d"
                                     " > %s/enroll-bad.txt 2>&1",
                               dir, 0, tmp),
                    1);
    CU_ASSERT_NOT_EQUAL(nu_test_sh(NUSEC " programmer list --dir %s | grep -q '^prog-10 '", dir),
                        0);
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " programmer enroll --dir %s 2>/dev/null", dir), 2);
}

static void test_stack_down_stops_the_programmer(void)
{
    CU_ASSERT_TRUE_FATAL(real_prog_pid > 0);
    CU_ASSERT_FALSE(gone(real_prog_pid));
    CU_ASSERT_EQUAL(nu_test_sh(NUSEC " stack down --dir %s > %s/down-real.txt 2>&1", dir, tmp), 0);
    CU_ASSERT_TRUE(contains("down-real.txt", "prog-1     stopped"));
    CU_ASSERT_TRUE(contains("down-real.txt", "broker     stopped"));
    CU_ASSERT_TRUE(gone(real_prog_pid));
    CU_ASSERT_EQUAL(nu_test_sh("test -z \"$(ls %s/run)\"", dir), 0);
}

int main(int argc, char **argv)
{
    ssize_t n = readlink("/proc/self/exe", self_exe, sizeof(self_exe) - 1);
    self_exe[n > 0 ? n : 0] = '\0';
    if (argc == 4 && !strcmp(argv[1], "--crash-child")) {
        snprintf(tmp, sizeof(tmp), "%s", argv[2]);
        snprintf(dir, sizeof(dir), "%s", argv[3]);
        return crash_child();
    }
    static const struct nu_test_case cases[] = {
        {"stack status", test_stack_status},
        {"inspect and import refuse a tampered package", test_inspect_and_import_refuse_tampered},
        {"start delivers the package, then START", test_start_delivers_package_then_start},
        {"events journaled, counted and monitored", test_events_journaled_counted_and_monitored},
        {"a crashed programmer back idle gets START again",
         test_programmer_crash_and_comeback_gets_start_again},
        {"station restart resumes and loses nothing",
         test_station_restart_resumes_and_loses_nothing},
        {"STOP reaches a producing programmer", test_stop_reaches_a_producing_programmer},
        {"--wait follows a job to done", test_wait_follows_a_job_to_done},
        {"two jobs on one programmer run one after the other",
         test_two_jobs_on_one_programmer_run_one_after_the_other},
        {"--wait says how the job ended (tray empty 4, stopped 5, cloud refused 6)",
         test_wait_says_how_the_job_ended},
        {"no command to a programmer the station does not own",
         test_station_cannot_command_a_programmer_it_does_not_own},
        {"a failed stack up leaves nothing running", test_failed_stack_up_leaves_nothing_running},
        {NULL, NULL},
    };
    static const struct nu_test_case real_cases[] = {
        {"a real programmer accepts the delivered package",
         test_real_programmer_accepts_the_delivered_package},
        {"a real production matches the ledger", test_real_production_matches_the_ledger},
        {"a killed programmer rejoins", test_killed_programmer_rejoins},
        {"nusec programmer enroll", test_programmer_enroll_command},
        {"stack down stops the programmer", test_stack_down_stops_the_programmer},
        {NULL, NULL},
    };
    static const struct nu_test_suite suites[] = {
        {"station", setup, teardown, cases},
        {"station with nusec-programmer", setup_real, teardown_real, real_cases},
        {NULL, NULL, NULL, NULL},
    };
    return nu_test_run("integration_station", suites);
}
