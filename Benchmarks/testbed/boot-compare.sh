#!/bin/sh
# Runs inside scripts/testbed: boots the same Debian kernel and busybox initramfs under hv and
# under QEMU (-accel kvm, the same hardware-assisted KVM), alternating, ROUNDS times each, and
# reports for every boot the wall time from process start to the guest's first user-space line
# and to the VMM's exit after ACPI power-off, and the VMM process's peak RSS (GNU time's %M).
#
#   scripts/testbed Benchmarks/testbed/boot-compare.sh [ROUNDS] [CPUS]
#   HV=.build/release/hv (default), QEMU=qemu-system-x86_64, MEM=256 (MiB)
rounds=${1:-3}
cpus=${2:-1}
hv=${HV:-.build/release/hv}
qemu=${QEMU:-qemu-system-x86_64}
mem=${MEM:-256}
kernel=$(ls .build-kernel/boot/vmlinuz-* | head -1)
initrd=.build-testbed/linux-guest.cpio.gz
work=$(mktemp -d)
cmdline="console=ttyS0 hv.cpus=$cpus"

# boot NAME COMMAND...: one boot; prints "NAME user-space-s power-off-s rss-kib".
boot() {
    name=$1; shift
    start=$(date +%s%N)
    /usr/bin/time -f "%M" -o "$work/rss" "$@" < /dev/null 2>"$work/stderr" | while IFS= read -r line; do
        case $line in
            *"hv-guest: kernel="*) date +%s%N > "$work/userspace" ;;
        esac
    done
    end=$(date +%s%N)
    first=$(cat "$work/userspace" 2>/dev/null || echo 0)
    awk -v n="$name" -v s="$start" -v u="$first" -v e="$end" -v r="$(tail -1 "$work/rss")" \
        'BEGIN { printf "%-5s %8.2f %8.2f %8d\n", n, (u > 0 ? (u - s) / 1e9 : -1), (e - s) / 1e9, r }'
    rm -f "$work/userspace"
}

echo "boot-compare: $rounds rounds, $cpus vCPU(s), $mem MiB, $(basename "$kernel")"
echo "vmm   userspace  poweroff  rss-kib"
for round in $(seq "$rounds"); do
    boot hv "$hv" run --kernel "$kernel" --initrd "$initrd" --cpus "$cpus" --mem "${mem}M" --cmdline "$cmdline" --timeout 300
    boot qemu "$qemu" -accel kvm -cpu host -m "$mem" -smp "$cpus" -nodefaults -no-reboot -display none -serial stdio \
        -kernel "$kernel" -initrd "$initrd" -append "$cmdline"
done
rm -rf "$work"
