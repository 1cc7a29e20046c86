#!/usr/bin/env bash
# Boots HV's bare-metal image on Bochs' Intel CPU model with VMX (Documentation/BareMetal.md,
# "VMX on Bochs"): the image's VMX engine runs the same guests and exit handlers as its SVM
# engine does under QEMU. Bochs is built from its upstream source outside this repository
# (Debian's bochs has no VMX); point BOCHS at that build's source folder.
#
#   BOCHS=/path/to/Bochs/bochs scripts/run-baremetal-bochs.sh [OUT]     (OUT: default .build-baremetal)
#
# Builds the image if OUT has no ISO, writes a bochsrc into OUT, runs Bochs (corei7_skylake_x:
# VMX with EPT, VPID, unrestricted guest and the preemption timer) and prints COM1. Exits 0 when
# the image's last guest ended with debug-exit code 0.
set -euo pipefail
cd "$(dirname "$0")/.."
bochs=${BOCHS:?set BOCHS to the folder of an upstream Bochs build configured with --enable-vmx=2 (Documentation/BareMetal.md)}
out=${1:-.build-baremetal}
[ -f "$out/hv-baremetal.iso" ] || scripts/build-baremetal.sh "$out"
out=$(cd "$out" && pwd)
cat > "$out/bochsrc" <<BOCHSRC
megs: 256
cpu: model=corei7_skylake_x, count=1, ips=50000000
romimage: file=$bochs/bios/BIOS-bochs-latest
vgaromimage: file=$bochs/bios/VGABIOS-lgpl/VGABIOS-lgpl-latest.bin
display_library: nogui
ata0: enabled=1, ioaddr1=0x1f0, ioaddr2=0x3f0, irq=14
ata0-slave: type=cdrom, path=$out/hv-baremetal.iso, status=inserted
boot: cdrom
com1: enabled=1, mode=file, dev=$out/bochs-com1.txt
log: $out/bochs.log
panic: action=fatal
error: action=report
info: action=ignore
debug: action=ignore
BOCHSRC
rm -f "$out/bochs-com1.txt"
# Bochs ends when the image writes "Shutdown" to port 0x8900 (its status is then 1 whatever
# happened): the verdict is COM1's. Its own watchdog is unreliable while a guest spins.
timeout --kill-after=5 600 "$bochs/bochs" -q -f "$out/bochsrc" > "$out/bochs.stdout" 2>&1 || true
tr -d '\033' < "$out/bochs-com1.txt" | sed -e 's/\[[0-9;]*[HJ]//g'
echo
grep -q "The guest stopped: the guest wrote 0 to the debug-exit port." "$out/bochs-com1.txt"
