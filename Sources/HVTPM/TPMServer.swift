// A TPM helper process's server side: the swtpm socket protocol (swtpm(8), "socket" mode),
// so QEMU, tpm2-tss's `swtpm` TCTI (tpm2-tools) and HV's `SwtpmClientEngine` can use a TPM
// that lives in another process. Data port: raw TPM frames, any number per connection.
// Control port (data port + 1): swtpm control commands (SwtpmProtocol.swift).
import CKVM
import Foundation
import HVCore
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Serves one `TPMEngine` on a data port and a control port (data port + 1).
///
/// Each connection gets a thread with blocking I/O; the engine serialises the commands. A
/// frame is executed only once it has fully arrived, so a client that disconnects mid-command
/// changes nothing; a command that was executed is committed (libtpms writes NVRAM through).
public final class TPMServer: @unchecked Sendable {
    // Sendable: mutable state is in `shared` (a Mutex) and atomics; fds are fixed at init.

    public let engine: any TPMEngine
    /// Where STORE_VOLATILE writes (nil: not supported).
    public let directory: TPMStateDirectory?
    public let host: String
    public let dataPort: UInt16
    public var controlPort: UInt16 { dataPort + 1 }
    /// Sends TPM2_Startup(CLEAR) after each power-on (swtpm's `--flags startup-clear`).
    public let startupClear: Bool
    /// The largest command frame accepted (libtpms's buffer).
    public static let maximumFrame = 4096
    /// Connections served at once (data and control together); more are closed on arrival.
    public static let maximumConnections = 32
    /// A connection that sends nothing for this long is closed (tpm2-tools open one per command).
    public let idleTimeout: Double

    private let dataSocket: Int32
    private let controlSocket: Int32
    private let stopPipe: StopPipe
    private let locality = Atomic<UInt8>(0)
    private let shared = Mutex(Shared())
    private let finished = NSCondition()
    private var liveConnections: Set<Int32> = []  // guarded by `finished`

    struct Shared {
        /// After CMD_STOP and until CMD_INIT, data commands fail (swtpm semantics).
        var tpmStopped = false
        var pendingPermanent: [UInt8]?
        var pendingVolatile: [UInt8]?
        var shutdownRequested = false
    }

    /// Binds `host:port` and `host:port+1`. With `port` 0, picks a free pair (for tests).
    public init(engine: any TPMEngine, directory: TPMStateDirectory?, host: String = "127.0.0.1",
                port: UInt16, startupClear: Bool = false, idleTimeout: Double = 60) throws(TPMError)
    {
        self.idleTimeout = idleTimeout
        self.engine = engine
        self.directory = directory
        self.host = host
        self.startupClear = startupClear
        var attempt = 0
        while true {
            attempt += 1
            let data = try TCPSocket.listen(host: host, port: port)
            do throws(TPMError) {
                guard data.port < UInt16.max else { throw TPMError.io(operation: "bind", path: host, errno: EADDRINUSE) }
                let control = try TCPSocket.listen(host: host, port: data.port + 1)
                dataSocket = data.fd
                controlSocket = control.fd
                dataPort = data.port
                break
            } catch {
                close(data.fd)
                if port != 0 || attempt >= 64 { throw error }
            }
        }
        stopPipe = try StopPipe()
    }

    deinit {
        close(dataSocket)
        close(controlSocket)
    }

    /// Connections being served now (data and control).
    public var openConnections: Int {
        finished.lock()
        defer { finished.unlock() }
        return liveConnections.count
    }

    /// Whether a client sent CMD_SHUTDOWN (the server then stops, as swtpm exits).
    public var shutdownRequested: Bool { shared.withLock { $0.shutdownRequested } }

    /// Powers the TPM on for clients: sends TPM2_Startup(CLEAR) when `startupClear` is set.
    public func powerOn() throws(TPMError) {
        guard startupClear else { return }
        let response = try engine.execute(TPMCommand.startup(.clear), locality: 0)
        let code = TPMResponse.code(response) ?? TPMResponseCode.failure.rawValue
        // TPM_RC_INITIALIZE: a resumed TPM is already started.
        guard code == 0 || code == TPMResponseCode.initialize.rawValue else { throw .command(name: "TPM2_Startup", responseCode: code) }
    }

    /// Accepts connections until `stop()`, then waits for open connections to end.
    public func run() {
        var entries = [pollfd(fd: dataSocket, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: controlSocket, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: stopPipe.readEnd, events: Int16(POLLIN), revents: 0)]
        while true {
            for index in entries.indices { entries[index].revents = 0 }
            if poll(&entries, 3, -1) < 0 {
                if errno == EINTR { continue }
                break
            }
            if entries[2].revents != 0 { break }
            for (index, isControl) in [(0, false), (1, true)] where entries[index].revents != 0 {
                // SOCK_CLOEXEC: set atomically with the accept, not by a later fcntl.
                let client = hv_accept4(entries[index].fd, Int32(SOCK_CLOEXEC.rawValue))
                guard client >= 0 else {
                    // Out of descriptors: the listening socket stays readable, so back off
                    // instead of spinning until a connection ends.
                    if errno == EMFILE || errno == ENFILE {
                        LogCategory.devices.logger.warning("TPM server: out of file descriptors; not accepting for 100 ms")
                        usleep(100_000)
                    }
                    continue
                }
                finished.lock()
                let full = liveConnections.count >= Self.maximumConnections
                finished.unlock()
                if full {
                    LogCategory.devices.logger.warning("TPM server: \(Self.maximumConnections) connections open; closing a new one")
                    close(client)
                    continue
                }
                TCPSocket.noDelay(client)
                // A peer that neither sends nor reads for the idle timeout loses its connection:
                // a receive times out, and so does a send to a peer that stopped reading.
                var timeout = timeval(tv_sec: Int(idleTimeout), tv_usec: Int((idleTimeout - idleTimeout.rounded(.down)) * 1_000_000))
                _ = setsockopt(client, SOL_SOCKET, SO_RCVTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                _ = setsockopt(client, SOL_SOCKET, SO_SNDTIMEO, &timeout, socklen_t(MemoryLayout<timeval>.size))
                spawn(client, control: isControl)
            }
        }
        finished.lock()
        // Connection threads block in read(2) without polling the stop pipe: wake them.
        for fd in liveConnections { shutdown(fd, Int32(SHUT_RDWR)) }
        while !liveConnections.isEmpty { finished.wait() }
        finished.unlock()
    }

    /// Ends `run()`: listening stops and open connections are closed. Any thread.
    public func stop() { stopPipe.signal() }

    private func spawn(_ fd: Int32, control: Bool) {
        finished.lock()
        liveConnections.insert(fd)
        finished.unlock()
        let thread = Thread { [self] in
            let stream = StoppableDescriptor(fd: fd, stop: stopPipe, pollBeforeRead: false)
            if control { serveControl(stream) } else { serveData(stream) }
            finished.lock()
            close(fd)
            liveConnections.remove(fd)
            finished.broadcast()
            finished.unlock()
        }
        thread.name = control ? "tpm-control" : "tpm-data"
        thread.start()
    }

    // MARK: Data

    private func serveData(_ stream: StoppableDescriptor) {
        var reader = FrameReader(stream: stream, maximum: Self.maximumFrame)
        while let outcome = reader.next() {
            switch outcome {
            case .refused(let response):
                _ = stream.writeAll(response)
                return
            case .frame(let command):
                guard stream.writeAll(execute(command, locality: locality.load(ordering: .relaxed))) else { return }
            }
        }
    }

    /// One command on the engine; engine failures become TPM_RC_FAILURE, what a TPM in failure
    /// mode answers, and a logged error (a libtpms failure, a full disk), as TISDevice logs them.
    func execute(_ command: [UInt8], locality: UInt8) -> [UInt8] {
        if shared.withLock({ $0.tpmStopped }) { return TPMResponse.error(.failure) }
        do { return try engine.execute(command, locality: locality) } catch {
            LogCategory.devices.logger.error("TPM server: the engine failed a command: \(error); answering TPM_RC_FAILURE")
            return TPMResponse.error(.failure)
        }
    }

    /// Serves TPM frames on a pair of descriptors (`hv tpm serve --stdio`, tpm2-tss's `cmd:`
    /// TCTI) until end of input or `stop()`.
    public func serveStream(input: Int32, output: Int32) {
        var reader = FrameReader(stream: StoppableDescriptor(fd: input, stop: stopPipe), maximum: Self.maximumFrame)
        let writer = StoppableDescriptor(fd: output, stop: stopPipe)
        while let outcome = reader.next() {
            switch outcome {
            case .refused(let response):
                _ = writer.writeAll(response)
                return
            case .frame(let command):
                guard writer.writeAll(execute(command, locality: 0)) else { return }
            }
        }
    }

    // MARK: Control

    private func serveControl(_ stream: StoppableDescriptor) {
        while let codeBytes = stream.readExactly(4) {
            guard let command = SwtpmControlCommand(rawValue: codeBytes.bigEndianUInt32(at: 0)) else {
                // The input length of an unknown command is unknown: answer, then drop the stream.
                _ = stream.writeAll(result(.badOrdinal))
                return
            }
            guard var input = stream.readExactly(command.fixedInputSize) else { return }
            if command == .setStateBlob {
                let length = Int(input.bigEndianUInt32(at: 8))
                guard length <= 16 << 20, let blob = stream.readExactly(length) else { return }
                input += blob
            }
            let response = control(command, input: input)
            guard stream.writeAll(response) else { return }
            if command == .shutdown { stop() }
        }
    }

    private func result(_ code: SwtpmResult) -> [UInt8] {
        var bytes: [UInt8] = []
        bytes.appendBigEndian(code.rawValue)
        return bytes
    }

    /// Executes one control command and returns its answer (swtpm-ioctls(8) for each layout).
    func control(_ command: SwtpmControlCommand, input: [UInt8]) -> [UInt8] {
        switch command {
        case .getCapability:
            var bytes: [UInt8] = []
            bytes.appendBigEndian(swtpmServerCapabilities)
            return bytes
        case .initialize:
            return result(initialize())
        case .shutdown:
            shared.withLock { $0.shutdownRequested = true }
            return result(.success)
        case .getTPMEstablished:
            // No H-CRTM sequence is supported, so the flag stays clear.
            return result(.success) + [0, 0, 0, 0]
        case .setLocality:
            guard input[0] <= 4 else { return result(.badLocality) }
            locality.store(input[0], ordering: .relaxed)
            return result(.success)
        case .cancelCommand:
            engine.cancelCommand()
            return result(.success)
        case .storeVolatile:
            guard let directory else { return result(.fail) }
            do throws(TPMError) {
                try engine.storeState(into: directory)
                return result(.success)
            } catch {
                return result(.fail)
            }
        case .resetTPMEstablished:
            return result(.success)
        case .getStateBlob:
            return stateBlob(type: input.bigEndianUInt32(at: 4), offset: Int(input.bigEndianUInt32(at: 8)))
        case .setStateBlob:
            guard shared.withLock({ $0.tpmStopped }) else { return result(.invalidPostInit) }
            let blob = Array(input[12...])
            switch SwtpmBlobType(rawValue: input.bigEndianUInt32(at: 4)) {
            case .permanent?: shared.withLock { $0.pendingPermanent = blob }
            case .volatile?: shared.withLock { $0.pendingVolatile = blob }
            case nil: return result(.badParameter)
            }
            return result(.success)
        case .stop:
            shared.withLock { $0.tpmStopped = true }
            return result(.success)
        case .getConfig:
            return result(.success) + [0, 0, 0, 0]
        case .setBufferSize:
            var bytes = result(.success)
            for _ in 0..<3 { bytes.appendBigEndian(UInt32(Self.maximumFrame)) }  // size, minimum, maximum
            return bytes
        case .hashStart, .hashData, .hashEnd, .setDataFD, .getInfo:
            return result(.badOrdinal)
        }
    }

    /// CMD_INIT: power-cycle, or start from blobs a client set with SET_STATEBLOB.
    private func initialize() -> SwtpmResult {
        let (permanent, volatile) = shared.withLock { state in
            defer { (state.pendingPermanent, state.pendingVolatile) = (nil, nil) }
            return (state.pendingPermanent, state.pendingVolatile)
        }
        do throws(TPMError) {
            switch (permanent, volatile) {
            case let (permanent?, volatile?):
                try engine.restoreState(TPMSnapshot(permanent: permanent, volatile: volatile))
            case (nil, nil):
                try engine.powerCycle()
                try powerOn()
            default:
                return .badParameter  // a snapshot needs both blobs
            }
        } catch {
            return .fail
        }
        shared.withLock { $0.tpmStopped = false }
        return .success
    }

    private func stateBlob(type: UInt32, offset: Int) -> [UInt8] {
        guard let kind = SwtpmBlobType(rawValue: type) else { return result(.badParameter) }
        let snapshot: TPMSnapshot
        do { snapshot = try engine.saveState() } catch { return result(.fail) }
        let blob = kind == .permanent ? snapshot.permanent : snapshot.volatile
        guard offset <= blob.count else { return result(.badParameter) }
        var bytes = result(.success)
        bytes.appendBigEndian(UInt32(0))  // state flags: not encrypted
        bytes.appendBigEndian(UInt32(blob.count))
        bytes.appendBigEndian(UInt32(blob.count - offset))
        return bytes + blob[offset...]
    }
}
