// The split virtqueue (virtio 1.2, 2.7 "Split Virtqueues"): the driver's descriptor table and
// available ring, the device's used ring, all in guest RAM. Everything read from them is the
// guest's to choose, so every index, address, length and chain is checked before it is used:
// a malformed queue is a `VirtqueueError`, never a trap or a host allocation of the guest's size.
import Synchronization

/// One buffer of a descriptor chain: `length` bytes of guest RAM at `address`, which the device
/// may write (`writable`) or only read.
public struct VirtqueueBuffer: Sendable, Equatable {
    public var address: GuestPhysicalAddress
    public var length: UInt32
    public var writable: Bool

    public init(address: GuestPhysicalAddress, length: UInt32, writable: Bool) {
        self.address = address
        self.length = length
        self.writable = writable
    }
}

/// What was wrong with a queue the driver set up or a chain it made available. The device
/// answers each by setting DEVICE_NEEDS_RESET (2.1.1), as the specification asks of a device
/// that finds the driver broke a rule it cannot recover from.
public enum VirtqueueError: Error, Equatable, CustomStringConvertible {
    /// QueueNum is 0, not a power of two, or above the device's maximum (2.7: "Queue Size
    /// value is always a power of 2").
    case invalidSize(UInt16, maximum: UInt16)
    /// A ring is not inside guest RAM or not aligned as 2.7 "Table 2.3" requires.
    case ringOutsideMemory(area: String, address: UInt64, length: UInt64)
    case misalignedRing(area: String, address: UInt64, alignment: UInt64)
    /// The available index moved ahead of the device by more than the queue holds.
    case availableIndexJump(from: UInt16, to: UInt16, size: UInt16)
    /// A head or `next` index at or above the queue (or indirect table) size.
    case descriptorIndexOutOfRange(index: UInt16, size: UInt32)
    /// A chain longer than the descriptors there are: it loops (2.7.5.3.1: "the number of
    /// descriptors in a chain MUST NOT exceed the queue size").
    case chainLoops(limit: UInt32)
    /// A buffer that is not inside one region of guest RAM.
    case bufferOutsideMemory(address: UInt64, length: UInt32)
    /// An indirect descriptor without VIRTIO_F_INDIRECT_DESC, inside an indirect table, not at
    /// a chain's head, with NEXT set, or with a length that is zero or not a multiple of 16
    /// (2.7.5.3.1).
    case invalidIndirect(String)
    /// A device-readable buffer after a device-writable one (2.7.4.2).
    case readableAfterWritable(index: UInt16)
    /// The chain's buffers add up to more than 4 GiB.
    case chainTooLarge

    public var description: String {
        switch self {
        case let .invalidSize(size, maximum):
            "queue size \(size) is invalid; expected a power of two from 1 to \(maximum)"
        case let .ringOutsideMemory(area, address, length):
            "the \(area) at \(hex(address)) (\(length) bytes) is not inside guest RAM"
        case let .misalignedRing(area, address, alignment):
            "the \(area) at \(hex(address)) is not \(alignment)-byte aligned"
        case let .availableIndexJump(from, to, size):
            "the available index moved from \(from) to \(to), more than the queue's \(size) entries"
        case let .descriptorIndexOutOfRange(index, size):
            "descriptor index \(index) is outside the table of \(size)"
        case .chainLoops(let limit):
            "a descriptor chain is longer than \(limit) descriptors (it loops)"
        case let .bufferOutsideMemory(address, length):
            "a buffer at \(hex(address)) (\(length) bytes) is not inside guest RAM"
        case .invalidIndirect(let why):
            "invalid indirect descriptor: \(why)"
        case .readableAfterWritable(let index):
            "descriptor \(index) is device-readable but follows a device-writable one"
        case .chainTooLarge:
            "a descriptor chain's buffers add up to more than 4 GiB"
        }
    }
}

/// A chain popped from the available ring: its head (the id the used ring gives back) and its
/// buffers, readable ones first. Devices reuse one chain value, so popping allocates nothing
/// once its buffer array has grown to the queue's size.
public struct VirtqueueChain: Sendable {
    public internal(set) var head: UInt16 = 0
    public internal(set) var buffers: [VirtqueueBuffer] = []
    /// Bytes in the device-readable and the device-writable buffers.
    public internal(set) var readableLength: UInt64 = 0
    public internal(set) var writableLength: UInt64 = 0
    /// A writable buffer was seen (readable ones may not follow, even after an empty one).
    var sawWritable = false

    public init() {}

    /// Calls `body` with a host pointer and length for each piece of the bytes `range` of the
    /// chain's readable (or writable) buffers, taken as one byte string in order. The range must
    /// lie within `readableLength` (`writableLength`). Buffers were checked against guest RAM
    /// when the chain was popped.
    public func forEachPiece<E: Error>(writable: Bool, range: Range<UInt64>, memory: GuestMemory,
                                       _ body: (UnsafeMutableRawPointer, Int) throws(E) -> Void) throws(E) {
        var position: UInt64 = 0
        for buffer in buffers where buffer.writable == writable {
            let start = position, end = position + UInt64(buffer.length)
            position = end
            let low = max(start, range.lowerBound), high = min(end, range.upperBound)
            guard low < high else {
                if start >= range.upperBound { return }
                continue
            }
            // Checked when the chain was popped; a failure here means the memory object changed.
            let address = GuestPhysicalAddress(buffer.address.rawValue + (low - start))
            guard let pointer = try? memory.hostPointer(for: address, length: high - low) else { return }
            // What the device writes here is the host's write, which KVM's dirty log misses:
            // live migration needs the page again.
            if writable { memory.noteHostWrite(address, high - low) }
            try body(pointer, Int(high - low))
        }
    }

    /// Copies up to `destination.count` bytes from offset `offset` of the readable bytes; returns
    /// how many were copied.
    @discardableResult
    public func copyOut(from offset: UInt64, into destination: UnsafeMutableRawBufferPointer, memory: GuestMemory) -> Int {
        guard offset < readableLength, let base = destination.baseAddress else { return 0 }
        let end = min(readableLength, offset + UInt64(destination.count))
        var copied = 0
        forEachPiece(writable: false, range: offset..<end, memory: memory) { pointer, count in
            (base + copied).copyMemory(from: pointer, byteCount: count)
            copied += count
        }
        return copied
    }

    /// Copies `source` into the writable bytes at `offset`, as far as they reach; returns how
    /// many bytes were written.
    @discardableResult
    public func copyIn(_ source: UnsafeRawBufferPointer, at offset: UInt64, memory: GuestMemory) -> Int {
        guard offset < writableLength, let base = source.baseAddress else { return 0 }
        let end = min(writableLength, offset + UInt64(source.count))
        var copied = 0
        forEachPiece(writable: true, range: offset..<end, memory: memory) { pointer, count in
            pointer.copyMemory(from: base + copied, byteCount: count)
            copied += count
        }
        return copied
    }

    /// Reads a little-endian integer at `offset` of the readable bytes, or nil when they end first.
    public func readInteger<T: FixedWidthInteger>(_ type: T.Type = T.self, at offset: UInt64, memory: GuestMemory) -> T? {
        var value: T = 0
        let copied = withUnsafeMutableBytes(of: &value) { copyOut(from: offset, into: $0, memory: memory) }
        return copied == MemoryLayout<T>.size ? T(littleEndian: value) : nil
    }
}

/// One split virtqueue as the device sees it: the addresses the driver configured, and the
/// device's positions in the available and used rings.
public struct Virtqueue: Sendable {
    /// Descriptor flags (2.7.5).
    static let next: UInt16 = 1, write: UInt16 = 2, indirect: UInt16 = 4
    /// VIRTQ_AVAIL_F_NO_INTERRUPT (2.7.6).
    static let noInterrupt: UInt16 = 1

    /// The largest size the device accepts (QueueNumMax).
    public let maximumSize: UInt16
    /// QueueNum, the size the driver chose.
    public var size: UInt16
    /// QueueDesc, QueueDriver (available ring) and QueueDevice (used ring).
    public var descriptorTable: UInt64 = 0
    public var driverArea: UInt64 = 0
    public var deviceArea: UInt64 = 0
    /// QueueReady: the driver finished setting the queue up and it passed `validate`.
    public internal(set) var ready = false
    /// VIRTIO_F_EVENT_IDX and VIRTIO_F_INDIRECT_DESC as negotiated.
    public internal(set) var eventIndex = false
    public internal(set) var indirectDescriptors = false
    /// The next available-ring entry the device will take (last_avail_idx).
    public private(set) var nextAvailable: UInt16 = 0
    /// The next used-ring entry the device will fill (the used index it publishes).
    public private(set) var nextUsed: UInt16 = 0
    /// The used index at the last interrupt decision (event-index suppression, 2.7.10).
    private var signalledUsed: UInt16 = 0
    private var signalledUsedValid = false

    public init(maximumSize: UInt16) {
        self.maximumSize = maximumSize
        self.size = maximumSize
    }

    /// Back to the state after a device reset: not ready, positions at 0, size at the maximum.
    public mutating func reset() {
        self = Virtqueue(maximumSize: maximumSize)
    }

    /// Checks the size and the three areas (2.7 Table 2.3: alignment 16, 2 and 4) and marks the
    /// queue ready, with the negotiated ring features.
    public mutating func activate(memory: GuestMemory, eventIndex: Bool, indirectDescriptors: Bool) throws(VirtqueueError) {
        guard size > 0, size <= maximumSize, size & (size - 1) == 0 else {
            throw .invalidSize(size, maximum: maximumSize)
        }
        let n = UInt64(size), tail: UInt64 = eventIndex ? 2 : 0
        try Self.check(area: "descriptor table", at: descriptorTable, length: 16 * n, alignment: 16, memory: memory)
        try Self.check(area: "available ring", at: driverArea, length: 4 + 2 * n + tail, alignment: 2, memory: memory)
        try Self.check(area: "used ring", at: deviceArea, length: 4 + 8 * n + tail, alignment: 4, memory: memory)
        self.eventIndex = eventIndex
        self.indirectDescriptors = indirectDescriptors
        nextAvailable = 0
        nextUsed = 0
        signalledUsedValid = false
        ready = true
    }

    private static func check(area: String, at address: UInt64, length: UInt64, alignment: UInt64,
                              memory: GuestMemory) throws(VirtqueueError) {
        guard address % alignment == 0 else { throw .misalignedRing(area: area, address: address, alignment: alignment) }
        guard memory.contains(GuestPhysicalAddress(address), length: length) else {
            throw .ringOutsideMemory(area: area, address: address, length: length)
        }
    }

    // Ring fields (2.7.6, 2.7.8). The areas were checked at activation, so these reads cannot
    // fail while the memory object lives; a failure reads as 0.
    private func availableIndex(_ memory: GuestMemory) -> UInt16 {
        (try? memory.read(UInt16.self, at: GuestPhysicalAddress(driverArea + 2))) ?? 0
    }

    /// True when the driver has made chains available that the device has not taken. With
    /// VIRTIO_F_EVENT_IDX this also asks the driver to notify at the next one (avail_event),
    /// re-checking after the fence so a chain added meanwhile is not missed.
    public mutating func hasAvailable(memory: GuestMemory) -> Bool {
        guard ready else { return false }
        if availableIndex(memory) != nextAvailable { return true }
        guard eventIndex else { return false }
        try? memory.write(nextAvailable, at: GuestPhysicalAddress(deviceArea + 4 + 8 * UInt64(size)))
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        return availableIndex(memory) != nextAvailable
    }

    /// Takes the next available chain into `chain` and returns true, or returns false when the
    /// ring is empty. Throws when the ring or the chain breaks a rule; the entry is consumed.
    public mutating func pop(into chain: inout VirtqueueChain, memory: GuestMemory) throws(VirtqueueError) -> Bool {
        guard ready else { return false }
        let available = availableIndex(memory)
        let pending = available &- nextAvailable
        if pending == 0 { return false }
        guard pending <= size else { throw .availableIndexJump(from: nextAvailable, to: available, size: size) }
        // The ring entries are read after the index (the driver wrote them before it).
        atomicMemoryFence(ordering: .acquiring)
        let slot = UInt64(nextAvailable % size)
        let head = (try? memory.read(UInt16.self, at: GuestPhysicalAddress(driverArea + 4 + 2 * slot))) ?? 0
        nextAvailable &+= 1
        if eventIndex {
            try? memory.write(nextAvailable, at: GuestPhysicalAddress(deviceArea + 4 + 8 * UInt64(size)))
        }
        chain.head = head
        chain.buffers.removeAll(keepingCapacity: true)
        chain.readableLength = 0
        chain.writableLength = 0
        chain.sawWritable = false
        try walk(from: head, table: descriptorTable, tableSize: UInt32(size), inIndirect: false, into: &chain, memory: memory)
        return true
    }

    /// Puts the chain `pop` just took back on the available ring (a rate-limited device serves
    /// it later). Only right after a `pop` that returned true.
    public mutating func undoPop(memory: GuestMemory) {
        guard ready else { return }
        nextAvailable &-= 1
        if eventIndex {
            try? memory.write(nextAvailable, at: GuestPhysicalAddress(deviceArea + 4 + 8 * UInt64(size)))
        }
    }

    /// Follows a chain through the table at `table` of `tableSize` descriptors.
    private func walk(from first: UInt16, table: UInt64, tableSize: UInt32, inIndirect: Bool,
                      into chain: inout VirtqueueChain, memory: GuestMemory) throws(VirtqueueError) {
        var index = first
        var count: UInt32 = 0
        while true {
            guard UInt32(index) < tableSize else { throw .descriptorIndexOutOfRange(index: index, size: tableSize) }
            count += 1
            guard count <= tableSize else { throw .chainLoops(limit: tableSize) }
            let entry = GuestPhysicalAddress(table + 16 * UInt64(index))
            guard let address = try? memory.read(UInt64.self, at: entry),
                  let length = try? memory.read(UInt32.self, at: GuestPhysicalAddress(entry.rawValue + 8)),
                  let flags = try? memory.read(UInt16.self, at: GuestPhysicalAddress(entry.rawValue + 12)),
                  let next = try? memory.read(UInt16.self, at: GuestPhysicalAddress(entry.rawValue + 14))
            else { throw .bufferOutsideMemory(address: entry.rawValue, length: 16) }

            if flags & Self.indirect != 0 {
                guard indirectDescriptors else { throw .invalidIndirect("VIRTIO_F_INDIRECT_DESC was not negotiated") }
                guard !inIndirect else { throw .invalidIndirect("an indirect table may not point to another") }
                guard count == 1, flags & Self.next == 0 else {
                    throw .invalidIndirect("it must be the only descriptor of its chain, without NEXT")
                }
                guard length > 0, length % 16 == 0 else {
                    throw .invalidIndirect("its table length \(length) is not a non-zero multiple of 16")
                }
                guard memory.contains(GuestPhysicalAddress(address), length: UInt64(length)) else {
                    throw .bufferOutsideMemory(address: address, length: length)
                }
                try walk(from: 0, table: address, tableSize: length / 16, inIndirect: true, into: &chain, memory: memory)
                return
            }

            let writable = flags & Self.write != 0
            if !writable, chain.sawWritable { throw .readableAfterWritable(index: index) }
            if writable { chain.sawWritable = true }
            guard memory.contains(GuestPhysicalAddress(address), length: UInt64(length)) else {
                throw .bufferOutsideMemory(address: address, length: length)
            }
            if writable { chain.writableLength += UInt64(length) } else { chain.readableLength += UInt64(length) }
            guard chain.readableLength + chain.writableLength <= UInt64(UInt32.max) else { throw .chainTooLarge }
            chain.buffers.append(VirtqueueBuffer(address: GuestPhysicalAddress(address), length: length, writable: writable))
            guard flags & Self.next != 0 else { return }
            index = next
        }
    }

    /// Returns chain `head` to the driver through the used ring with `written` bytes written.
    public mutating func push(head: UInt16, written: UInt32, memory: GuestMemory) {
        guard ready else { return }
        let slot = UInt64(nextUsed % size)
        let element = GuestPhysicalAddress(deviceArea + 4 + 8 * slot)
        try? memory.write(UInt32(head), at: element)
        try? memory.write(written, at: GuestPhysicalAddress(element.rawValue + 4))
        // The element is visible before the index that publishes it (2.7.8.2).
        atomicMemoryFence(ordering: .releasing)
        nextUsed &+= 1
        try? memory.write(nextUsed, at: GuestPhysicalAddress(deviceArea + 2))
    }

    /// Whether the driver wants an interrupt for what was used since the last decision:
    /// VIRTQ_AVAIL_F_NO_INTERRUPT, or with VIRTIO_F_EVENT_IDX the used_event threshold
    /// (2.7.10: interrupt when the used index passed used_event since the last interrupt).
    public mutating func needsInterrupt(memory: GuestMemory) -> Bool {
        guard ready else { return false }
        atomicMemoryFence(ordering: .sequentiallyConsistent)
        if eventIndex {
            let usedEvent = (try? memory.read(UInt16.self, at: GuestPhysicalAddress(driverArea + 4 + 2 * UInt64(size)))) ?? 0
            let old = signalledUsed, new = nextUsed, valid = signalledUsedValid
            signalledUsed = new
            signalledUsedValid = true
            return !valid || new &- usedEvent &- 1 < new &- old
        }
        let flags = (try? memory.read(UInt16.self, at: GuestPhysicalAddress(driverArea))) ?? 0
        return flags & Self.noInterrupt == 0
    }
}

private func hex(_ value: UInt64) -> String { "0x" + String(value, radix: 16) }

// MARK: Snapshot

extension Virtqueue {
    /// The queue as the driver set it up and as far as the device got: size, the three areas,
    /// ready, the ring features, and the device's positions in both rings (QEMU's
    /// `vmstate_virtqueue` keeps the same: last_avail_idx, used_idx, signalled_used).
    func saveState(to encoder: inout StateEncoder) {
        encoder.write(size)
        encoder.write(descriptorTable)
        encoder.write(driverArea)
        encoder.write(deviceArea)
        encoder.write(ready)
        encoder.write(eventIndex)
        encoder.write(indirectDescriptors)
        encoder.write(nextAvailable)
        encoder.write(nextUsed)
        encoder.write(signalledUsed)
        encoder.write(signalledUsedValid)
    }

    /// Reads what `saveState` wrote into a queue of this device's maximum size; a ready queue's
    /// rings are checked against guest RAM (the snapshot's memory) as at QueueReady.
    mutating func restoreState(from decoder: inout StateDecoder, field: String, memory: GuestMemory) throws(StateDecodingError) {
        var queue = Virtqueue(maximumSize: maximumSize)
        queue.size = try decoder.read(UInt16.self, "\(field) size")
        queue.descriptorTable = try decoder.read(UInt64.self, "\(field) descriptor table")
        queue.driverArea = try decoder.read(UInt64.self, "\(field) driver area")
        queue.deviceArea = try decoder.read(UInt64.self, "\(field) device area")
        let ready = try decoder.read(Bool.self, "\(field) ready")
        let eventIndex = try decoder.read(Bool.self, "\(field) event index")
        let indirect = try decoder.read(Bool.self, "\(field) indirect descriptors")
        let nextAvailable = try decoder.read(UInt16.self, "\(field) next available")
        let nextUsed = try decoder.read(UInt16.self, "\(field) next used")
        let signalledUsed = try decoder.read(UInt16.self, "\(field) signalled used")
        let signalledUsedValid = try decoder.read(Bool.self, "\(field) signalled used valid")
        if ready {
            do throws(VirtqueueError) {
                try queue.activate(memory: memory, eventIndex: eventIndex, indirectDescriptors: indirect)
            } catch {
                throw StateDecodingError(field: field, problem: "\(error)")
            }
            queue.nextAvailable = nextAvailable
            queue.nextUsed = nextUsed
            queue.signalledUsed = signalledUsed
            queue.signalledUsedValid = signalledUsedValid
        } else if queue.size > maximumSize {
            throw StateDecodingError(field: "\(field) size", problem: "\(queue.size) is above this device's maximum of \(maximumSize)")
        }
        self = queue
    }
}
