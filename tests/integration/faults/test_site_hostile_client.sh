#!/usr/bin/env bash
# A hostile CM site with a real, foreign MQTT client (mosquitto_pub and
# mosquitto_rr, not NuSEC's code): `nusec stack up --sites 1`, then the site's
# own bridge identity (what a CM holds: DIR/cm/site-1/site/bridge.{crt,key})
# connects straight to the cloud broker and sends what it may not or should
# not:
#   - topics outside the site's grant (another site's programmer, replies,
#     job states, the CRL, the revocation list, a station it is not): refused
#     by the broker (the client sees the publish fail), logged with the
#     identity; the cloud never sees them;
#   - empty, garbage and cut payloads as requests of its own programmer on
#     every op a programmer may send, with a response topic: each answered
#     (a typed Error), each audited in the ledger in the programmer's name;
#   - garbage as its programmer's device report (an event: no answer),
#     audited; garbage events and a garbage retained status while the OEM's
#     `nusec monitor` watches: it reports them and carries on;
#   - a payload over the site role's size limit: refused at the broker.
# Afterwards: every process alive, the ledger's state unchanged (no
# certificate, the same programmers and jobs), `nusec audit verify` passes.
# Prints the counts of refusals at the broker and of audit rows.
#
# usage: test_site_hostile_client.sh BIN_DIR      NUSEC_KEEP_TMP=1 keeps the folder
set -uo pipefail
BIN=$1
. "${BASH_SOURCE%/*}/../../lib/stack_lib.sh" shost
trap "exit 1" TERM INT
DIR=$TMP/oem
CM=$DIR/cm/site-1
oem() { "$BIN/nusec" "$@" --dir "$DIR"; }
q() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
die() { echo "FAIL $*"; exit 1; }
command -v mosquitto_pub >/dev/null && command -v mosquitto_rr >/dev/null ||
    { echo "SKIP mosquitto_pub/mosquitto_rr not installed (mosquitto-clients)"; exit 77; }

oem stack up --sites 1 --programmers 1 --sockets 1 --devices 0 >"$TMP/up.log" 2>&1 ||
    { cat "$TMP/up.log"; die "stack up --sites 1"; }
conf=$CM/broker/mosquitto.conf
ca=$(sed -n 's/^bridge_cafile //p' "$conf")
cert=$(sed -n 's/^bridge_certfile //p' "$conf")
key=$(sed -n 's/^bridge_keyfile //p' "$conf")
addr=$(sed -n 's/^address //p' "$conf" | head -n 1)
host=${addr%:*} port=${addr##*:}
SITE=$(openssl x509 -in "$cert" -noout -subject -nameopt multiline | sed -n 's/^ *commonName *= *//p')
[[ -n $ca && -n $cert && -n $key && -n $host && -n $SITE ]] || die "cannot read the bridge settings"
PROG=prog-1
BLOG=$DIR/broker/mosquitto.log
pids() { local n; for n in "$DIR/run/broker" "$DIR/run/cloud" "$CM/run/broker" "$CM/run/station" "$CM/run/$PROG"; do
    printf '%s ' "$(cat "$n.pid" 2>/dev/null)"; done; }
pids_before=$(pids)
snapshot() {
    q "SELECT COUNT(*) FROM certificates; SELECT programmer_id, state, cert_serial FROM programmers ORDER BY 1;
       SELECT job_id, quota, issued, status FROM jobs ORDER BY 1;"
}
state_before=$(snapshot)
seq_before=$(q "SELECT COALESCE(MAX(seq), 0) FROM audit_events")
opts=(-V mqttv5 -q 1 --cafile "$ca" --cert "$cert" --key "$key" -h "$host" -p "$port")

# denied TOPIC [-r]: the publish fails at the broker, which logs the site and why.
denied() {
    local topic=$1 out
    shift
    out=$(mosquitto_pub "${opts[@]}" -i "$SITE:hostile-$RANDOM" -t "$topic" -m junk "$@" 2>&1)
    for _ in $(seq 20); do
        grep -qF "denied write '$topic' for $SITE (site)" "$BLOG" && break
        sleep 0.1
    done
    grep -qF "denied write '$topic' for $SITE (site)" "$BLOG" ||
        { echo "  no refusal logged for $topic (client said: $out)"; return 1; }
}
check "another site's programmer's request: refused" denied "nusec/v1/cloud/req/prog-9/cert.request"
check "a request in the station role's tree of another site: refused" denied "nusec/v1/cloud/req/site-9/job.list"
check "another programmer's device report: refused" denied "nusec/v1/events/programmer/prog-9/device.provisioned"
check "a reply toward its own programmer: refused" denied "nusec/v1/reply/$PROG/forged"
check "a retained job state: refused" denied "nusec/v1/jobs/job-forged" -r
check "a retained device CRL: refused" denied "nusec/v1/crl/device" -r
check "a retained revocation list: refused" denied "nusec/v1/broker/revoked" -r
check "its own programmer's command topic: refused" denied "nusec/v1/prog/$PROG/cmd"
check "the cloud's event tree under another role: refused" denied "nusec/v1/events/cloud/cloud/x"
head -c $((1024 * 1024)) /dev/zero >"$TMP/big.bin"
big_refused() {
    mosquitto_pub "${opts[@]}" -i "$SITE:hostile-big" -t "nusec/v1/cloud/req/$PROG/cert.request" \
        -f "$TMP/big.bin" >/dev/null 2>&1
    for _ in $(seq 20); do
        grep -F "'nusec/v1/cloud/req/$PROG/cert.request' for $SITE (site)" "$BLOG" |
            grep -qF "size limit" && return 0
        sleep 0.1
    done
    return 1
}
check "1 MiB as its programmer's cert.request: refused at the broker" big_refused

# answered OP FILE: a request in the programmer's name with a response topic
# gets an answer (the Error envelope, not parsed here), and the cloud's log
# says it refused it as DECODE; the audit rows are counted below.
head -c 1024 /dev/urandom >"$TMP/garbage.bin"
: >"$TMP/empty.bin"
printf '\x0a\x40\x0a\x06prog-1\x10' >"$TMP/cut.bin" # an Envelope header cut inside
answered() {
    local out before
    before=$(grep -c "refused $1 from $PROG: DECODE" "$DIR/logs/cloud.log")
    out=$(timeout 15 mosquitto_rr "${opts[@]}" -i "$SITE:rr-$RANDOM" -t "nusec/v1/cloud/req/$PROG/$1" \
        -e "nusec/v1/reply/$PROG/hostile-$RANDOM" -f "$2" -W 8 2>"$TMP/rr.err" | head -c 4096 | wc -c)
    [[ $out -gt 0 ]] || { echo "  no answer to $1 with $(basename "$2"): $(cat "$TMP/rr.err")"; return 1; }
    [[ $(grep -c "refused $1 from $PROG: DECODE" "$DIR/logs/cloud.log") -gt $before ]] ||
        { echo "  the cloud did not refuse it as DECODE"; return 1; }
}
n_req=0
for op in cert.request device.report firmware.manifest firmware.chunk lease.grant lease.upload \
    enroll.challenge enroll; do
    for f in empty garbage cut; do
        check "$f payload as $PROG's $op: answered" answered "$op" "$TMP/$f.bin"
        n_req=$((n_req + 1))
    done
done
# The OEM's own bus monitor watches while the site sends garbage events and a
# garbage retained status: it reports them on stderr and carries on.
oem monitor --json --timeout 8 >"$TMP/monitor.out" 2>"$TMP/monitor.err" &
mon_pid=$!
sleep 2
mosquitto_pub "${opts[@]}" -i "$SITE:hostile-ev" -t "nusec/v1/events/programmer/$PROG/device.provisioned" \
    -f "$TMP/garbage.bin" >/dev/null 2>&1
head -c 60000 /dev/urandom >"$TMP/garbage60k.bin"
mosquitto_pub "${opts[@]}" -i "$SITE:hostile-ev2" -t "nusec/v1/events/station/$SITE/job.started" \
    -f "$TMP/garbage60k.bin" >/dev/null 2>&1
mosquitto_pub "${opts[@]}" -i "$SITE:hostile-st" -t "nusec/v1/prog/$PROG/status" -r \
    -f "$TMP/garbage.bin" >/dev/null 2>&1
wait "$mon_pid"
mon_rc=$?
check "the OEM's bus monitor survives garbage events (exit $mon_rc, no sanitizer report)" \
    test "$mon_rc" -lt 2 -a "$(grep -c 'Sanitizer' "$TMP/monitor.err")" -eq 0

audited() { # refusals in the programmer's name (the cloud coalesces them per identity and
    # code past a burst of 20: the whole count is checked after the stop, below)
    local rows
    for _ in $(seq 50); do
        rows=$(q "SELECT COUNT(*) FROM audit_events WHERE seq > $seq_before AND actor = '$PROG'
                  AND kind = 'request.refused'")
        ((rows >= 1)) && grep -q "malformed device.provisioned event from $PROG" "$DIR/logs/cloud.log" &&
            return 0
        sleep 0.2
    done
    echo "  $rows audit rows by $PROG"
    return 1
}
check "refusals audited in the programmer's name (and the event seen)" audited
sleep 1
pids_after=$(pids)
alive=0
for p in $pids_after; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
check "every process alive, none restarted ($pids_after)" test "$pids_before" = "$pids_after" -a "$alive" -eq 5
check "ledger state unchanged (certificates, programmers, jobs)" test "$(snapshot)" = "$state_before"
# the coalesced counts are written when the cloud stops: all of them then
oem stack down >/dev/null 2>&1
refused() { # refused WHAT: refusals of the programmer the rows account for
    q "SELECT COALESCE(SUM($1), 0) FROM audit_events WHERE seq > $seq_before AND actor = '$PROG'
       AND kind = 'request.refused'"
}
singles=$(refused "json_extract(payload, '\$.count') IS NULL")
counted=$(refused "COALESCE(json_extract(payload, '\$.count'), 0) + COALESCE(json_extract(payload, '\$.earlier_unaudited'), 0)")
check "every refusal accounted for in the audit ($singles rows + $counted counted >= $((n_req + 1)) sent)" \
    test $((singles + counted)) -ge $((n_req + 1))
audit_ok() { oem audit verify >"$TMP/verify.log" 2>&1 || { cat "$TMP/verify.log"; return 1; }; }
check "audit verify passes" audit_ok
echo "requests_sent $((n_req + 1)) (with the event)"
echo "refusal_rows $singles"
echo "refusals_counted_in_coalesced_rows $counted"
echo "broker_refusals_of_site $(grep -c "for $SITE (site)" "$BLOG")"
echo "passed $passed failed $failed"
[[ $failed -eq 0 ]]
