// Message-signalled interrupts: the address and data a device writes (SDM 11.11 "Message
// Signalled Interrupts": 11.11.1 address, Figure 11-24; 11.11.2 data, Figure 11-25), and the
// VT-d remappable format of the same write (VT-d specification 5.1.2.2 "Interrupt Requests in
// Remappable Format", 5.1.3 "Interrupt Remapping Table").

/// One MSI: a 32-bit write of `data` to `address` (bits 63:32 only matter for the KVM convention).
public struct MSIMessage: Hashable, Sendable {
    public var address: UInt64
    public var data: UInt32

    /// The architectural address window: bits 31:20 are 0xFEE.
    public static let addressBase: UInt64 = 0xFEE0_0000

    public init(address: UInt64, data: UInt32) {
        self.address = address
        self.data = data
    }

    /// The compatibility-format MSI that sends `message` (8-bit destination in address bits 19:12).
    public init(_ message: APICInterruptMessage) {
        var address = Self.addressBase | UInt64(message.destination & 0xFF) << 12
        address |= (message.redirectionHint ? 1 << 3 : 0) | UInt64(message.destinationMode.rawValue) << 2
        var data = UInt32(message.vector) | UInt32(message.deliveryMode.rawValue) << 8
        data |= (message.level ? 1 << 14 : 0) | UInt32(message.triggerMode.rawValue) << 15
        self.init(address: address, data: data)
    }

    /// Address bits 31:20 are 0xFEE: the write is an interrupt, not memory.
    @inlinable public var isInterruptAddress: Bool { (address & 0xFFFF_FFFF) >> 20 == 0xFEE }
    /// Address bit 4: VT-d remappable format (the "interrupt format" bit, VT-d 5.1.2.2).
    @inlinable public var isRemappable: Bool { address & (1 << 4) != 0 }
    /// Address bits 19:12: destination ID.
    @inlinable public var destinationID: UInt8 { UInt8(truncatingIfNeeded: address >> 12) }
    /// Address bit 3: redirection hint.
    @inlinable public var redirectionHint: Bool { address & (1 << 3) != 0 }
    /// Address bit 2: destination mode.
    @inlinable public var destinationMode: APICDestinationMode { address & (1 << 2) != 0 ? .logical : .physical }
    /// Data bits 7:0.
    @inlinable public var vector: UInt8 { UInt8(truncatingIfNeeded: data) }
    /// Data bits 10:8.
    @inlinable public var deliveryMode: APICDeliveryMode { APICDeliveryMode(bits: UInt64(data), shift: 8) }
    /// Data bit 14: assert (meaningful for level trigger only).
    @inlinable public var level: Bool { data & (1 << 14) != 0 }
    /// Data bit 15.
    @inlinable public var triggerMode: APICTriggerMode { data & (1 << 15) != 0 ? .level : .edge }

    /// The destination with the "extended destination ID" convention of Linux and KVM
    /// (`KVM_FEATURE_MSI_EXT_DEST_ID`, not Intel): address bits 11:5 are destination bits 14:8.
    @inlinable public var extendedDestinationID: UInt32 {
        UInt32(destinationID) | UInt32((address >> 5) & 0x7F) << 8
    }

    /// The destination with KVM's x2APIC API convention (`KVM_X2APIC_API_USE_32BIT_IDS`): address
    /// bits 63:40 are destination bits 31:8.
    @inlinable public var kvmX2APICDestinationID: UInt32 {
        UInt32(destinationID) | UInt32(truncatingIfNeeded: address >> 32) & 0xFFFF_FF00
    }

    /// The interrupt message of a compatibility-format MSI; nil when the address is not 0xFEExxxxx
    /// or the request is in remappable format (look it up with `InterruptRemappingEntry`).
    public var compatibilityMessage: APICInterruptMessage? {
        guard isInterruptAddress, !isRemappable else { return nil }
        return APICInterruptMessage(
            vector: vector, deliveryMode: deliveryMode, destinationMode: destinationMode,
            destination: UInt32(destinationID), triggerMode: triggerMode, level: level,
            redirectionHint: redirectionHint)
    }

    /// The remappable-format MSI for interrupt-remapping-table `index`, optionally with a
    /// subhandle in the data (VT-d 5.1.2.2): handle[14:0] in address bits 19:5, handle[15] in bit 2,
    /// SHV in bit 3, the format bit 4 set.
    public init(remappingHandle handle: UInt16, subhandle: UInt16? = nil) {
        var address = Self.addressBase | UInt64(handle & 0x7FFF) << 5 | 1 << 4
        address |= UInt64(handle >> 15) << 2 | (subhandle == nil ? 0 : 1 << 3)
        self.init(address: address, data: UInt32(subhandle ?? 0))
    }

    /// The interrupt-remapping table index of a remappable-format request: the handle, plus the
    /// subhandle (data bits 15:0) when SHV (address bit 3) is set (VT-d 5.1.3); nil otherwise.
    public var remappingIndex: UInt32? {
        guard isInterruptAddress, isRemappable else { return nil }
        let handle = UInt32((address >> 5) & 0x7FFF) | UInt32((address >> 2) & 1) << 15
        return address & (1 << 3) != 0 ? handle &+ (data & 0xFFFF) : handle
    }
}
