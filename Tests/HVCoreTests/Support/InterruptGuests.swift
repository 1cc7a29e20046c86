import HVCore

/// Guest-building helpers for interrupt tests (long mode, HV's identity map).
enum InterruptGuest {
    /// Where the tests put the IDT (256 gates of 16 bytes) and its descriptor.
    static let idtBase: UInt64 = 0x9000
    static let idtDescriptor: UInt64 = 0xA100
    /// Counters and flags the handlers update.
    static let counter: UInt64 = 0xA000
    static let flag: UInt64 = 0xA008
    /// xAPIC registers (SDM Vol. 3A, Table 11-1).
    static let lapic: UInt64 = 0xFEE0_0000
    static let eoiRegister: UInt64 = 0xFEE0_00B0
}

extension X86Assembler {
    /// A gate in the tests' IDT at `InterruptGuest.idtBase`. Clobbers rax, rbx.
    mutating func installGate(vector: UInt8, handler: Label) {
        installInterruptGate(vector: vector, handler: handler, table: InterruptGuest.idtBase)
    }

    /// Loads IDTR with the tests' table. Clobbers rbx.
    mutating func loadIDT() {
        loadInterruptTable(InterruptGuest.idtBase, descriptor: InterruptGuest.idtDescriptor)
    }

    /// `mov dword [address], value` for an MMIO register. Clobbers rbx.
    mutating func writeRegister(_ address: UInt64, _ value: UInt32) {
        mov(Register64.rbx, Immediate(address))
        mov(.dword, .at(Register64.rbx), Immediate(value))
    }

    /// Masks both 8259 PICs, so only the APICs deliver (Documentation/HostFacts.md: PIC masks at 0x21/0xA1).
    mutating func maskPICs() {
        mov(Register8.al, 0xFF)
        out(0x21, Register8.al)
        out(0xA1, Register8.al)
    }

    /// Software-enables the local APIC with spurious vector 0xFF (SVR, SDM Vol. 3A, 11.9).
    mutating func enableLocalAPIC() {
        writeRegister(InterruptGuest.lapic + 0xF0, 0x1FF)
    }

    /// Spins in `hlt` until the qword at `address` reaches `target`. Interrupts must be enabled.
    mutating func waitUntil(_ address: UInt64, reaches target: Int32) {
        let again = label(), done = label()
        bind(again)
        mov(Register64.rbx, Immediate(address))
        mov(Register64.rcx, .at(Register64.rbx))
        cmp(Register64.rcx, Immediate(target))
        jge(done)
        hlt()
        jmp(again)
        bind(done)
    }
}
