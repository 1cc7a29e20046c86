// `hv demo`: the main job. A bundled guest greets through COM1, makes port-I/O, MMIO and HLT
// exits, and leaves through the debug-exit port; then the exit table is printed.
import ArgumentParser
import Foundation
import HVCore
import HVKVM
import Synchronization

struct Demo: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run the bundled demo guest and show its exits.",
        discussion: """
            The guest runs in 64-bit long mode. It prints a greeting through the 16550 UART on \
            COM1, writes POST codes to port 0x80 and reads a counter from port 0x60 (answered by \
            the demo's own ExitHandler), stores and loads an MMIO scratch register at 0xFEB00000, \
            executes HLT twice, and exits through the debug-exit port 0xF4 with code 0.
            """)

    @Option(name: .long, help: ArgumentHelp("Where the guest's serial output goes: stdio or file:PATH.", valueName: "target"))
    var serial: SerialTarget = .stdio

    @Option(name: .long, help: ArgumentHelp("Seccomp confinement once the VM is set up, as hv run's: kill, refuse or off (Documentation/Confinement.md).", valueName: "mode"))
    var seccomp: SeccompArgument = .kill

    @Option(name: .long, help: ArgumentHelp("Write the demo guest as a guest image file (the layout of HVGuest's GuestImage.fileBytes) and run nothing: the bare-metal image embeds it (Documentation/BareMetal.md).", valueName: "file"))
    var writeImage: String?

    @OptionGroup var logging: LoggingOptions

    /// The demo VM's memory, and so the guest image's.
    static let memorySize: UInt64 = 16 << 20

    func run() throws {
        logging.bootstrap()
        if let writeImage {
            let bytes = try reportingErrors { () throws(HVError) -> [UInt8] in
                do { return try DemoGuest.program().image(memorySize: Self.memorySize).fileBytes(memorySize: Self.memorySize) } catch {
                    throw .configuration(ConfigurationError(field: "demo guest", value: "\(error)", expected: "an image that fits \(Self.memorySize) bytes"))
                }
            }
            do { try Data(bytes).write(to: URL(fileURLWithPath: writeImage)) } catch {
                printError("hv: error: --write-image \(writeImage): \(error.localizedDescription)")
                throw ExitCode(73)
            }
            return
        }
        let outcome = try reportingErrors { () throws(HVError) -> (RunResult, ExitStatistics, DemoExitHandler) in
            var configuration = VirtualMachineConfiguration(memorySize: Self.memorySize, haltPolicy: .resume, timeLimit: 120)
            configuration.confinement = seccomp.mode.map { Confinement(mode: $0) }
            let machine = try Machine(configuration: configuration, backend: KVMBackend())
            let uart = try attachConsole(to: machine, serial: serial)
            do throws(DeviceBusError) {
                try machine.devices.register(ScratchRegister(), address: DemoGuest.scratchAddress, length: 0x1000)
            } catch { throw .device(error) }
            try machine.load(DemoGuest.program())
            // The same handler type the bare-metal image runs on its SVM engine (HVModel).
            let handler = DemoExitHandler()
            let result = try machine.run(handler: handler)
            uart.flush()
            return (result, machine.statistics, handler)
        }
        let (result, statistics, handler) = outcome
        print("")
        print("The guest stopped: \(result.reason).")
        print("It wrote POST codes \(handler.postCodes.map { String(format: "0x%02x", $0) }.joined(separator: ", ")) and read port 0x60 \(handler.counterReads) times.")
        print("\(result.exits) exits in \(String(format: "%.1f", result.seconds * 1000)) ms:")
        print("")
        print(ExitTable.render(statistics))
        guard result.reason == .debugExit(code: 0) else {
            printError("hv: error: the demo guest did not finish cleanly: \(result.reason)")
            throw ExitCode(ExitStatus.forStop(result.reason) == 0 ? ExitStatus.guestCrashed : ExitStatus.forStop(result.reason))
        }
    }
}

/// One 64-bit read/write register behind MMIO.
final class ScratchRegister: MMIODevice, Sendable {
    let name = "scratch"
    private let value = Atomic<UInt64>(0)
    func mmioRead(offset: UInt64, width: Int) -> UInt64 { value.load(ordering: .relaxed) }
    func mmioWrite(offset: UInt64, width: Int, value newValue: UInt64) -> ExitAction {
        value.store(newValue, ordering: .relaxed)
        return .resume
    }
}

/// The bundled guest, assembled at run time by HV's assembler.
enum DemoGuest {
    static let scratchAddress: GuestPhysicalAddress = 0xFEB0_0000

    static func program() throws(HVError) -> GuestProgram {
        do {
            return try GuestProgram.longMode { a throws(AssemblerError) in
                a.printString("Hello from a guest in 64-bit long mode, running on HV over KVM!\n")
                // Port I/O: three POST codes out, three counter reads in.
                for code: UInt8 in [0x01, 0x02, 0x03] {
                    a.mov(Register8.al, Immediate(code))
                    a.out(0x80, Register8.al)
                    a.in(Register32.eax, 0x60)
                }
                // MMIO: store a value in the scratch register, load it back, compare.
                let mismatch = a.label()
                let done = a.label()
                a.mov(Register64.rbx, Immediate(scratchAddress.rawValue))
                a.mov(Register64.rax, 0x0123_4567_89AB_CDEF)
                a.mov(.at(Register64.rbx), Register64.rax)
                a.mov(Register64.rcx, .at(Register64.rbx))
                a.cmp(Register64.rcx, Register64.rax)
                a.jne(mismatch)
                a.printString("MMIO scratch register read back what the guest wrote.\n")
                a.jmp(done)
                a.bind(mismatch)
                a.printString("MMIO scratch register mismatch!\n")
                a.debugExit(code: 1)
                a.bind(done)
                // HLT: nothing can wake us, and the demo resumes after HLT.
                a.hlt()
                a.hlt()
                a.printString("Goodbye.\n")
                a.debugExit(code: 0)
                a.hlt()
            }
        } catch {
            throw .configuration(ConfigurationError(field: "demo guest", value: "\(error)", expected: "a guest that assembles"))
        }
    }
}
