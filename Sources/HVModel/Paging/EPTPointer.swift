// The extended-page-table pointer (EPTP), the VMCS field that roots a guest's EPT
// (SDM 25.6.11 "Extended-Page-Table Pointer (EPTP)", Table 25-9), and the EPT capabilities
// that IA32_VMX_EPT_VPID_CAP reports (SDM Vol. 3D, Appendix A.10).

/// What the processor's EPT supports: IA32_VMX_EPT_VPID_CAP (MSR 0x48C), EPT half.
public struct EPTCapabilities: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bit 0: execute-only translations (bits 2:0 = 100b) are allowed.
    public var executeOnly: Bool { rawValue & 1 << 0 != 0 }
    /// Bit 6: a page-walk length of 4.
    public var walkLength4: Bool { rawValue & 1 << 6 != 0 }
    /// Bit 7: a page-walk length of 5.
    public var walkLength5: Bool { rawValue & 1 << 7 != 0 }
    /// Bit 8: the EPTP may use memory type UC.
    public var uncacheableStructures: Bool { rawValue & 1 << 8 != 0 }
    /// Bit 14: the EPTP may use memory type WB.
    public var writeBackStructures: Bool { rawValue & 1 << 14 != 0 }
    /// Bit 16: EPT PDEs may map 2 MiB pages.
    public var pages2MiB: Bool { rawValue & 1 << 16 != 0 }
    /// Bit 17: EPT PDPTEs may map 1 GiB pages.
    public var pages1GiB: Bool { rawValue & 1 << 17 != 0 }
    /// Bit 21: accessed and dirty flags for EPT.
    public var accessedDirty: Bool { rawValue & 1 << 21 != 0 }
    /// Bit 22: advanced VM-exit information for EPT violations (exit qualification bits 9-11).
    public var advancedViolationInfo: Bool { rawValue & 1 << 22 != 0 }
    /// Bit 25: single-context INVEPT.
    public var singleContextINVEPT: Bool { rawValue & 1 << 25 != 0 }
    /// Bit 26: all-context INVEPT.
    public var allContextINVEPT: Bool { rawValue & 1 << 26 != 0 }

    /// A typical modern Intel core: everything above.
    public static let modern = EPTCapabilities(rawValue: 1 << 0 | 1 << 6 | 1 << 7 | 1 << 8 | 1 << 14 | 1 << 16
        | 1 << 17 | 1 << 20 | 1 << 21 | 1 << 22 | 1 << 25 | 1 << 26)
}

/// Why an EPTP would fail the VM-entry checks of SDM 27.2.1.1 ("VM-Execution Control Fields").
public enum EPTPointerError: Error, Equatable, Sendable {
    /// Bits 2:0 name a memory type the processor does not allow for EPT structures.
    case unsupportedMemoryType(UInt8)
    /// Bits 5:3 are not 3 (4-level) or, when supported, 4 (5-level).
    case unsupportedWalkLength(UInt8)
    /// Bit 6 is set but IA32_VMX_EPT_VPID_CAP bit 21 is clear.
    case accessedDirtyUnsupported
    /// Bits 11:8 or bits 63:N are not zero.
    case reservedBits(UInt64)
}

/// The EPTP: memory type of the EPT structures, walk length, A/D enable, PML4 (or PML5) address.
public struct EPTPointer: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// An EPTP for a root table at `root`, walking `levels` (4 or 5) levels.
    public init(root: HostPhysicalAddress, levels: Int = 4, memoryType: MemoryType = .writeBack,
                accessedDirty: Bool = false)
    {
        rawValue = (root.rawValue & 0x000F_FFFF_FFFF_F000) | UInt64(memoryType.rawValue)
            | UInt64(levels - 1) << 3 | (accessedDirty ? 1 << 6 : 0)
    }

    /// Bits 2:0: the memory type used to access the EPT paging structures.
    public var memoryTypeBits: UInt8 { UInt8(rawValue & 7) }
    /// Bits 5:3 plus one: how many levels the walk has (4 or 5).
    public var levels: Int { Int((rawValue >> 3) & 7) + 1 }
    /// Bit 6: the processor sets accessed and dirty flags in EPT entries (SDM 29.3.5).
    public var accessedDirtyEnabled: Bool { rawValue & 1 << 6 != 0 }
    /// Bit 7: supervisor shadow-stack access rights are enforced.
    public var supervisorShadowStack: Bool { rawValue & 1 << 7 != 0 }
    /// Bits N-1:12: the host-physical address of the root table.
    public var root: HostPhysicalAddress { HostPhysicalAddress(rawValue & 0x000F_FFFF_FFFF_F000) }

    /// Applies the VM-entry checks on the EPTP (SDM 27.2.1.1) for a processor with
    /// `capabilities` and a `physicalAddressBits`-wide physical address (MAXPHYADDR).
    public func validate(capabilities: EPTCapabilities, physicalAddressBits: Int = 52) throws(EPTPointerError) {
        switch memoryTypeBits {
        case 0 where capabilities.uncacheableStructures, 6 where capabilities.writeBackStructures: break
        default: throw .unsupportedMemoryType(memoryTypeBits)
        }
        switch levels {
        case 4 where capabilities.walkLength4, 5 where capabilities.walkLength5: break
        default: throw .unsupportedWalkLength(UInt8(levels - 1))
        }
        if accessedDirtyEnabled && !capabilities.accessedDirty { throw .accessedDirtyUnsupported }
        let reserved = rawValue & (0xF00 | ~physicalAddressMask(bits: physicalAddressBits))
        if reserved != 0 { throw .reservedBits(reserved) }
    }
}
