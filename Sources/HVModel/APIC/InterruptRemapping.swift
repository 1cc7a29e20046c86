// The VT-d interrupt-remapping table entry (Intel VT-d specification 9.10 "Interrupt Remapping
// Table Entry (IRTE) for Remapped Interrupts", 9.11 "... for Posted Interrupts"; 5.1.4
// "Interrupt-Remapping Hardware Operation"). An interrupt in remappable format (an MSI with
// address bit 4 set, or an I/O APIC entry with bit 48 set) names an IRTE; the IRTE holds the real
// vector and destination, 32-bit in x2APIC mode: how guests address APIC IDs above 255.

/// How an IRTE checks who sent the request (bits 83:82, VT-d 9.10).
public enum SourceValidation: UInt8, Sendable, Hashable {
    /// 00: no check.
    case none = 0
    /// 01: the requester ID must equal SID, with SQ's don't-care function bits.
    case requesterID = 1
    /// 10: the requester's bus must lie in SID[15:8] ... SID[7:0].
    case busRange = 2
    /// 11: reserved.
    case reserved = 3
}

/// A 128-bit IRTE, remapped or posted format by bit 15 (IM).
public struct InterruptRemappingEntry: Hashable, Sendable {
    /// Bits 63:0.
    public var low: UInt64
    /// Bits 127:64.
    public var high: UInt64

    public init(low: UInt64, high: UInt64) {
        self.low = low
        self.high = high
    }

    /// A present, remapped-format IRTE that delivers `message`; `x2APIC` selects the 32-bit
    /// destination in bits 63:32, else the 8-bit one in bits 47:40.
    public init(
        remapping message: APICInterruptMessage, x2APIC: Bool, sourceID: UInt16 = 0,
        sourceValidation: SourceValidation = .none, sourceQualifier: UInt8 = 0
    ) {
        var low: UInt64 = 1 | UInt64(message.destinationMode.rawValue) << 2 | (message.redirectionHint ? 1 << 3 : 0)
        low |= UInt64(message.triggerMode.rawValue) << 4 | UInt64(message.deliveryMode.rawValue) << 5
        low |= UInt64(message.vector) << 16
        low |= x2APIC ? UInt64(message.destination) << 32 : UInt64(message.destination & 0xFF) << 40
        let high = UInt64(sourceID) | UInt64(sourceQualifier & 3) << 16 | UInt64(sourceValidation.rawValue) << 18
        self.init(low: low, high: high)
    }

    /// A present, posted-format IRTE (VT-d 9.11): `vector` is posted into the descriptor at
    /// `descriptorAddress` (64-byte aligned) instead of being delivered.
    public init(posting vector: UInt8, descriptorAddress: UInt64, urgent: Bool = false, sourceID: UInt16 = 0,
        sourceValidation: SourceValidation = .none)
    {
        var low: UInt64 = 1 | (urgent ? 1 << 14 : 0) | 1 << 15 | UInt64(vector) << 16
        low |= (descriptorAddress & 0xFFFF_FFC0) << 32  // address bits 31:6 in bits 63:38
        let high = UInt64(sourceID) | UInt64(sourceValidation.rawValue) << 18 | (descriptorAddress >> 32) << 32
        self.init(low: low, high: high)
    }

    /// Bit 0: present.
    @inlinable public var isPresent: Bool { low & 1 != 0 }
    /// Bit 1: fault processing disable.
    @inlinable public var faultProcessingDisabled: Bool { low & 2 != 0 }
    /// Bit 15 (IM): posted format.
    @inlinable public var isPosted: Bool { low & (1 << 15) != 0 }
    /// Bits 23:16: the vector to deliver (remapped) or post (posted).
    @inlinable public var vector: UInt8 { UInt8(truncatingIfNeeded: low >> 16) }

    /// Bit 2 (remapped format).
    @inlinable public var destinationMode: APICDestinationMode { low & (1 << 2) != 0 ? .logical : .physical }
    /// Bit 3 (remapped format).
    @inlinable public var redirectionHint: Bool { low & (1 << 3) != 0 }
    /// Bit 4 (remapped format).
    @inlinable public var triggerMode: APICTriggerMode { low & (1 << 4) != 0 ? .level : .edge }
    /// Bits 7:5 (remapped format).
    @inlinable public var deliveryMode: APICDeliveryMode { APICDeliveryMode(bits: low, shift: 5) }
    /// Bits 11:8: available to software.
    @inlinable public var available: UInt8 { UInt8((low >> 8) & 0xF) }
    /// The destination (remapped format): bits 63:32 in x2APIC mode, bits 47:40 in xAPIC mode.
    @inlinable public func destination(x2APIC: Bool) -> UInt32 {
        x2APIC ? UInt32(truncatingIfNeeded: low >> 32) : UInt32(truncatingIfNeeded: (low >> 40) & 0xFF)
    }

    /// Bit 14 (posted format): urgent, notify even when SN is set.
    @inlinable public var isUrgent: Bool { low & (1 << 14) != 0 }
    /// The posted-interrupt descriptor address (posted format): bits 63:38 are address bits 31:6,
    /// bits 127:96 address bits 63:32.
    @inlinable public var postedDescriptorAddress: UInt64 { (low >> 32) & 0xFFFF_FFC0 | (high >> 32) << 32 }

    /// Bits 79:64: the source ID (requester ID, or bus range) checked per `sourceValidation`.
    @inlinable public var sourceID: UInt16 { UInt16(truncatingIfNeeded: high) }
    /// Bits 81:80: which low function bits of the requester ID the check ignores.
    @inlinable public var sourceQualifier: UInt8 { UInt8((high >> 16) & 3) }
    /// Bits 83:82.
    @inlinable public var sourceValidation: SourceValidation { SourceValidation(rawValue: UInt8((high >> 18) & 3))! }

    /// Whether bits the format reserves are set: remapped format 14:12, 31:24, 127:84, and in xAPIC
    /// mode 39:32 and 63:48 (VT-d 9.10); hardware reports such an entry as a remapping fault.
    public func hasReservedBitsSet(x2APIC: Bool) -> Bool {
        if isPosted {
            // Posted format (VT-d 9.11): 7:2, 13:12, 31:24, 37:32 and 95:84.
            return low & 0x0000_003F_FF00_30FC != 0 || high & 0x0000_0000_FFF0_0000 != 0
        }
        var reservedLow: UInt64 = 0x7000 | 0xFF00_0000
        if !x2APIC { reservedLow |= 0xFFFF_00FF_0000_0000 }
        return low & reservedLow != 0 || high & 0xFFFF_FFFF_FFF0_0000 != 0
    }

    /// Whether a request from `requesterID` (bus << 8 | device << 3 | function) passes the source
    /// check: SQ 01/10/11 ignore requester-ID bit 2, bits 2:1, bits 2:0 (VT-d 9.10).
    public func acceptsSource(_ requesterID: UInt16) -> Bool {
        switch sourceValidation {
        case .none: return true
        case .requesterID:
            let ignored: UInt16 =
                switch sourceQualifier {
                case 0: 0
                case 1: 0b100
                case 2: 0b110
                default: 0b111
                }
            return requesterID & ~ignored == sourceID & ~ignored
        case .busRange:
            let bus = requesterID >> 8
            return bus >= sourceID >> 8 && bus <= sourceID & 0xFF
        case .reserved: return false
        }
    }

    /// The interrupt a remapped-format IRTE delivers, nil when not present or posted.
    public func message(x2APIC: Bool) -> APICInterruptMessage? {
        guard isPresent, !isPosted else { return nil }
        return APICInterruptMessage(
            vector: vector, deliveryMode: deliveryMode, destinationMode: destinationMode,
            destination: destination(x2APIC: x2APIC), triggerMode: triggerMode, redirectionHint: redirectionHint)
    }
}
