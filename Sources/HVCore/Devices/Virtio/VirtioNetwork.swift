// The network device (virtio 1.2, 5.1 "Network Device") on a host TAP interface: receiveq1
// (queue 0) takes frames the TAP delivers, transmitq1 (queue 1) sends the guest's frames to it.
// Frames keep their 12-byte virtio-net header both ways (the TAP is opened with IFF_VNET_HDR),
// so nothing is copied besides the frame itself: readv/writev go straight between the TAP and
// guest RAM. A receive thread waits for frames (poll) while the driver has buffers posted, and
// for a wake-up from the driver's next notification while it has none.
#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Foundation
import Synchronization

/// A MAC address, "52:54:00:12:34:56".
public struct MACAddress: Sendable, Equatable, CustomStringConvertible {
    public var bytes: [UInt8]

    public init?(parsing text: String) {
        let parts = text.split(separator: ":", omittingEmptySubsequences: false)
        guard parts.count == 6 else { return nil }
        let bytes = parts.compactMap { $0.count == 2 ? UInt8($0, radix: 16) : nil }
        guard bytes.count == 6 else { return nil }
        self.bytes = bytes
    }

    /// QEMU's default, a locally administered address.
    public static let qemuDefault = MACAddress(parsing: "52:54:00:12:34:56")!

    public var description: String {
        bytes.map { ($0 < 16 ? "0" : "") + String($0, radix: 16) }.joined(separator: ":")
    }
}

/// Where a network device's frames go: a file descriptor that reads and writes one frame (with
/// its 12-byte virtio-net header) per call, non-blocking: a TAP interface, or in tests one end
/// of a SOCK_SEQPACKET socket pair.
public protocol FrameEndpoint: AnyObject, Sendable {
    var frameDescriptor: Int32 { get }
    /// Which offloads the guest accepts on received frames; false when the endpoint cannot
    /// honour them (the device then offers none).
    func acceptOffloads(checksum: Bool, tso4: Bool, tso6: Bool) -> Bool
}

extension TAPDevice: FrameEndpoint {
    public var frameDescriptor: Int32 { fd }
    public func acceptOffloads(checksum: Bool, tso4: Bool, tso6: Bool) -> Bool {
        (try? setOffloads(checksum: checksum, tso4: tso4, tso6: tso6)) != nil
    }
}

public final class VirtioNetwork: VirtioDevice {
    /// Device feature bits (5.1.3).
    public enum Feature {
        /// The device takes frames with a partial checksum (the guest offloads it).
        public static let checksum: UInt64 = 1 << 0
        /// The driver takes frames with a partial checksum.
        public static let guestChecksum: UInt64 = 1 << 1
        public static let guestTSO4: UInt64 = 1 << 7
        public static let guestTSO6: UInt64 = 1 << 8
        public static let mac: UInt64 = 1 << 5
        /// The device takes TCP segments up to 64 KiB and segments them (the TAP does).
        public static let hostTSO4: UInt64 = 1 << 11
        public static let hostTSO6: UInt64 = 1 << 12
        public static let status: UInt64 = 1 << 16
        /// Checksum and segmentation offloads both ways, as a TAP with IFF_VNET_HDR carries them.
        public static let offloads: UInt64 = checksum | guestChecksum | guestTSO4 | guestTSO6 | hostTSO4 | hostTSO6
    }

    static let receiveQueue = 0, transmitQueue = 1
    static let queueSize: UInt16 = 256
    /// The most buffers one frame may span (a chain is at most the queue size).
    static let maximumPieces = Int(queueSize) + 2

    public var type: VirtioDeviceType { .network }
    public var name: String { "virtio-net" }
    public let features: UInt64
    public var queueSizes: [UInt16] { [Self.queueSize, Self.queueSize] }

    public let endpoint: any FrameEndpoint
    private let frames: Int32
    public let mac: MACAddress
    private let configuration: [UInt8]

    /// The chain and the iovec array a queue is served with (one per queue: the receive thread
    /// and a vCPU may serve the two queues at once).
    private struct Scratch: ~Copyable {
        var chain = VirtqueueChain()
        let vectors = UnsafeMutableBufferPointer<iovec>.allocate(capacity: VirtioNetwork.maximumPieces)
        deinit { vectors.deallocate() }
    }
    private let receiveScratch = Mutex(Scratch())
    private let transmitScratch = Mutex(Scratch())

    /// True while the driver has no receive buffers posted: the receive thread then waits for a
    /// wake-up instead of for frames (which it could not deliver).
    private let starved = Atomic<Bool>(true)
    private let running = Atomic<Bool>(true)
    private let wakeFD: Int32
    private let serveQueue = VirtioQueueCallback()
    /// The rate limits of each direction.
    private let receiveThrottle: QueueThrottle
    private let transmitThrottle: QueueThrottle

    /// The limits in force, received and transmitted.
    public var rateLimits: (receive: RateLimit, transmit: RateLimit) { (receiveThrottle.limit, transmitThrottle.limit) }

    /// Replaces the limits while the VM runs (the buckets start full); frames held back are
    /// served at once.
    public func setRateLimits(receive: RateLimit, transmit: RateLimit) {
        receiveThrottle.set(receive)
        transmitThrottle.set(transmit)
        serveQueue(Self.transmitQueue)
        serveQueue(Self.receiveQueue)
    }

    /// How many times a frame had to wait for a limit, received and transmitted.
    public var throttledFrames: (receive: UInt64, transmit: UInt64) { (receiveThrottle.throttledRequests, transmitThrottle.throttledRequests) }

    /// Counters: frames and bytes each way, frames the TAP refused and short frames dropped.
    private let counters = Mutex(Counters())
    public struct Counters: Sendable, Equatable {
        public var received: UInt64 = 0, receivedBytes: UInt64 = 0
        public var transmitted: UInt64 = 0, transmittedBytes: UInt64 = 0
        public var transmitErrors: UInt64 = 0
        /// Frames from the endpoint too short to hold their header (dropped).
        public var receiveErrors: UInt64 = 0
    }

    /// A network device on `endpoint` (a `TAPDevice`) whose guest sees `mac`; with `offloads`
    /// (and an endpoint that honours them) the guest may hand over and take partially
    /// checksummed frames and TCP segments up to 64 KiB, as with QEMU's and Firecracker's
    /// devices: far fewer frames, and exits, per byte.
    ///
    /// `receiveLimit` and `transmitLimit` bound the frames and bytes per second each way
    /// (Firecracker's rx and tx rate limiters; changeable with `setRateLimits`): a transmitted
    /// frame over the limit waits on the ring; a received one waits in the TAP's queue.
    public init(endpoint: any FrameEndpoint, mac: MACAddress = .qemuDefault, offloads: Bool = true,
                receiveLimit: RateLimit = .none, transmitLimit: RateLimit = .none, clock: (@Sendable () -> UInt64)? = nil) {
        self.receiveThrottle = QueueThrottle(receiveLimit, clock: clock)
        self.transmitThrottle = QueueThrottle(transmitLimit, clock: clock)
        self.endpoint = endpoint
        let offloads = offloads && endpoint.acceptOffloads(checksum: false, tso4: false, tso6: false)
        self.features = Feature.mac | Feature.status | (offloads ? Feature.offloads : 0)
        self.frames = endpoint.frameDescriptor
        self.mac = mac
        // struct virtio_net_config (5.1.4): mac, status (VIRTIO_NET_S_LINK_UP), max_virtqueue_pairs.
        self.configuration = mac.bytes + [1, 0, 1, 0]
        self.wakeFD = eventfd(0, Int32(EFD_NONBLOCK | EFD_CLOEXEC))
    }

    deinit {
        stop()
        close(wakeFD)
    }

    public var statistics: Counters { counters.withLock { $0 } }

    public func readConfiguration(offset: Int, width: Int) -> UInt64 {
        virtioConfigurationRead(configuration, offset: offset, width: width)
    }

    // MARK: Snapshots

    /// Frames are moved whole while the queue is served, so nothing is in flight; the offloads
    /// follow the restored features (`activate`). The state is the MAC address the guest
    /// knows, which the restoring VM must give again. Frames that reach the TAP while the VM is
    /// paused wait there; a restored VM's TAP starts empty, as a cable plugged elsewhere.
    public func saveState(to encoder: inout StateEncoder) {
        encoder.write(bytes: mac.bytes)
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let saved = try decoder.readBytes("virtio-net MAC address", atMost: 6)
        guard saved == mac.bytes else {
            var snapshots = mac
            snapshots.bytes = saved
            throw StateDecodingError(field: "virtio-net MAC address", problem: "is \(mac) here; the snapshot's was \(snapshots) (give the same --net mac=)")
        }
    }

    /// Starts the receive thread once the transport can be asked to serve the receive queue.
    public func connect(serve: @escaping @Sendable (Int) -> Void) {
        serveQueue.set(serve)
        // The thread holds the device only for one round at a time, so a device nobody else
        // holds goes away (and its thread with it) within a poll timeout.
        let thread = Thread { [weak self] in
            while let device = self, device.receiveOnce() {}
        }
        thread.name = "virtio-net-rx"
        thread.start()
    }

    /// Ends the receive thread.
    public func stop() {
        running.store(false, ordering: .releasing)
        wake()
    }

    private func wake() {
        var one: UInt64 = 1
        _ = write(wakeFD, &one, 8)
    }

    /// One round of the receive thread: wait (at most a second) for a frame or a wake-up. False
    /// once the device is stopped.
    private func receiveOnce() -> Bool {
        guard running.load(ordering: .acquiring) else { return false }
        var fds = (pollfd(fd: frames, events: starved.load(ordering: .acquiring) ? 0 : Int16(POLLIN), revents: 0),
                   pollfd(fd: wakeFD, events: Int16(POLLIN), revents: 0))
        let ready = withUnsafeMutableBytes(of: &fds) { poll($0.baseAddress!.assumingMemoryBound(to: pollfd.self), 2, 1000) }
        if ready < 0 { return errno == EINTR }
        if fds.1.revents & Int16(POLLIN) != 0 {
            var count: UInt64 = 0
            _ = read(wakeFD, &count, 8)
        }
        guard running.load(ordering: .acquiring) else { return false }
        if fds.0.revents & Int16(POLLIN) != 0 {
            // Starved until the device says otherwise: a transport that does not call the
            // device (the driver is not ready) must not leave this loop spinning on POLLIN.
            starved.store(true, ordering: .releasing)
            serveQueue(Self.receiveQueue)
        }
        return true
    }

    public func serve(queue index: Int, _ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        switch index {
        case Self.receiveQueue: try receive(&queue, memory: memory)
        case Self.transmitQueue: try transmit(&queue, memory: memory)
        default: false
        }
    }

    /// Moves frames from the TAP into posted receive buffers until one of them runs out.
    private func receive(_ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        let wasStarved = starved.load(ordering: .acquiring)
        var used = false, nowStarved = false
        try receiveScratch.withLock { (scratch) throws(VirtioDeviceError) in
            while true {
                guard queue.hasAvailable(memory: memory) else { nowStarved = true; break }
                guard try queue.popRequest(into: &scratch.chain, memory: memory) else { nowStarved = true; break }
                guard scratch.chain.writableLength >= UInt64(TAPDevice.headerSize) else {
                    throw .malformedRequest("a receive buffer of \(scratch.chain.writableLength) bytes cannot hold the \(TAPDevice.headerSize)-byte header")
                }
                // Over the receive limit: frames wait in the TAP until the bucket refills (its
                // size is known only once read, so it is charged after the fact).
                if let wait = receiveThrottle.admit(bytes: 0) {
                    queue.undoPop(memory: memory)
                    nowStarved = true
                    receiveThrottle.retry(after: wait) { [serveQueue] in serveQueue(Self.receiveQueue) }
                    break
                }
                let count = gather(scratch.chain, writable: true, into: scratch.vectors, memory: memory)
                let result = readv(frames, scratch.vectors.baseAddress, Int32(count))
                if result <= 0 {
                    queue.undoPop(memory: memory)  // no frame waiting (EAGAIN) or a TAP error
                    receiveThrottle.refundOperation()
                    break
                }
                // A frame shorter than its header (an endpoint that is not a TAP with vnet
                // headers) is dropped; the buffer waits for the next one (found by fuzz-virtio).
                guard result >= Int(TAPDevice.headerSize) else {
                    queue.undoPop(memory: memory)
                    counters.withLock { $0.receiveErrors += 1 }
                    continue
                }
                // num_buffers (5.1.6.4): one buffer per frame without VIRTIO_NET_F_MRG_RXBUF.
                var one = UInt16(1).littleEndian
                withUnsafeBytes(of: &one) { _ = scratch.chain.copyIn($0, at: 10, memory: memory) }
                queue.push(head: scratch.chain.head, written: UInt32(result), memory: memory)
                receiveThrottle.charge(bytes: UInt64(result) - UInt64(TAPDevice.headerSize))
                counters.withLock { $0.received += 1; $0.receivedBytes += UInt64(result) - UInt64(TAPDevice.headerSize) }
                used = true
            }
        }
        starved.store(nowStarved, ordering: .releasing)
        if wasStarved && !nowStarved { wake() }
        return used
    }

    /// Sends every frame the driver made available.
    private func transmit(_ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        try transmitScratch.withLock { (scratch) throws(VirtioDeviceError) -> Bool in
            var used = false
            while true {
                guard try queue.popRequest(into: &scratch.chain, memory: memory) else { break }
                guard scratch.chain.readableLength >= UInt64(TAPDevice.headerSize) else {
                    throw .malformedRequest("a transmitted frame of \(scratch.chain.readableLength) bytes has no \(TAPDevice.headerSize)-byte header")
                }
                // Over the transmit limit: the frame goes back on the ring until the bucket refills.
                if let wait = transmitThrottle.admit(bytes: scratch.chain.readableLength - UInt64(TAPDevice.headerSize)) {
                    queue.undoPop(memory: memory)
                    transmitThrottle.retry(after: wait) { [serveQueue] in serveQueue(Self.transmitQueue) }
                    break
                }
                let count = gather(scratch.chain, writable: false, into: scratch.vectors, memory: memory)
                let result = writev(frames, scratch.vectors.baseAddress, Int32(count))
                // A frame the TAP refuses (its queue is full, the interface is down) is dropped,
                // as a real NIC drops on a dead link; the driver still gets its buffer back.
                counters.withLock {
                    if result < 0 { $0.transmitErrors += 1 } else {
                        $0.transmitted += 1
                        $0.transmittedBytes += UInt64(result) - UInt64(TAPDevice.headerSize)
                    }
                }
                queue.push(head: scratch.chain.head, written: 0, memory: memory)
                used = true
            }
            return used
        }
    }

    /// Fills `vectors` with the chain's readable or writable pieces; returns how many.
    private func gather(_ chain: VirtqueueChain, writable: Bool, into vectors: UnsafeMutableBufferPointer<iovec>,
                        memory: GuestMemory) -> Int {
        var count = 0
        let length = writable ? chain.writableLength : chain.readableLength
        chain.forEachPiece(writable: writable, range: 0..<length, memory: memory) { pointer, size in
            guard count < vectors.count else { return }
            vectors[count] = iovec(iov_base: pointer, iov_len: size)
            count += 1
        }
        return count
    }

    /// The driver's choice of receive offloads goes to the endpoint (5.1.6.3: the device may
    /// hand over only what the driver accepted).
    public func activate(features: UInt64) {
        _ = endpoint.acceptOffloads(checksum: features & Feature.guestChecksum != 0,
                                    tso4: features & Feature.guestTSO4 != 0, tso6: features & Feature.guestTSO6 != 0)
    }

    public func reset() {
        starved.store(true, ordering: .releasing)
        _ = endpoint.acceptOffloads(checksum: false, tso4: false, tso6: false)
    }
}
