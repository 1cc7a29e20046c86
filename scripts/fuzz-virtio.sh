#!/usr/bin/env bash
# Builds the virtio fuzz target (Fuzz/VirtioFuzz.swift) with libFuzzer and runs it.
#   scripts/fuzz-virtio.sh [SECONDS]        (default 60)
#   FUZZ_RUNS=1000000 scripts/fuzz-virtio.sh  (a number of executions instead of a time)
# HVCore and what it depends on are built by SwiftPM with coverage instrumentation
# (--sanitize=fuzzer, in .build-fuzz/virtio); the target is then linked against their objects
# with swiftc, since SwiftPM cannot link a libFuzzer executable itself (its executables bring
# their own main). Prints the executions and whether anything crashed; exits 1 on a crash.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${FUZZ_WORK:-$root/.build-fuzz/virtio}"
mkdir -p "$work"
cd "$root"

echo "fuzz-virtio: building HVCore with coverage"
swift build -c release --sanitize=fuzzer --build-path "$work/spm" --target HVCore 2>&1 | grep -E "error|warning: unre|Compiling|Build" | tail -3
bin=$(swift build -c release --sanitize=fuzzer --build-path "$work/spm" --show-bin-path)
# Every object of the library targets HVCore is built from (not the plugins' host tools, built
# in the same folder as *-tool.build), and the module maps of the C targets among them.
mapfile -t objects < <(find "$bin" -path '*.build/*.o' ! -path '*-tool.build/*' | sort)
maps=()
while read -r map; do maps+=(-Xcc -fmodule-map-file="$map"); done < <(
    find "$root/Sources/CKVM/include" "$work/spm/checkouts/swift-numerics/Sources/_NumericsShims/include" -name module.modulemap)
echo "fuzz-virtio: linking against ${#objects[@]} objects"
swiftc -O -sanitize=fuzzer -parse-as-library -module-name VirtioFuzz -I "$bin/Modules" "${maps[@]}" \
    "$root/Fuzz/VirtioFuzz.swift" "${objects[@]}" -o "$work/fuzz-virtio"

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

corpus="$work/corpus"
mkdir -p "$corpus"
log="$work/fuzz-virtio.log"
if [ -n "${FUZZ_RUNS:-}" ]; then
    limit=(-runs="$FUZZ_RUNS"); echo "fuzz-virtio: running $FUZZ_RUNS executions"
else
    limit=(-max_total_time="$seconds"); echo "fuzz-virtio: running for ${seconds}s"
fi
if "$work/fuzz-virtio" "${limit[@]}" -artifact_prefix="$work/" -max_len=32768 -timeout=10 -print_final_stats=1 "$corpus" "$seeds" >"$log" 2>&1; then
    result="no crash"
    status=0
else
    result="CRASH (see $log)"
    status=1
fi
runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
coverage=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
echo "fuzz-virtio: $runs executions, $coverage, $result"
exit $status
