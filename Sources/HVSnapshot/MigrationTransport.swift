// The sockets a migration travels over: the destination's TCP listener (`hv run --incoming`),
// and `hv ctl`'s relay between the source VMM's Unix-domain connection and the TCP connection
// to the destination (Documentation/Snapshots.md, "Live migration").
import Foundation
import HVCore
import Synchronization

public enum MigrationTransport {
    /// "HOST:PORT", "tcp:HOST:PORT" or "[IPv6]:PORT" as host and port.
    public static func parse(_ text: String) throws(SnapshotError) -> (host: String, port: UInt16) {
        var rest = text.hasPrefix("tcp:") ? String(text.dropFirst(4)) : text
        var host: String
        if rest.hasPrefix("["), let close = rest.firstIndex(of: "]") {
            host = String(rest[rest.index(after: rest.startIndex)..<close])
            rest = String(rest[rest.index(after: close)...])
            guard rest.hasPrefix(":") else { throw SnapshotError(text, "expected [ADDRESS]:PORT") }
            rest.removeFirst()
        } else {
            guard let colon = rest.lastIndex(of: ":") else { throw SnapshotError(text, "expected HOST:PORT (for example 127.0.0.1:4444)") }
            host = String(rest[..<colon])
            rest = String(rest[rest.index(after: colon)...])
        }
        if host.isEmpty { host = "0.0.0.0" }
        guard let port = UInt16(rest), port > 0 else { throw SnapshotError(text, "the port must be 1-65535") }
        return (host, port)
    }

    private static func addresses(_ host: String, _ port: UInt16, passive: Bool) throws(SnapshotError) -> UnsafeMutablePointer<addrinfo> {
        var hints = addrinfo()
        hints.ai_family = AF_UNSPEC
        hints.ai_socktype = Int32(SOCK_STREAM.rawValue)
        if passive { hints.ai_flags = AI_PASSIVE }
        var result: UnsafeMutablePointer<addrinfo>?
        let status = getaddrinfo(host, String(port), &hints, &result)
        guard status == 0, let result else {
            throw SnapshotError("\(host):\(port)", "cannot be resolved: \(String(cString: gai_strerror(status)))")
        }
        return result
    }

    /// Listens on `address` and returns the first connection (closing the listener).
    public static func acceptOne(_ address: String, ready: (String) -> Void = { _ in }) throws(SnapshotError) -> Int32 {
        let (host, port) = try parse(address)
        let list = try addresses(host, port, passive: true)
        defer { freeaddrinfo(list) }
        let info = list.pointee
        let listener = socket(info.ai_family, info.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), info.ai_protocol)
        guard listener >= 0 else { throw SnapshotError(address, "cannot make a socket: \(String(cString: strerror(errno)))") }
        defer { close(listener) }
        var on: Int32 = 1
        setsockopt(listener, SOL_SOCKET, SO_REUSEADDR, &on, socklen_t(MemoryLayout<Int32>.size))
        guard bind(listener, info.ai_addr, info.ai_addrlen) == 0, listen(listener, 1) == 0 else {
            throw SnapshotError(address, "cannot listen: \(String(cString: strerror(errno)))")
        }
        ready("\(host):\(port)")
        while true {
            let connection = Glibc.accept(listener, nil, nil)
            if connection >= 0 { return connection }
            if errno != EINTR { throw SnapshotError(address, "accept failed: \(String(cString: strerror(errno)))") }
        }
    }

    /// A TCP connection to `address`.
    public static func connect(_ address: String) throws(SnapshotError) -> Int32 {
        let (host, port) = try parse(address)
        let list = try addresses(host, port, passive: false)
        defer { freeaddrinfo(list) }
        var entry: UnsafeMutablePointer<addrinfo>? = list
        var lastError = ECONNREFUSED
        while let current = entry {
            let info = current.pointee
            let descriptor = socket(info.ai_family, info.ai_socktype | Int32(SOCK_CLOEXEC.rawValue), info.ai_protocol)
            if descriptor >= 0 {
                if Glibc.connect(descriptor, info.ai_addr, info.ai_addrlen) == 0 {
                    var on: Int32 = 1
                    setsockopt(descriptor, Int32(IPPROTO_TCP), TCP_NODELAY, &on, socklen_t(MemoryLayout<Int32>.size))
                    return descriptor
                }
                lastError = errno
                close(descriptor)
            }
            entry = info.ai_next
        }
        throw SnapshotError(address, "nothing accepts a migration there (\(String(cString: strerror(lastError)))); is `hv run --incoming \(address)` waiting?")
    }

    /// A connection to the Unix socket `path` (what the source VMM opens; its confinement allows
    /// Unix-domain sockets only).
    public static func connectUnix(_ path: String) throws(SnapshotError) -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw SnapshotError(path, "cannot make a socket: \(String(cString: strerror(errno)))") }
        let result = unixSocketAddress(path) { Glibc.connect(descriptor, $0, $1) }
        guard result == 0 else {
            let code = errno
            close(descriptor)
            throw SnapshotError(path, "cannot connect: \(String(cString: strerror(code)))")
        }
        return descriptor
    }

    /// A listening Unix socket at `path` (0600), for the source VMM to connect to.
    public static func listenUnix(_ path: String) throws(SnapshotError) -> Int32 {
        let descriptor = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard descriptor >= 0 else { throw SnapshotError(path, "cannot make a socket: \(String(cString: strerror(errno)))") }
        let old = umask(0o177)
        let result = unixSocketAddress(path) { bind(descriptor, $0, $1) }
        umask(old)
        guard result == 0, listen(descriptor, 1) == 0 else {
            let code = errno
            close(descriptor)
            throw SnapshotError(path, "cannot listen: \(String(cString: strerror(code)))")
        }
        return descriptor
    }

    /// Waits up to `seconds` for a connection on `listener`.
    public static func accept(_ listener: Int32, within seconds: Double) throws(SnapshotError) -> Int32 {
        var entry = pollfd(fd: listener, events: Int16(POLLIN), revents: 0)
        let ready = poll(&entry, 1, Int32(seconds * 1000))
        guard ready > 0 else { throw SnapshotError("migration", "the VM did not connect within \(Int(seconds)) s") }
        let connection = Glibc.accept(listener, nil, nil)
        guard connection >= 0 else { throw SnapshotError("migration", "accept failed: \(String(cString: strerror(errno)))") }
        return connection
    }

    /// Copies both ways between `a` and `b` until both directions end; returns the bytes
    /// carried from `a` to `b` (the migration stream). `carried` is called as bytes go.
    public static func relay(_ a: Int32, _ b: Int32, carried: @escaping @Sendable (UInt64) -> Void = { _ in }) -> UInt64 {
        let total = Atomic<UInt64>(0)
        let back = Thread {
            pump(from: b, to: a) { _ in }
            shutdown(a, Int32(SHUT_WR))
        }
        back.start()
        pump(from: a, to: b) { count in carried(total.add(count, ordering: .relaxed).newValue) }
        shutdown(b, Int32(SHUT_WR))
        // The destination's answer arrives after the stream ends; the back pump ends with it.
        while !back.isFinished { usleep(1000) }
        return total.load(ordering: .relaxed)
    }

    private static func pump(from source: Int32, to target: Int32, _ carried: (UInt64) -> Void) {
        var buffer = [UInt8](repeating: 0, count: 1 << 20)
        while true {
            let count = buffer.withUnsafeMutableBytes { Glibc.read(source, $0.baseAddress!, $0.count) }
            if count < 0, errno == EINTR { continue }
            guard count > 0 else { return }
            var done = 0
            while done < count {
                let written = buffer.withUnsafeBytes { write(target, $0.baseAddress! + done, count - done) }
                if written < 0, errno == EINTR { continue }
                guard written > 0 else { return }
                done += written
            }
            carried(UInt64(count))
        }
    }
}
