// Data directives: raw bytes, text, little-endian integers, label addresses, alignment
// (the equivalents of GNU `as` .byte, .ascii, .asciz, .word, .long, .quad, .balign).

extension X86Assembler {
    /// Raw bytes (`.byte`).
    public mutating func bytes(_ values: [UInt8]) { code += values }

    /// The UTF-8 bytes of `text`, without a terminator (`.ascii`).
    public mutating func ascii(_ text: String) { code += Array(text.utf8) }

    /// The UTF-8 bytes of `text` and a NUL byte (`.asciz`), the form `serialPrint(label:)` reads.
    public mutating func asciz(_ text: String) {
        code += Array(text.utf8)
        code.append(0)
    }

    /// One byte.
    public mutating func u8(_ value: UInt8) { code.append(value) }
    /// A little-endian 16-bit value (`.word`).
    public mutating func u16(_ value: UInt16) { code += littleEndian(UInt64(value), count: 2) }
    /// A little-endian 32-bit value (`.long`).
    public mutating func u32(_ value: UInt32) { code += littleEndian(UInt64(value), count: 4) }
    /// A little-endian 64-bit value (`.quad`).
    public mutating func u64(_ value: UInt64) { code += littleEndian(value, count: 8) }

    /// A label's absolute address as 16 bits (it must be below 64 KiB).
    public mutating func u16(_ label: Label) { dataAddress(label, size: 2, directive: "u16") }
    /// A label's absolute address as 32 bits (it must be below 4 GiB).
    public mutating func u32(_ label: Label) { dataAddress(label, size: 4, directive: "u32") }
    /// A label's absolute address as 64 bits.
    public mutating func u64(_ label: Label) { dataAddress(label, size: 8, directive: "u64") }

    /// `count` zero bytes.
    public mutating func zeros(_ count: Int) {
        guard count >= 0 else {
            return fail(.invalidDirective(directive: "zeros", reason: "count \(count) is negative"))
        }
        code += repeatElement(0, count: count)
    }

    /// Pads with `fill` until the absolute address (origin + offset) is a multiple of
    /// `boundary`, a power of two (`.balign boundary, fill`).
    public mutating func align(_ boundary: Int, fill: UInt8 = 0) {
        guard boundary > 0, boundary & (boundary - 1) == 0 else {
            return fail(.invalidDirective(directive: "align", reason: "boundary \(boundary) is not a power of two"))
        }
        items.append(VariableItem(codeOffset: code.count, kind: .align(boundary: boundary, fill: fill)))
    }

    private mutating func dataAddress(_ label: Label, size: Int, directive: String) {
        emitBytes([UInt8](repeating: 0, count: size),
                  fields: [(0, Field(size: size, fixup: (label, 0, .absolute(signExtended: false))))],
                  mnemonic: directive)
    }
}
