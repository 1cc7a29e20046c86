// A TPM's state on disk. libtpms hands us opaque blobs (TPMLIB_RegisterCallbacks(3): the
// "permall" NVRAM and the "volatilestate" RAM image); we keep each in its own file, written
// atomically (temporary file, fsync, rename, fsync of the directory) with a SHA-256 checksum,
// so a crash leaves the old or the new state and a damaged file is refused, never replaced by
// a freshly manufactured TPM (which would silently destroy the TPM's keys).
#if canImport(Glibc)
import Glibc
import Synchronization
#endif
import HVCore

/// One file's framing: magic, version, kind, payload length, SHA-256 of the payload, the
/// SHA-256 of the permanent state a volatile state belongs to (zeros for permanent), payload.
public struct TPMStateFile: Sendable, Equatable {
    /// Which libtpms blob a file holds.
    public enum Kind: UInt32, Sendable { case permanent = 1, volatile = 2 }

    static let magic: [UInt8] = Array("HVTPMST\0".utf8)
    static let version: UInt32 = 1
    /// magic 8 + version 4 + kind 4 + length 8 + checksum 32 + binding 32.
    public static let headerSize = 88

    public var kind: Kind
    public var payload: [UInt8]
    /// For a volatile state: SHA-256 of the permanent payload it was saved with.
    public var binding: [UInt8]

    public init(kind: Kind, payload: [UInt8], binding: [UInt8] = Array(repeating: 0, count: 32)) {
        self.kind = kind
        self.payload = payload
        self.binding = binding
    }

    /// The bytes written to disk.
    public func encoded() -> [UInt8] {
        var bytes = Self.magic
        bytes.appendBigEndian(Self.version)
        bytes.appendBigEndian(kind.rawValue)
        bytes.appendBigEndian(UInt64(payload.count))
        bytes += SHA256.hash(payload)
        bytes += binding
        bytes += payload
        return bytes
    }

    /// Parses and verifies a file's bytes; every defect has its own message.
    public static func decode(_ bytes: [UInt8]) -> Result<TPMStateFile, TPMStateFileProblem> {
        guard bytes.count >= headerSize else { return .failure(.truncatedHeader(bytes: bytes.count)) }
        guard Array(bytes[0..<8]) == magic else { return .failure(.notAStateFile) }
        let version = bytes.bigEndianUInt32(at: 8)
        guard version == Self.version else { return .failure(.unsupportedVersion(version)) }
        guard let kind = Kind(rawValue: bytes.bigEndianUInt32(at: 12)) else { return .failure(.notAStateFile) }
        let length = UInt64(bytes.bigEndianUInt32(at: 16)) << 32 | UInt64(bytes.bigEndianUInt32(at: 20))
        let held = UInt64(bytes.count - headerSize)
        guard length == held else { return .failure(.lengthMismatch(announced: length, present: held)) }
        let payload = Array(bytes[headerSize...])
        guard SHA256.hash(payload) == Array(bytes[24..<56]) else { return .failure(.checksumMismatch) }
        return .success(TPMStateFile(kind: kind, payload: payload, binding: Array(bytes[56..<88])))
    }
}

/// What is wrong with a state file.
public enum TPMStateFileProblem: Error, Equatable, CustomStringConvertible {
    case truncatedHeader(bytes: Int)
    case notAStateFile
    case unsupportedVersion(UInt32)
    case lengthMismatch(announced: UInt64, present: UInt64)
    case checksumMismatch

    public var description: String {
        switch self {
        case .truncatedHeader(let bytes):
            "truncated: \(bytes) bytes, shorter than the \(TPMStateFile.headerSize)-byte header"
        case .notAStateFile: "not an HV TPM state file (bad magic or kind)"
        case .unsupportedVersion(let version): "state file version \(version) is not supported (this HV reads version 1)"
        case let .lengthMismatch(announced, present):
            "truncated or padded: the header announces \(announced) bytes of state, the file holds \(present)"
        case .checksumMismatch: "checksum mismatch: the state is corrupted"
        }
    }
}

/// A directory holding one TPM's state: `permanent.state` and, after a clean shutdown or a
/// snapshot, `volatile.state`. Opening it takes an exclusive `flock` on `lock`, so two processes
/// never run the same TPM.
public final class TPMStateDirectory: Sendable {

    public static let permanentName = "permanent.state"
    public static let volatileName = "volatile.state"

    /// The directory.
    public let path: String
    /// The descriptor holding the lock, -1 once released (by the engine's close or deinit, on any thread).
    private let lockDescriptor: Mutex<Int32>

    /// Opens (creating it if needed) the state directory at `path` and locks it. With `lock`
    /// false the lock is taken later (`claim()`): a live migration's destination opens the
    /// directory while the source still runs its TPM there, and writes nothing to it until then.
    public init(path: String, lock: Bool = true) throws(TPMError) {
        self.path = path
        if mkdir(path, 0o700) != 0 && errno != EEXIST { throw .io(operation: "mkdir", path: path, errno: errno) }
        var info = stat()
        guard stat(path, &info) == 0, info.st_mode & S_IFMT == S_IFDIR else {
            throw .state(path: path, problem: "is not a directory")
        }
        lockDescriptor = Mutex(-1)
        if lock { try claim(waiting: 0) }
    }

    /// Whether this object holds the directory's lock (writes go to the directory only then).
    public var isLocked: Bool { lockDescriptor.withLock { $0 >= 0 } }

    /// Takes the lock, waiting up to `waiting` seconds for a process that is letting go of it
    /// (a migration's source). Nothing to do when it is held already.
    public func claim(waiting: Double = 1) throws(TPMError) {
        guard !isLocked else { return }
        let lockPath = path + "/lock"
        let fd = open(lockPath, O_RDWR | O_CREAT | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(operation: "open", path: lockPath, errno: errno) }
        if lockFile(fd, exclusive: true, waiting: waiting) != nil {
            close(fd)
            throw .state(path: path, problem: "in use by another process (its lock file is held)")
        }
        lockDescriptor.withLock { $0 = fd }
    }

    deinit { release() }

    /// Gives up the lock, so another `TPMStateDirectory` (in this or another process) may
    /// open the directory. The engine calls it when it closes, and when it hands the TPM over
    /// in a live migration (`claim()` takes it back).
    public func release() {
        let fd = lockDescriptor.withLock { fd in
            defer { fd = -1 }
            return fd
        }
        guard fd >= 0 else { return }
        // Unlocked before the close: a child process this process is spawning right now holds a
        // copy of the descriptor until its exec closes it (O_CLOEXEC), and with it the lock, so a
        // close alone could leave the directory locked for a moment (an immediate reopen failed).
        _ = flock(fd, LOCK_UN)
        close(fd)
    }

    /// The permanent state, verified; nil when the TPM was never manufactured.
    public func readPermanent() throws(TPMError) -> [UInt8]? {
        try Self.read(path + "/" + Self.permanentName, kind: .permanent)?.payload
    }

    /// Stores the permanent state atomically.
    public func writePermanent(_ payload: [UInt8]) throws(TPMError) {
        try Self.writeAtomically(path: path + "/" + Self.permanentName, bytes: TPMStateFile(kind: .permanent, payload: payload).encoded())
    }

    /// The volatile state saved with `permanent`; nil when there is none. A volatile state
    /// saved with another permanent state is an error: resuming it would mix two TPMs.
    public func readVolatile(matching permanent: [UInt8]) throws(TPMError) -> [UInt8]? {
        let filePath = path + "/" + Self.volatileName
        guard let file = try Self.read(filePath, kind: .volatile) else { return nil }
        guard file.binding == SHA256.hash(permanent) else {
            throw .state(path: filePath, problem: "was saved with a different permanent state; it cannot be resumed (remove it to power the TPM on fresh)")
        }
        return file.payload
    }

    /// Stores the volatile state atomically, bound to the permanent state it goes with.
    public func writeVolatile(_ payload: [UInt8], permanent: [UInt8]) throws(TPMError) {
        let file = TPMStateFile(kind: .volatile, payload: payload, binding: SHA256.hash(permanent))
        try Self.writeAtomically(path: path + "/" + Self.volatileName, bytes: file.encoded())
    }

    /// Deletes the volatile state (after it was resumed, so it is never resumed twice).
    public func removeVolatile() throws(TPMError) {
        let filePath = path + "/" + Self.volatileName
        if unlink(filePath) != 0 && errno != ENOENT { throw .io(operation: "unlink", path: filePath, errno: errno) }
    }

    // MARK: Files

    /// Reads and verifies one state file; nil when it does not exist.
    public static func read(_ filePath: String, kind: TPMStateFile.Kind) throws(TPMError) -> TPMStateFile? {
        guard let bytes = try readFile(filePath) else { return nil }
        switch TPMStateFile.decode(bytes) {
        case .failure(let problem):
            throw .state(path: filePath, problem: "\(problem); HV will not manufacture a new TPM over it (restore the file from a backup, or delete the directory to start a new TPM, losing its keys)")
        case .success(let file):
            guard file.kind == kind else { throw .state(path: filePath, problem: "holds \(file.kind) state, expected \(kind)") }
            return file
        }
    }

    static func readFile(_ filePath: String) throws(TPMError) -> [UInt8]? {
        let fd = open(filePath, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            if errno == ENOENT { return nil }
            throw .io(operation: "open", path: filePath, errno: errno)
        }
        defer { close(fd) }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let count = chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) }
            if count < 0 {
                if errno == EINTR { continue }
                throw .io(operation: "read", path: filePath, errno: errno)
            }
            if count == 0 { break }
            bytes += chunk[0..<count]
        }
        return bytes
    }

    /// Numbers this process's temporary state files.
    private static let temporaryCounter = Atomic<UInt64>(0)

    /// Temporary file, write, fsync, rename over the old file, fsync the directory: after a
    /// crash the file holds either the old or the new bytes (rename(2) is atomic). Each write
    /// gets a temporary file of its own, so two writers of the same state file
    /// never write into one temporary file: the last rename wins whole.
    public static func writeAtomically(path filePath: String, bytes: [UInt8]) throws(TPMError) {
        // Unique per process (pid) and per write (a counter); O_EXCL refuses a leftover.
        let temporary = "\(filePath).tmp.\(getpid()).\(temporaryCounter.add(1, ordering: .relaxed).newValue)"
        let fd = open(temporary, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0o600)
        guard fd >= 0 else { throw .io(operation: "open", path: temporary, errno: errno) }
        var written = 0
        while written < bytes.count {
            let count = bytes.withUnsafeBytes { write(fd, $0.baseAddress! + written, $0.count - written) }
            if count < 0 {
                if errno == EINTR { continue }
                let code = errno
                close(fd)
                unlink(temporary)
                throw .io(operation: "write", path: temporary, errno: code)
            }
            written += count
        }
        if fsync(fd) != 0 {
            let code = errno
            close(fd)
            unlink(temporary)
            throw .io(operation: "fsync", path: temporary, errno: code)
        }
        close(fd)
        guard rename(temporary, filePath) == 0 else {
            let code = errno
            unlink(temporary)
            throw .io(operation: "rename", path: temporary, errno: code)
        }
        let directory = filePath.split(separator: "/", omittingEmptySubsequences: false).dropLast().joined(separator: "/")
        let dirfd = open(directory.isEmpty ? "." : directory, O_RDONLY | O_DIRECTORY | O_CLOEXEC)
        if dirfd >= 0 {
            fsync(dirfd)
            close(dirfd)
        }
    }
}

extension [UInt8] {
    mutating func appendBigEndian(_ value: UInt32) {
        append(contentsOf: [UInt8(value >> 24), UInt8(truncatingIfNeeded: value >> 16), UInt8(truncatingIfNeeded: value >> 8), UInt8(truncatingIfNeeded: value)])
    }

    mutating func appendBigEndian(_ value: UInt16) {
        append(contentsOf: [UInt8(value >> 8), UInt8(truncatingIfNeeded: value)])
    }

    mutating func appendBigEndian(_ value: UInt64) {
        appendBigEndian(UInt32(value >> 32))
        appendBigEndian(UInt32(truncatingIfNeeded: value))
    }

    func bigEndianUInt32(at offset: Int) -> UInt32 {
        UInt32(self[offset]) << 24 | UInt32(self[offset + 1]) << 16 | UInt32(self[offset + 2]) << 8 | UInt32(self[offset + 3])
    }

    func bigEndianUInt16(at offset: Int) -> UInt16 {
        UInt16(self[offset]) << 8 | UInt16(self[offset + 1])
    }
}
