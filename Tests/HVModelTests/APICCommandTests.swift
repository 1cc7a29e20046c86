import HVModel
import Testing

@Suite("APIC interrupt commands and destinations")
struct APICCommandTests {
    @Test(
        "ICR low dwords decode to their delivery mode, shorthand, level and trigger (SDM 11.6.1)",
        arguments: [
            (UInt32(0x000C_4500), APICDeliveryMode.initialize, APICDestinationShorthand.allExcludingSelf, true, APICTriggerMode.edge, UInt8(0x00)),
            (0x000C_4608, .startup, .allExcludingSelf, true, .edge, 0x08),
            (0x0000_4400, .nmi, .none, true, .edge, 0x00),
            (0x0000_4200, .smi, .none, true, .edge, 0x00),
            (0x0000_4031, .fixed, .none, true, .edge, 0x31),
            (0x0000_4931, .lowestPriority, .none, true, .edge, 0x31),
            (0x0004_4041, .fixed, .selfOnly, true, .edge, 0x41),
            (0x0008_C050, .fixed, .allIncludingSelf, true, .level, 0x50),
            (0x000C_8500, .initialize, .allExcludingSelf, false, .level, 0x00),
        ])
    func icrDecoding(
        low: UInt32, mode: APICDeliveryMode, shorthand: APICDestinationShorthand, level: Bool,
        trigger: APICTriggerMode, vector: UInt8
    ) {
        let command = InterruptCommand(rawValue: UInt64(low))
        #expect(command.deliveryMode == mode)
        #expect(command.shorthand == shorthand)
        #expect(command.level == level)
        #expect(command.triggerMode == trigger)
        #expect(command.vector == vector)
        #expect(command.message(x2APIC: false).isINITLevelDeassert == (low == 0x000C_8500))
    }

    @Test("writing ICR low sends the IPI to the destination in ICR high bits 31:24")
    func xAPICSend() {
        var apic = enabledAPIC()
        #expect(apic.write(offset: 0x310, value: 0x0312_3456) == .none)
        #expect(apic.read(offset: 0x310) == 0x0300_0000)
        let effect = apic.write(offset: 0x300, value: 0x0000_4831 | 1 << 12)  // delivery status is read-only
        #expect(effect == .sendIPI(APICInterruptMessage(vector: 0x31, destinationMode: .logical, destination: 3)))
        #expect(apic.read(offset: 0x300) == 0x4831)
        let sipi = APICInterruptMessage(vector: 0x9F, deliveryMode: .startup, destination: 1)
        #expect(InterruptCommand(sipi, x2APIC: false).rawValue == 0x0100_0000_0000_469F)
        #expect(InterruptCommand(sipi, x2APIC: true).rawValue == 0x0000_0001_0000_469F)
    }

    @Test("xAPIC physical destinations match the APIC ID or broadcast 0xFF")
    func physicalDestination() {
        let apic = enabledAPIC(id: 3)
        #expect(apic.matches(destinationMode: .physical, destination: 3))
        #expect(apic.matches(destinationMode: .physical, destination: 0xFF))
        #expect(!apic.matches(destinationMode: .physical, destination: 4))
    }

    @Test("flat logical destinations match any common LDR bit (SDM 11.6.2.2)")
    func flatLogical() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0xD0, value: 0x0400_0000)
        #expect(apic.matches(destinationMode: .logical, destination: 0x04))
        #expect(apic.matches(destinationMode: .logical, destination: 0x06))
        #expect(!apic.matches(destinationMode: .logical, destination: 0x01))
        #expect(apic.matches(destinationMode: .logical, destination: 0xFF))
    }

    @Test("cluster logical destinations need the same cluster and a common member bit")
    func clusterLogical() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0xE0, value: 0x0FFF_FFFF)
        _ = apic.write(offset: 0xD0, value: 0x2100_0000)
        #expect(apic.read(offset: 0xE0) == 0x0FFF_FFFF)
        #expect(apic.matches(destinationMode: .logical, destination: 0x21))
        #expect(apic.matches(destinationMode: .logical, destination: 0x23))
        #expect(!apic.matches(destinationMode: .logical, destination: 0x11))
        #expect(!apic.matches(destinationMode: .logical, destination: 0x22))
    }

    @Test("x2APIC destinations: 32-bit physical IDs and cluster << 16 | bit logical IDs (SDM 11.12.10)")
    func x2APICDestinations() throws {
        var apic = enabledAPIC(id: 0x23)
        try apic.writeAPICBase(0xFEE0_0C00)
        #expect(apic.logicalDestination == 0x0002_0008)
        #expect(apic.matches(destinationMode: .logical, destination: 0x0002_0008))
        #expect(apic.matches(destinationMode: .logical, destination: 0x0002_000C))
        #expect(!apic.matches(destinationMode: .logical, destination: 0x0001_0008))
        #expect(apic.matches(destinationMode: .logical, destination: 0xFFFF_FFFF))
        #expect(apic.matches(destinationMode: .physical, destination: 0x23))
        #expect(!apic.matches(destinationMode: .physical, destination: 0xFF))
        #expect(apic.matches(destinationMode: .physical, destination: 0xFFFF_FFFF))
        #expect(LocalAPIC.x2APICLogicalID(forAPICID: 0x1_0005) == 0x1000_0020)
    }

    /// Four enabled APICs with IDs 0-3 and flat logical IDs 1, 2, 4, 8.
    func fourAPICs() -> [LocalAPIC] {
        (0..<4).map { index in
            var apic = enabledAPIC(id: UInt32(index))
            _ = apic.write(offset: 0xD0, value: UInt32(1 << index) << 24)
            return apic
        }
    }

    func targets(_ message: APICInterruptMessage, sender: Int?, _ apics: [LocalAPIC]) -> [Int] {
        var result: [Int] = []
        APICRouting.forEachTarget(of: message, sender: sender, among: apics) { result.append($0) }
        return result
    }

    @Test("shorthands select self, all including self, or all excluding self")
    func shorthands() {
        let apics = fourAPICs()
        let base = APICInterruptMessage(vector: 0x40, destination: 0)
        var message = base
        message.shorthand = .selfOnly
        #expect(targets(message, sender: 1, apics) == [1])
        message.shorthand = .allIncludingSelf
        #expect(targets(message, sender: 1, apics) == [0, 1, 2, 3])
        message.shorthand = .allExcludingSelf
        #expect(targets(message, sender: 1, apics) == [0, 2, 3])
        #expect(targets(APICInterruptMessage(vector: 0x40, destination: 2), sender: 0, apics) == [2])
        #expect(targets(APICInterruptMessage(vector: 0x40, destinationMode: .logical, destination: 0x0A), sender: 0, apics) == [1, 3])
    }

    @Test("lowest priority goes to the lowest APR among the destinations, ties to the lowest index")
    func lowestPriority() {
        var apics = fourAPICs()
        for (index, tpr) in [UInt32(0x40), 0x10, 0x20, 0x10].enumerated() { _ = apics[index].write(offset: 0x80, value: tpr) }
        let message = APICInterruptMessage(vector: 0x51, deliveryMode: .lowestPriority, destinationMode: .logical, destination: 0x0F)
        #expect(targets(message, sender: nil, apics) == [1])
        var accepted: [Int] = []
        APICRouting.deliver(message, sender: nil, to: &apics) { index, result in
            #expect(result == .requested(vector: 0x51))
            accepted.append(index)
        }
        #expect(accepted == [1] && apics[1].irr.contains(0x51))
    }

    @Test("INIT-SIPI-SIPI to all excluding self comes back as INIT and start-up for each AP")
    func initSIPI() {
        var apics = fourAPICs()
        var bsp = apics[0]
        var results: [APICAcceptance] = []
        for low in [UInt32(0x000C_4500), 0x000C_4608] {
            guard case .sendIPI(let message) = bsp.write(offset: 0x300, value: low) else {
                Issue.record("no IPI")
                return
            }
            APICRouting.deliver(message, sender: 0, to: &apics) { _, result in results.append(result) }
        }
        #expect(results == [.initialize, .initialize, .initialize, .startup(vector: 8), .startup(vector: 8), .startup(vector: 8)])
        #expect(apics[1].accept(InterruptCommand(rawValue: 0x000C_8500).message(x2APIC: false)) == .ignored)
    }
}
