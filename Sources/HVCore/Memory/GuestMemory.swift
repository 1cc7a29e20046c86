// Guest RAM: anonymous mmap regions placed in the guest-physical address space, with
// bounds-checked typed access. Every address a guest hands us goes through `hostPointer`.
#if canImport(Glibc)
import Glibc
import Synchronization
#endif

/// Why a guest-memory access or mapping failed.
public enum GuestMemoryError: Error, Equatable, CustomStringConvertible {
    /// `length` bytes at `address` are not all inside one RAM region.
    case outOfBounds(address: GuestPhysicalAddress, length: UInt64)
    /// The host could not reserve the memory (mmap failed with `errno`).
    case mapFailed(size: UInt64, errno: Int32)
    /// Two regions overlap or a region is empty or unaligned.
    case invalidLayout(String)

    public var description: String {
        switch self {
        case let .outOfBounds(address, length):
            "guest-physical 0x\(String(address.rawValue, radix: 16)) (+\(length) bytes) is outside guest RAM"
        case let .mapFailed(size, errno):
            "could not map \(size) bytes of guest RAM: \(String(cString: strerror(errno)))"
        case .invalidLayout(let detail):
            "invalid guest memory layout: \(detail)"
        }
    }
}

/// One contiguous piece of guest RAM and the host mapping behind it. Owns the mapping.
public final class MemoryRegion: @unchecked Sendable {
    // Sendable: the mapping's address and size never change; its bytes are guest RAM, which
    // guest and host share by design.

    /// Where the region starts in the guest-physical address space.
    public let guestAddress: GuestPhysicalAddress
    /// Size in bytes, a multiple of the host page size.
    public let size: UInt64
    /// The host mapping (mmap, shared with the guest).
    public let hostAddress: UnsafeMutableRawPointer
    /// Mapped from a file (a snapshot's memory), where `MADV_DONTNEED` brings back the file's
    /// bytes rather than zeros.
    public let fileBacked: Bool

    /// The size of a huge page on x86-64: the host's transparent huge pages and the 2 MiB
    /// entries of EPT/NPT.
    public static let hugePageSize: UInt64 = 2 << 20

    /// Maps `size` bytes of zeroed anonymous memory for guest-physical `guestAddress`.
    ///
    /// With `hugePages` (and a region of at least 2 MiB), the mapping starts on a 2 MiB
    /// boundary and is marked `MADV_HUGEPAGE`, so the kernel backs it with transparent huge
    /// pages where it can (Documentation/admin-guide/mm/transhuge.rst) and KVM maps guest RAM
    /// with 2 MiB EPT/NPT entries: one nested page fault per 2 MiB instead of 512, and fewer
    /// TLB misses, as QEMU arranges for its RAM. Guest-physical and host addresses are then
    /// congruent modulo 2 MiB whenever `guestAddress` is 2 MiB aligned, which KVM needs for a
    /// large mapping.
    public init(guestAddress: GuestPhysicalAddress, size: UInt64, hugePages: Bool = false) throws(GuestMemoryError) {
        guard size > 0, size % 4096 == 0, guestAddress.rawValue % 4096 == 0 else {
            throw .invalidLayout("region at 0x\(String(guestAddress.rawValue, radix: 16)) of \(size) bytes must be non-empty and 4 KiB aligned")
        }
        // The end must not wrap past 2^64, and the host must be able to map the size at all.
        guard guestAddress.advanced(by: size) != nil else {
            throw .invalidLayout("region at 0x\(String(guestAddress.rawValue, radix: 16)) of \(size) bytes wraps past the end of the 64-bit address space")
        }
        guard size <= UInt64(Int.max) else { throw .mapFailed(size: size, errno: ENOMEM) }
        let align = hugePages && size >= Self.hugePageSize ? Int(Self.hugePageSize) : 0
        let (length, overflow) = Int(size).addingReportingOverflow(align)
        guard !overflow else { throw .mapFailed(size: size, errno: ENOMEM) }
        // Guest RAM never needs to be in swap-backed core dumps; MAP_NORESERVE lets a large,
        // mostly untouched guest start without committing all of it.
        let mapped = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let mapped, mapped != MAP_FAILED else { throw .mapFailed(size: size, errno: errno) }
        var pointer = mapped
        if align > 0 {
            // Over-map by 2 MiB, then give back the unaligned head and tail.
            let start = UInt(bitPattern: mapped), aligned = (start + UInt(align) - 1) & ~UInt(align - 1)
            let head = Int(aligned - start), tail = length - head - Int(size)
            if head > 0 { munmap(mapped, head) }
            pointer = mapped + head
            if tail > 0 { munmap(pointer + Int(size), tail) }
            _ = madvise(pointer, Int(size), MADV_HUGEPAGE)
        }
        _ = madvise(pointer, Int(size), MADV_DONTDUMP)
        self.guestAddress = guestAddress
        self.size = size
        self.hostAddress = pointer
        fileBacked = false
    }

    /// Maps `size` bytes of the open file `descriptor` from `offset`, private and copy-on-write
    /// (`MAP_PRIVATE`): pages are read from the file when the guest first touches them and
    /// the guest's writes never reach it (a snapshot's memory file, as Firecracker restores).
    /// The file must be at least `offset + size` bytes; a hole reads as zeros.
    public init(guestAddress: GuestPhysicalAddress, size: UInt64, file descriptor: Int32, offset: UInt64) throws(GuestMemoryError) {
        guard size > 0, size % 4096 == 0, guestAddress.rawValue % 4096 == 0, offset % 4096 == 0 else {
            throw .invalidLayout("region at 0x\(String(guestAddress.rawValue, radix: 16)) of \(size) bytes from file offset \(offset) must be non-empty and 4 KiB aligned")
        }
        guard guestAddress.advanced(by: size) != nil, size <= UInt64(Int.max), offset <= UInt64(Int.max) else {
            throw .mapFailed(size: size, errno: EINVAL)
        }
        let mapped = mmap(nil, Int(size), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_NORESERVE, descriptor, off_t(offset))
        guard let mapped, mapped != MAP_FAILED else { throw .mapFailed(size: size, errno: errno) }
        _ = madvise(mapped, Int(size), MADV_DONTDUMP)
        self.guestAddress = guestAddress
        self.size = size
        self.hostAddress = mapped
        fileBacked = true
    }

    deinit { munmap(hostAddress, Int(size)) }

    /// True when `length` bytes at guest-physical `address` lie inside this region.
    @inlinable func contains(_ address: UInt64, length: UInt64) -> Bool {
        guard address >= guestAddress.rawValue else { return false }
        let offset = address - guestAddress.rawValue
        return offset <= size && length <= size - offset
    }
}

/// All of a VM's RAM. Reads and writes check that the whole access lies in one region.
public final class GuestMemory: @unchecked Sendable {
    // Sendable: the region list is fixed at creation; accesses touch guest RAM only.

    public let regions: [MemoryRegion]

    /// While on, the guest pages the host writes through this object (device models: fw_cfg's
    /// DMA, ACPI tables) are recorded, for live migration: KVM's dirty log sees only the guest's
    /// own writes.
    private let loggingHostWrites = Atomic<Bool>(false)
    private let hostWrites = Mutex<Set<UInt64>>([])

    /// The total RAM size in bytes.
    public var size: UInt64 { regions.reduce(0) { $0 + $1.size } }

    /// Builds guest memory from regions that must not overlap.
    public init(regions: [MemoryRegion]) throws(GuestMemoryError) {
        let sorted = regions.sorted { $0.guestAddress < $1.guestAddress }
        // b starts at or after a (sorted): they overlap when b starts less than a.size past a.
        for (a, b) in zip(sorted, sorted.dropFirst()) where b.guestAddress.rawValue - a.guestAddress.rawValue < a.size {
            throw .invalidLayout("regions at 0x\(String(a.guestAddress.rawValue, radix: 16)) and 0x\(String(b.guestAddress.rawValue, radix: 16)) overlap")
        }
        self.regions = sorted
    }

    /// The PC layout for `size` bytes of RAM: up to 3 GiB at 0, the rest above 4 GiB, leaving
    /// 3-4 GiB for MMIO (the "PCI hole" of real PCs).
    /// With `hugePages`, each region asks for transparent huge pages (`MemoryRegion`).
    public static func pcLayout(size: UInt64, hugePages: Bool = false) throws(GuestMemoryError) -> GuestMemory {
        try GuestMemory(regions: pcRegions(size: size).map { (region) throws(GuestMemoryError) in
            try MemoryRegion(guestAddress: GuestPhysicalAddress(region.address), size: region.size, hugePages: hugePages)
        })
    }

    /// Where the PC layout puts `size` bytes of RAM: guest-physical address and size per region.
    public static func pcRegions(size: UInt64) -> [(address: UInt64, size: UInt64)] {
        let holeStart: UInt64 = 0xC000_0000
        let low = Swift.min(size, holeStart)
        let highStart: UInt64 = 0x1_0000_0000
        var regions: [(address: UInt64, size: UInt64)] = [(address: 0, size: low)]
        if size > low { regions.append((address: highStart, size: size - low)) }
        return regions
    }

    /// The region holding `length` bytes at `address`, if one holds them all.
    @inlinable func region(containing address: UInt64, length: UInt64) -> MemoryRegion? {
        for region in regions where region.contains(address, length: length) { return region }
        return nil
    }

    /// A host pointer to `length` bytes of guest RAM at `address`, valid while this object lives.
    public func hostPointer(for address: GuestPhysicalAddress, length: UInt64) throws(GuestMemoryError) -> UnsafeMutableRawPointer {
        guard let region = region(containing: address.rawValue, length: length) else {
            throw .outOfBounds(address: address, length: length)
        }
        return region.hostAddress + Int(address.rawValue - region.guestAddress.rawValue)
    }

    /// True when `length` bytes at `address` are RAM.
    public func contains(_ address: GuestPhysicalAddress, length: UInt64 = 1) -> Bool {
        region(containing: address.rawValue, length: length) != nil
    }

    /// Starts (or stops) recording the pages the host writes; starting forgets earlier ones.
    public func logHostWrites(_ enabled: Bool) {
        hostWrites.withLock { $0.removeAll() }
        loggingHostWrites.store(enabled, ordering: .sequentiallyConsistent)
    }

    /// The guest-physical addresses of the 4 KiB pages the host wrote since the last call.
    public func takeHostWrites() -> [UInt64] {
        hostWrites.withLock { pages in
            defer { pages.removeAll() }
            return pages.sorted()
        }
    }

    /// Records a host write of `length` bytes at `address` while host writes are logged (a
    /// device that writes through `hostPointer` calls it: virtqueue buffers).
    @inline(__always) func noteHostWrite(_ address: GuestPhysicalAddress, _ length: UInt64) {
        guard loggingHostWrites.load(ordering: .relaxed), length > 0 else { return }
        let first = address.rawValue / 4096, last = (address.rawValue &+ length &- 1) / 4096
        hostWrites.withLock { pages in
            for page in first...max(first, last) { pages.insert(page * 4096) }
        }
    }

    /// Reads a little-endian integer.
    public func read<T: FixedWidthInteger>(_ type: T.Type = T.self, at address: GuestPhysicalAddress) throws(GuestMemoryError) -> T {
        let pointer = try hostPointer(for: address, length: UInt64(MemoryLayout<T>.size))
        return T(littleEndian: pointer.loadUnaligned(as: T.self))
    }

    /// Writes a little-endian integer.
    public func write<T: FixedWidthInteger>(_ value: T, at address: GuestPhysicalAddress) throws(GuestMemoryError) {
        let pointer = try hostPointer(for: address, length: UInt64(MemoryLayout<T>.size))
        pointer.storeBytes(of: value.littleEndian, as: T.self)
        noteHostWrite(address, UInt64(MemoryLayout<T>.size))
    }

    /// Copies `bytes` into guest RAM at `address` (one `memcpy` when they are contiguous).
    public func write(bytes: some Collection<UInt8>, at address: GuestPhysicalAddress) throws(GuestMemoryError) {
        let pointer = try hostPointer(for: address, length: UInt64(bytes.count))
        noteHostWrite(address, UInt64(bytes.count))
        let copied: Void? = bytes.withContiguousStorageIfAvailable { buffer in
            if let base = buffer.baseAddress { pointer.copyMemory(from: base, byteCount: buffer.count) }
        }
        guard copied == nil else { return }
        var offset = 0
        for byte in bytes {
            pointer.storeBytes(of: byte, toByteOffset: offset, as: UInt8.self)
            offset += 1
        }
    }

    /// Zeroes `count` bytes of guest RAM at `address` at the cost of the pages touched, not of
    /// `count`: whole pages are handed back to the kernel (`madvise(MADV_DONTNEED)` on this
    /// private anonymous mapping reads back as zeros, and an untouched page costs nothing),
    /// the partial pages at either end are cleared with `memset`.
    public func zero(count: UInt64, at address: GuestPhysicalAddress) throws(GuestMemoryError) {
        guard count > 0 else { return }
        let pointer = try hostPointer(for: address, length: count)
        noteHostWrite(address, count)
        if region(containing: address.rawValue, length: count)?.fileBacked == true {
            // DONTNEED would bring the snapshot's bytes back, not zeros.
            pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(count))
            return
        }
        let page = UInt(sysconf(Int32(_SC_PAGESIZE)))
        let start = UInt(bitPattern: pointer), end = start + UInt(count)
        let firstPage = (start + page - 1) / page * page, lastPage = end / page * page
        guard firstPage < lastPage else {
            pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(count))
            return
        }
        pointer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(firstPage - start))
        if madvise(UnsafeMutableRawPointer(bitPattern: firstPage), Int(lastPage - firstPage), MADV_DONTNEED) != 0 {
            UnsafeMutableRawPointer(bitPattern: firstPage)!.initializeMemory(as: UInt8.self, repeating: 0, count: Int(lastPage - firstPage))
        }
        UnsafeMutableRawPointer(bitPattern: lastPage)!.initializeMemory(as: UInt8.self, repeating: 0, count: Int(end - lastPage))
    }

    /// Sets `count` bytes of guest RAM at `address` to `value` (`memset`): no host buffer of
    /// `count` bytes, whatever a guest asks for.
    public func fill(_ value: UInt8, count: UInt64, at address: GuestPhysicalAddress) throws(GuestMemoryError) {
        guard count > 0 else { return }
        let pointer = try hostPointer(for: address, length: count)
        pointer.initializeMemory(as: UInt8.self, repeating: value, count: Int(count))
        noteHostWrite(address, count)
    }

    /// Copies `count` bytes of guest RAM at `address` out.
    public func readBytes(at address: GuestPhysicalAddress, count: Int) throws(GuestMemoryError) -> [UInt8] {
        guard count >= 0 else { throw .outOfBounds(address: address, length: 0) }
        let pointer = try hostPointer(for: address, length: UInt64(count))
        return Array(UnsafeRawBufferPointer(start: pointer, count: count))
    }
}
