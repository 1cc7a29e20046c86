// Routing of port and MMIO exits to devices by range, as the vCPU loop drives it.
import HVCore
import Testing

/// A port device that records every access and reads back a counter.
private final class RecordingPortDevice: PortIODevice, @unchecked Sendable {  // each test drives it from one thread
    struct Access: Equatable {
        var offset: UInt16
        var size: Int
        var value: UInt32
    }

    let name: String
    var writes: [Access] = []
    var reads: [Access] = []
    var nextReadValue: UInt32 = 10

    init(name: String) { self.name = name }

    func portRead(offset: UInt16, size: Int) -> UInt32 {
        defer { nextReadValue += 1 }
        reads.append(Access(offset: offset, size: size, value: nextReadValue))
        return nextReadValue
    }

    func portWrite(offset: UInt16, size: Int, value: UInt32) -> ExitAction {
        writes.append(Access(offset: offset, size: size, value: value))
        return .resume
    }
}

/// An MMIO device that records writes and reads back a value derived from the offset.
private final class RecordingMMIODevice: MMIODevice, @unchecked Sendable {  // each test drives it from one thread
    struct Access: Equatable {
        var offset: UInt64
        var width: Int
        var value: UInt64
    }

    let name: String
    var accesses: [Access] = []

    init(name: String) { self.name = name }

    func mmioRead(offset: UInt64, width: Int) -> UInt64 {
        accesses.append(Access(offset: offset, width: width, value: 0))
        return 0xC0DE_0000 | offset
    }

    func mmioWrite(offset: UInt64, width: Int, value: UInt64) -> ExitAction {
        accesses.append(Access(offset: offset, width: width, value: value))
        return .resume
    }
}

/// Runs `body` with a port access of `elements` (each `size` bytes) over a local buffer, the
/// way a backend hands one over; returns the action and the elements afterwards (an `IN`
/// fills them).
func withPortIO(
    _ port: IOPort, size: Int, elements: [UInt32], _ body: (PortIO) -> ExitAction?
) -> (ExitAction?, [UInt32]) {
    let data = PortIOData(buffer: PortIOBuffer(capacity: size * elements.count), size: size, count: elements.count)!
    for (index, element) in elements.enumerated() { data[index] = element }
    let action = body(PortIO(port: port, size: UInt8(size), count: UInt32(elements.count), data: data))
    return (action, (0..<elements.count).map { data[$0] })
}

private let context = ExitContext(vcpuID: 0)

@Suite struct DeviceBusTests {
    @Test func overlappingPortRangesAreRejectedNamingBothDevices() throws {
        let bus = DeviceBus()
        try bus.register(RecordingPortDevice(name: "com1"), port: .com1, count: 8)
        let error = DeviceBusError.overlap(device: "probe", existing: "com1", start: 0x3F8, end: 0x3FF)
        #expect(throws: error) {
            try bus.register(RecordingPortDevice(name: "probe"), port: 0x3FF, count: 4)
        }
        #expect(throws: error) {
            try bus.register(RecordingPortDevice(name: "probe"), port: 0x3F0, count: 0x100)
        }
        #expect(error.description.contains("probe"))
        #expect(error.description.contains("com1"))
        #expect(error.description.contains("0x3f8-0x3ff"))
    }

    @Test("an access that starts in a device's range but runs past its end reaches no device, ports and MMIO alike")
    func straddlingAccessesAreDeclined() throws {
        let bus = DeviceBus()
        let port = RecordingPortDevice(name: "port"), window = RecordingMMIODevice(name: "window")
        let top = RecordingMMIODevice(name: "top")
        try bus.register(port, port: 0x500, count: 4)
        try bus.register(window, address: 0x1000, length: 0x1000)
        try bus.register(top, address: GuestPhysicalAddress(UInt64.max - 0xFFF), length: 0x1000)

        #expect(withPortIO(0x502, size: 4, elements: [7]) { bus.handle(.portOut($0), context: context) }.0 == nil)
        #expect(withPortIO(0x503, size: 2, elements: [0]) { bus.handle(.portIn($0), context: context) }.0 == nil)
        #expect(port.writes.isEmpty && port.reads.isEmpty)
        #expect(withPortIO(0x502, size: 2, elements: [7]) { bus.handle(.portOut($0), context: context) }.0 == .resume)
        #expect(port.writes == [.init(offset: 2, size: 2, value: 7)])

        let straddling = MMIOAccess(address: 0x1FFC, width: 8)
        #expect(bus.handle(.mmioRead(straddling), context: context) == nil)
        #expect(bus.handle(.mmioWrite(MMIOAccess(address: 0x1FFF, width: 2, value: 1)), context: context) == nil)
        #expect(window.accesses.isEmpty)
        #expect(bus.handle(.mmioRead(MMIOAccess(address: 0x1FFC, width: 4)), context: context) == .resumeWith(0xC0DE_0FFC))
        // At the very top of the address space the check cannot overflow.
        #expect(bus.handle(.mmioRead(MMIOAccess(address: GuestPhysicalAddress(UInt64.max - 3), width: 8)), context: context) == nil)
        #expect(bus.handle(.mmioRead(MMIOAccess(address: GuestPhysicalAddress(UInt64.max - 7), width: 8)), context: context) == .resumeWith(0xC0DE_0FF8))
    }

    @Test("once Machine.start has frozen the bus, registering a device is refused with an error naming it")
    func registrationAfterStartIsRefused() throws {
        let vm = try Machine(configuration: VirtualMachineConfiguration(memorySize: 1 << 20), backend: ScriptedBackend(script: [.halt]))
        try vm.devices.register(RecordingPortDevice(name: "before"), port: 0x500, count: 1)
        _ = try vm.run()
        #expect(throws: DeviceBusError.frozen(device: "late")) {
            try vm.devices.register(RecordingPortDevice(name: "late"), port: 0x600, count: 1)
        }
        #expect(throws: DeviceBusError.frozen(device: "late-mmio")) {
            try vm.devices.register(RecordingMMIODevice(name: "late-mmio"), address: 0x10_0000, length: 0x1000)
        }
        #expect(DeviceBusError.frozen(device: "late").description.contains("register devices before start"))
    }

    @Test func overlappingMMIORangesAreRejectedNamingBothDevices() throws {
        let bus = DeviceBus()
        try bus.register(RecordingMMIODevice(name: "ioapic"), address: 0xFEC0_0000, length: 0x1000)
        #expect(throws: DeviceBusError.overlap(device: "hpet", existing: "ioapic", start: 0xFEC0_0000, end: 0xFEC0_0FFF)) {
            try bus.register(RecordingMMIODevice(name: "hpet"), address: 0xFEC0_0800, length: 0x1000)
        }
    }

    @Test func adjacentRangesAreAccepted() throws {
        let bus = DeviceBus()
        let low = RecordingPortDevice(name: "low"), middle = RecordingPortDevice(name: "middle")
        let high = RecordingPortDevice(name: "high")
        try bus.register(middle, port: 0x3F8, count: 8)
        try bus.register(high, port: 0x400, count: 4)
        try bus.register(low, port: 0x3F4, count: 4)
        try bus.register(RecordingMMIODevice(name: "a"), address: 0x1000, length: 0x1000)
        try bus.register(RecordingMMIODevice(name: "b"), address: 0x2000, length: 0x1000)

        for port: IOPort in [0x3F7, 0x3F8, 0x3FF, 0x400] {
            _ = withPortIO(port, size: 1, elements: [port.rawValue == 0x3FF ? 1 : 0]) {
                bus.handle(.portOut($0), context: context)
            }
        }
        #expect(low.writes == [.init(offset: 3, size: 1, value: 0)])
        #expect(middle.writes == [.init(offset: 0, size: 1, value: 0), .init(offset: 7, size: 1, value: 1)])
        #expect(high.writes == [.init(offset: 0, size: 1, value: 0)])
    }

    @Test func stringPortOutReachesTheDeviceOncePerElementInOrder() throws {
        let bus = DeviceBus()
        let device = RecordingPortDevice(name: "fifo")
        try bus.register(device, port: 0x500, count: 4)
        let (action, _) = withPortIO(0x502, size: 2, elements: [0x1111, 0x2222, 0x3333]) {
            bus.handle(.portOut($0), context: context)
        }
        #expect(action == .resume)
        #expect(device.writes == [
            .init(offset: 2, size: 2, value: 0x1111),
            .init(offset: 2, size: 2, value: 0x2222),
            .init(offset: 2, size: 2, value: 0x3333),
        ])
    }

    @Test func stringPortInFillsEveryElementInOrder() throws {
        let bus = DeviceBus()
        let device = RecordingPortDevice(name: "fifo")
        try bus.register(device, port: 0x500, count: 4)
        let (action, elements) = withPortIO(0x500, size: 4, elements: [0, 0, 0, 0]) {
            bus.handle(.portIn($0), context: context)
        }
        #expect(action == .resume)
        #expect(elements == [10, 11, 12, 13])
        #expect(device.reads.map(\.offset) == [0, 0, 0, 0])
    }

    @Test func mmioAccessesReachTheDeviceWithTheirOffsets() throws {
        let bus = DeviceBus()
        let low = RecordingMMIODevice(name: "low"), high = RecordingMMIODevice(name: "high")
        try bus.register(high, address: 0xFEE0_0000, length: 0x1000)
        try bus.register(low, address: 0xFEC0_0000, length: 0x100)

        let write = MMIOAccess(address: 0xFEC0_0010, width: 4, value: 0xAB)
        #expect(bus.handle(.mmioWrite(write), context: context) == .resume)
        let read = MMIOAccess(address: 0xFEE0_0FF8, width: 8)
        #expect(bus.handle(.mmioRead(read), context: context) == .resumeWith(0xC0DE_0FF8))

        #expect(low.accesses == [.init(offset: 0x10, width: 4, value: 0xAB)])
        #expect(high.accesses == [.init(offset: 0xFF8, width: 8, value: 0)])
    }

    @Test func unmappedAccessesAndOtherExitsAreDeclined() throws {
        let bus = DeviceBus()
        let device = RecordingPortDevice(name: "com1")
        try bus.register(device, port: .com1, count: 8)
        try bus.register(RecordingMMIODevice(name: "ioapic"), address: 0xFEC0_0000, length: 0x1000)

        let (inAction, _) = withPortIO(0x80, size: 1, elements: [0]) { bus.handle(.portIn($0), context: context) }
        let (outAction, _) = withPortIO(0x3F7, size: 1, elements: [0]) { bus.handle(.portOut($0), context: context) }
        #expect(inAction == nil)
        #expect(outAction == nil)
        #expect(bus.handle(.mmioRead(MMIOAccess(address: 0xFEC0_1000, width: 4)), context: context) == nil)
        #expect(bus.handle(.mmioWrite(MMIOAccess(address: 0xFEBF_FFFF, width: 1, value: 1)), context: context) == nil)
        #expect(bus.handle(.halt, context: context) == nil)
        #expect(bus.handle(.msrRead(index: 0x10), context: context) == nil)
        #expect(device.reads.isEmpty && device.writes.isEmpty)
    }

    @Test func debugExitStopPropagatesThroughTheBus() throws {
        let bus = DeviceBus()
        let debugExit = DebugExitDevice()
        try bus.register(debugExit, port: .debugExit, count: debugExit.portCount)

        let (action, _) = withPortIO(.debugExit, size: 4, elements: [0x31]) {
            bus.handle(.portOut($0), context: context)
        }
        #expect(action == .stop(.debugExit(code: 0x31)))

        // A string OUT stops at the first element that stops the VM.
        let (repAction, _) = withPortIO(.debugExit, size: 4, elements: [7, 8, 9]) {
            bus.handle(.portOut($0), context: context)
        }
        #expect(repAction == .stop(.debugExit(code: 7)))
    }

    @Test func uartOnTheBusTransmitsAndReportsLineStatus() throws {
        let bus = DeviceBus()
        let capture = SerialCapture()
        try bus.register(UART16550(output: .capture(capture)), port: .com1, count: UART16550.portCount)

        let (outAction, _) = withPortIO(.com1, size: 1, elements: Array("ok\n".utf8).map(UInt32.init)) {
            bus.handle(.portOut($0), context: context)
        }
        #expect(outAction == .resume)
        #expect(capture.text == "ok\n")
        let (inAction, lsr) = withPortIO(IOPort(0x3FD), size: 1, elements: [0]) {
            bus.handle(.portIn($0), context: context)
        }
        #expect(inAction == .resume)
        #expect(lsr == [0x60])
    }
}
