// A guest that counts: the one snapshot and migration tests and benchmarks watch
// (Documentation/Snapshots.md). Its count lives in RAM, so a restore that lost memory, a vCPU's
// registers or the UART would show as a gap, a repeat or a garbled line.

extension GuestProgram {
    /// Long-mode code that keeps a counter in RAM at `counterAddress`, adds one, prints it on
    /// COM1 as 16 hexadecimal digits and a newline, spins `delay` iterations, and repeats.
    public static func counter(counterAddress: UInt64 = 0x30_0000, delay: Int32 = 20_000) throws(AssemblerError) -> GuestProgram {
        try longMode { a throws(AssemblerError) in
            let again = a.label(), digit = a.label(), print = a.label(), spin = a.label()
            a.mov(Register16.dx, 0x3F8)
            a.bind(again)
            a.mov(Register64.rcx, Memory.absolute(counterAddress))
            a.inc(Register64.rcx)
            a.mov(Memory.absolute(counterAddress), Register64.rcx)
            a.mov(Register64.rbx, Register64.rcx)
            a.mov(Register32.esi, 16)
            a.bind(digit)
            a.mov(Register64.rax, Register64.rbx)
            a.shr(Register64.rax, 60)
            a.add(Register8.al, 0x30)    // '0'...'9'
            a.cmp(Register8.al, 0x3A)
            a.jb(print)
            a.add(Register8.al, 0x27)    // past '9': 'a'...'f'
            a.bind(print)
            a.out(Register16.dx, Register8.al)
            a.shl(Register64.rbx, 4)
            a.dec(Register32.esi)
            a.jnz(digit)
            a.mov(Register8.al, 0x0A)
            a.out(Register16.dx, Register8.al)
            a.mov(Register32.r8d, Immediate(delay))
            a.bind(spin)
            a.dec(Register32.r8d)
            a.jnz(spin)
            a.jmp(again)
        }
    }
}
