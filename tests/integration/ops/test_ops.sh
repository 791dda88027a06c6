#!/usr/bin/env bash
# Running NuSEC as a product, on the real local stack:
# - every program answers --version with the revision it was built from;
# - SIGHUP (a logrotate postrotate) reopens the log files of nusec-cloud and
#   nusec-station, which keep serving: a production runs after it; SIGTERM
#   still drains (stack down stops them without killing).
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

# --- SIGHUP: logs reopened, services keep serving ---------------------------------------
nusec() { "$BIN/nusec" "$@" --dir "$DIR"; }
wait_for() { # wait_for SECONDS COMMAND...: poll until it succeeds
    local end=$((SECONDS + $1))
    shift
    until "$@"; do ((SECONDS < end)) || return 1; sleep 0.2; done
}
mkdir -p "$DIR"
if ! nusec stack up --programmers 1 --sockets 2 --devices 4 >"$TMP/up.txt" 2>&1; then
    cat "$TMP/up.txt"
    check "stack up" false
    echo "integration_ops: $passed passed, $failed failed"
    exit 1
fi
cat "$TMP/up.txt"
cloud_pid=$(cat "$DIR/run/cloud.pid") station_pid=$(cat "$DIR/run/station.pid")
mv "$DIR/logs/cloud.log" "$DIR/logs/cloud.log.1"
mv "$DIR/logs/station.log" "$DIR/logs/station.log.1"
kill -HUP "$cloud_pid" "$station_pid"
check "cloud recreates its log file on SIGHUP" \
    wait_for 10 grep -q "SIGHUP: log reopened" "$DIR/logs/cloud.log"
check "station recreates its log file on SIGHUP" \
    wait_for 10 grep -q "SIGHUP: log reopened" "$DIR/logs/station.log"
sleep 0.5
check "cloud still runs after SIGHUP" kill -0 "$cloud_pid"
check "station still runs after SIGHUP" kill -0 "$station_pid"
check "cloud answers requests after SIGHUP" nusec programmer list
# A whole production after the SIGHUP: cloud and station serve it.
produce() {
    head -c 16384 /dev/urandom >"$TMP/app.bin"
    nusec firmware sign --in "$TMP/app.bin" --name ops-app --version 1.0.0 >/dev/null &&
        job=$(nusec job create --firmware ops-app-1.0.0 --quota 4 --programmer prog-1 \
            --expires 1h --out "$DIR/packages" | tail -n 1) &&
        nusec package import "$DIR"/packages/*.nspkg >/dev/null &&
        timeout 120 "$BIN/nusec" production start --job "$job" --wait --dir "$DIR" >/dev/null &&
        [[ $(sqlite3 "$DIR/cloud/ledger.db" "select issued from jobs where job_id='$job'") == 4 ]]
}
job=
check "a production runs after SIGHUP (4 devices issued)" produce
check "the new cloud log has the production's lines" grep -q "job $job created" "$DIR/logs/cloud.log"

# --- SIGTERM still drains ------------------------------------------------------------------
nusec stack down >"$TMP/down.txt" 2>&1
cat "$TMP/down.txt"
check "stack down stops the cloud on SIGTERM without killing it" \
    grep -Eq '^cloud +stopped \(pid [0-9]+\)$' "$TMP/down.txt"
check "the cloud drained on SIGTERM" grep -q "draining and stopping" "$DIR/logs/cloud.log"

echo "integration_ops: $passed passed, $failed failed"
((failed == 0))
