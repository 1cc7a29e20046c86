// How a string instruction (MOVS, STOS, LODS, INS, OUTS; with REP) moves its registers, for a
// backend that emulates it element by element or in batches (SDM Vol. 2, each instruction and
// "REP/REPE/REPZ/REPNE/REPNZ"; Vol. 1, 3.6 "Operand-size and Address-size Attributes"): RSI and
// RDI step by the element size, up or down as RFLAGS.DF says, RCX counts down under REP, all
// three at the instruction's address size. Embedded-safe.

public enum StringInstruction {
    /// The part of a register an address size of `addressWidth` bytes uses.
    @inlinable public static func mask(addressWidth: UInt8) -> UInt64 {
        addressWidth >= 8 ? .max : (1 << (8 * UInt64(addressWidth))) - 1
    }

    /// The elements a REP prefix has left: RCX at the address size.
    @inlinable public static func remaining(_ rcx: UInt64, addressWidth: UInt8) -> UInt64 {
        rcx & mask(addressWidth: addressWidth)
    }

    /// RSI or RDI after `elements` elements of `width` bytes, downwards when `down` (DF set):
    /// the address-size part wraps and, for a 16-bit address size, the bits above it stay; a
    /// 32-bit one clears bits 63:32, as any 32-bit register write does in 64-bit mode.
    @inlinable public static func advanced(_ register: UInt64, elements: UInt64, width: UInt8, down: Bool, addressWidth: UInt8) -> UInt64 {
        let bytes = elements &* UInt64(width)
        let moved = down ? register &- bytes : register &+ bytes
        return merged(register, moved, addressWidth: addressWidth)
    }

    /// RCX after `elements` repetitions, at the address size.
    @inlinable public static func counted(_ rcx: UInt64, elements: UInt64, addressWidth: UInt8) -> UInt64 {
        merged(rcx, rcx &- elements, addressWidth: addressWidth)
    }

    @inlinable static func merged(_ old: UInt64, _ new: UInt64, addressWidth: UInt8) -> UInt64 {
        switch addressWidth {
        case 2: return old & ~0xFFFF | new & 0xFFFF
        case 4: return new & 0xFFFF_FFFF
        default: return new
        }
    }
}
