// What an EPT walk reports when it cannot translate: an EPT violation with the exit
// qualification hardware writes (SDM 29.3.3.2; Table 28-7 "Exit Qualification for EPT
// Violations"), or an EPT misconfiguration (SDM 29.3.3.1).

/// Why a guest-physical access happened, which decides exit-qualification bits 7-11.
public enum EPTAccessOrigin: Hashable, Sendable {
    /// No linear address is involved (e.g. a physical access by the VMM model itself).
    case physical
    /// Reading (or setting A/D in) a guest paging-structure entry while translating `linear`.
    case guestPagingStructure(linear: GuestVirtualAddress)
    /// The access to the translation of `linear`; the guest's own paging said the linear
    /// address is user-mode (U/S = 1 at every level), writable, and/or execute-disable.
    case linear(GuestVirtualAddress, userMode: Bool, guestWritable: Bool, guestExecuteDisable: Bool)
}

/// One guest-physical access presented to EPT.
public struct EPTAccess: Hashable, Sendable {
    public var kind: MemoryAccessKind
    public var origin: EPTAccessOrigin

    public init(_ kind: MemoryAccessKind, origin: EPTAccessOrigin = .physical) {
        self.kind = kind
        self.origin = origin
    }

    public static let read = EPTAccess(.read)
    public static let write = EPTAccess(.write)
    public static let fetch = EPTAccess(.fetch)

    /// The linear address behind this access, if any.
    public var linearAddress: GuestVirtualAddress? {
        switch origin {
        case .physical: nil
        case .guestPagingStructure(let linear): linear
        case .linear(let linear, _, _, _): linear
        }
    }
}

/// The exit qualification of an EPT-violation VM exit (Table 28-7).
public struct EPTViolationQualification: OptionSet, Hashable, Sendable {
    public var rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bit 0: the access was a data read (also set with bit 1 for a guest paging-structure
    /// access that EPT A/D treats as a write).
    public static let dataRead = Self(rawValue: 1 << 0)
    /// Bit 1: the access was a data write.
    public static let dataWrite = Self(rawValue: 1 << 1)
    /// Bit 2: the access was an instruction fetch.
    public static let instructionFetch = Self(rawValue: 1 << 2)
    /// Bit 3: the AND of bit 0 (read) over the EPT entries used.
    public static let readable = Self(rawValue: 1 << 3)
    /// Bit 4: the AND of bit 1 (write).
    public static let writable = Self(rawValue: 1 << 4)
    /// Bit 5: the AND of bit 2 (execute; supervisor-mode execute under mode-based control).
    public static let executable = Self(rawValue: 1 << 5)
    /// Bit 6: the AND of bit 10 (user-mode execute), mode-based execute control only.
    public static let userExecutable = Self(rawValue: 1 << 6)
    /// Bit 7: the guest-linear-address field is valid.
    public static let linearAddressValid = Self(rawValue: 1 << 7)
    /// Bit 8 (with bit 7): the access was to the translation of a linear address; clear when it
    /// was to a guest paging-structure entry.
    public static let translationOfLinear = Self(rawValue: 1 << 8)
    /// Bit 9 (advanced information): the linear address is user-mode.
    public static let userModeLinear = Self(rawValue: 1 << 9)
    /// Bit 10 (advanced information): the guest's paging made the linear address writable.
    public static let guestWritableLinear = Self(rawValue: 1 << 10)
    /// Bit 11 (advanced information): the guest's paging made the linear address execute-disable.
    public static let guestExecuteDisableLinear = Self(rawValue: 1 << 11)
    /// Bit 12: NMI unblocking due to IRET (set by the exit path, never by the walk).
    public static let nmiUnblockingDueToIRET = Self(rawValue: 1 << 12)
}

/// An EPT violation: the access, the addresses and the qualification hardware would report.
public struct EPTViolation: Hashable, Sendable {
    /// The guest-physical address of the access (the VMCS "guest-physical address" field).
    public var guestPhysical: GuestPhysicalAddress
    /// The guest-linear-address field, when qualification bit 7 is set.
    public var guestLinear: GuestVirtualAddress?
    /// The exit qualification.
    public var qualification: EPTViolationQualification
    /// The level whose entry was not present, or nil when the walk completed and the rights
    /// did not allow the access. (Hardware does not report this; it is for people.)
    public var notPresentLevel: EPTLevel?

    public init(guestPhysical: GuestPhysicalAddress, guestLinear: GuestVirtualAddress?,
                qualification: EPTViolationQualification, notPresentLevel: EPTLevel?)
    {
        self.guestPhysical = guestPhysical
        self.guestLinear = guestLinear
        self.qualification = qualification
        self.notPresentLevel = notPresentLevel
    }
}

/// Why an EPT entry is misconfigured (SDM 29.3.3.1).
public enum EPTMisconfigurationReason: Hashable, Sendable {
    /// Bits 2:0 are 010b or 110b: write (and maybe execute) without read.
    case writeWithoutRead
    /// Bits 2:0 are 100b (or only bit 10 under mode-based control) and the processor does not
    /// support execute-only translations (IA32_VMX_EPT_VPID_CAP bit 0).
    case executeOnlyUnsupported
    /// Reserved bits are set; `mask` has exactly those bits.
    case reservedBits(mask: UInt64)
    /// A leaf's memory type (bits 5:3) is 2, 3 or 7.
    case invalidMemoryType(UInt8)
    /// A PDE or PDPTE maps a page of a size the processor does not support.
    case unsupportedPageSize(PageSize)
}

/// An EPT misconfiguration: the entry hardware found and why it is not a valid entry.
public struct EPTMisconfiguration: Hashable, Sendable {
    public var guestPhysical: GuestPhysicalAddress
    public var level: EPTLevel
    public var entry: EPTEntry
    public var reason: EPTMisconfigurationReason

    public init(guestPhysical: GuestPhysicalAddress, level: EPTLevel, entry: EPTEntry, reason: EPTMisconfigurationReason) {
        self.guestPhysical = guestPhysical
        self.level = level
        self.entry = entry
        self.reason = reason
    }
}

/// Every way an EPT translation can stop.
public enum EPTFault: Error, Hashable, Sendable {
    /// An EPT violation VM exit (basic exit reason 48).
    case violation(EPTViolation)
    /// An EPT misconfiguration VM exit (basic exit reason 49).
    case misconfiguration(EPTMisconfiguration)
    /// A page-modification-log-full VM exit (basic exit reason 62, SDM 29.3.6): the access
    /// would set a dirty flag but the PML index is outside 0-511.
    case pageModificationLogFull(GuestPhysicalAddress)
    /// An EPT table page is outside the host memory the model was given.
    case tableUnreadable(HostPhysicalAddress)
}
