// Basic exit reasons (SDM Vol. 3D, Appendix C "VMX Basic Exit Reasons") and the exit-reason
// field around them (SDM Vol. 3C, 25.9.1, Table 25-18).

/// A basic exit reason: bits 15:0 of the exit-reason field.
public struct VMXBasicExitReason: RawRepresentable, Hashable, Sendable, Comparable {
    public var rawValue: UInt16
    @inlinable public init(rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt16) { self.rawValue = rawValue }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    public static let exceptionOrNMI = Self(0)
    public static let externalInterrupt = Self(1)
    public static let tripleFault = Self(2)
    public static let ioInstruction = Self(30)
    public static let controlRegisterAccess = Self(28)
    public static let movDR = Self(29)
    public static let taskSwitch = Self(9)
    public static let cpuid = Self(10)
    public static let hlt = Self(12)
    public static let vmcall = Self(18)
    public static let rdmsr = Self(31)
    public static let wrmsr = Self(32)
    public static let invalidGuestState = Self(33)
    public static let msrLoadingFailure = Self(34)
    public static let machineCheckDuringEntry = Self(41)
    public static let apicAccess = Self(44)
    public static let eptViolation = Self(48)
    public static let eptMisconfiguration = Self(49)
    public static let preemptionTimerExpired = Self(52)

    /// Every basic exit reason Appendix C defines, with its name.
    public static let all: [(reason: UInt16, name: String)] = [
        (0, "exception or non-maskable interrupt (NMI)"), (1, "external interrupt"), (2, "triple fault"),
        (3, "INIT signal"), (4, "start-up IPI (SIPI)"), (5, "I/O system-management interrupt (SMI)"),
        (6, "other SMI"), (7, "interrupt window"), (8, "NMI window"), (9, "task switch"), (10, "CPUID"),
        (11, "GETSEC"), (12, "HLT"), (13, "INVD"), (14, "INVLPG"), (15, "RDPMC"), (16, "RDTSC"), (17, "RSM"),
        (18, "VMCALL"), (19, "VMCLEAR"), (20, "VMLAUNCH"), (21, "VMPTRLD"), (22, "VMPTRST"), (23, "VMREAD"),
        (24, "VMRESUME"), (25, "VMWRITE"), (26, "VMXOFF"), (27, "VMXON"), (28, "control-register accesses"),
        (29, "MOV DR"), (30, "I/O instruction"), (31, "RDMSR"), (32, "WRMSR"),
        (33, "VM-entry failure due to invalid guest state"), (34, "VM-entry failure due to MSR loading"),
        (36, "MWAIT"), (37, "monitor trap flag"), (39, "MONITOR"), (40, "PAUSE"),
        (41, "VM-entry failure due to machine-check event"), (43, "TPR below threshold"), (44, "APIC access"),
        (45, "virtualized EOI"), (46, "access to GDTR or IDTR"), (47, "access to LDTR or TR"),
        (48, "EPT violation"), (49, "EPT misconfiguration"), (50, "INVEPT"), (51, "RDTSCP"),
        (52, "VMX-preemption timer expired"), (53, "INVVPID"), (54, "WBINVD or WBNOINVD"), (55, "XSETBV"),
        (56, "APIC write"), (57, "RDRAND"), (58, "INVPCID"), (59, "VMFUNC"), (60, "ENCLS"), (61, "RDSEED"),
        (62, "page-modification log full"), (63, "XSAVES"), (64, "XRSTORS"), (65, "PCONFIG"),
        (66, "SPP-related event"), (67, "UMWAIT"), (68, "TPAUSE"), (69, "LOADIWKEY"), (70, "ENCLV"),
        (72, "ENQCMD PASID translation failure"), (73, "ENQCMDS PASID translation failure"),
        (74, "bus lock"), (75, "instruction timeout"), (76, "SEAMCALL"), (77, "TDCALL"),
        (78, "RDMSRLIST"), (79, "WRMSRLIST"),
    ]

    /// The Appendix C name, or nil for a number the SDM does not define.
    public var name: String? {
        for entry in Self.all where entry.reason == rawValue { return entry.name }
        return nil
    }

    /// The reason whose name matches (case-insensitive; "EPT violation", "cpuid"), or nil.
    public init?(name: String) {
        let wanted = asciiUppercased(name)
        guard let entry = Self.all.first(where: { asciiUppercased($0.name) == wanted }) else { return nil }
        rawValue = entry.reason
    }
}

/// The 32-bit exit-reason field (SDM 25.9.1, Table 25-18).
public struct VMXExitReason: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Bits 15:0.
    public var basic: VMXBasicExitReason { VMXBasicExitReason(UInt16(truncatingIfNeeded: rawValue)) }
    /// Bit 27: the exit was incident to enclave mode.
    public var enclaveMode: Bool { rawValue & (1 << 27) != 0 }
    /// Bit 28: a monitor-trap-flag VM exit was pending.
    public var pendingMTFExit: Bool { rawValue & (1 << 28) != 0 }
    /// Bit 29: the exit came from VMX root operation (SMM monitor).
    public var fromVMXRoot: Bool { rawValue & (1 << 29) != 0 }
    /// Bit 31: VM entry failed (the reason is then 33, 34 or 41; SDM 27.8).
    public var isEntryFailure: Bool { rawValue & (1 << 31) != 0 }
}

/// VM-instruction error numbers (SDM Vol. 3C, 31.4, Table 31-1) that VM entry reports.
public enum VMInstructionError: UInt32, Sendable, CaseIterable {
    case vmlaunchWithNonClearVMCS = 4
    case vmresumeWithNonLaunchedVMCS = 5
    case vmresumeAfterVMXOFF = 6
    /// "VM entry with invalid control field(s)": a 27.2.1 check failed.
    case invalidControlFields = 7
    /// "VM entry with invalid host-state field(s)": a 27.2.2-27.2.4 check failed.
    case invalidHostStateFields = 8
    case entryWithEventsBlockedByMOVSS = 26

    /// The SDM's wording.
    public var name: String {
        switch self {
        case .vmlaunchWithNonClearVMCS: "VMLAUNCH with non-clear VMCS"
        case .vmresumeWithNonLaunchedVMCS: "VMRESUME with non-launched VMCS"
        case .vmresumeAfterVMXOFF: "VMRESUME after VMXOFF"
        case .invalidControlFields: "VM entry with invalid control field(s)"
        case .invalidHostStateFields: "VM entry with invalid host-state field(s)"
        case .entryWithEventsBlockedByMOVSS: "VM entry with events blocked by MOV SS"
        }
    }
}
