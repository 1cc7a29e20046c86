// PCBoot: a small PC built from the SDK's parts, booting the kernel file you give it.
// Run it with:  swift run PCBoot KERNEL [COMMAND LINE]
//
// KERNEL is an ELF with a PVH note (an uncompressed vmlinux), a Multiboot2 kernel, or a Linux
// bzImage; the example picks the loader the file asks for. The machine gets what
// `hv run --platform pc` gives a guest: COM1 on IRQ 4 behind KVM's interrupt controllers, the
// debug-exit port, fw_cfg, CMOS/RTC, the i8042, a PCI host bridge, the ACPI PM timer and ACPI
// tables; a guest reset restarts it in place. Documentation/Loaders.md and Devices.md explain
// each part.
//
// A Linux bzImage prints nothing on COM1 until its console driver is up, late in boot; give it
// "console=ttyS0 earlyprintk=serial,ttyS0" as the command line to see it from the first steps
// (on this project's machines, whose KVM emulates guest code, Linux stops before the console).
import Foundation
import HVCore
import HVKVM

/// One line on standard error and `hv`'s exit status for it: 64 for a mistake in the command
/// line or the kernel file, 70 when the host cannot run the VM.
func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("PCBoot: error: \(message)\n".utf8))
    exit(status)
}

let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "--help" || arguments.first == "-h" {
    print("usage: PCBoot KERNEL [COMMAND LINE]: boots a PVH, Multiboot2 or bzImage kernel on a small PC")
    exit(0)
}
guard (1...2).contains(arguments.count) else {
    fail(arguments.isEmpty ? "give a KERNEL file (see --help)" : "unexpected argument '\(arguments[2])'; PCBoot takes KERNEL [COMMAND LINE]", status: 64)
}
guard let data = FileManager.default.contents(atPath: arguments[0]) else { fail("\(arguments[0]): no such file, or unreadable", status: 64) }
guard !data.isEmpty else { fail("\(arguments[0]): is empty", status: 64) }
let kernel = [UInt8](data)
let commandLine = arguments.count > 1 ? arguments[1] : "console=ttyS0"

// The VM: 256 MiB, one vCPU with an in-kernel LAPIC/IOAPIC/PIC, resets restart it.
var configuration = VirtualMachineConfiguration(memorySize: 256 << 20, interruptController: .kernel)
configuration.resetPolicy = .restart
configuration.timeLimit = 60

// The ACPI tables the platform will install; PVH and Multiboot2 kernels are told where they are.
let tables: ACPITables
do { tables = try ACPITables.pc(cpuCount: configuration.cpuCount, tpm: false) } catch { fail("ACPI tables: \(error)", status: 70) }

// Pick the loader by what the file is; a file no loader takes is the user's mistake.
let image: GuestImage
do {
    if ELFFile.hasMagic(kernel), let file = try? ELFFile(parsing: kernel), (try? file.pvhEntry(in: kernel)) ?? nil != nil {
        image = try GuestImage.pvh(kernel, commandLine: commandLine, rsdpAddress: tables.rsdpAddress,
                                   memorySize: configuration.memorySize)
    } else if (try? Multiboot2Header.find(in: kernel)) != nil {
        image = try GuestImage.multiboot2(kernel, commandLine: commandLine, rsdp: tables.tables[0].bytes,
                                          memorySize: configuration.memorySize)
    } else {
        image = try GuestImage.linux(kernel, commandLine: commandLine, memorySize: configuration.memorySize)
    }
} catch {
    fail("\(arguments[0]): \(error)", status: 64)
}
print("PCBoot: \(image.mode) entry at 0x\(String(image.registers.rip, radix: 16))")
fflush(nil)  // the guest's serial output goes to the same file descriptor, unbuffered

do {
    let machine = try Machine(configuration: configuration, backend: KVMBackend())
    let uart = UART16550(output: .standardOutput)
    try machine.devices.register(uart, port: .com1, count: UART16550.portCount)
    try machine.connect(uart, irq: 4)
    try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
    try machine.attachPCPlatform()          // fw_cfg, CMOS, i8042, PCI, ACPI PM, power-off port, tables
    try machine.load(image)

    let result = try machine.run()
    uart.flush()
    print("PCBoot: \(result.reason) after \(result.exits) exits, \(result.resets) reset(s), \(String(format: "%.3f", result.seconds)) s")
} catch {
    fail("\(error)", status: 70)
}
