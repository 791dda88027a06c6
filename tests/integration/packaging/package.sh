#!/usr/bin/env bash
# Build the Debian packages (release, installed paths) into OUT/packages.
# usage: package.sh SOURCE_DIR OUT_DIR
set -euo pipefail
src=$1 out=$2
cmake -S "$src" -B "$out" -DCMAKE_BUILD_TYPE=Release -DNUSEC_PACKAGE=ON \
    -DCMAKE_INSTALL_PREFIX=/usr -DCMAKE_SKIP_INSTALL_ALL_DEPENDENCY=ON >/dev/null
cmake --build "$out" -j "$(nproc 2>/dev/null || echo 2)" \
    --target nusec-cloud nusec-station nusec-cli nusec_auth nusec_changelog >/dev/null
rm -rf "$out/packages"
(cd "$out" && cpack -G DEB --config CPackConfig.cmake >/dev/null)
ls "$out"/packages/*.deb
