// The bare-metal image (Documentation/BareMetal.md): built from the repository's Embedded Swift
// and entry stub by scripts/build-baremetal.sh, booted by QEMU's Multiboot loader on its
// software CPU, which emulates AMD-V. The image says what it found and leaves through QEMU's
// isa-debug-exit port.
import Foundation
import HVTestSupport
import Testing

enum BareMetalHost {
    static let qemu = "/usr/bin/qemu-system-x86_64"
    static let unavailableReason: String? = FileManager.default.isExecutableFile(atPath: qemu)
        ? nil : "\(qemu) is missing (scripts/setup.sh installs qemu-system-x86)"
}

@Suite("Bare-metal image", .serialized)
struct BareMetalImageTests {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()

    @Test("scripts/build-baremetal.sh builds a Multiboot image of Embedded Swift; QEMU (TCG, -cpu max) boots it, it finds AMD-V with nested paging, runs a real-mode guest through VMRUN (its I/O, RDMSR, CPUID and HLT intercepted and handled) and leaves through isa-debug-exit with code 0",
          .enabled(if: BareMetalHost.unavailableReason == nil || Requirement.tools, "skipped: \(BareMetalHost.unavailableReason ?? "")"))
    func bootsUnderQEMU() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let build = try PackageExecutable.run([Self.root.appendingPathComponent("scripts/build-baremetal.sh").path, folder.path],
                                              executable: "/bin/bash", in: Self.root)
        #expect(build.status == 0, "\(build.stderr)")
        let image = folder.appendingPathComponent("hv-baremetal.elf32").path
        // The Multiboot header QEMU looks for in the first 8 KiB, and no hosted runtime in the image.
        let bytes = try #require(FileManager.default.contents(atPath: image))
        let magic = Data([0x02, 0xB0, 0xAD, 0x1B])
        #expect(bytes.prefix(8192).range(of: magic) != nil, "no Multiboot header in the first 8 KiB")
        let symbols = try PackageExecutable.run(["-u", folder.appendingPathComponent("hv-baremetal.elf").path], executable: "/usr/bin/nm")
        #expect(symbols.status == 0 && symbols.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty,
                "undefined symbols: \(symbols.stdout)")
        let boot = try PackageExecutable.run(["--kill-after=5", "60", BareMetalHost.qemu, "-accel", "tcg", "-cpu", "max", "-m", "128",
                                              "-kernel", image, "-serial", "stdio", "-display", "none", "-no-reboot",
                                              "-device", "isa-debug-exit,iobase=0xf4,iosize=4"], executable: "/usr/bin/timeout")
        let lines = boot.stdout.split(whereSeparator: \.isNewline).map(String.init)
        #expect(boot.status == 1, "isa-debug-exit with code 0 ends QEMU with status 1; \(boot.status): \(boot.stdout) \(boot.stderr)")
        #expect(lines.first == "HV bare-metal image: Embedded Swift on the bare CPU", "\(boot.stdout)")
        #expect(lines.contains("loader: qemu; 126 MiB above 1 MiB"), "\(boot.stdout)")
        #expect(lines.contains { $0.hasPrefix("cpu: AuthenticAMD") && $0.hasSuffix("svm=1 vmx=0") }, "\(boot.stdout)")
        #expect(lines.contains { $0.hasPrefix("svm: revision 1,") && $0.contains("nested paging yes") }, "\(boot.stdout)")
        // The SVM engine's first guest: real mode behind nested paging, every port and MSR
        // intercepted. 51 characters, each after an IN of the LSR, and the IN that found the NUL.
        #expect(lines.contains("guest: Hello from a real-mode guest under HV's SVM engine"), "\(boot.stdout)")
        #expect(lines.contains("guest: halted at 0x1023; CPUID gave AuthenticAMD"), "\(boot.stdout)")
        let table = Dictionary(lines.compactMap { line -> (String, Int)? in
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count == 3, let count = Int(fields[1]), Int(fields[2]) != nil else { return nil }
            return (String(fields[0]), count)
        }, uniquingKeysWith: { $1 })
        #expect(table == ["io": 103, "msr": 1, "cpuid": 1, "hlt": 1], "\(boot.stdout)")
    }
}
