// Device snapshots (Documentation/Snapshots.md): each device driven through its guest interface
// into a state other than power-on, saved, restored into a device built the same way (as
// another process would), and read back through the guest interface. A state cut short is an
// error naming a field, never a trap.
import Foundation
@testable import HVCore
import HVModel
import Synchronization
import Testing

/// The bytes `device` saves.
func saved(_ device: some SnapshotDevice) throws -> [UInt8] {
    var encoder = StateEncoder()
    try device.saveState(to: &encoder)
    return encoder.bytes
}

/// Restores `bytes` into `device` and checks nothing is left over, as `Machine.restoreMachine` does.
func restore(_ device: some SnapshotDevice, _ bytes: [UInt8]) throws(StateDecodingError) {
    var decoder = StateDecoder(bytes)
    try device.restoreState(from: &decoder)
    try decoder.finish("state")
}

/// Every proper prefix of `bytes` fails with `StateDecodingError` in a fresh device from `make`.
private func expectTruncatedStatesFail<D: SnapshotDevice>(_ bytes: [UInt8], _ make: () throws -> D,
                                                          sourceLocation: SourceLocation = #_sourceLocation) rethrows {
    #expect(!bytes.isEmpty, sourceLocation: sourceLocation)
    var failures = 0
    for length in 0..<bytes.count {
        let device = try make()
        do {
            try restore(device, Array(bytes.prefix(length)))
        } catch {
            failures += 1
        }
    }
    #expect(failures == bytes.count, "every one of the \(bytes.count) truncated states throws", sourceLocation: sourceLocation)
}

/// The levels a test's interrupt callback saw.
private final class Levels: Sendable {
    private let storage = Mutex<[Bool]>([])
    func record(_ level: Bool) { storage.withLock { $0.append(level) } }
    var all: [Bool] { storage.withLock { $0 } }
}

@Suite("DeviceSnapshot")
struct DeviceSnapshotTests {
    // MARK: UART

    func uartView(_ uart: UART16550) -> [UInt8] {
        // Register reads in an order a driver might use, destructive ones (LSR, MSR, RBR) included:
        // both devices take the same reads, so they must answer alike.
        [2, 3, 4, 7, 1, 6, 5, 0, 0, 0, 0, 5, 2].map { UInt8(uart.portRead(offset: $0, size: 1)) }
    }

    @Test("UART: divisor, LCR, IER, MCR, SCR, FIFO mode and three received bytes survive; the restored interrupt level is reported")
    func uart() throws {
        let original = UART16550(output: .capture(SerialCapture()))
        func out(_ offset: UInt16, _ value: UInt8) { _ = original.portWrite(offset: offset, size: 1, value: UInt32(value)) }
        out(3, 0x80)  // DLAB
        out(0, 0x03)  // DLL: 38400 baud
        out(1, 0x00)
        out(3, 0x1B)  // 8E1, DLAB off
        out(2, 0xC7)  // FIFOs on, both cleared, trigger level 14
        out(1, 0x05)  // ERBFI | ELSI
        out(4, 0x0B)
        out(7, 0x5A)
        out(0, 0x41)  // one byte transmitted
        original.receive([0x31, 0x32, 0x33])
        #expect(original.interruptPending)

        let state = try saved(original)
        let levels = Levels()
        let restored = UART16550(output: .capture(SerialCapture()))
        restored.onInterruptChange = { levels.record($0) }
        try restore(restored, state)
        #expect(levels.all == [true], "the new process's IRQ line learns the pending interrupt")
        #expect(restored.interruptPending)
        #expect(restored.divisor == 3 && restored.transmittedByteCount == 1 && restored.receiveSpace == 13)
        #expect(try saved(restored) == state)

        let view = uartView(original)
        #expect(view == [0xCC, 0x1B, 0x0B, 0x5A, 0x05, 0xB0, 0x61, 0x31, 0x32, 0x33, 0x00, 0x60, 0xC1])
        #expect(uartView(restored) == view)
        expectTruncatedStatesFail(state) { UART16550(output: .capture(SerialCapture())) }
    }

    @Test("UART: a state with an impossible FIFO index or trigger level is refused by name")
    func uartRejectsBadIndices() throws {
        var state = try saved(UART16550(output: .capture(SerialCapture())))
        // rxBytes is a 4-byte length and 16 bytes after the 12 bytes of registers; the head follows.
        let head = 12 + 4 + 16
        state[head] = 16
        #expect(throws: StateDecodingError(field: "uart16550 rx head", problem: "16 is out of range (less than 16)")) {
            try restore(UART16550(output: .capture(SerialCapture())), state)
        }
        state[head] = 0
        state[head + 1] = 17
        #expect(throws: StateDecodingError(field: "uart16550 rx count", problem: "17 is out of range (less than 17)")) {
            try restore(UART16550(output: .capture(SerialCapture())), state)
        }
        state[head + 1] = 0
        state[10] = 3  // ier, lcr, mcr, scr, divisor (2), line errors, modem lines and deltas, FIFOs on
        #expect(throws: StateDecodingError(field: "uart16550 trigger level", problem: "3 is not 1, 4, 8 or 14")) {
            try restore(UART16550(output: .capture(SerialCapture())), state)
        }
    }

    // MARK: CMOS RTC

    @Test("CMOS RTC: NVRAM, the index and NMI mask, the guest's clock offset and pending flags survive; IRQ 8 is driven again")
    func cmosRTC() throws {
        let now = Mutex<Int64>(1_709_214_307 * 1_000_000_000)  // 2024-02-29 13:45:07 UTC
        let clock: CMOSRTCDevice.Clock = { now.withLock { $0 } }
        let controller = RecordingController()
        let original = CMOSRTCDevice(ramSize: 256 << 20, cpuCount: 2, interrupt: InterruptLine(controller: controller, gsi: 8), clock: clock)
        func write(_ index: UInt8, _ value: UInt8) {
            _ = original.portWrite(offset: 0, size: 1, value: UInt32(index))
            _ = original.portWrite(offset: 1, size: 1, value: UInt32(value))
        }
        write(0x40, 0xAB)  // NVRAM
        write(CMOSRTCDevice.Register.hours, 0x09)  // the guest's clock runs 4 hours behind
        write(CMOSRTCDevice.Register.b, 0x12)  // UIE, 24-hour
        now.withLock { $0 += 1_000_000_000 }
        _ = original.portRead(offset: 1, size: 1)  // the second turned: UF and IRQF
        #expect(controller.levels.withLock { $0.last?.high } == true)
        _ = original.portWrite(offset: 0, size: 1, value: 0xC0)  // NMI masked, index 0x40

        let state = try saved(original)
        let restoredController = RecordingController()
        let restored = CMOSRTCDevice(ramSize: 256 << 20, cpuCount: 2, interrupt: InterruptLine(controller: restoredController, gsi: 8), clock: clock)
        try restore(restored, state)
        #expect(restoredController.levels.withLock { $0.map(\.high) } == [true], "IRQF pending: IRQ 8 raised")
        #expect(restored.nmiDisabled && restored.clockOffset == original.clockOffset && restored.clockOffset == -4 * 3600)
        #expect(try saved(restored) == state)

        func view(_ rtc: CMOSRTCDevice) -> [UInt8] {
            // The selected byte first, then time, registers and memory-size bytes.
            [UInt8(rtc.portRead(offset: 1, size: 1))] + [0x00, 0x02, 0x04, 0x07, 0x08, 0x09, 0x0A, 0x0B, 0x0C, 0x0C, 0x0D, 0x32, 0x34, 0x35, 0x5F]
                .map { (index: UInt8) in
                    _ = rtc.portWrite(offset: 0, size: 1, value: UInt32(index))
                    return UInt8(rtc.portRead(offset: 1, size: 1))
                }
        }
        let expected = view(original)
        #expect(expected[0] == 0xAB && expected[3] == 0x09 && expected[9] & 0x90 == 0x90 && expected[10] == 0)
        #expect(view(restored) == expected)
        expectTruncatedStatesFail(state) { CMOSRTCDevice(ramSize: 256 << 20, cpuCount: 2, clock: clock) }
    }

    // MARK: ACPI PM

    @Test("ACPI PM: PM1 status, enable and control survive, the SCI is driven, and the PM timer goes on from its saved count in a process whose clock differs")
    func acpiPM() throws {
        let first = Mutex<UInt64>(5_000)
        let controller = RecordingController()
        let original = ACPIPMDevice(sci: InterruptLine(controller: controller, gsi: 9), clock: { first.withLock { $0 } })
        first.withLock { $0 += 2_000_000_000 }  // 2 s: 7159090 ticks
        _ = original.portWrite(offset: 2, size: 2, value: 0x0500)  // PWRBTN_EN | RTC_EN
        original.pressPowerButton()
        _ = original.portWrite(offset: 4, size: 2, value: 0x0401)  // SLP_TYP 1 without SLP_EN
        #expect(original.timerValue == 7_159_090)

        let state = try saved(original)
        let second = Mutex<UInt64>(987_654_321_000)
        let restoredController = RecordingController()
        let restored = ACPIPMDevice(sci: InterruptLine(controller: restoredController, gsi: 9), clock: { second.withLock { $0 } })
        try restore(restored, state)
        #expect(restoredController.levels.withLock { $0.map(\.high) } == [true])
        #expect(restored.timerValue == 7_159_090)
        first.withLock { $0 += 1_000_000 }
        second.withLock { $0 += 1_000_000 }
        #expect(restored.timerValue == original.timerValue && restored.timerValue == 7_159_090 + 3_579)

        func view(_ pm: ACPIPMDevice) -> [UInt32] { [0, 4, 8].map { pm.portRead(offset: $0, size: 4) } }
        #expect(view(original) == [0x0500_0100, 0x0401, 7_162_669])
        #expect(view(restored) == view(original))
        expectTruncatedStatesFail(state) { ACPIPMDevice(clock: { 0 }) }
    }

    // MARK: fw_cfg

    @Test("fw_cfg: the selector, the data offset and the DMA address latch survive")
    func fwCfg() throws {
        let original = FWCfgDevice(memory: nil, ramSize: 0x1234_5678_9A, cpuCount: 2)
        _ = original.portWrite(offset: 0, size: 2, value: UInt32(FWCfgDevice.Key.ramSize))
        #expect((0..<3).map { _ in original.portRead(offset: 1, size: 1) } == [0x9A, 0x78, 0x56])
        _ = original.portWrite(offset: 4, size: 4, value: 0x0100_0000)  // the DMA address's high half only

        let state = try saved(original)
        let restored = FWCfgDevice(memory: nil, ramSize: 0x1234_5678_9A, cpuCount: 2)
        try restore(restored, state)
        #expect(try saved(restored) == state)
        let rest = (0..<5).map { _ in original.portRead(offset: 1, size: 1) }
        #expect(rest == [0x34, 0x12, 0, 0, 0])
        #expect((0..<5).map { _ in restored.portRead(offset: 1, size: 1) } == rest)
        expectTruncatedStatesFail(state) { FWCfgDevice(memory: nil, ramSize: 1, cpuCount: 1) }
    }

    // MARK: i8042

    @Test("i8042: the command byte, output port, queued bytes and a pending command survive; the data port carries them")
    func i8042() throws {
        let original = I8042Controller()
        func command(_ byte: UInt8) { _ = original.commandPort.portWrite(offset: 0, size: 1, value: UInt32(byte)) }
        command(0xDD)  // A20 off
        command(0xAA)  // self-test: 0x55 queued, system flag
        command(0x20)  // the command byte queued
        command(0xD1)  // waiting for an output-port byte

        let dataState = try saved(original.dataPort)
        #expect(try saved(original.commandPort).isEmpty)
        let restored = I8042Controller()
        try restore(restored.dataPort, dataState)
        try restore(restored.commandPort, [])
        #expect(restored.outputPort == 0x01)
        #expect(try saved(restored.dataPort) == dataState)

        func view(_ controller: I8042Controller) -> [UInt8] {
            let status = UInt8(controller.commandPort.portRead(offset: 0, size: 1))
            // Completes 0xD1 with bit 0 set (no reset) and A20 on.
            _ = controller.dataPort.portWrite(offset: 0, size: 1, value: 0x03)
            let data = (0..<3).map { _ in UInt8(controller.dataPort.portRead(offset: 0, size: 1)) }
            return [status, controller.outputPort] + data + [UInt8(controller.commandPort.portRead(offset: 0, size: 1))]
        }
        let expected = view(original)
        #expect(expected == [0x1D, 0x03, 0x55, 0x03, 0x03, 0x14])
        #expect(view(restored) == expected)
        expectTruncatedStatesFail(dataState) { I8042Controller().dataPort }
    }

    // MARK: PCI

    /// A bus with the i440FX, 0xCF9, and at 00:01.0 a function with a 4 KiB memory BAR.
    func pciBus() throws -> PCIHostBridge {
        let bridge = PCIHostBridge(resetControl: ResetControlDevice())
        var space = PCIConfigurationSpace(vendorID: 0x1AF4, deviceID: 0x10F0, classCode: 0xFF_0000)
        try space.setBAR(0, size: 0x1000, kind: .memory32(prefetchable: false))
        try bridge.attach(PCIFunction(name: "scratch", configuration: space), slot: 1)
        return bridge
    }

    func configAddress(slot: Int, register: UInt8) -> UInt32 { 0x8000_0000 | UInt32(slot) << 11 | UInt32(register) }

    @Test("PCI host bridge: CONFIG_ADDRESS, 0xCF9 and every function's configuration space survive, write masks as constructed")
    func pciHostBridge() throws {
        let original = try pciBus()
        func write(slot: Int, _ register: UInt8, _ value: UInt32) {
            _ = original.portWrite(offset: 0, size: 4, value: configAddress(slot: slot, register: register))
            _ = original.portWrite(offset: 4, size: 4, value: value)
        }
        write(slot: 1, 0x10, 0xC000_3000)  // BAR 0
        write(slot: 1, 0x04, 0x0006)       // memory decoding, bus master
        write(slot: 0, 0x0C, 0x0000_4010)  // the host bridge's latency timer and cache line size
        _ = original.portWrite(offset: 1, size: 1, value: 0x0A)  // 0xCF9: SYS_RST | FULL_RST, no reset
        _ = original.portWrite(offset: 0, size: 4, value: configAddress(slot: 1, register: 0x10))
        #expect(original.snapshotRefusal == nil)

        let state = try saved(original)
        let restored = try pciBus()
        try restore(restored, state)
        #expect(try saved(restored) == state)

        func view(_ bridge: PCIHostBridge) -> [UInt32] {
            // The latched address and the register it selects, then 0xCF9, then a dword of each header.
            var values = [bridge.portRead(offset: 0, size: 4), bridge.portRead(offset: 4, size: 4), bridge.portRead(offset: 1, size: 1)]
            for (slot, register) in [(1, UInt8(0x04)), (0, 0x0C), (1, 0x00)] {
                _ = bridge.portWrite(offset: 0, size: 4, value: configAddress(slot: slot, register: register))
                values.append(bridge.portRead(offset: 4, size: 4))
            }
            return values
        }
        let expected = view(original)
        #expect(expected == [configAddress(slot: 1, register: 0x10), 0xC000_3000, 0x0A, 0x0006, 0x4010, 0x10F0_1AF4])
        #expect(view(restored) == expected)
        // BAR sizing still reads the size back: the write masks were kept.
        _ = restored.portWrite(offset: 0, size: 4, value: configAddress(slot: 1, register: 0x10))
        _ = restored.portWrite(offset: 4, size: 4, value: 0xFFFF_FFFF)
        #expect(restored.portRead(offset: 4, size: 4) == 0xFFFF_F000)
        try expectTruncatedStatesFail(state) { try pciBus() }
    }

    @Test("PCI host bridge: a function without snapshot support refuses the snapshot by its address; a bus laid out differently refuses the state")
    func pciRefusals() throws {
        let bridge = PCIHostBridge()
        try bridge.attach(PCITestDevice(notifiers: nil), slot: 3)
        #expect(bridge.snapshotRefusal == "PCI function 00:03.0 (pci-testdev) has no snapshot support yet")

        let state = try saved(try pciBus())
        #expect(throws: StateDecodingError(field: "pci-host reset control present", problem: "the snapshot's bridge owns 0xCF9; this one does not")) {
            try restore(PCIHostBridge(), state)
        }
        let fewer = PCIHostBridge(resetControl: ResetControlDevice())
        #expect(throws: StateDecodingError(field: "pci-host function 00:01.0",
                                           problem: "the snapshot has scratch here; this bus has nothing that can take it")) {
            try restore(fewer, state)
        }
        let more = try pciBus()
        try more.attach(PCIFunction(name: "extra", configuration: PCIConfigurationSpace(vendorID: 1, deviceID: 2, classCode: 0)), slot: 0x1F, function: 7)
        #expect(throws: StateDecodingError(field: "pci-host function 00:1f.7", problem: "this bus has extra here; the snapshot has none")) {
            try restore(more, state)
        }
        #expect(more.configAddress == 0, "a refused state changes nothing")
    }

    // MARK: Small ports

    @Test("port 0x92, 0xCF9 and the shutdown port keep their register; debug-exit and the PCI windows are stateless")
    func smallPorts() throws {
        let port92 = SystemControlPortA()
        #expect(port92.portWrite(offset: 0, size: 1, value: 0x03) == .reset)
        let port92State = try saved(port92)
        let restored92 = SystemControlPortA()
        try restore(restored92, port92State)
        #expect(restored92.portRead(offset: 0, size: 1) == 0x03)
        // The bit is already set: writing it again is no 0-to-1 edge, in either device.
        #expect(port92.portWrite(offset: 0, size: 1, value: 0x03) == .resume)
        #expect(restored92.portWrite(offset: 0, size: 1, value: 0x03) == .resume)
        expectTruncatedStatesFail(port92State) { SystemControlPortA() }

        let resetControl = ResetControlDevice()
        _ = resetControl.portWrite(offset: 0, size: 1, value: 0x08)
        let resetState = try saved(resetControl)
        let restoredReset = ResetControlDevice()
        try restore(restoredReset, resetState)
        #expect(restoredReset.portRead(offset: 0, size: 1) == 0x08)
        expectTruncatedStatesFail(resetState) { ResetControlDevice() }
        #expect(throws: StateDecodingError.self) { try restore(ResetControlDevice(), [0x04]) }

        let shutdown = ShutdownPortDevice()
        for byte in "Shut".utf8 { #expect(shutdown.portWrite(offset: 0, size: 1, value: UInt32(byte)) == .resume) }
        let shutdownState = try saved(shutdown)
        let restoredShutdown = ShutdownPortDevice()
        try restore(restoredShutdown, shutdownState)
        let actions = "down".utf8.map { restoredShutdown.portWrite(offset: 0, size: 1, value: UInt32($0)) }
        #expect(actions == [.resume, .resume, .resume, .stop(.systemEvent(.shutdown))])
        expectTruncatedStatesFail(shutdownState) { ShutdownPortDevice() }
        #expect(throws: StateDecodingError(field: "shutdown-port matched", problem: "8 is out of range (less than 8)")) {
            try restore(ShutdownPortDevice(), [8])
        }

        let debugExit = DebugExitDevice()
        let window = PCIWindow(space: .memory), ioWindow = PCIWindow(space: .io)
        #expect(try saved(debugExit).isEmpty && saved(window).isEmpty && saved(ioWindow).isEmpty)
        #expect((debugExit as AnyObject) is any StatelessDevice && (window as AnyObject) is any StatelessDevice)
        try restore(debugExit, [])
        try restore(window, [])
    }

    // MARK: I/O APIC

    @Test("I/O APIC: IOREGSEL, the ID, the redirection table with remote IRR and the asserted lines survive; the routes reach the backend")
    func ioapic() throws {
        let originalRoutes = Mutex<[[MSIMessage]]>([])
        let sent = Mutex(0)
        let original = IOAPICDevice(deliver: { _, _ in sent.withLock { $0 += 1 } }, tableChanged: { routes in originalRoutes.withLock { $0.append(routes) } })
        func register(_ index: UInt8, _ value: UInt32) {
            _ = original.mmioWrite(offset: 0x00, width: 4, value: UInt64(index))
            _ = original.mmioWrite(offset: 0x10, width: 4, value: UInt64(value))
        }
        register(0x00, 0x0300_0000)    // ID 3
        register(0x19, 0x0100_0000)    // entry 4: APIC 1 ...
        register(0x18, 0x0000_8041)    // ... vector 0x41, level, unmasked
        try original.setLevel(pin: 4, high: true)  // delivered: remote IRR set
        register(0x22, 0x0001_0050)    // entry 9: vector 0x50, edge, masked
        try original.setLevel(pin: 9, high: true)
        register(0x24, 0x0000_0060)    // entry 10: vector 0x60, edge, unmasked; line low
        _ = original.mmioWrite(offset: 0x00, width: 4, value: 0x18)
        #expect(sent.withLock { $0 } == 1)

        let state = try saved(original)
        let routes = Mutex<[[MSIMessage]]>([])
        let restoredSent = Mutex(0)
        let restored = IOAPICDevice(deliver: { _, _ in restoredSent.withLock { $0 += 1 } }, tableChanged: { table in routes.withLock { $0.append(table) } })
        try restore(restored, state)
        #expect(restoredSent.withLock { $0 } == 0, "the restore delivers nothing: the local APICs already had it")
        #expect(routes.withLock { $0 } == [original.routes])
        #expect(try saved(restored) == state)

        func view(_ ioapic: IOAPICDevice) -> [UInt64] {
            var values = [ioapic.mmioRead(offset: 0x00, width: 4), ioapic.mmioRead(offset: 0x10, width: 4)]  // IOREGSEL 0x18: entry 4 low
            for index in [0x00, 0x01, 0x19, 0x22, 0x24] as [UInt64] {
                _ = ioapic.mmioWrite(offset: 0x00, width: 4, value: index)
                values.append(ioapic.mmioRead(offset: 0x10, width: 4))
            }
            return values
        }
        let expected = view(original)
        #expect(expected == [0x18, 0xC041, 0x0300_0000, 0x0017_0020, 0x0100_0000, 0x0001_0050, 0x60])
        #expect(view(restored) == expected)
        // Line 4 is still asserted: its EOI clears remote IRR and delivers again, in both.
        original.endOfInterruptForTesting(vector: 0x41)
        restored.endOfInterruptForTesting(vector: 0x41)
        #expect(sent.withLock { $0 } == 2 && restoredSent.withLock { $0 } == 1)
        expectTruncatedStatesFail(state) { IOAPICDevice(deliver: { _, _ in }) }
    }

    @Test("I/O APIC: a state no guest can reach (remote IRR on an edge entry) is refused, naming the entry")
    func ioapicRejectsUnreachableState() throws {
        var state = try saved(IOAPICDevice(deliver: { _, _ in }))
        // IOREGSEL, ID, asserted lines (4), the entry count, then 8 bytes per entry.
        let entry2 = 1 + 1 + 4 + 1 + 2 * 8
        state[entry2 + 1] |= 0x40  // bit 14: remote IRR; the entry is edge-triggered
        #expect(throws: StateDecodingError(field: "ioapic entry 2", problem: "is not a state the I/O APIC can be in")) {
            try restore(IOAPICDevice(deliver: { _, _ in }), state)
        }
    }
}
