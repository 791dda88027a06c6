#!/usr/bin/env bash
# NuSEC's own fault run: a production on the local stack while a driver kills
# and restarts its parts, then an outside check of what the faults cost.
#
# usage: chaos.sh --bin DIR --dir DIR [--devices N] [--quota Q] [--programmers P]
#                 [--sockets S] [--seed N] [--cloud-kills K] [--broker-restarts R]
#                 [--programmer-kills K] [--station-kills K] [--disk-full-s S]
#                 [--outages N] [--outage-s S] [--flash-us-per-kib T] [--fault-span P]
#                 [--offline-lease N] [--timeout S]
#        chaos.sh --bin DIR --dir DIR --soak SECONDS [--programmers P] [--sockets S]
#
# Faults are placed at certificate counts drawn from --seed (so a run can be
# repeated); each fault restarts what it stopped with `nusec stack up`, as an
# operator's supervisor would. Afterwards it prints `name value` lines and
# exits 1 on any violated goal:
#   overshoot 0, lost_* 0, duplicate_serials 0, chips_unfinished 0, every
#   counted unit a locked chip (completed, less units_wasted),
#   audit_verify ok, resume_max_s <= 10, units_wasted <= bound, every
#   scheduled fault applied (faults_applied), and production start --wait
#   ending "limit reached" (exit 0) when the quota is below the devices.
# --flash-us-per-kib slows each chip (nusec stack up's option) so that a
# short run still lasts long enough for its faults; --fault-span P places the
# faults between 5% and 5+P% of the quota (default 80). A fault that ends
# after the last certificate has no resume time (shown as done).
# --outages N stops the broker N times for --outage-s seconds each (default
# 1 x 20 s): on the single-machine stack that is what a WAN cut is to the
# factory (the cloud is unreachable), and production must hold and resume.
# --offline-lease N gives the job an offline lease of N certificates per
# programmer (issue 15): a broker outage or restart is then a cut the
# programmers produce through, under their lease, and upload after. The
# certificates counted are the live ones (an online one an offline upload
# superseded is revoked and refunded), and a lease.incident fails the run.
# --soak runs the line at full speed for SECONDS with no fault, samples the
# resident memory of every process every 10 s, prints the series and fails if
# any grew by more than a quarter between the first and the last third; with
# a sanitizer build (--bin build-test/bin) it also fails on any LeakSanitizer
# report in the logs at shutdown.
# Disk full needs root (a small tmpfs under each of DIR/cloud, DIR/station,
# DIR/programmers and DIR/broker, all four filled at once for --disk-full-s);
# elsewhere it is skipped and says so. (tests/integration/faults/
# test_disk_full.sh fills them one at a time too.)
set -uo pipefail

BIN= DIR= DEVICES=2000 QUOTA= PROGRAMMERS=2 SOCKETS=4 SEED=1 CLOUD_KILLS=10
BROKER_RESTARTS=3 PROG_KILLS=1 STATION_KILLS=1 DISK_FULL_S=15 TIMEOUT=900 SOAK=0 OUTAGES=1 OUTAGE_S=20
FLASH_US=0 FAULT_SPAN=80 LEASE=0
while (($#)); do
    case $1 in
    --bin) BIN=$2 ;;
    --dir) DIR=$2 ;;
    --devices) DEVICES=$2 ;;
    --quota) QUOTA=$2 ;;
    --programmers) PROGRAMMERS=$2 ;;
    --sockets) SOCKETS=$2 ;;
    --seed) SEED=$2 ;;
    --cloud-kills) CLOUD_KILLS=$2 ;;
    --broker-restarts) BROKER_RESTARTS=$2 ;;
    --programmer-kills) PROG_KILLS=$2 ;;
    --station-kills) STATION_KILLS=$2 ;;
    --disk-full-s) DISK_FULL_S=$2 ;;
    --timeout) TIMEOUT=$2 ;;
    --soak) SOAK=$2 ;;
    --outages) OUTAGES=$2 ;;
    --outage-s) OUTAGE_S=$2 ;;
    --flash-us-per-kib) FLASH_US=$2 ;;
    --fault-span) FAULT_SPAN=$2 ;;
    --offline-lease) LEASE=$2 ;;
    -h | --help) sed -n '2,41p' "$0"; exit 0 ;;
    *) echo "chaos: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
[[ -n "$BIN" && -n "$DIR" ]] || { echo "chaos: need --bin and --dir" >&2; exit 2; }
if ((SOAK > 0)); then
    DEVICES=1000000 QUOTA=1000000 CLOUD_KILLS=0 BROKER_RESTARTS=0 PROG_KILLS=0 STATION_KILLS=0
    DISK_FULL_S=0 OUTAGES=0
fi
QUOTA=${QUOTA:-$((DEVICES * 9 / 10))}

nusec() { "$BIN/nusec" "$@" --dir "$DIR"; }
say() { printf 'chaos: %s\n' "$*" >&2; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }
ledger() { sqlite3 -cmd '.timeout 5000' "$DIR/cloud/ledger.db" "$1" 2>/dev/null; }
# An online certificate an offline one superseded (revoked, refunded) counts no more.
LIVE="serial not in (select serial from cert_superseded)"
issued() { ledger "select count(*) from certificates where $LIVE" || echo 0; }
STACK_ARGS=(--programmers "$PROGRAMMERS" --sockets "$SOCKETS" --devices "$DEVICES"
    --flash-us-per-kib "$FLASH_US")

FULL_DIRS=(cloud station programmers broker)
mounted=()
wait_pid=
cleanup() {
    [[ -n "$wait_pid" ]] && kill "$wait_pid" 2>/dev/null
    nusec stack down >/dev/null 2>&1
    local m
    # CHAOS_KEEP=1: the tmpfs parts (ledger, logs of the run) copied next to DIR first.
    for m in "${mounted[@]}"; do
        [[ -z "${CHAOS_KEEP:-}" ]] || cp -a "$m" "$m.kept" 2>/dev/null
        umount "$m" 2>/dev/null || umount -l "$m" 2>/dev/null
    done
}
trap cleanup EXIT
trap 'exit 1' TERM INT

# ---- the stack, with the ledger on a small file system we can fill ----------------------
rm -rf "$DIR" && mkdir -p "$DIR"
nusec pki init >/dev/null || { say "pki init failed"; exit 1; }
if ((DISK_FULL_S > 0)) && [[ $(id -u) -eq 0 ]]; then
    for c in "${FULL_DIRS[@]}"; do
        mkdir -p "$DIR/$c" && mv "$DIR/$c" "$DIR/$c.init" && mkdir "$DIR/$c"
        if mount -t tmpfs -o size=96m,mode=0700 "nusec-chaos-$c" "$DIR/$c" 2>/dev/null; then
            mounted+=("$DIR/$c")
        else
            DISK_FULL_S=0
        fi
        cp -a "$DIR/$c.init/." "$DIR/$c/" && rm -rf "$DIR/$c.init"
    done
else
    ((DISK_FULL_S > 0)) && say "disk full skipped: it needs root (tmpfs mounts)"
    DISK_FULL_S=0
fi
nusec stack up "${STACK_ARGS[@]}" >/dev/null || { say "stack up failed"; exit 1; }
head -c 65536 /dev/urandom >"$DIR/app.bin"
nusec firmware sign --in "$DIR/app.bin" --name chaos-app --version 1.0.0 >/dev/null || exit 1
progs=()
for ((i = 1; i <= PROGRAMMERS; i++)); do progs+=(--programmer "prog-$i"); done
mkdir -p "$DIR/packages"
lease=()
((LEASE > 0)) && lease=(--offline-lease "$LEASE" --lease-hours 1)
job=$(nusec job create --firmware chaos-app-1.0.0 --quota "$QUOTA" "${progs[@]}" "${lease[@]}" \
    --expires 2h --out "$DIR/packages" | tail -n 1)
nusec package import "$DIR"/packages/*.nspkg >/dev/null || exit 1
nusec production start --job "$job" --wait >"$DIR/logs/production.log" 2>&1 &
wait_pid=$!
say "job $job: quota $QUOTA, $DEVICES devices, $PROGRAMMERS x $SOCKETS sockets, seed $SEED${lease:+, offline lease $LEASE}"

# ---- soak: full speed, no fault, memory sampled -----------------------------------------
rss_kb() { awk '/^VmRSS/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0; }
soak() {
    local names=(broker cloud station) samples=$((SOAK / 10)) i n bad=0
    for ((i = 1; i <= PROGRAMMERS; i++)); do names+=("prog-$i"); done
    declare -A series=()
    local c0
    c0=$(issued)
    for ((k = 0; k < samples; k++)); do
        sleep 10
        for n in "${names[@]}"; do series[$n]+="$(rss_kb "$(cat "$DIR/run/$n.pid")") "; done
    done
    local c1
    c1=$(issued)
    printf 'soak_seconds %s\nsoak_certificates %s\nsoak_devices_per_s %s\n' "$SOAK" "$((c1 - c0))" \
        "$(awk -v n="$((c1 - c0))" -v s="$SOAK" 'BEGIN { printf "%.1f", n / s }')"
    for n in "${names[@]}"; do
        read -ra v <<<"${series[$n]}"
        local third=$((${#v[@]} / 3)) verdict
        ((third > 0)) || third=1
        verdict=$(printf '%s\n' "${v[@]}" | awk -v t="$third" -v n="${#v[@]}" '
            NR <= t { a += $1 } NR > n - t { b += $1 }
            END { a /= t; b /= t; printf "%s %.0f %.0f", (b <= a * 1.25 + 4096) ? "flat" : "GROWING", a, b }')
        printf 'rss_kb_%s %s (first third %s, last third %s): %s\n' "$n" "${verdict%% *}" \
            "$(cut -d' ' -f2 <<<"$verdict")" "$(cut -d' ' -f3 <<<"$verdict")" "${series[$n]}"
        [[ $verdict == flat* ]] || bad=1
    done
    nusec production stop --job "$job" >/dev/null 2>&1
    kill "$wait_pid" 2>/dev/null
    wait_pid=
    nusec stack down >/dev/null 2>&1
    local leaks
    leaks=$(grep -l 'LeakSanitizer' "$DIR"/logs/*.log 2>/dev/null | xargs -r -n1 basename | tr '\n' ' ')
    printf 'leak_reports %s\n' "${leaks:-none}"
    [[ -z "$leaks" ]] || bad=1
    if ((bad)); then echo "chaos: soak FAILED"; exit 1; fi
    echo "chaos: soak OK"
    exit 0
}
((SOAK > 0)) && soak

# ---- the fault schedule: kinds placed at seeded certificate counts ----------------------
RANDOM=$SEED
faults=()
add() { for ((k = 0; k < $2; k++)); do faults+=("$((QUOTA * 5 / 100 + RANDOM % (QUOTA * FAULT_SPAN / 100 + 1))) $1"); done; }
add cloud "$CLOUD_KILLS"
add broker "$BROKER_RESTARTS"
add programmer "$PROG_KILLS"
add station "$STATION_KILLS"
((DISK_FULL_S > 0)) && add diskfull 1
((OUTAGE_S > 0 && OUTAGES > 0)) && add outage "$OUTAGES"
mapfile -t faults < <(printf '%s\n' "${faults[@]}" | sort -n)

pid_of() { cat "$DIR/run/$1.pid" 2>/dev/null; }
restart() { nusec stack up "${STACK_ARGS[@]}" >>"$DIR/logs/chaos-restart.log" 2>&1; }
broker_n=0
apply() {
    case $1 in
    cloud) kill -9 "$(pid_of cloud)" 2>/dev/null; sleep 0.2; restart ;;
    broker)
        # Alternate SIGTERM and SIGKILL: a clean stop and a crash.
        if ((broker_n++ % 2)); then kill -9 "$(pid_of broker)"; else kill -TERM "$(pid_of broker)"; fi
        sleep 1; restart ;;
    programmer) kill -9 "$(pid_of prog-1)" 2>/dev/null; sleep 0.5; restart ;;
    station) kill -9 "$(pid_of station)" 2>/dev/null; sleep 0.5; restart ;;
    outage)
        kill -TERM "$(pid_of broker)" 2>/dev/null
        sleep "$OUTAGE_S"
        restart ;;
    diskfull)
        for c in "${FULL_DIRS[@]}"; do dd if=/dev/zero of="$DIR/$c/filler" bs=1M 2>/dev/null; done
        sleep "$DISK_FULL_S"
        for c in "${FULL_DIRS[@]}"; do rm -f "$DIR/$c/filler"; done ;;
    esac
}

start=$(now)
resume_all=()
resume_max=0
stalled=0
applied=0
for f in "${faults[@]}"; do
    at=${f% *} kind=${f#* }
    while (($(issued) < at)); do
        sleep 0.2
        kill -0 "$wait_pid" 2>/dev/null || break
        (($(elapsed "$start" "$(now)" | cut -d. -f1) > TIMEOUT)) && break 2
    done
    kill -0 "$wait_pid" 2>/dev/null || break
    before=$(issued)
    apply "$kind"
    applied=$((applied + 1))
    t_end=$(now)
    # Resume: the next certificate after the fault ended (the restart returned).
    # (No resume to wait for when the line had issued everything already.)
    if ((before >= QUOTA)); then
        resume_all+=("$kind:done")
        say "fault $kind after the last certificate"
        continue
    fi
    while (($(issued) <= before)); do
        sleep 0.1
        if (($(elapsed "$t_end" "$(now)" | cut -d. -f1) > 60)); then stalled=$((stalled + 1)); break; fi
    done
    r=$(elapsed "$t_end" "$(now)")
    resume_all+=("$kind:$r")
    resume_max=$(awk -v a="$resume_max" -v b="$r" 'BEGIN { print (b > a) ? b : a }')
    say "fault $kind at $before certificates, resumed after ${r}s"
done

# ---- the line must finish by itself ----------------------------------------------------
rc_wait=0
deadline=$(($(date +%s) + TIMEOUT))
while kill -0 "$wait_pid" 2>/dev/null && (($(date +%s) < deadline)); do sleep 0.5; done
if kill -0 "$wait_pid" 2>/dev/null; then
    say "production did not finish within ${TIMEOUT}s"
    kill "$wait_pid"
    rc_wait=124
else
    wait "$wait_pid"
    rc_wait=$?
fi
wait_pid=
secs=$(elapsed "$start" "$(now)")
# Let the last device reports reach the ledger: a chip certified under a
# lease reports with the lease's upload; a report not there after 60 s is
# lost.
reported() { ledger "select count(*) from certificates where state = 'provisioned' and $LIVE" || echo 0; }
locked_chips() { grep -lx 'state=locked' "$DIR"/targets/*/state 2>/dev/null | wc -l; }
for ((i = 0; i < 300; i++)); do
    (($(reported) >= $(locked_chips))) && break
    sleep 0.2
done
sleep 1

# ---- outside checks ----------------------------------------------------------------------
certs=$(issued)
overshoot=$((certs > QUOTA ? certs - QUOTA : 0))
dups=$(ledger "select count(*) - count(distinct serial) from certificates")
incidents=$(ledger "select count(*) from audit_events where kind='lease.incident'")
offline=$(ledger "select count(*) from lease_certs")
lost_certs=0 lost_reports=0 unfinished=0 locked=0 blank=0
declare -A serial_known=()
while read -r s; do serial_known[$s]=1; done < <(ledger "select upper(serial) from certificates where $LIVE")
declare -A provisioned=()
while read -r u; do provisioned[$u]=1; done < <(ledger "select lower(hex(device_uid)) from certificates where state = 'provisioned'")
for t in "$DIR"/targets/*/; do
    st=$(sed -n 's/^state=//p' "$t/state" 2>/dev/null)
    uid=$(basename "$t")
    case $st in
    blank | '') blank=$((blank + 1)) ;;
    locked)
        locked=$((locked + 1))
        s=$(openssl x509 -in "$t/cert.pem" -noout -serial 2>/dev/null | sed 's/^serial=//')
        [[ -n "$s" && -n "${serial_known[${s^^}]:-}" ]] || lost_certs=$((lost_certs + 1))
        [[ -n "${provisioned[$uid]:-}" ]] || lost_reports=$((lost_reports + 1)) ;;
    *) unfinished=$((unfinished + 1)); say "unfinished chip $uid: $st" ;;
    esac
done
counters=$(nusec production status --job "$job" --json 2>/dev/null |
    python3 -c 'import json,sys; d=json.load(sys.stdin); print(sum(p["counter"] for j in d["jobs"] for p in j["programmers"]))' 2>/dev/null || echo -1)
wasted=$((counters >= 0 ? counters - certs : -1))
bound=$((PROG_KILLS * SOCKETS * (1 + 16)))
audit=ok
nusec audit verify >/dev/null 2>&1 || audit=FAILED
expected=$((QUOTA < DEVICES ? QUOTA : DEVICES))
outcome=$(tail -n 1 "$DIR/logs/production.log" 2>/dev/null | sed 's/^[^:]*: //')

printf '%s %s\n' job "$job" devices "$DEVICES" quota "$QUOTA" seed "$SEED" \
    faults "${#faults[@]}" faults_applied "$applied" seconds "$secs" certificates "$certs" locked "$locked" blank "$blank" \
    overshoot "$overshoot" duplicate_serials "$dups" lost_certificates "$lost_certs" \
    lost_device_reports "$lost_reports" chips_unfinished "$unfinished" \
    units_wasted "$wasted" units_wasted_bound "$bound" stalled_faults "$stalled" \
    resume_max_s "$resume_max" audit_verify "$audit" production_exit "$rc_wait" \
    offline_certificates "${offline:-0}" lease_incidents "${incidents:-0}"
printf 'resume_s %s\n' "${resume_all[*]}"
printf 'production_outcome %s\n' "$outcome"

bad=()
((overshoot == 0)) || bad+=(overshoot)
((dups == 0)) || bad+=(duplicate_serials)
((${incidents:-0} == 0)) || bad+=(lease_incidents)
((lost_certs == 0)) || bad+=(lost_certificates)
((lost_reports == 0)) || bad+=(lost_device_reports)
((unfinished == 0)) || bad+=(chips_unfinished)
((stalled == 0)) || bad+=(stalled)
((applied == ${#faults[@]})) || bad+=("faults_applied:$applied/${#faults[@]}")
((QUOTA >= DEVICES || rc_wait == 0)) || bad+=("production_exit:$rc_wait")
# Completed: every unit the KeyStores counted is a locked chip, but for the
# units a programmer crash may waste (its reservation's rest; bounded above).
((locked == expected - (wasted > 0 ? wasted : 0))) || bad+=("completed:$locked/$expected")
[[ $audit == ok ]] || bad+=(audit_verify)
awk -v r="$resume_max" 'BEGIN { exit !(r <= 10) }' || bad+=(resume_max_s)
((wasted >= 0 && wasted <= bound)) || bad+=(units_wasted)
if ((${#bad[@]})); then
    printf 'chaos: FAILED: %s\n' "${bad[*]}"
    exit 1
fi
echo "chaos: OK"
