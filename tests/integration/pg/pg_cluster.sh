#!/usr/bin/env bash
# pg_cluster.sh — a throwaway PostgreSQL 15 cluster for tests and `nusec stack up`.
#
#   pg_cluster.sh start DIR   initdb (once) + pg_ctl start; prints `KEY=VALUE` lines:
#                             PGHOST (the socket folder), PGPORT, NUSEC_PG_OWNER_URI
#   pg_cluster.sh stop DIR    pg_ctl stop -m fast (no-op when not running)
#   pg_cluster.sh env DIR     the same lines as start, for a running cluster
#
# The cluster runs as an unprivileged user (the `postgres` account when we are
# root, else ourselves), listens on a unix socket inside DIR and on a free
# loopback port (so libpq URIs with host=127.0.0.1 work too). The bootstrap
# superuser is `nusec_owner` (the ledger's owner role); local socket
# connections are trusted (the socket folder is 0700, owned by the cluster's
# user), TCP needs a password (scram-sha-256).
# Exit: 0 ok, 1 usage, 2 a PostgreSQL tool failed (its log is printed).
set -euo pipefail
PGBIN=${NUSEC_PGBIN:-/usr/lib/postgresql/15/bin}
prog=pg_cluster.sh
die() { echo "$prog: $*" >&2; exit 2; }
[ $# -eq 2 ] || { echo "usage: $prog start|stop|env DIR" >&2; exit 1; }
cmd=$1
dir=$(mkdir -p "$2" && cd "$2" && pwd)
data=$dir/data
run=$dir/run

as_user() {
    if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

print_env() {
    local port
    port=$(sed -n 's/^port *= *//p' "$data/postgresql.auto.conf" 2>/dev/null | tail -1)
    [ -n "$port" ] || port=$(cat "$dir/port")
    echo "PGHOST=$run"
    echo "PGPORT=$port"
    echo "NUSEC_PG_OWNER_URI=postgresql://nusec_owner@/postgres?host=$run&port=$port"
}

free_port() {
    /usr/bin/python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

case $cmd in
start)
    [ -x "$PGBIN/initdb" ] || die "no PostgreSQL at $PGBIN (apt-get install postgresql)"
    mkdir -p "$run"
    if [ "$(id -u)" = 0 ]; then chown postgres: "$dir" "$run"; fi
    chmod 0700 "$dir" "$run"
    if [ ! -f "$data/PG_VERSION" ]; then
        as_user "$PGBIN/initdb" -D "$data" -U nusec_owner --auth-local=trust \
            --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >"$dir/initdb.log" 2>&1 ||
            { cat "$dir/initdb.log" >&2; die "initdb failed"; }
        free_port >"$dir/port"
        port=$(cat "$dir/port")
        # fsync stays on: the ledger's tests assert durability semantics.
        cat >>"$data/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$run'
max_connections = 100
shared_buffers = 32MB
log_min_messages = warning
CONF
    fi
    if as_user "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1; then
        print_env; exit 0
    fi
    # A port taken since initdb (another test) -> pick a new one.
    port=$(cat "$dir/port")
    if ! /usr/bin/python3 -c "import socket,sys; s=socket.socket(); s.bind(('127.0.0.1',$port))" 2>/dev/null; then
        free_port >"$dir/port"
        sed -i "s/^port = .*/port = $(cat "$dir/port")/" "$data/postgresql.conf"
    fi
    as_user "$PGBIN/pg_ctl" -D "$data" -l "$dir/postgres.log" -w -t 60 start >/dev/null ||
        { tail -20 "$dir/postgres.log" >&2; die "pg_ctl start failed"; }
    print_env
    ;;
stop)
    [ -f "$data/PG_VERSION" ] || exit 0
    as_user "$PGBIN/pg_ctl" -D "$data" status >/dev/null 2>&1 || exit 0
    as_user "$PGBIN/pg_ctl" -D "$data" -m fast -w -t 60 stop >/dev/null || die "pg_ctl stop failed"
    ;;
env) print_env ;;
*) echo "usage: $prog start|stop|env DIR" >&2; exit 1 ;;
esac
