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
