// The local APIC timer (SDM 11.5.4 "APIC Timer", 11.5.4.1 "TSC-Deadline Mode").
//
// Time is an input: the model's clock is a TSC value the caller passes to `advance(toCycles:)`.
// The timer's input clock runs at one tick per `Configuration.tscCyclesPerTimerTick` TSC cycles
// and the divide configuration slows it further; the count drops by one per divided tick.

/// The timer's registers and where its count started.
public struct APICTimerState: Hashable, Sendable {
    /// The initial-count register.
    public var initialCount: UInt32 = 0
    /// The divide-configuration register (bits 0, 1 and 3).
    public var divideConfiguration: UInt32 = 0
    /// IA32_TSC_DEADLINE (MSR 0x6E0): 0 when disarmed.
    public var tscDeadline: UInt64 = 0
    /// Whether a one-shot or periodic count is running.
    public var isCounting = false
    /// The TSC cycle at which the count was `startCount`.
    public var armedAt: UInt64 = 0
    /// The count at `armedAt` (the initial count, or the count carried over a mode or divisor change).
    public var startCount: UInt32 = 0

    public init() {}

    /// The divisor the divide-configuration register selects: bits 3,1,0 = 000 -> 2, 001 -> 4,
    /// ... 110 -> 128, 111 -> 1 (SDM 11.5.4, Figure 11-10).
    @inlinable public static func divisor(forConfiguration value: UInt32) -> UInt64 {
        let code = (value >> 1) & 4 | value & 3
        return code == 7 ? 1 : 2 << UInt64(code)
    }
}

/// What advancing the clock did to the timer.
public struct APICTimerExpiry: Hashable, Sendable {
    /// How many times the timer reached zero (or passed its deadline) in the interval.
    public var expirations: UInt64
    /// The vector made pending in the IRR, nil when nothing expired or the LVT entry is masked.
    /// Several expirations before the vCPU takes the interrupt collapse into one IRR bit.
    public var requestedVector: UInt8?

    public init(expirations: UInt64, requestedVector: UInt8?) {
        self.expirations = expirations
        self.requestedVector = requestedVector
    }
}

extension LocalAPIC {
    /// TSC cycles per count at the current divisor.
    var cyclesPerCount: UInt64 {
        APICTimerState.divisor(forConfiguration: timer.divideConfiguration) &* configuration.tscCyclesPerTimerTick
    }

    /// The current-count register at TSC cycle `cycle` (>= the arm time): 0 when stopped, expired
    /// in one-shot mode, or in TSC-deadline mode (SDM 11.5.4.1: the current count reads 0).
    public func currentCount(at cycle: UInt64) -> UInt32 {
        guard timer.isCounting, cycle >= timer.armedAt else { return timer.isCounting ? timer.startCount : 0 }
        let ticks = (cycle - timer.armedAt) / cyclesPerCount
        if ticks < UInt64(timer.startCount) { return timer.startCount - UInt32(ticks) }
        switch lvtEntry(.timer).timerMode {
        case .periodic:
            guard timer.initialCount > 0 else { return 0 }
            // Reaching zero reloads the initial count (SDM 11.5.4).
            return timer.initialCount - UInt32((ticks - UInt64(timer.startCount)) % UInt64(timer.initialCount))
        default: return 0
        }
    }

    /// How many expirations fall at or before `cycle` since the count was armed.
    func expirations(through cycle: UInt64) -> UInt64 {
        guard timer.isCounting, timer.startCount > 0 else { return 0 }
        let first = timer.armedAt &+ UInt64(timer.startCount) &* cyclesPerCount
        guard cycle >= first else { return 0 }
        guard lvtEntry(.timer).timerMode == .periodic, timer.initialCount > 0 else { return 1 }
        return (cycle - first) / (UInt64(timer.initialCount) &* cyclesPerCount) + 1
    }

    /// The TSC cycle of the next expiry after `now`, nil when the timer is idle: arm a host timer
    /// for it and call `advance(toCycles:)` then.
    public var nextTimerExpiry: UInt64? {
        if lvtEntry(.timer).timerMode == .tscDeadline { return timer.tscDeadline == 0 ? nil : timer.tscDeadline }
        guard timer.isCounting, timer.startCount > 0 else { return nil }
        let first = timer.armedAt &+ UInt64(timer.startCount) &* cyclesPerCount
        if now < first { return first }
        guard lvtEntry(.timer).timerMode == .periodic, timer.initialCount > 0 else { return nil }
        let period = UInt64(timer.initialCount) &* cyclesPerCount
        return first &+ ((now - first) / period + 1) &* period
    }

    /// Moves the model's clock to TSC cycle `cycle` (never backwards) and fires the timer for every
    /// expiry in (now, cycle]; a TSC deadline at or before `cycle` fires and disarms (SDM 11.5.4.1).
    public mutating func advance(toCycles cycle: UInt64) -> APICTimerExpiry {
        let target = max(cycle, now)
        var fired: UInt64 = 0
        switch lvtEntry(.timer).timerMode {
        case .tscDeadline:
            if timer.tscDeadline != 0 && timer.tscDeadline <= target {
                fired = 1
                timer.tscDeadline = 0
            }
        case .oneShot, .periodic:
            fired = expirations(through: target) - expirations(through: now)
            if fired > 0 && lvtEntry(.timer).timerMode == .oneShot { timer.isCounting = false }
        case .reserved: break
        }
        now = target
        guard fired > 0, case .requested(let vector) = raiseLocalInterrupt(.timer) else {
            return APICTimerExpiry(expirations: fired, requestedVector: nil)
        }
        return APICTimerExpiry(expirations: fired, requestedVector: vector)
    }

    /// Writes IA32_TSC_DEADLINE (MSR 0x6E0): arms the timer in TSC-deadline mode, 0 disarms; in other
    /// modes the write is ignored (SDM 11.5.4.1). A deadline already passed fires at the next advance.
    public mutating func writeTSCDeadline(_ deadline: UInt64) -> LocalAPICEffect {
        guard lvtEntry(.timer).timerMode == .tscDeadline else { return .none }
        timer.tscDeadline = deadline
        return .timerReprogrammed
    }

    /// Reads IA32_TSC_DEADLINE: 0 outside TSC-deadline mode or once it fired.
    public var tscDeadline: UInt64 { lvtEntry(.timer).timerMode == .tscDeadline ? timer.tscDeadline : 0 }

    /// The initial-count write starts the count at `now`; 0 stops the timer; ignored in
    /// TSC-deadline mode (SDM 11.5.4).
    mutating func writeInitialCount(_ value: UInt32) -> LocalAPICEffect {
        guard lvtEntry(.timer).timerMode != .tscDeadline else { return .none }
        timer.initialCount = value
        timer.startCount = value
        timer.armedAt = now
        timer.isCounting = value != 0
        return .timerReprogrammed
    }

    /// A new divisor applies from `now`; the count reached so far carries over.
    mutating func writeDivideConfiguration(_ value: UInt32) -> LocalAPICEffect {
        rebaseCount()
        timer.divideConfiguration = value & 0xB
        return .timerReprogrammed
    }

    /// Restarts the arithmetic at `now` from the current count, so later changes of mode or divisor
    /// apply from here on.
    mutating func rebaseCount() {
        guard timer.isCounting else { return }
        let count = currentCount(at: now)
        timer.startCount = count
        timer.armedAt = now
        timer.isCounting = count != 0
    }

    /// Switching between one-shot and periodic keeps counting; entering or leaving TSC-deadline mode
    /// disarms the timer (SDM 11.5.4.1).
    mutating func timerModeChanged(from old: APICTimerMode, to new: APICTimerMode) {
        guard old != new else { return }
        if old == .tscDeadline || new == .tscDeadline {
            timer.tscDeadline = 0
            timer.initialCount = 0
            timer.startCount = 0
            timer.isCounting = false
        } else {
            // The count so far was computed in the old mode; restart the arithmetic from it.
            var previous = self
            previous.setLVT(.timer, raw: (lvtEntry(.timer).rawValue & ~(3 << 17)) | UInt32(old.rawValue) << 17)
            previous.rebaseCount()
            timer = previous.timer
        }
    }
}
