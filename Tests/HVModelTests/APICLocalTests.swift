import HVModel
import Testing

/// A software-enabled xAPIC with the given ID (SVR = 0x1FF).
func enabledAPIC(id: UInt32 = 0, configure: (inout LocalAPIC.Configuration) -> Void = { _ in }) -> LocalAPIC {
    var configuration = LocalAPIC.Configuration(apicID: id)
    configure(&configuration)
    var apic = LocalAPIC(configuration)
    _ = apic.write(offset: 0xF0, value: 0x1FF)
    return apic
}

@Suite("APIC priorities, acceptance and EOI")
struct APICLocalTests {
    @Test(
        "PPR is TPR when TPR's class is at least the in-service class, else the in-service class (SDM 11.8.3.1)",
        arguments: [
            (UInt8(0x00), UInt8(0x00), UInt8(0x00)), (0x20, 0x31, 0x30), (0x35, 0x31, 0x35), (0x4F, 0x31, 0x4F),
            (0x10, 0xEF, 0xE0), (0xF0, 0xFE, 0xF0),
        ])
    func processorPriority(tpr: UInt8, isrv: UInt8, expected: UInt8) {
        #expect(APICPriority.processorPriority(tpr: tpr, isrv: isrv) == expected)
    }

    @Test(
        "APR follows the lowest-priority arbitration rule (SDM 11.6.2.4)",
        arguments: [
            (UInt8(0x25), UInt8(0x10), UInt8(0x20), UInt8(0x25)), (0x25, 0x20, 0x10, 0x20), (0x25, 0x10, 0x31, 0x30),
            (0x00, 0x00, 0x00, 0x00), (0x3F, 0x51, 0x20, 0x50),
        ])
    func arbitrationPriority(tpr: UInt8, isrv: UInt8, irrv: UInt8, expected: UInt8) {
        #expect(APICPriority.arbitrationPriority(tpr: tpr, isrv: isrv, irrv: irrv) == expected)
    }

    @Test("the PPR and APR registers read what the rules compute from TPR, ISR and IRR")
    func priorityRegisters() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x80, value: 0x25)
        _ = apic.accept(APICInterruptMessage(vector: 0x31, destination: 0))
        #expect(apic.read(offset: 0xA0) == 0x25)
        #expect(apic.read(offset: 0x90) == 0x30)
        #expect(apic.acknowledge() == 0x31)
        #expect(apic.read(offset: 0xA0) == 0x30)
        #expect(apic.read(offset: 0x100 + 0x10) == 1 << 17)  // ISR bit 0x31 in the second dword
    }

    @Test("a requested vector is dispatched only when its class exceeds PPR's class")
    func dispatchAgainstTPR() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x80, value: 0x30)
        #expect(apic.accept(APICInterruptMessage(vector: 0x31, destination: 0)) == .requested(vector: 0x31))
        #expect(apic.pendingInterrupt == nil)
        #expect(apic.acknowledge() == nil)
        _ = apic.write(offset: 0x80, value: 0x2F)
        #expect(apic.pendingInterrupt == 0x31)
    }

    @Test("nested interrupts retire highest in-service first and lower ones wait for their EOI")
    func nestedEOI() {
        var apic = enabledAPIC()
        _ = apic.accept(APICInterruptMessage(vector: 0x40, destination: 0))
        #expect(apic.acknowledge() == 0x40)
        _ = apic.accept(APICInterruptMessage(vector: 0x50, destination: 0))
        _ = apic.accept(APICInterruptMessage(vector: 0x41, destination: 0))
        #expect(apic.pendingInterrupt == 0x50)
        #expect(apic.acknowledge() == 0x50)
        #expect(apic.processorPriority == 0x50)
        #expect(apic.isr == APICVectorSet([0x40, 0x50]))
        let edge = APICEndOfInterrupt(vector: 0x50, levelTriggered: false, broadcastToIOAPICs: false)
        #expect(apic.write(offset: 0xB0, value: 0) == .endOfInterrupt(edge))
        #expect(apic.processorPriority == 0x40)
        #expect(apic.pendingInterrupt == nil)  // 0x41 is in the same class as in-service 0x40
        #expect(apic.endOfInterrupt() == .endOfInterrupt(APICEndOfInterrupt(vector: 0x40, levelTriggered: false, broadcastToIOAPICs: false)))
        #expect(apic.acknowledge() == 0x41)
        #expect(apic.endOfInterrupt() != .none)
        #expect(apic.endOfInterrupt() == .none)
        #expect(apic.isr.isEmpty && apic.irr.isEmpty)
    }

    @Test("a level-triggered EOI is broadcast unless SVR bit 12 suppresses it")
    func eoiBroadcastSuppression() {
        var apic = enabledAPIC()
        _ = apic.accept(APICInterruptMessage(vector: 0x60, destination: 0, triggerMode: .level))
        #expect(apic.tmr.contains(0x60))
        _ = apic.acknowledge()
        #expect(apic.endOfInterrupt() == .endOfInterrupt(APICEndOfInterrupt(vector: 0x60, levelTriggered: true, broadcastToIOAPICs: true)))
        _ = apic.write(offset: 0xF0, value: 0x11FF)
        #expect(apic.read(offset: 0xF0) == 0x11FF)
        _ = apic.accept(APICInterruptMessage(vector: 0x60, destination: 0, triggerMode: .level))
        _ = apic.acknowledge()
        #expect(apic.endOfInterrupt() == .endOfInterrupt(APICEndOfInterrupt(vector: 0x60, levelTriggered: true, broadcastToIOAPICs: false)))
        // An edge-triggered acceptance of the same vector clears its TMR bit.
        _ = apic.accept(APICInterruptMessage(vector: 0x60, destination: 0))
        #expect(!apic.tmr.contains(0x60))
    }

    @Test("the version register reports 0x14, max LVT entry and EOI-broadcast suppression")
    func versionRegister() {
        var apic = enabledAPIC()
        #expect(apic.read(offset: 0x30) == 0x0106_0014)
        var old = enabledAPIC { $0.hasCMCI = false; $0.supportsEOIBroadcastSuppression = false }
        #expect(old.read(offset: 0x30) == 0x0005_0014)
        _ = old.write(offset: 0xF0, value: 0x11FF)
        #expect(old.read(offset: 0xF0) == 0x01FF)  // bit 12 is reserved without support
        #expect(old.read(offset: 0x2F0) == 0)  // no CMCI register
        #expect(old.errorStatus == [] && old.unlatchedErrors == .illegalRegisterAddress)
    }

    @Test("the ESR shows errors only after a write latches them, and the next write clears them")
    func errorStatusLatch() {
        var apic = enabledAPIC()
        #expect(apic.read(offset: 0x040) == 0)  // reserved offset
        #expect(apic.read(offset: 0x280) == 0)
        _ = apic.write(offset: 0x280, value: 0)
        #expect(apic.read(offset: 0x280) == 0x80)
        _ = apic.write(offset: 0x280, value: 0)
        #expect(apic.read(offset: 0x280) == 0)
    }

    @Test("an unmasked error LVT raises its vector when an error is logged")
    func errorInterrupt() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x370, value: 0xFE)
        _ = apic.write(offset: 0x050, value: 1)  // reserved offset
        #expect(apic.pendingInterrupt == 0xFE)
    }

    @Test("vectors below 16 are illegal: not sent, not received, and logged in the ESR")
    func illegalVectors() {
        var apic = enabledAPIC()
        #expect(apic.write(offset: 0x300, value: 0x4005) == .none)
        #expect(apic.accept(APICInterruptMessage(vector: 0x0F, destination: 0)) == .ignored)
        _ = apic.write(offset: 0x280, value: 0)
        #expect(apic.read(offset: 0x280) == 0x60)
    }

    @Test("software disable masks every LVT entry and keeps the masks set")
    func softwareDisable() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x320, value: 0x20)
        #expect(apic.read(offset: 0x320) == 0x20)
        _ = apic.write(offset: 0xF0, value: 0xFF)
        #expect(apic.read(offset: 0x320) == 0x1_0020)
        _ = apic.write(offset: 0x350, value: 0x700)
        #expect(apic.read(offset: 0x350) == 0x1_0700)
        #expect(apic.accept(APICInterruptMessage(vector: 0x40, destination: 0)) == .ignored)
        #expect(apic.accept(APICInterruptMessage(vector: 0, deliveryMode: .nmi, destination: 0)) == .nmi)
    }

    @Test("the power-up state: SVR 0xFF, DFR all ones, every LVT masked, ID from the configuration")
    func resetState() {
        var apic = LocalAPIC(.init(apicID: 3, isBootstrapProcessor: true))
        #expect(apic.read(offset: 0xF0) == 0xFF)
        #expect(apic.read(offset: 0xE0) == 0xFFFF_FFFF)
        #expect(apic.read(offset: 0x20) == 0x0300_0000)
        #expect(apic.base.rawValue == 0xFEE0_0900)
        for entry in LocalVectorTableEntry.allCases { #expect(apic.lvtEntry(entry) == .masked) }
    }

    @Test("LINT0 in ExtINT mode hands the interrupt to the PIC; level LINT0 holds remote IRR until EOI")
    func lint0() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x350, value: 0x700)
        #expect(apic.raiseLocalInterrupt(.lint0) == .extINT)
        _ = apic.write(offset: 0x350, value: 0x8000 | 0x38)
        #expect(apic.raiseLocalInterrupt(.lint0) == .requested(vector: 0x38))
        #expect(apic.lvtEntry(.lint0).remoteIRR)
        #expect(apic.raiseLocalInterrupt(.lint0) == .ignored)
        _ = apic.acknowledge()
        _ = apic.endOfInterrupt()
        #expect(!apic.lvtEntry(.lint0).remoteIRR)
        _ = apic.write(offset: 0x360, value: 0x8400)  // LINT1 NMI; level is forced to edge
        #expect(apic.read(offset: 0x360) == 0x400)
        #expect(apic.raiseLocalInterrupt(.lint1) == .nmi)
    }

    @Test("INIT resets registers but keeps the APIC ID and base")
    func initReset() {
        var apic = enabledAPIC(id: 2)
        _ = apic.write(offset: 0x20, value: 0x0700_0000)
        _ = apic.write(offset: 0x80, value: 0x40)
        _ = apic.accept(APICInterruptMessage(vector: 0x40, destination: 0))
        apic.resetForINIT()
        #expect(apic.read(offset: 0x20) == 0x0700_0000)
        #expect(apic.read(offset: 0x80) == 0 && apic.irr.isEmpty && !apic.isSoftwareEnabled)
    }

    @Test("the 1 KiB register image (KVM_GET_LAPIC layout) round-trips registers, priorities and the timer")
    func registerImage() {
        var apic = enabledAPIC(id: 2)
        _ = apic.write(offset: 0x80, value: 0x20)
        _ = apic.write(offset: 0xD0, value: 0x0400_0000)
        _ = apic.write(offset: 0x320, value: 0x2_0030)
        _ = apic.write(offset: 0x3E0, value: 0xB)
        _ = apic.write(offset: 0x380, value: 100)
        _ = apic.accept(APICInterruptMessage(vector: 0x41, destination: 2, triggerMode: .level))
        _ = apic.acknowledge()
        _ = apic.accept(APICInterruptMessage(vector: 0x35, destination: 2))
        _ = apic.advance(toCycles: 30)
        let image = apic.registerImage
        #expect(image.count == 1024 && image[0x23] == 2 && image[0x80] == 0x20 && image[0x390] == 70)
        #expect(image[0x120] == 0x02 && image[0x1A0] == 0x02 && image[0x212] == 0x20)  // ISR/TMR 0x41, IRR 0x35
        guard let copy = LocalAPIC(registerImage: image, configuration: apic.configuration, base: apic.base, now: 30) else {
            Issue.record("image refused")
            return
        }
        #expect(copy.registerImage == image)
        #expect(copy.processorPriority == 0x40 && copy.isr == apic.isr && copy.irr == apic.irr && copy.tmr == apic.tmr)
        #expect(copy.nextTimerExpiry == 100)
        #expect(LocalAPIC(registerImage: [UInt8](repeating: 0, count: 16), configuration: apic.configuration, base: apic.base) == nil)
    }

    @Test("a vector set finds its highest member and maps to 32-bit registers")
    func vectorSet() {
        var set = APICVectorSet([0x20, 0x9F, 0xFF])
        #expect(set.highest == 0xFF)
        #expect(set.register(7) == 0x8000_0000 && set.register(4) == 0x8000_0000 && set.register(1) == 1)
        set.remove(0xFF)
        #expect(set.highest == 0x9F)
        #expect(APICVectorSet().highest == nil)
    }
}
