// A running VM's HTTP/JSON API on a Unix socket (`hv run --api-socket PATH`), the way
// Firecracker and Cloud Hypervisor are driven: one API per VMM process. Documentation/Management.md;
// the routes and schemas are in Resources/vm-api.yaml, served at /openapi.yaml.
import Foundation
import HVCore
import Hummingbird
import Logging
import NIOConcurrencyHelpers
import NIOCore
import NIOPosix
import ServiceLifecycle

/// Why the API could not start.
public struct VMAPIError: Error, CustomStringConvertible, Sendable {
    public var path: String
    public var problem: String
    public var description: String { "API socket \(path): \(problem)" }
}

/// The per-VM API's description.
public enum VMAPI {
    /// The OpenAPI 3 document (YAML), Resources/vm-api.yaml, as the server serves it at
    /// `/openapi.yaml`; empty if the package's resources were not installed beside the program.
    public static let openAPIDocument: String = {
        guard let url = Bundle.module.url(forResource: "vm-api", withExtension: "yaml"),
              let text = try? String(contentsOf: url, encoding: .utf8) else { return "" }
        return text
    }()
}

/// Serves `machine`'s API on the Unix socket `path` (created 0600: only its owner and root may
/// connect). `start()` returns once the socket listens; `stop()` finishes the requests under
/// way, closes the socket and removes its file.
///
/// Management calls that wait (pause waits for every vCPU to park, a statistics sample for
/// every vCPU to publish) run one at a time on the server's own thread, never on the HTTP
/// event loop: two clients pausing and resuming at once are serialised, as a VMM's monitor is.
public final class VMAPIServer<B: Backend>: @unchecked Sendable {
    // @unchecked Sendable: `serviceGroup` and `finished` are set in `start()` before any other
    // thread sees the server, and only read after.
    public let path: String
    let machine: Machine<B>
    private let blocking = NIOThreadPool(numberOfThreads: 1)
    private let eventLoops = MultiThreadedEventLoopGroup(numberOfThreads: 1)
    private var serviceGroup: ServiceGroup?
    private let finished = DispatchSemaphore(value: 0)

    /// What `POST /v1/vm/snapshot` does with an absolute path (hv run passes HVSnapshot's
    /// writer, with its key and command line); without it the route answers 501.
    let snapshot: (@Sendable (String) throws(SnapshotRefusal) -> SnapshotResult)?

    /// What `POST /v1/vm/migrate` does (hv run passes HVSnapshot's sender), and where a
    /// migration stands for `GET /v1/vm/migration`; without them the routes answer 501.
    let migrate: (@Sendable (MigrateRequest) throws(SnapshotRefusal) -> MigrateResult)?
    let migrationStatus: (@Sendable () -> MigrationStatus)?
    /// Every progress update after a sequence number, and the latest number, for
    /// `GET /v1/vm/migration/events`.
    let migrationChanges: (@Sendable (UInt64) -> (latest: UInt64, changes: [MigrationStatus]))?

    public init(machine: Machine<B>, path: String, snapshot: (@Sendable (String) throws(SnapshotRefusal) -> SnapshotResult)? = nil,
                migrate: (@Sendable (MigrateRequest) throws(SnapshotRefusal) -> MigrateResult)? = nil,
                migrationStatus: (@Sendable () -> MigrationStatus)? = nil,
                migrationChanges: (@Sendable (UInt64) -> (latest: UInt64, changes: [MigrationStatus]))? = nil) {
        self.machine = machine
        self.path = path
        self.snapshot = snapshot
        self.migrate = migrate
        self.migrationStatus = migrationStatus
        self.migrationChanges = migrationChanges
    }

    /// Binds the socket and serves; returns once it listens, or throws why it cannot.
    public func start() throws(VMAPIError) {
        try checkSocketPath()
        blocking.start()
        let listening = DispatchSemaphore(value: 0)
        let failure = NIOLockedValueBox<String?>(nil)
        let path = self.path
        let logger = LogCategory.api.logger
        let app = Application(
            router: makeRouter(),
            configuration: ApplicationConfiguration(address: .unixDomainSocket(path: path), serverName: "hv"),
            onServerRunning: { _ in
                if chmod(path, 0o600) != 0 { failure.withLockedValue { $0 = "chmod 0600: \(String(cString: strerror(errno)))" } }
                listening.signal()
            },
            eventLoopGroupProvider: .shared(eventLoops),
            logger: logger)
        let group = ServiceGroup(configuration: .init(services: [app], logger: logger))
        serviceGroup = group
        // The socket is created under umask 0177 (never wider than 0600, not even for a moment).
        let previous = umask(0o177)
        Task.detached { [finished] in
            do { try await group.run() } catch {
                failure.withLockedValue { if $0 == nil { $0 = "\(error)" } }
                listening.signal()
            }
            finished.signal()
        }
        listening.wait()
        umask(previous)
        if let problem = failure.withLockedValue({ $0 }) {
            stop()
            throw VMAPIError(path: path, problem: problem)
        }
        LogCategory.api.logger.info("API listening on \(path)")
    }

    /// Finishes the requests under way, closes the socket and removes its file. Idempotent.
    public func stop() {
        guard let group = serviceGroup else { return }
        serviceGroup = nil
        Task.detached { await group.triggerGracefulShutdown() }
        finished.wait()
        unlink(path)
        try? blocking.syncShutdownGracefully()
        try? eventLoops.syncShutdownGracefully()
    }

    /// An existing socket file nobody answers on is left from a process that died: replaced.
    /// One that answers belongs to a live process, and anything else is not ours to remove.
    private func checkSocketPath() throws(VMAPIError) {
        guard !path.isEmpty, path.utf8.count <= UnixSocketProbe.maximumLength else {
            throw VMAPIError(path: path, problem: "a Unix socket path is 1-\(UnixSocketProbe.maximumLength) bytes")
        }
        switch UnixSocketProbe(path: path) {
        case .missing, .tooLong: break
        case .stale: unlink(path)
        case .notASocket: throw VMAPIError(path: path, problem: "exists and is not a socket; remove it or choose another path")
        case .listening: throw VMAPIError(path: path, problem: "another process serves this socket (a running hv?); choose another path")
        case .unreachable(let code):
            throw VMAPIError(path: path, problem: "a socket that cannot be probed (\(String(cString: strerror(code)))); remove it or choose another path")
        }
    }

    // MARK: Routes

    private func makeRouter() -> Router<BasicRequestContext> {
        let router = Router(context: BasicRequestContext.self)
        router.middlewares.add(NotFoundMessage(routes: OpenAPIRoutes(document: VMAPI.openAPIDocument)))
        let document = VMAPI.openAPIDocument
        router.get("/openapi.yaml") { _, _ in
            Response(status: .ok, headers: [.contentType: "application/yaml"], body: .init(byteBuffer: ByteBuffer(string: document)))
        }
        router.get("/v1/vm") { _, _ in try await self.onManagementThread { self.info() } }
        router.post("/v1/vm/pause") { _, _ in
            try await self.onManagementThread { () throws(HTTPError) in try self.managing { () throws(HVError) in try self.machine.pause() } }
        }
        router.post("/v1/vm/resume") { _, _ in
            try await self.onManagementThread { () throws(HTTPError) in try self.managing { () throws(HVError) in try self.machine.resume() } }
        }
        router.post("/v1/vm/reset") { _, _ in
            try await self.onManagementThread { () throws(HTTPError) in try self.managing { () throws(HVError) in try self.machine.reset() } }
        }
        router.post("/v1/vm/stop") { _, _ in
            // Returns at once: hv run ends when the vCPUs have stopped, closing this API with it.
            try await self.onManagementThread { () throws(HTTPError) in
                let state = self.machine.state
                guard state == .running || state == .paused else { throw Self.conflict(operation: "stop", state: state) }
                self.machine.stop()
                return self.info()
            }
        }
        router.post("/v1/vm/snapshot") { request, context in
            guard let snapshot = self.snapshot else {
                throw HTTPError(.notImplemented, message: "this VMM takes no snapshots (hv run does)")
            }
            let body: SnapshotRequest
            do { body = try await request.decode(as: SnapshotRequest.self, context: context) } catch {
                throw HTTPError(.badRequest, message: "the body must be {\"path\": \"/absolute/directory\"}")
            }
            guard body.path.hasPrefix("/"), !body.path.contains("\u{0}") else {
                throw HTTPError(.badRequest, message: "path '\(body.path)' must be absolute (the API's working directory is not the caller's)")
            }
            return try await self.onManagementThread { () throws(HTTPError) in
                do throws(SnapshotRefusal) { return try snapshot(body.path) } catch {
                    throw HTTPError(error.conflict ? .conflict : .badRequest, message: error.message)
                }
            }
        }
        router.post("/v1/vm/migrate") { request, context in
            guard let migrate = self.migrate else { throw HTTPError(.notImplemented, message: "this VMM cannot migrate (hv run can)") }
            let body: MigrateRequest
            do { body = try await request.decode(as: MigrateRequest.self, context: context) } catch {
                throw HTTPError(.badRequest, message: "the body must be {\"via\": \"/absolute/unix.sock\", \"maxDowntimeMs\": 10}")
            }
            guard body.via.hasPrefix("/"), !body.via.contains("\u{0}") else {
                throw HTTPError(.badRequest, message: "via '\(body.via)' must be an absolute Unix socket path")
            }
            if let downtime = body.maxDowntimeMs, !(downtime > 0 && downtime <= 60_000) {
                throw HTTPError(.badRequest, message: "maxDowntimeMs \(downtime) must be more than 0 and at most 60000")
            }
            return try await self.onManagementThread { () throws(HTTPError) in
                do throws(SnapshotRefusal) { return try migrate(body) } catch {
                    throw HTTPError(error.conflict ? .conflict : .badRequest, message: error.message)
                }
            }
        }
        router.get("/v1/vm/migration") { _, _ in
            guard let status = self.migrationStatus else { throw HTTPError(.notImplemented, message: "this VMM cannot migrate (hv run can)") }
            return status()
        }
        router.get("/v1/vm/migration/events") { _, _ in
            guard let status = self.migrationStatus, let changes = self.migrationChanges else {
                throw HTTPError(.notImplemented, message: "this VMM cannot migrate (hv run can)")
            }
            return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"],
                            body: ResponseBody { writer in try await self.streamMigration(status, changes, to: &writer) })
        }
        router.get("/v1/vm/statistics") { _, _ in
            try await self.onManagementThread {
                let statistics = self.machine.sampleStatistics()
                return StatisticsReport(state: self.machine.state, uptime: self.machine.uptime, statistics: statistics)
            }
        }
        router.get("/v1/vcpus/{id}/registers") { _, context in
            let text = try context.parameters.require("id")
            guard let id = Int(text), self.machine.vcpus.indices.contains(id) else {
                throw HTTPError(.notFound, message: "no vCPU '\(text)'; this VM has vCPUs 0...\(self.machine.vcpus.count - 1)")
            }
            return try await self.onManagementThread { () throws(HTTPError) in try self.registers(of: id) }
        }
        router.get("/v1/devices") { _, _ in
            self.machine.devices.registrations.map {
                DeviceEntry(name: $0.name, space: $0.space.rawValue, base: $0.base, length: $0.length)
            }
        }
        return router
    }

    /// Server-sent events (HTML Living Standard, "Server-sent events"): the progress as it is
    /// when the client connects, then one `migration` event for every update the migration
    /// makes (none is lost between polls: the monitor keeps them), a comment every 15 s to keep
    /// the connection alive; the stream ends once a migration it saw start is done or failed,
    /// or when the VM stops.
    private func streamMigration(_ status: @Sendable () -> MigrationStatus,
                                 _ changes: @Sendable (UInt64) -> (latest: UInt64, changes: [MigrationStatus]),
                                 to writer: inout any ResponseBodyWriter) async throws {
        let encoder = JSONEncoder()
        encoder.outputFormatting = .sortedKeys
        var (sequence, _) = changes(.max)
        var pending = [status()]
        var quietTicks = 0, sawStart = false, ended = false
        while true {
            for event in pending {
                let data = String(decoding: try encoder.encode(event), as: UTF8.self)
                try await writer.write(ByteBuffer(string: "event: migration\ndata: \(data)\n\n"))
                quietTicks = 0
                let over = event.phase == "done" || event.phase == "failed"
                if !over && event.phase != "idle" { sawStart = true }
                if sawStart && over { ended = true }
            }
            if ended || machine.state == .stopped { break }
            try await Task.sleep(for: .milliseconds(20))
            let next = changes(sequence)
            sequence = next.latest
            pending = next.changes
            quietTicks += 1
            if quietTicks >= 750 {
                try await writer.write(ByteBuffer(string: ": keep-alive\n\n"))
                quietTicks = 0
            }
        }
        try await writer.finish(nil)
    }

    private func info() -> VMInfo {
        let configuration = machine.configuration
        return VMInfo(state: machine.state.rawValue, backend: machine.backend.name, vcpus: machine.vcpus.count,
                      memoryBytes: configuration.memorySize, interruptController: "\(configuration.interruptController)",
                      uptimeSeconds: machine.uptime, exits: machine.sampleExits(), resets: machine.resets, sleeps: machine.sleeps,
                      asleep: machine.isAsleep, pid: getpid())
    }

    /// A state change, answered with the VM's info after it; a change the state does not allow
    /// is 409 Conflict naming the state.
    private func managing(_ change: () throws(HVError) -> Void) throws(HTTPError) -> VMInfo {
        do { try change() } catch {
            switch error {
            case .invalidState(let operation, let state): throw Self.conflict(operation: operation, state: state)
            case .configuration(let problem):
                throw HTTPError(.conflict, message: "this VM cannot do that: \(problem.field) is \(problem.value); it needs \(problem.expected)")
            default: throw HTTPError(.internalServerError, message: "\(error)")
            }
        }
        return info()
    }

    private static func conflict(operation: String, state: MachineState) -> HTTPError {
        let hint = switch (operation, state) {
        case ("pause", .paused): "; it is already paused"
        case ("resume", .running): "; it is running (POST /v1/vm/pause first)"
        default: ""
        }
        return HTTPError(.conflict, message: "cannot \(operation) a VM that is \(state)\(hint)")
    }

    /// A vCPU's registers: only while it is out of the guest (paused or stopped), or they would
    /// be stale before they were sent.
    private func registers(of id: Int) throws(HTTPError) -> VCPURegisters {
        let state = machine.state
        guard state == .paused || state == .stopped || state == .created else {
            throw HTTPError(.conflict, message: "vCPU \(id) is \(state); its registers are read while the VM is paused (POST /v1/vm/pause)")
        }
        do {
            let vcpu = machine.vcpus[id]
            return VCPURegisters(vcpu: id, registers: try vcpu.registers(), special: try vcpu.specialRegisters())
        } catch {
            throw HTTPError(.internalServerError, message: "reading vCPU \(id)'s registers: \(error)")
        }
    }

    /// Runs `body` on the management thread (a blocking call must not hold an event loop or a
    /// Swift concurrency thread).
    private func onManagementThread<T: Sendable>(_ body: @escaping @Sendable () throws(HTTPError) -> T) async throws -> T {
        try await blocking.runIfActive { () throws -> T in try body() }
    }
}

extension VMInfo: ResponseEncodable {}
extension StatisticsReport: ResponseEncodable {}
extension VCPURegisters: ResponseEncodable {}
extension DeviceEntry: ResponseEncodable {}
extension SnapshotResult: ResponseEncodable {}
extension MigrateResult: ResponseEncodable {}
extension MigrationStatus: ResponseEncodable {}
