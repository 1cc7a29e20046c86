// A small x86 assembler for guest programs: 16-, 32- and 64-bit code, labels with forward and
// backward references, branch relaxation. Encodings follow SDM Vol. 2 and match GNU `as`
// byte for byte for the instructions it offers (the tests compare the two).

/// Assembles x86 machine code in memory.
///
/// ```swift
/// var asm = X86Assembler(bits: .bits64, origin: 0x10_0000)
/// let message = asm.label("message")
/// asm.serialPrint(label: message)
/// asm.hlt()
/// asm.bind(message)
/// asm.asciz("hello\n")
/// let bytes = try asm.assemble()
/// ```
///
/// Instruction methods do not throw. The first invalid operand, immediate or label is
/// remembered and `assemble()` throws it as an `AssemblerError`.
///
/// `jmp` and `jcc` start short (rel8) and widen to rel16/rel32 only when the target is out of
/// reach, the way GNU `as` relaxes branches; `loop` has only rel8, so a far target is an error.
public struct X86Assembler: Sendable {
    /// The default operand and address size of the code.
    public let codeSize: CodeSize
    /// The address of the first byte: labels' absolute addresses are `origin + offset`. In real
    /// mode this is the offset within the code segment (CS base excluded).
    public let origin: UInt64

    /// Fixed-size bytes; branches and alignment are `items` inserted between them.
    var code: [UInt8] = []
    var items: [VariableItem] = []
    var labels: [LabelState] = []
    var fixups: [Fixup] = []
    var firstError: AssemblerError?

    /// An empty program of `bits` code whose first byte will sit at `origin`.
    public init(bits: CodeSize, origin: UInt64 = 0) {
        self.codeSize = bits
        self.origin = origin
    }

    /// A new, unbound label. `name` appears in error messages.
    public mutating func label(_ name: String? = nil) -> Label {
        let label = Label(id: labels.count)
        labels.append(LabelState(name: name ?? "L\(labels.count)", position: nil))
        return label
    }

    /// Places `label` at the current position.
    public mutating func bind(_ label: Label) {
        guard labels.indices.contains(label.id) else { return fail(.foreignLabel(usedBy: "bind")) }
        guard labels[label.id].position == nil else {
            return fail(.labelAlreadyBound(label: labels[label.id].name))
        }
        labels[label.id].position = currentPosition
    }

    /// The machine code, with every label resolved.
    public func assemble() throws(AssemblerError) -> [UInt8] {
        let layout = try resolveLayout()
        var output: [UInt8] = []
        output.reserveCapacity(code.count + layout.itemSizes.reduce(0, +))
        var cursor = 0
        for (index, item) in items.enumerated() {
            output += code[cursor..<item.codeOffset]
            cursor = item.codeOffset
            switch item.kind {
            case .branch(let label, let condition, _):
                let size = layout.itemSizes[index]
                let end = layout.address(codeOffset: item.codeOffset, itemIndex: index) &+ UInt64(size)
                let distance = Int64(bitPattern: layout.labelAddresses[label.id]! &- end)
                output += branchBytes(condition: condition, size: size, distance: distance)
            case .align(_, let fill):
                output += repeatElement(fill, count: layout.itemSizes[index])
            }
        }
        output += code[cursor...]
        for fixup in fixups {
            try patch(fixup, in: &output, layout: layout)
        }
        return output
    }

    /// The absolute address of a bound label in the assembled program.
    public func address(of label: Label) throws(AssemblerError) -> UInt64 {
        try checkLabel(label, usedBy: "address(of:)")
        return try resolveLayout().labelAddresses[label.id]!
    }

    // MARK: Internal state

    struct Position: Sendable {
        var codeOffset: Int
        /// How many variable-size items precede this position.
        var itemIndex: Int
    }

    struct LabelState: Sendable {
        var name: String
        var position: Position?
    }

    struct Fixup: Sendable {
        enum Kind: Sendable {
            /// The label's address; `signExtended` when the CPU sign-extends a 32-bit field to 64.
            case absolute(signExtended: Bool)
            /// The distance from the end of the instruction (`instructionEnd` bytes after the
            /// field's start) to the label.
            case relative(instructionEnd: Int)
        }
        var position: Position
        var size: Int
        var label: Label
        var addend: Int64
        var kind: Kind
        var instruction: String
    }

    struct VariableItem: Sendable {
        enum Kind: Sendable {
            /// `jmp` (condition nil) or `jcc`, short or near as the layout decides.
            case branch(label: Label, condition: Condition?, instruction: String)
            case align(boundary: Int, fill: UInt8)
        }
        var codeOffset: Int
        var kind: Kind
    }

    var currentPosition: Position { Position(codeOffset: code.count, itemIndex: items.count) }

    mutating func fail(_ error: AssemblerError) {
        if firstError == nil { firstError = error }
    }

    func labelName(_ label: Label) -> String {
        labels.indices.contains(label.id) ? labels[label.id].name : "?"
    }

    func checkLabel(_ label: Label, usedBy instruction: String) throws(AssemblerError) {
        guard labels.indices.contains(label.id) else { throw .foreignLabel(usedBy: instruction) }
        guard labels[label.id].position != nil else {
            throw .unboundLabel(label: labels[label.id].name, usedBy: instruction)
        }
    }
}
