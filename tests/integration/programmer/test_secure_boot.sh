#!/usr/bin/env bash
# Secure boot of the programmer itself: nusec-programmer verifies its boot
# manifest (an MCUboot image whose payload is SHA-256 of its own binary, signed
# in the cloud's HSM with the OEM secure-boot key) against the ROTPK pinned in
# its KeyStore at enrollment, and refuses to run anything else (exit 3).
#
# usage: test_secure_boot.sh BIN_DIR
set -uo pipefail
BIN=$1
. "${BASH_SOURCE%/*}/../../lib/stack_lib.sh" sb
mkdir -p "$DIR"

nusec stack up --programmers 1 --sockets 1 --devices 0 >"$TMP/up.log" 2>&1 ||
    { cat "$TMP/up.log"; echo "FAIL stack up"; exit 1; }
# The stack's prog-1 is stopped: this test starts prog-1 itself.
kill "$(cat "$DIR/run/prog-1.pid")" 2>/dev/null
for _ in $(seq 50); do kill -0 "$(cat "$DIR/run/prog-1.pid")" 2>/dev/null || break; sleep 0.1; done

# The manifest: the binary's hash signed by the cloud (firmware.sign, HSM key).
sha256sum "$BIN/nusec-programmer" | cut -d' ' -f1 | xxd -r -p >"$TMP/self.sha256"
nusec firmware sign --in "$TMP/self.sha256" --name nusec-programmer-boot --version 0.1.0 \
    >"$TMP/sign.log" 2>&1 || cat "$TMP/sign.log"
MANIFEST=$DIR/programmers/boot-manifest.img
cp "$DIR/firmware/nusec-programmer-boot-0.1.0.img" "$MANIFEST"

# run PROGRAM [ARGS...]: start it as prog-1 for 3 s; prints its exit status
# (124 = still running when stopped) and keeps its stderr in $TMP/run.log.
run() {
    local prog=$1
    shift
    timeout -s TERM 3 "$prog" --dir "$DIR" --name prog-1 --sockets 1 "$@" >"$TMP/run.log" 2>&1
    echo $?
}

rc=$(run "$BIN/nusec-programmer")
check "genuine binary + manifest: runs (rc=$rc)" test "$rc" -eq 124
check "genuine binary: boot verified" grep -q "secure boot: binary verified" "$TMP/run.log"

# flip FILE OFFSET: xor one byte of FILE with 1.
flip() {
    local b
    b=$(od -An -tu1 -j "$2" -N 1 "$1" | tr -d ' ')
    printf "\\x$(printf %02x $((b ^ 1)))" | dd of="$1" bs=1 seek="$2" conv=notrunc status=none
}

# One byte changed at the end of a copy (section headers: still a runnable ELF).
cp "$BIN/nusec-programmer" "$TMP/nusec-programmer-mod"
flip "$TMP/nusec-programmer-mod" $(($(stat -c %s "$TMP/nusec-programmer-mod") - 1))
check "modified copy differs from the binary" bash -c "! cmp -s '$BIN/nusec-programmer' '$TMP/nusec-programmer-mod'"
rc=$(run "$TMP/nusec-programmer-mod")
check "modified binary: refused with exit 3 (rc=$rc)" test "$rc" -eq 3
check "modified binary: BAD_FIRMWARE" grep -q "refused to run prog-1: firmware image rejected" \
    "$TMP/run.log"

# Attested enrollment with that modified binary: its KeyStore measures what
# runs, the measurement is not what the OEM's manifest signs, the cloud refuses.
"$TMP/nusec-programmer-mod" --dir "$DIR" --name prog-mod --factory-init \
    --vendor-ca "$DIR/vendor" >/dev/null 2>"$TMP/factory.log"
check "factory init of prog-mod" test $? -eq 0
TOKEN=$(nusec programmer token --name prog-mod 2>/dev/null)
"$TMP/nusec-programmer-mod" --dir "$DIR" --name prog-mod --enroll "$TOKEN" >"$TMP/mod-enroll.log" 2>&1
check "modified binary: enrollment refused" test $? -ne 0
check "modified binary: MEASUREMENT" grep -q "programmer firmware not approved by the OEM" \
    "$TMP/mod-enroll.log"
check "modified binary: not enrolled" bash -c "! '$BIN/nusec' programmer list --dir '$DIR' | grep -q '^prog-mod '"
check "modified binary: refusal audited" bash -c "sqlite3 '$DIR/cloud/ledger.db' \"select payload from audit_events where kind='request.refused'\" | grep -q MEASUREMENT"
# The genuine binary with the same token enrolls (the refusal used nothing up).
"$BIN/nusec-programmer" --dir "$DIR" --name prog-mod --enroll "$TOKEN" >"$TMP/gen-enroll.log" 2>&1
check "genuine binary: same KeyStore, same token: enrolled" test $? -eq 0
check "programmer list: vendor serial and measurement" bash -c "'$BIN/nusec' programmer list --dir '$DIR' | grep '^prog-mod ' | grep -q \"NL3-.* \$(cat '$TMP/self.sha256' | xxd -p -c 64)\""

# A manifest by another key (well-formed MCUboot, fresh P-256 key), once with its
# own KEYHASH and once claiming the OEM's KEYHASH.
python3 - "$TMP/self.sha256" "$MANIFEST" "$TMP" <<'PY'
import hashlib, struct, sys
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
payload = open(sys.argv[1], 'rb').read()
real = open(sys.argv[2], 'rb').read()
key = ec.generate_private_key(ec.SECP256R1())
der = key.public_key().public_bytes(serialization.Encoding.DER,
                                    serialization.PublicFormat.SubjectPublicKeyInfo)
def image(keyhash):
    hdr = struct.pack('<IIHHII', 0x96f3b83d, 0, 32, 12, len(payload), 0)
    hdr += struct.pack('<BBHII', 0, 1, 0, 0, 0)
    prot = struct.pack('<HH', 0x6908, 12) + struct.pack('<HHI', 0x50, 4, 0)
    body = hdr + payload + prot
    digest = hashlib.sha256(body).digest()
    sig = key.sign(digest, ec.ECDSA(hashes.SHA256()))  # imgtool signs the digest's hash
    tlvs = struct.pack('<HH', 0x10, 32) + digest + struct.pack('<HH', 0x01, 32) + keyhash
    tlvs += struct.pack('<HH', 0x22, len(sig)) + sig
    return body + struct.pack('<HH', 0x6907, 4 + len(tlvs)) + tlvs
# The OEM KEYHASH is in the real manifest's unprotected TLVs (after SHA256).
i = real.index(struct.pack('<HH', 0x01, 32)) + 4
open(sys.argv[3] + '/other-key.img', 'wb').write(image(hashlib.sha256(der).digest()))
open(sys.argv[3] + '/other-key-claims-oem.img', 'wb').write(image(real[i:i + 32]))
PY
rc=$(run "$BIN/nusec-programmer" --boot-manifest "$TMP/other-key.img")
check "manifest by another key: refused (rc=$rc)" test "$rc" -eq 3
check "another key: KEYHASH is not the ROTPK" grep -q "firmware image rejected" "$TMP/run.log"
rc=$(run "$BIN/nusec-programmer" --boot-manifest "$TMP/other-key-claims-oem.img")
check "another key claiming the OEM KEYHASH: refused (rc=$rc)" test "$rc" -eq 3
check "another key claiming the OEM KEYHASH: bad signature" grep -qi "signature" "$TMP/run.log"

# Corrupted manifests: a payload bit flipped, truncated, garbage, empty.
cp "$MANIFEST" "$TMP/flip.img"
flip "$TMP/flip.img" 40
head -c 60 "$MANIFEST" >"$TMP/trunc.img"
head -c 200 /dev/urandom >"$TMP/garbage.img"
: >"$TMP/empty.img"
for m in flip trunc garbage empty; do
    rc=$(run "$BIN/nusec-programmer" --boot-manifest "$TMP/$m.img")
    check "corrupted manifest ($m): refused (rc=$rc)" test "$rc" -eq 3
done

# Required but missing: refused; not required and missing: runs (warned).
rm -f "$MANIFEST"
rc=$(run "$BIN/nusec-programmer" --require-secure-boot)
check "--require-secure-boot without manifest: refused (rc=$rc)" test "$rc" -eq 3
rc=$(run "$BIN/nusec-programmer")
check "no manifest, not required: runs, warned (rc=$rc)" test "$rc" -eq 124
check "no manifest: warning logged" grep -q "secure boot not enforced" "$TMP/run.log"

echo "secure boot: $passed passed, $failed failed"
((failed == 0))
