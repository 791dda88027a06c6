#!/usr/bin/env bash
# The Debian packages as an operator installs them: built from this tree,
# checked by lintian (no error), their systemd units by systemd-analyze
# verify (no complaint), unpacked into a throwaway dpkg root, and every file
# where docs/deploy.md says it is.
# usage: test_packages.sh SOURCE_DIR WORK_DIR
set -uo pipefail
src=$1 work=$2
passed=0 failed=0
ok() { echo "ok $1"; passed=$((passed + 1)); }
fail() { echo "FAIL $1${2:+: $2}"; failed=$((failed + 1)); }
check() { local name=$1; shift; if "$@"; then ok "$name"; else fail "$name"; fi; }

rm -rf "$work" && mkdir -p "$work"
if ! debs=$("$src/tests/integration/packaging/package.sh" "$src" "$work/build" 2>"$work/build.log"); then
    cat "$work/build.log"
    fail "packages build"
    echo "packaging: $passed passed, $failed failed"
    exit 1
fi
mapfile -t debs <<<"$debs"
check "four packages" test "${#debs[@]}" -eq 4

lintian --fail-on error "${debs[@]}" >"$work/lintian.txt" 2>&1
rc=$?
errors=$(grep -c '^E: ' "$work/lintian.txt")
check "lintian: no error (warnings: $(grep -c '^W: ' "$work/lintian.txt"))" test "$rc" -eq 0 -a "$errors" -eq 0
((rc == 0)) || cat "$work/lintian.txt"

root=$work/root
mkdir -p "$root"/var/lib/dpkg/{info,updates} && touch "$root"/var/lib/dpkg/{status,available}
check "dpkg unpacks every package into a throwaway root" \
    dpkg --root="$root" --force-depends --force-not-root --unpack "${debs[@]}" >"$work/dpkg.log" 2>&1

listed() { dpkg --root="$root" -L "$1" 2>/dev/null | grep -qx "$2"; }
while read -r package path; do
    check "$package installs $path" listed "$package" "$path"
done <<'PATHS'
nusec-cloud /usr/bin/nusec-cloud
nusec-cloud /lib/systemd/system/nusec-cloud.service
nusec-cloud /etc/nusec/cloud.conf
nusec-cloud /etc/nusec/cloud.env
nusec-cloud /etc/logrotate.d/nusec-cloud
nusec-cloud /usr/share/doc/nusec-cloud/copyright
nusec-station /usr/bin/nusec-station
nusec-station /lib/systemd/system/nusec-station.service
nusec-station /etc/nusec/station.env
nusec-broker-plugin /usr/lib/x86_64-linux-gnu/nusec/nusec_auth.so
nusec-broker-plugin /usr/share/nusec/mosquitto.conf.in
nusec-broker-plugin /lib/systemd/system/nusec-broker.service
nusec-broker-plugin /etc/nusec/broker.env
nusec /usr/bin/nusec
nusec /usr/share/nusec/proto/nusec/v1/envelope.proto
PATHS

for p in nusec-cloud nusec-station nusec-broker-plugin; do
    conf=$(dpkg-deb -f "$(printf '%s\n' "${debs[@]}" | grep "/${p}_")" Package >/dev/null &&
        dpkg-deb --ctrl-tarfile "$(printf '%s\n' "${debs[@]}" | grep "/${p}_")" | tar -xO ./conffiles)
    check "$p declares its /etc files as conffiles" grep -q '^/etc/nusec/' <<<"$conf"
done

# systemd-analyze verify under --root needs the targets the units name and the
# commands they run to exist in that root.
cp -n /lib/systemd/system/*.target "$root/lib/systemd/system/" 2>/dev/null
mkdir -p "$root/bin" "$root/usr/sbin" && cp /bin/kill "$root/bin/" && cp /usr/sbin/mosquitto "$root/usr/sbin/"
out=$(systemd-analyze verify --root="$root" "$root"/lib/systemd/system/nusec-*.service 2>&1)
rc=$?
check "systemd-analyze verify: the units are clean" test "$rc" -eq 0 -a -z "$out"
[[ -z "$out" ]] || echo "$out"
for unit in "$root"/lib/systemd/system/nusec-*.service; do
    for key in 'User=nusec' 'NoNewPrivileges=yes' 'ProtectSystem=strict' \
        'ReadWritePaths=/var/lib/nusec /var/log/nusec' 'CapabilityBoundingSet=$'; do
        check "$(basename "$unit") has $key" grep -q "^$key" "$unit"
    done
done
check "the installed cloud agent runs (--help)" "$root/usr/bin/nusec-cloud" --help >/dev/null
check "the installed CLI runs (--help)" "$root/usr/bin/nusec" --help >/dev/null

echo "packaging: $passed passed, $failed failed"
((failed == 0))
