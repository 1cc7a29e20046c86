// virtio-vsock with its hybrid (AF_UNIX) host side, driven as Linux's virtio_transport drives
// it: packets the test writes into the transmit queue, receive buffers it posts, and real Unix
// sockets on the host side.
import Foundation
import HVCore
import Testing

/// One queue of a device under test, laid out at `base` in guest memory.
struct TestQueue {
    let index: UInt32
    let base: UInt64
    let size: UInt16 = 16
    var availableIndex: UInt16 = 0
    var nextDescriptor: UInt16 = 0
    var usedSeen: UInt16 = 0
    var table: UInt64 { base }
    var available: UInt64 { base + 0x1000 }
    var used: UInt64 { base + 0x2000 }
    /// 16 buffers of 8 KiB for this queue's data.
    func buffer(_ descriptor: UInt16) -> UInt64 { base + 0x1_0000 + UInt64(descriptor) * 0x2000 }

    init<D>(_ index: UInt32, base: UInt64, driver: VirtioTestDriver<D>) {
        self.index = index
        self.base = base
        driver.write(0x30, index)
        driver.write(0x38, UInt32(size))
        driver.write(0x80, UInt32(table)); driver.write(0x84, 0)
        driver.write(0x90, UInt32(available)); driver.write(0x94, 0)
        driver.write(0xA0, UInt32(used)); driver.write(0xA4, 0)
        driver.write(0x44, 1)
    }

    /// Makes one single-buffer chain of `bytes` (readable) or `length` writable bytes, puts it on
    /// the available ring and notifies.
    mutating func post<D>(_ driver: VirtioTestDriver<D>, bytes: [UInt8]? = nil, writableLength: UInt32 = 0) throws {
        let descriptor = nextDescriptor
        nextDescriptor = (nextDescriptor + 1) % size
        let address = buffer(descriptor)
        if let bytes { try driver.memory.write(bytes: bytes, at: GuestPhysicalAddress(address)) }
        try driver.descriptor(descriptor, address: address, length: bytes.map { UInt32($0.count) } ?? writableLength,
                              flags: bytes == nil ? descriptorWrite : 0, table: table)
        try driver.memory.write(descriptor, at: GuestPhysicalAddress(available + 4 + 2 * UInt64(availableIndex % size)))
        availableIndex &+= 1
        try driver.memory.write(availableIndex, at: GuestPhysicalAddress(available + 2))
        driver.write(0x50, index)
    }

    /// Puts a one-buffer chain at `address` (outside this queue's own buffers) on the available ring.
    mutating func post<D>(_ driver: VirtioTestDriver<D>, address: UInt64, length: UInt32, writable: Bool) throws {
        let descriptor = nextDescriptor
        nextDescriptor = (nextDescriptor + 1) % size
        try driver.descriptor(descriptor, address: address, length: length, flags: writable ? descriptorWrite : 0, table: table)
        try driver.memory.write(descriptor, at: GuestPhysicalAddress(available + 4 + 2 * UInt64(availableIndex % size)))
        availableIndex &+= 1
        try driver.memory.write(availableIndex, at: GuestPhysicalAddress(available + 2))
        driver.write(0x50, index)
    }

    /// How many chains the device has used in all.
    func usedCount<D>(_ driver: VirtioTestDriver<D>) throws -> UInt16 {
        try driver.memory.read(UInt16.self, at: GuestPhysicalAddress(used + 2))
    }

    /// The chains the device has used since the last call: their bytes (as far as it wrote).
    mutating func takeUsed<D>(_ driver: VirtioTestDriver<D>) throws -> [[UInt8]] {
        let usedIndex = try driver.memory.read(UInt16.self, at: GuestPhysicalAddress(used + 2))
        var result: [[UInt8]] = []
        while usedSeen != usedIndex {
            let element = GuestPhysicalAddress(used + 4 + 8 * UInt64(usedSeen % size))
            let id = try driver.memory.read(UInt32.self, at: element)
            let length = try driver.memory.read(UInt32.self, at: GuestPhysicalAddress(element.rawValue + 4))
            result.append(try driver.memory.readBytes(at: GuestPhysicalAddress(buffer(UInt16(id))), count: Int(length)))
            usedSeen &+= 1
        }
        return result
    }
}

/// struct virtio_vsock_hdr as a test writes and reads it.
struct VsockPacket: Equatable, CustomStringConvertible {
    var sourceCID: UInt64 = 3, destinationCID: UInt64 = 2
    var sourcePort: UInt32, destinationPort: UInt32
    var type: UInt16 = 1
    var operation: UInt16
    var flags: UInt32 = 0
    var bufferAllocation: UInt32 = 256 * 1024, forwardCount: UInt32 = 0
    var payload: [UInt8] = []

    static let request: UInt16 = 1, response: UInt16 = 2, reset: UInt16 = 3, shutdown: UInt16 = 4
    static let readWrite: UInt16 = 5, creditUpdate: UInt16 = 6, creditRequest: UInt16 = 7

    init(sourcePort: UInt32, destinationPort: UInt32, operation: UInt16, payload: [UInt8] = []) {
        self.sourcePort = sourcePort
        self.destinationPort = destinationPort
        self.operation = operation
        self.payload = payload
    }

    init?(_ bytes: [UInt8]) {
        guard bytes.count >= 44 else { return nil }
        func value<T: FixedWidthInteger>(_ offset: Int, _: T.Type) -> T {
            (0..<MemoryLayout<T>.size).reduce(T(0)) { $0 | T(bytes[offset + $1]) << (8 * $1) }
        }
        sourceCID = value(0, UInt64.self); destinationCID = value(8, UInt64.self)
        sourcePort = value(16, UInt32.self); destinationPort = value(20, UInt32.self)
        let length = Int(value(24, UInt32.self))
        type = value(28, UInt16.self); operation = value(30, UInt16.self); flags = value(32, UInt32.self)
        bufferAllocation = value(36, UInt32.self); forwardCount = value(40, UInt32.self)
        guard bytes.count == 44 + length else { return nil }
        payload = Array(bytes[44...])
    }

    var bytes: [UInt8] {
        func le<T: FixedWidthInteger>(_ value: T) -> [UInt8] { (0..<MemoryLayout<T>.size).map { UInt8(truncatingIfNeeded: value >> (8 * $0)) } }
        return le(sourceCID) + le(destinationCID) + le(sourcePort) + le(destinationPort) + le(UInt32(payload.count))
            + le(type) + le(operation) + le(flags) + le(bufferAllocation) + le(forwardCount) + payload
    }

    var description: String { "op \(operation) \(sourceCID):\(sourcePort) -> \(destinationCID):\(destinationPort) len \(payload.count) flags \(flags)" }
}

/// A Unix socket the host side listens on, in a folder of its own.
final class UnixListener {
    let fd: Int32
    let path: String
    init(path: String) throws {
        self.path = path
        fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
        }
        guard bound == 0, listen(fd, 4) == 0 else { throw POSIXError(.EADDRINUSE) }
    }
    deinit { close(fd); unlink(path) }

    /// Accepts one connection (waiting up to 2 s).
    func accept() -> Int32? {
        var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        guard poll(&entry, 1, 2000) == 1 else { return nil }
        return Foundation.accept(fd, nil, nil)
    }
}

/// Connects to a Unix socket (blocking).
func connectUnix(_ path: String) -> Int32? {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { $0.copyBytes(from: Array(path.utf8) + [0]) }
    let connected = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Foundation.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    guard connected == 0 else { close(fd); return nil }
    return fd
}

/// Reads what arrives on `fd` within 2 s, up to `count` bytes or a line's end.
func readSocket(_ fd: Int32, count: Int, line: Bool = false) -> [UInt8] {
    var result: [UInt8] = []
    var buffer = [UInt8](repeating: 0, count: 65536)
    var entry = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
    while result.count < count, !(line && result.last == 10), poll(&entry, 1, 2000) == 1 {
        let got = recv(fd, &buffer, min(buffer.count, count - result.count), 0)
        guard got > 0 else { break }
        result += buffer[..<got]
    }
    return result
}

/// A vsock device behind a test driver, its three queues set up, and receive buffers posted.
final class VsockBench {
    let folder: URL
    let device: VirtioVsock
    let driver: VirtioTestDriver<VirtioVsock>
    var receive: TestQueue, transmit: TestQueue, event: TestQueue
    var socketPath: String { folder.appendingPathComponent("v.sock").path }

    init(receiveBuffers: Int = 8, bufferSize: UInt32 = 4096 + 44) throws {
        folder = FileManager.default.temporaryDirectory.appendingPathComponent("hv-vsock-\(getpid())-\(UUID().uuidString.prefix(8))")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        device = try VirtioVsock(guestCID: 3, path: folder.appendingPathComponent("v.sock").path)
        driver = try VirtioTestDriver(device, size: 16, memorySize: 32 << 20)
        // 3.1.1, with the three queues set up before DRIVER_OK.
        let features = VirtioFeature.version1 | VirtioFeature.eventIndex
        for status in [0, VirtioStatus.acknowledge, VirtioStatus.acknowledge | VirtioStatus.driver] { driver.write(0x70, status) }
        driver.write(0x24, 0); driver.write(0x20, UInt32(truncatingIfNeeded: features))
        driver.write(0x24, 1); driver.write(0x20, UInt32(features >> 32))
        driver.write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK)
        receive = TestQueue(0, base: 0x10_0000, driver: driver)
        transmit = TestQueue(1, base: 0x20_0000, driver: driver)
        event = TestQueue(2, base: 0x30_0000, driver: driver)
        driver.write(0x70, VirtioStatus.acknowledge | VirtioStatus.driver | VirtioStatus.featuresOK | VirtioStatus.driverOK)
        for _ in 0..<receiveBuffers { try receive.post(driver, writableLength: bufferSize) }
    }

    deinit {
        device.stop()
        try? FileManager.default.removeItem(at: folder)
    }

    func send(_ packet: VsockPacket) throws { try transmit.post(driver, bytes: packet.bytes) }

    /// The packets the device delivered within 2 s (waiting for at least `count`).
    func packets(atLeast count: Int = 1) throws -> [VsockPacket] {
        var result: [VsockPacket] = []
        for _ in 0..<200 {
            result += try receive.takeUsed(driver).compactMap(VsockPacket.init)
            if result.count >= count { break }
            usleep(10_000)
        }
        return result
    }

    /// Posts one more receive buffer.
    func repost(_ bufferSize: UInt32 = 4096 + 44) throws { try receive.post(driver, writableLength: bufferSize) }
}

@Suite("virtio-vsock (hybrid, AF_UNIX host side)", .serialized)
struct VirtioVsockTests {
    @Test("the configuration space holds the guest CID; reserved CIDs and impossible paths are refused")
    func configuration() throws {
        let bench = try VsockBench()
        #expect(bench.driver.transport.mmioRead(offset: 0x100, width: 8) == 3)
        #expect(bench.driver.read(0x08) == 19, "device ID 19")
        #expect(throws: VirtioVsockError.self) { try VirtioVsock(guestCID: 2, path: bench.folder.appendingPathComponent("x").path) }
        #expect(throws: VirtioVsockError.self) { try VirtioVsock(guestCID: 3, path: String(repeating: "a", count: 200)) }
        #expect(throws: VirtioVsockError.self) { try VirtioVsock(guestCID: 3, path: "/proc/version") }
    }

    @Test("a guest connection to host port P reaches PATH_P: RESPONSE, bytes both ways, the host's end of sending becomes SHUTDOWN(SEND), the guest's full SHUTDOWN ends it with RST")
    func guestConnects() throws {
        let bench = try VsockBench()
        let listener = try UnixListener(path: bench.socketPath + "_5000")
        try bench.send(VsockPacket(sourcePort: 1234, destinationPort: 5000, operation: VsockPacket.request))
        let host = try #require(listener.accept())
        defer { close(host) }
        let response = try #require(try bench.packets().first)
        #expect(response.operation == VsockPacket.response && response.sourceCID == 2 && response.destinationCID == 3)
        #expect(response.sourcePort == 5000 && response.destinationPort == 1234 && response.bufferAllocation == VirtioVsock.bufferSize)

        try bench.send(VsockPacket(sourcePort: 1234, destinationPort: 5000, operation: VsockPacket.readWrite, payload: Array("hello from the guest".utf8)))
        #expect(readSocket(host, count: 20) == Array("hello from the guest".utf8))

        _ = "hello from the host".withCString { send(host, $0, 19, 0) }
        let data = try bench.packets()
        #expect(data.map(\.operation) == [VsockPacket.readWrite])
        #expect(data.first?.payload == Array("hello from the host".utf8))
        #expect(data.first?.forwardCount == 20, "fwd_cnt counts the guest bytes written to the host socket")

        // The host program stops sending: the guest hears SHUTDOWN with SEND only, and can still
        // send; its SHUTDOWN of both directions ends the connection with a reset.
        shutdown(host, Int32(SHUT_WR))
        try bench.repost(); try bench.repost()
        let end = try bench.packets()
        #expect(end.map(\.operation) == [VsockPacket.shutdown] && end.first?.flags == 2)
        try bench.send(VsockPacket(sourcePort: 1234, destinationPort: 5000, operation: VsockPacket.readWrite, payload: Array("bye".utf8)))
        #expect(readSocket(host, count: 3) == Array("bye".utf8))
        var close = VsockPacket(sourcePort: 1234, destinationPort: 5000, operation: VsockPacket.shutdown)
        close.flags = 3
        try bench.send(close)
        #expect(try bench.packets().map(\.operation) == [VsockPacket.reset])
        #expect(readSocket(host, count: 1).isEmpty, "the host program sees the end")
        #expect(bench.device.connectionCount == 0)
        #expect(bench.device.statistics.guestConnections == 1)
        #expect(bench.device.statistics.bytesFromGuest == 23 && bench.device.statistics.bytesToGuest == 19)
    }

    @Test("a host program writes CONNECT P: the guest gets a REQUEST, and once it answers, the program reads OK and the bytes flow")
    func hostConnects() throws {
        let bench = try VsockBench()
        let host = try #require(connectUnix(bench.socketPath))
        defer { close(host) }
        _ = "CONNECT 52\n".withCString { send(host, $0, 11, 0) }
        let request = try #require(try bench.packets().first)
        #expect(request.operation == VsockPacket.request && request.destinationPort == 52 && request.sourcePort >= 1 << 30)
        var answer = VsockPacket(sourcePort: 52, destinationPort: request.sourcePort, operation: VsockPacket.response)
        try bench.send(answer)
        #expect(String(decoding: readSocket(host, count: 64, line: true).prefix { $0 != 10 }, as: UTF8.self) == "OK \(request.sourcePort)")
        answer.operation = VsockPacket.readWrite
        answer.payload = Array("echo".utf8)
        try bench.send(answer)
        #expect(readSocket(host, count: 4) == Array("echo".utf8))
        _ = "back".withCString { send(host, $0, 4, 0) }
        #expect(try bench.packets().first?.payload == Array("back".utf8))
        #expect(bench.device.statistics.hostConnections == 1)
    }

    @Test("a guest never gets more than its credit: buf_alloc 10 takes 10 bytes, a credit update lets the next 10 through")
    func credit() throws {
        let bench = try VsockBench()
        let listener = try UnixListener(path: bench.socketPath + "_7")
        var request = VsockPacket(sourcePort: 9, destinationPort: 7, operation: VsockPacket.request)
        request.bufferAllocation = 10
        try bench.send(request)
        let host = try #require(listener.accept())
        defer { close(host) }
        #expect(try bench.packets().first?.operation == VsockPacket.response)
        _ = [UInt8](repeating: 0x41, count: 100).withUnsafeBytes { send(host, $0.baseAddress, 100, 0) }
        let first = try bench.packets()
        #expect(first.map(\.payload.count) == [10])
        usleep(100_000)
        #expect(try bench.packets().isEmpty, "nothing more without credit")
        var update = VsockPacket(sourcePort: 9, destinationPort: 7, operation: VsockPacket.creditUpdate)
        update.bufferAllocation = 10
        update.forwardCount = 10
        try bench.send(update)
        #expect(try bench.packets().map(\.payload.count) == [10])
    }

    @Test("refused and hostile packets: no listener, wrong CID, other socket types, unknown operations, RW beyond credit, lengths past the buffer; the device keeps serving")
    func hostile() throws {
        let bench = try VsockBench(receiveBuffers: 16)
        // Nobody listens on port 1: RST.
        try bench.send(VsockPacket(sourcePort: 1, destinationPort: 1, operation: VsockPacket.request))
        #expect(try bench.packets().map(\.operation) == [VsockPacket.reset])
        // A packet from another CID is ignored.
        var spoofed = VsockPacket(sourcePort: 1, destinationPort: 1, operation: VsockPacket.request)
        spoofed.sourceCID = 4
        try bench.send(spoofed)
        // SEQPACKET, an unknown operation, a destination other than the host: RST each.
        var seqpacket = VsockPacket(sourcePort: 2, destinationPort: 2, operation: VsockPacket.request)
        seqpacket.type = 2
        try bench.send(seqpacket)
        try bench.send(VsockPacket(sourcePort: 3, destinationPort: 3, operation: 99))
        var elsewhere = VsockPacket(sourcePort: 4, destinationPort: 4, operation: VsockPacket.request)
        elsewhere.destinationCID = 7
        try bench.send(elsewhere)
        // A header whose length runs past the buffer, and a buffer shorter than a header: dropped.
        var long = VsockPacket(sourcePort: 5, destinationPort: 5, operation: VsockPacket.readWrite).bytes
        long[24] = 0xFF; long[25] = 0xFF
        try bench.transmit.post(bench.driver, bytes: long)
        try bench.transmit.post(bench.driver, bytes: [1, 2, 3])
        #expect(try bench.packets(atLeast: 3).map(\.destinationPort) == [2, 3, 4])
        #expect(bench.device.statistics.droppedPackets == 3)

        // An established connection whose guest sends beyond its credit is reset.
        let listener = try UnixListener(path: bench.socketPath + "_8")
        try bench.send(VsockPacket(sourcePort: 8, destinationPort: 8, operation: VsockPacket.request))
        let host = try #require(listener.accept())
        defer { close(host) }
        #expect(try bench.packets().first?.operation == VsockPacket.response)
        // The host reads nothing, so 64 KiB of credit runs out after eight 8 KiB packets.
        for _ in 0..<9 {
            var flood = VsockPacket(sourcePort: 8, destinationPort: 8, operation: VsockPacket.readWrite, payload: [UInt8](repeating: 1, count: 8000))
            flood.bufferAllocation = 1 << 20
            try bench.send(flood)
        }
        // Filling the host socket's own buffer first can take more than nine packets: keep sending.
        var sent = 9
        while bench.device.connectionCount > 0 && sent < 200 {
            try bench.send(VsockPacket(sourcePort: 8, destinationPort: 8, operation: VsockPacket.readWrite, payload: [UInt8](repeating: 1, count: 8000)))
            sent += 1
        }
        #expect(bench.device.connectionCount == 0, "reset after \(sent) packets")
        #expect(bench.driver.read(0x70) & VirtioStatus.deviceNeedsReset == 0, "broken vsock protocol is the connection's problem, not the device's")
    }

    @Test("a device nobody holds goes away with its poll thread, and takes its socket's name with it; stop() does that at once")
    func lifetime() throws {
        let folder = FileManager.default.temporaryDirectory.appendingPathComponent("hv-vsock-life-\(getpid())")
        try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: folder) }
        let path = folder.appendingPathComponent("v.sock").path
        weak var gone: VirtioVsock?
        do {
            let device = try VirtioVsock(guestCID: 3, path: path)
            let driver = try VirtioTestDriver(device)  // the transport starts the poll thread
            _ = driver
            gone = device
            #expect(FileManager.default.fileExists(atPath: path))
        }
        for _ in 0..<30 where gone != nil { usleep(100_000) }
        #expect(gone == nil, "the poll thread kept the device alive")
        #expect(!FileManager.default.fileExists(atPath: path))
        let stopped = try VirtioVsock(guestCID: 3, path: path)
        stopped.stop()
        #expect(!FileManager.default.fileExists(atPath: path))
    }

    @Test("a driver reset closes every connection: the host program sees its end")
    func resetCloses() throws {
        let bench = try VsockBench()
        let listener = try UnixListener(path: bench.socketPath + "_9")
        try bench.send(VsockPacket(sourcePort: 9, destinationPort: 9, operation: VsockPacket.request))
        let host = try #require(listener.accept())
        defer { close(host) }
        #expect(bench.device.connectionCount == 1)
        bench.driver.write(0x70, 0)
        #expect(bench.device.connectionCount == 0)
        #expect(readSocket(host, count: 1).isEmpty)
    }
}
