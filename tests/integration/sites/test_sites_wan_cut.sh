#!/usr/bin/env bash
# Issue 15 part 1 in the shape the issue asks for: the WAN between a site and
# the cloud cut and restored several times mid-production. `nusec stack up
# --sites 1` (the OEM's cloud broker + cloud, one CM site with its own broker,
# station and programmers); the site broker's bridge reaches the cloud broker
# through a TCP relay (tests/tools/tcp_relay.py --refuse) that the test cuts
# (SIGUSR1: the relay refuses connections) and restores (SIGUSR2). The site
# broker is restarted once before production to dial the relay (SIGTERM: its
# programmers' OFFLINE wills go out, so this also checks that idle
# programmers say their status again and get started). The station and the
# programmers stay on their site broker throughout.
#
# What it shows: Mosquitto 2.0 v5 bridges drop the replies queued on the cloud
# side during an outage (no session expiry on the bridge's session, FIELD-
# NOTES); the programmers' idempotent retries and the cloud's RESEND path get
# them again, and the requests and reports queued at the site cross once the
# bridge is back. Checked from the outside:
#   while cut: the site's `nusec production status` says "cloud unreachable
#     since" and no new chip is started;
#   after each restore: production resumes by itself (time printed per cut);
#   at the end: certificates <= quota (= quota here), every locked chip's
#     certificate in the ledger, every report recorded once in the ledger and
#     in the station journal, the station's cloud.unreachable/.reachable
#     events, audit verify passes, no chip half done, no KeyStore unit wasted.
# Prints `name value` lines: outage_seconds, resume_seconds_after_restore
# (restore -> next certificate or report in the ledger), bridge_back_seconds (restore ->
# the bridge's connection through the relay).
#
# usage: test_sites_wan_cut.sh BIN_DIR [LONG_OUTAGE_S]   (default 8; the bench runs 60)
#        NUSEC_KEEP_TMP=1 keeps the folder
set -uo pipefail
BIN=$1
LONG=${2:-8}
HERE=$(cd "$(dirname "$0")" && pwd)
RELAY=$HERE/../../tools/tcp_relay.py
. "$HERE/../../lib/stack_lib.sh" swan
DIR=$TMP/oem
CM=$DIR/cm/site-1
DEVICES=44 QUOTA=40
oem() { "$BIN/nusec" "$@" --dir "$DIR"; }
cm() { "$BIN/nusec" "$@" --dir "$CM"; }
relay_pid=
cleanup_more() { if [[ -n $relay_pid ]]; then kill "$relay_pid" 2>/dev/null; fi; }
now_ms() { date +%s%3N; }
secs() { python3 -c "print(f'{($1) / 1000:.1f}')"; }
q() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
sq() { sqlite3 -cmd '.timeout 5000' "$CM/station/station.db" "$1" 2>/dev/null; }
die() { echo "FAIL $*"; exit 1; }

# ~3.9 s of simulated flash per chip, so that the cuts land mid-production.
oem stack up --sites 1 --programmers 2 --sockets 4 --devices $DEVICES --flash-us-per-kib 60000 \
    >"$TMP/up.log" 2>&1 || { cat "$TMP/up.log"; die "stack up --sites 1"; }

# The site broker again, its bridge dialling the relay: stopped (SIGTERM: it
# saves its persistence), the bridge's address line pointed at the relay, and
# started with the same configuration (it writes its own pid file, which
# `stack down` reads).
python3 "$RELAY" --refuse --delay-s 1.5 --target "$(cat "$DIR/broker/endpoint")" --port-file "$TMP/relay.port" \
    2>"$TMP/relay.log" &
relay_pid=$!
for _ in $(seq 50); do [[ -s $TMP/relay.port ]] && break; sleep 0.1; done
[[ -s $TMP/relay.port ]] || die "relay did not start"
conf=$CM/broker/mosquitto.conf
grep -q '^address ' "$conf" || die "no bridge address in $conf"
bpid=$(cat "$CM/run/broker.pid")
mosq=$(readlink "/proc/$bpid/exe")
kill "$bpid"
for _ in $(seq 100); do kill -0 "$bpid" 2>/dev/null || break; sleep 0.1; done
kill -0 "$bpid" 2>/dev/null && die "site broker did not stop"
sed -i "s/^address .*/address 127.0.0.1:$(cat "$TMP/relay.port")/" "$conf"
"$mosq" -c "$conf" -d 2>>"$TMP/site-broker.err" || { cat "$TMP/site-broker.err"; die "site broker restart"; }
relayed() { grep -c 'connection relayed' "$TMP/relay.log"; }
for _ in $(seq 100); do (($(relayed) > 0)) && break; sleep 0.1; done
(($(relayed) > 0)) || die "the bridge never dialled the relay"

head -c 65536 /dev/urandom >"$TMP/app.bin"
oem firmware sign --in "$TMP/app.bin" --name app --version 1.0.0 >"$TMP/sign.log" 2>&1 ||
    { cat "$TMP/sign.log"; die "firmware sign"; }
mkdir -p "$TMP/pk"
JOB=$(oem job create --firmware app-1.0.0 --quota $QUOTA --programmer prog-1 --programmer prog-2 \
    --expires 1h --out "$TMP/pk" 2>"$TMP/create.err" | tail -n 1 | cut -d' ' -f1)
[[ $JOB == job-* ]] || { cat "$TMP/create.err"; die "job create"; }
# The packages cross to the CM (a file copy) and are imported at the site.
cm package import "$TMP"/pk/*.nspkg >"$TMP/import.log" 2>&1 ||
    { cat "$TMP/import.log"; die "package import at the site"; }

touched() { grep -L '^state=blank$' "$CM"/targets/*/state 2>/dev/null | sort; }
status_says_cut() { # the site's own view, text and JSON
    for _ in $(seq 200); do
        cm production status --job "$JOB" --once 2>/dev/null | grep -q 'cloud unreachable since' &&
            cm production status --job "$JOB" --json 2>/dev/null |
            python3 -c 'import json,sys; sys.exit(json.load(sys.stdin)["cloud_unreachable_since_ms"] == 0)' &&
            return 0
        sleep 0.1
    done
    return 1
}

T0=$(now_ms)
cm production start --job "$JOB" >"$TMP/start.log" 2>&1 || { cat "$TMP/start.log"; die "production start"; }

# cut_at N S: once N certificates exist, cut the bridge's link for S seconds;
# check what the site shows and does meanwhile; records the seconds from the
# restore to the next certificate or report (resume[]) and to the bridge's next
# connection through the relay (bridge[]).
outage=() ups=() up_relayed=() up_count=0
cut_at() {
    # Not before the line resumed from the previous cut (one certificate
    # after its restore): the resume is measured, and each cut lands on a
    # running line.
    local want=$1 n
    ((want <= up_count)) && want=$((up_count + 1))
    wait_certs "$want" 120 || { echo "  no $want certificates before the cut (no resume)"; return 1; }
    n=$(certs)
    [[ $n =~ ^[0-9]+$ ]] && ((n >= QUOTA)) && { echo "  production ended before this cut ($n)"; return 1; }
    local t_cut t_up ok=0 before after settled n0
    kill -USR1 "$relay_pid"
    t_cut=$(now_ms)
    status_says_cut || { echo "  the site's status never said 'cloud unreachable since'"; ok=1; }
    # A request that crossed before the cut may still commit at the cloud (its
    # reply is lost with the bridge): wait until the count settles; from then
    # on no new chip may be started until the restore.
    n0=$(certs)
    for _ in $(seq 20); do
        sleep 0.5
        settled=$(certs)
        [[ $settled -eq $n0 ]] && break
        n0=$settled
    done
    before=$(touched)
    local left=$(($2 * 1000 - ($(now_ms) - t_cut)))
    ((left > 0)) && sleep "$(secs "$left")"
    after=$(touched)
    if [[ "$before" != "$after" ]]; then
        echo "  new chips started while the cloud was unreachable:"
        comm -13 <(echo "$before") <(echo "$after") | sed 's/^/    /'
        ok=1
    fi
    [[ $(certs) -le $(wc -l <<<"$before") ]] || { echo "  certificates for chips started while cut"; ok=1; }
    up_relayed+=("$(relayed)")
    up_count=$(certs)
    kill -USR2 "$relay_pid"
    t_up=$(now_ms)
    ups+=("$t_up")
    outage+=("$(secs "$t_up - $t_cut")")
    return $ok
}
# A certificate reply lost for sure: the relay delays the way back by 1.5 s
# (SIGHUP; the bridge's requests still reach the cloud at once), the test
# waits until the cloud issued (the ledger) and cuts: an answer leaves the
# cloud after its certificate's issued_at_ms, so those issued less than
# 1.5 s before the cut (1.2 s: a margin) were still in the relay and are
# gone with the link. After the restore the programmers' retries (same
# idempotency key) get those very certificates from the cloud again:
# checked at the end, each such chip holds the one issued before the cut,
# its UID has no second certificate and no KeyStore unit was counted twice.
held_serials=()
lost_reply() {
    wait_certs 2 120 || return 1
    local n0 t_cut
    kill -HUP "$relay_pid"
    for _ in $(seq 50); do grep -q 'way back held' "$TMP/relay.log" && break; sleep 0.1; done
    n0=$(certs)
    wait_certs $((n0 + 1)) 60 || { echo "  nothing issued while the answers were delayed"; return 1; }
    kill -USR1 "$relay_pid"
    t_cut=$(now_ms)
    mapfile -t held_serials < <(q "SELECT serial FROM certificates WHERE job_id='$JOB'
        AND issued_at_ms > $t_cut - 1200")
    sleep 3
    kill -USR2 "$relay_pid"
    ((${#held_serials[@]} > 0)) || { echo "  no answer was still in the relay at the cut"; return 1; }
}
check "a certificate reply lost for sure (way back held, then cut)" lost_reply
up_count=$(certs)
# The sockets run in step (8 certificates a round): cuts after the first,
# second and third round.
check "bridge link cut at 3 certificates for 3 s" cut_at 3 3
check "bridge link cut at $((QUOTA / 4 + 3)) certificates for 3 s" cut_at $((QUOTA / 4 + 3)) 3
check "bridge link cut at $((QUOTA / 2 + 3)) certificates for $LONG s" cut_at $((QUOTA / 2 + 3)) "$LONG"
check "station published cloud.unreachable and cloud.reachable" \
    test "$(sq "SELECT COUNT(DISTINCT kind) FROM journal WHERE kind IN ('cloud.unreachable','cloud.reachable')")" -eq 2

half_done() { grep -h '^state=' "$CM"/targets/*/state | grep -vc '^state=\(locked\|blank\)$'; }
done_ok() { # the whole quota issued (devices > quota), nothing half done, all reported (120 s at most)
    local n end=$(($(now_ms) + 120000))
    while (($(now_ms) < end)); do
        n=$(certs)
        # A line that stalls a few seconds between rounds (retries backing
        # off after a cut, a loaded machine) is not done: wait for the quota.
        if [[ $n =~ ^[0-9]+$ ]] && ((n >= QUOTA)) && [[ $(half_done) -eq 0 &&
              $(q "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB' AND state!='provisioned'") \
              -eq 0 ]]; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}
check "line completes: nothing half done, all reported" done_ok
# The time to resume, from the ledger and the relay's log afterwards (no
# polling race on a loaded machine): restore -> next certificate or report, restore ->
# the bridge's next connection.
resume=() bridge=()
resumed_all=0
for i in "${!ups[@]}"; do
    first=$(stack_first_after "${ups[$i]}")
    if [[ -n $first ]]; then resume+=("$(secs "$first - ${ups[$i]}")"); else resume+=(none); resumed_all=1; fi
    bridge+=("$(python3 - "${up_relayed[$i]}" "${ups[$i]}" "$TMP/relay.log" <<'PY'
import sys
n, up = int(sys.argv[1]), int(sys.argv[2])
ts = [float(l.split()[1]) for l in open(sys.argv[3]) if 'connection relayed' in l]
print(f'{ts[n] - up / 1000:.1f}' if len(ts) > n else 'none')
PY
)")
done
check "production resumed after every cut (${#ups[@]} cuts)" test "$resumed_all" -eq 0 -a "${#ups[@]}" -eq 3
T1=$(now_ms)
sleep 1 # the last station events

stack_check_outcome "$CM"
lost_reply_ok() { # each certificate whose answer was lost reached its chip, once
    local s uid n
    for s in "${held_serials[@]}"; do
        uid=$(q "SELECT lower(hex(device_uid)) FROM certificates WHERE serial='$s'")
        n=$(q "SELECT COUNT(*) FROM certificates WHERE job_id='$JOB' AND device_uid=x'$uid'")
        [[ $n -eq 1 ]] || { echo "  UID $uid: $n certificates"; return 1; }
        grep -q '^state=locked$' "$CM/targets/$uid/state" 2>/dev/null ||
            { echo "  chip $uid not locked"; return 1; }
        [[ $(openssl x509 -in "$CM/targets/$uid/cert.pem" -noout -serial | sed 's/^serial=//' |
             tr 'A-F' 'a-f' | sed 's/^0*//') == $(sed 's/^0*//' <<<"$s") ]] ||
            { echo "  chip $uid holds another certificate than $s"; return 1; }
    done
}
check "the ${#held_serials[@]} certificate(s) whose answer was lost reached their chips, once" lost_reply_ok
audit_ok() { oem audit verify >"$TMP/verify.log" 2>&1; }
check "audit verify passes" audit_ok
resent=$(q "SELECT COUNT(*) FROM audit_events WHERE job_id='$JOB' AND kind='cert.resent'")
stack_check_units "$CM" "the cuts"
echo "cert_resent_rows $resent"
echo "lost_reply_certificates ${#held_serials[@]}"
echo "bridge_connections $(relayed)"
echo "outage_seconds ${outage[*]}"
echo "bridge_back_seconds ${bridge[*]}"
echo "resume_seconds_after_restore ${resume[*]}"
echo "production_seconds $(secs "$T1 - $T0")"
if [[ $failed -ne 0 ]]; then
    for f in "$CM"/logs/prog-*.log "$DIR/logs/cloud.log"; do echo "== $f"; grep -v " info: " "$f" | tail -n 15; done
    echo "== relay"; tail -n 20 "$TMP/relay.log"
fi
echo "passed $passed failed $failed"
[[ $failed -eq 0 ]]
