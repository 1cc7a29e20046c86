// An assembled program together with where and how it runs.

import HVModel

/// Machine code plus its mode, load address and entry point; `image(memorySize:)` turns it
/// into what a loader writes.
///
/// ```swift
/// let program = try GuestProgram.longMode { asm in
///     asm.printString("hello\n")
///     asm.debugExit(code: 0)
///     asm.hlt()
/// }
/// let image = try program.image(memorySize: 16 << 20)
/// ```
public struct GuestProgram: Sendable, Equatable {
    /// The machine code.
    public var code: [UInt8]
    /// The mode the code is written for.
    public var mode: GuestMode
    /// Guest-physical address of the first byte.
    public var loadAddress: UInt64
    /// Guest-physical address of the first instruction.
    public var entry: UInt64

    /// A program from already assembled bytes.
    public init(code: [UInt8], mode: GuestMode, loadAddress: UInt64, entry: UInt64? = nil) {
        self.code = code
        self.mode = mode
        self.loadAddress = loadAddress
        self.entry = entry ?? loadAddress
    }

    /// Assembles 16-bit code with `build` and runs it in real mode from its first byte. The
    /// assembler's origin is the load address's offset from the CS base that `GuestImage.flat`
    /// will choose (the address itself below 64 KiB), so label addresses are valid DS offsets.
    /// The closure's error type is `AssemblerError`, the one `assemble()` throws.
    public static func realMode(
        loadAddress: UInt64 = GuestImage.realModeLoadAddress,
        _ build: (inout X86Assembler) throws(AssemblerError) -> Void
    ) throws(AssemblerError) -> GuestProgram {
        let origin = UInt64(GuestImage.realModeCodeSegment(entry: loadAddress).offset)
        var assembler = X86Assembler(bits: .bits16, origin: origin)
        try build(&assembler)
        return GuestProgram(code: try assembler.assemble(), mode: .real, loadAddress: loadAddress)
    }

    /// Assembles 64-bit code with `build` (origin = `loadAddress`) and runs it in long mode from
    /// its first byte.
    public static func longMode(
        loadAddress: UInt64 = GuestImage.longModeLoadAddress,
        _ build: (inout X86Assembler) throws(AssemblerError) -> Void
    ) throws(AssemblerError) -> GuestProgram {
        var assembler = X86Assembler(bits: .bits64, origin: loadAddress)
        try build(&assembler)
        return GuestProgram(code: try assembler.assemble(), mode: .long, loadAddress: loadAddress)
    }

    /// The memory contents and initial vCPU state for a VM with `memorySize` bytes of RAM.
    public func image(memorySize: UInt64) throws(GuestImageError) -> GuestImage {
        try GuestImage.flat(code, mode: mode, loadAddress: loadAddress, entry: entry, memorySize: memorySize)
    }
}
