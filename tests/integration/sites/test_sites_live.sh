#!/usr/bin/env bash
# Issue 14: a site and a programmer added while everything runs, without
# restarting any broker or the cloud.
#  1. `nusec stack up --sites 1 --programmers 1`: the OEM's cloud broker and
#     cloud, site-1 (site broker bridged to the cloud broker, station, prog-1);
#  2. `nusec stack up --sites 2 --programmers 2` on the running stack: prog-2
#     is enrolled at the OEM, `site assign`ed to site-1 and shipped there after
#     site-1's broker is up (its ownership line reaches the site broker over
#     the bridge, its replies cross the bridge's one wide reply subscription);
#     site-2 is added, joined and signed while the cloud runs (the cloud
#     finds the new station's certificate at its first request), with prog-3
#     and prog-4;
#  3. a job for the four programmers, produced at both sites at once.
# Checked from the outside: the cloud broker, the cloud and site-1's broker
# kept their pids; prog-2 (late at site-1) and prog-3/prog-4 (at the late
# site) got certificates, within the quota; every reply the cloud broker kept
# from a site's bridge (another site's programmer's) was withheld quietly: no
# bridge was disconnected; audit verify; a programmer switched on at the wrong
# site: its bridged publishes refused and logged, the bridge still up.
#
# usage: test_sites_live.sh BIN_DIR      (NUSEC_KEEP_TMP=1 keeps the folder)
set -uo pipefail
BIN=$1
HERE=$(cd "$(dirname "$0")" && pwd)
. "$HERE/../../lib/stack_lib.sh" slive
DIR=$TMP/oem
oem() { "$BIN/nusec" "$@" --dir "$DIR"; }
cm() { local site=$1; shift; "$BIN/nusec" "$@" --dir "$DIR/cm/$site"; }
q() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
die() { echo "FAIL $*"; exit 1; }
pids() { local f; for f in "$DIR/run/broker.pid" "$DIR/run/cloud.pid" "$DIR/cm/site-1/run/broker.pid"; do
    printf '%s ' "$(cat "$f")"; done; }

oem stack up --sites 1 --programmers 1 --sockets 2 --devices 4 >"$TMP/up1.log" 2>&1 ||
    { cat "$TMP/up1.log"; die "stack up --sites 1"; }
before=$(pids)
oem stack up --sites 2 --programmers 2 --sockets 2 --devices 16 >"$TMP/up2.log" 2>&1 ||
    { cat "$TMP/up2.log"; die "stack up --sites 2 on the running stack"; }
cat "$TMP/up2.log"
check "no broker and no cloud restarted (pids $before)" test "$before" == "$(pids)"
check "prog-2 was enrolled after site-1 was up, and shipped there" \
    grep -q "prog-2     shipped to site-1" "$TMP/up2.log"
check "site-2 was signed while the cloud ran" grep -q "the running cloud knows the station site-2" \
    "$TMP/up2.log"
check "the site bridge subscribes to replies once, widely" \
    grep -qx "topic nusec/v1/reply/# in 1" "$DIR/cm/site-1/broker/mosquitto.conf"
for _ in $(seq 50); do grep -qx "site-1 prog-2" "$DIR/cm/site-1/broker/owners" && break; sleep 0.1; done
check "prog-2's ownership line reached site-1's broker over the bridge" \
    grep -qx "site-1 prog-2" "$DIR/cm/site-1/broker/owners"

head -c 65536 /dev/urandom >"$TMP/app.bin"
oem firmware sign --in "$TMP/app.bin" --name app --version 1.0.0 >"$TMP/sign.log" 2>&1 ||
    { cat "$TMP/sign.log"; die "firmware sign"; }
QUOTA=12
JOB=$(oem job create --firmware app-1.0.0 --quota $QUOTA --programmer prog-1 --programmer prog-2 \
    --programmer prog-3 --programmer prog-4 --expires 1h --out "$TMP/pk" 2>"$TMP/create.err" |
    tail -n 1 | cut -d' ' -f1)
[[ $JOB == job-* ]] || { cat "$TMP/create.err"; die "job create"; }
cm site-1 package import "$TMP/pk/$JOB-prog-1.nspkg" "$TMP/pk/$JOB-prog-2.nspkg" >/dev/null &&
    cm site-2 package import "$TMP/pk/$JOB-prog-3.nspkg" "$TMP/pk/$JOB-prog-4.nspkg" >/dev/null ||
    die "package import"
cm site-1 production start --job "$JOB" --wait >"$TMP/p1.log" 2>&1 &
p1=$!
cm site-2 production start --job "$JOB" --wait >"$TMP/p2.log" 2>&1 &
p2=$!
wait "$p1"; wait "$p2"
tail -n 4 "$TMP/p1.log" "$TMP/p2.log"
issued() { q "select count(*) from certificates where job_id='$JOB' and programmer_id='$1'"; }
for p in prog-1 prog-2 prog-3 prog-4; do echo "$p: $(issued "$p") certificates"; done
check "prog-2, enrolled after its site was up, produced" test "$(issued prog-2)" -ge 1
check "site-2, joined while the cloud ran, produced (prog-3)" test "$(issued prog-3)" -ge 1
check "site-2, joined while the cloud ran, produced (prog-4)" test "$(issued prog-4)" -ge 1
check "within the quota" test "$(q "select count(*) from certificates where job_id='$JOB'")" -le $QUOTA
check "still no broker and no cloud restarted" test "$before" == "$(pids)"
check "no site bridge was disconnected by the cloud broker" \
    bash -c "! grep -E 'Client site-[12]:bridge (closed|disconnected)|site-[12]:bridge.*(disconnecting|not authorised)' '$DIR/broker/mosquitto.log'"
check "no delivery to a bridge was refused loudly (other sites' replies are withheld quietly)" \
    bash -c "! grep -q \"denied read 'nusec/v1/reply/\" '$DIR/broker/mosquitto.log'"
check "the cloud broker counted the replies it withheld from the bridges" \
    grep -q "nusec_auth: withheld [0-9]* replies from site bridges" "$DIR/broker/mosquitto.log"
check "audit verify" oem audit verify

# A programmer at the wrong site: prog-3 (site-2's) switched on at site-1. Its
# bridged publishes are for a programmer site-1 does not own: the cloud broker
# refuses and logs each one, and site-1's bridge stays up.
kill "$(cat "$DIR/cm/site-2/run/prog-3.pid")" 2>/dev/null
sleep 1
cp -a "$DIR/cm/site-2/programmers/prog-3" "$DIR/cm/site-1/programmers/"
"$BIN/nusec-programmer" --dir "$DIR/cm/site-1" --name prog-3 --sockets 1 --devices 1 \
    >"$TMP/prog-3-at-site-1.log" 2>&1 &
stray=$!
cleanup_more() { kill "$stray" 2>/dev/null; }
denied=no
for _ in $(seq 100); do
    grep -q "denied write 'nusec/v1/prog/prog-3/status' for site-1 (site)" "$DIR/broker/mosquitto.log" &&
        denied=yes && break
    sleep 0.1
done
kill "$stray" 2>/dev/null; wait "$stray" 2>/dev/null
check "prog-3 at the wrong site: the cloud broker refuses site-1's publish for it (logged)" \
    test "$denied" == yes
check "... and site-1's bridge stays connected" \
    bash -c "! grep -E 'Client site-1:bridge (closed|disconnected)' '$DIR/broker/mosquitto.log'"
check "... and no broker or cloud restarted" test "$before" == "$(pids)"

echo "sites live: $passed passed, $failed failed"
((failed == 0))
