// What an arithmetic or logic instruction with a memory operand computes once the emulating
// VMM has read that operand from a device: the result at the access width and the six status
// flags as the processor sets them (Intel SDM Vol. 1, 3.4.3.1 "Status Flags"; Vol. 2, each
// instruction's "Flags Affected"). With the decoder, this is how a backend without an in-kernel
// emulator (the bare-metal engines) turns `add [mmio], 1` into a read, a write and RFLAGS.
//
// Embedded-safe: plain integer arithmetic, no allocation.

/// RFLAGS' status flags (SDM Vol. 1, Figure 3-8).
public enum StatusFlags {
    public static let carry: UInt64 = 1 << 0
    public static let parity: UInt64 = 1 << 2
    public static let auxiliaryCarry: UInt64 = 1 << 4
    public static let zero: UInt64 = 1 << 6
    public static let sign: UInt64 = 1 << 7
    public static let overflow: UInt64 = 1 << 11
    /// All six: the bits an arithmetic instruction replaces in RFLAGS.
    public static let all: UInt64 = carry | parity | auxiliaryCarry | zero | sign | overflow
}

extension ArithmeticOperation {
    /// Whether the instruction writes its result (CMP and TEST only set flags).
    @inlinable public var writesResult: Bool { self != .cmp && self != .test }

    /// `destination OP source` at `width` bytes (1, 2, 4 or 8) with `carryIn` (RFLAGS.CF, used
    /// by ADC and SBB): the result, masked to the width, and the status flags. AND, OR, XOR and
    /// TEST clear CF and OF; AF, which the SDM leaves undefined for them, is cleared too.
    public func apply(_ destination: UInt64, _ source: UInt64, width: UInt8, carryIn: Bool) -> (result: UInt64, flags: UInt64) {
        let bits = UInt64(width) * 8
        let mask: UInt64 = bits >= 64 ? .max : (1 << bits) - 1
        let signBit: UInt64 = 1 << (bits - 1)
        let d = destination & mask, s = source & mask, c: UInt64 = carryIn ? 1 : 0
        var result: UInt64
        var flags: UInt64 = 0
        switch self {
        case .add, .adc:
            let carry = self == .adc ? c : 0
            let (partial, overflow1) = d.addingReportingOverflow(s)
            let (sum, overflow2) = partial.addingReportingOverflow(carry)
            result = sum & mask
            // Carry out of the width: a 64-bit overflow, or a bit past the mask for narrower widths.
            let carriedOut = bits >= 64 ? (overflow1 || overflow2) : sum > mask
            if carriedOut { flags |= StatusFlags.carry }
            if (d ^ result) & (s ^ result) & signBit != 0 { flags |= StatusFlags.overflow }
            if (d ^ s ^ result) & 0x10 != 0 { flags |= StatusFlags.auxiliaryCarry }
        case .sub, .sbb, .cmp:
            let borrowIn = self == .sbb ? c : 0
            result = (d &- s &- borrowIn) & mask
            // Borrow: destination < source + borrow-in, as integers.
            if d < s || (borrowIn == 1 && d == s) { flags |= StatusFlags.carry }
            if (d ^ s) & (d ^ result) & signBit != 0 { flags |= StatusFlags.overflow }
            if (d ^ s ^ result) & 0x10 != 0 { flags |= StatusFlags.auxiliaryCarry }
        case .and, .test: result = d & s
        case .or: result = d | s
        case .xor: result = d ^ s
        }
        if result == 0 { flags |= StatusFlags.zero }
        if result & signBit != 0 { flags |= StatusFlags.sign }
        // PF: set when the low byte has an even number of 1 bits.
        if UInt8(truncatingIfNeeded: result).nonzeroBitCount % 2 == 0 { flags |= StatusFlags.parity }
        return (result, flags)
    }
}

extension OperandRegister {
    /// The register's value after an instruction writes `value` (its low `width` bytes) to it,
    /// given its value `old` before: 32-bit writes clear the upper half in 64-bit code, 8- and
    /// 16-bit writes keep the bytes they do not cover (SDM Vol. 1, 3.4.1.1), AH-BH are bits 8-15.
    public func valueAfterWrite(old: UInt64, value: UInt64, width: UInt8, codeSize: InstructionDecoder.Mode) -> UInt64 {
        if highByte { return old & ~0xFF00 | (value & 0xFF) << 8 }
        switch width {
        case 8: return value
        case 4: return codeSize == .bits64 ? value & 0xFFFF_FFFF : old & ~0xFFFF_FFFF | value & 0xFFFF_FFFF
        default:
            let mask: UInt64 = (1 << (8 * UInt64(width))) - 1
            return old & ~mask | value & mask
        }
    }

    /// The operand this register supplies from its full value `value` (AH-BH: bits 8-15).
    @inlinable public func operand(of value: UInt64) -> UInt64 { highByte ? value >> 8 & 0xFF : value }
}
