import HVTestSupport
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

    @Test("the examples and irq-latency answer a mistake with one line and hv's status (64), and no crash", arguments: [
        (["junk"], "MinimalVMM", "MinimalVMM: error: unexpected argument 'junk'"),
        (["--bogus"], "ExitTracer", "ExitTracer: error: unexpected argument '--bogus'"),
        ([], "PCBoot", "PCBoot: error: give a KERNEL file"),
        (["/nonexistent/kernel"], "PCBoot", "PCBoot: error: /nonexistent/kernel: no such file"),
        (["/etc/hostname"], "PCBoot", "PCBoot: error: /etc/hostname: "),
        (["a", "b", "c"], "PCBoot", "PCBoot: error: unexpected argument 'c'"),
        (["0"], "irq-latency", "irq-latency: error: ROUNDS: '0' is invalid; expected an even number from 2 to 1000000"),
        (["-4"], "irq-latency", "irq-latency: error: ROUNDS: '-4' is invalid"),
        (["3"], "irq-latency", "irq-latency: error: ROUNDS: '3' is invalid"),
        (["junk"], "irq-latency", "irq-latency: error: ROUNDS: 'junk' is invalid"),
        (["2", "kernel,bogus"], "irq-latency", "irq-latency: error: MODES: 'bogus' is invalid; expected kernel or split"),
        (["2", "kernel", "extra"], "irq-latency", "irq-latency: error: unexpected argument 'extra'"),
    ])
    func badArguments(arguments: [String], executable: String, message: String) throws {
        let result = try PackageExecutable.run(arguments, executable: executable)
        #expect(result.status == 64, "\(executable) \(arguments): \(result.stderr)")
        #expect(!result.crashed)
        #expect(result.stderr.split(separator: "\n").count == 1 && result.stderr.hasPrefix(message), "\(result.stderr)")
    }

    @Test("the examples and irq-latency explain themselves with --help, status 0", arguments: ["MinimalVMM", "ExitTracer", "PCBoot", "irq-latency"])
    func exampleHelp(executable: String) throws {
        let result = try PackageExecutable.run(["--help"], executable: executable)
        #expect(result.status == 0)
        #expect(result.stdout.hasPrefix("usage: \(executable)"))
    }

    @Test("without KVM the examples end with one line and status 70, not a backtrace", arguments: ["MinimalVMM", "ExitTracer"])
    func exampleWithoutKVM(executable: String) throws {
        let result = try PackageExecutable.run([], executable: executable, environment: ["HV_KVM_DEVICE": "/nonexistent/kvm"])
        #expect(result.status == 70)
        #expect(!result.crashed && !result.stderr.contains("Error raised at top level"))
        #expect(result.stderr.hasPrefix("\(executable): error: /nonexistent/kvm does not exist"), "\(result.stderr)")
    }

    @Test("PCBoot boots a PVH and a Multiboot2 kernel on the SDK's PC platform, each finding the ACPI RSDP",
          .needsKVM, .enabled(if: TestKernel.toolsAvailable || Requirement.tools, "GNU as and ld are missing"))
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
        #expect(usage.status == 64 && usage.stderr.contains("PCBoot: error: give a KERNEL file"))
    }

    @Test("MicroVM refuses what it cannot use with one line and a status (its Linux boot runs in the test bed)")
    func microVMErrors() throws {
        let missing = try PackageExecutable.run(["--kernel", "/nonexistent/bzImage", "--disk", "/nonexistent/root.img"], executable: "MicroVM")
        #expect(missing.status == 1 && missing.stderr == "MicroVM: /nonexistent/root.img: No such file or directory\n", "\(missing.stderr)")
        let transport = try PackageExecutable.run(["--kernel", "k", "--disk", "d", "--transport", "isa"], executable: "MicroVM")
        #expect(transport.status == 64 && transport.stderr.contains("--transport is pci or mmio, not isa"))
        let hostIP = try PackageExecutable.run(["--kernel", "k", "--disk", "d", "--host-ip", "10.0.2.1/24"], executable: "MicroVM")
        #expect(hostIP.status == 64 && hostIP.stderr.contains("--host-ip needs --tap"))
        // Each a single line, as hv's: "MicroVM: error: ... (see 'MicroVM --help')", no usage text.
        for result in [transport, hostIP] {
            #expect(result.stderr.hasPrefix("MicroVM: error: ") && result.stderr.filter { $0 == "\n" }.count == 1, "\(result.stderr)")
        }
        for (option, value) in [("--mem", "-5"), ("--mem", "18446744073709551615"), ("--mem", "0x10"), ("--cpus", "-2"),
                                ("--cpus", "9223372036854775807999"), ("--timeout", "nan"), ("--timeout", "-1"), ("--timeout", "1e308")] {
            let junk = try PackageExecutable.run(["--kernel", "k", "--disk", "d", option, value], executable: "MicroVM")
            #expect(junk.status == 64 && !junk.crashed && junk.stderr.hasPrefix("MicroVM: error: ") && junk.stderr.contains(option)
                    && junk.stderr.filter { $0 == "\n" }.count == 1, "\(option) \(value): \(junk.stderr)")
        }
    }
}
