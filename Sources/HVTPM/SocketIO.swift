// Small blocking-socket helpers for the swtpm-protocol server and client (Documentation/Architecture.md, Conventions: thin
// syscall wrappers, -1 becomes a typed error right there, EINTR retried).
#if canImport(Glibc)
import CKVM
import Glibc
#endif

/// A pipe whose write end wakes every `poll` that watches its read end: how threads blocked
/// on sockets learn that the server is stopping.
final class StopPipe: @unchecked Sendable {
    // Sendable: two descriptors fixed at init; writing to a pipe is thread-safe.
    let readEnd: Int32
    let writeEnd: Int32

    init() throws(TPMError) {
        var fds: [Int32] = [0, 0]
        // Close-on-exec set atomically: a program the host starts meanwhile never inherits them.
        guard hv_pipe2(&fds, O_CLOEXEC) == 0 else { throw .io(operation: "pipe2", path: "", errno: errno) }
        readEnd = fds[0]
        writeEnd = fds[1]
    }

    /// Wakes all waiters, now and later (the byte is never read).
    func signal() {
        var byte: UInt8 = 1
        _ = write(writeEnd, &byte, 1)
    }

    deinit {
        close(readEnd)
        close(writeEnd)
    }
}

/// Blocking I/O on one descriptor that gives up when `stop` is signalled.
struct StoppableDescriptor {
    let fd: Int32
    let stop: StopPipe
    /// Poll `fd` together with `stop` before each read. Sockets skip it (one system call less
    /// per read): the server wakes their blocked reads with shutdown(2) instead.
    var pollBeforeRead = true

    /// Waits until `fd` is readable; false when stopping.
    func waitReadable() -> Bool {
        guard pollBeforeRead else { return true }
        var entries = [pollfd(fd: fd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stop.readEnd, events: Int16(POLLIN), revents: 0)]
        while true {
            let ready = poll(&entries, 2, -1)
            if ready < 0 {
                if errno == EINTR { continue }
                return false
            }
            if entries[1].revents != 0 { return false }
            return true
        }
    }

    /// Reads exactly `count` bytes; nil on end of file, error or stop (a partial frame is dropped).
    /// The buffer grows with what arrives, 64 KiB at a time: a peer that announces a large
    /// length and sends nothing costs no more than that.
    func readExactly(_ count: Int) -> [UInt8]? {
        let step = 64 << 10
        var bytes = [UInt8](repeating: 0, count: min(count, step))
        var done = 0
        while done < count {
            if done == bytes.count { bytes += [UInt8](repeating: 0, count: min(count - done, step)) }
            guard waitReadable() else { return nil }
            let got = bytes.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + done, $0.count - done) }
            if got < 0 && errno == EINTR { continue }
            if got <= 0 { return nil }
            done += got
        }
        return bytes
    }

    /// Reads what is available (at most `buffer`'s free space, one read(2)) after `count`
    /// bytes already there; false on end of file, error or stop.
    func readSome(into buffer: inout [UInt8], count: inout Int) -> Bool {
        while true {
            guard waitReadable() else { return false }
            let got = buffer.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress! + count, $0.count - count) }
            if got < 0 && errno == EINTR { continue }
            if got <= 0 { return false }
            count += got
            return true
        }
    }

    /// Writes all of `bytes`; false when the peer went away.
    func writeAll(_ bytes: [UInt8]) -> Bool {
        var done = 0
        while done < bytes.count {
            let sent = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            if sent < 0 && errno == EINTR { continue }
            if sent <= 0 { return false }
            done += sent
        }
        return true
    }
}

/// TCP sockets on IPv4 addresses.
enum TCPSocket {
    /// A connected socket to `host:port`, with Nagle off (TPM frames are small request/response).
    static func connect(host: String, port: UInt16) throws(TPMError) -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw .io(operation: "socket", path: host, errno: errno) }
        var address = try socketAddress(host: host, port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard connected == 0 else {
            let code = errno
            close(fd)
            throw .connection("cannot connect to \(host):\(port): \(String(cString: strerror(code)))")
        }
        noDelay(fd)
        return fd
    }

    static func noDelay(_ fd: Int32) {
        var one: Int32 = 1
        setsockopt(fd, Int32(IPPROTO_TCP), TCP_NODELAY, &one, socklen_t(MemoryLayout<Int32>.size))
    }

    static func socketAddress(host: String, port: UInt16) throws(TPMError) -> sockaddr_in {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        let name = host == "localhost" ? "127.0.0.1" : host
        guard inet_pton(AF_INET, name, &address.sin_addr) == 1 else {
            throw .connection("\(host) is not an IPv4 address (use e.g. 127.0.0.1)")
        }
        return address
    }
}
