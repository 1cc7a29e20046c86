// VMRUN's consistency checks (AMD APM Vol. 2, 15.5.1): the states HV's bare-metal engine gives
// its guests pass, and each rule, broken alone, is the one failure reported.
import HVModel
import Testing

@Suite("SVM: VMRUN's consistency checks")
struct VMRUNChecksTests {
    /// Real mode as the engine's first guest starts: EFER.SVME, CR0.ET, VMRUN intercepted, ASID 1.
    static var realMode: SVMGuestState { SVMGuestState() }

    /// Long mode as HVGuest sets it up: PE, MP, ET, NE, WP, PG; PAE, OSFXSR, OSXMMEXCPT; LME, LMA,
    /// SVME; a 64-bit code segment (L = 1, D = 0).
    static var longMode: SVMGuestState {
        var state = SVMGuestState()
        state.cr0 = 0x8001_0033
        state.cr3 = 0x1000
        state.cr4 = 0x620
        state.efer = 0x1500
        state.codeSegmentAttributes = 0x0A9B
        state.iopmBase = 0x20_0000
        state.msrpmBase = 0x20_4000
        return state
    }

    @Test("the engine's real-mode and long-mode guests pass every check")
    func validStates() {
        #expect(VMRUNChecks.failures(Self.realMode).isEmpty)
        #expect(VMRUNChecks.failures(Self.longMode).isEmpty)
    }

    @Test("each rule broken alone is reported, in the APM's words", arguments: [
        ("EFER.SVME is zero", { @Sendable (s: inout SVMGuestState) in s.efer &= ~(1 << 12) }),
        ("CR0.CD is zero and CR0.NW is set", { @Sendable (s: inout SVMGuestState) in s.cr0 |= 1 << 29 }),
        ("CR0[63:32] are not zero", { @Sendable (s: inout SVMGuestState) in s.cr0 |= 1 << 32 }),
        ("Any MBZ bit of CR3 is set", { @Sendable (s: inout SVMGuestState) in s.cr3 |= 1 << 60 }),
        ("Any MBZ bit of CR4 is set", { @Sendable (s: inout SVMGuestState) in s.cr4 |= 1 << 13 }),
        ("DR6[63:32] are not zero", { @Sendable (s: inout SVMGuestState) in s.dr6 |= 1 << 40 }),
        ("DR7[63:32] are not zero", { @Sendable (s: inout SVMGuestState) in s.dr7 |= 1 << 40 }),
        ("Any MBZ bit of EFER is set", { @Sendable (s: inout SVMGuestState) in s.efer |= 1 << 1 }),
        ("EFER.LMA or EFER.LME is non-zero and this processor does not support long mode", { @Sendable (s: inout SVMGuestState) in s.longModeSupported = false }),
        ("EFER.LME and CR0.PG are both set and CR4.PAE is zero", { @Sendable (s: inout SVMGuestState) in s.cr4 &= ~(1 << 5) }),
        ("EFER.LME and CR0.PG are both non-zero and CR0.PE is zero", { @Sendable (s: inout SVMGuestState) in s.cr0 &= ~1 }),
        ("EFER.LME, CR0.PG, CR4.PAE, CS.L, and CS.D are all non-zero", { @Sendable (s: inout SVMGuestState) in s.codeSegmentAttributes |= 1 << 10 }),
        ("The VMRUN intercept bit is clear", { @Sendable (s: inout SVMGuestState) in s.interceptMisc2 = 0 }),
        ("The MSR or IOIO intercept tables extend to a physical address that is greater than or equal to the maximum supported physical address",
         { @Sendable (s: inout SVMGuestState) in s.iopmBase = (1 << 48) - 0x1000 }),
        ("Illegal event injection (see Section 15.20)", { @Sendable (s: inout SVMGuestState) in s.eventInjection = 1 << 31 | 5 << 8 | 14 }),
        ("ASID is equal to zero", { @Sendable (s: inout SVMGuestState) in s.asid = 0 }),
    ] as [(String, @Sendable (inout SVMGuestState) -> Void)])
    func eachRule(_ rule: String, _ breakIt: @Sendable (inout SVMGuestState) -> Void) {
        var state = Self.longMode
        breakIt(&state)
        let failures = VMRUNChecks.failures(state)
        #expect(failures.map { "\($0.rule)" } == [rule], "\(failures)")
    }

    @Test("a legal event (an exception with its vector) passes; NMI, INTR and software interrupts are legal types")
    func legalEvents() {
        var state = Self.longMode
        for type: UInt64 in [0, 2, 3, 4] {
            state.eventInjection = 1 << 31 | type << 8 | 13
            #expect(VMRUNChecks.failures(state).isEmpty, "type \(type)")
        }
    }
}
