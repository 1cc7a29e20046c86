// hv serve's VMs: one `hv run --api-socket` process each, so that a crash or a hostile guest in
// one cannot touch the others or the daemon. The supervisor starts and stops them, restarts them
// by their policy, and keeps what their APIs last said (polled once a second) for the list,
// the metrics and the events. Documentation/Management.md, "The host daemon".
import Foundation
import HVManagement
import HVManagementClient
import Logging

/// A refusal or failure with the HTTP status the API answers with.
public struct DaemonError: Error, CustomStringConvertible, Sendable {
    public var status: Int
    public var message: String
    public var description: String { message }
    static func badRequest(_ message: String) -> Self { Self(status: 400, message: message) }
    static func notFound(_ name: String) -> Self { Self(status: 404, message: "no VM named '\(name)'") }
    static func conflict(_ message: String) -> Self { Self(status: 409, message: message) }
}

/// One VM as the daemon reports it (GET /v1/vms).
public struct VMStatus: Codable, Sendable, Equatable {
    public var name: String
    /// stopped (never started, or ended), starting, running, paused, stopping, restarting, crashed.
    public var state: String
    public var pid: Int32?
    /// Times the daemon started the process again by the restart policy.
    public var restarts: Int
    public var uptimeSeconds: Double?
    /// How the last process ended: status and what it means.
    public var lastExit: String?
    /// From the VM's own API, polled once a second while it runs.
    public var exits: UInt64?
    public var exitsPerSecond: Double?
    public var rssBytes: UInt64?
    public var vcpus: Int
    public var memory: String
    public var definition: VMDefinition
}

public actor Supervisor {
    final class ManagedVM {
        var definition: VMDefinition
        var state = "stopped"
        var process: Process?
        /// Bumped at every start, so a late termination report of an older process is ignored.
        var generation = 0
        var stopRequested = false
        var restarts = 0
        var backoff: Double = 1
        var started: Date?
        var lastExit: String?
        var statistics: StatisticsReport?
        var exitRate: Double?
        var rss: UInt64?
        var ended: [CheckedContinuation<Void, Never>] = []
        init(definition: VMDefinition) { self.definition = definition }
    }

    public let stateDirectory: String
    public let hvPath: String
    public let events: EventBus
    private var vms: [String: ManagedVM] = [:]
    private let log = Logger(label: "hv.api")
    private var shuttingDown = false
    private let cgroups = CgroupTree()

    /// `hvPath`: the `hv` that runs each VM (by default this very program).
    public init(stateDirectory: String, events: EventBus, hvPath: String? = nil) throws(DaemonError) {
        self.stateDirectory = stateDirectory
        self.events = events
        self.hvPath = hvPath ?? ((try? FileManager.default.destinationOfSymbolicLink(atPath: "/proc/self/exe")) ?? CommandLine.arguments[0])
        for folder in [stateDirectory + "/vms", stateDirectory + "/sockets"] {
            do { try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700]) } catch {
                throw DaemonError.badRequest("--state \(stateDirectory): cannot create \(folder): \(error.localizedDescription)")
            }
        }
        // The VMs' API sockets, by name: the longest name must still fit a socket path (107 bytes).
        let longest = (stateDirectory + "/sockets/" + String(repeating: "x", count: 40)).utf8.count
        guard longest < 108 else {
            throw DaemonError.badRequest("--state \(stateDirectory): too long for the VMs' socket paths (\(longest) bytes of at most 107); choose a shorter folder")
        }
    }

    // MARK: Definitions

    func folder(_ name: String) -> String { "\(stateDirectory)/vms/\(name)" }
    func apiSocket(_ name: String) -> String { "\(stateDirectory)/sockets/\(name)" }
    func consoleFile(_ name: String) -> String { folder(name) + "/console.log" }

    /// Loads the definitions kept in the state folder (VMs created over the API before).
    public func loadStored() {
        let folder = stateDirectory + "/vms"
        for name in (try? FileManager.default.contentsOfDirectory(atPath: folder))?.sorted() ?? [] {
            let file = "\(folder)/\(name)/vm.json"
            guard let data = FileManager.default.contents(atPath: file) else { continue }
            do {
                let definition = try VMDefinition.decode(data)
                vms[definition.name] = ManagedVM(definition: definition)
            } catch {
                log.warning("\(file): \(error); left out")
            }
        }
    }

    /// Creates a VM: checks the definition with `hv run --check` (the same checks a run makes),
    /// keeps it in the state folder, and starts it unless `autostart` is false. Over the API,
    /// paths must be absolute. Nothing is left behind when it is refused.
    @discardableResult
    public func create(_ definition: VMDefinition, replace: Bool = false, fromAPI: Bool) async throws(DaemonError) -> VMStatus {
        if fromAPI, let relative = definition.relativePaths.first {
            throw .badRequest("\(relative.field): '\(relative.path)' is relative; a VM created over the API names its files by absolute paths")
        }
        if let existing = vms[definition.name] {
            guard replace else { throw .conflict("a VM named '\(definition.name)' exists; delete it first or choose another name") }
            guard existing.process == nil else { throw .conflict("VM '\(definition.name)' is \(existing.state); stop it before replacing it") }
        }
        try await check(definition)
        // Limits the host cannot enforce are refused now, not when the VM starts.
        if let limits = definition.limits { _ = try cgroups.prepare(vm: definition.name, limits: limits) }
        let folder = folder(definition.name)
        do {
            try FileManager.default.createDirectory(atPath: folder, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
            let encoder = JSONEncoder()
            encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
            try encoder.encode(definition).write(to: URL(fileURLWithPath: folder + "/vm.json"), options: .atomic)
        } catch {
            try? FileManager.default.removeItem(atPath: folder)
            throw DaemonError(status: 500, message: "cannot keep VM '\(definition.name)' in \(folder): \(error.localizedDescription)")
        }
        vms[definition.name] = ManagedVM(definition: definition)
        events.publish("vm.created", vm: definition.name, message: "created")
        if definition.autostart ?? true { try start(definition.name) }
        return status(of: definition.name)!
    }

    /// `hv run ARGS --check`: a refusal names the VM file's field rather than hv run's option.
    private func check(_ definition: VMDefinition) async throws(DaemonError) {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-check-\(UUID().uuidString)").path
        let arguments = definition.runArguments(apiSocket: scratch + ".sock", console: scratch + ".log") + ["--check"]
        let (status, errors) = await Self.runToEnd(hvPath, arguments)
        try? FileManager.default.removeItem(atPath: scratch + ".log")
        guard status != 0 else { return }
        var message = errors.split(separator: "\n").first.map(String.init) ?? "hv run --check failed with status \(status)"
        if message.hasPrefix("hv: error: ") { message.removeFirst("hv: error: ".count) }
        // ArgumentParser's words for a value it could not parse: "The value 'X' is invalid for '--opt <v>' (see ...)".
        if let match = message.firstMatch(of: /The value '(.*)' is invalid for '(--[a-z0-9-]+)[^']*'(: --[a-z0-9-]+ [^:]*: (.*?))?( \(see '.*'\))?$/) {
            message = match.4.map { "\(match.2) '\(match.1)': \($0)" } ?? "\(match.2) '\(match.1)' is invalid"
        }
        for (option, field) in VMDefinition.optionFields where message.hasPrefix(option + " ") || message.hasPrefix(option + ":") {
            message = field + message.dropFirst(option.count)
            break
        }
        // hv run names a file it cannot use by its path: say which field gave it.
        let files = [("image", definition.image), ("kernel", definition.kernel), ("multiboot", definition.multiboot),
                     ("multiboot2", definition.multiboot2), ("elf", definition.elf), ("initrd", definition.initrd)]
        if let (field, _) = files.first(where: { $0.1.map { message.hasPrefix($0 + ":") } ?? false }) { message = "\(field) " + message }
        throw .badRequest(message)
    }

    // MARK: Lifecycle

    public func start(_ name: String) throws(DaemonError) {
        guard let vm = vms[name] else { throw .notFound(name) }
        guard vm.process == nil else { throw .conflict("VM '\(name)' is \(vm.state)") }
        guard !shuttingDown else { throw .conflict("the daemon is shutting down") }
        try launch(vm)
        events.publish("vm.started", vm: name, message: "started (pid \(vm.process?.processIdentifier ?? 0))")
    }

    private func launch(_ vm: ManagedVM) throws(DaemonError) {
        let name = vm.definition.name
        let process = Process()
        process.executableURL = URL(fileURLWithPath: hvPath)
        var arguments = vm.definition.runArguments(apiSocket: apiSocket(name), console: consoleFile(name))
        if let limits = vm.definition.limits { arguments += ["--cgroup", try cgroups.prepare(vm: name, limits: limits)] }
        process.arguments = arguments
        process.currentDirectoryURL = URL(fileURLWithPath: folder(name))
        process.standardInput = FileHandle.nullDevice
        let logPath = folder(name) + "/hv.log"
        FileManager.default.createFile(atPath: logPath, contents: nil, attributes: [.posixPermissions: 0o600])
        if let log = FileHandle(forWritingAtPath: logPath) {
            log.seekToEndOfFile()
            process.standardOutput = log
            process.standardError = log
        }
        vm.generation += 1
        let generation = vm.generation
        process.terminationHandler = { [weak self] ended in
            let status = ended.terminationStatus, signalled = ended.terminationReason == .uncaughtSignal
            Task { await self?.ended(name, generation: generation, status: status, signalled: signalled) }
        }
        do { try process.run() } catch {
            throw DaemonError(status: 500, message: "cannot start \(hvPath) for VM '\(name)': \(error.localizedDescription)")
        }
        vm.process = process
        vm.state = "starting"
        vm.stopRequested = false
        vm.started = Date()
        vm.statistics = nil
        vm.exitRate = nil
        vm.rss = nil
    }

    private func ended(_ name: String, generation: Int, status: Int32, signalled: Bool) {
        guard let vm = vms[name], vm.generation == generation else { return }
        let uptime = vm.started.map { Date().timeIntervalSince($0) } ?? 0
        if vm.definition.limits != nil { cgroups.remove(vm: name) }
        vm.process = nil
        vm.started = nil
        let meaning = Self.meaning(status: status, signalled: signalled)
        vm.lastExit = meaning
        let failed = signalled || status != 0
        let waiting = vm.ended
        vm.ended = []
        defer { for continuation in waiting { continuation.resume() } }
        if vm.stopRequested || shuttingDown {
            vm.state = "stopped"
            events.publish("vm.stopped", vm: name, message: "stopped (\(meaning))")
            return
        }
        vm.state = failed ? "crashed" : "stopped"
        events.publish(failed ? "vm.crashed" : "vm.exited", vm: name, message: meaning)
        let policy = vm.definition.restart ?? .never
        guard policy == .always || (policy == .onFailure && failed) else { return }
        // Exponential backoff, 1 s to 30 s, back to 1 s after a run of a minute or more.
        if uptime >= 60 { vm.backoff = 1 }
        let delay = vm.backoff
        vm.backoff = min(vm.backoff * 2, 30)
        vm.state = "restarting"
        events.publish("vm.restarting", vm: name, message: "restarting in \(delay) s (restart: \(policy.rawValue))")
        Task {
            try? await Task.sleep(for: .seconds(delay))
            await self.restart(name, after: generation)
        }
    }

    private func restart(_ name: String, after generation: Int) {
        guard let vm = vms[name], vm.generation == generation, vm.state == "restarting", !shuttingDown else { return }
        do {
            try launch(vm)
            vm.restarts += 1
            events.publish("vm.started", vm: name, message: "started again (restart \(vm.restarts), pid \(vm.process?.processIdentifier ?? 0))")
        } catch {
            vm.state = "crashed"
            events.publish("vm.crashed", vm: name, message: "could not be restarted: \(error)")
        }
    }

    /// What an `hv run` status means (Documentation/GettingStarted.md, exit statuses).
    static func meaning(status: Int32, signalled: Bool) -> String {
        if signalled { return "killed by signal \(status)" }
        switch status {
        case 0: return "status 0: the guest halted, powered off or was stopped"
        case 2: return "status 2: the guest crashed (triple fault, emulation failure, unmapped MMIO)"
        case 4: return "status 4: time or exit limit"
        case 64: return "status 64: hv run refused its command line"
        case 70: return "status 70: the host cannot run VMs"
        case 159: return "status 159: a system call outside the seccomp allow-list"
        case 129...158: return "status \(status): ended by signal \(status - 128)"
        default: return status & 1 == 1 ? "status \(status): the guest wrote \(status >> 1) to the debug-exit port" : "status \(status)"
        }
    }

    /// Stops a VM: through its API, then SIGTERM after 5 s, SIGKILL after 10 s; returns once it ended.
    public func stop(_ name: String) async throws(DaemonError) -> VMStatus {
        guard let vm = vms[name] else { throw .notFound(name) }
        if vm.state == "restarting" {
            vm.generation += 1  // the pending restart is dropped
            vm.state = "stopped"
            events.publish("vm.stopped", vm: name, message: "stopped (a restart was pending)")
            return status(of: name)!
        }
        guard let process = vm.process else { throw .conflict("VM '\(name)' is \(vm.state)") }
        vm.stopRequested = true
        vm.state = "stopping"
        let socket = apiSocket(name)
        let pid = process.processIdentifier
        Task.detached {
            _ = try? await VMAPIClient(socketPath: socket, timeout: .seconds(5)).post("/v1/vm/stop", as: VMInfo.self)
        }
        let watchdog = Task.detached {
            try await Task.sleep(for: .seconds(5))
            kill(pid, SIGTERM)
            try await Task.sleep(for: .seconds(5))
            kill(pid, SIGKILL)
        }
        await withCheckedContinuation { continuation in vm.ended.append(continuation) }
        watchdog.cancel()
        return status(of: name)!
    }

    /// Pause, resume or reset through the VM's own API (its refusals pass through as 409).
    public func forward(_ action: String, to name: String) async throws(DaemonError) -> VMStatus {
        guard let vm = vms[name] else { throw .notFound(name) }
        guard vm.process != nil, vm.state != "starting" else { throw .conflict("VM '\(name)' is \(vm.state)") }
        do {
            let info: VMInfo = try await VMAPIClient(socketPath: apiSocket(name), timeout: .seconds(10)).postAsync("/v1/vm/\(action)")
            vm.state = info.state
        } catch {
            throw DaemonError(status: error.status == 409 ? 409 : 502, message: "VM '\(name)': \(error.message)")
        }
        let past = ["pause": "paused", "resume": "resumed", "reset": "reset"][action] ?? action
        events.publish("vm.\(past)", vm: name, message: past)
        return status(of: name)!
    }

    public func delete(_ name: String) throws(DaemonError) {
        guard let vm = vms[name] else { throw .notFound(name) }
        guard vm.process == nil, vm.state != "restarting" else { throw .conflict("VM '\(name)' is \(vm.state); stop it before deleting it") }
        vms[name] = nil
        try? FileManager.default.removeItem(atPath: folder(name))
        events.publish("vm.deleted", vm: name, message: "deleted")
    }

    /// Stops every VM (the daemon is ending).
    public func shutdown() async {
        shuttingDown = true
        await withTaskGroup(of: Void.self) { group in
            for name in vms.keys where vms[name]?.process != nil {
                group.addTask { _ = try? await self.stop(name) }
            }
        }
    }

    // MARK: Reports

    /// VMs defined, running or not.
    public var count: Int { vms.count }

    public func list() -> [VMStatus] { vms.keys.sorted().compactMap { status(of: $0) } }

    public func status(of name: String) -> VMStatus? {
        guard let vm = vms[name] else { return nil }
        return VMStatus(name: name, state: vm.state, pid: vm.process?.processIdentifier, restarts: vm.restarts,
                        uptimeSeconds: vm.started.map { Date().timeIntervalSince($0) }, lastExit: vm.lastExit,
                        exits: vm.statistics?.exits, exitsPerSecond: vm.exitRate, rssBytes: vm.rss,
                        vcpus: vm.definition.cpus ?? 1, memory: vm.definition.memory ?? "16M", definition: vm.definition)
    }

    public func statistics(of name: String) throws(DaemonError) -> StatisticsReport? {
        guard let vm = vms[name] else { throw .notFound(name) }
        return vm.statistics
    }

    /// The last `bytes` of the VM's console (COM1) output.
    public func console(of name: String, bytes: Int) throws(DaemonError) -> Data {
        guard vms[name] != nil else { throw .notFound(name) }
        guard let handle = FileHandle(forReadingAtPath: consoleFile(name)) else { return Data() }
        defer { try? handle.close() }
        let size = (try? handle.seekToEnd()) ?? 0
        try? handle.seek(toOffset: size > UInt64(bytes) ? size - UInt64(bytes) : 0)
        return (try? handle.readToEnd()) ?? Data()
    }

    /// One poll of every running VM's API: state, statistics, exit rate, RSS; events for changes.
    /// Returns each polled VM's figures (for the history).
    @discardableResult
    public func poll(interval: Double) async -> [(vm: String, values: [String: Double])] {
        var polled: [(vm: String, values: [String: Double])] = []
        for (name, vm) in vms {
            guard let process = vm.process, !vm.stopRequested else { continue }
            let client = VMAPIClient(socketPath: apiSocket(name), timeout: .seconds(2))
            guard let report: StatisticsReport = try? await client.getAsync("/v1/vm/statistics") else { continue }
            if let previous = vm.statistics, report.exits >= previous.exits, interval > 0 {
                vm.exitRate = Double(report.exits - previous.exits) / interval
            }
            vm.statistics = report
            vm.rss = Self.residentBytes(of: process.processIdentifier)
            if vm.state != report.state, ["running", "paused"].contains(report.state) {
                if vm.state != "starting" { events.publish(report.state == "paused" ? "vm.paused" : "vm.resumed", vm: name, message: report.state) }
                vm.state = report.state
            }
            var values: [String: Double] = ["exits": Double(report.exits)]
            if let rate = vm.exitRate { values["exitsPerSecond"] = rate }
            if let rss = vm.rss { values["rssBytes"] = Double(rss) }
            for kind in report.kinds { values["p99Nanoseconds.\(kind.kind)"] = Double(kind.p99Nanoseconds) }
            events.publish("vm.metrics", vm: name, message: "metrics", values: values)
            polled.append((name, values))
        }
        return polled
    }

    /// VmRSS of `pid` from /proc, in bytes.
    static func residentBytes(of pid: Int32) -> UInt64? {
        guard let text = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = text.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kilobytes = UInt64(line.split(separator: " ", omittingEmptySubsequences: true).dropFirst().first ?? "") else { return nil }
        return kilobytes * 1024
    }

    /// Runs `executable` to its end (on a thread of its own); its status and standard error.
    static func runToEnd(_ executable: String, _ arguments: [String]) async -> (Int32, String) {
        await withCheckedContinuation { continuation in
            Thread {
                let process = Process()
                process.executableURL = URL(fileURLWithPath: executable)
                process.arguments = arguments
                process.standardInput = FileHandle.nullDevice
                process.standardOutput = FileHandle.nullDevice
                let errors = Pipe()
                process.standardError = errors
                do { try process.run() } catch {
                    continuation.resume(returning: (127, "cannot run \(executable): \(error.localizedDescription)"))
                    return
                }
                let data = errors.fileHandleForReading.readDataToEndOfFile()
                process.waitUntilExit()
                continuation.resume(returning: (process.terminationStatus, String(decoding: data, as: UTF8.self)))
            }.start()
        }
    }
}
