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

    /// The count column of an exit table (`kind count ...` rows) in `lines`.
    static func counts(_ lines: some Sequence<String>) -> [String: Int] {
        var table: [String: Int] = [:]
        for line in lines {
            let fields = line.split(separator: " ", omittingEmptySubsequences: true)
            guard fields.count >= 2, let count = Int(fields[1]), Int(fields[0]) == nil else { continue }
            table[String(fields[0])] = count
        }
        return table
    }

    @Test("scripts/build-baremetal.sh builds a Multiboot image of Embedded Swift; QEMU (TCG, -cpu max) boots it from -kernel and from its GRUB ISO; it finds AMD-V with nested paging and runs, on its own SVM engine, the real-mode test guest (trapped and passed-through MSRs, MMIO arithmetic emulated, a read-only page's nested page fault, HLT woken by an injected APIC timer interrupt, host-timer slices) and then hv demo's guest with hv demo's exit handler: the same output and the same exits per kind as hv demo on KVM",
          .needsKVM, .enabled(if: BareMetalHost.unavailableReason == nil || Requirement.tools, "skipped: \(BareMetalHost.unavailableReason ?? "")"))
    func bootsUnderQEMU() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let build = try PackageExecutable.run([Self.root.appendingPathComponent("scripts/build-baremetal.sh").path, folder.path],
                                              executable: "/bin/bash", environment: ["HV": PackageExecutable.binDirectory.appendingPathComponent("hv").path],
                                              in: Self.root)
        #expect(build.status == 0, "\(build.stderr)")
        let image = folder.appendingPathComponent("hv-baremetal.elf32").path
        // The Multiboot header QEMU looks for in the first 8 KiB, and no hosted runtime in the image.
        let bytes = try #require(FileManager.default.contents(atPath: image))
        let magic = Data([0x02, 0xB0, 0xAD, 0x1B]), magic2 = Data([0xD6, 0x50, 0x52, 0xE8])
        #expect(bytes.prefix(8192).range(of: magic) != nil, "no Multiboot header in the first 8 KiB")
        #expect(bytes.prefix(32768).range(of: magic2) != nil, "no Multiboot 2 header in the first 32 KiB")
        let symbols = try PackageExecutable.run(["-u", folder.appendingPathComponent("hv-baremetal.elf").path], executable: "/usr/bin/nm")
        #expect(symbols.status == 0 && symbols.stdout.trimmingCharacters(in: .whitespacesAndNewlines).isEmpty,
                "undefined symbols: \(symbols.stdout)")
        let boot = try PackageExecutable.run(["--kill-after=5", "120", BareMetalHost.qemu, "-accel", "tcg", "-cpu", "max", "-m", "128",
                                              "-kernel", image, "-serial", "stdio", "-display", "none", "-no-reboot",
                                              "-device", "isa-debug-exit,iobase=0xf4,iosize=4"], executable: "/usr/bin/timeout")
        let lines = boot.stdout.split(whereSeparator: \.isNewline).map(String.init)
        #expect(boot.status == 1, "isa-debug-exit with code 0 ends QEMU with status 1; \(boot.status): \(boot.stdout) \(boot.stderr)")
        #expect(lines.first == "HV bare-metal image: Embedded Swift on the bare CPU", "\(boot.stdout)")
        #expect(lines.contains("loader: qemu (Multiboot 1); 126 MiB above 1 MiB"), "\(boot.stdout)")
        // The page allocator takes the loader's map: 1-4 MiB and 64-127 MiB are outside the image
        // and its heap.
        #expect(lines.contains { $0.hasPrefix("memory: ") && $0.hasSuffix("; 66 MiB outside the image and its heap for guests and their tables") },
                "\(boot.stdout)")
        // Each guest ran on a 16 KiB host stack (the configuration's host-stack size) and used some of it.
        let stacks = lines.filter { $0.hasPrefix("host stack: 16384 bytes (the configuration's host-stack size), ") }
        #expect(stacks.count == 3, "\(boot.stdout)")
        for line in stacks {
            let used = Int(line.split(separator: " ").dropLast().last ?? "") ?? 0
            #expect(used > 0 && used < 16384, "\(line)")
        }
        #expect(lines.contains { $0.hasPrefix("cpu: AuthenticAMD") && $0.hasSuffix("svm=1 vmx=0") }, "\(boot.stdout)")
        #expect(lines.contains { $0.hasPrefix("svm: revision 1,") && $0.contains("nested paging yes") }, "\(boot.stdout)")
        // 1. The real-mode test guest: each step prints its line only when the engine got it
        // right (a wrong answer ends the guest with code 1 instead of its HLT).
        let demoAt = try #require(lines.firstIndex(of: "3. hv demo's guest, with hv demo's exit handler:"), "\(boot.stdout)")
        let latencyAt = try #require(lines.firstIndex(of: "2. Exit latency as the guest measures it:"), "\(boot.stdout)")
        for line in ["1. The real-mode test guest:", "Hello from a real-mode guest under HV's bare-metal engine",
                     "MSRs: TSC trapped, FS base passed through, TSC_AUX kept by the host, an unknown MSR a #GP",
                     "MMIO at 0x6000: MOV, ADD, CMP, AND, TEST emulated",
                     "REP OUTSB wrote this line", "MOVS, STOS, LODS at 0x6000 and REP INSB emulated",
                     // Its write to the page the nested page tables map read-only: a nested page
                     // fault with the present and write bits, reported, dropped, and the guest goes on.
                     "svm: a 2-byte write to read-only guest page 0x5000 at RIP 0x1134, dropped",
                     "HLT woken by the APIC timer's interrupt",
                     "It stopped: HLT; CPUID gave it AuthenticAMD; the read-only page still holds 0x0",
                     "1 interrupt injected, 1 HLT woken by the APIC timer"] {
            #expect(lines[..<latencyAt].contains(line), "\(line): \(boot.stdout)")
        }
        // 58 characters of greeting and the other lines' 229, each after an IN of the LSR, and
        // an IN per line for the NUL; one exit for REP OUTSB's 26 bytes and one for REP INSB's 4
        // (batched, as KVM batches them); MMIO: the MOV/ALU reads and writes, three for REP
        // STOSW, one each for LODSW and both MOVSW; RDMSR of TSC, TSC_AUX, the unknown MSR (#GP)
        // and IA32_APIC_BASE; WRMSR of TSC_AUX, APIC_BASE, four timer registers and EOI; none for
        // FS base (passed through). The host APIC timer's slices (SVM's stand-in for VMX's
        // preemption timer) vary with the host.
        let testAt = try #require(lines.firstIndex(of: "1. The real-mode test guest:"), "\(boot.stdout)")
        var test = Self.counts(lines[testAt..<latencyAt])
        let slices = test.removeValue(forKey: "preemption-timer") ?? 0
        test.removeValue(forKey: "total")
        #expect(test == ["io-in": 293, "io-out": 288, "mmio-read": 8, "mmio-write": 7, "hlt": 2, "msr-read": 4, "msr-write": 7,
                         "cpuid": 1, "ro-write": 1], "\(boot.stdout)")
        #expect(slices >= 1, "the busy loop outlasts a host-timer slice: \(boot.stdout)")
        // 2. The latency guest's own measure: six kinds, each a median and a 99th percentile of
        // 512 RDTSC differences (QEMU's cycles, so only their presence and order are checked).
        var measured: [String: (median: Int, p99: Int)] = [:]
        for line in lines[latencyAt..<demoAt] {
            let fields = line.split(separator: " ")
            guard fields.count >= 3, let median = Int(fields[1]), let p99 = Int(fields[2]) else { continue }
            measured[String(fields[0])] = (median, p99)
        }
        #expect(Set(measured.keys) == ["io-out", "io-in", "cpuid", "msr-read", "mmio-write", "mmio-read"], "\(boot.stdout)")
        for (kind, value) in measured { #expect(value.median > 0 && value.p99 >= value.median, "\(kind): \(boot.stdout)") }
        // 2. The very guest and handler of hv demo.
        for line in ["Hello from a guest in 64-bit long mode, running on HV over KVM!", "MMIO scratch register read back what the guest wrote.",
                     "Goodbye.", "The guest stopped: the guest wrote 0 to the debug-exit port.",
                     "It wrote POST codes 0x1, 0x2, 0x3 and read port 0x60 3 times."] {
            #expect(lines.contains(line), "\(line): \(boot.stdout)")
        }
        // The image's own faults are reported, not silent: fault=pf reads above the 4 GiB it
        // maps, fault=ud executes UD2; each stops it with exit code 3 (QEMU status 7).
        for (fault, expected) in [("pf", ["exception 14 (#PF), error code 0x0 at RIP", "CR2 0x200000000: the address that faulted"]),
                                  ("ud", ["exception 6 (#UD), error code 0x0 at RIP"])] {
            let faulted = try PackageExecutable.run(["--kill-after=5", "60", BareMetalHost.qemu, "-accel", "tcg", "-cpu", "max", "-m", "128",
                                                     "-kernel", image, "-append", "fault=\(fault)", "-serial", "stdio", "-display", "none",
                                                     "-no-reboot", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"], executable: "/usr/bin/timeout")
            #expect(faulted.status == 7, "fault=\(fault): \(faulted.status) \(faulted.stdout)")
            for text in expected { #expect(faulted.stdout.contains(text), "fault=\(fault): \(faulted.stdout)") }
            #expect(faulted.stdout.contains("rax=0x"), "fault=\(fault): the registers: \(faulted.stdout)")
        }
        // The GRUB rescue ISO boots the same image through Multiboot 2 (as Bochs and real
        // machines do): the same guests and exits.
        let iso = folder.appendingPathComponent("hv-baremetal.iso").path
        #expect(FileManager.default.fileExists(atPath: iso) || !Requirement.tools, "no GRUB ISO: \(build.stdout)")
        if FileManager.default.fileExists(atPath: iso) {
        let grub = try PackageExecutable.run(["--kill-after=5", "120", BareMetalHost.qemu, "-accel", "tcg", "-cpu", "max", "-m", "128",
                                              "-cdrom", iso, "-serial", "stdio", "-display", "none", "-no-reboot",
                                              "-device", "isa-debug-exit,iobase=0xf4,iosize=4"], executable: "/usr/bin/timeout")
        let grubLines = grub.stdout.split(whereSeparator: \.isNewline).map(String.init)
        #expect(grub.status == 1, "GRUB: \(grub.status): \(grub.stdout)")
        #expect(grubLines.contains { $0.hasPrefix("loader: GRUB") && $0.contains("(Multiboot 2); 126 MiB above 1 MiB") }, "\(grub.stdout)")
        #expect(Self.counts(grubLines.drop { !$0.hasPrefix("3. hv demo") }) == Self.counts(lines[demoAt...]), "\(grub.stdout)")
        }
        let bareMetal = Self.counts(lines[demoAt...])
        let kvm = try PackageExecutable.run(["demo", "--seccomp", "off"])
        #expect(kvm.status == 0, "\(kvm.stderr)")
        let onKVM = Self.counts(kvm.stdout.split(whereSeparator: \.isNewline).map(String.init).drop { !$0.hasPrefix("exit ") })
        #expect(!onKVM.isEmpty && bareMetal == onKVM, "bare metal \(bareMetal), KVM \(onKVM)")
    }
}
