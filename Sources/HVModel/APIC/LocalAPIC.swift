// The local APIC as a pure value: registers, priorities, acceptance, dispatch and EOI (SDM 11.4
// "Local APIC", 11.8 "Handling Interrupts"). The xAPIC page view is here; the x2APIC MSR view is
// in LocalAPIC+X2APIC.swift and the timer in LocalAPIC+Timer.swift.
//
// The model never delivers anything itself: a register write returns a `LocalAPICEffect` (an IPI
// to route, an EOI to broadcast, a timer to re-arm) and the caller routes it.

/// What a register write asks the caller to do.
public enum LocalAPICEffect: Hashable, Sendable {
    /// Nothing beyond the register change. After any write, `pendingInterrupt` may have changed
    /// (a lower TPR, an error interrupt): check it before resuming the vCPU.
    case none
    /// Send this IPI (from an ICR or SELF IPI write): route it with `APICRouting` or a backend.
    case sendIPI(APICInterruptMessage)
    /// An EOI retired `vector` from the ISR (SDM 11.8.5).
    case endOfInterrupt(APICEndOfInterrupt)
    /// The timer's initial count, mode, divisor or deadline changed: re-read `nextTimerExpiry`.
    case timerReprogrammed
}

/// The result of an EOI (SDM 11.8.5 "Signaling Interrupt Servicing Completion").
public struct APICEndOfInterrupt: Hashable, Sendable {
    /// The vector retired from the ISR.
    public var vector: UInt8
    /// The vector's TMR bit was set: it was accepted as a level-triggered interrupt.
    public var levelTriggered: Bool
    /// Whether the EOI is broadcast to the I/O APICs: level-triggered and not suppressed by SVR
    /// bit 12. When true, call `IOAPIC.endOfInterrupt(vector:)` on every I/O APIC; when a
    /// level-triggered EOI is suppressed, the guest writes the I/O APIC's EOI register itself.
    public var broadcastToIOAPICs: Bool

    public init(vector: UInt8, levelTriggered: Bool, broadcastToIOAPICs: Bool) {
        self.vector = vector
        self.levelTriggered = levelTriggered
        self.broadcastToIOAPICs = broadcastToIOAPICs
    }
}

/// What happened to an interrupt offered to this APIC (from the bus or a local source).
public enum APICAcceptance: Hashable, Sendable {
    /// Dropped: masked, the APIC is disabled, or the vector was illegal (logged in the ESR).
    case ignored
    /// Fixed or lowest priority: the vector is now set in the IRR (maybe already was).
    case requested(vector: UInt8)
    /// The caller injects an NMI into this vCPU.
    case nmi
    /// The caller enters SMM on this vCPU.
    case smi
    /// INIT: the caller resets the vCPU to wait-for-SIPI and calls `resetForINIT()` (SDM 11.4.7.3).
    case initialize
    /// SIPI: a vCPU waiting for SIPI starts in real mode at `vector << 12` (SDM 11.6.1, 9.4.4).
    case startup(vector: UInt8)
    /// ExtINT: the caller asks the 8259A-compatible PIC for the vector (SDM 11.6.1).
    case extINT
}

/// One local APIC (SDM 11.4). A value: copy it to snapshot it.
public struct LocalAPIC: Sendable {
    /// What this APIC reports about itself; fixed when it is created.
    public struct Configuration: Hashable, Sendable {
        /// The initial APIC ID: the xAPIC ID after reset and the x2APIC ID (SDM 11.4.6, 11.12.8).
        public var apicID: UInt32
        /// IA32_APIC_BASE.BSP after reset.
        public var isBootstrapProcessor: Bool
        /// The version register's bits 7:0: 0x14 for an integrated APIC as KVM reports (SDM 11.4.8).
        public var version: UInt8
        /// Whether the LVT CMCI register exists (then max LVT entry is 6, else 5).
        public var hasCMCI: Bool
        /// Whether SVR bit 12 may be set (version bit 24, SDM 11.8.5).
        public var supportsEOIBroadcastSuppression: Bool
        /// TSC cycles per tick of the timer's input clock, before the divide configuration.
        public var tscCyclesPerTimerTick: UInt64

        public init(
            apicID: UInt32, isBootstrapProcessor: Bool = false, version: UInt8 = 0x14, hasCMCI: Bool = true,
            supportsEOIBroadcastSuppression: Bool = true, tscCyclesPerTimerTick: UInt64 = 1
        ) {
            self.apicID = apicID
            self.isBootstrapProcessor = isBootstrapProcessor
            self.version = version
            self.hasCMCI = hasCMCI
            self.supportsEOIBroadcastSuppression = supportsEOIBroadcastSuppression
            self.tscCyclesPerTimerTick = max(1, tscCyclesPerTimerTick)
        }
    }

    public let configuration: Configuration
    /// IA32_APIC_BASE (change it with `writeAPICBase(_:)`).
    public internal(set) var base: APICBase
    /// The xAPIC ID (ID register bits 31:24), writable in xAPIC mode.
    public internal(set) var xAPICID: UInt8
    /// TPR bits 7:0.
    public internal(set) var taskPriority: UInt8 = 0
    /// The LDR as read: bits 31:24 in xAPIC mode, the derived 32-bit logical ID in x2APIC mode.
    public internal(set) var logicalDestination: UInt32 = 0
    /// DFR bits 31:28 (0xF flat, 0x0 cluster); bits 27:0 read as ones.
    public internal(set) var destinationFormat: UInt32 = 0xFFFF_FFFF
    /// The spurious-interrupt vector register (SDM 11.9, Figure 11-23).
    public internal(set) var spuriousVectorRegister: UInt32 = 0xFF
    public internal(set) var irr = APICVectorSet()
    public internal(set) var isr = APICVectorSet()
    public internal(set) var tmr = APICVectorSet()
    /// The ESR as software reads it: the errors latched by the last ESR write (SDM 11.5.3).
    public internal(set) var errorStatus: APICErrorStatus = []
    /// Errors logged since the last ESR write, shown by the next one.
    public internal(set) var unlatchedErrors: APICErrorStatus = []
    /// LVT entries by `LocalVectorTableEntry.rawValue`: timer, thermal, perf, LINT0, LINT1, error, CMCI.
    var lvt: (UInt32, UInt32, UInt32, UInt32, UInt32, UInt32, UInt32)
    /// The ICR (delivery status always reads idle: delivery is instantaneous here).
    public internal(set) var interruptCommand = InterruptCommand(rawValue: 0)
    /// The timer's state (see LocalAPIC+Timer.swift).
    public internal(set) var timer = APICTimerState()
    /// The model's clock: the TSC cycle up to which the timer has been advanced.
    public internal(set) var now: UInt64 = 0

    /// An APIC in its power-up state (SDM 11.4.7.1): xAPIC mode, software-disabled, all LVTs masked.
    public init(_ configuration: Configuration) {
        self.configuration = configuration
        self.base = APICBase.reset(isBootstrapProcessor: configuration.isBootstrapProcessor)
        self.xAPICID = UInt8(truncatingIfNeeded: configuration.apicID)
        let masked = LVTEntry.masked.rawValue
        self.lvt = (masked, masked, masked, masked, masked, masked, masked)
    }

    /// The current mode, from IA32_APIC_BASE.
    @inlinable public var mode: APICMode { base.mode ?? .disabled }

    /// The APIC ID as the current mode reports it: 8-bit in xAPIC mode, 32-bit in x2APIC mode.
    public var id: UInt32 { mode == .x2APIC ? configuration.apicID : UInt32(xAPICID) }

    /// SVR bit 8: the APIC is software-enabled (SDM 11.4.7.2).
    @inlinable public var isSoftwareEnabled: Bool { spuriousVectorRegister & (1 << 8) != 0 }
    /// SVR bits 7:0.
    @inlinable public var spuriousVector: UInt8 { UInt8(truncatingIfNeeded: spuriousVectorRegister) }
    /// SVR bit 12: EOIs of level-triggered interrupts are not broadcast (SDM 11.8.5).
    @inlinable public var suppressesEOIBroadcast: Bool { spuriousVectorRegister & (1 << 12) != 0 }

    /// The version register: version, max LVT entry in 23:16, EOI-broadcast suppression in 24.
    public var versionRegister: UInt32 {
        UInt32(configuration.version) | (configuration.hasCMCI ? 6 : 5) << 16
            | (configuration.supportsEOIBroadcastSuppression ? 1 << 24 : 0)
    }

    /// PPR (SDM 11.8.3.1).
    public var processorPriority: UInt8 {
        APICPriority.processorPriority(tpr: taskPriority, isrv: isr.highest ?? 0)
    }

    /// APR (SDM 11.6.2.4).
    public var arbitrationPriority: UInt8 {
        APICPriority.arbitrationPriority(tpr: taskPriority, isrv: isr.highest ?? 0, irrv: irr.highest ?? 0)
    }

    /// An LVT entry.
    public func lvtEntry(_ entry: LocalVectorTableEntry) -> LVTEntry {
        switch entry {
        case .timer: LVTEntry(rawValue: lvt.0)
        case .thermal: LVTEntry(rawValue: lvt.1)
        case .performance: LVTEntry(rawValue: lvt.2)
        case .lint0: LVTEntry(rawValue: lvt.3)
        case .lint1: LVTEntry(rawValue: lvt.4)
        case .error: LVTEntry(rawValue: lvt.5)
        case .cmci: LVTEntry(rawValue: lvt.6)
        }
    }

    mutating func setLVT(_ entry: LocalVectorTableEntry, raw: UInt32) {
        switch entry {
        case .timer: lvt.0 = raw
        case .thermal: lvt.1 = raw
        case .performance: lvt.2 = raw
        case .lint0: lvt.3 = raw
        case .lint1: lvt.4 = raw
        case .error: lvt.5 = raw
        case .cmci: lvt.6 = raw
        }
    }

    // MARK: - The xAPIC page (SDM 11.4.1, Table 11-1)

    /// A 32-bit read at `offset` (0-0xFFF) of the xAPIC page. Reserved offsets read 0 and log
    /// "illegal register address" (SDM 11.5.3); unaligned offsets read 0.
    public mutating func read(offset: UInt32) -> UInt32 {
        guard let register = APICRegister(offset: offset & 0xFFF), register != .lvtCMCI || configuration.hasCMCI
        else {
            if offset & 0xF == 0 { logError(.illegalRegisterAddress) }
            return 0
        }
        return value(of: register)
    }

    /// A register's value as a 32-bit xAPIC read shows it (ICR high included).
    public func value(of register: APICRegister) -> UInt32 {
        switch register {
        case .id: mode == .x2APIC ? configuration.apicID : UInt32(xAPICID) << 24
        case .version: versionRegister
        case .taskPriority: UInt32(taskPriority)
        case .arbitrationPriority: UInt32(arbitrationPriority)
        case .processorPriority: UInt32(processorPriority)
        case .endOfInterrupt, .remoteRead, .selfIPI: 0
        case .logicalDestination: logicalDestination
        case .destinationFormat: destinationFormat | 0x0FFF_FFFF
        case .spuriousVector: spuriousVectorRegister
        case .inService0, .inService1, .inService2, .inService3, .inService4, .inService5, .inService6,
            .inService7:
            isr.register(register.vectorSetIndex)
        case .triggerMode0, .triggerMode1, .triggerMode2, .triggerMode3, .triggerMode4, .triggerMode5,
            .triggerMode6, .triggerMode7:
            tmr.register(register.vectorSetIndex)
        case .interruptRequest0, .interruptRequest1, .interruptRequest2, .interruptRequest3, .interruptRequest4,
            .interruptRequest5, .interruptRequest6, .interruptRequest7:
            irr.register(register.vectorSetIndex)
        case .errorStatus: errorStatus.rawValue
        case .interruptCommandLow: UInt32(truncatingIfNeeded: interruptCommand.rawValue)
        case .interruptCommandHigh: UInt32(truncatingIfNeeded: interruptCommand.rawValue >> 32)
        case .lvtTimer, .lvtThermal, .lvtPerformance, .lvtLINT0, .lvtLINT1, .lvtError, .lvtCMCI:
            lvtEntry(LocalVectorTableEntry(register: register)!).rawValue
        case .timerInitialCount: timer.initialCount
        case .timerCurrentCount: currentCount(at: now)
        case .timerDivideConfiguration: timer.divideConfiguration
        }
    }

    /// A 32-bit write at `offset` of the xAPIC page. Read-only registers ignore writes; reserved
    /// offsets log "illegal register address"; writing ICR low sends the IPI.
    public mutating func write(offset: UInt32, value: UInt32) -> LocalAPICEffect {
        guard let register = APICRegister(offset: offset & 0xFFF), register != .lvtCMCI || configuration.hasCMCI
        else {
            if offset & 0xF == 0 { logError(.illegalRegisterAddress) }
            return .none
        }
        switch register {
        case .id: xAPICID = UInt8(truncatingIfNeeded: value >> 24)
        case .logicalDestination: logicalDestination = value & 0xFF00_0000
        case .destinationFormat: destinationFormat = value | 0x0FFF_FFFF
        case .interruptCommandHigh:
            interruptCommand.rawValue = (interruptCommand.rawValue & 0xFFFF_FFFF) | UInt64(value & 0xFF00_0000) << 32
        case .interruptCommandLow:
            let low = UInt64(value & InterruptCommand.writableLowBits)
            interruptCommand.rawValue = (interruptCommand.rawValue & 0xFFFF_FFFF_0000_0000) | low
            return sendIPI(interruptCommand.message(x2APIC: false))
        default: return writeCommon(register, value: value)
        }
        return .none
    }

    /// The writes whose meaning is the same in xAPIC and x2APIC mode.
    mutating func writeCommon(_ register: APICRegister, value: UInt32) -> LocalAPICEffect {
        switch register {
        case .taskPriority: taskPriority = UInt8(truncatingIfNeeded: value)
        case .endOfInterrupt: return endOfInterrupt()
        case .spuriousVector: writeSpuriousVector(value)
        case .errorStatus:
            errorStatus = unlatchedErrors  // SDM 11.5.3: the write latches errors logged since the last
            unlatchedErrors = []
        case .lvtTimer, .lvtThermal, .lvtPerformance, .lvtLINT0, .lvtLINT1, .lvtError, .lvtCMCI:
            return writeLVT(LocalVectorTableEntry(register: register)!, value: value)
        case .timerInitialCount: return writeInitialCount(value)
        case .timerDivideConfiguration: return writeDivideConfiguration(value)
        default: break  // read-only registers ignore writes
        }
        return .none
    }

    mutating func writeSpuriousVector(_ value: UInt32) {
        let writable: UInt32 = configuration.supportsEOIBroadcastSuppression ? 0x13FF : 0x03FF
        spuriousVectorRegister = value & writable
        if !isSoftwareEnabled {
            // SDM 11.4.7.2: software disable sets every LVT mask bit.
            for entry in LocalVectorTableEntry.allCases {
                setLVT(entry, raw: lvtEntry(entry).rawValue | LVTEntry.masked.rawValue)
            }
        }
    }

    mutating func writeLVT(_ entry: LocalVectorTableEntry, value: UInt32) -> LocalAPICEffect {
        let old = lvtEntry(entry)
        var raw = (value & entry.writableBits) | (old.rawValue & (1 << 14))  // remote IRR is read-only
        if !isSoftwareEnabled { raw |= LVTEntry.masked.rawValue }  // SDM 11.4.7.2: masks stay set
        if entry == .lint1 { raw &= ~(1 << 15) }  // SDM 11.5.1: LINT1 is always edge-triggered
        setLVT(entry, raw: raw)
        guard entry == .timer else { return .none }
        timerModeChanged(from: old.timerMode, to: LVTEntry(rawValue: raw).timerMode)
        return .timerReprogrammed
    }

    /// Logs an error for the next ESR write to latch and raises the LVT error interrupt.
    public mutating func logError(_ error: APICErrorStatus) {
        unlatchedErrors.insert(error)
        _ = raiseLocalInterrupt(.error)
    }

    // MARK: - Acceptance, dispatch and EOI (SDM 11.8.4, 11.8.5)

    /// Accepts a message whose destination this APIC matched (see `APICRouting`).
    public mutating func accept(_ message: APICInterruptMessage) -> APICAcceptance {
        switch message.deliveryMode {
        case .fixed, .lowestPriority:
            guard mode != .disabled, isSoftwareEnabled else { return .ignored }
            return request(vector: message.vector, trigger: message.triggerMode)
        case .nmi: return .nmi
        case .smi: return .smi
        case .initialize: return message.isINITLevelDeassert ? .ignored : .initialize
        case .startup: return .startup(vector: message.vector)
        case .extINT: return .extINT
        case .reserved3: return .ignored
        }
    }

    /// Raises the interrupt an LVT entry describes (the timer expiring, LINT0/1 asserted, ...).
    public mutating func raiseLocalInterrupt(_ entry: LocalVectorTableEntry) -> APICAcceptance {
        let lvtValue = lvtEntry(entry)
        guard mode != .disabled, !lvtValue.isMasked else { return .ignored }
        let deliveryMode = entry == .timer || entry == .error ? .fixed : lvtValue.deliveryMode
        switch deliveryMode {
        case .fixed:
            let isLINT = entry == .lint0 || entry == .lint1
            let trigger: APICTriggerMode = isLINT ? lvtValue.triggerMode : .edge
            if isLINT && trigger == .level {
                if lvtValue.remoteIRR { return .ignored }
                setLVT(entry, raw: lvtValue.rawValue | 1 << 14)
            }
            return request(vector: lvtValue.vector, trigger: trigger)
        default:
            return accept(APICInterruptMessage(vector: lvtValue.vector, deliveryMode: deliveryMode, destination: id))
        }
    }

    /// Sets the IRR bit of a fixed interrupt; TMR records its trigger mode (SDM 11.8.4).
    mutating func request(vector: UInt8, trigger: APICTriggerMode) -> APICAcceptance {
        guard vector >= 16 else {
            // SDM 11.5.2: vectors 0-15 are illegal; without this guard an unmasked error LVT with an
            // illegal vector would recurse.
            if !unlatchedErrors.contains(.receivedIllegalVector) { logError(.receivedIllegalVector) }
            return .ignored
        }
        irr.insert(vector)
        if trigger == .level { tmr.insert(vector) } else { tmr.remove(vector) }
        return .requested(vector: vector)
    }

    /// The vector the APIC would dispatch to the processor now: the highest IRR vector whose
    /// priority class exceeds PPR's (SDM 11.8.3.1); nil when none (or the APIC is disabled).
    public var pendingInterrupt: UInt8? {
        guard mode != .disabled, isSoftwareEnabled, let vector = irr.highest else { return nil }
        return APICPriority.canDispatch(vector, ppr: processorPriority) ? vector : nil
    }

    /// The processor takes the pending interrupt (the INTA cycle): its IRR bit moves to the ISR
    /// (SDM 11.8.4). Returns the vector, nil when nothing may be dispatched.
    public mutating func acknowledge() -> UInt8? {
        guard let vector = pendingInterrupt else { return nil }
        irr.remove(vector)
        isr.insert(vector)
        return vector
    }

    /// An EOI: clears the highest ISR bit and reports whether to broadcast it (SDM 11.8.5).
    /// An EOI with nothing in service does nothing.
    public mutating func endOfInterrupt() -> LocalAPICEffect {
        guard let vector = isr.highest else { return .none }
        isr.remove(vector)
        let level = tmr.contains(vector)
        // SDM 11.5.1: a LINT entry's remote IRR clears when the EOI for its vector arrives.
        if lvtEntry(.lint0).vector == vector { setLVT(.lint0, raw: lvtEntry(.lint0).rawValue & ~(1 << 14)) }
        if lvtEntry(.lint1).vector == vector { setLVT(.lint1, raw: lvtEntry(.lint1).rawValue & ~(1 << 14)) }
        let broadcast = level && !(configuration.supportsEOIBroadcastSuppression && suppressesEOIBroadcast)
        return .endOfInterrupt(APICEndOfInterrupt(vector: vector, levelTriggered: level, broadcastToIOAPICs: broadcast))
    }

    /// Sends an IPI: vectors below 16 are not sent for fixed and lowest priority (SDM 11.5.2).
    mutating func sendIPI(_ message: APICInterruptMessage) -> LocalAPICEffect {
        if (message.deliveryMode == .fixed || message.deliveryMode == .lowestPriority) && message.vector < 16 {
            logError(.sendIllegalVector)
            return .none
        }
        return .sendIPI(message)
    }

    /// INIT (SDM 11.4.7.3): every register returns to its power-up state except the APIC ID,
    /// IA32_APIC_BASE and the model's clock. The processor then waits for a SIPI.
    public mutating func resetForINIT() {
        var fresh = LocalAPIC(configuration)
        fresh.base = base
        fresh.xAPICID = xAPICID
        fresh.now = now
        if mode == .x2APIC { fresh.logicalDestination = logicalDestination }
        self = fresh
    }

    // MARK: - Destinations (SDM 11.6.2, 11.12.10)

    /// Whether a message's destination field selects this APIC (shorthands are the router's).
    /// Physical: the APIC ID or the broadcast ID. Logical: flat or cluster model via LDR and DFR
    /// (SDM 11.6.2.2), or the x2APIC `cluster << 16 | bit` form (SDM 11.12.10.1). An x2APIC
    /// target takes only 0xFFFF_FFFF as broadcast: a router that sends 8-bit I/O APIC or MSI
    /// destinations to x2APIC targets widens 0xFF first (as KVM does without 32-bit IDs).
    public func matches(destinationMode: APICDestinationMode, destination: UInt32) -> Bool {
        switch (mode, destinationMode) {
        case (.disabled, _): return false
        case (.x2APIC, .physical): return destination == 0xFFFF_FFFF || destination == configuration.apicID
        case (.x2APIC, .logical):
            if destination == 0xFFFF_FFFF { return true }
            return destination >> 16 == logicalDestination >> 16 && destination & logicalDestination & 0xFFFF != 0
        case (.xAPIC, .physical):
            let target = destination & 0xFF
            return target == 0xFF || target == UInt32(xAPICID)
        case (.xAPIC, .logical):
            let target = destination & 0xFF
            if target == 0xFF { return true }
            let logicalID = logicalDestination >> 24
            if destinationFormat >> 28 == 0xF { return target & logicalID != 0 }  // flat model
            return target >> 4 == logicalID >> 4 && target & logicalID & 0xF != 0  // cluster model
        }
    }
}
