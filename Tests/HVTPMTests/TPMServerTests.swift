// The swtpm-protocol server with HV's own client, and the bad input rules of issue 5.
import Foundation
import HVTPM
import Testing
#if canImport(Glibc)
import Glibc
#endif

/// A server on free loopback ports running on a background thread.
final class RunningServer: @unchecked Sendable {
    let engine: LibTPMSEngine
    let server: TPMServer
    private let done = NSCondition()
    private var finished = false

    init(directory: TPMStateDirectory? = nil, idleTimeout: Double = 60) throws {
        engine = try LibTPMSEngine.open(directory: directory, holder: "RunningServer")
        server = try TPMServer(engine: engine, directory: directory, port: 0, startupClear: true, idleTimeout: idleTimeout)
        try server.powerOn()
        let thread = Thread { [self] in
            server.run()
            done.lock()
            finished = true
            done.broadcast()
            done.unlock()
        }
        thread.start()
    }

    func stop() {
        server.stop()
        done.lock()
        while !finished { done.wait() }
        done.unlock()
        try? engine.close()
    }

    /// A raw connection to the data (or control) port.
    func connect(control: Bool = false) throws -> Int32 {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = (control ? server.controlPort : server.dataPort).bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let result = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        #expect(result == 0)
        return fd
    }
}

/// A raw connection to a Unix-domain socket at `path` (-1 when refused).
func connectUnix(_ path: String) -> Int32 {
    let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
    var address = sockaddr_un()
    address.sun_family = sa_family_t(AF_UNIX)
    withUnsafeMutableBytes(of: &address.sun_path) { bytes in
        for (index, byte) in path.utf8.enumerated() where index < bytes.count - 1 { bytes[index] = byte }
    }
    let result = withUnsafePointer(to: &address) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.connect(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) }
    }
    if result != 0 { close(fd); return -1 }
    return fd
}

func send(_ fd: Int32, _ bytes: [UInt8]) {
    _ = bytes.withUnsafeBytes { write(fd, $0.baseAddress, $0.count) }
}

/// Reads until end of stream (the server closed) or `limit` bytes.
func receiveAll(_ fd: Int32, limit: Int = 1 << 16) -> [UInt8] {
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 4096)
    while bytes.count < limit {
        let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, min($0.count, limit - bytes.count)) }
        if count <= 0 { break }
        bytes += chunk[0..<count]
    }
    return bytes
}

extension TPMLibTPMSSuites {
    @Suite struct TPMServerTests {
        @Test func theClientEngineRunsCommandsAndLocalitiesThroughTheServer() throws {
            let running = try RunningServer()
            defer { running.stop() }
            let client = try SwtpmClientEngine(port: running.server.dataPort)
            defer { try? client.close() }
            for locality: UInt8 in [0, 3, 0] {
                let response = try client.execute(TPMCommand.getRandom(32), locality: locality)
                #expect(TPMResponse.code(response) == 0)
                #expect(response.count == 44)
            }
        }

        @Test func stateBlobsRoundTripOverTheControlChannel() throws {
            let running = try RunningServer()
            defer { running.stop() }
            let client = try SwtpmClientEngine(port: running.server.dataPort)
            defer { try? client.close() }
            _ = try client.execute(TPMCommand.pcrExtend(16, digests: [(.sha256, SHA256.hash(Array("hello".utf8)))]), locality: 0)
            let snapshot = try client.saveState()
            try client.powerCycle()  // CMD_INIT: PCRs reset, Startup sent again (startup-clear)
            let reset = TPMCommand.pcrReadDigest(try client.execute(TPMCommand.pcrRead(16, bank: .sha256), locality: 0))
            #expect(reset == [UInt8](repeating: 0, count: 32))
            try client.restoreState(snapshot)  // CMD_STOP, SET_STATEBLOB x2, CMD_INIT
            let pcr = TPMCommand.pcrReadDigest(try client.execute(TPMCommand.pcrRead(16, bank: .sha256), locality: 0))
            #expect(pcr?.hexString == "9851312028952521510E8EAAB5BE94E7DC24B5FC292B2E9781173CF11FFA9878")
        }

        @Test("past 32 open connections a new one is closed on arrival; once some end, new ones are served again")
        func connectionsAreLimited() throws {
            let running = try RunningServer()
            defer { running.stop() }
            let open = try (0..<TPMServer.maximumConnections).map { _ in try running.connect() }
            let extra = try running.connect()
            #expect(receiveAll(extra).isEmpty, "the server closes the connection past the limit")
            close(extra)
            for fd in open { close(fd) }
            // The server notices the closes as its threads end; a fresh client is then served.
            var answer: [UInt8] = []
            for _ in 0..<200 where answer.isEmpty {
                let fd = try running.connect()
                send(fd, TPMCommand.getRandom(8))
                var chunk = [UInt8](repeating: 0, count: 64)
                let count = chunk.withUnsafeMutableBytes { read(fd, $0.baseAddress, $0.count) }
                if count > 0 { answer = Array(chunk[0..<count]) }
                close(fd)
            }
            #expect(TPMResponse.code(answer) == 0)
        }

        @Test("a connection that sends nothing is closed after the idle timeout")
        func idleConnectionsAreClosed() throws {
            let running = try RunningServer(idleTimeout: 0.3)
            defer { running.stop() }
            let fd = try running.connect()
            let start = Date()
            #expect(receiveAll(fd).isEmpty)
            #expect(Date().timeIntervalSince(start) < 10)
            close(fd)
        }

        @Test("HV's client reconnects when the server closed its idle data connection, instead of failing the next command")
        func clientSurvivesTheIdleTimeout() throws {
            let running = try RunningServer(idleTimeout: 0.2)
            defer { running.stop() }
            let client = try SwtpmClientEngine(port: running.server.dataPort)
            defer { try? client.close() }
            #expect(TPMResponse.code(try client.execute(TPMCommand.getRandom(8), locality: 0)) == 0)
            let deadline = Date(timeIntervalSinceNow: 10)
            while running.server.openConnections > 0, Date() < deadline { usleep(10_000) }
            #expect(running.server.openConnections == 0, "the idle connection was closed")
            #expect(TPMResponse.code(try client.execute(TPMCommand.getRandom(8), locality: 0)) == 0)
        }

        @Test("data and control on Unix sockets created 0600: both served, a stale socket file replaced, both files gone after stop()")
        func unixSockets() throws {
            let folder = FileManager.default.temporaryDirectory.appendingPathComponent("hv-tpm-unix-\(UUID().uuidString)")
            try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
            defer { try? FileManager.default.removeItem(at: folder) }
            let dataPath = folder.appendingPathComponent("data").path, controlPath = folder.appendingPathComponent("ctrl").path
            // A socket file left by a server that was killed: replaced, not an error.
            let stale = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
            var address = sockaddr_un()
            address.sun_family = sa_family_t(AF_UNIX)
            withUnsafeMutableBytes(of: &address.sun_path) { bytes in for (index, byte) in controlPath.utf8.enumerated() { bytes[index] = byte } }
            _ = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(stale, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
            close(stale)

            let engine = try LibTPMSEngine.open(directory: nil, holder: "unixSockets")
            defer { try? engine.close() }
            let server = try TPMServer(engine: engine, directory: nil, data: .unix(path: dataPath), control: .unix(path: controlPath), startupClear: true)
            try server.powerOn()
            #expect(server.data == .unix(path: dataPath) && server.dataPort == 0)
            for path in [dataPath, controlPath] {
                var info = stat()
                #expect(stat(path, &info) == 0)
                #expect(info.st_mode & S_IFMT == S_IFSOCK)
                #expect(info.st_mode & 0o777 == 0o600, "\(path): mode \(String(info.st_mode & 0o777, radix: 8))")
            }
            let done = DispatchSemaphore(value: 0)
            Thread { server.run(); done.signal() }.start()

            let data = connectUnix(dataPath)
            #expect(data >= 0)
            send(data, TPMCommand.getRandom(8))
            let answer = receiveAll(data, limit: 20)
            #expect(answer.count == 20 && TPMResponse.code(answer) == 0)
            close(data)
            let control = connectUnix(controlPath)
            #expect(control >= 0)
            send(control, [0, 0, 0, 1])  // GET_CAPABILITY
            #expect(receiveAll(control, limit: 8) == [0, 0, 0, 0, 0, 0, 0x2F, 0xEF])
            close(control)

            server.stop()
            #expect(done.wait(timeout: .now() + 10) == .success)
            #expect(!FileManager.default.fileExists(atPath: dataPath) && !FileManager.default.fileExists(atPath: controlPath))
        }

        @Test("stop() twice, and after run() returned, is harmless (a signal and CMD_SHUTDOWN can both ask)")
        func stopIsIdempotent() throws {
            let running = try RunningServer()
            running.server.stop()
            running.stop()
            running.server.stop()
            #expect(running.server.openConnections == 0)
        }

        @Test("a SET_STATEBLOB announcing more than 16 MiB closes the connection; one announcing 16 MiB and sending 1 byte holds 1 byte, not 16 MiB")
        func stateBlobLengthIsBounded() throws {
            let running = try RunningServer()
            defer { running.stop() }
            let fd = try running.connect(control: true)
            send(fd, [0, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0x00, 0x00, 0x01])  // 16 MiB + 1
            #expect(receiveAll(fd).isEmpty, "closed without an answer")
            close(fd)
            let held = try running.connect(control: true)
            send(held, [0, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0, 1, 0x01, 0x00, 0x00, 0x00, 0xAA])
            usleep(100_000)
            #expect(running.server.openConnections == 1, "waiting for the rest of the blob")
            close(held)
        }

        @Test func aFrameWithAnImpossibleSizeIsRefusedAndTheConnectionClosed() throws {
            let running = try RunningServer()
            defer { running.stop() }
            for size: UInt32 in [2, 5000] {
                let fd = try running.connect()
                var frame: [UInt8] = [0x80, 0x01]
                frame.append(contentsOf: withUnsafeBytes(of: size.bigEndian, Array.init))
                frame += [0, 0, 1, 0x7B, 0, 8]
                send(fd, frame)
                let answer = receiveAll(fd)
                close(fd)
                #expect(TPMResponse.code(answer) == TPMResponseCode.commandSize.rawValue)
                #expect(answer.count == 10)
            }
        }

        @Test func aClientThatDisconnectsMidCommandChangesNothing() throws {
            let running = try RunningServer()
            defer { running.stop() }
            let extend = TPMCommand.pcrExtend(16, digests: [(.sha256, SHA256.hash(Array("hello".utf8)))])
            let fd = try running.connect()
            send(fd, Array(extend.prefix(extend.count - 5)))
            close(fd)
            let client = try SwtpmClientEngine(port: running.server.dataPort)
            defer { try? client.close() }
            let pcr = TPMCommand.pcrReadDigest(try client.execute(TPMCommand.pcrRead(16, bank: .sha256), locality: 0))
            #expect(pcr == [UInt8](repeating: 0, count: 32))
        }

        @Test func pipelinedFramesOnOneConnectionAllGetAnswers() throws {
            let running = try RunningServer()
            defer { running.stop() }
            let fd = try running.connect()
            defer { close(fd) }
            send(fd, TPMCommand.getRandom(4) + TPMCommand.getRandom(4) + TPMCommand.getRandom(4))
            let answers = receiveAll(fd, limit: 3 * 16)
            #expect(answers.count == 48)
            #expect([0, 16, 32].allSatisfy { TPMResponse.code(Array(answers[$0..<$0 + 16])) == 0 })
        }

        @Test func controlCommandsAnswerInSwtpmsLayouts() throws {
            let running = try RunningServer()
            defer { running.stop() }
            func control(_ bytes: [UInt8], expect size: Int) throws -> [UInt8] {
                let fd = try running.connect(control: true)
                defer { close(fd) }
                send(fd, bytes)
                return receiveAll(fd, limit: size)
            }
            #expect(try control([0, 0, 0, 1], expect: 8) == [0, 0, 0, 0, 0, 0, 0x2F, 0xEF])  // GET_CAPABILITY
            #expect(try control([0, 0, 0, 5, 4], expect: 4) == [0, 0, 0, 0])  // SET_LOCALITY 4
            #expect(try control([0, 0, 0, 5, 7], expect: 4) == [0, 0, 0, 0x3D])  // locality 7: TPM_BAD_LOCALITY
            #expect(try control([0, 0, 0, 99], expect: 4) == [0, 0, 0, 0x0A])  // unknown: TPM_BAD_ORDINAL
            #expect(try control([0, 0, 0, 17, 0, 0, 0, 0], expect: 16) == [0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0x10, 0, 0, 0, 0x10, 0])
            // SET_STATEBLOB while the TPM runs: refused, as swtpm does.
            #expect(try control([0, 0, 0, 13, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0], expect: 4) == [0, 0, 0, 0x26])
        }
    }
}
