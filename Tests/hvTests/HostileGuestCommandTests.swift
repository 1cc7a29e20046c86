// A hostile guest against everything `hv run` attaches, as a user runs it: the TPM's TIS window,
// the split irqchip's I/O APIC, every virtio-mmio device's registers and queues (rings placed
// across the end of RAM and at addresses RAM does not have), every PCI function's configuration
// space (BARs included), port 0x92; under the default seccomp confinement, so a device that
// reacted with a system call it never makes would stop hv too. The guest must still print and
// exit cleanly, and hv must stay small. (HVCoreTests' HostileGuestTests covers the PC platform
// devices through the SDK; this one adds what only `hv run` puts together.)
import Foundation
import HVGuest
import Testing
#if canImport(Glibc)
import Glibc
#endif

@Suite("A hostile guest against hv run's whole machine", .serialized)
struct HostileGuestCommandTests {
    static let memory: UInt64 = 32 << 20

    /// Writes all-ones (and reads) every dword register of the window at `base`, `size` bytes.
    static func sweep(_ a: inout X86Assembler, base: UInt32, size: UInt32, _ name: String) {
        a.mov(Register32.ebx, Immediate(UInt64(base)))
        let loop = a.label(name)
        a.bind(loop)
        a.mov(Register32.eax, .at(Register64.rbx))
        a.mov(Register8.al, .at(Register64.rbx))
        a.mov(Register32.eax, 0xFFFF_FFFF)
        a.mov(.at(Register64.rbx), Register32.eax)
        a.add(Register32.ebx, 4)
        a.cmp(Register32.ebx, Immediate(UInt64(base &+ size)))
        a.jb(loop)
    }

    static func write32(_ a: inout X86Assembler, _ address: UInt32, _ value: UInt32) {
        a.mov(Register32.ebx, Immediate(UInt64(address)))
        a.mov(Register32.eax, Immediate(UInt64(value)))
        a.mov(.at(Register64.rbx), Register32.eax)
    }

    /// PCI configuration mechanism #1: selects the address in ESI (CONFIG_ADDRESS, 0xCF8) and
    /// reads the dword it names into EAX (CONFIG_DATA, 0xCFC); DX is left at 0xCFC.
    static func readConfig(_ a: inout X86Assembler) {
        a.mov(Register32.eax, Register32.esi)
        a.mov(Register16.dx, 0xCF8)
        a.out(Register16.dx, Register32.eax)
        a.mov(Register16.dx, 0xCFC)
        a.in(Register32.eax, Register16.dx)
    }

    static func program(transport: String) throws -> GuestProgram {
        try GuestProgram.longMode { a in
            if transport == "pci" { virtioPCI(&a) } else { virtioMMIO(&a) }
            attackTheRest(&a)
        }
    }

    /// virtio-pci: every memory BAR of every function on bus 0 (the virtio functions' common,
    /// notification, ISR and device configuration and their MSI-X tables), its first 16 KiB
    /// read and written with all-ones: device status with every bit, queue sizes and addresses
    /// of all-ones, MSI-X entries pointing nowhere, notifications.
    static func virtioPCI(_ a: inout X86Assembler) {
        a.mov(Register32.esi, 0x8000_0010)  // bus 0, device 0, function 0, BAR0
        let bar = a.label("bar"), next = a.label("nextBAR")
        a.bind(bar)
        readConfig(&a)
        a.test(Register8.al, 1)  // an I/O BAR
        a.jnz(next)
        a.and(Register32.eax, 0xFFFF_FFF0)
        a.jz(next)  // not implemented, or the upper half of a 64-bit BAR
        a.cmp(Register32.eax, 0xFEC0_0000)  // not a window below the I/O APIC: not one of ours
        a.jae(next)
        a.mov(Register32.ebx, Register32.eax)
        a.mov(Register32.ecx, 4096)
        let sweep = a.label("barSweep")
        a.bind(sweep)
        a.mov(Register32.eax, .at(Register64.rbx))
        a.mov(Register32.eax, 0xFFFF_FFFF)
        a.mov(.at(Register64.rbx), Register32.eax)
        a.add(Register32.ebx, 4)
        a.loop(sweep)
        a.bind(next)
        a.add(Register32.esi, 4)
        a.mov(Register32.eax, Register32.esi)
        a.and(Register32.eax, 0xFF)
        a.cmp(Register32.eax, 0x28)  // past BAR5: the next device
        a.jb(bar)
        a.and(Register32.esi, 0xFFFF_FF00)
        a.add(Register32.esi, 0x810)
        a.cmp(Register32.esi, 0x8001_0000)
        a.jb(bar)
    }

    /// virtio-mmio slots 0-3 (disk, rng, vsock, balloon): a driver's set-up with every queue's
    /// rings across the end of RAM or above 4 GiB, notifications, then every register written
    /// with all-ones (4.2.2, "MMIO Device Register Layout").
    static func virtioMMIO(_ a: inout X86Assembler) {
        for slot: UInt32 in 0..<4 {
            let base = 0xD000_0000 + slot * 0x1000
            write32(&a, base + 0x70, 0)  // Status: reset
            write32(&a, base + 0x70, 1 | 2)  // ACKNOWLEDGE | DRIVER
            write32(&a, base + 0x24, 1)  // DriverFeaturesSel: the high word (VERSION_1)
            write32(&a, base + 0x20, 0xFFFF_FFFF)
            write32(&a, base + 0x24, 0)
            write32(&a, base + 0x20, 0xFFFF_FFFF)
            write32(&a, base + 0x70, 1 | 2 | 8)  // FEATURES_OK
            for queue: UInt32 in 0..<4 {
                write32(&a, base + 0x30, queue)  // QueueSel
                write32(&a, base + 0x38, 0x100)  // QueueNum
                write32(&a, base + 0x80, UInt32(memory - 16))  // QueueDesc: the last 16 bytes of RAM
                write32(&a, base + 0x84, 0)
                write32(&a, base + 0x90, UInt32(memory - 2))  // QueueDriver: straddles the end
                write32(&a, base + 0x94, 0)
                write32(&a, base + 0xA0, 0xFFFF_F000)  // QueueDevice: above 4 GiB, no RAM
                write32(&a, base + 0xA4, 0xFFFF_FFFF)
                write32(&a, base + 0x44, 1)  // QueueReady
            }
            write32(&a, base + 0x70, 1 | 2 | 8 | 4)  // DRIVER_OK
            for queue: UInt32 in 0..<4 { write32(&a, base + 0x50, queue) }  // QueueNotify
            sweep(&a, base: base, size: 0x200, "virtio\(slot)")
        }
    }

    /// The TIS, the I/O APIC, PCI configuration space, port 0x92; then the closing line.
    static func attackTheRest(_ a: inout X86Assembler) {

        // The TPM's TIS window, every locality (5 x 4 KiB): request each, write a command
        // whose size field says 4 GiB and 5,000 bytes of it into the FIFO, tpmGo, then every
        // register with all-ones.
        for locality: UInt32 in 0..<5 {
            let base = 0xFED4_0000 + locality * 0x1000
            write32(&a, base, 0x02)  // TPM_ACCESS: requestUse
            write32(&a, base + 0x18, 0x40)  // TPM_STS: commandReady
            a.mov(Register32.ebx, Immediate(UInt64(base + 0x24)))  // TPM_DATA_FIFO
            a.mov(Register32.ecx, 5000)
            let fifo = a.label("fifo\(locality)")
            a.bind(fifo)
            a.mov(Register8.al, 0xFF)
            a.mov(.at(Register64.rbx), Register8.al)
            a.loop(fifo)
            write32(&a, base + 0x18, 0x20)  // TPM_STS: tpmGo
            sweep(&a, base: base, size: 0x1000, "tis\(locality)")
        }

        // The split irqchip's I/O APIC: every register index, read, then all-ones (a
        // redirection entry of all-ones is masked, so nothing is delivered).
        a.xor(Register32.esi, Register32.esi)
        let ioapic = a.label("ioapic")
        a.bind(ioapic)
        a.mov(Register32.ebx, 0xFEC0_0000)
        a.mov(.at(Register64.rbx), Register32.esi)
        a.mov(Register32.eax, .at(Register64.rbx, 0x10))
        a.mov(Register32.eax, 0xFFFF_FFFF)
        a.mov(.at(Register64.rbx, 0x10), Register32.eax)
        a.inc(Register32.esi)
        a.cmp(Register32.esi, 0x100)
        a.jb(ioapic)

        // Every PCI function on bus 0: every dword of its configuration space written with
        // all-ones (BAR sizing left unfinished: the BARs stay all-ones) and read back.
        a.mov(Register32.esi, 0x8000_0000)
        let config = a.label("config")
        a.bind(config)
        readConfig(&a)
        a.mov(Register32.eax, 0xFFFF_FFFF)
        a.out(Register16.dx, Register32.eax)
        a.add(Register32.esi, 4)
        a.cmp(Register32.esi, 0x8001_0000)
        a.jb(config)

        // Port 0x92 (System Control Port A): every value with bit 0 clear (bit 0 is the
        // fast reset, which would end the run as a reset, not an attack).
        a.xor(Register32.esi, Register32.esi)
        let port92 = a.label("port92")
        a.bind(port92)
        a.in(Register8.al, 0x92)
        a.mov(Register32.eax, Register32.esi)
        a.out(0x92, Register8.al)
        a.add(Register32.esi, 2)
        a.cmp(Register32.esi, 0x100)
        a.jb(port92)
        a.mov(Register8.al, 0x02)  // A20 back on
        a.out(0x92, Register8.al)

        a.printString("hostile guest: the whole machine attacked, the VM still runs\n")
        a.debugExit(code: 0)
    }

    @Test("after attacking the TIS, the I/O APIC, every virtio device and queue, every PCI function and port 0x92, the guest still prints and exits cleanly, under seccomp, and hv stayed small",
          .needsKVM, arguments: ["mmio", "pci"])
    func hostileGuestAgainstHVRun(transport: String) throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let image = folder.appendingPathComponent("hostile.bin")
        try Data(try Self.program(transport: transport).code).write(to: image)
        let disk = folder.appendingPathComponent("disk.img")
        try Data(count: 1 << 20).write(to: disk)
        let arguments = [
            "run", "--mem", "32M", "--platform", "pc", "--irqchip", "split", "--test-devices",
            "--tpm", folder.appendingPathComponent("tpm").path,
            "--disk", disk.path, "--rng", "--vsock", "3,\(folder.appendingPathComponent("vsock").path)", "--balloon", "1M",
            "--virtio-transport", transport, "--timeout", "240", image.path,
        ]
        // hv's peak resident set (VmHWM), sampled until it exits.
        var peakKiB = 0
        let result = try PackageExecutable.run(arguments) { process in
            let status = (try? String(contentsOfFile: "/proc/\(process.processIdentifier)/status", encoding: .utf8)) ?? ""
            if let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmHWM:") }),
               let kib = Int(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") {
                peakKiB = max(peakKiB, kib)
            }
        }
        #expect(result.stdout.hasSuffix("hostile guest: the whole machine attacked, the VM still runs\n"), "stdout: \(result.stdout.suffix(300))")
        #expect(result.status == 1, "status \(result.status), stderr: \(result.stderr)")  // debug-exit code 0
        #expect(!result.stderr.contains("seccomp"), "\(result.stderr)")
        #expect(result.stderr.contains("hv: the guest wrote 0 (0x0) to the debug-exit port"), "\(result.stderr)")
        // Guest RAM is 32 MiB; the rest is hv, libtpms and the Swift runtime.
        #expect(peakKiB > 0 && peakKiB < 160 << 10, "peak RSS \(peakKiB) KiB")
    }
}
