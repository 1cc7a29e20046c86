import HVCore
import HVKVM
import Synchronization
import Testing

/// Records port and MMIO traffic per vCPU, answering reads with fixed values.
final class TrafficRecorder: ExitHandler, @unchecked Sendable {
    struct Access: Equatable {
        var vcpu: Int
        var port: UInt16
        var size: UInt8
        var values: [UInt32]
        var isWrite: Bool
    }

    private let lock = Mutex<[Access]>([])
    /// Value returned for IN from `port`, by port.
    let inValues: [UInt16: UInt32]
    /// Ports this recorder takes; others go on down the chain.
    let ports: ClosedRange<UInt16>

    init(ports: ClosedRange<UInt16>, inValues: [UInt16: UInt32] = [:]) {
        self.ports = ports
        self.inValues = inValues
    }

    var accesses: [Access] { lock.withLock { $0 } }

    func handle(_ exit: VMExit, context: ExitContext) -> ExitAction? {
        switch exit {
        case .portOut(let io) where ports.contains(io.port.rawValue):
            let values = (0..<io.data.count).map { io.data[$0] }
            lock.withLock { $0.append(Access(vcpu: context.vcpuID, port: io.port.rawValue, size: io.size, values: values, isWrite: true)) }
            return .resume
        case .portIn(let io) where ports.contains(io.port.rawValue):
            let value = inValues[io.port.rawValue] ?? 0
            lock.withLock { $0.append(Access(vcpu: context.vcpuID, port: io.port.rawValue, size: io.size, values: [value], isWrite: false)) }
            return .resumeWith(UInt64(value))
        default:
            return nil
        }
    }
}

/// An MMIO device with eight 64-bit registers that logs every access.
final class RegisterFile: MMIODevice, @unchecked Sendable {
    let name = "register-file"
    private let state = Mutex<(registers: [UInt64], log: [(write: Bool, offset: UInt64, width: Int, value: UInt64)])>(
        (Array(repeating: 0, count: 8), []))

    var log: [(write: Bool, offset: UInt64, width: Int, value: UInt64)] { state.withLock { $0.log } }

    func preset(_ index: Int, _ value: UInt64) { state.withLock { $0.registers[index] = value } }

    func mmioRead(offset: UInt64, width: Int) -> UInt64 {
        state.withLock { state in
            let register = state.registers[Int(offset / 8) % 8]
            let shifted = register >> (8 * (offset % 8))
            let value = width == 8 ? shifted : shifted & ((1 << (8 * UInt64(width))) - 1)
            state.log.append((false, offset, width, value))
            return value
        }
    }

    func mmioWrite(offset: UInt64, width: Int, value: UInt64) -> ExitAction {
        state.withLock { state in
            state.registers[Int(offset / 8) % 8] = value
            state.log.append((true, offset, width, value))
        }
        return .resume
    }
}

/// Adds the UART (captured) and the debug-exit port to a machine.
func attachConsole<B>(_ machine: Machine<B>) throws -> SerialCapture {
    let capture = SerialCapture()
    try machine.devices.register(UART16550(output: .capture(capture)), port: .com1, count: UART16550.portCount)
    try machine.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
    return capture
}

@Suite("KVM guests", .requiresKVM, .serialized)
struct KVMGuestTests {
    @Test("a real-mode guest prints through the UART and exits through the debug port")
    func realModeHello() throws {
        let vm = try KVMHost.machine(memory: 1 << 20)
        let console = try attachConsole(vm)
        try vm.load(GuestProgram.realMode { a in
            a.printString("real mode says hi\n")
            a.debugExit(code: 0x21)
        })
        let result = try vm.run()
        #expect(console.text == "real mode says hi\n")
        #expect(result.reason == .debugExit(code: 0x21))
        #expect(vm.state == .stopped)
    }

    @Test("a long-mode guest prints through the UART and exits through the debug port")
    func longModeHello() throws {
        let vm = try KVMHost.machine()
        let console = try attachConsole(vm)
        try vm.load(GuestProgram.longMode { a in
            a.printString("long mode says hi\n")
            a.debugExit(code: 7)
        })
        let result = try vm.run()
        #expect(console.text == "long mode says hi\n")
        #expect(result.reason == .debugExit(code: 7))
    }

    @Test("a handler that keeps a port exit past its run reads zeros from kvm_run, even once the machine is gone, never a later exit's bytes or unmapped memory")
    func keptPortExit() throws {
        var vm: Machine<KVMBackend>? = try KVMHost.machine()
        _ = try attachConsole(vm!)
        try vm!.load(GuestProgram.longMode { a in
            a.mov(Register32.eax, 0x1234_5678)
            a.out(0x75, Register32.eax)
            a.mov(Register32.eax, 0x0BAD_0BAD)
            a.out(0x76, Register32.eax)
            a.debugExit(code: 0)
        })
        let kept = Mutex<PortIOData?>(nil)
        let handler = ClosureExitHandler { exit, _ in
            guard case .portOut(let io) = exit, io.port == 0x75 || io.port == 0x76 else { return nil }
            if io.port == 0x75 {
                #expect(io.data[0] == 0x1234_5678)
                kept.withLock { $0 = io.data }
            }
            return .resume
        }
        #expect(try vm!.run(handler: handler).reason == .debugExit(code: 0))
        let data = try #require(kept.withLock { $0 })
        #expect(!data.isCurrent && data[0] == 0, "the kept view does not show the 0x76 exit's 0x0BAD0BAD")
        vm = nil  // vCPU closed; the kvm_run mapping lives while the view does
        #expect(data[0] == 0)
    }

    @Test("port I/O of 1, 2 and 4 bytes in both directions", arguments: [GuestMode.real, .long])
    func portWidths(mode: GuestMode) throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        let body: (inout X86Assembler) throws(AssemblerError) -> Void = { a in
            a.mov(Register8.al, 0x12)
            a.out(0x70, Register8.al)
            a.mov(Register16.ax, 0x3456)
            a.out(0x70, Register16.ax)
            a.mov(Register32.eax, 0x789A_BCDE)
            a.out(0x70, Register32.eax)
            a.in(Register8.al, 0x71)
            a.out(0x72, Register8.al)
            a.mov(Register16.dx, 0x71)
            a.in(Register16.ax, Register16.dx)
            a.out(0x72, Register16.ax)
            a.in(Register32.eax, Register16.dx)
            a.out(0x72, Register32.eax)
            a.debugExit(code: 0)
        }
        try vm.load(mode == .real ? GuestProgram.realMode(body) : GuestProgram.longMode(body))
        let recorder = TrafficRecorder(ports: 0x70...0x72, inValues: [0x71: 0xCAFE_F00D])
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 0))
        let outs = recorder.accesses.filter(\.isWrite).map { [$0.port, UInt16($0.size)] }
        #expect(outs == [[0x70, 1], [0x70, 2], [0x70, 4], [0x72, 1], [0x72, 2], [0x72, 4]])
        let values = recorder.accesses.filter(\.isWrite).map { $0.values[0] }
        // Reads truncate to the access width; the guest echoes what it received.
        #expect(values == [0x12, 0x3456, 0x789A_BCDE, 0x0D, 0xF00D, 0xCAFE_F00D])
        let ins = recorder.accesses.filter { !$0.isWrite }.map(\.size)
        #expect(ins == [1, 2, 4])
    }

    @Test("rep outsb delivers every byte in order, rep insb fills guest memory")
    func stringIO() throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        try vm.load(GuestProgram.longMode { a in
            let text = a.label()
            let after = a.label()
            a.jmp(after)
            a.bind(text)
            a.ascii("string I/O")
            a.bind(after)
            a.cld()
            a.lea(Register64.rsi, .label(text))
            a.mov(Register64.rcx, 10)
            a.mov(Register16.dx, 0x73)
            a.rep(.outsb)
            // Read 4 bytes from port 0x74 into 0x9000, then echo them with a 4-byte OUT.
            a.mov(Register64.rdi, 0x9000)
            a.mov(Register64.rcx, 4)
            a.mov(Register16.dx, 0x74)
            a.rep(.insb)
            a.mov(Register32.eax, .absolute(0x9000))
            a.out(0x75, Register32.eax)
            a.debugExit(code: 0)
        })
        let counter = Atomic<UInt32>(0x41)
        let recorder = TrafficRecorder(ports: 0x73...0x75)
        let handler = ClosureExitHandler { exit, context in
            if case .portIn(let io) = exit, io.port == 0x74 {
                for i in 0..<io.data.count { io.data[i] = counter.add(1, ordering: .relaxed).oldValue }
                return .resume
            }
            return recorder.handle(exit, context: context)
        }
        let result = try vm.run(handler: handler)
        #expect(result.reason == .debugExit(code: 0))
        let writes = recorder.accesses.filter(\.isWrite)
        // KVM may split a long string into several exits (one page of data at most); all bytes arrive in order.
        let bytes = writes.filter { $0.port == 0x73 }.flatMap(\.values).map { UInt8($0) }
        #expect(String(decoding: bytes, as: UTF8.self) == "string I/O")
        // KVM may batch a string instruction into one exit (count > 1, up to a page) or, when
        // it emulates guest code as on these hosts, deliver one element per exit.
        #expect(writes.first { $0.port == 0x75 }?.values == [0x4443_4241])
        #expect(try vm.memory.readBytes(at: 0x9000, count: 4) == Array("ABCD".utf8))
    }

    @Test("MMIO reads and writes of 1, 2, 4 and 8 bytes reach the device with their width")
    func mmioWidths() throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        let device = RegisterFile()
        device.preset(1, 0x1122_3344_5566_7788)
        try vm.devices.register(device, address: 0xD000_0000, length: 0x1000)
        try vm.load(GuestProgram.longMode { a in
            a.mov(Register64.rbx, 0xD000_0000)
            a.mov(Register8.al, 0xAB)
            a.mov(.at(Register64.rbx), Register8.al)
            a.mov(Register16.ax, 0xABCD)
            a.mov(.at(Register64.rbx), Register16.ax)
            a.mov(Register32.eax, 0x1234_5678)
            a.mov(.at(Register64.rbx), Register32.eax)
            a.mov(Register64.rax, 0x0102_0304_0506_0708)
            a.mov(.at(Register64.rbx), Register64.rax)
            a.mov(Register8.cl, .at(Register64.rbx, 8))
            a.mov(Register16.cx, .at(Register64.rbx, 8))
            a.mov(Register32.ecx, .at(Register64.rbx, 8))
            a.mov(Register64.rcx, .at(Register64.rbx, 8))
            a.mov(Register32.eax, Register32.ecx)
            a.out(0x76, Register32.eax)
            a.debugExit(code: 0)
        })
        let recorder = TrafficRecorder(ports: 0x76...0x76)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 0))
        let log = device.log
        #expect(log.map(\.write) == [true, true, true, true, false, false, false, false])
        #expect(log.map(\.width) == [1, 2, 4, 8, 1, 2, 4, 8])
        #expect(log.prefix(4).map(\.value) == [0xAB, 0xABCD, 0x1234_5678, 0x0102_0304_0506_0708])
        #expect(log.suffix(4).map(\.value) == [0x88, 0x7788, 0x5566_7788, 0x1122_3344_5566_7788])
        #expect(recorder.accesses.first?.values == [0x5566_7788])
        #expect(vm.statistics.count(.mmioWrite) == 4)
        #expect(vm.statistics.count(.mmioRead) == 4)
    }

    @Test("HLT stops the VM by default and resumes under the resume policy")
    func halt() throws {
        let stopping = try KVMHost.machine()
        try stopping.load(GuestProgram.longMode { a in a.hlt() })
        #expect(try stopping.run().reason == .halted)

        let resuming = try KVMHost.machine { $0.haltPolicy = .resume }
        _ = try attachConsole(resuming)
        try resuming.load(GuestProgram.longMode { a in
            a.hlt()
            a.hlt()
            a.debugExit(code: 3)
        })
        #expect(try resuming.run().reason == .debugExit(code: 3))
        #expect(resuming.statistics.count(.halt) == 2)
    }

    @Test("a triple fault is reported as shutdown and the host carries on")
    func tripleFault() throws {
        let vm = try KVMHost.machine()
        // The long-mode set-up leaves the IDT empty: any exception escalates to a triple fault.
        try vm.load(GuestProgram.longMode { a in
            a.mov(Register64.rax, 0x8000_0000_0000_0000)  // non-canonical
            a.mov(Register64.rax, .at(Register64.rax))     // #GP -> #DF -> shutdown
            a.hlt()
        })
        let result = try vm.run()
        #expect(result.reason == .shutdown)
    }

    @Test("garbage instructions stop the VM with a reason instead of crashing the host")
    func garbage() throws {
        let vm = try KVMHost.machine()
        try vm.load(GuestProgram(code: [0x0F, 0xFF, 0xFF, 0xFF, 0x8F, 0xFF, 0xFF, 0xC4, 0xFF, 0xFF] + Array(repeating: 0xFF, count: 64),
                                 mode: .long, loadAddress: GuestImage.longModeLoadAddress))
        let result = try vm.run()
        switch result.reason {
        case .shutdown, .internalError: break
        default: Issue.record("unexpected stop reason \(result.reason)")
        }
    }

    @Test("a guest hammering an unmapped MMIO address is stopped and the address reported")
    func unmappedMMIO() throws {
        let vm = try KVMHost.machine()
        try vm.load(GuestProgram.longMode { a in
            let again = a.label()
            a.mov(Register64.rbx, 0xE000_1000)
            a.bind(again)
            a.mov(.at(Register64.rbx), Register32.eax)
            a.jmp(again)
        })
        let result = try vm.run()
        #expect(result.reason == .unmappedMMIO(address: 0xE000_1000, write: true))
        #expect(result.exits == 1)
    }

    @Test("two vCPUs run different guests at the same time")
    func twoVCPUs() throws {
        let vm = try KVMHost.machine(memory: 4 << 20, cpus: 2)
        _ = try attachConsole(vm)
        // A handshake through guest memory that only completes if both vCPUs run at once:
        // vCPU 0 raises flag A and spins (writing port 0x70) until it sees flag B; vCPU 1 waits
        // for flag A, writes port 0x71 200 times, raises flag B and spins writing port 0x72.
        let flagA: UInt64 = 0x8000, flagB: UInt64 = 0x8008
        try vm.load(GuestProgram.longMode { a in
            let again = a.label()
            a.mov(Register64.rbx, Immediate(flagA))
            a.mov(.qword, .at(Register64.rbx), 1)
            a.mov(Register64.rbx, Immediate(flagB))
            a.bind(again)
            a.out(0x70, Register8.al)
            a.mov(Register64.rcx, .at(Register64.rbx))
            a.cmp(Register64.rcx, 1)
            a.jne(again)
            a.debugExit(code: 1)
        }, vcpus: [0])
        try vm.load(GuestProgram.longMode(loadAddress: 0x20_0000) { a in
            let wait = a.label(), again = a.label(), spin = a.label()
            a.mov(Register64.rbx, Immediate(flagA))
            a.bind(wait)
            a.mov(Register64.rcx, .at(Register64.rbx))
            a.cmp(Register64.rcx, 1)
            a.jne(wait)
            a.mov(Register32.ecx, 200)
            a.bind(again)
            a.out(0x71, Register8.al)
            a.dec(Register32.ecx)
            a.jnz(again)
            a.mov(Register64.rbx, Immediate(flagB))
            a.mov(.qword, .at(Register64.rbx), 1)
            a.bind(spin)
            a.out(0x72, Register8.al)
            a.jmp(spin)
        }, vcpus: [1])
        let recorder = TrafficRecorder(ports: 0x70...0x72)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 1))
        #expect(result.vcpuID == 0)
        let accesses = recorder.accesses
        #expect(accesses.filter { $0.port == 0x71 }.count == 200)
        #expect(accesses.filter { $0.port == 0x71 || $0.port == 0x72 }.allSatisfy { $0.vcpu == 1 })
        #expect(accesses.filter { $0.port == 0x70 }.allSatisfy { $0.vcpu == 0 })
        #expect(accesses.contains { $0.port == 0x70 })
    }
}

@Suite("README", .requiresKVM)
struct ReadmeExampleTests {
    @Test("the README's embedding example runs as written (output captured)")
    func embeddingExample() throws {
        let capture = SerialCapture()
        let guest = try GuestProgram.longMode { a in       // a 64-bit guest, assembled in Swift
            a.printString("hello from the guest\n")         // polls the UART on COM1
            a.debugExit(code: 0)                            // OUT to port 0xF4 stops the VM
        }
        let vm = try Machine(configuration: .init(memorySize: 2 << 20), backend: KVMBackend())
        try vm.devices.register(UART16550(output: .capture(capture)), port: .com1, count: UART16550.portCount)
        try vm.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
        try vm.load(guest)
        let reason = try vm.run().reason
        #expect(capture.text == "hello from the guest\n")
        #expect("\(reason)" == "the guest wrote 0 (0x0) to the debug-exit port")
    }
}
