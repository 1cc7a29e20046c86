// Port I/O, string instructions and the one-opcode system instructions (SDM Vol. 2, IN, OUT,
// INS, OUTS, LODS, STOS, MOVS, REP, and Vol. 1, 19.4 "I/O instructions").

extension X86Assembler {
    /// `in al/ax/eax, port` (E4/E5 ib).
    public mutating func `in`<W>(_ destination: Register<W>, _ port: UInt8) {
        portIO("in", opcode: 0xE4, destination.gpr, port: port)
    }

    /// `in al/ax/eax, dx` (EC/ED). `port` must be `.dx`.
    public mutating func `in`<W>(_ destination: Register<W>, _ port: Register<Bits16>) {
        portIO("in", opcode: 0xEC, destination.gpr, portRegister: port.gpr)
    }

    /// `out port, al/ax/eax` (E6/E7 ib).
    public mutating func out<W>(_ port: UInt8, _ source: Register<W>) {
        portIO("out", opcode: 0xE6, source.gpr, port: port)
    }

    /// `out dx, al/ax/eax` (EE/EF). `port` must be `.dx`.
    public mutating func out<W>(_ port: Register<Bits16>, _ source: Register<W>) {
        portIO("out", opcode: 0xEE, source.gpr, portRegister: port.gpr)
    }

    /// One string instruction, e.g. `string(.outsb)`; `insb()` and friends are shorthands.
    public mutating func string(_ operation: StringOperation) { stringOperation(operation, rep: false) }

    /// `rep` + a string instruction: repeat (r/e)cx times, e.g. `rep(.movsb)`.
    public mutating func rep(_ operation: StringOperation) { stringOperation(operation, rep: true) }

    /// `insb`: byte from port dx to [(r/e)di].
    public mutating func insb() { string(.insb) }
    /// `insw`: word from port dx to [(r/e)di].
    public mutating func insw() { string(.insw) }
    /// `insd`: dword from port dx to [(r/e)di].
    public mutating func insd() { string(.insd) }
    /// `outsb`: byte from [(r/e)si] to port dx.
    public mutating func outsb() { string(.outsb) }
    /// `outsw`: word from [(r/e)si] to port dx.
    public mutating func outsw() { string(.outsw) }
    /// `outsd`: dword from [(r/e)si] to port dx.
    public mutating func outsd() { string(.outsd) }
    /// `lodsb`: al = [(r/e)si], advance si.
    public mutating func lodsb() { string(.lodsb) }
    /// `stosb`: [(r/e)di] = al, advance di.
    public mutating func stosb() { string(.stosb) }
    /// `movsb`: [(r/e)di] = [(r/e)si], advance both.
    public mutating func movsb() { string(.movsb) }

    /// `cld`: string instructions count up.
    public mutating func cld() { emitBytes([0xFC], mnemonic: "cld") }
    /// `std`: string instructions count down.
    public mutating func std() { emitBytes([0xFD], mnemonic: "std") }
    /// `clc`: clear the carry flag.
    public mutating func clc() { emitBytes([0xF8], mnemonic: "clc") }
    /// `stc`: set the carry flag.
    public mutating func stc() { emitBytes([0xF9], mnemonic: "stc") }
    /// `hlt`: stop until an interrupt; under KVM a `hlt` exit when no in-kernel irqchip runs.
    public mutating func hlt() { emitBytes([0xF4], mnemonic: "hlt") }
    /// `nop` (90).
    public mutating func nop() { emitBytes([0x90], mnemonic: "nop") }
    /// `cli`: mask maskable interrupts.
    public mutating func cli() { emitBytes([0xFA], mnemonic: "cli") }
    /// `sti`: unmask maskable interrupts.
    public mutating func sti() { emitBytes([0xFB], mnemonic: "sti") }
    /// `cpuid` (0F A2): leaf in eax (and ecx), results in eax, ebx, ecx, edx.
    public mutating func cpuid() { emitBytes([0x0F, 0xA2], mnemonic: "cpuid") }
    /// `rdmsr` (0F 32): edx:eax = MSR[ecx].
    public mutating func rdmsr() { emitBytes([0x0F, 0x32], mnemonic: "rdmsr") }
    /// `wrmsr` (0F 30): MSR[ecx] = edx:eax.
    public mutating func wrmsr() { emitBytes([0x0F, 0x30], mnemonic: "wrmsr") }
    /// `rdtsc` (0F 31): edx:eax = time-stamp counter.
    public mutating func rdtsc() { emitBytes([0x0F, 0x31], mnemonic: "rdtsc") }
    /// `rdtscp` (0F 01 F9): edx:eax = time-stamp counter, ecx = IA32_TSC_AUX.
    public mutating func rdtscp() { emitBytes([0x0F, 0x01, 0xF9], mnemonic: "rdtscp") }
    /// `lfence` (0F AE E8).
    public mutating func lfence() { emitBytes([0x0F, 0xAE, 0xE8], mnemonic: "lfence") }
    /// `mfence` (0F AE F0).
    public mutating func mfence() { emitBytes([0x0F, 0xAE, 0xF0], mnemonic: "mfence") }
    /// `sfence` (0F AE F8).
    public mutating func sfence() { emitBytes([0x0F, 0xAE, 0xF8], mnemonic: "sfence") }
    /// `pause` (F3 90): spin-loop hint.
    public mutating func pause() { emitBytes([0xF3, 0x90], mnemonic: "pause") }
    /// `ud2` (0F 0B): guaranteed invalid opcode (#UD).
    public mutating func ud2() { emitBytes([0x0F, 0x0B], mnemonic: "ud2") }
    /// `int3` (CC): breakpoint (#BP).
    public mutating func int3() { emitBytes([0xCC], mnemonic: "int3") }
    /// `int vector` (CD ib).
    public mutating func int(_ vector: UInt8) { emitBytes([0xCD, vector], mnemonic: "int") }

    private mutating func portIO(_ mnemonic: String, opcode: UInt8, _ data: GPR, port: UInt8? = nil,
                                 portRegister: GPR? = nil)
    {
        guard data.isAccumulator, !data.isHighByte, data.size != .qword else {
            return fail(.invalidOperands(instruction: mnemonic, reason: "the data register must be al, ax or eax, not \(data.name)"))
        }
        if let portRegister, portRegister.number != 2 {
            return fail(.invalidOperands(instruction: mnemonic, reason: "the port register must be dx, not \(portRegister.name)"))
        }
        let wide: UInt8 = data.size == .byte ? 0 : 1
        emit(mnemonic, size: data.size, opcode: [opcode | wide],
             immediate: port.map { Field(size: 1, value: Int64($0)) })
    }

    private mutating func stringOperation(_ operation: StringOperation, rep: Bool) {
        let (opcode, size) = operation.encoding
        let mnemonic = "\(operation)"
        emit(rep ? "rep " + mnemonic : mnemonic, size: size, prefix: rep ? 0xF3 : nil, opcode: [opcode])
    }
}

// Descriptor tables and interrupt returns, for guests that install their own IDT
// (SDM Vol. 2A "LGDT/LIDT", Vol. 2A "IRET/IRETD/IRETQ").
extension X86Assembler {
    /// `lidt [memory]`: loads IDTR from a 2-byte limit and a base (4 bytes in 16/32-bit code,
    /// 8 bytes in 64-bit code). 0F 01 /3.
    public mutating func lidt(_ memory: Memory) {
        emit("lidt", size: nil, opcode: [0x0F, 0x01], reg: .digit(3), rm: .memory(memory))
    }

    /// `lgdt [memory]`: loads GDTR the same way. 0F 01 /2.
    public mutating func lgdt(_ memory: Memory) {
        emit("lgdt", size: nil, opcode: [0x0F, 0x01], reg: .digit(2), rm: .memory(memory))
    }

    /// Returns from an interrupt handler with the code size's default operand size:
    /// `iretq` (REX.W CF) in 64-bit code, `iret` (CF) otherwise.
    public mutating func iret() {
        emitBytes(codeSize == .bits64 ? [0x48, 0xCF] : [0xCF], mnemonic: "iret")
    }
}
