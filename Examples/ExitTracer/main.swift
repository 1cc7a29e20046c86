// ExitTracer: prints every exit of a guest, decoded, then lets the normal chain handle it.
// Run it with:  swift run ExitTracer
//
// The guest (long mode) prints through COM1, reads the UART's line status, does a
// `rep outsb`, touches an unmapped MMIO address (which the VM ignores, by configuration),
// executes HLT (resumed, by configuration) and leaves through the debug-exit port.
//
// The `rep outsb` of three bytes may show as one OUT with count 3 or as three OUTs with count
// 1: KVM hands string I/O over in batches of its own choosing (on this project's machines,
// whose KVM emulates guest code, one element at a time). A handler must take either.
import Foundation
import HVCore
import HVKVM

/// Describes an exit in one line. Returns nil so the device bus and the defaults still run.
struct Tracer: ExitHandler, Sendable {
    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        let line: String
        switch exit {
        case .portOut(let io):
            let values = (0..<io.data.count).map { "0x" + String(io.data[$0], radix: 16) }
            line = "OUT  port 0x\(String(io.port.rawValue, radix: 16)) size \(io.size) count \(io.count) data [\(values.joined(separator: " "))]"
        case .portIn(let io):
            line = "IN   port 0x\(String(io.port.rawValue, radix: 16)) size \(io.size) count \(io.count)"
        case .mmioRead(let access):
            line = "MMIO read  0x\(String(access.address.rawValue, radix: 16)) width \(access.width)"
        case .mmioWrite(let access):
            line = "MMIO write 0x\(String(access.address.rawValue, radix: 16)) width \(access.width) value 0x\(String(access.value, radix: 16))"
        case .halt: line = "HLT"
        default: line = "\(exit.kind.name)"
        }
        print("vcpu\(context.vcpuID) exit: \(line)")
        return nil
    }
}

/// One line on standard error and `hv`'s exit status for it: 64 for a command-line mistake, 70
/// when the host cannot run the VM.
func fail(_ message: String, status: Int32) -> Never {
    FileHandle.standardError.write(Data("ExitTracer: error: \(message)\n".utf8))
    exit(status)
}

if let argument = CommandLine.arguments.dropFirst().first {
    if argument == "--help" || argument == "-h" {
        print("usage: ExitTracer (no arguments): runs a guest and prints each of its exits, decoded")
        exit(0)
    }
    fail("unexpected argument '\(argument)'; ExitTracer takes none (see --help)", status: 64)
}

do {
    let guest = try GuestProgram.longMode { a in
        a.printString("hi\n")
        let text = a.label(), after = a.label()
        a.jmp(after)
        a.bind(text)
        a.ascii("rep")
        a.bind(after)
        a.cld()
        a.lea(Register64.rsi, .label(text))    // RSI = the bytes, RCX = count, DX = port
        a.mov(Register64.rcx, 3)
        a.mov(Register16.dx, 0x80)
        a.rep(.outsb)
        a.mov(Register64.rbx, 0xD000_0000)     // no RAM and no device here: MMIO exits
        a.mov(Register32.eax, 0x1234)
        a.mov(.at(Register64.rbx), Register32.eax)
        a.mov(Register64.rax, .at(Register64.rbx, 8))
        a.hlt()
        a.debugExit(code: 0)
    }

    var configuration = VirtualMachineConfiguration(memorySize: 2 << 20, haltPolicy: .resume, unmappedMMIO: .ignore)
    configuration.timeLimit = 10
    let machine = try Machine(configuration: configuration, backend: KVMBackend())
    try machine.devices.register(UART16550(output: .discard), port: .com1, count: UART16550.portCount)
    try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
    try machine.load(guest)
    let result = try machine.run(handler: Tracer())
    print("stopped: \(result.reason)")
} catch {
    fail("\(error)", status: 70)
}
