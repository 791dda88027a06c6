#!/usr/bin/env bash
# Issues 10 and 14 together: the ordinary faults of issue 10 in the two-site
# shape (`nusec stack up --sites 1`: the OEM's cloud broker + cloud, one CM
# site with its own broker bridged to the cloud broker, its station and
# programmers). Mid-production, in turn:
#   1. the site broker restarted (SIGTERM: it saves its persistence);
#   2. the cloud broker crashes (SIGKILL) and is started again;
#   3. the cloud crashes (SIGKILL) and is started again;
#   4. the site broker crashes (SIGKILL) and is started again.
# Each is started again as a supervisor would (the same command line), never
# by `nusec stack up`, and nothing else is touched: the bridge, the station
# and the programmers must find their way back by themselves.
#
# Checked from the outside: production resumes after every fault (seconds
# from the restart to the next certificate or report printed); at the end the whole
# quota is issued (devices > quota), no duplicate UID, every locked chip's
# certificate in the ledger, every certificate reported provisioned exactly
# once in the ledger and once in the site's station journal, no chip left
# half done, no KeyStore unit wasted, `nusec audit verify` passes.
#
# usage: test_sites_restarts.sh BIN_DIR      NUSEC_KEEP_TMP=1 keeps the folder
set -uo pipefail
BIN=$1
. "${BASH_SOURCE%/*}/../../lib/stack_lib.sh" frst
trap "exit 1" TERM INT
DIR=$TMP/oem
CM=$DIR/cm/site-1
DEVICES=44 QUOTA=40
oem() { "$BIN/nusec" "$@" --dir "$DIR"; }
cm() { "$BIN/nusec" "$@" --dir "$CM"; }
now_ms() { date +%s%3N; }
secs() { python3 -c "print(f'{($1) / 1000:.1f}')"; }
q() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
die() { echo "FAIL $*"; exit 1; }

# ~3.9 s of simulated flash per chip, so that the faults land mid-production.
oem stack up --sites 1 --programmers 2 --sockets 4 --devices $DEVICES --flash-us-per-kib 60000 \
    >"$TMP/up.log" 2>&1 || { cat "$TMP/up.log"; die "stack up --sites 1"; }
MOSQ=$(readlink "/proc/$(cat "$DIR/run/broker.pid")/exe")
[[ -x $MOSQ ]] || die "cannot tell the broker's program"

head -c 65536 /dev/urandom >"$TMP/app.bin"
oem firmware sign --in "$TMP/app.bin" --name app --version 1.0.0 >"$TMP/sign.log" 2>&1 ||
    { cat "$TMP/sign.log"; die "firmware sign"; }
mkdir -p "$TMP/pk"
JOB=$(oem job create --firmware app-1.0.0 --quota $QUOTA --programmer prog-1 --programmer prog-2 \
    --expires 1h --out "$TMP/pk" 2>"$TMP/create.err" | tail -n 1 | cut -d' ' -f1)
[[ $JOB == job-* ]] || { cat "$TMP/create.err"; die "job create"; }
cm package import "$TMP"/pk/*.nspkg >"$TMP/import.log" 2>&1 ||
    { cat "$TMP/import.log"; die "package import at the site"; }

# restart_broker SIG STATE_DIR: stop that broker with SIG and start it again
# with its own configuration (it writes its pid file itself).
restart_broker() {
    local pid conf=$2/broker/mosquitto.conf
    pid=$(cat "$2/run/broker.pid")
    kill "-$1" "$pid"
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$pid" 2>/dev/null && { echo "  broker $pid did not stop"; return 1; }
    sleep 1
    "$MOSQ" -c "$conf" -d 2>>"$TMP/broker-restart.err" || { cat "$TMP/broker-restart.err"; return 1; }
}
# The cloud SIGKILLed and started again with the command `nusec stack up` gave it.
restart_cloud() {
    local pid
    pid=$(cat "$DIR/run/cloud.pid")
    kill -9 "$pid"
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    sleep 1
    setsid "$BIN/nusec-cloud" --dir "$DIR" --log "$DIR/logs/cloud.log" </dev/null \
        >>"$DIR/logs/cloud.log" 2>&1 &
    echo $! >"$DIR/run/cloud.pid"
}

ups=() up_count=0
# fault_at N KIND: once N certificates exist (and the line resumed from the
# last fault), apply KIND; the restart time goes to ups[].
fault_at() {
    local want=$1 n
    ((want <= up_count)) && want=$((up_count + 1))
    wait_certs "$want" 120 || { echo "  no $want certificates before the fault (no resume)"; return 1; }
    n=$(certs)
    [[ $n =~ ^[0-9]+$ ]] && ((n >= QUOTA)) && { echo "  production ended before this fault ($n)"; return 1; }
    case $2 in
    site-broker-term) restart_broker TERM "$CM" || return 1 ;;
    site-broker-kill) restart_broker KILL "$CM" || return 1 ;;
    cloud-broker-kill) restart_broker KILL "$DIR" || return 1 ;;
    cloud-kill) restart_cloud || return 1 ;;
    esac
    ups+=("$(now_ms)")
    up_count=$(certs)
}

T0=$(now_ms)
cm production start --job "$JOB" >"$TMP/start.log" 2>&1 || { cat "$TMP/start.log"; die "production start"; }
check "site broker restarted (SIGTERM) at 3 certificates" fault_at 3 site-broker-term
check "cloud broker crashed (SIGKILL) and restarted at 12 certificates" fault_at 12 cloud-broker-kill
check "cloud crashed (SIGKILL) and restarted at 21 certificates" fault_at 21 cloud-kill
check "site broker crashed (SIGKILL) and restarted at 30 certificates" fault_at 30 site-broker-kill

half_done() { grep -h '^state=' "$CM"/targets/*/state | grep -vc '^state=\(locked\|blank\)$'; }
done_ok() { # the whole quota issued, nothing half done, all reported (180 s at most)
    local n end=$(($(now_ms) + 180000))
    while (($(now_ms) < end)); do
        n=$(certs)
        if [[ $n =~ ^[0-9]+$ ]] && ((n >= QUOTA)) && [[ $(half_done) -eq 0 &&
              $(q "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB' AND state!='provisioned'") \
              -eq 0 ]]; then
            return 0
        fi
        sleep 0.2
    done
    return 1
}
check "line completes by itself: nothing half done, all reported" done_ok
T1=$(now_ms)
sleep 1 # the last station events
resume=() resumed_all=0
for t in "${ups[@]}"; do
    first=$(stack_first_after "$t")
    if [[ -n $first ]]; then resume+=("$(secs "$first - $t")"); else resume+=(none); resumed_all=1; fi
done
check "production resumed after every fault (${#ups[@]} faults)" test "$resumed_all" -eq 0 -a "${#ups[@]}" -eq 4

stack_check_outcome "$CM"
audit_ok() { oem audit verify >"$TMP/verify.log" 2>&1 || { cat "$TMP/verify.log"; return 1; }; }
check "audit verify passes" audit_ok
stack_check_units "$CM" "the faults"
echo "cert_resent_rows $(q "SELECT COUNT(*) FROM audit_events WHERE job_id='$JOB' AND kind='cert.resent'")"
echo "faults site-broker-term cloud-broker-kill cloud-kill site-broker-kill"
echo "resume_seconds_after_restart ${resume[*]}"
echo "production_seconds $(secs "$T1 - $T0")"
if [[ $failed -ne 0 ]]; then
    for f in "$CM"/logs/prog-*.log "$CM/logs/station.log" "$DIR/logs/cloud.log"; do
        echo "== $f"; grep -v " info: " "$f" | tail -n 15
    done
fi
echo "passed $passed failed $failed"
[[ $failed -eq 0 ]]
