// Operands other than registers: immediates, labels, memory references and condition codes.

/// The default operand and address size of the code being assembled (SDM Vol. 3A, 3.4.5 "D/B flag"
/// and 5.2.1 for 64-bit mode).
public enum CodeSize: Sendable, Hashable {
    /// Real mode or a 16-bit protected-mode code segment; `.code16` in GNU `as`.
    case bits16
    /// A 32-bit protected-mode code segment; `.code32`.
    case bits32
    /// 64-bit mode (IA-32e, CS.L = 1); `.code64`.
    case bits64
}

/// An immediate operand. Integer literals of any size convert to it (`0xFFFF_FFFF_FFFF_FFFF`,
/// `-1`); runtime values use `Immediate(value)`. Each instruction checks that the value fits its
/// operand width, either as a signed or as an unsigned number, the way GNU `as` does.
public struct Immediate: ExpressibleByIntegerLiteral, Sendable, Hashable, CustomStringConvertible {
    /// The exact value; nil for a literal wider than 128 bits.
    let value: Int128?

    /// An immediate from an integer literal.
    public init(integerLiteral literal: StaticBigInt) {
        if literal.bitWidth > 128 {
            value = nil
        } else {
            let low = UInt128(UInt64(truncatingIfNeeded: literal[0]))
            let high = UInt128(UInt64(truncatingIfNeeded: literal[1])) << 64
            value = Int128(bitPattern: high | low)
        }
    }

    /// An immediate from any integer value.
    public init(_ value: some BinaryInteger) {
        self.value = Int128(exactly: value)
    }

    public var description: String {
        guard let value else { return "<literal wider than 128 bits>" }
        return value < 0 ? "\(value)" : "0x" + String(value, radix: 16, uppercase: true)
    }

    /// The value as a `bits`-wide operand, sign-extended to 64 bits, or nil when it fits
    /// neither the signed nor the unsigned range of that width.
    func signedValue(bits: Int) -> Int64? {
        guard let value else { return nil }
        let minimum = -(Int128(1) << (bits - 1))
        let limit = Int128(1) << bits
        guard value >= minimum, value < limit else { return nil }
        let truncated = UInt64(truncatingIfNeeded: value)
        if bits == 64 { return Int64(bitPattern: truncated) }
        let shift = UInt64(64 - bits)
        return Int64(bitPattern: truncated << shift) >> Int64(shift)
    }
}

/// A position in the code, created by `X86Assembler.label(_:)` and placed by `bind(_:)`.
/// Labels may be used before they are bound; `assemble()` resolves them.
public struct Label: Hashable, Sendable {
    /// Index into the creating assembler's label table.
    let id: Int
}

/// A memory operand: `[base + displacement]`, an absolute address, or a label.
///
/// 64-bit code addresses through 64-bit registers (or 32-bit ones with an 0x67 prefix); 16-bit
/// code through bx, si, di or bp (SDM Vol. 2A, Table 2-1), or 32-bit registers with 0x67.
public struct Memory: Sendable, Hashable {
    enum Base: Sendable, Hashable {
        case register(GPR)
        case absolute(UInt64)
        case label(Label)
    }

    let base: Base
    let displacement: Int32

    /// `[base + displacement]`.
    public static func at<W>(_ base: Register<W>, _ displacement: Int32 = 0) -> Memory {
        Memory(base: .register(base.gpr), displacement: displacement)
    }

    /// The absolute address `[address]`. In 64-bit code an address from 2 GiB to 4 GiB (MMIO
    /// such as 0xD000_0000) gets an 0x67 prefix so that it is zero-extended, not sign-extended
    /// (SDM Vol. 2A, 2.2.1.3); an address above 4 GiB must go through a register.
    public static func absolute(_ address: UInt64) -> Memory {
        Memory(base: .absolute(address), displacement: 0)
    }

    /// The bytes at `label + displacement`: RIP-relative in 64-bit code (SDM Vol. 2A, 2.2.1.6),
    /// an absolute 16- or 32-bit displacement otherwise.
    public static func label(_ label: Label, _ displacement: Int32 = 0) -> Memory {
        Memory(base: .label(label), displacement: displacement)
    }
}

/// A condition code for `jcc` (SDM Vol. 2A, Table B-1 and the Jcc page).
public enum Condition: UInt8, Sendable, Hashable, CaseIterable {
    /// OF = 1.
    case overflow = 0x0
    /// OF = 0.
    case notOverflow = 0x1
    /// CF = 1: below (unsigned), carry.
    case below = 0x2
    /// CF = 0: above or equal (unsigned), no carry.
    case aboveOrEqual = 0x3
    /// ZF = 1: equal, zero.
    case equal = 0x4
    /// ZF = 0: not equal, not zero.
    case notEqual = 0x5
    /// CF = 1 or ZF = 1: below or equal (unsigned).
    case belowOrEqual = 0x6
    /// CF = 0 and ZF = 0: above (unsigned).
    case above = 0x7
    /// SF = 1.
    case sign = 0x8
    /// SF = 0.
    case notSign = 0x9
    /// PF = 1.
    case parity = 0xA
    /// PF = 0.
    case notParity = 0xB
    /// SF != OF: less (signed).
    case less = 0xC
    /// SF = OF: greater or equal (signed).
    case greaterOrEqual = 0xD
    /// ZF = 1 or SF != OF: less or equal (signed).
    case lessOrEqual = 0xE
    /// ZF = 0 and SF = OF: greater (signed).
    case greater = 0xF

    /// ZF = 1 (same as `equal`).
    public static let zero = Condition.equal
    /// ZF = 0 (same as `notEqual`).
    public static let notZero = Condition.notEqual
    /// CF = 1 (same as `below`).
    public static let carry = Condition.below
    /// CF = 0 (same as `aboveOrEqual`).
    public static let notCarry = Condition.aboveOrEqual
}

/// The string instructions (SDM Vol. 1, 7.3.9 and 19.5.1), usable with a `rep` prefix.
/// The suffix is the element size: b = byte, w = word, d = dword, q = qword (64-bit code only).
public enum StringOperation: Sendable, Hashable, CaseIterable {
    /// Port dx to [(r/e)di].
    case insb, insw, insd
    /// [(r/e)si] to port dx.
    case outsb, outsw, outsd
    /// [(r/e)si] to the accumulator.
    case lodsb, lodsw, lodsd, lodsq
    /// The accumulator to [(r/e)di].
    case stosb, stosw, stosd, stosq
    /// [(r/e)si] to [(r/e)di].
    case movsb, movsw, movsd, movsq

    /// The opcode and element size.
    var encoding: (opcode: UInt8, size: OperandSize) {
        switch self {
        case .insb: (0x6C, .byte)
        case .insw: (0x6D, .word)
        case .insd: (0x6D, .dword)
        case .outsb: (0x6E, .byte)
        case .outsw: (0x6F, .word)
        case .outsd: (0x6F, .dword)
        case .lodsb: (0xAC, .byte)
        case .lodsw: (0xAD, .word)
        case .lodsd: (0xAD, .dword)
        case .lodsq: (0xAD, .qword)
        case .stosb: (0xAA, .byte)
        case .stosw: (0xAB, .word)
        case .stosd: (0xAB, .dword)
        case .stosq: (0xAB, .qword)
        case .movsb: (0xA4, .byte)
        case .movsw: (0xA5, .word)
        case .movsd: (0xA5, .dword)
        case .movsq: (0xA5, .qword)
        }
    }
}
