// Live migration: pre-copy over KVM's dirty log, then stop-and-copy of what is left and the
// machine's state (Documentation/Snapshots.md, "Live migration"). The stream is records over a
// connected socket, each sealed with AES-GCM when there is a key; the VMM only ever holds a
// Unix-domain connection (hv ctl carries the bytes to the destination over TCP), so its
// confinement never has to allow internet sockets.
import Crypto
import Foundation
import HVCore
import Synchronization

/// How a migration went, for the API's answer and the terminal.
public struct MigrationReport: Sendable {
    public var rounds: Int
    public var pagesSent: UInt64
    public var bytesSent: UInt64
    /// Pages sent while the guest was stopped.
    public var finalPages: UInt64
    /// From the source's pause to the destination's guest running again (one host's monotonic
    /// clock: both ends on one machine; across hosts the destination's figure is used as sent).
    public var downtimeSeconds: Double
    public var totalSeconds: Double
}

/// Where a migration under way stands (`GET /v1/vm/migration`).
public struct MigrationProgress: Sendable, Equatable {
    public var phase: String = "idle"
    public var round = 0
    public var pagesSent: UInt64 = 0
    public var bytesSent: UInt64 = 0
    public var remainingPages: UInt64 = 0
    public var bytesPerSecond: Double = 0
    public var message: String?

    public init() {}
}

/// Shared between a migration and whoever watches it (the API's progress route).
public final class MigrationMonitor: Sendable {
    private struct State {
        var progress = MigrationProgress()
        /// Every update with its sequence number, the latest `historyLimit` of them.
        var history: [(sequence: UInt64, progress: MigrationProgress)] = []
        var sequence: UInt64 = 0
    }
    private let state = Mutex(State())
    static let historyLimit = 1024

    public init() {}

    public var progress: MigrationProgress { state.withLock { $0.progress } }

    /// The updates after `sequence` (all that are kept) and the latest sequence number: an
    /// event stream misses none of a migration's steps, however fast they come.
    public func changes(after sequence: UInt64) -> (latest: UInt64, changes: [MigrationProgress]) {
        state.withLock { state in
            (state.sequence, state.history.filter { $0.sequence > sequence }.map(\.progress))
        }
    }

    func update(_ body: (inout MigrationProgress) -> Void) {
        state.withLock { state in
            body(&state.progress)
            state.sequence += 1
            state.history.append((state.sequence, state.progress))
            if state.history.count > Self.historyLimit { state.history.removeFirst(state.history.count - Self.historyLimit) }
        }
    }
}

/// Records of a migration stream.
enum MigrationRecord: UInt8 {
    case hello = 1, pages = 2, round = 3, state = 4, done = 5, started = 6, failed = 7
}

/// One end of a migration stream over `descriptor`. The preamble is plain (magic, format, the
/// stream's random id, whether it is sealed and the key check); every record after it is
/// `[type][length][payload]`, the payload sealed under a key derived for this stream, its
/// context the id, the record's sequence number and type, so records cannot be dropped,
/// reordered, replayed or moved between streams unnoticed.
final class MigrationChannel {
    static let magic = Array("HVMIGR\r\n".utf8)
    static let format: UInt32 = 1
    static let maximumRecord = 64 << 20

    let descriptor: Int32
    private let key: SymmetricKey?
    private let id: [UInt8]
    private var sent: UInt64 = 0
    private var received: UInt64 = 0
    private(set) var bytes: UInt64 = 0

    private init(descriptor: Int32, key: SymmetricKey?, id: [UInt8]) {
        self.descriptor = descriptor
        self.key = key
        self.id = id
    }

    /// The source's end: writes the preamble and waits for the destination to take it.
    static func source(_ descriptor: Int32, key: SnapshotKey?) throws(SnapshotError) -> MigrationChannel {
        let id = (0..<16).map { _ in UInt8.random(in: 0...255) }
        var preamble = StateEncoder()
        preamble.write(format)
        preamble.write(key != nil)
        try writeAll(descriptor, magic + preamble.bytes + id + (key.map { $0.check(salt: id) } ?? []))
        // The destination's answer: 0 and nothing, or a refusal it explains in plain words.
        let status = try readExactly(descriptor, 5)
        if status[0] != 0 {
            let length = Int(status[1]) | Int(status[2]) << 8 | Int(status[3]) << 16 | Int(status[4]) << 24
            let message = try readExactly(descriptor, min(length, 4096))
            throw SnapshotError("destination", "refused the migration: \(String(decoding: message, as: UTF8.self))")
        }
        return MigrationChannel(descriptor: descriptor, key: key?.derived("stream", salt: id), id: id)
    }

    /// The destination's end: reads and checks the preamble, answering the source either way.
    static func destination(_ descriptor: Int32, key: SnapshotKey?) throws(SnapshotError) -> MigrationChannel {
        let head = try readExactly(descriptor, magic.count + 5 + 16)
        func refuse(_ message: String) throws(SnapshotError) -> Never {
            var answer = StateEncoder()
            answer.write(UInt8(1))
            answer.write(bytes: Array(message.utf8))
            try? writeAll(descriptor, answer.bytes)
            throw SnapshotError("migration source", message)
        }
        guard Array(head.prefix(magic.count)) == magic else { try refuse("not an HV migration stream (no HVMIGR magic)") }
        var decoder = StateDecoder(Array(head[magic.count...]))
        let format: UInt32, sealed: Bool
        do throws(StateDecodingError) {
            format = try decoder.read(UInt32.self, "format")
            sealed = try decoder.read(Bool.self, "sealed")
        } catch { try refuse(error.description) }
        guard format == Self.format else { try refuse("stream format \(format); this HV (\(SnapshotManifest.currentHV)) reads format \(Self.format)") }
        let id = Array(head.suffix(16))
        if sealed {
            let check = try readExactly(descriptor, 32)
            guard let key else { try refuse("the stream is encrypted; the destination has no key (--key-file or $\(SnapshotKey.environmentVariable))") }
            guard check == key.check(salt: id) else { try refuse("the destination's key is not the source's") }
        } else if key != nil {
            try refuse("the stream is not encrypted, but the destination has a key; give the source the same key")
        }
        try writeAll(descriptor, [0, 0, 0, 0, 0])
        return MigrationChannel(descriptor: descriptor, key: sealed ? key?.derived("stream", salt: id) : nil, id: id)
    }

    private func context(_ sequence: UInt64, _ type: MigrationRecord) -> [UInt8] {
        Sealing.context(id, sequence, [type.rawValue])
    }

    func send(_ type: MigrationRecord, _ payload: [UInt8]) throws(SnapshotError) {
        let body = try key.map { (key) throws(SnapshotError) in try Sealing.seal(payload, key: key, context: context(sent, type)) } ?? payload
        var header = StateEncoder()
        header.write(type.rawValue)
        header.write(UInt32(body.count))
        try Self.writeAll(descriptor, header.bytes + body)
        sent += 1
        bytes += UInt64(5 + body.count)
    }

    func receive() throws(SnapshotError) -> (MigrationRecord, [UInt8]) {
        let header = try Self.readExactly(descriptor, 5)
        guard let type = MigrationRecord(rawValue: header[0]) else { throw SnapshotError("migration stream", "record type \(header[0]) is unknown") }
        let length = Int(header[1]) | Int(header[2]) << 8 | Int(header[3]) << 16 | Int(header[4]) << 24
        guard length <= Self.maximumRecord else { throw SnapshotError("migration stream", "a record of \(length) bytes is larger than \(Self.maximumRecord)") }
        let body = try Self.readExactly(descriptor, length)
        let payload = try key.map { (key) throws(SnapshotError) in
            try Sealing.open(body, key: key, context: context(received, type), what: "migration record \(received)")
        } ?? body
        received += 1
        bytes += UInt64(5 + length)
        return (type, payload)
    }

    static func writeAll(_ descriptor: Int32, _ bytes: [UInt8]) throws(SnapshotError) {
        let failure: Int32? = bytes.withUnsafeBytes { raw in
            var done = 0
            while done < raw.count {
                let written = write(descriptor, raw.baseAddress! + done, raw.count - done)
                if written < 0, errno == EINTR { continue }
                if written <= 0 { return written < 0 ? errno : EPIPE }
                done += written
            }
            return nil
        }
        if let failure { throw SnapshotError("migration stream", "the connection broke: \(String(cString: strerror(failure)))") }
    }

    static func readExactly(_ descriptor: Int32, _ count: Int) throws(SnapshotError) -> [UInt8] {
        var buffer = [UInt8](repeating: 0, count: count)
        let got = buffer.withUnsafeMutableBytes { raw -> Int in
            var done = 0
            while done < count {
                let read = Glibc.read(descriptor, raw.baseAddress! + done, count - done)
                if read < 0, errno == EINTR { continue }
                if read <= 0 { break }
                done += read
            }
            return done
        }
        guard got == count else { throw SnapshotError("migration stream", "the connection ended early (\(got) of \(count) bytes)") }
        return buffer
    }
}
