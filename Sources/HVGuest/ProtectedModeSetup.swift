// Entering 32-bit protected mode directly from the monitor, paging off: flat 4 GiB code and data
// segments (SDM Vol. 3A, 3.2.1 "basic flat model" and 9.9.1 "switching to protected mode"), the
// machine state Multiboot 0.6.96, 3.2 requires of a boot loader.

import HVModel

extension GuestImage {
    /// ESP for a 32-bit program (Multiboot leaves ESP undefined, 3.2; HV gives a usable one).
    public static let protectedModeStackTop: UInt64 = 0x8_0000

    /// The 32-bit code segment: type 0xB execute/read accessed, D = 1, base 0, limit 4 GiB.
    static var protectedModeCodeSegment: Segment {
        Segment(base: 0, limit: 0xFFFF_FFFF, selector: codeSelector, type: 0xB, defaultSize32: true, granularity: true)
    }

    /// The regions a protected-mode program must not overlap: the GDT and the stack.
    static var protectedModeReservedRegions: [(name: String, start: UInt64, end: UInt64)] {
        [("gdt", gdtAddress, gdtAddress + 3 * 8),
         ("stack", protectedModeStackTop - longModeStackSize, protectedModeStackTop)]
    }

    /// An image whose vCPU starts at `entry` in 32-bit protected mode: CR0 = PE | ET (paging
    /// off), CS = 0x08 and DS/ES/FS/GS/SS = 0x10 flat (base 0, limit 0xFFFF_FFFF, the
    /// descriptors also written to a GDT at 0x500), EFLAGS = 0x2 (IF and VM clear),
    /// ESP = 0x80000. `chunks` come first in the result, the GDT after them.
    static func protectedModeImage(chunks: [Chunk], entry: UInt64) -> GuestImage {
        // longModeDataSegment is already the flat 32-bit read/write data segment.
        var (gdt, special) = flatSegments(code: protectedModeCodeSegment, data: longModeDataSegment)
        special.cr0 = ControlBits.cr0PE | ControlBits.cr0ET
        special.apicBase = resetAPICBase

        var registers = Registers()
        registers.rip = entry
        registers.rsp = protectedModeStackTop
        registers.rflags = 0x2
        return GuestImage(chunks: chunks + [Chunk(address: GuestPhysicalAddress(gdtAddress), bytes: gdt, name: "gdt")],
                          registers: registers, specialRegisters: special, mode: .protected)
    }
}
