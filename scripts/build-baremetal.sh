#!/usr/bin/env bash
# Builds HV's bare-metal image (Documentation/BareMetal.md): the shared machine model
# (Sources/HVModel) and the kernel (BareMetal/Kernel) as Embedded Swift for the freestanding
# x86_64 target, the entry stub (BareMetal/Entry/entry.S) and the small C runtime
# (BareMetal/Support/runtime.c), linked at 4 MiB with Multiboot 1 and Multiboot 2 headers.
#
#   scripts/build-baremetal.sh [OUT]     (default .build-baremetal)
#
# The demo guest it runs is hv demo's, written at build time by `hv demo --write-image` (HV=path
# to hv, default .build/debug/hv, built here when missing).
#
# OUT/hv-baremetal.elf is the 64-bit ELF (GRUB's multiboot2 command loads it; OUT/hv-baremetal.iso
# is a GRUB rescue ISO that does, with GRUB on COM1);
# OUT/hv-baremetal.elf32 the same image as a 32-bit ELF, which QEMU's -kernel requires:
#   qemu-system-x86_64 -accel tcg -cpu max -kernel OUT/hv-baremetal.elf32 -serial stdio \
#       -display none -device isa-debug-exit,iobase=0xf4,iosize=4
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.build-baremetal}
mkdir -p "$out"
out=$(cd "$out" && pwd)
hv=${HV:-.build/debug/hv}
[ -x "$hv" ] || swift build --product hv
"$hv" demo --write-image "$out/demo-guest.img"
cat > "$out/demo-guest.S" <<ASM
    .section .rodata.guest, "a"
    .global hv_guest_demo_start, hv_guest_demo_end
    .balign 16
hv_guest_demo_start:
    .incbin "$out/demo-guest.img"
hv_guest_demo_end:
    .section .note.GNU-stack, "", @progbits
ASM
swift=(swiftc -target x86_64-unknown-none-elf -enable-experimental-feature Embedded -wmo -parse-as-library -Osize
       -Xfrontend -disable-stack-protector -Xfrontend -function-sections -Xcc -mcmodel=kernel -Xcc -mno-red-zone -Xcc -ffreestanding)
"${swift[@]}" -module-name HVModel -emit-module -emit-module-path "$out/HVModel.swiftmodule" \
    -c $(find Sources/HVModel -name "*.swift" | sort) -o "$out/HVModel.o"
"${swift[@]}" -module-name BareMetalKernel -I "$out" -I BareMetal/Support/include \
    -c $(find BareMetal/Kernel -name "*.swift" | sort) -o "$out/Kernel.o"
c=(clang -target x86_64-unknown-none-elf -ffreestanding -fno-builtin -fno-stack-protector -mno-red-zone -mcmodel=kernel -O2
   -I BareMetal/Support/include)
"${c[@]}" -c BareMetal/Support/runtime.c -o "$out/runtime.o"
for assembly in BareMetal/Entry/entry.S BareMetal/Entry/exceptions.S BareMetal/Entry/svm.S BareMetal/Entry/vmx.S BareMetal/Entry/stack.S BareMetal/Guest/test-guest.S BareMetal/Guest/latency-guest.S "$out/demo-guest.S"; do
    "${c[@]}" -c "$assembly" -o "$out/$(basename "$assembly" .S).o"
done
# Embedded Swift's Unicode tables (grapheme breaking, normalisation), for String's operations.
unicode="$(dirname "$(command -v swiftc)")/../lib/swift/embedded/x86_64-unknown-none-elf/libswiftUnicodeDataTables.a"
ld -m elf_x86_64 -nostdlib -static -z max-page-size=0x1000 --gc-sections -T BareMetal/linker.ld \
    "$out/entry.o" "$out/exceptions.o" "$out/svm.o" "$out/vmx.o" "$out/stack.o" "$out/test-guest.o" "$out/latency-guest.o" "$out/demo-guest.o" "$out/Kernel.o" "$out/HVModel.o" "$out/runtime.o" "$unicode" -o "$out/hv-baremetal.elf"
objcopy -O elf32-i386 "$out/hv-baremetal.elf" "$out/hv-baremetal.elf32"
echo "bare metal: $out/hv-baremetal.elf ($(stat -c %s "$out/hv-baremetal.elf") bytes; $(size -A "$out/hv-baremetal.elf" | awk '/^\.text/ { print $2 }') bytes of code)"
# A GRUB rescue ISO (grub-mkrescue: Debian's grub-pc-bin, xorriso, mtools) that boots the image
# through Multiboot 2 with GRUB's console on COM1: for Bochs, which has no -kernel, and real
# machines. HV_BAREMETAL_ARGS is the image's command line there.
if command -v grub-mkrescue > /dev/null && [ -d /usr/lib/grub/i386-pc ]; then
    rm -rf "$out/iso"
    mkdir -p "$out/iso/boot/grub"
    cp "$out/hv-baremetal.elf" "$out/iso/boot/"
    cat > "$out/iso/boot/grub/grub.cfg" <<GRUB
serial --unit=0 --speed=115200
terminal_input serial
terminal_output serial
set timeout=0
menuentry "HV bare metal" {
    multiboot2 /boot/hv-baremetal.elf ${HV_BAREMETAL_ARGS:-}
    boot
}
GRUB
    grub-mkrescue --compress=xz -o "$out/hv-baremetal.iso" "$out/iso" > "$out/grub-mkrescue.log" 2>&1 \
        || { cat "$out/grub-mkrescue.log" >&2; exit 1; }
    echo "bare metal: $out/hv-baremetal.iso (GRUB, Multiboot 2)"
else
    echo "bare metal: no GRUB ISO (grub-mkrescue and grub-pc-bin are not installed: scripts/setup.sh installs them)"
fi
