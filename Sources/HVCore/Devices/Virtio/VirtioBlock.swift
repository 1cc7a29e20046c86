// The block device (virtio 1.2, 5.2 "Block Device") on a raw image file: reads, writes,
// flush, discard and write-zeroes, and the serial id. A request is a 16-byte header (type,
// reserved, sector), the data, and a status byte the device writes last; with
// VIRTIO_F_VERSION_1 the driver may split them across buffers any way it likes (2.6.4), so the
// device reads the chain as one byte string. Every sector range is checked against the
// image's capacity before the file is touched.
#if canImport(Glibc)
import Glibc
#endif
import CKVM
import Dispatch
import Synchronization

/// Why an image cannot back a virtio-blk device.
public struct VirtioBlockError: Error, Equatable, CustomStringConvertible {
    public var path: String
    public var problem: String
    public init(path: String, problem: String) {
        self.path = path
        self.problem = problem
    }
    public var description: String { "\(path): \(problem)" }
}

public final class VirtioBlock: VirtioDevice {
    /// Device feature bits (5.2.3).
    public enum Feature {
        public static let segmentMaximum: UInt64 = 1 << 2
        public static let readOnly: UInt64 = 1 << 5
        public static let blockSize: UInt64 = 1 << 6
        public static let flush: UInt64 = 1 << 9
        public static let discard: UInt64 = 1 << 13
        public static let writeZeroes: UInt64 = 1 << 14
    }

    /// Request types and status values (5.2.6).
    enum RequestType: UInt32 {
        case read = 0, write = 1, flush = 4, getID = 8, discard = 11, writeZeroes = 13
    }
    enum Status: UInt8 { case ok = 0, ioError = 1, unsupported = 2 }

    public static let sectorSize: UInt64 = 512
    static let queueSize: UInt16 = 256
    /// Segments per discard or write-zeroes request, and sectors per segment.
    static let maximumRangeSegments: UInt32 = 32
    static let maximumRangeSectors: UInt32 = 0x3F_FFFF
    /// The serial id's length (VIRTIO_BLK_ID_BYTES).
    public static let serialLength = 20

    public var type: VirtioDeviceType { .block }
    public let name: String
    public let features: UInt64
    public var queueSizes: [UInt16] { [Self.queueSize] }

    public let path: String
    public let readOnly: Bool
    /// Capacity in 512-byte sectors (a trailing partial sector of the image is not used).
    public let sectors: UInt64
    public let serial: [UInt8]
    private let fd: Int32
    /// The image opened again with O_DIRECT (`direct:`), for transfers whose guest buffer, length
    /// and offset are aligned as it requires; -1 without.
    private let directFD: Int32
    /// Transfers that went through O_DIRECT, and those that fell back to the page cache.
    private let directCounts = Mutex((direct: UInt64(0), buffered: UInt64(0)))
    private let configuration: [UInt8]
    private let chain = Mutex(VirtqueueChain())

    /// The rate limit.
    private let throttle: QueueThrottle
    private let serveQueue = VirtioQueueCallback()

    /// Opens `path` (read-only when `readOnly`) and takes an advisory lock on it, shared when
    /// read-only and exclusive otherwise, so two VMs cannot write one image. `serial` (up to 20
    /// bytes) is what the guest reads as the disk's serial number.
    /// `rateLimit` bounds the disk's bytes and requests per second (changeable later with
    /// `setRateLimit`); `clock` (monotonic nanoseconds) is for tests.
    ///
    /// With `direct`, reads and writes bypass the host's page cache (O_DIRECT, as QEMU's
    /// `cache=none`): the guest's own cache is the only one, and host memory is not spent twice.
    /// A transfer O_DIRECT cannot take (a guest buffer not aligned to 512 bytes, a file system
    /// with larger blocks) goes through the page cache instead, which the kernel keeps coherent
    /// with direct I/O.
    ///
    /// With `claim` false the lock is not taken yet: a live migration's destination opens the
    /// image while the source still runs on it, and takes the lock with `claimBacking()`
    /// once the source let go.
    public init(path: String, readOnly: Bool = false, serial: String? = nil, direct: Bool = false, rateLimit: RateLimit = .none,
                clock: (@Sendable () -> UInt64)? = nil, claim: Bool = true) throws(VirtioBlockError) {
        let serialBytes = Array((serial ?? "").utf8)
        guard serialBytes.count <= Self.serialLength else {
            throw VirtioBlockError(path: path, problem: "serial \"\(serial ?? "")\" is \(serialBytes.count) bytes; at most \(Self.serialLength)")
        }
        let fd = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC)
        guard fd >= 0 else { throw VirtioBlockError(path: path, problem: String(cString: strerror(errno))) }
        var info = stat()
        guard fstat(fd, &info) == 0 else {
            let problem = String(cString: strerror(errno))
            close(fd)
            throw VirtioBlockError(path: path, problem: problem)
        }
        guard info.st_mode & S_IFMT == S_IFREG || info.st_mode & S_IFMT == S_IFBLK else {
            close(fd)
            throw VirtioBlockError(path: path, problem: "is not a regular file or a block device")
        }
        if claim, let problem = Self.lock(fd, readOnly: readOnly, waiting: 0) {
            close(fd)
            throw VirtioBlockError(path: path, problem: problem)
        }
        var directFD: Int32 = -1
        if direct {
            directFD = open(path, (readOnly ? O_RDONLY : O_RDWR) | O_CLOEXEC | HV_O_DIRECT)
            guard directFD >= 0 else {
                let problem = errno == EINVAL ? "its file system does not support O_DIRECT (leave out direct)" : String(cString: strerror(errno))
                close(fd)
                throw VirtioBlockError(path: path, problem: problem)
            }
        }
        var bytes = UInt64(info.st_size)
        if info.st_mode & S_IFMT == S_IFBLK {
            let end = lseek(fd, 0, SEEK_END)
            bytes = end > 0 ? UInt64(end) : 0
        }
        self.fd = fd
        self.directFD = directFD
        self.path = path
        self.readOnly = readOnly
        self.sectors = bytes / Self.sectorSize
        self.serial = serialBytes
        self.name = "virtio-blk"
        var features = Feature.segmentMaximum | Feature.blockSize | Feature.flush
        features |= readOnly ? Feature.readOnly : Feature.discard | Feature.writeZeroes
        self.features = features
        self.configuration = Self.configurationSpace(sectors: bytes / Self.sectorSize)
        self.throttle = QueueThrottle(rateLimit, clock: clock)
    }

    public func connect(serve: @escaping @Sendable (Int) -> Void) { serveQueue.set(serve) }

    /// Takes the advisory lock (shared for a read-only image), waiting up to `seconds` for a
    /// process that is letting go, or says why it could not.
    private static func lock(_ fd: Int32, readOnly: Bool, waiting seconds: Double) -> String? {
        guard let error = lockFile(fd, exclusive: !readOnly, waiting: seconds) else { return nil }
        return error == EWOULDBLOCK ? "is in use by another process (it holds a lock on it)" : String(cString: strerror(error))
    }

    /// The limit in force.
    public var rateLimit: RateLimit { throttle.limit }

    /// Replaces the limit while the VM runs (the buckets start full); requests held back by the
    /// old limit are served at once.
    public func setRateLimit(_ limit: RateLimit) {
        throttle.set(limit)
        serveQueue(0)
    }

    /// How many times a request had to wait for the rate limit.
    public var throttledRequests: UInt64 { throttle.throttledRequests }

    deinit {
        close(fd)
        if directFD >= 0 { close(directFD) }
    }

    /// Whether transfers may bypass the page cache (`direct:`).
    public var direct: Bool { directFD >= 0 }
    /// With `direct`: the transfers (one per guest buffer) that went through O_DIRECT, and
    /// those that went through the page cache because O_DIRECT could not take them.
    public var directTransfers: (direct: UInt64, buffered: UInt64) { directCounts.withLock { $0 } }

    /// struct virtio_blk_config (5.2.4), the fields up to write_zeroes_may_unmap.
    static func configurationSpace(sectors: UInt64) -> [UInt8] {
        var bytes = [UInt8](repeating: 0, count: 60)
        func put(_ value: UInt64, at offset: Int, width: Int) {
            for index in 0..<width { bytes[offset + index] = UInt8(truncatingIfNeeded: value >> (8 * UInt64(index))) }
        }
        put(sectors, at: 0, width: 8)                                    // capacity
        put(UInt64(queueSize) - 2, at: 12, width: 4)                      // seg_max
        put(sectorSize, at: 20, width: 4)                                 // blk_size
        put(1, at: 34, width: 2)                                          // num_queues
        put(UInt64(maximumRangeSectors), at: 36, width: 4)                // max_discard_sectors
        put(UInt64(maximumRangeSegments), at: 40, width: 4)               // max_discard_seg
        put(8, at: 44, width: 4)                                          // discard_sector_alignment (4 KiB)
        put(UInt64(maximumRangeSectors), at: 48, width: 4)                // max_write_zeroes_sectors
        put(UInt64(maximumRangeSegments), at: 52, width: 4)               // max_write_zeroes_seg
        put(1, at: 56, width: 1)                                          // write_zeroes_may_unmap
        return bytes
    }

    public func readConfiguration(offset: Int, width: Int) -> UInt64 {
        virtioConfigurationRead(configuration, offset: offset, width: width)
    }

    // MARK: Snapshots

    /// Requests are finished when they are taken, so nothing is in flight: the state is the
    /// disk's shape, which the restoring VM's disk must have. The image itself is not part of
    /// a snapshot (as in Firecracker): restore with the disk as it was when the snapshot was
    /// taken (Documentation/Snapshots.md, "Virtio devices").
    public func saveState(to encoder: inout StateEncoder) {
        encoder.write(sectors)
        encoder.write(readOnly)
    }

    public func restoreState(from decoder: inout StateDecoder) throws(StateDecodingError) {
        let saved = try decoder.read(UInt64.self, "virtio-blk sectors")
        let savedReadOnly = try decoder.read(Bool.self, "virtio-blk read-only")
        guard saved == sectors else {
            throw StateDecodingError(field: "virtio-blk \(path)", problem: "has \(sectors) sectors; the snapshot's disk had \(saved) (the guest knows its size)")
        }
        guard savedReadOnly == readOnly else {
            throw StateDecodingError(field: "virtio-blk \(path)", problem: savedReadOnly ? "is writable here; the snapshot's disk was read-only" : "is read-only here; the snapshot's disk was writable")
        }
    }

    public func serve(queue index: Int, _ queue: inout Virtqueue, memory: GuestMemory) throws(VirtioDeviceError) -> Bool {
        try chain.withLock { (chain) throws(VirtioDeviceError) -> Bool in
            var used = false
            while true {
                guard try queue.popRequest(into: &chain, memory: memory) else { break }
                if let wait = admit(chain, memory: memory) {
                    // Over the limit: the request goes back on the ring until the bucket refills.
                    queue.undoPop(memory: memory)
                    retry(after: wait)
                    break
                }
                let written = try handle(chain, memory: memory)
                queue.push(head: chain.head, written: written, memory: memory)
                used = true
            }
            return used
        }
    }

    /// Takes the request's tokens, or returns the nanoseconds to wait for them. Reads and writes
    /// count their data bytes; every request counts as one operation.
    private func admit(_ chain: VirtqueueChain, memory: GuestMemory) -> UInt64? {
        guard throttle.limit.isLimited else { return nil }
        let type = chain.readInteger(UInt32.self, at: 0, memory: memory)
        let bytes: UInt64 = switch type.flatMap(RequestType.init(rawValue:)) {
        case .read: chain.writableLength > 0 ? chain.writableLength - 1 : 0
        case .write: chain.readableLength > 16 ? chain.readableLength - 16 : 0
        default: 0
        }
        return throttle.admit(bytes: bytes)
    }

    /// Serves the queue again after `nanoseconds` (one timer at a time).
    private func retry(after nanoseconds: UInt64) {
        throttle.retry(after: nanoseconds) { [serveQueue] in serveQueue(0) }
    }

    /// Carries out one request and writes its status byte; returns the bytes written.
    func handle(_ chain: VirtqueueChain, memory: GuestMemory) throws(VirtioDeviceError) -> UInt32 {
        guard chain.readableLength >= 16, let type = chain.readInteger(UInt32.self, at: 0, memory: memory),
              let sector = chain.readInteger(UInt64.self, at: 8, memory: memory)
        else { throw .malformedRequest("a block request shorter than its 16-byte header") }
        guard chain.writableLength >= 1 else { throw .malformedRequest("a block request without room for its status byte") }
        let statusOffset = chain.writableLength - 1
        var written: UInt64 = 1
        let status: Status
        switch RequestType(rawValue: type) {
        case .read:
            status = transfer(chain, sector: sector, toGuest: true, length: statusOffset, memory: memory)
            if status == .ok { written += statusOffset }
        case .write:
            status = readOnly ? .ioError : transfer(chain, sector: sector, toGuest: false, length: chain.readableLength - 16, memory: memory)
        case .flush:
            status = readOnly || fdatasync(fd) == 0 ? .ok : .ioError
        case .getID:
            let count = min(UInt64(Self.serialLength), statusOffset)
            var id = [UInt8](repeating: 0, count: Int(count))
            for index in 0..<min(serial.count, id.count) { id[index] = serial[index] }
            id.withUnsafeBytes { _ = chain.copyIn($0, at: 0, memory: memory) }
            written += count
            status = .ok
        case .discard, .writeZeroes:
            status = readOnly ? .ioError : ranges(chain, zeroes: type == RequestType.writeZeroes.rawValue, memory: memory)
        case nil:
            status = .unsupported
        }
        var byte = status.rawValue
        withUnsafeBytes(of: &byte) { _ = chain.copyIn($0, at: statusOffset, memory: memory) }
        return UInt32(written)
    }

    /// The byte range of `count` sectors at `sector`, or nil when it leaves the image.
    private func byteRange(sector: UInt64, bytes length: UInt64) -> Range<UInt64>? {
        let (start, overflow) = sector.multipliedReportingOverflow(by: Self.sectorSize)
        guard !overflow, start <= sectors * Self.sectorSize, length <= sectors * Self.sectorSize - start else { return nil }
        return start..<start + length
    }

    /// A read (`toGuest`) or write of `length` data bytes at `sector`.
    private func transfer(_ chain: VirtqueueChain, sector: UInt64, toGuest: Bool, length: UInt64, memory: GuestMemory) -> Status {
        // 5.2.6.1: data is a multiple of 512 bytes.
        guard length % Self.sectorSize == 0, let range = byteRange(sector: sector, bytes: length) else { return .ioError }
        var offset = Int(range.lowerBound), failed = false
        let dataStart: UInt64 = toGuest ? 0 : 16
        chain.forEachPiece(writable: toGuest, range: dataStart..<dataStart + length, memory: memory) { pointer, count in
            guard !failed else { return }
            let at = offset
            if directFD >= 0, Int(bitPattern: pointer) % 512 == 0, count % 512 == 0,
               Self.whole(count, { done in
                   toGuest ? pread(directFD, pointer + done, count - done, at + done) : pwrite(directFD, pointer + done, count - done, at + done)
               }) {
                directCounts.withLock { $0.direct += 1 }
            } else {
                // Unaligned for O_DIRECT, refused by it (EINVAL), or no O_DIRECT asked for.
                if directFD >= 0 { directCounts.withLock { $0.buffered += 1 } }
                failed = !Self.whole(count) { done in
                    toGuest ? pread(fd, pointer + done, count - done, at + done) : pwrite(fd, pointer + done, count - done, at + done)
                }
            }
            offset += count
        }
        return failed ? .ioError : .ok
    }

    /// Discard or write-zeroes: an array of { sector u64, num_sectors u32, flags u32 } (5.2.6).
    private func ranges(_ chain: VirtqueueChain, zeroes: Bool, memory: GuestMemory) -> Status {
        let data = chain.readableLength - 16
        guard data > 0, data % 16 == 0, data / 16 <= UInt64(Self.maximumRangeSegments) else { return .unsupported }
        for segment in 0..<data / 16 {
            let at = 16 + segment * 16
            guard let sector = chain.readInteger(UInt64.self, at: at, memory: memory),
                  let count = chain.readInteger(UInt32.self, at: at + 8, memory: memory),
                  let flags = chain.readInteger(UInt32.self, at: at + 12, memory: memory)
            else { return .ioError }
            let unmap = flags & 1 != 0
            // 5.2.6.2: the unmap flag is for write-zeroes only; other flag bits are reserved.
            guard flags & ~1 == 0, zeroes || !unmap, count <= Self.maximumRangeSectors else { return .unsupported }
            guard let range = byteRange(sector: sector, bytes: UInt64(count) * Self.sectorSize) else { return .ioError }
            guard !range.isEmpty else { continue }
            let offset = Int(range.lowerBound), length = Int(range.count)
            if !zeroes {
                // Discard is a hint: a file system that cannot punch holes keeps the bytes.
                _ = hv_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
                continue
            }
            if unmap, hv_fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 { continue }
            if hv_fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length) == 0 { continue }
            guard writeZeroes(offset: offset, length: length) else { return .ioError }
        }
        return .ok
    }

    /// Zeroes by writing, 64 KiB at a time, where the file system has no fallocate modes.
    private func writeZeroes(offset: Int, length: Int) -> Bool {
        Self.zeroes.withUnsafeBytes { zeroes in
            Self.whole(length) { done in pwrite(fd, zeroes.baseAddress, min(zeroes.count, length - done), offset + done) }
        }
    }

    /// Calls `transfer` with the bytes done so far until `count` are done (a `pread` or `pwrite`
    /// that returns the bytes it moved); an interrupted call is repeated. False on an error or
    /// the end of the file.
    private static func whole(_ count: Int, _ transfer: (_ done: Int) -> Int) -> Bool {
        var done = 0
        while done < count {
            let result = transfer(done)
            if result < 0, errno == EINTR { continue }
            guard result > 0 else { return false }
            done += result
        }
        return true
    }

    private static let zeroes = [UInt8](repeating: 0, count: 64 * 1024)
}

extension VirtioBlock: HandOverDevice {
    /// A migration's source, paused for its last copy: what was written reaches the image, and
    /// the lock goes, so the destination can take it.
    public func releaseBacking() {
        if !readOnly { _ = fdatasync(fd) }
        _ = flock(fd, LOCK_UN)
    }

    /// Takes the lock, waiting up to a second for a source that is letting go.
    public func claimBacking() throws(HVError) {
        if let problem = Self.lock(fd, readOnly: readOnly, waiting: 1) { throw .snapshot(subject: "virtio-blk \(path)", problem: problem) }
    }
}
