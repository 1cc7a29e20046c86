// `hv-bench`: exit latency of HVCore on KVM, measured against a raw C loop in the same run.
// Documentation/Benchmarks.md explains the kinds, the method and how to read the ratio.
import ArgumentParser
import HVCommandLine
import CKVMBaseline
import Foundation
import HVCore
import HVKVM

@main
struct HVBench: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "hv-bench",
        abstract: "Measure exit round trips through HVCore against a raw C KVM loop, side by side.",
        discussion: """
            Every kind runs a tiny guest loop that makes one exit per iteration. HVCore's side goes \
            through Machine's run loop with a timing handler; the C side drives the same guest code \
            with raw ioctls. Rounds alternate HVCore, C, HVCore, C ... after a warm-up round each; \
            every exit-to-exit interval is timed with RDTSC into an HdrHistogram. For stable numbers \
            pin the vCPU thread (--cpu) on an idle machine. `hv-bench --list` names the kinds.
            """)

    /// Errors as one line ("NAME: error: ..."), as `hv` prints them, not usage and help around them.
    static func main() { mainWithOneLineErrors() }

    @Flag(name: .long, help: "List the kinds and what each measures, then exit.")
    var list = false

    @Option(name: .long, help: ArgumentHelp("Comma-separated kinds to run (default all; see --list).", valueName: "kinds"))
    var kinds: String?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Measured seconds per kind, shared by its sides and rounds.", valueName: "seconds"))
    var duration: Double = 1

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Measured samples per kind and side instead of --duration.", valueName: "count"))
    var iterations: Int?

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Measured rounds per side; sides alternate ABAB.", valueName: "count"))
    var rounds: Int = 5

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Exits at the start of every round that are not recorded.", valueName: "count"))
    var warmUpExits: UInt64 = 500

    @Flag(name: .long, help: "Run HVCore with collectExitStatistics = false (default: the SDK's default, on).")
    var withoutExitStatistics = false

    @Option(name: .long, parsing: .unconditional, help: ArgumentHelp("Pin the vCPU thread (and the C loop's thread) to this CPU.", valueName: "n"))
    var cpu: Int32?

    @Flag(name: .long, help: "Print one JSON object instead of the table.")
    var json = false

    @Flag(name: .long, help: "Print CSV (one row per kind and side) instead of the table.")
    var csv = false

    @Option(name: .long, help: ArgumentHelp("Also draw the percentile curves, HVCore and C per kind, into this SVG file.", valueName: "file.svg"))
    var plot: String?

    func validate() throws {
        if let kinds, case .failure(let error) = BenchKind.parseList(kinds) {
            throw ValidationError("--kinds: \(error.message).")
        }
        // Bounded: an hour per kind, a billion samples or exits, a thousand rounds. Beyond that a
        // value is a typo, and the counts made from it would overflow.
        guard duration > 0, duration <= 3600 else {
            throw ValidationError("--duration \(duration) must be a positive number of seconds up to 3600, e.g. --duration 2.")
        }
        if let iterations, !(1...1_000_000_000).contains(iterations) {
            throw ValidationError("--iterations \(iterations) must be 1 to 1000000000, e.g. --iterations 100000.")
        }
        guard (1...1000).contains(rounds) else { throw ValidationError("--rounds \(rounds) must be 1 to 1000, e.g. --rounds 5.") }
        guard warmUpExits <= 1_000_000_000 else {
            throw ValidationError("--warm-up-exits \(warmUpExits) must be at most 1000000000, e.g. --warm-up-exits 500.")
        }
        if let cpu {
            let count = Int32(ProcessInfo.processInfo.processorCount)
            guard cpu >= 0, cpu < count else {
                throw ValidationError("--cpu \(cpu) is not a CPU of this host; use 0 to \(count - 1).")
            }
        }
        if json && csv { throw ValidationError("--json and --csv both print to standard output; pick one.") }
        // Checked before the benchmark runs, so a typo does not cost a finished run.
        if let plot {
            guard !plot.isEmpty, !plot.hasSuffix("/") else { throw ValidationError("--plot needs a file name, e.g. --plot exits.svg.") }
            let folder = (plot as NSString).deletingLastPathComponent
            var isFolder: ObjCBool = false
            guard FileManager.default.fileExists(atPath: folder.isEmpty ? "." : folder, isDirectory: &isFolder), isFolder.boolValue else {
                throw ValidationError("--plot \(plot): there is no folder \(folder).")
            }
        }
    }

    func run() throws {
        if list {
            let width = BenchKind.allCases.map(\.rawValue.count).max() ?? 0
            for kind in BenchKind.allCases {
                print("\(kind.rawValue.padding(toLength: width, withPad: " ", startingAt: 0))  \(kind.summary)")
            }
            return
        }
        let selected = kinds.flatMap { try? BenchKind.parseList($0).get() } ?? BenchKind.allCases
        if let cpu {
            let code = hvb_pin_current_thread(cpu)
            if code != 0 { throw BenchError.pin(cpu: cpu, errno: code) }
        }
        var kvm: KVMBackend?
        if selected.contains(where: \.needsKVM) {
            do { kvm = try KVMBackend() } catch {
                printError("hv-bench: KVM is not available: \(error)")
                throw ExitCode(70)
            }
        }
        let clock = TSCClock()
        let estimate = TSCClock.calibrate()
        let buffer = SampleBuffer(capacity: iterations.map { max(1, ($0 + rounds - 1) / rounds) } ?? Self.sampleCapacity)

        var results: [KindResult] = []
        for kind in selected {
            let sides = kind.hasBaseline ? 2 : 1
            let roundCycles = iterations == nil
                ? UInt64(duration / Double(sides * rounds) * 1e9 * estimate) : UInt64.max
            let capacity = iterations.map { max(1, ($0 + rounds - 1) / rounds) } ?? buffer.capacity
            let plan = RoundPlan(warmUp: warmUpExits, capacity: capacity, cycles: roundCycles)
            let warmUpPlan = RoundPlan(warmUp: warmUpExits, capacity: max(1, capacity / 4), cycles: roundCycles / 4)
            let runner = try RoundRunner(kind: kind, kvm: kvm, buffer: buffer, pinCPU: cpu,
                                         exitStatistics: !withoutExitStatistics)
            var result = KindResult(kind: kind, baseline: kind.hasBaseline ? SideResult() : nil)
            // Warm-up: one unrecorded round per side (page tables, caches, the kernel's paths).
            _ = try runner.hvcoreRound(warmUpPlan)
            if kind.hasBaseline { _ = try runner.baselineRound(warmUpPlan) }
            for _ in 0..<rounds {
                let outcome = try runner.hvcoreRound(plan)
                result.hvcore.add(outcome, from: buffer, divisor: kind.iterationsPerSample)
                if kind.hasBaseline {
                    let outcome = try runner.baselineRound(plan)
                    result.baseline?.add(outcome, from: buffer, divisor: kind.iterationsPerSample)
                }
            }
            results.append(result)
            let ratio = result.ratio.map { String(format: ", HVCore/C %.3f", $0) } ?? ""
            printError("hv-bench: \(kind.rawValue): \(result.hvcore.samples) samples\(ratio)")
        }

        let report = Report(results: results, cyclesPerNanosecond: clock.cyclesPerNanosecond,
                            host: .current(), kvm: kvm.map(KVMDescription.init), settings: settings)
        if json {
            print(try report.json())
        } else if csv {
            print(report.csv(), terminator: "")
        } else {
            print(report.table(), terminator: "")
        }
        if let plot {
            do { try report.svg().write(toFile: plot, atomically: true, encoding: .utf8) } catch {
                printError("hv-bench: cannot write --plot \(plot): \(error.localizedDescription)")
                throw ExitCode(73)
            }
        }
        let allocating = results.filter { $0.hvcore.allocations > 0 || ($0.baseline?.allocations ?? 0) > 0 }
        if !allocating.isEmpty {
            printError("hv-bench: allocations on the vCPU thread in: \(allocating.map(\.kind.rawValue).joined(separator: ", "))")
        }
    }

    /// Samples one round may hold in --duration mode (8 bytes each).
    static let sampleCapacity = 8 << 20

    var settings: Settings {
        Settings(durationSeconds: iterations == nil ? duration : nil, iterations: iterations, rounds: rounds,
                 warmUpExits: warmUpExits, warmUpRounds: 1, order: "HVCore, C, HVCore, C, ... (ABAB)",
                 pinnedCPU: cpu, exitStatistics: !withoutExitStatistics, arguments: Array(CommandLine.arguments.dropFirst()))
    }
}

/// Writes one line to standard error.
func printError(_ message: String) {
    FileHandle.standardError.write(Data((message + "\n").utf8))
}
