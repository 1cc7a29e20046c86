// A processor's VMX capabilities: the raw IA32_VMX_* values and what they mean
// (SDM Vol. 3D, Appendix A).

/// The allowed settings of one control field (SDM A.3-A.5): bits that must be 1 and bits
/// that may be 1, and the MSR that said so.
public struct AllowedControlSettings: Hashable, Sendable {
    /// Bits VM entry requires to be 1 (the allowed 0-settings word; SDM A.3.1).
    public var mustBeOne: UInt64
    /// Bits VM entry allows to be 1 (the allowed 1-settings word).
    public var mayBeOne: UInt64
    /// The capability MSR these settings come from, or nil when the field does not exist on
    /// this processor (then every bit must be 0).
    public var msr: VMXCapabilityMSR?

    public init(mustBeOne: UInt64, mayBeOne: UInt64, msr: VMXCapabilityMSR?) {
        self.mustBeOne = mustBeOne
        self.mayBeOne = mayBeOne
        self.msr = msr
    }

    /// Whether `value` is allowed: no must-be-one bit clear and no may-not-be-one bit set.
    @inlinable public func allows(_ value: UInt64) -> Bool {
        value & mustBeOne == mustBeOne && value & ~mayBeOne == 0
    }
}

/// EPT and VPID capabilities, IA32_VMX_EPT_VPID_CAP (SDM A.10).
public struct EPTVPIDCapabilities: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let executeOnlyTranslations = Self(rawValue: 1 << 0)
    public static let pageWalkLength4 = Self(rawValue: 1 << 6)
    public static let pageWalkLength5 = Self(rawValue: 1 << 7)
    public static let uncacheableEPTPointer = Self(rawValue: 1 << 8)
    public static let writeBackEPTPointer = Self(rawValue: 1 << 14)
    public static let pages2MiB = Self(rawValue: 1 << 16)
    public static let pages1GiB = Self(rawValue: 1 << 17)
    public static let invept = Self(rawValue: 1 << 20)
    public static let accessedDirtyFlags = Self(rawValue: 1 << 21)
    public static let advancedEPTViolationInformation = Self(rawValue: 1 << 22)
    public static let supervisorShadowStackControl = Self(rawValue: 1 << 23)
    public static let singleContextINVEPT = Self(rawValue: 1 << 25)
    public static let allContextINVEPT = Self(rawValue: 1 << 26)
    public static let invvpid = Self(rawValue: 1 << 32)
    public static let individualAddressINVVPID = Self(rawValue: 1 << 40)
    public static let singleContextINVVPID = Self(rawValue: 1 << 41)
    public static let allContextINVVPID = Self(rawValue: 1 << 42)
    public static let singleContextRetainingGlobalsINVVPID = Self(rawValue: 1 << 43)

    /// Each known bit with its SDM wording, in bit order.
    public static let named: [(Self, String)] = [
        (.executeOnlyTranslations, "execute-only EPT translations"),
        (.pageWalkLength4, "page-walk length 4"), (.pageWalkLength5, "page-walk length 5"),
        (.uncacheableEPTPointer, "EPT paging structures may be UC"),
        (.writeBackEPTPointer, "EPT paging structures may be WB"),
        (.pages2MiB, "2-MByte EPT pages"), (.pages1GiB, "1-GByte EPT pages"),
        (.invept, "INVEPT"), (.accessedDirtyFlags, "EPT accessed and dirty flags"),
        (.advancedEPTViolationInformation, "advanced VM-exit information for EPT violations"),
        (.supervisorShadowStackControl, "supervisor shadow-stack control"),
        (.singleContextINVEPT, "single-context INVEPT"), (.allContextINVEPT, "all-context INVEPT"),
        (.invvpid, "INVVPID"), (.individualAddressINVVPID, "individual-address INVVPID"),
        (.singleContextINVVPID, "single-context INVVPID"), (.allContextINVVPID, "all-context INVVPID"),
        (.singleContextRetainingGlobalsINVVPID, "single-context-retaining-globals INVVPID"),
    ]
}

/// The activity states a processor supports besides active (IA32_VMX_MISC bits 8:6, SDM A.6).
public struct ActivityStates: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    @inlinable public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let hlt = Self(rawValue: 1 << 0)
    public static let shutdown = Self(rawValue: 1 << 1)
    public static let waitForSIPI = Self(rawValue: 1 << 2)
}

/// A processor's VMX capability MSRs plus its physical-address width (CPUID.80000008H:EAX[7:0]).
public struct VMXCapabilities: Hashable, Sendable {
    /// Raw values by `msr.rawValue - 0x480`; a clear bit in `present` means not reported.
    @usableFromInline var values: [UInt64] = Array(repeating: 0, count: 20)
    @usableFromInline var present: UInt32 = 0
    /// MAXPHYADDR: addresses in VMCS fields may not set bits at or above it (SDM 27.2.1.1).
    public var physicalAddressWidth: Int

    /// Capabilities from `(MSR, value)` pairs; MSRs not given are "not supported".
    public init(physicalAddressWidth: Int, msrs: [(VMXCapabilityMSR, UInt64)]) {
        self.physicalAddressWidth = physicalAddressWidth
        for (msr, value) in msrs { self[msr] = value }
    }

    /// The raw value of `msr`, or nil if the processor does not report it.
    @inlinable public subscript(msr: VMXCapabilityMSR) -> UInt64? {
        get {
            let index = Int(msr.rawValue - 0x480)
            return present & (1 << UInt32(index)) != 0 ? values[index] : nil
        }
        set {
            let index = Int(msr.rawValue - 0x480)
            if let newValue {
                values[index] = newValue
                present |= 1 << UInt32(index)
            } else {
                values[index] = 0
                present &= ~(1 << UInt32(index))
            }
        }
    }

    /// Every reported MSR with its value, in index order.
    public var reported: [(msr: VMXCapabilityMSR, value: UInt64)] {
        VMXCapabilityMSR.allCases.compactMap { msr in self[msr].map { (msr, $0) } }
    }

    // MARK: IA32_VMX_BASIC (SDM A.1)

    @inlinable var basic: UInt64 { self[.basic] ?? 0 }
    /// The VMCS revision identifier software writes to the first 31 bits of a VMCS region.
    public var vmcsRevisionID: UInt32 { UInt32(truncatingIfNeeded: basic & 0x7FFF_FFFF) }
    /// Bytes to allocate for a VMXON or VMCS region (at most 4096).
    public var vmcsRegionSize: Int { Int((basic >> 32) & 0x1FFF) }
    /// Whether VMXON/VMCS/bitmap addresses are limited to 32 bits (never on Intel 64 processors).
    public var addressesLimitedTo32Bits: Bool { basic & (1 << 48) != 0 }
    /// Whether the dual-monitor treatment of SMIs and SMM is supported.
    public var supportsDualMonitorSMM: Bool { basic & (1 << 49) != 0 }
    /// The memory type for the VMCS and structures it references (0 = UC, 6 = WB).
    public var vmcsMemoryType: UInt8 { UInt8((basic >> 50) & 0xF) }
    /// Whether VM exits for INS/OUTS report instruction information.
    public var reportsINSOUTSInformation: Bool { basic & (1 << 54) != 0 }
    /// Whether the TRUE control MSRs exist, so some default1 bits may be 0 (SDM A.2).
    public var hasTrueControls: Bool { basic & (1 << 55) != 0 }
    /// Whether VM entry may deliver a hardware exception with or without an error code
    /// regardless of the vector (the error-code consistency check of 27.2.1.3 is relaxed).
    public var relaxedErrorCodeInjection: Bool { basic & (1 << 56) != 0 }

    // MARK: IA32_VMX_MISC (SDM A.6)

    @inlinable var misc: UInt64 { self[.misc] ?? 0 }
    /// The preemption timer counts down by 1 each time TSC bit `preemptionTimerRate` changes.
    public var preemptionTimerRate: Int { Int(misc & 0x1F) }
    /// Whether VM exits store EFER.LMA into the "IA-32e mode guest" entry control.
    public var storesLMAOnExit: Bool { misc & (1 << 5) != 0 }
    /// The non-active activity states VM entry may load.
    public var activityStates: ActivityStates { ActivityStates(rawValue: UInt8((misc >> 6) & 0x7)) }
    /// Whether Intel PT may be used in VMX operation.
    public var supportsPTInVMX: Bool { misc & (1 << 14) != 0 }
    /// The number of CR3-target values the processor supports.
    public var cr3TargetCount: Int { Int((misc >> 16) & 0x1FF) }
    /// The recommended maximum number of MSRs in each MSR-load/store list: 512 × (N + 1).
    public var maxMSRListCount: Int { 512 * (Int((misc >> 25) & 0x7) + 1) }
    /// Whether VMWRITE may write the read-only VM-exit information fields.
    public var canWriteExitInformation: Bool { misc & (1 << 29) != 0 }
    /// Whether VM entry may inject software interrupts and exceptions with instruction length 0.
    public var allowsZeroLengthInjection: Bool { misc & (1 << 30) != 0 }
    /// The MSEG revision identifier (dual-monitor treatment).
    public var msegRevisionID: UInt32 { UInt32(truncatingIfNeeded: misc >> 32) }

    // MARK: CR0/CR4 fixed bits (SDM A.7, A.8)

    /// CR0 bits that must be 1 in VMX operation (IA32_VMX_CR0_FIXED0).
    public var cr0MustBeOne: UInt64 { self[.cr0Fixed0] ?? 0 }
    /// CR0 bits that may be 1 in VMX operation (IA32_VMX_CR0_FIXED1).
    public var cr0MayBeOne: UInt64 { self[.cr0Fixed1] ?? 0xFFFF_FFFF }
    /// CR4 bits that must be 1 in VMX operation (IA32_VMX_CR4_FIXED0).
    public var cr4MustBeOne: UInt64 { self[.cr4Fixed0] ?? 0x2000 }
    /// CR4 bits that may be 1 in VMX operation (IA32_VMX_CR4_FIXED1).
    public var cr4MayBeOne: UInt64 { self[.cr4Fixed1] ?? 0 }

    // MARK: Others

    /// The highest index of any VMCS field encoding (IA32_VMX_VMCS_ENUM bits 9:1, SDM A.9).
    public var highestVMCSFieldIndex: Int { Int(((self[.vmcsEnumeration] ?? 0) >> 1) & 0x1FF) }
    /// EPT and VPID features (zero when neither EPT nor VPID can be enabled).
    public var eptVPID: EPTVPIDCapabilities { EPTVPIDCapabilities(rawValue: self[.eptVPIDCapabilities] ?? 0) }
    /// The VM functions that may be enabled (bit 0: EPTP switching; SDM A.11).
    public var vmFunctions: UInt64 { self[.vmFunctions] ?? 0 }

    /// The allowed settings of `field`, following SDM A.3-A.5: the TRUE MSR when
    /// IA32_VMX_BASIC[55] is set, the non-TRUE one otherwise; a field whose "activate" bit
    /// cannot be 1 (secondary, tertiary, secondary-exit) allows nothing.
    public func allowedSettings(_ field: VMXControlField) -> AllowedControlSettings {
        func split(_ msr: VMXCapabilityMSR) -> AllowedControlSettings {
            guard let raw = self[msr] else { return AllowedControlSettings(mustBeOne: 0, mayBeOne: 0, msr: nil) }
            return AllowedControlSettings(mustBeOne: raw & 0xFFFF_FFFF, mayBeOne: raw >> 32, msr: msr)
        }
        func pair(_ plain: VMXCapabilityMSR, _ truer: VMXCapabilityMSR) -> AllowedControlSettings {
            hasTrueControls && self[truer] != nil ? split(truer) : split(plain)
        }
        switch field {
        case .pinBased: return pair(.pinBasedControls, .truePinBasedControls)
        case .primaryProcessorBased: return pair(.processorBasedControls, .trueProcessorBasedControls)
        case .primaryExit: return pair(.exitControls, .trueExitControls)
        case .entry: return pair(.entryControls, .trueEntryControls)
        case .secondaryProcessorBased:
            // A.3.3: the MSR exists only if bit 63 of IA32_VMX_PROCBASED_CTLS is 1.
            guard allowedSettings(.primaryProcessorBased).mayBeOne & (1 << 31) != 0 else {
                return AllowedControlSettings(mustBeOne: 0, mayBeOne: 0, msr: nil)
            }
            return split(.processorBasedControls2)
        case .tertiaryProcessorBased:
            // A.3.4: a 64-bit allowed-1 MSR, present only if bit 49 of IA32_VMX_PROCBASED_CTLS is 1.
            guard allowedSettings(.primaryProcessorBased).mayBeOne & (1 << 17) != 0,
                  let raw = self[.processorBasedControls3]
            else { return AllowedControlSettings(mustBeOne: 0, mayBeOne: 0, msr: nil) }
            return AllowedControlSettings(mustBeOne: 0, mayBeOne: raw, msr: .processorBasedControls3)
        case .secondaryExit:
            // A.4.2: a 64-bit allowed-1 MSR, present only if bit 63 of IA32_VMX_EXIT_CTLS is 1.
            guard allowedSettings(.primaryExit).mayBeOne & (1 << 31) != 0, let raw = self[.exitControls2]
            else { return AllowedControlSettings(mustBeOne: 0, mayBeOne: 0, msr: nil) }
            return AllowedControlSettings(mustBeOne: 0, mayBeOne: raw, msr: .exitControls2)
        }
    }

    /// The capability MSR that decides `field` on this processor, for messages.
    public func decidingMSR(_ field: VMXControlField) -> VMXCapabilityMSR {
        allowedSettings(field).msr ?? field.capabilityMSR(useTrue: hasTrueControls)
    }
}
