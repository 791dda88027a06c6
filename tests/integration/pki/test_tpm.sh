#!/usr/bin/env bash
# NuSEC on a second real PKCS#11 module: a TPM 2.0 (swtpm) through
# tpm2-abrmd and tpm2-pkcs11. An HSM administrator makes the token with the
# module's own tools; NuSEC is pointed at it (pki init --token-label
# --pin-file --module-env) and runs a small production on it; the HSM suite
# checks the keys. Everything is private to a temp dir (own swtpm on free
# ports, own D-Bus, own abrmd) and stopped at the end.
#
# usage: test_tpm.sh BIN_DIR SOURCE_DIR
set -uo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/stack_lib.sh" tpm
LABEL=nusec-line-1 USER_PIN=user-$RANDOM$RANDOM SO_PIN=so-$RANDOM$RANDOM
quiet() { "$@" >/dev/null 2>&1; }
phase() { printf -- '-- %s (t=%ss)\n' "$1" "$SECONDS"; }
# shellcheck source=tpm_token.sh
source "$SRC/tests/integration/pki/tpm_token.sh"
cleanup_more() { tpm_token_down "$TMP/tpm"; }
# tpm2-pkcs11 leaks in C_SignInit: suppressed for this test's processes only.
export LSAN_OPTIONS="suppressions=$SRC/tests/integration/pki/lsan-tpm2-pkcs11.supp${LSAN_OPTIONS:+:$LSAN_OPTIONS}"

phase "TPM token"
# --- the HSM administrator's part: a token, with the module's own tools ---
if ! tpm_token_up "$TMP/tpm" "$LABEL" "$SO_PIN" "$USER_PIN"; then
    echo "FAIL TPM token setup (swtpm / tpm2-abrmd / tpm2_ptool)"
    tail -n 20 "$TMP"/tpm/*.log
    exit 1
fi
BUS=$DBUS_SESSION_BUS_ADDRESS
# NuSEC gets nothing from this shell: what it needs must be in DIR/hsm/pkcs11.conf.
unset DBUS_SESSION_BUS_ADDRESS TPM2TOOLS_TCTI
printf '%s' "$USER_PIN" >"$TMP/pin" && chmod 600 "$TMP/pin"
MODENV=(--module-env "TPM2_PKCS11_TCTI=$TPM_TCTI" --module-env "TPM2_PKCS11_STORE=$TPM_STORE"
    --module-env "DBUS_SESSION_BUS_ADDRESS=$BUS")
p11() { # pkcs11-tool on the token, as the administrator would look
    env TPM2_PKCS11_TCTI="$TPM_TCTI" TPM2_PKCS11_STORE="$TPM_STORE" DBUS_SESSION_BUS_ADDRESS="$BUS" \
        pkcs11-tool --module "$TPM_MODULE" --token-label "$LABEL" --login --pin "$USER_PIN" "$@" 2>/dev/null
}

phase "pki init"
# --- pki init against the existing token ---
nusec pki init --pkcs11-module "$TPM_MODULE" --token-label "$LABEL" --pin-file "$TMP/pin" \
    "${MODENV[@]}" >"$TMP/init.out" 2>&1
rc=$?
grep -v '^WARNING' "$TMP/init.out"
check "pki init on the administrator's TPM token" test $rc -eq 0
check "no token was initialised and no SO PIN stored" test ! -e "$DIR/hsm/so-pin" -a ! -e "$DIR/hsm/pin"
check "pkcs11.conf records module, token, PIN file and environment" \
    grep -q "^token-label = $LABEL$" "$DIR/hsm/pkcs11.conf"
check "six private keys in the TPM, sensitive, never extractable, local" \
    test "$(p11 -O --type privkey | grep -c 'Access: *sensitive, always sensitive, never extractable, local')" -eq 6
check "certificates verify with openssl" \
    openssl verify -CAfile "$DIR/pki/root-ca.pem" -untrusted "$DIR/pki/fleet-ca.pem" "$DIR/pki/broker.crt"

# A second PKI on the same token: the keys are there, so it is refused ...
"$BIN/nusec" pki init --dir "$TMP/other" --pkcs11-module "$TPM_MODULE" --token-label "$LABEL" \
    --pin-file "$TMP/pin" "${MODENV[@]}" >"$TMP/other.out" 2>&1
rc=$?
check "existing keys are refused without --adopt-keys (exit 3)" test $rc -eq 3
check "... naming the keys, nothing changed" grep -q 'already holds keys labelled root-ca' "$TMP/other.out"
check "... and stack up will not build a SoftHSM2 PKI there" \
    bash -c "! '$BIN/nusec' stack up --dir '$TMP/other' --programmers 0 >/dev/null 2>&1 && test ! -e '$TMP/other/pki'"
# ... and a failed run takes its keys back out of the token.
"$BIN/nusec" pki init --dir "$TMP/bad" --pkcs11-module "$TPM_MODULE" --slot 2 \
    --pin-file "$TMP/pin" "${MODENV[@]}" >"$TMP/bad.out" 2>&1
check "an unknown slot fails and changes nothing" grep -q 'nothing changed' "$TMP/bad.out"

phase "HSM suite"
# --- the HSM suite on the TPM ---
NUSEC_HSM_SUITE_DIR=$DIR "$BIN/integration_hsm_suite" >"$TMP/suite.out" 2>&1
rc=$?
grep -E '^(Run Summary|  *(tests|asserts))|FAILED|^test_hsm_suite' "$TMP/suite.out"
check "HSM suite passes on the TPM" test $rc -eq 0

phase "production"
# --- a small production signed by the TPM ---
DEVICES=3
nusec stack up --programmers 1 --sockets 2 --devices $DEVICES >"$TMP/up.out" 2>&1
rc=$?
check "stack up on the TPM PKI (cloud opens the token from pkcs11.conf)" test $rc -eq 0
[[ $rc -eq 0 ]] || tail -n 20 "$TMP/up.out" "$DIR"/logs/*.log 2>/dev/null
head -c 16384 /dev/urandom >"$TMP/app.bin"
check "firmware signed in the TPM" \
    quiet nusec firmware sign --in "$TMP/app.bin" --name tpm-app --version 1.0.0
mkdir -p "$TMP/packages"
job=$(nusec job create --firmware tpm-app-1.0.0 --quota $DEVICES --programmer prog-1 \
    --expires 1h --out "$TMP/packages" | tail -n 1)
check "job created" test -n "$job"
check "package imported" quiet nusec package import "$TMP"/packages/*.nspkg
phase "production start"
nusec production start --job "$job" --wait >"$TMP/prod.out" 2>&1
phase "checks"
locked=$(grep -l '^state=locked' "$DIR"/targets/*/state 2>/dev/null | xargs -r -n1 dirname)
check "$DEVICES devices provisioned" test "$(echo "$locked" | grep -c .)" -eq $DEVICES
certs_ok() {
    local t
    for t in $locked; do
        openssl verify -CAfile "$DIR/pki/device-chain.pem" "$t/cert.pem" >/dev/null || return 1
    done
}
check "device certificates (TPM-signed) verify with openssl" certs_ok
check "images pass an independent MCUboot check against the TPM's rotpk" \
    bash -c "for t in $(echo $locked); do python3 '$SRC/tests/tools/mcuboot_verify.py' --key '$DIR/firmware/rotpk.pem' \$t/image.bin >/dev/null || exit 1; done"
nusec stack down >/dev/null 2>&1
check "audit verify (checkpoints signed in the TPM)" quiet nusec audit verify

phase "done"
echo "tpm: $passed passed, $failed failed"
((failed == 0))
