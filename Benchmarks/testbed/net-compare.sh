#!/bin/sh
# Runs inside scripts/testbed: a TCP stream from the guest to the host over virtio-net and a
# TAP, under hv (virtio-net on virtio-mmio; hv creates the TAP) and under QEMU's microvm machine
# (virtio-net-device on virtio-mmio, -netdev tap without vhost, -accel kvm), alternating, ROUNDS
# times each, each in a network namespace of its own. The same Debian kernel and busybox
# initramfs send MEGABYTES MiB of random data with busybox nc to a busybox nc on the host; the
# time is the guest's, from nc's start until the host has acknowledged every byte and the FIN.
#
#   scripts/testbed Benchmarks/testbed/net-compare.sh [ROUNDS] [MEGABYTES]
#   HV=.build/release/hv (default), QEMU=qemu-system-x86_64, MEM=256 (MiB)
rounds=${1:-3}
megabytes=${2:-16}
hv=${HV:-.build/release/hv}
qemu=${QEMU:-qemu-system-x86_64}
mem=${MEM:-256}
kernel=$(ls .build-kernel/boot/vmlinuz-* | head -1)
work=$(mktemp -d)
scripts/linux-guest-initrd "$work/initrd.cpio.gz" >/dev/null || exit 1
cmdline="console=ttyS0 hv.cpus=1 hv.net=10.0.2.15/24,10.0.2.1 hv.netmb=$megabytes"

# run NAME: one transfer in a fresh network namespace; prints "NAME seconds MiB/s md5-ok".
run() {
    unshare -n sh -c '
        ip link set lo up
        mkfifo "$2/input"
        busybox nc -l -p 7777 <> "$2/input" > "$2/received" &
        listener=$!
        if [ "$1" = hv ]; then
            "$3" run --kernel "$5" --initrd "$2/initrd.cpio.gz" --mem "$6M" --timeout 120 \
                --net tap=hvtap0,host-ip=10.0.2.1/24 --cmdline "$7" > "$2/log" 2>&1
        else
            ( waited=0
              until ip link show qtap0 >/dev/null 2>&1 || [ $waited -ge 300 ]; do sleep 0.1; waited=$((waited + 1)); done
              ip addr add 10.0.2.1/24 dev qtap0 && ip link set qtap0 up ) &
            "$4" -M microvm,acpi=on,rtc=on -accel kvm -cpu host -m "$6" -smp 1 -nodefaults -no-reboot -display none \
                -serial stdio -kernel "$5" -initrd "$2/initrd.cpio.gz" -append "$7" \
                -netdev tap,id=net0,ifname=qtap0,script=no,downscript=no,vhost=off \
                -device virtio-net-device,netdev=net0,mac=52:54:00:12:34:56 < /dev/null > "$2/log" 2>&1
        fi
        sleep 1; kill $listener 2>/dev/null; rm -f "$2/input"' sh "$1" "$work" "$hv" "$qemu" "$kernel" "$mem" "$cmdline"
    seconds=$(tr -d '\r' < "$work/log" | sed -n 's/^hv-guest: tcp-seconds=//p')
    sent=$(tr -d '\r' < "$work/log" | sed -n 's/^hv-guest: sent-md5=//p')
    got=$(md5sum "$work/received" | cut -d' ' -f1)
    awk -v n="$1" -v s="${seconds:-0}" -v m="$megabytes" -v ok="$([ "$sent" = "$got" ] && echo yes || echo NO)" \
        'BEGIN { printf "%-5s %8.2f %8.2f %s\n", n, s, (s > 0 ? m / s : 0), ok }'
    [ "$sent" = "$got" ] || { echo "net-compare: $1 failed; the end of its console:" >&2; tail -8 "$work/log" >&2; }
}

echo "net-compare: $rounds rounds, $megabytes MiB guest-to-host over TCP, 1 vCPU, $mem MiB, $(basename "$kernel")"
echo "vmm    seconds    MiB/s  md5-ok"
for round in $(seq "$rounds"); do
    run hv
    run qemu
done | tee "$work/results"
median() { awk -v v="$1" '$1 == v { print $3 }' "$work/results" | sort -n | awk '{ a[NR] = $1 } END { print (NR ? a[int((NR + 1) / 2)] : 0) }'; }
awk -v h="$(median hv)" -v q="$(median qemu)" 'BEGIN { printf "median MiB/s: hv %.2f, qemu %.2f, hv/qemu %.2f\n", h, q, (q > 0 ? h / q : 0) }'
rm -rf "$work"
