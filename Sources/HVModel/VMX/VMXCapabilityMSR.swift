// The VMX capability MSRs (SDM Vol. 3D, Appendix A "VMX Capability Reporting Facility").
//
// Section numbers in Sources/HVModel/VMX follow the current SDM (the 2023 and later editions
// of Vol. 3C/3D: chapter 25 is the VMCS, chapter 27 VM entries, chapter 28 VM exits). Editions
// before 2022 number the same sections one lower (VM entries were chapter 26).

/// One VMX capability MSR, by index (SDM Vol. 4, Table 2-2; Vol. 3D, Appendix A).
public enum VMXCapabilityMSR: UInt32, CaseIterable, Sendable, Comparable {
    /// Basic VMX information: VMCS revision and size, memory type, TRUE-controls support (A.1).
    case basic = 0x480
    /// Allowed settings of the pin-based VM-execution controls (A.3.1).
    case pinBasedControls = 0x481
    /// Allowed settings of the primary processor-based VM-execution controls (A.3.2).
    case processorBasedControls = 0x482
    /// Allowed settings of the primary VM-exit controls (A.4.1).
    case exitControls = 0x483
    /// Allowed settings of the VM-entry controls (A.5).
    case entryControls = 0x484
    /// Miscellaneous data: preemption-timer rate, activity states, CR3-target count (A.6).
    case misc = 0x485
    /// CR0 bits fixed to 1 in VMX operation (A.7).
    case cr0Fixed0 = 0x486
    /// CR0 bits that may be 1 in VMX operation (A.7).
    case cr0Fixed1 = 0x487
    /// CR4 bits fixed to 1 in VMX operation (A.8).
    case cr4Fixed0 = 0x488
    /// CR4 bits that may be 1 in VMX operation (A.8).
    case cr4Fixed1 = 0x489
    /// The highest VMCS field index (A.9).
    case vmcsEnumeration = 0x48A
    /// Allowed settings of the secondary processor-based VM-execution controls (A.3.3).
    case processorBasedControls2 = 0x48B
    /// EPT and VPID capabilities (A.10).
    case eptVPIDCapabilities = 0x48C
    /// TRUE pin-based controls: default-1 bits that may be 0 (A.3.1).
    case truePinBasedControls = 0x48D
    /// TRUE primary processor-based controls (A.3.2).
    case trueProcessorBasedControls = 0x48E
    /// TRUE primary VM-exit controls (A.4.1).
    case trueExitControls = 0x48F
    /// TRUE VM-entry controls (A.5).
    case trueEntryControls = 0x490
    /// Allowed VM functions (A.11).
    case vmFunctions = 0x491
    /// Allowed-1 settings of the tertiary processor-based VM-execution controls (A.3.4).
    case processorBasedControls3 = 0x492
    /// Allowed-1 settings of the secondary VM-exit controls (A.4.2).
    case exitControls2 = 0x493

    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }

    /// The MSR's name as the SDM spells it.
    public var name: String {
        switch self {
        case .basic: "IA32_VMX_BASIC"
        case .pinBasedControls: "IA32_VMX_PINBASED_CTLS"
        case .processorBasedControls: "IA32_VMX_PROCBASED_CTLS"
        case .exitControls: "IA32_VMX_EXIT_CTLS"
        case .entryControls: "IA32_VMX_ENTRY_CTLS"
        case .misc: "IA32_VMX_MISC"
        case .cr0Fixed0: "IA32_VMX_CR0_FIXED0"
        case .cr0Fixed1: "IA32_VMX_CR0_FIXED1"
        case .cr4Fixed0: "IA32_VMX_CR4_FIXED0"
        case .cr4Fixed1: "IA32_VMX_CR4_FIXED1"
        case .vmcsEnumeration: "IA32_VMX_VMCS_ENUM"
        case .processorBasedControls2: "IA32_VMX_PROCBASED_CTLS2"
        case .eptVPIDCapabilities: "IA32_VMX_EPT_VPID_CAP"
        case .truePinBasedControls: "IA32_VMX_TRUE_PINBASED_CTLS"
        case .trueProcessorBasedControls: "IA32_VMX_TRUE_PROCBASED_CTLS"
        case .trueExitControls: "IA32_VMX_TRUE_EXIT_CTLS"
        case .trueEntryControls: "IA32_VMX_TRUE_ENTRY_CTLS"
        case .vmFunctions: "IA32_VMX_VMFUNC"
        case .processorBasedControls3: "IA32_VMX_PROCBASED_CTLS3"
        case .exitControls2: "IA32_VMX_EXIT_CTLS2"
        }
    }

    /// The Appendix A section that defines the MSR.
    public var section: String {
        switch self {
        case .basic: "A.1"
        case .pinBasedControls, .truePinBasedControls: "A.3.1"
        case .processorBasedControls, .trueProcessorBasedControls: "A.3.2"
        case .processorBasedControls2: "A.3.3"
        case .processorBasedControls3: "A.3.4"
        case .exitControls, .trueExitControls: "A.4.1"
        case .exitControls2: "A.4.2"
        case .entryControls, .trueEntryControls: "A.5"
        case .misc: "A.6"
        case .cr0Fixed0, .cr0Fixed1: "A.7"
        case .cr4Fixed0, .cr4Fixed1: "A.8"
        case .vmcsEnumeration: "A.9"
        case .eptVPIDCapabilities: "A.10"
        case .vmFunctions: "A.11"
        }
    }

    /// The MSR with this name (`IA32_VMX_BASIC`), ignoring case.
    public init?(name: String) {
        for msr in Self.allCases where asciiUppercased(msr.name) == asciiUppercased(name) {
            self = msr
            return
        }
        return nil
    }
}

/// `text` with ASCII letters upper-cased (the layer has no Foundation).
@usableFromInline func asciiUppercased(_ text: String) -> String {
    var bytes: [UInt8] = []
    bytes.reserveCapacity(text.utf8.count)
    for byte in text.utf8 { bytes.append(byte >= 0x61 && byte <= 0x7A ? byte - 0x20 : byte) }
    return String(decoding: bytes, as: UTF8.self)
}

/// `value` as `0x` and lower-case hex digits, at least `digits` of them.
public func hexString(_ value: UInt64, digits: Int = 1) -> String {
    // Written straight into the string's storage: no intermediate arrays (this runs for every
    // report line and failure detail).
    let significant = value == 0 ? 1 : (67 - value.leadingZeroBitCount) / 4
    let count = max(significant, digits)
    return String(unsafeUninitializedCapacity: count + 2) { buffer in
        buffer[0] = 0x30  // "0"
        buffer[1] = 0x78  // "x"
        var rest = value
        var position = count + 1
        while position >= 2 {
            let nibble = UInt8(truncatingIfNeeded: rest & 0xF)
            buffer[position] = nibble < 10 ? 0x30 + nibble : 0x57 + nibble  // 0-9, a-f
            rest >>= 4
            position -= 1
        }
        return count + 2
    }
}
