// `hv serve`: the supervisor, the HTTP API and the poller, run together until SIGTERM or SIGINT,
// which stop every VM before the daemon ends (swift-service-lifecycle's graceful shutdown).
import Foundation
import HVManagement
import Hummingbird
import HummingbirdCore
import HummingbirdTLS
import Logging
import NIOSSL
import Prometheus
import NIOCore
import NIOPosix
import ServiceLifecycle

public struct DaemonOptions: Sendable {
    public var stateDirectory: String
    /// TCP address (loopback by default) or Unix socket the API listens on.
    public var address: BindAddress
    public var tokensFile: String
    /// VM files created (or replaced) and started at start-up.
    public var vmFiles: [String] = []
    /// Seconds between polls of the VMs' APIs (statistics, metrics events).
    public var pollInterval: Double = 1
    /// The `hv` that runs each VM (default: this program).
    public var hvPath: String?
    /// Seconds between samples written to the history, and how long they are kept.
    public var historyInterval: Double = 10
    public var historyRetention: Double = 7 * 24 * 3600
    /// Alert rules (AlertEngine.load), none by default.
    public var alertsFile: String?
    /// TLS: a PEM certificate chain and its PEM private key; plain HTTP without them.
    public var tlsCertificate: String?
    public var tlsKey: String?

    public init(stateDirectory: String, address: BindAddress, tokensFile: String) {
        self.stateDirectory = stateDirectory
        self.address = address
        self.tokensFile = tokensFile
    }
}

public final class Daemon: Sendable {
    public let options: DaemonOptions
    public let supervisor: Supervisor
    public let events = EventBus()
    let tokens: TokenStore
    let audit: AuditLog
    public let history: HistoryStore
    public let alerts: AlertEngine
    /// The daemon's own metrics (its HTTP requests, through swift-metrics), emitted at /metrics
    /// after the VMs' figures. Bootstrap swift-metrics with `PrometheusMetricsFactory(registry:)`
    /// on it, as `hv serve` does, for them to be recorded.
    public let registry = PrometheusCollectorRegistry()

    /// Reads the tokens, opens the audit log and the state folder; refuses with one line.
    public init(options: DaemonOptions) throws(DaemonError) {
        self.options = options
        do { tokens = try TokenStore(file: options.tokensFile) } catch { throw .badRequest("--tokens \(error.description)") }
        supervisor = try Supervisor(stateDirectory: options.stateDirectory, events: events, hvPath: options.hvPath)
        do { audit = try AuditLog(path: options.stateDirectory + "/audit.log") } catch { throw .badRequest("--state \(error.description)") }
        history = try HistoryStore(path: options.stateDirectory + "/history.sqlite", retention: options.historyRetention)
        alerts = AlertEngine(rules: try options.alertsFile.map { (file) throws(DaemonError) in try AlertEngine.load(file: file) } ?? [], events: events)
    }

    /// Loads the stored VMs and the VM files, starts what should run, serves until a signal.
    /// `onListening` gets the address once the API listens.
    public func run(onListening: @escaping @Sendable (String) -> Void = { _ in }) async throws {
        await supervisor.loadStored()
        var definitions: [VMDefinition] = []
        for file in options.vmFiles {
            do { definitions.append(try VMDefinition.load(file: file)) } catch { throw DaemonError.badRequest("--vm \(file): \(error.description)") }
        }
        let logger = Logger(label: "hv.api")
        // A Unix listener's socket is created under umask 0177 (0600, never wider for a moment);
        // the umask is back once it listens, before any VM's process starts.
        let previous = umask(0o177)
        let server = DaemonServer(supervisor: supervisor, events: events, tokens: tokens, audit: audit, history: history, registry: registry)
        let address = options.address
        let scheme = options.tlsCertificate == nil ? "http" : "https"
        let app = Application(
            router: server.makeRouter(),
            server: try Self.serverBuilder(certificate: options.tlsCertificate, key: options.tlsKey),
            configuration: ApplicationConfiguration(address: address, serverName: "hv-serve"),
            onServerRunning: { [previous] channel in
                umask(previous)
                if let path = channel.localAddress?.pathname { chmod(path, 0o600) }
                onListening(channel.localAddress.map { $0.pathname.map { "unix:\($0)" } ?? "\(scheme)://\($0.ipAddress ?? "?"):\($0.port ?? 0)" } ?? "?")
            },
            logger: logger)
        let group = ServiceGroup(configuration: .init(
            services: [.init(service: app), .init(service: Keeper(daemon: self, definitions: definitions))],
            gracefulShutdownSignals: [.sigterm, .sigint], logger: logger))
        try await group.run()
    }

    /// HTTP/1.1, over TLS when given a certificate and key (swift-nio-ssl, BoringSSL).
    static func serverBuilder(certificate: String?, key: String?) throws(DaemonError) -> HTTPServerBuilder {
        switch (certificate, key) {
        case (nil, nil): return .http1()
        case (let certificate?, let key?):
            do {
                let chain = try NIOSSLCertificate.fromPEMFile(certificate).map { NIOSSLCertificateSource.certificate($0) }
                guard !chain.isEmpty else { throw DaemonError.badRequest("--tls-cert \(certificate): no certificate in it") }
                let configuration = TLSConfiguration.makeServerConfiguration(certificateChain: chain, privateKey: .file(key))
                // The key is read when the first connection comes: read it now, so a bad one stops the start.
                _ = try NIOSSLPrivateKey(file: key, format: .pem)
                return try .tls(.http1(), tlsConfiguration: configuration)
            } catch let error as DaemonError {
                throw error
            } catch {
                throw .badRequest("--tls-cert \(certificate) / --tls-key \(key): \(error)")
            }
        default:
            throw .badRequest("--tls-cert and --tls-key go together")
        }
    }

    /// Creates the VM files' VMs (replacing stopped ones of the same name), polls the running
    /// VMs while the daemon runs, and stops them all when it ends.
    struct Keeper: Service {
        let daemon: Daemon
        let definitions: [VMDefinition]

        func run() async throws {
            let supervisor = daemon.supervisor
            for definition in definitions {
                do { try await supervisor.create(definition, replace: true, fromAPI: false) } catch {
                    daemon.events.publish("vm.crashed", vm: definition.name, message: "not created: \(error.message)")
                    Logger(label: "hv.api").error("VM file for '\(definition.name)': \(error.message)")
                }
            }
            let options = daemon.options, history = daemon.history
            let alerting = Task { await daemon.alerts.run() }
            await withGracefulShutdownHandler {
                var lastSample = Date.distantPast, lastPrune = Date(), lastBeat = Date()
                while !Task.isCancelled, !Task.isShuttingDownGracefully {
                    let polled = await supervisor.poll(interval: options.pollInterval)
                    let now = Date()
                    if now.timeIntervalSince(lastSample) >= options.historyInterval {
                        lastSample = now
                        for (vm, values) in polled {
                            do { try history.record(vm: vm, values: values, at: now) } catch {
                                Logger(label: "hv.api").error("history: \(error)")
                            }
                        }
                    }
                    if now.timeIntervalSince(lastPrune) >= 60 {
                        lastPrune = now
                        _ = try? history.prune(now: now)
                    }
                    if now.timeIntervalSince(lastBeat) >= 15 {
                        lastBeat = now
                        daemon.events.keepAlive()
                    }
                    try? await Task.sleep(for: .seconds(options.pollInterval))
                }
            } onGracefulShutdown: {}
            await supervisor.shutdown()
            daemon.events.finish()
            await alerting.value
        }
    }
}
