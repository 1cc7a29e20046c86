// `hv serve` (Documentation/Management.md, "The host daemon") against real `hv run` processes and
// real KVM guests: VM files, the API with its roles and audit log, bad input, a crash in one VM,
// events, metrics, shutdown.
import AsyncHTTPClient
import Foundation
import HVDaemon
import HVTestSupport
import NIOCore
import NIOHTTP1
import Testing

/// A running `hv serve` in a scratch folder, with three tokens and two guests' images.
final class DaemonFixture {
    static let admin = "alice-token-0123456789", operator_ = "olga-token-0123456789", viewer = "vic-token-0123456789ab"
    let folder: URL
    let process: Process
    let errors: Pipe
    let base: String
    var state: String { folder.appendingPathComponent("state").path }

    /// Starts hv serve with `vmFiles` (name -> contents, written beside the images) and `extra` arguments.
    init(vmFiles: [String: String] = [:], extra: [String] = []) throws {
        folder = try PackageExecutable.temporaryDirectory()
        try Data(ManagementAPITests.loop).write(to: folder.appendingPathComponent("loop.bin"))
        try Data([0xF4]).write(to: folder.appendingPathComponent("hlt.bin"))
        let tokens = folder.appendingPathComponent("tokens")
        try "# role name token\nadmin alice \(Self.admin)\noperator olga \(Self.operator_)\nviewer vic \(Self.viewer)\n"
            .write(to: tokens, atomically: true, encoding: .utf8)
        chmod(tokens.path, 0o600)
        var arguments = ["serve", "--state", folder.appendingPathComponent("state").path, "--tokens", tokens.path, "--listen", "127.0.0.1:0"]
        for (name, text) in vmFiles.sorted(by: { $0.key < $1.key }) {
            try text.write(to: folder.appendingPathComponent(name), atomically: true, encoding: .utf8)
            arguments += ["--vm", folder.appendingPathComponent(name).path]
        }
        let started = try PackageExecutable.start(PackageExecutable.binDirectory.appendingPathComponent("hv"), arguments + extra, in: folder)
        process = started.process
        errors = started.err
        // "hv serve: listening on http://127.0.0.1:PORT (state ...)"
        var seen = ""
        let deadline = Date(timeIntervalSinceNow: 30)
        while !seen.contains("listening on "), Date() < deadline, process.isRunning {
            let chunk = errors.fileHandleForReading.availableData
            if chunk.isEmpty { usleep(10_000) } else { seen += String(decoding: chunk, as: UTF8.self) }
        }
        guard let match = seen.firstMatch(of: /listening on (https?:\/\/[0-9.]+:[0-9]+)/) else {
            process.terminate()
            throw FixtureFailure(message: "hv serve did not listen: \(seen)")
        }
        base = String(match.1)
    }

    struct FixtureFailure: Error { var message: String }

    /// SIGTERM, then the daemon's status and the rest of its standard error.
    func stop() -> (status: Int32, stderr: String) {
        if process.isRunning { process.terminate() }
        let rest = errors.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        return (process.terminationStatus, String(decoding: rest, as: UTF8.self))
    }

    deinit {
        if process.isRunning { process.terminate(); process.waitUntilExit() }
        try? FileManager.default.removeItem(at: folder)
    }

    /// `method path` with `token` (nil: none) and `body`; the status and the body.
    func call(_ method: String, _ path: String, token: String? = DaemonFixture.admin, body: String? = nil,
              contentType: String = "application/json") throws -> (status: Int, body: Data) {
        var request = try HTTPClient.Request(url: base + path, method: HTTPMethod(rawValue: method))
        if let token { request.headers.add(name: "Authorization", value: "Bearer \(token)") }
        if let body {
            request.headers.add(name: "Content-Type", value: contentType)
            request.body = .string(body)
        }
        let response = try HTTPClient.shared.execute(request: request, deadline: .now() + .seconds(30)).wait()
        return (Int(response.status.code), response.body.map { Data($0.readableBytesView) } ?? Data())
    }

    func json(_ method: String, _ path: String, token: String? = DaemonFixture.admin, body: String? = nil) throws -> Any {
        try JSONSerialization.jsonObject(with: call(method, path, token: token, body: body).body)
    }

    /// The message of an error answer.
    static func message(_ body: Data) -> String {
        ((try? JSONSerialization.jsonObject(with: body)) as? [String: [String: String]])?["error"]?["message"] ?? String(decoding: body, as: UTF8.self)
    }

    /// GET /v1/vms, by name.
    func vms() throws -> [String: [String: Any]] {
        let list = try json("GET", "/v1/vms") as? [[String: Any]] ?? []
        return Dictionary(uniqueKeysWithValues: list.map { ($0["name"] as! String, $0) })
    }

    /// Waits until `condition` holds for the VM list, or `seconds` pass.
    @discardableResult
    func waitFor(seconds: Double = 20, _ condition: ([String: [String: Any]]) -> Bool) throws -> [String: [String: Any]] {
        let deadline = Date(timeIntervalSinceNow: seconds)
        var list = try vms()
        while !condition(list), Date() < deadline {
            usleep(100_000)
            list = try vms()
        }
        return list
    }
}

@Suite("Management: hv serve, the host daemon", .serialized)
struct DaemonTests {
    static let twoVMs = [
        "web1.yaml": "name: web1\nimage: loop.bin\nplatform: none\n",
        "web2.json": #"{"name": "web2", "image": "loop.bin", "cpus": 2, "irqchip": "none", "platform": "none", "restart": "on-failure"}"#,
    ]

    @Test("two VM files run two guests, each in its own process, in the VM list and in /metrics; SIGTERM stops them all", .needsKVM)
    func twoVMFiles() throws {
        let daemon = try DaemonFixture(vmFiles: Self.twoVMs)
        let vms = try daemon.waitFor { list in
            ["web1", "web2"].allSatisfy { list[$0]?["state"] as? String == "running" && (list[$0]?["exits"] as? Int ?? 0) > 0 }
        }
        #expect(vms["web1"]?["state"] as? String == "running")
        #expect(vms["web2"]?["vcpus"] as? Int == 2)
        let pids = ["web1", "web2"].compactMap { vms[$0]?["pid"] as? Int32 }
        #expect(pids.count == 2 && pids[0] != pids[1] && !pids.contains(daemon.process.processIdentifier))
        // The relative image path of the YAML file is resolved against the file's folder.
        #expect((vms["web1"]?["definition"] as? [String: Any])?["image"] as? String == daemon.folder.appendingPathComponent("loop.bin").path)

        let metrics = String(decoding: try daemon.call("GET", "/metrics", token: DaemonFixture.viewer).body, as: UTF8.self)
        #expect(metrics.contains("hv_vm_state{vm=\"web1\",state=\"running\"} 1\n"))
        #expect(metrics.contains("hv_vm_state{vm=\"web2\",state=\"running\"} 1\n"))
        #expect(metrics.contains("# TYPE hv_vm_exits_total counter\n"))
        #expect(metrics.contains("hv_vm_exits_total{vm=\"web2\",kind=\"io-out\"} "))
        #expect(metrics.contains("# TYPE hv_vm_exit_round_trip_seconds histogram\n"))
        #expect(metrics.contains("hv_vm_exit_round_trip_seconds_bucket{vm=\"web1\",kind=\"io-out\",le=\"+Inf\"} "))
        #expect(metrics.contains("hv_vm_resident_memory_bytes{vm=\"web1\"} "))
        // Buckets are cumulative: never falling, and the last equals the count.
        let buckets = metrics.split(separator: "\n").filter { $0.hasPrefix("hv_vm_exit_round_trip_seconds_bucket{vm=\"web1\",kind=\"io-out\"") }
            .compactMap { $0.split(separator: " ").last.flatMap { UInt64($0) } }
        #expect(buckets.count == 13 && buckets == buckets.sorted())
        #expect(try daemon.call("GET", "/metrics", token: nil).status == 401)
        // The daemon's own requests, through swift-metrics into swift-prometheus' registry.
        let own = String(decoding: try daemon.call("GET", "/metrics", token: DaemonFixture.viewer).body, as: UTF8.self)
        #expect(own.contains("# TYPE http_server_request_duration histogram\n"))
        #expect(own.contains("hb_requests{http_route=\"/v1/vms\",http_request_method=\"GET\",http_response_status_code=\"200\"} "))
        #expect(own.contains("hb_requests{http_route=\"/metrics\",http_request_method=\"GET\",http_response_status_code=\"401\"} 1\n"))

        let ended = daemon.stop()
        #expect(ended.status == 0, "\(ended.stderr)")
        #expect(ended.stderr.contains("hv serve: stopped"))
        for pid in pids { #expect(kill(pid, 0) != 0, "VM process \(pid) ended with the daemon") }
    }

    @Test("roles: no token or an unknown one is 401, a viewer's pause is 403, an operator's works; every POST is audited, refusals too", .needsKVM)
    func rolesAndAudit() throws {
        let daemon = try DaemonFixture(vmFiles: ["web1.yaml": Self.twoVMs["web1.yaml"]!])
        try daemon.waitFor { $0["web1"]?["state"] as? String == "running" }
        let anonymous = try daemon.call("GET", "/v1/vms", token: nil)
        #expect(anonymous.status == 401)
        #expect(DaemonFixture.message(anonymous.body) == "a bearer token is required (Authorization: Bearer TOKEN)")
        #expect(try daemon.call("GET", "/v1/vms", token: "not-a-token-at-all").status == 401)
        #expect(try daemon.call("GET", "/v1/vms", token: DaemonFixture.viewer).status == 200)
        let viewerPause = try daemon.call("POST", "/v1/vms/web1/pause", token: DaemonFixture.viewer)
        #expect(viewerPause.status == 403)
        #expect(DaemonFixture.message(viewerPause.body) == "token 'vic' has role viewer; POST /v1/vms/web1/pause needs operator")
        #expect(try daemon.vms()["web1"]?["state"] as? String == "running", "a refused call changes nothing")
        let pause = try daemon.call("POST", "/v1/vms/web1/pause", token: DaemonFixture.operator_)
        #expect(pause.status == 200)
        #expect(try daemon.vms()["web1"]?["state"] as? String == "paused")
        let again = try daemon.call("POST", "/v1/vms/web1/pause", token: DaemonFixture.operator_)
        #expect(again.status == 409)
        #expect(DaemonFixture.message(again.body).contains("cannot pause a VM that is paused"))
        #expect(try daemon.call("POST", "/v1/vms/web1/resume", token: DaemonFixture.operator_).status == 200)
        #expect(try daemon.call("GET", "/v1/audit", token: DaemonFixture.operator_).status == 403)
        #expect(try daemon.call("DELETE", "/v1/vms/web1", token: DaemonFixture.operator_).status == 403)

        let audit = try daemon.json("GET", "/v1/audit") as? [[String: Any]] ?? []
        let lines = audit.map { "\($0["who"]!) \($0["role"]!) \($0["action"]!) \($0["status"]!)" }
        #expect(lines == ["vic viewer POST /v1/vms/web1/pause 403", "olga operator POST /v1/vms/web1/pause 200",
                          "olga operator POST /v1/vms/web1/pause 409", "olga operator POST /v1/vms/web1/resume 200",
                          "olga operator DELETE /v1/vms/web1 403"])
        #expect(audit.first?["result"] as? String == "token 'vic' has role viewer; POST /v1/vms/web1/pause needs operator")
        // The log on disk: JSON lines, 0600.
        let file = daemon.state + "/audit.log"
        var information = stat()
        #expect(stat(file, &information) == 0 && information.st_mode & 0o777 == 0o600)
        #expect(try String(contentsOfFile: file, encoding: .utf8).split(separator: "\n").count == 5)
        _ = daemon.stop()
    }

    @Test("bad input is a 4xx naming the problem, and leaves nothing half-created", .needsKVM)
    func badInput() throws {
        let daemon = try DaemonFixture()
        let loop = daemon.folder.appendingPathComponent("loop.bin").path
        let cases: [(body: String, status: Int, message: String)] = [
            (#"{"name": "a","#, 400, "not valid JSON: "),
            (#"["web"]"#, 400, "a VM definition is an object of fields"),
            (#"{"name": "a", "image": "\#(loop)", "colour": "red"}"#, 400, "colour: unknown field; a VM definition has name, image, kernel"),
            (#"{"name": "a", "image": "\#(loop)", "cpus": "two"}"#, 400, "cpus: wrong type; expected an integer"),
            (#"{"image": "\#(loop)"}"#, 400, "name: missing"),
            (#"{"name": "Bad Name", "image": "\#(loop)"}"#, 400, "name: 'Bad Name' is not a VM name"),
            (#"{"name": "a"}"#, 400, "image: missing; give one of image, kernel, multiboot, multiboot2, elf"),
            (#"{"name": "a", "kernel": "/nonexistent/bzImage"}"#, 400, "kernel /nonexistent/bzImage: "),
            (#"{"name": "a", "image": "loop.bin"}"#, 400, "image: 'loop.bin' is relative; a VM created over the API names its files by absolute paths"),
            (#"{"name": "a", "image": "\#(loop)", "memory": "lots"}"#, 400, "memory: 'lots' is not a size"),
            (#"{"name": "a", "image": "\#(loop)", "cpus": 65}"#, 400, "cpus: 65 is out of range; use 1-64"),
            (#"{"name": "a", "image": "\#(loop)", "restart": "sometimes"}"#, 400, "restart: not one of never, on-failure, always"),
        ]
        for item in cases {
            let answer = try daemon.call("POST", "/v1/vms", body: item.body)
            #expect(answer.status == item.status, "\(item.body): \(answer.status)")
            #expect(DaemonFixture.message(answer.body).hasPrefix(item.message), "\(item.body): \(DaemonFixture.message(answer.body))")
        }
        let huge = try daemon.call("POST", "/v1/vms", body: #"{"name": "a", "cmdline": ""# + String(repeating: "x", count: 70_000) + #""}"#)
        #expect(huge.status == 413)
        #expect(try daemon.call("GET", "/v1/vms/nobody").status == 404)
        #expect(DaemonFixture.message(try daemon.call("POST", "/v1/vms/nobody/start").body) == "no VM named 'nobody'")
        #expect(try daemon.call("POST", "/v1/vms/nobody/explode").status == 404)
        let query = try daemon.call("GET", "/v1/audit?limit=zero")
        #expect(query.status == 400)
        #expect(DaemonFixture.message(query.body) == "query parameter limit=zero is invalid; expected an integer in 1...10000")
        // Nothing was created: no VM, no folder.
        #expect(try daemon.vms().isEmpty)
        #expect((try? FileManager.default.contentsOfDirectory(atPath: daemon.state + "/vms"))?.isEmpty == true)
        // A name that exists is a conflict.
        #expect(try daemon.call("POST", "/v1/vms", body: #"{"name": "a", "image": "\#(loop)", "autostart": false, "platform": "none"}"#).status == 201)
        let twice = try daemon.call("POST", "/v1/vms", body: #"{"name": "a", "image": "\#(loop)", "platform": "none"}"#)
        #expect(twice.status == 409)
        #expect(DaemonFixture.message(twice.body) == "a VM named 'a' exists; delete it first or choose another name")
        _ = daemon.stop()
    }

    @Test("a VM created over the API in YAML: start, console, stop, delete", .needsKVM)
    func lifecycleOverTheAPI() throws {
        let daemon = try DaemonFixture()
        let hlt = daemon.folder.appendingPathComponent("hlt.bin").path
        let created = try daemon.call("POST", "/v1/vms", body: "name: once\nimage: \(hlt)\nplatform: none\nautostart: false\n", contentType: "application/yaml")
        #expect(created.status == 201, "\(DaemonFixture.message(created.body))")
        #expect(try daemon.vms()["once"]?["state"] as? String == "stopped")
        #expect(try daemon.call("POST", "/v1/vms/once/start", token: DaemonFixture.operator_).status == 200)
        // The guest halts at once: hv run ends with status 0 and the VM is stopped again.
        let ended = try daemon.waitFor { $0["once"]?["state"] as? String == "stopped" && $0["once"]?["lastExit"] != nil }
        #expect(ended["once"]?["lastExit"] as? String == "status 0: the guest halted, powered off or was stopped")
        let events = try daemon.json("GET", "/v1/events/recent") as? [[String: Any]] ?? []
        #expect(events.compactMap { $0["type"] as? String }.filter { $0 != "vm.metrics" } == ["vm.created", "vm.started", "vm.exited"])
        #expect(try daemon.call("GET", "/v1/vms/once/console").status == 200)
        #expect(try daemon.call("POST", "/v1/vms/once/stop", token: DaemonFixture.operator_).status == 409)
        #expect(try daemon.call("DELETE", "/v1/vms/once").status == 204)
        #expect(try daemon.call("GET", "/v1/vms/once").status == 404)
        #expect(!FileManager.default.fileExists(atPath: daemon.state + "/vms/once"))
        _ = daemon.stop()
    }

    @Test("a crash of one VM's process is an event, is restarted by its policy, and leaves the other running", .needsKVM)
    func crashIsolation() throws {
        let daemon = try DaemonFixture(vmFiles: Self.twoVMs)
        let before = try daemon.waitFor { list in ["web1", "web2"].allSatisfy { list[$0]?["state"] as? String == "running" } }
        let web1 = try #require(before["web1"]?["pid"] as? Int32), web2 = try #require(before["web2"]?["pid"] as? Int32)
        kill(web2, SIGKILL)
        let after = try daemon.waitFor { list in (list["web2"]?["restarts"] as? Int) == 1 && list["web2"]?["state"] as? String == "running" }
        #expect(after["web2"]?["lastExit"] as? String == "killed by signal 9")
        #expect(after["web2"]?["pid"] as? Int32 != web2)
        #expect(after["web1"]?["pid"] as? Int32 == web1, "the other VM's process is untouched")
        #expect(after["web1"]?["state"] as? String == "running")
        let types = (try daemon.json("GET", "/v1/events/recent") as? [[String: Any]] ?? [])
            .filter { $0["vm"] as? String == "web2" && $0["type"] as? String != "vm.metrics" }
            .map { "\($0["type"]!): \($0["message"]!)" }
        #expect(types.contains("vm.crashed: killed by signal 9"))
        #expect(types.contains("vm.restarting: restarting in 1.0 s (restart: on-failure)"))
        #expect(types.contains { $0.hasPrefix("vm.started: started again (restart 1, pid ") })
        // web1 kept running all along: its exits went on growing.
        let exits = try daemon.vms()["web1"]?["exits"] as? Int ?? 0
        let later = try daemon.waitFor { ($0["web1"]?["exits"] as? Int ?? 0) > exits }
        #expect((later["web1"]?["exits"] as? Int ?? 0) > exits)
        _ = daemon.stop()
    }

    @Test("the event stream (server-sent events) delivers lifecycle events as they happen", .needsKVM)
    func eventStream() async throws {
        let daemon = try DaemonFixture()
        var request = HTTPClientRequest(url: daemon.base + "/v1/events")
        request.headers.add(name: "Authorization", value: "Bearer \(DaemonFixture.viewer)")
        let response = try await HTTPClient.shared.execute(request, timeout: .seconds(30))
        #expect(response.status == .ok)
        #expect(response.headers["Content-Type"].first == "text/event-stream")
        let hlt = daemon.folder.appendingPathComponent("hlt.bin").path
        _ = try daemon.call("POST", "/v1/vms", body: #"{"name": "brief", "image": "\#(hlt)", "platform": "none"}"#)
        var text = ""
        for try await chunk in response.body {
            text += String(buffer: chunk)
            if text.contains("event: vm.exited") { break }
        }
        #expect(text.contains("id: 1\nevent: vm.created\ndata: {"))
        #expect(text.contains("event: vm.started\n"))
        #expect(text.contains("event: vm.exited\n"))
        _ = daemon.stop()
    }

    @Test("alerts: a threshold fires and resolves, a crash is an event, each POSTed to a webhook; the history answers trends", .needsKVM)
    func alertsAndHistory() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let receiver = Process()
        receiver.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        let portFile = folder.appendingPathComponent("port"), received = folder.appendingPathComponent("received")
        receiver.arguments = ["python3", PythonTools.root.appendingPathComponent("Tests/API/webhook_receiver.py").path, portFile.path, received.path]
        receiver.standardOutput = FileHandle.nullDevice
        try receiver.run()
        defer { kill(receiver.processIdentifier, SIGKILL); receiver.waitUntilExit() }
        var port = ""
        for _ in 0..<100 where port.isEmpty { usleep(50_000); port = (try? String(contentsOf: portFile, encoding: .utf8)) ?? "" }
        let hook = "http://127.0.0.1:\(port)/hook"
        let alerts = folder.appendingPathComponent("alerts.yaml")
        try """
            rules:
              - {name: busy, metric: exitsPerSecond, above: 1000, vm: web1, webhook: "\(hook)"}
              - {name: crash, event: vm.crashed, webhook: "\(hook)"}
            """.write(to: alerts, atomically: true, encoding: .utf8)
        let daemon = try DaemonFixture(vmFiles: Self.twoVMs, extra: ["--alerts", alerts.path, "--history-interval", "1s"])
        func notices() -> [[String: Any]] {
            ((try? String(contentsOf: received, encoding: .utf8)) ?? "").split(separator: "\n")
                .compactMap { try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any] }
        }
        func waitForNotice(_ matches: ([String: Any]) -> Bool) -> [String: Any]? {
            let deadline = Date(timeIntervalSinceNow: 20)
            while Date() < deadline {
                if let found = notices().first(where: matches) { return found }
                usleep(100_000)
            }
            return nil
        }
        let firing = waitForNotice { $0["rule"] as? String == "busy" && $0["state"] as? String == "firing" }
        #expect(firing?["vm"] as? String == "web1")
        #expect((firing?["value"] as? Double ?? 0) > 1000 && firing?["threshold"] as? Double == 1000)
        #expect(try daemon.call("POST", "/v1/vms/web1/pause", token: DaemonFixture.operator_).status == 200)
        let resolved = waitForNotice { $0["rule"] as? String == "busy" && $0["state"] as? String == "resolved" }
        #expect(resolved?["value"] as? Double == 0)
        let web2 = try #require(try daemon.vms()["web2"]?["pid"] as? Int32)
        kill(web2, SIGKILL)
        let crash = waitForNotice { $0["rule"] as? String == "crash" }
        #expect(crash?["vm"] as? String == "web2" && crash?["state"] as? String == "event" && crash?["event"] as? String == "vm.crashed")
        #expect(notices().filter { $0["rule"] as? String == "busy" }.count == 2, "fired once and resolved once, not at every poll")
        let events = (try daemon.json("GET", "/v1/events/recent") as? [[String: Any]] ?? []).compactMap { $0["type"] as? String }
        #expect(events.contains("alert.firing") && events.contains("alert.resolved"))

        // History: one sample a second; web1's rate while it ran, then 0 while paused.
        let history = try daemon.json("GET", "/v1/history?vm=web1&metric=exitsPerSecond&seconds=120&step=1") as? [String: Any] ?? [:]
        let points = history["points"] as? [[String: Any]] ?? []
        #expect(points.count >= 2, "\(history)")
        #expect(points.contains { ($0["maximum"] as? Double ?? 0) > 1000 })
        #expect(history["stepSeconds"] as? Int == 1)
        let unknown = try daemon.call("GET", "/v1/history?vm=web1&metric=colour")
        #expect(unknown.status == 400)
        #expect(DaemonFixture.message(unknown.body).hasPrefix("VM 'web1' has no history of colour; it has exits, exitsPerSecond, "))
        #expect(try daemon.call("GET", "/v1/history").status == 400)
        #expect(FileManager.default.fileExists(atPath: daemon.state + "/history.sqlite"))
        _ = daemon.stop()
    }

    @Test("the history store keeps samples for its retention, then prunes them, and averages per step")
    func historyRetention() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let store = try HistoryStore(path: folder.appendingPathComponent("history.sqlite").path, retention: 60)
        let now = Date(timeIntervalSince1970: 1_800_000_000)
        try store.record(vm: "a", values: ["rate": 10, "rss": 5], at: now.addingTimeInterval(-120))
        try store.record(vm: "a", values: ["rate": 20], at: now.addingTimeInterval(-30))
        try store.record(vm: "a", values: ["rate": 40], at: now.addingTimeInterval(-20))
        try store.record(vm: "b", values: ["rate": 99], at: now.addingTimeInterval(-20))
        #expect(try store.count() == 5)
        #expect(try store.prune(now: now) == 2, "the two samples older than 60 s")
        #expect(try store.metrics(of: "a") == ["rate"])
        let report = try store.query(vm: "a", metric: "rate", seconds: 60, step: 60, now: now)
        #expect(report.points.count == 1)
        #expect(report.points.first.map { ($0.average, $0.minimum, $0.maximum, $0.samples) } ?? (0, 0, 0, 0) == (30, 20, 40, 2))
        var information = stat()
        #expect(stat(store.path, &information) == 0 && information.st_mode & 0o777 == 0o600)
    }

    @Test("an alerts file with an unknown field or a rule that is neither a threshold nor an event is a one-line error")
    func alertFileErrors() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let file = folder.appendingPathComponent("alerts.yaml")
        try "rules:\n  - {name: x, metric: exits, above: 1, colour: red}\n".write(to: file, atomically: true, encoding: .utf8)
        #expect(throws: DaemonError.self) { try AlertEngine.load(file: file.path) }
        do { _ = try AlertEngine.load(file: file.path) } catch {
            #expect(error.message == "--alerts \(file.path): rules[0]: colour: unknown field; a rule has name, metric, above, event, vm, webhook")
        }
        try "rules:\n  - {name: x, metric: exits}\n".write(to: file, atomically: true, encoding: .utf8)
        do { _ = try AlertEngine.load(file: file.path); Issue.record("accepted") } catch {
            #expect(error.message == "--alerts \(file.path): rules[0] (x): give either metric and above, or event")
        }
        try "rules:\n  - {name: x, event: vm.crashed, webhook: ftp://host}\n".write(to: file, atomically: true, encoding: .utf8)
        do { _ = try AlertEngine.load(file: file.path); Issue.record("accepted") } catch {
            #expect(error.message.hasSuffix("webhook: 'ftp://host' is not an http(s) URL"))
        }
    }

    /// The CPUs a thread named `name` of process `pid` may run on (/proc's Cpus_allowed_list).
    static func allowedCPUs(pid: Int32, thread name: String) -> String? {
        let tasks = (try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/task")) ?? []
        for task in tasks where (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/comm", encoding: .utf8))?.trimmingCharacters(in: .whitespacesAndNewlines) == name {
            let status = (try? String(contentsOfFile: "/proc/\(pid)/task/\(task)/status", encoding: .utf8)) ?? ""
            return status.split(separator: "\n").first { $0.hasPrefix("Cpus_allowed_list:") }.map { $0.split(separator: "\t").last.map(String.init) ?? "" }
        }
        return nil
    }

    @Test("vCPU pinning: a VM file's pin reaches its confined hv run, whose vCPU threads run only where pinned; bad pins are refused", .needsKVM,
          .enabled(if: ProcessInfo.processInfo.activeProcessorCount >= 2, "needs two CPUs"))
    func pinning() throws {
        let daemon = try DaemonFixture(vmFiles: ["pinned.yaml": "name: pinned\nimage: loop.bin\nplatform: none\ncpus: 2\nirqchip: none\npin: [\"0=1\", \"1=0\"]\n"])
        let running = try daemon.waitFor { $0["pinned"]?["state"] as? String == "running" }
        let pid = try #require(running["pinned"]?["pid"] as? Int32)
        #expect(Self.allowedCPUs(pid: pid, thread: "vcpu0") == "1")
        #expect(Self.allowedCPUs(pid: pid, thread: "vcpu1") == "0")
        let loop = daemon.folder.appendingPathComponent("loop.bin").path
        let outside = try daemon.call("POST", "/v1/vms", body: #"{"name": "far", "image": "\#(loop)", "platform": "none", "pin": ["0=4000"]}"#)
        #expect(outside.status == 400)
        #expect(DaemonFixture.message(outside.body).contains("'4000' is not a CPU or a range of CPUs"), "\(DaemonFixture.message(outside.body))")
        let vcpu = try daemon.call("POST", "/v1/vms", body: #"{"name": "far", "image": "\#(loop)", "platform": "none", "pin": ["3=0"]}"#)
        #expect(vcpu.status == 400)
        #expect(DaemonFixture.message(vcpu.body) == "pin: vCPU 3 is invalid; expected a vCPU of 0...0")
        _ = daemon.stop()
        let unusable = try PackageExecutable.run(["run", "--platform", "none", "--pin-vcpu", "0=1000", loop])
        #expect(unusable.status == 64)
        #expect(unusable.stderr.contains("CPU 1000 is not one this process may run on (Cpus_allowed_list: "))
    }

    @Test("cgroup v2 limits: enforced in the VM's own cgroup where the host delegates controllers, else refused with the reason", .needsKVM)
    func limits() throws {
        let daemon = try DaemonFixture()
        let loop = daemon.folder.appendingPathComponent("loop.bin").path
        let answer = try daemon.call("POST", "/v1/vms", body: #"{"name": "capped", "image": "\#(loop)", "platform": "none", "limits": {"memoryMax": "256M", "cpuMax": "50000 100000"}}"#)
        let controllers = Self.ownControllers()
        if controllers.isSuperset(of: ["memory", "cpu"]) {
            #expect(answer.status == 201, "\(DaemonFixture.message(answer.body))")
            let running = try daemon.waitFor { $0["capped"]?["state"] as? String == "running" }
            let pid = try #require(running["capped"]?["pid"] as? Int32)
            let cgroup = try String(contentsOfFile: "/proc/\(pid)/cgroup", encoding: .utf8)
            #expect(cgroup.contains("/vm-capped"), "\(cgroup)")
        } else {
            // This host gives hv serve no memory or cpu controller: the VM is refused, with why, and not created.
            #expect(answer.status == 400)
            #expect(DaemonFixture.message(answer.body).hasPrefix("limits: "), "\(DaemonFixture.message(answer.body))")
            #expect(DaemonFixture.message(answer.body).contains("delegated cgroup (systemd Delegate=yes)"))
            #expect(try daemon.vms().isEmpty)
        }
        let bad = try daemon.call("POST", "/v1/vms", body: #"{"name": "capped", "image": "\#(loop)", "limits": {"memoryMax": "lots"}}"#)
        #expect(DaemonFixture.message(bad.body) == "limits.memoryMax: 'lots' is not a size (\"512M\") or max")
        let unknown = try daemon.call("POST", "/v1/vms", body: #"{"name": "capped", "image": "\#(loop)", "limits": {"swap": "1G"}}"#)
        #expect(DaemonFixture.message(unknown.body) == "limits.swap: unknown field; limits has cpuMax, cpuset, memoryMax, ioMax")
        _ = daemon.stop()
    }

    /// The controllers this process's cgroup v2 offers (empty where there is none).
    static func ownControllers() -> Set<String> {
        guard let directory = try? CgroupTree.ownDirectory() else { return [] }
        let text = (try? String(contentsOfFile: directory + "/cgroup.controllers", encoding: .utf8)) ?? ""
        return Set(text.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) })
    }

    @Test("hv run --check makes a run's checks and runs nothing: what hv serve asks before it creates a VM", .needsKVM)
    func runCheck() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let image = folder.appendingPathComponent("loop.bin")
        try Data(ManagementAPITests.loop).write(to: image)
        let started = Date()
        let valid = try PackageExecutable.run(["run", "--check", "--platform", "none", image.path])
        #expect(valid.status == 0)
        #expect(valid.stderr == "hv: the command line, the image and the devices' files are valid\n")
        #expect(Date().timeIntervalSince(started) < 10, "the endless guest did not run")
        let missing = try PackageExecutable.run(["run", "--check", "--kernel", "/nonexistent/bzImage"])
        #expect(missing.status == 64)
        #expect(missing.stderr.hasPrefix("hv: error: /nonexistent/bzImage: "))
        let disk = try PackageExecutable.run(["run", "--check", "--irqchip", "kernel", "--disk", "/nonexistent.img", image.path])
        #expect(disk.status == 64)
        #expect(disk.stderr.contains("/nonexistent.img"))
    }

    @Test("a tokens file others can read, and a bad --listen, are one-line errors")
    func startUpErrors() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let tokens = folder.appendingPathComponent("tokens")
        try "admin alice alice-token-0123456789\n".write(to: tokens, atomically: true, encoding: .utf8)
        chmod(tokens.path, 0o644)
        let open = try PackageExecutable.run(["serve", "--state", folder.path + "/s", "--tokens", tokens.path])
        #expect(open.status == 64)
        #expect(open.stderr == "hv: error: --tokens \(tokens.path): is readable by others (mode 644); chmod 600 it: it holds passwords\n")
        chmod(tokens.path, 0o600)
        let listen = try PackageExecutable.run(["serve", "--state", folder.path + "/s", "--tokens", tokens.path, "--listen", "everywhere"])
        #expect(listen.status == 64)
        #expect(listen.stderr.contains("--listen everywhere is invalid; expected HOST:PORT (127.0.0.1:8080) or unix:PATH"))
        try "admin alice short\n".write(to: tokens, atomically: true, encoding: .utf8)
        chmod(tokens.path, 0o600)
        let short = try PackageExecutable.run(["serve", "--state", folder.path + "/s", "--tokens", tokens.path])
        #expect(short.stderr.contains(":1: the token is shorter than 16 characters"))
    }
}
