#!/bin/sh
# Runs inside scripts/testbed (hardware-assisted KVM): boots Debian's Linux under `hv run` to
# the busybox user space of scripts/linux-guest-initrd in each configuration named on the
# command line (all of them by default), one after another. For each, NAME.log (the serial
# console and hv's own lines) and NAME.status (hv's exit status) land in $TESTBED_OUT, and one
# summary line goes to the console. The Swift suite TestBedTests reads them.
#
#   Tests/TestBed/linux-boots.sh [NAME...]     HV=path/to/hv (default .build/debug/hv)
hv=${HV:-.build/debug/hv}
out=${TESTBED_OUT:?run me inside scripts/testbed}
bzimage=$(ls .build-kernel/boot/vmlinuz-* | head -1)
vmlinux=.build-kernel/vmlinux
initrd=.build-testbed/linux-guest.cpio.gz

# hv's own --timeout 240 stops a guest that does not stop; `bounded` also stops an hv that does
# not (twice a CI bed attempt overran its whole budget inside one boot, cause unknown): such a
# boot ends with status 124 or 137 and is tried again like any failed boot, its first log kept.
bounded() { timeout --kill-after=10 300 "$@"; }

# NAME: vCPUs, irqchip, kernel image
configuration() {
    case $1 in
        bzimage-1cpu-kernel) echo "1 kernel $bzimage" ;;
        bzimage-2cpu-kernel) echo "2 kernel $bzimage" ;;
        pvh-2cpu-kernel) echo "2 kernel $vmlinux" ;;
        bzimage-2cpu-split) echo "2 split $bzimage" ;;
        bzimage-4cpu-kernel) echo "4 kernel $bzimage" ;;
        console-1cpu-kernel) echo "1 kernel $bzimage" ;;
        hvc-1cpu-kernel) echo "1 kernel $bzimage" ;;
        ratelimit-1cpu-kernel) echo "1 kernel $bzimage" ;;
        net-1cpu-kernel) echo "1 kernel $bzimage" ;;
        virtio-1cpu-kernel) echo "1 kernel $bzimage" ;;
        virtio-2cpu-split) echo "2 split $bzimage" ;;
        virtio-pci-2cpu-kernel) echo "2 kernel $bzimage" ;;
        vsock-balloon-1cpu-kernel) echo "1 kernel $bzimage" ;;
        microvm-example) echo "1 kernel $bzimage" ;;
        hyperv-2cpu-kernel) echo "2 kernel $bzimage" ;;
        snapshot-2cpu-kernel) echo "2 kernel $bzimage" ;;
        snapshot-pci-1cpu-kernel) echo "1 kernel $bzimage" ;;
        *) return 1 ;;
    esac
}

[ $# -gt 0 ] || set -- bzimage-1cpu-kernel bzimage-2cpu-kernel pvh-2cpu-kernel bzimage-2cpu-split bzimage-4cpu-kernel console-1cpu-kernel \
    virtio-1cpu-kernel virtio-2cpu-split virtio-pci-2cpu-kernel hvc-1cpu-kernel ratelimit-1cpu-kernel net-1cpu-kernel vsock-balloon-1cpu-kernel microvm-example \
    hyperv-2cpu-kernel snapshot-2cpu-kernel snapshot-pci-1cpu-kernel
# boot NAME: one boot of configuration NAME into $out/NAME.log and $out/NAME.status.
boot() {
    name=$1
    set -- $(configuration "$name") || { echo "linux-boots: unknown configuration $name" >&2; exit 64; }
    cpus=$1 irqchip=$2 kernel=$3
    start=$(date +%s.%N)
    case $name in
    console-* | hvc-*)
        # The guest's init starts a shell on the console (hvc-*: on the virtio console, hvc0);
        # once it says so, two lines are typed into hv's standard input (a FIFO standing in for
        # a keyboard) and the shell's answer must come back on hv's standard output. `exit`
        # ends the shell and the guest powers off.
        fifo=/tmp/hv-console.$$
        rm -f "$fifo" && mkfifo "$fifo"
        case $name in
            hvc-*) console="--console virtio" shell=hv.hvc ready="a shell on hvc0" ;;
            *) console="" shell=hv.shell ready="a shell on the console" ;;
        esac
        bounded "$hv" run --kernel "$kernel" --initrd "$initrd" --cpus "$cpus" --irqchip "$irqchip" --mem 256M $console \
            --timeout 240 --cmdline "console=ttyS0 hv.cpus=$cpus $shell" < "$fifo" > "$out/$name.log" 2>&1 &
        pid=$!
        exec 3> "$fifo"
        waited=0
        until grep -q "$ready" "$out/$name.log" || [ $waited -ge 200 ]; do sleep 1; waited=$((waited + 1)); done
        printf 'echo hv-console-$((6 * 7))\nexit\n' >&3
        wait $pid
        status=$?
        exec 3>&-
        rm -f "$fifo"
        ;;
    virtio-*)
        # Two ext4 images made here (mkfs.ext4 -d copies a file in): vda, which the guest
        # mounts, reads and writes, and vdb, read-only. After the guest powers off, the host
        # reads what it wrote (debugfs) and checks the file system (e2fsck -fn).
        images=/tmp/hv-virtio.$$
        rm -rf "$images" && mkdir -p "$images/content"
        echo "made by the host for $name" > "$images/content/from-host.txt"
        mkfs.ext4 -q -F -d "$images/content" "$images/rw.img" 64M
        mkfs.ext4 -q -F -d "$images/content" "$images/ro.img" 16M
        # virtio-pci-*: the same devices as virtio-pci functions with MSI-X.
        case $name in virtio-pci-*) transport=pci ;; *) transport=mmio ;; esac
        bounded "$hv" run --kernel "$kernel" --initrd "$initrd" --cpus "$cpus" --irqchip "$irqchip" --mem 256M \
            --disk "$images/rw.img,serial=hv-disk-0" --disk "$images/ro.img,ro" --rng --virtio-transport $transport \
            --timeout 240 --cmdline "console=ttyS0 hv.cpus=$cpus hv.virtio" > "$out/$name.log" 2>&1
        status=$?
        debugfs -R "cat /from-guest.txt" "$images/rw.img" > "$out/$name.from-guest" 2>/dev/null
        debugfs -R "dump /blob $images/blob" "$images/rw.img" >/dev/null 2>&1
        md5sum "$images/blob" 2>/dev/null | cut -d' ' -f1 > "$out/$name.blob-md5"
        e2fsck -fn "$images/rw.img" > "$out/$name.fsck" 2>&1
        echo "e2fsck-status=$?" >> "$out/$name.fsck"
        rm -rf "$images"
        ;;
    net-*)
        # In a network namespace of its own (nothing outside sees the TAP): hv creates hvtap0 and
        # brings it up as 10.0.2.1/24; the guest (10.0.2.15) pings it and sends 1 MiB to the
        # busybox nc listening on port 7777, whose MD5 must match the guest's.
        unshare -n sh -c '
            ip link set lo up
            # busybox nc ends at the end of its standard input: give it one that never ends (a
            # FIFO opened for reading and writing has no data and no end).
            mkfifo /tmp/hv-nc-input.$$
            busybox nc -l -p 7777 <> /tmp/hv-nc-input.$$ > "$3/$2.received" &
            listener=$!
            timeout --kill-after=10 300 "$1" run --kernel "$4" --initrd "$5" --cpus 1 --mem 256M --timeout 240 \
                --net tap=hvtap0,mac=52:54:00:ab:cd:ef,host-ip=10.0.2.1/24 \
                --cmdline "console=ttyS0 hv.cpus=1 hv.net=10.0.2.15/24,10.0.2.1" > "$3/$2.log" 2>&1
            status=$?
            sleep 1; kill $listener 2>/dev/null; rm -f /tmp/hv-nc-input.$$
            exit $status' sh "$hv" "$name" "$out" "$kernel" "$initrd"
        status=$?
        md5sum "$out/$name.received" 2>/dev/null | cut -d' ' -f1 > "$out/$name.received-md5"
        ;;
    vsock-balloon-*)
        # vsock: a host echo server on PATH_5000 (the guest connects to port 5000 and checks 4 MiB
        # echoed), and a host program that asks for guest port 5001 through PATH (1 MiB echoed).
        # balloon: the guest touches most of its 256 MiB and frees it; --balloon asks for 128 MiB
        # back once it loads the driver. hv's RSS is sampled every 0.2 s: its peak, and its last
        # value (taken after the balloon inflated, while the guest waits) go to NAME.rss.
        peer=.build-testbed/vsock-peer
        dir=/tmp/hv-vsock.$$
        rm -rf "$dir" && mkdir -p "$dir"
        "$peer" unix-echo "$dir/v.sock_5000" &
        echo_server=$!
        # hv itself in the background (its RSS is what is sampled), bounded by the loop below.
        "$hv" run --kernel "$kernel" --initrd "$initrd" --cpus "$cpus" --irqchip "$irqchip" --mem 256M \
            --vsock "3,$dir/v.sock" --balloon 128M,stats=1 --timeout 240 \
            --cmdline "console=ttyS0 hv.cpus=$cpus hv.vsock=5000 hv.balloon=128" > "$out/$name.log" 2>&1 &
        pid=$!
        "$peer" unix-connect "$dir/v.sock" 5001 1048576 > "$out/$name.host-connect" 2>&1 &
        connector=$!
        peak=0 last=0 loaded=0 before=0 samples=0
        while kill -0 $pid 2>/dev/null; do
            samples=$((samples + 1))
            [ $samples -gt 1500 ] && kill -9 $pid  # 300 s, as `bounded`
            rss=$(awk '/^VmRSS/ { print $2 }' /proc/$pid/status 2>/dev/null)
            if [ -n "$rss" ]; then
                [ "$rss" -gt "$peak" ] && peak=$rss
                # The peak before the driver loads, and the last value while the guest waits after it.
                grep -q 'hv-guest: balloon-loading' "$out/$name.log" || before=$peak
                grep -q 'hv-guest: balloon-done' "$out/$name.log" || last=$rss
            fi
            sleep 0.2
        done
        wait $pid
        status=$?
        echo "before-kib=$before peak-kib=$peak after-kib=$last" > "$out/$name.rss"
        kill $echo_server $connector 2>/dev/null
        rm -rf "$dir"
        ;;
    microvm-example)
        # Examples/MicroVM, the SDK embedder: a disk, a TAP network and an rng as virtio-pci
        # functions; the guest pings the host side of the TAP (in a namespace of its own).
        image=/tmp/hv-microvm.$$.img
        truncate -s 32M "$image"
        unshare -n sh -c '
            ip link set lo up
            timeout --kill-after=10 300 "$1" --kernel "$4" --initrd "$5" --disk "$6" --tap hvtap0 --host-ip 10.0.2.1/24 --timeout 240 \
                --cmdline "console=ttyS0 hv.cpus=1 hv.net=10.0.2.15/24,10.0.2.1" > "$3/$2.log" 2>&1' \
            sh "$(dirname "$hv")/MicroVM" "$name" "$out" "$kernel" "$initrd" "$image"
        status=$?
        rm -f "$image"
        ;;
    snapshot-*)
        # Linux counting on its console and on a virtio-blk disk (hv.count, hv.countdisk: the
        # count goes to the disk's first sector and is read back) is snapshotted through hv ctl and killed
        # (NAME.log), restored in a new hv (NAME.restored.log), then migrated while it counts to
        # a third hv waiting with --incoming (NAME.migrated.log): the console of each in .log,
        # hv's own lines in .err, so the three .log files join into one console stream. hv
        # ctl's answers go to NAME.ctl. The status names the last step that failed (0: none).
        work=/tmp/hv-snapshot.$$
        rm -rf "$work" && mkdir -p "$work"
        ip link set lo up 2>/dev/null  # the migration goes over the bed's loopback
        # wait_for FILE TEXT: until FILE holds TEXT (200 s at most).
        wait_for() { waited=0; until grep -q "$2" "$1" 2>/dev/null || [ $waited -ge 200 ]; do sleep 1; waited=$((waited + 1)); done; grep -q "$2" "$1"; }
        status=0
        # snapshot-pci-*: the disk and the rng as virtio-pci functions (MSI-X, doorbells on the BAR).
        case $name in *-pci-*) transport=pci ;; *) transport=mmio ;; esac
        truncate -s 1M "$work/count.img"
        bounded "$hv" run --kernel "$kernel" --initrd "$initrd" --cpus "$cpus" --irqchip "$irqchip" --mem 256M --api-socket "$work/first.sock" \
            --disk "$work/count.img" --rng --virtio-transport $transport --timeout 240 --cmdline "console=ttyS0 hv.cpus=$cpus hv.count=1000 hv.countdisk" > "$out/$name.log" 2> "$out/$name.err" &
        first=$!
        wait_for "$out/$name.log" "hv-count: 5" || status=11
        "$hv" ctl "$work/first.sock" pause >> "$out/$name.ctl" 2>&1 || status=12
        sleep 1
        # Under the bed's emulated CPU a debug hv takes a while to write 256 MiB: --timeout.
        "$hv" ctl "$work/first.sock" snapshot "$work/snap" --timeout 600 >> "$out/$name.ctl" 2>&1 || status=13
        # SIGKILL to hv itself, not only to the subshell that runs `bounded` (hv is its
        # grandchild, under timeout): a dead hv lets go of its disk's lock.
        pkill -KILL -f -- "--api-socket $work/first.sock"; wait $first 2>/dev/null
        bounded "$hv" run --restore "$work/snap" --api-socket "$work/second.sock" --timeout 240 > "$out/$name.restored.log" 2> "$out/$name.restored.err" &
        second=$!
        wait_for "$out/$name.restored.log" "hv-count: .*" && sleep 3 || status=14
        bounded "$hv" run --incoming 127.0.0.1:47123 --api-socket "$work/third.sock" --timeout 240 > "$out/$name.migrated.log" 2> "$out/$name.migrated.err" &
        third=$!
        wait_for "$out/$name.migrated.err" "waiting for a migration" || status=15
        "$hv" ctl "$work/second.sock" migrate 127.0.0.1:47123 --max-downtime 20 --timeout 600 >> "$out/$name.ctl" 2>&1 || status=16
        wait $second || status=17
        sleep 3
        grep -q "hv-count" "$out/$name.migrated.log" || status=18
        "$hv" ctl "$work/third.sock" stop >> "$out/$name.ctl" 2>&1 || status=19
        wait $third
        rm -rf "$work"
        ;;
    ratelimit-*)
        # Sequential reads and writes as fast as the guest can (blockbench, O_DIRECT, 1 MiB
        # requests) on a disk limited to 8 MiB/s: the guest must measure 8 MiB/s.
        image=/tmp/hv-ratelimit.$$.img
        truncate -s 64M "$image"
        bounded "$hv" run --kernel "$kernel" --initrd "$initrd" --cpus "$cpus" --irqchip "$irqchip" --mem 256M \
            --disk "$image,bw=8M" --timeout 240 \
            --cmdline "console=ttyS0 hv.cpus=$cpus hv.bench=seqread,seqwrite hv.benchsecs=5" > "$out/$name.log" 2>&1
        status=$?
        rm -f "$image"
        ;;
    *)
        # hyperv-*: the guest sees Hyper-V's enlightenments (SynIC, synthetic timers, the
        # reference TSC page) and not KVM's (kvm=off: Linux prefers KVM's when it finds both),
        # as under QEMU's -cpu host,hv_passthrough,kvm=off.
        case $name in hyperv-*) cpu="--cpu host,hv-passthrough,kvm=off" ;; *) cpu= ;; esac
        bounded "$hv" run --kernel "$kernel" --initrd "$initrd" --cpus "$cpus" --irqchip "$irqchip" --mem 256M $cpu \
            --timeout 240 --cmdline "console=ttyS0 hv.cpus=$cpus" > "$out/$name.log" 2>&1
        status=$?
        ;;
    esac
    end=$(date +%s.%N)
    echo "$status" > "$out/$name.status"
    echo "linux-boots: $name: status $status in $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s;" \
        "$(grep -c 'hv-guest: user space reached' "$out/$name.log") user-space marker(s)"
}

# QEMU's emulated SVM has been seen to crash a nested guest now and then (a vCPU triple-faults
# out of nowhere, the registers back at their reset values: Documentation/TestBed.md); a boot
# that fails is tried once more, and the first attempt's log is kept as NAME.first.log.
# A boot that passed in an earlier attempt of the same bed run (the bed is run again when it
# stalls: Documentation/TestBed.md) is kept: its files are in $TESTBED_OUT already, and only the
# boots it had not finished run again.
for name in "$@"; do
    if [ "$(cat "$out/$name.status" 2>/dev/null)" = 0 ] && [ -s "$out/$name.log" ]; then
        echo "linux-boots: $name: passed in an earlier attempt of this bed run; kept"
        continue
    fi
    boot "$name"
    if [ "$(cat "$out/$name.status")" != 0 ]; then
        mv "$out/$name.log" "$out/$name.first.log"
        echo "linux-boots: $name: retrying once (first attempt: $(tail -1 "$out/$name.first.log"))"
        boot "$name"
    fi
done
