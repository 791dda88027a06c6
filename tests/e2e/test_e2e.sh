#!/usr/bin/env bash
# End-to-end: a small production on the real local stack, then checked from
# the outside as an auditor would, with tools that are not NuSEC's own
# (openssl, sqlite3, protoc, an independent MCUboot verifier).
#
# usage: test_e2e.sh BIN_DIR SOURCE_DIR
set -uo pipefail
BIN=$1 SRC=$2
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nusec-e2e-XXXXXX")
DIR=$TMP/state
passed=0 failed=0
check() { # check NAME COMMAND...
    local name=$1
    shift
    if "$@"; then
        passed=$((passed + 1)); echo "ok   $name"
    else
        failed=$((failed + 1)); echo "FAIL $name"
    fi
}
cleanup() { [[ -n "${NUSEC_KEEP_TMP:-}" ]] || rm -rf "$TMP"; }
trap cleanup EXIT

QUOTA=6 DEVICES=8
"$SRC/tests/e2e/demo_flow.sh" --bin "$BIN" --dir "$DIR" --devices "$DEVICES" --quota "$QUOTA" \
    --programmers 2 --sockets 2 --capture "$TMP/events.txt" >"$TMP/demo.log" 2>&1
demo_rc=$?
cat "$TMP/demo.log"
check "demo ran" test "$demo_rc" -eq 0

job=$(sqlite3 "$DIR/cloud/ledger.db" "select job_id from jobs limit 1")
locked=$(grep -l '^state=locked' "$DIR"/targets/*/state 2>/dev/null | xargs -r -n1 dirname)
n_locked=$(echo "$locked" | grep -c . || true)
certs=$(sqlite3 "$DIR/cloud/ledger.db" "select count(*) from certificates where job_id='$job'")

check "line stopped at exactly the quota" test "$n_locked" -eq "$QUOTA"
check "ledger certificates == provisioned devices" test "$certs" -eq "$n_locked"
check "ledger never exceeds the quota" test "$certs" -le "$QUOTA"

certs_verify() {
    local t
    for t in $locked; do
        openssl verify -CAfile "$DIR/pki/device-chain.pem" "$t/cert.pem" >/dev/null || return 1
    done
}
check "every cert.pem verifies against the device CA chain" certs_verify

serials_unique() {
    local t
    for t in $locked; do openssl x509 -noout -serial -in "$t/cert.pem"; done | sort | uniq -d |
        grep -q . && return 1
    return 0
}
check "serials are unique" serials_unique

keys_match() {
    local t
    for t in $locked; do
        [[ "$(openssl x509 -noout -pubkey -in "$t/cert.pem")" == \
            "$(openssl pkey -pubin -in "$t/pubkey.pem")" ]] || return 1
    done
}
check "each certificate's key is the target's pubkey.pem" keys_match

images_verify() {
    local t
    for t in $locked; do
        python3 "$SRC/tests/tools/mcuboot_verify.py" --key "$DIR/firmware/rotpk.pem" \
            "$t/image.bin" >/dev/null || return 1
    done
}
check "every image.bin passes an independent MCUboot check" images_verify

no_key_leak() {
    # Every file under DIR except the chip's own secret/ is searched for the
    # chip's private scalar: raw bytes, hex (either case) and the key file's
    # base64 body.
    python3 - "$DIR" <<'PY'
import base64, os, pathlib, re, subprocess, sys
root = pathlib.Path(sys.argv[1])
chips = [d for d in (root / "targets").iterdir() if (d / "secret" / "key.pem").is_file()]
if not chips:
    sys.exit(1)
files = [p for p in root.rglob("*") if p.is_file() and not p.is_symlink()]
blobs = {p: p.read_bytes() for p in files}
for chip in chips:
    pem = (chip / "secret" / "key.pem").read_text()
    text = subprocess.run(["openssl", "ec", "-in", str(chip / "secret" / "key.pem"),
                           "-text", "-noout"], capture_output=True, text=True).stdout
    hexkey = "".join(re.search(r"priv:\n(.*?)pub:", text, re.S).group(1).split()).replace(":", "")
    scalar = bytes.fromhex(hexkey)[-32:]
    body = base64.b64decode("".join(l for l in pem.splitlines() if "-----" not in l))
    colon = ":".join(f"{b:02x}" for b in scalar[:16]).encode()
    needles = [scalar, scalar.hex().encode(), scalar.hex().upper().encode(), colon,
               colon.upper(), base64.b64encode(body)[:48]]
    own = chip / "secret"
    for p, data in blobs.items():
        if own in p.parents:
            continue
        for n in needles:
            if n in data:
                print(f"private key of {chip.name} found in {p}")
                sys.exit(1)
PY
}
check "no target private key outside its secret/" no_key_leak

events_decode() {
    local line topic hex n=0
    [[ -s "$TMP/events.txt" ]] || return 1
    while read -r topic hex; do
        echo "$hex" | python3 -c 'import sys; sys.stdout.buffer.write(bytes.fromhex(sys.stdin.read().strip()))' | protoc --decode=nusec.v1.Envelope -I "$SRC/proto" \
            "$SRC"/proto/nusec/v1/*.proto >/dev/null || return 1
        n=$((n + 1))
    done <"$TMP/events.txt"
    grep -q 'device.provisioned' "$TMP/events.txt" || return 1
    ((n > 0))
}
check "events captured with mosquitto_sub decode with protoc" events_decode

check "every audit event is time-stamped" \
    test "$(sqlite3 "$DIR/cloud/ledger.db" 'select count(*) from audit_events where ts <= 0')" -eq 0
check "nusec audit verify passes" "$BIN/nusec" audit verify --dir "$DIR"

# The cloud signed the chain head in its HSM (at start, job close, stop).
anchor=$("$BIN/nusec" audit verify --dir "$DIR" | sed -n 's/^checkpoints *ok, [0-9]*, last --checkpoint \([0-9]*:[0-9a-f]*\)$/\1/p')
check "the cloud's signed checkpoints verify with DIR/pki/audit-key.pem" test -n "$anchor"
# An attacker with the file rewrites the chain from seq 3, every hash
# recomputed: the checkpoints' signatures refuse it; with the checkpoints
# dropped too, the anchor an auditor kept does.
rewrite() { # rewrite [--drop-checkpoints]: on a copy; 0 when audit verify refuses it
    rm -rf "$TMP/rewrite" && mkdir -p "$TMP/rewrite/cloud" &&
        sqlite3 "$DIR/cloud/ledger.db" ".backup '$TMP/rewrite/cloud/ledger.db'" &&
        python3 "$SRC/tests/tools/ledger_rewrite.py" "$TMP/rewrite/cloud/ledger.db" --from-seq 3 \
            --replace '"name"' '"nome"' "$@" >/dev/null || return 1
    # Without the key only the chain is checked: the attack is real if it passes.
    "$BIN/nusec" audit verify --dir "$TMP/rewrite" >/dev/null 2>&1 || return 1
    ! "$BIN/nusec" audit verify --dir "$TMP/rewrite" --key "$DIR/pki/audit-key.pem" \
        --checkpoint "$anchor" >/dev/null 2>&1
}
check "a rewritten chain fails its signed checkpoints" rewrite
check "a rewrite that drops the checkpoints fails against a kept checkpoint" \
    rewrite --drop-checkpoints
tamper() {
    sqlite3 "$DIR/cloud/ledger.db" "
        select name from sqlite_master where type='trigger';" |
        while read -r tr; do sqlite3 "$DIR/cloud/ledger.db" "drop trigger $tr"; done
    sqlite3 "$DIR/cloud/ledger.db" \
        "update audit_events set payload = replace(payload, '1', '2') where seq = 3"
    ! "$BIN/nusec" audit verify --dir "$DIR" >/dev/null 2>&1
}
check "nusec audit verify fails after one audit row is edited" tamper

echo "e2e: $passed passed, $failed failed"
((failed == 0))
