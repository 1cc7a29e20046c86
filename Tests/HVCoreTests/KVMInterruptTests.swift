import CKVM
import Glibc
import HVCore
import Synchronization
import Testing

@Suite("KVM interrupts", .requiresKVM, .serialized)
struct KVMInterruptTests {
    @Test("the LAPIC timer delivers periodic interrupts to a guest IDT handler that counts them",
          arguments: [InterruptControllerMode.kernel, .split])
    func lapicTimer(mode: InterruptControllerMode) throws {
        let vm = try KVMHost.machine { $0.interruptController = mode }
        _ = try attachConsole(vm)
        try vm.load(GuestProgram.longMode { a in
            let handler = a.label(), start = a.label()
            a.jmp(start)
            a.bind(handler)                                   // timer handler: count, EOI, return
            a.push(Register64.rax)
            a.push(Register64.rbx)
            a.mov(Register64.rbx, Immediate(InterruptGuest.counter))
            a.mov(Register64.rax, .at(Register64.rbx))
            a.inc(Register64.rax)
            a.mov(.at(Register64.rbx), Register64.rax)
            a.writeRegister(InterruptGuest.eoiRegister, 0)
            a.pop(Register64.rbx)
            a.pop(Register64.rax)
            a.iret()
            a.bind(start)
            a.maskPICs()
            a.installGate(vector: 0x40, handler: handler)
            a.loadIDT()
            a.enableLocalAPIC()
            a.writeRegister(InterruptGuest.lapic + 0x3E0, 0xB)            // divide by 1
            a.writeRegister(InterruptGuest.lapic + 0x320, 0x2_0040)       // LVT timer: periodic, vector 0x40
            a.writeRegister(InterruptGuest.lapic + 0x380, 200_000)        // initial count
            a.sti()
            a.waitUntil(InterruptGuest.counter, reaches: 5)
            a.cli()
            a.writeRegister(InterruptGuest.lapic + 0x320, 0x1_0040)       // mask the timer
            a.debugExit(code: 5)
        })
        let result = try vm.run()
        #expect(result.reason == .debugExit(code: 5))
        #expect(try vm.memory.read(UInt64.self, at: GuestPhysicalAddress(InterruptGuest.counter)) >= 5)
    }

    @Test("the UART raises IRQ 4 through the I/O APIC and the guest's handler reads the byte",
          arguments: [InterruptControllerMode.kernel, .split])
    func uartInterrupt(mode: InterruptControllerMode) throws {
        let vm = try KVMHost.machine { $0.interruptController = mode }
        // An MSI notifier's route joins the routing table; the controllers' own routes (the PC
        // wiring, or the split I/O APIC's) must stay beside it.
        let notifier = eventfd(0, Int32(EFD_CLOEXEC))
        defer { close(notifier) }
        _ = try vm.vm.addMSINotifier(eventFD: notifier, address: 0xFEE0_0000, data: 0x50)
        let uart = UART16550(output: .discard)
        try vm.devices.register(uart, port: .com1, count: UART16550.portCount)
        try vm.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
        try vm.connect(uart, irq: 4)
        try vm.load(GuestProgram.longMode { a in
            let handler = a.label(), start = a.label()
            a.jmp(start)
            a.bind(handler)                                   // IRQ 4: read RBR, report it, EOI
            a.push(Register64.rax)
            a.push(Register64.rbx)
            a.mov(Register16.dx, 0x3F8)
            a.in(Register8.al, Register16.dx)
            a.out(0x71, Register8.al)
            a.mov(Register64.rbx, Immediate(InterruptGuest.flag))
            a.mov(.qword, .at(Register64.rbx), 1)
            a.writeRegister(InterruptGuest.eoiRegister, 0)
            a.pop(Register64.rbx)
            a.pop(Register64.rax)
            a.iret()
            a.bind(start)
            a.maskPICs()
            a.installGate(vector: 0x41, handler: handler)
            a.loadIDT()
            a.enableLocalAPIC()
            // I/O APIC redirection entry 4 (SDM-companion 82093AA datasheet, 3.2.4): vector 0x41,
            // fixed, physical destination APIC 0, edge, active high, unmasked.
            a.writeRegister(0xFEC0_0000, 0x18)
            a.writeRegister(0xFEC0_0010, 0x41)
            a.writeRegister(0xFEC0_0000, 0x19)
            a.writeRegister(0xFEC0_0010, 0)
            a.mov(Register16.dx, 0x3F9)                       // IER: received-data interrupt
            a.mov(Register8.al, 0x01)
            a.out(Register16.dx, Register8.al)
            a.mov(Register16.dx, 0x3FC)                       // MCR: OUT2, as PC drivers do
            a.mov(Register8.al, 0x08)
            a.out(Register16.dx, Register8.al)
            a.sti()
            a.out(0x70, Register8.al)                          // tell the host we are ready
            a.waitUntil(InterruptGuest.flag, reaches: 1)
            a.debugExit(code: 4)
        })
        let received = Mutex<[UInt8]>([])
        let handler = ClosureExitHandler { exit, _ in
            switch exit {
            case .portOut(let io) where io.port == 0x70:
                uart.receive([0x5A])                           // a byte arrives on the wire
                return .resume
            case .portOut(let io) where io.port == 0x71:
                received.withLock { $0.append(UInt8(truncatingIfNeeded: io.value)) }
                return .resume
            default:
                return nil
            }
        }
        let result = try vm.run(handler: handler)
        #expect(result.reason == .debugExit(code: 4))
        #expect(received.withLock { $0 } == [0x5A])
    }
}

@Suite("KVM MSI notifiers (irqfd)", .requiresKVM, .serialized)
struct KVMMSINotifierTests {
    @Test("a write to an MSI notifier's eventfd is the MSI the guest's handler takes; a new route moves it to another vector",
          arguments: [InterruptControllerMode.kernel, .split])
    func notifier(mode: InterruptControllerMode) throws {
        let vm = try KVMHost.machine { $0.interruptController = mode }
        try vm.devices.register(DebugExitDevice(), port: .debugExit, count: 4)
        let notifier = eventfd(0, Int32(EFD_CLOEXEC))
        defer { close(notifier) }
        let id = try vm.vm.addMSINotifier(eventFD: notifier, address: 0xFEE0_0000, data: 0x42)
        try vm.load(GuestProgram.longMode { a in
            let first = a.label(), second = a.label(), start = a.label()
            a.jmp(start)
            for (handler, value) in [(first, UInt64(1)), (second, UInt64(2))] {   // vector 0x42 sets 1, 0x43 sets 2
                a.bind(handler)
                a.push(Register64.rbx)
                a.mov(Register64.rbx, Immediate(InterruptGuest.flag))
                a.mov(.qword, .at(Register64.rbx), Immediate(value))
                a.writeRegister(InterruptGuest.eoiRegister, 0)
                a.pop(Register64.rbx)
                a.iret()
            }
            a.bind(start)
            a.maskPICs()
            a.installGate(vector: 0x42, handler: first)
            a.installGate(vector: 0x43, handler: second)
            a.loadIDT()
            a.enableLocalAPIC()
            a.sti()
            a.out(0x70, Register8.al)                          // ready: the host writes the eventfd
            a.waitUntil(InterruptGuest.flag, reaches: 1)
            a.out(0x71, Register8.al)                          // again, after the host re-routes it
            a.waitUntil(InterruptGuest.flag, reaches: 2)
            a.debugExit(code: 6)
        })
        let handler = ClosureExitHandler { exit, _ in
            guard case .portOut(let io) = exit, io.port == 0x70 || io.port == 0x71 else { return nil }
            if io.port == 0x71 { try? vm.vm.updateMSINotifier(id, address: 0xFEE0_0000, data: 0x43) }
            var one: UInt64 = 1
            _ = write(notifier, &one, 8)
            return .resume
        }
        let result = try vm.run(handler: handler)
        #expect(result.reason == .debugExit(code: 6))
        #expect(try vm.memory.read(UInt64.self, at: GuestPhysicalAddress(InterruptGuest.flag)) == 2)
    }
}

@Suite("KVM level-triggered interrupts", .requiresKVM, .serialized)
struct KVMLevelInterruptTests {
    @Test("a level-triggered line held high is delivered again after each EOI until it drops",
          arguments: [InterruptControllerMode.kernel, .split])
    func levelRedelivery(mode: InterruptControllerMode) throws {
        let vm = try KVMHost.machine { $0.interruptController = mode }
        _ = try attachConsole(vm)
        let line = try vm.interruptLine(5)
        try vm.load(GuestProgram.longMode { a in
            let handler = a.label(), start = a.label()
            a.jmp(start)
            a.bind(handler)                                    // count, tell the host, EOI
            a.push(Register64.rax)
            a.push(Register64.rbx)
            a.mov(Register64.rbx, Immediate(InterruptGuest.counter))
            a.mov(Register64.rax, .at(Register64.rbx))
            a.inc(Register64.rax)
            a.mov(.at(Register64.rbx), Register64.rax)
            a.out(0x72, Register8.al)
            a.writeRegister(InterruptGuest.eoiRegister, 0)
            a.pop(Register64.rbx)
            a.pop(Register64.rax)
            a.iret()
            a.bind(start)
            a.maskPICs()
            a.installGate(vector: 0x45, handler: handler)
            a.loadIDT()
            a.enableLocalAPIC()
            a.writeRegister(0xFEC0_0000, 0x1A)                 // IOREDTBL5: vector 0x45, level (bit 15)
            a.writeRegister(0xFEC0_0010, 0x8045)
            a.writeRegister(0xFEC0_0000, 0x1B)
            a.writeRegister(0xFEC0_0010, 0)
            a.sti()
            a.out(0x70, Register8.al)                           // ask the host to raise line 5
            a.waitUntil(InterruptGuest.counter, reaches: 3)
            a.debugExit(code: 3)
        })
        let deliveries = Mutex(0)
        let handler = ClosureExitHandler { exit, _ in
            guard case .portOut(let io) = exit else { return nil }
            switch io.port {
            case 0x70:
                line.raise()
                return .resume
            case 0x72:
                // Keep the line high for three deliveries; each needs the previous EOI.
                if deliveries.withLock({ count in count += 1; return count }) == 3 { line.lower() }
                return .resume
            default:
                return nil
            }
        }
        let result = try vm.run(handler: handler)
        #expect(result.reason == .debugExit(code: 3))
        #expect(deliveries.withLock { $0 } == 3)
        if mode == .split { #expect(vm.statistics.count(.ioapicEOI) >= 2) }
    }
}
