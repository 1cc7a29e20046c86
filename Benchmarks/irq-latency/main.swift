// irq-latency: how long a device interrupt takes to reach a guest handler, per irqchip mode.
// Run it with:  swift run -c release irq-latency [ROUNDS] [MODES]   (--help says what each takes)
//
// The guest asks for a byte (OUT 0x70). The host then makes the UART receive one, which
// raises IRQ 4: through KVM's in-kernel I/O APIC (`kernel`) or HV's user-space I/O APIC and
// KVM_SIGNAL_MSI (`split`). The guest's IRQ 4 handler reports at once (OUT 0x71). The time
// from the raise to that report is measured on the vCPU thread. Because the report is itself
// an exit to user space, a baseline measured in the same run (OUT 0x70 followed directly by
// OUT 0x71, no interrupt) is printed beside it; the difference is the delivery cost.
import Foundation
import HVCore
import HVKVM
import Histogram
import Synchronization

/// Records raise-to-handler times, and the no-interrupt baseline.
final class LatencyProbe: ExitHandler, @unchecked Sendable {
    // Sendable: used by the single vCPU thread while running; read after wait().
    let uart: UART16550
    var raisedAt: UInt64 = 0
    var histogram = Histogram<UInt64>(lowestDiscernibleValue: 1, highestTrackableValue: 10_000_000_000, numberOfSignificantValueDigits: .three)

    init(uart: UART16550) { self.uart = uart }

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        guard case .portOut(let io) = exit else { return nil }
        switch io.port {
        case 0x70:
            raisedAt = now()
            uart.receive(CollectionOfOne(0x5A))       // raises IRQ 4 (when interrupts are wired)
            return .resume
        case 0x71:
            _ = histogram.record(now() &- raisedAt)
            return .resume
        default:
            return nil
        }
    }

    private func now() -> UInt64 {
        var time = timespec()
        clock_gettime(CLOCK_MONOTONIC, &time)
        return UInt64(time.tv_sec) * 1_000_000_000 + UInt64(time.tv_nsec)
    }
}

/// The guest: `rounds` requests, each answered by IRQ 4 (or, for the baseline, reported at once).
func guest(rounds: Int, interrupts: Bool) throws -> GuestProgram {
    try GuestProgram.longMode { a in
        let handler = a.label(), start = a.label(), loop = a.label(), wait = a.label()
        a.jmp(start)
        a.bind(handler)
        a.out(0x71, Register8.al)                        // first thing: report
        a.mov(Register16.dx, 0x3F8)
        a.in(Register8.al, Register16.dx)                // read RBR: the UART lowers IRQ 4
        a.inc(Register64.r12)
        a.mov(Register64.rbx, 0xFEE0_00B0)
        a.mov(.dword, .at(Register64.rbx), 0)            // EOI
        a.iret()
        a.bind(start)
        if interrupts {
            a.mov(Register8.al, 0xFF); a.out(0x21, Register8.al); a.out(0xA1, Register8.al)
            a.installInterruptGate(vector: 0x41, handler: handler, table: 0x9000)
            a.loadInterruptTable(0x9000, descriptor: 0xA100)
            a.mov(Register64.rbx, 0xFEE0_00F0); a.mov(.dword, .at(Register64.rbx), 0x1FF)      // SVR
            a.mov(Register64.rbx, 0xFEC0_0000); a.mov(.dword, .at(Register64.rbx), 0x18)      // IOREDTBL4
            a.mov(Register64.rbx, 0xFEC0_0010); a.mov(.dword, .at(Register64.rbx), 0x41)
            a.mov(Register64.rbx, 0xFEC0_0000); a.mov(.dword, .at(Register64.rbx), 0x19)
            a.mov(Register64.rbx, 0xFEC0_0010); a.mov(.dword, .at(Register64.rbx), 0)
            a.mov(Register16.dx, 0x3F9); a.mov(Register8.al, 0x01); a.out(Register16.dx, Register8.al)  // IER
            a.sti()
        }
        a.mov(Register64.r12, 0)
        a.mov(Register32.ecx, Immediate(UInt32(rounds)))
        a.bind(loop)
        a.mov(Register64.r13, Register64.r12)            // before the request: the IRQ may come at once
        a.out(0x70, Register8.al)
        if interrupts {
            a.bind(wait)                                  // spin until the handler has run
            a.cmp(Register64.r12, Register64.r13)
            a.je(wait)
        } else {
            a.out(0x71, Register8.al)
        }
        a.dec(Register32.ecx)
        a.jnz(loop)
        a.debugExit(code: 0)
    }
}

func measure(mode: InterruptControllerMode, rounds: Int) throws -> Histogram<UInt64> {
    let configuration = VirtualMachineConfiguration(memorySize: 4 << 20, timeLimit: 120, interruptController: mode)
    let machine = try Machine(configuration: configuration, backend: KVMBackend())
    let uart = UART16550(output: .discard)
    try machine.devices.register(uart, port: .com1, count: UART16550.portCount)
    try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
    if mode != .none { try machine.connect(uart, irq: 4) }
    try machine.load(guest(rounds: rounds, interrupts: mode != .none))
    let probe = LatencyProbe(uart: uart)
    let result = try machine.run(handler: probe)
    guard result.reason == .debugExit(code: 0) else {
        throw HVError.configuration(ConfigurationError(field: "guest", value: "\(result.reason)", expected: "a clean run"))
    }
    return probe.histogram
}

/// One line on standard error and `hv`'s exit status for it: 64 for a command-line mistake, 70
/// when the host cannot run the VMs.
func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("irq-latency: error: \(message)\n".utf8))
    exit(status)
}

let usage = "usage: irq-latency [ROUNDS] [MODES]: ROUNDS interrupts per mode, an even number from 2 to 1000000 (default 2000); MODES from kernel, split, comma-separated (default kernel,split)"
let arguments = Array(CommandLine.arguments.dropFirst())
if arguments.first == "--help" || arguments.first == "-h" { print(usage); exit(0) }
guard arguments.count <= 2 else { fail("unexpected argument '\(arguments[2])' (see --help)", status: 64) }
let rounds: Int
if let text = arguments.first {
    guard let value = Int(text), (2...1_000_000).contains(value), value % 2 == 0 else {
        fail("ROUNDS: '\(text)' is invalid; expected an even number from 2 to 1000000", status: 64)
    }
    rounds = value
} else {
    rounds = 2000
}
var chosen: [InterruptControllerMode] = []
for name in (arguments.count > 1 ? arguments[1] : "kernel,split").split(separator: ",", omittingEmptySubsequences: false) {
    guard let mode = InterruptControllerMode(rawValue: String(name)), mode != .none else {
        fail("MODES: '\(name)' is invalid; expected kernel or split, comma-separated", status: 64)
    }
    if !chosen.contains(mode) { chosen.append(mode) }
}
let modes = [InterruptControllerMode.none] + chosen
print("irq-latency: \(rounds) rounds per mode, host CPU \(HostCPU.current.modelName), guest code \(HostCPU.current.hasHardwareVirtualization ? "hardware-assisted" : "emulated")")
print("mode       median µs   p90 µs   p99 µs   (raise -> guest handler's first instruction, incl. one exit)")
var baselineMedian = 0.0
// Interleave the modes twice so drift on a noisy machine touches them all alike.
var results: [InterruptControllerMode: Histogram<UInt64>] = [:]
for _ in 0..<2 {
    for mode in modes {
        let histogram: Histogram<UInt64>
        do { histogram = try measure(mode: mode, rounds: rounds / 2) } catch { fail("\(mode.rawValue): \(error)", status: 70) }
        if results[mode] == nil { results[mode] = histogram } else { results[mode]!.add(histogram) }
    }
}
for mode in modes {
    let h = results[mode]!
    let median = Double(h.valueAtPercentile(50)) / 1000
    if mode == .none { baselineMedian = median }
    let name = mode == .none ? "baseline" : mode.rawValue
    let delivery = mode == .none ? "" : String(format: "   delivery ≈ %.1f µs", median - baselineMedian)
    print(String(format: "%-9@ %9.1f %8.1f %8.1f", name as NSString, median, Double(h.valueAtPercentile(90)) / 1000,
                 Double(h.valueAtPercentile(99)) / 1000) + delivery)
}
