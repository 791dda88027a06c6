# Sourced by the shell tests that run a local stack (tests/integration/ops,
# programmer, pki, sites): a throwaway state directory whose stack is always taken
# down, named checks, and `nusec` bound to that directory.
# Needs BIN set; sets TMP, DIR (not created), passed, failed; NAME is the
# temp folder's prefix. A test with more to stop defines cleanup_more()
# (called after `stack down`, before TMP goes; NUSEC_KEEP_TMP keeps TMP).
# usage: . tests/lib/stack_lib.sh NAME
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
nusec() { "$BIN/nusec" "$@" --dir "$DIR"; }
cleanup() {
    "$BIN/nusec" stack down --dir "$DIR" >/dev/null 2>&1
    if declare -F cleanup_more >/dev/null; then cleanup_more; fi
    [[ -n "${NUSEC_KEEP_TMP:-}" ]] || rm -rf "$TMP"
}
trap cleanup EXIT
