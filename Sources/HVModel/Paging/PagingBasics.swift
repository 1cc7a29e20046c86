// Vocabulary shared by EPT and guest paging: host-physical addresses, page sizes, access kinds,
// memory types and the memory that paging structures live in.
//
// Section numbers in Sources/HVModel/Paging follow the Intel SDM in its 2023-and-later
// numbering (order number 325462, e.g. the -081 and later editions), where "VMX support for
// address translation" is chapter 29 of Vol. 3C (chapter 28 before 2023), VM exits are
// chapter 28, VM entries chapter 27 and the VMCS chapter 25. Guest paging is Vol. 3A,
// chapter 4, whose numbering did not change.

/// An address in the host's physical address space: where EPT points (SDM 29.3.2).
public struct HostPhysicalAddress: RawRepresentable, Hashable, Comparable, Sendable, ExpressibleByIntegerLiteral {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(_ rawValue: UInt64) { self.rawValue = rawValue }
    @inlinable public init(integerLiteral value: UInt64) { self.rawValue = value }
    @inlinable public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// The kind of memory access a translation is asked for.
public enum MemoryAccessKind: UInt8, Sendable, Hashable, CaseIterable {
    /// A data read.
    case read
    /// A data write.
    case write
    /// An instruction fetch.
    case fetch
}

/// A page size that a leaf paging-structure entry can map.
public enum PageSize: UInt8, Sendable, Hashable, CaseIterable, Comparable {
    /// 4 KiB: a PTE (SDM 4.3, 4.4, 4.5; 29.3.2).
    case size4KiB = 12
    /// 2 MiB: a PDE with PS = 1 under PAE, 4-level or 5-level paging, or an EPT PDE with bit 7 = 1.
    case size2MiB = 21
    /// 4 MiB: a 32-bit-paging PDE with PS = 1 and CR4.PSE = 1 (SDM 4.3).
    case size4MiB = 22
    /// 1 GiB: a PDPTE with PS = 1 (SDM 4.5) or an EPT PDPTE with bit 7 = 1 (SDM 29.3.2).
    case size1GiB = 30

    /// log2 of the size.
    @inlinable public var shift: UInt64 { UInt64(rawValue) }
    /// The size in bytes.
    @inlinable public var bytes: UInt64 { 1 << shift }
    /// Mask of the offset bits inside one page.
    @inlinable public var offsetMask: UInt64 { bytes - 1 }

    public static func < (a: Self, b: Self) -> Bool { a.rawValue < b.rawValue }
}

/// A memory type as MTRRs, PAT and EPT encode it (SDM Vol. 3A, "Memory Cache Control",
/// Table "Memory Types That Can Be Encoded in MTRRs"; SDM 29.3.7 for EPT). 2, 3 and 7 are
/// reserved encodings and have no case.
public enum MemoryType: UInt8, Sendable, Hashable, CaseIterable {
    case uncacheable = 0
    case writeCombining = 1
    case writeThrough = 4
    case writeProtected = 5
    case writeBack = 6

    /// The short name the SDM uses: UC, WC, WT, WP, WB.
    public var shortName: String {
        switch self {
        case .uncacheable: "UC"
        case .writeCombining: "WC"
        case .writeThrough: "WT"
        case .writeProtected: "WP"
        case .writeBack: "WB"
        }
    }

    /// Parses UC, WC, WT, WP or WB (any case).
    public init?(shortName: String) {
        for type in MemoryType.allCases where type.shortName == shortName.uppercased() {
            self = type
            return
        }
        return nil
    }
}

/// Why physical memory could not be read or written during a walk.
public enum PhysicalMemoryFault: Error, Hashable, Sendable {
    /// Nothing backs this physical address.
    case unbacked(address: UInt64)
    /// A read of guest-physical memory was itself stopped by EPT (the two-dimensional walk).
    case ept(EPTFault)
}

/// Physical memory holding paging structures: host-physical for EPT tables, guest-physical
/// for guest page tables. Entries are naturally aligned, so an 8-byte entry never straddles
/// a page. `mutating` because a reader may itself have effects (EPT A/D bits in a nested walk).
public protocol PhysicalMemory {
    /// The little-endian 64-bit value at `address` (8-byte aligned).
    mutating func read64(at address: UInt64) throws(PhysicalMemoryFault) -> UInt64
    /// Stores `value` at `address` (8-byte aligned).
    mutating func write64(_ value: UInt64, at address: UInt64) throws(PhysicalMemoryFault)
}

extension PhysicalMemory {
    /// The 32-bit value at `address` (4-byte aligned), read through its containing 8-byte word.
    @inlinable
    public mutating func read32(at address: UInt64) throws(PhysicalMemoryFault) -> UInt32 {
        let word = try read64(at: address & ~7)
        return UInt32(truncatingIfNeeded: word >> ((address & 4) * 8))
    }

    /// Stores a 32-bit value at `address` (4-byte aligned) by read-modify-write of its word.
    @inlinable
    public mutating func write32(_ value: UInt32, at address: UInt64) throws(PhysicalMemoryFault) {
        let shift = (address & 4) * 8
        let word = try read64(at: address & ~7)
        let merged = (word & ~(UInt64(0xFFFF_FFFF) << shift)) | (UInt64(value) << shift)
        try write64(merged, at: address & ~7)
    }
}

/// Where a builder gets its table pages: host buffers when hosted, physical pages on bare metal.
public protocol TableAllocator: PhysicalMemory {
    /// A zero-filled, 4 KiB-aligned page for one paging structure, or nil when none is left.
    mutating func allocateTable() -> HostPhysicalAddress?
    /// Gives back a page that `allocateTable()` returned and no entry references any more.
    mutating func freeTable(_ address: HostPhysicalAddress)
}

/// Bits 0 ..< `bits` set: the mask of a `bits`-wide physical address (MAXPHYADDR).
@inlinable
public func physicalAddressMask(bits: Int) -> UInt64 {
    bits >= 64 ? ~0 : (1 << UInt64(bits)) &- 1
}
