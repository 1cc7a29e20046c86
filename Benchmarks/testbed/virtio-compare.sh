#!/bin/sh
# Runs inside scripts/testbed: the same block benchmark (Benchmarks/testbed/blockbench.c, O_DIRECT
# in the guest) on the same raw image, in the same Debian kernel and busybox initramfs, under hv
# (virtio-blk on virtio-mmio, found through the DSDT) and under QEMU's microvm machine
# (virtio-blk-device on virtio-mmio, -accel kvm, its default writeback cache, the same page
# cache as hv's pread/pwrite), alternating, ROUNDS times each. TRANSPORT=pci puts both on PCI
# instead (hv --virtio-transport pci; QEMU microvm with pcie=on and virtio-blk-pci), both with
# MSI-X. Prints every run and, per mode, the median of each VMM's throughput, IOPS and mean
# latency, and the ratio hv/QEMU of IOPS (above 1: hv is faster).
#
#   scripts/testbed Benchmarks/testbed/virtio-compare.sh [ROUNDS] [SECONDS] [MODES]
#   HV=.build/release/hv (default), QEMU=qemu-system-x86_64, MEM=256 (MiB), HV_DISK_OPTIONS=,
#   TRANSPORT=mmio (default) or pci
rounds=${1:-3}
seconds=${2:-5}
modes=${3:-seqread,seqwrite,randread,randwrite}
hv=${HV:-.build/release/hv}
qemu=${QEMU:-qemu-system-x86_64}
mem=${MEM:-256}
kernel=$(ls .build-kernel/boot/vmlinuz-* | head -1)
work=$(mktemp -d)
cc -static -O2 -o "$work/blockbench" Benchmarks/testbed/blockbench.c || exit 1
HV_GUEST_EXTRA="$work/blockbench" scripts/linux-guest-initrd "$work/initrd.cpio.gz" >/dev/null || exit 1
truncate -s 512M "$work/disk.img"
dd if=/dev/urandom of="$work/disk.img" bs=1M count=512 conv=notrunc 2>/dev/null
cmdline="console=ttyS0 hv.cpus=1 hv.bench=$modes hv.benchsecs=$seconds"
if [ "${TRANSPORT:-mmio}" = pci ]; then
    hv_transport="--virtio-transport pci" qemu_machine=microvm,acpi=on,rtc=on,pcie=on qemu_device=virtio-blk-pci
else
    hv_transport="" qemu_machine=microvm,acpi=on,rtc=on qemu_device=virtio-blk-device
fi

echo "virtio-compare: $rounds rounds of $seconds s per mode, 1 vCPU, $mem MiB, $(basename "$kernel"), 512 MiB image, ${TRANSPORT:-mmio}"
echo "vmm   mode         MiB/s      IOPS   lat-us"
for round in $(seq "$rounds"); do
    "$hv" run --kernel "$kernel" --initrd "$work/initrd.cpio.gz" --mem "${mem}M" --disk "$work/disk.img${HV_DISK_OPTIONS:-}" \
        $hv_transport --cmdline "$cmdline" --timeout 600 < /dev/null 2>&1 | sed -n 's/^hv-guest: blockbench /hv   /p'
    "$qemu" -M $qemu_machine -accel kvm -cpu host -m "$mem" -smp 1 -nodefaults -no-reboot -display none \
        -serial stdio -kernel "$kernel" -initrd "$work/initrd.cpio.gz" -append "$cmdline" \
        -drive id=disk0,file="$work/disk.img",format=raw,if=none -device $qemu_device,drive=disk0 \
        < /dev/null 2>&1 | sed -n 's/^hv-guest: blockbench /qemu /p'
done | tee "$work/results" | awk '{ printf "%-5s %-10s %8s %9s %8s\n", $1, $2, $3, $4, $5 }'

echo "mode         hv MiB/s  qemu MiB/s   hv IOPS  qemu IOPS  hv lat-us  qemu lat-us  hv/qemu"
for mode in $(echo "$modes" | tr ',' ' '); do
    # median VMM COLUMN: the median of one column over the rounds.
    median() { awk -v v="$1" -v m="$mode" -v c="$2" '$1 == v && $2 == m { print $c }' "$work/results" | sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }'; }
    awk -v m="$mode" -v h="$(median hv 3)" -v q="$(median qemu 3)" -v hi="$(median hv 4)" -v qi="$(median qemu 4)" \
        -v hl="$(median hv 5)" -v ql="$(median qemu 5)" \
        'BEGIN { printf "%-10s %10.1f %11.1f %9d %10d %10.1f %12.1f %8.2f\n", m, h, q, hi, qi, hl, ql, (qi > 0 ? hi / qi : 0) }'
done
rm -rf "$work"
