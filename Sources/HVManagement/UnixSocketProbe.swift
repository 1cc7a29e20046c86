// What is at a Unix socket path: the server asks before binding (a stale socket is replaced, a
// live one refused), the client before calling (a dead socket is said at once).
import Foundation
import HVCore

package enum UnixSocketProbe: Equatable {
    case missing
    case notASocket
    /// A process accepts connections on it.
    case listening
    /// A socket file nobody listens on: left by a process that ended.
    case stale
    case tooLong
    /// connect(2) failed otherwise (EACCES for a socket another user owns, ...).
    case unreachable(errno: Int32)

    package init(path: String) {
        var information = stat()
        guard lstat(path, &information) == 0 else { self = .missing; return }
        guard information.st_mode & S_IFMT == S_IFSOCK else { self = .notASocket; return }
        guard path.utf8.count <= Self.maximumLength else { self = .tooLong; return }
        let probe = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        defer { close(probe) }
        let connected = unixSocketAddress(path) { connect(probe, $0, $1) }
        self = connected == 0 ? .listening : errno == ECONNREFUSED ? .stale : .unreachable(errno: errno)
    }

    /// The longest path a socket address holds (sun_path less its terminator).
    package static let maximumLength = MemoryLayout.size(ofValue: sockaddr_un().sun_path) - 1
}
