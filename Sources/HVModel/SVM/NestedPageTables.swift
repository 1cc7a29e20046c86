// Nested page tables for SVM (AMD APM Vol. 2, 15.25 "Nested Paging"): the guest-physical to
// host-physical translation is an ordinary long-mode 4-level hierarchy (APM Vol. 2, 5.3; Intel
// SDM Vol. 3A, 4.5), rooted at the VMCB's N_CR3, every entry a user page (the processor makes
// nested walks as user accesses, 15.25.5). The sibling of `EPTBuilder` for AMD: it maps ranges
// with 2 MiB pages where guest and host are both aligned and 4 KiB pages elsewhere, splits a
// 2 MiB page when an edit covers part of it, and frees the tables an unmap empties, so
// read-only pages and holes for MMIO cost only the tables around them. No NX bit: its meaning
// in a nested walk depends on the host's EFER.NXE. Embedded-safe: the bare-metal SVM engine
// builds its tables with it.

/// Why a nested-paging edit was refused.
public enum NestedPageTableError: Error, Hashable, Sendable {
    /// An address or size that is not 4 KiB aligned.
    case misaligned(UInt64)
    /// A range beyond the 48 bits a 4-level walk translates, or a host address beyond 52 bits.
    case outOfRange(UInt64)
    /// The table allocator has no page left.
    case outOfTables
    /// The allocator's memory could not be read or written.
    case memory(PhysicalMemoryFault)
}

/// A 4-level nested page table hierarchy in `tables`.
public struct NestedPageTables<Tables: TableAllocator> {
    public var tables: Tables
    /// The PML4's host-physical address: what goes into N_CR3.
    public let root: HostPhysicalAddress

    // Entry bits (APM Vol. 2, 5.4.1): present, read/write, user, page size (2 MiB leaf at the PD).
    @usableFromInline static var present: UInt64 { 1 }
    @usableFromInline static var writable: UInt64 { 2 }
    @usableFromInline static var user: UInt64 { 4 }
    @usableFromInline static var largePage: UInt64 { 0x80 }
    @usableFromInline static var addressMask: UInt64 { 0x000F_FFFF_FFFF_F000 }
    /// The bits a table (non-leaf) entry carries: permissions are decided at the leaf.
    @usableFromInline static var tableBits: UInt64 { present | writable | user }

    enum Operation {
        case map(delta: UInt64, writable: Bool)
        case protect(writable: Bool)
        case unmap
    }

    /// An empty hierarchy: one zeroed PML4 from `tables`.
    public init(tables: Tables) throws(NestedPageTableError) {
        var tables = tables
        guard let root = tables.allocateTable() else { throw .outOfTables }
        self.tables = tables
        self.root = root
    }

    /// Maps guest-physical `[guest, guest + size)` to host-physical `[host, host + size)`, read
    /// and execute always, write when `writable`, replacing whatever mapped any of it.
    public mutating func map(_ guest: GuestPhysicalAddress, size: UInt64, to host: HostPhysicalAddress, writable: Bool = true)
        throws(NestedPageTableError)
    {
        try check(guest.rawValue, size)
        guard host.rawValue & 0xFFF == 0 else { throw .misaligned(host.rawValue) }
        guard host.rawValue &+ size <= 1 << 52, host.rawValue &+ size >= host.rawValue else { throw .outOfRange(host.rawValue) }
        try apply(.map(delta: host.rawValue &- guest.rawValue, writable: writable), table: root.rawValue, level: 3,
                  start: guest.rawValue, end: guest.rawValue + size)
    }

    /// Sets write permission on every mapped page in `[guest, guest + size)`; holes stay holes.
    public mutating func protect(_ guest: GuestPhysicalAddress, size: UInt64, writable: Bool) throws(NestedPageTableError) {
        try check(guest.rawValue, size)
        try apply(.protect(writable: writable), table: root.rawValue, level: 3, start: guest.rawValue, end: guest.rawValue + size)
    }

    /// Removes every mapping in `[guest, guest + size)` (an access there is a nested page fault),
    /// freeing the tables that become empty.
    public mutating func unmap(_ guest: GuestPhysicalAddress, size: UInt64) throws(NestedPageTableError) {
        try check(guest.rawValue, size)
        try apply(.unmap, table: root.rawValue, level: 3, start: guest.rawValue, end: guest.rawValue + size)
    }

    func check(_ address: UInt64, _ size: UInt64) throws(NestedPageTableError) {
        guard address & 0xFFF == 0, size & 0xFFF == 0 else { throw .misaligned(address & 0xFFF != 0 ? address : size) }
        guard address &+ size <= 1 << 48, address &+ size >= address else { throw .outOfRange(address) }
    }

    mutating func read(_ address: UInt64) throws(NestedPageTableError) -> UInt64 {
        do throws(PhysicalMemoryFault) { return try tables.read64(at: address) } catch { throw .memory(error) }
    }

    mutating func write(_ value: UInt64, _ address: UInt64) throws(NestedPageTableError) {
        do throws(PhysicalMemoryFault) { try tables.write64(value, at: address) } catch { throw .memory(error) }
    }

    /// `operation` over `[start, end)` within the table at `table` of `level` (3 PML4 ... 0 PT).
    mutating func apply(_ operation: Operation, table: UInt64, level: Int, start: UInt64, end: UInt64) throws(NestedPageTableError) {
        let shift = UInt64(12 + 9 * level), span: UInt64 = 1 << shift
        var address = start
        while address < end {
            let slot = table + ((address >> shift) & 511) * 8
            let entryStart = address & ~(span - 1)
            let pieceEnd = min(end, entryStart + span)
            let whole = address == entryStart && pieceEnd == entryStart + span
            let entry = try read(slot)
            let isLeaf = entry & Self.present != 0 && (level == 0 || (level == 1 && entry & Self.largePage != 0))
            switch operation {
            case .map(let delta, let writable):
                let host = entryStart &+ delta
                let leafHere = level == 0 || (level == 1 && whole && host & (span - 1) == 0)
                if leafHere {
                    if entry & Self.present != 0 && !isLeaf { try freeTree(entry & Self.addressMask, level: level - 1) }
                    let bits = Self.present | Self.user | (writable ? Self.writable : 0) | (level == 1 ? Self.largePage : 0)
                    try write(host | bits, slot)
                } else {
                    let child = try childTable(slot, entry, level: level)
                    try apply(operation, table: child, level: level - 1, start: address, end: pieceEnd)
                }
            case .protect(let writable):
                guard entry & Self.present != 0 else { break }
                if isLeaf && (whole || level == 0) {
                    try write(writable ? entry | Self.writable : entry & ~Self.writable, slot)
                } else {
                    let child = try childTable(slot, entry, level: level)
                    try apply(operation, table: child, level: level - 1, start: address, end: pieceEnd)
                }
            case .unmap:
                guard entry & Self.present != 0 else { break }
                if whole || level == 0 {
                    if !isLeaf { try freeTree(entry & Self.addressMask, level: level - 1) }
                    try write(0, slot)
                } else {
                    let child = try childTable(slot, entry, level: level)
                    try apply(operation, table: child, level: level - 1, start: address, end: pieceEnd)
                    if try isEmpty(child) {
                        tables.freeTable(HostPhysicalAddress(child))
                        try write(0, slot)
                    }
                }
            }
            address = pieceEnd
        }
    }

    /// The table under the entry at `slot`: existing, new (an absent entry), or split from a
    /// 2 MiB page into 512 4 KiB pages with the same permissions.
    mutating func childTable(_ slot: UInt64, _ entry: UInt64, level: Int) throws(NestedPageTableError) -> UInt64 {
        if entry & Self.present != 0 && !(level == 1 && entry & Self.largePage != 0) { return entry & Self.addressMask }
        guard let page = tables.allocateTable() else { throw .outOfTables }
        let child = page.rawValue
        if entry & Self.present != 0 {
            // A 2 MiB leaf split: the same frames and rights, 4 KiB at a time.
            let base = entry & Self.addressMask & ~0x1F_FFFF, rights = entry & (Self.present | Self.writable | Self.user)
            for index in 0..<UInt64(512) { try write((base + index << 12) | rights, child + index * 8) }
        }
        try write(child | Self.tableBits, slot)
        return child
    }

    mutating func isEmpty(_ table: UInt64) throws(NestedPageTableError) -> Bool {
        for index in 0..<UInt64(512) where try read(table + index * 8) != 0 { return false }
        return true
    }

    /// Frees the table at `table` (of `level`) and every table under it.
    mutating func freeTree(_ table: UInt64, level: Int) throws(NestedPageTableError) {
        if level > 0 {
            for index in 0..<UInt64(512) {
                let entry = try read(table + index * 8)
                if entry & Self.present != 0 && !(level == 1 && entry & Self.largePage != 0) {
                    try freeTree(entry & Self.addressMask, level: level - 1)
                }
            }
        }
        tables.freeTable(HostPhysicalAddress(table))
    }
}
