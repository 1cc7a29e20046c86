// Why a flat program cannot become a bootable image. Each case names the offending field.

/// A `GuestImage.flat(...)` argument that cannot work; the description names the field.
public enum GuestImageError: Error, Equatable, Sendable, CustomStringConvertible {
    /// The program has no bytes.
    case emptyProgram
    /// `loadAddress + size` is beyond `memorySize` (or beyond the 64-bit address space).
    case programOutsideMemory(loadAddress: UInt64, size: UInt64, memorySize: UInt64)
    /// `entry` is not inside `[loadAddress, loadAddress + size)`.
    case entryOutsideProgram(entry: UInt64, loadAddress: UInt64, programEnd: UInt64)
    /// Real mode addresses only the first MiB (SDM Vol. 3A, 20.1.1).
    case realModeProgramAbove1MiB(loadAddress: UInt64, programEnd: UInt64)
    /// Long mode needs room for its page tables, GDT and stack.
    case memoryTooSmallForLongMode(memorySize: UInt64, minimum: UInt64)
    /// The identity map covers at most `maximum` bytes of memory.
    case memoryTooLargeForIdentityMap(memorySize: UInt64, maximum: UInt64)
    /// The program would overwrite, or be overwritten by, a structure the set-up writes.
    case programOverlapsSetUpStructure(structure: String, structureStart: UInt64, structureEnd: UInt64,
                                       loadAddress: UInt64, programEnd: UInt64)

    public var description: String {
        switch self {
        case .emptyProgram:
            "program: the program is empty"
        case .programOutsideMemory(let loadAddress, let size, let memorySize):
            loadAddress.addingReportingOverflow(size).overflow
                ? "loadAddress: a program of \(byteCount(size)) at \(hex(loadAddress)) would end past the end of the 64-bit address space"
                : "loadAddress: a program of \(byteCount(size)) at \(hex(loadAddress)) ends at \(hex(loadAddress &+ size)), "
                    + "past the end of guest memory (memorySize \(byteCount(memorySize)))"
        case .entryOutsideProgram(let entry, let loadAddress, let programEnd):
            "entry: \(hex(entry)) is outside the program [\(hex(loadAddress)), \(hex(programEnd)))"
        case .realModeProgramAbove1MiB(let loadAddress, let programEnd):
            "loadAddress: real-mode program [\(hex(loadAddress)), \(hex(programEnd))) must end at or below 1 MiB (0x100000)"
        case .memoryTooSmallForLongMode(let memorySize, let minimum):
            "memorySize: \(byteCount(memorySize)) is too small for long mode; the page tables, GDT and stack need \(byteCount(minimum))"
        case .memoryTooLargeForIdentityMap(let memorySize, let maximum):
            "memorySize: \(byteCount(memorySize)) exceeds the \(byteCount(maximum)) that the long-mode identity map covers"
        case .programOverlapsSetUpStructure(let structure, let start, let end, let loadAddress, let programEnd):
            "loadAddress: program [\(hex(loadAddress)), \(hex(programEnd))) overlaps the \(structure) "
                + "at [\(hex(start)), \(hex(end)))"
        }
    }
}

/// "0x7C00": addresses in messages.
func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16, uppercase: true) }

/// "4096 bytes", "1 byte": sizes in messages (Documentation/Architecture.md, Conventions: numbers).
func byteCount(_ count: UInt64) -> String { count == 1 ? "1 byte" : "\(count) bytes" }
