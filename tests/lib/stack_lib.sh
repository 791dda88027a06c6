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

# Certificates of job $JOB in the ledger (SQLite, DIR/cloud/ledger.db);
# wait_certs N SECONDS waits until there are at least N.
certs() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" \
    "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB'" 2>/dev/null; }
wait_certs() { # wait_certs N SECONDS
    for _ in $(seq $(($2 * 10))); do
        [[ $(certs) -ge $1 ]] && return 0
        sleep 0.1
    done
    return 1
}
# stack_job QUOTA [JOB-CREATE-OPTION...]: a 64 KiB image signed as app-1.0.0,
# a job for prog-1 and prog-2 (expires in 1 h) and its packages imported at
# this stack's station; sets JOB. Exits the test on any failure.
stack_job() {
    local quota=$1
    shift
    head -c 65536 /dev/urandom >"$TMP/app.bin"
    nusec firmware sign --in "$TMP/app.bin" --name app --version 1.0.0 >"$TMP/sign.log" 2>&1 ||
        { cat "$TMP/sign.log"; echo "FAIL firmware sign"; exit 1; }
    JOB=$(nusec job create --firmware app-1.0.0 --quota "$quota" --programmer prog-1 \
        --programmer prog-2 --expires 1h "$@" --out "$TMP/pk" 2>"$TMP/create.err" |
        tail -n 1 | cut -d' ' -f1)
    [[ $JOB == job-* ]] || { cat "$TMP/create.err"; echo "FAIL job create"; exit 1; }
    nusec package import "$TMP"/pk/*.nspkg >/dev/null || { echo "FAIL package import"; exit 1; }
}
