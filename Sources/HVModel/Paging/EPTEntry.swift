// EPT paging-structure entries at every level (SDM 29.3.2, Tables 29-1 to 29-7 in the 2023+
// numbering): one 64-bit format whose bits mean different things at different levels.

/// A level of the EPT hierarchy; the raw value is the level number the SDM's tables imply
/// (1 = page table ... 5 = PML5 table).
public enum EPTLevel: Int, Sendable, Hashable, CaseIterable, Comparable {
    /// EPT page table: PTEs map 4 KiB pages.
    case pageTable = 1
    /// EPT page directory: PDEs map 2 MiB pages or reference a page table.
    case pageDirectory = 2
    /// EPT page-directory-pointer table: PDPTEs map 1 GiB pages or reference a page directory.
    case pageDirectoryPointerTable = 3
    /// EPT PML4 table: references a PDPT, never maps a page.
    case pml4 = 4
    /// EPT PML5 table (5-level EPT): references a PML4 table.
    case pml5 = 5

    /// log2 of the bytes one entry at this level spans.
    @inlinable public var entryShift: UInt64 { 12 + 9 * UInt64(rawValue - 1) }
    /// Bytes one entry at this level spans.
    @inlinable public var entrySpan: UInt64 { 1 << entryShift }
    /// The index into this level's table that `address` selects (9 bits).
    @inlinable public func index(of address: UInt64) -> Int { Int((address >> entryShift) & 0x1FF) }
    /// The level below, nil for the page table.
    @inlinable public var next: EPTLevel? { EPTLevel(rawValue: rawValue - 1) }
    /// The page size a leaf at this level maps, nil where no leaf is allowed.
    public var leafPageSize: PageSize? {
        switch self {
        case .pageTable: .size4KiB
        case .pageDirectory: .size2MiB
        case .pageDirectoryPointerTable: .size1GiB
        case .pml4, .pml5: nil
        }
    }
    /// The entry's name in the SDM: "EPT PML4E", "EPT PTE", ...
    public var entryName: String {
        switch self {
        case .pageTable: "PTE"
        case .pageDirectory: "PDE"
        case .pageDirectoryPointerTable: "PDPTE"
        case .pml4: "PML4E"
        case .pml5: "PML5E"
        }
    }
    /// The table's name: "PML4", "PDPT", "PD", "PT".
    public var tableName: String {
        switch self {
        case .pageTable: "PT"
        case .pageDirectory: "PD"
        case .pageDirectoryPointerTable: "PDPT"
        case .pml4: "PML4"
        case .pml5: "PML5"
        }
    }
    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// The access rights an EPT entry grants (bits 0, 1, 2 and 10).
public struct EPTPermissions: OptionSet, Hashable, Sendable {
    public var rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    /// Bit 0: reads allowed.
    public static let read = EPTPermissions(rawValue: 1 << 0)
    /// Bit 1: writes allowed.
    public static let write = EPTPermissions(rawValue: 1 << 1)
    /// Bit 2: instruction fetches allowed; supervisor-mode linear addresses only when
    /// "mode-based execute control for EPT" is 1 (SDM 29.3.3.2).
    public static let execute = EPTPermissions(rawValue: 1 << 2)
    /// Bit 10: fetches from user-mode linear addresses (mode-based execute control only).
    public static let userExecute = EPTPermissions(rawValue: 1 << 3)

    public static let readWrite: EPTPermissions = [.read, .write]
    public static let readExecute: EPTPermissions = [.read, .execute]
    public static let all: EPTPermissions = [.read, .write, .execute, .userExecute]

    /// Parses "rwx", "r-x", "rw", "rwxu", "---" ("u" is user-execute); nil for other letters.
    public init?(letters: String) {
        var permissions: EPTPermissions = []
        for character in letters {
            switch character {
            case "r", "R": permissions.insert(.read)
            case "w", "W": permissions.insert(.write)
            case "x", "X": permissions.insert(.execute)
            case "u", "U": permissions.insert(.userExecute)
            case "-": break
            default: return nil
            }
        }
        self = permissions
    }

    /// "rwx" style, "-" for a missing right; "u" appended when user-execute is granted.
    public var letters: String {
        (contains(.read) ? "r" : "-") + (contains(.write) ? "w" : "-") + (contains(.execute) ? "x" : "-")
            + (contains(.userExecute) ? "u" : "")
    }

    /// The entry bits for these rights.
    @inlinable public var entryBits: UInt64 {
        UInt64(rawValue & 7) | (rawValue & 8 != 0 ? EPTEntry.userExecuteBit : 0)
    }
}

/// One EPT paging-structure entry.
public struct EPTEntry: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }

    public static let readBit: UInt64 = 1 << 0
    public static let writeBit: UInt64 = 1 << 1
    public static let executeBit: UInt64 = 1 << 2
    /// Bits 5:3 of a leaf: the EPT memory type.
    public static let memoryTypeMask: UInt64 = 7 << 3
    /// Bit 6 of a leaf: ignore the guest's PAT memory type (SDM 29.3.7).
    public static let ignorePATBit: UInt64 = 1 << 6
    /// Bit 7 of a PDPTE or PDE: the entry maps a page.
    public static let pageSizeBit: UInt64 = 1 << 7
    /// Bit 8: accessed (SDM 29.3.5), when the EPTP enables A/D flags.
    public static let accessedBit: UInt64 = 1 << 8
    /// Bit 9 of a leaf: dirty.
    public static let dirtyBit: UInt64 = 1 << 9
    /// Bit 10: user-mode execute (mode-based execute control).
    public static let userExecuteBit: UInt64 = 1 << 10
    /// Bit 63 of a leaf: suppress #VE (EPT-violation #VE, SDM 26.5.7).
    public static let suppressVEBit: UInt64 = 1 << 63
    /// Bits 51:12: the physical address of the next table or page.
    public static let addressMask: UInt64 = 0x000F_FFFF_FFFF_F000
    /// The bits that describe a leaf's rights and type (used to decide whether entries merge).
    public static let leafAttributeMask: UInt64 = ~addressMask & ~pageSizeBit

    @inlinable public var read: Bool { rawValue & Self.readBit != 0 }
    @inlinable public var write: Bool { rawValue & Self.writeBit != 0 }
    @inlinable public var execute: Bool { rawValue & Self.executeBit != 0 }
    @inlinable public var userExecute: Bool { rawValue & Self.userExecuteBit != 0 }
    @inlinable public var pageSize: Bool { rawValue & Self.pageSizeBit != 0 }
    @inlinable public var accessed: Bool { rawValue & Self.accessedBit != 0 }
    @inlinable public var dirty: Bool { rawValue & Self.dirtyBit != 0 }
    @inlinable public var ignorePAT: Bool { rawValue & Self.ignorePATBit != 0 }
    @inlinable public var suppressVE: Bool { rawValue & Self.suppressVEBit != 0 }
    /// Bits 5:3 as stored, which may be a reserved encoding (2, 3, 7).
    @inlinable public var memoryTypeBits: UInt8 { UInt8((rawValue >> 3) & 7) }
    /// The memory type, nil for a reserved encoding.
    public var memoryType: MemoryType? { MemoryType(rawValue: memoryTypeBits) }
    /// The address of the next table or of the page (bits 51:12, unmasked by MAXPHYADDR).
    @inlinable public var address: UInt64 { rawValue & Self.addressMask }

    /// The rights in bits 0, 1, 2 and 10.
    @inlinable public var permissions: EPTPermissions {
        EPTPermissions(rawValue: UInt8(rawValue & 7) | (userExecute ? 8 : 0))
    }

    /// Present: any of bits 2:0 set, or bit 10 when mode-based execute control is on (SDM 29.3.2).
    @inlinable public func isPresent(modeBasedExecute: Bool) -> Bool {
        rawValue & 7 != 0 || (modeBasedExecute && userExecute)
    }

    /// True when this entry, found at `level`, maps a page rather than referencing a table.
    @inlinable public func isLeaf(at level: EPTLevel) -> Bool {
        level == .pageTable || ((level == .pageDirectory || level == .pageDirectoryPointerTable) && pageSize)
    }

    /// An entry referencing the table at `table`, granting every right so that the leaf
    /// decides (rights are ANDed along the walk, SDM 29.3.3.2).
    public static func table(at table: HostPhysicalAddress, modeBasedExecute: Bool = true) -> EPTEntry {
        EPTEntry(table.rawValue & addressMask | readBit | writeBit | executeBit | (modeBasedExecute ? userExecuteBit : 0))
    }

    /// A leaf mapping the page at `page` at `level` (PTE, or PDE/PDPTE with bit 7 set).
    public static func leaf(at page: HostPhysicalAddress, level: EPTLevel, permissions: EPTPermissions,
                            memoryType: MemoryType, ignorePAT: Bool = false, suppressVE: Bool = false) -> EPTEntry
    {
        var raw = page.rawValue & addressMask | permissions.entryBits | UInt64(memoryType.rawValue) << 3
        if ignorePAT { raw |= ignorePATBit }
        if suppressVE { raw |= suppressVEBit }
        if level != .pageTable { raw |= pageSizeBit }
        return EPTEntry(raw)
    }
}
