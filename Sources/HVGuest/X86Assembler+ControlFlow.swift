// Control transfer: jmp, jcc, call, ret, loop (SDM Vol. 2A/2B, JMP, Jcc, CALL, RET, LOOP).

extension X86Assembler {
    /// `jmp label`: EB rel8 when the target is near, E9 rel16/rel32 otherwise.
    public mutating func jmp(_ label: Label) {
        items.append(VariableItem(codeOffset: code.count, kind: .branch(label: label, condition: nil, instruction: "jmp")))
    }

    /// `jcc label`: 70+cc rel8 when the target is near, 0F 80+cc rel16/rel32 otherwise.
    public mutating func jcc(_ condition: Condition, _ label: Label) {
        let instruction = "j" + Self.conditionSuffix(condition)
        items.append(VariableItem(codeOffset: code.count,
                                  kind: .branch(label: label, condition: condition, instruction: instruction)))
    }

    /// `jz`/`je`: jump if ZF = 1.
    public mutating func jz(_ label: Label) { jcc(.zero, label) }
    /// `jnz`/`jne`: jump if ZF = 0.
    public mutating func jnz(_ label: Label) { jcc(.notZero, label) }
    /// `je`: jump if equal (ZF = 1).
    public mutating func je(_ label: Label) { jcc(.equal, label) }
    /// `jne`: jump if not equal (ZF = 0).
    public mutating func jne(_ label: Label) { jcc(.notEqual, label) }
    /// `jc`: jump if CF = 1.
    public mutating func jc(_ label: Label) { jcc(.carry, label) }
    /// `jnc`: jump if CF = 0.
    public mutating func jnc(_ label: Label) { jcc(.notCarry, label) }
    /// `ja`: jump if above (unsigned >).
    public mutating func ja(_ label: Label) { jcc(.above, label) }
    /// `jae`: jump if above or equal (unsigned >=).
    public mutating func jae(_ label: Label) { jcc(.aboveOrEqual, label) }
    /// `jb`: jump if below (unsigned <).
    public mutating func jb(_ label: Label) { jcc(.below, label) }
    /// `jbe`: jump if below or equal (unsigned <=).
    public mutating func jbe(_ label: Label) { jcc(.belowOrEqual, label) }
    /// `jl`: jump if less (signed <).
    public mutating func jl(_ label: Label) { jcc(.less, label) }
    /// `jle`: jump if less or equal (signed <=).
    public mutating func jle(_ label: Label) { jcc(.lessOrEqual, label) }
    /// `jg`: jump if greater (signed >).
    public mutating func jg(_ label: Label) { jcc(.greater, label) }
    /// `jge`: jump if greater or equal (signed >=).
    public mutating func jge(_ label: Label) { jcc(.greaterOrEqual, label) }
    /// `js`: jump if SF = 1.
    public mutating func js(_ label: Label) { jcc(.sign, label) }
    /// `jns`: jump if SF = 0.
    public mutating func jns(_ label: Label) { jcc(.notSign, label) }
    /// `jo`: jump if OF = 1.
    public mutating func jo(_ label: Label) { jcc(.overflow, label) }
    /// `jno`: jump if OF = 0.
    public mutating func jno(_ label: Label) { jcc(.notOverflow, label) }

    /// `call label` (E8 rel16 in 16-bit code, E8 rel32 otherwise).
    public mutating func call(_ label: Label) {
        let size = codeSize == .bits16 ? 2 : 4
        emit("call", size: nil, opcode: [0xE8], immediate: Field(size: size, fixup: (label, 0, .relative(instructionEnd: 0))))
    }

    /// `ret` (C3): near return.
    public mutating func ret() { emitBytes([0xC3], mnemonic: "ret") }

    /// `loop label` (E2 rel8): decrement (r/e)cx and jump if it is not zero. Only rel8 exists,
    /// so a target more than 128 bytes away is an `AssemblerError.branchOutOfRange`.
    public mutating func loop(_ label: Label) {
        emit("loop", size: nil, opcode: [0xE2], immediate: Field(size: 1, fixup: (label, 0, .relative(instructionEnd: 0))))
    }

    static func conditionSuffix(_ condition: Condition) -> String {
        switch condition {
        case .overflow: "o"
        case .notOverflow: "no"
        case .below: "b"
        case .aboveOrEqual: "ae"
        case .equal: "e"
        case .notEqual: "ne"
        case .belowOrEqual: "be"
        case .above: "a"
        case .sign: "s"
        case .notSign: "ns"
        case .parity: "p"
        case .notParity: "np"
        case .less: "l"
        case .greaterOrEqual: "ge"
        case .lessOrEqual: "le"
        case .greater: "g"
        }
    }
}
