// The I/O APIC (Intel 82093AA I/O APIC datasheet, 3.0 "Register Description"; the PCH datasheets'
// "Advanced Programmable Interrupt Controller (APIC)" chapter for the version-0x20 EOI register).
// The SDM describes only what the local APIC sees of it (SDM 11.8.5, EOI broadcast).
//
// Registers are reached indirectly: software writes an index to IOREGSEL (base + 0x00) and reads
// or writes the selected 32-bit register through IOWIN (base + 0x10).

/// One redirection table entry (82093AA 3.2.4, "IOREDTBL[23:0]").
public struct IOAPICRedirectionEntry: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The reset value: masked.
    public static let masked = IOAPICRedirectionEntry(rawValue: 1 << 16)
    /// Delivery status (12) and remote IRR (14) are read-only.
    public static let readOnlyBits: UInt64 = 1 << 12 | 1 << 14

    /// An entry that sends `message` (8-bit xAPIC destination), masked or not.
    public init(_ message: APICInterruptMessage, masked: Bool = false, activeLow: Bool = false) {
        var raw = UInt64(message.vector) | UInt64(message.deliveryMode.rawValue) << 8
        raw |= UInt64(message.destinationMode.rawValue) << 11 | (activeLow ? 1 << 13 : 0)
        raw |= UInt64(message.triggerMode.rawValue) << 15 | (masked ? 1 << 16 : 0)
        rawValue = raw | UInt64(message.destination & 0xFF) << 56
    }

    /// Bits 7:0.
    @inlinable public var vector: UInt8 { UInt8(truncatingIfNeeded: rawValue) }
    /// Bits 10:8.
    @inlinable public var deliveryMode: APICDeliveryMode { APICDeliveryMode(bits: rawValue, shift: 8) }
    /// Bit 11.
    @inlinable public var destinationMode: APICDestinationMode { rawValue & (1 << 11) != 0 ? .logical : .physical }
    /// Bit 13: the input pin is active low (informational here: `setIRQ` takes the asserted state).
    @inlinable public var activeLow: Bool { rawValue & (1 << 13) != 0 }
    /// Bit 14: a level-triggered interrupt was delivered and awaits its EOI.
    @inlinable public var remoteIRR: Bool { rawValue & (1 << 14) != 0 }
    /// Bit 15.
    @inlinable public var triggerMode: APICTriggerMode { rawValue & (1 << 15) != 0 ? .level : .edge }
    /// Bit 16.
    @inlinable public var isMasked: Bool { rawValue & (1 << 16) != 0 }
    /// Bits 63:56: the APIC ID (physical) or logical destination set.
    @inlinable public var destination: UInt8 { UInt8(truncatingIfNeeded: rawValue >> 56) }

    /// Bit 48: the entry is in VT-d remappable format (VT-d 5.1.5.1 "I/OxAPIC Programming").
    @inlinable public var isRemappable: Bool { rawValue & (1 << 48) != 0 }
    /// The interrupt-remapping table index of a remappable entry: bits 63:49 are index[14:0] and
    /// bit 11 is index[15] (VT-d 5.1.5.1).
    @inlinable public var remappingIndex: UInt16 {
        UInt16(truncatingIfNeeded: rawValue >> 49) | UInt16(truncatingIfNeeded: (rawValue >> 11) & 1) << 15
    }

    /// The message this entry sends (compatibility format).
    public var message: APICInterruptMessage {
        APICInterruptMessage(
            vector: vector, deliveryMode: deliveryMode, destinationMode: destinationMode,
            destination: UInt32(destination), triggerMode: triggerMode)
    }
}

/// One interrupt the I/O APIC sends: route `message` to the local APICs it selects.
public struct IOAPICDelivery: Hashable, Sendable {
    /// The input line (GSI relative to this I/O APIC) that caused it.
    public var line: Int
    public var message: APICInterruptMessage
    /// The entry as it was when sent (remappable entries carry their IRTE index).
    public var entry: IOAPICRedirectionEntry

    public init(line: Int, entry: IOAPICRedirectionEntry) {
        self.line = line
        self.entry = entry
        self.message = entry.message
    }
}

/// The deliveries one register write or EOI caused, lowest line first. Holds a reference to the
/// table it came from instead of allocating.
public struct IOAPICDeliveries: Sequence, Sendable {
    /// Bit `n`: line `n` delivered.
    public let lines: UInt32
    let table: [UInt64]

    static let none = IOAPICDeliveries(lines: 0, table: [])

    public var isEmpty: Bool { lines == 0 }
    public var count: Int { lines.nonzeroBitCount }

    public struct Iterator: IteratorProtocol {
        var remaining: UInt32
        let table: [UInt64]
        public mutating func next() -> IOAPICDelivery? {
            guard remaining != 0 else { return nil }
            let line = remaining.trailingZeroBitCount
            remaining &= remaining - 1
            return IOAPICDelivery(line: line, entry: IOAPICRedirectionEntry(rawValue: table[line]))
        }
    }

    public func makeIterator() -> Iterator { Iterator(remaining: lines, table: table) }
}

/// An I/O APIC with 24 redirection entries (82093AA). A value: copy it to snapshot it.
public struct IOAPIC: Sendable {
    /// The conventional base of the first I/O APIC.
    public static let defaultBaseAddress: UInt64 = 0xFEC0_0000
    /// MMIO offsets in the 4 KiB window.
    public static let registerSelectOffset: UInt32 = 0x00
    public static let windowOffset: UInt32 = 0x10
    /// The EOI register of version 0x20 I/O APICs (PCH datasheets): write a vector.
    public static let eoiOffset: UInt32 = 0x40
    /// The number of redirection entries (the version register reports 23, the highest index).
    public static let lineCount = 24

    /// Version register bits 7:0: 0x11 is the 82093AA (KVM's in-kernel I/O APIC), 0x20 adds the
    /// EOI register (QEMU's default, needed by guests that suppress EOI broadcasts).
    public let version: UInt8
    /// IOREGSEL: the index IOWIN reaches.
    public internal(set) var registerSelect: UInt8 = 0
    /// The 4-bit I/O APIC ID (IOAPICID bits 27:24); the arbitration ID follows it.
    public internal(set) var id: UInt8
    /// The redirection table, one raw entry per line.
    public internal(set) var table: [UInt64]
    /// Bit `n`: line `n` is asserted now.
    public internal(set) var assertedLines: UInt32 = 0

    /// An I/O APIC after reset: every entry masked.
    public init(id: UInt8 = 0, version: UInt8 = 0x20) {
        self.id = id & 0xF
        self.version = version
        self.table = [UInt64](repeating: IOAPICRedirectionEntry.masked.rawValue, count: Self.lineCount)
    }

    /// A redirection entry.
    public func entry(_ line: Int) -> IOAPICRedirectionEntry { IOAPICRedirectionEntry(rawValue: table[line]) }

    /// The register IOWIN shows at `index`: 0x00 ID, 0x01 version (max redirection entry in bits
    /// 23:16), 0x02 arbitration ID, 0x10 + 2n / 0x11 + 2n low / high dword of entry n; others 0.
    public func register(_ index: UInt8) -> UInt32 {
        switch index {
        case 0x00: UInt32(id) << 24
        case 0x01: UInt32(version) | UInt32(Self.lineCount - 1) << 16
        case 0x02: UInt32(id) << 24
        case 0x10..<(0x10 + 2 * UInt8(Self.lineCount)):
            UInt32(truncatingIfNeeded: table[Int(index - 0x10) >> 1] >> (index & 1 == 0 ? 0 : 32))
        default: 0
        }
    }

    /// A 32-bit MMIO read: IOREGSEL, IOWIN; other offsets read 0.
    public func read(offset: UInt32) -> UInt32 {
        switch offset {
        case Self.registerSelectOffset: UInt32(registerSelect)
        case Self.windowOffset: register(registerSelect)
        default: 0
        }
    }

    /// A 32-bit MMIO write: IOREGSEL selects, IOWIN writes the selected register, EOI (version 0x20)
    /// ends a level-triggered interrupt. Unmasking a level entry whose line is asserted delivers.
    public mutating func write(offset: UInt32, value: UInt32) -> IOAPICDeliveries {
        switch offset {
        case Self.registerSelectOffset: registerSelect = UInt8(truncatingIfNeeded: value)
        case Self.windowOffset: return writeRegister(registerSelect, value: value)
        case Self.eoiOffset where version >= 0x20: return endOfInterrupt(vector: UInt8(truncatingIfNeeded: value))
        default: break
        }
        return .none
    }

    /// Writes the register at `index` as IOWIN does.
    public mutating func writeRegister(_ index: UInt8, value: UInt32) -> IOAPICDeliveries {
        switch index {
        case 0x00: id = UInt8(truncatingIfNeeded: value >> 24) & 0xF
        case 0x10..<(0x10 + 2 * UInt8(Self.lineCount)):
            let line = Int(index - 0x10) >> 1
            let old = table[line]
            var new: UInt64
            if index & 1 == 0 {
                new = (old & 0xFFFF_FFFF_0000_0000) | UInt64(value)
                new = (new & ~IOAPICRedirectionEntry.readOnlyBits) | (old & IOAPICRedirectionEntry.readOnlyBits)
            } else {
                new = (old & 0xFFFF_FFFF) | UInt64(value) << 32
            }
            if IOAPICRedirectionEntry(rawValue: new).triggerMode == .edge { new &= ~(1 << 14) }  // as KVM does
            table[line] = new
            if serviceLevel(line) { return IOAPICDeliveries(lines: 1 << UInt32(line), table: table) }
        default: break  // version and arbitration are read-only
        }
        return .none
    }

    /// Sets input `line` to `asserted` (the logical level: true means "interrupt requested",
    /// whatever the polarity bit says, as KVM_IRQ_LINE and QEMU treat it).
    ///
    /// Edge: a 0 -> 1 transition on an unmasked entry delivers; requests while masked are lost.
    /// Level: while asserted, an unmasked entry with remote IRR clear delivers and sets remote IRR;
    /// it delivers again after the EOI if the line is still asserted.
    public mutating func setIRQ(_ line: Int, asserted: Bool) -> IOAPICDelivery? {
        guard line >= 0, line < Self.lineCount else { return nil }
        let bit: UInt32 = 1 << UInt32(line)
        let wasAsserted = assertedLines & bit != 0
        if asserted { assertedLines |= bit } else { assertedLines &= ~bit }
        guard asserted else { return nil }
        let current = entry(line)
        if current.triggerMode == .edge {
            return wasAsserted || current.isMasked ? nil : IOAPICDelivery(line: line, entry: current)
        }
        return serviceLevel(line) ? IOAPICDelivery(line: line, entry: entry(line)) : nil
    }

    /// A pulse on an edge-triggered line: assert then deassert.
    public mutating func pulseIRQ(_ line: Int) -> IOAPICDelivery? {
        let delivery = setIRQ(line, asserted: true)
        _ = setIRQ(line, asserted: false)
        return delivery
    }

    /// The EOI for `vector`, broadcast by a local APIC (`APICEndOfInterrupt.broadcastToIOAPICs`) or
    /// written to the EOI register: clears remote IRR of every level entry with that vector and
    /// re-delivers those whose line is still asserted.
    public mutating func endOfInterrupt(vector: UInt8) -> IOAPICDeliveries {
        var delivered: UInt32 = 0
        for line in 0..<Self.lineCount {
            let current = entry(line)
            guard current.vector == vector, current.triggerMode == .level, current.remoteIRR else { continue }
            table[line] &= ~(1 << 14)
            if serviceLevel(line) { delivered |= 1 << UInt32(line) }
        }
        return delivered == 0 ? .none : IOAPICDeliveries(lines: delivered, table: table)
    }

    /// Whether a level-triggered line delivers now (unmasked, asserted, remote IRR clear); sets
    /// remote IRR when it does. Edge entries deliver only on a rising edge in `setIRQ`.
    mutating func serviceLevel(_ line: Int) -> Bool {
        let current = entry(line)
        guard current.triggerMode == .level, !current.isMasked, !current.remoteIRR,
            assertedLines & (1 << UInt32(line)) != 0
        else { return false }
        table[line] |= 1 << 14
        return true
    }
}
