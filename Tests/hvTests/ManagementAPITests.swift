// The per-VM API (`hv run --api-socket`, Documentation/Management.md) against a real hv process
// running a real KVM guest, through the SDK's client and through `hv ctl`.
import Foundation
import HVManagement
import HVManagementClient
import Testing

@Suite("Management: hv run --api-socket and hv ctl", .serialized)
struct ManagementAPITests {
    /// A long-mode guest that writes port 0x80 forever: `out 0x80, al; jmp $-2`.
    static let loop: [UInt8] = [0xE6, 0x80, 0xEB, 0xFC]

    /// Runs hv with the loop guest and `--api-socket` in a folder of its own; `body` gets the
    /// client once the socket answers, and is called once. Returns hv's result.
    static func withVM(_ extra: [String] = [], _ body: (VMAPIClient, String, Process) throws -> Void) throws -> ProcessResult {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let image = folder.appendingPathComponent("loop.bin")
        try Data(loop).write(to: image)
        let socket = folder.appendingPathComponent("vm.sock").path
        var called = false
        var failure: (any Error)?
        let arguments = ["run", "--platform", "none", "--api-socket", socket, "--timeout", "60"] + extra + [image.path]
        let result = try withoutActuallyEscaping(body) { body in
            try PackageExecutable.run(arguments) { process in
                guard !called else { return }
                called = true
                let client = VMAPIClient(socketPath: socket, timeout: .seconds(10))
                do {
                    try client.waitUntilListening(seconds: 20)
                    try body(client, socket, process)
                } catch { failure = error }
                // A body that stopped the VM lets hv end by itself; any other is ended here.
                let end = Date(timeIntervalSinceNow: 10)
                while process.isRunning, Date() < end { usleep(10_000) }
                if process.isRunning { kill(process.processIdentifier, SIGTERM) }
            }
        }
        if let failure { throw failure }
        #expect(!FileManager.default.fileExists(atPath: socket), "hv removes its API socket when it ends")
        return result
    }

    @Test("info, statistics fresh while the guest runs, pause, registers, resume, devices, reset and stop; the socket is 0600 and confined hv serves it", .needsKVM)
    func lifecycle() throws {
        let result = try Self.withVM { client, socket, process in
            var information = stat()
            #expect(lstat(socket, &information) == 0)
            #expect(information.st_mode & S_IFMT == S_IFSOCK)
            #expect(information.st_mode & 0o777 == 0o600, "mode \(String(information.st_mode & 0o777, radix: 8))")

            // The socket listens before the guest starts: wait (bounded) for its first exits.
            var info: VMInfo = try client.get("/v1/vm")
            let started = Date(timeIntervalSinceNow: 10)
            while info.state != "running" || info.exits == 0, Date() < started {
                usleep(10_000)
                info = try client.get("/v1/vm")
            }
            #expect(info.state == "running")
            #expect(info.backend == "kvm")
            #expect(info.vcpus == 1)
            #expect(info.memoryBytes == 16 << 20)
            #expect(info.interruptController == "none")
            #expect(info.pid == process.processIdentifier)
            #expect(info.exits > 0, "info's exit count is sampled, not the last pause's")

            // Fresh while running: each sample sees more exits, and the VM never paused for it.
            let first: StatisticsReport = try client.get("/v1/vm/statistics")
            usleep(50_000)
            let second: StatisticsReport = try client.get("/v1/vm/statistics")
            #expect(first.state == "running" && second.state == "running")
            #expect(second.exits > first.exits && first.exits > 0)
            #expect(second.kinds.map(\.kind) == ["io-out"])
            let out = try #require(second.kinds.first)
            #expect(out.count == second.exits && out.medianNanoseconds > 0 && out.p99Nanoseconds >= out.medianNanoseconds)

            let paused: VMInfo = try client.post("/v1/vm/pause")
            #expect(paused.state == "paused")
            let still1: StatisticsReport = try client.get("/v1/vm/statistics")
            usleep(50_000)
            let still2: StatisticsReport = try client.get("/v1/vm/statistics")
            #expect(still1 .exits == still2.exits && still1.state == "paused", "a paused guest makes no exits")
            let registers: VCPURegisters = try client.get("/v1/vcpus/0/registers")
            let rip = try #require(registers.general["rip"])
            #expect((0x10_0000..<0x10_0004).contains(rip), "rip 0x\(String(rip, radix: 16)) is in the two-instruction loop")
            #expect(registers.control["efer"].map { $0 & 0x500 == 0x500 } == true, "long mode active (EFER.LME|LMA)")
            #expect(registers.segments["cs"]?.long == true)

            let refusal = #expect(throws: VMAPIClientError.self) { let _: VMInfo = try client.post("/v1/vm/pause") }
            #expect(refusal?.status == 409)
            #expect(refusal?.message.contains("cannot pause a VM that is paused; it is already paused") == true)

            let resumed: VMInfo = try client.post("/v1/vm/resume")
            #expect(resumed.state == "running")
            let running = #expect(throws: VMAPIClientError.self) { try client.get("/v1/vcpus/0/registers", as: VCPURegisters.self) }
            #expect(running?.status == 409)
            #expect(running?.message.contains("vCPU 0 is running; its registers are read while the VM is paused (POST /v1/vm/pause)") == true)
            let again = #expect(throws: VMAPIClientError.self) { let _: VMInfo = try client.post("/v1/vm/resume") }
            #expect(again?.message.contains("cannot resume a VM that is running") == true)

            let devices: [DeviceEntry] = try client.get("/v1/devices")
            #expect(devices.contains(DeviceEntry(name: "uart16550", space: "port", base: 0x3F8, length: 8)))
            #expect(devices.contains(DeviceEntry(name: "debug-exit", space: "port", base: 0xF4, length: 4)))

            let reset: VMInfo = try client.post("/v1/vm/reset")
            #expect(reset.state == "running")
            let deadline = Date(timeIntervalSinceNow: 10)
            var resets = 0
            while resets == 0, Date() < deadline {
                resets = try client.get("/v1/vm", as: VMInfo.self).resets
                usleep(10_000)
            }
            #expect(resets == 1)

            let document = String(decoding: try client.call("GET", "/openapi.yaml"), as: UTF8.self)
            #expect(document == VMAPI.openAPIDocument && document.hasPrefix("openapi: 3.0.3"))

            let stopping: VMInfo = try client.post("/v1/vm/stop")
            #expect(stopping.state == "running" || stopping.state == "stopped")
        }
        #expect(result.status == 0, "stderr: \(result.stderr)")
        #expect(result.stderr.contains("hv: the host asked the VM to stop after"))
        #expect(result.stderr.contains("(1 reset)"))
        #expect(!result.stderr.contains("seccomp"), "the API's threads make only allowed calls: \(result.stderr)")
    }

    @Test("bad requests: an unknown vCPU or route is 404 with a message, a reset with --on-reset stop is 409 naming the policy", .needsKVM)
    func refusals() throws {
        let result = try Self.withVM(["--on-reset", "stop"]) { client, _, _ in
            let vcpu = #expect(throws: VMAPIClientError.self) { try client.get("/v1/vcpus/7/registers", as: VCPURegisters.self) }
            #expect(vcpu?.status == 404)
            #expect(vcpu?.message.contains("no vCPU '7'; this VM has vCPUs 0...0") == true)
            let word = #expect(throws: VMAPIClientError.self) { try client.get("/v1/vcpus/first/registers", as: VCPURegisters.self) }
            #expect(word?.status == 404)
            let route = #expect(throws: VMAPIClientError.self) { _ = try client.call("GET", "/v1/nothing") }
            #expect(route?.status == 404)
            #expect(route?.message.contains("no route GET /v1/nothing; the routes are listed at GET /openapi.yaml") == true)
            let method = #expect(throws: VMAPIClientError.self) { _ = try client.call("DELETE", "/v1/vm") }
            #expect(method.map { [404, 405].contains($0.status ?? 0) } == true)
            let reset = #expect(throws: VMAPIClientError.self) { let _: VMInfo = try client.post("/v1/vm/reset") }
            #expect(reset?.status == 409)
            #expect(reset?.message.contains("resetPolicy is stop; it needs restart") == true)
            // Nothing above changed the VM.
            #expect(try client.get("/v1/vm", as: VMInfo.self).state == "running")
            let _: VMInfo = try client.post("/v1/vm/stop")
        }
        #expect(result.status == 0, "stderr: \(result.stderr)")
    }

    @Test("hv ctl: info, stats, pause, registers and resume print readable answers; a refusal exits 1, no VM exits 3", .needsKVM)
    func ctl() throws {
        let result = try Self.withVM { _, socket, _ in
            let info = try PackageExecutable.run(["ctl", socket, "info"])
            #expect(info.status == 0)
            #expect(info.stdout.contains("state      running\n") && info.stdout.contains("memory     16 MiB\n"), "\(info.stdout)")
            let stats = try PackageExecutable.run(["ctl", socket, "stats"])
            #expect(stats.stdout.hasPrefix("exit    count  median µs  p99 µs  handling µs") || stats.stdout.contains("io-out"), "\(stats.stdout)")
            #expect(stats.stdout.contains("\nio-out "))
            #expect(try PackageExecutable.run(["ctl", socket, "pause"]).stdout == "paused\n")
            let registers = try PackageExecutable.run(["ctl", socket, "registers", "--vcpu", "0"])
            #expect(registers.stdout.hasPrefix("vCPU 0\nrax "))
            #expect(registers.stdout.contains("cs   selector 0x0008"))
            let json = try PackageExecutable.run(["ctl", socket, "info", "--json"])
            let decoded = try JSONDecoder().decode(VMInfo.self, from: Data(json.stdout.utf8))
            #expect(decoded.state == "paused")
            let refused = try PackageExecutable.run(["ctl", socket, "pause"])
            #expect(refused.status == 1)
            #expect(refused.stderr == "hv: error: POST /v1/vm/pause: 409 Conflict: cannot pause a VM that is paused; it is already paused\n")
            #expect(try PackageExecutable.run(["ctl", socket, "resume"]).stdout == "running\n")
            let devices = try PackageExecutable.run(["ctl", socket, "devices"])
            #expect(devices.stdout.contains("port 0x3f8-0x3ff") && devices.stdout.contains("uart16550"))
            #expect(try PackageExecutable.run(["ctl", socket, "stop"]).status == 0)
        }
        #expect(result.status == 0)
        let missing = try PackageExecutable.run(["ctl", "/nonexistent/vm.sock", "info"])
        #expect(missing.status == 3)
        #expect(missing.stderr == "hv: error: /nonexistent/vm.sock: no such socket (is `hv run --api-socket /nonexistent/vm.sock` running?)\n")
    }

    @Test("the socket path: a live one is refused, a stale one replaced, a file never removed", .needsKVM)
    func socketPath() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        let image = folder.appendingPathComponent("hlt.bin")
        try Data([0xF4]).write(to: image)
        // A regular file where the socket would go is refused and left alone.
        let file = folder.appendingPathComponent("notes.txt")
        try Data("keep me".utf8).write(to: file)
        let onFile = try PackageExecutable.run(["run", "--platform", "none", "--api-socket", file.path, image.path])
        #expect(onFile.status == 64)
        #expect(onFile.stderr == "hv: error: --api-socket \(file.path): exists and is not a socket; remove it or choose another path\n")
        #expect(try String(contentsOf: file, encoding: .utf8) == "keep me")
        // A socket file nobody listens on (left by a process that died) is replaced.
        let stale = folder.appendingPathComponent("stale.sock").path
        let fd = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        var address = sockaddr_un()
        address.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &address.sun_path) { buffer in for (i, byte) in stale.utf8.enumerated() { buffer[i] = byte } }
        let bound = withUnsafePointer(to: &address) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(fd, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        #expect(bound == 0)
        close(fd)
        let replaced = try PackageExecutable.run(["run", "--platform", "none", "--api-socket", stale, image.path])
        #expect(replaced.status == 0, "stderr: \(replaced.stderr)")
        // A socket a running hv serves is refused, and that hv goes on.
        let result = try Self.withVM { client, socket, _ in
            let second = try PackageExecutable.run(["run", "--platform", "none", "--api-socket", socket, image.path])
            #expect(second.status == 64)
            #expect(second.stderr.contains("another process serves this socket (a running hv?); choose another path"))
            #expect(try client.get("/v1/vm", as: VMInfo.self).state == "running")
            let _: VMInfo = try client.post("/v1/vm/stop")
        }
        #expect(result.status == 0)
        let long = String(repeating: "x", count: 120)
        let tooLong = try PackageExecutable.run(["run", "--platform", "none", "--api-socket", "/tmp/\(long)", image.path])
        #expect(tooLong.status == 64)
        #expect(tooLong.stderr.contains("a Unix socket path is 1-107 bytes"))
    }
}
