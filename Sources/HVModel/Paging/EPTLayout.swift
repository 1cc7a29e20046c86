// A census of an EPT hierarchy: how many tables and entries each level holds and how much
// memory the leaves map. `hv ept plan` prints it.

/// The tables and entries at one level.
public struct EPTLevelCensus: Hashable, Sendable {
    public var level: EPTLevel
    /// Table pages at this level.
    public var tables: Int
    /// Present entries in those tables.
    public var presentEntries: Int
    /// Present entries that map a page.
    public var leaves: Int
}

/// The shape of a whole hierarchy.
public struct EPTLayout: Hashable, Sendable {
    /// Root level first.
    public var levels: [EPTLevelCensus]
    /// Table pages in all (each 4 KiB).
    public var tablePages: Int { levels.reduce(0) { $0 + $1.tables } }
    /// Bytes of table memory.
    public var tableBytes: UInt64 { UInt64(tablePages) * 4096 }
    /// Bytes of guest-physical memory the leaves map.
    public var mappedBytes: UInt64 {
        levels.reduce(0) { $0 + UInt64($1.leaves) * ($1.level.leafPageSize?.bytes ?? 0) }
    }

    /// Counts the hierarchy rooted at `pointer` in `memory`.
    public static func census<M: PhysicalMemory>(of pointer: EPTPointer, memory: inout M,
                                                 modeBasedExecute: Bool = false) throws(PhysicalMemoryFault) -> EPTLayout
    {
        let top = EPTLevel(rawValue: pointer.levels) ?? .pml4
        var levels = [EPTLevelCensus]()
        var level: EPTLevel? = top
        while let l = level {
            levels.append(EPTLevelCensus(level: l, tables: 0, presentEntries: 0, leaves: 0))
            level = l.next
        }
        try count(table: pointer.root.rawValue, level: top, slot: 0, memory: &memory, levels: &levels, mbec: modeBasedExecute)
        return EPTLayout(levels: levels)
    }

    static func count<M: PhysicalMemory>(table: UInt64, level: EPTLevel, slot: Int, memory: inout M,
                                         levels: inout [EPTLevelCensus], mbec: Bool) throws(PhysicalMemoryFault)
    {
        levels[slot].tables += 1
        for i in 0..<512 {
            let entry = EPTEntry(try memory.read64(at: table + UInt64(i) * 8))
            guard entry.isPresent(modeBasedExecute: mbec) else { continue }
            levels[slot].presentEntries += 1
            if entry.isLeaf(at: level) {
                levels[slot].leaves += 1
            } else if let next = level.next {
                try count(table: entry.address, level: next, slot: slot + 1, memory: &memory, levels: &levels, mbec: mbec)
            }
        }
    }

    /// Table pages an identity map of `size` bytes from 0 needs with leaves of `pageSize`
    /// (4 levels): the arithmetic the census must agree with.
    public static func expectedTablePages(identitySize size: UInt64, pageSize: PageSize) -> Int {
        func tablesCovering(_ entrySpan: UInt64) -> Int { Int((size + entrySpan * 512 - 1) / (entrySpan * 512)) }
        let pml4 = 1
        let pdpt = tablesCovering(1 << 30)
        let pd = pageSize < .size1GiB ? tablesCovering(2 << 20) : 0
        let pt = pageSize == .size4KiB ? tablesCovering(4096) : 0
        return pml4 + pdpt + pd + pt
    }
}
