// hv-snapshot-bench: how long a restore takes, against a cold boot of the same guest measured in
// the same run (Documentation/Snapshots.md, "Measured"). For each memory size it boots the
// counting guest (GuestProgram.counter), snapshots it through `hv ctl`, and restores it N times:
// plain with the memory check, plain mapped without it, and encrypted. Every time is from
// spawning hv to the guest's first instruction (cold: its first console byte, a few
// instructions in; a
// restore: to hv's line that the restored guest starts), so process start, the Swift runtime and
// dynamic linking are in all of them; hv's own figure ("started the guest X ms after hv began")
// leaves those out. Then it migrates the running guest between two hv processes N times and
// reports the guest-visible pause (the source's pause to the destination's guest running).
//
//   swift run -c release hv-snapshot-bench [--sizes 256M,2G] [--rounds 5]
import Foundation
import HVGuest

let arguments = CommandLine.arguments
func option(_ name: String, _ fallback: String) -> String {
    guard let index = arguments.firstIndex(of: name), index + 1 < arguments.count else { return fallback }
    return arguments[index + 1]
}
let sizes = option("--sizes", "256M,2G").split(separator: ",").map(String.init)
let rounds = Int(option("--rounds", "5")) ?? 5
let binaries = URL(fileURLWithPath: CommandLine.arguments[0]).deletingLastPathComponent()
let hv = binaries.appendingPathComponent("hv").path
guard FileManager.default.isExecutableFile(atPath: hv) else {
    FileHandle.standardError.write(Data("hv-snapshot-bench: \(hv) is missing; build the package first (swift build -c release)\n".utf8))
    exit(70)
}
let folder = FileManager.default.temporaryDirectory.appendingPathComponent("hv-snapshot-bench-\(getpid())")
try FileManager.default.createDirectory(at: folder, withIntermediateDirectories: true)
defer { try? FileManager.default.removeItem(at: folder) }
let guest = folder.appendingPathComponent("counter.bin").path
try Data(try GuestProgram.counter().code).write(to: URL(fileURLWithPath: guest))
let keyFile = folder.appendingPathComponent("key").path
FileManager.default.createFile(atPath: keyFile, contents: Data(String(repeating: "5a", count: 32).utf8), attributes: [.posixPermissions: 0o600])

func now() -> Double {
    var time = timespec()
    clock_gettime(CLOCK_MONOTONIC, &time)
    return Double(time.tv_sec) + Double(time.tv_nsec) / 1e9
}

/// hv started with `args`, reading nothing, its output and errors to the pipes given (or nowhere).
func startHV(_ args: [String], output: Pipe? = nil, errors: Pipe? = nil) throws -> Process {
    let process = Process()
    process.executableURL = URL(fileURLWithPath: hv)
    process.arguments = args
    process.standardOutput = output ?? FileHandle.nullDevice
    process.standardError = errors ?? FileHandle.nullDevice
    process.standardInput = FileHandle.nullDevice
    try process.run()
    return process
}

/// Starts hv with `args` and waits until standard error has a line containing `marker`;
/// returns the process, the milliseconds to it, and that line.
func untilMarker(_ args: [String], _ marker: String) throws -> (ms: Double, process: Process, line: String, errors: Pipe) {
    let err = Pipe()
    let start = now()
    let process = try startHV(args, errors: err)
    var text = ""
    while !text.contains(marker) {
        let chunk = err.fileHandleForReading.availableData
        if chunk.isEmpty { break }
        text += String(decoding: chunk, as: UTF8.self)
    }
    let elapsed = (now() - start) * 1000
    // The marker's line and what came with it (hv's restore-steps line follows it at once).
    var from = text.startIndex
    if let found = text.range(of: marker), let newline = text[..<found.lowerBound].lastIndex(of: "\n") { from = text.index(after: newline) }
    return (elapsed, process, String(text[from...]), err)
}

/// Starts hv with `args`; returns the process, the milliseconds to its first byte of output,
/// and its standard error (read after it is stopped).
func firstOutput(_ args: [String]) throws -> (ms: Double, process: Process, errors: Pipe) {
    let out = Pipe(), err = Pipe()
    let start = now()
    let process = try startHV(args, output: out, errors: err)
    _ = out.fileHandleForReading.availableData
    return ((now() - start) * 1000, process, err)
}

func stop(_ process: Process) {
    kill(process.processIdentifier, SIGKILL)
    process.waitUntilExit()
}

/// `hv ctl SOCKET ACTION... --json`'s answer (it may wait up to 120 s: a 2 GiB snapshot in a debug build).
func ctlJSON(_ socket: String, _ action: [String]) throws -> Data {
    let ctl = Process()
    ctl.executableURL = URL(fileURLWithPath: hv)
    ctl.arguments = ["ctl", socket] + action + ["--json", "--wait", "10", "--timeout", "120"]
    let out = Pipe()
    ctl.standardOutput = out
    try ctl.run()
    let answer = out.fileHandleForReading.readDataToEndOfFile()
    ctl.waitUntilExit()
    return answer
}

func median(_ values: [Double]) -> Double { values.sorted()[values.count / 2] }

func hvOwnFigure(_ text: String) -> Double? {
    guard let range = text.range(of: "started the guest ") else { return nil }
    return Double(text[range.upperBound...].prefix { $0 == "." || $0.isNumber })
}

print("size    cold boot  snapshot  restore (verified)  restore (mapped)  restore (encrypted)  hv's own: verified/mapped/encrypted   restore/cold (mapped)  migration downtime")
for size in sizes {
    var cold: [Double] = []
    for _ in 0..<rounds {
        let run = try firstOutput(["run", guest, "--mem", size, "--timeout", "60"])
        cold.append(run.ms)
        stop(run.process)
    }
    var pauses: [String: Double] = [:]
    for (name, extra) in [("plain", [String]()), ("sealed", ["--key-file", keyFile])] {
        let socket = folder.appendingPathComponent("\(name).sock").path
        let run = try firstOutput(["run", guest, "--mem", size, "--timeout", "120", "--api-socket", socket] + extra)
        let answer = try ctlJSON(socket, ["snapshot", folder.appendingPathComponent(name).path])
        stop(run.process)
        guard let json = try? JSONSerialization.jsonObject(with: answer) as? [String: Any], let seconds = json["seconds"] as? Double else {
            let errors = String(decoding: run.errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            FileHandle.standardError.write(Data("hv-snapshot-bench: the \(size) snapshot failed; hv said: \(errors)\n".utf8))
            exit(1)
        }
        pauses[name] = seconds * 1000
    }
    var restores: [[Double]] = [[], [], []], own: [[Double]] = [[], [], []]
    let variants: [[String]] = [["--restore", folder.appendingPathComponent("plain").path],
                                ["--restore", folder.appendingPathComponent("plain").path, "--no-verify-memory"],
                                ["--restore", folder.appendingPathComponent("sealed").path, "--key-file", keyFile]]
    for _ in 0..<rounds {
        for (index, variant) in variants.enumerated() {
            // The line hv prints as the restored guest starts: its first instruction follows.
            let run = try untilMarker(["run"] + variant + ["--timeout", "60"], "started the guest")
            restores[index].append(run.ms)
            if let figure = hvOwnFigure(run.line) { own[index].append(figure) }
            if arguments.contains("--verbose") {
                // hv's next line breaks the restore down into its steps.
                var rest = run.line
                while !rest.contains("restore steps") {
                    let chunk = run.errors.fileHandleForReading.availableData
                    if chunk.isEmpty { break }
                    rest += String(decoding: chunk, as: UTF8.self)
                }
                print("  \(variant.last ?? ""): \(rest.split(separator: "\n").first { $0.contains("restore steps") } ?? "")")
            }
            stop(run.process)
        }
    }
    // Live migration between two hv processes on this host: the guest-visible pause, from the
    // source's pause to the destination's guest running (hv ctl migrate --json).
    var downtimes: [Double] = []
    for round in 0..<rounds {
        let port = 30_000 + Int(getpid() % 10_000) + round
        let destination = try untilMarker(["run", "--incoming", "127.0.0.1:\(port)", "--timeout", "60"], "waiting for a migration")
        let socket = folder.appendingPathComponent("migrate.sock").path
        // The source's console goes nowhere (a full pipe would hold its vCPU in a write).
        let source = try startHV(["run", guest, "--mem", size, "--timeout", "120", "--api-socket", socket])
        usleep(500_000)  // running a while, its pages touched
        let answer = try ctlJSON(socket, ["migrate", "127.0.0.1:\(port)"])
        stop(source)
        stop(destination.process)
        guard let json = try? JSONSerialization.jsonObject(with: answer) as? [String: Any], let downtime = json["downtimeMs"] as? Double else {
            let said = String(decoding: destination.errors.fileHandleForReading.readDataToEndOfFile(), as: UTF8.self)
            FileHandle.standardError.write(Data("hv-snapshot-bench: the \(size) migration failed: \(String(decoding: answer, as: UTF8.self)); the destination said: \(said)\n".utf8))
            exit(1)
        }
        downtimes.append(downtime)
    }
    let ownText = own.map { $0.isEmpty ? "-" : String(format: "%.1f", median($0)) }.joined(separator: "/")
    print(String(format: "%-6@ %8.1f ms %6.1f ms %14.1f ms %15.1f ms %17.1f ms  %@ ms %27.2f %16.1f ms", size, median(cold), pauses["plain"] ?? -1,
                 median(restores[0]), median(restores[1]), median(restores[2]), ownText.padding(toLength: 22, withPad: " ", startingAt: 0),
                 median(restores[1]) / median(cold), median(downtimes)))
}
print("(medians of \(rounds); times from spawning hv to the guest's first instruction; snapshot: how long the guest was paused for the plain one)")
