// The local APIC's register map and its small register formats: the xAPIC page offsets and their
// x2APIC MSRs (SDM 11.4.1, Table 11-1 "Local APIC Register Address Map"; 11.12.1.2, Table 11-6
// "Local APIC Register Address Map Supported by x2APIC"), LVT entries (11.5.1, Figure 11-8),
// the error status register (11.5.3, Figure 11-9), the ICR (11.6.1, Figure 11-12; 11.12.9,
// Figure 11-28) and IA32_APIC_BASE (11.4.4, Figure 11-5).

/// A local APIC register by its offset in the 4 KiB xAPIC page (SDM Table 11-1). In x2APIC mode
/// the register is MSR `0x800 + offset >> 4` (SDM 11.12.1.2), where it exists at all.
public enum APICRegister: UInt16, Sendable, Hashable, CaseIterable {
    case id = 0x020
    case version = 0x030
    case taskPriority = 0x080
    case arbitrationPriority = 0x090
    case processorPriority = 0x0A0
    case endOfInterrupt = 0x0B0
    case remoteRead = 0x0C0
    case logicalDestination = 0x0D0
    case destinationFormat = 0x0E0
    case spuriousVector = 0x0F0
    case inService0 = 0x100, inService1 = 0x110, inService2 = 0x120, inService3 = 0x130
    case inService4 = 0x140, inService5 = 0x150, inService6 = 0x160, inService7 = 0x170
    case triggerMode0 = 0x180, triggerMode1 = 0x190, triggerMode2 = 0x1A0, triggerMode3 = 0x1B0
    case triggerMode4 = 0x1C0, triggerMode5 = 0x1D0, triggerMode6 = 0x1E0, triggerMode7 = 0x1F0
    case interruptRequest0 = 0x200, interruptRequest1 = 0x210, interruptRequest2 = 0x220
    case interruptRequest3 = 0x230, interruptRequest4 = 0x240, interruptRequest5 = 0x250
    case interruptRequest6 = 0x260, interruptRequest7 = 0x270
    case errorStatus = 0x280
    case lvtCMCI = 0x2F0
    case interruptCommandLow = 0x300
    case interruptCommandHigh = 0x310
    case lvtTimer = 0x320
    case lvtThermal = 0x330
    case lvtPerformance = 0x340
    case lvtLINT0 = 0x350
    case lvtLINT1 = 0x360
    case lvtError = 0x370
    case timerInitialCount = 0x380
    case timerCurrentCount = 0x390
    case timerDivideConfiguration = 0x3E0
    /// x2APIC only (MSR 0x83F): the SELF IPI register (SDM 11.12.11).
    case selfIPI = 0x3F0

    /// The register at `offset` of the xAPIC page (16-byte aligned), nil for a reserved offset.
    /// SELF IPI has no xAPIC form, so offset 0x3F0 is reserved there.
    public init?(offset: UInt32) {
        guard offset & 0xF == 0, offset < 0x3F0, let register = APICRegister(rawValue: UInt16(offset)) else {
            return nil
        }
        self = register
    }

    /// The register behind x2APIC MSR `msr` (0x800-0x8FF), nil where Table 11-6 has none:
    /// APR, RRD, DFR and ICR high do not exist in x2APIC mode.
    public init?(x2APICMSR msr: UInt32) {
        guard msr >= 0x800, msr <= 0x8FF, let register = APICRegister(rawValue: UInt16((msr - 0x800) << 4)) else {
            return nil
        }
        switch register {
        case .arbitrationPriority, .remoteRead, .destinationFormat, .interruptCommandHigh: return nil
        default: self = register
        }
    }

    /// The x2APIC MSR index of this register.
    @inlinable public var x2APICMSR: UInt32 { 0x800 + UInt32(rawValue >> 4) }

    /// For IRR, ISR and TMR, which of the eight 32-bit slices this is (0 = vectors 0-31).
    @inlinable public var vectorSetIndex: Int { Int((rawValue >> 4) & 7) }
}

/// The seven local vector table entries (SDM 11.5.1).
public enum LocalVectorTableEntry: Int, Sendable, Hashable, CaseIterable {
    case timer, thermal, performance, lint0, lint1, error, cmci

    /// The xAPIC register of this entry.
    public var register: APICRegister {
        switch self {
        case .timer: .lvtTimer
        case .thermal: .lvtThermal
        case .performance: .lvtPerformance
        case .lint0: .lvtLINT0
        case .lint1: .lvtLINT1
        case .error: .lvtError
        case .cmci: .lvtCMCI
        }
    }

    /// The entry behind an xAPIC register, nil for other registers.
    public init?(register: APICRegister) {
        switch register {
        case .lvtTimer: self = .timer
        case .lvtThermal: self = .thermal
        case .lvtPerformance: self = .performance
        case .lvtLINT0: self = .lint0
        case .lvtLINT1: self = .lint1
        case .lvtError: self = .error
        case .lvtCMCI: self = .cmci
        default: return nil
        }
    }

    /// Bits software may write (Figure 11-8): vector and mask everywhere; the timer adds its mode
    /// (18:17); thermal, performance and CMCI add the delivery mode; LINT0/1 add delivery mode,
    /// polarity (13) and trigger mode (15). Delivery status (12) and remote IRR (14) are read-only.
    public var writableBits: UInt32 {
        switch self {
        case .timer: 0x0007_00FF
        case .thermal, .performance, .cmci: 0x0001_07FF
        case .lint0, .lint1: 0x0001_A7FF
        case .error: 0x0001_00FF
        }
    }
}

/// One LVT entry's value (SDM 11.5.1, Figure 11-8).
public struct LVTEntry: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt32
    @inlinable public init(rawValue: UInt32) { self.rawValue = rawValue }

    /// The reset value: masked, vector 0 (SDM 11.4.7.1).
    public static let masked = LVTEntry(rawValue: 1 << 16)

    /// Bits 7:0.
    @inlinable public var vector: UInt8 { UInt8(truncatingIfNeeded: rawValue) }
    /// Bits 10:8 (fixed for the timer and error entries, which have no such field).
    @inlinable public var deliveryMode: APICDeliveryMode { APICDeliveryMode(bits: UInt64(rawValue), shift: 8) }
    /// Bit 13 (LINT0/1): input pin polarity, true for active low.
    @inlinable public var activeLow: Bool { rawValue & (1 << 13) != 0 }
    /// Bit 14 (LINT0/1, read-only): set while a level-triggered fixed interrupt is in service.
    @inlinable public var remoteIRR: Bool { rawValue & (1 << 14) != 0 }
    /// Bit 15 (LINT0/1): trigger mode.
    @inlinable public var triggerMode: APICTriggerMode { rawValue & (1 << 15) != 0 ? .level : .edge }
    /// Bit 16: the interrupt is masked.
    @inlinable public var isMasked: Bool { rawValue & (1 << 16) != 0 }
    /// Bits 18:17 of the timer entry.
    @inlinable public var timerMode: APICTimerMode { APICTimerMode(rawValue: UInt8((rawValue >> 17) & 3)) ?? .reserved }
}

/// The timer mode of the LVT timer entry, bits 18:17 (SDM 11.5.4, 11.5.4.1).
public enum APICTimerMode: UInt8, Sendable, Hashable {
    case oneShot = 0
    case periodic = 1
    /// Counts against IA32_TSC_DEADLINE (SDM 11.5.4.1 "TSC-Deadline Mode").
    case tscDeadline = 2
    case reserved = 3
}

/// Errors the local APIC logs in the ESR (SDM 11.5.3, Figure 11-9).
public struct APICErrorStatus: OptionSet, Hashable, Sendable {
    public var rawValue: UInt32
    public init(rawValue: UInt32) { self.rawValue = rawValue }
    /// Bit 0 (P6 and Pentium only).
    public static let sendChecksum = APICErrorStatus(rawValue: 1 << 0)
    /// Bit 1 (P6 and Pentium only).
    public static let receiveChecksum = APICErrorStatus(rawValue: 1 << 1)
    /// Bit 2: an IPI this APIC sent was accepted by no APIC.
    public static let sendAccept = APICErrorStatus(rawValue: 1 << 2)
    /// Bit 3 (P6 and Pentium only).
    public static let receiveAccept = APICErrorStatus(rawValue: 1 << 3)
    /// Bit 4: a lowest-priority IPI was sent where the processor does not support it.
    public static let redirectableIPI = APICErrorStatus(rawValue: 1 << 4)
    /// Bit 5: this APIC tried to send a fixed or lowest-priority IPI with a vector below 16.
    public static let sendIllegalVector = APICErrorStatus(rawValue: 1 << 5)
    /// Bit 6: this APIC received (or its LVT named) a vector below 16 (SDM 11.5.2).
    public static let receivedIllegalVector = APICErrorStatus(rawValue: 1 << 6)
    /// Bit 7: software accessed a reserved offset of the xAPIC page.
    public static let illegalRegisterAddress = APICErrorStatus(rawValue: 1 << 7)
}

/// The interrupt command register, in its 64-bit x2APIC layout (SDM 11.12.9, Figure 11-28): the
/// xAPIC ICR is the same with the 8-bit destination in bits 63:56 (Figure 11-12).
public struct InterruptCommand: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// Bits of the low dword that software may set: vector, delivery mode, destination mode,
    /// level, trigger mode and shorthand (bit 12, delivery status, is read-only; 13, 16, 17 and
    /// 31:20 are reserved).
    public static let writableLowBits: UInt32 = 0x000C_CFFF

    /// An ICR that sends `message`, destination laid out for `x2APIC` or xAPIC (bits 63:56).
    public init(_ message: APICInterruptMessage, x2APIC: Bool) {
        var raw = UInt64(message.vector) | UInt64(message.deliveryMode.rawValue) << 8
        raw |= UInt64(message.destinationMode.rawValue) << 11
        raw |= (message.level ? 1 : 0) << 14 | UInt64(message.triggerMode.rawValue) << 15
        raw |= UInt64(message.shorthand.rawValue) << 18
        raw |= x2APIC ? UInt64(message.destination) << 32 : UInt64(message.destination & 0xFF) << 56
        self.rawValue = raw
    }

    @inlinable public var vector: UInt8 { UInt8(truncatingIfNeeded: rawValue) }
    @inlinable public var deliveryMode: APICDeliveryMode { APICDeliveryMode(bits: rawValue, shift: 8) }
    @inlinable public var destinationMode: APICDestinationMode { rawValue & (1 << 11) != 0 ? .logical : .physical }
    /// Bit 14.
    @inlinable public var level: Bool { rawValue & (1 << 14) != 0 }
    @inlinable public var triggerMode: APICTriggerMode { rawValue & (1 << 15) != 0 ? .level : .edge }
    @inlinable public var shorthand: APICDestinationShorthand {
        APICDestinationShorthand(rawValue: UInt8((rawValue >> 18) & 3))!
    }

    /// The destination: bits 63:32 in x2APIC mode, bits 63:56 in xAPIC mode.
    @inlinable public func destination(x2APIC: Bool) -> UInt32 {
        x2APIC ? UInt32(truncatingIfNeeded: rawValue >> 32) : UInt32(truncatingIfNeeded: rawValue >> 56)
    }

    /// The message this command sends.
    public func message(x2APIC: Bool) -> APICInterruptMessage {
        APICInterruptMessage(
            vector: vector, deliveryMode: deliveryMode, destinationMode: destinationMode,
            destination: destination(x2APIC: x2APIC), triggerMode: triggerMode, level: level,
            shorthand: shorthand)
    }
}

/// IA32_APIC_BASE, MSR 0x1B (SDM 11.4.4, Figure 11-5; 11.12.1 for EXTD).
public struct APICBase: RawRepresentable, Hashable, Sendable {
    public var rawValue: UInt64
    @inlinable public init(rawValue: UInt64) { self.rawValue = rawValue }

    /// The MSR index.
    public static let msr: UInt32 = 0x1B
    /// The architectural default base of the xAPIC page.
    public static let defaultAddress: UInt64 = 0xFEE0_0000

    /// The power-up value: the default base, globally enabled, BSP flag as given.
    public static func reset(isBootstrapProcessor: Bool) -> APICBase {
        APICBase(rawValue: defaultAddress | 1 << 11 | (isBootstrapProcessor ? 1 << 8 : 0))
    }

    /// Bit 8: this is the bootstrap processor.
    @inlinable public var isBootstrapProcessor: Bool { rawValue & (1 << 8) != 0 }
    /// Bit 10 (EXTD): x2APIC mode.
    @inlinable public var x2APICEnabled: Bool { rawValue & (1 << 10) != 0 }
    /// Bit 11 (EN): the APIC is globally enabled.
    @inlinable public var globallyEnabled: Bool { rawValue & (1 << 11) != 0 }
    /// Bits 51:12: the physical base of the xAPIC page.
    @inlinable public var address: UInt64 { rawValue & 0x000F_FFFF_FFFF_F000 }

    /// The mode these EN and EXTD bits select; nil for EN = 0 with EXTD = 1 (invalid, Table 11-5).
    @inlinable public var mode: APICMode? {
        switch (globallyEnabled, x2APICEnabled) {
        case (false, false): .disabled
        case (true, false): .xAPIC
        case (true, true): .x2APIC
        case (false, true): nil
        }
    }
}

/// The operating mode of a local APIC (SDM 11.12.5.1 "x2APIC States", Table 11-5).
public enum APICMode: Sendable, Hashable {
    /// Globally disabled: IA32_APIC_BASE.EN = 0.
    case disabled
    /// The memory-mapped xAPIC interface.
    case xAPIC
    /// The MSR interface at 0x800-0x8FF.
    case x2APIC
}
