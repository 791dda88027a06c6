/*
 * fuzz_package — libFuzzer target for the clear layers of a sealed
 * production package (.nspkg, nusec.v1.SealedPackage) as both readers see
 * it: the station (station_pkg_open, `nusec package import/inspect`) and the
 * programmer core's decoders (pg_msg_sealed_pkg / summary / secrets, the
 * latter for the inner PackageSecrets once unsealed).
 *
 * The package key is a fresh key per run: no input can carry its signature.
 *
 * Properties:
 *   - station: only DECODE / TAMPERED / TOO_LARGE, never OK, EXPIRED or
 *     NOT_SUPPORTED (those need an intact package), `intact` never set; a
 *     summary shown for a TAMPERED package holds identifiers only;
 *   - programmer decoders: typed errors only; every decoded span lies inside
 *     the bytes it was decoded from; ids the core copies are ids;
 *   - station and programmer agree on the outer split: when the station
 *     reached the signature check, the core decodes the same three fields.
 */
#include "fuzz_common.h"
#include "nu_crypto.h"
#include "nu_envelope.h"
#include "pg_msg.h"
#include "station_pkg.h"

#include <string.h>

static uint8_t pkg_pub[NU_P256_PUB_LEN];

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    struct nu_p256_key *k = NULL;
    (void)argc, (void)argv;
    if (nu_p256_key_generate(&k) || nu_p256_key_pub(k, pkg_pub))
        FUZZ_DIE("setup");
    nu_p256_key_destroy(k);
    return 0;
}

static void fuzz__id(const char *s, int optional)
{
    if (!s[0] && optional)
        return;
    if (nu_envelope_id_check(s) != NU_OK)
        FUZZ_DIE("station shows a non-identifier '%s'", s);
}

static void fuzz__station(const uint8_t *data, size_t size)
{
    static const int refusals[] = {NU_ERR_DECODE, NU_ERR_TAMPERED, NU_ERR_TOO_LARGE, -1};
    struct station_pkg p;
    int rc = station_pkg_open(data, size, pkg_pub, 0, &p);
    fuzz_expect("station_pkg_open", rc, refusals);
    if (p.intact)
        FUZZ_DIE("intact without the key's signature");
    if (p.summary_ok) {
        fuzz__id(p.job_id, 0);
        fuzz__id(p.programmer_id, 0);
        fuzz__id(p.firmware, 1);
        if (p.limit == 0)
            FUZZ_DIE("summary shown with limit 0");
    }
    if (rc == NU_ERR_TAMPERED) {
        struct pg_msg_sealed_pkg sp;
        memset(&sp, 0, sizeof(sp));
        int prc = pg_msg_sealed_pkg_decode((struct pg_bytes){data, size}, &sp);
        /* The core bounds the signature at 72 bytes where the station says TAMPERED. */
        if ((prc != NU_OK && prc != NU_ERR_TOO_LARGE) || (prc == NU_OK && sp.sealed.len != p.sealed_len))
            FUZZ_DIE("station and programmer split the package differently");
    }
}

static void fuzz__span(struct pg_bytes b, const uint8_t *data, size_t size, const char *what)
{
    if (!fuzz_inside(b.p, b.len, data, size))
        FUZZ_DIE("%s points outside its input", what);
}

static void fuzz__core(const uint8_t *data, size_t size)
{
    static const int refusals[] = {NU_ERR_DECODE, NU_ERR_TOO_LARGE, NU_ERR_INVALID_ARG, -1};
    struct pg_bytes all = {data, size};
    struct pg_msg_sealed_pkg sp;
    struct pg_msg_summary sum;
    struct pg_msg_secrets sec;
    char id[PG_MSG_ID_MAX + 1];

    memset(&sp, 0, sizeof(sp));
    int rc = pg_msg_sealed_pkg_decode(all, &sp);
    if (rc == NU_OK) {
        fuzz__span(sp.summary, data, size, "summary");
        fuzz__span(sp.sealed, data, size, "sealed");
        fuzz__span(sp.signature, data, size, "signature");
    } else {
        fuzz_expect("sealed_pkg_decode", rc, refusals);
    }
    /* The whole input as the summary, then as the unsealed secrets. */
    memset(&sum, 0, sizeof(sum));
    rc = pg_msg_summary_decode(all, &sum);
    if (rc == NU_OK) {
        fuzz__span(sum.job_id, data, size, "job_id");
        fuzz__span(sum.programmer_id, data, size, "programmer_id");
        fuzz__span(sum.package_id, data, size, "package_id");
        if (pg_msg_id_copy(sum.job_id, id) == NU_OK && strlen(id) != sum.job_id.len)
            FUZZ_DIE("id copy changed length");
    } else {
        fuzz_expect("summary_decode", rc, refusals);
    }
    memset(&sec, 0, sizeof(sec));
    rc = pg_msg_secrets_decode(all, &sec);
    if (rc == NU_OK) {
        if (sec.n_chain > PG_MSG_CHAIN_MAX)
            FUZZ_DIE("%zu chain entries", sec.n_chain);
        for (size_t i = 0; i < sec.n_chain; i++)
            fuzz__span(sec.chain[i], data, size, "chain");
        fuzz__span(sec.token, data, size, "token");
        fuzz__span(sec.firmware_key, data, size, "firmware_key");
    } else {
        fuzz_expect("secrets_decode", rc, refusals);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz__station(data, size);
    fuzz__core(data, size);
    return 0;
}
