#!/usr/bin/env bash
# A whole production on the local stack, as the OEM and the CM run it.
# Used by `./build.sh demo` and by the end-to-end test.
#
# usage: demo_flow.sh --bin DIR --dir DIR [--devices N] [--quota Q]
#                     [--programmers P] [--sockets S] [--flash-us-per-kib T]
#                     [--capture FILE]
# Exit: 0 when every device up to the quota was provisioned and the audit
# chain verifies; 1 otherwise. The stack is always taken down.
set -euo pipefail

BIN= DIR= DEVICES=32 QUOTA= PROGRAMMERS=2 SOCKETS=4 FLASH_US=0 CAPTURE=
while (($#)); do
    case $1 in
    --bin) BIN=$2 ;;
    --dir) DIR=$2 ;;
    --devices) DEVICES=$2 ;;
    --quota) QUOTA=$2 ;;
    --programmers) PROGRAMMERS=$2 ;;
    --sockets) SOCKETS=$2 ;;
    --flash-us-per-kib) FLASH_US=$2 ;;
    --capture) CAPTURE=$2 ;; # events seen on the bus, one "topic hex-payload" per line
    *) echo "demo: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
[[ -n "$BIN" && -n "$DIR" ]] || { echo "demo: need --bin and --dir" >&2; exit 2; }
QUOTA=${QUOTA:-$DEVICES}
for n in "$DEVICES" "$QUOTA" "$PROGRAMMERS" "$SOCKETS" "$FLASH_US"; do
    [[ "$n" =~ ^[0-9]+$ ]] || { echo "demo: '$n' is not a number" >&2; exit 2; }
done
((DEVICES > 0 && QUOTA > 0 && PROGRAMMERS > 0 && SOCKETS > 0)) ||
    { echo "demo: devices, quota, programmers and sockets must be > 0" >&2; exit 2; }

nusec() { "$BIN/nusec" "$@" --dir "$DIR"; }
step() { printf '\n== %s\n' "$*"; }

rm -rf "$DIR"
mkdir -p "$DIR"
capture_pid=
finish() {
    [[ -n "$capture_pid" ]] && kill "$capture_pid" 2>/dev/null
    step "stack down"
    nusec stack down || true
}
trap finish EXIT
start=$(date +%s.%N)

step "OEM: stack up ($PROGRAMMERS programmers x $SOCKETS sockets, $DEVICES devices on the line)"
nusec stack up --programmers "$PROGRAMMERS" --sockets "$SOCKETS" --devices "$DEVICES" \
    --flash-us-per-kib "$FLASH_US"

if [[ -n "$CAPTURE" ]]; then
    # A monitor, as an auditor would attach one: plain mosquitto_sub.
    endpoint=$(cat "$DIR/broker/endpoint")
    mosquitto_sub -V mqttv5 -h "${endpoint%:*}" -p "${endpoint##*:}" \
        --cafile "$DIR/pki/chain.pem" --cert "$DIR/pki/clients/monitor.crt" \
        --key "$DIR/pki/clients/monitor.key" -i monitor:capture -q 1 \
        -t 'nusec/v1/events/#' -F '%t %x' >"$CAPTURE" 2>"$CAPTURE.err" &
    capture_pid=$!
fi

step "OEM: sign the firmware in the HSM (MCUboot image)"
head -c 65536 /dev/urandom >"$DIR/demo-app.bin"
nusec firmware sign --in "$DIR/demo-app.bin" --name demo-app --version 1.0.0

step "OEM: create the job (quota $QUOTA) and seal one package per programmer"
progs=()
for ((i = 1; i <= PROGRAMMERS; i++)); do progs+=(--programmer "prog-$i"); done
mkdir -p "$DIR/packages"
job=$(nusec job create --firmware demo-app-1.0.0 --quota "$QUOTA" "${progs[@]}" \
    --expires 1h --out "$DIR/packages" | tail -n 1)
echo "job: $job"

step "CM: inspect and import the packages"
for f in "$DIR"/packages/*.nspkg; do nusec package inspect "$f"; done
nusec package import "$DIR"/packages/*.nspkg

step "CM: start production"
rc=0
prod_start=$(date +%s.%N)
nusec production start --job "$job" --wait || rc=$?
prod_end=$(date +%s.%N)

step "Summary"
nusec production status --job "$job" || true
end=$(date +%s.%N)
provisioned=$(grep -l '^state=locked' "$DIR"/targets/*/state 2>/dev/null | wc -l)
certs=$(sqlite3 "$DIR/cloud/ledger.db" "select count(*) from certificates where job_id='$job'")
refused=$(sqlite3 "$DIR/cloud/ledger.db" "select refused from jobs where job_id='$job'")
audit=ok
nusec audit verify >/dev/null || audit=FAILED
secs=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
printf '\n%-28s %s\n' "job" "$job"
printf '%-28s %s\n' "devices on the line" "$DEVICES"
printf '%-28s %s\n' "quota" "$QUOTA"
printf '%-28s %s\n' "devices provisioned" "$provisioned"
printf '%-28s %s\n' "certificates in the ledger" "$certs"
for ((i = 1; i <= PROGRAMMERS; i++)); do
    n=$(sqlite3 "$DIR/cloud/ledger.db" \
        "select count(*) from certificates where job_id='$job' and programmer_id='prog-$i'")
    printf '%-28s %s\n' "  issued to prog-$i" "$n"
done
printf '%-28s %s\n' "requests refused" "$refused"
prod_secs=$(awk -v a="$prod_start" -v b="$prod_end" 'BEGIN { printf "%.3f", b - a }')
printf '%-28s %.1f s (production %.1f s)\n' "time" "$secs" "$prod_secs"
# The rate of the production itself, as the progress bar shows it: stack
# start-up, signing and import are not production.
printf '%-28s %s\n' "devices/s" "$(awk -v n="$provisioned" -v s="$prod_secs" 'BEGIN { printf "%.1f", n / s }')"
printf '%-28s %s\n' "audit verify" "$audit"

expected=$((QUOTA < DEVICES ? QUOTA : DEVICES))
# production start --wait: 0 limit reached, 4 tray empty (more quota than chips).
if ((rc != 0 && rc != 4)) || [[ $audit != ok ]] || ((provisioned != expected)) ||
    ((certs > QUOTA)); then
    echo "demo: FAILED (provisioned $provisioned, expected $expected)" >&2
    exit 1
fi
echo "demo: OK"
