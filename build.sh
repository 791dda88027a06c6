#!/usr/bin/env bash
# NuSEC build driver: installs the Debian packages it needs, builds, tests.
#   ./build.sh            deps + release build into build/
#   ./build.sh test       deps + ASan/UBSan build into build-test/ + every test
#   ./build.sh fuzz [--seconds N]   libFuzzer targets (clang), bounded run
#   ./build.sh demo [options]   a whole production on the local stack
#   ./build.sh bench            optimised build, then bench/run.sh: figures of one run -> bench/results.json
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
JOBS=$(nproc 2>/dev/null || echo 2)

# Everything the build, the tests and the local stack need, from Debian 12.
PACKAGES=(
    build-essential cmake pkg-config git
    libwolfssl-dev libssl-dev openssl
    libmosquitto-dev mosquitto mosquitto-dev mosquitto-clients
    libprotobuf-c-dev protobuf-c-compiler protobuf-compiler
    libsqlite3-dev sqlite3 libcunit1-dev
    softhsm2 libsofthsm2 p11-kit libp11-kit-dev
    python3 python3-cryptography xxd
    libmicrohttpd-dev libcjson-dev chromium python3-websocket
    prometheus dpkg-dev lintian systemd adduser
    gcc-arm-none-eabi libnewlib-arm-none-eabi qemu-system-arm
    swtpm swtpm-tools tpm2-abrmd libtss2-tcti-tabrmd0 libtpm2-pkcs11-1 libtpm2-pkcs11-tools
    tpm2-tools dbus opensc
    libpq-dev postgresql python3-psycopg2
    patroni etcd-server etcd-client
)
FUZZ_PACKAGES=(clang libclang-rt-14-dev)

say() { printf 'build.sh: %s\n' "$*" >&2; }

usage() {
    cat <<'USAGE'
usage: ./build.sh [COMMAND] [OPTIONS]

Commands:
  (none)            install missing Debian packages, build into build/
  test              build with AddressSanitizer + UBSan into build-test/ and run
                    every test (unit, integration, security); prints a summary;
                    then builds the fuzz targets (clang, build-fuzz/) and runs
                    each for 5 s over its seeds (a crash fails the run)
  fuzz [--seconds N]  build the libFuzzer targets with clang into build-fuzz/
                    and run each for N seconds (default 30), one after the
                    other, corpus kept in build-fuzz/corpus/; prints the
                    executions per target
  demo [--dir DIR] [--devices N] [--quota Q] [--programmers P] [--sockets S]
       [--flash-us-per-kib T]
                    build, then run a whole production on the local stack:
                    stack up, sign firmware, create the job, import the
                    packages, produce, print a summary, audit, stack down.
                    Defaults: DIR ./demo-state (replaced on each run, kept
                    afterwards), 32 devices, quota = devices, 2 programmers,
                    4 sockets, 0 us/KiB simulated flash time
                    --sites N: the same through N CM sites, each with its
                    own state dir (DIR/cm/site-K), site broker bridged to
                    the cloud broker, station and P programmers
                    (docs/sites.md); default 0 = one machine
  package           build the Debian packages (nusec-cloud, nusec-station,
                    nusec-broker-plugin, nusec) into build-pkg/packages/
  chaos [OPTIONS]   build release, then the fault run tests/chaos/chaos.sh
                    (production of 2000 devices while the cloud, broker,
                    programmer and station are killed and the ledger's disk
                    fills); prints name/value lines, exits 1 on a violated goal.
                    Options are chaos.sh's (--help lists them)
  bench             build release, then measure on this machine in one run
                    (crypto ceiling, end to end on the local stack, cert
                    latency, peak RSS) and write bench/results.json.
                    BENCH_DEVICES (default 10000) sets the e2e device count
  ha-demo [OPTIONS] build release, then the failover scenario tests/ha/ha_demo.sh:
                    3 etcd + 3 PostgreSQL under Patroni (synchronous_mode), 2
                    cloud agents, a production, SIGKILL of the Patroni leader
                    and its postmaster mid-production; prints name/value lines,
                    exits 1 on any acknowledged certificate lost. Options are
                    ha_demo.sh's (--devices N, --dir DIR, --help)
  deps              only install the missing Debian packages
  -h, --help        this text

Exit codes: 0 success, 1 build or test failure, 2 missing packages and not
root (the command to run is printed), 3 command not implemented yet.
USAGE
}

missing_packages() {
    local p status
    for p in "$@"; do
        status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
        [[ "$status" == "install ok installed" ]] || printf '%s\n' "$p"
    done
}

ensure_packages() {
    local missing
    mapfile -t missing < <(missing_packages "$@")
    ((${#missing[@]} == 0)) && return 0
    if [[ $(id -u) -ne 0 ]]; then
        say "missing Debian packages: ${missing[*]}"
        say "run as root: apt-get update && apt-get install -y ${missing[*]}"
        exit 2
    fi
    say "installing: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -q >&2
    apt-get install -y -q --no-install-recommends "${missing[@]}" >&2
}

configure_and_build() {
    local dir=$1
    shift
    local werror=OFF
    [[ -n "${CI:-}" ]] && werror=ON
    cmake -S "$ROOT" -B "$ROOT/$dir" -DNUSEC_WERROR="$werror" "$@" >/dev/null
    cmake --build "$ROOT/$dir" -j "$JOBS"
}

cmd_build() {
    ensure_packages "${PACKAGES[@]}"
    configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    say "built: build/bin/"
    # The programmer core must also build for the NuLink3 (Cortex-M33),
    # warnings as errors; this prints its flash/RAM figures.
    "$ROOT/programmer-fw/cross/check.sh" "$ROOT/build-m33"
}

cmd_test() {
    ensure_packages "${PACKAGES[@]}" "${FUZZ_PACKAGES[@]}"
    configure_and_build build-test -DCMAKE_BUILD_TYPE=Debug -DNUSEC_SANITIZE=ON
    local log="$ROOT/build-test/ctest.log" rc=0
    (cd "$ROOT/build-test" &&
        ASAN_OPTIONS=detect_leaks=1:abort_on_error=0 \
        UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
        ctest --output-on-failure --timeout 300 -j "$JOBS") 2>&1 | tee "$log" || rc=$?
    # Cortex-M33 cross build of the core (-Werror), with the stacks the m33
    # tests just measured on the emulated chip and the RAM total from them.
    "$ROOT/programmer-fw/cross/check.sh" "$ROOT/build-test/m33-cross" "$ROOT/build-test/tests/m33" ||
        { say "Cortex-M33 cross build failed"; rc=1; }
    local passed failed
    passed=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .* Passed' "$log" || true)
    failed=$(grep -cE '^ *[0-9]+/[0-9]+ Test +#[0-9]+: .*(Failed|Exception|Timeout|Not Run)' "$log" || true)
    echo "tests: $passed passed, $failed failed"
    # Fuzz smoke: every libFuzzer target 5 s over its seeds; a crash fails.
    local frc=0
    fuzz_build && fuzz_run 5 smoke || frc=$?
    ((rc == 0 && failed == 0 && frc == 0)) || exit 1
}

# The libFuzzer targets (clang, ASan + UBSan) into build-fuzz/, and only them.
fuzz_build() {
    local werror=OFF
    [[ -n "${CI:-}" ]] && werror=ON
    CC=clang cmake -S "$ROOT" -B "$ROOT/build-fuzz" -DCMAKE_BUILD_TYPE=Debug -DNUSEC_FUZZ=ON \
        -DNUSEC_WERROR="$werror" >/dev/null
    cmake --build "$ROOT/build-fuzz" --target nusec_fuzz -j "$JOBS"
}

# fuzz_run SECONDS KIND: each target in turn (one core) over its seeds and
# build-fuzz/KIND/<target> (a smoke run starts that corpus afresh); prints
# executions per target; returns 1 if any target crashed (the input is kept
# in build-fuzz/crashes/).
fuzz_run() {
    local seconds=$1 kind=$2 t name corpus log failed=0
    mkdir -p "$ROOT/build-fuzz/crashes"
    for t in "$ROOT"/build-fuzz/bin/fuzz_*; do
        name=$(basename "$t")
        corpus="$ROOT/build-fuzz/$kind/$name"
        log="$ROOT/build-fuzz/$kind/$name.log"
        [[ "$kind" == smoke ]] && rm -rf "$corpus"
        mkdir -p "$corpus"
        if "$t" -max_total_time="$seconds" -max_len=65536 -timeout=30 \
            -artifact_prefix="$ROOT/build-fuzz/crashes/$name-" \
            "$corpus" "$ROOT/tests/fuzz/seeds/$name" >"$log" 2>&1; then
            say "fuzz $name: $(grep -oE 'Done [0-9]+ runs' "$log" | tail -n 1 | cut -d' ' -f2) executions in ${seconds}s, corpus $(find "$corpus" -type f | wc -l)"
        else
            say "fuzz $name: FAILED (log $log)"
            grep -E 'ERROR|SUMMARY|fuzz_.*\.c: |Test unit written' "$log" | head -n 8 >&2
            failed=1
        fi
    done
    return "$failed"
}

cmd_fuzz() {
    local seconds=30
    while (($#)); do
        case $1 in
        --seconds) seconds=${2:?--seconds needs a value}; shift 2 ;;
        *) say "fuzz: unknown option $1"; exit 1 ;;
        esac
    done
    ensure_packages "${PACKAGES[@]}" "${FUZZ_PACKAGES[@]}"
    fuzz_build
    fuzz_run "$seconds" corpus || exit 1
}

cmd_demo() {
    local dir="$ROOT/demo-state" args=() sites=0
    while (($#)); do
        case $1 in
        --dir) dir=${2:?--dir needs a value}; shift 2 ;;
        --sites) sites=${2:?--sites needs a value}; shift 2 ;;
        --devices | --quota | --programmers | --sockets | --flash-us-per-kib)
            args+=("$1" "${2:?$1 needs a value}"); shift 2 ;;
        *) say "demo: unknown option $1 (see ./build.sh --help)"; exit 1 ;;
        esac
    done
    ensure_packages "${PACKAGES[@]}"
    configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    if [[ "$sites" != 0 ]]; then
        "$ROOT/tests/integration/sites/sites_flow.sh" --bin "$ROOT/build/bin" --dir "$dir" \
            --sites "$sites" "${args[@]}"
        return
    fi
    "$ROOT/tests/e2e/demo_flow.sh" --bin "$ROOT/build/bin" --dir "$dir" "${args[@]}"
}

cmd_package() {
    ensure_packages "${PACKAGES[@]}"
    "$ROOT/tests/integration/packaging/package.sh" "$ROOT" "$ROOT/build-pkg"
}

cmd_chaos() {
    ensure_packages "${PACKAGES[@]}"
    configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    "$ROOT/tests/chaos/chaos.sh" --bin "$ROOT/build/bin" --dir "$ROOT/build/chaos-state" "$@"
}

cmd_bench() {
    (($#)) && { say "bench: no options (use BENCH_DEVICES=N)"; exit 1; }
    ensure_packages "${PACKAGES[@]}"
    configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    "$ROOT/bench/run.sh" --bin "$ROOT/build/bin" --out "$ROOT/bench/results.json"
}

cmd_ha_demo() {
    ensure_packages "${PACKAGES[@]}"
    configure_and_build build -DCMAKE_BUILD_TYPE=RelWithDebInfo
    "$ROOT/tests/ha/ha_demo.sh" --bin "$ROOT/build/bin" --dir "$ROOT/build/ha-state" "$@"
}

main() {
    local cmd=${1:-build}
    (($#)) && shift
    case $cmd in
    build) cmd_build ;;
    deps) ensure_packages "${PACKAGES[@]}" ;;
    test) cmd_test ;;
    fuzz) cmd_fuzz "$@" ;;
    demo) cmd_demo "$@" ;;
    bench) cmd_bench "$@" ;;
    chaos) cmd_chaos "$@" ;;
    ha-demo) cmd_ha_demo "$@" ;;
    package) cmd_package ;;
    -h | --help | help) usage ;;
    *) usage >&2; exit 1 ;;
    esac
}

main "$@"
