// `hv tpm bench`: TPM2_GetRandom round trips per second through `hv tpm serve` and through
// `swtpm socket`, same client, same machine, same run (issue 5's "must show").
import ArgumentParser
import Foundation
import HVTPM

struct TPMBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bench",
        abstract: "Compare TPM2_GetRandom round trips/s of `hv tpm serve` and `swtpm socket`.",
        discussion: """
            Starts both servers on free loopback ports with fresh state directories, then runs \
            --rounds alternating rounds of --count TPM2_GetRandom(32) commands against each over \
            one kept-open data connection (HV's SwtpmClientEngine), and reports the median \
            rate of each and their ratio (hv / swtpm). A benchmark, not a test: numbers vary.
            """)

    @Option(name: .long, help: "Commands per round.")
    var count: Int = 5000

    @Option(name: .long, help: "Rounds per server (alternating, to share the machine's noise).")
    var rounds: Int = 5

    @Option(name: .long, help: ArgumentHelp("The swtpm executable.", valueName: "path"))
    var swtpm: String = "swtpm"

    func validate() throws {
        guard count > 0, rounds > 0 else { throw ValidationError("--count and --rounds must be positive.") }
    }

    func run() throws {
        let scratch = FileManager.default.temporaryDirectory.appendingPathComponent("hv-tpm-bench-\(getpid())")
        try FileManager.default.createDirectory(at: scratch, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: scratch) }
        var children: [Process] = []
        defer { for child in children { Self.end(child) } }

        // hv tpm serve: this very executable, on ports it picks and prints.
        let hv = Process()
        hv.executableURL = URL(fileURLWithPath: "/proc/self/exe").resolvingSymlinksInPath()
        hv.arguments = ["tpm", "serve", "--state", scratch.appendingPathComponent("hv").path, "--port", "0", "--startup-clear"]
        let hvOutput = Pipe()
        hv.standardOutput = hvOutput
        hv.standardError = FileHandle.nullDevice
        try hv.run()
        children.append(hv)
        guard let line = readLine(hvOutput.fileHandleForReading), let hvPort = Self.port(inServeBanner: line) else {
            printError("hv: error: hv tpm serve did not start")
            throw ExitCode(ExitStatus.hostFailure)
        }

        let (swtpmProcess, swtpmPort) = try startSwtpm(state: scratch.appendingPathComponent("swtpm"))
        children.append(swtpmProcess)

        let hvClient = try connect(port: hvPort)
        let swtpmClient = try connect(port: swtpmPort)
        print("TPM2_GetRandom(32) round trips, \(rounds) x \(count) per server, one connection each")
        var hvRates: [Double] = []
        var swtpmRates: [Double] = []
        for _ in 0..<rounds {
            hvRates.append(try measure(hvClient))
            swtpmRates.append(try measure(swtpmClient))
        }
        let hvMedian = hvRates.sorted()[rounds / 2]
        let swtpmMedian = swtpmRates.sorted()[rounds / 2]
        print(String(format: "hv tpm serve: %8.0f round trips/s (median; rounds %@)", hvMedian, hvRates.map { String(format: "%.0f", $0) }.joined(separator: " ")))
        print(String(format: "swtpm socket: %8.0f round trips/s (median; rounds %@)", swtpmMedian, swtpmRates.map { String(format: "%.0f", $0) }.joined(separator: " ")))
        print(String(format: "ratio hv/swtpm: %.2f", hvMedian / swtpmMedian))
    }

    /// SIGTERM, then SIGKILL after 2 s: a child inherits our blocked signals, and a blocked
    /// SIGTERM never reaches swtpm's handler (hv tpm serve takes it with sigwait either way).
    private static func end(_ child: Process) {
        guard child.isRunning else { return }
        child.terminate()
        for _ in 0..<200 where child.isRunning { usleep(10_000) }
        if child.isRunning { kill(child.processIdentifier, SIGKILL) }
        child.waitUntilExit()
    }

    /// `count` GetRandom commands; returns commands per second.
    private func measure(_ client: SwtpmClientEngine) throws -> Double {
        let command = TPMCommand.getRandom(32)
        let start = DispatchTime.now().uptimeNanoseconds
        for _ in 0..<count {
            let response = try client.execute(command, locality: 0)
            guard TPMResponse.code(response) == 0 else {
                printError("hv: error: TPM2_GetRandom failed with 0x\(String(TPMResponse.code(response) ?? 0, radix: 16))")
                throw ExitCode(ExitStatus.hostFailure)
            }
        }
        let seconds = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e9
        return Double(count) / seconds
    }

    /// Retries while a freshly started server is still binding its port.
    private func connect(port: UInt16) throws -> SwtpmClientEngine {
        for _ in 0..<100 {
            if let client = try? SwtpmClientEngine(port: port) { return client }
            usleep(50_000)
        }
        return try SwtpmClientEngine(port: port)
    }

    /// `swtpm socket` on a free port pair, initialised and started (`startup-clear`).
    private func startSwtpm(state: URL) throws -> (Process, UInt16) {
        try FileManager.default.createDirectory(at: state, withIntermediateDirectories: true)
        let port = try freePortPair()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = [swtpm, "socket", "--tpm2", "--tpmstate", "dir=\(state.path)",
                             "--server", "type=tcp,port=\(port),bindaddr=127.0.0.1",
                             "--ctrl", "type=tcp,port=\(port + 1),bindaddr=127.0.0.1",
                             "--flags", "not-need-init,startup-clear"]
        process.standardOutput = FileHandle.nullDevice
        process.standardError = FileHandle.nullDevice
        try process.run()
        return (process, port)
    }

    /// A port P with P and P + 1 free on 127.0.0.1 right now.
    private func freePortPair() throws -> UInt16 {
        let server = try TPMServerProbe.freePair()
        return server
    }

    private func readLine(_ handle: FileHandle) -> String? {
        var bytes: [UInt8] = []
        while true {
            let data = handle.readData(ofLength: 1)
            guard let byte = data.first else { return bytes.isEmpty ? nil : String(decoding: bytes, as: UTF8.self) }
            if byte == UInt8(ascii: "\n") { return String(decoding: bytes, as: UTF8.self) }
            bytes.append(byte)
        }
    }

    /// The data port in `hv tpm serve`'s first line ("... data 127.0.0.1:P control ...").
    static func port(inServeBanner line: String) -> UInt16? {
        guard let range = line.range(of: "data ") else { return nil }
        let address = line[range.upperBound...].prefix { $0 != " " }
        return address.split(separator: ":").last.flatMap { UInt16($0) }
    }
}

/// Finds free loopback port pairs by binding and releasing them.
enum TPMServerProbe {
    static func freePair() throws -> UInt16 {
        for _ in 0..<64 {
            let first = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(first) }
            guard let port = bind(first, 0) else { continue }
            let second = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
            defer { close(second) }
            if port < UInt16.max, bind(second, port + 1) != nil { return port }
        }
        printError("hv: error: found no free pair of loopback ports")
        throw ExitCode(ExitStatus.hostFailure)
    }

    private static func bind(_ fd: Int32, _ port: UInt16) -> UInt16? {
        var address = sockaddr_in()
        address.sin_family = sa_family_t(AF_INET)
        address.sin_port = port.bigEndian
        address.sin_addr.s_addr = UInt32(0x7F00_0001).bigEndian
        let bound = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { Glibc.bind(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        guard bound == 0 else { return nil }
        var actual = sockaddr_in()
        var length = socklen_t(MemoryLayout<sockaddr_in>.size)
        _ = withUnsafeMutablePointer(to: &actual) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { getsockname(fd, $0, &length) }
        }
        return UInt16(bigEndian: actual.sin_port)
    }
}
