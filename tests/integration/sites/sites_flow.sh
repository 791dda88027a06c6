#!/usr/bin/env bash
# A whole production through two (or N) sites on loopback, as the OEM and each
# CM run it: `nusec stack up --sites N` (DIR = the OEM's state dir, DIR/cm/site-K
# the CMs'), firmware signed and the job created at the OEM, each site's
# packages crossing to its CM (a file copy), imported and produced there, all
# sites at once. Used by `./build.sh demo --sites N` and tests/integration/sites.
#
# usage: sites_flow.sh --bin DIR --dir DIR [--sites N] [--devices N] [--quota Q]
#                      [--programmers P] [--sockets S] [--flash-us-per-kib T]
#                      [--window S] [--capture PROG:FILE] [--forge PROG:N:FILE]
#                      [--org NAME] [--keep]
#   --programmers  per site (programmers are numbered across sites: site-1 has
#                  prog-1..prog-P, site-2 prog-(P+1)..)
#   --window S     the cloud's sig_window_s (tests use a short one)
#   --capture      (tests) read PROG's first genuine cert.request off the cloud
#                  broker into FILE.{topic,sig,env} during the production
#   --forge        (tests) answer PROG's first N cert.requests with a forged
#                  certificate signed by a CM-held key, the cloud's answer held
#                  back until PROG dropped it (sites_hostile answer; FILE: how
#                  many were sent, how many came first and were dropped)
#   --org NAME     the OEM's organisation (`nusec pki init --org`) before stack up
#   --keep         leave the stacks up (the caller runs `nusec stack down`)
# Exit: 0 when every device up to the quota was provisioned and the audit chain
# verifies; 1 otherwise.
set -euo pipefail

BIN= DIR= SITES=2 DEVICES=16 QUOTA= PROGRAMMERS=1 SOCKETS=4 FLASH_US=0 WINDOW= CAPTURE= FORGE= ORG= KEEP=
while (($#)); do
    case $1 in
    --bin) BIN=$2 ;;
    --dir) DIR=$2 ;;
    --sites) SITES=$2 ;;
    --devices) DEVICES=$2 ;;
    --quota) QUOTA=$2 ;;
    --programmers) PROGRAMMERS=$2 ;;
    --sockets) SOCKETS=$2 ;;
    --flash-us-per-kib) FLASH_US=$2 ;;
    --window) WINDOW=$2 ;;
    --capture) CAPTURE=$2 ;;
    --forge) FORGE=$2 ;;
    --org) ORG=$2 ;;
    --keep) KEEP=1; shift; continue ;;
    *) echo "sites demo: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
[[ -n "$BIN" && -n "$DIR" ]] || { echo "sites demo: need --bin and --dir" >&2; exit 2; }
QUOTA=${QUOTA:-$DEVICES}
for n in "$SITES" "$DEVICES" "$QUOTA" "$PROGRAMMERS" "$SOCKETS" "$FLASH_US"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "sites demo: '$n' is not a number" >&2; exit 2; }
done
((SITES > 0 && DEVICES > 0 && QUOTA > 0 && PROGRAMMERS > 0 && SOCKETS > 0)) ||
    { echo "sites demo: sites, devices, quota, programmers and sockets must be > 0" >&2; exit 2; }

oem() { "$BIN/nusec" "$@" --dir "$DIR"; }
cm() { local site=$1; shift; "$BIN/nusec" "$@" --dir "$DIR/cm/$site"; }
step() { printf '\n== %s\n' "$*"; }

rm -rf "$DIR"
mkdir -p "$DIR/cloud"
[[ -n "$WINDOW" ]] && echo "sig_window_s = $WINDOW" >"$DIR/cloud/cloud.conf"
capture_pid= forge_pid=
finish() {
    [[ -n "$capture_pid" ]] && kill "$capture_pid" 2>/dev/null
    [[ -n "$forge_pid" ]] && kill "$forge_pid" 2>/dev/null
    if [[ -z "$KEEP" ]]; then
        step "stack down (sites first, then the OEM)"
        oem stack down || true
    fi
}
trap finish EXIT
start=$(date +%s.%N)

step "OEM + $SITES CM sites: stack up ($PROGRAMMERS programmer(s) x $SOCKETS sockets per site, $DEVICES devices)"
[[ -n "$ORG" ]] && oem pki init --org "$ORG" >/dev/null
oem stack up --sites "$SITES" --programmers "$PROGRAMMERS" --sockets "$SOCKETS" \
    --devices "$DEVICES" --flash-us-per-kib "$FLASH_US"

step "OEM: sign the firmware in the HSM (MCUboot image)"
head -c 65536 /dev/urandom >"$DIR/demo-app.bin"
oem firmware sign --in "$DIR/demo-app.bin" --name demo-app --version 1.0.0

step "OEM: create the job (quota $QUOTA) and seal one package per programmer"
progs=()
total=$((SITES * PROGRAMMERS))
for ((i = 1; i <= total; i++)); do progs+=(--programmer "prog-$i"); done
mkdir -p "$DIR/packages"
job=$(oem job create --firmware demo-app-1.0.0 --quota "$QUOTA" "${progs[@]}" \
    --expires 1h --out "$DIR/packages" | tail -n 1)
echo "job: $job"

site_of() { echo "site-$(((${1#prog-} - 1) / PROGRAMMERS + 1))"; }
step "OEM -> CM: each site gets its programmers' packages (file copy); CM: inspect, import"
for ((k = 1; k <= SITES; k++)); do mkdir -p "$DIR/cm/site-$k.incoming"; done
for ((i = 1; i <= total; i++)); do
    cp "$DIR/packages/$job-prog-$i.nspkg" "$DIR/cm/$(site_of "prog-$i").incoming/"
done
for ((k = 1; k <= SITES; k++)); do
    for f in "$DIR/cm/site-$k.incoming"/*.nspkg; do cm "site-$k" package inspect "$f" | tail -n 1; done
    cm "site-$k" package import "$DIR/cm/site-$k.incoming"/*.nspkg
done

if [[ -n "$CAPTURE" ]]; then
    "$BIN/sites_hostile" capture "$DIR" "${CAPTURE%%:*}" "${CAPTURE#*:}" \
        >"${CAPTURE#*:}.log" 2>&1 &
    capture_pid=$!
    for _ in $(seq 50); do grep -q SUBSCRIBED "${CAPTURE#*:}.log" 2>/dev/null && break; sleep 0.1; done
fi

if [[ -n "$FORGE" ]]; then
    IFS=: read -r f_prog f_n f_out <<<"$FORGE"
    # with the programmer's log: the forger holds the cloud's answer back until
    # the programmer dropped the forgery (sites_hostile.c), so the forgery comes first
    "$BIN/sites_hostile" answer "$DIR" "$f_prog" "$f_n" "$f_out" \
        "$DIR/cm/$(site_of "$f_prog")/logs/$f_prog.log" >"$f_out.log" 2>&1 &
    forge_pid=$!
    for _ in $(seq 50); do grep -q SUBSCRIBED "$f_out.log" 2>/dev/null && break; sleep 0.1; done
fi

step "CM: every site starts production at once"
prod_start=$(date +%s.%N)
pids=()
for ((k = 1; k <= SITES; k++)); do
    cm "site-$k" production start --job "$job" --wait >"$DIR/cm/site-$k.production.log" 2>&1 &
    pids+=($!)
done
rc=0
for p in "${pids[@]}"; do wait "$p" || rc=$?; done
prod_end=$(date +%s.%N)
if [[ -n "$capture_pid" ]]; then wait "$capture_pid" || true; capture_pid=; fi
if [[ -n "$forge_pid" ]]; then kill "$forge_pid" 2>/dev/null || true; wait "$forge_pid" || true; forge_pid=; fi
for ((k = 1; k <= SITES; k++)); do
    echo "-- site-$k"; tail -n $((PROGRAMMERS + 1)) "$DIR/cm/site-$k.production.log"
done

step "Summary"
end=$(date +%s.%N)
provisioned=$(cat "$DIR"/cm/site-*/targets/*/state 2>/dev/null | grep -c '^state=locked' || true)
certs=$(sqlite3 "$DIR/cloud/ledger.db" "select count(*) from certificates where job_id='$job'")
audit=ok
oem audit verify >/dev/null || audit=FAILED
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
prod_secs=$(awk -v a="$prod_start" -v b="$prod_end" 'BEGIN { printf "%.3f", b - a }')
printf '\n%-28s %s\n' "job" "$job"
printf '%-28s %s\n' "sites" "$SITES"
printf '%-28s %s\n' "devices on the lines" "$DEVICES"
printf '%-28s %s\n' "quota" "$QUOTA"
printf '%-28s %s\n' "devices provisioned" "$provisioned"
printf '%-28s %s\n' "certificates in the ledger" "$certs"
for ((i = 1; i <= total; i++)); do
    n=$(sqlite3 "$DIR/cloud/ledger.db" \
        "select count(*) from certificates where job_id='$job' and programmer_id='prog-$i'")
    printf '%-28s %s\n' "  issued to prog-$i ($(site_of "prog-$i"))" "$n"
done
printf '%-28s %.1f s (production %.1f s)\n' "time" "$secs" "$prod_secs"
printf '%-28s %s\n' "devices/s" "$(awk -v n="$provisioned" -v s="$prod_secs" 'BEGIN { printf "%.1f", n / s }')"
printf '%-28s %s\n' "audit verify" "$audit"
echo "$job" >"$DIR/job"

expected=$((QUOTA < DEVICES ? QUOTA : DEVICES))
if ((rc != 0 && QUOTA >= DEVICES)) || [[ $audit != ok ]] || ((provisioned != expected)) ||
    ((certs > QUOTA)); then
    echo "sites demo: FAILED (provisioned $provisioned, expected $expected)" >&2
    exit 1
fi
echo "sites demo: OK"
