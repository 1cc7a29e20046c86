// The PC's CMOS RTC: a Motorola MC146818A real-time clock with 128 bytes of battery-backed RAM,
// reached through an index port (0x70) and a data port (0x71). Register meanings follow the
// MC146818A data sheet ("Address Map", "Register A" to "Register D"); the memory-size bytes are
// filled as QEMU's hw/i386/pc.c `pc_cmos_init` does, which is what SeaBIOS reads.
import Foundation
import Synchronization

/// A CMOS RTC at ports 0x70-0x71 (register it at `basePort` with `portCount` ports).
///
/// Port 0x70 (write): bits 0-6 select a CMOS byte; bit 7 set masks NMIs (`nmiDisabled`).
/// Reads of 0x70 return 0xFF. Port 0x71 reads or writes the selected byte:
///
/// | Index       | Contents                                                           |
/// |-------------|--------------------------------------------------------------------|
/// | 0x00/02/04  | seconds, minutes, hours (12-hour mode: bit 7 = PM)                 |
/// | 0x01/03/05  | alarm seconds, minutes, hours (0xC0-0xFF: any value matches)        |
/// | 0x06-0x09   | day of week (1 = Sunday), day of month, month, year (00-99)        |
/// | 0x0A        | register A: UIP (bit 7) in the last 244 µs of each second, divider and rate (0x26) |
/// | 0x0B        | register B: bit 2 DM (1 = binary, 0 = BCD), bit 1 24/12 (1 = 24-hour); 0x02 at reset |
/// | 0x0C        | register C: IRQF, PF, AF, UF (bits 7-4), cleared by reading        |
/// | 0x0D        | register D: VRT (bit 7), the battery is good                       |
/// | 0x32        | century (BCD or binary, as the other time bytes)                   |
/// | 0x15-0x16   | base memory in KiB (640)                                           |
/// | 0x17-0x18, 0x30-0x31 | extended memory above 1 MiB in KiB, at most 65535         |
/// | 0x34-0x35   | memory between 16 MiB and 4 GiB in 64 KiB units                    |
/// | 0x5B-0x5D   | memory above 4 GiB in 64 KiB units                                 |
/// | 0x5F        | CPU count minus one                                                |
///
/// Other bytes are NVRAM: they read what was last written (0 at start). Time registers read
/// the host clock (UTC) plus an offset; writing one moves the guest's clock by the difference,
/// so the guest's setting survives. Register B's SET bit does not freeze the clock.
///
/// The update cycle ("Update Cycle" in the data sheet) runs while register A's divider bits
/// are 010 (the reset value) and SET is clear: UIP reads 1 for the 244 µs before each second
/// ends, the update-ended flag UF sets as the second turns, the alarm flag AF with it when
/// the new time matches the alarm bytes, and the periodic flag PF at register A's rate (RS3-0:
/// 256 Hz for 1, 128 Hz for 2, else 65536 >> RS Hz). IRQF is set when a flag and its enable in
/// register B (PIE, AIE, UIE) are both set; then `interrupt` (ISA IRQ 8) is raised until the
/// guest reads register C. A timer thread keeps time for enabled interrupts, so they arrive
/// without the guest polling. `onAlarm` is called each time an enabled alarm fires (the ACPI
/// RTC wake event). Safe to use from several threads.
public final class CMOSRTCDevice: PortIODevice, ResettableDevice, Sendable {
    /// The index port; the data port is `basePort + 1`.
    public static let basePort: IOPort = 0x70
    public static let portCount = 2

    /// CMOS indexes with a fixed meaning (MC146818A "Address Map"; QEMU hw/rtc/mc146818rtc.c).
    public enum Register {
        public static let seconds: UInt8 = 0x00
        public static let minutes: UInt8 = 0x02
        public static let hours: UInt8 = 0x04
        public static let dayOfWeek: UInt8 = 0x06
        public static let dayOfMonth: UInt8 = 0x07
        public static let month: UInt8 = 0x08
        public static let year: UInt8 = 0x09
        public static let a: UInt8 = 0x0A
        public static let b: UInt8 = 0x0B
        public static let c: UInt8 = 0x0C
        public static let d: UInt8 = 0x0D
        public static let century: UInt8 = 0x32
    }

    /// Register B bits (data sheet, "Register B").
    public enum RegisterB {
        public static let set: UInt8 = 1 << 7
        /// PIE (bit 6), AIE (bit 5), UIE (bit 4) and SQWE (bit 3).
        public static let interruptEnables: UInt8 = 0x78
        public static let binary: UInt8 = 1 << 2
        public static let twentyFourHour: UInt8 = 1 << 1
    }

    /// Register C flags (data sheet, "Register C").
    public enum RegisterC {
        public static let irqf: UInt8 = 1 << 7
        public static let pf: UInt8 = 1 << 6
        public static let af: UInt8 = 1 << 5
        public static let uf: UInt8 = 1 << 4
    }

    /// Nanoseconds since 1970-01-01 00:00:00 UTC.
    public typealias Clock = @Sendable () -> Int64

    /// The host's wall clock (CLOCK_REALTIME).
    public static let hostClock: Clock = {
        var now = timespec()
        clock_gettime(CLOCK_REALTIME, &now)
        return Int64(now.tv_sec) * 1_000_000_000 + Int64(now.tv_nsec)
    }

    /// How long before each second ends UIP reads 1 (the data sheet's t_BUC: 244 µs).
    public static let updateInProgressNanoseconds: Int64 = 244_000

    public let name: String
    private let clock: Clock
    private let state: Mutex<State>
    private let interrupt: InterruptLine?
    private let alarmHandler = Mutex<(@Sendable () -> Void)?>(nil)
    private let timer = RTCTimer()

    /// A CMOS RTC for a PC with `ramSize` bytes of RAM (split at `lowMemoryLimit`, the PCI hole,
    /// as `GuestMemory.pcLayout` does) and `cpuCount` CPUs, whose time comes from `clock`.
    /// `interrupt` is ISA IRQ 8 (nil: the flags still set, no line is driven).
    public init(name: String = "cmos-rtc", ramSize: UInt64, cpuCount: Int,
                lowMemoryLimit: UInt64 = 0xC000_0000, interrupt: InterruptLine? = nil,
                clock: @escaping Clock = CMOSRTCDevice.hostClock) {
        self.name = name
        self.clock = clock
        self.interrupt = interrupt
        var state = State(now: clock())
        state.fillMemorySize(below4G: min(ramSize, lowMemoryLimit), above4G: ramSize - min(ramSize, lowMemoryLimit))
        state.ram[0x5F] = UInt8(truncatingIfNeeded: max(cpuCount, 1) - 1)
        self.state = Mutex(state)
    }

    /// What the MC146818's RESET pin does (datasheet, "RESET"): the interrupt enables of
    /// register B (PIE, AIE, UIE, SQWE) and the flags of register C clear. The clock, the NVRAM
    /// and the guest's clock offset run on battery and stay.
    public func reset() {
        state.withLock { state in
            state.ram[Int(Register.b)] &= ~RegisterB.interruptEnables
            state.ram[Int(Register.c)] = 0
            state.index = 0
            state.nmiDisabled = false
        }
        interrupt?.lower()
        timer.cancel()
    }

    deinit { timer.cancel() }

    /// Called (on the RTC's timer thread or a vCPU's) each time the alarm fires with AIE set:
    /// the ACPI platform turns it into the RTC wake event.
    public func onAlarm(_ handler: @escaping @Sendable () -> Void) {
        alarmHandler.withLock { $0 = handler }
    }

    /// Brings the flags up to `now`, drives IRQ 8, tells the alarm handler, and schedules the
    /// next event the enabled interrupts need.
    private func advance(_ body: (inout State, Int64) -> Void = { _, _ in }) -> Void {
        let now = clock()
        let (raise, lower, alarm, next) = state.withLock { state -> (Bool, Bool, Bool, Int64?) in
            let before = state.ram[Int(Register.c)] & RegisterC.irqf
            // IRQF before the access (a read of register C returns it) and after it (a write
            // of register B may enable a flag already set).
            let alarms = state.advance(to: now)
            state.updateIRQF()
            body(&state, now)
            state.updateIRQF()
            let after = state.ram[Int(Register.c)] & RegisterC.irqf
            return (after != 0 && before == 0, after == 0 && before != 0, alarms, state.nextEvent(after: now))
        }
        if raise { interrupt?.raise() }
        if lower { interrupt?.lower() }
        if alarm, let handler = alarmHandler.withLock({ $0 }) { handler() }
        if let next {
            timer.schedule(at: next, clock: clock) { [weak self] in _ = self?.advance() }
        } else {
            timer.cancel()
        }
    }

    /// Whether the guest masked NMIs through bit 7 of the index port.
    public var nmiDisabled: Bool { state.withLock { $0.nmiDisabled } }

    /// Seconds the guest's clock runs ahead of `clock` (negative: behind).
    public var clockOffset: Int64 { state.withLock { $0.offset } }

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        guard offset == 1 else { return 0xFF }
        var value: UInt8 = 0
        advance { state, now in value = state.read(now: now) }
        return UInt32(value)
    }

    public func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        let byte = UInt8(truncatingIfNeeded: value)
        if offset == 0 {
            state.withLock { state in
                state.index = byte & 0x7F
                state.nmiDisabled = byte & 0x80 != 0
            }
        } else if offset == 1 {
            advance { state, now in state.write(byte, now: now) }
        }
        return .resume
    }
}

// MARK: - Register model

/// A broken-down UTC time (proleptic Gregorian calendar).
struct RTCTime: Equatable {
    var year: Int64, month: Int64, day: Int64, hour: Int64, minute: Int64, second: Int64
    /// 1 = Sunday ... 7 = Saturday, as the MC146818 counts.
    var dayOfWeek: Int64

    /// Howard Hinnant's `civil_from_days` ("chrono-Compatible Low-Level Date Algorithms").
    init(epochSeconds: Int64) {
        let days = epochSeconds >= 0 ? epochSeconds / 86_400 : (epochSeconds - 86_399) / 86_400
        let secondOfDay = epochSeconds - days * 86_400
        hour = secondOfDay / 3600
        minute = secondOfDay / 60 % 60
        second = secondOfDay % 60
        dayOfWeek = ((days + 4) % 7 + 7) % 7 + 1  // 1970-01-01 was a Thursday
        let z = days + 719_468
        let era = (z >= 0 ? z : z - 146_096) / 146_097
        let dayOfEra = z - era * 146_097
        let yearOfEra = (dayOfEra - dayOfEra / 1460 + dayOfEra / 36_524 - dayOfEra / 146_096) / 365
        let dayOfYear = dayOfEra - (365 * yearOfEra + yearOfEra / 4 - yearOfEra / 100)
        let mp = (5 * dayOfYear + 2) / 153
        day = dayOfYear - (153 * mp + 2) / 5 + 1
        month = mp < 10 ? mp + 3 : mp - 9
        year = yearOfEra + era * 400 + (month <= 2 ? 1 : 0)
    }

    /// Hinnant's `days_from_civil`, back to seconds since the epoch.
    var epochSeconds: Int64 {
        let y = month <= 2 ? year - 1 : year
        let era = (y >= 0 ? y : y - 399) / 400
        let yearOfEra = y - era * 400
        let dayOfYear = (153 * (month > 2 ? month - 3 : month + 9) + 2) / 5 + day - 1
        let dayOfEra = yearOfEra * 365 + yearOfEra / 4 - yearOfEra / 100 + dayOfYear
        let days = era * 146_097 + dayOfEra - 719_468
        return days * 86_400 + hour * 3600 + minute * 60 + second
    }
}

private struct State {
    var ram = [UInt8](repeating: 0, count: 128)
    var index: UInt8 = 0
    var nmiDisabled = false
    /// Seconds the guest's clock runs ahead of the host's.
    var offset: Int64 = 0
    /// The host time (ns) the flags were last brought up to.
    var checked: Int64

    init(now: Int64) {
        checked = now
        ram[Int(CMOSRTCDevice.Register.a)] = 0x26  // 32.768 kHz divider, 1.024 kHz rate (QEMU reset)
        ram[Int(CMOSRTCDevice.Register.b)] = CMOSRTCDevice.RegisterB.twentyFourHour
        ram[Int(CMOSRTCDevice.Register.d)] = 0x80  // VRT: valid RAM and time
    }

    var binary: Bool { ram[Int(CMOSRTCDevice.Register.b)] & CMOSRTCDevice.RegisterB.binary != 0 }
    var twentyFourHour: Bool { ram[Int(CMOSRTCDevice.Register.b)] & CMOSRTCDevice.RegisterB.twentyFourHour != 0 }

    /// QEMU `pc_cmos_init`'s memory-size bytes.
    mutating func fillMemorySize(below4G: UInt64, above4G: UInt64) {
        let kib: UInt64 = 1024, mib: UInt64 = 1 << 20
        put16(0x15, min(below4G / kib, 640))
        let extended = below4G > mib ? min((below4G - mib) / kib, 65535) : 0
        put16(0x17, extended)
        put16(0x30, extended)
        put16(0x34, below4G > 16 * mib ? min((below4G - 16 * mib) / (64 * kib), 65535) : 0)
        let high = above4G / (64 * kib)
        ram[0x5B] = UInt8(truncatingIfNeeded: high)
        ram[0x5C] = UInt8(truncatingIfNeeded: high >> 8)
        ram[0x5D] = UInt8(truncatingIfNeeded: high >> 16)
    }

    private mutating func put16(_ index: Int, _ value: UInt64) {
        ram[index] = UInt8(truncatingIfNeeded: value)
        ram[index + 1] = UInt8(truncatingIfNeeded: value >> 8)
    }

    func encode(_ value: Int64) -> UInt8 {
        let v = UInt8(truncatingIfNeeded: value)
        return binary ? v : (v / 10) << 4 | v % 10
    }

    func decode(_ byte: UInt8) -> Int64 {
        binary ? Int64(byte) : Int64(byte >> 4) * 10 + Int64(byte & 0x0F)
    }

    /// Hours in the current mode: 0-23, or 1-12 with bit 7 for PM ("Register B", 24/12 bit).
    func encodeHours(_ hour: Int64) -> UInt8 {
        if twentyFourHour { return encode(hour) }
        let twelve = hour % 12 == 0 ? 12 : hour % 12
        return encode(twelve) | (hour >= 12 ? 0x80 : 0)
    }

    func decodeHours(_ byte: UInt8) -> Int64 {
        if twentyFourHour { return decode(byte) }
        let twelve = decode(byte & 0x7F) % 12
        return byte & 0x80 != 0 ? twelve + 12 : twelve
    }

    /// Seconds of `now` (host ns) on the guest's clock.
    func guestSeconds(_ now: Int64) -> Int64 { floorDivide(now, 1_000_000_000) &+ offset }
    private func floorDivide(_ a: Int64, _ b: Int64) -> Int64 { a >= 0 ? a / b : (a - b + 1) / b }

    /// The oscillator runs and updates happen: divider bits DV2-0 = 010 and SET clear.
    var updating: Bool {
        ram[Int(CMOSRTCDevice.Register.a)] & 0x70 == 0x20 && ram[Int(CMOSRTCDevice.Register.b)] & CMOSRTCDevice.RegisterB.set == 0
    }

    /// The periodic interrupt's period in ns from RS3-0 (data sheet table 3), nil for RS = 0.
    var periodicNanoseconds: Int64? {
        let rate = ram[Int(CMOSRTCDevice.Register.a)] & 0x0F
        guard rate != 0, ram[Int(CMOSRTCDevice.Register.a)] & 0x70 == 0x20 else { return nil }
        let hertz: Int64 = rate <= 2 ? (rate == 1 ? 256 : 128) : 65536 >> Int64(rate)
        return 1_000_000_000 / hertz
    }

    /// Whether the guest time `seconds` matches the alarm bytes (0xC0-0xFF: don't care).
    func alarmMatches(_ seconds: Int64) -> Bool {
        let time = RTCTime(epochSeconds: seconds)
        func matches(_ index: Int, _ value: UInt8) -> Bool { ram[index] >= 0xC0 || ram[index] == value }
        return matches(1, encode(time.second)) && matches(3, encode(time.minute)) && matches(5, encodeHours(time.hour))
    }

    /// The flags whose interrupts register B enables: PIE, AIE and UIE sit where PF, AF and UF do.
    var enabledFlags: UInt8 {
        ram[Int(CMOSRTCDevice.Register.b)] & (CMOSRTCDevice.RegisterC.pf | CMOSRTCDevice.RegisterC.af | CMOSRTCDevice.RegisterC.uf)
    }

    /// IRQF follows the flags and their enables: a flag set with its enable (in either order)
    /// sets it; only reading register C clears it.
    mutating func updateIRQF() {
        if ram[Int(CMOSRTCDevice.Register.c)] & enabledFlags != 0 { ram[Int(CMOSRTCDevice.Register.c)] |= CMOSRTCDevice.RegisterC.irqf }
    }

    /// Sets UF, AF and PF for what happened between `checked` and `now`. Returns whether an
    /// enabled alarm fired.
    mutating func advance(to now: Int64) -> Bool {
        defer { checked = max(checked, now) }
        guard now > checked else { return false }
        typealias C = CMOSRTCDevice.RegisterC
        var flags: UInt8 = 0
        if updating {
            let first = guestSeconds(checked) + 1, last = guestSeconds(now)
            if last >= first {
                flags |= C.uf
                // At most a day of seconds needs looking at: the alarm repeats daily.
                if (max(first, last - 86_399)...last).contains(where: alarmMatches) { flags |= C.af }
            }
        }
        if let period = periodicNanoseconds, now / period > checked / period { flags |= C.pf }
        ram[Int(CMOSRTCDevice.Register.c)] |= flags
        return flags & enabledFlags & C.af != 0
    }

    /// When the next enabled interrupt's flag sets (host ns), nil when none is enabled.
    func nextEvent(after now: Int64) -> Int64? {
        typealias C = CMOSRTCDevice.RegisterC
        let enabled = enabledFlags
        var next: Int64?
        if enabled & (C.uf | C.af) != 0, updating { next = (now / 1_000_000_000 + 1) * 1_000_000_000 }
        if enabled & C.pf != 0, let period = periodicNanoseconds {
            let tick = (now / period + 1) * period
            next = min(next ?? tick, tick)
        }
        return next
    }

    mutating func read(now: Int64) -> UInt8 {
        let time = RTCTime(epochSeconds: guestSeconds(now))
        typealias R = CMOSRTCDevice.Register
        switch index {
        case R.seconds: return encode(time.second)
        case R.minutes: return encode(time.minute)
        case R.hours: return encodeHours(time.hour)
        case R.dayOfWeek: return encode(time.dayOfWeek)
        case R.dayOfMonth: return encode(time.day)
        case R.month: return encode(time.month)
        case R.year: return encode(time.year % 100)
        case R.century: return encode(time.year / 100)
        case R.a:
            let fraction = now % 1_000_000_000
            let inProgress = updating && fraction >= 1_000_000_000 - CMOSRTCDevice.updateInProgressNanoseconds
            return ram[Int(R.a)] & 0x7F | (inProgress ? 0x80 : 0)
        case R.c:
            let flags = ram[Int(R.c)]
            ram[Int(R.c)] = 0
            return flags
        case R.d: return 0x80
        default: return ram[Int(index)]
        }
    }

    mutating func write(_ byte: UInt8, now: Int64) {
        typealias R = CMOSRTCDevice.Register
        var time = RTCTime(epochSeconds: guestSeconds(now))
        switch index {
        case R.seconds: time.second = min(decode(byte), 59)
        case R.minutes: time.minute = min(decode(byte), 59)
        case R.hours: time.hour = min(decodeHours(byte), 23)
        case R.dayOfMonth: time.day = max(1, min(decode(byte), 31))
        case R.month: time.month = max(1, min(decode(byte), 12))
        case R.year: time.year = time.year / 100 * 100 + min(decode(byte), 99)
        case R.century: time.year = min(decode(byte), 99) * 100 + time.year % 100
        case R.a: ram[Int(R.a)] = byte & 0x7F
        case R.c, R.d: break  // read-only ("Register C", "Register D")
        case R.dayOfWeek: break  // derived from the date here
        default: ram[Int(index)] = byte
        }
        switch index {
        case R.seconds, R.minutes, R.hours, R.dayOfMonth, R.month, R.year, R.century:
            offset = time.epochSeconds &- floorDivide(now, 1_000_000_000)
        default: break
        }
    }
}

/// One pending wake-up for the RTC's flags: a thread that sleeps until the deadline and then
/// calls the action, started on first use and replaced by each `schedule`.
private final class RTCTimer: @unchecked Sendable {
    // Sendable: every field is read and written under `condition`.
    private let condition = NSCondition()
    private var deadline: Int64?
    private var action: (@Sendable () -> Void)?
    private var clock: CMOSRTCDevice.Clock?
    private var running = false

    func schedule(at deadline: Int64, clock: @escaping CMOSRTCDevice.Clock, action: @escaping @Sendable () -> Void) {
        condition.lock()
        defer { condition.unlock() }
        // Every RTC access reschedules; the thread need not wake for the deadline it has.
        if running, self.deadline == deadline { return }
        self.deadline = deadline
        self.action = action
        self.clock = clock
        if !running {
            running = true
            let thread = Thread { [self] in loop() }
            thread.name = "cmos-rtc timer"
            thread.start()
        }
        condition.broadcast()
    }

    func cancel() {
        condition.lock()
        deadline = nil
        action = nil
        condition.broadcast()
        condition.unlock()
    }

    private func loop() {
        condition.lock()
        while true {
            guard let deadline, let clock else {
                // Nothing scheduled: end the thread after a quiet second (the next schedule starts one).
                if !condition.wait(until: Date(timeIntervalSinceNow: 1)), self.deadline == nil {
                    running = false
                    condition.unlock()
                    return
                }
                continue
            }
            let now = clock()
            if now < deadline {
                _ = condition.wait(until: Date(timeIntervalSinceNow: Double(deadline - now) / 1e9))
                continue
            }
            let action = self.action
            self.deadline = nil
            condition.unlock()
            action?()
            condition.lock()
        }
    }
}

// MARK: Snapshot

extension CMOSRTCDevice: SnapshotDevice {
    /// The 128 bytes of CMOS (NVRAM, alarm bytes, registers A-D with register C's pending
    /// flags), the index port's selection and NMI mask, and the guest clock's offset from the
    /// host's wall clock. The time registers are not stored: they are the host clock plus the
    /// offset, so a restored guest reads the wall time of the moment it reads, as the RTC of a
    /// machine that was switched off meanwhile would (QEMU's `vmstate_rtc` likewise keeps its
    /// base against the host clock). The flags are brought up to the moment of the save first,
    /// as an access would, so register C holds every event that happened before it.
    public func saveState(to encoder: inout StateEncoder) {
        var saved: (ram: [UInt8], index: UInt8, nmiDisabled: Bool, offset: Int64) = ([], 0, false, 0)
        advance { state, _ in saved = (state.ram, state.index, state.nmiDisabled, state.offset) }
        let (ram, index, nmiDisabled, offset) = saved
        encoder.write(bytes: ram)
        encoder.write(index)
        encoder.write(nmiDisabled)
        encoder.write(offset)
    }

    /// Puts CMOS and the offset back through the path a register access takes, so IRQ 8 is
    /// raised when register C holds IRQF and the timer thread is armed for the interrupts
    /// register B enables. Flags count from the restore on: the seconds between the save and
    /// now do not all set UF, AF and PF at once (their flags pending at the save are in register C).
    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let ram = try decoder.readBytes("cmos-rtc ram", atMost: 128)
        guard ram.count == 128 else { throw StateDecodingError(field: "cmos-rtc ram", problem: "\(ram.count) bytes; CMOS holds 128") }
        let index = try decoder.read(UInt8.self, "cmos-rtc index", below: 0x80)
        let nmiDisabled = try decoder.read(Bool.self, "cmos-rtc nmi disabled")
        let offset = try decoder.read(Int64.self, "cmos-rtc clock offset")
        advance { state, now in
            state.ram = ram
            state.index = index
            state.nmiDisabled = nmiDisabled
            state.offset = offset
            state.checked = now
        }
    }
}
