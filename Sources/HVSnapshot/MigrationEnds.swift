// The two ends of a live migration (Documentation/Snapshots.md, "Live migration").
import Foundation
import HVCore
import Synchronization

public enum Migration {
    /// Pages per `pages` record (1 MiB of data).
    static let pagesPerRecord = 256
    /// Pre-copy rounds at most, before the stop-and-copy whatever is left.
    public static let maximumRounds = 30

    /// Sends `machine` (running or paused) over the connected `descriptor`: every page that
    /// holds data while the guest runs, then, round by round, the pages it wrote meanwhile
    /// (KVM's dirty log and the device models' writes), until what is left would take no more
    /// than `maximumDowntime` at the measured rate; then pauses it, sends the rest and the
    /// machine's state, and waits for the destination to say its guest runs. On success the
    /// machine is left paused (the caller stops it); on any failure it runs again as before.
    public static func send<B: Backend>(_ machine: Machine<B>, over descriptor: Int32, key: SnapshotKey?, arguments: [String],
                                        maximumDowntime: Double, progress: MigrationMonitor) throws(SnapshotError) -> MigrationReport {
        let started = Date()
        let wasRunning = machine.state == .running
        guard wasRunning || machine.state == .paused else { throw SnapshotError("VM", "cannot migrate a VM that is \(machine.state)") }
        let channel = try MigrationChannel.source(descriptor, key: key)
        let image = MemoryImage(machine.memory)
        var paused = !wasRunning, released = false
        var report = MigrationReport(rounds: 0, pagesSent: 0, bytesSent: 0, finalPages: 0, downtimeSeconds: 0, totalSeconds: 0)
        func update(_ body: (inout MigrationProgress) -> Void) { progress.update(body) }
        do throws(SnapshotError) {
            try hv { () throws(HVError) in try machine.vm.setDirtyLogging(true) }
            machine.memory.logHostWrites(true)
            for slot in machine.memory.regions.indices { _ = try hv { () throws(HVError) in try machine.vm.fetchDirtyPages(slot: slot) } }
            var hello = StateEncoder()
            hello.write(SnapshotManifest.currentHV)
            hello.write(image.size)
            hello.write(UInt32(machine.vcpus.count))
            hello.write(UInt32(arguments.count))
            for argument in arguments { hello.write(argument) }
            try channel.send(.hello, hello.bytes)
            // Round 0: every page that holds data.
            var pending: [UInt64] = []
            var offset: UInt64 = 0
            while offset < image.size {
                if !Snapshot.isZeroPage(image.pointer(at: offset)) { pending.append(offset) }
                offset += Snapshot.pageSize
            }
            update { $0.phase = "pre-copy"; $0.remainingPages = UInt64(pending.count) }
            var round = 0
            var roundStart = Date()
            while true {
                try sendPages(pending, of: image, over: channel)
                report.pagesSent += UInt64(pending.count)
                let elapsed = max(Date().timeIntervalSince(roundStart), 1e-6)
                let rate = Double(pending.count) * Double(Snapshot.pageSize) / elapsed
                pending = try dirtyPages(machine, image)
                round += 1
                var record = StateEncoder()
                record.write(UInt32(round))
                record.write(UInt64(pending.count))
                try channel.send(.round, record.bytes)
                let sent = report.pagesSent
                update { $0.round = round; $0.pagesSent = sent; $0.bytesSent = channel.bytes; $0.remainingPages = UInt64(pending.count); $0.bytesPerSecond = rate }
                let remainingSeconds = Double(pending.count) * Double(Snapshot.pageSize) / max(rate, 1)
                if paused || remainingSeconds <= maximumDowntime || round >= maximumRounds { break }
                roundStart = Date()
            }
            // Stop and copy.
            update { $0.phase = "stop-and-copy" }
            let pausedAt = monotonicNanoseconds()
            if !paused {
                try hv { () throws(HVError) in try machine.pause() }
                paused = true
            }
            // Disk images: flushed and unlocked, for the destination to take before its guest runs.
            machine.releaseBackings()
            released = true
            pending = Array(Set(pending + (try dirtyPages(machine, image)))).sorted()
            try sendPages(pending, of: image, over: channel)
            report.finalPages = UInt64(pending.count)
            report.pagesSent += UInt64(pending.count)
            let saved = try hv { () throws(HVError) in try machine.saveMachine() }
            try channel.send(.state, SnapshotSections.record(SnapshotSections.sections(of: saved, arguments: arguments)))
            try channel.send(.done, [])
            update { $0.phase = "waiting for the destination" }
            let (type, payload) = try channel.receive()
            var answer = StateDecoder(payload)
            switch type {
            case .started:
                let startedAt: UInt64
                do throws(StateDecodingError) { startedAt = try answer.read(UInt64.self, "started at") } catch { throw SnapshotError("destination", error.description) }
                report.downtimeSeconds = Double(Int64(bitPattern: startedAt &- pausedAt)) / 1e9
            case .failed:
                let message = (try? answer.readString("message")) ?? "no reason given"
                throw SnapshotError("destination", "could not start the guest: \(message)")
            default:
                throw SnapshotError("destination", "answered with record \(type) instead of started or failed")
            }
        } catch {
            try? machine.vm.setDirtyLogging(false)
            machine.memory.logHostWrites(false)
            var error = error
            if released {
                do throws(HVError) { try machine.claimBackings() } catch let claim {
                    error = SnapshotError(error.subject, "\(error.problem); and the source could not take its disk back: \(claim)")
                }
            }
            if paused, wasRunning { try? machine.resume() }
            update { $0.phase = "failed"; $0.message = error.description }
            throw error
        }
        try? machine.vm.setDirtyLogging(false)
        machine.memory.logHostWrites(false)
        report.rounds = progress.progress.round
        report.bytesSent = channel.bytes
        report.totalSeconds = Date().timeIntervalSince(started)
        let final = report
        update { $0.phase = "done"; $0.bytesSent = final.bytesSent; $0.pagesSent = final.pagesSent; $0.remainingPages = 0 }
        return report
    }

    /// The image offsets of the pages written since the last call: KVM's bitmap per memory
    /// slot (slot n is region n) and the pages the host's device models wrote.
    static func dirtyPages<B: Backend>(_ machine: Machine<B>, _ image: MemoryImage) throws(SnapshotError) -> [UInt64] {
        var pages: [UInt64] = []
        for (slot, piece) in image.pieces.enumerated() {
            let bitmap = try hv { () throws(HVError) in try machine.vm.fetchDirtyPages(slot: slot) }
            for (wordIndex, word) in bitmap.enumerated() where word != 0 {
                var bits = word
                while bits != 0 {
                    let bit = UInt64(bits.trailingZeroBitCount)
                    bits &= bits - 1
                    let page = (UInt64(wordIndex) * 64 + bit) * Snapshot.pageSize
                    if page < piece.size { pages.append(piece.offset + page) }
                }
            }
        }
        for address in machine.memory.takeHostWrites() {
            if let piece = image.pieces.first(where: { address >= $0.guestAddress && address < $0.guestAddress + $0.size }) {
                pages.append(piece.offset + (address - piece.guestAddress))
            }
        }
        return Array(Set(pages)).sorted()
    }

    static func sendPages(_ pages: [UInt64], of image: MemoryImage, over channel: MigrationChannel) throws(SnapshotError) {
        var start = 0
        while start < pages.count {
            let batch = pages[start..<min(start + pagesPerRecord, pages.count)]
            var record = StateEncoder()
            record.write(UInt32(batch.count))
            for offset in batch {
                record.write(offset)
                record.write(bytes: UnsafeRawBufferPointer(start: image.pointer(at: offset), count: Int(Snapshot.pageSize)))
            }
            try channel.send(.pages, record.bytes)
            start += pagesPerRecord
        }
    }

    static func hv<T>(_ body: () throws(HVError) -> T) throws(SnapshotError) -> T {
        do { return try body() } catch { throw SnapshotError("VM", error.description) }
    }
}

/// A VM arriving over a migration stream, in two steps: `init` takes the preamble and the
/// hello (the source's command line and memory size) and makes the memory, so the caller can
/// build the machine while the source still sends pages; `receive()` then takes the pages
/// and the machine's state. After `restoreMachine` and `start`, `started(atNanoseconds:)`
/// tells the source (or `failed(_:)` that this end gave up).
public final class IncomingMigration {
    public let arguments: [String]
    public let memory: GuestMemory
    public private(set) var bytes: UInt64 = 0
    private let channel: MigrationChannel
    private let image: MemoryImage

    /// Reads the preamble and the hello from the connected `descriptor` (which this object
    /// now owns) and makes the announced memory.
    public init(descriptor: Int32, key: SnapshotKey?, hugePages: Bool = false) throws(SnapshotError) {
        channel = try MigrationChannel.destination(descriptor, key: key)
        let (type, payload) = try channel.receive()
        guard type == .hello else { throw SnapshotError("migration stream", "began with record \(type), not hello") }
        var hello = StateDecoder(payload)
        let size: UInt64
        var arguments: [String] = []
        do throws(StateDecodingError) {
            let version = try hello.readString("HV release")
            guard version == SnapshotManifest.currentHV else {
                throw StateDecodingError(field: "source", problem: "runs HV \(version); this is HV \(SnapshotManifest.currentHV)")
            }
            size = try hello.read(UInt64.self, "memory size")
            _ = try hello.read(UInt32.self, "vCPU count")
            let count = try hello.read(UInt32.self, "argument count", below: 4096)
            for _ in 0..<count { arguments.append(try hello.readString("argument")) }
        } catch { throw SnapshotError("migration stream", error.description) }
        do { memory = try GuestMemory.pcLayout(size: size, hugePages: hugePages) } catch {
            throw SnapshotError("migration stream", "its \(size) bytes of memory cannot be made here: \(error)")
        }
        image = MemoryImage(memory)
        self.arguments = arguments
    }

    deinit { close(channel.descriptor) }

    /// Takes the pages (into `memory`) and the machine's state, up to the source's `done`.
    /// Every offset and count is checked against the memory the hello announced.
    public func receive() throws(SnapshotError) -> SavedMachine {
        var sections: [String: [UInt8]] = [:]
        receiving: while true {
            let (type, payload) = try channel.receive()
            switch type {
            case .pages:
                var decoder = StateDecoder(payload)
                do throws(StateDecodingError) {
                    let count = try decoder.read(UInt32.self, "page count", below: UInt32(Migration.pagesPerRecord + 1))
                    for _ in 0..<count {
                        let offset = try decoder.read(UInt64.self, "page offset")
                        guard offset % Snapshot.pageSize == 0, offset < image.size else {
                            throw StateDecodingError(field: "page offset", problem: "\(offset) is not a page of the \(image.size)-byte memory")
                        }
                        let page = try decoder.readBytes("page", atMost: Int(Snapshot.pageSize))
                        guard page.count == Int(Snapshot.pageSize) else { throw StateDecodingError(field: "page", problem: "is \(page.count) bytes") }
                        page.withUnsafeBytes { image.store($0, at: offset) }
                    }
                } catch { throw SnapshotError("migration stream", error.description) }
            case .round:
                continue
            case .state:
                do throws(StateDecodingError) { sections = try SnapshotSections.sections(inRecord: payload) } catch {
                    throw SnapshotError("migration stream", error.description)
                }
            case .done:
                break receiving
            default:
                throw SnapshotError("migration stream", "unexpected record \(type)")
            }
        }
        bytes = channel.bytes
        let (saved, _) = try SnapshotSections.machine(from: sections)
        guard saved.memorySize == image.size else { throw SnapshotError("migration stream", "the state's memory size differs from the hello's") }
        return saved
    }

    /// Tells the source the guest runs here (it then stops its own); `at` is this host's
    /// monotonic clock when the guest was started. The connection is done with after it.
    public func started(atNanoseconds at: UInt64) throws(SnapshotError) {
        var payload = StateEncoder()
        payload.write(at)
        try channel.send(.started, payload.bytes)
        shutdown(channel.descriptor, Int32(SHUT_RDWR))
    }

    /// Tells the source this end could not start the guest (the source runs on).
    public func failed(_ message: String) {
        var payload = StateEncoder()
        payload.write(message)
        try? channel.send(.failed, payload.bytes)
        shutdown(channel.descriptor, Int32(SHUT_RDWR))
    }
}
