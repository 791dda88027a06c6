#!/usr/bin/env bash
# Issue 15 part 1 on the real stack: the cloud's link to the broker is cut
# and restored several times mid-production (the WAN between a factory and
# the cloud). The cloud agent reaches the broker through a TCP relay
# (tests/tools/tcp_relay.py) the test cuts (SIGUSR1) and restores (SIGUSR2);
# programmers and station keep their broker.
#
# Checks, from the outside: while cut, `nusec production status` (text and
# --json) says "cloud unreachable since", the station published
# cloud.unreachable on the bus, and no new chip is started (the set of chips
# touched does not grow); after each restore production resumes by itself;
# at the end: certificates <= quota, every locked chip's certificate in the
# ledger, every report recorded once (ledger and station journal), no chip
# half done, audit verify passes, no unit wasted. Prints `name value` lines,
# among them the seconds from each restore to the next certificate or report.
#
# The cloud's queue drains at once at a cut: a request it took in before the
# cut still commits, but its reply is dropped (the programmer's retry gets
# the certificate by RESEND) and its events are queued, not waited for; no
# worker sits out a PUBACK timeout per message (checked in the cloud's log:
# no "no PUBACK" line; the drops are counted). cut_drain_seconds: from each
# cut to the cloud's last word on a message it held at the cut (its log's
# last "dropped: broker unreachable" or "no PUBACK for" line during the cut;
# 0: it held none).
#
# usage: test_wan_cut.sh BIN_DIR [LONG_OUTAGE_S]   (default 12; chaos runs 60)
set -uo pipefail
BIN=$1
LONG=${2:-12}
HERE=$(cd "$(dirname "$0")" && pwd)
RELAY=$HERE/../../tools/tcp_relay.py
. "$HERE/../../lib/stack_lib.sh" wan
DEVICES=56 QUOTA=48
relay_pid=
cleanup_more() { if [[ -n $relay_pid ]]; then kill "$relay_pid" 2>/dev/null; fi; }
mkdir -p "$DIR"
now_ms() { date +%s%3N; }
q() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
sq() { sqlite3 -cmd '.timeout 5000' "$DIR/station/station.db" "$1" 2>/dev/null; }

# ~5 s of simulated flash per chip, so that the cuts land mid-production.
nusec stack up --programmers 2 --sockets 4 --devices $DEVICES --flash-us-per-kib 80000 \
    >"$TMP/up.log" 2>&1 || { cat "$TMP/up.log"; echo "FAIL stack up"; exit 1; }

# The cloud agent again, through the relay: it reads DIR/broker/endpoint
# when it starts (and keeps that address for its reconnects), so the file
# names the relay only while it starts.
endpoint=$(cat "$DIR/broker/endpoint")
python3 "$RELAY" --target "$endpoint" --port-file "$TMP/relay.port" 2>"$TMP/relay.log" &
relay_pid=$!
for _ in $(seq 50); do [[ -s $TMP/relay.port ]] && break; sleep 0.1; done
kill "$(cat "$DIR/run/cloud.pid")"
for _ in $(seq 100); do kill -0 "$(cat "$DIR/run/cloud.pid")" 2>/dev/null || break; sleep 0.1; done
cp "$DIR/broker/endpoint" "$TMP/endpoint.direct"
echo "127.0.0.1:$(cat "$TMP/relay.port")" >"$DIR/broker/endpoint"
nusec stack up --programmers 2 --sockets 4 >"$TMP/up-relay.log" 2>&1
up_rc=$?
cp "$TMP/endpoint.direct" "$DIR/broker/endpoint"
((up_rc == 0)) || { cat "$TMP/up-relay.log"; echo "FAIL cloud behind the relay"; exit 1; }

stack_job $QUOTA
touched() { grep -L '^state=blank$' "$DIR"/targets/*/state 2>/dev/null | sort; }
status_says_cut() {
    for _ in $(seq 150); do
        nusec production status --job "$JOB" --once 2>/dev/null | grep -q 'cloud unreachable since' &&
            nusec production status --job "$JOB" --json 2>/dev/null |
            python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["cloud_unreachable_since_ms"] == 0)' &&
            return 0
        sleep 0.1
    done
    return 1
}
status_says_back() {
    for _ in $(seq 300); do
        nusec production status --job "$JOB" --json 2>/dev/null |
            python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["cloud_unreachable_since_ms"] != 0)' &&
            return 0
        sleep 0.1
    done
    return 1
}

T0=$(now_ms)
nusec production start --job "$JOB" >"$TMP/start.log" 2>&1 || { cat "$TMP/start.log"; exit 1; }

# cut_at N S: once N certificates exist, cut the link for S seconds; check
# what the line shows and does meanwhile; prints nothing, records the
# seconds from the restore to the next certificate or report in resume[].
resume=() outage=() drain=()
cloud_drain() { # cloud_drain T_CUT_MS T_UP_MS: seconds (see the header)
    python3 - "$1" "$2" "$DIR/logs/cloud.log" <<'PY'
import datetime, re, sys
cut, up, last = int(sys.argv[1]), int(sys.argv[2]), None
for line in open(sys.argv[3], errors='replace'):
    if 'dropped: broker unreachable' not in line and 'no PUBACK for' not in line:
        continue
    m = re.match(r'(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?)Z', line)
    if not m:
        continue
    t = datetime.datetime.fromisoformat(m.group(1)).replace(tzinfo=datetime.timezone.utc)
    ms = int(t.timestamp() * 1000)
    if cut < ms <= up:
        last = ms
print(f'{((last or cut) - cut) / 1000:.1f}')
PY
}
ups=() up_count=0
cut_at() {
    # Not before the line resumed from the previous cut (one certificate
    # after its restore), and only on a running line.
    local want=$1 n
    ((want <= up_count)) && want=$((up_count + 1))
    wait_certs "$want" 120 || { echo "  no $want certificates before the cut (no resume)"; return 1; }
    n=$(certs)
    [[ $n =~ ^[0-9]+$ ]] && ((n >= QUOTA)) && { echo "  production ended before this cut ($n)"; return 1; }
    local t_cut t_up n0 ok=0
    kill -USR1 "$relay_pid"
    t_cut=$(now_ms)
    status_says_cut || { echo "  status never said 'cloud unreachable since'"; ok=1; }
    # Chips in flight when the cut was noticed may still be keyed, and
    # requests the cloud took in before the cut may still commit (its work
    # queue drains into the ledger; the replies wait). Wait until the count
    # settles; from then on nothing new may be touched until the restore.
    sleep 2
    local before after settled
    n0=$(certs)
    for _ in $(seq 20); do
        sleep 0.5
        settled=$(certs)
        [[ $settled -eq $n0 ]] && break
        n0=$settled
    done
    before=$(touched)
    local left=$(($2 * 1000 - ($(now_ms) - t_cut)))
    ((left > 0)) && sleep "$(python3 -c "print($left / 1000)")"
    after=$(touched)
    if [[ "$before" != "$after" ]]; then
        echo "  new chips started while the cloud was unreachable:"
        comm -13 <(echo "$before") <(echo "$after") | sed 's/^/    /'
        ok=1
    fi
    # A request the cloud took in before the cut may still commit during it
    # (its reply waits out a PUBACK timeout per request, so the queue drains
    # slowly): fine, the chip was in flight and gets it by RESEND. A
    # certificate for a chip not started before the cut is not.
    [[ $(certs) -le $(wc -l <<<"$before") ]] || { echo "  certificates for chips started while cut"; ok=1; }
    up_count=$(certs)
    kill -USR2 "$relay_pid"
    t_up=$(now_ms)
    ups+=("$t_up")
    drain+=("$(cloud_drain "$t_cut" "$t_up")")
    outage+=("$(python3 -c "print(f'{($t_up - $t_cut) / 1000:.1f}')")")
    return $ok
}
# Cuts at a third and two thirds of the quota, each on a line that resumed
# from the previous one (the time to resume is read from the ledger at the
# end: no polling race on a loaded machine).
check "link cut at 4 certificates for 3 s" cut_at 4 3
check "link cut at $((QUOTA / 3)) certificates for 3 s" cut_at $((QUOTA / 3)) 3
check "link cut at $((QUOTA * 2 / 3)) certificates for $LONG s" cut_at $((QUOTA * 2 / 3)) "$LONG"
check "station published cloud.unreachable and cloud.reachable" \
    test "$(sq "SELECT COUNT(DISTINCT kind) FROM journal WHERE kind IN ('cloud.unreachable','cloud.reachable')")" -eq 2

half_done() { grep -h '^state=' "$DIR"/targets/*/state | grep -vc '^state=\(locked\|blank\)$'; }
done_ok() { # the whole quota issued (devices > quota), nothing half done, all reported
    local n
    for _ in $(seq 900); do
        n=$(certs)
        # A line that stalls a few seconds between rounds (retries backing
        # off after a cut, a loaded machine) is not done: wait for the quota.
        if [[ $n -ge $QUOTA && $(half_done) -eq 0 &&
              $(q "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB' AND state!='provisioned'") \
              -eq 0 ]]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
check "line completes: nothing half done, all reported" done_ok
resumed_all=0
for t_up in "${ups[@]}"; do
    first=$(stack_first_after "$t_up")
    if [[ -n $first ]]; then
        resume+=("$(python3 -c "print(f'{($first - $t_up) / 1000:.1f}')")")
    else
        resume+=(none) resumed_all=1
    fi
done
check "production resumed after every cut (${#ups[@]} cuts)" test "$resumed_all" -eq 0 -a "${#ups[@]}" -eq 3
check "status says the cloud is reachable again" status_says_back
T1=$(now_ms)
sleep 2 # the last statuses and events

stack_check_outcome "$DIR"
audit_ok() { nusec audit verify >"$TMP/verify.log" 2>&1; }
check "audit verify passes" audit_ok
stack_check_units "$DIR" "the cuts"
echo "outage_seconds ${outage[*]}"
echo "cut_drain_seconds ${drain[*]}"
dropped=$(grep -c 'dropped: broker unreachable' "$DIR/logs/cloud.log")
held=$(grep -c 'no PUBACK for' "$DIR/logs/cloud.log")
echo "cloud_replies_dropped_at_cuts $dropped"
echo "cloud_puback_timeouts $held"
check "no cloud worker sat out a PUBACK timeout during the cuts ($held)" test "$held" -eq 0
echo "resume_seconds_after_restore ${resume[*]}"
echo "production_seconds $(python3 -c "print(f'{($T1 - $T0) / 1000:.1f}')")"
if [[ $failed -ne 0 ]]; then
    for f in "$DIR"/logs/prog-*.log "$DIR"/logs/cloud.log; do echo "== $f"; grep -v " info: " "$f" | tail -n 15; done
fi
echo "passed $passed failed $failed"
[[ $failed -eq 0 ]]
