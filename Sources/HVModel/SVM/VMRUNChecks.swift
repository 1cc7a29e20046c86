// The consistency checks VMRUN makes on a VMCB before it enters the guest (AMD APM Vol. 2,
// 15.5.1 "Basic Operation", "Canonicalization and Consistency Checks"): a VMCB that fails one
// makes VMRUN exit at once with VMEXIT_INVALID, which says nothing of which. HV runs the same
// checks first and names the rule, as `VMEntryValidator` does for VMX's VM-entry checks.
// Embedded-safe: the bare-metal SVM engine runs them before every first VMRUN.

/// What VMRUN's checks look at in a VMCB.
public struct SVMGuestState: Sendable, Equatable {
    public var efer: UInt64 = 1 << 12
    public var cr0: UInt64 = 0x10
    public var cr3: UInt64 = 0
    public var cr4: UInt64 = 0
    public var dr6: UInt64 = 0xFFFF_0FF0
    public var dr7: UInt64 = 0x400
    /// CS's attributes in the VMCB's 12-bit form (`Segment.svmAttributes`).
    public var codeSegmentAttributes: UInt16 = 0x9B
    /// The second intercept vector (VMCB offset 0x010): bit 0 intercepts VMRUN.
    public var interceptMisc2: UInt32 = 1
    public var asid: UInt32 = 1
    public var iopmBase: UInt64 = 0
    public var msrpmBase: UInt64 = 0
    /// EVENTINJ (VMCB offset 0x0A8).
    public var eventInjection: UInt64 = 0
    /// MAXPHYADDR (CPUID 8000_0008h EAX[7:0]).
    public var physicalAddressBits: Int = 48
    /// Whether the CPU has long mode (CPUID 8000_0001h EDX bit 29).
    public var longModeSupported = true

    public init() {}
}

/// One check VMRUN would fail: the APM's words for it, and what in this VMCB breaks it.
public struct VMRUNCheckFailure: Sendable, Equatable, CustomStringConvertible {
    public var rule: StaticString
    public var detail: String

    public var description: String { "\(rule) (\(detail))" }

    public static func == (a: Self, b: Self) -> Bool {
        "\(a.rule)" == "\(b.rule)" && a.detail == b.detail
    }
}

public enum VMRUNChecks {
    /// EFER bits that may be set (AMD APM Vol. 2, 3.1.7): SCE, LME, LMA, NXE, SVME, LMSLE,
    /// FFXSR, TCE, MCOMMIT, INTWB, UAIE, AIBRSE; every other bit must be zero.
    public static let eferDefined: UInt64 = 1 << 0 | 1 << 8 | 1 << 10 | 1 << 11 | 1 << 12 | 1 << 13 | 1 << 14 | 1 << 15
        | 1 << 17 | 1 << 18 | 1 << 20 | 1 << 21
    /// CR4 bits that may be set (AMD APM Vol. 2, 3.1.3): VME, PVI, TSD, DE, PSE, PAE, MCE, PGE,
    /// PCE, OSFXSR, OSXMMEXCPT, UMIP, LA57, FSGSBASE, PCIDE, OSXSAVE, SMEP, SMAP, PKE, CET.
    public static let cr4Defined: UInt64 = 0x1FFF | 1 << 16 | 1 << 17 | 1 << 18 | 1 << 20 | 1 << 21 | 1 << 22 | 1 << 23

    /// Every check `state` fails, in the APM's order; empty when VMRUN would accept it.
    public static func failures(_ state: SVMGuestState) -> [VMRUNCheckFailure] {
        var failures: [VMRUNCheckFailure] = []
        func fail(_ rule: StaticString, _ detail: String) { failures.append(VMRUNCheckFailure(rule: rule, detail: detail)) }
        func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }
        let efer = state.efer, cr0 = state.cr0, cr4 = state.cr4
        let lme = efer & 1 << 8 != 0, lma = efer & 1 << 10 != 0, paging = cr0 & 1 << 31 != 0
        let pae = cr4 & 1 << 5 != 0, protected = cr0 & 1 != 0
        let csLong = state.codeSegmentAttributes & 1 << 9 != 0, csDefault32 = state.codeSegmentAttributes & 1 << 10 != 0

        if efer & 1 << 12 == 0 { fail("EFER.SVME is zero", "EFER \(hex(efer))") }
        if cr0 & 1 << 30 == 0 && cr0 & 1 << 29 != 0 { fail("CR0.CD is zero and CR0.NW is set", "CR0 \(hex(cr0))") }
        if cr0 >> 32 != 0 { fail("CR0[63:32] are not zero", "CR0 \(hex(cr0))") }
        // CR3: bits 63:52 are reserved in long mode, and no bit at or above MAXPHYADDR may be set.
        let cr3Reserved: UInt64 = lma || lme ? ~((1 << UInt64(min(state.physicalAddressBits, 52))) - 1) : 0xFFFF_FFFF_0000_0000
        if state.cr3 & cr3Reserved != 0 { fail("Any MBZ bit of CR3 is set", "CR3 \(hex(state.cr3))") }
        if cr4 & ~cr4Defined != 0 { fail("Any MBZ bit of CR4 is set", "CR4 \(hex(cr4)): bits \(hex(cr4 & ~cr4Defined))") }
        if state.dr6 >> 32 != 0 { fail("DR6[63:32] are not zero", "DR6 \(hex(state.dr6))") }
        if state.dr7 >> 32 != 0 { fail("DR7[63:32] are not zero", "DR7 \(hex(state.dr7))") }
        if efer & ~eferDefined != 0 { fail("Any MBZ bit of EFER is set", "EFER \(hex(efer)): bits \(hex(efer & ~eferDefined))") }
        if (lma || lme) && !state.longModeSupported {
            fail("EFER.LMA or EFER.LME is non-zero and this processor does not support long mode", "EFER \(hex(efer))")
        }
        if lme && paging && !pae { fail("EFER.LME and CR0.PG are both set and CR4.PAE is zero", "CR4 \(hex(cr4))") }
        if lme && paging && !protected { fail("EFER.LME and CR0.PG are both non-zero and CR0.PE is zero", "CR0 \(hex(cr0))") }
        if lme && paging && pae && csLong && csDefault32 {
            fail("EFER.LME, CR0.PG, CR4.PAE, CS.L, and CS.D are all non-zero", "CS attributes \(hex(UInt64(state.codeSegmentAttributes)))")
        }
        if state.interceptMisc2 & 1 == 0 { fail("The VMRUN intercept bit is clear", "intercept vector 2 \(hex(UInt64(state.interceptMisc2)))") }
        let limit: UInt64 = state.physicalAddressBits >= 64 ? .max : 1 << UInt64(state.physicalAddressBits)
        for (name, base, size) in [("MSRPM", state.msrpmBase, UInt64(8 << 10)), ("IOPM", state.iopmBase, UInt64(12 << 10))] {
            let (end, overflow) = base.addingReportingOverflow(size)
            if overflow || end > limit {
                fail("The MSR or IOIO intercept tables extend to a physical address that is greater than or equal to the maximum supported physical address",
                     "\(name) at \(hex(base))")
            }
        }
        // EVENTINJ (15.20): with V (bit 31) set, TYPE (bits 10:8) is 0 INTR, 2 NMI, 3 exception or 4 software interrupt.
        if state.eventInjection & 1 << 31 != 0 {
            let type = (state.eventInjection >> 8) & 7
            if type == 1 || type > 4 { fail("Illegal event injection (see Section 15.20)", "EVENTINJ \(hex(state.eventInjection)): type \(type)") }
        }
        if state.asid == 0 { fail("ASID is equal to zero", "the host's ASID") }
        return failures
    }
}
