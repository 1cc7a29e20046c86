// The three outputs: an aligned table for people, JSON for machines, CSV for spreadsheets.
import Foundation

/// How the run was made.
struct Settings: Codable {
    var durationSeconds: Double?
    var iterations: Int?
    var rounds: Int
    var warmUpExits: UInt64
    var warmUpRounds: Int
    var order: String
    var pinnedCPU: Int32?
    /// Whether HVCore collected its own exit statistics (VirtualMachineConfiguration.collectExitStatistics).
    var exitStatistics: Bool
    var arguments: [String]
}

struct Report {
    var results: [KindResult]
    /// TSC cycles per nanosecond (GHz), measured over the whole run.
    var cyclesPerNanosecond: Double
    var host: HostDescription
    var kvm: KVMDescription?
    var settings: Settings

    // MARK: JSON

    struct KindJSON: Codable {
        var kind: String
        var measures: String
        var unit: String
        var hvcore: Figures
        var c: Figures?
        /// HVCore median / C median; nil for the user-space-only dispatch kind.
        var ratio: Double?
        var meanRatio: Double?

        enum CodingKeys: String, CodingKey { case kind, measures, unit, hvcore, c, ratio, meanRatio }

        /// Writes absent figures as null, so every kind has the same keys.
        func encode(to encoder: any Encoder) throws {
            var container = encoder.container(keyedBy: CodingKeys.self)
            try container.encode(kind, forKey: .kind)
            try container.encode(measures, forKey: .measures)
            try container.encode(unit, forKey: .unit)
            try container.encode(hvcore, forKey: .hvcore)
            try container.encode(c, forKey: .c)
            try container.encode(ratio, forKey: .ratio)
            try container.encode(meanRatio, forKey: .meanRatio)
        }
    }

    struct Document: Codable {
        var tool = "hv-bench"
        var host: HostDescription
        var kvm: KVMDescription?
        var tscGHz: Double
        var settings: Settings
        var kinds: [KindJSON]
    }

    func json() throws -> String {
        let kinds = results.map { result in
            KindJSON(kind: result.kind.rawValue, measures: result.kind.summary, unit: result.kind.unit,
                     hvcore: result.hvcore.figures(cyclesPerNanosecond: cyclesPerNanosecond),
                     c: result.baseline?.figures(cyclesPerNanosecond: cyclesPerNanosecond),
                     ratio: result.ratio.map(Self.round3), meanRatio: result.meanRatio.map(Self.round3))
        }
        let document = Document(host: host, kvm: kvm, tscGHz: Self.round3(cyclesPerNanosecond), settings: settings, kinds: kinds)
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        return String(decoding: try encoder.encode(document), as: UTF8.self)
    }

    static func round3(_ value: Double) -> Double { (value * 1000).rounded() / 1000 }

    // MARK: Table

    func table() -> String {
        var lines: [String] = []
        lines.append("hv-bench: per-exit round trips in nanoseconds (TSC \(String(format: "%.3f", cyclesPerNanosecond)) GHz, measured over the run)")
        var hostLine = "host: \(host.cpu), \(host.logicalCPUs) CPUs, Linux \(host.kernel)"
        if let kvm {
            hostLine += "; KVM API \(kvm.apiVersion), in-kernel irqchip \(kvm.inKernelIRQChip ? "available (not used)" : "absent")"
        }
        lines.append(hostLine)
        lines.append(host.guestCodeEmulated
            ? "guest code: EMULATED (no VMX/SVM in this CPU): absolute times are far above real hardware; read the ratios"
            : "guest code: hardware virtualization")
        let amount = settings.iterations.map { "\($0) samples" } ?? String(format: "%g s", settings.durationSeconds ?? 0)
        lines.append("method: \(amount) per kind, \(settings.rounds) rounds per side alternating HVCore/C after 1 warm-up round each, "
            + "\(settings.warmUpExits) warm-up exits per round; vCPU thread \(settings.pinnedCPU.map { "pinned to CPU \($0)" } ?? "not pinned (use --cpu N)")")
        lines.append("")
        let header = ["kind", "side", "samples", "p50", "p90", "p99", "p99.9", "max", "mean", "p50 cycles", "HVCore/C", "alloc/exit"]
        var rows: [[String]] = []
        for result in results {
            let hv = result.hvcore.figures(cyclesPerNanosecond: cyclesPerNanosecond)
            rows.append(row(result.kind.rawValue, "HVCore", hv, ratio: result.ratio.map { String(format: "%.3f", $0) } ?? "-"))
            if let baseline = result.baseline {
                rows.append(row("", "C", baseline.figures(cyclesPerNanosecond: cyclesPerNanosecond), ratio: ""))
            }
        }
        let widths = header.indices.map { column in ([header] + rows).map { $0[column].count }.max() ?? 0 }
        func format(_ cells: [String]) -> String {
            cells.enumerated().map { column, cell in
                let pad = String(repeating: " ", count: widths[column] - cell.count)
                return column < 2 ? cell + pad : pad + cell
            }.joined(separator: "  ")
        }
        lines.append(format(header))
        lines.append(String(repeating: "-", count: widths.reduce(0, +) + 2 * (widths.count - 1)))
        lines += rows.map(format)
        lines.append("")
        lines.append("cpuid: per loop iteration (includes 1/\(BenchKind.cpuidBatch) of a doorbell exit); kvm-run: HVCore side is KVMVCPU.run(); "
            + "dispatch: user space only, no C baseline.")
        return lines.joined(separator: "\n") + "\n"
    }

    private func row(_ kind: String, _ side: String, _ figures: Figures, ratio: String) -> [String] {
        [kind, side, "\(figures.samples)"] + figures.nanoseconds.map { Self.ns($0) }
            + ["\(figures.p50Cycles)", ratio, String(format: "%.2f", figures.allocationsPerExit)]
    }

    /// Nanoseconds, with one decimal below 1 µs.
    static func ns(_ value: Double) -> String {
        value < 1000 ? String(format: "%.1f", value) : String(format: "%.0f", value)
    }

    // MARK: CSV

    func csv() -> String {
        var lines = ["kind,side,samples,p50_cycles,p90_cycles,p99_cycles,p999_cycles,max_cycles,mean_cycles,"
            + "p50_ns,p90_ns,p99_ns,p999_ns,max_ns,mean_ns,ratio_p50,allocations_per_exit,tsc_ghz"]
        for result in results {
            var sides = [("hvcore", result.hvcore)]
            if let baseline = result.baseline { sides.append(("c", baseline)) }
            for (side, data) in sides {
                let f = data.figures(cyclesPerNanosecond: cyclesPerNanosecond)
                let ratio = side == "hvcore" ? result.ratio.map { String(format: "%.4f", $0) } ?? "" : ""
                let cells: [String] = [
                    result.kind.rawValue, side, "\(f.samples)", "\(f.p50Cycles)", "\(f.p90Cycles)", "\(f.p99Cycles)",
                    "\(f.p999Cycles)", "\(f.maxCycles)", String(format: "%.1f", f.meanCycles),
                ] + f.nanoseconds.map { String(format: "%.1f", $0) }
                    + [ratio, String(format: "%.3f", f.allocationsPerExit), String(format: "%.4f", cyclesPerNanosecond)]
                lines.append(cells.joined(separator: ","))
            }
        }
        return lines.joined(separator: "\n") + "\n"
    }
}
