// hv-bench end to end: the built binary measures io-out against its C baseline and user-space
// dispatch, and reports them in JSON with a ratio and no allocations on the vCPU thread.
import Foundation
import HVTestSupport
import Testing

@Suite("hv-bench")
struct HVBenchTests {
    /// nil when /dev/kvm opens; otherwise why not.
    static let kvmUnavailable: String? = {
        let fd = open("/dev/kvm", O_RDWR)
        guard fd >= 0 else { return "/dev/kvm cannot be opened: \(String(cString: strerror(errno)))" }
        close(fd)
        return nil
    }()

    /// The built hv-bench, next to the test bundle.
    static let binary = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
        .appendingPathComponent("hv-bench")

    @Test("--json reports io-out with a HVCore/C ratio and dispatch, with 0 allocations per exit",
          .enabled(if: kvmUnavailable == nil || Requirement.kvm, "skipped: \(kvmUnavailable ?? "")"),
          .timeLimit(.minutes(1)))
    func jsonReport() throws {
        try #require(FileManager.default.isExecutableFile(atPath: Self.binary.path),
                     "hv-bench is not built next to the test bundle (\(Self.binary.path))")
        let process = Process()
        process.executableURL = Self.binary
        process.arguments = ["--json", "--duration", "0.5", "--rounds", "2", "--kinds", "io-out,dispatch"]
        let output = Pipe()
        process.standardOutput = output
        process.standardError = FileHandle.nullDevice
        try process.run()
        let data = output.fileHandleForReading.readDataToEndOfFile()
        process.waitUntilExit()
        #expect(process.terminationStatus == 0)

        let document = try #require(try JSONSerialization.jsonObject(with: data) as? [String: Any])
        let kinds = try #require(document["kinds"] as? [[String: Any]])
        #expect(kinds.compactMap { $0["kind"] as? String } == ["io-out", "dispatch"])
        let ioOut = try #require(kinds.first { $0["kind"] as? String == "io-out" })
        let ratio = try #require(ioOut["ratio"] as? Double)
        #expect(ratio > 0.5 && ratio < 2, "HVCore/C median ratio \(ratio) for io-out")
        for kind in kinds {
            let hvcore = try #require(kind["hvcore"] as? [String: Any])
            #expect((hvcore["samples"] as? Int ?? 0) > 0)
            #expect(hvcore["allocationsPerExit"] as? Double == 0, "\(kind["kind"] ?? "?") allocated on the vCPU thread")
        }
        #expect((document["tscGHz"] as? Double ?? 0) > 0)
    }

    @Test("--kinds rejects an unknown kind and names the valid ones")
    func unknownKind() throws {
        let process = Process()
        process.executableURL = Self.binary
        process.arguments = ["--kinds", "io-sideways"]
        let errors = Pipe()
        process.standardError = errors
        process.standardOutput = FileHandle.nullDevice
        try process.run()
        let text = String(decoding: errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
        process.waitUntilExit()
        #expect(process.terminationStatus != 0)
        #expect(text.contains("io-sideways") && text.contains("mmio-read"))
    }

    @Test("extreme, negative and junk values are refused with status 64, never a trap or a run that never ends", arguments: [
        (["--duration", "18446744073709551615"], "--duration"), (["--duration", "1e308"], "--duration"), (["--duration", "nan"], "--duration"),
        (["--iterations", "9223372036854775807"], "--iterations"), (["--rounds", "9223372036854775807"], "--rounds"),
        (["--rounds", "-1"], "--rounds"), (["--warm-up-exits", "18446744073709551615"], "--warm-up-exits"), (["--cpu", "junk"], "--cpu"),
        (["--plot", ""], "--plot"), (["--plot", "/nonexistent/exits.svg"], "--plot"),
    ])
    func extremeValues(arguments: [String], option: String) throws {
        let result = try PackageExecutable.run(["--kinds", "cpuid"] + arguments, executable: "hv-bench")
        #expect(result.status == 64, "\(arguments): \(result.stderr)")
        #expect(!result.crashed && !result.stderr.contains("Fatal error"))
        #expect(result.stderr.contains(option))
        // One line, as hv prints errors: no usage and help around it.
        #expect(result.stderr.hasPrefix("hv-bench: error: ") && result.stderr.filter { $0 == "\n" }.count == 1, "\(result.stderr)")
    }
}
