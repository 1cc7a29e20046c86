// The register state of a flat real-mode program: segment bases are selector << 4 with
// 64 KiB limits (SDM Vol. 3A, 20.1.1), as after RESET but with CS:IP at the program.

import HVModel

extension GuestImage {
    /// The CS selector and IP that `flat(...)` uses to reach a real-mode `entry`: CS = 0 below
    /// 64 KiB (so offsets equal linear addresses), otherwise CS = entry >> 4 and IP = entry & 0xF
    /// (SDM Vol. 3A, 20.1.1: linear = selector * 16 + offset). Meaningful below 1 MiB.
    public static func realModeCodeSegment(entry: UInt64) -> (selector: UInt16, offset: UInt16) {
        if entry <= 0xFFFF { return (0, UInt16(entry)) }
        return (UInt16(truncatingIfNeeded: entry >> 4), UInt16(entry & 0xF))
    }

    /// A real-mode segment register: base = selector * 16, limit 0xFFFF, present, S = 1
    /// (type 0xB execute/read accessed for code, 0x3 read/write accessed for data).
    static func realModeSegment(selector: UInt16, code: Bool) -> Segment {
        Segment(base: UInt64(selector) << 4, limit: 0xFFFF, selector: selector, type: code ? 0xB : 0x3)
    }

    /// TR and LDTR as after RESET (SDM Vol. 3A, Table 10-1): present, busy TSS type 0xB and
    /// LDT type 0x2. VM entry checks them even in real mode (SDM Vol. 3C, 27.3.1.2).
    static func resetSystemSegments(_ special: inout SpecialRegisters) {
        special.tr = Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0xB, codeOrData: false)
        special.ldt = Segment(base: 0, limit: 0xFFFF, selector: 0, type: 0x2, codeOrData: false)
    }

    /// IA32_APIC_BASE after RESET for the bootstrap processor: base 0xFEE0_0000, BSP (bit 8)
    /// and global enable (bit 11) (SDM Vol. 3A, 11.4.4).
    static let resetAPICBase: UInt64 = 0xFEE0_0000 | 1 << 11 | 1 << 8

    static func realModeImage(program: Chunk, entry: UInt64) -> GuestImage {
        let (selector, offset) = realModeCodeSegment(entry: entry)
        let (registers, special) = realModeState(codeSegment: selector, instructionPointer: offset)
        return GuestImage(chunks: [program], registers: registers, specialRegisters: special, mode: .real)
    }

    /// A vCPU in real mode at `codeSegment`:`instructionPointer`: DS, ES, FS and GS =
    /// `dataSegment` (nil: equal to CS), SS = 0 with SP = 0x7000, the IVT at 0, CR0 = ET
    /// (protection and paging off), EFLAGS = 0x2, IA32_APIC_BASE as after RESET. ACPI's waking
    /// vector uses it (ACPI 6.4, 5.2.10: "CS:IP = waking vector >> 4 : waking vector & 0xF"; the
    /// data segments 0, as SeaBIOS's S3 resume leaves them).
    public static func realModeState(codeSegment selector: UInt16, instructionPointer: UInt16,
                                     dataSegment: UInt16? = nil) -> (Registers, SpecialRegisters) {
        var special = SpecialRegisters()
        special.cs = realModeSegment(selector: selector, code: true)
        let data = realModeSegment(selector: dataSegment ?? selector, code: false)
        special.ds = data
        special.es = data
        special.fs = data
        special.gs = data
        special.ss = realModeSegment(selector: 0, code: false)
        resetSystemSegments(&special)
        // The real-mode interrupt vector table: 256 four-byte vectors at 0 (SDM Vol. 3A, 20.1.4).
        special.idt = DescriptorTable(base: 0, limit: 0x3FF)
        special.gdt = DescriptorTable(base: 0, limit: 0xFFFF)
        // ET only: protection and paging off; CD/NW clear so memory is cacheable.
        special.cr0 = ControlBits.cr0ET
        special.apicBase = resetAPICBase

        var registers = Registers()
        registers.rip = UInt64(instructionPointer)
        registers.rsp = realModeStackPointer
        registers.rflags = 0x2
        return (registers, special)
    }
}
