#!/usr/bin/env bash
# Fetches Debian's kernel image (the package linux-image-amd64 depends on) and unpacks it into
# .build-kernel/ without installing it: the Linux-loader tests boot its vmlinuz (a bzImage) and
# the uncompressed vmlinux inside it (an ELF with a PVH entry note) under `hv run --kernel`.
# Installing the package itself would run initramfs hooks for no purpose. The modules the
# hardware-assisted test bed loads (KVM for AMD-V, and 9p over virtio for its shares; see
# scripts/testbed; tun for the TAP interfaces of virtio-net) and those the Linux guest under HV
# loads (virtio-mmio, virtio-pci, virtio-blk, -rng, -console, -net, -vsock and -balloon, ext4; see
# scripts/linux-guest-initrd) are kept beside it under
# .build-kernel/lib/modules/, each list in load order.
set -euo pipefail
cd "$(dirname "$0")/.."
destination=.build-kernel

# The bzImage's payload (boot.rst: payload_offset at 0x248 and payload_length at 0x24C, counted
# from the protected-mode code after the (setup_sects + 1) * 512 setup bytes) is the compressed
# vmlinux; Debian compresses it with xz (zstd and gzip are recognised too).
extract_vmlinux() {
    local image=$1 output=$2 setup offset length start magic
    setup=$(od -An -tu1 -j $((0x1F1)) -N1 "$image" | tr -d ' ')
    [ "$setup" -eq 0 ] && setup=4
    read -r offset length < <(od -An -tu4 -j $((0x248)) -N8 "$image")
    start=$(( (setup + 1) * 512 + offset ))
    magic=$(od -An -tx1 -j "$start" -N4 "$image" | tr -d ' ')
    case $magic in
        fd377a58) decompress="xz -dc" ;;
        28b52ffd) decompress="zstd -dc" ;;
        1f8b*) decompress="gzip -dc" ;;
        *) echo "fetch-linux-kernel: unknown payload compression (magic $magic)" >&2; return 1 ;;
    esac
    # The kernel's xz stream ends without the index xz expects, so xz reports "unexpected end of
    # input" after writing everything: judge the result, not the exit status. It must be an ELF
    # file holding every byte its program headers name.
    tail -c +$((start + 1)) "$image" | head -c "$length" | $decompress > "$output.tmp" 2>/dev/null || true
    local size end=0 type fileOffset vaddr paddr fileSize rest
    size=$(stat -c %s "$output.tmp")
    while read -r type fileOffset vaddr paddr fileSize rest; do
        [ "$type" = LOAD ] && (( fileOffset + fileSize > end )) && end=$(( fileOffset + fileSize ))
    done < <(readelf -lW "$output.tmp" 2>/dev/null)
    if [ "$end" -eq 0 ] || [ "$size" -lt "$end" ]; then rm -f "$output.tmp"; return 1; fi
    mv "$output.tmp" "$output"
    echo "fetch-linux-kernel: $output (uncompressed from $image)"
}

# The test bed's modules, in load order (each after those it depends on).
bed_modules=(
    virt/lib/irqbypass.ko arch/x86/kvm/kvm.ko drivers/crypto/ccp/ccp.ko arch/x86/kvm/kvm-amd.ko
    drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_pci_legacy_dev.ko
    drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci.ko
    fs/netfs/netfs.ko fs/fscache/fscache.ko net/9p/9pnet.ko net/9p/9pnet_virtio.ko fs/9p/9p.ko
    drivers/net/tun.ko
)

# The guest's modules, in load order (Debian builds virtio-mmio and ext4 as modules).
guest_modules=(
    drivers/virtio/virtio_ring.ko drivers/virtio/virtio.ko drivers/virtio/virtio_mmio.ko
    drivers/virtio/virtio_pci_legacy_dev.ko drivers/virtio/virtio_pci_modern_dev.ko drivers/virtio/virtio_pci.ko
    drivers/block/virtio_blk.ko drivers/char/hw_random/virtio-rng.ko drivers/char/virtio_console.ko
    lib/crc16.ko fs/mbcache.ko fs/jbd2/jbd2.ko crypto/crc32c_generic.ko fs/ext4/ext4.ko
    net/core/failover.ko drivers/net/net_failover.ko drivers/net/virtio_net.ko
    net/vmw_vsock/vsock.ko net/vmw_vsock/vmw_vsock_virtio_transport_common.ko net/vmw_vsock/vmw_vsock_virtio_transport.ko
    drivers/virtio/virtio_balloon.ko
)

if compgen -G "$destination/boot/vmlinuz-*" >/dev/null && [ "$(cat "$destination/lib/modules/guest-load-order" 2>/dev/null)" = "$(printf '%s\n' "${guest_modules[@]}")" ]; then
    [ -e "$destination/vmlinux" ] || extract_vmlinux "$(ls "$destination"/boot/vmlinuz-* | head -1)" "$destination/vmlinux"
    exit 0
fi

package() { apt-cache depends linux-image-amd64 2>/dev/null | awk '/Depends: linux-image-[0-9]/ { print $2; exit }'; }
name=$(package)
if [ -z "$name" ]; then
    if [ "$(id -u)" -eq 0 ]; then apt-get update -qq; else sudo apt-get update -qq; fi
    name=$(package)
fi
[ -n "$name" ] || { echo "fetch-linux-kernel: no linux-image-amd64 in the package lists" >&2; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && apt-get download -qq "$name" 2>/dev/null)
mkdir -p "$destination"
dpkg-deb -x "$work"/*.deb "$work/root"
mkdir -p "$destination/boot"
cp "$work"/root/boot/vmlinuz-* "$destination/boot/"
for module in "${bed_modules[@]}" "${guest_modules[@]}"; do
    for source in "$work"/root/lib/modules/*/kernel/"$module"; do
        target="$destination/lib/modules/${source#"$work"/root/lib/modules/}"
        mkdir -p "$(dirname "$target")"
        cp "$source" "$target"
    done
done
printf '%s\n' "${bed_modules[@]}" > "$destination/lib/modules/load-order"
printf '%s\n' "${guest_modules[@]}" > "$destination/lib/modules/guest-load-order"
echo "fetch-linux-kernel: $(ls "$destination"/boot/vmlinuz-*)"
extract_vmlinux "$(ls "$destination"/boot/vmlinuz-* | head -1)" "$destination/vmlinux" \
    || echo "fetch-linux-kernel: note: could not uncompress vmlinux; the PVH Linux test will be skipped" >&2
