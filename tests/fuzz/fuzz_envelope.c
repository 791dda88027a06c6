/*
 * fuzz_envelope — libFuzzer target for nu_envelope_unpack().
 *
 * Properties checked on every input (abort() makes libFuzzer report it):
 *   - a refusal is one of the documented typed errors and returns no envelope;
 *   - whatever unpack accepts, pack accepts (we can always re-send what we
 *     accept), unpack accepts again, and packing that gives the same bytes;
 *   - nu_envelope_text_sanitize() turns any bytes into valid free text.
 * ASan/UBSan and LeakSanitizer catch memory errors and leaks.
 */
#include "nu_envelope.h"
#include "nu_err.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void fuzz__die(const char *what, int rc, const char *detail)
{
    fprintf(stderr, "fuzz_envelope: %s: %s (%s)\n", what, nu_err_name(rc), detail ? detail : "-");
    abort();
}

static void fuzz__roundtrip(const Nusec__V1__Envelope *env)
{
    uint8_t *buf = NULL, *buf2 = NULL;
    size_t len = 0, len2 = 0;
    const char *detail = NULL;
    Nusec__V1__Envelope *again = NULL;
    int rc;

    (void)nu_envelope_body_name(env);
    if (!nu_envelope_body(env))
        fuzz__die("accepted without a body", NU_ERR_INTERNAL, NULL);
    rc = nu_envelope_pack(env, &buf, &len, &detail);
    if (rc != NU_OK)
        fuzz__die("pack refused what unpack accepted", rc, detail);
    rc = nu_envelope_unpack(buf, len, &again, &detail);
    if (rc != NU_OK)
        fuzz__die("unpack refused what pack produced", rc, detail);
    rc = nu_envelope_pack(again, &buf2, &len2, &detail);
    if (rc != NU_OK)
        fuzz__die("second pack refused", rc, detail);
    if (len != len2 || memcmp(buf, buf2, len) != 0)
        fuzz__die("repack is not stable", NU_ERR_INTERNAL, NULL);
    if (strcmp(nu_envelope_body_name(env), nu_envelope_body_name(again)) != 0)
        fuzz__die("body changed in the roundtrip", NU_ERR_INTERNAL, NULL);
    free(buf2);
    free(buf);
    nu_envelope_free(again);
}

/* Any bytes, sanitized, must be acceptable free text. */
static void fuzz__sanitize(const uint8_t *data, size_t size)
{
    char text[2 * NU_ENVELOPE_TEXT_MAX + 1];
    size_t n = size < sizeof(text) - 1 ? size : sizeof(text) - 1;
    Nusec__V1__Ack ack = NUSEC__V1__ACK__INIT;
    Nusec__V1__Header hdr = NUSEC__V1__HEADER__INIT;
    Nusec__V1__Envelope env = NUSEC__V1__ENVELOPE__INIT;
    uint8_t id[NU_ENVELOPE_MESSAGE_ID_LEN] = {0};
    const char *detail = NULL;
    int rc;

    memcpy(text, data, n);
    text[n] = '\0';
    nu_envelope_text_sanitize(text);
    hdr.message_id.data = id;
    hdr.message_id.len = sizeof(id);
    hdr.sender_id = "fuzz";
    hdr.protocol = NU_ENVELOPE_PROTOCOL;
    env.header = &hdr;
    ack.detail = text;
    nu_envelope_set_body(&env, &ack.base);
    rc = nu_envelope_validate(&env, &detail);
    if (rc != NU_OK)
        fuzz__die("sanitized text refused", rc, detail);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Nusec__V1__Envelope *env = NULL;
    const char *detail = NULL;
    int rc = nu_envelope_unpack(data, size, &env, &detail);

    if (rc == NU_OK) {
        if (!env)
            fuzz__die("OK without an envelope", rc, detail);
        fuzz__roundtrip(env);
        nu_envelope_free(env);
    } else {
        if (env || !detail)
            fuzz__die("refusal with an envelope or without detail", rc, detail);
        if (rc != NU_ERR_DECODE && rc != NU_ERR_TOO_LARGE && rc != NU_ERR_INVALID_ARG &&
            rc != NU_ERR_NOT_SUPPORTED)
            fuzz__die("untyped refusal", rc, detail);
    }
    if (size <= 2 * NU_ENVELOPE_TEXT_MAX)
        fuzz__sanitize(data, size);
    return 0;
}
