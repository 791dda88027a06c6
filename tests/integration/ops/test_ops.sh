#!/usr/bin/env bash
# Running NuSEC as a product, on the real local stack:
# - every program answers --version with the revision it was built from;
# - SIGHUP (a logrotate postrotate) reopens the log files of nusec-cloud and
#   nusec-station, which keep serving: a production runs after it; SIGTERM
#   still drains (stack down stops them without killing);
# - the CLI's edges: `nusec GROUP` and `nusec GROUP --help` list the
#   subcommands, unknown jobs are named as such (exit 1), `job list` is in
#   creation order, a second `stack up` says "already running" only, and
#   `--out DIR/` makes no double slash;
# - /metrics: stack up prints the URLs and writes DIR/run/metrics.urls; a
#   real scrape after a production passes `promtool check metrics` and its
#   counts equal the ledger's;
# - `device export` (jsonl, csv): one record per device, whose certificate is
#   the one on the chip and verifies with the exported chain (openssl).
#
# usage: test_ops.sh BIN_DIR SOURCE_DIR
set -uo pipefail
BIN=$1 SRC=$2
. "$SRC/tests/lib/stack_lib.sh" ops

# --- --version ---------------------------------------------------------------------------
# "PROGRAM X.Y.Z (git REV)": REV is a commit of this repository (plus -dirty),
# or "unknown" when the build was configured outside a git checkout.
version_ok() { # version_ok PROGRAM
    local out rev
    out=$("$BIN/$1" --version) || return 1
    [[ "$out" =~ ^$1\ [0-9]+\.[0-9]+\.[0-9]+\ \(git\ ([^ ]+)\)$ ]] || { echo "  got: $out"; return 1; }
    rev=${BASH_REMATCH[1]%-dirty}
    [[ "$rev" == unknown ]] && ! git -C "$SRC" rev-parse 2>/dev/null && return 0
    git -C "$SRC" cat-file -e "$rev^{commit}" 2>/dev/null || { echo "  not a commit: $rev"; return 1; }
}
for p in nusec nusec-cloud nusec-station nusec-programmer; do
    check "$p --version names the version and its git revision" version_ok "$p"
done
same_version() { [[ $("$BIN/nusec" --version | cut -d' ' -f2-) == $("$BIN/nusec-cloud" --version | cut -d' ' -f2-) ]]; }
check "one version string for every program" same_version

# --- SIGHUP: logs reopened, services keep serving ---------------------------------------
fails_saying() { # fails_saying TEXT COMMAND...: exit 1 and TEXT on stderr
    local text=$1 out rc
    shift
    out=$("$@" 2>&1 >/dev/null)
    rc=$?
    [[ $rc -eq 1 && "$out" == *"$text"* ]] || { echo "  exit $rc: $out"; return 1; }
}
wait_for() { # wait_for SECONDS COMMAND...: poll until it succeeds
    local end=$((SECONDS + $1))
    shift
    until "$@"; do ((SECONDS < end)) || return 1; sleep 0.2; done
}
mkdir -p "$DIR"
# A PIN in the environment (the cloud reads DIR/hsm/pin first: this one is a
# decoy) must reach the cloud only, which logs in to the HSM.
if ! NUSEC_HSM_PIN=decoy-pin-4711 nusec stack up --programmers 1 --sockets 2 --devices 4 \
    >"$TMP/up.txt" 2>&1; then
    cat "$TMP/up.txt"
    check "stack up" false
    echo "integration_ops: $passed passed, $failed failed"
    exit 1
fi
cat "$TMP/up.txt"
cloud_pid=$(cat "$DIR/run/cloud.pid") station_pid=$(cat "$DIR/run/station.pid")
has_pin() { tr '\0' '\n' <"/proc/$1/environ" | grep -q '^NUSEC_HSM_PIN='; }
pin_to_cloud_only() {
    local f pid n=0
    has_pin "$cloud_pid" || { echo "  the cloud did not get it"; return 1; }
    for f in "$DIR"/run/*.pid; do
        [[ $f == */cloud.pid ]] && continue
        pid=$(cat "$f")
        [[ -r /proc/$pid/environ ]] || continue # not running: nothing to read
        n=$((n + 1))
        if has_pin "$pid"; then echo "  $(basename "$f" .pid) has it"; return 1; fi
    done
    ((n >= 3)) || { echo "  only $n other processes read"; return 1; } # broker, station, prog-1
}
check "\$NUSEC_HSM_PIN is handed to the cloud, not to the broker, station or programmers" \
    pin_to_cloud_only
mv "$DIR/logs/cloud.log" "$DIR/logs/cloud.log.1"
mv "$DIR/logs/station.log" "$DIR/logs/station.log.1"
kill -HUP "$cloud_pid" "$station_pid"
check "cloud recreates its log file on SIGHUP" \
    wait_for 10 grep -q "SIGHUP: log reopened" "$DIR/logs/cloud.log"
check "station recreates its log file on SIGHUP" \
    wait_for 10 grep -q "SIGHUP: log reopened" "$DIR/logs/station.log"
sleep 0.5
check "cloud still runs after SIGHUP" kill -0 "$cloud_pid"
check "station still runs after SIGHUP" kill -0 "$station_pid"
check "cloud answers requests after SIGHUP" nusec programmer list
# A whole production after the SIGHUP: cloud and station serve it.
produce() {
    head -c 16384 /dev/urandom >"$TMP/app.bin"
    nusec firmware sign --in "$TMP/app.bin" --name ops-app --version 1.0.0 >/dev/null &&
        job=$(nusec job create --firmware ops-app-1.0.0 --quota 4 --programmer prog-1 \
            --expires 1h --out "$DIR/packages" | tail -n 1) &&
        nusec package import "$DIR"/packages/*.nspkg >/dev/null &&
        timeout 120 "$BIN/nusec" production start --job "$job" --wait --dir "$DIR" >/dev/null &&
        [[ $(sqlite3 "$DIR/cloud/ledger.db" "select issued from jobs where job_id='$job'") == 4 ]]
}
job=
check "a production runs after SIGHUP (4 devices issued)" produce
check "the new cloud log has the production's lines" grep -q "job $job created" "$DIR/logs/cloud.log"

# --- /metrics ---------------------------------------------------------------------------
scrape() { # scrape URL OUT
    python3 -c 'import sys, urllib.request; sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=10).read().decode())' "$1" >"$2"
}
cloud_url=$(grep -o 'http://[^ ]*' <<<"$(grep '^cloud  *metrics ' "$TMP/up.txt")")
check "stack up prints the cloud's metrics URL, on loopback" \
    eval '[[ "$cloud_url" == http://127.0.0.1:*/metrics ]]'
check "DIR/run/metrics.urls lists it" grep -qx "$cloud_url" "$DIR/run/metrics.urls"
scrape "$cloud_url" "$TMP/cloud.prom"
check "promtool check metrics passes on the cloud's scrape" promtool check metrics <"$TMP/cloud.prom"
metric() { # metric FILE NAME{labels}: its value
    awk -v k="$2" '$1 == k { print $2 }' "$1"
}
check "issued_total of the job equals the ledger's issued count" eval \
    '[[ $(metric "$TMP/cloud.prom" "nusec_cloud_certificates_issued_total{job=\"$job\"}") == 4 ]]'
check "cert.request latency histogram counted each request" eval \
    '(( $(metric "$TMP/cloud.prom" "nusec_cloud_request_duration_seconds_count{op=\"cert.request\"}") >= 4 ))'
check "HSM sign and ledger commit histograms have observations" eval \
    '(( $(metric "$TMP/cloud.prom" nusec_cloud_hsm_sign_duration_seconds_count) >= 4 &&
        $(metric "$TMP/cloud.prom" nusec_cloud_ledger_commit_duration_seconds_count) >= 1 ))'
check "queue depth, busy workers, MQTT state are exported" eval \
    '[[ -n $(metric "$TMP/cloud.prom" nusec_cloud_queue_depth) &&
        -n $(metric "$TMP/cloud.prom" nusec_cloud_workers_busy) &&
        $(metric "$TMP/cloud.prom" nusec_cloud_mqtt_connected) == 1 &&
        $(metric "$TMP/cloud.prom" nusec_cloud_mqtt_reconnects_total) == 0 ]]'
# A cert.request the cloud must refuse (the oem role may not ask for device
# certificates), sent as an outsider would: protoc + mosquitto_pub.
refused_counted() {
    local ep now
    ep=$(cat "$DIR/broker/endpoint") now=$(date +%s%3N)
    printf 'header { message_id: "0123456789abcdef" sender_id: "oem" sent_at_ms: %s sequence: 1
            protocol: 1 idempotency_key: "0123456789abcdef" }
            certificate_request { job_id: "%s" device_uid: "\001\002" csr_der: "0000" }' \
        "$now" "$job" |
        protoc --encode=nusec.v1.Envelope -I "$SRC/proto" "$SRC/proto/nusec/v1/envelope.proto" \
            >"$TMP/req.bin" || return 1
    # Signed end to end as the cloud requires (proto/README.md): ECDSA-P256
    # over SHA-256("nusec/v1 envelope" 0 topic 0 payload), hex, user property.
    local topic=nusec/v1/cloud/req/oem/cert.request sig
    sig=$({ printf 'nusec/v1 envelope\0%s\0' "$topic"; cat "$TMP/req.bin"; } |
        openssl dgst -sha256 -sign "$DIR/pki/clients/oem.key" | od -An -v -tx1 | tr -d ' \n')
    mosquitto_pub -V mqttv5 -h "${ep%:*}" -p "${ep##*:}" --cafile "$DIR/pki/chain.pem" \
        --cert "$DIR/pki/clients/oem.crt" --key "$DIR/pki/clients/oem.key" -i oem:probe -q 1 \
        -t "$topic" -D publish user-property nusec-sig "$sig" \
        -D publish response-topic nusec/v1/reply/oem/probe/r -f "$TMP/req.bin" || return 1
    probe() {
        scrape "$cloud_url" "$TMP/cloud2.prom" && [[ $(metric "$TMP/cloud2.prom" \
            "nusec_cloud_certificates_refused_total{job=\"-\",code=\"NOT_AUTHORIZED\"}") == 1 ]] &&
            ! grep -q "certificates_refused_total{job=\"$job\"" "$TMP/cloud2.prom"
    }
    wait_for 10 probe
}
# Its job label is the sender's choice until the request is admitted (signed,
# a role that may send it): counted under job="-", or made-up jobs would fill
# the family (1024 series) and real refusals would go uncounted.
check "a cert.request refused before it is admitted is counted by code, job \"-\"" refused_counted
not_found() { ! scrape "${cloud_url%/metrics}/secret" /dev/null 2>/dev/null; }
check "the listener serves /metrics only" not_found

station_url=$(grep -o 'http://[^ ]*' <<<"$(grep '^station  *metrics ' "$TMP/up.txt")")
check "stack up prints the station's metrics URL, on loopback; metrics.urls has both" \
    eval '[[ "$station_url" == http://127.0.0.1:*/metrics ]] &&
          [[ $(cat "$DIR/run/metrics.urls") == "$cloud_url"$'"'"'\n'"'"'"$station_url" ]]'
scrape "$station_url" "$TMP/station.prom"
check "promtool check metrics passes on the station's scrape" \
    promtool check metrics <"$TMP/station.prom"
check "station: prog-1 provisioned 4 of its limit 4, online, heard from lately" eval \
    '[[ $(metric "$TMP/station.prom" "nusec_station_devices_provisioned{job=\"$job\",programmer=\"prog-1\"}") == 4 &&
        $(metric "$TMP/station.prom" "nusec_station_devices_limit{job=\"$job\",programmer=\"prog-1\"}") == 4 &&
        $(metric "$TMP/station.prom" "nusec_station_programmer_online{programmer=\"prog-1\"}") == 1 &&
        $(metric "$TMP/station.prom" "nusec_station_programmer_last_event_age_seconds{programmer=\"prog-1\"}") -lt 120 ]]'

# --- device export ----------------------------------------------------------------------
nusec device export --job "$job" --out "$TMP/devices.jsonl" 2>/dev/null
nusec device export --job "$job" --format csv --state provisioned >"$TMP/devices.csv" 2>/dev/null
export_ok() { # every record: on the chip, verifies with its chain, names prog-1 and the job
    python3 - "$TMP/devices.jsonl" "$TMP/devices.csv" "$DIR" "$job" <<'PY' || return 1
import csv, json, subprocess, sys, tempfile
jsonl, csvf, d, job = sys.argv[1:]
recs = [json.loads(l) for l in open(jsonl)]
rows = list(csv.DictReader(open(csvf, newline="")))
assert len(recs) == 4 and len(rows) == 4, (len(recs), len(rows))
for r, c in zip(recs, rows):
    assert r["job"] == job and r["programmer"] == "prog-1" and r["state"] == "provisioned", r
    assert c["certificate_pem"] == r["certificate_pem"] and c["uid"] == r["uid"], c
    assert open(f"{d}/targets/{r['uid']}/cert.pem").read().strip() == r["certificate_pem"].strip()
    with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca, \
         tempfile.NamedTemporaryFile("w", suffix=".pem") as cert:
        ca.write(r["chain_pem"]); ca.flush(); cert.write(r["certificate_pem"]); cert.flush()
        subprocess.run(["openssl", "verify", "-CAfile", ca.name, cert.name], check=True,
                       stdout=subprocess.DEVNULL)
PY
}
check "device export: 4 records (jsonl and csv), each the chip's certificate, verifying" export_ok
check "device export of an unknown job: exit 1" \
    fails_saying "does not exist" nusec device export --job job-0000000000000000

# --- CLI edges ------------------------------------------------------------------------------
groups=$("$BIN/nusec" --help | awk '/^Commands:/ { f = 1; next } /^$/ { f = 0 } f { print $1 }' |
    sort -u)
group_help_ok() { # every group answers --help (exit 0); one with subcommands lists them alone too
    local g out sub
    for g in $groups; do
        out=$("$BIN/nusec" "$g" --help 2>&1) || { echo "  nusec $g --help failed: $out"; return 1; }
        [[ "$out" == "usage: nusec $g SUBCOMMAND"* ]] || continue # monitor, report: one command
        for sub in $("$BIN/nusec" --help | awk -v g="$g" '$1 == g { print $2 }'); do
            grep -q "^  $sub " <<<"$out" || { echo "  nusec $g --help lacks $sub"; return 1; }
        done
        [[ $("$BIN/nusec" "$g" 2>&1) == "$out" ]] || { echo "  nusec $g alone differs"; return 1; }
    done
}
check "nusec GROUP and GROUP --help list the subcommands, exit 0 ($(echo $groups))" group_help_ok
check "job show of an unknown job: exit 1, 'does not exist'" \
    fails_saying "job job-0000000000000000 does not exist" nusec job show job-0000000000000000
check "device list --job of an unknown job: exit 1, not an empty table" \
    fails_saying "job job-0000000000000000 does not exist" \
    nusec device list --job job-0000000000000000
check "report of an unknown job: exit 1, 'does not exist'" \
    fails_saying "job job-0000000000000000 does not exist" nusec report --job job-0000000000000000
for i in 1 2 3; do
    nusec job create --firmware ops-app-1.0.0 --quota 1 --programmer prog-1 \
        --out "$DIR/more/" >/dev/null 2>>"$TMP/create.err"
done
cat "$TMP/create.err"
check "job create --out DIR/ writes DIR/job-... (no double slash)" \
    eval '! grep -q "//" "$TMP/create.err" && grep -q "wrote $DIR/more/job-" "$TMP/create.err"'
job_order() {
    [[ $(nusec job list | awk 'NR > 1 { print $1 }') == \
        $(sqlite3 "$DIR/cloud/ledger.db" "select job_id from jobs order by created_at_ms, job_id") ]]
}
check "job list is in creation order" job_order
nusec stack up --programmers 1 --sockets 2 --devices 4 >"$TMP/up2.txt" 2>&1
cat "$TMP/up2.txt"
once_each() {
    local svc
    for svc in broker cloud station prog-1; do
        [[ $(grep -Ec "^$svc +(up|already running)" "$TMP/up2.txt") == 1 ]] || return 1
        grep -q "^$svc  *already running" "$TMP/up2.txt" || return 1
    done
}
check "a second stack up says 'already running', once per service" once_each

# Another role's made-up device.failed event (every role may publish events
# on its own topics, the read-only monitor included) is not a failed chip.
monitor_failed_ignored() {
    local ep now
    ep=$(cat "$DIR/broker/endpoint") now=$(date +%s%3N)
    printf 'header { message_id: "0123456789abcdef" sender_id: "monitor" sent_at_ms: %s
            sequence: 1 protocol: 1 } event { kind: "device.failed" job_id: "%s"
            device { job_id: "%s" device_uid: "\001\002" outcome: DEVICE_OUTCOME_FAILED
            error: ERROR_CODE_PERMISSION } }' "$now" "$job" "$job" |
        protoc --encode=nusec.v1.Envelope -I "$SRC/proto" "$SRC/proto/nusec/v1/envelope.proto" \
            >"$TMP/ev.bin" || return 1
    mosquitto_pub -h "${ep%:*}" -p "${ep##*:}" --cafile "$DIR/pki/chain.pem" \
        --cert "$DIR/pki/clients/monitor.crt" --key "$DIR/pki/clients/monitor.key" \
        -i monitor:probe -q 1 -t nusec/v1/events/monitor/monitor/device.failed \
        -f "$TMP/ev.bin" || return 1
    sleep 2
    scrape "$station_url" "$TMP/station3.prom" && ! grep -q 'chips_failed{programmer="monitor"' \
        "$TMP/station3.prom"
}
check "a monitor's device.failed event is no failed chip in the station's metrics" \
    monitor_failed_ignored

# A programmer that stops shows as offline in the station's metrics.
kill "$(cat "$DIR/run/prog-1.pid")"
offline() {
    scrape "$station_url" "$TMP/station2.prom" &&
        [[ $(metric "$TMP/station2.prom" "nusec_station_programmer_online{programmer=\"prog-1\"}") == 0 ]]
}
check "station metrics show a stopped programmer offline" wait_for 20 offline

# --- SIGTERM still drains ------------------------------------------------------------------
nusec stack down >"$TMP/down.txt" 2>&1
cat "$TMP/down.txt"
check "stack down stops the cloud on SIGTERM without killing it" \
    grep -Eq '^cloud +stopped \(pid [0-9]+\)$' "$TMP/down.txt"
check "the cloud drained on SIGTERM" grep -q "draining and stopping" "$DIR/logs/cloud.log"
check "no metrics URL is left once the stack is down" \
    eval '[[ ! -e "$DIR/run/metrics.urls" && ! -e "$DIR/run/cloud.metrics" && ! -e "$DIR/run/station.metrics" ]]'


echo "integration_ops: $passed passed, $failed failed"
((failed == 0))
