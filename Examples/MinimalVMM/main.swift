// MinimalVMM: the smallest useful VMM built on HVCore.
// Run it with:  swift run MinimalVMM
//
// It makes a 2 MiB VM on KVM, puts a UART on COM1, assembles a 64-bit guest that asks port
// 0x60 for a number and prints a line per number, answers those reads with its own
// ExitHandler, and stops when the guest writes to the debug-exit port.
import HVCore

/// Answers `IN` from port 0x60 with 3, 2, 1, 0: the guest counts down.
final class Countdown: ExitHandler, @unchecked Sendable {  // one vCPU: no lock needed
    private var next: UInt64 = 3
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        guard case .portIn(let io) = exit, io.port == 0x60 else { return nil }  // not ours: pass on
        defer { next = next > 0 ? next - 1 : 0 }
        return .resumeWith(next)
    }
}

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
