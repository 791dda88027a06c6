#!/usr/bin/env bash
# Cross build check of the programmer core for the NuLink3 (Cortex-M33):
# compiles programmer-fw/core/*.c (+ libnusec/nu_err.c, the error-name table)
# with arm-none-eabi-gcc, warnings as errors, links them into an image whose
# HAL is left as a link-time symbol (m33_image.c), and prints flash and RAM:
#   - arm-none-eabi-size of the core objects and of the image
#     (.bss holds the static struct pg_core),
#   - worst-case stack per entry point (GCC call graphs, stack.py),
#   - RAM total = data + bss + control stack + one worker stack per socket,
#     from the static stack bound;
#   - with M33DIR (the build folder of tests/m33, after its tests ran): the
#     stacks MEASURED on the emulated Cortex-M33 (painted, read back: the
#     m33_report*.txt files the runners write) against the static bound, and
#     the RAM total from the measured figures, against the 64 KiB goal.
# Every figure also goes to OUTDIR/figures.txt as `name value unit` lines
# (bench/run.sh).
#
# usage: programmer-fw/cross/check.sh [OUTDIR] [M33DIR]
# Exit: 0 built, 1 build failure or no arm-none-eabi-gcc (./build.sh installs it).
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
OUT=${1:-$ROOT/build-m33}
M33DIR=${2:-}
CC=arm-none-eabi-gcc
SOCKETS=8

if ! command -v "$CC" >/dev/null 2>&1; then
    echo "cross check: $CC not found (apt-get install gcc-arm-none-eabi libnewlib-arm-none-eabi)" >&2
    exit 1
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
read -r core_text _ < <(arm-none-eabi-size -t "${objs[@]:0:${#objs[@]}-1}" | tail -n 1)
read -r img_text _ < <(arm-none-eabi-size "$OUT/nulink3.elf" | tail -n 1)
# Margin for what the graph cannot see: the HAL op at the bottom of each
# stack and newlib-nano's vsnprintf (logging): 1 KiB per stack.
margin=1024
total=$((data + bss + control + margin + SOCKETS * (worker + margin)))
echo "-- RAM: data $data + bss $bss + control stack $control + $SOCKETS worker stacks of $worker" \
     "(+ $margin B margin each for HAL/libc) = $total bytes ($((total / 1024)) KiB; goal 64 KiB) --"
FIG="$OUT/figures.txt"
{
    echo "m33_core_flash_bytes $core_text B"
    echo "m33_image_flash_bytes $((img_text + data)) B"
    echo "m33_image_data_bytes $data B"
    echo "m33_image_bss_bytes $bss B"
    echo "m33_stack_static_worker_bytes $worker B"
    echo "m33_stack_static_control_bytes $control B"
    echo "m33_ram_static_total_bytes $total B"
} >"$FIG"

# Measured on the emulated M33 (tests/m33): the deepest of every run.
[[ -n "$M33DIR" ]] || exit 0
reports=("$M33DIR"/m33_report*.txt)
if [[ ! -f "${reports[0]}" ]]; then
    echo "-- no measured stacks in $M33DIR (run the m33 tests first) --"
    exit 0
fi
mw=$(awk '$1 == "m33_worker_stack_peak_bytes" && $2 > m { m = $2 } END { print m + 0 }' "${reports[@]}")
mc=$(awk '$1 == "m33_control_stack_peak_bytes" && $2 > m { m = $2 } END { print m + 0 }' "${reports[@]}")
mtotal=$((data + bss + mc + SOCKETS * mw))
verdict=$([[ $mtotal -le 65536 ]] && echo "within" || echo "OVER")
echo "-- measured on the emulated Cortex-M33 (qemu mps2-an505, painted stacks, ${#reports[@]} runs) --"
echo "worker stack:  measured $mw B (deepest of the 8 tasks) vs static $worker B (core only) + $margin B margin"
echo "control stack: measured $mc B (incl. the test link's server) vs static $control B (core only) + $margin B margin"
echo "RAM total (measured): data $data + bss $bss + control $mc + $SOCKETS x worker $mw = $mtotal bytes" \
     "($((mtotal / 1024)) KiB, $verdict the 64 KiB goal)"
{
    echo "m33_stack_measured_worker_bytes $mw B"
    echo "m33_stack_measured_control_bytes $mc B"
    echo "m33_ram_measured_total_bytes $mtotal B"
} >>"$FIG"
