// The table of exit kinds that `hv demo` and `hv run --stats` print.
import HVCore

enum ExitTable {
    /// "kind  count  median  p99  mean handling" with latencies in µs.
    static func render(_ statistics: ExitStatistics) -> String {
        var rows: [[String]] = [["exit", "count", "median µs", "p99 µs", "handling µs"]]
        for kind in statistics.recordedKinds {
            rows.append([
                "\(kind.name)",
                "\(statistics.count(kind))",
                microseconds(statistics.medianRoundTrip(kind)),
                microseconds(statistics.roundTrip(kind, percentile: 99)),
                statistics.meanHandling(kind).map { format($0 / 1000) } ?? "-",
            ])
        }
        rows.append(["total", "\(statistics.totalExits)", "", "", ""])
        let widths = (0..<rows[0].count).map { column in rows.map { $0[column].count }.max() ?? 0 }
        return rows.enumerated().map { index, row in
            let cells = row.enumerated().map { column, cell in
                column == 0 ? cell.padding(toLength: widths[column], withPad: " ", startingAt: 0)
                    : String(repeating: " ", count: widths[column] - cell.count) + cell
            }
            let line = cells.joined(separator: "  ")
            return index == 0 ? line + "\n" + String(repeating: "-", count: line.count) : line
        }.joined(separator: "\n")
    }

    private static func microseconds(_ nanoseconds: UInt64?) -> String {
        nanoseconds.map { format(Double($0) / 1000) } ?? "-"
    }

    private static func format(_ value: Double) -> String {
        let rounded = (value * 10).rounded() / 10
        return "\(rounded)"
    }
}
