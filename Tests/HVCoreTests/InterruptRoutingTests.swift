import Dispatch
import HVCore
import Testing

@Suite("Interrupt routing (scripted backend)")
struct InterruptRoutingTests {
    private func splitMachine() throws -> Machine<ScriptedBackend> {
        try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, interruptController: .split),
                    backend: ScriptedBackend(script: []))
    }

    @Test("two devices on one line are wired-OR: the line stays high until both have lowered it, and drops once")
    func sharedLinesAreWiredOR() throws {
        let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, interruptController: .kernel),
                             backend: ScriptedBackend(script: []))
        let uart = try vm.interruptLine(4), tpm = try vm.interruptLine(4), other = try vm.interruptLine(5)
        uart.raise()
        tpm.raise()
        uart.lower()   // the TPM still asserts IRQ 4: the line must not drop
        other.pulse()  // another line is independent
        tpm.lower()
        tpm.lower()    // no change, nothing driven
        #expect(vm.vm.interruptEvents == [.line(gsi: 4, high: true), .line(gsi: 5, high: true), .line(gsi: 5, high: false),
                                          .line(gsi: 4, high: false)])
    }

    @Test("concurrent redirection-table writes publish their MSI routes in order: the backend ends with the final table")
    func routePublicationIsOrdered() throws {
        let vm = try splitMachine()
        let ioapic = try #require(vm.ioapicForTesting)
        // Four threads reprogram entries at once. Their IOREGSEL/IOWIN pairs interleave, so which
        // entry ends with which vector is up to the race; what must hold is that the routes the
        // backend was given last are the model's final table, not an older one.
        DispatchQueue.concurrentPerform(iterations: 4) { thread in
            for round in 0..<300 {
                _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: UInt64(0x10 + 2 * thread))
                _ = ioapic.mmioWrite(offset: 0x10, width: 4, value: UInt64(0x20 + (round % 0xC0)))
            }
        }
        for (pin, route) in ioapic.routes.enumerated() {
            #expect(vm.vm.msiRoutes[UInt32(pin)]?.data == route.data && vm.vm.msiRoutes[UInt32(pin)]?.address == route.address, "pin \(pin)")
        }
    }

    @Test("split mode puts HV's I/O APIC on the bus; programming an entry updates the MSI routes")
    func ioapicOnBus() throws {
        let vm = try splitMachine()
        let ioapic = try #require(vm.ioapicForTesting)
        _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: 0x18)       // IOREGSEL = entry 4 low
        _ = ioapic.mmioWrite(offset: 0x10, width: 4, value: 0x41)       // vector 0x41, edge, unmasked
        _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: 0x01)
        #expect(ioapic.mmioRead(offset: 0x10, width: 4) & 0xFF_00FF == 0x17_0020)   // version 0x20, 24 entries
        let route = try #require(vm.vm.msiRoutes[4])
        #expect(route.address == 0xFEE0_0000)                          // physical, APIC 0 (SDM 11.11.1)
        #expect(route.data == 0x4041)                                  // fixed, edge, assert, vector 0x41
    }

    @Test("an edge on an unmasked pin becomes one MSI; a masked pin sends nothing")
    func edgeDelivery() throws {
        let vm = try splitMachine()
        let ioapic = try #require(vm.ioapicForTesting)
        _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: 0x18)
        _ = ioapic.mmioWrite(offset: 0x10, width: 4, value: 0x41)
        let line = try vm.interruptLine(4)
        line.pulse()
        try vm.interruptLine(6).pulse()                                // entry 6 is still masked
        #expect(vm.vm.interruptEvents == [.msi(address: 0xFEE0_0000, data: 0x4041)])
    }

    @Test("a level pin is delivered once, then again only after the EOI while still asserted")
    func levelDelivery() throws {
        let vm = try splitMachine()
        let ioapic = try #require(vm.ioapicForTesting)
        _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: 0x1A)
        _ = ioapic.mmioWrite(offset: 0x10, width: 4, value: 0x8045)    // entry 5: level, vector 0x45
        let line = try vm.interruptLine(5)
        line.raise()
        line.raise()                                                   // remote IRR set: no second MSI
        #expect(vm.vm.interruptEvents.count == 1)
        ioapic.endOfInterruptForTesting(vector: 0x45)
        #expect(vm.vm.interruptEvents.count == 2)
        line.lower()
        ioapic.endOfInterruptForTesting(vector: 0x45)
        #expect(vm.vm.interruptEvents.count == 2)
        #expect(vm.vm.interruptEvents.first == .msi(address: 0xFEE0_0000, data: 0xC045))   // level, assert
    }

    @Test("kernel mode drives the backend's lines; a VM without controllers refuses, naming the knob")
    func modes() throws {
        let kernel = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, interruptController: .kernel),
                                 backend: ScriptedBackend(script: []))
        try kernel.interruptLine(4).pulse()
        #expect(kernel.vm.interruptEvents == [.line(gsi: 4, high: true), .line(gsi: 4, high: false)])
        let none = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20), backend: ScriptedBackend(script: []))
        #expect { _ = try none.interruptLine(4) } throws: { "\($0)".contains("interruptController is none") }
    }

    @Test("a guest EOI exit reaches the user-space I/O APIC")
    func eoiExit() throws {
        let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20, interruptController: .split),
                             backend: ScriptedBackend(script: [.ioapicEOI(vector: 0x45), .halt]))
        let ioapic = try #require(vm.ioapicForTesting)
        _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: 0x1A)
        _ = ioapic.mmioWrite(offset: 0x10, width: 4, value: 0x8045)
        try vm.interruptLine(5).raise()
        #expect(vm.vm.interruptEvents.count == 1)
        _ = try vm.run()
        #expect(vm.vm.interruptEvents.count == 2)                      // re-delivered after the EOI exit
    }
}
