// A guest that counts: the one snapshot and migration tests and benchmarks watch
// (Documentation/Snapshots.md). Its count lives in RAM, so a restore that lost memory, a vCPU's
// registers or the UART would show as a gap, a repeat or a garbled line.

extension GuestProgram {
    /// Long-mode code that keeps a counter in RAM at `counterAddress`, adds one, prints it on
    /// COM1 as 16 hexadecimal digits and a newline, spins `delay` iterations, and repeats.
    ///
    /// With `dirtyPages` n > 0 it also writes the count into the first word of each of n pages
    /// from `dirtyAddress` every time round, after checking that each still holds the previous
    /// count: memory that a migration or restore brought back stale shows as a line "stale"
    /// instead of a count (a live migration's pre-copy has n pages to send again each round).
    public static func counter(counterAddress: UInt64 = 0x30_0000, delay: Int32 = 20_000,
                               dirtyPages: Int32 = 0, dirtyAddress: UInt64 = 0x40_0000) throws(AssemblerError) -> GuestProgram {
        try longMode { a throws(AssemblerError) in
            let again = a.label(), digit = a.label(), print = a.label(), spin = a.label(), page = a.label(), stale = a.label(), counted = a.label()
            a.mov(Register16.dx, 0x3F8)
            a.bind(again)
            a.mov(Register64.rcx, Memory.absolute(counterAddress))
            a.inc(Register64.rcx)
            a.mov(Memory.absolute(counterAddress), Register64.rcx)
            if dirtyPages > 0 {
                a.mov(Register64.r9, Register64.rcx)
                a.dec(Register64.r9)                      // what every page holds from last time
                a.mov(Register64.rdi, Immediate(dirtyAddress))
                a.mov(Register32.r10d, Immediate(dirtyPages))
                a.bind(page)
                a.mov(Register64.rax, .at(Register64.rdi))
                a.cmp(Register64.rax, Register64.r9)
                a.jne(stale)
                a.mov(.at(Register64.rdi), Register64.rcx)
                a.add(Register64.rdi, 4096)
                a.dec(Register32.r10d)
                a.jnz(page)
                a.jmp(counted)
                a.bind(stale)
                a.printString("stale\n")
                a.hlt()
                a.bind(counted)
            }
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
