// A simple table allocator over one contiguous array: the hosted stand-in for "physical pages
// handed out by the bare-metal allocator", and the memory the CLI, tests and benchmarks build
// EPT tables in.

/// Table pages at host-physical `base`, `base + 4 KiB`, ...; freed pages are reused.
public struct PageTablePool: TableAllocator, Sendable {
    /// Host-physical address of the first page.
    public let base: UInt64
    /// Most pages the pool may hand out (nil: unbounded).
    public let pageLimit: Int?
    /// Entries of every page ever allocated, 512 per page.
    @usableFromInline var words: [UInt64] = []
    /// Pages given back, reused before the pool grows.
    @usableFromInline var freePages: [Int] = []

    /// An empty pool whose first page will be at host-physical `base` (4 KiB aligned).
    public init(base: HostPhysicalAddress = 0x10_0000, pageLimit: Int? = nil) {
        self.base = base.rawValue & ~0xFFF
        self.pageLimit = pageLimit
    }

    /// Pages handed out and not given back.
    public var pagesInUse: Int { words.count / 512 - freePages.count }

    public mutating func allocateTable() -> HostPhysicalAddress? {
        if let page = freePages.popLast() {
            for i in (page * 512)..<(page * 512 + 512) { words[i] = 0 }
            return HostPhysicalAddress(base + UInt64(page) << 12)
        }
        let page = words.count / 512
        if let pageLimit, page >= pageLimit { return nil }
        words.append(contentsOf: repeatElement(0, count: 512))
        return HostPhysicalAddress(base + UInt64(page) << 12)
    }

    public mutating func freeTable(_ address: HostPhysicalAddress) {
        let page = Int((address.rawValue - base) >> 12)
        precondition(address.rawValue >= base && page < words.count / 512 && !freePages.contains(page),
                     "freeing a page the pool does not own")
        freePages.append(page)
    }

    @inlinable
    public func read64(at address: UInt64) throws(PhysicalMemoryFault) -> UInt64 {
        let index = (address &- base) >> 3
        guard address >= base, index < UInt64(words.count) else { throw .unbacked(address: address) }
        return words[Int(index)]
    }

    @inlinable
    public mutating func write64(_ value: UInt64, at address: UInt64) throws(PhysicalMemoryFault) {
        let index = (address &- base) >> 3
        guard address >= base, index < UInt64(words.count) else { throw .unbacked(address: address) }
        words[Int(index)] = value
    }
}
