// The socket device (virtio 1.2, 5.10 "Socket Device"): stream sockets between the guest
// (AF_VSOCK, its own context ID) and the host, with Firecracker's "hybrid" host side: the host
// end of every connection is an AF_UNIX stream socket, so no vhost-vsock module and no host
// vsock address space are needed.
//
// - The guest connects to CID 2 (the host), port P: the device connects to the Unix socket
//   "PATH_P" (a program on the host listens there) and the bytes flow between the two.
// - A host program connects to the Unix socket PATH and writes "CONNECT P\n": the device asks
//   the guest for a connection to its port P, answers "OK HOSTPORT\n" once the guest accepts,
//   and the bytes flow.
//
// Every connection is flow-controlled by credit both ways (5.10.6.3): the guest sends at most
// what the device said it can hold (`bufferSize` per connection) and the device sends at most what
// the guest's buf_alloc and fwd_cnt allow. Bytes the host socket cannot take yet wait in the
// connection's buffer; a guest that sends beyond its credit has its connection reset. A thread
// of the device polls the host sockets.
#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Foundation
import Logging
import Synchronization

/// Why a vsock device could not start.
public struct VirtioVsockError: Error, Equatable, CustomStringConvertible {
    public var field: String
    public var problem: String
    public var description: String { "\(field): \(problem)" }
}

public final class VirtioVsock: VirtioDevice {
    /// The host's context ID (5.10.4: 2 is the host; guests get 3 and above).
    public static let hostCID: UInt64 = 2
    /// The bytes the device holds per connection for the host socket (its buf_alloc).
    public static let bufferSize: UInt32 = 64 * 1024
    /// Connections open at once; a guest asking for more gets resets.
    public static let maximumConnections = 256
    /// Host programs that connected to PATH and have not yet written their CONNECT line.
    static let maximumHandshakes = 32
    /// Resets owed to the guest for packets that named no connection; beyond this they are dropped.
    static let maximumOwedResets = 256
    /// The largest payload put in one receive buffer.
    static let maximumPayload = 64 * 1024
    static let headerSize = 44
    /// The ring a connection's pending bytes wait in: the guest's credit plus room for the
    /// "OK PORT" line the device writes itself.
    static let ringCapacity = Int(bufferSize) + 64
    static let receiveQueue = 0, transmitQueue = 1, eventQueue = 2

    /// Packet operations (5.10.6.1).
    enum Operation: UInt16 {
        case request = 1, response = 2, reset = 3, shutdown = 4, readWrite = 5, creditUpdate = 6, creditRequest = 7
    }
    /// SHUTDOWN flags: the sender will receive (send) no more.
    static let shutdownReceive: UInt32 = 1, shutdownSend: UInt32 = 2
    static let streamType: UInt16 = 1

    public var type: VirtioDeviceType { .vsock }
    public var name: String { "virtio-vsock" }
    /// No feature bits: stream sockets only (5.10.3: "If no feature bit is negotiated, the
    /// device only supports stream socket type").
    public var features: UInt64 { 0 }
    public var queueSizes: [UInt16] { [128, 128, 16] }

    /// The guest's context ID (3 ... 2^32 - 2).
    public let guestCID: UInt64
    /// The Unix socket host programs connect to; guest connections go to PATH_PORT.
    public let path: String

    private let listener: Int32
    private let wakeFD: Int32
    private let running = Atomic<Bool>(true)
    /// True while the driver has posted no receive buffer: the poll thread then waits for host
    /// sockets to become writable and for wake-ups only.
    private let starved = Atomic<Bool>(false)
    /// A restored device owes the driver VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (5.10.6.7).
    private let transportResetOwed = Atomic<Bool>(false)
    private let serveQueue = VirtioQueueCallback()
    private let state: Mutex<Multiplexer>
    private let scratch = Mutex(Scratch())

    /// What the device has done (for tools and tests).
    public struct Counters: Sendable, Equatable {
        /// Connections established from the guest and from the host.
        public var guestConnections: UInt64 = 0, hostConnections: UInt64 = 0
        /// Payload bytes each way.
        public var bytesFromGuest: UInt64 = 0, bytesToGuest: UInt64 = 0
        /// Connections the device reset (refused, over credit, host socket gone, too many).
        public var resets: UInt64 = 0
        /// Packets the device ignored (wrong source CID, malformed).
        public var droppedPackets: UInt64 = 0
    }

    /// A vsock device whose guest has `guestCID`, with its host side at the Unix socket `path`
    /// (created here; a stale socket file there is replaced, anything else is an error).
    public init(guestCID: UInt64, path: String) throws(VirtioVsockError) {
        guard (3..<0xFFFF_FFFF).contains(guestCID) else {
            // 0-2 name the hypervisor, the local host and the host; 0xFFFFFFFF is VMADDR_CID_ANY
            // (vsock(7)); the CID is 32 bits in struct virtio_vsock_config's guest_cid use.
            let why = guestCID <= 2 || guestCID == 0xFFFF_FFFF ? "is reserved" : "does not fit in 32 bits"
            throw VirtioVsockError(field: "guest CID", problem: "\(guestCID) \(why); use 3 ... 4294967294")
        }
        // sun_path holds 108 bytes with the terminator, and PATH_PORT must fit as well.
        guard !path.isEmpty, path.utf8.count + 11 < MemoryLayout.size(ofValue: sockaddr_un().sun_path) else {
            throw VirtioVsockError(field: "vsock path", problem: "'\(path)' must be 1-96 bytes (a Unix socket path, with _PORT after it)")
        }
        var information = stat()
        if lstat(path, &information) == 0 {
            guard information.st_mode & S_IFMT == S_IFSOCK else {
                throw VirtioVsockError(field: "vsock path", problem: "'\(path)' exists and is not a socket")
            }
            unlink(path)
        }
        let listener = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard listener >= 0 else { throw VirtioVsockError(field: "vsock path", problem: "socket: \(String(cString: strerror(errno)))") }
        let bound = unixSocketAddress(path) { bind(listener, $0, $1) }
        guard bound == 0, listen(listener, 16) == 0 else {
            let problem = String(cString: strerror(errno))
            close(listener)
            throw VirtioVsockError(field: "vsock path", problem: "cannot listen on '\(path)': \(problem)")
        }
        self.guestCID = guestCID
        self.path = path
        self.listener = listener
        self.wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
        self.state = Mutex(Multiplexer())
    }

    deinit {
        stop()
        close(listener)
        close(wakeFD)
        unlink(path)
        state.withLock { $0.closeAll(); $0.payload.deallocate() }
    }

    public var statistics: Counters { state.withLock { $0.counters } }

    /// Connections open now.
    public var connectionCount: Int { state.withLock { $0.connections.count } }

    public func readConfiguration(offset: Int, width: Int) -> UInt64 {
        // struct virtio_vsock_config { le64 guest_cid; } (5.10.4)
        virtioConfigurationRead((0..<8).map { UInt8(truncatingIfNeeded: guestCID >> (8 * UInt64($0))) }, offset: offset, width: width)
    }

    public func connect(serve: @escaping @Sendable (Int) -> Void) {
        serveQueue.set(serve)
        // The thread holds the device only for one round at a time, so a device nobody else
        // holds goes away (and its thread with it) within a poll timeout.
        let thread = Thread { [weak self] in
            var fds: [pollfd] = [], owners: [Owner] = []
            while let device = self, device.pollOnce(&fds, &owners) {}
        }
        thread.name = "virtio-vsock"
        thread.start()
    }

    /// Ends the poll thread and takes the socket's name away (no new host connections); the
    /// sockets themselves close when the device goes.
    public func stop() {
        guard running.exchange(false, ordering: .acquiringAndReleasing) else { return }
        wake()
        unlink(path)
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// A driver reset closes every connection (the guest's sockets are gone with its driver).
    public func reset() {
        state.withLock { $0.closeAll() }
        starved.store(false, ordering: .releasing)
        wake()
    }

    // MARK: The poll thread

    /// One round of the poll thread: wait (at most a second) for the host sockets and act on
    /// what they say. False once the device is stopped.
    private func pollOnce(_ fds: inout [pollfd], _ owners: inout [Owner]) -> Bool {
        guard running.load(ordering: .acquiring) else { return false }
        fds.removeAll(keepingCapacity: true)
        owners.removeAll(keepingCapacity: true)
        fds.append(pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0)); owners.append(.wake)
        fds.append(pollfd(fd: listener, events: Int16(POLLIN), revents: 0)); owners.append(.listener)
        let canDeliver = !starved.load(ordering: .acquiring)
        state.withLock { state in
            for handshake in state.handshakes {
                fds.append(pollfd(fd: handshake.fd, events: Int16(POLLIN), revents: 0)); owners.append(.handshake(handshake.fd))
            }
            for (key, connection) in state.connections {
                var events: Int16 = 0
                if canDeliver && connection.wantsHostInput { events |= Int16(POLLIN) }
                if connection.pendingCount > 0 { events |= Int16(POLLOUT) }
                // A socket polled for nothing still reports hang-ups; one that has nothing
                // to do now is left out until it does.
                guard events != 0 else { continue }
                fds.append(pollfd(fd: connection.fd, events: events, revents: 0)); owners.append(.connection(key))
            }
        }
        let ready = poll(&fds, nfds_t(fds.count), 1000)
        if ready < 0 { return errno == EINTR }
        guard running.load(ordering: .acquiring) else { return false }
        guard ready > 0 else { return true }
        var deliver = false
        if fds[0].revents != 0 {
            var count: UInt64 = 0
            _ = read(wakeFD, &count, 8)
        }
        if fds[1].revents & Int16(POLLIN) != 0 { acceptHostConnections() }
        state.withLock { state in
            for (entry, owner) in zip(fds, owners) where entry.revents != 0 {
                switch owner {
                case .wake, .listener: break
                case .handshake(let fd):
                    if state.readHandshake(fd: fd) { deliver = true }
                case .connection(let key):
                    guard let connection = state.connections[key] else { continue }
                    if entry.revents & Int16(POLLOUT) != 0 || entry.revents & Int16(POLLERR | POLLHUP) != 0 && connection.pendingCount > 0 {
                        if state.flush(connection) { deliver = true }
                    }
                    if entry.revents & Int16(POLLIN | POLLHUP | POLLERR) != 0 && connection.wantsHostInput {
                        connection.hostReadable = true
                        deliver = true
                    }
                }
            }
            if state.hasOutput { deliver = true }
        }
        if deliver && canDeliver {
            // Starved until the device says otherwise, so that a driver that is not ready
            // (the transport does not call the device) leaves this loop waiting, not spinning.
            starved.store(true, ordering: .releasing)
            serveQueue(Self.receiveQueue)
        }
        return true
    }

    private enum Owner { case wake, listener, handshake(Int32), connection(UInt64) }

    private func acceptHostConnections() {
        while true {
            // Non-blocking and close-on-exec set atomically with the accept.
            let fd = hv_accept4(listener, Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue))
            guard fd >= 0 else { return }
            let kept = state.withLock { state -> Bool in
                guard state.handshakes.count < Self.maximumHandshakes,
                      state.handshakes.count + state.connections.count < Self.maximumConnections else { return false }
                state.handshakes.append(Handshake(fd: fd))
                return true
            }
            if !kept { close(fd) }
        }
    }

    // MARK: Queues

    public func serve(queue index: Int, _ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        switch index {
        case Self.transmitQueue:
            let used = try transmit(&queue, memory: memory)
            // What the guest sent may have produced replies (responses, resets, credit) or given
            // credit that lets the poll thread read a host socket again.
            if used {
                if state.withLock({ $0.hasOutput }) { starved.store(false, ordering: .releasing) }
                wake()
            }
            return used
        case Self.receiveQueue:
            return try receive(&queue, memory: memory)
        case Self.eventQueue:
            return try sendTransportReset(&queue, memory: memory)
        default:
            return false
        }
    }

    // MARK: Snapshots

    /// Connections are host sockets of this process, which a snapshot cannot carry (nor a
    /// migration to another host): as in Firecracker, a restored device tells the driver its
    /// transport was reset (5.10.6.7), and the guest closes its sockets and reads its CID again.
    /// The source VM of a snapshot keeps its connections.
    public func saveState(to encoder: inout StateEncoder) {}

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        transportResetOwed.store(true, ordering: .releasing)
    }

    /// Puts struct virtio_vsock_event { le32 id = VIRTIO_VSOCK_EVENT_TRANSPORT_RESET (0) } in
    /// the driver's next event buffer, when one is owed.
    private func sendTransportReset(_ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        guard transportResetOwed.load(ordering: .acquiring) else { return false }
        return try scratch.withLock { (scratch) throws(VirtioDeviceError) -> Bool in
            guard try queue.popRequest(into: &scratch.chain, memory: memory) else { return false }
            var event = UInt32(0).littleEndian
            let written = withUnsafeBytes(of: &event) { scratch.chain.copyIn($0, at: 0, memory: memory) }
            queue.push(head: scratch.chain.head, written: UInt32(written), memory: memory)
            if written == 4 { transportResetOwed.store(false, ordering: .releasing) }
            return true
        }
    }

    /// Takes the guest's packets.
    private func transmit(_ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        try scratch.withLock { (scratch) throws(VirtioDeviceError) -> Bool in
            var used = false
            while try queue.popRequest(into: &scratch.chain, memory: memory) {
                let chain = scratch.chain
                used = true
                defer { queue.push(head: chain.head, written: 0, memory: memory) }
                let header = scratch.header
                guard chain.copyOut(from: 0, into: header, memory: memory) == Self.headerSize else {
                    state.withLock { $0.counters.droppedPackets += 1 }
                    continue
                }
                let packet = PacketHeader(header)
                let payloadLength = UInt64(packet.length)
                guard payloadLength <= chain.readableLength - UInt64(Self.headerSize) else {
                    state.withLock { $0.counters.droppedPackets += 1 }
                    continue
                }
                state.withLock { state in
                    state.take(packet, payload: { offset, destination in
                        chain.copyOut(from: UInt64(Self.headerSize) + offset, into: destination, memory: memory)
                    }, guestCID: guestCID, path: path)
                }
            }
            return used
        }
    }

    /// Fills the driver's receive buffers with what the device owes the guest: replies and
    /// resets, then host bytes, connection by connection.
    private func receive(_ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        var used = false, outOfBuffers = false
        try scratch.withLock { (scratch) throws(VirtioDeviceError) in
            while true {
                let next = state.withLock { $0.nextPacket(guestCID: guestCID) }
                guard var packet = next else { break }
                guard try queue.popRequest(into: &scratch.chain, memory: memory) else {
                    state.withLock { $0.giveBack(packet) }
                    outOfBuffers = true
                    break
                }
                guard scratch.chain.writableLength >= UInt64(Self.headerSize) else {
                    state.withLock { $0.giveBack(packet) }
                    throw .malformedRequest("a receive buffer of \(scratch.chain.writableLength) bytes cannot hold the \(Self.headerSize)-byte header")
                }
                // Host bytes are read only now that a buffer is known, and only as many as it holds.
                if packet.header.operation == Operation.readWrite.rawValue {
                    let room = Int(min(scratch.chain.writableLength - UInt64(Self.headerSize), UInt64(Self.maximumPayload)))
                    guard room > 0 else {  // a buffer with no room for bytes: wait for the next notification
                        state.withLock { $0.giveBack(packet) }
                        queue.undoPop(memory: memory)
                        outOfBuffers = true
                        break
                    }
                    // The bytes go from the host socket through the multiplexer's buffer into the
                    // guest's buffer after the header.
                    let chain = scratch.chain
                    packet = state.withLock {
                        $0.readHostBytes(for: packet, limit: room) { bytes in
                            _ = chain.copyIn(bytes, at: UInt64(Self.headerSize), memory: memory)
                        }
                    }
                    if packet.header.operation == 0 {  // nothing to read after all
                        queue.undoPop(memory: memory)
                        continue
                    }
                }
                packet.header.write(into: scratch.header)
                scratch.chain.copyIn(UnsafeRawBufferPointer(scratch.header), at: 0, memory: memory)
                let payload = Int(packet.header.length)
                queue.push(head: scratch.chain.head, written: UInt32(Self.headerSize + payload), memory: memory)
                used = true
            }
        }
        let wasStarved = starved.exchange(outOfBuffers, ordering: .acquiringAndReleasing)
        if wasStarved && !outOfBuffers { wake() }
        return used
    }

    // MARK: Connection state

    /// The scratch space packets are assembled in (one per device; serve calls are serialised by
    /// the transport, and both queues take this lock).
    private struct Scratch: ~Copyable {
        var chain = VirtqueueChain()
        let header = UnsafeMutableRawBufferPointer.allocate(byteCount: VirtioVsock.headerSize, alignment: 8)
        deinit { header.deallocate() }
    }

    /// struct virtio_vsock_hdr (5.10.6), little-endian, 44 bytes.
    struct PacketHeader: Equatable {
        var sourceCID: UInt64 = 0, destinationCID: UInt64 = 0
        var sourcePort: UInt32 = 0, destinationPort: UInt32 = 0
        var length: UInt32 = 0
        var type: UInt16 = VirtioVsock.streamType
        var operation: UInt16 = 0
        var flags: UInt32 = 0
        var bufferAllocation: UInt32 = 0, forwardCount: UInt32 = 0

        init() {}

        init(_ bytes: UnsafeMutableRawBufferPointer) {
            func load<T: FixedWidthInteger>(_ offset: Int, _ type: T.Type) -> T { T(littleEndian: bytes.loadUnaligned(fromByteOffset: offset, as: T.self)) }
            sourceCID = load(0, UInt64.self); destinationCID = load(8, UInt64.self)
            sourcePort = load(16, UInt32.self); destinationPort = load(20, UInt32.self)
            length = load(24, UInt32.self); type = load(28, UInt16.self); operation = load(30, UInt16.self)
            flags = load(32, UInt32.self); bufferAllocation = load(36, UInt32.self); forwardCount = load(40, UInt32.self)
        }

        func write(into bytes: UnsafeMutableRawBufferPointer) {
            func store<T: FixedWidthInteger>(_ value: T, _ offset: Int) { bytes.storeBytes(of: value.littleEndian, toByteOffset: offset, as: T.self) }
            store(sourceCID, 0); store(destinationCID, 8); store(sourcePort, 16); store(destinationPort, 20)
            store(length, 24); store(type, 28); store(operation, 30); store(flags, 32)
            store(bufferAllocation, 36); store(forwardCount, 40)
        }
    }

    /// A host program that connected to PATH and is writing "CONNECT PORT\n".
    struct Handshake {
        let fd: Int32
        var line: [UInt8] = []
    }

    /// One stream between a guest port and a host socket.
    final class Connection {
        enum Phase {
            /// Host-initiated: the REQUEST is owed or sent, the guest has not answered.
            case connecting
            case established
        }
        let fd: Int32
        /// The port the guest sees for the host end, and the guest's port.
        let hostPort: UInt32, guestPort: UInt32
        var phase: Phase
        /// The guest's receive buffer and how much of what it was sent it has consumed.
        var peerBufferAllocation: UInt32 = 0, peerForwardCount: UInt32 = 0
        /// Payload bytes sent to the guest, received from it, and written to the host socket
        /// (wrapping counters, as the header's).
        var sent: UInt32 = 0, received: UInt32 = 0, forwarded: UInt32 = 0
        /// `forwarded` as last told to the guest.
        var reportedForward: UInt32 = 0
        /// Bytes for the host socket it has not taken yet: a ring of `ringCapacity` bytes.
        let pending: UnsafeMutableRawBufferPointer
        var pendingStart = 0, pendingCount = 0
        /// Owed to the guest: the REQUEST (host-initiated), the RESPONSE, a credit update. (The
        /// SHUTDOWN for a host socket's end is made when the read finds it, into a buffer at hand.)
        var owesRequest = false, owesResponse = false, owesCredit = false
        /// The host socket may have bytes (or its end) to read.
        var hostReadable = false
        /// The guest will send no more (SHUTDOWN SEND); will receive no more (SHUTDOWN RECEIVE).
        var guestSendDone = false, guestReceiveDone = false
        /// The host socket's end was read (a SHUTDOWN is owed or sent).
        var hostEnded = false
        /// The guest closed both directions: reset once the pending bytes are written.
        var closing = false

        init(fd: Int32, hostPort: UInt32, guestPort: UInt32, phase: Phase) {
            self.fd = fd
            self.hostPort = hostPort
            self.guestPort = guestPort
            self.phase = phase
            pending = .allocate(byteCount: VirtioVsock.ringCapacity, alignment: 16)
        }

        deinit {
            pending.deallocate()
            close(fd)
        }

        /// What the guest can still take (its credit), 0 when it claims less than nothing.
        var peerCredit: UInt32 {
            let inFlight = sent &- peerForwardCount
            return inFlight > peerBufferAllocation ? 0 : peerBufferAllocation - inFlight
        }

        var wantsHostInput: Bool { phase == .established && !hostEnded && !guestReceiveDone && !closing && peerCredit > 0 }
    }

    struct Multiplexer {
        var connections: [UInt64: Connection] = [:]
        var handshakes: [Handshake] = []
        /// Resets owed for packets that named no connection: (host port, guest port).
        var owedResets: [(UInt32, UInt32)] = []
        var nextHostPort: UInt32 = 1 << 30
        /// The connection `nextPacket` served last.
        var cursor: UInt64?
        /// Where host bytes are read before they are copied to the guest (freed with the device).
        let payload = UnsafeMutableRawBufferPointer.allocate(byteCount: VirtioVsock.maximumPayload, alignment: 16)
        var counters = Counters()

        static func key(hostPort: UInt32, guestPort: UInt32) -> UInt64 { UInt64(hostPort) << 32 | UInt64(guestPort) }

        mutating func closeAll() {
            connections.removeAll()
            for handshake in handshakes { close(handshake.fd) }
            handshakes.removeAll()
            owedResets.removeAll()
        }

        /// True when a reply, a reset or host bytes wait for a receive buffer.
        var hasOutput: Bool {
            !owedResets.isEmpty || connections.values.contains {
                $0.owesRequest || $0.owesResponse || $0.owesCredit || ($0.hostReadable && $0.wantsHostInput)
            }
        }

        mutating func owe(resetFor hostPort: UInt32, guestPort: UInt32) {
            counters.resets += 1
            if owedResets.count < VirtioVsock.maximumOwedResets { owedResets.append((hostPort, guestPort)) }
        }

        mutating func drop(_ connection: Connection, reset: Bool) {
            connections[Self.key(hostPort: connection.hostPort, guestPort: connection.guestPort)] = nil
            if reset { owe(resetFor: connection.hostPort, guestPort: connection.guestPort) }
        }

        // MARK: From the guest

        /// One packet from the guest; `payload(offset, buffer)` copies its payload from `offset`
        /// into `buffer` and returns the bytes copied.
        mutating func take(_ packet: PacketHeader, payload: (UInt64, UnsafeMutableRawBufferPointer) -> Int, guestCID: UInt64, path: String) {
            guard packet.sourceCID == guestCID else { counters.droppedPackets += 1; return }
            let hostPort = packet.destinationPort, guestPort = packet.sourcePort
            let key = Self.key(hostPort: hostPort, guestPort: guestPort)
            guard let operation = Operation(rawValue: packet.operation) else {
                if connections[key] == nil { owe(resetFor: hostPort, guestPort: guestPort) } else { drop(connections[key]!, reset: true) }
                return
            }
            // Only stream sockets to the host; anything else is refused (a reset is never answered).
            guard packet.destinationCID == VirtioVsock.hostCID, packet.type == VirtioVsock.streamType else {
                if operation != .reset { owe(resetFor: hostPort, guestPort: guestPort) }
                return
            }
            let existing = connections[key]
            if let existing {
                existing.peerBufferAllocation = packet.bufferAllocation
                existing.peerForwardCount = packet.forwardCount
            }
            switch operation {
            case .request:
                guard existing == nil else { drop(existing!, reset: true); return }
                connectToHost(port: hostPort, guestPort: guestPort, packet: packet, path: path)
            case .response:
                guard let existing, existing.phase == .connecting else {
                    if let existing { drop(existing, reset: true) } else { owe(resetFor: hostPort, guestPort: guestPort) }
                    return
                }
                existing.phase = .established
                counters.hostConnections += 1
                let line = Array("OK \(hostPort)\n".utf8)
                line.withUnsafeBytes { append($0, to: existing) }
                _ = flush(existing)
            case .readWrite:
                guard let existing, existing.phase == .established, !existing.guestSendDone else {
                    if let existing { drop(existing, reset: true) } else { owe(resetFor: hostPort, guestPort: guestPort) }
                    return
                }
                // Beyond its credit the guest broke the protocol: the connection is reset.
                guard Int(packet.length) <= VirtioVsock.ringCapacity - existing.pendingCount else {
                    drop(existing, reset: true)
                    return
                }
                receive(packet.length, into: existing, payload: payload)
                counters.bytesFromGuest += UInt64(packet.length)
                _ = flush(existing)
            case .creditUpdate:
                guard existing != nil else { owe(resetFor: hostPort, guestPort: guestPort); return }
            case .creditRequest:
                guard let existing else { owe(resetFor: hostPort, guestPort: guestPort); return }
                existing.owesCredit = true
            case .shutdown:
                guard let existing else { owe(resetFor: hostPort, guestPort: guestPort); return }
                if packet.flags & VirtioVsock.shutdownSend != 0 { existing.guestSendDone = true }
                if packet.flags & VirtioVsock.shutdownReceive != 0 { existing.guestReceiveDone = true }
                if existing.guestSendDone && existing.guestReceiveDone { existing.closing = true }
                _ = flush(existing)
            case .reset:
                if let existing { drop(existing, reset: false) }
            }
        }

        /// Copies a RW packet's payload into the connection's ring (in two pieces where it wraps).
        private func receive(_ length: UInt32, into connection: Connection, payload: (UInt64, UnsafeMutableRawBufferPointer) -> Int) {
            let capacity = VirtioVsock.ringCapacity
            var copied = 0
            while copied < Int(length) {
                let end = (connection.pendingStart + connection.pendingCount) % capacity
                let piece = min(Int(length) - copied, capacity - end)
                let count = payload(UInt64(copied), UnsafeMutableRawBufferPointer(rebasing: connection.pending[end..<end + piece]))
                connection.pendingCount += count
                copied += count
                guard count == piece else { break }
            }
            connection.received &+= UInt32(copied)
        }

        /// Appends host-made bytes (the "OK" line) to the connection's ring.
        private func append(_ bytes: UnsafeRawBufferPointer, to connection: Connection) {
            let capacity = VirtioVsock.ringCapacity
            for byte in bytes where connection.pendingCount < capacity {
                connection.pending[(connection.pendingStart + connection.pendingCount) % capacity] = byte
                connection.pendingCount += 1
            }
        }

        /// The guest asks for the host's port `port`: connects to PATH_PORT.
        private mutating func connectToHost(port: UInt32, guestPort: UInt32, packet: PacketHeader, path: String) {
            guard connections.count + handshakes.count < VirtioVsock.maximumConnections else {
                owe(resetFor: port, guestPort: guestPort)
                return
            }
            let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard fd >= 0 else { owe(resetFor: port, guestPort: guestPort); return }
            // A non-blocking connect to a Unix socket completes at once or fails (EAGAIN: the
            // listener's backlog is full; ENOENT/ECONNREFUSED: nobody listens).
            guard unixSocketAddress("\(path)_\(port)", { Glibc.connect(fd, $0, $1) }) == 0 else {
                close(fd)
                owe(resetFor: port, guestPort: guestPort)
                return
            }
            let connection = Connection(fd: fd, hostPort: port, guestPort: guestPort, phase: .established)
            connection.peerBufferAllocation = packet.bufferAllocation
            connection.peerForwardCount = packet.forwardCount
            connection.owesResponse = true
            connections[Self.key(hostPort: port, guestPort: guestPort)] = connection
            counters.guestConnections += 1
        }

        /// Writes what the host socket takes of the connection's pending bytes; true when that
        /// left something owed to the guest (credit, or the reset that ends a closing connection).
        mutating func flush(_ connection: Connection) -> Bool {
            let capacity = VirtioVsock.ringCapacity
            while connection.pendingCount > 0 {
                let piece = min(connection.pendingCount, capacity - connection.pendingStart)
                let written = send(connection.fd, connection.pending.baseAddress! + connection.pendingStart, piece, Int32(MSG_DONTWAIT | MSG_NOSIGNAL))
                if written < 0 && errno == EINTR { continue }
                if written < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) { break }
                if written <= 0 {  // the host program is gone
                    drop(connection, reset: true)
                    return true
                }
                connection.pendingStart = (connection.pendingStart + written) % capacity
                connection.pendingCount -= written
                // The "OK" line is not guest payload; it was never counted as received.
                connection.forwarded = connection.received &- UInt32(min(connection.pendingCount, Int(connection.received &- connection.forwarded)))
            }
            if connection.pendingCount == 0 {
                if connection.closing {
                    drop(connection, reset: true)
                    return true
                }
                if connection.guestSendDone { shutdown(connection.fd, Int32(SHUT_WR)) }
            }
            // Tell the guest about freed space once a quarter of the buffer is free again, so a
            // guest waiting for credit always hears of it.
            if connection.forwarded &- connection.reportedForward >= VirtioVsock.bufferSize / 4 {
                connection.owesCredit = true
                return true
            }
            return false
        }

        /// Reads a host program's "CONNECT PORT\n"; true when it asked for a guest port (a REQUEST
        /// is owed).
        mutating func readHandshake(fd: Int32) -> Bool {
            guard let index = handshakes.firstIndex(where: { $0.fd == fd }) else { return false }
            var byte: UInt8 = 0
            while true {
                let count = recv(fd, &byte, 1, Int32(MSG_DONTWAIT))
                if count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR) { return false }
                guard count == 1, handshakes[index].line.count < 32 else { break }
                if byte != UInt8(ascii: "\n") { handshakes[index].line.append(byte); continue }
                let words = String(decoding: handshakes[index].line, as: UTF8.self).split(separator: " ")
                guard words.count == 2, words[0] == "CONNECT", let port = UInt32(words[1]) else { break }
                handshakes.remove(at: index)
                var hostPort = nextHostPort
                while connections.keys.contains(where: { $0 >> 32 == UInt64(hostPort) }) { hostPort = hostPort &+ 1 | 1 << 30 }
                nextHostPort = hostPort &+ 1 | 1 << 30
                let connection = Connection(fd: fd, hostPort: hostPort, guestPort: port, phase: .connecting)
                connection.owesRequest = true
                connections[Self.key(hostPort: hostPort, guestPort: port)] = connection
                return true
            }
            // End of file, an error, a line too long or not a CONNECT: the host program is refused.
            close(fd)
            handshakes.remove(at: index)
            return false
        }

        // MARK: To the guest

        /// The next packet owed to the guest, its header filled in; a RW packet's length and
        /// payload are decided by `readHostBytes` once a buffer is known.
        mutating func nextPacket(guestCID: UInt64) -> OutgoingPacket? {
            var header = PacketHeader()
            header.sourceCID = VirtioVsock.hostCID
            header.destinationCID = guestCID
            header.bufferAllocation = VirtioVsock.bufferSize
            if let (hostPort, guestPort) = owedResets.first {
                owedResets.removeFirst()
                header.sourcePort = hostPort; header.destinationPort = guestPort
                header.operation = Operation.reset.rawValue
                return OutgoingPacket(header: header, key: nil)
            }
            // Round robin from the connection after the last one served, so that one busy
            // connection cannot starve the others.
            guard !connections.isEmpty else { return nil }
            var index = cursor.flatMap { connections.index(forKey: $0) }.map { connections.index(after: $0) } ?? connections.startIndex
            for _ in 0..<connections.count {
                if index == connections.endIndex { index = connections.startIndex }
                let (key, connection) = connections[index]
                index = connections.index(after: index)
                header.sourcePort = connection.hostPort
                header.destinationPort = connection.guestPort
                header.forwardCount = connection.forwarded
                if connection.owesRequest {
                    connection.owesRequest = false
                    header.operation = Operation.request.rawValue
                } else if connection.owesResponse {
                    connection.owesResponse = false
                    header.operation = Operation.response.rawValue
                } else if connection.hostReadable && connection.wantsHostInput {
                    header.operation = Operation.readWrite.rawValue
                } else if connection.owesCredit {
                    header.operation = Operation.creditUpdate.rawValue
                } else {
                    continue
                }
                connection.owesCredit = false
                connection.reportedForward = connection.forwarded
                cursor = key
                return OutgoingPacket(header: header, key: key)
            }
            return nil
        }

        /// A packet taken by `nextPacket` found no receive buffer: it is owed again.
        mutating func giveBack(_ packet: OutgoingPacket) {
            guard let key = packet.key else {
                owedResets.insert((packet.header.sourcePort, packet.header.destinationPort), at: 0)
                return
            }
            guard let connection = connections[key] else { return }
            switch Operation(rawValue: packet.header.operation) {
            case .request: connection.owesRequest = true
            case .response: connection.owesResponse = true
            case .creditUpdate: connection.owesCredit = true
            default: break  // RW: the host bytes are still in the socket
            }
        }

        /// Reads up to `limit` bytes (and the guest's credit) from the connection's host socket
        /// and hands them to `deliver`; the packet comes back as RW with their length, as the
        /// SHUTDOWN owed when the socket ended, or with operation 0 when there was nothing to read.
        mutating func readHostBytes(for packet: OutgoingPacket, limit: Int, deliver: (UnsafeRawBufferPointer) -> Void) -> OutgoingPacket {
            let buffer = payload
            var packet = packet
            guard let key = packet.key, let connection = connections[key] else {
                packet.header.operation = 0
                return packet
            }
            let count = min(limit, Int(connection.peerCredit), buffer.count)
            var result: Int
            repeat { result = recv(connection.fd, buffer.baseAddress, count, Int32(MSG_DONTWAIT)) } while result < 0 && errno == EINTR
            if result > 0 {
                deliver(UnsafeRawBufferPointer(rebasing: buffer[..<result]))
                packet.header.length = UInt32(result)
                connection.sent &+= UInt32(result)
                counters.bytesToGuest += UInt64(result)
                return packet
            }
            connection.hostReadable = false
            if result < 0 && (errno == EAGAIN || errno == EWOULDBLOCK) || count == 0 {
                packet.header.operation = 0
                return packet
            }
            // End of file: the host program sends no more (it may still read: shutdown(SHUT_WR)),
            // so the guest hears SHUTDOWN with SEND; an error ends both directions.
            connection.hostEnded = true
            packet.header.operation = Operation.shutdown.rawValue
            packet.header.flags = result == 0 ? VirtioVsock.shutdownSend : VirtioVsock.shutdownReceive | VirtioVsock.shutdownSend
            return packet
        }
    }

    struct OutgoingPacket {
        var header: PacketHeader
        /// The key of the connection it belongs to; nil for a reset that answers a packet naming none.
        var key: UInt64?
    }
}

/// Calls `body` with a sockaddr_un for `path` and its length; -1 with ENAMETOOLONG when `path`
/// does not fit sun_path (vsock's sockets, and the management API's probe of its socket).
public func unixSocketAddress(_ path: String, _ body: (UnsafePointer<sockaddr>, socklen_t) -> Int32) -> Int32 {
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    let bytes = Array(path.utf8)
    let capacity = MemoryLayout.size(ofValue: address.sun_path)
    guard bytes.count < capacity else { errno = ENAMETOOLONG; return -1 }
    withUnsafeMutableBytes(of: &address.sun_path) { raw in
        raw.copyBytes(from: bytes)
        raw[bytes.count] = 0
    }
    return withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
}
