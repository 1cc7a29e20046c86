// Memory type range registers: the memory type of each physical address as the firmware set
// it, which an EPT builder copies into leaves so a guest sees the host's caching of MMIO and RAM
// (SDM Vol. 3A, "Memory Type Range Registers (MTRRs)", the "MTRR precedences" rules and the
// IA32_MTRR_DEF_TYPE / IA32_MTRR_PHYSBASEn / IA32_MTRR_PHYSMASKn / IA32_MTRR_FIX* formats).

/// One variable-range MTRR pair.
public struct VariableMTRR: Hashable, Sendable {
    /// IA32_MTRR_PHYSBASEn: bits 7:0 type, bits N-1:12 base.
    public var physBase: UInt64
    /// IA32_MTRR_PHYSMASKn: bit 11 valid, bits N-1:12 mask.
    public var physMask: UInt64

    public init(physBase: UInt64, physMask: UInt64) {
        self.physBase = physBase
        self.physMask = physMask
    }

    /// A valid range of `size` bytes (a power of two, base aligned to it) with `type`.
    public init(base: UInt64, size: UInt64, type: MemoryType, physicalAddressBits: Int = 46) {
        physBase = base & ~0xFFF | UInt64(type.rawValue)
        physMask = ~(size - 1) & physicalAddressMask(bits: physicalAddressBits) & ~0xFFF | 1 << 11
    }

    public var isValid: Bool { physMask & 1 << 11 != 0 }
    public var typeBits: UInt8 { UInt8(truncatingIfNeeded: physBase) }
    public var mask: UInt64 { physMask & ~0xFFF }

    /// True when `address` matches: (address AND mask) == (base AND mask).
    @inlinable public func matches(_ address: UInt64, addressMask: UInt64) -> Bool {
        address & mask & addressMask == physBase & mask & addressMask
    }
}

/// A processor's MTRR settings: the default type, the fixed ranges below 1 MiB and the
/// variable ranges.
public struct MTRRs: Hashable, Sendable {
    /// IA32_MTRR_DEF_TYPE: bits 7:0 default type, bit 10 FE (fixed ranges on), bit 11 E (MTRRs on).
    public var defaultTypeRegister: UInt64
    /// The 88 fixed-range types in address order: 8 x 64 KiB from 0, 16 x 16 KiB from
    /// 0x80000, 64 x 4 KiB from 0xC0000 (IA32_MTRR_FIX64K_00000 ... FIX4K_F8000, one byte each).
    public var fixedTypes: [UInt8]
    public var variable: [VariableMTRR]
    /// MAXPHYADDR.
    public var physicalAddressBits: Int

    public init(defaultTypeRegister: UInt64, fixedTypes: [UInt8] = [], variable: [VariableMTRR] = [],
                physicalAddressBits: Int = 46)
    {
        self.defaultTypeRegister = defaultTypeRegister
        self.fixedTypes = fixedTypes
        self.variable = variable
        self.physicalAddressBits = physicalAddressBits
    }

    /// MTRRs enabled with `defaultType` everywhere.
    public static func uniform(_ defaultType: MemoryType) -> MTRRs {
        MTRRs(defaultTypeRegister: 1 << 11 | UInt64(defaultType.rawValue))
    }

    /// Builds the fixed-range list from the 11 fixed-range MSRs in address order
    /// (FIX64K_00000, FIX16K_80000, FIX16K_A0000, FIX4K_C0000 ... FIX4K_F8000).
    public static func fixedTypes(fromRegisters registers: [UInt64]) -> [UInt8] {
        registers.flatMap { value in (0..<8).map { UInt8(truncatingIfNeeded: value >> (8 * UInt64($0))) } }
    }

    var enabled: Bool { defaultTypeRegister & 1 << 11 != 0 }
    var fixedEnabled: Bool { defaultTypeRegister & 1 << 10 != 0 && fixedTypes.count == 88 }

    /// The fixed-range slot and its bounds for an address below 1 MiB.
    func fixedSlot(_ address: UInt64) -> (index: Int, start: UInt64, end: UInt64) {
        if address < 0x8_0000 {
            let i = Int(address >> 16)
            return (i, UInt64(i) << 16, UInt64(i + 1) << 16)
        } else if address < 0xC_0000 {
            let i = Int((address - 0x8_0000) >> 14)
            return (8 + i, 0x8_0000 + UInt64(i) << 14, 0x8_0000 + UInt64(i + 1) << 14)
        }
        let i = Int((address - 0xC_0000) >> 12)
        return (24 + i, 0xC_0000 + UInt64(i) << 12, 0xC_0000 + UInt64(i + 1) << 12)
    }

    /// The memory type of `address`. MTRRs off: UC. Fixed ranges win below 1 MiB. Several
    /// variable matches: UC if any is UC, WT if WT and WB, the common type if all agree; other
    /// overlaps are undefined in the SDM and resolve to UC here.
    public func type(at address: UInt64) -> MemoryType {
        guard enabled else { return .uncacheable }
        if fixedEnabled && address < 0x10_0000 {
            return MemoryType(rawValue: fixedTypes[fixedSlot(address).index]) ?? .uncacheable
        }
        let addressMask = physicalAddressMask(bits: physicalAddressBits)
        var found: MemoryType? = nil
        var sawWT = false, sawWB = false, conflict = false
        for range in variable where range.isValid && range.matches(address, addressMask: addressMask) {
            guard let type = MemoryType(rawValue: range.typeBits) else { return .uncacheable }
            if type == .uncacheable { return .uncacheable }
            if type == .writeThrough { sawWT = true }
            if type == .writeBack { sawWB = true }
            if let found, found != type { conflict = true }
            found = type
        }
        if conflict { return sawWT && sawWB && !variableOthers(address) ? .writeThrough : .uncacheable }
        return found ?? MemoryType(rawValue: UInt8(truncatingIfNeeded: defaultTypeRegister)) ?? .uncacheable
    }

    /// True when a matching range has a type other than WT or WB.
    private func variableOthers(_ address: UInt64) -> Bool {
        let addressMask = physicalAddressMask(bits: physicalAddressBits)
        return variable.contains { $0.isValid && $0.matches(address, addressMask: addressMask)
            && $0.typeBits != MemoryType.writeThrough.rawValue && $0.typeBits != MemoryType.writeBack.rawValue }
    }

    /// The one memory type of every byte in `[start, start + size)`, or nil when it varies:
    /// a builder then maps the range with smaller pages.
    public func uniformType(from start: UInt64, size: UInt64) -> MemoryType? {
        let end = start &+ size
        let first = type(at: start)
        // The type is constant between breakpoints: fixed-range slot edges and variable-range
        // edges. Check the type at every breakpoint inside the range.
        var point = start
        if fixedEnabled && enabled {
            while point < end && point < 0x10_0000 {
                if type(at: point) != first { return nil }
                point = fixedSlot(point).end
            }
        }
        if point >= end { return first }
        if type(at: 0x10_0000 > start ? 0x10_0000 : start) != first { return nil }
        let addressMask = physicalAddressMask(bits: physicalAddressBits)
        for range in variable where range.isValid {
            let mask = range.mask & addressMask
            let span = (~mask & addressMask) &+ 1
            // A contiguous mask (ones from bit N-1 down) selects one aligned block.
            if span & (span &- 1) == 0 && mask | (span &- 1) == addressMask {
                let blockStart = range.physBase & mask
                for edge in [blockStart, blockStart &+ span] where edge > point && edge < end {
                    if type(at: edge) != first { return nil }
                }
            } else {
                // A non-contiguous mask matches a periodic set: its edges are multiples of the
                // lowest mask bit. Check each, giving up (non-uniform) past a bound.
                let step = mask & (~mask &+ 1)
                guard step != 0, (end - point) / step <= 4096 else { return nil }
                var edge = (point / step + 1) * step
                while edge < end {
                    if type(at: edge) != first { return nil }
                    edge += step
                }
            }
        }
        return first
    }
}
