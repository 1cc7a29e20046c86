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
# Every object of the library targets HVCore is built from (no executables, no tests).
mapfile -t objects < <(find "$bin" -path '*.build/*.o' ! -path '*/hv.build/*' ! -path '*Tests.build/*' | sort)
echo "fuzz-virtio: linking against ${#objects[@]} objects"
swiftc -O -sanitize=fuzzer -parse-as-library -module-name VirtioFuzz \
    -I "$bin/Modules" -I "$root/Sources/CKVM/include" \
    -Xcc -fmodule-map-file="$root/Sources/CKVM/include/module.modulemap" \
    "$root/Fuzz/VirtioFuzz.swift" "${objects[@]}" -o "$work/fuzz-virtio"

corpus="$work/corpus"
mkdir -p "$corpus"
log="$work/fuzz-virtio.log"
if [ -n "${FUZZ_RUNS:-}" ]; then limit=(-runs="$FUZZ_RUNS"); else limit=(-max_total_time="$seconds"); fi
echo "fuzz-virtio: running (${FUZZ_RUNS:+$FUZZ_RUNS executions}${FUZZ_RUNS:-${seconds}s})"
if "$work/fuzz-virtio" "${limit[@]}" -max_len=8192 -timeout=10 -print_final_stats=1 "$corpus" >"$log" 2>&1; then
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
