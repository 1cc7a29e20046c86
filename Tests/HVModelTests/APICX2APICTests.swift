import HVModel
import Testing

@Suite("x2APIC MSR view and APIC base transitions")
struct APICX2APICTests {
    static let writeFaultCases: [(UInt32, UInt64)] = [
        (0x802, 0), (0x803, 0), (0x80A, 0), (0x80D, 0), (0x810, 0), (0x820, 0), (0x839, 0),
        (0x808, 0x100), (0x808, 1 << 32), (0x80B, 1), (0x828, 1), (0x830, 1 << 12), (0x830, 1 << 13),
        (0x830, 1 << 20), (0x83F, 0x100), (0x83E, 0x4), (0x832, 1 << 19), (0x80F, 1 << 13), (0x809, 0),
        (0x831, 0),
    ]

    func x2APIC(id: UInt32 = 0x105) throws -> LocalAPIC {
        var apic = enabledAPIC(id: id)
        try apic.writeAPICBase(0xFEE0_0C00)
        return apic
    }

    @Test("x2APIC MSRs read the 32-bit ID, version, derived LDR and 64-bit ICR")
    func reads() throws {
        var apic = try x2APIC()
        #expect(apic.mode == .x2APIC)
        #expect(try apic.readMSR(0x802) == 0x105)
        #expect(try apic.readMSR(0x803) == 0x0106_0014)
        #expect(try apic.readMSR(0x80D) == 0x0010_0020)
        #expect(try apic.readMSR(0x80F) == 0x1FF)
        let effect = try apic.writeMSR(0x830, value: 0x0000_0005_0000_4031)
        #expect(effect == .sendIPI(APICInterruptMessage(vector: 0x31, destination: 5)))
        #expect(try apic.readMSR(0x830) == 0x0000_0005_0000_4031)
    }

    @Test(
        "reading registers x2APIC lacks or write-only registers raises #GP",
        arguments: [UInt32(0x809), 0x80C, 0x80E, 0x831, 0x80B, 0x83F, 0x804, 0x801, 0x8FF, 0x840])
    func readFaults(msr: UInt32) throws {
        let apic = try x2APIC()
        #expect(raisesGP { try apic.readMSR(msr) })
    }

    @Test(
        "writing read-only registers or setting reserved bits raises #GP (SDM 11.12.1.3)",
        arguments: APICX2APICTests.writeFaultCases)
    func writeFaults(msr: UInt32, value: UInt64) throws {
        var apic = try x2APIC()
        #expect(raisesGP { try apic.writeMSR(msr, value: value) })
    }

    @Test("SELF IPI sends a fixed edge IPI to this APIC; EOI takes only zero")
    func selfIPIAndEOI() throws {
        var apic = try x2APIC()
        let effect = try apic.writeMSR(0x83F, value: 0x41)
        #expect(effect == .sendIPI(APICInterruptMessage(vector: 0x41, destination: 0x105, shorthand: .selfOnly)))
        _ = apic.accept(APICInterruptMessage(vector: 0x41, destination: 0x105))
        _ = apic.acknowledge()
        #expect(try apic.readMSR(0x810 + 2) == 1 << 1)  // ISR bit 0x41
        let eoi = try apic.writeMSR(0x80B, value: 0)
        #expect(eoi == .endOfInterrupt(APICEndOfInterrupt(vector: 0x41, levelTriggered: false, broadcastToIOAPICs: false)))
        #expect(try apic.writeMSR(0x808, value: 0x20) == .none)
        #expect(try apic.readMSR(0x808) == 0x20)
    }

    @Test("the MSR view faults outside x2APIC mode")
    func notInX2APICMode() {
        var apic = enabledAPIC()
        #expect(raisesGP { try apic.readMSR(0x802) })
        #expect(raisesGP { try apic.writeMSR(0x808, value: 0) })
    }

    @Test("IA32_APIC_BASE allows xAPIC -> x2APIC -> disabled -> xAPIC and refuses the rest (SDM 11.12.5)")
    func baseTransitions() throws {
        var apic = try x2APIC()
        #expect(raisesGP { try apic.writeAPICBase(0xFEE0_0800) })  // x2APIC -> xAPIC
        #expect(raisesGP { try apic.writeAPICBase(0xFEE0_0400) })  // EN = 0, EXTD = 1
        #expect(raisesGP { try apic.writeAPICBase(0xFEE0_0E00) })  // bit 9 reserved
        try apic.writeAPICBase(0xFEE0_0000)
        #expect(apic.mode == .disabled)
        #expect(raisesGP { try apic.writeAPICBase(0xFEE0_0C00) })  // disabled -> x2APIC
        try apic.writeAPICBase(0xFEE0_0800)
        #expect(apic.mode == .xAPIC)
        #expect(apic.read(offset: 0xF0) == 0xFF)  // disabling reset the APIC
        #expect(apic.read(offset: 0x20) == 0x0500_0000)
    }
}

/// Whether `body` raises #GP.
func raisesGP<T>(_ body: () throws -> T) -> Bool {
    do {
        _ = try body()
        return false
    } catch {
        return error as? APICFault == .generalProtection
    }
}
