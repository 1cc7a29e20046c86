// A TPM in another process reached over the swtpm socket protocol: `hv tpm serve` or swtpm
// itself. This is how several VMs each get a TPM although libtpms is a per-process singleton
// (QEMU's tpm-emulator backend does the same with one swtpm per VM).
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// A `TPMEngine` that forwards to a swtpm-protocol server at `host:port` (control: port + 1).
///
/// The data connection stays open between commands; control commands use a connection each.
public final class SwtpmClientEngine: TPMEngine, @unchecked Sendable {
    // Sendable: the connection state is behind `connection`.

    public let host: String
    public let port: UInt16
    public var engineDescription: String { "swtpm protocol client of \(host):\(port)" }

    private struct Connection {
        var data: Int32 = -1
        var locality: UInt8 = 0
        var closed = false
    }

    private let connection = Mutex(Connection())
    private let stopPipe: StopPipe

    /// Connects to the data port at once, so a wrong address fails here rather than on the
    /// first command.
    public init(host: String = "127.0.0.1", port: UInt16) throws(TPMError) {
        self.host = host
        self.port = port
        stopPipe = try StopPipe()
        let fd = try TCPSocket.connect(host: host, port: port)
        connection.withLock { $0.data = fd }
    }

    deinit { try? close() }

    /// True when the peer has closed `fd` (a zero-byte peek without waiting).
    private static func peerClosed(_ fd: Int32) -> Bool {
        var byte: UInt8 = 0
        return recv(fd, &byte, 1, Int32(MSG_PEEK | MSG_DONTWAIT)) == 0
    }

    public func execute(_ command: [UInt8], locality: UInt8) throws(TPMError) -> [UInt8] {
        try connection.withLock { state throws(TPMError) -> [UInt8] in
            guard !state.closed else { throw .closed }
            if locality != state.locality {
                try control(.setLocality, input: [locality], answerSize: 4)
                state.locality = locality
            }
            // A server may close a connection that sat idle (TPMServer.idleTimeout): that shows
            // as end of file before anything is sent, so reconnect then instead of failing the
            // command. (A connection lost mid-command is not retried: it may have executed.)
            if state.data >= 0, Self.peerClosed(state.data) {
                Glibc.close(state.data)
                state.data = -1
            }
            if state.data < 0 { state.data = try TCPSocket.connect(host: host, port: port) }
            let stream = StoppableDescriptor(fd: state.data, stop: stopPipe, pollBeforeRead: false)
            guard stream.writeAll(command), let header = stream.readExactly(TPMHeader.size) else {
                Glibc.close(state.data)
                state.data = -1
                throw .connection("the TPM at \(host):\(port) closed the data connection")
            }
            let size = Int(header.bigEndianUInt32(at: 2))
            guard size >= TPMHeader.size, size <= 1 << 16 else { throw .malformedFrame("response size \(size)") }
            guard let body = stream.readExactly(size - TPMHeader.size) else {
                throw .connection("the TPM at \(host):\(port) cut a response short")
            }
            return header + body
        }
    }

    public func cancelCommand() {
        // Not under `connection`: the command being cancelled holds it.
        _ = try? control(.cancelCommand, input: [], answerSize: 4)
    }

    public func powerCycle() throws(TPMError) {
        try checkResult(control(.initialize, input: [0, 0, 0, 0], answerSize: 4), "CMD_INIT")
    }

    public func saveState() throws(TPMError) -> TPMSnapshot {
        TPMSnapshot(permanent: try stateBlob(.permanent), volatile: try stateBlob(.volatile))
    }

    public func restoreState(_ snapshot: TPMSnapshot) throws(TPMError) {
        try checkResult(control(.stop, input: [], answerSize: 4), "CMD_STOP")
        for (type, blob) in [(SwtpmBlobType.permanent, snapshot.permanent), (.volatile, snapshot.volatile)] {
            var input: [UInt8] = []
            input.appendBigEndian(UInt32(0))
            input.appendBigEndian(type.rawValue)
            input.appendBigEndian(UInt32(blob.count))
            try checkResult(control(.setStateBlob, input: input + blob, answerSize: 4), "CMD_SET_STATEBLOB")
        }
        try checkResult(control(.initialize, input: [0, 0, 0, 0], answerSize: 4), "CMD_INIT")
    }

    /// Disconnects. The server keeps the TPM and its state.
    public func close() throws(TPMError) {
        connection.withLock { state in
            if state.data >= 0 { Glibc.close(state.data) }
            state.data = -1
            state.closed = true
        }
    }

    // MARK: Control channel

    private func stateBlob(_ type: SwtpmBlobType) throws(TPMError) -> [UInt8] {
        var input: [UInt8] = []
        input.appendBigEndian(UInt32(0))
        input.appendBigEndian(type.rawValue)
        input.appendBigEndian(UInt32(0))
        return try withControlConnection { stream throws(TPMError) -> [UInt8] in
            guard stream.writeAll(code(.getStateBlob) + input), let head = stream.readExactly(16) else {
                throw .connection("CMD_GET_STATEBLOB: no answer")
            }
            try checkResult(head, "CMD_GET_STATEBLOB")
            guard let blob = stream.readExactly(Int(head.bigEndianUInt32(at: 12))) else {
                throw .connection("CMD_GET_STATEBLOB: blob cut short")
            }
            return blob
        }
    }

    private func code(_ command: SwtpmControlCommand) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(command.rawValue)
        return bytes
    }

    /// Sends one control command and reads a fixed-size answer.
    @discardableResult
    private func control(_ command: SwtpmControlCommand, input: [UInt8], answerSize: Int) throws(TPMError) -> [UInt8] {
        try withControlConnection { stream throws(TPMError) -> [UInt8] in
            guard stream.writeAll(code(command) + input), let answer = stream.readExactly(answerSize) else {
                throw .connection("control command \(command) to \(host):\(port + 1) got no answer")
            }
            return answer
        }
    }

    private func withControlConnection<T>(_ body: (StoppableDescriptor) throws(TPMError) -> T) throws(TPMError) -> T {
        let fd = try TCPSocket.connect(host: host, port: port + 1)
        defer { Glibc.close(fd) }
        return try body(StoppableDescriptor(fd: fd, stop: stopPipe))
    }

    private func checkResult(_ answer: [UInt8], _ name: String) throws(TPMError) {
        let code = answer.bigEndianUInt32(at: 0)
        guard code == 0 else { throw .library(operation: name, result: code) }
    }
}
