// A TPM helper process's server side: the swtpm socket protocol (swtpm(8), "socket" mode),
// so QEMU, tpm2-tss's `swtpm` TCTI (tpm2-tools) and HV's `SwtpmClientEngine` can use a TPM
// that lives in another process. Data channel: raw TPM frames, any number per connection.
// Control channel: swtpm control commands (SwtpmProtocol.swift). Each on TCP (data port, and
// data port + 1 for control, as swtpm) or a Unix-domain socket created 0600.
//
// The sockets, the event loops and the per-connection limits are SwiftNIO's (NIOPosix): one
// event-loop thread serves every data connection and runs their commands in arrival order
// (libtpms is one engine behind one lock: commands cannot overlap anyway, and running them on
// the loop saves two thread hand-offs per command); a second one serves the control channel,
// so a CANCEL_TPM_CMD reaches the engine while a long command (an RSA key generation) runs.
import CKVM
import Foundation
import HVCore
import NIOCore
import NIOPosix
import Synchronization
#if canImport(Glibc)
import Glibc
#endif

/// Where a channel of the server listens.
public enum TPMServerEndpoint: Sendable, Hashable, CustomStringConvertible {
    /// A TCP port on an IPv4 address (port 0 when binding: the kernel picks one).
    case tcp(host: String, port: UInt16)
    /// A Unix-domain stream socket at `path`, created with mode 0600: only its owner (and
    /// root) may connect, the protection swtpm's `--ctrl type=unixio` gives the control channel.
    case unix(path: String)

    public var description: String {
        switch self {
        case let .tcp(host, port): "\(host):\(port)"
        case let .unix(path): "unix:\(path)"
        }
    }
}

/// Serves one `TPMEngine` on a data channel and a control channel.
///
/// A frame is executed only once it has fully arrived, so a client that disconnects
/// mid-command changes nothing; a command that was executed is committed (libtpms writes NVRAM
/// through). A client that pipelines without reading its answers stops being read once the
/// connection's outbound buffer is full (`TPMDataHandler`); a connection idle for `idleTimeout`
/// (nothing read or written) is closed, and past `maximumConnections` a new one is closed on
/// arrival.
public final class TPMServer: Sendable {
    public var engine: any TPMEngine { core.engine }
    /// Where STORE_VOLATILE writes (nil: not supported).
    public var directory: TPMStateDirectory? { core.directory }
    /// The data channel, with the port the kernel picked when asked for 0.
    public let data: TPMServerEndpoint
    /// The control channel.
    public let control: TPMServerEndpoint
    /// The data channel's TCP port (0 on a Unix socket).
    public var dataPort: UInt16 { if case .tcp(_, let port) = data { port } else { 0 } }
    /// The control channel's TCP port (0 on a Unix socket).
    public var controlPort: UInt16 { if case .tcp(_, let port) = control { port } else { 0 } }
    /// Sends TPM2_Startup(CLEAR) after each power-on (swtpm's `--flags startup-clear`).
    public var startupClear: Bool { core.startupClear }
    /// The largest command frame accepted (libtpms's buffer).
    public static let maximumFrame = 4096
    /// The largest state blob SET_STATEBLOB accepts (libtpms's permanent state is ~30 KiB).
    public static let maximumStateBlob = 16 << 20
    /// Connections served at once (data and control together); more are closed on arrival.
    public static let maximumConnections = 32
    /// A connection that sends nothing for this long is closed (tpm2-tools open one per command).
    public var idleTimeout: Double { core.idleTimeout }

    private let core: TPMServerCore
    /// Two loops: data connections on the first, control connections on the second.
    private let group: MultiThreadedEventLoopGroup
    private let listeners: [any Channel]
    private let finished = NSCondition()
    nonisolated(unsafe) private var isFinished = false  // guarded by `finished`
    /// Set (under its lock) before the event loops shut down; `stop()` schedules its closes under
    /// the same lock, so it never schedules onto loops that are gone (a second `stop()` racing
    /// `run()`'s shutdown did: NIO's "leaking promise" trap).
    private let shutDown = Mutex<Bool>(false)

    /// Binds `host:port` (data) and `host:port+1` (control). With `port` 0, picks a free pair.
    public convenience init(engine: any TPMEngine, directory: TPMStateDirectory?, host: String = "127.0.0.1",
                            port: UInt16, startupClear: Bool = false, idleTimeout: Double = 60) throws(TPMError)
    {
        try self.init(engine: engine, directory: directory, data: .tcp(host: host, port: port), control: nil,
                      startupClear: startupClear, idleTimeout: idleTimeout)
    }

    /// Binds `data` and `control`; a nil `control` is TCP on the data port + 1 (data must then
    /// be TCP). A TCP data port 0 picks a free pair.
    public init(engine: any TPMEngine, directory: TPMStateDirectory?, data: TPMServerEndpoint, control: TPMServerEndpoint?,
                startupClear: Bool = false, idleTimeout: Double = 60) throws(TPMError)
    {
        guard idleTimeout > 0, idleTimeout <= 86_400 else {
            throw .connection("idle timeout \(idleTimeout) s is invalid; expected more than 0 and at most 86400 s (a day)")
        }
        let core = try TPMServerCore(engine: engine, directory: directory, startupClear: startupClear, idleTimeout: idleTimeout)
        let group = MultiThreadedEventLoopGroup(numberOfThreads: 2)
        var bound: [any Channel] = []
        do throws(TPMError) {
            switch (data, control) {
            case (.tcp(let host, let port), nil):
                _ = try TCPSocket.socketAddress(host: host, port: port)  // an IPv4 address, or a clear error
                // swtpm's layout: control on the data port + 1. Port 0: try free pairs.
                var attempt = 0
                while true {
                    attempt += 1
                    let dataChannel = try Self.bind(.tcp(host: host, port: port), control: false, core: core, group: group)
                    let picked = UInt16(dataChannel.localAddress?.port ?? 0)
                    do throws(TPMError) {
                        guard picked < UInt16.max else { throw TPMError.io(operation: "bind", path: "\(host):\(picked)", errno: EADDRINUSE) }
                        let controlChannel = try Self.bind(.tcp(host: host, port: picked + 1), control: true, core: core, group: group)
                        bound = [dataChannel, controlChannel]
                        break
                    } catch {
                        try? dataChannel.close().wait()
                        if port != 0 || attempt >= 64 { throw error }
                    }
                }
            case (.unix, nil):
                throw TPMError.connection("a data channel on a Unix socket needs a control endpoint of its own")
            case (_, let control?):
                for case .tcp(let host, let port) in [data, control] { _ = try TCPSocket.socketAddress(host: host, port: port) }
                let dataChannel = try Self.bind(data, control: false, core: core, group: group)
                bound = [dataChannel]
                bound.append(try Self.bind(control, control: true, core: core, group: group))
            }
        } catch {
            for channel in bound { try? channel.close().wait() }
            group.shutdownGracefully { _ in }
            throw error
        }
        self.core = core
        self.group = group
        self.listeners = bound
        self.data = Self.endpoint(of: bound[0], asked: data)
        self.control = Self.endpoint(of: bound[1], asked: control ?? data)
        // CMD_SHUTDOWN stops the server as stop() does (weak: the core outlives no server).
        core.onStop { [weak self] in self?.stop() }
    }

    deinit {
        if !shutDown.withLock({ (flag: inout Bool) -> Bool in defer { flag = true }; return flag }) {
            for channel in listeners { channel.close(promise: nil) }
            group.shutdownGracefully { _ in }
        }
    }

    /// A listening channel for one endpoint; a Unix socket is created 0600 (under a umask
    /// that allows nothing else, so it never exists with wider permissions).
    private static func bind(_ endpoint: TPMServerEndpoint, control: Bool, core: TPMServerCore,
                             group: MultiThreadedEventLoopGroup) throws(TPMError) -> any Channel
    {
        let isTCP: Bool
        if case .tcp = endpoint { isTCP = true } else { isTCP = false }
        let loops = Array(group.makeIterator())
        let loop = loops[control ? 1 : 0]
        let bootstrap = ServerBootstrap(group: loop, childGroup: loop)
            .serverChannelOption(ChannelOptions.backlog, value: 16)
            .serverChannelOption(ChannelOptions.socketOption(.so_reuseaddr), value: 1)
            // Read on demand: a handler asks for the next bytes when it is ready for them, and
            // one read(2) per wake-up (a TPM client sends a frame and waits).
            .childChannelOption(ChannelOptions.autoRead, value: false)
            .childChannelOption(ChannelOptions.maxMessagesPerRead, value: 1)
            .childChannelInitializer { channel in
                core.admit(channel, control: control, tcp: isTCP)
            }
        do {
            switch endpoint {
            case let .tcp(host, port):
                return try bootstrap.bind(host: host, port: Int(port)).wait()
            case let .unix(path):
                let previous = umask(0o177)
                defer { umask(previous) }
                let channel = try bootstrap.bind(unixDomainSocketPath: path, cleanupExistingSocketFile: true).wait()
                guard chmod(path, 0o600) == 0 else {
                    let code = errno
                    try? channel.close().wait()
                    throw TPMError.io(operation: "chmod 0600", path: path, errno: code)
                }
                return channel
            }
        } catch let error as TPMError {
            throw error
        } catch let error as IOError {
            throw .io(operation: "bind", path: endpoint.description, errno: error.errnoCode)
        } catch {
            throw .connection("cannot listen on \(endpoint): \(error)")
        }
    }

    private static func endpoint(of channel: any Channel, asked: TPMServerEndpoint) -> TPMServerEndpoint {
        guard case .tcp(let host, _) = asked, let port = channel.localAddress?.port else { return asked }
        return .tcp(host: host, port: UInt16(port))
    }

    /// Connections being served now (data and control).
    public var openConnections: Int { core.openChannels().count }

    /// Whether a client sent CMD_SHUTDOWN (the server then stops, as swtpm exits).
    public var shutdownRequested: Bool { core.shared.withLock { $0.shutdownRequested } }

    /// Powers the TPM on for clients: sends TPM2_Startup(CLEAR) when `startupClear` is set.
    public func powerOn() throws(TPMError) { try core.powerOn() }

    /// Serves until `stop()` (or a client's CMD_SHUTDOWN), then closes every connection and
    /// returns once they are closed and the server's threads have ended. The listening sockets
    /// accept from `init` on.
    public func run() {
        finished.lock()
        while !isFinished { finished.wait() }
        finished.unlock()
        // Connections close on the event loop; wait for the count to reach zero (bounded).
        let deadline = Date(timeIntervalSinceNow: 10)
        while openConnections > 0, Date() < deadline { usleep(1_000) }
        if !shutDown.withLock({ (flag: inout Bool) -> Bool in defer { flag = true }; return flag }) {
            try? group.syncShutdownGracefully()
        }
        for case .unix(let path) in [data, control] { unlink(path) }
    }

    /// Ends `run()`: listening stops and open connections are closed. Any thread.
    public func stop() {
        // After `run()` has shut the event loops down there is nothing left to stop.
        let scheduled = shutDown.withLock { shutDown -> Bool in
            guard !shutDown else { return false }
            let closes = listeners.map { $0.close() } + core.openChannels().map { $0.close() }
            EventLoopFuture.whenAllComplete(closes, on: group.next()).whenComplete { [self] _ in
                finished.lock()
                isFinished = true
                finished.broadcast()
                finished.unlock()
            }
            return true
        }
        guard scheduled else { return }
        core.stopPipe.signal()
    }

    /// Serves TPM frames on a pair of descriptors (`hv tpm serve --stdio`, tpm2-tss's `cmd:`
    /// TCTI) until end of input or `stop()`.
    public func serveStream(input: Int32, output: Int32) {
        var reader = FrameReader(stream: StoppableDescriptor(fd: input, stop: core.stopPipe), maximum: Self.maximumFrame)
        let writer = StoppableDescriptor(fd: output, stop: core.stopPipe)
        while let outcome = reader.next() {
            switch outcome {
            case .refused(let response):
                _ = writer.writeAll(response)
                return
            case .frame(let command):
                guard writer.writeAll(core.execute(command, locality: 0)) else { return }
            }
        }
    }
}

/// What the handlers share: the engine, the swtpm state, the open connections.
final class TPMServerCore: Sendable {
    let engine: any TPMEngine
    let directory: TPMStateDirectory?
    let startupClear: Bool
    let idleTimeout: Double
    /// Ends `serveStream`'s blocking reads.
    let stopPipe: StopPipe
    let locality = Atomic<UInt8>(0)
    let shared = Mutex(Shared())
    /// The connections being served, by identity (their count is the limit's measure).
    private let channels = Mutex<[ObjectIdentifier: any Channel]>([:])
    private let stopHandler = Mutex<(@Sendable () -> Void)?>(nil)

    struct Shared {
        /// After CMD_STOP and until CMD_INIT, data commands fail (swtpm semantics).
        var tpmStopped = false
        var pendingPermanent: [UInt8]?
        var pendingVolatile: [UInt8]?
        var shutdownRequested = false
    }

    init(engine: any TPMEngine, directory: TPMStateDirectory?, startupClear: Bool, idleTimeout: Double) throws(TPMError) {
        self.engine = engine
        self.directory = directory
        self.startupClear = startupClear
        self.idleTimeout = idleTimeout
        stopPipe = try StopPipe()
    }

    /// The child-channel initialiser: takes the connection in, or closes it past the limit, and
    /// sets up its pipeline.
    func admit(_ channel: any Channel, control: Bool, tcp: Bool) -> EventLoopFuture<Void> {
        let id = ObjectIdentifier(channel)
        let admitted = channels.withLock { open in
            guard open.count < TPMServer.maximumConnections else { return false }
            open[id] = channel
            return true
        }
        guard admitted else {
            LogCategory.devices.logger.warning("TPM server: \(TPMServer.maximumConnections) connections open; closing a new one")
            return channel.close()
        }
        channel.closeFuture.whenComplete { [self] _ in _ = channels.withLock { $0.removeValue(forKey: id) } }
        return channel.eventLoop.makeCompletedFuture {
            if tcp { try channel.syncOptions?.setOption(ChannelOptions.socketOption(.tcp_nodelay), value: 1) }
            let idle = IdleStateHandler(allTimeout: .nanoseconds(Int64(idleTimeout * 1e9)))
            let handler: any ChannelHandler = control ? TPMControlHandler(core: self) : TPMDataHandler(core: self)
            try channel.pipeline.syncOperations.addHandlers([idle, TPMConnectionGuard(), handler])
        }
    }

    func openChannels() -> [any Channel] { channels.withLock { Array($0.values) } }

    func onStop(_ handler: @escaping @Sendable () -> Void) { stopHandler.withLock { $0 = handler } }

    /// CMD_SHUTDOWN: the server stops once the answer is written.
    func requestStop() { stopHandler.withLock { $0 }?() }

    func powerOn() throws(TPMError) {
        guard startupClear else { return }
        let response = try engine.execute(TPMCommand.startup(.clear), locality: 0)
        let code = TPMResponse.code(response) ?? TPMResponseCode.failure.rawValue
        // TPM_RC_INITIALIZE: a resumed TPM is already started.
        guard code == 0 || code == TPMResponseCode.initialize.rawValue else { throw .command(name: "TPM2_Startup", responseCode: code) }
    }

    // MARK: Commands

    /// One command on the engine; engine failures become TPM_RC_FAILURE, what a TPM in failure
    /// mode answers, and a logged error (a libtpms failure, a full disk), as TISDevice logs them.
    func execute(_ command: [UInt8], locality: UInt8) -> [UInt8] {
        if shared.withLock({ $0.tpmStopped }) { return TPMResponse.error(.failure) }
        do { return try engine.execute(command, locality: locality) } catch {
            LogCategory.devices.logger.error("TPM server: the engine failed a command: \(error); answering TPM_RC_FAILURE")
            return TPMResponse.error(.failure)
        }
    }

    func result(_ code: SwtpmResult) -> [UInt8] {
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
            for _ in 0..<3 { bytes.appendBigEndian(UInt32(TPMServer.maximumFrame)) }  // size, minimum, maximum
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

/// The data channel of one connection: TPM frames in, responses out, in order.
///
/// Every whole frame that has arrived is executed at once (on this loop's thread: the engine
/// runs one command at a time whoever asks) and its answer written; a partial frame waits for
/// its bytes, so `pending` never holds more than one read past a frame. A peer that does not
/// read its answers fills the channel's outbound buffer past its high-water mark (64 KiB):
/// reading then stops until it drains (`channelWritabilityChanged`), so a client that
/// pipelines without reading costs a bounded amount of memory, and the idle timeout ends it.
final class TPMDataHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let core: TPMServerCore
    /// Bytes read and not yet consumed: a frame's beginning.
    private var pending = ByteBuffer()
    /// Set once a frame's size was refused: the framing is lost, the channel is closing.
    private var refused = false

    init(core: TPMServerCore) { self.core = core }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        guard !refused else { return }
        var bytes = unwrapInboundIn(data)
        pending.writeBuffer(&bytes)
        while pending.readableBytes >= 6, let size = pending.getInteger(at: pending.readerIndex + 2, as: UInt32.self) {
            guard size >= TPMHeader.size, size <= TPMServer.maximumFrame else {
                // Answer as a TPM does, then close.
                refused = true
                context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: TPMResponse.error(.commandSize)))).assumeIsolated().whenComplete { _ in
                    context.close(promise: nil)
                }
                return
            }
            guard pending.readableBytes >= Int(size), let frame = pending.readBytes(length: Int(size)) else { break }
            let response = core.execute(frame, locality: core.locality.load(ordering: .relaxed))
            context.write(wrapOutboundOut(ByteBuffer(bytes: response)), promise: nil)
        }
        pending.discardReadBytes()
    }

    func channelReadComplete(context: ChannelHandlerContext) {
        context.flush()
        if context.channel.isWritable { context.read() }
    }

    func channelWritabilityChanged(context: ChannelHandlerContext) {
        if context.channel.isWritable { context.read() }
        context.fireChannelWritabilityChanged()
    }
}

/// The control channel of one connection: swtpm control commands, one at a time.
final class TPMControlHandler: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer
    typealias OutboundOut = ByteBuffer

    private let core: TPMServerCore
    private var pending = ByteBuffer()
    private var busy = false

    init(core: TPMServerCore) { self.core = core }

    func channelRead(context: ChannelHandlerContext, data: NIOAny) {
        var bytes = unwrapInboundIn(data)
        pending.writeBuffer(&bytes)
    }

    func channelReadComplete(context: ChannelHandlerContext) { next(context) }

    private func next(_ context: ChannelHandlerContext) {
        guard !busy else { return }
        guard let code = pending.getInteger(at: pending.readerIndex, as: UInt32.self) else { return context.read() }
        guard let command = SwtpmControlCommand(rawValue: code) else {
            // The input length of an unknown command is unknown: answer, then drop the stream.
            busy = true
            context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: core.result(.badOrdinal)))).assumeIsolated().whenComplete { _ in
                context.close(promise: nil)
            }
            return
        }
        var size = 4 + command.fixedInputSize
        if command == .setStateBlob {
            // The blob's length is the input's third word; the blob follows (bounded, and held
            // only as its bytes arrive).
            guard let length = pending.getInteger(at: pending.readerIndex + 12, as: UInt32.self) else { return context.read() }
            guard Int(length) <= TPMServer.maximumStateBlob else { return context.close(promise: nil) }
            size += Int(length)
        }
        guard pending.readableBytes >= size, let message = pending.readBytes(length: size) else { return context.read() }
        pending.discardReadBytes()
        busy = true
        let answer = core.control(command, input: Array(message[4...]))
        context.writeAndFlush(wrapOutboundOut(ByteBuffer(bytes: answer))).assumeIsolated().whenComplete { written in
            if command == .shutdown { self.core.requestStop() }
            guard case .success = written else { return context.close(promise: nil) }
            self.busy = false
            self.next(context)
        }
    }

}

/// What every connection of the server gets before its channel's handler: the first read (the
/// channels read on demand), and the end of the connection when it was idle for the timeout
/// (nothing read or written: a peer that sent nothing, or stopped reading its answers) or
/// failed.
final class TPMConnectionGuard: ChannelInboundHandler {
    typealias InboundIn = ByteBuffer

    func channelActive(context: ChannelHandlerContext) {
        context.read()
        context.fireChannelActive()
    }

    func userInboundEventTriggered(context: ChannelHandlerContext, event: Any) {
        guard event is IdleStateHandler.IdleStateEvent else { return context.fireUserInboundEventTriggered(event) }
        context.close(promise: nil)
    }

    func errorCaught(context: ChannelHandlerContext, error: any Error) { context.close(promise: nil) }
}
