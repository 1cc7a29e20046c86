import Foundation
import HVTestSupport
import Testing

/// Debian's kernel image, unpacked by scripts/fetch-linux-kernel.sh (which scripts/setup.sh runs).
private enum DebianKernel {
    static let path: String? = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let boot = root.appendingPathComponent(".build-kernel/boot")
        let names = (try? FileManager.default.contentsOfDirectory(atPath: boot.path)) ?? []
        return names.first { $0.hasPrefix("vmlinuz-") }.map { boot.appendingPathComponent($0).path }
    }()

    /// The uncompressed kernel inside it (an ELF with a PVH entry note), extracted by the same script.
    static let vmlinux: String? = {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        let path = root.appendingPathComponent(".build-kernel/vmlinux").path
        return FileManager.default.fileExists(atPath: path) ? path : nil
    }()
}

extension DebianKernel {
    /// Whether this CPU advertises VMX or SVM (/proc/cpuinfo), so KVM runs guest code natively.
    static let hostHasVTxOrAMDV: Bool = {
        let info = (try? String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)) ?? ""
        return info.split(whereSeparator: \.isNewline).contains { line in
            line.hasPrefix("flags") && line.split(whereSeparator: \.isWhitespace).contains { $0 == "vmx" || $0 == "svm" }
        }
    }()
}

@Suite("hv run: a real Linux kernel")
struct HVRunLinuxTests {
    @Test("Debian's bzImage, loaded by the 64-bit boot protocol, prints its first early-boot serial line",
          .needsKVM,
          .enabled(if: DebianKernel.path != nil || Requirement.tools, "skipped: no Debian kernel image; run scripts/fetch-linux-kernel.sh"))
    func earlyBootLine() throws {
        // The decompressor's early console (earlyprintk=serial) speaks before decompression; full
        // boot to user space is out of reach while KVM emulates guest code (Documentation/HostFacts.md), so the run
        // ends at --timeout (status 4).
        let result = try PackageExecutable.run([
            "run", "--kernel", DebianKernel.path!, "--cmdline", "earlyprintk=serial,ttyS0,115200 nokaslr",
            "--mem", "256M", "--timeout", "15",
        ])
        #expect(result.stdout.contains("KASLR disabled: 'nokaslr' on cmdline."), "stdout: \(result.stdout)")
        #expect(result.status == 4, "stderr: \(result.stderr)")
        #expect(!result.crashed)
        if !DebianKernel.hostHasVTxOrAMDV {
            #expect(result.stderr.components(separatedBy: "hv: note: this CPU has no VT-x/AMD-V").count == 2, "the note once: \(result.stderr)")
        }
    }

    @Test("where KVM emulates guest code, Linux's stop in setup_arch ends in one clear line naming the cause, not a crash report",
          .needsKVM,
          .enabled(if: (DebianKernel.vmlinux != nil || Requirement.tools) && !DebianKernel.hostHasVTxOrAMDV, "skipped: needs .build-kernel/vmlinux and a host without VT-x/AMD-V"))
    func emulatedLinuxStopIsExplained() throws {
        // The PVH entry reaches the emulator's missing instruction (lock cmpxchg16b) in ~40 s here.
        let result = try PackageExecutable.run([
            "run", "--kernel", DebianKernel.vmlinux!, "--cmdline", "console=ttyS0", "--mem", "256M", "--timeout", "170",
        ])
        #expect(result.status == 2, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("A full boot needs VT-x/AMD-V, or the test bed: scripts/testbed"), "\(result.stderr)")
        #expect(result.stderr.contains("hv: Linux reached an instruction this host's KVM cannot emulate"), "\(result.stderr)")
        #expect(!result.stderr.contains("stopped at RIP"), "no crash report: \(result.stderr)")
        #expect(!result.crashed)
    }

    @Test("Debian's vmlinux, booted by its PVH entry, finds HV's ACPI tables: the MADT's CPUs and I/O APIC, the FADT's PM timer",
          .needsKVM,
          .enabled(if: DebianKernel.vmlinux != nil || Requirement.tools, "skipped: no .build-kernel/vmlinux; run scripts/fetch-linux-kernel.sh"))
    func pvhFindsACPITables() throws {
        // No decompressor: Linux itself runs from its first instruction and reaches ACPI table
        // parsing in setup_arch() within seconds, even under emulation. The run is ended once the
        // lines are there (or after the budget); booting on is out of reach here (Documentation/HostFacts.md).
        let markers = [
            "Linux version",
            "ACPI: RSDP 0x00000000000E0000",
            "ACPI: XSDT 0x",
            "ACPI: FACP 0x",
            "ACPI: APIC 0x",
            "ACPI: PM-Timer IO Port: 0x608",
            "IOAPIC[0]: apic_id 0, version 17, address 0xfec00000, GSI 0-23",
            "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
        ]
        let result = try PackageExecutable.runUntil([
            "run", "--kernel", DebianKernel.vmlinux!, "--cmdline", "earlyprintk=serial,ttyS0,115200 console=ttyS0",
            "--mem", "256M", "--cpus", "2", "--timeout", "170",
        ], markers: markers, timeout: 180)
        for marker in markers { #expect(result.stdout.contains(marker), "missing \"\(marker)\"; stdout: \(result.stdout.suffix(3000))") }
        #expect(!result.crashed)
    }
}
