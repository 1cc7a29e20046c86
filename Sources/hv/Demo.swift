// `hv demo`: the main job. A bundled guest greets through COM1, makes port-I/O, MMIO and HLT
// exits, and leaves through the debug-exit port; then the exit table is printed.
import ArgumentParser
import Foundation
import HVCore
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

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        logging.bootstrap()
        let outcome = try reportingErrors { () throws(HVError) -> (RunResult, ExitStatistics, DemoHandler) in
            var configuration = VirtualMachineConfiguration(memorySize: 16 << 20, haltPolicy: .resume, timeLimit: 120)
            configuration.confinement = seccomp.mode.map { Confinement(mode: $0) }
            let machine = try Machine(configuration: configuration, backend: KVMBackend())
            let uart = try attachConsole(to: machine, serial: serial)
            do throws(DeviceBusError) {
                try machine.devices.register(ScratchRegister(), address: DemoGuest.scratchAddress, length: 0x1000)
            } catch { throw .device(error) }
            try machine.load(DemoGuest.program())
            let handler = DemoHandler()
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

/// The demo's own exit handler: answers reads of port 0x60 with a counter and collects the POST
/// codes written to port 0x80. One vCPU, so no contention; the lock keeps it honest anyway.
final class DemoHandler: ExitHandler, Sendable {
    private let state = Mutex<(counter: UInt32, codes: [UInt8])>((0, []))

    var postCodes: [UInt8] { state.withLock { $0.codes } }
    var counterReads: UInt32 { state.withLock { $0.counter } }

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .portIn(let io) where io.port == 0x60:
            let value = state.withLock { state -> UInt32 in
                state.counter += 1
                return state.counter
            }
            return .resumeWith(UInt64(value))
        case .portOut(let io) where io.port == 0x80:
            state.withLock { $0.codes.append(UInt8(truncatingIfNeeded: io.value)) }
            return .resume
        default:
            return nil
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
