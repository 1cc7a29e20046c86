// Where a serial device's transmitted bytes go: the host attachment of a UART (a terminal, a
// log file, a closure, or an in-memory capture for tests and embedders).
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
import Synchronization

/// Why a serial output could not be attached.
public enum SerialOutputError: Error, Equatable, CustomStringConvertible {
    /// `open(2)` of the output file failed.
    case cannotOpen(path: String, errno: Int32)

    public var description: String {
        switch self {
        case let .cannotOpen(path, code):
            "cannot open serial output file '\(path)': \(errnoText(code))"
        }
    }
}

/// The host side of a serial line: where a UART's transmitted bytes go.
///
/// Build one with `.standardOutput`, `.file(_:mode:)`, `.callback(_:)`, `.capture(_:)` or
/// `.discard`. Bytes bound for a file descriptor are buffered and written with one `write(2)`
/// per line (on `\n`), when the buffer fills, and on `flush()`; `deinit` flushes. Call
/// `flush()` when the guest stops to see a last line without a newline (a prompt). Bytes the
/// host cannot write (a closed pipe, a full disk) are dropped: a serial line has no way to
/// report them to the guest. Safe to use from several vCPU threads.
public final class SerialOutput: Sendable {
    /// How `.file` treats an existing file.
    public enum FileMode: Sendable {
        /// Start the file empty (`O_TRUNC`).
        case truncate
        /// Add to the end of the file (`O_APPEND`).
        case append
    }

    enum Sink: Sendable {
        case fileDescriptor(Int32, owned: Bool)
        case callback(@Sendable (UInt8) -> Void)
        case capture(SerialCapture)
        case discard
    }

    /// Bytes waiting for `write(2)`; allocated once so the vCPU path never allocates.
    struct PendingBytes: ~Copyable {
        let storage: UnsafeMutableBufferPointer<UInt8>
        var count = 0
        init(capacity: Int) { storage = .allocate(capacity: capacity) }
        deinit { storage.deallocate() }
    }

    static let bufferCapacity = 4096

    let sink: Sink
    private let pending: Mutex<PendingBytes>
    /// Called once when the reader of the descriptor goes away (`EPIPE`: `hv run | head`).
    private let closedHandler = Mutex<(@Sendable () -> Void)?>(nil)
    private let readerGone = Atomic<Bool>(false)

    init(sink: Sink) {
        self.sink = sink
        let capacity: Int
        if case .fileDescriptor = sink { capacity = Self.bufferCapacity } else { capacity = 0 }
        self.pending = Mutex(PendingBytes(capacity: capacity))
    }

    deinit {
        flush()
        if case let .fileDescriptor(fd, owned: true) = sink { _ = close(fd) }
    }

    /// The host process's standard output (file descriptor 1, not closed by this object).
    public static var standardOutput: SerialOutput { SerialOutput(sink: .fileDescriptor(1, owned: false)) }

    /// Bytes are thrown away (a UART with nothing attached).
    public static var discard: SerialOutput { SerialOutput(sink: .discard) }

    /// The file at `path`, opened now (created with mode 0644 if missing) and closed when this
    /// output is released. `mode` says whether an existing file is truncated (the default) or
    /// appended to. Throws `SerialOutputError.cannotOpen` naming the path when `open(2)` fails.
    public static func file(_ path: String, mode: FileMode = .truncate) throws(SerialOutputError) -> SerialOutput {
        let (fd, error) = openForWriting(path, append: mode == .append)
        guard fd >= 0 else { throw .cannotOpen(path: path, errno: error) }
        return SerialOutput(sink: .fileDescriptor(fd, owned: true))
    }

    /// Each byte is passed to `body` as it is transmitted, on the transmitting vCPU's thread.
    /// `body` may feed input back into the UART (an echo); with several vCPUs it must be safe to
    /// call concurrently.
    public static func callback(_ body: @escaping @Sendable (UInt8) -> Void) -> SerialOutput {
        SerialOutput(sink: .callback(body))
    }

    /// Bytes are appended to `capture`, to be read back by a test or an embedder.
    public static func capture(_ capture: SerialCapture) -> SerialOutput {
        SerialOutput(sink: .capture(capture))
    }

    /// Sends one byte to the host side.
    public func write(_ byte: UInt8) {
        switch sink {
        case .fileDescriptor(let fd, _):
            let error = pending.withLock { pending -> Int32 in
                pending.storage[pending.count] = byte
                pending.count += 1
                guard byte == UInt8(ascii: "\n") || pending.count == pending.storage.count else { return 0 }
                return Self.drain(&pending, to: fd)
            }
            if error != 0 { noteWriteError(error) }
        case .callback(let body): body(byte)
        case .capture(let capture): capture.append(byte)
        case .discard: break
        }
    }

    /// Writes any buffered bytes to the file descriptor now.
    public func flush() {
        guard case .fileDescriptor(let fd, _) = sink else { return }
        let error = pending.withLock { Self.drain(&$0, to: fd) }
        noteWriteError(error)
    }

    /// True once a write found no reader (`EPIPE`); later bytes are dropped.
    public var isReaderGone: Bool { readerGone.load(ordering: .acquiring) }

    /// Calls `body` once, on the writing thread, when a write finds that the descriptor's reader
    /// has gone (`EPIPE`, with SIGPIPE ignored): the embedder decides, e.g. stops the VM, where
    /// the default signal would have killed the process mid-run.
    public func whenReaderGone(_ body: @escaping @Sendable () -> Void) {
        closedHandler.withLock { $0 = body }
    }

    private func noteWriteError(_ error: Int32) {
        guard error == EPIPE, !readerGone.exchange(true, ordering: .acquiringAndReleasing) else { return }
        closedHandler.withLock { $0 }?()
    }

    /// Returns the `errno` of a failed write (0 when every byte went out).
    private static func drain(_ pending: inout PendingBytes, to fd: Int32) -> Int32 {
        guard pending.count > 0, let base = pending.storage.baseAddress else { return 0 }
        defer { pending.count = 0 }
        return writeAll(fd, UnsafeRawBufferPointer(start: base, count: pending.count))
    }
}

// The only system calls of the serial attachment: one small function per call.

/// `open(2)` for writing, retrying `EINTR`; returns the descriptor, or -1 and the `errno`.
private func openForWriting(_ path: String, append: Bool) -> (fd: Int32, errno: Int32) {
    let flags = O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC)
    while true {
        let fd = open(path, flags, 0o644)
        if fd >= 0 { return (fd, 0) }
        let error = errno
        if error != EINTR { return (-1, error) }
    }
}

/// `write(2)` of every byte of `bytes`, continuing after short writes and `EINTR`; gives up
/// (dropping the rest) on any other error, whose `errno` it returns (0 on success).
private func writeAll(_ fd: Int32, _ bytes: UnsafeRawBufferPointer) -> Int32 {
    var offset = 0
    while offset < bytes.count, let base = bytes.baseAddress {
        let written = write(fd, base + offset, bytes.count - offset)
        if written > 0 {
            offset += written
        } else if written < 0 && errno == EINTR {
            continue
        } else {
            return written < 0 ? errno : EIO
        }
    }
    return 0
}

/// An in-memory record of transmitted bytes, for tests and embedders. Thread-safe.
public final class SerialCapture: Sendable {
    private let storage = Mutex<[UInt8]>([])

    public init() {}

    /// Every byte captured so far, in transmission order.
    public var bytes: [UInt8] { storage.withLock { $0 } }

    /// The captured bytes decoded as UTF-8 (invalid sequences become U+FFFD).
    public var text: String { String(decoding: bytes, as: UTF8.self) }

    /// Adds one byte.
    public func append(_ byte: UInt8) { storage.withLock { $0.append(byte) } }

    /// Forgets everything captured so far.
    public func removeAll() { storage.withLock { $0.removeAll() } }
}
