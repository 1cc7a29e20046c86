// What a loader puts into a fresh VM: bytes at guest-physical addresses plus the vCPU's first
// register state, so that a flat program starts in real mode or in 64-bit long mode.

import HVModel

/// The processor mode a flat program starts in.
public enum GuestMode: Sendable, Hashable {
    /// Real-address mode: 16-bit code, segment:offset addressing below 1 MiB (SDM Vol. 3A, 20.1).
    case real
    /// IA-32e 64-bit mode with identity paging (SDM Vol. 3A, 9.8.5 and 4.5).
    case long
    /// 32-bit protected mode, flat segments, paging off (SDM Vol. 3A, 9.9.1): how Multiboot
    /// kernels and ELF32 images start (ProtectedModeSetup.swift).
    case protected

    /// The code size the program must be assembled for.
    public var codeSize: CodeSize {
        switch self {
        case .real: .bits16
        case .protected: .bits32
        case .long: .bits64
        }
    }

    /// Where a program of this mode loads unless told otherwise (1 MiB outside real mode).
    public var defaultLoadAddress: UInt64 {
        self == .real ? GuestImage.realModeLoadAddress : GuestImage.longModeLoadAddress
    }
}

/// Memory contents and initial vCPU state for one guest program.
///
/// Layout, real mode: the program at `loadAddress` (default 0x7C00, the boot-sector address);
/// SS:SP = 0000:7000, so the stack grows down below the program; nothing else is written.
///
/// Layout, long mode (default load address 0x10_0000 = 1 MiB):
///
/// | address              | contents                                            |
/// |----------------------|-----------------------------------------------------|
/// | 0x500 ..< 0x518      | GDT: null, code 0x08 (L = 1), data 0x10             |
/// | 0x1000 ..< 0x2000    | PML4                                                |
/// | 0x2000 ..< 0x3000    | PDPT                                                |
/// | 0x3000 ..< +4 KiB*n  | n page directories of 2 MiB pages, n = mapped / 1 GiB |
/// | 0x70000 ..< 0x80000  | stack, RSP = 0x80000                                |
///
/// The identity map covers the first 4 GiB (so MMIO below 4 GiB, e.g. 0xD000_0000, is
/// reachable) or all of memory rounded up to 1 GiB, whichever is larger.
public struct GuestImage: Sendable, Equatable {
    /// Bytes to copy to one guest-physical address, then zeros.
    public struct Chunk: Sendable, Equatable {
        /// Where the first byte goes.
        public var address: GuestPhysicalAddress
        /// The contents.
        public var bytes: [UInt8]
        /// Zero bytes after `bytes` (an ELF segment's .bss, p_memsz - p_filesz): kept as a count,
        /// never as bytes, so a huge .bss costs no host memory; the machine zeroes the range by
        /// dropping the pages (`GuestMemory.zero`).
        public var zeroFill: UInt64
        /// What the bytes are: "program", "gdt", "pml4", "pdpt", "page directories".
        public var name: String

        /// A chunk of `bytes` at `address`, followed by `zeroFill` zero bytes.
        public init(address: GuestPhysicalAddress, bytes: [UInt8], zeroFill: UInt64 = 0, name: String) {
            self.address = address
            self.bytes = bytes
            self.zeroFill = zeroFill
            self.name = name
        }

        /// Bytes of guest memory the chunk covers: its contents and its zeros (UInt64.max when a
        /// zero fill near 2^64 makes the sum not fit: no memory holds such a chunk, and loading
        /// it fails with an out-of-bounds error instead of trapping here).
        public var size: UInt64 {
            let (sum, overflow) = UInt64(bytes.count).addingReportingOverflow(zeroFill)
            return overflow ? .max : sum
        }
    }

    /// Everything to write into guest memory, program first.
    public var chunks: [Chunk]
    /// Initial RIP, RSP and RFLAGS (other registers zero).
    public var registers: Registers
    /// Initial segments, descriptor tables, control registers and EFER.
    public var specialRegisters: SpecialRegisters
    /// The mode the vCPU starts in.
    public var mode: GuestMode

    /// An image from its parts; `flat(...)` builds a checked one.
    public init(chunks: [Chunk], registers: Registers, specialRegisters: SpecialRegisters, mode: GuestMode) {
        self.chunks = chunks
        self.registers = registers
        self.specialRegisters = specialRegisters
        self.mode = mode
    }

    /// The chunk with this name, if any.
    public func chunk(named name: String) -> Chunk? { chunks.first { $0.name == name } }

    // MARK: Defaults

    /// Real-mode load address: 0x7C00, where a BIOS loads a boot sector.
    public static let realModeLoadAddress: UInt64 = 0x7C00
    /// Real-mode initial SP with SS = 0: the stack grows down from linear 0x7000.
    public static let realModeStackPointer: UInt64 = 0x7000
    /// Long-mode load address: 1 MiB, above the low structures and the legacy hole.
    public static let longModeLoadAddress: UInt64 = 0x10_0000
    /// GDT address in long mode (after the real-mode IVT and BIOS data area).
    public static let gdtAddress: UInt64 = 0x500
    /// PML4 address; CR3 points here.
    public static let pml4Address: UInt64 = 0x1000
    /// The one PDPT, covering 512 GiB.
    public static let pdptAddress: UInt64 = 0x2000
    /// First page directory; the others follow every 4 KiB.
    public static let pageDirectoryAddress: UInt64 = 0x3000
    /// Long-mode initial RSP.
    public static let longModeStackTop: UInt64 = 0x8_0000
    /// Bytes below `longModeStackTop` that a long-mode program must leave free.
    public static let longModeStackSize: UInt64 = 0x1_0000
    /// The smallest memory for long mode: one 2 MiB page holds every set-up structure.
    public static let longModeMinimumMemorySize: UInt64 = 2 << 20
    /// The largest memory the identity map covers: 64 page directories, which end well below
    /// the stack.
    public static let longModeMaximumMemorySize: UInt64 = 64 << 30
    /// The long-mode code segment selector (GDT entry 1).
    public static let codeSelector: UInt16 = 0x08
    /// The long-mode data segment selector (GDT entry 2), in DS, ES, FS, GS and SS.
    public static let dataSelector: UInt16 = 0x10

    // MARK: Building

    /// An image that runs `bytes` in `mode`, loaded at `loadAddress` (nil: the mode's default)
    /// and entered at `entry` (nil: the first byte), in a VM with `memorySize` bytes of RAM
    /// starting at guest-physical 0.
    ///
    /// Real mode: CS = 0 and IP = entry when the entry is below 64 KiB, else CS = entry >> 4 and
    /// IP = entry & 0xF; DS, ES, FS and GS equal CS, so labels assembled relative to the CS base
    /// address data. Long mode: see the type's layout table.
    public static func flat(
        _ bytes: [UInt8], mode: GuestMode, loadAddress: UInt64? = nil, entry: UInt64? = nil, memorySize: UInt64
    ) throws(GuestImageError) -> GuestImage {
        let loadAddress = loadAddress ?? mode.defaultLoadAddress
        let entry = entry ?? loadAddress
        guard !bytes.isEmpty else { throw .emptyProgram }
        let size = UInt64(bytes.count)
        let (programEnd, overflow) = loadAddress.addingReportingOverflow(size)
        guard !overflow, programEnd <= memorySize else {
            throw .programOutsideMemory(loadAddress: loadAddress, size: size, memorySize: memorySize)
        }
        guard entry >= loadAddress, entry < programEnd else {
            throw .entryOutsideProgram(entry: entry, loadAddress: loadAddress, programEnd: programEnd)
        }
        let program = Chunk(address: GuestPhysicalAddress(loadAddress), bytes: bytes, name: "program")
        switch mode {
        case .real:
            guard programEnd <= 0x10_0000 else {
                throw .realModeProgramAbove1MiB(loadAddress: loadAddress, programEnd: programEnd)
            }
            return realModeImage(program: program, entry: entry)
        case .long:
            try checkLongModeMemory(memorySize)
            for region in longModeReservedRegions(memorySize: memorySize)
            where loadAddress < region.end && region.start < programEnd {
                throw .programOverlapsSetUpStructure(
                    structure: region.name, structureStart: region.start, structureEnd: region.end,
                    loadAddress: loadAddress, programEnd: programEnd)
            }
            return longModeImage(program: program, entry: entry, memorySize: memorySize)
        case .protected:
            for region in protectedModeReservedRegions where loadAddress < region.end && region.start < programEnd {
                throw .programOverlapsSetUpStructure(
                    structure: region.name, structureStart: region.start, structureEnd: region.end,
                    loadAddress: loadAddress, programEnd: programEnd)
            }
            return protectedModeImage(chunks: [program], entry: entry)
        }
    }
}
