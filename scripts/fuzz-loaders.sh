#!/usr/bin/env bash
# Builds the loader fuzz targets (Fuzz/*LoaderFuzz.swift) with libFuzzer and runs each for
# SECONDS (default 60). Prints each target's executions and whether it crashed.
#   scripts/fuzz-loaders.sh 120
# Needs swiftc with -sanitize=fuzzer (Linux toolchains) and GNU as/ld for the seed corpus.
# HVModel is compiled as a plain module; HVGuest (the loaders) with coverage instrumentation.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
work="${FUZZ_WORK:-$root/.build-fuzz}"
mkdir -p "$work/seeds-elf" "$work/seeds-multiboot" "$work/seeds-linux" "$work/seeds-pvh" "$work/seeds-multiboot2"
cd "$work"

echo "fuzz: building HVModel"
swiftc -O -parse-as-library -emit-library -static -module-name HVModel \
    -emit-module -emit-module-path HVModel.swiftmodule -o libHVModel.a \
    $(find "$root/Sources/HVModel" -name '*.swift' | sort)

hvguest=$(find "$root/Sources/HVGuest" -name '*.swift' | sort)
for target in ELFLoader MultibootLoader Multiboot2Loader LinuxLoader PVHLoader; do
    echo "fuzz: building $target"
    swiftc -O -sanitize=fuzzer -parse-as-library -module-name HVGuest -I . -L . -lHVModel \
        "$root/Fuzz/${target}Fuzz.swift" $hvguest -o "fuzz-$target"
done

# Seeds: an ELF32 Multiboot kernel, an ELF64 program, an a.out-kludge Multiboot header.
as --32 -I "$root/Fuzz/Seeds" -o mb.o "$root/Fuzz/Seeds/multiboot32.s"
printf 'ENTRY(_start)\nSECTIONS { . = 0x200000; .text : { *(.text) } .bss : { *(.bss) } }\n' > seed.ld
ld -m elf_i386 -T seed.ld --build-id=none --no-warn-rwx-segments -o seeds-multiboot/elf32 mb.o 2>/dev/null \
    || ld -m elf_i386 -T seed.ld --build-id=none -o seeds-multiboot/elf32 mb.o
as --64 -o e64.o "$root/Fuzz/Seeds/elf64.s"
ld -m elf_x86_64 -T seed.ld --build-id=none -o seeds-elf/elf64 e64.o 2>/dev/null
cp seeds-multiboot/elf32 seeds-elf/elf32
as --32 -I "$root/Fuzz/Seeds" -o pvh.o "$root/Fuzz/Seeds/pvh32.s"
ld -m elf_i386 -T seed.ld --build-id=none -o seeds-pvh/pvh32 pvh.o 2>/dev/null
as --32 -I "$root/Fuzz/Seeds" -o mb2.o "$root/Fuzz/Seeds/multiboot2.s"
ld -m elf_i386 -T seed.ld --build-id=none -o seeds-multiboot2/elf32 mb2.o 2>/dev/null
# magic 0x1BADB002, flags 0x10002, checksum, header_addr 0x200000, load_addr 0x200000, 0, bss_end 0x201000, entry 0x200020
printf '\x02\xb0\xad\x1b\x02\x00\x01\x00\xfc\x4f\x51\xe4\x00\x00\x20\x00\x00\x00\x20\x00\x00\x00\x00\x00\x00\x10\x20\x00\x20\x00\x20\x00\xf4\xf4\xf4\xf4' \
    > seeds-multiboot/aout

# A minimal bzImage: boot sector + 1 setup sector with the boot.rst header, then 16 bytes of kernel.
head -c 1040 /dev/zero > seeds-linux/bzimage
poke() { printf "$2" | dd of=seeds-linux/bzimage bs=1 seek=$(($1)) conv=notrunc status=none; }
poke 0x1F1 '\x01'; poke 0x1FE '\x55\xaa'; poke 0x201 '\x66'; poke 0x202 'HdrS'; poke 0x206 '\x0f\x02'
poke 0x211 '\x01'; poke 0x22C '\xff\xff\xff\x7f'; poke 0x236 '\x01'; poke 0x238 '\xff\x07'
poke 0x259 '\x00\x00\x01'; poke 0x260 '\x00\x10'

status=0
for target in ELFLoader MultibootLoader Multiboot2Loader LinuxLoader PVHLoader; do
    corpus="corpus-$target"
    mkdir -p "$corpus"
    case $target in
        ELFLoader) seeds=seeds-elf ;; MultibootLoader) seeds=seeds-multiboot ;; Multiboot2Loader) seeds=seeds-multiboot2 ;;
        PVHLoader) seeds=seeds-pvh ;; *) seeds=seeds-linux ;;
    esac
    log="fuzz-$target.log"
    echo "fuzz: running $target for ${seconds}s"
    if ./"fuzz-$target" -max_total_time="$seconds" -print_final_stats=1 "$corpus" "$seeds" >"$log" 2>&1; then
        result="no crash"
    else
        result="CRASH (see $work/$log)"
        status=1
    fi
    runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    echo "fuzz: $target: $runs executions in ${seconds}s, $result"
done
exit $status
