// Physical memory for guests and paging structures, from the memory map the boot loader hands
// over (Multiboot Specification 0.6.96, 3.3, "mmap"; Multiboot2 Specification 2.0, 3.6.8 "Memory
// map"): the available regions, minus the first MiB (real-mode IVT, BIOS data, option ROMs) and
// the image with its C heap (4 to 64 MiB), clipped to the 4 GiB the image maps. Free ranges are
// kept sorted and merged; an allocation takes the first range that fits at its alignment.
// Before the map is read (or without one), pages come from the C heap.
import BareMetalSupport
import HVModel

enum PageAllocator {
    struct Range {
        var start: UInt64
        var end: UInt64
    }

    /// The free ranges, sorted by address, none touching another.
    static var free: [Range] = []
    static var ready = false
    /// Where the image and its heap live (BareMetal/linker.ld, Support/runtime.c).
    static let reserved: [Range] = [Range(start: 0, end: 1 << 20), Range(start: 4 << 20, end: 64 << 20)]
    /// The first 4 GiB: what Entry/entry.S maps.
    static let mappedLimit: UInt64 = 4 << 30

    /// Takes the loader's available regions as free memory, less what is reserved.
    static func start(available regions: [(base: UInt64, length: UInt64)]) {
        var ranges: [Range] = []
        for region in regions {
            var pieces = [Range(start: (region.base + 0xFFF) & ~0xFFF, end: min(region.base &+ region.length, mappedLimit) & ~0xFFF)]
            for hole in reserved {
                var kept: [Range] = []
                for piece in pieces {
                    if piece.start < hole.start { kept.append(Range(start: piece.start, end: min(piece.end, hole.start))) }
                    if piece.end > hole.end { kept.append(Range(start: max(piece.start, hole.end), end: piece.end)) }
                }
                pieces = kept
            }
            ranges += pieces.filter { $0.end > $0.start }
        }
        free = ranges.sorted { $0.start < $1.start }
        ready = true
    }

    static var freeBytes: UInt64 { free.reduce(0) { $0 + ($1.end - $1.start) } }

    /// `bytes` (rounded up to pages) at `alignment`, zeroed; nil when no free range fits.
    static func allocate(_ bytes: Int, alignment: Int) -> UnsafeMutableRawPointer? {
        let size = (UInt64(bytes) + 0xFFF) & ~0xFFF, align = UInt64(max(alignment, 4096))
        for index in free.indices {
            let range = free[index]
            let start = (range.start + align - 1) & ~(align - 1)
            guard start >= range.start, start + size <= range.end else { continue }
            free.remove(at: index)
            if start + size < range.end { free.insert(Range(start: start + size, end: range.end), at: index) }
            if range.start < start { free.insert(Range(start: range.start, end: start), at: index) }
            let pointer = UnsafeMutableRawPointer(bitPattern: UInt(start))!
            pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(size))
            return pointer
        }
        return nil
    }

    /// Gives back what `allocate` returned (same size); neighbours merge.
    static func release(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
        let start = UInt64(UInt(bitPattern: pointer)), end = start + ((UInt64(bytes) + 0xFFF) & ~0xFFF)
        var index = free.firstIndex { $0.start > start } ?? free.count
        free.insert(Range(start: start, end: end), at: index)
        if index + 1 < free.count, free[index].end == free[index + 1].start {
            free[index].end = free[index + 1].end
            free.remove(at: index + 1)
        }
        if index > 0, free[index - 1].end == free[index].start {
            free[index - 1].end = free[index].end
            free.remove(at: index)
            index -= 1
        }
    }
}

/// Page-aligned, zeroed memory (identity-mapped: its address is its physical address): from the
/// page allocator once it has the loader's map, from the C heap before.
func allocatePages(_ bytes: Int, alignment: Int = 4096) -> UnsafeMutableRawPointer {
    if PageAllocator.ready {
        guard let pointer = PageAllocator.allocate(bytes, alignment: alignment) else {
            print("out of memory for \(bytes) bytes (\(PageAllocator.freeBytes >> 20) MiB free in \(PageAllocator.free.count) ranges)")
            DebugExit.leave(code: 3)
        }
        return pointer
    }
    var pointer: UnsafeMutableRawPointer?
    guard posix_memalign(&pointer, alignment, bytes) == 0, let pointer else {
        print("out of memory for \(bytes) bytes")
        DebugExit.leave(code: 3)
    }
    pointer.initializeMemory(as: UInt8.self, repeating: 0, count: bytes)
    return pointer
}

/// Gives back pages `allocatePages` took from the page allocator (the C heap keeps its own).
func releasePages(_ pointer: UnsafeMutableRawPointer, bytes: Int) {
    guard PageAllocator.ready, UInt64(UInt(bitPattern: pointer)) >= 64 << 20 || UInt64(UInt(bitPattern: pointer)) < 4 << 20 else { return }
    PageAllocator.release(pointer, bytes: bytes)
}

/// Paging structures from the page allocator for HVModel's EPT and nested-paging builders (identity-mapped: a page's address
/// is its physical address).
struct PageTables: TableAllocator {
    mutating func read64(at address: UInt64) throws(PhysicalMemoryFault) -> UInt64 {
        UnsafePointer<UInt64>(bitPattern: UInt(address))!.pointee
    }

    mutating func write64(_ value: UInt64, at address: UInt64) throws(PhysicalMemoryFault) {
        UnsafeMutablePointer<UInt64>(bitPattern: UInt(address))!.pointee = value
    }

    mutating func allocateTable() -> HostPhysicalAddress? { HostPhysicalAddress(UInt64(UInt(bitPattern: allocatePages(4096)))) }

    mutating func freeTable(_ address: HostPhysicalAddress) {
        releasePages(UnsafeMutableRawPointer(bitPattern: UInt(address.rawValue))!, bytes: 4096)
    }
}
