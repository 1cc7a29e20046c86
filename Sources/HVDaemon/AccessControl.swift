// Who may call what (Documentation/Management.md, "Access control"): bearer tokens with roles,
// checked per route, every state-changing call audited.
import Foundation

/// What a token may do. Each role includes the ones below it.
public enum Role: String, Codable, Sendable, CaseIterable, Comparable {
    /// Reads: VM list and details, statistics, console, events, history, metrics.
    case viewer
    /// And changes running VMs' states: start, stop, pause, resume, reset.
    case `operator`
    /// And creates and deletes VMs, and reads the audit log.
    case admin

    public static func < (a: Role, b: Role) -> Bool { a.rank < b.rank }
    private var rank: Int { Role.allCases.firstIndex(of: self)! }
}

/// A caller, once its token is known.
public struct Principal: Sendable, Equatable {
    public var name: String
    public var role: Role
}

/// The tokens file: one token per line, `ROLE NAME TOKEN` (blank lines and `#` comments ignored).
/// It must not be readable by group or others (as ssh insists for its keys): a token is a password.
public struct TokenStore: Sendable {
    struct Entry: Sendable { var principal: Principal; var token: [UInt8] }
    private let entries: [Entry]

    public init(principals: [(name: String, role: Role, token: String)]) {
        entries = principals.map { Entry(principal: Principal(name: $0.name, role: $0.role), token: Array($0.token.utf8)) }
    }

    /// Reads `path`, refusing a file others can read, a malformed line, a short or repeated token.
    public init(file path: String) throws(VMDefinitionError) {
        var information = stat()
        guard stat(path, &information) == 0, let data = FileManager.default.contents(atPath: path) else {
            throw VMDefinitionError(field: path, problem: "cannot be read (no such file, or permission denied)")
        }
        guard information.st_mode & 0o077 == 0 else {
            throw VMDefinitionError(field: path, problem: "is readable by others (mode \(String(information.st_mode & 0o777, radix: 8))); chmod 600 it: it holds passwords")
        }
        var principals: [(String, Role, String)] = []
        for (number, line) in String(decoding: data, as: UTF8.self).split(separator: "\n", omittingEmptySubsequences: false).enumerated() {
            let words = line.split(separator: " ", omittingEmptySubsequences: true).map(String.init)
            guard let first = words.first, !first.hasPrefix("#") else { continue }
            let place = "\(path):\(number + 1)"
            guard words.count == 3, let role = Role(rawValue: words[0]) else {
                throw VMDefinitionError(field: place, problem: "expected ROLE NAME TOKEN with ROLE one of \(Role.allCases.map(\.rawValue).joined(separator: ", "))")
            }
            guard words[2].utf8.count >= 16 else { throw VMDefinitionError(field: place, problem: "the token is shorter than 16 characters") }
            guard !principals.contains(where: { $0.2 == words[2] }) else { throw VMDefinitionError(field: place, problem: "the same token as an earlier line") }
            principals.append((words[1], role, words[2]))
        }
        guard !principals.isEmpty else { throw VMDefinitionError(field: path, problem: "holds no token") }
        self.init(principals: principals)
    }

    /// The principal whose token is `presented`, compared in constant time per entry.
    public func authenticate(_ presented: String) -> Principal? {
        let bytes = Array(presented.utf8)
        var found: Principal?
        for entry in entries where Self.constantTimeEqual(entry.token, bytes) { found = entry.principal }
        return found
    }

    private static func constantTimeEqual(_ a: [UInt8], _ b: [UInt8]) -> Bool {
        guard a.count == b.count else { return false }
        var difference: UInt8 = 0
        for index in a.indices { difference |= a[index] ^ b[index] }
        return difference == 0
    }
}

/// The audit log: one JSON object per line, appended and flushed to disk before the answer goes
/// out (O_APPEND, fsync), never rewritten. Who, what, when, result.
public final class AuditLog: @unchecked Sendable {
    // @unchecked Sendable: the descriptor is written under `lock`.
    public struct Entry: Codable, Sendable, Equatable {
        /// RFC 3339, UTC.
        public var time: String
        /// The token's name, or "-" when no valid token came.
        public var who: String
        public var role: String
        /// "POST /v1/vms/web1/pause".
        public var action: String
        /// The HTTP status of the answer.
        public var status: Int
        /// "ok" or the refusal's message.
        public var result: String
    }

    public let path: String
    private let descriptor: Int32
    private let lock = NSLock()

    public init(path: String) throws(VMDefinitionError) {
        descriptor = open(path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0o600)
        guard descriptor >= 0 else { throw VMDefinitionError(field: path, problem: "cannot open the audit log: \(String(cString: strerror(errno)))") }
        self.path = path
    }

    deinit { close(descriptor) }

    public func record(who: Principal?, action: String, status: Int, result: String) {
        let entry = Entry(time: ISO8601DateFormatter().string(from: Date()), who: who?.name ?? "-", role: who?.role.rawValue ?? "-",
                          action: action, status: status, result: result)
        guard var line = try? JSONEncoder().encode(entry) else { return }
        line.append(0x0A)
        lock.lock()
        defer { lock.unlock() }
        line.withUnsafeBytes { buffer in
            var offset = 0
            while offset < buffer.count {
                let written = write(descriptor, buffer.baseAddress! + offset, buffer.count - offset)
                if written < 0, errno == EINTR { continue }
                guard written > 0 else { return }
                offset += written
            }
        }
        fsync(descriptor)
    }

    /// The last `limit` entries, oldest first.
    public func tail(_ limit: Int) -> [Entry] {
        guard let data = FileManager.default.contents(atPath: path) else { return [] }
        let lines = data.split(separator: 0x0A).suffix(limit)
        return lines.compactMap { try? JSONDecoder().decode(Entry.self, from: Data($0)) }
    }
}
