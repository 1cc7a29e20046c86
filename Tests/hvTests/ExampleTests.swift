import Testing

@Suite("Examples")
struct ExampleTests {
    @Test("MinimalVMM counts down with its own port handler and stops at the debug-exit port", .needsKVM)
    func minimalVMM() throws {
        let result = try PackageExecutable.run([], executable: "MinimalVMM")
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.components(separatedBy: "tick from the guest\n").count - 1 == 3)
        #expect(result.stdout.contains("lift-off\n"))
        #expect(result.stdout.contains("VM stopped: the guest wrote 0 (0x0) to the debug-exit port"))
    }

    @Test("ExitTracer prints each exit decoded: string OUT, MMIO with widths, HLT, debug exit", .needsKVM)
    func exitTracer() throws {
        let result = try PackageExecutable.run([], executable: "ExitTracer")
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stdout.contains("vcpu0 exit: OUT  port 0x3f8 size 1 count 1 data [0x68]"))
        #expect(result.stdout.contains("vcpu0 exit: MMIO write 0xd0000000 width 4 value 0x1234"))
        #expect(result.stdout.contains("vcpu0 exit: MMIO read  0xd0000008 width 8"))
        #expect(result.stdout.contains("vcpu0 exit: HLT"))
        #expect(result.stdout.hasSuffix("stopped: the guest wrote 0 (0x0) to the debug-exit port\n"))
        // rep outsb: the three bytes "rep" reach port 0x80 in order, however KVM batches them.
        let repBytes = result.stdout.split(separator: "\n").filter { $0.contains("port 0x80") }
            .flatMap { $0.split(separator: "[").last!.dropLast().split(separator: " ") }
        #expect(repBytes == ["0x72", "0x65", "0x70"])
    }

    @Test("PCBoot boots a PVH and a Multiboot2 kernel on the SDK's PC platform, each finding the ACPI RSDP",
          .needsKVM, .enabled(if: TestKernel.toolsAvailable, "GNU as and ld are missing"))
    func pcBoot() throws {
        let directory = try PackageExecutable.temporaryDirectory()
        let pvh = try TestKernel.build(try KernelSource.pvh32, name: "pvh.elf", bits64: false, address: 0x40_0000, in: directory)
        let mb2 = try TestKernel.build(try KernelSource.multiboot2, name: "mb2.elf", bits64: false, address: 0x40_0000,
                                       in: directory)
        let first = try PackageExecutable.run([pvh.path, "console=ttyS0 sdk"], executable: "PCBoot")
        #expect(first.status == 0, "stderr: \(first.stderr)")
        #expect(first.stdout.contains("PCBoot: protected entry at 0x400000\nconsole=ttyS0 sdk\n"), "stdout: \(first.stdout)")
        #expect(first.stdout.contains("the guest wrote 22 (0x16) to the debug-exit port"), "stdout: \(first.stdout)")
        let second = try PackageExecutable.run([mb2.path, "quiet"], executable: "PCBoot")
        #expect(second.stdout.contains("quiet\nHV\n"), "stdout: \(second.stdout)")
        #expect(second.stdout.contains("the guest wrote 23 (0x17) to the debug-exit port"), "stdout: \(second.stdout)")
        let usage = try PackageExecutable.run([], executable: "PCBoot")
        #expect(usage.status == 64 && usage.stderr.contains("usage: PCBoot KERNEL"))
    }

    @Test("MicroVM refuses what it cannot use with one line and a status (its Linux boot runs in the test bed)")
    func microVMErrors() throws {
        let missing = try PackageExecutable.run(["--kernel", "/nonexistent/bzImage", "--disk", "/nonexistent/root.img"], executable: "MicroVM")
        #expect(missing.status == 1 && missing.stderr == "MicroVM: /nonexistent/root.img: No such file or directory\n", "\(missing.stderr)")
        let transport = try PackageExecutable.run(["--kernel", "k", "--disk", "d", "--transport", "isa"], executable: "MicroVM")
        #expect(transport.status == 64 && transport.stderr.contains("--transport is pci or mmio, not isa"))
        let hostIP = try PackageExecutable.run(["--kernel", "k", "--disk", "d", "--host-ip", "10.0.2.1/24"], executable: "MicroVM")
        #expect(hostIP.status == 64 && hostIP.stderr.contains("--host-ip needs --tap"))
    }
}
