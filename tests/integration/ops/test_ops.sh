#!/usr/bin/env bash
# Running NuSEC as a product: every program answers --version with the
# revision it was built from.
#
# usage: test_ops.sh BIN_DIR SOURCE_DIR
set -uo pipefail
BIN=$1 SRC=$2
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nusec-ops-XXXXXX")
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
cleanup() {
    "$BIN/nusec" stack down --dir "$DIR" >/dev/null 2>&1
    [[ -n "${NUSEC_KEEP_TMP:-}" ]] || rm -rf "$TMP"
}
trap cleanup EXIT

# --- --version ---------------------------------------------------------------------------
# "PROGRAM X.Y.Z (git REV)": REV is a commit of this repository (plus -dirty),
# or "unknown" when the build was configured outside a git checkout.
version_ok() { # version_ok PROGRAM
    local out rev
    out=$("$BIN/$1" --version) || return 1
    [[ "$out" =~ ^$1\ [0-9]+\.[0-9]+\.[0-9]+\ \(git\ ([^ ]+)\)$ ]] || { echo "  got: $out"; return 1; }
    rev=${BASH_REMATCH[1]%-dirty}
    [[ "$rev" == unknown ]] && ! git -C "$SRC" rev-parse 2>/dev/null && return 0
    git -C "$SRC" cat-file -e "$rev^{commit}" 2>/dev/null || { echo "  not a commit: $rev"; return 1; }
}
for p in nusec nusec-cloud nusec-station nusec-programmer; do
    check "$p --version names the version and its git revision" version_ok "$p"
done
same_version() { [[ $("$BIN/nusec" --version | cut -d' ' -f2-) == $("$BIN/nusec-cloud" --version | cut -d' ' -f2-) ]]; }
check "one version string for every program" same_version

echo "integration_ops: $passed passed, $failed failed"
((failed == 0))
