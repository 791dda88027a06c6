#!/usr/bin/env bash
# One --json convention for every nusec command (docs/cli.md), on the real
# local stack: every subcommand whose --help offers --json is run, and its
# stdout is parsed with Python's json module (not grep): one thing = one
# object on one line, a list = one array on one line, a stream = one object
# per line, a failure = a last line {"error":{"code","name","message"}} whose
# name is the error's. Also `monitor --count N`: it stops after N events
# during a production, and ends (TIMEOUT) instead of waiting for ever once
# the bus is quiet.
#
# usage: test_json.sh BIN_DIR SOURCE_DIR
set -uo pipefail
BIN=$1 SRC=$2
PY=/usr/bin/python3 # Debian's, whatever python3 the PATH has
CHECK="$PY $SRC/tests/integration/ops/json_check.py"
. "$SRC/tests/lib/stack_lib.sh" json
covered=" "

# json_ok WANT_RC KIND CMD... [-- KEY...]: run `nusec CMD --json`, expect the
# exit status and the output KIND (json_check.py) with these keys.
json_ok() {
    local want=$1 kind=$2 cmd=() keys=() rc
    shift 2
    while (($#)) && [[ $1 != -- ]]; do cmd+=("$1"); shift; done
    (($#)) && shift && keys=("$@")
    nusec "${cmd[@]}" --json >"$TMP/out.json" 2>"$TMP/err.txt"
    rc=$?
    [[ $rc -eq $want ]] || { echo "  exit $rc, expected $want: $(head -c 400 "$TMP/err.txt")"; return 1; }
    $CHECK "$kind" "${keys[@]}" <"$TMP/out.json" || { head -c 400 "$TMP/out.json"; return 1; }
    # A command is covered by its group and subcommand (monitor, report: group only).
    case ${cmd[0]} in monitor | report) covered+="${cmd[0]} " ;; *) covered+="${cmd[0]}/${cmd[1]} " ;; esac
}

mkdir -p "$DIR"
if ! nusec stack up --programmers 1 --sockets 2 --devices 6 >"$TMP/up.txt" 2>&1; then
    cat "$TMP/up.txt"
    check "stack up" false
    echo "integration_json: $passed passed, $failed failed"
    exit 1
fi

# --- the OEM's commands ------------------------------------------------------------------
head -c 4096 /dev/urandom >"$TMP/app.bin"
check "firmware sign --json: one object" json_ok 0 object firmware sign --in "$TMP/app.bin" \
    --name app --version 1.0.0 -- image path size digest
check "firmware list --json: one array" json_ok 0 array firmware list -- image size signed_at_ms digest
check "job create --json: one object" json_ok 0 object job create --firmware app-1.0.0 --quota 4 \
    --programmer prog-1 --expires 1h --out "$TMP/pkg" -- job packages
job=$($PY -c 'import json,sys; print(json.load(sys.stdin)["job"])' <"$TMP/out.json")
check "job list --json: one array" json_ok 0 array job list -- job status quota issued programmers
check "job show --json: one object" json_ok 0 object job show "$job" -- job status quota issued
check "job pause --json: the job's state" json_ok 0 object job pause "$job" -- job status
check "job resume --json: the job's state" json_ok 0 object job resume "$job" -- job status
check "job write-off --json of a job without leases: NOT_FOUND" \
    json_ok 1 error:NOT_FOUND job write-off "$job" --programmer prog-1
check "programmer list --json: one array" json_ok 0 array programmer list -- id state serial
check "programmer token --json: one object" json_ok 0 object programmer token --name prog-9 \
    -- programmer token expires_at_ms

# --- the CM's commands, and a production ------------------------------------------------
pkg=$(ls "$TMP"/pkg/*.nspkg)
check "package inspect --json: one object, no top-level error key" json_ok 0 object package inspect \
    "$pkg" -- package_id job programmer limit verdict intact
check "package list --json, nothing imported: an empty array" json_ok 0 array package list
check "package list: [] exactly" grep -qx '\[\]' "$TMP/out.json"
check "package import --json: one array of what was imported" json_ok 0 array package import \
    "$pkg" -- file job programmer limit
check "package list --json: one array" json_ok 0 array package list -- package_id job programmer

# monitor --count N during a production: exactly N lines, then exit 0.
nusec monitor --json --count 3 --timeout 120 >"$TMP/mon.jsonl" 2>"$TMP/mon.err" &
mon=$!
for _ in $(seq 100); do grep -q listening "$TMP/mon.err" 2>/dev/null && break; sleep 0.1; done
nusec production start --job "$job" --wait >/dev/null 2>&1
wait "$mon"
mon_rc=$?
check "monitor --count 3 during a production: exit 0" test "$mon_rc" -eq 0
check "monitor --count 3: three JSON lines" \
    bash -c "[[ \$(wc -l <'$TMP/mon.jsonl') -eq 3 ]] && $CHECK lines topic kind sender job <'$TMP/mon.jsonl'"
covered+="monitor "

check "production status --json: one object" json_ok 0 object production status --job "$job" -- jobs
check "report --json: one object" json_ok 0 object report --job "$job" -- job quota issued provisioned
check "device list --json: one array" json_ok 0 array device list --job "$job" -- uid job serial state
check "device list --json: 4 devices" $PY -c \
    'import json,sys; d=json.load(open(sys.argv[1])); assert len(d)==4, d' "$TMP/out.json"
check "device export --json: one object per line" json_ok 0 lines device export --job "$job" \
    -- uid serial job programmer certificate_pem chain_pem
check "device export --json: 4 lines" test "$(wc -l <"$TMP/out.json")" -eq 4
check "audit verify --json: one object" json_ok 0 object audit verify -- ok events certificates
check "stack status --json: one array" json_ok 0 array stack status -- service pid alive
check "job close --json: the job's state" json_ok 0 object job close "$job" -- job status

# --- failures: the last line names the error ------------------------------------------
check "job show nosuch --json: NOT_FOUND, exit 1" json_ok 1 error:NOT_FOUND job show nosuch
check "device list --job nosuch --json: NOT_FOUND" json_ok 1 error:NOT_FOUND device list --job nosuch
check "report --job nosuch --json: NOT_FOUND" json_ok 1 error:NOT_FOUND report --job nosuch
check "usage error --json: INVALID_ARG, exit 2" json_ok 2 error:INVALID_ARG job show
check "a second package import of the same file: EXISTS, exit 3" \
    json_ok 3 error:EXISTS package import "$pkg"
cp "$pkg" "$TMP/bad.nspkg"
printf '\x01' | dd of="$TMP/bad.nspkg" bs=1 seek=$(($(stat -c %s "$pkg") - 10)) conv=notrunc 2>/dev/null
check "package inspect of a tampered package: the verdict, then TAMPERED" \
    json_ok 1 error:TAMPERED package inspect "$TMP/bad.nspkg"
check "... whose first line is the package object" $PY -c \
    'import json,sys; d=json.loads(open(sys.argv[1]).readline()); assert d["intact"] is False, d' \
    "$TMP/out.json"

# monitor --count once the line is quiet: it ends, TIMEOUT, instead of waiting for ever.
timeout 60 "$BIN/nusec" monitor --dir "$DIR" --json --count 3 --idle 2 >"$TMP/mon2.json" 2>/dev/null
check "monitor --count 3 --idle 2 on a quiet bus: exit 1 (not killed)" test $? -eq 1
check "... with a TIMEOUT error line" $CHECK error:TIMEOUT <"$TMP/mon2.json"
timeout 60 "$BIN/nusec" monitor --dir "$DIR" --json --count 3 --timeout 2 --idle 0 >"$TMP/mon3.json" 2>/dev/null
check "monitor --count 3 --timeout 2: exit 1, TIMEOUT" \
    bash -c "[[ $? -eq 1 ]] && $CHECK error:TIMEOUT <'$TMP/mon3.json'"

# --- every command that offers --json was run above ------------------------------------
all=$("$BIN/nusec" --help | $PY -c '
import sys
for line in sys.stdin:
    if line.startswith("  ") and not line.strip()[0].isdigit():
        print(" ".join(line.split()[:2]))')
missing=""
while read -r g s; do
    case $g in monitor | report) cmd=("$g") key=$g ;; *) cmd=("$g" "$s") key=$g/$s ;; esac
    "$BIN/nusec" "${cmd[@]}" --help 2>/dev/null | grep -q -- '--json' || continue
    [[ "$covered" == *" $key "* ]] || missing+=" $key"
done <<<"$all"
check "every command with --json is covered (missing:${missing:- none})" test -z "$missing"

echo "integration_json: $passed passed, $failed failed"
((failed == 0))
