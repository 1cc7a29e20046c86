// A bounds-checked reader of ELF executables: the file header and the program headers, which is
// all a loader needs (System V gABI, "ELF Header" and "Program Header"; x86-64 psABI 4.1).
// Every offset and size is checked against the file before it is read.

/// One PT_LOAD program header.
public struct ELFSegment: Sendable, Equatable {
    /// Index in the program header table (what `readelf -l` numbers).
    public var index: Int
    /// p_offset: where the segment's bytes start in the file.
    public var offset: UInt64
    /// p_vaddr: the virtual address the segment is linked at.
    public var virtualAddress: UInt64
    /// p_paddr: the physical address it loads at; HV loads here.
    public var physicalAddress: UInt64
    /// p_filesz: bytes taken from the file.
    public var fileSize: UInt64
    /// p_memsz: bytes in memory; the rest after p_filesz is zero (.bss).
    public var memorySize: UInt64
    /// p_flags: PF_X = 1, PF_W = 2, PF_R = 4.
    public var flags: UInt32
}

/// Where a PT_NOTE segment's notes lie in the file. Its contents are read only when asked for
/// (`ELFFile.notes(in:)`), so a malformed note segment does not stop a loader that ignores notes.
public struct ELFNoteSegment: Sendable, Equatable {
    /// p_offset and p_filesz.
    public var offset: UInt64
    public var size: UInt64
    /// 8 when p_align is 8, else 4: the padding of names and descriptors.
    public var alignment: UInt64
}

/// One note of a PT_NOTE segment (gABI, "Note Section"): an owner name, a type, a descriptor.
public struct ELFNote: Sendable, Equatable {
    /// The owner ("Xen", "GNU", "Linux"), without its NUL.
    public var name: String
    /// n_type, meaningful per owner.
    public var type: UInt32
    /// The descriptor bytes.
    public var descriptor: [UInt8]
}

/// The parts of an ELF executable that a loader uses.
public struct ELFFile: Sendable, Equatable {
    /// EI_CLASS: 32- or 64-bit objects.
    public enum Class: Sendable, Equatable {
        /// ELFCLASS32; HV accepts it with e_machine EM_386 (3).
        case elf32
        /// ELFCLASS64; HV accepts it with e_machine EM_X86_64 (62).
        case elf64
    }

    /// EI_CLASS.
    public var elfClass: Class
    /// e_entry: the virtual address of the first instruction.
    public var entry: UInt64
    /// The PT_LOAD segments with p_memsz > 0, in program header order.
    public var segments: [ELFSegment]
    /// The PT_NOTE segments, in program header order.
    public var noteSegments: [ELFNoteSegment]

    static let ptLoad: UInt32 = 1
    static let ptNote: UInt32 = 4
    static let etExec: UInt16 = 2
    static let em386: UInt16 = 3
    static let emX86_64: UInt16 = 62

    /// Parses `bytes`, checking the identification, type, machine and every program header
    /// against the file. Segment placement (memory, overlaps) is checked by the loaders.
    public init(parsing bytes: [UInt8]) throws(LoaderError) {
        let reader = ByteReader(bytes: bytes)
        try reader.require(field: "e_ident", offset: 0, count: 16)
        guard bytes[0] == 0x7F, bytes[1] == 0x45, bytes[2] == 0x4C, bytes[3] == 0x46 else {
            throw .unsupported(field: "e_ident[EI_MAG0..3]", value: UInt64(reader.u32(0)), expected: "0x464C457F (\"\\x7FELF\")")
        }
        switch bytes[4] {
        case 1: elfClass = .elf32
        case 2: elfClass = .elf64
        default: throw .unsupported(field: "e_ident[EI_CLASS]", value: UInt64(bytes[4]), expected: "1 (ELFCLASS32) or 2 (ELFCLASS64)")
        }
        guard bytes[5] == 1 else {
            throw .unsupported(field: "e_ident[EI_DATA]", value: UInt64(bytes[5]), expected: "1 (ELFDATA2LSB, little-endian)")
        }
        guard bytes[6] == 1 else {
            throw .unsupported(field: "e_ident[EI_VERSION]", value: UInt64(bytes[6]), expected: "1 (EV_CURRENT)")
        }
        let is64 = elfClass == .elf64
        try reader.require(field: "ELF header", offset: 0, count: is64 ? 64 : 52)
        let type = reader.u16(16), machine = reader.u16(18)
        guard type == Self.etExec else {
            throw .unsupported(field: "e_type", value: UInt64(type), expected: "2 (ET_EXEC)")
        }
        let wantedMachine = is64 ? Self.emX86_64 : Self.em386
        guard machine == wantedMachine else {
            throw .unsupported(field: "e_machine", value: UInt64(machine),
                               expected: is64 ? "62 (EM_X86_64) for ELFCLASS64" : "3 (EM_386) for ELFCLASS32")
        }
        entry = is64 ? reader.u64(24) : UInt64(reader.u32(24))
        let tableOffset = is64 ? reader.u64(32) : UInt64(reader.u32(28))
        let entrySize = UInt64(reader.u16(is64 ? 54 : 42))
        let count = UInt64(reader.u16(is64 ? 56 : 44))
        let minimumEntrySize: UInt64 = is64 ? 56 : 32
        guard entrySize >= minimumEntrySize else {
            throw .unsupportedSize(field: "e_phentsize", bytes: entrySize, expected: "at least \(minimumEntrySize) bytes")
        }
        // PN_XNUM (0xFFFF) moves the count into section header 0 (gABI, "Sections"); kernels never need it.
        guard count != 0xFFFF else { throw .unsupported(field: "e_phnum", value: count, expected: "below 0xFFFF (PN_XNUM)") }
        try reader.require(field: "e_phoff/e_phnum", offset: tableOffset, count: count * entrySize)

        var segments: [ELFSegment] = []
        var noteSegments: [ELFNoteSegment] = []
        for index in 0..<Int(count) {
            let base = Int(tableOffset) + index * Int(entrySize)
            if reader.u32(base) == Self.ptNote {
                let align = is64 ? reader.u64(base + 48) : UInt64(reader.u32(base + 28))
                noteSegments.append(ELFNoteSegment(offset: is64 ? reader.u64(base + 8) : UInt64(reader.u32(base + 4)),
                                                   size: is64 ? reader.u64(base + 32) : UInt64(reader.u32(base + 16)),
                                                   alignment: align == 8 ? 8 : 4))
                continue
            }
            guard reader.u32(base) == Self.ptLoad else { continue }
            let segment = is64
                ? ELFSegment(index: index, offset: reader.u64(base + 8), virtualAddress: reader.u64(base + 16),
                             physicalAddress: reader.u64(base + 24), fileSize: reader.u64(base + 32),
                             memorySize: reader.u64(base + 40), flags: reader.u32(base + 4))
                : ELFSegment(index: index, offset: UInt64(reader.u32(base + 4)), virtualAddress: UInt64(reader.u32(base + 8)),
                             physicalAddress: UInt64(reader.u32(base + 12)), fileSize: UInt64(reader.u32(base + 16)),
                             memorySize: UInt64(reader.u32(base + 20)), flags: reader.u32(base + 24))
            guard segment.fileSize <= segment.memorySize else {
                throw .fileSizeExceedsMemorySize(index: index, fileSize: segment.fileSize, memorySize: segment.memorySize)
            }
            let (end, overflow) = segment.offset.addingReportingOverflow(segment.fileSize)
            guard !overflow, end <= UInt64(bytes.count) else {
                throw .segmentBeyondFile(index: index, offset: segment.offset, fileSize: segment.fileSize,
                                         imageSize: UInt64(bytes.count))
            }
            if segment.memorySize > 0 { segments.append(segment) }
        }
        guard !segments.isEmpty else { throw .noLoadableSegments }
        self.segments = segments
        self.noteSegments = noteSegments
    }

    /// At most this many distinct PT_NOTE segments are read: kernels have one or two, and a
    /// file with thousands pointing at the same bytes must not cost thousands of passes.
    public static let noteSegmentLimit = 16

    /// Every note of the PT_NOTE segments of `bytes` (the file this was parsed from), in file
    /// order; segments repeated in the program header table count once. A segment beyond the file,
    /// or a note running past its segment, is an error naming it.
    public func notes(in bytes: [UInt8]) throws(LoaderError) -> [ELFNote] {
        var notes: [ELFNote] = []
        try forEachNote(in: bytes) { name, type, descriptor in
            notes.append(ELFNote(name: String(decoding: name.prefix { $0 != 0 }, as: UTF8.self), type: type,
                                 descriptor: Array(descriptor)))
            return true
        }
        return notes
    }

    /// Calls `body` with each note's name bytes, type and descriptor bytes (slices of `bytes`,
    /// not copies) until it returns false.
    func forEachNote(in bytes: [UInt8],
                     _ body: (ArraySlice<UInt8>, UInt32, ArraySlice<UInt8>) -> Bool) throws(LoaderError) {
        let reader = ByteReader(bytes: bytes)
        var seen: [ELFNoteSegment] = []
        for segment in noteSegments where !seen.contains(segment) {
            guard seen.count < Self.noteSegmentLimit else { return }
            seen.append(segment)
            try reader.require(field: "p_offset/p_filesz of a PT_NOTE", offset: segment.offset, count: segment.size)
            let alignment = segment.alignment
            func padded(_ value: UInt64) -> UInt64 { (value + alignment - 1) & ~(alignment - 1) }
            var cursor: UInt64 = 0
            while segment.size - cursor >= 12 {
                let at = Int(segment.offset + cursor)
                let nameSize = UInt64(reader.u32(at)), descriptorSize = UInt64(reader.u32(at + 4))
                let type = reader.u32(at + 8)
                let length = padded(nameSize) + padded(descriptorSize)  // each at most 2^32 + 7: no overflow
                guard length <= segment.size - cursor - 12 else {
                    throw .truncated(field: "n_namesz/n_descsz of the note at file offset \(hex(segment.offset + cursor))",
                                     offset: segment.offset + cursor + 12, needed: length, fileSize: segment.offset + segment.size)
                }
                let nameStart = at + 12, descriptorStart = nameStart + Int(padded(nameSize))
                guard body(bytes[nameStart..<nameStart + Int(nameSize)], type,
                           bytes[descriptorStart..<descriptorStart + Int(descriptorSize)]) else { return }
                cursor += 12 + length
            }
        }
    }

    /// True when `bytes` starts with the ELF magic "\x7FELF".
    public static func hasMagic(_ bytes: [UInt8]) -> Bool {
        bytes.count >= 4 && bytes[0] == 0x7F && bytes[1] == 0x45 && bytes[2] == 0x4C && bytes[3] == 0x46
    }
}

/// Little-endian reads from a byte array after an explicit range check.
struct ByteReader {
    let bytes: [UInt8]

    /// Throws `.truncated` unless [offset, offset + count) lies inside the file.
    func require(field: String, offset: UInt64, count: UInt64) throws(LoaderError) {
        let size = UInt64(bytes.count)
        guard offset <= size, count <= size - offset else {
            throw .truncated(field: field, offset: offset, needed: count, fileSize: size)
        }
    }

    func u16(_ offset: Int) -> UInt16 { UInt16(bytes[offset]) | UInt16(bytes[offset + 1]) << 8 }
    func u32(_ offset: Int) -> UInt32 { UInt32(u16(offset)) | UInt32(u16(offset + 2)) << 16 }
    func u64(_ offset: Int) -> UInt64 { UInt64(u32(offset)) | UInt64(u32(offset + 4)) << 32 }
}
