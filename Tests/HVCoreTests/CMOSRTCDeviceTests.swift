// The CMOS RTC's register model (MC146818A data sheet; QEMU pc_cmos_init memory bytes) with a
// fixed clock: 2024-02-29 13:45:07 UTC, a Thursday.
import HVCore
import Synchronization
import Testing

@Suite("CMOS RTC device")
struct CMOSRTCDeviceTests {
    static let leapDay: Int64 = 1_709_214_307

    func device(ramSize: UInt64 = 128 << 20, cpus: Int = 2, at time: Int64 = leapDay) -> CMOSRTCDevice {
        CMOSRTCDevice(ramSize: ramSize, cpuCount: cpus, clock: { time })
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
        let rtc = CMOSRTCDevice(ramSize: 1 << 20, cpuCount: 1, clock: { now.withLock { $0 } })
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

@Suite("CMOS RTC under KVM", .requiresKVM, .serialized)
struct CMOSRTCKVMTests {
    @Test("a long-mode guest reads seconds, minutes and hours through ports 0x70/0x71")
    func guestReadsTheTime() throws {
        let vm = try KVMHost.machine()
        _ = try attachConsole(vm)
        let rtc = CMOSRTCDevice(ramSize: vm.memory.size, cpuCount: 1, clock: { CMOSRTCDeviceTests.leapDay })
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
