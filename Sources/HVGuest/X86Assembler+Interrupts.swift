// Instruction sequences for long-mode guests that take interrupts: an IDT of 64-bit interrupt
// gates built at run time by the guest itself (its handlers' addresses are labels), and IDTR.

extension X86Assembler {
    /// Writes a 64-bit interrupt gate for `vector` at `table + 16 * vector`, pointing at
    /// `handler` with code selector 0x08 (HV's long-mode GDT), DPL 0, no IST
    /// (SDM Vol. 3A, 6.14.1, Figure 6-8). 64-bit code only. Clobbers rax and rbx.
    public mutating func installInterruptGate(vector: UInt8, handler: Label, table: UInt64) {
        mov(Register64.rbx, Immediate(table + UInt64(vector) * 16))
        mov(Register64.rax, handler)
        mov(.at(Register64.rbx), Register16.ax)                // offset 15:0
        mov(.word, .at(Register64.rbx, 2), Immediate(GuestImage.codeSelector))
        mov(.word, .at(Register64.rbx, 4), 0x8E00)              // present, DPL 0, type 0xE
        shr(Register64.rax, 16)
        mov(.at(Register64.rbx, 6), Register16.ax)             // offset 31:16
        shr(Register64.rax, 16)
        mov(.at(Register64.rbx, 8), Register32.eax)            // offset 63:32
        mov(.dword, .at(Register64.rbx, 12), 0)
    }

    /// Loads IDTR with a 256-gate table at `table`, writing the 10-byte descriptor at
    /// `descriptor` first (SDM Vol. 3A, 6.10). 64-bit code only. Clobbers rbx.
    public mutating func loadInterruptTable(_ table: UInt64, descriptor: UInt64) {
        mov(Register64.rbx, Immediate(descriptor))
        mov(.word, .at(Register64.rbx), 0xFFF)
        mov(.qword, .at(Register64.rbx, 2), Immediate(table))
        lidt(.at(Register64.rbx))
    }
}
