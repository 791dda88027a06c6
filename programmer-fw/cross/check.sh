#!/usr/bin/env bash
# Cross build check of the programmer core for the NuLink3 (Cortex-M33):
# compiles programmer-fw/core/*.c (+ libnusec/nu_err.c, the error-name table)
# with arm-none-eabi-gcc, warnings as errors, links them into an image whose
# HAL is left as a link-time symbol (m33_image.c), and prints flash and RAM:
#   - arm-none-eabi-size of the core objects and of the image
#     (.bss holds the static struct pg_core),
#   - worst-case stack per entry point (GCC call graphs, stack.py),
#   - RAM total = data + bss + control stack + one worker stack per socket.
#
# usage: programmer-fw/cross/check.sh [OUTDIR]
# Exit: 0 built (or skipped: no arm-none-eabi-gcc), 1 build failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$ROOT/build-m33}
CC=arm-none-eabi-gcc
SOCKETS=8

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "cross check: $CC not found, skipped (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)"
    exit 0
fi

rm -rf "$OUT"
mkdir -p "$OUT"
CFLAGS=(-mcpu=cortex-m33 -mthumb -Os -std=c11 -ffunction-sections -fdata-sections
        -Wall -Wextra -Wshadow -Wformat=2 -Wstrict-prototypes -Wmissing-prototypes
        -Werror -fstack-usage -fcallgraph-info=su
        -DPG_MAX_SOCKETS=$SOCKETS -I"$ROOT/programmer-fw/core" -I"$ROOT/libnusec")
objs=()
for src in "$ROOT"/programmer-fw/core/*.c "$ROOT/libnusec/nu_err.c" "$HERE/m33_image.c"; do
    obj="$OUT/$(basename "${src%.c}").o"
    (cd "$OUT" && "$CC" "${CFLAGS[@]}" -c "$src" -o "$obj")
    objs+=("$obj")
done
"$CC" -mcpu=cortex-m33 -mthumb -Os --specs=nano.specs --specs=nosys.specs \
    -Wl,--gc-sections -Wl,--unresolved-symbols=ignore-all "${objs[@]}" -o "$OUT/nulink3.elf"

echo "== programmer core, Cortex-M33 (-Os, $SOCKETS sockets) =="
arm-none-eabi-size -t "${objs[@]:0:${#objs[@]}-1}" | sed "s#$OUT/##"
echo "-- image (core + newlib-nano parts it uses; HAL undefined) --"
arm-none-eabi-size "$OUT/nulink3.elf" | sed "s#$OUT/##"
stacks=$(python3 "$HERE/stack.py" "$OUT" pg_socket_run pg_core_firmware_fetch \
    pg_core_package_load pg_core_enroll pg_core_poll pg_core_on_message main)
echo "-- worst-case stack of the core (HAL ops and libc not included) --"
echo "$stacks"
read -r _ data bss _ < <(arm-none-eabi-size "$OUT/nulink3.elf" | tail -n 1)
worker=$(awk '$1 == "pg_socket_run" {print $2}' <<<"$stacks")
control=$(awk '$1 == "main" {print $2}' <<<"$stacks")
# Margin for what the graph cannot see: the HAL op at the bottom of each
# stack and newlib-nano's vsnprintf (logging): 1 KiB per stack.
margin=1024
total=$((data + bss + control + margin + SOCKETS * (worker + margin)))
echo "-- RAM: data $data + bss $bss + control stack $control + $SOCKETS worker stacks of $worker" \
     "(+ $margin B margin each for HAL/libc) = $total bytes ($((total / 1024)) KiB; goal 64 KiB) --"
