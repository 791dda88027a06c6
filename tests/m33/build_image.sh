#!/usr/bin/env bash
# Build the test image of the programmer core for the emulated Cortex-M33
# (qemu mps2-an505): programmer-fw/core (unchanged) + libnusec/nu_err.c +
# the forwarding HAL, scheduler and start code of tests/m33/target, with the
# cross check's flags (-Os, -Werror, 8 sockets). Test-only image.
#
# usage: tests/m33/build_image.sh OUTDIR     -> OUTDIR/m33_core_test.elf
#        (OUTDIR/obj/*.ci: GCC call graphs, for programmer-fw/cross/stack.py)
# Exit: 0 built, 1 build failure, 2 no arm-none-eabi-gcc.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:?usage: build_image.sh OUTDIR}
CC=arm-none-eabi-gcc
command -v "$CC" >/dev/null 2>&1 || { echo "build_image: $CC not found" >&2; exit 2; }

mkdir -p "$OUT/obj"
CFLAGS=(-mcpu=cortex-m33 -mthumb -mfloat-abi=soft -Os -g -std=c11 -ffunction-sections -fdata-sections
        -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes -Werror
        -fstack-usage -fcallgraph-info=su -DPG_MAX_SOCKETS=8 -I"$ROOT/programmer-fw/core" -I"$ROOT/libnusec" -I"$HERE" -I"$HERE/target")
objs=()
for src in "$ROOT"/programmer-fw/core/*.c "$ROOT/libnusec/nu_err.c" "$HERE/m33_rpc.c" \
    "$HERE"/target/*.c; do
    obj="$OUT/obj/$(basename "${src%.c}").o"
    (cd "$OUT/obj" && "$CC" "${CFLAGS[@]}" -c "$src" -o "$obj")
    objs+=("$obj")
done
"$CC" -mcpu=cortex-m33 -mthumb -mfloat-abi=soft -Os --specs=nano.specs --specs=nosys.specs \
    -nostartfiles -T "$HERE/target/m33.ld" -Wl,--gc-sections -Wl,--no-warn-rwx-segments \
    "${objs[@]}" -o "$OUT/m33_core_test.elf"
