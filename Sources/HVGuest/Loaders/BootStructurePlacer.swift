// Where a loader puts the structures it writes for the kernel (the Multiboot information, the
// Linux zero page and command line, the PVH start info): in RAM that the kernel, its modules, the
// initrd and HV's own set-up (GDT, stack, page tables) leave free. A fixed address is not enough:
// kvm-unit-tests' realmode test links itself at 0x8000-0xDA30, over the 0x9000 HV used to take.
// GRUB places its boot information in free memory after everything it loaded (grub-core/loader/
// i386/multiboot_mbi.c); SeaBIOS and QEMU's option ROMs use low conventional memory. HV keeps its
// familiar address when it is free and otherwise searches the same places.

/// Places boot structures in guest RAM that nothing else uses.
///
/// A structure goes at its `preferred` address when that range is free; else at the lowest free,
/// aligned address in conventional memory (0x1000 up to 640 KiB, clear of the real-mode IVT and
/// BIOS data area below 4 KiB); else at the lowest one from 1 MiB up to the end of RAM below the
/// 3 GiB hole. Each placed structure is occupied for the next.
struct BootStructurePlacer {
    /// The lowest address a structure may take: below it are the IVT and the BIOS data area.
    static let conventionalStart: UInt64 = 0x1000

    private(set) var occupied: [(name: String, start: UInt64, end: UInt64)]
    /// The address ranges searched, in order.
    let searched: [Range<UInt64>]

    init(memorySize: UInt64, occupied: [(name: String, start: UInt64, end: UInt64)]) {
        self.occupied = occupied
        let conventional = Self.conventionalStart..<max(Self.conventionalStart, min(memorySize, PCMemoryMap.conventionalEnd))
        let lowRAM = PCMemoryMap.lowRAMEnd(memorySize: memorySize)
        let extended = PCMemoryMap.extendedStart..<max(PCMemoryMap.extendedStart, lowRAM)
        searched = [conventional, extended].filter { !$0.isEmpty }
    }

    /// Marks [start, end) used by `name` (a chunk the loader placed itself).
    mutating func occupy(_ name: String, start: UInt64, end: UInt64) {
        occupied.append((name, start, end))
    }

    /// Marks every chunk of `chunks` used (zero-fill included).
    mutating func occupy(_ chunks: [GuestImage.Chunk]) {
        for chunk in chunks { occupy(chunk.name, start: chunk.address.rawValue, end: chunk.address.rawValue + chunk.size) }
    }

    /// The address for `size` bytes of `name`, aligned to `alignment` (a power of two), and marks
    /// it used. Throws `noRoomForBootStructure` when no searched range has that much free.
    mutating func place(_ name: String, size: UInt64, alignment: UInt64 = 16, preferred: UInt64) throws(LoaderError) -> UInt64 {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
        let size = max(size, 1)
        if preferred % alignment == 0, searched.contains(where: { $0.contains(preferred) && size <= $0.upperBound - preferred }),
           conflict(preferred, size) == nil {
            occupy(name, start: preferred, end: preferred + size)
            return preferred
        }
        for range in searched {
            var candidate = align(range.lowerBound, alignment)
            // Each conflict moves the candidate past the structure it hit: at most one step per structure.
            while candidate < range.upperBound, size <= range.upperBound - candidate {
                guard let blocker = conflict(candidate, size) else {
                    occupy(name, start: candidate, end: candidate + size)
                    return candidate
                }
                candidate = align(blocker.end, alignment)
            }
        }
        throw .noRoomForBootStructure(structure: name, size: size,
                                      ramBelowHole: searched.last?.upperBound ?? 0)
    }

    /// Where an initrd goes (Linux's boot protocol and PVH alike: "as high as possible"): the
    /// highest page-aligned address from which `size` bytes end at or below `ceiling`, not below
    /// `floor` (the end of the kernel). Throws `outsideMemory` naming `field` when none exists.
    static func highestPage(for what: String, field: String, size: UInt64, floor: UInt64, ceiling: UInt64) throws(LoaderError) -> UInt64 {
        guard size <= ceiling, (ceiling - size) & ~0xFFF >= floor else {
            throw .outsideMemory(field: field, what: what, start: floor, size: size, memorySize: ceiling)
        }
        return (ceiling - size) & ~0xFFF
    }

    private func conflict(_ start: UInt64, _ size: UInt64) -> (name: String, start: UInt64, end: UInt64)? {
        occupied.first { $0.start < start + size && start < $0.end }
    }

    private func align(_ value: UInt64, _ alignment: UInt64) -> UInt64 {
        let (sum, overflow) = value.addingReportingOverflow(alignment - 1)
        return overflow ? UInt64.max & ~(alignment - 1) : sum & ~(alignment - 1)
    }
}
