#!/usr/bin/env bash
# Builds the virtio fuzz target (Fuzz/VirtioFuzz.swift) with libFuzzer and runs it.
#   scripts/fuzz-virtio.sh [SECONDS]        (default 60)
#   FUZZ_RUNS=1000000 scripts/fuzz-virtio.sh  (a number of executions instead of a time)
# HVCore is built with coverage instrumentation in .build-fuzz/virtio (scripts/fuzz-build.sh).
# Prints the executions and whether anything crashed; exits 1 on a crash.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${FUZZ_WORK:-$root/.build-fuzz/virtio}"
mkdir -p "$work"
cd "$root"

"$root/scripts/fuzz-build.sh" HVCore "$root/Fuzz/VirtioFuzz.swift" "$work/fuzz-virtio" "$work"

# Seeds: one well-formed request per device, laid out as the harness reads its input (4 control
# bytes, then guest RAM: descriptors at 0x1000, available ring at 0x2000, buffers at 0x4000;
# queue 1's rings follow at 0x5000-0x7FFF, so inputs up to 32 KiB reach every area).
seeds="$work/seeds"
mkdir -p "$seeds"
poke() { printf "$3" | dd of="$seeds/$1" bs=1 seek=$(($2)) conv=notrunc status=none; }
seed() {  # NAME KIND: control bytes, a 3-descriptor chain 0x4000 (16, readable) -> 0x4100 (512) -> 0x4400 (1)
    head -c $((4 + 0x4800)) /dev/zero > "$seeds/$1"
    poke "$1" 0 "\\x$2\\x03\\x04\\x01"
    poke "$1" $((4 + 0x1000)) '\x00\x40\x00\x00\x00\x00\x00\x00\x10\x00\x00\x00\x01\x00\x01\x00'
    poke "$1" $((4 + 0x1010)) '\x00\x41\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x03\x00\x02\x00'
    poke "$1" $((4 + 0x1020)) '\x00\x44\x00\x00\x00\x00\x00\x00\x01\x00\x00\x00\x02\x00\x00\x00'
    poke "$1" $((4 + 0x2000)) '\x00\x00\x01\x00\x00\x00'
    poke "$1" $((4 + 0x4000)) '\x01\x00\x00\x00\x00\x00\x00\x00\x02\x00\x00\x00\x00\x00\x00\x00'
}
seed block 00
seed entropy 01
seed console 02
seed vsock 03
seed balloon 04
seed network 05
seed pci 06

exec "$root/scripts/fuzz-run.sh" fuzz-virtio "$work/fuzz-virtio" "$work" "$seeds" "$seconds" -max_len=32768
