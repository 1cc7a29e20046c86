// Data movement: mov, lea, push, pop (SDM Vol. 2B, MOV, LEA, PUSH, POP).

extension X86Assembler {
    /// `mov destination, source` between registers of one width (88/89 /r, the form GNU `as` picks).
    public mutating func mov<W>(_ destination: Register<W>, _ source: Register<W>) {
        emit("mov", size: W.size, opcode: [W.size == .byte ? 0x88 : 0x89],
             reg: .register(source.gpr), rm: .register(destination.gpr))
    }

    /// `mov register, immediate`: B0+r/B8+r. A 64-bit register takes the sign-extended C7 /0 id
    /// form when the value fits 32 signed bits and the full imm64 (`movabs`) otherwise.
    public mutating func mov<W>(_ destination: Register<W>, _ value: Immediate) {
        let register = destination.gpr
        guard let value = checkedImmediate(value, bits: W.size.bits, "mov") else { return }
        switch W.size {
        case .byte:
            emit("mov", size: .byte, opcode: [0xB0], opcodeRegister: register, immediate: Field(size: 1, value: value))
        case .word, .dword:
            emit("mov", size: W.size, opcode: [0xB8], opcodeRegister: register,
                 immediate: Field(size: W.size.rawValue, value: value))
        case .qword:
            if (Int64(Int32.min)...Int64(Int32.max)).contains(value) {
                emit("mov", size: .qword, opcode: [0xC7], reg: .digit(0), rm: .register(register),
                     immediate: Field(size: 4, value: value))
            } else {
                emit("mov", size: .qword, opcode: [0xB8], opcodeRegister: register, immediate: Field(size: 8, value: value))
            }
        }
    }

    /// `mov register, label`: loads the label's absolute address (`mov reg, offset label`).
    /// A 64-bit register uses the sign-extended imm32 form, so the address must be below 2 GiB.
    public mutating func mov<W>(_ destination: Register<W>, _ label: Label) {
        let register = destination.gpr
        let absolute = Fixup.Kind.absolute(signExtended: W.size == .qword)
        switch W.size {
        case .byte:
            fail(.invalidOperands(instruction: "mov", reason: "an address does not fit 8-bit register \(register.name)"))
        case .word, .dword:
            emit("mov", size: W.size, opcode: [0xB8], opcodeRegister: register,
                 immediate: Field(size: W.size.rawValue, fixup: (label, 0, absolute)))
        case .qword:
            emit("mov", size: .qword, opcode: [0xC7], reg: .digit(0), rm: .register(register),
                 immediate: Field(size: 4, fixup: (label, 0, absolute)))
        }
    }

    /// `mov register, [memory]` (8A/8B /r; A0/A1 for the accumulator and an absolute address
    /// outside 64-bit code, as GNU `as` does).
    public mutating func mov<W>(_ destination: Register<W>, _ source: Memory) {
        if moveAccumulator(destination.gpr, source, opcode: W.size == .byte ? 0xA0 : 0xA1) { return }
        emit("mov", size: W.size, opcode: [W.size == .byte ? 0x8A : 0x8B],
             reg: .register(destination.gpr), rm: .memory(source))
    }

    /// `mov [memory], register` (88/89 /r; A2/A3 for the accumulator and an absolute address
    /// outside 64-bit code).
    public mutating func mov<W>(_ destination: Memory, _ source: Register<W>) {
        if moveAccumulator(source.gpr, destination, opcode: W.size == .byte ? 0xA2 : 0xA3) { return }
        emit("mov", size: W.size, opcode: [W.size == .byte ? 0x88 : 0x89],
             reg: .register(source.gpr), rm: .memory(destination))
    }

    /// `mov size [memory], immediate` (C6/C7 /0; a qword store takes a sign-extended imm32).
    public mutating func mov(_ size: OperandSize, _ destination: Memory, _ value: Immediate) {
        guard let value = checkedImmediate32(value, size: size, "mov") else { return }
        emit("mov", size: size, opcode: [size == .byte ? 0xC6 : 0xC7], reg: .digit(0), rm: .memory(destination),
             immediate: Field(size: min(size.rawValue, 4), value: value))
    }

    /// `lea register, [memory]` (8D /r): the address itself. In 64-bit code `.label(l)` gives a
    /// RIP-relative, position-independent address.
    public mutating func lea<W>(_ destination: Register<W>, _ source: Memory) {
        guard W.size != .byte else {
            return fail(.invalidOperands(instruction: "lea", reason: "the destination cannot be 8-bit"))
        }
        emit("lea", size: W.size, opcode: [0x8D], reg: .register(destination.gpr), rm: .memory(source))
    }

    /// `push register` (50+r): 64- or 16-bit registers in 64-bit code, 16- or 32-bit ones otherwise.
    public mutating func push<W>(_ register: Register<W>) {
        stackOperation("push", opcode: 0x50, register.gpr)
    }

    /// `pop register` (58+r), with the same widths as `push`.
    public mutating func pop<W>(_ register: Register<W>) {
        stackOperation("pop", opcode: 0x58, register.gpr)
    }

    private mutating func stackOperation(_ mnemonic: String, opcode: UInt8, _ register: GPR) {
        let valid = switch register.size {
        case .byte: false
        case .word: true
        case .dword: codeSize != .bits64
        case .qword: codeSize == .bits64
        }
        guard valid else {
            return fail(.invalidOperands(instruction: mnemonic,
                                         reason: "\(register.name) cannot be pushed or popped in this code size"))
        }
        emit(mnemonic, size: register.size, defaultsTo64: true, opcode: [opcode], opcodeRegister: register)
    }

    /// The moffs forms of mov (A0-A3), taken where GNU `as` takes them: the accumulator and a
    /// plain absolute address or label in 16- or 32-bit code, and in 64-bit code an absolute
    /// address from 2 to 4 GiB with an 0x67 prefix. Returns false when they do not apply.
    private mutating func moveAccumulator(_ register: GPR, _ memory: Memory, opcode: UInt8) -> Bool {
        guard register.isAccumulator, !register.isHighByte else { return false }
        let size = codeSize == .bits16 ? 2 : 4
        var addressSizeOverride = false
        let field: Field
        switch (memory.base, codeSize) {
        case (.absolute(let address), .bits64) where address > 0x7FFF_FFFF && address <= 0xFFFF_FFFF:
            addressSizeOverride = true
            field = Field(size: 4, value: Int64(address))
        case (.absolute, .bits64), (.label, .bits64), (.register, _):
            return false
        case (.absolute(let address), _):
            guard address < (1 << UInt64(size * 8)) else { return false }
            field = Field(size: size, value: Int64(address))
        case (.label(let label), _):
            field = Field(size: size, fixup: (label, Int64(memory.displacement), .absolute(signExtended: false)))
        }
        emit("mov", size: register.size, addressSizeOverride: addressSizeOverride, opcode: [opcode], immediate: field)
        return true
    }
}
