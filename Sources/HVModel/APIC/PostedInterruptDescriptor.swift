// The 64-byte posted-interrupt descriptor (SDM 30.6, Table 30-1 "Format of Posted-Interrupt
// Descriptor"; Intel VT-d specification 9.12 "Posted Interrupt Descriptor (PID)" for SN, NV and
// NDST) and the posting algorithm a sender (CPU or VT-d hardware) runs (VT-d 5.2.3).

/// A posted-interrupt descriptor: 512 bits, 64-byte aligned.
///
/// | bits    | field |
/// |---------|-------|
/// | 255:0   | PIR: one bit per vector |
/// | 256     | ON: outstanding notification |
/// | 257     | SN: suppress notification (VT-d) |
/// | 279:272 | NV: notification vector (VT-d) |
/// | 319:288 | NDST: notification destination, the APIC ID (xAPIC: in bits 15:8 of the field) |
/// | others  | reserved (SDM: "available for software"), kept zero here |
public struct PostedInterruptDescriptor: Hashable, Sendable {
    /// Posted-interrupt requests.
    public var pir = APICVectorSet()
    /// ON (bit 256): a notification event is outstanding.
    public var outstandingNotification = false
    /// SN (bit 257): post without sending notifications (VT-d 9.12).
    public var suppressNotification = false
    /// NV (bits 279:272): the vector of the notification IPI.
    public var notificationVector: UInt8 = 0
    /// NDST (bits 319:288): the raw notification destination field. In xAPIC mode the 8-bit APIC
    /// ID sits in bits 15:8 of it; in x2APIC mode it is the 32-bit APIC ID (VT-d 9.12).
    public var notificationDestination: UInt32 = 0

    public init() {}

    /// A descriptor that notifies `vector` to the APIC with ID `apicID`.
    public init(notificationVector vector: UInt8, apicID: UInt32, x2APIC: Bool) {
        notificationVector = vector
        notificationDestination = x2APIC ? apicID : (apicID & 0xFF) << 8
    }

    /// The notification destination as an APIC ID.
    public func destinationAPICID(x2APIC: Bool) -> UInt32 {
        x2APIC ? notificationDestination : (notificationDestination >> 8) & 0xFF
    }

    /// The descriptor from its eight little-endian quadwords (word 4 holds ON, SN, NV and NDST).
    public init(words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64)) {
        pir = APICVectorSet(words: (words.0, words.1, words.2, words.3))
        outstandingNotification = words.4 & 1 != 0
        suppressNotification = words.4 & 2 != 0
        notificationVector = UInt8(truncatingIfNeeded: words.4 >> 16)
        notificationDestination = UInt32(truncatingIfNeeded: words.4 >> 32)
    }

    /// The eight quadwords of the descriptor in memory order.
    public var words: (UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64, UInt64) {
        var control: UInt64 = (outstandingNotification ? 1 : 0) | (suppressNotification ? 2 : 0)
        control |= UInt64(notificationVector) << 16 | UInt64(notificationDestination) << 32
        return (pir.words.0, pir.words.1, pir.words.2, pir.words.3, control, 0, 0, 0)
    }

    /// The descriptor from its 64 bytes; nil for another length.
    public init?(bytes: some Collection<UInt8>) {
        guard bytes.count == 64 else { return nil }
        var quads: [UInt64] = [0, 0, 0, 0, 0, 0, 0, 0]
        for (index, byte) in bytes.enumerated() { quads[index >> 3] |= UInt64(byte) << UInt64((index & 7) * 8) }
        self.init(words: (quads[0], quads[1], quads[2], quads[3], quads[4], quads[5], quads[6], quads[7]))
    }

    /// The 64 bytes of the descriptor.
    public var bytes: [UInt8] {
        let w = words
        let quads = [w.0, w.1, w.2, w.3, w.4, w.5, w.6, w.7]
        var result = [UInt8](repeating: 0, count: 64)
        for index in 0..<64 { result[index] = UInt8(truncatingIfNeeded: quads[index >> 3] >> UInt64((index & 7) * 8)) }
        return result
    }

    /// Posts `vector` as a sender does (VT-d 5.2.3; KVM `pi_test_and_set_pir` then
    /// `pi_test_and_set_on`): sets PIR[vector]; if ON was clear and notifications are not suppressed
    /// (or the interrupt is `urgent`), sets ON and returns true: the caller then sends NV to NDST.
    /// Done atomically on the real descriptor (a locked read-modify-write of 64 bytes).
    public mutating func post(vector: UInt8, urgent: Bool = false) -> Bool {
        pir.insert(vector)
        let notify = !outstandingNotification && (urgent || !suppressNotification)
        if notify { outstandingNotification = true }
        return notify
    }
}
