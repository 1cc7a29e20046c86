#!/usr/bin/env bash
# Compiles the shared machine model (Sources/HVModel) as Embedded Swift for the freestanding
# bare-metal target, so nothing hosted-only (Foundation, existentials, untyped throws) creeps in.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
swiftc -target x86_64-unknown-none-elf -enable-experimental-feature Embedded -wmo -parse-as-library \
    -Xfrontend -disable-stack-protector -Xcc -mcmodel=kernel -Xcc -mno-red-zone \
    -module-name HVModel -emit-module -emit-module-path "$out/HVModel.swiftmodule" \
    -c $(find Sources/HVModel -name "*.swift" | sort) -o "$out/HVModel.o"
echo "embedded: HVModel compiles for x86_64-unknown-none-elf ($(stat -c %s "$out/HVModel.o") bytes of object code)"
