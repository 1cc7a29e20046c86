// Errors found while assembling. Instruction methods do not throw: the first problem is kept
// and `assemble()` throws it, so a program reads as a plain list of instructions.

/// Why `X86Assembler.assemble()` failed.
public enum AssemblerError: Error, Equatable, Sendable, CustomStringConvertible {
    /// A label was referenced but `bind(_:)` was never called for it.
    case unboundLabel(label: String, usedBy: String)
    /// `bind(_:)` was called twice for one label.
    case labelAlreadyBound(label: String)
    /// A label that another assembler created.
    case foreignLabel(usedBy: String)
    /// A branch target is farther away than the instruction's displacement can reach
    /// (`loop` has only rel8; `jmp`/`jcc` widen to rel16/rel32 by themselves).
    case branchOutOfRange(instruction: String, label: String, distance: Int64, displacementBits: Int)
    /// A label's absolute address does not fit the field that holds it.
    case addressOutOfRange(instruction: String, label: String, address: UInt64, fieldBits: Int)
    /// An immediate does not fit the operand.
    case immediateOutOfRange(instruction: String, value: String, bits: Int)
    /// An operand combination that the instruction or the code size cannot encode.
    case invalidOperands(instruction: String, reason: String)
    /// A data or alignment directive with a bad argument.
    case invalidDirective(directive: String, reason: String)

    public var description: String {
        switch self {
        case .unboundLabel(let label, let usedBy):
            "label '\(label)' is used by '\(usedBy)' but never bound"
        case .labelAlreadyBound(let label):
            "label '\(label)' is bound twice"
        case .foreignLabel(let usedBy):
            "'\(usedBy)' uses a label created by another assembler"
        case .branchOutOfRange(let instruction, let label, let distance, let bits):
            "'\(instruction)' to label '\(label)': distance \(distance) does not fit rel\(bits)"
        case .addressOutOfRange(let instruction, let label, let address, let bits):
            "'\(instruction)': address 0x\(String(address, radix: 16, uppercase: true)) of label '\(label)' "
                + "does not fit a \(bits)-bit field"
        case .immediateOutOfRange(let instruction, let value, let bits):
            "'\(instruction)': immediate \(value) does not fit \(bits) bits"
        case .invalidOperands(let instruction, let reason):
            "'\(instruction)': \(reason)"
        case .invalidDirective(let directive, let reason):
            "'\(directive)': \(reason)"
        }
    }
}
