// MinimalVMM: the smallest useful VMM built on HVCore.
// Run it with:  swift run MinimalVMM
//
// It makes a 2 MiB VM on KVM, puts a UART on COM1, assembles a 64-bit guest that asks port
// 0x60 for a number and prints a line per number, answers those reads with its own
// ExitHandler, and stops when the guest writes to the debug-exit port.
import Foundation
import HVCore
import HVKVM
import Synchronization

/// Answers `IN` from port 0x60 with 3, 2, 1, 0: the guest counts down.
final class Countdown: ExitHandler, Sendable {
    // Handlers run on vCPU threads, several at once with several vCPUs: state sits behind a
    // Mutex (uncontended, it costs a few nanoseconds and allocates nothing), and the compiler
    // checks the Sendable claim.
    private let next = Mutex<UInt64>(3)
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        guard case .portIn(let io) = exit, io.port == 0x60 else { return nil }  // not ours: pass on
        return .resumeWith(next.withLock { value in
            defer { value = value > 0 ? value - 1 : 0 }
            return value
        })
    }
}

/// One line on standard error and `hv`'s exit status for it: 64 for a command-line mistake, 70
/// when the host cannot run the VM (no /dev/kvm, a KVM call failed).
func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("MinimalVMM: error: \(message)\n".utf8))
    exit(status)
}

// This example takes no arguments; anything else is a mistake worth saying so.
if let argument = CommandLine.arguments.dropFirst().first {
    if argument == "--help" || argument == "-h" {
        print("usage: MinimalVMM (no arguments): runs a guest that counts down through port 0x60")
        exit(0)
    }
    fail("unexpected argument '\(argument)'; MinimalVMM takes none (see --help)", status: 64)
}

do {
    let guest = try GuestProgram.longMode { a in
        let loop = a.label(), done = a.label()
        a.bind(loop)
        a.in(Register8.al, 0x60)            // ask the VMM for a number
        a.test(Register8.al, Register8.al)
        a.jz(done)
        a.printString("tick from the guest\n")
        a.jmp(loop)
        a.bind(done)
        a.printString("lift-off\n")
        a.debugExit(code: 0)
    }

    let machine = try Machine(configuration: VirtualMachineConfiguration(memorySize: 2 << 20), backend: KVMBackend())
    try machine.devices.register(UART16550(output: .standardOutput), port: .com1, count: UART16550.portCount)
    try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
    try machine.load(guest)

    let result = try machine.run(handler: Countdown())
    print("VM stopped: \(result.reason) after \(result.exits) exits")
} catch {
    fail("\(error)", status: 70)
}
