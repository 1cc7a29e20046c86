// The ACPI fixed-hardware power-management registers at QEMU's PIIX4 PM base 0x600 (ACPI 6.4,
// 4.8.3 "PM1 Event Grouping", 4.8.3.2 "PM1 Control Registers", 4.8.3.3 "Power Management
// Timer"): PM1a event block at 0x600, PM1a control at 0x604, the PM timer at 0x608, all of
// which the FADT that `ACPITables` builds points at.
import Synchronization

/// PM1a_EVT_BLK (4 bytes), PM1a_CNT_BLK (2 bytes, then 2 unused) and PM_TMR_BLK (4 bytes) from
/// port 0x600 (register it at `basePort` with `portCount` ports).
///
/// - PM timer (0x608, read-only): a 24-bit counter at 3.579545 MHz (ACPI 4.8.3.3) derived from
///   `clock`, a monotonic nanosecond clock; it starts at 0 when the device is created and wraps
///   at 2^24. TMR_VAL_EXT is 0 in the FADT, so guests expect 24 bits.
/// - PM1 status (0x600-0x601, write 1 to clear; 4.8.3.1.1): PWRBTN_STS (bit 8) set by
///   `pressPowerButton()`, RTC_STS (bit 10) by `rtcAlarm()`, WAK_STS (bit 15) on waking from S3.
///   PM1 enable (0x602-0x603): stored; PWRBTN_EN (8) and RTC_EN (10) decide which of those
///   raise the SCI (`sci`, the FADT's SCI_INT, ISA IRQ 9: high while an enabled status bit is
///   set) and which wake a sleeping machine (the power button always does, 4.8.3.1.1).
/// - PM1 control (0x604-0x605): SCI_EN (bit 0) reads 1, the machine being in ACPI mode from
///   the start (the FADT's SMI_CMD is 0). Writing SLP_EN (bit 13) with SLP_TYP (bits 10-12)
///   enters the sleep state the DSDT gives that type: `softOffType` (\_S5, 0) and
///   `suspendToDiskType` (\_S4, 2: the guest saved its image) stop the VM with
///   `StopReason.systemEvent(.shutdown)`; `suspendToRAMType` (\_S3, 1) returns
///   `ExitAction.suspend` and `wakeHandler` is called for the next wake event.
public final class ACPIPMDevice: PortIODevice, ResettableDevice, Sendable {
    public static let basePort: IOPort = 0x600
    public static let portCount = 12
    public static let timerPort: IOPort = 0x608
    /// The PM timer's rate in Hz (ACPI 4.8.3.3).
    public static let timerFrequency: UInt64 = 3_579_545
    /// The SLP_TYP values the DSDT's \_S3, \_S4 and \_S5 packages declare.
    public static let suspendToRAMType: UInt16 = 1
    public static let suspendToDiskType: UInt16 = 2
    public static let softOffType: UInt16 = 0

    /// PM1 status and enable bits (ACPI 6.4, tables 4.16 and 4.17).
    public enum Event {
        public static let powerButton: UInt16 = 1 << 8
        public static let rtc: UInt16 = 1 << 10
        public static let wake: UInt16 = 1 << 15
    }

    /// Nanoseconds from an arbitrary origin; must never go backwards.
    public typealias Clock = @Sendable () -> UInt64

    /// The host's monotonic clock.
    public static let hostClock: Clock = { monotonicNanoseconds() }

    private struct Registers {
        var status: UInt16 = 0
        var enable: UInt16 = 0
        var control: UInt16 = 1
        /// Between SLP_EN for S3 and the wake: what wakes the machine is recorded here too.
        var sleeping = false
        var wakeEvents: UInt16 = 0
    }

    public let name: String
    private let clock: Clock
    /// The PM timer reads `ticks` plus the ticks since `origin` (a `clock` reading): created at
    /// 0, moved by a snapshot restore so the counter goes on from the value saved.
    private let timerBase: Mutex<(origin: UInt64, ticks: UInt32)>
    private let sci: InterruptLine?
    private let registers = Mutex(Registers())
    private let wakeHandler = Mutex<(@Sendable () -> Void)?>(nil)

    /// `sci` is the SCI's line (nil: status bits still set, nothing is raised).
    public init(name: String = "acpi-pm", sci: InterruptLine? = nil, clock: @escaping Clock = ACPIPMDevice.hostClock) {
        self.name = name
        self.sci = sci
        self.clock = clock
        self.timerBase = Mutex((clock(), 0))
    }

    /// Called when a wake event arrives while the guest sleeps (S3): the machine's `wake()`.
    public func onWake(_ handler: @escaping @Sendable () -> Void) {
        wakeHandler.withLock { $0 = handler }
    }

    /// PM1 status and enable cleared, PM1 control back to SCI_EN; the PM timer runs on. A reset
    /// on the way out of S3 keeps what woke the machine for `resumed()`.
    public func reset() {
        registers.withLock { registers in
            let events = registers.sleeping ? registers.wakeEvents : 0
            let sleeping = registers.sleeping
            registers = Registers()
            registers.sleeping = sleeping
            registers.wakeEvents = events
        }
        sci?.lower()
    }

    /// The machine woke from S3: WAK_STS and the status bit of what woke it are set for the
    /// guest's resume path to read.
    public func resumed() {
        registers.withLock { registers in
            registers.status |= Event.wake | registers.wakeEvents
            registers.sleeping = false
            registers.wakeEvents = 0
        }
        updateSCI()
    }

    /// Whether the guest has put the machine to sleep (S3) and not woken yet.
    public var isSleeping: Bool { registers.withLock { $0.sleeping } }

    /// Whether a wake event came since the guest asked to sleep (`Machine.addWakeSource`).
    public var wakePending: Bool { registers.withLock { $0.sleeping && $0.wakeEvents != 0 } }

    /// The power button (ACPI's fixed power button, 4.8.2.2.1.1): sets PWRBTN_STS, raises the SCI
    /// when PWRBTN_EN is set (Linux then powers off), and wakes a sleeping machine.
    public func pressPowerButton() { event(Event.powerButton, wakes: true) }

    /// The RTC alarm fired with its interrupt enabled: sets RTC_STS, raises the SCI when RTC_EN
    /// is set, and wakes a sleeping machine when RTC_EN is set (4.8.2.2.1.2 "RTC Wakeup Alarm").
    public func rtcAlarm() { event(Event.rtc, wakes: false) }

    private func event(_ bit: UInt16, wakes always: Bool) {
        let wake = registers.withLock { registers -> Bool in
            registers.status |= bit
            guard registers.sleeping, always || registers.enable & bit != 0 else { return false }
            registers.wakeEvents |= bit
            return true
        }
        updateSCI()
        if wake, let handler = wakeHandler.withLock({ $0 }) { handler() }
    }

    /// The SCI follows status & enable (while awake: a sleeping machine has no SCI to take).
    private func updateSCI() {
        guard let sci else { return }
        let level = registers.withLock { !$0.sleeping && $0.status & $0.enable & (Event.powerButton | Event.rtc) != 0 }
        sci.set(level)
    }

    /// The PM timer's value now (24 bits).
    public var timerValue: UInt32 {
        let base = timerBase.withLock { $0 }
        let elapsed = clock() &- base.origin
        let ticks = elapsed / 1_000_000_000 * Self.timerFrequency
            + elapsed % 1_000_000_000 * Self.timerFrequency / 1_000_000_000
        return (UInt32(truncatingIfNeeded: ticks) &+ base.ticks) & 0x00FF_FFFF
    }

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        let (status, enable, control) = registers.withLock { ($0.status, $0.enable, $0.control) }
        let timer = timerValue
        // The block as bytes: status, enable, control, 2 unused, timer.
        let image: [UInt8] = [UInt8(truncatingIfNeeded: status), UInt8(status >> 8),
                              UInt8(truncatingIfNeeded: enable), UInt8(enable >> 8),
                              UInt8(truncatingIfNeeded: control), UInt8(control >> 8), 0, 0]
            + (0..<4).map { UInt8(truncatingIfNeeded: timer >> (8 * UInt32($0))) }
        var value: UInt32 = 0
        for index in 0..<min(size, 4) {
            let position = Int(offset) + index
            value |= UInt32(position < image.count ? image[position] : 0xFF) << (8 * UInt32(index))
        }
        return value
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        var sleepRequested = false
        let sleepType = registers.withLock { registers -> UInt16 in
            for index in 0..<min(size, 4) {
                let byte = UInt16(truncatingIfNeeded: value >> (8 * UInt32(index)))
                switch Int(offset) + index {
                case 0: registers.status &= ~byte          // write 1 to clear
                case 1: registers.status &= ~(byte << 8)
                case 2: registers.enable = registers.enable & 0xFF00 | byte
                case 3: registers.enable = registers.enable & 0x00FF | byte << 8
                case 4: registers.control = registers.control & 0xFF00 | byte
                case 5:
                    registers.control = registers.control & 0x00FF | byte << 8
                    sleepRequested = byte & 0x20 != 0  // SLP_EN, bit 13
                default: break  // the timer is read-only
                }
            }
            let type = (registers.control >> 10) & 0x7
            // SLP_EN is write-only and SCI_EN stays set (ACPI 4.8.3.2.1).
            registers.control = registers.control & ~0x2000 | 1
            if sleepRequested, type == Self.suspendToRAMType {
                registers.sleeping = true
                registers.wakeEvents = 0
            }
            return type
        }
        updateSCI()
        guard sleepRequested else { return .resume }
        switch sleepType {
        case Self.softOffType, Self.suspendToDiskType: return .stop(.systemEvent(.shutdown))
        case Self.suspendToRAMType: return .suspend
        default: return .resume  // a type no \_Sx package declares: nothing happens
        }
    }
}

// MARK: Snapshot

extension ACPIPMDevice: SnapshotDevice {
    /// PM1 status, enable and control, the S3 sleep state with the wake events seen in it, and
    /// the PM timer's value (QEMU's `vmstate_acpi` keeps the same registers). The timer is
    /// saved as the count the guest reads, since the monotonic clock it is derived from means
    /// nothing in another process.
    public func saveState(to encoder: inout StateEncoder) {
        let saved = registers.withLock { $0 }
        encoder.write(saved.status)
        encoder.write(saved.enable)
        encoder.write(saved.control)
        encoder.write(saved.sleeping)
        encoder.write(saved.wakeEvents)
        encoder.write(timerValue)
    }

    /// Puts the registers back, starts the PM timer again from its saved count (ACPI 4.8.3.3:
    /// a guest's clocksource expects it never to jump), and drives the SCI to the level the
    /// restored status and enable bits give.
    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        var restored = Registers()
        restored.status = try decoder.read(UInt16.self, "acpi-pm pm1 status")
        restored.enable = try decoder.read(UInt16.self, "acpi-pm pm1 enable")
        restored.control = try decoder.read(UInt16.self, "acpi-pm pm1 control")
        restored.sleeping = try decoder.read(Bool.self, "acpi-pm sleeping")
        restored.wakeEvents = try decoder.read(UInt16.self, "acpi-pm wake events")
        let timer = try decoder.read(UInt32.self, "acpi-pm timer", below: 1 << 24)
        registers.withLock { $0 = restored }
        timerBase.withLock { $0 = (clock(), timer) }
        updateSCI()
    }
}
