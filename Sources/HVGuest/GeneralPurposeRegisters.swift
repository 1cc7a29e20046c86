// The x86 general-purpose registers as typed values (SDM Vol. 1, 3.4.1 and 3.7.2.1). The width
// is part of the type, so `mov(.rax, .ebx)` does not compile: both operands must be one width.

/// The size of an instruction's operand, in bytes (SDM Vol. 1, 3.6 "operand-size attribute").
public enum OperandSize: Int, Sendable, Hashable, CustomStringConvertible {
    /// 8 bits.
    case byte = 1
    /// 16 bits.
    case word = 2
    /// 32 bits.
    case dword = 4
    /// 64 bits (64-bit code only).
    case qword = 8

    /// The size in bits.
    @inlinable public var bits: Int { rawValue * 8 }

    public var description: String {
        switch self {
        case .byte: "byte"
        case .word: "word"
        case .dword: "dword"
        case .qword: "qword"
        }
    }
}

/// The width of a register type: `Bits8`, `Bits16`, `Bits32` or `Bits64`.
public protocol RegisterWidth: Sendable {
    /// The operand size of every register of this width.
    static var size: OperandSize { get }
}

/// 8-bit registers: al..bl, ah..bh, spl..dil, r8b..r15b.
public enum Bits8: RegisterWidth { public static var size: OperandSize { .byte } }
/// 16-bit registers: ax..di, r8w..r15w.
public enum Bits16: RegisterWidth { public static var size: OperandSize { .word } }
/// 32-bit registers: eax..edi, r8d..r15d.
public enum Bits32: RegisterWidth { public static var size: OperandSize { .dword } }
/// 64-bit registers: rax..r15.
public enum Bits64: RegisterWidth { public static var size: OperandSize { .qword } }

/// A general-purpose register of one width, named by its static members (`.rax`, `.eax`, `.ax`,
/// `.al`). `number` is the 4-bit register encoding (SDM Vol. 2A, Table 2-2 and 3-1).
public struct Register<Width: RegisterWidth>: Hashable, Sendable, CustomStringConvertible {
    /// The register number as encoded in ModRM/REX (0 = rax family ... 15 = r15 family).
    public let number: UInt8
    /// True for ah, ch, dh, bh: numbers 4-7 without a REX prefix (SDM Vol. 2A, 2.2.1).
    public let isHighByte: Bool

    @usableFromInline init(_ number: UInt8, highByte: Bool = false) {
        self.number = number
        self.isHighByte = highByte
    }

    /// The register's assembler name, e.g. "r9d".
    public var description: String { gpr.name }

    var gpr: GPR { GPR(number: number, size: Width.size, isHighByte: isHighByte) }
}

/// 8-bit register.
public typealias Register8 = Register<Bits8>
/// 16-bit register.
public typealias Register16 = Register<Bits16>
/// 32-bit register.
public typealias Register32 = Register<Bits32>
/// 64-bit register.
public typealias Register64 = Register<Bits64>

extension Register where Width == Bits8 {
    /// Low bytes of rax..rbx, encodable in every code size.
    public static let al = Self(0), cl = Self(1), dl = Self(2), bl = Self(3)
    /// High bytes of ax..bx; not encodable together with a REX prefix.
    public static let ah = Self(4, highByte: true), ch = Self(5, highByte: true)
    public static let dh = Self(6, highByte: true), bh = Self(7, highByte: true)
    /// Low bytes of rsp..rdi; 64-bit mode only (they need a REX prefix).
    public static let spl = Self(4), bpl = Self(5), sil = Self(6), dil = Self(7)
    /// Low bytes of r8..r15; 64-bit mode only.
    public static let r8b = Self(8), r9b = Self(9), r10b = Self(10), r11b = Self(11)
    public static let r12b = Self(12), r13b = Self(13), r14b = Self(14), r15b = Self(15)
}

extension Register where Width == Bits16 {
    /// The 16-bit registers of the 8086.
    public static let ax = Self(0), cx = Self(1), dx = Self(2), bx = Self(3)
    public static let sp = Self(4), bp = Self(5), si = Self(6), di = Self(7)
    /// Low words of r8..r15; 64-bit mode only.
    public static let r8w = Self(8), r9w = Self(9), r10w = Self(10), r11w = Self(11)
    public static let r12w = Self(12), r13w = Self(13), r14w = Self(14), r15w = Self(15)
}

extension Register where Width == Bits32 {
    /// The 32-bit registers of the 80386; writing one in 64-bit mode zeroes bits 63:32.
    public static let eax = Self(0), ecx = Self(1), edx = Self(2), ebx = Self(3)
    public static let esp = Self(4), ebp = Self(5), esi = Self(6), edi = Self(7)
    /// Low doublewords of r8..r15; 64-bit mode only.
    public static let r8d = Self(8), r9d = Self(9), r10d = Self(10), r11d = Self(11)
    public static let r12d = Self(12), r13d = Self(13), r14d = Self(14), r15d = Self(15)
}

extension Register where Width == Bits64 {
    /// The legacy registers widened to 64 bits; 64-bit mode only.
    public static let rax = Self(0), rcx = Self(1), rdx = Self(2), rbx = Self(3)
    public static let rsp = Self(4), rbp = Self(5), rsi = Self(6), rdi = Self(7)
    /// The registers added by x86-64; 64-bit mode only.
    public static let r8 = Self(8), r9 = Self(9), r10 = Self(10), r11 = Self(11)
    public static let r12 = Self(12), r13 = Self(13), r14 = Self(14), r15 = Self(15)
}

/// A register with its width erased, as the encoder sees it.
struct GPR: Hashable, Sendable {
    var number: UInt8
    var size: OperandSize
    var isHighByte: Bool

    /// r8-r15 and spl/bpl/sil/dil exist only with a REX prefix (SDM Vol. 2A, 2.2.1.2).
    var needsREX: Bool { number >= 8 || (size == .byte && number >= 4 && !isHighByte) }

    /// True for al, ax, eax, rax: the accumulator has short encodings.
    var isAccumulator: Bool { number == 0 }

    var name: String {
        let legacy = ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di"]
        if number >= 8 {
            let suffix = switch size { case .byte: "b"; case .word: "w"; case .dword: "d"; case .qword: "" }
            return "r\(number)\(suffix)"
        }
        let base = legacy[Int(number)]
        switch size {
        case .byte:
            if isHighByte { return ["ah", "ch", "dh", "bh"][Int(number) - 4] }
            return ["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil"][Int(number)]
        case .word: return base
        case .dword: return "e" + base
        case .qword: return "r" + base
        }
    }
}
