// The MSR bitmaps (SDM Vol. 3C, 25.6.9) and the I/O bitmaps (25.6.4): 4 KiB pages the
// processor reads to decide whether RDMSR/WRMSR or IN/OUT cause a VM exit.

/// Read or write access to an MSR.
public enum MSRAccess: Sendable, Hashable, CaseIterable { case read, write }

/// The 4 KiB MSR-bitmap page: read-low (MSRs 0-1FFFH) at 0, read-high (C0000000H-C0001FFFH)
/// at 1024, write-low at 2048, write-high at 3072. A set bit makes the access exit. An MSR
/// outside both ranges always exits, whatever the bitmap says (SDM 26.1.3).
public struct MSRBitmap: Hashable, Sendable {
    /// The page, 4096 bytes, ready to copy to guest-physical memory.
    public private(set) var bytes: [UInt8]

    /// A bitmap where every access exits (`trapAll`) or none does.
    public init(trapAll: Bool = true) { bytes = Array(repeating: trapAll ? 0xFF : 0, count: 4096) }

    /// Whether `msr` is in one of the two ranges the bitmap covers.
    public static func covers(_ msr: UInt32) -> Bool { msr <= 0x1FFF || (0xC000_0000...0xC000_1FFF).contains(msr) }

    /// The byte offset and bit of `msr` for `access`, or nil when the MSR is not covered.
    public static func position(of msr: UInt32, _ access: MSRAccess) -> (byte: Int, bit: Int)? {
        let base: Int
        let index: Int
        if msr <= 0x1FFF {
            base = 0
            index = Int(msr)
        } else if (0xC000_0000...0xC000_1FFF).contains(msr) {
            base = 1024
            index = Int(msr - 0xC000_0000)
        } else {
            return nil
        }
        return (base + (access == .write ? 2048 : 0) + index / 8, index % 8)
    }

    /// Whether `access` to `msr` causes a VM exit.
    public func exits(_ msr: UInt32, _ access: MSRAccess) -> Bool {
        guard let (byte, bit) = Self.position(of: msr, access) else { return true }
        return bytes[byte] & (1 << UInt8(bit)) != 0
    }

    /// Makes `access` to `msr` exit (`trap`) or pass through. Returns false when the MSR is
    /// outside the covered ranges (it always exits).
    @discardableResult
    public mutating func setExits(_ msr: UInt32, _ access: MSRAccess, _ trap: Bool) -> Bool {
        guard let (byte, bit) = Self.position(of: msr, access) else { return false }
        if trap { bytes[byte] |= 1 << UInt8(bit) } else { bytes[byte] &= ~(1 << UInt8(bit)) }
        return true
    }

    /// Passes both reads and writes of `msr` through to the guest.
    @discardableResult
    public mutating func passThrough(_ msr: UInt32) -> Bool {
        setExits(msr, .read, false) && setExits(msr, .write, false)
    }

    /// Traps both reads and writes of `msr`.
    @discardableResult
    public mutating func trap(_ msr: UInt32) -> Bool {
        setExits(msr, .read, true) && setExits(msr, .write, true)
    }

    /// How many (MSR, access) pairs pass through.
    public var passThroughCount: Int {
        // 64 bits at a time: the page is 512 words.
        bytes.withUnsafeBytes { raw in
            var trapped = 0
            var offset = 0
            while offset + 8 <= raw.count {
                trapped += raw.loadUnaligned(fromByteOffset: offset, as: UInt64.self).nonzeroBitCount
                offset += 8
            }
            while offset < raw.count {
                trapped += raw[offset].nonzeroBitCount
                offset += 1
            }
            return raw.count * 8 - trapped
        }
    }
}

/// I/O bitmaps A (ports 0000H-7FFFH) and B (8000H-FFFFH), 4 KiB each; a set bit makes an
/// access that touches the port exit (SDM 26.1.3: every byte a multi-byte access covers counts,
/// and an access that wraps past FFFFH always exits).
public struct IOBitmaps: Hashable, Sendable {
    /// Bitmap A, 4096 bytes.
    public private(set) var a: [UInt8]
    /// Bitmap B, 4096 bytes.
    public private(set) var b: [UInt8]

    public init(trapAll: Bool = true) {
        a = Array(repeating: trapAll ? 0xFF : 0, count: 4096)
        b = Array(repeating: trapAll ? 0xFF : 0, count: 4096)
    }

    /// Whether `port` alone is trapped.
    public func traps(_ port: IOPort) -> Bool {
        let index = Int(port.rawValue & 0x7FFF)
        let page = port.rawValue < 0x8000 ? a : b
        return page[index / 8] & (1 << UInt8(index % 8)) != 0
    }

    /// Whether an access of `size` bytes at `port` exits.
    public func exits(_ port: IOPort, size: Int) -> Bool {
        if Int(port.rawValue) + size > 0x10000 { return true }
        for offset in 0..<size where traps(IOPort(port.rawValue + UInt16(offset))) { return true }
        return false
    }

    /// Traps or passes through `count` ports from `port` (stopping at FFFFH).
    public mutating func setTrap(_ port: IOPort, count: Int = 1, _ trap: Bool) {
        var current = Int(port.rawValue)
        let end = min(current + count, 0x10000)
        while current < end {
            let index = current & 0x7FFF
            let mask: UInt8 = 1 << UInt8(index % 8)
            if current < 0x8000 {
                if trap { a[index / 8] |= mask } else { a[index / 8] &= ~mask }
            } else {
                if trap { b[index / 8] |= mask } else { b[index / 8] &= ~mask }
            }
            current += 1
        }
    }
}
