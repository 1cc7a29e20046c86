#!/usr/bin/env bash
# Builds the device fuzz target (Fuzz/DeviceFuzz.swift: the PC platform, the TPM's TIS window and
# the test devices on the scripted backend) with libFuzzer and runs it.
#   scripts/fuzz-devices.sh [SECONDS]          (default 60)
#   FUZZ_RUNS=10000000 scripts/fuzz-devices.sh   (a number of executions instead of a time)
# HVTPM and HVCore are built with coverage instrumentation in .build-fuzz/devices
# (scripts/fuzz-build.sh). Growth is a failure: libFuzzer stops at 1 GiB of RSS or one malloc
# over 64 MiB. Prints the executions and whether anything failed; exits 1 if it did.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${FUZZ_WORK:-$root/.build-fuzz/devices}"
mkdir -p "$work"
cd "$root"

"$root/scripts/fuzz-build.sh" HVTPM "$root/Fuzz/DeviceFuzz.swift" "$work/fuzz-devices" "$work" -ltpms

# Seeds: short operation sequences that reach each device the way a driver starts talking to it
# (16 bytes each: op, shape, selector, 0, a 32-bit position and a 64-bit value, little-endian).
seeds="$work/seeds"
mkdir -p "$seeds"
le() { local value=$1 bytes=$2 out="" i; for ((i = 0; i < bytes; i++)); do out+=$(printf '\\x%02x' $(((value >> (8 * i)) & 0xFF))); done; printf '%s' "$out"; }
op() { printf "$(printf '\\x%02x\\x%02x\\x%02x\\x00' "$1" "$2" "$3")$(le "$4" 4)$(le "$5" 8)"; }  # OP SHAPE SELECTOR POSITION VALUE
{ op 1 1 2 0 0; op 0 0 2 1 0; op 0 0 2 1 0; op 0 0 2 1 0; op 0 0 2 1 0; } > "$seeds/fw_cfg-signature"
{ op 1 1 2 0 0x19; op 1 2 2 4 0; op 1 2 2 8 0x00100000; } > "$seeds/fw_cfg-dma"              # file directory, DMA at 0x100000
{ op 1 2 6 0 0x80000000; op 0 2 7 0 0; op 1 2 6 0 0x80001800; op 0 2 7 0 0; op 1 2 6 0 0x80001810; op 1 2 7 0 0xFFFFFFFF; op 0 2 7 0 0; } > "$seeds/pci-config"
{ op 3 0 0 0 2; op 2 0 0 0 0; op 3 0 0 0x18 0x40; op 2 2 0 0x18 0; op 3 0 0 0x24 0x80; op 3 0 0 0x24 0x01; op 3 0 0 0x24 0x00; } > "$seeds/tis"
{ op 1 0 3 0 0x0A; op 0 0 3 1 0; op 1 0 3 0 0x8B; op 1 0 3 1 0x42; } > "$seeds/rtc"
{ op 1 0 5 0 0xAA; op 0 0 4 0 0; op 1 0 5 0 0x60; op 1 0 4 0 0x47; op 5 0x3C 0 0 0x6F6C6C6548; } > "$seeds/i8042-uart"
{ op 3 2 1 0 0x10; op 3 2 1 0x10 0x2F; op 2 2 1 0x10 0; op 1 2 9 4 0x2000; op 0 1 9 0 0; } > "$seeds/ioapic-pm"

exec "$root/scripts/fuzz-run.sh" fuzz-devices "$work/fuzz-devices" "$work" "$seeds" "$seconds" \
    -max_len=4096 -rss_limit_mb=1024 -malloc_limit_mb=64
