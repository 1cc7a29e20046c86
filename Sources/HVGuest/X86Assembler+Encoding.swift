// The instruction encoder: legacy prefixes, REX, opcode, ModRM, SIB, displacement, immediate
// (SDM Vol. 2A, 2.1 "instruction format" and 2.2.1 "REX prefixes").

extension X86Assembler {
    /// The ModRM.reg field: a register operand or an opcode extension ("/digit").
    enum RegField {
        case register(GPR)
        case digit(UInt8)
    }

    /// The ModRM.r/m operand.
    enum RMOperand {
        case register(GPR)
        case memory(Memory)
    }

    /// A displacement or immediate: `size` bytes of `value`, or of a label's address resolved later.
    struct Field {
        var size: Int
        var value: Int64 = 0
        var fixup: (label: Label, addend: Int64, kind: Fixup.Kind)? = nil
    }

    /// The encoded form of a memory operand.
    struct Addressing {
        var addressSizePrefix = false
        var mod: UInt8
        var rm: UInt8
        var sib: UInt8? = nil
        var displacement: Field? = nil
    }

    /// Emits one instruction. `size` drives the 0x66 prefix and REX.W; `defaultsTo64` marks
    /// instructions whose operand size is 64 bits in 64-bit mode without REX.W (push, pop).
    /// `opcodeRegister` is added to the last opcode byte ("+r" forms); `addressSizeOverride` adds
    /// 0x67 to an instruction without a ModRM memory operand (moffs).
    mutating func emit(
        _ mnemonic: String, size: OperandSize?, defaultsTo64: Bool = false, addressSizeOverride: Bool = false,
        prefix: UInt8? = nil,
        opcode: [UInt8], reg: RegField? = nil, rm: RMOperand? = nil, opcodeRegister: GPR? = nil,
        immediate: Field? = nil
    ) {
        var registers: [GPR] = []
        if case .register(let register) = reg { registers.append(register) }
        if case .register(let register) = rm { registers.append(register) }
        if case .memory(let memory) = rm, case .register(let base) = memory.base { registers.append(base) }
        if let opcodeRegister { registers.append(opcodeRegister) }

        let rexW = size == .qword && !defaultsTo64
        if size == .qword && codeSize != .bits64 {
            return fail(.invalidOperands(instruction: mnemonic, reason: "64-bit operands need 64-bit code"))
        }
        let needsREX = rexW || registers.contains { $0.needsREX }
        if let extended = registers.first(where: { $0.needsREX }), codeSize != .bits64 {
            return fail(.invalidOperands(instruction: mnemonic, reason: "\(extended.name) exists only in 64-bit code"))
        }
        if needsREX, let high = registers.first(where: { $0.isHighByte }) {
            return fail(.invalidOperands(
                instruction: mnemonic,
                reason: "\(high.name) cannot be encoded in an instruction that needs a REX prefix"))
        }

        var addressing: Addressing?
        if case .memory(let memory) = rm {
            guard let encoded = encodeAddress(memory, mnemonic) else { return }
            addressing = encoded
        }

        // Prefix order as GNU `as` writes it: address size, operand size, rep, REX.
        var bytes: [UInt8] = []
        if addressSizeOverride || addressing?.addressSizePrefix == true { bytes.append(0x67) }
        switch size {
        case .word where codeSize != .bits16: bytes.append(0x66)
        case .dword where codeSize == .bits16: bytes.append(0x66)
        case .dword where defaultsTo64 && codeSize == .bits64:
            return fail(.invalidOperands(instruction: mnemonic, reason: "32-bit operands are not encodable in 64-bit code"))
        default: break
        }
        if let prefix { bytes.append(prefix) }
        if needsREX {
            var rex: UInt8 = 0x40
            if rexW { rex |= 0x08 }
            if case .register(let register) = reg, register.number >= 8 { rex |= 0x04 }
            switch rm {
            case .register(let register) where register.number >= 8: rex |= 0x01
            case .memory(let memory):
                if case .register(let base) = memory.base, base.number >= 8 { rex |= 0x01 }
            default: break
            }
            if let opcodeRegister, opcodeRegister.number >= 8 { rex |= 0x01 }
            bytes.append(rex)
        }
        bytes += opcode
        if let opcodeRegister { bytes[bytes.count - 1] |= opcodeRegister.number & 7 }

        var fields: [(start: Int, field: Field)] = []
        if let reg {
            let regBits: UInt8 = switch reg {
            case .register(let register): register.number & 7
            case .digit(let digit): digit
            }
            switch rm {
            case .register(let register):
                bytes.append(0xC0 | regBits << 3 | register.number & 7)
            case .memory:
                let addressing = addressing!
                bytes.append(addressing.mod << 6 | regBits << 3 | addressing.rm)
                if let sib = addressing.sib { bytes.append(sib) }
                if let displacement = addressing.displacement {
                    fields.append((bytes.count, displacement))
                    bytes += littleEndian(UInt64(bitPattern: displacement.value), count: displacement.size)
                }
            case nil:
                preconditionFailure("ModRM without an r/m operand")
            }
        }
        if let immediate {
            fields.append((bytes.count, immediate))
            bytes += littleEndian(UInt64(bitPattern: immediate.value), count: immediate.size)
        }
        emitBytes(bytes, fields: fields, mnemonic: mnemonic)
    }

    /// Appends encoded bytes and turns the label fields among them into fixups.
    mutating func emitBytes(_ bytes: [UInt8], fields: [(start: Int, field: Field)] = [], mnemonic: String) {
        for (start, field) in fields {
            guard let fixup = field.fixup else { continue }
            var kind = fixup.kind
            if case .relative = kind { kind = .relative(instructionEnd: bytes.count - start) }
            fixups.append(Fixup(
                position: Position(codeOffset: code.count + start, itemIndex: items.count), size: field.size,
                label: fixup.label, addend: fixup.addend, kind: kind, instruction: mnemonic))
        }
        code += bytes
    }

    /// ModRM/SIB/displacement for a memory operand (SDM Vol. 2A, Tables 2-1 to 2-3 and 2.2.1.6).
    mutating func encodeAddress(_ memory: Memory, _ mnemonic: String) -> Addressing? {
        let displacement = Int64(memory.displacement)
        switch memory.base {
        case .register(let base):
            switch base.size {
            case .byte:
                fail(.invalidOperands(instruction: mnemonic, reason: "8-bit register \(base.name) cannot address memory"))
                return nil
            case .word:
                guard codeSize != .bits64 else {
                    fail(.invalidOperands(instruction: mnemonic,
                                          reason: "16-bit addressing [\(base.name)] is not available in 64-bit code"))
                    return nil
                }
                var addressing = encodeAddress16(base, displacement, mnemonic)
                addressing?.addressSizePrefix = codeSize == .bits32
                return addressing
            case .dword:
                var addressing = encodeAddress32(base, displacement)
                addressing.addressSizePrefix = codeSize != .bits32
                return addressing
            case .qword:
                guard codeSize == .bits64 else {
                    fail(.invalidOperands(instruction: mnemonic,
                                          reason: "64-bit register \(base.name) can address memory only in 64-bit code"))
                    return nil
                }
                return encodeAddress32(base, displacement)
            }
        case .absolute(let address):
            switch codeSize {
            case .bits16 where address <= 0xFFFF:
                return Addressing(mod: 0, rm: 6, displacement: Field(size: 2, value: Int64(address)))
            case .bits32 where address <= 0xFFFF_FFFF:
                return Addressing(mod: 0, rm: 5, displacement: Field(size: 4, value: Int64(address)))
            case .bits64 where address <= 0xFFFF_FFFF:
                // SIB with no base and no index: a disp32 that is not RIP-relative (Table 2-3).
                return Addressing(addressSizePrefix: address > 0x7FFF_FFFF, mod: 0, rm: 4, sib: 0x25,
                                  displacement: Field(size: 4, value: Int64(address)))
            default:
                let limit = codeSize == .bits16 ? "64 KiB" : "4 GiB"
                fail(.invalidOperands(instruction: mnemonic,
                                      reason: "absolute address 0x\(String(address, radix: 16, uppercase: true)) "
                                          + "is above \(limit); load it into a register"))
                return nil
            }
        case .label(let label):
            switch codeSize {
            case .bits16:
                return Addressing(mod: 0, rm: 6, displacement: Field(
                    size: 2, fixup: (label, displacement, .absolute(signExtended: false))))
            case .bits32:
                return Addressing(mod: 0, rm: 5, displacement: Field(
                    size: 4, fixup: (label, displacement, .absolute(signExtended: false))))
            case .bits64:
                return Addressing(mod: 0, rm: 5, displacement: Field(
                    size: 4, fixup: (label, displacement, .relative(instructionEnd: 0))))
            }
        }
    }

    /// 16-bit addressing: [si], [di], [bp+disp], [bx] (SDM Vol. 2A, Table 2-1).
    mutating func encodeAddress16(_ base: GPR, _ displacement: Int64, _ mnemonic: String) -> Addressing? {
        let rm: UInt8
        switch base.number {
        case 6: rm = 4  // si
        case 7: rm = 5  // di
        case 5: rm = 6  // bp
        case 3: rm = 7  // bx
        default:
            fail(.invalidOperands(instruction: mnemonic,
                                  reason: "16-bit addressing takes bx, si, di or bp as base, not \(base.name)"))
            return nil
        }
        guard (-0x8000...0xFFFF).contains(displacement) else {
            fail(.invalidOperands(instruction: mnemonic, reason: "displacement \(displacement) does not fit 16 bits"))
            return nil
        }
        // [bp] with mod 00 means [disp16], so bp always carries a displacement.
        if displacement == 0 && rm != 6 { return Addressing(mod: 0, rm: rm) }
        if (-128...127).contains(displacement) {
            return Addressing(mod: 1, rm: rm, displacement: Field(size: 1, value: displacement))
        }
        return Addressing(mod: 2, rm: rm, displacement: Field(size: 2, value: displacement))
    }

    /// 32/64-bit addressing through one base register (SDM Vol. 2A, Tables 2-2 and 2-3).
    func encodeAddress32(_ base: GPR, _ displacement: Int64) -> Addressing {
        let low = base.number & 7
        // rsp/r12 as base need a SIB byte; rbp/r13 with mod 00 would mean RIP/disp32.
        let sib: UInt8? = low == 4 ? 0x24 : nil
        if displacement == 0 && low != 5 { return Addressing(mod: 0, rm: low, sib: sib) }
        if (-128...127).contains(displacement) {
            return Addressing(mod: 1, rm: low, sib: sib, displacement: Field(size: 1, value: displacement))
        }
        return Addressing(mod: 2, rm: low, sib: sib, displacement: Field(size: 4, value: displacement))
    }

    /// The immediate as a `bits`-wide operand, or nil (and an error) when it does not fit.
    mutating func checkedImmediate(_ immediate: Immediate, bits: Int, _ mnemonic: String) -> Int64? {
        guard let value = immediate.signedValue(bits: bits) else {
            fail(.immediateOutOfRange(instruction: mnemonic, value: immediate.description, bits: bits))
            return nil
        }
        return value
    }

    /// An immediate for an operation of `size` whose field is at most 32 bits and sign-extended
    /// to 64 for qword operations (SDM Vol. 2A, 2.2.1.5).
    mutating func checkedImmediate32(_ immediate: Immediate, size: OperandSize, _ mnemonic: String) -> Int64? {
        guard let value = checkedImmediate(immediate, bits: size.bits, mnemonic) else { return nil }
        if size == .qword && !(Int64(Int32.min)...Int64(Int32.max)).contains(value) {
            fail(.immediateOutOfRange(instruction: mnemonic, value: immediate.description, bits: 32))
            return nil
        }
        return value
    }
}
