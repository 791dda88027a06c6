#!/usr/bin/env bash
# ha_demo.sh — the failover scenario of issue 13 on loopback:
#   3 etcd members, 3 PostgreSQL 15 nodes under Patroni (synchronous_mode on),
#   the local stack (`nusec stack up --ledger URI`) with 2 cloud agents on a
#   multi-host libpq URI (target_session_attrs=read-write), a production of
#   a few thousand devices, and mid-production a SIGKILL of the Patroni
#   leader and of its postmaster.
#
# usage: ha_demo.sh --bin DIR [--dir DIR] [--devices N] [--programmers P]
#                   [--sockets S] [--kill-at FRACTION]
# Prints `name value` lines: certificates_acknowledged (devices locked with
# their certificate), certificates_in_new_leader, acknowledged_lost,
# quota_exact, failover_stall_s, audit_verify, and more.
# Exit: 0 nothing lost and the chain verifies, 1 a loss or a failed check,
# 2 usage or setup failure. Everything it started is stopped.
set -euo pipefail
prog=ha_demo
BIN= DIR= DEVICES=2000 PROGRAMMERS=4 SOCKETS=8 KILL_AT=0.3
while (($#)); do
    case $1 in
    --bin) BIN=$2 ;;
    --dir) DIR=$2 ;;
    --devices) DEVICES=$2 ;;
    --programmers) PROGRAMMERS=$2 ;;
    --sockets) SOCKETS=$2 ;;
    --kill-at) KILL_AT=$2 ;;
    -h | --help) sed -n '2,15p' "$0"; exit 0 ;;
    *) echo "$prog: unknown option $1" >&2; exit 2 ;;
    esac
    shift 2
done
[[ -n "$BIN" ]] || { echo "$prog: need --bin DIR" >&2; exit 2; }
PGBIN=${NUSEC_PGBIN:-/usr/lib/postgresql/15/bin}
for t in etcd patroni "$PGBIN/initdb" "$BIN/nusec" "$BIN/nusec-cloud"; do
    command -v "$t" >/dev/null || { echo "$prog: $t missing (apt-get install patroni etcd-server)" >&2; exit 2; }
done
DIR=${DIR:-$(mktemp -d /tmp/nusec-ha.XXXXXX)}
rm -rf "$DIR" && mkdir -p "$DIR" && chmod 0755 "$DIR"
DIR=$(cd "$DIR" && pwd)
STACK=$DIR/stack
say() { printf '%s: [%4ds] %s\n' "$prog" "$SECONDS" "$*" >&2; }
die() { say "FAILED: $*"; exit 2; }
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

declare -a etcd_pid=() pat_pid=() agent_pids=()
cleanup() {
    set +e
    for p in "${agent_pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    [[ -d "$STACK" ]] && "$BIN/nusec" stack down --dir "$STACK" >/dev/null 2>&1
    for p in "${pat_pid[@]}"; do kill -TERM "$p" 2>/dev/null; done
    sleep 2
    for n in 1 2 3; do
        [[ -f "$DIR/pg$n/data/postmaster.pid" ]] &&
            as_pg "$PGBIN/pg_ctl" -D "$DIR/pg$n/data" -m immediate stop >/dev/null 2>&1
    done
    for p in "${pat_pid[@]}" "${etcd_pid[@]}"; do kill -9 "$p" 2>/dev/null; done
    wait 2>/dev/null
}
trap cleanup EXIT

# ---- etcd: 3 members ---------------------------------------------------------
declare -a cport=() pport=()
for n in 1 2 3; do cport[n]=$(free_port); pport[n]=$(free_port); done
cluster="e1=http://127.0.0.1:${pport[1]},e2=http://127.0.0.1:${pport[2]},e3=http://127.0.0.1:${pport[3]}"
say "etcd: 3 members"
for n in 1 2 3; do
    etcd --name "e$n" --data-dir "$DIR/etcd$n" \
        --listen-client-urls "http://127.0.0.1:${cport[n]}" \
        --advertise-client-urls "http://127.0.0.1:${cport[n]}" \
        --listen-peer-urls "http://127.0.0.1:${pport[n]}" \
        --initial-advertise-peer-urls "http://127.0.0.1:${pport[n]}" \
        --initial-cluster "$cluster" --initial-cluster-state new \
        --initial-cluster-token "nusec-ha-$$" >"$DIR/etcd$n.log" 2>&1 &
    etcd_pid[n]=$!
done
ETCD_HOSTS="127.0.0.1:${cport[1]},127.0.0.1:${cport[2]},127.0.0.1:${cport[3]}"
for ((i = 0; i < 100; i++)); do
    ETCDCTL_API=3 etcdctl --endpoints "$ETCD_HOSTS" endpoint health >/dev/null 2>&1 && break
    sleep 0.3
done
ETCDCTL_API=3 etcdctl --endpoints "$ETCD_HOSTS" endpoint health >/dev/null 2>&1 || die "etcd"

# ---- PostgreSQL under Patroni: 3 nodes --------------------------------------
OWNER_PW=owner-$RANDOM$RANDOM AGENT_PW=agent-$RANDOM$RANDOM REPL_PW=repl-$RANDOM$RANDOM
declare -a pgport=() rport=()
for n in 1 2 3; do pgport[n]=$(free_port); rport[n]=$(free_port); done
for n in 1 2 3; do
    mkdir -p "$DIR/pg$n/run"
    cat >"$DIR/pg$n/node.yml" <<YML
scope: nusec-ha
namespace: /nusec/
name: pg$n
restapi:
  listen: 127.0.0.1:${rport[n]}
  connect_address: 127.0.0.1:${rport[n]}
etcd3:
  hosts: $ETCD_HOSTS
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    synchronous_mode: true
    postgresql:
      use_pg_rewind: true
      parameters:
        wal_log_hints: 'on'
        max_connections: 100
        shared_buffers: 32MB
  initdb:
  - encoding: UTF8
  - locale: C.UTF-8
  - data-checksums
  pg_hba:
  - local all all trust
  - host replication replicator 127.0.0.1/32 scram-sha-256
  - host all all 127.0.0.1/32 scram-sha-256
postgresql:
  listen: 127.0.0.1:${pgport[n]}
  connect_address: 127.0.0.1:${pgport[n]}
  data_dir: $DIR/pg$n/data
  bin_dir: $PGBIN
  pgpass: $DIR/pg$n/pgpass
  authentication:
    superuser: {username: nusec_owner, password: $OWNER_PW}
    replication: {username: replicator, password: $REPL_PW}
    rewind: {username: nusec_owner, password: $OWNER_PW}
  parameters:
    unix_socket_directories: '$DIR/pg$n/run'
    log_min_messages: warning
YML
    [[ $(id -u) == 0 ]] && chown -R postgres: "$DIR/pg$n"
    chmod 0700 "$DIR/pg$n"
done
say "patroni: 3 PostgreSQL nodes, synchronous_mode on"
for n in 1 2 3; do
    # exec: the pid written is patroni's own (the one the scenario kills).
    as_pg sh -c 'echo $$ >"$1/patroni.pid"; exec patroni "$1/node.yml"' sh "$DIR/pg$n" \
        >"$DIR/patroni$n.log" 2>&1 &
    for ((i = 0; i < 50; i++)); do [[ -s "$DIR/pg$n/patroni.pid" ]] && break; sleep 0.1; done
    pat_pid[n]=$(cat "$DIR/pg$n/patroni.pid")
    # The first node bootstraps alone, so it is the first leader.
    [[ $n == 1 ]] && for ((i = 0; i < 120; i++)); do
        curl -sf "http://127.0.0.1:${rport[1]}/leader" >/dev/null 2>&1 && break
        sleep 0.5
    done
done
leader_node() {
    local n
    for n in 1 2 3; do
        curl -sf -m 1 "http://127.0.0.1:${rport[n]}/leader" >/dev/null 2>&1 && { echo "$n"; return 0; }
    done
    return 1
}
for ((i = 0; i < 240; i++)); do
    sync=0
    for n in 1 2 3; do curl -sf -m 1 "http://127.0.0.1:${rport[n]}/sync" >/dev/null 2>&1 && sync=1; done
    ((sync)) && leader_node >/dev/null && break
    sleep 0.5
done
((sync)) || die "no leader with a synchronous standby (see $DIR/patroni*.log)"
patronictl -c "$DIR/pg1/node.yml" list 2>/dev/null | sed 's/^/    /' >&2 || true

# ---- the ledger: database, roles, schema -------------------------------------
HOSTS="127.0.0.1:${pgport[1]},127.0.0.1:${pgport[2]},127.0.0.1:${pgport[3]}"
ATTRS="target_session_attrs=read-write&connect_timeout=3"
OWNER_URI="postgresql://nusec_owner@$HOSTS/nusec?$ATTRS"
AGENT_URI="postgresql://nusec_agent@$HOSTS/nusec?$ATTRS"
export PGPASSFILE=$DIR/pgpass
umask 077
{ echo "*:*:*:nusec_owner:$OWNER_PW"; echo "*:*:*:nusec_agent:$AGENT_PW"; } >"$PGPASSFILE"
umask 022
psql_rw() { "$PGBIN/psql" -X -q -At "postgresql://nusec_owner@$HOSTS/${2:-nusec}?$ATTRS" -c "$1"; }
psql_rw "CREATE DATABASE nusec" postgres
psql_rw "CREATE ROLE nusec_agent LOGIN PASSWORD '$AGENT_PW'" postgres
"$BIN/nusec" ledger init --ledger "$OWNER_URI" --agent-role nusec_agent >/dev/null ||
    die "nusec ledger init"

# ---- the stack and a second agent --------------------------------------------
say "stack up: $PROGRAMMERS programmers x $SOCKETS sockets, $DEVICES devices, ledger $AGENT_URI"
"$BIN/nusec" stack up --dir "$STACK" --ledger "$AGENT_URI" --programmers "$PROGRAMMERS" \
    --sockets "$SOCKETS" --devices "$DEVICES" >"$DIR/stack-up.log" 2>&1 ||
    { tail -20 "$DIR/stack-up.log" >&2; die "stack up"; }
{ grep -v -E '^(instance|metrics_listen) *=' "$STACK/cloud/cloud.conf" || true
  echo "instance = 2"; echo "metrics_listen = off"; } >"$STACK/cloud/cloud-2.conf"
"$BIN/nusec-cloud" --dir "$STACK" --config "$STACK/cloud/cloud-2.conf" \
    --log "$STACK/logs/cloud-2.log" &
agent_pids+=($!)
nusec() { "$BIN/nusec" "$@" --dir "$STACK"; }
head -c 65536 /dev/urandom >"$DIR/app.bin"
nusec firmware sign --in "$DIR/app.bin" --name ha-app --version 1.0.0 >/dev/null
progs=()
for ((i = 1; i <= PROGRAMMERS; i++)); do progs+=(--programmer "prog-$i"); done
mkdir -p "$DIR/packages"
job=$(nusec job create --firmware ha-app-1.0.0 --quota "$DEVICES" "${progs[@]}" --expires 2h \
    --out "$DIR/packages" | tail -n 1)
nusec package import "$DIR"/packages/*.nspkg >/dev/null
q() { psql_rw "$1"; }
issued() { q "select issued from jobs where job_id = '$job'" 2>/dev/null || echo -1; }

# ---- production, and the leader's SIGKILL ------------------------------------
say "production of $DEVICES devices (job $job)"
t_start=$(date +%s.%N)
nusec production start --job "$job" --wait --interval 10 --timeout 1200 >"$DIR/production.log" 2>&1 &
prod=$!
kill_at=$(awk -v d="$DEVICES" -v f="$KILL_AT" 'BEGIN { printf "%d", d * f }')
until (($(issued) >= kill_at)); do
    kill -0 "$prod" 2>/dev/null || die "production ended before the failover (see $DIR/production.log)"
    sleep 0.5
done
old=$(leader_node) || die "no Patroni leader to kill"
postmaster=$(head -1 "$DIR/pg$old/data/postmaster.pid")
issued_at_kill=$(issued)
t_kill=$(date +%s.%N)
kill -9 "${pat_pid[old]}" "$postmaster"
say "SIGKILL of the Patroni leader pg$old (patroni ${pat_pid[old]}, postmaster $postmaster) at $issued_at_kill issued"
# The stall: from the kill to the first certificate committed on the new leader.
new=
deadline=$((SECONDS + 120))
while ((SECONDS < deadline)); do
    n=$(leader_node || true)
    if [[ -n "$n" && "$n" != "$old" ]] && (($(issued) > issued_at_kill)); then new=$n; break; fi
    sleep 0.1
done
t_resume=$(date +%s.%N)
[[ -n "$new" ]] || die "no new leader wrote within 120 s"
stall=$(awk -v a="$t_kill" -v b="$t_resume" 'BEGIN { printf "%.1f", b - a }')
say "pg$new leads; issuance resumed ${stall} s after the kill"
prod_rc=0
wait "$prod" || prod_rc=$?
t_end=$(date +%s.%N)
# Answers still in flight when --wait returns: let the ledger settle.
last=-2
for ((i = 0; i < 60; i++)); do now=$(issued); [[ $now == "$last" ]] && break; last=$now; sleep 1; done

# ---- what survived -----------------------------------------------------------
read -r certs uids job_issued < <(q "select count(*), count(distinct device_uid),
    (select issued from jobs where job_id = '$job') from certificates where job_id = '$job'" | tr '|' ' ')
# (uid, serial) of every locked device, in one pass (one process, not two per device).
python3 - "$STACK/targets" >"$DIR/acked.txt" <<'PY'
import glob, os, sys
from cryptography import x509
for state in glob.glob(os.path.join(sys.argv[1], "*", "state")):
    kv = dict(l.rstrip("\n").split("=", 1) for l in open(state) if "=" in l)
    if kv.get("state") != "locked":
        continue
    try:
        cert = x509.load_pem_x509_certificate(open(os.path.join(os.path.dirname(state), "cert.pem"), "rb").read())
        serial = format(cert.serial_number, "X")
    except Exception:
        serial = "none"
    print(kv.get("uid", "none"), serial)
PY
acked=$(wc -l <"$DIR/acked.txt")
# One query for all: acknowledged (uid, serial) pairs missing from the new leader.
lost=$("$PGBIN/psql" -X -q -At "$OWNER_URI" <<SQL
CREATE TEMP TABLE acked (uid text, serial text);
\\copy acked FROM '$DIR/acked.txt' WITH (FORMAT text, DELIMITER ' ')
SELECT count(*) FROM acked a WHERE NOT EXISTS (SELECT 1 FROM certificates c
  WHERE c.job_id = '$job' AND c.device_uid = decode(a.uid, 'hex')
    AND ltrim(upper(c.serial), '0') = ltrim(upper(a.serial), '0'));
SQL
)
verify=ok
nusec audit verify --ledger "$AGENT_URI" >"$DIR/verify.log" 2>&1 || verify=FAILED
exact=no
((job_issued == certs && certs == uids && certs <= DEVICES)) && exact=yes
prod_s=$(awk -v a="$t_start" -v b="$t_end" 'BEGIN { printf "%.1f", b - a }')
printf '%-28s %s\n' devices "$DEVICES" \
    patroni_leader_killed "pg$old" \
    patroni_new_leader "pg$new" \
    issued_at_kill "$issued_at_kill" \
    certificates_acknowledged "$acked" \
    certificates_in_new_leader "$certs" \
    acknowledged_lost "$lost" \
    issued_not_acknowledged "$((certs - acked))" \
    quota_exact "$exact" \
    failover_stall_s "$stall" \
    production_s "$prod_s" \
    production_exit "$prod_rc" \
    audit_verify "$verify"
rc=0
[[ $lost == 0 ]] || { say "LOSS: $lost acknowledged certificates are not in the new leader's ledger"; rc=1; }
[[ $exact == yes ]] || { say "quota not exact: issued $job_issued, certificates $certs, devices $uids"; rc=1; }
[[ $verify == ok ]] || { cat "$DIR/verify.log" >&2; rc=1; }
((acked > 0)) || { say "nothing was produced"; rc=1; }
exit $rc
