// The x86 instructions guests use to touch device memory, decoded from their bytes (Intel SDM
// Vol. 2, chapter 2 "Instruction Format" and the opcode map of Appendix A; AMD APM Vol. 3,
// chapter 1). Hardware that exits on an access to unmapped guest-physical memory (SVM's nested
// page fault, VMX's EPT violation) reports the address, not the instruction; KVM decodes and
// emulates it in the kernel, a bare-metal engine must do it itself. So every backend can give
// its exit handlers the same `VMExit.mmioRead`/`.mmioWrite`, this decoder says what an
// instruction does with memory, how wide the access is and how long the instruction is.
//
// Embedded-safe: no allocation, no existentials, typed errors.

/// A general-purpose register as an instruction names it: 0-15 (RAX, RCX, RDX, RBX, RSP, RBP,
/// RSI, RDI, R8-R15), or for a byte operand without a REX prefix AH, CH, DH, BH (index 0-3 with
/// `highByte`).
public struct OperandRegister: Sendable, Equatable {
    public var index: UInt8
    public var highByte: Bool
    @inlinable public init(_ index: UInt8, highByte: Bool = false) {
        self.index = index
        self.highByte = highByte
    }
}

/// The arithmetic and logic instructions that may take a memory operand.
public enum ArithmeticOperation: UInt8, Sendable, Equatable {
    case add = 0, or, adc, sbb, and, sub, xor, cmp, test
}

/// What a decoded instruction does with its memory operand.
public enum MemoryOperation: Sendable, Equatable {
    /// MOV reg, [mem] (extension none), MOVZX (zero), MOVSX/MOVSXD (sign).
    case load(OperandRegister, extension: LoadExtension)
    /// MOV [mem], reg.
    case store(OperandRegister)
    /// MOV [mem], imm (the immediate as the access width sees it).
    case storeImmediate(UInt64)
    /// OP [mem], reg / OP reg, [mem] / OP [mem], imm: the memory value is read, and written back
    /// unless the operation is CMP or TEST or the destination is the register.
    case arithmetic(ArithmeticOperation, source: ArithmeticSource, memoryIsDestination: Bool)
    /// MOVS, STOS, LODS, with REP or without.
    case string(StringOperation, repeated: Bool)
}

public enum LoadExtension: Sendable, Equatable { case none, zero, sign }
public enum ArithmeticSource: Sendable, Equatable { case register(OperandRegister), immediate(UInt64) }
public enum StringOperation: Sendable, Equatable { case movs, stos, lods }

/// A segment-override prefix (SDM Vol. 2, 2.1.1), as the byte that encodes it.
public enum SegmentOverride: UInt8, Sendable, Equatable {
    case es = 0x26, cs = 0x2E, ss = 0x36, ds = 0x3E, fs = 0x64, gs = 0x65
}

/// An instruction's prefixes, and the operand and address sizes they give it (SDM Vol. 1, 3.6
/// "Operand-size and Address-size Attributes"; Vol. 2, 2.1.1, 2.2.1).
public struct InstructionPrefixes: Sendable, Equatable {
    /// 0x66, 0x67, and REP/REPNE (0xF3, 0xF2).
    public var operandOverride = false, addressOverride = false, repeated = false
    public var segment: SegmentOverride? = nil
    /// The REX byte (64-bit code), 0 when there is none.
    public var rex: UInt8 = 0
    /// How many bytes the prefixes take.
    public var length = 0

    @inlinable public init() {}

    /// The operand size in bytes for code of `size`: REX.W makes it 8, 0x66 flips 2 and 4.
    @inlinable public func operandWidth(in size: InstructionDecoder.Mode) -> UInt8 {
        switch size {
        case .bits16: operandOverride ? 4 : 2
        case .bits32: operandOverride ? 2 : 4
        case .bits64: rex & 0x08 != 0 ? 8 : (operandOverride ? 2 : 4)
        }
    }

    /// The address size in bytes for code of `size`: 0x67 flips 2 and 4, or 8 and 4.
    @inlinable public func addressWidth(in size: InstructionDecoder.Mode) -> UInt8 {
        switch size {
        case .bits16: addressOverride ? 4 : 2
        case .bits32: addressOverride ? 2 : 4
        case .bits64: addressOverride ? 4 : 8
        }
    }
}

extension InstructionDecoder.Mode {
    /// The size of the code a vCPU executes: 64-bit with EFER.LMA and CS.L, 32-bit in
    /// protected mode with CS.D, 16-bit otherwise (SDM Vol. 3A, 5.2.1; AMD APM Vol. 2, 4.8).
    @inlinable public init(_ special: SpecialRegisters) {
        if special.efer & ControlBits.eferLMA != 0 && special.cs.long {
            self = .bits64
        } else if special.cr0 & ControlBits.cr0PE != 0 && special.cs.defaultSize32 {
            self = .bits32
        } else {
            self = .bits16
        }
    }
}

/// A decoded instruction with a memory operand.
public struct DecodedInstruction: Sendable, Equatable {
    public var operation: MemoryOperation
    /// Bytes accessed in memory: 1, 2, 4 or 8.
    public var width: UInt8
    /// The register operand's size (MOVZX/MOVSX write a wider register than they read).
    public var registerWidth: UInt8
    /// The instruction's length in bytes, prefixes included: what RIP advances by.
    public var length: UInt8
    /// The address size in bytes (2, 4, 8): how much of RSI, RDI and RCX a string instruction
    /// uses (SDM Vol. 1, 3.6; Vol. 2, MOVS: "the address-size attribute").
    public var addressWidth: UInt8
    /// The segment prefix, if any: MOVS and LODS read from it instead of DS (STOS and the
    /// destination of MOVS always use ES).
    public var segmentOverride: SegmentOverride?

    @inlinable public init(operation: MemoryOperation, width: UInt8, registerWidth: UInt8, length: UInt8, addressWidth: UInt8 = 8,
                           segmentOverride: SegmentOverride? = nil) {
        self.operation = operation
        self.width = width
        self.registerWidth = registerWidth
        self.length = length
        self.addressWidth = addressWidth
        self.segmentOverride = segmentOverride
    }
}

/// Why bytes could not be decoded as a memory-access instruction.
public enum InstructionDecodingError: Error, Sendable, Equatable {
    /// The bytes end before the instruction does (or it is longer than the 15 bytes x86 allows).
    case truncated
    /// An opcode (after any 0x0F escape) this decoder does not know as a memory access.
    case unsupported(opcode: UInt16)
    /// The instruction's operand is a register (ModRM.mod = 3): it cannot have caused an access.
    case notMemory
}

public enum InstructionDecoder {
    /// The size of code a guest executes (CS.L, CS.D and CR0.PE): it sets the default operand
    /// and address sizes (SDM Vol. 1, 3.6 "Operand-size and Address-size Attributes").
    public enum Mode: Sendable, Equatable {
        case bits16, bits32, bits64
    }

    /// The legacy prefixes (SDM Vol. 2, 2.1.1) at the start of `bytes`, in any order, then in
    /// 64-bit code a REX prefix, which must come last.
    public static func prefixes(_ bytes: UnsafeRawBufferPointer, size: Mode) throws(InstructionDecodingError) -> InstructionPrefixes {
        var cursor = Cursor(bytes: bytes)
        var prefixes = InstructionPrefixes()
        scan: while true {
            let byte = try cursor.peek()
            switch byte {
            case 0x66: prefixes.operandOverride = true
            case 0x67: prefixes.addressOverride = true
            case 0xF2, 0xF3: prefixes.repeated = true
            case 0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65: prefixes.segment = SegmentOverride(rawValue: byte)
            case 0xF0: break
            default: break scan
            }
            try cursor.skip(1)
        }
        if size == .bits64, try cursor.peek() & 0xF0 == 0x40 {
            prefixes.rex = try cursor.next()
        }
        prefixes.length = cursor.offset
        return prefixes
    }

    /// Decodes the instruction at the start of `bytes` (up to 15 of them), executed in `size`.
    public static func decode(_ bytes: UnsafeRawBufferPointer, size: Mode) throws(InstructionDecodingError) -> DecodedInstruction {
        let prefixes = try prefixes(bytes, size: size)
        var cursor = Cursor(bytes: bytes, offset: prefixes.length)
        let rex = prefixes.rex, repeated = prefixes.repeated, segment = prefixes.segment, wide = rex & 0x08 != 0
        let operandWidth = prefixes.operandWidth(in: size), addressWidth = prefixes.addressWidth(in: size)
        func register(_ field: UInt8, byte: Bool, extended: Bool) -> OperandRegister {
            let index = field | (extended ? 8 : 0)
            // AH, CH, DH, BH: byte registers 4-7 without any REX prefix.
            if byte && rex == 0 && field >= 4 && !extended { return OperandRegister(field - 4, highByte: true) }
            return OperandRegister(index)
        }
        let rexR = rex & 0x04 != 0

        var opcode = UInt16(try cursor.next())
        if opcode == 0x0F { opcode = 0x0F00 | UInt16(try cursor.next()) }

        func memoryOperand() throws(InstructionDecodingError) -> UInt8 {
            let modrm = try cursor.next()
            try cursor.skipAddress(modrm: modrm, addressWidth: addressWidth)
            return modrm
        }
        func immediate(_ width: UInt8) throws(InstructionDecodingError) -> UInt64 {
            // An operand of 8 bytes takes a 4-byte immediate, sign-extended (SDM Vol. 2, 2.2.1.5).
            let bytes = min(width, 4)
            var value: UInt64 = 0
            for index in 0..<UInt64(bytes) { value |= UInt64(try cursor.next()) << (8 * index) }
            if width == 8, value & 0x8000_0000 != 0 { value |= 0xFFFF_FFFF_0000_0000 }
            return value
        }
        func signExtended8(to width: UInt8) throws(InstructionDecodingError) -> UInt64 {
            let byte = try cursor.next()
            let value = UInt64(bitPattern: Int64(Int8(bitPattern: byte)))
            return width == 8 ? value : value & ((1 << (8 * UInt64(width))) - 1)
        }
        func finish(_ operation: MemoryOperation, width: UInt8, registerWidth: UInt8? = nil) -> DecodedInstruction {
            DecodedInstruction(operation: operation, width: width, registerWidth: registerWidth ?? width, length: UInt8(cursor.offset),
                               addressWidth: addressWidth, segmentOverride: segment)
        }

        switch opcode {
        case 0x88, 0x89:  // MOV r/m, reg
            let width: UInt8 = opcode == 0x88 ? 1 : operandWidth
            let modrm = try memoryOperand()
            return finish(.store(register((modrm >> 3) & 7, byte: width == 1, extended: rexR)), width: width)
        case 0x8A, 0x8B:  // MOV reg, r/m
            let width: UInt8 = opcode == 0x8A ? 1 : operandWidth
            let modrm = try memoryOperand()
            return finish(.load(register((modrm >> 3) & 7, byte: width == 1, extended: rexR), extension: .none), width: width)
        case 0xC6, 0xC7:  // MOV r/m, imm (/0)
            let width: UInt8 = opcode == 0xC6 ? 1 : operandWidth
            let modrm = try memoryOperand()
            guard (modrm >> 3) & 7 == 0 else { throw .unsupported(opcode: opcode) }
            return finish(.storeImmediate(try immediate(width)), width: width)
        case 0xA0, 0xA1, 0xA2, 0xA3:  // MOV AL/eAX, moffs and back: the offset is address-sized
            let width: UInt8 = opcode & 1 == 0 ? 1 : operandWidth
            try cursor.skip(Int(addressWidth))
            return finish(opcode < 0xA2 ? .load(OperandRegister(0), extension: .none) : .store(OperandRegister(0)), width: width)
        case 0x0FB6, 0x0FB7, 0x0FBE, 0x0FBF:  // MOVZX, MOVSX
            let width: UInt8 = opcode & 1 == 0 ? 1 : 2
            let modrm = try memoryOperand()
            let target = register((modrm >> 3) & 7, byte: false, extended: rexR)
            return finish(.load(target, extension: opcode < 0x0FBE ? .zero : .sign), width: width, registerWidth: operandWidth)
        case 0x63 where size == .bits64:  // MOVSXD reg, r/m32
            let modrm = try memoryOperand()
            let target = register((modrm >> 3) & 7, byte: false, extended: rexR)
            return finish(.load(target, extension: wide ? .sign : .none), width: 4, registerWidth: operandWidth)
        case 0x00...0x3B where opcode & 7 < 4:  // ADD, OR, ADC, SBB, AND, SUB, XOR, CMP with ModRM
            let operation = ArithmeticOperation(rawValue: UInt8(opcode >> 3))!
            let width: UInt8 = opcode & 1 == 0 ? 1 : operandWidth
            let modrm = try memoryOperand()
            let other = register((modrm >> 3) & 7, byte: width == 1, extended: rexR)
            return finish(.arithmetic(operation, source: .register(other), memoryIsDestination: opcode & 2 == 0), width: width)
        case 0x80, 0x81, 0x83:  // group 1: OP r/m, imm
            let width: UInt8 = opcode == 0x80 ? 1 : operandWidth
            let modrm = try memoryOperand()
            let operation = ArithmeticOperation(rawValue: (modrm >> 3) & 7)!
            let value = opcode == 0x83 ? try signExtended8(to: width) : try immediate(width)
            return finish(.arithmetic(operation, source: .immediate(value), memoryIsDestination: true), width: width)
        case 0x84, 0x85:  // TEST r/m, reg
            let width: UInt8 = opcode == 0x84 ? 1 : operandWidth
            let modrm = try memoryOperand()
            return finish(.arithmetic(.test, source: .register(register((modrm >> 3) & 7, byte: width == 1, extended: rexR)),
                                      memoryIsDestination: false), width: width)
        case 0xF6, 0xF7:  // group 3 /0: TEST r/m, imm
            let width: UInt8 = opcode == 0xF6 ? 1 : operandWidth
            let modrm = try memoryOperand()
            guard (modrm >> 3) & 7 == 0 else { throw .unsupported(opcode: opcode) }
            return finish(.arithmetic(.test, source: .immediate(try immediate(width)), memoryIsDestination: false), width: width)
        case 0xA4, 0xA5:
            return finish(.string(.movs, repeated: repeated), width: opcode == 0xA4 ? 1 : operandWidth)
        case 0xAA, 0xAB:
            return finish(.string(.stos, repeated: repeated), width: opcode == 0xAA ? 1 : operandWidth)
        case 0xAC, 0xAD:
            return finish(.string(.lods, repeated: repeated), width: opcode == 0xAC ? 1 : operandWidth)
        default:
            throw .unsupported(opcode: opcode)
        }
    }

    /// Reads bytes in order, never past the buffer or the 15-byte limit.
    struct Cursor {
        let bytes: UnsafeRawBufferPointer
        var offset = 0

        func peek() throws(InstructionDecodingError) -> UInt8 {
            guard offset < min(bytes.count, 15) else { throw .truncated }
            return bytes[offset]
        }

        mutating func next() throws(InstructionDecodingError) -> UInt8 {
            let byte = try peek()
            offset += 1
            return byte
        }

        mutating func skip(_ count: Int) throws(InstructionDecodingError) {
            guard offset + count <= min(bytes.count, 15) else { throw .truncated }
            offset += count
        }

        /// The rest of a memory operand after its ModRM byte: SIB and displacement (SDM Vol. 2,
        /// 2.1.5, Tables 2-1 to 2-3). A register operand is no memory access.
        mutating func skipAddress(modrm: UInt8, addressWidth: UInt8) throws(InstructionDecodingError) {
            let mod = modrm >> 6, rm = modrm & 7
            guard mod != 3 else { throw .notMemory }
            if addressWidth == 2 {
                // 16-bit addressing: [BP] with mod 0 is a 16-bit displacement instead.
                try skip(mod == 1 ? 1 : mod == 2 || (mod == 0 && rm == 6) ? 2 : 0)
                return
            }
            if rm == 4 {
                let sib = try next()
                // SIB base 101 with mod 0: a 32-bit displacement and no base.
                if mod == 0 && sib & 7 == 5 { try skip(4) }
            }
            // mod 0, r/m 101: disp32 (RIP-relative in 64-bit mode).
            try skip(mod == 1 ? 1 : mod == 2 || (mod == 0 && rm == 5) ? 4 : 0)
        }
    }
}

extension DecodedInstruction {
    /// The register's value after a load of `loaded` (the `width` bytes read) into it, given its
    /// value `old` before: 32-bit writes clear the upper half in 64-bit code, 8- and 16-bit
    /// writes keep the bytes they do not cover (SDM Vol. 1, 3.4.1.1), AH-BH are bits 8-15.
    public func registerAfterLoad(old: UInt64, loaded: UInt64, codeSize: InstructionDecoder.Mode) -> UInt64 {
        guard case .load(let target, let extensionKind) = operation else { return old }
        let readMask: UInt64 = width == 8 ? .max : (1 << (8 * UInt64(width))) - 1
        var value = loaded & readMask
        if extensionKind == .sign, width < 8, value & (1 << (8 * UInt64(width) - 1)) != 0 { value |= ~readMask }
        return target.valueAfterWrite(old: old, value: value, width: registerWidth, codeSize: codeSize)
    }

    /// The value a store writes (its low `width` bytes), given the source register's value; nil
    /// for operations that are not a plain store.
    public func storedValue(register value: UInt64) -> UInt64? {
        let mask: UInt64 = width == 8 ? .max : (1 << (8 * UInt64(width))) - 1
        switch operation {
        case .store(let source): return (source.highByte ? value >> 8 : value) & mask
        case .storeImmediate(let immediate): return immediate & mask
        default: return nil
        }
    }
}
