// Dirty-page tracking for snapshots and live migration: the EPT dirty flags (SDM 29.3.5) read
// and cleared by a scan, and the page-modification log hardware fills as it sets them
// (SDM 29.3.6 "Page-Modification Logging").

/// The page-modification log: a 4 KiB buffer of 512 guest-physical addresses that the
/// processor fills from index 511 downwards each time it sets an EPT dirty flag.
public struct PageModificationLog: Hashable, Sendable {
    /// Host-physical address of the 4 KiB log buffer (the VMCS "PML address").
    public var buffer: HostPhysicalAddress
    /// The VMCS "PML index": the next entry to write; outside 0-511 means full.
    public var index: UInt16

    /// Entries in one buffer.
    public static let capacity = 512

    /// An empty log writing to `buffer` (index 511, as a VMM sets it).
    public init(buffer: HostPhysicalAddress) {
        self.buffer = HostPhysicalAddress(buffer.rawValue & ~0xFFF)
        index = UInt16(Self.capacity - 1)
    }

    /// Entries written since the last reset.
    public var count: Int { index > 511 ? Self.capacity : Self.capacity - 1 - Int(index) }
    /// True when the next dirty-flag update will cause a PML-full VM exit.
    public var isFull: Bool { index > 511 }

    /// Logs the 4 KiB page of `address` as the processor does: "if the PML index is not in
    /// 0-511, a page-modification-log-full VM exit occurs; otherwise the address (bits 11:0
    /// cleared) is written at index and the index is decremented" (SDM 29.3.6).
    public mutating func record<M: PhysicalMemory>(_ address: GuestPhysicalAddress,
                                                   memory: inout M) throws(EPTFault)
    {
        guard index <= 511 else { throw .pageModificationLogFull(address) }
        let slot = buffer.rawValue + UInt64(index) * 8
        do { try memory.write64(address.rawValue & ~0xFFF, at: slot) } catch { throw .tableUnreadable(HostPhysicalAddress(slot)) }
        index = index &- 1
    }

    /// The logged addresses in the order they were logged.
    public func entries<M: PhysicalMemory>(memory: inout M) throws(PhysicalMemoryFault) -> [GuestPhysicalAddress] {
        var result: [GuestPhysicalAddress] = []
        var slot = Self.capacity - 1
        while slot >= 0 && result.count < count {
            result.append(GuestPhysicalAddress(try memory.read64(at: buffer.rawValue + UInt64(slot) * 8)))
            slot -= 1
        }
        return result
    }

    /// Empties the log after the VMM has drained it.
    public mutating func reset() { index = UInt16(Self.capacity - 1) }
}

/// One bit per 4 KiB page of a guest-physical range: the shape KVM_GET_DIRTY_LOG uses.
public struct DirtyPageBitmap: Hashable, Sendable {
    /// First guest-physical address covered (4 KiB aligned).
    public let base: GuestPhysicalAddress
    /// Pages covered.
    public let pageCount: Int
    /// The bits, page `i` at bit `i % 64` of word `i / 64`.
    public private(set) var words: [UInt64]

    /// A bitmap of `pageCount` 4 KiB pages from `base` (rounded down to its page). Throws when
    /// the count is negative or the range runs past the end of the 64-bit address space.
    public init(base: GuestPhysicalAddress, pageCount: Int) throws(DirtyPageBitmapError) {
        guard pageCount >= 0 else { throw .negativePageCount(pageCount) }
        let first = base.rawValue >> 12
        guard UInt64(pageCount) <= (UInt64.max >> 12) - first + 1 else { throw .rangeWrapsPastTop(base: base.rawValue, pageCount: pageCount) }
        self.base = GuestPhysicalAddress(base.rawValue & ~0xFFF)
        self.pageCount = pageCount
        words = [UInt64](repeating: 0, count: (pageCount + 63) / 64)
    }

    /// Marks every 4 KiB page touching `[address, address + size)` that lies in the range.
    public mutating func mark(_ address: GuestPhysicalAddress, size: UInt64 = 4096) {
        guard size > 0 else { return }
        // A range whose end wraps past 2^64 runs to the top of the address space.
        let (end, wraps) = address.rawValue.addingReportingOverflow(size - 1)
        let first = address.rawValue >> 12, last = (wraps ? UInt64.max : end) >> 12
        let lowest = base.rawValue >> 12, highest = lowest + UInt64(pageCount)
        var page = max(first, lowest)
        while page <= last && page < highest {
            let i = Int(page - lowest)
            words[i / 64] |= 1 << UInt64(i % 64)
            page += 1
        }
    }

    /// True when the page holding `address` is marked.
    public func isDirty(_ address: GuestPhysicalAddress) -> Bool {
        guard address >= base else { return false }
        let i = (address.rawValue - base.rawValue) >> 12
        guard i < UInt64(pageCount) else { return false }
        return words[Int(i / 64)] & 1 << (i % 64) != 0
    }

    /// Marked pages.
    public var count: Int { words.reduce(0) { $0 + $1.nonzeroBitCount } }

    /// The marked pages' addresses, ascending.
    public var dirtyPages: [GuestPhysicalAddress] {
        var result: [GuestPhysicalAddress] = []
        for (w, word) in words.enumerated() where word != 0 {
            for bit in 0..<64 where word & 1 << UInt64(bit) != 0 {
                result.append(GuestPhysicalAddress(base.rawValue + UInt64(w * 64 + bit) << 12))
            }
        }
        return result
    }
}

/// Reads (and optionally clears) the dirty flags of an EPT hierarchy's leaves.
public enum EPTDirtyScan {
    /// Marks in `bitmap` every page mapped by a leaf whose dirty flag is set; with `clear`,
    /// clears those flags. Returns how many leaves were dirty. After clearing, the VMM must
    /// INVEPT before relying on the flags again: cached translations remember them (SDM 29.4.3.1).
    public static func collect<M: PhysicalMemory>(pointer: EPTPointer, memory: inout M, into bitmap: inout DirtyPageBitmap,
                                                  clear: Bool) throws(PhysicalMemoryFault) -> Int
    {
        try scan(table: pointer.root.rawValue, level: EPTLevel(rawValue: pointer.levels) ?? .pml4, base: 0,
                 memory: &memory, bitmap: &bitmap, clear: clear)
    }

    static func scan<M: PhysicalMemory>(table: UInt64, level: EPTLevel, base: UInt64, memory: inout M,
                                        bitmap: inout DirtyPageBitmap, clear: Bool) throws(PhysicalMemoryFault) -> Int
    {
        var dirtyLeaves = 0
        for index in 0..<512 {
            let address = table + UInt64(index) * 8
            let entry = EPTEntry(try memory.read64(at: address))
            guard entry.rawValue & 7 != 0 || entry.userExecute else { continue }
            let gpa = base + UInt64(index) << level.entryShift
            if entry.isLeaf(at: level) {
                guard entry.dirty else { continue }
                dirtyLeaves += 1
                bitmap.mark(GuestPhysicalAddress(gpa), size: level.entrySpan)
                if clear { try memory.write64(entry.rawValue & ~EPTEntry.dirtyBit, at: address) }
            } else if let next = level.next {
                dirtyLeaves += try scan(table: entry.address, level: next, base: gpa, memory: &memory, bitmap: &bitmap, clear: clear)
            }
        }
        return dirtyLeaves
    }
}

/// Why a `DirtyPageBitmap` cannot cover the range asked for.
public enum DirtyPageBitmapError: Error, Equatable, Sendable, CustomStringConvertible {
    case negativePageCount(Int)
    case rangeWrapsPastTop(base: UInt64, pageCount: Int)

    public var description: String {
        switch self {
        case .negativePageCount(let count): "pageCount: \(count) is invalid; expected 0 or more pages"
        case .rangeWrapsPastTop(let base, let count):
            "pageCount: \(count) pages from 0x\(String(base, radix: 16)) run past the end of the 64-bit address space"
        }
    }
}
