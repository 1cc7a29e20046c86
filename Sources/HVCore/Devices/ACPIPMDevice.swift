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
/// - PM1 status (0x600-0x601): write-1-to-clear bits; none is ever set (no SCI is raised).
///   PM1 enable (0x602-0x603): stored.
/// - PM1 control (0x604-0x605): SCI_EN (bit 0) reads 1, the machine being in ACPI mode from
///   the start (the FADT's SMI_CMD is 0). Writing SLP_EN (bit 13) with SLP_TYP (bits 10-12)
///   equal to `softOffType` (the DSDT's \_S5 value, 0) stops the VM with
///   `StopReason.systemEvent(.shutdown)`: the guest powered itself off (ACPI S5). Other sleep
///   types are ignored.
public final class ACPIPMDevice: PortIODevice, ResettableDevice, Sendable {
    public static let basePort: IOPort = 0x600
    public static let portCount = 12
    public static let timerPort: IOPort = 0x608
    /// The PM timer's rate in Hz (ACPI 4.8.3.3).
    public static let timerFrequency: UInt64 = 3_579_545
    /// The SLP_TYP value for S5 (soft off) that the DSDT's \_S5 package declares.
    public static let softOffType: UInt16 = 0

    /// Nanoseconds from an arbitrary origin; must never go backwards.
    public typealias Clock = @Sendable () -> UInt64

    /// The host's monotonic clock.
    public static let hostClock: Clock = { monotonicNanoseconds() }

    public let name: String
    private let clock: Clock
    private let origin: UInt64
    private let registers = Mutex<(enable: UInt16, control: UInt16)>((0, 1))

    public init(name: String = "acpi-pm", clock: @escaping Clock = ACPIPMDevice.hostClock) {
        self.name = name
        self.clock = clock
        self.origin = clock()
    }

    /// PM1 enable cleared, PM1 control back to SCI_EN; the PM timer runs on.
    public func reset() {
        registers.withLock { $0 = (0, 1) }
    }

    /// The PM timer's value now (24 bits).
    public var timerValue: UInt32 {
        let elapsed = clock() &- origin
        let ticks = elapsed / 1_000_000_000 * Self.timerFrequency
            + elapsed % 1_000_000_000 * Self.timerFrequency / 1_000_000_000
        return UInt32(truncatingIfNeeded: ticks) & 0x00FF_FFFF
    }

    public func portRead(offset: UInt16, size: Int) -> UInt32 {
        let (enable, control) = registers.withLock { ($0.enable, $0.control) }
        let timer = timerValue
        // The block as bytes: status (always 0), enable, control, 2 unused, timer.
        let image: [UInt8] = [0, 0, UInt8(truncatingIfNeeded: enable), UInt8(enable >> 8),
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
        var sleep = false
        let control = registers.withLock { registers -> UInt16 in
            for index in 0..<min(size, 4) {
                let byte = UInt16(truncatingIfNeeded: value >> (8 * UInt32(index)))
                switch Int(offset) + index {
                case 2: registers.enable = registers.enable & 0xFF00 | byte
                case 3: registers.enable = registers.enable & 0x00FF | byte << 8
                case 4: registers.control = registers.control & 0xFF00 | byte
                case 5:
                    registers.control = registers.control & 0x00FF | byte << 8
                    sleep = byte & 0x20 != 0  // SLP_EN, bit 13
                default: break  // status bits are write-1-to-clear and never set; the timer is read-only
                }
            }
            // SLP_EN is write-only and SCI_EN stays set (ACPI 4.8.3.2.1).
            registers.control = registers.control & ~0x2000 | 1
            return registers.control
        }
        if sleep, (control >> 10) & 0x7 == Self.softOffType { return .stop(.systemEvent(.shutdown)) }
        return .resume
    }
}
