// `hv serve`: the host daemon (Documentation/Management.md, "The host daemon").
import ArgumentParser
import Foundation
import HVDaemon
import Hummingbird
import Metrics
import Prometheus

struct Serve: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run many VMs, each in its own hv process, behind an HTTP API with tokens and roles, events, metrics and a dashboard.",
        discussion: """
            VMs come from VM files (--vm FILE, JSON or YAML; created or replaced and started at \
            start-up) and from POST /v1/vms; their definitions, consoles and logs live under \
            --state DIR, with the audit log. Every request carries a bearer token from --tokens \
            FILE (lines ROLE NAME TOKEN; roles viewer, operator, admin; the file must be 0600). \
            The API listens on loopback by default; its OpenAPI document is at /openapi.yaml, the \
            dashboard at /, Prometheus metrics at /metrics. SIGTERM or SIGINT stops every VM, then \
            the daemon (Documentation/Management.md).
            """)

    @Option(name: .long, help: ArgumentHelp("The daemon's folder: VM definitions, consoles, logs, API sockets, audit log.", valueName: "dir"))
    var state: String

    @Option(name: .long, help: ArgumentHelp("The tokens file: one `ROLE NAME TOKEN` per line, mode 0600.", valueName: "file"))
    var tokens: String

    @Option(name: .long, help: ArgumentHelp("Where the API listens: HOST:PORT (default 127.0.0.1:8080; port 0 picks one) or unix:PATH (created 0600).", valueName: "address"))
    var listen = "127.0.0.1:8080"

    @Option(name: .long, help: ArgumentHelp("A VM file to create (replacing a stopped VM of its name) and start; repeatable.", valueName: "file"))
    var vm: [String] = []

    @Option(name: .long, help: ArgumentHelp("Seconds between polls of the VMs (statistics, metrics events).", valueName: "seconds"))
    var pollInterval: Double = 1

    @Option(name: .long, help: ArgumentHelp("Alert rules (YAML or JSON): thresholds on the VMs' figures and lifecycle events, posted to a webhook or logged.", valueName: "file"))
    var alerts: String?

    @Option(name: .long, help: ArgumentHelp("How often the VMs' figures are written to the history (STATE/history.sqlite): 10s, 1m, ...", valueName: "duration"))
    var historyInterval = "10s"

    @Option(name: .long, help: ArgumentHelp("How long the history keeps samples: 7d, 24h, 90m, ...", valueName: "duration"))
    var historyRetention = "7d"

    @Option(name: .long, help: ArgumentHelp("Serve HTTPS with this PEM certificate chain (with --tls-key).", valueName: "file"))
    var tlsCert: String?

    @Option(name: .long, help: ArgumentHelp("The PEM private key of --tls-cert.", valueName: "file"))
    var tlsKey: String?

    @OptionGroup var logging: LoggingOptions

    func run() throws {
        // hv's commands are synchronous (one `main` with one-line errors); the daemon is async,
        // on Swift concurrency's threads, while this one waits.
        let finished = DispatchSemaphore(value: 0)
        let failure = FailureBox()
        Task.detached {
            do { try await self.serve() } catch { failure.error = error }
            finished.signal()
        }
        finished.wait()
        if let error = failure.error { throw error }
    }

    private func serve() async throws {
        logging.bootstrap()
        signal(SIGPIPE, SIG_IGN)
        var options = DaemonOptions(stateDirectory: state, address: try Self.address(listen), tokensFile: tokens)
        options.vmFiles = vm
        guard pollInterval > 0, pollInterval <= 60 else { throw ValidationError("--poll-interval \(pollInterval) is invalid; expected 0 < seconds <= 60") }
        options.pollInterval = pollInterval
        options.historyInterval = try Self.seconds(historyInterval, option: "--history-interval")
        options.historyRetention = try Self.seconds(historyRetention, option: "--history-retention")
        options.alertsFile = alerts
        options.tlsCertificate = tlsCert
        options.tlsKey = tlsKey
        let daemon: Daemon
        do throws(DaemonError) { daemon = try Daemon(options: options) } catch {
            printError("hv: error: \(error.message)")
            throw ExitCode(ExitStatus.usage)
        }
        // The daemon's own request metrics go to its registry (swift-metrics is process-wide).
        MetricsSystem.bootstrap(PrometheusMetricsFactory(registry: daemon.registry))
        let state = self.state
        do {
            try await daemon.run { address in printError("hv serve: listening on \(address) (state \(state))") }
        } catch let error as DaemonError {
            printError("hv: error: \(error.message)")
            throw ExitCode(ExitStatus.usage)
        }
        printError("hv serve: stopped")
    }

    /// A duration: a number of seconds, or a number with s, m, h or d.
    static func seconds(_ text: String, option: String) throws -> Double {
        let units: [Character: Double] = ["s": 1, "m": 60, "h": 3600, "d": 86400]
        let unit = text.last.flatMap { units[$0] }
        guard let value = Double(unit == nil ? Substring(text) : text.dropLast()), value > 0, value.isFinite else {
            throw ValidationError("\(option) \(text) is invalid; expected a positive duration such as 30s, 10m, 24h or 7d")
        }
        return value * (unit ?? 1)
    }

    /// HOST:PORT or unix:PATH.
    static func address(_ text: String) throws -> BindAddress {
        if text.hasPrefix("unix:") { return .unixDomainSocket(path: String(text.dropFirst(5))) }
        guard let colon = text.lastIndex(of: ":"), let port = Int(text[text.index(after: colon)...]), (0...65535).contains(port) else {
            throw ValidationError("--listen \(text) is invalid; expected HOST:PORT (127.0.0.1:8080) or unix:PATH")
        }
        return .hostname(String(text[..<colon]), port: port)
    }
}

/// The daemon's error, handed from its task to the waiting thread (the semaphore orders them).
private final class FailureBox: @unchecked Sendable {
    var error: (any Error)?
}
