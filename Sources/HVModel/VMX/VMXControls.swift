// The VMX control fields as option sets, every bit named as the SDM names it
// (SDM Vol. 3C, 25.6.1-25.6.2 execution controls, 25.7.1 exit controls, 25.8.1 entry controls).

/// Pin-based VM-execution controls (SDM 25.6.1, Table 25-5).
public struct PinBasedControls: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let externalInterruptExiting = Self(rawValue: 1 << 0)
    public static let nmiExiting = Self(rawValue: 1 << 3)
    public static let virtualNMIs = Self(rawValue: 1 << 5)
    public static let activateVMXPreemptionTimer = Self(rawValue: 1 << 6)
    public static let processPostedInterrupts = Self(rawValue: 1 << 7)
}

/// Primary processor-based VM-execution controls (SDM 25.6.2, Table 25-6).
public struct PrimaryProcessorBasedControls: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let interruptWindowExiting = Self(rawValue: 1 << 2)
    public static let useTSCOffsetting = Self(rawValue: 1 << 3)
    public static let hltExiting = Self(rawValue: 1 << 7)
    public static let invlpgExiting = Self(rawValue: 1 << 9)
    public static let mwaitExiting = Self(rawValue: 1 << 10)
    public static let rdpmcExiting = Self(rawValue: 1 << 11)
    public static let rdtscExiting = Self(rawValue: 1 << 12)
    public static let cr3LoadExiting = Self(rawValue: 1 << 15)
    public static let cr3StoreExiting = Self(rawValue: 1 << 16)
    public static let activateTertiaryControls = Self(rawValue: 1 << 17)
    public static let cr8LoadExiting = Self(rawValue: 1 << 19)
    public static let cr8StoreExiting = Self(rawValue: 1 << 20)
    public static let useTPRShadow = Self(rawValue: 1 << 21)
    public static let nmiWindowExiting = Self(rawValue: 1 << 22)
    public static let movDRExiting = Self(rawValue: 1 << 23)
    public static let unconditionalIOExiting = Self(rawValue: 1 << 24)
    public static let useIOBitmaps = Self(rawValue: 1 << 25)
    public static let monitorTrapFlag = Self(rawValue: 1 << 27)
    public static let useMSRBitmaps = Self(rawValue: 1 << 28)
    public static let monitorExiting = Self(rawValue: 1 << 29)
    public static let pauseExiting = Self(rawValue: 1 << 30)
    public static let activateSecondaryControls = Self(rawValue: 1 << 31)
}

/// Secondary processor-based VM-execution controls (SDM 25.6.2, Table 25-7).
public struct SecondaryProcessorBasedControls: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let virtualizeAPICAccesses = Self(rawValue: 1 << 0)
    public static let enableEPT = Self(rawValue: 1 << 1)
    public static let descriptorTableExiting = Self(rawValue: 1 << 2)
    public static let enableRDTSCP = Self(rawValue: 1 << 3)
    public static let virtualizeX2APICMode = Self(rawValue: 1 << 4)
    public static let enableVPID = Self(rawValue: 1 << 5)
    public static let wbinvdExiting = Self(rawValue: 1 << 6)
    public static let unrestrictedGuest = Self(rawValue: 1 << 7)
    public static let apicRegisterVirtualization = Self(rawValue: 1 << 8)
    public static let virtualInterruptDelivery = Self(rawValue: 1 << 9)
    public static let pauseLoopExiting = Self(rawValue: 1 << 10)
    public static let rdrandExiting = Self(rawValue: 1 << 11)
    public static let enableINVPCID = Self(rawValue: 1 << 12)
    public static let enableVMFunctions = Self(rawValue: 1 << 13)
    public static let vmcsShadowing = Self(rawValue: 1 << 14)
    public static let enableENCLSExiting = Self(rawValue: 1 << 15)
    public static let rdseedExiting = Self(rawValue: 1 << 16)
    public static let enablePML = Self(rawValue: 1 << 17)
    public static let eptViolationVE = Self(rawValue: 1 << 18)
    public static let concealVMXFromPT = Self(rawValue: 1 << 19)
    public static let enableXSAVESXRSTORS = Self(rawValue: 1 << 20)
    public static let pasidTranslation = Self(rawValue: 1 << 21)
    public static let modeBasedExecuteControlForEPT = Self(rawValue: 1 << 22)
    public static let subPageWritePermissionsForEPT = Self(rawValue: 1 << 23)
    public static let ptUsesGuestPhysicalAddresses = Self(rawValue: 1 << 24)
    public static let useTSCScaling = Self(rawValue: 1 << 25)
    public static let enableUserWaitAndPause = Self(rawValue: 1 << 26)
    public static let enablePCONFIG = Self(rawValue: 1 << 27)
    public static let enableENCLVExiting = Self(rawValue: 1 << 28)
    public static let vmmBusLockDetection = Self(rawValue: 1 << 30)
    public static let instructionTimeout = Self(rawValue: 1 << 31)
}

/// Tertiary processor-based VM-execution controls, a 64-bit field (SDM 25.6.2, Table 25-8).
public struct TertiaryProcessorBasedControls: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let loadIWKeyExiting = Self(rawValue: 1 << 0)
    public static let enableHLAT = Self(rawValue: 1 << 1)
    public static let eptPagingWriteControl = Self(rawValue: 1 << 2)
    public static let guestPagingVerification = Self(rawValue: 1 << 3)
    public static let ipiVirtualization = Self(rawValue: 1 << 4)
    public static let virtualizeIA32SpecCtrl = Self(rawValue: 1 << 7)
}

/// Primary VM-exit controls (SDM 25.7.1, Table 25-13).
public struct VMExitControls: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let saveDebugControls = Self(rawValue: 1 << 2)
    public static let hostAddressSpaceSize = Self(rawValue: 1 << 9)
    public static let loadIA32PerfGlobalCtrl = Self(rawValue: 1 << 12)
    public static let acknowledgeInterruptOnExit = Self(rawValue: 1 << 15)
    public static let saveIA32PAT = Self(rawValue: 1 << 18)
    public static let loadIA32PAT = Self(rawValue: 1 << 19)
    public static let saveIA32EFER = Self(rawValue: 1 << 20)
    public static let loadIA32EFER = Self(rawValue: 1 << 21)
    public static let saveVMXPreemptionTimerValue = Self(rawValue: 1 << 22)
    public static let clearIA32BNDCFGS = Self(rawValue: 1 << 23)
    public static let concealVMXFromPT = Self(rawValue: 1 << 24)
    public static let clearIA32RTITCtl = Self(rawValue: 1 << 25)
    public static let clearIA32LBRCtl = Self(rawValue: 1 << 26)
    public static let clearUINV = Self(rawValue: 1 << 27)
    public static let loadCETState = Self(rawValue: 1 << 28)
    public static let loadPKRS = Self(rawValue: 1 << 29)
    public static let saveIA32PerfGlobalCtl = Self(rawValue: 1 << 30)
    public static let activateSecondaryControls = Self(rawValue: 1 << 31)
}

/// Secondary VM-exit controls, a 64-bit field (SDM 25.7.1, Table 25-14).
public struct SecondaryVMExitControls: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let saveIA32FRED = Self(rawValue: 1 << 0)
    public static let loadIA32FRED = Self(rawValue: 1 << 1)
    public static let prematurelyBusyShadowStack = Self(rawValue: 1 << 3)
}

/// VM-entry controls (SDM 25.8.1, Table 25-15).
public struct VMEntryControls: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }
    public static let loadDebugControls = Self(rawValue: 1 << 2)
    public static let ia32eModeGuest = Self(rawValue: 1 << 9)
    public static let entryToSMM = Self(rawValue: 1 << 10)
    public static let deactivateDualMonitorTreatment = Self(rawValue: 1 << 11)
    public static let loadIA32PerfGlobalCtrl = Self(rawValue: 1 << 13)
    public static let loadIA32PAT = Self(rawValue: 1 << 14)
    public static let loadIA32EFER = Self(rawValue: 1 << 15)
    public static let loadIA32BNDCFGS = Self(rawValue: 1 << 16)
    public static let concealVMXFromPT = Self(rawValue: 1 << 17)
    public static let loadIA32RTITCtl = Self(rawValue: 1 << 18)
    public static let loadUINV = Self(rawValue: 1 << 19)
    public static let loadCETState = Self(rawValue: 1 << 20)
    public static let loadGuestIA32LBRCtl = Self(rawValue: 1 << 21)
    public static let loadPKRS = Self(rawValue: 1 << 22)
    public static let loadIA32FRED = Self(rawValue: 1 << 23)
}

/// The seven control fields, with what reconciliation needs to know about each.
public enum VMXControlField: Int, CaseIterable, Sendable, Hashable {
    case pinBased, primaryProcessorBased, secondaryProcessorBased, tertiaryProcessorBased
    case primaryExit, secondaryExit, entry

    /// The field's name in the SDM.
    public var name: String {
        switch self {
        case .pinBased: "pin-based VM-execution controls"
        case .primaryProcessorBased: "primary processor-based VM-execution controls"
        case .secondaryProcessorBased: "secondary processor-based VM-execution controls"
        case .tertiaryProcessorBased: "tertiary processor-based VM-execution controls"
        case .primaryExit: "primary VM-exit controls"
        case .secondaryExit: "secondary VM-exit controls"
        case .entry: "VM-entry controls"
        }
    }

    /// A short name for tables and command lines.
    public var shortName: String {
        switch self {
        case .pinBased: "pin-based"
        case .primaryProcessorBased: "primary"
        case .secondaryProcessorBased: "secondary"
        case .tertiaryProcessorBased: "tertiary"
        case .primaryExit: "exit"
        case .secondaryExit: "exit2"
        case .entry: "entry"
        }
    }

    /// The VMCS field that holds the controls (SDM Appendix B).
    public var vmcsField: VMCSField {
        switch self {
        case .pinBased: .pinBasedControls
        case .primaryProcessorBased: .primaryProcessorBasedControls
        case .secondaryProcessorBased: .secondaryProcessorBasedControls
        case .tertiaryProcessorBased: .tertiaryProcessorBasedControls
        case .primaryExit: .primaryExitControls
        case .secondaryExit: .secondaryExitControls
        case .entry: .entryControls
        }
    }

    /// Whether the field is 64 bits wide (tertiary and secondary-exit controls).
    public var is64Bit: Bool { self == .tertiaryProcessorBased || self == .secondaryExit }

    /// The capability MSR that reports the allowed settings (the TRUE one if `useTrue`).
    public func capabilityMSR(useTrue: Bool) -> VMXCapabilityMSR {
        switch self {
        case .pinBased: useTrue ? .truePinBasedControls : .pinBasedControls
        case .primaryProcessorBased: useTrue ? .trueProcessorBasedControls : .processorBasedControls
        case .secondaryProcessorBased: .processorBasedControls2
        case .tertiaryProcessorBased: .processorBasedControls3
        case .primaryExit: useTrue ? .trueExitControls : .exitControls
        case .secondaryExit: .exitControls2
        case .entry: useTrue ? .trueEntryControls : .entryControls
        }
    }

    /// The default1 class: reserved bits that read as 1 in the non-TRUE MSR (SDM A.2).
    public var defaultOneBits: UInt64 {
        switch self {
        case .pinBased: 0x0000_0016  // bits 1, 2, 4
        case .primaryProcessorBased: 0x0401_E172  // bits 1, 4-6, 8, 13-16, 26
        case .primaryExit: 0x0003_6DFF  // bits 0-8, 10, 11, 13, 14, 16, 17
        case .entry: 0x0000_11FF  // bits 0-8, 12
        default: 0
        }
    }

    /// The SDM's name for `bit` of this field, or nil for a reserved bit.
    public func bitName(_ bit: Int) -> String? {
        switch self {
        case .pinBased:
            switch bit {
            case 0: "external-interrupt exiting"
            case 3: "NMI exiting"
            case 5: "virtual NMIs"
            case 6: "activate VMX-preemption timer"
            case 7: "process posted interrupts"
            default: nil
            }
        case .primaryProcessorBased:
            switch bit {
            case 2: "interrupt-window exiting"
            case 3: "use TSC offsetting"
            case 7: "HLT exiting"
            case 9: "INVLPG exiting"
            case 10: "MWAIT exiting"
            case 11: "RDPMC exiting"
            case 12: "RDTSC exiting"
            case 15: "CR3-load exiting"
            case 16: "CR3-store exiting"
            case 17: "activate tertiary controls"
            case 19: "CR8-load exiting"
            case 20: "CR8-store exiting"
            case 21: "use TPR shadow"
            case 22: "NMI-window exiting"
            case 23: "MOV-DR exiting"
            case 24: "unconditional I/O exiting"
            case 25: "use I/O bitmaps"
            case 27: "monitor trap flag"
            case 28: "use MSR bitmaps"
            case 29: "MONITOR exiting"
            case 30: "PAUSE exiting"
            case 31: "activate secondary controls"
            default: nil
            }
        case .secondaryProcessorBased:
            switch bit {
            case 0: "virtualize APIC accesses"
            case 1: "enable EPT"
            case 2: "descriptor-table exiting"
            case 3: "enable RDTSCP"
            case 4: "virtualize x2APIC mode"
            case 5: "enable VPID"
            case 6: "WBINVD exiting"
            case 7: "unrestricted guest"
            case 8: "APIC-register virtualization"
            case 9: "virtual-interrupt delivery"
            case 10: "PAUSE-loop exiting"
            case 11: "RDRAND exiting"
            case 12: "enable INVPCID"
            case 13: "enable VM functions"
            case 14: "VMCS shadowing"
            case 15: "enable ENCLS exiting"
            case 16: "RDSEED exiting"
            case 17: "enable PML"
            case 18: "EPT-violation #VE"
            case 19: "conceal VMX from PT"
            case 20: "enable XSAVES/XRSTORS"
            case 21: "PASID translation"
            case 22: "mode-based execute control for EPT"
            case 23: "sub-page write permissions for EPT"
            case 24: "Intel PT uses guest physical addresses"
            case 25: "use TSC scaling"
            case 26: "enable user wait and pause"
            case 27: "enable PCONFIG"
            case 28: "enable ENCLV exiting"
            case 30: "VMM bus-lock detection"
            case 31: "instruction timeout"
            default: nil
            }
        case .tertiaryProcessorBased:
            switch bit {
            case 0: "LOADIWKEY exiting"
            case 1: "enable HLAT"
            case 2: "EPT paging-write control"
            case 3: "guest-paging verification"
            case 4: "IPI virtualization"
            case 7: "virtualize IA32_SPEC_CTRL"
            default: nil
            }
        case .primaryExit:
            switch bit {
            case 2: "save debug controls"
            case 9: "host address-space size"
            case 12: "load IA32_PERF_GLOBAL_CTRL"
            case 15: "acknowledge interrupt on exit"
            case 18: "save IA32_PAT"
            case 19: "load IA32_PAT"
            case 20: "save IA32_EFER"
            case 21: "load IA32_EFER"
            case 22: "save VMX-preemption timer value"
            case 23: "clear IA32_BNDCFGS"
            case 24: "conceal VMX from PT"
            case 25: "clear IA32_RTIT_CTL"
            case 26: "clear IA32_LBR_CTL"
            case 27: "clear UINV"
            case 28: "load CET state"
            case 29: "load PKRS"
            case 30: "save IA32_PERF_GLOBAL_CTL"
            case 31: "activate secondary controls"
            default: nil
            }
        case .secondaryExit:
            switch bit {
            case 0: "save IA32_FRED"
            case 1: "load IA32_FRED"
            case 3: "prematurely busy shadow stack"
            default: nil
            }
        case .entry:
            switch bit {
            case 2: "load debug controls"
            case 9: "IA-32e mode guest"
            case 10: "entry to SMM"
            case 11: "deactivate dual-monitor treatment"
            case 13: "load IA32_PERF_GLOBAL_CTRL"
            case 14: "load IA32_PAT"
            case 15: "load IA32_EFER"
            case 16: "load IA32_BNDCFGS"
            case 17: "conceal VMX from PT"
            case 18: "load IA32_RTIT_CTL"
            case 19: "load UINV"
            case 20: "load CET state"
            case 21: "load guest IA32_LBR_CTL"
            case 22: "load PKRS"
            case 23: "load IA32_FRED"
            default: nil
            }
        }
    }

    /// A name for any bit: the SDM name, "default1 bit N" or "reserved bit N".
    public func describeBit(_ bit: Int) -> String {
        if let name = bitName(bit) { return name }
        if defaultOneBits & (1 << UInt64(bit)) != 0 { return "default1 bit \(bit)" }
        return "reserved bit \(bit)"
    }

    /// The bit named `name` (the SDM name, case-insensitive), or nil.
    public func bit(named name: String) -> Int? {
        let wanted = asciiUppercased(name)
        for bit in 0..<(is64Bit ? 64 : 32) {
            if let candidate = bitName(bit), asciiUppercased(candidate) == wanted { return bit }
        }
        return nil
    }
}
