#!/usr/bin/env bash
# Installs the system packages HV builds and tests with, if any are missing (Debian/Ubuntu).
#   linux-libc-dev  <linux/kvm.h> for the CKVM shim
#   binutils        GNU as/objcopy: tests cross-check HV's x86 assembler against them
#   libc6-dev       glibc headers
#   libtpms-dev, pkg-config   the virtual TPM's engine (CLibTPMS)
#   libseccomp-dev  the seccomp allow-lists that confine a running VMM (CSeccomp)
#   tpm2-tools, swtpm, swtpm-tools   real TPM clients and the reference server for vTPM tests
#   qemu-system-x86, busybox-static, cpio   the hardware-assisted test bed (scripts/testbed) and
#                   the busybox guest Linux boots into (scripts/linux-guest-initrd)
#   e2fsprogs       mkfs.ext4/debugfs/e2fsck: the ext4 images the virtio-blk tests boot Linux with
#   acpica-tools    iasl, which disassembles HV's DSDT in the ACPI tests
#   gcc             builds the static block benchmark the test bed's guest runs (Benchmarks/testbed)
#   chromium, chromium-driver   the headless browser the dashboard test drives (Tests/Browser)
#   socat           bridges a VM's API socket to TCP for schemathesis (Tests/API)
#   python3-venv    the folder .build-python: schemathesis and Selenium from PyPI, pinned
#   hey             the HTTP load client of Benchmarks/api-load.sh
#   libsqlite3-dev  SQLite for GRDB, hv serve's metric history
#   openssl, curl   a test certificate and an HTTPS client for hv serve's TLS test
#   grub-pc-bin, grub-common, xorriso, mtools   the bare-metal image's GRUB rescue ISO
#                   (scripts/build-baremetal.sh: Multiboot 2, for Bochs and real machines)
# Swift itself (6.1 or later) must already be on PATH.
set -euo pipefail

packages=(linux-libc-dev binutils libc6-dev libtpms-dev libseccomp-dev pkg-config tpm2-tools swtpm swtpm-tools qemu-system-x86 busybox-static cpio e2fsprogs acpica-tools gcc chromium chromium-driver socat python3-venv hey libsqlite3-dev openssl curl grub-pc-bin grub-common xorriso mtools)
missing=()
for package in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed" || missing+=("$package")
done

if ((${#missing[@]})); then
    echo "setup: installing ${missing[*]}"
    if [ "$(id -u)" -eq 0 ]; then sudo=""; else sudo="sudo"; fi
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The API conformance and dashboard tests' Python tools, in a folder of their own (ignored by git).
python_tools="$(cd "$(dirname "$0")/.." && pwd)/.build-python"
if ! "$python_tools/bin/python" -c "import schemathesis, selenium" 2>/dev/null; then
    echo "setup: installing schemathesis and selenium into $python_tools"
    python3 -m venv "$python_tools"
    "$python_tools/bin/pip" install --quiet --disable-pip-version-check schemathesis==4.32.5 selenium==4.51.0
fi

# Debian's kernel image for the Linux-loader test (unpacked, not installed); not fatal.
"$(dirname "$0")/fetch-linux-kernel.sh" || echo "setup: note: Debian's kernel image could not be fetched; the Linux early-boot test will be skipped" >&2

command -v swift >/dev/null || { echo "setup: swift is not on PATH (HV needs Swift 6.1 or later)" >&2; exit 1; }

if [ ! -e /dev/kvm ]; then
    echo "setup: note: /dev/kvm is absent; tests that need KVM will be skipped and 'hv demo' cannot run" >&2
elif [ ! -r /dev/kvm ] || [ ! -w /dev/kvm ]; then
    echo "setup: note: /dev/kvm is not accessible to $(id -un); add yourself to its group ($(stat -c %G /dev/kvm))" >&2
fi
