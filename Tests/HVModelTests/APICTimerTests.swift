import HVModel
import Testing

@Suite("APIC timer")
struct APICTimerTests {
    @Test(
        "the divide configuration selects 2, 4, ... 128 or 1 (SDM 11.5.4, Figure 11-10)",
        arguments: [(UInt32(0x0), UInt64(2)), (0x1, 4), (0x2, 8), (0x3, 16), (0x8, 32), (0x9, 64), (0xA, 128), (0xB, 1)])
    func divisors(configuration: UInt32, divisor: UInt64) {
        #expect(APICTimerState.divisor(forConfiguration: configuration) == divisor)
    }

    @Test("one-shot counts down once per divided tick, fires once and stays at zero")
    func oneShot() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x320, value: 0x30)
        _ = apic.write(offset: 0x3E0, value: 0x3)  // divide by 16
        #expect(apic.write(offset: 0x380, value: 1000) == .timerReprogrammed)
        #expect(apic.read(offset: 0x390) == 1000)
        #expect(apic.nextTimerExpiry == 16_000)
        #expect(apic.advance(toCycles: 160).expirations == 0)
        #expect(apic.read(offset: 0x390) == 990)
        #expect(apic.advance(toCycles: 15_999) == APICTimerExpiry(expirations: 0, requestedVector: nil))
        #expect(apic.read(offset: 0x390) == 1)
        #expect(apic.advance(toCycles: 16_000) == APICTimerExpiry(expirations: 1, requestedVector: 0x30))
        #expect(apic.read(offset: 0x390) == 0)
        #expect(apic.nextTimerExpiry == nil)
        #expect(apic.advance(toCycles: 100_000).expirations == 0)
        #expect(apic.pendingInterrupt == 0x30)
    }

    @Test("periodic reloads the initial count and fires every period")
    func periodic() {
        var apic = enabledAPIC { $0.tscCyclesPerTimerTick = 2 }
        _ = apic.write(offset: 0x320, value: 0x2_0031)
        _ = apic.write(offset: 0x3E0, value: 0xB)  // divide by 1: one count per 2 TSC cycles
        _ = apic.write(offset: 0x380, value: 100)
        #expect(apic.advance(toCycles: 199).expirations == 0)
        #expect(apic.advance(toCycles: 200) == APICTimerExpiry(expirations: 1, requestedVector: 0x31))
        #expect(apic.read(offset: 0x390) == 100)
        #expect(apic.advance(toCycles: 1000).expirations == 4)
        #expect(apic.currentCount(at: 1050) == 75)
        #expect(apic.nextTimerExpiry == 1200)
        #expect(apic.irr == APICVectorSet([0x31]))  // five expirations, one IRR bit
    }

    @Test("a masked timer still counts and expires but requests nothing")
    func masked() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x320, value: 0x1_0030)
        _ = apic.write(offset: 0x3E0, value: 0xB)
        _ = apic.write(offset: 0x380, value: 10)
        #expect(apic.advance(toCycles: 10) == APICTimerExpiry(expirations: 1, requestedVector: nil))
        #expect(apic.irr.isEmpty)
    }

    @Test("TSC-deadline mode fires once at the deadline, ignores the initial count and disarms")
    func tscDeadline() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x320, value: 0x4_0032)
        #expect(apic.writeTSCDeadline(5000) == .timerReprogrammed)
        #expect(apic.write(offset: 0x380, value: 7) == .none)
        #expect(apic.read(offset: 0x380) == 0 && apic.read(offset: 0x390) == 0)
        #expect(apic.nextTimerExpiry == 5000)
        #expect(apic.advance(toCycles: 4999).expirations == 0)
        #expect(apic.advance(toCycles: 5000) == APICTimerExpiry(expirations: 1, requestedVector: 0x32))
        #expect(apic.tscDeadline == 0 && apic.nextTimerExpiry == nil)
        _ = apic.writeTSCDeadline(100)  // already past: fires at the next advance
        #expect(apic.advance(toCycles: 5000).expirations == 1)
    }

    @Test("leaving TSC-deadline mode disarms the timer; deadline writes in other modes are ignored")
    func deadlineModeSwitch() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x320, value: 0x4_0032)
        _ = apic.writeTSCDeadline(5000)
        _ = apic.write(offset: 0x320, value: 0x32)
        #expect(apic.nextTimerExpiry == nil && apic.tscDeadline == 0)
        #expect(apic.writeTSCDeadline(9000) == .none)
        #expect(apic.tscDeadline == 0)
    }

    @Test("an initial count of 0 stops the timer")
    func stop() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x320, value: 0x2_0030)
        _ = apic.write(offset: 0x380, value: 50)
        _ = apic.write(offset: 0x380, value: 0)
        #expect(apic.nextTimerExpiry == nil && apic.read(offset: 0x390) == 0)
        #expect(apic.advance(toCycles: 10_000).expirations == 0)
    }

    @Test("a divisor change keeps the count reached and applies the new rate from then on")
    func divisorChange() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x320, value: 0x30)
        _ = apic.write(offset: 0x3E0, value: 0x0)  // divide by 2
        _ = apic.write(offset: 0x380, value: 100)
        _ = apic.advance(toCycles: 50)
        #expect(apic.read(offset: 0x390) == 75)
        _ = apic.write(offset: 0x3E0, value: 0xB)
        #expect(apic.read(offset: 0x3E0) == 0xB)
        _ = apic.advance(toCycles: 60)
        #expect(apic.read(offset: 0x390) == 65)
        #expect(apic.nextTimerExpiry == 125)
    }

    @Test("switching one-shot to periodic mid-count keeps counting and then reloads")
    func oneShotToPeriodic() {
        var apic = enabledAPIC()
        _ = apic.write(offset: 0x320, value: 0x30)
        _ = apic.write(offset: 0x3E0, value: 0xB)
        _ = apic.write(offset: 0x380, value: 10)
        _ = apic.advance(toCycles: 4)
        _ = apic.write(offset: 0x320, value: 0x2_0030)
        #expect(apic.read(offset: 0x390) == 6)
        #expect(apic.advance(toCycles: 30).expirations == 3)  // at 10, 20 and 30
    }
}
