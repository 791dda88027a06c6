#!/usr/bin/env bash
# Issue 10 (disk full) on the real local stack, each component's state
# directory on its own small file system that the test fills mid-production
# and frees again: the cloud (ledger), the station (journal), the programmers
# (sealed KeyStore, flash journal), all four at once, then the broker
# (persistence) alone.
#
# Needs root (tmpfs mounts, as CI runs it); elsewhere it prints SKIP and exits
# 77 (CTest's skip code for this test).
#
# What must hold, from the outside:
#   while a disk is full: no process dies (the same pids at the end), nothing
#     acknowledged is lost, no chip is burned (left half done), no KeyStore
#     unit is spent for a device that does not get its certificate;
#   after it is freed: production resumes by itself (no restart by anyone);
#     the seconds from the free to the next certificate or report are printed;
#   at the end: certificates = quota (devices > quota), no duplicate UID,
#     every locked chip's certificate in the ledger, every certificate
#     reported provisioned exactly once in the ledger and once in the
#     station's journal, `nusec audit verify` passes, units wasted 0.
#
# usage: test_disk_full.sh BIN_DIR [FULL_S]   (default 6 s per fill)
#        NUSEC_KEEP_TMP=1 keeps the folder (unmounted)
set -uo pipefail
BIN=$1
FULL_S=${2:-6}
if [[ $(id -u) -ne 0 ]]; then
    echo "SKIP disk full needs root to mount the small file systems (tmpfs)"
    exit 77
fi
. "${BASH_SOURCE%/*}/../../lib/stack_lib.sh" dfull
trap "exit 1" TERM INT # so that the EXIT trap unmounts
DEVICES=72 QUOTA=56
COMPS=(cloud station programmers broker)
now_ms() { date +%s%3N; }
secs() { python3 -c "print(f'{($1) / 1000:.1f}')"; }
q() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
die() { echo "FAIL $*"; exit 1; }
mounted=()
cleanup_more() {
    local m
    for m in "${mounted[@]}"; do umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null; done
}

# ---- the state directories, each on its own small file system -------------------------
mkdir -p "$DIR"
nusec pki init >"$TMP/pki.log" 2>&1 || { cat "$TMP/pki.log"; die "pki init"; }
for c in "${COMPS[@]}"; do
    mkdir -p "$DIR/$c"
    mv "$DIR/$c" "$DIR/$c.init" && mkdir "$DIR/$c"
    mount -t tmpfs -o size=24m,mode=0700 "nusec-dfull-$c" "$DIR/$c" || die "mount tmpfs on $DIR/$c"
    mounted+=("$DIR/$c")
    cp -a "$DIR/$c.init/." "$DIR/$c/" && rm -rf "$DIR/$c.init"
done

# ~2.6 s of simulated flash per chip, so that the fills land mid-production.
nusec stack up --programmers 2 --sockets 4 --devices $DEVICES --flash-us-per-kib 40000 \
    >"$TMP/up.log" 2>&1 || { cat "$TMP/up.log"; die "stack up"; }
stack_job $QUOTA
pids() { local n; for n in broker cloud station prog-1 prog-2; do printf '%s ' "$(cat "$DIR/run/$n.pid")"; done; }
pids_before=$(pids)

half_done() { grep -h '^state=' "$DIR"/targets/*/state | grep -vc '^state=\(locked\|blank\)$'; }
fill() { # fill MOUNT: write until the file system says ENOSPC
    dd if=/dev/zero of="$1/.filler" bs=64k 2>/dev/null
    dd if=/dev/zero of="$1/.filler2" bs=4k 2>/dev/null
    [[ $(df --output=avail -k "$1" | tail -n 1 | tr -d ' ') -lt 8 ]]
}
free_it() { rm -f "$1/.filler" "$1/.filler2"; }

T0=$(now_ms)
nusec production start --job "$JOB" >"$TMP/start.log" 2>&1 || { cat "$TMP/start.log"; die "production start"; }

# full_at N COMP...: once N certificates exist (and the line resumed from the
# last fill), fill the file systems of COMP... for FULL_S seconds, then free
# them; records the free time (frees[]). A process that died meanwhile fails it.
frees=() at_free=() during=() up_count=0
full_at() {
    local want=$1 c n ok=0
    shift
    ((want <= up_count)) && want=$((up_count + 1))
    wait_certs "$want" 120 || { echo "  no $want certificates before the fill (no resume)"; return 1; }
    n=$(certs)
    [[ $n =~ ^[0-9]+$ ]] && ((n >= QUOTA)) && { echo "  production ended before this fill ($n)"; return 1; }
    for c in "$@"; do fill "$DIR/$c" || { echo "  $c: could not fill"; ok=1; }; done
    n=$(certs)
    sleep "$FULL_S"
    during+=("$*:$(($(certs) - n))")
    for p in $pids_before; do kill -0 "$p" 2>/dev/null || { echo "  pid $p died while full"; ok=1; }; done
    up_count=$(certs)
    for c in "$@"; do free_it "$DIR/$c"; done
    frees+=("$(now_ms)")
    at_free+=("$(certs)")
    return $ok
}
# The broker's last: the line goes on while only its persistence is full.
check "cloud's disk full at 4 certificates for ${FULL_S} s" full_at 4 cloud
check "station's disk full at 12 certificates for ${FULL_S} s" full_at 12 station
check "programmers' disk full at 20 certificates for ${FULL_S} s" full_at 20 programmers
check "every disk full at 28 certificates for ${FULL_S} s" full_at 28 "${COMPS[@]}"
check "broker's disk full at 36 certificates for ${FULL_S} s" full_at 36 broker

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
pids_after=$(pids)
alive=0
for p in $pids_after; do kill -0 "$p" 2>/dev/null && alive=$((alive + 1)); done
check "no process died or was restarted (pids $pids_after)" test "$pids_before" = "$pids_after" -a $alive -eq 5

resume=() resumed_all=0
for i in "${!frees[@]}"; do
    t=${frees[$i]}
    first=$(stack_first_after "$t")
    if [[ -n $first ]]; then
        resume+=("$(secs "$first - $t")")
    elif [[ ${at_free[$i]} =~ ^[0-9]+$ ]] && ((at_free[i] >= QUOTA)); then
        resume+=(finished-while-full) # a fill that stops nothing (the broker's): nothing left to resume
    else
        resume+=(none)
        resumed_all=1
    fi
done
check "production resumed after every fill (${#frees[@]} fills)" test "$resumed_all" -eq 0 -a "${#frees[@]}" -eq 5

stack_check_outcome "$DIR"
audit_ok() { nusec audit verify >"$TMP/verify.log" 2>&1 || { cat "$TMP/verify.log"; return 1; }; }
check "audit verify passes" audit_ok
stack_check_units "$DIR" "the full disks"
for f in cloud station prog-1 prog-2 broker; do
    echo "full_disk_errors_logged_$f $(grep -ciE 'no space|disk full|database or disk is full|SQLITE_FULL|ENOSPC|\bIO\b' "$DIR/logs/$f.log" 2>/dev/null)"
done
echo "fill_seconds $FULL_S"
echo "certificates_while_full ${during[*]}"
echo "resume_seconds_after_free ${resume[*]}"
echo "production_seconds $(secs "$T1 - $T0")"
if [[ $failed -ne 0 ]]; then
    for f in "$DIR"/logs/prog-*.log "$DIR/logs/cloud.log" "$DIR/logs/station.log"; do
        echo "== $f"; grep -v " info: " "$f" | tail -n 20
    done
fi
echo "passed $passed failed $failed"
[[ $failed -eq 0 ]]
