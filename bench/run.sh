#!/usr/bin/env bash
# NuSEC benchmark, ONE run on this machine (issue #6). Used by `./build.sh bench`.
# Section 7 (issue #17): HSM-signed certificates per second on SoftHSM2 and a
# TPM 2.0 token in the same run (BENCH_HSM_SECONDS, default 5).
#
# usage: bench/run.sh --bin DIR [--out FILE] [--work DIR]
# env:   BENCH_DEVICES (e2e devices, default 10000), BENCH_PROGRAMMERS (2),
#        BENCH_SOCKETS (4), BENCH_CRYPTO_DEVICES (300),
#        BENCH_LEDGER_ROWS (large ledger, default 1000000), BENCH_LEDGER_BUDGET
#        (seconds the large prefill's inserts may take, default 45: with its
#        commit and fsync the prefill stays near one minute), BENCH_FW_ROUNDS (5),
#        BENCH_CERT_SECONDS (length of the paced latency run, default 10),
#        BENCH_FLOOD_SECONDS (each flood run, default 25)
# Sections: crypto ceiling (in-process), end to end on the local stack, peak
# RSS, certificate latency at half the saturating rate (cloud_bench_cert
# --paced), the offline lease (cloud_bench_lease) and 60 s WAN cuts
# (test_wan_cut.sh, and through a site's bridge test_sites_wan_cut.sh, issue 15), firmware delivery to 8 programmers (bench_fw_delivery), ledger
# scaling (bench_ledger_scaling), the cloud's memory and a programmer's latency
# under a garbage flood from one identity (cloud_bench_flood). Prints `name value unit` lines and writes the
# same figures as JSON to FILE (default bench/results.json); a figure that
# could not be measured is null, with a note saying why.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
BIN= OUT="$ROOT/bench/results.json" WORK=
while (($#)); do
    case $1 in
    --bin) BIN=$2 ;;
    --out) OUT=$2 ;;
    --work) WORK=$2 ;;
    *) echo "bench: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
[[ -n "$BIN" ]] || { echo "bench: need --bin" >&2; exit 2; }
DEVICES=${BENCH_DEVICES:-10000}
PROGRAMMERS=${BENCH_PROGRAMMERS:-2}
SOCKETS=${BENCH_SOCKETS:-4}
CRYPTO_DEVICES=${BENCH_CRYPTO_DEVICES:-300}
LEDGER_ROWS=${BENCH_LEDGER_ROWS:-1000000}
LEDGER_BUDGET=${BENCH_LEDGER_BUDGET:-45}
FW_ROUNDS=${BENCH_FW_ROUNDS:-5}
CERT_SECONDS=${BENCH_CERT_SECONDS:-10}
for n in "$DEVICES" "$PROGRAMMERS" "$SOCKETS" "$CRYPTO_DEVICES" "$LEDGER_ROWS" "$LEDGER_BUDGET" \
    "$FW_ROUNDS" "$CERT_SECONDS"; do
    [[ "$n" =~ ^[1-9][0-9]*$ ]] || { echo "bench: '$n' is not a positive number" >&2; exit 2; }
done
((FW_ROUNDS <= 16 && CERT_SECONDS <= 120)) || { echo "bench: BENCH_FW_ROUNDS <= 16, BENCH_CERT_SECONDS <= 120" >&2; exit 2; }
CORES=$(nproc)
WORK=${WORK:-$(mktemp -d /tmp/nusec-bench.XXXXXX)}
mkdir -p "$WORK"
export TMPDIR="$WORK" # the bench programs' stacks live in the work dir
BENCH_T0=$(date +%s)

# Figures in order: name value unit (value "null" = not measured).
names=() values=() units=() notes=()
emit() { # name value unit; anything but a number is recorded as null
    local v=$2
    [[ "$v" =~ ^-?[0-9]+(\.[0-9]+)?$ ]] || v=null
    names+=("$1") values+=("$v") units+=("$3")
    printf '%-34s %s %s\n' "$1" "$v" "$3"
}
nulls() { local n; for n in "$@"; do emit "$n" null ""; done; }
note() { notes+=("$1"); printf 'note: %s\n' "$1"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.3f", a / b; else print "null" }'; }
# run_bench BASE CMD...: CMD's `name value unit` lines to BASE.txt, its
# stderr to BASE.log. Fails when CMD fails.
run_bench() {
    local base=$1
    shift
    timeout 900 "$@" >"$base.txt" 2>"$base.log"
}
emit_all() { # BASE: every line of BASE.txt as a figure
    local n v u
    while read -r n v u; do
        if [[ -n "$n" && -n "$v" ]]; then emit "$n" "$v" "$u"; fi
    done <"$1.txt"
}
fig() { awk -v n="$2" '$1 == n { print $2; exit }' "$1.txt"; } # BASE NAME -> value
rows_label() { # 10000 -> 10k, 1000000 -> 1m, 123456 -> 123k
    awk -v n="$1" 'BEGIN { if (n >= 1000000 && n % 1000000 == 0) printf "%dm", n / 1000000;
        else if (n >= 1000) printf "%dk", int(n / 1000); else printf "%d", n }'
}

# --- 1. crypto ceiling, in-process -------------------------------------------
echo "== crypto ceiling: $CRYPTO_DEVICES devices on one thread, x $CORES cores"
"$BIN/nusec" pki init --dir "$WORK/pki-state" >/dev/null
"$BIN/bench_crypto_ceiling" "$WORK/pki-state" "$CRYPTO_DEVICES" "$CORES" >"$WORK/crypto.txt"
while read -r n v u; do emit "$n" "$v" "$u"; done <"$WORK/crypto.txt"
ceiling=$(awk '$1 == "crypto_ceiling_devices_per_s" { print $2 }' "$WORK/crypto.txt")
note "crypto_ceiling_devices_per_s = nproc ($CORES) x devices / seconds of doing every stage once per device, each stage on a thread of its role (chip, cloud, programmer) so that wolfSSL's per-thread ECC caches behave as in the real system (linear scaling assumed: an upper bound). It leaves out what the real programmer also does: its own CSR check, the certificate chain check, two SHA-256 passes over the image."

# --- 1b. end-to-end message signatures: CPU per device ------------------------
echo "== message signatures: sign (programmer) and verify (cloud), per message and per device"
"$BIN/bench_msgsig" "$WORK/pki-state" 2000 >"$WORK/msgsig.txt"
while read -r n v u; do emit "$n" "$v" "$u"; done <"$WORK/msgsig.txt"
note "msgsig_*: CPU time (one thread) of the end-to-end signatures (nu_msgsig). Per device: the programmer signs 2 messages (cert.request, device.provisioned); the cloud checks 2 (certificate PEM to key, ECDSA verify, replay window; the ledger read of the certificate not counted) and signs 1 reply."

# --- 2. end to end on the real stack -----------------------------------------
echo "== e2e: $DEVICES devices, $PROGRAMMERS programmers x $SOCKETS sockets, flash time 0, simulated chips not fsync'd"
DIR="$WORK/e2e"
nusec() { "$BIN/nusec" "$@" --dir "$DIR"; }
rm -rf "$DIR"
mkdir -p "$DIR"
trap 'nusec stack down >/dev/null 2>&1 || true' EXIT
# Simulator costs are left out, as flash time is: the simulated chips' files
# are written in the same order but not fsync'd (they still survive a
# programmer crash; only a host power cut could lose them). The KeyStore's
# quota counter and the ledger keep every fsync.
NUSEC_TARGET_SYNC=none nusec stack up --programmers "$PROGRAMMERS" --sockets "$SOCKETS" \
    --devices "$DEVICES" --flash-us-per-kib 0 >"$WORK/stack-up.log" 2>&1
head -c 65536 /dev/urandom >"$DIR/bench-app.bin"
nusec firmware sign --in "$DIR/bench-app.bin" --name bench-app --version 1.0.0 >/dev/null
progs=()
for ((i = 1; i <= PROGRAMMERS; i++)); do progs+=(--programmer "prog-$i"); done
mkdir -p "$DIR/packages"
job=$(nusec job create --firmware bench-app-1.0.0 --quota "$DEVICES" "${progs[@]}" \
    --expires 2h --out "$DIR/packages" | tail -n 1)
nusec package import "$DIR"/packages/*.nspkg >/dev/null
# The broker's share: CPU and persistence snapshots (broker/README.md, Persistence).
broker_pid=$(cat "$DIR/run/broker.pid" 2>/dev/null)
broker_log=$(sed -n 's/^log_dest file //p' "$DIR/broker/mosquitto.conf")
broker_cpu() { awk -v t="$(getconf CLK_TCK)" '{ printf "%.3f", ($14 + $15) / t }' "/proc/$broker_pid/stat" 2>/dev/null || echo 0; }
broker_saves() { local n; n=$(grep -c "Saving in-memory" "$broker_log" 2>/dev/null); echo "${n:-0}"; }
bcpu0=$(broker_cpu) bsaves0=$(broker_saves)
t0=$(date +%s.%N)
e2e_rc=0
nusec production start --job "$job" --wait >"$WORK/production.log" 2>&1 </dev/null || e2e_rc=$?
t1=$(date +%s.%N)
bcpu1=$(broker_cpu) bsaves1=$(broker_saves)
certs=$(sqlite3 "$DIR/cloud/ledger.db" "select count(*) from certificates where job_id='$job'")
# The ledger's own clock: first to last certificate issued.
span_ms=$(sqlite3 "$DIR/cloud/ledger.db" \
    "select max(issued_at_ms) - min(issued_at_ms) from certificates where job_id='$job'" 2>/dev/null || echo 0)
wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }')
((e2e_rc == 0 && certs == DEVICES)) || note "e2e: production exited $e2e_rc with $certs/$DEVICES certificates (see $WORK/production.log)"
e2e=$(awk -v n="$certs" -v s="$wall" 'BEGIN { printf "%.1f", n / s }')
emit e2e_devices "$certs" devices
emit e2e_seconds "$wall" s
emit e2e_devices_per_s "$e2e" devices/s
[[ "$span_ms" =~ ^[0-9]+$ ]] && ((span_ms > 0)) &&
    emit e2e_ledger_span_devices_per_s "$(awk -v n="$certs" -v ms="$span_ms" 'BEGIN { printf "%.1f", n * 1000 / ms }')" devices/s
emit e2e_over_ceiling "$(ratio "$e2e" "$ceiling")" ratio
note "e2e_devices_per_s = certificates / wall time of 'nusec production start --wait' ($DEVICES devices, $PROGRAMMERS x $SOCKETS, stack up not counted; simulated flash time 0 and simulated chips not fsync'd: NUSEC_TARGET_SYNC=none)"
if ((certs > 0)); then
    emit e2e_broker_cpu_ms_per_device "$(awk -v a="$bcpu0" -v b="$bcpu1" -v n="$certs" 'BEGIN { printf "%.2f", (b - a) * 1000 / n }')" ms
    emit e2e_broker_saves_per_device "$(awk -v a="$bsaves0" -v b="$bsaves1" -v n="$certs" 'BEGIN { printf "%.2f", (b - a) / n }')" snapshots
    note "e2e_broker_*: mosquitto's CPU (user + system) and persistence snapshots (autosave_on_changes, broker/mosquitto.conf.in) during the e2e production, per certificate"
fi

# --- 3. peak RSS of the stack's processes, before it goes down ----------------
rss_of() { # pidfile -> VmHWM in KiB, or null
    local pid
    pid=$(cat "$1" 2>/dev/null) || { echo null; return; }
    awk '/^VmHWM:/ { print $2; f = 1 } END { if (!f) print "null" }' "/proc/$pid/status" 2>/dev/null || echo null
}
ls "$DIR/run" >"$WORK/pidfiles.txt" 2>/dev/null || true
for role in cloud broker; do
    f=$(ls "$DIR"/run/*"$role"*.pid 2>/dev/null | head -n 1 || true)
    emit "peak_rss_${role}_kib" "$( [[ -n "$f" ]] && rss_of "$f" || echo null)" KiB
done
f=$(ls "$DIR"/run/*prog*.pid 2>/dev/null | head -n 1 || true)
emit peak_rss_programmer_kib "$( [[ -n "$f" ]] && rss_of "$f" || echo null)" KiB
# --- 3b. broker restart: seconds until the cloud answers again, nobody helping --
# SIGTERM (the broker saves its sessions, so the cloud resumes a session that
# lost its $share subscription), start it again, then time OEM requests.
resume=null
bpid=$(cat "$DIR/run/broker.pid" 2>/dev/null || true)
if [[ -n "$bpid" ]] && kill -TERM "$bpid" 2>/dev/null; then
    while kill -0 "$bpid" 2>/dev/null; do sleep 0.05; done
    "${NUSEC_MOSQUITTO:-/usr/sbin/mosquitto}" -c "$DIR/broker/mosquitto.conf" >>"$WORK/broker-restart.log" 2>&1 &
    echo $! >"$DIR/run/broker.pid"
    r0=$(date +%s.%N)
    for ((i = 0; i < 300; i++)); do
        if nusec job list >/dev/null 2>&1; then
            resume=$(awk -v a="$r0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.2f", b - a }')
            break
        fi
        sleep 0.1
    done
fi
emit broker_restart_resume_s "$resume" s
note "broker_restart_resume_s = from starting mosquitto again after a SIGTERM to the first answered 'nusec job list' (an OEM request served by the cloud), nobody restarting the cloud"

# --- 3c. the broker adopting the cloud's lists (issue 13) --------------------------
# What the leader agent does when a programmer is revoked: a retained
# revocation list on nusec/v1/cloud/lists/revoked from a cloud identity. The
# plugin parses it, merges it into its file (lock, atomic replace) and
# reloads, on the broker's one thread. A list of LISTS_BASE made-up
# identities first, then LISTS_ROUNDS lists each revoking one more, timed
# (last in the stack's life: they stay revoked).
LISTS_BASE=10000 LISTS_ROUNDS=5
broker_pid=$(cat "$DIR/run/broker.pid" 2>/dev/null || true)
ep=$(cat "$DIR/broker/endpoint" 2>/dev/null || true)
adopted_n() { grep -c "adopted list nusec/v1/cloud/lists/revoked" "$broker_log" 2>/dev/null || true; }
lists_ok=-1 lists_wall=0 lists_cpu=0
for ((r = 0; r <= LISTS_ROUNDS; r++)); do
    awk -v n="$LISTS_BASE" -v r="$r" 'BEGIN { print "# bench"; for (i = 1; i <= n; i++) printf "bench-revoked-%d\n", i
        for (i = 1; i <= r; i++) printf "bench-new-%d\n", i }' >"$WORK/revoked.txt"
    before=$(adopted_n) c0=$(broker_cpu) t0=$(date +%s.%N)
    mosquitto_pub -V mqttv5 -h "${ep%:*}" -p "${ep##*:}" --cafile "$DIR/pki/chain.pem" \
        --cert "$DIR/pki/clients/cloud.crt" --key "$DIR/pki/clients/cloud.key" -i cloud:bench \
        -q 1 -r -t nusec/v1/cloud/lists/revoked -f "$WORK/revoked.txt" 2>>"$WORK/lists.log" || break
    for ((i = 0; i < 500; i++)); do (($(adopted_n) > before)) && break; sleep 0.01; done
    (($(adopted_n) > before)) || break
    t1=$(date +%s.%N) c1=$(broker_cpu)
    if ((r > 0)); then
        lists_wall=$(awk -v s="$lists_wall" -v a="$t0" -v b="$t1" 'BEGIN { printf "%.4f", s + b - a }')
        lists_cpu=$(awk -v s="$lists_cpu" -v a="$c0" -v b="$c1" 'BEGIN { printf "%.4f", s + b - a }')
    fi
    lists_ok=$r
done
if ((lists_ok == LISTS_ROUNDS)); then
    emit lists_adopt_ms "$(awk -v s="$lists_wall" -v n="$lists_ok" 'BEGIN { printf "%.1f", s * 1000 / n }')" ms
    emit lists_adopt_broker_cpu_ms "$(awk -v s="$lists_cpu" -v n="$lists_ok" 'BEGIN { printf "%.1f", s * 1000 / n }')" ms
    emit lists_adopt_identities "$LISTS_BASE" identities
    note "lists_adopt_*: the broker adopting a revocation list of lists_adopt_identities identities that revokes one more, published retained by a cloud identity as the leader agent does ($LISTS_ROUNDS rounds, averaged): wall ms from mosquitto_pub's start (its TLS connect included) to the plugin's 'adopted' log line, and the broker's CPU ms meanwhile (parse, merge into the file under its lock, atomic replace with fsync, reload); the broker serves no one else while it adopts. A list file is capped at 1 MiB (NU_BROKERLIST_FILE_MAX, ~45k identities); a larger one is refused and the old kept"
else
    nulls lists_adopt_ms lists_adopt_broker_cpu_ms lists_adopt_identities
    note "lists: the broker adopted $((lists_ok + 1)) of $((LISTS_ROUNDS + 1)) revocation lists (see $WORK/lists.log and $broker_log)"
fi
nusec stack down >/dev/null 2>&1 || true
trap - EXIT
rm -rf "$DIR/targets" # the simulated targets' flash: ~100 KiB a device, not needed after

# --- 4. certificate latency at half the saturating rate --------------------------
CERT_FIGS=(cert_saturated_per_s cert_paced_target_per_s cert_paced_achieved_per_s
    cert_paced_requests cert_paced_failed cert_latency_p50_ms cert_latency_p99_ms
    cert_latency_max_ms cert_latency_send_p50_ms cert_latency_send_p99_ms)
echo "== cert latency: cloud_bench_cert --paced (8 clients saturate, then open loop at half that rate, ${CERT_SECONDS}s)"
if run_bench "$WORK/cert" "$BIN/cloud_bench_cert" --paced 8 100 "$CERT_SECONDS"; then
    emit_all "$WORK/cert"
    p50=$(fig "$WORK/cert" cert_latency_p50_ms) p99=$(fig "$WORK/cert" cert_latency_p99_ms)
    sat=$(fig "$WORK/cert" cert_saturated_per_s)
    note "cert latency: the saturating rate is 8 programmers sending back to back (closed loop); then an open-loop schedule at half that rate (request i due at t0 + i/rate, 8 programmers take them in order), latency measured from the DUE time to the answer (so waiting for a free sender counts: no coordinated omission); cert_latency_send_* is from the actual send. The cloud runs the configuration 'nusec pki init' writes (its defaults), signing in SoftHSM2."
else
    p50= p99= sat=
    nulls "${CERT_FIGS[@]}"
    note "cert latency: cloud_bench_cert --paced failed (see $WORK/cert.log)"
fi

# --- 4b. offline lease (issue 15): offline issuance vs online, reconciliation ---
LEASE_FIGS=(lease_offline_issue_per_s lease_online_cert_per_s lease_reconcile_per_s lease_supersede_per_s lease_units)
echo "== offline lease: cloud_bench_lease (512 units)"
if run_bench "$WORK/lease" "$BIN/cloud_bench_lease" 512; then
    emit_all "$WORK/lease"
    note "lease_offline_issue_per_s: device certificates one programmer signs itself under an offline lease (nu_x509_issue with the line-CA key; a software P-256 key stands in for the KeyStore here, fresh device key each, one core); lease_online_cert_per_s: cert.request through the cloud from one programmer back to back in the same run; lease_reconcile_per_s: those offline certificates uploaded in lease.upload requests of 64 and recorded by the cloud (chain checked with OpenSSL at issuance time, one ledger transaction each); lease_supersede_per_s: the same for 100 offline certificates of chips the cloud had certified online before (requests given up for the lease), each upload also revoking the online certificate and handing its quota unit over (the supersede step)."
else
    nulls "${LEASE_FIGS[@]}"
    note "offline lease: cloud_bench_lease failed (see $WORK/lease.log)"
fi

echo "== offline lease, the programmer's path: test_lease_offline.sh (lease 10, 2 programmers x 2 sockets)"
if "$ROOT/tests/integration/programmer/test_lease_offline.sh" "$BIN" 10 10000 60 >"$WORK/lease-prog.txt" 2>&1; then
    for n in lease_prog_offline_cert_per_s lease_prog_online_cert_per_s; do
        emit "$n" "$(fig "$WORK/lease-prog" "$n")" certs/s
    done
    note "lease_prog_*: one nusec-programmer (prog-1, 2 sockets, ~0.65 s simulated flash per chip) in one run of test_lease_offline.sh: certificates per second while it issued offline under its lease (line-CA key in its KeyStore, counter + sealed journal per chip), and online after the link came back (cert.request through the cloud); that script's outside checks passed"
else
    nulls lease_prog_offline_cert_per_s lease_prog_online_cert_per_s
    note "offline lease: test_lease_offline.sh failed (see $WORK/lease-prog.txt)"
fi

# --- 4c. WAN cut: the cloud's link, then a site's bridge, cut for 60 s mid-production (issue 15)
echo "== WAN cut: test_wan_cut.sh with a 60 s outage"
if "$ROOT/tests/integration/programmer/test_wan_cut.sh" "$BIN" 60 >"$WORK/wan.txt" 2>&1; then
    wan=$(awk '$1 == "resume_seconds_after_restore" { print $NF }' "$WORK/wan.txt")
    emit wan_resume_after_60s_s "${wan:-null}" s
    emit wan_resume_after_short_s "$(awk '$1 == "resume_seconds_after_restore" { print $2 }' "$WORK/wan.txt")" s
    note "wan_resume_*: the cloud agent's TCP link to the broker cut (a relay) mid-production, then restored; seconds from the restore to the next certificate in the ledger (short cut ~5 s, long cut 60 s); test_wan_cut.sh's outside checks passed"
    emit wan_cut_drain_max_s "$(awk '$1 == "cut_drain_seconds" { m = 0; for (i = 2; i <= NF; i++) if ($i > m) m = $i; print m }' "$WORK/wan.txt")" s
    emit wan_cloud_puback_timeouts "$(awk '$1 == "cloud_puback_timeouts" { print $2 }' "$WORK/wan.txt")" count
    note "wan_cut_drain_max_s: longest time, over the cuts, from a cut to the cloud's last word on a reply or event it held at the cut (dropped at once since issue 15; before, each waited out a 10 s PUBACK timeout: wan_cloud_puback_timeouts counts those left)"
else
    nulls wan_resume_after_60s_s wan_resume_after_short_s wan_cut_drain_max_s wan_cloud_puback_timeouts
    note "WAN cut: test_wan_cut.sh failed (see $WORK/wan.txt)"
fi
echo "== WAN cut at a site: test_sites_wan_cut.sh, the bridge's link cut for 60 s"
if "$ROOT/tests/integration/sites/test_sites_wan_cut.sh" "$BIN" 60 >"$WORK/wan_sites.txt" 2>&1; then
    emit wan_sites_resume_after_60s_s "$(awk '$1 == "resume_seconds_after_restore" { print $NF }' "$WORK/wan_sites.txt")" s
    emit wan_sites_resume_after_short_s "$(awk '$1 == "resume_seconds_after_restore" { print $2 }' "$WORK/wan_sites.txt")" s
    emit wan_sites_bridge_back_after_60s_s "$(awk '$1 == "bridge_back_seconds" { print $NF }' "$WORK/wan_sites.txt")" s
    note "wan_sites_*: nusec stack up --sites 1, the site broker's bridge to the cloud broker through a relay cut mid-production (short ~7 s, then 60 s; refused while cut), station and programmers at the site; seconds from the restore to the bridge's next connection and to the next certificate in the ledger (the bridge redials with restart_timeout 2 30, the programmers' retries back off to 10 s); test_sites_wan_cut.sh's outside checks passed"
else
    nulls wan_sites_resume_after_60s_s wan_sites_resume_after_short_s wan_sites_bridge_back_after_60s_s
    note "WAN cut at a site: test_sites_wan_cut.sh failed (see $WORK/wan_sites.txt)"
fi

# --- 5. firmware delivery to 8 programmers at once -----------------------------
FW_FIGS=(fw_delivery_mb_per_s fw_delivery_1prog_mb_per_s fw_crypto_aes_gcm_sha256_mb_per_s
    fw_delivery_over_crypto fw_cloud_cpu_ms_per_mib fw_broker_cpu_ms_per_mib)
echo "== firmware delivery: bench_fw_delivery, 1 MiB image, 8 programmers at once, $FW_ROUNDS rounds"
if run_bench "$WORK/fw" "$BIN/bench_fw_delivery" 8 "$FW_ROUNDS" 1024; then
    emit_all "$WORK/fw"
    fw=$(fig "$WORK/fw" fw_delivery_mb_per_s) fw_ratio=$(fig "$WORK/fw" fw_delivery_over_crypto)
    fw_crypto=$(fig "$WORK/fw" fw_crypto_aes_gcm_sha256_mb_per_s)
    note "fw_delivery_mb_per_s: median of $FW_ROUNDS rounds (the first cold) of 8 connected programmers downloading a signed 1 MiB image at once over mTLS mosquitto from nusec-cloud (firmware.manifest, then firmware.chunk one at a time as pg_firmware.c does), each chunk AES-256-GCM decrypted and checked, the image's SHA-256 checked; MB = 10^6 bytes of image delivered, all programmers together. fw_crypto_aes_gcm_sha256_mb_per_s: AES-256-GCM of the same image in the same chunks + SHA-256 of it on one core in the same process (the faster of before/after); fw_delivery_over_crypto = the two divided."
else
    fw= fw_ratio= fw_crypto=
    nulls "${FW_FIGS[@]}"
    note "firmware delivery: bench_fw_delivery failed (see $WORK/fw.log)"
fi

# --- 6. ledger scaling: issuance with a small vs a large ledger ---------------------
echo "== ledger scaling: bench_ledger_scaling, 10000 vs up to $LEDGER_ROWS certificate rows (prefill inserts stop after ${LEDGER_BUDGET}s)"
mkdir -p "$WORK/ledger"
if run_bench "$WORK/ledger" "$BIN/bench_ledger_scaling" "$WORK/ledger" 10000 "$LEDGER_ROWS" 4000 32 \
    "$LEDGER_BUDGET"; then
    rows_s=$(fig "$WORK/ledger" ledger_rows_small) rows_l=$(fig "$WORK/ledger" ledger_rows_large)
    ks=$(rows_label "$rows_s") kl=$(rows_label "$rows_l")
    emit "ledger_rows_$ks" "$rows_s" rows
    emit "ledger_rows_$kl" "$rows_l" rows
    emit "ledger_prefill_${kl}_s" "$(fig "$WORK/ledger" ledger_prefill_large_s)" s
    emit "ledger_issue_${ks}_per_s" "$(fig "$WORK/ledger" ledger_issue_small_per_s)" certs/s
    emit "ledger_issue_${kl}_per_s" "$(fig "$WORK/ledger" ledger_issue_large_per_s)" certs/s
    lscale=$(fig "$WORK/ledger" ledger_scaling) lname="ledger_scaling_${ks}_vs_${kl}"
    emit "$lname" "$lscale" ratio
    emit "ledger_only_${ks}_per_s" "$(fig "$WORK/ledger" ledger_only_small_per_s)" certs/s
    emit "ledger_only_${kl}_per_s" "$(fig "$WORK/ledger" ledger_only_large_per_s)" certs/s
    emit "ledger_only_scaling_${ks}_vs_${kl}" "$(fig "$WORK/ledger" ledger_only_scaling)" ratio
    if ((rows_l < LEDGER_ROWS)); then
        note "ledger scaling: the $LEDGER_ROWS-row prefill did not fit in ${LEDGER_BUDGET}s of inserts here; it stopped at $rows_l rows, hence the name $lname"
    fi
    note "$lname = issuance rate with $rows_l certificate rows in the ledger / with $rows_s, in the same run (4000 new certificates each, 6 alternating rounds, group commits of 32 through cloud_ledger_issue_batch as the cloud workers do, WAL + synchronous=FULL). Signer: a P-256 key in software (certificate built and signed as the cloud's callback does), not the HSM, so the ledger is not hidden behind SoftHSM2; ledger_only_* leave the signer's time out. Prefill: the ledger API makes the file, programmers and jobs; the certificate rows (certificate, idempotency-cache row with its stored answer, cert.issued event in the real hash chain, real-sized PEM and answer, random serials/keys) go in as ONE SQL transaction with the ledger's own INSERT statements, because the API fills only ~5000 rows/s here; same schema and indexes, so issuance's lookups hit the same B-trees at the same depth; cloud_ledger_verify accepts the small ledger filled the same way."
else
    lscale= lname=ledger_scaling
    emit ledger_scaling null ratio
    note "ledger scaling: bench_ledger_scaling failed (see $WORK/ledger.log)"
fi
rm -f "$WORK"/ledger/*.db "$WORK"/ledger/*.db-wal "$WORK"/ledger/*.db-shm # up to ~2.5 GB

# --- 7. programmer core on the Cortex-M33 (issue 11) ------------------------------
# Flash from the cross build; stacks measured on the emulated M33 (qemu
# mps2-an505) by the m33 test runners (painted stacks read back), RAM total
# for 8 sockets from those measured figures.
echo "== programmer core on the Cortex-M33: cross build + m33 runners under qemu"
M33_FIGS=(m33_core_flash_bytes m33_image_flash_bytes m33_stack_measured_worker_bytes
    m33_stack_measured_control_bytes m33_ram_measured_total_bytes)
mkdir -p "$WORK/m33"
m33_ok=1
for t in programmer_test_core_m33 programmer_test_m33_target; do
    M33_REPORT="$WORK/m33/m33_report_$t.txt" timeout 900 "$BIN/$t" >"$WORK/m33/$t.log" 2>&1 || m33_ok=0
done
if ((m33_ok)) && "$ROOT/programmer-fw/cross/check.sh" "$WORK/m33/cross" "$WORK/m33" >"$WORK/m33/check.log" 2>&1; then
    while read -r n v u; do emit "$n" "$v" "$u"; done <"$WORK/m33/cross/figures.txt"
    note "m33_*: programmer core for the NuLink3 (Cortex-M33, arm-none-eabi-gcc -Os, 8 sockets). Flash = code of the core (m33_core_flash_bytes) and of an image with the newlib-nano parts it uses (HAL left out). Stacks: static = stack.py over GCC call graphs (core only; HAL ops and libc not counted); measured = deepest painted word after test_core.c and an 8-socket production ran on qemu mps2-an505 (includes the test link's forwarding HAL and newlib's vsnprintf). m33_ram_measured_total_bytes = data + bss (struct pg_core) + measured control stack + 8 x measured worker stack; goal 65536 (64 KiB). The HAL's own RAM (transport/TLS, crypto engine) is not in it."
else
    nulls "${M33_FIGS[@]}"
    note "m33: the runners or the cross build failed (see $WORK/m33/*.log)"
fi

# --- 8. HSM-signed certificates per second: SoftHSM2 and a TPM 2.0, same run ----------
HSM_SECONDS=${BENCH_HSM_SECONDS:-5}
echo "== HSM: device certificates signed by the Device CA key, ${HSM_SECONDS}s each, SoftHSM2 then TPM 2.0 (swtpm + tpm2-abrmd + tpm2-pkcs11)"
if run_bench "$WORK/hsm-soft" "$BIN/bench_hsm_certs" "$WORK/pki-state" 2 "$HSM_SECONDS" hsm_softhsm; then
    emit_all "$WORK/hsm-soft"
else
    nulls hsm_softhsm_certs_per_s hsm_softhsm_sign_ms
fi
tpm_rate=
# shellcheck source=../tests/integration/pki/tpm_token.sh
if source "$ROOT/tests/integration/pki/tpm_token.sh" &&
    tpm_token_up "$WORK/tpm" bench-tpm bench-so-pin bench-user-pin >"$WORK/tpm-setup.log" 2>&1; then
    printf 'bench-user-pin' >"$WORK/tpm/pin" && chmod 600 "$WORK/tpm/pin"
    if "$BIN/nusec" pki init --dir "$WORK/tpm-state" --pkcs11-module "$TPM_MODULE"         --token-label bench-tpm --pin-file "$WORK/tpm/pin"         --module-env "TPM2_PKCS11_TCTI=$TPM_TCTI" --module-env "TPM2_PKCS11_STORE=$TPM_STORE"         --module-env "DBUS_SESSION_BUS_ADDRESS=$DBUS_SESSION_BUS_ADDRESS"         >"$WORK/tpm-init.log" 2>&1 &&
        run_bench "$WORK/hsm-tpm" "$BIN/bench_hsm_certs" "$WORK/tpm-state" 2 "$HSM_SECONDS" hsm_tpm; then
        emit_all "$WORK/hsm-tpm"
        tpm_rate=$(fig "$WORK/hsm-tpm" hsm_tpm_certs_per_s)
    else
        nulls hsm_tpm_certs_per_s hsm_tpm_sign_ms
        note "hsm tpm: pki init or bench_hsm_certs failed on the TPM (see $WORK/tpm-init.log, $WORK/hsm-tpm.log)"
    fi
    tpm_token_down "$WORK/tpm"
    unset DBUS_SESSION_BUS_ADDRESS TPM2TOOLS_TCTI
else
    nulls hsm_tpm_certs_per_s hsm_tpm_sign_ms
    note "hsm tpm: no TPM token (swtpm / tpm2-abrmd / tpm2_ptool, see $WORK/tpm-setup.log)"
fi
tpms=$(awk -v r="${tpm_rate:-0}" 'BEGIN { if (r > 0) { n = 2000 / r; printf "%d", (n == int(n)) ? n : int(n) + 1 } else print "null" }')
emit hsm_tpms_for_2000_per_s "$tpms" TPMs
note "hsm_*_certs_per_s: device certificates (X.509 built, ecdsa-with-SHA256 by the Device CA key in the HSM, every signature verified before use) per second, 2 threads sharing 2 sessions as the cloud's workers do, ${HSM_SECONDS}s each, the same run. SoftHSM2 signs in this process's CPU; the TPM is swtpm (a software TPM, so its figure is the TPM 2.0 command path through tpm2-abrmd and tpm2-pkcs11, not a TPM chip's speed) and tpm2-abrmd serialises commands. hsm_tpms_for_2000_per_s = ceil(2000 / hsm_tpm_certs_per_s): TPMs, each with its own PKI token and Device CA key (a TPM key cannot be shared), behind as many cloud agents, to sign 2,000 devices/s."

# --- 9. a flood of maximum-size garbage from one identity (issue 9) ------------------
FLOOD_SECONDS=${BENCH_FLOOD_SECONDS:-25}
[[ "$FLOOD_SECONDS" =~ ^[1-9][0-9]*$ ]] && ((FLOOD_SECONDS <= 600)) || { echo "bench: BENCH_FLOOD_SECONDS 1..600" >&2; exit 2; }
echo "== flood: cloud_bench_flood, ${FLOOD_SECONDS}s each: no flood; station (256 KiB to job.list + 4 MiB) before/after the broker's per-identity limits; station 80 KiB (the most the broker lets through); oem (4 MiB to firmware.sign) before/after"
# Each flood twice in the same run: "nolimit" is the broker as it was before
# broker/ratelimit.c (plugin_opt_rate_limit false, payload_max 256 KiB), then
# as it is now. The cloud runs with its defaults (fair queue) in every mode.
for mode in "0 station fair" "8 station nolimit" "8 station fair" "8 station fair 81920" \
    "8 oem nolimit" "8 oem fair"; do
    read -r threads who queue size <<<"$mode"
    base="$WORK/flood-$threads-$who"
    [[ "$queue" == fair ]] || base="$base-$queue"
    [[ -z "$size" ]] || base="$base-$size"
    if run_bench "$base" "$BIN/cloud_bench_flood" "$FLOOD_SECONDS" $threads $who $queue $size; then
        emit_all "$base"
    else
        emit_all "$base" 2>/dev/null || true
        note "flood ($threads threads as $who, $queue${size:+, $size bytes}): cloud_bench_flood failed or the cloud's VmHWM went over the bound (see $base.log)"
    fi
done
note "flood: ONE identity's FLOOD_THREADS (8) threads send garbage as requests back to back for ${FLOOD_SECONDS}s (station: 7 threads of 256 KiB to job.list, the most the broker let a station send before its per-identity limits, and one of 4 MiB; flood_80k_*: 7 threads of 80 KiB, the most the broker lets a station send now, which its byte rate then refuses; oem, the only role allowed 4 MiB: firmware.sign, DECODE or BUSY once it reaches the cloud). The flood threads run at nice 19 (an attacker's CPU is its own machine's; here they share the cores with the broker and the cloud). *_broker_cpu_pct / *_cloud_cpu_pct: their CPU share of one core during the flood. Meanwhile one programmer sends a cert.request for a new device every 50 ms, one at a time (latency from send to answer). *_cloud_rss_peak_kib samples VmRSS every 50 ms; *_cloud_vmhwm_kib is the kernel's high-water mark; the documented bound is *_cloud_rss_bound_kib (256 MiB), the bench fails a mode whose VmHWM exceeds it. noflood_* is the same measurement without a flood, on the machine as loaded as it was. nolimit_* is the same flood against the broker without its per-identity publish limits (plugin_opt_rate_limit false, payload_max 256 KiB: the broker before broker/ratelimit.c), the before figure of this run; the others run with the broker's defaults (payload 80 KiB, firmware.sign 4 MiB for an oem only; per identity 1000 msg/s burst 10000, 1 MiB/s burst 8 MiB (oem 1 MiB/s burst 16 MiB); broker/README.md). Cloud defaults in every mode: fair_queue 1, payload_max 64 KiB, identity_bytes_max 16 MiB, queue_bytes_max 96 MiB."

# --- 8. the ledger on PostgreSQL (issue 13) -------------------------------------
# The same ledger code on SQLite and on a PostgreSQL cluster started here
# (tests/integration/pg/pg_cluster.sh), 1 and 2 agent processes issuing in
# batches of 32 with a dummy signer: the database's share of issuance.
PG_SECONDS=${BENCH_PG_SECONDS:-10}
echo "== ledger on PostgreSQL: bench_ledger_pg, ${PG_SECONDS}s each (sqlite 1 agent, postgresql 1 and 2 agents; alone: bench/ledger_pg.sh)"
"$ROOT/bench/ledger_pg.sh" "$BIN" "$WORK/pgbench" "$PG_SECONDS" >"$WORK/pgbench.txt" 2>"$WORK/pgbench.log" || true
while read -r n v u; do
    if [[ "$n" == note: ]]; then note "$v $u"; elif [[ -n "$n" ]]; then emit "$n" "$v" "$u"; fi
done <"$WORK/pgbench.txt"

BENCH_S=$(($(date +%s) - BENCH_T0))
emit bench_seconds "$BENCH_S" s

# --- results.json -----------------------------------------------------------------
{
    printf '{\n  "machine": {"cores": %s, "kernel": "%s"},\n' "$CORES" "$(uname -r)"
    printf '  "config": {"e2e_devices": %s, "programmers": %s, "sockets": %s, "crypto_devices": %s,' \
        "$DEVICES" "$PROGRAMMERS" "$SOCKETS" "$CRYPTO_DEVICES"
    printf ' "ledger_rows": %s, "ledger_budget_s": %s, "fw_rounds": %s, "cert_seconds": %s},\n' \
        "$LEDGER_ROWS" "$LEDGER_BUDGET" "$FW_ROUNDS" "$CERT_SECONDS"
    printf '  "figures": {\n'
    for i in "${!names[@]}"; do
        sep=,
        ((i == ${#names[@]} - 1)) && sep=
        printf '    "%s": {"value": %s, "unit": "%s"}%s\n' "${names[$i]}" "${values[$i]}" "${units[$i]}" "$sep"
    done
    printf '  },\n  "note": ['
    for i in "${!notes[@]}"; do
        ((i)) && printf ','
        printf '\n    "%s"' "$(sed 's/\\/\\\\/g; s/"/\\"/g' <<<"${notes[$i]}")"
    done
    printf '\n  ]\n}\n'
} >"$OUT"
python3 -m json.tool "$OUT" >/dev/null 2>&1 || echo "bench: warning: $OUT is not valid JSON" >&2

echo
echo "== summary (work dir $WORK, whole bench ${BENCH_S}s)"
printf '  %-30s %s\n' "crypto ceiling" "$ceiling devices/s ($CORES cores)" \
    "e2e ($DEVICES devices)" "$e2e devices/s in ${wall}s" \
    "e2e / ceiling" "$(ratio "$e2e" "$ceiling") (goal >= 0.5)" \
    "cert saturating rate" "${sat:-null} certs/s (8 clients)" \
    "cert p50 / p99 at half that" "${p50:-null} / ${p99:-null} ms (goal p99 <= 5 ms)" \
    "fw delivery, 8 programmers" "${fw:-null} MB/s (crypto alone ${fw_crypto:-null} MB/s on one core)" \
    "fw delivery / crypto" "${fw_ratio:-null} (goal >= 0.1)" \
    "$lname" "${lscale:-null} (goal >= 0.9)" \
    "flood: cloud VmHWM station/oem" "$(fig "$WORK/flood-8-station" flood_cloud_vmhwm_kib 2>/dev/null || echo null) / $(fig "$WORK/flood-8-oem" flood_oem_cloud_vmhwm_kib 2>/dev/null || echo null) KiB (bound 262144)" \
    "flood: cert p99 none/station/80k/oem" "$(fig "$WORK/flood-0-station" noflood_cert_p99_ms 2>/dev/null || echo null) / $(fig "$WORK/flood-8-station" flood_cert_p99_ms 2>/dev/null || echo null) / $(fig "$WORK/flood-8-station-81920" flood_80k_cert_p99_ms 2>/dev/null || echo null) / $(fig "$WORK/flood-8-oem" flood_oem_cert_p99_ms 2>/dev/null || echo null) ms (goal p99 < 100 ms)" \
    "flood: p50/p99 before (nolimit)" "station $(fig "$WORK/flood-8-station-nolimit" nolimit_flood_cert_p50_ms 2>/dev/null || echo null) / $(fig "$WORK/flood-8-station-nolimit" nolimit_flood_cert_p99_ms 2>/dev/null || echo null) ms, oem $(fig "$WORK/flood-8-oem-nolimit" nolimit_flood_oem_cert_p50_ms 2>/dev/null || echo null) / $(fig "$WORK/flood-8-oem-nolimit" nolimit_flood_oem_cert_p99_ms 2>/dev/null || echo null) ms" \
    "flood: p50/p99 after (limits)" "station $(fig "$WORK/flood-8-station" flood_cert_p50_ms 2>/dev/null || echo null) / $(fig "$WORK/flood-8-station" flood_cert_p99_ms 2>/dev/null || echo null) ms, oem $(fig "$WORK/flood-8-oem" flood_oem_cert_p50_ms 2>/dev/null || echo null) / $(fig "$WORK/flood-8-oem" flood_oem_cert_p99_ms 2>/dev/null || echo null) ms" \
    "results" "$OUT"
printf '  %-30s %s\n' "offline / online issuance" "$(fig "$WORK/lease" lease_offline_issue_per_s 2>/dev/null || echo null) / $(fig "$WORK/lease" lease_online_cert_per_s 2>/dev/null || echo null) certs/s (one programmer)" \
    "lease reconciliation" "$(fig "$WORK/lease" lease_reconcile_per_s 2>/dev/null || echo null) certs/s uploaded, $(fig "$WORK/lease" lease_supersede_per_s 2>/dev/null || echo null) certs/s superseding online ones" \
    "resume after a 60 s WAN cut" "${wan:-null} s" \
    "broker adopts a 10k revoked list" "$( ((lists_ok == LISTS_ROUNDS)) && awk -v s="$lists_cpu" -v n="$lists_ok" 'BEGIN { printf "%.1f", s * 1000 / n }' || echo null) ms of broker CPU"
printf '  %-30s %s\n' "HSM-signed certs, SoftHSM2" "$(fig "$WORK/hsm-soft" hsm_softhsm_certs_per_s 2>/dev/null || echo null) certs/s" \
    "HSM-signed certs, TPM 2.0" "${tpm_rate:-null} certs/s" \
    "TPMs for 2,000 devices/s" "$tpms"
