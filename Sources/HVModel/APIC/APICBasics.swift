// Vocabulary shared by the local APIC, the I/O APIC, MSI and APIC virtualisation: 256-bit vector
// sets, delivery and destination modes, and the interrupt message that travels between them.
//
// Section numbers in Sources/HVModel/APIC follow the Intel SDM (order number 325462) in the same
// 2023-and-later numbering as Sources/HVModel/VMX and Paging: "Advanced Programmable Interrupt
// Controller (APIC)" is Vol. 3A chapter 11 and "APIC Virtualization and Virtual Interrupts" is
// Vol. 3C chapter 30. Editions before 2022 number them 10 and 29; section titles are quoted so a
// reader of any edition can find them.

/// A set of the 256 interrupt vectors, the shape of IRR, ISR and TMR (SDM 11.8.4, Figure 11-20)
/// and of the PIR of a posted-interrupt descriptor (SDM 30.6).
///
/// Bit `v` of the set is bit `v % 32` of the 32-bit register at offset `base + 0x10 * (v / 32)`
/// in the xAPIC page, or of MSR `base + v / 32` in x2APIC mode.
public struct APICVectorSet: Hashable, Sendable {
    /// Vectors 0-63, 64-127, 128-191 and 192-255, bit `v % 64` for vector `v`.
    public var words: (UInt64, UInt64, UInt64, UInt64)

    /// The empty set.
    @inlinable public init() { words = (0, 0, 0, 0) }

    /// A set from its four 64-bit words, lowest vectors first.
    @inlinable public init(words: (UInt64, UInt64, UInt64, UInt64)) { self.words = words }

    /// A set holding exactly `vectors`.
    public init(_ vectors: some Sequence<UInt8>) {
        self.init()
        for vector in vectors { insert(vector) }
    }

    public static func == (a: Self, b: Self) -> Bool {
        a.words.0 == b.words.0 && a.words.1 == b.words.1 && a.words.2 == b.words.2 && a.words.3 == b.words.3
    }

    public func hash(into hasher: inout Hasher) {
        hasher.combine(words.0)
        hasher.combine(words.1)
        hasher.combine(words.2)
        hasher.combine(words.3)
    }

    /// The 64-bit word holding vectors `64 * index ..< 64 * (index + 1)`.
    @inlinable public func word(_ index: Int) -> UInt64 {
        switch index & 3 {
        case 0: words.0
        case 1: words.1
        case 2: words.2
        default: words.3
        }
    }

    @inlinable mutating func setWord(_ index: Int, _ value: UInt64) {
        switch index & 3 {
        case 0: words.0 = value
        case 1: words.1 = value
        case 2: words.2 = value
        default: words.3 = value
        }
    }

    /// Whether `vector` is in the set.
    @inlinable public func contains(_ vector: UInt8) -> Bool {
        word(Int(vector) >> 6) & (1 << UInt64(vector & 63)) != 0
    }

    /// Adds `vector`; returns whether it was absent before.
    @discardableResult
    @inlinable public mutating func insert(_ vector: UInt8) -> Bool {
        let index = Int(vector) >> 6
        let bit: UInt64 = 1 << UInt64(vector & 63)
        let old = word(index)
        setWord(index, old | bit)
        return old & bit == 0
    }

    /// Removes `vector`; returns whether it was present.
    @discardableResult
    @inlinable public mutating func remove(_ vector: UInt8) -> Bool {
        let index = Int(vector) >> 6
        let bit: UInt64 = 1 << UInt64(vector & 63)
        let old = word(index)
        setWord(index, old & ~bit)
        return old & bit != 0
    }

    /// Whether no vector is in the set.
    @inlinable public var isEmpty: Bool { words.0 | words.1 | words.2 | words.3 == 0 }

    /// The highest vector in the set (the highest-priority one, SDM 11.8.3), nil when empty.
    @inlinable public var highest: UInt8? {
        for index in stride(from: 3, through: 0, by: -1) {
            let value = word(index)
            if value != 0 { return UInt8(index * 64 + 63 - value.leadingZeroBitCount) }
        }
        return nil
    }

    /// The union of two sets.
    @inlinable public func union(_ other: Self) -> Self {
        Self(words: (words.0 | other.words.0, words.1 | other.words.1, words.2 | other.words.2, words.3 | other.words.3))
    }

    /// The 32-bit register `index` (0-7) of the xAPIC view: vectors `32 * index ..< 32 * index + 32`.
    @inlinable public func register(_ index: Int) -> UInt32 {
        UInt32(truncatingIfNeeded: word(index >> 1) >> UInt64((index & 1) * 32))
    }

    /// Replaces the 32-bit register `index` (0-7), as a snapshot restore or the PIR does.
    @inlinable public mutating func setRegister(_ index: Int, _ value: UInt32) {
        let shift = UInt64((index & 1) * 32)
        let cleared = word(index >> 1) & ~(UInt64(0xFFFF_FFFF) << shift)
        setWord(index >> 1, cleared | UInt64(value) << shift)
    }
}

/// How an interrupt message is delivered (ICR, LVT, redirection entry and MSI data bits 10:8;
/// SDM 11.6.1 "Interrupt Command Register (ICR)", 11.11.2 "Message Data Register Format").
public enum APICDeliveryMode: UInt8, Sendable, Hashable, CaseIterable {
    /// 000: deliver `vector` to every destination.
    case fixed = 0b000
    /// 001: deliver `vector` to the destination processor running at the lowest priority.
    case lowestPriority = 0b001
    /// 010: a system-management interrupt; the vector must be 0.
    case smi = 0b010
    /// 011: reserved.
    case reserved3 = 0b011
    /// 100: a non-maskable interrupt; the vector is ignored.
    case nmi = 0b100
    /// 101: INIT (the level bit 0 with level trigger is the obsolete "INIT level de-assert").
    case initialize = 0b101
    /// 110: start-up IPI (SIPI): the target starts in real mode at `vector << 12` (SDM 11.6.1).
    case startup = 0b110
    /// 111: external interrupt: the vector comes from an 8259A-compatible controller.
    case extINT = 0b111

    /// The mode from the three bits at `shift` of `raw`.
    @inlinable public init(bits raw: UInt64, shift: UInt64) {
        self = APICDeliveryMode(rawValue: UInt8((raw >> shift) & 7))!
    }
}

/// Physical or logical destination (ICR bit 11, redirection entry bit 11, MSI address bit 2).
public enum APICDestinationMode: UInt8, Sendable, Hashable {
    /// The destination is an APIC ID (SDM 11.6.2.1).
    case physical = 0
    /// The destination is matched against each LDR, flat or cluster (SDM 11.6.2.2).
    case logical = 1
}

/// Edge or level trigger (ICR bit 15, LVT bit 15, redirection entry bit 15, MSI data bit 15).
public enum APICTriggerMode: UInt8, Sendable, Hashable {
    case edge = 0
    case level = 1
}

/// The destination shorthand of an IPI (ICR bits 19:18, SDM 11.6.1, Table 11-3).
public enum APICDestinationShorthand: UInt8, Sendable, Hashable, CaseIterable {
    /// 00: the destination field names the targets.
    case none = 0
    /// 01: the sender only ("self" in the SDM).
    case selfOnly = 1
    /// 10: every APIC, the sender included.
    case allIncludingSelf = 2
    /// 11: every APIC except the sender.
    case allExcludingSelf = 3
}

/// One interrupt message as it travels on the system bus: from an IPI (ICR), an I/O APIC
/// redirection entry or an MSI, to the local APICs that match its destination.
public struct APICInterruptMessage: Hashable, Sendable {
    /// The vector (for `.startup`, the start page number; ignored for NMI, INIT, ExtINT).
    public var vector: UInt8
    public var deliveryMode: APICDeliveryMode
    public var destinationMode: APICDestinationMode
    /// The destination: an 8-bit xAPIC ID or logical mask, or a 32-bit x2APIC ID or
    /// `cluster << 16 | bits` logical ID. `0xFF` (xAPIC) and `0xFFFF_FFFF` (x2APIC) broadcast.
    public var destination: UInt32
    public var triggerMode: APICTriggerMode
    /// The level bit: false only for the obsolete INIT level de-assert (SDM 11.6.1).
    public var level: Bool
    /// The shorthand, `.none` for messages that do not come from an ICR.
    public var shorthand: APICDestinationShorthand
    /// MSI redirection hint (SDM 11.11.1): deliver to one processor of the destination set.
    public var redirectionHint: Bool

    public init(
        vector: UInt8, deliveryMode: APICDeliveryMode = .fixed, destinationMode: APICDestinationMode = .physical,
        destination: UInt32, triggerMode: APICTriggerMode = .edge, level: Bool = true,
        shorthand: APICDestinationShorthand = .none, redirectionHint: Bool = false
    ) {
        self.vector = vector
        self.deliveryMode = deliveryMode
        self.destinationMode = destinationMode
        self.destination = destination
        self.triggerMode = triggerMode
        self.level = level
        self.shorthand = shorthand
        self.redirectionHint = redirectionHint
    }

    /// Whether this is the obsolete INIT level de-assert message, which Pentium 4 and later
    /// processors (and KVM) ignore (SDM 11.6.1, "Level" and "Delivery Mode" of the ICR).
    @inlinable public var isINITLevelDeassert: Bool {
        deliveryMode == .initialize && !level && triggerMode == .level
    }
}

/// The fault an access to an x2APIC MSR or to IA32_APIC_BASE raises (SDM 11.12.1.2 "x2APIC
/// Register Address Space", 11.12.1.3 "Reserved Bit Checking", 11.12.5 "x2APIC State Transitions").
public enum APICFault: Error, Hashable, Sendable {
    /// #GP(0): the register is reserved, read-only on write, write-only on read, a reserved
    /// bit was set, or an illegal APIC-base transition was attempted.
    case generalProtection
}

/// The task-, processor- and arbitration-priority rules (SDM 11.8.3.1 "Task and Processor
/// Priorities", 11.6.2.4 "Lowest Priority Delivery Mode", Figure 11-15).
public enum APICPriority {
    /// The priority class of a vector or priority value: bits 7:4.
    @inlinable public static func priorityClass(_ value: UInt8) -> UInt8 { value >> 4 }

    /// PPR: if TPR[7:4] >= ISRV[7:4] then PPR = TPR, else PPR[7:4] = ISRV[7:4] and PPR[3:0] = 0
    /// (SDM 11.8.3.1). `isrv` is the highest in-service vector, 0 when none.
    @inlinable public static func processorPriority(tpr: UInt8, isrv: UInt8) -> UInt8 {
        tpr >> 4 >= isrv >> 4 ? tpr : isrv & 0xF0
    }

    /// APR: if TPR[7:4] >= IRRV[7:4] and TPR[7:4] > ISRV[7:4] then APR = TPR, else
    /// APR[7:4] = max(TPR[7:4], ISRV[7:4], IRRV[7:4]) and APR[3:0] = 0 (SDM 11.6.2.4).
    @inlinable public static func arbitrationPriority(tpr: UInt8, isrv: UInt8, irrv: UInt8) -> UInt8 {
        if tpr >> 4 >= irrv >> 4 && tpr >> 4 > isrv >> 4 { return tpr }
        return max(tpr & 0xF0, isrv & 0xF0, irrv & 0xF0)
    }

    /// Whether a requested vector may be dispatched: its class must exceed PPR's (SDM 11.8.3.1).
    @inlinable public static func canDispatch(_ vector: UInt8, ppr: UInt8) -> Bool { vector >> 4 > ppr >> 4 }
}
