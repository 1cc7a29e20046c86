// The guest-physical RAM of a PC-shaped VM as its boot protocols describe it (E820 types; ACPI
// 6.5, 15 "System Address Map Interfaces"). It matches HVCore's `GuestMemory.pcLayout`: RAM up
// to 3 GiB at 0, the 3-4 GiB hole for MMIO (the I/O APIC, local APICs, PCI BARs, the TPM), the
// rest above 4 GiB. Every loader builds its map (E820, Multiboot mmap, PVH memmap) from here.

/// One entry of the map: [address, address + size) of `type`.
struct PCMemoryRange: Equatable {
    var address: UInt64
    var size: UInt64
    var type: UInt32

    /// E820 type 1: RAM the kernel may use.
    static let ram: UInt32 = 1
    /// E820 type 2: reserved (the legacy VGA/BIOS area 640 KiB-1 MiB).
    static let reserved: UInt32 = 2
}

enum PCMemoryMap {
    /// Where RAM stops below 4 GiB (GuestMemory.pcLayout's hole start).
    static let holeStart: UInt64 = 0xC000_0000
    static let fourGiB: UInt64 = 1 << 32
    /// End of conventional memory (640 KiB) and start of extended memory (1 MiB).
    static let conventionalEnd: UInt64 = 0xA_0000
    static let extendedStart: UInt64 = 0x10_0000

    /// The map of a VM with `memorySize` bytes of RAM: RAM below 640 KiB, reserved to 1 MiB,
    /// RAM from 1 MiB to the hole, and RAM above 4 GiB for the rest. Entries that would be empty
    /// are left out.
    static func ranges(memorySize: UInt64) -> [PCMemoryRange] {
        var ranges = [PCMemoryRange(address: 0, size: min(memorySize, conventionalEnd), type: PCMemoryRange.ram),
                      PCMemoryRange(address: conventionalEnd, size: extendedStart - conventionalEnd, type: PCMemoryRange.reserved)]
        let low = min(memorySize, holeStart)
        if low > extendedStart { ranges.append(PCMemoryRange(address: extendedStart, size: low - extendedStart, type: PCMemoryRange.ram)) }
        if memorySize > holeStart { ranges.append(PCMemoryRange(address: fourGiB, size: memorySize - holeStart, type: PCMemoryRange.ram)) }
        return ranges
    }

    /// The end of the RAM below the hole: kernels, modules, initrds and boot structures the
    /// loaders place go below it.
    static func lowRAMEnd(memorySize: UInt64) -> UInt64 { min(memorySize, holeStart) }

    /// Multiboot's mem_lower and mem_upper in KiB: RAM below 640 KiB, and RAM from 1 MiB up to
    /// the first hole (Multiboot 0.6.96 3.3: "the maximum possibly is the address of the first
    /// upper memory hole minus 1 megabyte").
    static func multibootKiB(memorySize: UInt64) -> (lower: UInt64, upper: UInt64) {
        let low = lowRAMEnd(memorySize: memorySize)
        return (min(memorySize, conventionalEnd) / 1024, low > extendedStart ? (low - extendedStart) / 1024 : 0)
    }
}
