#!/usr/bin/env bash
# Fetches Debian's kernel image (the package linux-image-amd64 depends on) and unpacks it into
# .build-kernel/ without installing it: the Linux-loader test boots its vmlinuz under
# `hv run --kernel`. Installing the package itself would run initramfs hooks for no purpose.
set -euo pipefail
cd "$(dirname "$0")/.."
destination=.build-kernel
if compgen -G "$destination/boot/vmlinuz-*" >/dev/null; then exit 0; fi

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
echo "fetch-linux-kernel: $(ls "$destination"/boot/vmlinuz-*)"
