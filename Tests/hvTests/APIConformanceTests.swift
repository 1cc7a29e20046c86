// The management APIs against their committed OpenAPI documents with schemathesis (PyPI), and
// hv serve's dashboard in a real headless browser (Debian's chromium, driven by Selenium): the
// Python tools scripts/setup.sh puts in .build-python. Documentation/Management.md, "Tests".
import Foundation
import HVTestSupport
import Testing

enum PythonTools {
    static let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let bin = root.appendingPathComponent(".build-python/bin")
    static var available: Bool {
        FileManager.default.isExecutableFile(atPath: bin.appendingPathComponent("st").path)
            && FileManager.default.isExecutableFile(atPath: "/usr/bin/chromium") && FileManager.default.isExecutableFile(atPath: "/usr/bin/socat")
    }
    static var artefacts: URL { root.appendingPathComponent(".build/artefacts") }

    /// schemathesis over `document` against `base`: examples, coverage and fuzzing phases, every
    /// check but positive_data_acceptance (whether a definition is accepted depends on this
    /// host's files and KVM, which a schema cannot say). Its exit status and report.
    static func schemathesis(_ document: String, base: String, token: String?, excluding paths: [String], examples: Int) throws -> ProcessResult {
        var arguments = ["run", document, "--url", base, "--checks", "all", "--exclude-checks", "positive_data_acceptance",
                         "--max-examples", "\(examples)", "--workers", "1", "--phases", "examples,coverage,fuzzing", "--seed", "1"]
        if let token { arguments += ["-H", "Authorization: Bearer \(token)"] }
        for path in paths { arguments += ["--exclude-path", path] }
        // Run in a scratch folder: schemathesis keeps its state in ./.schemathesis.
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        return try PackageExecutable.run(arguments, executable: bin.appendingPathComponent("st").path,
                                         environment: ["SCHEMATHESIS_HOOKS": "", "NO_COLOR": "1"], in: folder)
    }
}

extension Trait where Self == ConditionTrait {
    static var needsPythonTools: Self {
        .enabled(if: PythonTools.available || Requirement.tools, "skipped: no .build-python (schemathesis, selenium), chromium or socat; run scripts/setup.sh")
    }
}

@Suite("Management: OpenAPI conformance (schemathesis) and the dashboard (headless chromium)", .serialized)
struct APIConformanceTests {
    @Test("schemathesis: the live daemon answers as its OpenAPI document says, with two VMs running", .needsKVM, .needsPythonTools)
    func daemonConformance() throws {
        let daemon = try DaemonFixture(vmFiles: DaemonTests.twoVMs)
        try daemon.waitFor { list in ["web1", "web2"].allSatisfy { list[$0]?["state"] as? String == "running" } }
        let document = PythonTools.root.appendingPathComponent("Sources/HVDaemon/Resources/daemon-api.yaml").path
        // The event stream never ends by itself: its route is tested by DaemonTests.
        let result = try PythonTools.schemathesis(document, base: daemon.base, token: DaemonFixture.admin, excluding: ["/v1/events"], examples: 40)
        #expect(result.status == 0, "\(result.stdout.suffix(6000))")
        #expect(result.stdout.contains(" passed"))
        _ = daemon.stop()
    }

    @Test("schemathesis: a running VM's API (through socat, from TCP to its Unix socket) answers as its OpenAPI document says", .needsKVM, .needsPythonTools)
    func vmConformance() throws {
        let port = 20_000 + Int(getpid() % 20_000)
        var socat: Process?
        let result = try ManagementAPITests.withVM { _, socket, _ in
            let bridge = Process()
            bridge.executableURL = URL(fileURLWithPath: "/usr/bin/socat")
            bridge.arguments = ["TCP-LISTEN:\(port),bind=127.0.0.1,reuseaddr,fork", "UNIX-CONNECT:\(socket)"]
            bridge.standardInput = FileHandle.nullDevice
            bridge.standardOutput = FileHandle.nullDevice
            bridge.standardError = FileHandle.nullDevice
            try bridge.run()
            socat = bridge
            usleep(300_000)
            let document = PythonTools.root.appendingPathComponent("Sources/HVManagement/Resources/vm-api.yaml").path
            // Stopping the VM would end the run under test: stop is tested by ManagementAPITests;
            // a snapshot writes a directory wherever the generated path says, a migration
            // connects wherever it says, and the migration event stream stays open until a
            // migration ends: SnapshotTests and MigrationTests.
            defer {
                // socat started from this test process has SIGTERM blocked (inherited): SIGKILL.
                kill(bridge.processIdentifier, SIGKILL)
                bridge.waitUntilExit()
            }
            let run = try PythonTools.schemathesis(document, base: "http://127.0.0.1:\(port)", token: nil, excluding: ["/v1/vm/stop", "/v1/vm/snapshot", "/v1/vm/migrate", "/v1/vm/migration/events"], examples: 40)
            #expect(run.status == 0, "\(run.stdout.suffix(6000))")
            #expect(run.stdout.contains(" passed"))
        }
        if let socat, socat.isRunning { kill(socat.processIdentifier, SIGKILL) }
        #expect(result.status == 143 || result.status == 0, "hv ended by the fixture's SIGTERM: \(result.stderr)")
    }

    @Test("the dashboard in headless chromium: loads, lists two running VMs, pauses one through its button, and the charts update", .needsKVM, .needsPythonTools)
    func dashboard() throws {
        let daemon = try DaemonFixture(vmFiles: DaemonTests.twoVMs)
        try daemon.waitFor { list in ["web1", "web2"].allSatisfy { list[$0]?["state"] as? String == "running" } }
        let shots = PythonTools.artefacts.appendingPathComponent("dashboard")
        let script = PythonTools.root.appendingPathComponent("Tests/Browser/dashboard.py").path
        let result = try PackageExecutable.run([script, daemon.base, DaemonFixture.operator_, shots.path],
                                               executable: PythonTools.bin.appendingPathComponent("python").path)
        #expect(result.status == 0, "\(result.stderr)")
        #expect(result.stdout.contains("dashboard: loaded, listed web1 and web2 running, paused web1 with its button, charts updated"))
        // The button went through the API as the operator, and the audit log has it.
        #expect(try daemon.vms()["web1"]?["state"] as? String == "paused")
        let audit = try daemon.json("GET", "/v1/audit") as? [[String: Any]] ?? []
        #expect(audit.contains { $0["who"] as? String == "olga" && $0["action"] as? String == "POST /v1/vms/web1/pause" && $0["status"] as? Int == 200 })
        for name in ["1-two-running.png", "2-web1-paused.png", "3-web2-detail.png"] {
            #expect(FileManager.default.fileExists(atPath: shots.appendingPathComponent(name).path), "screenshot \(name)")
        }
        _ = daemon.stop()
    }
}
