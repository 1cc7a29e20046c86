// `hv run --multiboot`, `--elf` and `--kernel` end to end: test kernels assembled and linked with GNU
// as and ld at test time, run under KVM, checked by their serial output and debug-exit status.

import Foundation
import HVTestSupport
import Testing

/// The test kernels' sources, shared with the loader fuzz targets' seeds (Fuzz/Seeds).
enum KernelSource {
    static let directory = URL(fileURLWithPath: #filePath)
        .deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
        .appendingPathComponent("Fuzz/Seeds")

    /// A Multiboot 1 kernel linked at 4 MiB as ELF32 (Documentation/HostFacts.md, "Conventions of small x86 test
    /// kernels"). It checks EAX and the info flags, prints its command line, the boot loader
    /// name and every byte of module 0 to COM1, checks its .bss is zero, and exits with 0x15
    /// through port 0xF4 (7 on any failed check).
    static var multiboot32: String { get throws { try String(contentsOf: directory.appendingPathComponent("multiboot32.s"), encoding: .utf8) } }

    /// A Multiboot2 ELF32 kernel: walks the boot information, prints the command line, the loader
    /// name and its modules, checks the memory map and the ACPI RSDP tag, exits with 0x17.
    static var multiboot2: String { get throws { try String(contentsOf: directory.appendingPathComponent("multiboot2.s"), encoding: .utf8) } }

    /// A PVH ELF32 kernel: checks hvm_start_info, prints its command line and module 0, exits
    /// with 0x16 (7 on any failed check).
    static var pvh32: String { get throws { try String(contentsOf: directory.appendingPathComponent("pvh32.s"), encoding: .utf8) } }

    /// An ELF64 program linked at 2 MiB: prints "elf64 long mode" and exits with 0x2A.
    static var elf64: String { get throws { try String(contentsOf: directory.appendingPathComponent("elf64.s"), encoding: .utf8) } }
}

enum TestKernel {
    static var toolsAvailable: Bool {
        FileManager.default.isExecutableFile(atPath: "/usr/bin/as") && FileManager.default.isExecutableFile(atPath: "/usr/bin/ld")
    }

    struct Failure: Error, CustomStringConvertible { var description: String }

    /// Assembles `source` and links it at `address` into `directory/name`.
    static func build(_ source: String, name: String, bits64: Bool, address: UInt64, in directory: URL) throws -> URL {
        let sourceURL = directory.appendingPathComponent("\(name).s")
        let object = directory.appendingPathComponent("\(name).o"), output = directory.appendingPathComponent(name)
        let script = directory.appendingPathComponent("\(name).ld")
        try source.write(to: sourceURL, atomically: true, encoding: .utf8)
        try "ENTRY(_start)\nSECTIONS { . = 0x\(String(address, radix: 16)); .text : { *(.text) } .data : { *(.data) } .bss : { *(.bss) } }\n"
            .write(to: script, atomically: true, encoding: .utf8)
        try run("/usr/bin/as", [bits64 ? "--64" : "--32", "-I", KernelSource.directory.path, "-o", object.path, sourceURL.path])
        try run("/usr/bin/ld", ["-m", bits64 ? "elf_x86_64" : "elf_i386", "-T", script.path, "--build-id=none",
                                "-o", output.path, object.path])
        return output
    }

    private static func run(_ tool: String, _ arguments: [String]) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: tool)
        process.arguments = arguments
        let err = Pipe()
        process.standardError = err
        try process.run()
        let message = err.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw Failure(description: "\(tool) failed: \(String(decoding: message, as: UTF8.self))")
        }
    }
}

@Suite("hv run --multiboot, --elf and --kernel")
struct HVRunLoaderTests {
    /// Builds `source` as a 32-bit kernel at 4 MiB and runs it with `loader` (--multiboot or
    /// --multiboot2), `--append append` and a module holding "KEY=VALUE\n".
    private func runWithModule(_ source: String, loader: String, append: String) throws -> (kernel: URL, result: ProcessResult) {
        let directory = try PackageExecutable.temporaryDirectory()
        let kernel = try TestKernel.build(source, name: "kernel.elf", bits64: false, address: 0x40_0000, in: directory)
        let env = directory.appendingPathComponent("env")
        try "KEY=VALUE\n".write(to: env, atomically: true, encoding: .utf8)
        let result = try PackageExecutable.run(["run", loader, kernel.path, "--append", append, "--module", env.path,
                                                "--timeout", "60"])
        return (kernel, result)
    }

    @Test("a Multiboot kernel prints its command line, the loader name and its module, and exits (0x15 << 1) | 1",
          .needsKVM, .enabled(if: TestKernel.toolsAvailable || Requirement.tools, "GNU as and ld are missing"))
    func multibootKernel() throws {
        let (kernel, result) = try runWithModule(try KernelSource.multiboot32, loader: "--multiboot", append: "hello world")
        #expect(result.stdout == "\(kernel.path) hello world\nHV\nKEY=VALUE\n", "stderr: \(result.stderr)")
        #expect(result.status == 0x15 << 1 | 1, "stderr: \(result.stderr)")
    }

    @Test("a kernel that does not fit in guest RAM is refused with the --mem that would hold it",
          .enabled(if: TestKernel.toolsAvailable || Requirement.tools, "GNU as and ld are missing"))
    func kernelTooLarge() throws {
        let directory = try PackageExecutable.temporaryDirectory()
        let kernel = try TestKernel.build(try KernelSource.multiboot32, name: "kernel.elf", bits64: false, address: 0x40_0000, in: directory)
        let result = try PackageExecutable.run(["run", "--multiboot", kernel.path, "--mem", "4M"])
        #expect(result.status == 64)
        #expect(result.stderr.hasPrefix("hv: error: \(kernel.path): p_paddr/p_memsz: segment 0 of 4276 bytes at 0x400000 does not fit"), "\(result.stderr)")
        #expect(result.stderr.hasSuffix("does not fit in guest memory (4194304 bytes); it needs at least 5 MiB of guest RAM: try --mem 8M\n"), "\(result.stderr)")
    }

    @Test("a Multiboot2 kernel gets its command line, \"HV\", its module, the memory map and the ACPI RSDP, and exits (0x17 << 1) | 1",
          .needsKVM, .enabled(if: TestKernel.toolsAvailable || Requirement.tools, "GNU as and ld are missing"))
    func multiboot2Kernel() throws {
        let (kernel, result) = try runWithModule(try KernelSource.multiboot2, loader: "--multiboot2", append: "root=/dev/hv quiet")
        #expect(result.stdout == "root=/dev/hv quiet\nHV\nKEY=VALUE\n", "stderr: \(result.stderr)")
        #expect(result.status == 0x17 << 1 | 1, "stderr: \(result.stderr)")
        // Without ACPI tables (--platform none) the kernel finds no RSDP tag and fails its check.
        let bare = try PackageExecutable.run(["run", "--multiboot2", kernel.path, "--platform", "none", "--timeout", "60"])
        #expect(bare.status == 7 << 1 | 1, "stderr: \(bare.stderr)")
    }

    @Test("a PVH kernel (ELF with a Xen PHYS32_ENTRY note) gets hvm_start_info: command line, memory map, RSDP and its initrd",
          .needsKVM, .enabled(if: TestKernel.toolsAvailable || Requirement.tools, "GNU as and ld are missing"))
    func pvhKernel() throws {
        let directory = try PackageExecutable.temporaryDirectory()
        let kernel = try TestKernel.build(try KernelSource.pvh32, name: "pvh.elf", bits64: false, address: 0x40_0000, in: directory)
        let initrd = directory.appendingPathComponent("initrd")
        try "INITRD".write(to: initrd, atomically: true, encoding: .utf8)
        let result = try PackageExecutable.run(["run", "--kernel", kernel.path, "--cmdline", "console=ttyS0 pvh",
                                                "--initrd", initrd.path, "--timeout", "60"])
        #expect(result.stdout == "console=ttyS0 pvh\nINITRD", "stderr: \(result.stderr)")
        #expect(result.status == 0x16 << 1 | 1, "stderr: \(result.stderr)")
    }

    @Test("an ELF64 executable runs in long mode", .needsKVM, .enabled(if: TestKernel.toolsAvailable || Requirement.tools, "GNU as and ld are missing"))
    func elf64() throws {
        let directory = try PackageExecutable.temporaryDirectory()
        let program = try TestKernel.build(try KernelSource.elf64, name: "program.elf", bits64: true, address: 0x20_0000, in: directory)
        let result = try PackageExecutable.run(["run", "--elf", program.path, "--timeout", "60"])
        #expect(result.stdout == "elf64 long mode\n", "stderr: \(result.stderr)")
        #expect(result.status == 0x2A << 1 | 1, "stderr: \(result.stderr)")
    }

    @Test("a bzImage enters its 64-bit entry with RSI = the zero page", .needsKVM)
    func linuxEntry() throws {
        // Boot sector + 1 setup sector with the boot.rst header, then the kernel: 0x200 bytes of
        // NOP before startup_64, which checks RSI and exits with 0x33 (7 on failure).
        var setup = [UInt8](repeating: 0, count: 1024)
        func put(_ value: UInt64, _ offset: Int, _ count: Int) {
            for index in 0..<count { setup[offset + index] = UInt8(truncatingIfNeeded: value >> UInt64(index * 8)) }
        }
        put(1, 0x1F1, 1); put(0xAA55, 0x1FE, 2); put(0x66, 0x201, 1); put(0x5372_6448, 0x202, 4)
        put(0x020F, 0x206, 2); put(1, 0x211, 1); put(0x7FFF_FFFF, 0x22C, 4); put(1, 0x236, 2)
        put(2047, 0x238, 4); put(0x100_0000, 0x258, 8); put(0x1000, 0x260, 4)
        let startup64: [UInt8] = [0x81, 0xFE, 0x00, 0x90, 0x00, 0x00, 0x75, 0x08,   // cmp esi, 0x9000; jne fail
                                  0xB8, 0x33, 0, 0, 0, 0xE7, 0xF4, 0xF4,             // mov eax, 0x33; out 0xF4, eax; hlt
                                  0xB8, 0x07, 0, 0, 0, 0xE7, 0xF4, 0xF4]             // fail: mov eax, 7; out; hlt
        let url = try PackageExecutable.temporaryDirectory().appendingPathComponent("bzImage")
        try Data(setup + [UInt8](repeating: 0x90, count: 0x200) + startup64).write(to: url)
        let result = try PackageExecutable.run(["run", "--kernel", url.path, "--cmdline", "console=ttyS0", "--mem", "32M",
                                                "--timeout", "60"])
        #expect(result.status == 0x33 << 1 | 1, "stderr: \(result.stderr)")
    }

    @Test("a kernel with a bad Multiboot checksum is refused with status 64, naming the field")
    func badChecksum() throws {
        let url = try PackageExecutable.temporaryDirectory().appendingPathComponent("bad.bin")
        try Data([0x02, 0xB0, 0xAD, 0x1B, 0, 0, 0, 0, 1, 2, 3, 4]).write(to: url)
        let result = try PackageExecutable.run(["run", "--multiboot", url.path])
        #expect(result.status == 64)
        #expect(result.stderr.contains("hv: error: \(url.path): checksum:"), "stderr: \(result.stderr)")
    }

    @Test("exactly one image source; loader flags only with their loader")
    func imageSources() throws {
        let none = try PackageExecutable.run(["run"])
        #expect(none.status == 64 && none.stderr.contains("--multiboot KERNEL, --multiboot2 KERNEL, --elf FILE or --kernel BZIMAGE"),
                "stderr: \(none.stderr)")
        let both = try PackageExecutable.run(["run", "flat.bin", "--elf", "x.elf"])
        #expect(both.status == 64 && both.stderr.contains("not several"), "stderr: \(both.stderr)")
        let append = try PackageExecutable.run(["run", "--elf", "x.elf", "--append", "a"])
        #expect(append.status == 64 && append.stderr.contains("--multiboot and --multiboot2 kernels only"), "stderr: \(append.stderr)")
        let initrd = try PackageExecutable.run(["run", "--multiboot", "k", "--initrd", "i"])
        #expect(initrd.status == 64 && initrd.stderr.contains("--kernel (Linux bzImage) only"), "stderr: \(initrd.stderr)")
        let help = try PackageExecutable.run(["run", "--help"])
        #expect(help.stdout.contains("--multiboot <kernel>") && help.stdout.contains("--elf <file>")
                && help.stdout.contains("--kernel <bzimage|vmlinux>"))
    }
}
