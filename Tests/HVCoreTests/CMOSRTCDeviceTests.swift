// The CMOS RTC's register model (MC146818A data sheet; QEMU pc_cmos_init memory bytes) with a
// fixed clock: 2024-02-29 13:45:07 UTC, a Thursday.
import Foundation
import HVCore
import Synchronization
import Testing

@Suite("CMOS RTC device")
struct CMOSRTCDeviceTests {
    static let leapDay: Int64 = 1_709_214_307

    func device(ramSize: UInt64 = 128 << 20, cpus: Int = 2, at time: Int64 = leapDay) -> CMOSRTCDevice {
        CMOSRTCDevice(ramSize: ramSize, cpuCount: cpus, clock: { time * 1_000_000_000 })
    }

    func read(_ rtc: CMOSRTCDevice, _ index: UInt8) -> UInt8 {
        _ = rtc.portWrite(offset: 0, size: 1, value: UInt32(index))
        return UInt8(rtc.portRead(offset: 1, size: 1))
    }

    func write(_ rtc: CMOSRTCDevice, _ index: UInt8, _ value: UInt8) {
        _ = rtc.portWrite(offset: 0, size: 1, value: UInt32(index))
        _ = rtc.portWrite(offset: 1, size: 1, value: UInt32(value))
    }

    @Test("time registers read BCD in 24-hour mode at reset")
    func bcdTime() {
        let rtc = device()
        let R = CMOSRTCDevice.Register.self
        #expect([R.seconds, R.minutes, R.hours, R.dayOfWeek, R.dayOfMonth, R.month, R.year, R.century].map { read(rtc, $0) }
            == [0x07, 0x45, 0x13, 0x05, 0x29, 0x02, 0x24, 0x20])
        #expect(read(rtc, R.a) == 0x26)
        #expect(read(rtc, R.b) == 0x02)
        #expect(read(rtc, R.c) == 0x00)
        #expect(read(rtc, R.d) == 0x80)
    }

    @Test("register B selects binary and 12-hour formats")
    func binaryAndTwelveHour() {
        let rtc = device()
        write(rtc, CMOSRTCDevice.Register.b, 0x06)  // binary, 24-hour
        #expect(read(rtc, 0x00) == 7)
        #expect(read(rtc, 0x02) == 45)
        #expect(read(rtc, 0x04) == 13)
        #expect(read(rtc, 0x09) == 24)
        write(rtc, CMOSRTCDevice.Register.b, 0x00)  // BCD, 12-hour: 13:45 is 1 PM
        #expect(read(rtc, 0x04) == 0x81)
        let midnight = device(at: 1_709_164_800)  // 2024-02-29 00:00:00
        write(midnight, CMOSRTCDevice.Register.b, 0x00)
        #expect(read(midnight, 0x04) == 0x12)  // 12 AM
    }

    @Test("writing the time moves the guest clock and keeps it running with the host")
    func settingTheTime() {
        let now = Mutex<Int64>(983_682_367)  // 2001-03-04 05:06:07
        let rtc = CMOSRTCDevice(ramSize: 1 << 20, cpuCount: 1, clock: { now.withLock { $0 } * 1_000_000_000 })
        write(rtc, 0x04, 0x22)  // 22 h
        write(rtc, 0x09, 0x99)
        write(rtc, 0x32, 0x19)
        #expect(read(rtc, 0x04) == 0x22)
        #expect(read(rtc, 0x09) == 0x99)
        #expect(read(rtc, 0x32) == 0x19)
        #expect(read(rtc, 0x08) == 0x03)
        #expect(rtc.clockOffset == -731 * 86_400 + 17 * 3600)  // 2000 was a leap year
        now.withLock { $0 += 61 }
        #expect(read(rtc, 0x00) == 0x08)
        #expect(read(rtc, 0x02) == 0x07)
    }

    @Test("the index port masks NMIs with bit 7, reads 0xFF, and NVRAM keeps bytes")
    func indexAndNVRAM() {
        let rtc = device()
        _ = rtc.portWrite(offset: 0, size: 1, value: 0x80 | 0x40)
        #expect(rtc.nmiDisabled)
        _ = rtc.portWrite(offset: 1, size: 1, value: 0x5A)
        #expect(read(rtc, 0x40) == 0x5A)
        #expect(!rtc.nmiDisabled)
        #expect(rtc.portRead(offset: 0, size: 1) == 0xFF)
        write(rtc, 0x7F, 0xA5)
        #expect(read(rtc, 0x7F) == 0xA5)
        write(rtc, CMOSRTCDevice.Register.d, 0)
        #expect(read(rtc, CMOSRTCDevice.Register.d) == 0x80)
    }

    @Test("memory-size bytes follow QEMU's pc_cmos_init")
    func memorySize() {
        let small = device(ramSize: 32 << 20, cpus: 4)
        #expect(read(small, 0x15) == 0x80 && read(small, 0x16) == 0x02)  // 640 KiB
        let extended = (32 << 10) - 1024  // KiB above 1 MiB
        #expect(read(small, 0x17) == UInt8(extended & 0xFF) && read(small, 0x18) == UInt8(extended >> 8))
        #expect(read(small, 0x30) == UInt8(extended & 0xFF) && read(small, 0x31) == UInt8(extended >> 8))
        #expect(UInt16(read(small, 0x34)) | UInt16(read(small, 0x35)) << 8 == (16 << 20) / (64 << 10))
        #expect(read(small, 0x5B) == 0 && read(small, 0x5C) == 0 && read(small, 0x5D) == 0)
        #expect(read(small, 0x5F) == 3)

        let capped = device(ramSize: 128 << 20)  // 127 MiB above 1 MiB does not fit 16 bits of KiB
        #expect(read(capped, 0x17) == 0xFF && read(capped, 0x18) == 0xFF)

        let big = device(ramSize: 5 << 30, cpus: 1)  // 3 GiB low, 2 GiB above 4 GiB
        #expect(read(big, 0x17) == 0xFF && read(big, 0x18) == 0xFF)
        #expect(UInt16(read(big, 0x34)) | UInt16(read(big, 0x35)) << 8 == UInt16(((3 << 30) - (16 << 20)) / (64 << 10)))
        let high = UInt32(read(big, 0x5B)) | UInt32(read(big, 0x5C)) << 8 | UInt32(read(big, 0x5D)) << 16
        #expect(high == (2 << 30) / (64 << 10))
        #expect(read(big, 0x5F) == 0)
    }

    @Test("dates at the ends of centuries and before 1970 convert correctly")
    func calendar() {
        let end = device(at: 4_102_444_799)  // 2099-12-31 23:59:59, a Thursday
        #expect([0x00, 0x02, 0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map { read(end, UInt8($0)) }
            == [0x59, 0x59, 0x23, 0x05, 0x31, 0x12, 0x99, 0x20])
        let before = device(at: -1)  // 1969-12-31 23:59:59, a Wednesday
        #expect([0x04, 0x06, 0x07, 0x08, 0x09, 0x32].map { read(before, UInt8($0)) } == [0x23, 0x04, 0x31, 0x12, 0x69, 0x19])
    }
}

@Suite("CMOS RTC update cycle and interrupts")
struct CMOSRTCTimingTests {
    static let second: Int64 = 1_000_000_000
    /// A settable nanosecond clock.
    final class TestClock: Sendable {
        let value = Mutex<Int64>(CMOSRTCDeviceTests.leapDay * CMOSRTCTimingTests.second)
    }
    let now = TestClock()
    let controller = RecordingController()

    func device() -> CMOSRTCDevice {
        let now = self.now
        return CMOSRTCDevice(ramSize: 1 << 20, cpuCount: 1, interrupt: InterruptLine(controller: controller, gsi: 8),
                             clock: { now.value.withLock { $0 } })
    }

    func read(_ rtc: CMOSRTCDevice, _ index: UInt8) -> UInt8 { CMOSRTCDeviceTests().read(rtc, index) }
    func write(_ rtc: CMOSRTCDevice, _ index: UInt8, _ value: UInt8) { CMOSRTCDeviceTests().write(rtc, index, value) }
    func advance(by nanoseconds: Int64) { now.value.withLock { $0 += nanoseconds } }
    var line: Bool? { controller.levels.withLock { $0.last?.high } }

    @Test("UIP reads 1 only in the last 244 µs of each second, and never with SET or the divider stopped")
    func updateInProgress() {
        let rtc = device()
        #expect(read(rtc, 0x0A) == 0x26)
        advance(by: Self.second - 244_001)
        #expect(read(rtc, 0x0A) == 0x26)
        advance(by: 2)
        #expect(read(rtc, 0x0A) == 0xA6)
        write(rtc, 0x0B, 0x82)                    // SET: updates stop
        #expect(read(rtc, 0x0A) == 0x26)
        write(rtc, 0x0B, 0x02)
        write(rtc, 0x0A, 0x06)                    // DV2-0 = 000: the oscillator is off
        #expect(read(rtc, 0x0A) == 0x06)
        write(rtc, 0x0A, 0x26)
        advance(by: 300_000)                      // into the next second: the update is over
        #expect(read(rtc, 0x0A) == 0x26)
    }

    @Test("UF sets as each second turns, PF at the periodic rate, AF when the alarm bytes match; reading C clears them")
    func flags() {
        let rtc = device()
        advance(by: Self.second / 2)
        #expect(read(rtc, 0x0C) == 0x40, "the 1024 Hz periodic flag (rate 6) set many times over, no second turned")
        write(rtc, 0x0A, 0x20)                    // no periodic rate
        advance(by: Self.second / 2)
        #expect(read(rtc, 0x0C) == 0x10, "13:45:08: UF only")
        write(rtc, 0x01, 0x10)                    // alarm at hh:mm:10, any minute, any hour
        write(rtc, 0x03, 0xC0)
        write(rtc, 0x05, 0xFF)
        advance(by: Self.second)
        #expect(read(rtc, 0x0C) == 0x10, "13:45:09: no alarm")
        advance(by: Self.second)
        #expect(read(rtc, 0x0C) == 0x30, "13:45:10: UF and AF")
        #expect(read(rtc, 0x0C) == 0x00, "reading C cleared it")
        #expect(line != true, "nothing enabled: IRQ 8 never rose")
    }

    @Test("IRQF and IRQ 8 follow the flags with their enables; reading C lowers the line; an enabled alarm calls onAlarm")
    func interrupts() {
        let rtc = device()
        let alarms = Mutex(0)
        rtc.onAlarm { alarms.withLock { $0 += 1 } }
        write(rtc, 0x0A, 0x20)
        write(rtc, 0x01, 0xC0)                    // every second
        write(rtc, 0x03, 0xC0)
        write(rtc, 0x05, 0xC0)
        advance(by: Self.second)
        write(rtc, 0x0B, 0x22)                    // AIE, with AF already set: IRQF at once
        #expect(line == true)
        #expect(alarms.withLock { $0 } == 0, "the flag set before AIE was")
        #expect(read(rtc, 0x0C) == 0xB0)
        #expect(line == false)
        advance(by: Self.second)
        #expect(read(rtc, 0x0C) == 0xB0)
        #expect(alarms.withLock { $0 } == 1)
        write(rtc, 0x0B, 0x12)                    // UIE only
        advance(by: Self.second)
        #expect(read(rtc, 0x0C) == 0xB0, "AF still sets; UF with UIE raises IRQF")
        #expect(alarms.withLock { $0 } == 1, "AIE clear: no wake alarm")
        rtc.reset()
        #expect(read(rtc, 0x0B) == 0x02, "reset clears the enables")
    }

    @Test("with UIE set the timer thread raises IRQ 8 as the next second turns, without the guest reading anything")
    func timerThread() throws {
        let controller = RecordingController()
        let rtc = CMOSRTCDevice(ramSize: 1 << 20, cpuCount: 1, interrupt: InterruptLine(controller: controller, gsi: 8))
        write(rtc, 0x0B, 0x12)
        let deadline = ContinuousClock.now + .seconds(3)
        while controller.levels.withLock({ $0.last?.high }) != true, ContinuousClock.now < deadline {
            Thread.sleep(forTimeInterval: 0.01)
        }
        #expect(controller.levels.withLock { $0.last?.high } == true)
        #expect(read(rtc, 0x0C) & 0x90 == 0x90)
        rtc.reset()
    }
}

@Suite("CMOS RTC under KVM", .requiresKVM, .serialized)
struct CMOSRTCKVMTests {
    @Test("a long-mode guest reads seconds, minutes and hours through ports 0x70/0x71")
    func guestReadsTheTime() throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        let rtc = CMOSRTCDevice(ramSize: vm.memory.size, cpuCount: 1, clock: { CMOSRTCDeviceTests.leapDay * 1_000_000_000 })
        try vm.devices.register(rtc, port: CMOSRTCDevice.basePort, count: CMOSRTCDevice.portCount)
        try vm.load(GuestProgram.longMode { a in
            for index: UInt8 in [0x00, 0x02, 0x04, 0x0B] {
                a.mov(Register8.al, Immediate(index | 0x80))  // NMIs masked, as BIOSes do
                a.out(0x70, Register8.al)
                a.in(Register8.al, 0x71)
                a.out(0x77, Register8.al)
            }
            a.debugExit(code: 0)
        })
        let recorder = TrafficRecorder(ports: 0x77...0x77)
        let result = try vm.run(handler: recorder)
        #expect(result.reason == .debugExit(code: 0))
        #expect(recorder.accesses.map { $0.values[0] } == [0x07, 0x45, 0x13, 0x02])
        #expect(rtc.nmiDisabled)
    }
}
