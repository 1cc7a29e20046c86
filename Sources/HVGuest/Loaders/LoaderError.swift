// Why a kernel file cannot become a bootable image. Every case names the header field (ELF:
// System V ABI gABI ch. 4-5; Multiboot 0.6.96, 3.1-3.3) whose value is wrong, so a user can find
// it with `readelf -lh` or a hex dump.

/// A rejected ELF or Multiboot image; `description` starts with the offending field.
public enum LoaderError: Error, Equatable, Sendable, CustomStringConvertible {
    /// `needed` bytes at `offset` for `field` run past the end of the `fileSize`-byte file.
    case truncated(field: String, offset: UInt64, needed: UInt64, fileSize: UInt64)
    /// `field` holds `value`; the loader accepts only `expected`.
    case unsupported(field: String, value: UInt64, expected: String)
    /// The size `field` gives or implies, `bytes`, is outside what the loader accepts (`expected`).
    case unsupportedSize(field: String, bytes: UInt64, expected: String)
    /// The file has no PT_LOAD segment with a non-zero p_memsz (gABI, "Program Header").
    case noLoadableSegments
    /// Program header `index`: p_offset + p_filesz is beyond the file.
    case segmentBeyondFile(index: Int, offset: UInt64, fileSize: UInt64, imageSize: UInt64)
    /// Program header `index`: p_filesz > p_memsz (the gABI requires p_filesz <= p_memsz).
    case fileSizeExceedsMemorySize(index: Int, fileSize: UInt64, memorySize: UInt64)
    /// `what` ([start, start + size)) does not fit in guest RAM of `memorySize` bytes (or wraps
    /// the 64-bit address space); `field` names the value to change.
    case outsideMemory(field: String, what: String, start: UInt64, size: UInt64, memorySize: UInt64)
    /// Two program headers load into overlapping guest-physical ranges.
    case segmentsOverlap(first: Int, second: Int, start: UInt64, end: UInt64)
    /// `what` would overwrite, or be overwritten by, a structure the loader writes itself.
    case overlapsSetUpStructure(field: String, what: String, start: UInt64, end: UInt64,
                                structure: String, structureStart: UInt64, structureEnd: UInt64)
    /// The entry point `field` = `entry` is not inside any loaded byte range.
    case entryOutsideLoadedMemory(field: String, entry: UInt64)
    /// No Multiboot header (magic 0x1BADB002) in the first 8 KiB, 4-byte aligned (3.1.1).
    case multibootHeaderNotFound(searched: Int)
    /// No Multiboot2 header (magic 0xE85250D6) in the first 32 KiB, 8-byte aligned (Multiboot2 3.1.1).
    case multiboot2HeaderNotFound(searched: Int)
    /// magic + flags + checksum is not 0 mod 2^32 (Multiboot 3.1.2).
    case multibootBadChecksum(offset: UInt64, flags: UInt32, checksum: UInt32)
    /// A Multiboot a.out-kludge address field (3.1.3) contradicts another or the file.
    case multibootBadAddress(field: String, value: UInt32, reason: String)
    /// No free range of guest RAM below the 3 GiB hole (which ends at `ramBelowHole`) holds the
    /// `size` bytes of `structure` (the Multiboot information, a zero page, a command line...).
    case noRoomForBootStructure(structure: String, size: UInt64, ramBelowHole: UInt64)
    /// The CPU-mode set-up refused the memory size (see `GuestImageError`).
    case setUp(GuestImageError)

    public var description: String {
        switch self {
        case .truncated(let field, let offset, let needed, let fileSize):
            "\(field): \(byteCount(needed)) at offset \(hex(offset)) run past the end of the file (\(byteCount(fileSize))); the file is truncated"
        case .unsupported(let field, let value, let expected):
            // Below 10 both radixes agree: "e_type: 1 ... expected 2 (ET_EXEC)", not "0x1 ... 2".
            "\(field): \(value < 10 ? "\(value)" : hex(value)) is not supported; expected \(expected)"
        case .unsupportedSize(let field, let bytes, let expected):
            "\(field): \(byteCount(bytes)) is not supported; expected \(expected)"
        case .noLoadableSegments:
            "e_phnum: the file has no PT_LOAD segment with p_memsz > 0; nothing to load"
        case .segmentBeyondFile(let index, let offset, let fileSize, let imageSize):
            "p_offset/p_filesz: segment \(index) [\(hex(offset)), +\(hex(fileSize)) (\(byteCount(fileSize)))) lies beyond the end of the file (\(byteCount(imageSize)))"
        case .fileSizeExceedsMemorySize(let index, let fileSize, let memorySize):
            "p_filesz: segment \(index) has p_filesz \(hex(fileSize)) (\(byteCount(fileSize))) > p_memsz \(hex(memorySize)) (\(byteCount(memorySize)))"
        case .outsideMemory(let field, let what, let start, let size, let memorySize):
            start.addingReportingOverflow(size).overflow
                ? "\(field): \(what) of \(byteCount(size)) at \(hex(start)) would end past the end of the 64-bit address space"
                : "\(field): \(what) of \(byteCount(size)) at \(hex(start)) does not fit in guest memory (\(byteCount(memorySize)))"
        case .segmentsOverlap(let first, let second, let start, let end):
            "p_paddr/p_memsz: segments \(first) and \(second) overlap in [\(hex(start)), \(hex(end)))"
        case .overlapsSetUpStructure(let field, let what, let start, let end, let structure, let sStart, let sEnd):
            "\(field): \(what) [\(hex(start)), \(hex(end))) overlaps the \(structure) HV writes at [\(hex(sStart)), \(hex(sEnd)))"
        case .entryOutsideLoadedMemory(let field, let entry):
            "\(field): entry point \(hex(entry)) is outside every loaded segment"
        case .multibootHeaderNotFound(let searched):
            "magic: no Multiboot header (0x1BADB002, 4-byte aligned) in the first \(searched) bytes (Multiboot 0.6.96, 3.1.1)"
        case .multiboot2HeaderNotFound(let searched):
            "magic: no Multiboot2 header (0xE85250D6, 8-byte aligned) in the first \(searched) bytes (Multiboot2 3.1.1)"
        case .multibootBadChecksum(let offset, let flags, let checksum):
            "checksum: Multiboot header at offset \(hex(offset)) has flags \(hex(UInt64(flags))) and checksum \(hex(UInt64(checksum))); magic + flags + checksum must be 0 mod 2^32 (3.1.2)"
        case .multibootBadAddress(let field, let value, let reason):
            "\(field): \(hex(UInt64(value))) \(reason) (Multiboot 0.6.96, 3.1.3)"
        case .noRoomForBootStructure(let structure, let size, let ramBelowHole):
            "\(structure): no free \(byteCount(size)) for it in guest RAM below \(hex(ramBelowHole)); the kernel, its modules and HV's set-up take the rest (more memory or a shorter command line makes room)"
        case .setUp(let error):
            error.description
        }
    }
}
