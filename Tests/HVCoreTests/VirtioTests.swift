// The virtio-mmio transport, the split virtqueue and the block and entropy devices, driven the
// way Linux's virtio_mmio and virtio_ring drivers drive them, with the queues written into
// guest memory by the test. No VM: the transport's registers are called directly.
import CAllocationCounter
import Foundation
import HVCore
import Testing

/// A driver for one device: lays out queue 0 in guest memory and makes requests.
final class VirtioTestDriver<Device: VirtioDevice> {
    static var descriptors: UInt64 { 0x1_0000 }
    static var availableRing: UInt64 { 0x2_0000 }
    static var usedRing: UInt64 { 0x3_0000 }
    static var data: UInt64 { 0x4_0000 }

    let memory: GuestMemory
    let transport: VirtioMMIOTransport<Device>
    let size: UInt16
    private(set) var availableIndex: UInt16 = 0

    init(_ device: Device, size: UInt16 = 16, memorySize: UInt64 = 16 << 20) throws {
        memory = try GuestMemory(regions: [MemoryRegion(guestAddress: 0, size: memorySize)])
        transport = VirtioMMIOTransport(device: device, memory: memory, interrupt: nil)
        self.size = size
    }

    /// A driver for a transport that already runs (a restored one), going on from the driver's
    /// available index.
    init(transport: VirtioMMIOTransport<Device>, memory: GuestMemory, size: UInt16 = 16, availableIndex: UInt16) {
        self.memory = memory
        self.transport = transport
        self.size = size
        self.availableIndex = availableIndex
    }

    func read(_ register: UInt64) -> UInt32 { UInt32(transport.mmioRead(offset: register, width: 4)) }
    func write(_ register: UInt64, _ value: UInt32) { _ = transport.mmioWrite(offset: register, width: 4, value: UInt64(value)) }

    /// 3.1.1's initialisation: reset, ACKNOWLEDGE, DRIVER, features, FEATURES_OK, the queue, DRIVER_OK.
    /// Returns whether the device kept FEATURES_OK.
    @discardableResult
    func initialise(features: UInt64? = nil, queueSize: UInt16? = nil) -> Bool {
        write(0x70, 0)
        write(0x70, VirtioStatus.acknowledge)
        write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver)
        write(0x14, 0)
        let low = UInt64(read(0x10))
        write(0x14, 1)
        let offered = low | UInt64(read(0x10)) << 32
        let accepted = features ?? offered
        write(0x24, 0); write(0x20, UInt32(truncatingIfNeeded: accepted))
        write(0x24, 1); write(0x20, UInt32(truncatingIfNeeded: accepted >> 32))
        write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
        guard read(0x70) & VirtioStatus.featuresOK != 0 else { return false }
        // Fresh rings, as a driver allocates them (the device serves what is available at DRIVER_OK).
        try? memory.zero(count: 0x1000, at: GuestPhysicalAddress(Self.availableRing))
        try? memory.zero(count: 0x1000, at: GuestPhysicalAddress(Self.usedRing))
        write(0x30, 0)
        write(0x38, UInt32(queueSize ?? size))
        write(0x80, UInt32(Self.descriptors)); write(0x84, 0)
        write(0x90, UInt32(Self.availableRing)); write(0x94, 0)
        write(0xA0, UInt32(Self.usedRing)); write(0xA4, 0)
        write(0x44, 1)
        write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK)
        availableIndex = 0
        return true
    }

    func descriptor(_ index: UInt16, address: UInt64, length: UInt32, flags: UInt16 = 0, next: UInt16 = 0,
                    table: UInt64 = VirtioTestDriver.descriptors) throws {
        let entry = GuestPhysicalAddress(table + 16 * UInt64(index))
        try memory.write(address, at: entry)
        try memory.write(length, at: GuestPhysicalAddress(entry.rawValue + 8))
        try memory.write(flags, at: GuestPhysicalAddress(entry.rawValue + 12))
        try memory.write(next, at: GuestPhysicalAddress(entry.rawValue + 14))
    }

    /// Puts `head` on the available ring and notifies queue 0.
    func submit(_ head: UInt16, notify: Bool = true) throws {
        try memory.write(head, at: GuestPhysicalAddress(Self.availableRing + 4 + 2 * UInt64(availableIndex % size)))
        availableIndex &+= 1
        try memory.write(availableIndex, at: GuestPhysicalAddress(Self.availableRing + 2))
        if notify { write(0x50, 0) }
    }

    var usedIndex: UInt16 { (try? memory.read(UInt16.self, at: GuestPhysicalAddress(Self.usedRing + 2))) ?? 0 }

    func used(_ slot: UInt16) throws -> (id: UInt32, length: UInt32) {
        let element = GuestPhysicalAddress(Self.usedRing + 4 + 8 * UInt64(slot % size))
        return (try memory.read(UInt32.self, at: element), try memory.read(UInt32.self, at: GuestPhysicalAddress(element.rawValue + 4)))
    }
}

let descriptorNext: UInt16 = 1, descriptorWrite: UInt16 = 2, descriptorIndirect: UInt16 = 4

@Suite("virtio-mmio transport and split virtqueues")
struct VirtioTransportTests {
    @Test("the register window identifies a version-2 device and offers VERSION_1, indirect descriptors and the event index")
    func identity() throws {
        let driver = try VirtioTestDriver(VirtioEntropy())
        #expect(driver.read(0x000) == 0x7472_6976)
        #expect(driver.read(0x004) == 2)
        #expect(driver.read(0x008) == VirtioDeviceType.entropy.rawValue)
        driver.write(0x14, 1)
        #expect(UInt64(driver.read(0x10)) << 32 & VirtioFeature.version1 != 0)
        driver.write(0x14, 0)
        #expect(UInt64(driver.read(0x10)) & (VirtioFeature.indirectDescriptors | VirtioFeature.eventIndex) != 0)
        driver.write(0x30, 0)
        #expect(driver.read(0x34) == 256)
        driver.write(0x30, 1)
        #expect(driver.read(0x34) == 0, "queue 1 does not exist")
        // A non-32-bit access to the registers reads 0 and changes nothing.
        #expect(driver.transport.mmioRead(offset: 0, width: 2) == 0)
    }

    @Test("FEATURES_OK stays clear without VERSION_1 or with a feature that was not offered")
    func featureNegotiation() throws {
        let driver = try VirtioTestDriver(VirtioEntropy())
        #expect(!driver.initialise(features: 0))
        #expect(!driver.initialise(features: VirtioFeature.version1 | 1 << 3))
        #expect(driver.initialise(features: VirtioFeature.version1))
        #expect(driver.transport.negotiatedFeatures == VirtioFeature.version1)
    }

    @Test("a queue size that is not a power of two, too large, or rings outside RAM or misaligned set DEVICE_NEEDS_RESET",
          arguments: [("size 12", 12, VirtioTestDriver<VirtioEntropy>.descriptors), ("size 512", 512, VirtioTestDriver<VirtioEntropy>.descriptors),
                      ("size 0", 0, VirtioTestDriver<VirtioEntropy>.descriptors), ("table outside RAM", 16, 0xFFFF_F000),
                      ("misaligned table", 16, VirtioTestDriver<VirtioEntropy>.descriptors + 8)])
    func badQueueSetUp(_ name: String, size: Int, table: UInt64) throws {
        let driver = try VirtioTestDriver(VirtioEntropy())
        driver.initialise()
        driver.write(0x70, 0)
        driver.write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver)
        driver.write(0x24, 1); driver.write(0x20, 1)
        driver.write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
        driver.write(0x38, UInt32(size))
        driver.write(0x80, UInt32(truncatingIfNeeded: table))
        driver.write(0x90, UInt32(VirtioTestDriver<VirtioEntropy>.availableRing))
        driver.write(0xA0, UInt32(VirtioTestDriver<VirtioEntropy>.usedRing))
        driver.write(0x44, 1)
        #expect(driver.read(0x44) == 0, "\(name): the queue must not go live")
        #expect(driver.transport.needsReset, "\(name)")
        // A reset (status 0) clears it, and a correct set-up works.
        driver.initialise()
        #expect(!driver.transport.needsReset && driver.read(0x44) == 1)
    }

    @Test("a notification for a queue that was never set up is ignored, and the device keeps working")
    func notifyUnknownQueue() throws {
        let driver = try VirtioTestDriver(VirtioEntropy())
        driver.write(0x50, 0)
        driver.write(0x50, 7)
        driver.initialise()
        driver.write(0x50, 9)
        try driver.descriptor(0, address: VirtioTestDriver<VirtioEntropy>.data, length: 16, flags: descriptorWrite)
        try driver.submit(0)
        #expect(driver.usedIndex == 1 && !driver.transport.needsReset)
    }

    /// A driver with a live entropy queue, for the malformed-chain cases.
    static func entropyDriver(features: UInt64? = nil) throws -> VirtioTestDriver<VirtioEntropy> {
        let driver = try VirtioTestDriver(VirtioEntropy())
        #expect(driver.initialise(features: features))
        return driver
    }

    @Test("malformed chains set DEVICE_NEEDS_RESET with a configuration interrupt, use nothing, and leave the host running",
          arguments: ["loop", "next out of range", "head out of range", "buffer outside RAM", "buffer wraps 2^64",
                      "readable after writable", "nested indirect", "indirect with NEXT", "indirect length", "indirect loop",
                      "available index jump"])
    func malformedChain(_ kind: String) throws {
        let driver = try Self.entropyDriver()
        let data = VirtioTestDriver<VirtioEntropy>.data
        let table: UInt64 = 0x5_0000
        var head: UInt16 = 0
        switch kind {
        case "loop":
            try driver.descriptor(0, address: data, length: 8, flags: descriptorWrite | descriptorNext, next: 1)
            try driver.descriptor(1, address: data, length: 8, flags: descriptorWrite | descriptorNext, next: 0)
        case "next out of range":
            try driver.descriptor(0, address: data, length: 8, flags: descriptorWrite | descriptorNext, next: 16)
        case "head out of range":
            head = 300
        case "buffer outside RAM":
            try driver.descriptor(0, address: 16 << 20 - 4, length: 8, flags: descriptorWrite)
        case "buffer wraps 2^64":
            try driver.descriptor(0, address: UInt64.max - 3, length: 8, flags: descriptorWrite)
        case "readable after writable":
            try driver.descriptor(0, address: data, length: 8, flags: descriptorWrite | descriptorNext, next: 1)
            try driver.descriptor(1, address: data, length: 8)
        case "nested indirect":
            try driver.descriptor(0, address: table, length: 32, flags: descriptorIndirect)
            try driver.descriptor(0, address: table, length: 32, flags: descriptorIndirect, table: table)
        case "indirect with NEXT":
            try driver.descriptor(0, address: table, length: 32, flags: descriptorIndirect | descriptorNext, next: 1)
        case "indirect length":
            try driver.descriptor(0, address: table, length: 20, flags: descriptorIndirect)
        case "indirect loop":
            try driver.descriptor(0, address: table, length: 32, flags: descriptorIndirect)
            try driver.descriptor(0, address: data, length: 8, flags: descriptorWrite | descriptorNext, next: 1, table: table)
            try driver.descriptor(1, address: data, length: 8, flags: descriptorWrite | descriptorNext, next: 0, table: table)
        case "available index jump":
            try driver.memory.write(UInt16(17), at: GuestPhysicalAddress(VirtioTestDriver<VirtioEntropy>.availableRing + 2))
            driver.write(0x50, 0)
        default:
            Issue.record("unknown case \(kind)")
        }
        if kind != "available index jump" { try driver.submit(head) }
        #expect(driver.transport.needsReset, "\(kind)")
        #expect(driver.usedIndex == 0, "\(kind): nothing may be used")
        #expect(driver.read(0x60) & 2 != 0, "\(kind): a configuration-change interrupt says so")
        // Further notifications are ignored until the driver resets the device.
        try driver.descriptor(1, address: data, length: 8, flags: descriptorWrite)
        try driver.submit(1)
        #expect(driver.usedIndex == 0)
        driver.initialise()
        try driver.submit(1)
        #expect(driver.usedIndex == 1 && !driver.transport.needsReset, "\(kind): the device works again after a reset")
    }

    @Test("indirect descriptors are refused unless negotiated, and followed when they are")
    func indirect() throws {
        let data = VirtioTestDriver<VirtioEntropy>.data, table: UInt64 = 0x5_0000
        let without = try Self.entropyDriver(features: VirtioFeature.version1)
        try without.descriptor(0, address: table, length: 32, flags: descriptorIndirect)
        try without.descriptor(0, address: data, length: 8, flags: descriptorWrite, table: table)
        try without.submit(0)
        #expect(without.transport.needsReset)

        let driver = try Self.entropyDriver()
        try driver.descriptor(0, address: table, length: 32, flags: descriptorIndirect)
        try driver.descriptor(0, address: data, length: 8, flags: descriptorWrite | descriptorNext, next: 1, table: table)
        try driver.descriptor(1, address: data + 64, length: 24, flags: descriptorWrite, table: table)
        try driver.submit(0)
        #expect(try driver.used(0) == (0, 32))
    }

    @Test("interrupts: InterruptStatus bit 0 after a used buffer, cleared by InterruptACK; NO_INTERRUPT and used_event suppress it")
    func interruptSuppression() throws {
        let data = VirtioTestDriver<VirtioEntropy>.data
        let driver = try Self.entropyDriver(features: VirtioFeature.version1)
        try driver.descriptor(0, address: data, length: 8, flags: descriptorWrite)
        try driver.submit(0)
        #expect(driver.read(0x60) == 1)
        driver.write(0x64, 1)
        #expect(driver.read(0x60) == 0)
        // VIRTQ_AVAIL_F_NO_INTERRUPT.
        try driver.memory.write(UInt16(1), at: GuestPhysicalAddress(VirtioTestDriver<VirtioEntropy>.availableRing))
        try driver.submit(0)
        #expect(driver.usedIndex == 2 && driver.read(0x60) == 0)

        // VIRTIO_F_EVENT_IDX: used_event (after the available ring) asks for an interrupt only
        // once the used index passes it.
        let evented = try Self.entropyDriver(features: VirtioFeature.version1 | VirtioFeature.eventIndex)
        let usedEvent = GuestPhysicalAddress(VirtioTestDriver<VirtioEntropy>.availableRing + 4 + 2 * 16)
        try evented.descriptor(0, address: data, length: 8, flags: descriptorWrite)
        try evented.submit(0)
        #expect(evented.read(0x60) == 1, "the first used buffer always interrupts")
        evented.write(0x64, 1)
        try evented.memory.write(UInt16(3), at: usedEvent)
        try evented.submit(0)
        try evented.submit(0)
        #expect(evented.usedIndex == 3 && evented.read(0x60) == 0, "used index 2 and 3 have not passed used_event 3")
        try evented.submit(0)
        #expect(evented.usedIndex == 4 && evented.read(0x60) == 1, "used index 4 passed used_event 3")
        // avail_event (after the used ring) tells the driver where the device is.
        #expect(try evented.memory.read(UInt16.self, at: GuestPhysicalAddress(VirtioTestDriver<VirtioEntropy>.usedRing + 4 + 8 * 16)) == 4)
    }

    @Test("the entropy device fills every writable byte up to its per-request limit from getrandom")
    func entropy() throws {
        let device = VirtioEntropy()
        let driver = try VirtioTestDriver(device, memorySize: 64 << 20)
        driver.initialise()
        let data = VirtioTestDriver<VirtioEntropy>.data
        try driver.descriptor(0, address: data, length: 100, flags: descriptorWrite | descriptorNext, next: 1)
        try driver.descriptor(1, address: data + 4096, length: 28, flags: descriptorWrite)
        try driver.submit(0)
        #expect(try driver.used(0) == (0, 128))
        let bytes = try driver.memory.readBytes(at: GuestPhysicalAddress(data), count: 100)
        #expect(Set(bytes).count > 20, "random bytes: \(bytes.prefix(16))")
        // A 32 MiB request gets the 64 KiB limit, no host buffer of its size.
        try driver.descriptor(2, address: 0x100_0000, length: 32 << 20, flags: descriptorWrite)
        hv_thread_largest_allocation_reset()
        try driver.submit(2)
        #expect(try driver.used(1) == (2, UInt32(VirtioEntropy.requestLimit)))
        #expect(hv_thread_largest_allocation() < 64 << 10)
        #expect(device.bytesDelivered == 128 + UInt64(VirtioEntropy.requestLimit))
    }
}

@Suite("virtio-blk on a raw image")
struct VirtioBlockTests {
    /// A temporary image of `sectors` sectors, removed when the test ends.
    final class Image {
        let path: String
        init(sectors: Int, fill: UInt8 = 0) throws {
            path = FileManager.default.temporaryDirectory.appendingPathComponent("hv-virtio-blk-\(UUID().uuidString).img").path
            try Data(repeating: fill, count: sectors * 512).write(to: URL(fileURLWithPath: path))
        }
        var bytes: [UInt8] { [UInt8](FileManager.default.contents(atPath: path) ?? Data()) }
        deinit { try? FileManager.default.removeItem(atPath: path) }
    }

    static let header: UInt64 = 0x4_0000, buffer: UInt64 = 0x5_0000, status: UInt64 = 0x6_0000

    /// Submits one request (header, data, status as three descriptors, or `layout` for others)
    /// and returns the status byte and the used length.
    static func request(_ driver: VirtioTestDriver<VirtioBlock>, type: UInt32, sector: UInt64, data: UInt32,
                        toDevice: Bool = false) throws -> (status: UInt8, used: UInt32) {
        try driver.memory.write(type, at: GuestPhysicalAddress(header))
        try driver.memory.write(UInt32(0), at: GuestPhysicalAddress(header + 4))
        try driver.memory.write(sector, at: GuestPhysicalAddress(header + 8))
        try driver.memory.write(UInt8(0xFF), at: GuestPhysicalAddress(status))
        try driver.descriptor(0, address: header, length: 16, flags: descriptorNext, next: data > 0 ? 1 : 2)
        try driver.descriptor(1, address: buffer, length: data, flags: (toDevice ? 0 : descriptorWrite) | descriptorNext, next: 2)
        try driver.descriptor(2, address: status, length: 1, flags: descriptorWrite)
        let before = driver.usedIndex
        try driver.submit(0)
        #expect(driver.usedIndex == before &+ 1, "one request, one used element")
        return (try driver.memory.read(UInt8.self, at: GuestPhysicalAddress(status)), try driver.used(before).length)
    }

    @Test("configuration space: capacity, seg_max, blk_size, discard and write-zeroes limits; RO offered for a read-only image")
    func configuration() throws {
        let image = try Image(sectors: 2048), other = try Image(sectors: 8)
        let device = try VirtioBlock(path: image.path)
        let driver = try VirtioTestDriver(device)
        #expect(driver.transport.mmioRead(offset: 0x100, width: 8) == 2048)
        #expect(driver.transport.mmioRead(offset: 0x100 + 20, width: 4) == 512)
        #expect(driver.transport.mmioRead(offset: 0x100 + 12, width: 4) == 254)
        #expect(driver.transport.mmioRead(offset: 0x100 + 40, width: 4) == 32)
        #expect(device.features & VirtioBlock.Feature.readOnly == 0 && device.features & VirtioBlock.Feature.discard != 0)
        let readOnly = try VirtioBlock(path: other.path, readOnly: true)
        #expect(readOnly.features & VirtioBlock.Feature.readOnly != 0 && readOnly.features & VirtioBlock.Feature.discard == 0)
    }

    @Test("writes reach the image at the right offset and reads bring them back")
    func readWrite() throws {
        let image = try Image(sectors: 64)
        let driver = try VirtioTestDriver(try VirtioBlock(path: image.path))
        driver.initialise()
        let pattern = (0..<2048).map { UInt8(truncatingIfNeeded: $0 &* 7 &+ 3) }
        try driver.memory.write(bytes: pattern, at: GuestPhysicalAddress(Self.buffer))
        #expect(try Self.request(driver, type: 1, sector: 10, data: 2048, toDevice: true) == (0, 1))
        #expect(Array(image.bytes[5120..<7168]) == pattern)
        #expect(image.bytes[5119] == 0 && image.bytes[7168] == 0)
        try driver.memory.fill(0, count: 2048, at: GuestPhysicalAddress(Self.buffer))
        #expect(try Self.request(driver, type: 0, sector: 10, data: 2048) == (0, 2049))
        #expect(try driver.memory.readBytes(at: GuestPhysicalAddress(Self.buffer), count: 2048) == pattern)
        #expect(try Self.request(driver, type: 4, sector: 0, data: 0) == (0, 1), "flush")
    }

    @Test("direct: aligned transfers bypass the page cache (O_DIRECT), an unaligned buffer goes through it, and both land in the image")
    func direct() throws {
        let image = try Image(sectors: 64)
        let device = try VirtioBlock(path: image.path, direct: true)
        #expect(device.direct)
        let driver = try VirtioTestDriver(device)
        driver.initialise()
        let pattern = (0..<4096).map { UInt8(truncatingIfNeeded: $0 &* 13 &+ 1) }
        try driver.memory.write(bytes: pattern, at: GuestPhysicalAddress(Self.buffer))
        #expect(try Self.request(driver, type: 1, sector: 8, data: 4096, toDevice: true) == (0, 1))
        #expect(try Self.request(driver, type: 0, sector: 8, data: 4096) == (0, 4097))
        #expect(device.directTransfers == (direct: 2, buffered: 0))
        // A buffer at an odd address: the page cache takes it, and reads see what O_DIRECT wrote.
        try driver.memory.write(bytes: [UInt8](repeating: 0xAB, count: 512), at: GuestPhysicalAddress(Self.buffer + 0x2001))
        try driver.descriptor(0, address: Self.header, length: 16, flags: descriptorNext, next: 1)
        try driver.memory.write(UInt32(1), at: GuestPhysicalAddress(Self.header))
        try driver.memory.write(UInt64(0), at: GuestPhysicalAddress(Self.header + 8))
        try driver.descriptor(1, address: Self.buffer + 0x2001, length: 512, flags: descriptorNext, next: 2)
        try driver.descriptor(2, address: Self.status, length: 1, flags: descriptorWrite)
        try driver.submit(0)
        #expect(device.directTransfers == (direct: 2, buffered: 1))
        #expect(Array(image.bytes[0..<512]) == [UInt8](repeating: 0xAB, count: 512))
        #expect(Array(image.bytes[4096..<8192]) == pattern)
    }

    @Test("a request split any way across buffers (header and data in one, data over several) is read as one byte string")
    func anyLayout() throws {
        let image = try Image(sectors: 8, fill: 0xAB)
        let driver = try VirtioTestDriver(try VirtioBlock(path: image.path))
        driver.initialise()
        try driver.memory.write(UInt32(0), at: GuestPhysicalAddress(Self.header))
        try driver.memory.write(UInt64(1), at: GuestPhysicalAddress(Self.header + 8))
        // Data in three writable pieces, the last of which also holds the status byte.
        try driver.descriptor(0, address: Self.header, length: 16, flags: descriptorNext, next: 1)
        try driver.descriptor(1, address: Self.buffer, length: 100, flags: descriptorWrite | descriptorNext, next: 2)
        try driver.descriptor(2, address: Self.buffer + 0x1000, length: 400, flags: descriptorWrite | descriptorNext, next: 3)
        try driver.descriptor(3, address: Self.buffer + 0x2000, length: 13, flags: descriptorWrite)
        try driver.submit(0)
        #expect(try driver.used(0).length == 513)
        #expect(try driver.memory.readBytes(at: GuestPhysicalAddress(Self.buffer), count: 100) == [UInt8](repeating: 0xAB, count: 100))
        #expect(try driver.memory.read(UInt8.self, at: GuestPhysicalAddress(Self.buffer + 0x2000 + 11)) == 0xAB)
        #expect(try driver.memory.read(UInt8.self, at: GuestPhysicalAddress(Self.buffer + 0x2000 + 12)) == 0, "status OK")
    }

    @Test("out-of-range sectors, partial sectors and huge sector numbers fail with IOERR; unknown types with UNSUPP")
    func errors() throws {
        let image = try Image(sectors: 16)
        let driver = try VirtioTestDriver(try VirtioBlock(path: image.path))
        driver.initialise()
        #expect(try Self.request(driver, type: 0, sector: 16, data: 512).status == 1, "one past the end")
        #expect(try Self.request(driver, type: 0, sector: 15, data: 1024).status == 1, "straddles the end")
        #expect(try Self.request(driver, type: 1, sector: UInt64.max / 256, data: 512, toDevice: true).status == 1, "sector * 512 overflows")
        #expect(try Self.request(driver, type: 0, sector: 0, data: 100).status == 1, "not a multiple of 512")
        #expect(try Self.request(driver, type: 99, sector: 0, data: 0).status == 2)
        #expect(try Self.request(driver, type: 0, sector: 15, data: 512) == (0, 513), "the last sector is fine")
        #expect(!driver.transport.needsReset, "request errors are answered in the status byte")
        #expect(image.bytes.count == 16 * 512, "the image did not grow")
    }

    @Test("a read-only disk refuses writes, discards and write-zeroes with IOERR and leaves the image as it was")
    func readOnly() throws {
        let image = try Image(sectors: 16, fill: 0x5A)
        let driver = try VirtioTestDriver(try VirtioBlock(path: image.path, readOnly: true))
        driver.initialise()
        #expect(try Self.request(driver, type: 1, sector: 0, data: 512, toDevice: true).status == 1)
        try driver.memory.write(bytes: [UInt8](repeating: 0, count: 16), at: GuestPhysicalAddress(Self.buffer))
        #expect(try Self.request(driver, type: 13, sector: 0, data: 16, toDevice: true).status == 1)
        #expect(image.bytes == [UInt8](repeating: 0x5A, count: 16 * 512))
        #expect(try Self.request(driver, type: 0, sector: 2, data: 512).status == 0)
    }

    @Test("GET_ID returns the serial, padded with zeros to 20 bytes")
    func serial() throws {
        let image = try Image(sectors: 8)
        let driver = try VirtioTestDriver(try VirtioBlock(path: image.path, serial: "hv-disk-7"))
        driver.initialise()
        try driver.memory.fill(0xFF, count: 20, at: GuestPhysicalAddress(Self.buffer))
        #expect(try Self.request(driver, type: 8, sector: 0, data: 20) == (0, 21))
        #expect(try driver.memory.readBytes(at: GuestPhysicalAddress(Self.buffer), count: 20) == Array("hv-disk-7".utf8) + [UInt8](repeating: 0, count: 11))
        #expect(throws: VirtioBlockError.self) { try VirtioBlock(path: image.path, serial: String(repeating: "x", count: 21)) }
    }

    @Test("write-zeroes zeroes the range (with or without unmap), discard keeps the size, and bad segments are refused")
    func writeZeroesAndDiscard() throws {
        let image = try Image(sectors: 64, fill: 0xEE)
        let driver = try VirtioTestDriver(try VirtioBlock(path: image.path))
        driver.initialise()
        func segment(_ sector: UInt64, _ count: UInt32, flags: UInt32 = 0, at offset: UInt64 = 0) throws {
            try driver.memory.write(sector, at: GuestPhysicalAddress(Self.buffer + offset))
            try driver.memory.write(count, at: GuestPhysicalAddress(Self.buffer + offset + 8))
            try driver.memory.write(flags, at: GuestPhysicalAddress(Self.buffer + offset + 12))
        }
        try segment(8, 8)
        try segment(40, 2, flags: 1, at: 16)
        #expect(try Self.request(driver, type: 13, sector: 0, data: 32, toDevice: true).status == 0)
        let bytes = image.bytes
        #expect(bytes.count == 64 * 512)
        #expect(bytes[4096..<8192].allSatisfy { $0 == 0 } && bytes[4095] == 0xEE && bytes[8192] == 0xEE)
        #expect(bytes[20480..<21504].allSatisfy { $0 == 0 } && bytes[21504] == 0xEE)
        try segment(0, 8)
        #expect(try Self.request(driver, type: 11, sector: 0, data: 16, toDevice: true).status == 0, "discard")
        #expect(image.bytes.count == 64 * 512)
        try segment(0, 8, flags: 1)
        #expect(try Self.request(driver, type: 11, sector: 0, data: 16, toDevice: true).status == 2, "unmap is for write-zeroes only")
        try segment(60, 8)
        #expect(try Self.request(driver, type: 13, sector: 0, data: 16, toDevice: true).status == 1, "past the end")
        #expect(try Self.request(driver, type: 13, sector: 0, data: 24, toDevice: true).status == 2, "not whole segments")
    }

    @Test("a request without a header or a status byte sets DEVICE_NEEDS_RESET; the host process and the image are untouched")
    func malformed() throws {
        let image = try Image(sectors: 8, fill: 0x11)
        let driver = try VirtioTestDriver(try VirtioBlock(path: image.path))
        driver.initialise()
        try driver.descriptor(0, address: Self.header, length: 8, flags: descriptorNext, next: 1)
        try driver.descriptor(1, address: Self.status, length: 1, flags: descriptorWrite)
        try driver.submit(0)
        #expect(driver.transport.needsReset)
        driver.initialise()
        try driver.descriptor(0, address: Self.header, length: 16)
        try driver.submit(0)
        #expect(driver.transport.needsReset)
        #expect(image.bytes == [UInt8](repeating: 0x11, count: 8 * 512))
    }

    @Test("an image another VM has open for writing is refused with a message that says so")
    func exclusiveLock() throws {
        let image = try Image(sectors: 8)
        let first = try VirtioBlock(path: image.path)
        #expect(throws: VirtioBlockError(path: image.path, problem: "is in use by another process (it holds a lock on it)")) {
            try VirtioBlock(path: image.path, readOnly: true)
        }
        _ = first
        #expect(throws: VirtioBlockError.self) { try VirtioBlock(path: "/nonexistent/disk.img") }
    }

    @Test("a 1 MiB read or write goes straight between the image and guest RAM: no host buffer of the request's size")
    func noBuffer() throws {
        let image = try Image(sectors: 4096)
        let driver = try VirtioTestDriver(try VirtioBlock(path: image.path))
        driver.initialise()
        _ = try Self.request(driver, type: 0, sector: 0, data: 4096)
        hv_thread_largest_allocation_reset()
        #expect(try Self.request(driver, type: 1, sector: 0, data: 1 << 20, toDevice: true).status == 0)
        #expect(try Self.request(driver, type: 0, sector: 2048, data: 1 << 20).status == 0)
        #expect(hv_thread_largest_allocation() < 4096, "largest host allocation: \(hv_thread_largest_allocation()) bytes")
    }
}

@Suite("virtio-console")
struct VirtioConsoleTests {
    @Test("transmitq0 carries the guest's bytes to the output; receiveq0 gets host input once the driver posts buffers")
    func bothWays() throws {
        let capture = SerialCapture()
        let console = VirtioConsole(output: .capture(capture))
        let driver = try VirtioTestDriver(console)
        #expect(driver.initialise())
        // Queue 1 (transmitq0) at other addresses, set up by hand.
        driver.write(0x30, 1)
        driver.write(0x38, 16)
        driver.write(0x80, 0x7_0000); driver.write(0x90, 0x7_1000); driver.write(0xA0, 0x7_2000)
        driver.write(0x44, 1)
        try driver.memory.write(bytes: Array("hello from hvc0\n".utf8), at: 0x8_0000)
        try driver.descriptor(0, address: 0x8_0000, length: 16, table: 0x7_0000)
        try driver.memory.write(UInt16(0), at: 0x7_1004)
        try driver.memory.write(UInt16(1), at: 0x7_1002)
        driver.write(0x50, 1)
        #expect(capture.text == "hello from hvc0\n")

        // Input before any receive buffer waits; a posted buffer then gets it.
        #expect(console.receiveSpace == VirtioConsole.inputCapacity)
        console.receive(Array("ls\n".utf8))
        #expect(console.receiveSpace == VirtioConsole.inputCapacity - 3)
        #expect(driver.usedIndex == 0)
        try driver.descriptor(0, address: VirtioTestDriver<VirtioConsole>.data, length: 2, flags: descriptorWrite)
        try driver.descriptor(1, address: VirtioTestDriver<VirtioConsole>.data + 16, length: 64, flags: descriptorWrite)
        try driver.submit(0)
        try driver.submit(1)
        #expect(driver.usedIndex == 2)
        #expect(try driver.used(0) == (0, 2))
        #expect(try driver.used(1) == (1, 1))
        #expect(try driver.memory.readBytes(at: GuestPhysicalAddress(VirtioTestDriver<VirtioConsole>.data), count: 2) == Array("ls".utf8))
        // More input goes straight into the next posted buffer.
        try driver.submit(1)
        #expect(driver.usedIndex == 2, "no input: the buffer is kept")
        console.receive(Array("pwd".utf8))
        #expect(driver.usedIndex == 3)
        #expect(try driver.used(2) == (1, 3))
        #expect(driver.read(0x60) & 1 == 1)
    }

    @Test("the transport's serve callback can be called any number of times (a function kept as a Mutex's value grew one thunk per read and overflowed the stack after ~50,000: found by the fuzzer)")
    func callbackDoesNotGrow() throws {
        let console = VirtioConsole(output: .discard)
        let driver = try VirtioTestDriver(console)
        #expect(driver.initialise())
        for _ in 0..<200_000 { console.receive(CollectionOfOne(0x41)); console.reset() }
        console.receive(Array("ok".utf8))
        try driver.descriptor(0, address: VirtioTestDriver<VirtioConsole>.data, length: 8, flags: descriptorWrite)
        try driver.submit(0)
        #expect(try driver.used(0) == (0, 2))
    }

    @Test("input beyond the buffer's capacity is refused by receiveSpace, and a device reset drops what was unread")
    func bounded() throws {
        let console = VirtioConsole(output: .discard)
        console.receive([UInt8](repeating: 0x41, count: VirtioConsole.inputCapacity + 100))
        #expect(console.receiveSpace == 0)
        console.reset()
        #expect(console.receiveSpace == VirtioConsole.inputCapacity)
    }
}

@Suite("Rate limits (token buckets)")
struct RateLimitTests {
    @Test("a bucket gives its capacity at once, then its rate; the wait it names is exact")
    func bucket() throws {
        var bucket = try TokenBucket(rate: 1000, burst: 0.1)
        #expect(bucket.capacity == 100)
        #expect(bucket.take(100, now: 0) == 0)
        #expect(bucket.take(1, now: 0) == 1_000_000, "1 token at 1000/s: 1 ms")
        #expect(bucket.take(1, now: 1_000_000) == 0)
        // An oversized request passes when the bucket is full and leaves it in debt.
        var big = try TokenBucket(rate: 1000, burst: 0.1)
        #expect(big.take(500, now: 0) == 0)
        #expect(big.take(1, now: 0) == 401_000_000, "400 owed plus 1 at 1000/s")
        #expect(big.take(1, now: 401_000_000) == 0)
    }

    @Test("a bucket the SDK cannot run is an error naming the field; extreme rates and debts saturate, never trap")
    func extremeBuckets() throws {
        #expect(throws: ConfigurationError(field: "rate", value: "0", expected: "at least 1 token a second")) { try TokenBucket(rate: 0) }
        for burst in [0, -1, .nan, .infinity, 1e308] {
            #expect(throws: ConfigurationError.self, "burst \(burst)") { try TokenBucket(rate: 1000, burst: burst) }
        }
        #expect(try TokenBucket(rate: .max, burst: 3600).capacity == .max)
        // A debt of 2^63 tokens at 1 a second is more than 2^64 ns away: the wait saturates.
        var slow = try TokenBucket(rate: 1, burst: 1)
        #expect(slow.take(1 << 63, now: 0) == 0)
        #expect(slow.take(1, now: 0) == .max)
    }

    @Test("over 10 simulated seconds, a greedy client gets the configured bandwidth within 1 %")
    func longRunRate() throws {
        var limit = RateLimit(bandwidth: try TokenBucket(rate: 8 << 20), operations: nil)
        var now: UInt64 = 0, moved: UInt64 = 0
        while now < 10_000_000_000 {
            let wait = limit.take(bytes: 1 << 20, now: now)
            if wait == 0 { moved += 1 << 20 } else { now += wait }
        }
        let rate = Double(moved) / 10 / Double(8 << 20)
        #expect(rate > 0.99 && rate < 1.02, "moved \(moved) bytes: \(rate) of the limit")
    }

    @Test("an operations limit refused after the bandwidth bucket took its bytes gives nothing away, and vice versa")
    func bothBuckets() throws {
        var limit = RateLimit(bandwidth: try TokenBucket(rate: 1000, burst: 1), operations: try TokenBucket(rate: 10, burst: 0.1))
        #expect(limit.take(bytes: 10, now: 0) == 0)
        #expect(limit.take(bytes: 10, now: 0) == 100_000_000, "1 op at 10/s")
        #expect(limit.take(bytes: 2000, now: 100_000_000) == 0, "the full byte bucket lets an oversized one through")
        #expect(limit.take(bytes: 1, now: 200_000_000) > 0, "the bytes are owed now")
        #expect(limit.operations!.capacity == 1)
    }

    @Test("a virtio-blk request over the limit waits on the available ring; lifting the limit serves it at once")
    func throttledDisk() throws {
        let image = try VirtioBlockTests.Image(sectors: 64)
        let disk = try VirtioBlock(path: image.path, rateLimit: RateLimit(operations: try TokenBucket(rate: 1, burst: 1)), clock: { 0 })
        let driver = try VirtioTestDriver(disk)
        driver.initialise()
        #expect(try VirtioBlockTests.request(driver, type: 0, sector: 0, data: 512).status == 0)
        try driver.submit(0)
        #expect(driver.usedIndex == 1, "the second request waits")
        #expect(disk.throttledRequests >= 1)
        disk.setRateLimit(.none)
        #expect(driver.usedIndex == 2, "served as soon as the limit went")
        #expect(try driver.memory.read(UInt8.self, at: GuestPhysicalAddress(VirtioBlockTests.status)) == 0)
    }
}

/// One end of a SOCK_SEQPACKET pair: frames keep their boundaries, as a TAP's do.
final class SocketFrames: FrameEndpoint {
    let frameDescriptor: Int32
    let peer: Int32
    init() {
        var fds: [Int32] = [0, 0]
        precondition(socketpair(AF_UNIX, Int32(SOCK_SEQPACKET.rawValue), 0, &fds) == 0)
        _ = fcntl(fds[0], F_SETFL, O_NONBLOCK)
        frameDescriptor = fds[0]
        peer = fds[1]
    }
    deinit { close(frameDescriptor); close(peer) }
    func acceptOffloads(checksum: Bool, tso4: Bool, tso6: Bool) -> Bool { false }

    func send(_ frame: [UInt8]) { _ = frame.withUnsafeBytes { Foundation.send(peer, $0.baseAddress, $0.count, 0) } }
    /// The next frame the device sent, waiting up to a second.
    func receive() -> [UInt8]? {
        var poller = pollfd(fd: peer, events: Int16(POLLIN), revents: 0)
        guard poll(&poller, 1, 1000) == 1 else { return nil }
        var buffer = [UInt8](repeating: 0, count: 65536)
        let count = buffer.withUnsafeMutableBytes { recv(peer, $0.baseAddress, $0.count, 0) }
        return count >= 0 ? Array(buffer.prefix(count)) : nil
    }
}

@Suite("virtio-net")
struct VirtioNetworkTests {
    /// Waits up to 2 s for `condition` (the receive thread works on its own time).
    static func eventually(_ condition: () -> Bool) -> Bool {
        for _ in 0..<200 where !condition() { usleep(10_000) }
        return condition()
    }

    @Test("configuration space: the MAC and link up; frames the guest sends leave with their header; frames that arrive fill posted buffers with num_buffers = 1")
    func bothWays() throws {
        let frames = SocketFrames()
        let mac = try #require(MACAddress(parsing: "52:54:00:ab:cd:ef"))
        let device = VirtioNetwork(endpoint: frames, mac: mac)
        defer { device.stop() }
        let driver = try VirtioTestDriver(device)
        #expect(driver.transport.mmioRead(offset: 0x100, width: 4) == 0xAB00_5452)
        #expect(driver.transport.mmioRead(offset: 0x104, width: 2) == 0xEFCD)
        #expect(driver.transport.mmioRead(offset: 0x106, width: 2) == 1, "VIRTIO_NET_S_LINK_UP")
        #expect(driver.initialise())
        // transmitq1 (queue 1) at other addresses: a 12-byte header and a 60-byte frame in two buffers.
        driver.write(0x30, 1)
        driver.write(0x38, 16)
        driver.write(0x80, 0x7_0000); driver.write(0x90, 0x7_1000); driver.write(0xA0, 0x7_2000)
        driver.write(0x44, 1)
        let frame = (0..<60).map { UInt8($0) }
        try driver.memory.write(bytes: [UInt8](repeating: 0, count: 12), at: 0x8_0000)
        try driver.memory.write(bytes: frame, at: 0x8_1000)
        try driver.descriptor(0, address: 0x8_0000, length: 12, flags: descriptorNext, next: 1, table: 0x7_0000)
        try driver.descriptor(1, address: 0x8_1000, length: 60, table: 0x7_0000)
        try driver.memory.write(UInt16(0), at: 0x7_1004)
        try driver.memory.write(UInt16(1), at: 0x7_1002)
        driver.write(0x50, 1)
        #expect(frames.receive() == [UInt8](repeating: 0, count: 12) + frame)
        #expect(device.statistics.transmitted == 1 && device.statistics.transmittedBytes == 60)

        // A frame that arrives before any receive buffer waits in the socket...
        let incoming = [UInt8](repeating: 0, count: 12) + (0..<100).map { UInt8(255 - $0) }
        frames.send(incoming)
        usleep(50_000)
        #expect(driver.usedIndex == 0)
        // ... and fills the buffer the driver posts (its notification serves the queue).
        try driver.memory.fill(0xEE, count: 2048, at: GuestPhysicalAddress(VirtioTestDriver<VirtioNetwork>.data))
        try driver.descriptor(0, address: VirtioTestDriver<VirtioNetwork>.data, length: 1526, flags: descriptorWrite)
        try driver.submit(0)
        #expect(Self.eventually { driver.usedIndex == 1 })
        #expect(try driver.used(0) == (0, 112))
        var expected = incoming
        expected[10] = 1  // num_buffers
        #expect(try driver.memory.readBytes(at: GuestPhysicalAddress(VirtioTestDriver<VirtioNetwork>.data), count: 112) == expected)
        // With a buffer posted, the receive thread delivers the next frame by itself.
        try driver.descriptor(1, address: VirtioTestDriver<VirtioNetwork>.data + 4096, length: 1526, flags: descriptorWrite)
        try driver.submit(1)
        frames.send([UInt8](repeating: 0, count: 12) + [1, 2, 3])
        #expect(Self.eventually { driver.usedIndex == 2 })
        #expect(try driver.used(1) == (1, 15))
        #expect(device.statistics.received == 2 && driver.read(0x60) & 1 == 1)
    }

    @Test("rate limits each way: a transmitted frame over the limit waits on the ring, a received one in the socket, until the limit is lifted")
    func rateLimits() throws {
        let frames = SocketFrames()
        let oneFrame = RateLimit(operations: try TokenBucket(rate: 1, burst: 1))
        let device = VirtioNetwork(endpoint: frames, receiveLimit: oneFrame, transmitLimit: oneFrame, clock: { 0 })
        defer { device.stop() }
        let driver = try VirtioTestDriver(device)
        #expect(driver.initialise())
        // Receive (queue 0): two frames, two buffers; the second frame waits.
        frames.send([UInt8](repeating: 0, count: 12) + [1])
        frames.send([UInt8](repeating: 0, count: 12) + [2])
        try driver.descriptor(0, address: VirtioTestDriver<VirtioNetwork>.data, length: 1526, flags: descriptorWrite)
        try driver.descriptor(1, address: VirtioTestDriver<VirtioNetwork>.data + 4096, length: 1526, flags: descriptorWrite)
        try driver.submit(0)
        try driver.submit(1)
        #expect(Self.eventually { driver.usedIndex == 1 })
        usleep(100_000)
        #expect(driver.usedIndex == 1 && device.throttledFrames.receive >= 1)
        // Transmit (queue 1): two frames; the second waits on the ring.
        driver.write(0x30, 1)
        driver.write(0x38, 16)
        driver.write(0x80, 0x7_0000); driver.write(0x90, 0x7_1000); driver.write(0xA0, 0x7_2000)
        driver.write(0x44, 1)
        try driver.memory.write(bytes: [UInt8](repeating: 0, count: 60), at: 0x8_0000)
        try driver.descriptor(0, address: 0x8_0000, length: 60, table: 0x7_0000)
        try driver.descriptor(1, address: 0x8_0000, length: 60, table: 0x7_0000)
        try driver.memory.write(UInt16(0), at: 0x7_1004)
        try driver.memory.write(UInt16(1), at: 0x7_1006)
        try driver.memory.write(UInt16(2), at: 0x7_1002)
        driver.write(0x50, 1)
        #expect(frames.receive()?.count == 60)
        #expect(device.statistics.transmitted == 1 && device.throttledFrames.transmit >= 1)
        // Lifting the limits serves both waiting frames.
        device.setRateLimits(receive: .none, transmit: .none)
        #expect(frames.receive()?.count == 60)
        #expect(Self.eventually { driver.usedIndex == 2 })
        #expect(device.statistics.transmitted == 2 && device.statistics.received == 2)
    }

    @Test("a device nobody holds goes away with its receive thread (the thread holds it one round at a time)")
    func lifetime() throws {
        weak var gone: VirtioNetwork?
        do {
            let device = VirtioNetwork(endpoint: SocketFrames())
            let driver = try VirtioTestDriver(device)  // the transport starts the receive thread
            _ = driver
            gone = device
        }
        for _ in 0..<30 where gone != nil { usleep(100_000) }
        #expect(gone == nil, "the receive thread kept the device alive")
    }

    @Test("a frame from the endpoint shorter than its header is dropped, counted, and the buffer takes the next frame (fuzz-virtio found the trap)")
    func shortFrame() throws {
        let frames = SocketFrames()
        let device = VirtioNetwork(endpoint: frames)
        defer { device.stop() }
        let driver = try VirtioTestDriver(device)
        #expect(driver.initialise())
        frames.send([1, 2, 3, 4, 5])
        frames.send([UInt8](repeating: 0, count: 12) + [9, 9, 9])
        try driver.descriptor(0, address: VirtioTestDriver<VirtioNetwork>.data, length: 1526, flags: descriptorWrite)
        try driver.submit(0)
        #expect(Self.eventually { driver.usedIndex == 1 })
        #expect(try driver.used(0) == (0, 15))
        #expect(device.statistics.receiveErrors == 1 && device.statistics.received == 1)
    }

    @Test("a receive buffer too small for the header, or a transmitted frame without one, sets DEVICE_NEEDS_RESET")
    func malformed() throws {
        let frames = SocketFrames()
        let device = VirtioNetwork(endpoint: frames)
        defer { device.stop() }
        let driver = try VirtioTestDriver(device)
        #expect(driver.initialise())
        frames.send([UInt8](repeating: 0, count: 20))
        try driver.descriptor(0, address: VirtioTestDriver<VirtioNetwork>.data, length: 8, flags: descriptorWrite)
        try driver.submit(0)
        #expect(Self.eventually { driver.transport.needsReset })
        #expect(driver.usedIndex == 0)
    }
}
