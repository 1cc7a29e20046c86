// What each platform device keeps and loses on a platform reset (ResettableDevice), the way the
// data sheets and QEMU's reset handlers describe it.
import HVCore
import Synchronization
import Testing

@Suite("Device reset")
struct DeviceResetTests {
    /// Counts resets; registered at two ranges like the i8042.
    final class CountingDevice: PortIODevice, ResettableDevice, @unchecked Sendable {
        let name = "counting"
        var resets = 0
        func portRead(offset: UInt16, size: Int) -> UInt32 { 0 }
        func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction { .resume }
        func reset() { resets += 1 }
    }

    @Test("the bus resets a device on two ranges once, and leaves devices without state alone")
    func busResetsEachDeviceOnce() throws {
        let bus = DeviceBus()
        let device = CountingDevice()
        try bus.register(device, port: 0x60, count: 1)
        try bus.register(device, port: 0x64, count: 1)
        try bus.register(DebugExitDevice(), port: 0xF4, count: 1)
        bus.resetDevices()
        #expect(device.resets == 1)
    }

    @Test("CMOS: NVRAM, the clock offset and the time survive; interrupt enables and flags clear")
    func cmos() {
        let rtc = CMOSRTCDevice(ramSize: 64 << 20, cpuCount: 1, clock: { 1_709_214_307 * 1_000_000_000 })
        func write(_ index: UInt8, _ value: UInt8) {
            _ = rtc.portWrite(offset: 0, size: 1, value: UInt32(index))
            _ = rtc.portWrite(offset: 1, size: 1, value: UInt32(value))
        }
        func read(_ index: UInt8) -> UInt8 {
            _ = rtc.portWrite(offset: 0, size: 1, value: UInt32(index))
            return UInt8(rtc.portRead(offset: 1, size: 1))
        }
        write(0x38, 0xA5)                               // NVRAM
        write(CMOSRTCDevice.Register.b, 0x72)           // PIE | AIE | UIE | 24-hour
        write(CMOSRTCDevice.Register.hours, 0x02)       // moves the guest clock
        _ = rtc.portWrite(offset: 0, size: 1, value: 0x80 | 0x38)  // NMIs masked
        let offset = rtc.clockOffset
        rtc.reset()
        #expect(read(0x38) == 0xA5)
        #expect(read(CMOSRTCDevice.Register.b) == 0x02)
        #expect(read(CMOSRTCDevice.Register.c) == 0)
        #expect(read(CMOSRTCDevice.Register.hours) == 0x02)
        #expect(rtc.clockOffset == offset)
        #expect(!rtc.nmiDisabled)
    }

    @Test("PCI: CONFIG_ADDRESS, 0xCF9 and a function's BARs and command register go back to power-on")
    func pci() throws {
        var space = PCIConfigurationSpace(vendorID: 0x1AF4, deviceID: 0x1000, classCode: 0x02_0000)
        try space.setBAR(1, size: 4096, kind: .memory32(prefetchable: false))
        let control = ResetControlDevice()
        let bridge = PCIHostBridge(resetControl: control)
        let function = PCIFunction(name: "test-nic", configuration: space)
        try bridge.attach(function, slot: 3)
        let bar1: UInt32 = 0x8000_0000 | 3 << 11 | 0x14
        _ = bridge.portWrite(offset: 0, size: 4, value: bar1)
        _ = bridge.portWrite(offset: 4, size: 4, value: 0xFEBF_0000)
        _ = bridge.portWrite(offset: 0, size: 4, value: 0x8000_0000 | 3 << 11 | 0x04)
        _ = bridge.portWrite(offset: 4, size: 2, value: 0x0006)   // memory decoding, bus master
        _ = bridge.portWrite(offset: 1, size: 1, value: 0x02)     // SYS_RST in 0xCF9
        #expect(function.configuration.barAddress(1) == 0xFEBF_0000)
        #expect(control.value == 0x02)
        bridge.reset()
        #expect(bridge.portRead(offset: 0, size: 4) == 0)
        #expect(control.value == 0)
        #expect(function.configuration.barAddress(1) == 0)
        #expect(function.configurationRead(offset: 0x04, size: 2) == 0)
    }

    @Test("fw_cfg: the selector and offset rewind to the signature; items stay")
    func fwCfg() {
        let device = FWCfgDevice(memory: nil, ramSize: 1 << 20, cpuCount: 2)
        _ = device.portWrite(offset: 0, size: 2, value: UInt32(FWCfgDevice.Key.cpuCount))
        _ = device.portRead(offset: 1, size: 1)
        device.reset()
        #expect((0..<4).map { _ in UInt8(device.portRead(offset: 1, size: 1)) } == Array("QEMU".utf8))
        _ = device.portWrite(offset: 0, size: 2, value: UInt32(FWCfgDevice.Key.cpuCount))
        #expect(device.portRead(offset: 1, size: 1) == 2)
    }

    @Test("i8042: the output port and command byte return to power-on; a pending answer is dropped")
    func i8042() {
        let controller = I8042Controller()
        _ = controller.commandPort.portWrite(offset: 0, size: 1, value: 0xDD)   // A20 off
        _ = controller.commandPort.portWrite(offset: 0, size: 1, value: 0xAA)   // self-test: answer queued
        #expect(controller.outputPort == 0x01)
        controller.commandPort.reset()
        #expect(controller.outputPort == 0x03)
        #expect(controller.commandPort.portRead(offset: 0, size: 1) & 0x01 == 0)  // output buffer empty
    }

    @Test("power-off port: \"Shutdown\" byte by byte powers off; a wrong byte or a reset starts over")
    func shutdownPort() {
        let port = ShutdownPortDevice()
        func send(_ text: String) -> [ExitAction] { text.utf8.map { port.portWrite(offset: 0, size: 1, value: UInt32($0)) } }
        #expect(send("Shutdow").allSatisfy { $0 == .resume })
        #expect(send("x") == [.resume])                                  // breaks the match
        #expect(send("n") == [.resume])
        #expect(send("SShutdown").last == .stop(.systemEvent(.shutdown)))  // a repeated S restarts it
        _ = send("Shut")
        port.reset()
        #expect(send("down") == [.resume, .resume, .resume, .resume])
        #expect(port.portRead(offset: 0, size: 1) == UInt32.max)
    }

    @Test("ACPI PM: PM1 enable clears and PM1 control returns to SCI_EN; the timer runs on")
    func acpiPM() {
        let now = Atomic<UInt64>(0)
        let pm = ACPIPMDevice(clock: { now.load(ordering: .relaxed) })
        _ = pm.portWrite(offset: 2, size: 2, value: 0x0121)
        _ = pm.portWrite(offset: 4, size: 2, value: 0x0001)
        now.store(1_000_000_000, ordering: .relaxed)
        pm.reset()
        #expect(pm.portRead(offset: 2, size: 2) == 0)
        #expect(pm.portRead(offset: 4, size: 2) == 1)
        #expect(pm.portRead(offset: 8, size: 4) == 3_579_545)
    }

    @Test("split irqchip: the I/O APIC masks every entry and the backend's MSI routes follow")
    func ioapic() throws {
        var configuration = VirtualMachineConfiguration(memorySize: 1 << 20, interruptController: .split)
        configuration.resetPolicy = .restart
        let vm = try Machine(configuration: configuration, backend: ScriptedBackend(script: [.halt]))
        let ioapic = try #require(vm.ioapicForTesting)
        _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: 0x18)
        _ = ioapic.mmioWrite(offset: 0x10, width: 4, value: 0x41)
        #expect(vm.vm.msiRoutes[4]?.data == 0x4041)
        vm.devices.resetDevices()
        _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: 0x18)
        #expect(ioapic.mmioRead(offset: 0x10, width: 4) & 0x1_0000 != 0)   // masked
        #expect(ioapic.routes[4].data & 0xFF == 0)
    }
}
