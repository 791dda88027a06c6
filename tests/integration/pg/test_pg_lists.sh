#!/usr/bin/env bash
# test_pg_lists.sh — the broker's lists over the bus, with the cloud agents on
# other "hosts" than the broker (issue 13).
#
#   test_pg_lists.sh BIN_DIR
#
# The local stack (`nusec stack up --ledger postgresql`) with its own cloud
# agent stopped; two nusec-cloud agents run on the same ledger from folders
# of their own (copies without the broker's lists: nothing they write to
# their DIR/broker reaches the broker). Everything the broker knows of the
# lists then comes from the retained messages the agents publish and the
# plugin adopts (plugin_opt_adopt_lists):
#   1. the leader publishes the serial list; the broker's file gets it;
#   2. a new programmer enrolls: its pin reaches the broker, it connects;
#   3. it is revoked: the broker disconnects it and refuses it, in seconds;
#   4. a malformed list (and an owners line about another programmer),
#      published by a cloud identity, is refused: file and retained list kept;
#      a good owners list moves that programmer's owner; a station's list
#      is denied;
#   5. SIGKILL of the leader: the other agent takes over and republishes
#      (the broker's serial file, removed meanwhile, comes back);
#   6. broker restart: it runs on the lists it adopted (revocation kept).
# Prints `name value` lines. Exit: 0 pass, 1 a check failed, 2 usage.
# Everything it started is stopped.
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: $0 BIN_DIR" >&2; exit 2; }
BIN=$1
DIR=$(mktemp -d /tmp/nusec-pglists.XXXXXX)
chmod 0755 "$DIR" # the cluster runs as `postgres` when we are root: it must reach DIR/postgres
declare -A pids=()
broker_pid=

nusec() { "$BIN/nusec" "$@" --dir "$DIR"; }
say() { printf "test_pg_lists: [%3ds] %s\n" "$SECONDS" "$*"; }
fail() {
    say "FAIL: $*" >&2
    for f in "$DIR"/agent-*/logs/cloud.log; do echo "--- $f" >&2; grep -E "leader|list|error|warn" "$f" | tail -8 >&2 || true; done
    echo "--- broker" >&2; grep -E "nusec_auth: (adopt|list|identity|refused)" "$BLOG" | tail -12 >&2 || true
    exit 1
}
cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    [[ -z "$broker_pid" ]] || kill "$broker_pid" 2>/dev/null || true
    nusec stack down >/dev/null 2>&1 || true
    [[ -n "${NUSEC_KEEP:-}" ]] || rm -rf "$DIR"
}
trap cleanup EXIT

# Wait up to $1 seconds until the command succeeds; the seconds waited in $waited.
wait_for() {
    local limit=$1 t0=$SECONDS
    shift
    until "$@"; do
        ((SECONDS - t0 < limit)) || return 1
        sleep 0.2
    done
    waited=$((SECONDS - t0))
}
lines() { wc -l <"$1" 2>/dev/null || echo 0; }
since() { tail -n +"$(($1 + 1))" "$2"; } # lines of $2 after the first $1
has_line() { grep -qx -- "$2" "$1" 2>/dev/null; }

say "stack up (PostgreSQL ledger, 1 programmer) in $DIR"
nusec stack up --ledger postgresql --programmers 1 --sockets 2 --devices 4 \
    >"$DIR.stack.log" 2>&1 || { cat "$DIR.stack.log" >&2; rm -f "$DIR.stack.log"; fail "stack up"; }
rm -f "$DIR.stack.log"
BLOG=$DIR/broker/mosquitto.log
EP=$(cat "$DIR/broker/endpoint")
grep -qx "plugin_opt_adopt_lists true" "$DIR/broker/mosquitto.conf" ||
    fail "stack up did not configure the broker to adopt the lists"

# The stack's agent shares the broker's DIR: stop it; the two below do not.
kill "$(cat "$DIR/run/cloud.pid")"
wait_for 15 bash -c "! kill -0 $(cat "$DIR/run/cloud.pid") 2>/dev/null" || fail "the stack's agent did not stop"
start_agent() {
    local n=$1 a=$DIR/agent-$1
    if [[ ! -d $a ]]; then
        mkdir -p "$a/broker" "$a/logs" "$a/run"
        for d in cloud pki hsm firmware vendor; do [[ ! -e $DIR/$d ]] || cp -a "$DIR/$d" "$a/"; done
        cp "$DIR/broker/endpoint" "$a/broker/" # where the broker is; not its lists
        { grep -v -E '^(instance|metrics_listen) *=' "$DIR/cloud/cloud.conf" || true
          echo "instance = $n"; echo "metrics_listen = off"; } >"$a/cloud/cloud.conf"
    fi
    "$BIN/nusec-cloud" --dir "$a" --log "$a/logs/cloud.log" &
    pids[$n]=$!
}
b0=$(lines "$BLOG")
start_agent 2
sleep 1 # agent 2 leads: the first to poll
start_agent 3
for n in 2 3; do
    wait_for 30 grep -qs "serving requests" "$DIR/agent-$n/logs/cloud.log" || fail "agent $n did not start"
done
leader=
for n in 2 3; do grep -q "leader: taking" "$DIR/agent-$n/logs/cloud.log" && leader=$n; done
[[ -n $leader ]] || fail "no agent leads"
other=$((leader == 2 ? 3 : 2))

say "1. the leader's serial list reaches the broker's own file"
adopted() { since "$1" "$BLOG" | grep -q "nusec_auth: adopted list nusec/v1/cloud/lists/$2 from cloud"; }
wait_for 10 adopted "$b0" serials || fail "the broker adopted no serial list"
grep -q '^prog-1 ' "$DIR/broker/serials" || fail "prog-1's pin is not in the broker's serial list"

say "2. a new programmer enrolls through the agents and connects"
"$BIN/nusec-programmer" --dir "$DIR" --name prog-new --factory-init --vendor-ca "$DIR/vendor" \
    >/dev/null 2>&1 || [[ $? == 4 ]] || fail "factory init of prog-new"
TOKEN=$(nusec programmer token --name prog-new)
"$BIN/nusec-programmer" --dir "$DIR" --name prog-new --enroll "$TOKEN" >"$DIR/enroll.log" 2>&1 ||
    { tail -5 "$DIR/enroll.log" >&2; fail "enrollment of prog-new"; }
t0=$SECONDS
pinned() { grep -q '^prog-new ' "$DIR/broker/serials"; }
wait_for 10 pinned || fail "prog-new's pin did not reach the broker"
pin_s=$((SECONDS - t0))
b1=$(lines "$BLOG")
"$BIN/nusec-programmer" --dir "$DIR" --name prog-new >"$DIR/prog-new.log" 2>&1 &
pids[prog]=$!
connected() { since "$b1" "$BLOG" | grep -q "nusec_auth: prog-new (programmer) authenticated"; }
wait_for 20 connected || fail "prog-new could not connect"

say "3. revoked: disconnected and refused"
b2=$(lines "$BLOG")
t0=$(date +%s.%N)
nusec programmer revoke prog-new --reason "test: lists over the bus" >/dev/null ||
    fail "programmer revoke"
kicked() { since "$b2" "$BLOG" | grep -q "identity prog-new revoked: disconnecting it"; }
wait_for 10 kicked || fail "prog-new was not disconnected"
revoke_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
has_line "$DIR/broker/revoked" prog-new || fail "prog-new is not in the broker's revocation list"
refused() { since "$b2" "$BLOG" | grep -q "refused connection .*: identity revoked; client id 'prog-new"; }
wait_for 30 refused || fail "prog-new's reconnection was not refused"
wait_for 5 bash -c "! grep -q '^prog-new ' '$DIR/broker/serials'" ||
    fail "the broker's serial list still pins a revoked programmer"

say "4. a malformed list is refused, the old one kept"
cp "$DIR/broker/revoked" "$DIR/revoked.before"
cloud_pub() { # TOPIC TEXT: publish retained as a cloud identity
    printf '%s' "$2" | mosquitto_pub -V mqttv5 -h "${EP%:*}" -p "${EP##*:}" \
        --cafile "$DIR/pki/chain.pem" --cert "$DIR/pki/clients/cloud.crt" \
        --key "$DIR/pki/clients/cloud.key" -i cloud:probe -q 1 -r -t "$1" -s 2>"$DIR/pub.err"
}
b3=$(lines "$BLOG")
cloud_pub nusec/v1/cloud/lists/revoked $'not an identity!\n' || true
cloud_pub nusec/v1/cloud/lists/owners/prog-1 $'station prog-2\n' || true
refusals() { (($(since "$b3" "$BLOG" | grep -c "nusec_auth: list nusec/v1/cloud/lists/.* refused") >= 2)); }
wait_for 10 refusals || fail "the malformed lists were not refused"
cmp -s "$DIR/revoked.before" "$DIR/broker/revoked" || fail "a refused list changed the revocation file"
retained=$(mosquitto_sub -V mqttv5 -h "${EP%:*}" -p "${EP##*:}" --cafile "$DIR/pki/chain.pem" \
    --cert "$DIR/pki/clients/cloud.crt" --key "$DIR/pki/clients/cloud.key" -i cloud:probe \
    -t nusec/v1/cloud/lists/revoked -C 1 -W 5 2>/dev/null) || true
grep -qx prog-new <<<"$retained" || fail "the retained revocation list is not the agents' any more"
# A well-formed owners list replaces that programmer's lines only.
owner_before=$(grep -c ' prog-1$' "$DIR/broker/owners" || true)
cloud_pub nusec/v1/cloud/lists/owners/prog-1 $'station-b prog-1\n' || true
moved() { has_line "$DIR/broker/owners" "station-b prog-1" && [[ $(grep -c '^[^#]* prog-1$' "$DIR/broker/owners") == 1 ]]; }
wait_for 10 moved || fail "an owners list was not adopted (prog-1 lines before: $owner_before)"
cloud_pub nusec/v1/cloud/lists/owners/prog-1 $'station prog-1\n' || true
wait_for 10 has_line "$DIR/broker/owners" "station prog-1" || fail "prog-1's owner was not moved back"
cp "$DIR/broker/serials" "$DIR/serials.before"
printf 'station-1 0a\n' | mosquitto_pub -V mqttv5 -h "${EP%:*}" -p "${EP##*:}" \
    --cafile "$DIR/pki/chain.pem" --cert "$DIR/pki/clients/station.crt" \
    --key "$DIR/pki/clients/station.key" -i station:probe -q 1 -r \
    -t nusec/v1/cloud/lists/serials -s >/dev/null 2>&1 || true
denied() { since "$b3" "$BLOG" | grep -q "denied write 'nusec/v1/cloud/lists/serials' for station"; }
wait_for 10 denied || fail "a station's list was not denied"
cmp -s "$DIR/serials.before" "$DIR/broker/serials" || fail "a station changed the serial list"

say "5. SIGKILL of the leader: the other agent republishes"
rm -f "$DIR/broker/serials" # lost at the broker: only a republish brings it back
b4=$(lines "$BLOG")
kill -9 "${pids[$leader]}"
t0=$(date +%s.%N)
wait_for 20 grep -q "leader: taking" "$DIR/agent-$other/logs/cloud.log" || fail "agent $other did not take over"
wait_for 10 adopted "$b4" serials || fail "the new leader's serial list was not adopted"
grep -q '^prog-1 ' "$DIR/broker/serials" || fail "the republished serial list lacks prog-1"
takeover_s=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')

say "6. broker restart: the adopted lists stay"
bpid=$(cat "$DIR/run/broker.pid")
kill "$bpid"
wait_for 15 bash -c "! kill -0 $bpid 2>/dev/null" || fail "the broker did not stop"
b5=$(lines "$BLOG")
/usr/sbin/mosquitto -c "$DIR/broker/mosquitto.conf" >/dev/null 2>&1 &
broker_pid=$!
reloaded() { since "$b5" "$BLOG" | grep -q "nusec_auth: loaded $DIR/broker/revoked (1 entries)"; }
wait_for 15 reloaded || fail "the restarted broker did not load the adopted revocation list"
refused_again() { since "$b5" "$BLOG" | grep -q "refused connection .*: identity revoked; client id 'prog-new"; }
wait_for 60 refused_again || fail "prog-new was not refused after the broker restart"
grep -q '^prog-1 ' "$DIR/broker/serials" || fail "the serial list was lost in the restart"

printf '%-28s %s\n' pin_at_broker_s "$pin_s" revoked_kicked_s "$revoke_s" \
    takeover_republished_s "$takeover_s" malformed_lists_refused 2
say PASS
