#!/usr/bin/env bash
# Builds one libFuzzer target over SwiftPM-built library targets:
#   scripts/fuzz-build.sh SPM_TARGET FUZZ_SOURCE OUTPUT WORK [LINK_FLAGS...]
# SPM_TARGET (HVCore, HVTPM) and what it depends on are built by SwiftPM with coverage
# instrumentation (--sanitize=fuzzer, in WORK/spm); FUZZ_SOURCE is then linked against their
# objects with swiftc, since SwiftPM cannot link a libFuzzer executable itself (its executables
# bring their own main). Used by fuzz-virtio.sh and fuzz-devices.sh.
set -euo pipefail
target="$1" source="$2" output="$3" work="$4"
shift 4
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
name="$(basename "$output")"
echo "$name: building $target with coverage"
swift build -c release --sanitize=fuzzer --build-path "$work/spm" --target "$target" 2>&1 | grep -E "error|warning: unre|Compiling|Build" | tail -3
bin=$(swift build -c release --sanitize=fuzzer --build-path "$work/spm" --show-bin-path)
# Every object of the library targets (not the plugins' host tools, built in the same folder as
# *-tool.build), and the module maps of the C targets among them: those a target ships (CKVM,
# CLibTPMS, the C shims of the packages HV depends on: swift-numerics', swift-atomics') and those
# SwiftPM wrote for the others (CSeccomp, SwiftNIO's C modules), in the build folder.
mapfile -t objects < <(find "$bin" -path '*.build/*.o' ! -path '*-tool.build/*' | sort)
maps=()
while read -r map; do maps+=(-Xcc -fmodule-map-file="$map"); done < <(
    find "$root/Sources/CKVM/include" "$root/Sources/CLibTPMS" -name module.modulemap
    find "$work/spm/checkouts" -path '*/Sources/*/include/module.modulemap' 
    find "$bin" -path '*.build/module.modulemap' ! -path '*-tool.build/*')
echo "$name: linking against ${#objects[@]} objects"
swiftc -O -sanitize=fuzzer -parse-as-library -module-name "$(basename "$source" .swift)" -I "$bin/Modules" "${maps[@]}" \
    "$source" "${objects[@]}" -lseccomp "$@" -o "$output"
