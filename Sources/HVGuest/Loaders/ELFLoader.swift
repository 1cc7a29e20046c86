// Loading an ELF executable: each PT_LOAD segment is copied to its p_paddr with p_memsz - p_filesz
// zero bytes after it (gABI, "Program Loading"), then the vCPU starts at e_entry in the mode the
// file's class implies. ELFCLASS64 / EM_X86_64 starts in long mode (LongModeSetup.swift);
// ELFCLASS32 / EM_386 in 32-bit protected mode with paging off (ProtectedModeSetup.swift).

import HVModel

extension GuestImage {
    /// An image that runs the ELF executable `bytes` in a VM with `memorySize` bytes of RAM at
    /// guest-physical 0.
    ///
    /// - Segments load at p_paddr, one chunk each, named "segment N" (N = program header index),
    ///   `p_memsz` bytes long (file bytes, then zeros), in the RAM below the 3 GiB hole
    ///   (`PCMemoryMap`).
    /// - The entry is e_entry translated to physical through the segment whose
    ///   [p_vaddr, p_vaddr + p_memsz) holds it; an e_entry that is no segment's virtual address but
    ///   lies in a segment's physical range is used as is (vmlinux-style files).
    /// - ELF64: long mode, identity-mapped, RSP = 0x80000; segments must avoid the GDT, page
    ///   tables and stack below 0x80000 (`GuestImage`'s layout table).
    /// - ELF32: protected mode, CS/DS flat, paging off, ESP = 0x80000; segments must avoid the
    ///   GDT at 0x500 and the stack 0x70000-0x80000.
    ///
    /// Throws `LoaderError` naming the offending field for truncated headers, segments beyond
    /// the file or guest memory, p_filesz > p_memsz, overlapping segments and a bad entry.
    public static func elf(_ bytes: [UInt8], memorySize: UInt64) throws(LoaderError) -> GuestImage {
        let file = try ELFFile(parsing: bytes)
        switch file.elfClass {
        case .elf64:
            do { try checkLongModeMemory(memorySize) } catch { throw .setUp(error) }
            let reserved = longModeReservedRegions(memorySize: memorySize)
            let chunks = try loadSegments(of: file, from: bytes, memorySize: PCMemoryMap.lowRAMEnd(memorySize: memorySize),
                                          reserved: reserved)
            let entry = try physicalEntry(of: file)
            var image = longModeImage(program: chunks[0], entry: entry, memorySize: memorySize)
            image.chunks.insert(contentsOf: chunks.dropFirst(), at: 1)
            return image
        case .elf32:
            let chunks = try loadSegments(of: file, from: bytes, memorySize: PCMemoryMap.lowRAMEnd(memorySize: memorySize),
                                          reserved: protectedModeReservedRegions)
            return protectedModeImage(chunks: chunks, entry: try physicalEntry(of: file))
        }
    }

    /// One chunk per segment after checking that each lies in memory, avoids `reserved` and
    /// overlaps no other segment.
    static func loadSegments(
        of file: ELFFile, from bytes: [UInt8], memorySize: UInt64,
        reserved: [(name: String, start: UInt64, end: UInt64)]
    ) throws(LoaderError) -> [Chunk] {
        for segment in file.segments {
            let (end, overflow) = segment.physicalAddress.addingReportingOverflow(segment.memorySize)
            guard !overflow, end <= memorySize else {
                throw .outsideMemory(field: "p_paddr/p_memsz", what: "segment \(segment.index)",
                                     start: segment.physicalAddress, size: segment.memorySize, memorySize: memorySize)
            }
            for region in reserved where segment.physicalAddress < region.end && region.start < end {
                throw .overlapsSetUpStructure(field: "p_paddr", what: "segment \(segment.index)",
                                              start: segment.physicalAddress, end: end, structure: region.name,
                                              structureStart: region.start, structureEnd: region.end)
            }
        }
        // Sorted by start, any overlap shows between neighbours.
        let sorted = file.segments.sorted { $0.physicalAddress < $1.physicalAddress }
        for (first, second) in zip(sorted, sorted.dropFirst())
        where second.physicalAddress < first.physicalAddress + first.memorySize {
            throw .segmentsOverlap(first: first.index, second: second.index, start: second.physicalAddress,
                                   end: min(first.physicalAddress + first.memorySize,
                                            second.physicalAddress + second.memorySize))
        }
        return file.segments.map { segment in
            // Both sizes were checked: the file range against the file, p_memsz against memory.
            // The .bss stays a count: a 100-byte file may ask for gigabytes of zeros.
            let start = Int(segment.offset), count = Int(segment.fileSize)
            return Chunk(address: GuestPhysicalAddress(segment.physicalAddress), bytes: Array(bytes[start..<start + count]),
                         zeroFill: segment.memorySize - segment.fileSize, name: "segment \(segment.index)")
        }
    }

    /// e_entry as a guest-physical address (see `elf(_:memorySize:)`).
    static func physicalEntry(of file: ELFFile) throws(LoaderError) -> UInt64 {
        for segment in file.segments
        where file.entry >= segment.virtualAddress && file.entry - segment.virtualAddress < segment.memorySize {
            return segment.physicalAddress + (file.entry - segment.virtualAddress)
        }
        for segment in file.segments
        where file.entry >= segment.physicalAddress && file.entry - segment.physicalAddress < segment.memorySize {
            return file.entry
        }
        throw .entryOutsideLoadedMemory(field: "e_entry", entry: file.entry)
    }
}
