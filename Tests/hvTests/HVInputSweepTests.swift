// Every option of every command this package ships (hv and its subcommands, hv-bench, the
// examples, irq-latency), fed the values a newcomer (or a fuzzer) might type: 2^64 - 1, negative
// numbers, hex, junk, 1e308, nan, nothing. None may make a command trap or print a backtrace; a
// refusal is one line ("NAME: error: ..."), status 64 for a command line the command cannot use.
// The options of the ArgumentParser commands come from the commands themselves
// (--experimental-dump-help), so an option added later is swept too; the examples that parse
// their few positional arguments by hand list them here.
import Foundation
import Testing

@Suite("input sweep of every command")
struct HVInputSweepTests {
    static let values = ["18446744073709551615", "-1", "-9223372036854775808", "0x10", "0xFFFFFFFFFFFFFFFF", "junk", "1e308", "nan", ""]

    /// (command path, option) for every option that takes a value, from the executable's own description.
    static func options(of executable: String) throws -> [(command: [String], option: String)] {
        let dump = try PackageExecutable.run(["--experimental-dump-help"], executable: executable)
        let json = try #require(try JSONSerialization.jsonObject(with: Data(dump.stdout.utf8)) as? [String: Any])
        var found: [(command: [String], option: String)] = []
        func walk(_ command: [String: Any], _ path: [String]) {
            for argument in command["arguments"] as? [[String: Any]] ?? [] where argument["kind"] as? String == "option" {
                guard let name = (argument["names"] as? [[String: Any]])?.first(where: { $0["kind"] as? String == "long" })?["name"] as? String
                else { continue }
                found.append((path, name))
            }
            for sub in command["subcommands"] as? [[String: Any]] ?? [] {
                guard let name = sub["commandName"] as? String, name != "help" else { continue }
                walk(sub, path + [name])
            }
        }
        walk(try #require(json["command"] as? [String: Any]), [])
        return found
    }

    /// What a command needs besides the option under test to get as far as using it.
    static func base(_ executable: String, _ command: [String], option: String, folder: URL) -> [String] {
        switch (executable, command) {
        case ("hv", ["run"]): return [folder.appendingPathComponent("halt.bin").path, "--timeout", "5"]
        case ("hv", ["tpm", "serve"]) where option != "state": return ["--state", folder.appendingPathComponent("state.tpm").path]
        case ("hv", ["ept", "plan"]) where option != "map", ("hv", ["ept", "walk"]) where option != "map": return ["--map", "0:2M:rwx"]
        case ("hv", ["vmx", "plan"]) where option != "profile", ("hv", ["vmx", "caps"]) where option != "profile":
            return ["--profile", "broadwell-i7-5600u"]
        case ("hv", ["vmx", "explain-exit"]): return ["48"]
        case ("hv-bench", _) where option != "kinds": return ["--kinds", "cpuid"]
        case ("MicroVM", _):
            return ["kernel", "disk"].filter { $0 != option }.flatMap { ["--\($0)", folder.appendingPathComponent("halt.bin").path] }
        default: return []
        }
    }

    /// Runs `executable` with each value in each place and lists what trapped or refused in more than one line.
    static func sweep(_ executable: String, _ places: [(label: String, arguments: @Sendable (String) -> [String])], folder: URL) -> [String] {
        // Four at a time: most runs end at once, a few (servers, benchmarks, guests) wait out their 5 s.
        let found = Problems()
        let queue = OperationQueue()
        queue.maxConcurrentOperationCount = 4
        for place in places {
            queue.addOperation {
                for value in Self.values {
                    let arguments = place.arguments(value)
                    let run = "\(executable) \(arguments.joined(separator: " ")) -> "
                    guard let result = try? PackageExecutable.runUntil(arguments, markers: ["\u{1}never"], timeout: 5,
                                                                       executable: executable, in: folder) else {
                        found.add("\(run)could not start")
                        continue
                    }
                    let text = result.stdout + result.stderr
                    if result.crashed || text.contains("Fatal error") || text.contains("Stack dump") || text.contains("backtrace")
                        || text.contains("Error raised at top level") {
                        found.add("\(run)status \(result.status), crashed\n\(text.suffix(800))")
                    } else if result.status == 64 {
                        let lines = result.stderr.split(separator: "\n").filter { !$0.hasPrefix("warning:") }
                        if lines.count != 1 || !lines[0].hasPrefix("\(executable): error: ") {
                            found.add("\(run)status 64, not one line:\n\(result.stderr.prefix(800))")
                        }
                    }
                }
            }
        }
        queue.waitUntilAllOperationsAreFinished()
        return found.all
    }

    static func scratch() throws -> URL {
        let folder = try PackageExecutable.temporaryDirectory()
        try Data([0xF4]).write(to: folder.appendingPathComponent("halt.bin"))  // HLT
        try Data(count: 1 << 20).write(to: folder.appendingPathComponent("disk.img"))
        return folder
    }

    @Test("no value of any option makes hv, hv-bench or MicroVM trap; a refusal is one line",
          arguments: [("hv", 40), ("hv-bench", 6), ("MicroVM", 9)])
    func everyOptionEveryValue(executable: String, atLeast: Int) throws {
        let folder = try Self.scratch()
        defer { try? FileManager.default.removeItem(at: folder) }
        let options = try Self.options(of: executable)
        #expect(options.count >= atLeast, "\(executable) describes \(options.count) options")
        let places = options.map { command, option in
            (label: "--\(option)", arguments: { @Sendable (value: String) -> [String] in
                var arguments = command + Self.base(executable, command, option: option, folder: folder)
                // --timeout is the option under test: take the base's out.
                if option == "timeout", let index = arguments.firstIndex(of: "--timeout") { arguments.removeSubrange(index...index + 1) }
                return arguments + ["--\(option)", value]
            })
        }
        let problems = Self.sweep(executable, places + (executable == "hv" ? Self.compoundPlaces(folder: folder) : []), folder: folder)
        #expect(problems.isEmpty, "\(problems.count) problems:\n\(problems.prefix(20).joined(separator: "\n\n"))")
    }

    /// The values inside hv's compound options (--disk FILE,bw=SIZE, --ept plan --map GPA:SIZE:PERM, ...),
    /// each place on a PC platform so the value gets past parsing to the SDK that uses it.
    static func compoundPlaces(folder: URL) -> [(label: String, arguments: @Sendable (String) -> [String])] {
        let halt = folder.appendingPathComponent("halt.bin").path, disk = folder.appendingPathComponent("disk.img").path
        let run = ["run", halt, "--timeout", "5", "--platform", "pc", "--irqchip", "kernel"]
        return [
            ("--disk bw=", { run + ["--disk", "\(disk),bw=\($0)"] }),
            ("--disk iops=", { run + ["--disk", "\(disk),iops=\($0)"] }),
            ("--disk serial=", { run + ["--disk", "\(disk),serial=\($0)"] }),
            ("--net bw=", { run + ["--net", "tap=hvsweep0,bw=\($0)"] }),
            ("--net pps=", { run + ["--net", "tap=hvsweep0,tx-pps=\($0)"] }),
            ("--net mac=", { run + ["--net", "tap=hvsweep0,mac=\($0)"] }),
            ("--net host-ip=", { run + ["--net", "tap=hvsweep0,host-ip=\($0)"] }),
            ("--vsock CID", { run + ["--vsock", "\($0),\(folder.appendingPathComponent("v.sock").path)"] }),
            ("--vsock PATH", { run + ["--vsock", "3,\($0)"] }),
            ("--balloon SIZE", { run + ["--balloon", $0] }),
            ("--balloon stats=", { run + ["--balloon", "1M,stats=\($0)"] }),
            ("--cpu feature", { run + ["--cpu", "host,\($0)"] }),
            ("--cpu vendor=", { run + ["--cpu", "host,vendor=\($0)"] }),
            ("--map GPA", { ["ept", "plan", "--map", "\($0):2M:rwx"] }),
            ("--map SIZE", { ["ept", "plan", "--map", "0:\($0):rwx"] }),
            ("--map PERM", { ["ept", "plan", "--map", "0:2M:\($0)"] }),
        ]
    }

    @Test("no value in any place of the hand-parsed examples' command lines makes them trap; a refusal is one line",
          arguments: ["MinimalVMM", "ExitTracer", "PCBoot", "irq-latency"])
    func everyArgumentEveryValue(executable: String) throws {
        let folder = try Self.scratch()
        defer { try? FileManager.default.removeItem(at: folder) }
        let halt = folder.appendingPathComponent("halt.bin").path
        let places: [(label: String, arguments: @Sendable (String) -> [String])]
        switch executable {
        case "PCBoot": places = [("KERNEL", { [$0] }), ("COMMAND LINE", { [halt, $0] }), ("third", { [halt, "quiet", $0] })]
        case "irq-latency": places = [("ROUNDS", { [$0] }), ("MODES", { ["2", $0] }), ("third", { ["2", "kernel", $0] })]
        default: places = [("first", { [$0] }), ("option", { ["--\($0)"] })]  // they take none
        }
        let problems = Self.sweep(executable, places, folder: folder)
        #expect(problems.isEmpty, "\(problems.count) problems:\n\(problems.prefix(20).joined(separator: "\n\n"))")
    }
}

/// Problems found by concurrent runs.
private final class Problems: @unchecked Sendable {
    // Sendable: `items` only under `lock`.
    private let lock = NSLock()
    private var items: [String] = []
    func add(_ item: String) { lock.withLock { items.append(item) } }
    var all: [String] { lock.withLock { items } }
}
