#!/usr/bin/env bash
# Issue 15 part 2 on the real stack: a job with --offline-lease N, the cloud
# agent's link cut mid-production (TCP relay, tests/tools/tcp_relay.py, as in
# test_wan_cut.sh), production goes on under the lease up to N certificates
# per programmer and then pauses; prog-2 is SIGKILLed mid-lease and started
# again (still cut); the link comes back and the programmers upload what
# they issued.
#
# Checks, from the outside: a lease granted per programmer before the cut;
# chips locked while cut; per lease at most N offline certificates, counters
# never reused; every offline chip's certificate passes `openssl verify`
# against Root -> Device CA (the PKI's) -> the line CA the ledger granted;
# the chip holds the chain; every locked chip's certificate in the ledger
# once, the offline ones with their lease (lease_certs, lease.recorded);
# no lease.incident; certificates <= quota; the kill wasted at most one
# lease counter value (the KeyStore's reservation); audit verify passes.
# Prints `name value` lines (offline and online rates of the run, upload).
#
# A fast line (FAST=1, small FLASH_US_PER_KIB): at the cut every socket has
# a cert.request out (the relay holds the cloud's answers 4 s before the
# cut: the cloud issues, nothing comes back); after the programmer's
# lease_abandon_ms (10 s) each is
# abandoned and its chip certified offline, superseding the request. Then
# also: each online certificate the cloud issued for such a request is
# revoked (cert_superseded, on the device CRL), no chip holds one, one live
# certificate per chip, and with FAST=1 at least one request was abandoned.
#
# usage: test_lease_offline.sh BIN_DIR [LEASE FLASH_US_PER_KIB DEVICES FAST]
#   (default 5 30000 28 0; ./build.sh bench runs a bigger lease, faster flash)
set -uo pipefail
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
RELAY=$HERE/../../tools/tcp_relay.py
. "$HERE/../../lib/stack_lib.sh" lease
LEASE=${2:-5} FLASH=${3:-30000} DEVICES=${4:-28} FAST=${5:-0}
# A fast line abandons within 1 s of the cut: before the sockets that were
# not asking (a report) use the whole lease up.
((FAST)) && export NUSEC_LEASE_ABANDON_MS=1000
QUOTA=$((DEVICES + 12))
relay_pid=
cleanup_more() { if [[ -n $relay_pid ]]; then kill "$relay_pid" 2>/dev/null; fi; }
mkdir -p "$DIR"
now_ms() { date +%s%3N; }
q() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
# An online certificate an offline one superseded (revoked, its unit
# refunded) counts no more: certificates are the live ones.
LIVE="serial NOT IN (SELECT serial FROM cert_superseded)"
certs() { q "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB' AND $LIVE"; }

# ~2 s of simulated flash per chip: the cut lands mid-production.
STACK=(--programmers 2 --sockets 2 --devices $DEVICES --flash-us-per-kib $FLASH)
nusec stack up "${STACK[@]}" >"$TMP/up.log" 2>&1 || { cat "$TMP/up.log"; echo "FAIL stack up"; exit 1; }
# The cloud agent again, through the relay (see test_wan_cut.sh).
endpoint=$(cat "$DIR/broker/endpoint")
python3 "$RELAY" --hold-client --target "$endpoint" --port-file "$TMP/relay.port" \
    2>"$TMP/relay.log" &
relay_pid=$!
for _ in $(seq 50); do [[ -s $TMP/relay.port ]] && break; sleep 0.1; done
kill "$(cat "$DIR/run/cloud.pid")"
for _ in $(seq 100); do kill -0 "$(cat "$DIR/run/cloud.pid")" 2>/dev/null || break; sleep 0.1; done
cp "$DIR/broker/endpoint" "$TMP/endpoint.direct"
echo "127.0.0.1:$(cat "$TMP/relay.port")" >"$DIR/broker/endpoint"
nusec stack up "${STACK[@]}" >"$TMP/up-relay.log" 2>&1
up_rc=$?
cp "$TMP/endpoint.direct" "$DIR/broker/endpoint"
((up_rc == 0)) || { cat "$TMP/up-relay.log"; echo "FAIL cloud behind the relay"; exit 1; }

stack_job $QUOTA --offline-lease "$LEASE" --lease-hours 1
wait_for() { # wait_for SECONDS COMMAND...: until it succeeds
    local n=$(($1 * 10))
    shift
    for _ in $(seq $n); do "$@" && return 0; sleep 0.1; done
    return 1
}
offline() { cat "$DIR"/logs/prog-"$1"*.log 2>/dev/null | grep -c 'issued offline'; }
locked() { grep -l '^state=locked$' "$DIR"/targets/*/state 2>/dev/null | wc -l; }
touched() { grep -L '^state=blank$' "$DIR"/targets/*/state 2>/dev/null | sort; }
leases_active() { [[ $(q "SELECT COUNT(*) FROM leases WHERE job_id='$JOB' AND state='active'") -eq 2 ]]; }

T0=$(now_ms)
nusec production start --job "$JOB" >"$TMP/start.log" 2>&1 || { cat "$TMP/start.log"; exit 1; }
check "each programmer holds a lease of $LEASE units before the cut" wait_for 60 leases_active
check "4 certificates online before the cut" wait_certs 4 120
T_ON=$(now_ms) N_ON=$(certs)

# For the programmers the outage starts when answers stop coming: on the
# fast line that is the hold, and they go on under the lease during it.
L_CUT=$(locked)
if ((FAST)); then
    # Every socket caught asking: the cloud's answers are held back first
    # (requests still reach it and it issues), then the link is cut. A
    # certificate the cloud issued after the hold began is a request whose
    # answer is kept: it will be abandoned for the lease. When every socket
    # was waiting on a report instead (no such certificate within 1.2 s,
    # which a slow run sees), the hold is released before any request
    # times out, and tried again.
    held_certs() { # certificates issued since the relay's last hold
        local at
        at=$(grep 'way back held' "$TMP/relay.log" | tail -n 1 | awk '{printf "%.0f", $2 * 1000}')
        q "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB' AND issued_at_ms > ${at:-0}"
    }
    for _ in 1 2 3 4; do
        kill -HUP "$relay_pid"
        sleep 1.2
        (($(held_certs) > 0)) && break
        kill -WINCH "$relay_pid"
        sleep 0.5
    done
    sleep 2.8
fi
kill -USR1 "$relay_pid"
T_CUT=$(now_ms)
# prog-2 is killed once it issued one offline, and started again (still cut).
prog2_offline() { [[ $(offline 2) -ge 1 ]]; }
kill_prog2() {
    wait_for 90 prog2_offline || return 1
    sleep 0.5 # into its next chips
    kill -9 "$(cat "$DIR/run/prog-2.pid")"
    sleep 1
    # As `nusec stack up` starts it (which waits for a healthy cloud: not now).
    "$BIN/nusec-programmer" --dir "$DIR" --name prog-2 --sockets 2 --devices $((DEVICES / 2)) \
        --flash-us-per-kib "$FLASH" >>"$DIR/logs/prog-2.log" 2>&1 &
    echo $! >"$DIR/run/prog-2.pid"
    sleep 2
    kill -0 "$(cat "$DIR/run/prog-2.pid")" || return 1
    # The station starts it again on the job (as after any programmer restart).
    nusec production start --job "$JOB" >"$TMP/start2.log" 2>&1
}
check "prog-2 SIGKILLed mid-lease and started again, while cut" kill_prog2
both_used() { [[ $(offline 1) -ge $LEASE && $(offline 2) -ge $((LEASE - 1)) ]]; }
check "production went on while cut: both leases used" wait_for 120 both_used
T_OFF=$(now_ms) N_OFF=$(($(offline 1) + $(offline 2)))
sleep 3 # chips in flight finish
before=$(touched)
sleep 4
check "the line pauses at N: no chip started for 4 s" test "$before" == "$(touched)"
check "chips locked while cut ($(($(locked) - L_CUT)))" test $(($(locked) - L_CUT)) -ge $LEASE
check "prog-1 issued exactly $LEASE offline ($(offline 1))" test "$(offline 1)" -eq $LEASE
check "prog-2 issued at most $LEASE offline ($(offline 2))" test "$(offline 2)" -le $LEASE

kill -USR2 "$relay_pid"
T_UP=$(now_ms)
recorded() { q "SELECT COUNT(*) FROM lease_certs c JOIN leases l USING (lease_id) WHERE l.job_id='$JOB'"; }
all_up() { [[ $(recorded) -eq $(($(offline 1) + $(offline 2))) ]]; }
check "every offline certificate uploaded and recorded" wait_for 90 all_up
T_REC=$(now_ms)
half_done() { grep -h '^state=' "$DIR"/targets/*/state | grep -vc '^state=\(locked\|blank\)$'; }
done_ok() {
    local last=-1 same=0 n
    for _ in $(seq 900); do
        n=$(certs)
        if [[ $n -eq $last ]]; then same=$((same + 1)); else same=0; last=$n; fi
        if [[ $same -ge 40 && $(half_done) -eq 0 &&
              $(q "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB' AND state!='provisioned' AND $LIVE") \
              -eq 0 ]]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
check "line completes after the restore: nothing half done, all reported" done_ok
T1=$(now_ms)

issued=$(certs)
n_off=$(recorded)
check "certificates <= quota ($issued of $QUOTA)" test "$issued" -le $QUOTA
check "no duplicate UID" \
    test "$(q "SELECT COUNT(DISTINCT device_uid) FROM certificates WHERE job_id='$JOB' AND $LIVE")" -eq "$issued"
# Requests abandoned at the cut (their chips certified offline) and the
# online certificates the cloud had issued for them: revoked, on the CRL.
n_abandoned=$(cat "$DIR"/logs/prog-*.log | grep -c 'its online request abandoned')
n_sup=$(q "SELECT COUNT(*) FROM cert_superseded WHERE job_id='$JOB'")
if ((FAST)); then
    check "fast line: requests out at the cut abandoned for the lease ($n_abandoned)" test "$n_abandoned" -ge 1
fi
check "superseded online certificates <= abandoned requests ($n_sup <= $n_abandoned)" \
    test "$n_sup" -le "$n_abandoned"
check "every superseded certificate revoked" test "$(q "SELECT COUNT(*) FROM certificates WHERE
    serial IN (SELECT serial FROM cert_superseded) AND state = 'revoked'")" -eq "$n_sup"
crl_has_all() {
    local s
    openssl crl -in "$DIR/pki/device-crl.pem" -noout -text >"$TMP/crl.txt" 2>/dev/null || return 1
    for s in $(q "SELECT lower(serial) FROM cert_superseded"); do
        tr 'A-F' 'a-f' <"$TMP/crl.txt" | tr -d ':' | grep -q "${s#0}" ||
            { echo "  $s not on the device CRL"; return 1; }
    done
}
check "every superseded certificate on the device CRL" wait_for 30 crl_has_all
check "no lease.incident" test "$(q "SELECT COUNT(*) FROM audit_events WHERE kind='lease.incident'")" -eq 0
check "lease.recorded once per offline certificate ($n_off)" \
    test "$(q "SELECT COUNT(*) FROM audit_events WHERE kind='lease.recorded' AND job_id='$JOB'")" -eq "$n_off"
over() { q "SELECT COUNT(*) FROM leases l WHERE job_id='$JOB' AND (SELECT COUNT(*) FROM lease_certs c WHERE c.lease_id=l.lease_id) > l.units"; }
check "no lease beyond its units" test "$(over)" -eq 0
check "no lease counter used twice" \
    test "$(q "SELECT COUNT(*) FROM (SELECT lease_id, counter FROM lease_certs GROUP BY 1, 2 HAVING COUNT(*) > 1)")" -eq 0
# The kill: prog-2's highest counter value minus its certificates is what it wasted.
p2_max=$(cat "$DIR"/logs/prog-2*.log | grep -o 'certificate [0-9]* of' | awk '{print $2}' | sort -n | tail -n 1)
p2_rec=$(q "SELECT COUNT(*) FROM lease_certs c JOIN leases l USING (lease_id) WHERE l.programmer_id='prog-2' AND l.job_id='$JOB'")
check "the kill wasted at most one lease unit ($((${p2_max:-0} - p2_rec)))" \
    test $((${p2_max:-0} - p2_rec)) -le 1

# Outside verification of every offline chip: its certificate, through the
# line CA the ledger granted and the PKI's Device CA, to the Root.
declare -A serial_known=() serial_lease=()
while read -r s; do serial_known[${s^^}]=1; done < <(q "SELECT serial FROM certificates WHERE job_id='$JOB'")
while read -r s; do serial_lease[${s^^}]=1; done < <(q "SELECT serial FROM lease_certs")
declare -A serial_sup=()
while read -r s; do serial_sup[${s^^}]=1; done < <(q "SELECT serial FROM cert_superseded")
held_sup=0
mkdir -p "$TMP/line"
while IFS='|' read -r id hex; do
    echo "$hex" | xxd -r -p | openssl x509 -inform DER -out "$TMP/line/$id.pem" 2>/dev/null
done < <(q "SELECT lease_id, hex(cert_der) FROM leases WHERE job_id='$JOB'")
lost=0 bad=0 nchain=0 n_locked=0 n_offchips=0
for t in "$DIR"/targets/*/; do
    grep -q '^state=locked$' "$t/state" 2>/dev/null || continue
    n_locked=$((n_locked + 1))
    s=$(openssl x509 -in "$t/cert.pem" -noout -serial 2>/dev/null | sed 's/^serial=//')
    [[ -n "$s" && -n "${serial_known[${s^^}]:-}" ]] || lost=$((lost + 1))
    [[ -n "$s" && -n "${serial_sup[${s^^}]:-}" ]] && held_sup=$((held_sup + 1))
    [[ -n "$s" && -n "${serial_lease[${s^^}]:-}" ]] || continue
    n_offchips=$((n_offchips + 1))
    [[ $(grep -c 'BEGIN CERTIFICATE' "$t/cert.pem") -eq 3 ]] && nchain=$((nchain + 1))
    ok=0
    for l in "$TMP"/line/*.pem; do
        cat "$DIR/pki/device-ca.pem" "$l" >"$TMP/untrusted.pem"
        openssl verify -CAfile "$DIR/pki/root-ca.pem" -untrusted "$TMP/untrusted.pem" \
            "$t/cert.pem" >/dev/null 2>&1 && ok=1 && break
    done
    ((ok)) || bad=$((bad + 1))
done
check "every locked chip's certificate in the ledger ($n_locked locked)" test "$lost" -eq 0
check "offline chips = offline certificates ($n_offchips)" test "$n_offchips" -eq "$n_off"
check "no chip holds a superseded certificate" test "$held_sup" -eq 0
check "offline certificates pass openssl verify Root -> Device CA -> line CA" test "$bad" -eq 0
check "offline chips hold the chain (leaf, line CA, Device CA)" test "$nchain" -eq "$n_offchips"
audit_ok() { nusec audit verify >"$TMP/verify.log" 2>&1; }
check "audit verify passes" audit_ok

rate() { python3 -c "print(f'{$1 / max(($2) / 1000, 0.001):.2f}')"; }
# One programmer (prog-1, not killed), same run: certificates per second
# while it issued offline (first to last, from its log) and online after
# the restore (first to last in the ledger, its offline ones left out).
prog1_offline=$(grep 'issued offline' "$DIR/logs/prog-1.log" | cut -c1-23 | python3 -c '
import sys, datetime
t = [datetime.datetime.fromisoformat(l.strip()).timestamp() for l in sys.stdin if l.strip()]
print(f"{(len(t) - 1) / (t[-1] - t[0]):.2f}" if len(t) > 1 and t[-1] > t[0] else "null")')
prog1_online=$(q "SELECT issued_at_ms FROM certificates WHERE job_id='$JOB' AND programmer_id='prog-1'
    AND issued_at_ms > $T_UP AND serial NOT IN (SELECT serial FROM lease_certs) ORDER BY 1" | python3 -c '
import sys
t = [int(l) for l in sys.stdin if l.strip()]
print(f"{(len(t) - 1) * 1000 / (t[-1] - t[0]):.2f}" if len(t) > 1 and t[-1] > t[0] else "null")')
echo "devices $DEVICES"
echo "lease_units_per_programmer $LEASE"
echo "certificates $issued"
echo "offline_certificates $n_off"
echo "abandoned_requests $n_abandoned"
echo "superseded_online_certificates $n_sup"
echo "online_rate_before_cut_per_s $(rate "$N_ON" "$T_ON - $T0")"
echo "offline_rate_while_cut_per_s $(rate "$N_OFF" "$T_OFF - $T_CUT")"
echo "lease_prog_offline_cert_per_s $prog1_offline"
echo "lease_prog_online_cert_per_s $prog1_online"
echo "upload_seconds_after_restore $(python3 -c "print(f'{($T_REC - $T_UP) / 1000:.1f}')")"
echo "production_seconds $(python3 -c "print(f'{($T1 - $T0) / 1000:.1f}')")"
if [[ $failed -ne 0 ]]; then
    for f in "$DIR"/logs/prog-*.log "$DIR"/logs/cloud.log; do echo "== $f"; grep -v " info: " "$f" | tail -n 15; done
    # The lease's own story (its info lines), which the warnings alone do not tell.
    for f in "$DIR"/logs/prog-*.log; do
        echo "== $f (lease, link, production)"
        grep -E 'lease|resumes|paused|answers again|unreachable|production|error' "$f" |
            grep -vE 'issued offline|certificate\(s\) uploaded \(1 new' | tail -n 40
    done
    echo "== lease rows"
    q "SELECT lease_id, programmer_id, units, used, state FROM leases"
fi
echo "passed $passed failed $failed"
[[ $failed -eq 0 ]]
