// `hv ctl SOCKET ACTION`: the client of a running VM's API (`hv run --api-socket SOCKET`).
import ArgumentParser
import Foundation
import HVManagement
import HVManagementClient
import HVSnapshot
import Synchronization

struct Ctl: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ctl",
        abstract: "Talk to a running VM through its API socket (hv run --api-socket SOCKET).",
        discussion: """
            Actions: info (state, vCPUs, memory, uptime, exits), pause, resume, reset (as the \
            guest's own reset), stop, stats (the exit table of hv run --stats, fresh while the VM \
            runs), registers (vCPU --vcpu N, while paused), devices (the device bus's ranges), \
            openapi (the API's OpenAPI document), snapshot DIR (the VM, paused meanwhile, into \
            the directory DIR, which hv run --restore DIR continues), migrate HOST:PORT (the VM, \
            running, to hv run --incoming HOST:PORT; hv ctl carries the stream over TCP and shows \
            its progress; Documentation/Snapshots.md). --json prints the API's JSON answer as it came. \
            Exit status: 0, 1 when the VM refused (its message says why: a state that does not \
            allow the action), 3 when nothing answers on SOCKET (Documentation/Management.md).
            """)

    enum Action: String, ExpressibleByArgument, CaseIterable {
        case info, pause, resume, reset, stop, stats, registers, devices, openapi, snapshot, migrate
    }

    @Argument(help: "The VM's API socket (hv run --api-socket).")
    var socket: String

    @Argument(help: ArgumentHelp("What to do: \(Action.allCases.map(\.rawValue).joined(separator: ", ")).", valueName: "action"))
    var action: Action

    @Argument(help: ArgumentHelp("For snapshot: the directory to write (new, or an older snapshot, replaced atomically); for migrate: the destination's HOST:PORT.", valueName: "dir|host:port"))
    var directory: String?

    @Option(name: .long, help: ArgumentHelp("For migrate: the longest pause the final copy may take, in milliseconds.", valueName: "ms"))
    var maxDowntime: Double = 10

    @Option(name: .long, help: "The vCPU whose registers to show.")
    var vcpu = 0

    @Flag(name: .long, help: "Print the API's JSON answer as it came.")
    var json = false

    @Option(name: .long, help: ArgumentHelp("Seconds to wait for an answer.", valueName: "seconds"))
    var timeout: Int64 = 10

    @Option(name: .long, help: ArgumentHelp("Wait up to this many seconds for the socket to answer first (a VM still starting).", valueName: "seconds"))
    var wait: Double = 0

    func validate() throws {
        if action == .snapshot, directory == nil { throw ValidationError("snapshot needs the directory to write: hv ctl SOCKET snapshot DIR") }
        if action == .migrate, directory == nil { throw ValidationError("migrate needs the destination: hv ctl SOCKET migrate HOST:PORT") }
        if action != .snapshot, action != .migrate, let directory { throw ValidationError("unexpected argument '\(directory)': only snapshot and migrate take one") }
        guard maxDowntime > 0, maxDowntime <= 60_000 else { throw ValidationError("--max-downtime \(maxDowntime): give 1 to 60000 milliseconds") }
    }

    func run() throws {
        let client = VMAPIClient(socketPath: socket, timeout: .seconds(timeout))
        do throws(VMAPIClientError) {
            if wait > 0 { try client.waitUntilListening(seconds: wait) }
            switch action {
            case .info: try show(client.get("/v1/vm", as: VMInfo.self), raw: "/v1/vm", client)
            case .pause, .resume, .reset, .stop:
                let path = "/v1/vm/\(action.rawValue)"
                if json { print(String(decoding: try client.call("POST", path), as: UTF8.self)); return }
                let info: VMInfo = try client.post(path)
                switch action {
                case .reset: print("reset requested (\(info.resets) before it)")
                case .stop: print("stop requested")
                default: print(info.state)
                }
            case .stats:
                if json { print(String(decoding: try client.call("GET", "/v1/vm/statistics"), as: UTF8.self)); return }
                let report: StatisticsReport = try client.get("/v1/vm/statistics")
                print(ExitTable.render(report))
            case .registers:
                let path = "/v1/vcpus/\(vcpu)/registers"
                if json { print(String(decoding: try client.call("GET", path), as: UTF8.self)); return }
                print(Self.describe(try client.get(path, as: VCPURegisters.self)))
            case .devices:
                if json { print(String(decoding: try client.call("GET", "/v1/devices"), as: UTF8.self)); return }
                for device in try client.get("/v1/devices", as: [DeviceEntry].self) {
                    let range = device.space == "port"
                        ? "port \(hex(device.base))-\(hex(device.base + device.length - 1))"
                        : "mmio \(hex(device.base))+\(hex(device.length))"
                    print("\(range.padding(toLength: 34, withPad: " ", startingAt: 0)) \(device.name)")
                }
            case .snapshot:
                let absolute = URL(fileURLWithPath: directory ?? ".").standardizedFileURL.path
                if json { print(String(decoding: try client.call("POST", "/v1/vm/snapshot", json: SnapshotRequest(path: absolute)), as: UTF8.self)); return }
                let result: SnapshotResult = try client.post("/v1/vm/snapshot", json: SnapshotRequest(path: absolute))
                print(String(format: "snapshot %@: %llu MiB of memory (%llu pages of data), %llu bytes of state%@; the guest was paused %.1f ms",
                             result.path, result.memoryBytes >> 20, result.dataPages, result.stateBytes, result.encrypted ? ", encrypted" : "",
                             result.seconds * 1000))
            case .migrate:
                try migrate(to: directory ?? "", client)
            case .openapi:
                print(String(decoding: try client.call("GET", "/openapi.yaml"), as: UTF8.self), terminator: "")
            }
        } catch {
            printError("hv: error: \(error.message)")
            throw ExitCode(error.status == nil ? 3 : 1)
        }
    }

    /// Connects to the destination, gives the VM a Unix socket to send to, and carries the
    /// stream across until the destination says the guest runs there (or something fails: the
    /// VM then runs on here). Prints each round as it goes.
    private func migrate(to destination: String, _ client: VMAPIClient) throws(VMAPIClientError) {
        func failure(_ message: String) -> VMAPIClientError { VMAPIClient.failure(message) }
        let tcp: Int32
        do throws(SnapshotError) { tcp = try MigrationTransport.connect(destination) } catch { throw failure(error.description) }
        defer { close(tcp) }
        let relayPath = FileManager.default.temporaryDirectory.appendingPathComponent("hv-migrate-\(getpid()).sock").path
        unlink(relayPath)
        let listener: Int32
        do throws(SnapshotError) { listener = try MigrationTransport.listenUnix(relayPath) } catch { throw failure(error.description) }
        defer { close(listener); unlink(relayPath) }
        let answer = Mutex<Result<MigrateResult, VMAPIClientError>?>(nil)
        let socket = self.socket, downtime = maxDowntime, json = self.json
        let poster = Thread {
            let long = VMAPIClient(socketPath: socket, timeout: .seconds(3600))
            let result: Result<MigrateResult, VMAPIClientError>
            do throws(VMAPIClientError) {
                result = .success(try long.post("/v1/vm/migrate", json: MigrateRequest(via: relayPath, maxDowntimeMs: downtime)))
            } catch { result = .failure(error) }
            answer.withLock { $0 = result }
        }
        poster.start()
        // The VM connects once it has taken the request; a refusal comes back first instead.
        var connection: Int32 = -1
        while connection < 0 {
            if let early = answer.withLock({ $0 }), case .failure(let error) = early { throw error }
            connection = (try? MigrationTransport.accept(listener, within: 0.2)) ?? -1
        }
        defer { close(connection) }
        let done = Atomic<Bool>(false)
        // On a terminal one line redrawn in place, a bar of the pages sent against those sent and
        // still to send; elsewhere (a log, a pipe) one line per change.
        let terminal = isatty(STDOUT_FILENO) != 0 && !json
        let watcher = Thread {
            var last = ""
            let quick = VMAPIClient(socketPath: socket, timeout: .seconds(5))
            while !done.load(ordering: .relaxed) {
                if let status = try? quick.get("/v1/vm/migration", as: MigrationStatus.self), status.phase != "idle", !json {
                    let line = Self.progressLine(status, bar: terminal)
                    if line != last {
                        if terminal {
                            print("\r\u{1B}[K" + line, terminator: "")
                            fflush(nil)  // every stream: print buffers stdout
                        } else {
                            print(line)
                        }
                        last = line
                    }
                }
                usleep(100_000)
            }
            if terminal, !last.isEmpty { print("") }
        }
        watcher.start()
        let carried = MigrationTransport.relay(connection, tcp)
        while !poster.isFinished { usleep(5_000) }
        done.store(true, ordering: .relaxed)
        while !watcher.isFinished { usleep(5_000) }
        switch answer.withLock({ $0 }) {
        case .success(let result)?:
            if json {
                if let data = try? JSONEncoder().encode(result) { print(String(decoding: data, as: UTF8.self)) }
                return
            }
            print(String(format: "migrated to %@: %d rounds, %llu pages (%.1f MiB carried), %llu in the final copy; downtime %.1f ms; %.2f s in all",
                         destination, result.rounds, result.pagesSent, Double(carried) / 1_048_576, result.finalPages, result.downtimeMs, result.totalSeconds))
        case .failure(let error)?: throw error
        case nil: throw failure("the VM gave no answer")
        }
    }

    /// One line of a migration's progress: the phase, or in pre-copy the round, pages sent,
    /// rate and pages left; with `bar`, led by a 24-cell bar of sent / (sent + left).
    static func progressLine(_ status: MigrationStatus, bar: Bool) -> String {
        let text = status.phase != "pre-copy" ? status.phase
            : status.round == 0 ? "round 0: sending the \(status.remainingPages) pages that hold data"
            : String(format: "round %d: %llu pages sent (%.1f MiB) at %.0f MiB/s, %llu written since", status.round, status.pagesSent,
                     Double(status.bytesSent) / 1_048_576, status.bytesPerSecond / 1_048_576, status.remainingPages)
        guard bar else { return text }
        let total = status.pagesSent + status.remainingPages
        let fraction = status.phase == "done" ? 1 : total == 0 ? 0 : Double(status.pagesSent) / Double(total)
        let filled = Int((fraction * 24).rounded(.down))
        return "[" + String(repeating: "#", count: filled) + String(repeating: "-", count: 24 - filled) + "] " + text
    }

    private func show(_ info: VMInfo, raw path: String, _ client: VMAPIClient) throws(VMAPIClientError) {
        if json { print(String(decoding: try client.call("GET", path), as: UTF8.self)); return }
        let memory = info.memoryBytes >= 1 << 20 ? "\(info.memoryBytes >> 20) MiB" : "\(info.memoryBytes >> 10) KiB"
        print("""
            state      \(info.state)\(info.asleep ? " (asleep, ACPI S3)" : "")
            backend    \(info.backend), pid \(info.pid)
            vcpus      \(info.vcpus)
            memory     \(memory)
            irqchip    \(info.interruptController)
            uptime     \(String(format: "%.3f", info.uptimeSeconds)) s
            exits      \(info.exits)
            resets     \(info.resets)
            sleeps     \(info.sleeps)
            """)
    }

    /// Registers in the layout of hv's crash report: general, control, segments, tables.
    static func describe(_ registers: VCPURegisters) -> String {
        let general = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "rflags"]
        let control = ["cr0", "cr2", "cr3", "cr4", "cr8", "efer", "apicBase"]
        var lines = ["vCPU \(registers.vcpu)"]
        for names in [general, control] {
            let cells = names.compactMap { name in registers.general[name] ?? registers.control[name] }.enumerated().map { index, value in
                "\(names[index].padding(toLength: 8, withPad: " ", startingAt: 0)) \(hex(value, width: 16))"
            }
            stride(from: 0, to: cells.count, by: 3).forEach { lines.append(cells[$0..<min($0 + 3, cells.count)].joined(separator: "   ")) }
        }
        for name in ["cs", "ds", "es", "fs", "gs", "ss", "tr", "ldt"] {
            guard let segment = registers.segments[name] else { continue }
            lines.append("\(name.padding(toLength: 4, withPad: " ", startingAt: 0)) selector \(hex(UInt64(segment.selector), width: 4)) base \(hex(segment.base, width: 16)) limit \(hex(UInt64(segment.limit), width: 8)) type \(segment.type) dpl \(segment.dpl)\(segment.long ? " L" : "")\(segment.defaultSize32 ? " D" : "")\(segment.present ? "" : " not-present")")
        }
        for name in ["gdt", "idt"] {
            guard let table = registers.descriptorTables[name] else { continue }
            lines.append("\(name)  base \(hex(table.base, width: 16)) limit \(hex(UInt64(table.limit), width: 4))")
        }
        return lines.joined(separator: "\n")
    }
}

private func hex(_ value: UInt64, width: Int = 0) -> String {
    let digits = String(value, radix: 16)
    return "0x" + String(repeating: "0", count: max(0, width - digits.count)) + digits
}
