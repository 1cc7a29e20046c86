// Integer arithmetic and logic: add/or/adc/sbb/and/sub/xor/cmp, test, inc/dec, shifts
// (SDM Vol. 2A/2B, the individual instruction pages; Vol. 2D, Table B-13 for the /digit values).

/// The eight classic ALU operations; the raw value is the /digit and opcode row (SDM Vol. 2D, B.1).
enum ALUOperation: UInt8 {
    case add = 0, or = 1, adc = 2, sbb = 3, and = 4, sub = 5, xor = 6, cmp = 7

    var mnemonic: String {
        switch self {
        case .add: "add"
        case .or: "or"
        case .adc: "adc"
        case .sbb: "sbb"
        case .and: "and"
        case .sub: "sub"
        case .xor: "xor"
        case .cmp: "cmp"
        }
    }
}

extension X86Assembler {
    /// `add register, immediate`.
    public mutating func add<W>(_ destination: Register<W>, _ value: Immediate) { alu(.add, destination.gpr, value) }
    /// `add destination, source`.
    public mutating func add<W>(_ destination: Register<W>, _ source: Register<W>) { alu(.add, destination.gpr, source.gpr) }
    /// `adc register, immediate` (add with carry).
    public mutating func adc<W>(_ destination: Register<W>, _ value: Immediate) { alu(.adc, destination.gpr, value) }
    /// `adc destination, source`.
    public mutating func adc<W>(_ destination: Register<W>, _ source: Register<W>) { alu(.adc, destination.gpr, source.gpr) }
    /// `sub register, immediate`.
    public mutating func sub<W>(_ destination: Register<W>, _ value: Immediate) { alu(.sub, destination.gpr, value) }
    /// `sub destination, source`.
    public mutating func sub<W>(_ destination: Register<W>, _ source: Register<W>) { alu(.sub, destination.gpr, source.gpr) }
    /// `sbb register, immediate` (subtract with borrow).
    public mutating func sbb<W>(_ destination: Register<W>, _ value: Immediate) { alu(.sbb, destination.gpr, value) }
    /// `sbb destination, source`.
    public mutating func sbb<W>(_ destination: Register<W>, _ source: Register<W>) { alu(.sbb, destination.gpr, source.gpr) }
    /// `and register, immediate`.
    public mutating func and<W>(_ destination: Register<W>, _ value: Immediate) { alu(.and, destination.gpr, value) }
    /// `and destination, source`.
    public mutating func and<W>(_ destination: Register<W>, _ source: Register<W>) { alu(.and, destination.gpr, source.gpr) }
    /// `or register, immediate`.
    public mutating func or<W>(_ destination: Register<W>, _ value: Immediate) { alu(.or, destination.gpr, value) }
    /// `or destination, source`.
    public mutating func or<W>(_ destination: Register<W>, _ source: Register<W>) { alu(.or, destination.gpr, source.gpr) }
    /// `xor register, immediate`.
    public mutating func xor<W>(_ destination: Register<W>, _ value: Immediate) { alu(.xor, destination.gpr, value) }
    /// `xor destination, source`; `xor(.eax, .eax)` is the usual way to zero a register.
    public mutating func xor<W>(_ destination: Register<W>, _ source: Register<W>) { alu(.xor, destination.gpr, source.gpr) }
    /// `cmp register, immediate`: sets flags from register - immediate.
    public mutating func cmp<W>(_ left: Register<W>, _ value: Immediate) { alu(.cmp, left.gpr, value) }
    /// `cmp left, right`: sets flags from left - right.
    public mutating func cmp<W>(_ left: Register<W>, _ right: Register<W>) { alu(.cmp, left.gpr, right.gpr) }

    /// `test register, immediate`: sets flags from register AND immediate (A8/A9, F6/F7 /0).
    public mutating func test<W>(_ left: Register<W>, _ value: Immediate) {
        let register = left.gpr
        guard let value = checkedImmediate32(value, size: W.size, "test") else { return }
        let immediate = Field(size: min(W.size.rawValue, 4), value: value)
        let byte = W.size == .byte
        if register.isAccumulator && !register.isHighByte {
            emit("test", size: W.size, opcode: [byte ? 0xA8 : 0xA9], immediate: immediate)
        } else {
            emit("test", size: W.size, opcode: [byte ? 0xF6 : 0xF7], reg: .digit(0), rm: .register(register),
                 immediate: immediate)
        }
    }

    /// `test left, right` (84/85 /r).
    public mutating func test<W>(_ left: Register<W>, _ right: Register<W>) {
        emit("test", size: W.size, opcode: [W.size == .byte ? 0x84 : 0x85], reg: .register(right.gpr),
             rm: .register(left.gpr))
    }

    /// `inc register`: 40+r outside 64-bit code (where 40-4F became REX), FE/FF /0 otherwise.
    public mutating func inc<W>(_ register: Register<W>) { incrementOrDecrement("inc", digit: 0, register.gpr) }

    /// `dec register`: 48+r outside 64-bit code, FE/FF /1 otherwise.
    public mutating func dec<W>(_ register: Register<W>) { incrementOrDecrement("dec", digit: 1, register.gpr) }

    /// `shl register, count` (D0/D1 /4 for a count of 1, C0/C1 /4 ib otherwise).
    public mutating func shl<W>(_ register: Register<W>, _ count: UInt8) { shift("shl", digit: 4, register.gpr, count) }

    /// `shr register, count`: logical shift right (/5).
    public mutating func shr<W>(_ register: Register<W>, _ count: UInt8) { shift("shr", digit: 5, register.gpr, count) }

    /// `sar register, count`: arithmetic shift right (/7).
    public mutating func sar<W>(_ register: Register<W>, _ count: UInt8) { shift("sar", digit: 7, register.gpr, count) }

    /// The immediate forms in GNU `as` order of preference: 83 /op ib when the value fits a
    /// sign-extended byte, then the short accumulator form, then 80/81 /op.
    private mutating func alu(_ operation: ALUOperation, _ register: GPR, _ value: Immediate) {
        let mnemonic = operation.mnemonic
        guard let value = checkedImmediate32(value, size: register.size, mnemonic) else { return }
        let accumulator = register.isAccumulator && !register.isHighByte
        let row = operation.rawValue << 3
        if register.size == .byte {
            let immediate = Field(size: 1, value: value)
            if accumulator {
                emit(mnemonic, size: .byte, opcode: [row | 0x04], immediate: immediate)
            } else {
                emit(mnemonic, size: .byte, opcode: [0x80], reg: .digit(operation.rawValue),
                     rm: .register(register), immediate: immediate)
            }
        } else if (-128...127).contains(value) {
            emit(mnemonic, size: register.size, opcode: [0x83], reg: .digit(operation.rawValue),
                 rm: .register(register), immediate: Field(size: 1, value: value))
        } else {
            let immediate = Field(size: min(register.size.rawValue, 4), value: value)
            if accumulator {
                emit(mnemonic, size: register.size, opcode: [row | 0x05], immediate: immediate)
            } else {
                emit(mnemonic, size: register.size, opcode: [0x81], reg: .digit(operation.rawValue),
                     rm: .register(register), immediate: immediate)
            }
        }
    }

    /// `op r/m, reg` (00+8*op / 01+8*op), the register form GNU `as` emits.
    private mutating func alu(_ operation: ALUOperation, _ destination: GPR, _ source: GPR) {
        let opcode = operation.rawValue << 3 | (destination.size == .byte ? 0x00 : 0x01)
        emit(operation.mnemonic, size: destination.size, opcode: [opcode], reg: .register(source),
             rm: .register(destination))
    }

    private mutating func incrementOrDecrement(_ mnemonic: String, digit: UInt8, _ register: GPR) {
        if codeSize != .bits64 && register.size != .byte {
            emit(mnemonic, size: register.size, opcode: [0x40 | digit << 3], opcodeRegister: register)
        } else {
            emit(mnemonic, size: register.size, opcode: [register.size == .byte ? 0xFE : 0xFF], reg: .digit(digit),
                 rm: .register(register))
        }
    }

    private mutating func shift(_ mnemonic: String, digit: UInt8, _ register: GPR, _ count: UInt8) {
        let byte = register.size == .byte
        if count == 1 {
            emit(mnemonic, size: register.size, opcode: [byte ? 0xD0 : 0xD1], reg: .digit(digit), rm: .register(register))
        } else {
            emit(mnemonic, size: register.size, opcode: [byte ? 0xC0 : 0xC1], reg: .digit(digit), rm: .register(register),
                 immediate: Field(size: 1, value: Int64(count)))
        }
    }
}
