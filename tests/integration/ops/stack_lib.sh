# Sourced by the ops tests (test_ops.sh, test_json.sh): a throwaway state
# directory with a local stack that is always taken down, and named checks.
# Needs BIN set; sets TMP, DIR, passed, failed; NAME is the folder's prefix.
# usage: . stack_lib.sh NAME
TMP=$(mktemp -d "${TMPDIR:-/tmp}/nusec-$1-XXXXXX")
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
