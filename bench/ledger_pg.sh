#!/usr/bin/env bash
# bench/ledger_pg.sh — the ledger on PostgreSQL (issue 13), section 8 of
# bench/run.sh, runnable alone:  bench/ledger_pg.sh BIN_DIR WORK_DIR [SECONDS]
# One run: a throwaway PostgreSQL cluster (tests/integration/pg/pg_cluster.sh,
# the project's settings: fsync on, synchronous_commit on), then
# bench_ledger_pg with SQLite and 1 agent, PostgreSQL with 1 agent, with 2
# agents, one after the other on the same machine state. Prints
# `name value unit` lines (value null when not measured) and `note: ...`
# lines. Exit 0 unless the arguments are wrong.
set -uo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
[[ $# -ge 2 ]] || { echo "usage: $0 BIN_DIR WORK_DIR [SECONDS]" >&2; exit 2; }
BIN=$1 WORK=$2 SECS=${3:-${BENCH_PG_SECONDS:-10}}
[[ "$SECS" =~ ^[1-9][0-9]*$ ]] || { echo "ledger_pg.sh: SECONDS must be a positive number" >&2; exit 2; }
mkdir -p "$WORK"
rate() { awk '{ for (i = 1; i < NF; i++) if ($i == "rate") print $(i + 1) }' "$1" 2>/dev/null; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a > 0 && b > 0) printf "%.3f", a / b; else print "null" }'; }
CL="$ROOT/tests/integration/pg/pg_cluster.sh"
sq1= pg1= pg2=
if [[ -x "$BIN/bench_ledger_pg" ]] && "$CL" start "$WORK/pg" >"$WORK/pg.env" 2>"$WORK/pg.log"; then
    pghost=$(sed -n 's/^PGHOST=//p' "$WORK/pg.env"); pgport=$(sed -n 's/^PGPORT=//p' "$WORK/pg.env")
    pgu() { echo "postgresql://nusec_owner@/$1?host=$pghost&port=$pgport"; }
    for db in bench1 bench2; do
        psql -X -q "$(pgu postgres)" -c "DROP DATABASE IF EXISTS $db" -c "CREATE DATABASE $db" >>"$WORK/pg.log" 2>&1 || true
    done
    settings=$(psql -X -At "$(pgu postgres)" -c "SELECT string_agg(name || '=' || setting, ' ' ORDER BY name) FROM pg_settings WHERE name IN ('fsync','synchronous_commit','commit_delay','wal_sync_method','full_page_writes')" 2>>"$WORK/pg.log")
    rm -f "$WORK"/ledger-sqlite.db*
    "$BIN/bench_ledger_pg" "$WORK/ledger-sqlite.db" "$WORK/ledger-sqlite.db" - 1 "$SECS" >"$WORK/pg-sqlite1.txt" 2>>"$WORK/pg.log"
    "$BIN/bench_ledger_pg" "$(pgu bench1)" "$(pgu bench1)" - 1 "$SECS" >"$WORK/pg-1.txt" 2>>"$WORK/pg.log"
    "$BIN/bench_ledger_pg" "$(pgu bench2)" "$(pgu bench2)" - 2 "$SECS" >"$WORK/pg-2.txt" 2>>"$WORK/pg.log"
    "$CL" stop "$WORK/pg" >>"$WORK/pg.log" 2>&1 || true
    sq1=$(rate "$WORK/pg-sqlite1.txt"); pg1=$(rate "$WORK/pg-1.txt"); pg2=$(rate "$WORK/pg-2.txt")
    echo "note: ledger on PostgreSQL: bench_ledger_pg issues with a dummy signer (no HSM) in batches of 32 for ${SECS}s each, READ COMMITTED, one local cluster on the same cores as the agents ($settings); the ledger pipelines a batch (libpq pipeline mode); goal: 2 agents on PostgreSQL >= 0.5x SQLite with one agent."
else
    echo "note: ledger on PostgreSQL: not measured (no bench_ledger_pg or the cluster did not start: $WORK/pg.log)"
fi
echo "ledger_sqlite_issue_per_s_1agent ${sq1:-null} certs/s"
echo "ledger_pg_issue_per_s_1agent ${pg1:-null} certs/s"
echo "ledger_pg_issue_per_s_2agents ${pg2:-null} certs/s"
echo "ledger_pg_1agent_vs_sqlite_1agent $(ratio "${pg1:-0}" "${sq1:-0}") ratio"
echo "ledger_pg_2agents_vs_sqlite_1agent $(ratio "${pg2:-0}" "${sq1:-0}") ratio"
