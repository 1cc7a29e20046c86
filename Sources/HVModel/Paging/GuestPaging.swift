// The guest's own paging as the processor sees it (SDM Vol. 3A, chapter 4): which paging mode
// CR0, CR4 and EFER select (4.1.1, Table 4-1), the access being made, and the #PF error code
// (4.7, Figure 4-12).

/// Control bits the paging walker reads (SDM Vol. 3A, 2.5 and 4.1.3).
public enum PagingControlBits {
    public static let cr4PSE: UInt64 = 1 << 4
    public static let cr4PGE: UInt64 = 1 << 7
    public static let cr4LA57: UInt64 = 1 << 12
    public static let cr4SMEP: UInt64 = 1 << 20
    public static let cr4SMAP: UInt64 = 1 << 21
    public static let cr4PKE: UInt64 = 1 << 22
    public static let cr4PKS: UInt64 = 1 << 24
    /// RFLAGS.AC (bit 18): lets explicit supervisor accesses reach user pages under SMAP.
    public static let rflagsAC: UInt64 = 1 << 18
}

/// The paging mode (SDM 4.1.1, Table 4-1).
public enum GuestPagingMode: Hashable, Sendable {
    /// CR0.PG = 0: linear addresses are physical addresses.
    case disabled
    /// 32-bit paging (4.3): CR0.PG = 1, CR4.PAE = 0.
    case bits32
    /// PAE paging (4.4): CR4.PAE = 1, EFER.LME = 0.
    case pae
    /// 4-level paging (4.5): CR4.PAE = 1, EFER.LME = 1, CR4.LA57 = 0.
    case level4
    /// 5-level paging (4.5): as 4-level with CR4.LA57 = 1.
    case level5

    /// The mode `cr0`, `cr4` and `efer` select.
    public init(cr0: UInt64, cr4: UInt64, efer: UInt64) {
        if cr0 & ControlBits.cr0PG == 0 {
            self = .disabled
        } else if cr4 & ControlBits.cr4PAE == 0 {
            self = .bits32
        } else if efer & ControlBits.eferLME == 0 {
            self = .pae
        } else {
            self = cr4 & PagingControlBits.cr4LA57 != 0 ? .level5 : .level4
        }
    }
}

/// Everything about the processor state that decides a linear-address translation.
public struct GuestPagingContext: Hashable, Sendable {
    public var mode: GuestPagingMode
    public var cr3: UInt64
    /// CR0.WP: supervisor writes honour read-only pages.
    public var writeProtect: Bool
    /// CR4.PSE: 4 MiB pages under 32-bit paging.
    public var pageSizeExtensions: Bool
    /// CR4.PGE: the G flag marks global translations.
    public var globalPages: Bool
    /// EFER.NXE: bit 63 is execute-disable (reserved when clear).
    public var noExecute: Bool
    public var smep: Bool
    public var smap: Bool
    /// RFLAGS.AC.
    public var alignmentCheck: Bool
    /// CR4.PKE and the PKRU register (user-mode pages).
    public var protectionKeys: Bool
    public var pkru: UInt32
    /// CR4.PKS and the IA32_PKRS MSR (supervisor-mode pages).
    public var supervisorProtectionKeys: Bool
    public var pkrs: UInt32
    /// MAXPHYADDR.
    public var physicalAddressBits: Int
    /// Whether PDPTEs may map 1 GiB pages (CPUID.80000001H:EDX.Page1GB).
    public var supports1GiBPages: Bool

    /// The context of a vCPU with `special` registers and `rflags`.
    public init(special: SpecialRegisters, rflags: UInt64 = 2, pkru: UInt32 = 0, pkrs: UInt32 = 0,
                physicalAddressBits: Int = 46, supports1GiBPages: Bool = true)
    {
        let cr4 = special.cr4
        mode = GuestPagingMode(cr0: special.cr0, cr4: cr4, efer: special.efer)
        cr3 = special.cr3
        writeProtect = special.cr0 & ControlBits.cr0WP != 0
        pageSizeExtensions = cr4 & PagingControlBits.cr4PSE != 0
        globalPages = cr4 & PagingControlBits.cr4PGE != 0
        noExecute = special.efer & ControlBits.eferNXE != 0
        smep = cr4 & PagingControlBits.cr4SMEP != 0
        smap = cr4 & PagingControlBits.cr4SMAP != 0
        alignmentCheck = rflags & PagingControlBits.rflagsAC != 0
        protectionKeys = cr4 & PagingControlBits.cr4PKE != 0
        supervisorProtectionKeys = cr4 & PagingControlBits.cr4PKS != 0
        self.pkru = pkru
        self.pkrs = pkrs
        self.physicalAddressBits = physicalAddressBits
        self.supports1GiBPages = supports1GiBPages
    }

    /// A context for `mode` rooted at `cr3` with every optional feature off.
    public init(mode: GuestPagingMode, cr3: UInt64, physicalAddressBits: Int = 46) {
        self.mode = mode
        self.cr3 = cr3
        writeProtect = false
        pageSizeExtensions = false
        globalPages = false
        noExecute = false
        smep = false
        smap = false
        alignmentCheck = false
        protectionKeys = false
        pkru = 0
        supervisorProtectionKeys = false
        pkrs = 0
        self.physicalAddressBits = physicalAddressBits
        supports1GiBPages = true
    }
}

/// One linear-address access (SDM 4.6: supervisor-mode and user-mode accesses).
public struct GuestAccess: Hashable, Sendable {
    public var kind: MemoryAccessKind
    /// CPL = 3.
    public var userMode: Bool
    /// An implicit supervisor-mode access (GDT, IDT, TSS, ... reads), even at CPL 3: always
    /// supervisor, and SMAP ignores RFLAGS.AC for it.
    public var implicitSupervisor: Bool

    public init(_ kind: MemoryAccessKind, userMode: Bool = false, implicitSupervisor: Bool = false) {
        self.kind = kind
        self.userMode = userMode
        self.implicitSupervisor = implicitSupervisor
    }

    /// True when the processor treats this as a supervisor-mode access.
    public var isSupervisor: Bool { !userMode || implicitSupervisor }
}

/// The page-fault error code (SDM 4.7, Figure 4-12).
public struct PageFaultErrorCode: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Bit 0 P: 0 = not-present page, 1 = protection violation.
    public static let present = Self(rawValue: 1 << 0)
    /// Bit 1 W/R: the access was a write.
    public static let write = Self(rawValue: 1 << 1)
    /// Bit 2 U/S: a user-mode access.
    public static let user = Self(rawValue: 1 << 2)
    /// Bit 3 RSVD: a reserved bit was set in some paging-structure entry.
    public static let reservedBit = Self(rawValue: 1 << 3)
    /// Bit 4 I/D: an instruction fetch (reported only with NXE (PAE or IA-32e) or SMEP).
    public static let instructionFetch = Self(rawValue: 1 << 4)
    /// Bit 5 PK: a protection-key violation.
    public static let protectionKey = Self(rawValue: 1 << 5)
}

/// Why a translation raised #PF (for people; hardware reports only the error code).
public enum PageFaultReason: Hashable, Sendable {
    /// The entry at `level` (1 = PTE ... 5 = PML5E) has P = 0.
    case notPresent(level: Int)
    /// The entry at `level` has reserved bits `mask` set.
    case reservedBits(level: Int, mask: UInt64)
    /// A user-mode access to a supervisor-mode address.
    case userAccessToSupervisorPage
    /// A write to a read-only address (user mode, or supervisor mode with CR0.WP = 1).
    case writeToReadOnly
    /// A supervisor-mode fetch from a user-mode address with CR4.SMEP = 1.
    case smepFetch
    /// A supervisor-mode data access to a user-mode address with CR4.SMAP = 1 and either
    /// RFLAGS.AC = 0 or an implicit access.
    case smapAccess
    /// A fetch from an execute-disable address (EFER.NXE = 1).
    case executeDisable
    /// PKRU (or PKRS) denies the access for key `key`.
    case protectionKey(key: UInt8)
}

/// A #PF the walk raises: CR2 and the error code.
public struct PageFault: Hashable, Sendable {
    /// The faulting linear address (what CR2 receives).
    public var linearAddress: GuestVirtualAddress
    public var errorCode: PageFaultErrorCode
    public var reason: PageFaultReason

    public init(linearAddress: GuestVirtualAddress, errorCode: PageFaultErrorCode, reason: PageFaultReason) {
        self.linearAddress = linearAddress
        self.errorCode = errorCode
        self.reason = reason
    }
}

/// Every way a linear-address translation can stop.
public enum GuestPagingFault: Error, Hashable, Sendable {
    /// #PF.
    case pageFault(PageFault)
    /// A non-canonical address: #GP (or #SS), not #PF (SDM Vol. 1, 3.3.7.1).
    case nonCanonical(GuestVirtualAddress)
    /// A PAE PDPTE with reserved bits set: hardware raises #GP when it loads the PDPTEs at
    /// MOV to CR3 (SDM 4.4.1); this walker reads PDPTEs on demand and reports it here.
    case invalidPDPTE(index: Int, entry: UInt64)
    /// A paging-structure entry could not be read (unbacked memory, or EPT stopped the read).
    case memory(PhysicalMemoryFault)
}
