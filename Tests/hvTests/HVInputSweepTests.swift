// Every option of every `hv` subcommand, fed the values a newcomer (or a fuzzer) might type:
// 2^64 - 1, negative numbers, hex, junk, 1e308, nan, nothing. None may make hv trap or print a
// backtrace; a refusal is one line ("hv: error: ..."), status 64 for a command line hv cannot use.
// The options come from hv itself (ArgumentParser's --experimental-dump-help), so an option added
// later is swept too.
import Foundation
import Testing

@Suite("hv input sweep")
struct HVInputSweepTests {
    static let values = ["18446744073709551615", "-1", "-9223372036854775808", "0x10", "0xFFFFFFFFFFFFFFFF", "junk", "1e308", "nan", ""]

    /// (command path, option) for every option that takes a value, from hv's own description.
    static func options() throws -> [(command: [String], option: String)] {
        let dump = try PackageExecutable.run(["--experimental-dump-help"])
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

    /// What a subcommand needs besides the option under test to get as far as using it.
    static func base(_ command: [String], option: String, folder: URL) -> [String] {
        switch command {
        case ["run"]: return [folder.appendingPathComponent("halt.bin").path, "--timeout", "5"]
        case ["tpm", "serve"] where option != "state": return ["--state", folder.appendingPathComponent("state.tpm").path]
        case ["ept", "plan"] where option != "map", ["ept", "walk"] where option != "map": return ["--map", "0:2M:rwx"]
        case ["vmx", "plan"] where option != "profile", ["vmx", "caps"] where option != "profile": return ["--profile", "broadwell-i7-5600u"]
        case ["vmx", "explain-exit"]: return ["48"]
        default: return []
        }
    }

    @Test("no value of any option makes hv trap; a refusal is one line")
    func everyOptionEveryValue() throws {
        let folder = try PackageExecutable.temporaryDirectory()
        defer { try? FileManager.default.removeItem(at: folder) }
        try Data([0xF4]).write(to: folder.appendingPathComponent("halt.bin"))  // HLT
        let options = try Self.options()
        #expect(options.count >= 40, "hv describes \(options.count) options")
        // Four at a time: most runs end at once, a few wait out their 5 s.
        let found = Problems()
        let queue = OperationQueue()
        queue.maxConcurrentOperationCount = 4
        for (command, option) in options {
            queue.addOperation {
                for value in Self.values {
                    var arguments = command + Self.base(command, option: option, folder: folder)
                    // --timeout is the option under test: take the base's out.
                    if option == "timeout", let index = arguments.firstIndex(of: "--timeout") { arguments.removeSubrange(index...index + 1) }
                    arguments += ["--\(option)", value]
                    // Servers and benchmarks that accept a value run until stopped: 5 s shows no trap.
                    guard let result = try? PackageExecutable.runUntil(arguments, markers: ["\u{1}never"], timeout: 5, in: folder) else {
                        found.add("hv \(arguments): could not start")
                        continue
                    }
                    let text = result.stdout + result.stderr
                    let run = "hv \(arguments.joined(separator: " ")) -> status \(result.status)"
                    var problem: String?
                    if result.crashed || text.contains("Fatal error") || text.contains("Stack dump") || text.contains("backtrace") {
                        problem = "\(run): crashed\n\(text.suffix(800))"
                    } else if result.status == 64 {
                        let lines = result.stderr.split(separator: "\n").filter { !$0.hasPrefix("warning:") }
                        if lines.count != 1 || !lines[0].hasPrefix("hv: error: ") { problem = "\(run): not one line:\n\(result.stderr.prefix(800))" }
                    }
                    if let problem { found.add(problem) }
                }
            }
        }
        queue.waitUntilAllOperationsAreFinished()
        let problems = found.all
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
