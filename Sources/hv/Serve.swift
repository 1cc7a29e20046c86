// `hv serve`: the host daemon (Documentation/Management.md, "The host daemon").
import ArgumentParser
import Foundation
import HVDaemon
import Hummingbird

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
        let daemon: Daemon
        do throws(DaemonError) { daemon = try Daemon(options: options) } catch {
            printError("hv: error: \(error.message)")
            throw ExitCode(ExitStatus.usage)
        }
        let state = self.state
        do {
            try await daemon.run { address in printError("hv serve: listening on \(address) (state \(state))") }
        } catch let error as DaemonError {
            printError("hv: error: \(error.message)")
            throw ExitCode(ExitStatus.usage)
        }
        printError("hv serve: stopped")
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
