import HVModel
import Testing

@Suite("I/O APIC, MSI and interrupt remapping")
struct APICIOAPICTests {
    /// Programs entry `line` through IOREGSEL/IOWIN.
    func program(_ ioapic: inout IOAPIC, line: Int, low: UInt32, high: UInt32 = 0) -> IOAPICDeliveries {
        _ = ioapic.write(offset: 0x00, value: UInt32(0x11 + 2 * line))
        _ = ioapic.write(offset: 0x10, value: high)
        _ = ioapic.write(offset: 0x00, value: UInt32(0x10 + 2 * line))
        return ioapic.write(offset: 0x10, value: low)
    }

    func lowDword(_ ioapic: inout IOAPIC, line: Int) -> UInt32 {
        _ = ioapic.write(offset: 0x00, value: UInt32(0x10 + 2 * line))
        return ioapic.read(offset: 0x10)
    }

    @Test("ID, version (max redirection entry 23) and arbitration read through IOREGSEL/IOWIN")
    func identification() {
        var ioapic = IOAPIC(id: 1)
        _ = ioapic.write(offset: 0x00, value: 0x01)
        #expect(ioapic.read(offset: 0x00) == 0x01)
        #expect(ioapic.read(offset: 0x10) == 0x0017_0020)
        _ = ioapic.write(offset: 0x00, value: 0x00)
        #expect(ioapic.read(offset: 0x10) == 0x0100_0000)
        _ = ioapic.write(offset: 0x10, value: 0x0A00_0000)
        _ = ioapic.write(offset: 0x00, value: 0x02)
        #expect(ioapic.read(offset: 0x10) == 0x0A00_0000)
        #expect(IOAPIC(version: 0x11).register(0x01) == 0x0017_0011)
        #expect(lowDword(&ioapic, line: 23) == 0x1_0000)  // reset: masked
    }

    @Test("an edge entry delivers on each rising edge only")
    func edge() {
        var ioapic = IOAPIC()
        #expect(program(&ioapic, line: 4, low: 0x24, high: 0x0200_0000).isEmpty)
        let delivery = ioapic.setIRQ(4, asserted: true)
        #expect(delivery?.line == 4)
        #expect(delivery?.message == APICInterruptMessage(vector: 0x24, destination: 2))
        #expect(ioapic.setIRQ(4, asserted: true) == nil)
        #expect(ioapic.setIRQ(4, asserted: false) == nil)
        #expect(ioapic.pulseIRQ(4)?.message.vector == 0x24)
        #expect(!ioapic.entry(4).remoteIRR)
    }

    @Test("an edge request while masked is lost, even after unmasking")
    func maskedEdge() {
        var ioapic = IOAPIC()
        _ = program(&ioapic, line: 3, low: 0x1_0023)
        #expect(ioapic.setIRQ(3, asserted: true) == nil)
        #expect(program(&ioapic, line: 3, low: 0x23).isEmpty)
    }

    @Test("a level entry sets remote IRR, waits for the EOI and re-delivers while the line stays asserted")
    func level() {
        var ioapic = IOAPIC()
        _ = program(&ioapic, line: 10, low: 0x8000 | 0x3A)
        let first = ioapic.setIRQ(10, asserted: true)
        #expect(first?.message == APICInterruptMessage(vector: 0x3A, destination: 0, triggerMode: .level))
        #expect(lowDword(&ioapic, line: 10) == 0xC03A)  // remote IRR (bit 14) set
        #expect(ioapic.setIRQ(10, asserted: true) == nil)
        let again = ioapic.endOfInterrupt(vector: 0x3A)
        #expect(again.lines == 1 << 10 && again.count == 1)
        #expect(Array(again).map(\.message.vector) == [0x3A])
        _ = ioapic.setIRQ(10, asserted: false)
        #expect(ioapic.endOfInterrupt(vector: 0x3A).isEmpty)
        #expect(lowDword(&ioapic, line: 10) == 0x803A)
        #expect(ioapic.endOfInterrupt(vector: 0x3B).isEmpty)
    }

    @Test("unmasking an asserted level line delivers; software cannot set remote IRR or delivery status")
    func unmaskLevel() {
        var ioapic = IOAPIC()
        _ = program(&ioapic, line: 11, low: 0x1_8000 | 0x3B)
        #expect(ioapic.setIRQ(11, asserted: true) == nil)
        let deliveries = program(&ioapic, line: 11, low: 0x8000 | 0x5000 | 0x3B)
        #expect(deliveries.lines == 1 << 11)
        #expect(lowDword(&ioapic, line: 11) == 0xC03B)  // remote IRR from the delivery, not the write
        _ = program(&ioapic, line: 11, low: 0x3B)  // to edge: remote IRR clears
        #expect(lowDword(&ioapic, line: 11) == 0x3B)
    }

    @Test("the EOI register (version 0x20) ends a level interrupt; version 0x11 has none")
    func eoiRegister() {
        for version in [UInt8(0x20), 0x11] {
            var ioapic = IOAPIC(version: version)
            _ = program(&ioapic, line: 9, low: 0x8000 | 0x39)
            _ = ioapic.setIRQ(9, asserted: true)
            _ = ioapic.setIRQ(9, asserted: false)
            _ = ioapic.write(offset: 0x40, value: 0x39)
            #expect(ioapic.entry(9).remoteIRR == (version == 0x11))
        }
    }

    @Test("a remappable redirection entry carries its IRTE index in bits 63:49 and 11")
    func remappableEntry() {
        let entry = IOAPICRedirectionEntry(rawValue: 0x1234 << 49 | 1 << 48 | 1 << 11 | 0x30)
        #expect(entry.isRemappable && entry.remappingIndex == 0x9234)
    }

    @Test("MSI address and data decode to destination, modes, level and trigger (SDM 11.11)")
    func msiDecode() {
        let simple = MSIMessage(address: 0xFEE0_1000, data: 0x4031).compatibilityMessage
        #expect(simple == APICInterruptMessage(vector: 0x31, destination: 1))
        let msi = MSIMessage(address: 0xFEEF_F00C, data: 0xC129)
        #expect(msi.destinationID == 0xFF && msi.redirectionHint && msi.destinationMode == .logical)
        #expect(msi.vector == 0x29 && msi.deliveryMode == .lowestPriority && msi.level && msi.triggerMode == .level)
        #expect(MSIMessage(address: 0xFEE0_0000, data: 0x0400).compatibilityMessage?.deliveryMode == .nmi)
        #expect(MSIMessage(address: 0xFED0_0000, data: 0x31).compatibilityMessage == nil)
        let message = APICInterruptMessage(
            vector: 0x29, deliveryMode: .lowestPriority, destinationMode: .logical, destination: 0xFF,
            triggerMode: .level, redirectionHint: true)
        #expect(MSIMessage(message) == msi)
        #expect(MSIMessage(address: 0xFEEA_B040, data: 0).extendedDestinationID == 0x2AB)
        #expect(MSIMessage(address: 0x0000_1200_FEE3_4000, data: 0).kvmX2APICDestinationID == 0x1234)
    }

    @Test("remappable-format MSIs carry handle and subhandle (VT-d 5.1.2.2)")
    func msiRemappable() {
        let handleOnly = MSIMessage(remappingHandle: 0x8005)
        #expect(handleOnly.address == 0xFEE0_00B4 && handleOnly.remappingIndex == 0x8005)
        #expect(handleOnly.compatibilityMessage == nil)
        let withSubhandle = MSIMessage(remappingHandle: 0x8005, subhandle: 3)
        #expect(withSubhandle.address == 0xFEE0_00BC && withSubhandle.data == 3 && withSubhandle.remappingIndex == 0x8008)
        #expect(MSIMessage(address: 0xFEE0_1000, data: 0).remappingIndex == nil)
    }

    @Test("remapped-format IRTEs hold the vector, modes and an 8- or 32-bit destination (VT-d 9.10)")
    func irteRemapped() {
        let message = APICInterruptMessage(vector: 0x45, destination: 0x1234)
        let x2 = InterruptRemappingEntry(remapping: message, x2APIC: true)
        #expect(x2.low == 0x0000_1234_0045_0001 && x2.high == 0)
        #expect(x2.message(x2APIC: true) == message)
        #expect(!x2.hasReservedBitsSet(x2APIC: true) && x2.hasReservedBitsSet(x2APIC: false))
        let xAPIC = InterruptRemappingEntry(remapping: APICInterruptMessage(vector: 0x45, destination: 0x12), x2APIC: false)
        #expect(xAPIC.low == 0x0000_1200_0045_0001 && xAPIC.destination(x2APIC: false) == 0x12)
        let flags = InterruptRemappingEntry(
            remapping: APICInterruptMessage(
                vector: 0x30, deliveryMode: .lowestPriority, destinationMode: .logical, destination: 1,
                triggerMode: .level, redirectionHint: true),
            x2APIC: true)
        #expect(flags.low & 0xFF == 0x3D)
        #expect(InterruptRemappingEntry(low: 0, high: 0).message(x2APIC: true) == nil)
    }

    @Test("posted-format IRTEs point at a 64-byte-aligned descriptor (VT-d 9.11)")
    func irtePosted() {
        let entry = InterruptRemappingEntry(posting: 0x50, descriptorAddress: 0x1_2345_6780, urgent: true)
        #expect(entry.low == 0x2345_6780_0050_C001 && entry.high == 0x1_0000_0000)
        #expect(entry.isPosted && entry.isUrgent && entry.postedDescriptorAddress == 0x1_2345_6780)
        #expect(entry.message(x2APIC: true) == nil && !entry.hasReservedBitsSet(x2APIC: true))
    }

    @Test("IRTE source validation checks the requester ID with SQ masks, or a bus range")
    func sourceValidation() {
        let message = APICInterruptMessage(vector: 0x45, destination: 1)
        let exact = InterruptRemappingEntry(remapping: message, x2APIC: true, sourceID: 0x0010, sourceValidation: .requesterID)
        #expect(exact.acceptsSource(0x0010) && !exact.acceptsSource(0x0011))
        let anyFunction = InterruptRemappingEntry(
            remapping: message, x2APIC: true, sourceID: 0x0010, sourceValidation: .requesterID, sourceQualifier: 3)
        #expect(anyFunction.acceptsSource(0x0017) && !anyFunction.acceptsSource(0x0018))
        let buses = InterruptRemappingEntry(remapping: message, x2APIC: true, sourceID: 0x0205, sourceValidation: .busRange)
        #expect(buses.acceptsSource(0x0300) && !buses.acceptsSource(0x0600))
    }
}
