#!/usr/bin/env bash
# Regenerate the structured seed corpora (signed images, sealed packages,
# CSRs, envelopes...) into tests/fuzz/seeds/. Needs a fuzz build:
#   ./build.sh fuzz --seconds 0   (or CC=clang cmake ... -DNUSEC_FUZZ=ON)
#   tests/fuzz/make_seeds.sh [build-fuzz]
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
BUILD=${1:-$ROOT/build-fuzz}
SEEDS=$ROOT/tests/fuzz/seeds
"$BUILD/bin/gen_fuzz_seeds" "$SEEDS"
# The core's codec reads the same envelopes as the cloud's: selector byte 8
# (envelope decode) and 11 (field walk round trip) before each envelope seed.
mkdir -p "$SEEDS/fuzz_pg_pb"
for f in "$SEEDS"/fuzz_envelope/*.bin; do
    n=$(basename "$f" .bin)
    { printf '\010'; cat "$f"; } >"$SEEDS/fuzz_pg_pb/env_$n.bin"
    { printf '\013'; cat "$f"; } >"$SEEDS/fuzz_pg_pb/walk_$n.bin"
done

# Scripts for the targets that drive the programmer core (fuzz_pg.h): records
# of u16 little-endian length + kind byte (0 raw, 1 honest, 2 error, 3 XOR;
# 0x80 re-encrypts a chunk) + data.
python3 - "$SEEDS" <<'PY'
import os, struct, sys
seeds = sys.argv[1]
def rec(kind, data=b""):
    body = bytes([kind]) + data
    return struct.pack("<H", len(body)) + body
def put(target, name, data):
    os.makedirs(os.path.join(seeds, target), exist_ok=True)
    with open(os.path.join(seeds, target, name), "wb") as f:
        f.write(data)
env = lambda n: open(os.path.join(seeds, "fuzz_envelope", n), "rb").read()
pkg = lambda n: open(os.path.join(seeds, "fuzz_package", n), "rb").read()

put("fuzz_pg_package", "raw.nspkg", b"\x00" + pkg("package.nspkg"))
put("fuzz_pg_package", "secrets.bin", b"\x01" + pkg("secrets.bin"))
put("fuzz_pg_package", "summary.bin", b"\x02" + pkg("summary.bin"))

meta = b"PGM1" + bytes(32) + struct.pack(">IIII", 1500, 512, 3, 1)
put("fuzz_pg_firmware", "honest.bin", b"\x00")
put("fuzz_pg_firmware", "resume.bin", b"\x01" + struct.pack("<H", len(meta)) + meta)
put("fuzz_pg_firmware", "flip_manifest.bin", b"\x00" + rec(3, bytes(40) + b"\x01"))
put("fuzz_pg_firmware", "flip_chunk.bin", b"\x00" + rec(1) + rec(1) + rec(0x83, bytes(60) + b"\x04"))
put("fuzz_pg_firmware", "raw_chunk.bin", b"\x00" + rec(1) + rec(0x80, env("firmware_chunk.bin")))
put("fuzz_pg_firmware", "timeouts.bin", b"\x00" + rec(2, b"\x07") + rec(2, b"\x1e") + rec(1))

put("fuzz_pg_target", "honest.bin", b"")
put("fuzz_pg_target", "short_uid.bin", rec(0, b"\x01\x02\x03"))
put("fuzz_pg_target", "not_blank.bin", rec(1) + rec(2, b"\x21"))
put("fuzz_pg_target", "flaky.bin", rec(2, b"\x20") + rec(1) + rec(1) + rec(2, b"\x20"))
put("fuzz_pg_target", "wrong_pub.bin", rec(1) * 4 + rec(3, b"\x00\x01"))
put("fuzz_pg_target", "cert_refused.bin", rec(1) * 5 + rec(0, env("cert_refused.bin")))
put("fuzz_pg_target", "cert_issued.bin", rec(1) * 5 + rec(0, env("cert_issued.bin")))
put("fuzz_pg_target", "quota.bin", rec(1) * 5 + rec(2, b"\x14"))
put("fuzz_pg_target", "bad_attest.bin", rec(1) * 11 + rec(3, b"\x00" * 10 + b"\x80"))
PY

# The OEM/CM crossing file (cli/site_bundle.h): an enrolment, a join request
# shape and a bundle shape with a binary entry, plus near misses.
python3 - "$SEEDS" <<'PY'
import os, sys
d = os.path.join(sys.argv[1], "fuzz_site_bundle")
os.makedirs(d, exist_ok=True)
def bundle(entries, end=None):
    out = b"nusec-site 1\n"
    for name, data in entries:
        out += b"file %s %d\n" % (name, len(data)) + data + b"\n"
    return out + b"end %d\n" % (len(entries) if end is None else end)
seeds = {
    "enrol.bin": bundle([(b"site", b"site-a"), (b"token", b"ab" * 32), (b"cloud", b"127.0.0.1:8883")]),
    "join.bin": bundle([(b"site", b"site-a"), (b"token", b"ab" * 32), (b"broker-host", b"10.0.0.2"),
                        (b"csr/station.pem", b"-----BEGIN CERTIFICATE REQUEST-----\nMIIB\n-----END CERTIFICATE REQUEST-----\n")]),
    "bundle.bin": bundle([(b"site", b"site-a"), (b"pki/root-ca.pem", b"-----BEGIN CERTIFICATE-----\n"),
                          (b"programmers/boot-manifest.img", bytes(range(256))),
                          (b"owners", b"# decided by the OEM\nsite-a prog-1\n")]),
    "empty.bin": bundle([]),
    "bad_count.bin": bundle([(b"site", b"x")], end=2),
    "dup.bin": bundle([(b"site", b"x"), (b"site", b"y")]),
    "dotdot.bin": bundle([(b"../etc/passwd", b"x")]),
}
for name, data in seeds.items():
    with open(os.path.join(d, name), "wb") as f:
        f.write(data)
PY
